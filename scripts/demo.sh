#!/bin/bash
# Build qimg and run it on a generated sample: a qcow2 overlay with data,
# a snapshot and a bitmap over a raw base image; inspect, check and map it,
# convert it (and its snapshot) to raw and compare.  The sample is made
# with qemu-img (installed as the test oracle) where qimg cannot write yet.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
[ -f build/build.ninja ] || meson setup build >/dev/null
ninja -C build >/dev/null
QIMG=$PWD/build/cli/qimg

dir=$(mktemp -d "${TMPDIR:-/tmp}/qimg-demo.XXXXXX")
trap 'rm -rf "$dir"' EXIT
cd "$dir"

echo "== qimg create -f raw base.raw 64M"
"$QIMG" create -f raw base.raw 64M
qemu-io -f raw -c 'write -P 0x42 0 4M' base.raw >/dev/null
qemu-img create -q -f qcow2 -b base.raw -F raw winxp.qcow2
qemu-io -f qcow2 -c 'write -P 0x17 1M 2M' winxp.qcow2 >/dev/null
qemu-img snapshot -c before-update winxp.qcow2
qemu-img bitmap --add winxp.qcow2 backup-0
# The "update" after the snapshot.
qemu-io -f qcow2 -c 'write -P 0x99 8M 1M' winxp.qcow2 >/dev/null

echo
echo "== qimg info --backing-chain winxp.qcow2"
"$QIMG" info --backing-chain winxp.qcow2
echo
echo "== qimg info --output=json winxp.qcow2"
"$QIMG" info --output=json winxp.qcow2

echo
echo "== qimg convert -O raw winxp.qcow2 winxp.raw (the whole chain, flattened)"
"$QIMG" convert -O raw winxp.qcow2 winxp.raw
qemu-img convert -O raw winxp.qcow2 reference.raw
if cmp -s winxp.raw reference.raw; then
    echo "identical to qemu-img's conversion ($(stat -c %s winxp.raw) bytes," \
         "$(du -k winxp.raw | cut -f1) KiB allocated)"
else
    echo "MISMATCH with qemu-img's conversion" >&2
    exit 1
fi

echo
echo "== qimg check winxp.qcow2"
"$QIMG" check winxp.qcow2
echo
echo "== qimg map winxp.qcow2 (which layer holds each range)"
"$QIMG" map winxp.qcow2
echo
echo "== qimg compare winxp.qcow2 winxp.raw"
"$QIMG" compare winxp.qcow2 winxp.raw
echo
echo "== qimg convert -l before-update -O raw winxp.qcow2 before.raw"
"$QIMG" convert -l before-update -O raw winxp.qcow2 before.raw
"$QIMG" compare -q before.raw winxp.raw && status=0 || status=$?
echo "before-update differs from the current disk: compare exit $status" \
     "(1 = different)"

echo
echo "== qimg convert -c -O qcow2 winxp.qcow2 winxp-compacted.qcow2"
"$QIMG" convert -c -O qcow2 winxp.qcow2 winxp-compacted.qcow2
qemu-img check -q winxp-compacted.qcow2 &&
    qemu-img compare -q winxp.qcow2 winxp-compacted.qcow2 &&
    echo "qemu-img check: clean; qemu-img compare: identical" \
         "($(du -k winxp.qcow2 | cut -f1) KiB -> $(du -k winxp-compacted.qcow2 | cut -f1) KiB)"
echo
echo "== qimg resize winxp-compacted.qcow2 +1G"
"$QIMG" resize winxp-compacted.qcow2 +1G
"$QIMG" info winxp-compacted.qcow2 | grep 'virtual size'
