/*
 * qcow2: the format driver.  This step opens any image QEMU writes (v2
 * and v3, every option) far enough to answer "qemu-img info" exactly:
 * header, extensions, snapshots, bitmaps, backing file, data file.  Every
 * value read from the image is validated before it sizes an allocation.
 *
 * Guest reads map through cluster.c (L1/L2 walk, L2 cache, compressed
 * clusters); writes through write.c and refcount.c, resizing through
 * resize.c.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "crypto/cipher.h"
#include "driver.h"
#include "formats/qcow2/qcow2.h"
#include "util/checked.h"
#include "util/endian.h"
#include "util/path.h"

/* The first read of the snapshot table; most tables are far smaller. */
#define SNAPSHOT_READ_START (64u * 1024)
/*
 * The most of the table qcow2_snapshots_decode() can consume before it
 * fails with "Snapshot table is too big": the limit, one entry, padding.
 */
#define SNAPSHOT_READ_MAX                                                      \
    ((size_t)QCOW2_MAX_SNAPSHOTS_SIZE + QCOW2_SNAPSHOT_MAX_ENTRY + 8)

static int qcow2_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    /* [QEMU] probes a zero-padded buffer: missing bytes read as zero. */
    uint8_t h[8] = {0};
    memcpy(h, buf, (size_t)min_u64(len, sizeof(h)));
    return load_be32(h) == QCOW2_MAGIC && load_be32(h + 4) >= 2 ? 100 : 0;
}

/*
 * Read metadata.  what is QEMU's message for a failed read; a read QEMU's
 * block layer would refuse (past QCOW2_MAX_IO_END) fails the same way.
 */
static int read_meta(struct qimg_io *io, void *buf, size_t len, uint64_t off,
                     const char *what)
{
    if (!qcow2_read_in_range(off, len)) {
        return error_set_errno(EIO, "%s", what);
    }
    int ret = io_pread(io, buf, len, off);
    if (ret < 0) {
        return error_set_errno(-ret, "%s", what);
    }
    return 0;
}

static void state_free(struct qcow2_state *s)
{
    if (!s) {
        return;
    }
    qcow2_header_free(&s->hdr);
    qcow2_snapshots_free(&s->snapshots);
    qcow2_bitmaps_free(&s->bitmaps);
    free(s->l1_table);
    qcow2_write_free(s);
    qcow2_bitmaps_write_free(s);
    qcow2_cluster_free(s);
    qcow2_crypto_close(s);
    io_close(s->data_file);
    pthread_mutex_destroy(&s->l2_lock);
    pthread_rwlock_destroy(&s->lock);
    free(s);
}

/*
 * The state with its locks.  Writers are preferred: with readers first
 * (glibc's default) a stream of in-place writes would keep an allocating
 * write, or a flush, waiting for as long as it lasts.
 */
static struct qcow2_state *state_new(void)
{
    struct qcow2_state *s = calloc(1, sizeof(*s));
    if (!s) {
        return NULL;
    }
    pthread_rwlockattr_t attr;
    bool ok = pthread_rwlockattr_init(&attr) == 0;
    if (ok) {
        ok = pthread_rwlockattr_setkind_np(
                 &attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP) == 0 &&
             pthread_rwlock_init(&s->lock, &attr) == 0;
        pthread_rwlockattr_destroy(&attr);
    }
    if (!ok) {
        free(s);
        return NULL;
    }
    if (pthread_mutex_init(&s->l2_lock, NULL) != 0) {
        pthread_rwlock_destroy(&s->lock);
        free(s);
        return NULL;
    }
    return s;
}

/* Derived values [spec: Cluster mapping, Extended L2 Entries]. */
static void init_geometry(struct qcow2_state *s)
{
    const struct qcow2_header *h = &s->hdr;
    bool extl2 = (h->incompatible_features & QCOW2_INCOMPAT_EXTL2) != 0;

    s->cluster_bits = h->cluster_bits;
    s->cluster_size = h->cluster_size;
    s->subclusters_per_cluster = extl2 ? QCOW2_EXTL2_SUBCLUSTERS : 1;
    s->subcluster_size = s->cluster_size / s->subclusters_per_cluster;
    s->subcluster_bits = s->cluster_bits - (extl2 ? 5 : 0);
    s->l2_entry_size = extl2 ? 16 : 8;
    s->l2_bits = s->cluster_bits - (extl2 ? 4 : 3);
    s->l2_entries = (uint64_t)1 << s->l2_bits;
    /* [spec: Compressed Clusters Descriptor] x = 62 - (cluster_bits - 8) */
    s->csize_shift = 62 - (s->cluster_bits - 8);
    s->csize_mask = ((uint64_t)1 << (s->cluster_bits - 8)) - 1;
    s->cluster_offset_mask = ((uint64_t)1 << s->csize_shift) - 1;
    s->l1_vm_state_index = qcow2_size_to_l1(h->size, h->cluster_bits, extl2);

    s->l1_size = h->l1_size;
    s->l1_table_offset = h->l1_table_offset;
    s->refcount_order = h->refcount_order;
    s->refcount_table_offset = h->refcount_table_offset;
    s->refcount_table_entries = (uint64_t)h->refcount_table_clusters
                                << (h->cluster_bits - 3);
    s->has_data_file =
        (h->incompatible_features & QCOW2_INCOMPAT_DATA_FILE) != 0;
}

/*
 * The external data file [spec: Header, incompatible bit 2].  QEMU 7.2
 * (with the CVE-2024-4467 fix) does not open it for metadata-only opens,
 * and takes the name stored in the image as a plain file name, relative
 * to the working directory.  qimg refuses names that look like another
 * protocol or a json: description rather than looking for such a file.
 */
