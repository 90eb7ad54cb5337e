/*
 * qcow2: the consistency check and its repairs [spec: Host cluster
 * management, Cluster mapping].
 *
 * Like QEMU's check, it counts how often every host cluster is referenced
 * (header, L1 and L2 tables, data and compressed clusters of the active
 * image and of every snapshot, refcount table and blocks, snapshot table,
 * bitmap directory, tables and data, LUKS header), compares the counts
 * with the stored refcounts, then checks the COPIED flags of the active
 * mapping.  The problems, their wording and their order are those of
 * qemu-img 7.2 [QEMU], so that its output can be matched line for line.
 *
 * Repairs (QIMG_CHECK_FIX_*) are QEMU's, made where it makes them and
 * written where it writes them: wrong refcounts are set to the number
 * of references (a cluster whose refcount drops to 0 is discarded);
 * a refcount of 0 on a used cluster or a broken refcount block makes
 * the whole refcount structure be rebuilt from the counted references
 * (QEMU 7.2's placement, see qcow2_rebuild_plan()); wrong COPIED flags
 * are set from the refcounts; a refcount block past the end of the file
 * grows the file; at the end the dirty and corrupt bits are cleared.
 * Without fix flags nothing is written.
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
/*
 * -r all grows the file for a refcount block listed past its end (as
 * QEMU) only while the counts of the grown file stay within this: a
 * hostile entry names a block terabytes away, where they would take
 * hundreds of MiB (a mutate.py finding).  Past it the block is not
 * grown into ("could not resize image: File too large") and the
 * refcounts are rebuilt instead.
 */
#define QCOW2_CHECK_GROW_REFS_BYTES (64ull << 20)
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

    /* Repairs asked for (QIMG_CHECK_FIX_*), 0 for a read-only pass. */
    unsigned fix;
    /* The refcount structure must be rebuilt (QEMU's "rebuild"). */
    bool rebuild;
    /*
     * A corruption was signaled on a writable image: QEMU then marks it
     * corrupt and stops using it, so nothing more is repaired after the
     * check (the dirty bit stays).
     */
    bool fatal;
    /*
     * v3 snapshot table entries without vm_state_size_large and
     * disk_size: corruptions, added to the result after the refcount
     * part (whose rebuild recounts its own), as QEMU keeps them apart.
     */
    int64_t sn_incomplete;
    /*
     * Corruptions the count after a rebuild still found ("rebuilt
     * refcount structure is still broken"): in the result, since they
     * are left unrepaired, but not in what decides whether the corrupt
     * bit is cleared, as QEMU does not count them (see check_refcounts).
     */
    int64_t still_broken;

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

/* Writes of a repair; the image is writable (qcow2_repair checked). */
static int write_file(struct check *c, const void *buf, size_t len,
                      uint64_t off)
{
    if (!qcow2_read_in_range(off, len)) {
        return -EIO;
    }
    return io_pwrite(c->node->file, buf, len, off);
}

/*
 * [QEMU] qcow2_update_header: the whole header cluster is rewritten from
 * the decoded header (known extensions in QEMU's order, unknown ones
 * kept).  Used to change the feature bits.
 */
static int write_header(struct check *c)
{
    uint8_t *buf = malloc((size_t)c->cs);
    if (!buf) {
        return error_set(ENOMEM, "Out of memory");
    }
    int64_t n = qcow2_header_encode(&c->s->hdr, buf, (size_t)c->cs);
    int ret = n < 0 ? (int)n : write_file(c, buf, (size_t)c->cs, 0);
    free(buf);
    if (ret == 0) {
        ret = node_sync(c->node, c->node->file);
    }
    if (ret < 0 && n >= 0) {
        ret = error_set_errno(-ret, "Could not update qcow2 header");
    }
    return ret;
}

/*
 * [QEMU] qcow2_signal_corruption: once per check.  On a writable image
 * the corruption is fatal: the corrupt bit is set (a failure to write it
 * is ignored, as QEMU ignores it) and the image is not used any more.
 */
