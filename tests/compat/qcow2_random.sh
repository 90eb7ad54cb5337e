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
# QIMG_RANDOM_OPS: requests per run (default 1500; a sanitizer build 400).
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
    local seed=$((seed0 + run_index))
    run_index=$((run_index + 1))
    # shellcheck disable=SC2254
    case $name in
    ${QIMG_RANDOM_ONLY:-*}) ;;
    *) return ;;
    esac
    rm -f img.* mirror.raw base.*
    local args=(-f "$fmt" -s "$size" -n "$QIMG_RANDOM_OPS" -r "$seed"
                -m mirror.raw)
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
    echo "$name: seed=$seed: write_random ${args[*]} $img"
    local replay="replay: QIMG_SEED=$seed0 QIMG_RANDOM_ONLY=$name"
    replay+=" QIMG_RANDOM_OPS=$QIMG_RANDOM_OPS"
    replay+=" bash tests/compat/qcow2_random.sh"
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
run cluster-64k qcow2 $((64 * M)) ""
run cluster-2M qcow2 $((128 * M)) "cluster_size=2M"
run refcount-1 qcow2 $((16 * M)) "cluster_size=4k,refcount_bits=1"
run refcount-64 qcow2 $((4 * M)) "cluster_size=512,refcount_bits=64"
run refcount-64-64k qcow2 $((64 * M)) "refcount_bits=64"
run extl2-64k qcow2 $((64 * M)) "extended_l2=on"
run extl2-2M qcow2 $((128 * M)) "cluster_size=2M,extended_l2=on"
run v2 qcow2 $((64 * M)) "compat=0.10"
run v2-512 qcow2 $((4 * M)) "compat=0.10,cluster_size=512"
run lazy qcow2 $((64 * M)) "lazy_refcounts=on"
run zstd qcow2 $((64 * M)) "compression_type=zstd"
run odd-size qcow2 $((64 * M + 7680)) ""
# Over a backing file (smaller than the image: past its end reads zero).
run backing-raw qcow2 $((64 * M)) "" base.raw $((40 * M + 4096))
run backing-qcow2 qcow2 $((64 * M)) "" base.qcow2 $((48 * M))
run backing-4k qcow2 $((16 * M)) "cluster_size=4k" base.qcow2 $((16 * M))
run backing-v2 qcow2 $((64 * M)) "compat=0.10" base.qcow2 $((40 * M))
run backing-extl2 qcow2 $((64 * M)) "extended_l2=on" base.raw \
    $((64 * M))
run backing-extl2-2M qcow2 $((128 * M)) "cluster_size=2M,extended_l2=on" \
    base.qcow2 $((100 * M))
run backing-zstd-lazy qcow2 $((64 * M)) \
    "compression_type=zstd,lazy_refcounts=on" base.raw $((64 * M))

finish
