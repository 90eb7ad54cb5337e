#!/bin/bash
# vpc (VHD): qemu-img and qemu-io write images that qimg reads, qimg
# writes images that qemu-img reads, both ways byte for byte; create,
# info, map and the open errors of damaged images match qemu-img 7.2's.
. "$QIMG_SRCDIR/tests/functions.sh"
cd "$T"
W=${QIMG_WRITE_IMAGE:?}

# same_bytes NAME A B: the images are equal but for their footers' time
# stamp, checksum and UUID (the fields that differ between creations).
same_bytes() {
    checks=$((checks + 1))
    local sa sb
    sa=$(stat -c %s "$2")
    sb=$(stat -c %s "$3")
    if [ "$sa" != "$sb" ]; then
        fail "$1" "sizes $sa and $sb"
        return
    fi
    # cmp -l counts from 1; a difference outside those fields is printed.
    cmp -l "$2" "$3" | awk -v t=$((sa - 512)) '{
        o = $1 - 1
        if (o >= t) o -= t
        if (!((o >= 24 && o < 28) || (o >= 64 && o < 84))) {
            print "differ at byte " $1 - 1; exit 1
        }}' >.diff || fail "$1" "$(cat .diff)"
}

# patch FILE [-n] WHERE OFF HEX...: write bytes at OFF of the footer(s)
# (WHERE: head, tail, both) or of the structure at byte WHERE, then fix
# that structure's checksum (not with -n).  One process for all triples.
patch() {
    python3 - "$@" <<'EOF'
import struct, sys
args = sys.argv[1:]
f = args.pop(0)
fix = not (args and args[0] == '-n')
if not fix:
    args.pop(0)
b = bytearray(open(f, 'rb').read())
while args:
    where, off, data = args[0], int(args[1], 0), bytes.fromhex(args[2])
    del args[:3]
    bases = {'head': [0], 'tail': [len(b) - 512],
             'both': [0, len(b) - 512]}.get(where) or [int(where, 0)]
    for o in bases:
        b[o + off:o + off + len(data)] = data
        if not fix:
            continue
        n, ck = (1024, 36) if b[o:o + 8] == b'cxsparse' else (512, 64)
        b[o + ck:o + ck + 4] = bytes(4)
        s = ~sum(b[o:o + n]) & 0xffffffff
        b[o + ck:o + ck + 4] = struct.pack('>I', s)
open(f, 'wb').write(b)
EOF
}

# same_output NAME ARGS...: qemu-img ARGS and qimg ARGS print the same
# (qemu-img's name replaced) and exit alike.
same_output() {
    local name=$1
    shift
    "$QEMU_IMG" "$@" >want.out 2>&1
    echo "status $?" >>want.out
    "$QIMG" "$@" >got.out 2>&1
    echo "status $?" >>got.out
    sed -i 's/^qemu-img: /qimg: /' want.out
    expect_same "$name" want.out got.out
}

# same_read NAME IMG [FMT]: qimg reads IMG as qemu-img does: raw bytes,
# info (human and json) and map json.
same_read() {
    local name=$1 img=$2 fmt=${3:-vpc}
    rm -f want.raw got.raw
    "$QEMU_IMG" convert -f "$fmt" -O raw "$img" want.raw
    if ! "$QIMG" convert -f "$fmt" -O raw "$img" got.raw 2>got.err; then
        fail "$name: qimg convert" "$(cat got.err)"
        return
    fi
    checks=$((checks + 1))
    files_equal want.raw got.raw || fail "$name: contents differ"
    same_output "$name: info" info -f "$fmt" "$img"
    same_output "$name: info json" info -f "$fmt" --output=json "$img"
    same_output "$name: map json" map -f "$fmt" --output=json "$img"
}

# A patterned raw source: data, zero runs and holes.
truncate -s 7M src.raw
for spec in 0:70000 1M:4096 2M:2M 5M:512 6M:1M; do
    IFS=: read -r off len <<<"$spec"
    head -c "$len" /dev/urandom | dd of=src.raw bs=1M seek="$off" \
        oflag=seek_bytes iflag=fullblock conv=notrunc status=none
