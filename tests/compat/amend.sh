#!/bin/bash
# qimg amend against qemu-img amend: for each option change, on images
# with data, zero clusters, compressed clusters, snapshots and backing
# files, qemu-img amends one copy and qimg another.  stdout, stderr and
# the exit status must be equal; after a success qimg's copy must check
# clean, read the same as qemu-img's copy, and have the same virtual size
# and format-specific info.
. "$QIMG_SRCDIR/tests/functions.sh"
cd "$T"

mk() { "$QEMU_IMG" create -q "$@" >/dev/null || fail "qemu-img create $*"; }
io() { "$QEMU_IO" "$@" >/dev/null || fail "qemu-io $*"; }

# The info fields an amendment may change.
info_fields() {
    "$QEMU_IMG" info --output=json "$1" | python3 -c '
import json, sys
d = json.load(sys.stdin)
print(d["virtual-size"], d.get("backing-filename"),
      json.dumps(d.get("format-specific"), sort_keys=True),
      d.get("dirty-flag"), len(d.get("snapshots", [])))'
}

# same NAME IMAGE ARGS...: amend copies of IMAGE (its files: IMAGE, and
# IMAGE.data when it has a data file) with both programs.
case_nr=0
same() {
    local name=$1 img=$2
    shift 2
    case_nr=$((case_nr + 1))
    local c=case$case_nr
    cp "$img" "$c.want.qcow2"
    cp "$img" "$c.got.qcow2"
    "$QEMU_IMG" amend "$@" "$c.want.qcow2" >"$c.want.out" 2>"$c.want.err"
    echo "exit $?" >>"$c.want.out"
    "$QIMG" amend "$@" "$c.got.qcow2" >"$c.got.out" 2>"$c.got.err"
    local st=$?
    echo "exit $st" >>"$c.got.out"
    sed -i "s/^qimg: /qemu-img: /; s/qimg --help/qemu-img --help/;
            s/'qimg rebase'/'qemu-img rebase'/; s/$c\.got/$c.want/g" \
        "$c.got.err"
    expect_same "$name: stdout and status" "$c.want.out" "$c.got.out"
    expect_same "$name: stderr" "$c.want.err" "$c.got.err"
    if [ "$st" -ne 0 ]; then
        return
    fi
    checks=$((checks + 1))
    if ! "$QEMU_IMG" check "$c.got.qcow2" >"$c.check" 2>&1; then
        fail "$name: qemu-img check of qimg's image" "$(cat "$c.check")"
    fi
    checks=$((checks + 1))
    if ! "$QEMU_IMG" compare "$c.want.qcow2" "$c.got.qcow2" \
        >"$c.cmp" 2>&1; then
        fail "$name: qemu-img compare" "$(cat "$c.cmp")"
    fi
    info_fields "$c.want.qcow2" >"$c.want.info"
    info_fields "$c.got.qcow2" >"$c.got.info"
    expect_same "$name: info" "$c.want.info" "$c.got.info"
}

# ---- Images ------------------------------------------------------------

# v3 with data, zero clusters (plain and allocated), compressed data.
mk -f qcow2 v3.qcow2 16M
io -c 'write -P 0x11 0 1M' -c 'write -z 2M 512k' \
    -c 'write -P 0x22 4M 256k' -c 'write -z 4M 64k' \
    -c 'write -c -P 0x33 8M 64k' -c 'write -c -P 0x34 8256k 64k' v3.qcow2
# The same with small clusters (several refcount blocks) and 4 KiB data.
mk -f qcow2 -o cluster_size=512 small.qcow2 4M
io -c 'write -P 0x44 0 1M' -c 'write -z 1M 64k' -c 'write -c -P 5 2M 4k' \
    small.qcow2
