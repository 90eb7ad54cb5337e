/*
 * crash_qcow2: crash-safety test of the qcow2 write path over the crash
 * leaf (lib/io/crash.h, after SQLite's crash VFS).
 *
 *   crash_qcow2 -d DIR [-c CONFIG] [-s SEED] [-n SEEDS] [-q N] [-v]
 *
 * For each configuration (or the one named CONFIG, a glob) and each seed
 * SEED .. SEED + SEEDS - 1 (env QIMG_CRASH_SEED, default from the time;
 * QIMG_CRASH_SEEDS, default 2), an image is created, loaded into a crash
 * leaf and opened through the internal image API; a random workload from
 * the operation table (ops[] below) runs on it while a mirror of the
 * guest disk follows every operation.  Then the image a crash would have
 * left is built at cut points: a short workload is cut during every
 * flush, right after every flush and at a random point between two
 * flushes; a long one at random points.  Each crashed image must:
 *
 *   - open read-only and read-write (which repairs a dirty image) and
 *     pass qimg check with no corruption and no check error.  Leaks are
 *     allowed only when the cut leaves work unfinished (changes after the
 *     last completed qimg flush: an interrupted allocation or an
 *     interrupted flush whose frees were not applied); a cut right after
 *     a completed flush must show none.  A dirty image (lazy refcounts)
 *     has stale refcounts by design: its read-only check is not
 *     meaningful (QEMU's is not either), its repaired read-write open
 *     must be clean, leaks included.
 *   - read back every byte as it was at the last completed flush, or, for
 *     a byte an operation issued since then (up to the cut) covers, as
 *     that operation left it: unflushed writes may or may not have
 *     happened, sector by sector, but a byte never reads a value no
 *     operation gave it.  The guest size is the flushed one or one a
 *     pending resize set.
 *   - take more writes after the crash (read-write) and stay clean.
 *
 * A sample of crashed images (and of the images after those writes) is
 * left in DIR as cut-*.qcow2 for qemu-img check (crash_qcow2.sh); -q N
 * keeps N per run (default 3).
 *
 * Internal snapshots are created, applied and deleted among the other
 * operations.  A cut inside one of them may leave refcounts and COPIED
 * flags disagreeing (they are separate writes, as in QEMU); only those
 * mismatches and leaks are allowed then, and qimg check -r all must
 * leave the image clean.
 *
 * Commit, commit -d, safe and unsafe rebase run among the operations of
 * the configurations with backing files, and in a third workload built
 * around them (RUN_WHOLE): the image and its backing files share one
 * crash log, so a cut is one power failure for all of them (see
 * struct run_file).
 *
 * Adding an operation: write a run
 * function that performs it on S.img and describes what it does to the
 * guest disk as effects (ranges that now hold given bytes or zeros, and
 * a new size), and add a row to ops[].  The checker needs nothing else:
 * a crash may show each effect of an operation issued after the last
 * flush, or not.  An operation with no guest effect (snapshot create)
 * adds no effect; what it must keep intact (the snapshot's contents) can
 * be checked in check_cut() through its own mirror.
 */
#include <errno.h>
#include <fnmatch.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/error.h"
#include "core/image.h"
#include "io/crash.h"
#include "qimg/qimg.h"

/* ---- PRNG ------------------------------------------------------------- */

static uint64_t rng_state;

static uint64_t rng_next(void)
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t rnd(uint64_t n)
{
    return n ? rng_next() % n : 0;
}

static uint64_t rnd_range(uint64_t lo, uint64_t hi)
{
    return lo + rnd(hi - lo + 1);
}

static uint64_t min_u64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

static uint64_t max_u64(uint64_t a, uint64_t b)
{
    return a > b ? a : b;
}

/* ---- Configurations ---------------------------------------------------- */

struct config {
    const char *name;
    const char *opts;  /* qcow2 creation options */
    uint64_t size;     /* initial guest size */
    uint64_t cluster;
    uint64_t subcluster;
    /*
     * Over a backing file of size bytes: base.raw, or base.qcow2 with
     * qbase.  The other format is the alternative backing file (alt.qcow2
     * or alt.raw, shorter) that rebase moves the image to and from, and
     * commit writes into when the image is over it.
     */
    bool backing;
    bool v2;           /* compat=0.10 */
    bool qbase;
};

static const struct config configs[] = {
    {"c512-r16", "cluster_size=512,refcount_bits=16", 256 << 10, 512, 512,
     false, false, false},
    {"c4k-r1", "cluster_size=4096,refcount_bits=1", 1 << 20, 4096, 4096,
     false, false, false},
    {"c64k-r64", "cluster_size=65536,refcount_bits=64", 4 << 20, 65536,
     65536, false, false, false},
    {"c64k-extl2", "cluster_size=65536,extended_l2=on", 4 << 20, 65536,
     2048, false, false, false},
    {"c4k-lazy", "cluster_size=4096,lazy_refcounts=on", 1 << 20, 4096, 4096,
     false, false, false},
    {"c4k-backing", "cluster_size=4096", 1 << 20, 4096, 4096, true, false,
     false},
    {"c32k-extl2-lazy-backing",
     "cluster_size=32768,extended_l2=on,lazy_refcounts=on", 2 << 20, 32768,
     1024, true, false, false},
    {"v2-c4k-backing", "cluster_size=4096,compat=0.10", 1 << 20, 4096, 4096,
     true, true, false},
    {"v2-c1k-r1", "cluster_size=1024,compat=0.10,refcount_bits=16",
     512 << 10, 1024, 1024, false, true, false},
    /* Commit granularity (the base's 4 KiB clusters) below the image's. */
    {"c16k-qbase", "cluster_size=16384", 1 << 20, 16384, 16384, true, false,
     true},
};
#define NCONFIGS (sizeof(configs) / sizeof(configs[0]))

/* ---- Operations and their effects -------------------------------------- */

/* One change an operation made to the guest disk. */
struct effect {
    uint64_t off, len;
    uint8_t *data; /* NULL: zeros */
};

#define MAX_EFFECTS 4

/* One operation of the workload, as run. */
struct op_rec {
    int kind;            /* index into ops[] */
    uint64_t io_start;   /* crash leaf log position before and after it */
    uint64_t io_end;
    bool is_flush;       /* a completed flush: everything before is durable */
    uint64_t size_after; /* guest size after it */
    int neffects;
    struct effect fx[MAX_EFFECTS];
};

struct op_desc {
    const char *name;
    unsigned weight;
    /* May it run now (NULL: always)? */
    bool (*usable)(void);
    /* Perform it on S.img and describe its effects in r. */
    void (*run)(struct op_rec *r);
};

/*
 * The files of a run, each on a crash leaf of one shared log (one cut is
 * one power failure for all): the image, its initial backing file and
 * the alternative one.  Every open by name (the test's, qimg_commit's,
 * qimg_rebase's) reaches them through resolve_leaf(): during the
 * workload as new handles on the crash leaves, while a cut is checked as
 * memory leaves over the files that cut left.
 */
enum { F_TOP, F_BASE, F_ALT, NFILES };

struct run_file {
    const char *name; /* in S.dir; NULL: not in this run */
    const char *fmt;
    char *path;
    struct qimg_io *leaf; /* the test's own handle */
    uint8_t *crashed;     /* as the cut being checked left it */
    size_t crashed_len;
};

