/*
 * qcow2 header: decoding with QEMU's open-time validation, and encoding.
 *
 * Everything here works on a byte buffer holding the start of the image
 * file.  Bytes past the end of the buffer read as zero, as bytes past the
 * end of a file do, so a short buffer is never overrun.  Every value
 * taken from the buffer is checked before it sizes an allocation; the
 * largest allocation is bounded by the cluster size (2 MiB).
 *
 * The checks run in the order qemu-img 7.2 runs them, so a header with
 * several problems gives the same message as QEMU.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "formats/qcow2/qcow2.h"
#include "util/checked.h"
#include "util/endian.h"
#include "util/grow.h"

/* Names as QEMU 7.2 writes them in the feature name table. */
const struct qcow2_feature qcow2_std_features[QCOW2_NB_STD_FEATURES] = {
    {QCOW2_FEAT_TYPE_INCOMPATIBLE, 0, "dirty bit"},
    {QCOW2_FEAT_TYPE_INCOMPATIBLE, 1, "corrupt bit"},
    {QCOW2_FEAT_TYPE_INCOMPATIBLE, 2, "external data file"},
    {QCOW2_FEAT_TYPE_INCOMPATIBLE, 3, "compression type"},
    {QCOW2_FEAT_TYPE_INCOMPATIBLE, 4, "extended L2 entries"},
    {QCOW2_FEAT_TYPE_COMPATIBLE, 0, "lazy refcounts"},
    {QCOW2_FEAT_TYPE_AUTOCLEAR, 0, "bitmaps"},
    {QCOW2_FEAT_TYPE_AUTOCLEAR, 1, "raw external data"},
};

/* ---- Reading the buffer ------------------------------------------------ */

/* n bytes at off of the file held in buf[0..len), zeros past its end. */
static void get_bytes(const uint8_t *buf, size_t len, uint64_t off, void *dst,
                      size_t n)
{
    uint8_t *d = dst;
    size_t have = 0;
    if (off < len) {
        have = (size_t)min_u64(len - off, n);
        memcpy(d, buf + off, have);
    }
    memset(d + have, 0, n - have);
}

static uint8_t get_u8(const uint8_t *buf, size_t len, uint64_t off)
{
    return off < len ? buf[off] : 0;
}

static uint32_t get_be32(const uint8_t *buf, size_t len, uint64_t off)
{
    uint8_t b[4];
    get_bytes(buf, len, off, b, sizeof(b));
    return load_be32(b);
}

static uint64_t get_be64(const uint8_t *buf, size_t len, uint64_t off)
{
    uint8_t b[8];
    get_bytes(buf, len, off, b, sizeof(b));
    return load_be64(b);
}

/*
 * A NUL-terminated copy of the n bytes at off.  Like QEMU, which keeps
 * these names as C strings, an embedded NUL ends the string.
 */
static char *get_string(const uint8_t *buf, size_t len, uint64_t off, size_t n)
{
    char *s = malloc(n + 1);
    if (!s) {
        return NULL;
    }
    get_bytes(buf, len, off, s, n);
    s[n] = '\0';
    return s;
}

/* ---- Helpers ----------------------------------------------------------- */

uint64_t qcow2_size_to_l1(uint64_t size, unsigned cluster_bits,
                          bool extended_l2)
{
    /* An L2 table is one cluster of 8- or 16-byte entries. */
    unsigned l2_bits = cluster_bits - (extended_l2 ? 4 : 3);
    unsigned shift = cluster_bits + l2_bits;
    /* QEMU's arithmetic wraps for sizes near 2^64; so does this. */
    return (size + ((uint64_t)1 << shift) - 1) >> shift;
}

const char *qcow2_compression_name(uint8_t type)
{
    switch (type) {
    case QCOW2_COMPRESSION_ZLIB:
        return "zlib";
    case QCOW2_COMPRESSION_ZSTD:
        return "zstd";
    default:
        return NULL;
    }
}

/*
 * QEMU's qcow2_validate_table(): a table of entries * entry_len bytes at
 * offset must fit max_bytes, start on a cluster and end below INT64_MAX.
 */
static int validate_table(uint64_t offset, uint64_t entries, uint64_t entry_len,
                          uint64_t max_bytes, uint64_t cluster_size,
                          const char *what)
{
    if (entries > max_bytes / entry_len) {
        return error_set(EFBIG, "%s too large", what);
    }
    /* entries * entry_len <= max_bytes: no overflow. */
    if ((uint64_t)INT64_MAX - entries * entry_len < offset ||
        !is_aligned_u64(offset, cluster_size)) {
        return error_set(EINVAL, "%s offset invalid", what);
    }
    return 0;
}

