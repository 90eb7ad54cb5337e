#!/bin/bash
# vmdk: images written by qemu-img/qemu-io in every subformat (create and
# qemu-io writes, convert -O vmdk from a patterned raw), a stream with its
# header in a footer, zeroed grains, version 3, a backing file: qimg reads
# the same guest bytes as qemu-img (convert -O raw + cmp), and prints the
# same info (human, json), map --output=json and check.  Damaged
# descriptors, headers and tables fail with qemu-img's message.  vmdk ->
# qcow2 keeps the sparseness.
. "$QIMG_SRCDIR/tests/functions.sh"
cd "$T"

SUBFORMATS="monolithicSparse monolithicFlat twoGbMaxExtentSparse
twoGbMaxExtentFlat streamOptimized"

# same_out NAME CMD-ARGS...: qimg and qemu-img print the same (stdout and
# stderr, program names filtered) and exit alike.
same_out() {
    local name=$1
    shift
    checks=$((checks + 1))
    "$QEMU_IMG" "$@" >"$name.want" 2>&1
    echo "exit $?" >>"$name.want"
    "$QIMG" "$@" >"$name.got" 2>&1
    echo "exit $?" >>"$name.got"
    sed -i 's/^qemu-img: /qimg: /' "$name.want"
    if ! files_equal "$name.want" "$name.got"; then
        fail "$name" "$(diff -u "$name.want" "$name.got")"
    fi
}

# same_data NAME IMAGE: the guest bytes, qimg's against qemu-img's.
same_data() {
    local name=$1 img=$2
    checks=$((checks + 1))
    "$QEMU_IMG" convert -O raw "$img" "$name.want.raw" ||
        { fail "$name: qemu-img convert"; return; }
    if ! "$QIMG" convert -O raw "$img" "$name.got.raw" 2>"$name.err"; then
        fail "$name: qimg convert" "$(cat "$name.err")"
        return
    fi
    cmp "$name.want.raw" "$name.got.raw" >/dev/null ||
        fail "$name: guest data differs"
    rm -f "$name.want.raw" "$name.got.raw"
}

# all_same NAME IMAGE: data, info --output=json, map, check.
all_same() {
    same_data "$1" "$2"
    same_out "$1-info-json" info --output=json "$2"
    same_out "$1-map" map --output=json "$2"
    same_out "$1-check" check "$2"
}

# all_same_h NAME IMAGE: the same and the human info.
all_same_h() {
    all_same "$1" "$2"
    same_out "$1-info" info "$2"
}

