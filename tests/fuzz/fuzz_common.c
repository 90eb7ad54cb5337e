/*
 * The shared fuzz driver loop (see fuzz_common.h).
 *
 * One input runs, in order:
 *   1. probe over its first bytes (pure, total over any bytes);
 *   2. a read-only open for guest data: get_info, the value tree and its
 *      JSON serialisation, block status walked from offset 0 in windows,
 *      then probes spread over the whole disk, and reads at the start and
 *      end of every extent reported; then check; for a format with
 *      internal snapshots the first and the last snapshot, loaded and
 *      walked alike (fuzz_snapshots); and for targets that ask for it a
 *      repair on a writable copy (fuzz_repair);
 *   3. if that open failed, a metadata-only open (what "qemu-img info"
 *      does) and info as above.
 * An extent target opens its fixed descriptor in place of the input,
 * which is written to the one file that descriptor names (fuzz_source).
 *
 * Every step is bounded (FUZZ_* below), so an image with an exabyte of
 * virtual disk costs no more than a small one.  Besides the sanitizers,
 * the loop itself checks the library's contracts and aborts when one is
 * broken: a failing call leaves a message and an errno; an extent starts
 * where it was asked for and is not longer than the request; a range
 * reported as zero (and not data) reads as zeros; no backing file is
 * ever opened.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/error.h"
#include "core/image.h"
#include "driver.h"
#include "fuzz_common.h"
#include "qimg/qimg.h"
#include "util/checked.h"

/*
 * Table entries one check may examine (check_max_table_entries): qcow2
 * L2 entries, vmdk grains.  2^18 covers every entry a 256 KiB input can
 * hold twice over, or one whole L2 table of 2 MiB clusters; past it the
 * check fails with EFBIG, a path of its own.  One input runs up to four
 * checks (read-only, repair, the recount after a rebuild, the second
 * check), each entry the same few branches: at 2^22 the checks were 70%
 * of fuzz_qcow2's time and 95% of fuzz_vmdk's (a huge disk of tiny
 * grains), for no new paths.
 */
#define FUZZ_CHECK_TABLE_ENTRIES (1ull << 18)
/* Block status calls of the sequential walk from offset 0. */
#define FUZZ_MAX_WALK_CALLS 1024
/* Probes spread evenly over the disk, to reach past the walk. */
#define FUZZ_SPREAD_PROBES 64
/* The longest range one block status call asks about. */
#define FUZZ_STATUS_WINDOW (1ull << 30)
/* Bytes read at the start, and again around the end, of an extent. */
#define FUZZ_READ_PER_EXTENT (32u * 1024)
/* All guest reads of one input together. */
#define FUZZ_MAX_READ_TOTAL (1u << 20)
/* Bytes handed to the probe functions, as image.c does. */
#define FUZZ_PROBE_BYTES 2048
/*
 * The value tree and JSON only for images with at most this many
 * snapshots: a table of 65536 (valid, as QEMU allows) makes 20 MB of JSON
 * and slows every mutation of that input, while each entry takes the
 * same code path.
 */
#define FUZZ_VALUE_MAX_SNAPSHOTS 1024
/* Inputs at most this long are also repaired (fuzz_repair). */
#define FUZZ_REPAIR_MAX_INPUT (256u * 1024)
/*
 * The repaired copy's limit: a repair writes little past the input (a
 * rebuild appends a few clusters: 16 MiB holds several of 2 MiB); a
 * refcount block a hostile table puts further out fails to grow the
 * file (EFBIG), a path of its own.  At 64 MiB, zeroing and faulting in
 * the grown copy was a fifth of fuzz_qcow2's time.
 */
#define FUZZ_REPAIR_MAX_FILE (16ull << 20)
/* The name of the memory leaf (never a path that is opened). */
#define FUZZ_NAME "fuzz-input.img"

void fuzz_finding(const char *what, const char *detail)
{
    fprintf(stderr, "fuzz: %s%s%s\n", what, detail ? ": " : "",
            detail ? detail : "");
    abort();
}

/* The error contract of the public API: a message and an errno. */
void fuzz_expect_error_set(const char *call)
{
    const char *msg = qimg_get_error();
    if (!msg || !msg[0] || qimg_get_errno() <= 0) {
        fuzz_finding("failed without a message or errno", call);
    }
}

static void on_warning(const char *message, void *opaque)
{
    (void)opaque;
    if (!message || !message[0]) {
        fuzz_finding("empty warning", NULL);
    }
}

/*
 * What one input opens: the bytes of the memory leaf, its name, and the
 * flags every open of it takes (those that make it untrusted).  For most
 * targets that is the input itself under FUZZ_NAME; for an extent target
 * (fuzz_target.descriptor) the descriptor, named inside the directory that
 * holds the input.
 */
