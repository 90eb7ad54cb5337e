/*
 * libFuzzer target for the qcow2 write path.  The input is not an image:
 * it is a recipe.  Its first bytes choose the creation options (cluster
 * size 512 B..2 MiB, compat, refcount width, extended L2 entries, lazy
 * refcounts, zlib or zstd, preallocation, a virtual size up to 2 MiB),
 * the rest a sequence of at most FW_MAX_OPS operations (FW_BIG_MAX_OPS
 * with clusters of 1 MiB or more): writes of
 * patterns, zero writes with or without unmap, discards, compressed
 * writes, resizes (grow with any preallocation, shrink), flushes,
 * internal snapshot create/apply/delete, persistent bitmap add (any
 * granularity, enabled or not), remove, clear, enable, disable and merge,
 * a clean close and reopen, and a check.  A byte past the end of the
 * input reads as 0.
 *
 * The image lives in a memory leaf (fuzz_leaf_open); a plain buffer, the
 * mirror, follows every operation as the guest should see it (the same
 * rules tests/crash/crash_qcow2.c checks the library against).  After
 * each operation the range it touched reads back as the mirror says,
 * after the larger ones (resize, snapshot, reopen) and at the end the
 * whole disk does; qimg check runs at every flush (unless lazy refcounts
 * leave refcounts stale by design) and, after the final clean close, on
 * the closed image: no corruption, no check error, no leak.  The bitmaps
 * have a mirror too (a bit per granule, set by every write, zero write
 * and discard of an enabled one): after each clean close the stored
 * directory, flags and every bit of the closed image must match it.  Any
 * mismatch or failed call aborts, so libFuzzer reports the input.
 *
 * Failures that are the right answer are allowed where they are
 * expected and nowhere else: a snapshot that would take a refcount past
 * its width (EINVAL; clusters may leak then, as in QEMU, and a failed
 * apply keeps the snapshot's disk size as QEMU's does), a resize of a
 * v2 image that has snapshots (ENOTSUP), a snapshot apply while bitmaps
 * exist (EBUSY, as QEMU).  The image must read as before after each of
 * them.
 *
 * FUZZ_VERBOSE=1 prints the decoded recipe on stderr.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/image.h"
#include "driver.h"
#include "formats/qcow2/qcow2.h"
#include "fuzz_common.h"
#include "qimg/qimg.h"
#include "util/endian.h"

/* Operations of one input: each costs a read-back, some a check. */
#define FW_MAX_OPS 32
/*
 * Operations of an input with clusters of at least FW_BIG_CLUSTER: each
 * costs about 30 times as much (a write copies a 2 MiB cluster, a check
 * walks 2^18 entries per L2 table, a reopen copies a file of tens of
 * MiB).  At 32 ops those inputs were 7% of the corpus and 85% of the
 * time; 8 still reach every operation and any order of two or three.
 */
#define FW_BIG_CLUSTER (1u << 20)
#define FW_BIG_MAX_OPS 8
/* The initial virtual size (before rounding up to 512 bytes). */
#define FW_INIT_MAX_SIZE (2u << 20)
/* The largest virtual size a resize reaches: the mirror's length. */
#define FW_MAX_SIZE (4u << 20)
/* Bytes one write, zero write or discard covers at most. */
#define FW_MAX_IO (256u << 10)
/* Internal snapshots alive at once (each keeps a copy of the disk). */
#define FW_MAX_SNAPSHOTS 4
/*
 * The host file's limit: 2 MiB clusters copied on write under snapshots
 * for FW_MAX_OPS writes, plus preallocation and metadata, stay below it.
 */
#define FW_LEAF_MAX (256ull << 20)

/* Persistent bitmaps alive at once; granules of the largest disk. */
#define FW_MAX_BITMAPS 4
#define FW_MAX_GRANULES (FW_MAX_SIZE / 512)

/* The input, read a byte at a time; past its end every byte is 0. */
struct fw_input {
    const uint8_t *p;
    size_t n;
};

