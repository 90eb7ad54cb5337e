/*
 * qimg_commit: qemu-img commit.  The data of every layer above the base
 * is copied into the base, the way QEMU's active commit (a mirror job
 * into the base) copies it, then the top image is emptied.
 *
 * QEMU's job works on a dirty bitmap whose granularity is the base's
 * cluster size (at least 4 KiB; 64 KiB for formats without clusters): a
 * chunk is copied when any byte of it is allocated above the base, and
 * each dirty run is copied by the block status of the whole chain: runs
 * that read as zero become zero writes (which may unmap), the rest is
 * read through the top image and written.
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

/* The bitmap granularity QEMU uses without a cluster size. */
#define COMMIT_DEFAULT_GRANULARITY (64 * 1024)
#define COMMIT_MIN_GRANULARITY 4096
/* The longest data run one copy request takes (QEMU's mirror buffer). */
#define COMMIT_MAX_IO (16 * 1024 * 1024)
/* Bytes copied through memory at once. */
#define COMMIT_BUF_SIZE (1024 * 1024)

struct commit_job {
    struct qimg_node *top;
    struct qimg_node *base;
    /* The layer right above the base: the last one whose data moves. */
    struct qimg_node *overlay;
    uint64_t size;
    uint64_t granularity;
    uint8_t *buf;
    qimg_progress_fn progress;
    void *opaque;
    uint64_t total;
    uint64_t done;
};

static int fail_int(int ret)
{
    errno = -ret;
    return -1;
}

/*
 * QEMU 7.2's bdrv_is_allocated_above(top, overlay, include_base): 1 when
 * some layer from top down to the overlay allocates the run at off (the
 * bytes past the end of a shorter layer count as allocated there: they
 * read as its zeros), with *pnum its length; 0 with *pnum the
 * unallocated run.
 */
static int allocated_above(struct commit_job *j, uint64_t off, uint64_t len,
                           uint64_t *pnum)
{
    struct chain_status st;
    int ret = layer_block_status(j->top, off, len, &st);
    if (ret < 0) {
        return ret;
    }
    uint64_t bytes = st.pnum > 0 ? st.pnum : len;
    if (st.pnum == 0 || (st.flags & BS_ALLOCATED) || j->top == j->overlay) {
        *pnum = bytes;
        return (st.flags & BS_ALLOCATED) ? 1 : 0;
    }
    for (struct qimg_node *l = j->top->backing; l; l = l->backing) {
        ret = layer_block_status(l, off, bytes, &st);
        if (ret < 0) {
            return ret;
        }
        if (st.pnum == 0) {
            *pnum = bytes;
            return 1;
        }
        if (st.flags & BS_ALLOCATED) {
            *pnum = st.pnum;
            return 1;
        }
        bytes = st.pnum;
        if (l == j->overlay) {
            break;
        }
    }
    *pnum = bytes;
    return 0;
}

/* Is any byte of the chunk [off, end) allocated above the base? */
static int chunk_dirty(struct commit_job *j, uint64_t off, uint64_t end)
{
    while (off < end) {
        uint64_t n = 0;
        int ret = allocated_above(j, off, end - off, &n);
        if (ret != 0) {
            return ret;
        }
        off += n;
    }
    return 0;
}

static void report(struct commit_job *j)
{
    if (j->progress && j->total > 0) {
        j->progress(100.0 * (double)j->done / (double)j->total, j->opaque);
    }
}

static int copy_data(struct commit_job *j, uint64_t off, uint64_t len)
{
    while (len > 0) {
        size_t n = (size_t)min_u64(len, COMMIT_BUF_SIZE);
        int ret = j->top->drv->pread(j->top, j->buf, n, off);
        if (ret < 0) {
            return ret;
        }
        ret = j->base->drv->pwrite(j->base, j->buf, n, off);
        if (ret < 0) {
            return ret;
        }
        off += n;
        len -= n;
    }
    return 0;
}

static int write_zeroes(struct commit_job *j, uint64_t off, uint64_t len)
{
    struct qimg_node *b = j->base;
    if (b->drv->pwrite_zeroes) {
        return b->drv->pwrite_zeroes(b, off, len, QIMG_ZERO_MAY_UNMAP);
    }
    memset(j->buf, 0, COMMIT_BUF_SIZE);
    while (len > 0) {
        size_t n = (size_t)min_u64(len, COMMIT_BUF_SIZE);
        int ret = b->drv->pwrite(b, j->buf, n, off);
        if (ret < 0) {
            return ret;
        }
        off += n;
        len -= n;
    }
    return 0;
}

/* Copy the dirty run [off, end) (chunk-aligned, end clipped to size). */
static int copy_run(struct commit_job *j, uint64_t off, uint64_t end)
{
    const uint64_t g = j->granularity;
    while (off < end) {
        struct chain_status st;
        int ret = chain_status_above(j->top, off, end - off, &st, NULL);
        if (ret < 0) {
            return ret;
        }
        uint64_t io = st.pnum > 0 ? st.pnum : end - off;
        bool data = (st.flags & BS_DATA) || st.pnum == 0;
        if (data) {
            io = min_u64(io, COMMIT_MAX_IO);
        }
        io -= io % g;
        bool zero = false;
        if (io < g) {
            /* Less than a chunk: copied as it reads. */
            io = g;
        } else if (!data) {
            zero = true;
        }
        io = min_u64(io, j->size - off);
        ret = zero ? write_zeroes(j, off, io) : copy_data(j, off, io);
        if (ret < 0) {
            return ret;
        }
        off += io;
        j->done += io;
        report(j);
    }
    return 0;
}