static struct {
    const struct config *cfg;
    char *dir;
    char *path; /* the image's name (in dir, so base.raw resolves) */
    uint64_t seed;
    struct qimg_image *img;
    struct qimg_io *leaf; /* the image's crash leaf (files[F_TOP].leaf) */
    struct run_file files[NFILES];
    int backing;          /* the file the image is over, or -1 */
    bool resolve_crashed; /* resolve_leaf gives the crashed files */
    uint64_t size;        /* current guest size */
    uint64_t max_size;    /* the mirrors' length */
    uint8_t *base;        /* backing content (max_size, zeros past it) */
    uint8_t *mirror;      /* the guest disk now */
    struct op_rec *recs;
    size_t nrecs, recs_cap;
    bool verbose;
    unsigned keep_samples;
    /* The crashed image being checked, saved when a check fails. */
    const uint8_t *cur_buf;
    size_t cur_len;
    /* Totals for the summary. */
    uint64_t cuts, clean_cuts, leaky_cuts, dirty_cuts, pending_changes,
        torn_changes, bytes_checked, samples;
} S;

static void write_file(const char *path, const uint8_t *p, size_t len);
static char *join(const char *a, const char *b);

static void die(const char *fmt, ...)
{
    va_list ap;
    if (S.cur_buf) {
        const uint8_t *buf = S.cur_buf;
        S.cur_buf = NULL;
        char *path = join(S.dir, "failed-crash.qcow2");
        write_file(path, buf, S.cur_len);
        fprintf(stderr, "crash_qcow2: the crashed image is in %s\n", path);
        free(path);
        for (int i = F_BASE; i < NFILES; i++) {
            const struct run_file *f = &S.files[i];
            if (!f->name || !f->crashed) {
                continue;
            }
            char name[64];
            snprintf(name, sizeof(name), "failed-crash-%s", f->name);
            path = join(S.dir, name);
            write_file(path, f->crashed, f->crashed_len);
            fprintf(stderr, "crash_qcow2: its %s is in %s\n", f->name,
                    path);
            free(path);
        }
    }
    fprintf(stderr, "crash_qcow2: FAIL config=%s seed=%" PRIu64 ": ",
            S.cfg ? S.cfg->name : "-", S.seed);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fprintf(stderr, "replay: QIMG_CRASH_SEED=%" PRIu64 " QIMG_CRASH_SEEDS=1 "
            "crash_qcow2 -c %s -d DIR -v\n", S.seed,
            S.cfg ? S.cfg->name : "'*'");
    exit(1);
}

static void die_api(const char *what)
{
    die("%s: %s (errno %d)", what, qimg_get_error(), qimg_get_errno());
}

static uint8_t *xmalloc(size_t n)
{
    uint8_t *p = malloc(n ? n : 1);
    if (!p) {
        die("out of memory");
    }
    return p;
}

static void add_effect(struct op_rec *r, uint64_t off, uint64_t len,
                       const uint8_t *data)
{
    if (len == 0) {
        return;
    }
    if (r->neffects == MAX_EFFECTS) {
        die("too many effects");
    }
    struct effect *e = &r->fx[r->neffects++];
    e->off = off;
    e->len = len;
    e->data = NULL;
    if (data) {
        e->data = xmalloc((size_t)len);
        memcpy(e->data, data, (size_t)len);
    }
}

static void apply_effects(uint8_t *m, const struct op_rec *r)
{
    for (int i = 0; i < r->neffects; i++) {
        const struct effect *e = &r->fx[i];
        if (e->data) {
            memcpy(m + e->off, e->data, (size_t)e->len);
        } else {
            memset(m + e->off, 0, (size_t)e->len);
        }
    }
}

/* Ranges crowd onto cluster and subcluster edges. */
static uint64_t pick_offset(void)
{
    const struct config *c = S.cfg;
    uint64_t nclusters = (S.size + c->cluster - 1) / c->cluster;
    uint64_t base = rnd(nclusters) * c->cluster;
    uint64_t off;
    switch (rnd(6)) {
    case 0:
    case 1:
        off = base;
        break;
    case 2:
        off = base + rnd(c->cluster / c->subcluster) * c->subcluster;
        break;
    case 3:
        off = base + rnd(c->cluster / 512) * 512;
        break;
    default:
        off = base + rnd(c->cluster);
        break;
    }
    return off >= S.size ? S.size - 1 : off;
}

static void pick_range(uint64_t *off, uint64_t *len)
{
    const struct config *c = S.cfg;
    uint64_t l;
    switch (rnd(5)) {
    case 0:
        l = rnd_range(1, 600);
        break;
    case 1:
        l = c->subcluster * rnd_range(1, 3);
        break;
    case 2:
        l = c->cluster * rnd_range(1, 3);
        break;
    case 3:
        l = rnd_range(1, max_u64(8 * c->cluster, 64 << 10));
        break;
    default:
        l = rnd_range(1, 2 * c->cluster);
        break;
    }
    *off = pick_offset();
    *len = min_u64(l, S.size - *off);
}

/* Incompressible, repeated-byte or text-like data (never all zero). */
static void fill(uint8_t *buf, uint64_t len)
{
    unsigned kind = (unsigned)rnd(3);
    if (kind == 0) {
        for (uint64_t i = 0; i < len; i++) {
            buf[i] = (uint8_t)rng_next();
        }
    } else if (kind == 1) {
        memset(buf, (int)rnd_range(1, 255), (size_t)len);
    } else {
        static const char words[] = "crash qcow2 flush sector torn ";
        uint64_t shift = rnd(sizeof(words) - 1);
        for (uint64_t i = 0; i < len; i++) {
            buf[i] = (uint8_t)words[(i + shift) % (sizeof(words) - 1)];
        }
    }
}

static void op_write(struct op_rec *r)
{
    uint64_t off, len;
    pick_range(&off, &len);
    uint8_t *buf = xmalloc((size_t)len);
    fill(buf, len);
    if (qimg_pwrite(S.img, buf, (size_t)len, off) < 0) {
        die_api("qimg_pwrite");
    }
    add_effect(r, off, len, buf);
    free(buf);
}

static void op_zero(struct op_rec *r)
{
    uint64_t off, len;
    pick_range(&off, &len);
    unsigned flags = rnd(2) ? QIMG_ZERO_MAY_UNMAP : 0;
    if (qimg_pwrite_zeroes(S.img, off, len, flags) < 0) {
        die_api("qimg_pwrite_zeroes");
    }
    add_effect(r, off, len, NULL);
}

/*
 * A discard zeroes the clusters wholly inside it (v3, and v2 without a
 * backing file; the image's partial last cluster counts as whole when the
 * range reaches the end); v2 over a backing file refuses to discard.
 * The rule write_random.c checks against qemu-io.
 */
static void op_discard(struct op_rec *r)
{
    uint64_t off, len;
    pick_range(&off, &len);
    if (qimg_discard(S.img, off, len) < 0) {
        die_api("qimg_discard");
    }
    if (S.cfg->v2 && S.backing >= 0) {
        return;
    }
    uint64_t cs = S.cfg->cluster;
    uint64_t f = (off + cs - 1) / cs * cs;
    uint64_t e = (off + len) / cs * cs;
    if (off + len == S.size) {
        e = S.size;
    }
    f = min_u64(f, S.size);
    if (e > f) {
        add_effect(r, f, e - f, NULL);
    }
}

static void op_compressed(struct op_rec *r)
{
    uint64_t cs = S.cfg->cluster;
    uint64_t nclusters = (S.size + cs - 1) / cs;
    uint64_t off = rnd(nclusters) * cs;
    uint64_t len = min_u64(cs, S.size - off);
    uint8_t *buf = xmalloc((size_t)len);
    fill(buf, len);
    if (qimg_pwrite_compressed(S.img, buf, (size_t)len, off) < 0) {
        die_api("qimg_pwrite_compressed");
    }
    add_effect(r, off, len, buf);
    free(buf);
}

