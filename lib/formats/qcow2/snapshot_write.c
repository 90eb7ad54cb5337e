/*
 * qcow2: creating, applying and deleting internal snapshots [spec:
 * Snapshots, Host cluster management], as qemu-img 7.2 does them.
 *
 * A snapshot is a copy of the active L1 table plus one more reference to
 * every cluster it reaches (its L2 tables and their data clusters; a
 * compressed descriptor references each host cluster its sectors touch,
 * once per descriptor).  Shared clusters lose their COPIED flag, so the
 * write path copies them before writing.
 *
 * Every operation works on the file directly, with the write path's
 * caches flushed and the L2 cache emptied first, and orders its writes
 * so that every flushed state is a consistent image (at worst one that
 * leaks clusters):
 *  - create: the snapshot's L1 copy (the active table as it is, COPIED
 *    flags included, as QEMU copies it), refcounts up with COPIED flags
 *    cleared, the new snapshot table, then the header naming it;
 *  - apply: refcounts of the snapshot's clusters up, the active L1
 *    overwritten, then the old active clusters' refcounts down;
 *  - delete: the table without the entry and the header first, then the
 *    refcounts down.
 * After each, COPIED flags of the active tables are set again where a
 * cluster's refcount is 1 (QEMU's qcow2_update_snapshot_refcount with
 * addend 0), so qemu-img check finds nothing.  Allocation order and
 * every table write follow QEMU's, so the files are byte-identical to
 * qemu-img's but for the dates (tests/compat/snapshot.sh checks it).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "driver.h"
#include "formats/qcow2/qcow2.h"
#include "util/checked.h"
#include "util/endian.h"

/* [spec: Header] bytes 60-71: nb_snapshots (u32), snapshots_offset. */
#define HDR_NB_SNAPSHOTS_OFFSET 60

static int sync_image(struct qimg_node *node)
{
    int ret = node_sync(node, node->file);
    if (ret < 0) {
        return error_set_errno(-ret, "%s: flush failed", node->filename);
    }
    return 0;
}

/*
 * Everything cached is on disk and the L2 cache is empty: from here the
 * tables are read and written in the file itself.
 */
static int prepare(struct qimg_node *node, struct qcow2_state *s)
{
    if (s->corrupt) {
        return error_set(EIO, "qcow2: image '%s' is marked corrupt",
                         node->filename);
    }
    int ret = qcow2_write_begin(node, s);
    if (ret == 0) {
        ret = qcow2_write_flush(node, s);
    }
    if (ret < 0) {
        return ret;
    }
    qcow2_l2_invalidate(s, 0, UINT64_MAX);
    return 0;
}

/* Refcount blocks to disk, then a sync: what follows may rely on them. */
static int commit_refcounts(struct qimg_node *node, struct qcow2_state *s)
{
    int ret = qcow2_refcount_writeback(node, s);
    return ret < 0 ? ret : sync_image(node);
}

static int read_cluster(struct qimg_node *node, struct qcow2_state *s,
                        uint64_t off, uint8_t *buf)
{
    int ret = qcow2_read_in_range(off, s->cluster_size)
                  ? io_pread(node->file, buf, (size_t)s->cluster_size, off)
                  : -EIO;
    if (ret < 0) {
        return error_set_errno(-ret, "%s: could not read the L2 table at "
                               "%#" PRIx64,
                               node->filename, off);
    }
    return 0;
}

static int write_l2(struct qimg_node *node, struct qcow2_state *s,
                    uint64_t off, const uint8_t *buf)
{
    /* The table may be the active one's or only a snapshot's. */
    int ret = qcow2_overlap_check(node, s, off, s->cluster_size,
                                  QCOW2_OL_ACTIVE_L2 | QCOW2_OL_INACTIVE_L2);
    if (ret < 0) {
        return ret;
    }
    ret = io_pwrite(node->file, buf, (size_t)s->cluster_size, off);
    if (ret < 0) {
        return error_set_errno(-ret, "%s: could not write the L2 table at "
                               "%#" PRIx64,
                               node->filename, off);
    }
    qcow2_l2_invalidate(s, off, s->cluster_size);
    return 0;
}

