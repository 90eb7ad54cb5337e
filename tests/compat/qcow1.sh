#!/bin/bash
# qcow (version 1) against qemu-img 7.2: images qemu-img and qemu-io
# write (plain, compressed, over a backing file) are read by qimg byte for
# byte; images qimg creates, converts (also compressed) and writes are
# the same bytes as qemu-img's and read back identically; info and map
# output and the messages for damaged headers are qemu-img's.
. "$QIMG_SRCDIR/tests/functions.sh"
cd "$T"
W=${QIMG_WRITE_IMAGE:?}

io() { "$QEMU_IO" "$@" >/dev/null || fail "qemu-io $*"; }

# patch FILE OFFSET WIDTH VALUE: overwrite a big-endian field of WIDTH
# bytes (1, 4 or 8).
patch() {
    local v=$(($4)) i bytes=
    for ((i = $3 - 1; i >= 0; i--)); do
        bytes+=$(printf '\\x%02x' $(((v >> (8 * i)) & 0xff)))
    done
    printf "$bytes" | dd of="$1" bs=1 seek=$(($2)) conv=notrunc status=none
}

# A raw file: compressible patterns, random bytes (stored plain by a
# compressed convert), zero runs and an unaligned tail.
truncate -s 3M pattern.raw
io -f raw -c 'write -P 0x17 0 4k' -c 'write -P 0x93 4k 60k' \
    -c 'write -P 0xab 1M 8k' -c 'write -P 0x01 3145028 700' pattern.raw
head -c 8192 /dev/urandom | dd of=pattern.raw bs=8192 seek=256 \
    conv=notrunc status=none

same_meta() {
    same_out "$1: info" info "$2"
    same_out "$1: info json" info --output=json "$2"
    same_out "$1: map json" map --output=json "$2"
}

# 1. qemu-img and qemu-io write, qimg reads.
"$QEMU_IMG" create -q -f qcow plain.qcow 3M
io -f qcow -c 'write -P 0x11 0 64k' -c 'write -P 0x22 1M 512' \
    -c 'write -z 2M 8k' -c 'write -P 0x33 3144704 1024' plain.qcow
same_raw "qemu plain" plain.qcow
same_meta "qemu plain" plain.qcow
same_out "qemu plain: map" map plain.qcow
same_out "qemu plain: check" check plain.qcow
"$QEMU_IMG" convert -c -O qcow pattern.raw qc.qcow
same_raw "qemu compressed" qc.qcow
same_meta "qemu compressed" qc.qcow
# Partial writes into compressed clusters.
cp qc.qcow qcw.qcow
io -f qcow -c 'write -P 0x44 1050000 100' -c 'write -P 0x45 4096 512' \
    qcw.qcow
same_raw "qemu compressed rewritten" qcw.qcow
"$QEMU_IMG" create -q -f raw base.raw 3M
io -f raw -c 'write -P 0x77 0 3M' base.raw
"$QEMU_IMG" create -q -f qcow -b base.raw -F raw over.qcow
io -f qcow -c 'write -P 0x12 4096 1024' -c 'write -z 1M 4k' over.qcow
same_raw "qemu over backing" over.qcow
same_meta "qemu over backing" over.qcow
same_out "qemu over backing: chain" info --backing-chain over.qcow

# 2. qimg creates and converts: qemu-img's bytes.
for args in "3M" "1000001" "-b base.raw -F raw" "-b base.raw -F raw 5M" \
    "1T" "0" "-o encryption=on 1M" "-o encrypt.format=xts 1M"; do
    rm -f c-q.qcow c-i.qcow
    # shellcheck disable=SC2086
    "$QEMU_IMG" create -f qcow c-q.qcow $args >want.out 2>&1
    # shellcheck disable=SC2086
    "$QIMG" create -f qcow c-i.qcow $args >got.out 2>&1
    sed -i 's/c-q.qcow/c-i.qcow/; s/^qimg: /qemu-img: /' want.out got.out
    expect_same "create $args: output" want.out got.out
    if [ -s c-q.qcow ]; then
        expect_same "create $args: bytes" c-q.qcow c-i.qcow
    fi