/*
 * Grow or shrink by up to a few clusters, in 512-byte steps (not cluster
 * aligned, so a shrink leaves a partial last cluster that a later growth
 * must show as zeros).  The bytes past a shrink read as zero if the disk
 * grows back: the effect zeroes them.
 */
static void op_resize(struct op_rec *r)
{
    uint64_t step = 512 * rnd_range(1, 4 * S.cfg->cluster / 512 + 2);
    uint64_t init = S.cfg->size;
    uint64_t size;
    if (rnd(2) && S.size > init / 2 + step) {
        size = S.size - step;
    } else {
        size = min_u64(S.size + step, S.max_size);
    }
    if (size == S.size) {
        return;
    }
    if (qimg_resize(S.img, size, NULL,
                    size < S.size ? QIMG_RESIZE_SHRINK : 0) < 0) {
        die_api("qimg_resize");
    }
    uint64_t lo = min_u64(size, S.size), hi = max_u64(size, S.size);
    add_effect(r, lo, hi - lo, NULL);
    S.size = size;
}

/*
 * Internal snapshots: created, applied and deleted among the writes, so
 * cuts land inside their refcount, L1-copy, table and header steps.  Each
 * is remembered with the guest disk it saved, which applying it brings
 * back (all of it or, cut before the flush, none of it).
 */
#define MAX_SNAPSHOTS 3

static struct {
    char name[16];
    uint8_t *disk;
    uint64_t size;
} snaps[MAX_SNAPSHOTS];
static int nb_snaps;
static unsigned snap_counter;

static bool have_snapshot(void)
{
    return nb_snaps > 0;
}

/* 1-bit refcounts cannot count a cluster shared with a snapshot. */
static bool room_for_snapshot(void)
{
    const char *rb = strstr(S.cfg->opts, "refcount_bits=");
    return nb_snaps < MAX_SNAPSHOTS && !(rb && atoi(rb + 14) == 1);
}

/* A resize with snapshots is refused on v2 and for shrinking: none then. */
static bool no_snapshot(void)
{
    return nb_snaps == 0;
}

static void op_snapshot_create(struct op_rec *r)
{
    (void)r;
    int k = nb_snaps;
    snprintf(snaps[k].name, sizeof(snaps[k].name), "s%u", snap_counter++);
    if (qimg_snapshot_create(S.img, snaps[k].name) < 0) {
        die_api("qimg_snapshot_create");
    }
    snaps[k].disk = xmalloc((size_t)S.size);
    memcpy(snaps[k].disk, S.mirror, (size_t)S.size);
    snaps[k].size = S.size;
    nb_snaps++;
}

static void op_snapshot_apply(struct op_rec *r)
{
    int k = (int)rnd((uint64_t)nb_snaps);
    struct qimg_snapshot_select sel = {.name = snaps[k].name};
    if (qimg_snapshot_apply(S.img, &sel) < 0) {
        die_api("qimg_snapshot_apply");
    }
    add_effect(r, 0, snaps[k].size, snaps[k].disk);
    if (S.size > snaps[k].size) {
        add_effect(r, snaps[k].size, S.size - snaps[k].size, NULL);
    }
    S.size = snaps[k].size;
}

static void op_snapshot_delete(struct op_rec *r)
{
    (void)r;
    int k = (int)rnd((uint64_t)nb_snaps);
    struct qimg_snapshot_select sel = {.name = snaps[k].name};
    if (qimg_snapshot_delete(S.img, &sel) < 0) {
        die_api("qimg_snapshot_delete");
    }
    free(snaps[k].disk);
    snaps[k] = snaps[nb_snaps - 1];
    nb_snaps--;
}

static void forget_snapshots(void)
{
    for (int k = 0; k < nb_snaps; k++) {
        free(snaps[k].disk);
    }
    nb_snaps = 0;
}

static void op_flush(struct op_rec *r)
{
    if (qimg_flush(S.img) < 0) {
        die_api("qimg_flush");
    }
    r->is_flush = true;
}

/* ---- Commit and rebase ------------------------------------------------ */

/*
 * qemu-img commit and rebase are whole programs: each opens the image by
 * name, works and closes it.  So the workload closes its image (a
 * flush), makes the library call (whose opens reach the crash leaves
 * through resolve_leaf) and opens the image again, flushed: the
 * operation ends with every file durable.  A commit writes the backing
 * file before it empties the image, a safe rebase the image before its
 * header names the new backing file: neither may change what the guest
 * reads, at any cut, so they record no effect.  An unsafe rebase changes
 * the header only: the guest then reads the new backing file wherever
 * the image allocates nothing.  Internal snapshots would read through
 * the changed backing file too: these run without any.
 */

static void open_top(void)
{
    S.img = qimg_open(S.path, "qcow2", QIMG_OPEN_RDWR);
    if (!S.img) {
        die_api("qimg_open");
    }
}

static void close_top(void)
{
    if (qimg_close(S.img) < 0) {
        S.img = NULL;
        die_api("qimg_close");
    }
    S.img = NULL;
}

/* The guest disk through the image's chain as it now stands. */
static uint8_t *read_guest(void)
{
    uint8_t *buf = xmalloc((size_t)S.size);
    if (qimg_pread(S.img, buf, (size_t)S.size, 0) < 0) {
        die_api("qimg_pread");
    }
    return buf;
}

/* Does the guest read buf where the image allocates (all: everywhere)? */
static void check_guest(const uint8_t *buf, bool all, const char *what)
{
    uint64_t off = 0;
    while (off < S.size) {
        struct qimg_extent ext;
        if (qimg_block_status(S.img, off, S.size - off, &ext) < 0) {
            die_api("qimg_block_status");
        }
        bool here = ext.depth == 0 && (ext.flags & QIMG_EXTENT_ALLOCATED);
        for (uint64_t b = off; (all || here) && b < off + ext.length; b++) {
            if (buf[b] != S.mirror[b]) {
                die("%s changed guest byte %" PRIu64 " (0x%02x, was "
                    "0x%02x)", what, b, buf[b], S.mirror[b]);
            }
        }
        off += ext.length;
    }
}

static void end_whole_op(struct op_rec *r, const char *what)
{
    open_top();
    if (qimg_flush(S.img) < 0) {
        die_api("qimg_flush");
    }
    for (int i = 0; i < NFILES; i++) {
        const struct run_file *f = &S.files[i];
        uint64_t n = f->leaf ? io_crash_unflushed(f->leaf) : 0;
        if (n > 0 && !getenv("NOUNFL")) {
            die("%s left %" PRIu64 " changes to %s unflushed", what, n,
                f->name);
        }
    }
    r->is_flush = true;
}

static bool can_commit(void)
{
    return S.backing >= 0 && nb_snaps == 0;
}

static bool can_rebase(void)
{
    return S.cfg->backing && nb_snaps == 0;
}

static void commit_op(struct op_rec *r, bool drop)
{
    close_top();
    struct qimg_commit_params p = {
        .filename = S.path,
        .format = "qcow2",
        .drop = drop,
    };
    if (qimg_commit(&p) < 0) {
        die_api("qimg_commit");
    }
    end_whole_op(r, "commit");
    uint8_t *buf = read_guest();
    check_guest(buf, true, "commit");
    free(buf);
}

static void op_commit(struct op_rec *r)
{
    commit_op(r, false);
}

/* -d: the image keeps its clusters. */
static void op_commit_drop(struct op_rec *r)
{
    commit_op(r, true);
}

