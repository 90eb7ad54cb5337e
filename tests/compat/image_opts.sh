#!/bin/bash
# --image-opts and convert's --target-image-opts against qemu-img 7.2:
# every command that takes them, run by each tool in a folder of its own
# on fresh copies of the same images; stdout, stderr (program name
# masked) and exit status must match, and after a command that writes,
# both folders' images must hold the same (qemu-img compare and map).
# Then the error cases: no driver, no file name, unknown format or file
# options, a bad file.driver, -f/-F/-O with the option strings, a bare
# name (a node reference), file.locking / file.aio values, and qcow2's
# cache options (checked as QEMU checks them).
. "$QIMG_SRCDIR/tests/functions.sh"
cd "$T"

mkdir tmpl
(
    cd tmpl || exit 1
    "$QEMU_IMG" create -q -f qcow2 base.qcow2 1M
    "$QEMU_IO" -f qcow2 -c "write -P 0x11 0 256k" base.qcow2 >/dev/null
    "$QEMU_IMG" create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 1M
    "$QEMU_IO" -f qcow2 -c "write -P 0x22 64k 64k" top.qcow2 >/dev/null
    "$QEMU_IMG" create -q -f qcow2 other.qcow2 1M
    "$QEMU_IO" -f qcow2 -c "write -P 0x11 0 256k" other.qcow2 >/dev/null
    "$QEMU_IMG" create -q -f qcow2 nb.qcow2 1M
    "$QEMU_IMG" create -q -f raw r.raw 1M
    "$QEMU_IO" -f raw -c "write -P 0x33 0 4k" r.raw >/dev/null
    "$QEMU_IMG" create -q -f raw dst.raw 1M
    "$QEMU_IMG" snapshot -c snap1 other.qcow2
) || fail "setup"

# run_both NAME STATUS CMD ARGS...: CMD (qemu-img's arguments) by both
# tools in fresh folders; outputs and status compared, STATUS expected.
run_both() {
    local name=$1 want=$2
    shift 2
    local tool dir
    for tool in qemu qimg; do
        dir=$tool
        rm -rf "$dir"
        cp -a tmpl "$dir"
        local bin=$QEMU_IMG
        [ "$tool" = qimg ] && bin=$QIMG
        (cd "$dir" && "$bin" "$@" >../"$tool.out" 2>../"$tool.err"
         echo "$?" >../"$tool.rc")
        sed -i 's/^qemu-img: /qimg: /; s/qemu-img/qimg/g' "$tool.err"
    done
    expect_same "$name: stdout" qemu.out qimg.out
    expect_same "$name: stderr" qemu.err qimg.err
    expect_same "$name: status" qemu.rc qimg.rc
    checks=$((checks + 1))
    [ "$(cat qimg.rc)" = "$want" ] ||
        fail "$name: status $(cat qimg.rc), want $want" "$(cat qimg.err)"
}

# same_images NAME FILE...: the two folders' copies read alike.
same_images() {
    local name=$1 f
    shift
    for f in "$@"; do
        checks=$((checks + 1))
        "$QEMU_IMG" compare -q -U "qemu/$f" "qimg/$f" ||
            fail "$name: $f differs"
        map_layout "qemu/$f" >map.qemu 2>&1
        map_layout "qimg/$f" >map.qimg 2>&1
        expect_same "$name: $f map" map.qemu map.qimg
    done
}

Q="driver=qcow2,file.filename=top.qcow2"
F="driver=qcow2,file.driver=file,file.filename=top.qcow2"

# ---- each command --------------------------------------------------------
run_both "info" 0 info --image-opts "$Q"
run_both "info file.driver" 0 info --image-opts "$F"
run_both "info json" 0 info --output=json --image-opts "$Q"
run_both "info chain" 0 info --backing-chain --image-opts "$Q"
run_both "info probe" 0 info --image-opts "file.filename=top.qcow2"
run_both "info raw over qcow2" 0 info --image-opts \
    "driver=raw,file.filename=top.qcow2"
run_both "info locking off" 0 info --image-opts "$Q,file.locking=off"
run_both "info locking on" 0 info --image-opts "$Q,file.locking=on"
run_both "info aio" 0 info --image-opts "$Q,file.aio=threads"
run_both "check" 0 check --image-opts "$Q"
run_both "check json" 0 check --output=json --image-opts "$Q"
run_both "check -r" 0 check -r leaks --image-opts "$Q"
run_both "map" 0 map --image-opts "$Q"
run_both "map json" 0 map --output=json --image-opts "$Q"
run_both "compare" 0 compare --image-opts \
    "driver=qcow2,file.filename=base.qcow2" \
    "driver=qcow2,file.filename=other.qcow2"
