#!/bin/bash
# Make seed LUKS1 containers for fuzz_luks (see make_corpus.sh):
#   make_corpus_luks.sh OUTDIR          the full seed corpus (fuzz runs)
#   make_corpus_luks.sh --tiny OUTDIR   the tiny seeds committed in corpus/luks
# All take the password "abc" (fuzz_luks.c's sec0) and need at most 1000
# PBKDF2 iterations, the target's limit: cryptsetup makes them with
# --pbkdf-force-iterations 1000 (QEMU's minimum; qemu-img calibrates and
# takes more) and 16-byte keys with the payload at sector 1032, so that
# eight slots of key material (4000 stripes each) and the payload stay
# under the runs' 1 MiB -max_len.  qemu-io writes the data.  A qemu-img
# made container (iter-time small, slot iterations above the limit, so
# only its header paths run) is added to the full corpus.
set -euo pipefail

tiny=false
if [ "${1:-}" = --tiny ]; then
    tiny=true
    shift
fi
out=${1:?usage: make_corpus_luks.sh [--tiny] OUTDIR}
QEMU_IMG=${QEMU_IMG:-qemu-img}
QEMU_IO=${QEMU_IO:-qemu-io}
CRYPTSETUP=${CRYPTSETUP:-cryptsetup}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/qimg-corpus.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"
printf abc >pw
SEC="--object secret,id=sec0,data=abc"

# luks NAME SIZE_KIB CIPHER HASH [WRITES...]: a container of SIZE_KIB of
# payload after 1032 sectors of header and key material.
luks() {
    local name=$1 size=$2 cipher=$3 hash=$4
    shift 4
    truncate -s $((516 + size))k "$name"
    "$CRYPTSETUP" luksFormat -q --type luks1 --pbkdf-force-iterations 1000 \
        -c "$cipher" -s 128 -h "$hash" --align-payload=1032 \
        --key-file pw "$name" >/dev/null
    local w=()
    for c in "$@"; do
        w+=(-c "$c")
    done
    if [ ${#w[@]} -gt 0 ]; then
        # shellcheck disable=SC2086
        "$QEMU_IO" $SEC --image-opts \
            "driver=luks,file.filename=$name,key-secret=sec0" "${w[@]}" \
            >/dev/null
    fi
}

luks essiv.luks 16 aes-cbc-essiv:sha256 sha256 'write -P 0x5a 0 4k'
if ! $tiny; then
    luks plain64.luks 8 aes-cbc-plain64 sha1 'write -P 0xa5 512 1k'
    # (cryptsetup here refuses serpent, twofish and cast5 without
    # device-mapper; xts needs 32-byte keys, too big for 1 MiB.)
    luks plain.luks 8 aes-cbc-plain sha512 'write -P 0x11 0 8k'
    luks sha224.luks 4 aes-cbc-essiv:sha256 sha224 'write -P 0x22 0 4k'
    luks ctr.luks 4 aes-ctr-plain64 ripemd160 'write -P 0x33 1k 1k'
    luks empty.luks 0 aes-cbc-essiv:sha256 sha256
    # qemu-img's own layout (2 MiB header area: cut to the 1 MiB limit).
    for t in $(seq 60); do
        if "$QEMU_IMG" create -q -f luks $SEC \
            -o key-secret=sec0,iter-time=10 qemu.luks 64k 2>err; then
            break
        fi
        grep -q 'accurate CPU usage' err || { cat err >&2; exit 1; }
    done
    truncate -s 1M qemu.luks
fi
cp ./*.luks "$out/"
echo "make_corpus_luks.sh: $(ls ./*.luks | wc -l) images in $out"
