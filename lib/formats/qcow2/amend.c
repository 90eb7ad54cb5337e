/*
 * qcow2: changing format options in place (qemu-img amend) [spec: Header,
 * Host cluster management, Cluster mapping].
 *
 * The options are read in the order of QEMU's amend table and checked one
 * by one (the first bad one fails, nothing written yet).  The changes then
 * follow QEMU 7.2's order, each step durable before the next starts, so a
 * failing step leaves the earlier ones done as QEMU does:
 *   1. upgrade to v3 (snapshot entries get the extra data v3 requires);
 *   2. a new refcount width: the refcount table and blocks are rebuilt at
 *      the new width in free space at the end of the file, complete on
 *      disk before the header names them; the old ones are freed after;
 *   3. data_file_raw and the data file name, then the header is written
 *      whole (QEMU rewrites it on every amendment);
 *   4. backing_file/backing_fmt may only repeat the image's own;
 *   5. lazy refcounts on or off (off writes every refcount back first);
 *   6. the guest size, through the driver's truncate;
 *   7. downgrade to v2: zero clusters become unallocated (no backing file,
 *      no host cluster) or zero-filled data clusters, in every L2 table
 *      the active and snapshot L1 tables name, before the v2 header.
 * Progress is reported as QEMU's amend helper does: each long step (up- or
 * downgrade, refcount width) is one share of the whole.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "driver.h"
#include "formats/qcow2/qcow2.h"
#include "util/checked.h"
#include "util/endian.h"
#include "util/grow.h"

/* v3 snapshot entries hold at least vm_state_size_large and disk_size. */
#define V3_MIN_SNAPSHOT_EXTRA 16

/*
 * QEMU's qcow2 amend options, in the order QEMU applies them (the key
 * slot options first); -o help lists them sorted.
 */
const struct qimg_opt_desc qcow2_amend_opts[] = {
    {"encrypt.state", QIMG_OPT_STRING,
     "Select new state of affected keyslots (active/inactive)", NULL},
    {"encrypt.keyslot", QIMG_OPT_NUMBER,
     "Select a single keyslot to modify explicitly", NULL},
    {"encrypt.old-secret", QIMG_OPT_STRING,
     "Select all keyslots that match this password", NULL},
    {"encrypt.new-secret", QIMG_OPT_STRING,
     "New secret to set in the matching keyslots. Empty string to erase",
     NULL},
    {"encrypt.iter-time", QIMG_OPT_NUMBER,
     "Time to spend in PBKDF in milliseconds", NULL},
    {"size", QIMG_OPT_SIZE, "Virtual disk size", NULL},
    {"compat", QIMG_OPT_STRING,
     "Compatibility level (v2 [0.10] or v3 [1.1])", NULL},
    {"backing_file", QIMG_OPT_STRING, "File name of a base image", NULL},
    {"backing_fmt", QIMG_OPT_STRING, "Image format of the base image", NULL},
    {"data_file", QIMG_OPT_STRING, "File name of an external data file",
     NULL},
    {"data_file_raw", QIMG_OPT_BOOL,
     "The external data file must stay valid as a raw image", NULL},
    {"lazy_refcounts", QIMG_OPT_BOOL, "Postpone refcount updates", NULL},
    {"refcount_bits", QIMG_OPT_NUMBER,
     "Width of a reference count entry in bits", NULL},
    {NULL, 0, NULL, NULL},
};

/* What the options ask for, starting from the image as it is. */
struct amend_req {
    unsigned version;
    uint64_t size; /* 0: unchanged (QEMU treats size=0 so) */
    const char *backing_file;
    const char *backing_fmt;
    const char *data_file;
    bool data_file_raw;
    bool lazy_refcounts;
    uint64_t refcount_bits;
    bool encryption_update;
};

/* QEMU's amend helper: one share of the progress per long operation. */
struct amend_progress {
    qimg_progress_fn fn;
    void *opaque;
    uint64_t total_ops;
    uint64_t done_ops;
    int current; /* the operation reporting now, -1 before the first */
    int last;
    uint64_t offset_completed;
    uint64_t last_work;
};

/*
 * Work sizes are integers and the projection of the operations still to
 * come is an integer division, as in QEMU, so the percentages shown are
 * the same.
 */
static void progress_report(struct amend_progress *p, int op, uint64_t offset,
                            uint64_t work)
{
    if (!p->fn || p->total_ops == 0) {
        return;
    }
    p->current = op;
    if (p->last != p->current) {
        if (p->last != -1) {
            p->offset_completed += p->last_work;
            p->done_ops++;
        }
        p->last = p->current;
    }
    if (p->done_ops >= p->total_ops) {
        return;
    }
    p->last_work = work;
    uint64_t current = p->offset_completed + work;
    uint64_t projected = current * (p->total_ops - p->done_ops - 1) /
                         (p->done_ops + 1);
    uint64_t total = current + projected;
    if (total > 0) {
        /* qemu-img computes the percentage in single precision. */
        float pct = 100.f * (float)(p->offset_completed + offset);
        pct /= (float)total;
        p->fn((double)pct, p->opaque);
    }
}

enum { OP_UPGRADE, OP_REFCOUNT, OP_DOWNGRADE };

/* ---- Helpers ------------------------------------------------------------ */

