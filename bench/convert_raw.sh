#!/bin/bash
# qimg convert -O raw against qemu-img convert -O raw on the same image, in
# the same run: median wall time of N alternating runs each, peak RSS, and
# a check that both outputs are identical.
#
#   bench/convert_raw.sh [--quick] [--runs N] [--keep]
#
# --keep leaves the work directory (image and outputs) for profiling.
#
# QIMG: the qimg binary (default: build it in ./build if needed).
# QEMU_IMG, QEMU_IO: the oracle (default: from $PATH).
# BENCH_TMPDIR: where the image and outputs go (default /var/tmp; the full
# run needs about 6 GiB there, little of it allocated: the files are sparse).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
quick=0
runs=5
keep=0
while [ $# -gt 0 ]; do
    case $1 in
    --quick) quick=1; runs=1 ;;
    --runs) runs=$2; shift ;;
    --keep) keep=1 ;;
    *) echo "usage: $0 [--quick] [--runs N] [--keep]" >&2; exit 2 ;;
    esac
    shift
done
QEMU_IMG=${QEMU_IMG:-qemu-img}
QEMU_IO=${QEMU_IO:-qemu-io}

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
if [ $keep = 1 ]; then
    echo "keeping $W" >&2
else
    trap 'rm -rf "$W"' EXIT
fi

# ---- The image: sparse qcow2 with random, compressible, zero-filled and
# zlib-compressed data, zero clusters and small scattered writes.
python3 "$here/mkimage.py" "$W" "$([ $quick = 1 ] && echo 64 || echo 1)"
size=$(awk '$1 == "size" {print $2}' "$W/layout.txt")
"$QEMU_IMG" convert -q -c -f raw -O qcow2 "$W/compress.raw" "$W/bench.qcow2"
rm -f "$W/compress.raw"
cmds=()
while read -r kind off len arg; do
    case $kind in
    write) cmds+=(-c "write -q -s $W/$arg $off $len") ;;
    zero) cmds+=(-c "write -q -z $off $len") ;;
    small) cmds+=(-c "write -q -P $arg $off $len") ;;
    esac
done <"$W/layout.txt"
"$QEMU_IO" -f qcow2 "${cmds[@]}" "$W/bench.qcow2" >/dev/null
rm -f "$W"/*.bin
"$QEMU_IMG" check -q "$W/bench.qcow2"

# run TOOL OUT: convert once; appends "wall_ms rss_kib cpu_s" (cpu: user
# plus system time) to $W/TOOL.times.
run() {
    local tool=$1 out=$2 t0 t1
    rm -f "$out"
    t0=$(date +%s%N)
    /usr/bin/time -f '%M %U %S' -o "$W/rss" "$tool" convert -f qcow2 \
        -O raw "$W/bench.qcow2" "$out"
    t1=$(date +%s%N)
    echo "$(( (t1 - t0) / 1000000 )) $(awk '{print $1, $2 + $3}' "$W/rss")" \
        >>"$W/$(basename "$tool").times"
}

# Warm the page cache so that neither tool pays for the first read.
if [ $quick = 0 ]; then
    "$QEMU_IMG" convert -f qcow2 -O raw "$W/bench.qcow2" "$W/warm.raw"
    rm -f "$W/warm.raw"
fi
for i in $(seq 1 "$runs"); do
    # Alternate which tool goes first.
    if [ $((i % 2)) = 1 ]; then
        run "$QEMU_IMG" "$W/qemu.raw"
        run "$QIMG" "$W/qimg.raw"
    else
        run "$QIMG" "$W/qimg.raw"
        run "$QEMU_IMG" "$W/qemu.raw"
    fi
done

if ! cmp -s "$W/qemu.raw" "$W/qimg.raw"; then
    echo "FAIL: qimg and qemu-img outputs differ" >&2
    exit 1
fi

# median FILE COLUMN
median() {
    awk -v c="$2" '{print $c}' "$1" | sort -n |
        awk '{v[NR] = $1} END {
            if (NR % 2) print v[(NR + 1) / 2];
            else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
q_ms=$(median "$W/$(basename "$QEMU_IMG").times" 1)
i_ms=$(median "$W/$(basename "$QIMG").times" 1)
q_rss=$(median "$W/$(basename "$QEMU_IMG").times" 2)
i_rss=$(median "$W/$(basename "$QIMG").times" 2)
q_cpu=$(median "$W/$(basename "$QEMU_IMG").times" 3)
i_cpu=$(median "$W/$(basename "$QIMG").times" 3)
data=$("$QEMU_IMG" info --output=json "$W/bench.qcow2" |
    awk -F': ' '/"actual-size"/ {gsub(",", "", $2); print $2}')

echo "convert -O raw: $((size >> 20)) MiB virtual, $((data >> 20)) MiB" \
    "qcow2 file, median of $runs run(s) each"
printf '%-10s %12s %14s %16s\n' tool "time (s)" "CPU (s)" "peak RSS (MiB)"
awk -v q="$q_ms" -v i="$i_ms" -v qr="$q_rss" -v ir="$i_rss" \
    -v qc="$q_cpu" -v ic="$i_cpu" 'BEGIN {
    printf "%-10s %12.3f %14.2f %16.1f\n", "qemu-img", q / 1000, qc, qr / 1024
    printf "%-10s %12.3f %14.2f %16.1f\n", "qimg", i / 1000, ic, ir / 1024
    printf "ratio (qemu-img/qimg, >1 means qimg is faster): %.2f" \
        " (CPU time: %.2f)\n", (i > 0 ? q / i : 0), (ic > 0 ? qc / ic : 0) }'
echo "outputs identical: yes"
