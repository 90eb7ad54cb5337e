/*
 * qimg_convert: copy the guest contents of one or more images into a new
 * or existing target of any writable format, keeping it sparse, as
 * qemu-img convert does (-o, -c, -S, -B/-F, -n, -m, -W, --target-is-zero).
 *
 * The sources are walked with block status one extent at a time; data is
 * read in bounded chunks and scanned for zero runs, so neither the disk
 * nor its map is ever held in memory at once.  Only the public API is used
 * for image access.
 *
 * The walk runs in the calling thread and queues jobs (data chunks to
 * copy, zero ranges to write); a few worker threads, each with its own
 * handles on the sources (image handles keep caches and are not shared
 * between threads), read and scan them and write to the target.  Target
 * handles are not thread-safe either (a qcow2 target allocates clusters),
 * so every write to it is made under write_lock.  By default the writes
 * are also made in queue order (qemu-img's in-order writes, which keep a
 * qcow2 target's clusters in guest order); out_of_order (-W) lets each
 * job write as soon as it is read.  Each job is cut into pieces by
 * itself, so the contents never depend on the order jobs finish in.
 *
 * With a backing file for a new target, a target cluster of data that
 * reads the same in the new backing file is left unallocated, so the
 * target stores only what differs; zero ranges are written as zeroes
 * (qemu-img's rule, except past the new backing file's end, where it
 * reads as zero anyway), and ranges the source's top layer leaves to its
 * own backing file are left unallocated (qemu-img's rule too: the caller
 * asserts that the new backing file holds the same there).
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qimg/qimg.h"
#include "core/error.h"
#include "core/image.h"
#include "driver.h"
#include "util/grow.h"
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
/* Jobs queued ahead of the workers. */
#define QUEUE_LEN 8
/* -m: qemu-img's limit on parallel requests. */
#define PARALLEL_MAX 16

struct source {
    struct qimg_image *img;
    uint64_t size;   /* the image's own size */
    uint64_t padded; /* what it occupies in the target */
    uint64_t base;   /* where it starts in the target */
    uint64_t align;  /* status runs are cut at multiples of this */
};

/* How the walk classified a range (qemu-img's BLK_DATA/ZERO/BACKING). */
enum range_status {
    RANGE_DATA,
    RANGE_ZERO,
    /* Left to the target's backing file: nothing is written. */
    RANGE_BACKING,
};

enum job_kind {
    JOB_DATA, /* read [doff, doff + len) from the sources and write it */
    JOB_ZERO, /* write zeroes over [doff, doff + len) */
};

/* One job, in target (concatenated source) offsets. */
struct job {
    enum job_kind kind;
    uint64_t doff;
    uint64_t len;    /* at most CHUNK for data */
    bool known_zero; /* data jobs: zeroes that -S 0 wants written */
    uint64_t seq;    /* queue order, for in-order writes */
};

struct convert;

/*
 * What a job writes, worked out before its turn (the scans for zero runs,
 * the comparison with the new backing file and compression run on every
 * worker at once); only these writes wait for the turn.
 */
enum write_kind {
    WRITE_DATA,       /* buf[pos, pos + len) at doff */
    WRITE_ZERO,       /* zeroes over [doff, doff + len) */
    WRITE_COMPRESSED, /* zbuf[0, csize) for the cluster at doff */
    /* buf[pos, pos + len) compressed in the turn (formats that cannot
       compress apart from writing) */
    WRITE_COMPRESS,
};

struct write_op {
    enum write_kind kind;
    size_t pos;
    uint64_t doff;
    size_t len;
    size_t csize;
};

struct worker {
    struct convert *c;
    pthread_t thread;
    bool started;
    struct source *src; /* this worker's own handles, one per source */
    struct qimg_image *backing; /* its handle on the new backing file */
    uint8_t *buf;
    uint8_t *bbuf; /* the new backing file's bytes, when comparing */
    uint8_t *zbuf; /* a compressed cluster */
    uint8_t *zflags; /* plan_pieces: one zero flag per sector of buf */
    /* The current job's writes, in order. */
    struct write_op *ops;
    size_t nb_ops, cap_ops;
};

struct convert {
    const struct qimg_convert_params *p;
    struct source *src; /* the walk's handles */
    /* The first source's top layer alone, when the target has a backing. */
    struct qimg_image *top;
    struct qimg_image *dst;
    uint64_t dst_size;
    uint64_t total;
    uint64_t done;
    /* Zero ranges need no writing: fresh sparse target or asserted. */
    bool zero_init;
    /* The target has a backing file (-B, -o backing_file). */
    bool has_backing;
    /* Target offsets from here on are past its backing file's end. */
    bool backing_end_known;
    uint64_t backing_end;
    /*
     * The first source's backing file size: its top layer reads as zero
     * past it (qemu's block status says zero there, not "backing").
     */
    bool src_has_backing;
    uint64_t src_backing_size;
    /* Compare with the new backing file and skip what equals it. */
    bool compare;
    char *backing_path;
    char *backing_fmt;
    /* Target cluster size: the unit of compression and comparison. */
    uint64_t cluster;
    /*
     * The target compresses only inside its writes (qcow v1): learnt from
     * the first qimg_compress_cluster, so that later clusters skip the
     * call and its error message.  Read and set with __atomic builtins.
     */
    bool compress_in_turn;