# A 3 MiB pattern: data, zero runs, a partial grain.
python3 -c '
import random
r = random.Random(7)
b = bytearray(3 << 20)
for i in range(0, len(b), 65536):
    k = (i // 65536) % 4
    if k == 0:
        b[i:i + 65536] = bytes(r.getrandbits(8) for _ in range(65536))
    elif k == 2:
        b[i + 4096:i + 8192] = bytes([i // 65536 % 256]) * 4096
open("pat.raw", "wb").write(b)
'

for s in $SUBFORMATS; do
    # qemu-img create + qemu-io writes (a stream takes only sequential
    # whole-grain writes, so it gets them from convert below).
    "$QEMU_IMG" create -q -f vmdk -o subformat=$s "w-$s.vmdk" 5M ||
        fail "create $s"
    if [ "$s" != streamOptimized ]; then
        "$QEMU_IO" -c 'write -P 0x5a 0 4k' -c 'write -P 0x33 70k 130k' \
            -c 'write -P 0x44 4m 1m' -c 'write -z 1m 64k' "w-$s.vmdk" \
            >/dev/null || fail "qemu-io $s"
    fi
    all_same "w-$s" "w-$s.vmdk"
    "$QEMU_IMG" convert -O vmdk -o subformat=$s pat.raw "c-$s.vmdk" ||
        fail "convert $s"
    all_same_h "c-$s" "c-$s.vmdk"
done

# Larger grains and adapter types do not change how it reads.
"$QEMU_IMG" create -q -f vmdk -o adapter_type=lsilogic,hwversion=6 \
    big.vmdk 40M
"$QEMU_IO" -c 'write -P 7 39m 1m' -c 'write -P 8 31m 2m' big.vmdk >/dev/null
all_same big big.vmdk

# Zeroed grains (zeroed_grain=on): zero writes keep no data.
"$QEMU_IMG" create -q -f vmdk -o zeroed_grain=on zg.vmdk 2M
"$QEMU_IO" -c 'write -P 1 0 1m' -c 'write -z 64k 128k' zg.vmdk >/dev/null
all_same zg zg.vmdk

# A stream whose header points at the footer (as VMware writes them): the
# footer's copy of the header, after a footer marker, then end of stream.
cp c-streamOptimized.vmdk footer.vmdk
python3 - footer.vmdk <<'EOF'
import struct, sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
hdr = bytes(b[:512])
b += bytes((-len(b)) % 512)
b += struct.pack("<QII", 1, 0, 3) + bytes(496)   # footer marker
b += hdr                                         # footer
b += bytes(512)                                  # end of stream
b[56:64] = struct.pack("<Q", 0xffffffffffffffff)  # gd at end
open(p, "wb").write(b)
EOF
all_same_h footer footer.vmdk

# Version 3 sparse extents read (qemu-img refuses them read-write only).
cp w-monolithicSparse.vmdk v3.vmdk
printf '\x03' | dd of=v3.vmdk bs=1 seek=4 conv=notrunc status=none
all_same v3 v3.vmdk

# A backing file: parentFileNameHint, parent CID.
"$QEMU_IMG" create -q -f vmdk base.vmdk 3M
"$QEMU_IO" -c 'write -P 0x61 0 1m' base.vmdk >/dev/null
"$QEMU_IMG" create -q -f vmdk -b base.vmdk -F vmdk ov.vmdk
"$QEMU_IO" -c 'write -P 0x62 512k 1m' ov.vmdk >/dev/null
all_same_h ov ov.vmdk
same_out ov-chain info --backing-chain ov.vmdk

# A descriptor naming an absolute path (QEMU takes it) and a descriptor
# whose blank line doubles the next extent (QEMU's reading).
mkdesc() {
    printf '# Disk DescriptorFile\nversion=1\nCID=12\nparentCID=ffffffff\n' \
        >"$1"
    printf "$2" >>"$1"
}
mkdesc abs.vmdk "createType=\"monolithicFlat\"\nRW 2048 FLAT \"$T/w-monolithicFlat-flat.vmdk\" 0\n"
all_same abs abs.vmdk
mkdesc dup.vmdk 'createType="twoGbMaxExtentFlat"\n\nRW 2048 FLAT "w-monolithicFlat-flat.vmdk" 8\n'
all_same dup dup.vmdk
# Two extents of different kinds: no cluster size for the disk.
mkdesc mixed.vmdk 'createType="twoGbMaxExtentSparse"\nRW 10240 SPARSE "w-twoGbMaxExtentSparse-s001.vmdk"\nRW 2048 FLAT "w-monolithicFlat-flat.vmdk" 0\n'
all_same_h mixed mixed.vmdk

# Damaged descriptors.
mkdesc d-noct.vmdk 'RW 100 FLAT "w-monolithicFlat-flat.vmdk" 0\n'
mkdesc d-type.vmdk 'createType="foo"\n'
mkdesc d-line.vmdk 'createType="monolithicFlat"\nRW 100 FLAT "w-monolithicFlat-flat.vmdk"\n'
mkdesc d-json.vmdk 'createType="monolithicFlat"\nRW 100 FLAT "json:{\\"driver\\":\\"null-co\\"}" 0\n'
mkdesc d-missing.vmdk 'createType="monolithicFlat"\nRW 100 FLAT "nothere.vmdk" 0\n'
printf '# Disk DescriptorFile\nversion=1\nparentCID=ffffffff\ncreateType="monolithicFlat"\nRW 100 FLAT "w-monolithicFlat-flat.vmdk" 0\n' \
    >d-nocid.vmdk
for d in noct type line json missing nocid; do
    same_out "d-$d" info "d-$d.vmdk"
done
# qimg's own refusals: no extents (QEMU fails an assertion), protocol
# names (QEMU looks for a local file of that name).
mkdesc d-none.vmdk 'createType="monolithicFlat"\n'
expect_status d-none 1 "$QIMG" info d-none.vmdk &&
    grep -q 'no extents' "$T/.err" || fail "d-none message"
mkdesc d-proto.vmdk 'createType="monolithicFlat"\nRW 100 FLAT "nbd:localhost:1" 0\n'
expect_status d-proto 1 "$QIMG" info d-proto.vmdk &&
    grep -q 'not a plain local file name' "$T/.err" || fail "d-proto message"

# Damaged headers: patch(FILE OFFSET FORMAT VALUE) writes a little-endian
# field of the sparse header.
patch() {
    python3 -c '
import struct, sys
p, off, fmt, v = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4], 0)
f = open(p, "r+b"); f.seek(off); f.write(struct.pack("<" + fmt, v))
' "$@"
}
h() { cp w-monolithicSparse.vmdk "h-$1.vmdk"; patch "h-$1.vmdk" "$2" "$3" "$4"; }
h version 4 I 4
h gtes 44 I 513
h gtes0 44 I 0
h gran 20 Q 0x400000
h l1big 12 Q 0x7fffffffffffff
h grainoff 64 Q 0x100000
cp footer.vmdk h-footer.vmdk
patch h-footer.vmdk $(($(stat -c %s footer.vmdk) - 1024 - 512 + 12)) I 5
for x in version gtes gtes0 gran l1big grainoff footer; do
    same_out "h-$x" info "h-$x.vmdk"
done
# Tiny files.
printf 'KDM' >h-tiny.vmdk
same_out h-tiny info -f vmdk h-tiny.vmdk

# Grain tables pointing past the end of the file: reads fail cleanly,
# check reports the grain as qemu-img does.
cp w-monolithicSparse.vmdk t-eof.vmdk
gd=$(python3 -c '
import struct
b = open("t-eof.vmdk", "rb").read()
gd = struct.unpack("<Q", b[56:64])[0] * 512
print(struct.unpack("<I", b[gd:gd + 4])[0] * 512)')
patch t-eof.vmdk "$gd" I 0x100000
same_out t-eof-check check t-eof.vmdk
same_out t-eof-check-json check --output=json t-eof.vmdk
same_out t-eof-repair check -r all t-eof.vmdk
same_data t-eof t-eof.vmdk
# A grain directory entry pointing anywhere in a huge sparse range.
cp w-monolithicSparse.vmdk t-gd.vmdk
patch t-gd.vmdk $((gd - 0)) I 0
gdoff=$(python3 -c '
import struct
b = open("t-gd.vmdk", "rb").read()
print(struct.unpack("<Q", b[56:64])[0] * 512)')
patch t-gd.vmdk "$gdoff" I 0xfffffff0
same_data t-gd t-gd.vmdk
same_out t-gd-check check t-gd.vmdk
# A grain table named past the end of the file, just where the end of
# the file puts the next grain: the grain must not land on the table
# (whose update would overwrite it), and qemu-io reads it back.
"$QEMU_IMG" create -q -f vmdk t-past.vmdk 1M
python3 -c '
import struct, sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
gran, rgd, gd = (struct.unpack_from("<Q", b, o)[0] for o in (20, 48, 56))
eof = (len(b) + 511) // 512
struct.pack_into("<I", b, gd * 512, (eof + gran - 1) // gran * gran)
struct.pack_into("<I", b, rgd * 512, 0)
open(p, "wb").write(b)' t-past.vmdk
checks=$((checks + 1))
"${QIMG_WRITE_IMAGE:?}" t-past.vmdk vmdk w:0:512:90 w:70000:512:91 \
    2>t-past.err || fail "t-past: write_image" "$(cat t-past.err)"
"$QEMU_IO" -f vmdk -c 'read -P 90 0 512' -c 'read -P 91 70000 512' \
    -c 'read -P 0 512 4096' t-past.vmdk >/dev/null || fail "t-past: read back"
# Tables that put guest data or a grain table on other metadata: the
# write is refused with a message naming what it would overwrite, and the
# file is left as it was (qemu-io writes there and breaks the image).
# Each case sets one 32-bit entry: of the first grain table (GT) or the
# grain directory (GD), to a sector number.
"$QEMU_IMG" create -q -f vmdk t-meta.vmdk 1M
"$QEMU_IO" -f vmdk -c 'write -q -P 0x11 0 64k' t-meta.vmdk ||
    fail "t-meta: qemu-io"
for c in "grain on the descriptor:gt:1:1:the header, descriptor or a directory" \
    "grain on the directory:gt:1:gd:the header, descriptor or a directory" \
    "grain on its grain table:gt:1:gt:a grain table" \
    "grain table on the descriptor:gd:0:1:the header, descriptor or a directory"; do
    IFS=: read -r name table index value what <<<"$c"
    cp t-meta.vmdk t-bad.vmdk
    python3 -c '
import struct, sys
p, table, index, value = sys.argv[1:]
b = bytearray(open(p, "rb").read())
gd = struct.unpack_from("<Q", b, 56)[0]
gt = struct.unpack_from("<I", b, gd * 512)[0]
where = {"gd": gd, "gt": gt}
v = where[value] if value in where else int(value)
struct.pack_into("<I", b, where[table] * 512 + 4 * int(index), v)
open(p, "wb").write(b)' t-bad.vmdk "$table" "$index" "$value"
    cp t-bad.vmdk t-before.vmdk
    expect_status "$name: write" 1 "${QIMG_WRITE_IMAGE:?}" t-bad.vmdk vmdk \
        w:65536:512:90
    checks=$((checks + 1))
    grep -q "VMDK extent is corrupt: a write at offset [0-9]* would overwrite $what\$" \
        "$T/.err" || fail "$name: message" "$(cat "$T/.err")"
    checks=$((checks + 1))
    cmp -s t-before.vmdk t-bad.vmdk || fail "$name: the file changed"
done
# A corrupt compressed grain: the read fails, nothing crashes.
cp c-streamOptimized.vmdk t-z.vmdk
patch t-z.vmdk $((128 * 512 + 14)) I 0xdeadbeef
expect_status t-z-read 1 "$QIMG" convert -O raw t-z.vmdk t-z.raw

# vmdk -> qcow2 keeps the sparseness: same data, same allocation.
"$QIMG" convert -O qcow2 c-monolithicSparse.vmdk sp.qcow2 ||
    fail "convert to qcow2"
checks=$((checks + 1))
"$QEMU_IMG" compare -q c-monolithicSparse.vmdk sp.qcow2 ||
    fail "vmdk -> qcow2: contents differ"
map_layout c-monolithicSparse.vmdk >sp.want
map_layout sp.qcow2 >sp.got
expect_same "vmdk -> qcow2 allocation" sp.want sp.got
expect_status sp-check 0 "$QEMU_IMG" check sp.qcow2

# ---- qimg writes --------------------------------------------------------

# mask FILE: the file with its random CID (the first CID= value) masked;
# in a sparse file the descriptor area (sectors 1-20, which the CID's
# length shifts) is compared as text.  A descriptor's text ends at its
# first NUL: when QEMU rewrites the CID with fewer digits (%x of a value
# below 0x01000000, about one run in 256) the old text's tail stays
# behind that NUL, and no reader looks past it.
mask() {
    python3 -c '
import re, sys
b = open(sys.argv[1], "rb").read()
def m(t):
    return re.sub(rb"CID=[0-9a-f]+\n", b"CID=X\n", t, count=1)
if b[:4] == b"KDMV":
    desc = b[512:21 * 512].split(b"\0", 1)[0]
    b = b[:512] + m(desc) + b"\n--\n" + b[21 * 512:]
elif b.startswith(b"# Disk DescriptorFile"):
    b = m(b.split(b"\0", 1)[0])
else:
    b = m(b)
sys.stdout.buffer.write(b)
' "$1"
}

# same_create NAME ARGS...: qemu-img create and qimg create print the same
# and write the same files (CIDs masked), with the same allocation.
same_create() {
    local name=$1 f
    shift
    mkdir "$name.q" "$name.m"
    (cd "$name.q" && "$QEMU_IMG" create -f vmdk "$@" >../"$name.want" 2>&1)
    (cd "$name.m" && "$QIMG" create -f vmdk "$@" >../"$name.got" 2>&1)
    sed -i 's/^qemu-img: /qimg: /' "$name.want"
    expect_same "$name: output" "$name.want" "$name.got"
    (cd "$name.q" && ls -s) >"$name.want.ls"
    (cd "$name.m" && ls -s) >"$name.got.ls"
    expect_same "$name: files" "$name.want.ls" "$name.got.ls"
    for f in $(cd "$name.q" && ls); do
        checks=$((checks + 1))
        [ -f "$name.m/$f" ] || continue
        # Big files are new flat extents: holes but for the first sector
        # (the allocation is compared above), the same size.
        if [ "$(stat -c %s "$name.q/$f")" -gt 1048576 ]; then
            [ "$(stat -c %s "$name.q/$f")" = "$(stat -c %s "$name.m/$f")" ] &&
                cmp -s -n 65536 "$name.q/$f" "$name.m/$f" ||
                fail "$name: $f differs"
            continue
        fi
        cmp -s <(mask "$name.q/$f") <(mask "$name.m/$f") ||
            fail "$name: $f differs" "$(cmp <(mask "$name.q/$f") \
                <(mask "$name.m/$f"))"
    done
    rm -rf "$name.q" "$name.m"
}
for s in $SUBFORMATS; do
    same_create "cr-$s" -o subformat=$s x.vmdk 5M
done
same_create cr-split-sparse -o subformat=twoGbMaxExtentSparse x.vmdk 5G
same_create cr-split-flat -o subformat=twoGbMaxExtentFlat,adapter_type=buslogic x.vmdk 5G
same_create cr-opts -o zeroed_grain=on,adapter_type=lsilogic,toolsversion=9,hwversion=7 x.vmdk 1G
same_create cr-compat6 -o compat6=on,adapter_type=legacyESX x.img 1000
same_create cr-zero x.vmdk 0
same_create cr-flat-zero -o subformat=monolithicFlat x.vmdk 0
same_create cr-noext -o subformat=monolithicFlat x 1M
same_create cr-bad-compat6 -o compat6=on,hwversion=7 x.vmdk 1M
same_create cr-bad-adapter -o adapter_type=foo x.vmdk 1M
same_create cr-bad-sub -o subformat=foo x.vmdk 1M
same_create cr-help -o help
"$QEMU_IMG" create -q -f vmdk cbase.vmdk 1M
cp cbase.vmdk cr-back.q.base; cp cbase.vmdk cr-back.m.base
mkdir cr-back.q cr-back.m
mv cr-back.q.base cr-back.q/cbase.vmdk; mv cr-back.m.base cr-back.m/cbase.vmdk
(cd cr-back.q && "$QEMU_IMG" create -f vmdk -b cbase.vmdk -F vmdk o.vmdk \
    >../cr-back.want 2>&1)
(cd cr-back.m && "$QIMG" create -f vmdk -b cbase.vmdk -F vmdk o.vmdk \
    >../cr-back.got 2>&1)
expect_same "create with a backing file" cr-back.want cr-back.got
checks=$((checks + 1))
cmp -s <(mask cr-back.q/o.vmdk) <(mask cr-back.m/o.vmdk) ||
    fail "create with a backing file: bytes differ"
(cd cr-back.m && "$QEMU_IMG" info o.vmdk >../cr-back.info) ||
    fail "qemu-img info of qimg's overlay"
grep -q '^backing file: cbase.vmdk' cr-back.info ||
    fail "qimg's overlay: no backing file" "$(cat cr-back.info)"

# convert -O vmdk: qemu-img reads the same data, check passes, and the
# sparse files are qemu-img's own bytes (CIDs masked).
for s in monolithicSparse monolithicFlat twoGbMaxExtentSparse \
    twoGbMaxExtentFlat; do
    if ! "$QIMG" convert -O vmdk -o subformat=$s pat.raw "m-$s.vmdk" \
        2>"m-$s.err"; then
        fail "qimg convert -O vmdk $s" "$(cat "m-$s.err")"
        continue
    fi
    expect_status "m-$s compare" 0 "$QEMU_IMG" compare pat.raw "m-$s.vmdk"
    expect_status "m-$s check" 0 "$QEMU_IMG" check "m-$s.vmdk"
    map_layout "c-$s.vmdk" >"m-$s.want"
    map_layout "m-$s.vmdk" >"m-$s.got"
    expect_same "m-$s allocation" "m-$s.want" "m-$s.got"
done
# The same name: a monolithic file holds its own name.
mkdir same.q same.m
"$QEMU_IMG" convert -O vmdk pat.raw same.q/s.vmdk
"$QIMG" convert -O vmdk pat.raw same.m/s.vmdk
checks=$((checks + 1))
cmp -s <(mask same.q/s.vmdk) <(mask same.m/s.vmdk) ||
    fail "convert -O vmdk: not qemu-img's bytes"
checks=$((checks + 1))
files_equal m-twoGbMaxExtentSparse-s001.vmdk c-twoGbMaxExtentSparse-s001.vmdk ||
    fail "convert -O vmdk twoGbMaxExtentSparse: not qemu-img's extent"

# Guest writes through qimg (write_image) and the same through qemu-io on
# a copy: the same guest data, and qemu-img check is clean.
OPS_IO=(-c 'write -P 0x11 0 4k' -c 'write -P 0x22 60k 8k'
    -c 'write -P 0x33 1m 300k' -c 'write -z 1088k 64k' -c 'write -P 0x44 5m 64k')
OPS_QIMG=(w:0:4096:0x11 w:61440:8192:0x22 w:1048576:307200:0x33
    z:1114112:65536 o w:5242880:65536:0x44)
for s in monolithicSparse monolithicFlat twoGbMaxExtentSparse \
    twoGbMaxExtentFlat zeroed; do
    o="subformat=$s"
    [ $s = zeroed ] && o=zeroed_grain=on
    "$QEMU_IMG" create -q -f vmdk -o $o "wq-$s.vmdk" 6M
    "$QIMG" create -q -f vmdk -o $o "wm-$s.vmdk" 6M
    "$QEMU_IO" "${OPS_IO[@]}" "wq-$s.vmdk" >/dev/null || fail "qemu-io $s"
    if ! "$QIMG_WRITE_IMAGE" "wm-$s.vmdk" vmdk "${OPS_QIMG[@]}" \
        2>"wm-$s.err"; then
        fail "write_image $s" "$(cat "wm-$s.err")"
        continue
    fi
    expect_status "wm-$s compare" 0 "$QEMU_IMG" compare "wq-$s.vmdk" \
        "wm-$s.vmdk"
    expect_status "wm-$s check" 0 "$QEMU_IMG" check "wm-$s.vmdk"
    map_layout "wq-$s.vmdk" >"wm-$s.want"
    map_layout "wm-$s.vmdk" >"wm-$s.got"
    expect_same "wm-$s allocation" "wm-$s.want" "wm-$s.got"
done
# Writes over a backing file copy the rest of the grain from below.
"$QEMU_IMG" create -q -f vmdk -b base.vmdk -F vmdk ovq.vmdk
"$QIMG" create -q -f vmdk -b base.vmdk -F vmdk ovm.vmdk
"$QEMU_IO" -c 'write -P 0x71 10k 2k' -c 'write -P 0x72 2m 64k' ovq.vmdk \
    >/dev/null
"$QIMG_WRITE_IMAGE" ovm.vmdk vmdk w:10240:2048:0x71 w:2097152:65536:0x72 ||
    fail "write_image over a backing file"
expect_status "ovm compare" 0 "$QEMU_IMG" compare ovq.vmdk ovm.vmdk
expect_status "ovm check" 0 "$QEMU_IMG" check ovm.vmdk


# convert to streamOptimized: qemu-img's bytes (CIDs masked), with and
# without -c and with -S 0, over the pattern and over a sparse 70 MiB
# plus a partial grain (three grain tables; incompressible grains, zero
# runs, data at a table's edge); qemu-img compare and check pass, and
# qimg reads its own stream back.
python3 -c '
import random
r = random.Random(11)
f = open("big.raw", "wb")
f.truncate(70 * 1048576 + 1536)
for off, n in ((0, 200000), (32 * 1048576 - 4096, 8192),
               (50 * 1048576 + 12345, 70000), (70 * 1048576, 1536)):
    f.seek(off)
    f.write(bytes(r.getrandbits(8) for _ in range(n // 2)) +
            bytes([off % 251]) * (n - n // 2))
'
so_case() {
    local name=$1 src=$2
    shift 2
    mkdir "$name.q" "$name.m"
    "$QEMU_IMG" convert -O vmdk "$@" "$src" "$name.q/s.vmdk" ||
        fail "$name: qemu-img convert"
    if ! "$QIMG" convert -O vmdk "$@" "$src" "$name.m/s.vmdk" \
        2>"$name.err"; then
        fail "$name: qimg convert" "$(cat "$name.err")"
        return
    fi
    # A descriptor file QEMU rewrote (new CID) is padded to a sector
    # with NULs; qimg's keeps its length: the text is compared.
    local f strip
    for f in $(cd "$name.q" && ls); do
        checks=$((checks + 1))
        strip=cat
        [ "$(head -c 4 "$name.q/$f")" = KDMV ] || strip="tr -d \\0"
        cmp -s <(mask "$name.q/$f" | $strip) <(mask "$name.m/$f" | $strip) ||
            fail "$name: $f differs" "$(cmp <(mask "$name.q/$f") \
                <(mask "$name.m/$f") 2>&1)"
    done
    expect_status "$name compare" 0 "$QEMU_IMG" compare "$src" "$name.m/s.vmdk"
    expect_status "$name check" 0 "$QEMU_IMG" check "$name.m/s.vmdk"
    expect_status "$name qimg compare" 0 "$QIMG" compare "$src" \
        "$name.m/s.vmdk"
}
so_case so-pat pat.raw -o subformat=streamOptimized
so_case so-pat-c pat.raw -c -o subformat=streamOptimized
so_case so-pat-s0 pat.raw -S 0 -o subformat=streamOptimized
so_case so-big big.raw -o subformat=streamOptimized
# -c to the other sparse subformats writes their grains plain (QEMU).
so_case so-c-sparse pat.raw -c
so_case so-c-split pat.raw -c -o subformat=twoGbMaxExtentSparse
same_data so-big-self so-big.m/s.vmdk
same_out so-big-info info --output=json so-big.m/s.vmdk
# The mask itself: QEMU's descriptor after a CID rewrite to fewer digits
# (the text shifts left; its old last bytes stay behind the NUL) masks
# like the one it came from (a CI run failed on this, one in 256).
checks=$((checks + 1))
python3 -c '
import re, sys
b = bytearray(open(sys.argv[1], "rb").read())
desc = bytes(b[512:21 * 512])
text = desc.split(b"\0", 1)[0]
short = re.sub(rb"CID=[0-9a-f]+\n", b"CID=abc\n", text, count=1)
assert len(short) < len(text) - 1
b[512:512 + len(text)] = short + b"\0" + text[len(short) + 1:]
open(sys.argv[2], "wb").write(b)
' so-big.q/s.vmdk so-big.short.vmdk
cmp -s <(mask so-big.q/s.vmdk) <(mask so-big.short.vmdk) ||
    fail "mask: a shortened CID's leftover text"
# A grain is written once: converting again into the stream fails.
expect_status "so rewrite" 1 "$QIMG" convert -n -O vmdk pat.raw \
    so-pat.m/s.vmdk
checks=$((checks + 1))
"$QIMG" convert -n -O vmdk pat.raw so-pat.m/s.vmdk 2>&1 |
    grep -q 'Could not write to allocated cluster for streamOptimized' ||
    fail "so rewrite: message"
rm -rf so-*.q so-*.m so-big.short.vmdk big.raw

# A child whose parentCID is not its vmdk parent's CID (QEMU's
# vmdk_is_cid_valid): the open, info, map and check are fine, and so are
# its own grains; reading what lies below, or copying it into a new grain
# on a write, fails with EINVAL, and a failed write leaves the CID.
#
# break_parent_cid FILE: another parentCID of the same length, in place.
# (A sed to a fixed 8-digit value shifted every byte after the descriptor
# when QEMU had written the CID with fewer digits: it prints %x, and one
# CID in 16 starts with a zero; the grains then moved.)
break_parent_cid() {
    python3 - "$1" <<'PY'
import re, sys
path = sys.argv[1]
data = bytearray(open(path, "rb").read())
m = re.search(rb"\nparentCID=([0-9a-f]+)", data)
old = m.group(1)
new = b"%0*x" % (len(old), (int(old, 16) + 1) % (16 ** len(old)))
data[m.start(1):m.end(1)] = new
open(path, "r+b").write(data)
PY
}
rm -f cid-base.vmdk cid-child.vmdk
"$QEMU_IMG" create -q -f vmdk cid-base.vmdk 1M
"$QEMU_IO" -c 'write -P 5 0 1M' cid-base.vmdk >/dev/null
"$QEMU_IMG" create -q -f vmdk -b cid-base.vmdk -F vmdk cid-child.vmdk
"$QEMU_IO" -c 'write -P 6 0 64k' cid-child.vmdk >/dev/null
expect_status "cid: matching parentCID converts" 0 "$QIMG" convert \
    -O raw cid-child.vmdk cid-ok.raw
break_parent_cid cid-child.vmdk
same_out cid-info info cid-child.vmdk
same_out cid-map map --output=json cid-child.vmdk
same_out cid-check check cid-child.vmdk
expect_status "cid: qemu-img fails the convert" 1 "$QEMU_IMG" convert \
    -O raw cid-child.vmdk cid-want.raw
rm -f cid-child2.vmdk
"$QEMU_IMG" create -q -f vmdk -b cid-base.vmdk -F vmdk cid-child2.vmdk
break_parent_cid cid-child2.vmdk
expect_status "cid: qimg fails the convert of an empty child" 1 \
    "$QIMG" convert -O raw cid-child2.vmdk cid-got.raw
checks=$((checks + 1))
"$QIMG" convert -O raw cid-child2.vmdk cid-got.raw 2>&1 |
    grep -q 'parent CID' || fail "cid: message"
# A write that needs the parent's bytes fails (even a whole grain) and
# leaves the file as it was; one into the child's own grain works.
for op in w:0x20000:512:7 w:0x20000:0x10000:7 z:0x30000:512; do
    cp cid-child.vmdk cid-w.vmdk
    cp cid-child.vmdk cid-w.want.vmdk
    expect_status "cid: qemu-io write $op fails" 1 "$QEMU_IO" -c \
        "$(echo "$op" | awk -F: '{ if ($1 == "z") print "write -z " $2 " " $3;
            else print "write -P " $4 " " $2 " " $3 }')" cid-w.want.vmdk
    expect_status "cid: write $op fails" 1 "$QIMG_WRITE_IMAGE" cid-w.vmdk \
        vmdk "$op"
    checks=$((checks + 1))
    files_equal cid-child.vmdk cid-w.vmdk ||
        fail "cid: a failed write $op changed the file"
done
cp cid-child.vmdk cid-w.vmdk
expect_status "cid: write into the child's grain" 0 "$QIMG_WRITE_IMAGE" \
    cid-w.vmdk vmdk w:0:512:8
checks=$((checks + 1))
grep -a '^CID=' cid-child.vmdk >cid-a.txt
grep -a '^CID=' cid-w.vmdk >cid-b.txt
files_equal cid-a.txt cid-b.txt && fail "cid: the write did not change the CID"
rm -f cid-*.vmdk cid-*.raw

finish