/* Write n host-order L1 entries at off (big-endian on disk). */
static int write_l1(struct qimg_node *node, struct qcow2_state *s,
                    uint64_t off, const uint64_t *l1, uint64_t n)
{
    if (n == 0) {
        return 0;
    }
    /* The table written may be the active one or a snapshot's. */
    int ret = qcow2_overlap_check(node, s, off, n * 8,
                                  QCOW2_OL_ACTIVE_L1 | QCOW2_OL_INACTIVE_L1);
    if (ret < 0) {
        return ret;
    }
    /* n <= QCOW2_MAX_L1_SIZE / 8 (validated), so this fits. */
    uint8_t *buf = malloc((size_t)n * 8);
    if (!buf) {
        return error_set(ENOMEM, "Out of memory");
    }
    for (uint64_t i = 0; i < n; i++) {
        store_be64(buf + i * 8, l1[i]);
    }
    ret = io_pwrite(node->file, buf, (size_t)n * 8, off);
    free(buf);
    if (ret < 0) {
        return error_set_errno(-ret, "%s: could not write an L1 table",
                               node->filename);
    }
    return 0;
}

/* ---- The reference walk ------------------------------------------------ */

/*
 * QEMU's qcow2_update_snapshot_refcount: one walk over the clusters an L1
 * table reaches, in a fixed order (for each L2 table: its data clusters
 * in entry order, then the table), adding addend to each refcount, and
 * setting COPIED exactly where a refcount is then 1 (never on compressed
 * or unallocated entries).  A walk stopped after `limit` updates can be
 * undone exactly.  Refcounts change at once: a caller dropping
 * references has made sure no table on disk still needs them.
 */
struct walk {
    int addend;     /* +1, -1, or 0 for the COPIED flags alone */
    uint64_t limit; /* stop after this many updates */
    uint64_t done;  /* updates made */
};

/* One update of each cluster of [off, off + bytes); 1 = stopped. */
static int ref_range(struct qimg_node *node, struct qcow2_state *s,
                     struct walk *w, uint64_t off, uint64_t bytes)
{
    if (w->addend == 0) {
        return 0;
    }
    uint64_t c0 = off >> s->cluster_bits;
    uint64_t c1 = (off + bytes - 1) >> s->cluster_bits;
    for (uint64_t c = c0; c <= c1; c++) {
        if (w->done == w->limit) {
            return 1;
        }
        int ret = w->addend > 0 ? qcow2_refcount_add_one(node, s, c)
                                : qcow2_refcount_drop_one(node, s, c);
        if (ret < 0) {
            return ret;
        }
        w->done++;
    }
    return 0;
}

/* The L2 table an L1 entry names (0 for none), checked. */
static int l2_of(struct qimg_node *node, struct qcow2_state *s, uint64_t e,
                 uint64_t i, uint64_t *out)
{
    uint64_t l2 = e & QCOW2_L1E_OFFSET_MASK;
    if (l2 != 0 && (!is_aligned_u64(l2, s->cluster_size) ||
                    l2 > QCOW2_MAX_HOST_OFFSET)) {
        return qcow2_signal_corruption(node, s,
                                       "L2 table offset %#" PRIx64
                                       " unaligned (L1 index: %#" PRIx64
                                       ")",
                                       l2, i);
    }
    *out = l2;
    return 0;
}

/*
 * The host range an L2 entry references (bytes 0: none), checked as the
 * read path checks it.
 */
