/*
 * qcow: QEMU's first copy-on-write format (version 1), read and write,
 * with zlib-compressed clusters and a backing file; AES-encrypted images
 * are read with their key (encrypt.key-secret; crypto/encrypt_opts.c),
 * not written.
 *
 * Layout (big-endian): a 48-byte header, an optional backing file name,
 * an L1 table of l1_size 64-bit offsets of L2 tables, each of 1 << l2_bits
 * 64-bit entries.  An L2 entry is 0 (unallocated: the backing file shows
 * through), a host offset of a whole cluster, or, with bit 63 set, a
 * compressed cluster: its byte length in the cluster_bits bits below bit
 * 63 and its host offset in the bits below those.  New tables and
 * clusters go at the end of the file, rounded up to a cluster (compressed
 * clusters are packed unaligned), as QEMU places them.
 *
 * A damaged table can name the header, the L1 table or an L2 table as a
 * data cluster, or put an L2 table on the header or the L1 table; QEMU
 * then writes guest data or entries over that metadata.  qimg refuses
 * such a write (qcow_check_meta): the image is corrupt, and the write
 * would break it further.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "core/error.h"
#include "crypto/cipher.h"
#include "crypto/encrypt_opts.h"
#include "driver.h"
#include "util/checked.h"
#include "util/endian.h"
#include "util/extent_set.h"

#define QCOW_MAGIC 0x514649fbu /* "QFI\xfb" */
#define QCOW_VERSION 1u
#define QCOW_HEADER_SIZE 48u
#define QCOW_CRYPT_NONE 0u
#define QCOW_CRYPT_AES 1u
#define QCOW_OFLAG_COMPRESSED (1ull << 63)
/* QEMU's bounds (CVE-2014-0222/0223): 512 B to 64 KiB clusters/tables. */
#define QCOW_MIN_CLUSTER_BITS 9
#define QCOW_MAX_CLUSTER_BITS 16
#define QCOW_MIN_L2_BITS (9 - 3)
#define QCOW_MAX_L2_BITS (16 - 3)
/* QEMU's limit on the L1 table: INT_MAX bytes. */
#define QCOW_MAX_L1_SIZE (INT_MAX / 8)
/* QEMU's limit on the backing file name. */
#define QCOW_MAX_BACKING_NAME 1023u
/*
 * An L1 table past the end of the file reads as zeros in QEMU; qimg does
 * the same for tables up to this size and refuses larger ones, so that a
 * tiny hostile file cannot make it allocate up to 2 GiB.
 */
#define QCOW_L1_PAST_EOF_MAX (4u << 20)

/* Header field offsets. */
#define QCOW_OFF_MAGIC 0
#define QCOW_OFF_VERSION 4
#define QCOW_OFF_BACKING_OFFSET 8
#define QCOW_OFF_BACKING_SIZE 16
#define QCOW_OFF_MTIME 20
#define QCOW_OFF_SIZE 24
#define QCOW_OFF_CLUSTER_BITS 32
#define QCOW_OFF_L2_BITS 33
#define QCOW_OFF_CRYPT 36
#define QCOW_OFF_L1_OFFSET 40

struct qcow_header {
    uint32_t magic;
    uint32_t version;
    uint64_t backing_file_offset;
    uint32_t backing_file_size;
    uint32_t mtime;
    uint64_t size;
    uint8_t cluster_bits;
    uint8_t l2_bits;
    uint32_t crypt_method;
    uint64_t l1_table_offset;
};

struct qcow_state {
    struct qcow_header h;
    uint32_t cluster_size;
    uint32_t l2_size; /* entries per L2 table */
    uint32_t shift;   /* cluster_bits + l2_bits: guest bytes per L1 entry */
    uint64_t l1_size;
    uint64_t *l1;
    /*
     * Where the L1 table and the L2 tables it named at open end (the
     * furthest, saturating).  New clusters go at the end of the file as
     * in QEMU, but never below this: a damaged image can name a table
     * past its end, where the next allocation would put guest data that
     * the table's own updates then overwrite.  Tables allocated later
     * lie past it already.
     */
    uint64_t tables_end;
    /*
     * Every L2 table the L1 names, built at the first write into an
     * existing cluster (l2_tables_built) and kept up to date after.
     */
    struct extent_set l2_tables;
    bool l2_tables_built;
    /* One cached L2 table (host order) and its offset (0: none). */
    uint64_t *l2;
    uint64_t l2_offset;
    /* The last decompressed cluster and its L2 entry (0: none). */
    uint8_t *cluster_cache;
    uint64_t cached_entry;
    uint8_t *cluster_buf; /* cluster_size bytes of scratch */
    uint8_t *z_buf;       /* cluster_size bytes for compressed data */
    /*
     * The AES key of an encrypted image opened for I/O (IVs: guest
     * sectors), else NULL.  Compressed clusters are not encrypted.
     */
    struct sector_cipher *cipher;
};

