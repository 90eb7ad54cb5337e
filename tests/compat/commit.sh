#!/bin/bash
# qimg commit against qemu-img commit (7.2), side by side: each case
# builds a chain with qemu-img/qemu-io and copies it (want/ and got/),
# runs qemu-img commit in want/ and qimg commit in got/ with the same
# arguments, and requires the same stdout (progress lines aside: qimg
# draws them on terminals only), stderr and exit status, and images
# alike: every file of the chain with the same contents (qemu-img
# compare), the same info (backing names and formats, sizes), the same
# allocation (map without host offsets), qemu-img check clean, and the
# emptied top image byte for byte as qemu-img leaves it.
. "$QIMG_SRCDIR/tests/functions.sh"
cd "$T"

mk() { "$QEMU_IMG" create -q "$@" >/dev/null || fail "qemu-img create $*"; }
io() { "$QEMU_IO" "$@" >/dev/null || fail "qemu-io $*"; }

norm() {
    local f
    for f in "$@"; do
        tr '\r' '\n' <"$f" | grep -v '^ *([0-9.]*/100%)$' | grep -v '^$' |
            sed -e 's/^qemu-img: /qimg: /' \
                -e "s/'qemu-img --help'/'qimg --help'/" >"$f.n"
        mv "$f.n" "$f"
    done
}

# describe DIR FILE: what qemu-img sees of one image, names filtered.
describe() {
    (
        cd "$1" || exit 1
        "$QEMU_IMG" info -U --output=json "$2" |
            grep -v '"actual-size"\|"filename"\|"dirty-flag"'
        map_layout "$2"
    ) 2>&1
}

# same NAME SETUP ARGS...: run SETUP in want/ and got/, then commit ARGS.
same() {
    local name=$1 setup=$2
    shift 2
    rm -rf src want got
    mkdir src
    # One chain, copied: both tools start from the same bytes.
    (cd src && $setup) || fail "$name: setup"
    cp -a src want
    cp -a src got
    # @DIR@ in an argument is the copy's own folder.
    local a want_args=() got_args=()
    for a in "$@"; do
        want_args+=("${a//@DIR@/$T/want}")
        got_args+=("${a//@DIR@/$T/got}")
    done
    (cd want && "$QEMU_IMG" commit "${want_args[@]}" >../want.out \
        2>../want.err
     echo "status $?" >>../want.out)
    (cd got && "$QIMG" commit "${got_args[@]}" >../got.out 2>../got.err
     echo "status $?" >>../got.out)
    norm want.out want.err got.out got.err
    expect_same "$name: stdout" want.out got.out
    expect_same "$name: stderr" want.err got.err
    local f
    for f in $(cd want && find . -type f | sort); do
        checks=$((checks + 1))
        # The same bytes as qemu-img's: nothing more to compare.
        if files_equal "want/$f" "got/$f"; then
            continue
        fi
        if ! "$QEMU_IMG" compare -U "want/$f" "got/$f" >cmp.out 2>&1; then
            fail "$name: $f contents" "$(cat cmp.out)"
        fi
        describe want "$f" >want.desc
        describe got "$f" >got.desc
        expect_same "$name: $f info and map" want.desc got.desc
        case $f in
        *.qcow2)
            checks=$((checks + 1))
            if ! "$QEMU_IMG" check -U "got/$f" >chk.out 2>&1; then
                fail "$name: $f check" "$(cat chk.out)"
            fi
            ;;
        esac
    done
    if [ -n "${EMPTIED:-}" ]; then
        checks=$((checks + 1))
        files_equal "want/$EMPTIED" "got/$EMPTIED" ||
            fail "$name: $EMPTIED not emptied as qemu-img empties it"
    fi
}

# ---- Chains ----------------------------------------------------------------

# raw base, qcow2 overlay: data, a zero cluster over data, partial cluster
two_raw() {
    mk -f raw base.raw 4M
    io -f raw -c 'write -P 1 0 4M' base.raw
    mk -f qcow2 -b base.raw -F raw top.qcow2
    io -c 'write -P 3 1M 128k' -c 'write -z 2M 64k' -c 'write -P 4 100k 3k' \
        -c 'write -P 5 4032k 64k' top.qcow2
}

