#!/bin/bash
# qimg measure against qemu-img measure (7.2): stdout, stderr and exit
# status, human and JSON, for plain sizes over many qcow2 layouts, for
# source images of every kind (sparse raw, scattered, compressed and zero
# clusters, backing chains, internal snapshots, persistent bitmaps) and
# for the option and argument errors.
. "$QIMG_SRCDIR/tests/functions.sh"
cd "$T"

mk() { "$QEMU_IMG" create -q "$@" >/dev/null || fail "qemu-img create $*"; }
io() { "$QEMU_IO" "$@" >/dev/null || fail "qemu-io $*"; }

# same NAME ARGS...: qemu-img measure ARGS and qimg measure ARGS agree.
same() {
    local name=$1
    shift
    "$QEMU_IMG" measure "$@" >want.out 2>want.err
    echo "status $?" >>want.out
    "$QIMG" measure "$@" >got.out 2>got.err
    echo "status $?" >>got.out
    sed -i -e 's/^qemu-img: /qimg: /' -e "s/'qemu-img --help'/'qimg --help'/" \
        want.err
    expect_same "$name: stdout" want.out got.out
    expect_same "$name: stderr" want.err got.err
}

# both NAME ARGS...: human and JSON.
both() {
    local name=$1
    shift
    same "$name human" "$@"
    same "$name json" --output=json "$@"
}

sizes="0 1 511 512 513 1000 65535 65536 65537 1M 3M+1 1G 1G+512 7G 1T 16T
       100T 1P 4P 1E 4E 8E-1"
layouts="
cluster_size=512
cluster_size=1024
cluster_size=4096
cluster_size=16384
cluster_size=65536
cluster_size=131072
cluster_size=1M
cluster_size=2M
refcount_bits=1
refcount_bits=2
refcount_bits=8
refcount_bits=32
refcount_bits=64
refcount_bits=1,cluster_size=512
refcount_bits=64,cluster_size=512
refcount_bits=64,cluster_size=2M
extended_l2=on
extended_l2=on,cluster_size=16k
extended_l2=on,cluster_size=2M
compat=0.10
compat=1.1
preallocation=off
preallocation=metadata
preallocation=falloc
preallocation=full
preallocation=full,cluster_size=512
lazy_refcounts=on
compression_type=zstd
backing_file=base.img,backing_fmt=raw
"

