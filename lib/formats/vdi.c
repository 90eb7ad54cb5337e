/*
 * vdi: VirtualBox disk images, version 1.1, static or dynamic, 1 MiB
 * blocks (the only kind QEMU supports; its limits and messages are kept).
 *
 * Layout (VirtualBox's VDI header, all little-endian): a 512-byte header
 * at offset 0, a block map of blocks_in_image 32-bit entries at
 * offset_bmap, and the blocks at offset_data + index * block_size.  A map
 * entry is a block index, VDI_UNALLOCATED (never written) or
 * VDI_DISCARDED (reads as zero); both read as zero here, as in QEMU.
 * New blocks go at index blocks_allocated, the end of the data area.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "core/error.h"
#include "driver.h"
#include "util/checked.h"
#include "util/endian.h"

#define VDI_SECTOR 512u
/* The header occupies the first sector (its fields end at 0x1c8). */
#define VDI_HEADER_SIZE 512u
#define VDI_SIGNATURE 0xbeda107fu
#define VDI_VERSION_1_1 0x00010001u
#define VDI_TYPE_DYNAMIC 1u
#define VDI_TYPE_STATIC 2u
/* The only block size QEMU reads (and VirtualBox writes). */
#define VDI_BLOCK_SIZE (1u << 20)
#define VDI_UNALLOCATED 0xffffffffu
#define VDI_DISCARDED 0xfffffffeu
/*
 * QEMU's block count limit: the map, in whole sectors, fits in
 * INT32_MAX bytes (0x1fffff80 entries), so disks up to 512 TiB - 128 MiB.
 */
#define VDI_BLOCKS_MAX 0x1fffff80u
#define VDI_DISK_SIZE_MAX ((uint64_t)VDI_BLOCKS_MAX * VDI_BLOCK_SIZE)
/*
 * A map that lies past the end of the file reads as zeros in QEMU; qimg
 * follows for maps up to this size and refuses larger ones, so that a
 * small hostile file cannot make it allocate gigabytes.
 */
#define VDI_BMAP_PAST_EOF_MAX (4u << 20)

/* Header field offsets (VirtualBox VDIHEADER1PLUS behind VDIPREHEADER). */
#define VDI_OFF_TEXT 0x00
#define VDI_OFF_SIGNATURE 0x40
#define VDI_OFF_VERSION 0x44
#define VDI_OFF_HEADER_SIZE 0x48
#define VDI_OFF_IMAGE_TYPE 0x4c
#define VDI_OFF_IMAGE_FLAGS 0x50
#define VDI_OFF_DESCRIPTION 0x54
#define VDI_OFF_BMAP 0x154
#define VDI_OFF_DATA 0x158
#define VDI_OFF_CYLINDERS 0x15c
#define VDI_OFF_HEADS 0x160
#define VDI_OFF_SECTORS 0x164
#define VDI_OFF_SECTOR_SIZE 0x168
#define VDI_OFF_DISK_SIZE 0x170
#define VDI_OFF_BLOCK_SIZE 0x178
#define VDI_OFF_BLOCK_EXTRA 0x17c
#define VDI_OFF_BLOCKS 0x180
#define VDI_OFF_BLOCKS_ALLOCATED 0x184
#define VDI_OFF_UUID_IMAGE 0x188
#define VDI_OFF_UUID_LAST_SNAP 0x198
#define VDI_OFF_UUID_LINK 0x1a8
#define VDI_OFF_UUID_PARENT 0x1b8
#define VDI_UUID_SIZE 16

/* QEMU's text, which identifies the creator only (not checked). */
static const char vdi_text[] = "<<< QEMU VM Virtual Disk Image >>>\n";

struct vdi_header {
    uint32_t signature;
    uint32_t version;
    uint32_t header_size;
    uint32_t image_type;
    uint32_t offset_bmap;
    uint32_t offset_data;
    uint32_t sector_size;
    uint64_t disk_size;
    uint32_t block_size;
    uint32_t block_extra;
    uint32_t blocks_in_image;
    uint32_t blocks_allocated;
    uint8_t uuid_image[VDI_UUID_SIZE];
    uint8_t uuid_last_snap[VDI_UUID_SIZE];
    uint8_t uuid_link[VDI_UUID_SIZE];
    uint8_t uuid_parent[VDI_UUID_SIZE];
};

