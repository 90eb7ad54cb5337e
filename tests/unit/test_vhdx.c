/*
 * vhdx codecs on byte buffers: CRC-32C, headers, region tables, the
 * metadata table and items, the region overlap list, BAT geometry, and
 * the log entries guest writes make (encoded, found and replayed).
 * Fixtures are the bytes "qemu-img create -f vhdx -o block_size=1M x 2M"
 * (7.2) wrote, so the encoders are checked against QEMU's output.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "formats/vhdx/vhdx.h"
#include "qimg/qimg.h"
#include "tap.h"
#include "util/crc32c.h"
#include "util/endian.h"

/* Header 1 (the rest of its 4 KiB is zero). */
static const uint8_t qemu_header[80] = {
    0x68, 0x65, 0x61, 0x64, 0x8d, 0xa3, 0x01, 0x02, 0xf9, 0x67, 0xd2, 0x31,
    0x00, 0x00, 0x00, 0x00, 0x89, 0x5d, 0x67, 0x3e, 0x9f, 0xa6, 0x42, 0x58,
    0x82, 0xd3, 0x75, 0x61, 0x50, 0xe0, 0x7a, 0x31, 0x9f, 0x2e, 0x3f, 0x1d,
    0x8a, 0xf9, 0x43, 0x0d, 0x93, 0xf3, 0xae, 0x2f, 0xb2, 0x65, 0x01, 0xe6,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x10, 0x00,
    0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00,
};

/* Region table 1 (the rest of its 64 KiB is zero). */
static const uint8_t qemu_regions[80] = {
    0x72, 0x65, 0x67, 0x69, 0x83, 0xce, 0x6f, 0x2c, 0x02, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42,
    0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08, 0x00, 0x00, 0x20, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x06, 0xa2, 0x7c, 0x8b, 0x90, 0x47, 0x9a, 0x4b, 0xb8, 0xfe, 0x57, 0x5f,
    0x05, 0x0f, 0x88, 0x6e, 0x00, 0x00, 0x30, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00,
};

/* The metadata table (the rest of its 64 KiB is zero). */
static const uint8_t qemu_meta_table[192] = {
    0x6d, 0x65, 0x74, 0x61, 0x64, 0x61, 0x74, 0x61, 0x00, 0x00, 0x05, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x37, 0x67, 0xa1, 0xca,
    0x36, 0xfa, 0x43, 0x4d, 0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b,
    0x00, 0x00, 0x01, 0x00, 0x08, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x24, 0x42, 0xa5, 0x2f, 0x1b, 0xcd, 0x76, 0x48,
    0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8, 0x08, 0x00, 0x01, 0x00,
    0x08, 0x00, 0x00, 0x00, 0x06, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xab, 0x12, 0xca, 0xbe, 0xe6, 0xb2, 0x23, 0x45, 0x93, 0xef, 0xc3, 0x09,
    0xe0, 0x00, 0xc7, 0x46, 0x10, 0x00, 0x01, 0x00, 0x10, 0x00, 0x00, 0x00,
    0x06, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1d, 0xbf, 0x41, 0x81,
    0x6f, 0xa9, 0x09, 0x47, 0xba, 0x47, 0xf2, 0x33, 0xa8, 0xfa, 0xab, 0x5f,
    0x20, 0x00, 0x01, 0x00, 0x04, 0x00, 0x00, 0x00, 0x06, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0xc7, 0x48, 0xa3, 0xcd, 0x5d, 0x44, 0x71, 0x44,
    0x9c, 0xc9, 0xe9, 0x88, 0x52, 0x51, 0xc5, 0x56, 0x24, 0x00, 0x01, 0x00,
    0x04, 0x00, 0x00, 0x00, 0x06, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
};

/* The items at 64 KiB into the region. */
static const uint8_t qemu_meta_items[40] = {
    0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x20, 0x00,
    0x00, 0x00, 0x00, 0x00, 0xd2, 0x2f, 0x65, 0x3e, 0x2a, 0x17, 0x40, 0x8b,
    0x9f, 0x6a, 0xaf, 0x11, 0x99, 0x20, 0x95, 0x9f, 0x00, 0x02, 0x00, 0x00,
    0x00, 0x02, 0x00, 0x00,
};

