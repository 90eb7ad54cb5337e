#!/usr/bin/env python3
"""Craft and inspect VHDX images for tests/compat/vhdx.sh.

  poke FILE OFF FMT VAL          write a little-endian struct value
  hset FILE SLOT FMT OFF VAL     set a header field (slot 1 or 2), fix crc
  hcrc FILE SLOT                 recompute a header's crc
  rcrc FILE                      recompute the first region table's crc
  loguid FILE SLOT ENTRY_OFF     header's log GUID := the entry's GUID
  mask FILE                      sha256 with GUIDs, crcs, creator masked
  cmask FILE                     mask, and the sequence numbers counted
                                 from the lower one (created images)
  wmask FILE                     cmask, and each log entry's GUID and crc
                                 masked (written images)
  mklog FILE SPEC                write a crafted log (see mklog below)
  seqs FILE                      header sequence numbers and log GUIDs
  compact FILE OUT               the fuzz input of an image (fuzz_vhdx.c)
"""
import hashlib
import struct
import sys

T = []
for i in range(256):
    c = i
    for _ in range(8):
        c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    T.append(c)


def crc32c(b):
    c = 0xffffffff
    for x in b:
        c = T[(c ^ x) & 0xff] ^ (c >> 8)
    return c ^ 0xffffffff


def fix(d, off, size):
    d[off + 4:off + 8] = b'\0' * 4
    d[off + 4:off + 8] = struct.pack('<I', crc32c(bytes(d[off:off + size])))


def load(p):
    return bytearray(open(p, 'rb').read())


def save(p, d):
    open(p, 'wb').write(d)


def patch(p, off, n, fn):
    """Replace the n bytes at off by fn(bytearray of them), in place."""
    with open(p, 'r+b') as fh:
        fh.seek(off)
        d = bytearray(fh.read(n))
        d += bytes(n - len(d))
        d = fn(d)
        fh.seek(off)
        fh.write(d)


def meta_items(d):
    """(guid bytes, absolute offset, length) of each metadata item."""
    n = struct.unpack_from('<I', d, 0x30000 + 8)[0]
    meta = None
    for i in range(n):
        e = 0x30000 + 16 + 32 * i
        if d[e:e + 16] == bytes.fromhex('06a27c8b90479a4bb8fe575f050f886e'):
            meta = struct.unpack_from('<Q', d, e + 16)[0]
    items = []
    cnt = struct.unpack_from('<H', d, meta + 10)[0]
    for i in range(cnt):
        e = meta + 32 + 32 * i
        o, ln = struct.unpack_from('<II', d, e + 16)
        items.append((bytes(d[e:e + 16]), meta + o, ln))
    return items


def mask(d, seqs=False, log=False):
    d = bytearray(d)
    if log:
        h = 0x20000 if struct.unpack_from('<Q', d, 0x20008)[0] > \
            struct.unpack_from('<Q', d, 0x10008)[0] else 0x10000
        log_len, log_off = struct.unpack_from('<IQ', d, h + 68)
        for p in range(log_off, min(log_off + log_len, len(d)), 4096):
            if d[p:p + 4] == b'loge':
                d[p + 4:p + 8] = b'\0' * 4
                d[p + 32:p + 48] = b'\0' * 16
                # QEMU leaves the rest of the descriptor sector as it
                # found it in memory: not zeroed.
                dc = struct.unpack_from('<I', d, p + 24)[0]
                if 64 + 32 * dc < 4096:
                    d[p + 64 + 32 * dc:p + 4096] = \
                        b'\0' * (4096 - 64 - 32 * dc)
    if seqs:
        s1 = struct.unpack_from('<Q', d, 0x10008)[0]
        s2 = struct.unpack_from('<Q', d, 0x20008)[0]
        low = min(s1, s2)
        struct.pack_into('<Q', d, 0x10008, s1 - low)
        struct.pack_into('<Q', d, 0x20008, s2 - low)
    d[8:8 + 512] = b'\0' * 512                  # creator
    for h in (0x10000, 0x20000):
        d[h + 4:h + 8] = b'\0' * 4               # crc
        d[h + 16:h + 64] = b'\0' * 48            # the three GUIDs
    page83 = bytes.fromhex('ab12cabee6b2234593efc309e000c746')
    for g, o, ln in meta_items(d):
        if g == page83:
            d[o:o + ln] = b'\0' * ln
    return hashlib.sha256(d).hexdigest()


def entry(seq, tail, guid, descs, flushed, last):
    """A log entry: descs are ('data', off, 4096 bytes) or ('zero', off, n)."""
    hdr_bytes = 64 + 32 * len(descs)
    hs = (hdr_bytes + 4095) // 4096
    datas = [x for x in descs if x[0] == 'data']
    length = (hs + len(datas)) * 4096
    e = bytearray(length)
    struct.pack_into('<4sIIIQII', e, 0, b'loge', 0, length, tail, seq,
                     len(descs), 0)
    e[32:48] = guid
    struct.pack_into('<QQ', e, 48, flushed, last)
    ds = hs
    for i, x in enumerate(descs):
        p = 64 + 32 * i
        if x[0] == 'zero':
            struct.pack_into('<4sIQQQ', e, p, b'zero', 0, x[2], x[1], seq)
        else:
            sec = x[2]
            struct.pack_into('<4s4s8sQQ', e, p, b'desc', sec[4092:4096],
                             sec[0:8], x[1], seq)
            q = ds * 4096
            struct.pack_into('<4sI', e, q, b'data', seq >> 32)
            e[q + 8:q + 4092] = sec[8:4092]
            struct.pack_into('<I', e, q + 4092, seq & 0xffffffff)
            ds += 1
    fix(e, 0, length)
    return e