static int open_data_file(struct qimg_node *node, struct qcow2_state *s,
                          unsigned flags)
{
    if (!s->has_data_file || (flags & QIMG_OPEN_NO_IO)) {
        return 0;
    }
    /* qcow2_header_decode() made sure the name is there. */
    const char *name = s->hdr.data_file;
    if (flags & QIMG_OPEN_NO_EXTERNAL) {
        return error_set(EPERM,
                         "Could not open data file: the image names "
                         "data file '%s' and external references are "
                         "refused",
                         name);
    }
    if (name[0] == '\0') {
        return error_set(EINVAL, "The 'file' block driver requires a file "
                                 "name");
    }
    if (path_is_protocol(name)) {
        return error_set(ENOTSUP,
                         "Could not open data file: '%s' is not a "
                         "plain local file name",
                         name);
    }
    unsigned io_flags = node->writable ? IO_RDWR : 0;
    if (flags & QIMG_OPEN_FORCE_SHARE) {
        io_flags |= IO_NO_LOCK;
    }
    return io_file_open(name, io_flags, &s->data_file);
}

/* The active L1 table, at most QCOW2_MAX_L1_SIZE (checked by decode). */
static int load_l1(struct qimg_node *node, struct qcow2_state *s)
{
    if (s->l1_size == 0) {
        return 0;
    }
    size_t bytes = (size_t)s->l1_size * sizeof(uint64_t);
    uint64_t *t = malloc(bytes);
    if (!t) {
        return error_set(ENOMEM, "Could not allocate L1 table");
    }
    int ret = read_meta(node->file, t, bytes, s->l1_table_offset,
                        "Could not read L1 table");
    if (ret < 0) {
        free(t);
        return ret;
    }
    /* Decode in place: each slot is read before it is written. */
    for (uint32_t i = 0; i < s->l1_size; i++) {
        t[i] = load_be64((const uint8_t *)t + (size_t)i * 8);
    }
    s->l1_table = t;
    return 0;
}

/*
 * The snapshot table, read in growing windows: the decoder says how much
 * more it needs, and gives up by itself past SNAPSHOT_READ_MAX.
 */
int qcow2_read_snapshot_table(struct qimg_node *node, struct qcow2_state *s)
{
    const struct qcow2_header *h = &s->hdr;
    if (h->nb_snapshots == 0) {
        return 0;
    }
    /* Bytes QEMU could read at all from the table start. */
    uint64_t readable = h->snapshots_offset <= QCOW2_MAX_IO_END
                            ? QCOW2_MAX_IO_END - h->snapshots_offset
                            : 0;
    size_t want = SNAPSHOT_READ_START;
    for (;;) {
        uint8_t *buf = malloc(want);
        if (!buf) {
            return error_set(ENOMEM, "Out of memory");
        }
        /* Past what QEMU can read the decoder fails before looking. */
        size_t n = (size_t)min_u64(want, readable);
        memset(buf + n, 0, want - n);
        int ret = n ? read_meta(node->file, buf, n, h->snapshots_offset,
                                "Failed to read snapshot table")
                    : 0;
        size_t needed = 0;
        if (ret == 0) {
            ret = qcow2_snapshots_decode(buf, want, h->snapshots_offset,
                                         h->nb_snapshots, h->size & ~511ull,
                                         &s->snapshots, &needed);
        }
        free(buf);
        if (ret != -ENOBUFS) {
            return ret;
        }
        if (want >= SNAPSHOT_READ_MAX) {
            /* Cannot happen: the decoder stops at the size limit. */
            return error_set(EIO, "Failed to read snapshot table");
        }
        want = (size_t)min_u64(max_u64(needed, (uint64_t)want * 2),
                               SNAPSHOT_READ_MAX);
    }
}

/*
 * Persistent bitmaps [spec: Bitmaps].  QEMU loads every bitmap at open,
 * so a bad directory or bitmap table makes even "info" fail; the same
 * checks are made here.  The bitmap data itself is not needed.
 */
static int read_bitmaps(struct qimg_node *node, struct qcow2_state *s)
{
    const struct qcow2_header *h = &s->hdr;
    if (h->nb_bitmaps == 0) {
        return 0;
    }
    int ret = qcow2_bitmap_dir_check_size(h->bitmap_directory_size);
    if (ret < 0) {
        return ret;
    }
    /* At most QCOW2_MAX_BITMAP_DIRECTORY_SIZE, checked just above. */
    size_t dir_size = (size_t)h->bitmap_directory_size;
    uint8_t *dir = malloc(dir_size);
    if (!dir) {
        return error_set(ENOMEM, "Failed to allocate space for bitmap "
                                 "directory");
    }
    ret = read_meta(node->file, dir, dir_size, h->bitmap_directory_offset,
                    "Failed to read bitmap directory");
    if (ret == 0) {
        ret = qcow2_bitmaps_decode(dir, dir_size, h->nb_bitmaps,
                                   s->cluster_size, node->size, &s->bitmaps);
    }
    free(dir);

    for (uint32_t i = 0; ret == 0 && i < s->bitmaps.nb; i++) {
        const struct qcow2_bitmap *bm = &s->bitmaps.bm[i];
        ret = qcow2_bitmap_check_name(&s->bitmaps, i);
        if (ret <= 0) {
            continue;
        }
        /*
         * table_size * cluster_size <= 512 MiB was checked, so the table
         * is at most 8 MiB (1 Mi entries at 512-byte clusters).
         */
        size_t bytes = (size_t)bm->table_size * 8;
        uint8_t *table = malloc(bytes);
        if (!table) {
            return error_set(ENOMEM, "Out of memory");
        }
        /* The read QEMU makes, with its EIO rule. */
        if (!qcow2_read_in_range(bm->table_offset, bytes)) {
            ret = -EIO;
        } else {
            ret = io_pread(node->file, table, bytes, bm->table_offset);
        }
        if (ret < 0) {
            ret = error_set_errno(-ret,
                                  "Could not read bitmap_table table "
                                  "from image for bitmap '%s'",
                                  bm->name);
        } else {
            ret = qcow2_bitmap_check_table(bm, table, s->cluster_size,
                                           node->size);
        }
        free(table);
    }
    return ret;
}