/* A backing file for rebase other than the current one (-1: none). */
static int pick_backing(void)
{
    int choice[NFILES], n = 0;
    for (int i = F_BASE; i < NFILES; i++) {
        if (i != S.backing) {
            choice[n++] = i;
        }
    }
    if (S.backing >= 0) {
        choice[n++] = -1;
    }
    return choice[rnd((uint64_t)n)];
}

static void rebase_op(struct op_rec *r, bool unsafe)
{
    int to = pick_backing();
    close_top();
    struct qimg_rebase_params p = {
        .filename = S.path,
        .format = "qcow2",
        .backing_file = to >= 0 ? S.files[to].name : "",
        .backing_format = to >= 0 ? S.files[to].fmt : NULL,
        .unsafe = unsafe,
    };
    if (S.verbose) {
        fprintf(stderr, "  rebase%s onto %s\n", unsafe ? " -u" : "",
                to >= 0 ? S.files[to].name : "nothing");
    }
    if (qimg_rebase(&p) < 0) {
        die_api("qimg_rebase");
    }
    S.backing = to;
    end_whole_op(r, "rebase");
    uint8_t *buf = read_guest();
    check_guest(buf, !unsafe, unsafe ? "rebase -u" : "rebase");
    if (unsafe) {
        add_effect(r, 0, S.size, buf);
    }
    free(buf);
}

static void op_rebase(struct op_rec *r)
{
    rebase_op(r, false);
}

static void op_rebase_unsafe(struct op_rec *r)
{
    rebase_op(r, true);
}

/*
 * The workload's operations.  New ones are new rows: see the comment at
 * the top of the file.
 */
static const struct op_desc ops[] = {
    {"write", 30, NULL, op_write},
    {"zero", 10, NULL, op_zero},
    {"discard", 8, NULL, op_discard},
    {"compressed", 6, NULL, op_compressed},
    {"resize", 3, no_snapshot, op_resize},
    {"snapshot-create", 2, room_for_snapshot, op_snapshot_create},
    {"snapshot-apply", 1, have_snapshot, op_snapshot_apply},
    {"snapshot-delete", 1, have_snapshot, op_snapshot_delete},
    {"flush", 12, NULL, op_flush},
    {"commit", 1, can_commit, op_commit},
    {"commit-d", 1, can_commit, op_commit_drop},
    {"rebase", 1, can_rebase, op_rebase},
    {"rebase-u", 1, can_rebase, op_rebase_unsafe},
};
#define NOPS (sizeof(ops) / sizeof(ops[0]))

static void run_op(int kind)
{
    if (S.nrecs == S.recs_cap) {
        S.recs_cap = S.recs_cap ? S.recs_cap * 2 : 64;
        S.recs = realloc(S.recs, S.recs_cap * sizeof(*S.recs));
        if (!S.recs) {
            die("out of memory");
        }
    }
    struct op_rec *r = &S.recs[S.nrecs];
    memset(r, 0, sizeof(*r));
    r->kind = kind;
    r->io_start = io_crash_position(S.leaf);
    ops[kind].run(r);
    r->io_end = io_crash_position(S.leaf);
    r->size_after = S.size;
    apply_effects(S.mirror, r);
    if (S.verbose) {
        fprintf(stderr, "  op#%zu %s io=[%" PRIu64 ",%" PRIu64 ")",
                S.nrecs, ops[kind].name, r->io_start, r->io_end);
        for (int i = 0; i < r->neffects; i++) {
            fprintf(stderr, " %s@%" PRIu64 "+%" PRIu64,
                    r->fx[i].data ? "data" : "zero", r->fx[i].off,
                    r->fx[i].len);
        }
        fprintf(stderr, " size=%" PRIu64 "\n", S.size);
    }
    S.nrecs++;
}

static int pick_op(void)
{
    unsigned total = 0;
    for (size_t i = 0; i < NOPS; i++) {
        if (!ops[i].usable || ops[i].usable()) {
            total += ops[i].weight;
        }
    }
    unsigned x = (unsigned)rnd(total);
    for (size_t i = 0; i < NOPS; i++) {
        if (!ops[i].usable || ops[i].usable()) {
            if (x < ops[i].weight) {
                return (int)i;
            }
            x -= ops[i].weight;
        }
    }
    return 0;
}

/* ---- Setup -------------------------------------------------------------- */

static char *join(const char *a, const char *b)
{
    size_t n = strlen(a) + strlen(b) + 2;
    char *p = (char *)xmalloc(n);
    snprintf(p, n, "%s/%s", a, b);
    return p;
}

static uint8_t *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        die("open %s: %s", path, strerror(errno));
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = xmalloc((size_t)n);
    if (n > 0 && fread(p, 1, (size_t)n, f) != (size_t)n) {
        die("read %s", path);
    }
    fclose(f);
    *len = (size_t)n;
    return p;
}

static void write_file(const char *path, const uint8_t *p, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f || (len && fwrite(p, 1, len, f) != len) || fclose(f) != 0) {
        die("write %s: %s", path, strerror(errno));
    }
}

/* Backing file contents: random sectors, repeated bytes and holes. */
static void make_content(uint8_t *p, uint64_t n)
{
    for (uint64_t off = 0; off < n; off += 512) {
        switch (rnd(3)) {
        case 0:
            memset(p + off, 0, 512);
            break;
        case 1:
            memset(p + off, (int)rnd_range(1, 255), 512);
            break;
        default:
            for (int i = 0; i < 512; i++) {
                p[off + i] = (uint8_t)rng_next();
            }
            break;
        }
    }
}

static bool all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i]) {
            return false;
        }
    }
    return true;
}

static void create_image(const char *path, const char *optstr, uint64_t size,
                         const char *backing, const char *backing_fmt)
{
    struct qimg_opts *opts = qimg_opts_new();
    char sz[32];
    snprintf(sz, sizeof(sz), "%" PRIu64, size);
    if (!opts || qimg_opts_parse(opts, optstr) < 0 ||
        qimg_opts_set(opts, "size", sz) < 0) {
        die_api("options");
    }
    if (backing && (qimg_opts_set(opts, "backing_file", backing) < 0 ||
                    qimg_opts_set(opts, "backing_fmt", backing_fmt) < 0)) {
        die_api("options");
    }
    if (qimg_create_prepare(path, "qcow2", opts, 0) < 0 ||
        qimg_create(path, "qcow2", opts) < 0) {
        die_api("qimg_create");
    }
    qimg_opts_free(opts);
}

/*
 * A backing file in S.dir holding content (size bytes): raw, or qcow2
 * with 4 KiB clusters (64 KiB for the alternative one) whose zero
 * clusters stay unallocated.
 */
static void make_backing(int i, const char *name, const char *fmt,
                         const uint8_t *content, uint64_t size)
{
    struct run_file *f = &S.files[i];
    f->name = name;
    f->fmt = fmt;
    f->path = join(S.dir, name);
    if (strcmp(fmt, "raw") == 0) {
        write_file(f->path, content, (size_t)size);
        return;
    }
    uint64_t cs = i == F_BASE ? 4096 : 65536;
    create_image(f->path, cs == 4096 ? "cluster_size=4096"
                                     : "cluster_size=65536", size, NULL,
                 NULL);
    struct qimg_image *img = qimg_open(f->path, "qcow2", QIMG_OPEN_RDWR);
    if (!img) {
        die_api("qimg_open");
    }
    for (uint64_t off = 0; off < size; off += cs) {
        size_t n = (size_t)min_u64(cs, size - off);
        if (!all_zero(content + off, n) &&
            qimg_pwrite(img, content + off, n, off) < 0) {
            die_api("qimg_pwrite");
        }
    }
    if (qimg_close(img) < 0) {
        die_api("qimg_close");
    }
}

