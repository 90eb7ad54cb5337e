/*
 * The vhdx format driver: open (headers, log replay, region table,
 * metadata, BAT), reads, info and check; guest writes are in
 * guest_write.c.  Differencing images are refused, as QEMU refuses them,
 * so no write ever needs a sector bitmap.
 *
 * Invariants after open: the metadata values are validated (block size a
 * power of two in 1..256 MiB, 512-byte logical sectors, disk at most
 * 64 TiB), the BAT holds geo.bat_entries entries and lies inside the
 * file, and (unless opened for a check) every present payload block lies
 * inside the file and overlaps none of the log, BAT and metadata regions.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "core/error.h"
#include "driver.h"
#include "formats/vhdx/vhdx.h"
#include "util/checked.h"
#include "util/endian.h"

static int vhdx_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    if (len >= 8 && memcmp(buf, VHDX_FILE_ID_SIGNATURE, 8) == 0) {
        return 100;
    }
    return 0;
}

static int open_fail(int errnum, const char *filename)
{
    return error_set_errno(errnum, "Could not open '%s'", filename);
}

static int read_at(struct qimg_node *node, void *buf, size_t len,
                   uint64_t off)
{
    int ret = io_pread(node->file, buf, len, off);
    if (ret < 0) {
        return error_set_errno(-ret, "Could not open '%s'", node->filename);
    }
    return 0;
}

int vhdx_guid_generate(struct vhdx_guid *g)
{
    size_t got = 0;
    while (got < sizeof(g->b)) {
        ssize_t n = getrandom(g->b + got, sizeof(g->b) - got, 0);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return error_set_errno(errno, "Could not generate a GUID");
        }
        got += (size_t)n;
    }
    g->b[7] = (uint8_t)((g->b[7] & 0x0f) | 0x40);
    g->b[8] = (uint8_t)((g->b[8] & 0x3f) | 0x80);
    return 0;
}

/*
 * Write the next header into the slot that is not current (2.2.2.1): the
 * sequence number one higher, this session's file write GUID, a new data
 * write GUID when asked, the given log GUID.  Synced, then current.
 */
static int vhdx_update_header(struct qimg_node *node, struct vhdx_state *s,
                              const struct vhdx_guid *session,
                              bool new_data_guid,
                              const struct vhdx_guid *log_guid)
{
    struct vhdx_header h = s->hdr[s->cur];
    if (h.sequence == UINT64_MAX) {
        return error_set(EINVAL, "VHDX header sequence number overflow");
    }
    h.sequence++;
    h.file_write_guid = *session;
    if (new_data_guid) {
        int ret = vhdx_guid_generate(&h.data_write_guid);
        if (ret < 0) {
            return ret;
        }
    }
    h.log_guid = *log_guid;
    uint8_t buf[VHDX_HEADER_SIZE];
    vhdx_header_encode(&h, buf);
    int next = s->cur ^ 1;
    uint64_t off = next == 0 ? VHDX_HEADER1_OFFSET : VHDX_HEADER2_OFFSET;
    int ret = io_pwrite(node->file, buf, sizeof(buf), off);
    if (ret == 0) {
        ret = node_sync(node, node->file);
    }
    if (ret < 0) {
        return error_set_errno(-ret, "Could not update the VHDX header");
    }
    s->hdr[next] = h;
    s->cur = next;
    return 0;
}

/* Both slots, so that the older copy is current too ([QEMU] does so). */
int vhdx_update_headers(struct qimg_node *node, struct vhdx_state *s,
                               const struct vhdx_guid *session,
                               bool new_data_guid,
                               const struct vhdx_guid *log_guid)
{
    int ret = vhdx_update_header(node, s, session, new_data_guid, log_guid);
    if (ret == 0) {
        ret = vhdx_update_header(node, s, session, new_data_guid, log_guid);
    }
    return ret;
}

/* Read both headers and pick the valid one with the higher sequence. */
static int vhdx_parse_headers(struct qimg_node *node, struct vhdx_state *s)
{
    uint8_t buf[VHDX_HEADER_SIZE];
    bool valid[2];
    for (int i = 0; i < 2; i++) {
        int ret = read_at(node, buf, sizeof(buf),
                          i == 0 ? VHDX_HEADER1_OFFSET : VHDX_HEADER2_OFFSET);
        if (ret < 0) {
            return ret;
        }
        valid[i] = vhdx_header_decode(buf, sizeof(buf), &s->hdr[i]);
    }
    if (valid[0] && valid[1]) {
        /* [QEMU] two valid headers with one sequence number: neither. */
        if (s->hdr[0].sequence == s->hdr[1].sequence) {
            valid[0] = valid[1] = false;
        } else {
            s->cur = s->hdr[0].sequence > s->hdr[1].sequence ? 0 : 1;
        }
    } else if (valid[0] || valid[1]) {
        s->cur = valid[0] ? 0 : 1;
    }
    if (!valid[0] && !valid[1]) {
        return error_set(EINVAL, "No valid VHDX header found");
    }
    const struct vhdx_header *h = &s->hdr[s->cur];
    /* 2.2.2: log version 0; the log 1 MiB aligned past the headers. */
    if (h->log_version != 0 || h->log_offset % VHDX_MiB ||
        h->log_offset < VHDX_HEADER_SECTION_END) {
        return open_fail(EINVAL, node->filename);
    }
    vhdx_region_add(&s->known, h->log_offset, h->log_length);
    return 0;
}

