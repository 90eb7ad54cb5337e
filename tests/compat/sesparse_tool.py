#!/usr/bin/env python3
"""Build a VMDK seSparse image (descriptor + extent) from a raw file.

sesparse_tool.py OUT RAW [--grain-base N] [--spare-gts N]
    OUT is the descriptor (createType "seSparse", one SESPARSE extent line
    naming OUT's base name with "-sesparse" before ".vmdk"); the extent
    holds the ESXi seSparse layout (as QEMU's block/vmdk.c reads it): a
    512-byte const header of 64-bit little-endian fields (magic
    0xcafebabe, version 0x200000001, capacity, grain size 8 sectors,
    grain table size 64 sectors, then offset/size pairs of the volatile
    header, journal header, journal, grain directory, grain tables, free
    bitmap, backmap and grains, in sectors), the volatile header (magic
    0xcafecafe, replay_journal 0), the grain directory (0, or 0x1 in the
    top nibble with a grain table index below), the grain tables (0
    unallocated, 0x1 unmapped, 0x2 zero, 0x3 allocated with the grain
    index's low 12 bits stored in bits 48..59 and the rest in bits
    0..47) and the grains.

    Grain tables are allocated in reverse order of the directory, grains
    in reverse order of the guest, from grain index --grain-base (4100
    by default, so the high part of the index is used; the extent file
    has a hole before them).  All-zero grains cycle, 64 grains at a time,
    through unallocated, unmapped and zero entries.  --spare-gts adds
    unused grain tables.

Only test input: the fields are written from the published layout.
"""
import os
import struct
import sys

SECTOR = 512
GRAIN = 8 * SECTOR
GT_ENTRIES = 4096
GT_BYTES = GT_ENTRIES * 8


def build(out, raw, grain_base=4100, spare_gts=0):
    with open(raw, 'rb') as f:
        data = f.read()
    sectors = (len(data) + SECTOR - 1) // SECTOR
    data += b'\0' * (-len(data) % GRAIN)
    n_grains = len(data) // GRAIN
    n_gts = (n_grains + GT_ENTRIES - 1) // GT_ENTRIES
    gd_sectors = max(1, (n_gts * 8 + SECTOR - 1) // SECTOR)

    # Which grains hold data, and each directory entry's table.
    data_grains = [g for g in range(n_grains)
                   if data[g * GRAIN:(g + 1) * GRAIN].strip(b'\0')]
    used_gts = sorted({g // GT_ENTRIES for g in data_grains})
    gt_index = {}
    for i, d in enumerate(reversed(used_gts)):
        gt_index[d] = i
    total_gts = len(used_gts) + spare_gts
    grain_index = {}
    for i, g in enumerate(reversed(data_grains)):
        grain_index[g] = grain_base + i

    vol_off, jh_off, j_off = 1, 2, 3
    gd_off = 8
    gt_off = gd_off + gd_sectors
    gt_sectors = max(1, total_gts) * 64
    bitmap_off = gt_off + gt_sectors
    backmap_off = bitmap_off + 1
    grains_off = backmap_off + 1
    grains_sectors = (grain_base + len(data_grains)) * 8

    hdr = struct.pack('<26Q', 0xcafebabe, 0x200000001, sectors, 8, 64, 0,
                      0, 0, 0, 0, vol_off, 1, jh_off, 1, j_off, 1,
                      gd_off, gd_sectors, gt_off, gt_sectors,
                      bitmap_off, 1, backmap_off, 1,
                      grains_off, grains_sectors)
    hdr += b'\0' * (SECTOR - len(hdr))
    vol = struct.pack('<4Q', 0xcafecafe, total_gts, 1, 0)
    vol += b'\0' * (SECTOR - len(vol))

    gd = bytearray(gd_sectors * SECTOR)
    gts = bytearray(gt_sectors * SECTOR)
    for d in used_gts:
        struct.pack_into('<Q', gd, d * 8, (1 << 60) | gt_index[d])
    for g in range(n_grains):
        d = g // GT_ENTRIES
        if d not in gt_index:
            continue
        pos = gt_index[d] * GT_BYTES + (g % GT_ENTRIES) * 8
        if g in grain_index:
            idx = grain_index[g]
            e = (3 << 60) | ((idx & 0xfff) << 48) | (idx >> 12)
        else:
            e = [0, 1 << 60, 2 << 60][(g // 64) % 3]
        struct.pack_into('<Q', gts, pos, e)

    base = os.path.basename(out)
    stem = base[:-5] if base.endswith('.vmdk') else base
    ext_name = stem + '-sesparse.vmdk'
    ext_path = os.path.join(os.path.dirname(out), ext_name)
    with open(ext_path, 'wb') as f:
        f.write(hdr)
        f.seek(vol_off * SECTOR)
        f.write(vol)
        f.seek(gd_off * SECTOR)
        f.write(gd)
        f.write(gts)
        f.write(b'\0' * (2 * SECTOR))  # free bitmap and backmap
        for g in data_grains:
            f.seek((grains_off + grain_index[g] * 8) * SECTOR)
            f.write(data[g * GRAIN:(g + 1) * GRAIN])
        f.truncate((grains_off + grains_sectors) * SECTOR)
    desc = ('# Disk DescriptorFile\n'
            'version=1\n'
            'CID=5eb0cafe\n'
            'parentCID=ffffffff\n'
            'createType="seSparse"\n'
            '\n'
            '# Extent description\n'
            'RW %d SESPARSE "%s"\n'
            '\n'
            '# The Disk Data Base\n'
            '#DDB\n'
            '\n'
            'ddb.virtualHWVersion = "14"\n'
            'ddb.adapterType = "lsilogic"\n' % (sectors, ext_name))
    with open(out, 'w') as f:
        f.write(desc)


def main(argv):
    out, raw = argv[1:3]
    opts = {}
    rest = argv[3:]
    while rest:
        key = rest[0].lstrip('-').replace('-', '_')
        opts[key] = int(rest[1], 0)
        rest = rest[2:]
    build(out, raw, **opts)


if __name__ == '__main__':
    main(sys.argv)
