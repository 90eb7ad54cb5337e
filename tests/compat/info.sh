#!/bin/bash
# qimg info against qemu-img info on a corpus of images made by qemu-img
# and qemu-io: human and JSON output must be byte-identical.
. "$QIMG_SRCDIR/tests/functions.sh"
cd "$T"

mk() { "$QEMU_IMG" create -q "$@" || fail "qemu-img create $*"; }
io() { "$QEMU_IO" "$@" >/dev/null || fail "qemu-io $*"; }

corpus=()
add() { corpus+=("$1"); }

# Cluster sizes from 512 B to 2 MiB, v2 and v3.
for cs in 512 1024 4096 65536 262144 2097152; do
    mk -f qcow2 -o cluster_size=$cs cs$cs.qcow2 100M
    add cs$cs.qcow2
done
mk -f qcow2 -o compat=0.10 v2.qcow2 1G; add v2.qcow2
mk -f qcow2 -o compat=1.1 v3.qcow2 1G; add v3.qcow2
for rb in 1 2 4 8 16 32 64; do
    mk -f qcow2 -o refcount_bits=$rb rb$rb.qcow2 64M
    add rb$rb.qcow2
done
mk -f qcow2 -o compression_type=zstd zstd.qcow2 64M; add zstd.qcow2
mk -f qcow2 -o compression_type=zlib zlib.qcow2 64M; add zlib.qcow2
mk -f qcow2 -o extended_l2=on el2.qcow2 64M; add el2.qcow2
mk -f qcow2 -o extended_l2=on,cluster_size=16k el2s.qcow2 64M; add el2s.qcow2
mk -f qcow2 -o lazy_refcounts=on lazy.qcow2 64M; add lazy.qcow2
for p in off metadata falloc full; do
    mk -f qcow2 -o preallocation=$p pre-$p.qcow2 8M
    add pre-$p.qcow2
done
mk -f qcow2 odd.qcow2 12345K; add odd.qcow2
mk -f qcow2 big.qcow2 16T; add big.qcow2

# Data: plain, compressed (zlib and zstd), zeroes.
mk -f qcow2 data.qcow2 64M
io -f qcow2 -c 'write -P 0x5a 0 1M' -c 'write -z 4M 1M' \
    -c 'write -c -P 7 8M 64k' data.qcow2
add data.qcow2
io -f qcow2 -c 'write -c -P 9 0 128k' zstd.qcow2

# Snapshots, including one with a vm clock via qemu-img and several.
mk -f qcow2 snap.qcow2 64M
io -f qcow2 -c 'write -P 1 0 64k' snap.qcow2
"$QEMU_IMG" snapshot -c first snap.qcow2
io -f qcow2 -c 'write -P 2 0 64k' snap.qcow2
"$QEMU_IMG" snapshot -c "second one" snap.qcow2
"$QEMU_IMG" snapshot -c third snap.qcow2
"$QEMU_IMG" snapshot -d second\ one snap.qcow2
add snap.qcow2
mk -f qcow2 -o compat=0.10 snapv2.qcow2 64M
"$QEMU_IMG" snapshot -c old snapv2.qcow2
add snapv2.qcow2

# Bitmaps.
mk -f qcow2 bm.qcow2 64M
"$QEMU_IMG" bitmap --add bm.qcow2 bm0
"$QEMU_IMG" bitmap --add -g 128k bm.qcow2 other
"$QEMU_IMG" bitmap --disable bm.qcow2 other
add bm.qcow2