/* Put file i on a crash leaf (the image's first: the others share its log). */
static void load_file(int i)
{
    struct run_file *f = &S.files[i];
    size_t len;
    uint8_t *data = read_file(f->path, &len);
    struct qimg_io *peer = i == F_TOP ? NULL : S.files[F_TOP].leaf;
    if (io_crash_open_peer(peer, f->path, data, len, 0, &f->leaf) < 0) {
        die_api("io_crash_open_peer");
    }
    free(data);
}

/* See struct run_file. */
static int resolve_leaf(const char *filename, unsigned io_flags, void *opaque,
                        struct qimg_io **out)
{
    (void)opaque;
    const char *slash = strrchr(filename, '/');
    const char *name = slash ? slash + 1 : filename;
    for (int i = 0; i < NFILES; i++) {
        struct run_file *f = &S.files[i];
        if (!f->leaf || strcmp(f->name, name) != 0) {
            continue;
        }
        unsigned flags = io_flags & IO_RDWR;
        int ret;
        if (S.resolve_crashed) {
            ret = io_mem_open(filename, f->crashed, f->crashed_len, flags,
                              out);
        } else {
            ret = io_crash_dup(f->leaf, flags, out);
        }
        return ret < 0 ? ret : 1;
    }
    return 0;
}

/*
 * Create the image (and the backing files) on disk, put them on crash
 * leaves and open the image over them.  The files stay on disk: opening
 * a backing chain looks at them (loops, canonical names).
 */
static void setup(void)
{
    const struct config *c = S.cfg;
    S.size = c->size;
    S.max_size = c->size + c->size / 2;
    S.base = calloc(1, (size_t)S.max_size);
    S.mirror = xmalloc((size_t)S.max_size);
    if (!S.base) {
        die("out of memory");
    }
    memset(S.files, 0, sizeof(S.files));
    char name[64];
    snprintf(name, sizeof(name), "img-%s.qcow2", c->name);
    S.path = join(S.dir, name);
    S.files[F_TOP].name = "";
    S.files[F_TOP].fmt = "qcow2";
    S.files[F_TOP].path = join(S.dir, name);
    S.backing = -1;
    if (c->backing) {
        make_content(S.base, c->size);
        uint64_t alt_size = c->size / 4 * 3;
        uint8_t *alt = xmalloc((size_t)alt_size);
        make_content(alt, alt_size);
        make_backing(F_BASE, c->qbase ? "base.qcow2" : "base.raw",
                     c->qbase ? "qcow2" : "raw", S.base, c->size);
        make_backing(F_ALT, c->qbase ? "alt.raw" : "alt.qcow2",
                     c->qbase ? "raw" : "qcow2", alt, alt_size);
        free(alt);
        S.backing = F_BASE;
    }
    create_image(S.path, c->opts, c->size,
                 c->backing ? S.files[F_BASE].name : NULL,
                 c->backing ? S.files[F_BASE].fmt : NULL);
    memcpy(S.mirror, S.base, (size_t)S.max_size);
    for (int i = 0; i < NFILES; i++) {
        if (S.files[i].path) {
            load_file(i);
        }
    }
    S.files[F_TOP].name = strrchr(S.path, '/') + 1;
    S.leaf = S.files[F_TOP].leaf;
    /*
     * Known limit (qcow2_change_backing, as QEMU's header update): a
     * rebase rewrites the header cluster in one write, and header,
     * extensions and backing file name span two 512-byte sectors; torn
     * between them, a crash can pair the old backing format with the
     * new name.  Modelled here as a disk with 4 KiB physical sectors,
     * which keep the header whole; everything else tears by 512 bytes.
     */
    io_crash_set_atomic(S.leaf, 4096);
    open_top();
}

static void teardown(void)
{
    if (S.img) {
        qimg_close(S.img);
        S.img = NULL;
    }
    for (size_t i = 0; i < S.nrecs; i++) {
        for (int j = 0; j < S.recs[i].neffects; j++) {
            free(S.recs[i].fx[j].data);
        }
    }
    free(S.recs);
    S.recs = NULL;
    S.nrecs = S.recs_cap = 0;
    forget_snapshots();
    free(S.base);
    free(S.mirror);
    free(S.path);
    for (int i = 0; i < NFILES; i++) {
        if (S.files[i].leaf) {
            io_close(S.files[i].leaf);
        }
        free(S.files[i].path);
    }
    memset(S.files, 0, sizeof(S.files));
    S.base = S.mirror = NULL;
    S.path = NULL;
    S.leaf = NULL;
}

/* ---- Checking a cut ------------------------------------------------------ */

/* The flushed state the cuts are checked against, replayed in order. */
static struct {
    uint8_t *m;     /* the guest disk after recs[0, n) */
    size_t n;
    uint64_t size;
} R;

static void replay_to(size_t n)
{
    if (n < R.n) {
        memcpy(R.m, S.base, (size_t)S.max_size);
        R.n = 0;
        R.size = S.cfg->size;
    }
    for (; R.n < n; R.n++) {
        apply_effects(R.m, &S.recs[R.n]);
        R.size = S.recs[R.n].size_after;
    }
}

struct cut_view {
    uint64_t cut;
    size_t flushed;     /* recs[0, flushed) are durable */
    size_t first_pending, end_pending; /* recs issued, maybe not durable */
    bool clean;         /* nothing was issued after the last flush */
};

static void view_of(uint64_t cut, struct cut_view *v)
{
    v->cut = cut;
    v->flushed = 0;
    for (size_t i = 0; i < S.nrecs; i++) {
        if (S.recs[i].is_flush && S.recs[i].io_end <= cut) {
            v->flushed = i + 1;
        }
    }
    v->first_pending = v->flushed;
    v->end_pending = v->first_pending;
    while (v->end_pending < S.nrecs &&
           S.recs[v->end_pending].io_start < cut) {
        v->end_pending++;
    }
    uint64_t durable_end = v->flushed ? S.recs[v->flushed - 1].io_end : 0;
    v->clean = durable_end == cut;
}

/* May guest byte b read x at this cut? */
static bool byte_allowed(const struct cut_view *v, uint64_t b, uint8_t x)
{
    if (R.m[b] == x) {
        return true;
    }
    for (size_t i = v->first_pending; i < v->end_pending; i++) {
        const struct op_rec *r = &S.recs[i];
        for (int j = 0; j < r->neffects; j++) {
            const struct effect *e = &r->fx[j];
            if (b >= e->off && b - e->off < e->len &&
                (e->data ? e->data[b - e->off] : 0) == x) {
                return true;
            }
        }
    }
    return false;
}

static void check_size(const struct cut_view *v, uint64_t size)
{
    if (size == R.size) {
        return;
    }
    for (size_t i = v->first_pending; i < v->end_pending; i++) {
        if (S.recs[i].size_after == size) {
            return;
        }
    }
    die("cut %" PRIu64 ": guest size %" PRIu64 ", flushed %" PRIu64
        " and no pending resize to it", v->cut, size, R.size);
}

