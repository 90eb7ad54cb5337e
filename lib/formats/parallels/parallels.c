/*
 * parallels: Parallels expanding disk images ("WithoutFreeSpace" and
 * "WithouFreSpacExt" headers): open with QEMU 7.2's checks and messages,
 * reads and guest writes (layout in parallels.h).
 *
 * Writes as QEMU's: a read-write open refuses an image whose in-use mark
 * is set (unless for a check) and sets the mark; a new cluster goes at
 * data_end, its data written before its BAT entry; close truncates the
 * file to data_end and clears the mark.  The old magic keeps only the low
 * 32 bits of the size.  A damaged BAT entry can name a cluster on the
 * header or the BAT itself: QEMU then writes guest data over them, qimg
 * refuses the write.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "driver.h"
#include "parallels.h"
#include "util/checked.h"
#include "util/endian.h"

/*
 * A BAT past the end of the file reads as zeros (as in QEMU); qimg
 * follows for BATs up to this size and refuses larger ones, so that a
 * tiny hostile file cannot make it allocate gigabytes.
 */
#define PRL_BAT_PAST_EOF_MAX (4u << 20)

static int prl_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    /* QEMU's probe buffer is zero-filled past the end of the file. */
    uint8_t b[PRL_HEADER_SIZE] = {0};
    memcpy(b, buf, min_u64(len, sizeof(b)));
    buf = b;
    if (memcmp(buf, PRL_MAGIC, PRL_MAGIC_LEN) != 0 &&
        memcmp(buf, PRL_MAGIC_EXT, PRL_MAGIC_LEN) != 0) {
        return 0;
    }
    return load_le32(buf + PRL_OFF_VERSION) == PRL_VERSION ? 100 : 0;
}

static void prl_free(struct qimg_node *node)
{
    struct prl_state *s = node->opaque;
    if (s) {
        free(s->bat);
        free(s);
    }
    node->opaque = NULL;
}

/*
 * Write the header with the in-use mark set or cleared (QEMU's
 * PRL_INUSE_MAGIC while open read-write, 0 once closed).
 */
static int prl_write_inuse(struct qimg_node *node, bool inuse)
{
    struct prl_state *s = node->opaque;
    store_le32(s->header + PRL_OFF_INUSE, inuse ? PRL_INUSE_MAGIC : 0);
    return io_pwrite(node->file, s->header, PRL_HEADER_SIZE, 0);
}

/*
 * A read-write image is finished as QEMU's close does: the file cut (or
 * grown) to data_end, then the in-use mark cleared.  Close cannot fail.
 * As QEMU, the mark is cleared even when the truncation fails (data_end
 * past what the file system allows, from a damaged BAT entry).
 */
static void prl_close(struct qimg_node *node)
{
    struct prl_state *s = node->opaque;
    if (s && s->rdwr) {
        (void)io_truncate(node->file, s->data_end);
        if (node_sync(node, node->file) == 0 &&
            prl_write_inuse(node, false) == 0) {
            (void)node_sync(node, node->file);
        }
    }
    prl_free(node);
}

