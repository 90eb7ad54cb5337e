#!/bin/bash
# External references (docs/RESOURCES.md, README "Safety with untrusted
# images"): an image may make qimg open a file it names (backing file,
# qcow2 data file, vmdk extent or parent) only when the name is a plain
# local path; protocol names ("nbd:", "json:", "file:", anything with a
# "xxx:" prefix as QEMU parses them) are refused always, and with
# QIMG_NO_EXTERNAL=1 every reference is refused, for every subcommand,
# with a message that names the image, the file and the reason.
. "$QIMG_SRCDIR/tests/functions.sh"
cd "$T"

"$QEMU_IMG" create -q -f qcow2 base.qcow2 1M
"$QEMU_IO" -f qcow2 -c 'write -P 7 0 64k' base.qcow2 >/dev/null

# One image per kind of plain reference.
"$QEMU_IMG" create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
"$QEMU_IO" -f qcow2 -c 'write -P 9 128k 64k' top.qcow2 >/dev/null
"$QEMU_IMG" create -q -f qcow -b base.qcow2 -F qcow2 top.qcow
"$QEMU_IMG" create -q -f qed -b base.qcow2 -F qcow2 top.qed
"$QEMU_IMG" create -q -f vmdk parent.vmdk 1M
"$QEMU_IO" -f vmdk -c 'write -P 5 0 64k' parent.vmdk >/dev/null
"$QEMU_IMG" create -q -f vmdk -b parent.vmdk -F vmdk child.vmdk
"$QEMU_IMG" create -q -f vmdk -o subformat=monolithicFlat flat.vmdk 1M
"$QEMU_IO" -f vmdk -c 'write -P 3 0 64k' flat.vmdk >/dev/null
"$QEMU_IMG" create -q -f qcow2 -o data_file=data.raw datafile.qcow2 1M
"$QEMU_IO" -f qcow2 -c 'write -P 4 0 64k' datafile.qcow2 >/dev/null
# A name with a ':' after a '/' is a plain file for QEMU and for qimg.
"$QEMU_IMG" create -q -f qcow2 './nbd:x.qcow2' 1M
"$QEMU_IMG" create -q -f qcow2 -u -b './nbd:x.qcow2' -F qcow2 dotslash.qcow2 1M

# The image that names each plain reference, and the name it stores.
refs=(
    "top.qcow2 base.qcow2"
    "top.qcow base.qcow2"
    "top.qed base.qcow2"
    "child.vmdk parent.vmdk"
    "flat.vmdk flat-flat.vmdk"
    "datafile.qcow2 data.raw"
    "dotslash.qcow2 ./nbd:x.qcow2"
)

# Without the variable, plain references are followed as qemu-img
# follows them: the same guest contents.
for r in "${refs[@]}"; do
    set -- $r
    "$QEMU_IMG" convert -O raw "$1" "want-$1.raw"
    if expect_status "plain $1" 0 "$QIMG" convert -O raw "$1" "got-$1.raw"
    then
        expect_same "plain $1 contents" "want-$1.raw" "got-$1.raw"
    fi
done

# With QIMG_NO_EXTERNAL=1 each is refused, naming the image, the file it
# names and why.
for r in "${refs[@]}"; do
    set -- $r
    expect_status "no-external $1" 1 env QIMG_NO_EXTERNAL=1 \
        "$QIMG" convert -O raw "$1" "refused-$1.raw"
    grep -qF "Could not open '$1': " "$T/.err" &&
        grep -qF "'$2' and external references are refused" "$T/.err" &&
        pass || fail "no-external $1 message" "$(cat "$T/.err")"
done

