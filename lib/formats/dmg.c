/*
 * dmg: Apple UDIF disk images, read only, as QEMU reads them (its
 * probe, open-time checks, limits and messages are kept), with bzip2
 * chunks decoded by libbz2 (Debian's qemu-img lacks that module).
 *
 * Layout (big-endian): a 512-byte "koly" trailer at the end of the file
 * (QEMU looks for its magic in the 515 bytes that start 1023 bytes before
 * the end, so up to 511 trailing bytes are tolerated) gives the data
 * fork's offset, the guest size in sectors, and where the chunk tables
 * are: a resource fork (used when its length is not zero) or an XML
 * property list whose <data> elements hold them in base64.  A table
 * ("mish", 204-byte header) lists 40-byte chunk entries: type, guest
 * sector and sector count (relative to the table's first sector), and
 * the stored bytes' offset and length (relative to the data fork plus the
 * table's data offset).  Types: 0 and 2 read as zeros, 1 stored as is,
 * 0x80000005 zlib, 0x80000006 bzip2; comments and the end marker are
 * skipped, other types are left out with a warning and their sectors
 * fail to read, as in QEMU.
 */
#include <bzlib.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "core/error.h"
#include "driver.h"
#include "util/checked.h"
#include "util/endian.h"

#define DMG_SECTOR 512u
#define DMG_KOLY_SIZE 512u
/* The koly magic is looked for in this window (see the top comment). */
#define DMG_KOLY_WINDOW 515u

/* koly fields. */
#define KOLY_DATA_FORK_OFFSET 0x18
#define KOLY_RSRC_FORK_OFFSET 0x28
#define KOLY_RSRC_FORK_LENGTH 0x30
#define KOLY_PLIST_OFFSET 0xd8
#define KOLY_PLIST_LENGTH 0xe0
#define KOLY_SECTOR_COUNT 0x1ec

/* mish table layout. */
#define MISH_MAGIC 0x6d697368u
#define MISH_FIRST_SECTOR 8
#define MISH_DATA_OFFSET 0x18
#define MISH_HEADER_SIZE 204u
#define MISH_ENTRY_SIZE 40u

/* Chunk types. */
#define DMG_ZEROES 0x00000000u
#define DMG_RAW 0x00000001u
#define DMG_IGNORE 0x00000002u
#define DMG_ZLIB 0x80000005u
#define DMG_BZIP2 0x80000006u
#define DMG_LZFSE 0x80000007u
#define DMG_COMMENT 0x7ffffffeu
#define DMG_END 0xffffffffu

/*
 * QEMU's limits: a chunk's stored bytes, a non-zero chunk's sectors (so
 * one chunk's buffers are at most 64 MiB each), the property list.
 */
#define DMG_LENGTHS_MAX (64u << 20)
#define DMG_SECTORCOUNTS_MAX (DMG_LENGTHS_MAX / DMG_SECTOR)
#define DMG_PLIST_MAX (16u << 20)
/*
 * qimg's own bounds where QEMU has none: one resource of a resource fork
 * (QEMU allocates whatever its 32-bit length says) and the chunk count
 * (1 Mi chunks of at most 64 MiB each: 64 TiB; real images use 1 MiB
 * chunks), so a hostile table costs at most ~40 MiB.
 */
#define DMG_RESOURCE_MAX (16u << 20)
/* QEMU's block layer refuses larger sizes: 2^63 bytes less 1 GiB. */
#define DMG_MAX_LENGTH ((uint64_t)INT64_MAX - (1u << 30) + 1)
#define DMG_CHUNKS_MAX (1u << 20)

struct dmg_chunk {
    uint32_t type;
    uint64_t sector; /* first guest sector */
    uint64_t count; /* guest sectors */
    uint64_t offset; /* stored bytes in the file */
    uint64_t length;
};

struct dmg_state {
    struct dmg_chunk *chunks; /* sorted by sector */
    size_t n_chunks, cap_chunks;
    uint64_t file_size;
    bool warned_lzfse, warned_unknown;
    /*
     * The cache: the guest bytes of chunk `current` (n_chunks if none),
     * grown at the first read that needs it; compressed bytes likewise.
     */
    uint8_t *data;
    size_t data_cap;
    uint8_t *stored;
    size_t stored_cap;
    size_t current;
    z_stream zs;
    bool zs_ready;
};

