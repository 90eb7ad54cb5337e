/*
 * qcow2: refcounts for the write path [spec: Host cluster management].
 *
 * The refcount table is held in memory (at most QCOW2_MAX_REFTABLE_SIZE,
 * checked at open); refcount blocks go through a small write-back cache.
 * Allocation is first-fit from a hint below which no cluster is free.
 *
 * Invariants that keep every flushed state consistent:
 * - a refcount only grows before the L2/L1 entry naming the cluster is
 *   written (blocks are written back before dirty L2 slices), so a crash
 *   can leak clusters but never leave a referenced one at refcount 0;
 * - a refcount only drops after the tables that stopped naming the
 *   cluster are on disk: frees are queued (qcow2_free_later) and applied
 *   by the flush after the L2 and L1 write-back;
 * - a new refcount block describes itself and is on disk before the
 *   table entry pointing at it; a grown refcount table is complete on
 *   disk before the header names it, and the old one is freed after.
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

/* [spec] reftable entries: bits 0-8 reserved. */
#define REFT_RESERVED_MASK 0x1ffull
/* Header field offsets [spec: Header]. */
#define HDR_REFTABLE_OFFSET 48 /* u64, then u32 refcount_table_clusters */

static uint64_t group_of(const struct qcow2_state *s, uint64_t cluster)
{
    return cluster >> s->rb_bits;
}

static uint64_t index_in_block(const struct qcow2_state *s, uint64_t cluster)
{
    return cluster & (((uint64_t)1 << s->rb_bits) - 1);
}

int qcow2_refcount_init(struct qimg_node *node, struct qcow2_state *s)
{
    s->rb_bits = s->cluster_bits + 3 - s->refcount_order;
    s->refcount_max = s->refcount_order == 6
                          ? UINT64_MAX
                          : ((uint64_t)1 << (1u << s->refcount_order)) - 1;
    free(s->refcount_table);
    s->refcount_table = NULL;
    uint64_t n = s->refcount_table_entries;
    /* At most QCOW2_MAX_REFTABLE_SIZE / 8 entries (header decode). */
    if (n == 0 || n > QCOW2_MAX_REFTABLE_SIZE / 8) {
        return qcow2_signal_corruption(node, s,
                                       "refcount table of %" PRIu64
                                       " entries is unusable",
                                       n);
    }
    uint64_t *t = malloc((size_t)n * 8);
    if (!t) {
        return error_set(ENOMEM, "Out of memory");
    }
    int ret = io_pread(node->file, t, (size_t)n * 8, s->refcount_table_offset);
    if (ret < 0) {
        free(t);
        return error_set_errno(-ret, "%s: could not read the refcount table",
                               node->filename);
    }
    for (uint64_t i = 0; i < n; i++) {
        t[i] = load_be64((const uint8_t *)t + i * 8);
    }
    s->refcount_table = t;
    s->nb_discards = 0;
    s->free_cluster_index = 0;
    s->free_byte_offset = 0;
    return 0;
}

void qcow2_refcount_free(struct qcow2_state *s)
{
    for (size_t i = 0; i < QCOW2_RB_CACHE_SLOTS; i++) {
        free(s->rb_cache[i].data);
        memset(&s->rb_cache[i], 0, sizeof(s->rb_cache[i]));
    }
    free(s->refcount_table);
    s->refcount_table = NULL;
    free(s->pending_free);
    s->pending_free = NULL;
    s->nb_pending_free = s->cap_pending_free = 0;
    /* Held discards are advisory: dropping them only leaves the bytes. */
    free(s->discards);
    s->discards = NULL;
    s->nb_discards = s->cap_discards = 0;
}

