#!/bin/bash
# Persistent bitmaps survive qimg's writes as they survive QEMU's: the
# same guest operations through write_image (qimg's library) and through
# qemu-io, or the same qimg and qemu-img command, leave the same bitmaps
# (names, flags, granularity, table size and every set bit, read from the
# file by bitmap_tool.py), the same guest data, and images that qemu-img
# check finds clean.  Bitmaps in use when opened are left alone, disabled
# ones record nothing, a resize resizes them (bits past a shrunk end go),
# and a write cut short (write_image 'k': no flush, no close) leaves them
# flagged in use, never silently stale.  Then "qimg bitmap": the same
# action sequences as qemu-img bitmap, with the same bitmaps, messages and
# exit status; and "convert --bitmaps" copies them as qemu-img's does.
. "$QIMG_SRCDIR/tests/functions.sh"
cd "$T"
W=${QIMG_WRITE_IMAGE:?}
BT="python3 $QIMG_SRCDIR/tests/compat/bitmap_tool.py"
M=1048576

# base CLUSTER SIZE: base.qcow2 with an enabled bitmap at the default
# granularity, a fine one (512 B), a disabled one, and some data.
base() {
    rm -f base.qcow2
    "$QEMU_IMG" create -q -f qcow2 -o cluster_size=$1 base.qcow2 $2
    "$QEMU_IMG" bitmap --add base.qcow2 auto0
    "$QEMU_IMG" bitmap --add -g 512 base.qcow2 fine
    "$QEMU_IMG" bitmap --add --disable base.qcow2 off
    "$QEMU_IO" -c 'write -q -P 0x5a 0 64k' base.qcow2
}

# first_in_use IMAGE: flag the first bitmap in use in the directory, as
# a crash of QEMU's leaves it.
first_in_use() {
    python3 - "$1" <<'PY'
import struct, sys
f = open(sys.argv[1], 'r+b')
d = f.read(65536)
p = struct.unpack_from('>I', d, 100)[0]
while True:
    t, n = struct.unpack_from('>II', d, p)
    if t == 0x23852875:
        break
    p += 8 + ((n + 7) & ~7)
doff = struct.unpack_from('>Q', d, p + 24)[0]
f.seek(doff + 12)
f.write(struct.pack('>I', 3))
PY
}

# clean NAME IMAGE: qemu-img check finds nothing.
clean() {
    expect_status "$1: qemu-img check" 0 "$QEMU_IMG" check "$2"
}

# same_bitmaps NAME GOT WANT: the bitmaps of both images, and their data.
same_bitmaps() {
    $BT "$2" >got.bm
    $BT "$3" >want.bm
    expect_same "$1: bitmaps" want.bm got.bm
    checks=$((checks + 1))
    out=$("$QEMU_IMG" compare "$2" "$3" 2>&1) ||
        fail "$1: guest data" "$out"
    clean "$1" "$2"
}

# ops NAME CLUSTER SIZE OP...: write_image's OPs on a copy of base, the
# same through qemu-io (one run per reopen) on another.
ops() {
    local name=$1
    base "$2" "$3"
    shift 3
    cp base.qcow2 got.qcow2
    cp base.qcow2 want.qcow2
    "$W" got.qcow2 qcow2 "$@" 2>w.err || fail "$name: write_image" \
        "$(cat w.err)"
    local cmds=() op a b c
    for op in "$@" o; do
        IFS=: read -r k a b c <<<"$op"
        case $k in
        w) cmds+=(-c "write -q -P $c $a $b") ;;
        z) cmds+=(-c "write -q -z $a $b") ;;
        u) cmds+=(-c "write -q -z -u $a $b") ;;
        d) cmds+=(-c "discard -q $a $b") ;;
        c) cmds+=(-c "write -q -c -P $c $a $b") ;;
        f) cmds+=(-c "flush") ;;
        r) cmds+=(-c "truncate ${a#-}") ;;
        o)
            "$QEMU_IO" "${cmds[@]}" want.qcow2 || fail "$name: qemu-io"
            cmds=()
            ;;
        esac
    done
    same_bitmaps "$name" got.qcow2 want.qcow2
}

