#!/bin/bash
# qimg create -f qcow2 -o preallocation=metadata against qemu-img's, in the
# same run: median wall time of N alternating runs each, CPU time, peak
# RSS, and a check that both made the same bytes and that qemu-img check
# finds qimg's image clean (both outside the timed part).
#
#   bench/create_prealloc.sh [--quick] [--runs N] [--sizes "100G 1T"]
#
# --quick: one run of a 1 GiB image (the 'bench' test suite: the script
# works and the images match; no timing assertion).
#
# QIMG: the qimg binary (default: build it in ./build if needed).
# QEMU_IMG: the oracle (default: from $PATH).
# BENCH_TMPDIR: where the images go (default /var/tmp).  The files are
# sparse: a 1 TiB image allocates about 128 MiB of L2 tables.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
runs=5
sizes="100G 1T"
while [ $# -gt 0 ]; do
    case $1 in
    --quick) runs=1; sizes=1G ;;
    --runs) runs=$2; shift ;;
    --sizes) sizes=$2; shift ;;
    *) echo "usage: $0 [--quick] [--runs N] [--sizes LIST]" >&2; exit 2 ;;
    esac
    shift
done
QEMU_IMG=${QEMU_IMG:-qemu-img}

# /usr/bin/time measures peak RSS; install it if missing.
if [ ! -x /usr/bin/time ]; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get install -y -q --no-install-recommends time >&2
fi

if [ -z "${QIMG:-}" ]; then
    if [ ! -x "$root/build/cli/qimg" ]; then
        (cd "$root" && { [ -d build ] || meson setup build >&2; } &&
            ninja -C build >&2)
    fi
    QIMG=$root/build/cli/qimg
fi

W=$(mktemp -d "${BENCH_TMPDIR:-/var/tmp}/qimg-bench.XXXXXX")
trap 'rm -rf "$W"' EXIT

# run NAME TOOL SIZE: create once into $W/NAME.img; appends "wall_ms
# rss_kib cpu_s" to $W/NAME.times.
run() {
    local name=$1 tool=$2 size=$3 t0 t1
    rm -f "$W/$name.img"
    t0=$(date +%s%N)
    /usr/bin/time -f '%M %U %S' -o "$W/rss" "$tool" create -q -f qcow2 \
        -o preallocation=metadata "$W/$name.img" "$size"
    t1=$(date +%s%N)
    echo "$(( (t1 - t0) / 1000000 )) $(awk '{print $1, $2 + $3}' "$W/rss")" \
        >>"$W/$name.times"
}

# median FILE COLUMN
median() {
    awk -v c="$2" '{print $c}' "$1" | sort -n |
        awk '{v[NR] = $1} END {
            if (NR % 2) print v[(NR + 1) / 2];
            else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# sparse_cmp A B: the files hold the same bytes.  Only the ranges where
# either file has data (SEEK_DATA) are read: everything else is a hole in
# both, so zero in both; a plain cmp would read a terabyte of holes.
sparse_cmp() {
    python3 - "$1" "$2" <<'EOF'
import os, sys
def extents(fd, size):
    out, off = [], 0
    while off < size:
        try:
            d = os.lseek(fd, off, os.SEEK_DATA)
        except OSError:
            break
        h = os.lseek(fd, d, os.SEEK_HOLE)
        out.append((d, h))
        off = h
    return out
fds = [os.open(p, os.O_RDONLY) for p in sys.argv[1:3]]
sizes = [os.fstat(fd).st_size for fd in fds]
if sizes[0] != sizes[1]:
    sys.exit("sizes differ: %d and %d" % tuple(sizes))
ranges = sorted(extents(fds[0], sizes[0]) + extents(fds[1], sizes[1]))
for start, end in ranges:
    off = start
    while off < end:
        n = min(end - off, 1 << 22)
        a = os.pread(fds[0], n, off)
        b = os.pread(fds[1], n, off)
        if a != b:
            sys.exit("bytes differ near offset %d" % off)
        off += n
EOF
}

for size in $sizes; do
    for i in $(seq 1 "$runs"); do
        # Alternate which tool goes first.
        if [ $((i % 2)) = 1 ]; then
            run qemu "$QEMU_IMG" "$size"
            run qimg "$QIMG" "$size"
        else
            run qimg "$QIMG" "$size"
            run qemu "$QEMU_IMG" "$size"
        fi
    done
    if ! sparse_cmp "$W/qemu.img" "$W/qimg.img"; then
        echo "FAIL: $size: qimg and qemu-img images differ" >&2
        exit 1
    fi
    if ! "$QEMU_IMG" check -q "$W/qimg.img"; then
        echo "FAIL: $size: qemu-img check of qimg's image" >&2
        exit 1
    fi
    alloc=$(du -k "$W/qimg.img" | awk '{printf "%.1f", $1 / 1024}')
    echo "create -f qcow2 -o preallocation=metadata $size" \
        "($alloc MiB allocated), median of $runs run(s) each"
    printf '%-10s %12s %14s %16s\n' tool "time (s)" "CPU (s)" \
        "peak RSS (MiB)"
    awk -v q="$(median "$W/qemu.times" 1)" -v i="$(median "$W/qimg.times" 1)" \
        -v qr="$(median "$W/qemu.times" 2)" \
        -v ir="$(median "$W/qimg.times" 2)" \
        -v qc="$(median "$W/qemu.times" 3)" \
        -v ic="$(median "$W/qimg.times" 3)" 'BEGIN {
        printf "%-10s %12.3f %14.2f %16.1f\n", "qemu-img", q / 1000, qc,
            qr / 1024
        printf "%-10s %12.3f %14.2f %16.1f\n", "qimg", i / 1000, ic,
            ir / 1024
        printf "ratio (qemu-img/qimg, >1 means qimg is faster): %.2f" \
            " (CPU time: %.2f)\n", (i > 0 ? q / i : 0),
            (ic > 0 ? qc / ic : 0) }'
    echo "images identical: yes; qemu-img check: clean"
    rm -f "$W"/*.img "$W"/*.times
done
