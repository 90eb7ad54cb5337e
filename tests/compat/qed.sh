#!/bin/bash
# QED against qemu-img 7.2: images qemu-img and qemu-io write (data, zero
# clusters, a backing file, convert -O qed) are read by qimg byte for
# byte; images qimg creates, writes and converts are qemu-img's byte for
# byte and pass qemu-img check; info, map and check output (and check's
# repairs), exit codes and the messages for damaged headers are
# qemu-img's.
. "$QIMG_SRCDIR/tests/functions.sh"
cd "$T"
MiB=1048576

io() { "$QEMU_IO" "$@" >/dev/null || fail "qemu-io $*"; }

# patch FILE OFFSET WIDTH VALUE: overwrite a little-endian field of WIDTH
# bytes (4 or 8).
patch() {
    local v=$(($4)) i bytes=
    for ((i = 0; i < $3; i++)); do
        bytes+=$(printf '\\x%02x' $(((v >> (8 * i)) & 0xff)))
    done
    printf "$bytes" | dd of="$1" bs=1 seek=$(($2)) conv=notrunc status=none
}

# A raw file with patterns, zero runs and unaligned pieces.
truncate -s $((3 * MiB + 4096)) pattern.raw
io -f raw -c 'write -P 0x17 0 4k' -c 'write -P 0x93 4k 60k' \
    -c 'write -P 0xab 1052672 4k' -c 'write -P 0x5c 2097664 1k' \
    -c 'write -P 0x01 3146240 512' pattern.raw

# same_meta NAME IMAGE: info (human, json) and map (json, human) as
# qemu-img.
same_meta() {
    same_out "$1: info" info "$2"
    same_out "$1: info json" info --output=json "$2"
    same_out "$1: map json" map --output=json "$2"
    same_out "$1: map" map "$2"
}

# 1. qemu-img writes, qimg reads: data, zero writes, partial clusters,
# several L2 tables (4 KiB clusters, two-cluster tables: 4 MiB each);
# one-cluster tables never open in QEMU (nor in qimg).
"$QEMU_IMG" create -q -f qed -o cluster_size=4k,table_size=2 small.qed 5M
io -f qed -c 'write -P 0x11 0 64k' -c 'write -P 0x22 3M 4k' \
    -c 'write -z 2M 1M' -c 'write -P 0x33 4095k 2k' \
    -c 'write -z 8k 4k' small.qed
same_raw "qemu 4k" small.qed
same_meta "qemu 4k" small.qed
"$QEMU_IMG" create -q -f qed -o cluster_size=4k,table_size=1 one.qed 1M
same_out "one-cluster tables" info one.qed
"$QEMU_IMG" create -q -f qed big.qed 8M
io -f qed -c 'write -P 0x44 100k 300k' -c 'write -z 1M 2M' \
    -c 'write -P 0x55 7M 1k' big.qed
same_raw "qemu 64k" big.qed
same_meta "qemu 64k" big.qed

# 2. A backing file read through, raw (the no-probe feature) and qcow2
# (probed), with zero clusters hiding it.
"$QEMU_IMG" convert -q -f raw -O qcow2 pattern.raw base.qcow2
"$QEMU_IMG" create -q -f qed -b pattern.raw -F raw over-raw.qed
io -f qed -c 'write -P 0x66 32k 8k' -c 'write -z 1M 64k' over-raw.qed
same_raw "backing raw" over-raw.qed
same_meta "backing raw" over-raw.qed
"$QEMU_IMG" create -q -f qed -b base.qcow2 -F qcow2 over-qcow2.qed 4M
io -f qed -c 'write -P 0x77 3M 128k' over-qcow2.qed
same_raw "backing qcow2" over-qcow2.qed
same_meta "backing qcow2" over-qcow2.qed
same_out "backing chain" info --backing-chain over-qcow2.qed

