#!/bin/bash
# qimg dd against qemu-img dd (7.2): stdout, stderr and exit status, and
# the output each writes: the same size and bytes (raw), the same host
# allocation (both fully allocate), or for qcow2 output a clean check, the
# same virtual size and identical contents.  Inputs: raw and qcow2 (with
# zero, compressed and backing-file clusters), sizes that are not
# multiples of the block size, every operand and option, and qemu-img
# 7.2's quirks (skip is subtracted after count caps the size; a skip past
# the end warns and succeeds with an empty output).
. "$QIMG_SRCDIR/tests/functions.sh"
cd "$T"

mk() { "$QEMU_IMG" create -q "$@" >/dev/null || fail "qemu-img create $*"; }
io() { "$QEMU_IO" "$@" >/dev/null || fail "qemu-io $*"; }

# mkraw FILE SIZE [OFFSET:LEN]...: a sparse file with random data at the
# given byte ranges.
mkraw() {
    local file=$1 size=$2 spec off len
    shift 2
    rm -f "$file"
    truncate -s "$size" "$file"
    for spec in "$@"; do
        IFS=: read -r off len <<<"$spec"
        head -c "$len" /dev/urandom |
            dd of="$file" bs=1M seek="$off" oflag=seek_bytes \
                conv=notrunc status=none
    done
}

# Inputs, in the current folder; each tool runs in its own folder (want/,
# got/) and names them ../FILE, so messages name the same paths.
mkraw mixed.raw 3M 0:5000 70000:3000 1M:64k 3145000:728
mkraw odd.raw 10001 0:10001
mkraw hole.raw 1M
mkraw tiny.raw 100 0:100
printf 'ABCDEFGHIJ' | while read -r -n1 ch; do
    head -c 1024 /dev/zero | tr '\0' "$ch"
done >blocks.raw
mk -f qcow2 plain.qcow2 5M
io -f qcow2 -c "write -P 0x11 0 100k" -c "write -z 128k 64k" \
    -c "write -c -P 0x22 256k 64k" -c "write -P 0x33 1M 3000" \
    -c "write -P 0x44 5118k 2k" plain.qcow2
mk -f qcow2 -o cluster_size=4096 small.qcow2 1000000
io -f qcow2 -c "write -P 0x55 4096 8192" -c "write -P 0x66 995000 5000" \
    small.qcow2
mk -f qcow2 base.qcow2 2M
io -f qcow2 -c "write -P 0x77 0 2M" base.qcow2
mk -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 3M
io -f qcow2 -c "write -P 0x88 512k 64k" -c "write -z 1M 128k" top.qcow2
mkdir want got

# run NAME ARGS...: both tools in their folders; compare stdout, stderr,
# exit status, and the output file "out" they leave.  ARGS name the
# output of=out (or something else, in which case only messages count).
run() {
    local name=$1
    shift
    (cd want && "$QEMU_IMG" dd "$@" >../want.out 2>../want.err
     echo "status $?" >>../want.out)
    (cd got && "$QIMG" dd "$@" >../got.out 2>../got.err
     echo "status $?" >>../got.out)
    sed -i -e 's/^qemu-img: /qimg: /' -e "s/'qemu-img --help'/'qimg --help'/" \
        want.err
    expect_same "$name: stdout" want.out got.out
    expect_same "$name: stderr" want.err got.err
}

# outputs NAME FMT: the outputs of the last run agree.
outputs() {
    local name=$1 fmt=$2
    checks=$((checks + 1))
    if [ -e want/out ] && [ ! -e got/out ]; then
        fail "$name: qimg left no output"
        return
    fi
    if [ ! -e want/out ] && [ -e got/out ]; then
        fail "$name: qimg left an output, qemu-img did not"
        return
    fi
    [ -e want/out ] || return
    if [ "$fmt" = raw ]; then
        expect_same "$name: size" <(stat -c %s want/out) <(stat -c %s got/out)
        files_equal want/out got/out || fail "$name: contents differ"
        # Both write every byte: the same blocks are allocated.  But
        # qemu-img's file driver allocates the first block of a new file
        # and qimg's does not (lib/io), which shows when nothing was
        # written (NOALLOC=1).
        [ "${NOALLOC:-0}" = 1 ] && return
        expect_same "$name: allocation" <(stat -c %b want/out) \
            <(stat -c %b got/out)
        "$QEMU_IMG" map --output=json -f raw want/out >want.map
        "$QEMU_IMG" map --output=json -f raw got/out >got.map
        expect_same "$name: map" want.map got.map
    else
        "$QEMU_IMG" check -f "$fmt" got/out >check.out 2>&1 ||
            fail "$name: qemu-img check" "$(cat check.out)"
        expect_same "$name: virtual size" \
            <("$QEMU_IMG" info -f "$fmt" want/out | grep '^virtual size') \
            <("$QEMU_IMG" info -f "$fmt" got/out | grep '^virtual size')
        "$QEMU_IMG" compare -f "$fmt" -F "$fmt" want/out got/out \
            >cmp.out 2>&1 || fail "$name: compare" "$(cat cmp.out)"
        # Both write every cluster.
        "$QEMU_IMG" map --output=json -f "$fmt" want/out |
            sed 's/, "offset": [0-9]*//' >want.map
        "$QEMU_IMG" map --output=json -f "$fmt" got/out |
            sed 's/, "offset": [0-9]*//' >got.map
        expect_same "$name: map" want.map got.map
    fi
}