/* The metadata region in memory: the table, then the items at 64 KiB. */
struct meta_buf {
    uint8_t *region;
    size_t len;
};

static int meta_read(void *opaque, void *buf, size_t len, uint64_t off)
{
    struct meta_buf *m = opaque;
    if (off > m->len || len > m->len - off) {
        return -EIO;
    }
    memcpy(buf, m->region + off, len);
    return 0;
}

static void test_crc32c(void)
{
    /* The standard check value of CRC-32C. */
    tap_eq_u64(crc32c_update(0, "123456789", 9), 0xe3069283, "crc32c check");
    uint32_t part = crc32c_update(0, "1234", 4);
    tap_eq_u64(crc32c_update(part, "56789", 5), 0xe3069283,
               "crc32c in pieces");
    tap_eq_u64(crc32c_update(0, "", 0), 0, "crc32c of nothing");
}

static void test_header(void)
{
    uint8_t *buf = calloc(1, VHDX_HEADER_SIZE);
    uint8_t *out = calloc(1, VHDX_HEADER_SIZE);
    memcpy(buf, qemu_header, sizeof(qemu_header));
    struct vhdx_header h;
    TAP_OK(vhdx_header_decode(buf, VHDX_HEADER_SIZE, &h));
    tap_eq_u64(h.sequence, 0x31d267f9, "header sequence");
    tap_eq_u64(h.version, 1, "header version");
    tap_eq_u64(h.log_version, 0, "header log version");
    tap_eq_u64(h.log_length, VHDX_MiB, "header log length");
    tap_eq_u64(h.log_offset, VHDX_MiB, "header log offset");
    TAP_OK(vhdx_guid_is_zero(&h.log_guid));
    TAP_OK(!vhdx_guid_is_zero(&h.data_write_guid));
    vhdx_header_encode(&h, out);
    TAP_OK(memcmp(buf, out, VHDX_HEADER_SIZE) == 0);

    /* A flipped bit anywhere in the 4 KiB breaks the checksum. */
    buf[4000] ^= 1;
    TAP_OK(!vhdx_header_decode(buf, VHDX_HEADER_SIZE, &h));
    buf[4000] ^= 1;
    /* Version 2 with a good checksum is still not a valid header. */
    memcpy(out, buf, VHDX_HEADER_SIZE);
    store_le16(out + 66, 2);
    store_le32(out + 4, vhdx_checksum(out, VHDX_HEADER_SIZE, 4));
    TAP_OK(!vhdx_header_decode(out, VHDX_HEADER_SIZE, &h));
    /* A wrong signature, and a short buffer. */
    memcpy(out, buf, VHDX_HEADER_SIZE);
    out[0] = 'H';
    store_le32(out + 4, vhdx_checksum(out, VHDX_HEADER_SIZE, 4));
    TAP_OK(!vhdx_header_decode(out, VHDX_HEADER_SIZE, &h));
    TAP_OK(!vhdx_header_decode(buf, VHDX_HEADER_SIZE - 1, &h));
    free(buf);
    free(out);
}

