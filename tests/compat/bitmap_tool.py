#!/usr/bin/env python3
"""Print the persistent bitmaps of a qcow2 image, read from the file.

bitmap_tool.py IMAGE
    One line per bitmap of the directory: its name, flags (in_use, auto),
    granularity, table size, then the runs of set bits as granule ranges
    "first-last" (guest bytes = granule * granularity).  Read from the
    published layout [qcow2 spec: Bitmaps extension, Bitmap directory,
    Bitmap table, Bitmap data]: a table entry's bits 9-55 are the data
    cluster's offset, 0 with bit 0 set reads as all ones, 0 as all zeros;
    bit i of the bitmap is bit i % 8 of byte i / 8 of its data.

bitmap_tool.py --set-padding IMAGE
    Set every padding bit (a granule past the disk's end) in each
    bitmap's allocated data clusters, as a careless writer might leave
    them; QEMU never loads those bits.

Only test input for comparing qimg's images with qemu-img's.
"""
import struct
import sys

BITMAPS_EXT = 0x23852875


def main(path, set_padding=False):
    with open(path, 'rb') as f:
        data = f.read()
    padding = []
    (magic, version) = struct.unpack_from('>II', data, 0)
    cluster_bits = struct.unpack_from('>I', data, 20)[0]
    size = struct.unpack_from('>Q', data, 24)[0]
    cs = 1 << cluster_bits
    if version < 3:
        return
    autoclear = struct.unpack_from('>Q', data, 88)[0]
    hlen = struct.unpack_from('>I', data, 100)[0]
    p = hlen
    ext = None
    while p + 8 <= cs:
        t, n = struct.unpack_from('>II', data, p)
        if t == 0:
            break
        if t == BITMAPS_EXT:
            ext = data[p + 8:p + 8 + n]
        p += 8 + ((n + 7) & ~7)
    if ext is None:
        print('no bitmaps extension')
        return
    nb, _, dsize, doff = struct.unpack_from('>IIQQ', ext, 0)
    print('autoclear-bitmaps %d' % (autoclear & 1))
    q = doff
    for _ in range(nb):
        toff, tsize, flags, typ, gbits, nsize, xsize = struct.unpack_from(
            '>QIIBBHI', data, q)
        name = data[q + 24 + xsize:q + 24 + xsize + nsize].decode()
        q += (24 + xsize + nsize + 7) & ~7
        names = [n for b, n in ((1, 'in_use'), (2, 'auto')) if flags & b]
        bits = []
        for i in range(tsize):
            e = struct.unpack_from('>Q', data, toff + 8 * i)[0]
            off = e & 0x00fffffffffffe00
            if off:
                chunk = data[off:off + cs]
            elif e & 1:
                chunk = b'\xff' * cs
            else:
                continue
            base = i * cs * 8
            if off and set_padding:
                padding.append((off, base, gbits))
            for j, byte in enumerate(chunk):
                if byte:
                    for k in range(8):
                        if byte >> k & 1:
                            bits.append(base + j * 8 + k)
        granules = (size + (1 << gbits) - 1) >> gbits
        bits = [b for b in bits if b < granules] + \
            ['beyond:%d' % b for b in bits if b >= granules]
        runs = []
        for b in bits:
            if runs and isinstance(b, int) and runs[-1][1] == b - 1:
                runs[-1][1] = b
            else:
                runs.append([b, b])
        print('%s flags=%s gran=%d table=%d bits=%s' % (
            name, ','.join(names) or '-', 1 << gbits, tsize,
            ' '.join('%s-%s' % (a, b) if a != b else str(a)
                     for a, b in runs) or 'none'))


    if set_padding:
        with open(path, 'r+b') as f:
            for off, base, gbits in padding:
                granules = (size + (1 << gbits) - 1) >> gbits
                chunk = bytearray(data[off:off + cs])
                for j in range(max(granules, base) - base, cs * 8):
                    chunk[j // 8] |= 1 << (j % 8)
                f.seek(off)
                f.write(chunk)


if __name__ == '__main__':
    if sys.argv[1] == '--set-padding':
        main(sys.argv[2], set_padding=True)
    else:
        main(sys.argv[1])
