/*
 * qimg_amend's contract through the public API: a qcow2 image with data,
 * zero clusters and compressed clusters keeps its guest contents and
 * checks clean through every refcount width, a downgrade and upgrade and
 * size changes; options are refused with QEMU's words before anything is
 * written.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qimg/qimg.h"
#include "tap.h"

#define SIZE (4u << 20)

static char path[256];
static uint8_t *expect;

static int amend(const char *options, unsigned open_flags)
{
    struct qimg_image *img = qimg_open(path, "qcow2", open_flags);
    if (!img) {
        return -1;
    }
    struct qimg_opts *opts = qimg_opts_new();
    int ret = opts && qimg_opts_parse(opts, options) == 0 ? 0 : -1;
    if (ret == 0) {
        ret = qimg_amend(img, opts, NULL, NULL, 0);
    }
    qimg_opts_free(opts);
    if (qimg_close(img) < 0) {
        ret = -1;
    }
    return ret;
}

/* The image checks clean and reads as expect (its first size bytes). */
static int verify(uint64_t size)
{
    struct qimg_image *img = qimg_open(path, "qcow2", QIMG_OPEN_CHECK);
    if (!img) {
        return -1;
    }
    struct qimg_check_result res;
    int ret = qimg_check(img, 0, NULL, NULL, &res);
    if (ret == 0 && res.corruptions + res.leaks + res.check_errors != 0) {
        ret = -1;
    }
    if (ret == 0 && (uint64_t)qimg_get_size(img) != size) {
        ret = -1;
    }
    uint8_t *buf = malloc(size);
    if (ret == 0 && (!buf || qimg_pread(img, buf, size, 0) < 0 ||
                     memcmp(buf, expect, size) != 0)) {
        ret = -1;
    }
    free(buf);
    qimg_close(img);
    return ret;
}

/* A format-specific field of the image's info as a number, or -1. */
static int64_t info_field(const char *key)
{
    struct qimg_image *img = qimg_open(path, "qcow2", 0);
    int64_t v = -1;
    if (!img) {
        return -1;
    }
    struct qimg_image_info *info = qimg_get_info(img);
    const struct qimg_value *data =
        info && info->format_specific
            ? qimg_value_dict_get(info->format_specific, "data")
            : NULL;
    const struct qimg_value *f = data ? qimg_value_dict_get(data, key) : NULL;
    if (f && qimg_value_type(f) == QIMG_VALUE_INT) {
        v = qimg_value_get_int(f);
    } else if (f && qimg_value_type(f) == QIMG_VALUE_UINT) {
        v = (int64_t)qimg_value_get_uint(f);
    } else if (f && qimg_value_type(f) == QIMG_VALUE_BOOL) {
        v = qimg_value_get_bool(f);
    } else if (f && qimg_value_type(f) == QIMG_VALUE_STRING) {
        v = strcmp(qimg_value_get_string(f), "1.1") == 0 ? 3 : 2;
    }
    qimg_image_info_free(info);
    qimg_close(img);
    return v;
}

static int build(void)
{
    struct qimg_opts *opts = qimg_opts_new();
    int ret = opts ? qimg_opts_parse(opts, "size=4M,cluster_size=512") : -1;
    if (ret == 0) {
        ret = qimg_create(path, "qcow2", opts);
    }
    qimg_opts_free(opts);
    if (ret < 0) {
        return -1;
    }
    expect = calloc(1, SIZE);
    struct qimg_image *img = qimg_open(path, "qcow2", QIMG_OPEN_RDWR);
    if (!expect || !img) {
        return -1;
    }
    for (size_t i = 0; i < (1u << 20); i++) {
        expect[i] = (uint8_t)(i * 7 + 1);
    }
    ret = qimg_pwrite(img, expect, 1u << 20, 0);
    if (ret == 0) {
        /* Zero clusters over data: they stay allocated or go. */
        memset(expect + 4096, 0, 8192);
        ret = qimg_pwrite_zeroes(img, 4096, 8192, 0);
    }
    if (ret == 0) {
        ret = qimg_pwrite_zeroes(img, 2u << 20, 65536, 0);
    }
    for (uint64_t off = 3u << 20; ret == 0 && off < (3u << 20) + 1024;
         off += 512) {
        memset(expect + off, 0x5a, 512);
        ret = qimg_pwrite_compressed(img, expect + off, 512, off);
    }
    if (qimg_close(img) < 0) {
        ret = -1;
    }
    return ret;
}