# v2 with data and a snapshot.
mk -f qcow2 -o compat=0.10 v2.qcow2 16M
io -c 'write -P 0x55 0 2M' v2.qcow2
"$QEMU_IMG" snapshot -c s1 v2.qcow2 || fail "snapshot v2"
io -c 'write -P 0x66 1M 1M' v2.qcow2
# v3 with snapshots sharing zero clusters.
mk -f qcow2 snap.qcow2 16M
io -c 'write -P 0x77 0 1M' -c 'write -z 1M 1M' snap.qcow2
"$QEMU_IMG" snapshot -c s1 snap.qcow2 || fail "snapshot snap"
io -c 'write -P 0x78 0 64k' -c 'write -z 4M 128k' snap.qcow2
# An overlay with zero clusters over a backing file with data.
mk -f qcow2 base.qcow2 16M
io -c 'write -P 0x99 0 8M' base.qcow2
mk -f qcow2 -b base.qcow2 -F qcow2 ov.qcow2
io -c 'write -z 0 1M' -c 'write -P 0xaa 2M 1M' -c 'write -z 3M 64k' \
    ov.qcow2
# A v2 image whose snapshot entries carry no extra data (as QEMU before
# 1.x wrote them): upgrading must rewrite the snapshot table.
cp v2.qcow2 v2old.qcow2
python3 - v2old.qcow2 <<'PY' || fail "strip snapshot extra data"
import struct, sys
f = open(sys.argv[1], "r+b")
hdr = f.read(72)
nb, off = struct.unpack(">IQ", hdr[60:72])
f.seek(off)
data = f.read(1 << 20)
pos, out = 0, b""
for _ in range(nb):
    fixed = bytearray(data[pos:pos + 40])
    id_size, name_size = struct.unpack(">HH", fixed[12:16])
    extra = struct.unpack(">I", fixed[36:40])[0]
    body = data[pos + 40 + extra:pos + 40 + extra + id_size + name_size]
    struct.pack_into(">I", fixed, 36, 0)
    entry = bytes(fixed) + body
    entry += b"\0" * (-len(entry) % 8)
    out += entry
    size = 40 + extra + id_size + name_size
    pos += size + (-size % 8)
f.seek(off)
f.write(out + b"\0" * (pos - len(out)))
PY
# zstd with compressed clusters (qemu-img 7.2 would write a v2 header
# that no longer says zstd; qimg refuses).
mk -f qcow2 -o compression_type=zstd zstdc.qcow2 4M
io -c 'write -c -P 7 0 64k' zstdc.qcow2
# An overlay whose zero clusters sit in L2 tables shared with a snapshot:
# the data clusters a downgrade allocates are referenced by both.
mk -f qcow2 -b base.qcow2 -F qcow2 ovsnap.qcow2
io -c 'write -z 0 256k' -c 'write -P 0xbb 1M 64k' ovsnap.qcow2
"$QEMU_IMG" snapshot -c s1 ovsnap.qcow2 || fail "snapshot ovsnap"
# Zero clusters with a host cluster whose L2 table was copied after a
# snapshot: both tables name the cluster, so a downgrade must not leave
# it flagged as ours alone (qemu-img 7.2 does, and its check then
# reports OFLAG_COPIED errors; qimg gives the entry a cluster of its own).
mk -f qcow2 zsnap.qcow2 16M
io -c 'write -P 1 0 1M' -c 'write -z 256k 128k' zsnap.qcow2
"$QEMU_IMG" snapshot -c s1 zsnap.qcow2 || fail "snapshot zsnap"
io -c 'write -P 2 0 64k' zsnap.qcow2
# Other variants.
mk -f qcow2 -o refcount_bits=8 r8.qcow2 16M
io -c 'write -P 1 0 1M' r8.qcow2
mk -f qcow2 -o lazy_refcounts=on lazy.qcow2 16M
io -c 'write -P 2 0 1M' lazy.qcow2
mk -f qcow2 -o extended_l2=on extl2.qcow2 16M
mk -f qcow2 -o compression_type=zstd zstd.qcow2 16M
io -c 'write -P 3 0 1M' zstd.qcow2
mk -f qcow2 -o data_file=df.qcow2.data df.qcow2 16M
io -c 'write -P 4 0 1M' df.qcow2
mk -f raw plain.raw 1M

# ---- Argument handling ---------------------------------------------------

