#!/bin/bash
# Randomized differential test of the write path: tests/unit/write_random.c
# runs seeded random writes, zero writes, discards, compressed writes,
# flushes and reopen cycles through the library on images of varied
# options, mirrored into a raw file.  After each run qimg compare and
# qemu-img compare must find the image identical to the mirror, and
# qemu-img check (and qimg check) must find it clean.
#
# QIMG_SEED: the seed (default: from the time); run i uses QIMG_SEED + i.
# Every run prints "seed=N" and a command that replays it alone:
#   QIMG_SEED=N QIMG_RANDOM_ONLY=NAME bash tests/compat/qcow2_random.sh
# QIMG_RANDOM_ONLY: run only the configurations with this name (a glob).
# QIMG_RANDOM_OPS: requests per run (default 1500; a sanitizer build 400);
# runs with 2 MiB clusters do a third of them (each costs far more).
# Most runs open the image with QIMG_OPEN_CACHE_UNSAFE (-u: caches are
# still written back at every flush and close, the host syncs are
# skipped); those marked SYNC=1 sync for real, DIRECT=1 ones with cache
# mode none (-d: O_DIRECT, new clusters zeroed on the host around the
# bytes written).  SNAP=1 runs write a
# third of the requests, take an internal snapshot with qemu-img, then run
# on the existing image (write_random -e): copy-on-write of shared
# clusters; the snapshot must still read as the first mirror.
. "$QIMG_SRCDIR/tests/functions.sh"
: "${QIMG_WRITE_RANDOM:?QIMG_WRITE_RANDOM must point at write_random}"
cd "$T"

seed0=${QIMG_SEED:-$(( $(date +%s) % 1000000 * 1000 + $$ % 1000 ))}
if [ -z "${QIMG_RANDOM_OPS:-}" ]; then
    QIMG_RANDOM_OPS=1500
    [ "${QIMG_SANITIZED:-0}" = 1 ] && QIMG_RANDOM_OPS=400
fi
echo "seed=$seed0 (ops per run: $QIMG_RANDOM_OPS)"

# make_base NAME SIZE SEED: NAME.raw with random data, compressible data
# and holes in 64 KiB pieces (every byte from SEED); a qcow2 copy made by
# qemu-img when NAME ends in .qcow2.
make_base() {
    local name=$1 size=$2 seed=$3 raw=${1%.*}.raw
    python3 - "$raw" "$size" "$seed" <<'EOF' || return 1
import random, sys
path, size, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(seed)
with open(path, "wb") as f:
    f.truncate(size)
    piece = 65536
    for off in range(0, size, piece):
        n = min(piece, size - off)
        kind = rnd.randrange(4)
        if kind == 0:
            continue
        f.seek(off)
        if kind == 1:
            f.write(rnd.randbytes(n))
        elif kind == 2:
            f.write(bytes([rnd.randrange(1, 256)]) * n)
        else:
            # Random sectors in a hole: data at odd places.
            for s in range(0, n, 512):
                if rnd.randrange(4) == 0:
                    f.seek(off + s)
                    f.write(rnd.randbytes(min(512, n - s)))
EOF
    if [ "$name" != "$raw" ]; then
        "$QEMU_IMG" convert -q -f raw -O qcow2 -o cluster_size=64k \
            "$raw" "$name" || return 1
    fi
}