struct fuzz_source {
    const uint8_t *data;
    size_t size;
    const char *name;
    unsigned base_flags;
};

/* Open io (consumed) as t's format with its options; 0 or -errno. */
static int fuzz_open_io(const struct fuzz_target *t, struct qimg_io *io,
                        unsigned flags, struct qimg_image **img)
{
    int ret;
    struct qimg_opts *opts = NULL;
    if (t->open_options) {
        opts = qimg_opts_new();
        if (!opts || qimg_opts_parse(opts, t->open_options) < 0) {
            fuzz_finding("bad open options", t->open_options);
        }
    }
    ret = image_open_leaf_opts(io, t->format, flags, opts, img);
    qimg_opts_free(opts);
    if (ret < 0) {
        fuzz_expect_error_set("open");
    }
    return ret;
}

/* Open the source as an image over a memory leaf; 0 or -errno. */
static int fuzz_open(const struct fuzz_target *t, const struct fuzz_source *src,
                     unsigned flags, struct qimg_image **img)
{
    struct qimg_io *io;
    *img = NULL;
    /* Read-only: the input itself, not a copy (it outlives the open). */
    int ret = io_mem_open_borrowed(src->name, src->data, src->size, &io);
    if (ret < 0) {
        return ret;
    }
    return fuzz_open_io(t, io, src->base_flags | flags, img);
}

/* ---- Extent targets: the input as a file a fixed descriptor names ------- */

static char *extent_dir;  /* private, made at the first extent input */
static char *extent_path; /* extent_dir/FUZZ_EXTENT_NAME */
static char *extent_desc; /* extent_dir/FUZZ_NAME, the descriptor's name */

static void extent_dir_remove(void)
{
    unlink(extent_path);
    rmdir(extent_dir);
}

static void extent_dir_make(void)
{
    const char *tmp = getenv("TMPDIR");
    if (asprintf(&extent_dir, "%s/qimg-fuzz-extent.XXXXXX",
                 tmp && tmp[0] ? tmp : "/tmp") < 0 ||
        !mkdtemp(extent_dir) ||
        asprintf(&extent_path, "%s/%s", extent_dir, FUZZ_EXTENT_NAME) < 0 ||
        asprintf(&extent_desc, "%s/%s", extent_dir, FUZZ_NAME) < 0) {
        fuzz_finding("could not make the extent directory", strerror(errno));
    }
    atexit(extent_dir_remove);
}

/* The input becomes the extent file's whole contents. */
static void extent_write(const uint8_t *data, size_t size)
{
    if (!extent_dir) {
        extent_dir_make();
    }
    int fd = open(extent_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        fuzz_finding("could not create the extent file", strerror(errno));
    }
    while (size > 0) {
        ssize_t n = write(fd, data, size);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            fuzz_finding("could not write the extent file", strerror(errno));
        }
        data += n;
        size -= (size_t)n;
    }
    if (close(fd) < 0) {
        fuzz_finding("could not write the extent file", strerror(errno));
    }
}

static void fuzz_info(struct qimg_image *img)
{
    struct qimg_image_info *info = qimg_get_info(img);
    if (!info) {
        fuzz_expect_error_set("qimg_get_info");
        return;
    }
    if (info->nb_snapshots > FUZZ_VALUE_MAX_SNAPSHOTS) {
        qimg_image_info_free(info);
        return;
    }
    struct qimg_value *v = qimg_image_info_to_value(info);
    if (!v) {
        fuzz_finding("qimg_image_info_to_value failed", NULL);
    }
    char *json = qimg_value_to_json(v);
    if (!json || json[0] != '{') {
        fuzz_finding("qimg_value_to_json gave no object", NULL);
    }
    free(json);
    qimg_value_free(v);
    qimg_image_info_free(info);
}

struct fuzz_walk {
    struct qimg_image *img;
    uint64_t size;
    uint8_t *buf; /* FUZZ_READ_PER_EXTENT bytes */
    uint64_t read_left;
};

/* memcmp, not a loop: the loop's coverage hooks would cost per byte. */
static bool all_zero(const uint8_t *p, size_t n)
{
    return n == 0 || (p[0] == 0 && memcmp(p, p + 1, n - 1) == 0);
}

/* Read up to FUZZ_READ_PER_EXTENT bytes at off, within the budget. */
static void fuzz_read(struct fuzz_walk *w, uint64_t off, uint64_t max,
                      bool expect_zero)
{
    uint64_t n = min_u64(min_u64(max, FUZZ_READ_PER_EXTENT), w->read_left);
    n = min_u64(n, w->size - off);
    if (n == 0) {
        return;
    }
    w->read_left -= n;
    if (qimg_pread(w->img, w->buf, (size_t)n, off) < 0) {
        fuzz_expect_error_set("qimg_pread");
        return;
    }
    if (expect_zero && !all_zero(w->buf, (size_t)n)) {
        fuzz_finding("a range reported as zero reads non-zero", NULL);
    }
}