done
head -c 7777 /dev/urandom >odd.raw

# ---- create: the Formatting line, messages and bytes ----------------------
same_output "create help" create -f vpc -o help x
for opts in "" subformat=dynamic subformat=fixed force_size=on \
    subformat=fixed,force_size=on force_size=off,preallocation=full \
    subformat=fixed,preallocation=falloc; do
    for size in 0 1000 1M 10M 100M 2040G; do
        # Large fixed images take time to compare; 2040G dynamic ones to
        # create (qemu-img writes their 4 MiB BAT in sectors).
        case $opts,$size in
        *fixed*,100M | *fixed*,2040G | ?*,2040G) continue ;;
        esac
        rm -f want.vhd got.vhd
        "$QEMU_IMG" create -f vpc ${opts:+-o $opts} c.vhd "$size" \
            >want.out 2>&1
        echo "status $?" >>want.out
        mv c.vhd want.vhd
        "$QIMG" create -f vpc ${opts:+-o $opts} c.vhd "$size" >got.out 2>&1
        echo "status $?" >>got.out
        mv c.vhd got.vhd
        sed -i 's/^qemu-img: /qimg: /' want.out
        expect_same "create $opts $size: output" want.out got.out
        same_bytes "create $opts $size: bytes" want.vhd got.vhd
    done
done
for bad in "2041G" "2190433320961" "-o subformat=bogus 1M" \
    "-o force_size=maybe 1M" "-o preallocation=bogus 1M"; do
    rm -f c.vhd
    # shellcheck disable=SC2086
    same_output "create $bad" create -f vpc c.vhd $bad
done

# ---- qemu writes, qimg reads ----------------------------------------------
"$QEMU_IMG" create -q -f vpc dyn.vhd 9M
"$QEMU_IO" -f vpc -c 'write -P 0x11 0 64k' -c 'write -P 0x22 3M 1k' \
    -c 'write -P 0x33 8M 1M' -c 'write -z 4M 4k' dyn.vhd >/dev/null
same_read "qemu-io dynamic" dyn.vhd
"$QEMU_IMG" create -q -f vpc -o subformat=fixed fix.vhd 5M
"$QEMU_IO" -f vpc -c 'write -P 0x44 1M 64k' -c 'write -P 0x55 5000 3' \
    fix.vhd >/dev/null
same_read "qemu-io fixed" fix.vhd
# A fixed VHD is not probed: it is raw unless -f vpc.
same_output "fixed probes raw" info fix.vhd
same_read "fixed as raw" fix.vhd raw
for opts in "" force_size=on subformat=fixed subformat=fixed,force_size=on; do
    for src in src.raw odd.raw; do
        rm -f conv.vhd
        "$QEMU_IMG" convert -O vpc ${opts:+-o $opts} "$src" conv.vhd
        same_read "qemu convert $opts $src" conv.vhd
    done
done
"$QEMU_IMG" create -q -f vpc -o force_size=on empty.vhd 0
same_read "empty" empty.vhd

# ---- qimg writes, qemu reads ----------------------------------------------
for opts in "" force_size=on subformat=fixed subformat=fixed,force_size=on; do
    for src in src.raw odd.raw; do
        rm -f got.vhd want.vhd
        "$QIMG" convert -O vpc ${opts:+-o $opts} "$src" got.vhd
        "$QEMU_IMG" convert -O vpc ${opts:+-o $opts} "$src" want.vhd
        same_output "convert $opts $src: compare" compare -f raw \
            -F vpc "$src" got.vhd
        same_bytes "convert $opts $src: bytes" want.vhd got.vhd
        expect_same "convert $opts $src: info" \
            <("$QEMU_IMG" info -f vpc --output=json want.vhd |
                grep -v actual-size | sed 's/want.vhd/X/') \
            <("$QEMU_IMG" info -f vpc --output=json got.vhd |
                grep -v actual-size | sed 's/got.vhd/X/')
    done
