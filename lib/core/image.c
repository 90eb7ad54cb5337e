/*
 * The request layer: opening and probing images, and the public I/O calls.
 * Every driver call passes through here, so range checks, read-only
 * enforcement and the error convention are checked in one place.
 */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/image.h"
#include "util/json.h"

/* Bytes of a file handed to probe functions. */
#define PROBE_BUF_SIZE 2048

/* Probing takes the highest score; the order only breaks ties. */
static const struct qimg_format_ops *const formats[] = {
    &format_qcow2,
    &format_raw,
    &format_vdi,
    &format_qcow,
    &format_vpc,
    &format_vmdk,
    &format_vhdx,
    &format_qed,
    &format_bochs,
    &format_cloop,
    &format_parallels,
    &format_dmg,
    &format_luks,
};
#define FORMATS_COUNT (sizeof(formats) / sizeof(formats[0]))

const struct qimg_format_ops *format_lookup(const char *name)
{
    for (size_t i = 0; i < FORMATS_COUNT; i++) {
        if (strcmp(formats[i]->name, name) == 0) {
            return formats[i];
        }
    }
    return NULL;
}

bool qimg_format_known(const char *format)
{
    return format && format_lookup(format) != NULL;
}

const char *const *qimg_format_names(void)
{
    static const char *names[FORMATS_COUNT + 1];
    for (size_t i = 0; i < FORMATS_COUNT; i++) {
        names[i] = formats[i]->name;
    }
    names[FORMATS_COUNT] = NULL;
    return names;
}

const struct qimg_format_ops *format_probe_buffer(const uint8_t *buf,
                                                  size_t len,
                                                  const char *filename)
{
    const struct qimg_format_ops *best = &format_raw;
    int best_score = 0;
    for (size_t i = 0; i < FORMATS_COUNT; i++) {
        int score = formats[i]->probe(buf, len, filename);
        if (score > best_score) {
            best_score = score;
            best = formats[i];
        }
    }
    return best;
}

void node_warn_probed_raw(const char *filename)
{
    warn_report("WARNING: Image format was not specified for '%s' "
                "and probing guessed raw.\n"
                "         Automatically detecting the format is "
                "dangerous for raw images, write operations on "
                "block 0 will be restricted.\n"
                "         Specify the 'raw' format explicitly to "
                "remove the restrictions.", filename);
}

static int probe_file(struct qimg_io *file, const char *filename,
                      const struct qimg_format_ops **out)
{
    uint8_t buf[PROBE_BUF_SIZE];
    int64_t size = io_get_size(file);
    if (size < 0) {
        return (int)size;
    }
    size_t len = size < PROBE_BUF_SIZE ? (size_t)size : PROBE_BUF_SIZE;
    int ret = io_pread(file, buf, len, 0);
    if (ret < 0) {
        return error_prefix(-ret, "Could not read image for determining "
                            "its format");
    }
    *out = format_probe_buffer(buf, len, filename);
    return 0;
}

const char *qimg_probe(const char *filename)
{
    struct qimg_io *file;
    const struct qimg_format_ops *drv = NULL;
    int ret = io_file_open(filename, IO_NO_LOCK, &file);
    if (ret < 0) {
        errno = -ret;
        return NULL;
    }
    ret = probe_file(file, filename, &drv);
    io_close(file);
    if (ret < 0) {
        errno = -ret;
        return NULL;
    }
    return drv->name;
}

void node_close(struct qimg_node *node)
{
    while (node) {
        struct qimg_node *below = node->backing;
        if (node->drv && node->opaque) {
            node->drv->close(node);
        }
        io_close(node->file);
        free(node->filename);
        free(node->display_name);
        free(node->backing_name);
        free(node->backing_format);
        qimg_opts_free(node->open_opts);
        qimg_opts_free(node->open_opts_taken);
        free(node);
        node = below;
    }
}

/*
 * The image locks QEMU takes for the same use, so that each refuses what
 * the other would: raw shares writes and resizes (the guest owns every
 * byte), formats with metadata in the file refuse to share them.  A
 * metadata-only open (info) reads no guest data.
 */