/*
 * Reads at an extent: its start, and a read that begins inside its end
 * and runs on into whatever follows (so reads cross mapping changes).
 */
static void fuzz_read_extent(struct fuzz_walk *w, const struct qimg_extent *e)
{
    bool zero = (e->flags & QIMG_EXTENT_ZERO) && !(e->flags & QIMG_EXTENT_DATA);
    fuzz_read(w, e->offset, e->length, zero);
    if (e->length > FUZZ_READ_PER_EXTENT) {
        uint64_t back = min_u64(e->length, FUZZ_READ_PER_EXTENT / 2);
        fuzz_read(w, e->offset + e->length - back, FUZZ_READ_PER_EXTENT, false);
    }
}

/* Block status at off; 0, or -1 when the call failed. */
static int fuzz_status(struct fuzz_walk *w, uint64_t off, struct qimg_extent *e)
{
    uint64_t len = min_u64(w->size - off, FUZZ_STATUS_WINDOW);
    if (qimg_block_status(w->img, off, len, e) < 0) {
        fuzz_expect_error_set("qimg_block_status");
        return -1;
    }
    if (e->offset != off || e->length == 0 || e->length > len) {
        fuzz_finding("block status extent outside the request", NULL);
    }
    return 0;
}

static void fuzz_walk(struct qimg_image *img)
{
    int64_t size = qimg_get_size(img);
    if (size <= 0) {
        return;
    }
    struct fuzz_walk w = {
        .img = img,
        .size = (uint64_t)size,
        .buf = malloc(FUZZ_READ_PER_EXTENT),
        .read_left = FUZZ_MAX_READ_TOTAL,
    };
    if (!w.buf) {
        fuzz_finding("out of memory in the fuzz loop", NULL);
    }
    uint64_t cluster = qimg_get_cluster_size(img);
    if (cluster < 512 || (cluster & (cluster - 1))) {
        cluster = 64 * 1024;
    }

    /*
     * From offset 0.  A failed call skips ahead, one cluster at first
     * and twice as far after each failure in a row, so a damaged table
     * does not use up the walk.
     */
    uint64_t off = 0;
    uint64_t skip = cluster;
    struct qimg_extent e;
    for (int calls = 0; off < w.size && calls < FUZZ_MAX_WALK_CALLS; calls++) {
        if (fuzz_status(&w, off, &e) == 0) {
            fuzz_read_extent(&w, &e);
            off += e.length;
            skip = cluster;
        } else {
            off = add_overflow_u64(off, skip, &off) ? w.size : off;
            skip = skip < (1ull << 62) ? skip * 2 : skip;
        }
    }

    /* Spread over the disk, sector-aligned, and its last sector. */
    for (uint64_t i = 1; i <= FUZZ_SPREAD_PROBES; i++) {
        uint64_t at = i == FUZZ_SPREAD_PROBES ? w.size - 1
                                              : w.size / FUZZ_SPREAD_PROBES * i;
        at = align_down_u64(at, 512);
        if (at < w.size && fuzz_status(&w, at, &e) == 0) {
            fuzz_read_extent(&w, &e);
        }
    }
    free(w.buf);
}

/*
 * Guest data as an internal snapshot saw it (qemu-img convert -l): the
 * first snapshot of img's table by id and the last by id-or-name, each
 * in an open of its own (src with open_flags, as img was opened), loaded
 * and walked like the current state.  The snapshot's L1 table is read
 * from the image like any other table.
 */
static void fuzz_snapshots(const struct fuzz_target *t,
                           const struct fuzz_source *src, unsigned open_flags,
                           struct qimg_image *img)
{
    if (!img->top->drv->snapshot_load) {
        return;
    }
    struct qimg_image_info *info = qimg_get_info(img);
    if (!info) {
        fuzz_expect_error_set("qimg_get_info");
        return;
    }
    size_t n = info->nb_snapshots;
    for (size_t i = 0; i < 2 && n > 0 && n <= FUZZ_VALUE_MAX_SNAPSHOTS; i++) {
        const struct qimg_snapshot_info *sn = &info->snapshots[i ? n - 1 : 0];
        struct qimg_snapshot_select sel = {0};
        if (i == 0) {
            sel.id = sn->id;
        } else {
            sel.id_or_name = sn->name ? sn->name : sn->id;
        }
        struct qimg_image *snap;
        if (fuzz_open(t, src, open_flags, &snap) < 0) {
            continue;
        }
        if (image_load_snapshot(snap->top, &sel) < 0) {
            fuzz_expect_error_set("image_load_snapshot");
        } else {
            fuzz_walk(snap);
        }
        qimg_close(snap);
        if (n == 1) {
            break;
        }
    }
    qimg_image_info_free(info);
}

