#!/bin/bash
# Make a seed corpus of small qcow2 images with qemu-img and qemu-io:
#   make_corpus.sh OUTDIR          the full seed corpus (CI, fuzz runs)
#   make_corpus.sh --tiny OUTDIR   the tiny seeds committed in corpus/qcow2
# Every feature of the format the read path handles appears in some image:
# cluster sizes 512 B..2 MiB, compat 0.10 and 1.1, zlib and zstd
# compressed clusters, zero clusters, extended L2 entries with subcluster
# writes, internal snapshots, persistent bitmaps, backing file and data
# file names, LUKS, refcount widths, lazy refcounts, metadata
# preallocation, L2 tables far apart in a large virtual disk.
#
# Images are generated at run time, never committed (only the handful of
# tiny seeds under corpus/ are).  Each is kept below 1 MiB where the
# format allows, the fuzzers' -max_len; larger ones are truncated there,
# which is still a useful input (bytes past the end read as zero).
set -euo pipefail

tiny=false
if [ "${1:-}" = --tiny ]; then
    tiny=true
    shift
fi
out=${1:?usage: make_corpus.sh [--tiny] OUTDIR}
QEMU_IMG=${QEMU_IMG:-qemu-img}
QEMU_IO=${QEMU_IO:-qemu-io}
MAX_LEN=$((1024 * 1024))

mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/qimg-corpus.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"

count=0
# keep NAME: move the image in work/NAME into the corpus, truncated.
keep() {
    local name=$1
    cp "$name" "$out/$name"
    if [ "$(stat -c %s "$out/$name")" -gt $MAX_LEN ]; then
        truncate -s $MAX_LEN "$out/$name"
    fi
    count=$((count + 1))
}

img() { "$QEMU_IMG" "$@" >/dev/null; }
io() { "$QEMU_IO" "$@" >/dev/null; }

# Guest data with distinct patterns: data, zeros, and a pattern again.
fill() {
    local f=$1 fmt=$2 cs=$3
    io -f "$fmt" -c "write -P 0x11 0 $cs" -c "write -z $((cs * 2)) $cs" \
        -c "write -P 0x22 $((cs * 3)) 512" \
        -c "write -P 0x33 $((cs * 5 + 512)) $cs" \
        "$f"
}

# The committed seeds: 512-byte clusters keep each a few KiB.
if $tiny; then
    img create -f qcow2 -o compat=0.10,cluster_size=512 v2-cs512.qcow2 4M
    fill v2-cs512.qcow2 qcow2 512
    keep v2-cs512.qcow2
    img create -f qcow2 -o cluster_size=1024 v3-cs1024.qcow2 4M
    fill v3-cs1024.qcow2 qcow2 1024
    keep v3-cs1024.qcow2
    img create -f raw src.raw 16k
    io -f raw -c "write -P 0x5a 0 4k" src.raw
    head -c 4096 /dev/urandom | dd of=src.raw bs=4k seek=2 conv=notrunc \
        status=none
    img convert -c -O qcow2 -o cluster_size=512 src.raw zlib-cs512.qcow2
    keep zlib-cs512.qcow2
    img convert -c -O qcow2 -o cluster_size=512,compression_type=zstd \
        src.raw zstd-cs512.qcow2
    keep zstd-cs512.qcow2
    img create -f qcow2 -o cluster_size=512 snap-bitmap-cs512.qcow2 64k
    io -f qcow2 -c "write -P 0x12 0 1k" snap-bitmap-cs512.qcow2
    img snapshot -c first snap-bitmap-cs512.qcow2
    io -f qcow2 -c "write -P 0x34 512 1k" snap-bitmap-cs512.qcow2
    img bitmap --add snap-bitmap-cs512.qcow2 b0
    keep snap-bitmap-cs512.qcow2
    img create -f qcow2 base.qcow2 64k
    img create -f qcow2 -o cluster_size=512 -b base.qcow2 -F qcow2 \
        backing-cs512.qcow2
    io -f qcow2 -c "write -P 0x56 1k 1k" backing-cs512.qcow2
    keep backing-cs512.qcow2
    img create -f qcow2 -o cluster_size=512,data_file=data.raw \
        datafile-cs512.qcow2 64k
    io -f qcow2 -c "write -P 0x78 0 1k" datafile-cs512.qcow2
    keep datafile-cs512.qcow2
    echo "make_corpus.sh: $count images in $out" >&2
    exit 0
fi

# Cluster sizes, v3 and v2.
for cs in 512 1024 4096 16384 65536 2097152; do
    img create -f qcow2 -o cluster_size=$cs "v3-cs$cs.qcow2" \
        $((cs * 8 + 4 * 1024 * 1024))
    fill "v3-cs$cs.qcow2" qcow2 $cs
    keep "v3-cs$cs.qcow2"
done
for cs in 512 4096 65536; do
    img create -f qcow2 -o compat=0.10,cluster_size=$cs "v2-cs$cs.qcow2" 4M
    fill "v2-cs$cs.qcow2" qcow2 $cs
    keep "v2-cs$cs.qcow2"
done
img create -f qcow2 empty.qcow2 1G
keep empty.qcow2

