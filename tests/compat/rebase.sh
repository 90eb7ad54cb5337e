#!/bin/bash
# qimg rebase against qemu-img rebase (7.2), side by side: each case
# builds a chain with qemu-img/qemu-io and copies it (want/ and got/),
# runs qemu-img rebase in want/ and qimg rebase in got/ with the same
# arguments, and requires the same stdout (progress lines aside), stderr
# and exit status, and images alike: every file with the same contents
# (qemu-img compare), the same info (backing file names and formats), the
# same allocation map, qemu-img check clean, and the rebased image byte
# for byte as qemu-img writes it.
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

# same NAME SETUP ARGS...: run SETUP once, copy it to want/ and got/,
# then rebase ARGS in each.
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
    (cd want && "$QEMU_IMG" rebase "${want_args[@]}" >../want.out \
        2>../want.err
     echo "status $?" >>../want.out)
    (cd got && "$QIMG" rebase "${got_args[@]}" >../got.out 2>../got.err
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
    # The copy writes what qemu-img writes, in its order: same bytes.
    if [ -n "${SAME_BYTES:-}" ]; then
        checks=$((checks + 1))
        files_equal "want/$SAME_BYTES" "got/$SAME_BYTES" ||
            fail "$name: $SAME_BYTES differs from qemu-img's bytes"
    fi
}

# ---- Chains ----------------------------------------------------------------

# top over a raw base; two candidate new bases that differ from it in
# places (a qcow2 one longer than the old base, a raw one shorter).
bases() {
    mkdir -p sub
    mk -f raw base.raw 4M
    io -f raw -c 'write -P 1 0 4M' base.raw
    mk -f qcow2 new.qcow2 5M
    io -c 'write -P 1 0 1M' -c 'write -P 5 1M 64k' -c 'write -P 1 1100k 1k' \
        -c 'write -P 1 2M 2M' -c 'write -P 6 4M 1M' new.qcow2
    mk -f raw short.raw 3M
    io -f raw -c 'write -P 1 0 3M' -c 'write -P 2 10k 1k' short.raw
    cp new.qcow2 sub/new.qcow2
    mk -f raw sub/base.raw 2M
    io -f raw -c 'write -P 1 0 2M' sub/base.raw
}

top_raw() {
    bases
    mk -f qcow2 -b base.raw -F raw top.qcow2 6M
    io -c 'write -P 3 3M 64k' -c 'write -z 200k 64k' -c 'write -P 4 5M 4k' \
        top.qcow2
    mk -f qcow2 -b base.raw -F raw sub/o.qcow2
    mk -f qcow2 -b ../base.raw -F raw sub/up.qcow2
    io -c 'write -P 8 0 64k' sub/up.qcow2
}

top_v2() {
    bases
    mk -f qcow2 -o compat=0.10 -b base.raw -F raw top.qcow2
    io -c 'write -P 3 1M 64k' top.qcow2
}

top_extl2() {
    bases
    mk -f qcow2 -o extended_l2=on,cluster_size=128k -b base.raw -F raw \
        top.qcow2
    io -c 'write -P 3 1M 4k' -c 'write -P 3 1030k 2k' top.qcow2
}

top_small() {
    bases
    mk -f qcow2 -o cluster_size=512 -b base.raw -F raw top.qcow2
    io -c 'write -P 3 1M 4k' top.qcow2
}

# base <- mid <- top: rebasing onto the bottom skips the middle.
three() {
    bases
    mk -f qcow2 -b base.raw -F raw mid.qcow2
    io -c 'write -P 2 1M 1M' -c 'write -z 3M 64k' mid.qcow2
    mk -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
    io -c 'write -P 3 1536k 1M' top.qcow2
}