/* FUZZ_VERBOSE=1 in the environment: check lines and steps to stderr. */
static bool fuzz_verbose(void)
{
    static int verbose = -1;
    if (verbose < 0) {
        const char *v = getenv("FUZZ_VERBOSE");
        verbose = v && v[0] && strcmp(v, "0") != 0;
    }
    return verbose;
}

static void ignore_check_line(const char *line, unsigned kind, void *opaque)
{
    (void)kind;
    if (!line || !line[0]) {
        fuzz_finding("check reported an empty line", NULL);
    }
    if (fuzz_verbose()) {
        fprintf(stderr, "fuzz: %s: %s\n", opaque ? (const char *)opaque
                                                  : "check", line);
    }
}

/*
 * qemu-img check on the open image: it must finish or fail with a
 * message, and its counts are never negative.
 */
static void fuzz_check(struct qimg_image *img)
{
    if (!qimg_check_supported(img)) {
        return;
    }
    struct qimg_check_result res;
    if (qimg_check(img, 0, ignore_check_line, NULL, &res) < 0) {
        fuzz_expect_error_set("qimg_check");
    }
    if (res.corruptions < 0 || res.leaks < 0 || res.check_errors < 0 ||
        res.total_clusters < 0 || res.allocated_clusters < 0 ||
        res.fragmented_clusters < 0 || res.compressed_clusters < 0 ||
        res.image_end_offset < 0) {
        fuzz_finding("check gave a negative count", NULL);
    }
    struct qimg_value *v = qimg_check_result_to_value(&res, FUZZ_NAME,
                                                      qimg_get_format(img));
    if (!v) {
        fuzz_finding("qimg_check_result_to_value failed", NULL);
    }
    qimg_value_free(v);
}

/*
 * qemu-img check -r all on a writable copy of a small input (opened as
 * qemu-img check opens, with QIMG_OPEN_CHECK, so damage a normal open
 * refuses still gets here).  The repair must finish or fail with a
 * message; when it says nothing is left to fix, a second check must
 * find nothing either.  The copy may not grow past FUZZ_REPAIR_MAX_FILE,
 * whatever offsets the damaged tables name.
 */
static void fuzz_repair(const struct fuzz_target *t, const uint8_t *data,
                        size_t size)
{
    if (!t->repair || t->descriptor || size > FUZZ_REPAIR_MAX_INPUT) {
        return;
    }
    unsigned flags = QIMG_OPEN_RDWR | QIMG_OPEN_CHECK | QIMG_OPEN_NO_EXTERNAL;
    struct qimg_image *img = NULL;
    int ret = -EPERM;
    for (int i = 0; i < 2 && ret == -EPERM; i++) {
        struct qimg_io *io;
        if (fuzz_leaf_open(data, size, true, FUZZ_REPAIR_MAX_FILE, NULL,
                           &io) < 0) {
            fuzz_finding("could not make the repair copy", NULL);
        }
        ret = image_open_leaf(io, t->format, flags, &img);
        if (ret < 0) {
            fuzz_expect_error_set("open for repair");
        }
        flags |= QIMG_OPEN_NO_BACKING;
    }
    if (ret < 0) {
        return;
    }
    struct qimg_check_result res;
    memset(&res, 0, sizeof(res));
    if (qimg_check(img, QIMG_CHECK_FIX_LEAKS | QIMG_CHECK_FIX_ERRORS,
                   ignore_check_line, "repair", &res) < 0) {
        fuzz_expect_error_set("qimg_check -r all");
    } else if (res.corruptions == 0 && res.leaks == 0 &&
               res.check_errors == 0) {
        struct qimg_check_result again;
        memset(&again, 0, sizeof(again));
        if (qimg_check(img, 0, ignore_check_line, "recheck", &again) < 0) {
            fuzz_expect_error_set("qimg_check after repair");
            fuzz_finding("check failed on an image repair left clean",
                         qimg_get_error());
        }
        if (again.corruptions || again.leaks || again.check_errors) {
            fprintf(stderr, "fuzz: after repair: %lld corruptions, %lld "
                    "leaks, %lld check errors\n",
                    (long long)again.corruptions, (long long)again.leaks,
                    (long long)again.check_errors);
            fuzz_finding("a repair that left nothing to fix did not fix "
                         "it", NULL);
        }
    }
    if (qimg_close(img) < 0) {
        fuzz_expect_error_set("qimg_close after repair");
    }
}

/* ---- Guest writes on a writable copy (fuzz_writes) -------------------- */

