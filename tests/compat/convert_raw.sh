#!/bin/bash
# qimg convert to raw against qemu-img convert: the bytes written, the
# allocation map of the result, and the messages and exit statuses.
. "$QIMG_SRCDIR/tests/functions.sh"
cd "$T"

# mkimg FILE SIZE [OFFSET:LEN:KIND]...: a sparse file with random data
# ("d") or written zeroes ("z") at the given byte ranges.
mkimg() {
    local file=$1 size=$2 spec off len kind
    shift 2
    rm -f "$file"
    truncate -s "$size" "$file"
    for spec in "$@"; do
        IFS=: read -r off len kind <<<"$spec"
        if [ "$kind" = d ]; then
            head -c "$len" /dev/urandom
        else
            head -c "$len" /dev/zero
        fi | dd of="$file" bs=1M seek="$off" oflag=seek_bytes \
            conv=notrunc status=none
    done
}

# Sources: holes, data, zero runs of various lengths, odd sizes.
mkimg mixed.raw 4M 0:4096:d 4096:512:z 4608:512:d 8192:4096:z \
    12288:3000:d 65536:65536:z 131072:70000:d 262144:1M:z \
    1310720:512:d 1311232:8192:z 1319424:4096:d 2M:1:d 3M:1M:z
mkimg zeros.raw 1M 0:1M:z
mkimg hole.raw 2M
mkimg odd.raw 1000 0:1000:d
mkimg odd2.raw 7777 100:300:d 5000:2000:z
mkimg big.raw 6M 0:5M:d 1M:64k:z 2M:8k:z 3M:1M:z
mkimg subsec.raw 8192 0:8192:d 1024:600:z 4096:4096:z

# map FILE: the allocation pattern of a raw file, as qemu-img sees it.
map() {
    "$QEMU_IMG" map --output=json -f raw "$1"
}

# conv NAME ARGS...: convert with both tools to want.img / got.img and
# compare output, status, bytes and allocation.
conv() {
    local name=$1
    shift
    rm -f want.img got.img
    "$QEMU_IMG" convert "$@" want.img >want.out 2>want.err
    echo "status $?" >>want.out
    "$QIMG" convert "$@" got.img >got.out 2>got.err
    echo "status $?" >>got.out
    sed -i 's/^qemu-img: /qimg: /' want.err
    expect_same "$name: stdout" want.out got.out
    expect_same "$name: stderr" want.err got.err
    expect_same "$name: size" <(stat -c %s want.img) <(stat -c %s got.img)
    checks=$((checks + 1))
    files_equal want.img got.img || fail "$name: contents differ"
    # qemu-img's file driver allocates the first block of every new file;
    # qimg's does not (lib/io), so sources starting with zeroes skip this.
    if [ "${NOMAP:-}" != 1 ]; then
        map want.img >want.map
        map got.img >got.map
        expect_same "$name: map" want.map got.map
    fi
}

for src in mixed zeros hole odd odd2 big subsec; do
    NOMAP=0
    case $src in zeros | hole) NOMAP=1 ;; esac
    conv "$src" -f raw -O raw "$src.raw"
    conv "$src probed" "$src.raw"
    conv "$src -S 0" -f raw -S 0 "$src.raw"
    conv "$src -S 4k" -f raw -S 4k "$src.raw"
    conv "$src -S 64k" -f raw -S 64k "$src.raw"
    conv "$src -S 512" -f raw -S 512 "$src.raw"
done
NOMAP=0
conv "concat" -f raw odd.raw mixed.raw odd2.raw hole.raw
conv "concat -S 0" -f raw -S 0 odd.raw zeros.raw odd2.raw
conv "concat -S 64k" -f raw -S 64k odd2.raw big.raw odd.raw
# -p: to a pipe qimg stays silent (qemu-img writes \r progress even
# there); on a terminal it draws qemu-img's bar and ends the line.
rm -f got.img
"$QIMG" convert -p -f raw odd.raw got.img >got.out 2>&1
expect_same "progress to a pipe is silent" /dev/null got.out
rm -f got.img
script -qec "$QIMG convert -p -f raw odd.raw got.img" /dev/null \
    >got.tty 2>&1
if grep -q '(100.00/100%)' got.tty && grep -q '(0.00/100%)' got.tty; then
    pass
else
    fail "progress on a terminal" "$(cat -A got.tty)"
fi
files_equal got.img want.img 2>/dev/null || "$QEMU_IMG" convert -f raw odd.raw \
    want.img
checks=$((checks + 1))
files_equal want.img got.img || fail "progress: contents differ"
conv "quiet progress" -p -q -f raw odd.raw
conv "-o preallocation" -f raw -o preallocation=off odd.raw

