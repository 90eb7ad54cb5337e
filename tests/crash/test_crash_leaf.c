/*
 * The crash leaf's model (lib/io/crash.h) and crash regressions of the
 * qcow2 write path found by crash_qcow2.
 *
 * Leaf: a flush makes what precedes it durable; a crash drops, applies or
 * tears (by 512-byte sector) each later change, in order; a cut at a
 * flush's position is a crash during it.
 *
 * Regression (resize.c): growing a qcow2 image switched the header to
 * the new size before the new area was zeroed, so a crash in between
 * showed old bytes there: the old last cluster's bytes past the old end
 * (data from before a shrink), or the backing file over a range a shrink
 * had unmapped.  Every cut of such a growth must show the old size or
 * zeros.
 *
 * Regression (backing.c): emptying an image after a commit switched to
 * the new layout with no flush between its steps (see test_commit_empty).
 * Guard: a safe rebase reads as before at every cut (test_rebase).  Both
 * put the image and its backing files on crash leaves of one log, opened
 * by name through the leaf resolver (image_set_leaf_resolver).
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/image.h"
#include "io/crash.h"
#include "qimg/qimg.h"
#include "../unit/tap.h"

static char dir[] = "/tmp/qimg-test-crash.XXXXXX";

static char *path(const char *name)
{
    static char buf[256];
    snprintf(buf, sizeof(buf), "%s/%s", dir, name);
    return buf;
}

/* ---- The leaf ----------------------------------------------------------- */

static int all_bytes(const uint8_t *p, size_t len, uint8_t c)
{
    for (size_t i = 0; i < len; i++) {
        if (p[i] != c) {
            return 0;
        }
    }
    return 1;
}

static void test_leaf(void)
{
    uint8_t init[2048], a[1024], b[1024];
    memset(init, 'i', sizeof(init));
    memset(a, 'a', sizeof(a));
    memset(b, 'b', sizeof(b));
    struct qimg_io *io;
    TAP_OK(io_crash_open("leaf", init, sizeof(init), IO_RDWR, &io) == 0);
    TAP_OK(io_pwrite(io, a, sizeof(a), 0) == 0);      /* entry 0 */
    TAP_OK(io_flush(io) == 0);                        /* entry 1 */
    TAP_OK(io_pwrite(io, b, sizeof(b), 512) == 0);    /* entry 2 */
    TAP_OK(io_truncate(io, 4096) == 0);               /* entry 3 */
    tap_eq_u64(io_crash_position(io), 4, "four log entries");
    tap_eq_u64(io_crash_flushes(io), 1, "one flush");
    tap_eq_u64((uint64_t)io_crash_flush_position(io, 0), 1,
               "the flush is entry 1");
    TAP_OK(io_crash_flush_position(io, 1) == -1);

    /* Reads see everything. */
    uint8_t r[4096];
    TAP_OK(io_pread(io, r, sizeof(r), 0) == 0);
    TAP_OK(all_bytes(r, 512, 'a') && all_bytes(r + 512, 1024, 'b') &&
           all_bytes(r + 1536, 512, 'i') && all_bytes(r + 2048, 2048, 0));

    uint8_t *buf;
    size_t len;
    struct io_crash_stats st;
    /* A crash during the flush: nothing of it is durable. */
    TAP_OK(io_crash_build(io, 1, IO_CRASH_DROP_ALL, 1, &buf, &len, &st) ==
           0);
    tap_eq_u64(len, 2048, "during the flush: the old size");
    TAP_OK(all_bytes(buf, 2048, 'i'));
    tap_eq_u64(st.pending, 1, "during the flush: the write is pending");
    free(buf);
    /* After it, dropping the rest: the first write only. */
    TAP_OK(io_crash_build(io, 4, IO_CRASH_DROP_ALL, 1, &buf, &len, &st) ==
           0);
    TAP_OK(len == 2048 && all_bytes(buf, 1024, 'a') &&
           all_bytes(buf + 1024, 1024, 'i'));
    tap_eq_u64(st.pending, 2, "two changes after the flush");
    free(buf);
    /* Applying the rest: what reads saw. */
    TAP_OK(io_crash_build(io, 4, IO_CRASH_APPLY_ALL, 1, &buf, &len, &st) ==
           0);
    TAP_OK(len == 4096 && memcmp(buf, r, 4096) == 0);
    free(buf);
    /* Random fates: each sector of the second write is old or new. */
    int mixed = 0, torn_ok = 1;
    for (uint64_t seed = 0; seed < 64; seed++) {
        if (io_crash_build(io, 3, IO_CRASH_RANDOM, seed, &buf, &len,
                           &st) < 0) {
            torn_ok = 0;
            continue;
        }
        int ok = len == 2048 && all_bytes(buf, 512, 'a');
        int news = 0;
        for (int s = 1; s < 3; s++) {
            uint8_t old = s == 1 ? 'a' : 'i';
            ok = ok && (all_bytes(buf + s * 512, 512, old) ||
                        all_bytes(buf + s * 512, 512, 'b'));
            news += buf[s * 512] == 'b';
        }
        ok = ok && all_bytes(buf + 1536, 512, 'i');
        mixed |= news == 1;
        torn_ok &= ok;
        free(buf);
    }
    tap_ok(torn_ok, "a random crash tears by whole sectors only");
    tap_ok(mixed, "some random crash tore the write");
    /* Earlier cuts after later ones replay from the start. */
    TAP_OK(io_crash_build(io, 0, IO_CRASH_APPLY_ALL, 1, &buf, &len, &st) ==
           0);
    TAP_OK(len == 2048 && all_bytes(buf, 2048, 'i'));
    free(buf);
    TAP_OK(io_crash_build(io, 5, IO_CRASH_APPLY_ALL, 1, &buf, &len, &st) ==
           -EINVAL);
    io_close(io);
}

