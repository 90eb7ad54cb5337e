/*
 * bochs: the Bochs "growing" redolog disk image, versions 1 and 2, read
 * only (QEMU's limits, checks and messages are kept).
 *
 * Layout (little-endian): a 512-byte header (magic "Bochs Virtual HD
 * Image", type "Redolog", subtype "Growing", version, header size, then
 * the catalog entry count, bitmap size, extent size and disk size; v2 has
 * a timestamp before the disk size), the catalog of 32-bit extent indexes
 * at offset header size, and the extents after it.  Extent n is its
 * bitmap (one bit per 512-byte sector, rounded up to sectors) followed
 * by its data sectors.  A catalog entry of 0xffffffff or a clear bitmap
 * bit reads as zero.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "driver.h"
#include "util/checked.h"
#include "util/endian.h"

#define BOCHS_SECTOR 512u
#define BOCHS_HEADER_SIZE 512u
#define BOCHS_MAGIC "Bochs Virtual HD Image"
#define BOCHS_TYPE "Redolog"
#define BOCHS_SUBTYPE "Growing"
#define BOCHS_VERSION_1 0x00010000u
#define BOCHS_VERSION_2 0x00020000u
#define BOCHS_UNALLOCATED 0xffffffffu
/* QEMU's limits: catalog entries (a 4 MiB catalog) and extent size. */
#define BOCHS_CATALOG_MAX (0x400000u / 4)
#define BOCHS_EXTENT_MAX 0x800000u
#define BOCHS_OFF_MAGIC 0
#define BOCHS_OFF_TYPE 32
#define BOCHS_OFF_SUBTYPE 48
#define BOCHS_OFF_VERSION 64
#define BOCHS_OFF_HEADER 68
#define BOCHS_OFF_CATALOG 72
#define BOCHS_OFF_BITMAP 76
#define BOCHS_OFF_EXTENT 80
#define BOCHS_OFF_DISK_V1 84
#define BOCHS_OFF_DISK_V2 88

struct bochs_state {
    uint32_t *catalog;
    uint32_t catalog_size;
    uint64_t data_offset;
    uint64_t bitmap_blocks; /* sectors of each extent's bitmap */
    uint64_t extent_blocks; /* sectors of each extent's data */
    uint32_t extent_size;
};

/* A NUL-terminated field equal to s (QEMU compares with strcmp). */
static bool field_is(const uint8_t *field, size_t width, const char *s)
{
    size_t n = strlen(s);
    return n < width && memcmp(field, s, n + 1) == 0;
}

static bool bochs_header_ok(const uint8_t *b)
{
    uint32_t version = load_le32(b + BOCHS_OFF_VERSION);
    return field_is(b + BOCHS_OFF_MAGIC, 32, BOCHS_MAGIC) &&
           field_is(b + BOCHS_OFF_TYPE, 16, BOCHS_TYPE) &&
           field_is(b + BOCHS_OFF_SUBTYPE, 16, BOCHS_SUBTYPE) &&
           (version == BOCHS_VERSION_1 || version == BOCHS_VERSION_2);
}

static int bochs_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    /* QEMU's probe buffer is zero-filled past the end of the file. */
    uint8_t b[BOCHS_OFF_VERSION + 4] = {0};
    memcpy(b, buf, min_u64(len, sizeof(b)));
    return bochs_header_ok(b) ? 100 : 0;
}

static void bochs_close(struct qimg_node *node)
{
    struct bochs_state *s = node->opaque;
    if (s) {
        free(s->catalog);
        free(s);
    }
    node->opaque = NULL;
}

/* QEMU's open-time checks, in its order and with its words. */
static int bochs_parse(struct qimg_node *node, struct bochs_state *s,
                       const uint8_t *b)
{
    if (!bochs_header_ok(b)) {
        return error_set(EINVAL, "Image not in Bochs format");
    }
    uint32_t version = load_le32(b + BOCHS_OFF_VERSION);
    uint64_t disk = load_le64(b + (version == BOCHS_VERSION_1
                                       ? BOCHS_OFF_DISK_V1
                                       : BOCHS_OFF_DISK_V2));
    uint64_t total_sectors = disk / BOCHS_SECTOR;
    s->catalog_size = load_le32(b + BOCHS_OFF_CATALOG);
    if (s->catalog_size > BOCHS_CATALOG_MAX) {
        return error_set(EFBIG, "Catalog size is too large");
    }
    uint32_t header = load_le32(b + BOCHS_OFF_HEADER);
    uint64_t cat_bytes = (uint64_t)s->catalog_size * 4;
    /*
     * 32 bits, as QEMU keeps it: a header size near 4 GiB wraps the data
     * area to the start of the file.
     */
    s->data_offset = (uint32_t)(header + (uint32_t)cat_bytes);
    if (cat_bytes > 0) {
        uint8_t *raw = malloc((size_t)cat_bytes);
        s->catalog = malloc((size_t)cat_bytes);
        if (!raw || !s->catalog) {
            free(raw);
            return error_set(ENOMEM, "Could not allocate the Bochs catalog");
        }
        int ret = io_pread(node->file, raw, (size_t)cat_bytes, header);
        if (ret < 0) {
            free(raw);
            return error_prefix(-ret, "Could not read the Bochs catalog");
        }
        for (uint32_t i = 0; i < s->catalog_size; i++) {
            s->catalog[i] = load_le32(raw + (size_t)i * 4);
        }
        free(raw);
    }
    /* As QEMU computes them: a size of 0 wraps to 2^32 - 1 first. */
    uint32_t bitmap = load_le32(b + BOCHS_OFF_BITMAP);
    s->extent_size = load_le32(b + BOCHS_OFF_EXTENT);
    s->bitmap_blocks = 1 + (uint64_t)((bitmap - 1u) / BOCHS_SECTOR);
    s->extent_blocks = 1 + (uint64_t)((s->extent_size - 1u) / BOCHS_SECTOR);
    if (s->extent_size < BOCHS_SECTOR) {
        return error_set(EINVAL, "Extent size must be at least 512");
    }
    if (s->extent_size & (s->extent_size - 1)) {
        return error_set(EINVAL, "Extent size %u is not a power of two",
                         s->extent_size);
    }
    if (s->extent_size > BOCHS_EXTENT_MAX) {
        return error_set(EINVAL, "Extent size %u is too large",
                         s->extent_size);
    }
    uint64_t needed = div_round_up_u64(total_sectors,
                                       s->extent_size / BOCHS_SECTOR);
    if (s->catalog_size < needed) {
        return error_set(EINVAL, "Catalog size is too small for this disk "
                         "size");
    }
    /* total_sectors <= 2^29 * 2^14 here, so the size cannot overflow. */
    node->size = total_sectors * BOCHS_SECTOR;
    return 0;
}

