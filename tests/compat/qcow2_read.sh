#!/bin/bash
# qcow2 guest reads: the bytes qimg reads (tests/unit/read_image.c, whole
# disk through qimg_pread) must equal qemu-img convert -O raw, over images
# made by qemu-img/qemu-io with every layout feature; corrupt mappings
# must fail with EIO, not crash.
. "$QIMG_SRCDIR/tests/functions.sh"
: "${QIMG_READ_IMAGE:?QIMG_READ_IMAGE must point at read_image}"
cd "$T"

mk() { "$QEMU_IMG" create -q "$@" >/dev/null || fail "qemu-img create $*"; }
io() { "$QEMU_IO" "$@" >/dev/null || fail "qemu-io $*"; }

# check NAME FILE: compare qimg's guest bytes with qemu-img's.
check() {
    local name=$1 file=$2
    checks=$((checks + 1))
    if ! "$QEMU_IMG" convert -O raw "$file" "$name.want.raw" 2>"$name.err"
    then
        fail "$name: qemu-img convert failed" "$(cat "$name.err")"
        return
    fi
    if ! "$QIMG_READ_IMAGE" "$file" "$name.got.raw" 2>"$name.err"; then
        fail "$name: read_image failed" "$(cat "$name.err")"
        return
    fi
    if ! cmp "$name.want.raw" "$name.got.raw" >"$name.cmp" 2>&1; then
        fail "$name: guest data differs" "$(cat "$name.cmp")"
    fi
    rm -f "$name.want.raw" "$name.got.raw"
    check_map "$name" "$file"
}

# Normalize a map to merged (start, length, data, zero, offset) runs,
# offset -1 when there is none.  Every flag and offset counts: qimg's
# block status must say what qemu-img map says (data runs in host-file
# holes of metadata-preallocated images read as zero, zero clusters that
# keep a host cluster show it); 7.2 has no compressed flag to compare.
norm_map() {
    python3 -c '
import json, sys
src, path = sys.argv[1], sys.argv[2]
ext = []
if src == "qemu":
    for e in json.load(open(path)):
        ext.append((e["start"], e["length"], int(e["data"]), int(e["zero"]),
                    e.get("offset", -1)))
else:
    for line in open(path):
        s, l, d, z, o = map(int, line.split())
        ext.append((s, l, d, z, o))
out = []
for s, l, d, z, o in ext:
    if out:
        ps, pl, pd, pz, po = out[-1]
        if (pd, pz) == (d, z) and ps + pl == s and \
           (po == -1) == (o == -1) and (po == -1 or po + pl == o):
            out[-1] = (ps, pl + l, pd, pz, po)
            continue
    out.append((s, l, d, z, o))
for e in out:
    print(*e)
' "$@"
}

# check_map NAME FILE: qimg_block_status against qemu-img map.
check_map() {
    local name=$1 file=$2
    checks=$((checks + 1))
    "$QEMU_IMG" map --output=json "$file" >"$name.qmap" 2>"$name.err" ||
        { fail "$name: qemu-img map failed" "$(cat "$name.err")"; return; }
    "$QIMG_READ_IMAGE" --map "$file" >"$name.gmap" 2>"$name.err" ||
        { fail "$name: read_image --map failed" "$(cat "$name.err")"; return; }
    norm_map qemu "$name.qmap" >"$name.want.map"
    norm_map qimg "$name.gmap" >"$name.got.map"
    if ! diff -u "$name.want.map" "$name.got.map" >"$name.diff"; then
        fail "$name: block status differs" "$(cat "$name.diff")"
    fi
}

# A pattern of writes that crosses cluster and L2 boundaries for the
# given cluster size: plain, zero, compressed, discarded.
fill() {
    local f=$1 cs=$2 ctype=${3:-}
    io -f qcow2 -c "write -P 0x11 0 $((cs * 3 + 512))" \
        -c "write -P 0x22 $((cs * 5 - 512)) 1024" \
        -c "write -z $((cs * 2)) $cs" \
        -c "write -c -P 0x33 $((cs * 8)) $cs" \
        -c "write -c -P 0x44 $((cs * 9)) $cs" \
        -c "write -P 0x55 $((cs * 12)) $((cs * 2))" \
        -c "discard $((cs * 12)) $cs" \
        -c "write -P 0x66 $((8 * 1024 * 1024 - 4096)) 8192" \
        "$f"
}

