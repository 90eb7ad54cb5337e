#!/bin/bash
# vhdx: images written by qemu-img/qemu-io read by qimg byte for byte;
# info (human, json), map --output=json and check (human, json, exit
# status) as qemu-img prints them; damaged headers, region tables,
# metadata and BAT entries refused with qemu-img's words; dirty logs
# (QEMU's own entry, crafted sequences) replayed by check -r all to the
# same bytes as QEMU's replay, refused read-only with its hint.
. "$QIMG_SRCDIR/tests/functions.sh"
cd "$T"
TOOL=$QIMG_SRCDIR/tests/compat/vhdx_tool.py
# The system interpreter when there is one: version-manager shims cost
# seconds per start on a busy machine.
PY=python3
[ -x /usr/bin/python3 ] && PY=/usr/bin/python3

mk() { "$QEMU_IMG" create -q "$@" >/dev/null || fail "qemu-img create $*"; }
io() { "$QEMU_IO" -t unsafe "$@" >/dev/null || fail "qemu-io $*"; }
tool() { "$PY" "$TOOL" "$@" || fail "vhdx_tool $*"; }

# Run a command of both tools on FILE: stdout, stderr (program name
# and file name made alike) and exit status must be the same.  same_rw
# gives each tool its own copy (NAME.q.vhdx, NAME.e.vhdx) to write.
same_cmd() {
    local name=$1 file=$2
    shift 2
    same_run "$name" "$file" "$file" "$@"
}
same_rw() {
    local name=$1 file=$2
    shift 2
    cp "$file" "$name.q.vhdx"
    cp "$file" "$name.e.vhdx"
    same_run "$name" "$name.q.vhdx" "$name.e.vhdx" "$@"
}
same_run() {
    local name=$1 qf=$2 ef=$3
    shift 3
    "$QIMG" "$@" "$qf" >"$name.q.out" 2>"$name.q.err"
    echo "exit $?" >>"$name.q.out"
    "$QEMU_IMG" "$@" "$ef" >"$name.e.out" 2>"$name.e.err"
    echo "exit $?" >>"$name.e.out"
    sed -i "s|$qf|IMG|g" "$name.q.out" "$name.q.err"
    sed -i "s|$ef|IMG|g" "$name.e.out" "$name.e.err"
    # qimg names itself; its open-time lines are warnings.
    sed -i 's/^qimg: warning: /qemu-img: /; s/^qimg: /qemu-img: /' \
        "$name.q.err"
    expect_same "$name: $* (stdout)" "$name.e.out" "$name.q.out"
    expect_same "$name: $* (stderr)" "$name.e.err" "$name.q.err"
}

# Guest bytes: qimg convert -O raw against qemu-img convert -O raw.
same_data() {
    local name=$1 file=$2
    checks=$((checks + 1))
    "$QEMU_IMG" convert -O raw "$file" "$name.want.raw" ||
        { fail "$name: qemu-img convert"; return; }
    "$QIMG" convert -O raw "$file" "$name.got.raw" ||
        { fail "$name: qimg convert"; return; }
    cmp "$name.want.raw" "$name.got.raw" >/dev/null ||
        fail "$name: guest data differs"
    rm -f "$name.want.raw" "$name.got.raw"
}

# Everything a read-only user sees.
same_view() {
    local name=$1 file=$2
    same_data "$name" "$file"
    same_cmd "$name-info" "$file" info
    same_cmd "$name-info-json" "$file" info --output=json
    same_cmd "$name-map" "$file" map --output=json
    same_cmd "$name-check" "$file" check
}

# A raw file with a distinct pattern in each 64 KiB, and zero runs.
"$PY" - <<'PY'
import os
with open("pattern.raw", "wb") as f:
    for i in range(80):
        if i % 7 in (3, 4):
            f.write(bytes(65536))
        else:
            f.write(bytes([(i * 37 + j) & 0xff for j in range(256)]) * 256)
PY

# --- images made by qemu-img and qemu-io ------------------------------
mk -f vhdx empty.vhdx 10M
same_view empty empty.vhdx

