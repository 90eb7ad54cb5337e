/*
 * The vmdk descriptor parser (formats/vmdk/descriptor.c): probing, keys,
 * CIDs, the parent hint and extent lines, with QEMU's readings (the
 * expectations marked "qemu-img" were checked against qemu-img 7.2
 * info on a descriptor holding that text).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "formats/vmdk/vmdk.h"
#include "qimg/qimg.h"
#include "tap.h"

static int probe(const char *text)
{
    return vmdk_desc_probe((const uint8_t *)text, strlen(text));
}

/* The extents a descriptor text yields: "TYPE:SECTORS:NAME:OFF;" each. */
static char *extents(const char *text, int *ret_out)
{
    static char out[4096];
    out[0] = '\0';
    const char *p = text;
    int ret = 0;
    while (*p) {
        struct vmdk_desc_extent e;
        ret = vmdk_desc_next_extent(&p, &e);
        if (ret < 0) {
            break;
        }
        if (ret > 0) {
            size_t n = strlen(out);
            snprintf(out + n, sizeof(out) - n, "%s:%lld:%s:%lld;", e.type,
                     (long long)e.sectors, e.name, (long long)e.offset);
        }
        ret = 0;
    }
    *ret_out = ret;
    return out;
}

static void check_extents(const char *text, const char *want, int want_ret)
{
    int ret;
    char *got = extents(text, &ret);
    char name[160];
    snprintf(name, sizeof(name), "extents of \"%.100s\"", text);
    for (char *c = name; *c; c++) {
        if (*c == '\n' || *c == '\r') {
            *c = '|'; /* one TAP line per test */
        }
    }
    tap_eq_str(got, want, name);
    tap_ok(ret == want_ret, "return value");
}

int main(void)
{
    /* Probing: comments and space-only lines may precede version=N. */
    TAP_OK(probe("# Disk DescriptorFile\nversion=1\n") == 100);
    TAP_OK(probe("version=3\r\nCID=1\n") == 100);
    TAP_OK(probe("   \n# c\nversion=2\n") == 100);
    TAP_OK(probe("\nversion=1\n") == 0); /* an empty line: no */
    TAP_OK(probe("version=4\n") == 0);
    TAP_OK(probe("version=1") == 0); /* no line end */
    TAP_OK(probe("# only a comment") == 0);
    TAP_OK(probe("  x\nversion=1\n") == 0);

    /* Quoted keys: first occurrence anywhere, two characters skipped. */
    char *v = NULL;
    TAP_OK(vmdk_desc_get_quoted("createType=\"monolithicFlat\"\n", "createType",
                                127, &v) == 0);
    tap_eq_str(v, "monolithicFlat", "createType");
    free(v);
    v = NULL;
    TAP_OK(vmdk_desc_get_quoted("createType=\"x", "createType", 127, &v) ==
           -EINVAL);
    TAP_OK(vmdk_desc_get_quoted("createType", "createType", 127, &v) ==
           -EINVAL);
    TAP_OK(vmdk_desc_get_quoted("nothing", "createType", 127, &v) == -EINVAL);
    char longv[300];
    snprintf(longv, sizeof(longv), "createType=\"%0200d\"", 0);
    TAP_OK(vmdk_desc_get_quoted(longv, "createType", 127, &v) == -EINVAL);

    /* CIDs: hex, the first "CID" found (so parentCID first wins). */
    uint32_t cid = 0;
    TAP_OK(vmdk_desc_get_cid("CID=a70191ae\nparentCID=ffffffff\n", false,
                             &cid) == 0 &&
           cid == 0xa70191ae);
    TAP_OK(vmdk_desc_get_cid("CID=a70191ae\nparentCID=ffffffff\n", true,
                             &cid) == 0 &&
           cid == 0xffffffff);
    TAP_OK(vmdk_desc_get_cid("parentCID=12\nCID=34\n", false, &cid) == 0 &&
           cid == 0x12);
    TAP_OK(vmdk_desc_get_cid("CID=zz\n", false, &cid) == -EINVAL);
    TAP_OK(vmdk_desc_get_cid("CID", false, &cid) == -EINVAL);
    TAP_OK(vmdk_desc_get_cid("CID=0x1f\n", false, &cid) == 0 && cid == 0x1f);
    TAP_OK(vmdk_desc_get_cid("CID=123456789\n", false, &cid) == 0 &&
           cid == 0x23456789);

    /* The parent hint. */
    char *hint = NULL;
    TAP_OK(vmdk_desc_get_parent_hint("parentFileNameHint=\"base.vmdk\"\n",
                                     &hint) == 1);
    tap_eq_str(hint, "base.vmdk", "hint");
    free(hint);
    TAP_OK(vmdk_desc_get_parent_hint("CID=1\n", &hint) == 0);
    TAP_OK(vmdk_desc_get_parent_hint("parentFileNameHint=\"x", &hint) ==
           -EINVAL);

    /* Extent lines. */
    check_extents("RW 10240 FLAT \"a-flat.vmdk\" 0\n",
                  "FLAT:10240:a-flat.vmdk:0;", 0);
    check_extents("RW 10240 SPARSE \"a-s001.vmdk\"\nRW 4 SPARSE \"b\"\n",
                  "SPARSE:10240:a-s001.vmdk:-1;SPARSE:4:b:-1;", 0);
    check_extents("RW 8 VMFS \"v\"\n", "VMFS:8:v:0;", 0);
    /* Not extents: other access modes, bad sizes, unknown types. */
    check_extents("RDONLY 8 FLAT \"r\" 0\nNOACCESS 8 ZERO\n", "", 0);
    check_extents("RW 0 FLAT \"r\" 0\nRW -5 FLAT \"r\" 0\n", "", 0);
    check_extents("RW 8 ZERO \"z\"\n", "", 0);
    check_extents("# Extent description\nddb.x = \"1\"\n", "", 0);
    /* A blank line before an extent reads it twice (qemu-img). */
    check_extents("\nRW 100 FLAT \"f\" 0\n", "FLAT:100:f:0;FLAT:100:f:0;", 0);
    /* Invalid lines (qemu-img's "Invalid extent line"). */
    check_extents("RW 100 FLAT \"f\"\n", "", -EINVAL);
    tap_eq_str(qimg_get_error(), "Invalid extent line: RW 100 FLAT \"f\"",
               "message");
    check_extents("RW 100 FLAT \"f\" -1\n", "", -EINVAL);
    check_extents("RW 100 SPARSE \"f\" 7\n", "", -EINVAL);
    check_extents("RW 100 VMFS \"f\" 0\n", "", -EINVAL);
    /* The offset of a sparse line may come from the next line. */
    check_extents("RW 100 SPARSE \"f\"\n5\n", "", -EINVAL);
    /* Names stop at 511 characters, quotes or line ends. */
    char longname[700];
    memset(longname, 'n', sizeof(longname));
    memcpy(longname, "RW 9 SPARSE \"", 13);
    strcpy(longname + 13 + 600, "\"\n");
    int ret;
    char *got = extents(longname, &ret);
    TAP_OK(ret == 0 && strlen(got) == strlen("SPARSE:9::-1;") + 511);
    /* Fields longer than 10 characters are cut, as %10s does. */
    check_extents("RW 9 SPARSEXXXXX \"f\"\n", "", 0);
    /* Saturated sizes. */
    check_extents("RW 99999999999999999999 FLAT \"f\" 0\n",
                  "FLAT:9223372036854775807:f:0;", 0);
    return tap_done();
}
