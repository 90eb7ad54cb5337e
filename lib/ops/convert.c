/*
 * qimg_convert: copy the guest contents of one or more images into a raw
 * target, keeping it sparse.
 *
 * The sources are walked with block status one extent at a time; data is
 * read in bounded chunks and scanned for zero runs, so neither the disk
 * nor its map is ever held in memory at once.  Only the public API is used
 * for image access.
 *
 * The walk runs in the calling thread and queues data chunks; a few worker
 * threads, each with its own handles on the sources (image handles keep
 * caches and are not shared between threads), read, scan and write them
 * to the target (raw writes keep no state).  Each chunk is cut into pieces
 * by itself, so the result does not depend on the order they finish in.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qimg/qimg.h"
#include "core/error.h"
#include "util/zero.h"

#define SECTOR 512u
/* The largest data chunk read at once (qemu-img's IO_BUF_SIZE). */
#define CHUNK (2u * 1024 * 1024)
/* The largest range asked about in one block status call. */
#define STATUS_WINDOW (1ull << 30)
#define MAX_SPARSE (16u * 1024 * 1024)
/* Worker threads: enough to overlap reads, scans and writes. */
#define WORKERS_MIN 2
#define WORKERS_MAX 4
/* Alignment of the copy buffers (a page). */
#define BUF_ALIGN 4096
/* Chunks queued ahead of the workers. */
#define QUEUE_LEN 8

struct source {
    struct qimg_image *img;
    uint64_t size;   /* the image's own size */
    uint64_t padded; /* what it occupies in the target */
};

/* One data chunk to copy: source bytes [soff, soff + len) to doff. */
struct job {
    size_t src;
    uint64_t soff;
    uint64_t doff;
    size_t len;
    bool known_zero; /* zeroes that -S 0 wants written as data */
};

struct convert;

struct worker {
    struct convert *c;
    pthread_t thread;
    bool started;
    struct source *src; /* this worker's own handles, one per source */
    uint8_t *buf;
};

struct convert {
    const struct qimg_convert_params *p;
    struct source *src; /* the walk's handles */
    struct qimg_image *dst;
    uint64_t dst_size;
    uint64_t total;
    uint64_t done;
    /* Zero ranges need no writing: fresh sparse target or asserted. */
    bool zero_init;

    /* The queue between the walk and the workers, under lock. */
    pthread_mutex_t lock;
    pthread_mutex_t write_lock;
    pthread_cond_t queued; /* a job was queued, or closing/failed */
    pthread_cond_t room;   /* a job was taken, or failed */
    struct job queue[QUEUE_LEN];
    size_t head, count;
    bool closing; /* no more jobs will come */
    bool failed;  /* a worker failed: stop everything */
    int err;      /* the first failure's errno and message */
    char *msg;
    struct worker workers[WORKERS_MAX];
    size_t nb_workers;
};

static uint64_t round_up(uint64_t v, uint64_t a)
{
    return (v + a - 1) / a * a;
}

static bool sector_is_zero(const uint8_t *p, size_t len)
{
    return buf_is_zero(p, len);
}

/*
 * The leading run of sectors that are all zero or all data, for the
 * sectors [first, first + n) of the buffer (sector numbers are absolute,
 * for alignment).  A run that stops short of the buffer end is cut at an
 * alignment boundary so the pieces written later never share an aligned
 * block: a data run is extended to the boundary, a zero run is shortened
 * to it (or turned into data if nothing of it would remain).
 */
static size_t leading_run(const uint8_t *buf, size_t len, uint64_t first,
                          size_t n, uint64_t align, bool *is_data)
{
    size_t piece = len < SECTOR ? len : SECTOR;
    bool zero = sector_is_zero(buf, piece);
    size_t run = 1;
    while (run < n) {
        size_t off = run * SECTOR;
        size_t l = len - off < SECTOR ? len - off : SECTOR;
        if (sector_is_zero(buf + off, l) != zero) {
            break;
        }
        run++;
    }
    if (run < n) {
        uint64_t tail = (first + run) % align;
        if (tail != 0) {
            if (zero && run <= tail) {
                zero = false;
            }
            if (zero) {
                run -= tail;
            } else {
                run += align - tail;
                run = run < n ? run : n;
            }
        }
    }
    *is_data = !zero;
    return run;
}

/*
 * How many sectors from the start of the buffer form one piece to write
 * (data) or skip (zero).  Zero runs shorter than min_sectors inside data
 * are written as data; a zero run at the start or end of the buffer is
 * always a zero piece.
 */
