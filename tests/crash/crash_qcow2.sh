#!/bin/bash
# Crash safety of the qcow2 write path (tests/crash/crash_qcow2.c): random
# workloads over the crash leaf, cut at every flush and at random points;
# every crashed image must open, check clean (leaks only where the cut
# explains them) and read back every flushed byte.  The program leaves a
# sample of crashed images (and of them after more writes) here;
# qemu-img check must find no corruption in any.
#
# QIMG_CRASH_SEED: the first seed (default: from the time; printed).
# QIMG_CRASH_SEEDS: seeds per configuration (default 2).
# QIMG_CRASH_ONLY: only the configurations matching this glob.
# Replay one run: QIMG_CRASH_SEED=N QIMG_CRASH_SEEDS=1 \
#   QIMG_CRASH_ONLY=NAME bash tests/crash/crash_qcow2.sh
. "$QIMG_SRCDIR/tests/functions.sh"
: "${QIMG_CRASH_QCOW2:?QIMG_CRASH_QCOW2 must point at crash_qcow2}"
cd "$T"

args=(-d "$T")
[ -n "${QIMG_CRASH_ONLY:-}" ] && args+=(-c "$QIMG_CRASH_ONLY")
checks=$((checks + 1))
if ! "$QIMG_CRASH_QCOW2" "${args[@]}" >out.txt 2>err.txt; then
    cat out.txt
    fail "crash_qcow2" "$(tail -20 err.txt)"
    finish
fi
cat out.txt

n=0
for img in cut-*.qcow2; do
    [ -e "$img" ] || continue
    n=$((n + 1))
    checks=$((checks + 1))
    # 0: clean, 3: leaks only (allowed after a crash); 2: corruption.
    "$QEMU_IMG" check -f qcow2 --output=json "$img" >check.json 2>&1
    rc=$?
    if [ "$rc" != 0 ] && [ "$rc" != 3 ]; then
        fail "qemu-img check $img: exit $rc" "$(cat check.json)"
        continue
    fi
    if grep -q '"corruptions"' check.json ||
       ! grep -q '"check-errors": 0' check.json; then
        fail "qemu-img check $img: corruptions or check errors" \
            "$(cat check.json)"
    fi
done
echo "qemu-img check: $n sampled images"
[ "$n" -gt 0 ] || fail "no sampled images to check"
finish
