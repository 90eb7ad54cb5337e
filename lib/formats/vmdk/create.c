/*
 * Creating vmdk images, laid out as qemu-img 7.2 lays them out (the same
 * bytes but for the random CID): monolithicSparse and streamOptimized
 * (one hosted sparse file with the descriptor embedded at sector 1),
 * monolithicFlat, twoGbMaxExtentSparse and twoGbMaxExtentFlat (a
 * descriptor file and extents named after it, 2 GiB each when split).
 *
 * A new sparse extent: header, descriptor area (20 sectors), redundant
 * grain directory and its grain tables, grain directory and its tables,
 * all preallocated, then grains from the next multiple of 64 KiB.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "core/error.h"
#include "formats/vmdk/vmdk.h"
#include "util/checked.h"
#include "util/endian.h"

#define VMDK_GRANULARITY 128u /* sectors: 64 KiB grains */
#define VMDK_NEW_GT_ENTRIES 512u
#define VMDK_SPLIT_SIZE (2ull << 30) /* twoGbMaxExtent* extents */

const struct qimg_opt_desc vmdk_create_opts[] = {
    {"size", QIMG_OPT_SIZE, "Virtual disk size", NULL},
    {"adapter_type", QIMG_OPT_STRING,
     "Virtual adapter type, can be one of "
     "ide (default), lsilogic, buslogic or legacyESX",
     NULL},
    {"backing_file", QIMG_OPT_STRING, "File name of a base image", NULL},
    {"backing_fmt", QIMG_OPT_STRING, "Must be 'vmdk' if present", NULL},
    {"compat6", QIMG_OPT_BOOL, "VMDK version 6 image", "off"},
    {"hwversion", QIMG_OPT_STRING, "VMDK hardware version", "undefined"},
    {"toolsversion", QIMG_OPT_STRING, "VMware guest tools version", NULL},
    {"subformat", QIMG_OPT_STRING,
     "VMDK flat extent format, can be one of "
     "{monolithicSparse (default) | monolithicFlat | twoGbMaxExtentSparse | "
     "twoGbMaxExtentFlat | streamOptimized} ",
     NULL},
    {"zeroed_grain", QIMG_OPT_BOOL,
     "Enable efficient zero writes using the "
     "zeroed-grain GTE feature",
     NULL},
    {NULL, 0, NULL, NULL},
};

/* A copy of opts with size set to size and, unless keep, no prealloc. */
static struct qimg_opts *file_opts(const struct qimg_opts *opts, uint64_t size,
                                   bool keep)
{
    struct qimg_opts *o = qimg_opts_new();
    if (!o) {
        return NULL;
    }
    for (size_t i = 0; i < qimg_opts_count(opts); i++) {
        const char *k = qimg_opts_key(opts, i);
        if (strcmp(k, "nocow") == 0 || strcmp(k, "extent_size_hint") == 0 ||
            (keep && strcmp(k, "preallocation") == 0)) {
            if (qimg_opts_set(o, k, qimg_opts_get(opts, k)) < 0) {
                qimg_opts_free(o);
                return NULL;
            }
        }
    }
    char n[32];
    snprintf(n, sizeof(n), "%llu", (unsigned long long)size);
    if (qimg_opts_set(o, "size", n) < 0) {
        qimg_opts_free(o);
        return NULL;
    }
    return o;
}

static int new_file(const char *path, const struct qimg_opts *opts,
                    uint64_t size, bool prealloc, struct qimg_io **out)
{
    struct qimg_opts *o = file_opts(opts, size, prealloc);
    if (!o) {
        return error_set(ENOMEM, "Out of memory");
    }
    int ret = create_file(path, o, out);
    qimg_opts_free(o);
    return ret;
}