/* One guest write of the step: len bytes of fill at off, or zeros. */
struct fuzz_write_op {
    uint64_t off;
    uint64_t len;
    uint8_t fill;
    bool zero;
    bool done; /* the call succeeded */
};

#define FUZZ_WRITE_OPS 6
#define FUZZ_WRITE_MAX_LEN 8192

/*
 * The writes, placed from the disk size and cluster size so that they
 * reach what the format does differently: a whole aligned sector at the
 * start and a partial one in the middle (read-modify-write), a write
 * across a cluster boundary, the unaligned tail of the disk, a zero write
 * over the start (may unmap) and two aligned pages a third of the way in.
 * Those that do not fit the disk are left out (len 0).
 */
static void fuzz_write_plan(uint64_t size, uint64_t cluster,
                            struct fuzz_write_op op[FUZZ_WRITE_OPS])
{
    const struct fuzz_write_op want[FUZZ_WRITE_OPS] = {
        {0, 512, 0x5a, false, false},
        {align_down_u64(size / 2, 512) + 100, 300, 0xa5, false, false},
        {cluster - 512, 1024, 0x3c, false, false},
        {size > 1500 ? size - 1500 : 0, 1500, 0x77, false, false},
        {0, 4096, 0, true, false},
        {align_down_u64(size / 3, 4096), 8192, 0x11, false, false},
    };
    for (int i = 0; i < FUZZ_WRITE_OPS; i++) {
        op[i] = want[i];
        if (op[i].off >= size) {
            op[i].len = 0;
        } else {
            op[i].len = min_u64(op[i].len, size - op[i].off);
        }
    }
}

/* Whether [off, off + len) lies within one 512-byte sector. */
static bool in_one_sector(uint64_t off, uint64_t len)
{
    return len > 0 && off / 512 == (off + len - 1) / 512;
}

/*
 * What op[i]'s range must read as after ops [first, n) (each that
 * succeeded laid over the ones before): want holds the bytes and known
 * marks those some op set.  Bytes no write touched are the image's own.
 */
static void fuzz_write_expect(const struct fuzz_write_op *op, int first,
                              int n, int i, uint8_t *want, bool *known)
{
    memset(known, 0, (size_t)op[i].len);
    for (int j = first; j < n; j++) {
        uint64_t lo = max_u64(op[i].off, op[j].off);
        uint64_t hi = min_u64(op[i].off + op[i].len, op[j].off + op[j].len);
        if (!op[j].done || lo >= hi) {
            continue;
        }
        memset(want + (lo - op[i].off), op[j].zero ? 0 : op[j].fill,
               (size_t)(hi - lo));
        memset(known + (lo - op[i].off), 1, (size_t)(hi - lo));
    }
}

/*
 * Read op[i]'s range and compare it with ops [first, n); false on a
 * mismatch.
 */
static bool fuzz_write_reads_back(struct qimg_image *img,
                                  const struct fuzz_write_op *op, int first,
                                  int n, int i, uint8_t *buf, uint8_t *want,
                                  bool *known)
{
    if (qimg_pread(img, buf, (size_t)op[i].len, op[i].off) < 0) {
        /* A hostile image may fail a read: with a message. */
        fuzz_expect_error_set("qimg_pread after a write");
        return true;
    }
    fuzz_write_expect(op, first, n, i, want, known);
    for (uint64_t k = 0; k < op[i].len; k++) {
        if (known[k] && buf[k] != want[k]) {
            fprintf(stderr, "fuzz: write %d [%llu, +%llu): byte %llu reads "
                    "0x%02x, not 0x%02x\n", i, (unsigned long long)op[i].off,
                    (unsigned long long)op[i].len, (unsigned long long)k,
                    buf[k], want[k]);
            return false;
        }
    }
    return true;
}

/*
 * Whether a check finds img clean (a format without check: never);
 * with allow_leaks, leaked clusters do not count.
 */
static bool fuzz_check_clean(struct qimg_image *img, const char *what,
                             bool allow_leaks)
{
    if (!qimg_check_supported(img)) {
        return false;
    }
    struct qimg_check_result res;
    memset(&res, 0, sizeof(res));
    if (qimg_check(img, 0, ignore_check_line, (void *)what, &res) < 0) {
        fuzz_expect_error_set("qimg_check");
        return false;
    }
    return res.corruptions == 0 && (allow_leaks || res.leaks == 0) &&
           res.check_errors == 0;
}