static int commit_run(struct commit_job *j)
{
    const uint64_t g = j->granularity;
    /* The job's length is the dirty bytes: count them first. */
    for (int pass = 0; pass < 2; pass++) {
        uint64_t run = 0;
        bool in_run = false;
        for (uint64_t off = 0; off < j->size; off += g) {
            uint64_t end = min_u64(off + g, j->size);
            int d = chunk_dirty(j, off, end);
            if (d < 0) {
                return d;
            }
            if (pass == 0) {
                j->total += d ? end - off : 0;
                continue;
            }
            if (d && !in_run) {
                run = off;
                in_run = true;
            }
            if (!d && in_run) {
                int ret = copy_run(j, run, off);
                if (ret < 0) {
                    return ret;
                }
                in_run = false;
            }
        }
        if (pass == 1 && in_run) {
            int ret = copy_run(j, run, j->size);
            if (ret < 0) {
                return ret;
            }
        }
    }
    return 0;
}

/* Replace the read-only base node of the chain by a writable one. */
static int reopen_base_rw(struct qimg_node *above, unsigned flags,
                          struct qimg_node **out)
{
    struct qimg_node *old = above->backing;
    char *name = strdup(old->filename);
    if (!name) {
        return error_set(ENOMEM, "Out of memory");
    }
    const char *format = old->drv->name;
    above->backing = NULL;
    node_close(old);
    unsigned f = QIMG_OPEN_RDWR |
                 (flags & (QIMG_OPEN_CACHE_UNSAFE | QIMG_OPEN_CACHE_DIRECT));
    int ret = node_open(name, format, f, NULL, &above->backing);
    if (ret < 0) {
        ret = error_prefix(-ret, "Could not reopen '%s' read-write", name);
        above->backing = NULL;
    }
    free(name);
    *out = above->backing;
    return ret;
}

/* Active commit grows a shorter base to the top image's size. */
static int grow_base(struct qimg_node *base, uint64_t size)
{
    uint64_t old = base->size;
    if (old >= size) {
        return 0;
    }
    if (!base->drv->truncate) {
        return error_set(ENOTSUP, "Image format driver does not support "
                         "resize");
    }
    int ret = base->drv->truncate(base, size, "off");
    if (ret == 0 && base->backing && base->backing->size > old) {
        /* The new area must read as zero, not as the base's backing. */
        ret = base->drv->pwrite_zeroes
                  ? base->drv->pwrite_zeroes(base, old, base->size - old, 0)
                  : -ENOTSUP;
    }
    return ret;
}

static int do_commit(const struct qimg_commit_params *p,
                     struct qimg_image *img)
{
    struct qimg_node *top = img->top;
    struct qimg_node *base = NULL;
    int ret;
    if (p->base) {
        ret = chain_find_backing(top, p->base, &base);
        if (ret == -ENOENT) {
            return error_set(ENOENT, "Did not find '%s' in the backing chain "
                             "of '%s'", p->base, p->filename);
        }
        if (ret < 0) {
            return ret;
        }
    } else {
        base = top->backing;
        if (!base) {
            return error_set(EINVAL, "Image does not have a backing file");
        }
    }
    struct qimg_node *above = top;
    while (above->backing != base) {
        above = above->backing;
    }
    ret = reopen_base_rw(above, p->flags, &base);
    if (ret < 0) {
        return ret;
    }
    struct commit_job j = {
        .top = top,
        .base = base,
        .overlay = above,
        .size = top->size,
        .progress = p->progress,
        .opaque = p->opaque,
    };
    struct qimg_image tmp = {.top = base};
    uint64_t cs = qimg_get_cluster_size(&tmp);
    j.granularity = cs ? max_u64(cs, COMMIT_MIN_GRANULARITY)
                       : COMMIT_DEFAULT_GRANULARITY;
    j.buf = pagebuf_alloc(COMMIT_BUF_SIZE);
    if (!j.buf) {
        return error_set(ENOMEM, "Out of memory");
    }
    ret = grow_base(base, top->size);
    if (ret == 0) {
        ret = commit_run(&j);
    }
    free(j.buf);
    if (ret == 0) {
        ret = node_flush(base);
    }
    if (ret < 0) {
        return ret;
    }
    if (j.progress) {
        j.progress(100.0, j.opaque);
    }
    /* [QEMU] a format that cannot be emptied is left as it is. */
    if (!p->drop && top->drv->make_empty) {
        ret = top->drv->make_empty(top);
    }
    return ret;
}

int qimg_commit(const struct qimg_commit_params *p)
{
    error_clear();
    struct qimg_image *img =
        qimg_open_opts(p->filename, p->format, QIMG_OPEN_RDWR | p->flags,
                       p->driver_opts);
    if (!img) {
        return -1;
    }
    int ret = do_commit(p, img);
    if (ret < 0) {
        qimg_close(img);
        return fail_int(ret);
    }
    return qimg_close(img);
}
