#!/bin/bash
# qimg create -f qcow2 against qemu-img create: the Formatting line, the
# messages, exit statuses and the bytes of every file made (cmp); qemu-img
# check must find qimg's images clean and qimg info must read them.
. "$QIMG_SRCDIR/tests/functions.sh"
cd "$T"

# Files both tools start from: a backing raw image and a qcow2 one.
"$QEMU_IMG" create -q -f raw base.raw 3M
"$QEMU_IMG" create -q -f qcow2 base.qcow2 5M

# run_both NAME ARGS...: run "create ARGS" with both tools in separate
# folders (each holding copies of the base images); stdout, stderr
# (qemu-img -> qimg), status and every file left behind must agree.
run_both() {
    local name=$1
    shift
    rm -rf q m && mkdir q m
    cp base.raw base.qcow2 q/ && cp base.raw base.qcow2 m/
    (cd q && "$QEMU_IMG" create "$@" >../want.out 2>../want.err
     echo "status $?" >>../want.out)
    (cd m && "$QIMG" create "$@" >../got.out 2>../got.err
     echo "status $?" >>../got.out)
    sed -i 's/^qemu-img: /qimg: /' want.err
    expect_same "$name: stdout" want.out got.out
    expect_same "$name: stderr" want.err got.err
    (cd q && find . -type f -printf '%p %s\n' | sort) >want.files
    (cd m && find . -type f -printf '%p %s\n' | sort) >got.files
    expect_same "$name: files" want.files got.files || return
    local f
    for f in $(cd q && find . -type f | sort); do
        checks=$((checks + 1))
        files_equal "q/$f" "m/$f" || fail "$name: bytes of $f" \
            "$(cmp "q/$f" "m/$f" 2>&1)"
    done
    if [ -z "${NOCHECK:-}" ] && [ -f m/a.img ] &&
        grep -q '^status 0' got.out; then
        (cd m && expect_status "$name: qemu-img check" 0 \
            "$QEMU_IMG" check -q a.img)
        (cd m && expect_status "$name: qimg info" 0 "$QIMG" info a.img)
    fi
}

# Layouts.
for size in 0 512 1000 1M 1G 2G 1T 16T; do
    run_both "size $size" -f qcow2 a.img "$size"
done
for cs in 512 1k 4k 8k 64k 1M 2M; do
    run_both "cluster $cs" -f qcow2 -o cluster_size=$cs a.img 100M
    run_both "cluster $cs v2" -f qcow2 -o cluster_size=$cs,compat=0.10 \
        a.img 100M
done
run_both "2M clusters 1P" -f qcow2 -o cluster_size=2M a.img 1P
run_both "512 clusters 8G" -f qcow2 -o cluster_size=512 a.img 8G
run_both "512 clusters 1G" -f qcow2 -o cluster_size=512 a.img 1G
run_both "512 clusters 64-bit refcounts" -f qcow2 \
    -o cluster_size=512,refcount_bits=64 a.img 1G
run_both "64k clusters 2P" -f qcow2 a.img 2P
run_both "64k clusters too large" -f qcow2 a.img 2251799813685760
run_both "512 clusters too large" -f qcow2 -o cluster_size=512 \
    a.img 137438953984
run_both "4k clusters 8T" -f qcow2 -o cluster_size=4k a.img 8T
run_both "512 clusters raw data file" -f qcow2 \
    -o cluster_size=512,data_file=d.raw,data_file_raw=on a.img 64M
for bits in 1 2 4 8 16 32 64; do
    run_both "refcount_bits $bits" -f qcow2 -o refcount_bits=$bits a.img 1G
done
run_both "refcount_bits 1 small clusters" -f qcow2 \
    -o refcount_bits=1,cluster_size=512 a.img 64M
for compat in 0.10 v2 1.1 v3; do
    run_both "compat $compat" -f qcow2 -o compat=$compat a.img 1M
done
run_both "lazy refcounts" -f qcow2 -o lazy_refcounts=on a.img 1M
run_both "extended_l2" -f qcow2 -o extended_l2=on a.img 1G
run_both "extended_l2 16k" -f qcow2 -o extended_l2=on,cluster_size=16k \
    a.img 1G
run_both "zstd" -f qcow2 -o compression_type=zstd a.img 1M
run_both "zlib" -f qcow2 -o compression_type=zlib a.img 1M
run_both "preallocation off" -f qcow2 -o preallocation=off a.img 1M
run_both "metadata 1M" -f qcow2 -o preallocation=metadata a.img 1M
run_both "metadata 1100M" -f qcow2 -o preallocation=metadata a.img 1100M
run_both "metadata partial" -f qcow2 -o preallocation=metadata a.img 66048
run_both "metadata 0" -f qcow2 -o preallocation=metadata a.img 0
run_both "metadata 512 clusters" -f qcow2 \
    -o preallocation=metadata,cluster_size=512 a.img 3M
run_both "metadata 2M clusters" -f qcow2 \
    -o preallocation=metadata,cluster_size=2M a.img 5G
run_both "metadata extended_l2" -f qcow2 \
    -o preallocation=metadata,extended_l2=on a.img 66048
run_both "metadata extended_l2 backing" -f qcow2 -b base.raw -F raw \
    -o preallocation=metadata,extended_l2=on a.img
run_both "metadata refcount_bits 1" -f qcow2 \
    -o preallocation=metadata,refcount_bits=1,cluster_size=4k a.img 300M
run_both "metadata data file" -f qcow2 \
    -o preallocation=metadata,data_file=d.raw a.img 66048
run_both "everything" -f qcow2 -o lazy_refcounts=on,extended_l2=on,\
compression_type=zstd,refcount_bits=8,cluster_size=32k a.img 3G
run_both "quiet" -q -f qcow2 a.img 1M

