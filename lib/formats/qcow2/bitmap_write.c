/*
 * Persistent bitmaps kept true by qimg's writes, as QEMU keeps them
 * [spec: Bitmaps extension, Bitmap directory, Bitmap table]:
 *
 *  - every guest write, zero write and discard sets the bits of the
 *    granules it touches in each enabled ('auto') bitmap;
 *  - while the image holds changes its stored bitmaps may not record,
 *    every bitmap qimg keeps carries the in-use flag on disk: the flag is
 *    stored (and synced) before the first such change, and the next flush
 *    stores the bits and then clears it.  A crash in between leaves the
 *    bitmaps marked in use, which QEMU treats as inconsistent: never
 *    silently stale;
 *  - a resize gives every bitmap a table for the new size: bits past a
 *    shrunk end are cleared, a grown end starts clean (QEMU's result).
 *
 * Bitmaps in use when the image was opened are stale already: they are
 * left as they are, as QEMU leaves them.
 *
 * Nothing the image names is written in place.  A bitmap data cluster is
 * copied to a newly allocated one before its first change; a changed
 * table and the directory are written to new clusters at the store, the
 * header then names the new directory, and only after that are the old
 * clusters freed (the flush's deferred frees).  So a hostile table that
 * points at the L1 table is read, never written, and every flush leaves
 * either the old bitmaps or the new ones, both whole.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "driver.h"
#include "formats/qcow2/qcow2.h"
#include "util/checked.h"
#include "util/endian.h"

/*
 * Table bytes held for all bitmaps together.  A real image has a few
 * bitmaps of at most 64 KiB of table each (8 MiB at 512-byte clusters);
 * a hostile one may name 65535 tables of 8 MiB.
 */
#define QCOW2_MAX_TRACKED_TABLE_BYTES (64u << 20)

static int load_tracks(struct qimg_node *node, struct qcow2_state *s)
{
    if (s->bm_loaded) {
        return 0;
    }
    uint32_t n = 0;
    uint64_t bytes = 0;
    for (uint32_t i = 0; i < s->bitmaps.nb; i++) {
        const struct qcow2_bitmap *bm = &s->bitmaps.bm[i];
        if (!(bm->flags & QCOW2_BME_IN_USE) && !bm->dup_name) {
            n++;
            bytes += (uint64_t)bm->table_size * 8;
        }
    }
    if (bytes > QCOW2_MAX_TRACKED_TABLE_BYTES) {
        return error_set(EFBIG,
                         "%s: the persistent bitmaps' tables are too large "
                         "to update (more than %u MiB together)",
                         node->filename, QCOW2_MAX_TRACKED_TABLE_BYTES >> 20);
    }
    struct qcow2_bitmap_track *t = calloc(n ? n : 1, sizeof(*t));
    uint8_t *buf = malloc((size_t)s->cluster_size);
    if (!t || !buf) {
        free(t);
        free(buf);
        return error_set(ENOMEM, "Out of memory");
    }
    s->bm_tracks = t;
    s->bm_buf = buf;
    s->nb_bm_tracks = 0;
    for (uint32_t i = 0; i < s->bitmaps.nb; i++) {
        const struct qcow2_bitmap *bm = &s->bitmaps.bm[i];
        if ((bm->flags & QCOW2_BME_IN_USE) || bm->dup_name) {
            continue;
        }
        struct qcow2_bitmap_track *k = &t[s->nb_bm_tracks++];
        k->index = i;
        k->enabled = (bm->flags & QCOW2_BME_AUTO) != 0;
        /* table_size >= 1 and its bytes are within the budget above. */
        k->table = malloc((size_t)bm->table_size * 8);
        k->owned = calloc(bm->table_size, 1);
        if (!k->table || !k->owned) {
            return error_set(ENOMEM, "Out of memory");
        }
        /* The open read and checked this table (qcow2.c read_bitmaps). */
        int ret = io_pread(node->file, k->table, (size_t)bm->table_size * 8,
                           bm->table_offset);
        if (ret < 0) {
            return error_set_errno(-ret,
                                   "%s: could not read the table of bitmap "
                                   "'%s'",
                                   node->filename, bm->name);
        }
        for (uint32_t j = 0; j < bm->table_size; j++) {
            k->table[j] = load_be64(&k->table[j]);
        }
        k->stored_bytes = (uint64_t)bm->table_size * 8;
    }
    s->bm_loaded = true;
    return 0;
}