# Cluster sizes 512 B .. 2 MiB.
for cs in 512 1024 4096 65536 262144 2097152; do
    mk -f qcow2 -o cluster_size=$cs cs$cs.qcow2 32M
    fill cs$cs.qcow2 $cs
    check cs$cs cs$cs.qcow2
done

# Refcount widths.
for rb in 1 8 64; do
    mk -f qcow2 -o refcount_bits=$rb rb$rb.qcow2 16M
    fill rb$rb.qcow2 65536
    check rb$rb rb$rb.qcow2
done

# v2 (no zero flag: zero writes allocate zeroed data), odd size.
mk -f qcow2 -o compat=0.10 v2.qcow2 16M
fill v2.qcow2 65536
check v2 v2.qcow2
mk -f qcow2 odd.qcow2 12345K
io -f qcow2 -c 'write -P 0x77 12344K 1K' odd.qcow2
check odd odd.qcow2

# zstd and zlib compression, data that compresses well and badly.
for ct in zlib zstd; do
    mk -f qcow2 -o compression_type=$ct $ct.qcow2 16M
    fill $ct.qcow2 65536
    head -c 65536 /dev/urandom >rand.bin
    io -f qcow2 -c "write -c -s rand.bin 1M 64k" $ct.qcow2 2>/dev/null ||
        io -f qcow2 -c "write -c 1M 64k" $ct.qcow2
    check $ct $ct.qcow2
    "$QEMU_IMG" convert -c -O qcow2 -o compression_type=$ct,cluster_size=4k \
        cs65536.qcow2 conv-$ct.qcow2 || fail "convert -c $ct"
    check conv-$ct conv-$ct.qcow2
done

# Preallocated images: zero_alloc / normal clusters everywhere.
for p in metadata falloc full; do
    mk -f qcow2 -o preallocation=$p pre-$p.qcow2 4M
    io -f qcow2 -c 'write -P 0x12 64k 4k' -c 'write -z 1M 64k' pre-$p.qcow2
    check pre-$p pre-$p.qcow2
done

# Extended L2: subcluster writes, zeroes and discards inside clusters.
for cs in 16384 65536 2097152; do
    sc=$((cs / 32))
    mk -f qcow2 -o extended_l2=on,cluster_size=$cs el2-$cs.qcow2 16M
    io -f qcow2 -c "write -P 0x21 $sc $sc" \
        -c "write -P 0x22 $((sc * 5)) $((sc * 3))" \
        -c "write -z $((sc * 6)) $sc" \
        -c "write -P 0x23 $((cs - sc)) $((sc * 2))" \
        -c "write -c -P 0x24 $((cs * 4)) $cs" \
        -c "discard $((sc * 5)) $sc" \
        el2-$cs.qcow2
    check el2-$cs el2-$cs.qcow2
done

# A 3-deep chain, the backing file shorter than the overlay, extended L2
# in the middle so that unallocated subclusters read below.
mk -f qcow2 base.qcow2 4M
io -f qcow2 -c 'write -P 0xa1 0 4M' base.qcow2
mk -f qcow2 -b base.qcow2 -F qcow2 -o extended_l2=on mid.qcow2 8M
io -f qcow2 -c 'write -P 0xb2 4k 4k' -c 'write -z 64k 2k' \
    -c 'write -P 0xb3 5M 64k' mid.qcow2
mk -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 12M
io -f qcow2 -c 'write -P 0xc3 8k 64k' -c 'write -z 3M 128k' \
    -c 'write -c -P 0xc4 6M 64k' -c 'write -P 0xc5 11M 64k' top.qcow2
check chain top.qcow2
check chain-mid mid.qcow2

# A raw backing file.
head -c 3M /dev/urandom >raw-base.img
mk -f qcow2 -b raw-base.img -F raw over-raw.qcow2 4M
io -f qcow2 -c 'write -P 0xd1 1M 4k' over-raw.qcow2
check over-raw over-raw.qcow2