static void signal_corruption(struct check *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void signal_corruption(struct check *c, const char *fmt, ...)
{
    if (c->signaled_corruption) {
        return;
    }
    c->signaled_corruption = true;
    char *text = NULL;
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&text, fmt, ap) < 0) {
        text = NULL;
    }
    va_end(ap);
    const char *what = text ? text : "(out of memory)";
    if (c->node->writable) {
        c->fatal = true;
        /* The write path's mark: once per handle, then no more writes. */
        if (!c->s->corrupt) {
            say(c,
                "qcow2: Marking image as corrupt: %s; further corruption "
                "events will be suppressed",
                what);
            c->s->corrupt = true;
            c->s->hdr.incompatible_features |= QCOW2_INCOMPAT_CORRUPT;
            (void)write_header(c);
            error_clear();
        }
    } else {
        say(c,
            "qcow2: Image is corrupt: %s; further non-fatal corruption "
            "events will be suppressed",
            what);
    }
    free(text);
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
        signal_corruption(c,
                          "Refblock offset %#" PRIx64
                          " unaligned (reftable index: %#" PRIx64 ")",
                          rb_off, rt_index);
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

/*
 * Discard cluster k of the image file, as QEMU does when a repair frees
 * a cluster: the hole reads as zero where the file system punches one
 * (an advisory request: where it cannot, the data stays, as for QEMU).
 */
static void discard_cluster(struct check *c, uint64_t k)
{
    struct qimg_io *io = c->node->file;
    int64_t size = io_get_size(io);
    uint64_t off = k << c->s->cluster_bits;
    if (size < 0 || off >= (uint64_t)size) {
        return;
    }
    (void)io_discard(io, off, min_u64(c->cs, (uint64_t)size - off));
    error_clear();
}

/*
 * Store refcount value for cluster k, whose refcount block exists (its
 * stored refcount was just read): only the bytes of the entry are
 * written.  [QEMU] update_refcount, with a discard when it reaches 0.
 */