done
same_out "create help" create -f qcow -o help x.qcow
same_out "resize" resize plain.qcow 4M
for c in "" "-c"; do
    rm -f k-q.qcow k-i.qcow
    "$QEMU_IMG" convert $c -O qcow pattern.raw k-q.qcow
    "$QIMG" convert $c -O qcow pattern.raw k-i.qcow ||
        fail "qimg convert $c"
    expect_same "convert $c: bytes" k-q.qcow k-i.qcow
    "$QEMU_IMG" compare -f raw -F qcow pattern.raw k-i.qcow >/dev/null ||
        fail "convert $c: compare"
    pass
done
# qcow2 from qcow (a common upgrade) keeps the holes.
"$QIMG" convert -f qcow -O qcow2 qc.qcow up.qcow2 || fail "to qcow2"
"$QEMU_IMG" compare qc.qcow up.qcow2 >/dev/null || fail "to qcow2: compare"
pass
"$QEMU_IMG" map --output=json up.qcow2 >got.map
"$QEMU_IMG" convert -f qcow -O qcow2 qc.qcow upq.qcow2
"$QEMU_IMG" map --output=json upq.qcow2 >want.map
expect_same "to qcow2: map" want.map got.map

# 3. qimg writes: the same bytes as qemu-io's writes.
ops=(w:0:65536:17 w:1048576:512:34 z:2097152:8192 w:3144704:1024:51 o
     w:700:100:68 f)
qops=('write -P 17 0 65536' 'write -P 34 1048576 512'
      'write -z 2097152 8192' 'write -P 51 3144704 1024'
      'write -P 68 700 100')
args=()
for c in "${qops[@]}"; do
    args+=(-c "$c")
done
write_case() {
    local name=$1 img=$2
    cp "$img" w-i.qcow
    cp "$img" w-q.qcow
    if ! "$W" w-i.qcow qcow "${ops[@]}" 2>w.err; then
        fail "$name: write_image" "$(cat w.err)"
        return
    fi
    io -f qcow "${args[@]}" w-q.qcow
    expect_same "$name: bytes" w-q.qcow w-i.qcow
    same_raw "$name" w-i.qcow
}
"$QEMU_IMG" create -q -f qcow empty.qcow 3M
write_case "writes" empty.qcow
write_case "writes over compressed" qc.qcow
"$QEMU_IMG" create -q -f qcow -b base.raw -F raw ob.qcow
write_case "writes over backing" ob.qcow
# Compressed writes of qimg's own, read back by qemu-img.
cp empty.qcow cw.qcow
"$W" cw.qcow qcow c:0:8192:85 c:1048576:4096:86 2>w.err ||
    fail "compressed write" "$(cat w.err)"
io -f qcow -c 'read -P 85 0 8192' -c 'read -P 86 1048576 4096' \
    -c 'read -P 0 8192 1040384' cw.qcow
pass

# 4. damaged headers: qemu-img's messages.
for damage in "0 4 0x12345678" "4 4 2" "4 4 3" "4 4 0" "24 8 1" "24 8 0" \
    "32 1 8" "32 1 17" "32 1 16" "33 1 5" "33 1 14" "33 1 13" "36 4 2" \
    "36 4 1" "24 8 0xffffffffffffff00" "24 8 0x100000000000000" \
    "16 4 1024" "40 8 0x10000000"; do
    cp plain.qcow bad.qcow
    # shellcheck disable=SC2086
    patch bad.qcow $damage
    same_out "header $damage" info -f qcow bad.qcow