static int entry_range(struct qimg_node *node, struct qcow2_state *s,
                       uint64_t entry, uint64_t *off, uint64_t *bytes)
{
    *bytes = 0;
    if (entry & QCOW2_OFLAG_COMPRESSED) {
        uint64_t coffset = entry & s->cluster_offset_mask;
        uint64_t nb = ((entry >> s->csize_shift) & s->csize_mask) + 1;
        if (coffset > QCOW2_MAX_HOST_OFFSET) {
            return qcow2_signal_corruption(node, s,
                                           "compressed cluster offset "
                                           "%#" PRIx64 " out of range",
                                           coffset);
        }
        /* [QEMU] the sectors from coffset's sector, nb of them. */
        *off = coffset;
        *bytes = (coffset & ~511ull) + nb * 512 - coffset;
        return 0;
    }
    uint64_t host = entry & QCOW2_L2E_OFFSET_MASK;
    if (host == 0) {
        return 0;
    }
    if (!is_aligned_u64(host, s->cluster_size)) {
        return qcow2_signal_corruption(node, s,
                                       "Cluster allocation offset %#" PRIx64
                                       " unaligned",
                                       host);
    }
    *off = host;
    *bytes = s->cluster_size;
    return 0;
}

/* The entry with COPIED as the refcount of what it names says. */
static int copied_entry(struct qimg_node *node, struct qcow2_state *s,
                        uint64_t entry, uint64_t off, uint64_t bytes,
                        uint64_t *out)
{
    uint64_t rc = 0;
    if (bytes > 0 && !(entry & QCOW2_OFLAG_COMPRESSED)) {
        int ret = qcow2_refcount_get(node, s, off >> s->cluster_bits, &rc);
        if (ret < 0) {
            return ret;
        }
    }
    *out = rc == 1 ? entry | QCOW2_OFLAG_COPIED : entry & ~QCOW2_OFLAG_COPIED;
    return 0;
}

/*
 * Walk the n entries of l1 (host order, COPIED flags updated in place);
 * L2 tables whose flags change are rewritten unless they were freed, and
 * l1 is written at l1_off when it changed (l1_off 0: not written).  buf:
 * one cluster of scratch.  Ends with the refcounts and tables synced.
 */
static int walk_l1(struct qimg_node *node, struct qcow2_state *s,
                   uint64_t *l1, uint64_t n, uint64_t l1_off, struct walk *w,
                   uint8_t *buf)
{
    bool l1_changed = false;
    int ret = 0;
    for (uint64_t i = 0; ret == 0 && i < n; i++) {
        uint64_t l2 = 0;
        ret = l2_of(node, s, l1[i], i, &l2);
        if (ret < 0 || l2 == 0) {
            continue;
        }
        ret = read_cluster(node, s, l2, buf);
        bool changed = false;
        for (uint64_t j = 0; ret == 0 && j < s->l2_entries; j++) {
            uint8_t *p = buf + j * s->l2_entry_size;
            uint64_t entry = load_be64(p), off = 0, bytes = 0, want;
            ret = entry_range(node, s, entry, &off, &bytes);
            if (ret == 0 && bytes > 0) {
                ret = ref_range(node, s, w, off, bytes);
            }
            if (ret == 0) {
                ret = copied_entry(node, s, entry, off, bytes, &want);
            }
            if (ret == 0 && want != entry) {
                store_be64(p, want);
                changed = true;
            }
        }
        uint64_t rc = 0;
        if (ret == 0) {
            ret = qcow2_refcount_get(node, s, l2 >> s->cluster_bits, &rc);
        }
        /* [QEMU] a table freed by this walk is dropped, not written. */
        if (ret == 0 && changed && !(w->addend < 0 && rc == 1)) {
            ret = qcow2_refcount_writeback(node, s);
            if (ret == 0) {
                ret = write_l2(node, s, l2, buf);
            }
        }
        if (ret == 0) {
            ret = ref_range(node, s, w, l2, s->cluster_size);
        }
        if (ret == 0) {
            ret = copied_entry(node, s, l1[i], l2, s->cluster_size, &rc);
        }
        if (ret == 0 && rc != l1[i]) {
            l1[i] = rc;
            l1_changed = true;
        }
    }
    if (ret != 0) {
        return ret;
    }
    ret = commit_refcounts(node, s);
    if (ret == 0 && l1_changed && l1_off != 0) {
        ret = write_l1(node, s, l1_off, l1, n);
        if (ret == 0) {
            ret = sync_image(node);
        }
    }
    return ret;
}

