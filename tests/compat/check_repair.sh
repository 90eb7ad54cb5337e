#!/bin/bash
# qimg check -r leaks / -r all against qemu-img 7.2: for each kind of
# damage (made by patching bytes, as QEMU's iotests do), qemu-img repairs
# one copy and qimg another.  stdout, stderr and the exit status must be
# qemu-img's (human, json and quiet output), and the two repaired files
# must be identical byte for byte (so qemu-img check is clean on qimg's
# copy wherever it is on qemu-img's, and the guest data compares equal).
. "$QIMG_SRCDIR/tests/functions.sh"
cd "$T"

mk() { "$QEMU_IMG" create -q "$@" >/dev/null || fail "qemu-img create $*"; }
io() { "$QEMU_IO" "$@" >/dev/null || fail "qemu-io $*"; }

# patch FILE OFFSET VALUE [WIDTH]: store a big-endian integer.
patch() {
    python3 - "$@" <<'PY'
import sys
f, off, val = sys.argv[1], int(sys.argv[2], 0), int(sys.argv[3], 0)
width = int(sys.argv[4]) if len(sys.argv) > 4 else 8
with open(f, 'r+b') as fh:
    fh.seek(off)
    fh.write(val.to_bytes(width, 'big'))
PY
}

# repair NAME MODE FILE [ARGS...]: "check -r MODE ARGS" on a copy each;
# then qemu-img check and qemu-img compare judge qimg's copy.
case_nr=0
repair() {
    local name=$1 mode=$2 src=$3
    shift 3
    case_nr=$((case_nr + 1))
    local c=case$case_nr
    cp "$src" "$c.qcow2"
    cp "$src" "$c.want.qcow2"
    "$QEMU_IMG" check -r "$mode" "$@" "$c.want.qcow2" \
        >"$c.want.out" 2>"$c.want.err"
    echo "exit $?" >>"$c.want.out"
    "$QIMG" check -r "$mode" "$@" "$c.qcow2" >"$c.got.out" 2>"$c.got.err"
    echo "exit $?" >>"$c.got.out"
    # The file names differ only by ".want".
    sed -i 's/\.want\.qcow2/.qcow2/g' "$c.want.out" "$c.want.err"
    sed -i 's/^qimg: /qemu-img: /' "$c.got.err"
    expect_same "$name (-r $mode $*): stdout and status" \
        "$c.want.out" "$c.got.out"
    expect_same "$name (-r $mode $*): stderr" "$c.want.err" "$c.got.err"
    checks=$((checks + 1))
    if ! files_equal "$c.want.qcow2" "$c.qcow2"; then
        fail "$name (-r $mode $*): repaired files differ" \
            "$(cmp -l "$c.want.qcow2" "$c.qcow2" | head -10)"
    fi
    # Where qemu-img repaired its copy, qemu-img check finds qimg's
    # clean; elsewhere it judges both copies alike.
    local want=0
    if [ "$(tail -n 1 "$c.want.out")" != "exit 0" ]; then
        "$QEMU_IMG" check "$c.want.qcow2" >/dev/null 2>&1
        want=$?
    fi
    expect_status "$name (-r $mode $*): qemu-img check of the result" \
        "$want" "$QEMU_IMG" check "$c.qcow2"
    # Where qemu-img can still read its copy, the guest data must match.
    if "$QEMU_IMG" compare -q "$c.want.qcow2" "$c.want.qcow2" \
        >/dev/null 2>&1; then
        expect_status "$name (-r $mode $*): same guest data as qemu-img's" \
            0 "$QEMU_IMG" compare -q "$c.want.qcow2" "$c.qcow2"
    fi
    rm -f "$c.qcow2" "$c.want.qcow2"
}

# every NAME FILE: both modes, human, json and quiet.
every() {
    local m
    for m in leaks all; do
        repair "$1" $m "$2"
        repair "$1" $m "$2" --output=json
        repair "$1" $m "$2" -q
    done
}