static int set_refcount(struct check *c, uint64_t k, uint64_t value)
{
    uint64_t old;
    int ret = stored_refcount(c, k, &old);
    if (ret < 0) {
        return ret;
    }
    if (c->rb_off == 0) {
        /* No refcount block: only a rebuild can give it a refcount. */
        return -EIO;
    }
    uint64_t index = k & (((uint64_t)1 << c->rb_bits) - 1);
    qcow2_refcount_store(c->rb_buf, index, c->order, value);
    /* The byte(s) holding the entry; c->order <= 6. */
    uint64_t first = c->order < 3 ? index >> (3 - c->order)
                                  : index << (c->order - 3);
    size_t len = c->order < 3 ? 1 : (size_t)1 << (c->order - 3);
    ret = write_file(c, c->rb_buf + first, len, c->rb_off + first);
    if (ret < 0) {
        c->rb_off = 0; /* the buffer no longer matches the file */
        return ret;
    }
    if (value == 0) {
        discard_cluster(c, k);
    }
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
#define L2_BITMAP_ALL_ZERO 0xffffffff00000000ull

/*
 * Replace entry i of the L2 table at l2_off with a plain zero cluster:
 * the zero flag, or with extended L2 entries no host cluster and every
 * subcluster reading as zero [spec: Extended L2 Entries].
 */
static int fix_zero_entry(struct check *c, uint64_t l2_off, uint64_t i)
{
    const struct qcow2_state *s = c->s;
    uint8_t e[16];
    size_t n = s->l2_entry_size;
    if (n == 16) {
        store_be64(e, 0);
        store_be64(e + 8, L2_BITMAP_ALL_ZERO);
    } else {
        store_be64(e, QCOW2_OFLAG_ZERO);
    }
    memcpy(c->l2_buf + i * n, e, n);
    return write_file(c, e, n, l2_off + i * n);
}

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
                bool fix = !has_data && (c->fix & QIMG_CHECK_FIX_ERRORS);
                if (has_data) {
                    res->corruptions++;
                    say(c,
                        "ERROR offset=%" PRIx64 ": Data cluster is not "
                        "properly aligned; L2 entry corrupted.",
                        off);
                } else {
                    say(c,
                        "%s offset=%" PRIx64 ": Preallocated cluster "
                        "is not properly aligned; L2 entry corrupted.",
                        fix ? "Repairing" : "ERROR", off);
                }
                if (!has_data && !fix) {
                    res->corruptions++;
                }
                if (fix) {
                    /*
                     * [QEMU] -r all makes it a plain zero cluster (no
                     * host cluster), which then references nothing.
                     */
                    int wret = fix_zero_entry(c, l2_off, i);
                    if (wret == 0) {
                        res->corruptions_fixed++;
                        break;
                    }
                    say(c, "ERROR: Failed to overwrite L2 table entry: %s",
                        strerror(-wret));
                    res->check_errors++;
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

/*
 * [QEMU] -r all grows the file to hold a refcount block listed past its
 * end (the new cluster reads as zero), and counts the block.
 */
static int grow_file_for_refblock(struct check *c, uint64_t off)
{
    int ret;
    uint64_t grown = div_round_up_u64(off, c->cs) + 1;
    if (off > (uint64_t)INT64_MAX - c->cs) {
        ret = -EINVAL;
    } else if (qcow2_refcount_array_bytes(grown, c->order) >
               max_u64(c->refs_bytes, QCOW2_CHECK_GROW_REFS_BYTES)) {
        ret = -EFBIG;
    } else {
        ret = io_truncate(c->node->file, off + c->cs);
    }
    if (ret == 0) {
        int64_t size = io_get_size(c->node->file);
        ret = size < 0 ? (int)size : 0;
        if (ret == 0) {
            uint64_t nb = div_round_up_u64((uint64_t)size, c->cs);
            c->file_len = size;
            ret = nb > c->nb_clusters ? refs_grow(c, nb) : 0;
        }
    }
    error_clear();
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
            c->rebuild = true;
            continue;
        }
        if (!is_aligned_u64(off, c->cs)) {
            say(c,
                "ERROR refcount block %" PRId64 " is not cluster aligned; "
                "refcount table entry corrupted",
                (int64_t)i);
            c->res->corruptions++;
            c->rebuild = true;
            continue;
        }
        if (k >= c->nb_clusters) {
            bool fix = (c->fix & QIMG_CHECK_FIX_ERRORS) != 0;
            say(c, "%s refcount block %" PRId64 " is outside image",
                fix ? "Repairing" : "ERROR", (int64_t)i);
            if (!fix) {
                c->res->corruptions++;
                continue;
            }
            int ret = grow_file_for_refblock(c, off);
            if (ret < 0) {
                c->res->corruptions++;
                c->rebuild = true;
                say(c, "ERROR could not resize image: %s", strerror(-ret));
                continue;
            }
            c->res->corruptions_fixed++;
            /* A new, zeroed cluster: counted once here, so exactly 1. */
            ret = inc_refs(c, off, c->cs);
            if (ret < 0) {
                return ret;
            }
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
            c->rebuild = true;
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
    /*
     * [spec: Snapshots] v3 entries hold vm_state_size_large and disk_size.
     * [QEMU] -r all rewrites the table once the refcounts are checked
     * (fix_snapshot_table); the line says so already.
     */
    bool fix = (c->fix & QIMG_CHECK_FIX_ERRORS) != 0;
    for (uint32_t i = 0; h->version >= 3 && i < s->snapshots.nb; i++) {
        if (s->snapshots.sn[i].extra_data_size < 16) {
            c->sn_incomplete++;
            say(c, "%s snapshot table entry %d is incomplete",
                fix ? "Repairing" : "ERROR", (int)i);
        }
    }
    return 0;
}

static int finish_repair(struct check *c, bool clean);

/*
 * [QEMU] qcow2_check_fix_snapshot_table: after the refcount part, the
 * table is written again with complete entries, and what it counted as
 * corrupt is fixed.  The write path allocates the new table: its caches
 * are dropped (the check wrote the refcounts under them), and the dirty
 * bit, which the check has just made moot, is cleared first so the
 * write path does not rebuild the refcounts once more.
 */
static int fix_snapshot_table(struct check *c)
{
    struct qcow2_state *s = c->s;
    if (!c->sn_incomplete || !(c->fix & QIMG_CHECK_FIX_ERRORS) || c->fatal) {
        c->res->corruptions += c->sn_incomplete;
        return 0;
    }
    qcow2_write_free(s);
    qcow2_l2_invalidate(s, 0, UINT64_MAX);
    int ret = finish_repair(c, false);
    if (ret == 0) {
        ret = qcow2_snapshot_table_rewrite(c->node, s);
        qcow2_write_free(s);
        qcow2_l2_invalidate(s, 0, UINT64_MAX);
    }
    if (ret < 0) {
        c->res->check_errors++;
        c->res->corruptions += c->sn_incomplete;
        say(c, "ERROR failed to update snapshot table: %s", strerror(-ret));
        return ret;
    }
    c->res->corruptions_fixed += c->sn_incomplete;
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

/*
 * Stored against counted refcounts (QEMU's compare_refcounts).  With fix,
 * a mismatch the flags allow is repaired (and counted as fixed instead
 * of found); a used cluster with refcount 0 asks for a rebuild.
 */
static void compare_refcounts(struct check *c, unsigned fix,
                              uint64_t *highest)
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
        if (stored == counted) {
            continue;
        }
        int64_t *fixed = NULL;
        if (stored == 0) {
            c->rebuild = true;
        } else if (stored > counted && (fix & QIMG_CHECK_FIX_LEAKS)) {
            fixed = &c->res->leaks_fixed;
        } else if (stored < counted && (fix & QIMG_CHECK_FIX_ERRORS)) {
            fixed = &c->res->corruptions_fixed;
        }
        say(c, "%s cluster %" PRId64 " refcount=%" PRIu64 " reference=%" PRIu64,
            fixed ? "Repairing" : stored < counted ? "ERROR" : "Leaked",
            (int64_t)i, stored, counted);
        if (fixed && set_refcount(c, i, counted) == 0) {
            (*fixed)++;
            continue;
        }
        error_clear();
        if (stored < counted) {
            c->res->corruptions++;
        } else {
            c->res->leaks++;
        }
    }
}

/*
 * COPIED flags of the active mapping (QEMU's check_oflag_copied).  -r all
 * sets them from the refcounts; -r leaks only when the refcounts are
 * known good (the check found nothing else), as QEMU does.  A fixed L1
 * entry is written at once (and in s->l1_table), a fixed L2 table after
 * its entries were looked at.
 */
static int check_copied(struct check *c)
{
    struct qcow2_state *s = c->s;
    struct qimg_check_result *res = c->res;
    bool repair;
    if (c->fix & QIMG_CHECK_FIX_ERRORS) {
        repair = true;
    } else if (c->fix & QIMG_CHECK_FIX_LEAKS) {
        repair = !res->check_errors && !res->corruptions && !res->leaks;
    } else {
        repair = false;
    }
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
            res->corruptions++;
            say(c,
                "%s OFLAG_COPIED L2 cluster: l1_index=%d l1_entry=%" PRIx64
                " refcount=%" PRIu64,
                repair ? "Repairing" : "ERROR", (int)i, l1e, n);
            if (repair) {
                uint64_t fixed = n == 1 ? l1e | QCOW2_OFLAG_COPIED
                                        : l1e & ~QCOW2_OFLAG_COPIED;
                uint8_t be[8];
                store_be64(be, fixed);
                int ret = write_file(c, be, 8,
                                     s->l1_table_offset + (uint64_t)i * 8);
                if (ret < 0) {
                    say(c, "ERROR: Failed to overwrite L1 table entry: %s",
                        strerror(-ret));
                    res->check_errors++;
                    return error_set_errno(-ret,
                                           "qcow2: could not write the "
                                           "L1 table of '%s'",
                                           c->node->filename);
                }
                s->l1_table[i] = fixed;
                res->corruptions--;
                res->corruptions_fixed++;
            }
        }
        int ret = read_file(c, c->l2_buf, (size_t)c->cs, l2_off);
        if (ret < 0) {
            say(c, "ERROR: Could not read L2 table: %s", strerror(-ret));
            res->check_errors++;
            return error_set_errno(-ret,
                                   "qcow2: could not read L2 table of "
                                   "'%s' at offset %#" PRIx64,
                                   c->node->filename, l2_off);
        }
        int64_t dirty = 0;
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
                res->corruptions++;
                say(c,
                    "%s OFLAG_COPIED data cluster: l2_entry=%" PRIx64
                    " refcount=%" PRIu64,
                    repair ? "Repairing" : "ERROR", e, n);
                if (repair) {
                    store_be64(c->l2_buf + j * s->l2_entry_size,
                               n == 1 ? e | QCOW2_OFLAG_COPIED
                                      : e & ~QCOW2_OFLAG_COPIED);
                    dirty++;
                }
            }
        }
        if (dirty > 0) {
            ret = write_file(c, c->l2_buf, (size_t)c->cs, l2_off);
            if (ret < 0) {
                say(c, "ERROR: Could not write L2 table: %s", strerror(-ret));
                res->check_errors++;
                return error_set_errno(-ret,
                                       "qcow2: could not write L2 table "
                                       "of '%s' at offset %#" PRIx64,
                                       c->node->filename, l2_off);
            }
            res->corruptions -= dirty;
            res->corruptions_fixed += dirty;
        }
    }
    return 0;
}

