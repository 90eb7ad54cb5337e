/*
 * qcow2: the consistency check [spec: Host cluster management, Cluster
 * mapping], read-only.
 *
 * Like QEMU's check, it counts how often every host cluster is referenced
 * (header, L1 and L2 tables, data and compressed clusters of the active
 * image and of every snapshot, refcount table and blocks, snapshot table,
 * bitmap directory, tables and data, LUKS header), compares the counts
 * with the stored refcounts, then checks the COPIED flags of the active
 * mapping.  The problems, their wording and their order are those of
 * qemu-img 7.2 [QEMU], so that its output can be matched line for line.
 *
 * Memory: the reference counts are kept packed in the image's own
 * refcount width (so they saturate where the image's would), one entry
 * per cluster of the file, capped by QCOW2_CHECK_MAX_REFS_BYTES; tables
 * are read one cluster (L2, refcount block) or one chunk (L1, bitmap
 * table) at a time.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "driver.h"
#include "formats/qcow2/qcow2.h"
#include "util/checked.h"
#include "util/endian.h"

/*
 * The reference count array may not exceed this many bytes.  It holds one
 * entry per cluster of the file (QEMU: at most INT_MAX clusters), so it
 * grows with the file, not with any field of the image; the cap keeps a
 * huge sparse file from costing more memory than a check is worth.
 */
#define QCOW2_CHECK_MAX_REFS_BYTES (512ull << 20)
/* [QEMU] refuses to check files of more than INT_MAX clusters (EFBIG). */
#define QCOW2_CHECK_MAX_CLUSTERS ((uint64_t)INT_MAX)
/*
 * Work limit (check_max_table_entries, driver.h): an image maps each L2
 * table once per L1 table (active and snapshots), so its file size bounds
 * the work, except when L1 entries repeat an L2 table; QEMU then walks
 * the table again each time, and so does qimg, up to the limit.
 */
/* L1 and bitmap tables are read this many entries at a time. */
#define TABLE_CHUNK_ENTRIES 8192u

/* ---- Refcount entries [spec: Host cluster management] ---------------- */

uint64_t qcow2_refcount_load(const uint8_t *block, uint64_t index,
                             unsigned order)
{
    if (order < 3) {
        /* Sub-byte widths: entry 0 is in the least significant bits. */
        unsigned bits = 1u << order;
        unsigned shift = (unsigned)(index & ((8u >> order) - 1)) << order;
        uint8_t b = block[index >> (3 - order)];
        return (b >> shift) & ((1u << bits) - 1);
    }
    const uint8_t *p = block + (index << (order - 3));
    switch (order) {
    case 3:
        return p[0];
    case 4:
        return load_be16(p);
    case 5:
        return load_be32(p);
    default:
        return load_be64(p);
    }
}

void qcow2_refcount_store(uint8_t *block, uint64_t index, unsigned order,
                          uint64_t value)
{
    if (order < 3) {
        unsigned bits = 1u << order;
        unsigned shift = (unsigned)(index & ((8u >> order) - 1)) << order;
        uint8_t mask = (uint8_t)(((1u << bits) - 1) << shift);
        uint8_t *b = &block[index >> (3 - order)];
        *b = (uint8_t)((*b & ~mask) | (((unsigned)value << shift) & mask));
        return;
    }
    uint8_t *p = block + (index << (order - 3));
    switch (order) {
    case 3:
        p[0] = (uint8_t)value;
        break;
    case 4:
        store_be16(p, (uint16_t)value);
        break;
    case 5:
        store_be32(p, (uint32_t)value);
        break;
    default:
        store_be64(p, value);
        break;
    }
}

uint64_t qcow2_refcount_array_bytes(uint64_t entries, unsigned order)
{
    /* entries <= 2^61 here, so the shift cannot overflow. */
    return order < 3 ? div_round_up_u64(entries, 8u >> order)
                     : entries << (order - 3);
}

/* ---- State of one check ------------------------------------------------ */

struct check {
    struct qimg_node *node;
    struct qcow2_state *s;
    qimg_check_message_fn report;
    void *opaque;
    struct qimg_check_result *res;

    uint64_t cs;
    int64_t file_len;
    unsigned order;
    uint64_t refcount_max;

    /* Expected refcounts, nb_clusters entries packed in the image width. */
    uint8_t *refs;
    uint64_t nb_clusters;
    uint64_t refs_bytes;