# dd_case NAME FMT ARGS...: run, then compare outputs of format FMT.
dd_case() {
    local name=$1 fmt=$2
    shift 2
    rm -f want/out got/out
    run "$name" "$@"
    outputs "$name" "$fmt"
}

# The copies: every input with several block sizes, counts and skips.
copies() {
    local ofmt=$1
    shift
    local in f
    for in in mixed.raw odd.raw hole.raw tiny.raw blocks.raw plain.qcow2 \
        small.qcow2 top.qcow2; do
        f=raw
        case $in in *.qcow2) f=qcow2 ;; esac
        dd_case "$in $*" "$ofmt" "$@" if=../$in of=out
        dd_case "$in -f $*" "$ofmt" "$@" -f $f if=../$in of=out
        dd_case "$in bs=4k $*" "$ofmt" "$@" bs=4k if=../$in of=out
        dd_case "$in bs=1M $*" "$ofmt" "$@" bs=1M if=../$in of=out
        dd_case "$in bs=3000 $*" "$ofmt" "$@" bs=3000 if=../$in of=out
        dd_case "$in bs=1.5k count=3 $*" "$ofmt" "$@" bs=1.5k count=3 \
            if=../$in of=out
        dd_case "$in bs=1k skip=3 $*" "$ofmt" "$@" bs=1k skip=3 \
            if=../$in of=out
        dd_case "$in bs=1k skip=3 count=5 $*" "$ofmt" "$@" bs=1k skip=3 \
            count=5 if=../$in of=out
        dd_case "$in skip=7 count=2 $*" "$ofmt" "$@" skip=7 count=2 \
            if=../$in of=out
        dd_case "$in count=0 $*" "$ofmt" "$@" count=0 if=../$in of=out
        dd_case "$in skip past end $*" "$ofmt" "$@" bs=1M skip=20 \
            if=../$in of=out
        dd_case "$in bs=3M count=1 $*" "$ofmt" "$@" bs=3M count=1 \
            if=../$in of=out
        dd_case "$in bs=64k skip=1 count=3 $*" "$ofmt" "$@" bs=64k skip=1 \
            count=3 if=../$in of=out
    done
}

copies raw
copies raw -O raw

# Exact ends, overflowing products, repeated operands, option order.
dd_case "skip to the end" raw bs=1k skip=10 if=../blocks.raw of=out
dd_case "skip one past" raw bs=1k skip=11 if=../blocks.raw of=out
dd_case "skip past count" raw bs=1k skip=5 count=3 if=../blocks.raw of=out
dd_case "skip overflow" raw skip=9223372036854775807 if=../blocks.raw \
    of=out
dd_case "skip*bs overflow" raw bs=4k skip=4611686018427387904 \
    if=../blocks.raw of=out
dd_case "count overflow" raw bs=2 count=4611686018427387904 \
    if=../blocks.raw of=out
dd_case "count max" raw count=9223372036854775807 if=../blocks.raw of=out
dd_case "count 7E" raw count=7E if=../odd.raw of=out
dd_case "bs max" raw bs=2147483647 if=../tiny.raw of=out
dd_case "bs hex" raw bs=0x400 count=2 if=../blocks.raw of=out
dd_case "bs 1.1k" raw bs=1.1k count=3 if=../blocks.raw of=out
dd_case "count 1k" raw bs=1 count=1k if=../blocks.raw of=out
dd_case "repeated bs" raw bs=1k bs=2k count=1 if=../blocks.raw of=out
dd_case "repeated if" raw if=../nonexistent if=../odd.raw of=out
dd_case "repeated of" raw if=../odd.raw of=elsewhere of=out
dd_case "operands first" raw if=../odd.raw of=out -f raw -O raw
dd_case "-U" raw -U if=../plain.qcow2 of=out
dd_case "--force-share" raw --force-share if=../plain.qcow2 of=out
dd_case "--" raw -- if=../odd.raw of=out
dd_case "--object" raw --object secret,id=s0,data=x if=../odd.raw of=out

