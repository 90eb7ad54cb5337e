/*
 * qcow2 image creation: the option table and a fresh image laid out byte
 * for byte as qemu-img 7.2 lays it out (header in cluster 0, refcount
 * table in cluster 1, its first refcount block in cluster 2, the L1 table
 * from cluster 3, written only as far as its entries reach).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/error.h"
#include "core/secret.h"
#include "crypto/cipher.h"
#include "crypto/encrypt_opts.h"
#include "crypto/kdf.h"
#include "crypto/luks1.h"
#include "driver.h"
#include "formats/qcow2/qcow2.h"
#include "util/checked.h"
#include "util/endian.h"

/* The order is QEMU's: it governs the "Formatting ..." line. */
const struct qimg_opt_desc qcow2_create_opts[] = {
    {"encryption", QIMG_OPT_BOOL, "Encrypt the image with format 'aes'. "
     "(Deprecated in favor of encrypt.format=aes)", NULL},
    {"encrypt.format", QIMG_OPT_STRING,
     "Encrypt the image, format choices: 'aes', 'luks'", NULL},
    {"encrypt.key-secret", QIMG_OPT_STRING,
     "ID of secret providing qcow AES key or LUKS passphrase", NULL},
    {"encrypt.cipher-alg", QIMG_OPT_STRING,
     "Name of encryption cipher algorithm", NULL},
    {"encrypt.cipher-mode", QIMG_OPT_STRING,
     "Name of encryption cipher mode", NULL},
    {"encrypt.ivgen-alg", QIMG_OPT_STRING, "Name of IV generator algorithm",
     NULL},
    {"encrypt.ivgen-hash-alg", QIMG_OPT_STRING,
     "Name of IV generator hash algorithm", NULL},
    {"encrypt.hash-alg", QIMG_OPT_STRING,
     "Name of encryption hash algorithm", NULL},
    {"encrypt.iter-time", QIMG_OPT_NUMBER,
     "Time to spend in PBKDF in milliseconds", NULL},
    {"cluster_size", QIMG_OPT_SIZE, "qcow2 cluster size", "65536"},
    {"extended_l2", QIMG_OPT_BOOL, "Extended L2 tables", "off"},
    {"preallocation", QIMG_OPT_STRING, "Preallocation mode (allowed values: "
     "off, metadata, falloc, full)", NULL},
    {"compression_type", QIMG_OPT_STRING,
     "Compression method used for image cluster compression", "zlib"},
    {"size", QIMG_OPT_SIZE, "Virtual disk size", NULL},
    {"compat", QIMG_OPT_STRING,
     "Compatibility level (v2 [0.10] or v3 [1.1])", NULL},
    {"backing_file", QIMG_OPT_STRING, "File name of a base image", NULL},
    {"backing_fmt", QIMG_OPT_STRING, "Image format of the base image", NULL},
    {"data_file", QIMG_OPT_STRING, "File name of an external data file",
     NULL},
    {"data_file_raw", QIMG_OPT_BOOL,
     "The external data file must stay valid as a raw image", NULL},
    {"lazy_refcounts", QIMG_OPT_BOOL, "Postpone refcount updates", "off"},
    {"refcount_bits", QIMG_OPT_NUMBER, "Width of a reference count entry in "
     "bits", "16"},
    {NULL, 0, NULL, NULL},
};

/* The feature-name table QEMU writes (v3, clusters above 4 KiB). */
static const struct {
    uint8_t type, bit;
    const char *name;
} feature_names[] = {
    {0, 0, "dirty bit"},
    {0, 1, "corrupt bit"},
    {0, 2, "external data file"},
    {0, 3, "compression type"},
    {0, 4, "extended L2 entries"},
    {1, 0, "lazy refcounts"},
    {2, 0, "bitmaps"},
    {2, 1, "raw external data"},
};

#define EXT_BACKING_FORMAT 0xE2792ACAu
#define EXT_FEATURE_TABLE 0x6803F857u
#define EXT_DATA_FILE 0x44415441u
#define EXT_CRYPTO_HEADER 0x0537BE77u
/* QEMU's limit on the active L1 table. */
#define MAX_L1_BYTES (32u * 1024 * 1024)

struct create_params {
    uint64_t size;
    uint64_t cluster_size;
    unsigned cluster_bits;
    int version;
    bool extended_l2, lazy_refcounts, data_file_raw;
    /* Metadata preallocation (asked for, or implied by data_file_raw). */
    bool metadata;
    /*
     * preallocation=falloc/full: "falloc" or "full", NULL otherwise.  In
     * the image it is QEMU's preallocating truncate (prealloc_truncate);
     * with an external data file, metadata preallocation plus the data
     * file's bytes reserved (falloc) or written (full).
     */
    const char *reserve;
    unsigned refcount_order;
    uint8_t compression_type;
    const char *backing_file, *backing_fmt, *data_file;
    /* Encryption: QCOW2_CRYPT_NONE, _AES or _LUKS, with its choices. */
    uint32_t crypt_method;
    const char *key_secret;
    struct luks1_create_opts luks;
    /* Set by write_image: the LUKS header area's place (bytes). */
    uint64_t crypto_offset, crypto_length;
};

