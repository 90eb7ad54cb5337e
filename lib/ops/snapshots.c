/*
 * qimg_snapshot_create/apply/delete: qemu-img snapshot -c/-a/-d.  This
 * layer takes the clock, refuses read-only images, gives formats without
 * internal snapshots QEMU's answers, and leaves the work to the format.
 */
#include <assert.h>
#include <errno.h>
#include <string.h>
#include <sys/time.h>

#include "core/error.h"
#include "core/image.h"
#include "driver.h"
#include "qimg/qimg.h"

static int finish(int ret)
{
    assert(ret <= 0);
    if (ret < 0) {
        errno = -ret;
        return -1;
    }
    return 0;
}

static int check_writable(struct qimg_node *node)
{
    if (!node->writable) {
        return error_set(EACCES, "%s: image is opened read-only",
                         node->filename);
    }
    return 0;
}

int qimg_snapshot_create(struct qimg_image *img, const char *name)
{
    error_clear();
    struct qimg_node *node = img->top;
    if (!node->drv->snapshot_create) {
        /* [QEMU] the generic layer's answer, without a message. */
        return finish(error_set(ENOTSUP, "Operation not supported"));
    }
    int ret = check_writable(node);
    if (ret < 0) {
        return finish(ret);
    }
    if (strlen(name) > UINT16_MAX) {
        return finish(error_set(EINVAL, "Snapshot name too long"));
    }
    /*
     * [QEMU] qemu-img dates a snapshot with gettimeofday(): whole
     * microseconds, stored as nanoseconds.
     */
    struct timeval tv;
    gettimeofday(&tv, NULL);
    ret = node->drv->snapshot_create(node, name, (uint32_t)tv.tv_sec,
                                     (uint32_t)tv.tv_usec * 1000u);
    return finish(ret);
}

int qimg_snapshot_apply(struct qimg_image *img,
                        const struct qimg_snapshot_select *sel)
{
    error_clear();
    struct qimg_node *node = img->top;
    if (!node->drv->snapshot_apply) {
        /*
         * [QEMU] falls back to the file below, closing the format node
         * and opening it again: a probed raw image warns a second time.
         */
        if (node->protect_block0) {
            node_warn_probed_raw(node->filename);
        }
        return finish(
            error_set(ENOTSUP, "Block driver does not support snapshots"));
    }
    int ret = check_writable(node);
    if (ret < 0) {
        return finish(ret);
    }
    ret = node->drv->snapshot_apply(node, sel);
    if (ret == -ENOENT) {
        /* [QEMU] the generic layer words a failed load so. */
        ret = error_set_errno(ENOENT, "Failed to load snapshot");
    }
    return finish(ret);
}

int qimg_snapshot_delete(struct qimg_image *img,
                         const struct qimg_snapshot_select *sel)
{
    error_clear();
    struct qimg_node *node = img->top;
    int ret = check_writable(node);
    if (ret < 0) {
        return finish(ret);
    }
    /* [QEMU] qemu-img looks the snapshot up in the list first. */
    ret = node->drv->snapshot_delete ? node->drv->snapshot_delete(node, sel)
                                     : -ENOENT;
    if (ret == -ENOENT) {
        ret = error_set(ENOENT, "snapshot not found");
    }
    return finish(ret);
}
