#!/bin/bash
# Read-only formats against qemu-img 7.2: bochs, cloop and dmg images (built
# by roformats_tool.py here, as qemu-img cannot create them) and parallels
# images (qemu-img create + qemu-io, and rewritten to the old magic) read
# by qimg as qemu-img reads them (convert -O raw, info human and json, map),
# damaged headers give qemu-img's messages and exit codes, and writes are
# refused as qemu-img refuses them.  (Parallels writes, create and check:
# parallels.sh.)
. "$QIMG_SRCDIR/tests/functions.sh"
cd "$T"
TOOL="python3 $QIMG_SRCDIR/tests/compat/roformats_tool.py"
MiB=1048576

io() { "$QEMU_IO" "$@" >/dev/null || fail "qemu-io $*"; }

# patch FILE OFFSET WIDTH VALUE: overwrite a little-endian field of WIDTH
# bytes (1, 4 or 8).
patch() {
    local v=$(($4)) i bytes=
    for ((i = 0; i < $3; i++)); do
        bytes+=$(printf '\\x%02x' $(((v >> (8 * i)) & 0xff)))
    done
    printf "$bytes" | dd of="$1" bs=1 seek=$(($2)) conv=notrunc status=none
}

# patch_be FILE OFFSET WIDTH VALUE: the same, big-endian.
patch_be() {
    local v=$(($4)) i bytes=
    for ((i = $3 - 1; i >= 0; i--)); do
        bytes+=$(printf '\\x%02x' $(((v >> (8 * i)) & 0xff)))
    done
    printf "$bytes" | dd of="$1" bs=1 seek=$(($2)) conv=notrunc status=none
}

# A raw file with patterns, zero runs and unaligned pieces.
truncate -s $((3 * MiB + 512)) pattern.raw
io -f raw -c 'write -P 0x17 0 4k' -c 'write -P 0x93 8k 60k' \
    -c 'write -P 0xab 1052672 1k' -c 'write -P 0x5c 3145216 1k' \
    -c 'write -P 0x01 3145728 512' pattern.raw

# ---- bochs ----------------------------------------------------------------

$TOOL bochs b2.bochs pattern.raw || fail "make b2.bochs"
$TOOL bochs b1.bochs pattern.raw --version 1 --extent 65536 ||
    fail "make b1.bochs"
# A larger bitmap than the extent needs, and spare catalog entries.
$TOOL bochs bbig.bochs pattern.raw --extent 8192 --bitmap 1000 \
    --catalog 1000 || fail "make bbig.bochs"
for img in b2 b1 bbig; do
    same_read "bochs $img" $img.bochs
    files_equal want.raw pattern.raw || fail "bochs $img: not the pattern"
done
same_out "bochs as bochs" info -f bochs b2.bochs
same_out "bochs human map" map b2.bochs
same_out "bochs check" check b2.bochs
same_out "bochs resize" resize b2.bochs 4M
same_out "bochs create" create -f bochs x.bochs 1M
same_out "bochs convert to" convert -O bochs pattern.raw x.bochs
same_out "bochs amend" amend -o size=1M b2.bochs
same_out "bochs snapshot -c" snapshot -c s b2.bochs
same_out "bochs commit" commit b2.bochs

# Damaged headers: qemu-img's messages.  (Offsets: magic 0, type 32,
# subtype 48, version 64, header size 68, catalog 72, bitmap 76, extent
# 80, disk size 88.)
for damage in "0 1 0x62" "21 1 0x41" "32 1 0x72" "55 1 0x21" \
    "64 4 0x30000" "72 4 0x20000000" "72 4 0x1fffffff" "72 4 1" \
    "80 4 256" "80 4 0" "80 4 6144" "80 4 0x1000000" "80 4 0x80000000" \
    "76 4 0" "76 4 0xffffffff" "88 8 0xffffffffffffffff" "88 8 0" \
    "68 4 0xfffffe00" "512 4 0xfffffffe" "512 4 0x7fffffff"; do
    cp b2.bochs bad.bochs
    # shellcheck disable=SC2086
    patch bad.bochs $damage
    same_out "bochs header $damage" info -f bochs bad.bochs
    same_out "bochs header $damage: probed" info bad.bochs
    # Reads: the same bytes, or both fail.
    rm -f want.raw got.raw
    if "$QEMU_IMG" convert -f bochs -O raw bad.bochs want.raw 2>/dev/null
    then
        "$QIMG" convert -f bochs -O raw bad.bochs got.raw ||
            fail "bochs header $damage: qimg convert"
        expect_same "bochs header $damage: bytes" want.raw got.raw
    else
        expect_status "bochs header $damage: convert" 1 "$QIMG" convert \
            -f bochs -O raw bad.bochs got.raw
    fi
