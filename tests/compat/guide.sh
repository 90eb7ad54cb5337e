#!/bin/bash
# The workflows of the qemu-img guides people follow with their old
# Windows guests, run verbatim with qimg in place of qemu-img (issue 5,
# item 5).  Each step runs both tools on their own copies where qemu-img
# can do the same step, and requires the same stdout, stderr, exit status
# and images that qemu-img judges alike; steps only qimg runs are judged
# by qemu-img check, compare and qemu-io.
. "$QIMG_SRCDIR/tests/functions.sh"
cd "$T"
mkdir want got

# run NAME ARGS...: "qemu-img ARGS" in want/ and "qimg ARGS" in got/;
# stdout, stderr (tool name mapped) and status must be equal.
run() {
    local name=$1 strip=
    shift
    if [ "${*: -1}" = --strip-progress ]; then
        strip=1
        set -- "${@:1:$#-1}"
    fi
    (cd want && "$QEMU_IMG" "$@" >../want.out 2>../want.err
     echo "status $?" >>../want.out)
    (cd got && "$QIMG" "$@" >../got.out 2>../got.err
     echo "status $?" >>../got.out)
    sed -i -e 's/^qemu-img: /qimg: /' \
        -e "s/'qemu-img --help'/'qimg --help'/" want.err
    if [ -n "$strip" ]; then
        sed -i -e 's/ *([0-9.]*\/100%)\r//g' -e '/^$/d' want.out
    fi
    expect_same "$name: stdout" want.out got.out
    expect_same "$name: stderr" want.err got.err
}

# clean NAME IMG: qemu-img check finds no errors and no leaks.
clean() {
    checks=$((checks + 1))
    if ! "$QEMU_IMG" check "$2" >check.out 2>&1 ||
        ! grep -q '^No errors were found on the image.$' check.out; then
        fail "$1: qemu-img check $2" "$(cat check.out)"
    fi
}

# same_content NAME A B: qemu-img compare says A and B read alike.
same_content() {
    checks=$((checks + 1))
    if ! "$QEMU_IMG" compare -q "$2" "$3" >cmp.out 2>&1; then
        fail "$1: qemu-img compare $2 $3" "$(cat cmp.out)"
    fi
}

# same_stored NAME A B: two (sparse) files hold the same bytes wherever
# either has data, and have the same length; reading every byte of a
# 20 GiB sparse file would take the test's whole budget.
same_stored() {
    checks=$((checks + 1))
    if ! python3 - "$2" "$3" >stored.out 2>&1 <<'EOF'; then
import os, sys

def extents(path):
    fd = os.open(path, os.O_RDONLY)
    size = os.fstat(fd).st_size
    out, off = [], 0
    while off < size:
        try:
            start = os.lseek(fd, off, os.SEEK_DATA)
        except OSError:
            break
        end = os.lseek(fd, start, os.SEEK_HOLE)
        out.append((start, end))
        off = end
    os.close(fd)
    return size, out

size_a, ext_a = extents(sys.argv[1])
size_b, ext_b = extents(sys.argv[2])
if size_a != size_b:
    sys.exit("lengths differ: %d vs %d" % (size_a, size_b))
with open(sys.argv[1], "rb") as a, open(sys.argv[2], "rb") as b:
    for start, end in ext_a + ext_b:
        a.seek(start)
        b.seek(start)
        while start < end:
            n = min(end - start, 1 << 20)
            if a.read(n) != b.read(n):
                sys.exit("bytes differ in [%d, %d)" % (start, start + n))
            start += n
EOF
        fail "$1: $2 and $3" "$(cat stored.out)"
    fi
}

# 1. A new disk for the guest.
run "create 20G" create -f qcow2 winxp.qcow2 20G
expect_same "create 20G: file" want/winxp.qcow2 got/winxp.qcow2
clean "create 20G" got/winxp.qcow2

# 2. The same with its metadata laid out in advance.
rm -f want/winxp.qcow2 got/winxp.qcow2
run "create prealloc=metadata" \
    create -f qcow2 -o preallocation=metadata winxp.qcow2 20G
same_stored "create prealloc=metadata: file" \
    want/winxp.qcow2 got/winxp.qcow2
clean "create prealloc=metadata" got/winxp.qcow2

# 3. A guest that has been used: data here and there, a run of zeros.
rm -f want/winxp.qcow2 got/winxp.qcow2
"$QIMG" create -q -f qcow2 winxp.qcow2 64M || fail "create winxp"
"$QEMU_IO" -c 'write -P 0x11 0 1M' -c 'write -P 0x22 8M 3M' \
    -c 'write -P 0 20M 2M' -c 'write -P 0x33 40M 64k' \
    -c 'write -P 0x44 20M 4k' -c 'discard 8M 1M' \
    winxp.qcow2 >/dev/null || fail "qemu-io winxp"

# 3a. Freeze a clean state, break something, roll back.
cp winxp.qcow2 before.qcow2
"$QIMG" snapshot -c before-update winxp.qcow2 >snap.out 2>&1 ||
    fail "snapshot -c" "$(cat snap.out)"
"$QIMG" snapshot -l winxp.qcow2 >list.out 2>&1 ||
    fail "snapshot -l" "$(cat list.out)"
"$QEMU_IMG" snapshot -l winxp.qcow2 >list-want.out 2>&1
expect_same "snapshot -l: qemu-img's listing" list-want.out list.out
checks=$((checks + 1))
grep -q ' before-update ' list.out || fail "snapshot -l: no before-update" \
    "$(cat list.out)"