/*
 * QEMU's qcow2 cache options (--image-opts): checked as QEMU checks
 * them, then left alone, as qimg's metadata cache sizes itself (they
 * change speed, never what is read or written).
 */
static int take_cache_opts(struct qimg_node *node,
                           const struct qcow2_state *s)
{
    bool has_all, has_l2, has_rc, has_entry;
    uint64_t all, l2, rc, entry;
    int ret = node_opt_take_size(node, "cache-size", &has_all, &all);
    if (ret == 0) {
        ret = node_opt_take_size(node, "l2-cache-size", &has_l2, &l2);
    }
    if (ret == 0) {
        ret = node_opt_take_size(node, "refcount-cache-size", &has_rc, &rc);
    }
    if (ret == 0) {
        ret = node_opt_take_size(node, "l2-cache-entry-size", &has_entry,
                            &entry);
    }
    if (ret < 0) {
        return ret;
    }
    const char *interval = node_opt_take(node, "cache-clean-interval");
    if (interval) {
        char *end;
        errno = 0;
        /* [QEMU] a negative number wraps, as strtoull's, to too big. */
        unsigned long long n = strtoull(interval, &end, 0);
        if (!*interval || *end || errno == ERANGE) {
            return error_set(EINVAL, "Parameter 'cache-clean-interval' "
                             "expects a number");
        }
        if (n > UINT_MAX) {
            return error_set(EINVAL, "Cache clean interval too big");
        }
    }
    if (has_all && has_l2 && has_rc) {
        return error_set(EINVAL, "cache-size, l2-cache-size and "
                         "refcount-cache-size may not be set at the same "
                         "time");
    }
    if (has_all && has_l2 && l2 > all) {
        return error_set(EINVAL, "l2-cache-size may not exceed cache-size");
    }
    if (has_all && has_rc && rc > all) {
        return error_set(EINVAL, "refcount-cache-size may not exceed "
                         "cache-size");
    }
    if (has_entry && (entry < 512 || entry > s->hdr.cluster_size ||
                      (entry & (entry - 1)) != 0)) {
        return error_set(EINVAL, "L2 cache entry size must be a power of "
                         "two between 512 and the cluster size (%" PRIu64
                         ")", s->hdr.cluster_size);
    }
    return 0;
}

static int qcow2_open(struct qimg_node *node, unsigned flags)
{
    struct qcow2_state *s = state_new();
    if (!s) {
        return error_set(ENOMEM, "Out of memory");
    }
    s->open_flags = flags;
    unsigned dflags = 0;
    if (flags & QIMG_OPEN_RDWR) {
        dflags |= QCOW2_DECODE_RDWR;
    }
    if (flags & QIMG_OPEN_NO_IO) {
        dflags |= QCOW2_DECODE_NO_IO;
    }
    if (flags & QIMG_OPEN_CHECK) {
        dflags |= QCOW2_DECODE_CHECK;
    }

    /* The fixed header names the cluster size; then read cluster 0. */
    uint8_t fixed[QCOW2_HEADER_SIZE];
    uint8_t *hbuf = NULL;
    int ret = read_meta(node->file, fixed, sizeof(fixed), 0,
                        "Could not read qcow2 header");
    if (ret < 0) {
        goto fail;
    }
    size_t hlen = qcow2_header_bytes_needed(fixed, sizeof(fixed));
    hbuf = malloc(hlen);
    if (!hbuf) {
        ret = error_set(ENOMEM, "Out of memory");
        goto fail;
    }
    if (hlen > sizeof(fixed)) {
        ret =
            read_meta(node->file, hbuf, hlen, 0, "Could not read qcow2 header");
        if (ret < 0) {
            goto fail;
        }
    } else {
        memcpy(hbuf, fixed, hlen);
    }

    ret = qcow2_header_decode(hbuf, hlen, dflags, &s->hdr);
    if (s->hdr.bitmaps_inconsistent) {
        /* [QEMU] warns even when the open then fails. */
        warn_report("a program lacking bitmap support modified this file, "
                    "so all bitmaps are now considered inconsistent\n"
                    "Some clusters may be leaked, run 'qemu-img check -r' "
                    "on the image file to fix.");
    }
    if (ret < 0) {
        goto fail;
    }
    init_geometry(s);
    /* [QEMU] opens the LUKS header while reading the extensions. */
    ret = qcow2_crypto_open(node, s, flags);
    if (ret < 0) {
        goto fail;
    }
    ret = open_data_file(node, s, flags);
    if (ret < 0) {
        goto fail;
    }
    /* Block status host offsets name the data file when there is one. */
    node->data_io = s->data_file;
    ret = qcow2_header_decode_finish(hbuf, hlen, dflags, &s->hdr);
    if (ret < 0) {
        goto fail;
    }
    ret = take_cache_opts(node, s);
    if (ret < 0) {
        goto fail;
    }
    free(hbuf);
    hbuf = NULL;

    /* QEMU's guest size is in whole sectors (bs->total_sectors). */
    node->size = s->hdr.size & ~(uint64_t)511;

    /* Metadata-only opens never map guest data. */
    if (!(flags & QIMG_OPEN_NO_IO)) {
        ret = load_l1(node, s);
        if (ret < 0) {
            goto fail;
        }
    }
    /*
     * [QEMU] an open for checking does not read the snapshot table: the
     * check reads it and reports what is wrong with it.
     */
    if (!(flags & QIMG_OPEN_CHECK)) {
        ret = qcow2_read_snapshot_table(node, s);
        if (ret < 0) {
            goto fail;
        }
    }
    ret = read_bitmaps(node, s);
    if (ret < 0) {
        goto fail;
    }
    /* [QEMU] the block layer refuses sizes its requests cannot reach. */
    if (node->size > QCOW2_MAX_IO_END) {
        ret = error_set_errno(EFBIG, "Could not refresh total sector count");
        goto fail;
    }

    /*
     * An empty backing name means no backing file, as for QEMU, and the
     * format only matters with a backing file.
     */
    if (s->hdr.backing_file && s->hdr.backing_file[0] != '\0') {
        node->backing_name = strdup(s->hdr.backing_file);
        if (!node->backing_name) {
            ret = error_set(ENOMEM, "Out of memory");
            goto fail;
        }
        if (s->hdr.backing_format && s->hdr.backing_format[0] != '\0') {
            node->backing_format = strdup(s->hdr.backing_format);
            if (!node->backing_format) {
                ret = error_set(ENOMEM, "Out of memory");
                goto fail;
            }
        }
    }
    /*
     * [QEMU] a dirty image (lazy refcounts, not cleanly closed) opened
     * for writing is repaired first, unless it is opened to be checked.
     * The repair's lines are not shown (there is no check report here).
     */
    if ((flags & QIMG_OPEN_RDWR) && !(flags & QIMG_OPEN_CHECK) &&
        (s->hdr.incompatible_features & QCOW2_INCOMPAT_DIRTY)) {
        struct qimg_check_result res;
        ret = qcow2_repair(node, s,
                           QIMG_CHECK_FIX_LEAKS | QIMG_CHECK_FIX_ERRORS, NULL,
                           NULL, &res);
        if (ret < 0) {
            ret = error_set_errno(-ret, "Could not repair dirty image");
            goto fail;
        }
    }
    node->opaque = s;
    return 0;

fail:
    free(hbuf);
    free(node->backing_name);
    node->backing_name = NULL;
    free(node->backing_format);
    node->backing_format = NULL;
    state_free(s);
    node->opaque = NULL;
    node->data_io = NULL;
    return ret;
}

