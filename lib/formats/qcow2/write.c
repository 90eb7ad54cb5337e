/*
 * qcow2: guest writes, zero writes, discards and compressed writes
 * [spec: Cluster mapping, Extended L2 Entries, Compressed Clusters
 * Descriptor], and the flush that makes them durable in a safe order.
 *
 * A cluster is written in place only when its L2 entry says it is ours
 * alone (COPIED, not compressed); otherwise a new cluster is allocated,
 * what the write does not cover is copied in from where the guest bytes
 * came from (the old cluster, the decompressed data, the backing file or
 * zeros), and the old cluster is freed at the next flush.  With extended
 * L2 entries this happens per subcluster, so a small write over a
 * backing file copies one subcluster, not a whole cluster.
 *
 * Whole-cluster runs that need new clusters are written with one host
 * write into contiguous new clusters (the path convert takes), and the
 * partial clusters at either end of a guest write join that host write
 * when they follow on the host (see struct batch).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "core/error.h"
#include "crypto/cipher.h"
#include "driver.h"
#include "formats/qcow2/qcow2.h"
#include "util/checked.h"
#include "util/endian.h"

/* Header field offsets [spec: Header]. */
#define HDR_AUTOCLEAR_OFFSET 88
/* Extended L2 bitmap halves [spec: Extended L2 Entries]. */
#define BITMAP_ALLOC_MASK 0xffffffffull
#define BITMAP_ALL_ZEROES (0xffffffffull << 32)

int qcow2_header_update(struct qimg_node *node, uint64_t off,
                        const void *bytes, size_t len)
{
    int ret = io_pwrite(node->file, bytes, len, off);
    if (ret == 0) {
        ret = node_sync(node, node->file);
    }
    if (ret < 0) {
        return error_set_errno(-ret, "%s: could not update the qcow2 header",
                               node->filename);
    }
    return 0;
}

int qcow2_header_rewrite(struct qimg_node *node, struct qcow2_state *s)
{
    uint8_t *buf = malloc((size_t)s->cluster_size);
    if (!buf) {
        return error_set(ENOMEM, "Out of memory");
    }
    /*
     * [QEMU] the whole header, extensions and name included, must fit in
     * the first cluster: ENOSPC ("No space left in the file header").
     */
    int64_t n = qcow2_header_encode(&s->hdr, buf, (size_t)s->cluster_size);
    int ret = n < 0 ? (int)n
                    : qcow2_header_update(node, 0, buf,
                                          (size_t)s->cluster_size);
    free(buf);
    return ret;
}

int qcow2_set_incompat(struct qimg_node *node, struct qcow2_state *s,
                       uint64_t features)
{
    uint8_t be[8];
    store_be64(be, features);
    int ret = qcow2_header_update(node, QCOW2_HDR_INCOMPAT_OFFSET, be, 8);
    if (ret == 0) {
        s->hdr.incompatible_features = features;
    }
    return ret;
}

static bool lazy_refcounts(const struct qcow2_state *s)
{
    return (s->hdr.compatible_features & QCOW2_COMPAT_LAZY_REFCOUNTS) != 0;
}

int qcow2_write_begin(struct qimg_node *node, struct qcow2_state *s)
{
    if (s->write_ready) {
        return 0;
    }
    if (s->hdr.crypt_method != QCOW2_CRYPT_NONE && !s->cipher &&
        !(s->open_flags & QIMG_OPEN_NO_IO)) {
        return error_set(EINVAL, "%s: the image was opened without its key",
                         node->filename);
    }
    if (s->has_data_file && !s->data_file) {
        return error_set(EIO, "%s: the external data file is not open",
                         node->filename);
    }
    if (s->open_flags & QIMG_OPEN_NO_IO) {
        return error_set(EINVAL, "%s: image opened for metadata only",
                         node->filename);
    }
    /*
     * [spec: autoclear features] a writer that does not maintain a
     * feature clears its bit.  qimg maintains both it knows: a raw data
     * file stays raw, persistent bitmaps record the writes
     * (bitmap_write.c).
     */
    uint64_t keep = s->hdr.autoclear_features &
                    (QCOW2_AUTOCLEAR_DATA_FILE_RAW | QCOW2_AUTOCLEAR_BITMAPS);
    if (s->hdr.version >= 3 && s->hdr.autoclear_features != keep) {
        uint8_t be[8];
        store_be64(be, keep);
        int ret = qcow2_header_update(node, HDR_AUTOCLEAR_OFFSET, be, 8);
        if (ret < 0) {
            return ret;
        }
        s->hdr.autoclear_features = keep;
    }
    /*
     * [spec: dirty bit] refcounts on disk may be wrong after a crash with
     * lazy refcounts: they must be rebuilt before anything is allocated.
     */
    if (s->hdr.incompatible_features & QCOW2_INCOMPAT_DIRTY) {
        int ret = qcow2_repair_dirty(node, s);
        if (ret < 0) {
            return ret;
        }
    }
    int ret = qcow2_refcount_init(node, s);
    if (ret < 0) {
        return ret;
    }
    s->cow_buf = malloc((size_t)s->cluster_size);
    s->zbuf = malloc((size_t)s->cluster_size);
    if (!s->cow_buf || !s->zbuf) {
        return error_set(ENOMEM, "Out of memory");
    }
    s->tables_apart = qcow2_overlap_tables_apart(s);
    s->write_ready = true;
    return 0;
}

void qcow2_write_free(struct qcow2_state *s)
{
    qcow2_refcount_free(s);
    free(s->cow_buf);
    free(s->zbuf);
    free(s->cow_buf2);
    s->cow_buf = s->zbuf = s->cow_buf2 = NULL;
    s->write_ready = false;
}

int qcow2_repair_dirty(struct qimg_node *node, struct qcow2_state *s)
{
    /*
     * A writable open repairs a dirty image already (qcow2_open); this is
     * for one opened to be checked and then written: repair it now, as
     * QEMU would have at the open.  qcow2_repair() leaves the write path
     * unloaded, so write_begin loads the rebuilt refcounts next.
     */
    struct qimg_check_result res;
    int ret = qcow2_repair(node, s,
                           QIMG_CHECK_FIX_LEAKS | QIMG_CHECK_FIX_ERRORS, NULL,
                           NULL, &res);
    if (ret < 0) {
        return error_set_errno(-ret, "Could not repair dirty image");
    }
    return 0;
}

int qcow2_write_prepare(struct qimg_node *node, struct qcow2_state *s)
{
    if (s->corrupt) {
        return error_set(EIO, "qcow2: image '%s' is marked corrupt",
                         node->filename);
    }
    int ret = qcow2_write_begin(node, s);
    if (ret < 0) {
        return ret;
    }
    if (s->nb_pending_free >= QCOW2_MAX_PENDING_FREES) {
        ret = qcow2_write_flush(node, s);
        if (ret < 0) {
            return ret;
        }
    }
    /*
     * [spec: lazy refcounts] refcounts on disk may be stale while the
     * dirty bit is set; it is set before the first such write.
     */
    if (lazy_refcounts(s) && !s->dirty_set) {
        ret = qcow2_set_incompat(node, s,
                           s->hdr.incompatible_features | QCOW2_INCOMPAT_DIRTY);
        if (ret < 0) {
            return ret;
        }
        s->dirty_set = true;
    }
    return 0;
}

static int l1_writeback(struct qimg_node *node, struct qcow2_state *s)
{
    if (s->l1_dirty_hi <= s->l1_dirty_lo) {
        return 0;
    }
    uint64_t lo = s->l1_dirty_lo, n = s->l1_dirty_hi - lo;
    /* An L1 table placed on other metadata (the header) is never written. */
    int ret = qcow2_overlap_check(node, s, s->l1_table_offset + lo * 8, n * 8,
                                  QCOW2_OL_ACTIVE_L1);
    if (ret < 0) {
        return ret;
    }
    uint8_t *buf = malloc((size_t)n * 8);
    if (!buf) {
        return error_set(ENOMEM, "Out of memory");
    }
    for (uint64_t i = 0; i < n; i++) {
        store_be64(buf + i * 8, s->l1_table[lo + i]);
    }
    ret = io_pwrite(node->file, buf, (size_t)n * 8,
                    s->l1_table_offset + lo * 8);
    free(buf);
    if (ret < 0) {
        return error_set_errno(-ret, "%s: could not write the L1 table",
                               node->filename);
    }
    s->l1_dirty_lo = s->l1_dirty_hi = 0;
    return 0;
}

