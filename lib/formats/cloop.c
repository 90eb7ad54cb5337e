/*
 * cloop: compressed loop images (the V2.0 format), read only, as QEMU
 * reads them (its limits, checks and messages are kept).
 *
 * Layout (big-endian): a 128-byte shell preamble, at 128 the block size
 * and the block count (32 bits each), then n_blocks + 1 64-bit file
 * offsets: block i is the zlib stream in [offsets[i], offsets[i + 1]),
 * which inflates to exactly block_size bytes.  The guest size is
 * n_blocks * block_size.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "core/error.h"
#include "driver.h"
#include "util/checked.h"
#include "util/endian.h"

#define CLOOP_SECTOR 512u
#define CLOOP_OFF_BLOCK_SIZE 128u
#define CLOOP_OFF_N_BLOCKS 132u
#define CLOOP_OFF_OFFSETS 136u
/* QEMU's limits: block size, the offset table, a compressed block. */
#define CLOOP_BLOCK_SIZE_MAX (64u << 20)
#define CLOOP_N_BLOCKS_MAX ((UINT32_MAX - 1) / 8)
#define CLOOP_OFFSETS_SIZE_MAX (512u << 20)
#define CLOOP_COMPRESSED_MAX (2ull * CLOOP_BLOCK_SIZE_MAX)
/*
 * An offset table past the end of the file reads as zeros in QEMU; qimg
 * follows for tables up to this size and refuses larger ones, so that a
 * tiny hostile file cannot make it allocate half a gigabyte.
 */
#define CLOOP_OFFSETS_PAST_EOF_MAX (4u << 20)

/* The preamble cloop's tools write (the probe's magic). */
static const char cloop_magic[] =
    "#!/bin/sh\n#V2.0 Format\n"
    "modprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n";

struct cloop_state {
    uint32_t block_size;
    uint32_t n_blocks;
    uint64_t *offsets; /* n_blocks + 1 */
    uint64_t file_size;
    /*
     * Allocated at the first read that needs them: compressed_cap bytes
     * (grown to the largest part of a block inside the file, so at most
     * the file size, and 128 MiB) and block_size bytes.
     */
    uint8_t *compressed;
    size_t compressed_cap;
    uint8_t *block; /* the cached block */
    uint32_t current; /* the cached block, n_blocks if none */
    z_stream zs;
    bool zs_ready;
};

static int cloop_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    size_t n = sizeof(cloop_magic) - 1;
    /* QEMU's probe buffer is zero-filled past the end of the file. */
    if (len < n || memcmp(buf, cloop_magic, n) != 0) {
        return 0;
    }
    return 2;
}

static void cloop_close(struct qimg_node *node)
{
    struct cloop_state *s = node->opaque;
    if (s) {
        if (s->zs_ready) {
            inflateEnd(&s->zs);
        }
        free(s->offsets);
        free(s->compressed);
        free(s->block);
        free(s);
    }
    node->opaque = NULL;
}

