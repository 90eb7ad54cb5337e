# Shared helpers for the shell test suites.  Source it; it sets up a
# scratch directory ($T, removed on exit) and failure accounting.
#   expect_same NAME FILE_A FILE_B   compare two outputs, diff on mismatch
#   files_equal FILE_A FILE_B         cmp -s, fast on sparse files
#   qemu_create_luks IMG SIZE OPTS    a LUKS qcow2 made by qemu-img
#   map_layout IMAGE                  allocation map without host offsets
#   fail NAME [DETAIL]               record a failure
#   finish                            exit 1 if anything failed
set -u

: "${QIMG:?QIMG must point at the qimg binary}"
QEMU_IMG=${QEMU_IMG:-qemu-img}
QEMU_IO=${QEMU_IO:-qemu-io}

T=$(mktemp -d "${TMPDIR:-/tmp}/qimg-test.XXXXXX")
# (The oracles' wrappers live beside $T, out of the scripts' view.)
trap 'rm -rf "$T" "$T.oracles"' EXIT

# The oracles run with their fsync and fdatasync made no-ops (QIMG_NOSYNC,
# tests/unit/nosync.c): what they write and print is the same, without
# the waits for the disk.  QEMU_IMG_SYNCING and QEMU_IO_SYNCING run them
# as they are, for a test of which syncs a tool makes.  qimg runs as it is.
QEMU_IMG_SYNCING=$QEMU_IMG
QEMU_IO_SYNCING=$QEMU_IO
if [ -n "${QIMG_NOSYNC:-}" ] && [ -f "$QIMG_NOSYNC" ]; then
    mkdir "$T.oracles"
    printf '#!/bin/sh\nLD_PRELOAD=%q exec %q "$@"\n' "$QIMG_NOSYNC" \
        "$QEMU_IMG" >"$T.oracles/qemu-img"
    printf '#!/bin/sh\nLD_PRELOAD=%q exec %q "$@"\n' "$QIMG_NOSYNC" \
        "$QEMU_IO" >"$T.oracles/qemu-io"
    chmod +x "$T.oracles/qemu-img" "$T.oracles/qemu-io"
    QEMU_IMG=$T.oracles/qemu-img
    QEMU_IO=$T.oracles/qemu-io
fi

failures=0
checks=0
# Failures are reported on the script's own stderr even from inside a
# command whose stderr is redirected.
exec 3>&2

