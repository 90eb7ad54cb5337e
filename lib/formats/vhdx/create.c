/*
 * vhdx creation, laid out as qemu-img 7.2 lays images out: the log at
 * 1 MiB, the BAT after it, the 1 MiB metadata region after that, and
 * payload blocks from 4 MiB past the metadata region.  Dynamic images
 * end there; fixed ones have the whole disk after it, their blocks
 * either marked present at their offsets or (block_state_zero, the
 * default) marked zero.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "core/error.h"
#include "driver.h"
#include "formats/vhdx/vhdx.h"
#include "util/checked.h"
#include "util/endian.h"

/* [QEMU] the gap between the metadata region and the first block. */
#define VHDX_CREATE_PAYLOAD_GAP (4 * VHDX_MiB)
#define VHDX_CREATE_LOG_DEFAULT VHDX_MiB
#define VHDX_CREATOR "qimg"

static int random_bytes(void *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = getrandom((uint8_t *)buf + got, len - got, 0);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return error_set_errno(errno, "Could not generate a GUID");
        }
        got += (size_t)n;
    }
    return 0;
}

static int new_guid(struct vhdx_guid *g)
{
    int ret = random_bytes(g->b, sizeof(g->b));
    g->b[7] = (uint8_t)((g->b[7] & 0x0f) | 0x40);
    g->b[8] = (uint8_t)((g->b[8] & 0x3f) | 0x80);
    return ret;
}

/* [QEMU] the block size it picks for block_size=0. */
static uint32_t auto_block_size(uint64_t size)
{
    if (size > 32 * VHDX_TiB) {
        return 64 * VHDX_MiB;
    }
    if (size > 100 * 1024 * VHDX_MiB) {
        return 32 * VHDX_MiB;
    }
    if (size > 1024 * VHDX_MiB) {
        return 16 * VHDX_MiB;
    }
    return 8 * VHDX_MiB;
}

struct vhdx_create_params {
    uint64_t size;
    uint64_t log_size;
    uint32_t block_size;
    bool fixed;
    bool block_state_zero;
};

static int parse_params(const struct qimg_opts *opts,
                        struct vhdx_create_params *p)
{
    const char *v = qimg_opts_get(opts, "size");
    if (!v || qimg_parse_size(v, 'B', &p->size) < 0) {
        return error_set(EINVAL, "Parameter 'size' expects a size");
    }
    if (p->size > VHDX_MAX_IMAGE_SIZE) {
        return error_set(EINVAL, "Image size too large; max of 64TB");
    }
    /* Whole logical sectors. */
    p->size = (p->size + 511) & ~(uint64_t)511;

    p->log_size = VHDX_CREATE_LOG_DEFAULT;
    v = qimg_opts_get(opts, "log_size");
    if (v && qimg_parse_size(v, 'B', &p->log_size) < 0) {
        return error_set(EINVAL, "Parameter 'log_size' expects a size");
    }
    /* [QEMU] at least 1 MiB, whole MiB (and the header field is 32-bit). */
    if (p->log_size < VHDX_MiB) {
        p->log_size = VHDX_MiB;
    }
    if (p->log_size > UINT32_MAX - VHDX_MiB + 1) {
        return error_set(EINVAL, "Log size must be smaller than 4 GB");
    }
    p->log_size = (p->log_size + VHDX_MiB - 1) & ~(VHDX_MiB - 1);

    uint64_t bs = 0;
    v = qimg_opts_get(opts, "block_size");
    if (v && qimg_parse_size(v, 'B', &bs) < 0) {
        return error_set(EINVAL, "Parameter 'block_size' expects a size");
    }
    if (bs == 0) {
        bs = auto_block_size(p->size);
    }
    /* [QEMU] clamps to 1..256 MiB, then wants a power of two. */
    if (bs < VHDX_BLOCK_SIZE_MIN) {
        bs = VHDX_BLOCK_SIZE_MIN;
    }
    if (bs > VHDX_BLOCK_SIZE_MAX) {
        bs = VHDX_BLOCK_SIZE_MAX;
    }
    if (bs & (bs - 1)) {
        return error_set(EINVAL, "Block size must be a power of two");
    }
    p->block_size = (uint32_t)bs;

    v = qimg_opts_get(opts, "subformat");
    if (!v || strcmp(v, "dynamic") == 0) {
        p->fixed = false;
    } else if (strcmp(v, "fixed") == 0) {
        p->fixed = true;
    } else {
        return error_set(EINVAL, "Parameter 'subformat' does not accept "
                         "value '%s'", v);
    }
    p->block_state_zero = true;
    v = qimg_opts_get(opts, "block_state_zero");
    if (v && !opt_parse_bool(v, &p->block_state_zero)) {
        return error_set(EINVAL, "Parameter 'block_state_zero' expects "
                         "'on' or 'off'");
    }
    return 0;
}

