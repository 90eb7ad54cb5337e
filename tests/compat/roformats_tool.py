#!/usr/bin/env python3
"""Build test images of formats qemu-img cannot create, from a raw file.

bochs OUT RAW [--version 1|2] [--extent N] [--catalog N] [--bitmap N]
    A Bochs growing redolog image (layout from the Bochs documentation):
    512-byte header, catalog of 32-bit extent indexes, then per allocated
    extent a sector bitmap (rounded up to 512 bytes) and the extent's
    sectors.  Extents that are all zero stay unallocated; zero sectors of
    an allocated extent have their bitmap bit clear.

cloop OUT RAW [--block N] [--level N]
    A cloop V2.0 image: the shell preamble (128 bytes), block size and
    block count (big-endian 32 bits) at 128, n_blocks + 1 big-endian
    64-bit offsets, then each block as a zlib stream.  The raw file is
    padded with zeros to whole blocks.

parallels-old OUT IMAGE
    The parallels IMAGE (as qemu-img writes it, "WithouFreSpacExt" with
    BAT entries counting clusters) rewritten with the old magic
    "WithoutFreeSpace", whose BAT entries count sectors.

dmg OUT RAW [--chunk N] [--codec N] [--fork N] [--rsrc 1] [--tail N]
        [--split 1] [--sectors N]
    An Apple UDIF image (the layout Jonathan Levin's "Demystifying the DMG
    File Format" describes): the data fork (chunks of N sectors, 2048 by
    default, each stored by --codec: 5 zlib, 6 bzip2, 1 raw, 0 a cycle of
    all three, any other number as that chunk type with raw bytes, with all-zero chunks as "ignore" (2) or "zero" (0)
    entries), then the mish block table (big-endian, 204-byte header,
    40-byte chunk entries, ended by a terminator entry) base64-encoded in
    the XML property list (or with --rsrc 1 in a resource fork), then the
    512-byte "koly" trailer.  --fork N puts N junk bytes before the data
    fork and records them as its offset; --split 1 stores two blkx tables
    (the second's entries relative to its first sector); --tail N appends
    N bytes after the trailer; --sectors N overrides the trailer's sector
    count; --bad-count, --bad-length, --bad-offset and --bad-type N give
    the first chunk entry that sector count, stored length, offset or
    type.

Only test input: the fields are written from the published layout.
"""
import base64
import bz2
import struct
import zlib
import sys

SECTOR = 512


