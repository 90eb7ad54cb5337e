#!/bin/bash
# qimg map against qemu-img map (7.2): stdout, stderr and exit status, in
# both output formats and with --start-offset/--max-length windows, over
# images made by qemu-img and qemu-io with every layout feature.
. "$QIMG_SRCDIR/tests/functions.sh"
cd "$T"

mk() { "$QEMU_IMG" create -q "$@" >/dev/null || fail "qemu-img create $*"; }
io() { "$QEMU_IO" "$@" >/dev/null || fail "qemu-io $*"; }

# same NAME ARGS...: qemu-img map ARGS and qimg map ARGS agree exactly.
same() {
    local name=$1
    shift
    "$QEMU_IMG" map "$@" >want.out 2>want.err
    echo "status $?" >>want.out
    "$QIMG" map "$@" >got.out 2>got.err
    echo "status $?" >>got.out
    sed -i -e 's/^qemu-img: /qimg: /' -e "s/'qemu-img --help'/'qimg --help'/" \
        want.err
    expect_same "$name: stdout" want.out got.out
    expect_same "$name: stderr" want.err got.err
}

# both NAME FILE [ARGS...]: human and JSON, whole image and windows.
both() {
    local name=$1 file=$2
    shift 2
    same "$name human" "$@" "$file"
    same "$name json" --output=json "$@" "$file"
}

windows() {
    local name=$1 file=$2
    shift 2
    both "$name" "$file" "$@"
    both "$name s=1536" "$file" "$@" -s 1536
    both "$name s=64k l=100k" "$file" "$@" --start-offset=64k \
        --max-length=100k
    both "$name s=1000 l=3333" "$file" "$@" -s 1000 -l 3333
    both "$name l=0" "$file" "$@" -l 0
    both "$name s=past" "$file" "$@" -s 1T
    both "$name s=7M l=2M" "$file" "$@" -s 7M -l 2M
}

