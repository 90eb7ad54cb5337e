#!/bin/bash
# Build qimg twice and run the whole test suite on each build:
#   build/       gcc, -Werror, optimised with assertions
#   build-asan/  clang, AddressSanitizer + UndefinedBehaviorSanitizer
# then build the libFuzzer targets and run each for FUZZ_SECONDS (10 here,
# so that all fifteen targets fit CI's budget; longer campaigns:
# tests/fuzz/README):
#   build-fuzz/  clang, -Dfuzzing=true, ASan + UBSan; suite 'fuzz-run' only
# The last line is the total over all runs: "N passed, N failed, N skipped".
set -uo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh || { echo "dependency installation failed" >&2; exit 1; }

setup() {
    local dir=$1; shift
    if [ ! -f "$dir/build.ninja" ]; then
        meson setup "$dir" "$@" >"$dir.setup.log" 2>&1 ||
            { cat "$dir.setup.log" >&2; return 1; }
    fi
}

# Answers of the oracle that depend only on their arguments and input
# files, shared by the two builds' suites (tests/functions.sh:
# qemu_img_cached), fresh for each run.
export QIMG_ORACLE_CACHE=$PWD/build-oracle-cache
rm -rf "$QIMG_ORACLE_CACHE" && mkdir "$QIMG_ORACLE_CACHE"

status=0
results=()
run_suite() {
    local dir=$1
    if ! ninja -C "$dir" >"$dir.build.log" 2>&1; then
        cat "$dir.build.log" >&2
        echo "build in $dir failed" >&2
        status=1
        return
    fi
    meson test -C "$dir" --print-errorlogs --num-processes 2 || status=1
    results+=("$dir/meson-logs/testlog.json")
}

CC=gcc setup build -Dbuildtype=debugoptimized && run_suite build ||
    status=1
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
CC=clang setup build-asan -Db_sanitize=address,undefined -Db_lundef=false \
    -Dc_args=-fno-sanitize-recover=all -Dbuildtype=debug &&
    run_suite build-asan || status=1

# Only the fuzz targets are built here (the suite above ran in build-asan);
# each fuzz run is one test of the suite 'fuzz-run'.
run_fuzz() {
    local dir=$1
    if ! ninja -C "$dir" fuzz-targets >"$dir.build.log" 2>&1; then
        cat "$dir.build.log" >&2
        echo "build in $dir failed" >&2
        status=1
        return
    fi
    meson test -C "$dir" --no-rebuild --suite fuzz-run --print-errorlogs ||
        status=1
    results+=("$dir/meson-logs/testlog.json")
}
export FUZZ_SECONDS=${FUZZ_SECONDS:-10}
CC=clang setup build-fuzz -Dfuzzing=true -Db_sanitize=address,undefined \
    -Db_lundef=false -Dc_args=-fno-sanitize-recover=all \
    -Dbuildtype=debugoptimized && run_fuzz build-fuzz || status=1

python3 - "${results[@]}" <<'PY'
import json, sys
passed = failed = skipped = 0
for path in sys.argv[1:]:
    try:
        lines = open(path).read().splitlines()
    except OSError:
        failed += 1
        continue
    for line in lines:
        if not line.strip():
            continue
        r = json.loads(line)["result"]
        if r in ("OK", "EXPECTEDFAIL"):
            passed += 1
        elif r == "SKIP":
            skipped += 1
        else:
            failed += 1
if not sys.argv[1:]:
    failed += 1
print(f"{passed} passed, {failed} failed, {skipped} skipped")
sys.exit(1 if failed else 0)
PY
summary=$?
[ $summary -ne 0 ] && status=1
exit $status