# 3. convert -O qed by qemu-img, read by qimg.
"$QEMU_IMG" convert -q -f raw -O qed pattern.raw conv.qed
same_raw "qemu convert" conv.qed
same_meta "qemu convert" conv.qed

# 4. qimg create: the same line and the same bytes as qemu-img.
create_same() {
    local name=$1
    shift
    rm -f want.qed got.qed
    "$QEMU_IMG" create -f qed "$@" want.qed >want.out 2>want.err
    echo "exit $?" >>want.out
    "$QIMG" create -f qed "$@" got.qed >got.out 2>got.err
    echo "exit $?" >>got.out
    sed -i 's/got\.qed/want.qed/; s/^qimg: /qemu-img: /' got.out got.err
    expect_same "create $name: stdout" want.out got.out
    expect_same "create $name: stderr" want.err got.err
    if [ -s want.qed ]; then
        expect_same "create $name: bytes" want.qed got.qed
    fi
}
create_same "1M" -o size=1M
create_same "unaligned" -o size=1000
create_same "4k clusters" -o cluster_size=4k,table_size=16 -o size=3M
create_same "1M clusters" -o cluster_size=1M,table_size=2 -o size=5M
create_same "raw backing" -b pattern.raw -F raw
create_same "qcow2 backing" -b base.qcow2 -F qcow2 -o size=2M
create_same "empty" -o size=0
create_same "largest" -o size=64T
create_same "too large" -o size=70368744177665
create_same "bad cluster" -o cluster_size=3k -o size=1M
create_same "small cluster" -o cluster_size=2k -o size=1M
create_same "bad table" -o table_size=3 -o size=1M
create_same "large table" -o table_size=32 -o size=1M
"$QEMU_IMG" create -f qed -o help x >want.out
"$QIMG" create -f qed -o help x >got.out
expect_same "create help" want.out got.out
"$QIMG" create -q -f qed -b pattern.raw -F raw made.qed || fail "create"
out=$("$QEMU_IMG" check made.qed 2>&1) || fail "qemu-img check" "$out"
pass
same_meta "qimg created" made.qed

# 5. qimg writes, qemu-img reads: the same operations through qemu-io
# and qimg on copies (with a raw backing file, both cluster sizes) give
# the same bytes, and qemu-img check finds them clean.
W=${QIMG_WRITE_IMAGE:?}
ops=(w:0:65536:17 w:3145728:4096:34 z:2097152:1048576 w:4193280:2048:51
     w:1049088:1024:68 o w:512:512:85 z:1048576:65536 z:4096:1000
     w:5000:20000:99 f)
qops=('write -P 17 0 65536' 'write -P 34 3145728 4096'
      'write -z 2097152 1048576' 'write -P 51 4193280 2048'
      'write -P 68 1049088 1024' 'write -P 85 512 512'
      'write -z 1048576 65536' 'write -z 4096 1000' 'write -P 99 5000 20000')
args=()
for c in "${qops[@]}"; do
    args+=(-c "$c")
done
for cs in 64k 4k; do
    "$QIMG" create -q -f qed -o cluster_size=$cs -b pattern.raw -F raw \
        w-i.qed 5M || fail "create for writes"
    cp w-i.qed w-q.qed
    if ! "$W" w-i.qed qed "${ops[@]}" 2>w.err; then
        fail "write_image $cs" "$(cat w.err)"
        continue
    fi
    io -f qed "${args[@]}" w-q.qed
    "$QEMU_IMG" compare w-q.qed w-i.qed >/dev/null ||
        fail "writes $cs: compare"
    pass
    out=$("$QEMU_IMG" check w-i.qed 2>&1) || fail "writes $cs: check" "$out"
    pass
    expect_same "writes $cs: bytes" w-q.qed w-i.qed
    same_meta "writes $cs" w-i.qed
    same_raw "writes $cs" w-i.qed