/* walk_l1 with addend for every reference (no limit). */
static int walk_all(struct qimg_node *node, struct qcow2_state *s,
                    uint64_t *l1, uint64_t n, uint64_t l1_off, int addend,
                    uint8_t *buf)
{
    struct walk w = {.addend = addend, .limit = UINT64_MAX};
    int ret = walk_l1(node, s, l1, n, l1_off, &w, buf);
    return ret < 0 ? ret : 0;
}

/*
 * One more reference to everything l1 reaches; on failure the references
 * already added are taken back (QEMU leaves them), so the image is as
 * before but for COPIED flags, which the caller's final walk sets.
 */
static int add_refs(struct qimg_node *node, struct qcow2_state *s,
                    uint64_t *l1, uint64_t n, uint64_t l1_off, uint8_t *buf)
{
    struct walk w = {.addend = 1, .limit = UINT64_MAX};
    int ret = walk_l1(node, s, l1, n, l1_off, &w, buf);
    if (ret >= 0) {
        return 0;
    }
    struct walk undo = {.addend = -1, .limit = w.done};
    if (w.done > 0) {
        (void)walk_l1(node, s, l1, n, 0, &undo, buf);
    }
    return ret;
}

/* The COPIED flags of the active tables, from the refcounts. */
static int fix_copied(struct qimg_node *node, struct qcow2_state *s,
                      uint8_t *buf)
{
    return walk_all(node, s, s->l1_table, s->l1_size, s->l1_table_offset, 0,
                    buf);
}

/* ---- The snapshot table ------------------------------------------------ */

/*
 * Write t as the image's snapshot table: in new clusters, synced, then
 * the header switched to it, then the old table freed.  s->snapshots is
 * left to the caller; its size (the old table's length) is read here.
 */
static int write_table(struct qimg_node *node, struct qcow2_state *s,
                       struct qcow2_snapshot_table *t)
{
    const uint64_t cs = s->cluster_size;
    int64_t size = qcow2_snapshots_encoded_size(t);
    if (size < 0) {
        return (int)size;
    }
    uint64_t off = 0;
    int ret = 0;
    if (t->nb > 0) {
        uint64_t clusters = div_round_up_u64((uint64_t)size, cs);
        /* At most 64 MiB plus a cluster (encoded_size's limit). */
        uint8_t *buf = malloc((size_t)(clusters * cs));
        if (!buf) {
            return error_set(ENOMEM, "Out of memory");
        }
        int64_t n = qcow2_snapshots_encode(t, buf, (size_t)(clusters * cs));
        ret = n < 0 ? (int)n : 0;
        if (ret == 0) {
            ret = qcow2_alloc_clusters(node, s, clusters, 0, &off, NULL);
        }
        if (ret == 0) {
            /* [QEMU] only the table's bytes: the file grows no more. */
            ret = io_pwrite(node->file, buf, (size_t)size, off);
            if (ret < 0) {
                ret = error_set_errno(-ret, "%s: could not write the "
                                      "snapshot table",
                                      node->filename);
            }
        }
        free(buf);
        if (ret == 0) {
            ret = commit_refcounts(node, s);
        }
        if (ret < 0) {
            return ret;
        }
    }
    uint8_t h[12];
    store_be32(h, t->nb);
    store_be64(h + 4, off);
    ret = qcow2_header_update(node, HDR_NB_SNAPSHOTS_OFFSET, h, sizeof(h));
    if (ret < 0) {
        return ret;
    }
    uint64_t old_off = s->hdr.snapshots_offset;
    uint64_t old_size = s->hdr.nb_snapshots > 0 ? s->snapshots.size : 0;
    s->hdr.nb_snapshots = t->nb;
    s->hdr.snapshots_offset = off;
    t->size = (uint64_t)size;
    if (old_size > 0 && old_off != 0) {
        ret = qcow2_free_later(node, s, old_off, old_size);
    }
    return ret < 0 ? ret : qcow2_write_flush(node, s);
}