static int dmg_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)buf;
    (void)len;
    /* QEMU's dmg probe looks at the name only. */
    size_t n = filename ? strlen(filename) : 0;
    if (n > 4 && strcmp(filename + n - 4, ".dmg") == 0) {
        return 2;
    }
    return 0;
}

static void dmg_close(struct qimg_node *node)
{
    struct dmg_state *s = node->opaque;
    if (s) {
        if (s->zs_ready) {
            inflateEnd(&s->zs);
        }
        free(s->chunks);
        free(s->data);
        free(s->stored);
        free(s);
    }
    node->opaque = NULL;
}

/* QEMU fails most of its open checks with a bare EINVAL. */
static int dmg_invalid(struct qimg_node *node)
{
    return error_set_errno(EINVAL, "Could not open '%s'", node->filename);
}

static bool dmg_type_known(uint32_t type)
{
    return type == DMG_ZEROES || type == DMG_RAW || type == DMG_IGNORE ||
           type == DMG_ZLIB || type == DMG_BZIP2;
}

/* Append the chunks of one table (a <data> element or a resource). */
static int dmg_add_table(struct qimg_node *node, struct dmg_state *s,
                         uint64_t data_fork, const uint8_t *buf, size_t len)
{
    /* Not a table, or one without entries: skipped, as QEMU does. */
    if (len < MISH_HEADER_SIZE + MISH_ENTRY_SIZE ||
        load_be32(buf) != MISH_MAGIC) {
        return 0;
    }
    uint64_t first = load_be64(buf + MISH_FIRST_SECTOR);
    /* QEMU adds these with wrap-around; a wrapped offset fails to read. */
    uint64_t base = data_fork + load_be64(buf + MISH_DATA_OFFSET);
    size_t n = (len - MISH_HEADER_SIZE) / MISH_ENTRY_SIZE;
    for (size_t e = 0; e < n; e++) {
        const uint8_t *p = buf + MISH_HEADER_SIZE + e * MISH_ENTRY_SIZE;
        uint32_t type = load_be32(p);
        if (!dmg_type_known(type)) {
            if (type == DMG_LZFSE && !s->warned_lzfse) {
                s->warned_lzfse = true;
                warn_report("dmg-lzfse module is missing, accessing lzfse "
                            "compressed blocks will result in I/O errors");
            } else if (type != DMG_COMMENT && type != DMG_END &&
                       type != DMG_LZFSE && !s->warned_unknown) {
                s->warned_unknown = true;
                warn_report("Image contains chunks of unknown type %x, "
                            "accessing them will result in I/O errors",
                            type);
            }
            continue;
        }
        struct dmg_chunk c = {
            .type = type,
            .sector = load_be64(p + 8) + first,
            .count = load_be64(p + 0x10),
            .offset = load_be64(p + 0x18) + base,
            .length = load_be64(p + 0x20),
        };
        if (type != DMG_ZEROES && type != DMG_IGNORE &&
            c.count > DMG_SECTORCOUNTS_MAX) {
            return error_set(EINVAL, "sector count %llu for chunk %zu is "
                             "larger than max (%u)",
                             (unsigned long long)c.count, s->n_chunks,
                             DMG_SECTORCOUNTS_MAX);
        }
        if (c.length > DMG_LENGTHS_MAX) {
            return error_set(EINVAL, "length %llu for chunk %zu is larger "
                             "than max (%u)", (unsigned long long)c.length,
                             s->n_chunks, DMG_LENGTHS_MAX);
        }
        if (s->n_chunks == s->cap_chunks) {
            if (s->n_chunks >= DMG_CHUNKS_MAX) {
                return error_set(EFBIG, "Could not open '%s': more than %u "
                                 "chunks", node->filename, DMG_CHUNKS_MAX);
            }
            size_t cap = s->cap_chunks ? s->cap_chunks * 2 : 64;
            struct dmg_chunk *q = realloc(s->chunks, cap * sizeof(*q));
            if (!q) {
                return error_set(ENOMEM, "Out of memory");
            }
            s->chunks = q;
            s->cap_chunks = cap;
        }
        s->chunks[s->n_chunks++] = c;
    }
    return 0;
}

