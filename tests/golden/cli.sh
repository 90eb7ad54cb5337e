#!/bin/bash
# The command line's own behaviour: global options, dispatch and usage
# errors.  Messages match qemu-img's with the program name swapped.
. "$QIMG_SRCDIR/tests/functions.sh"
cd "$T"

# same_as_qemu NAME ARGS...: stdout+stderr and status as qemu-img's.
same_as_qemu() {
    local name=$1
    shift
    "$QEMU_IMG" "$@" >want.out 2>want.err
    echo "status $?" >>want.out
    "$QIMG" "$@" >got.out 2>got.err
    echo "status $?" >>got.out
    sed -i 's/^qemu-img: /qimg: /; s/qemu-img --help/qimg --help/' want.err
    expect_same "$name: stdout" want.out got.out
    expect_same "$name: stderr" want.err got.err
}

"$QEMU_IMG" create -q -f raw r.img 1M

same_as_qemu "no arguments"
same_as_qemu "unknown command" foo
same_as_qemu "missing -T argument" -T
same_as_qemu "unknown global option" --bogus
same_as_qemu "info without file" info
same_as_qemu "info two files" info r.img r.img
same_as_qemu "info unknown option" info -z r.img
same_as_qemu "info unknown long option" info --foo r.img
same_as_qemu "info missing -f argument" info -f
same_as_qemu "info missing --output argument" info --output
same_as_qemu "info bad --output" info --output=xml r.img
same_as_qemu "info missing file" info nonexist
same_as_qemu "info -T accepted" -T foo info r.img
same_as_qemu "info object" info --object secret,id=s0,data=x r.img
same_as_qemu "info bad object type" info --object foo r.img
same_as_qemu "info object without id" info --object secret,data=x r.img
same_as_qemu "info unknown -f format" info -f nosuch r.img

# Every qemu-img subcommand name is recognised (none is "not found").
for c in amend bench bitmap check commit compare convert create dd info \
         map measure snapshot rebase resize; do
    "$QIMG" "$c" >/dev/null 2>err.txt
    if grep -q "Command not found" err.txt; then
        fail "command $c is not recognised"
    else
        pass
    fi
done

# -h and --help exit 0 and list the commands and formats; -V names qimg.
expect_status "-h" 0 "$QIMG" -h
grep -q '^  convert ' "$T/.out" && grep -q 'Supported formats:.*qcow2' \
    "$T/.out" && pass || fail "-h lists commands and formats"
expect_status "--help" 0 "$QIMG" --help
expect_status "info -h" 0 "$QIMG" info -h
expect_status "-V" 0 "$QIMG" -V
grep -q '^qimg version [0-9]' "$T/.out" && pass || fail "-V output"
expect_status "--version" 0 "$QIMG" --version

# Output to a closed stdout is an error, not silence.
if [ -w /dev/full ]; then
    "$QIMG" info r.img >/dev/full 2>/dev/null
    [ $? -ne 0 ] && pass || fail "info to /dev/full must fail"
fi

finish
