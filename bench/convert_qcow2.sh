#!/bin/bash
# qimg convert -O qcow2 against qemu-img convert -O qcow2 on the same
# sources, in the same run: median wall time of N alternating runs each,
# CPU time, peak RSS and output size, for
#   raw-qcow2    raw source -> qcow2
#   qcow2-qcow2  qcow2 source -> qcow2
#   zlib         raw source -> qcow2 -c (zlib)
#   zstd         raw source -> qcow2 -c -o compression_type=zstd
#   zlib-1       as zlib; qimg with --compression-level 1 (qimg only)
#   zlib-libdeflate  as zlib; qimg with --compressor libdeflate
#   zlib-raw     zlib-compressed qcow2 source (qemu-img -c) -> raw
#   compare-zlib qemu-img/qimg compare of that source with the raw one
# Outside the timed part every output must pass qemu-img check and
# qemu-img compare against the source.  A case that qimg cannot do yet is
# reported as "unsupported" (with qimg's message) and the others go on.
#
#   bench/convert_qcow2.sh [--quick] [--runs N] [--cases "raw-qcow2 zlib"]
#
# --quick: a 64 MiB image, one run (the 'bench' test suite: the script
# works and every output qimg makes is checked; no timing assertion).
#
# QIMG: the qimg binary (default: build it in ./build if needed).
# QEMU_IMG, QEMU_IO: the oracle (default: from $PATH).
# BENCH_TMPDIR: where the files go (default /var/tmp; the full run needs
# about 3 GiB allocated there).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
quick=0
runs=3
cases="raw-qcow2 qcow2-qcow2 zlib zstd"
while [ $# -gt 0 ]; do
    case $1 in
    --quick) quick=1; runs=1 ;;
    --runs) runs=$2; shift ;;
    --cases) cases=$2; shift ;;
    *) echo "usage: $0 [--quick] [--runs N] [--cases LIST]" >&2; exit 2 ;;
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

# ---- The source: a sparse raw image with random, compressible and
# zero-filled data, zeroed ranges, small scattered writes and holes
# (mkimage.py's pieces, every byte from fixed seeds), and a qcow2 copy.
python3 "$here/mkimage.py" "$W" "$([ $quick = 1 ] && echo 64 || echo 1)"
python3 - "$W" <<'EOF'
import os, sys
w = sys.argv[1]
with open(os.path.join(w, "compress.raw"), "r+b") as f:
    for line in open(os.path.join(w, "layout.txt")):
        kind, *rest = line.split()
        if kind == "size":
            continue
        off, length = int(rest[0]), int(rest[1])
        f.seek(off)
        if kind == "write":
            with open(os.path.join(w, rest[2]), "rb") as piece:
                f.write(piece.read())
        elif kind == "zero":
            f.write(bytes(length))
        elif kind == "small":
            f.write(bytes([int(rest[2])]) * length)