for cs in 65536 512; do
    ops "writes cs$cs" $cs 64M w:0:4096:1 w:$((5 * M + 512)):70000:2 \
        w:$((63 * M)):$M:3
    ops "zero writes and discards cs$cs" $cs 64M z:$((2 * M)):8192 \
        u:$((3 * M)):$M d:$((4 * M)):$((2 * M)) d:100:200
    ops "compressed cs$cs" $cs 64M c:$((8 * M)):$((2 * cs)):7
    ops "flush and reopen cs$cs" $cs 64M w:4096:512:1 f w:$((9 * M)):4096:2 o \
        w:$((20 * M)):65536:3 f f
    ops "grow cs$cs" $cs 64M w:$M:4096:1 r:$((200 * M)) w:$((150 * M)):4096:2
    ops "shrink cs$cs" $cs 64M w:$((40 * M)):4096:1 w:$((10 * M)):4096:2 \
        r:-$((20 * M)) w:$((19 * M)):512:3
done
# Many data clusters per bitmap: 512-byte clusters, 512-byte granules,
# 64 MiB = 16 KiB of bits = 32 clusters, written all over.
ops "spread cs512" 512 64M w:0:$((64 * M)):9

# A bitmap in use when opened (a crash of QEMU's) stays as it was.
base 65536 64M
first_in_use base.qcow2
cp base.qcow2 got.qcow2
cp base.qcow2 want.qcow2
"$W" got.qcow2 qcow2 w:$((30 * M)):4096:1 || fail "in use: write"
"$QEMU_IO" -c "write -q -P 1 $((30 * M)) 4096" want.qcow2 2>/dev/null ||
    fail "in use: qemu-io"
same_bitmaps "in use at open" got.qcow2 want.qcow2
# It cannot be resized (qemu-img's two-line message), and no bitmap lets
# a snapshot be applied.
"$QEMU_IMG" snapshot -c s1 base.qcow2
same_out "resize, a bitmap in use" resize base.qcow2 80M
same_out "snapshot -a, bitmaps" snapshot -a s1 base.qcow2
same_out "snapshot -a, bitmaps, no such snapshot" snapshot -a s9 base.qcow2

# Commands: the same command by qimg and by qemu-img.
"$QEMU_IMG" create -q -f raw src.raw 64M
"$QEMU_IO" -f raw -c 'write -q -P 7 1M 64k' -c 'write -q -P 8 40M 3M' src.raw
cmd() {
    local name=$1
    shift
    base 65536 64M
    cp base.qcow2 got.qcow2
    cp base.qcow2 want.qcow2
    local args=("${@//IMG/got.qcow2}")
    "$QIMG" "${args[@]}" >/dev/null 2>c.err || fail "$name: qimg" \
        "$(cat c.err)"
    args=("${@//IMG/want.qcow2}")
    "$QEMU_IMG" "${args[@]}" >/dev/null || fail "$name: qemu-img"
    same_bitmaps "$name" got.qcow2 want.qcow2
}
cmd "snapshot -c" snapshot -c s1 IMG
cmd "resize" resize IMG 1G
cmd "resize --shrink" resize --shrink IMG 1M
cmd "amend" amend -o lazy_refcounts=on IMG
cmd "convert -n" convert -n -O qcow2 src.raw IMG
cmd "convert -n -c" convert -n -c -O qcow2 src.raw IMG
cmd "rebase -u" rebase -u -F raw -b src.raw IMG

# Snapshot revert and delete, and commit into a base with bitmaps.
base 65536 64M
"$QEMU_IMG" snapshot -c s1 base.qcow2
"$QEMU_IO" -c 'write -q -P 3 2M 64k' base.qcow2
for op in "-d s1"; do
    cp base.qcow2 got.qcow2
    cp base.qcow2 want.qcow2
    "$QIMG" snapshot $op got.qcow2 || fail "snapshot $op: qimg"
    "$QEMU_IMG" snapshot $op want.qcow2
    same_bitmaps "snapshot $op" got.qcow2 want.qcow2
done
for tool in qimg qemu-img; do
    base 65536 64M
    mv base.qcow2 $tool-base.qcow2
    "$QEMU_IMG" create -q -f qcow2 -F qcow2 -b $tool-base.qcow2 $tool-top.qcow2
    "$QEMU_IO" -c 'write -q -P 4 6M 128k' -c 'write -q -z 9M 64k' \
        $tool-top.qcow2
done
"$QIMG" commit -q qimg-top.qcow2 || fail "commit: qimg"
"$QEMU_IMG" commit -q qemu-img-top.qcow2
same_bitmaps "commit" qimg-base.qcow2 qemu-img-base.qcow2

