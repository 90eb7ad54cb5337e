/*
 * qimg_bench: qemu-img bench's sequential I/O benchmark.  count requests
 * of buffer_size bytes, the first at offset, each next one step bytes
 * further, wrapping modulo the image size (as qemu-img 7.2 does: after
 * the wrap the offsets continue from offset + k * step - size, not from
 * the start offset), with depth of them in flight.
 *
 * Requests are made by a pool of worker threads through the public image
 * API, each worker with one request in flight at a time; a request is
 * taken from the shared counters under lock, so at most depth are in
 * flight and offsets are handed out in order.  Image handles are not
 * thread-safe in general, so (qimg_concurrent_io, qimg.h):
 *  - raw images: every worker uses the one handle at once (raw runs
 *    every request side by side).
 *  - qcow2 writes: every worker uses the one handle at once; qcow2 runs
 *    writes into clusters it owns side by side and allocating ones one
 *    at a time, as QEMU does.
 *  - other formats, and qcow2 reads: each worker opens a handle of its
 *    own for reads, as convert's workers do (qcow2 reads through one
 *    handle would go one at a time); writes go through the one handle,
 *    each request under io_lock.
 *
 * Flushes: every flush_interval completed writes.  Draining (the default)
 * stops handing out requests until those in flight have completed, then
 * flushes; without draining, the worker that completed the request
 * flushes while the others carry on.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "qimg/qimg.h"
#include "core/error.h"

/*
 * At most this many worker threads, whatever the depth.  O_DIRECT
 * requests wait for the device, which takes many at once (qemu's own
 * thread pool has 64 threads); buffered ones mostly copy to or from the
 * page cache, where threads beyond a few only add switching.  Writes
 * that are serialised take one worker: more would only queue on io_lock.
 */
#define BENCH_WORKERS_MAX 64
#define BENCH_WORKERS_BUFFERED 16
/* Alignment of the request buffers (O_DIRECT needs 4 KiB at most). */
#define BENCH_BUF_ALIGN 4096

struct bench;

struct bench_worker {
    struct bench *b;
    pthread_t thread;
    bool started;
    /* Own handle (reads of formats other than raw), or NULL. */
    struct qimg_image *own;
    void *buf;
};

struct bench {
    const struct qimg_bench_params *p;
    uint64_t step;
    uint64_t size;
    struct qimg_image *img;
    /* Requests on img need io_lock (writes, !qimg_concurrent_io). */
    bool serialise;
    /* Each worker reads through a handle of its own. */
    bool own;
    pthread_mutex_t io_lock;

    /* Everything below is under lock. */
    pthread_mutex_t lock;
    pthread_cond_t cond; /* a drain ended, or a worker failed */
    uint64_t issued;
    uint64_t completed;
    uint64_t in_flight;
    uint64_t next_offset;
    bool draining; /* hand out nothing until the flush is done */
    bool failed;
    int err;
    char *msg;
    uint64_t flushes;

    struct bench_worker workers[BENCH_WORKERS_MAX];
    size_t nb_workers;
};

/* The last public call's failure as -errno (never 0). */
static int bench_last_error(void)
{
    int err = qimg_get_errno();
    return err ? -err : -EIO;
}

/* Record the first failure and make every worker stop (lock held). */
static void bench_fail_locked(struct bench *b, int err, const char *what)
{
    if (!b->failed) {
        b->failed = true;
        b->err = err ? err : EIO;
        if (what) {
            b->msg = strdup(what);
        } else if (asprintf(&b->msg, "Failed request: %s",
                            strerror(b->err)) < 0) {
            b->msg = NULL;
        }
    }
    pthread_cond_broadcast(&b->cond);
}

/*
 * One request.  A range past the end fails with EIO before reaching the
 * image, as QEMU's block layer fails it.  Returns 0 or an errno value.
 */
static int bench_request(struct bench *b, struct bench_worker *w,
                         uint64_t off)
{
    const struct qimg_bench_params *p = b->p;
    size_t len = p->buffer_size;
    if (off > b->size || len > b->size - off) {
        return EIO;
    }
    struct qimg_image *img = w->own ? w->own : b->img;
    if (b->serialise) {
        pthread_mutex_lock(&b->io_lock);
    }
    int ret;
    if (p->write) {
        ret = qimg_pwrite(img, w->buf, len, off);
        if (ret == 0 && p->write_through) {
            ret = qimg_flush(img);
        }
    } else {
        ret = qimg_pread(img, w->buf, len, off);
    }
    int err = ret < 0 ? qimg_get_errno() : 0;
    if (b->serialise) {
        pthread_mutex_unlock(&b->io_lock);
    }
    return ret < 0 ? (err ? err : EIO) : 0;
}