/* A boolean option (already type-checked), or def when unset. */
static bool bool_text(const char *v, bool def)
{
    bool b = def;
    if (v) {
        (void)opt_parse_bool(v, &b);
    }
    return b;
}

static const char *v3_only = "only supported with compatibility level 1.1 "
                             "and above (use version=v3 or greater)";

/* The checks of qcow2_co_create, in QEMU's order and with its words. */
/*
 * [QEMU] encrypt.format (or its deprecated alias encryption=on, meaning
 * aes) picks the method; the other encrypt.* options belong to it: aes
 * takes only key-secret, luks the LUKS choices (crypto/luks1.c).
 */
static int parse_encryption(const struct qimg_opts *opts,
                            struct create_params *p)
{
    static const char *const luks_only[] = {
        "encrypt.cipher-alg", "encrypt.cipher-mode", "encrypt.ivgen-alg",
        "encrypt.ivgen-hash-alg", "encrypt.hash-alg", "encrypt.iter-time"};
    const char *format = qimg_opts_get(opts, "encrypt.format");
    const char *alias = qimg_opts_get(opts, "encryption");
    bool aes_alias = alias && bool_text(alias, false);
    if (format && alias) {
        return error_set(EINVAL, "'encrypt.format' and its alias "
                         "'encryption' can't be used at the same time");
    }
    if (aes_alias) {
        format = "aes";
    }
    p->key_secret = qimg_opts_get(opts, "encrypt.key-secret");
    bool any = p->key_secret != NULL;
    for (size_t i = 0; i < sizeof(luks_only) / sizeof(luks_only[0]); i++) {
        any = any || qimg_opts_get(opts, luks_only[i]);
    }
    if (!format) {
        return any ? error_set(EINVAL, "Parameter 'encrypt.format' is "
                               "missing")
                   : 0;
    }
    if (strcmp(format, "aes") == 0) {
        for (size_t i = 0; i < sizeof(luks_only) / sizeof(luks_only[0]);
             i++) {
            if (qimg_opts_get(opts, luks_only[i])) {
                return error_set(EINVAL, "Parameter '%s' is unexpected",
                                 luks_only[i]);
            }
        }
        p->crypt_method = QCOW2_CRYPT_AES;
        return 0;
    }
    if (strcmp(format, "luks") != 0) {
        return error_set(EINVAL, "Parameter 'format' does not accept value "
                         "'%s'", format);
    }
    p->crypt_method = QCOW2_CRYPT_LUKS;
    return luks1_create_opts_parse(opts, "encrypt.", &p->luks);
}

static int parse_params(const struct qimg_opts *opts,
                        struct create_params *p)
{
    memset(p, 0, sizeof(*p));
    const char *v = qimg_opts_get(opts, "size");
    if (!v || qimg_parse_size(v, 'B', &p->size) < 0) {
        return error_set(EINVAL, "Image creation needs a size parameter");
    }
    /* QEMU rounds the size up to whole sectors before it creates. */
    if (p->size > INT64_MAX - 511) {
        return error_set(EFBIG, "Image size too large");
    }
    p->size = (p->size + 511) & ~(uint64_t)511;

    v = qimg_opts_get(opts, "compat");
    p->version = 3;
    if (v && (strcmp(v, "0.10") == 0 || strcmp(v, "v2") == 0)) {
        p->version = 2;
    } else if (v && strcmp(v, "1.1") != 0 && strcmp(v, "v3") != 0) {
        return error_set(EINVAL, "Parameter 'version' does not accept value "
                         "'%s'", v);
    }
    v = qimg_opts_get(opts, "preallocation");
    if (v && strcmp(v, "off") != 0 && strcmp(v, "metadata") != 0 &&
        strcmp(v, "falloc") != 0 && strcmp(v, "full") != 0) {
        return error_set(EINVAL, "Parameter 'preallocation' does not accept "
                         "value '%s'", v);
    }
    const char *prealloc = v ? v : "off";
    v = qimg_opts_get(opts, "compression_type");
    if (v && strcmp(v, "zlib") != 0 && strcmp(v, "zstd") != 0) {
        return error_set(EINVAL, "Parameter 'compression-type' does not "
                         "accept value '%s'", v);
    }
    p->compression_type = v && strcmp(v, "zstd") == 0 ? 1 : 0;
    int ret = parse_encryption(opts, p);
    if (ret < 0) {
        return ret;
    }

