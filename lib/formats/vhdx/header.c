/*
 * VHDX codecs: headers (MS-VHDX 2.2.2), region tables (2.2.3) and the
 * metadata region (2.6), with the checks QEMU 7.2 makes at open, in its
 * order, so that a damaged image fails with the same error.  Every field
 * is bounded before use; buffers shorter than a structure read as zero.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <string.h>

#include "core/error.h"
#include "formats/vhdx/vhdx.h"
#include "util/checked.h"
#include "util/crc32c.h"
#include "util/endian.h"

/* The GUIDs of 2.2.3.2 and 2.6.2, as stored (mixed-endian) bytes. */
const struct vhdx_guid vhdx_guid_bat = {{0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6,
    0x00, 0x42, 0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08}};
const struct vhdx_guid vhdx_guid_metadata = {{0x06, 0xa2, 0x7c, 0x8b, 0x90,
    0x47, 0x9a, 0x4b, 0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e}};
const struct vhdx_guid vhdx_guid_file_params = {{0x37, 0x67, 0xa1, 0xca,
    0x36, 0xfa, 0x43, 0x4d, 0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b}};
const struct vhdx_guid vhdx_guid_virtual_size = {{0x24, 0x42, 0xa5, 0x2f,
    0x1b, 0xcd, 0x76, 0x48, 0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8}};
const struct vhdx_guid vhdx_guid_page83 = {{0xab, 0x12, 0xca, 0xbe, 0xe6,
    0xb2, 0x23, 0x45, 0x93, 0xef, 0xc3, 0x09, 0xe0, 0x00, 0xc7, 0x46}};
const struct vhdx_guid vhdx_guid_logical_sector = {{0x1d, 0xbf, 0x41, 0x81,
    0x6f, 0xa9, 0x09, 0x47, 0xba, 0x47, 0xf2, 0x33, 0xa8, 0xfa, 0xab, 0x5f}};
const struct vhdx_guid vhdx_guid_physical_sector = {{0xc7, 0x48, 0xa3, 0xcd,
    0x5d, 0x44, 0x71, 0x44, 0x9c, 0xc9, 0xe9, 0x88, 0x52, 0x51, 0xc5, 0x56}};
const struct vhdx_guid vhdx_guid_parent_locator = {{0x2d, 0x5f, 0xd3, 0xa8,
    0x0b, 0xb3, 0x4d, 0x45, 0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab, 0x0c}};

bool vhdx_guid_is_zero(const struct vhdx_guid *g)
{
    static const struct vhdx_guid zero;
    return memcmp(g->b, zero.b, sizeof(zero.b)) == 0;
}

bool vhdx_guid_equal(const struct vhdx_guid *a, const struct vhdx_guid *b)
{
    return memcmp(a->b, b->b, sizeof(a->b)) == 0;
}

/* [QEMU] damage it reports only as the open's errno. */
static int open_fail(int errnum, const char *filename)
{
    return error_set_errno(errnum, "Could not open '%s'", filename);
}

/* A little-endian field at off, zero past the end of the buffer. */
static uint32_t get32(const uint8_t *buf, size_t len, size_t off)
{
    return off + 4 <= len ? load_le32(buf + off) : 0;
}

static uint64_t get64(const uint8_t *buf, size_t len, size_t off)
{
    return off + 8 <= len ? load_le64(buf + off) : 0;
}

static void get_guid(const uint8_t *buf, size_t len, size_t off,
                     struct vhdx_guid *g)
{
    memset(g->b, 0, sizeof(g->b));
    if (off + sizeof(g->b) <= len) {
        memcpy(g->b, buf + off, sizeof(g->b));
    }
}

uint32_t vhdx_checksum(const uint8_t *buf, size_t len, size_t crc_off)
{
    static const uint8_t zero[4];
    uint32_t crc = crc32c_update(0, buf, crc_off);
    crc = crc32c_update(crc, zero, sizeof(zero));
    return crc32c_update(crc, buf + crc_off + 4, len - crc_off - 4);
}