# A 1 MiB image, 64 KiB clusters: header 0, refcount table 0x10000,
# refcount block 0x20000 (16-bit entries), L1 0x30000, L2 0x40000, data
# clusters 0x50000 (guest 0) and 0x60000 (guest 256k).
fresh() {
    rm -f "$1"
    mk -f qcow2 "$1" 1M
    io -c 'write -P 1 0 64k' -c 'write -P 2 256k 64k' "$1"
}
L1=0x30000
L2=0x40000
RB=0x20000

fresh clean.qcow2
every "clean image" clean.qcow2

fresh leak.qcow2
truncate -s $((9 * 65536)) leak.qcow2
patch leak.qcow2 $((RB + 2 * 8)) 1 2
every "leaked cluster" leak.qcow2

fresh refcount2.qcow2
patch refcount2.qcow2 $((RB + 2 * 5)) 2 2
every "refcount too high (leak and COPIED)" refcount2.qcow2

fresh low.qcow2
"$QEMU_IMG" snapshot -c s1 low.qcow2
io -c 'write -P 3 0 64k' low.qcow2
# Cluster 5 is shared by the snapshot (refcount 2): make it 1.
patch low.qcow2 $((RB + 2 * 6)) 1 2
every "refcount too low" low.qcow2

fresh refcount0.qcow2
patch refcount0.qcow2 $((RB + 2 * 5)) 0 2
every "refcount 0 on a used cluster" refcount0.qcow2

fresh copied-data.qcow2
patch copied-data.qcow2 $L2 0x50000
every "COPIED missing on a data cluster" copied-data.qcow2
fresh copied-l2.qcow2
patch copied-l2.qcow2 $L1 0x40000
every "COPIED missing on an L2 table" copied-l2.qcow2

fresh norb.qcow2
patch norb.qcow2 0x10000 0
every "refcount block missing" norb.qcow2

fresh rb-outside.qcow2
patch rb-outside.qcow2 0x10008 0x900000
every "refcount block outside the image" rb-outside.qcow2
fresh rb-shared.qcow2
patch rb-shared.qcow2 0x10008 0x20000
every "refcount block listed twice" rb-shared.qcow2
# qemu-img 7.2 puts the new block where the bad entry points and its
# overlap check stops it: the image is marked corrupt, exit 1.
fresh rt-reserved.qcow2
patch rt-reserved.qcow2 0x10000 0x20001
every "refcount table entry with reserved bits" rt-reserved.qcow2
fresh rb-unaligned.qcow2
patch rb-unaligned.qcow2 0x10000 0x20200
every "unaligned refcount block" rb-unaligned.qcow2

# -r all turns an unaligned preallocated zero cluster into a plain one.
fresh zero-unaligned.qcow2
patch zero-unaligned.qcow2 $L2 0x8000000000050201
every "unaligned preallocated zero cluster" zero-unaligned.qcow2
rm -f el2.qcow2
mk -f qcow2 -o extended_l2=on el2.qcow2 1M
io -c 'write -P 1 0 64k' -c 'write -z 128k 64k' el2.qcow2
patch el2.qcow2 $((L2 + 32)) 0x8000000000060200
every "extended L2: unaligned preallocated zero cluster" el2.qcow2
# Not repaired by QEMU: reported again after the repairs.
fresh data-unaligned.qcow2
patch data-unaligned.qcow2 $L2 0x8000000000050200
every "unaligned data cluster" data-unaligned.qcow2
fresh l2-shared.qcow2
"$QEMU_IMG" resize -q l2-shared.qcow2 1G
patch l2-shared.qcow2 $((L1 + 8)) 0x8000000000040000
every "two L1 entries share an L2 table" l2-shared.qcow2

# Compressed clusters, v2 images, external data files.
rm -f comp.qcow2
mk -f qcow2 comp.qcow2 4M
io -c 'write -c -P 7 0 64k' -c 'write -c -P 8 64k 64k' -c 'write -P 1 1M 64k' \
    comp.qcow2