static unsigned in_u8(struct fw_input *in)
{
    if (in->n == 0) {
        return 0;
    }
    in->n--;
    return *in->p++;
}

static uint32_t in_u24(struct fw_input *in)
{
    uint32_t v = in_u8(in);
    v |= (uint32_t)in_u8(in) << 8;
    return v | (uint32_t)in_u8(in) << 16;
}

struct fw_snapshot {
    char name[16];
    uint8_t *disk;
    uint64_t size;
};

static struct {
    struct qimg_image *img;
    struct fuzz_kept kept; /* the image as the last clean close left it */
    uint64_t size;         /* guest size now */
    uint64_t cluster, subcluster;
    unsigned refcount_bits;
    bool v2, lazy;
    /* A failed snapshot operation may leave leaked clusters (QEMU too). */
    bool leaks_ok;
    bool verbose;
    struct fw_snapshot snaps[FW_MAX_SNAPSHOTS];
    int nb_snaps;
    unsigned snap_counter;
    struct fw_bitmap {
        char name[16];
        unsigned gbits;
        bool enabled;
        uint8_t bits[FW_MAX_GRANULES / 8];
    } bitmaps[FW_MAX_BITMAPS];
    int nb_bitmaps;
    unsigned bitmap_counter;
} W;

/* The guest disk as it should read; zero past W.size. */
static uint8_t mirror[FW_MAX_SIZE];
/* Reads and written data. */
static uint8_t scratch[FW_MAX_SIZE];

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void say(const char *fmt, ...)
{
    if (!W.verbose) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
}

static void api_failed(const char *call)
{
    fprintf(stderr, "fuzz_qcow2_write: %s: %s (errno %d)\n", call,
            qimg_get_error(), qimg_get_errno());
    fuzz_finding("a call on a sound image failed", call);
}

/* [off, off + len) reads as the mirror says. */
static void compare_range(uint64_t off, uint64_t len, const char *after)
{
    if (len == 0) {
        return;
    }
    if (qimg_pread(W.img, scratch, (size_t)len, off) < 0) {
        api_failed("qimg_pread");
    }
    if (memcmp(scratch, mirror + off, (size_t)len) != 0) {
        uint64_t b = 0;
        while (scratch[b] == mirror[off + b]) {
            b++;
        }
        fprintf(stderr, "fuzz_qcow2_write: after %s, guest byte %" PRIu64
                " reads 0x%02x, expected 0x%02x\n", after, off + b,
                scratch[b], mirror[off + b]);
        fuzz_finding("the image reads other data than was written", after);
    }
}

static void compare_all(const char *after)
{
    int64_t size = qimg_get_size(W.img);
    if (size < 0 || (uint64_t)size != W.size) {
        fprintf(stderr, "fuzz_qcow2_write: after %s, size %" PRId64
                ", expected %" PRIu64 "\n", after, size, W.size);
        fuzz_finding("the image has another size than expected", after);
    }
    compare_range(0, W.size, after);
}

static void print_check_line(const char *line, unsigned kind, void *opaque)
{
    (void)kind;
    (void)opaque;
    if (!line || !line[0]) {
        fuzz_finding("check reported an empty line", NULL);
    }
    say("  check: %s\n", line);
}

/* qimg check on img: sound, and no leak unless one was allowed. */
static void check_clean(struct qimg_image *img, const char *when)
{
    struct qimg_check_result res;
    memset(&res, 0, sizeof(res));
    if (qimg_check(img, 0, print_check_line, NULL, &res) < 0) {
        api_failed("qimg_check");
    }
    if (res.corruptions || res.check_errors ||
        (res.leaks && !W.leaks_ok)) {
        fprintf(stderr, "fuzz_qcow2_write: check %s: %" PRId64
                " corruptions, %" PRId64 " leaks, %" PRId64
                " check errors\n", when, res.corruptions, res.leaks,
                res.check_errors);
        fuzz_finding("check found damage in an image qimg wrote", when);
    }
}

/* ---- Choosing ranges and data ------------------------------------------ */