two_qcow2() {
    mk -f qcow2 base.qcow2 4M
    io -c 'write -P 1 0 2M' base.qcow2
    mk -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
    io -c 'write -P 3 1M 128k' -c 'write -z 64k 64k' -c 'write -z 3M 64k' \
        -c 'write -P 6 3500k 10k' top.qcow2
}

# base <- mid <- top, the top larger than the others
three() {
    mk -f raw base.raw 4M
    io -f raw -c 'write -P 1 0 4M' base.raw
    mk -f qcow2 -b base.raw -F raw mid.qcow2
    io -c 'write -P 2 1M 1M' -c 'write -z 3M 64k' mid.qcow2
    mk -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 6M
    io -c 'write -P 3 1536k 1M' -c 'write -z 0 64k' -c 'write -P 7 5M 5k' \
        top.qcow2
}

three_qcow2() {
    mk -f qcow2 -o cluster_size=4k base.qcow2 2M
    io -c 'write -P 1 0 2M' base.qcow2
    mk -f qcow2 -o cluster_size=16k -b base.qcow2 -F qcow2 mid.qcow2
    io -c 'write -P 2 4k 20k' -c 'write -z 1M 16k' mid.qcow2
    mk -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 3M
    io -c 'write -P 3 10k 1k' -c 'write -P 8 2500k 4k' top.qcow2
}

larger_raw() {
    mk -f raw base.raw 1M
    io -f raw -c 'write -P 1 0 1M' base.raw
    mk -f qcow2 -b base.raw -F raw top.qcow2 3M
    io -c 'write -P 9 2M 64k' -c 'write -P 9 512k 1k' top.qcow2
}

larger_qcow2() {
    mk -f qcow2 base.qcow2 1M
    io -c 'write -P 1 0 1M' base.qcow2
    mk -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 3M
    io -c 'write -P 9 2M 64k' -c 'write -z 0 64k' top.qcow2
}

# The layers of the overlay QEMU cannot empty quickly: every cluster is
# then discarded one by one.
v2_top() {
    mk -f qcow2 base.qcow2 2M
    io -c 'write -P 1 0 2M' base.qcow2
    mk -f qcow2 -o compat=0.10 -b base.qcow2 -F qcow2 top.qcow2
    io -c 'write -P 3 64k 200k' -c 'write -P 4 1M 4k' top.qcow2
}

snap_top() {
    mk -f qcow2 base.qcow2 2M
    io -c 'write -P 1 0 2M' base.qcow2
    mk -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
    io -c 'write -P 3 0 256k' top.qcow2
    "$QEMU_IMG" snapshot -c s1 top.qcow2 || fail "snapshot"
    io -c 'write -P 4 128k 256k' -c 'write -z 1M 64k' top.qcow2
}

extl2_top() {
    mk -f raw base.raw 2M
    io -f raw -c 'write -P 1 0 2M' base.raw
    mk -f qcow2 -o extended_l2=on -b base.raw -F raw top.qcow2
    io -c 'write -P 3 4k 4k' -c 'write -z 64k 2k' -c 'write -P 5 1M 100k' \
        top.qcow2
}

# A chain in a subfolder, named relative to it.
sub_chain() {
    mkdir -p sub
    mk -f raw sub/base.raw 2M
    io -f raw -c 'write -P 1 0 2M' sub/base.raw
    mk -f qcow2 -b base.raw -F raw sub/mid.qcow2
    io -c 'write -P 2 0 64k' sub/mid.qcow2
    mk -f qcow2 -b mid.qcow2 -F qcow2 sub/top.qcow2
    io -c 'write -P 3 1M 64k' sub/top.qcow2
}

no_backing() {
    mk -f qcow2 alone.qcow2 1M
    mk -f raw alone.raw 1M
}

# ---- Cases -----------------------------------------------------------------