/* QEMU's open-time checks, in its order and with its words. */
static int prl_parse(struct qimg_node *node, struct prl_state *s,
                     const uint8_t *b)
{
    uint64_t sectors = load_le64(b + PRL_OFF_NB_SECTORS);
    if (load_le32(b + PRL_OFF_VERSION) != PRL_VERSION) {
        return error_set(EINVAL, "Image not in Parallels format");
    }
    uint32_t tracks = load_le32(b + PRL_OFF_TRACKS);
    if (memcmp(b, PRL_MAGIC, PRL_MAGIC_LEN) == 0) {
        s->multiplier = 1;
        sectors &= 0xffffffffu;
    } else if (memcmp(b, PRL_MAGIC_EXT, PRL_MAGIC_LEN) == 0) {
        s->multiplier = tracks;
    } else {
        return error_set(EINVAL, "Image not in Parallels format");
    }
    s->tracks = tracks;
    if (tracks == 0) {
        return error_set(EINVAL, "Invalid image: Zero sectors per track");
    }
    if (tracks > PRL_TRACKS_MAX) {
        return error_set(EFBIG, "Invalid image: Too big cluster");
    }
    s->cluster_bytes = (uint64_t)tracks * PRL_SECTOR;
    s->bat_size = load_le32(b + PRL_OFF_BAT_ENTRIES);
    if (s->bat_size > PRL_BAT_MAX) {
        return error_set(EFBIG, "Catalog too large");
    }
    /* 2^64 / 512 sectors at most: the size in bytes fits when masked. */
    if (sectors > UINT64_MAX / PRL_SECTOR) {
        return error_set(EFBIG, "Invalid image: size too large");
    }
    uint64_t bytes = (uint64_t)s->bat_size * 4;
    /*
     * QEMU reads header and BAT in one request, rounded up to the memory
     * alignment; past its largest request (2 GiB - 512) the read fails.
     */
    if (((PRL_HEADER_SIZE + bytes + 4095) & ~(uint64_t)4095) > 0x7ffffe00u) {
        return error_set(EIO, "Could not open '%s': Input/output error",
                         node->filename);
    }
    int64_t file_size = io_get_size(node->file);
    if (file_size < 0) {
        return (int)file_size;
    }
    if (PRL_HEADER_SIZE + bytes > (uint64_t)file_size &&
        bytes > PRL_BAT_PAST_EOF_MAX) {
        return error_set(EINVAL, "Parallels BAT (%llu bytes) lies beyond "
                         "the end of the file", (unsigned long long)bytes);
    }
    if (bytes > 0) {
        uint8_t *raw = malloc((size_t)bytes);
        s->bat = malloc((size_t)bytes);
        if (!raw || !s->bat) {
            free(raw);
            return error_set(ENOMEM, "Could not allocate the BAT");
        }
        int ret = io_pread(node->file, raw, (size_t)bytes, PRL_HEADER_SIZE);
        if (ret < 0) {
            free(raw);
            return error_prefix(-ret, "Could not read the Parallels BAT");
        }
        for (uint32_t i = 0; i < s->bat_size; i++) {
            s->bat[i] = load_le32(raw + (size_t)i * 4);
        }
        free(raw);
    }
    node->size = sectors * PRL_SECTOR;
    return 0;
}

/*
 * Where the next cluster goes: past the data offset, the header and BAT,
 * and every cluster an entry names (also ones past the end of the file,
 * as QEMU's), rounded up to a whole cluster for the "Ext" magic whose
 * entries count clusters.
 */
static int prl_find_data_end(struct qimg_node *node, struct prl_state *s)
{
    uint64_t end = (uint64_t)load_le32(s->header + PRL_OFF_DATA_OFF) *
                   PRL_SECTOR;
    uint64_t bat_end = PRL_HEADER_SIZE + (uint64_t)s->bat_size * 4;
    end = max_u64(end, bat_end);
    for (uint32_t i = 0; i < s->bat_size; i++) {
        int64_t host = prl_cluster_host(node, i);
        if (host < 0) {
            return (int)host;
        }
        if (host > 0) {
            end = max_u64(end, (uint64_t)host + s->cluster_bytes);
        }
    }
    uint64_t unit = s->multiplier * PRL_SECTOR;
    end = div_round_up_u64(end, unit) * unit;
    s->data_end = end;
    return 0;
}