bool vhdx_header_decode(const uint8_t *buf, size_t len,
                        struct vhdx_header *out)
{
    memset(out, 0, sizeof(*out));
    if (len < VHDX_HEADER_SIZE) {
        return false;
    }
    out->checksum = load_le32(buf + 4);
    out->sequence = load_le64(buf + 8);
    get_guid(buf, len, 16, &out->file_write_guid);
    get_guid(buf, len, 32, &out->data_write_guid);
    get_guid(buf, len, 48, &out->log_guid);
    out->log_version = load_le16(buf + 64);
    out->version = load_le16(buf + 66);
    out->log_length = load_le32(buf + 68);
    out->log_offset = load_le64(buf + 72);
    return load_le32(buf) == VHDX_HEADER_SIGNATURE &&
           vhdx_checksum(buf, VHDX_HEADER_SIZE, 4) == out->checksum &&
           out->version == 1;
}

void vhdx_header_encode(const struct vhdx_header *h, uint8_t *buf)
{
    memset(buf, 0, VHDX_HEADER_SIZE);
    store_le32(buf, VHDX_HEADER_SIGNATURE);
    store_le64(buf + 8, h->sequence);
    memcpy(buf + 16, h->file_write_guid.b, 16);
    memcpy(buf + 32, h->data_write_guid.b, 16);
    memcpy(buf + 48, h->log_guid.b, 16);
    store_le16(buf + 64, h->log_version);
    store_le16(buf + 66, h->version);
    store_le32(buf + 68, h->log_length);
    store_le64(buf + 72, h->log_offset);
    store_le32(buf + 4, vhdx_checksum(buf, VHDX_HEADER_SIZE, 4));
}

int vhdx_region_check(const struct vhdx_region_list *list, uint64_t start,
                      uint64_t len)
{
    uint64_t end;
    if (add_overflow_u64(start, len, &end)) {
        end = UINT64_MAX;
    }
    /* [QEMU] looks at the regions most recently added first. */
    for (size_t i = list->count; i-- > 0;) {
        if (start < list->end[i] && end > list->start[i]) {
            warn_report("VHDX region %" PRIu64 "-%" PRIu64
                        " overlaps with region %" PRIu64 "-%" PRIu64,
                        start, end, list->start[i], list->end[i]);
            return -EINVAL;
        }
    }
    return 0;
}

void vhdx_region_add(struct vhdx_region_list *list, uint64_t start,
                     uint64_t len)
{
    if (list->count < VHDX_MAX_KNOWN_REGIONS) {
        uint64_t end;
        if (add_overflow_u64(start, len, &end)) {
            end = UINT64_MAX;
        }
        list->start[list->count] = start;
        list->end[list->count] = end;
        list->count++;
    }
}

