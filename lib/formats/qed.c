/*
 * qed: the QEMU Enhanced Disk format: read, write, create and check.
 *
 * Layout (all little-endian): a 64-byte header at offset 0 in a header
 * area of header_size clusters (which also holds the backing file name),
 * an L1 table of table_size clusters at l1_table_offset, and L2 tables of
 * the same size.  Both tables hold 64-bit host offsets: 0 is unallocated
 * (the backing file shows through), 1 (L2 only) is a zero cluster, any
 * other value a cluster-aligned offset past the header area and inside
 * the file.  QEMU's open-time limits and messages are kept.
 *
 * Writes, as QEMU's: new data clusters and then new L2 tables go at the
 * end of the file; the data is written before the L2 entry naming it and
 * a new L2 table before the L1 entry, so that a crash leaks clusters at
 * worst.  Before the first allocation the header's need-check feature is
 * set (and synced); flush clears it again once everything is durable.
 * An image found with the flag set by a writable open is checked and
 * repaired first (QEMU's check, below, with repairs).
 *
 * Offsets are checked against the header area and the file's end, but a
 * damaged table can still name the L1 table or an L2 table as data, or
 * put an L2 table on the L1 table; QEMU then writes guest data or
 * entries over them.  qimg refuses such a write (qed_check_meta).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "driver.h"
#include "util/checked.h"
#include "util/endian.h"
#include "util/extent_set.h"

#define QED_MAGIC 0x00444551u /* "QED\0" */
#define QED_HEADER_BYTES 64u
#define QED_MIN_CLUSTER_SIZE (4u << 10)
#define QED_MAX_CLUSTER_SIZE (64u << 20)
#define QED_DEFAULT_CLUSTER_SIZE (64u << 10)
#define QED_MIN_TABLE_SIZE 1u
#define QED_MAX_TABLE_SIZE 16u
#define QED_DEFAULT_TABLE_SIZE 4u
/* Features: a backing file; opened unclean; the backing file is raw. */
#define QED_F_BACKING_FILE (1ull << 0)
#define QED_F_NEED_CHECK (1ull << 1)
#define QED_F_BACKING_FORMAT_NO_PROBE (1ull << 2)
#define QED_FEATURE_MASK \
    (QED_F_BACKING_FILE | QED_F_NEED_CHECK | QED_F_BACKING_FORMAT_NO_PROBE)
/* An L2 entry that reads as zero. */
#define QED_ZERO_CLUSTER 1u
/* QEMU's buffer for the backing file name holds fewer bytes than this. */
#define QED_MAX_BACKING_NAME 4096u

/* Header field offsets. */
#define QED_OFF_MAGIC 0
#define QED_OFF_CLUSTER_SIZE 4
#define QED_OFF_TABLE_SIZE 8
#define QED_OFF_HEADER_SIZE 12
#define QED_OFF_FEATURES 16
#define QED_OFF_COMPAT 24
#define QED_OFF_AUTOCLEAR 32
#define QED_OFF_L1 40
#define QED_OFF_IMAGE_SIZE 48
#define QED_OFF_BACKING_OFFSET 56
#define QED_OFF_BACKING_SIZE 60

struct qed_header {
    uint32_t magic;
    uint32_t cluster_size;
    uint32_t table_size;
    uint32_t header_size;
    uint64_t features;
    uint64_t compat_features;
    uint64_t autoclear_features;
    uint64_t l1_table_offset;
    uint64_t image_size;
    uint32_t backing_filename_offset;
    uint32_t backing_filename_size;
};

struct qed_state {
    struct qed_header h;
    /* The file size rounded down to a cluster: offsets must lie below. */
    uint64_t file_size;
    uint64_t header_bytes; /* header_size * cluster_size */
    uint64_t table_bytes;  /* table_size * cluster_size */
    uint64_t entries;      /* entries per table */
    uint64_t l2_span;      /* guest bytes one L2 table maps */
    uint64_t *l1;
    /* One cached L2 table (host order) and its offset (0: none). */
    uint64_t *l2;
    uint64_t l2_offset;
    /*
     * Every L2 table the L1 names, built at the first write into an
     * existing cluster (l2_tables_built) and kept up to date after.
     */
    struct extent_set l2_tables;
    bool l2_tables_built;
    /* This open set need-check (so its flush clears it). */
    bool set_need_check;
    uint8_t *cluster_buf; /* cluster_size bytes, for partial clusters */
};

static void qed_header_decode(const uint8_t *b, struct qed_header *h)
{
    h->magic = load_le32(b + QED_OFF_MAGIC);
    h->cluster_size = load_le32(b + QED_OFF_CLUSTER_SIZE);
    h->table_size = load_le32(b + QED_OFF_TABLE_SIZE);
    h->header_size = load_le32(b + QED_OFF_HEADER_SIZE);
    h->features = load_le64(b + QED_OFF_FEATURES);
    h->compat_features = load_le64(b + QED_OFF_COMPAT);
    h->autoclear_features = load_le64(b + QED_OFF_AUTOCLEAR);
    h->l1_table_offset = load_le64(b + QED_OFF_L1);
    h->image_size = load_le64(b + QED_OFF_IMAGE_SIZE);
    h->backing_filename_offset = load_le32(b + QED_OFF_BACKING_OFFSET);
    h->backing_filename_size = load_le32(b + QED_OFF_BACKING_SIZE);
}

static void qed_header_encode(const struct qed_header *h, uint8_t *b)
{
    memset(b, 0, QED_HEADER_BYTES);
    store_le32(b + QED_OFF_MAGIC, h->magic);
    store_le32(b + QED_OFF_CLUSTER_SIZE, h->cluster_size);
    store_le32(b + QED_OFF_TABLE_SIZE, h->table_size);
    store_le32(b + QED_OFF_HEADER_SIZE, h->header_size);
    store_le64(b + QED_OFF_FEATURES, h->features);
    store_le64(b + QED_OFF_COMPAT, h->compat_features);
    store_le64(b + QED_OFF_AUTOCLEAR, h->autoclear_features);
    store_le64(b + QED_OFF_L1, h->l1_table_offset);
    store_le64(b + QED_OFF_IMAGE_SIZE, h->image_size);
    store_le32(b + QED_OFF_BACKING_OFFSET, h->backing_filename_offset);
    store_le32(b + QED_OFF_BACKING_SIZE, h->backing_filename_size);
}

