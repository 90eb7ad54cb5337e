#!/bin/bash
# Line coverage a fuzz target's corpus reaches in the code it is for:
#   coverage.sh COV_BUILD WORK TARGET...
# COV_BUILD is a clang build with source-based coverage (README.md,
# "Coverage"); WORK is a campaign's directory (campaign.sh), whose
# TARGET/corpus is replayed with the committed corpus and regressions
# through replay_TARGET.  Prints llvm-cov's per-file table for the files
# the target exists to reach, and writes the annotated sources to
# WORK/TARGET/coverage/ (index.txt per file: a line count of 0 is code no
# input reached, where a seed or a dictionary entry is wanted).
set -uo pipefail

build=${1:?usage: coverage.sh COV_BUILD WORK TARGET...}
work=${2:?usage: coverage.sh COV_BUILD WORK TARGET...}
shift 2
src=$(cd "$(dirname "$0")/../.." && pwd)
# The tree the coverage build compiled, and the name the coverage mapping
# gives it (the compiler saw it relative to the build directory, so
# llvm-cov must be told the two are one to pick files by name).
build=$(cd "$build" && pwd)
built_from=$(python3 -c 'import json, sys
print(json.load(open(sys.argv[1]))["directories"]["source"])' \
    "$build/meson-info/meson-info.json") || exit 2
as_compiled=$build/$(realpath --relative-to="$build" "$built_from")
[ $# -gt 0 ] || { echo "coverage.sh: no target named" >&2; exit 2; }

# The sources each target is meant to exercise (a format's folder or
# file, and what the driver loop calls for every input).
files_of() {
    case $1 in
    qcow2)         echo lib/formats/qcow2/*.c ;;
    qcow2_write)   echo lib/formats/qcow2/*.c ;;
    vmdk)          echo lib/formats/vmdk/{vmdk,sparse,descriptor}.c ;;
    vmdk_sesparse) echo lib/formats/vmdk/sesparse.c ;;
    vhdx)          echo lib/formats/vhdx/*.c ;;
    parallels)     echo lib/formats/parallels/*.c ;;
    codecs)        echo lib/formats/qcow2/{header,snapshot,bitmap}.c \
                        lib/formats/vhdx/header.c lib/formats/vmdk/descriptor.c \
                        lib/crypto/luks*.c ;;
    luks)          echo lib/formats/luks.c lib/crypto/luks*.c ;;
    *)             echo "lib/formats/$1.c" ;;
    esac
}

status=0
for t in "$@"; do
    replay=$build/tests/fuzz/replay_$t
    if [ ! -x "$replay" ]; then
        echo "coverage.sh: no $replay" >&2
        status=1
        continue
    fi
    out=$work/$t/coverage
    rm -rf "$out"
    mkdir -p "$out"
    dirs=()
    for d in "$work/$t/corpus" "$work/$t/seeds" "$src/tests/fuzz/corpus/$t" \
             "$src/tests/fuzz/regress/$t"; do
        [ -d "$d" ] && dirs+=("$d")
    done
    # One profile per process: %p keeps them apart, merged below.
    LLVM_PROFILE_FILE="$out/raw-%p.profraw" QIMG_SRCDIR=$src \
        "$replay" "${dirs[@]}" >"$out/replay.log" 2>&1 || {
        echo "coverage.sh: $t: replay failed (see $out/replay.log)" >&2
        status=1
        continue
    }
    llvm-profdata merge -sparse "$out"/raw-*.profraw -o "$out/merged.profdata" &&
        rm -f "$out"/raw-*.profraw || { status=1; continue; }
    files=$(cd "$built_from" && for f in $(files_of "$t"); do
        echo "$built_from/$f"; done)
    # shellcheck disable=SC2086
    llvm-cov report "$replay" -instr-profile="$out/merged.profdata" \
        -path-equivalence="$as_compiled,$built_from" $files |
        sed "s|$built_from/||" >"$out/report.txt"
    # shellcheck disable=SC2086
    llvm-cov show "$replay" -instr-profile="$out/merged.profdata" \
        -path-equivalence="$as_compiled,$built_from" \
        -format=text -output-dir="$out/show" $files || status=1
    n=$(grep -c '^ok ' "$out/replay.log")
    echo "== $t: $n inputs"
    cat "$out/report.txt"
done
exit $status