    p->cluster_size = 65536;
    v = qimg_opts_get(opts, "cluster_size");
    if (v && qimg_parse_size(v, 'B', &p->cluster_size) < 0) {
        return error_set(EINVAL, "Parameter 'cluster_size' expects a size");
    }
    p->extended_l2 = bool_text(qimg_opts_get(opts, "extended_l2"), false);
    if (p->extended_l2 && p->version < 3) {
        return error_set(EINVAL, "Extended L2 entries are %s", v3_only);
    }
    uint64_t cs = p->cluster_size;
    if (cs < 512 || cs > 2 * 1024 * 1024 || (cs & (cs - 1)) != 0) {
        return error_set(EINVAL, "Cluster size must be a power of two "
                         "between 512 and 2048k");
    }
    p->cluster_bits = (unsigned)__builtin_ctzll(cs);
    if (p->extended_l2 && cs < 16384) {
        return error_set(EINVAL, "Extended L2 entries are only supported "
                         "with cluster sizes of at least 16384 bytes");
    }
    p->backing_file = qimg_opts_get(opts, "backing_file");
    p->backing_fmt = qimg_opts_get(opts, "backing_fmt");
    if (p->backing_file && strcmp(prealloc, "off") != 0 &&
        !p->extended_l2) {
        return error_set(EINVAL, "Backing file and preallocation can only "
                         "be used at the same time if extended_l2 is on");
    }
    if (p->backing_fmt && !p->backing_file) {
        return error_set(EINVAL, "Backing format cannot be used without "
                         "backing file");
    }
    p->lazy_refcounts = bool_text(qimg_opts_get(opts, "lazy_refcounts"),
                                  false);
    if (p->lazy_refcounts && p->version < 3) {
        return error_set(EINVAL, "Lazy refcounts %s", v3_only);
    }
    uint64_t bits = 16;
    v = qimg_opts_get(opts, "refcount_bits");
    if (v) {
        char *end;
        errno = 0;
        bits = strtoull(v, &end, 0);
        if (errno || end == v || *end) {
            return error_set(EINVAL, "Parameter 'refcount_bits' expects a "
                             "number");
        }
    }
    if (bits == 0 || bits > 64 || (bits & (bits - 1)) != 0) {
        return error_set(EINVAL, "Refcount width must be a power of two and "
                         "may not exceed 64 bits");
    }
    if (p->version < 3 && bits != 16) {
        return error_set(EINVAL, "Different refcount widths than 16 bits "
                         "require compatibility level 1.1 or above (use "
                         "version=v3 or greater)");
    }
    p->refcount_order = (unsigned)__builtin_ctzll(bits);
    p->data_file = qimg_opts_get(opts, "data_file");
    p->data_file_raw = bool_text(qimg_opts_get(opts, "data_file_raw"),
                                 false);
    if (p->data_file_raw && !p->data_file) {
        return error_set(EINVAL, "data-file-raw requires data-file");
    }
    if (p->data_file_raw && p->backing_file) {
        return error_set(EINVAL, "Backing file and data-file-raw cannot be "
                         "used at the same time");
    }
    if (p->compression_type != 0 && p->version < 3) {
        return error_set(EINVAL, "Non-zlib compression type is %s",
                         v3_only);
    }
    if (p->data_file && p->version < 3) {
        return error_set(EINVAL, "External data files are %s", v3_only);
    }
    p->reserve = NULL;
    if (strcmp(prealloc, "falloc") == 0 || strcmp(prealloc, "full") == 0) {
        p->reserve = strcmp(prealloc, "falloc") == 0 ? "falloc" : "full";
    }
    p->metadata = strcmp(prealloc, "off") != 0 || p->data_file_raw;
    return 0;
}

/* Append one header extension at *pos; false if cluster 0 is full. */
static bool put_ext(uint8_t *buf, size_t cs, size_t *pos, uint32_t type,
                    const void *data, size_t len)
{
    size_t padded = (len + 7) & ~(size_t)7;
    if (*pos + 8 + padded + 8 > cs) {
        return false;
    }
    store_be32(buf + *pos, type);
    store_be32(buf + *pos + 4, (uint32_t)len);
    memcpy(buf + *pos + 8, data, len);
    *pos += 8 + padded;
    return true;
}

