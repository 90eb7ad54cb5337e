#!/bin/bash
# One qcow2 handle written from several threads at once
# (qimg_concurrent_io): tests/unit/write_threads.c runs random writes,
# zero writes, discards, reads and flushes from 8 threads on one handle,
# owners of the bytes interleaved within clusters, mirrored into a raw
# file.  qemu-img check must then find the image clean and qemu-img
# compare identical to the mirror; qimg check too.  Configurations: new
# images (allocating writes racing in-place ones), a metadata-
# preallocated one with 4 KiB clusters and more L2 slices than the cache
# holds (in-place writes missing the L2 cache), extended L2 entries,
# lazy refcounts, an external data file, O_DIRECT.
#
# QIMG_SEED: the seed (default: from the time); run i uses QIMG_SEED + i.
. "$QIMG_SRCDIR/tests/functions.sh"
: "${QIMG_WRITE_THREADS:?QIMG_WRITE_THREADS must point at write_threads}"
cd "$T"

seed0=${QIMG_SEED:-$(( $(date +%s) % 1000000 * 1000 + $$ % 1000 ))}
ops=1500
[ "${QIMG_SANITIZED:-0}" = 1 ] && ops=400
echo "seed=$seed0 (ops per thread: $ops)"

run=0
# one NAME SIZE OPTS [write_threads flags...]
one() {
    local name=$1 size=$2 opts=$3
    shift 3
    local seed=$((seed0 + run))
    run=$((run + 1))
    rm -f img.qcow2 img.data mirror.raw
    if ! out=$("$QEMU_IMG" create -q -f qcow2 -o "$opts" img.qcow2 "$size" 2>&1)
    then
        fail "$name: qemu-img create" "$out"
        return
    fi
    truncate -s "$size" mirror.raw
    if ! out=$("$QIMG_WRITE_THREADS" -t 8 -n "$ops" -r "$seed" "$@" \
               img.qcow2 mirror.raw 2>&1); then
        fail "$name: write_threads (replay: QIMG_SEED=$seed)" "$out"
        return
    fi
    echo "$name: $out" | tr '\n' ' '
    echo
    if ! out=$("$QEMU_IMG" check img.qcow2 2>&1); then
        fail "$name: qemu-img check (seed $seed)" "$out"
    else
        pass
    fi
    if ! out=$("$QIMG" check img.qcow2 2>&1); then
        fail "$name: qimg check (seed $seed)" "$out"
    else
        pass
    fi
    if ! out=$("$QEMU_IMG" compare -f qcow2 -F raw img.qcow2 mirror.raw 2>&1)
    then
        fail "$name: qemu-img compare with the mirror (seed $seed)" "$out"
    else
        pass
    fi
}

one new-64k 64M compat=1.1
one new-64k-direct 64M compat=1.1 -d
one prealloc-4k 1G compat=1.1,cluster_size=4096,preallocation=metadata
one new-4k 16M compat=1.1,cluster_size=4096
one extl2 64M compat=1.1,extended_l2=on
one lazy 64M compat=1.1,lazy_refcounts=on
one prealloc-64k-direct 64M compat=1.1,preallocation=metadata -d
# A discard keeps a data file's bytes (-k).
one data-file 64M compat=1.1,data_file=img.data -k
one data-file-raw 64M compat=1.1,data_file=img.data,data_file_raw=on -k
finish