static void check_data(struct qimg_image *img, const struct cut_view *v,
                       const char *what)
{
    uint64_t size = (uint64_t)qimg_get_size(img);
    check_size(v, size);
    uint8_t *buf = xmalloc((size_t)size);
    if (qimg_pread(img, buf, (size_t)size, 0) < 0) {
        die("cut %" PRIu64 " (%s): read: %s", v->cut, what,
            qimg_get_error());
    }
    for (uint64_t b = 0; b < size; b++) {
        /* Most of the disk reads as flushed: skip equal pieces fast. */
        if (b % 4096 == 0 && size - b >= 4096 &&
            memcmp(buf + b, R.m + b, 4096) == 0) {
            b += 4095;
            continue;
        }
        if (!byte_allowed(v, b, buf[b])) {
            die("cut %" PRIu64 " (%s): guest byte %" PRIu64 " (cluster %"
                PRIu64 " + %" PRIu64 ") reads 0x%02x: flushed 0x%02x, and "
                "no operation since wrote it (ops %zu..%zu pending)",
                v->cut, what, b, b / S.cfg->cluster, b % S.cfg->cluster,
                buf[b], R.m[b], v->first_pending, v->end_pending);
        }
    }
    S.bytes_checked += size;
    free(buf);
}

/* What the check lines said, for the leak rule. */
struct check_lines {
    const char *what;
    uint64_t leak_floor;  /* leaked clusters below this are not allowed */
    uint64_t bad_leaks;   /* leaked clusters below the floor */
    uint64_t first_bad;
    uint64_t copied_errors; /* OFLAG_COPIED mismatches */
};

static void check_line(const char *line, unsigned kind, void *opaque)
{
    (void)kind;
    struct check_lines *cl = opaque;
    unsigned long long c;
    if (S.verbose) {
        fprintf(stderr, "    check (%s): %s\n", cl->what, line);
    }
    if (strncmp(line, "ERROR OFLAG_COPIED ", 19) == 0) {
        cl->copied_errors++;
    }
    if (sscanf(line, "Leaked cluster %llu", &c) == 1 &&
        (uint64_t)c < cl->leak_floor) {
        if (cl->bad_leaks++ == 0) {
            cl->first_bad = c;
        }
    }
}

/*
 * The leak rules (leak_floor: leaked clusters at or past it are allowed):
 * LEAKS_ANY when the cut interrupted an allocation or a flush, LEAKS_NONE
 * for a cut right after a completed flush, and the crashed file's end in
 * clusters after a dirty image was repaired.  The repair (as QEMU's)
 * only sees clusters inside the file, so a refcount a lazy-refcount
 * image set for a cluster whose data never reached the file stays; it
 * shows as a leak once the file grows over it.
 */
#define LEAKS_ANY 0
#define LEAKS_NONE UINT64_MAX

/*
 * qimg check: no corruption, no check error, leaks only as allowed.
 * copied_ok: the cut interrupted a snapshot operation, whose refcount
 * and COPIED-flag updates (one table or block at a time, as QEMU makes
 * them) cannot change together: mismatches between the two are allowed
 * then, and nothing else.  They are harmless in the direction the
 * operations order them (a flag cleared early only costs a copy; a
 * refcount raised early only leaks while no snapshot names the cluster)
 * and qemu-img check -r all clears them.
 */
static int64_t check_image(struct qimg_image *img, const struct cut_view *v,
                           const char *what, uint64_t leak_floor,
                           bool copied_ok)
{
    struct qimg_check_result res;
    struct check_lines cl = {what, leak_floor, 0, 0, 0};
    memset(&res, 0, sizeof(res));
    if (qimg_check(img, 0, check_line, &cl, &res) < 0) {
        die("cut %" PRIu64 " (%s): check failed: %s", v->cut, what,
            qimg_get_error());
    }
    int64_t allowed = copied_ok ? (int64_t)cl.copied_errors : 0;
    if (res.corruptions != allowed || res.check_errors || cl.bad_leaks) {
        die("cut %" PRIu64 " (%s): check: %" PRId64 " corruptions, %" PRId64
            " leaks (%" PRIu64 " not allowed, the first cluster %" PRIu64
            "), %" PRId64 " check errors (run with -v for the lines)",
            v->cut, what, res.corruptions, res.leaks, cl.bad_leaks,
            cl.first_bad, res.check_errors);
    }
    return res.leaks;
}

static struct qimg_image *open_crashed(const uint8_t *buf, size_t len,
                                       unsigned flags, const char *what,
                                       uint64_t cut)
{
    struct qimg_io *io;
    if (io_mem_open(S.path, buf, len, flags & QIMG_OPEN_RDWR ? IO_RDWR : 0,
                    &io) < 0) {
        die_api("io_mem_open");
    }
    struct qimg_image *img;
    if (image_open_leaf(io, "qcow2", flags, &img) < 0) {
        die("cut %" PRIu64 ": open (%s): %s", cut, what, qimg_get_error());
    }
    return img;
}

static bool image_dirty(struct qimg_image *img)
{
    struct qimg_image_info *info = qimg_get_info(img);
    if (!info) {
        die_api("qimg_get_info");
    }
    bool dirty = info->dirty_flag;
    qimg_image_info_free(info);
    return dirty;
}

/* A few writes after the crash: the repaired image must stay sound. */
static void write_after(struct qimg_image *img, const struct cut_view *v)
{
    uint64_t size = (uint64_t)qimg_get_size(img);
    for (int i = 0; i < 4; i++) {
        uint64_t len = rnd_range(1, 2 * S.cfg->cluster);
        uint64_t off = rnd(size);
        len = min_u64(len, size - off);
        uint8_t *buf = xmalloc((size_t)len);
        uint8_t *back = xmalloc((size_t)len);
        fill(buf, len);
        if (S.verbose) {
            fprintf(stderr, "    write after the crash: %" PRIu64 "+%" PRIu64
                    "\n", off, len);
        }
        if (qimg_pwrite(img, buf, (size_t)len, off) < 0 ||
            qimg_flush(img) < 0 || qimg_pread(img, back, len, off) < 0) {
            die("cut %" PRIu64 ": writing after the crash: %s", v->cut,
                qimg_get_error());
        }
        if (memcmp(buf, back, (size_t)len) != 0) {
            die("cut %" PRIu64 ": a write after the crash reads back "
                "different data", v->cut);
        }
        free(buf);
        free(back);
    }
}

static void save_sample(const char *kind, uint64_t cut, const uint8_t *buf,
                        size_t len)
{
    char name[128];
    snprintf(name, sizeof(name), "cut-%s-%" PRIu64 "-%" PRIu64 "-%s.qcow2",
             S.cfg->name, S.seed, cut, kind);
    char *path = join(S.dir, name);
    write_file(path, buf, len);
    free(path);
}

/* Did the cut interrupt an operation whose name starts with prefix? */
static bool inside_op(uint64_t cut, const char *prefix)
{
    for (size_t i = 0; i < S.nrecs; i++) {
        const struct op_rec *r = &S.recs[i];
        if (strncmp(ops[r->kind].name, prefix, strlen(prefix)) == 0 &&
            r->io_start <= cut && cut < r->io_end) {
            return true;
        }
    }
    return false;
}

/*
 * The backing files as the cut left them, for resolve_leaf, and a check
 * of each qcow2 one: only a commit writes them (leaks allowed when the
 * cut interrupted it; its flushes leave none).
 */
static void build_backing(uint64_t cut, enum io_crash_fate fate,
                          const struct cut_view *v, bool sample)
{
    bool in_commit = inside_op(cut, "commit");
    for (int i = F_BASE; i < NFILES; i++) {
        struct run_file *f = &S.files[i];
        if (!f->leaf) {
            continue;
        }
        struct io_crash_stats st;
        if (io_crash_build(f->leaf, cut, fate, S.seed * 1000003 + cut + i,
                           &f->crashed, &f->crashed_len, &st) < 0) {
            die_api("io_crash_build");
        }
        S.pending_changes += st.pending;
        S.torn_changes += st.torn;
        if (strcmp(f->fmt, "qcow2") != 0) {
            continue;
        }
        char what[64];
        snprintf(what, sizeof(what), "%s read-only", f->name);
        struct qimg_image *img =
            open_crashed(f->crashed, f->crashed_len, QIMG_OPEN_NO_BACKING,
                         what, cut);
        if (image_dirty(img)) {
            die("cut %" PRIu64 ": %s is dirty", cut, f->name);
        }
        check_image(img, v, what, in_commit ? LEAKS_ANY : LEAKS_NONE,
                    false);
        qimg_close(img);
        if (sample && in_commit) {
            save_sample(i == F_BASE ? "base" : "alt", cut, f->crashed,
                        f->crashed_len);
        }
    }
}