done
# The largest catalog (4 MiB) described by a tiny file: read as zeros
# past the end of the file, as QEMU does.
head -c 512 b2.bochs >huge.bochs
patch huge.bochs 72 4 0x100000
same_read "bochs huge catalog" huge.bochs
# A header cut short reads as zeros past the end of the file.
head -c 100 b2.bochs >short.bochs
same_out "bochs short" info short.bochs
same_out "bochs short as bochs" info -f bochs short.bochs

# ---- cloop ----------------------------------------------------------------

$TOOL cloop c1.cloop pattern.raw || fail "make c1.cloop"
# Stored (level 0) blocks of 64 KiB, the last one padded.
$TOOL cloop c2.cloop pattern.raw --block 65536 --level 0 ||
    fail "make c2.cloop"
for img in c1 c2; do
    same_read "cloop $img" $img.cloop
    cmp -s -n $((3 * MiB + 512)) want.raw pattern.raw ||
        fail "cloop $img: not the pattern"
done
same_out "cloop as cloop" info -f cloop c1.cloop
same_out "cloop human map" map c1.cloop
same_out "cloop check" check c1.cloop
same_out "cloop resize" resize c1.cloop 4M
same_out "cloop create" create -f cloop x.cloop 1M
same_out "cloop convert to" convert -O cloop pattern.raw x.cloop

# Damaged headers and tables: qemu-img's messages.  (Offsets: block size
# 128, block count 132, offsets from 136; c1 has 769 blocks.)
last=$((136 + 8 * 769))
for damage in "0 1 0x23" "128 4 0" "128 4 1000" "128 4 0x4000200" \
    "128 4 0x80000000" "132 4 0x20000000" "132 4 0x1fffffff" \
    "132 4 0x4000000" "132 4 1000" "132 4 0" "132 4 32768" \
    "144 8 0" "$last 8 0x8000000" "$last 8 0xffffffffffff" \
    "$((last - 8)) 8 0x10" "6200 1 0x55"; do
    cp c1.cloop bad.cloop
    # shellcheck disable=SC2086
    patch_be bad.cloop $damage
    same_out "cloop header $damage" info -f cloop bad.cloop
    same_out "cloop header $damage: probed" info bad.cloop
    rm -f want.raw got.raw
    if "$QEMU_IMG" convert -f cloop -O raw bad.cloop want.raw 2>/dev/null
    then
        "$QIMG" convert -f cloop -O raw bad.cloop got.raw ||
            fail "cloop header $damage: qimg convert"
        expect_same "cloop header $damage: bytes" want.raw got.raw
    else
        expect_status "cloop header $damage: convert" 1 "$QIMG" convert \
            -f cloop -O raw bad.cloop got.raw
    fi
done
# 64 MiB blocks, 32768 of them: QEMU's 32-bit sector count wraps to 0.
cp c1.cloop wrap.cloop
patch_be wrap.cloop 128 4 0x4000000
patch_be wrap.cloop 132 4 32768
same_out "cloop wrapped size" info wrap.cloop
# The largest offset table (512 MiB) in a tiny file: qimg refuses (no
# 512 MiB allocation; QEMU reads zeros past the end of the file).
head -c 136 c1.cloop >huge.cloop
patch_be huge.cloop 132 4 0x3ffffff
expect_status "cloop huge table refused" 1 "$QIMG" info huge.cloop
# Cut short: the blocks past the end do not inflate.
head -c 8000 c1.cloop >cut.cloop
same_out "cloop cut: info" info cut.cloop
expect_status "cloop cut: qemu-img convert" 1 "$QEMU_IMG" convert \
    -O raw cut.cloop want.raw
expect_status "cloop cut: convert" 1 "$QIMG" convert -O raw cut.cloop \
    got.raw
head -c 130 c1.cloop >short.cloop
same_out "cloop short" info short.cloop
same_out "cloop short as cloop" info -f cloop short.cloop

# ---- parallels ------------------------------------------------------------

"$QEMU_IMG" create -q -f parallels pa.prl 3M || fail "create pa.prl"
io -f parallels -c 'write -P 0x17 0 4k' -c 'write -P 0x93 1052672 60k' \
    -c 'write -P 0x5c 3145216 512' pa.prl