static int rb_write_slot(struct qimg_node *node, struct qcow2_state *s,
                         struct qcow2_rb_slot *sl)
{
    int ret = qcow2_overlap_check(node, s, sl->host_off, s->cluster_size,
                                  QCOW2_OL_REFCOUNT_BLOCK);
    if (ret < 0) {
        return ret;
    }
    ret = io_pwrite(node->file, sl->data, (size_t)s->cluster_size,
                    sl->host_off);
    if (ret < 0) {
        return error_set_errno(-ret,
                               "%s: could not write a refcount block at "
                               "%#" PRIx64,
                               node->filename, sl->host_off);
    }
    sl->dirty = false;
    return 0;
}

int qcow2_refcount_writeback(struct qimg_node *node, struct qcow2_state *s)
{
    qcow2_discard_flush(node, s);
    for (size_t i = 0; i < QCOW2_RB_CACHE_SLOTS; i++) {
        struct qcow2_rb_slot *sl = &s->rb_cache[i];
        if (sl->dirty) {
            int ret = rb_write_slot(node, s, sl);
            if (ret < 0) {
                return ret;
            }
        }
    }
    return 0;
}

/* The cached block at rb_off (cluster-aligned, non-zero). */
static int rb_get(struct qimg_node *node, struct qcow2_state *s,
                  uint64_t rb_off, bool write, uint8_t **out)
{
    struct qcow2_rb_slot *victim = &s->rb_cache[0];
    for (size_t i = 0; i < QCOW2_RB_CACHE_SLOTS; i++) {
        struct qcow2_rb_slot *sl = &s->rb_cache[i];
        if (sl->data && sl->host_off == rb_off) {
            sl->last_use = ++s->rb_clock;
            sl->dirty |= write;
            *out = sl->data;
            return 0;
        }
        if (sl->last_use < victim->last_use) {
            victim = sl;
        }
    }
    if (victim->dirty) {
        int ret = rb_write_slot(node, s, victim);
        if (ret < 0) {
            return ret;
        }
    }
    if (!victim->data) {
        victim->data = malloc((size_t)s->cluster_size);
        if (!victim->data) {
            return error_set(ENOMEM, "Out of memory");
        }
    }
    victim->host_off = 0;
    victim->last_use = 0;
    int ret = qcow2_read_in_range(rb_off, s->cluster_size)
                  ? io_pread(node->file, victim->data,
                             (size_t)s->cluster_size, rb_off)
                  : -EIO;
    if (ret < 0) {
        return error_set_errno(-ret,
                               "%s: could not read the refcount block at "
                               "%#" PRIx64,
                               node->filename, rb_off);
    }
    victim->host_off = rb_off;
    victim->last_use = ++s->rb_clock;
    victim->dirty = write;
    *out = victim->data;
    return 0;
}

/* The block offset of group g: 0 when it has none, -EIO if damaged. */
static int64_t block_of(struct qimg_node *node, struct qcow2_state *s,
                        uint64_t g)
{
    if (g >= s->refcount_table_entries) {
        return 0;
    }
    uint64_t e = s->refcount_table[g];
    uint64_t off = e & QCOW2_REFT_OFFSET_MASK;
    if ((e & REFT_RESERVED_MASK) || off > QCOW2_MAX_HOST_OFFSET ||
        !is_aligned_u64(off, s->cluster_size)) {
        return qcow2_signal_corruption(node, s,
                                       "Refblock offset %#" PRIx64
                                       " unaligned (reftable index: "
                                       "%#" PRIx64 ")",
                                       off, g);
    }
    if (off == 0 && e != 0) {
        return qcow2_signal_corruption(node, s,
                                       "Refblock at offset 0 (reftable "
                                       "index: %#" PRIx64 ")",
                                       g);
    }
    return (int64_t)off;
}

int qcow2_refcount_get(struct qimg_node *node, struct qcow2_state *s,
                       uint64_t cluster, uint64_t *out)
{
    int64_t rb = block_of(node, s, group_of(s, cluster));
    if (rb <= 0) {
        *out = 0;
        return (int)rb;
    }
    uint8_t *b;
    int ret = rb_get(node, s, (uint64_t)rb, false, &b);
    if (ret < 0) {
        return ret;
    }
    *out = qcow2_refcount_load(b, index_in_block(s, cluster),
                               s->refcount_order);
    return 0;
}