/* The sparse extent's layout for capacity sectors (QEMU's). */
static void sparse_layout(uint64_t capacity, bool compress, bool zeroed,
                          struct vmdk4_header *h, uint64_t *gt_count,
                          uint64_t *gd_sectors)
{
    memset(h, 0, sizeof(*h));
    h->version = compress ? 3 : zeroed ? 2 : 1;
    h->flags = VMDK4_FLAG_RGD | VMDK4_FLAG_NL_DETECT |
               (compress ? VMDK4_FLAG_COMPRESS | VMDK4_FLAG_MARKER : 0) |
               (zeroed ? VMDK4_FLAG_ZERO_GRAIN : 0);
    h->compress_algorithm = compress ? VMDK4_COMPRESSION_DEFLATE : 0;
    h->capacity = capacity;
    h->granularity = VMDK_GRANULARITY;
    h->num_gtes_per_gt = VMDK_NEW_GT_ENTRIES;
    uint64_t grains = div_round_up_u64(capacity, VMDK_GRANULARITY);
    uint64_t gt_size = VMDK_NEW_GT_ENTRIES * 4 / VMDK_SECTOR;
    *gt_count = div_round_up_u64(grains, VMDK_NEW_GT_ENTRIES);
    *gd_sectors = div_round_up_u64(*gt_count * 4, VMDK_SECTOR);
    h->desc_offset = 1;
    h->desc_size = 20;
    h->rgd_offset = h->desc_offset + h->desc_size;
    h->gd_offset = h->rgd_offset + *gd_sectors + gt_size * *gt_count;
    h->grain_offset =
        div_round_up_u64(h->gd_offset + *gd_sectors + gt_size * *gt_count,
                         VMDK_GRANULARITY) *
        VMDK_GRANULARITY;
    memcpy(h->check_bytes, "\n \r\n", 4);
}

/* Write a new sparse extent of capacity sectors into io (empty). */
static int write_sparse(struct qimg_io *io, uint64_t capacity, bool compress,
                        bool zeroed)
{
    struct vmdk4_header h;
    uint64_t gt_count, gd_sectors;
    sparse_layout(capacity, compress, zeroed, &h, &gt_count, &gd_sectors);
    uint8_t hb[VMDK4_HEADER_SIZE];
    vmdk4_header_encode(&h, hb);
    int ret = io_pwrite(io, hb, sizeof(hb), 0);
    if (ret == 0) {
        ret = io_truncate(io, h.grain_offset * VMDK_SECTOR);
    }
    if (ret < 0 || gd_sectors == 0) {
        return ret;
    }
    size_t gd_bytes = (size_t)(gd_sectors * VMDK_SECTOR);
    uint8_t *gd = calloc(1, gd_bytes);
    if (!gd) {
        return error_set(ENOMEM, "Out of memory");
    }
    uint64_t gt_size = VMDK_NEW_GT_ENTRIES * 4 / VMDK_SECTOR;
    uint64_t dirs[2] = {h.rgd_offset, h.gd_offset};
    for (int d = 0; d < 2 && ret == 0; d++) {
        uint64_t t = dirs[d] + gd_sectors;
        for (uint64_t i = 0; i < gt_count; i++, t += gt_size) {
            store_le32(gd + i * 4, (uint32_t)t);
        }
        ret = io_pwrite(io, gd, gd_bytes, dirs[d] * VMDK_SECTOR);
    }
    free(gd);
    return ret;
}

/* dir/ + base without its last ".ext", and ".ext" (QEMU's decomposition). */
static int split_name(const char *filename, char **dir, char **stem, char **ext)
{
    const char *slash = strrchr(filename, '/');
    const char *base = slash ? slash + 1 : filename;
    const char *dot = strrchr(base, '.');
    if (!dot) {
        dot = base + strlen(base);
    }
    *dir = strndup(filename, (size_t)(base - filename));
    *stem = strndup(base, (size_t)(dot - base));
    *ext = strdup(dot);
    if (!*dir || !*stem || !*ext) {
        free(*dir);
        free(*stem);
        free(*ext);
        return error_set(ENOMEM, "Out of memory");
    }
    return 0;
}

/* Append printf output to a growing string; -ENOMEM on failure. */
__attribute__((format(printf, 2, 3))) static int str_add(char **s,
                                                         const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *add = NULL;
    int n = vasprintf(&add, fmt, ap);
    va_end(ap);
    if (n < 0) {
        return error_set(ENOMEM, "Out of memory");
    }
    size_t old = *s ? strlen(*s) : 0;
    char *t = realloc(*s, old + (size_t)n + 1);
    if (!t) {
        free(add);
        return error_set(ENOMEM, "Out of memory");
    }
    memcpy(t + old, add, (size_t)n + 1);
    free(add);
    *s = t;
    return 0;
}

static bool one_of(const char *v, const char *const *list)
{
    for (; *list; list++) {
        if (strcmp(v, *list) == 0) {
            return true;
        }
    }
    return false;
}