# An existing output is replaced (larger and smaller than the new one).
for size in 20M 10; do
    head -c 4096 /dev/urandom >want/out
    truncate -s $size want/out
    cp want/out got/out
    run "replace $size" bs=1k count=3 if=../blocks.raw of=out
    outputs "replace $size" raw
done

# Operand and option errors.
run "nothing"
run "no output" if=../odd.raw
run "no input" of=out
run "bare word" foo
run "bare word after" if=../odd.raw of=out extra
run "unknown key" foo=1 if=../odd.raw of=out
run "empty key" =1
run "bare if" if
run "upper case" IF=../odd.raw of=out
run "first error wins" foo bs=x
run "first error wins 2" bs=x foo
for v in 0 00 -1 x 1x 1.5 1e3 '' 1kB .5k 2147483648 2G 1P 16E ' 1' '1 '; do
    run "bs=[$v]" "bs=$v" if=../odd.raw of=out
done
for v in x -1 1.5 8E 9223372036854775808 ''; do
    run "count=[$v]" "count=$v" if=../odd.raw of=out
    run "skip=[$v]" "skip=$v" if=../odd.raw of=out
done
run "bad object" --object foo if=../odd.raw of=out
run "unknown option" -x if=../odd.raw of=out
run "unknown long option" --foo if=../odd.raw of=out
run "-f without value" -f
run "-O without value" -O
run "-o" -o x if=../odd.raw of=out

# Input and output failures.
dd_case "missing input" raw if=../nonexistent of=out
dd_case "empty input name" raw if= of=out
dd_case "input is a folder" raw if=/ of=out
dd_case "wrong -f" raw -f qcow2 if=../odd.raw of=out
dd_case "unknown -f" raw -f foo if=../odd.raw of=out
dd_case "unknown -O" raw -O foo if=../odd.raw of=out
dd_case "unknown -O, missing input" raw -O foo if=../nonexistent of=out
run "output in a missing folder" if=../odd.raw of=nofolder/out
run "output is a folder" if=../odd.raw of=/
run "empty output name" if=../odd.raw of=

# -h prints help (not compared: each tool names itself) and succeeds.
expect_status "-h" 0 "$QIMG" dd -h
expect_status "--help" 0 "$QIMG" dd --help
# --image-opts makes if= an option string: a bare name is a node
# reference, which fails as in qemu-img (image_opts.sh tests the rest).
run "--image-opts bare name" --image-opts if=../odd.raw of=out
run "--image-opts" --image-opts if=driver=raw,file.filename=../odd.raw of=out
outputs "--image-opts" raw

# A read error part way: qemu-img writes the blocks before the bad one.
mk -f qcow2 bad.qcow2 1M
io -f qcow2 -c "write -P 0x99 0 256k" -c "write -P 0x99 320k 704k" \
    -c "write -c -P 0xaa 256k 64k" bad.qcow2
# The compressed cluster was written last, so it ends the file: garble it.
size=$(stat -c %s bad.qcow2)
head -c $((size - 1310720)) /dev/zero | tr '\0' '\377' |
    dd of=bad.qcow2 bs=1 seek=1310720 conv=notrunc status=none
"$QEMU_IO" -f qcow2 -r -c "read 256k 64k" bad.qcow2 >/dev/null 2>&1 &&
    fail "bad.qcow2 reads at 256k"
for bs in 512 64k 100k 4M; do
    # bs=4M: the first block fails, nothing is written.
    [ $bs = 4M ] && NOALLOC=1
    dd_case "read error bs=$bs" raw bs=$bs if=../bad.qcow2 of=out
done
NOALLOC=0

# qcow2 output.
copies qcow2 -O qcow2
dd_case "qcow2 skip past end" qcow2 -O qcow2 bs=1k skip=11 \
    if=../blocks.raw of=out
dd_case "qcow2 odd size" qcow2 -O qcow2 bs=3000 skip=1 if=../blocks.raw \
    of=out
dd_case "qcow2 read error" qcow2 -O qcow2 bs=64k if=../bad.qcow2 of=out

finish