/* ---- Rebuilding the refcount structure -------------------------------- */

/* Grow r->refs to entries clusters (zeroed), within r->max_refs_bytes. */
static int plan_grow(struct qcow2_rebuild *r, uint64_t entries)
{
    uint64_t bytes = entries <= r->max_refs_bytes * 8
                         ? qcow2_refcount_array_bytes(entries, r->order)
                         : UINT64_MAX;
    if (bytes > r->max_refs_bytes) {
        return error_set(ENOMEM, "the rebuilt refcounts of %" PRIu64
                                 " clusters exceed the check's memory limit",
                         entries);
    }
    if (bytes > r->refs_bytes) {
        uint8_t *p = realloc(r->refs, (size_t)bytes);
        if (!p) {
            return error_set(ENOMEM, "Out of memory");
        }
        memset(p + r->refs_bytes, 0, (size_t)(bytes - r->refs_bytes));
        r->refs = p;
        r->refs_bytes = bytes;
    }
    r->nb_clusters = entries;
    return 0;
}

/*
 * [QEMU] alloc_clusters_imrt: the first run of count free clusters at or
 * after *first_free (which moves to the first free cluster seen), or at
 * the end of the array, which grows; the clusters get refcount 1.
 */
static int plan_alloc(struct qcow2_rebuild *r, uint64_t count,
                      uint64_t *first_free, uint64_t *out)
{
    uint64_t k = *first_free;
    uint64_t run = 0;
    bool first_gap = true;
    for (; k < r->nb_clusters && run < count; k++) {
        if (qcow2_refcount_load(r->refs, k, r->order) == 0) {
            run++;
            if (first_gap) {
                *first_free = k;
                first_gap = false;
            }
        } else {
            run = 0;
        }
    }
    if (run < count) {
        /* k is the end of the array (or past it): append there. */
        uint64_t need = count - run;
        if (k > UINT64_MAX - need) {
            return error_set(EFBIG, "Cannot allocate refcount structure");
        }
        int ret = plan_grow(r, k + need);
        if (ret < 0) {
            return ret;
        }
        k += need;
    }
    k -= count;
    for (uint64_t i = 0; i < count; i++) {
        qcow2_refcount_store(r->refs, k + i, r->order, 1);
    }
    *out = k;
    return 0;
}

