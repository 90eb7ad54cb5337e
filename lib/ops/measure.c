/*
 * qimg_measure: the size a new image of a format would need (qemu-img
 * measure), from a virtual size or from the allocation of a source chain.
 *
 * qcow2 arithmetic, from the qcow2 spec: a header cluster, one L1 table
 * holding one 8-byte entry per L2 table (rounded up to whole clusters),
 * the L2 tables (cluster_size / entry size entries each, 8 or 16 bytes
 * with extended_l2), and refcount blocks plus a refcount table covering
 * every cluster, themselves included.  Data clusters count only where the
 * source has data; metadata is counted for the whole disk.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qimg/qimg.h"
#include "core/error.h"
#include "core/image.h"
#include "core/secret.h"
#include "crypto/encrypt_opts.h"
#include "crypto/luks1.h"
#include "driver.h"
#include "util/checked.h"

/* Block status is asked in windows of at most this many bytes. */
#define MEASURE_WINDOW (1ull << 30)

/* qcow2 limits [spec: header]. */
#define QCOW2_MIN_CLUSTER (1ull << 9)
#define QCOW2_MAX_CLUSTER (1ull << 21)
#define QCOW2_DEFAULT_CLUSTER (1ull << 16)
/* QEMU refuses L1 tables above 32 MiB: 4 Mi entries of 8 bytes. */
#define QCOW2_MAX_L1_ENTRIES (1ull << 22)
/* A bitmap directory entry is 24 bytes, then the name, 8-byte aligned. */
#define BITMAP_DIR_ENTRY_FIXED 24

/* The file protocol's creation options, accepted for every format. */
static const struct qimg_opt_desc file_opts[] = {
    {"size", QIMG_OPT_SIZE, NULL, NULL},
    {"nocow", QIMG_OPT_BOOL, NULL, NULL},
    {"preallocation", QIMG_OPT_STRING, NULL, NULL},
    {"extent_size_hint", QIMG_OPT_SIZE, NULL, NULL},
    {NULL, 0, NULL, NULL},
};

static const struct qimg_opt_desc qcow2_opts[] = {
    {"compat", QIMG_OPT_STRING, NULL, NULL},
    {"backing_file", QIMG_OPT_STRING, NULL, NULL},
    {"backing_fmt", QIMG_OPT_STRING, NULL, NULL},
    {"data_file", QIMG_OPT_STRING, NULL, NULL},
    {"data_file_raw", QIMG_OPT_BOOL, NULL, NULL},
    {"encryption", QIMG_OPT_BOOL, NULL, NULL},
    {"encrypt.format", QIMG_OPT_STRING, NULL, NULL},
    {"encrypt.key-secret", QIMG_OPT_STRING, NULL, NULL},
    {"encrypt.cipher-alg", QIMG_OPT_STRING, NULL, NULL},
    {"encrypt.cipher-mode", QIMG_OPT_STRING, NULL, NULL},
    {"encrypt.ivgen-alg", QIMG_OPT_STRING, NULL, NULL},
    {"encrypt.ivgen-hash-alg", QIMG_OPT_STRING, NULL, NULL},
    {"encrypt.hash-alg", QIMG_OPT_STRING, NULL, NULL},
    {"encrypt.iter-time", QIMG_OPT_NUMBER, NULL, NULL},
    {"cluster_size", QIMG_OPT_SIZE, NULL, NULL},
    {"extended_l2", QIMG_OPT_BOOL, NULL, NULL},
    {"lazy_refcounts", QIMG_OPT_BOOL, NULL, NULL},
    {"refcount_bits", QIMG_OPT_NUMBER, NULL, NULL},
    {"compression_type", QIMG_OPT_STRING, NULL, NULL},
    {NULL, 0, NULL, NULL},
};

static const struct qimg_opt_desc raw_opts[] = {
    {NULL, 0, NULL, NULL},
};