static int node_take_locks(struct qimg_node *node, unsigned flags)
{
    bool raw = node->drv == &format_raw;
    unsigned perm = (flags & QIMG_OPEN_NO_IO) ? 0 : IO_PERM_CONSISTENT_READ;
    unsigned unshared = raw ? 0 : IO_PERM_WRITE | IO_PERM_RESIZE;
    if (node->writable) {
        perm |= IO_PERM_WRITE | (raw ? 0 : IO_PERM_RESIZE);
    }
    return node->file->ops->set_perm(node->file, perm, unshared);
}

/*
 * qimg_set_open_policy()'s flags.  Atomic so that an open in a convert
 * worker thread reads a whole value; the policy is meant to be set once,
 * before anything is opened.
 */
static unsigned open_policy;

unsigned image_open_policy(void)
{
    return __atomic_load_n(&open_policy, __ATOMIC_SEQ_CST);
}

/*
 * Open a node over an open leaf (taken over, closed on failure): probe if
 * drv is NULL, take the locks, open the format and the backing chain.
 */
const char *node_opt_take(struct qimg_node *node, const char *key)
{
    const char *value = node->open_opts ? qimg_opts_get(node->open_opts, key)
                                        : NULL;
    if (!value) {
        return node->open_opts_taken
                   ? qimg_opts_get(node->open_opts_taken, key)
                   : NULL;
    }
    if (!node->open_opts_taken) {
        node->open_opts_taken = qimg_opts_new();
    }
    /* Out of memory: the key stays unconsumed and the open fails. */
    if (!node->open_opts_taken ||
        qimg_opts_set(node->open_opts_taken, key, value) < 0) {
        return NULL;
    }
    /* Looked up first: key may be open_opts' own copy, freed by unset. */
    const char *taken = qimg_opts_get(node->open_opts_taken, key);
    qimg_opts_unset(node->open_opts, key);
    return taken;
}

int node_opt_take_size(struct qimg_node *node, const char *key, bool *given,
                       uint64_t *out)
{
    const char *v = node_opt_take(node, key);
    *given = v != NULL;
    *out = 0;
    if (v && (qimg_parse_size(v, 'B', out) < 0 || v[0] == '-')) {
        return error_set(EINVAL, "Parameter '%s' expects a non-negative "
                         "number below 2^64\nOptional suffix k, M, G, T, "
                         "P or E means kilo-, mega-, giga-, tera-, peta-\n"
                         "and exabytes, respectively.", key);
    }
    return 0;
}

/*
 * [QEMU] a node opened with strong runtime options is named by them:
 * json:{"driver": FMT, "file": {"driver": "file", "filename": F}, KEY:
 * VALUE...}, keys in QDict order (the value tree's), in one line.
 */
static int node_set_display_name(struct qimg_node *node)
{
    const char *const *strong = node->drv->strong_opts;
    bool any = false;
    for (size_t i = 0; strong && strong[i] && node->open_opts_taken; i++) {
        any = any || qimg_opts_get(node->open_opts_taken, strong[i]);
    }
    if (!any) {
        return 0;
    }
    struct qimg_value *d = qimg_value_new_dict();
    struct qimg_value *file = qimg_value_new_dict();
    bool ok = d && file &&
              qimg_value_dict_set(file, "driver",
                                  qimg_value_new_string("file")) == 0 &&
              qimg_value_dict_set(file, "filename",
                                  qimg_value_new_string(node->filename)) ==
                  0 &&
              qimg_value_dict_set(d, "driver",
                                  qimg_value_new_string(node->drv->name)) == 0;
    if (ok) {
        ok = qimg_value_dict_set(d, "file", file) == 0;
        file = NULL;
    }
    for (size_t i = 0; ok && strong[i]; i++) {
        const char *v = qimg_opts_get(node->open_opts_taken, strong[i]);
        if (v) {
            ok = qimg_value_dict_set(d, strong[i], qimg_value_new_string(v)) ==
                 0;
        }
    }
    char *json = ok ? json_compact(d) : NULL;
    qimg_value_free(file);
    qimg_value_free(d);
    size_t n = json ? strlen(json) : 0;
    node->display_name = json ? malloc(n + 6) : NULL;
    if (node->display_name) {
        memcpy(node->display_name, "json:", 5);
        memcpy(node->display_name + 5, json, n + 1);
    }
    free(json);
    return node->display_name ? 0 : error_set(ENOMEM, "Out of memory");
}

