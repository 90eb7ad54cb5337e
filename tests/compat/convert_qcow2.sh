#!/bin/bash
# qimg convert to qcow2 (and into existing targets) against qemu-img 7.2:
# every output passes qemu-img check and compares identical to its source;
# qemu-img info and the data/zero/present layout of qemu-img map match
# qemu-img's own conversion; messages and exit statuses of misuse match.
. "$QIMG_SRCDIR/tests/functions.sh"
cd "$T"

# mkraw FILE SIZE [OFFSET:LEN:KIND]...: a sparse file with random data
# ("d"), a repeated text ("t") or written zeroes ("z") at byte ranges.
mkraw() {
    local file=$1 size=$2 spec off len kind
    shift 2
    rm -f "$file"
    truncate -s "$size" "$file"
    for spec in "$@"; do
        IFS=: read -r off len kind <<<"$spec"
        case $kind in
        d) head -c "$len" /dev/urandom ;;
        t) yes 'qimg converts images' | head -c "$len" ;;
        *) head -c "$len" /dev/zero ;;
        esac | dd of="$file" bs=1M seek="$off" oflag=seek_bytes \
            conv=notrunc status=none
    done
}

qio() {
    "$QEMU_IO" "$@" >/dev/null || fail "qemu-io $*"
}

# Raw sources: holes, data, zero runs around cluster boundaries, a size
# that is not a multiple of the cluster size, a text that compresses.
mkraw mixed.raw 9M 0:4096:d 4096:512:z 8192:4096:z 12288:3000:d \
    65536:65536:z 131072:70000:d 262144:1M:z 1310720:512:d \
    1376256:200k:t 2M:1:d 3M:1M:z 5M:1M:t 7M:64k:d 8M:17k:d
mkraw odd.raw 1234567 100:300:d 70000:2000:z 300000:100000:t
mkraw hole.raw 4M

# qcow2 sources made by qemu: data, zero clusters (with and without an
# allocation), discarded ranges, compressed clusters, extended L2 with
# subcluster writes, a snapshot.
"$QEMU_IMG" create -q -f qcow2 plain.qcow2 6M
qio -c 'write -P 0x11 0 192k' -c 'write -z 256k 128k' \
    -c 'write -P 0x22 1M 4k' -c 'write -P 0 2M 64k' \
    -c 'write -z -u 3M 64k' -c 'write -P 0x33 4M 1M' \
    -c 'discard 4M 64k' plain.qcow2
"$QEMU_IMG" convert -q -c -f raw -O qcow2 mixed.raw comp.qcow2
"$QEMU_IMG" create -q -f qcow2 -o extended_l2=on,cluster_size=64k \
    ext.qcow2 3M
qio -c 'write -P 0x44 0 2k' -c 'write -P 0x45 8k 6k' \
    -c 'write -z 70k 4k' -c 'write -P 0x46 1M 100k' ext.qcow2
"$QEMU_IMG" create -q -f qcow2 snap.qcow2 2M
qio -c 'write -P 0x55 0 1M' snap.qcow2
"$QEMU_IMG" snapshot -c s1 snap.qcow2
qio -c 'write -P 0x66 512k 1M' snap.qcow2

# A chain: base (raw data and holes) <- mid <- top; top is longer than
# its backing file.
mkraw base.raw 4M 0:1M:d 2M:512k:t
"$QEMU_IMG" convert -q -f raw -O qcow2 base.raw base.qcow2
"$QEMU_IMG" create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2 4M
qio -c 'write -P 0x77 512k 256k' -c 'write -z 2M 64k' mid.qcow2
"$QEMU_IMG" create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 6M
qio -c 'write -P 0x88 64k 64k' -c 'write -P 0x99 5M 64k' \
    -c 'write -z 3M 64k' top.qcow2
# A new base that equals the chain's contents in part: data copied from
# the chain, and one cluster changed.
"$QEMU_IMG" convert -q -O qcow2 top.qcow2 flat.qcow2
"$QEMU_IMG" convert -q -O qcow2 mid.qcow2 newbase.qcow2
qio -c 'write -P 0xaa 1M 64k' newbase.qcow2