patch comp.qcow2 $((RB + 2 * 5)) 0 2
every "compressed clusters, rebuild" comp.qcow2
rm -f v2.qcow2
mk -f qcow2 -o compat=0.10 v2.qcow2 4M
io -c 'write -P 5 64k 300k' v2.qcow2
cp v2.qcow2 v2-rebuild.qcow2
patch v2-rebuild.qcow2 $((RB + 2 * 5)) 0 2
every "compat=0.10, rebuild" v2-rebuild.qcow2
patch v2.qcow2 $((RB + 2 * 5)) 2 2
every "compat=0.10, leak" v2.qcow2
rm -f df.qcow2 ext.data
mk -f qcow2 -o data_file=ext.data df.qcow2 4M
io -c 'write -P 1 0 128k' df.qcow2
patch df.qcow2 $((L2 + 8)) 0x10000
every "data file: COPIED missing" df.qcow2

fresh rsv0.qcow2
patch rsv0.qcow2 $L2 0x8000000000050002
patch rsv0.qcow2 $((RB + 2 * 5)) 0 2
every "rebuild that leaves an L2 entry with reserved bits" \
    rsv0.qcow2

fresh leak-rebuild.qcow2
truncate -s $((9 * 65536)) leak-rebuild.qcow2
patch leak-rebuild.qcow2 $((RB + 2 * 8)) 1 2
patch leak-rebuild.qcow2 $((RB + 2 * 5)) 0 2
every "leak and rebuild" leak-rebuild.qcow2

# A data cluster one cluster past the end of the file (cluster 8; the
# file has 7) is not counted, and a refcount of 0 makes -r all rebuild:
# the new block (cluster 7) and table (cluster 8) grow the file over it,
# so the count after the rebuild finds cluster 8 referenced twice ("still
# broken"), and so does the double check.  A repair result that said
# nothing was left was the fuzz finding regress/qcow2/
# rebuild-grows-over-uncounted-cluster.qcow2.  With the corrupt bit set,
# QEMU clears it all the same.
fresh past-eof-rebuild.qcow2
patch past-eof-rebuild.qcow2 $((L2 + 16)) 0x8000000000080000
patch past-eof-rebuild.qcow2 $((RB + 2 * 5)) 0 2
every "rebuild grows the file over an uncounted cluster" \
    past-eof-rebuild.qcow2
patch past-eof-rebuild.qcow2 72 2
every "rebuild grows the file over an uncounted cluster, corrupt bit" \
    past-eof-rebuild.qcow2

fresh corrupt.qcow2
patch corrupt.qcow2 72 2
every "corrupt bit set" corrupt.qcow2
fresh corrupt-leak.qcow2
truncate -s $((9 * 65536)) corrupt-leak.qcow2
patch corrupt-leak.qcow2 $((RB + 2 * 8)) 1 2
patch corrupt-leak.qcow2 72 2
every "corrupt bit and a leak" corrupt-leak.qcow2

# Lazy refcounts, killed before the refcounts were written: dirty, and
# the new clusters have refcount 0.
lazy() {
    rm -f "$1"
    mk -f qcow2 -o lazy_refcounts=on,$2 "$1" "$3"
    ( "$QEMU_IO" -c "$4" -c 'sigraise 9' "$1"; true ) >/dev/null 2>&1
}
lazy lazy.qcow2 cluster_size=64k 4M 'write -P 1 0 128k'
every "dirty lazy refcounts image" lazy.qcow2
lazy lazy4k.qcow2 cluster_size=4k 64M 'write -P 1 0 10M'
every "dirty lazy refcounts image, 4k clusters" lazy4k.qcow2
lazy lazy-clean.qcow2 cluster_size=64k 4M 'read 0 64k'
every "dirty bit, nothing else" lazy-clean.qcow2

# A writable open repairs a dirty image (unless it is opened for a
# check): qemu-io's open and qimg's must leave the same bytes.
open_repair() {
    local name=$1 src=$2
    cp "$src" "$src.qemu"
    cp "$src" "$src.qimg"
    "$QEMU_IO" -c 'read 0 512' "$src.qemu" >/dev/null 2>&1 ||
        fail "$name: qemu-io could not open $src"
    expect_status "$name: qimg's writable open" 0 "$QIMG_OPEN_RW" \
        "$src.qimg"
    checks=$((checks + 1))
    if ! files_equal "$src.qemu" "$src.qimg"; then
        fail "$name: the open repaired differently" \
            "$(cmp -l "$src.qemu" "$src.qimg" | head -10)"
    fi
    expect_status "$name: qemu-img check clean afterwards" 0 \
        "$QEMU_IMG" check "$src.qimg"
    rm -f "$src.qemu" "$src.qimg"
}
open_repair "open repairs a dirty lazy refcounts image" lazy.qcow2
open_repair "open repairs a dirty image, 4k clusters" lazy4k.qcow2
open_repair "open clears a dirty bit" lazy-clean.qcow2
fresh dirty-leak.qcow2
truncate -s $((9 * 65536)) dirty-leak.qcow2
patch dirty-leak.qcow2 $((RB + 2 * 8)) 1 2
patch dirty-leak.qcow2 72 1
open_repair "open repairs a dirty image without lazy refcounts" \
    dirty-leak.qcow2