/* A private copy of the caller's runtime options for a node. */
static int node_set_open_opts(struct qimg_node *node,
                              const struct qimg_opts *opts)
{
    if (!opts || qimg_opts_count(opts) == 0) {
        return 0;
    }
    node->open_opts = qimg_opts_new();
    if (!node->open_opts) {
        return error_set(ENOMEM, "Out of memory");
    }
    for (size_t i = 0; i < qimg_opts_count(opts); i++) {
        const char *key = qimg_opts_key(opts, i);
        if (qimg_opts_set(node->open_opts, key, qimg_opts_get(opts, key)) <
            0) {
            return error_set(ENOMEM, "Out of memory");
        }
    }
    return 0;
}

static int node_open_leaf(struct qimg_io *file, const char *filename,
                          const struct qimg_format_ops *drv, unsigned flags,
                          const struct qimg_opts *opts,
                          const struct chain_link *up,
                          struct qimg_node **out)
{
    struct qimg_node *node = calloc(1, sizeof(*node));
    if (!node) {
        io_close(file);
        return error_set(ENOMEM, "Out of memory");
    }
    node->file = file;
    node->filename = strdup(filename);
    if (!node->filename) {
        node_close(node);
        return error_set(ENOMEM, "Out of memory");
    }
    /* The policy reaches the driver (data file, extents) and the chain. */
    flags |= image_open_policy();
    node->writable = (flags & QIMG_OPEN_RDWR) != 0;
    node->no_flush = (flags & QIMG_OPEN_CACHE_UNSAFE) != 0;

    int ret;
    if (!drv) {
        ret = probe_file(node->file, filename, &drv);
        if (ret < 0) {
            goto fail;
        }
        if (drv == &format_raw && node->writable) {
            node->protect_block0 = true;
            node_warn_probed_raw(filename);
        }
    }
    node->drv = drv;
    ret = node_set_open_opts(node, opts);
    if (ret < 0) {
        goto fail;
    }
    ret = node_take_locks(node, flags);
    if (ret < 0) {
        goto fail;
    }
    ret = drv->open(node, flags);
    if (ret < 0) {
        node->drv = NULL;
        goto fail;
    }
    if (node->open_opts && qimg_opts_count(node->open_opts) > 0) {
        ret = error_set(EINVAL, "Block format '%s' does not support the "
                        "option '%s'", drv->name,
                        qimg_opts_key(node->open_opts, 0));
        goto fail;
    }
    ret = node_set_display_name(node);
    if (ret < 0) {
        goto fail;
    }
    if (node->backing_name && !(flags & QIMG_OPEN_NO_BACKING)) {
        ret = chain_open_backing(node, flags, up);
        if (ret < 0) {
            goto fail;
        }
    }
    *out = node;
    return 0;

fail:
    node_close(node);
    return ret;
}

/* The driver for an explicit format name, or NULL (and 0) to probe. */
static int node_lookup_format(const char *format,
                              const struct qimg_format_ops **drv)
{
    *drv = NULL;
    if (format) {
        *drv = format_lookup(format);
        if (!*drv) {
            return error_set(EINVAL, "Unknown driver '%s'", format);
        }
    }
    return 0;
}

static image_leaf_resolver leaf_resolver;
static void *leaf_resolver_opaque;

void image_set_leaf_resolver(image_leaf_resolver resolve, void *opaque)
{
    leaf_resolver = resolve;
    leaf_resolver_opaque = opaque;
}

int node_open(const char *filename, const char *format, unsigned flags,
              const struct chain_link *up, struct qimg_node **out)
{
    return node_open_opts(filename, format, flags, NULL, up, out);
}