int qcow2_validate_table(uint64_t offset, uint64_t entries,
                         uint64_t entry_len, uint64_t max_bytes,
                         uint64_t cluster_size, const char *what)
{
    return validate_table(offset, entries, entry_len, max_bytes,
                          cluster_size, what);
}

/* [spec: Additional fields] compression_type against incompatible bit 3. */
static int validate_compression_type(uint8_t type, uint64_t incompat)
{
    if (!qcow2_compression_name(type)) {
        return error_set(ENOTSUP, "qcow2: unknown compression type: %u", type);
    }
    if (type == QCOW2_COMPRESSION_ZLIB) {
        if (incompat & QCOW2_INCOMPAT_COMPRESSION) {
            return error_set(EINVAL, "qcow2: Compression type incompatible "
                                     "feature bit must not be set");
        }
    } else if (!(incompat & QCOW2_INCOMPAT_COMPRESSION)) {
        return error_set(EINVAL, "qcow2: Compression type incompatible "
                                 "feature bit must be set");
    }
    return 0;
}

/* ---- Fixed header [spec: Header] --------------------------------------- */

static void decode_fixed(const uint8_t *buf, size_t len,
                         struct qcow2_header *hdr)
{
    hdr->magic = get_be32(buf, len, 0);
    hdr->version = get_be32(buf, len, 4);
    hdr->backing_file_offset = get_be64(buf, len, 8);
    hdr->backing_file_size = get_be32(buf, len, 16);
    hdr->cluster_bits = get_be32(buf, len, 20);
    hdr->size = get_be64(buf, len, 24);
    hdr->crypt_method = get_be32(buf, len, 32);
    hdr->l1_size = get_be32(buf, len, 36);
    hdr->l1_table_offset = get_be64(buf, len, 40);
    hdr->refcount_table_offset = get_be64(buf, len, 48);
    hdr->refcount_table_clusters = get_be32(buf, len, 56);
    hdr->nb_snapshots = get_be32(buf, len, 60);
    hdr->snapshots_offset = get_be64(buf, len, 64);
    /* v3 fields [spec: Header, bytes 72-103]; v2 overrides them below. */
    hdr->incompatible_features = get_be64(buf, len, 72);
    hdr->compatible_features = get_be64(buf, len, 80);
    hdr->autoclear_features = get_be64(buf, len, 88);
    hdr->refcount_order = get_be32(buf, len, 96);
    hdr->header_length = get_be32(buf, len, 100);
    hdr->compression_type = get_u8(buf, len, QCOW2_COMPRESSION_TYPE_OFFSET);
}

size_t qcow2_header_bytes_needed(const uint8_t *buf, size_t len)
{
    uint32_t version = get_be32(buf, len, 4);
    uint32_t bits = get_be32(buf, len, 20);
    if (get_be32(buf, len, 0) != QCOW2_MAGIC || version < 2 || version > 3 ||
        bits < QCOW2_MIN_CLUSTER_BITS || bits > QCOW2_MAX_CLUSTER_BITS) {
        return QCOW2_HEADER_SIZE;
    }
    /* Clusters are at least 512 bytes, more than the fixed header. */
    return (size_t)1 << bits;
}

/* ---- Header extensions [spec: Header extensions] ----------------------- */

/*
 * Where the feature name table was found by the early pass, used only to
 * name unknown incompatible features in the error message.
 */
struct feature_table_ref {
    bool found;
    uint64_t off;
    uint32_t len;
};

static int parse_feature_table(const uint8_t *buf, size_t len, uint64_t off,
                               uint32_t elen, struct qcow2_header *hdr)
{
    /*
     * [spec: Feature name table] 48-byte entries.  QEMU reads the table
     * into a zero-padded buffer and stops at the first entry whose name
     * is empty; a partial last entry reads as zero-padded.
     */
    size_t n = 0;
    while ((uint64_t)n * QCOW2_FEATURE_ENTRY_SIZE + 2 < elen &&
           get_u8(buf, len, off + (uint64_t)n * QCOW2_FEATURE_ENTRY_SIZE + 2) !=
               0) {
        n++;
    }
    struct qcow2_feature *f = NULL;
    if (n > 0) {
        f = calloc(n, sizeof(*f));
        if (!f) {
            return error_set(ENOMEM, "Out of memory");
        }
    }
    for (size_t i = 0; i < n; i++) {
        uint64_t e = off + (uint64_t)i * QCOW2_FEATURE_ENTRY_SIZE;
        uint64_t end = (uint64_t)off + elen;
        uint8_t raw[QCOW2_FEATURE_ENTRY_SIZE] = {0};
        size_t avail = (size_t)min_u64(end - e, QCOW2_FEATURE_ENTRY_SIZE);
        get_bytes(buf, len, e, raw, avail);
        f[i].type = raw[0];
        f[i].bit = raw[1];
        memcpy(f[i].name, raw + 2, QCOW2_FEATURE_NAME_SIZE);
        f[i].name[QCOW2_FEATURE_NAME_SIZE] = '\0';
    }
    free(hdr->features);
    hdr->features = f;
    hdr->nb_features = n;
    return 0;
}