# Small clusters, written out of guest order; a short tail.
"$QEMU_IMG" create -q -f parallels -o cluster_size=64k pb.prl 3000k ||
    fail "create pb.prl"
io -f parallels -c 'write -P 0x93 1052672 60k' -c 'write -P 0x17 0 4k' \
    -c 'write -P 0x5c 3071488 512' -c 'write -P 0x22 70000 100000' pb.prl
"$QEMU_IMG" create -q -f parallels pe.prl 5M || fail "create pe.prl"
$TOOL parallels-old po.prl pb.prl || fail "make po.prl"
for img in pa pb pe po; do
    same_read "parallels $img" $img.prl
    same_out "parallels $img: human map" map $img.prl
done
same_out "parallels as parallels" info -f parallels pa.prl

# Damaged headers: qemu-img's messages.  (Offsets: magic 0, version 16,
# tracks 28, BAT entries 32, sectors 36, BAT from 64.)
for damage in "0 1 0x77" "15 1 0x71" "16 4 3" "28 4 0" "28 4 0x3fe000" \
    "28 4 0x3fd000" "28 4 1" "32 4 0x20000000" "32 4 0x1fffffff" \
    "32 4 0" "32 4 1" "36 8 0x1001" \
    "64 4 0xffffffff" "68 4 0x7fffffff" "72 4 1"; do
    cp pb.prl bad.prl
    # shellcheck disable=SC2086
    patch bad.prl $damage
    same_out "parallels header $damage" info -f parallels bad.prl
    same_out "parallels header $damage: probed" info bad.prl
    rm -f want.raw got.raw
    if "$QEMU_IMG" convert -f parallels -O raw bad.prl want.raw 2>/dev/null
    then
        "$QIMG" convert -f parallels -O raw bad.prl got.raw ||
            fail "parallels header $damage: qimg convert"
        expect_same "parallels header $damage: bytes" want.raw got.raw
    else
        expect_status "parallels header $damage: convert" 1 "$QIMG" \
            convert -f parallels -O raw bad.prl got.raw
    fi
done
# Huge sizes: info only (a raw copy would be terabytes).
for damage in "36 8 0x100000000" "36 8 0x80000000000"; do
    cp pb.prl bad.prl
    # shellcheck disable=SC2086
    patch bad.prl $damage
    same_out "parallels size $damage" info --output=json bad.prl
done
head -c 40 pa.prl >short.prl
same_out "parallels short" info short.prl
# Resize is refused as qemu-img 7.2 refuses it, the image unchanged.
cp pa.prl w.prl
expect_status "parallels resize refused" 1 "$QIMG" resize w.prl 4M
files_equal pa.prl w.prl || fail "parallels refused resize changed the image"

# ---- dmg ------------------------------------------------------------------

# Chunks of 256 sectors: zlib, raw, a data fork after junk, a resource fork
# with two tables, bytes after the trailer.
$TOOL dmg dz.dmg pattern.raw --chunk 256 || fail "make dz.dmg"
$TOOL dmg dr.dmg pattern.raw --chunk 256 --codec 1 || fail "make dr.dmg"
$TOOL dmg df.dmg pattern.raw --fork 1000 --split 1 || fail "make df.dmg"
$TOOL dmg ds.dmg pattern.raw --chunk 128 --rsrc 1 --fork 512 --split 1 ||
    fail "make ds.dmg"
$TOOL dmg dt.dmg pattern.raw --tail 100 || fail "make dt.dmg"
for img in dz dr df ds dt; do
    same_read "dmg $img" $img.dmg
    files_equal want.raw pattern.raw || fail "dmg $img: not the pattern"
done
same_out "dmg as dmg" info -f dmg dz.dmg
same_out "dmg human map" map dz.dmg
same_out "dmg check" check dz.dmg
same_out "dmg resize" resize dz.dmg 4M
same_out "dmg create" create -f dmg x.dmg 1M
same_out "dmg convert to" convert -O dmg pattern.raw x.dmg
# Probing looks at the name only, as QEMU's does.
cp dz.dmg dz.img
same_out "dmg not named .dmg" info dz.img
# bzip2 chunks (Debian's qemu-img has no module for them; qimg reads them
# with libbz2), and a mix of every kind with zero and comment entries.
$TOOL dmg db.dmg pattern.raw --chunk 256 --codec 6 || fail "make db.dmg"
$TOOL dmg dm.dmg pattern.raw --chunk 64 --codec 0 --split 1 ||
    fail "make dm.dmg"