int main(void)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(path, sizeof(path), "%s/qimg-test-amend-XXXXXX",
             tmp ? tmp : "/tmp");
    int fd = mkstemp(path);
    if (fd < 0) {
        tap_ok(0, "mkstemp");
        return tap_done();
    }
    close(fd);
    TAP_OK(build() == 0);
    TAP_OK(verify(SIZE) == 0);

    /* Option errors: nothing changes. */
    TAP_OK(amend("foo=bar", QIMG_OPEN_RDWR) < 0);
    tap_eq_str(qimg_get_error(), "Invalid parameter 'foo'", "unknown");
    TAP_OK(amend("cluster_size=4k", QIMG_OPEN_RDWR) < 0);
    tap_eq_str(qimg_get_error(),
               "Invalid parameter 'cluster_size'\nThis option is only "
               "supported for image creation",
               "creation-only");
    TAP_OK(amend("refcount_bits=3", QIMG_OPEN_RDWR) < 0);
    tap_eq_str(qimg_get_error(),
               "Refcount width must be a power of two and may not exceed "
               "64 bits",
               "bad width");
    TAP_OK(amend("size=8M", 0) < 0);
    TAP_OK(qimg_get_errno() == EACCES);
    TAP_OK(qimg_amend_options("raw") == NULL);
    tap_eq_str(qimg_get_error(),
               "Format driver 'raw' does not support option amendment",
               "raw cannot amend");
    TAP_OK(qimg_amend_options("qcow2") != NULL);
    TAP_OK(verify(SIZE) == 0);

    /* Each width keeps every refcount; compressed clusters share. */
    static const unsigned widths[] = {2, 64, 8, 32, 4, 16};
    for (size_t i = 0; i < sizeof(widths) / sizeof(widths[0]); i++) {
        char o[32];
        snprintf(o, sizeof(o), "refcount_bits=%u", widths[i]);
        TAP_OK(amend(o, QIMG_OPEN_RDWR) == 0);
        TAP_OK(verify(SIZE) == 0);
        tap_eq_u64((uint64_t)info_field("refcount-bits"), widths[i], o);
    }
    /* Two compressed clusters share a host cluster: 1 bit is too few. */
    TAP_OK(amend("refcount_bits=1", QIMG_OPEN_RDWR) < 0);
    TAP_OK(strncmp(qimg_get_error(),
                   "Cannot decrease refcount entry width to 1 bits", 46) ==
           0);
    TAP_OK(verify(SIZE) == 0);

    TAP_OK(amend("compat=0.10", QIMG_OPEN_RDWR) == 0);
    TAP_OK(verify(SIZE) == 0);
    tap_eq_u64((uint64_t)info_field("compat"), 2, "downgraded");
    TAP_OK(amend("compat=1.1,lazy_refcounts=on", QIMG_OPEN_RDWR) == 0);
    TAP_OK(verify(SIZE) == 0);
    tap_eq_u64((uint64_t)info_field("lazy-refcounts"), 1, "lazy on");
    TAP_OK(amend("lazy_refcounts=off,size=8M", QIMG_OPEN_RDWR) == 0);
    uint8_t *grown = realloc(expect, 8u << 20);
    TAP_OK(grown != NULL);
    if (grown) {
        expect = grown;
        memset(expect + SIZE, 0, SIZE);
        TAP_OK(verify(8u << 20) == 0);
    }
    tap_eq_u64((uint64_t)info_field("lazy-refcounts"), 0, "lazy off");
    TAP_OK(amend("size=1M", QIMG_OPEN_RDWR) == 0);
    TAP_OK(verify(1u << 20) == 0);

    free(expect);
    unlink(path);
    return tap_done();
}