    /* The queue between the walk and the workers, under lock. */
    pthread_mutex_t lock;
    pthread_mutex_t write_lock;
    pthread_cond_t queued; /* a job was queued, or closing/failed */
    pthread_cond_t room;   /* a job was taken, or failed */
    pthread_cond_t turn_cond; /* next_write moved, or failed */
    struct job queue[QUEUE_LEN];
    size_t head, count;
    uint64_t next_seq;   /* given to the next queued job */
    uint64_t next_write; /* in order: the job whose writes may go now */
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

static uint64_t min_u64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

/*
 * The leading run of sectors that are all zero or all data, for the
 * sectors [first, first + n) whose zero flags are zf[0, n) (sector
 * numbers are absolute, for alignment).  A run that stops short of the
 * end is cut at an alignment boundary so the pieces written later never
 * share an aligned block: a data run is extended to the boundary, a zero
 * run is shortened to it (or turned into data if nothing of it would
 * remain).
 */
static size_t leading_run(const uint8_t *zf, uint64_t first, size_t n,
                          uint64_t align, bool *is_data)
{
    bool zero = zf[0];
    size_t run = 1;
    while (run < n && (bool)zf[run] == zero) {
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
 * How many of the n sectors with zero flags zf form one piece to write
 * (data) or skip (zero).  Zero runs shorter than min_sectors inside data
 * are written as data; a zero run at the start or end is always a zero
 * piece.
 */
static size_t next_piece(const uint8_t *zf, size_t n, uint64_t first,
                         uint64_t min_sectors, uint64_t align, bool *is_data)
{
    uint64_t min = min_sectors < n ? min_sectors : n;
    size_t used = leading_run(zf, first, n, align, is_data);
    if (!*is_data) {
        return used;
    }
    size_t checked = used;
    while (checked < n) {
        bool data;
        size_t run = leading_run(zf + checked, first + checked, n - checked,
                                 align, &data);
        checked += run;
        if (data) {
            used = checked;
        } else if (run >= min) {
            break;
        }
    }
    return used;
}

/* Append one write to the worker's plan. */
static int plan(struct worker *w, enum write_kind kind, size_t pos,
                uint64_t doff, size_t len, size_t csize)
{
    struct write_op *ops =
        grow_array(w->ops, &w->cap_ops, w->nb_ops + 1, sizeof(*ops));
    if (!ops) {
        return error_set(ENOMEM, "Out of memory");
    }
    w->ops = ops;
    w->ops[w->nb_ops++] = (struct write_op){
        .kind = kind, .pos = pos, .doff = doff, .len = len, .csize = csize};
    return 0;
}

/*
 * Plan the writes of buf[pos, pos + len) at doff: everything with -S 0,
 * else data pieces as data and zero runs of at least -S bytes as zeroes.
 */
static int plan_pieces(struct convert *c, struct worker *w, size_t pos,
                       uint64_t doff, size_t len)
{
    const struct qimg_convert_params *p = c->p;
    if (p->sparse_size == 0) {
        return plan(w, WRITE_DATA, pos, doff, len, 0);
    }
    uint64_t min_sectors = p->sparse_size / SECTOR;
    /* Split points aligned to the largest power of two within -S. */
    uint64_t align = 1;
    while (align * 2 <= min_sectors) {
        align *= 2;
    }
    /*
     * Each sector is scanned once, up front (a data sector usually only
     * to its first word); the pieces are then cut from the flags, so the
     * lookahead over a zero run and the next piece that starts with it
     * do not read its bytes again.
     */
    size_t nsec = (len + SECTOR - 1) / SECTOR;
    uint8_t *zf = w->zflags;
    for (size_t k = 0; k < nsec; k++) {
        size_t off = k * SECTOR;
        size_t l = len - off < SECTOR ? len - off : SECTOR;
        zf[k] = buf_is_zero(w->buf + pos + off, l);
    }
    size_t done = 0;
    while (done < len) {
        bool data;
        size_t first = done / SECTOR;
        size_t n = next_piece(zf + first, nsec - first,
                              (doff + done) / SECTOR, min_sectors, align,
                              &data);
        size_t bytes = n * SECTOR;
        if (bytes > len - done) {
            bytes = len - done;
        }
        if (plan(w, data ? WRITE_DATA : WRITE_ZERO, pos + done, doff + done,
                 bytes, 0) < 0) {
            return -1;
        }
        done += bytes;
    }
    return 0;
}

/*
 * Writes to the target, all under write_lock (the target handle is not
 * thread-safe).  A target that is a few padding bytes short keeps its
 * size: the parts past its end are dropped.  Failures keep the library's
 * message, which says more than qemu-img's "error while writing at byte".
 */
static int dst_write(struct convert *c, const uint8_t *buf, uint64_t off,
                     size_t len)
{
    if (off >= c->dst_size) {
        return 0;
    }
    len = (size_t)min_u64(len, c->dst_size - off);
    pthread_mutex_lock(&c->write_lock);
    int ret = qimg_pwrite(c->dst, buf, len, off);
    pthread_mutex_unlock(&c->write_lock);
    return ret;
}

static int dst_zero(struct convert *c, uint64_t off, uint64_t len)
{
    if (c->zero_init || off >= c->dst_size) {
        return 0;
    }
    len = min_u64(len, c->dst_size - off);
    if (len == 0) {
        return 0;
    }
    pthread_mutex_lock(&c->write_lock);
    int ret = qimg_pwrite_zeroes(c->dst, off, len, QIMG_ZERO_MAY_UNMAP);
    pthread_mutex_unlock(&c->write_lock);
    return ret;
}

/* Make the planned writes of a job, in its turn. */
static int write_planned(struct convert *c, struct worker *w)
{
    for (size_t k = 0; k < w->nb_ops; k++) {
        const struct write_op *op = &w->ops[k];
        int ret = 0;
        switch (op->kind) {
        case WRITE_DATA:
            ret = dst_write(c, w->buf + op->pos, op->doff, op->len);
            break;
        case WRITE_ZERO:
            ret = dst_zero(c, op->doff, op->len);
            break;
        case WRITE_COMPRESSED:
            pthread_mutex_lock(&c->write_lock);
            ret = qimg_pwrite_compressed_data(c->dst, w->zbuf, op->csize,
                                              op->len, op->doff);
            pthread_mutex_unlock(&c->write_lock);
            break;
        case WRITE_COMPRESS:
            pthread_mutex_lock(&c->write_lock);
            ret = qimg_pwrite_compressed(c->dst, w->buf + op->pos, op->len,
                                         op->doff);
            pthread_mutex_unlock(&c->write_lock);
            break;
        }
        if (ret < 0) {
            return -1;
        }
    }
    return 0;
}

/* Read [off, off + len) of one image; bytes past its end read as zero. */
static int read_image(struct qimg_image *img, uint64_t size, uint8_t *buf,
                      uint64_t off, size_t len)
{
    size_t avail = 0;
    if (off < size) {
        avail = (size_t)min_u64(size - off, len);
    }
    if (avail > 0 && qimg_pread(img, buf, avail, off) < 0) {
        return -1;
    }
    memset(buf + avail, 0, len - avail);
    return 0;
}

/*
 * Read target bytes [doff, doff + len) from the concatenated sources
 * (each padded with zeroes to its padded size); a compressed cluster may
 * straddle two sources.
 */
static int read_sources(struct convert *c, struct source *src, uint8_t *buf,
                        uint64_t doff, size_t len)
{
    size_t nb = c->p->nb_sources;
    size_t i = 0;
    while (len > 0) {
        while (i < nb && doff >= src[i].base + src[i].padded) {
            i++;
        }
        if (i == nb) {
            memset(buf, 0, len);
            return 0;
        }
        struct source *s = &src[i];
        size_t n = (size_t)min_u64(len, s->base + s->padded - doff);
        if (read_image(s->img, s->size, buf, doff - s->base, n) < 0) {
            return -1;
        }
        buf += n;
        doff += n;
        len -= n;
    }
    return 0;
}

/* Is [off, off + len) the same in buf and bbuf (offsets into the job)? */
static bool same(const uint8_t *buf, const uint8_t *bbuf, size_t off,
                 size_t len)
{
    return memcmp(buf + off, bbuf + off, len) == 0;
}

/*
 * A data job against the new backing file: runs of target clusters that
 * differ from it are written as usual, clusters that equal it are left
 * unallocated so the backing file shows through.
 */
static int plan_differing(struct convert *c, struct worker *w,
                          const struct job *job)
{
    size_t pos = 0;
    size_t run = 0;    /* start of the pending run of differing clusters */
    bool pending = false;
    while (pos < job->len) {
        uint64_t next = round_up(job->doff + pos + 1, c->cluster);
        size_t n = (size_t)min_u64(next - job->doff, job->len) - pos;
        bool differs = !same(w->buf, w->bbuf, pos, n);
        if (differs && !pending) {
            run = pos;
            pending = true;
        } else if (!differs && pending) {
            if (plan_pieces(c, w, run, job->doff + run, pos - run) < 0) {
                return -1;
            }
            pending = false;
        }
        pos += n;
    }
    if (pending) {
        return plan_pieces(c, w, run, job->doff + run, job->len - run);
    }
    return 0;
}

/*
 * In-order writes: wait until every job queued before this one has
 * written.  -1 once the copy failed.
 */
static int wait_turn(struct convert *c, const struct job *job)
{
    if (c->p->out_of_order) {
        return 0;
    }
    pthread_mutex_lock(&c->lock);
    while (c->next_write != job->seq && !c->failed) {
        pthread_cond_wait(&c->turn_cond, &c->lock);
    }
    bool failed = c->failed;
    pthread_mutex_unlock(&c->lock);
    return failed ? -1 : 0;
}

static void end_turn(struct convert *c, const struct job *job)
{
    if (c->p->out_of_order) {
        return;
    }
    pthread_mutex_lock(&c->lock);
    c->next_write = job->seq + 1;
    pthread_cond_broadcast(&c->turn_cond);
    pthread_mutex_unlock(&c->lock);
}

/*
 * Plan a compressed cluster: an all-zero one is not compressed (qemu-img
 * skips it on a zero-initialised target, else writes zeroes), except
 * with -S 0, which writes everything as data; one that does not shrink
 * is written plain.  The part past a target a few padding bytes short
 * is dropped before compressing.
 */
static int plan_compressed(struct convert *c, struct worker *w,
                           const struct job *job)
{
    size_t len = (size_t)job->len;
    if (c->p->sparse_size != 0 && buf_is_zero(w->buf, len)) {
        return plan(w, WRITE_ZERO, 0, job->doff, len, 0);
    }
    if (job->doff >= c->dst_size) {
        return 0;
    }
    len = (size_t)min_u64(len, c->dst_size - job->doff);
    if (__atomic_load_n(&c->compress_in_turn, __ATOMIC_RELAXED)) {
        return plan(w, WRITE_COMPRESS, 0, job->doff, len, 0);
    }
    int64_t csize = qimg_compress_cluster(c->dst, w->buf, len, job->doff,
                                          w->zbuf, (size_t)c->cluster);
    if (csize < 0 && qimg_get_errno() == ENOTSUP) {
        /* Compressed in the turn, by the write itself. */
        __atomic_store_n(&c->compress_in_turn, true, __ATOMIC_RELAXED);
        return plan(w, WRITE_COMPRESS, 0, job->doff, len, 0);
    }
    if (csize < 0) {
        return -1;
    }
    if (csize == 0) {
        return plan(w, WRITE_DATA, 0, job->doff, len, 0);
    }
    return plan(w, WRITE_COMPRESSED, 0, job->doff, len, (size_t)csize);
}

/* Work out the writes of one job (on any worker, before its turn). */
static int plan_job(struct convert *c, struct worker *w,
                    const struct job *job)
{
    w->nb_ops = 0;
    if (job->kind == JOB_ZERO) {
        return plan(w, WRITE_ZERO, 0, job->doff, (size_t)job->len, 0);
    }
    size_t len = (size_t)job->len;
    if (c->p->compress) {
        /* One cluster: the same as the backing file, or compressed. */
        if (c->compare && same(w->buf, w->bbuf, 0, len)) {
            return 0;
        }
        return plan_compressed(c, w, job);
    }
    /*
     * Cluster by cluster (a chunk that equals its backing file plans no
     * writes there either), so no byte is compared twice.
     */
    if (c->compare) {
        return plan_differing(c, w, job);
    }
    return plan_pieces(c, w, 0, job->doff, len);
}

/*
 * Read a job's bytes (and the new backing file's), plan its writes, then
 * write in turn.
 */
static int run_job(struct convert *c, struct worker *w, const struct job *job)
{
    if (job->kind == JOB_DATA) {
        size_t len = (size_t)job->len;
        if (job->known_zero) {
            memset(w->buf, 0, len);
        } else if (read_sources(c, w->src, w->buf, job->doff, len) < 0) {
            return -1;
        }
        if (c->compare) {
            int64_t bsize = qimg_get_size(w->backing);
            if (bsize < 0 || read_image(w->backing, (uint64_t)bsize,
                                        w->bbuf, job->doff, len) < 0) {
                return -1;
            }
        }
    }
    if (plan_job(c, w, job) < 0 || wait_turn(c, job) < 0) {
        return -1;
    }
    int ret = write_planned(c, w);
    if (ret == 0) {
        end_turn(c, job);
    }
    return ret;
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
    pthread_cond_broadcast(&c->turn_cond);
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
        if (run_job(c, w, &job) < 0) {
            copy_fail(c);
            return NULL;
        }
    }
}

/* Queue a job for the workers; -1 once one of them has failed. */
static int queue_job(struct convert *c, struct job *job)
{
    pthread_mutex_lock(&c->lock);
    while (c->count == QUEUE_LEN && !c->failed) {
        pthread_cond_wait(&c->room, &c->lock);
    }
    bool failed = c->failed;
    if (!failed) {
        job->seq = c->next_seq++;
        c->queue[(c->head + c->count) % QUEUE_LEN] = *job;
        c->count++;
        pthread_cond_signal(&c->queued);
    }
    pthread_mutex_unlock(&c->lock);
    return failed ? -1 : 0;
}

static const char *source_format(const struct qimg_convert_params *p,
                                 size_t i)
{
    return p->source_formats ? p->source_formats[i] : p->source_format;
}

static const struct qimg_opts *
source_opts(const struct qimg_convert_params *p, size_t i)
{
    return p->source_driver_opts ? p->source_driver_opts[i] : NULL;
}

static int open_source(const struct qimg_convert_params *p, size_t i,
                       struct qimg_image **out);

static size_t worker_count(const struct qimg_convert_params *p)
{
    if (p->parallel > 0) {
        return p->parallel < WORKERS_MAX ? p->parallel : WORKERS_MAX;
    }
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    return cpus < WORKERS_MIN   ? WORKERS_MIN
           : cpus > WORKERS_MAX ? WORKERS_MAX
                                : (size_t)cpus;
}

static void *alloc_buffer(void)
{
    /*
     * Page-aligned: the kernel copies to and from a buffer that starts
     * mid-page (as malloc's large blocks do) more slowly.
     */
    void *buf = NULL;
    return posix_memalign(&buf, BUF_ALIGN, CHUNK) == 0 ? buf : NULL;
}

/* Start the workers, each with its own source handles. */
static int start_workers(struct convert *c)
{
    size_t n = worker_count(c->p);
    const struct qimg_convert_params *p = c->p;
    for (size_t k = 0; k < n; k++) {
        struct worker *w = &c->workers[k];
        w->c = c;
        w->src = calloc(p->nb_sources, sizeof(*w->src));
        w->buf = alloc_buffer();
        w->zflags = malloc(CHUNK / SECTOR);
        if (c->compare) {
            w->bbuf = alloc_buffer();
        }
        if (p->compress) {
            w->zbuf = malloc((size_t)c->cluster);
        }
        c->nb_workers = k + 1;
        if (!w->src || !w->buf || !w->zflags ||
            (c->compare && !w->bbuf) || (p->compress && !w->zbuf)) {
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
        if (c->compare) {
            w->backing = qimg_open(c->backing_path, c->backing_fmt,
                                   QIMG_OPEN_FORCE_SHARE);
            if (!w->backing) {
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
        if (w->backing) {
            qimg_close(w->backing);
        }
        free(w->src);
        free(w->buf);
        free(w->bbuf);
        free(w->zbuf);
        free(w->zflags);
        free(w->ops);
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

/*
 * The status of the run of source s starting at soff (soff < padded):
 * *status and its length *len (never past the source's padded end).
 */
static int source_status(struct convert *c, struct source *s, uint64_t soff,
                         enum range_status *status, uint64_t *len)
{
    if (soff >= s->size) {
        /* The padding after a source's end reads as zero. */
        *status = RANGE_ZERO;
        *len = s->padded - soff;
        return 0;
    }
    struct qimg_extent ext;
    uint64_t want = min_u64(s->size - soff, STATUS_WINDOW);
    /* With a backing file for the target: the top layer's own runs. */
    struct qimg_image *img = c->top ? c->top : s->img;
    if (qimg_block_status(img, soff, want, &ext) < 0) {
        return -1;
    }
    if (ext.length == 0 || ext.length > want) {
        return error_set(EIO, "%s: block status made no progress",
                         qimg_get_filename(img));
    }
    enum range_status st;
    if (c->top && !(ext.flags & QIMG_EXTENT_ALLOCATED) &&
        c->src_has_backing) {
        /*
         * [QEMU] With a backing file for the target, only the source's
         * top layer is copied; what it leaves to its backing file stays
         * unallocated.  A run that starts past the end of that backing
         * file reads as zero (the whole run: QEMU decides by its start).
         */
        st = soff >= c->src_backing_size ? RANGE_ZERO : RANGE_BACKING;
    } else if (ext.flags & QIMG_EXTENT_ZERO) {
        st = RANGE_ZERO;
    } else {
        st = RANGE_DATA;
    }
    /*
     * Work in whole sectors as qemu-img does: a run ending inside a
     * sector gives that sector to the data next to it, and the padding
     * after the end goes with the last run.
     */
    uint64_t end = soff + ext.length;
    if (end % SECTOR != 0) {
        if (st != RANGE_DATA && end / SECTOR * SECTOR > soff) {
            end = end / SECTOR * SECTOR;
        } else {
            st = RANGE_DATA;
            end = round_up(end, SECTOR);
        }
    }
    if (end >= s->size) {
        end = s->padded;
    }
    uint64_t n = end - soff;
    /*
     * [QEMU] A run is cut at the source's cluster size (when it is longer
     * than that), so the next status request starts on a boundary.
     */
    uint64_t tail = (soff + n) % s->align;
    if (n > tail) {
        n -= tail;
    }
    *status = st;
    *len = n;
    return 0;
}

/* Queue the data jobs of [pos, pos + len), each at most unit bytes. */
static int queue_data(struct convert *c, uint64_t pos, uint64_t len,
                      uint64_t unit, bool known_zero)
{
    uint64_t end = pos + len;
    while (pos < end) {
        struct job job = {
            .kind = JOB_DATA,
            .doff = pos,
            .len = min_u64(end - pos, unit),
            .known_zero = known_zero,
        };
        if (queue_job(c, &job) < 0) {
            return -1;
        }
        pos += job.len;
    }
    return 0;
}

/*
 * Walk the target's range over the concatenated sources, classify each
 * run and queue its jobs.  A compressed target gets whole clusters: a
 * run shorter than one is copied as a data cluster.
 */
static int walk(struct convert *c)
{
    const struct qimg_convert_params *p = c->p;
    uint64_t unit = p->compress ? c->cluster : CHUNK;
    uint64_t pos = 0;
    size_t i = 0;
    while (pos < c->total) {
        while (pos >= c->src[i].base + c->src[i].padded) {
            i++;
        }
        struct source *s = &c->src[i];
        enum range_status st = RANGE_DATA;
        uint64_t n = 0;
        if (source_status(c, s, pos - s->base, &st, &n) < 0) {
            copy_fail(c);
            return -1;
        }
        /* [QEMU] Zeroes past the new backing file's end need no writes. */
        if (c->backing_end_known) {
            if (pos >= c->backing_end) {
                st = st == RANGE_ZERO ? RANGE_BACKING : st;
            } else if (n > c->backing_end - pos) {
                n = c->backing_end - pos;
            }
        }
        if (p->compress) {
            if (n < c->cluster) {
                n = min_u64(c->cluster, c->total - pos);
                st = RANGE_DATA;
            } else {
                n = n / c->cluster * c->cluster;
            }
        }
        int ret = 0;
        if (st == RANGE_DATA) {
            ret = queue_data(c, pos, n, unit, false);
        } else if (st == RANGE_ZERO && p->sparse_size == 0) {
            /* -S 0: zeroes are written as data (fully allocated). */
            ret = queue_data(c, pos, n, unit, true);
        } else if (st == RANGE_ZERO && !c->zero_init) {
            struct job job = {.kind = JOB_ZERO, .doff = pos, .len = n};
            ret = queue_job(c, &job);
        }
        if (ret < 0) {
            return -1;
        }
        report_progress(c, n);
        pos += n;
    }
    return 0;
}

static int open_source(const struct qimg_convert_params *p, size_t i,
                       struct qimg_image **out)
{
    /* [QEMU] only the first source is read at the snapshot. */
    *out = image_open_snapshot_opts(p->sources[i], source_format(p, i),
                                    p->source_flags, source_opts(p, i),
                                    p->source_snapshot && i == 0
                                        ? p->source_snapshot
                                        : NULL);
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
        s->base = c->total;
        uint64_t cluster = qimg_get_cluster_size(s->img);
        s->align = cluster > SECTOR ? cluster : SECTOR;
        if (c->total > INT64_MAX - s->padded) {
            return error_set(EFBIG, "The sources are too large together");
        }
        c->total += s->padded;
    }
    return 0;
}

/* qemu-img reports option problems without the "FILENAME: " prefix. */
static void strip_target_prefix(const char *target)
{
    size_t plen = strlen(target);
    const char *msg = qimg_get_error();
    if (strncmp(msg, target, plen) == 0 &&
        strncmp(msg + plen, ": ", 2) == 0) {
        char *copy = strdup(msg + plen + 2);
        int err = qimg_get_errno();
        if (copy) {
            error_set(err ? err : EINVAL, "%s", copy);
            free(copy);
        }
    }
}

/* A copy of opts (or an empty list) with key set to value. */
static struct qimg_opts *opts_copy(const struct qimg_opts *from)
{
    struct qimg_opts *opts = qimg_opts_new();
    if (!opts) {
        error_set(ENOMEM, "Out of memory");
        return NULL;
    }
    size_t n = from ? qimg_opts_count(from) : 0;
    for (size_t i = 0; i < n; i++) {
        const char *key = qimg_opts_key(from, i);
        if (qimg_opts_set(opts, key, qimg_opts_get(from, key)) < 0) {
            qimg_opts_free(opts);
            error_set(ENOMEM, "Out of memory");
            return NULL;
        }
    }
    return opts;
}

/*
 * The target's creation options: the caller's, the size of the sources,
 * and -B/-F (which win over -o backing_file/backing_fmt, as in qemu-img).
 * They are checked as creation will check them, but the backing file is
 * not opened here: the target's open does that.
 */
static int target_options(struct convert *c, const char *fmt,
                          struct qimg_opts **out)
{
    const struct qimg_convert_params *p = c->p;
    struct qimg_opts *opts = opts_copy(p->target_opts);
    if (!opts) {
        return -1;
    }
    char size[32];
    snprintf(size, sizeof(size), "%" PRIu64, c->total);
    int ret = qimg_opts_set(opts, "size", size);
    if (ret == 0 && p->backing_file) {
        ret = qimg_opts_set(opts, "backing_file", p->backing_file);
    }
    if (ret == 0 && p->backing_format) {
        ret = qimg_opts_set(opts, "backing_fmt", p->backing_format);
    }
    if (ret < 0) {
        qimg_opts_free(opts);
        return error_set(ENOMEM, "Out of memory");
    }
    /*
     * A missing backing format is refused below with qemu-img's
     * convert message, after the checks it makes first: the check here
     * gets a stand-in.
     */
    struct qimg_opts *check = opts_copy(opts);
    ret = check ? 0 : -1;
    if (ret == 0 && qimg_opts_get(check, "backing_file") &&
        !qimg_opts_get(check, "backing_fmt")) {
        ret = qimg_opts_set(check, "backing_fmt", "raw");
    }
    if (ret == 0) {
        ret = qimg_create_prepare(p->target, fmt, check,
                                  QIMG_CREATE_BACKING_UNSAFE);
        if (ret < 0) {
            strip_target_prefix(p->target);
        }
    }
    qimg_opts_free(check);
    if (ret < 0) {
        qimg_opts_free(opts);
        return -1;
    }
    *out = opts;
    return 0;
}

static bool format_can_compress(const char *fmt)
{
    const struct qimg_format_ops *drv = format_lookup(fmt);
    return drv && drv->pwrite_compressed;
}

/* qemu-img's checks of the combination, in its order. */
static int check_combination(struct convert *c, const char *fmt,
                             const struct qimg_opts *opts)
{
    const struct qimg_convert_params *p = c->p;
    const char *backing = opts ? qimg_opts_get(opts, "backing_file")
                               : p->backing_file;
    c->has_backing = backing != NULL;
    if (p->target_is_zero && c->has_backing) {
        return error_set(EINVAL, "Cannot use --target-is-zero when the "
                         "destination image has a backing file");
    }
    if (p->nb_sources > 1 && c->has_backing) {
        return error_set(EINVAL, "Having a backing file for the target "
                         "makes no sense when concatenating multiple input "
                         "images");
    }
    if (opts && backing && !qimg_opts_get(opts, "backing_fmt")) {
        return error_set(EINVAL, "Use of backing file requires explicit "
                         "backing format");
    }
    if (!p->compress) {
        return 0;
    }
    if (opts && !format_can_compress(fmt)) {
        return error_set(ENOTSUP,
                         "Compression not supported for this file format");
    }
    const char *encryption = opts ? qimg_opts_get(opts, "encryption") : NULL;
    if ((encryption && strcmp(encryption, "off") != 0) ||
        (opts && qimg_opts_get(opts, "encrypt.format"))) {
        return error_set(ENOTSUP, "Compression and encryption not "
                         "supported at the same time");
    }
    const char *prealloc = opts ? qimg_opts_get(opts, "preallocation")
                                : NULL;
    if (prealloc && strcmp(prealloc, "off") != 0) {
        return error_set(ENOTSUP, "Compression and preallocation not "
                         "supported at the same time");
    }
    return 0;
}

/* Create the target; messages as qemu-img convert words them. */
static int create_target(const struct qimg_convert_params *p,
                         const char *fmt, const struct qimg_opts *opts)
{
    if (qimg_create(p->target, fmt, opts) == 0) {
        return 0;
    }
    strip_target_prefix(p->target);
    char *why = strdup(qimg_get_error());
    int err = qimg_get_errno() ? qimg_get_errno() : EIO;
    error_set(err, "%s: error while converting %s: %s", p->target, fmt,
              why ? why : "Out of memory");
    free(why);
    return -1;
}

/*
 * The new target's backing file: its size (zeroes past it need no
 * writes) and, to compare with it, its name and format.  The target's
 * open has proved that it opens.
 */
static int open_new_backing(struct convert *c)
{
    struct qimg_image_info *info = qimg_get_info(c->dst);
    if (!info) {
        return -1;
    }
    int ret = 0;
    if (info->full_backing_filename) {
        c->backing_path = strdup(info->full_backing_filename);
        c->backing_fmt = info->backing_format ? strdup(info->backing_format)
                                              : NULL;
        if (!c->backing_path ||
            (info->backing_format && !c->backing_fmt)) {
            ret = error_set(ENOMEM, "Out of memory");
        }
    }
    qimg_image_info_free(info);
    if (ret < 0 || !c->backing_path) {
        return ret;
    }
    bool muted = warn_mute(true);
    struct qimg_image *b = qimg_open(c->backing_path, c->backing_fmt,
                                     QIMG_OPEN_FORCE_SHARE);
    warn_mute(muted);
    if (!b) {
        return -1;
    }
    int64_t size = qimg_get_size(b);
    qimg_close(b);
    if (size < 0) {
        return -1;
    }
    c->backing_end = round_up((uint64_t)size, SECTOR);
    c->backing_end_known = true;
    c->compare = c->p->sparse_size != 0;
    return 0;
}

/*
 * Whether the first source has a backing file of its own, and its size
 * (only asked when the target has a backing file).  A size that cannot
 * be learnt counts as endless: the top layer's unallocated runs are then
 * all left to the new backing file.
 */
static int source_backing_size(struct convert *c)
{
    const struct qimg_convert_params *p = c->p;
    struct qimg_image_info *info = qimg_get_info(c->src[0].img);
    if (!info) {
        return -1;
    }
    c->src_has_backing = info->backing_filename != NULL;
    qimg_image_info_free(info);
    if (!c->src_has_backing) {
        return 0;
    }
    c->src_backing_size = UINT64_MAX;
    struct qimg_image_info **chain = NULL;
    bool muted = warn_mute(true);
    int n = qimg_get_chain_info(p->sources[0], source_format(p, 0),
                                p->source_flags | QIMG_OPEN_FORCE_SHARE,
                                &chain);
    warn_mute(muted);
    if (n >= 2) {
        c->src_backing_size = chain[1]->virtual_size;
    }
    for (int i = 0; i < n; i++) {
        qimg_image_info_free(chain[i]);
    }
    free(chain);
    error_clear();
    return 0;
}

/* A handle on the first source's top layer alone, for its status. */
static int open_top_layer(struct convert *c)
{
    const struct qimg_convert_params *p = c->p;
    unsigned flags = p->source_flags | QIMG_OPEN_NO_BACKING;
    bool muted = warn_mute(true);
    c->top = image_open_snapshot_opts(p->sources[0], source_format(p, 0),
                                      flags, source_opts(p, 0),
                                      p->source_snapshot);
    warn_mute(muted);
    return c->top ? 0 : -1;
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
    if (p->parallel > PARALLEL_MAX) {
        return error_set(EINVAL, "Invalid number of coroutines. Allowed "
                         "number of coroutines is between 1 and %d",
                         PARALLEL_MAX);
    }
    if (p->target_is_zero && !p->no_create) {
        return error_set(EINVAL, "--target-is-zero requires use of -n flag");
    }
    if (!p->compress &&
        (p->compression_level != 0 || p->compression_flags != 0)) {
        return error_set(EINVAL, "--compression-level and --compressor "
                         "need -c");
    }
    if (p->no_create && p->target_opts && qimg_opts_count(p->target_opts)) {
        return error_set(EINVAL,
                         "-o has no effect when skipping image creation");
    }
    return 0;
}

/* The creation options naming key secrets, or *out NULL if none. */
static int key_secret_opts(const struct qimg_opts *opts,
                           struct qimg_opts **out)
{
    *out = NULL;
    size_t n = opts ? qimg_opts_count(opts) : 0;
    for (size_t i = 0; i < n; i++) {
        const char *k = qimg_opts_key(opts, i);
        size_t kl = strlen(k);
        if (strcmp(k, "key-secret") != 0 &&
            (kl < 11 || strcmp(k + kl - 11, ".key-secret") != 0)) {
            continue;
        }
        if (!*out && !(*out = qimg_opts_new())) {
            return error_set(ENOMEM, "Out of memory");
        }
        if (qimg_opts_set(*out, k, qimg_opts_get(opts, k)) < 0) {
            qimg_opts_free(*out);
            *out = NULL;
            return error_set(ENOMEM, "Out of memory");
        }
    }
    return 0;
}

/* ---- --bitmaps ------------------------------------------------------------
 */

/* qcow2's format-specific "data" of an image's info, or NULL. */
static const struct qimg_value *info_data(const struct qimg_image_info *i)
{
    return i->format_specific ? qimg_value_dict_get(i->format_specific, "data")
                              : NULL;
}

/* The bitmaps list of an image's info, or NULL. */
static const struct qimg_value *info_bitmaps(const struct qimg_image_info *i)
{
    const struct qimg_value *data = info_data(i);
    return data ? qimg_value_dict_get(data, "bitmaps") : NULL;
}

static bool bitmap_has_flag(const struct qimg_value *bm, const char *flag)
{
    const struct qimg_value *flags = qimg_value_dict_get(bm, "flags");
    for (size_t i = 0; flags && i < qimg_value_count(flags); i++) {
        const char *f = qimg_value_get_string(qimg_value_item(flags, i));
        if (f && strcmp(f, flag) == 0) {
            return true;
        }
    }
    return false;
}

/*
 * [QEMU] before the target is made: one source, and no bitmap in use
 * unless those are skipped.
 */
static int check_bitmaps(struct convert *c)
{
    if (!c->p->bitmaps) {
        return 0;
    }
    if (c->p->nb_sources > 1) {
        return error_set(EINVAL,
                         "Copying bitmaps only possible with single source");
    }
    struct qimg_image_info *info = qimg_get_info(c->src[0].img);
    if (!info) {
        return -qimg_get_errno();
    }
    const struct qimg_value *list = info_bitmaps(info);
    int ret = 0;
    for (size_t i = 0; ret == 0 && list && i < qimg_value_count(list); i++) {
        const struct qimg_value *bm = qimg_value_item(list, i);
        const struct qimg_value *name = qimg_value_dict_get(bm, "name");
        if (bitmap_has_flag(bm, "in-use") && !c->p->skip_broken_bitmaps) {
            ret = error_set(EINVAL,
                            "Cannot copy inconsistent bitmap '%s'\nTry "
                            "--skip-broken-bitmaps, or use 'qemu-img bitmap "
                            "--remove' to delete it",
                            name ? qimg_value_get_string(name) : "");
        }
    }
    qimg_image_info_free(info);
    return ret;
}

/* The target stores persistent bitmaps (qcow2 v3), as QEMU asks. */
static int check_target_bitmaps(struct convert *c)
{
    if (!c->p->bitmaps) {
        return 0;
    }
    struct qimg_image_info *info = qimg_get_info(c->dst);
    if (!info) {
        return -qimg_get_errno();
    }
    const struct qimg_value *data = info_data(info);
    const struct qimg_value *compat =
        data ? qimg_value_dict_get(data, "compat") : NULL;
    bool ok = c->dst->top->drv->bitmap && compat &&
              strcmp(qimg_value_get_string(compat), "0.10") != 0;
    qimg_image_info_free(info);
    if (!ok) {
        return error_set(ENOTSUP,
                         "Format driver '%s' does not support "
                         "bitmaps",
                         qimg_get_format(c->dst));
    }
    return 0;
}

/* After the data: each source bitmap added to the target and merged in. */
static int copy_bitmaps(struct convert *c)
{
    if (!c->p->bitmaps) {
        return 0;
    }
    struct qimg_image_info *info = qimg_get_info(c->src[0].img);
    if (!info) {
        return -qimg_get_errno();
    }
    const struct qimg_value *list = info_bitmaps(info);
    int ret = 0;
    for (size_t i = 0; ret == 0 && list && i < qimg_value_count(list); i++) {
        const struct qimg_value *bm = qimg_value_item(list, i);
        const struct qimg_value *name = qimg_value_dict_get(bm, "name");
        const struct qimg_value *g = qimg_value_dict_get(bm, "granularity");
        if (!name || !g) {
            continue;
        }
        const char *n = qimg_value_get_string(name);
        if (bitmap_has_flag(bm, "in-use")) {
            warn_report("Skipping inconsistent bitmap '%s'", n);
            continue;
        }
        struct qimg_bitmap_request add = {
            .op = QIMG_BITMAP_ADD,
            .name = n,
            .granularity = (uint64_t)qimg_value_get_int(g),
            .flags = bitmap_has_flag(bm, "auto") ? 0 : QIMG_BITMAP_DISABLED,
        };
        struct qimg_bitmap_request merge = {
            .op = QIMG_BITMAP_MERGE,
            .name = n,
            .source = c->src[0].img,
            .source_name = n,
        };
        if (qimg_bitmap(c->dst, &add) < 0 || qimg_bitmap(c->dst, &merge) < 0) {
            ret = -qimg_get_errno();
        }
    }
    qimg_image_info_free(info);
    return ret;
}

int qimg_convert(const struct qimg_convert_params *params)
{
    struct convert c = {.p = params};
    struct qimg_opts *opts = NULL;
    bool created = false;
    int ret = -1;

    if (check_params(params) < 0) {
        return -1;
    }
    /* An existing target is probed only when asked (--target-image-opts). */
    const char *fmt = params->target_format ? params->target_format
                      : params->no_create && params->target_probe ? NULL
                                                                  : "raw";
    pthread_mutex_init(&c.lock, NULL);
    pthread_mutex_init(&c.write_lock, NULL);
    pthread_cond_init(&c.queued, NULL);
    pthread_cond_init(&c.room, NULL);
    pthread_cond_init(&c.turn_cond, NULL);
    c.src = calloc(params->nb_sources, sizeof(*c.src));
    if (!c.src) {
        error_set(ENOMEM, "Out of memory");
        goto out;
    }
    if (open_sources(&c) < 0 || check_bitmaps(&c) < 0) {
        goto out;
    }
    if (!params->no_create && target_options(&c, fmt, &opts) < 0) {
        goto out;
    }
    if (check_combination(&c, fmt, opts) < 0) {
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
        if (create_target(params, fmt, opts) < 0) {
            goto out;
        }
        created = removable;
    }
    /*
     * [QEMU] a created target is opened with the creation options that
     * name key secrets (key-secret, encrypt.key-secret) as runtime
     * options, so that an encrypted target is opened with its key.
     */
    struct qimg_opts *key_opts = NULL;
    if (!params->no_create && key_secret_opts(opts, &key_opts) < 0) {
        goto out;
    }
    c.dst = qimg_open_opts(params->target, fmt,
                           QIMG_OPEN_RDWR | params->target_flags,
                           key_opts ? key_opts : params->target_driver_opts);
    qimg_opts_free(key_opts);
    if (!c.dst || check_target_bitmaps(&c) < 0) {
        goto out;
    }
    /*
     * A target that takes compressed writes only (vmdk streamOptimized)
     * gets them without -c, as qemu-img does (needs_compressed_writes).
     */
    struct qimg_convert_params forced;
    if (!params->compress && c.dst->top->drv->needs_compressed_writes &&
        c.dst->top->drv->needs_compressed_writes(c.dst->top)) {
        forced = *params;
        forced.compress = true;
        params = &forced;
        c.p = params;
    }
    if (params->compress && !format_can_compress(qimg_get_format(c.dst))) {
        error_set(ENOTSUP, "Compression not supported for this file format");
        goto out;
    }
    /* qimg extension: how the target compresses (never stored in it). */
    if (params->compress &&
        (params->compression_level != 0 || params->compression_flags != 0) &&
        qimg_set_compression(c.dst, params->compression_level,
                             params->compression_flags) < 0) {
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
    if (c.has_backing) {
        if (source_backing_size(&c) < 0 || open_top_layer(&c) < 0) {
            goto out;
        }
        if (!params->no_create && open_new_backing(&c) < 0) {
            goto out;
        }
    }
    c.cluster = qimg_get_cluster_size(c.dst);
    if (c.cluster == 0) {
        c.cluster = SECTOR;
    }
    if (params->compress && c.cluster > CHUNK) {
        error_set(EINVAL, "invalid cluster size");
        goto out;
    }
    /*
     * A freshly created target without a backing file reads as zero, so
     * zero ranges need no writes, except with -S 0 where the target is
     * fully allocated.
     */
    c.zero_init = params->target_is_zero ||
                  (!params->no_create && params->sparse_size != 0 &&
                   !c.has_backing &&
                   (!c.dst->top->drv->has_zero_init ||
                    c.dst->top->drv->has_zero_init(c.dst->top)));

    if (start_workers(&c) < 0) {
        stop_workers(&c);
        goto out;
    }
    int walked = walk(&c);
    /* A walk failure was recorded for the workers; theirs wins as well. */
    int copied = stop_workers(&c);
    if (walked < 0 || copied < 0) {
        goto out;
    }
    /* The end of the compressed writes: QEMU pads the file to a sector. */
    if (params->compress && qimg_pwrite_compressed(c.dst, NULL, 0, 0) < 0) {
        goto out;
    }
    if (copy_bitmaps(&c) < 0) {
        goto out;
    }
    ret = 0;
out:
    if (c.dst) {
        if (qimg_close(c.dst) < 0 && ret == 0) {
            ret = -1;
        }
    }
    if (c.top) {
        qimg_close(c.top);
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
    qimg_opts_free(opts);
    free(c.src);
    free(c.msg);
    free(c.backing_path);
    free(c.backing_fmt);
    pthread_cond_destroy(&c.turn_cond);
    pthread_cond_destroy(&c.room);
    pthread_cond_destroy(&c.queued);
    pthread_mutex_destroy(&c.write_lock);
    pthread_mutex_destroy(&c.lock);
    return ret;
}
