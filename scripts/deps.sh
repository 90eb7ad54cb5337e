#!/bin/bash
# Install everything qimg needs to build and test on Debian 12.  Quiet when
# everything is already there; needs root (or sudo) otherwise.
set -euo pipefail

packages=(
    meson ninja-build pkg-config gcc clang llvm binutils python3
    libclang-rt-14-dev  # libFuzzer and the sanitizer runtimes
    zlib1g-dev libzstd-dev libdeflate-dev libbz2-dev
    nettle-dev  # LUKS and AES decryption (ciphers, hashes, PBKDF2)
    cryptsetup-bin  # LUKS1 images made by cryptsetup in tests (not linked)
    qemu-utils  # qemu-img and qemu-io: the test oracle, never linked
    strace time  # flush checks in tests; peak RSS in bench/
    python3-libqcow  # libqcow: a second qcow2 reader in tests (not linked)
)

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null |
            grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
if [ "$(id -u)" != 0 ]; then
    sudo="sudo"
fi
echo "Installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q >&2
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