/* An offset inside the disk, crowding onto cluster and subcluster edges. */
static uint64_t pick_offset(struct fw_input *in)
{
    unsigned mode = in_u8(in);
    uint64_t v = in_u24(in);
    uint64_t off;
    switch (mode % 4) {
    case 0:
        off = v % ((W.size + W.cluster - 1) / W.cluster) * W.cluster;
        break;
    case 1:
        off = v % ((W.size + W.subcluster - 1) / W.subcluster) *
              W.subcluster;
        break;
    case 2:
        off = v % ((W.size + 511) / 512) * 512;
        break;
    default:
        off = v % W.size;
        break;
    }
    return off < W.size ? off : W.size - 1;
}

/* A length from off, within the disk and FW_MAX_IO. */
static uint64_t pick_length(struct fw_input *in, uint64_t off)
{
    unsigned mode = in_u8(in);
    uint64_t v = in_u24(in);
    uint64_t len;
    switch (mode % 4) {
    case 0:
        len = 1 + v % 600;
        break;
    case 1:
        len = W.subcluster * (1 + v % 4);
        break;
    case 2:
        len = W.cluster * (1 + v % 3);
        break;
    default:
        len = 1 + v % FW_MAX_IO;
        break;
    }
    if (len > FW_MAX_IO) {
        len = FW_MAX_IO;
    }
    return len < W.size - off ? len : W.size - off;
}

/* Guest data: a repeated byte, a counter, noise, or text-like runs. */
static void fill(struct fw_input *in, uint8_t *buf, uint64_t len)
{
    unsigned kind = in_u8(in);
    uint8_t pat = (uint8_t)in_u8(in);
    uint32_t x = 0x9e3779b9u ^ pat;
    for (uint64_t i = 0; i < len; i++) {
        switch (kind % 4) {
        case 0:
            buf[i] = pat;
            break;
        case 1:
            buf[i] = (uint8_t)(pat + i);
            break;
        case 2:
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            buf[i] = (uint8_t)x;
            break;
        default:
            buf[i] = (uint8_t)(pat + i / 37);
            break;
        }
    }
}

/* ---- Operations -------------------------------------------------------- */

/* Granules [first, last] of bitmap b set (or cleared). */
static void bits_change(struct fw_bitmap *b, uint64_t first, uint64_t last,
                        bool set)
{
    for (uint64_t g = first; g <= last && g < FW_MAX_GRANULES; g++) {
        if (set) {
            b->bits[g / 8] |= (uint8_t)(1u << (g % 8));
        } else {
            b->bits[g / 8] &= (uint8_t) ~(1u << (g % 8));
        }
    }
}

/* A guest write of [off, off + len): every enabled bitmap records it. */
static void bitmaps_note(uint64_t off, uint64_t len)
{
    if (len == 0 || off >= W.size) {
        return;
    }
    uint64_t last = (off + len < W.size ? off + len : W.size) - 1;
    for (int i = 0; i < W.nb_bitmaps; i++) {
        struct fw_bitmap *b = &W.bitmaps[i];
        if (b->enabled) {
            bits_change(b, off >> b->gbits, last >> b->gbits, true);
        }
    }
}

static void op_write(struct fw_input *in)
{
    uint64_t off = pick_offset(in);
    uint64_t len = pick_length(in, off);
    fill(in, scratch, len);
    say("write %" PRIu64 "+%" PRIu64 "\n", off, len);
    if (qimg_pwrite(W.img, scratch, (size_t)len, off) < 0) {
        api_failed("qimg_pwrite");
    }
    memcpy(mirror + off, scratch, (size_t)len);
    bitmaps_note(off, len);
    compare_range(off, len, "write");
}

static void op_zero(struct fw_input *in)
{
    uint64_t off = pick_offset(in);
    uint64_t len = pick_length(in, off);
    unsigned flags = in_u8(in) & 1 ? QIMG_ZERO_MAY_UNMAP : 0;
    say("zero %" PRIu64 "+%" PRIu64 " flags %u\n", off, len, flags);
    if (qimg_pwrite_zeroes(W.img, off, len, flags) < 0) {
        api_failed("qimg_pwrite_zeroes");
    }
    memset(mirror + off, 0, (size_t)len);
    bitmaps_note(off, len);
    compare_range(off, len, "zero write");
}