static const struct qimg_opt_desc luks_opts[] = {
    {"key-secret", QIMG_OPT_STRING, NULL, NULL},
    {"cipher-alg", QIMG_OPT_STRING, NULL, NULL},
    {"cipher-mode", QIMG_OPT_STRING, NULL, NULL},
    {"ivgen-alg", QIMG_OPT_STRING, NULL, NULL},
    {"ivgen-hash-alg", QIMG_OPT_STRING, NULL, NULL},
    {"hash-alg", QIMG_OPT_STRING, NULL, NULL},
    {"iter-time", QIMG_OPT_NUMBER, NULL, NULL},
    {NULL, 0, NULL, NULL},
};

/*
 * The LUKS header area a target with these options takes.  [QEMU] makes
 * a throw-away header to learn it, so the names are checked, then the
 * key secret must exist and be a password, then the combination.
 */
static int luks_area(const struct qimg_opts *opts, const char *prefix,
                     uint64_t *area)
{
    struct luks1_create_opts o;
    int ret = luks1_create_opts_parse(opts, prefix, &o);
    if (ret < 0) {
        return ret;
    }
    char key[32];
    snprintf(key, sizeof(key), "%skey-secret", prefix);
    char *password;
    size_t len;
    ret = crypto_password(opts ? qimg_opts_get(opts, key) : NULL, key,
                          &password, &len);
    if (ret < 0) {
        return ret;
    }
    secret_free(password, len);
    return luks1_create_check(&o, area);
}

static const struct qimg_opt_desc *find_opt(const struct qimg_opt_desc *list,
                                          const char *key)
{
    for (const struct qimg_opt_desc *o = list; o->name; o++) {
        if (strcmp(o->name, key) == 0) {
            return o;
        }
    }
    return NULL;
}

/* Every option must be known to the format or the file protocol. */
static int check_opts(const char *format, const struct qimg_opt_desc *fmt_opts,
                      const struct qimg_opts *opts)
{
    int ret = 0;
    for (size_t i = 0; opts && i < qimg_opts_count(opts) && ret == 0; i++) {
        const char *key = qimg_opts_key(opts, i);
        const struct qimg_opt_desc *o = find_opt(fmt_opts, key);
        if (!o) {
            o = find_opt(file_opts, key);
        }
        if (!o) {
            ret = error_set(EINVAL, "Invalid parameter '%s'", key);
        } else {
            ret = opt_check_value(o, qimg_opts_get(opts, key));
        }
    }
    if (ret < 0) {
        /* The message is copied: error_set rewrites the buffer it reads. */
        char *why = strdup(qimg_get_error());
        if (!why) {
            return error_set(ENOMEM, "Out of memory");
        }
        ret = error_set(-ret, "%s\nInvalid options for file format '%s'",
                        why, format);
        free(why);
    }
    return ret < 0 ? ret : 0;
}

/* The qcow2 target's layout choices from its -o options. */
struct qcow2_target {
    uint64_t cluster_size;
    unsigned refcount_bits;
    bool extended_l2;
    bool v3;
    bool prealloc_data; /* falloc or full: every data cluster exists */
    uint64_t luks_area;  /* bytes of the LUKS header (0: none) */
};

static int qcow2_target_parse(const struct qimg_opts *opts,
                              struct qcow2_target *t)
{
    const char *v;
    t->cluster_size = QCOW2_DEFAULT_CLUSTER;
    t->refcount_bits = 16;
    t->extended_l2 = false;
    t->v3 = true;
    t->prealloc_data = false;