/* Set a refcount in an existing block. */
static int refcount_set(struct qimg_node *node, struct qcow2_state *s,
                        uint64_t cluster, uint64_t value)
{
    int64_t rb = block_of(node, s, group_of(s, cluster));
    if (rb < 0) {
        return (int)rb;
    }
    if (rb == 0) {
        /* Callers create the block first; reaching here is a bug. */
        return error_set(EIO, "%s: no refcount block for cluster %" PRIu64,
                         node->filename, cluster);
    }
    uint8_t *b;
    int ret = rb_get(node, s, (uint64_t)rb, true, &b);
    if (ret < 0) {
        return ret;
    }
    qcow2_refcount_store(b, index_in_block(s, cluster), s->refcount_order,
                         value);
    return 0;
}

static int write_reftable_entry(struct qimg_node *node, struct qcow2_state *s,
                                uint64_t g)
{
    uint8_t be[8];
    store_be64(be, s->refcount_table[g]);
    int ret = qcow2_overlap_check(node, s, s->refcount_table_offset + g * 8, 8,
                                  QCOW2_OL_REFCOUNT_TABLE);
    if (ret < 0) {
        return ret;
    }
    ret = io_pwrite(node->file, be, 8, s->refcount_table_offset + g * 8);
    if (ret < 0) {
        return error_set_errno(-ret,
                               "%s: could not update the refcount table",
                               node->filename);
    }
    return 0;
}

/*
 * Give group g (inside the table, without a block) a block at cluster c,
 * which is free and in g, so the block counts itself.
 */
static int create_block_at(struct qimg_node *node, struct qcow2_state *s,
                           uint64_t g, uint64_t c)
{
    uint64_t off = c << s->cluster_bits;
    int ret = qcow2_overlap_check(node, s, off, s->cluster_size, 0);
    if (ret < 0) {
        return ret;
    }
    uint8_t *b = calloc(1, (size_t)s->cluster_size);
    if (!b) {
        return error_set(ENOMEM, "Out of memory");
    }
    qcow2_refcount_store(b, index_in_block(s, c), s->refcount_order, 1);
    ret = io_pwrite(node->file, b, (size_t)s->cluster_size, off);
    free(b);
    if (ret < 0) {
        return error_set_errno(-ret,
                               "%s: could not write a refcount block",
                               node->filename);
    }
    /* The block is durable before the table names it. */
    ret = node_sync(node, node->file);
    if (ret < 0) {
        return error_set_errno(-ret, "%s: flush failed", node->filename);
    }
    s->refcount_table[g] = off;
    return write_reftable_entry(node, s, g);
}

/* The first cluster past the end of the file. */
static int file_end_cluster(struct qimg_node *node, struct qcow2_state *s,
                            uint64_t *out)
{
    int64_t size = io_get_size(node->file);
    if (size < 0) {
        return error_set_errno((int)-size, "%s: could not get the file size",
                               node->filename);
    }
    *out = div_round_up_u64((uint64_t)size, s->cluster_size);
    return 0;
}

/*
 * Grow the refcount table to at least min_entries: the new blocks it
 * needs and the new table go in free clusters at the end of the file,
 * every one of them counted by a block in that same area or an existing
 * one.  Complete on disk before the header switches to it.
 */