/* Write the whole header (cluster 0) from s->hdr and sync. */
static int rewrite_header(struct qimg_node *node, struct qcow2_state *s)
{
    const uint64_t cs = s->cluster_size;
    uint8_t *buf = malloc((size_t)cs);
    if (!buf) {
        return error_set(ENOMEM, "Out of memory");
    }
    int64_t n = qcow2_header_encode(&s->hdr, buf, (size_t)cs);
    int ret = n < 0 ? (int)n : 0;
    if (ret == 0) {
        ret = io_pwrite(node->file, buf, (size_t)cs, 0);
        if (ret == 0) {
            ret = node_sync(node, node->file);
        }
        if (ret < 0) {
            ret = error_set_errno(-ret, "Failed to update the image header");
        }
    }
    free(buf);
    return ret;
}

static int ensure_writable(struct qimg_node *node, struct qcow2_state *s)
{
    if (s->corrupt) {
        return error_set(EIO, "qcow2: image '%s' is marked corrupt",
                         node->filename);
    }
    return qcow2_write_begin(node, s);
}

/* Flush, then reload the refcounts (after they were changed on disk). */
static int reload_refcounts(struct qimg_node *node, struct qcow2_state *s)
{
    qcow2_write_free(s);
    return qcow2_write_begin(node, s);
}

static int64_t file_clusters(struct qimg_node *node, struct qcow2_state *s)
{
    int64_t size = io_get_size(node->file);
    if (size < 0) {
        return error_set_errno((int)-size, "%s: could not get the file size",
                               node->filename);
    }
    return (int64_t)div_round_up_u64((uint64_t)size, s->cluster_size);
}

/* A reftable or L1/L2 offset from the image, checked before use. */
static int check_table_offset(struct qimg_node *node, struct qcow2_state *s,
                              uint64_t off, const char *what)
{
    if (!is_aligned_u64(off, s->cluster_size) ||
        off > QCOW2_MAX_HOST_OFFSET ||
        !qcow2_read_in_range(off, s->cluster_size)) {
        return qcow2_signal_corruption(node, s,
                                       "%s offset %#" PRIx64 " is invalid",
                                       what, off);
    }
    return 0;
}

/*
 * Set the refcount of one cluster directly in its block on disk (the
 * block exists: the cluster was allocated).  The caller flushed the cache
 * before and reloads the refcounts after.
 */
static int refcount_set_on_disk(struct qimg_node *node,
                                struct qcow2_state *s, uint64_t cluster,
                                uint64_t value, uint8_t *buf)
{
    unsigned rb_bits = s->cluster_bits + 3 - s->refcount_order;
    uint64_t g = cluster >> rb_bits;
    uint64_t rb = g < s->refcount_table_entries
                      ? s->refcount_table[g] & QCOW2_REFT_OFFSET_MASK
                      : 0;
    if (rb == 0) {
        return error_set(EIO, "%s: no refcount block for cluster %" PRIu64,
                         node->filename, cluster);
    }
    int ret = check_table_offset(node, s, rb, "Refblock");
    if (ret == 0) {
        ret = io_pread(node->file, buf, (size_t)s->cluster_size, rb);
    }
    if (ret == 0) {
        qcow2_refcount_store(buf, cluster & (((uint64_t)1 << rb_bits) - 1),
                             s->refcount_order, value);
        ret = io_pwrite(node->file, buf, (size_t)s->cluster_size, rb);
    }
    if (ret < 0) {
        return error_set_errno(-ret, "%s: could not update a refcount block",
                               node->filename);
    }
    return 0;
}

/* ---- 1. Upgrade ---------------------------------------------------------- */

/* Write the snapshot table anew (each entry with full v3 extra data). */
static int rewrite_snapshots(struct qimg_node *node, struct qcow2_state *s)
{
    const uint64_t cs = s->cluster_size;
    int ret = ensure_writable(node, s);
    if (ret < 0) {
        return ret;
    }
    int64_t size = qcow2_snapshots_encoded_size(&s->snapshots);
    if (size < 0) {
        return (int)size;
    }
    uint64_t clusters = div_round_up_u64((uint64_t)size, cs);
    uint8_t *buf = calloc(1, (size_t)(clusters * cs));
    if (!buf) {
        return error_set(ENOMEM, "Out of memory");
    }
    int64_t n = qcow2_snapshots_encode(&s->snapshots, buf,
                                       (size_t)(clusters * cs));
    uint64_t off = 0;
    ret = n < 0 ? (int)n : 0;
    if (ret == 0) {
        ret = qcow2_alloc_clusters(node, s, clusters, 0, &off, NULL);
    }
    if (ret == 0) {
        ret = io_pwrite(node->file, buf, (size_t)(clusters * cs), off);
        if (ret < 0) {
            ret = error_set_errno(-ret, "Failed to update the snapshot "
                                  "table");
        }
    }
    free(buf);
    /* The new table and its refcounts are durable before the header. */
    if (ret == 0) {
        ret = qcow2_write_flush(node, s);
    }
    if (ret < 0) {
        return ret;
    }
    uint64_t old_off = s->hdr.snapshots_offset;
    uint64_t old_size = s->snapshots.size;
    s->hdr.snapshots_offset = off;
    s->snapshots.size = (uint64_t)size;
    for (uint32_t i = 0; i < s->snapshots.nb; i++) {
        if (s->snapshots.sn[i].extra_data_size < QCOW2_SNAPSHOT_EXTRA_SIZE) {
            s->snapshots.sn[i].extra_data_size = QCOW2_SNAPSHOT_EXTRA_SIZE;
        }
    }
    ret = rewrite_header(node, s);
    if (ret == 0 && old_size > 0) {
        ret = qcow2_free_later(node, s, old_off, old_size);
    }
    return ret == 0 ? qcow2_write_flush(node, s) : ret;
}

