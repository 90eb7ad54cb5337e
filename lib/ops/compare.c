/*
 * qimg_compare: qemu-img compare.
 *
 * Both images are walked together with the block status of their whole
 * chains (QEMU's bdrv_block_status_above, core/chain.c), one step being
 * the shorter of the two runs: ranges both report as zero are skipped,
 * ranges both allocate are read (at most 2 MiB at a time) and compared
 * by 512-byte sector, and a range only one allocates must read as zero
 * there.  The steps, and so the offsets reported and the progress, are
 * qemu-img's, because the runs are QEMU's.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/image.h"
#include "util/checked.h"
#include "util/pagebuf.h"

/* qemu-img's IO_BUF_SIZE: the largest read. */
#define COMPARE_CHUNK (2u * 1024 * 1024)
#define SECTOR 512u

struct compare {
    const struct qimg_compare_params *p;
    struct qimg_compare_outcome *out;
    struct qimg_image *img[2];
    const char *name[2];
    uint64_t size[2];
    uint8_t *buf[2];
    uint64_t total; /* the larger size: progress is relative to it */
};

static void compare_progress(struct compare *c, uint64_t step)
{
    if (c->p->progress) {
        c->p->progress(step, c->total, c->p->opaque);
    }
}

static int compare_read(struct compare *c, int i, uint64_t off, size_t n)
{
    if (qimg_pread(c->img[i], c->buf[i], n, off) < 0) {
        int err = qimg_get_errno() ? qimg_get_errno() : EIO;
        c->out->failure = QIMG_COMPARE_FAIL_READ;
        return error_set(err,
                         "Error while reading offset %" PRIu64 " of %s: %s",
                         off, c->name[i], strerror(err));
    }
    return 0;
}

static int compare_status(struct compare *c, int i, uint64_t off,
                          uint64_t bytes, struct chain_status *st)
{
    int ret = chain_status_above(c->img[i]->top, off, bytes, st, NULL);
    if (ret == 0 && st->pnum == 0) {
        ret = -EIO;
    }
    if (ret < 0) {
        c->out->failure = QIMG_COMPARE_FAIL_STATUS;
        return error_set(-ret, "Sector allocation test failed for %s",
                         c->name[i]);
    }
    return 0;
}

/*
 * The first sector of n bytes that differs, relative to the buffers'
 * start (qemu-img's compare_buffers: the prefix with the status of the
 * first sector), or n when they are equal.
 */
static uint64_t first_difference(const uint8_t *a, const uint8_t *b, uint64_t n)
{
    uint64_t i = min_u64(n, SECTOR);
    bool differs = memcmp(a, b, (size_t)i) != 0;
    if (differs) {
        return 0;
    }
    while (i < n) {
        uint64_t len = min_u64(n - i, SECTOR);
        if (memcmp(a + i, b + i, (size_t)len) != 0) {
            break;
        }
        i += len;
    }
    return i;
}

static bool all_zero(const uint8_t *p, size_t n)
{
    return n == 0 || (p[0] == 0 && memcmp(p, p + 1, n - 1) == 0);
}

/* The first sector holding a non-zero byte, or n (find_nonzero). */
static uint64_t first_nonzero(const uint8_t *buf, uint64_t n)
{
    for (uint64_t i = 0; i < n; i += SECTOR) {
        if (!all_zero(buf + i, (size_t)min_u64(SECTOR, n - i))) {
            return i;
        }
    }
    return n;
}

/*
 * The n bytes at off of image i must read as zero (qemu-img's
 * check_empty_sectors).  Returns 1 on a mismatch, 0, or -errno.
 */
static int compare_empty(struct compare *c, int i, uint64_t off, uint64_t n)
{
    int ret = compare_read(c, i, off, (size_t)n);
    if (ret < 0) {
        return ret;
    }
    uint64_t at = first_nonzero(c->buf[i], n);
    if (at < n) {
        c->out->result = QIMG_COMPARE_CONTENT_MISMATCH;
        c->out->offset = off + at;
        return 1;
    }
    return 0;
}