/* Replay a log that needs it, or refuse it read-only as QEMU does. */
static int vhdx_open_log(struct qimg_node *node, struct vhdx_state *s)
{
    struct vhdx_log_seq *seq = NULL;
    int ret = vhdx_log_find(node->file, &s->hdr[s->cur], &seq);
    if (ret == -EINVAL) {
        return open_fail(EINVAL, node->filename);
    }
    if (ret <= 0) {
        return ret;
    }
    if (!node->writable) {
        vhdx_log_seq_free(seq);
        return error_set(EPERM, "VHDX image file '%s' opened read-only, "
                         "but contains a log that needs to be replayed\n"
                         "To replay the log, run:\n"
                         "qemu-img check -r all '%s'",
                         node->filename, node->filename);
    }
    /*
     * 2.2.2.1: a new file write GUID in both headers before the file is
     * written, then the replay, then the headers without the log.  [QEMU]
     * does the same, so a replay that fails leaves the same headers.
     */
    ret = vhdx_guid_generate(&s->session);
    if (ret == 0) {
        struct vhdx_guid log_guid = s->hdr[s->cur].log_guid;
        ret = vhdx_update_headers(node, s, &s->session, false, &log_guid);
    }
    if (ret == 0) {
        ret = vhdx_log_replay(node->file, seq);
    }
    vhdx_log_seq_free(seq);
    if (ret == -EINVAL) {
        return open_fail(EINVAL, node->filename);
    }
    if (ret < 0) {
        return ret;
    }
    static const struct vhdx_guid zero;
    ret = vhdx_update_headers(node, s, &s->session, true, &zero);
    if (ret < 0) {
        return ret;
    }
    s->log_replayed = true;
    return 0;
}

static int meta_read(void *opaque, void *buf, size_t len, uint64_t off)
{
    struct qimg_node *node = opaque;
    struct vhdx_state *s = node->opaque;
    /* The region's end does not overflow (vhdx_region_table_decode). */
    return io_pread(node->file, buf, len, s->regions.meta_offset + off);
}

/*
 * The bytes of the disk that BAT entry i maps: a whole block but for the
 * disk's last one, which may be shorter (a sector bitmap entry: a whole
 * block, as no valid image has one present).
 */
static uint64_t entry_bytes(const struct vhdx_state *s, uint64_t i)
{
    uint64_t bs = s->meta.block_size;
    uint64_t per_chunk = s->geo.chunk_ratio + 1;
    if (i % per_chunk == s->geo.chunk_ratio) {
        return bs;
    }
    uint64_t b = i / per_chunk * s->geo.chunk_ratio + i % per_chunk;
    /* b < data_blocks, so b * bs < virtual_size (no overflow). */
    return min_u64(bs, s->meta.virtual_size - b * bs);
}

/* One problem of vhdx_check_bat: to report when given, else a warning. */
static void bat_problem(qimg_check_message_fn report, void *opaque,
                        const char *line, int64_t *errors)
{
    if (report) {
        report(line, QIMG_CHECK_LINE_ERROR, opaque);
    } else {
        warn_report("%s", line);
    }
    (*errors)++;
}

/*
 * [QEMU] the open-time and check-time test of every present block: inside
 * the file, clear of the log, BAT and metadata.  Each problem is reported
 * (to report when given, else as a warning) and counted in *errors.
 * [QEMU] 7.2 measures the file in whole 512-byte sectors, and a block in
 * the bytes of the disk it maps (the last one may end past the file's end
 * by what the disk does not use).
 */