static int dmg_read_resource_fork(struct qimg_node *node,
                                  struct dmg_state *s, uint64_t data_fork,
                                  uint64_t begin, uint64_t length)
{
    uint8_t hdr[12];
    int ret = io_pread(node->file, hdr, sizeof(hdr), begin);
    if (ret < 0) {
        return error_prefix(-ret, "Could not read the dmg resource fork");
    }
    uint32_t data_offset = load_be32(hdr);
    uint32_t data_length = load_be32(hdr + 8);
    if (data_offset > length || data_length == 0 ||
        (uint64_t)data_offset + data_length > length) {
        return dmg_invalid(node);
    }
    /* The resources, each a 32-bit length and a table; the map after. */
    uint64_t off = begin + data_offset;
    uint64_t end = off + data_length;
    uint8_t *buf = NULL;
    while (off < end) {
        uint8_t b[4];
        ret = io_pread(node->file, b, sizeof(b), off);
        if (ret < 0) {
            break;
        }
        uint32_t count = load_be32(b);
        if (count == 0 || count > end - off) {
            ret = dmg_invalid(node);
            break;
        }
        if (count > DMG_RESOURCE_MAX) {
            ret = error_set(EFBIG, "Could not open '%s': a dmg resource of "
                            "%u bytes (at most %u are read)", node->filename,
                            count, DMG_RESOURCE_MAX);
            break;
        }
        off += 4;
        uint8_t *q = realloc(buf, count);
        if (!q) {
            ret = error_set(ENOMEM, "Out of memory");
            break;
        }
        buf = q;
        ret = io_pread(node->file, buf, count, off);
        if (ret < 0) {
            break;
        }
        ret = dmg_add_table(node, s, data_fork, buf, count);
        if (ret < 0) {
            break;
        }
        off += count;
    }
    free(buf);
    return ret < 0 ? ret : 0;
}

static int base64_value(uint8_t c)
{
    if (c >= 'A' && c <= 'Z') {
        return c - 'A';
    }
    if (c >= 'a' && c <= 'z') {
        return c - 'a' + 26;
    }
    if (c >= '0' && c <= '9') {
        return c - '0' + 52;
    }
    if (c == '+') {
        return 62;
    }
    if (c == '/') {
        return 63;
    }
    return -1;
}

/*
 * Decode base64 in place as glib's decoder (which QEMU uses) does:
 * characters outside the alphabet are skipped, '=' counts as a zero digit
 * and drops the bytes it pads.  Returns the decoded length.
 */
static size_t base64_decode_inplace(uint8_t *p, size_t len)
{
    size_t out = 0;
    uint32_t acc = 0;
    int digits = 0;
    bool pad1 = false, pad2 = false; /* the last two digits were '=' */
    for (size_t i = 0; i < len; i++) {
        int v = p[i] == '=' ? 0 : base64_value(p[i]);
        if (v < 0) {
            continue;
        }
        pad2 = pad1;
        pad1 = p[i] == '=';
        acc = acc << 6 | (uint32_t)v;
        if (++digits == 4) {
            p[out++] = (uint8_t)(acc >> 16);
            if (!pad2) {
                p[out++] = (uint8_t)(acc >> 8);
            }
            if (!pad1) {
                p[out++] = (uint8_t)acc;
            }
            digits = 0;
            acc = 0;
        }
    }
    return out;
}