for args in "-f qcow2 -o help" "-f qcow2 -o ?" "-f qcow2 -o help,size=1" \
    "-f raw -o help" "-f vmdk -o help" "-f foo -o help" "-o help" ""; do
    # shellcheck disable=SC2086
    "$QEMU_IMG" amend $args >want.out 2>want.err
    echo "exit $?" >>want.out
    # shellcheck disable=SC2086
    "$QIMG" amend $args >got.out 2>got.err
    echo "exit $?" >>got.out
    sed -i 's/^qimg: /qemu-img: /; s/qimg --help/qemu-img --help/' got.err
    expect_same "args '$args': stdout" want.out got.out
    expect_same "args '$args': stderr" want.err got.err
done

same "help with a file" v3.qcow2 -o help
same "help with a file, quiet" v3.qcow2 -q -o size=16M,help
same "no options" v3.qcow2
same "empty option list" v3.qcow2 -o ''
same "bad cache" v3.qcow2 -t foo -o size=32M
same "unknown option" v3.qcow2 -o foo=bar
same "creation-only option" v3.qcow2 -o cluster_size=4k
same "creation-only then unknown" v3.qcow2 -o cluster_size=4k,foo=1
same "creation-only with a bad value" v3.qcow2 -o cluster_size=xyz
same "preallocation" v3.qcow2 -o preallocation=full
same "encryption" v3.qcow2 -o encryption=on
same "extended_l2" v3.qcow2 -o extended_l2=on
same "compression_type" v3.qcow2 -o compression_type=zstd
same "encrypt options without encryption" v3.qcow2 -o encrypt.state=active
same "encrypt before compat" v3.qcow2 -o encrypt.state=active,compat=foo
same "bad compat" v3.qcow2 -o compat=foo
same "bad refcount width" v3.qcow2 -o refcount_bits=3
same "refcount width 128" v3.qcow2 -o refcount_bits=128
same "refcount width 0" v3.qcow2 -o refcount_bits=0
same "refcount width not a number" v3.qcow2 -o refcount_bits=x
same "bad bool" v3.qcow2 -o lazy_refcounts=maybe
same "bad size" v3.qcow2 -o size=xyz
same "size with a comma" v3.qcow2 -o 'size=1G,,x'
same "size not a multiple of 512" v3.qcow2 -o size=1000
same "size too large" v3.qcow2 -o size=1E
same "size 0 changes nothing" v3.qcow2 -o size=0
same "data_file without one" v3.qcow2 -o data_file=x
same "data_file_raw on" v3.qcow2 -o data_file_raw=on
same "data_file_raw off" v3.qcow2 -o data_file_raw=off
same "backing file" v3.qcow2 -o backing_file=base.qcow2
same "backing file of an overlay" ov.qcow2 -o backing_file=base.qcow2
same "backing format of an overlay" ov.qcow2 -o backing_fmt=qcow2
same "same backing file and format" ov.qcow2 \
    -o backing_file=base.qcow2,backing_fmt=qcow2
same "other backing format" ov.qcow2 \
    -o backing_file=base.qcow2,backing_fmt=raw
same "raw image" plain.raw -o size=2M
same "raw image as raw" plain.raw -f raw -o size=2M
same "forced format" v3.qcow2 -f raw -o size=2M
same "unknown format" v3.qcow2 -f foo -o size=2M
same "object" v3.qcow2 --object secret,id=s0,data=x -o size=32M
same "bad object" v3.qcow2 --object foo -o size=32M
same "force" v3.qcow2 --force -o size=32M

# ---- Option changes -------------------------------------------------------

for img in v3 small snap ov ovsnap zsnap r8 lazy zstd; do
    same "$img: compat=0.10" $img.qcow2 -o compat=0.10
done
same "zstd+compressed: compat=0.10" v3.qcow2 -o compat=0.10 -p -q
same "extended L2: compat=0.10" extl2.qcow2 -o compat=0.10
same "data file: compat=0.10" df.qcow2 -o compat=0.10
same "r8: compat=0.10,refcount_bits=16" r8.qcow2 \
    -o compat=0.10,refcount_bits=16
same "v2: compat=1.1" v2.qcow2 -o compat=1.1
same "v2 without snapshot extra data: compat=1.1" v2old.qcow2 -o compat=1.1
same "v2 without snapshot extra data: refcount_bits=16" v2old.qcow2 \
    -o refcount_bits=16
cp zstdc.qcow2 zstdc.got.qcow2
expect_status "zstd compressed clusters: compat=0.10 refused" 1 \
    "$QIMG" amend -o compat=0.10 zstdc.qcow2