os.rename(os.path.join(w, "compress.raw"), os.path.join(w, "src.raw"))
EOF
rm -f "$W"/*.bin
size=$(awk '$1 == "size" {print $2}' "$W/layout.txt")
"$QEMU_IMG" convert -q -f raw -O qcow2 "$W/src.raw" "$W/src.qcow2"
data=$(du -k "$W/src.raw" | awk '{print $1 * 1024}')

# args CASE: the convert arguments (before the output file name).
args() {
    case $1 in
    raw-qcow2) echo "-f raw -O qcow2 $W/src.raw" ;;
    qcow2-qcow2) echo "-f qcow2 -O qcow2 $W/src.qcow2" ;;
    zlib) echo "-c -f raw -O qcow2 $W/src.raw" ;;
    zstd) echo "-c -f raw -O qcow2 -o compression_type=zstd $W/src.raw" ;;
    zlib-1 | zlib-libdeflate) args zlib ;;
    zlib-raw) echo "-f qcow2 -O raw $W/src.zlib.qcow2" ;;
    compare-zlib) echo "-f qcow2 -F raw $W/src.zlib.qcow2 $W/src.raw" ;;
    *) echo "unknown case $1" >&2; return 1 ;;
    esac
}

# qimg_args CASE: qimg's own options for the case (qemu-img has none).
qimg_args() {
    case $1 in
    zlib-1) echo "--compression-level 1" ;;
    zlib-libdeflate) echo "--compressor libdeflate" ;;
    esac
}

# verb CASE: the command; out CASE: "yes" when it writes an output file.
verb() {
    [ "$1" = compare-zlib ] && echo compare || echo convert
}
out() {
    [ "$1" = compare-zlib ] && echo no || echo yes
}

# The zlib-compressed source, only when a case reads it.
case " $cases " in
*" zlib-raw "* | *" compare-zlib "*)
    "$QEMU_IMG" convert -q -c -f raw -O qcow2 "$W/src.raw" \
        "$W/src.zlib.qcow2" ;;
esac

# run NAME TOOL CASE: convert once into $W/NAME.qcow2; appends "wall_ms
# rss_kib cpu_s" to $W/NAME.times.  Fails when the tool does.
run() {
    local name=$1 tool=$2 t0 t1 a o=""
    a=$(args "$3")
    [ "$tool" = "$QIMG" ] && a="$(qimg_args "$3") $a"
    [ "$(out "$3")" = yes ] && o=$W/$name.qcow2
    rm -f "$W/$name.qcow2"
    t0=$(date +%s%N)
    # shellcheck disable=SC2086
    /usr/bin/time -f '%M %U %S' -o "$W/rss" "$tool" "$(verb "$3")" $a \
        $o >/dev/null 2>"$W/$name.err" || return 1
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

# verify NAME CASE: qemu-img check and compare (against the source) of
# $W/NAME.qcow2; exits on a failure.
verify() {
    local name=$1 src=$W/src.raw fmt=raw ofmt=qcow2
    [ "$2" = qcow2-qcow2 ] && { src=$W/src.qcow2; fmt=qcow2; }
    [ "$(out "$2")" = no ] && return 0
    [ "$2" = zlib-raw ] && ofmt=raw
    if [ $ofmt = raw ]; then
        cmp -s "$W/$name.qcow2" "$src" || {
            echo "FAIL: $2: $name's output differs from the source" >&2
            exit 1
        }
        return 0
    fi
    if ! "$QEMU_IMG" check -q "$W/$name.qcow2"; then
        echo "FAIL: $2: qemu-img check of $name's output" >&2
        exit 1
    fi
    if ! "$QEMU_IMG" compare -q -f qcow2 -F "$fmt" "$W/$name.qcow2" \
        "$src"; then
        echo "FAIL: $2: $name's output differs from the source" >&2
        exit 1
    fi
}

fsize() {
    if [ -e "$1" ]; then stat -c %s "$1"; else echo 1; fi
}

echo "convert to qcow2: $((size >> 20)) MiB virtual, $((data >> 20)) MiB" \
    "of data in the raw source; median of $runs run(s) each"
for c in $cases; do
    args "$c" >/dev/null
    rm -f "$W"/*.times
    # A first, untimed run of each warms the page cache and tells whether
    # qimg can do the case at all.
    run qemu "$QEMU_IMG" "$c" || {
        echo "FAIL: $c: qemu-img convert failed: $(cat "$W/qemu.err")" >&2
        exit 1
    }
    qimg_ok=1
    run qimg "$QIMG" "$c" || qimg_ok=0
    rm -f "$W"/*.times
    for i in $(seq 1 "$runs"); do
        # Alternate which tool goes first.
        if [ $qimg_ok = 1 ] && [ $((i % 2)) = 0 ]; then
            run qimg "$QIMG" "$c" || qimg_ok=0
        fi
        run qemu "$QEMU_IMG" "$c"
        if [ $qimg_ok = 1 ] && [ $((i % 2)) = 1 ]; then
            run qimg "$QIMG" "$c" || qimg_ok=0
        fi
    done
    verify qemu "$c"
    echo
    line="$(verb "$c") $(args "$c" | sed "s|$W/||g")"
    [ "$(out "$c")" = yes ] && line="$line OUT"
    [ -n "$(qimg_args "$c")" ] && line="$line (qimg: $(qimg_args "$c"))"
    echo "== $c: $line"
    printf '%-10s %12s %10s %16s %14s\n' tool "time (s)" "CPU (s)" \
        "peak RSS (MiB)" "output (MiB)"
    q_size=$(fsize "$W/qemu.qcow2")
    awk -v t="$(median "$W/qemu.times" 1)" -v r="$(median "$W/qemu.times" 2)" \
        -v u="$(median "$W/qemu.times" 3)" -v s="$q_size" 'BEGIN {
        printf "%-10s %12.3f %10.2f %16.1f %14.1f\n", "qemu-img", t / 1000,
            u, r / 1024, s / 1048576 }'
    if [ $qimg_ok = 0 ]; then
        echo "qimg       unsupported: $(head -n 1 "$W/qimg.err")"
        continue
    fi
    verify qimg "$c"
    i_size=$(fsize "$W/qimg.qcow2")
    awk -v t="$(median "$W/qimg.times" 1)" -v r="$(median "$W/qimg.times" 2)" \
        -v u="$(median "$W/qimg.times" 3)" -v s="$i_size" 'BEGIN {
        printf "%-10s %12.3f %10.2f %16.1f %14.1f\n", "qimg", t / 1000,
            u, r / 1024, s / 1048576 }'
    awk -v q="$(median "$W/qemu.times" 1)" -v i="$(median "$W/qimg.times" 1)" \
        -v qc="$(median "$W/qemu.times" 3)" \
        -v ic="$(median "$W/qimg.times" 3)" -v qs="$q_size" -v is="$i_size" \
        -v d="$data" 'BEGIN {
        printf "ratio (qemu-img/qimg, >1 means qimg is faster): %.2f" \
            " (CPU time: %.2f)\n", (i > 0 ? q / i : 0),
            (ic > 0 ? qc / ic : 0)
        printf "output size qimg/qemu-img: %.3f; source data/output:" \
            " qemu-img %.2f, qimg %.2f\n", is / qs, d / qs, d / is }'
    echo "outputs: qemu-img check clean, qemu-img compare identical"
done