static int qed_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    if (len < 4) {
        return 0;
    }
    return load_le32(buf) == QED_MAGIC ? 100 : 0;
}

static bool is_pow2_u64(uint64_t v)
{
    return v != 0 && (v & (v - 1)) == 0;
}

static bool qed_cluster_size_valid(uint64_t cs)
{
    return is_pow2_u64(cs) && cs >= QED_MIN_CLUSTER_SIZE &&
           cs <= QED_MAX_CLUSTER_SIZE;
}

static bool qed_table_size_valid(uint64_t ts)
{
    return is_pow2_u64(ts) && ts >= QED_MIN_TABLE_SIZE &&
           ts <= QED_MAX_TABLE_SIZE;
}

/*
 * The largest guest size two levels of tables map, capped at INT64_MAX
 * (the block layer's limit); cluster and table size valid.
 */
static uint64_t qed_max_image_size(uint64_t cs, uint64_t ts)
{
    uint64_t entries = ts * cs / 8; /* <= 2^27 */
    uint64_t span, max;
    if (mul_overflow_u64(entries, cs, &span) ||
        mul_overflow_u64(span, entries, &max) || max > INT64_MAX) {
        return INT64_MAX;
    }
    return max;
}

static bool qed_image_size_valid(uint64_t size, uint64_t cs, uint64_t ts)
{
    return size % 512 == 0 && size <= qed_max_image_size(cs, ts);
}

/*
 * A table or cluster offset QEMU accepts: cluster-aligned, past the
 * header area and below the file size (rounded down to a cluster).
 */
static bool qed_offset_valid(const struct qed_state *s, uint64_t off)
{
    return off % s->h.cluster_size == 0 && off >= s->header_bytes &&
           off < s->file_size;
}

/*
 * A table's first and last clusters must be valid, and QEMU requires the
 * last to lie past the first: one-cluster tables (table_size 1) never
 * open in QEMU, whatever their offset, and neither do they here.
 */
static bool qed_table_offset_valid(const struct qed_state *s, uint64_t off)
{
    uint64_t last;
    return qed_offset_valid(s, off) &&
           !add_overflow_u64(off, s->table_bytes - s->h.cluster_size,
                             &last) &&
           last > off && qed_offset_valid(s, last);
}

static void qed_close(struct qimg_node *node)
{
    struct qed_state *s = node->opaque;
    if (s) {
        free(s->l1);
        free(s->l2);
        free(s->cluster_buf);
        extent_set_free(&s->l2_tables);
        free(s);
    }
    node->opaque = NULL;
}

/* Read a table of s->entries entries at off (valid) into t, host order. */
static int qed_read_table(struct qimg_node *node, struct qed_state *s,
                          uint64_t off, uint64_t *t)
{
    int ret = io_pread(node->file, t, (size_t)s->table_bytes, off);
    if (ret < 0) {
        return ret;
    }
    for (uint64_t i = 0; i < s->entries; i++) {
        t[i] = load_le64(&t[i]);
    }
    return 0;
}

static int qed_read_backing_name(struct qimg_node *node,
                                 struct qed_state *s)
{
    uint64_t off = s->h.backing_filename_offset;
    uint64_t len = s->h.backing_filename_size;
    if (off + len > s->header_bytes) {
        return error_set(EINVAL, "QED backing filename offset is invalid");
    }
    if (len >= QED_MAX_BACKING_NAME) {
        return error_set(EINVAL, "Failed to read backing filename");
    }
    char *name = calloc(1, (size_t)len + 1);
    if (!name) {
        return error_set(ENOMEM, "Out of memory");
    }
    int ret = len ? io_pread(node->file, name, (size_t)len, off) : 0;
    if (ret < 0) {
        free(name);
        return error_prefix(-ret, "Failed to read backing filename");
    }
    if (name[0] == '\0') {
        free(name); /* an empty name is no backing file */
        return 0;
    }
    node->backing_name = name;
    if (s->h.features & QED_F_BACKING_FORMAT_NO_PROBE) {
        node->backing_format = strdup("raw");
        if (!node->backing_format) {
            return error_set(ENOMEM, "Out of memory");
        }
    }
    return 0;
}

/* QEMU's open-time checks, in its order and with its words. */
static int qed_validate(struct qimg_node *node, struct qed_state *s)
{
    const struct qed_header *h = &s->h;
    if (h->magic != QED_MAGIC) {
        return error_set(EINVAL, "Image not in QED format");
    }
    if (h->features & ~QED_FEATURE_MASK) {
        return error_set(ENOTSUP, "Unsupported QED features: %llx",
                         (unsigned long long)(h->features &
                                              ~QED_FEATURE_MASK));
    }
    if (!qed_cluster_size_valid(h->cluster_size)) {
        return error_set(EINVAL, "QED cluster size is invalid");
    }
    int64_t fsize = io_get_size(node->file);
    if (fsize < 0) {
        return (int)fsize;
    }
    s->file_size = align_down_u64((uint64_t)fsize, h->cluster_size);
    if (!qed_table_size_valid(h->table_size)) {
        return error_set(EINVAL, "QED table size is invalid");
    }
    if (!qed_image_size_valid(h->image_size, h->cluster_size,
                              h->table_size)) {
        return error_set(EINVAL, "QED image size is invalid");
    }
    /* Both < 2^32 * 2^26: no overflow. */
    s->header_bytes = (uint64_t)h->header_size * h->cluster_size;
    s->table_bytes = (uint64_t)h->table_size * h->cluster_size;
    s->entries = s->table_bytes / 8;
    s->l2_span = s->entries * h->cluster_size; /* <= 2^53 */
    if (!qed_table_offset_valid(s, h->l1_table_offset)) {
        return error_set(EINVAL, "QED table offset is invalid");
    }
    return 0;
}

