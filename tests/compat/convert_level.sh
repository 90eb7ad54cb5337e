#!/bin/bash
# qimg extensions to convert -c: --compression-level N and --compressor
# libdeflate (qemu-img 7.2 has neither).  Every output passes qemu-img
# check, compares identical to its source, converts back to the same
# bytes with qemu-img, and (zlib) reads the same through libqcow, a
# second, independent reader.  The defaults stay qemu-img's file byte
# for byte; libdeflate's streams use matches up to 32 KiB back, past
# the 4 KiB window of QEMU's encoder, and every reader takes them.
# Misuse fails with one line and leaves no target behind.
. "$QIMG_SRCDIR/tests/functions.sh"
cd "$T"

# libqcow's Python binding (Debian python3-libqcow); /usr/bin/python3
# because it is built for Debian's interpreter.
have_libqcow=0
if /usr/bin/python3 -c 'import pyqcow' 2>/dev/null; then
    have_libqcow=1
elif [ "${CI:-}" = true ]; then
    fail "python3-libqcow is missing (scripts/deps.sh installs it)"
fi

# libqcow_sha IMAGE: sha256 of the guest bytes as libqcow reads them.
libqcow_sha() {
    /usr/bin/python3 - "$1" <<'EOF'
import hashlib, sys
import pyqcow
f = pyqcow.file()
f.open(sys.argv[1])
size, off, h = f.get_media_size(), 0, hashlib.sha256()
while off < size:
    b = f.read_buffer(min(1 << 20, size - off))
    if not b:
        sys.exit("short read at %d" % off)
    h.update(b)
    off += len(b)
print(h.hexdigest())
EOF
}

# A source with text, random data, zero runs and holes, and one whose
# only redundancy lies 12 KiB back (a 4 KiB window finds nothing in it).
python3 - <<'EOF'
import random
r = random.Random(8)
words = [b"qimg", b"cluster", b"guest", b"refcount", b"sector"]
out = bytearray()
while len(out) < 3 << 19:
    k = r.randrange(3)
    if k == 0:
        out += b" ".join(r.choice(words) for _ in range(r.randrange(900)))
    elif k == 1:
        out += r.randbytes(r.randrange(1, 5000))
    else:
        out += bytes(r.randrange(1, 70000))
with open("mixed.raw", "wb") as f:
    f.write(out[:3 << 19])
    f.truncate(2 << 20)
far = bytearray()
for i in range(16):
    b = r.randbytes(12288)
    far += b + b + b[:8192]
open("far.raw", "wb").write(far)
EOF

# good NAME IMAGE SOURCE: the image is sound and holds the source.
good() {
    local name=$1 img=$2 src=$3 out
    checks=$((checks + 1))
    if ! out=$("$QEMU_IMG" check -q "$img" 2>&1); then
        fail "$name: qemu-img check" "$out"
        return
    fi
    if ! out=$("$QEMU_IMG" compare -q -f qcow2 -F raw "$img" "$src" 2>&1)
    then
        fail "$name: qemu-img compare" "$out"
        return
    fi
    rm -f back.raw
    if ! "$QEMU_IMG" convert -f qcow2 -O raw "$img" back.raw ||
        ! cmp -s <(head -c "$(stat -c %s "$src")" back.raw) "$src"; then
        fail "$name: qemu-img convert back"
        return
    fi
    if [ $have_libqcow = 1 ] &&
        "$QEMU_IMG" info "$img" | grep -q 'compression type: zlib'; then
        local want got
        want=$(sha256sum <"$src" | cut -d' ' -f1)
        got=$(libqcow_sha "$img" 2>&1)
        [ "$got" = "$want" ] || fail "$name: libqcow reads other bytes" "$got"
    fi
}

# A build without libdeflate (meson -Dlibdeflate=disabled) says so.
have_libdeflate=1
if ! err=$("$QIMG" convert -c --compressor libdeflate -f raw -O qcow2 \
    far.raw probe.qcow2 2>&1); then
    have_libdeflate=0
    checks=$((checks + 1))
    echo "$err" | grep -q "libdeflate is not available in this build" ||
        fail "libdeflate: probe" "$err"
    [ ! -e probe.qcow2 ] || fail "libdeflate: probe left its target"
fi

# cs OPTIONS: every level and encoder at 4 KiB and 64 KiB clusters, the
# libdeflate default at 2 MiB.
while read -r cs opt; do
    [ $have_libdeflate = 0 ] && [[ $opt = *libdeflate* ]] && continue
    rm -f out.qcow2
    # shellcheck disable=SC2086
    if ! err=$("$QIMG" convert -c $opt -f raw -O qcow2 \
        -o cluster_size=$cs mixed.raw out.qcow2 2>&1); then
        fail "$cs $opt: convert" "$err"
        continue
    fi
    good "$cs $opt" out.qcow2 mixed.raw
done <<'EOF'
4k --compression-level 1
4k --compressor libdeflate
4k --compressor libdeflate --compression-level 12
4k -o compression_type=zstd --compression-level 1
64k --compression-level 9
64k --compressor libdeflate --compression-level 1
64k --compressor libdeflate --compression-level 12
64k -o compression_type=zstd --compression-level 12
2M --compressor libdeflate
EOF

