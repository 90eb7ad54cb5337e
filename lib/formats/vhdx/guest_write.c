/*
 * vhdx guest writes, in the order QEMU 7.2 makes them so that both write
 * the same files (GUIDs aside):
 *
 * - Before the first change of guest data in an open, both headers get
 *   this open's file write GUID and a new data write GUID (2.2.2).
 * - A write to a block that is not present (NOT_PRESENT, UNDEFINED, ZERO,
 *   UNMAPPED, and the 0.95 draft's UNMAPPED value as QEMU) allocates a
 *   block at the end of the file, rounded up to 1 MiB (2.5.1:
 *   FileOffsetMB), extends the file over it (so the rest of the block
 *   reads as zero), writes the data, then changes the BAT entry
 *   to FULLY_PRESENT through the log (2.3): data synced; a new log GUID
 *   in the headers; the entry (the whole new BAT sector) written and
 *   synced; the sector written in place and synced; the log GUID cleared.
 *   A crash before the entry is whole leaves the old BAT (the block is
 *   leaked, never visible); after it, the next writable open replays it.
 * - A write to a FULLY_PRESENT block goes in place.
 * - Zero writes leave blocks that are not present alone (they read as
 *   zero: this is not a differencing image) and zero present ones in
 *   place, so they never allocate.  [QEMU] 7.2 has no zero write for
 *   vhdx and allocates, writing zero buffers.
 *
 * Fixed images are written the same way: their blocks are FULLY_PRESENT
 * (written in place) or, with block_state_zero, ZERO, and then QEMU
 * allocates past the preallocated area; qimg does the same.  Sector
 * bitmaps belong to differencing images only, which open refuses.
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "core/error.h"
#include "driver.h"
#include "formats/vhdx/vhdx.h"
#include "util/checked.h"
#include "util/endian.h"

/* [QEMU] a present block inside the header section is refused. */
#define VHDX_FIRST_BLOCK_OFFSET VHDX_HEADER_SECTION_END

static int write_fail(int errnum, const char *what)
{
    return error_set_errno(errnum, "Could not write the VHDX image: %s",
                           what);
}

/* May this open write guest data at all? */
static int writes_allowed(const struct vhdx_state *s)
{
    if (s->broken) {
        return error_set(EIO, "Could not write the VHDX image: an earlier "
                         "BAT update failed");
    }
    if (!s->bat_checked) {
        return error_set(EPERM, "Could not write the VHDX image: opened "
                         "for a check");
    }
    return 0;
}

/* 2.2.2: new file and data write GUIDs before the first data change. */
static int visible_write(struct qimg_node *node, struct vhdx_state *s)
{
    if (s->data_guid_done) {
        return 0;
    }
    int ret = 0;
    if (vhdx_guid_is_zero(&s->session)) {
        ret = vhdx_guid_generate(&s->session);
    }
    if (ret == 0) {
        struct vhdx_guid log_guid = s->hdr[s->cur].log_guid;
        ret = vhdx_update_headers(node, s, &s->session, true, &log_guid);
    }
    if (ret == 0) {
        s->data_guid_done = true;
    }
    return ret;
}

/*
 * Make room for a new block at the end of the file, 1 MiB aligned, and
 * extend the file over it.  The block must not fall on a region (a log
 * or metadata region that lies past the end of a damaged file).
 */
static int allocate_block(struct qimg_node *node, struct vhdx_state *s,
                          uint64_t *out)
{
    int64_t fsize = io_get_size(node->file);
    if (fsize < 0) {
        return write_fail((int)-fsize, "cannot get the file size");
    }
    uint64_t off, end;
    if (align_up_overflow_u64((uint64_t)fsize, VHDX_MiB, &off) ||
        off < VHDX_FIRST_BLOCK_OFFSET ||
        add_overflow_u64(off, s->meta.block_size, &end) ||
        end > (uint64_t)INT64_MAX) {
        return write_fail(EFBIG, "the file is too large");
    }
    for (size_t i = 0; i < s->known.count; i++) {
        if (off < s->known.end[i] && end > s->known.start[i]) {
            return write_fail(EIO, "a new block would overlap a region");
        }
    }
    int ret = io_truncate(node->file, end);
    if (ret < 0) {
        return write_fail(-ret, "cannot extend the file");
    }
    *out = off;
    return 0;
}