# run NAME FORMAT SIZE OPTS [BACKING SIZE]: one random run and its checks.
# BACKING is base.raw or base.qcow2 (made fresh, SIZE bytes, from the
# run's seed); the image is created over it.
run_index=0
run() {
    local name=$1 fmt=$2 size=$3 opts=$4 backing=${5:-} bsize=${6:-}
    local seed=$((seed0 + run_index)) ops=$((QIMG_RANDOM_OPS / ${OPS_DIV:-1}))
    run_index=$((run_index + 1))
    # shellcheck disable=SC2254
    case $name in
    ${QIMG_RANDOM_ONLY:-*}) ;;
    *) return ;;
    esac
    rm -f img.* mirror.raw base.* snap.*
    local args=(-f "$fmt" -s "$size" -n "$ops" -r "$seed" -m mirror.raw)
    [ "${SYNC:-0}" = 1 ] || args+=(-u)
    [ "${DIRECT:-0}" = 1 ] && args+=(-d)
    if [ -n "$backing" ]; then
        if ! make_base "$backing" "$bsize" "$seed"; then
            fail "$name: making $backing"
            return
        fi
        opts="${opts:+$opts,}backing_file=$backing,backing_fmt=${backing#*.}"
        args+=(-b base.raw)
    fi
    [ -n "$opts" ] && args+=(-o "$opts")
    local img=img.$fmt
    local replay="replay: QIMG_SEED=$seed0 QIMG_RANDOM_ONLY=$name"
    replay+=" QIMG_RANDOM_OPS=$QIMG_RANDOM_OPS"
    replay+=" bash tests/compat/qcow2_random.sh"
    if [ "${SNAP:-0}" = 1 ]; then
        local first=("${args[@]}")
        first[5]=$((ops / 3))
        first[9]=snap.mirror.raw
        echo "$name: seed=$seed: write_random ${first[*]} $img;" \
            "qemu-img snapshot -c s1 $img"
        checks=$((checks + 1))
        if ! "$QIMG_WRITE_RANDOM" "${first[@]}" "$img" >run.out 2>run.err ||
            ! "$QEMU_IMG" snapshot -c s1 "$img" >>run.out 2>>run.err; then
            fail "$name: write_random before the snapshot (seed=$seed;" \
                "$replay)" "$(cat run.out run.err)"
            return
        fi
        args[7]=$((seed + 1000000))
        args+=(-e)
    fi
    echo "$name: seed=${args[7]}: write_random ${args[*]} $img"
    checks=$((checks + 1))
    if ! "$QIMG_WRITE_RANDOM" "${args[@]}" "$img" >run.out 2>run.err; then
        fail "$name: write_random (seed=$seed; $replay)" \
            "$(cat run.out run.err)"
        return
    fi
    tail -n 1 run.out | sed 's/^/    /'
    local out
    checks=$((checks + 1))
    if ! out=$("$QIMG" compare -f "$fmt" -F raw "$img" mirror.raw 2>&1) ||
        [ "$out" != "Images are identical." ]; then
        fail "$name: qimg compare (seed=$seed; $replay)" "$out"
    fi
    checks=$((checks + 1))
    if ! out=$("$QEMU_IMG" compare -f "$fmt" -F raw "$img" mirror.raw \
        2>&1) || [ "$out" != "Images are identical." ]; then
        fail "$name: qemu-img compare (seed=$seed; $replay)" "$out"
    fi
    if [ "${SNAP:-0}" = 1 ]; then
        checks=$((checks + 1))
        if ! out=$("$QEMU_IMG" convert -l snapshot.name=s1 -O raw "$img" \
            snap.raw 2>&1) || ! cmp snap.raw snap.mirror.raw >/dev/null; then
            fail "$name: snapshot s1 changed (seed=$seed; $replay)" \
                "$out $(cmp snap.raw snap.mirror.raw 2>&1)"
        fi
    fi
    if [ "$fmt" = qcow2 ]; then
        checks=$((checks + 1))
        if ! out=$("$QEMU_IMG" check "$img" 2>&1); then
            fail "$name: qemu-img check (seed=$seed; $replay)" "$out"
        fi
        checks=$((checks + 1))
        if ! out=$("$QIMG" check "$img" 2>&1); then
            fail "$name: qimg check (seed=$seed; $replay)" "$out"
        fi
    fi
}