# jmap FILE: qemu-img map of FILE without host offsets, adjacent entries
# of the same kind merged (qimg may lay clusters out elsewhere).
jmap() {
    "$QEMU_IMG" map --output=json "$1" | python3 -c '
import json, sys
out = []
for e in json.load(sys.stdin):
    key = (e["depth"], e["present"], e["zero"], e["data"])
    if out and out[-1][0] == key and \
            out[-1][1] + out[-1][2] == e["start"]:
        out[-1][2] += e["length"]
    else:
        out.append([key, e["start"], e["length"]])
for key, start, length in out:
    print(start, length, "depth=%d present=%s zero=%s data=%s" % key)
'
}

# jinfo FILE: qemu-img info without what may differ (names, disk size).
jinfo() {
    "$QEMU_IMG" info --output=json "$1" | python3 -c '
import json, sys
i = json.load(sys.stdin)
for k in ("filename", "actual-size", "dirty-flag"):
    i.pop(k, None)
print(json.dumps(i, indent=1, sort_keys=True))
'
}

# checkcounts FILE: the cluster counts of qemu-img check.
checkcounts() {
    "$QEMU_IMG" check --output=json "$1" | python3 -c '
import json, sys
c = json.load(sys.stdin)
print({k: c.get(k, 0) for k in ("allocated-clusters", "compressed-clusters",
                                "total-clusters")})
'
}

# judge NAME SRCARGS GOT: qemu-img check is clean and qemu-img compare
# says GOT reads as the source (SRCARGS "none": no comparison).
judge() {
    local name=$1 src=$2 got=$3
    checks=$((checks + 1))
    if ! "$QEMU_IMG" check "$got" >check.out 2>&1 ||
        ! grep -q '^No errors were found on the image.$' check.out; then
        fail "$name: qemu-img check" "$(cat check.out)"
    fi
    [ "$src" = none ] && return
    checks=$((checks + 1))
    # shellcheck disable=SC2086
    if ! "$QEMU_IMG" compare $src "$got" >cmp.out 2>&1; then
        fail "$name: qemu-img compare" "$(cat cmp.out)"
    fi
}

# conv NAME ARGS... SOURCE: convert SOURCE with both tools to want.qcow2
# and got.qcow2 (MAP=0: layouts and cluster counts not compared; SRC:
# compare's source arguments when they are not just SOURCE).
conv() {
    local name=$1
    shift
    local src=${*: -1}
    rm -f want.qcow2 got.qcow2
    "$QEMU_IMG" convert "$@" want.qcow2 >want.out 2>want.err
    echo "status $?" >>want.out
    "$QIMG" convert "$@" got.qcow2 >got.out 2>got.err
    echo "status $?" >>got.out
    sed -i 's/^qemu-img: /qimg: /; s/want\.qcow2/got.qcow2/g' want.err
    expect_same "$name: stdout" want.out got.out
    expect_same "$name: stderr" want.err got.err
    [ -e got.qcow2 ] || return
    judge "$name" "${SRC:-$src}" got.qcow2
    jinfo want.qcow2 >want.info
    jinfo got.qcow2 >got.info
    expect_same "$name: info" want.info got.info
    [ "${MAP:-1}" = 1 ] || return
    jmap want.qcow2 >want.map
    jmap got.qcow2 >got.map
    expect_same "$name: map" want.map got.map
    checkcounts want.qcow2 >want.counts
    checkcounts got.qcow2 >got.counts
    expect_same "$name: clusters" want.counts got.counts
}

# Raw sources to qcow2, with creation options and -S.
for src in mixed odd hole; do
    conv "$src" -f raw -O qcow2 "$src.raw"
    conv "$src -S 0" -f raw -O qcow2 -S 0 "$src.raw"
done
conv "mixed -S 64k" -f raw -O qcow2 -S 64k mixed.raw
conv "mixed -S 512" -f raw -O qcow2 -S 512 mixed.raw
for o in cluster_size=4k cluster_size=2M cluster_size=512 compat=0.10 \
    extended_l2=on extended_l2=on,cluster_size=128k refcount_bits=1 \
    compression_type=zstd preallocation=metadata compat=0.10,preallocation=metadata; do
    conv "mixed -o $o" -f raw -O qcow2 -o "$o" mixed.raw