static void qcow2_close(struct qimg_node *node)
{
    state_free(node->opaque);
    node->opaque = NULL;
    node->data_io = NULL;
}

/*
 * Guest data can be mapped only after a full open: metadata-only opens
 * load no L1 table, leave the data file closed and have no key.
 */
static int qcow2_check_readable(struct qimg_node *node,
                                const struct qcow2_state *s)
{
    if (s->open_flags & QIMG_OPEN_NO_IO) {
        return error_set(EINVAL, "%s: image opened for metadata only",
                         node->filename);
    }
    if (s->hdr.crypt_method != QCOW2_CRYPT_NONE && !s->cipher) {
        return error_set(EINVAL, "%s: the image was opened without its key",
                         node->filename);
    }
    if (s->has_data_file && !s->data_file) {
        return error_set(EIO, "%s: the external data file is not open",
                         node->filename);
    }
    return 0;
}

/*
 * Read n bytes of a NORMAL run.  Guest data lives in the data file when
 * there is one (host offset == guest offset), else in the image file,
 * where a cluster that starts at or past the end of the file is corrupt
 * (nothing was ever written there).
 */
static int qcow2_read_normal(struct qimg_node *node, struct qcow2_state *s,
                             uint8_t *buf, size_t n, uint64_t host)
{
    struct qimg_io *io = s->data_file ? s->data_file : node->file;
    if (!s->data_file) {
        int64_t fsize = io_get_size(io);
        if (fsize < 0) {
            return error_set_errno((int)-fsize,
                                   "%s: could not get the file "
                                   "size",
                                   node->filename);
        }
        uint64_t cluster = align_down_u64(host, s->cluster_size);
        if (cluster >= (uint64_t)fsize) {
            return error_set(EIO,
                             "qcow2: image '%s' is corrupt: data "
                             "cluster at offset %#" PRIx64 " is past "
                             "the end of the file",
                             node->filename, cluster);
        }
    }
    /* [QEMU] its block layer fails reads past QCOW2_MAX_IO_END. */
    if (!qcow2_read_in_range(host, n)) {
        return error_set(EIO,
                         "qcow2: could not read guest data of '%s' at "
                         "host offset %#" PRIx64,
                         node->filename, host);
    }
    int ret = io_pread(io, buf, n, host);
    if (ret < 0) {
        return error_set_errno(-ret,
                               "qcow2: could not read guest data of "
                               "'%s' at host offset %#" PRIx64,
                               io->filename, host);
    }
    return 0;
}

struct encrypted_read {
    struct qimg_node *node;
    struct qcow2_state *s;
};

static int encrypted_read_fn(void *opaque, uint8_t *buf, size_t len,
                             uint64_t host)
{
    const struct encrypted_read *r = opaque;
    return qcow2_read_normal(r->node, r->s, buf, len, host);
}

/*
 * A NORMAL run of an encrypted image: whole 512-byte sectors are read
 * and decrypted (host and guest offsets agree modulo the cluster size,
 * so a sector never leaves its cluster).
 */
static int qcow2_read_encrypted(struct qimg_node *node, struct qcow2_state *s,
                                uint8_t *buf, size_t n, uint64_t host,
                                uint64_t guest)
{
    struct encrypted_read r = {node, s};
    return sector_cipher_pread(s->cipher, encrypted_read_fn, &r, buf, n, host,
                               s->cipher_host_sectors ? host : guest);
}