static void qcow_header_decode(const uint8_t *b, struct qcow_header *h)
{
    h->magic = load_be32(b + QCOW_OFF_MAGIC);
    h->version = load_be32(b + QCOW_OFF_VERSION);
    h->backing_file_offset = load_be64(b + QCOW_OFF_BACKING_OFFSET);
    h->backing_file_size = load_be32(b + QCOW_OFF_BACKING_SIZE);
    h->mtime = load_be32(b + QCOW_OFF_MTIME);
    h->size = load_be64(b + QCOW_OFF_SIZE);
    h->cluster_bits = b[QCOW_OFF_CLUSTER_BITS];
    h->l2_bits = b[QCOW_OFF_L2_BITS];
    h->crypt_method = load_be32(b + QCOW_OFF_CRYPT);
    h->l1_table_offset = load_be64(b + QCOW_OFF_L1_OFFSET);
}

static void qcow_header_encode(const struct qcow_header *h, uint8_t *b)
{
    memset(b, 0, QCOW_HEADER_SIZE);
    store_be32(b + QCOW_OFF_MAGIC, h->magic);
    store_be32(b + QCOW_OFF_VERSION, h->version);
    store_be64(b + QCOW_OFF_BACKING_OFFSET, h->backing_file_offset);
    store_be32(b + QCOW_OFF_BACKING_SIZE, h->backing_file_size);
    store_be32(b + QCOW_OFF_MTIME, h->mtime);
    store_be64(b + QCOW_OFF_SIZE, h->size);
    b[QCOW_OFF_CLUSTER_BITS] = h->cluster_bits;
    b[QCOW_OFF_L2_BITS] = h->l2_bits;
    store_be32(b + QCOW_OFF_CRYPT, h->crypt_method);
    store_be64(b + QCOW_OFF_L1_OFFSET, h->l1_table_offset);
}

static int qcow_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    if (len < 8) {
        return 0;
    }
    return load_be32(buf) == QCOW_MAGIC && load_be32(buf + 4) ==
           QCOW_VERSION ? 100 : 0;
}

/* QEMU's answer when a table lies past what an offset can address. */
static int qcow_eio(struct qimg_node *node)
{
    return error_set(EIO, "Could not open '%s': %s", node->filename,
                     strerror(EIO));
}

/* QEMU's header checks, in its order and with its words. */
static int qcow_header_validate(const struct qcow_header *h)
{
    if (h->magic != QCOW_MAGIC) {
        return error_set(EINVAL, "Image not in qcow format");
    }
    if (h->version != QCOW_VERSION) {
        return error_set(ENOTSUP, "qcow (v1) does not support qcow version "
                         "%u%s", h->version,
                         h->version == 2 || h->version == 3
                             ? "\nTry the 'qcow2' driver instead."
                             : "");
    }
    if (h->size <= 1) {
        return error_set(EINVAL, "Image size is too small (must be at "
                         "least 2 bytes)");
    }
    if (h->cluster_bits < QCOW_MIN_CLUSTER_BITS ||
        h->cluster_bits > QCOW_MAX_CLUSTER_BITS) {
        return error_set(EINVAL, "Cluster size must be between 512 and 64k");
    }
    if (h->l2_bits < QCOW_MIN_L2_BITS || h->l2_bits > QCOW_MAX_L2_BITS) {
        return error_set(EINVAL, "L2 table size must be between 512 and "
                         "64k");
    }
    if (h->crypt_method > QCOW_CRYPT_AES) {
        return error_set(EINVAL, "invalid encryption method in qcow header");
    }
    return 0;
}

static void qcow_close(struct qimg_node *node)
{
    struct qcow_state *s = node->opaque;
    if (s) {
        free(s->l1);
        free(s->l2);
        free(s->cluster_cache);
        free(s->cluster_buf);
        free(s->z_buf);
        extent_set_free(&s->l2_tables);
        sector_cipher_free(s->cipher);
        free(s);
    }
    node->opaque = NULL;
}

