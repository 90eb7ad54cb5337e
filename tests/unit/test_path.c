/*
 * Path helpers.  The path_combine cases marked "qemu-img" are the
 * full-backing-filename qemu-img info printed for an overlay opened under
 * that name with the given backing file name.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tap.h"
#include "util/path.h"

static void check_combine(const char *base, const char *file, const char *want)
{
    char name[256];
    char *got = path_combine(base, file);

    snprintf(name, sizeof(name), "combine \"%s\" + \"%s\"", base, file);
    tap_eq_str(got, want, name);
    free(got);
}

static void check_dirname(const char *path, const char *want)
{
    char name[128];
    char *got = path_dirname(path);

    snprintf(name, sizeof(name), "dirname \"%s\"", path);
    tap_eq_str(got, want, name);
    free(got);
}

int main(void)
{
    TAP_OK(path_is_absolute("/a"));
    TAP_OK(path_is_absolute("/"));
    TAP_OK(!path_is_absolute("a/b"));
    TAP_OK(!path_is_absolute(""));
    TAP_OK(!path_is_absolute("./a"));

    TAP_OK(path_is_protocol("nbd:localhost:10809"));
    TAP_OK(path_is_protocol("json:{\"file\": {\"filename\": \"/a\"}}"));
    TAP_OK(path_is_protocol("file:a.qcow2"));
    TAP_OK(path_is_protocol(":x"));
    TAP_OK(!path_is_protocol("./a:b"));
    TAP_OK(!path_is_protocol("/x/a:b"));
    TAP_OK(!path_is_protocol("a.qcow2"));
    TAP_OK(!path_is_protocol(""));

    check_dirname("a/b", "a");
    check_dirname("a/b/c.qcow2", "a/b");
    check_dirname("b", ".");
    check_dirname("", ".");
    check_dirname("/b", "/");
    check_dirname("/", "/");
    check_dirname("//a", "/");
    check_dirname("a/b/", "a");
    check_dirname("a//b", "a");
    check_dirname("a/b//", "a");

    /* qemu-img */
    check_combine("d1/d2/ov.qcow2", "base.qcow2", "d1/d2/base.qcow2");
    check_combine("d1//d2/ov.qcow2", "base.qcow2", "d1//d2/base.qcow2");
    check_combine("./d1/d2/ov.qcow2", "base.qcow2", "./d1/d2/base.qcow2");
    check_combine("d1/d2/ov2.qcow2", "../x.qcow2", "d1/d2/../x.qcow2");
    check_combine("/tmp/jt/d1/d2/../d2/ov.qcow2", "base.qcow2",
                  "/tmp/jt/d1/d2/../d2/base.qcow2");
    check_combine("ov.qcow2", "base.qcow2", "base.qcow2");
    /* Absolute backing names are kept. */
    check_combine("d1/ov.qcow2", "/abs/base.qcow2", "/abs/base.qcow2");
    check_combine("/d1/ov.qcow2", "base.qcow2", "/d1/base.qcow2");
    check_combine("/ov.qcow2", "base.qcow2", "/base.qcow2");
    check_combine("d1/", "base.qcow2", "d1/base.qcow2");
    check_combine("d1/ov.qcow2", "", "d1/");
    /* Protocol prefixes: the prefix or the last '/', whichever is later. */
    check_combine("nbd:host", "b.qcow2", "nbd:b.qcow2");
    check_combine("proto:dir/img", "b.qcow2", "proto:dir/b.qcow2");
    check_combine("dir/a:b", "c", "dir/c");
    return tap_done();
}