int qcow2_pread(struct qimg_node *node, void *buf, size_t len, uint64_t off)
{
    struct qcow2_state *s = node->opaque;
    int ret = qcow2_check_readable(node, s);
    uint8_t *p = buf;
    /* Invariant: p[0, len) is still to be filled from guest offset off. */
    while (ret == 0 && len > 0) {
        struct qcow2_mapping m;
        ret = qcow2_get_mapping(node, s, off, len, &m);
        if (ret < 0) {
            break;
        }
        size_t n = (size_t)min_u64(m.bytes, len);
        switch (m.type) {
        case QCOW2_SC_UNALLOCATED:
        case QCOW2_SC_UNALLOCATED_ALLOC:
            ret = node_read_below(node, p, n, off);
            break;
        case QCOW2_SC_ZERO_PLAIN:
        case QCOW2_SC_ZERO_ALLOC:
            memset(p, 0, n);
            break;
        case QCOW2_SC_NORMAL:
            ret = s->cipher
                      ? qcow2_read_encrypted(node, s, p, n, m.host_off, off)
                      : qcow2_read_normal(node, s, p, n, m.host_off);
            break;
        case QCOW2_SC_COMPRESSED:
            ret = qcow2_read_compressed(node, s, m.l2_entry);
            if (ret == 0) {
                /* The run never leaves its cluster. */
                memcpy(p, s->z_out + (off & (s->cluster_size - 1)), n);
            }
            break;
        }
        p += n;
        off += n;
        len -= n;
    }
    return ret;
}

/* [QEMU] its qcow2 block status answers at most INT_MAX bytes per call. */
#define QCOW2_STATUS_MAX_BYTES 0x7fffffffull

static bool mapping_has_host(enum qcow2_sc_type t)
{
    return t == QCOW2_SC_NORMAL || t == QCOW2_SC_ZERO_ALLOC ||
           t == QCOW2_SC_UNALLOCATED_ALLOC;
}

/*
 * Block status of this layer, with QEMU's runs: one (sub)cluster type
 * with contiguous host offsets, never past the end of the L2 table that
 * maps off, a compressed cluster alone.  Types and flags as QEMU's:
 * unallocated subclusters of an allocated cluster and zero clusters that
 * keep a host cluster report its offset; data clusters of an image that
 * looks metadata-preallocated ask the host file about holes (BS_RECURSE).
 */
static int qcow2_block_status(struct qimg_node *node, uint64_t off,
                              uint64_t len, uint64_t *pnum, uint64_t *host_off)
{
    struct qcow2_state *s = node->opaque;
    int ret = qcow2_check_readable(node, s);
    if (ret < 0) {
        return ret;
    }
    if (!s->prealloc_checked) {
        /* [QEMU] a failed detection just means "not preallocated". */
        s->metadata_prealloc = qcow2_detect_metadata_prealloc(node, s) == 1;
        s->prealloc_checked = true;
    }
    len = min_u64(len, QCOW2_STATUS_MAX_BYTES);
    uint64_t in_cluster = off & (s->cluster_size - 1);
    uint64_t l2_index = (off >> s->cluster_bits) & (s->l2_entries - 1);
    /* Clusters to the end of the L2 table, times cs: at most 2^52. */
    uint64_t table_left = ((s->l2_entries - l2_index) << s->cluster_bits) -
                          in_cluster;
    uint64_t limit = min_u64(len, table_left);

    struct qcow2_mapping m;
    ret = qcow2_get_mapping(node, s, off, limit, &m);
    if (ret < 0) {
        return ret;
    }
    uint64_t n = min_u64(m.bytes, limit);
    /* Runs of one mapping end with an L2 slice; QEMU's with the table. */
    while (m.type != QCOW2_SC_COMPRESSED && n < limit) {
        struct qcow2_mapping next;
        ret = qcow2_get_mapping(node, s, off + n, limit - n, &next);
        if (ret < 0) {
            return ret;
        }
        if (next.type != m.type ||
            (mapping_has_host(m.type) && next.host_off != m.host_off + n)) {
            break;
        }
        n += min_u64(next.bytes, limit - n);
    }
    *pnum = n;
    /* [QEMU] encrypted data has no host offset a reader could use. */
    if (mapping_has_host(m.type) && !s->cipher) {
        *host_off = m.host_off;
    } else if (mapping_has_host(m.type)) {
        return m.type == QCOW2_SC_NORMAL      ? BS_ALLOCATED | BS_DATA
               : m.type == QCOW2_SC_ZERO_ALLOC ? BS_ALLOCATED | BS_ZERO
                                               : 0;
    }
    switch (m.type) {
    case QCOW2_SC_UNALLOCATED:
        return 0;
    case QCOW2_SC_UNALLOCATED_ALLOC:
        return BS_OFFSET_VALID;
    case QCOW2_SC_ZERO_PLAIN:
        return BS_ALLOCATED | BS_ZERO;
    case QCOW2_SC_ZERO_ALLOC:
        return BS_ALLOCATED | BS_ZERO | BS_OFFSET_VALID;
    case QCOW2_SC_NORMAL:
        return BS_ALLOCATED | BS_DATA | BS_OFFSET_VALID |
               (s->metadata_prealloc ? BS_RECURSE : 0);
    case QCOW2_SC_COMPRESSED:
        break;
    }
    return BS_ALLOCATED | BS_DATA | BS_COMPRESSED;
}

/* [QEMU] find_snapshot_by_id_and_name: the first entry matching both. */
static int64_t find_snapshot(const struct qcow2_snapshot_table *t,
                             const char *id, const char *name)
{
    for (uint32_t i = 0; i < t->nb; i++) {
        if ((!id || strcmp(t->sn[i].id, id) == 0) &&
            (!name || strcmp(t->sn[i].name, name) == 0)) {
            return i;
        }
    }
    return -1;
}

