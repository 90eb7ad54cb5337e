#!/bin/bash
# VirtualBox VDI against qemu-img 7.2: images qemu-img and qemu-io write
# are read by qimg byte for byte; images qimg creates, converts and writes
# are read by qemu-img byte for byte and pass qemu-img check; info, map
# and check output, exit codes and the messages for damaged headers are
# qemu-img's.
. "$QIMG_SRCDIR/tests/functions.sh"
cd "$T"
W=${QIMG_WRITE_IMAGE:?}
MiB=1048576

io() { "$QEMU_IO" "$@" >/dev/null || fail "qemu-io $*"; }

# patch FILE OFFSET WIDTH VALUE: overwrite a little-endian field of WIDTH
# bytes (4 or 8).  (Shell only: python starts slowly on a loaded host.)
patch() {
    local v=$(($4)) i bytes=
    for ((i = 0; i < $3; i++)); do
        bytes+=$(printf '\\x%02x' $(((v >> (8 * i)) & 0xff)))
    done
    printf "$bytes" | dd of="$1" bs=1 seek=$(($2)) conv=notrunc status=none
}

# masked IMAGE OUT: the image with its two random UUIDs (image, last
# snapshot) zeroed.
masked() {
    cp "$1" "$2"
    dd if=/dev/zero of="$2" bs=1 seek=$((0x188)) count=32 conv=notrunc \
        status=none
}

# A raw file with patterns, zero runs and unaligned pieces.
truncate -s $((5 * MiB + 4096)) pattern.raw
io -f raw -c 'write -P 0x17 0 4k' -c 'write -P 0x93 4k 60k' \
    -c 'write -P 0xab 1052672 4k' -c 'write -P 0x5c 3145216 1k' \
    -c 'write -P 0x01 5246464 512' pattern.raw

# same_meta NAME IMAGE: info (human, json) and map json as qemu-img.
same_meta() {
    same_out "$1: info" info "$2"
    same_out "$1: info json" info --output=json "$2"
    same_out "$1: map json" map --output=json "$2"
}

# qimg_ok NAME IMAGE: qemu-img reads what qimg wrote and finds it clean.
qemu_ok() {
    local out
    out=$("$QEMU_IMG" check "$2" 2>&1) || fail "$1: qemu-img check" "$out"
    pass
}

# 1. qemu-img writes, qimg reads.
"$QEMU_IMG" create -q -f vdi dyn.vdi 5M
io -f vdi -c 'write -P 0x11 0 64k' -c 'write -P 0x22 3M 4k' \
    -c 'write -z 2M 1M' -c 'write -P 0x33 4095k 2k' dyn.vdi
same_raw "qemu dynamic" dyn.vdi
same_meta "qemu dynamic" dyn.vdi
same_out "qemu dynamic: map" map dyn.vdi
same_out "qemu dynamic: check" check dyn.vdi
"$QEMU_IMG" create -q -f vdi -o static=on sta.vdi 3M
io -f vdi -c 'write -P 0x44 1M 8k' sta.vdi
same_raw "qemu static" sta.vdi
same_meta "qemu static" sta.vdi
"$QEMU_IMG" create -q -f vdi odd.vdi 1000001
io -f vdi -c 'write -P 0x55 999424 512' odd.vdi
same_raw "qemu odd size" odd.vdi
same_meta "qemu odd size" odd.vdi
"$QEMU_IMG" create -q -f vdi empty.vdi 0
same_meta "qemu empty" empty.vdi
for kind in off on; do
    "$QEMU_IMG" convert -O vdi -o static=$kind pattern.raw qc-$kind.vdi
    same_raw "qemu convert static=$kind" qc-$kind.vdi
    same_meta "qemu convert static=$kind" qc-$kind.vdi
done
# A block marked discarded reads as zero.
cp dyn.vdi disc.vdi
patch disc.vdi 0x200 4 0xfffffffe
same_raw "discarded block" disc.vdi
same_meta "discarded block" disc.vdi