/*
 * A discard zeroes the clusters wholly inside it; the partial last
 * cluster of the disk counts as whole when the range reaches the end.
 * The bytes around them stay (the rule crash_qcow2.c and write_random.c
 * check, the latter against qemu-io).
 */
static void op_discard(struct fw_input *in)
{
    uint64_t off = pick_offset(in);
    uint64_t len = pick_length(in, off);
    say("discard %" PRIu64 "+%" PRIu64 "\n", off, len);
    if (qimg_discard(W.img, off, len) < 0) {
        api_failed("qimg_discard");
    }
    bitmaps_note(off, len);
    uint64_t cs = W.cluster;
    uint64_t f = (off + cs - 1) / cs * cs;
    uint64_t e = (off + len) / cs * cs;
    if (off + len == W.size) {
        e = W.size;
    }
    if (f > W.size) {
        f = W.size;
    }
    if (e > f) {
        memset(mirror + f, 0, (size_t)(e - f));
    }
    /* One cluster either side: what must not have changed. */
    uint64_t lo = off > cs ? off - cs : 0;
    uint64_t hi = off + len + cs < W.size ? off + len + cs : W.size;
    compare_range(lo, hi - lo, "discard");
}

static void op_compressed(struct fw_input *in)
{
    uint64_t nclusters = (W.size + W.cluster - 1) / W.cluster;
    uint64_t off = in_u24(in) % nclusters * W.cluster;
    uint64_t len = W.size - off < W.cluster ? W.size - off : W.cluster;
    fill(in, scratch, len);
    say("compressed %" PRIu64 "+%" PRIu64 "\n", off, len);
    if (qimg_pwrite_compressed(W.img, scratch, (size_t)len, off) < 0) {
        api_failed("qimg_pwrite_compressed");
    }
    memcpy(mirror + off, scratch, (size_t)len);
    bitmaps_note(off, len);
    compare_range(off, len, "compressed write");
}

static const char *const preallocs[] = {"off", "metadata", "falloc", "full"};

/*
 * Grow or shrink, in 512-byte steps (so a shrink can leave a partial
 * last cluster that a later growth must show as zeros).
 */
static void op_resize(struct fw_input *in)
{
    unsigned how = in_u8(in);
    uint64_t step = 512 * (1 + in_u24(in) % (2 * W.cluster / 512 + 64));
    uint64_t size;
    if (how & 1) {
        size = W.size > step ? W.size - step : 512;
    } else {
        size = W.size + step < FW_MAX_SIZE ? W.size + step : FW_MAX_SIZE;
    }
    if (size == W.size) {
        return;
    }
    const char *prealloc = size > W.size ? preallocs[(how >> 1) % 4] : "off";
    say("resize %" PRIu64 " -> %" PRIu64 " prealloc=%s\n", W.size, size,
        prealloc);
    if (qimg_resize(W.img, size, prealloc,
                    size < W.size ? QIMG_RESIZE_SHRINK : 0) < 0) {
        /* [QEMU] a v2 snapshot records no disk size: refused. */
        if (!(W.v2 && W.nb_snaps > 0 && qimg_get_errno() == ENOTSUP)) {
            api_failed("qimg_resize");
        }
        fuzz_expect_error_set("qimg_resize");
        compare_all("a refused resize");
        return;
    }
    if (size < W.size) {
        memset(mirror + size, 0, (size_t)(W.size - size));
        /* Granules wholly past the new end are gone. */
        for (int i = 0; i < W.nb_bitmaps; i++) {
            struct fw_bitmap *b = &W.bitmaps[i];
            uint64_t g = (size + (1ull << b->gbits) - 1) >> b->gbits;
            bits_change(b, g, FW_MAX_GRANULES - 1, false);
        }
    }
    W.size = size;
    compare_all("resize");
}