/*
 * Read guest data as of an internal snapshot [spec: Snapshots]: its L1
 * table replaces the active one, checked as QEMU checks it when loading
 * a snapshot temporarily.  [QEMU] keeps the current guest size (not the
 * snapshot's disk_size): L1 entries past the snapshot's table read as
 * unallocated, bytes past the current size are not readable.
 */
static int load_snapshot(struct qimg_node *node, const char *id,
                         const char *name)
{
    struct qcow2_state *s = node->opaque;
    int64_t idx = find_snapshot(&s->snapshots, id, name);
    if (idx < 0) {
        return error_set(ENOENT, "Can't find snapshot");
    }
    const struct qcow2_snapshot *sn = &s->snapshots.sn[idx];
    int ret = qcow2_validate_table(sn->l1_table_offset, sn->l1_size,
                                   sizeof(uint64_t), QCOW2_MAX_L1_SIZE,
                                   s->cluster_size, "Snapshot L1 table");
    if (ret < 0) {
        return ret;
    }
    /* At most QCOW2_MAX_L1_SIZE bytes, checked just above. */
    size_t bytes = (size_t)sn->l1_size * sizeof(uint64_t);
    uint64_t *t = NULL;
    if (bytes > 0) {
        t = malloc(bytes);
        if (!t) {
            return error_set(ENOMEM, "Out of memory");
        }
        ret = qcow2_read_in_range(sn->l1_table_offset, bytes)
                  ? io_pread(node->file, t, bytes, sn->l1_table_offset)
                  : -EIO;
        if (ret < 0) {
            free(t);
            return error_set(-ret, "Failed to read l1 table for snapshot");
        }
        for (uint32_t i = 0; i < sn->l1_size; i++) {
            t[i] = load_be64((const uint8_t *)t + (size_t)i * 8);
        }
    }
    free(s->l1_table);
    s->l1_table = t;
    s->l1_size = sn->l1_size;
    s->l1_table_offset = sn->l1_table_offset;
    return 0;
}

static int qcow2_snapshot_load(struct qimg_node *node,
                               const struct qimg_snapshot_select *sel)
{
    if (node->writable) {
        return error_set(EINVAL, "Device is not readonly");
    }
    if (!sel->id_or_name) {
        return load_snapshot(node, sel->id, sel->name);
    }
    /*
     * [QEMU] by id, then by name when that fails with ENOENT or EINVAL
     * (so a bad L1 offset of the snapshot with that id also falls back).
     */
    int ret = load_snapshot(node, sel->id_or_name, NULL);
    if (ret == -ENOENT || ret == -EINVAL) {
        error_clear();
        ret = load_snapshot(node, NULL, sel->id_or_name);
    }
    return ret;
}

/*
 * [QEMU] a preallocated image (the first L2 table exists) that is
 * encrypted holds zero bytes that decrypt to noise.
 */
static bool qcow2_has_zero_init(struct qimg_node *node)
{
    const struct qcow2_state *s = node->opaque;
    bool preallocated = s->l1_size > 0 && s->l1_table && s->l1_table[0];
    return !(preallocated && s->hdr.crypt_method != QCOW2_CRYPT_NONE);
}

static int qcow2_flush(struct qimg_node *node)
{
    return qcow2_write_flush(node, node->opaque);
}

/* ---- Locked request ops (see struct qcow2_state: lock) ------------------- */

static void lock_exclusive(struct qimg_node *node)
{
    struct qcow2_state *s = node->opaque;
    pthread_rwlock_wrlock(&s->lock);
}

static int unlock(struct qimg_node *node, int ret)
{
    struct qcow2_state *s = node->opaque;
    pthread_rwlock_unlock(&s->lock);
    return ret;
}

static int qcow2_op_pread(struct qimg_node *node, void *buf, size_t len,
                          uint64_t off)
{
    lock_exclusive(node);
    return unlock(node, qcow2_pread(node, buf, len, off));
}

/*
 * Rounds of shared attempt, exclusive lock, "shared now?" before a write
 * is made under the exclusive lock whatever it is (a bound, in case
 * others keep changing its clusters between the rounds).
 */
#define QCOW2_SHARED_RETRIES 4

/*
 * A write that changes no metadata runs under the shared lock, next to
 * others like it; any other write (or one that turns out to be, say, an
 * allocating one) takes the exclusive lock and the full write path.  A
 * write that waited for the exclusive lock while another allocated its
 * cluster goes back to the shared side: with many requests in flight
 * over a new image, most of those into a cluster being allocated would
 * otherwise be written one at a time.
 */
static int qcow2_op_pwrite(struct qimg_node *node, const void *buf,
                           size_t len, uint64_t off)
{
    struct qcow2_state *s = node->opaque;
    for (int round = 0;; round++) {
        pthread_rwlock_rdlock(&s->lock);
        int ret = unlock(node,
                         qcow2_pwrite_in_place(node, buf, len, off, false));
        if (ret != 0) {
            return ret < 0 ? ret : 0;
        }
        lock_exclusive(node);
        if (round + 1 < QCOW2_SHARED_RETRIES &&
            qcow2_pwrite_in_place(node, buf, len, off, true) == 1) {
            unlock(node, 0);
            continue;
        }
        ret = qcow2_bitmaps_note_write(node, s, off, len);
        return unlock(node, ret < 0 ? ret : qcow2_pwrite(node, buf, len, off));
    }
}

static int qcow2_op_pwrite_zeroes(struct qimg_node *node, uint64_t off,
                                  uint64_t len, unsigned flags)
{
    lock_exclusive(node);
    int ret = qcow2_bitmaps_note_write(node, node->opaque, off, len);
    return unlock(node,
                  ret < 0 ? ret : qcow2_pwrite_zeroes(node, off, len, flags));
}