static int sync_file(struct qimg_node *node, struct qimg_io *io)
{
    int ret = node_sync(node, io);
    if (ret < 0) {
        return error_set_errno(-ret, "%s: flush failed", io->filename);
    }
    return 0;
}

int qcow2_write_flush(struct qimg_node *node, struct qcow2_state *s)
{
    int ret = 0;
    if (s->data_file) {
        ret = sync_file(node, s->data_file);
    }
    if (!s->write_ready || s->corrupt) {
        /* Nothing cached to write, or nothing may be written any more. */
        return ret < 0 ? ret : sync_file(node, node->file);
    }
    /*
     * Data, bitmap tables and directory (new clusters) and new refcounts,
     * then the tables naming them, then the header naming the directory.
     */
    if (ret == 0) {
        ret = qcow2_bitmaps_store(node, s, s->bm_resizing);
    }
    if (ret == 0) {
        ret = qcow2_refcount_writeback(node, s);
    }
    if (ret == 0) {
        ret = sync_file(node, node->file);
    }
    if (ret == 0) {
        ret = qcow2_l2_writeback(node, s);
    }
    if (ret == 0) {
        ret = sync_file(node, node->file);
    }
    if (ret == 0) {
        ret = l1_writeback(node, s);
    }
    if (ret == 0) {
        ret = sync_file(node, node->file);
    }
    if (ret == 0) {
        ret = qcow2_bitmaps_commit(node, s); /* synced */
    }
    /* No table on disk names the freed clusters any more. */
    if (ret == 0 && s->nb_pending_free > 0) {
        ret = qcow2_refcount_apply_frees(node, s);
        if (ret == 0) {
            ret = sync_file(node, node->file);
        }
    }
    if (ret == 0 && s->dirty_set) {
        ret = qcow2_set_incompat(node, s,
                           s->hdr.incompatible_features &
                               ~QCOW2_INCOMPAT_DIRTY);
        s->dirty_set = false;
    }
    return ret;
}

/* ---- L2 entries for writing ------------------------------------------- */

void qcow2_l1_mark_dirty(struct qcow2_state *s, uint64_t i)
{
    if (s->l1_dirty_hi <= s->l1_dirty_lo) {
        s->l1_dirty_lo = i;
        s->l1_dirty_hi = i + 1;
    } else {
        s->l1_dirty_lo = min_u64(s->l1_dirty_lo, i);
        s->l1_dirty_hi = max_u64(s->l1_dirty_hi, i + 1);
    }
}

/*
 * The L2 table of L1 index i, ours alone: allocated (zeroed on disk)
 * when there is none, copied when it is shared with a snapshot.
 */
static int l2_table_rw(struct qimg_node *node, struct qcow2_state *s,
                       uint64_t i, uint64_t *l2_off)
{
    const uint64_t cs = s->cluster_size;
    if (i >= s->l1_size || !s->l1_table) {
        return qcow2_signal_corruption(node, s,
                                       "L1 index %#" PRIx64 " is past the "
                                       "L1 table",
                                       i);
    }
    uint64_t e = s->l1_table[i];
    uint64_t old = e & QCOW2_L1E_OFFSET_MASK;
    if (old && !is_aligned_u64(old, cs)) {
        return qcow2_signal_corruption(node, s,
                                       "L2 table offset %#" PRIx64
                                       " unaligned (L1 index: %#" PRIx64
                                       ")",
                                       old, i);
    }
    if (old && (e & QCOW2_OFLAG_COPIED)) {
        *l2_off = old;
        return 0;
    }
    uint64_t nw = 0;
    int ret = qcow2_alloc_clusters(node, s, 1, 0, &nw, NULL);
    if (ret < 0) {
        return ret;
    }
    qcow2_l2_invalidate(s, nw, cs);
    if (old == 0) {
        ret = io_pwrite_zeroes(node->file, nw, cs, false);
    } else {
        /* A shared table is never dirty here: it was never written. */
        ret = qcow2_read_in_range(old, cs)
                  ? io_pread(node->file, s->cow_buf, (size_t)cs, old)
                  : -EIO;
        if (ret == 0) {
            ret = io_pwrite(node->file, s->cow_buf, (size_t)cs, nw);
        }
    }
    if (ret < 0) {
        return error_set_errno(-ret, "%s: could not write an L2 table",
                               node->filename);
    }
    if (old) {
        ret = qcow2_free_later(node, s, old, cs);
        if (ret < 0) {
            return ret;
        }
    }
    s->l1_table[i] = nw | QCOW2_OFLAG_COPIED;
    qcow2_l1_mark_dirty(s, i);
    *l2_off = nw;
    return 0;
}

int qcow2_l2_entry_rw(struct qimg_node *node, struct qcow2_state *s,
                      uint64_t cluster, uint8_t **entry)
{
    uint64_t l2_off = 0;
    int ret = l2_table_rw(node, s, cluster >> s->l2_bits, &l2_off);
    if (ret < 0) {
        return ret;
    }
    const uint64_t esize = s->l2_entry_size;
    const uint64_t per_slice =
        min_u64(s->cluster_size, QCOW2_L2_SLICE_MAX) / esize;
    uint64_t idx = cluster & (s->l2_entries - 1);
    uint64_t first = idx - idx % per_slice;
    uint8_t *slice;
    ret = qcow2_l2_slice_rw(node, s, l2_off + first * esize, &slice);
    if (ret < 0) {
        return ret;
    }
    *entry = slice + (idx - first) * esize;
    return 0;
}

/* ---- The state of one cluster ----------------------------------------- */

/* What a guest cluster is now, decoded and checked from its L2 entry. */
struct cluster_state {
    uint64_t entry;
    uint64_t bitmap;
    bool compressed;
    bool has_host;
    uint64_t host;
    /* Ours alone: may be written in place. */
    bool owned;
};

/* Subcluster kinds for the write path. */
enum sc_kind { SC_UNALLOC, SC_ZERO, SC_DATA, SC_COMPRESSED };

static int load_cluster(struct qimg_node *node, struct qcow2_state *s,
                        uint64_t cluster, struct cluster_state *cs_out)
{
    uint8_t *p;
    int ret = qcow2_l2_entry_rw(node, s, cluster, &p);
    if (ret < 0) {
        return ret;
    }
    struct cluster_state c = {0};
    c.entry = load_be64(p);
    c.bitmap = s->l2_entry_size == 16 ? load_be64(p + 8) : 0;
    c.compressed = (c.entry & QCOW2_OFLAG_COMPRESSED) != 0;
    if (c.compressed) {
        if (s->has_data_file || c.bitmap != 0) {
            return qcow2_signal_corruption(node, s,
                                           "compressed cluster entry %#" PRIx64
                                           " is invalid here",
                                           c.entry);
        }
        *cs_out = c;
        return 0;
    }
    c.host = c.entry & QCOW2_L2E_OFFSET_MASK;
    c.has_host = c.host != 0 ||
                 (s->has_data_file && (c.entry & QCOW2_OFLAG_COPIED));
    if (c.entry & QCOW2_L2E_STD_RESERVED_MASK) {
        return qcow2_signal_corruption(node, s,
                                       "L2 entry %#" PRIx64 " has reserved "
                                       "bits set",
                                       c.entry);
    }
    if (c.has_host && !is_aligned_u64(c.host, s->cluster_size)) {
        return qcow2_signal_corruption(node, s,
                                       "cluster allocation offset %#" PRIx64
                                       " unaligned",
                                       c.host);
    }
    if (s->subclusters_per_cluster > 1) {
        uint64_t alloc = c.bitmap & BITMAP_ALLOC_MASK;
        if ((alloc & (c.bitmap >> 32)) || (alloc && !c.has_host) ||
            (c.entry & QCOW2_OFLAG_ZERO)) {
            return qcow2_signal_corruption(node, s,
                                           "invalid subcluster bitmap "
                                           "%#" PRIx64,
                                           c.bitmap);
        }
    } else if (s->hdr.version < 3 && (c.entry & QCOW2_OFLAG_ZERO)) {
        return qcow2_signal_corruption(node, s,
                                       "zero cluster entry found in pre-v3 "
                                       "image");
    }
    if (s->has_data_file && c.has_host &&
        c.host != cluster << s->cluster_bits) {
        return qcow2_signal_corruption(node, s,
                                       "data file cluster %#" PRIx64
                                       " is not at its guest offset",
                                       c.host);
    }
    c.owned = c.has_host && (c.entry & QCOW2_OFLAG_COPIED);
    *cs_out = c;
    return 0;
}