static int upgrade(struct qimg_node *node, struct qcow2_state *s,
                   struct amend_progress *p)
{
    progress_report(p, OP_UPGRADE, 0, 2);
    bool update = false;
    for (uint32_t i = 0; i < s->snapshots.nb; i++) {
        update |= s->snapshots.sn[i].extra_data_size < V3_MIN_SNAPSHOT_EXTRA;
    }
    if (update) {
        int ret = rewrite_snapshots(node, s);
        if (ret < 0) {
            return ret;
        }
    }
    progress_report(p, OP_UPGRADE, 1, 2);
    struct qcow2_header old = s->hdr;
    s->hdr.version = 3;
    s->hdr.incompatible_features = 0;
    s->hdr.compatible_features = 0;
    s->hdr.autoclear_features = 0;
    s->hdr.refcount_order = QCOW2_V2_REFCOUNT_ORDER;
    s->hdr.compression_type = QCOW2_COMPRESSION_ZLIB;
    int ret = rewrite_header(node, s);
    if (ret < 0) {
        s->hdr.version = old.version;
        return ret;
    }
    progress_report(p, OP_UPGRADE, 2, 2);
    return 0;
}

/* ---- 2. Refcount width ----------------------------------------------------- */

/* Groups of per clusters that need a block in the new structure. */
struct rc_layout {
    uint64_t start;  /* first cluster of the new structure */
    uint64_t blocks; /* new refcount blocks, then the table */
    uint64_t table_clusters;
    uint64_t end; /* start + blocks + table_clusters */
};

/*
 * The refcounts the new structure must hold for the clusters in use,
 * read from the old structure on demand (one old block cached) rather
 * than held for every cluster: a hostile image names one refcount far
 * past its end, and even a valid one of 512-byte clusters would need
 * 8 bytes per cluster.  A cluster's count is its old one, less one for
 * each old table cluster and each old table entry naming it as a block
 * (those are freed once the header names the new structure).
 */
struct old_refcounts {
    struct qimg_node *node;
    struct qcow2_state *s;
    uint64_t n; /* clusters from here on have no refcount */
    unsigned bits; /* old refcounts per block, log2 */
    uint64_t table, table_clusters;
    uint64_t *blocks; /* clusters the old table names, sorted */
    uint64_t nb_blocks;
    uint8_t *buf;
    uint64_t cached; /* the old group in buf, or UINT64_MAX */
};

static int by_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The old block of group g into o->buf; 0 with *present false if none. */
static int old_block(struct old_refcounts *o, uint64_t g, bool *present)
{
    uint64_t rb = g < o->s->refcount_table_entries
                      ? o->s->refcount_table[g] & QCOW2_REFT_OFFSET_MASK
                      : 0;
    *present = rb != 0;
    if (rb == 0 || o->cached == g) {
        return 0;
    }
    o->cached = UINT64_MAX;
    int ret = check_table_offset(o->node, o->s, rb, "Refblock");
    if (ret == 0) {
        ret = io_pread(o->node->file, o->buf, (size_t)o->s->cluster_size, rb);
        if (ret < 0) {
            return error_set_errno(-ret, "%s: could not read a refcount block",
                                   o->node->filename);
        }
        o->cached = g;
    }
    return ret;
}

/* How many times the old structure's own clusters include c. */
static uint64_t old_uses(const struct old_refcounts *o, uint64_t c)
{
    uint64_t k = c >= o->table && c - o->table < o->table_clusters;
    uint64_t lo = 0, hi = o->nb_blocks;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (o->blocks[mid] < c) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    while (lo < o->nb_blocks && o->blocks[lo] == c) {
        k++;
        lo++;
    }
    return k;
}

/*
 * The new refcount of c, or (*skip set) the first cluster after c whose
 * count may not be 0 when c lies where the old table names no block.
 */
static int new_refcount(struct old_refcounts *o, uint64_t c, uint64_t *v,
                        uint64_t *skip)
{
    *v = 0;
    *skip = 0;
    if (c >= o->n) {
        *skip = UINT64_MAX;
        return 0;
    }
    bool present;
    int ret = old_block(o, c >> o->bits, &present);
    if (ret < 0) {
        return ret;
    }
    if (!present) {
        *skip = ((c >> o->bits) + 1) << o->bits;
        return 0;
    }
    uint64_t raw = qcow2_refcount_load(
        o->buf, c & (((uint64_t)1 << o->bits) - 1), o->s->refcount_order);
    uint64_t k = old_uses(o, c);
    *v = raw > k ? raw - k : 0;
    return 0;
}

/* Whether group g of the new structure needs a block (*in_use). */
static int group_in_use(struct old_refcounts *o, uint64_t g, unsigned bits,
                        const struct rc_layout *l, bool *in_use)
{
    uint64_t first = g << bits, last = ((g + 1) << bits) - 1;
    *in_use = first < l->end && last >= l->start;
    for (uint64_t c = first; !*in_use && c <= last;) {
        uint64_t v, skip;
        int ret = new_refcount(o, c, &v, &skip);
        if (ret < 0) {
            return ret;
        }
        *in_use = v != 0;
        c = skip > c ? skip : c + 1;
    }
    return 0;
}