def bochs(out, raw, version=2, extent=4096, catalog=None, bitmap=None):
    data = open(raw, 'rb').read()
    size = len(data)
    sectors_per_extent = extent // SECTOR
    n_extents = -(-size // extent)
    if catalog is None:
        catalog = n_extents
    if bitmap is None:
        bitmap = -(-sectors_per_extent // 8)
    bitmap_bytes = -(-bitmap // SECTOR) * SECTOR
    hdr = bytearray(SECTOR)
    hdr[0:32] = b'Bochs Virtual HD Image'.ljust(32, b'\0')
    hdr[32:48] = b'Redolog'.ljust(16, b'\0')
    hdr[48:64] = b'Growing'.ljust(16, b'\0')
    struct.pack_into('<II', hdr, 64, 0x10000 if version == 1 else 0x20000,
                     SECTOR)
    struct.pack_into('<III', hdr, 72, catalog, bitmap, extent)
    if version == 1:
        struct.pack_into('<Q', hdr, 84, size)
    else:
        struct.pack_into('<IQ', hdr, 84, 0, size)
    cat = [0xffffffff] * catalog
    body = bytearray()
    used = 0
    # Allocate the extents in reverse, so that host order differs from
    # guest order.
    for i in reversed(range(n_extents)):
        chunk = data[i * extent:(i + 1) * extent].ljust(extent, b'\0')
        if not any(chunk):
            continue
        bits = bytearray(bitmap_bytes)
        for j in range(sectors_per_extent):
            if any(chunk[j * SECTOR:(j + 1) * SECTOR]):
                bits[j // 8] |= 1 << (j % 8)
        cat[i] = used
        used += 1
        body += bits + chunk
    catalog_bytes = struct.pack('<%dI' % catalog, *cat)
    with open(out, 'wb') as f:
        f.write(hdr + catalog_bytes + body)


CLOOP_MAGIC = (b'#!/bin/sh\n#V2.0 Format\n'
               b'modprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n')


def cloop(out, raw, block=4096, level=6):
    data = open(raw, 'rb').read()
    n = -(-len(data) // block)
    data = data.ljust(n * block, b'\0')
    blocks = [zlib.compress(data[i * block:(i + 1) * block], level)
              for i in range(n)]
    offsets = [136 + 8 * (n + 1)]
    for b in blocks:
        offsets.append(offsets[-1] + len(b))
    with open(out, 'wb') as f:
        f.write(CLOOP_MAGIC.ljust(128, b'\0'))
        f.write(struct.pack('>II', block, n))
        f.write(struct.pack('>%dQ' % (n + 1), *offsets))
        for b in blocks:
            f.write(b)


def parallels_old(out, image):
    data = bytearray(open(image, 'rb').read())
    assert data[0:16] == b'WithouFreSpacExt'
    data[0:16] = b'WithoutFreeSpace'
    tracks, entries = struct.unpack_from('<II', data, 28)
    for i in range(entries):
        (e,) = struct.unpack_from('<I', data, 64 + 4 * i)
        struct.pack_into('<I', data, 64 + 4 * i, e * tracks)
    open(out, 'wb').write(data)


DMG_ZERO, DMG_RAW, DMG_IGNORE = 0, 1, 2
DMG_ZLIB, DMG_BZIP2 = 0x80000005, 0x80000006
DMG_COMMENT, DMG_END = 0x7ffffffe, 0xffffffff


def dmg_mish(first, entries, sectors, data_offset):
    """One blkx table: entries are (type, sector, count, offset, length)
    with sectors relative to FIRST and offsets to DATA_OFFSET."""
    hdr = bytearray(204)
    hdr[0:4] = b'mish'
    struct.pack_into('>IQQQII', hdr, 4, 1, first, sectors, data_offset,
                     0, len(entries))
    struct.pack_into('>I', hdr, 200, len(entries))
    body = b''.join(struct.pack('>IIQQQQ', t, 0, sec, cnt, off, ln)
                    for t, sec, cnt, off, ln in entries)
    return bytes(hdr) + body


def dmg(out, raw, chunk=2048, codec=5, fork=0, rsrc=0, tail=0, split=0,
        sectors=None, bad_count=None, bad_length=None, bad_offset=None,
        bad_type=None):
    data = open(raw, 'rb').read()
    total = -(-len(data) // SECTOR)
    data = data.ljust(total * SECTOR, b'\0')
    fork_data = bytearray(b'\xa5' * fork)
    entries = []
    cycle = [DMG_ZLIB, DMG_RAW, DMG_BZIP2]
    n = 0
    for sec in range(0, total, chunk):
        cnt = min(chunk, total - sec)
        piece = data[sec * SECTOR:(sec + cnt) * SECTOR]
        kinds = {1: DMG_RAW, 5: DMG_ZLIB, 6: DMG_BZIP2}
        kind = kinds.get(codec, codec) if codec else cycle[n % len(cycle)]
        if not any(piece):
            kind = DMG_IGNORE if n % 2 == 0 else DMG_ZERO
            stored = b''
        elif kind == DMG_ZLIB:
            stored = zlib.compress(piece, 6)
        elif kind == DMG_BZIP2:
            stored = bz2.compress(piece, 9)
        else:
            stored = piece
        n += 1
        entries.append((kind, sec, cnt, len(fork_data) - fork, len(stored)))
        fork_data += stored
        if codec == 0 and n == 1:
            entries.append((DMG_COMMENT, sec + cnt, 0, 0, 0))
    t, sec, cnt, off, ln = entries[0]
    if bad_count is not None:
        cnt = bad_count
    if bad_length is not None:
        ln = bad_length
    if bad_offset is not None:
        off = bad_offset
    if bad_type is not None:
        t = bad_type
    entries[0] = (t, sec, cnt, off, ln)
    tables = []
    if split and len(entries) > 1:
        half = len(entries) // 2
        first = entries[half][1]
        tables.append(dmg_mish(0, entries[:half], first, 0))
        rest = [(t, sec - first, cnt, off, ln)
                for t, sec, cnt, off, ln in entries[half:]]
        rest.append((DMG_END, total - first, 0, 0, 0))
        tables.append(dmg_mish(first, rest, total - first, 0))
    else:
        entries.append((DMG_END, total, 0, 0, 0))
        tables.append(dmg_mish(0, entries, total, 0))
    meta_off = len(fork_data)
    if rsrc:
        # A resource fork: 16-byte header (data offset 0x100, map offset,
        # data length, map length), then at 0x100 each resource as a
        # 32-bit length and its bytes; the map is not read.
        res = b''.join(struct.pack('>I', len(t)) + t for t in tables)
        blob = bytearray(0x100) + res
        struct.pack_into('>IIII', blob, 0, 0x100, len(blob),
                         len(blob) - 0x100, 0)
        meta = bytes(blob)
    else:
        items = ''.join(
            '<dict><key>Attributes</key><string>0x0050</string>'
            '<key>Data</key><data>\n%s\n</data><key>ID</key>'
            '<string>%d</string><key>Name</key><string>part %d</string>'
            '</dict>' % (base64.b64encode(t).decode(), i, i)
            for i, t in enumerate(tables))
        meta = ('<?xml version="1.0" encoding="UTF-8"?>\n'
                '<plist version="1.0"><dict><key>resource-fork</key><dict>'
                '<key>blkx</key><array>%s</array>'
                '<key>plst</key><array><dict><key>Data</key><data>'
                'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA</data></dict></array>'
                '</dict></dict></plist>\n' % items).encode()
    koly = bytearray(512)
    koly[0:4] = b'koly'
    struct.pack_into('>III', koly, 4, 4, 512, 1)
    struct.pack_into('>QQQ', koly, 24, fork, meta_off - fork, 0)
    if rsrc:
        struct.pack_into('>QQ', koly, 40, meta_off, len(meta))
    else:
        struct.pack_into('>QQ', koly, 216, meta_off, len(meta))
    struct.pack_into('>IIQ', koly, 56, 1, 1, 0)
    struct.pack_into('>IQ', koly, 488, 1,
                     total if sectors is None else sectors)
    with open(out, 'wb') as f:
        f.write(fork_data)
        f.write(meta)
        f.write(koly)
        f.write(b'\x5a' * tail)


def main(argv):
    if argv[1] == 'parallels-old':
        parallels_old(argv[2], argv[3])
        return
    kind, out, raw = argv[1:4]
    opts = {}
    rest = argv[4:]
    for k, v in zip(rest[::2], rest[1::2]):
        opts[k.lstrip('-').replace('-', '_')] = int(v, 0)
    if kind == 'bochs':
        bochs(out, raw, **opts)
    elif kind == 'cloop':
        cloop(out, raw, **opts)
    elif kind == 'dmg':
        dmg(out, raw, **opts)
    else:
        sys.exit('unknown kind ' + kind)


if __name__ == '__main__':
    main(sys.argv)