/*
 * Guest writes on a writable copy of the input, opened as qemu-img or
 * qemu-io open an image to write it (a backing file refused, then the
 * layer alone): what writing to an untrusted image does.  Every call must
 * succeed or fail with a message.  A write within one sector goes to one
 * host sector whatever the tables say, so it must read back at once.
 * When the format's check rules out shared clusters (writes_checked) and
 * finds the copy clean first, and every write succeeds, every write must
 * read back, again after a clean close and a reopen, and the image must
 * check without corruptions then.  The copy may not grow past
 * FUZZ_REPAIR_MAX_FILE.
 */
static void fuzz_writes(const struct fuzz_target *t, const uint8_t *data,
                        size_t size)
{
    if (!t->writes || t->descriptor) {
        return;
    }
    struct fuzz_kept kept = {0};
    unsigned flags = QIMG_OPEN_RDWR | QIMG_OPEN_NO_EXTERNAL;
    struct qimg_image *img = NULL;
    int ret = -EPERM;
    for (int i = 0; i < 2 && ret == -EPERM; i++) {
        struct qimg_io *io;
        if (fuzz_leaf_open(data, size, true, FUZZ_REPAIR_MAX_FILE, &kept,
                           &io) < 0) {
            fuzz_finding("could not make the copy to write", NULL);
        }
        ret = fuzz_open_io(t, io, flags, &img);
        flags |= QIMG_OPEN_NO_BACKING;
    }
    if (ret < 0) {
        fuzz_kept_free(&kept);
        return;
    }
    int64_t disk = qimg_get_size(img);
    if (disk < 512) {
        qimg_close(img);
        fuzz_kept_free(&kept);
        return;
    }
    uint64_t cluster = qimg_get_cluster_size(img);
    if (cluster < 512 || (cluster & (cluster - 1))) {
        cluster = 64 * 1024;
    }
    bool strict =
        t->writes_checked && fuzz_check_clean(img, "before writes", false);

    struct fuzz_write_op op[FUZZ_WRITE_OPS];
    fuzz_write_plan((uint64_t)disk, cluster, op);
    uint8_t *buf = malloc(FUZZ_WRITE_MAX_LEN);
    uint8_t *want = malloc(FUZZ_WRITE_MAX_LEN);
    bool *known = malloc(FUZZ_WRITE_MAX_LEN * sizeof(*known));
    if (!buf || !want || !known) {
        fuzz_finding("out of memory in the fuzz loop", NULL);
    }
    for (int i = 0; i < FUZZ_WRITE_OPS; i++) {
        if (op[i].len == 0) {
            continue;
        }
        if (op[i].zero) {
            ret = qimg_pwrite_zeroes(img, op[i].off, op[i].len,
                                     QIMG_ZERO_MAY_UNMAP);
        } else {
            memset(buf, op[i].fill, (size_t)op[i].len);
            ret = qimg_pwrite(img, buf, (size_t)op[i].len, op[i].off);
        }
        if (ret < 0) {
            fuzz_expect_error_set(op[i].zero ? "qimg_pwrite_zeroes"
                                             : "qimg_pwrite");
            strict = false;
            continue;
        }
        op[i].done = true;
        /*
         * When clusters may be shared, only a one-sector write's own
         * bytes are known (an earlier write may have gone to the same
         * host cluster).
         */
        bool alone = !strict && in_one_sector(op[i].off, op[i].len);
        if ((strict || alone) &&
            !fuzz_write_reads_back(img, op, alone ? i : 0, i + 1, i, buf,
                                   want, known)) {
            fuzz_finding("a write did not read back", NULL);
        }
    }
    if (qimg_flush(img) < 0) {
        fuzz_expect_error_set("qimg_flush after writes");
        strict = false;
    }
    if (qimg_close(img) < 0) {
        fuzz_expect_error_set("qimg_close after writes");
        strict = false;
    }
    if (fuzz_verbose()) {
        for (int i = 0; i < FUZZ_WRITE_OPS; i++) {
            fprintf(stderr, "fuzz: write %d [%llu, +%llu): %s\n", i,
                    (unsigned long long)op[i].off,
                    (unsigned long long)op[i].len,
                    op[i].len == 0 ? "left out" : op[i].done ? "done"
                                                             : "failed");
        }
        fprintf(stderr, "fuzz: writes %s\n",
                strict ? "on a clean image, checked after a reopen"
                       : "not checked after a reopen");
    }

    /* The image as the writes left it: reopened, read back, checked. */
    struct qimg_io *io;
    if (strict && kept.data &&
        fuzz_leaf_open(kept.data, kept.len, false, kept.len, NULL, &io) == 0) {
        if (fuzz_open_io(t, io, (flags & ~QIMG_OPEN_RDWR) |
                                    QIMG_OPEN_FORCE_SHARE, &img) < 0) {
            fuzz_finding("the written image no longer opens",
                         qimg_get_error());
        }
        for (int i = 0; i < FUZZ_WRITE_OPS; i++) {
            if (op[i].len &&
                !fuzz_write_reads_back(img, op, 0, FUZZ_WRITE_OPS, i, buf,
                                       want, known)) {
                fuzz_finding("a write did not survive a close and reopen",
                             NULL);
            }
        }
        /*
         * Leaks are allowed: refcounts a clean image holds for clusters
         * past its end, which no check counts, become leaks once the
         * file grows over them (in QEMU too).  The write target checks
         * for leaks on images it made.
         */
        if (!fuzz_check_clean(img, "after writes", true)) {
            fuzz_finding("writes left a clean image corrupt",
                         qimg_get_error());
        }
        qimg_close(img);
    }
    free(buf);
    free(want);
    free(known);
    fuzz_kept_free(&kept);
}