static void free_backing(void)
{
    for (int i = F_BASE; i < NFILES; i++) {
        free(S.files[i].crashed);
        S.files[i].crashed = NULL;
    }
}

static void check_cut(uint64_t cut, enum io_crash_fate fate, bool sample)
{
    struct cut_view v;
    view_of(cut, &v);
    replay_to(v.flushed);
    uint8_t *buf;
    size_t len;
    struct io_crash_stats st;
    uint64_t fate_seed = S.seed * 1000003 + cut;
    if (io_crash_build(S.leaf, cut, fate, fate_seed, &buf, &len, &st) < 0) {
        die_api("io_crash_build");
    }
    S.cur_buf = buf;
    S.cur_len = len;
    S.files[F_TOP].crashed = buf;
    S.files[F_TOP].crashed_len = len;
    S.resolve_crashed = true;
    build_backing(cut, fate, &v, sample);
    S.cuts++;
    S.clean_cuts += v.clean;
    S.pending_changes += st.pending;
    S.torn_changes += st.torn;
    if (S.verbose) {
        fprintf(stderr, "  cut %" PRIu64 " fate=%d: ops %zu flushed, %zu.."
                "%zu pending; %" PRIu64 " changes pending (%" PRIu64
                " applied, %" PRIu64 " dropped, %" PRIu64 " torn)%s\n", cut,
                (int)fate, v.flushed, v.first_pending, v.end_pending,
                st.pending, st.applied, st.dropped, st.torn,
                v.clean ? " clean" : "");
    }

    /* Read-only, as the crash left it. */
    struct qimg_image *img = open_crashed(buf, len, 0, "read-only", cut);
    bool dirty = image_dirty(img);
    bool in_snapshot = inside_op(cut, "snapshot-");
    int64_t leaks = 0;
    if (dirty) {
        /* Lazy refcounts: stale by design until repaired. */
        S.dirty_cuts++;
        if (v.clean) {
            die("cut %" PRIu64 ": dirty after a completed flush", cut);
        }
    } else {
        leaks = check_image(img, &v, "read-only",
                            v.clean ? LEAKS_NONE : LEAKS_ANY, in_snapshot);
    }
    check_data(img, &v, "read-only");
    qimg_close(img);
    if (sample && !dirty && !in_snapshot) {
        save_sample("crashed", cut, buf, len);
    }

    /* Read-write: a dirty image is repaired at open, leaks and all. */
    img = open_crashed(buf, len, QIMG_OPEN_RDWR, "read-write", cut);
    if (image_dirty(img)) {
        die("cut %" PRIu64 ": still dirty after a read-write open", cut);
    }
    uint64_t floor = v.clean  ? LEAKS_NONE
                     : dirty  ? (len + S.cfg->cluster - 1) / S.cfg->cluster
                              : LEAKS_ANY;
    int64_t rw_leaks = check_image(img, &v, "read-write", floor,
                                   in_snapshot);
    if (in_snapshot) {
        /* What a user does after such a crash: qemu-img check -r all. */
        struct qimg_check_result res;
        memset(&res, 0, sizeof(res));
        if (qimg_check(img, QIMG_CHECK_FIX_LEAKS | QIMG_CHECK_FIX_ERRORS,
                       NULL, NULL, &res) < 0) {
            die("cut %" PRIu64 ": check -r all failed: %s", cut,
                qimg_get_error());
        }
        check_image(img, &v, "repaired", LEAKS_NONE, false);
        rw_leaks = leaks;
        /* Then, as after qemu-img check -r, a new open takes the writes. */
        if (qimg_flush(img) < 0) {
            die_api("qimg_flush");
        }
        size_t n;
        const uint8_t *fixed = io_mem_buffer(img->top->file, &n);
        uint8_t *copy = xmalloc(n);
        memcpy(copy, fixed, n);
        if (qimg_close(img) < 0) {
            die_api("qimg_close");
        }
        img = open_crashed(copy, n, QIMG_OPEN_RDWR, "repaired", cut);
        free(copy);
    }
    if (!dirty && rw_leaks != leaks) {
        die("cut %" PRIu64 ": %" PRId64 " leaks read-only, %" PRId64
            " read-write", cut, leaks, rw_leaks);
    }
    S.leaky_cuts += (dirty ? rw_leaks : leaks) > 0;
    check_data(img, &v, "read-write");
    write_after(img, &v);
    check_image(img, &v, "after writes", floor,
                false);
    if (qimg_flush(img) < 0) {
        die_api("qimg_flush");
    }
    if (sample) {
        size_t n;
        const uint8_t *after = io_mem_buffer(img->top->file, &n);
        save_sample("after", cut, after, n);
        S.samples++;
    }
    if (qimg_close(img) < 0) {
        die_api("qimg_close");
    }
    S.cur_buf = NULL;
    S.resolve_crashed = false;
    S.files[F_TOP].crashed = NULL;
    free_backing();
    free(buf);
}

/* ---- Runs ------------------------------------------------------------- */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The flush positions of every file of the run, sorted; *n of them. */
static uint64_t *all_flushes(uint64_t *n)
{
    uint64_t total = 0;
    for (int i = 0; i < NFILES; i++) {
        total += S.files[i].leaf ? io_crash_flushes(S.files[i].leaf) : 0;
    }
    uint64_t *pos = (uint64_t *)xmalloc((size_t)(total + 1) *
                                        sizeof(uint64_t));
    *n = 0;
    for (int i = 0; i < NFILES; i++) {
        struct qimg_io *leaf = S.files[i].leaf;
        uint64_t k = leaf ? io_crash_flushes(leaf) : 0;
        for (uint64_t f = 0; f < k; f++) {
            pos[(*n)++] = (uint64_t)io_crash_flush_position(leaf, f);
        }
    }
    qsort(pos, (size_t)*n, sizeof(uint64_t), cmp_u64);
    return pos;
}

/*
 * The workloads: short (24 random operations, cut during, right after
 * and somewhere before every flush), long (160, cut at random points)
 * and, for the configurations with backing files, whole: a few random
 * operations around each of commit, rebase, commit -d and rebase -u,
 * cut during and right after every flush inside them and at random
 * points between.
 */
enum run_kind { RUN_SHORT, RUN_LONG, RUN_WHOLE };
static const char *const run_names[] = {"short", "long", "whole"};
static const char *const whole_script[] = {"commit", "rebase", "commit-d",
                                           "rebase-u", "rebase"};
#define WHOLE_SCRIPT_LEN (sizeof(whole_script) / sizeof(whole_script[0]))
/* Random cuts inside each scripted operation. */
#define WHOLE_RANDOM_CUTS 2

static int find_op(const char *name)
{
    for (size_t i = 0; i < NOPS; i++) {
        if (strcmp(ops[i].name, name) == 0) {
            return (int)i;
        }
    }
    die("no operation %s", name);
    return -1;
}