"$QEMU_IO" -c 'write -P 0x99 0 2M' -c 'write -z 40M 1M' winxp.qcow2 \
    >/dev/null || fail "qemu-io: the bad update"
"$QIMG" snapshot -a before-update winxp.qcow2 >apply.out 2>&1 ||
    fail "snapshot -a" "$(cat apply.out)"
same_content "snapshot -a reverts" before.qcow2 winxp.qcow2
clean "snapshot -a" winxp.qcow2

# 4. Compact it: a smaller file that reads the same.
for tool in "$QEMU_IMG" "$QIMG"; do
    rm -f compacted.qcow2
    "$tool" convert -O qcow2 winxp.qcow2 compacted.qcow2 \
        >convert.out 2>&1 || fail "$tool convert" "$(cat convert.out)"
    [ "$tool" = "$QIMG" ] && break
    cp compacted.qcow2 compacted-want.qcow2
done
clean "compact" compacted.qcow2
same_content "compact" winxp.qcow2 compacted.qcow2
# Like qemu-img's, the copy has no snapshots.
"$QIMG" snapshot -l compacted.qcow2 >list.out 2>&1
checks=$((checks + 1))
[ -s list.out ] && fail "compact: snapshots kept" "$(cat list.out)"
checks=$((checks + 1))
if [ "$(stat -c %s compacted.qcow2)" -ge "$(stat -c %s winxp.qcow2)" ] ||
    [ "$(stat -c %s compacted.qcow2)" != \
        "$(stat -c %s compacted-want.qcow2)" ]; then
    fail "compact: size $(stat -c %s compacted.qcow2), source" \
        "$(stat -c %s winxp.qcow2), qemu-img's $(stat -c %s compacted-want.qcow2)"
fi

# 5. With progress, as the guides show it.  qemu-img draws its bar into
#    a pipe too; qimg keeps a pipe clean (the bar is for terminals), so
#    qemu-img's bar is taken out of its output before comparing.
rm -f want/* got/*
cp winxp.qcow2 want/ && cp winxp.qcow2 got/
run "convert -p" convert -p -O qcow2 winxp.qcow2 winxp-copy.qcow2 \
    --strip-progress
same_content "convert -p" want/winxp-copy.qcow2 got/winxp-copy.qcow2

# 6. A read-only base with a thin overlay on top.
rm -f want/* got/*
"$QEMU_IMG" create -q -f raw base.img 32M
"$QEMU_IO" -f raw -c 'write -P 0x55 0 4M' base.img >/dev/null
cp base.img want/ && cp base.img got/
run "create overlay" create -f qcow2 -b base.img -F raw overlay.qcow2
expect_same "create overlay: file" want/overlay.qcow2 got/overlay.qcow2
clean "create overlay" got/overlay.qcow2
"$QEMU_IO" -c 'write -P 0x66 1M 64k' got/overlay.qcow2 >/dev/null
"$QIMG" info got/overlay.qcow2 >info.out 2>&1 ||
    fail "info overlay" "$(cat info.out)"
checks=$((checks + 1))
grep -q '^backing file: base.img (actual path: got/base.img)$' info.out ||
    fail "info overlay: backing file" "$(cat info.out)"
"$QEMU_IO" -c 'read -P 0x55 0 1M' -c 'read -P 0x66 1M 64k' \
    -c 'read -P 0x55 1088k 64k' -c 'read -P 0 4M 1M' got/overlay.qcow2 \
    >read.out 2>&1
checks=$((checks + 1))
grep -q 'Pattern verification failed' read.out &&
    fail "overlay reads" "$(cat read.out)"

# 6a. Merge the overlay's changes into the base.
(cd got && "$QIMG" commit overlay.qcow2 >../commit.out 2>&1) ||
    fail "commit" "$(cat commit.out)"
checks=$((checks + 1))
grep -qx 'Image committed.' commit.out || fail "commit: output" \
    "$(cat commit.out)"
"$QEMU_IO" -f raw -c 'read -P 0x55 0 1M' -c 'read -P 0x66 1M 64k' \
    got/base.img >read.out 2>&1
checks=$((checks + 1))
grep -q 'Pattern verification failed' read.out &&
    fail "commit: base reads" "$(cat read.out)"
clean "commit" got/overlay.qcow2

# 6b. From VirtualBox: convert -f vdi -O qcow2 source.vdi winxp.qcow2.
rm -f source.vdi winxp.qcow2
"$QEMU_IMG" convert -f raw -O vdi base.img source.vdi
"$QIMG" convert -f vdi -O qcow2 source.vdi winxp.qcow2 >conv.out 2>&1 ||
    fail "convert -f vdi" "$(cat conv.out)"
clean "convert -f vdi" winxp.qcow2
same_content "convert -f vdi" base.img winxp.qcow2

# 7. A command miscopied from a guide: a clear error, status 1, and no
#    file left behind.
rm -f want/* got/*
cp base.img want/windowsxp.img && cp base.img got/windowsxp.img
run "miscopied create" create -b windowsxp.img -F qcow2 -s 1G snap1.qcow2
checks=$((checks + 1))
[ -e got/snap1.qcow2 ] && fail "miscopied create: snap1.qcow2 was created"
grep -q 'status 1' got.out || fail "miscopied create: status" "$(cat got.out)"
# Without the stray -s: the backing file is raw, not qcow2 as -F says.
run "wrong backing format" create -f qcow2 -b windowsxp.img -F qcow2 \
    snap1.qcow2 1G

finish
