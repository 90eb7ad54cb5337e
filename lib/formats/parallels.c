/*
 * parallels: Parallels expanding disk images ("WithoutFreeSpace" and
 * "WithouFreSpacExt" headers), read only for now, with QEMU 7.2's open
 * checks and messages.
 *
 * Layout (little-endian): a 64-byte header (magic, version 2, heads,
 * cylinders, tracks = sectors per cluster, BAT entry count, size in
 * sectors, in-use mark, data offset, flags, extension offset), then the
 * BAT of 32-bit entries at offset 64.  Entry i maps guest cluster i: 0 is
 * unallocated (reads from the backing file, or zero), otherwise the host
 * sector is entry * multiplier, where the multiplier is 1 for the old
 * magic (entries count sectors) and tracks for the "Ext" magic (entries
 * count clusters).  The old magic keeps only the low 32 bits of the size.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "driver.h"
#include "util/checked.h"
#include "util/endian.h"

#define PRL_SECTOR 512u
#define PRL_HEADER_SIZE 64u
#define PRL_MAGIC "WithoutFreeSpace"
#define PRL_MAGIC_EXT "WithouFreSpacExt"
#define PRL_MAGIC_LEN 16
#define PRL_VERSION 2u
/* QEMU's limits: the cluster (tracks) and the BAT. */
#define PRL_TRACKS_MAX (0x7fffffffu / 513)
#define PRL_BAT_MAX (0x7fffffffu / 4)
/*
 * A BAT past the end of the file reads as zeros (as in QEMU); qimg
 * follows for BATs up to this size and refuses larger ones, so that a
 * tiny hostile file cannot make it allocate gigabytes.
 */
#define PRL_BAT_PAST_EOF_MAX (4u << 20)

#define PRL_OFF_VERSION 16
#define PRL_OFF_TRACKS 28
#define PRL_OFF_BAT_ENTRIES 32
#define PRL_OFF_NB_SECTORS 36

struct prl_state {
    uint32_t *bat;
    uint32_t bat_size;
    uint32_t tracks;
    uint64_t multiplier;
    uint64_t cluster_bytes;
};

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

static void prl_close(struct qimg_node *node)
{
    struct prl_state *s = node->opaque;
    if (s) {
        free(s->bat);
        free(s);
    }
    node->opaque = NULL;
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

static int prl_open(struct qimg_node *node, unsigned flags)
{
    if (flags & QIMG_OPEN_RDWR) {
        return error_set(ENOTSUP, "parallels images are read-only in qimg "
                         "(writes are not implemented yet)");
    }
    struct prl_state *s = calloc(1, sizeof(*s));
    if (!s) {
        return error_set(ENOMEM, "Out of memory");
    }
    node->opaque = s;
    uint8_t b[PRL_HEADER_SIZE];
    /* A short file reads as zeros past its end, as in QEMU. */
    int ret = io_pread(node->file, b, sizeof(b), 0);
    if (ret < 0) {
        ret = error_prefix(-ret, "Could not read the Parallels header");
    } else {
        ret = prl_parse(node, s, b);
    }
    if (ret < 0) {
        prl_close(node);
    }
    return ret;
}

/*
 * The host byte offset of guest cluster index's start: 0 when it is
 * unallocated, -errno when the entry points past 2^63.
 */
static int64_t prl_cluster_host(struct qimg_node *node, uint64_t index)
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
    .block_status = prl_block_status,
    .get_info = prl_get_info,
};