expect_same "zstd compressed clusters: image untouched" zstdc.qcow2 \
    zstdc.got.qcow2
same "v2: compat=v3,lazy_refcounts=on" v2.qcow2 -o compat=v3,lazy_refcounts=on
same "v2: lazy_refcounts=on" v2.qcow2 -o lazy_refcounts=on
same "v2: refcount_bits=8" v2.qcow2 -o refcount_bits=8
same "v2: compat=1.1,refcount_bits=1" v2.qcow2 -o compat=1.1,refcount_bits=1
same "v2: compat=1.1,refcount_bits=3" v2.qcow2 -o compat=1.1,refcount_bits=3
same "v2: compat=1.1,backing_file=x" v2.qcow2 -o compat=1.1,backing_file=x
same "v2: compat=0.10 (no change)" v2.qcow2 -o compat=0.10
for bits in 1 2 4 8 16 32 64; do
    for img in v3 small snap; do
        same "$img: refcount_bits=$bits" $img.qcow2 -o refcount_bits=$bits
    done
done
same "r8: refcount_bits=64" r8.qcow2 -o refcount_bits=64
same "compat then refcount order" v3.qcow2 -o refcount_bits=3,compat=foo
for img in v3 snap ov; do
    same "$img: lazy_refcounts=on" $img.qcow2 -o lazy_refcounts=on
done
same "lazy: lazy_refcounts=off" lazy.qcow2 -o lazy_refcounts=off
same "lazy: lazy_refcounts" lazy.qcow2 -o lazy_refcounts
for img in v3 small snap ov v2; do
    same "$img: grow" $img.qcow2 -o size=64M
    same "$img: shrink" $img.qcow2 -o size=1M
done
same "v3: grow, unaligned tail" v3.qcow2 -o size=17000960
same "snap: shrink, compat=0.10" snap.qcow2 -o size=1M,compat=0.10
same "v3: compat=v2,size=1000" v3.qcow2 -o compat=v2,size=1000
same "v3: several" v3.qcow2 -o refcount_bits=32 -o lazy_refcounts=on \
    -o size=32M
same "v3: repeated -o" v3.qcow2 -o compat=1.1 -o compat=0.10
same "df: data_file_raw=off" df.qcow2 -o data_file_raw=off
same "df: data_file rename" df.qcow2 -o data_file=df.qcow2.data
# -p: qemu-img draws its bar into a pipe too; qimg draws it on terminals
# only (cli/progress.c), so a pipe stays clean.
for opt in compat=0.10 refcount_bits=8; do
    cp v3.qcow2 pipe.qcow2
    "$QIMG" amend -p -o $opt pipe.qcow2 >pipe.out 2>pipe.err
    expect_status "-p -o $opt into a pipe" 0 test ! -s pipe.out
    expect_status "-p -o $opt into a pipe: stderr" 0 test ! -s pipe.err
    expect_status "-p -o $opt: check" 0 "$QEMU_IMG" check -q pipe.qcow2
done
# On a terminal the bar is qemu-img's, byte for byte.
if command -v script >/dev/null; then
    for opt in compat=0.10 refcount_bits=8 refcount_bits=1 size=32M; do
        cp v3.qcow2 tty.want.qcow2
        cp v3.qcow2 tty.got.qcow2
        script -qc "$QEMU_IMG amend -p -o $opt tty.want.qcow2" /dev/null \
            >tty.want </dev/null
        script -qc "$QIMG amend -p -o $opt tty.got.qcow2" /dev/null \
            >tty.got </dev/null
        sed -i 's/qimg: /qemu-img: /' tty.got
        expect_same "-p -o $opt on a terminal" tty.want tty.got
    done
    cp v2.qcow2 tty.want.qcow2
    cp v2.qcow2 tty.got.qcow2
    script -qc "$QEMU_IMG amend -p -o compat=1.1 tty.want.qcow2" /dev/null \
        >tty.want </dev/null
    script -qc "$QIMG amend -p -o compat=1.1 tty.got.qcow2" /dev/null \
        >tty.got </dev/null
    expect_same "-p -o compat=1.1 on a terminal" tty.want tty.got
fi

finish
