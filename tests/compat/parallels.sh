#!/bin/bash
# Parallels images written by qimg against qemu-img 7.2 (reading
# qemu-img's images is in roformats.sh): create makes qemu-img's file byte
# for byte with its "Formatting" line and messages; convert -O parallels
# and guest writes (qimg's write tools against qemu-io, also a random
# differential run) give qemu-img's file byte for byte, read identically
# and check clean; check on crafted damage (in-use mark, clusters outside
# the file, leaked space, duplicate entries) prints what qemu-img prints
# with its exit codes, and -r leaks / -r all leave qemu-img's file.
. "$QIMG_SRCDIR/tests/functions.sh"
: "${QIMG_WRITE_RANDOM:?QIMG_WRITE_RANDOM must point at write_random}"
cd "$T"
W=${QIMG_WRITE_IMAGE:?}
TOOL="python3 $QIMG_SRCDIR/tests/compat/roformats_tool.py"
MiB=1048576

io() { "$QEMU_IO" "$@" >/dev/null || fail "qemu-io $*"; }

# patch FILE OFFSET WIDTH VALUE: overwrite a little-endian field of WIDTH
# bytes (4 or 8).
patch() {
    local v=$(($4)) i bytes=
    for ((i = 0; i < $3; i++)); do
        bytes+=$(printf '\\x%02x' $(((v >> (8 * i)) & 0xff)))
    done
    printf "$bytes" | dd of="$1" bs=1 seek=$(($2)) conv=notrunc status=none
}

# qemu_ok NAME IMAGE: qemu-img finds what qimg wrote clean.
qemu_ok() {
    local out
    out=$("$QEMU_IMG" check "$2" 2>&1) || fail "$1: qemu-img check" "$out"
    pass
}

# same_create NAME ARGS...: "create -f parallels ARGS" (ARGS end with the
# file name x.prl and the size) in q/ by qemu-img and in i/ by qimg: the
# same output and exit status, and the same file when qemu-img made one
# (after a failure qemu-img leaves an empty file, qimg none).
same_create() {
    local name=$1
    shift
    rm -rf q i
    mkdir q i
    (cd q && "$QEMU_IMG" create -f parallels "$@" >../want.out \
        2>../want.err; echo "exit $?" >>../want.out)
    (cd i && "$QIMG" create -f parallels "$@" >../got.out 2>../got.err;
        echo "exit $?" >>../got.out)
    sed -i 's/^qimg: /qemu-img: /' got.err
    expect_same "create $name: stdout" want.out got.out
    expect_same "create $name: stderr" want.err got.err
    if [ -s q/x.prl ]; then
        expect_same "create $name: bytes" q/x.prl i/x.prl
    fi
}

# 1. create: defaults, cluster sizes (rounded up to sectors), sizes that
# are no whole sector or cluster, the limits and bad options.
same_create "default" x.prl 10M
same_create "64k" -o cluster_size=64k x.prl 100M
same_create "tiny" x.prl 1000
same_create "empty" x.prl 0
same_create "1000" -o cluster_size=1000 x.prl 1M
same_create "256" -o cluster_size=256 x.prl 1M
same_create "1" -o cluster_size=1 x.prl 1M
same_create "4k 3G" -o cluster_size=4k x.prl 3G
same_create "1G" -o cluster_size=1G x.prl 1G
same_create "2G-512" -o cluster_size=2147483136 x.prl 1M
same_create "100T" x.prl 100T
# 2^31 BAT entries: qemu-img's header counts them, its BAT size wraps.
same_create "2P" x.prl 2251799813685248
same_create "last fit" x.prl 4503599626321921
same_create "prealloc full" -o preallocation=full x.prl 3M
same_create "prealloc falloc" -o preallocation=falloc,cluster_size=4k \
    x.prl 3M
same_create "too big" x.prl 10P
same_create "too big 2^52-1" x.prl 4503599627370495
same_create "cluster 0" -o cluster_size=0 x.prl 0
same_create "cluster 2G" -o cluster_size=2G x.prl 1M
same_create "cluster 2G-511" -o cluster_size=2147483137 x.prl 1M
same_create "prealloc foo" -o preallocation=foo x.prl 1M
same_create "prealloc metadata" -o preallocation=metadata x.prl 1M
same_out "create help" create -f parallels -o help x.prl

# A raw file with patterns, zero runs and unaligned pieces.
truncate -s $((5 * MiB + 4096)) pattern.raw
io -f raw -c 'write -P 0x17 0 4k' -c 'write -P 0x93 4k 60k' \
    -c 'write -P 0xab 1052672 4k' -c 'write -P 0x5c 3145216 1k' \
    -c 'write -P 0x01 5246464 512' pattern.raw