static int qcow2_op_pdiscard(struct qimg_node *node, uint64_t off,
                             uint64_t len)
{
    lock_exclusive(node);
    int ret = qcow2_bitmaps_note_write(node, node->opaque, off, len);
    return unlock(node, ret < 0 ? ret : qcow2_pdiscard(node, off, len));
}

static int qcow2_op_pwrite_compressed(struct qimg_node *node, const void *buf,
                                      size_t len, uint64_t off)
{
    lock_exclusive(node);
    int ret = qcow2_bitmaps_note_write(node, node->opaque, off, len);
    return unlock(node,
                  ret < 0 ? ret : qcow2_pwrite_compressed(node, buf, len, off));
}

static int qcow2_op_pwrite_precompressed(struct qimg_node *node,
                                         const void *data, size_t csize,
                                         size_t len, uint64_t off)
{
    lock_exclusive(node);
    int ret = qcow2_bitmaps_note_write(node, node->opaque, off, len);
    return unlock(node, ret < 0 ? ret
                                : qcow2_pwrite_precompressed(node, data, csize,
                                                             len, off));
}

static int qcow2_op_compressed_end(struct qimg_node *node)
{
    lock_exclusive(node);
    return unlock(node, qcow2_compressed_end(node));
}

static int qcow2_op_flush(struct qimg_node *node)
{
    lock_exclusive(node);
    return unlock(node, qcow2_flush(node));
}

static int qcow2_op_block_status(struct qimg_node *node, uint64_t off,
                                 uint64_t len, uint64_t *pnum,
                                 uint64_t *host_off)
{
    lock_exclusive(node);
    return unlock(node, qcow2_block_status(node, off, len, pnum, host_off));
}

/* ---- info ---------------------------------------------------------------- */

static int put(struct qimg_value *dict, const char *key,
               struct qimg_value *item)
{
    return qimg_value_dict_set(dict, key, item) < 0 ? -ENOMEM : 0;
}

/* Qcow2BitmapInfo list: {name, granularity, flags: [in-use, auto]}. */
static struct qimg_value *bitmaps_value(const struct qcow2_bitmap_list *l)
{
    struct qimg_value *list = qimg_value_new_list();
    for (uint32_t i = 0; list && i < l->nb; i++) {
        const struct qcow2_bitmap *bm = &l->bm[i];
        struct qimg_value *d = qimg_value_new_dict();
        struct qimg_value *flags = qimg_value_new_list();
        int ok = d && flags;
        /* Schema order of Qcow2BitmapInfo: name, granularity, flags. */
        if (ok) {
            ok = put(d, "name", qimg_value_new_string(bm->name)) == 0 &&
                 put(d, "granularity",
                     qimg_value_new_int((int64_t)1 << bm->granularity_bits)) ==
                     0;
        }
        if (ok && (bm->flags & QCOW2_BME_IN_USE)) {
            ok = qimg_value_list_append(flags,
                                        qimg_value_new_string("in-use")) == 0;
        }
        if (ok && (bm->flags & QCOW2_BME_AUTO)) {
            ok = qimg_value_list_append(flags, qimg_value_new_string("auto")) ==
                 0;
        }
        if (ok) {
            ok = put(d, "flags", flags) == 0;
            flags = NULL;
        }
        if (ok) {
            ok = qimg_value_list_append(list, d) == 0;
            d = NULL;
        }
        qimg_value_free(flags);
        qimg_value_free(d);
        if (!ok) {
            qimg_value_free(list);
            list = NULL;
        }
    }
    return list;
}

/*
 * ImageInfoSpecificQCow2, keys inserted in QAPI schema order (the value
 * library orders them as QEMU's QDict does): compat, data-file,
 * data-file-raw, extended-l2, lazy-refcounts, corrupt, refcount-bits,
 * encrypt, bitmaps, compression-type.  v2 images have only compat,
 * refcount-bits (and encrypt) and compression-type.
 */
static struct qimg_value *specific_data(const struct qcow2_state *s)
{
    const struct qcow2_header *h = &s->hdr;
    struct qimg_value *d = qimg_value_new_dict();
    if (!d) {
        return NULL;
    }
    int ret;
    if (h->version == 2) {
        ret = put(d, "compat", qimg_value_new_string("0.10"));
    } else {
        ret = put(d, "compat", qimg_value_new_string("1.1"));
        if (ret == 0 && h->data_file) {
            ret = put(d, "data-file", qimg_value_new_string(h->data_file));
        }
        /* Present whenever the image uses a data file, named or not. */
        if (ret == 0 && s->has_data_file) {
            ret = put(d, "data-file-raw",
                      qimg_value_new_bool(h->autoclear_features &
                                          QCOW2_AUTOCLEAR_DATA_FILE_RAW));
        }
        if (ret == 0) {
            ret = put(d, "extended-l2",
                      qimg_value_new_bool(h->incompatible_features &
                                          QCOW2_INCOMPAT_EXTL2));
        }
        if (ret == 0) {
            ret = put(d, "lazy-refcounts",
                      qimg_value_new_bool(h->compatible_features &
                                          QCOW2_COMPAT_LAZY_REFCOUNTS));
        }
        if (ret == 0) {
            ret = put(d, "corrupt",
                      qimg_value_new_bool(h->incompatible_features &
                                          QCOW2_INCOMPAT_CORRUPT));
        }
    }
    if (ret == 0) {
        ret = put(d, "refcount-bits",
                  qimg_value_new_int((int64_t)1 << h->refcount_order));
    }
    /*
     * encrypt: legacy AES has nothing but its format.  LUKS needs its
     * header parsed (cipher, slots...); not done yet, so it is left out.
     */
    if (ret == 0 && h->crypt_method == QCOW2_CRYPT_AES) {
        struct qimg_value *e = qimg_value_new_dict();
        ret = e ? put(e, "format", qimg_value_new_string("aes")) : -ENOMEM;
        if (ret == 0) {
            ret = put(d, "encrypt", e);
        } else {
            qimg_value_free(e);
        }
    } else if (ret == 0 && s->has_luks) {
        ret = put(d, "encrypt", luks1_info_value(&s->luks, true));
    }
    if (ret == 0 && h->version >= 3 && s->bitmaps.nb > 0) {
        ret = put(d, "bitmaps", bitmaps_value(&s->bitmaps));
    }
    if (ret == 0) {
        /* v2 images are always zlib; decode checked the value. */
        ret = put(
            d, "compression-type",
            qimg_value_new_string(qcow2_compression_name(h->compression_type)));
    }
    if (ret < 0) {
        qimg_value_free(d);
        return NULL;
    }
    return d;
}

