#!/bin/bash
# Image locking against QEMU: qimg's file leaf (driven through the
# lock_holder test program) and qemu-io / qemu-img must refuse each other
# the way two QEMU processes do.  For raw and qcow2 images:
#   (a) qemu-io holds the image read-write: qimg cannot open it at all;
#   (b) qemu-io -r holds it: qimg can read it; qimg can write a qcow2 only
#       if QEMU could (QEMU's raw readers share writes, so a raw image can
#       still be opened read-write, by qemu-io and qimg alike);
#   (c) qimg holds it read-write: qemu-io cannot write it; qemu-img info
#       fails on qcow2 (QEMU's info takes no locks on raw) unless -U;
#   (d) qimg holds it read-only: qemu-io -r can read it, qemu-io cannot
#       write it.
# The lock bytes each side holds are also compared with /proc/locks.
#
# Environment: QIMG_LOCK_HOLDER (path of the lock_holder binary),
# QIMG_SRCDIR (unused here, accepted for uniformity).
set -u

lock_holder=${QIMG_LOCK_HOLDER:-}
if [ -z "$lock_holder" ] || [ ! -x "$lock_holder" ]; then
    echo "SKIP: QIMG_LOCK_HOLDER does not name the lock_holder program"
    exit 77
fi
for tool in qemu-img qemu-io timeout; do
    if ! command -v "$tool" >/dev/null; then
        echo "SKIP: $tool not found"
        exit 77
    fi
done
if [ ! -r /proc/locks ]; then
    echo "SKIP: /proc/locks is not readable"
    exit 77
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/qimg-locking.XXXXXX") || exit 1
holder_pid=
holder_fd=
failures=0

# Stop the current background holder: closing its stdin ends it.
stop_holder() {
    if [ -n "$holder_fd" ]; then
        exec {holder_fd}>&-
        holder_fd=
    fi
    if [ -n "$holder_pid" ]; then
        # A holder that ignores EOF must not hang the test.
        local i
        for ((i = 0; i < 100; i++)); do
            kill -0 "$holder_pid" 2>/dev/null || break
            sleep 0.05
        done
        kill "$holder_pid" 2>/dev/null
        wait "$holder_pid" 2>/dev/null
        holder_pid=
    fi
}

# shellcheck disable=SC2317  # called through the EXIT trap
cleanup() {
    stop_holder
    rm -rf "$tmp"
}
trap cleanup EXIT

pass() {
    echo "ok - $1"
}

fail() {
    echo "FAIL - $*"
    failures=$((failures + 1))
}

# The QEMU lock bytes (100..103, 200..203) anyone holds on $1, sorted,
# space separated.  /proc/locks lines: "N: OFDLCK ADVISORY READ -1
# maj:min:inode start end".
lock_bytes() {
    local ino
    ino=$(stat -c %i "$1") || return 1
    awk -v ino="$ino" '
        $2 == "OFDLCK" {
            n = split($6, id, ":")
            if (id[n] != ino) next
            end = ($8 == "EOF") ? 299 : $8
            for (b = $7; b <= end && b < 300; b++) print b
        }' /proc/locks | sort -n -u | tr '\n' ' ' | sed 's/ $//'
}

# Wait (up to 5 s) until exactly the bytes $2 are held on $1.
wait_bytes() {
    local i got
    for ((i = 0; i < 100; i++)); do
        got=$(lock_bytes "$1")
        [ "$got" = "$2" ] && return 0
        sleep 0.05
    done
    echo "    lock bytes on $1: got '$got', want '$2'"
    return 1
}

# Start "$@" in the background with its stdin on a pipe we keep open.
start_holder() {
    local fifo=$tmp/holder.fifo
    rm -f "$fifo"
    mkfifo "$fifo" || return 1
    "$@" <"$fifo" >"$tmp/holder.out" 2>&1 &
    holder_pid=$!
    exec {holder_fd}>"$fifo"
    rm -f "$fifo"
}

# Start lock_holder $1 on $2 and wait for it to say it holds the locks.
start_lock_holder() {
    start_holder "$lock_holder" "$1" "$2" || return 1
    local i
    for ((i = 0; i < 100; i++)); do
        grep -q '^ready$' "$tmp/holder.out" 2>/dev/null && return 0
        kill -0 "$holder_pid" 2>/dev/null || break
        sleep 0.05
    done
    echo "    lock_holder $1 did not get ready: $(cat "$tmp/holder.out")"
    return 1
}