static int add_unknown_ext(const uint8_t *buf, size_t len, uint64_t off,
                           uint32_t type, uint32_t elen,
                           struct qcow2_header *hdr)
{
    struct qcow2_unknown_ext *list =
        grow_array(hdr->unknown_exts, &hdr->cap_unknown_exts,
                   hdr->nb_unknown_exts + 1, sizeof(*list));
    if (!list) {
        return error_set(ENOMEM, "Out of memory");
    }
    hdr->unknown_exts = list;
    uint8_t *data = malloc(elen ? elen : 1);
    if (!data) {
        return error_set(ENOMEM, "Out of memory");
    }
    get_bytes(buf, len, off, data, elen);
    list[hdr->nb_unknown_exts++] = (struct qcow2_unknown_ext){
        .type = type,
        .len = elen,
        .data = data,
    };
    return 0;
}

/* [spec: Bitmaps extension], with QEMU's checks and messages. */
static int parse_bitmaps_ext(const uint8_t *buf, size_t len, uint64_t off,
                             uint32_t elen, struct qcow2_header *hdr)
{
    if (elen != QCOW2_EXT_BITMAPS_SIZE) {
        return error_set(EINVAL, "bitmaps_ext: Invalid extension length");
    }
    if (!(hdr->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS)) {
        /*
         * [spec: Header, autoclear bit 0] a program that does not know
         * bitmaps wrote the image: every bitmap is inconsistent.  QEMU
         * warns and ignores the extension (v2 images never have the bit).
         */
        hdr->bitmaps_inconsistent = true;
        return 0;
    }
    uint32_t nb = get_be32(buf, len, off);
    uint32_t reserved = get_be32(buf, len, off + 4);
    uint64_t dir_size = get_be64(buf, len, off + 8);
    uint64_t dir_offset = get_be64(buf, len, off + 16);
    if (reserved != 0) {
        return error_set(EINVAL, "bitmaps_ext: Reserved field is not zero");
    }
    if (nb > QCOW2_MAX_BITMAPS) {
        return error_set(EINVAL,
                         "bitmaps_ext: Image has %" PRIu32
                         " bitmaps, exceeding the QEMU supported maximum "
                         "of %d",
                         nb, QCOW2_MAX_BITMAPS);
    }
    if (nb == 0) {
        return error_set(EINVAL, "found bitmaps extension with zero "
                                 "bitmaps");
    }
    if (!is_aligned_u64(dir_offset, hdr->cluster_size)) {
        return error_set(EINVAL, "bitmaps_ext: invalid bitmap directory "
                                 "offset");
    }
    if (dir_size > QCOW2_MAX_BITMAP_DIRECTORY_SIZE) {
        return error_set(EINVAL,
                         "bitmaps_ext: bitmap directory size (%" PRIu64
                         ") exceeds the maximum supported size (%u)",
                         dir_size, QCOW2_MAX_BITMAP_DIRECTORY_SIZE);
    }
    hdr->nb_bitmaps = nb;
    hdr->bitmap_directory_size = dir_size;
    hdr->bitmap_directory_offset = dir_offset;
    return 0;
}

/* [spec: Full disk encryption header pointer]. */
static int parse_crypto_ext(const uint8_t *buf, size_t len, uint64_t off,
                            uint32_t elen, struct qcow2_header *hdr)
{
    if (hdr->crypt_method != QCOW2_CRYPT_LUKS) {
        return error_set(EINVAL, "CRYPTO header extension only expected "
                                 "with LUKS encryption method");
    }
    if (elen != QCOW2_EXT_CRYPTO_SIZE) {
        return error_set(EINVAL,
                         "CRYPTO header extension size %" PRIu32
                         ", but expected size %d",
                         elen, QCOW2_EXT_CRYPTO_SIZE);
    }
    uint64_t offset = get_be64(buf, len, off);
    uint64_t length = get_be64(buf, len, off + 8);
    if (!is_aligned_u64(offset, hdr->cluster_size)) {
        return error_set(EINVAL,
                         "Encryption header offset '%" PRIu64
                         "' is not a multiple of cluster size '%" PRIu64 "'",
                         offset, hdr->cluster_size);
    }
    /* The LUKS header itself is opened by crypto.c. */
    hdr->has_crypto_ext = true;
    hdr->crypto_offset = offset;
    hdr->crypto_length = length;
    return 0;
}

