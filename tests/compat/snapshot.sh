#!/bin/bash
# qimg snapshot against qemu-img snapshot (7.2): side by side on copies of
# the same image (stdout, stderr, exit status, then the images as qemu-img
# sees them: info without dates, every snapshot's bytes, the current
# bytes, qemu-img check), interop both ways (each tool applies and
# deletes what the other made), contents really reverting, space reused
# after a delete, and qemu-img's messages for every error.
# qemu-img syncs at every step of a snapshot operation: on a RAM file
# system the syncs cost nothing and the script stays within CI's budget.
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then
    export TMPDIR=/dev/shm
fi
. "$QIMG_SRCDIR/tests/functions.sh"
cd "$T"

mk() { "$QEMU_IMG" create -q "$@" >/dev/null || fail "qemu-img create $*"; }
io() { "$QEMU_IO" "$@" >/dev/null || fail "qemu-io $*"; }

# Outputs with the copies' names, the tool's name and dates filtered.
norm() {
    sed -i -E -e 's/^qemu-img: /qimg: /' \
        -e "s/'qemu-img --help'/'qimg --help'/" \
        -e 's/(want|got)\.(raw|qcow2)/IMG/g' \
        -e 's/[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}/DATE/' \
        "$@"
}

# The image as qemu-img sees it, without what depends on the clock or on
# where clusters landed: info (no dates, names, disk size), check's
# verdict, the current bytes and each snapshot's bytes (in snap.N.raw).
describe() {
    local img=$1 out=$2
    {
        "$QEMU_IMG" info --output=json "$img" |
            grep -v '"actual-size"\|"filename"\|"date-sec"\|"date-nsec"'
        "$QEMU_IMG" check "$img" 2>&1 | grep -v 'Image end offset\|allocated'
        echo "check status $?"
    } >"$out" 2>&1
    norm "$out"
}

# snapshot_bytes IMG PREFIX: every snapshot's guest bytes as qemu-img
# reads them, into PREFIX.ID.raw; the ids into PREFIX.ids.
snapshot_bytes() {
    local img=$1 p=$2 id
    "$QEMU_IMG" snapshot -l "$img" | awk 'NR > 2 {print $1}' >"$p.ids"
    while read -r id; do
        "$QEMU_IMG" convert -O raw -l "snapshot.id=$id" "$img" "$p.$id.raw" ||
            fail "qemu-img convert -l snapshot.id=$id $img"
    done <"$p.ids"
}

# undated IMG OUT: the image file with the snapshot dates zeroed (they
# are the clock's): qimg lays snapshots out as qemu-img does, so the
# files of the two tools must then be identical.
undated() {
    python3 - "$1" "$2" <<'PY'
import struct, sys
data = bytearray(open(sys.argv[1], "rb").read())
nb, off = struct.unpack(">IQ", data[60:72])
for _ in range(nb):
    off = (off + 7) & ~7
    id_len, name_len = struct.unpack(">HH", data[off + 12:off + 16])
    extra, = struct.unpack(">I", data[off + 36:off + 40])
    data[off + 16:off + 24] = bytes(8)
    off += 40 + extra + id_len + name_len
open(sys.argv[2], "wb").write(data)
PY
}