/*
 * [QEMU] rebuild_refcounts_write_refblocks, without the writes: give a
 * refcount block to every block range of [first, end) holding a used
 * cluster.  A new block goes to the first free cluster at or after the
 * start of its own range (so a block already written never changes), and
 * the range grows to take in the new block's own cluster.  Sets *grown
 * if the table had to grow (by whole clusters of entries).
 */
static int plan_refblocks(struct qcow2_rebuild *r, uint64_t first,
                          uint64_t end, bool *grown)
{
    unsigned rb_bits = r->cluster_bits + 3 - r->order;
    uint64_t rb_entries = (uint64_t)1 << rb_bits;
    uint64_t per_cluster = ((uint64_t)1 << r->cluster_bits) / 8;
    uint64_t first_free = 0;
    *grown = false;
    for (uint64_t k = first; k < end; k++) {
        if (qcow2_refcount_load(r->refs, k, r->order) == 0) {
            continue;
        }
        uint64_t idx = k >> rb_bits;
        uint64_t start = idx << rb_bits;
        if (idx >= r->reftable_entries || r->reftable[idx] == 0) {
            first_free = max_u64(first_free, start);
            uint64_t rb;
            int ret = plan_alloc(r, 1, &first_free, &rb);
            if (ret < 0) {
                return ret;
            }
            if (rb >= end) {
                end = rb + 1;
            }
            if (idx >= r->reftable_entries) {
                uint64_t n = (idx / per_cluster + 1) * per_cluster;
                uint64_t *t = realloc(r->reftable, (size_t)n * 8);
                if (!t) {
                    return error_set(ENOMEM, "Out of memory");
                }
                memset(t + r->reftable_entries, 0,
                       (size_t)(n - r->reftable_entries) * 8);
                r->reftable = t;
                r->reftable_entries = n;
                *grown = true;
            }
            r->reftable[idx] = rb << r->cluster_bits;
        }
        /* This block is done: go on after its range. */
        k = start + rb_entries - 1;
    }
    return 0;
}