struct vdi_state {
    struct vdi_header h;
    /* The header sector as read, written back with blocks_allocated. */
    uint8_t raw[VDI_HEADER_SIZE];
    uint32_t *bmap; /* blocks_in_image entries, host order */
    uint8_t *block_buf; /* VDI_BLOCK_SIZE bytes, for partial allocations */
};

static void vdi_header_decode(const uint8_t *b, struct vdi_header *h)
{
    h->signature = load_le32(b + VDI_OFF_SIGNATURE);
    h->version = load_le32(b + VDI_OFF_VERSION);
    h->header_size = load_le32(b + VDI_OFF_HEADER_SIZE);
    h->image_type = load_le32(b + VDI_OFF_IMAGE_TYPE);
    h->offset_bmap = load_le32(b + VDI_OFF_BMAP);
    h->offset_data = load_le32(b + VDI_OFF_DATA);
    h->sector_size = load_le32(b + VDI_OFF_SECTOR_SIZE);
    h->disk_size = load_le64(b + VDI_OFF_DISK_SIZE);
    h->block_size = load_le32(b + VDI_OFF_BLOCK_SIZE);
    h->block_extra = load_le32(b + VDI_OFF_BLOCK_EXTRA);
    h->blocks_in_image = load_le32(b + VDI_OFF_BLOCKS);
    h->blocks_allocated = load_le32(b + VDI_OFF_BLOCKS_ALLOCATED);
    memcpy(h->uuid_image, b + VDI_OFF_UUID_IMAGE, VDI_UUID_SIZE);
    memcpy(h->uuid_last_snap, b + VDI_OFF_UUID_LAST_SNAP, VDI_UUID_SIZE);
    memcpy(h->uuid_link, b + VDI_OFF_UUID_LINK, VDI_UUID_SIZE);
    memcpy(h->uuid_parent, b + VDI_OFF_UUID_PARENT, VDI_UUID_SIZE);
}

/* The header sector of a new image as QEMU writes it. */
static void vdi_header_encode(const struct vdi_header *h, uint8_t *b)
{
    memset(b, 0, VDI_HEADER_SIZE);
    memcpy(b + VDI_OFF_TEXT, vdi_text, sizeof(vdi_text) - 1);
    store_le32(b + VDI_OFF_SIGNATURE, h->signature);
    store_le32(b + VDI_OFF_VERSION, h->version);
    store_le32(b + VDI_OFF_HEADER_SIZE, h->header_size);
    store_le32(b + VDI_OFF_IMAGE_TYPE, h->image_type);
    store_le32(b + VDI_OFF_BMAP, h->offset_bmap);
    store_le32(b + VDI_OFF_DATA, h->offset_data);
    store_le32(b + VDI_OFF_SECTOR_SIZE, h->sector_size);
    store_le64(b + VDI_OFF_DISK_SIZE, h->disk_size);
    store_le32(b + VDI_OFF_BLOCK_SIZE, h->block_size);
    store_le32(b + VDI_OFF_BLOCK_EXTRA, h->block_extra);
    store_le32(b + VDI_OFF_BLOCKS, h->blocks_in_image);
    store_le32(b + VDI_OFF_BLOCKS_ALLOCATED, h->blocks_allocated);
    memcpy(b + VDI_OFF_UUID_IMAGE, h->uuid_image, VDI_UUID_SIZE);
    memcpy(b + VDI_OFF_UUID_LAST_SNAP, h->uuid_last_snap, VDI_UUID_SIZE);
    memcpy(b + VDI_OFF_UUID_LINK, h->uuid_link, VDI_UUID_SIZE);
    memcpy(b + VDI_OFF_UUID_PARENT, h->uuid_parent, VDI_UUID_SIZE);
}