static int qcow_read_l1(struct qimg_node *node, struct qcow_state *s)
{
    uint64_t bytes = s->l1_size * 8; /* < INT_MAX */
    uint64_t end;
    if (add_overflow_u64(s->h.l1_table_offset, bytes, &end) ||
        end > INT64_MAX) {
        return qcow_eio(node);
    }
    int64_t file_size = io_get_size(node->file);
    if (file_size < 0) {
        return (int)file_size;
    }
    if (end > (uint64_t)file_size && bytes > QCOW_L1_PAST_EOF_MAX) {
        return error_set(EINVAL, "qcow L1 table (%llu bytes at offset "
                         "%llu) lies beyond the end of the file",
                         (unsigned long long)bytes,
                         (unsigned long long)s->h.l1_table_offset);
    }
    s->l1 = malloc((size_t)bytes);
    if (!s->l1) {
        return error_set(ENOMEM, "Could not allocate the L1 table");
    }
    int ret = io_pread(node->file, s->l1, (size_t)bytes,
                       s->h.l1_table_offset);
    if (ret < 0) {
        return error_prefix(-ret, "Could not read the L1 table");
    }
    s->tables_end = end;
    const uint64_t l2_bytes = (uint64_t)s->l2_size * 8;
    for (uint64_t i = 0; i < s->l1_size; i++) {
        s->l1[i] = load_be64(&s->l1[i]);
        uint64_t l2_end;
        if (s->l1[i] == 0) {
            continue;
        }
        if (add_overflow_u64(s->l1[i], l2_bytes, &l2_end)) {
            l2_end = UINT64_MAX;
        }
        s->tables_end = max_u64(s->tables_end, l2_end);
    }
    return 0;
}

static int qcow_read_backing_name(struct qimg_node *node,
                                  struct qcow_state *s)
{
    if (s->h.backing_file_offset == 0) {
        return 0;
    }
    uint32_t len = s->h.backing_file_size;
    if (len > QCOW_MAX_BACKING_NAME) {
        return error_set(EINVAL, "Backing file name too long");
    }
    if (len == 0) {
        return 0; /* an empty name is no backing file, as in QEMU */
    }
    if (s->h.backing_file_offset > (uint64_t)INT64_MAX - len) {
        return qcow_eio(node);
    }
    char *name = calloc(1, (size_t)len + 1);
    if (!name) {
        return error_set(ENOMEM, "Out of memory");
    }
    int ret = io_pread(node->file, name, len, s->h.backing_file_offset);
    if (ret < 0) {
        free(name);
        return error_prefix(-ret, "Could not read the backing file name");
    }
    if (name[0] == '\0') {
        free(name);
        return 0;
    }
    node->backing_name = name;
    return 0;
}

static int qcow_open(struct qimg_node *node, unsigned flags)
{
    struct qcow_state *s = calloc(1, sizeof(*s));
    if (!s) {
        return error_set(ENOMEM, "Out of memory");
    }
    node->opaque = s;
    uint8_t buf[QCOW_HEADER_SIZE];
    int ret = io_pread(node->file, buf, sizeof(buf), 0);
    if (ret < 0) {
        ret = error_prefix(-ret, "Could not read the qcow header");
        goto fail;
    }
    qcow_header_decode(buf, &s->h);
    ret = qcow_header_validate(&s->h);
    if (ret < 0) {
        goto fail;
    }
    const char *key_secret;
    ret = crypto_take_encrypt_opts(
        node, s->h.crypt_method == QCOW_CRYPT_AES ? "aes" : NULL,
        &key_secret);
    if (ret == 0 && s->h.crypt_method != QCOW_CRYPT_NONE &&
        !(flags & QIMG_OPEN_NO_IO)) {
        ret = crypto_qcow_aes_open(key_secret, &s->cipher);
    }
    if (ret < 0) {
        goto fail;
    }
    s->cluster_size = 1u << s->h.cluster_bits;
    s->l2_size = 1u << s->h.l2_bits;
    s->shift = s->h.cluster_bits + s->h.l2_bits;
    uint64_t span = 1ull << s->shift;
    if (s->h.size > UINT64_MAX - span) {
        ret = error_set(EINVAL, "Image too large");
        goto fail;
    }
    s->l1_size = (s->h.size + span - 1) >> s->shift;
    if (s->l1_size > QCOW_MAX_L1_SIZE) {
        ret = error_set(EINVAL, "Image too large");
        goto fail;
    }
    /* QEMU's block layer: at most INT64_MAX, in whole sectors. */
    if (s->h.size > (uint64_t)INT64_MAX - 511) {
        ret = error_set(EINVAL, "Image too large");
        goto fail;
    }
    ret = qcow_read_l1(node, s);
    if (ret == 0) {
        ret = qcow_read_backing_name(node, s);
    }
    if (ret < 0) {
        goto fail;
    }
    s->l2 = malloc((size_t)s->l2_size * 8);
    s->cluster_cache = malloc(s->cluster_size);
    s->cluster_buf = malloc(s->cluster_size);
    s->z_buf = malloc(s->cluster_size);
    if (!s->l2 || !s->cluster_cache || !s->cluster_buf || !s->z_buf) {
        ret = error_set(ENOMEM, "Out of memory");
        goto fail;
    }
    node->size = (s->h.size + 511) & ~(uint64_t)511;
    return 0;
fail:
    qcow_close(node);
    return ret;
}