int vhdx_region_table_decode(const uint8_t *buf, size_t len,
                             const char *filename,
                             struct vhdx_region_list *list,
                             struct vhdx_regions *out)
{
    memset(out, 0, sizeof(*out));
    if (len < VHDX_REGION_TABLE_SIZE ||
        load_le32(buf) != VHDX_REGION_SIGNATURE ||
        vhdx_checksum(buf, VHDX_REGION_TABLE_SIZE, 4) != load_le32(buf + 4)) {
        return open_fail(EINVAL, filename);
    }
    uint32_t count = load_le32(buf + 8);
    if (count > VHDX_REGION_MAX_ENTRIES) {
        return open_fail(EINVAL, filename);
    }
    bool have_bat = false, have_meta = false;
    for (uint32_t i = 0; i < count; i++) {
        size_t e = 16 + (size_t)i * 32;
        struct vhdx_guid g;
        get_guid(buf, len, e, &g);
        uint64_t off = get64(buf, len, e + 16);
        uint32_t rlen = get32(buf, len, e + 24);
        uint32_t required = get32(buf, len, e + 28);
        /*
         * 2.2.3.2: regions are 1 MiB aligned, whole MiB long (and qimg
         * wants their end to be a file offset).
         */
        if (off % VHDX_MiB || rlen % VHDX_MiB) {
            return open_fail(EINVAL, filename);
        }
        /* [QEMU] fails to read such a region: an I/O error. */
        if (off > (uint64_t)INT64_MAX - rlen) {
            return open_fail(EIO, filename);
        }
        int ret = vhdx_region_check(list, off, rlen);
        if (ret < 0) {
            return open_fail(EINVAL, filename);
        }
        vhdx_region_add(list, off, rlen);
        if (vhdx_guid_equal(&g, &vhdx_guid_bat)) {
            if (have_bat) {
                return open_fail(EINVAL, filename);
            }
            have_bat = true;
            out->bat_offset = off;
            out->bat_length = rlen;
        } else if (vhdx_guid_equal(&g, &vhdx_guid_metadata)) {
            if (have_meta) {
                return open_fail(EINVAL, filename);
            }
            have_meta = true;
            out->meta_offset = off;
            out->meta_length = rlen;
        } else if (required & VHDX_REGION_ENTRY_REQUIRED) {
            /* 2.2.3.2: a required region we do not know: refuse. */
            return open_fail(ENOTSUP, filename);
        }
    }
    if (!have_bat || !have_meta) {
        return open_fail(EINVAL, filename);
    }
    return 0;
}

void vhdx_region_table_encode(const struct vhdx_regions *r, uint8_t *buf)
{
    memset(buf, 0, VHDX_REGION_TABLE_SIZE);
    store_le32(buf, VHDX_REGION_SIGNATURE);
    store_le32(buf + 8, 2);
    memcpy(buf + 16, vhdx_guid_bat.b, 16);
    store_le64(buf + 32, r->bat_offset);
    store_le32(buf + 40, r->bat_length);
    /* [QEMU] leaves the required bit clear in the images it creates. */
    memcpy(buf + 48, vhdx_guid_metadata.b, 16);
    store_le64(buf + 64, r->meta_offset);
    store_le32(buf + 72, r->meta_length);
    store_le32(buf + 4, vhdx_checksum(buf, VHDX_REGION_TABLE_SIZE, 4));
}

/* The known metadata items, in the order of the fields they fill. */
enum {
    META_FILE_PARAMS,
    META_VIRTUAL_SIZE,
    META_PAGE83,
    META_LOGICAL_SECTOR,
    META_PHYSICAL_SECTOR,
    META_PARENT_LOCATOR,
    META_COUNT
};

static const struct vhdx_guid *const meta_guids[META_COUNT] = {
    &vhdx_guid_file_params,     &vhdx_guid_virtual_size,
    &vhdx_guid_page83,          &vhdx_guid_logical_sector,
    &vhdx_guid_physical_sector, &vhdx_guid_parent_locator,
};
/* The bytes of each item qimg reads (the locator is not read). */
static const uint32_t meta_sizes[META_COUNT] = {8, 8, 16, 4, 4, 0};