# Compressed clusters: zlib (v2 and v3) and zstd, from a raw source with
# compressible and incompressible clusters.
img create -f raw src.raw 1M
io -f raw -c "write -P 0x5a 0 64k" -c "write -P 0xa5 192k 8k" src.raw
head -c 65536 /dev/urandom | dd of=src.raw bs=64k seek=8 conv=notrunc \
    status=none
for cs in 512 4096 65536; do
    img convert -c -O qcow2 -o cluster_size=$cs src.raw "zlib-cs$cs.qcow2"
    keep "zlib-cs$cs.qcow2"
    img convert -c -O qcow2 -o cluster_size=$cs,compression_type=zstd \
        src.raw "zstd-cs$cs.qcow2"
    keep "zstd-cs$cs.qcow2"
done
img convert -c -O qcow2 -o compat=0.10,cluster_size=4096 src.raw \
    zlib-v2.qcow2
keep zlib-v2.qcow2

# Extended L2 entries: subcluster writes, zeros, a backing file name.
for cs in 16384 65536; do
    img create -f qcow2 -o extended_l2=on,cluster_size=$cs \
        "extl2-cs$cs.qcow2" 4M
    io -f qcow2 -c "write -P 0x44 $((cs / 32)) $((cs / 32))" \
        -c "write -z $((cs * 2)) $((cs / 16))" \
        -c "write -P 0x55 $((cs * 3 + cs / 2)) $((cs / 4))" "extl2-cs$cs.qcow2"
    keep "extl2-cs$cs.qcow2"
done
img create -f qcow2 -o cluster_size=16384 base.qcow2 4M
io -f qcow2 -c "write -P 0x66 0 1M" base.qcow2
img create -f qcow2 -o extended_l2=on,cluster_size=16384 -b base.qcow2 \
    -F qcow2 extl2-backing.qcow2
io -f qcow2 -c "write -P 0x77 512 512" extl2-backing.qcow2
keep extl2-backing.qcow2

# Backing file names (refused by the fuzz targets, but parsed).
img create -f qcow2 -o cluster_size=4096 -b base.qcow2 -F qcow2 overlay.qcow2
io -f qcow2 -c "write -P 0x88 4096 4096" overlay.qcow2
keep overlay.qcow2
img create -f qcow2 -u -b /etc/passwd -F raw backing-abs.qcow2 1M
keep backing-abs.qcow2
img create -f qcow2 -o compat=0.10 -u -b base.qcow2 -F qcow2 backing-v2.qcow2 1M
keep backing-v2.qcow2

# External data files (refused; the header extension is parsed).
img create -f qcow2 -o data_file=data.raw datafile.qcow2 1M
io -f qcow2 -c "write -P 0x99 0 64k" datafile.qcow2
keep datafile.qcow2
img create -f qcow2 -o data_file=data2.raw,data_file_raw=on \
    datafile-raw.qcow2 1M
keep datafile-raw.qcow2

# Internal snapshots and persistent bitmaps.
img create -f qcow2 -o cluster_size=4096 snap.qcow2 1M
io -f qcow2 -c "write -P 0x12 0 8k" snap.qcow2
img snapshot -c first snap.qcow2
io -f qcow2 -c "write -P 0x34 4k 8k" snap.qcow2
img snapshot -c "second snapshot" snap.qcow2
keep snap.qcow2
img create -f qcow2 -o cluster_size=4096 bitmaps.qcow2 1M
img bitmap --add bitmaps.qcow2 b0
img bitmap --add -g 65536 bitmaps.qcow2 b1
img bitmap --add --disable bitmaps.qcow2 b2
io -f qcow2 -c "write -P 0x56 0 64k" bitmaps.qcow2
keep bitmaps.qcow2

# Refcount widths, lazy refcounts, metadata preallocation.
for bits in 1 64; do
    img create -f qcow2 -o refcount_bits=$bits,cluster_size=4096 \
        "refcount$bits.qcow2" 1M
    fill "refcount$bits.qcow2" qcow2 4096
    keep "refcount$bits.qcow2"
done
img create -f qcow2 -o lazy_refcounts=on,cluster_size=4096 lazy.qcow2 1M
fill lazy.qcow2 qcow2 4096
keep lazy.qcow2
img create -f qcow2 -o preallocation=metadata,cluster_size=4096 \
    prealloc.qcow2 256k
keep prealloc.qcow2

# A large virtual disk with L2 tables far apart.
img create -f qcow2 -o cluster_size=4096 sparse-large.qcow2 64G
io -f qcow2 -c "write -P 0x61 0 4k" -c "write -P 0x62 16G 4k" \
    -c "write -P 0x63 40G 8k" -c "write -z 63G 4k" sparse-large.qcow2
keep sparse-large.qcow2

# LUKS (header only matters; a short iteration time keeps it quick).
# qemu-img times the key slot's PBKDF2 and, on a busy machine, may fail
# to ("Unable to get accurate CPU usage", a 0 ms trial): retry.
for t in $(seq 60); do
    "$QEMU_IMG" create -q -f qcow2 --object secret,id=s0,data=fuzz \
        -o encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10 \
        -o cluster_size=4096 luks.qcow2 1M >/dev/null 2>&1 && break
done
img info luks.qcow2 >/dev/null
keep luks.qcow2

echo "make_corpus.sh: $count images in $out" >&2