# 2. convert -O parallels: qemu-img's file, read back identically.
for cs in 1M 64k 4k; do
    rm -f qc.prl ic.prl
    "$QEMU_IMG" convert -f raw -O parallels -o cluster_size=$cs pattern.raw \
        qc.prl || fail "qemu-img convert $cs"
    "$QIMG" convert -f raw -O parallels -o cluster_size=$cs pattern.raw \
        ic.prl || fail "qimg convert $cs"
    expect_same "convert $cs: bytes" qc.prl ic.prl
    "$QEMU_IMG" compare -f raw -F parallels pattern.raw ic.prl >/dev/null ||
        fail "convert $cs: compare"
    pass
    qemu_ok "convert $cs" ic.prl
    same_raw "convert $cs" ic.prl
    same_out "convert $cs: check" check ic.prl
    same_out "convert $cs: check json" check --output=json ic.prl
done

# 3. The same writes through qemu-io and qimg: the same file.  Partial
# clusters take the rest as zeros, zero writes allocate (QEMU 7.2 has no
# zero write for parallels), discards do nothing; a reopen in between.
ops=(w:0:65536:17 w:3145728:4096:34 z:2097152:1048576 w:4193280:2048:51
     w:1049088:1024:68 o w:512:512:85 d:0:4096 w:5246976:100:7 f)
qops=('write -P 17 0 65536' 'write -P 34 3145728 4096'
      'write -z 2097152 1048576' 'write -P 51 4193280 2048'
      'write -P 68 1049088 1024' 'write -P 85 512 512' 'discard 0 4096'
      'write -P 7 5246976 100')
args=()
for c in "${qops[@]}"; do
    args+=(-c "$c")
done
for cs in 1M 64k; do
    "$QIMG" create -q -f parallels -o cluster_size=$cs w-i.prl 5250000 ||
        fail "create for writes"
    cp w-i.prl w-q.prl
    if ! "$W" w-i.prl parallels "${ops[@]}" 2>w.err; then
        fail "write_image $cs" "$(cat w.err)"
        continue
    fi
    io -f parallels "${args[@]}" w-q.prl
    expect_same "writes $cs: bytes" w-q.prl w-i.prl
    qemu_ok "writes $cs" w-i.prl
    same_raw "writes $cs" w-i.prl
done
# Old magic (BAT entries count sectors): writes into and past its data.
"$QEMU_IMG" create -q -f parallels -o cluster_size=64k pb.prl 3000k ||
    fail "create pb.prl"
io -f parallels -c 'write -P 0x93 1052672 60k' -c 'write -P 0x17 0 4k' pb.prl
$TOOL parallels-old po-i.prl pb.prl || fail "make po.prl"
cp po-i.prl po-q.prl
"$W" po-i.prl parallels w:1000:3000:9 w:2097152:70000:10 f 2>w.err ||
    fail "write_image old magic" "$(cat w.err)"
io -f parallels -c 'write -P 9 1000 3000' -c 'write -P 10 2097152 70000' \
    po-q.prl
expect_same "old magic writes: bytes" po-q.prl po-i.prl
qemu_ok "old magic writes" po-i.prl

# A data offset that is no whole cluster (or 0): QEMU 7.2 allocates at
# that unaligned offset and its entries then miss the data; qimg starts
# the data at the next whole cluster, which qemu-img reads back.
"$QEMU_IMG" create -q -f parallels -o cluster_size=64k do.prl 10M
for off in 3 0 1000; do
    cp do.prl do-$off.prl
    patch do-$off.prl 48 4 $off
    "$W" do-$off.prl parallels w:102400:10240:5 w:0:512:6 f 2>w.err ||
        fail "write_image data offset $off" "$(cat w.err)"
    qemu_ok "data offset $off" do-$off.prl
    same_raw "data offset $off" do-$off.prl
    "$QEMU_IO" -r -f parallels -c 'read -P 6 0 512' \
        -c 'read -P 5 100k 10k' -c 'read -P 0 512 512' do-$off.prl \
        >io.out 2>&1 && ! grep -q -i 'fail' io.out ||
        fail "data offset $off: qemu-io reads" "$(cat io.out)"
    pass
done

# A random differential run: every read equals the mirror, then qemu-img
# reads the mirror and finds the image clean.
seed=${QIMG_SEED:-$(( $(date +%s) % 1000000 * 1000 + $$ % 1000 ))}
ops_n=1000
[ "${QIMG_SANITIZED:-0}" = 1 ] && ops_n=300
for cs in 64k 4k; do
    rm -f rnd.prl mirror.raw
    echo "random $cs: seed=$seed"
    if ! "$QIMG_WRITE_RANDOM" -f parallels -o cluster_size=$cs -s 7340544 \
        -n $ops_n -r "$seed" -m mirror.raw -u rnd.prl >run.out 2>run.err
    then
        fail "random $cs (seed=$seed)" "$(cat run.out run.err)"
        continue
    fi
    pass
    out=$("$QEMU_IMG" compare -f parallels -F raw rnd.prl mirror.raw 2>&1) ||
        fail "random $cs: qemu-img compare (seed=$seed)" "$out"
    pass
    qemu_ok "random $cs" rnd.prl
    same_out "random $cs: check" check rnd.prl
    seed=$((seed + 1))
done

# 4. check and repair on crafted damage.  w.prl: clusters of 64 KiB at
# guest 0, 256k and 5M (two) out of guest order.  (Offsets: in-use mark
# 44, data offset 48, BAT from 64.)
"$QEMU_IMG" create -q -f parallels -o cluster_size=64k w.prl 10M
io -f parallels -c 'write -P 0xaa 300k 1k' -c 'write -P 0xbb 0 64k' \
    -c 'write -P 0xcc 5M 100k' w.prl