/*
 * Walk the extensions from header_length to ext_end.
 *
 * QEMU walks them twice.  When unknown incompatible bits are set, an early
 * pass only looks for the feature name table to name them, and stops
 * silently at the first problem (including any crypto extension, because
 * the encryption method is not known yet at that point).  Otherwise the
 * full pass reads every extension and fails on any problem.  early selects
 * the first behaviour and records the table in *ft.
 */
static int walk_extensions(const uint8_t *buf, size_t len, bool early,
                           struct feature_table_ref *ft,
                           struct qcow2_header *hdr)
{
    uint64_t off = hdr->header_length;
    while (off < hdr->ext_end) {
        uint32_t type = get_be32(buf, len, off);
        uint32_t elen = get_be32(buf, len, off + 4);
        off += QCOW2_EXT_HEADER_SIZE;
        /* The extension must end before ext_end (and so in cluster 0). */
        if (off > hdr->ext_end || elen > hdr->ext_end - off) {
            return error_set(EINVAL, "Header extension too large");
        }
        int ret = 0;
        switch (type) {
        case QCOW2_EXT_END:
            return 0;
        case QCOW2_EXT_BACKING_FORMAT:
            if (elen >= QCOW2_BACKING_FORMAT_BUF) {
                return error_set(EINVAL,
                                 "ERROR: ext_backing_format: len=%" PRIu32
                                 " too large (>=%d)",
                                 elen, QCOW2_BACKING_FORMAT_BUF);
            }
            if (!early) {
                char *s = get_string(buf, len, off, elen);
                if (!s) {
                    return error_set(ENOMEM, "Out of memory");
                }
                free(hdr->backing_format);
                hdr->backing_format = s;
            }
            break;
        case QCOW2_EXT_FEATURE_TABLE:
            if (early) {
                ft->found = true;
                ft->off = off;
                ft->len = elen;
            } else {
                ret = parse_feature_table(buf, len, off, elen, hdr);
            }
            break;
        case QCOW2_EXT_CRYPTO_HEADER:
            if (early) {
                return error_set(EINVAL,
                                 "CRYPTO header extension only "
                                 "expected with LUKS encryption method");
            }
            ret = parse_crypto_ext(buf, len, off, elen, hdr);
            break;
        case QCOW2_EXT_BITMAPS:
            ret = parse_bitmaps_ext(buf, len, off, elen, hdr);
            break;
        case QCOW2_EXT_DATA_FILE:
            if (!early) {
                char *s = get_string(buf, len, off, elen);
                if (!s) {
                    return error_set(ENOMEM, "Out of memory");
                }
                free(hdr->data_file);
                hdr->data_file = s;
            }
            break;
        default:
            /* Unknown: ignored, but kept to be written back. */
            if (!early) {
                ret = add_unknown_ext(buf, len, off, type, elen, hdr);
            }
            break;
        }
        if (ret < 0) {
            return ret;
        }
        /* elen <= ext_end <= 2 MiB: no overflow. */
        off += ((uint64_t)elen + 7) & ~(uint64_t)7;
    }
    return 0;
}

/*
 * "Unsupported qcow2 feature(s): ..." naming each unknown incompatible
 * bit from the image's feature table when it has one, the rest as a hex
 * mask, in QEMU's format.
 */