static void op_flush(struct fw_input *in)
{
    (void)in;
    say("flush\n");
    if (qimg_flush(W.img) < 0) {
        api_failed("qimg_flush");
    }
    if (!W.lazy) {
        check_clean(W.img, "after a flush");
    }
}

/*
 * A failed snapshot operation must be a refcount that would pass its
 * width (EINVAL) and leave the disk as it was; it may leak clusters.
 */
static void snapshot_failed(const char *call)
{
    if (qimg_get_errno() != EINVAL) {
        api_failed(call);
    }
    fuzz_expect_error_set(call);
    say("  %s failed: %s\n", call, qimg_get_error());
    W.leaks_ok = true;
    compare_all(call);
}

static void op_snapshot_create(struct fw_input *in)
{
    (void)in;
    if (W.nb_snaps == FW_MAX_SNAPSHOTS) {
        return;
    }
    struct fw_snapshot *sn = &W.snaps[W.nb_snaps];
    snprintf(sn->name, sizeof(sn->name), "s%u", W.snap_counter++);
    say("snapshot create %s\n", sn->name);
    if (qimg_snapshot_create(W.img, sn->name) < 0) {
        snapshot_failed("qimg_snapshot_create");
        return;
    }
    sn->disk = malloc(W.size ? W.size : 1);
    if (!sn->disk) {
        fuzz_finding("out of memory in the fuzz target", NULL);
    }
    memcpy(sn->disk, mirror, (size_t)W.size);
    sn->size = W.size;
    W.nb_snaps++;
    compare_all("snapshot create");
}

static void op_snapshot_apply(struct fw_input *in)
{
    if (W.nb_snaps == 0) {
        return;
    }
    struct fw_snapshot *sn = &W.snaps[in_u8(in) % W.nb_snaps];
    struct qimg_snapshot_select sel = {.name = sn->name};
    say("snapshot apply %s\n", sn->name);
    int ret = qimg_snapshot_apply(W.img, &sel);
    if (W.nb_bitmaps > 0) {
        /* [QEMU] bitmaps would be wrong after it: refused, nothing done. */
        if (ret == 0 || qimg_get_errno() != EBUSY) {
            fuzz_finding("a snapshot was applied with bitmaps", NULL);
        }
        compare_all("a refused snapshot apply");
        return;
    }
    if (ret < 0) {
        /*
         * [QEMU] the disk takes the snapshot's size before the
         * references are counted, and keeps it when counting fails: the
         * current data, cut or grown with zeros.
         */
        int64_t now = qimg_get_size(W.img);
        if (now == (int64_t)sn->size && sn->size < W.size) {
            memset(mirror + sn->size, 0, (size_t)(W.size - sn->size));
        }
        if (now == (int64_t)sn->size) {
            W.size = sn->size;
        }
        snapshot_failed("qimg_snapshot_apply");
        return;
    }
    memset(mirror, 0, sizeof(mirror));
    memcpy(mirror, sn->disk, (size_t)sn->size);
    W.size = sn->size;
    compare_all("snapshot apply");
}

static void op_snapshot_delete(struct fw_input *in)
{
    if (W.nb_snaps == 0) {
        return;
    }
    int k = (int)(in_u8(in) % (unsigned)W.nb_snaps);
    struct qimg_snapshot_select sel = {.name = W.snaps[k].name};
    say("snapshot delete %s\n", W.snaps[k].name);
    if (qimg_snapshot_delete(W.img, &sel) < 0) {
        api_failed("qimg_snapshot_delete");
    }
    free(W.snaps[k].disk);
    W.snaps[k] = W.snaps[W.nb_snaps - 1];
    W.nb_snaps--;
    compare_all("snapshot delete");
}

static void bitmap_call(const struct qimg_bitmap_request *req)
{
    say("bitmap %u %s%s%s granularity %" PRIu64 " flags %u\n",
        (unsigned)req->op, req->name, req->source_name ? " from " : "",
        req->source_name ? req->source_name : "", req->granularity,
        (unsigned)req->flags);
    if (qimg_bitmap(W.img, req) < 0) {
        api_failed("qimg_bitmap");
    }
}

