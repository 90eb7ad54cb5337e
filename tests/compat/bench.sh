#!/bin/bash
# qimg bench against qemu-img bench (7.2): stdout (the "Run completed"
# time masked), stderr and exit status for option combinations and
# errors, each tool in a folder of its own with fresh copies of the same
# small images; after each run the images of both folders must read the
# same (qemu-img compare), so write tests wrote the same bytes at the
# same offsets (offsets wrap modulo the image size, requests past the end
# fail).  Then data checks with qemu-io read -P and qemu-img check on
# what qimg bench -w wrote, and qimg's own behaviour where qemu-img 7.2
# hangs (-d 0) or crashes (an empty image).
. "$QIMG_SRCDIR/tests/functions.sh"
cd "$T"

# The images, made once; every case starts from fresh copies.
mkdir tmpl
(
    cd tmpl || exit 1
    "$QEMU_IMG" create -q -f raw r.raw 1M
    "$QEMU_IMG" create -q -f qcow2 q.qcow2 1M
    "$QEMU_IMG" create -q -f raw s.raw 64k
    "$QEMU_IMG" create -q -f qcow2 -o cluster_size=4096 c.qcow2 256k
    "$QEMU_IO" -f qcow2 -c "write -P 0x33 0 64k" c.qcow2 >/dev/null
) || fail "setup"
setup() {
    rm -rf "$1"
    cp -a tmpl "$1"
}

# Mask what differs by nature: the time and the program name.
mask() {
    sed -e 's/^Run completed in [0-9]*\.[0-9]* seconds\.$/Run completed in T seconds./' \
        -e 's/^qemu-img: /qimg: /' \
        -e "s/Try 'qemu-img --help'/Try 'qimg --help'/"
}

# same NAME ARGS...: both tools, same arguments, same results.  A write
# test's image (the last argument) must then read the same in both
# folders: raw files byte for byte, qcow2 by qemu-img compare.
same() {
    local name=$1 tool arg write=0
    shift
    for arg in "$@"; do
        case $arg in
        -w) write=1 ;;
        esac
    done
    # Reads change nothing: both tools use the templates themselves.
    local wdir=tmpl gdir=tmpl
    if [ $write = 1 ]; then
        setup want
        setup got
        wdir=want
        gdir=got
    fi
    (cd $wdir && timeout 60 "$QEMU_IMG" bench "$@") >want.out 2>want.err
    echo "exit $?" >>want.out
    (cd $gdir && timeout 60 "$QIMG" bench "$@") >got.out 2>got.err
    echo "exit $?" >>got.out
    mask <want.out >want.m
    mask <got.out >got.m
    expect_same "$name: stdout and status" want.m got.m
    mask <want.err >want.em
    mask <got.err >got.em
    expect_same "$name: stderr" want.em got.em
    local img=${!#}
    img=${img##*file.filename=}
    [ $write = 1 ] && [ -f "want/$img" ] || return 0
    checks=$((checks + 1))
    case $img in
    *.raw)
        files_equal "want/$img" "got/$img" ||
            fail "$name: $img differs from qemu-img's" ;;
    *)
        "$QEMU_IMG" compare -q -f qcow2 -F qcow2 "want/$img" "got/$img" ||
            fail "$name: $img differs from qemu-img's" ;;
    esac
}

# ---- Option errors, in qemu-img's order of checks.
same "count negative" -c -1 r.raw
same "count not a number" -c abc r.raw
same "count too big" -c 2147483648 r.raw
same "depth not a number" -d x r.raw
same "buffer too big" -s 2G -c 1 r.raw
same "buffer not a size" -s x -c 1 r.raw
same "step too big" -S 2G -c 1 r.raw
same "offset not a size" -o x r.raw
same "offset too big" -o 9223372036854775808 r.raw
same "pattern too big" -w --pattern=256 -c 1 r.raw
same "flush interval not a number" -w --flush-interval=x r.raw
same "cache mode" -t foo -c x r.raw
same "aio mode" -t none -i foo r.raw
same "unknown option" -x r.raw
same "no file name" -c 1
same "no file name before flush check" --flush-interval=64 -c 1
same "flush interval without -w" -c 1 --flush-interval=64 -f raw r.raw
same "flush interval below depth" -w -c 1 --flush-interval=10 -f raw r.raw
same "-w with -U" -c 1 -w -U -f raw r.raw
same "-n without cache none" -c 1 -n -f raw r.raw
same "wrong format" -c 1 -f qcow2 r.raw
same "missing file" -c 1 nonexist
same "image-opts with -f" --image-opts -c 1 -f raw r.raw
same "image-opts without file" --image-opts -c 1 driver=raw
same "image-opts missing file" --image-opts -c 1 file.filename=nonexist
same "image-opts wrong driver" --image-opts -c 1 \
    driver=qcow2,file.filename=r.raw
same "image-opts unknown option" --image-opts -c 1 \
    driver=raw,file.filename=r.raw,foo=bar

# ---- Runs: output lines, and the images as qemu-img leaves them.
same "reads raw" -c 100 -f raw r.raw
same "reads qcow2 data" -c 300 -d 4 -f qcow2 c.qcow2
same "numbers in any base" -c 0x10 -d 010 -f raw r.raw
same "buffer size zero" -c 5 -s 0 -f raw r.raw
same "step zero is the buffer size" -c 5 -S 0 -s 1k -f raw r.raw
same "writes raw" -w --pattern=0x41 -c 100 -f raw r.raw
same "writes qcow2" -w --pattern=7 -c 40 -s 16k -f qcow2 q.qcow2
same "writes over qcow2 data" -w --pattern=9 -c 50 -o 60k -s 2k -S 6k \
    -f qcow2 c.qcow2