/* Write the 64-byte header (the backing file name stays as it is). */
static int qed_write_header(struct qimg_node *node, struct qed_state *s)
{
    uint8_t buf[QED_HEADER_BYTES];
    qed_header_encode(&s->h, buf);
    return io_pwrite(node->file, buf, sizeof(buf), 0);
}

/* The used-cluster bitmap of a check, over the file's whole clusters. */
struct qed_check {
    struct qed_state *s;
    struct qimg_check_result *res;
    uint64_t nclusters;
    uint8_t *used;
    bool fix;
};

/*
 * Mark n clusters from host offset off used (all inside the file); each
 * one used already is a corruption.  Returns whether none was.
 */
static bool qed_check_use(struct qed_check *c, uint64_t off, uint64_t n)
{
    uint64_t cluster = off / c->s->h.cluster_size;
    int64_t dups = 0;
    for (uint64_t i = cluster; i < cluster + n && i < c->nclusters; i++) {
        uint8_t bit = (uint8_t)(1u << (i % 8));
        if (c->used[i / 8] & bit) {
            dups++;
        }
        c->used[i / 8] |= bit;
    }
    c->res->corruptions += dups;
    return dups == 0;
}

/*
 * One L2 table (loaded into s->l2): its invalid entries (dropped when
 * fixing), statistics as QEMU counts them.  Returns the invalid count.
 */
static uint64_t qed_check_l2(struct qed_check *c)
{
    struct qed_state *s = c->s;
    uint64_t invalid = 0, last = 0;
    for (uint64_t i = 0; i < s->entries; i++) {
        uint64_t e = s->l2[i];
        if (e <= QED_ZERO_CLUSTER) {
            continue;
        }
        c->res->allocated_clusters++;
        if (last && e - last != s->h.cluster_size) {
            c->res->fragmented_clusters++;
        }
        last = e;
        if (!qed_offset_valid(s, e)) {
            if (c->fix) {
                s->l2[i] = 0;
                c->res->corruptions_fixed++;
            } else {
                c->res->corruptions++;
            }
            invalid++;
            continue;
        }
        qed_check_use(c, e, 1);
    }
    return invalid;
}

/* Write the whole cached L2 table (host order) back at off. */
static int qed_write_l2_table(struct qimg_node *node, struct qed_state *s,
                              uint64_t off)
{
    uint64_t *t = malloc((size_t)s->table_bytes);
    if (!t) {
        return error_set(ENOMEM, "Out of memory");
    }
    for (uint64_t i = 0; i < s->entries; i++) {
        store_le64((uint8_t *)&t[i], s->l2[i]);
    }
    int ret = io_pwrite(node->file, t, (size_t)s->table_bytes, off);
    free(t);
    return ret;
}

static int qed_write_l1_table(struct qimg_node *node, struct qed_state *s)
{
    uint64_t *t = malloc((size_t)s->table_bytes);
    if (!t) {
        return error_set(ENOMEM, "Out of memory");
    }
    for (uint64_t i = 0; i < s->entries; i++) {
        store_le64((uint8_t *)&t[i], s->l1[i]);
    }
    int ret = io_pwrite(node->file, t, (size_t)s->table_bytes,
                        s->h.l1_table_offset);
    free(t);
    return ret;
}

/*
 * QEMU's qed check: L2 table offsets and cluster offsets must be valid
 * and every cluster referenced once; clusters past the header that
 * nothing references are leaks.  It prints no lines.  Any repair flag
 * drops the invalid entries (leaks stay) and, when nothing is left
 * broken, clears need-check.
 */
static int qed_check(struct qimg_node *node, unsigned flags,
                     qimg_check_message_fn report, void *opaque,
                     struct qimg_check_result *res)
{
    (void)report;
    (void)opaque;
    struct qed_state *s = node->opaque;
    struct qed_check c = {
        .s = s,
        .res = res,
        .nclusters = s->file_size / s->h.cluster_size,
        .fix = (flags & (QIMG_CHECK_FIX_LEAKS | QIMG_CHECK_FIX_ERRORS)) != 0,
    };
    /* nclusters <= file size / 4 KiB: bounded by the file. */
    c.used = calloc(1, (size_t)(c.nclusters / 8 + 1));
    if (!c.used) {
        return error_set(ENOMEM, "Out of memory");
    }
    res->total_clusters = (int64_t)div_round_up_u64(s->h.image_size,
                                                    s->h.cluster_size);
    qed_check_use(&c, s->h.l1_table_offset, s->h.table_size);
    uint64_t invalid_l2 = 0;
    int last_error = 0;
    for (uint64_t i = 0; i < s->entries; i++) {
        uint64_t off = s->l1[i];
        if (off == 0) {
            continue;
        }
        if (!qed_table_offset_valid(s, off)) {
            if (c.fix) {
                s->l1[i] = 0;
                res->corruptions_fixed++;
            } else {
                res->corruptions++;
            }
            invalid_l2++;
            continue;
        }
        if (!qed_check_use(&c, off, s->h.table_size)) {
            continue;
        }
        s->l2_offset = 0;
        int ret = qed_read_table(node, s, off, s->l2);
        if (ret < 0) {
            res->check_errors++;
            last_error = ret;
            continue;
        }
        s->l2_offset = off;
        if (qed_check_l2(&c) > 0 && c.fix) {
            ret = qed_write_l2_table(node, s, off);
            if (ret < 0) {
                res->check_errors++;
                last_error = ret;
            }
        }
    }
    if (invalid_l2 > 0 && c.fix) {
        int ret = qed_write_l1_table(node, s);
        if (ret < 0) {
            res->check_errors++;
            last_error = ret;
        }
    }
    if (last_error == 0) {
        for (uint64_t i = s->h.header_size; i < c.nclusters; i++) {
            if (!(c.used[i / 8] & (1u << (i % 8)))) {
                res->leaks++;
            }
        }
        if (c.fix && res->corruptions == 0 && res->check_errors == 0 &&
            (s->h.features & QED_F_NEED_CHECK)) {
            int ret = node_sync(node, node->file);
            s->h.features &= ~QED_F_NEED_CHECK;
            s->set_need_check = false;
            if (ret == 0) {
                ret = qed_write_header(node, s);
            }
            if (ret < 0) {
                last_error = ret;
            }
        }
    }
    free(c.used);
    /* QEMU's check fails on an I/O error after counting it. */
    return last_error;
}