done
# Long zero writes over several L2 tables, on data and unallocated space.
"$QEMU_IMG" create -q -f qed -o cluster_size=4k z-q.qed 64M
io -f qed -c 'write -P 1 1M 3M' z-q.qed
cp z-q.qed z-i.qed
io -f qed -c 'write -z 512 40M' -c 'write -z 50M 14M' z-q.qed
"$W" z-i.qed qed z:512:41943040 z:52428800:14680064 f ||
    fail "long zero writes"
expect_same "long zero writes: bytes" z-q.qed z-i.qed
# A write leaves need-check set until the flush clears it.
"$QIMG" create -q -f qed nc.qed 1M || fail "create nc"
"$W" nc.qed qed w:0:512:1 || fail "write nc"
[ "$(od -An -tx1 -j16 -N1 nc.qed)" = " 00" ] || fail "need-check left set"
pass

# 6. convert -O qed: qemu-img's bytes, clean, the same contents.
for o in "" "-o cluster_size=4k,table_size=2"; do
    rm -f want.qed got.qed
    # shellcheck disable=SC2086
    "$QEMU_IMG" convert -f raw -O qed $o pattern.raw want.qed
    # shellcheck disable=SC2086
    "$QIMG" convert -f raw -O qed $o pattern.raw got.qed ||
        fail "convert -O qed $o"
    expect_same "convert $o: bytes" want.qed got.qed
    out=$("$QEMU_IMG" check got.qed 2>&1) || fail "convert $o: check" "$out"
    pass
    "$QEMU_IMG" compare pattern.raw got.qed >/dev/null ||
        fail "convert $o: compare"
    pass
done
"$QEMU_IMG" convert -O qed over-raw.qed want.qed
"$QIMG" convert -O qed over-raw.qed got.qed || fail "convert qed to qed"
"$QEMU_IMG" compare over-raw.qed got.qed >/dev/null ||
    fail "convert qed to qed: compare"
pass
expect_same "convert qed to qed: bytes" want.qed got.qed

# 7. check: counts, statistics, exit codes and repairs as qemu-img's, on
# copies (the repaired files compared byte for byte).  m.qed: 4 KiB
# clusters, two-cluster tables; its first L2 table at 0x13000 maps data
# clusters from 0x3000 on.
"$QEMU_IMG" create -q -f qed -o cluster_size=4k,table_size=2 m.qed 9M
io -f qed -c 'write -P 1 0 64k' -c 'write -P 2 5M 12k' -c 'write -z 1M 8k' \
    -c 'write -P 3 4M 4k' -c 'write -P 4 8k 4k' m.qed
l1=$(od -An -tu8 -j4096 -N8 m.qed | tr -d ' ')
[ "$l1" = $((0x13000)) ] || fail "m.qed layout: L1[0] is $l1"
check_same() {
    local name=$1 a
    for a in "check" "check --output=json" "check -r leaks" "check -r all" \
        "check -r all --output=json"; do
        cp x.qed want-x.qed
        cp x.qed got-x.qed
        # shellcheck disable=SC2086
        "$QEMU_IMG" $a want-x.qed >want.out 2>&1
        echo "exit $?" >>want.out
        # shellcheck disable=SC2086
        "$QIMG" $a got-x.qed >got.out 2>&1
        echo "exit $?" >>got.out
        sed -i 's/got-x\.qed/want-x.qed/g; s/^qimg: /qemu-img: /' got.out
        expect_same "$name: $a" want.out got.out
        expect_same "$name: $a: file" want-x.qed got-x.qed
    done
}
cp m.qed x.qed
check_same "clean"
truncate -s +12288 x.qed
check_same "leaks"
cp m.qed x.qed
patch x.qed 16 8 2
check_same "need-check"
cp m.qed x.qed
patch x.qed $((0x13000 + 8)) 8 0x900000
patch x.qed $((0x13000 + 16)) 8 0x3001
check_same "bad clusters"
cp m.qed x.qed
patch x.qed $((0x13000 + 8)) 8 0x3000
check_same "cluster used twice"
cp m.qed x.qed
patch x.qed $((0x1000 + 8)) 8 0x13000
check_same "L2 table used twice"
cp m.qed x.qed
patch x.qed $((0x1000 + 8)) 8 0x990000
patch x.qed 16 8 2
truncate -s +8192 x.qed
check_same "bad L2 table, leaks, need-check"
cp w-i.qed x.qed
check_same "qimg writes"