/* The backing file's CID (it must be a vmdk image). */
static int backing_cid(const char *filename, const char *backing, uint32_t *cid)
{
    char *full = NULL;
    if (backing[0] == '/') {
        full = strdup(backing);
    } else {
        const char *slash = strrchr(filename, '/');
        size_t dl = slash ? (size_t)(slash + 1 - filename) : 0;
        if (asprintf(&full, "%.*s%s", (int)dl, filename, backing) < 0) {
            full = NULL;
        }
    }
    if (!full) {
        return error_set(ENOMEM, "Out of memory");
    }
    struct qimg_image *img =
        qimg_open(full, NULL, QIMG_OPEN_NO_BACKING | QIMG_OPEN_NO_IO);
    free(full);
    if (!img) {
        return -qimg_get_errno();
    }
    int ret = 0;
    if (strcmp(qimg_get_format(img), "vmdk") != 0) {
        ret = error_set(EINVAL,
                        "Invalid backing file format: %s. Must be "
                        "vmdk.",
                        qimg_get_format(img));
    } else {
        struct qimg_image_info *info = qimg_get_info(img);
        const struct qimg_value *data =
            info && info->format_specific
                ? qimg_value_dict_get(info->format_specific, "data")
                : NULL;
        const struct qimg_value *c =
            data ? qimg_value_dict_get(data, "cid") : NULL;
        if (!c) {
            ret = error_set(EINVAL, "Failed to read parent CID");
        } else {
            *cid = (uint32_t)qimg_value_get_uint(c);
        }
        qimg_image_info_free(info);
    }
    qimg_close(img);
    return ret;
}

static int get_bool(const struct qimg_opts *opts, const char *key, bool *out)
{
    const char *v = qimg_opts_get(opts, key);
    *out = false;
    if (v && !opt_parse_bool(v, out)) {
        return error_set(EINVAL, "Parameter '%s' expects 'on' or 'off'", key);
    }
    return 0;
}

