#!/bin/bash
# qimg resize against qemu-img resize (7.2), side by side: each case runs
# on two copies of the same image, one per tool, and must give the same
# stdout, stderr (qemu-img's name mapped to qimg's) and exit status, and
# leave images that qemu-img sees alike: file length, info, map, contents
# (qemu-img compare), allocation, and qemu-img check for formats with one.
. "$QIMG_SRCDIR/tests/functions.sh"
cd "$T"

mk() { "$QEMU_IMG" create -q "$@" >/dev/null || fail "qemu-img create $*"; }
io() { "$QEMU_IO" "$@" >/dev/null || fail "qemu-io $*"; }

# Replace the image name in outputs so the two copies compare.
norm() {
    sed -i -e 's/^qemu-img: /qimg: /' \
        -e "s/'qemu-img --help'/'qimg --help'/" \
        -e 's/want\.\(raw\|qcow2\|img\)/IMG/g' \
        -e 's/got\.\(raw\|qcow2\|img\)/IMG/g' "$@"
}

# Info and map of an image as qemu-img sees it, names filtered, without
# the disk size (compared separately, with allocation).
describe() {
    local fmt=$1 img=$2 out=$3
    {
        stat -c 'length %s' "$img"
        "$QEMU_IMG" info -f "$fmt" --output=json "$img" |
            grep -v '"actual-size"\|"filename"'
        "$QEMU_IMG" map -f "$fmt" --output=json "$img"
    } >"$out" 2>&1
    norm "$out"
}

