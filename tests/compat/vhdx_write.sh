#!/bin/bash
# vhdx guest writes: qimg convert -O vhdx makes the file qemu-img convert
# makes (the same bytes but for GUIDs, checksums, the creator string, the
# random first sequence number and the bytes QEMU leaves unset in its log
# entries; the same host allocation), checked clean and compared
# identical by qemu-img, with the same info; qimg writes into images
# qemu-img made and qemu-io writes into images qimg made read back
# right; a BAT update cut after its log entry is replayed by both tools
# to the same image, and one cut before the entry is whole leaves the old
# image; truncated files are checked as qemu-img checks them.
. "$QIMG_SRCDIR/tests/functions.sh"
: "${QIMG_WRITE_IMAGE:?QIMG_WRITE_IMAGE must point at write_image}"
cd "$T"
TOOL=$QIMG_SRCDIR/tests/compat/vhdx_tool.py
PY=python3
[ -x /usr/bin/python3 ] && PY=/usr/bin/python3
W=$QIMG_WRITE_IMAGE

io() { "$QEMU_IO" -t unsafe "$@" >/dev/null || fail "qemu-io $*"; }
tool() { "$PY" "$TOOL" "$@" || fail "vhdx_tool $*"; }
wr() { "$W" "$@" || fail "write_image $*"; }

# The bytes of two written images, but for what differs by chance.
same_bytes() {
    checks=$((checks + 1))
    [ "$("$PY" "$TOOL" wmask "$2")" = "$("$PY" "$TOOL" wmask "$3")" ] ||
        fail "$1: $2 and $3 differ"
}
# The host allocation of two files (data and holes).
same_alloc() {
    "$QEMU_IMG" map -f raw --output=json "$2" >"$1.a.map"
    "$QEMU_IMG" map -f raw --output=json "$3" >"$1.b.map"
    expect_same "$1: host allocation" "$1.a.map" "$1.b.map"
}
# A command of both tools on one file: the same stdout, stderr, status.
same_cmd() {
    local name=$1 file=$2
    shift 2
    "$QIMG" "$@" "$file" >"$name.q.out" 2>"$name.q.err"
    echo "exit $?" >>"$name.q.out"
    "$QEMU_IMG" "$@" "$file" >"$name.e.out" 2>"$name.e.err"
    echo "exit $?" >>"$name.e.out"
    sed -i 's/^qimg: warning: /qemu-img: /; s/^qimg: /qemu-img: /' \
        "$name.q.err"
    expect_same "$name: $* (stdout)" "$name.e.out" "$name.q.out"
    expect_same "$name: $* (stderr)" "$name.e.err" "$name.q.err"
}
# Clean by qemu-img check, the same guest bytes as FILE.
judge() {
    expect_status "$1: qemu-img check" 0 "$QEMU_IMG" check "$2"
    expect_status "$1: qemu-img compare" 0 "$QEMU_IMG" compare "$2" "$3"
}

# A raw file with a distinct pattern in each 64 KiB, and zero runs; a
# qcow2 file with data, a zero cluster run and a hole.
"$PY" - <<'PY'
with open("pattern.raw", "wb") as f:
    for i in range(80):
        if i % 7 in (3, 4):
            f.write(bytes(65536))
        else:
            f.write(bytes([(i * 37 + j) & 0xff for j in range(256)]) * 256)
PY
"$QEMU_IMG" create -q -f qcow2 src.qcow2 12M || fail "qemu-img create"
io -c 'write -P 1 0 100k' -c 'write -P 2 3M 1M' -c 'write -z 6M 1M' \
    -c 'write -P 3 11M 1M' src.qcow2