run_both "compare mismatch" 1 compare --image-opts "$Q" \
    "driver=qcow2,file.filename=other.qcow2"
run_both "compare -s" 1 compare -s --image-opts "$Q" \
    "driver=qcow2,file.filename=other.qcow2"
run_both "measure" 0 measure -O qcow2 --image-opts "$Q"
run_both "measure json" 0 measure --output=json -O raw --image-opts "$Q"
run_both "measure snapshot" 0 measure -O qcow2 -l snap1 --image-opts \
    "driver=qcow2,file.filename=other.qcow2"
run_both "snapshot -l" 0 snapshot -l --image-opts \
    "driver=qcow2,file.filename=other.qcow2"
run_both "snapshot -c" 0 snapshot -c s2 --image-opts \
    "driver=qcow2,file.filename=other.qcow2"
run_both "snapshot -c list" 0 snapshot -l other.qcow2
run_both "resize" 0 resize --image-opts \
    "driver=qcow2,file.filename=nb.qcow2" 2M
same_images "resize" nb.qcow2
run_both "resize raw" 0 resize --image-opts \
    "driver=raw,file.filename=r.raw" 2M
same_images "resize raw" r.raw
run_both "amend" 0 amend -o compat=0.10 --image-opts \
    "driver=qcow2,file.filename=nb.qcow2"
same_images "amend" nb.qcow2
run_both "commit" 0 commit --image-opts "$Q"
same_images "commit" base.qcow2 top.qcow2
run_both "rebase" 0 rebase -b other.qcow2 -F qcow2 --image-opts "$Q"
same_images "rebase" top.qcow2
run_both "rebase -u" 0 rebase -u -b "" --image-opts "$Q"
same_images "rebase -u" top.qcow2
run_both "convert source" 0 convert -O qcow2 --image-opts "$Q" out.qcow2
same_images "convert source" out.qcow2
run_both "convert sources" 0 convert -O raw --image-opts \
    "driver=qcow2,file.filename=base.qcow2" "driver=raw,file.filename=r.raw" \
    out.raw
same_images "convert sources" out.raw
run_both "convert snapshot" 0 convert -O raw -l snap1 --image-opts \
    "driver=qcow2,file.filename=other.qcow2" out.raw
same_images "convert snapshot" out.raw
run_both "convert target" 0 convert -n --target-image-opts top.qcow2 \
    "driver=raw,file.filename=dst.raw"
same_images "convert target" dst.raw
run_both "convert both" 0 convert -n --image-opts --target-image-opts \
    "$Q" "driver=qcow2,file.filename=nb.qcow2"
same_images "convert both" nb.qcow2
run_both "convert target probed" 0 convert -n --target-image-opts \
    top.qcow2 "file.filename=nb.qcow2"
same_images "convert target probed" nb.qcow2
run_both "dd" 0 dd --image-opts "if=$Q" of=dd.raw -O raw
same_images "dd" dd.raw
run_both "dd skip" 0 dd --image-opts "if=$Q" of=dd.raw bs=64k skip=1 count=2
same_images "dd skip" dd.raw

# qcow2's cache options: checked as QEMU checks them, otherwise no effect.
for o in "l2-cache-size=1M,cache-size=2M" "l2-cache-size=1.5M" \
    "refcount-cache-size=256k" "l2-cache-entry-size=1024" \
    "cache-clean-interval=5"; do
    run_both "qcow2 $o" 0 info --image-opts "$Q,$o"
done
for o in "l2-cache-size=1M,refcount-cache-size=1M,cache-size=4M" \
    "l2-cache-size=-1" "cache-size=1x" "l2-cache-entry-size=1000" \
    "l2-cache-entry-size=128k" "cache-clean-interval=x" \
    "cache-clean-interval=-1" "l2-cache-size=3M,cache-size=2M" \
    "refcount-cache-size=3M,cache-size=1M"; do
    run_both "qcow2 $o" 1 info --image-opts "$Q,$o"
