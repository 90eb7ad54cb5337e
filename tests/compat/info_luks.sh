#!/bin/bash
# qimg info against qemu-img info on encrypted qcow2 images: LUKS with
# several cipher settings, legacy AES, and damaged LUKS headers (which
# qemu-img refuses to open with a message naming the problem).
. "$QIMG_SRCDIR/tests/functions.sh"
cd "$T"

mk() { qemu_create_luks "$1" 16M "$2"; }

corpus=()
luks=encrypt.format=luks,encrypt.iter-time=10
mk luks.qcow2 "$luks" && corpus+=(luks.qcow2)
mk aes128.qcow2 "$luks,encrypt.cipher-alg=aes-128" && corpus+=(aes128.qcow2)
mk cbc.qcow2 "$luks,encrypt.cipher-mode=cbc" && corpus+=(cbc.qcow2)
mk essiv.qcow2 "$luks,encrypt.cipher-alg=aes-128,encrypt.cipher-mode=cbc,\
encrypt.ivgen-alg=essiv,encrypt.ivgen-hash-alg=sha256,encrypt.hash-alg=sha1" &&
    corpus+=(essiv.qcow2)
mk sha512.qcow2 "$luks,encrypt.hash-alg=sha512" && corpus+=(sha512.qcow2)
mk twofish.qcow2 "$luks,encrypt.cipher-alg=twofish-256,encrypt.ivgen-alg=plain" &&
    corpus+=(twofish.qcow2)
mk serpent.qcow2 "$luks,encrypt.cipher-alg=serpent-128,encrypt.cipher-mode=ctr" &&
    corpus+=(serpent.qcow2)
"$QEMU_IMG" create -q -f qcow2 --object secret,id=sec0,data=abc \
    -o encrypt.format=aes,encrypt.key-secret=sec0 aes.qcow2 16M &&
    corpus+=(aes.qcow2)

# Damaged copies of luks.qcow2: patch bytes of the LUKS header, whose
# offset the crypto header extension (0x0537BE77) gives.
luks_off() {
    local hex
    hex=$(od -An -tx1 -v "$1" -N 65536 | tr -d ' \n')
    local i=${hex%%0537be77*}
    # The extension's data (offset, length) follows type and length.
    echo $((16#${hex:$((${#i} + 16)):16}))
}
if [ -f luks.qcow2 ]; then
    base=$(luks_off luks.qcow2)
    n=0
    damage() {
        n=$((n + 1))
        cp luks.qcow2 bad$n.qcow2
        local spec
        for spec in "$@"; do
            printf "${spec#*:}" |
                dd of=bad$n.qcow2 bs=1 seek=$((base + ${spec%%:*})) \
                    conv=notrunc status=none
        done
        corpus+=(bad$n.qcow2)
    }
    damage '0:X'                                # magic
    damage '6:\x00\x02'                         # version
    damage '8:foo\x00'                          # cipher name
    damage '40:xxx-plain64\x00'                 # cipher mode
    damage '40:xts\x00'                         # no ivgen
    damage '40:cbc-essiv\x00'                   # key size vs mode
    damage '40:xts-essiv\x00'                   # essiv without hash
    damage '40:xts-plain:bogus\x00'             # ivgen hash
    damage '72:sha999\x00'                      # hash
    damage '8:aesaesaesaesaesaesaesaesaesaesaes' # no NUL
    damage '104:\x00\x00\x00\x07'               # payload in header
    damage '108:\x00\x00\x00\x00'               # key bytes
    damage '164:\x00\x00\x00\x00'               # master key iters
    damage '208:\x00\x00\x00\x00'               # slot state
    damage '212:\x00\x00\x00\x00'               # slot iters
    damage '252:\x00\x00\x00\x00'               # slot stripes
    damage '296:\x00\x00\x00\x08'               # slots overlap
    damage '168:\x01\x02"\\'                     # odd uuid bytes
    damage '260:\x00\x00\x00\x00'               # inactive slot iters
fi

for img in "${corpus[@]}"; do
    for out in human json; do
        "$QEMU_IMG" info -U --output=$out "$img" >want.txt 2>&1
        "$QIMG" info -U --output=$out "$img" >got.txt 2>&1
        # Error messages differ only in the program name.
        sed -i 's/^qemu-img: /qimg: /' want.txt
        expect_same "info --output=$out $img" want.txt got.txt
    done
done

finish