static struct qimg_value *specific_value(const struct qcow2_state *s)
{
    struct qimg_value *v = qimg_value_new_dict();
    if (!v) {
        return NULL;
    }
    if (put(v, "type", qimg_value_new_string("qcow2")) < 0 ||
        put(v, "data", specific_data(s)) < 0) {
        qimg_value_free(v);
        return NULL;
    }
    return v;
}

/* A copy of at most max bytes of s, as QEMU's fixed-size buffers keep. */
static char *dup_cut(const char *s, size_t max)
{
    return strndup(s, max);
}

static int qcow2_get_info(struct qimg_node *node, struct qimg_image_info *info)
{
    const struct qcow2_state *s = node->opaque;
    const struct qcow2_header *h = &s->hdr;

    info->cluster_size = s->cluster_size;
    info->dirty_flag = (h->incompatible_features & QCOW2_INCOMPAT_DIRTY) != 0;
    info->encrypted = h->crypt_method != QCOW2_CRYPT_NONE;

    /*
     * [QEMU] refuses to list snapshots of an image with a data file (they
     * are not allowed there), and info then shows none; the table is
     * still read and checked at open.
     */
    uint32_t nb = s->has_data_file ? 0 : s->snapshots.nb;
    if (nb > 0) {
        struct qimg_snapshot_info *list = calloc(nb, sizeof(*list));
        if (!list) {
            return error_set(ENOMEM, "Out of memory");
        }
        /* Counted as filled so that a failure frees what was copied. */
        info->snapshots = list;
        info->nb_snapshots = nb;
        for (uint32_t i = 0; i < nb; i++) {
            const struct qcow2_snapshot *sn = &s->snapshots.sn[i];
            list[i].id = dup_cut(sn->id, QCOW2_INFO_SNAPSHOT_ID_MAX);
            list[i].name = dup_cut(sn->name, QCOW2_INFO_SNAPSHOT_NAME_MAX);
            if (!list[i].id || !list[i].name) {
                return error_set(ENOMEM, "Out of memory");
            }
            list[i].vm_state_size = sn->vm_state_size;
            list[i].date_sec = sn->date_sec;
            list[i].date_nsec = sn->date_nsec;
            list[i].vm_clock_nsec = sn->vm_clock_nsec;
            /* [QEMU] icount -1 (or no icount field) is not shown. */
            list[i].has_icount = sn->icount != QCOW2_SNAPSHOT_NO_ICOUNT;
            list[i].icount = sn->icount;
        }
    }

    info->format_specific = specific_value(s);
    if (!info->format_specific) {
        return error_set(ENOMEM, "Out of memory");
    }
    return 0;
}

/*
 * The image file, plus the data file when it is open.  Like QEMU, a
 * metadata-only open (info) does not open the data file, so qemu-img
 * info's "disk size" leaves it out.
 */
static int64_t qcow2_get_allocated(struct qimg_node *node)
{
    const struct qcow2_state *s = node->opaque;
    int64_t n = node->file->ops->get_allocated(node->file);
    if (n < 0 || !s->data_file) {
        return n;
    }
    int64_t d = s->data_file->ops->get_allocated(s->data_file);
    if (d < 0) {
        return d;
    }
    return n + d;
}

/* [QEMU] the key changes what the image reads as. */
static const char *const qcow2_strong_opts[] = {"encrypt.key-secret", NULL};

const struct qimg_format_ops format_qcow2 = {
    .name = "qcow2",
    /* The request ops take s->lock (see struct qcow2_state). */
    .concurrent_io = true,
    .has_zero_init = qcow2_has_zero_init,
    .strong_opts = qcow2_strong_opts,
    .probe = qcow2_probe,
    .open = qcow2_open,
    .close = qcow2_close,
    .pread = qcow2_op_pread,
    .pwrite = qcow2_op_pwrite,
    .pwrite_zeroes = qcow2_op_pwrite_zeroes,
    .pdiscard = qcow2_op_pdiscard,
    .pwrite_compressed = qcow2_op_pwrite_compressed,
    .compress_cluster = qcow2_compress_cluster,
    .pwrite_precompressed = qcow2_op_pwrite_precompressed,
    .set_compression = qcow2_set_compression,
    .compressed_end = qcow2_op_compressed_end,
    .truncate = qcow2_truncate,
    .flush = qcow2_op_flush,
    .block_status = qcow2_op_block_status,
    .get_info = qcow2_get_info,
    .get_allocated = qcow2_get_allocated,
    .snapshot_load = qcow2_snapshot_load,
    .bitmap = qcow2_bitmap,
    .check = qcow2_check,
    .create_opts = qcow2_create_opts,
    .create = qcow2_create,
    .amend_opts = qcow2_amend_opts,
    .amend = qcow2_amend,
    .change_backing = qcow2_change_backing,
    .make_empty = qcow2_make_empty,
    .snapshot_create = qcow2_snapshot_create,
    .snapshot_apply = qcow2_snapshot_apply,
    .snapshot_delete = qcow2_snapshot_delete,
};
