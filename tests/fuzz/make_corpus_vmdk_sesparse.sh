#!/bin/bash
# Make seed seSparse extents (the inputs of fuzz_vmdk_sesparse) with
# tests/compat/sesparse_tool.py, from raw files written by qemu-io:
#   make_corpus_vmdk_sesparse.sh OUTDIR          the full seed corpus
#   make_corpus_vmdk_sesparse.sh --tiny OUTDIR   the tiny committed seeds
# Only the extent file of each image is kept (the target supplies the
# descriptor).  Grain indexes start at 0 so that the files stay small;
# zero grains cycle through unallocated, unmapped and zeroed entries.
set -euo pipefail

tiny=false
if [ "${1:-}" = --tiny ]; then
    tiny=true
    shift
fi
out=${1:?usage: make_corpus_vmdk_sesparse.sh [--tiny] OUTDIR}
QEMU_IO=${QEMU_IO:-qemu-io}
tool=$(cd "$(dirname "$0")/../compat" && pwd)/sesparse_tool.py
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/qimg-corpus.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"

# seed NAME SIZE [SPARE_GTS] [QEMU-IO WRITE...]: a raw file of SIZE bytes
# with those writes, made into an seSparse image; its extent is kept.
seed() {
    local name=$1 size=$2 spare=$3
    shift 3
    truncate -s "$size" "$name.raw"
    local cmds=()
    for w in "$@"; do
        cmds+=(-c "write $w")
    done
    if [ ${#cmds[@]} -gt 0 ]; then
        "$QEMU_IO" -f raw "${cmds[@]}" "$name.raw" >/dev/null
    fi
    python3 "$tool" "$name.vmdk" "$name.raw" --grain-base 0 \
        --spare-gts "$spare"
    cp "$name-sesparse.vmdk" "$out/$name.se"
}

seed one-grain 4096 0 "-P 0x42 512 512"
seed partial 1536 0 "-P 0x17 0 1k"
if $tiny; then
    exit 0
fi
seed empty 65536 0
seed zeros-cycle 2M 0 "-P 0x11 0 4k" "-P 0x22 1M 4k" "-P 0x33 2093056 4k"
seed spare-gts 64k 2 "-P 0x5c 8k 12k"
# Two grain tables (16 MiB each) with data in the second only.
seed two-gts 17M 0 "-P 0x61 16777216 4k" "-P 0x62 17000000 3k"