int node_open_opts(const char *filename, const char *format, unsigned flags,
                   const struct qimg_opts *opts, const struct chain_link *up,
                   struct qimg_node **out)
{
    const struct qimg_format_ops *drv;
    int ret = node_lookup_format(format, &drv);
    if (ret < 0) {
        return ret;
    }
    /* Locks wait until the format is known: they depend on it. */
    unsigned io_flags = ((flags & QIMG_OPEN_RDWR) ? IO_RDWR : 0) |
                        IO_LOCK_LATER;
    if (flags & QIMG_OPEN_FORCE_SHARE) {
        io_flags |= IO_NO_LOCK;
    }
    if (flags & QIMG_OPEN_CACHE_DIRECT) {
        io_flags |= IO_DIRECT;
    }
    struct qimg_io *file = NULL;
    ret = leaf_resolver ? leaf_resolver(filename, io_flags,
                                        leaf_resolver_opaque, &file)
                        : 0;
    if (ret == 0) {
        ret = io_file_open(filename, io_flags, &file);
    }
    if (ret < 0) {
        return ret;
    }
    return node_open_leaf(file, filename, drv, flags, opts, up, out);
}

int node_flush(struct qimg_node *node)
{
    if (!node->writable) {
        return 0;
    }
    /* Drivers with caches write them back even when syncs are off. */
    if (node->drv->flush) {
        return node->drv->flush(node);
    }
    return node_sync(node, node->file);
}

int node_sync(struct qimg_node *node, struct qimg_io *io)
{
    return node->no_flush ? 0 : io_flush(io);
}

/* A driver returns 0 or -errno, nothing else: the core's contract check. */
static int driver_result(int ret)
{
    assert(ret <= 0);
    return ret;
}

/* ---- Public API -------------------------------------------------------- */

static void *fail_null(int ret)
{
    errno = -ret;
    return NULL;
}

static int fail_int(int ret)
{
    errno = -ret;
    return -1;
}

int qimg_set_open_policy(unsigned flags)
{
    if (flags & ~QIMG_OPEN_NO_EXTERNAL) {
        return fail_int(error_set(EINVAL, "Only QIMG_OPEN_NO_EXTERNAL can "
                                  "be set as an open policy"));
    }
    __atomic_store_n(&open_policy, flags, __ATOMIC_SEQ_CST);
    return 0;
}

/*
 * QEMU's bdrv_snapshot_load_tmp and its by-id-or-name variant, with
 * QEMU's message for formats that have no internal snapshots.
 */
int image_load_snapshot(struct qimg_node *node,
                        const struct qimg_snapshot_select *sel)
{
    bool any = sel->id_or_name != NULL;
    if (any ? sel->id || sel->name : !sel->id && !sel->name) {
        return error_set(EINVAL, "Failed to load snapshot: give an id, a "
                         "name, or one id-or-name");
    }
    int ret;
    if (!node->drv->snapshot_load) {
        ret = error_set(ENOTSUP, "Block format '%s' used by device '' does "
                        "not support temporarily loading internal "
                        "snapshots", node->drv->name);
    } else {
        ret = driver_result(node->drv->snapshot_load(node, sel));
    }
    return ret < 0 ? error_prefix(-ret, "Failed to load snapshot") : 0;
}

struct qimg_image *qimg_open_snapshot(const char *filename,
                                      const char *format, unsigned flags,
                                      const struct qimg_snapshot_select *sel)
{
    if (!sel) {
        error_clear();
        return fail_null(error_set(EINVAL, "No snapshot given"));
    }
    return image_open_snapshot_opts(filename, format, flags, NULL, sel);
}

struct qimg_image *
image_open_snapshot_opts(const char *filename, const char *format,
                         unsigned flags, const struct qimg_opts *driver_opts,
                         const struct qimg_snapshot_select *sel)
{
    if (!sel) {
        return qimg_open_opts(filename, format, flags, driver_opts);
    }
    if (flags & QIMG_OPEN_RDWR) {
        error_clear();
        return fail_null(error_set(EINVAL, "Could not open '%s': internal "
                                   "snapshots are opened read-only",
                                   filename ? filename : ""));
    }
    struct qimg_image *img = qimg_open_opts(filename, format, flags,
                                            driver_opts);
    if (!img) {
        return NULL;
    }
    int ret = image_load_snapshot(img->top, sel);
    if (ret < 0) {
        qimg_close(img);
        return fail_null(ret);
    }
    return img;
}