# base <- m1 <- m2 <- top, m2 shorter than base and top: rebasing onto a
# layer of the chain skips what the layers above it do not allocate.
four() {
    bases
    mk -f qcow2 -b base.raw -F raw m1.qcow2
    io -c 'write -P 2 512k 1M' -c 'write -z 2M 128k' -c 'write -P 1 3M 64k' \
        m1.qcow2
    mk -f qcow2 -b m1.qcow2 -F qcow2 m2.qcow2 3M
    io -c 'write -P 5 1280k 64k' -c 'write -P 6 2560k 100k' m2.qcow2
    mk -f qcow2 -b m2.qcow2 -F qcow2 top.qcow2 6M
    io -c 'write -P 3 1536k 1M' -c 'write -P 7 5M 64k' top.qcow2
}

# An old backing file shorter than the image: past its end it reads zero.
short_old() {
    bases
    mk -f qcow2 -b short.raw -F raw top.qcow2 4M
    io -c 'write -P 3 0 64k' top.qcow2
}

orphan() {
    bases
    mk -u -f qcow2 -b gone.raw -F raw orphan.qcow2 4M
}

# ---- Cases -----------------------------------------------------------------

SAME_BYTES=top.qcow2 same "safe, qcow2 base" top_raw -b new.qcow2 -F qcow2 \
    top.qcow2
SAME_BYTES=top.qcow2 same "safe, shorter raw base" top_raw -b short.raw \
    -F raw top.qcow2
SAME_BYTES=top.qcow2 same "safe, same file" top_raw -b base.raw -F raw \
    top.qcow2
SAME_BYTES=top.qcow2 same "safe, no -F" top_raw -b new.qcow2 top.qcow2
SAME_BYTES=top.qcow2 same "safe, wrong -F" top_raw -b new.qcow2 -F raw \
    top.qcow2
SAME_BYTES=top.qcow2 same "safe, -p -t -T -U" top_raw -p -t unsafe \
    -T none -U -b new.qcow2 -F qcow2 top.qcow2
SAME_BYTES=top.qcow2 same "safe, -q" top_raw -q -b new.qcow2 -F qcow2 \
    top.qcow2
SAME_BYTES=top.qcow2 same "safe, -f" top_raw -f qcow2 -b short.raw -F raw \
    top.qcow2
SAME_BYTES=top.qcow2 same "flatten" top_raw -b "" top.qcow2
SAME_BYTES=top.qcow2 same "flatten, -F ignored" top_raw -b "" -F raw \
    top.qcow2
SAME_BYTES=top.qcow2 same "v2 image" top_v2 -b new.qcow2 -F qcow2 top.qcow2
SAME_BYTES=top.qcow2 same "extended L2" top_extl2 -b new.qcow2 -F qcow2 \
    top.qcow2
# (With 512-byte clusters the write path places new L2 tables and
# refcount blocks elsewhere than QEMU: the same contents, another layout.)
same "512-byte clusters" top_small -b new.qcow2 -F qcow2 top.qcow2
SAME_BYTES=top.qcow2 same "onto the bottom of the chain" three -b base.raw \
    -F raw top.qcow2
SAME_BYTES=top.qcow2 same "onto a new base, 3 layers" three -b new.qcow2 \
    -F qcow2 top.qcow2
SAME_BYTES=top.qcow2 same "flatten, 3 layers" three -b "" top.qcow2
SAME_BYTES=top.qcow2 same "onto the bottom, 4 layers" four -b base.raw \
    -F raw top.qcow2
SAME_BYTES=top.qcow2 same "onto a middle layer" four -b m1.qcow2 \
    -F qcow2 top.qcow2
SAME_BYTES=top.qcow2 same "onto the same backing file" four -b m2.qcow2 \
    -F qcow2 top.qcow2
SAME_BYTES=top.qcow2 same "onto a layer, as another format" four \
    -b m1.qcow2 -F raw top.qcow2
SAME_BYTES=top.qcow2 same "old base shorter" short_old -b new.qcow2 \
    -F qcow2 top.qcow2
SAME_BYTES=sub/o.qcow2 same "subfolder, relative name" top_raw \
    -b new.qcow2 -F qcow2 sub/o.qcow2
SAME_BYTES=sub/up.qcow2 same "subfolder, name up" top_raw \
    -b base.raw -F raw sub/up.qcow2
