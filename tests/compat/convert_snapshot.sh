#!/bin/bash
# qimg convert -l (internal snapshots) against qemu-img convert -l: the
# bytes of every snapshot, qemu-img's option parsing and its messages.
. "$QIMG_SRCDIR/tests/functions.sh"
cd "$T"

io() {
    "$QEMU_IO" -c "$2" "$1" >/dev/null || fail "qemu-io $2 on $1"
}
snap() {
    "$QEMU_IMG" snapshot -c "$2" "$1" || fail "snapshot -c $2 on $1"
}

# A chain of snapshots with data written after each: snapshot names that
# are also ids of other snapshots ("2" is the name of id 1), zero clusters,
# compressed clusters and a partial last cluster.
"$QEMU_IMG" create -q -f qcow2 s.qcow2 9000k
io s.qcow2 "write -P 1 0 1M"
snap s.qcow2 2
io s.qcow2 "write -P 2 512k 1M"
io s.qcow2 "write -z 4M 1M"
snap s.qcow2 first
io s.qcow2 "write -P 3 2M 3M"
io s.qcow2 "discard 0 64k"
snap s.qcow2 first
io s.qcow2 "write -c -P 4 6M 64k"
io s.qcow2 "write -P 5 8990k 10k"
snap s.qcow2 "with space"
io s.qcow2 "write -P 6 0 9000k"

# The same image grown after its first snapshot: the snapshot's L1 table
# is shorter than the current size needs; the guest size stays current.
"$QEMU_IMG" create -q -f qcow2 r.qcow2 8M
io r.qcow2 "write -P 7 0 8M"
snap r.qcow2 small
"$QEMU_IMG" resize -q r.qcow2 1536M
io r.qcow2 "write -P 8 1100M 1M"
snap r.qcow2 big

# An overlay with snapshots over a backing file.
"$QEMU_IMG" create -q -f qcow2 base.qcow2 4M
io base.qcow2 "write -P 9 0 4M"
"$QEMU_IMG" create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
snap top.qcow2 empty
io top.qcow2 "write -P 10 1M 1M"
snap top.qcow2 one
io top.qcow2 "write -z 0 4M"