static int dmg_read_plist(struct qimg_node *node, struct dmg_state *s,
                          uint64_t data_fork, uint64_t begin,
                          uint64_t length)
{
    if (length == 0 || length > DMG_PLIST_MAX) {
        return dmg_invalid(node);
    }
    char *xml = malloc((size_t)length + 1);
    if (!xml) {
        return error_set(ENOMEM, "Out of memory");
    }
    int ret = io_pread(node->file, xml, (size_t)length, begin);
    if (ret < 0) {
        free(xml);
        return dmg_invalid(node);
    }
    /* QEMU reads it as a C string: it ends at a NUL byte. */
    xml[length] = '\0';
    char *pos = xml;
    char *data;
    while ((data = strstr(pos, "<data>")) != NULL) {
        data += 6;
        char *end = strstr(data, "</data>");
        if (!end) {
            ret = dmg_invalid(node);
            break;
        }
        size_t n = base64_decode_inplace((uint8_t *)data,
                                         (size_t)(end - data));
        ret = dmg_add_table(node, s, data_fork, (uint8_t *)data, n);
        if (ret < 0) {
            break;
        }
        pos = end + 7;
    }
    free(xml);
    return ret < 0 ? ret : 0;
}

static int dmg_find_koly(struct qimg_node *node, uint64_t *koly)
{
    int64_t size = io_get_size(node->file);
    if (size < 0) {
        return error_prefix((int)-size, "Failed to get file size while "
                            "reading UDIF trailer");
    }
    /*
     * QEMU's view of the file is its size rounded up to whole sectors,
     * and its window starts 1023 bytes before the end of that.
     */
    uint64_t view = ((uint64_t)size + DMG_SECTOR - 1) & ~(uint64_t)511;
    if (view < DMG_KOLY_SIZE) {
        return error_set(EINVAL, "dmg file must be at least 512 bytes long");
    }
    uint64_t start = view > 511 + DMG_KOLY_SIZE ? view - 511 - DMG_KOLY_SIZE
                                                : 0;
    size_t n = (size_t)min_u64(view, DMG_KOLY_WINDOW);
    uint8_t buf[DMG_KOLY_WINDOW] = { 0 };
    size_t inside = start < (uint64_t)size
                        ? (size_t)min_u64(n, (uint64_t)size - start) : 0;
    int ret = io_pread(node->file, buf, inside, start);
    if (ret < 0) {
        return error_prefix(-ret, "Failed while reading UDIF trailer");
    }
    for (size_t i = 0; i + 3 < n; i++) {
        if (memcmp(buf + i, "koly", 4) == 0) {
            *koly = start + i;
            return 0;
        }
    }
    return error_set(EINVAL, "Could not locate UDIF trailer in dmg file");
}

static int dmg_chunk_cmp(const void *a, const void *b)
{
    const struct dmg_chunk *x = a, *y = b;
    return x->sector < y->sector ? -1 : x->sector > y->sector;
}

static int dmg_parse(struct qimg_node *node, struct dmg_state *s)
{
    int64_t file_size = io_get_size(node->file);
    if (file_size < 0) {
        return (int)file_size;
    }
    s->file_size = (uint64_t)file_size;
    uint64_t koly = 0;
    int ret = dmg_find_koly(node, &koly);
    if (ret < 0) {
        return ret;
    }
    /* The trailer as QEMU reads it: zeros past the end of the file. */
    uint8_t t[DMG_KOLY_SIZE] = { 0 };
    ret = io_pread(node->file, t,
                   (size_t)min_u64(DMG_KOLY_SIZE, s->file_size - koly), koly);
    if (ret < 0) {
        return error_prefix(-ret, "Could not read the UDIF trailer");
    }
    uint64_t data_fork = load_be64(t + KOLY_DATA_FORK_OFFSET);
    uint64_t rsrc_off = load_be64(t + KOLY_RSRC_FORK_OFFSET);
    uint64_t rsrc_len = load_be64(t + KOLY_RSRC_FORK_LENGTH);
    uint64_t plist_off = load_be64(t + KOLY_PLIST_OFFSET);
    uint64_t plist_len = load_be64(t + KOLY_PLIST_LENGTH);
    uint64_t sectors = load_be64(t + KOLY_SECTOR_COUNT);
    if (data_fork > koly || rsrc_off >= koly || rsrc_len > koly - rsrc_off ||
        plist_off >= koly || plist_len > koly - plist_off ||
        sectors > (uint64_t)INT64_MAX) {
        return dmg_invalid(node);
    }
    if (rsrc_len != 0) {
        ret = dmg_read_resource_fork(node, s, data_fork, rsrc_off, rsrc_len);
    } else if (plist_len != 0) {
        ret = dmg_read_plist(node, s, data_fork, plist_off, plist_len);
    } else {
        ret = dmg_invalid(node);
    }
    if (ret < 0) {
        return ret;
    }
    if (sectors > DMG_MAX_LENGTH / DMG_SECTOR) {
        return error_set_errno(EFBIG, "Could not refresh total sector count");
    }
    /*
     * QEMU binary-searches the chunks in table order; real images list
     * them by sector.  qimg sorts them (stably enough: equal first sectors
     * only occur in broken images), so lookups stay logarithmic.
     */
    if (s->n_chunks > 1) {
        qsort(s->chunks, s->n_chunks, sizeof(*s->chunks), dmg_chunk_cmp);
    }
    if (inflateInit(&s->zs) != Z_OK) {
        return error_set(ENOMEM, "Could not initialise zlib");
    }
    s->zs_ready = true;
    s->current = s->n_chunks;
    node->size = sectors * DMG_SECTOR;
    return 0;
}