mk -f vhdx dyn8m.vhdx 24M
io -c 'write -P 0xab 0 64k' -c 'write -P 0xcd 8M 4k' \
    -c 'write -P 0xef 16777000 1000' -c 'write -z 4M 1M' dyn8m.vhdx
same_view dyn8m dyn8m.vhdx
# The human map (refused: no host offsets) and check as JSON, once.
same_cmd dyn8m-map-human dyn8m.vhdx map
same_cmd dyn8m-check-json dyn8m.vhdx check --output=json

for bs in 1M 2M 32M; do
    mk -f vhdx -o block_size=$bs dyn-$bs.vhdx 5M
    io -c 'write -P 1 0 4k' -c 'write -P 2 1536k 8k' \
        -c 'write -P 3 3M 1M' -c 'write -P 4 5119k 1k' dyn-$bs.vhdx
    same_view dyn-$bs dyn-$bs.vhdx
done

mk -f vhdx -o subformat=fixed fixed.vhdx 6M
io -c 'write -P 7 1M 64k' -c 'write -P 8 5M 1M' fixed.vhdx
same_view fixed fixed.vhdx

mk -f vhdx -o block_state_zero=off,block_size=1M nozero.vhdx 3M
io -c 'write -P 9 1M 4k' nozero.vhdx
same_view nozero nozero.vhdx

# Odd sizes: not a whole block, not a whole MiB.
mk -f vhdx -o block_size=1M odd.vhdx 3146240
io -c 'write -P 5 3145728 512' odd.vhdx
same_view odd odd.vhdx

for sub in dynamic fixed; do
    "$QEMU_IMG" convert -O vhdx -o subformat=$sub,block_size=1M \
        pattern.raw conv-$sub.vhdx || fail "qemu-img convert $sub"
    same_view conv-$sub conv-$sub.vhdx
    checks=$((checks + 1))
    "$QIMG" convert -O raw conv-$sub.vhdx conv-$sub.raw &&
        cmp pattern.raw conv-$sub.raw >/dev/null ||
        fail "conv-$sub: not the pattern"
    # vhdx -> qcow2 keeps the zero runs out of the target.
    checks=$((checks + 1))
    "$QIMG" convert -O qcow2 conv-$sub.vhdx conv-$sub.q.qcow2 &&
        "$QEMU_IMG" convert -O qcow2 conv-$sub.vhdx conv-$sub.e.qcow2 &&
        "$QEMU_IMG" compare -q conv-$sub.q.qcow2 pattern.raw ||
        fail "conv-$sub: convert to qcow2"
    expect_same "conv-$sub: qcow2 allocation" \
        <(map_layout conv-$sub.e.qcow2) <(map_layout conv-$sub.q.qcow2)
done

# Probing: a vhdx image is found without -f, and -f vhdx on a raw file
# is refused as qemu-img refuses it.
same_cmd probe-raw pattern.raw info -f vhdx

# --- damaged images ---------------------------------------------------
# Each case: a copy of small.vhdx (log 1 MiB at 1 MiB, BAT at 2 MiB,
# metadata at 3 MiB, items at 3 MiB + 64 KiB) with one thing broken.
mk -f vhdx -o block_size=1M small.vhdx 2M
io -c 'write -P 1 1M 4k' small.vhdx
base=small.vhdx
M=$((3 * 1024 * 1024 + 65536))
damage() {  # damage NAME TOOL-ARGS...: a case from base
    local name=$1
    shift
    cp --sparse=always "$base" "$name.vhdx"
    tool "$1" "$name.vhdx" "${@:2}"
    same_cmd "$name" "$name.vhdx" info -f vhdx
    same_cmd "$name-check" "$name.vhdx" check -f vhdx
}
damage file-id poke 0 s 'X'
damage header1-crc poke 0x10010 s 'X'
damage headers-crc poke 0x10010 s 'X'; tool poke headers-crc.vhdx 0x20010 s X
same_cmd headers-crc2 headers-crc.vhdx info -f vhdx
damage version-2 hset 2 H 66 2
damage versions-2 hset 2 H 66 2; tool hset versions-2.vhdx 1 H 66 2
same_cmd versions-2b versions-2.vhdx info -f vhdx
damage log-version hset 2 H 64 1
damage log-short hset 2 I 68 4096
damage log-unaligned hset 2 Q 72 0x101000
damage log-zero hset 2 Q 72 0
damage log-on-metadata hset 2 Q 72 0x300000
damage region1-crc poke 0x30020 s 'X'
damage region-count poke 0x30008 I 2048; tool rcrc region-count.vhdx
damage region-unaligned poke 0x30020 Q 0x200200; tool rcrc \
    region-unaligned.vhdx