int qcow2_snapshot_table_rewrite(struct qimg_node *node,
                                 struct qcow2_state *s)
{
    /*
     * No prepare(): the check that calls this may write an image marked
     * corrupt, as QEMU's does; it has already dropped the caches.
     */
    int ret = qcow2_write_begin(node, s);
    if (ret == 0) {
        ret = write_table(node, s, &s->snapshots);
    }
    if (ret < 0) {
        return ret;
    }
    /* The encoder wrote every entry complete. */
    for (uint32_t i = 0; i < s->snapshots.nb; i++) {
        struct qcow2_snapshot *sn = &s->snapshots.sn[i];
        sn->extra_data_size = (uint32_t)(QCOW2_SNAPSHOT_EXTRA_SIZE +
                                         sn->unknown_extra_len);
    }
    return 0;
}

/* [QEMU] find_snapshot_by_id_and_name: the first matching both. */
static int64_t find_by(const struct qcow2_snapshot_table *t, const char *id,
                       const char *name)
{
    for (uint32_t i = 0; i < t->nb; i++) {
        if ((!id || strcmp(t->sn[i].id, id) == 0) &&
            (!name || strcmp(t->sn[i].name, name) == 0)) {
            return i;
        }
    }
    return -1;
}

/* The snapshot sel selects: by id and name, or by id then by name. */
static int64_t find_snapshot(const struct qcow2_snapshot_table *t,
                             const struct qimg_snapshot_select *sel)
{
    if (!sel->id_or_name) {
        return find_by(t, sel->id, sel->name);
    }
    int64_t i = find_by(t, sel->id_or_name, NULL);
    return i >= 0 ? i : find_by(t, NULL, sel->id_or_name);
}

/* A snapshot's L1 table, validated as QEMU does, in n entries (>= its). */
static int read_snapshot_l1(struct qimg_node *node, struct qcow2_state *s,
                            const struct qcow2_snapshot *sn, uint64_t n,
                            uint64_t **out)
{
    int ret = qcow2_validate_table(sn->l1_table_offset, sn->l1_size,
                                   sizeof(uint64_t), QCOW2_MAX_L1_SIZE,
                                   s->cluster_size, "Snapshot L1 table");
    if (ret < 0) {
        return ret;
    }
    /* n is the active or the snapshot's size, both validated. */
    uint64_t *t = calloc((size_t)max_u64(n, 1), sizeof(uint64_t));
    if (!t) {
        return error_set(ENOMEM, "Out of memory");
    }
    size_t bytes = (size_t)sn->l1_size * 8;
    if (bytes > 0) {
        ret = qcow2_read_in_range(sn->l1_table_offset, bytes)
                  ? io_pread(node->file, t, bytes, sn->l1_table_offset)
                  : -EIO;
        if (ret < 0) {
            free(t);
            return error_set_errno(-ret, "Failed to read l1 table for "
                                   "snapshot");
        }
        /* In place: slot i is read before it is written. */
        for (uint32_t i = 0; i < sn->l1_size; i++) {
            t[i] = load_be64((const uint8_t *)t + (size_t)i * 8);
        }
    }
    *out = t;
    return 0;
}

/* ---- The operations ----------------------------------------------------- */

/* [QEMU] find_new_snapshot_id: the largest numeric id + 1. */
static char *new_snapshot_id(const struct qcow2_snapshot_table *t)
{
    unsigned long max = 0;
    for (uint32_t i = 0; i < t->nb; i++) {
        unsigned long id = strtoul(t->sn[i].id, NULL, 10);
        if (id > max) {
            max = id;
        }
    }
    char buf[32];
    snprintf(buf, sizeof(buf), "%lu", max + 1);
    return strdup(buf);
}