static int dmg_open(struct qimg_node *node, unsigned flags)
{
    if (flags & QIMG_OPEN_RDWR) {
        return error_set(EACCES, "Image is read-only");
    }
    struct dmg_state *s = calloc(1, sizeof(*s));
    if (!s) {
        return error_set(ENOMEM, "Out of memory");
    }
    node->opaque = s;
    int ret = dmg_parse(node, s);
    if (ret < 0) {
        dmg_close(node);
    }
    return ret;
}

/* The chunk holding guest sector `sector`, or n_chunks. */
static size_t dmg_find_chunk(const struct dmg_state *s, uint64_t sector)
{
    size_t lo = 0, hi = s->n_chunks;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->chunks[mid].sector > sector) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    /* lo: the first chunk starting after the sector. */
    if (lo > 0) {
        const struct dmg_chunk *c = &s->chunks[lo - 1];
        if (sector - c->sector < c->count) {
            return lo - 1;
        }
    }
    return s->n_chunks;
}

static int dmg_grow(uint8_t **buf, size_t *cap, size_t need)
{
    if (need <= *cap) {
        return 0;
    }
    uint8_t *p = realloc(*buf, need);
    if (!p) {
        return error_set(ENOMEM, "Out of memory");
    }
    *buf = p;
    *cap = need;
    return 0;
}

/*
 * Read a chunk's stored bytes into s->stored.  Bytes past the end of the
 * file are not read (QEMU reads them as zeros; no stream that needs them
 * inflates), so the buffer is bounded by the file size.
 */
static int dmg_read_stored(struct qimg_node *node, struct dmg_state *s,
                           const struct dmg_chunk *c, size_t *got)
{
    size_t n = 0;
    if (c->offset < s->file_size) {
        n = (size_t)min_u64(c->length, s->file_size - c->offset);
    }
    int ret = dmg_grow(&s->stored, &s->stored_cap, n ? n : 1);
    if (ret < 0) {
        return ret;
    }
    if (n > 0) {
        ret = io_pread(node->file, s->stored, n, c->offset);
        if (ret < 0) {
            return ret;
        }
    }
    *got = n;
    return 0;
}

static int dmg_inflate(struct dmg_state *s, size_t in, size_t out)
{
    if (inflateReset(&s->zs) != Z_OK) {
        return -1;
    }
    s->zs.next_in = s->stored;
    s->zs.avail_in = (uInt)in;
    s->zs.next_out = s->data;
    s->zs.avail_out = (uInt)out;
    int ret = inflate(&s->zs, Z_FINISH);
    return ret == Z_STREAM_END && s->zs.total_out == out ? 0 : -1;
}

