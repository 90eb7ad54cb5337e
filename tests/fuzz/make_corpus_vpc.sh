#!/bin/bash
# Make seed VHD images with qemu-img and qemu-io (see make_corpus.sh):
#   make_corpus_vpc.sh OUTDIR          the full seed corpus (fuzz runs)
#   make_corpus_vpc.sh --tiny OUTDIR   the tiny seeds committed in corpus/vpc
# Dynamic images with 4 KiB and 512-byte blocks (patched in: qemu-img
# makes 2 MiB ones) so that blocks with data stay small, fixed images,
# force_size (current_size) and CHS-sized ones, a maximum geometry.
set -euo pipefail

tiny=false
if [ "${1:-}" = --tiny ]; then
    tiny=true
    shift
fi
out=${1:?usage: make_corpus_vpc.sh [--tiny] OUTDIR}
QEMU_IMG=${QEMU_IMG:-qemu-img}
QEMU_IO=${QEMU_IO:-qemu-io}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/qimg-corpus.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"

# small NAME SIZE BLOCK ENTRIES [FORCE]: a dynamic image whose header is
# patched to BLOCK-byte blocks and ENTRIES BAT entries (its BAT has room
# for 128).
small() {
    "$QEMU_IMG" create -q -f vpc ${5:+-o force_size=on} "$1" "$2"
    python3 - "$1" "$3" "$4" <<'PY'
import struct, sys
f, bs, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
b = bytearray(open(f, 'rb').read())
struct.pack_into('>II', b, 512 + 28, n, bs)
struct.pack_into('>I', b, 512 + 36, 0)
struct.pack_into('>I', b, 512 + 36, ~sum(b[512:1536]) & 0xffffffff)
open(f, 'wb').write(b)
PY
}

small dyn4k.vhd 60k 4096 32
"$QEMU_IO" -f vpc -c 'write -P 0x5a 0 6k' -c 'write -P 0xa5 40k 512' \
    dyn4k.vhd >/dev/null
small dyn512.vhd 8k 512 16 force
"$QEMU_IO" -f vpc -c 'write -P 0x11 512 1k' -c 'write -P 0x22 7k 512' \
    dyn512.vhd >/dev/null
"$QEMU_IMG" create -q -f vpc -o subformat=fixed,force_size=on fixed.vhd 4k
"$QEMU_IO" -f vpc -c 'write -P 0x33 1k 1k' fixed.vhd >/dev/null
"$QEMU_IMG" create -q -f vpc empty.vhd 1M
if ! $tiny; then
    "$QEMU_IMG" create -q -f vpc -o subformat=fixed chs-fixed.vhd 100k
    "$QEMU_IMG" create -q -f vpc -o force_size=on big.vhd 2040G
    "$QEMU_IMG" create -q -f vpc maxgeo.vhd 200G
    small dyn4k-full.vhd 64k 4096 32
    "$QEMU_IO" -f vpc -c 'write -P 0x77 0 64k' dyn4k-full.vhd >/dev/null
fi
cp ./*.vhd "$out/"
echo "make_corpus_vpc.sh: $(ls ./*.vhd | wc -l) images in $out"