int vmdk_create(const char *filename, const struct qimg_opts *opts)
{
    static const char *const adapters[] = {"ide", "buslogic", "lsilogic",
                                           "legacyESX", NULL};
    static const char *const subformats[] = {
        "monolithicSparse",   "monolithicFlat",  "twoGbMaxExtentSparse",
        "twoGbMaxExtentFlat", "streamOptimized", NULL};
    uint64_t size = 0;
    const char *size_str = qimg_opts_get(opts, "size");
    if (size_str && qimg_parse_size(size_str, 'B', &size) < 0) {
        return error_set(EINVAL, "Invalid size");
    }
    if (size > (uint64_t)INT64_MAX - 511) {
        return error_set(EFBIG, "Image size too large");
    }
    size = (size + 511) & ~(uint64_t)511;
    const char *adapter = qimg_opts_get(opts, "adapter_type");
    const char *backing = qimg_opts_get(opts, "backing_file");
    const char *backing_fmt = qimg_opts_get(opts, "backing_fmt");
    const char *hw = qimg_opts_get(opts, "hwversion");
    const char *tools = qimg_opts_get(opts, "toolsversion");
    const char *sub = qimg_opts_get(opts, "subformat");
    bool compat6, zeroed;
    int ret = get_bool(opts, "compat6", &compat6);
    if (ret == 0) {
        ret = get_bool(opts, "zeroed_grain", &zeroed);
    }
    if (ret < 0) {
        return ret;
    }
    if (!adapter) {
        adapter = "ide";
    } else if (!one_of(adapter, adapters)) {
        return error_set(EINVAL, "invalid parameter value: %s", adapter);
    }
    if (!sub) {
        sub = "monolithicSparse";
    } else if (!one_of(sub, subformats)) {
        return error_set(EINVAL, "invalid parameter value: %s", sub);
    }
    if (hw && strcmp(hw, "undefined") == 0) {
        hw = NULL;
    }
    if (compat6 && hw) {
        return error_set(EINVAL, "compat6 cannot be enabled with hwversion "
                                 "set");
    }
    if (!hw) {
        hw = compat6 ? "6" : "4";
    }
    if (!tools) {
        tools = "2147483647";
    }
    bool flat = strstr(sub, "Flat") != NULL;
    bool split = strncmp(sub, "twoGb", 5) == 0;
    bool compress = strcmp(sub, "streamOptimized") == 0;
    if (flat && backing) {
        return error_set(EINVAL, "Flat image can't have backing file");
    }
    if (backing_fmt && strcmp(backing_fmt, "vmdk") != 0) {
        return error_set(EINVAL, "Backing file format must be vmdk");
    }
    uint32_t parent_cid = 0xffffffff;
    if (backing) {
        ret = backing_cid(filename, backing, &parent_cid);
        if (ret < 0) {
            return ret;
        }
    }
    uint32_t cid;
    if (getrandom(&cid, sizeof(cid), 0) != (ssize_t)sizeof(cid)) {
        return error_set(EIO, "Could not get random bytes for the CID");
    }

    char *dir, *stem, *ext;
    ret = split_name(filename, &dir, &stem, &ext);
    if (ret < 0) {
        return ret;
    }
    char *lines = NULL;
    struct qimg_io *main_io = NULL;
    bool monolithic = !flat && !split;
    if (monolithic) {
        ret = new_file(filename, opts, 0, false, &main_io);
        if (ret == 0) {
            ret = write_sparse(main_io, size / VMDK_SECTOR, compress, zeroed);
        }
        if (ret == 0) {
            const char *slash = strrchr(filename, '/');
            ret = str_add(&lines, "RW %llu SPARSE \"%s\"\n",
                          (unsigned long long)(size / VMDK_SECTOR),
                          slash ? slash + 1 : filename);
        }
    } else {
        uint64_t done = 0;
        unsigned idx = 1;
        uint64_t chunk = split ? VMDK_SPLIT_SIZE : size;
        while (ret == 0 && done < size) {
            uint64_t cur = min_u64(size - done, chunk);
            char *name = NULL;
            if (!split) {
                ret = str_add(&name, "%s-flat%s", stem, ext);
            } else {
                ret = str_add(&name, "%s-%c%03u%s", stem, flat ? 'f' : 's', idx,
                              ext);
            }
            char *path = NULL;
            if (ret == 0) {
                ret = str_add(&path, "%s%s", dir, name);
            }
            struct qimg_io *io = NULL;
            if (ret == 0) {
                ret = new_file(path, opts, flat ? cur : 0, flat, &io);
            }
            if (ret == 0 && flat) {
                /*
                 * QEMU's file driver writes the first sector of a file
                 * grown from empty (to probe alignment); so do we, for
                 * the same allocation.
                 */
                static const uint8_t zeros[VMDK_SECTOR];
                ret = io_pwrite(io, zeros, sizeof(zeros), 0);
                int r2 = io_flush(io);
                io_close(io);
                ret = ret ? ret : r2;
            }
            if (ret == 0 && !flat) {
                ret = write_sparse(io, cur / VMDK_SECTOR, false, zeroed);
                int r2 = io_flush(io);
                io_close(io);
                ret = ret ? ret : r2;
            }
            if (ret == 0) {
                ret = str_add(&lines,
                              flat ? "RW %llu FLAT \"%s\" 0\n"
                                   : "RW %llu SPARSE \"%s\"\n",
                              (unsigned long long)(cur / VMDK_SECTOR), name);
            }
            free(name);
            free(path);
            done += cur;
            idx++;
        }
    }
    char *parent_line = NULL;
    if (ret == 0 && backing) {
        ret = str_add(&parent_line, "parentFileNameHint=\"%s\"", backing);
    }
    char *desc = NULL;
    if (ret == 0) {
        unsigned heads = strcmp(adapter, "ide") == 0 ? 16 : 255;
        ret = str_add(&desc,
                      "# Disk DescriptorFile\n"
                      "version=1\n"
                      "CID=%x\n"
                      "parentCID=%x\n"
                      "createType=\"%s\"\n"
                      "%s\n"
                      "# Extent description\n"
                      "%s\n"
                      "# The Disk Data Base\n"
                      "#DDB\n"
                      "\n"
                      "ddb.virtualHWVersion = \"%s\"\n"
                      "ddb.geometry.cylinders = \"%llu\"\n"
                      "ddb.geometry.heads = \"%u\"\n"
                      "ddb.geometry.sectors = \"63\"\n"
                      "ddb.adapterType = \"%s\"\n"
                      "ddb.toolsVersion = \"%s\"\n",
                      cid, parent_cid, sub, parent_line ? parent_line : "",
                      lines ? lines : "", hw,
                      (unsigned long long)(size / VMDK_SECTOR / heads / 63),
                      heads, adapter, tools);
    }
    if (ret == 0) {
        size_t dl = strlen(desc);
        if (monolithic) {
            if (dl > 20 * VMDK_SECTOR) {
                ret = error_set(EINVAL, "The descriptor does not fit in its "
                                        "20 sectors");
            } else {
                ret = io_pwrite(main_io, desc, dl, VMDK_SECTOR);
            }
        } else {
            ret = new_file(filename, opts, 0, false, &main_io);
            if (ret == 0) {
                ret = io_pwrite(main_io, desc, dl, 0);
            }
        }
    }
    if (main_io) {
        int r2 = io_flush(main_io);
        ret = ret ? ret : r2;
        io_close(main_io);
    }
    free(desc);
    free(parent_line);
    free(lines);
    free(dir);
    free(stem);
    free(ext);
    return ret;
}
