#!/bin/bash
# The qcow2 write path against QEMU's: the same guest operations applied
# by qemu-io to one copy of an image and by qimg (write_image, through the
# public API) to another must leave images that read the same
# (qemu-img compare and qimg compare), that qemu-img check finds clean
# (no errors, no leaks), and whose allocation map (data, zero, present,
# depth per range; host offsets aside) is QEMU's.  Over every cluster
# size class, refcount width, compat level, extended L2, zstd, lazy
# refcounts, with raw and qcow2 backing files, shared clusters of an
# internal snapshot, refcount table growth, resize and corruption.
. "$QIMG_SRCDIR/tests/functions.sh"
cd "$T"
W=${QIMG_WRITE_IMAGE:?}
SIZE=$((16 * 1024 * 1024))

# qemu-io commands for write_image operations; 'o' (reopen) splits runs.
qio_cmd() {
    local IFS=:
    set -- $1
    case $1 in
    w) echo "write -P $4 $2 $3" ;;
    z) echo "write -z $2 $3" ;;
    u) echo "write -z -u $2 $3" ;;
    d) echo "discard $2 $3" ;;
    c) echo "write -c -P $4 $2 $3" ;;
    f) echo "flush" ;;
    esac
}

# qemu_apply FILE OPS...: the operations through qemu-io.
qemu_apply() {
    local file=$1 op
    shift
    local args=()
    for op in "$@" o; do
        if [ "$op" = o ]; then
            if [ ${#args[@]} -gt 0 ]; then
                "$QEMU_IO" -f qcow2 "${args[@]}" "$file" >"$T/qio.out" 2>&1
                if [ $? != 0 ] || grep -q failed "$T/qio.out"; then
                    fail "qemu-io on $file" "$(cat "$T/qio.out")"
                fi
            fi
            args=()
        else
            args+=(-c "$(qio_cmd "$op")")
        fi
    done
}

# verify NAME QEMU_COPY QIMG_COPY: the two copies agree and qimg's is clean.
verify() {
    local name=$1 q=$2 a=$3
    checks=$((checks + 1))
    local out
    if ! out=$("$QEMU_IMG" check "$a" 2>&1); then
        fail "$name: qemu-img check" "$out"
    elif ! printf '%s\n' "$out" | grep -q '^No errors were found'; then
        fail "$name: qemu-img check not clean" "$out"
    fi
    checks=$((checks + 1))
    if ! out=$("$QEMU_IMG" compare "$q" "$a" 2>&1); then
        fail "$name: qemu-img compare" "$out"
    fi
    checks=$((checks + 1))
    if ! out=$("$QIMG" compare "$q" "$a" 2>&1); then
        fail "$name: qimg compare" "$out"
    fi
    map_layout "$q" >"$T/q.map"
    map_layout "$a" >"$T/a.map"
    expect_same "$name: allocation map" "$T/q.map" "$T/a.map"
    # Compressed clusters stay compressed (the map does not show it).
    local f
    for f in "$q" "$a"; do
        "$QEMU_IMG" check --output=json "$f" | python3 -c '
import json, sys
c = json.load(sys.stdin)
print(c.get("allocated-clusters", 0), c.get("compressed-clusters", 0))
' >"$f.counts"
    done
    expect_same "$name: allocated and compressed clusters" "$q.counts" \
        "$a.counts"
}

# run_case NAME CREATE_ARGS -- OPS...: both tools on copies of one image.
run_case() {
    local name=$1
    shift
    local create=()
    while [ "$1" != -- ]; do
        create+=("$1")
        shift
    done
    shift
    rm -f q.qcow2 a.qcow2
    "$QEMU_IMG" create -q -f qcow2 "${create[@]}" q.qcow2 $SIZE ||
        { fail "$name: create"; return; }
    cp q.qcow2 a.qcow2
    qemu_apply q.qcow2 "$@"
    if ! "$W" a.qcow2 qcow2 "$@" 2>"$T/w.err"; then
        fail "$name: write_image" "$(cat "$T/w.err")"
        return
    fi
    verify "$name" q.qcow2 a.qcow2
}

# A sequence touching every path: aligned and unaligned writes, writes
# inside subclusters, zero writes with and without unmap, discards,
# compressed clusters and overwrites of them, flushes and reopens.
K=1024
M=$((1024 * 1024))
OPS=(
    w:0:65536:1 w:100000:5000:2 w:$M:$((3 * M)):3 z:65536:65536
    u:$((2 * M)):65536 d:$((3 * M)):$M w:3000000:200000:4 f
    w:511:2:5 o w:70000:100:6 c:$((4 * M)):$((2 * M)):7
    c:$((6 * M)):$((2 * M)):11
    w:$((4 * M + 100)):10:8 z:$((5 * M)):$((64 * K)) d:0:131072
    w:$((8 * M - 3)):7:9 u:$((8 * M)):$((3 * M)) w:$((12 * M)):$((4 * M)):10
    o z:$((13 * M + 4096)):$((100 * K))
    w:$((16 * M - 512)):512:12 d:$((14 * M)):$((2 * M))
)

for opts in "" cluster_size=512 cluster_size=1024,refcount_bits=2 \
    cluster_size=4096,refcount_bits=1 refcount_bits=64 compat=0.10 \
    lazy_refcounts=on extended_l2=on,cluster_size=16k \
    compression_type=zstd extended_l2=on,cluster_size=2M; do
    run_case "fresh ${opts:-default}" ${opts:+-o "$opts"} -- "${OPS[@]}"
done

# A compressed write as the very first write of a fresh image (the write
# buffers are set up by the first write of any kind).
for opts in "" compression_type=zstd; do
    run_case "compressed first ${opts:-default}" ${opts:+-o "$opts"} -- \
        c:0:$((2 * M)):7 w:$((3 * M)):4096:8
done

# Over backing files: copy-on-write of partial clusters and subclusters.
head -c $SIZE /dev/urandom >base.raw
"$QEMU_IMG" convert -q -f raw -O qcow2 -o cluster_size=4096 base.raw \
    base.qcow2
"$QEMU_IO" -f qcow2 -c "write -z 0 1M" -c "discard 2M 1M" base.qcow2 \
    >/dev/null
for opts in "" extended_l2=on compat=0.10 cluster_size=512; do
    run_case "raw backing ${opts:-default}" -b base.raw -F raw \
        ${opts:+-o "$opts"} -- "${OPS[@]}"
    run_case "qcow2 backing ${opts:-default}" -b base.qcow2 -F qcow2 \
        ${opts:+-o "$opts"} -- "${OPS[@]}"
done

# Clusters shared with an internal snapshot are copied, never changed:
# the snapshot still reads as before on both copies.
for opts in "" extended_l2=on cluster_size=4096; do
    name="snapshot ${opts:-default}"
    rm -f q.qcow2 a.qcow2
    "$QEMU_IMG" create -q -f qcow2 ${opts:+-o "$opts"} q.qcow2 $SIZE
    qemu_apply q.qcow2 w:0:$((3 * M)):1 c:$((10 * M)):$M:2 z:$((3 * M)):$M
    "$QEMU_IMG" snapshot -c s1 q.qcow2
    cp q.qcow2 a.qcow2
    qemu_apply q.qcow2 "${OPS[@]}"
    "$W" a.qcow2 qcow2 "${OPS[@]}" 2>"$T/w.err" ||
        fail "$name: write_image" "$(cat "$T/w.err")"
    verify "$name" q.qcow2 a.qcow2
    "$QEMU_IMG" convert -l s1 -O raw q.qcow2 q-s1.raw
    "$QEMU_IMG" convert -l s1 -O raw a.qcow2 a-s1.raw
    expect_same "$name: snapshot content" q-s1.raw a-s1.raw
done

# The refcount table grows: 512-byte clusters, 64 refcount blocks in its
# one cluster, each describing 128 KiB, so 40 MiB of data needs more.
SIZE=$((64 * M))
run_case "reftable growth" -o cluster_size=512 -- \
    w:0:$((40 * M)):1 o w:$((50 * M)):$((10 * M)):2 d:$M:$((4 * M))
run_case "reftable growth, 1-bit refcounts" \
    -o cluster_size=512,refcount_bits=1 -- w:0:$((24 * M)):3 c:$((30 * M)):$M:4
SIZE=$((16 * M))

# Resize against qemu-img resize.
for opts in "" extended_l2=on cluster_size=512; do
    name="resize ${opts:-default}"
    rm -f q.qcow2 a.qcow2
    "$QEMU_IMG" create -q -f qcow2 ${opts:+-o "$opts"} q.qcow2 $SIZE
    qemu_apply q.qcow2 w:0:$((10 * M)):1 c:$((12 * M)):$M:2
    cp q.qcow2 a.qcow2
    "$QEMU_IMG" resize -q q.qcow2 $((3 * SIZE))
    "$W" a.qcow2 qcow2 r:$((3 * SIZE)) 2>"$T/w.err" ||
        fail "$name: grow" "$(cat "$T/w.err")"
    verify "$name: grow" q.qcow2 a.qcow2
    qemu_apply q.qcow2 w:$((40 * M)):$M:3
    "$W" a.qcow2 qcow2 w:$((40 * M)):$M:3 || fail "$name: write after grow"
    "$QEMU_IMG" resize -q --shrink q.qcow2 $((5 * M + 512))
    "$W" a.qcow2 qcow2 r:-$((5 * M + 512)) 2>"$T/w.err" ||
        fail "$name: shrink" "$(cat "$T/w.err")"
    verify "$name: shrink" q.qcow2 a.qcow2
    # The file ends with its last cluster in use.
    checks=$((checks + 1))
    end=$("$QEMU_IMG" check a.qcow2 | sed -n 's/^Image end offset: //p')
    if [ "$(stat -c %s a.qcow2)" != "$end" ]; then
        fail "$name: the file was not trimmed after the shrink" \
            "size $(stat -c %s a.qcow2), image end offset $end"
    fi
    # Growing again shows zeros where QEMU 7.2 shows the bytes cut off
    # by the shrink (they stay in the last cluster): qimg zeroes them.
    "$QEMU_IMG" resize -q q.qcow2 $SIZE
    "$W" a.qcow2 qcow2 r:$SIZE || fail "$name: regrow"
    "$QEMU_IMG" convert -O raw q.qcow2 q.raw
    "$QEMU_IMG" convert -O raw a.qcow2 a.raw
    checks=$((checks + 1))
    cmp -s -n $((5 * M + 512)) q.raw a.raw ||
        fail "$name: regrow: data before the old end differs"
    checks=$((checks + 1))
    tail -c +$((5 * M + 513)) a.raw | cmp -s - <(head -c $((SIZE - 5 * M - 512)) /dev/zero) ||
        fail "$name: regrow: the new area does not read as zero"
    checks=$((checks + 1))
    "$QEMU_IMG" check a.qcow2 >/dev/null 2>&1 ||
        fail "$name: regrow: qemu-img check"
done

# A refcount of zero on an L2 table: the next allocation would land on
# it.  qimg refuses the write, marks the image corrupt (as QEMU does) and
# says so; nothing else is written.
rm -f a.qcow2
"$QEMU_IMG" create -q -f qcow2 a.qcow2 $SIZE
"$QEMU_IO" -f qcow2 -c "write -P 1 0 64k" a.qcow2 >/dev/null
# Layout: header 0, reftable 64k, refblock 128k, L1 192k, L2 256k, data
# 320k; the L2 table's refcount is entry 4 of the refblock (16-bit).
printf '\0\0' | dd of=a.qcow2 bs=1 seek=$((128 * K + 8)) conv=notrunc \
    status=none
checks=$((checks + 1))
if "$W" a.qcow2 qcow2 w:$M:65536:2 2>"$T/w.err"; then
    fail "corrupt: a write over a metadata cluster succeeded"
fi
checks=$((checks + 1))
grep -q "Preventing invalid write on metadata (overlaps with active L2 table)" \
    "$T/w.err" || fail "corrupt: message" "$(cat "$T/w.err")"
checks=$((checks + 1))
"$QEMU_IMG" info --output=json -U a.qcow2 | grep -q '"corrupt": true' ||
    fail "corrupt: the corrupt bit is not set"
checks=$((checks + 1))
if "$W" a.qcow2 qcow2 w:0:512:3 2>/dev/null; then
    fail "corrupt: a corrupt image was opened for writing"
fi

# Tables placed on other metadata are never written in place: an L1
# table on the header (the header's first bytes read as its entry), an
# L2 table on the refcount block.  A regression: qimg wrote the new L1
# entry over the header's magic.  The write fails (at the flush: qimg
# writes tables back there), the image is marked corrupt, the header
# survives, and qemu-io names the same overlap.
for spec in "l1-on-header:40:0:qcow2_header" \
    "l2-on-refblock:$((192 * K)):(128 << 10) | (1 << 63):active L2 table"; do
    IFS=: read -r name at value what <<<"$spec"
    for tool in qimg qemu-io; do
        rm -f $tool.qcow2
        "$QEMU_IMG" create -q -f qcow2 $tool.qcow2 $SIZE
        # Layout: header 0, reftable 64k, refblock 128k, L1 192k.
        python3 -c "import struct, sys
sys.stdout.buffer.write(struct.pack('>Q', $value))" |
            dd of=$tool.qcow2 bs=1 seek="$at" conv=notrunc status=none
    done
    checks=$((checks + 1))
    if "$W" qimg.qcow2 qcow2 w:0:4096:1 2>"$T/w.err"; then
        fail "$name: the write succeeded"
    fi
    "$QEMU_IO" -c "write -P 1 0 4k" qemu-io.qcow2 >"$T/q.out" 2>&1
    for f in "$T/w.err" "$T/q.out"; do
        checks=$((checks + 1))
        grep -q "Preventing invalid write on metadata (overlaps with $what)" \
            "$f" || fail "$name: message" "$(cat "$f")"
    done
    checks=$((checks + 1))
    [ "$(head -c 4 qimg.qcow2 | od -An -tx1 | tr -d ' ')" = 514649fb ] ||
        fail "$name: the header's magic was overwritten"
    checks=$((checks + 1))
    "$QEMU_IMG" info --output=json -U qimg.qcow2 | grep -q '"corrupt": true' ||
        fail "$name: the corrupt bit is not set"
done

# Lazy refcounts: the dirty bit is set while the image is written and
# cleared by the flush at close.
rm -f a.qcow2
"$QEMU_IMG" create -q -f qcow2 -o lazy_refcounts=on a.qcow2 $SIZE
"$W" a.qcow2 qcow2 w:0:65536:1 f w:$M:65536:2
checks=$((checks + 1))
"$QEMU_IMG" info --output=json a.qcow2 | grep -q '"dirty-flag": false' ||
    fail "lazy refcounts: dirty bit left set after close"

# Writing an image with persistent bitmaps keeps them (their autoclear
# bit stays set) and records the write; qcow2_bitmaps.sh compares them
# with QEMU's in detail.
rm -f a.qcow2
"$QEMU_IMG" create -q -f qcow2 a.qcow2 $SIZE
"$QEMU_IMG" bitmap --add a.qcow2 b0
"$W" a.qcow2 qcow2 w:0:512:1 || fail "bitmaps: write"
checks=$((checks + 1))
out=$("$QEMU_IMG" info a.qcow2 2>&1)
grep -q 'inconsistent' <<<"$out" && fail "bitmaps: inconsistent after a write" "$out"
grep -q 'name: b0' <<<"$out" || fail "bitmaps: gone after a write" "$out"
expect_status "bitmaps: check after a write" 0 "$QEMU_IMG" check a.qcow2

# Cache mode none: a 4 KiB write into a new cluster zeroes the cluster on
# the host (one fallocate) and writes only its 4 KiB, where the rest of
# the cluster reads as zero.  The host cluster may be a freed one that
# still holds old bytes (freed by a discard that was not passed down),
# so the zeroing is what makes the rest read as zero; over backing data
# the rest is the backing file's bytes.
"$QEMU_IMG" create -q -f qcow2 base.qcow2 256k
"$QEMU_IO" -c 'write -q -P 0x44 64k 64k' base.qcow2
for case in plain stale backing; do
    rm -f a.qcow2 want.raw
    case $case in
    backing)
        "$QEMU_IMG" create -q -f qcow2 -b base.qcow2 -F qcow2 a.qcow2
        ;;
    *)
        "$QEMU_IMG" create -q -f qcow2 a.qcow2 256k
        ;;
    esac
    if [ $case = stale ]; then
        # Host cluster 5 holds 0x33 and is free (refcount 0).
        "$QEMU_IO" -c 'write -q -P 0x33 0 64k' a.qcow2
        "$QEMU_IO" --image-opts -c 'discard -q 0 64k' \
            driver=qcow2,file.filename=a.qcow2,pass-discard-request=off
    fi
    python3 -c '
import sys
rest = b"\x44" if sys.argv[1] == "backing" else b"\0"
d = bytes(65536) + b"\x22" * 4096 + rest * 61440 + bytes(131072)
open("want.raw", "wb").write(d)' $case
    for cache in none writeback; do
        cp a.qcow2 b.qcow2
        checks=$((checks + 1))
        "$QIMG" bench -q -w -t $cache -s 4k -c 1 -o 64k --pattern=0x22 \
            b.qcow2 2>"$T/b.err" || fail "none $case $cache: bench" \
            "$(cat "$T/b.err")"
        out=$("$QEMU_IMG" compare -f qcow2 -F raw b.qcow2 want.raw 2>&1) ||
            fail "none $case $cache: contents" "$out"
        expect_status "none $case $cache: check" 0 "$QEMU_IMG" check b.qcow2
    done
done

echo "$checks checks"
finish
