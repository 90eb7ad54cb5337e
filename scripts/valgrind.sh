#!/bin/bash
# Run the unit and compat suites under valgrind (memcheck).
#
#   scripts/valgrind.sh                 unit suite, every compat script, then
#                                       every golden script
#   scripts/valgrind.sh unit            unit suite only
#   scripts/valgrind.sh compat [NAME..] compat scripts (all, or the named ones)
#   scripts/valgrind.sh golden [NAME..] golden scripts (tests/golden: all, or
#                                       the named ones)
#
# VALGRIND_LOCK_HOLDER=1 runs the locking script's lock_holder under
# valgrind as well (by default it stays native).
#
# Builds a plain gcc debug build (no sanitizers: valgrind and ASan do not
# mix) in build-valgrind/.  Unit tests run through `meson test --wrapper`.
# Compat and golden scripts run directly with QIMG (and the helper programs
# they use) pointed at wrappers that exec valgrind, so qemu-img, qemu-io, bash
# and python stay native.  Every valgrind run writes its own log under
# build-valgrind/valgrind-logs/; the script fails if any test fails or any
# log reports an error (invalid read/write, use of uninitialised values,
# definitely lost memory).  It is slow: expect 10-50x the native times.
set -uo pipefail
cd "$(dirname "$0")/.."
src=$(pwd)
dir=build-valgrind
logs=$src/$dir/valgrind-logs

if [ ! -f "$dir/build.ninja" ]; then
    CC=gcc meson setup "$dir" -Dbuildtype=debug >"$dir.setup.log" 2>&1 ||
        { cat "$dir.setup.log" >&2; exit 1; }
fi
ninja -C "$dir" >"$dir.build.log" 2>&1 ||
    { cat "$dir.build.log" >&2; echo "build in $dir failed" >&2; exit 1; }

rm -rf "$logs"
mkdir -p "$logs" "$dir/valgrind-bin"

# One wrapper for every program: valgrind with errors as failures.  The
# exit code 99 is not one qimg uses, and the logs are checked as well (a
# test that expects a failure exit would otherwise hide an error).
wrapper=$src/$dir/valgrind-bin/vg
cat >"$wrapper" <<EOF
#!/bin/sh
exec valgrind --tool=memcheck --error-exitcode=99 --leak-check=full \\
    --show-leak-kinds=definite --errors-for-leak-kinds=definite \\
    --track-origins=yes --quiet --log-file="$logs/%p.log" "\$@"
EOF
chmod +x "$wrapper"
wrap() {
    local name=$1 target=$2
    printf '#!/bin/sh\nexec "%s" "%s" "$@"\n' "$wrapper" "$target" \
        >"$dir/valgrind-bin/$name"
    chmod +x "$dir/valgrind-bin/$name"
    echo "$src/$dir/valgrind-bin/$name"
}

status=0
what=${1:-all}
[ $# -gt 0 ] && shift

run_unit() {
    local start=$SECONDS tests
    # The C unit programs only; 'symbols' is a shell script over nm.
    tests=$(meson test -C "$dir" --no-rebuild --list --suite unit \
        2>/dev/null |
        sed 's/^qimg:unit \/ //; s/^qimg:\(.*\)$/\1/' | grep -v '^symbols$')
    # shellcheck disable=SC2086
    # Names and --suite together select the intersection: compat has
    # tests of the same names.
    meson test -C "$dir" --no-rebuild --print-errorlogs --num-processes 2 \
        --timeout-multiplier 20 --suite unit --wrapper "$wrapper" $tests ||
        status=1
    echo "unit suite under valgrind: $((SECONDS - start)) s"
}

# The script names of one list in tests/meson.build ('compat_tests',
# 'golden_tests').
suite_names() {
    sed -n "/^$1 = \[/,/^\]/s/^ *'\(.*\)',\$/\1/p" tests/meson.build
}

# run_scripts SUITE NAME...: tests/SUITE/NAME.sh with the wrappers.
run_scripts() {
    local suite=$1 t start=$SECONDS one
    shift
    local names=("$@")
    export QIMG QIMG_SRCDIR QIMG_LIB QIMG_LOCK_HOLDER QIMG_OPEN_IMAGE \
        QIMG_READ_IMAGE QIMG_WRITE_IMAGE QIMG_OPEN_RW QIMG_WRITE_RANDOM \
        QIMG_WRITE_THREADS QIMG_SANITIZED
    QIMG=$(wrap qimg "$src/$dir/cli/qimg")
    QIMG_SRCDIR=$src
    QIMG_LIB=$src/$dir/lib/libqimg.so
    # The lock holder keeps running while others wait on its locks; it
    # stays native so that its timing is not valgrind's, unless
    # VALGRIND_LOCK_HOLDER=1 (the locking script waits up to 5 s for it to
    # be ready, which valgrind meets on a machine that is not overloaded):
    # then libqimg's lock code in it runs under memcheck too.
    if [ "${VALGRIND_LOCK_HOLDER:-0}" = 1 ]; then
        QIMG_LOCK_HOLDER=$(wrap lock_holder "$src/$dir/tests/lock_holder")
    else
        QIMG_LOCK_HOLDER=$src/$dir/tests/lock_holder
    fi
    QIMG_OPEN_IMAGE=$(wrap open_image "$src/$dir/tests/open_image")
    QIMG_READ_IMAGE=$(wrap read_image "$src/$dir/tests/read_image")
    QIMG_WRITE_IMAGE=$(wrap write_image "$src/$dir/tests/write_image")
    QIMG_OPEN_RW=$(wrap open_rw "$src/$dir/tests/open_rw")
    QIMG_WRITE_RANDOM=$(wrap write_random "$src/$dir/tests/write_random")
    QIMG_WRITE_THREADS=$(wrap write_threads "$src/$dir/tests/write_threads")
    # Valgrind needs its own address space: no ulimit -v caps.
    QIMG_SANITIZED=1
    for t in "${names[@]}"; do
        one=$SECONDS
        if bash "tests/$suite/$t.sh" >"$logs/$suite-$t.out" 2>&1; then
            echo "$suite $t: ok ($((SECONDS - one)) s)"
        else
            echo "$suite $t: FAILED ($((SECONDS - one)) s)"
            tail -20 "$logs/$suite-$t.out" | sed 's/^/    /'
            status=1
        fi
    done
    echo "$suite scripts under valgrind: $((SECONDS - start)) s"
}

run_compat() {
    if [ $# -eq 0 ]; then
        # shellcheck disable=SC2046
        set -- $(suite_names compat_tests) qcow2_random
    fi
    run_scripts compat "$@"
}

run_golden() {
    if [ $# -eq 0 ]; then
        # shellcheck disable=SC2046
        set -- $(suite_names golden_tests)
    fi
    run_scripts golden "$@"
}

case $what in
all) run_unit; run_compat; run_golden ;;
unit) run_unit ;;
compat) run_compat "$@" ;;
golden) run_golden "$@" ;;
*) echo "usage: $0 [all | unit | compat [NAME...] | golden [NAME...]]" >&2
    exit 2 ;;
esac

# Any log with content is an error report (--quiet prints nothing else).
bad=$(find "$logs" -name '*.log' -size +0 | sort)
if [ -n "$bad" ]; then
    echo "valgrind reported errors in $(echo "$bad" | wc -l) runs:"
    for f in $bad; do
        echo "== $f"
        head -40 "$f"
    done
    status=1
else
    echo "valgrind: no errors in $(find "$logs" -name '*.log' | wc -l) runs"
fi
exit $status