static int grow_reftable(struct qimg_node *node, struct qcow2_state *s,
                         uint64_t min_entries)
{
    const uint64_t cs = s->cluster_size;
    const uint64_t per_cluster = cs / 8;
    const uint64_t old_entries = s->refcount_table_entries;
    const uint64_t max_clusters = QCOW2_MAX_REFTABLE_SIZE / cs;
    uint64_t want = max_u64(min_entries, old_entries + old_entries / 2);
    qcow2_discard_flush(node, s);
    uint64_t t_clusters = div_round_up_u64(want, per_cluster);
    if (t_clusters > max_clusters) {
        t_clusters = max_clusters;
    }
    if (t_clusters * per_cluster < min_entries || t_clusters == 0) {
        return error_set(EFBIG, "%s: the refcount table is full",
                         node->filename);
    }

    uint64_t start = 0;
    int ret = file_end_cluster(node, s, &start);
    if (ret < 0) {
        return ret;
    }
    start = max_u64(start, s->free_cluster_index);
    uint64_t nb_blocks = 0;
    uint64_t end;
    /*
     * Find the fixed point: the area holds nb_blocks new blocks and the
     * table; the blocks cover every group of the area that has none.
     */
    for (;;) {
        end = start + nb_blocks + t_clusters;
        uint64_t last_g = group_of(s, end - 1);
        if (last_g + 1 > t_clusters * per_cluster) {
            t_clusters = div_round_up_u64(last_g + 1, per_cluster);
            if (t_clusters > max_clusters) {
                return error_set(EFBIG, "%s: the refcount table is full",
                                 node->filename);
            }
            continue;
        }
        /* Every cluster of the area must be free. */
        uint64_t busy = UINT64_MAX;
        for (uint64_t c = start; c < end; c++) {
            uint64_t rc;
            ret = qcow2_refcount_get(node, s, c, &rc);
            if (ret < 0) {
                return ret;
            }
            if (rc != 0) {
                busy = c;
            }
        }
        if (busy != UINT64_MAX) {
            start = busy + 1;
            continue;
        }
        uint64_t missing = 0;
        for (uint64_t g = group_of(s, start); g <= last_g; g++) {
            int64_t rb = block_of(node, s, g);
            if (rb < 0) {
                return (int)rb;
            }
            missing += rb == 0;
        }
        if (missing == nb_blocks) {
            break;
        }
        nb_blocks = missing;
    }
    if ((end << s->cluster_bits) >> s->cluster_bits != end ||
        (end << s->cluster_bits) > QCOW2_MAX_HOST_OFFSET) {
        return error_set(EFBIG, "%s: the image file is too large",
                         node->filename);
    }

    uint64_t new_entries = t_clusters * per_cluster;
    uint64_t *nt = calloc((size_t)new_entries, sizeof(uint64_t));
    uint8_t *buf = calloc(1, (size_t)max_u64(cs, t_clusters * cs));
    if (!nt || !buf) {
        free(nt);
        free(buf);
        return error_set(ENOMEM, "Out of memory");
    }
    memcpy(nt, s->refcount_table, (size_t)old_entries * 8);
    ret = qcow2_overlap_check(node, s, start << s->cluster_bits,
                              (end - start) * cs, 0);
    /* New blocks, in group order, each counting the area in its group. */
    uint64_t next_block = start;
    for (uint64_t g = group_of(s, start);
         ret == 0 && g <= group_of(s, end - 1); g++) {
        if (g < old_entries && nt[g] != 0) {
            continue;
        }
        uint64_t boff = next_block++ << s->cluster_bits;
        nt[g] = boff;
        memset(buf, 0, (size_t)cs);
        for (uint64_t c = start; c < end; c++) {
            if (group_of(s, c) == g) {
                qcow2_refcount_store(buf, index_in_block(s, c),
                                     s->refcount_order, 1);
            }
        }
        ret = io_pwrite(node->file, buf, (size_t)cs, boff);
        if (ret < 0) {
            ret = error_set_errno(-ret,
                                  "%s: could not write a refcount block",
                                  node->filename);
        }
    }
    /* Area clusters in groups that already had a block. */
    for (uint64_t c = start; ret == 0 && c < end; c++) {
        uint64_t g = group_of(s, c);
        if (g < old_entries && s->refcount_table[g] != 0) {
            ret = refcount_set(node, s, c, 1);
        }
    }
    uint64_t t_off = (start + nb_blocks) << s->cluster_bits;
    if (ret == 0) {
        memset(buf, 0, (size_t)(t_clusters * cs));
        for (uint64_t i = 0; i < new_entries; i++) {
            store_be64(buf + i * 8, nt[i]);
        }
        ret = io_pwrite(node->file, buf, (size_t)(t_clusters * cs), t_off);
        if (ret < 0) {
            ret = error_set_errno(-ret,
                                  "%s: could not write the refcount table",
                                  node->filename);
        }
    }
    free(buf);
    if (ret == 0) {
        ret = qcow2_refcount_writeback(node, s);
    }
    if (ret == 0) {
        ret = node_sync(node, node->file);
    }
    if (ret == 0) {
        uint8_t h[12];
        store_be64(h, t_off);
        store_be32(h + 8, (uint32_t)t_clusters);
        ret = qcow2_header_update(node, HDR_REFTABLE_OFFSET, h, sizeof(h));
    }
    if (ret < 0) {
        free(nt);
        return ret;
    }
    uint64_t old_off = s->refcount_table_offset;
    uint64_t old_clusters = div_round_up_u64(old_entries * 8, cs);
    free(s->refcount_table);
    s->refcount_table = nt;
    s->refcount_table_entries = new_entries;
    s->refcount_table_offset = t_off;
    s->hdr.refcount_table_offset = t_off;
    s->hdr.refcount_table_clusters = (uint32_t)t_clusters;
    /* The header no longer names the old table: free it now. */
    return qcow2_free_later(node, s, old_off, old_clusters * cs);
}