# Backing files.
run_both "backing qcow2" -f qcow2 -b base.qcow2 -F qcow2 a.img
run_both "backing raw" -f qcow2 -b base.raw -F raw a.img
run_both "backing with size" -f qcow2 -b base.raw -F raw a.img 7M
run_both "backing v2" -f qcow2 -o compat=0.10 -b base.qcow2 -F qcow2 a.img
run_both "backing 4k clusters" -f qcow2 -o cluster_size=4k -b base.raw \
    -F raw a.img
run_both "backing via -o" -f qcow2 -o backing_file=base.raw,backing_fmt=raw \
    a.img
run_both "backing without format" -f qcow2 -b base.raw a.img
NOCHECK=1 run_both "backing unsafe" -f qcow2 -u -b nothere.qcow2 -F qcow2 a.img 1M
run_both "backing missing" -f qcow2 -b nothere.qcow2 -F qcow2 a.img 1M
run_both "backing format alone" -f qcow2 -F raw a.img 1M
run_both "backing and preallocation" -f qcow2 -b base.raw -F raw \
    -o preallocation=metadata a.img

# External data files.
run_both "data file" -f qcow2 -o data_file=d.raw a.img 1M
run_both "data file raw" -f qcow2 -o data_file=d.raw,data_file_raw=on \
    a.img 1M
run_both "data file raw 1100M" -f qcow2 \
    -o data_file=d.raw,data_file_raw=on a.img 1100M
run_both "data file raw partial cluster" -f qcow2 \
    -o data_file=d.raw,data_file_raw=on a.img 66048
run_both "data file raw extended_l2" -f qcow2 \
    -o data_file=d.raw,data_file_raw=on,extended_l2=on a.img 66048
run_both "data file raw size 0" -f qcow2 \
    -o data_file=d.raw,data_file_raw=on a.img 0
run_both "data file raw without file" -f qcow2 -o data_file_raw=on a.img 1M
run_both "data file raw and backing" -f qcow2 -b base.raw -F raw \
    -o data_file=d.raw,data_file_raw=on a.img
run_both "data file v2" -f qcow2 -o compat=0.10,data_file=d.raw a.img 1M

# Validation.
for o in refcount_bits=3 refcount_bits=128 refcount_bits=0 \
    refcount_bits=abc compat=0.10,lazy_refcounts=on \
    compat=0.10,refcount_bits=8 compat=0.10,extended_l2=on \
    compat=0.10,compression_type=zstd extended_l2=on,cluster_size=8k \
    cluster_size=1000 cluster_size=256 cluster_size=4M cluster_size=0 \
    cluster_size=abc compat=1.2 compression_type=lz4 preallocation=bogus \
    lazy_refcounts=maybe extended_l2=maybe data_file_raw=maybe; do
    run_both "bad $o" -f qcow2 -o "$o" a.img 1M
done
run_both "qcow2 help" -f qcow2 -o help
run_both "qcow2 help with file" -f qcow2 -o help a.img
run_both "unknown option" -f qcow2 -o foo=bar a.img 1M

# A failed create removes even a file that was there before, as 7.2 does.
rm -rf q m && mkdir q m && echo old >q/a.img && echo old >m/a.img
(cd q && "$QEMU_IMG" create -q -f qcow2 -o refcount_bits=3 a.img 1M \
    2>/dev/null)
(cd m && "$QIMG" create -q -f qcow2 -o refcount_bits=3 a.img 1M \
    2>/dev/null)
checks=$((checks + 1))
[ "$(ls q)" = "$(ls m)" ] || fail "failed create leftovers" "$(ls q m)"

run_both "no such directory" -f qcow2 nodir/a.img 1M
run_both "data file in no such directory" -f qcow2 -o data_file=nodir/d.raw \
    a.img 1M

# preallocation=falloc and full: QEMU's preallocating truncate (a
# refcount area after the L1 table: new blocks, then a new refcount
# table; the data after it; the L2 tables into the freed old table and
# after the data), byte for byte.  Several new blocks (512-byte
# clusters), several new table clusters (64-bit refcounts), one-bit
# refcounts, subclusters, v2, an external data file.
for p in falloc full; do
    for s in 0 512 66048 3M; do
        run_both "$p $s" -f qcow2 -o preallocation=$p a.img $s
    done
    for o in cluster_size=512 cluster_size=512,refcount_bits=64 \
        refcount_bits=1,cluster_size=1k extended_l2=on compat=0.10 \
        lazy_refcounts=on,refcount_bits=8 cluster_size=2M; do
        run_both "$p $o" -f qcow2 -o preallocation=$p,$o a.img 3M
    done
    run_both "$p data file" -f qcow2 -o preallocation=$p,data_file=d.raw \
        a.img 1M
    run_both "$p data file raw" -f qcow2 \
        -o preallocation=$p,data_file=d.raw,data_file_raw=on a.img 66048
done
# Metadata that outgrows the one-cluster refcount table: QEMU moves to a
# table with room for half as many blocks again, in an area at the next
# group boundary, and leaves the clusters it had counted free.
run_both "metadata two table moves" -f qcow2 \
    -o preallocation=metadata,cluster_size=512 a.img 17M
run_both "metadata table moves 64-bit" -f qcow2 \
    -o preallocation=metadata,cluster_size=512,refcount_bits=64 a.img 3M
run_both "metadata table moves 64-bit 1k" -f qcow2 \
    -o preallocation=metadata,cluster_size=1k,refcount_bits=64 a.img 9M
run_both "L1 outgrows the refcount table" -f qcow2 \
    -o cluster_size=512,refcount_bits=64 a.img 9G

finish
