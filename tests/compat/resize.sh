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

# An image as qemu-img sees it, names filtered: info without the disk
# size (allocation is compared separately) and, for raw files, whose
# layout is the guest's, the file length and the map.  A qcow2 file's
# host layout (where clusters land, what is a hole) is qimg's own.
describe() {
    local fmt=$1 img=$2 out=$3
    {
        "$QEMU_IMG" info -f "$fmt" --output=json "$img" |
            grep -v '"actual-size"\|"filename"'
        if [ "$fmt" = raw ]; then
            stat -c 'length %s' "$img"
            "$QEMU_IMG" map -f "$fmt" --output=json "$img"
        fi
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
    local b0
    b0=$(stat -c %b "got.$ext")
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
    local bw bg
    bw=$(stat -c %b "want.$ext")
    bg=$(stat -c %b "got.$ext")
    if [ "$fmt" = raw ]; then
        # Preallocation shows in the allocation (st_blocks), which both
        # tools must change alike (both files are on one file system).
        checks=$((checks + 1))
        if [ "$bw" != "$bg" ]; then
            fail "$name: allocated blocks $bg, qemu-img $bw"
        fi
    else
        checks=$((checks + 1))
        "$QEMU_IMG" check -f qcow2 "got.$ext" >check.out 2>&1 ||
            fail "$name: qemu-img check" "$(cat check.out)"
        # Preallocated qcow2 images have the new area's clusters in the
        # file: at least as many bytes as the guest grew by.
        local grow
        grow=$(($("$QEMU_IMG" info -f qcow2 --output=json "got.$ext" |
            sed -n 's/.*"virtual-size": \([0-9]*\).*/\1/p') - \
            $("$QEMU_IMG" info -f qcow2 --output=json "$src" |
                sed -n 's/.*"virtual-size": \([0-9]*\).*/\1/p')))
        case " $* " in
        *" --preallocation="[fu]*)
            checks=$((checks + 1))
            if [ $(((bg - b0) * 512)) -lt $((grow)) ] &&
                [ $(((bw - b0) * 512)) -ge $((grow)) ]
            then
                fail "$name: new area not allocated ($bg blocks)"
            fi
            ;;
        esac
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

# ---- qcow2 images ----------------------------------------------------

mk -f qcow2 q1m.qcow2 1M
io -f qcow2 -c 'write -P 0x11 0 100k' -c 'write -P 0x22 960k 64k' \
    -c 'write -z 512k 64k' q1m.qcow2
mk -f qcow2 -o cluster_size=4k,compat=0.10 q4k.qcow2 1M
io -f qcow2 -c 'write -P 0x33 0 8k' -c 'write -P 0x44 1020k 4k' q4k.qcow2
mk -f qcow2 -o extended_l2=on,cluster_size=64k qext.qcow2 1M
io -f qcow2 -c 'write -P 0x55 4k 4k' -c 'write -P 0x66 1000k 24k' qext.qcow2
mk -f qcow2 qodd.qcow2 1000k
io -f qcow2 -c 'write -P 0x77 990k 10k' qodd.qcow2
for q in q1m q4k qext qodd; do
    same "$q grow" qcow2 $q.qcow2 IMG 2M
    same "$q grow relative" qcow2 $q.qcow2 IMG +1M
    same "$q grow unaligned" qcow2 $q.qcow2 IMG +1000
    same "$q grow by a sector" qcow2 $q.qcow2 IMG +512
    same "$q grow big" qcow2 $q.qcow2 -f qcow2 IMG 3G
    same "$q plus zero" qcow2 $q.qcow2 IMG +0
    same "$q shrink refused" qcow2 $q.qcow2 IMG 512k
    same "$q shrink" qcow2 $q.qcow2 --shrink IMG 512k
    same "$q shrink mid cluster" qcow2 $q.qcow2 --shrink IMG 995k
    same "$q shrink unaligned" qcow2 $q.qcow2 --shrink IMG 999
    same "$q shrink to a sector" qcow2 $q.qcow2 --shrink IMG 512
    for p in metadata falloc full; do
        same "$q prealloc $p" qcow2 $q.qcow2 --preallocation=$p IMG +1M
        same "$q prealloc $p unaligned" qcow2 $q.qcow2 \
            --preallocation=$p IMG +1000
        same "$q prealloc $p shrink" qcow2 $q.qcow2 --preallocation=$p \
            --shrink IMG 512k
    done
done
same "qcow2 prealloc big" qcow2 q1m.qcow2 --preallocation=metadata IMG 1G
same "qcow2 -f raw grow" raw q1m.qcow2 -f raw IMG +64k

# Shrink then grow.  qemu-img 7.2 lets the old bytes of the last
# cluster past a shrink show again when the image grows back (its
# truncate leaves that cluster alone); qimg makes them read as zero, as
# a new area should.  Everything else must read the same.
cp q1m.qcow2 sg-want.qcow2
cp q1m.qcow2 sg-got.qcow2
"$QEMU_IMG" resize -q --shrink sg-want.qcow2 990k &&
    "$QEMU_IMG" resize -q sg-want.qcow2 2M || fail "qemu-img shrink, grow"
"$QIMG" resize -q --shrink sg-got.qcow2 990k &&
    "$QIMG" resize -q sg-got.qcow2 2M || fail "qimg shrink, grow"
checks=$((checks + 1))
"$QEMU_IO" -f qcow2 -c 'read -P 0x11 0 100k' -c 'read -P 0 100k 860k' \
    -c 'read -P 0x22 960k 30k' -c 'read -P 0 990k 1058k' sg-got.qcow2 \
    >io.out 2>&1
if grep -q -i 'fail\|mismatch' io.out; then
    fail "shrink, grow: contents" "$(cat io.out)"
fi
checks=$((checks + 1))
"$QEMU_IMG" compare -q sg-want.qcow2 sg-got.qcow2 2>/dev/null
[ $? = 1 ] || fail "shrink, grow: qemu-img 7.2's stale tail no longer differs"
"$QEMU_IO" -f qcow2 -c 'write -P 0 990k 34k' sg-want.qcow2 >/dev/null
checks=$((checks + 1))
"$QEMU_IMG" compare -q sg-want.qcow2 sg-got.qcow2 ||
    fail "shrink, grow: contents differ outside the stale tail"
checks=$((checks + 1))
"$QEMU_IMG" check -q sg-got.qcow2 || fail "shrink, grow: check"

# Internal snapshots stay whole through a resize of the active layer:
# applying the snapshot afterwards gives back its data and its size.
cp q1m.qcow2 snap.qcow2
"$QEMU_IMG" snapshot -c s1 snap.qcow2 || fail "qemu-img snapshot -c"
io -f qcow2 -c 'write -P 0x99 0 4k' snap.qcow2
same "snapshot grow" qcow2 snap.qcow2 IMG +3M
same "snapshot shrink" qcow2 snap.qcow2 --shrink IMG 256k
"$QEMU_IMG" convert -O raw -l s1 snap.qcow2 s1.raw
for args in "+3M" "--shrink 256k"; do
    cp snap.qcow2 snap-got.qcow2
    # shellcheck disable=SC2086  # two words on purpose
    "$QIMG" resize -q snap-got.qcow2 $args || fail "snapshot $args"
    "$QEMU_IMG" snapshot -a s1 snap-got.qcow2 || fail "snapshot -a s1"
    "$QEMU_IMG" convert -O raw snap-got.qcow2 s1-got.raw
    expect_same "snapshot kept through resize $args" s1.raw s1-got.raw
    checks=$((checks + 1))
    "$QEMU_IMG" check -q snap-got.qcow2 || fail "snapshot $args: check"
done

# Backing files: a longer backing file must not show through the new
# area (it reads as zero); a shorter one needs nothing.
mk -f qcow2 base.qcow2 4M
io -f qcow2 -c 'write -P 0xbb 0 4M' base.qcow2
mk -f qcow2 -b base.qcow2 -F qcow2 ov.qcow2 1M
io -f qcow2 -c 'write -P 0x12 64k 4k' -c 'write -P 0x13 1020k 4k' ov.qcow2
mk -f qcow2 -b base.qcow2 -F qcow2 -o cluster_size=4k ov4k.qcow2 1000k
io -f qcow2 -c 'write -P 0x14 996k 4k' ov4k.qcow2
mk -f qcow2 -o compat=0.10 -b base.qcow2 -F qcow2 ovv2.qcow2 1M
mk -f qcow2 -b base.qcow2 -F qcow2 ovlong.qcow2 6M
mk -f raw rawbase.raw 2M
io -f raw -c 'write -P 0xcc 0 2M' rawbase.raw
mk -f qcow2 -b rawbase.raw -F raw ovraw.qcow2 1M
for q in ov ov4k ovlong ovraw; do
    same "$q grow" qcow2 $q.qcow2 IMG +1M
    same "$q grow past backing" qcow2 $q.qcow2 IMG 8M
    same "$q grow unaligned" qcow2 $q.qcow2 IMG +1536
    same "$q shrink" qcow2 $q.qcow2 --shrink IMG 512k
    for p in metadata falloc full; do
        same "$q prealloc $p" qcow2 $q.qcow2 --preallocation=$p IMG 5M
    done
done
same "ovv2 shrink" qcow2 ovv2.qcow2 --shrink IMG 512k
# A compat=0.10 image has no zero clusters: qemu-img 7.2 refuses to grow
# one over a longer backing file ("Failed to zero out new clusters:
# Operation not supported"); qimg grows it and writes the zeros as data.
# Either way the backing file must not show through.
for size in +1M 8M; do
    cp ovv2.qcow2 ovv2-got.qcow2
    expect_status "ovv2 grow $size" 0 "$QIMG" resize ovv2-got.qcow2 $size
    checks=$((checks + 1))
    "$QEMU_IO" -f qcow2 -c 'read -P 0xbb 0 1M' \
        -c "read -P 0 1M $(($("$QEMU_IMG" info --output=json \
            ovv2-got.qcow2 | sed -n 's/.*"virtual-size": \([0-9]*\).*/\1/p') \
            - 1048576))" ovv2-got.qcow2 >io.out 2>&1
    if grep -q -i 'fail\|mismatch' io.out; then
        fail "ovv2 grow $size: contents" "$(cat io.out)"
    fi
    checks=$((checks + 1))
    "$QEMU_IMG" check -q ovv2-got.qcow2 || fail "ovv2 grow $size: check"
done
# Shrunk, then grown again, over a longer backing file.
cp ov.qcow2 ovsg-want.qcow2
cp ov.qcow2 ovsg-got.qcow2
"$QEMU_IMG" resize -q --shrink ovsg-want.qcow2 512k &&
    "$QEMU_IMG" resize -q ovsg-want.qcow2 3M || fail "qemu-img ov shrink, grow"
"$QIMG" resize -q --shrink ovsg-got.qcow2 512k &&
    "$QIMG" resize -q ovsg-got.qcow2 3M || fail "qimg ov shrink, grow"
checks=$((checks + 1))
"$QEMU_IMG" compare -q ovsg-want.qcow2 ovsg-got.qcow2 ||
    fail "ov shrink, grow: contents differ"

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