static void test_regions(void)
{
    uint8_t *buf = calloc(1, VHDX_REGION_TABLE_SIZE);
    uint8_t *out = calloc(1, VHDX_REGION_TABLE_SIZE);
    memcpy(buf, qemu_regions, sizeof(qemu_regions));
    struct vhdx_region_list list = {0};
    struct vhdx_regions r;
    vhdx_region_add(&list, VHDX_MiB, VHDX_MiB); /* the log */
    tap_eq_u64((uint64_t)-vhdx_region_table_decode(
                   buf, VHDX_REGION_TABLE_SIZE, "x", &list, &r), 0,
               "qemu region table decodes");
    tap_eq_u64(r.bat_offset, 2 * VHDX_MiB, "bat offset");
    tap_eq_u64(r.bat_length, VHDX_MiB, "bat length");
    tap_eq_u64(r.meta_offset, 3 * VHDX_MiB, "metadata offset");
    tap_eq_u64(r.meta_length, VHDX_MiB, "metadata length");
    tap_eq_u64(list.count, 3, "log, bat and metadata known");
    vhdx_region_table_encode(&r, out);
    TAP_OK(memcmp(buf, out, VHDX_REGION_TABLE_SIZE) == 0);

    bool old = warn_mute(true);
    /* The log over the BAT: an overlap. */
    struct vhdx_region_list clash = {0};
    vhdx_region_add(&clash, 2 * VHDX_MiB, VHDX_MiB);
    tap_eq_u64((uint64_t)-vhdx_region_table_decode(
                   buf, VHDX_REGION_TABLE_SIZE, "x", &clash, &r), EINVAL,
               "overlap refused");
    /* A bad checksum, a huge count, an unaligned region. */
    memcpy(out, buf, VHDX_REGION_TABLE_SIZE);
    out[100] = 1;
    struct vhdx_region_list l2 = {0};
    tap_eq_u64((uint64_t)-vhdx_region_table_decode(
                   out, VHDX_REGION_TABLE_SIZE, "x", &l2, &r), EINVAL,
               "region crc");
    memcpy(out, buf, VHDX_REGION_TABLE_SIZE);
    store_le32(out + 8, 2048);
    store_le32(out + 4, vhdx_checksum(out, VHDX_REGION_TABLE_SIZE, 4));
    l2.count = 0;
    tap_eq_u64((uint64_t)-vhdx_region_table_decode(
                   out, VHDX_REGION_TABLE_SIZE, "x", &l2, &r), EINVAL,
               "region count");
    memcpy(out, buf, VHDX_REGION_TABLE_SIZE);
    store_le64(out + 32, 2 * VHDX_MiB + 512);
    store_le32(out + 4, vhdx_checksum(out, VHDX_REGION_TABLE_SIZE, 4));
    l2.count = 0;
    tap_eq_u64((uint64_t)-vhdx_region_table_decode(
                   out, VHDX_REGION_TABLE_SIZE, "x", &l2, &r), EINVAL,
               "region alignment");
    /* An unknown required region: not supported. */
    memcpy(out, buf, VHDX_REGION_TABLE_SIZE);
    store_le32(out + 8, 3);
    memset(out + 80, 0x5a, 16);
    store_le64(out + 96, 8 * VHDX_MiB);
    store_le32(out + 104, VHDX_MiB);
    store_le32(out + 108, 1);
    store_le32(out + 4, vhdx_checksum(out, VHDX_REGION_TABLE_SIZE, 4));
    l2.count = 0;
    tap_eq_u64((uint64_t)-vhdx_region_table_decode(
                   out, VHDX_REGION_TABLE_SIZE, "x", &l2, &r), ENOTSUP,
               "unknown required region");
    /* ... and the same region not required is skipped. */
    store_le32(out + 108, 0);
    store_le32(out + 4, vhdx_checksum(out, VHDX_REGION_TABLE_SIZE, 4));
    l2.count = 0;
    tap_eq_u64((uint64_t)-vhdx_region_table_decode(
                   out, VHDX_REGION_TABLE_SIZE, "x", &l2, &r), 0,
               "unknown optional region");
    /* The overlap list: touching ranges do not overlap. */
    struct vhdx_region_list l3 = {0};
    vhdx_region_add(&l3, 10, 10);
    tap_eq_u64((uint64_t)-vhdx_region_check(&l3, 0, 10), 0, "touch below");
    tap_eq_u64((uint64_t)-vhdx_region_check(&l3, 20, 5), 0, "touch above");
    tap_eq_u64((uint64_t)-vhdx_region_check(&l3, 19, 1), EINVAL, "inside");
    tap_eq_u64((uint64_t)-vhdx_region_check(&l3, 0, UINT64_MAX), EINVAL,
               "huge range");
    warn_mute(old);
    free(buf);
    free(out);
}

static int decode_meta(struct meta_buf *m, struct vhdx_metadata *md)
{
    return vhdx_metadata_decode(m->region, VHDX_METADATA_TABLE_SIZE,
                                (uint32_t)m->len, "x", meta_read, m, md);
}