# The default level is qemu-img's stream byte for byte: no option, and
# levels 6 (zlib) and 3 (zstd) said out loud.
"$QEMU_IMG" convert -c -f raw -O qcow2 mixed.raw q.qcow2
"$QEMU_IMG" convert -c -f raw -O qcow2 -o compression_type=zstd mixed.raw \
    qz.qcow2
for args in "" "--compression-level 6" "--compressor zlib"; do
    rm -f out.qcow2
    # shellcheck disable=SC2086
    "$QIMG" convert -c $args -f raw -O qcow2 mixed.raw out.qcow2 ||
        fail "default $args: convert"
    expect_same "zlib $args: qemu-img's file" q.qcow2 out.qcow2
done
rm -f out.qcow2
"$QIMG" convert -c --compression-level 3 -f raw -O qcow2 \
    -o compression_type=zstd mixed.raw out.qcow2 || fail "zstd 3: convert"
expect_same "zstd level 3: qemu-img's file" qz.qcow2 out.qcow2
# Another level really changes the stream.
rm -f out.qcow2
"$QIMG" convert -c --compression-level 1 -f raw -O qcow2 mixed.raw out.qcow2
checks=$((checks + 1))
files_equal q.qcow2 out.qcow2 && fail "zlib level 1 wrote level 6's file"

compressed() {
    "$QEMU_IMG" check --output=json "$1" |
        python3 -c 'import json, sys
print(json.load(sys.stdin).get("compressed-clusters", 0))'
}

# Far matches: zlib's 4 KiB window cannot shrink far.raw's clusters (they
# are stored plain); libdeflate reaches 12 KiB back and does, and QEMU
# and libqcow read those streams.
for cs in 16k 64k; do
    [ $have_libdeflate = 1 ] || break
    rm -f z.qcow2 l.qcow2
    "$QIMG" convert -c -f raw -O qcow2 -o cluster_size=$cs far.raw z.qcow2
    "$QIMG" convert -c --compressor libdeflate -f raw -O qcow2 \
        -o cluster_size=$cs far.raw l.qcow2
    zn=$(compressed z.qcow2)
    ln=$(compressed l.qcow2)
    checks=$((checks + 1))
    [ "$zn" = 0 ] && [ "$ln" -gt 0 ] ||
        fail "far $cs: compressed clusters: zlib $zn, libdeflate $ln"
    good "far $cs libdeflate" l.qcow2 far.raw
    # qemu-io reads every cluster and finds the pattern at 12 KiB.
    out=$("$QEMU_IO" -r -f qcow2 -c "read -v 12288 16" l.qcow2 2>&1)
    want=$(od -An -tx1 -j 0 -N 16 far.raw | tr -s ' ' | sed 's/^ //')
    checks=$((checks + 1))
    echo "$out" | grep -q "$(echo "$want" | cut -d' ' -f1-8)" ||
        fail "far $cs: qemu-io read" "$out"
done

# Misuse: one line, exit 1, no target left behind.
misuse() {
    local name=$1 msg=$2
    shift 2
    rm -f bad.qcow2
    expect_status "$name" 1 "$QIMG" convert "$@" || return
    checks=$((checks + 1))
    grep -qF "$msg" "$T/.err" || fail "$name: message" "$(cat "$T/.err")"
    [ "$(wc -l <"$T/.err")" = 1 ] || fail "$name: one line" "$(cat "$T/.err")"
    [ ! -e bad.qcow2 ] || fail "$name: the target was left behind"
}
misuse "level without -c" "need -c" --compression-level 1 -O qcow2 \
    mixed.raw bad.qcow2
misuse "zlib level 10" "compression level 10 is out of range for zlib" \
    -c --compression-level 10 -O qcow2 mixed.raw bad.qcow2
misuse "zstd level 23" "compression level 23 is out of range for zstd" \
    -c --compression-level 23 -O qcow2 -o compression_type=zstd mixed.raw \
    bad.qcow2
if [ $have_libdeflate = 1 ]; then
    misuse "libdeflate level 13" "out of range for zlib (libdeflate)" \
        -c --compressor libdeflate --compression-level 13 -O qcow2 \
        mixed.raw bad.qcow2
    misuse "libdeflate with zstd" "for zlib compression only" \
        -c --compressor libdeflate -O qcow2 -o compression_type=zstd \
        mixed.raw bad.qcow2
fi
misuse "bad level" "Invalid compression level 'x'" \
    -c --compression-level x -O qcow2 mixed.raw bad.qcow2
misuse "level 0" "Invalid compression level '0'" \
    -c --compression-level 0 -O qcow2 mixed.raw bad.qcow2
misuse "bad compressor" "Invalid compressor 'lz4'" \
    -c --compressor lz4 -O qcow2 mixed.raw bad.qcow2
misuse "qcow v1" "has no choice of compression level" \
    -c --compression-level 1 -O qcow mixed.raw bad.qcow2

finish
