#!/bin/bash
# qimg compare against qemu-img compare (7.2): stdout (messages and -p
# progress), stderr and exit status over equal and unequal pairs.
. "$QIMG_SRCDIR/tests/functions.sh"
cd "$T"

mk() { "$QEMU_IMG" create -q "$@" >/dev/null || fail "qemu-img create $*"; }
io() { "$QEMU_IO" "$@" >/dev/null || fail "qemu-io $*"; }
conv() { "$QEMU_IMG" convert "$@" || fail "qemu-img convert $*"; }
# poke FILE OFFSET BYTE: overwrite one byte of a raw file.
poke() {
    printf "\\x$3" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}

# run TOOL OUT ERR ARGS...: TOOL compare ARGS; with -p, stdout is a
# terminal (script(1)'s pty), since qimg draws the bar on terminals only.
run() {
    local tool=$1 out=$2 err=$3
    shift 3
    case " $* " in
    *" -p "*)
        script -qec "$(printf '%q ' "$tool" compare "$@") 2>$err" \
            /dev/null >"$out" </dev/null
        ;;
    *) "$tool" compare "$@" >"$out" 2>"$err" ;;
    esac
}

# same NAME ARGS...: qemu-img compare ARGS and qimg compare ARGS agree.
same() {
    local name=$1
    shift
    run "$QEMU_IMG" want.out want.err "$@"
    echo "status $?" >>want.out
    run "$QIMG" got.out got.err "$@"
    echo "status $?" >>got.out
    sed -i -e 's/^qemu-img: /qimg: /' -e "s/'qemu-img --help'/'qimg --help'/" \
        want.err
    expect_same "$name: stdout" want.out got.out
    expect_same "$name: stderr" want.err got.err
}

# all NAME A B: plain, strict, quiet and with progress, both ways round.
all() {
    local name=$1 a=$2 b=$3
    shift 3
    same "$name" "$@" "$a" "$b"
    same "$name reversed" "$@" "$b" "$a"
    same "$name -s" -s "$@" "$a" "$b"
    same "$name -q" -q "$@" "$a" "$b"
    same "$name -p" -p "$@" "$a" "$b"
    same "$name -s -p" -s -p "$@" "$b" "$a"
}

# A qcow2 image with data, zeroes, discards and compressed clusters.
mk -f qcow2 img.qcow2 8M
io -f qcow2 -c 'write -P 0x11 0 200k' -c 'write -P 0x22 1M 64k' \
    -c 'write -z 2M 128k' -c 'write -c -P 0x33 3M 64k' \
    -c 'write -P 0x44 5M 4k' -c 'discard 5M 4k' \
    -c 'write -P 0x55 8188k 4k' img.qcow2
conv -O raw img.qcow2 img.raw
conv -O qcow2 img.qcow2 copy.qcow2
conv -O qcow2 -o cluster_size=4k,extended_l2=off img.qcow2 copy4k.qcow2
conv -c -O qcow2 img.qcow2 comp.qcow2
all "raw vs qcow2" img.raw img.qcow2
all "qcow2 vs copy" img.qcow2 copy.qcow2
all "qcow2 vs 4k copy" img.qcow2 copy4k.qcow2
all "compressed" comp.qcow2 img.raw
same "self" img.qcow2 img.qcow2
same "self -s" -s img.qcow2 img.qcow2

# One byte differs: in data, in a zero run, in unallocated space, last.
for at in 0 511 512 100000 204799 1048577 2097152 2228224 3145728 \
    4194304 8388607; do
    cp img.raw d.raw
    poke d.raw $at 7f
    all "byte at $at" img.qcow2 d.raw
done
# A difference inside data of both images (both allocated).
conv -O qcow2 d.raw dq.qcow2
same "both allocated" img.qcow2 dq.qcow2

# Different sizes: a zero tail, a data tail, an unallocated tail.
mk -f qcow2 small.qcow2 4M
io -f qcow2 -c 'write -P 0x11 0 200k' -c 'write -P 0x22 1M 64k' small.qcow2
conv -O raw small.qcow2 small.raw
truncate -s 6M bigger.raw
dd if=small.raw of=bigger.raw conv=notrunc status=none
all "zero tail" small.qcow2 bigger.raw
cp bigger.raw bigdata.raw
poke bigdata.raw 5000000 01
all "data tail" small.qcow2 bigdata.raw
mk -f qcow2 -b small.qcow2 -F qcow2 grown.qcow2 7M
io -f qcow2 -c 'write -z 6M 64k' grown.qcow2
all "grown overlay" small.raw grown.qcow2
io -f qcow2 -c 'write -P 3 6500k 1k' grown.qcow2
all "grown overlay with data" small.raw grown.qcow2

# Chains against their flattened copies.
mk -f qcow2 base.qcow2 3M
io -f qcow2 -c 'write -P 1 0 128k' -c 'write -P 2 1M 64k' \
    -c 'write -z 2M 64k' -c 'write -P 3 3008k 64k' base.qcow2
mk -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2 6M
io -f qcow2 -c 'write -P 4 64k 64k' -c 'write -P 5 4M 64k' \
    -c 'write -z 1M 32k' -c 'discard 0 64k' mid.qcow2
mk -f qcow2 -b mid.qcow2 -F qcow2 -o cluster_size=4k top.qcow2 6M
io -f qcow2 -c 'write -P 6 4k 4k' -c 'write -P 7 2M 12k' \
    -c 'write -z 4M 4k' top.qcow2