static int dmg_bunzip(struct dmg_state *s, size_t in, size_t out)
{
    bz_stream bz;
    memset(&bz, 0, sizeof(bz));
    if (BZ2_bzDecompressInit(&bz, 0, 0) != BZ_OK) {
        return -1;
    }
    bz.next_in = (char *)s->stored;
    bz.avail_in = (unsigned)in;
    bz.next_out = (char *)s->data;
    bz.avail_out = (unsigned)out;
    int ret = BZ2_bzDecompress(&bz);
    uint64_t total = (uint64_t)bz.total_out_hi32 << 32 | bz.total_out_lo32;
    BZ2_bzDecompressEnd(&bz);
    return ret == BZ_STREAM_END && total == out ? 0 : -1;
}

/* Make chunk i (not a zero chunk) the cached one. */
static int dmg_load_chunk(struct qimg_node *node, struct dmg_state *s,
                          size_t i)
{
    if (s->current == i) {
        return 0;
    }
    s->current = s->n_chunks;
    const struct dmg_chunk *c = &s->chunks[i];
    /* count <= DMG_SECTORCOUNTS_MAX: at most 64 MiB. */
    size_t out = (size_t)c->count * DMG_SECTOR;
    int ret = dmg_grow(&s->data, &s->data_cap, out ? out : 1);
    if (ret < 0) {
        return ret;
    }
    size_t in;
    ret = dmg_read_stored(node, s, c, &in);
    if (ret < 0) {
        return ret;
    }
    if (c->type == DMG_RAW) {
        /* Sectors past the stored bytes read as zeros. */
        size_t n = (size_t)min_u64(in, out);
        memcpy(s->data, s->stored, n);
        memset(s->data + n, 0, out - n);
    } else {
        ret = c->type == DMG_ZLIB ? dmg_inflate(s, in, out)
                                  : dmg_bunzip(s, in, out);
        if (ret < 0) {
            return error_set(EIO, "%s: dmg chunk at sector %llu does not "
                             "decompress to %llu sectors", node->filename,
                             (unsigned long long)c->sector,
                             (unsigned long long)c->count);
        }
    }
    s->current = i;
    return 0;
}

static int dmg_pread(struct qimg_node *node, void *buf, size_t len,
                     uint64_t off)
{
    struct dmg_state *s = node->opaque;
    uint8_t *p = buf;
    while (len > 0) {
        uint64_t sector = off / DMG_SECTOR;
        size_t i = dmg_find_chunk(s, sector);
        if (i == s->n_chunks) {
            return error_set(EIO, "%s: no dmg chunk holds sector %llu",
                             node->filename, (unsigned long long)sector);
        }
        const struct dmg_chunk *c = &s->chunks[i];
        /* c->sector <= sector, so this does not wrap; count may be huge. */
        uint64_t in_chunk = off - c->sector * DMG_SECTOR;
        uint64_t left = c->count - (sector - c->sector);
        size_t n = len;
        if (left <= len / DMG_SECTOR) {
            n = (size_t)(left * DMG_SECTOR - off % DMG_SECTOR);
        }
        if (c->type == DMG_ZEROES || c->type == DMG_IGNORE) {
            memset(p, 0, n);
        } else {
            int ret = dmg_load_chunk(node, s, i);
            if (ret < 0) {
                return ret;
            }
            memcpy(p, s->data + in_chunk, n);
        }
        p += n;
        off += n;
        len -= n;
    }
    return 0;
}

/*
 * QEMU's dmg driver reports no block status, so its generic answer is
 * data over the whole range, with no host offset.
 */
static int dmg_block_status(struct qimg_node *node, uint64_t off,
                            uint64_t len, uint64_t *pnum, uint64_t *host_off)
{
    (void)node;
    (void)off;
    (void)host_off;
    *pnum = len;
    return BS_DATA;
}

/* QEMU's dmg driver has no get_info: no dirty-flag in qemu-img info. */
static int dmg_get_info(struct qimg_node *node, struct qimg_image_info *info)
{
    (void)node;
    info->no_disk_info = true;
    return 0;
}

const struct qimg_format_ops format_dmg = {
    .name = "dmg",
    .probe = dmg_probe,
    .open = dmg_open,
    .close = dmg_close,
    .pread = dmg_pread,
    .block_status = dmg_block_status,
    .get_info = dmg_get_info,
};
