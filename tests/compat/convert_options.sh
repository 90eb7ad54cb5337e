#!/bin/bash
# qimg convert -t/-T cache modes and progress on SIGUSR1, against qemu-img.
. "$QIMG_SRCDIR/tests/functions.sh"
cd "$T"

# A 3 GiB sparse image with 384 MiB of data in three places, so that a
# conversion lasts long enough to be signalled several times.
truncate -s 3G big.raw
for at in 0 1200 2900; do
    tr '\0' 'q' </dev/zero | head -c 128M |
        dd of=big.raw bs=1M seek="$at" conv=notrunc status=none
done
head -c 100000 /dev/urandom >small.raw

conv() {
    local name=$1
    shift
    rm -f want.img got.img
    "$QEMU_IMG" convert "$@" want.img >want.out 2>want.err
    echo "status $?" >>want.out
    "$QIMG" convert "$@" got.img >got.out 2>got.err
    echo "status $?" >>got.out
    sed -i 's/qemu-img/qimg/g' want.err
    expect_same "$name: stdout" want.out got.out
    expect_same "$name: stderr" want.err got.err
    if [ -e want.img ] || [ -e got.img ]; then
        checks=$((checks + 1))
        files_equal want.img got.img || fail "$name: contents differ"
    fi
}

# flushes OUT TOOL ARGS...: write "flush" to OUT if converting to OUT.img
# syncs it, else "none".
flushes() {
    local out=$1
    shift
    rm -f "$out.img"
    strace -f -e trace=fsync,fdatasync,sync_file_range,openat \
        -o "$out.trace" "$@" "$out.img" >/dev/null 2>&1
    if grep -qE '(fsync|fdatasync|sync_file_range)\(' "$out.trace"; then
        echo flush >"$out"
    else
        echo none >"$out"
    fi
    # Whether the target was opened for writes around the page cache.
    if grep -E "openat\(.*\"$out.img\"" "$out.trace" |
        grep -qE 'O_DIRECT([|)]|$)'; then
        echo direct >>"$out"
    else
        echo cached >>"$out"
    fi
}

for mode in "" none off writeback writethrough directsync unsafe; do
    args=()
    [ -n "$mode" ] && args=(-t "$mode")
    conv "-t ${mode:-default}" -f raw "${args[@]}" small.raw
    conv "-T ${mode:-default}" -f raw ${mode:+-T "$mode"} small.raw
    # The default target mode is unsafe: no flush at the end.  (qemu-img
    # with its syncs: functions.sh makes them no-ops elsewhere.)
    flushes want.flush "$QEMU_IMG_SYNCING" convert -f raw "${args[@]}" \
        small.raw
    flushes got.flush "$QIMG" convert -f raw "${args[@]}" small.raw
    expect_same "-t ${mode:-default}: flush, O_DIRECT" want.flush got.flush
done
# O_DIRECT with a data run that is not 4 KiB aligned: written buffered.
head -c 12345 /dev/urandom >odd.raw
truncate -s 3M odd.raw
head -c 777777 /dev/urandom >>odd.raw
for mode in none directsync; do
    conv "-t $mode odd" -f raw -t "$mode" odd.raw
    conv "-t $mode big" -f raw -t "$mode" big.raw
done
conv "-t none -T none" -f raw -t none -T none small.raw
conv "-T empty" -f raw -T "" small.raw
conv "-T WriteBack" -f raw -T WriteBack small.raw

# signalled NAME TOOL ARGS...: convert big.raw to sig.img, sending SIGUSR1
# every 10 ms from when the target appears until the process ends.
signalled() {
    local name=$1
    shift
    rm -f sig.img
    "$@" -f raw big.raw sig.img >sig.out 2>sig.err &
    local pid=$!
    while kill -0 "$pid" 2>/dev/null && [ ! -e sig.img ]; do
        sleep 0.002
    done
    while kill -0 "$pid" 2>/dev/null; do
        kill -USR1 "$pid" 2>/dev/null
        sleep 0.01
    done
    wait "$pid"
    echo "status $?" >>sig.out
}