done
conv "mixed -o metadata -S 0" -f raw -O qcow2 -o preallocation=metadata \
    -S 0 mixed.raw
# Several sources are concatenated (each padded to 512 bytes).
"$QEMU_IMG" convert -f raw -O raw odd.raw mixed.raw cat.raw
SRC="-f raw cat.raw" conv "concat" -f raw -O qcow2 odd.raw mixed.raw
SRC="-f raw cat.raw" conv "concat -c" -f raw -O qcow2 -c odd.raw mixed.raw

# qcow2 sources, a snapshot and a chain (copied whole).
for src in plain comp ext top; do
    conv "$src" -O qcow2 "$src.qcow2"
done
conv "plain -S 0" -O qcow2 -S 0 plain.qcow2
conv "top -S 0" -O qcow2 -S 0 top.qcow2
conv "ext to extended_l2" -O qcow2 -o extended_l2=on ext.qcow2
conv "plain to compat=0.10" -O qcow2 -o compat=0.10 plain.qcow2
"$QEMU_IMG" convert -l s1 -O raw snap.qcow2 s1.raw
SRC="-f raw s1.raw" conv "snapshot" -O qcow2 -l s1 snap.qcow2
SRC="-f raw s1.raw" conv "snapshot.name" -O qcow2 -l snapshot.name=s1 \
    snap.qcow2

# Parallel and out-of-order writes: the same contents and layout.
for m in "-m 1" "-m 16 -W"; do
    # shellcheck disable=SC2086
    conv "mixed $m" -f raw -O qcow2 $m mixed.raw
    # shellcheck disable=SC2086
    conv "top $m -c" -O qcow2 -c $m top.qcow2
done

# Compressed: zlib and zstd, tail cluster, all-zero clusters skipped.
for src in mixed odd; do
    conv "$src -c" -f raw -O qcow2 -c "$src.raw"
    conv "$src -c zstd" -f raw -O qcow2 -c -o compression_type=zstd \
        "$src.raw"
done
conv "mixed -c -S 0" -f raw -O qcow2 -c -S 0 mixed.raw
conv "odd -c 4k" -f raw -O qcow2 -c -o cluster_size=4k odd.raw
for src in plain comp ext; do
    conv "$src -c" -O qcow2 -c "$src.qcow2"
done
conv "mixed -c 2M" -f raw -O qcow2 -c -o cluster_size=2M mixed.raw

# Compression runs on every worker at once, but the clusters are stored
# in guest order: the file is qemu-img's, byte for byte, whatever the
# number of threads.
for o in compression_type=zlib compression_type=zstd cluster_size=4k \
    cluster_size=2M,compression_type=zstd; do
    rm -f want.qcow2
    "$QEMU_IMG" convert -c -f raw -O qcow2 -o "$o" mixed.raw want.qcow2
    for m in 1 2 3 8; do
        rm -f got.qcow2
        "$QIMG" convert -c -m "$m" -f raw -O qcow2 -o "$o" mixed.raw \
            got.qcow2 || fail "-c -o $o -m $m: status $?"
        expect_same "-c -o $o -m $m: the bytes of qemu-img's file" \
            want.qcow2 got.qcow2
    done
done

# -B: the top layer over the new backing file.  Over the chain's own
# backing file the result is qemu-img's; the layout differs where the
# copied data equals the new backing file (qimg leaves it unallocated).
conv "top -B mid" -O qcow2 -B mid.qcow2 -F qcow2 top.qcow2
conv "top -B mid -S 0" -O qcow2 -B mid.qcow2 -F qcow2 -S 0 top.qcow2
conv "top -o backing" -O qcow2 \
    -o backing_file=mid.qcow2,backing_fmt=qcow2 top.qcow2
conv "top -B mid -c" -O qcow2 -c -B mid.qcow2 -F qcow2 top.qcow2
conv "mid -B base" -O qcow2 -B base.qcow2 -F qcow2 mid.qcow2
conv "top -B mid ext" -O qcow2 -B mid.qcow2 -F qcow2 -o extended_l2=on \
    top.qcow2