/* Load the L2 table at offset into the cache. */
static int qcow_load_l2(struct qimg_node *node, struct qcow_state *s,
                        uint64_t offset)
{
    if (s->l2_offset == offset) {
        return 0;
    }
    uint64_t bytes = (uint64_t)s->l2_size * 8;
    if (offset > INT64_MAX - bytes) {
        return error_set(EIO, "%s: L2 table offset %llu is invalid",
                         node->filename, (unsigned long long)offset);
    }
    s->l2_offset = 0;
    int ret = io_pread(node->file, s->l2, (size_t)bytes, offset);
    if (ret < 0) {
        return ret;
    }
    for (uint32_t i = 0; i < s->l2_size; i++) {
        s->l2[i] = load_be64(&s->l2[i]);
    }
    s->l2_offset = offset;
    return 0;
}

/* The L2 entry of the cluster holding guest offset off (0: none). */
static int qcow_get_entry(struct qimg_node *node, struct qcow_state *s,
                          uint64_t off, uint64_t *entry)
{
    uint64_t l1_index = off >> s->shift;
    *entry = 0;
    /* off < size rounded to sectors, which may pass the last L1 entry. */
    if (l1_index >= s->l1_size || s->l1[l1_index] == 0) {
        return 0;
    }
    int ret = qcow_load_l2(node, s, s->l1[l1_index]);
    if (ret < 0) {
        return ret;
    }
    *entry = s->l2[(off >> s->h.cluster_bits) & (s->l2_size - 1)];
    return 0;
}

/*
 * zlib, raw deflate with a 4 KiB window: a cluster is good once the
 * output is full, whether or not inflate saw the stream end (QEMU).
 */
static int qcow_inflate(uint8_t *dst, size_t dst_len, const uint8_t *src,
                        size_t src_len)
{
    z_stream z = {0};
    if (inflateInit2(&z, -12) != Z_OK) {
        return -ENOMEM;
    }
    z.next_in = (Bytef *)(uintptr_t)src;
    z.avail_in = (uInt)src_len;
    z.next_out = dst;
    z.avail_out = (uInt)dst_len;
    int ret = inflate(&z, Z_FINISH);
    bool ok = (ret == Z_STREAM_END || ret == Z_BUF_ERROR) &&
              z.avail_out == 0;
    inflateEnd(&z);
    return ok ? 0 : -EIO;
}

/* Decompress the cluster of a compressed entry into cluster_cache. */
static int qcow_decompress(struct qimg_node *node, struct qcow_state *s,
                           uint64_t entry)
{
    if (s->cached_entry == entry) {
        return 0;
    }
    unsigned bits = 63 - s->h.cluster_bits;
    uint64_t csize = (entry >> bits) & (s->cluster_size - 1);
    uint64_t coffset = entry & ((1ull << bits) - 1);
    s->cached_entry = 0;
    int ret = io_pread(node->file, s->z_buf, (size_t)csize, coffset);
    if (ret < 0) {
        return ret;
    }
    ret = qcow_inflate(s->cluster_cache, s->cluster_size, s->z_buf,
                       (size_t)csize);
    if (ret < 0) {
        return error_set(EIO, "%s: compressed cluster at %llu does not "
                         "decompress", node->filename,
                         (unsigned long long)coffset);
    }
    s->cached_entry = entry;
    return 0;
}

static int qcow_file_read(void *opaque, uint8_t *buf, size_t len,
                          uint64_t off)
{
    return io_pread(opaque, buf, len, off);
}

static int qcow_pread(struct qimg_node *node, void *buf, size_t len,
                      uint64_t off)
{
    struct qcow_state *s = node->opaque;
    uint8_t *p = buf;
    while (len > 0) {
        uint64_t in_cluster = off & (s->cluster_size - 1);
        size_t n = (size_t)min_u64(len, s->cluster_size - in_cluster);
        uint64_t entry;
        int ret = qcow_get_entry(node, s, off, &entry);
        if (ret < 0) {
            return ret;
        }
        if (entry == 0) {
            ret = node_read_below(node, p, n, off);
        } else if (entry & QCOW_OFLAG_COMPRESSED) {
            ret = qcow_decompress(node, s, entry);
            if (ret == 0) {
                memcpy(p, s->cluster_cache + in_cluster, n);
            }
        } else if (s->cipher) {
            ret = sector_cipher_pread(s->cipher, qcow_file_read, node->file,
                                      p, n, entry + in_cluster, off);
        } else {
            /* entry < 2^63: adding less than 64 KiB cannot overflow. */
            ret = io_pread(node->file, p, n, entry + in_cluster);
        }
        if (ret < 0) {
            return ret;
        }
        p += n;
        off += n;
        len -= n;
    }
    return 0;
}