# --- convert ----------------------------------------------------------
conv() {  # conv NAME SRC CONVERT-ARGS...
    local name=$1 src=$2
    shift 2
    "$QIMG" convert -O vhdx "$@" "$src" "$name.q.vhdx" ||
        { fail "$name: qimg convert $*"; return; }
    "$QEMU_IMG" convert -O vhdx "$@" "$src" "$name.e.vhdx" ||
        { fail "$name: qemu-img convert $*"; return; }
    same_bytes "$name" "$name.q.vhdx" "$name.e.vhdx"
    same_alloc "$name" "$name.q.vhdx" "$name.e.vhdx"
    judge "$name" "$name.q.vhdx" "$src"
    same_cmd "$name-info" "$name.q.vhdx" info
}
conv dyn pattern.raw
conv dyn-1m pattern.raw -o block_size=1M
conv dyn-2m-log pattern.raw -o block_size=2M,log_size=2M
conv dyn-32m pattern.raw -o block_size=32M
conv dyn-nozero pattern.raw -o block_state_zero=off
conv fixed pattern.raw -o subformat=fixed
conv fixed-nozero pattern.raw -o subformat=fixed,block_state_zero=off
conv fixed-nozero-1m pattern.raw \
    -o subformat=fixed,block_state_zero=off,block_size=1M
conv nosparse pattern.raw -S 0 -o block_size=1M
conv qcow2 src.qcow2
conv qcow2-1m src.qcow2 -o block_size=1M
conv qcow2-fixed src.qcow2 -o subformat=fixed,block_size=2M
# In place: a fixed image without ZERO blocks keeps its size.
checks=$((checks + 1))
[ "$(stat -c %s fixed-nozero-1m.q.vhdx)" = $((8 * 1048576 + 5242880)) ] ||
    fail "fixed-nozero-1m: the file grew"

# --- guest writes, both ways ------------------------------------------
# The same writes by qemu-io and by qimg (write_image) in one session
# each on copies of one image: the same bytes; a block boundary crossed,
# the disk's short last block, a present block rewritten.
ops_io=(-c 'write -P 1 0 4k' -c 'write -P 2 1044480 8k'
    -c 'write -P 3 3M 1M' -c 'write -P 4 6292992 512' -c 'write -P 5 4k 4k')
ops_w=(w:0:4096:1 w:1044480:8192:2 w:3145728:1048576:3 w:6292992:512:4
    w:4096:4096:5)
"$QEMU_IMG" create -q -f vhdx -o block_size=1M e0.vhdx 6293504 ||
    fail "qemu-img create e0.vhdx"
"$QIMG" create -q -f vhdx -o block_size=1M q0.vhdx 6293504 ||
    fail "qimg create q0.vhdx"
for base in e0 q0; do
    cp "$base.vhdx" "$base.byio.vhdx"
    cp "$base.vhdx" "$base.byq.vhdx"
    io "${ops_io[@]}" "$base.byio.vhdx"
    wr "$base.byq.vhdx" vhdx "${ops_w[@]}"
    same_bytes "$base writes" "$base.byio.vhdx" "$base.byq.vhdx"
    same_alloc "$base writes" "$base.byio.vhdx" "$base.byq.vhdx"
    judge "$base writes" "$base.byq.vhdx" "$base.byio.vhdx"
    same_cmd "$base-writes-check" "$base.byq.vhdx" check
done
# A second session of each tool on the other's image: qemu-io over the
# image qimg wrote, qimg over the one qemu-io wrote.
io -c 'write -P 6 2M 64k' -c 'write -P 7 5M 4k' q0.byq.vhdx
wr q0.byio.vhdx vhdx w:2097152:65536:6 w:5242880:4096:7
judge "second session" q0.byq.vhdx q0.byio.vhdx
same_bytes "second session" q0.byq.vhdx q0.byio.vhdx
# Reopened between writes: every byte is where it was put.
cp e0.vhdx reopen.vhdx
wr reopen.vhdx vhdx w:0:4096:1 o w:1044480:8192:2 o w:3145728:1048576:3 \
    o w:6292992:512:4 o w:4096:4096:5
judge reopen reopen.vhdx e0.byio.vhdx

# Zero writes allocate nothing where the disk reads as zero, and zero
# present blocks in place.
cp e0.byio.vhdx zero.q.vhdx
cp e0.byio.vhdx zero.e.vhdx
size=$(stat -c %s zero.q.vhdx)
wr zero.q.vhdx vhdx z:1048576:1048576 z:0:2048 z:2097152:2097152
io -c 'write -z 1M 1M' -c 'write -z 0 2k' -c 'write -z 2M 2M' zero.e.vhdx
judge zeros zero.q.vhdx zero.e.vhdx
checks=$((checks + 1))
[ "$(stat -c %s zero.q.vhdx)" = "$size" ] || fail "zeros: the file grew"