/* The repair at open reports nothing. */
static void qed_no_report(const char *line, unsigned kind, void *opaque)
{
    (void)line;
    (void)kind;
    (void)opaque;
}

static int qed_open(struct qimg_node *node, unsigned flags)
{
    struct qed_state *s = calloc(1, sizeof(*s));
    if (!s) {
        return error_set(ENOMEM, "Out of memory");
    }
    node->opaque = s;
    uint8_t buf[QED_HEADER_BYTES];
    int ret = io_pread(node->file, buf, sizeof(buf), 0);
    if (ret < 0) {
        ret = error_prefix(-ret, "Could not read the QED header");
        goto fail;
    }
    qed_header_decode(buf, &s->h);
    ret = qed_validate(node, s);
    if (ret == 0 && (s->h.features & QED_F_BACKING_FILE)) {
        ret = qed_read_backing_name(node, s);
    }
    if (ret < 0) {
        goto fail;
    }
    /*
     * The tables lie inside the file (checked above and for each L2
     * table before it is read), so their size is bounded by the file's.
     */
    s->l1 = malloc((size_t)s->table_bytes);
    s->l2 = malloc((size_t)s->table_bytes);
    if (!s->l1 || !s->l2) {
        ret = error_set(ENOMEM, "Could not allocate the QED tables");
        goto fail;
    }
    ret = qed_read_table(node, s, s->h.l1_table_offset, s->l1);
    if (ret < 0) {
        ret = error_prefix(-ret, "Could not read the QED L1 table");
        goto fail;
    }
    node->size = s->h.image_size;
    /*
     * A writable open clears autoclear features it does not know (all
     * of them), then repairs an image left with need-check set (unless
     * it is opened for qemu-img check), as QEMU does.
     */
    if (node->writable && s->h.autoclear_features) {
        s->h.autoclear_features = 0;
        ret = qed_write_header(node, s);
        if (ret < 0) {
            goto fail;
        }
    }
    if (node->writable && (s->h.features & QED_F_NEED_CHECK) &&
        !(flags & QIMG_OPEN_CHECK)) {
        struct qimg_check_result res;
        memset(&res, 0, sizeof(res));
        ret = qed_check(node, QIMG_CHECK_FIX_ERRORS, qed_no_report, NULL,
                        &res);
        if (ret < 0) {
            ret = error_prefix(-ret, "Image corrupted");
            goto fail;
        }
    }
    return 0;
fail:
    qed_close(node);
    return ret;
}

/*
 * The L2 entry for guest offset off: 0 when no L2 table maps it.  A table
 * or cluster offset outside the file is an error, as in QEMU.
 */
static int qed_lookup(struct qimg_node *node, struct qed_state *s,
                      uint64_t off, uint64_t *entry)
{
    uint64_t l1_index = off / s->l2_span;
    uint64_t l2_index = off % s->l2_span / s->h.cluster_size;
    /* off < image_size <= entries * l2_span. */
    uint64_t l2_off = s->l1[l1_index];
    *entry = 0;
    if (l2_off == 0) {
        return 0;
    }
    if (!qed_table_offset_valid(s, l2_off)) {
        return error_set(EINVAL, "%s: QED L2 table offset 0x%llx is "
                         "invalid", node->filename,
                         (unsigned long long)l2_off);
    }
    if (s->l2_offset != l2_off) {
        s->l2_offset = 0;
        int ret = qed_read_table(node, s, l2_off, s->l2);
        if (ret < 0) {
            return ret;
        }
        s->l2_offset = l2_off;
    }
    uint64_t e = s->l2[l2_index];
    if (e > QED_ZERO_CLUSTER && !qed_offset_valid(s, e)) {
        return error_set(EINVAL, "%s: QED cluster offset 0x%llx is "
                         "invalid", node->filename, (unsigned long long)e);
    }
    *entry = e;
    return 0;
}

static int qed_pread(struct qimg_node *node, void *buf, size_t len,
                     uint64_t off)
{
    struct qed_state *s = node->opaque;
    uint8_t *p = buf;
    while (len > 0) {
        uint64_t in_cluster = off % s->h.cluster_size;
        size_t n = (size_t)min_u64(len, s->h.cluster_size - in_cluster);
        uint64_t entry;
        int ret = qed_lookup(node, s, off, &entry);
        if (ret == 0) {
            if (entry == 0) {
                ret = node_read_below(node, p, n, off);
            } else if (entry == QED_ZERO_CLUSTER) {
                memset(p, 0, n);
            } else {
                ret = io_pread(node->file, p, n, entry + in_cluster);
            }
        }
        if (ret < 0) {
            return ret;
        }
        p += n;
        off += n;
        len -= n;
    }
    return 0;
}

/*
 * QEMU's runs: clusters of one L2 table of the same kind (unallocated,
 * zero, or data at consecutive host offsets).
 */