static int cloop_read_offsets(struct qimg_node *node, struct cloop_state *s)
{
    /*
     * QEMU computes the table size in 32 bits: for the largest block
     * count it wraps to 0, and the allocation of nothing fails.
     */
    uint64_t bytes = ((uint64_t)s->n_blocks + 1) * 8;
    if (bytes == (1ull << 32)) {
        return error_set(ENOMEM, "Could not allocate offsets table");
    }
    if (bytes > CLOOP_OFFSETS_SIZE_MAX) {
        return error_set(EINVAL, "image requires too many offsets, try "
                         "increasing block size");
    }
    int64_t file_size = io_get_size(node->file);
    if (file_size < 0) {
        return (int)file_size;
    }
    if (CLOOP_OFF_OFFSETS + bytes > (uint64_t)file_size &&
        bytes > CLOOP_OFFSETS_PAST_EOF_MAX) {
        return error_set(EINVAL, "cloop offset table (%llu bytes) lies "
                         "beyond the end of the file",
                         (unsigned long long)bytes);
    }
    uint8_t *raw = malloc((size_t)bytes);
    s->offsets = malloc((size_t)bytes);
    if (!raw || !s->offsets) {
        free(raw);
        return error_set(ENOMEM, "Could not allocate offsets table");
    }
    int ret = io_pread(node->file, raw, (size_t)bytes, CLOOP_OFF_OFFSETS);
    if (ret < 0) {
        free(raw);
        return error_prefix(-ret, "Could not read the cloop offsets");
    }
    /* QEMU allocates for the largest block here; qimg at the reads. */
    uint64_t max_compressed = 0;
    for (uint64_t i = 0; i <= s->n_blocks; i++) {
        s->offsets[i] = load_be64(raw + i * 8);
        if (i == 0) {
            continue;
        }
        if (s->offsets[i] < s->offsets[i - 1]) {
            free(raw);
            return error_set(EINVAL, "offsets not monotonically increasing "
                             "at index %llu, image file is corrupt",
                             (unsigned long long)i);
        }
        uint64_t size = s->offsets[i] - s->offsets[i - 1];
        if (size > CLOOP_COMPRESSED_MAX) {
            free(raw);
            return error_set(EINVAL, "invalid compressed block size at "
                             "index %llu, image file is corrupt",
                             (unsigned long long)i);
        }
        max_compressed = max_u64(max_compressed, size);
    }
    free(raw);
    (void)max_compressed;
    s->file_size = (uint64_t)file_size;
    return 0;
}

static int cloop_parse(struct qimg_node *node, struct cloop_state *s)
{
    uint8_t b[8];
    int ret = io_pread(node->file, b, sizeof(b), CLOOP_OFF_BLOCK_SIZE);
    if (ret < 0) {
        return error_prefix(-ret, "Could not read the cloop header");
    }
    s->block_size = load_be32(b);
    s->n_blocks = load_be32(b + 4);
    if (s->block_size % CLOOP_SECTOR != 0) {
        return error_set(EINVAL, "block_size %u must be a multiple of 512",
                         s->block_size);
    }
    if (s->block_size == 0) {
        return error_set(EINVAL, "block_size cannot be zero");
    }
    if (s->block_size > CLOOP_BLOCK_SIZE_MAX) {
        return error_set(EINVAL, "block_size %u must be %u MB or less",
                         s->block_size, CLOOP_BLOCK_SIZE_MAX >> 20);
    }
    if (s->n_blocks > CLOOP_N_BLOCKS_MAX) {
        return error_set(EINVAL, "n_blocks %u must be %u or less",
                         s->n_blocks, (unsigned)CLOOP_N_BLOCKS_MAX);
    }
    ret = cloop_read_offsets(node, s);
    if (ret < 0) {
        return ret;
    }
    if (inflateInit(&s->zs) != Z_OK) {
        return error_set(ENOMEM, "Could not initialise zlib");
    }
    s->zs_ready = true;
    s->current = s->n_blocks;
    /*
     * QEMU multiplies the block count by the sectors per block in 32
     * bits: the size wraps for images of 2 TiB and more, and qimg keeps
     * that (the blocks past it are not readable in qemu-img either).
     */
    uint32_t sectors = s->n_blocks * (s->block_size / CLOOP_SECTOR);
    node->size = (uint64_t)sectors * CLOOP_SECTOR;
    return 0;
}

static int cloop_open(struct qimg_node *node, unsigned flags)
{
    if (flags & QIMG_OPEN_RDWR) {
        return error_set(EACCES, "Image is read-only");
    }
    struct cloop_state *s = calloc(1, sizeof(*s));
    if (!s) {
        return error_set(ENOMEM, "Out of memory");
    }
    node->opaque = s;
    int ret = cloop_parse(node, s);
    if (ret < 0) {
        cloop_close(node);
    }
    return ret;
}