static bool vdi_is_allocated(uint32_t entry)
{
    return entry < VDI_DISCARDED;
}

static bool uuid_is_null(const uint8_t *u)
{
    for (size_t i = 0; i < VDI_UUID_SIZE; i++) {
        if (u[i]) {
            return false;
        }
    }
    return true;
}

static int vdi_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    /*
     * QEMU probes a buffer zero-filled past the end of the file, so only
     * the signature has to be there.
     */
    if (len < VDI_OFF_SIGNATURE + 4) {
        return 0;
    }
    return load_le32(buf + VDI_OFF_SIGNATURE) == VDI_SIGNATURE ? 100 : 0;
}

/*
 * QEMU's open-time checks, in its order and with its words.  disk_size
 * is rounded up to whole sectors first (VBoxManage convertfromraw writes
 * unaligned sizes).
 */
static int vdi_header_validate(struct vdi_header *h)
{
    if (h->disk_size > VDI_DISK_SIZE_MAX) {
        return error_set(ENOTSUP, "Unsupported VDI image size (size is "
                         "0x%llx, max supported is 0x%llx)",
                         (unsigned long long)h->disk_size,
                         (unsigned long long)VDI_DISK_SIZE_MAX);
    }
    /* Cannot overflow: disk_size <= VDI_DISK_SIZE_MAX < 2^50. */
    h->disk_size = (h->disk_size + VDI_SECTOR - 1) &
                   ~(uint64_t)(VDI_SECTOR - 1);
    if (h->signature != VDI_SIGNATURE) {
        return error_set(EINVAL, "Image not in VDI format (bad signature "
                         "%08x)", h->signature);
    }
    if (h->version != VDI_VERSION_1_1) {
        return error_set(ENOTSUP, "unsupported VDI image (version %u.%u)",
                         h->version >> 16, h->version & 0xffff);
    }
    if (h->offset_bmap % VDI_SECTOR != 0) {
        return error_set(ENOTSUP, "unsupported VDI image (unaligned block "
                         "map offset 0x%x)", h->offset_bmap);
    }
    if (h->offset_data % VDI_SECTOR != 0) {
        return error_set(ENOTSUP, "unsupported VDI image (unaligned data "
                         "offset 0x%x)", h->offset_data);
    }
    if (h->sector_size != VDI_SECTOR) {
        return error_set(ENOTSUP, "unsupported VDI image (sector size %u "
                         "is not %u)", h->sector_size, VDI_SECTOR);
    }
    if (h->block_size != VDI_BLOCK_SIZE) {
        return error_set(ENOTSUP, "unsupported VDI image (block size %u "
                         "is not %u)", h->block_size, VDI_BLOCK_SIZE);
    }
    uint64_t room = (uint64_t)h->blocks_in_image * VDI_BLOCK_SIZE;
    if (h->disk_size > room) {
        return error_set(ENOTSUP, "unsupported VDI image (disk size %llu, "
                         "image bitmap has room for %llu)",
                         (unsigned long long)h->disk_size,
                         (unsigned long long)room);
    }
    if (!uuid_is_null(h->uuid_link)) {
        return error_set(ENOTSUP, "unsupported VDI image (non-NULL link "
                         "UUID)");
    }
    if (!uuid_is_null(h->uuid_parent)) {
        return error_set(ENOTSUP, "unsupported VDI image (non-NULL parent "
                         "UUID)");
    }
    if (h->blocks_in_image > VDI_BLOCKS_MAX) {
        return error_set(ENOTSUP, "unsupported VDI image (too many blocks "
                         "%u, max is %u)", h->blocks_in_image,
                         VDI_BLOCKS_MAX);
    }
    return 0;
}

/* Bytes of the block map on disk: whole sectors (< 2 GiB by the limit). */
static uint64_t vdi_bmap_bytes(uint32_t blocks)
{
    return ((uint64_t)blocks * 4 + VDI_SECTOR - 1) &
           ~(uint64_t)(VDI_SECTOR - 1);
}