int vhdx_metadata_decode(const uint8_t *table, size_t len,
                         uint32_t meta_length, const char *filename,
                         vhdx_read_fn read_item, void *opaque,
                         struct vhdx_metadata *out)
{
    memset(out, 0, sizeof(*out));
    if (len < VHDX_METADATA_TABLE_SIZE ||
        memcmp(table, VHDX_METADATA_SIGNATURE, 8) != 0) {
        return open_fail(EINVAL, filename);
    }
    uint16_t count = load_le16(table + 10);
    if (count > VHDX_METADATA_MAX_ENTRIES) {
        return open_fail(EINVAL, filename);
    }
    bool found[META_COUNT] = {false};
    uint32_t offs[META_COUNT] = {0};
    uint32_t lens[META_COUNT] = {0};
    for (uint32_t i = 0; i < count; i++) {
        size_t e = 32 + (size_t)i * 32;
        struct vhdx_guid g;
        get_guid(table, len, e, &g);
        uint32_t off = get32(table, len, e + 16);
        uint32_t ilen = get32(table, len, e + 20);
        uint32_t flags = get32(table, len, e + 24);
        int k;
        for (k = 0; k < META_COUNT; k++) {
            if (vhdx_guid_equal(&g, meta_guids[k])) {
                break;
            }
        }
        if (k == META_COUNT) {
            if (flags & VHDX_META_IS_REQUIRED) {
                /* 2.6.1.2: an item we cannot interpret is required. */
                return open_fail(ENOTSUP, filename);
            }
            continue;
        }
        if (found[k]) {
            return open_fail(EINVAL, filename);
        }
        found[k] = true;
        offs[k] = off;
        lens[k] = ilen;
    }
    for (int k = 0; k < META_PARENT_LOCATOR; k++) {
        if (!found[k]) {
            return open_fail(EINVAL, filename);
        }
        /* The item must lie inside the region and be long enough. */
        if (lens[k] < meta_sizes[k] ||
            (uint64_t)offs[k] + meta_sizes[k] > meta_length) {
            return open_fail(EINVAL, filename);
        }
    }
    out->has_parent_locator = found[META_PARENT_LOCATOR];

    uint8_t item[16];
    int ret;
    for (int k = 0; k < META_PARENT_LOCATOR; k++) {
        ret = read_item(opaque, item, meta_sizes[k], offs[k]);
        if (ret < 0) {
            return error_set_errno(-ret, "Could not open '%s'", filename);
        }
        switch (k) {
        case META_FILE_PARAMS:
            out->block_size = load_le32(item);
            out->params_flags = load_le32(item + 4);
            break;
        case META_VIRTUAL_SIZE:
            out->virtual_size = load_le64(item);
            break;
        case META_PAGE83:
            memcpy(out->page83.b, item, 16);
            break;
        case META_LOGICAL_SECTOR:
            out->logical_sector_size = load_le32(item);
            break;
        default:
            out->physical_sector_size = load_le32(item);
            break;
        }
    }

    /*
     * [QEMU] differencing images are not supported: with a parent
     * locator it says so, without one the image is inconsistent.
     */
    if (out->params_flags & VHDX_PARAMS_HAS_PARENT) {
        return open_fail(out->has_parent_locator ? ENOTSUP : EINVAL,
                         filename);
    }
    /* 2.6.2.1: a power of two from 1 MiB to 256 MiB (CVE-2014-0148). */
    uint32_t bs = out->block_size;
    if (bs < VHDX_BLOCK_SIZE_MIN || bs > VHDX_BLOCK_SIZE_MAX ||
        (bs & (bs - 1)) != 0) {
        return open_fail(EINVAL, filename);
    }
    /* [QEMU] reads 512-byte logical sectors only. */
    if (out->logical_sector_size != 512) {
        return open_fail(ENOTSUP, filename);
    }
    if (out->virtual_size > VHDX_MAX_IMAGE_SIZE) {
        return open_fail(EINVAL, filename);
    }
    return 0;
}

int vhdx_geometry(const struct vhdx_metadata *m, struct vhdx_geometry *g)
{
    /* Both were validated: the ratio is 16..4096 and exact. */
    g->chunk_ratio = VHDX_CHUNK_SECTORS * m->logical_sector_size /
                     m->block_size;
    g->data_blocks = div_round_up_u64(m->virtual_size, m->block_size);
    /* 2.5: a sector bitmap entry after every chunk_ratio payload ones. */
    g->bat_entries = g->data_blocks == 0
                         ? 0
                         : g->data_blocks +
                               (g->data_blocks - 1) / g->chunk_ratio;
    return 0;
}