static enum sc_kind sc_kind_of(const struct qcow2_state *s,
                               const struct cluster_state *c, unsigned j)
{
    if (c->compressed) {
        return SC_COMPRESSED;
    }
    if (s->subclusters_per_cluster == 1) {
        if (c->entry & QCOW2_OFLAG_ZERO) {
            return SC_ZERO;
        }
        return c->has_host ? SC_DATA : SC_UNALLOC;
    }
    if (c->bitmap & (1ull << j)) {
        return SC_DATA;
    }
    return (c->bitmap & (1ull << (32 + j))) ? SC_ZERO : SC_UNALLOC;
}

/* Store a new entry (the slice is fetched again: it may have moved). */
static int store_cluster(struct qimg_node *node, struct qcow2_state *s,
                         uint64_t cluster, uint64_t entry, uint64_t bitmap)
{
    uint8_t *p;
    int ret = qcow2_l2_entry_rw(node, s, cluster, &p);
    if (ret < 0) {
        return ret;
    }
    store_be64(p, entry);
    if (s->l2_entry_size == 16) {
        store_be64(p + 8, bitmap);
    }
    return 0;
}

/* Drop the reference an entry holds on its host cluster (at the flush). */
static int release_old(struct qimg_node *node, struct qcow2_state *s,
                       const struct cluster_state *c)
{
    if (s->has_data_file) {
        return 0;
    }
    if (c->compressed) {
        return qcow2_free_compressed_later(node, s, c->entry);
    }
    if (c->has_host) {
        return qcow2_free_later(node, s, c->host, s->cluster_size);
    }
    return 0;
}

static struct qimg_io *data_io(struct qimg_node *node, struct qcow2_state *s)
{
    return s->data_file ? s->data_file : node->file;
}

static int write_host(struct qimg_node *node, struct qcow2_state *s,
                      const void *buf, uint64_t len, uint64_t host)
{
    int ret = io_pwrite(data_io(node, s), buf, (size_t)len, host);
    if (ret < 0) {
        return error_set_errno(-ret,
                               "%s: could not write guest data at host "
                               "offset %#" PRIx64,
                               data_io(node, s)->filename, host);
    }
    return 0;
}

/* The whole-cluster mask of an extended L2 bitmap. */
static uint64_t all_alloc(const struct qcow2_state *s)
{
    return s->subclusters_per_cluster > 1 ? BITMAP_ALLOC_MASK : 0;
}

/* ---- Write batches ---------------------------------------------------- */

/*
 * The clusters of one guest write are prepared first (entries loaded,
 * new clusters allocated, bytes to copy in read), their host bytes
 * queued as segments; then every run of segments that follow each other
 * on the host goes out as one write; then the L2 entries are stored and
 * old clusters released, in cluster order.  So a convert chunk that
 * starts inside a cluster it owns already and ends inside a new one is
 * one host write (it was three: the head in place, the whole clusters,
 * the tail with its zero padding), and no entry names a cluster before
 * its data was issued, as before.
 *
 * Invariants: a batch's clusters are in one L2 table, so only its first
 * L2 access can copy a shared table (l2_table_rw, through cow_buf), and
 * that comes before any bytes of the batch are in cow_buf.  Segments
 * point into the caller's buffer or into one of the two COW buffers, at
 * most one partial cluster each, untouched until the batch is written.
 * Allocations happen in the same order as cluster by cluster, so the
 * file's layout (and its bytes) are the same.
 */
#define BATCH_SEGS IO_IOV_MAX
#define BATCH_STORES 16

struct batch_seg {
    uint64_t host;
    uint64_t guest; /* for the IVs of legacy AES */
    const uint8_t *p;
    uint64_t len;
};

enum batch_store_kind {
    STORE_PARTIAL, /* one cluster: entry and bitmap, maybe release old */
    STORE_OWNED,   /* count owned clusters rewritten in place from host */
    STORE_NEW,     /* count new clusters from host, old ones released */
};

struct batch_store {
    enum batch_store_kind kind;
    uint64_t cluster, count, host;
    uint64_t entry, bitmap;   /* STORE_PARTIAL */
    bool release;             /* STORE_PARTIAL: the old cluster goes */
    struct cluster_state old; /* STORE_PARTIAL */
};

struct batch {
    struct batch_seg seg[BATCH_SEGS];
    int nb_seg;
    struct batch_store st[BATCH_STORES];
    int nb_st;
    unsigned nb_cow; /* COW buffers holding bytes of the batch */
    uint64_t table;  /* the L1 index of its clusters (nb_st > 0) */
};

static void batch_init(struct batch *b)
{
    b->nb_seg = 0;
    b->nb_st = 0;
    b->nb_cow = 0;
    b->table = 0;
}

/* Queue host bytes; merged with the last segment when both follow on. */
static void batch_seg(struct batch *b, uint64_t host, uint64_t guest,
                      const uint8_t *p, uint64_t len)
{
    if (b->nb_seg > 0) {
        struct batch_seg *l = &b->seg[b->nb_seg - 1];
        if (l->host + l->len == host && l->guest + l->len == guest &&
            l->p + l->len == p) {
            l->len += len;
            return;
        }
    }
    b->seg[b->nb_seg++] = (struct batch_seg){host, guest, p, len};
}

static struct batch_store *batch_store(struct batch *b,
                                       enum batch_store_kind kind,
                                       uint64_t cluster)
{
    struct batch_store *st = &b->st[b->nb_st++];
    memset(st, 0, sizeof(*st));
    st->kind = kind;
    st->cluster = cluster;
    return st;
}

/* A COW buffer no segment of the batch points into yet. */
static uint8_t *batch_cow_buf(struct qcow2_state *s, struct batch *b)
{
    if (b->nb_cow == 0) {
        return s->cow_buf;
    }
    if (!s->cow_buf2) {
        s->cow_buf2 = malloc((size_t)s->cluster_size);
        if (!s->cow_buf2) {
            error_set(ENOMEM, "Out of memory");
        }
    }
    return s->cow_buf2;
}

/*
 * An encrypted image's segments (whole sectors: requests are aligned by
 * encrypted_align) go out encrypted from a bounce buffer, each run of
 * host-contiguous ones in one write.
 */
static int batch_write_encrypted(struct qimg_node *node,
                                 struct qcow2_state *s, const struct batch *b)
{
    int ret = 0;
    for (int k = 0; ret == 0 && k < b->nb_seg;) {
        int end = k + 1;
        uint64_t host = b->seg[k].host;
        uint64_t total = b->seg[k].len;
        while (end < b->nb_seg && b->seg[end].host == host + total) {
            total += b->seg[end].len;
            end++;
        }
        uint8_t *bounce = malloc((size_t)total);
        if (!bounce) {
            return error_set(ENOMEM, "Out of memory");
        }
        uint64_t at = 0;
        for (int i = k; ret == 0 && i < end; i++) {
            const struct batch_seg *sg = &b->seg[i];
            if (sg->len % CRYPTO_SECTOR_SIZE != 0 ||
                sg->host % CRYPTO_SECTOR_SIZE != 0) {
                ret = error_set(EIO, "%s: an encrypted write is not whole "
                                "sectors", node->filename);
                break;
            }
            memcpy(bounce + at, sg->p, (size_t)sg->len);
            uint64_t iv = s->cipher_host_sectors ? sg->host : sg->guest;
            ret = sector_cipher_encrypt(s->cipher, iv / CRYPTO_SECTOR_SIZE,
                                        bounce + at, (size_t)sg->len);
            at += sg->len;
        }
        if (ret == 0) {
            ret = write_host(node, s, bounce, total, host);
        }
        free(bounce);
        k = end;
    }
    return ret;
}

