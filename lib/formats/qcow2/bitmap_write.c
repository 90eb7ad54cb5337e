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
 *  - no bit past the disk's end (a padding granule of the last data
 *    cluster) is ever set;
 *  - a resize gives every bitmap a table for the new size: bits past a
 *    shrunk end are cleared, a grown end starts clean (QEMU's result for
 *    its own images; where another writer left padding bits set, QEMU
 *    shows those up to a 64-bit word as dirty after a growth, qimg
 *    clears them).
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
    if (off == 0 || qcow2_overlap_what(s, off, bytes, 0)) {
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
    if (!s->bm_loaded || (!s->bm_store_needed &&
                          (s->bm_in_use == in_use || s->nb_bm_tracks == 0))) {
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
    uint64_t old_off = s->hdr.bitmap_directory_offset;
    uint64_t old_size = s->hdr.bitmap_directory_size;
    size_t dir_size = qcow2_bitmaps_encoded_size(&s->bitmaps);
    uint64_t off = 0;
    int ret = 0;
    if (s->bitmaps.nb > 0) {
        uint64_t clusters = div_round_up_u64(dir_size, cs);
        uint8_t *dir = calloc(1, (size_t)(clusters * cs));
        if (!dir) {
            return error_set(ENOMEM, "Out of memory");
        }
        int64_t n = qcow2_bitmaps_encode(&s->bitmaps, dir, dir_size);
        ret = n < 0 ? (int)n
                    : qcow2_alloc_clusters(node, s, clusters, 0, &off, NULL);
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
    }
    if (ret == 0 && old_off != 0 && old_size != 0) {
        ret = qcow2_free_later(node, s, old_off, old_size);
    }
    if (ret < 0) {
        return ret;
    }
    /* [spec: Bitmaps extension] none without bitmaps, and no bit. */
    s->hdr.nb_bitmaps = s->bitmaps.nb;
    s->hdr.bitmap_directory_offset = off;
    s->hdr.bitmap_directory_size = s->bitmaps.nb ? dir_size : 0;
    s->hdr.autoclear_features =
        s->bitmaps.nb ? s->hdr.autoclear_features | QCOW2_AUTOCLEAR_BITMAPS
                      : s->hdr.autoclear_features & ~QCOW2_AUTOCLEAR_BITMAPS;
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
        /*
         * Padding granules past the smaller of the two ends, in the
         * clusters that stay: a shrink drops the bits past its end, and a
         * growth starts clean even where another writer left padding
         * bits set (a growth in QEMU shows those up to a 64-bit word).
         */
        uint64_t granules = div_round_up_u64(
            min_u64(new_size, node->size), (uint64_t)1 << bm->granularity_bits);
        uint64_t kept_bits = min_u64(want, bm->table_size) * cs * 8;
        if (granules < kept_bits) {
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

/* ---- qemu-img bitmap ------------------------------------------------------
 */

static int64_t find_bitmap(const struct qcow2_state *s, const char *name)
{
    for (uint32_t i = 0; i < s->bitmaps.nb; i++) {
        if (strcmp(s->bitmaps.bm[i].name, name) == 0) {
            return i;
        }
    }
    return -1;
}

static struct qcow2_bitmap_track *track_of(struct qcow2_state *s,
                                           uint32_t index)
{
    for (uint32_t i = 0; i < s->nb_bm_tracks; i++) {
        if (s->bm_tracks[i].index == index) {
            return &s->bm_tracks[i];
        }
    }
    return NULL;
}

static int not_found(const char *name)
{
    return error_set(ENOENT, "Dirty bitmap '%s' not found", name);
}

/* [QEMU] a bitmap in use at open cannot be changed, only removed. */
static int inconsistent(const char *name)
{
    return error_set(EINVAL,
                     "Bitmap '%s' is inconsistent and cannot be used\n"
                     "Try block-dirty-bitmap-remove to delete this bitmap "
                     "from disk",
                     name);
}

static int cannot_persist(struct qimg_node *node, const char *name,
                          const char *why)
{
    return error_set(EINVAL, "Can't make bitmap '%s' persistent in '%s': %s",
                     name, node->filename, why);
}

static int bitmap_add(struct qimg_node *node, struct qcow2_state *s,
                      const struct qimg_bitmap_request *req)
{
    const uint64_t cs = s->cluster_size;
    uint64_t g = req->granularity;
    if (g == 0) {
        /* [QEMU] the cluster size, within 4 KiB .. 64 KiB. */
        g = min_u64(max_u64(cs, 4096), 65536);
    }
    if (g < 512 || (g & (g - 1)) ||
        g > ((uint64_t)1 << QCOW2_MAX_BITMAP_GRANULARITY_BITS)) {
        return error_set(EINVAL,
                         "Granularity must be power of 2 and at least 512");
    }
    if (find_bitmap(s, req->name) >= 0) {
        return error_set(EEXIST, "Bitmap already exists: %s", req->name);
    }
    if (s->hdr.version < 3) {
        return cannot_persist(node, req->name,
                              "Cannot store dirty bitmaps in qcow2 v2 files");
    }
    size_t name_size = strlen(req->name);
    if (name_size > QCOW2_MAX_BITMAP_NAME) {
        return cannot_persist(node, req->name,
                              "Name length exceeds maximum (1023 "
                              "characters)");
    }
    if (s->bitmaps.nb >= QCOW2_MAX_BITMAPS) {
        return cannot_persist(node, req->name,
                              "Maximum number of persistent bitmaps is "
                              "already reached");
    }
    if (qcow2_bitmaps_encoded_size(&s->bitmaps) +
            ((QCOW2_BITMAP_DIR_ENTRY_SIZE + name_size + 7) & ~(size_t)7) >
        QCOW2_MAX_BITMAP_DIRECTORY_SIZE) {
        return cannot_persist(node, req->name,
                              "Not enough space in the bitmap directory");
    }
    unsigned gbits = 0;
    while (((uint64_t)1 << gbits) < g) {
        gbits++;
    }
    uint64_t entries = qcow2_bitmap_table_entries(node->size, gbits, cs);
    if (entries > QCOW2_MAX_BITMAP_TABLE_SIZE ||
        entries * cs > QCOW2_MAX_BITMAP_PHYS_SIZE) {
        return cannot_persist(node, req->name,
                              "Too much space will be occupied by the "
                              "bitmap. Use larger granularity");
    }
    struct qcow2_bitmap *bms =
        realloc(s->bitmaps.bm, (s->bitmaps.nb + 1) * sizeof(*bms));
    if (bms) {
        s->bitmaps.bm = bms;
    }
    struct qcow2_bitmap_track *ks =
        bms ? realloc(s->bm_tracks, (s->nb_bm_tracks + 1) * sizeof(*ks)) : NULL;
    if (ks) {
        s->bm_tracks = ks;
    }
    char *name = strdup(req->name);
    uint64_t *table = calloc((size_t)entries, sizeof(uint64_t));
    uint8_t *owned = calloc((size_t)entries, 1);
    if (!ks || !name || !table || !owned) {
        free(name);
        free(table);
        free(owned);
        return error_set(ENOMEM, "Out of memory");
    }
    bool enabled = !(req->flags & QIMG_BITMAP_DISABLED);
    s->bitmaps.bm[s->bitmaps.nb] = (struct qcow2_bitmap){
        .table_size = (uint32_t)entries,
        .flags = (enabled ? QCOW2_BME_AUTO : 0) |
                 (s->bm_in_use ? QCOW2_BME_IN_USE : 0),
        .type = QCOW2_BITMAP_TYPE_DIRTY_TRACKING,
        .granularity_bits = (uint8_t)gbits,
        .name = name,
    };
    s->bm_tracks[s->nb_bm_tracks++] = (struct qcow2_bitmap_track){
        .index = s->bitmaps.nb++,
        .enabled = enabled,
        .table = table,
        .owned = owned,
        .table_dirty = true,
    };
    s->bm_store_needed = true;
    return 0;
}

/*
 * The clusters of a bitmap that was in use at open, whose table nothing
 * checked: the table is read where it is (aligned and within QEMU's
 * sizes, as the directory decode checked), each well-formed entry freed.
 */
static int free_stale(struct qimg_node *node, struct qcow2_state *s,
                      const struct qcow2_bitmap *bm)
{
    const uint64_t cs = s->cluster_size;
    size_t bytes = (size_t)bm->table_size * 8;
    uint8_t *t = malloc(bytes);
    if (!t) {
        return error_set(ENOMEM, "Out of memory");
    }
    int ret = qcow2_read_in_range(bm->table_offset, bytes)
                  ? io_pread(node->file, t, bytes, bm->table_offset)
                  : -EIO;
    for (uint32_t i = 0; ret == 0 && i < bm->table_size; i++) {
        uint64_t e = load_be64(t + (size_t)i * 8);
        uint64_t host = e & QCOW2_BMT_OFFSET_MASK;
        if (!(e & QCOW2_BMT_RESERVED_MASK) && (host & (cs - 1)) == 0) {
            ret = free_old(node, s, host, cs);
        }
    }
    free(t);
    if (ret < 0) {
        return error_set_errno(-ret,
                               "%s: could not read the table of "
                               "bitmap '%s'",
                               node->filename, bm->name);
    }
    return free_old(node, s, bm->table_offset, bytes);
}

static int bitmap_remove(struct qimg_node *node, struct qcow2_state *s,
                         uint32_t index)
{
    const uint64_t cs = s->cluster_size;
    struct qcow2_bitmap *bm = &s->bitmaps.bm[index];
    struct qcow2_bitmap_track *k = track_of(s, index);
    int ret = 0;
    if (k) {
        for (uint32_t i = 0; ret == 0 && i < bm->table_size; i++) {
            ret = free_old(node, s, k->table[i] & QCOW2_BMT_OFFSET_MASK, cs);
        }
        if (ret == 0) {
            ret = free_old(node, s, bm->table_offset, k->stored_bytes);
        }
    } else {
        ret = free_stale(node, s, bm);
    }
    if (ret < 0) {
        return ret;
    }
    if (k) {
        free(k->table);
        free(k->owned);
        size_t at = (size_t)(k - s->bm_tracks);
        memmove(k, k + 1, (s->nb_bm_tracks - at - 1) * sizeof(*k));
        s->nb_bm_tracks--;
    }
    for (uint32_t i = 0; i < s->nb_bm_tracks; i++) {
        if (s->bm_tracks[i].index > index) {
            s->bm_tracks[i].index--;
        }
    }
    free(bm->name);
    memmove(bm, bm + 1, (s->bitmaps.nb - index - 1) * sizeof(*bm));
    s->bitmaps.nb--;
    s->bm_store_needed = true;
    return 0;
}

static int bitmap_clear(struct qimg_node *node, struct qcow2_state *s,
                        struct qcow2_bitmap_track *k)
{
    const struct qcow2_bitmap *bm = &s->bitmaps.bm[k->index];
    for (uint32_t i = 0; i < bm->table_size; i++) {
        int ret = free_old(node, s, k->table[i] & QCOW2_BMT_OFFSET_MASK,
                           s->cluster_size);
        if (ret < 0) {
            return ret;
        }
        k->table[i] = 0;
        k->owned[i] = 0;
    }
    k->table_dirty = true;
    s->bm_store_needed = true;
    return 0;
}

/*
 * Every bit of source bitmap sbm (of node src, whose table is stable:
 * src's in-memory one when src is node, else the one on disk) set in k:
 * each run of set source granules, as guest bytes, sets the target
 * granules covering them.
 */
static int bitmap_merge(struct qimg_node *node, struct qcow2_state *s,
                        struct qcow2_bitmap_track *k, struct qimg_node *src,
                        struct qcow2_state *ss, uint32_t sindex)
{
    const struct qcow2_bitmap *sbm = &ss->bitmaps.bm[sindex];
    const uint64_t scs = ss->cluster_size;
    const unsigned tg = s->bitmaps.bm[k->index].granularity_bits;
    const unsigned sg = sbm->granularity_bits;
    const uint64_t size = node->size;
    if (size == 0) {
        return 0;
    }
    struct qcow2_bitmap_track *sk = src == node ? track_of(s, sindex) : NULL;
    uint8_t *sbuf = malloc((size_t)scs);
    uint8_t *stab = sk ? NULL : malloc((size_t)sbm->table_size * 8);
    if (!sbuf || (!sk && !stab)) {
        free(sbuf);
        free(stab);
        return error_set(ENOMEM, "Out of memory");
    }
    int ret = 0;
    if (!sk) {
        /* Checked by src's open (not in use, so its table was checked). */
        ret = io_pread(src->file, stab, (size_t)sbm->table_size * 8,
                       sbm->table_offset);
    }
    const uint64_t per = scs * 8;
    for (uint32_t ti = 0; ret == 0 && ti < sbm->table_size; ti++) {
        uint64_t e = sk ? sk->table[ti] : load_be64(stab + (size_t)ti * 8);
        uint64_t host = e & QCOW2_BMT_OFFSET_MASK;
        if (host == 0 && !(e & QCOW2_BMT_ALL_ONES)) {
            continue;
        }
        if (host == 0) {
            memset(sbuf, 0xff, (size_t)scs);
        } else {
            ret = qcow2_read_in_range(host, scs)
                      ? io_pread(src->file, sbuf, (size_t)scs, host)
                      : -EIO;
            if (ret < 0) {
                ret = error_set_errno(-ret,
                                      "%s: could not read the data of "
                                      "bitmap '%s'",
                                      src->filename, sbm->name);
                break;
            }
        }
        for (uint64_t b = 0; ret == 0 && b < per;) {
            if (!(sbuf[b / 8] >> (b % 8) & 1)) {
                b = sbuf[b / 8] ? b + 1 : (b / 8 + 1) * 8;
                continue;
            }
            uint64_t run = b;
            while (run + 1 < per &&
                   (sbuf[(run + 1) / 8] >> ((run + 1) % 8) & 1)) {
                run++;
            }
            uint64_t g0 = ti * per + b, g1 = ti * per + run;
            uint64_t start = g0 << sg;
            if (g0 > (size - 1) >> sg) {
                break; /* past the disk: padding bits */
            }
            /* A source granule across the disk's end stops at the end:
             * target granules past it are padding and stay clear. */
            uint64_t last =
                g1 >= (size - 1) >> sg ? size - 1 : ((g1 + 1) << sg) - 1;
            ret = change_granules(node, s, k, start >> tg, last >> tg, true);
            b = run + 1;
        }
    }
    free(sbuf);
    free(stab);
    return ret;
}

int qcow2_bitmap(struct qimg_node *node, const struct qimg_bitmap_request *req,
                 struct qimg_node *source)
{
    struct qcow2_state *s = node->opaque;
    int ret = prepare(node, s);
    if (ret < 0) {
        return ret;
    }
    if (req->op == QIMG_BITMAP_ADD) {
        return bitmap_add(node, s, req);
    }
    int64_t index = find_bitmap(s, req->name);
    if (index < 0) {
        return not_found(req->name);
    }
    if (req->op == QIMG_BITMAP_REMOVE) {
        return bitmap_remove(node, s, (uint32_t)index);
    }
    struct qcow2_bitmap_track *k = track_of(s, (uint32_t)index);
    if (!k) {
        return inconsistent(req->name);
    }
    struct qcow2_bitmap *bm = &s->bitmaps.bm[index];
    switch (req->op) {
    case QIMG_BITMAP_CLEAR:
        return bitmap_clear(node, s, k);
    case QIMG_BITMAP_ENABLE:
    case QIMG_BITMAP_DISABLE:
        k->enabled = req->op == QIMG_BITMAP_ENABLE;
        bm->flags = k->enabled ? bm->flags | QCOW2_BME_AUTO
                               : bm->flags & ~QCOW2_BME_AUTO;
        s->bm_store_needed = true;
        return 0;
    case QIMG_BITMAP_MERGE:
        break;
    default:
        return error_set(EINVAL, "Unknown bitmap operation");
    }
    if (source->drv != node->drv) {
        return not_found(req->source_name);
    }
    struct qcow2_state *ss = source->opaque;
    int64_t sindex = find_bitmap(ss, req->source_name);
    if (sindex < 0) {
        return not_found(req->source_name);
    }
    const struct qcow2_bitmap *sbm = &ss->bitmaps.bm[sindex];
    if ((sbm->flags & QCOW2_BME_IN_USE) &&
        (source != node || !track_of(s, (uint32_t)sindex))) {
        return inconsistent(req->source_name);
    }
    if (source->size != node->size) {
        return error_set(EINVAL,
                         "Bitmaps are of different sizes (destination size "
                         "is %llu, source size is %llu) and can't be merged",
                         (unsigned long long)node->size,
                         (unsigned long long)source->size);
    }
    return bitmap_merge(node, s, k, source, ss, (uint32_t)sindex);
}