# Protocol names: refused with and without the variable (qemu-img would
# connect or parse them), never looked up as files.
mkproto() {  # mkproto IMAGE FORMAT BACKING: an image naming BACKING
    "$QEMU_IMG" create -q -f "$2" -u -b "$3" -F raw "$1" 1M
}
mkproto p-nbd.qcow2 qcow2 'nbd:localhost:10809'
mkproto p-json.qcow2 qcow2 'json:{"file.filename":"base.qcow2"}'
mkproto p-file.qcow2 qcow2 'file:base.qcow2'
mkproto p-http.qcow2 qcow2 'http://localhost/base.qcow2'
mkproto p-colon.qcow2 qcow2 ':base.qcow2'
mkproto p-nbd.qcow qcow 'nbd:localhost:10809'
mkproto p-json.qed qed 'json:{"file.filename":"base.qcow2"}'
sed 's/"flat-flat.vmdk"/"nbd:flat-flat.vmdk"/' flat.vmdk >p-nbd.vmdk
sed 's/"flat-flat.vmdk"/"json:{}"/' flat.vmdk >p-json.vmdk
sed 's/"flat-flat.vmdk"/"file:flat-flat.vmdk"/' flat.vmdk >p-file.vmdk
cp child.vmdk p-parent.vmdk
# The parent hint sits in the embedded descriptor: a same-length patch.
python3 - p-parent.vmdk <<'PY'
import sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
old = b'parentFileNameHint="parent.vmdk"'
i = b.find(old)
assert i >= 0
b[i:i + len(old)] = b'parentFileNameHint="nbd:nt.vmdk"'
open(p, "wb").write(b)
PY
# A data file name is a fixed-length field too: nbd_localhost -> nbd:...
"$QEMU_IMG" create -q -f qcow2 -o data_file=nbd_localhost p-nbd-data.qcow2 1M
python3 - p-nbd-data.qcow2 <<'PY'
import sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
i = b.find(b"nbd_localhost")
assert i >= 0
b[i + 3] = ord(":")
open(p, "wb").write(b)
PY
protos=(
    "p-nbd.qcow2 nbd:localhost:10809"
    "p-json.qcow2 json:{\"file.filename\":\"base.qcow2\"}"
    "p-file.qcow2 file:base.qcow2"
    "p-http.qcow2 http://localhost/base.qcow2"
    "p-colon.qcow2 :base.qcow2"
    "p-nbd.qcow nbd:localhost:10809"
    "p-json.qed json:{\"file.filename\":\"base.qcow2\"}"
    "p-nbd.vmdk nbd:flat-flat.vmdk"
    "p-json.vmdk json:{}"
    "p-file.vmdk file:flat-flat.vmdk"
    "p-parent.vmdk nbd:nt.vmdk"
    "p-nbd-data.qcow2 nbd:localhost"
)
for r in "${protos[@]}"; do
    img=${r%% *}
    name=${r#* }
    expect_status "protocol $img" 1 "$QIMG" map "$img"
    grep -qF "'$name' is not a plain local file name" "$T/.err" && pass ||
        fail "protocol $img message" "$(cat "$T/.err")"
    expect_status "protocol $img no-external" 1 env QIMG_NO_EXTERNAL=1 \
        "$QIMG" map "$img"
    grep -qF "'$name' and external references are refused" "$T/.err" &&
        pass || fail "protocol $img no-external message" "$(cat "$T/.err")"
done
# A protocol name that happens to be a local file is not opened either.
cp base.qcow2 'file:base.qcow2'
expect_status "protocol name that exists" 1 "$QIMG" map p-file.qcow2

# Every subcommand that would open a reference refuses it, and leaves
# the images as they were.
sum() { md5sum top.qcow2 base.qcow2 | cut -d' ' -f1 | tr '\n' ' '; }
before=$(sum)
nx() {  # nx NAME CMD...: refused under QIMG_NO_EXTERNAL=1
    local name=$1 want=1
    shift
    # compare fails with 2, as qemu-img compare does on errors.
    [ "$1" = compare ] && want=2
    expect_status "no-external $name" $want env QIMG_NO_EXTERNAL=1 "$QIMG" "$@"
    grep -qF "backing file 'base.qcow2' and external references are refused" \
        "$T/.err" && pass || fail "no-external $name message" \
        "$(cat "$T/.err")"
}
nx check check top.qcow2
nx compare compare top.qcow2 base.qcow2
nx convert convert -O qcow2 top.qcow2 out.qcow2
nx commit commit top.qcow2
nx dd dd if=top.qcow2 of=out.raw -O raw bs=64k count=1
nx map map top.qcow2
nx measure measure -O qcow2 top.qcow2
nx rebase rebase -b '' top.qcow2
nx resize resize top.qcow2 2M
nx amend amend -o lazy_refcounts=on top.qcow2
nx snapshot snapshot -l top.qcow2
nx info-chain info --backing-chain top.qcow2
nx create-b create -f qcow2 -b top.qcow2 -F qcow2 new.qcow2
# convert -B: the new target names the backing file; refused, and the
# target it created is removed again.
nx convert-B convert -O qcow2 -B base.qcow2 -F qcow2 base.qcow2 out2.qcow2
[ "$(sum)" = "$before" ] && pass || fail "refusals changed the images"
for f in out.qcow2 out.raw new.qcow2 out2.qcow2; do
    [ ! -e "$f" ] && pass || fail "refused command left $f"
done

# What needs no reference still works under the variable: info (it does
# not open the backing file, as qemu-img info does not), rebase -u, and
# images that name nothing.
expect_status "no-external info" 0 env QIMG_NO_EXTERNAL=1 \
    "$QIMG" info top.qcow2
grep -qx 'backing file: base.qcow2' "$T/.out" && pass ||
    fail "no-external info output" "$(cat "$T/.out")"
cp top.qcow2 top2.qcow2
expect_status "no-external rebase -u" 0 env QIMG_NO_EXTERNAL=1 \
    "$QIMG" rebase -u -b base.qcow2 -F qcow2 top2.qcow2
"$QEMU_IMG" convert -O raw base.qcow2 want-base.raw
expect_status "no-external plain image" 0 env QIMG_NO_EXTERNAL=1 \
    "$QIMG" convert -O raw base.qcow2 got-base.raw &&
    expect_same "no-external plain image contents" want-base.raw got-base.raw
expect_status "no-external create -b plain" 0 env QIMG_NO_EXTERNAL=1 \
    "$QIMG" create -q -f qcow2 -b base.qcow2 -F qcow2 new2.qcow2

# The variable's values: 0 or empty is off, anything but 0 or 1 an error.
expect_status "QIMG_NO_EXTERNAL=0" 0 env QIMG_NO_EXTERNAL=0 \
    "$QIMG" map top.qcow2
expect_status "QIMG_NO_EXTERNAL=" 0 env QIMG_NO_EXTERNAL= \
    "$QIMG" map top.qcow2
expect_status "QIMG_NO_EXTERNAL=yes" 1 env QIMG_NO_EXTERNAL=yes \
    "$QIMG" map base.qcow2
grep -qx "qimg: QIMG_NO_EXTERNAL must be 0 or 1, not 'yes'" "$T/.err" &&
    pass || fail "QIMG_NO_EXTERNAL=yes message" "$(cat "$T/.err")"

finish