done

# Guest writes through the library and through qemu-io on a copy: the
# same bytes (block allocation order, bitmaps, footer moves).
ops=(w:0:65536:0x11 w:0x2ff000:8192:0x22 f w:0x800000:0x100000:0x33 o
    w:0x10000:512:0x44 z:0x300000:4096 w:0x7ffe00:1024:0x55)
io=(-c 'write -P 0x11 0 65536' -c 'write -P 0x22 0x2ff000 8192'
    -c 'write -P 0x33 0x800000 0x100000' -c 'write -P 0x44 0x10000 512'
    -c 'write -z 0x300000 4096' -c 'write -P 0x55 0x7ffe00 1024')
for opts in "" subformat=fixed; do
    rm -f got.vhd want.vhd
    "$QIMG" create -q -f vpc ${opts:+-o $opts} got.vhd 9M
    cp got.vhd want.vhd
    if ! "$W" got.vhd vpc "${ops[@]}" 2>w.err; then
        fail "write_image $opts" "$(cat w.err)"
        continue
    fi
    "$QEMU_IO" -f vpc "${io[@]}" want.vhd >/dev/null
    same_output "write_image $opts: compare" compare -f vpc -F vpc \
        want.vhd got.vhd
    same_bytes "write_image $opts: bytes" want.vhd got.vhd
    same_read "write_image $opts: read back" got.vhd
done

# ---- sparseness across formats --------------------------------------------
"$QEMU_IMG" convert -O qcow2 dyn.vhd want.qcow2
"$QIMG" convert -O qcow2 dyn.vhd got.qcow2
same_output "vpc->qcow2 compare" compare dyn.vhd got.qcow2
expect_same "vpc->qcow2 map" <(map_layout want.qcow2) <(map_layout got.qcow2)
"$QEMU_IMG" create -q -f qcow2 q.qcow2 9M
"$QEMU_IO" -c 'write -P 0x66 1M 4k' -c 'write -P 0x77 6M 2M' q.qcow2 \
    >/dev/null
rm -f want.vhd got.vhd
"$QEMU_IMG" convert -O vpc q.qcow2 want.vhd
"$QIMG" convert -O vpc q.qcow2 got.vhd
same_output "qcow2->vpc compare" compare q.qcow2 got.vhd
expect_same "qcow2->vpc map" <(map_layout want.vhd) <(map_layout got.vhd)
same_bytes "qcow2->vpc bytes" want.vhd got.vhd

# ---- creator applications and the virtual size ----------------------------
"$QEMU_IMG" create -q -f vpc base.vhd 10M
"$QEMU_IMG" create -q -f vpc -o force_size=on maxgeo.vhd 10M
for app in 76706320 76732020 71656d75 71656d32 77696e20 64327620 \
    43545853 74617000 77610000 74617020 00000000; do
    for img in base maxgeo; do
        cp $img.vhd a.vhd
        # current_size off the geometry, and not sector-aligned.
        patch a.vhd both 28 $app both 48 0000000000a00100
        same_output "creator $app $img" info --output=json a.vhd
    done
done
cp base.vhd a.vhd
patch a.vhd both 56 00ff1011
same_output "geometry" info --output=json a.vhd
cp base.vhd a.vhd
patch a.vhd both 56 ffff10ff both 28 76706320
same_output "max geometry vpc" info --output=json a.vhd