    t->luks_area = 0;
    const char *enc = opts ? qimg_opts_get(opts, "encrypt.format") : NULL;
    if (enc && strcmp(enc, "luks") == 0) {
        int ret = luks_area(opts, "encrypt.", &t->luks_area);
        if (ret < 0) {
            return ret;
        }
    }
    if (opts && (v = qimg_opts_get(opts, "cluster_size"))) {
        uint64_t cs = 0;
        (void)qimg_parse_size(v, 'B', &cs);
        if (cs < QCOW2_MIN_CLUSTER || cs > QCOW2_MAX_CLUSTER ||
            (cs & (cs - 1))) {
            return error_set(EINVAL, "Cluster size must be a power of two "
                             "between 512 and 2048k");
        }
        t->cluster_size = cs;
    }
    if (opts && (v = qimg_opts_get(opts, "extended_l2"))) {
        (void)opt_parse_bool(v, &t->extended_l2);
    }
    if (t->extended_l2 && t->cluster_size < 16384) {
        return error_set(EINVAL, "Extended L2 entries are only supported "
                         "with cluster sizes of at least 16384 bytes");
    }
    if (opts && (v = qimg_opts_get(opts, "preallocation"))) {
        if (strcmp(v, "falloc") == 0 || strcmp(v, "full") == 0) {
            t->prealloc_data = true;
        } else if (strcmp(v, "off") != 0 && strcmp(v, "metadata") != 0) {
            return error_set(EINVAL, "invalid parameter value: %s", v);
        }
    }
    if (opts && (v = qimg_opts_get(opts, "compat"))) {
        if (strcmp(v, "0.10") == 0) {
            t->v3 = false;
        } else if (strcmp(v, "1.1") != 0) {
            return error_set(EINVAL, "Invalid compatibility level: '%s'", v);
        }
    }
    if (opts && (v = qimg_opts_get(opts, "refcount_bits"))) {
        unsigned long long bits = strtoull(v, NULL, 0);
        if (bits == 0 || bits > 64 || (bits & (bits - 1))) {
            return error_set(EINVAL, "Refcount width must be a power of two "
                             "and may not exceed 64 bits");
        }
        if (!t->v3 && bits != 16) {
            return error_set(EINVAL, "Different refcount widths than 16 "
                             "bits require compatibility level 1.1 or "
                             "above (use compat=1.1 or greater)");
        }
        t->refcount_bits = (unsigned)bits;
    }
    return 0;
}

/*
 * Metadata bytes of a qcow2 image of `clusters` data clusters: header,
 * L1, L2 tables and the refcount structures covering them all.  clusters
 * is at most 2^63 / 512, so no product below overflows.
 */
static uint64_t qcow2_meta_size(const struct qcow2_target *t,
                                uint64_t clusters)
{
    const uint64_t cs = t->cluster_size;
    const uint64_t l2_entries = cs / (t->extended_l2 ? 16 : 8);
    uint64_t l2_tables = div_round_up_u64(clusters, l2_entries);
    uint64_t l1_clusters = div_round_up_u64(l2_tables * 8, cs);
    uint64_t meta = 1 + l1_clusters + l2_tables;
    uint64_t rb_entries = cs * 8 / t->refcount_bits;
    uint64_t blocks = 0;
    uint64_t table = 0;
    /* Refcount blocks and table also need refcounts: iterate to a fix. */
    for (;;) {
        uint64_t nb = div_round_up_u64(meta + clusters + blocks + table,
                                       rb_entries);
        uint64_t nt = div_round_up_u64(nb * 8, cs);
        if (nb == blocks && nt == table) {
            break;
        }
        blocks = nb;
        table = nt;
    }
    return (meta + blocks + table) * cs;
}

/* Bytes of the source's data clusters, in units of cluster_size. */
static int count_data(struct qimg_image *img, uint64_t size,
                      uint64_t cluster_size, uint64_t *out)
{
    uint64_t total = 0;
    uint64_t counted_end = 0;
    uint64_t off = 0;
    while (off < size) {
        struct qimg_extent ext;
        uint64_t n = min_u64(size - off, MEASURE_WINDOW);
        if (qimg_block_status(img, off, n, &ext) < 0) {
            return -qimg_get_errno();
        }
        if (ext.length == 0 || ext.length > n) {
            return error_set(EIO, "%s: bad block status",
                             qimg_get_filename(img));
        }
        if ((ext.flags & QIMG_EXTENT_DATA) &&
            !(ext.flags & QIMG_EXTENT_ZERO)) {
            uint64_t start = align_down_u64(off, cluster_size);
            uint64_t end = 0;
            /* off + length <= size < 2^63: aligning up cannot wrap. */
            (void)align_up_overflow_u64(off + ext.length, cluster_size,
                                        &end);
            if (start < counted_end) {
                start = counted_end;
            }
            if (end > start) {
                total += end - start;
                counted_end = end;
            }
        }
        off += ext.length;
    }
    *out = total;
    return 0;
}

