/*
 * qimg_check: the consistency check of qemu-img check.  The format does
 * the work (its check callback); this layer finds the callback, refuses
 * what is not implemented, and shapes the result as QEMU's ImageCheck.
 */
#include <errno.h>
#include <string.h>

#include "core/error.h"
#include "core/image.h"
#include "driver.h"
#include "qimg/qimg.h"

uint64_t check_max_table_entries = CHECK_DEFAULT_MAX_TABLE_ENTRIES;

static void discard_message(const char *line, unsigned kind, void *opaque)
{
    (void)line;
    (void)kind;
    (void)opaque;
}

bool qimg_check_supported(const struct qimg_image *img)
{
    return img && img->top->drv->check != NULL;
}

int qimg_check(struct qimg_image *img, unsigned flags, qimg_check_message_fn fn,
               void *opaque, struct qimg_check_result *out)
{
    error_clear();
    memset(out, 0, sizeof(*out));
    int ret;
    if (!qimg_check_supported(img)) {
        ret = error_set(ENOTSUP, "This image format does not support checks");
    } else if ((flags & (QIMG_CHECK_FIX_LEAKS | QIMG_CHECK_FIX_ERRORS)) &&
               !img->top->writable) {
        ret = error_set(EROFS, "check: the image must be opened read-write "
                               "to be repaired");
    } else {
        struct qimg_node *node = img->top;
        ret = node->drv->check(node, flags, fn ? fn : discard_message, opaque,
                               out);
    }
    if (ret < 0) {
        errno = -ret;
        return -1;
    }
    return 0;
}

/* Add key = n, or nothing when n is 0 and the field is optional. */
static int put_count(struct qimg_value *d, const char *key, int64_t n,
                     bool optional)
{
    if (optional && n == 0) {
        return 0;
    }
    return qimg_value_dict_set(d, key, qimg_value_new_int(n));
}

struct qimg_value *
qimg_check_result_to_value(const struct qimg_check_result *res,
                           const char *filename, const char *format)
{
    struct qimg_value *d = qimg_value_new_dict();
    if (!d) {
        return NULL;
    }
    /* QAPI ImageCheck schema order; the dictionary orders keys as QEMU. */
    int ret =
        qimg_value_dict_set(d, "filename", qimg_value_new_string(filename));
    if (ret == 0) {
        ret = qimg_value_dict_set(d, "format", qimg_value_new_string(format));
    }
    if (ret == 0) {
        ret = put_count(d, "check-errors", res->check_errors, false);
    }
    const struct {
        const char *key;
        int64_t n;
    } optional[] = {
        {"image-end-offset", res->image_end_offset},
        {"corruptions", res->corruptions},
        {"leaks", res->leaks},
        {"corruptions-fixed", res->corruptions_fixed},
        {"leaks-fixed", res->leaks_fixed},
        {"total-clusters", res->total_clusters},
        {"allocated-clusters", res->allocated_clusters},
        {"fragmented-clusters", res->fragmented_clusters},
        {"compressed-clusters", res->compressed_clusters},
    };
    for (size_t i = 0; ret == 0 && i < sizeof(optional) / sizeof(optional[0]);
         i++) {
        ret = put_count(d, optional[i].key, optional[i].n, true);
    }
    if (ret < 0) {
        qimg_value_free(d);
        return NULL;
    }
    return d;
}