fail() {
    failures=$((failures + 1))
    echo "FAIL: $1" >&3
    if [ $# -gt 1 ]; then
        printf '%s\n' "$2" | head -40 | sed 's/^/    /' >&3
    fi
}

pass() {
    checks=$((checks + 1))
}

# files_equal A B: status 0 when A and B hold the same bytes, as "cmp -s";
# tests/unit/same_bytes.c does not read the holes both files share (cmp
# reads a sparse 5 GiB image through the kernel's zero fill for tens of
# seconds).  Without the helper (a script run by hand), cmp.
files_equal() {
    if [ -n "${QIMG_SAME_BYTES:-}" ]; then
        "$QIMG_SAME_BYTES" "$1" "$2"
    else
        cmp -s "$1" "$2"
    fi
}

expect_same() {
    local name=$1 a=$2 b=$3
    checks=$((checks + 1))
    if ! files_equal "$a" "$b"; then
        fail "$name" "$(diff -u "$a" "$b" | head -40)"
        return 1
    fi
    return 0
}

# map_layout IMAGE: qemu-img map without host offsets, neighbours of one
# kind merged ("start end depth present zero data" lines, zero only
# where there is no data): the guest's view of allocation, whatever the
# host layout.
map_layout() {
    "$QEMU_IMG" map --output=json "$1" | python3 -c '
import json, sys
out = []
for e in json.load(sys.stdin):
    # Data over host holes (QEMU reports zero too) depends on the host
    # file layout, not on the image: data decides.
    k = (e["depth"], e["present"], e["zero"] and not e["data"], e["data"])
    if out and out[-1][0] == k and out[-1][2] == e["start"]:
        out[-1][2] += e["length"]
    else:
        out.append([k, e["start"], e["start"] + e["length"]])
for k, a, b in out:
    print(a, b, *k)
'
}

# expect_status NAME WANT CMD...: run CMD, require exit status WANT.
expect_status() {
    local name=$1 want=$2
    shift 2
    checks=$((checks + 1))
    "$@" >"$T/.out" 2>"$T/.err"
    local got=$?
    if [ "$got" != "$want" ]; then
        fail "$name: exit status $got, want $want" "$(cat "$T/.err")"
        return 1
    fi
    return 0
}

# QEMU_LUKS_TRIES: how often a qemu-img LUKS creation is tried.  qemu-img
# times PBKDF2 from 2^15 iterations up, with the thread's CPU time in
# milliseconds, and fails ("Unable to get accurate CPU usage") when a
# trial reads 0 ms; on this 2-core VM the first, 7 ms trial often does,
# whatever the iteration time asked for.  A failed try costs a few ms.
QEMU_LUKS_TRIES=60

# qemu_create_luks IMG SIZE OPTS: qemu-img creates a LUKS-encrypted qcow2
# image with key secret "sec0" (data "abc") and the -o options OPTS, which
# include encrypt.format and encrypt.iter-time (tried QEMU_LUKS_TRIES
# times).
qemu_create_luks() {
    local img=$1 size=$2 opts=$3 t
    for ((t = 0; t < QEMU_LUKS_TRIES; t++)); do
        "$QEMU_IMG" create -q -f qcow2 --object secret,id=sec0,data=abc \
            -o "encrypt.key-secret=sec0,$opts" "$img" "$size" \
            >/dev/null 2>&1 && return 0
    done
    fail "qemu-img create $img $opts"
    return 1
}

# qemu_img_cached OUT ERR ARGS...: qemu-img ARGS, stdout to OUT, stderr
# to ERR, returning its status; for commands that only read and print
# (measure), whose result depends on nothing but the arguments and the
# files named by them.  With QIMG_ORACLE_CACHE (a folder scripts/test.sh
# shares between its builds) a result recorded by the same qemu-img
# binary for the same arguments and the same contents of the files they
# name is replayed: qemu-img measure -O luks times PBKDF2 for its default
# two seconds, for a header whose size the time does not change.
qemu_img_cached() {
    local out=$1 err=$2
    shift 2
    local dir=${QIMG_ORACLE_CACHE:-} key a bin
    if [ -z "$dir" ] || [ ! -d "$dir" ]; then
        "$QEMU_IMG" "$@" >"$out" 2>"$err"
        return
    fi
    bin=$(command -v "$QEMU_IMG_SYNCING")
    key=$({
        stat -L -c '%n %s %Y' "$bin"
        printf '%s\0' "$@"
        for a in "$@"; do
            [ -f "$a" ] && { printf 'file %s\0' "$a"; sha256sum <"$a"; }
        done
    } | sha256sum | cut -c1-64)
    if [ -f "$dir/$key/status" ]; then
        cat "$dir/$key/out" >"$out"
        cat "$dir/$key/err" >"$err"
        return "$(cat "$dir/$key/status")"
    fi
    "$QEMU_IMG" "$@" >"$out" 2>"$err"
    local st=$?
    # qemu-img's failure to time PBKDF2 (see QEMU_LUKS_TRIES) is not a
    # result of the arguments: never recorded.
    if ! grep -q 'Unable to get accurate CPU usage' "$err" &&
        mkdir "$dir/$key.$$" 2>/dev/null; then
        cp "$out" "$dir/$key.$$/out" && cp "$err" "$dir/$key.$$/err" &&
            echo "$st" >"$dir/$key.$$/status" &&
            mv -T "$dir/$key.$$" "$dir/$key" 2>/dev/null
        rm -rf "$dir/$key.$$"
    fi
    return "$st"
}

# same_out NAME ARGS...: qemu-img ARGS and qimg ARGS print the same on
# stdout and stderr (qimg's "qimg: " prefix read as "qemu-img: ") and
# exit alike; the exit status is compared as a last stdout line.  Debian's
# qemu-img warns about dmg modules it does not ship when it probes: those
# lines are dropped.  Writes want.out, want.err, got.out and got.err in
# the current directory.
same_out() {
    local name=$1
    shift
    "$QEMU_IMG" "$@" >want.out 2>want.err
    echo "exit $?" >>want.out
    sed -i '/^qemu: module block-block-dmg-.* not found/d' want.err
    "$QIMG" "$@" >got.out 2>got.err
    echo "exit $?" >>got.out
    sed -i 's/^qimg: /qemu-img: /' got.err
    expect_same "$name: stdout" want.out got.out
    expect_same "$name: stderr" want.err got.err
}

# same_raw NAME IMAGE: qimg and qemu-img convert IMAGE to the same raw
# bytes (got.raw, want.raw); a failing convert is a failure.
same_raw() {
    rm -f got.raw want.raw
    "$QIMG" convert -O raw "$2" got.raw 2>got.err ||
        { fail "$1: qimg convert" "$(cat got.err)"; return; }
    "$QEMU_IMG" convert -O raw "$2" want.raw ||
        { fail "$1: qemu-img convert"; return; }
    expect_same "$1: contents" want.raw got.raw
}

# same_read NAME IMAGE: same_raw, then info (human and json) and map json.
same_read() {
    same_raw "$1" "$2"
    same_out "$1: info" info "$2"
    same_out "$1: info json" info --output=json "$2"
    same_out "$1: map json" map --output=json "$2"
}

finish() {
    if [ "$failures" -ne 0 ]; then
        echo "$failures of $checks checks failed" >&2
        exit 1
    fi
    echo "all $checks checks passed"
    exit 0
}