static int change_refcount_order(struct qimg_node *node,
                                 struct qcow2_state *s, unsigned new_order,
                                 struct amend_progress *p)
{
    const uint64_t cs = s->cluster_size;
    const unsigned old_order = s->refcount_order;
    const unsigned old_bits = s->cluster_bits + 3 - old_order;
    const unsigned new_bits = s->cluster_bits + 3 - new_order;
    int ret = ensure_writable(node, s);
    if (ret == 0) {
        ret = qcow2_write_flush(node, s);
    }
    uint64_t n = 0;
    if (ret == 0) {
        ret = qcow2_refcount_end(node, s, &n);
    }
    int64_t fc = ret == 0 ? file_clusters(node, s) : 0;
    if (ret < 0 || fc < 0) {
        return ret < 0 ? ret : (int)fc;
    }
    const uint64_t entries = s->refcount_table_entries;
    /* entries is bounded by QCOW2_MAX_REFTABLE_SIZE / 8. */
    struct old_refcounts o = {
        .node = node,
        .s = s,
        .n = n,
        .bits = old_bits,
        .table = s->refcount_table_offset >> s->cluster_bits,
        .table_clusters = div_round_up_u64(entries * 8, cs),
        .blocks = malloc((size_t)max_u64(entries, 1) * sizeof(uint64_t)),
        .buf = malloc((size_t)cs),
        .cached = UINT64_MAX,
    };
    uint8_t *buf = malloc((size_t)cs);
    if (!o.blocks || !o.buf || !buf) {
        free(o.blocks);
        free(o.buf);
        free(buf);
        return error_set(ENOMEM, "Out of memory");
    }
    for (uint64_t g = 0; g < entries; g++) {
        uint64_t c = (s->refcount_table[g] & QCOW2_REFT_OFFSET_MASK) >>
                     s->cluster_bits;
        if (c != 0) {
            o.blocks[o.nb_blocks++] = c;
        }
    }
    qsort(o.blocks, (size_t)o.nb_blocks, sizeof(uint64_t), by_u64);
    const unsigned width = 1u << new_order;
    const uint64_t work = 2 * entries;

    /*
     * [QEMU] a refcount that does not fit the new width is refused as
     * soon as its block is read: every old block, in table order.
     */
    for (uint64_t g = 0; ret == 0 && g < entries; g++) {
        progress_report(p, OP_REFCOUNT, g, work);
        bool present = false;
        if ((g << old_bits) < n) {
            ret = old_block(&o, g, &present);
        }
        if (ret < 0 || !present) {
            continue;
        }
        for (uint64_t i = 0; ret == 0 && i < ((uint64_t)1 << old_bits); i++) {
            uint64_t c = (g << old_bits) + i;
            if (c >= n) {
                break;
            }
            uint64_t rc = qcow2_refcount_load(o.buf, i, old_order);
            if (width < 64 && (rc >> width)) {
                ret = error_set(EINVAL,
                                "Cannot decrease refcount entry width to %u "
                                "bits: Cluster at offset %#" PRIx64
                                " has a refcount of %" PRIu64,
                                width, c << s->cluster_bits, rc);
            }
        }
    }

    /* Lay out the new blocks and table after everything in use. */
    struct rc_layout l = {.start = max_u64((uint64_t)fc, n)};
    l.table_clusters = 1;
    if (ret == 0 && l.start > (QCOW2_MAX_HOST_OFFSET >> s->cluster_bits)) {
        ret = error_set(EFBIG, "%s: the refcount table would be too large",
                        node->filename);
    }
    for (;;) {
        if (ret < 0) {
            break;
        }
        l.end = l.start + l.blocks + l.table_clusters;
        uint64_t last_g = (l.end - 1) >> new_bits;
        uint64_t need = 0;
        for (uint64_t g = 0; ret == 0 && g <= last_g; g++) {
            bool in_use;
            ret = group_in_use(&o, g, new_bits, &l, &in_use);
            need += in_use;
        }
        if (ret < 0) {
            break;
        }
        uint64_t tc = div_round_up_u64((last_g + 1) * 8, cs);
        if (need == l.blocks && tc == l.table_clusters) {
            break;
        }
        l.blocks = max_u64(need, l.blocks);
        l.table_clusters = max_u64(tc, l.table_clusters);
    }
    if (ret == 0 && (l.table_clusters * cs > QCOW2_MAX_REFTABLE_SIZE ||
                     (l.end << s->cluster_bits) >> s->cluster_bits != l.end ||
                     (l.end << s->cluster_bits) > QCOW2_MAX_HOST_OFFSET)) {
        ret = error_set(EFBIG, "%s: the refcount table would be too large",
                        node->filename);
    }
    uint8_t *table = NULL;
    if (ret == 0) {
        table = calloc(1, (size_t)(l.table_clusters * cs));
        if (!table) {
            ret = error_set(ENOMEM, "Out of memory");
        }
    }
    /* Write the blocks, then the table: nothing names them yet. */
    uint64_t next = l.start;
    uint64_t last_g = (l.end - 1) >> new_bits;
    for (uint64_t g = 0; ret == 0 && g <= last_g; g++) {
        bool in_use;
        ret = group_in_use(&o, g, new_bits, &l, &in_use);
        if (ret < 0 || !in_use) {
            continue;
        }
        memset(buf, 0, (size_t)cs);
        for (uint64_t i = 0; ret == 0 && i < ((uint64_t)1 << new_bits); i++) {
            uint64_t c = (g << new_bits) + i;
            uint64_t v, skip;
            ret = new_refcount(&o, c, &v, &skip);
            if (c >= l.start && c < l.end) {
                v = 1;
            }
            qcow2_refcount_store(buf, i, new_order, v);
        }
        if (ret < 0) {
            break;
        }
        uint64_t off = next++ << s->cluster_bits;
        store_be64(table + g * 8, off);
        ret = io_pwrite(node->file, buf, (size_t)cs, off);
        if (ret < 0) {
            ret = error_set_errno(-ret, "%s: could not write a refcount "
                                  "block", node->filename);
        }
    }
    /* [QEMU] the second pass reports per entry of the old table too. */
    for (uint64_t g = 0; ret == 0 && g < entries; g++) {
        progress_report(p, OP_REFCOUNT, entries + g, work);
    }
    uint64_t t_off = (l.start + l.blocks) << s->cluster_bits;
    if (ret == 0) {
        ret = io_pwrite(node->file, table, (size_t)(l.table_clusters * cs),
                        t_off);
        if (ret < 0) {
            ret = error_set_errno(-ret, "%s: could not write the refcount "
                                  "table", node->filename);
        }
    }
    if (ret == 0) {
        ret = node_sync(node, node->file);
        if (ret < 0) {
            ret = error_set_errno(-ret, "%s: flush failed", node->filename);
        }
    }
    free(table);
    free(o.blocks);
    free(o.buf);
    free(buf);
    if (ret < 0) {
        return ret;
    }