/*
 * Where QEMU allocates: the end of the file (in whole sectors), rounded
 * up to a cluster when align is set (tables and plain clusters); past
 * every table named at open (tables_end).
 */
static int qcow_alloc_offset(struct qimg_node *node, struct qcow_state *s,
                             bool align, uint64_t len, uint64_t *out)
{
    int64_t size = io_get_size(node->file);
    if (size < 0) {
        return (int)size;
    }
    /* QEMU's file length is counted in whole sectors. */
    uint64_t off = ((uint64_t)size + 511) & ~(uint64_t)511;
    if (s->tables_end > off) {
        if (s->tables_end > INT64_MAX) {
            return error_set(EFBIG, "%s: a table lies past the end of the "
                             "file, where no cluster can follow it",
                             node->filename);
        }
        off = (s->tables_end + 511) & ~(uint64_t)511;
    }
    uint64_t end;
    if ((align && align_up_overflow_u64(off, s->cluster_size, &off)) ||
        add_overflow_u64(off, len, &end) || end > INT64_MAX) {
        return error_set(EFBIG, "%s: image file too large", node->filename);
    }
    *out = off;
    return 0;
}

/* What a write puts in the file: metadata of one kind, or guest data. */
enum qcow_meta { QCOW_META_HEADER, QCOW_META_L1, QCOW_META_L2, QCOW_DATA };

/*
 * The metadata that a write of [off, off + len) would overwrite, other
 * than the kind being written (an L2 entry goes into an L2 table); NULL
 * when none, or on an error (*err).
 */
static const char *qcow_meta_hit(struct qimg_node *node, struct qcow_state *s,
                                 uint64_t off, uint64_t len,
                                 enum qcow_meta writing, int *err)
{
    /* The header, backing name and L1 end by INT64_MAX (qcow_open). */
    const uint64_t end = len > UINT64_MAX - off ? UINT64_MAX : off + len;
    const uint64_t name = s->h.backing_file_offset;
    const uint64_t l1 = s->h.l1_table_offset;
    *err = 0;
    if (writing != QCOW_META_HEADER &&
        (off < QCOW_HEADER_SIZE ||
         (name != 0 && off < name + s->h.backing_file_size && name < end))) {
        return "the header";
    }
    if (writing != QCOW_META_L1 && off < l1 + s->l1_size * 8 && l1 < end) {
        return "the L1 table";
    }
    if (writing == QCOW_META_L2) {
        return NULL;
    }
    if (!s->l2_tables_built) {
        for (uint64_t i = 0; i < s->l1_size; i++) {
            if (s->l1[i] != 0 &&
                extent_set_add(&s->l2_tables, s->l1[i],
                               (uint64_t)s->l2_size * 8) < 0) {
                extent_set_free(&s->l2_tables);
                *err = error_set(ENOMEM, "%s: Out of memory", node->filename);
                return NULL;
            }
        }
        s->l2_tables_built = true;
    }
    return extent_set_overlaps(&s->l2_tables, off, len) ? "an L2 table"
                                                        : NULL;
}

/* A write of [off, off + len) that lies on other metadata fails. */
static int qcow_check_meta(struct qimg_node *node, struct qcow_state *s,
                           uint64_t off, uint64_t len, enum qcow_meta writing)
{
    int err;
    const char *what = qcow_meta_hit(node, s, off, len, writing, &err);
    if (what) {
        return error_set(EIO, "%s: qcow image is corrupt: a write at offset "
                         "%llu would overwrite %s",
                         node->filename, (unsigned long long)off, what);
    }
    return err;
}

/*
 * The L2 table for guest offset off, about to be written: allocated
 * (zeroed) if needed.
 */
static int qcow_ensure_l2(struct qimg_node *node, struct qcow_state *s,
                          uint64_t off)
{
    uint64_t l1_index = off >> s->shift;
    if (l1_index >= s->l1_size) {
        return error_set(EIO, "%s: offset %llu lies past the L1 table",
                         node->filename, (unsigned long long)off);
    }
    uint64_t bytes = (uint64_t)s->l2_size * 8;
    if (s->l1[l1_index] != 0) {
        /* Its entries are about to change: not if it lies on the header
         * or the L1 table. */
        int ret = qcow_check_meta(node, s, s->l1[l1_index], bytes,
                                  QCOW_META_L2);
        return ret < 0 ? ret : qcow_load_l2(node, s, s->l1[l1_index]);
    }
    uint64_t l2_off = 0;
    int ret = qcow_alloc_offset(node, s, true, bytes, &l2_off);
    if (ret < 0) {
        return ret;
    }
    uint64_t entry_at = s->h.l1_table_offset + l1_index * 8;
    ret = qcow_check_meta(node, s, entry_at, 8, QCOW_META_L1);
    if (ret < 0) {
        return ret;
    }
    if (s->l2_tables_built &&
        extent_set_add(&s->l2_tables, l2_off, bytes) < 0) {
        return error_set(ENOMEM, "%s: Out of memory", node->filename);
    }
    /* The zeroed table first, then the L1 entry that points to it. */
    ret = io_pwrite_zeroes(node->file, l2_off, bytes, false);
    if (ret < 0) {
        return ret;
    }
    uint8_t be[8];
    store_be64(be, l2_off);
    ret = io_pwrite(node->file, be, sizeof(be), entry_at);
    if (ret < 0) {
        return ret;
    }
    s->l1[l1_index] = l2_off;
    memset(s->l2, 0, (size_t)bytes);
    s->l2_offset = l2_off;
    return 0;
}