static int bochs_open(struct qimg_node *node, unsigned flags)
{
    if (flags & QIMG_OPEN_RDWR) {
        return error_set(EACCES, "Image is read-only");
    }
    struct bochs_state *s = calloc(1, sizeof(*s));
    if (!s) {
        return error_set(ENOMEM, "Out of memory");
    }
    node->opaque = s;
    uint8_t b[BOCHS_HEADER_SIZE];
    /* A short file reads as zeros past its end, as in QEMU. */
    int ret = io_pread(node->file, b, sizeof(b), 0);
    if (ret < 0) {
        ret = error_prefix(-ret, "Could not read the Bochs header");
    } else {
        ret = bochs_parse(node, s, b);
    }
    if (ret < 0) {
        bochs_close(node);
    }
    return ret;
}

/*
 * The host offset of the sector at guest offset off (a multiple of 512),
 * 0 when it reads as zero, or -errno.
 */
static int64_t bochs_sector_host(struct qimg_node *node, uint64_t off)
{
    struct bochs_state *s = node->opaque;
    uint64_t index = off / s->extent_size;
    uint64_t in_extent = (off % s->extent_size) / BOCHS_SECTOR;
    /* off < size <= catalog_size * extent_size. */
    uint32_t entry = s->catalog[index];
    if (entry == BOCHS_UNALLOCATED) {
        return 0;
    }
    /*
     * data_offset + 512 * entry * (extent_blocks + bitmap_blocks): up to
     * 2^66 with hostile fields, so checked.
     */
    uint64_t stride = (s->extent_blocks + s->bitmap_blocks) * BOCHS_SECTOR;
    uint64_t bitmap_off, data_off;
    if (mul_overflow_u64(stride, entry, &bitmap_off) ||
        add_overflow_u64(bitmap_off, s->data_offset, &bitmap_off) ||
        add_overflow_u64(bitmap_off,
                         (s->bitmap_blocks + in_extent) * BOCHS_SECTOR,
                         &data_off) ||
        data_off > INT64_MAX) {
        return error_set(EIO, "%s: Bochs extent %u lies beyond any file",
                         node->filename, entry);
    }
    uint8_t bits;
    int ret = io_pread(node->file, &bits, 1, bitmap_off + in_extent / 8);
    if (ret < 0) {
        return ret;
    }
    if (!((bits >> (in_extent % 8)) & 1)) {
        return 0;
    }
    return (int64_t)data_off;
}

static int bochs_pread(struct qimg_node *node, void *buf, size_t len,
                       uint64_t off)
{
    uint8_t *p = buf;
    /* The size is whole sectors; the core's requests may not be. */
    while (len > 0) {
        uint64_t sector = align_down_u64(off, BOCHS_SECTOR);
        uint64_t in_sector = off - sector;
        size_t n = (size_t)min_u64(len, BOCHS_SECTOR - in_sector);
        int64_t host = bochs_sector_host(node, sector);
        if (host < 0) {
            return (int)host;
        }
        if (host == 0) {
            memset(p, 0, n);
        } else {
            int ret = io_pread(node->file, p, n, (uint64_t)host + in_sector);
            if (ret < 0) {
                return ret;
            }
        }
        p += n;
        off += n;
        len -= n;
    }
    return 0;
}

/*
 * QEMU's bochs driver reports no block status, so its generic answer is
 * data over the whole range, with no host offset.
 */
static int bochs_block_status(struct qimg_node *node, uint64_t off,
                              uint64_t len, uint64_t *pnum,
                              uint64_t *host_off)
{
    (void)node;
    (void)off;
    (void)host_off;
    *pnum = len;
    return BS_DATA;
}

/* QEMU's bochs driver has no get_info: no dirty-flag in qemu-img info. */
static int bochs_get_info(struct qimg_node *node,
                          struct qimg_image_info *info)
{
    (void)node;
    info->no_disk_info = true;
    return 0;
}

const struct qimg_format_ops format_bochs = {
    .name = "bochs",
    .probe = bochs_probe,
    .open = bochs_open,
    .close = bochs_close,
    .pread = bochs_pread,
    .block_status = bochs_block_status,
    .get_info = bochs_get_info,
};
