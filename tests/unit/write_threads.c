/*
 * write_threads: several threads hammer one image handle at once through
 * the public API (qimg_concurrent_io), mirrored into a raw file.
 *
 *   write_threads [-t THREADS] [-n OPS] [-r SEED] [-d] [-k] IMAGE MIRROR.raw
 *
 * IMAGE exists (any qcow2 options; made by the caller with qemu-img);
 * MIRROR.raw holds what it reads as now (the caller makes it, zeros for
 * a new image).  Each thread makes OPS random requests on the one handle
 * (-d: opened with QIMG_OPEN_CACHE_DIRECT) and applies each change to
 * the mirror.  So that the final contents do not depend on timing, every
 * thread changes only bytes it owns, but owners are interleaved finely:
 *   - the first half of the disk is cut in stripes of a quarter cluster
 *     (at least 512 bytes), stripe k owned by thread k % THREADS: writes
 *     and partial zero writes inside one stripe, so several threads write
 *     into one cluster at once, in place or while another allocates it;
 *   - the second half is cut in clusters, cluster k owned by thread
 *     k % THREADS: partial and whole writes, whole-cluster zero writes
 *     (with and without QIMG_ZERO_MAY_UNMAP) and discards, which free
 *     and reallocate host clusters next to in-place writes elsewhere.
 * Threads also read their own bytes back (they must equal the mirror)
 * and flush.  The image must be qcow2 v3 without a backing file (a
 * discarded whole cluster then reads as zero; -k: discards change
 * nothing, as with an external data file, whose bytes stay).  Exit status 0 when every
 * request succeeded and every read matched.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "qimg/qimg.h"

#define MAX_THREADS 64
#define BUF_ALIGN 4096

struct shared {
    struct qimg_image *img;
    int mirror;
    uint64_t size;
    uint64_t cluster;
    uint64_t stripe;
    unsigned nb_threads;
    unsigned ops;
    bool discard_keeps;
};

struct worker {
    const struct shared *sh;
    unsigned id;
    uint64_t rng;
    pthread_t thread;
    int failed;
    uint8_t *buf;
    uint8_t *check;
    uint64_t counts[6];
};

static uint64_t next(struct worker *w)
{
    /* xorshift64* */
    w->rng ^= w->rng >> 12;
    w->rng ^= w->rng << 25;
    w->rng ^= w->rng >> 27;
    return w->rng * 0x2545f4914f6cdd1dull;
}

static uint64_t below(struct worker *w, uint64_t n)
{
    return n ? next(w) % n : 0;
}

static int fail(struct worker *w, const char *what, uint64_t off,
                uint64_t len)
{
    fprintf(stderr, "thread %u: %s at %" PRIu64 "+%" PRIu64 ": %s\n", w->id,
            what, off, len, qimg_get_error());
    w->failed = 1;
    return -1;
}

static int mirror_write(struct worker *w, const uint8_t *p, uint64_t len,
                        uint64_t off)
{
    if (pwrite(w->sh->mirror, p, (size_t)len, (off_t)off) != (ssize_t)len) {
        fprintf(stderr, "thread %u: mirror write: %s\n", w->id,
                strerror(errno));
        w->failed = 1;
        return -1;
    }
    return 0;
}

/* A random range of the thread's own bytes: a piece of a stripe or a
 * cluster, or (whole) a whole cluster of the second half. */