/*
 * Bitmap bytes a qcow2 v3 target needs for the source's persistent
 * bitmaps: for each, its data clusters and its table, then the
 * directory, each rounded up to whole clusters.
 */
static int bitmaps_size(struct qimg_image *img, uint64_t size,
                        uint64_t cs, struct qimg_measure_result *out)
{
    struct qimg_image_info *info = qimg_get_info(img);
    if (!info) {
        return -qimg_get_errno();
    }
    uint64_t total = 0;
    uint64_t dir = 0;
    const struct qimg_value *data =
        info->format_specific ?
        qimg_value_dict_get(info->format_specific, "data") : NULL;
    const struct qimg_value *list =
        data ? qimg_value_dict_get(data, "bitmaps") : NULL;
    const struct qimg_value *compat =
        data ? qimg_value_dict_get(data, "compat") : NULL;
    if (!compat || strcmp(qimg_value_get_string(compat), "1.1") != 0) {
        /* A v2 source cannot hold persistent bitmaps. */
        qimg_image_info_free(info);
        return 0;
    }
    out->has_bitmaps = true;
    for (size_t i = 0; list && i < qimg_value_count(list); i++) {
        const struct qimg_value *bm = qimg_value_item(list, i);
        const struct qimg_value *g = qimg_value_dict_get(bm, "granularity");
        const struct qimg_value *name = qimg_value_dict_get(bm, "name");
        uint64_t gran = g ? (uint64_t)qimg_value_get_int(g) : 0;
        if (gran == 0 || !name) {
            qimg_image_info_free(info);
            return error_set(EIO, "%s: bad bitmap", qimg_get_filename(img));
        }
        uint64_t bits = div_round_up_u64(size, gran);
        uint64_t bytes = div_round_up_u64(bits, 8);
        uint64_t clusters = div_round_up_u64(bytes, cs);
        total += clusters * cs;
        total += div_round_up_u64(clusters * 8, cs) * cs;
        uint64_t entry = BITMAP_DIR_ENTRY_FIXED +
                         strlen(qimg_value_get_string(name));
        dir += (entry + 7) & ~7ull;
    }
    total += div_round_up_u64(dir, cs) * cs;
    qimg_image_info_free(info);
    out->bitmaps = total;
    return 0;
}

/*
 * QEMU 7.2's drivers other than raw and qcow2: those that can create
 * images but not measure them, and those that cannot create at all.
 */
static const char *const creating_formats[] = {
    "file", "host_cdrom", "host_device", "nbd", "nvme", "parallels", "qcow",
    "qed", "vdi", "vhdx", "vmdk", "vpc", NULL,
};
static const char *const noncreating_formats[] = {
    "blkdebug", "blklogwrites", "blkverify", "bochs", "cloop", "compress",
    "copy-before-write", "copy-on-read", "dmg", "null-aio", "null-co",
    "preallocate", "quorum", "replication", "snapshot-access", "throttle",
    "vvfat", NULL,
};

static bool in_list(const char *const *list, const char *name)
{
    for (; *list; list++) {
        if (strcmp(*list, name) == 0) {
            return true;
        }
    }
    return false;
}

static int other_format_error(const char *format)
{
    if (in_list(creating_formats, format)) {
        return error_set(ENOTSUP, "Block driver '%s' does not support size "
                         "measurement", format);
    }
    if (in_list(noncreating_formats, format)) {
        return error_set(ENOTSUP, "Format driver '%s' does not support "
                         "image creation", format);
    }
    return error_set(EINVAL, "Unknown file format '%s'", format);
}

static struct qimg_image *open_source(const struct qimg_measure_params *p)
{
    unsigned flags = p->source_flags & ~QIMG_OPEN_RDWR;
    return image_open_snapshot_opts(p->source, p->source_format, flags,
                                    p->source_driver_opts,
                                    p->source_snapshot);
}

static int measure(const struct qimg_measure_params *p,
                   struct qimg_measure_result *out)
{
    const char *format = p->target_format ? p->target_format : "raw";
    struct qimg_image *img = NULL;
    uint64_t size = p->size;
    int ret = 0;