for img in db dm; do
    rm -f got.raw
    "$QIMG" convert -O raw $img.dmg got.raw || fail "dmg $img: convert"
    expect_same "dmg $img: contents" pattern.raw got.raw
done
# Unknown chunk types: qemu-img's warning, reads of them fail.
$TOOL dmg du.dmg pattern.raw --codec 0x80000004 || fail "make du.dmg"
same_out "dmg unknown type: info" info du.dmg
expect_status "dmg unknown type: convert" 1 "$QIMG" convert -O raw du.dmg \
    got.raw
# Damaged trailers: qemu-img's messages.  (koly offsets: data fork 24,
# resource fork 40/48, plist 216/224, sector count 492.)
size=$(stat -c %s dz.dmg)
koly=$((size - 512))
for damage in "0 1 0x6a" "24 8 $((koly + 1))" "24 8 $koly" "40 8 $koly" \
    "48 8 1" "216 8 $koly" "224 8 0" "224 8 $((koly + 1))" "216 8 0" \
    "492 8 0" "492 8 6000" "492 8 7000" "492 8 0x8000000000000000" \
    "492 8 0x40000000000000" "492 8 0x3fffffffe00000" \
    "492 8 0x3fffffffe00001"; do
    cp dz.dmg bad.dmg
    # shellcheck disable=SC2086
    set -- $damage
    patch_be bad.dmg $((koly + $1)) $2 $3
    same_out "dmg trailer $damage" info bad.dmg
    rm -f want.raw got.raw
    if [ "$1" = 492 ] && [ $(($3)) -gt 100000 ]; then
        continue
    fi
    if "$QEMU_IMG" convert -O raw bad.dmg want.raw 2>/dev/null; then
        "$QIMG" convert -O raw bad.dmg got.raw ||
            fail "dmg trailer $damage: qimg convert"
        expect_same "dmg trailer $damage: bytes" want.raw got.raw
    else
        expect_status "dmg trailer $damage: convert" 1 "$QIMG" convert \
            -O raw bad.dmg got.raw
    fi
done
# Chunk entries past QEMU's limits (qemu-img prints the reason on a line
# of its own, qimg in its one error line), or stored past the end of the
# file (read as zeros there: a whole stream still inflates).
for bad in "count 131073" "length 67108865"; do
    set -- $bad
    $TOOL dmg bad.dmg pattern.raw --chunk 256 --bad-$1 $2 || fail "make $bad"
    expect_status "dmg chunk $bad: qemu-img info" 1 "$QEMU_IMG" info bad.dmg
    expect_status "dmg chunk $bad: info" 1 "$QIMG" info bad.dmg
    what="sector count $2" max=131072
    if [ "$1" = length ]; then
        what="length $2" max=67108864
    fi
    printf "qimg: Could not open 'bad.dmg': %s for chunk 0 is larger than %s\n" \
        "$what" "max ($max)" >want.err
    expect_same "dmg chunk $bad: message" want.err .err
done
for bad in "--bad-count 131072" "--bad-count 300" "--bad-count 200" \
    "--bad-length 67108864" "--bad-length 100"; do
    # shellcheck disable=SC2086
    $TOOL dmg bad.dmg pattern.raw --chunk 256 $bad || fail "make $bad"
    same_out "dmg chunk $bad: info" info bad.dmg
    rm -f want.raw got.raw
    if "$QEMU_IMG" convert -O raw bad.dmg want.raw 2>/dev/null; then
        "$QIMG" convert -O raw bad.dmg got.raw ||
            fail "dmg chunk $bad: qimg convert"
        expect_same "dmg chunk $bad: bytes" want.raw got.raw
    else
        expect_status "dmg chunk $bad: convert" 1 "$QIMG" convert \
            -O raw bad.dmg got.raw
    fi
done
head -c 511 dz.dmg >short.dmg
same_out "dmg short" info short.dmg
# Resource forks: bad header fields.
cp ds.dmg bad.dmg
rsrc=$(od -An -tu8 --endian=big -j $(($(stat -c %s ds.dmg) - 512 + 40)) -N 8 ds.dmg)
for damage in "8 4 0" "8 4 0x7fffffff" "0 4 0x7fffffff" "256 4 0" \
    "256 4 0x7fffffff"; do
    cp ds.dmg bad.dmg
    # shellcheck disable=SC2086
    set -- $damage
    patch_be bad.dmg $((rsrc + $1)) $2 $3
    same_out "dmg resource fork $damage" info bad.dmg
done

echo "$checks checks"
finish