struct qimg_image *qimg_open(const char *filename, const char *format,
                             unsigned flags)
{
    return qimg_open_opts(filename, format, flags, NULL);
}

struct qimg_image *qimg_open_opts(const char *filename, const char *format,
                                  unsigned flags,
                                  const struct qimg_opts *driver_opts)
{
    error_clear();
    if (!filename) {
        return fail_null(error_set(EINVAL, "No filename given"));
    }
    if ((flags & QIMG_OPEN_FORCE_SHARE) && (flags & QIMG_OPEN_RDWR)) {
        return fail_null(error_set(EINVAL, "Could not open '%s': force-share"
                                   "=on can only be used with read-only "
                                   "images",
                                   filename));
    }
    struct qimg_image *img = calloc(1, sizeof(*img));
    if (!img) {
        return fail_null(error_set(ENOMEM, "Out of memory"));
    }
    int ret = node_open_opts(filename, format, flags, driver_opts, NULL,
                             &img->top);
    if (ret < 0) {
        free(img);
        return fail_null(error_prefix(-ret, "Could not open '%s'", filename));
    }
    img->flags = flags;
    return img;
}

int image_open_leaf(struct qimg_io *file, const char *format,
                    unsigned flags, struct qimg_image **out)
{
    return image_open_leaf_opts(file, format, flags, NULL, out);
}

int image_open_leaf_opts(struct qimg_io *file, const char *format,
                         unsigned flags, const struct qimg_opts *driver_opts,
                         struct qimg_image **out)
{
    *out = NULL;
    error_clear();
    const struct qimg_format_ops *drv;
    int ret = node_lookup_format(format, &drv);
    if (ret < 0) {
        io_close(file);
        return ret;
    }
    struct qimg_image *img = calloc(1, sizeof(*img));
    if (!img) {
        io_close(file);
        return error_set(ENOMEM, "Out of memory");
    }
    /* The node keeps its own copy; the leaf's name lives as long. */
    ret = node_open_leaf(file, file->filename, drv, flags, driver_opts, NULL,
                         &img->top);
    if (ret < 0) {
        free(img);
        return ret;
    }
    img->flags = flags;
    *out = img;
    return 0;
}

int qimg_close(struct qimg_image *img)
{
    if (!img) {
        return 0;
    }
    int ret = node_flush(img->top);
    node_close(img->top);
    free(img);
    return ret < 0 ? fail_int(ret) : 0;
}

const char *qimg_get_format(const struct qimg_image *img)
{
    return img->top->drv->name;
}

bool qimg_concurrent_io(const struct qimg_image *img)
{
    return img->top->drv->concurrent_io;
}

const char *qimg_get_filename(const struct qimg_image *img)
{
    return img->top->filename;
}

int64_t qimg_get_size(struct qimg_image *img)
{
    return (int64_t)img->top->size;
}

uint64_t qimg_get_cluster_size(struct qimg_image *img)
{
    struct qimg_image_info *info = qimg_get_info(img);
    uint64_t cluster_size = info ? info->cluster_size : 0;
    qimg_image_info_free(info);
    return cluster_size;
}

/* The range check every request passes before reaching a driver. */
static int check_request(struct qimg_node *node, uint64_t off, uint64_t len,
                         bool write)
{
    if (write && !node->writable) {
        return error_set(EACCES, "%s: image is opened read-only",
                         node->filename);
    }
    if (off > node->size || len > node->size - off) {
        return error_set(EINVAL, "%s: request at %llu+%llu is beyond the "
                         "end of the image (%llu bytes)", node->filename,
                         (unsigned long long)off, (unsigned long long)len,
                         (unsigned long long)node->size);
    }
    return 0;
}


int qimg_pread(struct qimg_image *img, void *buf, size_t len,
               uint64_t offset)
{
    struct qimg_node *node = img->top;
    int ret = check_request(node, offset, len, false);
    if (ret == 0 && len > 0) {
        ret = driver_result(node->drv->pread(node, buf, len, offset));
    }
    return ret < 0 ? fail_int(ret) : 0;
}