int qcow2_rebuild_plan(struct qcow2_rebuild *r)
{
    bool grown;
    free(r->reftable);
    r->reftable = NULL;
    r->reftable_entries = 0;
    int ret = plan_refblocks(r, 0, r->nb_clusters, &grown);
    /*
     * Place the table, then give blocks to the clusters it took, until
     * the table stops growing (each extra table cluster covers far more
     * than it needs).  Tables placed before are left counted: the check
     * that follows the rebuild frees them as leaks, as in QEMU.
     */
    while (ret == 0 && grown) {
        uint64_t first_free = 0;
        uint64_t clusters = (r->reftable_entries * 8) >> r->cluster_bits;
        uint64_t at;
        ret = plan_alloc(r, clusters, &first_free, &at);
        if (ret == 0) {
            r->reftable_offset = at << r->cluster_bits;
            ret = plan_refblocks(r, at, at + clusters, &grown);
        }
    }
    return ret;
}

/*
 * The metadata a write of the check may not touch (overlap.c, QEMU's
 * default mode), or NULL.  The refcount structures are the image's
 * current ones (the old ones while a rebuild writes its new blocks).
 */
static const char *metadata_overlap(struct check *c, uint64_t off,
                                    uint64_t len)
{
    return qcow2_overlap_find(c->s, c->reftable, c->reftable_entries, off,
                              len, 0);
}

/*
 * A metadata write of the rebuild, refused (and the image marked corrupt)
 * where it would overwrite other metadata.  what names it in QEMU's
 * error ("ERROR writing refblock: Input/output error").
 */
static int rebuild_write(struct check *c, const void *buf, size_t len,
                         uint64_t off, const char *what)
{
    const char *overlap = metadata_overlap(c, off, len);
    int ret;
    if (overlap) {
        signal_corruption(c,
                          "Preventing invalid write on metadata (overlaps "
                          "with %s)",
                          overlap);
        ret = -EIO;
    } else {
        ret = write_file(c, buf, len, off);
    }
    if (ret < 0) {
        say_error(c, "ERROR %s: %s", what, strerror(-ret));
        return error_set_errno(-ret, "qcow2: could not rebuild the refcount "
                                     "structure of '%s'",
                               c->node->filename);
    }
    return 0;
}

/*
 * Write a new refcount structure for the counted references in c->refs
 * ([QEMU] rebuild_refcount_structure): blocks, then the table, then the
 * header's table offset and size; then s and c use the new table.
 */
