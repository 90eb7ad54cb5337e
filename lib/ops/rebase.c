/*
 * qimg_rebase: qemu-img rebase.  In safe mode every range the image does
 * not allocate itself is read from the old and the new backing file, in
 * QEMU's 2 MiB steps, and the 512-byte sectors where they differ are
 * written into the image (as zero writes where the old backing file has
 * ended); then the header names the new backing file.  Unsafe mode only
 * changes the header.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/image.h"
#include "driver.h"
#include "qimg/qimg.h"
#include "util/checked.h"
#include "util/pagebuf.h"
#include "util/path.h"

/* qemu-img's IO_BUF_SIZE: the step of the comparison. */
#define REBASE_BUF_SIZE (2 * 1024 * 1024)
#define REBASE_SECTOR 512

static int fail_int(int ret)
{
    errno = -ret;
    return -1;
}

/*
 * QEMU's compare_buffers: whether the first sector differs, and in *pnum
 * how many bytes from the start share that state, sector by sector.
 */
static bool compare_sectors(const uint8_t *a, const uint8_t *b, size_t len,
                            size_t *pnum)
{
    size_t i = len < REBASE_SECTOR ? len : REBASE_SECTOR;
    bool differ = memcmp(a, b, i) != 0;
    while (i < len) {
        size_t n = len - i < REBASE_SECTOR ? len - i : REBASE_SECTOR;
        if ((memcmp(a + i, b + i, n) != 0) != differ) {
            break;
        }
        i += n;
    }
    *pnum = i;
    return differ;
}

static int read_backing(struct qimg_node *b, uint8_t *buf, size_t n,
                        uint64_t off, const char *which)
{
    int ret = b->drv->pread(b, buf, n, off);
    if (ret < 0) {
        return error_set_errno(-ret, "error while reading from %s backing "
                               "file", which);
    }
    return 0;
}

/* The safe-mode copy (see the file comment); new_b may be NULL. */
static int rebase_copy(const struct qimg_rebase_params *p,
                       struct qimg_node *top, struct qimg_node *new_b,
                       uint8_t *buf_old, uint8_t *buf_new)
{
    struct qimg_node *old_b = top->backing;
    const uint64_t size = top->size;
    const uint64_t old_size = old_b ? old_b->size : 0;
    const uint64_t new_size = new_b ? new_b->size : 0;
    uint64_t n;
    for (uint64_t off = 0; off < size; off += n) {
        n = min_u64(REBASE_BUF_SIZE, size - off);
        struct chain_status st;
        int ret = layer_block_status(top, off, n, &st);
        if (ret < 0) {
            return error_prefix(-ret, "error while reading image metadata");
        }
        n = st.pnum > 0 ? st.pnum : n;
        if (st.flags & BS_ALLOCATED) {
            continue;
        }
        bool old_zero = false;
        if (off >= old_size) {
            memset(buf_old, 0, (size_t)n);
            old_zero = true;
        } else {
            n = min_u64(n, old_size - off);
            ret = read_backing(old_b, buf_old, (size_t)n, off, "old");
            if (ret < 0) {
                return ret;
            }
        }
        if (off >= new_size) {
            memset(buf_new, 0, (size_t)n);
        } else {
            n = min_u64(n, new_size - off);
            ret = read_backing(new_b, buf_new, (size_t)n, off, "new");
            if (ret < 0) {
                return ret;
            }
        }
        size_t done = 0;
        while (done < n) {
            size_t run;
            if (compare_sectors(buf_old + done, buf_new + done,
                                (size_t)n - done, &run)) {
                ret = old_zero
                          ? (top->drv->pwrite_zeroes
                                 ? top->drv->pwrite_zeroes(
                                       top, off + done, run,
                                       ZERO_UNDER_NEW_BACKING)
                                 : top->drv->pwrite(top, buf_old + done, run,
                                                    off + done))
                          : top->drv->pwrite(top, buf_old + done, run,
                                             off + done);
                if (ret < 0) {
                    return error_prefix(-ret, "Error while writing to COW "
                                        "image");
                }
            }
            done += run;
        }
        if (p->progress) {
            p->progress(100.0 * (double)(off + n) / (double)size, p->opaque);
        }
    }
    return 0;
}