/* The segments: one write per run that is contiguous on the host. */
static int batch_write(struct qimg_node *node, struct qcow2_state *s,
                       const struct batch *b)
{
    if (s->cipher) {
        return batch_write_encrypted(node, s, b);
    }
    int k = 0;
    while (k < b->nb_seg) {
        int end = k + 1;
        uint64_t host = b->seg[k].host;
        uint64_t next = host + b->seg[k].len;
        while (end < b->nb_seg && b->seg[end].host == next) {
            next += b->seg[end].len;
            end++;
        }
        if (end == k + 1) {
            int ret = write_host(node, s, b->seg[k].p, b->seg[k].len, host);
            if (ret < 0) {
                return ret;
            }
            k = end;
            continue;
        }
        struct iovec iov[BATCH_SEGS];
        for (int i = k; i < end; i++) {
            iov[i - k].iov_base = (void *)b->seg[i].p;
            iov[i - k].iov_len = (size_t)b->seg[i].len;
        }
        int ret = io_pwritev(data_io(node, s), iov, end - k, host);
        if (ret < 0) {
            return error_set_errno(-ret,
                                   "%s: could not write guest data at host "
                                   "offset %#" PRIx64,
                                   data_io(node, s)->filename, host);
        }
        k = end;
    }
    return 0;
}

/* Write the batch's data, then store its entries; empties it. */
static int batch_finish(struct qimg_node *node, struct qcow2_state *s,
                        struct batch *b)
{
    const uint64_t cs = s->cluster_size;
    int ret = batch_write(node, s, b);
    for (int k = 0; ret == 0 && k < b->nb_st; k++) {
        const struct batch_store *st = &b->st[k];
        switch (st->kind) {
        case STORE_PARTIAL:
            ret = store_cluster(node, s, st->cluster, st->entry, st->bitmap);
            if (ret == 0 && st->release) {
                ret = release_old(node, s, &st->old);
            }
            if (st->old.compressed) {
                s->z_valid = false;
            }
            break;
        case STORE_OWNED:
            for (uint64_t i = 0; ret == 0 && i < st->count; i++) {
                ret = store_cluster(node, s, st->cluster + i,
                                    (st->host + i * cs) | QCOW2_OFLAG_COPIED,
                                    all_alloc(s));
            }
            break;
        case STORE_NEW:
            for (uint64_t i = 0; ret == 0 && i < st->count; i++) {
                struct cluster_state d = {0};
                ret = load_cluster(node, s, st->cluster + i, &d);
                if (ret == 0) {
                    ret = store_cluster(node, s, st->cluster + i,
                                        (st->host + i * cs) |
                                            QCOW2_OFLAG_COPIED,
                                        all_alloc(s));
                }
                if (ret == 0) {
                    ret = release_old(node, s, &d);
                }
                if (d.compressed) {
                    s->z_valid = false;
                }
            }
            break;
        }
    }
    batch_init(b);
    return ret;
}

/*
 * The current guest bytes [lo, lo + n) of cluster (offsets within the
 * cluster, inside one subcluster) into buf.
 */
static int read_old(struct qimg_node *node, struct qcow2_state *s,
                    uint64_t cluster, const struct cluster_state *c,
                    enum sc_kind kind, uint8_t *buf, uint64_t lo, uint64_t n)
{
    uint64_t guest = (cluster << s->cluster_bits) + lo;
    int ret = 0;
    switch (kind) {
    case SC_UNALLOC:
        ret = node_read_below(node, buf, (size_t)n, guest);
        break;
    case SC_ZERO:
        memset(buf, 0, (size_t)n);
        break;
    case SC_DATA:
        ret = io_pread(data_io(node, s), buf, (size_t)n, c->host + lo);
        if (ret < 0) {
            ret = error_set_errno(-ret, "%s: could not read guest data",
                                  data_io(node, s)->filename);
        }
        /* Whole sectors here: requests are aligned by encrypted_align. */
        if (ret == 0 && s->cipher) {
            uint64_t iv = s->cipher_host_sectors ? c->host + lo : guest;
            ret = sector_cipher_decrypt(s->cipher, iv / CRYPTO_SECTOR_SIZE,
                                        buf, (size_t)n);
        }
        break;
    case SC_COMPRESSED:
        ret = qcow2_read_compressed(node, s, c->entry);
        if (ret == 0) {
            memcpy(buf, s->z_out + lo, (size_t)n);
        }
        break;
    }
    return ret;
}

/*
 * Part of subcluster [lo, lo + scs) of cluster written into its new home
 * at target (no L2 entry names it yet) where the rest of it reads as
 * zero: on a file written past the page cache, zero the subcluster there
 * with one fallocate and let only the new bytes go out, as QEMU does,
 * rather than the whole zero-padded subcluster (a 4 KiB write into a new
 * 64 KiB cluster moved 64 KiB).  Buffered files keep the padded write:
 * one request that only fills the cache is cheaper than two.  1 when
 * zeroed (the caller writes [in, in + n) of it from buf), 0 when the
 * caller pads as usual, -errno.
 */
static int zero_fill_new(struct qimg_node *node, struct qcow2_state *s,
                         uint64_t cluster, enum sc_kind k, const uint8_t *buf,
                         uint64_t in, uint64_t n, uint64_t target, uint64_t lo)
{
    struct qimg_io *io = data_io(node, s);
    const uint64_t align = io->direct_align;
    const uint64_t scs = s->subcluster_size;
    uint64_t wlo = max_u64(in, lo), whi = min_u64(in + n, lo + scs);
    /* Encrypted zeros are not zero bytes on the host. */
    if (align == 0 || !buf || s->cipher || (wlo == lo && whi == lo + scs) ||
        (target + wlo) % align != 0 || (whi - wlo) % align != 0 ||
        (uintptr_t)(buf + (wlo - in)) % align != 0) {
        return 0;
    }
    if (k == SC_UNALLOC) {
        int zero = node_below_is_zero(node, (cluster << s->cluster_bits) + lo,
                                      scs);
        if (zero <= 0) {
            return zero;
        }
    } else if (k != SC_ZERO) {
        return 0; /* old data to copy in */
    }
    int ret = io_pwrite_zeroes(io, target + lo, scs, false);
    return ret < 0 ? ret : 1;
}

/*
 * Write buf (NULL: zeros) over [in, in + n) of one guest cluster, the
 * general case: per subcluster, the bytes the write does not cover are
 * filled from the old contents when the subcluster gets a new home.
 * Queued in batch b (which has room for a segment per subcluster and a
 * store, and a COW buffer free).
 */