static int build_header(const struct create_params *p, uint64_t l1_size,
                        uint64_t l1_offset, uint8_t *buf)
{
    size_t cs = p->cluster_size;
    store_be32(buf, 0x514649FBu);
    store_be32(buf + 4, (uint32_t)p->version);
    store_be32(buf + 20, p->cluster_bits);
    store_be64(buf + 24, p->size);
    store_be32(buf + 36, (uint32_t)l1_size);
    store_be64(buf + 40, l1_offset);
    store_be32(buf + 32, p->crypt_method);
    store_be64(buf + 48, cs);
    store_be32(buf + 56, 1);
    size_t pos = 72;
    if (p->version >= 3) {
        uint64_t incompat = 0, compat = 0, autoclear = 0;
        if (p->data_file) {
            incompat |= 1u << 2;
        }
        if (p->compression_type) {
            incompat |= 1u << 3;
        }
        if (p->extended_l2) {
            incompat |= 1u << 4;
        }
        if (p->lazy_refcounts) {
            compat |= 1u;
        }
        if (p->data_file_raw) {
            autoclear |= 1u << 1;
        }
        store_be64(buf + 72, incompat);
        store_be64(buf + 80, compat);
        store_be64(buf + 88, autoclear);
        store_be32(buf + 96, p->refcount_order);
        store_be32(buf + 100, 112);
        buf[104] = p->compression_type;
        pos = 112;
    }
    bool ok = true;
    if (p->backing_file && p->backing_fmt) {
        ok = put_ext(buf, cs, &pos, EXT_BACKING_FORMAT, p->backing_fmt,
                     strlen(p->backing_fmt));
    }
    if (ok && p->data_file) {
        ok = put_ext(buf, cs, &pos, EXT_DATA_FILE, p->data_file,
                     strlen(p->data_file));
    }
    if (ok && p->crypto_length) {
        uint8_t ext[16];
        store_be64(ext, p->crypto_offset);
        store_be64(ext + 8, p->crypto_length);
        ok = put_ext(buf, cs, &pos, EXT_CRYPTO_HEADER, ext, sizeof(ext));
    }
    if (ok && p->version >= 3 && cs > 4096) {
        uint8_t table[sizeof(feature_names) / sizeof(feature_names[0])][48];
        memset(table, 0, sizeof(table));
        for (size_t i = 0; i < sizeof(feature_names) /
                                   sizeof(feature_names[0]); i++) {
            table[i][0] = feature_names[i].type;
            table[i][1] = feature_names[i].bit;
            memcpy(&table[i][2], feature_names[i].name,
                   strlen(feature_names[i].name));
        }
        ok = put_ext(buf, cs, &pos, EXT_FEATURE_TABLE, table, sizeof(table));
    }
    /* The end marker: 8 zero bytes, already there. */
    pos += 8;
    if (ok && p->backing_file) {
        size_t len = strlen(p->backing_file);
        if (len > 1023 || pos + len > cs) {
            return error_set(EINVAL, "Backing file name too long");
        }
        memcpy(buf + pos, p->backing_file, len);
        store_be64(buf + 8, pos);
        store_be32(buf + 16, (uint32_t)len);
    }
    if (!ok) {
        return error_set(EINVAL, "Header extensions do not fit in the first "
                         "cluster");
    }
    return 0;
}

/*
 * QEMU's cluster allocator on a fresh image, replayed (the rules were
 * measured against qemu-img 7.2):
 * - a search for n clusters starts at free_index and takes the first n
 *   consecutive clusters whose refcount is 0; free_index moves past them,
 *   and freeing a cluster pulls free_index back down to it;
 * - the refcounts are then set cluster by cluster.  A cluster whose
 *   refcount block is missing gets one from a one-cluster search: it
 *   counts itself when it lies in its own group, else it is counted
 *   first like any allocation.  The request's partial counts are undone
 *   and its search restarts from its start;
 * - a cluster beyond what the refcount table can hold moves the table:
 *   a refcount area at the start of that cluster's group (the missing
 *   blocks, then a table with room for half as many blocks again), the
 *   old table freed (its bytes stay in the file) and the request
 *   restarted, which leaves the undone clusters free for good;
 * - preallocation=falloc/full is a truncate: an exact refcount area at
 *   the end of the file, the data clusters after it, and the L2 tables
 *   from the allocator (the first into the freed table).
 * Every allocated cluster has refcount 1: a bitmap is the refcounts.
 */
struct layout {
    uint64_t cs;
    uint64_t rb_entries;   /* refcounts per block */
    uint64_t *reft;        /* group -> refcount block cluster, 0 if none */
    uint64_t reft_entries; /* entries the current table holds */
    uint64_t reft_cluster, reft_clusters;
    uint64_t *used;        /* bit c: cluster c has refcount 1 */
    uint64_t used_words;
    uint64_t free_index;   /* where the next search starts */
    uint64_t end;          /* one past the last cluster ever counted */
    uint64_t last_data;    /* the last data cluster allocated */
    struct qimg_io *io;    /* where a replaced table's bytes go */
};

/* The request must be searched for again (not an error). */
#define LAYOUT_AGAIN 1

static bool layout_used(const struct layout *lo, uint64_t c)
{
    return c / 64 < lo->used_words && (lo->used[c / 64] >> (c % 64)) & 1;
}

static int layout_mark(struct layout *lo, uint64_t c)
{
    if (c > QCOW2_MAX_HOST_OFFSET / lo->cs) {
        return error_set(EFBIG, "The image size is too large for file "
                         "format 'qcow2'");
    }
    if (c / 64 >= lo->used_words) {
        uint64_t words = lo->used_words ? lo->used_words : 1024;
        while (words <= c / 64) {
            words *= 2;
        }
        uint64_t *n = realloc(lo->used, words * sizeof(uint64_t));
        if (!n) {
            return error_set(ENOMEM, "Out of memory");
        }
        memset(n + lo->used_words, 0,
               (words - lo->used_words) * sizeof(uint64_t));
        lo->used = n;
        lo->used_words = words;
    }
    lo->used[c / 64] |= 1ull << (c % 64);
    if (c + 1 > lo->end) {
        lo->end = c + 1;
    }
    return 0;
}

static void layout_unmark(struct layout *lo, uint64_t first, uint64_t end)
{
    for (uint64_t c = first; c < end; c++) {
        if (c / 64 < lo->used_words) {
            lo->used[c / 64] &= ~(1ull << (c % 64));
        }
    }
}