/* The metadata region's table and items (2.6), as QEMU writes them. */
static void encode_metadata(const struct vhdx_create_params *p,
                            const struct vhdx_guid *page83, uint8_t *buf)
{
    memset(buf, 0, VHDX_METADATA_TABLE_SIZE + VHDX_LOG_SECTOR);
    memcpy(buf, VHDX_METADATA_SIGNATURE, 8);
    store_le16(buf + 10, 5);
    static const struct {
        const struct vhdx_guid *guid;
        uint32_t off, len, flags;
    } items[5] = {
        {&vhdx_guid_file_params, 0, 8, VHDX_META_IS_REQUIRED},
        {&vhdx_guid_virtual_size, 8, 8,
         VHDX_META_IS_VIRTUAL_DISK | VHDX_META_IS_REQUIRED},
        {&vhdx_guid_page83, 16, 16,
         VHDX_META_IS_VIRTUAL_DISK | VHDX_META_IS_REQUIRED},
        {&vhdx_guid_logical_sector, 32, 4,
         VHDX_META_IS_VIRTUAL_DISK | VHDX_META_IS_REQUIRED},
        {&vhdx_guid_physical_sector, 36, 4,
         VHDX_META_IS_VIRTUAL_DISK | VHDX_META_IS_REQUIRED},
    };
    for (size_t i = 0; i < 5; i++) {
        uint8_t *e = buf + 32 + i * 32;
        memcpy(e, items[i].guid->b, 16);
        store_le32(e + 16, VHDX_METADATA_TABLE_SIZE + items[i].off);
        store_le32(e + 20, items[i].len);
        store_le32(e + 24, items[i].flags);
    }
    uint8_t *it = buf + VHDX_METADATA_TABLE_SIZE;
    store_le32(it, p->block_size);
    store_le32(it + 4, p->fixed ? VHDX_PARAMS_LEAVE_BLOCKS_ALLOCATED : 0);
    store_le64(it + 8, p->size);
    memcpy(it + 16, page83->b, 16);
    store_le32(it + 32, 512);
    store_le32(it + 36, 512);
}

static int write_all(struct qimg_io *io, const void *buf, size_t len,
                     uint64_t off)
{
    int ret = io_pwrite(io, buf, len, off);
    if (ret < 0) {
        return error_set_errno(-ret, "Could not write the VHDX image");
    }
    return 0;
}