static int report_unsupported(const uint8_t *buf, size_t len,
                              const struct feature_table_ref *ft, uint64_t mask)
{
    /* Each name is at most 46 bytes; there are at most 64 named bits. */
    char text[64 * (QCOW2_FEATURE_NAME_SIZE + 2) + 64];
    size_t used = 0;
    text[0] = '\0';
    for (uint64_t i = 0; ft->found; i++) {
        uint64_t e = ft->off + i * QCOW2_FEATURE_ENTRY_SIZE;
        uint64_t end = ft->off + ft->len;
        /* QEMU stops at the first entry with an empty name. */
        if (e + 2 >= end || get_u8(buf, len, e + 2) == 0) {
            break;
        }
        uint8_t type = get_u8(buf, len, e);
        /*
         * QEMU computes 1ULL << bit; on x86 the shift count is taken
         * modulo 64, so a bit number of 69 names bit 5.  Reproduced.
         */
        uint64_t bit = (uint64_t)1 << (get_u8(buf, len, e + 1) & 63);
        if (type != QCOW2_FEAT_TYPE_INCOMPATIBLE || !(mask & bit)) {
            continue;
        }
        char name[QCOW2_FEATURE_NAME_SIZE + 1] = {0};
        size_t avail = (size_t)min_u64(end - (e + 2), QCOW2_FEATURE_NAME_SIZE);
        get_bytes(buf, len, e + 2, name, avail);
        int n = snprintf(text + used, sizeof(text) - used, "%s%s",
                         used ? ", " : "", name);
        if (n > 0 && (size_t)n < sizeof(text) - used) {
            used += (size_t)n;
        }
        mask &= ~bit;
    }
    if (mask) {
        snprintf(text + used, sizeof(text) - used,
                 "%sUnknown incompatible feature: %" PRIx64, used ? ", " : "",
                 mask);
    }
    return error_set(ENOTSUP, "Unsupported qcow2 feature(s): %s", text);
}

/* ---- Decoding ---------------------------------------------------------- */

int qcow2_header_decode(const uint8_t *buf, size_t len, unsigned flags,
                        struct qcow2_header *hdr)
{
    memset(hdr, 0, sizeof(*hdr));
    decode_fixed(buf, len, hdr);

    if (hdr->magic != QCOW2_MAGIC) {
        return error_set(EINVAL, "Image is not in qcow2 format");
    }
    if (hdr->version < 2 || hdr->version > 3) {
        return error_set(ENOTSUP, "Unsupported qcow2 version %" PRIu32,
                         hdr->version);
    }
    if (hdr->cluster_bits < QCOW2_MIN_CLUSTER_BITS ||
        hdr->cluster_bits > QCOW2_MAX_CLUSTER_BITS) {
        return error_set(EINVAL, "Unsupported cluster size: 2^%" PRIu32,
                         hdr->cluster_bits);
    }
    hdr->cluster_size = (uint64_t)1 << hdr->cluster_bits;

    if (hdr->version == 2) {
        /* [spec: Header] v2: no v3 fields; implied values. */
        hdr->incompatible_features = 0;
        hdr->compatible_features = 0;
        hdr->autoclear_features = 0;
        hdr->refcount_order = QCOW2_V2_REFCOUNT_ORDER;
        hdr->header_length = QCOW2_V2_HEADER_LENGTH;
    } else if (hdr->header_length < QCOW2_V3_MIN_HEADER_LENGTH) {
        return error_set(EINVAL, "qcow2 header too short");
    }
    if (hdr->header_length > hdr->cluster_size) {
        return error_set(EINVAL, "qcow2 header exceeds cluster size");
    }
    if (hdr->header_length > QCOW2_HEADER_SIZE) {
        /* Bounded by the cluster size just checked. */
        hdr->unknown_fields_len = hdr->header_length - QCOW2_HEADER_SIZE;
        hdr->unknown_fields = malloc(hdr->unknown_fields_len);
        if (!hdr->unknown_fields) {
            return error_set(ENOMEM, "Out of memory");
        }
        get_bytes(buf, len, QCOW2_HEADER_SIZE, hdr->unknown_fields,
                  hdr->unknown_fields_len);
    }
    if (hdr->backing_file_offset > hdr->cluster_size) {
        return error_set(EINVAL, "Invalid backing file offset");
    }
    /* [spec: Header extensions] they end where the backing name starts. */
    hdr->ext_end =
        hdr->backing_file_offset ? hdr->backing_file_offset : hdr->cluster_size;

    /* [spec: Additional fields] present iff header_length > its offset. */
    if (hdr->header_length <= QCOW2_COMPRESSION_TYPE_OFFSET) {
        hdr->compression_type = QCOW2_COMPRESSION_ZLIB;
    }
    int ret = validate_compression_type(hdr->compression_type,
                                        hdr->incompatible_features);
    if (ret < 0) {
        return ret;
    }