static int write_partial(struct qimg_node *node, struct qcow2_state *s,
                         struct batch *b, uint64_t cluster,
                         const uint8_t *buf, uint64_t in, uint64_t n)
{
    struct cluster_state c;
    int ret = load_cluster(node, s, cluster, &c);
    if (ret < 0) {
        return ret;
    }
    const uint64_t scs = s->subcluster_size;
    const unsigned spc = s->subclusters_per_cluster;
    /* With a data file the cluster's home is fixed: its guest offset. */
    bool in_place = c.owned || s->has_data_file;
    uint64_t target = s->has_data_file ? cluster << s->cluster_bits : c.host;
    if (!in_place) {
        ret = qcow2_alloc_clusters(node, s, 1, 0, &target, NULL);
        if (ret < 0) {
            return ret;
        }
    }
    /* Taken at its first use: an in-place data write needs none. */
    uint8_t *cb = NULL;
    uint64_t alloc_bits = 0;
    /* Byte runs of the cluster written in place, for the overlap check. */
    uint64_t run_lo = 0, run_hi = 0;
    for (unsigned j = 0; j < spc; j++) {
        uint64_t lo = (uint64_t)j * scs, hi = lo + scs;
        enum sc_kind k = sc_kind_of(s, &c, j);
        bool touched = in < hi && lo < in + n;
        bool needs = touched || (!in_place && (k == SC_DATA ||
                                               k == SC_COMPRESSED));
        if (!needs) {
            if (k == SC_DATA) {
                alloc_bits |= 1ull << j;
            }
            continue;
        }
        uint64_t a = lo, e = hi; /* bytes of the cluster to write for j */
        const uint8_t *from = NULL; /* where they are */
        int zeroed = touched && !in_place ? zero_fill_new(node, s, cluster, k,
                                                          buf, in, n, target,
                                                          lo)
                                          : 0;
        if (zeroed < 0) {
            return zeroed;
        }
        if (zeroed || (touched && in_place && k == SC_DATA && buf)) {
            /*
             * Ours already, or zeroed on the host: only the new bytes go
             * out, from buf.
             */
            a = max_u64(in, lo);
            e = min_u64(in + n, hi);
            from = buf + (a - in);
        } else {
            if (!cb) {
                cb = batch_cow_buf(s, b);
                if (!cb) {
                    return -ENOMEM;
                }
                b->nb_cow++;
            }
            if (touched) {
                uint64_t wlo = max_u64(in, lo), whi = min_u64(in + n, hi);
                if (in_place && k == SC_DATA) {
                    /* Ours already: only the new (zero) bytes go out. */
                    a = wlo;
                    e = whi;
                } else if (wlo > lo || whi < hi) {
                    ret = read_old(node, s, cluster, &c, k, cb + lo, lo,
                                   scs);
                    if (ret < 0) {
                        return ret;
                    }
                }
                if (buf) {
                    memcpy(cb + wlo, buf + (wlo - in), (size_t)(whi - wlo));
                } else {
                    memset(cb + wlo, 0, (size_t)(whi - wlo));
                }
            } else {
                ret = read_old(node, s, cluster, &c, k, cb + lo, lo, scs);
                if (ret < 0) {
                    return ret;
                }
            }
            from = cb + a;
        }
        alloc_bits |= 1ull << j;
        batch_seg(b, target + a, (cluster << s->cluster_bits) + a, from,
                  e - a);
        if (run_hi == a && run_hi > run_lo) {
            run_hi = e;
            continue;
        }
        if (run_hi > run_lo && in_place && !s->has_data_file) {
            ret = qcow2_overlap_check(node, s, target + run_lo,
                                      run_hi - run_lo, 0);
            if (ret < 0) {
                return ret;
            }
        }
        run_lo = a;
        run_hi = e;
    }
    if (run_hi > run_lo && in_place && !s->has_data_file) {
        ret = qcow2_overlap_check(node, s, target + run_lo, run_hi - run_lo,
                                  0);
        if (ret < 0) {
            return ret;
        }
    }
    struct batch_store *st = batch_store(b, STORE_PARTIAL, cluster);
    st->entry = target | QCOW2_OFLAG_COPIED;
    if (spc > 1) {
        uint64_t zero = c.compressed ? 0 : (c.bitmap >> 32);
        st->bitmap = alloc_bits | ((zero & ~alloc_bits) << 32);
    }
    st->release = !in_place;
    st->old = c;
    return 0;
}

/* write_partial on its own (the zero paths): queued and written at once. */
static int write_partial_now(struct qimg_node *node, struct qcow2_state *s,
                             uint64_t cluster, const uint8_t *buf,
                             uint64_t in, uint64_t n)
{
    struct batch b;
    batch_init(&b);
    int ret = write_partial(node, s, &b, cluster, buf, in, n);
    return ret < 0 ? ret : batch_finish(node, s, &b);
}

/*
 * Whole clusters [cluster, cluster + count) from buf, count > 0, all in
 * one L2 slice, queued in batch b (room for a segment and a store).
 * Returns the clusters queued (a prefix of one kind: new contiguous
 * clusters, or owned clusters that are contiguous on the host), or
 * -errno.
 */
static int64_t write_whole(struct qimg_node *node, struct qcow2_state *s,
                           struct batch *b, uint64_t cluster,
                           const uint8_t *buf, uint64_t count)
{
    const uint64_t cs = s->cluster_size;
    struct cluster_state c;
    int ret = load_cluster(node, s, cluster, &c);
    if (ret < 0) {
        return ret;
    }
    uint64_t n = 1;
    if (s->has_data_file || c.owned) {
        /* In place: extend over owned clusters that follow on the host. */
        uint64_t host = s->has_data_file ? cluster << s->cluster_bits
                                         : c.host;
        while (n < count) {
            struct cluster_state d;
            ret = load_cluster(node, s, cluster + n, &d);
            if (ret < 0) {
                return ret;
            }
            if (!s->has_data_file && (!d.owned || d.host != host + n * cs)) {
                break;
            }
            n++;
        }
        if (!s->has_data_file) {
            ret = qcow2_overlap_check(node, s, host, n * cs, 0);
            if (ret < 0) {
                return ret;
            }
        }
        batch_seg(b, host, cluster << s->cluster_bits, buf, n * cs);
        struct batch_store *st = batch_store(b, STORE_OWNED, cluster);
        st->count = n;
        st->host = host;
        return (int64_t)n;
    }
    /* New clusters: as many of the following non-owned ones as fit. */
    while (n < count) {
        struct cluster_state d;
        ret = load_cluster(node, s, cluster + n, &d);
        if (ret < 0) {
            return ret;
        }
        if (d.owned) {
            break;
        }
        n++;
    }
    uint64_t host = 0, got = 0;
    ret = qcow2_alloc_clusters(node, s, n, QCOW2_ALLOC_UPTO, &host, &got);
    if (ret < 0) {
        return ret;
    }
    batch_seg(b, host, cluster << s->cluster_bits, buf, got * cs);
    struct batch_store *st = batch_store(b, STORE_NEW, cluster);
    st->count = got;
    st->host = host;
    return (int64_t)got;
}

/* Clusters from cluster to the end of its L2 slice. */
static uint64_t slice_left(const struct qcow2_state *s, uint64_t cluster)
{
    uint64_t per_slice =
        min_u64(s->cluster_size, QCOW2_L2_SLICE_MAX) / s->l2_entry_size;
    return per_slice - (cluster & (s->l2_entries - 1)) % per_slice;
}

static int pwrite_aligned(struct qimg_node *node, struct qcow2_state *s,
                          const void *buf, size_t len, uint64_t off);

/*
 * [QEMU] an encrypted image takes whole 512-byte sectors only (its
 * request alignment): a request's partial first and last sectors are
 * read (decrypted), merged with buf (NULL: zeros) and written whole.
 * Returns 1 when it wrote the request, 0 when it was aligned already.
 */
static int encrypted_align(struct qimg_node *node, struct qcow2_state *s,
                           const uint8_t *buf, uint64_t len, uint64_t off)
{
    const uint64_t ss = CRYPTO_SECTOR_SIZE;
    if (!s->cipher || ((off | len) & (ss - 1)) == 0) {
        return 0;
    }
    uint64_t start = align_down_u64(off, ss);
    uint64_t end = align_down_u64(off + len + ss - 1, ss);
    uint8_t *bounce = malloc((size_t)(end - start));
    if (!bounce) {
        return error_set(ENOMEM, "Out of memory");
    }
    /* Not through the driver ops: they would take s->lock again. */
    int ret = qcow2_pread(node, bounce, (size_t)ss, start);
    if (ret == 0 && end - ss > start) {
        ret = qcow2_pread(node, bounce + (end - ss - start),
                               (size_t)ss, end - ss);
    }
    if (ret == 0) {
        if (buf) {
            memcpy(bounce + (off - start), buf, (size_t)len);
        } else {
            memset(bounce + (off - start), 0, (size_t)len);
        }
        ret = pwrite_aligned(node, s, bounce, (size_t)(end - start), start);
    }
    free(bounce);
    return ret < 0 ? ret : 1;
}

int qcow2_pwrite(struct qimg_node *node, const void *buf, size_t len,
                 uint64_t off)
{
    struct qcow2_state *s = node->opaque;
    int ret = encrypted_align(node, s, buf, len, off);
    return ret < 0 ? ret : ret == 1 ? 0 : pwrite_aligned(node, s, buf, len, off);
}