/* A random operation that is neither a whole-image one nor a snapshot. */
static int pick_plain_op(void)
{
    for (;;) {
        int k = pick_op();
        if (ops[k].usable != can_commit && ops[k].usable != can_rebase &&
            strncmp(ops[k].name, "snapshot-", 9) != 0) {
            return k;
        }
    }
}

static void run_one(const struct config *c, uint64_t seed, enum run_kind kind)
{
    S.cfg = c;
    S.seed = seed;
    rng_state = seed ^ (kind == RUN_LONG    ? 0x5bd1e995ull
                        : kind == RUN_WHOLE ? 0x27d4eb2full
                                            : 0);
    uint64_t cuts0 = S.cuts, leaky0 = S.leaky_cuts, dirty0 = S.dirty_cuts;
    setup();
    if (S.verbose) {
        fprintf(stderr, "config=%s seed=%" PRIu64 " %s workload\n", c->name,
                seed, run_names[kind]);
    }
    if (kind == RUN_WHOLE) {
        for (size_t i = 0; i < WHOLE_SCRIPT_LEN; i++) {
            for (int j = 0; j < 4; j++) {
                run_op(pick_plain_op());
            }
            int k = find_op(whole_script[i]);
            if (ops[k].usable()) {
                run_op(k);
            }
        }
        run_op(pick_plain_op());
    } else {
        size_t nops = kind == RUN_LONG ? 160 : 24;
        for (size_t i = 0; i < nops; i++) {
            run_op(pick_op());
        }
    }
    /* The last operations are cut too, before a final flush. */
    uint64_t end = io_crash_position(S.leaf);

    /* Cut points, in increasing order (the replays advance). */
    uint64_t nflush;
    uint64_t *flushes = all_flushes(&nflush);
    size_t cap = (size_t)(3 * nflush + 64 +
                          WHOLE_RANDOM_CUTS * S.nrecs), n = 0;
    uint64_t *cuts = (uint64_t *)xmalloc(cap * sizeof(uint64_t));
    if (kind == RUN_SHORT) {
        uint64_t prev = 0;
        for (uint64_t f = 0; f < nflush; f++) {
            uint64_t p = flushes[f];
            cuts[n++] = p;     /* during the flush */
            cuts[n++] = p + 1; /* right after it */
            if (p > prev + 1) {
                cuts[n++] = rnd_range(prev + 1, p - 1);
            }
            prev = p + 1;
        }
        cuts[n++] = end;
    } else if (kind == RUN_LONG) {
        for (int i = 0; i < 24; i++) {
            cuts[n++] = rnd_range(1, end);
        }
        for (int i = 0; i < 8 && nflush; i++) {
            cuts[n++] = flushes[rnd(nflush)];
        }
    } else {
        for (size_t i = 0; i < S.nrecs; i++) {
            const struct op_rec *r = &S.recs[i];
            if (ops[r->kind].usable != can_commit &&
                ops[r->kind].usable != can_rebase) {
                continue;
            }
            for (uint64_t f = 0; f < nflush; f++) {
                if (flushes[f] >= r->io_start && flushes[f] < r->io_end) {
                    cuts[n++] = flushes[f];
                    cuts[n++] = flushes[f] + 1;
                }
            }
            for (int j = 0; j < WHOLE_RANDOM_CUTS; j++) {
                cuts[n++] = rnd_range(r->io_start + 1, r->io_end);
            }
        }
        cuts[n++] = end;
    }
    free(flushes);
    qsort(cuts, n, sizeof(uint64_t), cmp_u64);
    R.m = xmalloc((size_t)S.max_size);
    memcpy(R.m, S.base, (size_t)S.max_size);
    R.n = 0;
    R.size = c->size;
    unsigned samples = 0;
    for (size_t i = 0; i < n; i++) {
        if (i > 0 && cuts[i] == cuts[i - 1]) {
            continue;
        }
        enum io_crash_fate fate = IO_CRASH_RANDOM;
        if (i % 7 == 3) {
            fate = IO_CRASH_DROP_ALL;
        } else if (i % 7 == 5) {
            fate = IO_CRASH_APPLY_ALL;
        }
        bool sample = samples < S.keep_samples && rnd(n) < 2 * S.keep_samples;
        samples += sample;
        check_cut(cuts[i], fate, sample);
    }
    free(cuts);
    free(R.m);
    R.m = NULL;
    printf("config=%s seed=%" PRIu64 " %s: %zu ops, %" PRIu64 " flushes, "
           "%" PRIu64 " io changes, %" PRIu64 " cuts (%" PRIu64
           " with leaks, %" PRIu64 " dirty)\n", c->name, seed,
           run_names[kind], S.nrecs, nflush, end, S.cuts - cuts0,
           S.leaky_cuts - leaky0, S.dirty_cuts - dirty0);
    fflush(stdout);
    teardown();
}

static void usage(void)
{
    fprintf(stderr, "usage: crash_qcow2 -d DIR [-c CONFIG] [-s SEED] "
            "[-n SEEDS] [-q SAMPLES] [-v]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *only = NULL, *env;
    uint64_t seed = 0, nseeds = 2;
    bool have_seed = false;
    S.keep_samples = 3;
    if ((env = getenv("QIMG_CRASH_SEED")) && *env) {
        seed = strtoull(env, NULL, 10);
        have_seed = true;
    }
    if ((env = getenv("QIMG_CRASH_SEEDS")) && *env) {
        nseeds = strtoull(env, NULL, 10);
    }
    int opt;
    while ((opt = getopt(argc, argv, "d:c:s:n:q:v")) != -1) {
        switch (opt) {
        case 'd':
            S.dir = optarg;
            break;
        case 'c':
            only = optarg;
            break;
        case 's':
            seed = strtoull(optarg, NULL, 10);
            have_seed = true;
            break;
        case 'n':
            nseeds = strtoull(optarg, NULL, 10);
            break;
        case 'q':
            S.keep_samples = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case 'v':
            S.verbose = true;
            break;
        default:
            usage();
        }
    }
    if (!S.dir || optind != argc) {
        usage();
    }
    if (!have_seed) {
        seed = (uint64_t)time(NULL) % 1000000 * 1000 + (uint64_t)getpid() %
                                                            1000;
    }
    printf("seed=%" PRIu64 " seeds=%" PRIu64 "\n", seed, nseeds);
    image_set_leaf_resolver(resolve_leaf, NULL);
    fflush(stdout);
    unsigned matched = 0;
    for (size_t i = 0; i < NCONFIGS; i++) {
        if (only && fnmatch(only, configs[i].name, 0) != 0) {
            continue;
        }
        matched++;
        for (uint64_t k = 0; k < nseeds; k++) {
            /* A qcow2 base: only the commit and rebase workload. */
            if (!configs[i].qbase) {
                run_one(&configs[i], seed + k, RUN_SHORT);
                run_one(&configs[i], seed + k, RUN_LONG);
            }
            /* One seed of these: each cuts every flush of its commits. */
            if (configs[i].backing && k == 0) {
                run_one(&configs[i], seed + k, RUN_WHOLE);
            }
        }
    }
    if (!matched) {
        fprintf(stderr, "crash_qcow2: no configuration matches '%s'\n",
                only);
        return 2;
    }
    printf("crash_qcow2: %" PRIu64 " cuts (%" PRIu64 " clean, %" PRIu64
           " with leaks, %" PRIu64 " dirty), %" PRIu64 " pending changes "
           "(%" PRIu64 " torn), %" PRIu64 " bytes checked, %" PRIu64
           " samples\n", S.cuts, S.clean_cuts, S.leaky_cuts, S.dirty_cuts,
           S.pending_changes, S.torn_changes, S.bytes_checked, S.samples);
    return 0;
}