    /* Switch the header to the new structure. */
    struct qcow2_header old = s->hdr;
    s->hdr.refcount_order = new_order;
    s->hdr.refcount_table_offset = t_off;
    s->hdr.refcount_table_clusters = (uint32_t)l.table_clusters;
    ret = rewrite_header(node, s);
    if (ret < 0) {
        s->hdr.refcount_order = old.refcount_order;
        s->hdr.refcount_table_offset = old.refcount_table_offset;
        s->hdr.refcount_table_clusters = old.refcount_table_clusters;
        return ret;
    }
    /* Give the old structure's space back to the host (advisory). */
    if (node->file->ops->discard) {
        for (uint64_t g = 0; g < entries; g++) {
            uint64_t rb = s->refcount_table[g] & QCOW2_REFT_OFFSET_MASK;
            if (rb) {
                (void)io_discard(node->file, rb, cs);
            }
        }
        (void)io_discard(node->file, o.table << s->cluster_bits,
                         o.table_clusters * cs);
    }
    qcow2_write_free(s);
    s->refcount_order = new_order;
    s->refcount_table_offset = t_off;
    s->refcount_table_entries = l.table_clusters * cs / 8;
    ret = qcow2_write_begin(node, s);
    progress_report(p, OP_REFCOUNT, work, work);
    return ret;
}

/* ---- 7. Downgrade ---------------------------------------------------------- */

/* A cluster whose refcount must become more than the 1 it was given. */
struct extra_ref {
    uint64_t cluster;
    uint64_t refcount;
};

struct expand {
    struct extra_ref *refs;
    size_t nb_refs;
    size_t cap_refs;
    /* Old clusters to drop refcount references from, after the table. */
    struct extra_ref *olds;
    size_t nb_olds;
    size_t cap_olds;
    uint8_t *l2;
    uint8_t *rb_buf;
    bool zstd;
};

static int add_ref(struct extra_ref **list, size_t *nb, size_t *cap,
                   uint64_t cluster, uint64_t refcount)
{
    struct extra_ref *r = grow_array(*list, cap, *nb + 1, sizeof(*r));
    if (!r) {
        return error_set(ENOMEM, "Out of memory");
    }
    *list = r;
    (*list)[*nb].cluster = cluster;
    (*list)[*nb].refcount = refcount;
    (*nb)++;
    return 0;
}

/*
 * A new cluster for a zero entry of an L2 table with l2_rc references:
 * the cluster is referenced as often (the refcount is raised on disk
 * after the flush, see expand_l2).
 */
static int alloc_zero_target(struct qimg_node *node, struct qcow2_state *s,
                             struct expand *x, uint64_t l2_rc,
                             uint64_t *host)
{
    int ret = qcow2_alloc_clusters(node, s, 1, 0, host, NULL);
    if (ret == 0 && l2_rc > 1) {
        ret = add_ref(&x->refs, &x->nb_refs, &x->cap_refs,
                      *host >> s->cluster_bits, l2_rc);
    }
    return ret;
}

/*
 * Turn the zero entries of the L2 table at l2_off into unallocated or
 * zero-filled data entries.  The table is rewritten in place: it may be
 * shared with snapshots, for which the change means the same.
 */