# Read-only opens (and check without -r) leave it alone.
cp lazy.qcow2 lazy-ro.qcow2
"$QIMG" info lazy-ro.qcow2 >/dev/null 2>&1
"$QIMG" check lazy-ro.qcow2 >/dev/null 2>&1
checks=$((checks + 1))
files_equal lazy.qcow2 lazy-ro.qcow2 || fail "a read-only open changed a dirty image"

# Rebuilds over many blocks, every refcount width.
for rb in 1 2 4 8 16 32 64; do
    rm -f w$rb.qcow2
    mk -f qcow2 -o cluster_size=512,refcount_bits=$rb w$rb.qcow2 20M
    io -c 'write -P 1 0 3M' -c 'write -P 2 10M 1M' w$rb.qcow2
    patch w$rb.qcow2 0x200 0
    repair "rebuild, refcount_bits=$rb" all w$rb.qcow2
done

# Snapshots: their clusters are shared.
rm -f sn.qcow2
mk -f qcow2 sn.qcow2 4M
io -c 'write -P 1 0 128k' sn.qcow2
"$QEMU_IMG" snapshot -c s1 sn.qcow2
io -c 'write -P 2 64k 128k' sn.qcow2
cp sn.qcow2 sn0.qcow2
patch sn0.qcow2 $((RB + 2 * 5)) 0 2
every "snapshots, refcount 0" sn0.qcow2
cp sn.qcow2 sn3.qcow2
patch sn3.qcow2 $((RB + 2 * 5)) 3 2
every "snapshots, refcount too high" sn3.qcow2

# v3 snapshot table entries with less than 16 bytes of extra data (no
# vm_state_size_large or disk_size): -r all rewrites the table with
# complete entries ("Repairing snapshot table entry N is incomplete").
# strip_extra FILE KEEP: keep KEEP bytes of every entry's extra data.
strip_extra() {
    python3 - "$@" <<'PY'
import struct, sys
f, keep = sys.argv[1], int(sys.argv[2])
b = bytearray(open(f, 'rb').read())
nb, off = struct.unpack('>IQ', b[60:72])
p, out = off, bytearray()
for i in range(nb):
    h = b[p:p + 40]
    ids, names = struct.unpack('>HH', h[12:16])
    ext = struct.unpack('>I', h[36:40])[0]
    tail = b[p + 40 + ext:p + 40 + ext + ids + names]
    ent = h[:36] + struct.pack('>I', min(keep, ext)) + \
        b[p + 40:p + 40 + min(keep, ext)] + tail
    out += ent + b'\0' * (-len(ent) % 8)
    p += 40 + ext + ids + names
    p += -p % 8
b[off:p] = out + b'\0' * (p - off - len(out))
open(f, 'wb').write(b)
PY
}
rm -f sn-inc.qcow2
mk -f qcow2 sn-inc.qcow2 4M
io -c 'write -P 1 0 128k' sn-inc.qcow2
"$QEMU_IMG" snapshot -c s1 sn-inc.qcow2
io -c 'write -P 2 64k 128k' sn-inc.qcow2
"$QEMU_IMG" snapshot -c s2 sn-inc.qcow2
cp sn-inc.qcow2 sn-inc8.qcow2
strip_extra sn-inc.qcow2 0
every "incomplete snapshot table entries" sn-inc.qcow2
strip_extra sn-inc8.qcow2 8
every "snapshot table entries without disk_size" sn-inc8.qcow2
cp sn-inc.qcow2 sn-inc-leak.qcow2
truncate -s $((12 * 65536)) sn-inc-leak.qcow2
patch sn-inc-leak.qcow2 $((RB + 2 * 11)) 1 2
every "incomplete snapshot entries and a leak" sn-inc-leak.qcow2
cp sn-inc.qcow2 sn-inc-rebuild.qcow2
patch sn-inc-rebuild.qcow2 $((RB + 2 * 5)) 0 2
every "incomplete snapshot entries and a rebuild" sn-inc-rebuild.qcow2
cp sn-inc.qcow2 sn-inc-corrupt.qcow2
patch sn-inc-corrupt.qcow2 72 2
every "incomplete snapshot entries, corrupt bit" sn-inc-corrupt.qcow2
# Not repaired by QEMU: the L2 entry stays, the table is still rewritten.
cp sn-inc.qcow2 sn-inc-rsv.qcow2
patch sn-inc-rsv.qcow2 $((L2 + 8)) 0x8000000000060002
every "incomplete snapshot entries and an unrepairable L2 entry" \
    sn-inc-rsv.qcow2