# Extended L2 entries (subclusters), a v2 image (snapshot entries without
# disk size), and 512-byte and 2 MiB clusters.
for opts in extended_l2=on,cluster_size=64k compat=0.10 cluster_size=512 \
    cluster_size=2M; do
    f=o-${opts//[=,]/-}.qcow2
    "$QEMU_IMG" create -q -f qcow2 -o "$opts" "$f" 5M
    io "$f" "write -P 11 4k 12k"
    snap "$f" a
    io "$f" "write -P 12 8k 3M"
    io "$f" "write -z 1M 1M"
    snap "$f" b
    io "$f" "write -P 13 0 5M"
done

# conv NAME ARGS...: convert with both tools; output, status and bytes.
conv() {
    local name=$1
    shift
    rm -f want.img got.img
    "$QEMU_IMG" convert "$@" want.img >want.out 2>want.err
    echo "status $?" >>want.out
    "$QIMG" convert "$@" got.img >got.out 2>got.err
    echo "status $?" >>got.out
    sed -i 's/qemu-img/qimg/g' want.err
    expect_same "$name: stdout" want.out got.out
    expect_same "$name: stderr" want.err got.err
    if [ -e want.img ] || [ -e got.img ]; then
        checks=$((checks + 1))
        files_equal want.img got.img || fail "$name: contents differ"
    fi
}

for l in 1 2 3 4 first "with space" 2 snapshot.id=1 snapshot.id=2 \
    snapshot.name=2 snapshot.name=first "snapshot.name=with space" \
    snapshot.id=3,snapshot.name=first snapshot.name=first,snapshot.id=2 \
    "snapshot.id=9,snapshot.id=4" snapshot.id=1,id=x1; do
    conv "s -l $l" -O raw -l "$l" s.qcow2
done
conv "s -f qcow2 -l" -f qcow2 -l 3 s.qcow2
conv "s -S 0 -l" -S 0 -l first s.qcow2
conv "s -U -l" -U -l 2 s.qcow2
conv "s last -l wins" -l 1 -l 4 s.qcow2
conv "s snapshot. wins" -l snapshot.id=1 -l 4 s.qcow2
conv "r small" -l small r.qcow2
conv "r big" -l big r.qcow2
for f in o-*.qcow2; do
    conv "$f a" -l a "$f"
    conv "$f b" -l snapshot.name=b "$f"
done
conv "top empty" -l empty top.qcow2
conv "top one" -l one top.qcow2

# Errors: qemu-img's messages, in its order, and nothing left behind.
conv "no such id" -l snapshot.id=7 s.qcow2
conv "no such name" -l snapshot.name=nothere s.qcow2
conv "no such id or name" -l nothere s.qcow2
conv "id and name disagree" -l snapshot.id=1,snapshot.name=first s.qcow2
conv "empty" -l "" s.qcow2
conv "empty id" -l snapshot.id= s.qcow2
conv "escaped comma" -l "snapshot.name=fir,,st" s.qcow2
conv "trailing comma" -l "snapshot.name=first," s.qcow2
conv "invalid parameter" -l snapshot.foo=1 s.qcow2
conv "invalid before other errors" -l snapshot.foo=1 -m 0 s.qcow2
conv "bare prefix" -l snapshot. s.qcow2
conv "flag" -l snapshot.id s.qcow2
conv "no-flag" -l "snapshot.id=1,nosnapshot.name" s.qcow2
conv "flag invalid" -l "snapshot.id=1,foo" s.qcow2
conv "empty key" -l "snapshot.id=1,=x" s.qcow2
conv "help" -l "snapshot.id=1,help" s.qcow2
conv "?" -l "snapshot.id=1,?" s.qcow2
conv "invalid then help" -l "snapshot.help=x,help" s.qcow2
conv "bad list id" -l "snapshot.id=1,id=_x" s.qcow2
conv "empty list id" -l "snapshot.id=1,id=" s.qcow2
conv "duplicate list id" -l snapshot.name=a,id=x -l snapshot.id=1,id=x \
    s.qcow2
conv "two sources" -l 1 s.qcow2 s.qcow2
# With snapshot.id/name, several sources are allowed: the first is read
# at the snapshot, the others as they are now.
conv "two sources snapshot." -l snapshot.id=1 s.qcow2 r.qcow2
conv "two sources snapshot. name" -l snapshot.name=small r.qcow2 s.qcow2
conv "two sources snapshot. not first" -l snapshot.name=small s.qcow2 \
    r.qcow2
conv "two sources both forms" -l 1 -l snapshot.id=1 s.qcow2 top.qcow2
conv "raw source" -f raw -l 1 s.qcow2
# qemu-img 7.2's convert has no -s (the old snapshot option) any more.
conv "-s refused" -s 1 s.qcow2
conv "missing source" -l 1 nothere.qcow2
conv "no snapshots" -l 1 base.qcow2

# Hostile snapshot tables: the L1 table of snapshot 1 moved off a cluster
# boundary, made too large, put past what can be read, or emptied.
patch() {
    python3 - "$@" <<'PY'
import struct, sys
src, dst, field, value = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4], 0)
d = bytearray(open(src, 'rb').read())
sn = struct.unpack('>Q', d[64:72])[0]
if field == 'off':
    d[sn:sn + 8] = struct.pack('>Q', value)
else:
    d[sn + 8:sn + 12] = struct.pack('>I', value)
open(dst, 'wb').write(d)
PY
}
l1=$(python3 -c "import struct; d=open('s.qcow2','rb').read(); \
sn=struct.unpack('>Q',d[64:72])[0]; print(struct.unpack('>Q',d[sn:sn+8])[0])")
patch s.qcow2 h-unaligned.qcow2 off $((l1 + 8))
patch s.qcow2 h-large.qcow2 size 0x400001
patch s.qcow2 h-far.qcow2 off 0x7fffffffffff0000
patch s.qcow2 h-end.qcow2 off 0x7ffffffffffe0000
patch s.qcow2 h-past.qcow2 off 0x10000000
patch s.qcow2 h-empty.qcow2 size 0
for h in unaligned large far end past empty; do
    conv "hostile $h by id" -l snapshot.id=1 "h-$h.qcow2"
    conv "hostile $h by id or name" -l 1 "h-$h.qcow2"
    conv "hostile $h by name" -l 2 "h-$h.qcow2"
done

finish