static int qed_block_status(struct qimg_node *node, uint64_t off,
                            uint64_t len, uint64_t *pnum, uint64_t *host_off)
{
    struct qed_state *s = node->opaque;
    uint64_t cs = s->h.cluster_size;
    uint64_t in_cluster = off % cs;
    uint64_t table_end = align_down_u64(off, s->l2_span);
    uint64_t limit = min_u64(len, s->l2_span - (off - table_end));
    uint64_t first;
    int ret = qed_lookup(node, s, off, &first);
    if (ret < 0) {
        return ret;
    }
    uint64_t done = min_u64(limit, cs - in_cluster);
    while (done < limit) {
        uint64_t e;
        ret = qed_lookup(node, s, off + done, &e);
        if (ret < 0) {
            return ret;
        }
        /* off + done starts cluster k of the run: done + in_cluster = k cs */
        bool same = first > QED_ZERO_CLUSTER
                        ? e == first + done + in_cluster
                        : e == first;
        if (!same) {
            break;
        }
        done = min_u64(limit, done + cs);
    }
    *pnum = done;
    if (first == 0) {
        return 0;
    }
    if (first == QED_ZERO_CLUSTER) {
        return BS_ZERO;
    }
    *host_off = first + in_cluster;
    return BS_DATA | BS_OFFSET_VALID;
}

/* Before the first allocation since the last flush: set need-check. */
static int qed_mark_need_check(struct qimg_node *node, struct qed_state *s)
{
    if (s->h.features & QED_F_NEED_CHECK) {
        return 0;
    }
    s->h.features |= QED_F_NEED_CHECK;
    s->set_need_check = true;
    int ret = qed_write_header(node, s);
    if (ret == 0) {
        ret = node_sync(node, node->file);
    }
    return ret;
}

/* What a write puts in the file: a table, or guest data. */
enum qed_meta { QED_META_L1, QED_META_L2, QED_DATA };

/*
 * Whether a write of [off, off + len) would overwrite a table other than
 * the kind being written (an L2 entry goes into an L2 table): the table
 * it would hit, NULL when none or on an error (*err).  The header area
 * lies below every offset qed_lookup accepts.
 */
static const char *qed_meta_hit(struct qimg_node *node, struct qed_state *s,
                                uint64_t off, uint64_t len,
                                enum qed_meta writing, int *err)
{
    /* The tables lie inside the file (qed_table_offset_valid). */
    const uint64_t end = len > UINT64_MAX - off ? UINT64_MAX : off + len;
    const uint64_t l1 = s->h.l1_table_offset;
    *err = 0;
    if (writing != QED_META_L1 && off < l1 + s->table_bytes && l1 < end) {
        return "the L1 table";
    }
    if (writing == QED_META_L2) {
        return NULL;
    }
    if (!s->l2_tables_built) {
        for (uint64_t i = 0; i < s->entries; i++) {
            if (s->l1[i] != 0 &&
                extent_set_add(&s->l2_tables, s->l1[i], s->table_bytes) < 0) {
                extent_set_free(&s->l2_tables);
                *err = error_set(ENOMEM, "%s: Out of memory", node->filename);
                return NULL;
            }
        }
        s->l2_tables_built = true;
    }
    return extent_set_overlaps(&s->l2_tables, off, len) ? "an L2 table"
                                                        : NULL;
}

/* A write of [off, off + len) that lies on another table fails. */
static int qed_check_meta(struct qimg_node *node, struct qed_state *s,
                          uint64_t off, uint64_t len, enum qed_meta writing)
{
    int err;
    const char *what = qed_meta_hit(node, s, off, len, writing, &err);
    if (what) {
        return error_set(EIO, "%s: QED image is corrupt: a write at offset "
                         "%llu would overwrite %s",
                         node->filename, (unsigned long long)off, what);
    }
    return err;
}

/*
 * Before anything of a write at guest offset off goes to the file: the
 * table update it may make must not land on another table (an existing
 * L2 table on the L1 table; a new table's L1 entry on an L2 table).
 */
static int qed_check_table_write(struct qimg_node *node, struct qed_state *s,
                                 uint64_t off)
{
    uint64_t l1_index = off / s->l2_span;
    if (s->l1[l1_index] != 0) {
        return qed_check_meta(node, s, s->l1[l1_index], s->table_bytes,
                              QED_META_L2);
    }
    return qed_check_meta(node, s, s->h.l1_table_offset + l1_index * 8, 8,
                          QED_META_L1);
}

/* n new clusters at the end of the file: their host offset. */
static int qed_alloc(struct qed_state *s, uint64_t n, uint64_t *out)
{
    uint64_t bytes, end;
    if (mul_overflow_u64(n, s->h.cluster_size, &bytes) ||
        add_overflow_u64(s->file_size, bytes, &end) || end > INT64_MAX) {
        return error_set(EFBIG, "QED image file too large");
    }
    *out = s->file_size;
    s->file_size = end;
    return 0;
}

/*
 * Store count entries, values first, first + step, ..., (step 0: all
 * first) for the clusters from guest offset off on, all in one L2
 * table, whose table qed_lookup has just loaded if there is one; else
 * allocate that table (after the data, as QEMU) and update the L1 entry.
 */
static int qed_set_entries(struct qimg_node *node, struct qed_state *s,
                           uint64_t off, uint64_t count, uint64_t first,
                           uint64_t step)
{
    uint64_t l1_index = off / s->l2_span;
    uint64_t l2_index = off % s->l2_span / s->h.cluster_size;
    bool new_table = s->l1[l1_index] == 0;
    uint64_t table = s->l2_offset;
    int ret;
    if (new_table) {
        ret = qed_alloc(s, s->h.table_size, &table);
        if (ret == 0 && s->l2_tables_built &&
            extent_set_add(&s->l2_tables, table, s->table_bytes) < 0) {
            ret = error_set(ENOMEM, "%s: Out of memory", node->filename);
        }
        if (ret < 0) {
            return ret;
        }
        s->l2_offset = 0;
        memset(s->l2, 0, (size_t)s->table_bytes);
    }
    for (uint64_t i = 0; i < count; i++) {
        store_le64((uint8_t *)&s->l2[l2_index + i], first + i * step);
    }
    if (new_table) {
        ret = io_pwrite(node->file, s->l2, (size_t)s->table_bytes, table);
    } else {
        ret = io_pwrite(node->file, &s->l2[l2_index], (size_t)count * 8,
                        table + l2_index * 8);
    }
    for (uint64_t i = 0; i < count; i++) {
        s->l2[l2_index + i] = first + i * step; /* back to host order */
    }
    if (ret < 0 || !new_table) {
        return ret;
    }
    s->l2_offset = table;
    s->l1[l1_index] = table;
    uint8_t le[8];
    store_le64(le, table);
    return io_pwrite(node->file, le, 8, s->h.l1_table_offset + l1_index * 8);
}