# Writes crossing cluster and L2 boundaries for a cluster size: data,
# zeroes, compressed, discarded.
fill() {
    local f=$1 cs=$2
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
# The same without compressed clusters, so the human map lists rows.
fill_plain() {
    local f=$1 cs=$2
    io -f qcow2 -c "write -P 0x11 0 $((cs * 3 + 512))" \
        -c "write -P 0x22 $((cs * 5 - 512)) 1024" \
        -c "write -z $((cs * 2)) $cs" \
        -c "write -z -u $((cs * 7)) $cs" \
        -c "write -P 0x55 $((cs * 12)) $((cs * 2))" \
        -c "discard $((cs * 12)) $cs" \
        -c "write -P 0x66 $((8 * 1024 * 1024 - 4096)) 8192" \
        "$f"
}

for cs in 512 4096 65536 2097152; do
    mk -f qcow2 -o cluster_size=$cs c$cs.qcow2 32M
    fill c$cs.qcow2 $cs
    both "cs$cs" c$cs.qcow2
    mk -f qcow2 -o cluster_size=$cs p$cs.qcow2 32M
    fill_plain p$cs.qcow2 $cs
    windows "plain cs$cs" p$cs.qcow2
done

# v2 images: zero writes allocate data.
mk -f qcow2 -o compat=0.10 v2.qcow2 16M
fill_plain v2.qcow2 65536
windows v2 v2.qcow2

# Compression types: the human map refuses compressed clusters.
for ct in zlib zstd; do
    mk -f qcow2 -o compression_type=$ct $ct.qcow2 16M
    fill $ct.qcow2 65536
    windows "$ct" $ct.qcow2
    "$QEMU_IMG" convert -c -O qcow2 -o compression_type=$ct p65536.qcow2 \
        conv-$ct.qcow2 || fail "convert -c $ct"
    both "conv-$ct" conv-$ct.qcow2
done

# Extended L2: partial subcluster writes, zeroes and discards.
for cs in 16384 65536 2097152; do
    sc=$((cs / 32))
    mk -f qcow2 -o extended_l2=on,cluster_size=$cs x$cs.qcow2 16M
    io -f qcow2 -c "write -P 1 $sc $((sc * 2))" \
        -c "write -P 2 $((cs + 512)) 1024" \
        -c "write -z $((cs * 2 + sc)) $((sc * 3))" \
        -c "write -P 3 $((cs * 3)) $cs" \
        -c "discard $((cs * 3 + sc * 4)) $((sc * 2))" \
        -c "write -z $((cs * 5)) $((cs * 2))" \
        x$cs.qcow2
    windows "extl2 cs$cs" x$cs.qcow2
done

# Preallocation: metadata images ask the host file about holes.
for p in metadata falloc full; do
    mk -f qcow2 -o preallocation=$p pre-$p.qcow2 4M
    io -f qcow2 -c 'write -P 0x12 64k 4k' -c 'write -z 1M 64k' \
        -c 'discard 2M 64k' pre-$p.qcow2
    windows "prealloc $p" pre-$p.qcow2
    mk -f qcow2 -o preallocation=$p,cluster_size=4k pre4k-$p.qcow2 1M
    windows "prealloc 4k $p" pre4k-$p.qcow2
done
for p in off falloc full; do
    mk -f raw -o preallocation=$p raw-$p.raw 3M
    io -f raw -c 'write -P 3 1M 4k' raw-$p.raw
    both "raw prealloc $p" raw-$p.raw -f raw
done
# The heuristic reads refcounts of every width.
for rb in 1 2 8 64; do
    mk -f qcow2 -o preallocation=metadata,refcount_bits=$rb,cluster_size=512 \
        rb$rb.qcow2 1M
    io -f qcow2 -c 'write -P 1 4k 1k' rb$rb.qcow2
    both "prealloc refcount_bits=$rb" rb$rb.qcow2
    mk -f qcow2 -o refcount_bits=$rb rbp$rb.qcow2 4M
    io -f qcow2 -c 'write -P 1 4k 1k' -c 'write -P 2 1M 100k' rbp$rb.qcow2
    both "partial clusters refcount_bits=$rb" rbp$rb.qcow2
done
# A metadata-preallocated image that later grew real data.
mk -f qcow2 -o preallocation=metadata grown.qcow2 8M
io -f qcow2 -c 'write -P 7 0 3M' -c 'write -P 8 5M 100k' grown.qcow2
windows "prealloc grown" grown.qcow2

# Raw files: holes, data, fallocated ranges, sizes not in whole sectors.
truncate -s 1000000 sparse.raw
printf 'abc' | dd of=sparse.raw bs=1 seek=70000 conv=notrunc status=none
head -c 200000 /dev/urandom | dd of=sparse.raw bs=1 seek=400000 \
    conv=notrunc status=none
fallocate -o 200000 -l 100000 sparse.raw 2>/dev/null || true
windows "raw sparse" sparse.raw -f raw
head -c 1000 /dev/urandom >odd.raw
both "raw odd" odd.raw -f raw
both "raw odd probed" odd.raw
truncate -s 0 empty.raw
both "raw empty" empty.raw -f raw
both "qcow2 file as raw" p65536.qcow2 -f raw

# External data file (offsets are in the data file), raw and not.
mk -f qcow2 -o data_file=df.raw ext.qcow2 8M
io -f qcow2 -c 'write -P 1 0 64k' -c 'write -P 2 1M 100k' \
    -c 'write -z 2M 64k' ext.qcow2
windows "data file" ext.qcow2
mk -f qcow2 -o data_file=dfr.raw,data_file_raw=on extr.qcow2 8M
io -f qcow2 -c 'write -P 1 64k 64k' -c 'write -z 3M 64k' extr.qcow2
windows "data file raw" extr.qcow2

# A three-deep chain with scattered writes and a short base.
mk -f qcow2 base.qcow2 3M
io -f qcow2 -c 'write -P 1 0 128k' -c 'write -P 2 1M 64k' \
    -c 'write -z 2M 64k' -c 'write -P 3 3008k 64k' base.qcow2
mk -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2 6M
io -f qcow2 -c 'write -P 4 64k 64k' -c 'write -P 5 4M 64k' \
    -c 'write -z 1M 32k' -c 'discard 0 64k' mid.qcow2
mk -f qcow2 -b mid.qcow2 -F qcow2 -o cluster_size=4k top.qcow2 10M
io -f qcow2 -c 'write -P 6 4k 4k' -c 'write -P 7 2M 12k' \
    -c 'write -z 4M 4k' -c 'write -P 8 9M 4k' top.qcow2
windows chain top.qcow2
both "chain mid" mid.qcow2
both "chain -U" top.qcow2 -U
mkdir -p sub
mk -f qcow2 sub/b.qcow2 1M
io -f qcow2 -c 'write -P 1 0 64k' sub/b.qcow2
mk -f qcow2 -b b.qcow2 -F qcow2 sub/o.qcow2 2M
both "chain in a folder" sub/o.qcow2
mk -f raw rawbase.raw 1M
io -f raw -c 'write -P 9 512k 4k' rawbase.raw
mk -f qcow2 -b rawbase.raw -F raw overraw.qcow2 2M
both "raw backing" overraw.qcow2

# Extended L2 overlay over a short base: unallocated subclusters of
# allocated clusters show their host offset only where nothing is below.
mk -f qcow2 xbase.qcow2 1M
io -f qcow2 -c 'write -P 1 0 1M' xbase.qcow2
mk -f qcow2 -b xbase.qcow2 -F qcow2 -o extended_l2=on xtop.qcow2 2M
io -f qcow2 -c 'write -P 2 1000k 2k' -c 'write -P 3 1100k 2k' \
    -c 'write -z 1500k 4k' xtop.qcow2
windows "extl2 over short base" xtop.qcow2

# An encrypted image needs its key to be opened at all.
qemu_create_luks enc.qcow2 1M encrypt.format=luks,encrypt.iter-time=10
both "encrypted" enc.qcow2

# Options and errors.
same "bad start" -s 1x p4096.qcow2
same "negative start" -s -1 p4096.qcow2
same "bad length" -l 1.5 p4096.qcow2
same "start too big" -s 99999999999999999999 p4096.qcow2
same "hex start" -s 0x10 --output=json p4096.qcow2
same "sum overflows" -s 1 -l 9223372036854775807 --output=json p4096.qcow2
same "sum at max" -s 1 -l 9223372036854775806 p4096.qcow2
same "bad output" --output=foo p4096.qcow2
same "last output wins" --output=foo --output=json p4096.qcow2
same "no file" --output=json
same "two files" p4096.qcow2 p4096.qcow2
same "missing" nonexistent.qcow2
same "unknown format" -f foo p4096.qcow2
same "wrong format" -f qcow2 sparse.raw
same "unknown option" -x p4096.qcow2
same "missing argument" p4096.qcow2 -s

finish