/*
 * Set BAT entry idx to entry through the log, as the header comment
 * says.  On failure before the entry is written the image is as before;
 * after, memory and file may disagree, so no further write is allowed.
 */
static int update_bat(struct qimg_node *node, struct vhdx_state *s,
                      uint64_t idx, uint64_t entry)
{
    uint32_t log_length = s->hdr[s->cur].log_length;
    uint64_t log_offset = s->hdr[s->cur].log_offset;
    if (log_length < VHDX_LOG_ONE_SECTOR_ENTRY ||
        log_length % VHDX_LOG_SECTOR) {
        return write_fail(ENOTSUP, "the log is too small");
    }
    /* The entry lies inside the BAT region (open checked its size). */
    uint64_t entry_off = s->regions.bat_offset + idx * 8;
    uint64_t sector_off = entry_off & ~(uint64_t)(VHDX_LOG_SECTOR - 1);
    uint8_t sector[VHDX_LOG_SECTOR];
    int ret = io_pread(node->file, sector, sizeof(sector), sector_off);
    if (ret < 0) {
        return write_fail(-ret, "cannot read the BAT");
    }
    store_le64(sector + (entry_off - sector_off), entry);

    /* The data is durable before the BAT can name it. */
    ret = node_sync(node, node->file);
    if (ret < 0) {
        return write_fail(-ret, "cannot flush the data");
    }
    int64_t fsize = io_get_size(node->file);
    if (fsize < 0) {
        return write_fail((int)-fsize, "cannot get the file size");
    }
    struct vhdx_log_sector_entry le = {
        .seq = s->log_seq,
        .tail = s->log_pos,
        .flushed_file_offset = (uint64_t)fsize,
        .last_file_offset = (uint64_t)fsize,
        .file_offset = sector_off,
        .sector = sector,
    };
    ret = vhdx_guid_generate(&le.guid);
    if (ret < 0) {
        return ret;
    }
    /* 2.3.2: the headers name the log before it holds the entry. */
    ret = vhdx_update_headers(node, s, &s->session, false, &le.guid);
    if (ret < 0) {
        return ret;
    }
    uint8_t buf[VHDX_LOG_ONE_SECTOR_ENTRY];
    vhdx_log_sector_entry_encode(&le, buf);
    /* From here on the file may hold an entry the next open replays. */
    s->broken = true;
    ret = vhdx_log_write(node->file, log_offset, log_length, s->log_pos,
                         buf, sizeof(buf));
    if (ret == 0) {
        ret = node_sync(node, node->file);
    }
    if (ret == 0) {
        ret = io_pwrite(node->file, sector, sizeof(sector), sector_off);
        if (ret == 0) {
            ret = node_sync(node, node->file);
        }
        if (ret < 0) {
            ret = write_fail(-ret, "cannot write the BAT");
        }
    }
    if (ret < 0) {
        return ret;
    }
    s->bat[idx] = entry;
    /* The log is applied: empty it (a zero log GUID, 2.2.2). */
    static const struct vhdx_guid zero;
    ret = vhdx_update_headers(node, s, &s->session, false, &zero);
    if (ret < 0) {
        return ret;
    }
    s->broken = false;
    s->log_pos = (uint32_t)((s->log_pos + (uint64_t)sizeof(buf)) %
                            log_length);
    s->log_seq++;
    return 0;
}

/* The host offset of a present block, checked as QEMU checks it. */
static int present_host(const struct vhdx_state *s, uint64_t idx,
                        uint64_t in, uint64_t *host)
{
    uint64_t base = s->bat[idx] & VHDX_BAT_OFFSET_MASK;
    if (base < VHDX_FIRST_BLOCK_OFFSET ||
        add_overflow_u64(base, in, host)) {
        return error_set(EIO, "VHDX BAT entry %" PRIu64 " points into the "
                         "header section", idx);
    }
    return 0;
}