/* The first n free clusters in a row from free_index (no refcounts). */
static uint64_t layout_search(struct layout *lo, uint64_t n)
{
    uint64_t c = lo->free_index, run = 0;
    while (run < n) {
        if (run == 0 && c % 64 == 0 && c / 64 < lo->used_words &&
            lo->used[c / 64] == UINT64_MAX) {
            c += 64;
            continue;
        }
        run = layout_used(lo, c) ? 0 : run + 1;
        c++;
    }
    lo->free_index = c;
    return c - n;
}

/*
 * Refcount blocks (all of them, from cluster 0) needed to count clusters
 * clusters plus the blocks and a table for them; generous tables have
 * room for half as many blocks again.
 */
static uint64_t layout_blocks_for(const struct layout *lo, uint64_t clusters,
                                  bool generous)
{
    uint64_t per_table = lo->cs / 8, blocks = 0, table = 0;
    for (;;) {
        uint64_t b = (clusters + blocks + table + lo->rb_entries - 1) /
                     lo->rb_entries;
        uint64_t entries = generous ? b + (b + 1) / 2 : b;
        uint64_t t = (entries + per_table - 1) / per_table;
        if (b == blocks && t == table) {
            return blocks;
        }
        blocks = b;
        table = t;
    }
}

/* Write a refcount table's entries at its place in the file. */
static int layout_write_table(struct layout *lo)
{
    size_t len = (size_t)(lo->reft_clusters * lo->cs);
    uint8_t *buf = calloc(1, len);
    if (!buf) {
        return error_set(ENOMEM, "Out of memory");
    }
    for (uint64_t i = 0; i < lo->reft_entries; i++) {
        store_be64(buf + i * 8, lo->reft[i] * lo->cs);
    }
    int ret = io_pwrite(lo->io, buf, len, lo->reft_cluster * lo->cs);
    free(buf);
    return ret;
}

/*
 * A refcount area at cluster start: blocks for every missing group from
 * start's on, as many as counting clusters + the area needs, then a new
 * table, which replaces the old one (with entry index set to block if it
 * is in range).  *area_end is the cluster after it.
 */
static int layout_area(struct layout *lo, uint64_t start, uint64_t clusters,
                       bool generous, uint64_t index, uint64_t block,
                       uint64_t *area_end)
{
    uint64_t per_table = lo->cs / 8;
    uint64_t total = layout_blocks_for(lo, clusters, generous);
    uint64_t entries = generous ? total + (total + 1) / 2 : total;
    entries = (entries + per_table - 1) / per_table * per_table;
    if (entries > QCOW2_MAX_REFTABLE_SIZE / 8) {
        return error_set(EFBIG, "The image size is too large for file "
                         "format 'qcow2' (try using a larger cluster "
                         "size)");
    }
    uint64_t *table = calloc(entries, sizeof(uint64_t));
    if (!table) {
        return error_set(ENOMEM, "Out of memory");
    }
    memcpy(table, lo->reft, (size_t)((entries < lo->reft_entries
                                      ? entries : lo->reft_entries) * 8));
    if (index < entries) {
        table[index] = block;
    }
    uint64_t next = start;
    for (uint64_t i = start / lo->rb_entries; i < total; i++) {
        if (!table[i]) {
            table[i] = next++;
        }
    }
    uint64_t table_cluster = next;
    next += entries / per_table;
    int ret = 0;
    for (uint64_t c = start; ret == 0 && c < next; c++) {
        ret = layout_mark(lo, c);
    }
    /* The old table's bytes stay where they were. */
    if (ret == 0) {
        ret = layout_write_table(lo);
    }
    if (ret < 0) {
        free(table);
        return ret;
    }
    layout_unmark(lo, lo->reft_cluster, lo->reft_cluster + lo->reft_clusters);
    if (lo->reft_cluster < lo->free_index) {
        lo->free_index = lo->reft_cluster;
    }
    free(lo->reft);
    lo->reft = table;
    lo->reft_entries = entries;
    lo->reft_cluster = table_cluster;
    lo->reft_clusters = entries / per_table;
    *area_end = next;
    return 0;
}

/* Count clusters [first, first + n): 0, LAYOUT_AGAIN or -errno. */
static int layout_count(struct layout *lo, uint64_t first, uint64_t n)
{
    for (uint64_t c = first; c < first + n; c++) {
        uint64_t g = c / lo->rb_entries;
        if (g < lo->reft_entries && lo->reft[g]) {
            int ret = layout_mark(lo, c);
            if (ret < 0) {
                return ret;
            }
            continue;
        }
        /* A new block, counted by itself or like any allocation. */
        uint64_t block = layout_search(lo, 1);
        int ret = block / lo->rb_entries == g ? layout_mark(lo, block)
                                               : layout_count(lo, block, 1);
        if (ret == 0 && g < lo->reft_entries) {
            lo->reft[g] = block;
        } else if (ret == 0) {
            /* The area starts at the first group after both. */
            uint64_t top = (c > block ? c : block) + 1;
            uint64_t meta = (top + lo->rb_entries - 1) / lo->rb_entries *
                            lo->rb_entries;
            uint64_t unused;
            ret = layout_area(lo, meta, meta, true, g, block, &unused);
        }
        if (ret < 0) {
            return ret;
        }
        layout_unmark(lo, first, c);
        if (first < lo->free_index) {
            lo->free_index = first;
        }
        return LAYOUT_AGAIN;
    }
    return 0;
}