int qimg_pwrite(struct qimg_image *img, const void *buf, size_t len,
                uint64_t offset)
{
    struct qimg_node *node = img->top;
    int ret = check_request(node, offset, len, true);
    if (ret == 0 && len > 0) {
        if (!node->drv->pwrite) {
            ret = error_set(ENOTSUP, "%s: the %s driver cannot write",
                            node->filename, node->drv->name);
        } else {
            ret = driver_result(node->drv->pwrite(node, buf, len, offset));
        }
    }
    return ret < 0 ? fail_int(ret) : 0;
}

/* Zero writes fall back to writing a zero buffer, a bounded piece at once. */
#define ZERO_FALLBACK_CHUNK (1024 * 1024)

static int write_zero_buffer(struct qimg_node *node, uint64_t off,
                             uint64_t len)
{
    size_t chunk = len < ZERO_FALLBACK_CHUNK ? (size_t)len
                                             : ZERO_FALLBACK_CHUNK;
    void *zeros = calloc(1, chunk);
    if (!zeros) {
        return error_set(ENOMEM, "Out of memory");
    }
    int ret = 0;
    while (len > 0 && ret == 0) {
        size_t n = len < chunk ? (size_t)len : chunk;
        ret = driver_result(node->drv->pwrite(node, zeros, n, off));
        off += n;
        len -= n;
    }
    free(zeros);
    return ret;
}

int qimg_pwrite_zeroes(struct qimg_image *img, uint64_t offset,
                       uint64_t len, unsigned flags)
{
    struct qimg_node *node = img->top;
    int ret = check_request(node, offset, len, true);
    if (ret == 0 && len > 0) {
        if (node->drv->pwrite_zeroes) {
            ret = driver_result(
                node->drv->pwrite_zeroes(node, offset, len, flags));
        } else if (node->drv->pwrite) {
            ret = write_zero_buffer(node, offset, len);
        } else {
            ret = error_set(ENOTSUP, "%s: the %s driver cannot write",
                            node->filename, node->drv->name);
        }
    }
    return ret < 0 ? fail_int(ret) : 0;
}

int qimg_discard(struct qimg_image *img, uint64_t offset, uint64_t len)
{
    struct qimg_node *node = img->top;
    int ret = check_request(node, offset, len, true);
    /* Discard is advisory: a driver without it simply keeps the data. */
    if (ret == 0 && len > 0 && node->drv->pdiscard) {
        ret = driver_result(node->drv->pdiscard(node, offset, len));
    }
    return ret < 0 ? fail_int(ret) : 0;
}

/* A compressed write request: the checks every entry point makes. */
static int check_compressed(struct qimg_node *node, uint64_t offset,
                            size_t len)
{
    int ret = check_request(node, offset, len, true);
    if (ret == 0 && !node->drv->pwrite_compressed) {
        ret = error_set(ENOTSUP, "%s: the %s format has no compressed "
                        "clusters", node->filename, node->drv->name);
    }
    return ret;
}

int qimg_pwrite_compressed(struct qimg_image *img, const void *buf,
                           size_t len, uint64_t offset)
{
    struct qimg_node *node = img->top;
    int ret = check_compressed(node, offset, len);
    if (ret == 0 && len == 0) {
        ret = node->drv->compressed_end
                  ? driver_result(node->drv->compressed_end(node))
                  : 0;
    } else if (ret == 0) {
        ret = driver_result(
            node->drv->pwrite_compressed(node, buf, len, offset));
    }
    return ret < 0 ? fail_int(ret) : 0;
}

int64_t qimg_compress_cluster(struct qimg_image *img, const void *buf,
                              size_t len, uint64_t offset, void *out,
                              size_t cap)
{
    struct qimg_node *node = img->top;
    int64_t ret = check_compressed(node, offset, len);
    if (ret == 0 && !node->drv->compress_cluster) {
        ret = error_set(ENOTSUP, "%s: the %s format compresses only in "
                        "whole writes", node->filename, node->drv->name);
    }
    if (ret == 0 && len > 0) {
        ret = node->drv->compress_cluster(node, buf, len, offset, out, cap);
        if (ret < 0) {
            ret = driver_result((int)ret);
        }
    }
    return ret < 0 ? fail_int((int)ret) : ret;
}