static int qcow_set_entry(struct qimg_node *node, struct qcow_state *s,
                          uint64_t off, uint64_t entry)
{
    uint32_t index = (uint32_t)((off >> s->h.cluster_bits) &
                                (s->l2_size - 1));
    uint8_t be[8];
    store_be64(be, entry);
    int ret = io_pwrite(node->file, be, sizeof(be),
                        s->l2_offset + (uint64_t)index * 8);
    if (ret < 0) {
        return ret;
    }
    s->l2[index] = entry;
    return 0;
}

/*
 * Write into a cluster that is unallocated or compressed: a new cluster
 * at the end of the file gets the old contents (the decompressed
 * cluster, or the backing file's bytes; zeros without one) and the data.
 */
static int qcow_write_new_cluster(struct qimg_node *node,
                                  struct qcow_state *s, uint64_t entry,
                                  uint64_t off, const uint8_t *p, size_t n)
{
    uint64_t cluster_start = off & ~(uint64_t)(s->cluster_size - 1);
    uint64_t in_cluster = off - cluster_start;
    uint64_t host = 0;
    int ret = qcow_alloc_offset(node, s, true, s->cluster_size, &host);
    if (ret < 0) {
        return ret;
    }
    if (n == s->cluster_size) {
        ret = io_pwrite(node->file, p, n, host);
    } else {
        if (entry & QCOW_OFLAG_COMPRESSED) {
            ret = qcow_decompress(node, s, entry);
            if (ret == 0) {
                memcpy(s->cluster_buf, s->cluster_cache, s->cluster_size);
            }
        } else {
            /* The guest area may end inside the last cluster. */
            uint64_t avail = min_u64(s->cluster_size,
                                     node->size - cluster_start);
            memset(s->cluster_buf, 0, s->cluster_size);
            ret = node_read_below(node, s->cluster_buf, (size_t)avail,
                                  cluster_start);
        }
        if (ret == 0) {
            memcpy(s->cluster_buf + in_cluster, p, n);
            ret = io_pwrite(node->file, s->cluster_buf, s->cluster_size,
                            host);
        }
    }
    if (ret < 0) {
        return ret;
    }
    return qcow_set_entry(node, s, off, host);
}

/* Guest writes would have to be encrypted: not done yet. */
static int qcow_check_plain(struct qimg_node *node,
                            const struct qcow_state *s)
{
    if (s->h.crypt_method != QCOW_CRYPT_NONE) {
        return error_set(ENOTSUP, "%s: writing encrypted qcow images is not "
                         "supported yet", node->filename);
    }
    return 0;
}

static int qcow_pwrite(struct qimg_node *node, const void *buf, size_t len,
                       uint64_t off)
{
    struct qcow_state *s = node->opaque;
    int check = qcow_check_plain(node, s);
    if (check < 0) {
        return check;
    }
    const uint8_t *p = buf;
    while (len > 0) {
        uint64_t in_cluster = off & (s->cluster_size - 1);
        size_t n = (size_t)min_u64(len, s->cluster_size - in_cluster);
        int ret = qcow_ensure_l2(node, s, off);
        if (ret < 0) {
            return ret;
        }
        uint64_t entry = s->l2[(off >> s->h.cluster_bits) &
                               (s->l2_size - 1)];
        if (entry == 0 || (entry & QCOW_OFLAG_COMPRESSED)) {
            ret = qcow_write_new_cluster(node, s, entry, off, p, n);
        } else {
            ret = qcow_check_meta(node, s, entry + in_cluster, n, QCOW_DATA);
            if (ret == 0) {
                ret = io_pwrite(node->file, p, n, entry + in_cluster);
            }
        }
        if (ret < 0) {
            return ret;
        }
        p += n;
        off += n;
        len -= n;
    }
    return 0;
}

/*
 * Deflate as QEMU: default level, 4 KiB window, memLevel 9; -ENOSPC when
 * the result does not fit in the cluster.
 */