for s in $sizes; do
    # "3M+1" style sizes are computed here; qemu-img takes plain numbers.
    case $s in
    *+*|*-*)
        base=${s%[+-]*}
        n=$("$QEMU_IMG" measure --size "$base" -O raw |
            sed -n 's/^required size: //p')
        s=$(( n ${s//[^+-]/} ${s##*[+-]} ))
        ;;
    esac
    both "size $s raw" --size "$s"
    both "size $s -O raw" --size "$s" -O raw
    both "size $s qcow2" --size "$s" -O qcow2
    for o in $layouts; do
        same "size $s qcow2 $o" --size "$s" -O qcow2 -o "$o"
    done
done
both "-o size ignored" --size 1G -O qcow2 -o size=5G

# Source images.
mk -f raw base.img 64M
mk -f raw sparse.raw 64M
io -f raw -c "write -P 1 1M 4k" -c "write -P 2 10M 1M" -c "write 63M 1M" \
    sparse.raw
mk -f raw empty.raw 0
truncate -s 12345 odd.raw
printf 'x' | dd of=odd.raw bs=1 seek=12000 conv=notrunc 2>/dev/null

for cs in 512 65536 2M; do
    mk -f qcow2 -o cluster_size=$cs s$cs.qcow2 100M
    io -f qcow2 -c "write -P 0x11 0 3k" -c "write -P 0x22 5M 1" \
        -c "write -z 6M 1M" -c "write -z -u 8M 64k" \
        -c "write -c -P 0x33 20M $cs" -c "write -c -P 0x44 22M 2M" \
        -c "write -P 0x55 40M 3M" -c "discard 41M 1M" \
        -c "write -P 0x66 $((100 * 1024 * 1024 - 512)) 512" s$cs.qcow2
done
mk -f qcow2 -o extended_l2=on x.qcow2 50M
io -f qcow2 -c "write -P 7 4k 4k" -c "write -P 8 3M 100k" x.qcow2
mk -f qcow2 -o compat=0.10 v2.qcow2 20M
io -f qcow2 -c "write -P 9 1M 1M" v2.qcow2

# A chain: raw base, qcow2 middle, qcow2 top with zeros over data.
mk -f raw chain0.raw 30M
io -f raw -c "write -P 1 0 2M" -c "write -P 1 20M 64k" chain0.raw
mk -f qcow2 -b chain0.raw -F raw chain1.qcow2
io -f qcow2 -c "write -P 2 4M 1M" chain1.qcow2
mk -f qcow2 -b chain1.qcow2 -F qcow2 chain2.qcow2 40M
io -f qcow2 -c "write -z 0 1M" -c "write -P 3 35M 4k" chain2.qcow2

# Internal snapshots.
mk -f qcow2 snap.qcow2 10M
io -f qcow2 -c "write -P 1 0 1M" snap.qcow2
"$QEMU_IMG" snapshot -c first snap.qcow2 || fail "snapshot"
io -f qcow2 -c "write -P 2 2M 3M" -c "discard 0 512k" snap.qcow2
"$QEMU_IMG" snapshot -c second snap.qcow2 || fail "snapshot"
io -f qcow2 -c "write -P 3 8M 1M" snap.qcow2

# Persistent bitmaps.
mk -f qcow2 bm.qcow2 1G
io -f qcow2 -c "write -P 1 0 1M" bm.qcow2
"$QEMU_IMG" bitmap --add bm.qcow2 a || fail "bitmap"
"$QEMU_IMG" bitmap --add -g 512 bm.qcow2 a-much-longer-bitmap-name ||
    fail "bitmap"
"$QEMU_IMG" bitmap --add -g 2M --disable bm.qcow2 third || fail "bitmap"
mk -f qcow2 nobm.qcow2 1G

# Preallocated images (their host-file holes read as zero), a fully
# allocated raw file, and data straddling the 1 GiB status windows.
mk -f qcow2 -o preallocation=metadata pm.qcow2 100M
io -f qcow2 -c "write -P 1 1M 64k" pm.qcow2
mk -f qcow2 -o preallocation=falloc pf.qcow2 10M
mk -f raw -o preallocation=full full.raw 5M
mk -f raw big.raw 3G
io -f raw -c "write -P 1 $((1024 * 1024 * 1024 - 512)) 1k" \
    -c "write -P 2 2500M 10M" big.raw

files="pm.qcow2 pf.qcow2 full.raw big.raw base.img sparse.raw empty.raw odd.raw s512.qcow2 s65536.qcow2
       s2M.qcow2 x.qcow2 v2.qcow2 chain0.raw chain1.qcow2 chain2.qcow2
       snap.qcow2 bm.qcow2 nobm.qcow2"
for f in $files; do
    both "$f raw" "$f"
    both "$f qcow2" -O qcow2 "$f"
    for o in cluster_size=512 cluster_size=4k cluster_size=2M \
             refcount_bits=1 refcount_bits=64 extended_l2=on compat=0.10 \
             preallocation=metadata preallocation=full; do
        both "$f qcow2 $o" -O qcow2 -o "$o" "$f"
    done
done
both "-f raw on qcow2" -f raw -O qcow2 s65536.qcow2
both "-f qcow2" -f qcow2 -O qcow2 chain2.qcow2
both "-U" -U -O qcow2 chain2.qcow2

for l in first second 1 2 snapshot.name=first snapshot.id=2 \
         snapshot.id=1,snapshot.name=first snapshot.id=1,snapshot.name=second \
         missing; do
    both "snapshot $l" -O qcow2 -l "$l" snap.qcow2
done
same "snapshot on raw" -O qcow2 -l first sparse.raw
same "snapshot bad option" -O qcow2 -l snapshot.foo=1 snap.qcow2

# Errors.
same "nothing"
same "size and file" --size 1G sparse.raw
same "two files" sparse.raw s512.qcow2
same "bad size" --size abc
same "negative size" --size -1
same "size too big" --size 8E
same "size way too big" --size 99999999999999999999
same "-f without file" --size 1G -f raw
same "-l without file" --size 1G -l first
same "--image-opts without file" --size 1G --image-opts
same "bad output" --size 1G --output=xml
same "missing file" -O qcow2 nosuchfile
same "missing file bad format" -O nosuch nosuchfile
same "unknown format" --size 1G -O nosuch
same "vmdk" --size 1G -O vmdk
same "vdi" --size 1G -O vdi
same "dmg" --size 1G -O dmg
same "qcow2 -o help" --size 1G -O qcow2 -o help
same "raw -o help" --size 1G -o help
same "raw bogus option" --size 1G -o bogus=1
same "qcow2 bogus option" --size 1G -O qcow2 -o bogus=1
same "raw nocow" --size 1G -o nocow=on
same "raw preallocation ignored" --size 1G -o preallocation=metadata
for o in cluster_size=abc cluster_size=0 cluster_size=1000 cluster_size=256 \
         cluster_size=4M cluster_size=1.5k extended_l2=maybe \
         extended_l2=on,cluster_size=8k refcount_bits=abc refcount_bits=0 \
         refcount_bits=3 refcount_bits=128 compat=0.10,refcount_bits=8 \
         compat=0.9 compat=v3 preallocation=bad size=abc \
         preallocation=bad,cluster_size=3 compat=bad,refcount_bits=3 \
         encrypt.format=luks; do
    same "qcow2 -o $o" --size 1G -O qcow2 -o "$o"
done
same "bad option list" --size 1G -O qcow2 -o ",,="

# LUKS targets, raw and in qcow2: the header area by cipher; qemu-img
# makes a throw-away header (and may fail to time its PBKDF2 on a busy
# machine: then it is asked again).  Its answers are shared between the
# builds of one run (functions.sh: qemu_img_cached): each costs seconds.
same_luks() {
    local name=$1 i
    shift
    for ((i = 0; i < QEMU_LUKS_TRIES; i++)); do
        qemu_img_cached want.out want.err measure \
            --object secret,id=sec0,data=abc "$@"
        echo "status $?" >>want.out
        grep -q 'Unable to get accurate CPU usage' want.err || break
    done
    "$QIMG" measure --object secret,id=sec0,data=abc "$@" >got.out 2>got.err
    echo "status $?" >>got.out
    sed -i 's/^qemu-img: /qimg: /' want.err
    expect_same "$name: stdout" want.out got.out
    expect_same "$name: stderr" want.err got.err
}
"$QEMU_IMG" create -q -f raw m.raw 3M
printf 'tail' >>m.raw
for o in key-secret=sec0 key-secret=sec0,cipher-alg=aes-128,cipher-mode=cbc \
    key-secret=sec0,cipher-alg=twofish-192,iter-time=1 \
    key-secret=sec0,cipher-alg=cast5-128,cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=md5 \
    key-secret=nosuch "" cipher-alg=foo key-secret=sec0,cipher-alg=cast5-128 \
    key-secret=sec0,bogus=1; do
    same_luks "luks -o $o" --size 1G -O luks ${o:+-o "$o"}
done
same_luks "luks json" --size 1G -O luks -o key-secret=sec0 --output=json
same_luks "luks from an image" -O luks -o key-secret=sec0,iter-time=1 m.raw
for o in encrypt.format=luks,encrypt.key-secret=sec0 \
    cluster_size=4k,encrypt.format=luks,encrypt.key-secret=sec0 \
    cluster_size=2M,encrypt.format=luks,encrypt.key-secret=sec0 \
    encrypt.format=luks,encrypt.key-secret=sec0,encrypt.cipher-alg=aes-128,encrypt.cipher-mode=cbc \
    encrypt.format=luks,encrypt.key-secret=nosuch \
    encrypt.format=luks,encrypt.key-secret=sec0,encrypt.hash-alg=foo \
    encrypt.format=aes,encrypt.key-secret=sec0; do
    same_luks "qcow2 -o $o" --size 1G -O qcow2 -o "$o"
done
same_luks "qcow2 luks from an image" -O qcow2 \
    -o encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=1 m.raw
# getopt's message, then the help on stdout (its banner names the
# program, so only the usage lines are compared), and success.
help_same() {
    local name=$1
    shift
    "$QEMU_IMG" measure "$@" >want.out 2>want.err
    echo "status $?" >>want.out
    "$QIMG" measure "$@" >got.out 2>got.err
    echo "status $?" >>got.out
    expect_same "$name: stderr" want.err got.err
    grep -q "^usage: qimg " got.out || fail "$name: no help"
    expect_same "$name: status" <(tail -1 want.out) <(tail -1 got.out)
}
help_same "unknown option" -x
help_same "unknown long option" --bogus
help_same "missing argument" --size
help_same "missing short argument" -O

finish