conv "top -B mid v2" -O qcow2 -B mid.qcow2 -F qcow2 -o compat=0.10 \
    top.qcow2
MAP=0 conv "flat -B newbase" -O qcow2 -B newbase.qcow2 -F qcow2 flat.qcow2
MAP=0 conv "flat -B newbase -c" -O qcow2 -c -B newbase.qcow2 -F qcow2 \
    flat.qcow2
# Only the clusters that differ from newbase are stored: the ones that
# top and mid wrote (that newbase's copy of mid already holds are left
# out) and the one changed in newbase.
"$QEMU_IMG" map --output=json got.qcow2 >/dev/null
checks=$((checks + 1))
n=$("$QEMU_IMG" check --output=json got.qcow2 |
    python3 -c 'import json,sys; print(json.load(sys.stdin).get(
        "allocated-clusters", 0))')
[ "$n" -le 4 ] || fail "flat -B newbase: $n clusters stored"
MAP=0 conv "mixed -B base" -f raw -O qcow2 -B base.qcow2 -F qcow2 mixed.raw

# -n: into an existing qcow2 of the right size (full of data, or fresh),
# and a raw target; zeroes must then be written.
existing() {
    local name=$1 make=$2
    shift 2
    rm -f want.qcow2 got.qcow2
    eval "$make want.qcow2"
    cp want.qcow2 got.qcow2
    "$QEMU_IMG" convert -n "$@" want.qcow2 >want.out 2>want.err
    echo "status $?" >>want.out
    "$QIMG" convert -n "$@" got.qcow2 >got.out 2>got.err
    echo "status $?" >>got.out
    sed -i 's/^qemu-img: /qimg: /; s/want\.qcow2/got.qcow2/g' want.err
    expect_same "$name: stdout" want.out got.out
    expect_same "$name: stderr" want.err got.err
    checks=$((checks + 1))
    "$QEMU_IMG" compare want.qcow2 got.qcow2 >cmp.out 2>&1 ||
        fail "$name: contents differ from qemu-img's" "$(cat cmp.out)"
    if [ "${FMT:-qcow2}" = qcow2 ]; then
        judge "$name" "${SRC:-${*: -1}}" got.qcow2
        if [ "${MAP:-1}" = 1 ]; then
            jmap want.qcow2 >want.map
            jmap got.qcow2 >got.map
            expect_same "$name: map" want.map got.map
        fi
    fi
}
full9m() {
    "$QEMU_IMG" create -q -f qcow2 "$1" 9M
    "$QEMU_IO" -c 'write -P 0xee 0 9M' "$1" >/dev/null
}
fresh9m() {
    "$QEMU_IMG" create -q -f qcow2 "$1" 9M
}
existing "-n full" full9m -f raw -O qcow2 mixed.raw
existing "-n fresh" fresh9m -f raw -O qcow2 mixed.raw
existing "-n full -S 0" full9m -f raw -O qcow2 -S 0 mixed.raw
existing "-n full -S 64k" full9m -f raw -O qcow2 -S 64k mixed.raw
existing "-n fresh target-is-zero" fresh9m -f raw -O qcow2 \
    --target-is-zero mixed.raw
existing "-n fresh -c" fresh9m -f raw -O qcow2 -c mixed.raw
existing "-n full -W" full9m -f raw -O qcow2 -W -m 4 mixed.raw
full6m() {
    "$QEMU_IMG" create -q -f qcow2 "$1" 6M
    "$QEMU_IO" -c 'write -P 0xee 0 6M' "$1" >/dev/null
}
existing "-n full from qcow2" full6m -O qcow2 plain.qcow2
full6m_over_mid() {
    "$QEMU_IMG" create -q -f qcow2 -b mid.qcow2 -F qcow2 "$1" 6M
    "$QEMU_IO" -c 'write -P 0xee 0 1M' "$1" >/dev/null
}
# -n -B: only the source's top layer is written; the rest of the target
# is left as it was.
SRC=none existing "-n -B" full6m_over_mid -O qcow2 -B mid.qcow2 top.qcow2
rawfull() {
    head -c 9M /dev/urandom >"$1"
}
rawfull6m() {
    head -c 6M /dev/urandom >"$1"
}
FMT=raw existing "-n raw" rawfull -f raw -O raw mixed.raw
FMT=raw existing "-n raw -W -m 3" rawfull -f raw -O raw -W -m 3 mixed.raw
FMT=raw existing "-n raw -B" rawfull6m -O raw -B mid.qcow2 top.qcow2
FMT=raw existing "-n raw -B -S 0" rawfull6m -O raw -B mid.qcow2 -S 0 \
    top.qcow2