static void vdi_close(struct qimg_node *node)
{
    struct vdi_state *s = node->opaque;
    if (s) {
        free(s->bmap);
        free(s->block_buf);
        free(s);
    }
    node->opaque = NULL;
}

static int vdi_read_bmap(struct qimg_node *node, struct vdi_state *s)
{
    uint64_t bytes = vdi_bmap_bytes(s->h.blocks_in_image);
    int64_t file_size = io_get_size(node->file);
    if (file_size < 0) {
        return (int)file_size;
    }
    /* offset_bmap < 2^32 and bytes < 2^31: no overflow. */
    uint64_t end = (uint64_t)s->h.offset_bmap + bytes;
    if (end > (uint64_t)file_size && bytes > VDI_BMAP_PAST_EOF_MAX) {
        return error_set(EINVAL, "VDI block map (%llu bytes at offset "
                         "0x%x) lies beyond the end of the file",
                         (unsigned long long)bytes, s->h.offset_bmap);
    }
    if (bytes == 0) {
        return 0;
    }
    uint8_t *raw = malloc((size_t)bytes);
    s->bmap = malloc((size_t)s->h.blocks_in_image * sizeof(uint32_t));
    if (!raw || !s->bmap) {
        free(raw);
        return error_set(ENOMEM, "Could not allocate the VDI block map");
    }
    int ret = io_pread(node->file, raw, (size_t)bytes, s->h.offset_bmap);
    if (ret < 0) {
        free(raw);
        return error_prefix(-ret, "Could not read the VDI block map");
    }
    for (uint32_t i = 0; i < s->h.blocks_in_image; i++) {
        s->bmap[i] = load_le32(raw + (size_t)i * 4);
    }
    free(raw);
    return 0;
}

static int vdi_open(struct qimg_node *node, unsigned flags)
{
    (void)flags;
    struct vdi_state *s = calloc(1, sizeof(*s));
    if (!s) {
        return error_set(ENOMEM, "Out of memory");
    }
    node->opaque = s;
    /* A short file reads as zeros past its end, as in QEMU. */
    int ret = io_pread(node->file, s->raw, sizeof(s->raw), 0);
    if (ret < 0) {
        ret = error_prefix(-ret, "Could not read the VDI header");
        goto fail;
    }
    vdi_header_decode(s->raw, &s->h);
    ret = vdi_header_validate(&s->h);
    if (ret == 0) {
        ret = vdi_read_bmap(node, s);
    }
    if (ret < 0) {
        goto fail;
    }
    node->size = s->h.disk_size;
    return 0;
fail:
    vdi_close(node);
    return ret;
}

static uint64_t vdi_block_host(const struct vdi_state *s, uint32_t entry)
{
    /* < 2^32 + 2^32 * 2^20: no overflow. */
    return (uint64_t)s->h.offset_data + (uint64_t)entry * VDI_BLOCK_SIZE;
}

/*
 * Guest data is never written over the header sector or the block map
 * (rewritten in place at every allocation): a damaged header can place
 * the data area, or a map entry a block, on them.  QEMU writes there and
 * loses the data or the map.
 */
static int vdi_check_data_write(struct qimg_node *node,
                                const struct vdi_state *s, uint64_t host,
                                uint64_t len)
{
    uint64_t map = s->h.offset_bmap;
    uint64_t map_end = map + vdi_bmap_bytes(s->h.blocks_in_image);
    if (host < VDI_HEADER_SIZE || (host < map_end && map < host + len)) {
        return error_set(EIO, "%s: VDI image is corrupt: a data block at "
                         "offset %llu lies on the header or the block map",
                         node->filename, (unsigned long long)host);
    }
    return 0;
}