static void pick(struct worker *w, bool second, bool whole, uint64_t *off,
                 uint64_t *len)
{
    const struct shared *sh = w->sh;
    uint64_t unit = second ? sh->cluster : sh->stripe;
    uint64_t base = second ? sh->size / 2 : 0;
    uint64_t first = base / unit;
    uint64_t units = (second ? sh->size : sh->size / 2) / unit;
    /* The units k in [first, units) with k % nb_threads == id. */
    uint64_t mine = 0;
    uint64_t k0 = first + (w->id + sh->nb_threads - first % sh->nb_threads) %
                              sh->nb_threads;
    if (k0 < units) {
        mine = (units - 1 - k0) / sh->nb_threads + 1;
    }
    uint64_t k = k0 + below(w, mine) * sh->nb_threads;
    uint64_t start = k * unit;
    if (whole) {
        *off = start;
        *len = unit;
        return;
    }
    /* Sector-aligned half the time (the O_DIRECT path), else any byte. */
    if (below(w, 2)) {
        uint64_t sectors = unit / 512;
        uint64_t a = below(w, sectors);
        *off = start + a * 512;
        *len = (1 + below(w, sectors - a)) * 512;
    } else {
        uint64_t a = below(w, unit);
        *off = start + a;
        *len = 1 + below(w, unit - a);
    }
}

/* Random bytes written at off, to the image and to the mirror. */
static int random_write(struct worker *w, uint64_t off, uint64_t len)
{
    for (uint64_t j = 0; j < len; j++) {
        w->buf[j] = (uint8_t)next(w);
    }
    if (qimg_pwrite(w->sh->img, w->buf, (size_t)len, off) < 0) {
        return fail(w, "write", off, len);
    }
    return mirror_write(w, w->buf, len, off);
}

static void *worker_main(void *opaque)
{
    struct worker *w = opaque;
    const struct shared *sh = w->sh;
    for (unsigned i = 0; i < sh->ops && !w->failed; i++) {
        uint64_t r = below(w, 100);
        uint64_t off, len;
        if (r < 45) {
            /* Data into a stripe (shared clusters). */
            pick(w, false, false, &off, &len);
            if (random_write(w, off, len) < 0) {
                return (void *)(intptr_t)-1;
            }
            w->counts[0]++;
        } else if (r < 52) {
            /* Zeros into a stripe. */
            pick(w, false, false, &off, &len);
            unsigned flags = below(w, 2) ? QIMG_ZERO_MAY_UNMAP : 0;
            if (qimg_pwrite_zeroes(sh->img, off, len, flags) < 0) {
                return (void *)(intptr_t)fail(w, "zero write", off, len);
            }
            memset(w->buf, 0, (size_t)len);
            mirror_write(w, w->buf, len, off);
            w->counts[1]++;
        } else if (r < 70) {
            /* Data into an own cluster, partial or whole. */
            pick(w, true, below(w, 3) == 0, &off, &len);
            if (random_write(w, off, len) < 0) {
                return (void *)(intptr_t)-1;
            }
            w->counts[2]++;
        } else if (r < 80) {
            /* A whole own cluster zeroed or discarded. */
            pick(w, true, true, &off, &len);
            uint64_t how = below(w, 3);
            int ret = how == 2 ? qimg_discard(sh->img, off, len)
                               : qimg_pwrite_zeroes(sh->img, off, len,
                                                    how ? QIMG_ZERO_MAY_UNMAP
                                                        : 0);
            if (ret < 0) {
                return (void *)(intptr_t)fail(w, "zero/discard", off, len);
            }
            if (how != 2 || !sh->discard_keeps) {
                memset(w->buf, 0, (size_t)len);
                mirror_write(w, w->buf, len, off);
            }
            w->counts[3]++;
        } else if (r < 97) {
            /* Own bytes read back. */
            pick(w, below(w, 2), false, &off, &len);
            if (qimg_pread(sh->img, w->buf, (size_t)len, off) < 0) {
                return (void *)(intptr_t)fail(w, "read", off, len);
            }
            if (pread(sh->mirror, w->check, (size_t)len, (off_t)off) !=
                    (ssize_t)len ||
                memcmp(w->buf, w->check, (size_t)len) != 0) {
                fprintf(stderr, "thread %u: read at %" PRIu64 "+%" PRIu64
                        " differs from the mirror\n", w->id, off, len);
                w->failed = 1;
                break;
            }
            w->counts[4]++;
        } else {
            if (qimg_flush(sh->img) < 0) {
                return (void *)(intptr_t)fail(w, "flush", 0, 0);
            }
            w->counts[5]++;
        }
    }
    return NULL;
}