done
run_both "raw cache option" 1 info --image-opts \
    "driver=raw,file.filename=r.raw,l2-cache-size=1M"
run_both "map cache option" 0 map --image-opts "$Q,l2-cache-size=1M"

# ---- errors --------------------------------------------------------------
run_both "no file" 1 info --image-opts "driver=qcow2"
run_both "no driver nor file" 1 info --image-opts "filename=top.qcow2"
run_both "top-level filename" 1 info --image-opts \
    "driver=qcow2,filename=top.qcow2"
run_both "bare name" 1 info --image-opts "top.qcow2"
run_both "file reference" 1 info --image-opts "driver=qcow2,file=top.qcow2"
run_both "unknown option" 1 info --image-opts "$Q,foo=1"
run_both "unknown raw option" 1 info --image-opts \
    "driver=raw,file.filename=r.raw,foo=bar"
run_both "backing option" 1 info --image-opts \
    "$Q,backing.file.filename=base.qcow2"
run_both "backing null" 1 info --image-opts "$Q,backing=null"
run_both "unknown file option" 1 info --image-opts "$Q,file.foo=1"
run_both "bad file.driver" 1 info --image-opts "$Q,file.driver=nosuch"
run_both "unknown driver" 1 info --image-opts \
    "driver=nosuch,file.filename=top.qcow2"
run_both "missing file" 1 info --image-opts \
    "driver=qcow2,file.filename=nosuch.qcow2"
run_both "wrong format" 1 info --image-opts \
    "driver=qcow2,file.filename=r.raw"
run_both "comma in name" 1 info --image-opts "$Q,,x"
run_both "bad locking" 1 info --image-opts "$Q,file.locking=maybe"
run_both "aio native" 1 info --image-opts "$Q,file.aio=native"
run_both "info -f" 1 info -f qcow2 --image-opts "$Q"
run_both "check -f" 1 check -f qcow2 --image-opts "$Q"
run_both "check bad option" 1 check --image-opts "$Q,foo=1"
run_both "map -f" 1 map -f qcow2 --image-opts "$Q"
run_both "map bad option" 1 map --image-opts "$Q,foo=1"
run_both "compare -f" 2 compare -f qcow2 --image-opts "$Q" "$Q"
run_both "compare -F" 2 compare -F qcow2 --image-opts "$Q" "$Q"
run_both "compare bad option" 2 compare --image-opts "$Q" "$Q,x=1"
run_both "measure -f" 1 measure -f qcow2 -O qcow2 --image-opts "$Q"
run_both "measure bad option" 1 measure -O qcow2 --image-opts "$Q,x=1"
run_both "resize -f" 1 resize -f qcow2 --image-opts "$Q" 2M
run_both "resize bad option" 1 resize --image-opts "$Q,x=1" 2M
run_both "commit -f" 1 commit -f qcow2 --image-opts "$Q"
run_both "commit bad option" 1 commit --image-opts "$Q,x=1"
run_both "rebase -f" 1 rebase -f qcow2 -u -b "" --image-opts "$Q"
run_both "rebase bad option" 1 rebase -u -b "" --image-opts "$Q,x=1"
run_both "snapshot bad option" 1 snapshot -l --image-opts "$Q,x=1"
run_both "amend bad option" 1 amend -o compat=0.10 --image-opts "$Q,x=1"
run_both "convert -f" 1 convert -f qcow2 -O raw --image-opts "$Q" out.raw
run_both "convert -O" 1 convert -n -O raw --target-image-opts top.qcow2 \
    "driver=raw,file.filename=dst.raw"
run_both "convert no -n" 1 convert --target-image-opts top.qcow2 \
    "driver=raw,file.filename=dst.raw"
run_both "convert bad source option" 1 convert -O raw --image-opts \
    "$Q,x=1" out.raw
run_both "convert bad target option" 1 convert -n --target-image-opts \
    top.qcow2 "driver=raw,file.filename=dst.raw,foo=1"
run_both "convert wrong target format" 1 convert -n --target-image-opts \
    top.qcow2 "driver=qcow2,file.filename=dst.raw"
run_both "dd -f" 1 dd -f qcow2 --image-opts "if=$Q" of=dd.raw
run_both "dd bad option" 1 dd --image-opts "if=$Q,x=1" of=dd.raw
run_both "dd no file" 1 dd --image-opts "if=driver=raw" of=dd.raw

finish