    uint64_t unknown = hdr->incompatible_features & ~QCOW2_INCOMPAT_MASK;
    if (unknown) {
        struct feature_table_ref ft = {0};
        /* Its errors are not reported: QEMU passes no error object. */
        walk_extensions(buf, len, true, &ft, hdr);
        return report_unsupported(buf, len, &ft, unknown);
    }
    if ((hdr->incompatible_features & QCOW2_INCOMPAT_CORRUPT) &&
        (flags & QCOW2_DECODE_RDWR) && !(flags & QCOW2_DECODE_CHECK)) {
        /* [spec: Header, incompatible bit 1] read-only unless repairing. */
        return error_set(EACCES, "qcow2: Image is corrupt; cannot be "
                                 "opened read/write");
    }
    bool extl2 = (hdr->incompatible_features & QCOW2_INCOMPAT_EXTL2) != 0;
    if (extl2 && hdr->cluster_size / QCOW2_EXTL2_SUBCLUSTERS <
                     QCOW2_MIN_SUBCLUSTER_SIZE) {
        return error_set(EINVAL, "Unsupported subcluster size: %" PRIu64,
                         hdr->cluster_size / QCOW2_EXTL2_SUBCLUSTERS);
    }
    if (hdr->refcount_order > QCOW2_MAX_REFCOUNT_ORDER) {
        return error_set(EINVAL, "Reference count entry width too large; "
                                 "may not exceed 64 bits");
    }
    if (hdr->refcount_table_clusters == 0 && !(flags & QCOW2_DECODE_CHECK)) {
        return error_set(EINVAL, "Image does not contain a reference count "
                                 "table");
    }
    ret =
        validate_table(hdr->refcount_table_offset, hdr->refcount_table_clusters,
                       hdr->cluster_size, QCOW2_MAX_REFTABLE_SIZE,
                       hdr->cluster_size, "Reference count table");
    if (ret < 0) {
        return ret;
    }
    if (!(flags & QCOW2_DECODE_CHECK)) {
        /*
         * Entries have variable length: here only their count and the
         * offset; qcow2_snapshots_decode() checks the total size.
         */
        ret = validate_table(hdr->snapshots_offset, hdr->nb_snapshots,
                             QCOW2_SNAPSHOT_HEADER_SIZE,
                             (uint64_t)QCOW2_SNAPSHOT_HEADER_SIZE *
                                 QCOW2_MAX_SNAPSHOTS,
                             hdr->cluster_size, "Snapshot table");
        if (ret < 0) {
            return ret;
        }
    }
    ret =
        validate_table(hdr->l1_table_offset, hdr->l1_size, sizeof(uint64_t),
                       QCOW2_MAX_L1_SIZE, hdr->cluster_size, "Active L1 table");
    if (ret < 0) {
        return ret;
    }
    uint64_t l1_needed = qcow2_size_to_l1(hdr->size, hdr->cluster_bits, extl2);
    if (l1_needed > QCOW2_MAX_L1_VM_STATE_INDEX) {
        return error_set(EFBIG, "Image is too big");
    }
    if (hdr->l1_size < l1_needed) {
        return error_set(EINVAL, "L1 table is too small");
    }
    /* QEMU reads the L1 table here; a read past its limit fails. */
    if (hdr->l1_size > 0 &&
        !qcow2_read_in_range(hdr->l1_table_offset,
                             (uint64_t)hdr->l1_size * sizeof(uint64_t))) {
        return error_set_errno(EIO, "Could not read L1 table");
    }
    if (hdr->crypt_method > QCOW2_CRYPT_LUKS) {
        /* QEMU prints the 32-bit value as a signed int. */
        return error_set(EINVAL, "Unsupported encryption method %d",
                         (int)hdr->crypt_method);
    }
    /* Then it reads the refcount table. */
    if (hdr->refcount_table_clusters > 0 &&
        !qcow2_read_in_range(hdr->refcount_table_offset,
                             (uint64_t)hdr->refcount_table_clusters *
                                 hdr->cluster_size)) {
        return error_set_errno(EIO, "Could not initialize refcount "
                                    "handling");
    }

    ret = walk_extensions(buf, len, false, NULL, hdr);
    if (ret < 0) {
        return ret;
    }

    /*
     * The pure part of opening the data file [spec: Header, incompatible
     * bit 2, autoclear bit 1].  With QCOW2_DECODE_NO_IO QEMU 7.2 (with the
     * CVE-2024-4467 fix) does not open it and checks neither rule.
     */
    if (!(flags & QCOW2_DECODE_NO_IO)) {
        if (hdr->incompatible_features & QCOW2_INCOMPAT_DATA_FILE) {
            if (!hdr->data_file) {
                return error_set(EINVAL, "'data-file' is required for this "
                                         "image");
            }
        } else if (hdr->autoclear_features & QCOW2_AUTOCLEAR_DATA_FILE_RAW) {
            return error_set(EINVAL, "data-file-raw requires a data file");
        }
    }
    return 0;
}