/* The common part.  Returns 1 on a mismatch (out filled), 0, or -errno. */
static int compare_common(struct compare *c)
{
    uint64_t end = min_u64(c->size[0], c->size[1]);
    uint64_t off = 0;
    while (off < end) {
        struct chain_status s1, s2;
        int ret = compare_status(c, 0, off, c->size[0] - off, &s1);
        if (ret < 0) {
            return ret;
        }
        ret = compare_status(c, 1, off, c->size[1] - off, &s2);
        if (ret < 0) {
            return ret;
        }
        bool alloc1 = (s1.flags & BS_ALLOCATED) != 0;
        bool alloc2 = (s2.flags & BS_ALLOCATED) != 0;
        uint64_t chunk = min_u64(s1.pnum, s2.pnum);
        if (c->p->strict &&
            (s1.flags & STATUS_QEMU_MASK) != (s2.flags & STATUS_QEMU_MASK)) {
            c->out->result = QIMG_COMPARE_STATUS_MISMATCH;
            c->out->offset = off;
            return 1;
        }
        if ((s1.flags & BS_ZERO) && (s2.flags & BS_ZERO)) {
            /* Both read as zero. */
        } else if (alloc1 == alloc2) {
            if (alloc1) {
                chunk = min_u64(chunk, COMPARE_CHUNK);
                ret = compare_read(c, 0, off, (size_t)chunk);
                if (ret == 0) {
                    ret = compare_read(c, 1, off, (size_t)chunk);
                }
                if (ret < 0) {
                    return ret;
                }
                uint64_t same = first_difference(c->buf[0], c->buf[1], chunk);
                if (same != chunk) {
                    c->out->result = QIMG_COMPARE_CONTENT_MISMATCH;
                    c->out->offset = off + same;
                    return 1;
                }
            }
        } else {
            chunk = min_u64(chunk, COMPARE_CHUNK);
            ret = compare_empty(c, alloc1 ? 0 : 1, off, chunk);
            if (ret != 0) {
                return ret;
            }
        }
        off += chunk;
        compare_progress(c, chunk);
    }
    return 0;
}

/* Past the smaller image, the larger must read as zero. */
static int compare_tail(struct compare *c)
{
    int over = c->size[0] > c->size[1] ? 0 : 1;
    uint64_t off = min_u64(c->size[0], c->size[1]);
    while (off < c->total) {
        struct chain_status st;
        int ret = compare_status(c, over, off, c->total - off, &st);
        if (ret < 0) {
            return ret;
        }
        uint64_t chunk = st.pnum;
        if ((st.flags & BS_ALLOCATED) && !(st.flags & BS_ZERO)) {
            chunk = min_u64(chunk, COMPARE_CHUNK);
            ret = compare_empty(c, over, off, chunk);
            if (ret != 0) {
                return ret;
            }
        }
        off += chunk;
        compare_progress(c, chunk);
    }
    return 0;
}

static int compare_open(struct compare *c, int i, const char *name,
                        const char *fmt)
{
    c->name[i] = name;
    c->img[i] = qimg_open_opts(name, fmt, c->p->flags & ~QIMG_OPEN_RDWR,
                               i == 0 ? c->p->driver_opts1
                                      : c->p->driver_opts2);
    if (!c->img[i]) {
        c->out->failure = QIMG_COMPARE_FAIL_OPEN;
        c->out->image = i + 1;
        int err = qimg_get_errno() ? qimg_get_errno() : EIO;
        /* Keep qimg_open's message as it is. */
        errno = err;
        return -err;
    }
    int64_t size = qimg_get_size(c->img[i]);
    if (size < 0) {
        int err = qimg_get_errno() ? qimg_get_errno() : EIO;
        c->out->failure = QIMG_COMPARE_FAIL_READ;
        return error_set(err, "Can't get size of %s: %s", name, strerror(err));
    }
    c->size[i] = (uint64_t)size;
    return 0;
}

int qimg_compare(const struct qimg_compare_params *p,
                 struct qimg_compare_outcome *out)
{
    error_clear();
    if (!p || !out || !p->filename1 || !p->filename2) {
        errno = EINVAL;
        error_set(EINVAL, "qimg_compare: missing arguments");
        return -1;
    }
    memset(out, 0, sizeof(*out));
    struct compare c = {.p = p, .out = out};
    /* As qemu-img: both images are opened before any size is looked at. */
    int ret = compare_open(&c, 0, p->filename1, p->format1);
    if (ret == 0) {
        ret = compare_open(&c, 1, p->filename2, p->format2);
    }
    if (ret == 0) {
        /* Page-aligned: the reads are most of compare's time. */
        c.buf[0] = pagebuf_alloc(COMPARE_CHUNK);
        c.buf[1] = pagebuf_alloc(COMPARE_CHUNK);
        if (!c.buf[0] || !c.buf[1]) {
            out->failure = QIMG_COMPARE_FAIL_READ;
            ret = error_set(ENOMEM, "Out of memory");
        }
    }
    if (ret == 0) {
        c.total = max_u64(c.size[0], c.size[1]);
        compare_progress(&c, 0);
        if (p->strict && c.size[0] != c.size[1]) {
            out->result = QIMG_COMPARE_SIZE_MISMATCH;
            ret = 1;
        }
    }
    if (ret == 0) {
        ret = compare_common(&c);
    }
    if (ret == 0 && c.size[0] != c.size[1]) {
        if (p->size_mismatch) {
            p->size_mismatch(p->opaque);
        }
        ret = compare_tail(&c);
    }
    free(c.buf[0]);
    free(c.buf[1]);
    /* The images are only read: closing cannot lose anything. */
    int err = ret < 0 ? qimg_get_errno() : 0;
    char *msg = ret < 0 ? strdup(qimg_get_error()) : NULL;
    qimg_close(c.img[1]);
    qimg_close(c.img[0]);
    if (ret < 0) {
        error_clear();
        error_set(err ? err : EIO, "%s", msg ? msg : "Out of memory");
        free(msg);
        errno = err ? err : EIO;
        return -1;
    }
    return 0;
}