static void test_metadata(void)
{
    struct meta_buf m = {calloc(1, VHDX_MiB), VHDX_MiB};
    memcpy(m.region, qemu_meta_table, sizeof(qemu_meta_table));
    memcpy(m.region + 65536, qemu_meta_items, sizeof(qemu_meta_items));
    struct vhdx_metadata md;
    tap_eq_u64((uint64_t)-decode_meta(&m, &md), 0, "qemu metadata");
    tap_eq_u64(md.block_size, VHDX_MiB, "block size");
    tap_eq_u64(md.virtual_size, 2 * VHDX_MiB, "virtual size");
    tap_eq_u64(md.logical_sector_size, 512, "logical sector");
    tap_eq_u64(md.physical_sector_size, 512, "physical sector");
    TAP_OK(!md.has_parent_locator);

    struct vhdx_geometry g;
    vhdx_geometry(&md, &g);
    tap_eq_u64(g.chunk_ratio, 4096, "chunk ratio at 1 MiB");
    tap_eq_u64(g.data_blocks, 2, "data blocks");
    tap_eq_u64(g.bat_entries, 2, "bat entries");
    md.virtual_size = 4097 * VHDX_MiB;
    vhdx_geometry(&md, &g);
    tap_eq_u64(g.bat_entries, 4098, "a sector bitmap entry after 4096");
    tap_eq_u64(vhdx_bat_index(&g, 4096), 4097, "bat index past bitmap");
    md.block_size = 256 * VHDX_MiB;
    md.virtual_size = VHDX_MAX_IMAGE_SIZE;
    vhdx_geometry(&md, &g);
    tap_eq_u64(g.chunk_ratio, 16, "chunk ratio at 256 MiB");
    tap_eq_u64(g.data_blocks, 262144, "data blocks at 64 TiB");
    tap_eq_u64(g.bat_entries, 262144 + 16383, "bat entries at 64 TiB");

    uint8_t *save = malloc(VHDX_MiB);
    memcpy(save, m.region, VHDX_MiB);
    struct {
        size_t off;
        uint32_t value;
        int errnum;
        const char *name;
    } cases[] = {
        {65536, 0x80000000u, EINVAL, "block size 2 GiB"},
        {65536, 0x180000, EINVAL, "block size not a power of two"},
        {65536, 0x80000, EINVAL, "block size 512 KiB"},
        {65536 + 4, 2, EINVAL, "has parent, no locator"},
        {65536 + 32, 4096, ENOTSUP, "logical sector 4096"},
        {65536 + 32, 0, ENOTSUP, "logical sector 0"},
        {65536 + 12, 0x4000, EINVAL, "disk of 64 TiB + 1 MiB"},
        {10, 2048, EINVAL, "2048 entries"},
        {48, 0xfffff0, EINVAL, "item past the region"},
        {52, 4, EINVAL, "item too short"},
        {0, 0, EINVAL, "signature"},
    };
    bool old = warn_mute(true);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        memcpy(m.region, save, VHDX_MiB);
        store_le32(m.region + cases[i].off, cases[i].value);
        tap_eq_u64((uint64_t)-decode_meta(&m, &md), (uint64_t)cases[i].errnum,
                   cases[i].name);
    }
    /* A duplicate item, and an unknown required one. */
    memcpy(m.region, save, VHDX_MiB);
    memcpy(m.region + 64, m.region + 32, 16);
    tap_eq_u64((uint64_t)-decode_meta(&m, &md), EINVAL, "duplicate item");
    memcpy(m.region, save, VHDX_MiB);
    memset(m.region + 32, 0x77, 16);
    tap_eq_u64((uint64_t)-decode_meta(&m, &md), ENOTSUP,
               "unknown required item");
    memcpy(m.region, save, VHDX_MiB);
    store_le32(m.region + 56, 0);
    memset(m.region + 32, 0x77, 16);
    tap_eq_u64((uint64_t)-decode_meta(&m, &md), EINVAL,
               "unknown optional item, no file parameters");
    warn_mute(old);
    free(save);
    free(m.region);
}

/*
 * The first log entry "qemu-img convert -O vhdx -o block_size=1M" (7.2)
 * wrote for a 5 MiB disk: its header sector's first 96 bytes (the rest
 * is zero) and the BAT sector it logs (entry 0 present at 8 MiB, entries
 * 1-4 ZERO, the rest zero).
 */