# -n: into an existing target full of data, with and without
# --target-is-zero (qemu-img then trusts the target to read as zero).
existing() {
    local name=$1
    shift
    head -c 7M /dev/urandom >want.img
    cp want.img got.img
    "$QEMU_IMG" convert -n "$@" want.img >want.out 2>want.err
    echo "status $?" >>want.out
    "$QIMG" convert -n "$@" got.img >got.out 2>got.err
    echo "status $?" >>got.out
    expect_same "$name: stdout" want.out got.out
    expect_same "$name: stderr" want.err got.err
    checks=$((checks + 1))
    files_equal want.img got.img || fail "$name: contents differ"
    if [ "${NOMAP:-}" != 1 ]; then
        map want.img >want.map
        map got.img >got.map
        expect_same "$name: map" want.map got.map
    fi
}
existing "-n mixed" -f raw mixed.raw
NOMAP=1 existing "-n concat" -f raw odd2.raw mixed.raw
existing "-n -S 0" -f raw -S 0 mixed.raw
existing "-n -S 64k" -f raw -S 64k big.raw
existing "-n target-is-zero" -f raw --target-is-zero mixed.raw
existing "-n target-is-zero -S 0" -f raw --target-is-zero -S 0 mixed.raw

# misuse NAME ARGS...: messages and status only (qemu-img -> qimg).
misuse() {
    local name=$1
    shift
    rm -rf q m && mkdir q m
    cp odd.raw q/a.raw && cp odd.raw m/a.raw
    head -c 100 /dev/zero >q/small && cp q/small m/small
    (cd q && "$QEMU_IMG" convert "$@" >../want.out 2>../want.err
     echo "status $?" >>../want.out)
    (cd m && "$QIMG" convert "$@" >../got.out 2>../got.err
     echo "status $?" >>../got.out)
    sed -i 's/^qemu-img: /qimg: /; s/qemu-img --help/qimg --help/' want.err
    expect_same "$name: stdout" want.out got.out
    expect_same "$name: stderr" want.err got.err
    (cd q && find . -type f -printf '%p %s\n' | sort) >want.files
    (cd m && find . -type f -printf '%p %s\n' | sort) >got.files
    if [ "${NOFILES:-}" != 1 ]; then
        expect_same "$name: files" want.files got.files
    fi
}
misuse "-n with -o" -n -o size=1M a.raw o
misuse "target-is-zero without -n" --target-is-zero a.raw o
misuse "-S not aligned" -S 100 a.raw o
misuse "-S bad" -S abc a.raw o
misuse "-S too big" -S 32M a.raw o
misuse "-S negative" -S -1 a.raw o
misuse "-m 0" -m 0 a.raw o
misuse "-m 17" -m 17 a.raw o
misuse "-m x" -m x a.raw o
misuse "no files"
misuse "one file" a.raw
misuse "-c -C" -c -C a.raw o
misuse "-C -S" -C -S 4k a.raw o
misuse "-C --salvage" -C --salvage a.raw o
misuse "target-image-opts without -n" --target-image-opts a.raw o
misuse "skip-broken without bitmaps" --skip-broken-bitmaps a.raw o
misuse "unknown -O" -O foo a.raw o
misuse "-n missing target" -n -f raw a.raw nonexist
misuse "-n small target" -n -f raw a.raw small
misuse "missing source" nonexist o
misuse "bad rate" -r abc a.raw o
misuse "bad source cache" -T bogus a.raw o
# qemu-img checks -t only after creating the target (and leaves it);
# qimg refuses the option before touching anything.
NOFILES=1 misuse "bad cache" -t bogus a.raw o
misuse "-o help" -o help
misuse "-O raw -o help" -O raw -o help
misuse "snapshot concat" -l snap a.raw a.raw o
misuse "unknown flag" -Z a.raw o
misuse "missing -S arg" -S
misuse "raw compression" -c a.raw o
misuse "raw backing" -B x a.raw o
misuse "unknown -o" -o foo=bar a.raw o

# Unsupported features fail with one line and leave nothing behind.
for args in "--bitmaps" "--salvage" "-C" \
    "--image-opts"; do
    rm -f u.img
    # shellcheck disable=SC2086
    expect_status "unsupported $args" 1 "$QIMG" convert $args odd.raw u.img
    checks=$((checks + 1))
    [ "$(wc -l <"$T/.err")" = 1 ] || fail "unsupported $args: message" \
        "$(cat "$T/.err")"
    [ ! -e u.img ] || fail "unsupported $args: target left behind"
done

finish