static int prl_open(struct qimg_node *node, unsigned flags)
{
    struct prl_state *s = calloc(1, sizeof(*s));
    if (!s) {
        return error_set(ENOMEM, "Out of memory");
    }
    node->opaque = s;
    /* A short file reads as zeros past its end, as in QEMU. */
    int ret = io_pread(node->file, s->header, PRL_HEADER_SIZE, 0);
    if (ret < 0) {
        ret = error_prefix(-ret, "Could not read the Parallels header");
    } else {
        ret = prl_parse(node, s, s->header);
    }
    /*
     * [QEMU] the runtime options prealloc-mode (falloc, truncate) and
     * prealloc-size only change how the file grows while it is written,
     * never what it holds once closed, so they are checked and left.
     */
    if (ret == 0) {
        bool given;
        uint64_t size;
        ret = node_opt_take_size(node, "prealloc-size", &given, &size);
    }
    const char *mode = ret == 0 ? node_opt_take(node, "prealloc-mode") : NULL;
    if (mode && strcmp(mode, "falloc") != 0 && strcmp(mode, "truncate") != 0) {
        ret = error_set(EINVAL, "invalid parameter value: %s", mode);
    }
    /* Only QEMU's mark counts: other values are ignored, as QEMU does. */
    s->inuse_at_open = load_le32(s->header + PRL_OFF_INUSE) ==
                       PRL_INUSE_MAGIC;
    if (ret == 0 && (flags & QIMG_OPEN_RDWR)) {
        if (s->inuse_at_open && !(flags & QIMG_OPEN_CHECK)) {
            ret = error_set(EBUSY, "parallels: Image was not closed "
                            "correctly; cannot be opened read/write");
        } else {
            ret = prl_find_data_end(node, s);
        }
        /* The mark is on disk before any data changes. */
        if (ret == 0) {
            ret = prl_write_inuse(node, true);
        }
        if (ret == 0) {
            ret = node_sync(node, node->file);
        }
        if (ret == 0) {
            s->rdwr = true;
        }
    }
    if (ret < 0) {
        prl_free(node);
    }
    return ret;
}

/*
 * The host byte offset of guest cluster index's start: 0 when it is
 * unallocated, -errno when the entry points past 2^63.
 */
int64_t prl_cluster_host(struct qimg_node *node, uint64_t index)
{
    struct prl_state *s = node->opaque;
    if (index >= s->bat_size || s->bat[index] == 0) {
        return 0;
    }
    uint64_t sector, host;
    if (mul_overflow_u64(s->bat[index], s->multiplier, &sector) ||
        mul_overflow_u64(sector, PRL_SECTOR, &host) ||
        host > INT64_MAX - s->cluster_bytes) {
        return error_set(EIO, "%s: Parallels BAT entry %llu lies beyond "
                         "any file", node->filename,
                         (unsigned long long)index);
    }
    return (int64_t)host;
}