static int layout_alloc(struct layout *lo, uint64_t n, uint64_t *first)
{
    int ret;
    do {
        *first = layout_search(lo, n);
        ret = layout_count(lo, *first, n);
    } while (ret == LAYOUT_AGAIN);
    return ret;
}

/* Set refcount entry i of a refcount block to 1. */
static void refcount_set_one(uint8_t *block, uint64_t i, unsigned order)
{
    unsigned bits = 1u << order;
    if (bits < 8) {
        block[i * bits / 8] |= (uint8_t)(1u << ((i * bits) % 8));
    } else {
        block[i * (bits / 8) + bits / 8 - 1] = 1;
    }
}

/* Size of the zero buffer for preallocation=full. */
#define RESERVE_CHUNK (1024 * 1024)

/* Reserve [off, off + len) of the file: allocate it, or write zeros. */
static int reserve_range(struct qimg_io *io, const char *mode, uint64_t off,
                         uint64_t len)
{
    if (len == 0) {
        return 0;
    }
    if (strcmp(mode, "falloc") == 0) {
        return io_allocate(io, off, len);
    }
    uint8_t *zeros = calloc(1, RESERVE_CHUNK);
    if (!zeros) {
        return error_set(ENOMEM, "Out of memory");
    }
    int ret = 0;
    for (uint64_t done = 0; ret == 0 && done < len; done += RESERVE_CHUNK) {
        size_t n = (size_t)(len - done < RESERVE_CHUNK ? len - done
                                                       : RESERVE_CHUNK);
        ret = io_pwrite(io, zeros, n, off + done);
    }
    free(zeros);
    return ret;
}

/*
 * Metadata preallocation as QEMU does it: table by table, the L2 table
 * first, then the clusters it maps (in the image, in runs of at most
 * INT_MAX bytes, or at the guest offset in an external data file).
 */
static int prealloc_l2(struct qimg_io *io, const struct create_params *p,
                       struct layout *lo, uint8_t *l2, uint64_t t,
                       uint64_t *l2_cluster)
{
    uint64_t cs = p->cluster_size;
    unsigned entry = p->extended_l2 ? 16 : 8;
    uint64_t per_table = cs / entry;
    uint64_t clusters = (p->size + cs - 1) / cs;
    uint64_t max_run = (uint64_t)INT32_MAX >> p->cluster_bits;
    int ret = layout_alloc(lo, 1, l2_cluster);
    memset(l2, 0, cs);
    uint64_t i = 0;
    while (ret == 0 && i < per_table && t * per_table + i < clusters) {
        uint64_t n = per_table - i;
        if (n > clusters - t * per_table - i) {
            n = clusters - t * per_table - i;
        }
        uint64_t first = (t * per_table + i);
        if (!p->data_file) {
            if (n > max_run) {
                n = max_run;
            }
            ret = layout_alloc(lo, n, &first);
            lo->last_data = first + n - 1;
        }
        for (uint64_t k = 0; ret == 0 && k < n; k++) {
            store_be64(l2 + (i + k) * entry,
                       ((first + k) * cs) | QCOW2_OFLAG_COPIED);
        }
        i += n;
    }
    if (ret == 0) {
        ret = io_pwrite(io, l2, cs, *l2_cluster * cs);
    }
    return ret;
}

/*
 * preallocation=falloc/full in the image: QEMU's preallocating truncate
 * from 0.  An exact refcount area at the end of the file covers the data
 * clusters and one L2 table more than they need (a range need not start
 * on a table boundary); the data follows it, reserved or written, and
 * the L2 tables come from the allocator, table by table.
 */
static int prealloc_truncate(struct qimg_io *io,
                             const struct create_params *p,
                             struct layout *lo, uint8_t *l2, uint8_t *l1,
                             uint64_t l1_size)
{
    uint64_t cs = p->cluster_size;
    unsigned entry = p->extended_l2 ? 16 : 8;
    uint64_t per_table = cs / entry;
    uint64_t clusters = (p->size + cs - 1) / cs;
    uint64_t tables = (clusters + per_table - 1) / per_table + 1;
    uint64_t start = lo->end, data;
    int ret = layout_area(lo, start, start + clusters + tables, false,
                          UINT64_MAX, 0, &data);
    for (uint64_t c = data; ret == 0 && c < data + clusters; c++) {
        uint64_t g = c / lo->rb_entries;
        if (g >= lo->reft_entries || !lo->reft[g]) {
            /* The area was sized to make this impossible. */
            return error_set(EIO, "qcow2 preallocation: data cluster "
                             "%#llx not covered", (unsigned long long)c);
        }
        ret = layout_mark(lo, c);
    }
    if (ret == 0) {
        ret = reserve_range(io, p->reserve, data * cs, clusters * cs);
    }
    for (uint64_t t = 0; ret == 0 && t < l1_size; t++) {
        uint64_t l2_cluster;
        ret = layout_alloc(lo, 1, &l2_cluster);
        memset(l2, 0, cs);
        for (uint64_t i = 0; i < per_table && t * per_table + i < clusters;
             i++) {
            store_be64(l2 + i * entry,
                       ((data + t * per_table + i) * cs) |
                           QCOW2_OFLAG_COPIED);
        }
        if (ret == 0) {
            ret = io_pwrite(io, l2, cs, l2_cluster * cs);
        }
        store_be64(l1 + t * 8, l2_cluster * cs | QCOW2_OFLAG_COPIED);
    }
    return ret;
}