# 2. qimg creates: the same bytes as qemu-img but for the random UUIDs.
for args in "5M" "-o static=on 3M" "1000001" "0" "300G" \
    "-o static=off,preallocation=full 2M" "-o static=on,nocow=on 1M"; do
    rm -f c-q.vdi c-i.vdi
    # shellcheck disable=SC2086
    "$QEMU_IMG" create -f vdi c-q.vdi $args >want.out 2>&1
    # shellcheck disable=SC2086
    "$QIMG" create -f vdi c-i.vdi $args >got.out 2>&1
    sed -i 's/c-q.vdi/c-i.vdi/' want.out
    expect_same "create $args: output" want.out got.out
    masked c-q.vdi c-q.masked
    masked c-i.vdi c-i.masked
    expect_same "create $args: bytes" c-q.masked c-i.masked
    [ "$(stat -c %s c-q.vdi)" = "$(stat -c %s c-i.vdi)" ] ||
        fail "create $args: file size"
    pass
    # The UUIDs are set and differ (version 4, VDI byte order).
    u1=$(od -An -tx1 -j $((0x188)) -N 16 c-i.vdi | tr -d ' \n')
    u2=$(od -An -tx1 -j $((0x198)) -N 16 c-i.vdi | tr -d ' \n')
    [[ $u1 != "$u2" && ${u1:14:1} == 4 && ${u2:14:1} == 4 &&
       ${u1:16:1} == [89ab] && ${u2:16:1} == [89ab] ]] ||
        fail "create $args: uuids $u1 $u2"
    pass
done
same_out "create too large" create -f vdi big.vdi 1000T
same_out "create bad static" create -f vdi -o static=maybe b.vdi 1M
same_out "create help" create -f vdi -o help x.vdi
same_out "resize" resize dyn.vdi 6M

# 3. qimg converts and writes, qemu-img reads.
for kind in off on; do
    rm -f ic-$kind.vdi
    "$QIMG" convert -O vdi -o static=$kind pattern.raw ic-$kind.vdi ||
        fail "qimg convert static=$kind"
    "$QEMU_IMG" compare -f raw -F vdi pattern.raw ic-$kind.vdi >/dev/null ||
        fail "qimg convert static=$kind: compare"
    pass
    qemu_ok "qimg convert static=$kind" ic-$kind.vdi
    "$QEMU_IMG" map --output=json ic-$kind.vdi >got.map
    "$QEMU_IMG" map --output=json qc-$kind.vdi >want.map
    expect_same "qimg convert static=$kind: map" want.map got.map
done
# Sequential conversion allocates in guest order, as qemu-img's does.
masked ic-off.vdi ic.masked
masked qc-off.vdi qc.masked
expect_same "qimg convert: bytes" qc.masked ic.masked

# The same writes through qemu-io and qimg on copies of each kind.
ops=(w:0:65536:17 w:3145728:4096:34 z:2097152:1048576 w:4193280:2048:51
     w:1049088:1024:68 o w:512:512:85 d:0:4096 f)
qops=('write -P 17 0 65536' 'write -P 34 3145728 4096'
      'write -z 2097152 1048576' 'write -P 51 4193280 2048'
      'write -P 68 1049088 1024' 'write -P 85 512 512' 'discard 0 4096')
for kind in off on; do
    "$QIMG" create -q -f vdi -o static=$kind w-i.vdi 5M ||
        fail "create for writes"
    cp w-i.vdi w-q.vdi
    if ! "$W" w-i.vdi vdi "${ops[@]}" 2>w.err; then
        fail "write_image static=$kind" "$(cat w.err)"
        continue
    fi
    args=()
    for c in "${qops[@]}"; do
        args+=(-c "$c")
    done
    io -f vdi "${args[@]}" w-q.vdi
    "$QEMU_IMG" compare w-q.vdi w-i.vdi >/dev/null ||
        fail "writes static=$kind: compare"
    pass
    qemu_ok "writes static=$kind" w-i.vdi
    masked w-i.vdi w-i.masked
    masked w-q.vdi w-q.masked
    expect_same "writes static=$kind: bytes" w-q.masked w-i.masked
    same_meta "writes static=$kind" w-i.vdi
    same_out "writes static=$kind: check" check w-i.vdi