/*
 * Ensure cluster c's group has a block: 0 when it has, 1 when a block
 * was created at c or the table grew (the caller looks again), -errno.
 */
static int ensure_block(struct qimg_node *node, struct qcow2_state *s,
                        uint64_t c)
{
    uint64_t g = group_of(s, c);
    if (g >= s->refcount_table_entries) {
        int ret = grow_reftable(node, s, g + 1);
        return ret < 0 ? ret : 1;
    }
    int64_t rb = block_of(node, s, g);
    if (rb < 0) {
        return (int)rb;
    }
    if (rb > 0) {
        return 0;
    }
    int ret = create_block_at(node, s, g, c);
    return ret < 0 ? ret : 1;
}

int qcow2_alloc_clusters(struct qimg_node *node, struct qcow2_state *s,
                         uint64_t n, unsigned flags, uint64_t *off,
                         uint64_t *got)
{
    const uint64_t max_cluster = QCOW2_MAX_HOST_OFFSET >> s->cluster_bits;
    uint64_t c = s->free_cluster_index;
    uint64_t first_free = UINT64_MAX;
    int ret;
    /* The held discard must not punch what this hands out. */
    qcow2_discard_flush(node, s);
    for (;;) {
        if (c + n > max_cluster) {
            return error_set(ENOSPC, "%s: no room for more clusters",
                             node->filename);
        }
        uint64_t rc;
        ret = qcow2_refcount_get(node, s, c, &rc);
        if (ret < 0) {
            return ret;
        }
        if (rc != 0) {
            c++;
            continue;
        }
        ret = ensure_block(node, s, c);
        if (ret < 0) {
            return ret;
        }
        if (ret > 0) {
            /* c may hold the new block now; look at it again. */
            continue;
        }
        first_free = min_u64(first_free, c);
        /* Extend the run through free clusters whose block exists. */
        uint64_t k = 1;
        bool retry = false;
        while (k < n) {
            uint64_t d = c + k;
            if (group_of(s, d) != group_of(s, c)) {
                ret = ensure_block(node, s, d);
                if (ret < 0) {
                    return ret;
                }
                if (ret > 0) {
                    retry = true;
                    break;
                }
            }
            ret = qcow2_refcount_get(node, s, d, &rc);
            if (ret < 0) {
                return ret;
            }
            if (rc != 0) {
                break;
            }
            k++;
        }
        if (retry) {
            /*
             * A new block or table went into free clusters, perhaps into
             * this very run: search again from c.
             */
            continue;
        }
        if (k < n && !(flags & QCOW2_ALLOC_UPTO)) {
            c += k;
            continue;
        }
        uint64_t start = c << s->cluster_bits;
        ret = qcow2_overlap_check(node, s, start, k << s->cluster_bits, 0);
        if (ret < 0) {
            return ret;
        }
        for (uint64_t i = 0; i < k; i++) {
            ret = refcount_set(node, s, c + i, 1);
            if (ret < 0) {
                return ret;
            }
        }
        /* Free clusters skipped for being too few stay below the hint. */
        s->free_cluster_index = first_free < c ? first_free : c + k;
        *off = start;
        if (got) {
            *got = k;
        }
        return 0;
    }
}