static int expand_l2(struct qimg_node *node, struct qcow2_state *s,
                     struct expand *x, uint64_t l2_off)
{
    const uint64_t cs = s->cluster_size;
    int ret = check_table_offset(node, s, l2_off, "L2 table");
    if (ret == 0) {
        ret = io_pread(node->file, x->l2, (size_t)cs, l2_off);
        if (ret < 0) {
            ret = error_set_errno(-ret, "%s: could not read an L2 table",
                                  node->filename);
        }
    }
    if (ret < 0) {
        return ret;
    }
    bool dirty = false, alloc = false;
    uint64_t l2_rc = 0;
    for (uint64_t j = 0; j < s->l2_entries; j++) {
        uint64_t e = load_be64(x->l2 + j * 8);
        if (e & QCOW2_OFLAG_COMPRESSED) {
            if (x->zstd) {
                /*
                 * A v2 header cannot say zstd: these clusters would read
                 * as garbage after the downgrade.
                 */
                return error_set(ENOTSUP, "Cannot downgrade an image with "
                                 "zstd compressed clusters");
            }
            continue;
        }
        if (!(e & QCOW2_OFLAG_ZERO)) {
            continue;
        }
        uint64_t host = e & QCOW2_L2E_OFFSET_MASK;
        if (host == 0 && !node->backing && !node->backing_name) {
            /* Nothing below: unallocated reads as zero too. */
            store_be64(x->l2 + j * 8, 0);
            dirty = true;
            continue;
        }
        if (!alloc) {
            ret = qcow2_refcount_get(node, s, l2_off >> s->cluster_bits,
                                     &l2_rc);
            if (ret < 0) {
                return ret;
            }
            alloc = true;
        }
        if (host == 0) {
            ret = alloc_zero_target(node, s, x, l2_rc, &host);
            if (ret < 0) {
                return ret;
            }
        } else {
            ret = check_table_offset(node, s, host, "Zero cluster");
            uint64_t host_rc = 0;
            if (ret == 0) {
                ret = qcow2_refcount_get(node, s, host >> s->cluster_bits,
                                         &host_rc);
            }
            if (ret < 0) {
                return ret;
            }
            if (host_rc > l2_rc) {
                /*
                 * More references than the tables sharing this L2 table
                 * hold: another table may read the cluster as data, so
                 * this entry gets a zeroed cluster of its own and drops
                 * its references to the old one once the table is on
                 * disk.
                 */
                ret = add_ref(&x->olds, &x->nb_olds, &x->cap_olds,
                              host >> s->cluster_bits, l2_rc);
                if (ret == 0) {
                    ret = alloc_zero_target(node, s, x, l2_rc, &host);
                }
                if (ret < 0) {
                    return ret;
                }
            }
        }
        ret = qcow2_overlap_check(node, s, host, cs, 0);
        if (ret == 0) {
            ret = io_pwrite_zeroes(node->file, host, cs, false);
            if (ret < 0) {
                ret = error_set_errno(-ret, "Failed to turn zero into data "
                                      "clusters");
            }
        }
        if (ret < 0) {
            return ret;
        }
        store_be64(x->l2 + j * 8,
                   host | (l2_rc == 1 ? QCOW2_OFLAG_COPIED : 0));
        dirty = true;
    }
    if (!dirty) {
        return 0;
    }
    /* New clusters and their refcounts are on disk before the table. */
    ret = qcow2_write_flush(node, s);
    if (ret == 0 && x->nb_refs > 0) {
        for (size_t i = 0; ret == 0 && i < x->nb_refs; i++) {
            ret = refcount_set_on_disk(node, s, x->refs[i].cluster,
                                       x->refs[i].refcount, x->rb_buf);
        }
        x->nb_refs = 0;
        if (ret == 0) {
            ret = reload_refcounts(node, s);
        }
        if (ret == 0) {
            ret = node_sync(node, node->file);
        }
    }
    if (ret == 0) {
        qcow2_l2_invalidate(s, l2_off, cs);
        ret = io_pwrite(node->file, x->l2, (size_t)cs, l2_off);
        if (ret == 0) {
            ret = node_sync(node, node->file);
        }
        if (ret < 0) {
            ret = error_set_errno(-ret, "%s: could not write an L2 table",
                                  node->filename);
        }
    }
    /* The table on disk no longer names the old clusters. */
    for (size_t i = 0; ret == 0 && i < x->nb_olds; i++) {
        for (uint64_t k = 0; ret == 0 && k < x->olds[i].refcount; k++) {
            ret = qcow2_free_later(node, s,
                                   x->olds[i].cluster << s->cluster_bits,
                                   s->cluster_size);
        }
    }
    if (ret == 0 && x->nb_olds > 0) {
        x->nb_olds = 0;
        ret = qcow2_write_flush(node, s);
    }
    return ret;
}

/* Expand the zero clusters of every L2 table that l1 (n entries) names. */
static int expand_l1(struct qimg_node *node, struct qcow2_state *s,
                     struct expand *x, const uint64_t *l1, uint64_t n,
                     struct amend_progress *p, uint64_t *done,
                     uint64_t total)
{
    for (uint64_t i = 0; i < n; i++) {
        uint64_t l2_off = l1[i] & QCOW2_L1E_OFFSET_MASK;
        if (l2_off) {
            int ret = expand_l2(node, s, x, l2_off);
            if (ret < 0) {
                return ret;
            }
        }
        *done += 1;
        progress_report(p, OP_DOWNGRADE, *done, total);
    }
    return 0;
}

static int expand_zero_clusters(struct qimg_node *node, struct qcow2_state *s,
                                struct amend_progress *p)
{
    int ret = ensure_writable(node, s);
    if (ret == 0) {
        ret = qcow2_write_flush(node, s);
    }
    if (ret < 0) {
        return ret;
    }
    struct expand x = {
        .l2 = malloc((size_t)s->cluster_size),
        .rb_buf = malloc((size_t)s->cluster_size),
        .zstd = s->hdr.compression_type == QCOW2_COMPRESSION_ZSTD,
    };
    if (!x.l2 || !x.rb_buf) {
        free(x.l2);
        free(x.rb_buf);
        return error_set(ENOMEM, "Out of memory");
    }
    uint64_t total = s->l1_size, done = 0;
    for (uint32_t i = 0; i < s->snapshots.nb; i++) {
        total += s->snapshots.sn[i].l1_size;
    }
    ret = expand_l1(node, s, &x, s->l1_table, s->l1_size, p, &done, total);
    for (uint32_t i = 0; ret == 0 && i < s->snapshots.nb; i++) {
        const struct qcow2_snapshot *sn = &s->snapshots.sn[i];
        if (sn->l1_size == 0) {
            continue;
        }
        ret = qcow2_validate_table(sn->l1_table_offset, sn->l1_size, 8,
                                   QCOW2_MAX_L1_SIZE, s->cluster_size,
                                   "Snapshot L1 table");
        uint64_t *l1 = NULL;
        if (ret == 0) {
            l1 = malloc((size_t)sn->l1_size * 8);
            if (!l1) {
                ret = error_set(ENOMEM, "Out of memory");
            }
        }
        if (ret == 0) {
            ret = io_pread(node->file, l1, (size_t)sn->l1_size * 8,
                           sn->l1_table_offset);
            if (ret < 0) {
                ret = error_set_errno(-ret, "%s: could not read a snapshot "
                                      "L1 table", node->filename);
            }
        }
        for (uint32_t j = 0; ret == 0 && j < sn->l1_size; j++) {
            l1[j] = load_be64((const uint8_t *)&l1[j]);
        }
        if (ret == 0) {
            ret = expand_l1(node, s, &x, l1, sn->l1_size, p, &done, total);
        }
        free(l1);
    }
    free(x.refs);
    free(x.olds);
    free(x.l2);
    free(x.rb_buf);
    return ret;
}