/* Open the new backing file, resolved against the image's folder. */
static int open_new_backing(const struct qimg_rebase_params *p,
                            struct qimg_node *top, struct qimg_node **out)
{
    char *path = path_combine(top->filename, p->backing_file);
    if (!path) {
        return error_set(ENOMEM, "Out of memory");
    }
    unsigned f = p->backing_flags & (QIMG_OPEN_FORCE_SHARE |
                                     QIMG_OPEN_CACHE_DIRECT);
    int ret = node_open(path, p->backing_format, f, NULL, out);
    if (ret < 0) {
        ret = error_prefix(-ret, "Could not open new backing file '%s'",
                           p->backing_file);
    }
    free(path);
    return ret;
}

/*
 * QEMU's bdrv_change_backing_file with its checks, and qemu-img's words
 * for the failures.
 */
static int change_backing(const struct qimg_rebase_params *p,
                          struct qimg_node *top)
{
    const char *name = p->backing_file;
    const char *fmt = p->backing_format;
    int ret;
    if (name && name[0]) {
        if (!fmt) {
            ret = -EINVAL;
        } else if (!top->drv->change_backing) {
            ret = -ENOTSUP;
        } else {
            ret = top->drv->change_backing(top, name, fmt);
        }
    } else {
        ret = top->drv->change_backing ? top->drv->change_backing(top, NULL,
                                                                  NULL)
                                       : -ENOTSUP;
    }
    if (ret == 0) {
        return 0;
    }
    const char *shown = name ? name : "(null)";
    if (ret == -ENOSPC) {
        return error_set(ENOSPC, "Could not change the backing file to "
                         "'%s': No space left in the file header", shown);
    }
    if (ret == -EINVAL && name && !fmt) {
        return error_set(EINVAL, "Could not change the backing file to "
                         "'%s': backing format must be specified", shown);
    }
    return error_set(-ret, "Could not change the backing file to '%s': %s",
                     shown, strerror(-ret));
}

static int do_rebase(const struct qimg_rebase_params *p,
                     struct qimg_node *top)
{
    if (p->backing_format && !format_lookup(p->backing_format)) {
        return error_set(EINVAL, "Invalid format name: '%s'",
                         p->backing_format);
    }
    if (p->unsafe) {
        return change_backing(p, top);
    }
    struct qimg_node *new_b = NULL;
    int ret = 0;
    if (p->backing_file && p->backing_file[0]) {
        ret = open_new_backing(p, top, &new_b);
        if (ret < 0) {
            return ret;
        }
    }
    uint8_t *buf_old = pagebuf_alloc(REBASE_BUF_SIZE);
    uint8_t *buf_new = pagebuf_alloc(REBASE_BUF_SIZE);
    if (!buf_old || !buf_new) {
        ret = error_set(ENOMEM, "Out of memory");
    } else {
        if (p->progress) {
            p->progress(0.0, p->opaque);
        }
        ret = rebase_copy(p, top, new_b, buf_old, buf_new);
    }
    free(buf_old);
    free(buf_new);
    if (new_b) {
        node_close(new_b);
    }
    if (ret == 0) {
        ret = change_backing(p, top);
    }
    if (p->progress) {
        p->progress(100.0, p->opaque);
    }
    return ret;
}

int qimg_rebase(const struct qimg_rebase_params *p)
{
    error_clear();
    unsigned flags = QIMG_OPEN_RDWR |
                     (p->flags & (QIMG_OPEN_CACHE_UNSAFE |
                                  QIMG_OPEN_CACHE_DIRECT));
    /* Unsafe mode may fix a name whose file is gone: no backing opened. */
    if (p->unsafe) {
        flags |= QIMG_OPEN_NO_BACKING;
    }
    struct qimg_image *img = qimg_open_opts(p->filename, p->format, flags,
                                            p->driver_opts);
    if (!img) {
        return -1;
    }
    int ret = do_rebase(p, img->top);
    if (ret < 0) {
        qimg_close(img);
        return fail_int(ret);
    }
    return qimg_close(img);
}