static int vhdx_check_bat(struct qimg_node *node, struct vhdx_state *s,
                          qimg_check_message_fn report, void *opaque,
                          int64_t *errors)
{
    int64_t size = io_get_size(node->file);
    if (size < 0) {
        return (int)size;
    }
    uint64_t fsize = ((uint64_t)size + 511) & ~(uint64_t)511;
    uint32_t bs = s->meta.block_size;
    for (uint64_t i = 0; i < s->geo.bat_entries; i++) {
        uint64_t e = s->bat[i];
        uint32_t state = (uint32_t)(e & VHDX_BAT_STATE_MASK);
        if (state != VHDX_PAYLOAD_FULLY_PRESENT &&
            state != VHDX_PAYLOAD_PARTIALLY_PRESENT) {
            continue;
        }
        uint64_t off = e & VHDX_BAT_OFFSET_MASK, end;
        uint64_t bytes = entry_bytes(s, i);
        char *line = NULL;
        bool overflow = add_overflow_u64(off, bs, &end);
        if (overflow) {
            /* [QEMU] reports the overflow, then the entry past the end. */
            if (asprintf(&line, "VHDX BAT entry %" PRIu64 " offset "
                         "overflow.", i) < 0) {
                return error_set(ENOMEM, "Out of memory");
            }
            bat_problem(report, opaque, line, errors);
            free(line);
            line = NULL;
            if (!report) {
                /* [QEMU] an open says no more about this entry. */
                continue;
            }
        }
        if (overflow || off >= fsize) {
            if (asprintf(&line, "VHDX BAT entry %" PRIu64 " start offset %"
                         PRIu64 " points after end of file (%" PRIu64
                         "). Image has probably been truncated.", i, off,
                         fsize) < 0) {
                return error_set(ENOMEM, "Out of memory");
            }
        } else if (off + bytes > fsize) {
            if (asprintf(&line, "VHDX BAT entry %" PRIu64 " end offset %"
                         PRIu64 " points after end of file (%" PRIu64
                         "). Image has probably been truncated.", i,
                         off + bytes - 1, fsize) < 0) {
                return error_set(ENOMEM, "Out of memory");
            }
        }
        if (line) {
            bat_problem(report, opaque, line, errors);
            free(line);
            continue;
        }
        /* The overlap line is reported by vhdx_region_check itself. */
        if (vhdx_region_check(&s->known, off, bs) < 0) {
            (*errors)++;
        }
    }
    return 0;
}

static int vhdx_open_bat(struct qimg_node *node, struct vhdx_state *s)
{
    uint64_t bytes = s->geo.bat_entries * 8;
    if (bytes > s->regions.bat_length) {
        return open_fail(EINVAL, node->filename);
    }
    int64_t fsize = io_get_size(node->file);
    if (fsize < 0) {
        return (int)fsize;
    }
    /*
     * The BAT is read whole; it must be in the file, so that a small
     * hostile file cannot make qimg allocate for a huge disk.
     */
    uint64_t end;
    if (add_overflow_u64(s->regions.bat_offset, bytes, &end) ||
        end > (uint64_t)fsize) {
        return error_set(EINVAL, "Could not open '%s': the VHDX BAT lies "
                         "past the end of the file", node->filename);
    }
    s->bat = malloc(bytes ? bytes : 1);
    if (!s->bat) {
        return error_set(ENOMEM, "Out of memory");
    }
    int ret = read_at(node, s->bat, bytes, s->regions.bat_offset);
    if (ret < 0) {
        return ret;
    }
    for (uint64_t i = 0; i < s->geo.bat_entries; i++) {
        s->bat[i] = load_le64(&s->bat[i]);
    }
    return 0;
}

static void state_free(struct vhdx_state *s)
{
    if (s) {
        free(s->bat);
        free(s);
    }
}

static int vhdx_open(struct qimg_node *node, unsigned flags)
{
    struct vhdx_state *s = calloc(1, sizeof(*s));
    uint8_t *table = NULL;
    if (!s) {
        return error_set(ENOMEM, "Out of memory");
    }
    node->opaque = s;
    uint8_t sig[8];
    int ret = read_at(node, sig, sizeof(sig), 0);
    if (ret < 0) {
        goto fail;
    }
    if (memcmp(sig, VHDX_FILE_ID_SIGNATURE, 8) != 0) {
        ret = open_fail(EINVAL, node->filename);
        goto fail;
    }
    ret = vhdx_parse_headers(node, s);
    if (ret < 0) {
        goto fail;
    }
    ret = vhdx_open_log(node, s);
    if (ret < 0) {
        goto fail;
    }

    table = malloc(VHDX_REGION_TABLE_SIZE);
    if (!table) {
        ret = error_set(ENOMEM, "Out of memory");
        goto fail;
    }
    /* [QEMU] reads the first region table only. */
    ret = read_at(node, table, VHDX_REGION_TABLE_SIZE,
                  VHDX_REGION_TABLE1_OFFSET);
    if (ret < 0) {
        goto fail;
    }
    ret = vhdx_region_table_decode(table, VHDX_REGION_TABLE_SIZE,
                                   node->filename, &s->known, &s->regions);
    if (ret < 0) {
        goto fail;
    }
    ret = read_at(node, table, VHDX_METADATA_TABLE_SIZE,
                  s->regions.meta_offset);
    if (ret < 0) {
        goto fail;
    }
    ret = vhdx_metadata_decode(table, VHDX_METADATA_TABLE_SIZE,
                               s->regions.meta_length, node->filename,
                               meta_read, node, &s->meta);
    if (ret < 0) {
        goto fail;
    }
    vhdx_geometry(&s->meta, &s->geo);
    ret = vhdx_open_bat(node, s);
    if (ret < 0) {
        goto fail;
    }
    if (!(flags & QIMG_OPEN_CHECK)) {
        int64_t errors = 0;
        ret = vhdx_check_bat(node, s, NULL, NULL, &errors);
        if (ret < 0) {
            goto fail;
        }
        if (errors) {
            ret = open_fail(EINVAL, node->filename);
            goto fail;
        }
        s->bat_checked = true;
    }
    /* [QEMU] each open's log entries start at the log's start, from 1. */
    s->log_pos = 0;
    s->log_seq = 1;
    node->size = s->meta.virtual_size;
    free(table);
    return 0;

fail:
    free(table);
    state_free(s);
    node->opaque = NULL;
    return ret;
}