static int downgrade(struct qimg_node *node, struct qcow2_state *s,
                     struct amend_progress *p)
{
    if (s->refcount_order != QCOW2_V2_REFCOUNT_ORDER) {
        return error_set(ENOTSUP, "compat=0.10 requires refcount_bits=16");
    }
    if (s->has_data_file) {
        return error_set(ENOTSUP,
                         "Cannot downgrade an image with a data file");
    }
    /*
     * [QEMU] v2 programs would ignore a snapshot's own disk size or a VM
     * state above 4 GiB.
     */
    for (uint32_t i = 0; i < s->snapshots.nb; i++) {
        const struct qcow2_snapshot *sn = &s->snapshots.sn[i];
        if (sn->vm_state_size > UINT32_MAX || sn->disk_size != node->size) {
            return error_set(ENOTSUP,
                             "Internal snapshots prevent downgrade of image");
        }
    }
    int ret = qcow2_write_flush(node, s);
    if (ret < 0) {
        return error_prefix(-ret, "Failed to make the image clean");
    }
    /* [QEMU] the compression type bit is not named, nor refused. */
    uint64_t incompat = s->hdr.incompatible_features &
                        ~(QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_COMPRESSION);
    if (incompat) {
        return error_set(ENOTSUP,
                         "Cannot downgrade an image with incompatible "
                         "features %#" PRIx64 " set",
                         incompat);
    }
    ret = expand_zero_clusters(node, s, p);
    if (ret < 0) {
        return ret;
    }
    struct qcow2_header old = s->hdr;
    s->hdr.version = 2;
    s->hdr.incompatible_features = 0;
    s->hdr.compatible_features = 0;
    s->hdr.autoclear_features = 0;
    s->hdr.compression_type = QCOW2_COMPRESSION_ZLIB;
    ret = rewrite_header(node, s);
    if (ret < 0) {
        s->hdr = old;
    }
    return ret;
}

/* ---- Options ---------------------------------------------------------------- */

static int parse_options(struct qimg_node *node, struct qcow2_state *s,
                         const struct qimg_opts *opts, struct amend_req *r)
{
    bool raw = (s->hdr.autoclear_features & QCOW2_AUTOCLEAR_DATA_FILE_RAW) != 0;
    memset(r, 0, sizeof(*r));
    r->version = s->hdr.version;
    r->data_file_raw = raw;
    r->lazy_refcounts =
        (s->hdr.compatible_features & QCOW2_COMPAT_LAZY_REFCOUNTS) != 0;
    r->refcount_bits = 1ull << s->refcount_order;
    for (const struct qimg_opt_desc *d = qcow2_amend_opts; d->name; d++) {
        const char *v = qimg_opts_get(opts, d->name);
        bool b;
        if (!v) {
            continue;
        }
        if (strncmp(d->name, "encrypt.", 8) == 0) {
            if (s->hdr.crypt_method == QCOW2_CRYPT_NONE) {
                return error_set(EINVAL, "Can't amend encryption options - "
                                 "encryption not present");
            }
            if (s->hdr.crypt_method != QCOW2_CRYPT_LUKS) {
                return error_set(ENOTSUP, "Only LUKS encryption options can "
                                 "be amended");
            }
            r->encryption_update = true;
        } else if (strcmp(d->name, "size") == 0) {
            if (qimg_parse_size(v, 'B', &r->size) < 0) {
                return error_set(EINVAL, "Parameter 'size' expects a size");
            }
        } else if (strcmp(d->name, "compat") == 0) {
            if (strcmp(v, "0.10") == 0 || strcmp(v, "v2") == 0) {
                r->version = 2;
            } else if (strcmp(v, "1.1") == 0 || strcmp(v, "v3") == 0) {
                r->version = 3;
            } else {
                return error_set(EINVAL, "Unknown compatibility level %s", v);
            }
        } else if (strcmp(d->name, "backing_file") == 0) {
            r->backing_file = v;
        } else if (strcmp(d->name, "backing_fmt") == 0) {
            r->backing_fmt = v;
        } else if (strcmp(d->name, "data_file") == 0) {
            if (!s->has_data_file) {
                return error_set(EINVAL, "data-file can only be set for "
                                 "images that use an external data file");
            }
            r->data_file = v;
        } else if (strcmp(d->name, "data_file_raw") == 0) {
            if (opt_parse_bool(v, &b)) {
                r->data_file_raw = b;
            }
            if (r->data_file_raw && !raw) {
                return error_set(EINVAL, "data-file-raw cannot be set on "
                                 "existing images");
            }
        } else if (strcmp(d->name, "lazy_refcounts") == 0) {
            if (opt_parse_bool(v, &b)) {
                r->lazy_refcounts = b;
            }
        } else if (strcmp(d->name, "refcount_bits") == 0) {
            char *end;
            errno = 0;
            uint64_t bits = strtoull(v, &end, 0);
            if (errno || *end || bits == 0 || bits > 64 ||
                (bits & (bits - 1))) {
                return error_set(EINVAL, "Refcount width must be a power of "
                                 "two and may not exceed 64 bits");
            }
            r->refcount_bits = bits;
        }
    }
    (void)node;
    return 0;
}