# A writable open repairs an image left with need-check set (and clears
# unknown autoclear features) before writing, as QEMU's.
cp m.qed nc-q.qed
patch nc-q.qed $((0x13000 + 8)) 8 0x900000
patch nc-q.qed $((0x1000 + 8)) 8 0x990000
patch nc-q.qed 16 8 2
patch nc-q.qed 32 8 0x10
truncate -s +8192 nc-q.qed
cp nc-q.qed nc-i.qed
io -f qed -c 'write -P 9 7M 4k' nc-q.qed
"$W" nc-i.qed qed w:7340032:4096:9 f || fail "write needing a check"
expect_same "repair at open: bytes" nc-q.qed nc-i.qed

# 8. resize: growing only, without preallocation, within the tables'
# reach, refused when a longer backing file would show through; the
# same output, exit status and bytes as qemu-img's.
truncate -s 512k half.raw
for b in "" "-b pattern.raw -F raw" "-b half.raw -F raw"; do
    # shellcheck disable=SC2086
    "$QEMU_IMG" create -q -f qed r.qed 1M $b
    for a in "2M" "--shrink 512k" "1M" "2000001" "100T" "64T" "+1000" \
        "--preallocation=full 3M" "--preallocation=off 3M"; do
        cp r.qed want-r.qed
        cp r.qed got-r.qed
        # shellcheck disable=SC2086
        "$QEMU_IMG" resize want-r.qed $a >want.out 2>&1
        echo "exit $?" >>want.out
        # shellcheck disable=SC2086
        "$QIMG" resize got-r.qed $a >got.out 2>&1
        echo "exit $?" >>got.out
        sed -i 's/got-r\.qed/want-r.qed/g; s/^qimg: /qemu-img: /' got.out
        expect_same "resize [$b] $a" want.out got.out
        expect_same "resize [$b] $a: bytes" want-r.qed got-r.qed
    done
done

# 9. rebase: the header rewritten as QEMU's (safe and unsafe, new raw
# and probed backing files, none); a name too long for the header area
# is refused with the file unchanged.
"$QEMU_IMG" convert -q -f raw -O qcow2 half.raw half.qcow2
long=$(printf 'z%.0s' {1..65500})
for a in "-u -b half.qcow2 -F qcow2" "-u -b half.raw -F raw" "-u -b ''" \
    "-b half.qcow2 -F qcow2" "-b ''" "-u -b $long -F raw"; do
    "$QEMU_IMG" create -q -f qed rb.qed 3M -b pattern.raw -F raw
    io -f qed -c 'write -P 3 0 64k' rb.qed
    cp rb.qed want-rb.qed
    cp rb.qed got-rb.qed
    eval "\"\$QEMU_IMG\" rebase $a want-rb.qed" >want.out 2>&1
    echo "exit $?" >>want.out
    eval "\"\$QIMG\" rebase $a got-rb.qed" >got.out 2>&1
    echo "exit $?" >>got.out
    sed -i 's/got-rb\.qed/want-rb.qed/g; s/^qimg: /qemu-img: /' got.out
    if [ "${#a}" -lt 100 ]; then
        expect_same "rebase $a" want.out got.out
    else
        # qimg cuts a message this long short: the status only.
        expect_same "rebase long name: status" <(tail -1 want.out) \
            <(tail -1 got.out)
    fi
    expect_same "rebase ${a:0:40}: bytes" want-rb.qed got-rb.qed