cp w.prl leak.prl
head -c 131172 /dev/urandom >>leak.prl
cp w.prl sector.prl
head -c 100 /dev/urandom >>sector.prl
declare -A damage=(
    [inuse]="44 4 0x746f6e59"
    [inuse-other]="44 4 1"
    [outside]="80 4 100"
    [far]="100 4 0x7fffffff"
    [at-end]="100 4 5"
    [dup]="92 4 2"
    [data-off]="48 4 0x40"
)
for d in "${!damage[@]}"; do
    cp w.prl "$d.prl"
    # shellcheck disable=SC2086
    patch "$d.prl" ${damage[$d]}
done
cp leak.prl all.prl
patch all.prl 44 4 0x746f6e59
patch all.prl 80 4 100
cp leak.prl leak-out.prl
patch leak-out.prl 96 4 3
for img in w leak sector all leak-out "${!damage[@]}"; do
    same_out "check $img" check $img.prl
    same_out "check json $img" check --output=json $img.prl
    for r in leaks all; do
        cp $img.prl q.prl
        cp $img.prl i.prl
        "$QEMU_IMG" check -r $r q.prl >want.out 2>want.err
        echo "exit $?" >>want.out
        "$QIMG" check -r $r i.prl >got.out 2>got.err
        echo "exit $?" >>got.out
        sed -i 's/^qimg: /qemu-img: /; s/i\.prl/q.prl/g' got.out got.err
        expect_same "check -r $r $img: stdout" want.out got.out
        expect_same "check -r $r $img: stderr" want.err got.err
        expect_same "check -r $r $img: bytes" q.prl i.prl
        cp $img.prl i.prl
        cp $img.prl q.prl
        "$QEMU_IMG" check --output=json -r $r q.prl >want.out 2>want.err
        echo "exit $?" >>want.out
        "$QIMG" check --output=json -r $r i.prl >got.out 2>got.err
        echo "exit $?" >>got.out
        sed -i 's/^qimg: /qemu-img: /; s/i\.prl/q.prl/g' got.out got.err
        expect_same "check json -r $r $img: stdout" want.out got.out
    done
done
# A mark left set refuses read-write opens, as qemu-img's.
cp inuse.prl ro.prl
expect_status "in-use write refused" 1 "$W" ro.prl parallels w:0:512:1
grep -q 'parallels: Image was not closed correctly; cannot be opened' \
    "$T/.err" || fail "in-use write: message" "$(cat "$T/.err")"
expect_same "in-use write: unchanged" inuse.prl ro.prl
same_raw "in-use read" inuse.prl

# A BAT entry naming a cluster inside the BAT (4 KiB clusters, a 16 KiB
# BAT): a write there is refused and the file left as it was (qemu-io
# writes guest data over the BAT, and its check then finds 128 errors).
"$QEMU_IMG" create -q -f parallels -o cluster_size=4k onbat.prl 16M
"$QEMU_IO" -c 'write -P 0x11 0 4k' onbat.prl >/dev/null ||
    fail "qemu-io write onbat"
patch onbat.prl 68 4 1
cp onbat.prl before.prl
expect_status "data on the BAT: write" 1 "$W" onbat.prl parallels \
    w:4096:512:90
checks=$((checks + 1))
grep -q "Parallels image is corrupt: a write at offset 4096 would overwrite the header or the BAT$" \
    "$T/.err" || fail "data on the BAT: message" "$(cat "$T/.err")"
checks=$((checks + 1))
cmp -s before.prl onbat.prl || fail "data on the BAT: the file changed"

# The runtime options prealloc-mode and prealloc-size: checked as QEMU
# checks them; a write with them leaves qemu-img's file.
"$QEMU_IMG" create -q -f parallels opt.prl 4M
for o in prealloc-mode=falloc prealloc-mode=truncate prealloc-mode=bad \
    prealloc-mode= prealloc-size=1M prealloc-size=0 prealloc-size=abc \
    prealloc-size=-1 prealloc-size=16k,prealloc-mode=truncate; do
    same_out "option $o" info --image-opts \
        "driver=parallels,file.filename=opt.prl,$o"
done
cp opt.prl q.prl
cp opt.prl i.prl
"$QEMU_IO" -c 'write -P 0x5a 1M 8k' --image-opts \
    driver=parallels,file.filename=q.prl,prealloc-mode=truncate,prealloc-size=64k \
    >/dev/null || fail "qemu-io with prealloc options"
"$QIMG" convert -n q.prl --target-image-opts \
    driver=parallels,file.filename=i.prl,prealloc-mode=truncate,prealloc-size=64k ||
    fail "qimg convert -n with prealloc options"
"$QEMU_IMG" convert -O raw q.prl want.raw
"$QEMU_IMG" convert -O raw i.prl got.raw
expect_same "prealloc options: contents" want.raw got.raw
qemu_ok "prealloc options: check" i.prl

finish