static int64_t qcow_deflate(uint8_t *dst, size_t cap, const uint8_t *src,
                            size_t len)
{
    z_stream z = {0};
    if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9,
                     Z_DEFAULT_STRATEGY) != Z_OK) {
        return -ENOMEM;
    }
    z.next_in = (Bytef *)(uintptr_t)src;
    z.avail_in = (uInt)len;
    z.next_out = dst;
    z.avail_out = (uInt)cap;
    int ret = deflate(&z, Z_FINISH);
    int64_t out = ret == Z_STREAM_END ? (int64_t)(cap - z.avail_out)
                                      : -ENOSPC;
    deflateEnd(&z);
    return out;
}

static int qcow_pwrite_compressed(struct qimg_node *node, const void *buf,
                                  size_t len, uint64_t off)
{
    struct qcow_state *s = node->opaque;
    int check = qcow_check_plain(node, s);
    if (check < 0) {
        return check;
    }
    /* The image's tail is compressed as a whole, zero-padded cluster. */
    memset(s->cluster_buf, 0, s->cluster_size);
    memcpy(s->cluster_buf, buf, len);
    int64_t clen = qcow_deflate(s->z_buf, s->cluster_size, s->cluster_buf,
                                s->cluster_size);
    if (clen == -ENOSPC || clen >= (int64_t)s->cluster_size) {
        return qcow_pwrite(node, buf, len, off);
    }
    if (clen < 0) {
        return error_set((int)-clen, "%s: could not compress",
                         node->filename);
    }
    int ret = qcow_ensure_l2(node, s, off);
    if (ret < 0) {
        return ret;
    }
    uint64_t entry = s->l2[(off >> s->h.cluster_bits) & (s->l2_size - 1)];
    if (entry != 0 && !(entry & QCOW_OFLAG_COMPRESSED)) {
        /* An allocated cluster is rewritten in place, uncompressed. */
        return qcow_pwrite(node, buf, len, off);
    }
    uint64_t host = 0;
    ret = qcow_alloc_offset(node, s, false, (uint64_t)clen, &host);
    if (ret < 0) {
        return ret;
    }
    unsigned bits = 63 - s->h.cluster_bits;
    if (host >= (1ull << bits)) {
        return error_set(EFBIG, "%s: image file too large for compressed "
                         "clusters", node->filename);
    }
    ret = io_pwrite(node->file, s->z_buf, (size_t)clen, host);
    if (ret < 0) {
        return ret;
    }
    return qcow_set_entry(node, s, off,
                          host | QCOW_OFLAG_COMPRESSED |
                              ((uint64_t)clen << bits));
}

static int qcow_flush(struct qimg_node *node)
{
    return node_sync(node, node->file);
}

/* One cluster per run, as QEMU's. */
static int qcow_block_status(struct qimg_node *node, uint64_t off,
                             uint64_t len, uint64_t *pnum,
                             uint64_t *host_off)
{
    struct qcow_state *s = node->opaque;
    uint64_t in_cluster = off & (s->cluster_size - 1);
    *pnum = min_u64(len, s->cluster_size - in_cluster);
    uint64_t entry;
    int ret = qcow_get_entry(node, s, off, &entry);
    if (ret < 0) {
        return ret;
    }
    if (entry == 0) {
        return 0;
    }
    if (entry & QCOW_OFLAG_COMPRESSED) {
        return BS_DATA | BS_COMPRESSED;
    }
    /* [QEMU] encrypted data has no host offset a reader could use. */
    if (s->h.crypt_method != QCOW_CRYPT_NONE) {
        return BS_DATA;
    }
    *host_off = entry + in_cluster;
    return BS_DATA | BS_OFFSET_VALID;
}

static int qcow_get_info(struct qimg_node *node, struct qimg_image_info *info)
{
    struct qcow_state *s = node->opaque;
    info->cluster_size = s->cluster_size;
    info->encrypted = s->h.crypt_method != QCOW_CRYPT_NONE;
    return 0;
}

static const struct qimg_opt_desc qcow_create_opts[] = {
    {"size", QIMG_OPT_SIZE, "Virtual disk size", NULL},
    {"backing_file", QIMG_OPT_STRING, "File name of a base image", NULL},
    {"backing_fmt", QIMG_OPT_STRING, "Format of the backing image", NULL},
    {"encryption", QIMG_OPT_BOOL, "Encrypt the image with format 'aes'. "
     "(Deprecated in favor of encrypt.format=aes)", NULL},
    {"encrypt.format", QIMG_OPT_STRING, "Encrypt the image, format "
     "choices: 'aes'", NULL},
    {"encrypt.key-secret", QIMG_OPT_STRING, "ID of the secret that "
     "provides the AES encryption key", NULL},
    {NULL, 0, NULL, NULL},
};