static size_t next_piece(const uint8_t *buf, size_t len, uint64_t first,
                         uint64_t min_sectors, uint64_t align, bool *is_data)
{
    size_t n = (len + SECTOR - 1) / SECTOR;
    uint64_t min = min_sectors < n ? min_sectors : n;
    size_t used = leading_run(buf, len, first, n, align, is_data);
    if (!*is_data) {
        return used;
    }
    size_t checked = used;
    while (checked < n) {
        bool data;
        size_t run = leading_run(buf + checked * SECTOR,
                                 len - checked * SECTOR, first + checked,
                                 n - checked, align, &data);
        checked += run;
        if (data) {
            used = checked;
        } else if (run >= min) {
            break;
        }
    }
    return used;
}

static int write_zero_range(struct convert *c, uint64_t off, uint64_t len)
{
    if (c->zero_init || len == 0) {
        return 0;
    }
    return qimg_pwrite_zeroes(c->dst, off, len, QIMG_ZERO_MAY_UNMAP);
}

static int write_data(struct convert *c, const uint8_t *buf, uint64_t off,
                      size_t len)
{
    /* A target that is a few padding bytes short keeps its size. */
    if (off >= c->dst_size) {
        return 0;
    }
    if (len > c->dst_size - off) {
        len = (size_t)(c->dst_size - off);
    }
    /*
     * Buffered writes to one file serialise on its inode lock anyway; a
     * waiting worker sleeps here instead of spinning in the kernel, and
     * its CPU goes to the reads and decompression of the others.
     */
    pthread_mutex_lock(&c->write_lock);
    int ret = qimg_pwrite(c->dst, buf, len, off);
    pthread_mutex_unlock(&c->write_lock);
    return ret;
}

static int write_zeroes_clamped(struct convert *c, uint64_t off,
                                uint64_t len)
{
    if (off >= c->dst_size) {
        return 0;
    }
    if (len > c->dst_size - off) {
        len = c->dst_size - off;
    }
    return write_zero_range(c, off, len);
}

/* Read [off, off + len) of a source; bytes past its end read as zero. */
static int read_source(struct source *s, uint8_t *buf, uint64_t off,
                       size_t len)
{
    size_t avail = 0;
    if (off < s->size) {
        avail = s->size - off < len ? (size_t)(s->size - off) : len;
    }
    if (avail > 0 && qimg_pread(s->img, buf, avail, off) < 0) {
        return -1;
    }
    memset(buf + avail, 0, len - avail);
    return 0;
}

/* Copy one chunk of data read at source offset soff to target offset. */
static int copy_chunk(struct convert *c, struct source *s, uint8_t *buf,
                      uint64_t soff, uint64_t doff, size_t len,
                      bool known_zero)
{
    const struct qimg_convert_params *p = c->p;
    if (known_zero) {
        memset(buf, 0, len);
    } else if (read_source(s, buf, soff, len) < 0) {
        return -1;
    }
    if (p->sparse_size == 0) {
        return write_data(c, buf, doff, len);
    }
    uint64_t min_sectors = p->sparse_size / SECTOR;
    /* Split points aligned to the largest power of two within -S. */
    uint64_t align = 1;
    while (align * 2 <= min_sectors) {
        align *= 2;
    }
    size_t pos = 0;
    while (pos < len) {
        bool data;
        size_t n = next_piece(buf + pos, len - pos,
                              (doff + pos) / SECTOR, min_sectors, align,
                              &data);
        size_t bytes = n * SECTOR;
        if (bytes > len - pos) {
            bytes = len - pos;
        }
        int ret = data ? write_data(c, buf + pos, doff + pos, bytes)
                       : write_zeroes_clamped(c, doff + pos, bytes);
        if (ret < 0) {
            return -1;
        }
        pos += bytes;
    }
    return 0;
}

/*
 * Record the first failure of the copy (from the calling thread's
 * thread-local message) and make every thread stop.
 */
static void copy_fail(struct convert *c)
{
    pthread_mutex_lock(&c->lock);
    if (!c->failed) {
        c->failed = true;
        c->err = qimg_get_errno() ? qimg_get_errno() : EIO;
        c->msg = strdup(qimg_get_error());
    }
    pthread_cond_broadcast(&c->queued);
    pthread_cond_broadcast(&c->room);
    pthread_mutex_unlock(&c->lock);
}