/*
 * The clusters after the one at off (entry e, its L2 table loaded) that
 * continue its run in the same L2 table, as QEMU counts them: the same
 * entry for unallocated and zero clusters, consecutive host offsets for
 * data.  Returns the run's length in clusters (>= 1), at most max.
 */
static uint64_t qed_run(const struct qed_state *s, uint64_t off, uint64_t e,
                        uint64_t max)
{
    uint64_t l2_index = off % s->l2_span / s->h.cluster_size;
    uint64_t n = 1;
    if (s->l1[off / s->l2_span] == 0) {
        /* No table: the whole rest of its span is unallocated. */
        return min_u64(max, s->entries - l2_index);
    }
    while (n < max && l2_index + n < s->entries) {
        uint64_t next = s->l2[l2_index + n];
        bool same = e > QED_ZERO_CLUSTER
                        ? next == e + n * s->h.cluster_size
                        : next == e;
        if (!same) {
            break;
        }
        n++;
    }
    return n;
}

/*
 * Fill a partial cluster's buffer: what the cluster at guest offset base
 * read before (the backing file for unallocated, zeros for zero
 * clusters), then n bytes of buf at in_cluster.
 */
static int qed_fill_partial(struct qimg_node *node, struct qed_state *s,
                            uint64_t base, uint64_t entry,
                            uint64_t in_cluster, const uint8_t *buf,
                            size_t n)
{
    uint64_t cs = s->h.cluster_size;
    if (!s->cluster_buf) {
        s->cluster_buf = malloc(cs);
        if (!s->cluster_buf) {
            return error_set(ENOMEM, "Out of memory");
        }
    }
    memset(s->cluster_buf, 0, cs);
    if (entry == 0) {
        /* base < size; the part of the cluster past it stays zero. */
        uint64_t avail = min_u64(cs, node->size - base);
        int ret = node_read_below(node, s->cluster_buf, (size_t)avail,
                                  base);
        if (ret < 0) {
            return ret;
        }
    }
    memcpy(s->cluster_buf + in_cluster, buf, n);
    return 0;
}

/*
 * Write len bytes at guest offset off (in_cluster into its cluster) into
 * k new clusters replacing a run of unallocated or zero clusters (entry):
 * allocated together at the end of the file, the data written, then the
 * L2 entries, as QEMU's allocating write.
 */
static int qed_write_alloc(struct qimg_node *node, struct qed_state *s,
                           uint64_t off, uint64_t entry, uint64_t k,
                           const uint8_t *buf, size_t len)
{
    uint64_t cs = s->h.cluster_size;
    uint64_t in_cluster = off % cs;
    uint64_t base = off - in_cluster;
    int ret = qed_mark_need_check(node, s);
    uint64_t host = 0;
    if (ret == 0) {
        ret = qed_alloc(s, k, &host);
    }
    /* The first cluster, whole or partial. */
    size_t n = (size_t)min_u64(len, cs - in_cluster);
    if (ret == 0 && n < cs) {
        ret = qed_fill_partial(node, s, base, entry, in_cluster, buf, n);
        if (ret == 0) {
            ret = io_pwrite(node->file, s->cluster_buf, cs, host);
        }
    } else if (ret == 0) {
        /* Whole clusters up to the last partial one go out at once. */
        n = (size_t)align_down_u64(len, cs);
        ret = io_pwrite(node->file, buf, n, host);
    }
    size_t done = n;
    if (ret == 0 && done < len) {
        uint64_t mid = align_down_u64(len - done, cs);
        if (mid > 0) {
            ret = io_pwrite(node->file, buf + done, (size_t)mid,
                            host + in_cluster + done);
            done += (size_t)mid;
        }
    }
    if (ret == 0 && done < len) {
        /* The last cluster, partial. */
        uint64_t g = off + done;
        ret = qed_fill_partial(node, s, g, entry, 0, buf + done,
                               len - done);
        if (ret == 0) {
            ret = io_pwrite(node->file, s->cluster_buf, cs,
                            host + (g - base));
        }
    }
    if (ret == 0) {
        ret = qed_set_entries(node, s, base, k, host, cs);
    }
    return ret;
}

static int qed_pwrite(struct qimg_node *node, const void *buf, size_t len,
                      uint64_t off)
{
    struct qed_state *s = node->opaque;
    uint64_t cs = s->h.cluster_size;
    const uint8_t *p = buf;
    while (len > 0) {
        uint64_t in_cluster = off % cs;
        uint64_t entry;
        int ret = qed_lookup(node, s, off, &entry);
        if (ret == 0) {
            ret = qed_check_table_write(node, s, off);
        }
        if (ret < 0) {
            return ret;
        }
        uint64_t clusters = div_round_up_u64(in_cluster + len, cs);
        uint64_t k = qed_run(s, off, entry, clusters);
        size_t n = (size_t)min_u64(len, k * cs - in_cluster);
        if (entry > QED_ZERO_CLUSTER) {
            ret = qed_check_meta(node, s, entry + in_cluster, n, QED_DATA);
            if (ret == 0) {
                ret = io_pwrite(node->file, p, n, entry + in_cluster);
            }
        } else {
            ret = qed_write_alloc(node, s, off, entry, k, p, n);
        }
        if (ret < 0) {
            return ret;
        }
        p += n;
        off += n;
        len -= n;
    }
    return 0;
}

