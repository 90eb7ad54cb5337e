#!/bin/bash
# VMDK seSparse extents against qemu-img 7.2: images built by
# sesparse_tool.py (qemu-img cannot create them) with grain tables and
# grains out of order, zero, unmapped and unallocated grains, read by qimg
# as qemu-img reads them (convert -O raw, info human and json, map json);
# damaged headers and table entries give qemu-img's messages and exit
# codes, and writable opens are refused with qemu-img's words.
. "$QIMG_SRCDIR/tests/functions.sh"
cd "$T"
TOOL="python3 $QIMG_SRCDIR/tests/compat/sesparse_tool.py"
MiB=1048576

io() { "$QEMU_IO" "$@" >/dev/null || fail "qemu-io $*"; }

# patch FILE OFFSET VALUE: overwrite a little-endian 64-bit field.
patch() {
    local v=$(($3)) i bytes=
    for ((i = 0; i < 8; i++)); do
        bytes+=$(printf '\\x%02x' $(((v >> (8 * i)) & 0xff)))
    done
    printf "$bytes" | dd of="$1" bs=1 seek=$(($2)) conv=notrunc status=none
}

# 40 MiB + 512: three grain tables' worth, the middle one empty, data in
# unaligned pieces and a partial last grain.
truncate -s $((40 * MiB + 512)) pattern.raw
io -f raw -c 'write -P 0x17 0 4k' -c 'write -P 0x93 8k 60k' \
    -c 'write -P 0xab 1052672 1k' -c 'write -P 0x5c 34000000 5k' \
    -c 'write -P 0x01 41943040 512' pattern.raw

$TOOL se.vmdk pattern.raw || fail "make se.vmdk"
same_read "sesparse" se.vmdk
files_equal want.raw pattern.raw || fail "sesparse: not the pattern"
same_out "sesparse check" check se.vmdk

# Grain indexes below 4096 (no high part), spare grain tables, and a
# small image of one partial grain.
$TOOL low.vmdk pattern.raw --grain-base 0 --spare-gts 3 ||
    fail "make low.vmdk"
same_read "sesparse low" low.vmdk
truncate -s 1536 small.raw
io -f raw -c 'write -P 0x42 512 512' small.raw
$TOOL small.vmdk small.raw || fail "make small.vmdk"
same_read "sesparse small" small.vmdk

# Writable opens are refused (qemu-img: no auto-read-only here).
same_out "sesparse resize" resize se.vmdk 50M
same_out "sesparse commit" commit se.vmdk
same_out "sesparse amend" amend -o compat6=on se.vmdk

# ---- damaged extents -----------------------------------------------------

cp se-sesparse.vmdk orig.ext
# The const header fields (offsets in the extent), the volatile header
# (sector 1), the directory size, and sector offsets that wrap or run
# past the largest request.
for damage in "0 0x1234" "8 0x300000001" "24 16" "32 128" "40 1" \
    "48 1" "72 5" "208 1" "504 7" "80 4000000" "512 0" "536 1" "544 9" \
    "1016 9" "136 0x1000000" "136 0x4000000" "128 0x100000000000000" \
    "80 0x100000000000000" "80 0x40000000000000" "128 0x40000000000000"; do
    cp orig.ext se-sesparse.vmdk
    patch se-sesparse.vmdk $damage
    same_out "sesparse header $damage" info se.vmdk
done

# Directory (sector 8) and table (sector 9) entries: map gives qemu-img's
# words; convert fails as well (qimg names the bad entry).
for damage in "4096 0x2000000000000000" "4096 0x10000000ffffffff" \
    "4608 0x5" "4608 0x4000000000000000"; do
    cp orig.ext se-sesparse.vmdk
    patch se-sesparse.vmdk $damage
    same_out "sesparse entry $damage: map" map --output=json se.vmdk
    rm -f got.raw
    expect_status "sesparse entry $damage: convert" 1 "$QIMG" convert \
        -O raw se.vmdk got.raw
done
# A grain index so large that the host offset wraps back into the file.
cp orig.ext se-sesparse.vmdk
patch se-sesparse.vmdk 4616 0x3fffffffffffffff
same_read "sesparse wrapped grain" se.vmdk

# A truncated extent reads zeros past its end, as qemu-img does.
cp orig.ext se-sesparse.vmdk
truncate -s 40000 se-sesparse.vmdk
same_read "sesparse truncated" se.vmdk

echo "$checks checks"
finish