static const uint8_t qemu_log_head[96] = {
    0x6c, 0x6f, 0x67, 0x65, 0xe4, 0x3b, 0x62, 0x7d, 0x00, 0x20, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x70, 0xc0, 0x8d, 0x3b,
    0x23, 0x06, 0x49, 0x6f, 0x85, 0xed, 0x17, 0x41, 0xe0, 0xf6, 0x74, 0x61,
    0x00, 0x00, 0x90, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x90, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x64, 0x65, 0x73, 0x63, 0x00, 0x00, 0x00, 0x00,
    0x06, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x20, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
};

static void test_log_entry(void)
{
    uint8_t sector[VHDX_LOG_SECTOR] = {0};
    store_le64(sector, 0x800006);
    for (int i = 1; i <= 4; i++) {
        store_le64(sector + 8 * i, VHDX_PAYLOAD_ZERO);
    }
    struct vhdx_log_sector_entry e = {
        .seq = 1,
        .tail = 0,
        .flushed_file_offset = 9 * VHDX_MiB,
        .last_file_offset = 9 * VHDX_MiB,
        .file_offset = 2 * VHDX_MiB,
        .sector = sector,
    };
    memcpy(e.guid.b, qemu_log_head + 32, 16);
    uint8_t *out = calloc(1, VHDX_LOG_ONE_SECTOR_ENTRY);
    uint8_t *want = calloc(1, VHDX_LOG_ONE_SECTOR_ENTRY);
    memcpy(want, qemu_log_head, sizeof(qemu_log_head));
    uint8_t *ds = want + VHDX_LOG_SECTOR;
    memcpy(ds, "data", 4);
    memcpy(ds + 8, sector + 8, VHDX_LOG_DATA_BYTES);
    store_le32(ds + 4092, 1);
    vhdx_log_sector_entry_encode(&e, out);
    TAP_OK(memcmp(out, want, VHDX_LOG_ONE_SECTOR_ENTRY) == 0);

    /*
     * Written where it wraps round the end of a 1 MiB log, it is found
     * (with its GUID in the header) and replayed: the sector lands at its
     * offset and the file grows to the recorded size.
     */
    struct qimg_io *io = NULL;
    uint8_t *img = calloc(1, 3 * VHDX_MiB);
    TAP_OK(io_mem_open("log", img, 3 * VHDX_MiB, IO_RDWR, &io) == 0);
    uint32_t pos = VHDX_MiB - VHDX_LOG_SECTOR;
    e.tail = pos;
    /* The file is 3 MiB long when the entry is written. */
    e.flushed_file_offset = 3 * VHDX_MiB;
    vhdx_log_sector_entry_encode(&e, out);
    TAP_OK(vhdx_log_write(io, VHDX_MiB, VHDX_MiB, pos, out,
                          VHDX_LOG_ONE_SECTOR_ENTRY) == 0);
    uint8_t back[4];
    TAP_OK(io_pread(io, back, 4, VHDX_MiB) == 0 &&
           memcmp(back, "data", 4) == 0);
    struct vhdx_header h = {
        .log_length = VHDX_MiB,
        .log_offset = VHDX_MiB,
        .log_guid = e.guid,
    };
    struct vhdx_log_seq *seq = NULL;
    tap_eq_u64((uint64_t)vhdx_log_find(io, &h, &seq), 1, "entry found");
    if (seq) {
        TAP_OK(vhdx_log_replay(io, seq) == 0);
        vhdx_log_seq_free(seq);
    }
    uint8_t got[VHDX_LOG_SECTOR];
    TAP_OK(io_pread(io, got, sizeof(got), 2 * VHDX_MiB) == 0 &&
           memcmp(got, sector, sizeof(got)) == 0);
    tap_eq_u64((uint64_t)io_get_size(io), 9 * VHDX_MiB, "file grown");
    /* Another GUID in the header: nothing to replay. */
    h.log_guid.b[0] ^= 1;
    tap_eq_u64((uint64_t)vhdx_log_find(io, &h, &seq), 0, "other guid");
    io_close(io);
    free(img);
    free(out);
    free(want);
}

int main(void)
{
    test_crc32c();
    test_header();
    test_regions();
    test_metadata();
    test_log_entry();
    return tap_done();
}