# --- cut BAT updates --------------------------------------------------
# One block written by qimg in a fresh image: its log entry is at 1 MiB,
# its BAT entry (block 2) at 2 MiB + 16.  A crash after the entry was
# flushed and before the BAT sector was: the old (ZERO) BAT entry and
# the header naming the entry's log GUID.
"$QIMG" create -q -f vhdx -o block_size=1M cut.vhdx 4M ||
    fail "qimg create cut.vhdx"
wr cut.vhdx vhdx w:2097152:65536:9
cp cut.vhdx cut.done.vhdx
tool poke cut.vhdx $((0x200010)) Q 2
tool loguid cut.vhdx 2 0x100000
cp cut.vhdx torn.vhdx
same_cmd cut-info cut.vhdx info
for t in q e; do
    cp cut.vhdx "cut.$t.vhdx"
done
"$QIMG" check -q -r all cut.q.vhdx || fail "qimg check -r all cut"
"$QEMU_IMG" check -q -r all cut.e.vhdx || fail "qemu-img check -r all cut"
same_bytes "cut replayed" cut.q.vhdx cut.e.vhdx
judge "cut replayed" cut.q.vhdx cut.done.vhdx
# A writable open replays it too, before more writes.
cp cut.vhdx cut.w.vhdx
wr cut.w.vhdx vhdx w:0:4096:8
io -c 'write -P 8 0 4k' cut.done.vhdx
judge "cut then written" cut.w.vhdx cut.done.vhdx
# Torn: the entry's data sector half written (its checksum fails).
# Nothing is replayed: the block stays unreferenced, the disk as before.
tool poke torn.vhdx $((0x101800)) s 'torn'
same_cmd torn-check torn.vhdx check
cp torn.vhdx torn.e.vhdx
"$QIMG" check -q -r all torn.vhdx || fail "qimg check -r all torn"
"$QEMU_IMG" check -q -r all torn.e.vhdx || fail "qemu-img check -r all torn"
same_bytes "torn" torn.vhdx torn.e.vhdx
"$QIMG" create -q -f vhdx -o block_size=1M blank.vhdx 4M ||
    fail "qimg create blank.vhdx"
judge torn torn.vhdx blank.vhdx

# A BAT entry in the 0.95 draft's UNMAPPED state (5) reads as zero and is
# allocated by a write, as in QEMU.
"$QEMU_IMG" create -q -f vhdx -o block_size=1M s5.vhdx 3M ||
    fail "qemu-img create s5.vhdx"
io -c 'write -P 1 0 1M' -c 'write -P 2 1M 1M' s5.vhdx
tool poke s5.vhdx $((0x200008)) Q 5
cp s5.vhdx s5.e.vhdx
cp s5.vhdx s5.q.vhdx
wr s5.q.vhdx vhdx w:1048576:4096:3
io -c 'write -P 3 1M 4k' s5.e.vhdx
same_bytes "state 5" s5.q.vhdx s5.e.vhdx
judge "state 5" s5.q.vhdx s5.e.vhdx
"$QEMU_IMG" convert -O raw s5.vhdx s5.e.raw || fail "qemu-img convert s5"
"$QIMG" convert -O raw s5.vhdx s5.q.raw || fail "qimg convert s5"
expect_same "state 5: read" s5.e.raw s5.q.raw

# Truncated files, checked as QEMU checks them: the file in whole 512-byte
# sectors, the disk's short last block (5 MiB of an 8 MiB block at 8 MiB)
# by the bytes it maps; a block that starts past the end.
for cut in 1 512 5242880; do
    cp fixed-nozero.q.vhdx trunc.vhdx
    truncate -s $(($(stat -c %s trunc.vhdx) - cut)) trunc.vhdx
    same_cmd trunc-$cut trunc.vhdx check
done

finish