# A write cut short: the bitmaps are flagged in use on disk before the
# data lands, and the image stays consistent (leaks allowed, as after a
# crash).  A flush before the cut clears the flag again.
base 65536 64M
cp base.qcow2 cut.qcow2
"$W" cut.qcow2 qcow2 w:$((7 * M)):4096:1 k || fail "cut: write_image"
$BT cut.qcow2 >cut.bm
checks=$((checks + 1))
grep -q '^auto0 flags=in_use,auto' cut.bm ||
    fail "cut: auto0 not flagged in use" "$(cat cut.bm)"
checks=$((checks + 1))
grep -q '^off flags=in_use ' cut.bm ||
    fail "cut: disabled bitmap not flagged in use" "$(cat cut.bm)"
"$QEMU_IMG" check cut.qcow2 >check.out 2>&1
checks=$((checks + 1))
[ $? -le 3 ] && ! grep -q ERROR check.out || fail "cut: corrupt" \
    "$(cat check.out)"
cp base.qcow2 cut.qcow2
"$W" cut.qcow2 qcow2 w:$((7 * M)):4096:1 f k || fail "cut: write_image"
cp base.qcow2 want.qcow2
"$QEMU_IO" -c "write -q -P 1 $((7 * M)) 4096" want.qcow2
same_bitmaps "flushed, then cut" cut.qcow2 want.qcow2

# ---- qimg bitmap -----------------------------------------------------