static int pwrite_aligned(struct qimg_node *node, struct qcow2_state *s,
                          const void *buf, size_t len, uint64_t off)
{
    int ret = qcow2_write_prepare(node, s);
    const uint8_t *p = buf;
    const uint64_t cs = s->cluster_size;
    struct batch b;
    batch_init(&b);
    while (ret == 0 && len > 0) {
        uint64_t cluster = off >> s->cluster_bits;
        uint64_t in = off & (cs - 1);
        uint64_t table = cluster >> s->l2_bits;
        /* A new batch at a new L2 table, or when this one is full. */
        if (b.nb_st > 0 &&
            (table != b.table || b.nb_st == BATCH_STORES ||
             b.nb_seg + (int)s->subclusters_per_cluster > BATCH_SEGS ||
             b.nb_cow == 2)) {
            ret = batch_finish(node, s, &b);
            if (ret < 0) {
                return ret;
            }
        }
        b.table = table;
        if (in == 0 && len >= cs) {
            uint64_t count = min_u64(len / cs, slice_left(s, cluster));
            int64_t done = write_whole(node, s, &b, cluster, p, count);
            if (done < 0) {
                return (int)done;
            }
            p += done * cs;
            off += done * cs;
            len -= done * cs;
            continue;
        }
        uint64_t n = min_u64(len, cs - in);
        ret = write_partial(node, s, &b, cluster, p, in, n);
        p += n;
        off += n;
        len -= n;
    }
    if (ret == 0) {
        ret = batch_finish(node, s, &b);
    }
    return ret;
}

/* ---- In-place writes under the shared lock ------------------------------ */

/* At most this many clusters per shared write (host offsets on the stack). */
#define IN_PLACE_MAX_CLUSTERS 32

/*
 * Does writing [lo, hi) of cluster (offsets within it) over its entry
 * change nothing but data?  That is what the exclusive path would do
 * with it (write_whole's or write_partial's in-place case) storing the
 * same entry again: standard, COPIED, not compressed, no zero flag, no
 * reserved bits, a host cluster (with a data file: at the guest offset),
 * every touched subcluster allocated.  Anything else, valid or not, is
 * left to the exclusive path, which also reports corruption.
 */
static bool in_place_cluster(const struct qcow2_state *s, uint64_t cluster,
                             uint64_t entry, uint64_t bitmap, uint64_t lo,
                             uint64_t hi, uint64_t *host)
{
    if ((entry & (QCOW2_OFLAG_COMPRESSED | QCOW2_OFLAG_ZERO |
                  QCOW2_L2E_STD_RESERVED_MASK)) ||
        !(entry & QCOW2_OFLAG_COPIED)) {
        return false;
    }
    uint64_t h = entry & QCOW2_L2E_OFFSET_MASK;
    if (s->has_data_file ? h != cluster << s->cluster_bits
                         : h == 0 || !is_aligned_u64(h, s->cluster_size)) {
        return false;
    }
    if (s->subclusters_per_cluster > 1) {
        uint64_t alloc = bitmap & BITMAP_ALLOC_MASK;
        if (alloc & (bitmap >> 32)) {
            return false;
        }
        for (uint64_t j = lo / s->subcluster_size;
             j <= (hi - 1) / s->subcluster_size; j++) {
            if (!(alloc & (1ull << j))) {
                return false;
            }
        }
    }
    *host = h;
    return true;
}

int qcow2_pwrite_in_place(struct qimg_node *node, const void *buf,
                          size_t len, uint64_t off, bool probe)
{
    struct qcow2_state *s = node->opaque;
    /*
     * What qcow2_write_prepare would do first must be done already: the
     * write path set up, the lazy refcounts' dirty bit set.  Persistent
     * bitmaps record writes under the exclusive lock (bitmap_write.c).  Encrypted data goes through a bounce
     * buffer and the sector alignment: not here.
     */
    if (len == 0 || !s->write_ready || s->corrupt || !s->l1_table ||
        s->bitmaps.nb > 0 ||
        s->hdr.crypt_method != QCOW2_CRYPT_NONE || s->cipher ||
        (lazy_refcounts(s) && !s->dirty_set)) {
        return 0;
    }
    const uint64_t cs = s->cluster_size;
    const uint64_t first = off >> s->cluster_bits;
    const uint64_t last = (off + len - 1) >> s->cluster_bits;
    if (last - first >= IN_PLACE_MAX_CLUSTERS) {
        return 0;
    }
    const uint64_t esize = s->l2_entry_size;
    const uint64_t per_slice = min_u64(cs, QCOW2_L2_SLICE_MAX) / esize;
    uint64_t host[IN_PLACE_MAX_CLUSTERS];
    int ret = 1;
    pthread_mutex_lock(&s->l2_lock);
    for (uint64_t cl = first; ret == 1 && cl <= last; cl++) {
        uint64_t i = cl >> s->l2_bits;
        uint64_t l1e = i < s->l1_size ? s->l1_table[i] : 0;
        uint64_t l2 = l1e & QCOW2_L1E_OFFSET_MASK;
        /* A shared L2 table is copied first: the exclusive path. */
        if (!(l1e & QCOW2_OFLAG_COPIED) || l2 == 0 ||
            !is_aligned_u64(l2, cs)) {
            ret = 0;
            break;
        }
        uint64_t idx = cl & (s->l2_entries - 1);
        uint64_t in_slice = idx % per_slice;
        uint64_t entry = 0, bitmap = 0;
        ret = qcow2_l2_peek_locked(node, s, l2 + (idx - in_slice) * esize,
                                   in_slice, &entry, &bitmap);
        uint64_t lo = cl == first ? off & (cs - 1) : 0;
        uint64_t hi = cl == last ? ((off + len - 1) & (cs - 1)) + 1 : cs;
        if (ret == 1 &&
            !in_place_cluster(s, cl, entry, bitmap, lo, hi,
                              &host[cl - first])) {
            ret = 0;
        }
    }
    pthread_mutex_unlock(&s->l2_lock);
    if (ret != 1) {
        /* A failed L2 read too: the exclusive path retries, reports. */
        return 0;
    }
    /*
     * Runs of clusters that follow each other on the host, each one
     * write; all checked against the metadata before any is written.
     */
    const uint64_t n = last - first + 1;
    for (int pass = 0; pass < (probe ? 1 : 2); pass++) {
        const uint8_t *p = buf;
        uint64_t pos = off;
        for (uint64_t k = 0; k < n;) {
            uint64_t e = k + 1;
            while (e < n && host[e] == host[e - 1] + cs) {
                e++;
            }
            uint64_t end = min_u64(off + len, (first + e) << s->cluster_bits);
            uint64_t h = host[k] + (pos & (cs - 1));
            if (pass == 0) {
                if (!s->has_data_file &&
                    qcow2_overlap_what(s, h, end - pos, 0)) {
                    return 0;
                }
            } else {
                ret = write_host(node, s, p, end - pos, h);
                if (ret < 0) {
                    return ret;
                }
            }
            p += end - pos;
            pos = end;
            k = e;
        }
    }
    return 1;
}

/* ---- Zero writes and discards ------------------------------------------ */

/*
 * Does the granule [lo, lo + n) of the cluster read as zero by its block
 * status (QEMU's is_zero: zero entries, or unallocated over zeros)?
 * 1, 0 or -errno.
 */
static int granule_reads_zero(struct qimg_node *node, struct qcow2_state *s,
                              const struct cluster_state *c, uint64_t cluster,
                              uint64_t lo, uint64_t n)
{
    const uint64_t scs = s->subcluster_size;
    uint64_t guest = cluster << s->cluster_bits;
    for (uint64_t j = lo / scs; j <= (lo + n - 1) / scs; j++) {
        enum sc_kind k = sc_kind_of(s, c, (unsigned)j);
        if (k == SC_ZERO) {
            continue;
        }
        if (k != SC_UNALLOC) {
            return 0;
        }
        uint64_t a = max_u64(lo, j * scs), b = min_u64(lo + n, (j + 1) * scs);
        int ret = node_below_is_zero(node, guest + a, b - a);
        if (ret <= 0) {
            return ret;
        }
    }
    return 1;
}

/*
 * Make a whole cluster read as zero.  unmap: the host cluster may go.
 * discard: QEMU's discard rules (v3 marks it zero only when it was
 * allocated or has a backing file; v2 unallocates it).
 */