static int bench_flush(struct bench *b)
{
    if (b->serialise) {
        pthread_mutex_lock(&b->io_lock);
    }
    int ret = qimg_flush(b->img);
    int err = ret < 0 ? qimg_get_errno() : 0;
    if (b->serialise) {
        pthread_mutex_unlock(&b->io_lock);
    }
    return ret < 0 ? (err ? err : EIO) : 0;
}

/*
 * After a completion (lock held), qemu-img's rule: a flush is due when
 * the number of requests not yet handed out is a multiple of
 * flush_interval (so also once all have been).  Draining, nothing more
 * is handed out until the requests in flight have completed; the last of
 * them makes the flush, alone.  Without draining, the flush is made at
 * once, next to the requests in flight (at the end, after each of the
 * last completions, as in qemu-img).
 */
static void bench_maybe_flush_locked(struct bench *b)
{
    const struct qimg_bench_params *p = b->p;
    if (!p->flush_interval ||
        (p->count - b->issued) % p->flush_interval != 0) {
        return;
    }
    int err;
    if (p->no_drain) {
        pthread_mutex_unlock(&b->lock);
        err = bench_flush(b);
        pthread_mutex_lock(&b->lock);
    } else {
        b->draining = true;
        if (b->in_flight > 0) {
            return;
        }
        /* Nothing is in flight and nothing is handed out: flush alone. */
        err = bench_flush(b);
        b->draining = false;
        pthread_cond_broadcast(&b->cond);
    }
    b->flushes++;
    if (err) {
        bench_fail_locked(b, err, NULL);
    }
}

static void *bench_worker_main(void *opaque)
{
    struct bench_worker *w = opaque;
    struct bench *b = w->b;
    const struct qimg_bench_params *p = b->p;

    pthread_mutex_lock(&b->lock);
    for (;;) {
        while (b->draining && !b->failed) {
            pthread_cond_wait(&b->cond, &b->lock);
        }
        if (b->failed || b->issued >= p->count) {
            break;
        }
        uint64_t off = b->next_offset;
        b->issued++;
        b->in_flight++;
        /* size 0: offset stays (every request but empty ones fails). */
        if (b->size > 0) {
            b->next_offset = (b->next_offset + b->step) % b->size;
        }
        pthread_mutex_unlock(&b->lock);

        int err = bench_request(b, w, off);

        pthread_mutex_lock(&b->lock);
        b->in_flight--;
        b->completed++;
        if (err) {
            bench_fail_locked(b, err, NULL);
            break;
        }
        bench_maybe_flush_locked(b);
    }
    pthread_mutex_unlock(&b->lock);
    return NULL;
}

/* The parameter checks of qemu-img bench, with its words. */
static int bench_check_params(const struct qimg_bench_params *p)
{
    if (!p->filename) {
        return error_set(EINVAL, "Expecting one image file name");
    }
    if (p->count > INT_MAX) {
        return error_set(EINVAL, "Invalid request count specified");
    }
    if (p->depth < 1 || p->depth > INT_MAX) {
        return error_set(EINVAL, "Invalid queue depth specified");
    }
    if (p->offset > INT64_MAX) {
        return error_set(EINVAL, "Invalid offset specified");
    }
    if (p->buffer_size > INT_MAX) {
        return error_set(EINVAL, "Invalid buffer size specified");
    }
    if (p->step > INT_MAX) {
        return error_set(EINVAL, "Invalid step size specified");
    }
    if (p->flush_interval > INT_MAX) {
        return error_set(EINVAL, "Invalid flush interval specified");
    }
    if (p->flush_interval && !p->write) {
        return error_set(EINVAL,
                         "--flush-interval is only available in write tests");
    }
    if (p->flush_interval && p->flush_interval < p->depth) {
        return error_set(EINVAL, "Flush interval can't be smaller than depth");
    }
    return 0;
}

static int bench_open(struct bench *b)
{
    const struct qimg_bench_params *p = b->p;
    unsigned flags = p->flags | (p->write ? QIMG_OPEN_RDWR : 0);
    if (p->native_aio && !(flags & QIMG_OPEN_CACHE_DIRECT)) {
        return error_set(EINVAL, "Could not open '%s': aio=native was "
                         "specified, but it requires cache.direct=on, "
                         "which was not specified.", p->filename);
    }
    b->img = qimg_open(p->filename, p->format, flags);
    if (!b->img) {
        return bench_last_error();
    }
    int64_t size = qimg_get_size(b->img);
    if (size < 0) {
        return bench_last_error();
    }
    b->size = (uint64_t)size;
    bool raw = strcmp(qimg_get_format(b->img), "raw") == 0;
    b->serialise = p->write && !qimg_concurrent_io(b->img);
    b->own = !p->write && !raw;
    return 0;
}