const char *qcow2_bitmaps_stale(const struct qcow2_state *s)
{
    for (uint32_t i = 0; i < s->bitmaps.nb; i++) {
        const struct qcow2_bitmap *bm = &s->bitmaps.bm[i];
        bool kept = false;
        for (uint32_t j = 0; s->bm_loaded && j < s->nb_bm_tracks; j++) {
            kept = kept || s->bm_tracks[j].index == i;
        }
        if ((bm->flags & QCOW2_BME_IN_USE) && !kept) {
            return bm->name;
        }
    }
    return NULL;
}

void qcow2_bitmaps_write_free(struct qcow2_state *s)
{
    for (uint32_t i = 0; s->bm_tracks && i < s->nb_bm_tracks; i++) {
        free(s->bm_tracks[i].table);
        free(s->bm_tracks[i].owned);
    }
    free(s->bm_tracks);
    free(s->bm_buf);
    s->bm_tracks = NULL;
    s->bm_buf = NULL;
    s->nb_bm_tracks = 0;
    s->bm_loaded = false;
}

/*
 * Free a table or data cluster the stored bitmaps named, at the flush.
 * One that lies on other metadata (a hostile table naming the L1 table)
 * is left alone: a leak for check -r, never a freed L1 table.
 */
static int free_old(struct qimg_node *node, struct qcow2_state *s, uint64_t off,
                    uint64_t bytes)
{
    if (off == 0 || qcow2_overlap_what(s, off, bytes)) {
        return 0;
    }
    return qcow2_free_later(node, s, off, bytes);
}

/* Set (or clear) bits [lo, hi] of buf (bit 0: bit 0 of buf[0]). */
static bool change_bits(uint8_t *buf, uint64_t lo, uint64_t hi, bool set)
{
    bool changed = false;
    for (uint64_t byte = lo / 8; byte <= hi / 8; byte++) {
        unsigned from = byte == lo / 8 ? (unsigned)(lo % 8) : 0;
        unsigned to = byte == hi / 8 ? (unsigned)(hi % 8) : 7;
        uint8_t mask = (uint8_t)(((0xffu << from) & (0xffu >> (7 - to))));
        uint8_t v = set ? (buf[byte] | mask) : (buf[byte] & ~mask);
        changed = changed || v != buf[byte];
        buf[byte] = v;
    }
    return changed;
}

/*
 * Bits [lo, hi] of the data cluster of table entry ti (bit 0 being the
 * cluster's first).  A cluster this handle allocated is changed in place;
 * any other is first copied to a new cluster (unless nothing changes),
 * whose table entry is then stored at the next flush.
 */
static int change_cluster(struct qimg_node *node, struct qcow2_state *s,
                          struct qcow2_bitmap_track *k, uint64_t ti,
                          uint64_t lo, uint64_t hi, bool set)
{
    const uint64_t cs = s->cluster_size;
    const struct qcow2_bitmap *bm = &s->bitmaps.bm[k->index];
    uint64_t entry = k->table[ti];
    uint64_t host = entry & QCOW2_BMT_OFFSET_MASK;
    int ret;
    if (k->owned[ti]) {
        size_t first = (size_t)(lo / 8), n = (size_t)(hi / 8) - first + 1;
        uint64_t base = (uint64_t)first * 8;
        ret = io_pread(node->file, s->bm_buf, n, host + first);
        if (ret == 0 && change_bits(s->bm_buf, lo - base, hi - base, set)) {
            ret = io_pwrite(node->file, s->bm_buf, n, host + first);
        }
        return ret < 0
                   ? error_set_errno(-ret, "%s: could not update bitmap '%s'",
                                     node->filename, bm->name)
                   : 0;
    }
    if (host != 0) {
        /* Aligned (checked at open); a read past the file's end fails. */
        ret = qcow2_read_in_range(host, cs)
                  ? io_pread(node->file, s->bm_buf, (size_t)cs, host)
                  : -EIO;
        if (ret < 0) {
            return error_set_errno(-ret,
                                   "%s: could not read the data of bitmap "
                                   "'%s'",
                                   node->filename, bm->name);
        }
    } else {
        /* [spec: Bitmap table] offset 0: all zeros, or all ones (bit 0). */
        memset(s->bm_buf, (entry & QCOW2_BMT_ALL_ONES) ? 0xff : 0, (size_t)cs);
    }
    if (!change_bits(s->bm_buf, lo, hi, set)) {
        return 0;
    }
    uint64_t fresh;
    ret = qcow2_alloc_clusters(node, s, 1, 0, &fresh, NULL);
    if (ret < 0) {
        return ret;
    }
    ret = io_pwrite(node->file, s->bm_buf, (size_t)cs, fresh);
    if (ret < 0) {
        return error_set_errno(-ret, "%s: could not write bitmap '%s'",
                               node->filename, bm->name);
    }
    ret = free_old(node, s, host, cs);
    if (ret < 0) {
        return ret;
    }
    k->table[ti] = fresh;
    k->owned[ti] = 1;
    k->table_dirty = true;
    s->bm_store_needed = true;
    return 0;
}

