/*
 * qimg_amend: qemu-img amend.  This layer finds the format's amend
 * callback, checks the options against its table with the words of
 * QEMU's option parser, and leaves the changes to the format.
 */
#include <assert.h>
#include <errno.h>
#include <string.h>

#include "core/error.h"
#include "core/image.h"
#include "driver.h"
#include "qimg/qimg.h"

/*
 * Drivers QEMU 7.2's qemu-img knows without option amendment: for them
 * qemu-img says the driver cannot amend, not that it is unknown.  (luks
 * can amend in QEMU; qimg has no luks driver yet.)
 */
static const char *const qemu_no_amend[] = {
    "blkdebug", "blklogwrites", "blkverify", "bochs", "cloop", "compress",
    "copy-before-write", "copy-on-read", "dmg", "file", "ftp", "ftps",
    "gluster", "host_cdrom", "host_device", "http", "https", "iscsi",
    "iser", "nbd", "nfs", "null-aio", "null-co", "nvme", "parallels",
    "preallocate", "qcow", "qed", "quorum", "raw", "rbd", "replication",
    "snapshot-access", "ssh", "throttle", "vdi", "vhdx", "vmdk", "vpc",
    "vvfat", NULL,
};

static int no_amendment(const char *format)
{
    return error_set(ENOTSUP,
                     "Format driver '%s' does not support option amendment",
                     format);
}

const struct qimg_opt_desc *qimg_amend_options(const char *format)
{
    error_clear();
    const struct qimg_format_ops *drv = format ? format_lookup(format) : NULL;
    int ret = 0;
    if (drv && drv->amend) {
        return drv->amend_opts;
    }
    if (drv) {
        ret = no_amendment(format);
    } else {
        bool qemu_knows = false;
        for (size_t i = 0; format && qemu_no_amend[i]; i++) {
            qemu_knows = qemu_knows || strcmp(qemu_no_amend[i], format) == 0;
        }
        ret = qemu_knows ? no_amendment(format)
                         : error_set(EINVAL, "Unknown file format '%s'",
                                     format ? format : "");
    }
    errno = -ret;
    return NULL;
}

static const struct qimg_opt_desc *find_desc(const struct qimg_opt_desc *t,
                                             const char *key)
{
    for (; t && t->name; t++) {
        if (strcmp(t->name, key) == 0) {
            return t;
        }
    }
    return NULL;
}

/*
 * Would every option parse as a creation or amendment option (QEMU's
 * second try, which only decides whether to add the creation hint)?
 */
static bool parses_for_create(const struct qimg_format_ops *drv,
                              const struct qimg_opts *opts)
{
    for (size_t i = 0; i < qimg_opts_count(opts); i++) {
        const char *key = qimg_opts_key(opts, i);
        const struct qimg_opt_desc *d = find_desc(drv->amend_opts, key);
        if (!d) {
            d = find_desc(drv->create_opts, key);
        }
        if (!d || opt_check_value(d, qimg_opts_get(opts, key)) < 0) {
            return false;
        }
    }
    return true;
}

/* QEMU's option parser over the amend table: the first bad option fails. */
static int check_options(const struct qimg_format_ops *drv,
                         const struct qimg_opts *opts)
{
    for (size_t i = 0; i < qimg_opts_count(opts); i++) {
        const char *key = qimg_opts_key(opts, i);
        const struct qimg_opt_desc *d = find_desc(drv->amend_opts, key);
        if (!d) {
            if (parses_for_create(drv, opts)) {
                return error_set(EINVAL,
                                 "Invalid parameter '%s'\nThis option is "
                                 "only supported for image creation",
                                 key);
            }
            return error_set(EINVAL, "Invalid parameter '%s'", key);
        }
        int ret = opt_check_value(d, qimg_opts_get(opts, key));
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

int qimg_amend(struct qimg_image *img, const struct qimg_opts *opts,
               qimg_progress_fn progress, void *opaque, unsigned flags)
{
    error_clear();
    struct qimg_node *node = img->top;
    int ret;
    if (!node->drv->amend) {
        ret = no_amendment(node->drv->name);
    } else if (!node->writable) {
        ret = error_set(EACCES, "%s: image is opened read-only",
                        node->filename);
    } else {
        ret = check_options(node->drv, opts);
        if (ret == 0) {
            ret = node->drv->amend(node, opts, progress, opaque, flags);
            assert(ret <= 0);
        }
    }
    if (ret < 0) {
        errno = -ret;
        return -1;
    }
    return 0;
}
