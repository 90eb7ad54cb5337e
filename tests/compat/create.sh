#!/bin/bash
# qimg create against qemu-img create: the Formatting line, the messages
# (with the program name swapped), exit statuses and the files made.
. "$QIMG_SRCDIR/tests/functions.sh"
cd "$T"

# run_both NAME ARGS...: run "create ARGS" with both tools in separate
# folders; stdout, stderr (qemu-img -> qimg) and status must agree, and
# the files left behind must have the same names and sizes.
run_both() {
    local name=$1
    shift
    rm -rf q m && mkdir q m
    (cd q && "$QEMU_IMG" create "$@" >../want.out 2>../want.err
     echo "status $?" >>../want.out)
    (cd m && "$QIMG" create "$@" >../got.out 2>../got.err
     echo "status $?" >>../got.out)
    sed -i 's/^qemu-img: /qimg: /; s/qemu-img --help/qimg --help/' want.err
    expect_same "$name: stdout" want.out got.out
    expect_same "$name: stderr" want.err got.err
    (cd q && find . -type f -printf '%p %s\n' | sort) >want.files
    (cd m && find . -type f -printf '%p %s\n' | sort) >got.files
    expect_same "$name: files" want.files got.files
}

run_both "raw 1M" -f raw a.img 1M
run_both "raw default format" a.img 64k
run_both "raw fraction" -f raw a.img 1.5G
run_both "raw bytes" -f raw a.img 1000
run_both "raw hex" -f raw a.img 0x10
run_both "raw zero" -f raw a.img 0
run_both "raw quiet" -q -f raw a.img 1M
run_both "raw -o size" -f raw -o size=5M a.img
run_both "raw repeated -o" -f raw -o size=5M -o size=7M a.img
run_both "raw prealloc full" -f raw -o preallocation=full a.img 1M
run_both "raw prealloc falloc" -f raw -o preallocation=falloc a.img 1M
run_both "raw prealloc off" -f raw -o preallocation=off a.img 1M
run_both "raw nocow" -f raw -o nocow=on a.img 1M
run_both "raw help" -f raw -o help
run_both "raw help with file" -f raw -o help a.img
run_both "raw help ?" -f raw -o '?' a.img
run_both "raw help mixed" -f raw -o help,size=5M a.img
run_both "help=on is not help" -f raw -o help=on a.img
run_both "empty option list" -f raw -o '' a.img 1M
run_both "leading comma" -f raw -o ,size=1M a.img
run_both "trailing comma" -f raw -o size=1M, a.img
run_both "escaped trailing comma" -f raw -o size=1M,, a.img
run_both "no size" -f raw a.img
run_both "bad size" -f raw a.img abc
run_both "huge size" -f raw a.img 9E
run_both "fraction no suffix" -f raw a.img 1.5
run_both "size twice" -f raw a.img 1M -o size=2M
run_both "bad -o size" -f raw -o size=abc a.img
run_both "unknown option" -f raw -o foo=bar a.img 1M
run_both "unknown format" -f foo a.img 1M
run_both "no file" -f raw
run_both "extra argument" -f raw a.img 1M 2M
run_both "unknown flag" -f raw -Z a.img 1M
run_both "missing -f arg" -f
run_both "backing on raw" -f raw -b x.img a.img 1M
run_both "backing fmt on raw" -f raw -F raw a.img 1M
run_both "bad nocow" -f raw -o nocow=maybe a.img 1M

# Creating over an existing file truncates it, as qemu-img does.
"$QIMG" create -q -f raw over.img 2M
"$QIMG" create -q -f raw over.img 1M
[ "$(stat -c %s over.img)" = 1048576 ] && pass ||
    fail "create over an existing file"

finish