static void op_bitmap_add(struct fw_input *in)
{
    unsigned how = in_u8(in);
    if (W.v2 || W.nb_bitmaps == FW_MAX_BITMAPS) {
        return;
    }
    struct fw_bitmap *b = &W.bitmaps[W.nb_bitmaps];
    memset(b, 0, sizeof(*b));
    snprintf(b->name, sizeof(b->name), "b%u", W.bitmap_counter++);
    /* 512 B..64 KiB, or the default (the cluster size, 4..64 KiB). */
    unsigned g = how % 9;
    uint64_t cs = W.cluster;
    uint64_t def = cs < 4096 ? 4096 : cs > 65536 ? 65536 : cs;
    b->gbits = g == 8 ? 0 : 9 + g;
    if (g == 8) {
        while ((1ull << b->gbits) < def) {
            b->gbits++;
        }
    }
    b->enabled = !(how & 0x80);
    struct qimg_bitmap_request req = {
        .op = QIMG_BITMAP_ADD,
        .name = b->name,
        .granularity = g == 8 ? 0 : 1ull << b->gbits,
        .flags = b->enabled ? 0 : QIMG_BITMAP_DISABLED,
    };
    bitmap_call(&req);
    W.nb_bitmaps++;
}

/* Remove, clear, enable, disable or merge into one of the bitmaps. */
static void op_bitmap_change(struct fw_input *in)
{
    unsigned how = in_u8(in);
    unsigned which = in_u8(in);
    if (W.nb_bitmaps == 0) {
        return;
    }
    int k = (int)(which % (unsigned)W.nb_bitmaps);
    struct fw_bitmap *b = &W.bitmaps[k];
    struct qimg_bitmap_request req = {.name = b->name};
    switch (how % 5) {
    case 0:
        req.op = QIMG_BITMAP_REMOVE;
        bitmap_call(&req);
        memmove(b, b + 1, (size_t)(W.nb_bitmaps - k - 1) * sizeof(*b));
        W.nb_bitmaps--;
        return;
    case 1:
        req.op = QIMG_BITMAP_CLEAR;
        memset(b->bits, 0, sizeof(b->bits));
        break;
    case 2:
        req.op = QIMG_BITMAP_ENABLE;
        b->enabled = true;
        break;
    case 3:
        req.op = QIMG_BITMAP_DISABLE;
        b->enabled = false;
        break;
    default: {
        struct fw_bitmap *src = &W.bitmaps[(which >> 4) % W.nb_bitmaps];
        req.op = QIMG_BITMAP_MERGE;
        req.source_name = src->name;
        /* Each set source granule, as guest bytes, sets ours. */
        for (uint64_t g = 0; g < FW_MAX_GRANULES; g++) {
            uint64_t start = g << src->gbits;
            if (start >= W.size) {
                break;
            }
            if (src->bits[g / 8] >> (g % 8) & 1) {
                uint64_t end = (g + 1) << src->gbits;
                end = end < W.size ? end : W.size;
                bits_change(b, start >> b->gbits, (end - 1) >> b->gbits, true);
            }
        }
        break;
    }
    }
    bitmap_call(&req);
}

/*
 * The bitmaps stored in img (just opened, read-only, after a clean
 * close) are the mirror's: names, granularities, flags (none in use) and
 * every bit of the disk, read from the file as the spec lays them out.
 */