EMPTIED=top.qcow2 same "raw base" two_raw top.qcow2
EMPTIED=top.qcow2 same "qcow2 base" two_qcow2 top.qcow2
EMPTIED=top.qcow2 same "-f" two_qcow2 -f qcow2 top.qcow2
EMPTIED=top.qcow2 same "3 layers, into the middle" three top.qcow2
same "3 layers, -b middle" three -b mid.qcow2 top.qcow2
same "3 layers, -b bottom" three -b base.raw top.qcow2
same "3 layers, -b ./bottom" three -b ./base.raw top.qcow2
same "3 layers, -b absolute" three -b @DIR@/base.raw top.qcow2
same "3 layers, -b bottom, -d" three -d -b base.raw top.qcow2
EMPTIED=top.qcow2 same "3 qcow2 layers, small clusters" three_qcow2 \
    top.qcow2
same "3 qcow2 layers, -b bottom" three_qcow2 -b base.qcow2 top.qcow2
same "3 layers, -d" three -d top.qcow2
EMPTIED=mid.qcow2 same "commit the middle" three mid.qcow2
EMPTIED=top.qcow2 same "larger overlay, raw base" larger_raw top.qcow2
EMPTIED=top.qcow2 same "larger overlay, qcow2 base" larger_qcow2 top.qcow2
EMPTIED=top.qcow2 same "v2 overlay" v2_top top.qcow2
EMPTIED=top.qcow2 same "overlay with a snapshot" snap_top top.qcow2
EMPTIED=top.qcow2 same "extended L2 overlay" extl2_top top.qcow2
EMPTIED=top.qcow2 same "-q -p -t -r" two_raw -q -p -t unsafe -r 1M \
    top.qcow2
EMPTIED=top.qcow2 same "-p" two_qcow2 -p -t none top.qcow2
EMPTIED=sub/top.qcow2 same "subfolder" sub_chain sub/top.qcow2
same "subfolder, -b as stored" sub_chain -b base.raw sub/top.qcow2
same "subfolder, -b from here" sub_chain -b sub/base.raw sub/top.qcow2

# Failures.
same "no backing file (qcow2)" no_backing alone.qcow2
same "no backing file (raw)" no_backing alone.raw
same "no backing file (-f raw)" no_backing -f raw alone.raw
same "base not in the chain" three -b nothere top.qcow2
same "base is the image" three -b top.qcow2 top.qcow2
same "wrong format" three -f raw top.qcow2
same "missing image" no_backing nofile.qcow2
same "no image" no_backing
same "two images" no_backing a b
same "bad rate" two_raw -r abc top.qcow2
same "bad cache" two_raw -t bogus top.qcow2
same "unknown option" two_raw -k top.qcow2
same "missing argument" two_raw top.qcow2 -b

# The guide's workflow: an overlay made by qimg, writes, commit; the base
# holds the data.
rm -rf guide
mkdir guide
(
    cd guide
    mk -f raw base.img 2M
    "$QIMG" create -q -f qcow2 -b base.img -F raw overlay.qcow2 ||
        fail "guide: create"
    io -c 'write -P 0x5a 64k 128k' overlay.qcow2
    "$QIMG" commit overlay.qcow2 >out 2>&1 || fail "guide: commit" "$(cat out)"
    checks=$((checks + 1))
    "$QEMU_IO" -f raw -c 'read -P 0x5a 64k 128k' -c 'read -P 0 0 64k' \
        -c 'read -P 0 192k 1856k' base.img >reads 2>&1
    grep -q 'Pattern verification failed' reads && fail "guide: base" \
        "$(cat reads)"
    checks=$((checks + 1))
    "$QEMU_IO" -c 'read -P 0x5a 64k 128k' overlay.qcow2 >reads 2>&1
    grep -q 'Pattern verification failed' reads && fail "guide: overlay" \
        "$(cat reads)"
    checks=$((checks + 1))
    "$QEMU_IMG" check overlay.qcow2 >chk 2>&1 || fail "guide: check" \
        "$(cat chk)"
    echo "$checks $failures" >../guide.counts
)
read -r checks failures <guide.counts

finish