rm -f sn-inc-lazy.qcow2
mk -f qcow2 -o lazy_refcounts=on sn-inc-lazy.qcow2 4M
io -c 'write -P 1 0 128k' sn-inc-lazy.qcow2
"$QEMU_IMG" snapshot -c s1 sn-inc-lazy.qcow2
strip_extra sn-inc-lazy.qcow2 0
( "$QEMU_IO" -c 'write -P 3 1M 128k' -c 'sigraise 9' sn-inc-lazy.qcow2
  true ) >/dev/null 2>&1
every "incomplete snapshot entries, dirty lazy refcounts" sn-inc-lazy.qcow2
# The repaired table: complete entries, the same snapshots.
cp sn-inc.qcow2 sn-inc-fixed.qcow2
"$QIMG" check -q -r all sn-inc-fixed.qcow2 >/dev/null 2>&1
"$QEMU_IMG" snapshot -l sn-inc.qcow2 >sn-inc.want
"$QEMU_IMG" snapshot -l sn-inc-fixed.qcow2 >sn-inc.got
expect_same "snapshot -l after the repair" sn-inc.want sn-inc.got
expect_status "qemu-img check clean after the repair" 0 \
    "$QEMU_IMG" check sn-inc-fixed.qcow2
# A writable open leaves incomplete entries alone, as QEMU's.
cp sn-inc.qcow2 sn-inc-open.qcow2
expect_status "writable open of incomplete entries" 0 "$QIMG_OPEN_RW" \
    sn-inc-open.qcow2
checks=$((checks + 1))
files_equal sn-inc.qcow2 sn-inc-open.qcow2 ||
    fail "a writable open rewrote incomplete snapshot entries"

# ---- The command line ----------------------------------------------------

same_cli() {
    local name=$1
    shift
    case_nr=$((case_nr + 1))
    local c=case$case_nr
    "$QEMU_IMG" check "$@" >"$c.want.out" 2>"$c.want.err"
    echo "exit $?" >>"$c.want.out"
    "$QIMG" check "$@" >"$c.got.out" 2>"$c.got.err"
    echo "exit $?" >>"$c.got.out"
    sed -i 's/^qimg: /qemu-img: /' "$c.got.err"
    expect_same "$name: stdout and status" "$c.want.out" "$c.got.out"
    expect_same "$name: stderr" "$c.want.err" "$c.got.err"
}
cp leak.qcow2 u.qcow2
same_cli "-r with -U" -r all -U u.qcow2
same_cli "-r with --force-share" -r leaks --force-share u.qcow2
checks=$((checks + 1))
files_equal leak.qcow2 u.qcow2 || fail "-r -U changed the image"

# An image in use by another process: -r needs the write lock.
"$QEMU_IO" -r -c 'sleep 4000' u.qcow2 >/dev/null 2>&1 &
holder=$!
sleep 1
same_cli "-r on an image open elsewhere" -r leaks u.qcow2
wait "$holder"
checks=$((checks + 1))
files_equal leak.qcow2 u.qcow2 || fail "-r on a locked image changed it"

finish