/* Write zeros into [off, off + len), within one cluster, as data. */
static int qed_write_zero_data(struct qimg_node *node, uint64_t off,
                               uint64_t len)
{
    uint8_t *zeros = calloc(1, (size_t)len);
    if (!zeros) {
        return error_set(ENOMEM, "Out of memory");
    }
    int ret = qed_pwrite(node, zeros, (size_t)len, off);
    free(zeros);
    return ret;
}

/*
 * As QEMU: whole clusters become zero clusters (an allocated one is
 * zeroed in place and stays allocated); the unaligned head and tail are
 * written as zero data.
 */
static int qed_pwrite_zeroes(struct qimg_node *node, uint64_t off,
                             uint64_t len, unsigned flags)
{
    (void)flags;
    struct qed_state *s = node->opaque;
    uint64_t cs = s->h.cluster_size;
    while (len > 0) {
        uint64_t in_cluster = off % cs;
        uint64_t n = min_u64(len, cs - in_cluster);
        int ret;
        if (n < cs) {
            ret = qed_write_zero_data(node, off, n);
        } else {
            /* A run of whole clusters of one kind in one L2 table. */
            uint64_t entry, k = 0;
            ret = qed_lookup(node, s, off, &entry);
            if (ret == 0) {
                ret = qed_check_table_write(node, s, off);
            }
            if (ret == 0) {
                k = qed_run(s, off, entry, len / cs);
                n = k * cs;
            }
            if (ret == 0 && entry > QED_ZERO_CLUSTER) {
                ret = qed_check_meta(node, s, entry, n, QED_DATA);
            }
            if (ret == 0 && entry > QED_ZERO_CLUSTER) {
                ret = io_pwrite_zeroes(node->file, entry, n, false);
            } else if (ret == 0 && entry == 0) {
                ret = qed_mark_need_check(node, s);
                if (ret == 0) {
                    ret = qed_set_entries(node, s, off, k, QED_ZERO_CLUSTER,
                                          0);
                }
            }
        }
        if (ret < 0) {
            return ret;
        }
        off += n;
        len -= n;
    }
    return 0;
}

/* Sync, then clear need-check if this open set it, and sync again. */
static int qed_flush(struct qimg_node *node)
{
    struct qed_state *s = node->opaque;
    int ret = node_sync(node, node->file);
    if (ret < 0 || !s->set_need_check) {
        return ret;
    }
    s->h.features &= ~QED_F_NEED_CHECK;
    s->set_need_check = false;
    ret = qed_write_header(node, s);
    if (ret == 0) {
        ret = node_sync(node, node->file);
    }
    return ret;
}

/*
 * Growing only, without preallocation, to a size the tables can map:
 * QEMU's checks in its order and words; the header takes the new size.
 */
static int qed_truncate(struct qimg_node *node, uint64_t size,
                        const char *prealloc)
{
    struct qed_state *s = node->opaque;
    /*
     * Growing with a backing file longer than the image: it would show
     * through the new area unless that is zeroed, which QEMU's qed cannot
     * do as part of a resize, so it refuses.
     */
    if (size > node->size && node->backing &&
        node->backing->size > node->size) {
        return error_set(ENOTSUP, "Block driver does not support requested "
                         "flags");
    }
    if (strcmp(prealloc, "off") != 0) {
        return error_set(ENOTSUP, "Unsupported preallocation mode '%s'",
                         prealloc);
    }
    if (!qed_image_size_valid(size, s->h.cluster_size, s->h.table_size)) {
        return error_set(EINVAL, "Invalid image size specified");
    }
    if (size < s->h.image_size) {
        return error_set(ENOTSUP, "Shrinking images is currently not "
                         "supported");
    }
    uint64_t old = s->h.image_size;
    s->h.image_size = size;
    int ret = qed_write_header(node, s);
    if (ret < 0) {
        s->h.image_size = old;
        return ret;
    }
    node->size = size;
    return 0;
}

/*
 * As QEMU's: the header rewritten with the name right after it (the old
 * name's bytes past the new one stay), the backing features set or
 * cleared (raw: no probing); -ENOSPC when it does not fit the header
 * area.
 */
static int qed_change_backing(struct qimg_node *node, const char *name,
                              const char *format)
{
    struct qed_state *s = node->opaque;
    if (name && s->h.compat_features) {
        return error_set(ENOTSUP, "Unknown QED compat features: %llx",
                         (unsigned long long)s->h.compat_features);
    }
    size_t len = name ? strlen(name) : 0;
    if (len > s->header_bytes || QED_HEADER_BYTES + len > s->header_bytes) {
        return -ENOSPC; /* the caller words it */
    }
    int ret = qed_flush(node);
    if (ret < 0) {
        return ret;
    }
    struct qed_header h = s->h;
    h.features &= ~(QED_F_BACKING_FILE | QED_F_BACKING_FORMAT_NO_PROBE);
    /* QEMU keeps the offset even without a name. */
    h.backing_filename_offset = QED_HEADER_BYTES;
    h.backing_filename_size = (uint32_t)len;
    if (name) {
        h.features |= QED_F_BACKING_FILE;
        if (format && strcmp(format, "raw") == 0) {
            h.features |= QED_F_BACKING_FORMAT_NO_PROBE;
        }
    }
    uint8_t *buf = malloc(QED_HEADER_BYTES + len);
    if (!buf) {
        return error_set(ENOMEM, "Out of memory");
    }
    qed_header_encode(&h, buf);
    memcpy(buf + QED_HEADER_BYTES, name ? name : "", len);
    ret = io_pwrite(node->file, buf, QED_HEADER_BYTES + len, 0);
    free(buf);
    if (ret < 0) {
        return ret;
    }
    s->h = h;
    return node_sync(node, node->file);
}

