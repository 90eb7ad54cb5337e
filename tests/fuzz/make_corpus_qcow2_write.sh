#!/bin/bash
# Seeds for fuzz_qcow2_write: recipes, not images (see the comment at
# the top of fuzz_qcow2_write.c for the encoding):
#   make_corpus_qcow2_write.sh OUTDIR
# One per interesting configuration (512 B, 4 KiB, 64 KiB and 2 MiB
# clusters; v2; 1-, 2- and 64-bit refcounts; extended L2 entries; lazy
# refcounts; zstd; each preallocation), each running every operation.
# The same seeds are committed in corpus/qcow2_write.
set -euo pipefail
out=${1:?usage: make_corpus_qcow2_write.sh OUTDIR}
mkdir -p "$out"
python3 - "$out" <<'PY'
import os, struct, sys
out = sys.argv[1]

def u24(v):
    return struct.pack('<I', v)[:3]

# Operation bytes (index into ops[] in fuzz_qcow2_write.c).
WRITE, ZERO, DISCARD, COMP, RESIZE, FLUSH = 0, 3, 5, 6, 7, 8
SNAP_C, SNAP_A, SNAP_D, REOPEN = 9, 10, 11, 12

def write(offmode, off, lenmode, ln, kind=2, pat=0x5a):
    return bytes([WRITE, offmode]) + u24(off) + bytes([lenmode]) + \
        u24(ln) + bytes([kind, pat])

def zero(offmode, off, lenmode, ln, unmap):
    return bytes([ZERO, offmode]) + u24(off) + bytes([lenmode]) + \
        u24(ln) + bytes([unmap])

def discard(offmode, off, lenmode, ln):
    return bytes([DISCARD, offmode]) + u24(off) + bytes([lenmode]) + u24(ln)

def comp(cluster, kind=1, pat=7):
    return bytes([COMP]) + u24(cluster) + bytes([kind, pat])

def resize(how, step):
    return bytes([RESIZE, how]) + u24(step)

# Every operation once or twice, on cluster edges and off them.
workload = (write(0, 1, 2, 1) + write(3, 1000, 0, 300, 0, 0x11) +
            comp(2) + comp(3, 2, 9) + zero(1, 1, 1, 1, 1) +
            zero(3, 777, 3, 5000, 0) + FLUSH.to_bytes(1, 'little') +
            bytes([SNAP_C]) + write(0, 0, 2, 2, 3, 0x33) +
            discard(3, 100, 3, 9000) + bytes([SNAP_C]) +
            resize(1, 3) + bytes([SNAP_A, 0]) + write(2, 9, 1, 2) +
            bytes([REOPEN]) + bytes([SNAP_D, 1]) + resize(0 | 4, 5) +
            write(0, 5, 2, 0, 1, 0x44) + bytes([FLUSH]) +
            discard(0, 2, 2, 1) + bytes([REOPEN]))

# NAME: cluster byte (cluster_bits - 9 is the byte % 8 below 192, the
# byte % 13 from 192 on), flags (1 v2, 2 extl2, 4 lazy, 8 zstd,
# 16 * prealloc), refcount order, size.
configs = {
    'c512-r16': (0, 0, 4, 256 << 10),
    'c4k-r1': (3, 0, 0, 1 << 20),
    'c4k-r2-lazy': (3, 4, 1, 300 << 10),
    'c64k-r64-zstd': (7, 8, 6, (1 << 20) + 4096),
    'c64k-extl2': (7, 2, 4, 2 << 20),
    'c32k-extl2-lazy-meta': (6, 2 | 4 | 16, 4, 700 << 10),
    'c2m-falloc': (194, 32, 4, (1 << 20) - 1000),
    'v2-c1k': (1, 1, 0, 512 << 10),
    'v2-c4k-full': (3, 1 | 48, 0, 200 << 10),
}
# 2 MiB clusters make every step slow (each check walks 2^18 L2 entries
# and 2^20 refcounts): a short workload there.
short = (write(3, 1000, 0, 300, 0, 0x11) + comp(0) + bytes([SNAP_C]) +
         write(0, 0, 0, 9) + bytes([REOPEN]))
for name, (cb, flags, order, size) in configs.items():
    ops = short if name.startswith('c2m') else workload
    rec = bytes([cb, flags, order]) + u24(size - 1) + ops
    with open(os.path.join(out, name + '.rec'), 'wb') as f:
        f.write(rec)
PY
echo "make_corpus_qcow2_write.sh: $(ls "$out" | wc -l) recipes in $out"