same "wrap modulo the size" -w -d 1 -c 10 -o 4096 -S 12288 --pattern=65 \
    -f raw s.raw
same "wrap qcow2" -w -d 3 -c 20 -o 100k -S 44k -s 4k --pattern=0x5a \
    -f qcow2 c.qcow2
same "request past the end after a wrap" -w -d 1 -c 10 -S 24576 -s 16384 \
    --pattern=67 -f raw s.raw
same "offset past the end" -c 1 -o 2M -f raw r.raw
same "request across the end" -c 1 -o 1022k -f raw r.raw
same "largest offset" -c 1 -o 9223372036854775807 -f raw r.raw
same "cache none reads" -c 50 -t none -f raw r.raw
same "cache none writes" -c 50 -t none -w --pattern=3 -f raw r.raw
same "native aio" -c 50 -n -t none -w --pattern=4 -f raw r.raw
same "io_uring accepted" -c 5 -i io_uring -f raw r.raw
same "writethrough" -c 20 -t writethrough -w --pattern=5 -f qcow2 q.qcow2
same "directsync" -c 20 -t directsync -w --pattern=6 -f raw r.raw
same "unsafe" -c 20 -t unsafe -w --pattern=8 -f qcow2 q.qcow2
same "-U reads" -c 5 -U -f qcow2 q.qcow2
same "flush interval" -w -c 100 --flush-interval=64 --pattern=1 -f raw \
    r.raw
same "flush interval qcow2" -w -c 100 -d 8 --flush-interval=8 \
    --pattern=2 -f qcow2 q.qcow2
same "no drain" -w -c 100 -d 4 --flush-interval=16 --no-drain \
    --pattern=10 -f qcow2 q.qcow2
same "long options with a space" -w -c 5 --flush-interval 64 \
    --pattern 11 -f raw r.raw
same "image-opts" --image-opts -c 5 driver=raw,file.filename=r.raw
same "image-opts file driver" --image-opts -c 5 -w --pattern=12 \
    driver=qcow2,file.driver=file,file.filename=q.qcow2
same "image-opts probed raw write" --image-opts -c 5 -w \
    file.filename=r.raw

# ---- What qimg bench -w wrote, read back by qemu-io and checked.
cd "$T"
"$QEMU_IMG" create -q -f qcow2 d.qcow2 1M
expect_status "qcow2 writes" 0 "$QIMG" bench -w -c 16 -s 64k -d 8 \
    --pattern=0x5a --flush-interval=8 -f qcow2 d.qcow2
expect_status "qcow2 writes: read -P" 0 "$QEMU_IO" -f qcow2 \
    -c "read -P 0x5a 0 1M" d.qcow2
grep -q "read 1048576/1048576" "$T/.out" || fail "qcow2 writes: qemu-io" \
    "$(cat "$T/.out" "$T/.err")"
expect_status "qcow2 writes: check" 0 "$QEMU_IMG" check -f qcow2 d.qcow2

"$QEMU_IMG" create -q -f raw e.raw 64k
expect_status "raw wrap" 0 "$QIMG" bench -w -c 10 -d 4 -o 8k -s 4k -S 20k \
    --pattern=0x77 -f raw e.raw
# 8k, 28k, 48k, then 68k % 64k = 4k, 24k, 44k, 0 (wrapped), 20k, 40k, 60k.
reads=()
for off in 0 4k 8k 20k 24k 28k 40k 44k 48k 60k; do
    reads+=(-c "read -P 0x77 $off 4k")
done
for off in 12k 16k 32k 36k 52k 56k; do
    reads+=(-c "read -P 0 $off 4k")
done
expect_status "raw wrap: read -P" 0 "$QEMU_IO" -f raw "${reads[@]}" e.raw
! grep -q "verification failed" "$T/.out" ||
    fail "raw wrap: data" "$(cat "$T/.out")"
[ "$(grep -c "^read 4096/4096" "$T/.out")" = 16 ] ||
    fail "raw wrap: reads" "$(cat "$T/.out")"

"$QEMU_IMG" create -q -f qcow2 -o cluster_size=512 f.qcow2 128k
expect_status "qcow2 wrap, cache none" 0 "$QIMG" bench -w -t none -c 100 \
    -s 4k -S 4k -o 64k --pattern=0x21 -f qcow2 f.qcow2
expect_status "qcow2 wrap, cache none: read -P" 0 "$QEMU_IO" -f qcow2 \
    -c "read -P 0x21 0 128k" f.qcow2
expect_status "qcow2 wrap, cache none: check" 0 "$QEMU_IMG" check \
    -f qcow2 f.qcow2

# ---- Where qemu-img 7.2 hangs or crashes, qimg fails or runs.
expect_status "depth 0 refused" 1 "$QIMG" bench -d 0 -c 1 -f raw e.raw
grep -qx "qimg: Invalid queue depth specified" "$T/.err" ||
    fail "depth 0: message" "$(cat "$T/.err")"
"$QEMU_IMG" create -q -f raw z.raw 0
expect_status "empty image, no requests" 0 "$QIMG" bench -c 0 -f raw z.raw
expect_status "empty image, empty requests" 0 "$QIMG" bench -c 3 -s 0 \
    -f raw z.raw
expect_status "empty image" 1 "$QIMG" bench -c 1 -f raw z.raw
grep -qx "qimg: Failed request: Input/output error" "$T/.err" ||
    fail "empty image: message" "$(cat "$T/.err")"

finish