# External data file, plain and raw.
mk -f qcow2 -o data_file=ext.data ext.qcow2 8M
io -f qcow2 -c 'write -P 0xe1 0 100k' -c 'write -z 1M 64k' \
    -c 'write -P 0xe2 7M 4k' ext.qcow2
check ext ext.qcow2
mk -f qcow2 -o data_file=extr.data,data_file_raw=on extr.qcow2 8M
io -f qcow2 -c 'write -P 0xe3 4k 100k' extr.qcow2
check ext-raw extr.qcow2

# ---- Corrupt mappings: EIO with a message, no crash ----------------------

# poke FILE OFFSET FORMAT VALUE: write a big-endian integer.
poke() {
    python3 - "$@" <<'PY'
import struct, sys
f, off, fmt = sys.argv[1], int(sys.argv[2], 0), sys.argv[3]
# Bash arithmetic is signed 64-bit: take the value modulo 2^64.
val = int(sys.argv[4], 0) & 0xffffffffffffffff
with open(f, 'r+b') as fh:
    fh.seek(off)
    fh.write(struct.pack('>' + fmt, val))
PY
}
# l2_entry_offset FILE: file offset of the L2 entry of guest cluster 0.
l2_entry_offset() {
    python3 - "$1" <<'PY'
import struct, sys
with open(sys.argv[1], 'rb') as fh:
    h = fh.read(48)
    l1 = struct.unpack('>Q', h[40:48])[0]
    fh.seek(l1)
    print(struct.unpack('>Q', fh.read(8))[0] & 0x00fffffffffffe00)
PY
}
# expect_eio NAME FILE: read_image must fail with a corruption message.
expect_eio() {
    local name=$1 file=$2
    checks=$((checks + 1))
    "$QIMG_READ_IMAGE" "$file" "$name.out" >"$name.stdout" 2>"$name.err"
    local rc=$?
    if [ "$rc" != 1 ]; then
        fail "$name: read_image exit status $rc, want 1" "$(cat "$name.err")"
    elif ! grep -q "corrupt\|Input/output" "$name.err"; then
        fail "$name: unexpected message" "$(cat "$name.err")"
    fi
}

corrupt_img() {
    mk -f qcow2 "$1.qcow2" 1M
    io -f qcow2 -c 'write -P 0x5a 0 64k' "$1.qcow2"
    l2=$(l2_entry_offset "$1.qcow2")
}
corrupt_img past-eof
poke past-eof.qcow2 "$l2" Q $(((1 << 63) | 0x10000000))
expect_eio past-eof past-eof.qcow2
corrupt_img unaligned
poke unaligned.qcow2 "$l2" Q $(((1 << 63) | 0x50200))
expect_eio unaligned unaligned.qcow2
corrupt_img reserved
poke reserved.qcow2 "$l2" Q $(((1 << 63) | (1 << 57) | 0x50000))
expect_eio reserved reserved.qcow2
corrupt_img l2-unaligned
poke l2-unaligned.qcow2 $(python3 -c "import struct;print(struct.unpack('>Q',open('l2-unaligned.qcow2','rb').read(48)[40:48])[0])") \
    Q $(((1 << 63) | l2 + 512))
expect_eio l2-unaligned l2-unaligned.qcow2
corrupt_img bad-compressed
poke bad-compressed.qcow2 "$l2" Q $(((1 << 62) | 0x30000))
expect_eio bad-compressed bad-compressed.qcow2
corrupt_img compressed-huge
poke compressed-huge.qcow2 "$l2" Q $(((1 << 62) | 0x3fffffffffff00))
expect_eio compressed-huge compressed-huge.qcow2
# Extended L2: a subcluster both allocated and zero.
mk -f qcow2 -o extended_l2=on el2-bad.qcow2 1M
io -f qcow2 -c 'write -P 0x5a 0 64k' el2-bad.qcow2
l2=$(l2_entry_offset el2-bad.qcow2)
poke el2-bad.qcow2 $((l2 + 8)) Q 0x00000001ffffffff
expect_eio el2-both-bits el2-bad.qcow2
# Extended L2: allocated subclusters without a host cluster.
poke el2-bad.qcow2 "$l2" Q 0
poke el2-bad.qcow2 $((l2 + 8)) Q 0x1
expect_eio el2-alloc-no-host el2-bad.qcow2

finish