# same NAME SRC ARGS...: run "qemu-img snapshot ARGS" on want.qcow2 and
# "qimg snapshot ARGS" on got.qcow2 (copies of SRC; IMG in ARGS names
# the copy) and compare everything.  SRC "-" keeps the copies as they
# are (to chain steps).
same() {
    local name=$1 src=$2
    shift 2
    if [ "$src" != - ]; then
        cp --sparse=always "$src" want.qcow2
        cp --sparse=always "$src" got.qcow2
    fi
    local a want_args=() got_args=()
    for a in "$@"; do
        want_args+=("${a//IMG/want.qcow2}")
        got_args+=("${a//IMG/got.qcow2}")
    done
    rm -f pre.qcow2
    [ -f got.qcow2 ] && cp --sparse=always got.qcow2 pre.qcow2
    "$QEMU_IMG" snapshot "${want_args[@]}" >want.out 2>want.err
    local st=$?
    echo "status $st" >>want.out
    "$QIMG" snapshot "${got_args[@]}" >got.out 2>got.err
    echo "status $?" >>got.out
    norm want.out want.err got.out got.err
    expect_same "$name: stdout" want.out got.out
    expect_same "$name: stderr" want.err got.err
    [ -f pre.qcow2 ] || return 0
    # A failure or a listing leaves the image as it was, byte for byte.
    case " $* " in
    *" -l "* | " IMG ") st=1 ;;
    esac
    if [ "$st" != 0 ]; then
        expect_same "$name: unchanged" pre.qcow2 got.qcow2
        return 0
    fi
    undated want.qcow2 want.undated
    undated got.qcow2 got.undated
    expect_same "$name: file, dates aside" want.undated got.undated
    describe want.qcow2 want.desc
    describe got.qcow2 got.desc
    expect_same "$name: image" want.desc got.desc
    checks=$((checks + 1))
    if ! "$QEMU_IMG" compare -q want.qcow2 got.qcow2 2>/dev/null; then
        fail "$name: current contents differ"
    fi
    snapshot_bytes want.qcow2 wsn
    snapshot_bytes got.qcow2 gsn
    expect_same "$name: snapshot ids" wsn.ids gsn.ids
    local id
    while read -r id; do
        expect_same "$name: snapshot $id bytes" "wsn.$id.raw" "gsn.$id.raw"
    done <wsn.ids
    rm -f wsn.* gsn.*
}

# clean NAME IMG: qemu-img check finds nothing at all (no leaks either).
clean() {
    checks=$((checks + 1))
    local out
    if ! out=$("$QEMU_IMG" check "$2" 2>&1) ||
        ! grep -q '^No errors were found on the image.$' <<<"$out"; then
        fail "$1: qemu-img check" "$out"
    fi
}

# pattern NAME IMG "OFF LEN P" ...: qemu-io reads pattern P there.
pattern() {
    local name=$1 img=$2 cmds=() r
    shift 2
    for r in "$@"; do
        set -- $r
        cmds+=(-c "read -q -P $3 $1 $2")
    done
    checks=$((checks + 1))
    local out
    out=$("$QEMU_IO" "${cmds[@]}" "$img" 2>&1)
    if [ -n "$out" ]; then
        fail "$name: contents" "$out"
    fi
}

# ---- The guide's workflow ----------------------------------------------

"$QIMG" create -q -f qcow2 winxp.qcow2 20G || fail "qimg create winxp"
io -c "write -P 1 0 1M" -c "write -P 2 10G 64k" winxp.qcow2
expect_status "guide: -c" 0 "$QIMG" snapshot -c before-update winxp.qcow2
"$QIMG" snapshot -l winxp.qcow2 >got.list 2>&1
"$QEMU_IMG" snapshot -l winxp.qcow2 >want.list 2>&1
expect_same "guide: -l" want.list got.list
checks=$((checks + 1))
grep -q '^1         before-update         0 B ' got.list ||
    fail "guide: -l row" "$(cat got.list)"
clean "guide: after -c" winxp.qcow2
io -c "write -P 3 512k 1M" -c "write -z 10G 64k" -c "write -P 4 19G 64k" \
    winxp.qcow2
pattern "guide: changed" winxp.qcow2 "0 512k 1" "512k 1M 3" "19G 64k 4"
expect_status "guide: -a" 0 "$QIMG" snapshot -a before-update winxp.qcow2
pattern "guide: reverted" winxp.qcow2 "0 1M 1" "1M 1M 0" "10G 64k 2" \
    "19G 64k 0"
clean "guide: after -a" winxp.qcow2
expect_status "guide: -d" 0 "$QIMG" snapshot -d before-update winxp.qcow2
clean "guide: after -d" winxp.qcow2
pattern "guide: after -d" winxp.qcow2 "0 1M 1" "10G 64k 2" "19G 64k 0"
"$QIMG" snapshot -l winxp.qcow2 >got.list 2>&1
checks=$((checks + 1))
[ -s got.list ] && fail "guide: -l lists nothing now" "$(cat got.list)"