# same NAME FMT SRC ARGS...: copy SRC to want.EXT and got.EXT, run
# "qemu-img resize ARGS" and "qimg resize ARGS" where the word IMG in
# ARGS names the copy, and compare everything.
same() {
    local name=$1 fmt=$2 src=$3
    shift 3
    local ext=${src##*.}
    cp --sparse=always "$src" "want.$ext"
    cp --sparse=always "$src" "got.$ext"
    local a want_args=() got_args=()
    for a in "$@"; do
        want_args+=("${a//IMG/want.$ext}")
        got_args+=("${a//IMG/got.$ext}")
    done
    "$QEMU_IMG" resize "${want_args[@]}" >want.out 2>want.err
    echo "status $?" >>want.out
    "$QIMG" resize "${got_args[@]}" >got.out 2>got.err
    echo "status $?" >>got.out
    norm want.out want.err got.out got.err
    expect_same "$name: stdout" want.out got.out
    expect_same "$name: stderr" want.err got.err
    describe "$fmt" "want.$ext" want.desc
    describe "$fmt" "got.$ext" got.desc
    expect_same "$name: image" want.desc got.desc
    checks=$((checks + 1))
    if ! "$QEMU_IMG" compare -q -f "$fmt" -F "$fmt" "want.$ext" \
        "got.$ext" 2>/dev/null; then
        fail "$name: contents differ"
    fi
    # Preallocation is visible in the allocation (st_blocks), which
    # both tools must change the same way; block granularity differs by
    # nothing since both files live on the same file system.
    checks=$((checks + 1))
    local bw bg
    bw=$(stat -c %b "want.$ext")
    bg=$(stat -c %b "got.$ext")
    if [ "$bw" != "$bg" ]; then
        fail "$name: allocated blocks $bg, qemu-img $bw"
    fi
    if [ "$fmt" = qcow2 ]; then
        checks=$((checks + 1))
        "$QEMU_IMG" check -f qcow2 "got.$ext" >check.out 2>&1 ||
            fail "$name: qemu-img check" "$(cat check.out)"
    fi
}

# ---- Raw images ------------------------------------------------------

mk -f raw r1m.raw 1M
io -f raw -c 'write -P 0x5a 0 64k' -c 'write -P 0xa5 960k 64k' r1m.raw
: >empty.raw
truncate -s 1000 odd.raw
printf 'tail' | dd of=odd.raw bs=1 seek=996 conv=notrunc status=none

# Grow and shrink, absolute and relative, with suffixes.
same "grow absolute" raw r1m.raw -f raw IMG 2M
same "grow relative" raw r1m.raw -f raw IMG +1M
same "grow fraction" raw r1m.raw -f raw IMG 1.5M
same "grow hex" raw r1m.raw -f raw IMG 0x200000
same "grow k suffix" raw r1m.raw -f raw IMG 2048k
same "grow b suffix" raw r1m.raw -f raw IMG 1048577b
same "same size" raw r1m.raw -f raw IMG 1M
same "plus zero" raw r1m.raw -f raw IMG +0
same "minus zero" raw r1m.raw -f raw IMG -0
same "double plus" raw r1m.raw -f raw IMG ++64k
same "minus plus" raw r1m.raw --shrink -f raw IMG -+64k
same "shrink refused" raw r1m.raw -f raw IMG 512k
same "shrink relative refused" raw r1m.raw -f raw IMG -512k
same "shrink" raw r1m.raw --shrink -f raw IMG 512k
same "shrink relative" raw r1m.raw --shrink -f raw IMG -512k
same "shrink unaligned" raw r1m.raw --shrink -f raw IMG 1000
same "shrink long option prefix" raw r1m.raw --shr -f raw IMG 100k
same "double dash" raw r1m.raw -f raw --shrink -- IMG -1k
same "double dash after name" raw r1m.raw -f raw --shrink IMG -- -1k
same "double dash refused" raw r1m.raw -f raw IMG -- -1k
same "shrink to zero" raw r1m.raw --shrink -f raw IMG 0
same "relative to zero" raw r1m.raw --shrink -f raw IMG -1M
same "relative below zero" raw r1m.raw --shrink -f raw IMG -2M
same "zero refused" raw r1m.raw -f raw IMG 0
same "unaligned grow" raw r1m.raw -f raw IMG 1049576
same "unaligned relative" raw r1m.raw -f raw IMG +100
same "odd file plus zero" raw odd.raw -f raw IMG +0
same "odd file grow" raw odd.raw -f raw IMG +1
same "odd file shrink to rounded" raw odd.raw -f raw IMG 1000
same "odd file shrink" raw odd.raw --shrink -f raw IMG 999
same "quiet" raw r1m.raw -q -f raw IMG 3M
same "quiet shrink refused" raw r1m.raw -q -f raw IMG 3k
same "probed raw" raw r1m.raw IMG +1M
same "probed raw quiet" raw r1m.raw -q IMG +1M
same "probed raw shrink" raw r1m.raw --shrink IMG 4k
same "object" raw r1m.raw --object secret,id=s0,data=x -f raw IMG +1M
same "empty file grow" raw empty.raw -f raw IMG 1M
same "empty file tiny grow" raw empty.raw -f raw IMG 100
same "empty file probed" raw empty.raw IMG 64k

# Preallocation of the new area.
for p in off falloc full; do
    same "prealloc $p" raw r1m.raw --preallocation=$p -f raw IMG +1M
    same "prealloc $p separate" raw r1m.raw --preallocation $p -f raw IMG 3M
    same "prealloc $p unaligned" raw r1m.raw --preallocation=$p -f raw \
        IMG +1000
    same "prealloc $p from empty" raw empty.raw --preallocation=$p \
        -f raw IMG 1M
    same "prealloc $p tiny from empty" raw empty.raw --preallocation=$p \
        -f raw IMG 100
    same "prealloc $p same size" raw r1m.raw --preallocation=$p -f raw \
        IMG 1M
    same "prealloc $p shrink" raw r1m.raw --preallocation=$p --shrink \
        -f raw IMG 4k
done
same "prealloc off shrink ok" raw r1m.raw --preallocation=off --shrink \
    -f raw IMG 4k
same "prealloc metadata" raw r1m.raw --preallocation=metadata -f raw IMG 2M
same "prealloc prefix" raw r1m.raw --pre=full -f raw IMG 2M
same "prealloc bad" raw r1m.raw --preallocation=bogus -f raw IMG 2M
same "prealloc empty" raw r1m.raw --preallocation= -f raw IMG 2M
same "prealloc upper case" raw r1m.raw --preallocation=FULL -f raw IMG 2M
same "prealloc last" raw r1m.raw -f raw IMG --preallocation

# Size errors, checked before the image is opened.
for s in 1x abc '' 2G- ' 1M' '1M ' + - 20E +20E +16E 1.5e3k; do
    same "size '$s'" raw r1m.raw -f raw IMG "$s"
    same "size '$s' missing file" raw r1m.raw -f raw nonexist.raw "$s"
done
# Sizes that do not fit: 2^63 and more, wrapping sums, the block layer's
# limit, the file system's limit.
for s in 8E 18446744073709551615 +15E +9223372036854775807 \
    -9223372036854775807 9223372036854775807 9223372035781033985 \
    9223372035781033984 7E 17T; do
    same "size $s" raw r1m.raw -f raw IMG "$s"
done

# Argument errors.
same "no arguments" raw r1m.raw
same "one argument" raw r1m.raw IMG
same "only -f" raw r1m.raw -f
same "missing size" raw r1m.raw -f raw IMG
same "size before option" raw r1m.raw IMG 1M -f
same "extra argument" raw r1m.raw -f raw IMG +1M extra
same "-p refused" raw r1m.raw -p -f raw IMG +1M
same "-U refused" raw r1m.raw -U -f raw IMG +1M
same "unknown short option" raw r1m.raw -x -f raw IMG +1M
same "unknown long option" raw r1m.raw --bogus -f raw IMG +1M
same "shrink with value" raw r1m.raw --shrink=1 -f raw IMG +1M
same "missing -f argument" raw r1m.raw IMG -f
same "missing --object argument" raw r1m.raw IMG 1M --object
same "bad object type" raw r1m.raw --object foo,id=s0 -f raw IMG +1M
same "object without data" raw r1m.raw --object secret,id=s0 -f raw IMG 1M
same "missing file" raw r1m.raw -f raw nonexist.raw +1M
same "missing file probed" raw r1m.raw nonexist.raw +1M
same "directory" raw r1m.raw -f raw . +1M
same "unknown format" raw r1m.raw -f foo IMG +1M
same "wrong format" raw r1m.raw -f qcow2 IMG +1M

# Devices keep their size.
for dev in /dev/null /dev/zero; do
    same "$dev grow" raw r1m.raw -f raw $dev 1M
    same "$dev probed" raw r1m.raw $dev 1M
    same "$dev falloc" raw r1m.raw --preallocation=falloc -f raw $dev 1M
    same "$dev metadata" raw r1m.raw --preallocation=metadata -f raw $dev 1M
done

# -h prints the help and succeeds once the size is taken off.
expect_status "-h" 0 "$QIMG" resize -h IMG
grep -q 'resize \[--object objectdef\]' "$T/.out" && pass ||
    fail "resize -h prints the help"
expect_status "-h too short" 1 "$QIMG" resize -h

# --image-opts is not supported (qemu-img would look for a device name).
expect_status "--image-opts" 1 "$QIMG" resize --image-opts r1m.raw +1M

# The data is kept through grow and shrink; the new area reads as zero.
cp r1m.raw d.raw
"$QIMG" resize -q -f raw d.raw 3M || fail "grow d.raw"
"$QIMG" resize -q -f raw --shrink d.raw 1000k || fail "shrink d.raw"
"$QIMG" resize -q -f raw d.raw 2M || fail "regrow d.raw"
"$QEMU_IO" -f raw -c 'read -P 0x5a 0 64k' -c 'read -P 0 64k 896k' \
    -c 'read -P 0xa5 960k 40k' -c 'read -P 0 1000k 1048k' d.raw \
    >io.out 2>&1
checks=$((checks + 1))
if grep -q -i 'fail\|mismatch' io.out; then
    fail "data after grow and shrink" "$(cat io.out)"
fi

# A probed raw image whose first sector is written by qimg's resize only
# as QEMU does (the first block of a file grown from empty).
: >p.raw
"$QIMG" resize -q p.raw 1M 2>/dev/null || fail "probed empty resize"
checks=$((checks + 1))
[ "$(stat -c %s p.raw)" = 1048576 ] || fail "probed empty resize size"

# ---- Locked images ---------------------------------------------------

# A raw image in use by qemu-io: QEMU shares writes and resizes of raw
# images, so both resize it; a qcow2 image in use cannot be resized.
mk -f qcow2 q.qcow2 1M
cp r1m.raw lock.raw
locked() {
    local name=$1 fmt=$2 img=$3 ro=$4
    shift 4
    # qemu-io keeps the image open while it waits on its input.
    exec {hold}> >(exec "$QEMU_IO" $ro -f "$fmt" "$img" >/dev/null 2>&1)
    sleep 0.5
    "$QEMU_IMG" resize -f "$fmt" "$img" "$@" >want.out 2>want.err
    echo "status $?" >>want.out
    "$QIMG" resize -f "$fmt" "$img" "$@" >got.out 2>got.err
    echo "status $?" >>got.out
    exec {hold}>&-
    sleep 0.5
    norm want.out want.err got.out got.err
    expect_same "$name: stdout" want.out got.out
    expect_same "$name: stderr" want.err got.err
}
locked "raw in use" raw lock.raw "" +64k
locked "raw in use read-only" raw lock.raw -r +64k
locked "qcow2 in use" qcow2 q.qcow2 "" +64k
locked "qcow2 in use read-only" qcow2 q.qcow2 -r +64k
checks=$((checks + 1))
[ "$(stat -c %s lock.raw)" = $((1048576 + 4 * 65536)) ] ||
    fail "raw in use: both tools resized it"

finish