static int bench_start_workers(struct bench *b)
{
    const struct qimg_bench_params *p = b->p;
    uint64_t n = p->depth < p->count ? p->depth : p->count;
    uint64_t cap = (p->flags & QIMG_OPEN_CACHE_DIRECT)
                       ? BENCH_WORKERS_MAX
                       : BENCH_WORKERS_BUFFERED;
    if (b->serialise) {
        cap = 1;
    }
    if (n > cap) {
        n = cap;
    }
    bool own = b->own;
    size_t buf_len = p->buffer_size ? p->buffer_size : 1;
    for (size_t k = 0; k < n; k++) {
        struct bench_worker *w = &b->workers[k];
        w->b = b;
        b->nb_workers = k + 1;
        if (posix_memalign(&w->buf, BENCH_BUF_ALIGN, buf_len) != 0) {
            w->buf = NULL;
            return error_set(ENOMEM, "Out of memory");
        }
        memset(w->buf, p->pattern, buf_len);
        if (own) {
            /* The image was opened once already: no second warning. */
            bool muted = warn_mute(true);
            w->own = qimg_open(p->filename, qimg_get_format(b->img),
                               p->flags);
            warn_mute(muted);
            if (!w->own) {
                return bench_last_error();
            }
        }
    }
    return 0;
}

/* Run the workers and wait for them; 0 or -errno with the message. */
static int bench_run(struct bench *b)
{
    int ret = 0;
    for (size_t k = 0; k < b->nb_workers; k++) {
        struct bench_worker *w = &b->workers[k];
        int err = pthread_create(&w->thread, NULL, bench_worker_main, w);
        if (err != 0) {
            pthread_mutex_lock(&b->lock);
            bench_fail_locked(b, err, "Could not start a benchmark thread");
            pthread_mutex_unlock(&b->lock);
            break;
        }
        w->started = true;
    }
    for (size_t k = 0; k < b->nb_workers; k++) {
        if (b->workers[k].started) {
            pthread_join(b->workers[k].thread, NULL);
        }
    }
    if (b->failed) {
        ret = error_set(b->err, "%s", b->msg ? b->msg : "Out of memory");
    }
    return ret;
}

static double bench_elapsed(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0->tv_sec) +
           (double)(t1.tv_nsec - t0->tv_nsec) / 1e9;
}

int qimg_bench(const struct qimg_bench_params *params,
               struct qimg_bench_result *out)
{
    struct bench b = {.p = params};
    struct qimg_bench_result res = {0};
    int ret;

    error_clear();
    pthread_mutex_init(&b.lock, NULL);
    pthread_mutex_init(&b.io_lock, NULL);
    pthread_cond_init(&b.cond, NULL);
    ret = bench_check_params(params);
    if (ret < 0) {
        goto done;
    }
    b.step = params->step ? params->step : params->buffer_size;
    b.next_offset = params->offset;
    ret = bench_open(&b);
    if (ret < 0) {
        goto done;
    }
    ret = bench_start_workers(&b);
    if (ret < 0) {
        goto done;
    }
    if (params->start) {
        struct qimg_bench_params shown = *params;
        shown.step = b.step;
        params->start(&shown, params->opaque);
    }
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    ret = bench_run(&b);
    res.seconds = bench_elapsed(&t0);
    res.requests = b.completed;
    res.flushes = b.flushes;

done:;
    /* Keep the first failure's message over what closing says. */
    char *msg = ret < 0 ? strdup(qimg_get_error()) : NULL;
    int err = ret < 0 ? -ret : 0;
    for (size_t k = 0; k < b.nb_workers; k++) {
        qimg_close(b.workers[k].own);
        free(b.workers[k].buf);
    }
    if (b.img && qimg_close(b.img) < 0 && ret == 0) {
        ret = -1;
        err = qimg_get_errno() ? qimg_get_errno() : EIO;
    } else if (ret < 0) {
        error_set(err ? err : EIO, "%s", msg ? msg : "Out of memory");
    }
    free(msg);
    free(b.msg);
    pthread_cond_destroy(&b.cond);
    pthread_mutex_destroy(&b.io_lock);
    pthread_mutex_destroy(&b.lock);
    if (out) {
        *out = res;
    }
    if (ret < 0) {
        errno = err ? err : EIO;
        return -1;
    }
    return 0;
}