# ---- Side by side: each step by both tools -------------------------------

# A plain image with data, zero and compressed clusters.
mk -f qcow2 plain.qcow2 8M
io -c "write -P 1 0 1M" -c "write -z 2M 64k" -c "write -c -P 5 3M 64k" \
    -c "write -c -P 6 3200k 64k" plain.qcow2
same "create" plain.qcow2 -c s1 IMG
same "create again" - -c s1 IMG
io -c "write -P 7 256k 1M" -c "write -c -P 8 5M 64k" want.qcow2
io -c "write -P 7 256k 1M" -c "write -c -P 8 5M 64k" got.qcow2
same "create third" - -c third IMG
same "list" - -l IMG
same "list long option" - -q --force-share -l IMG
same "apply by id" - -a 1 IMG
same "apply by name" - -a third IMG
same "apply first of a name" - -a s1 IMG
same "delete by name" - -d s1 IMG
same "delete by id fails" - -d 2 IMG
same "delete missing" - -d nope IMG
same "apply missing" - -a nope IMG
same "delete another" - -d s1 IMG
same "delete last" - -d third IMG
same "list empty" - -l IMG
same "no action" - IMG
same "empty name" plain.qcow2 -c "" IMG
same "name with spaces" plain.qcow2 -c "a b  c" IMG

# A size-0 image has no L1 table: the snapshot's L1 offset is 0 in both
# tools' files, and applying and deleting it works as in qemu-img.
mk -f qcow2 zero.qcow2 0
same "size 0: create" zero.qcow2 -c z IMG
same "size 0: create 2" - -c z2 IMG
same "size 0: apply" - -a z IMG
same "size 0: delete" - -d z2 IMG
mk -f qcow2 -o compat=0.10,cluster_size=512 zero2.qcow2 0
same "size 0, v2: create" zero2.qcow2 -c z IMG

# Extended L2 entries, 1- and 64-bit refcounts, small clusters.
mk -f qcow2 -o extended_l2=on,cluster_size=128k ext.qcow2 8M
io -c "write -P 1 0 100k" -c "write -z 1M 32k" -c "write -P 2 2M 4k" \
    ext.qcow2
same "extl2: create" ext.qcow2 -c e IMG
io -c "write -P 3 0 4k" -c "write -P 4 2M 8k" want.qcow2
io -c "write -P 3 0 4k" -c "write -P 4 2M 8k" got.qcow2
same "extl2: apply" - -a e IMG
same "extl2: delete" - -d e IMG

mk -f qcow2 -o refcount_bits=64,cluster_size=4k r64.qcow2 2M
io -c "write -P 1 0 300k" r64.qcow2
same "refcount 64: create" r64.qcow2 -c a IMG
same "refcount 64: create 2" - -c b IMG
same "refcount 64: apply" - -a a IMG
same "refcount 64: delete" - -d b IMG

mk -f qcow2 -o refcount_bits=1 r1.qcow2 2M
same "refcount 1: empty image" r1.qcow2 -c a IMG
io -c "write -P 1 0 64k" r1.qcow2
# qemu-img leaks the new L1 table here; qimg takes its steps back.
cp r1.qcow2 want.qcow2
cp r1.qcow2 got.qcow2
"$QEMU_IMG" snapshot -c b want.qcow2 >want.out 2>want.err
echo "status $?" >>want.out
"$QIMG" snapshot -c b got.qcow2 >got.out 2>got.err
echo "status $?" >>got.out
norm want.out want.err got.out got.err
expect_same "refcount 1: stdout" want.out got.out
expect_same "refcount 1: stderr" want.err got.err
clean "refcount 1: after the failure" got.qcow2
pattern "refcount 1: data" got.qcow2 "0 64k 1"