static void verify_bitmaps(struct qimg_image *img, const char *when)
{
    struct qcow2_state *s = img->top->opaque;
    if (s->bitmaps.nb != (uint32_t)W.nb_bitmaps) {
        fprintf(stderr, "fuzz_qcow2_write: %s: %u bitmaps, expected %d\n", when,
                s->bitmaps.nb, W.nb_bitmaps);
        fuzz_finding("the bitmaps differ from the mirror", when);
    }
    const uint64_t cs = s->cluster_size;
    uint8_t *data = malloc((size_t)cs);
    if (!data) {
        fuzz_finding("out of memory in the fuzz target", NULL);
    }
    for (int i = 0; i < W.nb_bitmaps; i++) {
        const struct qcow2_bitmap *bm = &s->bitmaps.bm[i];
        const struct fw_bitmap *b = &W.bitmaps[i];
        uint32_t want_flags = b->enabled ? QCOW2_BME_AUTO : 0;
        if (strcmp(bm->name, b->name) != 0 ||
            bm->granularity_bits != b->gbits || bm->flags != want_flags) {
            fprintf(stderr,
                    "fuzz_qcow2_write: %s: bitmap %d is %s/%u/0x%x, "
                    "expected %s/%u/0x%x\n",
                    when, i, bm->name, bm->granularity_bits, bm->flags, b->name,
                    b->gbits, want_flags);
            fuzz_finding("the bitmaps differ from the mirror", when);
        }
        uint64_t granules = (W.size + (1ull << b->gbits) - 1) >> b->gbits;
        uint64_t per = cs * 8;
        for (uint64_t ti = 0; ti * per < granules; ti++) {
            uint8_t be[8];
            if (ti >= bm->table_size ||
                io_pread(img->top->file, be, 8, bm->table_offset + ti * 8) <
                    0) {
                fuzz_finding("a bitmap table is short", when);
            }
            uint64_t e = load_be64(be);
            uint64_t host = e & QCOW2_BMT_OFFSET_MASK;
            if (host) {
                if (io_pread(img->top->file, data, (size_t)cs, host) < 0) {
                    fuzz_finding("bitmap data past the file", when);
                }
            } else {
                memset(data, (e & QCOW2_BMT_ALL_ONES) ? 0xff : 0, (size_t)cs);
            }
            for (uint64_t j = 0; j < per && ti * per + j < granules; j++) {
                uint64_t g = ti * per + j;
                bool got = data[j / 8] >> (j % 8) & 1;
                bool want =
                    g < FW_MAX_GRANULES && (b->bits[g / 8] >> (g % 8) & 1);
                if (got != want) {
                    fprintf(stderr,
                            "fuzz_qcow2_write: %s: bitmap %s granule "
                            "%" PRIu64 " is %d, expected %d\n",
                            when, b->name, g, got, want);
                    fuzz_finding("a bitmap bit differs from the mirror", when);
                }
            }
        }
    }
    free(data);
}

/* Open the kept image read-write again. */
static void reopen(void)
{
    struct qimg_io *io;
    if (fuzz_leaf_open(W.kept.data, W.kept.len, true, FW_LEAF_MAX, &W.kept,
                       &io) < 0 ||
        image_open_leaf(io, "qcow2", QIMG_OPEN_RDWR, &W.img) < 0) {
        W.img = NULL;
        api_failed("reopen");
    }
}

/* A clean close; the closed image checked as it is, then reopened. */
static void close_and_check(const char *when)
{
    if (qimg_close(W.img) < 0) {
        W.img = NULL;
        api_failed("qimg_close");
    }
    W.img = NULL;
    say("  closed: %zu bytes\n", W.kept.len);
    struct qimg_io *io;
    struct qimg_image *img = NULL;
    /* Read-only, over the kept bytes themselves (reopen copies them). */
    if (io_mem_open_borrowed("fuzz-kept.qcow2", W.kept.data, W.kept.len,
                             &io) < 0 ||
        image_open_leaf(io, "qcow2", 0, &img) < 0) {
        api_failed("open after close");
    }
    check_clean(img, when);
    verify_bitmaps(img, when);
    W.img = img;
    compare_all(when);
    W.img = NULL;
    qimg_close(img);
}

static void op_reopen(struct fw_input *in)
{
    (void)in;
    say("reopen\n");
    close_and_check("a clean close");
    reopen();
    compare_all("reopen");
}

