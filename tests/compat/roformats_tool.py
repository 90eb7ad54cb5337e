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

Only test input: the fields are written from the published layout.
"""
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


def main(argv):
    if argv[1] == 'parallels-old':
        parallels_old(argv[2], argv[3])
        return
    kind, out, raw = argv[1:4]
    opts = {}
    rest = argv[4:]
    for k, v in zip(rest[::2], rest[1::2]):
        opts[k.lstrip('-')] = int(v, 0)
    if kind == 'bochs':
        bochs(out, raw, **opts)
    elif kind == 'cloop':
        cloop(out, raw, **opts)
    else:
        sys.exit('unknown kind ' + kind)


if __name__ == '__main__':
    main(sys.argv)