int qcow2_snapshot_create(struct qimg_node *node, const char *name,
                          uint32_t date_sec, uint32_t date_nsec)
{
    struct qcow2_state *s = node->opaque;
    const uint64_t cs = s->cluster_size;
    /* [QEMU] no internal snapshots with an external data file. */
    if (s->has_data_file) {
        return error_set(ENOTSUP, "Operation not supported");
    }
    if (s->snapshots.nb >= QCOW2_MAX_SNAPSHOTS) {
        return error_set(EFBIG, "Too many snapshots");
    }
    int ret = prepare(node, s);
    if (ret < 0) {
        return ret;
    }

    /* The new table: the old entries (shared) and the new one. */
    uint32_t nb = s->snapshots.nb;
    struct qcow2_snapshot *arr = calloc(nb + 1, sizeof(*arr));
    uint8_t *buf = malloc((size_t)cs);
    char *id = new_snapshot_id(&s->snapshots);
    char *nm = strdup(name);
    if (!arr || !buf || !id || !nm) {
        ret = error_set(ENOMEM, "Out of memory");
        goto out;
    }
    if (nb > 0) {
        memcpy(arr, s->snapshots.sn, nb * sizeof(*arr));
    }
    struct qcow2_snapshot *sn = &arr[nb];
    *sn = (struct qcow2_snapshot){
        .l1_size = s->l1_size,
        .id = id,
        .name = nm,
        .date_sec = date_sec,
        .date_nsec = date_nsec,
        /* [QEMU] qemu-img's snapshots: no VM state, clock or icount. */
        .extra_data_size = QCOW2_SNAPSHOT_EXTRA_SIZE,
        .disk_size = node->size,
        .icount = 0,
    };
    struct qcow2_snapshot_table t = {.sn = arr, .nb = nb + 1};
    /* Refuse a table that cannot be written before changing anything. */
    int64_t size = qcow2_snapshots_encoded_size(&t);
    if (size < 0) {
        ret = (int)size;
        goto out;
    }

    /*
     * [QEMU] the snapshot's L1 is the active one as it was, COPIED
     * flags included (they mean nothing in an inactive table, and
     * applying it rebuilds them), written before the references are
     * counted; nothing names it until the table does.
     */
    if (s->l1_size > 0) {
        uint64_t bytes = (uint64_t)s->l1_size * 8;
        ret = qcow2_alloc_clusters(node, s, div_round_up_u64(bytes, cs), 0,
                                   &sn->l1_table_offset, NULL);
        if (ret == 0) {
            ret = write_l1(node, s, sn->l1_table_offset, s->l1_table,
                           s->l1_size);
        }
        if (ret == 0) {
            ret = commit_refcounts(node, s);
        }
    }
    if (ret == 0) {
        ret = add_refs(node, s, s->l1_table, s->l1_size, s->l1_table_offset,
                       buf);
        if (ret < 0) {
            /* Taken back: the copy goes too, the flags come back. */
            if (s->l1_size > 0) {
                (void)qcow2_free_later(node, s, sn->l1_table_offset,
                                       (uint64_t)s->l1_size * 8);
                (void)qcow2_write_flush(node, s);
            }
            (void)fix_copied(node, s, buf);
        }
    }
    if (ret == 0) {
        ret = write_table(node, s, &t);
    }
    if (ret == 0) {
        /* The entries moved to arr; the new one is owned there now. */
        free(s->snapshots.sn);
        s->snapshots = t;
        arr = NULL;
        id = nm = NULL;
    }
out:
    free(arr);
    free(buf);
    free(id);
    free(nm);
    return ret;
}

