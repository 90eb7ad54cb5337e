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

int main(void)
{
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_leaf();
    /* 62.5 KiB: the old last cluster keeps 0xaa past the old end. */
    test_grow("tail.qcow2", false, 62 * 1024 + 512);
    /* 32 KiB: the clusters past it are unmapped; base.raw holds 0xbb. */
    test_grow("backing.qcow2", true, 32 * 1024);
    /* Both at once: a partial last cluster over a backing file. */
    test_grow("backing-tail.qcow2", true, 30 * 1024 + 512);
    unlink(path("base.raw"));
    rmdir(dir);
    return tap_done();
}