damage region-dup poke 0x30030 s \
    '\x66\x77\xc2\x2d\x23\xf6\x00\x42\x9d\x64\x11\x5e\x9b\xfd\x4a\x08'
tool rcrc region-dup.vhdx
same_cmd region-dup2 region-dup.vhdx info
damage region-required poke 0x30010 s 'X'; tool poke \
    region-required.vhdx 0x3002c I 1; tool rcrc region-required.vhdx
same_cmd region-required2 region-required.vhdx info
damage meta-sig poke 0x300000 s 'X'
damage meta-count poke 0x30000a H 2048
damage block-size-huge poke $M I 0x80000000
damage block-size-odd poke $M I 0x180000
damage block-size-small poke $M I 0x80000
damage has-parent poke $((M + 4)) I 2
damage disk-huge poke $((M + 8)) Q 0x410000000000
damage lss-4k poke $((M + 32)) I 4096
damage lss-1k poke $((M + 32)) I 1024
damage pss-1k poke $((M + 36)) I 1024
damage meta-item-far poke $((0x300000 + 32 + 16)) I 0xfffff0
damage meta-required poke 0x300020 s 'X'; tool poke meta-required.vhdx \
    $((0x300000 + 32 + 24)) I 4
damage bat-past-end poke 0x200008 Q 0xfff00006
damage bat-on-metadata poke 0x200000 Q 0x300006
damage bat-shared poke 0x200000 Q "$("$PY" -c "
import struct; d=open('$base','rb').read()
print(struct.unpack_from('<Q', d, 0x200008)[0])")"
damage bat-overflow poke 0x200000 Q 0xfffffffffff00006
damage region-far poke 0x30020 Q 0xfffffffffff00000; tool rcrc region-far.vhdx
same_cmd region-far2 region-far.vhdx info
damage bat-bad-state poke 0x200000 Q 0x400004
same_cmd bat-bad-state-read bat-bad-state.vhdx convert -O raw -f vhdx

# --- the log ----------------------------------------------------------
# QEMU's own log entry: it stays in the log after the replay; naming its
# GUID in the header again makes a log to replay.  The BAT sector it
# holds is zeroed first so that the replay shows.
cp dyn-1M.vhdx own.vhdx
tool poke own.vhdx 0x200000 Q 0
tool loguid own.vhdx 2 0x100000
[ "$("$PY" "$TOOL" seqs own.vhdx | tail -1 | cut -d' ' -f2)" != \
    00000000000000000000000000000000 ] || fail "own.vhdx: no log GUID"
for img in own; do
    same_cmd $img-info $img.vhdx info
    same_cmd $img-info-U $img.vhdx info -U
    same_cmd $img-map $img.vhdx map --output=json
    same_cmd $img-check $img.vhdx check
    same_cmd $img-check-json $img.vhdx check --output=json
done
for spec in chain badcrc short nolog; do
    mk -f vhdx -o block_size=1M log-$spec.vhdx 4M
    tool mklog log-$spec.vhdx $spec
    same_cmd log-$spec-info log-$spec.vhdx info
done
# A log whose every sector claims to start an entry as long as the log:
# qimg stops searching after a bounded amount of reading (docs/
# RESOURCES.md) and refuses the image rather than read 4 MiB 1024 times.
mk -f vhdx -o block_size=1M,log_size=4M log-hostile.vhdx 4M
tool mklog log-hostile.vhdx hostile
expect_status "log-hostile info" 1 "$QIMG" info log-hostile.vhdx
grep -q "VHDX log: too many damaged entries to search" "$T/.err" && pass ||
    fail "log-hostile message" "$(cat "$T/.err")"