    memset(out, 0, sizeof(*out));
    if (p->source) {
        img = open_source(p);
        if (!img) {
            return -qimg_get_errno();
        }
        int64_t s = qimg_get_size(img);
        if (s < 0) {
            ret = -qimg_get_errno();
            goto out;
        }
        size = (uint64_t)s;
    } else if (size > INT64_MAX) {
        return error_set(EINVAL, "Invalid image size specified. Must be "
                         "between 0 and 9223372036854775807.");
    }
    bool is_raw = strcmp(format, "raw") == 0;
    bool is_qcow2 = strcmp(format, "qcow2") == 0;
    bool is_luks = strcmp(format, "luks") == 0;
    if (!is_raw && !is_qcow2 && !is_luks) {
        ret = other_format_error(format);
        goto out;
    }
    ret = check_opts(format,
                     is_qcow2  ? qcow2_opts
                     : is_luks ? luks_opts
                               : raw_opts,
                     p->target_opts);
    if (ret < 0) {
        goto out;
    }
    /* Every format stores whole 512-byte sectors. */
    (void)align_up_overflow_u64(size, 512, &size);
    if (is_raw || is_luks) {
        /* [QEMU] a LUKS target is its header area and every sector. */
        uint64_t area = 0;
        ret = is_luks ? luks_area(p->target_opts, "", &area) : 0;
        if (ret == 0 && add_overflow_u64(size, area, &out->required)) {
            ret = error_set(EFBIG, "Image size too large");
        }
        out->fully_allocated = out->required;
        goto out;
    }

    struct qcow2_target t;
    ret = qcow2_target_parse(p->target_opts, &t);
    if (ret < 0) {
        goto out;
    }
    uint64_t aligned = 0;
    (void)align_up_overflow_u64(size, t.cluster_size, &aligned);
    uint64_t l2_tables = div_round_up_u64(aligned / t.cluster_size,
                                          t.cluster_size /
                                          (t.extended_l2 ? 16 : 8));
    if (l2_tables > QCOW2_MAX_L1_ENTRIES) {
        ret = error_set(EFBIG, "The image size is too large (try using a "
                        "larger cluster size)");
        goto out;
    }
    uint64_t meta = qcow2_meta_size(&t, aligned / t.cluster_size);
    /* [QEMU] the LUKS header area takes whole clusters of its own. */
    uint64_t luks_clusters = 0;
    (void)align_up_overflow_u64(t.luks_area, t.cluster_size, &luks_clusters);
    meta += luks_clusters;
    uint64_t data = aligned;
    if (img && !t.prealloc_data) {
        ret = count_data(img, size, t.cluster_size, &data);
    } else if (!t.prealloc_data) {
        data = 0;
    }
    if (ret < 0) {
        goto out;
    }
    if (add_overflow_u64(aligned, meta, &out->fully_allocated)) {
        ret = error_set(EFBIG, "Image size too large");
        goto out;
    }
    out->required = meta + data;
    /* Persistent bitmaps exist in qcow2 v3 only, source and target. */
    if (img && t.v3 && strcmp(qimg_get_format(img), "qcow2") == 0) {
        ret = bitmaps_size(img, size, t.cluster_size, out);
    }
out:
    if (img) {
        qimg_close(img);
    }
    return ret;
}

int qimg_measure(const struct qimg_measure_params *p,
                 struct qimg_measure_result *out)
{
    error_clear();
    int ret = measure(p, out);
    if (ret < 0) {
        errno = -ret;
        return -1;
    }
    return 0;
}

struct qimg_value *qimg_measure_result_to_value(
    const struct qimg_measure_result *r)
{
    struct qimg_value *v = qimg_value_new_dict();
    if (!v) {
        return NULL;
    }
    if ((r->has_bitmaps &&
         qimg_value_dict_set(v, "bitmaps",
                             qimg_value_new_uint(r->bitmaps)) < 0) ||
        qimg_value_dict_set(v, "required",
                            qimg_value_new_uint(r->required)) < 0 ||
        qimg_value_dict_set(v, "fully-allocated",
                            qimg_value_new_uint(r->fully_allocated)) < 0) {
        qimg_value_free(v);
        return NULL;
    }
    return v;
}