/* The BAT index of the block holding off, or -EIO. */
static int block_index(const struct vhdx_state *s, uint64_t off,
                       uint64_t *idx)
{
    *idx = vhdx_bat_index(&s->geo, off / s->meta.block_size);
    if (*idx >= s->geo.bat_entries) {
        return error_set(EIO, "VHDX write beyond the BAT");
    }
    return 0;
}

int vhdx_pwrite(struct qimg_node *node, const void *buf, size_t len,
                uint64_t off)
{
    struct vhdx_state *s = node->opaque;
    const uint8_t *p = buf;
    uint64_t bs = s->meta.block_size;
    int ret = writes_allowed(s);
    if (ret == 0) {
        ret = visible_write(node, s);
    }
    while (ret == 0 && len > 0) {
        uint64_t in = off % bs;
        size_t n = (size_t)min_u64(len, bs - in);
        uint64_t idx, host = 0;
        ret = block_index(s, off, &idx);
        if (ret < 0) {
            break;
        }
        switch (s->bat[idx] & VHDX_BAT_STATE_MASK) {
        case VHDX_PAYLOAD_FULLY_PRESENT:
            ret = present_host(s, idx, in, &host);
            if (ret == 0) {
                ret = io_pwrite(node->file, p, n, host);
            }
            break;
        case VHDX_PAYLOAD_NOT_PRESENT:
        case VHDX_PAYLOAD_UNDEFINED:
        case VHDX_PAYLOAD_ZERO:
        case VHDX_PAYLOAD_UNMAPPED:
        case VHDX_PAYLOAD_UNMAPPED_V095:
            ret = allocate_block(node, s, &host);
            if (ret == 0) {
                ret = io_pwrite(node->file, p, n, host + in);
            }
            if (ret == 0) {
                ret = update_bat(node, s, idx,
                                 host | VHDX_PAYLOAD_FULLY_PRESENT);
            }
            break;
        default:
            /* PARTIALLY_PRESENT is for differencing images only. */
            ret = error_set(EIO, "VHDX BAT entry %" PRIu64 " has an "
                            "invalid state", idx);
            break;
        }
        p += n;
        off += n;
        len -= n;
    }
    return ret;
}

int vhdx_pwrite_zeroes(struct qimg_node *node, uint64_t off, uint64_t len,
                       unsigned flags)
{
    struct vhdx_state *s = node->opaque;
    uint64_t bs = s->meta.block_size;
    int ret = writes_allowed(s);
    while (ret == 0 && len > 0) {
        uint64_t in = off % bs;
        uint64_t n = min_u64(len, bs - in);
        uint64_t idx, host = 0;
        ret = block_index(s, off, &idx);
        if (ret < 0) {
            break;
        }
        switch (s->bat[idx] & VHDX_BAT_STATE_MASK) {
        case VHDX_PAYLOAD_FULLY_PRESENT:
            ret = visible_write(node, s);
            if (ret == 0) {
                ret = present_host(s, idx, in, &host);
            }
            if (ret == 0) {
                ret = io_pwrite_zeroes(node->file, host, n,
                                       (flags & QIMG_ZERO_MAY_UNMAP) != 0);
            }
            break;
        case VHDX_PAYLOAD_NOT_PRESENT:
        case VHDX_PAYLOAD_UNDEFINED:
        case VHDX_PAYLOAD_ZERO:
        case VHDX_PAYLOAD_UNMAPPED:
        case VHDX_PAYLOAD_UNMAPPED_V095:
            /* Reads as zero already. */
            break;
        default:
            ret = error_set(EIO, "VHDX BAT entry %" PRIu64 " has an "
                            "invalid state", idx);
            break;
        }
        off += n;
        len -= n;
    }
    return ret;
}
