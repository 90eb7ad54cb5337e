/*
 * qcow2: guest to host mapping for reads [spec: Cluster mapping, Extended
 * L2 Entries, Compressed Clusters Descriptor].
 *
 * The active L1 table is in memory (qcow2.c loads it at open, at most
 * QCOW2_MAX_L1_SIZE).  L2 tables are read in slices of at most
 * QCOW2_L2_SLICE_MAX bytes through a fixed-size LRU cache, so memory use
 * does not depend on the image beyond one slice per slot.  Every entry
 * is checked before its offset is used; a bad one fails the read with
 * EIO and a message naming the image, never reads outside the bounds of
 * the request.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "core/error.h"
#include "driver.h"
#include "formats/qcow2/qcow2.h"
#include "util/checked.h"
#include "util/endian.h"

#define QCOW2_L2_BITMAP_ALLOC_MASK 0xffffffffull

/*
 * Fail with EIO: "qcow2: image 'NAME' is corrupt: " and the detail.  A
 * writable image is also marked corrupt, as QEMU does.
 */
static int corrupt(struct qimg_node *node, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int corrupt(struct qimg_node *node, const char *fmt, ...)
{
    char what[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    if (node->writable) {
        return qcow2_signal_corruption(node, node->opaque, "%s", what);
    }
    return error_set(EIO, "qcow2: image '%s' is corrupt: %s", node->filename,
                     what);
}

void qcow2_cluster_free(struct qcow2_state *s)
{
    for (size_t i = 0; i < QCOW2_L2_CACHE_SLOTS; i++) {
        free(s->l2_cache.slot[i].data);
        s->l2_cache.slot[i].data = NULL;
        s->l2_cache.slot[i].host_off = 0;
    }
    free(s->l2_cache.ra_buf);
    s->l2_cache.ra_buf = NULL;
    free(s->z_in);
    free(s->z_out);
    s->z_in = NULL;
    s->z_out = NULL;
    s->z_valid = false;
}

/*
 * Unless refcounts are lazy, the refcount blocks (and with them the data
 * written before) go to disk and are synced before any L2 slice: the
 * entries in a slice may name clusters whose new refcounts are only in
 * the cache.
 */
static int l2_sync_refcounts(struct qimg_node *node, struct qcow2_state *s)
{
    if (s->hdr.compatible_features & QCOW2_COMPAT_LAZY_REFCOUNTS) {
        return 0;
    }
    int ret = qcow2_refcount_writeback(node, s);
    if (ret == 0) {
        ret = node_sync(node, node->file);
    }
    if (ret < 0) {
        return error_set_errno(-ret, "%s: could not write refcounts",
                               node->filename);
    }
    return 0;
}

/* Write a dirty slice back; the refcounts are already on disk. */
static int l2_write_synced(struct qimg_node *node, struct qcow2_state *s,
                           struct qcow2_l2_slot *sl)
{
    int ret = qcow2_overlap_check(node, s, sl->host_off,
                                  s->l2_cache.slice_size, QCOW2_OL_ACTIVE_L2);
    if (ret < 0) {
        return ret;
    }
    ret = io_pwrite(node->file, sl->data, s->l2_cache.slice_size,
                    sl->host_off);
    if (ret < 0) {
        return error_set_errno(-ret,
                               "%s: could not write the L2 table at "
                               "%#" PRIx64,
                               node->filename, sl->host_off);
    }
    sl->dirty = false;
    return 0;
}

/* Write one dirty slice back (an eviction): refcounts first. */
static int l2_write_slot(struct qimg_node *node, struct qcow2_state *s,
                         struct qcow2_l2_slot *sl)
{
    int ret = l2_sync_refcounts(node, s);
    return ret < 0 ? ret : l2_write_synced(node, s, sl);
}

/*
 * Every dirty slice, after one refcount writeback and sync for all of
 * them (nothing else is written in between, so one sync orders them
 * all; a sync per slice cost rebase a fdatasync per dirty slice).
 */
static int slot_by_offset(const void *a, const void *b)
{
    const struct qcow2_l2_slot *x = *(struct qcow2_l2_slot *const *)a;
    const struct qcow2_l2_slot *y = *(struct qcow2_l2_slot *const *)b;
    return x->host_off < y->host_off ? -1 : x->host_off > y->host_off;
}

int qcow2_l2_writeback(struct qimg_node *node, struct qcow2_state *s)
{
    /*
     * In file order, and slices that follow each other on disk (the
     * slices of one table) in one gathered write: one write per table,
     * not per 4 KiB slice.
     */
    struct qcow2_l2_slot *dirty[QCOW2_L2_CACHE_SLOTS];
    size_t nb = 0;
    for (size_t i = 0; i < QCOW2_L2_CACHE_SLOTS; i++) {
        if (s->l2_cache.slot[i].dirty) {
            dirty[nb++] = &s->l2_cache.slot[i];
        }
    }
    if (nb == 0) {
        return 0;
    }
    int ret = l2_sync_refcounts(node, s);
    if (ret < 0) {
        return ret;
    }
    qsort(dirty, nb, sizeof(dirty[0]), slot_by_offset);
    const size_t ss = s->l2_cache.slice_size;
    size_t k = 0;
    while (k < nb) {
        size_t end = k + 1;
        while (end < nb && end - k < IO_IOV_MAX &&
               dirty[end]->host_off == dirty[end - 1]->host_off + ss) {
            end++;
        }
        if (end == k + 1) {
            ret = l2_write_synced(node, s, dirty[k]);
        } else {
            struct iovec iov[IO_IOV_MAX];
            for (size_t i = k; i < end; i++) {
                iov[i - k].iov_base = dirty[i]->data;
                iov[i - k].iov_len = ss;
            }
            ret = io_pwritev(node->file, iov, (int)(end - k),
                             dirty[k]->host_off);
            if (ret < 0) {
                return error_set_errno(-ret,
                                       "%s: could not write the L2 table at "
                                       "%#" PRIx64,
                                       node->filename, dirty[k]->host_off);
            }
            for (size_t i = k; i < end; i++) {
                dirty[i]->dirty = false;
            }
        }
        if (ret < 0) {
            return ret;
        }
        k = end;
    }
    return 0;
}

void qcow2_l2_invalidate(struct qcow2_state *s, uint64_t off, uint64_t len)
{
    for (size_t i = 0; i < QCOW2_L2_CACHE_SLOTS; i++) {
        struct qcow2_l2_slot *sl = &s->l2_cache.slot[i];
        if (sl->host_off != 0 && sl->host_off >= off &&
            sl->host_off - off < len) {
            sl->host_off = 0;
            sl->last_use = 0;
            sl->dirty = false;
        }
    }
}

static int qcow2_l2_slice(struct qimg_node *node, struct qcow2_state *s,
                          uint64_t slice_off, const uint8_t **out);

int qcow2_l2_slice_rw(struct qimg_node *node, struct qcow2_state *s,
                      uint64_t slice_off, uint8_t **out)
{
    const uint8_t *p;
    int ret = qcow2_l2_slice(node, s, slice_off, &p);
    if (ret < 0) {
        return ret;
    }
    for (size_t i = 0; i < QCOW2_L2_CACHE_SLOTS; i++) {
        struct qcow2_l2_slot *sl = &s->l2_cache.slot[i];
        if (sl->data == p) {
            sl->dirty = true;
            *out = sl->data;
            return 0;
        }
    }
    return error_set(EIO, "qcow2: L2 cache lost a slice");
}

/* Is the slice at host offset off in the cache? */
static bool slice_cached(const struct qcow2_l2_cache *c, uint64_t off)
{
    for (size_t i = 0; i < QCOW2_L2_CACHE_SLOTS; i++) {
        if (c->slot[i].host_off == off && c->slot[i].data) {
            return true;
        }
    }
    return false;
}

/*
 * A miss on the slice at slice_off reads the slices after it in its L2
 * table too (QEMU reads whole tables when its cache covers the disk), so
 * a walk over a table costs one read, not one per slice: those not
 * cached (a cached one may be dirty and stops the run), into empty slots
 * only (a read ahead never evicts), within QCOW2_L2_READAHEAD slices.
 * Fills ahead[1, k) with the slots (ahead[0] is victim, the slot of
 * slice_off) and returns k; 1: no read ahead (also when its buffer
 * cannot be had).
 */
static size_t readahead_slots(struct qcow2_state *s, uint64_t slice_off,
                              struct qcow2_l2_slot *victim,
                              struct qcow2_l2_slot **ahead)
{
    struct qcow2_l2_cache *c = &s->l2_cache;
    const uint64_t ss = c->slice_size;
    uint64_t table_end = align_down_u64(slice_off, s->cluster_size) +
                         s->cluster_size;
    uint64_t max = min_u64((table_end - slice_off) / ss, QCOW2_L2_READAHEAD);
    size_t k = 1;
    ahead[0] = victim;
    for (size_t i = 0; i < QCOW2_L2_CACHE_SLOTS && k < max; i++) {
        struct qcow2_l2_slot *sl = &c->slot[i];
        if (sl == victim || sl->host_off != 0) {
            continue;
        }
        uint64_t off = slice_off + k * ss;
        if (slice_cached(c, off) || !qcow2_read_in_range(slice_off,
                                                         (k + 1) * ss)) {
            break;
        }
        if (!sl->data) {
            sl->data = malloc(ss);
            if (!sl->data) {
                break;
            }
        }
        ahead[k++] = sl;
    }
    if (k > 1 && !c->ra_buf) {
        c->ra_buf = malloc(QCOW2_L2_READAHEAD * ss);
        if (!c->ra_buf) {
            return 1;
        }
    }
    return k;
}

/*
 * The cached slot of the slice at slice_off, or NULL; *victim is then the
 * slot a miss reuses (the least recently used).  One function, so that
 * qcow2_l2_peek_locked knows which slot qcow2_l2_slice would take.
 */
static struct qcow2_l2_slot *slot_lookup(struct qcow2_l2_cache *c,
                                         uint64_t slice_off,
                                         struct qcow2_l2_slot **victim)
{
    struct qcow2_l2_slot *lru = &c->slot[0];
    for (size_t i = 0; i < QCOW2_L2_CACHE_SLOTS; i++) {
        struct qcow2_l2_slot *sl = &c->slot[i];
        if (sl->host_off == slice_off && sl->data) {
            return sl;
        }
        if (sl->last_use < lru->last_use) {
            lru = sl;
        }
    }
    *victim = lru;
    return NULL;
}

/*
 * The slice of an L2 table at host offset slice_off (slice_size bytes),
 * from the cache or the file.  A slice offset is never 0: L2 offset 0
 * means "no L2 table" and is not looked up, so 0 marks an empty slot.
 */
static int qcow2_l2_slice(struct qimg_node *node, struct qcow2_state *s,
                          uint64_t slice_off, const uint8_t **out)
{
    struct qcow2_l2_cache *c = &s->l2_cache;
    if (c->slice_size == 0) {
        c->slice_size = (size_t)min_u64(s->cluster_size, QCOW2_L2_SLICE_MAX);
    }
    struct qcow2_l2_slot *victim;
    struct qcow2_l2_slot *hit = slot_lookup(c, slice_off, &victim);
    if (hit) {
        hit->last_use = ++c->clock;
        *out = hit->data;
        return 0;
    }
    if (victim->dirty) {
        int ret = l2_write_slot(node, s, victim);
        if (ret < 0) {
            return ret;
        }
    }

    /* [QEMU] its block layer fails reads past QCOW2_MAX_IO_END. */
    if (!qcow2_read_in_range(slice_off, c->slice_size)) {
        return error_set(EIO,
                         "qcow2: could not read L2 table of '%s' at "
                         "offset %#" PRIx64,
                         node->filename, slice_off);
    }
    if (!victim->data) {
        victim->data = malloc(c->slice_size);
        if (!victim->data) {
            return error_set(ENOMEM, "Out of memory");
        }
    }
    /* The slot is empty until the read succeeds. */
    victim->host_off = 0;
    victim->last_use = 0;
    victim->dirty = false;
    struct qcow2_l2_slot *ahead[QCOW2_L2_READAHEAD];
    size_t k = readahead_slots(s, slice_off, victim, ahead);
    int ret = k > 1 ? io_pread(node->file, c->ra_buf, k * c->slice_size,
                               slice_off)
                    : io_pread(node->file, victim->data, c->slice_size,
                               slice_off);
    if (ret < 0) {
        return error_set_errno(-ret,
                               "qcow2: could not read L2 table of "
                               "'%s' at offset %#" PRIx64,
                               node->filename, slice_off);
    }
    if (k > 1) {
        memcpy(victim->data, c->ra_buf, c->slice_size);
    }
    victim->host_off = slice_off;
    victim->last_use = ++c->clock;
    for (size_t i = 1; i < k; i++) {
        memcpy(ahead[i]->data, c->ra_buf + i * c->slice_size,
               c->slice_size);
        ahead[i]->host_off = slice_off + i * c->slice_size;
        ahead[i]->last_use = victim->last_use;
        ahead[i]->dirty = false;
    }
    *out = victim->data;
    return 0;
}

int qcow2_l2_peek_locked(struct qimg_node *node, struct qcow2_state *s,
                         uint64_t slice_off, uint64_t idx, uint64_t *entry,
                         uint64_t *bitmap)
{
    struct qcow2_l2_cache *c = &s->l2_cache;
    struct qcow2_l2_slot *victim;
    if (!slot_lookup(c, slice_off, &victim) && victim->dirty) {
        return 0;
    }
    const uint8_t *p;
    int ret = qcow2_l2_slice(node, s, slice_off, &p);
    if (ret < 0) {
        return ret;
    }
    if ((idx + 1) * s->l2_entry_size > c->slice_size) {
        return 0;
    }
    p += idx * s->l2_entry_size;
    *entry = load_be64(p);
    *bitmap = s->l2_entry_size == 16 ? load_be64(p + 8) : 0;
    return 1;
}

/*
 * The type of subcluster sc of an entry (QEMU's classification), or -EIO
 * for an allocation bitmap that is invalid.  Without extended L2 entries
 * there is one subcluster and bitmap is 0.
 */
static int qcow2_classify(struct qimg_node *node,
                          const struct qcow2_state *s, uint64_t entry,
                          uint64_t bitmap, unsigned sc, uint64_t l2_off,
                          uint64_t l2_index)
{
    if (entry & QCOW2_OFLAG_COMPRESSED) {
        return QCOW2_SC_COMPRESSED;
    }
    bool extl2 = s->subclusters_per_cluster > 1;
    /*
     * Host offset 0 means "no cluster", except with an external data file
     * where offset 0 is a real one when COPIED is set.
     */
    bool has_host = (entry & QCOW2_L2E_OFFSET_MASK) != 0 ||
                    (s->has_data_file && (entry & QCOW2_OFLAG_COPIED));
    if (!extl2) {
        if (entry & QCOW2_OFLAG_ZERO) {
            return has_host && (entry & QCOW2_L2E_OFFSET_MASK)
                       ? QCOW2_SC_ZERO_ALLOC
                       : QCOW2_SC_ZERO_PLAIN;
        }
        return has_host ? QCOW2_SC_NORMAL : QCOW2_SC_UNALLOCATED;
    }
    uint64_t alloc = bitmap & QCOW2_L2_BITMAP_ALLOC_MASK;
    uint64_t zero = bitmap >> 32;
    if (has_host) {
        if (alloc & zero) {
            return corrupt(node,
                           "invalid subcluster bitmap %#" PRIx64
                           " (L2 offset %#" PRIx64 ", L2 index %#" PRIx64 ")",
                           bitmap, l2_off, l2_index);
        }
        if (alloc & (1ull << sc)) {
            return QCOW2_SC_NORMAL;
        }
        return (zero & (1ull << sc)) ? QCOW2_SC_ZERO_ALLOC
                                     : QCOW2_SC_UNALLOCATED_ALLOC;
    }
    /* Allocated subclusters need a host cluster. */
    if (alloc) {
        return corrupt(node,
                       "invalid subcluster bitmap %#" PRIx64
                       " (L2 offset %#" PRIx64 ", L2 index %#" PRIx64 ")",
                       bitmap, l2_off, l2_index);
    }
    return (zero & (1ull << sc)) ? QCOW2_SC_ZERO_PLAIN : QCOW2_SC_UNALLOCATED;
}

/*
 * Check the host cluster of a NORMAL or ZERO_ALLOC entry: no reserved
 * bits, cluster-aligned, and (being masked to 56 bits) at most
 * QCOW2_MAX_HOST_OFFSET.
 */
static int qcow2_check_host(struct qimg_node *node,
                            const struct qcow2_state *s, uint64_t entry,
                            uint64_t l2_off, uint64_t l2_index)
{
    uint64_t host = entry & QCOW2_L2E_OFFSET_MASK;
    if (entry & QCOW2_L2E_STD_RESERVED_MASK) {
        return corrupt(node,
                       "L2 entry %#" PRIx64 " has reserved bits set (L2 "
                       "offset %#" PRIx64 ", L2 index %#" PRIx64 ")",
                       entry, l2_off, l2_index);
    }
    if (!is_aligned_u64(host, s->cluster_size) ||
        host > QCOW2_MAX_HOST_OFFSET) {
        return corrupt(node,
                       "cluster allocation offset %#" PRIx64 " unaligned "
                       "(L2 offset %#" PRIx64 ", L2 index %#" PRIx64 ")",
                       host, l2_off, l2_index);
    }
    return 0;
}

int qcow2_get_mapping(struct qimg_node *node, struct qcow2_state *s,
                      uint64_t off, uint64_t len, struct qcow2_mapping *m)
{
    const uint64_t cs = s->cluster_size;
    const uint64_t scs = s->subcluster_size;
    const unsigned esize = s->l2_entry_size;
    const uint64_t cluster = off >> s->cluster_bits;
    const uint64_t l1_index = cluster >> s->l2_bits;
    const uint64_t l2_index = cluster & (s->l2_entries - 1);
    const uint64_t slice_size = min_u64(cs, QCOW2_L2_SLICE_MAX);
    const uint64_t slice_entries = slice_size / esize;
    const uint64_t first_in_slice = l2_index - l2_index % slice_entries;
    const uint64_t in_cluster = off & (cs - 1);
    /*
     * Runs end with the L2 slice: clusters left in it (this one included)
     * times cs, at most 512 * 2 MiB, so no overflow.
     */
    uint64_t left = first_in_slice + slice_entries - l2_index;
    len = min_u64(len, left * cs - in_cluster);

    memset(m, 0, sizeof(*m));
    if (l1_index >= s->l1_size || !s->l1_table) {
        m->type = QCOW2_SC_UNALLOCATED;
        m->bytes = len;
        return 0;
    }
    uint64_t l2_off = s->l1_table[l1_index] & QCOW2_L1E_OFFSET_MASK;
    if (l2_off == 0) {
        m->type = QCOW2_SC_UNALLOCATED;
        m->bytes = len;
        return 0;
    }
    if (!is_aligned_u64(l2_off, cs)) {
        return corrupt(node,
                       "L2 table offset %#" PRIx64 " unaligned (L1 index: "
                       "%#" PRIx64 ")",
                       l2_off, l1_index);
    }
    const uint8_t *slice = NULL;
    int ret = qcow2_l2_slice(node, s, l2_off + first_in_slice * esize, &slice);
    if (ret < 0) {
        return ret;
    }

    /*
     * Walk subclusters from off while the type stays the same (and the
     * host offset continues), up to len bytes.  Invariant: done bytes
     * from off have type m->type; idx/sc name the next subcluster.
     */
    uint64_t idx = l2_index;
    unsigned sc = (unsigned)((off & (cs - 1)) / scs);
    uint64_t done = 0;
    uint64_t next_host = 0;
    bool first = true;
    while (done < len && idx < first_in_slice + slice_entries) {
        const uint8_t *e = slice + (idx - first_in_slice) * esize;
        uint64_t entry = load_be64(e);
        uint64_t bitmap = esize == 16 ? load_be64(e + 8) : 0;
        int type = qcow2_classify(node, s, entry, bitmap, sc, l2_off, idx);
        if (type < 0) {
            return type;
        }
        /*
         * [spec: Standard Cluster Descriptor] bit 0 "must be 0" in v2
         * images.  [QEMU] finds the image corrupt when a lookup starts at
         * such an entry; a run that reaches one simply ends before it,
         * and the next lookup fails.
         */
        if (s->hdr.version < 3 &&
            (type == QCOW2_SC_ZERO_PLAIN || type == QCOW2_SC_ZERO_ALLOC)) {
            if (!first) {
                break;
            }
            return corrupt(node,
                           "zero cluster entry found in pre-v3 image (L2 "
                           "offset %#" PRIx64 ", L2 index %#" PRIx64 ")",
                           l2_off, idx);
        }
        uint64_t host = 0;
        bool with_host = type == QCOW2_SC_NORMAL ||
                         type == QCOW2_SC_ZERO_ALLOC ||
                         type == QCOW2_SC_UNALLOCATED_ALLOC;
        if (with_host) {
            ret = qcow2_check_host(node, s, entry, l2_off, idx);
            if (ret < 0) {
                return ret;
            }
            host = (entry & QCOW2_L2E_OFFSET_MASK) + (uint64_t)sc * scs;
        }
        if (type == QCOW2_SC_COMPRESSED) {
            /* One cluster per run: each has its own descriptor. */
            if (!first) {
                break;
            }
            m->type = QCOW2_SC_COMPRESSED;
            m->l2_entry = entry;
            m->bytes = min_u64(len, cs - in_cluster);
            return 0;
        }
        if (first) {
            m->type = (enum qcow2_sc_type)type;
            /* Within the subcluster: skip to off. */
            uint64_t skip = off & (scs - 1);
            m->host_off = host + skip;
            next_host = host + scs;
            done = scs - skip;
            first = false;
        } else {
            if ((enum qcow2_sc_type)type != m->type) {
                break;
            }
            if (with_host && host != next_host) {
                break;
            }
            next_host = host + scs;
            done += scs;
        }
        if (++sc == s->subclusters_per_cluster) {
            sc = 0;
            idx++;
        }
    }
    m->bytes = min_u64(done, len);
    return 0;
}

int qcow2_read_compressed(struct qimg_node *node, struct qcow2_state *s,
                          uint64_t l2_entry)
{
    if (s->z_valid && s->z_entry == l2_entry) {
        return 0;
    }
    if (s->has_data_file) {
        return error_set(EIO,
                         "qcow2: image '%s' is corrupt: compressed "
                         "cluster entry found in image with external "
                         "data file",
                         node->filename);
    }
    uint64_t coffset = l2_entry & s->cluster_offset_mask;
    if (coffset > QCOW2_MAX_HOST_OFFSET) {
        return corrupt(node,
                       "compressed cluster offset %#" PRIx64 " out of "
                       "range",
                       coffset);
    }
    /*
     * [spec] the count of additional sectors: at most csize_mask + 1 =
     * cluster_size / 256 sectors in all, so csize <= 2 * cluster_size.
     */
    uint64_t nb_sectors = ((l2_entry >> s->csize_shift) & s->csize_mask) + 1;
    uint64_t csize = nb_sectors * 512 - (coffset & 511);
    if (!qcow2_read_in_range(coffset, csize)) {
        return error_set(EIO,
                         "qcow2: could not read compressed cluster of "
                         "'%s' at offset %#" PRIx64,
                         node->filename, coffset);
    }
    if (!s->z_in) {
        s->z_in = malloc((size_t)s->cluster_size * 2);
        s->z_out = malloc((size_t)s->cluster_size);
        if (!s->z_in || !s->z_out) {
            free(s->z_in);
            free(s->z_out);
            s->z_in = s->z_out = NULL;
            return error_set(ENOMEM, "Out of memory");
        }
    }
    s->z_valid = false;
    /* Data may run past the end of the file; those bytes read as zero. */
    int ret = io_pread(node->file, s->z_in, (size_t)csize, coffset);
    if (ret < 0) {
        return error_set_errno(-ret,
                               "qcow2: could not read compressed "
                               "cluster of '%s' at offset %#" PRIx64,
                               node->filename, coffset);
    }
    ret = qcow2_decompress(s->hdr.compression_type, s->z_out,
                           (size_t)s->cluster_size, s->z_in, (size_t)csize);
    if (ret == -ENOMEM) {
        return error_set(ENOMEM, "Out of memory");
    }
    if (ret < 0) {
        return corrupt(node,
                       "could not decompress the cluster at offset "
                       "%#" PRIx64,
                       coffset);
    }
    s->z_valid = true;
    s->z_entry = l2_entry;
    return 0;
}
