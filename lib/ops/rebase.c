/*
 * qimg_rebase: qemu-img rebase.  In safe mode every range the image does
 * not allocate itself is read from the old and the new backing file, in
 * QEMU's 2 MiB steps, and the 512-byte sectors where they differ are
 * written into the image (as zero writes where the old backing file has
 * ended); then the header names the new backing file.  Unsafe mode only
 * changes the header.
 *
 * When the new backing file is a layer of the old chain (rebasing onto a
 * base further down, the usual case), that layer is read as the new
 * backing file (QEMU's "prefix chain", not opened again), and a range
 * that no layer above it allocates reads the same through both, so it is
 * skipped unread: only what the layers in between allocate is read and
 * compared.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

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

/* Are a and b the same file (device and inode)? */
static bool same_file(const char *a, const char *b)
{
    struct stat sa, sb;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
           sa.st_ino == sb.st_ino;
}

/*
 * Whether a layer from `from` down to (not including) `prefix` allocates
 * [off, off + n) or could read otherwise than prefix there (a layer or
 * its backing file ends before): false with *pnum the bytes from off that
 * read through to prefix in every layer, or true with *pnum the bytes
 * to compare (the allocated run of the first layer that allocates off).
 */
static int allocated_above(struct qimg_node *from, struct qimg_node *prefix,
                           uint64_t off, uint64_t n, bool *alloc,
                           uint64_t *pnum)
{
    *alloc = true;
    *pnum = n;
    uint64_t m = n;
    for (struct qimg_node *l = from; l != prefix; l = l->backing) {
        if (!l->backing || off >= l->backing->size) {
            return 0;
        }
        m = min_u64(m, l->backing->size - off);
        struct chain_status st;
        int ret = layer_block_status(l, off, m, &st);
        if (ret < 0) {
            return ret;
        }
        if (st.pnum == 0) {
            return 0;
        }
        if (st.flags & BS_ALLOCATED) {
            *pnum = min_u64(n, st.pnum);
            return 0;
        }
        m = min_u64(m, st.pnum);
    }
    *alloc = false;
    *pnum = m;
    return 0;
}

/*
 * The safe-mode copy (see the file comment); new_b may be NULL.  in_chain:
 * new_b is a layer of the old chain.
 */
static int rebase_copy(const struct qimg_rebase_params *p,
                       struct qimg_node *top, struct qimg_node *new_b,
                       bool in_chain, uint8_t *buf_old, uint8_t *buf_new)
{
    struct qimg_node *old_b = top->backing;
    const uint64_t size = top->size;
    const uint64_t old_size = old_b ? old_b->size : 0;
    const uint64_t new_size = new_b ? new_b->size : 0;
    struct qimg_node *prefix = in_chain ? new_b : NULL;
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
        if (prefix && off < old_size && off < new_size) {
            bool alloc;
            uint64_t m;
            ret = allocated_above(old_b, prefix, off, n, &alloc, &m);
            /*
             * An allocated range is compared up to the next range that
             * reads through (the runs of the layers are cut where their
             * host offsets or flags change): a differing run is then
             * written whole, as with the whole step.
             */
            while (ret == 0 && alloc && m < n) {
                bool more;
                uint64_t k;
                ret = allocated_above(old_b, prefix, off + m, n - m, &more,
                                      &k);
                if (ret == 0 && !more) {
                    break;
                }
                m += k;
            }
            if (ret < 0) {
                return error_prefix(-ret,
                                    "error while reading image metadata");
            }
            n = m;
            if (!alloc) {
                /* The same bytes through both: nothing to write. */
                if (p->progress) {
                    p->progress(100.0 * (double)(off + n) / (double)size,
                                p->opaque);
                }
                continue;
            }
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

/*
 * Open the new backing file, resolved against the image's folder.
 * [QEMU] A file that is a layer of the old chain is not opened again:
 * that layer is the new backing file (as it was opened, whatever -F says),
 * and *in_chain is set.
 */
static int open_new_backing(const struct qimg_rebase_params *p,
                            struct qimg_node *top, struct qimg_node **out,
                            bool *in_chain)
{
    char *path = path_combine(top->filename, p->backing_file);
    if (!path) {
        return error_set(ENOMEM, "Out of memory");
    }
    *in_chain = false;
    for (struct qimg_node *l = top->backing; l; l = l->backing) {
        if (same_file(l->filename, path)) {
            free(path);
            *out = l;
            *in_chain = true;
            return 0;
        }
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
    bool in_chain = false;
    int ret = 0;
    if (p->backing_file && p->backing_file[0]) {
        ret = open_new_backing(p, top, &new_b, &in_chain);
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
        ret = rebase_copy(p, top, new_b, in_chain, buf_old, buf_new);
    }
    free(buf_old);
    free(buf_new);
    if (new_b && !in_chain) {
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