conv -O raw top.qcow2 flat.raw
conv -O qcow2 top.qcow2 flat.qcow2
all "chain vs raw" top.qcow2 flat.raw
all "chain vs qcow2" top.qcow2 flat.qcow2
all "mid vs top" mid.qcow2 top.qcow2
all "short base" base.qcow2 mid.qcow2

# Preallocation and allocation differences (strict mode sees them).
for p in metadata falloc full; do
    mk -f qcow2 -o preallocation=$p pre-$p.qcow2 4M
    io -f qcow2 -c 'write -P 0x12 64k 4k' pre-$p.qcow2
done
mk -f qcow2 pre-off.qcow2 4M
io -f qcow2 -c 'write -P 0x12 64k 4k' pre-off.qcow2
all "metadata vs falloc" pre-metadata.qcow2 pre-falloc.qcow2
all "metadata vs off" pre-metadata.qcow2 pre-off.qcow2
all "full vs off" pre-full.qcow2 pre-off.qcow2
mk -f raw -o preallocation=full rawfull.raw 4M
io -f raw -c 'write -P 0x12 64k 4k' rawfull.raw
all "raw full vs qcow2" rawfull.raw pre-off.qcow2

# Extended L2 and external data files.
mk -f qcow2 -o extended_l2=on x.qcow2 4M
io -f qcow2 -c 'write -P 1 2k 3k' -c 'write -z 70k 4k' x.qcow2
conv -O raw x.qcow2 x.raw
all "extended l2" x.qcow2 x.raw
mk -f qcow2 -o data_file=df.raw ext.qcow2 4M
io -f qcow2 -c 'write -P 1 0 64k' -c 'write -z 1M 64k' ext.qcow2
conv -O raw ext.qcow2 ext.raw
all "data file" ext.qcow2 ext.raw

mk -f qcow2 xbase.qcow2 1M
io -f qcow2 -c 'write -P 1 0 1M' xbase.qcow2
mk -f qcow2 -b xbase.qcow2 -F qcow2 -o extended_l2=on xtop.qcow2 2M
io -f qcow2 -c 'write -P 2 1000k 2k' -c 'write -P 3 1100k 2k' \
    -c 'write -z 1500k 4k' xtop.qcow2
conv -O raw xtop.qcow2 xtop.raw
all "extended l2 over short base" xtop.qcow2 xtop.raw
conv -O qcow2 xtop.qcow2 xtop-flat.qcow2
all "extended l2 over short base, flattened" xtop.qcow2 xtop-flat.qcow2

# Raw files whose size is not in whole sectors.
head -c 1000 /dev/urandom >odd.raw
conv -O qcow2 odd.raw odd.qcow2
all "odd raw" odd.raw odd.qcow2
cp odd.raw odd2.raw
poke odd2.raw 999 00
poke odd.raw 999 01
all "odd last byte" odd.raw odd2.raw

# Many steps: progress accumulates as qemu-img's; block status of large
# unallocated runs is cut at 2 GiB - 1 (qcow2, 2 MiB clusters).
mk -f qcow2 many.qcow2 64M
io -f qcow2 -c 'write -P 1 0 30M' -c 'write -P 2 40M 3M' \
    -c 'write -P 3 63M 1M' many.qcow2
conv -O raw many.qcow2 many.raw
poke many.raw 42000000 ff
all "many steps" many.qcow2 many.raw
mk -f qcow2 -o cluster_size=2M huge.qcow2 5G
io -f qcow2 -c 'write -P 1 3G 64k' -c 'write -P 2 4608M 1M' huge.qcow2
truncate -s 5G huge.raw
printf '\x01' | dd of=huge.raw bs=1 seek=$((3 << 30)) conv=notrunc \
    status=none
all "huge sparse" huge.qcow2 huge.raw
mk -f qcow2 huge2.qcow2 5G
all "huge empty" huge.qcow2 huge2.qcow2

# Formats, options and errors.
same "-f -F" -f qcow2 -F raw img.qcow2 img.raw
same "-f raw on qcow2" -f raw img.qcow2 img.raw
same "-F raw on qcow2" -F raw img.raw img.qcow2
same "-f wrong" -f qcow2 img.raw img.qcow2
same "-F wrong" -F qcow2 img.raw img.raw
same "-f unknown" -f foo img.raw img.raw
same "missing first" nonexistent img.raw
same "missing second" img.raw nonexistent
same "missing -p" -p nonexistent img.raw

# On a pipe the bar is not drawn: stdout holds the result line only.
"$QIMG" compare -p img.raw img.qcow2 >pipe.out 2>pipe.err
echo "status $?" >>pipe.out
printf 'Images are identical.\nstatus 0\n' >pipe.want
expect_same "-p on a pipe: no progress" pipe.want pipe.out
same "-T valid" -T none img.raw img.qcow2
same "-T invalid" -T foo img.raw img.qcow2
same "-T invalid -p" -p -T foo img.raw img.qcow2
same "-U" -U img.raw img.qcow2
same "-q -p" -q -p img.raw d.raw
qemu_create_luks enc.qcow2 1M encrypt.format=luks,encrypt.iter-time=10
same "encrypted" img.raw enc.qcow2
same "one file" img.raw
same "three files" img.raw img.raw img.raw
same "unknown option" -x img.raw img.raw
same "missing argument" img.raw img.raw -f

finish