/*
 * Peers share one clock (one power failure), each file's flushes make
 * only its own changes durable; a second handle is the same file.
 */
static void test_peers(void)
{
    uint8_t init[1024], a[512], b[512];
    memset(init, 'i', sizeof(init));
    memset(a, 'a', sizeof(a));
    memset(b, 'b', sizeof(b));
    struct qimg_io *fa, *fb, *fa2;
    TAP_OK(io_crash_open("A", init, sizeof(init), IO_RDWR, &fa) == 0);
    TAP_OK(io_crash_open_peer(fa, "B", init, sizeof(init), IO_RDWR, &fb) ==
           0);
    TAP_OK(io_pwrite(fa, a, sizeof(a), 0) == 0);   /* 0 */
    TAP_OK(io_pwrite(fb, b, sizeof(b), 0) == 0);   /* 1 */
    TAP_OK(io_flush(fa) == 0);                     /* 2 */
    TAP_OK(io_pwrite(fa, b, sizeof(b), 512) == 0); /* 3 */
    tap_eq_u64(io_crash_position(fb), 4, "peers: one clock");
    tap_eq_u64(io_crash_flushes(fb), 0, "peers: B has no flush");
    tap_eq_u64((uint64_t)io_crash_flush_position(fa, 0), 2,
               "peers: A's flush is at 2");
    tap_eq_u64(io_crash_unflushed(fa), 1, "peers: one change of A pending");
    tap_eq_u64(io_crash_unflushed(fb), 1, "peers: one change of B pending");
    uint8_t *buf;
    size_t len;
    struct io_crash_stats st;
    TAP_OK(io_crash_build(fb, 4, IO_CRASH_DROP_ALL, 1, &buf, &len, &st) ==
           0 && len == 1024 && all_bytes(buf, 1024, 'i'));
    tap_eq_u64(st.pending, 1, "peers: A's flush leaves B's write pending");
    free(buf);
    TAP_OK(io_crash_build(fb, 4, IO_CRASH_APPLY_ALL, 1, &buf, &len, &st) ==
           0 && all_bytes(buf, 512, 'b') && all_bytes(buf + 512, 512, 'i'));
    free(buf);
    TAP_OK(io_crash_build(fa, 2, IO_CRASH_DROP_ALL, 1, &buf, &len, &st) ==
           0 && all_bytes(buf, 1024, 'i'));
    free(buf);
    TAP_OK(io_crash_build(fa, 4, IO_CRASH_DROP_ALL, 1, &buf, &len, &st) ==
           0 && all_bytes(buf, 512, 'a') && all_bytes(buf + 512, 512, 'i'));
    tap_eq_u64(st.durable_pos, 2, "peers: A durable up to its flush");
    free(buf);
    /* A second handle writes the same file; closing it keeps the file. */
    TAP_OK(io_crash_dup(fa, IO_RDWR, &fa2) == 0);
    TAP_OK(io_pwrite(fa2, a, sizeof(a), 512) == 0); /* 4 */
    io_close(fa2);
    uint8_t r[1024];
    TAP_OK(io_pread(fa, r, sizeof(r), 0) == 0 && all_bytes(r, 1024, 'a'));
    tap_eq_u64(io_crash_position(fb), 5, "peers: the handle's write counts");
    tap_eq_u64(io_crash_unflushed(fa), 2, "peers: two changes of A pending");
    TAP_OK(io_crash_dup(fb, 0, &fa2) == 0 && io_pwrite(fa2, a, 1, 0) < 0);
    io_close(fa2);
    io_close(fa);
    /* The clock outlives A. */
    TAP_OK(io_crash_build(fb, 5, IO_CRASH_APPLY_ALL, 1, &buf, &len, &st) ==
           0 && all_bytes(buf, 512, 'b'));
    free(buf);
    io_close(fb);

    /* An atomic first piece tears whole: all old or all new. */
    TAP_OK(io_crash_open("C", init, sizeof(init), IO_RDWR, &fa) == 0);
    io_crash_set_atomic(fa, 1024);
    uint8_t a2[1024];
    memset(a2, 'a', sizeof(a2));
    TAP_OK(io_pwrite(fa, a2, sizeof(a2), 0) == 0);
    int whole = 1, torn = 0;
    for (uint64_t seed = 0; seed < 32; seed++) {
        if (io_crash_build(fa, 1, IO_CRASH_RANDOM, seed, &buf, &len, &st) <
            0) {
            whole = 0;
            continue;
        }
        whole &= all_bytes(buf, 1024, 'a') || all_bytes(buf, 1024, 'i');
        torn += st.torn > 0;
        free(buf);
    }
    tap_ok(whole && torn > 0, "atomic: a torn write keeps the piece whole");
    io_close(fa);
}