# expect_ok DESC CMD...: CMD must succeed.
expect_ok() {
    local desc=$1 out rc
    shift
    out=$(timeout 20 "$@" </dev/null 2>&1)
    rc=$?
    if [ "$rc" -eq 0 ]; then
        pass "$desc"
    else
        fail "$desc: expected success, got exit $rc: $out"
    fi
}

# expect_fail DESC TEXT CMD...: CMD must fail and print TEXT.
expect_fail() {
    local desc=$1 text=$2 out rc
    shift 2
    out=$(timeout 20 "$@" </dev/null 2>&1)
    rc=$?
    if [ "$rc" -eq 0 ] || [ "$rc" -eq 124 ]; then
        fail "$desc: expected failure, got exit $rc: $out"
    elif [[ "$out" != *"$text"* ]]; then
        fail "$desc: message lacks '$text': $out"
    else
        pass "$desc"
    fi
}

# The bytes qimg's file leaf holds, whatever the format.
qimg_ro_bytes="100 201 203"
qimg_rw_bytes="100 101 103 201 203"
write_lock='Failed to get "write" lock'
shared_write_lock='Failed to get shared "write" lock'

for fmt in raw qcow2; do
    img=$tmp/img.$fmt
    if ! qemu-img create -q -f "$fmt" "$img" 1M; then
        fail "$fmt: qemu-img create"
        continue
    fi
    # What QEMU 7.2 holds (observed): a raw image's qemu-io shares every
    # permission; qcow2 refuses to share write and resize on its file.
    if [ "$fmt" = raw ]; then
        qemu_rw_bytes="100 101"
        qemu_ro_bytes="100"
        # qimg refuses to share write, so it trips over qemu-io's write.
        qimg_vs_qemu_rw=$shared_write_lock
    else
        qemu_rw_bytes="100 101 103 201 203"
        qemu_ro_bytes="100 201 203"
        qimg_vs_qemu_rw=$write_lock
    fi

    # (a) qemu-io holds the image read-write.
    start_holder qemu-io -f "$fmt" "$img"
    if wait_bytes "$img" "$qemu_rw_bytes"; then
        pass "$fmt (a): qemu-io RW holds $qemu_rw_bytes"
        expect_fail "$fmt (a): lock_holder rw refused" "$qimg_vs_qemu_rw" \
            "$lock_holder" rw "$img"
        expect_fail "$fmt (a): lock_holder ro refused" "$shared_write_lock" \
            "$lock_holder" ro "$img"
        if [ "$fmt" = qcow2 ]; then
            expect_fail "$fmt (a): qemu-img info refused" \
                "$shared_write_lock" qemu-img info "$img"
        fi
        wait_bytes "$img" "$qemu_rw_bytes" ||
            fail "$fmt (a): refused opens left locks behind"
    else
        fail "$fmt (a): qemu-io did not take its locks:" \
            "$(cat "$tmp/holder.out")"
    fi
    stop_holder
    expect_ok "$fmt (a): lock_holder rw after qemu-io exits" \
        "$lock_holder" rw "$img"

    # (b) qemu-io -r holds the image read-only.
    start_holder qemu-io -r -f "$fmt" "$img"
    if wait_bytes "$img" "$qemu_ro_bytes"; then
        pass "$fmt (b): qemu-io -r holds $qemu_ro_bytes"
        expect_ok "$fmt (b): lock_holder ro allowed" "$lock_holder" ro "$img"
        if [ "$fmt" = qcow2 ]; then
            expect_fail "$fmt (b): lock_holder rw refused" "$write_lock" \
                "$lock_holder" rw "$img"
        else
            # As QEMU itself: qemu-io may open it read-write too.
            expect_ok "$fmt (b): qemu-io RW allowed (oracle)" \
                qemu-io -f raw -c 'read 0 512' "$img"
            expect_ok "$fmt (b): lock_holder rw allowed, as qemu-io" \
                "$lock_holder" rw "$img"
        fi
    else
        fail "$fmt (b): qemu-io -r did not take its locks:" \
            "$(cat "$tmp/holder.out")"
    fi
    stop_holder

    # (c) qimg holds the image read-write.
    if start_lock_holder rw "$img"; then
        if wait_bytes "$img" "$qimg_rw_bytes"; then
            pass "$fmt (c): lock_holder rw holds $qimg_rw_bytes"
        else
            fail "$fmt (c): lock_holder rw holds the wrong bytes"
        fi
        expect_fail "$fmt (c): qemu-io RW refused" "$write_lock" \
            qemu-io -f "$fmt" -c 'read 0 512' "$img"
        expect_fail "$fmt (c): qemu-io RW write refused" "Failed to get" \
            qemu-io -f "$fmt" -c 'write 0 512' "$img"
        if [ "$fmt" = qcow2 ]; then
            expect_fail "$fmt (c): qemu-img info refused" \
                "$shared_write_lock" qemu-img info "$img"
            expect_fail "$fmt (c): qemu-io -r refused" "$shared_write_lock" \
                qemu-io -r -f "$fmt" -c 'read 0 512' "$img"
        else
            expect_ok "$fmt (c): qemu-io -r allowed" \
                qemu-io -r -f raw -c 'read 0 512' "$img"
        fi
        expect_ok "$fmt (c): qemu-img info -U allowed" \
            qemu-img info -U "$img"
        expect_fail "$fmt (c): second lock_holder rw refused" "$write_lock" \
            "$lock_holder" rw "$img"
    else
        fail "$fmt (c): lock_holder rw could not hold the image"
    fi
    stop_holder
    if wait_bytes "$img" ""; then
        pass "$fmt (c): lock_holder released its locks"
    else
        fail "$fmt (c): locks left behind after lock_holder exited"
    fi

    # (d) qimg holds the image read-only.
    if start_lock_holder ro "$img"; then
        if wait_bytes "$img" "$qimg_ro_bytes"; then
            pass "$fmt (d): lock_holder ro holds $qimg_ro_bytes"
        else
            fail "$fmt (d): lock_holder ro holds the wrong bytes"
        fi
        expect_ok "$fmt (d): qemu-io -r allowed" \
            qemu-io -r -f "$fmt" -c 'read 0 512' "$img"
        expect_ok "$fmt (d): qemu-img info allowed" qemu-img info "$img"
        expect_fail "$fmt (d): qemu-io RW refused" "$write_lock" \
            qemu-io -f "$fmt" -c 'write 0 512' "$img"
        expect_ok "$fmt (d): second lock_holder ro allowed" \
            "$lock_holder" ro "$img"
    else
        fail "$fmt (d): lock_holder ro could not hold the image"
    fi
    stop_holder
    expect_ok "$fmt (d): qemu-io RW after lock_holder exits" \
        qemu-io -f "$fmt" -c 'write 0 512' "$img"