# seq NAME CLUSTER ACTIONS...: on a fresh image each tool runs each
# ACTIONS string (words; IMG is the image) as one bitmap command, with
# qemu-io writes in between; status, stderr and the bitmaps must agree.
seq() {
    local name=$1 cs=$2
    shift 2
    local tool img step=0
    for tool in qimg qemu-img; do
        img=$tool.qcow2
        rm -f $img $tool.log
        "$QEMU_IMG" create -q -f qcow2 -o cluster_size=$cs $img 64M
        "$QEMU_IO" -c 'write -q -P 1 1M 64k' $img
        local exe=$QIMG
        [ $tool = qemu-img ] && exe=$QEMU_IMG
        step=0
        for a in "$@"; do
            step=$((step + 1))
            # shellcheck disable=SC2086
            "$exe" bitmap ${a//IMG/$img} >>$tool.log 2>&1
            echo "step $step: exit $?" >>$tool.log
            "$QEMU_IO" -c "write -q -P $step $((step * 3))M 12k" $img
        done
        sed -i -e 's/^qimg: /qemu-img: /' \
            -e "s/^Try 'qimg --help'/Try 'qemu-img --help'/" $tool.log
    done
    expect_same "bitmap $name: messages" qemu-img.log qimg.log
    same_bitmaps "bitmap $name" qimg.qcow2 qemu-img.qcow2
}

seq "add, write, remove" 65536 "--add IMG a" "--add -g 4096 IMG b" \
    "--remove IMG a" "--add --disable IMG c" "--enable IMG c"
seq "merge and clear" 65536 "--add IMG a" "--add -g 1M IMG m" \
    "--add -g 512 IMG f" "--merge a IMG m" "--merge a IMG f" \
    "--clear --merge m IMG a" "--disable IMG f" "--merge m IMG f"
seq "small clusters" 512 "--add IMG a" "--add -g 2G IMG huge" \
    "--merge a IMG huge" "--add -g 512 IMG f" "--merge huge IMG f"
seq "several actions" 65536 "--add --disable --enable IMG a" \
    "--add --remove IMG b" "--clear --disable IMG a"
seq "remove the last" 65536 "--add IMG a" "--remove IMG a" \
    "--add -g 4096 IMG a"
seq "errors" 65536 "--add IMG a" "--add IMG a" "--add -g 1000 IMG b" \
    "--add -g 256 IMG b" "--add -g 4G IMG b" "--remove IMG nosuch" \
    "--clear IMG nosuch" "--enable IMG nosuch" "--disable IMG nosuch" \
    "--merge nosuch IMG a" "IMG a" "--add IMG" "--add IMG a b" \
    "-g 4k --remove IMG a" "-F qcow2 --merge a IMG a" \
    "-b IMG --add IMG c" "--add -g abc IMG c" "--bogus IMG a" \
    "--add --clear IMG a" "--add nosuch.qcow2 a"

# --merge -b: a bitmap of another image (other cluster size, same disk
# size), and one of another size.
for tool in qimg qemu-img; do
    rm -f $tool.qcow2 $tool-src.qcow2
    "$QEMU_IMG" create -q -f qcow2 $tool.qcow2 64M
    "$QEMU_IMG" bitmap --add $tool.qcow2 t
    "$QEMU_IMG" create -q -f qcow2 -o cluster_size=512 $tool-src.qcow2 64M
    "$QEMU_IMG" bitmap --add -g 512 $tool-src.qcow2 s
    "$QEMU_IO" -c 'write -q 7M 1536' -c 'write -q 33M 64k' $tool-src.qcow2
    "$QEMU_IMG" create -q -f qcow2 $tool-small.qcow2 32M
    "$QEMU_IMG" bitmap --add $tool-small.qcow2 s
done
"$QIMG" bitmap --merge s -b qimg-src.qcow2 -F qcow2 qimg.qcow2 t ||
    fail "merge -b: qimg"
"$QEMU_IMG" bitmap --merge s -b qemu-img-src.qcow2 -F qcow2 qemu-img.qcow2 t
same_bitmaps "merge -b" qimg.qcow2 qemu-img.qcow2
same_out "merge -b, other size" bitmap --merge s -b qimg-small.qcow2 \
    qimg.qcow2 t

# A disk whose end is inside a granule of the source: a merge stops at
# the end, and a growth afterwards shows no bit past the old end (a
# fuzz finding: qimg's merge set the target's padding granules, and the
# growth exposed them).  Then padding bits a careless writer left set:
# qimg's growth starts clean there too.  QEMU's does not: it loads the
# padding bits up to a 64-bit word and the growth shows them as dirty
# (harmless, but not data): qimg's result is checked by itself.
for tool in qimg qemu-img; do
    exe=$QIMG
    [ $tool = qemu-img ] && exe=$QEMU_IMG
    rm -f $tool.qcow2
    "$QEMU_IMG" create -q -f qcow2 -o cluster_size=512 $tool.qcow2 1049088
    "$QEMU_IMG" bitmap --add -g 4096 $tool.qcow2 coarse
    "$QEMU_IMG" bitmap --add -g 1024 --disable $tool.qcow2 fine
    "$QEMU_IO" -c 'write -q 1032704 16384' $tool.qcow2
    expect_status "end in a granule: $tool bitmap --merge" 0 \
        "$exe" bitmap --merge coarse $tool.qcow2 fine
    expect_status "end in a granule: $tool resize" 0 \
        "$exe" resize -q $tool.qcow2 1082368
done
same_bitmaps "merge at an unaligned end, grown" qimg.qcow2 qemu-img.qcow2
rm -f pad.qcow2
"$QEMU_IMG" create -q -f qcow2 -o cluster_size=512 pad.qcow2 1049088
"$QEMU_IMG" bitmap --add -g 1024 pad.qcow2 b
"$QEMU_IO" -c 'write -q 1032704 16384' pad.qcow2
$BT --set-padding pad.qcow2 >/dev/null
$BT pad.qcow2 >pad.bm
checks=$((checks + 1))
grep -q 'bits=1008-1024 beyond:1025 ' pad.bm ||
    fail "padding bits set: the test set none" "$(cat pad.bm)"
expect_status "padding bits set: resize" 0 "$QIMG" resize -q pad.qcow2 1082368
$BT pad.qcow2 >got.bm
printf '%s\n' "autoclear-bitmaps 1" \
    "b flags=auto gran=1024 table=1 bits=1008-1024" >want.bm
expect_same "padding bits set, grown: bitmaps" want.bm got.bm
clean "padding bits set, grown" pad.qcow2

# Overlays whose backing file is missing: bitmap opens neither image's
# backing file, so adding and merging work there as with qemu-img (a
# regression: qimg opened the chain and failed).  The header keeps its
# backing name.
for tool in qimg qemu-img; do
    rm -f $tool-ov.qcow2 $tool-ovsrc.qcow2
    "$QEMU_IMG" create -q -f qcow2 -u -F qcow2 -b missing-base.qcow2 \
        $tool-ov.qcow2 64M
    "$QEMU_IMG" create -q -f qcow2 -u -F qcow2 -b missing-base.qcow2 \
        $tool-ovsrc.qcow2 64M
    "$QEMU_IMG" bitmap --add $tool-ovsrc.qcow2 s
done
for tool in qimg qemu-img; do
    exe=$QIMG
    [ $tool = qemu-img ] && exe=$QEMU_IMG
    expect_status "missing backing: $tool bitmap --add" 0 \
        "$exe" bitmap --add $tool-ov.qcow2 t
    expect_status "missing backing: $tool bitmap --merge -b" 0 \
        "$exe" bitmap --merge s -b $tool-ovsrc.qcow2 -F qcow2 \
        $tool-ov.qcow2 t
done
$BT qimg-ov.qcow2 >got.bm
$BT qemu-img-ov.qcow2 >want.bm
expect_same "missing backing: bitmaps" want.bm got.bm
"$QEMU_IMG" info --output=json qimg-ov.qcow2 | grep '"backing-filename"' \
    >got.bf
checks=$((checks + 1))
grep -q '"missing-base.qcow2"' got.bf ||
    fail "missing backing: backing name kept" "$(cat got.bf)"

# A bitmap in use at open: removed (its clusters freed), never used.
base 65536 64M
"$QEMU_IO" -c 'write -q 3M 64k' base.qcow2
first_in_use base.qcow2
for a in "--clear" "--enable" "--merge fine"; do
    cp base.qcow2 x.qcow2
    same_out "bitmap $a, in use" bitmap $a x.qcow2 auto0
done
cp base.qcow2 x.qcow2
same_out "bitmap --merge from in use" bitmap --merge auto0 x.qcow2 fine
cp base.qcow2 got.qcow2
cp base.qcow2 want.qcow2
"$QIMG" bitmap --remove got.qcow2 auto0 || fail "remove in use: qimg"
"$QEMU_IMG" bitmap --remove want.qcow2 auto0
same_bitmaps "bitmap --remove, in use" got.qcow2 want.qcow2

# Formats without persistent bitmaps, and qcow2 v2.
"$QEMU_IMG" create -q -f raw r.raw 1M
"$QEMU_IMG" create -q -f qcow2 -o compat=0.10 v2.qcow2 1M
for img in "-f raw r.raw" "v2.qcow2"; do
    # shellcheck disable=SC2086
    "$QIMG" bitmap --add $img b >/dev/null 2>got.err
    expect_status "bitmap --add on $img" 1 false
    checks=$((checks + 1))
    grep -q "^qimg: Operation add on bitmap b failed: Can't " got.err ||
        fail "bitmap --add on $img: message" "$(cat got.err)"
done
same_out "bitmap --remove on raw" bitmap --remove -f raw r.raw b

# ---- convert --bitmaps ------------------------------------------------

base 65536 64M
"$QEMU_IO" -c 'write -q 9M 100k' -c 'write -q -z 30M 1M' base.qcow2
"$QEMU_IMG" bitmap --add -g 1M base.qcow2 coarse
"$QEMU_IO" -c 'write -q 50M 4k' base.qcow2
for opts in "" "-c" "-o cluster_size=4096" "-o cluster_size=512 -c"; do
    rm -f got.qcow2 want.qcow2
    # shellcheck disable=SC2086
    "$QIMG" convert --bitmaps -O qcow2 $opts base.qcow2 got.qcow2 ||
        fail "convert --bitmaps $opts: qimg"
    # shellcheck disable=SC2086
    "$QEMU_IMG" convert --bitmaps -O qcow2 $opts base.qcow2 want.qcow2
    same_bitmaps "convert --bitmaps $opts" got.qcow2 want.qcow2
done
cp base.qcow2 iu.qcow2
first_in_use iu.qcow2
rm -f got.qcow2 want.qcow2 x.qcow2
same_out "convert --bitmaps, one in use" convert --bitmaps -O qcow2 \
    iu.qcow2 x.qcow2
checks=$((checks + 1))
[ -e x.qcow2 ] && fail "convert --bitmaps, one in use: target left"
"$QIMG" convert --bitmaps --skip-broken-bitmaps -O qcow2 iu.qcow2 \
    got.qcow2 2>got.err || fail "convert --skip-broken-bitmaps: qimg"
"$QEMU_IMG" convert --bitmaps --skip-broken-bitmaps -O qcow2 iu.qcow2 \
    want.qcow2 2>want.err
sed -i 's/^qimg: /qemu-img: /' got.err
expect_same "convert --skip-broken-bitmaps: warning" want.err got.err
same_bitmaps "convert --skip-broken-bitmaps" got.qcow2 want.qcow2
same_out "convert --bitmaps to raw" convert --bitmaps -O raw base.qcow2 \
    x.raw
same_out "convert --bitmaps to v2" convert --bitmaps -O qcow2 \
    -o compat=0.10 base.qcow2 x2.qcow2
same_out "convert --bitmaps, two sources" convert --bitmaps -O qcow2 \
    base.qcow2 base.qcow2 x3.qcow2

echo "$checks checks"
finish