static bool str_differs(const char *a, const char *b)
{
    if (!a || !b) {
        return a != b;
    }
    return strcmp(a, b) != 0;
}

static int set_lazy_refcounts(struct qimg_node *node, struct qcow2_state *s,
                              bool on)
{
    if (on) {
        s->hdr.compatible_features |= QCOW2_COMPAT_LAZY_REFCOUNTS;
        int ret = rewrite_header(node, s);
        if (ret < 0) {
            s->hdr.compatible_features &= ~QCOW2_COMPAT_LAZY_REFCOUNTS;
        }
        return ret;
    }
    /* Every refcount on disk and the dirty bit clear first. */
    int ret = qcow2_write_flush(node, s);
    if (ret < 0) {
        return error_prefix(-ret, "Failed to make the image clean");
    }
    s->hdr.compatible_features &= ~QCOW2_COMPAT_LAZY_REFCOUNTS;
    ret = rewrite_header(node, s);
    if (ret < 0) {
        s->hdr.compatible_features |= QCOW2_COMPAT_LAZY_REFCOUNTS;
    }
    return ret;
}

int qcow2_amend(struct qimg_node *node, const struct qimg_opts *opts,
                qimg_progress_fn progress, void *opaque, unsigned flags)
{
    struct qcow2_state *s = node->opaque;
    struct amend_req r;
    (void)flags;
    int ret = parse_options(node, s, opts, &r);
    if (ret < 0) {
        return ret;
    }
    unsigned old_version = s->hdr.version;
    struct amend_progress p = {
        .fn = progress,
        .opaque = opaque,
        .total_ops = (r.version != old_version) +
                     (r.refcount_bits != (1ull << s->refcount_order)) +
                     r.encryption_update,
        .current = -1,
        .last = -1,
    };
    if (s->hdr.incompatible_features & QCOW2_INCOMPAT_DIRTY) {
        /*
         * A writable open has repaired it already; an image opened to be
         * checked is repaired here, as QEMU's open would have.
         */
        ret = qcow2_repair_dirty(node, s);
        if (ret < 0) {
            return ret;
        }
    }
    if (s->corrupt) {
        return error_set(EIO, "qcow2: image '%s' is marked corrupt",
                         node->filename);
    }
    if (r.version > old_version) {
        ret = upgrade(node, s, &p);
        if (ret < 0) {
            return ret;
        }
    }
    if (r.encryption_update) {
        return error_set(ENOTSUP, "%s: amending LUKS key slots is not "
                         "supported yet", node->filename);
    }
    if (r.refcount_bits != (1ull << s->refcount_order)) {
        if (r.version < 3 && r.refcount_bits != 16) {
            return error_set(EINVAL, "Refcount widths other than 16 bits "
                             "require compatibility level 1.1 or above "
                             "(use compat=1.1 or greater)");
        }
        unsigned order = 0;
        while ((1ull << order) < r.refcount_bits) {
            order++;
        }
        ret = change_refcount_order(node, s, order, &p);
        if (ret < 0) {
            return ret;
        }
    }
    if (s->hdr.version >= 3) {
        if (r.data_file_raw) {
            s->hdr.autoclear_features |= QCOW2_AUTOCLEAR_DATA_FILE_RAW;
        } else {
            s->hdr.autoclear_features &= ~QCOW2_AUTOCLEAR_DATA_FILE_RAW;
        }
    }
    if (r.data_file) {
        char *name = *r.data_file ? strdup(r.data_file) : NULL;
        if (*r.data_file && !name) {
            return error_set(ENOMEM, "Out of memory");
        }
        free(s->hdr.data_file);
        s->hdr.data_file = name;
    }
    ret = rewrite_header(node, s);
    if (ret < 0) {
        return ret;
    }
    if ((r.backing_file || r.backing_fmt) &&
        (str_differs(r.backing_file, s->hdr.backing_file) ||
         str_differs(r.backing_fmt, s->hdr.backing_format))) {
        return error_set(EINVAL, "Cannot amend the backing file\nYou can "
                         "use 'qimg rebase' instead.");
    }
    bool lazy = (s->hdr.compatible_features & QCOW2_COMPAT_LAZY_REFCOUNTS) != 0;
    if (r.lazy_refcounts != lazy) {
        if (r.lazy_refcounts && r.version < 3) {
            return error_set(EINVAL, "Lazy refcounts only supported with "
                             "compatibility level 1.1 and above (use "
                             "compat=1.1 or greater)");
        }
        ret = set_lazy_refcounts(node, s, r.lazy_refcounts);
        if (ret < 0) {
            return ret;
        }
    }
    if (r.size != 0 && s->hdr.version < 3 && s->snapshots.nb > 0) {
        /* [QEMU] v2 snapshots do not record their own disk size. */
        return error_set(ENOTSUP,
                         "Can't resize a v2 image which has snapshots");
    }
    if (r.size != 0) {
        /* [QEMU] the L1 table needed for the size must be possible. */
        uint64_t l1 = qcow2_size_to_l1(r.size, s->cluster_bits,
                                       s->subclusters_per_cluster > 1);
        if ((r.size & 511) == 0 &&
            (l1 > QCOW2_MAX_L1_SIZE / 8 || r.size > INT64_MAX)) {
            return error_set(EFBIG, "Failed to grow the L1 table: File too "
                             "large");
        }
        ret = qcow2_truncate(node, r.size, "off");
        if (ret < 0) {
            return ret;
        }
    }
    if (r.version < s->hdr.version) {
        ret = downgrade(node, s, &p);
    }
    return ret;
}