done

# The qimg command line against a running qemu-io: the same verdicts and
# messages as qemu-img gives (program name swapped).
same_verdict() {
    local desc=$1
    shift
    local want got
    want=$(timeout 20 qemu-img "$@" </dev/null 2>&1; echo "status $?")
    got=$(timeout 20 "$QIMG" "$@" </dev/null 2>&1; echo "status $?")
    want=${want//qemu-img: /qimg: }
    if [ "$want" = "$got" ]; then
        pass "$desc"
    else
        fail "$desc: qemu-img said [$want], qimg said [$got]"
    fi
}
for fmt in raw qcow2; do
    img=$tmp/cli.$fmt
    qemu-img create -q -f "$fmt" "$img" 1M
    start_holder qemu-io -f "$fmt" "$img"
    if [ "$fmt" = raw ]; then
        wait_bytes "$img" "100 101" || fail "qemu-io raw RW lock bytes"
    else
        wait_bytes "$img" "100 101 103 201 203" ||
            fail "qemu-io qcow2 RW lock bytes"
    fi
    same_verdict "$fmt: info while qemu-io writes" info "$img"
    same_verdict "$fmt: info -U while qemu-io writes" info -U "$img"
    same_verdict "$fmt: info --output=json -U while qemu-io writes" \
        info --output=json -U "$img"
    stop_holder
done

if [ "$failures" -ne 0 ]; then
    echo "$failures check(s) failed"
    exit 1
fi
echo "all locking checks passed"
exit 0
