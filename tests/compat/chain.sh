#!/bin/bash
# Backing chains: relative names, loops, depth, missing files.
. "$QIMG_SRCDIR/tests/functions.sh"
cd "$T"

mk() { "$QEMU_IMG" create -q "$@" || fail "qemu-img create $*"; }

# A loop a -> b -> a: refused with a clear message, quickly.
mk -f qcow2 -u -b b.qcow2 -F qcow2 a.qcow2 1M
mk -f qcow2 -u -b a.qcow2 -F qcow2 b.qcow2 1M
expect_status "loop --backing-chain" 1 timeout 10 "$QIMG" info \
    --backing-chain a.qcow2
grep -q "Backing file 'a.qcow2' creates an infinite loop." "$T/.err" &&
    pass || fail "loop message" "$(cat "$T/.err")"
# qemu-img prints the same for --backing-chain.
"$QEMU_IMG" info --backing-chain a.qcow2 2>want.err >/dev/null
sed -i 's/^qemu-img: /qimg: /' want.err
expect_same "loop message matches qemu-img" want.err "$T/.err"

# A self loop.
# (qemu-img refuses to create it, so point an image at itself by rebase.)
mk -f qcow2 self.qcow2 1M
"$QEMU_IMG" rebase -u -b self.qcow2 -F qcow2 self.qcow2 ||
    fail "qemu-img rebase to self"
expect_status "self loop" 1 timeout 10 "$QIMG" info --backing-chain \
    self.qcow2

# A chain of 300 overlays is refused by depth, not by running out of
# file descriptors or stack.
mk -f raw l0.img 1M
prev=l0.img; pfmt=raw
for i in $(seq 1 300); do
    mk -f qcow2 -u -b "$prev" -F "$pfmt" "l$i.qcow2" 1M
    prev="l$i.qcow2"; pfmt=qcow2
done
expect_status "deep chain --backing-chain" 1 timeout 20 "$QIMG" info \
    --backing-chain l300.qcow2
grep -q "deeper than" "$T/.err" && pass || fail "deep chain message" \
    "$(cat "$T/.err")"
# A chain of 100 is fine.
expect_status "chain of 100" 0 timeout 20 "$QIMG" info --backing-chain \
    l100.qcow2
[ "$(grep -c '^image:' "$T/.out")" = 101 ] && pass ||
    fail "chain of 100 lists 101 images"

# A missing backing file: --backing-chain fails with qemu-img's message.
mk -f qcow2 -u -b missing.qcow2 -F qcow2 orphan.qcow2 1M
"$QEMU_IMG" info --backing-chain orphan.qcow2 >/dev/null 2>want.err
"$QIMG" info --backing-chain orphan.qcow2 >/dev/null 2>got.err
sed -i 's/^qemu-img: /qimg: /' want.err
expect_same "missing backing message" want.err got.err

# Protocol and json: backing names are never opened.
mk -f qcow2 -u -b 'nbd://127.0.0.1:1/x' -F raw proto.qcow2 1M
expect_status "protocol backing refused" 1 "$QIMG" info --backing-chain \
    proto.qcow2
grep -q "not a plain local file name" "$T/.err" && pass ||
    fail "protocol backing message" "$(cat "$T/.err")"
mk -f qcow2 -u -b 'json:{"driver":"raw","file":{"driver":"file","filename":"/etc/passwd"}}' -F raw json.qcow2 1M
expect_status "json backing refused" 1 "$QIMG" info --backing-chain \
    json.qcow2

# Relative names resolve against the overlay's folder, not the cwd.
mkdir -p d/e
mk -f raw d/base.raw 1M
mk -f qcow2 -b base.raw -F raw d/ov.qcow2
mk -f qcow2 -b ../ov.qcow2 -F qcow2 d/e/top.qcow2
expect_status "relative chain" 0 "$QIMG" info --backing-chain d/e/top.qcow2
[ "$(grep -c '^image:' "$T/.out")" = 3 ] && pass ||
    fail "relative chain lists 3 images" "$(cat "$T/.out")"

# Opening a whole chain (as convert will): the same refusals, and a
# good chain opens.  qemu-img has no loop check and runs out of file
# descriptors instead; qimg names the loop.
OPEN=${QIMG_OPEN_IMAGE:?}
expect_status "open loop" 1 timeout 10 "$OPEN" a.qcow2
grep -q "creates an infinite loop" "$T/.err" && pass ||
    fail "open loop message" "$(cat "$T/.err")"
expect_status "open self loop" 1 timeout 10 "$OPEN" self.qcow2
expect_status "open 300 deep" 1 timeout 20 "$OPEN" l300.qcow2
grep -q "deeper than" "$T/.err" && pass || fail "open deep message" \
    "$(cat "$T/.err")"
expect_status "open 100 deep" 0 timeout 20 "$OPEN" l100.qcow2
expect_status "open missing backing" 1 "$OPEN" orphan.qcow2
grep -qx "Could not open 'orphan.qcow2': Could not open backing file: Could not open 'missing.qcow2': No such file or directory" "$T/.err" &&
    pass || fail "open missing backing message" "$(cat "$T/.err")"
expect_status "open protocol backing" 1 "$OPEN" proto.qcow2
expect_status "open json backing" 1 "$OPEN" json.qcow2
expect_status "open relative chain" 0 "$OPEN" d/e/top.qcow2

finish