/* ---- Resize regression --------------------------------------------------- */

static uint8_t *read_whole(const char *p, size_t *len)
{
    FILE *f = fopen(p, "rb");
    if (!f) {
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return buf;
}

/*
 * Create a qcow2 image of 64 KiB (4 KiB clusters, over base.raw when
 * backing), fill it with 0xaa, flush, shrink to small, flush, and grow
 * back to 64 KiB on a crash leaf; then every cut from the shrink's end
 * on, with every fate, must read the grown area as zero when it shows
 * the new size.
 */
static void test_grow(const char *name, bool backing, uint64_t small)
{
    const uint64_t size = 64 << 10;
    struct qimg_opts *opts = qimg_opts_new();
    qimg_opts_parse(opts, "cluster_size=4096,size=65536");
    if (backing) {
        uint8_t base[64 << 10];
        memset(base, 0xbb, sizeof(base));
        FILE *f = fopen(path("base.raw"), "wb");
        TAP_OK(f && fwrite(base, 1, sizeof(base), f) == sizeof(base));
        if (f) {
            fclose(f);
        }
        qimg_opts_set(opts, "backing_file", "base.raw");
        qimg_opts_set(opts, "backing_fmt", "raw");
    }
    char *img_path = strdup(path(name));
    TAP_OK(qimg_create_prepare(img_path, "qcow2", opts, 0) == 0 &&
           qimg_create(img_path, "qcow2", opts) == 0);
    qimg_opts_free(opts);
    size_t len;
    uint8_t *data = read_whole(img_path, &len);
    struct qimg_io *leaf;
    struct qimg_image *img = NULL;
    TAP_OK(data && io_crash_open(img_path, data, len, IO_RDWR, &leaf) == 0 &&
           image_open_leaf(leaf, "qcow2", QIMG_OPEN_RDWR, &img) == 0);
    free(data);
    if (!img) {
        free(img_path);
        return;
    }
    uint8_t *buf = malloc(size);
    memset(buf, 0xaa, size);
    TAP_OK(qimg_pwrite(img, buf, size, 0) == 0 && qimg_flush(img) == 0);
    TAP_OK(qimg_resize(img, small, NULL, QIMG_RESIZE_SHRINK) == 0 &&
           qimg_flush(img) == 0);
    uint64_t from = io_crash_position(leaf);
    TAP_OK(qimg_resize(img, size, NULL, 0) == 0 && qimg_flush(img) == 0);
    uint64_t to = io_crash_position(leaf);
    int bad = 0, grown = 0;
    for (uint64_t cut = from; cut <= to; cut++) {
        for (int fate = 0; fate < 3; fate++) {
            uint8_t *cb;
            size_t cl;
            struct io_crash_stats st;
            if (io_crash_build(leaf, cut, (enum io_crash_fate)fate, cut, &cb,
                               &cl, &st) < 0) {
                bad++;
                continue;
            }
            struct qimg_io *io;
            struct qimg_image *c = NULL;
            if (io_mem_open(img_path, cb, cl, 0, &io) < 0 ||
                image_open_leaf(io, "qcow2", 0, &c) < 0) {
                bad++;
                free(cb);
                continue;
            }
            uint64_t got = (uint64_t)qimg_get_size(c);
            memset(buf, 0x55, size);
            if (got == size) {
                grown++;
                if (qimg_pread(c, buf, size, 0) < 0 ||
                    !all_bytes(buf, small, 0xaa) ||
                    !all_bytes(buf + small, size - small, 0)) {
                    printf("# %s: cut %llu fate %d: the grown area is not "
                           "zero\n", name, (unsigned long long)cut, fate);
                    bad++;
                }
            } else if (got != small) {
                bad++;
            }
            qimg_close(c);
            free(cb);
        }
    }
    char what[128];
    snprintf(what, sizeof(what), "%s: every crash while growing shows the "
             "old size or zeros", name);
    tap_ok(bad == 0, what);
    snprintf(what, sizeof(what), "%s: some crashes show the new size", name);
    tap_ok(grown > 0, what);
    free(buf);
    qimg_close(img);
    unlink(img_path);
    free(img_path);
}

/* ---- Commit and rebase over two crash leaves ---------------------------- */

/*
 * The files of one scenario, on crash leaves of one log, reached by name
 * through the leaf resolver: new handles on the crash leaves while the
 * operation runs, memory leaves over the crashed files while a cut is
 * checked.
 */
enum { SC_TOP, SC_BASE, SC_NEW, SC_FILES };
static struct {
    const char *name[SC_FILES];
    struct qimg_io *leaf[SC_FILES];
    uint8_t *crashed[SC_FILES];
    size_t crashed_len[SC_FILES];
    int crashed_mode;
} sc;

static int sc_resolve(const char *filename, unsigned io_flags, void *opaque,
                      struct qimg_io **out)
{
    (void)opaque;
    const char *slash = strrchr(filename, '/');
    const char *name = slash ? slash + 1 : filename;
    for (int i = 0; i < SC_FILES; i++) {
        if (!sc.leaf[i] || strcmp(sc.name[i], name) != 0) {
            continue;
        }
        int ret = sc.crashed_mode
                      ? io_mem_open(filename, sc.crashed[i],
                                    sc.crashed_len[i], io_flags & IO_RDWR,
                                    out)
                      : io_crash_dup(sc.leaf[i], io_flags & IO_RDWR, out);
        return ret < 0 ? ret : 1;
    }
    return 0;
}

static void sc_load(int i, const char *name)
{
    size_t len;
    uint8_t *data = read_whole(path(name), &len);
    sc.name[i] = name;
    TAP_OK(data && io_crash_open_peer(i ? sc.leaf[0] : NULL, path(name),
                                      data, len, 0, &sc.leaf[i]) == 0);
    free(data);
}

static void sc_close(void)
{
    for (int i = 0; i < SC_FILES; i++) {
        if (sc.leaf[i]) {
            io_close(sc.leaf[i]);
        }
        sc.leaf[i] = NULL;
    }
}

static int write_raw(const char *name, uint8_t c, size_t len)
{
    uint8_t *buf = malloc(len);
    FILE *f = fopen(path(name), "wb");
    int ok = buf && f;
    if (ok) {
        memset(buf, c, len);
        ok = fwrite(buf, 1, len, f) == len;
    }
    if (f) {
        ok = fclose(f) == 0 && ok;
    }
    free(buf);
    return ok;
}

static int all_ok_check(struct qimg_image *img)
{
    struct qimg_check_result res;
    memset(&res, 0, sizeof(res));
    return qimg_check(img, 0, NULL, NULL, &res) == 0 &&
           res.corruptions == 0 && res.check_errors == 0;
}

/*
 * Every cut of the log from "from" on, with every fate: the image must
 * read want (size bytes) through the chain the crash left, and it and
 * every qcow2 file must check without corruption (after the repair a
 * read-write open makes of a dirty image).  Returns the bad cuts.
 */
static int sc_check_cuts(const char *top, uint64_t from, const uint8_t *want,
                         uint64_t size, const char *what)
{
    uint64_t to = io_crash_position(sc.leaf[SC_TOP]);
    int bad = 0;
    uint8_t *buf = malloc(size);
    for (uint64_t cut = from; cut <= to && buf; cut++) {
        for (int fate = 0; fate < 3; fate++) {
            int ok = 1;
            for (int i = 0; i < SC_FILES; i++) {
                struct io_crash_stats st;
                sc.crashed[i] = NULL;
                if (sc.leaf[i] &&
                    io_crash_build(sc.leaf[i], cut, (enum io_crash_fate)fate,
                                   cut * 3 + (uint64_t)i, &sc.crashed[i],
                                   &sc.crashed_len[i], &st) < 0) {
                    ok = 0;
                }
            }
            sc.crashed_mode = 1;
            struct qimg_image *img = ok ? qimg_open(path(top), "qcow2", 0)
                                        : NULL;
            ok = img && (uint64_t)qimg_get_size(img) == size &&
                 qimg_pread(img, buf, size, 0) == 0 &&
                 memcmp(buf, want, size) == 0;
            qimg_close(img);
            for (int i = 0; ok && i < SC_FILES; i++) {
                if (!sc.leaf[i] || strstr(sc.name[i], ".raw")) {
                    continue;
                }
                img = qimg_open(path(sc.name[i]), "qcow2",
                                QIMG_OPEN_RDWR | QIMG_OPEN_NO_BACKING);
                ok = img && all_ok_check(img);
                qimg_close(img);
            }
            sc.crashed_mode = 0;
            if (!ok) {
                if (bad++ == 0) {
                    printf("# %s: cut %llu fate %d: %s\n", what,
                           (unsigned long long)cut, fate,
                           img ? "wrong data or corruption"
                               : qimg_get_error());
                }
            }
            for (int i = 0; i < SC_FILES; i++) {
                free(sc.crashed[i]);
                sc.crashed[i] = NULL;
            }
        }
    }
    free(buf);
    return bad;
}

/*
 * Does the image's L1 table lie outside cluster 3 (header field at 40),
 * with something else in use there (cs-byte clusters)?
 */
static int l1_moved_and_reused(const char *name, uint64_t cs)
{
    size_t len;
    uint8_t *h = read_whole(path(name), &len);
    uint64_t off = 0;
    int used = 0;
    for (int i = 0; h && len >= 48 && i < 8; i++) {
        off = off << 8 | h[40 + i];
    }
    for (uint64_t i = 3 * cs; h && i < 4 * cs && i < len; i++) {
        used |= h[i] != 0;
    }
    free(h);
    return off != 3 * cs && used;
}

/*
 * Regression (backing.c, make_completely_empty): emptying the image
 * after a commit zeroed its old L1 table and the clusters of the new
 * layout (refcount table, refcount block, L1 table in clusters 1..) and
 * switched the header to them with no flush between: a crash could
 * leave the header naming the new L1 table over clusters whose zeroing
 * was lost, or the old L1 table naming data clusters already zeroed.
 * Harmless while clusters 1.. hold only the same metadata, as after
 * creation; here a growth moved the L1 table and an L2 table took its
 * old cluster 3.
 * Every cut of the commit must read the image as before it.
 */
static void test_commit_empty(const char *what, const char *create_opts)
{
    const uint64_t size = 96 << 10;
    TAP_OK(write_raw("cbase.raw", 0xbb, size));
    struct qimg_opts *opts = qimg_opts_new();
    qimg_opts_parse(opts, create_opts);
    qimg_opts_set(opts, "backing_file", "cbase.raw");
    qimg_opts_set(opts, "backing_fmt", "raw");
    TAP_OK(qimg_create_prepare(path("ctop.qcow2"), "qcow2", opts, 0) == 0 &&
           qimg_create(path("ctop.qcow2"), "qcow2", opts) == 0);
    qimg_opts_free(opts);
    uint8_t *want = malloc(size);
    memset(want, 0xbb, size);
    struct qimg_image *img =
        qimg_open(path("ctop.qcow2"), "qcow2", QIMG_OPEN_RDWR);
    TAP_OK(img != NULL);
    if (!img) {
        free(want);
        return;
    }
    memset(want, 0xaa, 4096);
    TAP_OK(qimg_pwrite(img, want, 4096, 0) == 0 && qimg_flush(img) == 0);
    /* Past 64 KiB: the L1 table needs a third entry and moves. */
    TAP_OK(qimg_resize(img, size, NULL, 0) == 0 && qimg_close(img) == 0);
    img = qimg_open(path("ctop.qcow2"), "qcow2", QIMG_OPEN_RDWR);
    TAP_OK(img != NULL);
    /* The grown area reads as zero, not as the longer backing file. */
    memset(want + (64 << 10), 0, size - (64 << 10));
    memset(want + 8192, 0xcc, 8192);
    TAP_OK(qimg_pwrite(img, want + 8192, 8192, 8192) == 0);
    TAP_OK(qimg_close(img) == 0);
    char msg[128];
    snprintf(msg, sizeof(msg), "%s: the old layout uses the new L1 table's "
             "cluster", what);
    tap_ok(l1_moved_and_reused("ctop.qcow2", 512), msg);

    sc_load(SC_TOP, "ctop.qcow2");
    sc_load(SC_BASE, "cbase.raw");
    image_set_leaf_resolver(sc_resolve, NULL);
    uint64_t from = io_crash_position(sc.leaf[SC_TOP]);
    struct qimg_commit_params p = {.filename = path("ctop.qcow2"),
                                   .format = "qcow2"};
    TAP_OK(qimg_commit(&p) == 0);
    snprintf(msg, sizeof(msg), "%s: every crash of the commit reads as "
             "before it", what);
    tap_ok(sc_check_cuts("ctop.qcow2", from, want, size, what) == 0, msg);
    image_set_leaf_resolver(NULL, NULL);
    sc_close();
    free(want);
    unlink(path("ctop.qcow2"));
    unlink(path("cbase.raw"));
}

/*
 * A safe rebase writes into the image, sector by sector, where the old
 * and the new backing file differ, flushes, and only then names the new
 * one: every cut must read as before, whichever file the header names.
 */
static void test_rebase(void)
{
    const uint64_t size = 64 << 10;
    TAP_OK(write_raw("rold.raw", 0xbb, size));
    TAP_OK(write_raw("rnew.raw", 0xdd, 40 << 10));
    struct qimg_opts *opts = qimg_opts_new();
    qimg_opts_parse(opts, "cluster_size=4096,size=65536");
    qimg_opts_set(opts, "backing_file", "rold.raw");
    qimg_opts_set(opts, "backing_fmt", "raw");
    TAP_OK(qimg_create_prepare(path("rtop.qcow2"), "qcow2", opts, 0) == 0 &&
           qimg_create(path("rtop.qcow2"), "qcow2", opts) == 0);
    qimg_opts_free(opts);
    uint8_t *want = malloc(size);
    memset(want, 0xbb, size);
    memset(want + 4096, 0xaa, 10000);
    struct qimg_image *img =
        qimg_open(path("rtop.qcow2"), "qcow2", QIMG_OPEN_RDWR);
    TAP_OK(img && qimg_pwrite(img, want + 4096, 10000, 4096) == 0);
    TAP_OK(img && qimg_close(img) == 0);
    sc_load(SC_TOP, "rtop.qcow2");
    sc_load(SC_BASE, "rold.raw");
    sc_load(SC_NEW, "rnew.raw");
    image_set_leaf_resolver(sc_resolve, NULL);
    uint64_t from = io_crash_position(sc.leaf[SC_TOP]);
    struct qimg_rebase_params p = {.filename = path("rtop.qcow2"),
                                   .format = "qcow2",
                                   .backing_file = "rnew.raw",
                                   .backing_format = "raw"};
    TAP_OK(qimg_rebase(&p) == 0);
    tap_ok(sc_check_cuts("rtop.qcow2", from, want, size, "rebase") == 0,
           "rebase: every crash of a safe rebase reads as before it");
    image_set_leaf_resolver(NULL, NULL);
    sc_close();
    free(want);
    unlink(path("rtop.qcow2"));
    unlink(path("rold.raw"));
    unlink(path("rnew.raw"));
}

int main(void)
{
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_leaf();
    test_peers();
    /* 62.5 KiB: the old last cluster keeps 0xaa past the old end. */
    test_grow("tail.qcow2", false, 62 * 1024 + 512);
    /* 32 KiB: the clusters past it are unmapped; base.raw holds 0xbb. */
    test_grow("backing.qcow2", true, 32 * 1024);
    /* Both at once: a partial last cluster over a backing file. */
    test_grow("backing-tail.qcow2", true, 30 * 1024 + 512);
    test_commit_empty("commit-empty", "cluster_size=512,size=65536");
    /* v2 has no dirty bit: every cluster is discarded instead. */
    test_commit_empty("commit-empty-v2",
                      "cluster_size=512,size=65536,compat=0.10");
    test_rebase();
    unlink(path("base.raw"));
    rmdir(dir);
    return tap_done();
}