static void *worker_main(void *opaque)
{
    struct worker *w = opaque;
    struct convert *c = w->c;
    for (;;) {
        pthread_mutex_lock(&c->lock);
        while (c->count == 0 && !c->closing && !c->failed) {
            pthread_cond_wait(&c->queued, &c->lock);
        }
        if (c->failed || c->count == 0) {
            pthread_mutex_unlock(&c->lock);
            return NULL;
        }
        struct job job = c->queue[c->head];
        c->head = (c->head + 1) % QUEUE_LEN;
        c->count--;
        pthread_cond_signal(&c->room);
        pthread_mutex_unlock(&c->lock);
        if (copy_chunk(c, &w->src[job.src], w->buf, job.soff, job.doff,
                       job.len, job.known_zero) < 0) {
            copy_fail(c);
            return NULL;
        }
    }
}

/* Queue a chunk for the workers; -1 once one of them has failed. */
static int queue_chunk(struct convert *c, const struct job *job)
{
    pthread_mutex_lock(&c->lock);
    while (c->count == QUEUE_LEN && !c->failed) {
        pthread_cond_wait(&c->room, &c->lock);
    }
    bool failed = c->failed;
    if (!failed) {
        c->queue[(c->head + c->count) % QUEUE_LEN] = *job;
        c->count++;
        pthread_cond_signal(&c->queued);
    }
    pthread_mutex_unlock(&c->lock);
    return failed ? -1 : 0;
}

static int open_source(const struct qimg_convert_params *p, size_t i,
                       struct qimg_image **out);

/* Start the workers, each with its own source handles. */
static int start_workers(struct convert *c)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    size_t n = cpus < WORKERS_MIN ? WORKERS_MIN
               : cpus > WORKERS_MAX ? WORKERS_MAX : (size_t)cpus;
    const struct qimg_convert_params *p = c->p;
    for (size_t k = 0; k < n; k++) {
        struct worker *w = &c->workers[k];
        w->c = c;
        w->src = calloc(p->nb_sources, sizeof(*w->src));
        /*
         * Page-aligned: the kernel copies to and from a buffer that
         * starts mid-page (as malloc's large blocks do) more slowly.
         */
        void *buf = NULL;
        if (posix_memalign(&buf, BUF_ALIGN, CHUNK) == 0) {
            w->buf = buf;
        }
        c->nb_workers = k + 1;
        if (!w->src || !w->buf) {
            return error_set(ENOMEM, "Out of memory");
        }
        /* The images were opened once already: no second warning. */
        bool muted = warn_mute(true);
        for (size_t i = 0; i < p->nb_sources; i++) {
            w->src[i] = c->src[i];
            if (open_source(p, i, &w->src[i].img) < 0) {
                w->src[i].img = NULL;
                warn_mute(muted);
                return -1;
            }
        }
        warn_mute(muted);
        int ret = pthread_create(&w->thread, NULL, worker_main, w);
        if (ret != 0) {
            return error_set(ret, "Could not start a copy thread");
        }
        w->started = true;
    }
    return 0;
}

/*
 * Let the workers finish the queue (or stop after a failure), wait for
 * them and free their handles.  Returns -1 with the first failure's
 * message if one failed.
 */
static int stop_workers(struct convert *c)
{
    pthread_mutex_lock(&c->lock);
    c->closing = true;
    pthread_cond_broadcast(&c->queued);
    pthread_mutex_unlock(&c->lock);
    for (size_t k = 0; k < c->nb_workers; k++) {
        struct worker *w = &c->workers[k];
        if (w->started) {
            pthread_join(w->thread, NULL);
        }
        for (size_t i = 0; w->src && i < c->p->nb_sources; i++) {
            if (w->src[i].img) {
                qimg_close(w->src[i].img);
            }
        }
        free(w->src);
        free(w->buf);
    }
    c->nb_workers = 0;
    if (c->failed) {
        error_set(c->err, "%s", c->msg ? c->msg : "Out of memory");
        return -1;
    }
    return 0;
}

static void report_progress(struct convert *c, uint64_t len)
{
    c->done += len;
    if (c->p->progress && c->total > 0) {
        c->p->progress(100.0 * (double)c->done / (double)c->total,
                       c->p->progress_opaque);
    }
}