# A v2 image, and 512-byte clusters with many L2 tables.
mk -f qcow2 -o compat=0.10 v2.qcow2 4M
io -c "write -P 1 0 1M" v2.qcow2
same "v2: create" v2.qcow2 -c a IMG
io -c "write -P 2 0 64k" want.qcow2
io -c "write -P 2 0 64k" got.qcow2
same "v2: apply" - -a a IMG
# [QEMU] a v2 image with snapshots cannot be resized.
for tool in "$QEMU_IMG" "$QIMG"; do
    "$tool" resize -q got.qcow2 8M >>v2.resize 2>&1
    echo "status $?" >>v2.resize
done
sed -i 's/^qemu-img: /qimg: /' v2.resize
checks=$((checks + 1))
[ "$(sed -n 1,2p v2.resize)" = "$(sed -n 3,4p v2.resize)" ] &&
    grep -q "^qimg: Can't resize a v2 image which has snapshots" v2.resize ||
    fail "v2: resize refused" "$(cat v2.resize)"
same "v2: delete" - -d a IMG
mk -f qcow2 -o cluster_size=512 small.qcow2 1M
io -c "write -P 1 0 300k" -c "write -P 2 700k 100k" small.qcow2
same "512: create" small.qcow2 -c a IMG
same "512: create 2" - -c b IMG
same "512: delete" - -d a IMG

# Over a backing file: the snapshot holds only the overlay's clusters.
mk -f qcow2 base.qcow2 4M
io -c "write -P 9 0 4M" base.qcow2
mk -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
io -c "write -P 1 1M 64k" top.qcow2
same "backing: create" top.qcow2 -c a IMG
io -c "write -P 2 0 2M" want.qcow2
io -c "write -P 2 0 2M" got.qcow2
same "backing: apply" - -a a IMG
pattern "backing: reverted" got.qcow2 "0 1M 9" "1M 64k 1" "2M 2M 9"
same "backing: delete" - -d a IMG

# A snapshot of another size: applying it resizes the image.
mk -f qcow2 sz.qcow2 1M
io -c "write -P 1 0 64k" sz.qcow2
"$QEMU_IMG" snapshot -c small sz.qcow2
"$QEMU_IMG" resize -q sz.qcow2 3M
io -c "write -P 2 2M 64k" sz.qcow2
"$QEMU_IMG" snapshot -c big sz.qcow2
same "size: apply smaller" sz.qcow2 -a small IMG
same "size: apply bigger" - -a big IMG
pattern "size: bigger data" got.qcow2 "0 64k 1" "2M 64k 2"
"$QEMU_IMG" resize -q --shrink got.qcow2 1M
"$QEMU_IMG" resize -q --shrink want.qcow2 1M
same "size: apply after shrink" - -a big IMG

# ---- Errors --------------------------------------------------------------

same "mix -l -c" plain.qcow2 -l -c x IMG
same "mix -c -d" plain.qcow2 -c x -d y IMG
same "two files" plain.qcow2 -l IMG IMG
same "missing argument" plain.qcow2 -c
same "unknown option" plain.qcow2 -x IMG
same "no -f in 7.2" plain.qcow2 -f qcow2 -l IMG
same "-U with -c" plain.qcow2 -U -c x IMG
rm -f want.qcow2 got.qcow2
same "no file" - -l IMG
same "no file, -c" - -c x IMG
same "no image" - -l

# Formats without internal snapshots, and a qcow2 with a data file.
mk -f raw r.raw 1M
for args in "-l" "-c x" "-a x" "-d x"; do
    cp r.raw want.raw
    cp r.raw got.raw
    "$QEMU_IMG" snapshot $args want.raw >want.out 2>want.err
    echo "status $?" >>want.out
    "$QIMG" snapshot $args got.raw >got.out 2>got.err
    echo "status $?" >>got.out
    norm want.out want.err got.out got.err
    expect_same "raw $args: stdout" want.out got.out
    expect_same "raw $args: stderr" want.err got.err
    expect_same "raw $args: unchanged" want.raw got.raw