static int zero_cluster(struct qimg_node *node, struct qcow2_state *s,
                        uint64_t cluster, bool unmap, bool discard)
{
    struct cluster_state c;
    int ret = load_cluster(node, s, cluster, &c);
    if (ret < 0) {
        return ret;
    }
    const bool extl2 = s->subclusters_per_cluster > 1;
    const bool v3 = s->hdr.version >= 3;
    bool allocated = c.compressed || c.has_host;
    if (discard) {
        /*
         * [QEMU] discards nothing where it could change what the guest
         * reads: with a data file (its bytes stay), or in a v2 image over
         * a backing file (no zero flag to hide the backing data).
         */
        if (s->has_data_file || (!v3 && node->backing)) {
            return 0;
        }
        uint64_t entry = 0, bitmap = 0;
        if (v3 && (node->backing || allocated)) {
            if (extl2) {
                bitmap = BITMAP_ALL_ZEROES;
            } else {
                entry = QCOW2_OFLAG_ZERO;
            }
        } else if (!allocated) {
            return 0;
        }
        if (entry == c.entry && bitmap == c.bitmap) {
            return 0;
        }
        ret = store_cluster(node, s, cluster, entry, bitmap);
        return ret < 0 ? ret : release_old(node, s, &c);
    }
    if (!v3) {
        /*
         * [QEMU] v2 has no zero flag: without a backing file the cluster
         * is unallocated (it then reads as zero); otherwise zeros are
         * written.
         */
        if (!node->backing && !s->has_data_file) {
            if (c.entry == 0) {
                return 0;
            }
            ret = store_cluster(node, s, cluster, 0, 0);
            return ret < 0 ? ret : release_old(node, s, &c);
        }
        return write_partial_now(node, s, cluster, NULL, 0,
                                 s->cluster_size);
    }
    bool keep = c.owned && (!unmap || s->has_data_file);
    uint64_t entry, bitmap = 0;
    if (extl2) {
        entry = keep ? (c.host | QCOW2_OFLAG_COPIED) : 0;
        bitmap = BITMAP_ALL_ZEROES;
    } else {
        entry = keep ? (c.host | QCOW2_OFLAG_COPIED | QCOW2_OFLAG_ZERO)
                     : QCOW2_OFLAG_ZERO;
    }
    if (keep && s->has_data_file &&
        (s->hdr.autoclear_features & QCOW2_AUTOCLEAR_DATA_FILE_RAW)) {
        /* A raw data file must read as the guest does. */
        ret = io_pwrite_zeroes(s->data_file, cluster << s->cluster_bits,
                               s->cluster_size, unmap);
        if (ret < 0) {
            return error_set_errno(-ret, "%s: could not write zeroes",
                                   s->data_file->filename);
        }
    }
    ret = store_cluster(node, s, cluster, entry, bitmap);
    if (ret == 0 && !keep) {
        ret = release_old(node, s, &c);
    }
    if (c.compressed) {
        s->z_valid = false;
    }
    return ret;
}

/*
 * Zero whole subclusters [j0, j1] of an extended-L2 cluster in its
 * bitmap (the host cluster, if any, stays).
 */
static int zero_subclusters(struct qimg_node *node, struct qcow2_state *s,
                            uint64_t cluster, unsigned j0, unsigned j1)
{
    struct cluster_state c;
    int ret = load_cluster(node, s, cluster, &c);
    if (ret < 0) {
        return ret;
    }
    if (c.compressed || (c.has_host && !c.owned)) {
        /* Shared or compressed: rewrite the cluster with zeros there. */
        uint64_t scs = s->subcluster_size;
        return write_partial_now(node, s, cluster, NULL, j0 * scs,
                                 (uint64_t)(j1 - j0 + 1) * scs);
    }
    uint64_t mask = 0;
    for (unsigned j = j0; j <= j1; j++) {
        mask |= 1ull << j;
    }
    uint64_t bitmap = (c.bitmap & ~mask) | (mask << 32);
    return store_cluster(node, s, cluster, c.entry, bitmap);
}

/*
 * Zero [lo, hi) of one cluster as QEMU's block layer and driver do it
 * together: whole granules (clusters, or subclusters with extended L2
 * entries) get zero entries; a partial granule gets one too if all of it
 * already reads as zero, else zeros are written over the bytes asked.
 * v2 over a backing file has nothing to mark: zeros are written.
 */
static int zero_in_cluster(struct qimg_node *node, struct qcow2_state *s,
                           uint64_t cluster, uint64_t lo, uint64_t hi,
                           bool unmap)
{
    const bool extl2 = s->subclusters_per_cluster > 1;
    const uint64_t g = extl2 ? s->subcluster_size : s->cluster_size;
    if (s->hdr.version < 3 && node->backing) {
        return write_partial_now(node, s, cluster, NULL, lo, hi - lo);
    }
    int ret = 0;
    uint64_t pos = lo;
    while (ret == 0 && pos < hi) {
        uint64_t glo = align_down_u64(pos, g);
        uint64_t end = min_u64(hi, glo + g);
        bool whole = pos == glo && end == glo + g;
        if (!whole) {
            struct cluster_state c;
            ret = load_cluster(node, s, cluster, &c);
            if (ret == 0) {
                ret = granule_reads_zero(node, s, &c, cluster, glo, g);
            }
            if (ret < 0) {
                break;
            }
            if (ret == 0) {
                ret = write_partial_now(node, s, cluster, NULL, pos,
                                        end - pos);
                pos = end;
                continue;
            }
            ret = 0;
            end = glo + g;
        } else {
            /* A run of whole granules. */
            end = glo + (hi - glo) / g * g;
        }
        if (glo == 0 && end == s->cluster_size) {
            ret = zero_cluster(node, s, cluster, unmap, false);
        } else {
            ret = zero_subclusters(node, s, cluster, (unsigned)(glo / g),
                                   (unsigned)((end - 1) / g));
        }
        pos = end;
    }
    return ret;
}

int qcow2_pwrite_zeroes(struct qimg_node *node, uint64_t off, uint64_t len,
                        unsigned flags)
{
    struct qcow2_state *s = node->opaque;
    int ret = qcow2_write_prepare(node, s);
    /* Encrypted: partial sectors at either end are zeroed as data. */
    if (ret == 0 && s->cipher && (off & (CRYPTO_SECTOR_SIZE - 1))) {
        uint64_t n = min_u64(len, CRYPTO_SECTOR_SIZE -
                                      (off & (CRYPTO_SECTOR_SIZE - 1)));
        ret = encrypted_align(node, s, NULL, n, off);
        ret = ret < 0 ? ret : 0;
        off += n;
        len -= n;
    }
    if (ret == 0 && s->cipher && (len & (CRYPTO_SECTOR_SIZE - 1))) {
        uint64_t n = len & (CRYPTO_SECTOR_SIZE - 1);
        ret = encrypted_align(node, s, NULL, n, off + len - n);
        ret = ret < 0 ? ret : 0;
        len -= n;
    }
    const uint64_t cs = s->cluster_size;
    bool unmap = (flags & QIMG_ZERO_MAY_UNMAP) != 0;
    while (ret == 0 && len > 0) {
        uint64_t cluster = off >> s->cluster_bits;
        uint64_t in = off & (cs - 1);
        uint64_t n = min_u64(len, cs - in);
        uint64_t hi = in + n;
        /* Bytes past the image's end may be zeroed along. */
        if (off + n >= node->size) {
            hi = cs;
        }
        if (s->hdr.version < 3 && (flags & ZERO_UNDER_NEW_BACKING)) {
            /* v2 has no zero entries to keep a backing file hidden. */
            ret = write_partial_now(node, s, cluster, NULL, in, hi - in);
        } else {
            ret = zero_in_cluster(node, s, cluster, in, hi, unmap);
        }
        off += n;
        len -= n;
    }
    return ret;
}

