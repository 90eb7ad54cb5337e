#!/bin/bash
# qimg bench against qemu-img bench, same run: for each configuration
# (format x read/write x cache mode) both tools run on fresh copies of the
# same image, alternately, RUNS times each; the median "Run completed"
# time of each is printed with the ratio qemu-img / qimg (above 1: qimg is
# faster).
#
#   bench/bench_cmd.sh [--runs N] [--count N] [--size SIZE]
#
# QIMG: the qimg binary (default ./build/cli/qimg); QEMU_IMG (default from
# $PATH); BENCH_TMPDIR: where the images go (default /var/tmp).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
runs=3
count=75000
size=64M
while [ $# -gt 0 ]; do
    case $1 in
    --runs) runs=$2; shift ;;
    --count) count=$2; shift ;;
    --size) size=$2; shift ;;
    *) echo "usage: $0 [--runs N] [--count N] [--size SIZE]" >&2; exit 2 ;;
    esac
    shift
done
QEMU_IMG=${QEMU_IMG:-qemu-img}
QIMG=${QIMG:-$root/build/cli/qimg}

W=$(mktemp -d "${BENCH_TMPDIR:-/var/tmp}/qimg-bench.XXXXXX")
trap 'rm -rf "$W"' EXIT

"$QEMU_IMG" create -q -f raw "$W/base.raw" "$size"
"$QEMU_IMG" create -q -f qcow2 "$W/base.qcow2" "$size"
# Data everywhere, so that reads find allocated clusters.
"$QEMU_IMG" bench -q -w -f raw -c $(( $(stat -c %s "$W/base.raw") / 65536 )) \
    -s 65536 --pattern=90 "$W/base.raw" >/dev/null
"$QEMU_IMG" convert -f raw -O qcow2 "$W/base.raw" "$W/data.qcow2"
cp "$W/base.raw" "$W/data.raw"

# One timed run: tool, arguments; prints the seconds.
run() {
    local tool=$1
    shift
    "$tool" bench "$@" | sed -n 's/^Run completed in \([0-9.]*\) seconds\.$/\1/p'
}

median() {
    sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'
}

printf '%-34s %10s %10s %7s\n' configuration qemu-img qimg ratio
for fmt in raw qcow2; do
    for mode in read write; do
        for cache in writeback none; do
            # Reads of allocated data; writes to a fresh (empty) image.
            src=$W/data.$fmt
            [ $mode = write ] && src=$W/base.$fmt
            args=(-f $fmt -c "$count" -t $cache)
            [ $mode = write ] && args+=(-w)
            q=() m=()
            for _ in $(seq "$runs"); do
                cp --sparse=always "$src" "$W/q.img"
                q+=("$(run "$QEMU_IMG" "${args[@]}" "$W/q.img")")
                cp --sparse=always "$src" "$W/m.img"
                m+=("$(run "$QIMG" "${args[@]}" "$W/m.img")")
            done
            qm=$(printf '%s\n' "${q[@]}" | median)
            mm=$(printf '%s\n' "${m[@]}" | median)
            printf '%-34s %10s %10s %7s\n' "$fmt $mode -t $cache" "$qm" "$mm" \
                "$(awk -v a="$qm" -v b="$mm" \
                    'BEGIN {printf (b > 0 ? "%.2f" : "-"), a / b}')"
        done
    done
done