done
cp plain.qcow bad.qcow
patch bad.qcow 8 8 48
patch bad.qcow 16 4 1024
same_out "backing name too long" info bad.qcow
cp plain.qcow bad.qcow
patch bad.qcow 36 4 1
same_out "encrypted: info" info bad.qcow
same_out "encrypted: read" convert -O raw bad.qcow x.raw
# L1 table of 1 GiB described by a tiny file: refused.
cp plain.qcow huge.qcow
patch huge.qcow 24 8 0x1000000000000
expect_status "huge L1 refused" 1 "$QIMG" info huge.qcow
grep -q 'lies beyond the end of the file' "$T/.err" ||
    fail "huge L1: message" "$(cat "$T/.err")"
# An L2 table named past the end of the file, just where the end of the
# file puts the next cluster: the written data must not land on the
# table (whose update would overwrite it), and qemu-io reads it back.
"$QEMU_IMG" create -q -f qcow past.qcow 3M
size=$(stat -c %s past.qcow)
l1=$(($(od -An -tx1 -j 40 -N 8 past.qcow | tr -d ' \n' | sed 's/^/0x/')))
patch past.qcow $l1 8 $(((size + 4095) / 4096 * 4096))
"$W" past.qcow qcow w:0:512:90 w:4096:512:91 2>w.err ||
    fail "L2 past EOF: write_image" "$(cat w.err)"
io -f qcow -c 'read -P 90 0 512' -c 'read -P 91 4096 512' \
    -c 'read -P 0 512 3584' past.qcow
# Tables that put guest data or an L2 table on other metadata: the
# write is refused with a message naming what it would overwrite, and
# the file is left as it was (qemu-io writes there and breaks the image).
"$QEMU_IMG" create -q -f qcow meta.qcow 3M
io -f qcow -c 'write -P 0x11 0 64k' meta.qcow
l1=$(($(od -An -tx1 -j 40 -N 8 meta.qcow | tr -d ' \n' | sed 's/^/0x/')))
l2=$(($(od -An -tx1 -j $l1 -N 8 meta.qcow | tr -d ' \n' | sed 's/^/0x/')))
for c in "data on the L1:$l2:$l1:the L1 table" \
    "data on the header:$l2:16:the header" \
    "data on its L2 table:$l2:$l2:an L2 table" \
    "L2 table on the header:$l1:8:the header" \
    "L2 table on the L1:$l1:$((l1 + 8)):the L1 table"; do
    IFS=: read -r name at value what <<<"$c"
    cp meta.qcow bad.qcow
    patch bad.qcow "$at" 8 "$value"
    cp bad.qcow before.qcow
    expect_status "$name: write" 1 "$W" bad.qcow qcow w:0:512:90
    checks=$((checks + 1))
    grep -q "qcow image is corrupt: a write at offset [0-9]* would overwrite $what\$" \
        "$T/.err" || fail "$name: message" "$(cat "$T/.err")"
    checks=$((checks + 1))
    cmp -s before.qcow bad.qcow || fail "$name: the file changed"
done
# A compressed cluster that does not inflate: an I/O error, no crash.
cp qc.qcow badz.qcow
# The first L2 entry (through the first L1 entry): a compressed cluster.
l2=$(($(od -An -tx1 -j 40 -N 8 badz.qcow | tr -d ' \n' | sed 's/^/0x/')))
l2=$(($(od -An -tx1 -j $l2 -N 8 badz.qcow | tr -d ' \n' | sed 's/^/0x/')))
e=$(($(od -An -tx1 -j $l2 -N 8 badz.qcow | tr -d ' \n' | sed 's/^/0x/')))
coff=$((e & ((1 << 51) - 1)))
dd if=/dev/urandom of=badz.qcow bs=1 seek=$coff count=64 conv=notrunc \
    status=none
expect_status "bad deflate" 1 "$QIMG" convert -O raw badz.qcow x.raw
grep -q 'does not decompress' "$T/.err" ||
    fail "bad deflate: message" "$(cat "$T/.err")"
# Probing.
same_out "probe" info plain.qcow
head -c 7 plain.qcow >short.qcow
same_out "short probed" info short.qcow

echo "$checks checks"
finish