static void vhdx_close(struct qimg_node *node)
{
    state_free(node->opaque);
    node->opaque = NULL;
}

static int vhdx_pread(struct qimg_node *node, void *buf, size_t len,
                      uint64_t off)
{
    struct vhdx_state *s = node->opaque;
    uint8_t *p = buf;
    uint64_t bs = s->meta.block_size;
    while (len > 0) {
        uint64_t block = off / bs;
        uint64_t in = off % bs;
        size_t n = len;
        if (n > bs - in) {
            n = (size_t)(bs - in);
        }
        uint64_t idx = vhdx_bat_index(&s->geo, block);
        if (idx >= s->geo.bat_entries) {
            return error_set(EIO, "VHDX read beyond the BAT");
        }
        uint64_t e = s->bat[idx];
        int ret;
        switch (e & VHDX_BAT_STATE_MASK) {
        case VHDX_PAYLOAD_NOT_PRESENT:
        case VHDX_PAYLOAD_UNDEFINED:
        case VHDX_PAYLOAD_UNMAPPED:
        case VHDX_PAYLOAD_UNMAPPED_V095:
        case VHDX_PAYLOAD_ZERO:
            memset(p, 0, n);
            break;
        case VHDX_PAYLOAD_FULLY_PRESENT:
        case VHDX_PAYLOAD_PARTIALLY_PRESENT: {
            /*
             * Inside the file: checked at open, but not for a check, so
             * the sum is checked here too.
             */
            uint64_t host;
            if (add_overflow_u64(e & VHDX_BAT_OFFSET_MASK, in, &host)) {
                return error_set(EIO, "VHDX BAT entry %" PRIu64 " points "
                                 "past the end of the file", idx);
            }
            ret = io_pread(node->file, p, n, host);
            if (ret < 0) {
                return ret;
            }
            break;
        }
        default:
            return error_set(EIO, "VHDX BAT entry %" PRIu64 " has an "
                             "invalid state", idx);
        }
        p += n;
        off += n;
        len -= n;
    }
    return 0;
}

/*
 * [QEMU] 7.2's vhdx driver has no block status: every byte reads as
 * allocated data with no host offset, and qemu-img's map and convert
 * show it so.
 */
static int vhdx_block_status(struct qimg_node *node, uint64_t off,
                             uint64_t len, uint64_t *pnum,
                             uint64_t *host_off)
{
    (void)node;
    (void)off;
    *pnum = len;
    *host_off = 0;
    return BS_DATA | BS_ALLOCATED;
}

static int vhdx_get_info(struct qimg_node *node, struct qimg_image_info *info)
{
    const struct vhdx_state *s = node->opaque;
    info->cluster_size = s->meta.block_size;
    return 0;
}

static int vhdx_check(struct qimg_node *node, unsigned flags,
                      qimg_check_message_fn report, void *opaque,
                      struct qimg_check_result *res)
{
    (void)flags;
    struct vhdx_state *s = node->opaque;
    if (s->log_replayed) {
        res->corruptions_fixed++;
    }
    return vhdx_check_bat(node, s, report, opaque, &res->corruptions);
}

static int vhdx_flush(struct qimg_node *node)
{
    return node_sync(node, node->file);
}

const struct qimg_format_ops format_vhdx = {
    .name = "vhdx",
    .probe = vhdx_probe,
    .open = vhdx_open,
    .close = vhdx_close,
    .pread = vhdx_pread,
    .pwrite = vhdx_pwrite,
    .pwrite_zeroes = vhdx_pwrite_zeroes,
    .flush = vhdx_flush,
    .block_status = vhdx_block_status,
    .get_info = vhdx_get_info,
    .check = vhdx_check,
    .create_opts = vhdx_create_opts,
    .create = vhdx_create,
};