static int qed_get_info(struct qimg_node *node, struct qimg_image_info *info)
{
    struct qed_state *s = node->opaque;
    info->cluster_size = s->h.cluster_size;
    return 0;
}

static const struct qimg_opt_desc qed_create_opts[] = {
    {"size", QIMG_OPT_SIZE, "Virtual disk size", NULL},
    {"backing_file", QIMG_OPT_STRING, "File name of a base image", NULL},
    {"backing_fmt", QIMG_OPT_STRING, "Image format of the base image",
     NULL},
    {"cluster_size", QIMG_OPT_SIZE, "Cluster size (in bytes)", "65536"},
    {"table_size", QIMG_OPT_SIZE, "L1/L2 table size (in clusters)", NULL},
    {NULL, 0, NULL, NULL},
};

static int qed_opt_size(const struct qimg_opts *opts, const char *name,
                        uint64_t def, uint64_t *out)
{
    const char *text = qimg_opts_get(opts, name);
    *out = def;
    if (text && qimg_parse_size(text, 'B', out) < 0) {
        return error_set(EINVAL, "Parameter '%s' expects a non-negative "
                         "number below 2^64", name);
    }
    return 0;
}

/*
 * As QEMU creates: the header (and backing file name) in a one-cluster
 * header area, then an all-zero L1 table written out in full.
 */
static int qed_create(const char *filename, const struct qimg_opts *opts)
{
    uint64_t size, cs, ts;
    int ret = qed_opt_size(opts, "size", 0, &size);
    if (ret == 0) {
        ret = qed_opt_size(opts, "cluster_size", QED_DEFAULT_CLUSTER_SIZE,
                           &cs);
    }
    if (ret == 0) {
        ret = qed_opt_size(opts, "table_size", QED_DEFAULT_TABLE_SIZE, &ts);
    }
    if (ret < 0) {
        return ret;
    }
    /*
     * The block layer rounds the size up to whole sectors first; one too
     * large to round fails the size check below anyway.
     */
    if (size <= (uint64_t)INT64_MAX - 511) {
        size = (size + 511) & ~(uint64_t)511;
    }
    if (!qed_cluster_size_valid(cs)) {
        return error_set(EINVAL, "QED cluster size must be within range "
                         "[%u, %u] and power of 2", QED_MIN_CLUSTER_SIZE,
                         QED_MAX_CLUSTER_SIZE);
    }
    if (!qed_table_size_valid(ts)) {
        return error_set(EINVAL, "QED table size must be within range "
                         "[%u, %u] and power of 2", QED_MIN_TABLE_SIZE,
                         QED_MAX_TABLE_SIZE);
    }
    if (!qed_image_size_valid(size, cs, ts)) {
        return error_set(EINVAL, "QED image size must be a non-zero "
                         "multiple of cluster size and less than %llu bytes",
                         (unsigned long long)qed_max_image_size(cs, ts));
    }
    const char *backing = qimg_opts_get(opts, "backing_file");
    const char *backing_fmt = qimg_opts_get(opts, "backing_fmt");
    /*
     * QEMU writes a name of any length; one longer than the header area
     * is then partly overwritten by the L1 table and the image does not
     * open ("QED backing filename offset is invalid").  Same here.
     */
    size_t name_len = backing ? strlen(backing) : 0;
    if (name_len > UINT32_MAX) {
        return error_set(EINVAL, "Backing file name too long");
    }
    struct qed_header h = {
        .magic = QED_MAGIC,
        .cluster_size = (uint32_t)cs,
        .table_size = (uint32_t)ts,
        .header_size = 1,
        .l1_table_offset = cs,
        .image_size = size,
    };
    if (backing) {
        h.features |= QED_F_BACKING_FILE;
        h.backing_filename_offset = QED_HEADER_BYTES;
        h.backing_filename_size = (uint32_t)name_len;
        if (backing_fmt && strcmp(backing_fmt, "raw") == 0) {
            h.features |= QED_F_BACKING_FORMAT_NO_PROBE;
        }
    }
    /* cs * ts <= 1 GiB. */
    size_t table_bytes = (size_t)(cs * ts);
    uint8_t *buf = calloc(1, table_bytes);
    if (!buf) {
        return error_set(ENOMEM, "Out of memory");
    }
    uint8_t head[QED_HEADER_BYTES];
    qed_header_encode(&h, head);

    struct qimg_opts *file_opts = qimg_opts_new();
    const char *nocow = qimg_opts_get(opts, "nocow");
    if (!file_opts || (nocow && qimg_opts_set(file_opts, "nocow", nocow))) {
        qimg_opts_free(file_opts);
        free(buf);
        return error_set(ENOMEM, "Out of memory");
    }
    struct qimg_io *io;
    ret = create_file(filename, file_opts, &io);
    qimg_opts_free(file_opts);
    if (ret < 0) {
        free(buf);
        return ret;
    }
    ret = io_pwrite(io, head, sizeof(head), 0);
    if (ret == 0 && name_len) {
        ret = io_pwrite(io, backing, name_len, QED_HEADER_BYTES);
    }
    if (ret == 0) {
        ret = io_pwrite(io, buf, table_bytes, cs);
    }
    free(buf);
    if (ret == 0) {
        ret = io_flush(io);
    }
    io_close(io);
    if (ret < 0) {
        return error_prefix(-ret, "Could not write the QED image");
    }
    return 0;
}

const struct qimg_format_ops format_qed = {
    .name = "qed",
    .probe = qed_probe,
    .open = qed_open,
    .close = qed_close,
    .pread = qed_pread,
    .pwrite = qed_pwrite,
    .pwrite_zeroes = qed_pwrite_zeroes,
    .flush = qed_flush,
    .truncate = qed_truncate,
    .change_backing = qed_change_backing,
    .block_status = qed_block_status,
    .get_info = qed_get_info,
    .check = qed_check,
    .create_opts = qed_create_opts,
    .create = qed_create,
};