/* Make block n (< n_blocks) the cached one. */
static int cloop_load_block(struct qimg_node *node, struct cloop_state *s,
                            uint32_t n)
{
    if (s->current == n) {
        return 0;
    }
    s->current = s->n_blocks;
    uint64_t start = s->offsets[n];
    uint64_t bytes = s->offsets[n + 1] - start;
    /*
     * QEMU reads zeros past the end of the file, and a zlib stream never
     * starts with a zero byte: a block starting there cannot inflate.
     * Of a block that runs past the end only the part inside is read
     * (the rest is zeros, as QEMU reads them), so the buffer is bounded
     * by the file size.
     */
    if (start >= s->file_size) {
        return error_set(EIO, "%s: cloop block %u lies beyond the end of "
                         "the file", node->filename, n);
    }
    size_t inside = (size_t)min_u64(bytes, s->file_size - start);
    if (!s->block) {
        s->block = malloc(s->block_size);
        if (!s->block) {
            return error_set(ENOMEM, "Out of memory");
        }
    }
    if (inside > s->compressed_cap) {
        uint8_t *p = realloc(s->compressed, inside);
        if (!p) {
            return error_set(ENOMEM, "Out of memory");
        }
        s->compressed = p;
        s->compressed_cap = inside;
    }
    int ret = inside > 0 ? io_pread(node->file, s->compressed, inside, start)
                         : 0;
    if (ret < 0) {
        return ret;
    }
    if (inflateReset(&s->zs) != Z_OK) {
        return error_set(EIO, "%s: cloop block %u: zlib reset failed",
                         node->filename, n);
    }
    s->zs.next_in = s->compressed;
    s->zs.avail_in = (uInt)inside;
    s->zs.next_out = s->block;
    s->zs.avail_out = s->block_size;
    /* The part past the end of the file: zeros, fed as zlib asks. */
    static uint8_t zeros[4096];
    uint64_t zeros_left = bytes - inside;
    for (;;) {
        ret = inflate(&s->zs, Z_FINISH);
        if (ret != Z_BUF_ERROR || s->zs.avail_in != 0 || zeros_left == 0 ||
            s->zs.avail_out == 0) {
            break;
        }
        s->zs.next_in = zeros;
        s->zs.avail_in = (uInt)min_u64(zeros_left, sizeof(zeros));
        zeros_left -= s->zs.avail_in;
    }
    if (ret != Z_STREAM_END || s->zs.total_out != s->block_size) {
        return error_set(EIO, "%s: cloop block %u does not inflate to %u "
                         "bytes", node->filename, n, s->block_size);
    }
    s->current = n;
    return 0;
}

static int cloop_pread(struct qimg_node *node, void *buf, size_t len,
                       uint64_t off)
{
    struct cloop_state *s = node->opaque;
    uint8_t *p = buf;
    while (len > 0) {
        /* off < size <= n_blocks * block_size. */
        uint32_t n = (uint32_t)(off / s->block_size);
        uint64_t in_block = off % s->block_size;
        size_t chunk = (size_t)min_u64(len, s->block_size - in_block);
        int ret = cloop_load_block(node, s, n);
        if (ret < 0) {
            return ret;
        }
        memcpy(p, s->block + in_block, chunk);
        p += chunk;
        off += chunk;
        len -= chunk;
    }
    return 0;
}

/*
 * QEMU's cloop driver reports no block status, so its generic answer is
 * data over the whole range, with no host offset.
 */
static int cloop_block_status(struct qimg_node *node, uint64_t off,
                              uint64_t len, uint64_t *pnum,
                              uint64_t *host_off)
{
    (void)node;
    (void)off;
    (void)host_off;
    *pnum = len;
    return BS_DATA;
}

/* QEMU's cloop driver has no get_info: no dirty-flag in qemu-img info. */
static int cloop_get_info(struct qimg_node *node,
                          struct qimg_image_info *info)
{
    (void)node;
    info->no_disk_info = true;
    return 0;
}

const struct qimg_format_ops format_cloop = {
    .name = "cloop",
    .probe = cloop_probe,
    .open = cloop_open,
    .close = cloop_close,
    .pread = cloop_pread,
    .block_status = cloop_block_status,
    .get_info = cloop_get_info,
};