# ---- damaged images: qemu-img's errors ------------------------------------
# damage NAME IMAGE PATCH-ARGS...: info on a patched copy.
damage() {
    local name=$1 base=$2
    shift 2
    cp "$base" bad.vhd
    patch bad.vhd "$@"
    same_output "damaged $name" info bad.vhd
}
damage "footer checksum" base.vhd -n head 64 00000001
damage "both checksums" base.vhd -n both 64 00000001
damage "header checksum (ignored)" base.vhd -n 512 36 00000001
damage "cookie" base.vhd -n head 0 00
cp base.vhd bad.vhd
patch bad.vhd -n head 0 00
same_output "damaged cookie -f vpc" info -f vpc bad.vhd
damage "size 2041G" maxgeo.vhd both 48 0000020000000000
damage "size 2040G" maxgeo.vhd both 48 000001FE00000000
damage "header offset huge" base.vhd both 16 7000000000000000
damage "header offset past end" base.vhd both 16 0000000000100000
damage "header offset near 2^63" base.vhd both 16 7fffffffffffff00
damage "header offset wraps" base.vhd both 16 ffffffffffffff00
damage "disk type 4" base.vhd both 60 00000004
damage "disk type fixed" base.vhd both 60 00000002
# (0x80000000 is left out: qemu-img prints that cluster size as a negative
# int, qimg as it is.)
for bs in 00000000 00000100 00000200 00300000; do
    damage "block size $bs" base.vhd 512 32 $bs
done
for n in 00000004 00000005 00000400 1fffffff 20000000 7fffffff ffffffff; do
    damage "table entries $n" base.vhd 512 28 $n
done
damage "table offset huge" base.vhd 512 16 7000000000000000
damage "table offset overlaps header" base.vhd 512 16 0000000000000200
damage "table offset wraps" base.vhd 512 16 ffffffffffffff00
damage "table offset past end" base.vhd 512 16 0000000000100000
damage "BAT entry 0" base.vhd 1536 0 00000000
damage "BAT entry past end" base.vhd 1536 0 00100000
cp base.vhd bad.vhd
patch bad.vhd 1536 0 00000001
truncate -s 4M bad.vhd
same_output "BAT entry 1 in a long file" info bad.vhd
same_read "BAT entry 1 in a long file" bad.vhd
head -c 100 /dev/zero >tiny.vhd
same_output "tiny file" info -f vpc tiny.vhd
printf conectix >tiny.vhd
same_output "tiny cookie" info tiny.vhd
same_output "vpc has no check" check -f vpc base.vhd

# ---- damaged BAT entries: no write over the metadata ----------------------
# A block placed on the footer copy, the dynamic header or the BAT: the
# write is refused and the file left as it was (qemu-io writes the block's
# bitmap and the data over them).
"$QEMU_IMG" create -q -f vpc meta.vhd 16M
"$QEMU_IO" -f vpc -c 'write -q -P 0x11 0 64k' meta.vhd || fail "qemu-io meta"
for c in "0:the footer copy" "1:the dynamic header" "3:the BAT"; do
    IFS=: read -r sector what <<<"$c"
    cp meta.vhd bad.vhd
    patch bad.vhd -n 1536 4 "$(printf '%08x' "$sector")"
    cp bad.vhd before.vhd
    expect_status "block on $what: write" 1 "$W" bad.vhd vpc \
        w:2097152:512:90
    checks=$((checks + 1))
    grep -q "VHD image is corrupt: the block at offset $((sector * 512)) lies on $what\$" \
        "$T/.err" || fail "block on $what: message" "$(cat "$T/.err")"
    checks=$((checks + 1))
    cmp -s before.vhd bad.vhd || fail "block on $what: the file changed"
done

# ---- what vpc does not do, in qemu-img's words ----------------------------
cp base.vhd r.vhd
same_output "no resize" resize -f vpc r.vhd 20M
same_output "no amend" amend -f vpc -o force_size=on r.vhd
same_output "no measure" measure -O vpc --size 10M
rm -f bb.vhd
same_output "no backing file" create -f vpc -b base.vhd -F vpc bb.vhd
same_output "measure from vpc" measure -O qcow2 dyn.vhd
"$QEMU_IMG" convert -O raw dyn.vhd dyn.raw
same_output "compare -s" compare -s dyn.vhd dyn.raw
same_output "compare" compare dyn.vhd dyn.raw

finish