static int prl_pread(struct qimg_node *node, void *buf, size_t len,
                     uint64_t off)
{
    struct prl_state *s = node->opaque;
    uint8_t *p = buf;
    while (len > 0) {
        uint64_t index = off / s->cluster_bytes;
        uint64_t in_cluster = off % s->cluster_bytes;
        size_t n = (size_t)min_u64(len, s->cluster_bytes - in_cluster);
        int64_t host = prl_cluster_host(node, index);
        int ret;
        if (host < 0) {
            return (int)host;
        }
        if (host == 0) {
            ret = node_read_below(node, p, n, off);
        } else {
            ret = io_pread(node->file, p, n, (uint64_t)host + in_cluster);
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

int prl_write_bat_entry(struct qimg_node *node, uint64_t index)
{
    struct prl_state *s = node->opaque;
    uint8_t e[4];
    store_le32(e, s->bat[index]);
    return io_pwrite(node->file, e, sizeof(e), PRL_HEADER_SIZE + index * 4);
}

/*
 * Allocate guest cluster index at data_end and write n bytes at in_cluster
 * into it; the rest of the cluster comes from the layer below (zeros past
 * the disk's end).  The data is written before the BAT entry, so that a
 * crash leaves at worst a leaked cluster, never an entry naming garbage.
 */
static int prl_allocate(struct qimg_node *node, uint64_t index,
                        uint64_t in_cluster, const uint8_t *buf, size_t n)
{
    struct prl_state *s = node->opaque;
    if (index >= s->bat_size) {
        return error_set(EIO, "%s: guest cluster %llu lies past the "
                         "Parallels BAT", node->filename,
                         (unsigned long long)index);
    }
    uint64_t host = s->data_end;
    uint64_t entry = host / PRL_SECTOR / s->multiplier;
    if (entry == 0 || entry > UINT32_MAX ||
        host > INT64_MAX - s->cluster_bytes) {
        return error_set(ENOSPC, "%s: no room for another Parallels cluster",
                         node->filename);
    }
    int ret;
    if (n == s->cluster_bytes) {
        ret = io_pwrite(node->file, buf, n, host);
    } else {
        ret = node_fill_new_cluster(node, node->file, host,
                                    index * s->cluster_bytes,
                                    s->cluster_bytes, in_cluster, buf, n,
                                    node->size);
    }
    if (ret < 0) {
        return ret;
    }
    s->bat[index] = (uint32_t)entry;
    s->data_end = host + s->cluster_bytes;
    return prl_write_bat_entry(node, index);
}

/* Guest data for [host, host + n) must not land on the header or BAT. */
static int prl_check_data_write(struct qimg_node *node,
                                const struct prl_state *s, uint64_t host)
{
    if (host < PRL_HEADER_SIZE + (uint64_t)s->bat_size * 4) {
        return error_set(EIO, "%s: Parallels image is corrupt: a write at "
                         "offset %llu would overwrite the header or the BAT",
                         node->filename, (unsigned long long)host);
    }
    return 0;
}

static int prl_pwrite(struct qimg_node *node, const void *buf, size_t len,
                      uint64_t off)
{
    struct prl_state *s = node->opaque;
    const uint8_t *p = buf;
    while (len > 0) {
        uint64_t index = off / s->cluster_bytes;
        uint64_t in_cluster = off % s->cluster_bytes;
        size_t n = (size_t)min_u64(len, s->cluster_bytes - in_cluster);
        int64_t host = prl_cluster_host(node, index);
        int ret;
        if (host < 0) {
            return (int)host;
        }
        if (host == 0) {
            ret = prl_allocate(node, index, in_cluster, p, n);
        } else {
            ret = prl_check_data_write(node, s, (uint64_t)host + in_cluster);
            if (ret == 0) {
                ret = io_pwrite(node->file, p, n, (uint64_t)host + in_cluster);
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

static int prl_flush(struct qimg_node *node)
{
    return node_sync(node, node->file);
}

/*
 * One run per allocated cluster: data at its host offset.  Unallocated
 * clusters are one run up to the next allocated one, and the disk past
 * the BAT (which a header may make terabytes long) is a single run.
 */
static int prl_block_status(struct qimg_node *node, uint64_t off,
                            uint64_t len, uint64_t *pnum, uint64_t *host_off)
{
    struct prl_state *s = node->opaque;
    uint64_t index = off / s->cluster_bytes;
    uint64_t in_cluster = off % s->cluster_bytes;
    *pnum = min_u64(len, s->cluster_bytes - in_cluster);
    int64_t host = prl_cluster_host(node, index);
    if (host < 0) {
        return (int)host;
    }
    if (host == 0) {
        /* Invariant: clusters index..index + k are unallocated. */
        while (*pnum < len &&
               (index + 1 >= s->bat_size || s->bat[index + 1] == 0)) {
            if (index + 1 >= s->bat_size) {
                *pnum = len;
                break;
            }
            index++;
            *pnum = min_u64(len, *pnum + s->cluster_bytes);
        }
        return 0;
    }
    *host_off = (uint64_t)host + in_cluster;
    return BS_DATA | BS_OFFSET_VALID;
}

/* QEMU's parallels driver has no get_info: no dirty-flag in info. */
static int prl_get_info(struct qimg_node *node, struct qimg_image_info *info)
{
    (void)node;
    info->no_disk_info = true;
    return 0;
}

const struct qimg_format_ops format_parallels = {
    .name = "parallels",
    .probe = prl_probe,
    .open = prl_open,
    .close = prl_close,
    .pread = prl_pread,
    .pwrite = prl_pwrite,
    .flush = prl_flush,
    .block_status = prl_block_status,
    .get_info = prl_get_info,
    .check = prl_check,
    .create_opts = prl_create_opts,
    .create = prl_create,
};