done

# 4. check on damaged maps: messages, counts, exit codes.
for damage in "0x184 4 2" "0x208 4 0" "0x208 4 7" "0x204 4 0xfffffffe" \
    "0x200 4 0x20" "0x184 4 0"; do
    cp dyn.vdi bad.vdi
    # shellcheck disable=SC2086
    patch bad.vdi $damage
    same_out "check $damage" check bad.vdi
    same_out "check json $damage" check --output=json bad.vdi
done
same_out "check -r all" check -r all dyn.vdi
same_out "check -r leaks" check -r leaks dyn.vdi

# 5. damaged headers: qemu-img's messages.
for damage in "0x40 4 0x12345678" "0x44 4 0x00010000" "0x44 4 0x20001" \
    "0x154 4 0x201" "0x158 4 0x401" "0x168 4 4096" "0x178 4 8192" \
    "0x170 8 0x600000" "0x170 8 0x500001" "0x170 8 0x3e80000000000" \
    "0x180 4 0x20000000" "0x1a8 4 1" "0x1b8 4 1" "0x48 4 0x100" \
    "0x4c 4 7" "0x154 4 0x10000000"; do
    cp dyn.vdi bad.vdi
    # shellcheck disable=SC2086
    patch bad.vdi $damage
    same_out "header $damage" info -f vdi bad.vdi
done
same_out "header probed" info bad.vdi
# A map of 2 GiB described by a tiny file: qimg refuses (no 2 GiB
# allocation; QEMU reads zeros past the end of the file).
cp empty.vdi huge.vdi
patch huge.vdi 0x180 4 0x1fffff80
patch huge.vdi 0x170 8 0x100000
expect_status "huge map refused" 1 "$QIMG" info huge.vdi
grep -q 'lies beyond the end of the file' "$T/.err" ||
    fail "huge map: message" "$(cat "$T/.err")"
# Short files: probed as raw below a whole header sector, and read as
# zeros past their end with -f vdi.
head -c 100 dyn.vdi >short.vdi
same_out "short probed" info short.vdi
same_out "short as vdi" info -f vdi short.vdi
# Too many blocks allocated: writes refuse instead of overwriting.
cp empty.vdi full.vdi
expect_status "write to empty" 1 "$W" full.vdi vdi w:0:512:1
# A data area on the header (offset_data 0) or a block on the map: the
# write is refused and the file left as it was (qemu-io writes the
# block over the header, then the header over the data).
"$QEMU_IMG" create -q -f vdi ondata.vdi 4M
patch ondata.vdi 0x158 4 0
cp ondata.vdi ondata-before.vdi
expect_status "data on the header" 1 "$W" ondata.vdi vdi w:0:512:1 &&
    grep -q 'lies on the header or the block map' "$T/.err" ||
    fail "data on the header: message" "$(cat "$T/.err")"
expect_same "data on the header: file unchanged" ondata-before.vdi ondata.vdi
cp dyn.vdi onmap.vdi
patch onmap.vdi 0x158 4 0x200
expect_status "block on the map" 1 "$W" onmap.vdi vdi w:0:512:1

# 6. The guide's conversion to qcow2 keeps the holes.
"$QEMU_IMG" convert -f vdi -O qcow2 dyn.vdi want.qcow2
"$QIMG" convert -f vdi -O qcow2 dyn.vdi winxp.qcow2 ||
    fail "convert vdi to qcow2"
"$QEMU_IMG" compare want.qcow2 winxp.qcow2 >/dev/null ||
    fail "vdi to qcow2: compare"
pass
qemu_ok "vdi to qcow2" winxp.qcow2
"$QEMU_IMG" map --output=json want.qcow2 >want.map
"$QEMU_IMG" map --output=json winxp.qcow2 >got.map
expect_same "vdi to qcow2: map" want.map got.map
same_out "vdi to qcow2: info" info --output=json winxp.qcow2

echo "$checks checks"
finish
