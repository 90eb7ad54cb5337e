#!/bin/bash
# The benchmark suite: every qemu-img command qimg implements, timed
# against qemu-img 7.2 in the same run (see bench/README.md).
#
#   bench/run.sh [--quick] [--runs N] [--only KEY[,KEY...]] [--list]
#                [--workdir DIR] [--keep]
#
# --quick: tiny inputs, every row once (the 'bench' test suite: the script
# works and qimg's outputs are checked; no timing assertion).
#
# QIMG: the qimg binary (default: build it in ./build if needed).
# QEMU_IMG, QEMU_IO: the oracle (default: from $PATH).
# BENCH_TMPDIR: where the work directory goes (default /var/tmp; the full
# inputs take about 8 GiB there, and are kept for the next run).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")

quick=0
for a in "$@"; do
    [ "$a" = --quick ] && quick=1
done

# /usr/bin/time (GNU time) measures the peak RSS; install it if missing.
if [ ! -x /usr/bin/time ]; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get install -y -q --no-install-recommends time >&2
fi

# The full run builds an ext4 image (mkfs.ext4 -d, debugfs, e2fsck).
if [ $quick = 0 ] && ! command -v mkfs.ext4 >/dev/null; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get install -y -q --no-install-recommends e2fsprogs >&2
fi

if [ -z "${QIMG:-}" ]; then
    if [ ! -x "$root/build/cli/qimg" ]; then
        (cd "$root" && { [ -d build ] || meson setup build >&2; } &&
            ninja -C build >&2)
    fi
    QIMG=$root/build/cli/qimg
fi
export QIMG
exec python3 "$here/suite.py" "$@"