int qcow2_alloc_bytes(struct qimg_node *node, struct qcow2_state *s,
                      uint64_t bytes, uint64_t *off)
{
    const uint64_t cs = s->cluster_size;
    uint64_t cur = s->free_byte_offset;
    int ret;
    qcow2_discard_flush(node, s);
    if (cur != 0 && (cur & (cs - 1)) != 0) {
        uint64_t cl = cur >> s->cluster_bits;
        uint64_t room = cs - (cur & (cs - 1));
        uint64_t rc;
        ret = qcow2_refcount_get(node, s, cl, &rc);
        if (ret < 0) {
            return ret;
        }
        /* The cluster must still be ours and able to count one more. */
        if (rc >= 1 && rc < s->refcount_max) {
            if (bytes <= room) {
                ret = refcount_set(node, s, cl, rc + 1);
                if (ret == 0) {
                    *off = cur;
                    s->free_byte_offset = cur + bytes;
                }
                return ret;
            }
            /* Spill into the next cluster if it is free. */
            uint64_t next_rc = 1;
            ret = ensure_block(node, s, cl + 1);
            if (ret == 0) {
                ret = qcow2_refcount_get(node, s, cl + 1, &next_rc);
            }
            if (ret < 0) {
                return ret;
            }
            if (ret == 0 && next_rc == 0 && bytes - room <= cs) {
                ret = qcow2_overlap_check(node, s, (cl + 1) << s->cluster_bits,
                                          cs, 0);
                if (ret == 0) {
                    ret = refcount_set(node, s, cl, rc + 1);
                }
                if (ret == 0) {
                    ret = refcount_set(node, s, cl + 1, 1);
                }
                if (ret < 0) {
                    return ret;
                }
                if (s->free_cluster_index == cl + 1) {
                    s->free_cluster_index = cl + 2;
                }
                *off = cur;
                s->free_byte_offset = cur + bytes;
                return 0;
            }
        }
    }
    uint64_t n = div_round_up_u64(bytes, cs);
    uint64_t start;
    ret = qcow2_alloc_clusters(node, s, n, 0, &start, NULL);
    if (ret < 0) {
        return ret;
    }
    *off = start;
    s->free_byte_offset = start + bytes;
    return 0;
}

int qcow2_free_later(struct qimg_node *node, struct qcow2_state *s,
                     uint64_t off, uint64_t bytes)
{
    (void)node;
    uint64_t start = align_down_u64(off, s->cluster_size);
    uint64_t end = off + bytes;
    if (bytes == 0) {
        return 0;
    }
    end = div_round_up_u64(end, s->cluster_size) * s->cluster_size;
    if (s->nb_pending_free > 0) {
        struct qcow2_free_range *last =
            &s->pending_free[s->nb_pending_free - 1];
        if (last->off + last->bytes == start) {
            last->bytes += end - start;
            return 0;
        }
    }
    struct qcow2_free_range *p =
        grow_array(s->pending_free, &s->cap_pending_free,
                   s->nb_pending_free + 1, sizeof(*p));
    if (!p) {
        return error_set(ENOMEM, "Out of memory");
    }
    s->pending_free = p;
    s->pending_free[s->nb_pending_free].off = start;
    s->pending_free[s->nb_pending_free].bytes = end - start;
    s->nb_pending_free++;
    return 0;
}