# lines_ok NAME: stderr holds at least one "    (P/100%)" line, nothing
# else, with P never decreasing.
lines_ok() {
    checks=$((checks + 1))
    if [ ! -s sig.err ] ||
        grep -qvE '^    \([0-9]{1,3}\.[0-9]{2}/100%\)$' sig.err ||
        ! sed 's/[^0-9.]*\([0-9.]*\).*/\1/' sig.err | sort -n -c 2>/dev/null
    then
        fail "$1: progress lines" "$(cat -A sig.err | head -5)"
    fi
}

"$QEMU_IMG" convert -f raw big.raw ref.img
for tool in "$QEMU_IMG" "$QIMG"; do
    name=$(basename "$tool")
    signalled "$name SIGUSR1" "$tool" convert
    expect_same "$name SIGUSR1: status" <(echo "status 0") sig.out
    lines_ok "$name SIGUSR1"
    checks=$((checks + 1))
    files_equal ref.img sig.img || fail "$name SIGUSR1: contents differ"

    signalled "$name SIGUSR1 -q" "$tool" convert -q
    expect_same "$name SIGUSR1 -q: status" <(echo "status 0") sig.out
    lines_ok "$name SIGUSR1 -q"

    signalled "$name SIGUSR1 -p -q" "$tool" convert -p -q
    expect_same "$name SIGUSR1 -p -q: status" <(echo "status 0") sig.out
    lines_ok "$name SIGUSR1 -p -q"
done

# With -p the signal prints nothing more (qimg draws no bar into a pipe;
# qemu-img does, on stdout), and it never ends the process.
signalled "qimg SIGUSR1 -p" "$QIMG" convert -p
expect_same "qimg SIGUSR1 -p: output" <(echo "status 0") sig.out
expect_same "qimg SIGUSR1 -p: stderr" /dev/null sig.err
signalled "qemu-img SIGUSR1 -p" "$QEMU_IMG" convert -p
expect_same "qemu-img SIGUSR1 -p: stderr" /dev/null sig.err
checks=$((checks + 1))
files_equal ref.img sig.img || fail "SIGUSR1 -p: contents differ"

# A corrupt cluster in the middle of the copy: a copy thread fails while
# others work on; the error is qimg's one line, the status qemu-img's, and
# the target qimg created is gone (qemu-img leaves it).
"$QEMU_IMG" create -q -f qcow2 bad.qcow2 64M
"$QEMU_IO" -c "write -P 0x5a 0 64M" bad.qcow2 >/dev/null
python3 - bad.qcow2 <<'PY'
import struct, sys
with open(sys.argv[1], 'r+b') as f:
    h = f.read(48)
    f.seek(struct.unpack('>Q', h[40:48])[0])
    l2 = struct.unpack('>Q', f.read(8))[0] & 0x00fffffffffffe00
    # Guest cluster 600 (37.5 MiB): "compressed" data that is not.
    f.seek(l2 + 600 * 8)
    f.write(struct.pack('>Q', (1 << 62) | 0x30000))
PY
for args in "" "-S 0" "-p -q"; do
    rm -f want.img got.img
    # shellcheck disable=SC2086
    "$QEMU_IMG" convert $args -O raw bad.qcow2 want.img >/dev/null 2>&1
    want=$?
    # shellcheck disable=SC2086
    "$QIMG" convert $args -O raw bad.qcow2 got.img >got.out 2>got.err
    got=$?
    expect_same "corrupt ${args:-plain}: status" <(echo "$want") \
        <(echo "$got")
    checks=$((checks + 1))
    if [ "$(wc -l <got.err)" != 1 ] ||
        ! grep -q "^qimg: qcow2: image 'bad.qcow2' is corrupt" got.err; then
        fail "corrupt ${args:-plain}: message" "$(cat got.err)"
    fi
    checks=$((checks + 1))
    [ ! -e got.img ] || fail "corrupt ${args:-plain}: target left behind"
done
# With -n the target is the caller's and stays.
head -c 64M /dev/zero >got.img
expect_status "corrupt -n: status" 1 "$QIMG" convert -n -O raw bad.qcow2 \
    got.img
checks=$((checks + 1))
[ -e got.img ] || fail "corrupt -n: target removed"

finish