int qcow2_header_decode_finish(const uint8_t *buf, size_t len, unsigned flags,
                               struct qcow2_header *hdr)
{
    /*
     * LUKS needs the extension [spec: Full disk encryption header
     * pointer]; AES has none (crypto.c asks for its key).
     */
    if (hdr->crypt_method == QCOW2_CRYPT_LUKS && !hdr->has_crypto_ext &&
        !(flags & QCOW2_DECODE_NO_IO)) {
        return error_set(EINVAL, "Missing CRYPTO header for crypt method %d",
                         (int)hdr->crypt_method);
    }
    if (hdr->backing_file_offset != 0) {
        /*
         * [spec: Header, bytes 16-19] at most 1023 bytes, and (QEMU) it
         * must end inside the first cluster.  backing_file_offset <=
         * cluster_size was checked by qcow2_header_decode().
         */
        uint64_t room = min_u64(QCOW2_MAX_BACKING_NAME,
                                hdr->cluster_size - hdr->backing_file_offset);
        if (hdr->backing_file_size > room) {
            return error_set(EINVAL, "Backing file name too long");
        }
        char *name = get_string(buf, len, hdr->backing_file_offset,
                                hdr->backing_file_size);
        if (!name) {
            return error_set(ENOMEM, "Out of memory");
        }
        free(hdr->backing_file);
        hdr->backing_file = name;
    }
    return 0;
}

void qcow2_header_free(struct qcow2_header *hdr)
{
    free(hdr->unknown_fields);
    free(hdr->backing_format);
    free(hdr->data_file);
    free(hdr->features);
    for (size_t i = 0; i < hdr->nb_unknown_exts; i++) {
        free(hdr->unknown_exts[i].data);
    }
    free(hdr->unknown_exts);
    free(hdr->backing_file);
    memset(hdr, 0, sizeof(*hdr));
}

/* ---- Encoding ---------------------------------------------------------- */

struct writer {
    uint8_t *buf;
    size_t len;
    size_t pos;
};

static int no_space(void)
{
    return error_set(ENOSPC, "qcow2 header does not fit in the first "
                             "cluster");
}

/* One extension: type, length, data, zero padding to 8 bytes. */
static int put_ext(struct writer *w, uint32_t type, const void *data, size_t n)
{
    size_t padded = (n + 7) & ~(size_t)7;
    if (w->len - w->pos < QCOW2_EXT_HEADER_SIZE ||
        w->len - w->pos - QCOW2_EXT_HEADER_SIZE < padded) {
        return no_space();
    }
    store_be32(w->buf + w->pos, type);
    store_be32(w->buf + w->pos + 4, (uint32_t)n);
    if (n > 0) {
        memcpy(w->buf + w->pos + QCOW2_EXT_HEADER_SIZE, data, n);
    }
    w->pos += QCOW2_EXT_HEADER_SIZE + padded;
    return 0;
}

static int put_feature_table(struct writer *w)
{
    uint8_t t[QCOW2_NB_STD_FEATURES * QCOW2_FEATURE_ENTRY_SIZE];
    memset(t, 0, sizeof(t));
    for (size_t i = 0; i < QCOW2_NB_STD_FEATURES; i++) {
        uint8_t *e = t + i * QCOW2_FEATURE_ENTRY_SIZE;
        e[0] = qcow2_std_features[i].type;
        e[1] = qcow2_std_features[i].bit;
        memcpy(e + 2, qcow2_std_features[i].name,
               strlen(qcow2_std_features[i].name));
    }
    return put_ext(w, QCOW2_EXT_FEATURE_TABLE, t, sizeof(t));
}