static const struct {
    const char *name;
    void (*run)(struct fw_input *in);
} ops[] = {
    {"write", op_write},
    {"write", op_write},
    {"write", op_write},
    {"zero", op_zero},
    {"zero", op_zero},
    {"discard", op_discard},
    {"compressed", op_compressed},
    {"resize", op_resize},
    {"flush", op_flush},
    {"snapshot-create", op_snapshot_create},
    {"snapshot-apply", op_snapshot_apply},
    {"snapshot-delete", op_snapshot_delete},
    {"reopen", op_reopen},
    {"bitmap-add", op_bitmap_add},
    {"bitmap-change", op_bitmap_change},
};
#define NOPS (sizeof(ops) / sizeof(ops[0]))

/* ---- One input --------------------------------------------------------- */

/* Creation options from the first bytes; false when they are refused. */
static bool create_image(struct fw_input *in)
{
    /*
     * 512 B..64 KiB mostly; up to 2 MiB for one input in four, as big
     * clusters make each input slower (a check walks 2^20 refcounts of
     * one 2 MiB refcount block).
     */
    unsigned cb = in_u8(in);
    unsigned cluster_bits = 9 + (cb < 192 ? cb % 8 : cb % 13);
    unsigned f = in_u8(in);
    unsigned order = in_u8(in) % 7;
    uint64_t size = 1 + in_u24(in) % FW_INIT_MAX_SIZE;
    uint64_t cs = 1ull << cluster_bits;
    W.v2 = f & 1;
    /* Options QEMU would refuse are dropped: the write path is the aim. */
    bool extl2 = (f & 2) && !W.v2 && cs >= 16384;
    W.lazy = (f & 4) && !W.v2;
    bool zstd = (f & 8) && !W.v2;
    const char *prealloc = preallocs[(f >> 4) % 4];
    W.refcount_bits = W.v2 ? 16 : 1u << order;
    W.cluster = cs;
    W.subcluster = extl2 ? cs / 32 : cs;
    W.size = (size + 511) & ~511ull;

    char text[256];
    snprintf(text, sizeof(text), "size=%" PRIu64 ",cluster_size=%" PRIu64
             ",compat=%s,refcount_bits=%u,extended_l2=%s,lazy_refcounts=%s,"
             "compression_type=%s,preallocation=%s", size, cs,
             W.v2 ? "0.10" : "1.1", W.refcount_bits, extl2 ? "on" : "off",
             W.lazy ? "on" : "off", zstd ? "zstd" : "zlib", prealloc);
    say("create %s\n", text);
    struct qimg_opts *opts = qimg_opts_new();
    if (!opts || qimg_opts_parse(opts, text) < 0) {
        fuzz_finding("could not make the creation options", text);
    }
    struct qimg_io *io;
    if (fuzz_leaf_open(NULL, 0, true, FW_LEAF_MAX, &W.kept, &io) < 0) {
        api_failed("fuzz_leaf_open");
    }
    int ret = qcow2_create_on_io(io, opts);
    qimg_opts_free(opts);
    if (ret < 0) {
        /* Every combination made above is one QEMU creates. */
        io_close(io);
        api_failed("qcow2_create_on_io");
    }
    io_close(io);
    reopen();
    return true;
}

static void reset(void)
{
    for (int k = 0; k < W.nb_snaps; k++) {
        free(W.snaps[k].disk);
    }
    fuzz_kept_free(&W.kept);
    memset(&W, 0, sizeof(W));
    memset(mirror, 0, sizeof(mirror));
    const char *v = getenv("FUZZ_VERBOSE");
    W.verbose = v && *v && strcmp(v, "0") != 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    reset();
    struct fw_input in = {data, size};
    if (!create_image(&in)) {
        reset();
        return 0;
    }
    compare_all("create");
    int max_ops = W.cluster >= FW_BIG_CLUSTER ? FW_BIG_MAX_OPS : FW_MAX_OPS;
    for (int i = 0; i < max_ops && in.n > 0; i++) {
        ops[in_u8(&in) % NOPS].run(&in);
    }
    if (qimg_flush(W.img) < 0) {
        api_failed("qimg_flush");
    }
    if (!W.lazy) {
        check_clean(W.img, "at the end");
    }
    compare_all("the last operation");
    close_and_check("the final close");
    reset();
    return 0;
}