    /* The refcount table as stored, and one refcount block. */
    uint64_t *reftable;
    uint64_t reftable_entries;
    unsigned rb_bits; /* log2 of entries per refcount block */
    uint8_t *rb_buf;
    uint64_t rb_off; /* offset of the block in rb_buf; 0 = none */
    bool signaled_corruption;

    uint8_t *l2_buf;    /* one L2 table */
    uint64_t l2_visits; /* L2 entries examined so far */
};

/*
 * Report text of the given kind (QIMG_CHECK_LINE_*): one call per line;
 * lines after the first are plain (a message's hints, as QEMU prints
 * them).
 */
static void report_text(struct check *c, unsigned kind, const char *text)
{
    for (;;) {
        const char *nl = strchr(text, '\n');
        if (!nl) {
            c->report(text, kind, c->opaque);
            return;
        }
        char *line = strndup(text, (size_t)(nl - text));
        c->report(line ? line : "(out of memory)", kind, c->opaque);
        free(line);
        kind = QIMG_CHECK_LINE_PLAIN;
        text = nl + 1;
    }
}

static void vreport(struct check *c, unsigned kind, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

static void vreport(struct check *c, unsigned kind, const char *fmt, va_list ap)
{
    /* Snapshot names may be long: the line is as long as it needs. */
    char *text = NULL;
    if (vasprintf(&text, fmt, ap) < 0) {
        text = NULL;
    }
    report_text(c, kind, text ? text : "(out of memory)");
    free(text);
}

/* A line qemu-img prints as it is (fprintf to stderr). */
static void say(struct check *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void say(struct check *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport(c, QIMG_CHECK_LINE_PLAIN, fmt, ap);
    va_end(ap);
}

/* A line qemu-img prints as an error message (error_report). */
static void say_error(struct check *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void say_error(struct check *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport(c, QIMG_CHECK_LINE_ERROR, fmt, ap);
    va_end(ap);
}

/* QEMU's bdrv_pread() rules: EIO past QCOW2_MAX_IO_END, zeros past EOF. */
static int read_file(struct check *c, void *buf, size_t len, uint64_t off)
{
    if (!qcow2_read_in_range(off, len)) {
        return -EIO;
    }
    return io_pread(c->node->file, buf, len, off);
}

/* Grow the expected-refcount array to hold entries (> nb_clusters). */
static int refs_grow(struct check *c, uint64_t entries)
{
    uint64_t bytes = entries <= QCOW2_CHECK_MAX_REFS_BYTES * 8
                         ? qcow2_refcount_array_bytes(entries, c->order)
                         : UINT64_MAX;
    if (bytes > QCOW2_CHECK_MAX_REFS_BYTES) {
        return error_set(ENOMEM,
                         "qcow2: image '%s': the reference counts of %" PRIu64
                         " clusters exceed the check's memory limit",
                         c->node->filename, entries);
    }
    if (bytes > c->refs_bytes) {
        uint8_t *p = realloc(c->refs, (size_t)bytes);
        if (!p) {
            return error_set(ENOMEM, "Out of memory");
        }
        memset(p + c->refs_bytes, 0, (size_t)(bytes - c->refs_bytes));
        c->refs = p;
        c->refs_bytes = bytes;
    }
    c->nb_clusters = entries;
    return 0;
}

/* One more reference to clusters first..last (all in the array). */
static void inc_range(struct check *c, uint64_t first, uint64_t last)
{
    for (uint64_t k = first;; k++) {
        uint64_t n = qcow2_refcount_load(c->refs, k, c->order);
        if (n == c->refcount_max) {
            say(c, "ERROR: overflow cluster offset=0x%" PRIx64,
                k << c->s->cluster_bits);
            say(c, "Use qemu-img amend to increase the refcount entry width "
                   "or qemu-img convert to create a clean copy if the image "
                   "cannot be opened for writing");
            c->res->corruptions++;
        } else {
            qcow2_refcount_store(c->refs, k, c->order, n + 1);
        }
        if (k == last) {
            break;
        }
    }
}

/*
 * Count one reference to every cluster of [offset, offset + size), as
 * QEMU's qcow2_inc_refcounts_imrt: a region ending a cluster or more past
 * the end of the file is a corruption and not counted; a count that
 * would pass the image's maximum refcount stays and is a corruption.
 * QEMU does this in int64_t arithmetic; the wrapping is kept.
 */
static int inc_refs(struct check *c, uint64_t offset, uint64_t size)
{
    if ((int64_t)size <= 0) {
        return 0;
    }
    if ((int64_t)(offset + size - (uint64_t)c->file_len) >= (int64_t)c->cs) {
        say(c,
            "ERROR: counting reference for region exceeding the end of the "
            "file by one cluster or more: offset 0x%" PRIx64 " size 0x%" PRIx64,
            offset, size);
        c->res->corruptions++;
        return 0;
    }
    unsigned bits = c->s->cluster_bits;
    uint64_t first = offset >> bits;
    uint64_t last = (offset + size - 1) >> bits;
    if (last < first) {
        /* The end wrapped past 2^64: QEMU's loop does not run. */
        return 0;
    }
    if (last >= c->nb_clusters) {
        /*
         * QEMU grows its array one cluster at a time as it walks the
         * region.  Clusters past the array are new, so counting them
         * prints nothing; a region the array cannot grow to (only one
         * whose end wrapped past INT64_MAX can be that long) fails after
         * the clusters the array has, as QEMU's would.
         */
        int ret = refs_grow(c, last + 1);
        if (ret < 0) {
            last = c->nb_clusters - 1;
            if (first <= last) {
                inc_range(c, first, last);
            }
            c->res->check_errors++;
            return ret;
        }
    }
    inc_range(c, first, last);
    return 0;
}

/*
 * The stored refcount of cluster k, as QEMU's qcow2_get_refcount: 0
 * beyond the refcount table or for an empty entry; an unaligned block
 * offset is a (non-fatal, read-only) corruption and -EIO.
 */
static int stored_refcount(struct check *c, uint64_t k, uint64_t *out)
{
    uint64_t rt_index = k >> c->rb_bits;
    if (rt_index >= c->reftable_entries) {
        *out = 0;
        return 0;
    }
    uint64_t rb_off = c->reftable[rt_index] & QCOW2_REFT_OFFSET_MASK;
    if (rb_off == 0) {
        *out = 0;
        return 0;
    }
    if (!is_aligned_u64(rb_off, c->cs)) {
        if (!c->signaled_corruption) {
            say(c,
                "qcow2: Image is corrupt: Refblock offset %#" PRIx64
                " unaligned (reftable index: %#" PRIx64 "); further "
                "non-fatal corruption events will be suppressed",
                rb_off, rt_index);
            c->signaled_corruption = true;
        }
        return -EIO;
    }
    if (c->rb_off != rb_off) {
        c->rb_off = 0;
        int ret = read_file(c, c->rb_buf, (size_t)c->cs, rb_off);
        if (ret < 0) {
            return ret;
        }
        c->rb_off = rb_off;
    }
    *out = qcow2_refcount_load(c->rb_buf, k & (((uint64_t)1 << c->rb_bits) - 1),
                               c->order);
    return 0;
}

/* ---- Walking the mapping ---------------------------------------------- */

/* QEMU's cluster types, as its check classifies L2 entries. */
enum check_type {
    CT_UNALLOCATED,
    CT_ZERO_PLAIN,
    CT_ZERO_ALLOC,
    CT_NORMAL,
    CT_COMPRESSED,
};

static enum check_type entry_type(const struct qcow2_state *s, uint64_t e)
{
    bool extl2 = s->subclusters_per_cluster > 1;
    if (e & QCOW2_OFLAG_COMPRESSED) {
        return CT_COMPRESSED;
    }
    if ((e & QCOW2_OFLAG_ZERO) && !extl2) {
        return (e & QCOW2_L2E_OFFSET_MASK) ? CT_ZERO_ALLOC : CT_ZERO_PLAIN;
    }
    if (!(e & QCOW2_L2E_OFFSET_MASK)) {
        /* Offset 0 is a real one in a data file when COPIED is set. */
        return s->has_data_file && (e & QCOW2_OFLAG_COPIED) ? CT_NORMAL
                                                            : CT_UNALLOCATED;
    }
    return CT_NORMAL;
}

static uint64_t l2_entry(const struct qcow2_state *s, const uint8_t *t,
                         uint64_t i)
{
    return load_be64(t + i * s->l2_entry_size);
}

static uint64_t l2_bitmap(const struct qcow2_state *s, const uint8_t *t,
                          uint64_t i)
{
    return s->l2_entry_size == 16 ? load_be64(t + i * 16 + 8) : 0;
}

#define L2_BITMAP_ALL_ALLOC 0xffffffffull

/* One L2 table (QEMU's check_refcounts_l2). */
static int check_l2(struct check *c, uint64_t l2_off, bool frag_info)
{
    struct qcow2_state *s = c->s;
    struct qimg_check_result *res = c->res;
    c->l2_visits += s->l2_entries;
    if (c->l2_visits > check_max_table_entries) {
        res->check_errors++;
        return error_set(EFBIG,
                         "qcow2: image '%s': the check would examine more "
                         "than %" PRIu64 " L2 entries",
                         c->node->filename, check_max_table_entries);
    }
    int ret = read_file(c, c->l2_buf, (size_t)c->cs, l2_off);
    if (ret < 0) {
        say(c, "ERROR: I/O error in check_refcounts_l2");
        res->check_errors++;
        return error_set_errno(-ret,
                               "qcow2: could not read L2 table of "
                               "'%s' at offset %#" PRIx64,
                               c->node->filename, l2_off);
    }
    uint64_t next_contiguous = 0;
    for (uint64_t i = 0; i < s->l2_entries; i++) {
        uint64_t e = l2_entry(s, c->l2_buf, i);
        uint64_t bitmap = l2_bitmap(s, c->l2_buf, i);
        enum check_type type = entry_type(s, e);

        if (type != CT_COMPRESSED && (e & QCOW2_L2E_STD_RESERVED_MASK)) {
            say(c, "ERROR found l2 entry with reserved bits set: %" PRIx64, e);
            res->corruptions++;
        }
        switch (type) {
        case CT_COMPRESSED: {
            if (e & QCOW2_OFLAG_COPIED) {
                say(c,
                    "ERROR: coffset=0x%" PRIx64 ": copied flag must never "
                    "be set for compressed clusters",
                    e & s->cluster_offset_mask);
                e &= ~QCOW2_OFLAG_COPIED;
                res->corruptions++;
            }
            if (s->has_data_file) {
                say(c,
                    "ERROR compressed cluster %d with data file, "
                    "entry=0x%" PRIx64,
                    (int)i, e);
                res->corruptions++;
                break;
            }
            if (bitmap) {
                say(c,
                    "ERROR compressed cluster %d with non-zero subcluster "
                    "allocation bitmap, entry=0x%" PRIx64,
                    (int)i, e);
                res->corruptions++;
                break;
            }
            /* [spec: Compressed Clusters Descriptor] */
            uint64_t coffset = e & s->cluster_offset_mask;
            uint64_t nb_sectors = ((e >> s->csize_shift) & s->csize_mask) + 1;
            uint64_t csize = nb_sectors * 512 - (coffset & 511);
            ret = inc_refs(c, coffset, csize);
            if (ret < 0) {
                return ret;
            }
            if (frag_info) {
                /* [QEMU] compressed clusters count as fragmented. */
                res->allocated_clusters++;
                res->compressed_clusters++;
                res->fragmented_clusters++;
            }
            break;
        }
        case CT_ZERO_ALLOC:
        case CT_NORMAL: {
            uint64_t off = e & QCOW2_L2E_OFFSET_MASK;
            if ((bitmap >> 32) & bitmap) {
                res->corruptions++;
                say(c,
                    "ERROR offset=%" PRIx64 ": Allocated cluster has "
                    "corrupted subcluster allocation bitmap",
                    off);
            }
            if (!is_aligned_u64(off, c->cs)) {
                bool has_data = s->subclusters_per_cluster > 1
                                    ? (bitmap & L2_BITMAP_ALL_ALLOC) != 0
                                    : !(e & QCOW2_OFLAG_ZERO);
                res->corruptions++;
                if (has_data) {
                    say(c,
                        "ERROR offset=%" PRIx64 ": Data cluster is not "
                        "properly aligned; L2 entry corrupted.",
                        off);
                } else {
                    say(c,
                        "ERROR offset=%" PRIx64 ": Preallocated cluster "
                        "is not properly aligned; L2 entry corrupted.",
                        off);
                }
            }
            if (frag_info) {
                res->allocated_clusters++;
                if (next_contiguous && off != next_contiguous) {
                    res->fragmented_clusters++;
                }
                next_contiguous = off + c->cs;
            }
            /* Data file clusters are not refcounted [spec: bit 2]. */
            if (!s->has_data_file) {
                ret = inc_refs(c, off, c->cs);
                if (ret < 0) {
                    return ret;
                }
            }
            break;
        }
        case CT_ZERO_PLAIN:
            break;
        case CT_UNALLOCATED:
            if (bitmap & L2_BITMAP_ALL_ALLOC) {
                res->corruptions++;
                say(c, "ERROR: Unallocated cluster has non-zero subcluster "
                       "allocation map");
            }
            break;
        }
    }
    return 0;
}

/* One L1 table and everything it maps (QEMU's check_refcounts_l1). */
static int check_l1(struct check *c, uint64_t l1_off, uint32_t l1_size,
                    bool frag_info)
{
    if (l1_size == 0) {
        return 0;
    }
    uint64_t bytes = (uint64_t)l1_size * 8;
    int ret = inc_refs(c, l1_off, bytes);
    if (ret < 0) {
        return ret;
    }
    /* QEMU reads the whole table first: a read it fails, fails now. */
    if (!qcow2_read_in_range(l1_off, bytes)) {
        say(c, "ERROR: I/O error in check_refcounts_l1");
        c->res->check_errors++;
        return error_set(EIO,
                         "qcow2: could not read L1 table of '%s' at "
                         "offset %#" PRIx64,
                         c->node->filename, l1_off);
    }
    uint8_t *chunk = malloc(TABLE_CHUNK_ENTRIES * 8);
    if (!chunk) {
        c->res->check_errors++;
        return error_set(ENOMEM, "Out of memory");
    }
    for (uint32_t base = 0; ret == 0 && base < l1_size;
         base += TABLE_CHUNK_ENTRIES) {
        uint32_t n = (uint32_t)min_u64(TABLE_CHUNK_ENTRIES, l1_size - base);
        ret = read_file(c, chunk, (size_t)n * 8, l1_off + (uint64_t)base * 8);
        if (ret < 0) {
            say(c, "ERROR: I/O error in check_refcounts_l1");
            c->res->check_errors++;
            ret = error_set_errno(-ret,
                                  "qcow2: could not read L1 table of "
                                  "'%s'",
                                  c->node->filename);
            break;
        }
        for (uint32_t j = 0; ret == 0 && j < n; j++) {
            uint64_t e = load_be64(chunk + (size_t)j * 8);
            if (e == 0) {
                continue;
            }
            if (e & QCOW2_L1E_RESERVED_MASK) {
                say(c, "ERROR found L1 entry with reserved bits set: %" PRIx64,
                    e);
                c->res->corruptions++;
            }
            uint64_t l2_off = e & QCOW2_L1E_OFFSET_MASK;
            ret = inc_refs(c, l2_off, c->cs);
            if (ret < 0) {
                break;
            }
            if (!is_aligned_u64(l2_off, c->cs)) {
                say(c,
                    "ERROR l2_offset=%" PRIx64 ": Table is not cluster "
                    "aligned; L1 entry corrupted",
                    l2_off);
                c->res->corruptions++;
            }
            ret = check_l2(c, l2_off, frag_info);
        }
    }
    free(chunk);
    return ret;
}

/* Bitmap directory, tables and data (QEMU's qcow2_check_bitmaps_refcounts). */
static int check_bitmaps(struct check *c)
{
    const struct qcow2_state *s = c->s;
    if (s->hdr.nb_bitmaps == 0) {
        return 0;
    }
    int ret = inc_refs(c, s->hdr.bitmap_directory_offset,
                       s->hdr.bitmap_directory_size);
    if (ret < 0) {
        return ret;
    }
    uint8_t *chunk = malloc(TABLE_CHUNK_ENTRIES * 8);
    if (!chunk) {
        c->res->check_errors++;
        return error_set(ENOMEM, "Out of memory");
    }
    for (uint32_t b = 0; ret == 0 && b < s->bitmaps.nb; b++) {
        const struct qcow2_bitmap *bm = &s->bitmaps.bm[b];
        uint64_t bytes = (uint64_t)bm->table_size * 8;
        ret = inc_refs(c, bm->table_offset, bytes);
        if (ret < 0) {
            break;
        }
        if (!qcow2_read_in_range(bm->table_offset, bytes)) {
            c->res->corruptions++;
            ret = error_set(EIO,
                            "qcow2: could not read the table of bitmap "
                            "'%s'",
                            bm->name);
            break;
        }
        for (uint32_t base = 0; ret == 0 && base < bm->table_size;
             base += TABLE_CHUNK_ENTRIES) {
            uint32_t n =
                (uint32_t)min_u64(TABLE_CHUNK_ENTRIES, bm->table_size - base);
            ret = read_file(c, chunk, (size_t)n * 8,
                            bm->table_offset + (uint64_t)base * 8);
            if (ret < 0) {
                c->res->corruptions++;
                ret = error_set_errno(-ret,
                                      "qcow2: could not read the "
                                      "table of bitmap '%s'",
                                      bm->name);
                break;
            }
            for (uint32_t j = 0; ret == 0 && j < n; j++) {
                uint64_t e = load_be64(chunk + (size_t)j * 8);
                uint64_t off = e & QCOW2_BMT_OFFSET_MASK;
                /* [spec: Bitmap table] reserved bits, flag, alignment. */
                if ((e & QCOW2_BMT_RESERVED_MASK) ||
                    (off != 0 && ((e & QCOW2_BMT_ALL_ONES) ||
                                  !is_aligned_u64(off, c->cs)))) {
                    c->res->corruptions++;
                    continue;
                }
                if (off != 0) {
                    ret = inc_refs(c, off, c->cs);
                }
            }
        }
    }
    free(chunk);
    return ret;
}

/* The refcount blocks themselves (QEMU's check_refblocks). */
static int check_refblocks(struct check *c)
{
    for (uint64_t i = 0; i < c->reftable_entries; i++) {
        uint64_t e = c->reftable[i];
        uint64_t off = e & QCOW2_REFT_OFFSET_MASK;
        uint64_t k = off >> c->s->cluster_bits;
        if (e & ~QCOW2_REFT_OFFSET_MASK) {
            say(c,
                "ERROR refcount table entry %" PRId64 " has reserved bits "
                "set",
                (int64_t)i);
            c->res->corruptions++;
            continue;
        }
        if (!is_aligned_u64(off, c->cs)) {
            say(c,
                "ERROR refcount block %" PRId64 " is not cluster aligned; "
                "refcount table entry corrupted",
                (int64_t)i);
            c->res->corruptions++;
            continue;
        }
        if (k >= c->nb_clusters) {
            c->res->corruptions++;
            say(c, "ERROR refcount block %" PRId64 " is outside image",
                (int64_t)i);
            continue;
        }
        if (off == 0) {
            continue;
        }
        int ret = inc_refs(c, off, c->cs);
        if (ret < 0) {
            return ret;
        }
        uint64_t n = qcow2_refcount_load(c->refs, k, c->order);
        if (n != 1) {
            say(c, "ERROR refcount block %" PRId64 " refcount=%" PRIu64,
                (int64_t)i, n);
            c->res->corruptions++;
        }
    }
    return 0;
}

/*
 * The snapshot table (QEMU's qcow2_check_read_snapshot_table): the open
 * for checking did not read it, so a broken table is reported here, and
 * then fails the check.
 */
static int check_snapshot_table(struct check *c)
{
    struct qcow2_state *s = c->s;
    const struct qcow2_header *h = &s->hdr;
    if (h->nb_snapshots > QCOW2_MAX_SNAPSHOTS) {
        say_error(c, "ERROR snapshot table too large");
        say(c,
            "You can force-remove all %" PRIu32 " overhanging snapshots "
            "with qemu-img check -r all",
            h->nb_snapshots - QCOW2_MAX_SNAPSHOTS);
        c->res->check_errors++;
        return error_set(EFBIG, "Snapshot table too large");
    }
    uint64_t bytes = (uint64_t)h->nb_snapshots * QCOW2_SNAPSHOT_HEADER_SIZE;
    if ((uint64_t)INT64_MAX - bytes < h->snapshots_offset ||
        !is_aligned_u64(h->snapshots_offset, c->cs)) {
        say_error(c, "ERROR snapshot table offset invalid");
        c->res->check_errors++;
        return error_set(EINVAL, "Snapshot table offset invalid");
    }
    /* A second check of the same handle reads the table again. */
    qcow2_snapshots_free(&s->snapshots);
    int ret = qcow2_read_snapshot_table(c->node, s);
    if (ret < 0) {
        say_error(c, "ERROR failed to read the snapshot table: %s",
                  qimg_get_error());
        c->res->check_errors++;
        return ret;
    }
    /* [spec: Snapshots] v3 entries hold vm_state_size_large and disk_size. */
    for (uint32_t i = 0; h->version >= 3 && i < s->snapshots.nb; i++) {
        if (s->snapshots.sn[i].extra_data_size < 16) {
            c->res->corruptions++;
            say(c, "ERROR snapshot table entry %d is incomplete", (int)i);
        }
    }
    return 0;
}

/* Every reference there is (QEMU's calculate_refcounts). */
static int count_references(struct check *c)
{
    struct qcow2_state *s = c->s;
    const struct qcow2_header *h = &s->hdr;

    int ret = inc_refs(c, 0, c->cs);
    if (ret == 0) {
        ret = check_l1(c, s->l1_table_offset, s->l1_size, true);
    }
    if (ret < 0) {
        return ret;
    }
    if (s->has_data_file && s->snapshots.nb) {
        say(c, "ERROR %d snapshots in image with data file",
            (int)s->snapshots.nb);
        c->res->corruptions++;
    }
    for (uint32_t i = 0; i < s->snapshots.nb; i++) {
        const struct qcow2_snapshot *sn = &s->snapshots.sn[i];
        if (!is_aligned_u64(sn->l1_table_offset, c->cs)) {
            say(c,
                "ERROR snapshot %s (%s) l1_offset=%#" PRIx64 ": L1 table is "
                "not cluster aligned; snapshot table entry corrupted",
                sn->id, sn->name, sn->l1_table_offset);
            c->res->corruptions++;
            continue;
        }
        if (sn->l1_size > QCOW2_MAX_L1_SIZE / 8) {
            say(c,
                "ERROR snapshot %s (%s) l1_size=%#" PRIx32 ": L1 table is "
                "too large; snapshot table entry corrupted",
                sn->id, sn->name, sn->l1_size);
            c->res->corruptions++;
            continue;
        }
        ret = check_l1(c, sn->l1_table_offset, sn->l1_size, false);
        if (ret < 0) {
            return ret;
        }
    }
    ret = inc_refs(c, h->snapshots_offset, s->snapshots.size);
    if (ret == 0) {
        ret = inc_refs(c, s->refcount_table_offset,
                       s->refcount_table_entries * 8);
    }
    if (ret == 0 && h->has_crypto_ext && h->crypto_length) {
        ret = inc_refs(c, h->crypto_offset, h->crypto_length);
    }
    if (ret == 0) {
        ret = check_bitmaps(c);
    }
    if (ret == 0) {
        ret = check_refblocks(c);
    }
    return ret;
}

/* Stored against counted refcounts (QEMU's compare_refcounts). */
static void compare_refcounts(struct check *c, uint64_t *highest)
{
    *highest = 0;
    for (uint64_t i = 0; i < c->nb_clusters; i++) {
        uint64_t stored;
        int ret = stored_refcount(c, i, &stored);
        if (ret < 0) {
            say(c, "Can't get refcount for cluster %" PRId64 ": %s", (int64_t)i,
                strerror(-ret));
            c->res->check_errors++;
            continue;
        }
        uint64_t counted = qcow2_refcount_load(c->refs, i, c->order);
        if (stored > 0 || counted > 0) {
            *highest = i;
        }
        if (stored != counted) {
            say(c,
                "%s cluster %" PRId64 " refcount=%" PRIu64
                " reference=%" PRIu64,
                stored < counted ? "ERROR" : "Leaked", (int64_t)i, stored,
                counted);
            if (stored < counted) {
                c->res->corruptions++;
            } else {
                c->res->leaks++;
            }
        }
    }
}

/* COPIED flags of the active mapping (QEMU's check_oflag_copied). */
static int check_copied(struct check *c)
{
    struct qcow2_state *s = c->s;
    for (uint32_t i = 0; s->l1_table && i < s->l1_size; i++) {
        uint64_t l1e = s->l1_table[i];
        uint64_t l2_off = l1e & QCOW2_L1E_OFFSET_MASK;
        if (l2_off == 0) {
            continue;
        }
        uint64_t n;
        /* [QEMU] a refcount that cannot be read is skipped silently. */
        if (stored_refcount(c, l2_off >> s->cluster_bits, &n) < 0) {
            continue;
        }
        if ((n == 1) != ((l1e & QCOW2_OFLAG_COPIED) != 0)) {
            c->res->corruptions++;
            say(c,
                "ERROR OFLAG_COPIED L2 cluster: l1_index=%d l1_entry=%" PRIx64
                " refcount=%" PRIu64,
                (int)i, l1e, n);
        }
        int ret = read_file(c, c->l2_buf, (size_t)c->cs, l2_off);
        if (ret < 0) {
            say(c, "ERROR: Could not read L2 table: %s", strerror(-ret));
            c->res->check_errors++;
            return error_set_errno(-ret,
                                   "qcow2: could not read L2 table of "
                                   "'%s' at offset %#" PRIx64,
                                   c->node->filename, l2_off);
        }
        for (uint64_t j = 0; j < s->l2_entries; j++) {
            uint64_t e = l2_entry(s, c->l2_buf, j);
            enum check_type type = entry_type(s, e);
            if (type != CT_NORMAL && type != CT_ZERO_ALLOC) {
                continue;
            }
            if (s->has_data_file) {
                n = 1;
            } else if (stored_refcount(
                           c, (e & QCOW2_L2E_OFFSET_MASK) >> s->cluster_bits,
                           &n) < 0) {
                continue;
            }
            if ((n == 1) != ((e & QCOW2_OFLAG_COPIED) != 0)) {
                c->res->corruptions++;
                say(c,
                    "ERROR OFLAG_COPIED data cluster: l2_entry=%" PRIx64
                    " refcount=%" PRIu64,
                    e, n);
            }
        }
    }
    return 0;
}

/* The refcount table as stored (at most QCOW2_MAX_REFTABLE_SIZE). */
static int load_reftable(struct check *c)
{
    struct qcow2_state *s = c->s;
    c->reftable_entries = s->refcount_table_entries;
    if (c->reftable_entries == 0) {
        return 0;
    }
    size_t bytes = (size_t)c->reftable_entries * 8;
    c->reftable = malloc(bytes);
    if (!c->reftable) {
        return error_set(ENOMEM, "Out of memory");
    }
    int ret = read_file(c, c->reftable, bytes, s->refcount_table_offset);
    if (ret < 0) {
        return error_set_errno(-ret, "Could not read refcount table");
    }
    for (uint64_t i = 0; i < c->reftable_entries; i++) {
        c->reftable[i] = load_be64((const uint8_t *)&c->reftable[i]);
    }
    return 0;
}

int qcow2_check(struct qimg_node *node, unsigned flags,
                void (*report)(const char *line, unsigned kind, void *opaque),
                void *opaque, struct qimg_check_result *res)
{
    (void)flags; /* repairs are refused by the caller */
    struct qcow2_state *s = node->opaque;
    struct check c = {
        .node = node,
        .s = s,
        .report = report,
        .opaque = opaque,
        .res = res,
        .cs = s->cluster_size,
        .order = s->refcount_order,
        .refcount_max = s->refcount_order == 6
                            ? UINT64_MAX
                            : ((uint64_t)1 << (1u << s->refcount_order)) - 1,
        /* entries per block = cluster_size * 8 / refcount_bits */
        .rb_bits = s->cluster_bits + 3 - s->refcount_order,
    };
    int ret;

    c.file_len = io_get_size(node->file);
    if (c.file_len < 0) {
        res->check_errors++;
        return (int)c.file_len;
    }
    uint64_t nb = div_round_up_u64((uint64_t)c.file_len, c.cs);
    if (nb > QCOW2_CHECK_MAX_CLUSTERS) {
        res->check_errors++;
        return error_set(EFBIG, "qcow2: image '%s' is too large to check",
                         node->filename);
    }
    res->total_clusters = (int64_t)div_round_up_u64(node->size, c.cs);

    c.rb_buf = malloc((size_t)c.cs);
    c.l2_buf = malloc((size_t)c.cs);
    if (!c.rb_buf || !c.l2_buf) {
        res->check_errors++;
        ret = error_set(ENOMEM, "Out of memory");
        goto out;
    }
    ret = load_reftable(&c);
    if (ret < 0) {
        res->check_errors++;
        goto out;
    }
    ret = nb > 0 ? refs_grow(&c, nb) : 0;
    if (ret < 0) {
        res->check_errors++;
        goto out;
    }
    ret = check_snapshot_table(&c);
    if (ret < 0) {
        goto out;
    }
    ret = count_references(&c);
    if (ret < 0) {
        goto out;
    }
    uint64_t highest;
    compare_refcounts(&c, &highest);
    ret = check_copied(&c);
    if (ret < 0) {
        goto out;
    }
    res->image_end_offset = (int64_t)((highest + 1) * c.cs);

out:
    free(c.refs);
    free(c.reftable);
    free(c.rb_buf);
    free(c.l2_buf);
    return ret;
}