void fuzz_image(const struct fuzz_target *t, const uint8_t *data, size_t size)
{
    /* A 1 MiB input can repeat one L2 table 10^9 times; keep it brief. */
    check_max_table_entries = FUZZ_CHECK_TABLE_ENTRIES;
    qimg_set_warning_handler(on_warning, NULL);
    (void)format_probe_buffer(data, (size_t)min_u64(size, FUZZ_PROBE_BYTES),
                              FUZZ_NAME);

    struct fuzz_source src = {
        .data = data,
        .size = size,
        .name = FUZZ_NAME,
        .base_flags = QIMG_OPEN_NO_EXTERNAL | QIMG_OPEN_FORCE_SHARE,
    };
    if (t->descriptor) {
        /* The descriptor names the extent; the input names nothing. */
        extent_write(data, size);
        src.data = (const uint8_t *)t->descriptor;
        src.size = strlen(t->descriptor);
        src.name = extent_desc;
        src.base_flags = QIMG_OPEN_FORCE_SHARE;
    }
    struct qimg_image *img;

    /*
     * Guest data, read-only.  A backing or data file the image names
     * must be refused (EPERM); the layer alone is then read without its
     * backing file, where unallocated ranges read as zeros.
     */
    unsigned open_flags = 0;
    int ret = fuzz_open(t, &src, open_flags, &img);
    if (ret == -ENOENT && t->descriptor) {
        /* The input is never read then: the target fuzzes nothing. */
        fuzz_finding("the descriptor's extent file is missing",
                     qimg_get_error());
    }
    if (ret == 0 && img->top->backing) {
        fuzz_finding("a backing file was opened", img->top->backing_name);
    }
    if (ret == -EPERM) {
        open_flags = QIMG_OPEN_NO_BACKING;
        ret = fuzz_open(t, &src, open_flags, &img);
    }
    if (ret == 0) {
        fuzz_info(img);
        fuzz_walk(img);
        fuzz_check(img);
        fuzz_snapshots(t, &src, open_flags, img);
        qimg_close(img);
        fuzz_repair(t, data, size);
        fuzz_writes(t, data, size);
        return;
    }

    /*
     * What "qemu-img info" opens: metadata only, this layer only, which
     * succeeds for some images a full open refuses (a data file named,
     * encryption keys absent).  Each input takes one of the two paths,
     * so each costs one open, not two.
     */
    if (fuzz_open(t, &src, QIMG_OPEN_NO_IO | QIMG_OPEN_NO_BACKING, &img) == 0) {
        fuzz_info(img);
        qimg_close(img);
    }
    fuzz_repair(t, data, size);
    fuzz_writes(t, data, size);
}

/* ---- The fuzz leaf (see fuzz_common.h) ---------------------------------- */

struct fuzz_leaf {
    struct qimg_io io; /* first: passed around as a qimg_io */
    struct qimg_io *mem;
    uint64_t max_size;
    struct fuzz_kept *keep;
};

static const struct qimg_io_ops fuzz_leaf_ops;

static struct fuzz_leaf *fuzz_leaf_from(struct qimg_io *io)
{
    return (struct fuzz_leaf *)io;
}

/* [off, off + len) must end within the leaf's limit. */
static int fuzz_leaf_check_end(struct fuzz_leaf *l, uint64_t off,
                               uint64_t len)
{
    if (off > l->max_size || len > l->max_size - off) {
        return error_set(EFBIG, "'%s': the fuzz leaf holds at most %llu "
                         "bytes", l->io.filename,
                         (unsigned long long)l->max_size);
    }
    return 0;
}

static void fuzz_leaf_close(struct qimg_io *io)
{
    struct fuzz_leaf *l = fuzz_leaf_from(io);
    if (l->keep) {
        size_t n;
        const uint8_t *p = io_mem_buffer(l->mem, &n);
        free(l->keep->data);
        l->keep->data = malloc(n ? n : 1);
        if (!l->keep->data) {
            fuzz_finding("out of memory in the fuzz leaf", NULL);
        }
        memcpy(l->keep->data, p, n);
        l->keep->len = n;
    }
    io_close(l->mem);
    free(l->io.filename);
    free(l);
}