FMT=raw existing "-n raw -B from raw" rawfull -O raw -B mid.qcow2 \
    -f raw mixed.raw

# misuse NAME ARGS...: messages and status as qemu-img's; qimg leaves no
# file behind (qemu-img may leave the target it created).
misuse() {
    local name=$1
    shift
    rm -rf q m && mkdir q m
    for d in q m; do
        cp odd.raw mixed.raw mid.qcow2 base.qcow2 "$d/"
        "$QEMU_IMG" create -q -f qcow2 "$d/small.qcow2" 1M
    done
    (cd q && "$QEMU_IMG" convert "$@" >../want.out 2>../want.err
     echo "status $?" >>../want.out)
    (cd q && find . -type f -newer odd.raw -printf '%p\n' | sort) \
        >want.files
    (cd m && find . -type f -printf '%p %s\n' | sort) >before.files
    (cd m && "$QIMG" convert "$@" >../got.out 2>../got.err
     echo "status $?" >>../got.out)
    (cd m && find . -type f -printf '%p %s\n' | sort) >after.files
    sed -i 's/^qemu-img: /qimg: /; s/qemu-img --help/qimg --help/' want.err
    expect_same "$name: stdout" want.out got.out
    expect_same "$name: stderr" want.err got.err
    expect_same "$name: no file left" before.files after.files
}
misuse "-B without -F" -O qcow2 -B base.qcow2 odd.raw o
misuse "backing_file without fmt" -O qcow2 -o backing_file=base.qcow2 \
    odd.raw o
misuse "-B concat" -O qcow2 -B base.qcow2 -F qcow2 odd.raw odd.raw o
misuse "target-is-zero -B" -n -O qcow2 --target-is-zero -B base.qcow2 \
    -F qcow2 odd.raw small.qcow2
misuse "-c preallocation" -O qcow2 -c -o preallocation=metadata odd.raw o
misuse "-c encryption" -O qcow2 -c -o encryption=on odd.raw o
misuse "-c encrypt.format" -O qcow2 -c -o encrypt.format=luks odd.raw o
misuse "-c raw" -c odd.raw o
misuse "-c -n raw" -c -n -f raw odd.raw mixed.raw
misuse "-c -C" -O qcow2 -c -C odd.raw o
misuse "-F raw" -O raw -F qcow2 odd.raw o
misuse "-F without -B" -O qcow2 -F qcow2 odd.raw o
misuse "-B raw" -O raw -B x odd.raw o
misuse "bad cluster_size" -O qcow2 -o cluster_size=1000 odd.raw o
misuse "cluster_size text" -O qcow2 -o cluster_size=abc odd.raw o
misuse "unknown option" -O qcow2 -o foo=bar odd.raw o
misuse "v2 extended_l2" -O qcow2 -o compat=0.10,extended_l2=on odd.raw o
misuse "v2 zstd -c" -O qcow2 -c -o compat=0.10,compression_type=zstd \
    odd.raw o
misuse "prealloc with backing" -O qcow2 -B base.qcow2 -F qcow2 \
    -o preallocation=metadata odd.raw o
misuse "missing backing" -O qcow2 -B nonexist -F qcow2 odd.raw o
misuse "missing directory" -O qcow2 odd.raw nodir/o
misuse "-n small" -n -O qcow2 mixed.raw small.qcow2
misuse "-n wrong format" -n -O qcow2 -f raw odd.raw mixed.raw
misuse "-o help" -O qcow2 -o help
misuse "-o help with target" -O qcow2 -o help odd.raw o
misuse "-o ? " -O qcow2 -o '?' odd.raw o
misuse "-m 0" -O qcow2 -m 0 odd.raw o

finish
