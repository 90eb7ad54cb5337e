/*
 * qimg_measure's contract through the public API: plain sizes for raw
 * and qcow2 (the numbers were printed by qemu-img 7.2 measure), option
 * errors and their messages, and the JSON key order.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "qimg/qimg.h"
#include "tap.h"

static int measure(const char *fmt, const char *options, uint64_t size,
                   struct qimg_measure_result *r)
{
    struct qimg_opts *opts = NULL;
    if (options) {
        opts = qimg_opts_new();
        if (!opts || qimg_opts_parse(opts, options) < 0) {
            qimg_opts_free(opts);
            return -1;
        }
    }
    struct qimg_measure_params p = {
        .target_format = fmt,
        .target_opts = opts,
        .size = size,
    };
    int ret = qimg_measure(&p, r);
    qimg_opts_free(opts);
    return ret;
}

static void test_sizes(void)
{
    struct qimg_measure_result r;

    TAP_OK(measure(NULL, NULL, 1000, &r) == 0);
    tap_eq_u64(r.required, 1024, "raw 1000: required");
    tap_eq_u64(r.fully_allocated, 1024, "raw 1000: fully allocated");
    TAP_OK(!r.has_bitmaps);

    TAP_OK(measure("qcow2", NULL, 1ull << 30, &r) == 0);
    tap_eq_u64(r.required, 393216, "qcow2 1G: required");
    tap_eq_u64(r.fully_allocated, 1074135040, "qcow2 1G: fully allocated");

    TAP_OK(measure("qcow2", NULL, 0, &r) == 0);
    tap_eq_u64(r.required, 196608, "qcow2 0: required");

    TAP_OK(measure("qcow2", "cluster_size=512", 1ull << 30, &r) == 0);
    tap_eq_u64(r.required, 21385216, "qcow2 1G cs512: required");
    tap_eq_u64(r.fully_allocated, 1095127040, "qcow2 1G cs512: fully");

    TAP_OK(measure("qcow2", "extended_l2=on", 1ull << 30, &r) == 0);
    tap_eq_u64(r.required, 524288, "qcow2 1G extl2: required");

    TAP_OK(measure("qcow2", "preallocation=full", 1ull << 30, &r) == 0);
    tap_eq_u64(r.required, 1074135040, "qcow2 1G full: required");

    TAP_OK(measure("qcow2", "cluster_size=2M", INT64_MAX, &r) < 0);
    tap_eq_str(qimg_get_error(), "The image size is too large (try using "
               "a larger cluster size)", "too large");
    TAP_OK(measure(NULL, NULL, (uint64_t)INT64_MAX + 1, &r) < 0);
}

static void test_errors(void)
{
    struct qimg_measure_result r;

    TAP_OK(measure("vmdk", NULL, 1, &r) < 0);
    tap_eq_str(qimg_get_error(), "Block driver 'vmdk' does not support "
               "size measurement", "vmdk");
    TAP_OK(measure("nosuch", NULL, 1, &r) < 0);
    tap_eq_str(qimg_get_error(), "Unknown file format 'nosuch'", "unknown");
    TAP_OK(measure("qcow2", "bogus=1", 1, &r) < 0);
    tap_eq_str(qimg_get_error(), "Invalid parameter 'bogus'\nInvalid "
               "options for file format 'qcow2'", "bogus");
    TAP_OK(measure("qcow2", "cluster_size=3", 1, &r) < 0);
    tap_eq_str(qimg_get_error(), "Cluster size must be a power of two "
               "between 512 and 2048k", "cluster size");
    TAP_OK(measure("qcow2", "compat=0.10,refcount_bits=8", 1, &r) < 0);
    TAP_OK(qimg_get_errno() == EINVAL);
}

static void test_value(void)
{
    struct qimg_measure_result r = {
        .required = 1, .fully_allocated = 2, .has_bitmaps = true,
        .bitmaps = 3,
    };
    struct qimg_value *v = qimg_measure_result_to_value(&r);
    char *json = v ? qimg_value_to_json(v) : NULL;
    tap_eq_str(json, "{\n    \"bitmaps\": 3,\n    \"required\": 1,\n"
               "    \"fully-allocated\": 2\n}", "json order");
    free(json);
    qimg_value_free(v);
    r.has_bitmaps = false;
    v = qimg_measure_result_to_value(&r);
    TAP_OK(v && qimg_value_count(v) == 2);
    qimg_value_free(v);
}

int main(void)
{
    test_sizes();
    test_errors();
    test_value();
    return tap_done();
}