static int vdi_pread(struct qimg_node *node, void *buf, size_t len,
                     uint64_t off)
{
    struct vdi_state *s = node->opaque;
    uint8_t *p = buf;
    while (len > 0) {
        uint64_t block = off / VDI_BLOCK_SIZE;
        uint64_t in_block = off % VDI_BLOCK_SIZE;
        size_t n = (size_t)min_u64(len, VDI_BLOCK_SIZE - in_block);
        /* off < disk_size <= blocks_in_image * block size. */
        uint32_t entry = s->bmap[block];
        int ret = 0;
        if (vdi_is_allocated(entry)) {
            ret = io_pread(node->file, p, n,
                           vdi_block_host(s, entry) + in_block);
        } else {
            memset(p, 0, n);
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
 * Record a new block: the header's blocks_allocated, then the map sector
 * holding the entry (QEMU's order: data, header, map).
 */
static int vdi_write_metadata(struct qimg_node *node, struct vdi_state *s,
                              uint64_t block)
{
    store_le32(s->raw + VDI_OFF_BLOCKS_ALLOCATED, s->h.blocks_allocated);
    int ret = io_pwrite(node->file, s->raw, sizeof(s->raw), 0);
    if (ret < 0) {
        return ret;
    }
    uint8_t sector[VDI_SECTOR];
    uint64_t first = align_down_u64(block, VDI_SECTOR / 4);
    for (uint64_t i = 0; i < VDI_SECTOR / 4; i++) {
        uint32_t v = first + i < s->h.blocks_in_image ? s->bmap[first + i]
                                                      : 0;
        store_le32(sector + i * 4, v);
    }
    return io_pwrite(node->file, sector, sizeof(sector),
                     (uint64_t)s->h.offset_bmap + first * 4);
}

/* Allocate block (unallocated or discarded) and write n bytes into it. */
static int vdi_allocate(struct qimg_node *node, struct vdi_state *s,
                        uint64_t block, uint64_t in_block, const void *buf,
                        size_t n)
{
    /*
     * A new block takes index blocks_allocated; one at or past the map's
     * length (which QEMU would write anyway) means a damaged header.
     */
    if (s->h.blocks_allocated >= s->h.blocks_in_image) {
        return error_set(EIO, "%s: VDI image is corrupt: %u blocks "
                         "allocated of %u", node->filename,
                         s->h.blocks_allocated, s->h.blocks_in_image);
    }
    uint32_t entry = s->h.blocks_allocated;
    uint64_t host = vdi_block_host(s, entry);
    int ret = vdi_check_data_write(node, s, host, VDI_BLOCK_SIZE);
    if (ret < 0) {
        return ret;
    }
    if (n == VDI_BLOCK_SIZE) {
        ret = io_pwrite(node->file, buf, n, host);
    } else {
        if (!s->block_buf) {
            s->block_buf = malloc(VDI_BLOCK_SIZE);
            if (!s->block_buf) {
                return error_set(ENOMEM, "Out of memory");
            }
        }
        memset(s->block_buf, 0, VDI_BLOCK_SIZE);
        memcpy(s->block_buf + in_block, buf, n);
        ret = io_pwrite(node->file, s->block_buf, VDI_BLOCK_SIZE, host);
    }
    if (ret < 0) {
        return ret;
    }
    s->bmap[block] = entry;
    s->h.blocks_allocated++;
    return vdi_write_metadata(node, s, block);
}

static int vdi_pwrite(struct qimg_node *node, const void *buf, size_t len,
                      uint64_t off)
{
    struct vdi_state *s = node->opaque;
    const uint8_t *p = buf;
    while (len > 0) {
        uint64_t block = off / VDI_BLOCK_SIZE;
        uint64_t in_block = off % VDI_BLOCK_SIZE;
        size_t n = (size_t)min_u64(len, VDI_BLOCK_SIZE - in_block);
        uint32_t entry = s->bmap[block];
        int ret;
        if (vdi_is_allocated(entry)) {
            uint64_t host = vdi_block_host(s, entry) + in_block;
            ret = vdi_check_data_write(node, s, host, n);
            if (ret == 0) {
                ret = io_pwrite(node->file, p, n, host);
            }
        } else {
            ret = vdi_allocate(node, s, block, in_block, p, n);
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

static int vdi_flush(struct qimg_node *node)
{
    return node_sync(node, node->file);
}

/*
 * One run per block, as QEMU's: an unallocated or discarded block reads
 * as zero and belongs to this layer (VDI has no backing files); a static
 * image's blocks may be holes in the file, so the core looks there.
 */
static int vdi_block_status(struct qimg_node *node, uint64_t off,
                            uint64_t len, uint64_t *pnum, uint64_t *host_off)
{
    struct vdi_state *s = node->opaque;
    uint64_t in_block = off % VDI_BLOCK_SIZE;
    uint32_t entry = s->bmap[off / VDI_BLOCK_SIZE];
    *pnum = min_u64(len, VDI_BLOCK_SIZE - in_block);
    if (!vdi_is_allocated(entry)) {
        return BS_ZERO;
    }
    *host_off = vdi_block_host(s, entry) + in_block;
    int flags = BS_DATA | BS_OFFSET_VALID;
    if (s->h.image_type == VDI_TYPE_STATIC) {
        flags |= BS_RECURSE;
    }
    return flags;
}

static int vdi_get_info(struct qimg_node *node, struct qimg_image_info *info)
{
    struct vdi_state *s = node->opaque;
    info->cluster_size = s->h.block_size;
    return 0;
}

/*
 * QEMU's check: every allocated entry must name a block inside the map,
 * no two the same, and their count must be blocks_allocated.  It repairs
 * nothing.
 */
static int vdi_check(struct qimg_node *node, unsigned flags,
                     qimg_check_message_fn report, void *opaque,
                     struct qimg_check_result *res)
{
    struct vdi_state *s = node->opaque;
    if (flags & (QIMG_CHECK_FIX_LEAKS | QIMG_CHECK_FIX_ERRORS)) {
        return error_set(ENOTSUP, "This image format does not support "
                         "checks");
    }
    uint32_t blocks = s->h.blocks_in_image;
    /* One bit per block index: which indexes some entry already uses. */
    uint8_t *used = calloc(1, (size_t)blocks / 8 + 1);
    if (!used) {
        return error_set(ENOMEM, "Out of memory");
    }
    char line[128];
    uint32_t allocated = 0;
    for (uint32_t i = 0; i < blocks; i++) {
        uint32_t entry = s->bmap[i];
        if (!vdi_is_allocated(entry)) {
            continue;
        }
        if (entry >= blocks) {
            snprintf(line, sizeof(line), "ERROR: block index %u too large, "
                     "is %u", i, entry);
            report(line, QIMG_CHECK_LINE_PLAIN, opaque);
            res->corruptions++;
            continue;
        }
        allocated++;
        uint8_t bit = (uint8_t)(1u << (entry % 8));
        if (used[entry / 8] & bit) {
            /* QEMU names the index twice. */
            snprintf(line, sizeof(line), "ERROR: block index %u also used "
                     "by %u", entry, entry);
            report(line, QIMG_CHECK_LINE_PLAIN, opaque);
            res->corruptions++;
        } else {
            used[entry / 8] |= bit;
        }
    }
    free(used);
    if (allocated != s->h.blocks_allocated) {
        snprintf(line, sizeof(line), "ERROR: allocated blocks mismatch, is "
                 "%u, should be %u", allocated, s->h.blocks_allocated);
        report(line, QIMG_CHECK_LINE_PLAIN, opaque);
        res->corruptions++;
    }
    return 0;
}

static const struct qimg_opt_desc vdi_create_opts[] = {
    {"size", QIMG_OPT_SIZE, "Virtual disk size", NULL},
    {"static", QIMG_OPT_BOOL, "VDI static (pre-allocated) image", "off"},
    {NULL, 0, NULL, NULL},
};

/*
 * A random (version 4) UUID in VDI's byte order, whose first three
 * fields are little-endian: the version nibble sits in byte 7.
 */
static int vdi_uuid_generate(uint8_t *u)
{
    size_t got = 0;
    while (got < VDI_UUID_SIZE) {
        ssize_t n = getrandom(u + got, VDI_UUID_SIZE - got, 0);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return error_set_errno(errno, "Could not generate a UUID");
        }
        got += (size_t)n;
    }
    u[7] = (uint8_t)((u[7] & 0x0f) | 0x40);
    u[8] = (uint8_t)((u[8] & 0x3f) | 0x80);
    return 0;
}

/*
 * As QEMU creates: header, then the map (static: every block in order;
 * dynamic: all unallocated), then a static image's data area as a hole.
 * The file protocol's preallocation does not apply (QEMU's file ends up
 * the same without it).
 */
static int vdi_create(const char *filename, const struct qimg_opts *opts)
{
    uint64_t size = 0;
    const char *text = qimg_opts_get(opts, "size");
    if (text && qimg_parse_size(text, 'B', &size) < 0) {
        return error_set(EINVAL, "Parameter 'size' expects a non-negative "
                         "number below 2^64");
    }
    bool is_static = false;
    text = qimg_opts_get(opts, "static");
    if (text && !opt_parse_bool(text, &is_static)) {
        return error_set(EINVAL, "Parameter 'static' expects 'on' or 'off'");
    }
    if (size > VDI_DISK_SIZE_MAX) {
        return error_set(ENOTSUP, "Unsupported VDI image size (size is "
                         "0x%llx, max supported is 0x%llx)",
                         (unsigned long long)size,
                         (unsigned long long)VDI_DISK_SIZE_MAX);
    }
    size = (size + VDI_SECTOR - 1) & ~(uint64_t)(VDI_SECTOR - 1);
    uint32_t blocks = (uint32_t)div_round_up_u64(size, VDI_BLOCK_SIZE);
    uint64_t bmap_bytes = vdi_bmap_bytes(blocks);

    struct vdi_header h = {
        .signature = VDI_SIGNATURE,
        .version = VDI_VERSION_1_1,
        .header_size = 0x180,
        .image_type = is_static ? VDI_TYPE_STATIC : VDI_TYPE_DYNAMIC,
        .offset_bmap = VDI_HEADER_SIZE,
        .offset_data = (uint32_t)(VDI_HEADER_SIZE + bmap_bytes),
        .sector_size = VDI_SECTOR,
        .disk_size = size,
        .block_size = VDI_BLOCK_SIZE,
        .blocks_in_image = blocks,
        .blocks_allocated = is_static ? blocks : 0,
    };
    int ret = vdi_uuid_generate(h.uuid_image);
    if (ret == 0) {
        ret = vdi_uuid_generate(h.uuid_last_snap);
    }
    if (ret < 0) {
        return ret;
    }
    uint8_t *buf = malloc(VDI_HEADER_SIZE + (size_t)bmap_bytes);
    if (!buf) {
        return error_set(ENOMEM, "Out of memory");
    }
    vdi_header_encode(&h, buf);
    uint8_t *map = buf + VDI_HEADER_SIZE;
    memset(map, 0, (size_t)bmap_bytes);
    for (uint32_t i = 0; i < blocks; i++) {
        store_le32(map + (size_t)i * 4, is_static ? i : VDI_UNALLOCATED);
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
    ret = create_file(filename, file_opts, &io);
    qimg_opts_free(file_opts);
    if (ret < 0) {
        free(buf);
        return ret;
    }
    ret = io_pwrite(io, buf, VDI_HEADER_SIZE + (size_t)bmap_bytes, 0);
    free(buf);
    if (ret == 0 && is_static) {
        ret = io_truncate(io, h.offset_data +
                                  (uint64_t)blocks * VDI_BLOCK_SIZE);
    }
    if (ret == 0) {
        ret = io_flush(io);
    }
    io_close(io);
    if (ret < 0) {
        return error_prefix(-ret, "Could not write the VDI image");
    }
    return 0;
}

const struct qimg_format_ops format_vdi = {
    .name = "vdi",
    .probe = vdi_probe,
    .open = vdi_open,
    .close = vdi_close,
    .pread = vdi_pread,
    .pwrite = vdi_pwrite,
    .flush = vdi_flush,
    .block_status = vdi_block_status,
    .get_info = vdi_get_info,
    .check = vdi_check,
    .create_opts = vdi_create_opts,
    .create = vdi_create,
};