int qcow2_pdiscard(struct qimg_node *node, uint64_t off, uint64_t len)
{
    struct qcow2_state *s = node->opaque;
    int ret = qcow2_write_prepare(node, s);
    const uint64_t cs = s->cluster_size;
    /* Only whole clusters (or the image's cut last one) are discarded. */
    uint64_t start = div_round_up_u64(off, cs) * cs;
    uint64_t end = off + len >= node->size ? node->size
                                           : align_down_u64(off + len, cs);
    for (uint64_t o = start; ret == 0 && o < end; o += cs) {
        ret = zero_cluster(node, s, o >> s->cluster_bits, true, true);
    }
    return ret;
}

int qcow2_discard_all(struct qimg_node *node, struct qcow2_state *s)
{
    int ret = qcow2_write_prepare(node, s);
    const uint64_t nb_clusters =
        div_round_up_u64(node->size, s->cluster_size);
    for (uint64_t i = 0; ret == 0 && i < s->l1_size; i++) {
        /* No L2 table: nothing is allocated there, nothing to copy. */
        if ((s->l1_table[i] & QCOW2_L1E_OFFSET_MASK) == 0) {
            continue;
        }
        uint64_t first = i << s->l2_bits;
        uint64_t end = min_u64(first + s->l2_entries, nb_clusters);
        for (uint64_t cl = first; ret == 0 && cl < end; cl++) {
            struct cluster_state c;
            ret = load_cluster(node, s, cl, &c);
            if (ret < 0 || (c.entry == 0 && c.bitmap == 0)) {
                continue;
            }
            ret = store_cluster(node, s, cl, 0, 0);
            if (ret == 0) {
                ret = release_old(node, s, &c);
            }
            if (c.compressed) {
                s->z_valid = false;
            }
        }
    }
    return ret < 0 ? ret : qcow2_write_flush(node, s);
}

/* ---- Compressed writes ------------------------------------------------- */

/* The checks every compressed write makes first. */
static int compressed_request_ok(struct qimg_node *node,
                                 const struct qcow2_state *s, size_t len,
                                 uint64_t off)
{
    const uint64_t cs = s->cluster_size;
    if (s->has_data_file) {
        return error_set(ENOTSUP,
                         "%s: compressed writes are not supported with an "
                         "external data file",
                         node->filename);
    }
    /* Compressed clusters are stored unencrypted: QEMU refuses them. */
    if (s->hdr.crypt_method != QCOW2_CRYPT_NONE) {
        return error_set(ENOTSUP, "%s: compressed writes are not supported "
                         "in encrypted images", node->filename);
    }
    if (!is_aligned_u64(off, cs) || len > cs ||
        (len < cs && off + len != node->size)) {
        return error_set(EINVAL,
                         "%s: compressed writes must be whole clusters",
                         node->filename);
    }
    return 0;
}

/*
 * Compress into out with a cap of at most cluster_size - 1 bytes (data
 * that does not shrink below that is stored plain, as QEMU stores it).
 * The tail cluster is compressed zero-padded, as QEMU does; padding
 * needs a copy, made on the heap because this runs on any thread.
 */
int64_t qcow2_compress_cluster(struct qimg_node *node, const void *buf,
                               size_t len, uint64_t off, void *out,
                               size_t cap)
{
    const struct qcow2_state *s = node->opaque;
    const size_t cs = (size_t)s->cluster_size;
    int ret = compressed_request_ok(node, s, len, off);
    if (ret < 0) {
        return ret;
    }
    const void *src = buf;
    uint8_t *padded = NULL;
    if (len < cs) {
        padded = malloc(cs);
        if (!padded) {
            return error_set(ENOMEM, "Out of memory");
        }
        memcpy(padded, buf, len);
        memset(padded + len, 0, cs - len);
        src = padded;
    }
    int64_t csize = qcow2_compress(s->hdr.compression_type, s->z_level,
                                   s->z_flags, out,
                                   cap < cs - 1 ? cap : cs - 1, src, cs);
    free(padded);
    if (csize == -ENOSPC) {
        return 0;
    }
    if (csize < 0) {
        return error_set((int)-csize, "%s: could not compress a cluster",
                         node->filename);
    }
    return csize;
}

/*
 * Set before the compressed writes start (the fields are read by
 * qcow2_compress_cluster on other threads without a lock).
 */
int qcow2_set_compression(struct qimg_node *node, int level, unsigned flags)
{
    struct qcow2_state *s = node->opaque;
    const char *type =
        s->hdr.compression_type == QCOW2_COMPRESSION_ZSTD ? "zstd" : "zlib";
    int ret = qcow2_compression_check(s->hdr.compression_type, level, flags);
    if (ret == -ERANGE) {
        int max = s->hdr.compression_type == QCOW2_COMPRESSION_ZSTD ? 22
                  : (flags & QIMG_COMPRESS_LIBDEFLATE)
                      ? QCOW2_LIBDEFLATE_LEVEL_MAX
                      : 9;
        return error_set(ERANGE, "%s: compression level %d is out of "
                         "range for %s%s (1 to %d)", node->filename, level,
                         type,
                         (flags & QIMG_COMPRESS_LIBDEFLATE) ? " (libdeflate)"
                                                            : "",
                         max);
    }
    if (ret == -ENOTSUP) {
        return error_set(ENOTSUP, "libdeflate is not available in this "
                         "build");
    }
    if (ret < 0) {
        return error_set(EINVAL, "%s: the libdeflate encoder is for zlib "
                         "compression only (the image uses %s)",
                         node->filename, type);
    }
    s->z_level = level;
    s->z_flags = flags;
    return 0;
}

int qcow2_pwrite_precompressed(struct qimg_node *node, const void *data,
                               size_t csize, size_t len, uint64_t off)
{
    struct qcow2_state *s = node->opaque;
    int ret = compressed_request_ok(node, s, len, off);
    if (ret < 0) {
        return ret;
    }
    if (csize == 0 || csize >= s->cluster_size) {
        return error_set(EINVAL, "%s: bad compressed cluster size %zu",
                         node->filename, csize);
    }
    ret = qcow2_write_prepare(node, s);
    if (ret < 0) {
        return ret;
    }
    uint64_t cluster = off >> s->cluster_bits;
    struct cluster_state c;
    ret = load_cluster(node, s, cluster, &c);
    if (ret < 0) {
        return ret;
    }
    uint64_t host = 0;
    ret = qcow2_alloc_bytes(node, s, (uint64_t)csize, &host);
    if (ret < 0) {
        return ret;
    }
    if (host > s->cluster_offset_mask) {
        return error_set(EFBIG, "%s: compressed data offset too large",
                         node->filename);
    }
    ret = write_host(node, s, data, (uint64_t)csize, host);
    if (ret < 0) {
        return ret;
    }
    /* [spec] the count of 512-byte sectors after the first. */
    uint64_t extra = ((host + (uint64_t)csize - 1) >> 9) - (host >> 9);
    uint64_t entry = QCOW2_OFLAG_COMPRESSED | (extra << s->csize_shift) | host;
    ret = store_cluster(node, s, cluster, entry, 0);
    if (ret == 0) {
        ret = release_old(node, s, &c);
    }
    s->z_valid = false;
    return ret;
}

/*
 * [QEMU] the end of the compressed writes: the file grows to a whole
 * sector, so that sector-based readers see all of the last compressed
 * cluster.
 */
int qcow2_compressed_end(struct qimg_node *node)
{
    int64_t size = io_get_size(node->file);
    if (size < 0) {
        return (int)size;
    }
    uint64_t padded = ((uint64_t)size + 511) / 512 * 512;
    return padded == (uint64_t)size ? 0 : io_truncate(node->file, padded);
}

int qcow2_pwrite_compressed(struct qimg_node *node, const void *buf,
                            size_t len, uint64_t off)
{
    struct qcow2_state *s = node->opaque;
    /* The first write allocates zbuf. */
    int ret = qcow2_write_prepare(node, s);
    if (ret < 0) {
        return ret;
    }
    int64_t csize = qcow2_compress_cluster(node, buf, len, off, s->zbuf,
                                           (size_t)s->cluster_size - 1);
    if (csize < 0) {
        return (int)csize;
    }
    if (csize == 0) {
        return qcow2_pwrite(node, buf, len, off);
    }
    return qcow2_pwrite_precompressed(node, s->zbuf, (size_t)csize, len,
                                      off);
}