/* Every refcount block, from the bitmap. */
static int write_refblocks(struct qimg_io *io, const struct create_params *p,
                           struct layout *lo, uint8_t *block)
{
    uint64_t cs = p->cluster_size;
    for (uint64_t b = 0; b < lo->reft_entries; b++) {
        if (!lo->reft[b]) {
            continue;
        }
        memset(block, 0, cs);
        for (uint64_t i = 0; i < lo->rb_entries; i++) {
            if (layout_used(lo, b * lo->rb_entries + i)) {
                refcount_set_one(block, i, p->refcount_order);
            }
        }
        int ret = io_pwrite(io, block, cs, lo->reft[b] * cs);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

/*
 * The key of an encrypted image: legacy AES needs only its password
 * checked; LUKS makes its header area (crypto/luks1.c) for write_image.
 */
static int make_crypto_area(const struct create_params *p, uint8_t **area,
                            size_t *len)
{
    *area = NULL;
    *len = 0;
    if (p->crypt_method == QCOW2_CRYPT_NONE) {
        return 0;
    }
    char *password;
    size_t plen;
    int ret = crypto_password(p->key_secret, "encrypt.key-secret", &password,
                              &plen);
    if (ret < 0 || p->crypt_method == QCOW2_CRYPT_AES) {
        secret_free(password, plen);
        return ret;
    }
    struct sector_cipher *cipher = NULL;
    ret = luks1_create(&p->luks, (const uint8_t *)password, plen, area, len,
                       &cipher);
    sector_cipher_free(cipher);
    secret_free(password, plen);
    return ret;
}

static int write_image(struct qimg_io *io, struct create_params *p)
{
    uint64_t cs = p->cluster_size;
    uint64_t l1_size = qcow2_size_to_l1(p->size, p->cluster_bits,
                                        p->extended_l2);
    if (l1_size > MAX_L1_BYTES / 8) {
        return error_set(EFBIG, "The image size is too large for file "
                         "format 'qcow2' (try using a larger cluster size)");
    }
    uint64_t l1_bytes = l1_size * 8;
    uint64_t l1_clusters = (l1_bytes + cs - 1) / cs;
    struct layout lo = {
        .cs = cs,
        .rb_entries = cs * 8 >> p->refcount_order,
        .reft_entries = cs / 8,
        .reft_cluster = 1,
        .reft_clusters = 1,
        .io = io,
    };
    bool truncate_path = p->reserve && !p->data_file;
    uint64_t l1_first = 0, first;
    uint8_t *crypto_area = NULL;
    size_t crypto_len = 0;
    uint8_t *buf = calloc(1, cs);
    uint8_t *l1 = calloc(l1_size ? l1_size : 1, 8);
    lo.reft = calloc(lo.reft_entries, sizeof(uint64_t));
    int ret = 0;
    if (!buf || !l1 || !lo.reft) {
        ret = error_set(ENOMEM, "Out of memory");
        goto out;
    }
    /* Header, refcount table and its first block, counted. */
    lo.reft[0] = 2;
    ret = layout_alloc(&lo, 3, &first);
    if (ret == 0 && l1_size) {
        ret = layout_alloc(&lo, l1_clusters, &l1_first);
    }
    /*
     * [QEMU] the LUKS header area comes next, in whole clusters of its
     * own, written in full (the header, slot 0's key material, zeros).
     */
    if (ret == 0) {
        ret = make_crypto_area(p, &crypto_area, &crypto_len);
    }
    if (ret == 0 && crypto_area) {
        uint64_t clusters = div_round_up_u64(crypto_len, cs);
        uint64_t crypto_first = 0;
        ret = layout_alloc(&lo, clusters, &crypto_first);
        uint8_t *padded = ret == 0 ? calloc(clusters, cs) : NULL;
        if (ret == 0 && !padded) {
            ret = error_set(ENOMEM, "Out of memory");
        }
        if (ret == 0) {
            memcpy(padded, crypto_area, crypto_len);
            ret = io_pwrite(io, padded, clusters * cs, crypto_first * cs);
            kdf_wipe(padded, clusters * cs);
            free(padded);
        }
        p->crypto_offset = crypto_first * cs;
        p->crypto_length = crypto_len;
    }
    if (ret == 0 && truncate_path) {
        ret = prealloc_truncate(io, p, &lo, buf, l1, l1_size);
    }
    for (uint64_t t = 0; ret == 0 && !truncate_path && p->metadata &&
                         t < l1_size; t++) {
        ret = prealloc_l2(io, p, &lo, buf, t, &first);
        store_be64(l1 + t * 8, first * cs | QCOW2_OFLAG_COPIED);
    }
    if (ret == 0) {
        memset(buf, 0, cs);
        ret = build_header(p, l1_size, l1_first * cs, buf);
    }
    if (ret == 0) {
        store_be64(buf + 48, lo.reft_cluster * cs);
        store_be32(buf + 56, (uint32_t)lo.reft_clusters);
        ret = io_pwrite(io, buf, cs, 0);
    }
    if (ret == 0) {
        ret = layout_write_table(&lo);
    }
    if (ret == 0) {
        ret = write_refblocks(io, p, &lo, buf);
    }
    if (ret == 0 && l1_size) {
        ret = io_pwrite(io, l1, l1_bytes, l1_first * cs);
    }
    if (ret == 0 && p->metadata && !truncate_path && !p->data_file &&
        p->size) {
        /*
         * The file ends with the last allocation; when that is the last
         * data cluster, only up to the (sub)cluster holding the guest end.
         */
        uint64_t unit = p->extended_l2 ? cs / 32 : cs;
        uint64_t tail = p->size - (p->size - 1) / cs * cs;
        uint64_t end = lo.end * cs;
        if (lo.last_data == lo.end - 1) {
            end = lo.last_data * cs + (tail + unit - 1) / unit * unit;
        }
        ret = io_truncate(io, end);
    }
    if (ret == 0) {
        ret = io_flush(io);
    }
out:
    if (crypto_area) {
        kdf_wipe(crypto_area, crypto_len);
        free(crypto_area);
    }
    free(buf);
    free(l1);
    free(lo.reft);
    free(lo.used);
    return ret;
}

/*
 * QEMU's metadata preallocation makes the raw data file cover the last
 * (sub)cluster in full.
 */
static int grow_data_file(const struct create_params *p)
{
    uint64_t unit = p->extended_l2 ? p->cluster_size / 32 : p->cluster_size;
    uint64_t end = (p->size + unit - 1) / unit * unit;
    struct qimg_io *io;
    int ret = io_file_open(p->data_file, IO_RDWR, &io);
    if (ret < 0) {
        return ret;
    }
    int64_t cur = io_get_size(io);
    if (cur < 0) {
        ret = (int)cur;
    } else if ((uint64_t)cur < end) {
        ret = io_truncate(io, end);
    }
    if (ret == 0 && p->reserve) {
        ret = reserve_range(io, p->reserve, 0, end);
    }
    io_close(io);
    return ret;
}

/* The data file gets the options, but its preallocation is qcow2's job. */
static int create_data_file(const char *name, const struct qimg_opts *opts)
{
    struct qimg_opts *copy = qimg_opts_new();
    if (!copy) {
        return error_set(ENOMEM, "Out of memory");
    }
    int ret = 0;
    for (size_t i = 0; ret == 0 && i < qimg_opts_count(opts); i++) {
        const char *key = qimg_opts_key(opts, i);
        if (strcmp(key, "preallocation") != 0 &&
            qimg_opts_set(copy, key, qimg_opts_get(opts, key)) < 0) {
            ret = error_set(ENOMEM, "Out of memory");
        }
    }
    if (ret == 0) {
        ret = create_file(name, copy, NULL);
    }
    qimg_opts_free(copy);
    return ret;
}

int qcow2_create_on_io(struct qimg_io *io, const struct qimg_opts *opts)
{
    struct create_params p;
    int ret = parse_params(opts, &p);
    if (ret == 0 && p.data_file) {
        /* The data file would be a host file named by the options. */
        ret = error_set(ENOTSUP, "An external data file cannot be created "
                        "over a leaf");
    }
    if (ret == 0) {
        ret = io_truncate(io, 0);
    }
    if (ret == 0) {
        ret = write_image(io, &p);
    }
    return ret;
}

int qcow2_create(const char *filename, const struct qimg_opts *opts)
{
    /*
     * QEMU's order: the image file first (a failure there leaves things
     * as they were), then the data file, then the checks.
     */
    struct qimg_io *io = NULL;
    int ret = io_file_open(filename, IO_RDWR | IO_CREATE | IO_TRUNC, &io);
    if (ret < 0) {
        return ret;
    }
    struct create_params p;
    bool data_made = false;
    ret = io_truncate(io, 0);
    if (ret == 0) {
        ret = parse_params(opts, &p);
    }
    if (ret == 0 && p.data_file) {
        /* The data file is made by the file protocol with the options. */
        ret = create_data_file(p.data_file, opts);
        data_made = ret == 0;
    }
    if (ret == 0) {
        ret = write_image(io, &p);
    }
    io_close(io);
    if (ret == 0 && p.metadata && p.data_file) {
        ret = grow_data_file(&p);
    }
    if (ret < 0) {
        /* Like QEMU 7.2, a failed create deletes what it was to make. */
        unlink(filename);
        if (data_made) {
            unlink(p.data_file);
        }
    }
    return ret;
}