static int64_t fuzz_leaf_get_size(struct qimg_io *io)
{
    return io_get_size(fuzz_leaf_from(io)->mem);
}

static int64_t fuzz_leaf_get_allocated(struct qimg_io *io)
{
    struct qimg_io *m = fuzz_leaf_from(io)->mem;
    return m->ops->get_allocated(m);
}

static int fuzz_leaf_pread(struct qimg_io *io, void *buf, size_t len,
                           uint64_t off)
{
    return io_pread(fuzz_leaf_from(io)->mem, buf, len, off);
}

static int fuzz_leaf_pwrite(struct qimg_io *io, const void *buf, size_t len,
                            uint64_t off)
{
    struct fuzz_leaf *l = fuzz_leaf_from(io);
    int ret = fuzz_leaf_check_end(l, off, len);
    return ret < 0 ? ret : io_pwrite(l->mem, buf, len, off);
}

static int fuzz_leaf_pwrite_zeroes(struct qimg_io *io, uint64_t off,
                                   uint64_t len, bool may_unmap)
{
    struct fuzz_leaf *l = fuzz_leaf_from(io);
    int ret = fuzz_leaf_check_end(l, off, len);
    return ret < 0 ? ret : io_pwrite_zeroes(l->mem, off, len, may_unmap);
}

static int fuzz_leaf_discard(struct qimg_io *io, uint64_t off, uint64_t len)
{
    struct qimg_io *m = fuzz_leaf_from(io)->mem;
    return m->ops->discard(m, off, len);
}

static int fuzz_leaf_flush(struct qimg_io *io)
{
    return io_flush(fuzz_leaf_from(io)->mem);
}

static int fuzz_leaf_truncate(struct qimg_io *io, uint64_t size)
{
    struct fuzz_leaf *l = fuzz_leaf_from(io);
    int ret = fuzz_leaf_check_end(l, size, 0);
    return ret < 0 ? ret : io_truncate(l->mem, size);
}

static int fuzz_leaf_block_status(struct qimg_io *io, uint64_t off,
                                  uint64_t len, uint64_t *pnum)
{
    struct qimg_io *m = fuzz_leaf_from(io)->mem;
    return m->ops->block_status(m, off, len, pnum);
}

static int fuzz_leaf_set_perm(struct qimg_io *io, unsigned perm,
                              unsigned unshared)
{
    struct qimg_io *m = fuzz_leaf_from(io)->mem;
    int ret = m->ops->set_perm(m, perm, unshared);
    io->writable = m->writable;
    return ret;
}

static const struct qimg_io_ops fuzz_leaf_ops = {
    .name = "fuzz",
    .close = fuzz_leaf_close,
    .get_size = fuzz_leaf_get_size,
    .get_allocated = fuzz_leaf_get_allocated,
    .pread = fuzz_leaf_pread,
    .pwrite = fuzz_leaf_pwrite,
    .pwrite_zeroes = fuzz_leaf_pwrite_zeroes,
    .discard = fuzz_leaf_discard,
    .flush = fuzz_leaf_flush,
    .truncate = fuzz_leaf_truncate,
    .block_status = fuzz_leaf_block_status,
    .set_perm = fuzz_leaf_set_perm,
};

int fuzz_leaf_open(const uint8_t *data, size_t len, bool writable,
                   uint64_t max_size, struct fuzz_kept *keep,
                   struct qimg_io **out)
{
    *out = NULL;
    struct fuzz_leaf *l = calloc(1, sizeof(*l));
    char *name = strdup(FUZZ_NAME);
    if (!l || !name) {
        free(l);
        free(name);
        return error_set(ENOMEM, "Out of memory");
    }
    int ret = io_mem_open(FUZZ_NAME, data, len, writable ? IO_RDWR : 0,
                          &l->mem);
    if (ret < 0) {
        free(l);
        free(name);
        return ret;
    }
    l->io.ops = &fuzz_leaf_ops;
    l->io.filename = name;
    l->io.writable = l->mem->writable;
    l->max_size = max_size;
    l->keep = keep;
    *out = &l->io;
    return 0;
}

const uint8_t *fuzz_leaf_buffer(struct qimg_io *io, size_t *len)
{
    if (!io || io->ops != &fuzz_leaf_ops) {
        fuzz_finding("fuzz_leaf_buffer: not a fuzz leaf", NULL);
    }
    return io_mem_buffer(fuzz_leaf_from(io)->mem, len);
}

void fuzz_kept_free(struct fuzz_kept *k)
{
    free(k->data);
    k->data = NULL;
    k->len = 0;
}