/* Walk source number idx, whose bytes land at target offset base. */
static int copy_source(struct convert *c, size_t idx, uint64_t base)
{
    struct source *s = &c->src[idx];
    uint64_t off = 0;
    while (off < s->padded) {
        struct qimg_extent ext;
        bool zero;
        uint64_t len;
        if (off < s->size) {
            uint64_t want = s->size - off;
            if (want > STATUS_WINDOW) {
                want = STATUS_WINDOW;
            }
            if (qimg_block_status(s->img, off, want, &ext) < 0) {
                return -1;
            }
            zero = (ext.flags & QIMG_EXTENT_ZERO) != 0;
            len = ext.length;
            if (len == 0 || len > want) {
                return error_set(EIO, "%s: block status made no progress",
                                 qimg_get_filename(s->img));
            }
            /*
             * Work in whole sectors as qemu-img does: a run ending inside
             * a sector gives that sector to the data next to it, and the
             * padding after the end goes with the last run.
             */
            uint64_t end = off + len;
            if (end % SECTOR != 0) {
                if (zero && end / SECTOR * SECTOR > off) {
                    end = end / SECTOR * SECTOR;
                } else {
                    zero = false;
                    end = round_up(end, SECTOR);
                }
            }
            if (end >= s->size) {
                end = s->padded;
            }
            len = end - off;
        } else {
            zero = true;
            len = s->padded - off;
        }
        if (zero && c->p->sparse_size != 0) {
            if (write_zeroes_clamped(c, base + off, len) < 0) {
                /* Stop the workers too, with this message. */
                copy_fail(c);
                return -1;
            }
            report_progress(c, len);
            off += len;
            continue;
        }
        /* Data (or zeroes that -S 0 wants written): bounded chunks. */
        uint64_t end = off + len;
        while (off < end) {
            size_t n = end - off < CHUNK ? (size_t)(end - off) : CHUNK;
            struct job job = {
                .src = idx,
                .soff = off,
                .doff = base + off,
                .len = n,
                .known_zero = zero,
            };
            if (queue_chunk(c, &job) < 0) {
                return -1;
            }
            report_progress(c, n);
            off += n;
        }
    }
    return 0;
}

static int open_source(const struct qimg_convert_params *p, size_t i,
                       struct qimg_image **out)
{
    /* [QEMU] only the first source is read at the snapshot. */
    *out = p->source_snapshot && i == 0
               ? qimg_open_snapshot(p->sources[i], p->source_format,
                                    p->source_flags, p->source_snapshot)
               : qimg_open(p->sources[i], p->source_format, p->source_flags);
    return *out ? 0 : -1;
}

static int open_sources(struct convert *c)
{
    const struct qimg_convert_params *p = c->p;
    for (size_t i = 0; i < p->nb_sources; i++) {
        struct source *s = &c->src[i];
        if (open_source(p, i, &s->img) < 0) {
            return -1;
        }
        int64_t size = qimg_get_size(s->img);
        if (size < 0) {
            return -1;
        }
        s->size = (uint64_t)size;
        s->padded = round_up(s->size, SECTOR);
        if (c->total > INT64_MAX - s->padded) {
            return error_set(EFBIG, "The sources are too large together");
        }
        c->total += s->padded;
    }
    return 0;
}

/* Copy the caller's creation options and set the size. */
static int create_target(struct convert *c)
{
    const struct qimg_convert_params *p = c->p;
    struct qimg_opts *opts = qimg_opts_new();
    if (!opts) {
        return error_set(ENOMEM, "Out of memory");
    }
    int ret = 0;
    size_t n = p->target_opts ? qimg_opts_count(p->target_opts) : 0;
    for (size_t i = 0; i < n && ret == 0; i++) {
        const char *key = qimg_opts_key(p->target_opts, i);
        ret = qimg_opts_set(opts, key, qimg_opts_get(p->target_opts, key));
    }
    char size[32];
    snprintf(size, sizeof(size), "%llu", (unsigned long long)c->total);
    if (ret == 0) {
        ret = qimg_opts_set(opts, "size", size);
    }
    if (ret == 0) {
        ret = qimg_create_prepare(p->target, "raw", opts, 0);
        if (ret < 0) {
            /*
             * qemu-img reports option problems of convert without the
             * "FILENAME: " prefix that creation adds.
             */
            size_t plen = strlen(p->target);
            const char *msg = qimg_get_error();
            if (strncmp(msg, p->target, plen) == 0 &&
                strncmp(msg + plen, ": ", 2) == 0) {
                char *copy = strdup(msg + plen + 2);
                int err = qimg_get_errno();
                if (copy) {
                    error_set(err ? err : EINVAL, "%s", copy);
                    free(copy);
                }
            }
        }
    }
    if (ret == 0) {
        ret = qimg_create(p->target, "raw", opts);
    }
    qimg_opts_free(opts);
    return ret < 0 ? -1 : 0;
}