for img in own log-chain log-badcrc log-short log-nolog; do
    f=$img.vhdx
    [ -f "$f" ] || f=$img
    # check -r all replays; the result is the same file as QEMU's
    # (GUIDs aside) and reads the same.
    same_rw $img-repair "$f" check -r all
    checks=$((checks + 1))
    [ "$("$PY" "$TOOL" mask $img-repair.q.vhdx)" = \
        "$("$PY" "$TOOL" mask $img-repair.e.vhdx)" ] ||
        fail "$img: replayed image differs from QEMU's"
    same_data $img-replayed $img-repair.e.vhdx
    same_data $img-replayed-q $img-repair.q.vhdx
    same_cmd $img-after $img-repair.q.vhdx check
done

# --- creation ---------------------------------------------------------
# The same "Formatting" line, messages and exit status as qemu-img, and
# the same bytes but for GUIDs, checksums, the creator string and the
# (random) first sequence number; qemu-img check is clean and the disk
# compares equal.
same_create() {
    local name=$1
    shift
    rm -f "$name.q.vhdx" "$name.e.vhdx"
    "$QIMG" create -f vhdx "$@" "$name.q.vhdx" >"$name.q.out" 2>"$name.q.err"
    echo "exit $?" >>"$name.q.out"
    "$QEMU_IMG" create -f vhdx "$@" "$name.e.vhdx" >"$name.e.out" \
        2>"$name.e.err"
    local rc=$?
    echo "exit $rc" >>"$name.e.out"
    sed -i "s|$name\.q\.vhdx|IMG|g; s/^qimg: /qemu-img: /" \
        "$name.q.out" "$name.q.err"
    sed -i "s|$name\.e\.vhdx|IMG|g" "$name.e.out" "$name.e.err"
    expect_same "$name: create (stdout)" "$name.e.out" "$name.q.out"
    expect_same "$name: create (stderr)" "$name.e.err" "$name.q.err"
    [ $rc = 0 ] || return 0
    checks=$((checks + 1))
    [ "$("$PY" "$TOOL" cmask "$name.q.vhdx")" = \
        "$("$PY" "$TOOL" cmask "$name.e.vhdx")" ] ||
        fail "$name: created image differs from qemu-img's"
    expect_status "$name: qemu-img check" 0 "$QEMU_IMG" check "$name.q.vhdx"
    expect_status "$name: qemu-img compare" 0 "$QEMU_IMG" compare \
        "$name.q.vhdx" "$name.e.vhdx"
    rm -f "$name.q.vhdx" "$name.e.vhdx"
}
same_cmd create-help help.vhdx create -f vhdx -o help
same_create c-10m 10M
same_create c-1g 1G
same_create c-1g-1 1073741825
same_create c-100g-1 107374182401
same_create c-33t 33T
same_create c-0 0
same_create c-odd 1000
same_create c-log4m -o log_size=4M 10M
same_create c-log15 -o log_size=1536K 1M
same_create c-log-small -o log_size=512K 1M
same_create c-bs1m -o block_size=1M 10M
same_create c-bs-small -o block_size=512K 5M
same_create c-bs-big -o block_size=512M 5M
same_create c-nozero -o block_state_zero=off 10M
same_create c-fixed -o subformat=fixed,block_size=2M 5M
same_create c-fixed-nozero \
    -o subformat=fixed,block_state_zero=off,block_size=1M 3M
same_create c-fixed-64m -o subformat=fixed,block_state_zero=off 17M
same_create c-bs3m -o block_size=3M 5M
same_create c-subformat -o subformat=foo 5M
same_create c-bsz -o block_state_zero=maybe 5M
same_create c-65t 65T
# An image qimg made reads as qemu-img's does.
"$QIMG" create -q -f vhdx -o subformat=fixed,block_state_zero=off,\
block_size=1M cf.vhdx 3M || fail "qimg create cf.vhdx"
same_view created-fixed cf.vhdx

finish