int qimg_set_compression(struct qimg_image *img, int level, unsigned flags)
{
    struct qimg_node *node = img->top;
    int ret = 0;
    if (!node->drv->set_compression) {
        ret = error_set(ENOTSUP, "%s: the %s format has no choice of "
                        "compression level", node->filename,
                        node->drv->name);
    } else {
        ret = driver_result(node->drv->set_compression(node, level, flags));
    }
    return ret < 0 ? fail_int(ret) : 0;
}

int qimg_pwrite_compressed_data(struct qimg_image *img, const void *data,
                                size_t n, size_t len, uint64_t offset)
{
    struct qimg_node *node = img->top;
    int ret = check_compressed(node, offset, len);
    if (ret == 0 && (n == 0 || len == 0)) {
        ret = error_set(EINVAL, "%s: empty compressed write",
                        node->filename);
    }
    if (ret == 0) {
        ret = driver_result(
            node->drv->pwrite_precompressed(node, data, n, len, offset));
    }
    return ret < 0 ? fail_int(ret) : 0;
}

/*
 * The largest image size QEMU's block layer accepts: INT64_MAX rounded
 * down to its largest alignment (1 GiB), BDRV_MAX_LENGTH.
 */
#define RESIZE_MAX_LENGTH (INT64_MAX & ~(((int64_t)1 << 30) - 1))

/*
 * Zero the area a resize added when the backing file is long enough to
 * show through it: the guest must see zeros there, as in QEMU, which
 * asks the format for a zero write of the new area in that case.
 */
static int resize_zero_new_area(struct qimg_node *node, uint64_t old_size)
{
    if (!node->backing || node->backing->size <= old_size ||
        node->size <= old_size) {
        return 0;
    }
    uint64_t len = node->size - old_size;
    int ret;
    if (node->drv->pwrite_zeroes) {
        ret = driver_result(node->drv->pwrite_zeroes(node, old_size, len, 0));
    } else if (node->drv->pwrite) {
        ret = write_zero_buffer(node, old_size, len);
    } else {
        ret = error_set(ENOTSUP, "%s: the %s driver cannot write",
                        node->filename, node->drv->name);
    }
    return ret;
}

int qimg_resize(struct qimg_image *img, uint64_t size, const char *prealloc,
                unsigned flags)
{
    struct qimg_node *node = img->top;
    uint64_t old_size = node->size;
    int ret = 0;
    if (size < old_size && !(flags & QIMG_RESIZE_SHRINK)) {
        ret = error_set(EINVAL, "%s: shrinking was not asked for",
                        node->filename);
    } else if (size > (uint64_t)RESIZE_MAX_LENGTH) {
        /* QEMU's words (bdrv_check_request). */
        ret = error_set(EFBIG, "offset(%llu) exceeds maximum(%lld)",
                        (unsigned long long)size,
                        (long long)RESIZE_MAX_LENGTH);
    } else if (!node->writable) {
        ret = error_set(EACCES, "Image is read-only");
    } else if (!node->drv->truncate) {
        ret = error_set(ENOTSUP, "Image format driver does not support "
                        "resize");
    } else {
        ret = driver_result(
            node->drv->truncate(node, size, prealloc ? prealloc : "off"));
        if (ret == 0) {
            ret = resize_zero_new_area(node, old_size);
        }
    }
    return ret < 0 ? fail_int(ret) : 0;
}

int qimg_flush(struct qimg_image *img)
{
    int ret = node_flush(img->top);
    return ret < 0 ? fail_int(ret) : 0;
}

int qimg_block_status(struct qimg_image *img, uint64_t offset, uint64_t len,
                      struct qimg_extent *ext)
{
    struct qimg_node *node = img->top;
    int ret = check_request(node, offset, len, false);
    if (ret == 0 && len == 0) {
        ret = error_set(EINVAL, "%s: block status of an empty range",
                        node->filename);
    }
    if (ret == 0) {
        ret = chain_block_status(node, offset, len, ext);
    }
    return ret < 0 ? fail_int(ret) : 0;
}