int qcow2_snapshot_apply(struct qimg_node *node,
                         const struct qimg_snapshot_select *sel)
{
    struct qcow2_state *s = node->opaque;
    /*
     * [QEMU] reverting the guest data would leave every bitmap wrong, so
     * any bitmap, enabled or not, refuses it, before the lookup.
     */
    if (s->bitmaps.nb > 0) {
        return error_set(EBUSY, "Device has active dirty bitmaps");
    }
    int64_t idx = find_snapshot(&s->snapshots, sel);
    if (idx < 0) {
        return -ENOENT;
    }
    if (s->has_data_file) {
        return error_set(ENOTSUP, "Block driver does not support snapshots");
    }
    /* A copy: the table does not change, but keep no pointer into it. */
    struct qcow2_snapshot sn = s->snapshots.sn[idx];
    int ret = qcow2_validate_table(sn.l1_table_offset, sn.l1_size,
                                   sizeof(uint64_t), QCOW2_MAX_L1_SIZE,
                                   s->cluster_size, "Snapshot L1 table");
    if (ret == 0) {
        ret = prepare(node, s);
    }
    /* [QEMU] the image takes the snapshot's guest size first. */
    if (ret == 0 && sn.disk_size != node->size) {
        ret = qcow2_truncate(node, sn.disk_size, "off");
        if (ret == 0) {
            ret = prepare(node, s);
        }
    }
    if (ret == 0 && sn.l1_size > s->l1_size) {
        ret = qcow2_grow_l1(node, s, sn.l1_size);
        if (ret == 0) {
            ret = prepare(node, s);
        }
    }
    if (ret < 0) {
        return ret;
    }
    uint8_t *buf = malloc((size_t)s->cluster_size);
    uint64_t *nl1 = NULL;
    if (!buf) {
        return error_set(ENOMEM, "Out of memory");
    }
    ret = read_snapshot_l1(node, s, &sn, s->l1_size, &nl1);
    /* [QEMU] the snapshot's L1 on disk gets its flags updated too. */
    if (ret == 0) {
        ret = add_refs(node, s, nl1, sn.l1_size, sn.l1_table_offset, buf);
    }
    if (ret == 0) {
        ret = write_l1(node, s, s->l1_table_offset, nl1, s->l1_size);
        if (ret == 0) {
            ret = sync_image(node);
        }
    }
    if (ret == 0) {
        /* The old tables are unnamed on disk: drop their references. */
        uint64_t *old = s->l1_table;
        s->l1_table = nl1;
        nl1 = NULL;
        /* The snapshot's tables were never checked against the blocks. */
        s->tables_apart = false;
        ret = walk_all(node, s, old, s->l1_size, 0, -1, buf);
        free(old);
    }
    if (ret == 0) {
        ret = fix_copied(node, s, buf);
    }
    free(nl1);
    free(buf);
    return ret;
}

int qcow2_snapshot_delete(struct qimg_node *node,
                          const struct qimg_snapshot_select *sel)
{
    struct qcow2_state *s = node->opaque;
    int64_t idx = find_snapshot(&s->snapshots, sel);
    if (idx < 0) {
        return -ENOENT;
    }
    int ret = prepare(node, s);
    if (ret < 0) {
        return ret;
    }
    struct qcow2_snapshot sn = s->snapshots.sn[idx];
    uint32_t nb = s->snapshots.nb;
    uint8_t *buf = malloc((size_t)s->cluster_size);
    struct qcow2_snapshot *arr = calloc(max_u64(nb - 1, 1), sizeof(*arr));
    uint64_t *l1 = NULL;
    if (!buf || !arr) {
        ret = error_set(ENOMEM, "Out of memory");
        goto out;
    }
    ret = read_snapshot_l1(node, s, &sn, sn.l1_size, &l1);
    if (ret < 0) {
        goto out;
    }
    memcpy(arr, s->snapshots.sn, (size_t)idx * sizeof(*arr));
    memcpy(arr + idx, s->snapshots.sn + idx + 1,
           (size_t)(nb - 1 - idx) * sizeof(*arr));
    struct qcow2_snapshot_table t = {.sn = arr, .nb = nb - 1};
    ret = write_table(node, s, &t);
    if (ret < 0) {
        goto out;
    }
    /* The header no longer names it: the entry goes. */
    free(s->snapshots.sn[idx].id);
    free(s->snapshots.sn[idx].name);
    free(s->snapshots.sn[idx].unknown_extra);
    free(s->snapshots.sn);
    s->snapshots = t;
    arr = NULL;

    /* Nothing on disk names the snapshot now: its references go. */
    ret = walk_all(node, s, l1, sn.l1_size, sn.l1_table_offset, -1, buf);
    if (ret == 0 && sn.l1_size > 0) {
        ret = qcow2_free_later(node, s, sn.l1_table_offset,
                               (uint64_t)sn.l1_size * 8);
        if (ret == 0) {
            ret = qcow2_write_flush(node, s);
        }
    }
    if (ret == 0) {
        ret = fix_copied(node, s, buf);
    }
out:
    free(arr);
    free(l1);
    free(buf);
    return ret;
}