int qcow2_free_compressed_later(struct qimg_node *node, struct qcow2_state *s,
                                uint64_t l2_entry)
{
    uint64_t coffset = l2_entry & s->cluster_offset_mask;
    uint64_t nb = ((l2_entry >> s->csize_shift) & s->csize_mask) + 1;
    uint64_t first = coffset & ~511ull;
    if (coffset > QCOW2_MAX_HOST_OFFSET) {
        return qcow2_signal_corruption(node, s,
                                       "compressed cluster offset %#" PRIx64
                                       " out of range",
                                       coffset);
    }
    /* Each cluster the sectors touch holds one reference. */
    uint64_t c0 = first >> s->cluster_bits;
    uint64_t c1 = (first + nb * 512 - 1) >> s->cluster_bits;
    for (uint64_t c = c0; c <= c1; c++) {
        int ret = qcow2_free_later(node, s, c << s->cluster_bits,
                                   s->cluster_size);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

static int free_range_cmp(const void *a, const void *b)
{
    const struct qcow2_free_range *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off;
}

/*
 * Freed clusters go back to the host in merged ranges: each cluster whose
 * count drops to 0 is held in s->discards, and a flush sorts them and
 * issues one discard per run of adjacent clusters (QEMU queues and merges
 * its discards the same way; one call per cluster cost snapshot -a
 * hundreds of fallocate calls where qemu-img makes 2).  Invariant: the
 * held ranges name only clusters with refcount 0 that nothing has reused,
 * so they are issued before anything allocates (qcow2_alloc_clusters,
 * qcow2_alloc_bytes, grow_reftable) and at every refcount writeback.
 */
void qcow2_discard_flush(struct qimg_node *node, struct qcow2_state *s)
{
    size_t n = s->nb_discards;
    struct qcow2_free_range *d = s->discards;
    s->nb_discards = 0;
    if (n == 0 || !node->file->ops->discard) {
        return;
    }
    if (n > 1) {
        qsort(d, n, sizeof(*d), free_range_cmp);
    }
    for (size_t i = 0; i < n;) {
        uint64_t off = d[i].off;
        uint64_t end = off + d[i].bytes;
        for (i++; i < n && d[i].off <= end; i++) {
            end = max_u64(end, d[i].off + d[i].bytes);
        }
        /* Advisory: a failed discard leaves the bytes, not a wrong count. */
        (void)io_discard(node->file, off, end - off);
    }
}

/* Cluster c's refcount has just dropped to 0. */
static void cluster_freed(struct qimg_node *node, struct qcow2_state *s,
                          uint64_t c)
{
    uint64_t off = c << s->cluster_bits;
    s->free_cluster_index = min_u64(s->free_cluster_index, c);
    qcow2_l2_invalidate(s, off, s->cluster_size);
    if (s->free_byte_offset >> s->cluster_bits == c) {
        s->free_byte_offset = 0;
    }
    if (!node->file->ops->discard) {
        return;
    }
    /* Give the space back to the host (advisory), at the next flush. */
    if (s->nb_discards > 0) {
        struct qcow2_free_range *last = &s->discards[s->nb_discards - 1];
        if (last->off + last->bytes == off) {
            last->bytes += s->cluster_size;
            return;
        }
    }
    if (s->nb_discards == s->cap_discards) {
        if (s->cap_discards >= QCOW2_MAX_PENDING_FREES) {
            qcow2_discard_flush(node, s);
        } else {
            size_t cap = s->cap_discards ? s->cap_discards * 2 : 64;
            struct qcow2_free_range *p =
                realloc(s->discards, cap * sizeof(*p));
            if (!p) {
                /* Out of memory: discard this one cluster at once. */
                (void)io_discard(node->file, off, s->cluster_size);
                return;
            }
            s->discards = p;
            s->cap_discards = cap;
        }
    }
    s->discards[s->nb_discards].off = off;
    s->discards[s->nb_discards].bytes = s->cluster_size;
    s->nb_discards++;
}

/*
 * Called once the tables that named the pending ranges are on disk (the
 * flush order in qcow2.h).  Nothing here allocates a cluster: each
 * decrement is of a count above 0, so its refcount block exists.  The
 * writeback at the end issues the held discards.
 */
int qcow2_refcount_apply_frees(struct qimg_node *node, struct qcow2_state *s)
{
    int ret = 0;
    for (size_t i = 0; ret == 0 && i < s->nb_pending_free; i++) {
        const struct qcow2_free_range *r = &s->pending_free[i];
        uint64_t c0 = r->off >> s->cluster_bits;
        uint64_t n = r->bytes >> s->cluster_bits;
        for (uint64_t c = c0; ret == 0 && c < c0 + n; c++) {
            uint64_t rc;
            ret = qcow2_refcount_get(node, s, c, &rc);
            if (ret < 0 || rc == 0) {
                /* Already free: a damaged count; leave it for check. */
                continue;
            }
            ret = refcount_set(node, s, c, rc - 1);
            if (ret == 0 && rc == 1) {
                cluster_freed(node, s, c);
            }
        }
    }
    s->nb_pending_free = 0;
    if (ret == 0) {
        ret = qcow2_refcount_writeback(node, s);
    }
    return ret;
}

int qcow2_refcount_end(struct qimg_node *node, struct qcow2_state *s,
                       uint64_t *end)
{
    *end = 0;
    for (uint64_t g = s->refcount_table_entries; g-- > 0;) {
        int64_t rb = block_of(node, s, g);
        if (rb < 0) {
            return (int)rb;
        }
        if (rb == 0) {
            continue;
        }
        uint8_t *b;
        int ret = rb_get(node, s, (uint64_t)rb, false, &b);
        if (ret < 0) {
            return ret;
        }
        for (uint64_t i = (uint64_t)1 << s->rb_bits; i-- > 0;) {
            if (qcow2_refcount_load(b, i, s->refcount_order) != 0) {
                *end = (g << s->rb_bits) + i + 1;
                return 0;
            }
        }
    }
    return 0;
}

int qcow2_refcount_add_one(struct qimg_node *node, struct qcow2_state *s,
                           uint64_t cluster)
{
    uint64_t rc;
    int ret = qcow2_refcount_get(node, s, cluster, &rc);
    if (ret < 0) {
        return ret;
    }
    /*
     * [QEMU] a count that would pass refcount_max, or a referenced
     * cluster counted 0, fails the update with EINVAL.
     */
    if (rc == 0 || rc >= s->refcount_max) {
        return error_set(EINVAL,
                         "%s: cannot add a reference to cluster %" PRIu64
                         " (refcount %" PRIu64 ")",
                         node->filename, cluster, rc);
    }
    return refcount_set(node, s, cluster, rc + 1);
}

int qcow2_refcount_drop_one(struct qimg_node *node, struct qcow2_state *s,
                            uint64_t cluster)
{
    uint64_t rc;
    int ret = qcow2_refcount_get(node, s, cluster, &rc);
    if (ret < 0) {
        return ret;
    }
    if (rc == 0) {
        return error_set(EINVAL,
                         "%s: cannot drop a reference to free cluster "
                         "%" PRIu64,
                         node->filename, cluster);
    }
    ret = refcount_set(node, s, cluster, rc - 1);
    if (ret == 0 && rc == 1) {
        cluster_freed(node, s, cluster);
    }
    return ret;
}