static int check_params(const struct qimg_convert_params *p)
{
    if (!p || !p->sources || p->nb_sources == 0 || !p->target) {
        return error_set(EINVAL, "Must specify image file name");
    }
    if (p->sparse_size % SECTOR != 0 || p->sparse_size > MAX_SPARSE) {
        return error_set(EINVAL, "Invalid buffer size for sparse output "
                         "specified. Valid sizes are multiples of %u up to "
                         "%u. Select 0 to disable sparse detection (fully "
                         "allocates output).", SECTOR, MAX_SPARSE);
    }
    if (p->target_is_zero && !p->no_create) {
        return error_set(EINVAL, "--target-is-zero requires use of -n flag");
    }
    if (p->no_create && p->target_opts && qimg_opts_count(p->target_opts)) {
        return error_set(EINVAL,
                         "-o has no effect when skipping image creation");
    }
    return 0;
}

static int check_target_format(const struct qimg_convert_params *p)
{
    const char *fmt = p->target_format ? p->target_format : "raw";
    if (!qimg_format_known(fmt)) {
        return error_set(EINVAL, "Unknown file format '%s'", fmt);
    }
    if (strcmp(fmt, "raw") != 0) {
        return error_set(ENOTSUP, "Converting to format '%s' is not "
                         "supported yet (only raw)", fmt);
    }
    return 0;
}

int qimg_convert(const struct qimg_convert_params *params)
{
    struct convert c = {.p = params};
    bool created = false;
    int ret = -1;

    if (check_params(params) < 0) {
        return -1;
    }
    pthread_mutex_init(&c.lock, NULL);
    pthread_mutex_init(&c.write_lock, NULL);
    pthread_cond_init(&c.queued, NULL);
    pthread_cond_init(&c.room, NULL);
    c.src = calloc(params->nb_sources, sizeof(*c.src));
    if (!c.src) {
        error_set(ENOMEM, "Out of memory");
        goto out;
    }
    if (open_sources(&c) < 0 || check_target_format(params) < 0) {
        goto out;
    }
    if (!params->no_create) {
        struct stat st;
        /*
         * Only a regular file (or nothing) is removed after a failure;
         * a device or other special target is left alone.
         */
        bool removable = lstat(params->target, &st) < 0 ||
                         S_ISREG(st.st_mode);
        if (create_target(&c) < 0) {
            goto out;
        }
        created = removable;
    }
    c.dst = qimg_open(params->target, "raw",
                      QIMG_OPEN_RDWR | params->target_flags);
    if (!c.dst) {
        goto out;
    }
    int64_t dst_size = qimg_get_size(c.dst);
    if (dst_size < 0) {
        goto out;
    }
    c.dst_size = (uint64_t)dst_size;
    if (round_up(c.dst_size, SECTOR) < c.total) {
        error_set(ENOSPC, "output file is smaller than input file");
        goto out;
    }
    /*
     * A freshly created raw file reads as zero, so zero ranges need no
     * writes, except with -S 0 where the target is fully allocated.
     */
    c.zero_init = params->target_is_zero ||
                  (!params->no_create && params->sparse_size != 0);

    if (start_workers(&c) < 0) {
        stop_workers(&c);
        goto out;
    }
    uint64_t base = 0;
    int walk = 0;
    for (size_t i = 0; i < params->nb_sources && walk == 0; i++) {
        walk = copy_source(&c, i, base);
        base += c.src[i].padded;
    }
    /* A walk failure was recorded for the workers; theirs wins as well. */
    int copied = stop_workers(&c);
    if (walk < 0 || copied < 0) {
        goto out;
    }
    ret = 0;
out:
    if (c.dst) {
        if (qimg_close(c.dst) < 0 && ret == 0) {
            ret = -1;
        }
    }
    if (c.src) {
        for (size_t i = 0; i < params->nb_sources; i++) {
            if (c.src[i].img) {
                qimg_close(c.src[i].img);
            }
        }
    }
    if (ret < 0 && created) {
        /* Keep the error of the failure, not of the clean-up. */
        int err = errno;
        unlink(params->target);
        errno = err;
    }
    free(c.src);
    free(c.msg);
    pthread_cond_destroy(&c.room);
    pthread_cond_destroy(&c.queued);
    pthread_mutex_destroy(&c.write_lock);
    pthread_mutex_destroy(&c.lock);
    return ret;
}