def mklog(path, spec):
    """spec: 'chain' writes a stale entry and a three-entry sequence that
    changes BAT entries and data in the image, 'badcrc' the same with the
    newest entry's crc broken, 'short' with the newest entry's flushed
    file offset past the end of the file, 'nolog' a GUID that names no
    entry, 'hostile' a log of headers that all claim the whole log."""
    d = load(path)
    h = 0x20000 if struct.unpack_from('<Q', d, 0x20008)[0] > \
        struct.unpack_from('<Q', d, 0x10008)[0] else 0x10000
    log_len, log_off = struct.unpack_from('<IQ', d, h + 68)
    guid = bytes(range(0x10, 0x20))
    if spec == 'hostile':
        # Every sector an entry header that claims the whole log (and
        # fails its checksum): a search that validates each candidate
        # reads the log once per sector.
        for p in range(0, log_len, 4096):
            q = log_off + p
            d[q:q + 4096] = bytes(4096)
            struct.pack_into('<4sIIIQII', d, q, b'loge', 0, log_len, 0, 1,
                             0, 0)
            d[q + 32:q + 48] = guid
            struct.pack_into('<QQ', d, q + 48, len(d), len(d))
        d[h + 48:h + 64] = guid
        fix(d, h, 4096)
        save(path, d)
        return
    size = len(d)
    bat = None
    for i in range(struct.unpack_from('<I', d, 0x30008)[0]):
        e = 0x30000 + 16 + 32 * i
        if d[e:e + 16] == bytes.fromhex('6677c22d23f600429d64115e9bfd4a08'):
            bat = struct.unpack_from('<Q', d, e + 16)[0]
    # The BAT sector with entry 0 FULLY_PRESENT at the file's end and
    # entry 1 ZERO; the new block gets a pattern.
    sec = bytearray(d[bat:bat + 4096])
    struct.pack_into('<Q', sec, 0, size | 6)
    pat = bytes((i * 7 + 3) & 0xff for i in range(4096))
    sec2 = bytearray(sec)
    struct.pack_into('<Q', sec2, 8, 2)
    old = entry(7, 0, guid, [('data', bat, bytes(4096))], size, size)
    e1 = entry(20, 8192, guid, [("data", size, pat)], size,
               size + 4096)
    e2 = entry(21, 8192, guid, [('data', bat, bytes(sec)),
                                ('zero', size + 8192, 8192)],
               size, size + 16384)
    # 'short': the newest entry says the file was flushed longer than it is.
    e3 = entry(22, 8192, guid, [('data', bat, bytes(sec2)),
                                ('data', size + 4096, pat[::-1])],
               size + 16384 if spec == 'short' else size, size + 16384)
    if spec == 'badcrc':
        e3[100] ^= 1
    log = bytearray(log_len)
    log[0:len(old)] = old
    p = 8192
    for e in (e1, e2, e3):
        log[p:p + len(e)] = e
        p += len(e)
    d[log_off:log_off + log_len] = log
    d[h + 48:h + 64] = guid if spec != 'nolog' else bytes(range(0x30, 0x40))
    fix(d, h, 4096)
    save(path, d)


def main():
    cmd, path = sys.argv[1], sys.argv[2]
    a = sys.argv[3:]
    if cmd == 'poke':
        if a[1] == 's':
            v = a[2].encode('latin1').decode('unicode_escape')
            v = v.encode('latin1')
        else:
            v = struct.pack('<' + a[1], int(a[2], 0))
        patch(path, int(a[0], 0), len(v), lambda d: v)
    elif cmd == 'hset':
        def f(d):
            struct.pack_into('<' + a[1], d, int(a[2], 0), int(a[3], 0))
            fix(d, 0, 4096)
            return d
        patch(path, 0x10000 * int(a[0]), 4096, f)
    elif cmd == 'hcrc':
        patch(path, 0x10000 * int(a[0]), 4096, lambda d: (fix(d, 0, 4096), d)[1])
    elif cmd == 'rcrc':
        patch(path, 0x30000, 65536, lambda d: (fix(d, 0, 65536), d)[1])
    elif cmd == 'loguid':
        with open(path, 'rb') as fh:
            fh.seek(int(a[1], 0) + 32)
            g = fh.read(16)

        def f(d):
            d[48:64] = g
            fix(d, 0, 4096)
            return d
        patch(path, 0x10000 * int(a[0]), 4096, f)
    elif cmd == 'mask':
        print(mask(load(path)))
    elif cmd == 'cmask':
        print(mask(load(path), True))
    elif cmd == 'wmask':
        print(mask(load(path), True, True))
    elif cmd == 'mklog':
        mklog(path, a[0])
    elif cmd == 'compact':
        # The windows of tests/fuzz/fuzz_vhdx.c, then up to 1 MiB at 4 MiB.
        K, M = 1024, 1024 * 1024
        d = load(path)
        out = bytearray()
        for off, n in ((0, 4 * K), (64 * K, 4 * K), (128 * K, 4 * K),
                       (192 * K, 4 * K), (M, 32 * K), (2 * M, 4 * K),
                       (3 * M, 4 * K), (3 * M + 64 * K, 4 * K)):
            w = d[off:off + n]
            out += w + bytes(n - len(w))
        # Payload up to its last non-zero byte: seeds stay small.
        out += d[4 * M:5 * M].rstrip(b'\0')
        save(a[0], out)
    elif cmd == 'seqs':
        d = load(path)
        for h in (0x10000, 0x20000):
            print(struct.unpack_from('<Q', d, h + 8)[0],
                  d[h + 48:h + 64].hex())
    else:
        sys.exit('unknown command ' + cmd)


main()