# Backing chains with relative names, in and below subfolders.
mkdir -p chain/sub
mk -f raw chain/base.raw 32M
mk -f qcow2 -b base.raw -F raw chain/mid.qcow2
mk -f qcow2 -b mid.qcow2 -F qcow2 chain/top.qcow2 64M
mk -f qcow2 -b ../mid.qcow2 -F qcow2 chain/sub/deep.qcow2
mk -f qcow2 -o compat=0.10 -b mid.qcow2 -F qcow2 chain/v2top.qcow2
add chain/mid.qcow2; add chain/top.qcow2; add chain/sub/deep.qcow2
add chain/v2top.qcow2
# A backing file named without a format in the header (made unsafe).
mk -f qcow2 -b base.raw -F raw chain/nofmt.qcow2
"$QEMU_IMG" rebase -u -b base.raw chain/nofmt.qcow2 2>/dev/null ||
    "$QEMU_IMG" rebase -u -b base.raw -F raw chain/nofmt.qcow2
add chain/nofmt.qcow2
# A missing backing file does not stop info.
mk -f qcow2 -u -b gone.qcow2 -F qcow2 orphan.qcow2 1M; add orphan.qcow2

# External data file.
mk -f qcow2 -o data_file=ext.raw ext.qcow2 16M; add ext.qcow2
mk -f qcow2 -o data_file=extr.raw,data_file_raw=on extr.qcow2 16M
add extr.qcow2

# Raw images: empty, sparse, allocated.
mk -f raw empty.raw 0; add empty.raw
mk -f raw sparse.raw 1G; add sparse.raw
mk -f raw -o preallocation=full full.raw 3M; add full.raw
# Not a whole number of sectors: shown rounded up, as QEMU does.
head -c 196616 /dev/urandom >odd.raw; add odd.raw
head -c 1 /dev/urandom >tiny.raw; add tiny.raw

# Dirty (lazy refcounts, not closed cleanly) and corrupt images.
mk -f qcow2 -o lazy_refcounts=on dirty.qcow2 16M
# abort exits by signal: the image is left dirty on purpose.
("$QEMU_IO" -f qcow2 -c "write 0 64k" -c abort dirty.qcow2; true) \
    >/dev/null 2>&1
add dirty.qcow2
mk -f qcow2 corrupt.qcow2 16M
# incompatible_features (offset 72): set bit 1, the corrupt bit.
printf '\x00\x00\x00\x00\x00\x00\x00\x02' |
    dd of=corrupt.qcow2 bs=1 seek=72 conv=notrunc status=none
add corrupt.qcow2

for img in "${corpus[@]}"; do
    for out in human json; do
        "$QEMU_IMG" info -U --output=$out "$img" >want.txt 2>&1
        "$QIMG" info -U --output=$out "$img" >got.txt 2>&1
        expect_same "info --output=$out $img" want.txt got.txt
    done
    # -f given explicitly, and without -U (no one else holds the image).
    fmt=$("$QEMU_IMG" info -U --output=json "$img" |
          sed -n 's/^    "format": "\(.*\)",$/\1/p')
    "$QEMU_IMG" info -f "$fmt" "$img" >want.txt 2>&1
    "$QIMG" info -f "$fmt" "$img" >got.txt 2>&1
    expect_same "info -f $fmt $img" want.txt got.txt
done

for img in chain/top.qcow2 chain/sub/deep.qcow2 chain/v2top.qcow2; do
    for out in human json; do
        "$QEMU_IMG" info --backing-chain --output=$out "$img" >want.txt 2>&1
        "$QIMG" info --backing-chain --output=$out "$img" >got.txt 2>&1
        expect_same "info --backing-chain --output=$out $img" want.txt got.txt
    done
done

# An empty file name is refused by QEMU's file driver, by every command.
empty_name() {
    "$QEMU_IMG" "$@" >want.txt 2>&1
    echo "status $?" >>want.txt
    "$QIMG" "$@" >got.txt 2>&1
    echo "status $?" >>got.txt
    sed -i 's/^qemu-img: /qimg: /' want.txt
    expect_same "$1 with an empty file name" want.txt got.txt
}
empty_name info ""
empty_name check ""
empty_name map ""
empty_name compare "" ""
empty_name convert -O raw "" out.raw

finish
