#!/bin/bash
# Seeds for fuzz_codecs, cut out of images qemu-img makes (see the comment
# at the top of fuzz_codecs.c for the selector byte and each layout):
#   make_corpus_codecs.sh OUTDIR
# qcow2 headers (v2, v3 with a backing file and format, extended L2
# entries, zstd, bitmaps, LUKS) decoded as read-only, read-write and
# check opens, a snapshot table, a bitmap directory, a LUKS header, vhdx
# headers, region tables and metadata, vmdk descriptors (flat, split,
# embedded in a sparse extent) and a sparse header.  The same seeds are
# committed in corpus/codecs.
set -euo pipefail
out=${1:?usage: make_corpus_codecs.sh OUTDIR}
QEMU_IMG=${QEMU_IMG:-qemu-img}
QEMU_IO=${QEMU_IO:-qemu-io}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/qimg-corpus.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"

img() { "$QEMU_IMG" "$@" >/dev/null; }
io() { "$QEMU_IO" "$@" >/dev/null; }

img create -f qcow2 -o compat=0.10,cluster_size=512 v2.qcow2 1M
img create -f raw base.raw 1M
img create -f qcow2 -o cluster_size=4096 -b base.raw -F raw back.qcow2
img create -f qcow2 -o extended_l2=on,compression_type=zstd ext.qcow2 4M
img create -f qcow2 -o cluster_size=4096 snap.qcow2 1M
io -c 'write -P 1 0 4k' snap.qcow2
img snapshot -c first snap.qcow2
img snapshot -c 'a longer second name' snap.qcow2
img create -f qcow2 -o cluster_size=4096 bitmap.qcow2 1M
img bitmap --add bitmap.qcow2 b0
img bitmap --add -g 65536 bitmap.qcow2 other
# qemu-img may fail to time the PBKDF2 (a 0 ms trial): retry.
for t in $(seq 60); do
    "$QEMU_IMG" create -q -f qcow2 --object secret,id=s0,data=fuzz \
        -o encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10 \
        -o cluster_size=4096 luks.qcow2 1M >/dev/null 2>&1 && break
done
img info luks.qcow2
img create -f vhdx -o subformat=dynamic,block_size=1M dyn.vhdx 8M
img create -f vmdk -o subformat=monolithicFlat flat.vmdk 1M
img create -f vmdk -o subformat=twoGbMaxExtentSparse split.vmdk 3G
img create -f vmdk -o subformat=monolithicSparse sparse.vmdk 1M
img create -f vmdk -o subformat=streamOptimized stream.vmdk 1M

python3 - "$out" <<'PY'
import os, struct, sys
out = sys.argv[1]
NC = 9  # NCODECS in fuzz_codecs.c

def seed(name, codec, variant, body):
    with open(os.path.join(out, name), 'wb') as f:
        f.write(bytes([codec + NC * variant]) + body)

def exts(b):
    """The header extensions of a qcow2 image: {type: data}."""
    version = struct.unpack_from('>I', b, 4)[0]
    pos = 72 if version == 2 else struct.unpack_from('>I', b, 100)[0]
    found = {}
    while pos + 8 <= len(b):
        t, n = struct.unpack_from('>II', b, pos)
        if t == 0:
            break
        found[t] = b[pos + 8:pos + 8 + n]
        pos += 8 + (n + 7) // 8 * 8
    return found

for name in ['v2', 'back', 'ext', 'snap', 'bitmap', 'luks']:
    b = open(name + '.qcow2', 'rb').read()
    # The first cluster, cut after its last non-zero byte.
    cs = 1 << struct.unpack_from('>I', b, 20)[0]
    head = b[:min(cs, 4096)].rstrip(b'\0')
    seed('qcow2-header-%s' % name, 0, 0, head)
    if name in ('back', 'ext'):
        seed('qcow2-header-%s-rw' % name, 0, 1, head)
        seed('qcow2-header-%s-check' % name, 0, 2, head)

b = open('snap.qcow2', 'rb').read()
nb, off = struct.unpack_from('>IQ', b, 60)
size = struct.unpack_from('>Q', b, 24)[0]
seed('qcow2-snapshots', 1, 0, struct.pack('<HI', nb, size // 512) +
     b[off:off + 512].rstrip(b'\0'))

b = open('bitmap.qcow2', 'rb').read()
nbm, _, dsize, doff = struct.unpack_from('>IIQQ', exts(b)[0x23852875])
size = struct.unpack_from('>Q', b, 24)[0]
seed('qcow2-bitmaps', 2, 0, struct.pack('<HBI', nbm, 12 - 9, size // 512) +
     b[doff:doff + dsize])

b = open('luks.qcow2', 'rb').read()
coff, clen = struct.unpack_from('>QQ', exts(b)[0x0537be77])
seed('qcow2-luks', 3, 0, b[coff:coff + min(clen, 4096)].rstrip(b'\0'))

b = open('dyn.vhdx', 'rb').read()
K = 1024
seed('vhdx-header', 4, 0, b[64 * K:64 * K + 4096].rstrip(b'\0'))
seed('vhdx-header-fixsum', 4, 1, b[128 * K:128 * K + 4096].rstrip(b'\0'))
rt = b[192 * K:192 * K + 64 * K]
seed('vhdx-regions', 5, 0, rt.rstrip(b'\0'))
seed('vhdx-regions-fixsum', 5, 1, rt.rstrip(b'\0'))
count = struct.unpack_from('<I', rt, 8)[0]
for i in range(count):
    guid, moff, mlen = struct.unpack_from('<16sQI', rt, 16 + 32 * i)
    if struct.unpack_from('<I', guid)[0] == 0x8B7CA206:
        meta = b[moff:moff + 64 * K + 4096].rstrip(b'\0')
        seed('vhdx-metadata', 6, 0, struct.pack('<I', mlen) + meta)

for name in ['flat', 'split']:
    seed('vmdk-descriptor-%s' % name, 7, 0,
         open(name + '.vmdk', 'rb').read().rstrip(b'\0'))
b = open('sparse.vmdk', 'rb').read()
doff, dlen = struct.unpack_from('<QQ', b, 28)
seed('vmdk-descriptor-embedded', 7, 0,
     b[doff * 512:(doff + dlen) * 512].rstrip(b'\0'))
seed('vmdk-sparse', 8, 0, b[:512])
seed('vmdk-sparse-stream', 8, 0, open('stream.vmdk', 'rb').read()[:512])
PY
echo "make_corpus_codecs.sh: $(ls "$out" | wc -l) seeds in $out"