SAME_BYTES=sub/up.qcow2 same "subfolder, missing relative name" top_raw \
    -b new.raw -F raw sub/up.qcow2

# Unsafe mode.
SAME_BYTES=top.qcow2 same "unsafe" top_raw -u -b new.qcow2 -F qcow2 top.qcow2
SAME_BYTES=top.qcow2 same "unsafe, missing file" top_raw -u -b nothere \
    -F raw top.qcow2
SAME_BYTES=top.qcow2 same "unsafe, no -F" top_raw -u -b new.qcow2 top.qcow2
SAME_BYTES=top.qcow2 same "unsafe, remove" top_raw -u -b "" top.qcow2
SAME_BYTES=top.qcow2 same "unsafe, no -b" top_raw -u top.qcow2
SAME_BYTES=orphan.qcow2 same "unsafe, old base gone" orphan -u \
    -b new.qcow2 -F qcow2 orphan.qcow2
SAME_BYTES=sub/o.qcow2 same "unsafe, subfolder" top_raw -u -b new.qcow2 \
    -F qcow2 sub/o.qcow2
long=$(printf 'x%.0s' $(seq 1 1000))
SAME_BYTES=top.qcow2 same "unsafe, long name" top_raw -u -b "$long" -F raw \
    top.qcow2
SAME_BYTES=top.qcow2 same "unsafe, name over the header cluster" top_small \
    -u -b "$long" -F raw top.qcow2
SAME_BYTES=top.qcow2 same "unsafe, name over 1023 bytes" top_raw \
    -u -b "${long}x${long}" -F raw top.qcow2

# Failures.
same "old base gone" orphan -b new.qcow2 -F qcow2 orphan.qcow2
same "missing new base" top_raw -b nothere -F raw top.qcow2
same "missing new base, no -F" top_raw -b nothere top.qcow2
same "unknown -F" top_raw -b new.qcow2 -F bogus top.qcow2
same "unknown -F, unsafe" top_raw -u -b new.qcow2 -F bogus top.qcow2
same "raw image" bases -b new.qcow2 -F qcow2 base.raw
same "raw image, no -F" bases -f raw -b new.qcow2 base.raw
same "raw image, unsafe" bases -f raw -u -b new.qcow2 -F qcow2 base.raw
same "no -b" top_raw top.qcow2
same "no image" bases -b new.qcow2
same "two images" bases -b new.qcow2 a b
same "missing image" bases -b new.qcow2 -F qcow2 nofile
same "bad cache" top_raw -t bogus -b new.qcow2 top.qcow2
same "bad source cache" top_raw -T bogus -b new.qcow2 top.qcow2
same "unknown option" top_raw -k -b new.qcow2 top.qcow2


# A v2 image without a backing file, rebased onto one: its unallocated
# clusters read zero before, so they must read zero after.  qemu-img 7.2
# zero-writes them, which v2 can only do by leaving them unallocated, and
# the new backing file shows through (data lost); qimg writes zeros.
"$QEMU_IMG" create -q -f raw v2base.raw 1M || fail "create v2base.raw"
io -f raw -c 'write -P 9 0 1M' v2base.raw
"$QEMU_IMG" create -q -f qcow2 -o compat=0.10,cluster_size=4k v2.qcow2 1M ||
    fail "create v2.qcow2"
io -f qcow2 -c 'write -P 1 0 64k' -c 'write -z 128k 64k' v2.qcow2
checks=$((checks + 1))
"$QIMG" rebase -f qcow2 -b v2base.raw -F raw v2.qcow2 ||
    fail "v2 rebase onto a first backing file"
"$QEMU_IO" -f qcow2 -c 'read -P 1 0 64k' -c 'read -P 0 64k 960k' \
    v2.qcow2 >v2.out || fail "v2 rebase: qemu-io"
grep -q "Pattern verification failed" v2.out &&
    fail "v2 rebase: the new backing file shows through"
"$QEMU_IMG" check -q v2.qcow2 || fail "v2 rebase: qemu-img check"

finish