M=$((1024 * 1024))
# Raw: the library's request layer and the raw driver.
run raw raw $((32 * M)) ""
run raw-odd-size raw $((8 * M + 1536)) ""
# qcow2 layouts: cluster sizes, refcount widths, extended L2, v2, lazy
# refcounts, zstd.  Sizes keep a few hundred clusters or more (fewer for
# 2 MiB clusters) so requests collide.
run cluster-512 qcow2 $((4 * M)) "cluster_size=512"
run cluster-4k qcow2 $((16 * M)) "cluster_size=4k"
SYNC=1 run cluster-64k qcow2 $((64 * M)) ""
OPS_DIV=3 run cluster-2M qcow2 $((64 * M)) "cluster_size=2M"
run refcount-1 qcow2 $((16 * M)) "cluster_size=4k,refcount_bits=1"
# 512-byte clusters with 64-bit refcounts: one refcount table cluster
# covers 2 MiB of file, so a 1.5 MiB disk stays inside it.
run refcount-64 qcow2 $((1536 * 1024)) "cluster_size=512,refcount_bits=64"
run refcount-64-4k qcow2 $((16 * M)) "cluster_size=4k,refcount_bits=64"
run refcount-64-64k qcow2 $((64 * M)) "refcount_bits=64"
run extl2-64k qcow2 $((64 * M)) "extended_l2=on"
OPS_DIV=3 run extl2-2M qcow2 $((64 * M)) "cluster_size=2M,extended_l2=on"
run v2 qcow2 $((64 * M)) "compat=0.10"
run v2-512 qcow2 $((4 * M)) "compat=0.10,cluster_size=512"
SYNC=1 run lazy qcow2 $((64 * M)) "lazy_refcounts=on"
run zstd qcow2 $((64 * M)) "compression_type=zstd"
run odd-size qcow2 $((64 * M + 7680)) ""
# Refcount table growth: the file outgrows what the first refcount table
# cluster covers (512-byte clusters: 2 MiB with 64-bit refcounts, 4 MiB
# with 32-bit ones).
# (A run allocated across the growth once landed on the new table: fixed
# in qcow2_alloc_clusters, which searches again after the table moves.)
run reftable-growth-64 qcow2 $((8 * M)) "cluster_size=512,refcount_bits=64"
run reftable-growth-32 qcow2 $((8 * M)) "cluster_size=512,refcount_bits=32"
# Internal snapshots: clusters shared with a snapshot are copied.
SNAP=1 run snapshot qcow2 $((64 * M)) ""
SNAP=1 run snapshot-v2-512 qcow2 $((4 * M)) "compat=0.10,cluster_size=512"
SNAP=1 run snapshot-extl2-backing qcow2 $((64 * M)) "extended_l2=on" \
    base.qcow2 $((64 * M))
# Over a backing file (smaller than the image: past its end reads zero).
run backing-raw qcow2 $((64 * M)) "" base.raw $((40 * M + 4096))
SYNC=1 run backing-qcow2 qcow2 $((64 * M)) "" base.qcow2 $((48 * M))
run backing-4k qcow2 $((16 * M)) "cluster_size=4k" base.qcow2 $((16 * M))
run backing-v2 qcow2 $((64 * M)) "compat=0.10" base.qcow2 $((40 * M))
run backing-extl2 qcow2 $((64 * M)) "extended_l2=on" base.raw \
    $((64 * M))
OPS_DIV=3 run backing-extl2-2M qcow2 $((64 * M)) \
    "cluster_size=2M,extended_l2=on" base.qcow2 $((50 * M))
run backing-zstd-lazy qcow2 $((64 * M)) \
    "compression_type=zstd,lazy_refcounts=on" base.raw $((64 * M))
# Cache mode none: a partial write into a new cluster zeroes it on the
# host and writes only its bytes where the rest reads as zero (no
# backing data there), and pads it from the backing file where not.
DIRECT=1 run direct-64k qcow2 $((64 * M)) ""
DIRECT=1 run direct-4k qcow2 $((16 * M)) "cluster_size=4k"
DIRECT=1 run direct-extl2 qcow2 $((64 * M)) "extended_l2=on"
DIRECT=1 run direct-backing qcow2 $((64 * M)) "" base.qcow2 $((40 * M))
DIRECT=1 run direct-backing-extl2 qcow2 $((64 * M)) "extended_l2=on" \
    base.raw $((48 * M))

finish