done

# commit into a raw backing file: the same output and files (QEMU's qed
# cannot empty the top image, so it stays as it was).
for d in want got; do
    mkdir -p "cm-$d"
    cp pattern.raw "cm-$d/base.raw"
    "$QEMU_IMG" create -q -f qed -b base.raw -F raw "cm-$d/top.qed"
    io -f qed -c 'write -P 7 4k 64k' -c 'write -z 1M 64k' "cm-$d/top.qed"
done
"$QEMU_IMG" commit cm-want/top.qed >want.out 2>&1
echo "exit $?" >>want.out
"$QIMG" commit cm-got/top.qed >got.out 2>&1
echo "exit $?" >>got.out
expect_same "commit: output" want.out got.out
expect_same "commit: base" cm-want/base.raw cm-got/base.raw
expect_same "commit: top" cm-want/top.qed cm-got/top.qed

# 10. Damaged headers: qemu-img's messages (probed and with -f qed).
"$QEMU_IMG" create -q -f qed -b pattern.raw -F raw ok.qed
for damage in "0 4 0x12345678" "4 4 0x800" "4 4 0x30000" "8 4 0" \
    "8 4 17" "8 4 3" "12 4 0x10000000" "16 8 8" "16 8 0x100" \
    "40 8 0x1000" "40 8 0x50000" "40 8 0" "48 8 1000" \
    "48 8 0x800000000000" "56 4 0xfffe" "56 4 0x10000" "60 4 0x10000" \
    "16 8 3" "24 8 1" "32 8 1"; do
    cp ok.qed bad.qed
    # shellcheck disable=SC2086
    patch bad.qed $damage
    same_out "header $damage" info -f qed bad.qed
done
same_out "header probed" info bad.qed
# Tables outside the file: an error, no crash.
cp big.qed bad.qed
patch bad.qed 0x10000 8 0x9000000
expect_status "L2 past the end" 1 "$QIMG" convert -O raw bad.qed bad.raw
grep -q 'QED L2 table offset 0x9000000 is invalid' "$T/.err" ||
    fail "L2 past the end: message" "$(cat "$T/.err")"
# Tables that put guest data or an L2 table on another table: the write
# (and a zero write in place) is refused with a message naming the table
# it would overwrite, and the file is left as it was (qemu-io writes
# there and breaks the image).
"$QEMU_IMG" create -q -f qed meta.qed 16M
io -f qed -c 'write -P 0x11 0 64k' meta.qed
l1=$(python3 -c "import struct,sys; print(struct.unpack_from('<Q', open(sys.argv[1], 'rb').read(48), 40)[0])" meta.qed)
l2=$(python3 -c "import struct,sys; f=open(sys.argv[1], 'rb'); f.seek($l1); print(struct.unpack('<Q', f.read(8))[0])" meta.qed)
for c in "data on the L1:$l2:$l1:the L1 table:w:0:512:90" \
    "zeroed data on the L1:$l2:$l1:the L1 table:z:0:65536" \
    "data on its L2 table:$l2:$l2:an L2 table:w:512:512:91" \
    "L2 table on the L1:$l1:$l1:the L1 table:w:0:512:92"; do
    IFS=: read -r name at value what op <<<"$c"
    cp meta.qed bad.qed
    patch bad.qed "$at" 8 "$value"
    cp bad.qed before.qed
    expect_status "$name: write" 1 "$W" bad.qed qed "$op"
    checks=$((checks + 1))
    grep -q "QED image is corrupt: a write at offset [0-9]* would overwrite $what\$" \
        "$T/.err" || fail "$name: message" "$(cat "$T/.err")"
    checks=$((checks + 1))
    cmp -s before.qed bad.qed || fail "$name: the file changed"
done
head -c 100 ok.qed >short.qed
same_out "short" info short.qed

echo "$checks checks"
finish