static int put_extensions(struct writer *w, const struct qcow2_header *hdr)
{
    int ret = 0;
    if (hdr->backing_format) {
        ret = put_ext(w, QCOW2_EXT_BACKING_FORMAT, hdr->backing_format,
                      strlen(hdr->backing_format));
    }
    if (ret == 0 && hdr->data_file &&
        (hdr->incompatible_features & QCOW2_INCOMPAT_DATA_FILE)) {
        ret = put_ext(w, QCOW2_EXT_DATA_FILE, hdr->data_file,
                      strlen(hdr->data_file));
    }
    /*
     * Whenever it was read or set, even at offset 0 (which no LUKS image
     * of QEMU's or qimg's has, and crypto.c then fails to open): QEMU
     * leaves it out there, but an encoded header must decode as it was
     * (without it a LUKS header is "Missing CRYPTO header").
     */
    if (ret == 0 && hdr->has_crypto_ext) {
        uint8_t c[QCOW2_EXT_CRYPTO_SIZE];
        store_be64(c, hdr->crypto_offset);
        store_be64(c + 8, hdr->crypto_length);
        ret = put_ext(w, QCOW2_EXT_CRYPTO_HEADER, c, sizeof(c));
    }
    /*
     * QEMU leaves the table out for clusters of 4 KiB and less, where the
     * 392 bytes would crowd out the backing file name.
     */
    if (ret == 0 && hdr->version >= 3 && hdr->cluster_size > 4096) {
        ret = put_feature_table(w);
    }
    if (ret == 0 && hdr->nb_bitmaps > 0) {
        uint8_t b[QCOW2_EXT_BITMAPS_SIZE];
        store_be32(b, hdr->nb_bitmaps);
        store_be32(b + 4, 0);
        store_be64(b + 8, hdr->bitmap_directory_size);
        store_be64(b + 16, hdr->bitmap_directory_offset);
        ret = put_ext(w, QCOW2_EXT_BITMAPS, b, sizeof(b));
    }
    /*
     * QEMU prepends each to a list while reading: it writes them back
     * last first.  Doing the same keeps rewritten headers identical.
     */
    for (size_t i = hdr->nb_unknown_exts; ret == 0 && i > 0; i--) {
        const struct qcow2_unknown_ext *u = &hdr->unknown_exts[i - 1];
        ret = put_ext(w, u->type, u->data, u->len);
    }
    if (ret == 0) {
        ret = put_ext(w, QCOW2_EXT_END, NULL, 0);
    }
    return ret;
}

int64_t qcow2_header_encode(const struct qcow2_header *hdr, uint8_t *buf,
                            size_t len)
{
    if (hdr->version < 2 || hdr->version > 3) {
        return error_set(EINVAL, "Unsupported qcow2 version %" PRIu32,
                         hdr->version);
    }
    int ret = validate_compression_type(hdr->compression_type,
                                        hdr->incompatible_features);
    if (ret < 0) {
        return ret;
    }
    if (len < QCOW2_HEADER_SIZE) {
        return no_space();
    }
    memset(buf, 0, len);
    struct writer w = {.buf = buf, .len = len};

    /* [spec: Header]; the backing name fields are set at the end. */
    store_be32(buf, QCOW2_MAGIC);
    store_be32(buf + 4, hdr->version);
    store_be32(buf + 20, hdr->cluster_bits);
    store_be64(buf + 24, hdr->size);
    store_be32(buf + 32, hdr->crypt_method);
    store_be32(buf + 36, hdr->l1_size);
    store_be64(buf + 40, hdr->l1_table_offset);
    store_be64(buf + 48, hdr->refcount_table_offset);
    store_be32(buf + 56, hdr->refcount_table_clusters);
    store_be32(buf + 60, hdr->nb_snapshots);
    store_be64(buf + 64, hdr->snapshots_offset);
    if (hdr->version == 2) {
        w.pos = QCOW2_V2_HEADER_LENGTH;
    } else {
        uint64_t header_length = QCOW2_HEADER_SIZE + hdr->unknown_fields_len;
        if (header_length > len || header_length > UINT32_MAX) {
            return no_space();
        }
        store_be64(buf + 72, hdr->incompatible_features);
        store_be64(buf + 80, hdr->compatible_features);
        store_be64(buf + 88, hdr->autoclear_features);
        store_be32(buf + 96, hdr->refcount_order);
        store_be32(buf + 100, (uint32_t)header_length);
        buf[QCOW2_COMPRESSION_TYPE_OFFSET] = hdr->compression_type;
        if (hdr->unknown_fields_len > 0) {
            memcpy(buf + QCOW2_HEADER_SIZE, hdr->unknown_fields,
                   hdr->unknown_fields_len);
        }
        w.pos = (size_t)header_length;
    }

    ret = put_extensions(&w, hdr);
    if (ret < 0) {
        return ret;
    }
    /* [spec: Header extensions] the backing name follows the end marker. */
    if (hdr->backing_file) {
        size_t n = strlen(hdr->backing_file);
        if (len - w.pos < n) {
            return no_space();
        }
        memcpy(buf + w.pos, hdr->backing_file, n);
        store_be64(buf + 8, w.pos);
        store_be32(buf + 16, (uint32_t)n);
        w.pos += n;
    }
    return (int64_t)w.pos;
}