/*
 * As QEMU creates: the header, the backing file name behind it, the L1
 * table (8-byte aligned) written as whole zero sectors.  With a backing
 * file the clusters are 512 bytes and the L2 tables 4096 entries, else
 * 4 KiB clusters and 512 entries.
 */
static int qcow_create(const char *filename, const struct qimg_opts *opts)
{
    uint64_t size = 0;
    const char *text = qimg_opts_get(opts, "size");
    if (text && qimg_parse_size(text, 'B', &size) < 0) {
        return error_set(EINVAL, "Parameter 'size' expects a non-negative "
                         "number below 2^64");
    }
    bool encrypt = false;
    text = qimg_opts_get(opts, "encryption");
    if (text && !opt_parse_bool(text, &encrypt)) {
        return error_set(EINVAL, "Parameter 'encryption' expects 'on' or "
                         "'off'");
    }
    const char *format = qimg_opts_get(opts, "encrypt.format");
    if (format && strcmp(format, "aes") != 0) {
        return error_set(EINVAL, "Parameter 'format' does not accept "
                         "value '%s'", format);
    }
    if (encrypt || format) {
        if (!qimg_opts_get(opts, "encrypt.key-secret")) {
            return error_set(EINVAL, "Parameter 'encrypt.key-secret' is "
                             "required for cipher");
        }
        return error_set(ENOTSUP, "qimg cannot create AES-encrypted qcow "
                         "images");
    }
    const char *backing = qimg_opts_get(opts, "backing_file");
    size_t blen = backing ? strlen(backing) : 0;
    if (blen > QCOW_MAX_BACKING_NAME) {
        return error_set(EINVAL, "Backing file name too long");
    }
    if (size == 0) {
        return error_set(EINVAL, "Image size is too small, cannot be zero "
                         "length");
    }
    size = (size + 511) & ~(uint64_t)511;
    struct qcow_header h = {
        .magic = QCOW_MAGIC,
        .version = QCOW_VERSION,
        .size = size,
        .cluster_bits = blen ? 9 : 12,
        .l2_bits = blen ? 12 : 9,
        .crypt_method = QCOW_CRYPT_NONE,
    };
    uint64_t header_size = QCOW_HEADER_SIZE;
    if (blen) {
        h.backing_file_offset = header_size;
        h.backing_file_size = (uint32_t)blen;
        header_size += blen;
    }
    h.l1_table_offset = (header_size + 7) & ~(uint64_t)7;
    unsigned shift = h.cluster_bits + h.l2_bits;
    uint64_t l1_size = div_round_up_u64(size, 1ull << shift);
    if (size > (uint64_t)INT64_MAX - 511 || l1_size > QCOW_MAX_L1_SIZE) {
        return error_set(EINVAL, "Image too large");
    }
    uint64_t l1_bytes = (l1_size * 8 + 511) & ~(uint64_t)511;
    size_t total = (size_t)(h.l1_table_offset + l1_bytes);
    uint8_t *buf = calloc(1, total);
    if (!buf) {
        return error_set(ENOMEM, "Out of memory");
    }
    qcow_header_encode(&h, buf);
    if (blen) {
        memcpy(buf + QCOW_HEADER_SIZE, backing, blen);
    }
    /* Only nocow reaches the file protocol. */
    struct qimg_opts *file_opts = qimg_opts_new();
    const char *nocow = qimg_opts_get(opts, "nocow");
    if (!file_opts || (nocow && qimg_opts_set(file_opts, "nocow", nocow))) {
        qimg_opts_free(file_opts);
        free(buf);
        return error_set(ENOMEM, "Out of memory");
    }
    struct qimg_io *io;
    int ret = create_file(filename, file_opts, &io);
    qimg_opts_free(file_opts);
    if (ret < 0) {
        free(buf);
        return ret;
    }
    ret = io_pwrite(io, buf, total, 0);
    free(buf);
    if (ret == 0) {
        ret = io_flush(io);
    }
    io_close(io);
    if (ret < 0) {
        return error_prefix(-ret, "Could not write the qcow image");
    }
    return 0;
}

/* [QEMU] the key changes what the image reads as. */
static const char *const qcow_strong_opts[] = {"encrypt.key-secret", NULL};

const struct qimg_format_ops format_qcow = {
    .name = "qcow",
    .strong_opts = qcow_strong_opts,
    .probe = qcow_probe,
    .open = qcow_open,
    .close = qcow_close,
    .pread = qcow_pread,
    .pwrite = qcow_pwrite,
    .pwrite_compressed = qcow_pwrite_compressed,
    .flush = qcow_flush,
    .block_status = qcow_block_status,
    .get_info = qcow_get_info,
    .create_opts = qcow_create_opts,
    .create = qcow_create,
};
