#!/bin/bash
# qimg check against qemu-img check: for images made by qemu-img/qemu-io
# (every cluster size class, refcount width, compat level, compression
# type, extended L2, snapshots, bitmaps, preallocation, a dirty lazy
# refcounts image, external data files, a backing chain) and for images
# damaged by patching bytes (as QEMU's iotests do), stdout, stderr and
# the exit status of "check" and "check --output=json" must be
# qemu-img's.  Check must never modify the image.
. "$QIMG_SRCDIR/tests/functions.sh"
cd "$T"

mk() { "$QEMU_IMG" create -q "$@" >/dev/null || fail "qemu-img create $*"; }
io() { "$QEMU_IO" "$@" >/dev/null || fail "qemu-io $*"; }

# The image's bytes (unless it is a huge sparse file) and modification
# time.
fingerprint() {
    if [ "$(stat -c %s "$1")" -le $((1 << 30)) ]; then
        sha256sum "$1" | cut -d' ' -f1
    fi
    stat -c '%s %y' "$1"
}

# same NAME ARGS...: run "check ARGS" with both programs; stdout, stderr
# (with qemu-img's program name) and exit status must be equal, and
# qimg must leave the image (the last argument) untouched.
case_nr=0
same() {
    local name=$1
    shift
    local file=${!#}
    case_nr=$((case_nr + 1))
    local c=case$case_nr
    "$QEMU_IMG" check "$@" >"$c.want.out" 2>"$c.want.err"
    echo "exit $?" >>"$c.want.out"
    local before
    before=$(fingerprint "$file" 2>/dev/null)
    "$QIMG" check "$@" >"$c.got.out" 2>"$c.got.err"
    echo "exit $?" >>"$c.got.out"
    sed -i 's/^qimg: /qemu-img: /; s/qimg --help/qemu-img --help/' \
        "$c.got.err"
    expect_same "$name: stdout and status" "$c.want.out" "$c.got.out"
    expect_same "$name: stderr" "$c.want.err" "$c.got.err"
    checks=$((checks + 1))
    if [ "$(fingerprint "$file" 2>/dev/null)" != "$before" ]; then
        fail "$name: qimg check changed $file"
    fi
}

# both NAME FILE: human, json and quiet output.
both() {
    same "$1" "$2"
    same "$1-json" --output=json "$2"
    same "$1-q" -q "$2"
}

# ---- Images as QEMU makes them ---------------------------------------

for cs in 512 4k 64k 2M; do
    mk -f qcow2 -o cluster_size=$cs cs$cs.qcow2 8M
    io -c 'write -P 1 0 100k' -c 'write -P 2 3M 5k' -c 'write -P 3 1M 1k' \
        cs$cs.qcow2
    both "cluster size $cs" cs$cs.qcow2
done
for rb in 1 2 4 8 16 32 64; do
    mk -f qcow2 -o refcount_bits=$rb rb$rb.qcow2 4M
    io -c 'write -P 1 0 200k' -c 'write -P 2 2M 64k' -c 'write -z 1M 128k' \
        rb$rb.qcow2
    both "refcount_bits=$rb" rb$rb.qcow2
done
mk -f qcow2 -o compat=0.10 v2.qcow2 4M
io -c 'write -P 5 64k 300k' -c 'write -z 1M 64k' v2.qcow2
both "compat=0.10" v2.qcow2

mk -f raw src.raw 4M
io -f raw -c 'write -P 3 0 1M' -c 'write -P 4 2M 300k' src.raw
for z in zlib zstd; do
    mk -f qcow2 -o compression_type=$z c$z.qcow2 4M
    io -c 'write -c -P 7 0 64k' -c 'write -c -P 8 64k 64k' \
        -c 'write -c -P 9 2M 64k' -c 'write -P 1 1M 64k' c$z.qcow2
    both "compressed $z" c$z.qcow2
    "$QEMU_IMG" convert -c -O qcow2 -o compression_type=$z src.raw cv$z.qcow2
    both "convert -c $z" cv$z.qcow2
done

mk -f qcow2 -o extended_l2=on el2.qcow2 4M
io -c 'write -P 1 0 4k' -c 'write -P 2 70k 8k' -c 'write -z 200k 4k' \
    -c 'write -c -P 3 1M 64k' el2.qcow2
both "extended_l2" el2.qcow2

mk -f qcow2 sn.qcow2 4M
io -c 'write -P 1 0 128k' sn.qcow2
"$QEMU_IMG" snapshot -c s1 sn.qcow2
io -c 'write -P 2 64k 128k' sn.qcow2
"$QEMU_IMG" snapshot -c s2 sn.qcow2
io -c 'write -P 3 0 64k' -c 'write -P 3 3M 64k' sn.qcow2
both "snapshots" sn.qcow2

mk -f qcow2 bm.qcow2 4M
"$QEMU_IMG" bitmap --add bm.qcow2 b1
"$QEMU_IMG" bitmap --add -g 64k bm.qcow2 b2
io -c 'write -P 1 0 128k' -c 'write -P 1 2M 64k' bm.qcow2
both "bitmaps" bm.qcow2
# Killed while a bitmap was in use: it stays marked in-use.
( "$QEMU_IO" -c 'write -P 1 1M 64k' -c 'sigraise 9' bm.qcow2; true ) \
    >/dev/null 2>&1
both "bitmap in use" bm.qcow2

for p in metadata falloc full; do
    mk -f qcow2 -o preallocation=$p pa$p.qcow2 4M
    io -c 'write -P 1 64k 64k' pa$p.qcow2
    both "preallocation=$p" pa$p.qcow2
done

# Lazy refcounts, killed before the refcounts were written: dirty.
mk -f qcow2 -o lazy_refcounts=on lazy.qcow2 4M
( "$QEMU_IO" -c 'write -P 1 0 128k' -c 'sigraise 9' lazy.qcow2; true ) \
    >/dev/null 2>&1
both "dirty lazy refcounts" lazy.qcow2

mk -f qcow2 -o data_file=ext.data df.qcow2 4M
io -c 'write -P 1 0 128k' -c 'write -P 2 2M 64k' df.qcow2
both "data file" df.qcow2
mk -f qcow2 -o data_file=ext2.data,data_file_raw=on dfr.qcow2 4M
io -c 'write -P 1 0 128k' dfr.qcow2
both "raw data file" dfr.qcow2

mk -f qcow2 base.qcow2 4M
io -c 'write -P 1 0 1M' base.qcow2
mk -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2
io -c 'write -P 2 512k 64k' -c 'write -P 2 3M 4k' mid.qcow2
mk -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
io -c 'write -P 3 100k 10k' -c 'write -P 3 2M 200k' -c 'write -P 3 1M 4k' \
    top.qcow2
both "backing chain top" top.qcow2
both "backing chain middle" mid.qcow2

mk -f qcow2 empty.qcow2 1G
both "empty" empty.qcow2
mk -f qcow2 -o cluster_size=512 big512.qcow2 100M
io -c 'write -P 1 0 3M' -c 'write -P 1 50M 1M' big512.qcow2
both "many L2 tables" big512.qcow2

# ---- Damaged images ------------------------------------------------------

# patch FILE OFFSET VALUE [WIDTH]: store a big-endian integer.
patch() {
    python3 - "$@" <<'EOF'
import sys
f, off, val = sys.argv[1], int(sys.argv[2], 0), int(sys.argv[3], 0)
width = int(sys.argv[4]) if len(sys.argv) > 4 else 8
with open(f, 'r+b') as fh:
    fh.seek(off)
    fh.write(val.to_bytes(width, 'big'))
EOF
}

# A 1 MiB image, 64 KiB clusters: header 0, refcount table 0x10000,
# refcount block 0x20000 (16-bit entries), L1 0x30000, L2 0x40000, data
# clusters 0x50000 (guest 0) and 0x60000 (guest 256k).
fresh() {
    rm -f "$1"
    mk -f qcow2 "$1" 1M
    io -c 'write -P 1 0 64k' -c 'write -P 2 256k 64k' "$1"
    local l1
    l1=$(python3 -c "import struct;print(struct.unpack('>Q',open('$1','rb').read()[40:48])[0])")
    [ "$l1" = 196608 ] || fail "fresh: unexpected layout of $1"
}
L1=0x30000
L2=0x40000
RB=0x20000

fresh refcount0.qcow2
patch refcount0.qcow2 $((RB + 2 * 5)) 0 2
both "refcount 0 on a used cluster" refcount0.qcow2

fresh refcount2.qcow2
patch refcount2.qcow2 $((RB + 2 * 5)) 2 2
both "refcount 2 on a cluster used once" refcount2.qcow2

fresh leak.qcow2
truncate -s $((9 * 65536)) leak.qcow2
patch leak.qcow2 $((RB + 2 * 8)) 1 2
both "leaked cluster" leak.qcow2

fresh leak-past-eof.qcow2
patch leak-past-eof.qcow2 $((RB + 2 * 9)) 1 2
both "refcount past the end of the file" leak-past-eof.qcow2

fresh past-eof.qcow2
patch past-eof.qcow2 $L2 0x8000000000500000
both "L2 entry past EOF" past-eof.qcow2

fresh l2-unaligned.qcow2
patch l2-unaligned.qcow2 $L1 0x8000000000040200
both "unaligned L2 offset" l2-unaligned.qcow2

fresh l2-shared.qcow2
"$QEMU_IMG" resize -q l2-shared.qcow2 1G
patch l2-shared.qcow2 $((L1 + 8)) 0x8000000000040000
both "two L1 entries share an L2 table" l2-shared.qcow2

fresh reserved.qcow2
patch reserved.qcow2 $L2 0x8000000000050002
both "L2 entry with reserved bits" reserved.qcow2

fresh l1-reserved.qcow2
patch l1-reserved.qcow2 $L1 0x8000000000040001
both "L1 entry with reserved bits" l1-reserved.qcow2

fresh copied-data.qcow2
patch copied-data.qcow2 $L2 0x50000
both "COPIED missing on a data cluster" copied-data.qcow2

fresh copied-l2.qcow2
patch copied-l2.qcow2 $L1 0x40000
both "COPIED missing on an L2 table" copied-l2.qcow2

fresh l1-header.qcow2
patch l1-header.qcow2 $L1 0x8000000000000000
both "L1 entry with only COPIED set" l1-header.qcow2

fresh zero-unaligned.qcow2
patch zero-unaligned.qcow2 $L2 0x8000000000050201
both "unaligned preallocated zero cluster" zero-unaligned.qcow2

fresh data-unaligned.qcow2
patch data-unaligned.qcow2 $L2 0x8000000000050200
both "unaligned data cluster" data-unaligned.qcow2

fresh rb-unaligned.qcow2
patch rb-unaligned.qcow2 0x10000 0x20200
both "unaligned refcount block" rb-unaligned.qcow2

fresh rt-reserved.qcow2
patch rt-reserved.qcow2 0x10000 0x20001
both "refcount table entry with reserved bits" rt-reserved.qcow2

fresh rb-outside.qcow2
patch rb-outside.qcow2 0x10008 0x900000
both "refcount block outside the image" rb-outside.qcow2

fresh rb-shared.qcow2
patch rb-shared.qcow2 0x10008 0x20000
both "refcount block listed twice" rb-shared.qcow2

fresh l1-far.qcow2
patch l1-far.qcow2 40 0x7000000000000000
both "L1 table far past EOF" l1-far.qcow2

rm -f overflow.qcow2
mk -f qcow2 -o refcount_bits=1 overflow.qcow2 1G
io -c 'write -P 1 0 64k' -c 'write -P 2 256k 64k' overflow.qcow2
patch overflow.qcow2 $((L1 + 8)) 0x8000000000040000
both "refcount overflow (1-bit refcounts)" overflow.qcow2

rm -f comp-copied.qcow2
mk -f qcow2 comp-copied.qcow2 1M
io -c 'write -c -P 1 0 64k' comp-copied.qcow2
entry=$(python3 -c "import struct;print(struct.unpack('>Q',open('comp-copied.qcow2','rb').read()[$L2:$L2+8])[0] | 1 << 63)")
patch comp-copied.qcow2 $L2 "$entry"
both "compressed cluster with COPIED" comp-copied.qcow2

rm -f sn-unaligned.qcow2
mk -f qcow2 sn-unaligned.qcow2 1M
io -c 'write -P 1 0 64k' sn-unaligned.qcow2
# A long name: the problem line naming it is not cut.
"$QEMU_IMG" snapshot -c "$(printf 'long%.0s' $(seq 200))" sn-unaligned.qcow2
snoff=$(python3 -c "import struct;print(struct.unpack('>Q',open('sn-unaligned.qcow2','rb').read()[64:72])[0])")
snl1=$(python3 -c "import struct;print(struct.unpack('>Q',open('sn-unaligned.qcow2','rb').read()[$snoff:$snoff+8])[0] + 512)")
patch sn-unaligned.qcow2 "$snoff" "$snl1"
both "snapshot L1 table unaligned" sn-unaligned.qcow2

# Snapshot L1 tables at offsets QEMU's int64_t arithmetic wraps on.
for v in 0xfffffffffffe0000 0x7fffffffffff0000 0x8000000000000000; do
    rm -f sn-l1-$v.qcow2
    mk -f qcow2 sn-l1-$v.qcow2 1M
    io -c 'write -P 1 0 64k' sn-l1-$v.qcow2
    "$QEMU_IMG" snapshot -c s1 sn-l1-$v.qcow2
    o=$(python3 -c "import struct;print(struct.unpack('>Q',open('sn-l1-$v.qcow2','rb').read()[64:72])[0])")
    patch sn-l1-$v.qcow2 "$o" $v
    both "snapshot L1 table at $v" sn-l1-$v.qcow2
done

# Broken snapshot tables: the open for checking skips the table, the
# check reports it.
snap_image() {
    rm -f "$1"
    mk -f qcow2 "$1" 1M
    io -c 'write -P 1 0 64k' "$1"
    "$QEMU_IMG" snapshot -c snap1 "$1"
    snoff=$(python3 -c "import struct;print(struct.unpack('>Q',open('$1','rb').read()[64:72])[0])")
}
snap_image sn-table-unaligned.qcow2
patch sn-table-unaligned.qcow2 64 $((snoff + 8))
both "snapshot table offset unaligned" sn-table-unaligned.qcow2
snap_image sn-too-many.qcow2
patch sn-too-many.qcow2 60 100000 4
both "more than 65536 snapshots" sn-too-many.qcow2
snap_image sn-far.qcow2
patch sn-far.qcow2 64 0x7000000000000000
both "snapshot table past EOF (incomplete entries)" sn-far.qcow2
snap_image sn-unreadable.qcow2
patch sn-unreadable.qcow2 64 0x7fffffffffff0000
both "snapshot table past QEMU's I/O limit" sn-unreadable.qcow2
snap_image sn-extra.qcow2
patch sn-extra.qcow2 $((snoff + 36)) 2000 4
both "too much snapshot extra data" sn-extra.qcow2

# Extended L2: entry i at L2 + 16 * i, its subcluster bitmap 8 bytes on.
# Guest 0: data at 0x50000; guest 128k (entry 2): compressed.
extl2_image() {
    rm -f "$1"
    mk -f qcow2 -o extended_l2=on "$1" 1M
    io -c 'write -P 1 0 4k' -c 'write -c -P 2 128k 64k' "$1"
}
extl2_image el2-alloc-zero.qcow2
patch el2-alloc-zero.qcow2 $((L2 + 8)) 0x0000000100000001
both "extended L2: subcluster allocated and zero" el2-alloc-zero.qcow2
extl2_image el2-unalloc.qcow2
patch el2-unalloc.qcow2 $((L2 + 16 + 8)) 1
both "extended L2: unallocated cluster with allocated subcluster" \
    el2-unalloc.qcow2
extl2_image el2-compressed.qcow2
patch el2-compressed.qcow2 $((L2 + 32 + 8)) 1
both "extended L2: compressed cluster with a bitmap" el2-compressed.qcow2

fresh corrupt-bit.qcow2
patch corrupt-bit.qcow2 72 2
both "corrupt bit set" corrupt-bit.qcow2
fresh dirty-bit.qcow2
patch dirty-bit.qcow2 72 1
both "dirty bit set" dirty-bit.qcow2

# More than INT_MAX clusters: QEMU refuses (EFBIG) before reading.
mk -f qcow2 -o cluster_size=512 huge.qcow2 1M
truncate -s 2T huge.qcow2
same "file of more than INT_MAX clusters" huge.qcow2
rm -f huge.qcow2
# 2^31 - 1 clusters is allowed: qemu-img allocates 4 GiB of counts for
# this sparse 1000 GiB file.  qimg caps the count array at 512 MiB and
# fails as qemu-img fails when it cannot allocate them (exit 1), within
# 1 GiB of address space.
mk -f qcow2 -o cluster_size=512 sparse.qcow2 1M
truncate -s 1000G sparse.qcow2
checks=$((checks + 1))
(if [ "${QIMG_SANITIZED:-0}" = 0 ]; then ulimit -v 1048576; fi
 exec "$QIMG" check sparse.qcow2) >sparse.out 2>sparse.err
status=$?
if [ "$status" != 1 ] ||
   [ "$(cat sparse.err)" != "qimg: Check failed: Cannot allocate memory" ]
then
    fail "check of a 1000 GiB sparse file: exit $status" "$(cat sparse.err)"
fi
rm -f sparse.qcow2

# ---- The command line ----------------------------------------------------

mk -f raw plain.raw 1M
same "raw (probed)" plain.raw
same "raw -f raw" -f raw plain.raw
same "raw json" --output=json plain.raw
same "missing file" missing.qcow2
same "bad -r" -r foo cs64k.qcow2
same "bad -T" -T bogus cs64k.qcow2
same "good -T" -T none cs64k.qcow2
same "bad --output" --output=xml cs64k.qcow2
same "--output before a missing file name" --output=xml
same "two files" cs64k.qcow2 v2.qcow2
same "-U" -U cs64k.qcow2
same "--force-share" --force-share --output=json cs64k.qcow2
same "--format" --format=qcow2 cs64k.qcow2
same "wrong -f" -f raw cs64k.qcow2
same "bad -f" -f nosuchfmt cs64k.qcow2
same "missing -f argument" cs64k.qcow2 -f

# An image in use by a writer: refused, unless -U.
"$QEMU_IO" -c 'sleep 4000' cs4k.qcow2 >/dev/null 2>&1 &
holder=$!
sleep 1
same "locked by a writer" cs4k.qcow2
same "locked by a writer, -U" -U cs4k.qcow2
wait "$holder"

# Repairs (-r) are tested in check_repair.sh.

finish
