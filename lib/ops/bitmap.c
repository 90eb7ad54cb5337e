/*
 * qimg_bitmap: one operation on a persistent dirty bitmap (qemu-img
 * bitmap), handed to the format.  Formats without persistent bitmaps
 * answer as QEMU's block layer does: adding one is not supported, any
 * other bitmap is not found.
 */
#include <assert.h>
#include <errno.h>

#include "core/error.h"
#include "core/image.h"
#include "driver.h"
#include "qimg/qimg.h"

int qimg_bitmap(struct qimg_image *img, const struct qimg_bitmap_request *req)
{
    error_clear();
    struct qimg_node *node = img->top;
    int ret = 0;
    if (!req || !req->name) {
        ret = error_set(EINVAL, "No bitmap given");
    } else if (!node->writable) {
        ret =
            error_set(EACCES, "%s: image is opened read-only", node->filename);
    } else if (req->op == QIMG_BITMAP_MERGE && !req->source_name) {
        ret = error_set(EINVAL, "No source bitmap given");
    } else if (!node->drv->bitmap) {
        ret = req->op == QIMG_BITMAP_ADD
                  ? error_set(ENOTSUP,
                              "Can't store persistent bitmaps to %s: "
                              "Operation not supported",
                              node->filename)
                  : error_set(ENOENT, "Dirty bitmap '%s' not found",
                              req->op == QIMG_BITMAP_MERGE ? req->source_name
                                                           : req->name);
    } else {
        struct qimg_node *source = NULL;
        if (req->op == QIMG_BITMAP_MERGE) {
            source = req->source ? req->source->top : node;
        }
        ret = node->drv->bitmap(node, req, source);
    }
    assert(ret <= 0);
    if (ret < 0) {
        errno = -ret;
        return -1;
    }
    return 0;
}