static int write_image(struct qimg_io *io, const struct vhdx_create_params *p)
{
    struct vhdx_metadata md = {
        .block_size = p->block_size,
        .virtual_size = p->size,
        .logical_sector_size = 512,
    };
    struct vhdx_geometry g;
    vhdx_geometry(&md, &g);
    /*
     * [QEMU] counts the BAT of an empty disk with 32-bit arithmetic that
     * wraps: one sector bitmap entry per chunk of 2^32 - 1 blocks.
     */
    uint64_t entries = g.bat_entries;
    if (g.data_blocks == 0) {
        entries = UINT32_MAX / g.chunk_ratio;
    }
    uint64_t bat_offset = VHDX_MiB + p->log_size;
    uint64_t bat_length = (entries * 8 + VHDX_MiB - 1) & ~(VHDX_MiB - 1);
    if (bat_length == 0) {
        bat_length = VHDX_MiB;
    }
    uint64_t meta_offset = bat_offset + bat_length;
    uint64_t payload = meta_offset + VHDX_MiB + VHDX_CREATE_PAYLOAD_GAP;
    uint64_t file_size = payload + (p->fixed ? p->size : 0);

    uint8_t *buf = calloc(1, VHDX_REGION_TABLE_SIZE + VHDX_LOG_SECTOR);
    /* The whole region: [QEMU] writes all of it (see below). */
    uint64_t *bat = calloc(bat_length / 8, 8);
    if (!buf || !bat) {
        free(buf);
        free(bat);
        return error_set(ENOMEM, "Out of memory");
    }
    int ret = io_truncate(io, file_size);
    if (ret < 0) {
        ret = error_set_errno(-ret, "Could not resize the VHDX image");
        goto out;
    }

    /* 2.2.1: the file type identifier. */
    memcpy(buf, VHDX_FILE_ID_SIGNATURE, 8);
    for (size_t i = 0; VHDX_CREATOR[i]; i++) {
        store_le16(buf + 8 + 2 * i, (uint8_t)VHDX_CREATOR[i]);
    }
    ret = write_all(io, buf, VHDX_LOG_SECTOR, 0);
    if (ret < 0) {
        goto out;
    }

    /* 2.2.2: both headers, the second one newer. */
    struct vhdx_header h = {
        .version = 1,
        .log_length = (uint32_t)p->log_size,
        .log_offset = VHDX_MiB,
    };
    uint32_t seq;
    ret = random_bytes(&seq, sizeof(seq));
    if (ret == 0) {
        ret = new_guid(&h.file_write_guid);
    }
    if (ret == 0) {
        ret = new_guid(&h.data_write_guid);
    }
    if (ret < 0) {
        goto out;
    }
    for (int i = 0; i < 2; i++) {
        h.sequence = (uint64_t)seq + (uint64_t)i;
        vhdx_header_encode(&h, buf);
        ret = write_all(io, buf, VHDX_HEADER_SIZE,
                        i == 0 ? VHDX_HEADER1_OFFSET : VHDX_HEADER2_OFFSET);
        if (ret < 0) {
            goto out;
        }
    }

    /* 2.2.3: both region tables. */
    struct vhdx_regions r = {
        .bat_offset = bat_offset,
        .bat_length = (uint32_t)bat_length,
        .meta_offset = meta_offset,
        .meta_length = VHDX_MiB,
    };
    vhdx_region_table_encode(&r, buf);
    ret = write_all(io, buf, VHDX_REGION_TABLE_SIZE,
                    VHDX_REGION_TABLE1_OFFSET);
    if (ret == 0) {
        ret = write_all(io, buf, VHDX_REGION_TABLE_SIZE,
                        VHDX_REGION_TABLE2_OFFSET);
    }
    if (ret < 0) {
        goto out;
    }

    /* 2.6: the metadata. */
    struct vhdx_guid page83;
    ret = new_guid(&page83);
    if (ret < 0) {
        goto out;
    }
    encode_metadata(p, &page83, buf);
    ret = write_all(io, buf, VHDX_METADATA_TABLE_SIZE + VHDX_LOG_SECTOR,
                    meta_offset);
    if (ret < 0) {
        goto out;
    }

    /* 2.5: the BAT; sector bitmap entries stay NOT_PRESENT. */
    for (uint64_t b = 0; b < g.data_blocks; b++) {
        uint64_t e;
        if (p->block_state_zero) {
            e = VHDX_PAYLOAD_ZERO;
        } else if (p->fixed) {
            e = (payload + b * p->block_size) | VHDX_PAYLOAD_FULLY_PRESENT;
        } else {
            e = VHDX_PAYLOAD_NOT_PRESENT;
        }
        store_le64(&bat[vhdx_bat_index(&g, b)], e);
    }
    /*
     * [QEMU] writes the whole BAT region when it holds anything but zero
     * entries (fixed, or block_state_zero), so the file's allocation is
     * the same; an all-zero BAT stays a hole.
     */
    if (p->fixed || p->block_state_zero) {
        ret = write_all(io, bat, bat_length, bat_offset);
    }
out:
    free(buf);
    free(bat);
    return ret;
}

int vhdx_create(const char *filename, const struct qimg_opts *opts)
{
    struct vhdx_create_params p;
    int ret = parse_params(opts, &p);
    if (ret < 0) {
        return ret;
    }
    struct qimg_io *io = NULL;
    ret = io_file_open(filename, IO_RDWR | IO_CREATE | IO_TRUNC, &io);
    if (ret < 0) {
        return ret;
    }
    ret = write_image(io, &p);
    if (ret == 0) {
        ret = io_flush(io);
        if (ret < 0) {
            ret = error_set_errno(-ret, "Could not flush the VHDX image");
        }
    }
    io_close(io);
    return ret;
}

const struct qimg_opt_desc vhdx_create_opts[] = {
    {"size", QIMG_OPT_SIZE, "Virtual disk size; max of 64TB.", NULL},
    {"log_size", QIMG_OPT_SIZE, "Log size; min 1MB.", "1048576"},
    {"block_size", QIMG_OPT_SIZE, "Block Size; min 1MB, max 256MB. 0 means "
     "auto-calculate based on image size.", "0"},
    {"subformat", QIMG_OPT_STRING, "VHDX format type, can be either "
     "'dynamic' or 'fixed'. Default is 'dynamic'.", NULL},
    {"block_state_zero", QIMG_OPT_BOOL, "Force use of payload blocks of "
     "type 'ZERO'. Non-standard, but default.  Do not set to 'off' when "
     "using 'qemu-img convert' with subformat=dynamic.", NULL},
    {NULL, 0, NULL, NULL},
};