/* Granules [g0, g1] of one bitmap, cluster by cluster of its data. */
static int change_granules(struct qimg_node *node, struct qcow2_state *s,
                           struct qcow2_bitmap_track *k, uint64_t g0,
                           uint64_t g1, bool set)
{
    const uint64_t per = s->cluster_size * 8;
    const struct qcow2_bitmap *bm = &s->bitmaps.bm[k->index];
    for (uint64_t ti = g0 / per; ti <= g1 / per && ti < bm->table_size; ti++) {
        uint64_t lo = max_u64(g0, ti * per) - ti * per;
        uint64_t hi = min_u64(g1, ti * per + per - 1) - ti * per;
        int ret = change_cluster(node, s, k, ti, lo, hi, set);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

/*
 * Store what changed: new tables, a new directory (each bitmap kept here
 * flagged in use or not), all in new clusters; the old ones are freed
 * later.  The header still names the old directory: qcow2_bitmaps_commit
 * switches it once these clusters' refcounts are on disk.
 */
int qcow2_bitmaps_store(struct qimg_node *node, struct qcow2_state *s,
                        bool in_use)
{
    if (!s->bm_loaded || s->nb_bm_tracks == 0 ||
        (!s->bm_store_needed && s->bm_in_use == in_use)) {
        return 0;
    }
    const uint64_t cs = s->cluster_size;
    for (uint32_t i = 0; i < s->nb_bm_tracks; i++) {
        struct qcow2_bitmap_track *k = &s->bm_tracks[i];
        struct qcow2_bitmap *bm = &s->bitmaps.bm[k->index];
        bm->flags = in_use ? bm->flags | QCOW2_BME_IN_USE
                           : bm->flags & ~QCOW2_BME_IN_USE;
        if (!k->table_dirty) {
            continue;
        }
        uint64_t bytes = (uint64_t)bm->table_size * 8;
        uint64_t clusters = div_round_up_u64(bytes, cs);
        uint8_t *buf = calloc(1, (size_t)(clusters * cs));
        if (!buf) {
            return error_set(ENOMEM, "Out of memory");
        }
        for (uint32_t j = 0; j < bm->table_size; j++) {
            store_be64(buf + (size_t)j * 8, k->table[j]);
        }
        uint64_t off;
        int ret = qcow2_alloc_clusters(node, s, clusters, 0, &off, NULL);
        if (ret == 0) {
            ret = io_pwrite(node->file, buf, (size_t)(clusters * cs), off);
            if (ret < 0) {
                ret = error_set_errno(-ret,
                                      "%s: could not write the table of "
                                      "bitmap '%s'",
                                      node->filename, bm->name);
            }
        }
        free(buf);
        if (ret == 0) {
            ret = free_old(node, s, bm->table_offset, k->stored_bytes);
        }
        if (ret < 0) {
            return ret;
        }
        bm->table_offset = off;
        k->stored_bytes = bytes;
        k->table_dirty = false;
    }
    size_t dir_size = qcow2_bitmaps_encoded_size(&s->bitmaps);
    uint64_t clusters = div_round_up_u64(dir_size, cs);
    uint8_t *dir = calloc(1, (size_t)(clusters * cs));
    if (!dir) {
        return error_set(ENOMEM, "Out of memory");
    }
    int64_t n = qcow2_bitmaps_encode(&s->bitmaps, dir, dir_size);
    uint64_t off = 0;
    int ret =
        n < 0 ? (int)n : qcow2_alloc_clusters(node, s, clusters, 0, &off, NULL);
    if (ret == 0) {
        ret = io_pwrite(node->file, dir, (size_t)(clusters * cs), off);
        if (ret < 0) {
            ret = error_set_errno(-ret,
                                  "%s: could not write the bitmap "
                                  "directory",
                                  node->filename);
        }
    }
    free(dir);
    if (ret == 0) {
        ret = qcow2_free_later(node, s, s->hdr.bitmap_directory_offset,
                               s->hdr.bitmap_directory_size);
    }
    if (ret < 0) {
        return ret;
    }
    s->hdr.bitmap_directory_offset = off;
    s->hdr.bitmap_directory_size = dir_size;
    s->bm_in_use = in_use;
    s->bm_store_needed = false;
    s->bm_header_needed = true;
    return 0;
}

int qcow2_bitmaps_commit(struct qimg_node *node, struct qcow2_state *s)
{
    if (!s->bm_header_needed) {
        return 0;
    }
    int ret = qcow2_header_rewrite(node, s);
    if (ret == 0) {
        s->bm_header_needed = false;
    }
    return ret;
}

/*
 * Before the first change the stored bitmaps do not record: the bitmaps
 * kept here are stored flagged in use, and that is on disk (synced).
 */
static int mark_in_use(struct qimg_node *node, struct qcow2_state *s)
{
    if (s->bm_in_use) {
        return 0;
    }
    int ret = qcow2_bitmaps_store(node, s, true);
    if (ret == 0) {
        ret = qcow2_refcount_writeback(node, s);
    }
    if (ret == 0) {
        ret = node_sync(node, node->file);
        if (ret < 0) {
            ret = error_set_errno(-ret, "%s: flush failed", node->filename);
        }
    }
    return ret == 0 ? qcow2_bitmaps_commit(node, s) : ret;
}

/* Bitmaps kept here, loaded, with the write path set up. */
static int prepare(struct qimg_node *node, struct qcow2_state *s)
{
    int ret = qcow2_write_prepare(node, s);
    if (ret == 0) {
        ret = load_tracks(node, s);
    }
    return ret;
}

int qcow2_bitmaps_note_write(struct qimg_node *node, struct qcow2_state *s,
                             uint64_t off, uint64_t len)
{
    if (s->bitmaps.nb == 0 || len == 0 || off >= node->size) {
        return 0;
    }
    int ret = prepare(node, s);
    bool any = false;
    for (uint32_t i = 0; ret == 0 && i < s->nb_bm_tracks; i++) {
        any = any || s->bm_tracks[i].enabled;
    }
    if (ret < 0 || !any) {
        return ret;
    }
    ret = mark_in_use(node, s);
    uint64_t last = min_u64(off + (len - 1), node->size - 1);
    for (uint32_t i = 0; ret == 0 && i < s->nb_bm_tracks; i++) {
        struct qcow2_bitmap_track *k = &s->bm_tracks[i];
        unsigned g = s->bitmaps.bm[k->index].granularity_bits;
        if (k->enabled) {
            ret = change_granules(node, s, k, off >> g, last >> g, true);
        }
    }
    return ret;
}

int qcow2_bitmaps_resize(struct qimg_node *node, struct qcow2_state *s,
                         uint64_t new_size)
{
    if (s->bitmaps.nb == 0 || new_size == node->size) {
        return 0;
    }
    int ret = prepare(node, s);
    if (ret == 0 && s->nb_bm_tracks > 0) {
        /* The tables stop matching the size in the header from here. */
        ret = mark_in_use(node, s);
    }
    const uint64_t cs = s->cluster_size;
    for (uint32_t i = 0; ret == 0 && i < s->nb_bm_tracks; i++) {
        struct qcow2_bitmap_track *k = &s->bm_tracks[i];
        struct qcow2_bitmap *bm = &s->bitmaps.bm[k->index];
        uint64_t want =
            qcow2_bitmap_table_entries(new_size, bm->granularity_bits, cs);
        if (want > QCOW2_MAX_BITMAP_TABLE_SIZE ||
            want * cs > QCOW2_MAX_BITMAP_PHYS_SIZE) {
            return error_set(EFBIG,
                             "%s: bitmap '%s' would be too large for "
                             "the new size",
                             node->filename, bm->name);
        }
        /* Granules past the new end, in the clusters that stay. */
        uint64_t granules =
            div_round_up_u64(new_size, (uint64_t)1 << bm->granularity_bits);
        uint64_t kept_bits = want * cs * 8;
        if (new_size < node->size && granules < kept_bits) {
            ret = change_granules(node, s, k, granules, kept_bits - 1, false);
        }
        for (uint64_t ti = want; ret == 0 && ti < bm->table_size; ti++) {
            ret = free_old(node, s, k->table[ti] & QCOW2_BMT_OFFSET_MASK, cs);
        }
        if (ret < 0 || want == bm->table_size) {
            continue;
        }
        uint64_t *table = realloc(k->table, (size_t)want * 8);
        uint8_t *owned = table ? realloc(k->owned, (size_t)want) : NULL;
        if (table) {
            k->table = table;
        }
        if (!owned) {
            return error_set(ENOMEM, "Out of memory");
        }
        k->owned = owned;
        for (uint64_t ti = bm->table_size; ti < want; ti++) {
            k->table[ti] = 0;
            k->owned[ti] = 0;
        }
        bm->table_size = (uint32_t)want;
        k->table_dirty = true;
        s->bm_store_needed = true;
    }
    return ret;
}