done
mk -f qcow2 -o data_file=df.raw df.qcow2 1M
same "data file: -c" df.qcow2 -c x IMG
same "data file: -l" df.qcow2 -l IMG

# ---- Interop: each tool applies and deletes the other's snapshots --------

for maker in qemu qimg; do
    if [ $maker = qemu ]; then
        M=$QEMU_IMG U=$QIMG
    else
        M=$QIMG U=$QEMU_IMG
    fi
    mk -f qcow2 x.qcow2 4M
    io -c "write -P 1 0 1M" -c "write -c -P 2 2M 64k" x.qcow2
    "$M" snapshot -c one x.qcow2 || fail "$maker: -c one"
    cp x.qcow2 one.saved
    io -c "write -P 3 512k 1M" x.qcow2
    "$M" snapshot -c two x.qcow2 || fail "$maker: -c two"
    cp x.qcow2 two.saved
    io -c "write -P 4 0 4M" x.qcow2
    clean "$maker: made" x.qcow2
    # The other tool lists them alike, applies and deletes them.
    "$QEMU_IMG" snapshot -l x.qcow2 >want.list
    "$QIMG" snapshot -l x.qcow2 >got.list
    expect_same "$maker: listed alike" want.list got.list
    "$U" snapshot -a one x.qcow2 || fail "$maker: other -a one"
    clean "$maker: applied one" x.qcow2
    expect_status "$maker: reverted to one" 0 \
        "$QEMU_IMG" compare -q one.saved x.qcow2
    "$U" snapshot -a two x.qcow2 || fail "$maker: other -a two"
    expect_status "$maker: reverted to two" 0 \
        "$QEMU_IMG" compare -q two.saved x.qcow2
    "$U" snapshot -d one x.qcow2 || fail "$maker: other -d one"
    clean "$maker: deleted one" x.qcow2
    "$U" snapshot -d two x.qcow2 || fail "$maker: other -d two"
    clean "$maker: deleted two" x.qcow2
    expect_status "$maker: still two" 0 \
        "$QEMU_IMG" compare -q two.saved x.qcow2
done

# ---- Space is reused after a delete ---------------------------------------

mk -f qcow2 sp.qcow2 8M
io -c "write -P 1 0 2M" sp.qcow2
"$QIMG" snapshot -c s sp.qcow2 || fail "space: -c"
io -c "write -P 2 0 2M" sp.qcow2
"$QIMG" snapshot -d s sp.qcow2 || fail "space: -d"
clean "space: after -d" sp.qcow2
len=$(stat -c %s sp.qcow2)
# The 2 MiB the snapshot alone held are free: new data goes there.
io -c "write -P 3 4M 2M" sp.qcow2
"$QIMG" snapshot -c t sp.qcow2 || fail "space: -c t"
"$QIMG" snapshot -d t sp.qcow2 || fail "space: -d t"
checks=$((checks + 1))
if [ "$(stat -c %s sp.qcow2)" -gt "$len" ]; then
    fail "space: file grew from $len to $(stat -c %s sp.qcow2)"
fi
clean "space: end" sp.qcow2
pattern "space: data" sp.qcow2 "0 2M 2" "4M 2M 3"

# The date is now, in whole microseconds as qemu-img takes it.
mk -f qcow2 d.qcow2 1M
before=$(date +%s)
"$QIMG" snapshot -c d d.qcow2
after=$(date +%s)
"$QEMU_IMG" info --output=json d.qcow2 | python3 -c '
import json, sys
s = json.load(sys.stdin)["snapshots"][0]
lo, hi = int(sys.argv[1]), int(sys.argv[2])
ok = (lo <= s["date-sec"] <= hi and s["date-nsec"] % 1000 == 0 and
      s["vm-clock-sec"] == 0 and s["vm-clock-nsec"] == 0 and
      s["icount"] == 0 and s["vm-state-size"] == 0 and s["id"] == "1")
sys.exit(0 if ok else 1)
' "$before" "$after"
expect_status "date and fields" 0 test $? = 0

finish