static int rebuild_refcounts(struct check *c)
{
    struct qcow2_state *s = c->s;
    struct qcow2_rebuild r = {
        .cluster_bits = s->cluster_bits,
        .order = c->order,
        .max_refs_bytes = QCOW2_CHECK_MAX_REFS_BYTES,
        .refs = c->refs,
        .nb_clusters = c->nb_clusters,
        .refs_bytes = c->refs_bytes,
    };
    int ret = qcow2_rebuild_plan(&r);
    c->refs = r.refs;
    c->nb_clusters = r.nb_clusters;
    c->refs_bytes = r.refs_bytes;
    if (ret < 0) {
        say_error(c, "ERROR %s", qimg_get_error());
        free(r.reftable);
        return ret;
    }
    uint64_t rt_bytes = r.reftable_entries * 8;
    uint32_t rt_clusters = (uint32_t)(rt_bytes >> s->cluster_bits);
    uint8_t *buf = calloc(1, (size_t)max_u64(c->cs, rt_bytes));
    if (!buf) {
        free(r.reftable);
        return error_set(ENOMEM, "Out of memory");
    }
    /* Each block is its slice of the final counts, zero past their end. */
    for (uint64_t i = 0; ret == 0 && i < r.reftable_entries; i++) {
        if (r.reftable[i] == 0) {
            continue;
        }
        uint64_t from = i * c->cs;
        uint64_t n = from < c->refs_bytes ? min_u64(c->cs, c->refs_bytes - from)
                                          : 0;
        memset(buf, 0, (size_t)c->cs);
        memcpy(buf, c->refs + from, (size_t)n);
        ret = rebuild_write(c, buf, (size_t)c->cs, r.reftable[i],
                            "writing refblock");
    }
    if (ret == 0) {
        for (uint64_t i = 0; i < r.reftable_entries; i++) {
            store_be64(buf + i * 8, r.reftable[i]);
        }
        ret = rebuild_write(c, buf, (size_t)rt_bytes, r.reftable_offset,
                            "writing reftable");
    }
    if (ret == 0) {
        /* [spec: Header] refcount_table_offset and _clusters, together. */
        uint8_t hdr[12];
        store_be64(hdr, r.reftable_offset);
        store_be32(hdr + 8, rt_clusters);
        ret = write_file(c, hdr, sizeof(hdr), 48);
        if (ret == 0) {
            ret = node_sync(c->node, c->node->file);
        }
        if (ret < 0) {
            say_error(c, "ERROR setting reftable: %s", strerror(-ret));
            ret = error_set_errno(-ret, "qcow2: could not rebuild the "
                                        "refcount structure of '%s'",
                                  c->node->filename);
        }
    }
    free(buf);
    if (ret < 0) {
        free(r.reftable);
        return ret;
    }
    /* The file grew with the new structure: count within it. */
    int64_t size = io_get_size(c->node->file);
    if (size < 0) {
        free(r.reftable);
        return (int)size;
    }
    c->file_len = size;
    /* The image now has the new table: so do the state and the check. */
    s->hdr.refcount_table_offset = r.reftable_offset;
    s->hdr.refcount_table_clusters = rt_clusters;
    s->refcount_table_offset = r.reftable_offset;
    s->refcount_table_entries = r.reftable_entries;
    free(s->refcount_table);
    s->refcount_table = NULL;
    free(c->reftable);
    c->reftable = r.reftable;
    c->reftable_entries = r.reftable_entries;
    c->rb_off = 0;
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

/*
 * After a repair run: QEMU clears the corrupt and dirty bits when the
 * run found no corruption and no check error, and the dirty bit anyway
 * when it closes an image it opened writable (unless a corruption made
 * it stop using the image).
 */
static int finish_repair(struct check *c, bool clean)
{
    uint64_t *f = &c->s->hdr.incompatible_features;
    uint64_t clear = QCOW2_INCOMPAT_DIRTY;
    if (clean) {
        clear |= QCOW2_INCOMPAT_CORRUPT;
    }
    if (c->fatal || !(*f & clear)) {
        return 0;
    }
    *f &= ~clear;
    c->s->dirty_set = false;
    return write_header(c);
}

/*
 * The refcount part of QEMU's check (qcow2_check_refcounts): count,
 * compare, repair or rebuild, then the COPIED flags.
 */
static int check_refcounts(struct check *c, uint64_t *highest)
{
    struct qimg_check_result *res = c->res;
    unsigned fix = c->fix;
    int ret = count_references(c);
    if (ret < 0) {
        return ret;
    }
    /* A repair compares again from here. */
    struct qimg_check_result pre = *res;
    compare_refcounts(c, 0, highest);

    if (c->rebuild && (fix & QIMG_CHECK_FIX_ERRORS)) {
        struct qimg_check_result old = *res;
        say(c, "Rebuilding refcount structure");
        ret = rebuild_refcounts(c);
        if (ret < 0) {
            return ret;
        }
        /*
         * The old structure is unreferenced now: count again, and free
         * what the rebuild left counted (the old table and blocks).
         * Those repairs are not part of the result, as in QEMU.
         */
        struct qimg_check_result again = {0};
        memset(c->refs, 0, (size_t)c->refs_bytes);
        c->rebuild = false;
        c->fix = 0;
        c->res = &again;
        ret = count_references(c);
        int64_t fresh_leaks = 0;
        int64_t still_broken = 0;
        if (ret == 0 && (fix & QIMG_CHECK_FIX_LEAKS)) {
            struct qimg_check_result cmp = {0};
            c->res = &cmp;
            compare_refcounts(c, QIMG_CHECK_FIX_LEAKS, highest);
            if (c->rebuild) {
                say(c, "ERROR rebuilt refcount structure is still broken");
            }
            fresh_leaks = cmp.leaks;
            still_broken = cmp.corruptions;
        }
        c->res = res;
        c->fix = fix;
        if (ret < 0) {
            res->check_errors += again.check_errors;
            return ret;
        }
        /*
         * [QEMU] what the new count still finds stays found (a rebuild
         * does not fix an L2 entry with reserved bits, say); the rest of
         * what the first count found is fixed.
         */
        res->corruptions = again.corruptions;
        res->check_errors += again.check_errors;
        res->leaks = 0;
        if (old.corruptions > res->corruptions) {
            res->corruptions_fixed += old.corruptions - res->corruptions;
        }
        if (old.leaks > res->leaks) {
            res->leaks_fixed += old.leaks - res->leaks;
        }
        res->leaks += fresh_leaks;
        /*
         * What that compare found and could not fix is left unrepaired
         * too: a cluster the first count skipped (a region a cluster or
         * more past the end of the file) lies inside the file once the
         * new structure has grown it, and the recount references it, but
         * the structure was built without it (refcount 0, reference 1).
         * QEMU drops these from its result and clears the corrupt bit
         * regardless; qemu-img only shows them because it checks again
         * after a repair that fixed something.  They count here, after
         * the *_fixed figures (which stay QEMU's), so that a result
         * saying nothing is left means a second check finds nothing.
         */
        res->corruptions += still_broken;
        c->still_broken = still_broken;
    } else if (fix) {
        if (c->rebuild) {
            say(c, "ERROR need to rebuild refcount structures");
            res->check_errors++;
            return error_set(EIO, "qcow2: image '%s' needs its refcount "
                                  "structure rebuilt (-r all)",
                             c->node->filename);
        }
        if (res->leaks || res->corruptions) {
            *res = pre;
            compare_refcounts(c, fix, highest);
        }
    }
    return check_copied(c);
}

static void discard_line(const char *line, unsigned kind, void *opaque)
{
    (void)line;
    (void)kind;
    (void)opaque;
}

int qcow2_repair(struct qimg_node *node, struct qcow2_state *s,
                 unsigned fix, qimg_check_message_fn report, void *opaque,
                 struct qimg_check_result *res)
{
    memset(res, 0, sizeof(*res));
    fix &= QIMG_CHECK_FIX_LEAKS | QIMG_CHECK_FIX_ERRORS;
    if (fix && !node->writable) {
        return error_set(EROFS, "qcow2: image '%s' must be opened "
                                "read-write to be repaired",
                         node->filename);
    }
    struct check c = {
        .node = node,
        .s = s,
        .report = report ? report : discard_line,
        .opaque = opaque,
        .res = res,
        .cs = s->cluster_size,
        .order = s->refcount_order,
        .refcount_max = s->refcount_order == 6
                            ? UINT64_MAX
                            : ((uint64_t)1 << (1u << s->refcount_order)) - 1,
        /* entries per block = cluster_size * 8 / refcount_bits */
        .rb_bits = s->cluster_bits + 3 - s->refcount_order,
        .fix = fix,
    };
    int ret;

    /* The repair works on the file: what the write path caches goes first. */
    if (fix && s->write_ready) {
        ret = qcow2_write_flush(node, s);
        if (ret < 0) {
            return ret;
        }
    }
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
    uint64_t highest = 0;
    ret = check_refcounts(&c, &highest);
    if (ret < 0) {
        res->corruptions += c.sn_incomplete;
        goto out;
    }
    res->image_end_offset = (int64_t)((highest + 1) * c.cs);
    ret = fix_snapshot_table(&c);

out:
    if (fix) {
        /* QEMU's test: without what a rebuild left (c.still_broken). */
        bool clean = ret == 0 && !res->check_errors &&
                     res->corruptions == c.still_broken;
        int r = finish_repair(&c, clean);
        if (ret == 0 && r < 0) {
            ret = r;
        }
        /*
         * Refcount blocks, the refcount table and L2 tables may have
         * changed under the caches: drop them (all clean after the flush
         * above); the next write loads the refcounts again.
         */
        qcow2_write_free(s);
        qcow2_l2_invalidate(s, 0, UINT64_MAX);
    }
    free(c.refs);
    free(c.reftable);
    free(c.rb_buf);
    free(c.l2_buf);
    return ret;
}

int qcow2_check(struct qimg_node *node, unsigned flags,
                void (*report)(const char *line, unsigned kind, void *opaque),
                void *opaque, struct qimg_check_result *res)
{
    return qcow2_repair(node, node->opaque, flags, report, opaque, res);
}