int main(int argc, char **argv)
{
    unsigned nb = 8, ops = 2000;
    uint64_t seed = (uint64_t)time(NULL) * 1000 + (uint64_t)getpid() % 1000;
    const char *env = getenv("QIMG_SEED");
    if (env) {
        seed = strtoull(env, NULL, 10);
    }
    unsigned flags = QIMG_OPEN_RDWR;
    bool keeps = false;
    int c;
    while ((c = getopt(argc, argv, "t:n:r:dk")) != -1) {
        switch (c) {
        case 't':
            nb = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case 'n':
            ops = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case 'r':
            seed = strtoull(optarg, NULL, 10);
            break;
        case 'd':
            flags |= QIMG_OPEN_CACHE_DIRECT;
            break;
        case 'k':
            keeps = true;
            break;
        default:
            return 2;
        }
    }
    if (argc - optind != 2 || nb < 1 || nb > MAX_THREADS) {
        fprintf(stderr, "usage: write_threads [-t THREADS] [-n OPS] "
                "[-r SEED] [-d] [-k] IMAGE MIRROR.raw\n");
        return 2;
    }
    printf("seed=%" PRIu64 " threads=%u ops=%u\n", seed, nb, ops);
    fflush(stdout);
    struct shared sh = {.nb_threads = nb, .ops = ops, .discard_keeps = keeps};
    sh.img = qimg_open(argv[optind], "qcow2", flags);
    if (!sh.img) {
        fprintf(stderr, "%s\n", qimg_get_error());
        return 1;
    }
    if (!qimg_concurrent_io(sh.img)) {
        fprintf(stderr, "qcow2 handles should allow concurrent I/O\n");
        return 1;
    }
    sh.mirror = open(argv[optind + 1], O_RDWR);
    if (sh.mirror < 0) {
        perror(argv[optind + 1]);
        return 1;
    }
    sh.size = (uint64_t)qimg_get_size(sh.img);
    sh.cluster = qimg_get_cluster_size(sh.img);
    sh.stripe = sh.cluster / 4 < 512 ? 512 : sh.cluster / 4;
    if (sh.cluster == 0 || sh.size < 4 * sh.cluster * nb) {
        fprintf(stderr, "the image is too small for %u threads\n", nb);
        return 1;
    }
    static struct worker w[MAX_THREADS];
    int ret = 0;
    for (unsigned i = 0; i < nb; i++) {
        w[i].sh = &sh;
        w[i].id = i;
        w[i].rng = seed * 2654435761u + i + 1;
        if (posix_memalign((void **)&w[i].buf, BUF_ALIGN, sh.cluster) ||
            posix_memalign((void **)&w[i].check, BUF_ALIGN, sh.cluster)) {
            fprintf(stderr, "out of memory\n");
            return 1;
        }
    }
    for (unsigned i = 0; i < nb; i++) {
        if (pthread_create(&w[i].thread, NULL, worker_main, &w[i]) != 0) {
            fprintf(stderr, "could not start a thread\n");
            return 1;
        }
    }
    uint64_t total[6] = {0};
    for (unsigned i = 0; i < nb; i++) {
        pthread_join(w[i].thread, NULL);
        ret |= w[i].failed;
        for (int k = 0; k < 6; k++) {
            total[k] += w[i].counts[k];
        }
        free(w[i].buf);
        free(w[i].check);
    }
    printf("stripe writes %" PRIu64 ", stripe zero writes %" PRIu64
           ", cluster writes %" PRIu64 ", cluster zero/discards %" PRIu64
           ", reads %" PRIu64 ", flushes %" PRIu64 "\n",
           total[0], total[1], total[2], total[3], total[4], total[5]);
    if (qimg_close(sh.img) < 0) {
        fprintf(stderr, "close: %s\n", qimg_get_error());
        ret = 1;
    }
    close(sh.mirror);
    return ret ? 1 : 0;
}
