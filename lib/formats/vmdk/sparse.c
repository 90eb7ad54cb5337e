/*
 * VMDK extents: hosted sparse extents [spec: Hosted Sparse Extents] with
 * their grain directory (QEMU's L1), grain tables (L2) and grains, the
 * stream-optimized variant (deflated grains behind markers, the real
 * header in a footer), and flat extents (a plain byte range of a file).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "core/error.h"
#include "formats/vmdk/vmdk.h"
#include "util/checked.h"
#include "util/endian.h"
#include "util/grow.h"

void vmdk4_header_decode(const uint8_t *b, struct vmdk4_header *h)
{
    h->version = load_le32(b + 4);
    h->flags = load_le32(b + 8);
    h->capacity = load_le64(b + 12);
    h->granularity = load_le64(b + 20);
    h->desc_offset = load_le64(b + 28);
    h->desc_size = load_le64(b + 36);
    h->num_gtes_per_gt = load_le32(b + 44);
    h->rgd_offset = load_le64(b + 48);
    h->gd_offset = load_le64(b + 56);
    h->grain_offset = load_le64(b + 64);
    h->unclean = b[72];
    memcpy(h->check_bytes, b + 73, 4);
    h->compress_algorithm = load_le16(b + 77);
}

void vmdk4_header_encode(const struct vmdk4_header *h, uint8_t *b)
{
    store_be32(b, VMDK4_MAGIC);
    store_le32(b + 4, h->version);
    store_le32(b + 8, h->flags);
    store_le64(b + 12, h->capacity);
    store_le64(b + 20, h->granularity);
    store_le64(b + 28, h->desc_offset);
    store_le64(b + 36, h->desc_size);
    store_le32(b + 44, h->num_gtes_per_gt);
    store_le64(b + 48, h->rgd_offset);
    store_le64(b + 56, h->gd_offset);
    store_le64(b + 64, h->grain_offset);
    b[72] = h->unclean;
    memcpy(b + 73, h->check_bytes, 4);
    store_le16(b + 77, h->compress_algorithm);
}

void vmdk_extent_free(struct vmdk_extent *e)
{
    if (e->own_io && e->io) {
        io_close(e->io);
    }
    free(e->filename);
    free(e->type);
    free(e->l1);
    free(e->l1_backup);
    free(e->l2_cache);
    free(e->se_l1);
    free(e->se_l2_cache);
    extent_set_free(&e->fixed_meta);
    extent_set_free(&e->grain_tables);
    memset(e, 0, sizeof(*e));
}

/* Room for one more extent at the end of s->extents: 0 or -errno. */
int vmdk_extent_append(struct vmdk_state *s, struct vmdk_extent **out)
{
    if (s->nb_extents >= VMDK_MAX_EXTENTS) {
        return error_set(EFBIG, "Too many extents (more than %u)",
                         VMDK_MAX_EXTENTS);
    }
    struct vmdk_extent *n = grow_array(s->extents, &s->cap_extents,
                                       s->nb_extents + 1, sizeof(*n));
    if (!n) {
        return error_set(ENOMEM, "Out of memory");
    }
    s->extents = n;
    struct vmdk_extent *e = &n[s->nb_extents];
    memset(e, 0, sizeof(*e));
    *out = e;
    return 0;
}

/*
 * The common part of adding an extent (QEMU's vmdk_add_extent): its
 * guest range follows the previous extent's.  e is the slot from
 * vmdk_extent_append; on success it is counted in s.
 */
int vmdk_extent_commit(struct vmdk_state *s, struct vmdk_extent *e,
                       struct qimg_io *io, bool own_io, const char *filename)
{
    uint64_t start =
        s->nb_extents ? s->extents[s->nb_extents - 1].end_sector : 0;
    uint64_t end;
    /* Guest sizes stay below 2^63 bytes, so byte offsets never wrap. */
    if (add_overflow_u64(start, e->sectors, &end) ||
        end > (uint64_t)INT64_MAX / VMDK_SECTOR) {
        /* QEMU's words, from the disk size check after its open. */
        return error_set(EFBIG, "Could not refresh total sector count: "
                                "File too large");
    }
    e->filename = strdup(filename);
    if (!e->filename) {
        return error_set(ENOMEM, "Out of memory");
    }
    e->io = io;
    e->own_io = own_io;
    e->end_sector = end;
    s->nb_extents++;
    return 0;
}

int vmdk_add_flat_extent(struct vmdk_state *s, struct qimg_io *io, bool own_io,
                         const char *filename, uint64_t sectors,
                         uint64_t start_sector, struct vmdk_extent **out)
{
    struct vmdk_extent *e;
    int ret = vmdk_extent_append(s, &e);
    if (ret < 0) {
        return ret;
    }
    if (start_sector > (uint64_t)INT64_MAX / VMDK_SECTOR) {
        return error_set(EINVAL, "Invalid extent offset");
    }
    e->flat = true;
    e->sectors = sectors;
    e->cluster_sectors = sectors;
    e->flat_start = start_sector * VMDK_SECTOR;
    ret = vmdk_extent_commit(s, e, io, own_io, filename);
    if (ret < 0) {
        return ret;
    }
    *out = &s->extents[s->nb_extents - 1];
    return 0;
}

/*
 * Read a grain directory of e->l1_size entries at off.  Only the entries
 * the file holds are kept (the rest read as zero, as reads past the end
 * of a file do), so a huge directory in a small hostile file costs no
 * memory.
 */
static int load_directory(struct vmdk_state *s, struct vmdk_extent *e,
                          uint64_t off, uint32_t **out, const char *what)
{
    int64_t fsize = io_get_size(e->io);
    if (fsize < 0) {
        return (int)fsize;
    }
    uint64_t n = 0;
    if (off < (uint64_t)fsize) {
        n = min_u64(e->l1_size, div_round_up_u64((uint64_t)fsize - off, 4));
    }
    if (n > VMDK_MAX_GD_ENTRIES_TOTAL - s->gd_entries) {
        return error_set(EFBIG, "The extents' grain directories are too "
                         "big together (more than %llu entries)",
                         (unsigned long long)VMDK_MAX_GD_ENTRIES_TOTAL);
    }
    s->gd_entries += n;
    e->l1_loaded = (uint32_t)n;
    uint32_t *t = calloc(n ? n : 1, sizeof(uint32_t));
    if (!t) {
        return error_set(ENOMEM, "Out of memory");
    }
    int ret = n ? io_pread(e->io, t, n * 4, off) : 0;
    if (ret < 0) {
        free(t);
        return error_set_errno(-ret, "Could not read %s from extent '%s'", what,
                               e->filename);
    }
    for (uint64_t i = 0; i < n; i++) {
        t[i] = load_le32(&t[i]);
    }
    *out = t;
    return 0;
}

/*
 * The sparse extent's parameters (QEMU's vmdk_add_extent and
 * vmdk_init_tables checks, with their words).
 */
static int sparse_setup(struct vmdk_extent *e, uint64_t capacity,
                        uint64_t gd_off, uint64_t rgd_off, uint64_t l1_size,
                        uint32_t l2_size, uint64_t granularity)
{
    if (granularity > VMDK_MAX_GRAIN_SECTORS) {
        return error_set(EFBIG, "Invalid granularity, image may be corrupt");
    }
    if (granularity == 0 || l2_size == 0) {
        /* Lookups divide by both. */
        return error_set(EINVAL, "L1 entry size is invalid");
    }
    if (l1_size > VMDK_MAX_GD_ENTRIES) {
        return error_set(EFBIG, "L1 size too big");
    }
    int64_t fsize = io_get_size(e->io);
    if (fsize < 0) {
        return (int)fsize;
    }
    e->sectors = capacity;
    e->l1_offset = gd_off;
    e->l1_backup_offset = rgd_off;
    e->l1_size = (uint32_t)l1_size;
    e->l2_size = l2_size;
    e->cluster_sectors = granularity;
    e->l1_entry_sectors = (uint64_t)l2_size * granularity;
    uint64_t fsec = div_round_up_u64((uint64_t)fsize, VMDK_SECTOR);
    e->next_cluster_sector =
        granularity ? div_round_up_u64(fsec, granularity) * granularity : fsec;
    return 0;
}

/*
 * New grains go at the end of the file, as in QEMU, but never onto a
 * grain table: a damaged directory can name one past the end of the
 * file, where the next grain would land and the table's own update
 * then overwrite it.  Tables within the file lie below the end already.
 */
static void alloc_past_tables(struct vmdk_extent *e)
{
    const uint64_t gt_sectors =
        div_round_up_u64((uint64_t)e->l2_size * 4, VMDK_SECTOR);
    uint64_t end = 0;
    for (uint32_t i = 0; i < e->l1_loaded; i++) {
        /* 32-bit sectors: no sum here can overflow. */
        if (e->l1[i]) {
            end = max_u64(end, e->l1[i] + gt_sectors);
        }
        if (e->l1_backup && e->l1_backup[i]) {
            end = max_u64(end, e->l1_backup[i] + gt_sectors);
        }
    }
    if (end > e->next_cluster_sector) {
        e->next_cluster_sector =
            div_round_up_u64(end, e->cluster_sectors) * e->cluster_sectors;
    }
}

static int sparse_tables(struct vmdk_state *s, struct vmdk_extent *e)
{
    int ret = load_directory(s, e, e->l1_offset, &e->l1, "l1 table");
    if (ret < 0) {
        return ret;
    }
    if (e->l1_backup_offset) {
        uint32_t loaded = e->l1_loaded;
        ret = load_directory(s, e, e->l1_backup_offset, &e->l1_backup,
                             "l1 backup table");
        if (ret < 0) {
            return ret;
        }
        /* Both directories are looked up through the smaller count. */
        if (loaded < e->l1_loaded) {
            e->l1_loaded = loaded;
        }
    }
    e->l2_cache = calloc((size_t)VMDK_L2_CACHE * e->l2_size, 4);
    if (!e->l2_cache) {
        return error_set(ENOMEM, "Out of memory");
    }
    for (int i = 0; i < VMDK_L2_CACHE; i++) {
        e->l2_cache_off[i] = UINT64_MAX;
    }
    alloc_past_tables(e);
    /* The header sector and both directories; the descriptor is added
     * by the caller.  Saturating ends: extent_set_add's. */
    uint64_t gd_bytes = (uint64_t)e->l1_size * 4;
    if (extent_set_add(&e->fixed_meta, 0, VMDK_SECTOR) < 0 ||
        extent_set_add(&e->fixed_meta, e->l1_offset, gd_bytes) < 0 ||
        (e->l1_backup_offset &&
         extent_set_add(&e->fixed_meta, e->l1_backup_offset, gd_bytes) < 0)) {
        return error_set(ENOMEM, "Out of memory");
    }
    return 0;
}

/*
 * A stream-optimized extent keeps its real header in a footer: the
 * footer marker, the header sector and the end-of-stream marker are the
 * last three sectors of the file.
 */
static int read_footer(struct qimg_io *io, struct vmdk4_header *h)
{
    int64_t fsize = io_get_size(io);
    if (fsize < 0) {
        return (int)fsize;
    }
    uint64_t end = div_round_up_u64((uint64_t)fsize, VMDK_SECTOR) * VMDK_SECTOR;
    if (end < 3 * VMDK_SECTOR) {
        /* QEMU reads before the start of the file and fails. */
        return error_set(EINVAL, "Invalid footer");
    }
    uint8_t b[3 * VMDK_SECTOR];
    int ret = io_pread(io, b, sizeof(b), end - sizeof(b));
    if (ret < 0) {
        return error_set_errno(-ret, "Failed to read footer");
    }
    const uint8_t *f = b + VMDK_SECTOR;
    const uint8_t *eos = b + 2 * VMDK_SECTOR;
    if (load_be32(f) != VMDK4_MAGIC || load_le32(b + 8) != 0 ||
        load_le32(b + 12) != VMDK_MARKER_FOOTER || load_le64(eos) != 0 ||
        load_le32(eos + 8) != 0 || load_le32(eos + 12) != VMDK_MARKER_EOS) {
        return error_set(EINVAL, "Invalid footer");
    }
    vmdk4_header_decode(f, h);
    return 0;
}

int vmdk_open_sparse_extent(struct vmdk_state *s, struct qimg_io *io,
                            bool own_io, const char *filename, unsigned flags,
                            struct vmdk_extent **out)
{
    uint8_t b[VMDK4_HEADER_SIZE];
    int ret = io_pread(io, b, sizeof(b), 0);
    if (ret < 0) {
        return error_set_errno(-ret, "Could not read header from file '%s'",
                               filename);
    }
    uint32_t magic = load_be32(b);
    struct vmdk_extent *e;
    ret = vmdk_extent_append(s, &e);
    if (ret < 0) {
        return ret;
    }
    e->io = io; /* for the size queries below; committed at the end */

    if (magic == VMDK3_MAGIC) {
        /* [VMDK3/COWD] 64 directory entries of 512-entry tables. */
        uint32_t disk_sectors = load_le32(b + 12);
        uint32_t granularity = load_le32(b + 16);
        uint32_t l1dir = load_le32(b + 20);
        ret = sparse_setup(e, disk_sectors, (uint64_t)l1dir * VMDK_SECTOR, 0,
                           64, 512, granularity);
        if (ret == 0) {
            e->version = 3;
            ret = sparse_tables(s, e);
        }
    } else if (magic == VMDK4_MAGIC) {
        struct vmdk4_header h;
        vmdk4_header_decode(b, &h);
        if (h.gd_offset == VMDK4_GD_AT_END) {
            /*
             * A stream written front to back: the grain directory's place
             * is known at the end only, in the footer's header, which
             * then wins over the one at the start.
             */
            ret = read_footer(io, &h);
            if (ret < 0) {
                goto fail;
            }
        }
        bool compressed = h.compress_algorithm == VMDK4_COMPRESSION_DEFLATE;
        if (h.version > 3) {
            ret = error_set(ENOTSUP, "Unsupported VMDK version %u", h.version);
            goto fail;
        }
        if (h.version == 3 && (flags & QIMG_OPEN_RDWR) && !compressed) {
            ret = error_set(EINVAL, "VMDK version 3 must be read only");
            goto fail;
        }
        if (h.num_gtes_per_gt > VMDK_MAX_GT_ENTRIES) {
            ret = error_set(EINVAL, "L2 table size too big");
            goto fail;
        }
        /* QEMU multiplies in 64 bits; so do we, but checked. */
        uint64_t l1_entry_sectors;
        if (mul_overflow_u64(h.num_gtes_per_gt, h.granularity,
                             &l1_entry_sectors) ||
            h.granularity > VMDK_MAX_GRAIN_SECTORS) {
            ret = error_set(EFBIG, "Invalid granularity, image may be "
                                   "corrupt");
            goto fail;
        }
        if (l1_entry_sectors == 0) {
            ret = error_set(EINVAL, "L1 entry size is invalid");
            goto fail;
        }
        if (h.capacity > (uint64_t)INT64_MAX / VMDK_SECTOR) {
            ret = error_set(EFBIG, "Could not refresh total sector count: "
                                   "File too large");
            goto fail;
        }
        uint64_t l1_size = div_round_up_u64(h.capacity, l1_entry_sectors);
        uint64_t rgd = 0;
        if (h.flags & VMDK4_FLAG_RGD) {
            if (h.rgd_offset > UINT64_MAX / VMDK_SECTOR) {
                ret = error_set(EINVAL, "Invalid redundant grain directory "
                                        "offset");
                goto fail;
            }
            rgd = h.rgd_offset * VMDK_SECTOR;
        }
        int64_t fsize = io_get_size(io);
        if (fsize < 0) {
            ret = (int)fsize;
            goto fail;
        }
        if (div_round_up_u64((uint64_t)fsize, VMDK_SECTOR) < h.grain_offset) {
            ret = error_set(EINVAL,
                            "File truncated, expecting at least "
                            "%lld bytes",
                            (long long)(h.grain_offset * VMDK_SECTOR));
            goto fail;
        }
        if (h.gd_offset > UINT64_MAX / VMDK_SECTOR) {
            ret = error_set(EINVAL, "Invalid grain directory offset");
            goto fail;
        }
        ret = sparse_setup(e, h.capacity, h.gd_offset * VMDK_SECTOR, rgd,
                           l1_size, h.num_gtes_per_gt, h.granularity);
        if (ret < 0) {
            goto fail;
        }
        e->compressed = compressed;
        e->has_marker = (h.flags & VMDK4_FLAG_MARKER) != 0;
        e->version = h.version;
        e->has_zero_grain = (h.flags & VMDK4_FLAG_ZERO_GRAIN) != 0;
        ret = sparse_tables(s, e);
        if (ret == 0 && h.desc_offset != 0 &&
            h.desc_offset <= UINT64_MAX / VMDK_SECTOR &&
            extent_set_add(&e->fixed_meta, h.desc_offset * VMDK_SECTOR,
                           h.desc_size > UINT64_MAX / VMDK_SECTOR
                               ? UINT64_MAX
                               : h.desc_size * VMDK_SECTOR) < 0) {
            ret = error_set(ENOMEM, "Out of memory");
        }
    } else {
        ret = error_set(EINVAL, "Image not in VMDK format");
    }
    if (ret == 0) {
        ret = vmdk_extent_commit(s, e, io, own_io, filename);
    }
    if (ret == 0) {
        *out = &s->extents[s->nb_extents - 1];
        return 0;
    }
fail:
    e->own_io = false; /* the caller still owns io on failure */
    vmdk_extent_free(e);
    return ret;
}

struct vmdk_extent *vmdk_find_extent(struct vmdk_state *s, uint64_t sector)
{
    /* Extents are few; a binary search would do for many. */
    size_t lo = 0, hi = s->nb_extents;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (sector < s->extents[mid].end_sector) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    return lo < s->nb_extents ? &s->extents[lo] : NULL;
}

/* The grain table at sector l2_sector, through the cache. */
static int load_l2(struct vmdk_extent *e, uint32_t l2_sector,
                   const uint32_t **out)
{
    uint64_t off = (uint64_t)l2_sector * VMDK_SECTOR;
    for (int i = 0; i < VMDK_L2_CACHE; i++) {
        if (e->l2_cache_off[i] == off) {
            *out = e->l2_cache + (size_t)i * e->l2_size;
            return 0;
        }
    }
    uint32_t slot = e->l2_cache_next;
    e->l2_cache_next = (slot + 1) % VMDK_L2_CACHE;
    uint32_t *t = e->l2_cache + (size_t)slot * e->l2_size;
    e->l2_cache_off[slot] = UINT64_MAX;
    int ret = io_pread(e->io, t, (size_t)e->l2_size * 4, off);
    if (ret < 0) {
        return error_set_errno(-ret, "Could not read grain table of '%s'",
                               e->filename);
    }
    e->l2_cache_off[slot] = off;
    *out = t;
    return 0;
}

int vmdk_cluster_lookup(struct vmdk_extent *e, uint64_t off, uint64_t *host)
{
    if (e->flat) {
        *host = e->flat_start;
        return VMDK_OK;
    }
    if (e->sesparse) {
        return vmdk_sesparse_lookup(e, off, host);
    }
    uint64_t sector = off / VMDK_SECTOR - (e->end_sector - e->sectors);
    uint64_t l1_index = sector / e->l1_entry_sectors;
    if (l1_index >= e->l1_size) {
        return error_set(EIO,
                         "Guest sector %llu of '%s' is outside its "
                         "grain directory",
                         (unsigned long long)(off / VMDK_SECTOR), e->filename);
    }
    uint32_t l2_sector = l1_index < e->l1_loaded ? e->l1[l1_index] : 0;
    if (!l2_sector) {
        return VMDK_UNALLOC;
    }
    const uint32_t *l2 = NULL;
    int ret = load_l2(e, l2_sector, &l2);
    if (ret < 0) {
        return ret;
    }
    uint64_t l2_index = (sector / e->cluster_sectors) % e->l2_size;
    uint32_t gte = load_le32(&l2[l2_index]);
    if (e->has_zero_grain && gte == VMDK_GTE_ZEROED) {
        return VMDK_ZEROED;
    }
    if (!gte) {
        return VMDK_UNALLOC;
    }
    *host = (uint64_t)gte * VMDK_SECTOR;
    return VMDK_OK;
}

/* Scratch output for streaming inflate: grains may be up to 1 GiB. */
#define VMDK_INFLATE_CHUNK 65536

/*
 * Inflate the zlib stream in[0..in_len) (a whole grain at most
 * cluster_bytes long) and copy its bytes [skip, skip + len) to buf.
 * QEMU fails reads of a grain that is shorter than the range asked, or
 * longer than a grain, or not a complete stream.
 */
static int inflate_range(const uint8_t *in, size_t in_len,
                         uint64_t cluster_bytes, uint64_t skip, uint8_t *buf,
                         size_t len, const char *filename)
{
    uint8_t *chunk = malloc(VMDK_INFLATE_CHUNK);
    if (!chunk) {
        return error_set(ENOMEM, "Out of memory");
    }
    z_stream z;
    memset(&z, 0, sizeof(z));
    if (inflateInit(&z) != Z_OK) {
        free(chunk);
        return error_set(ENOMEM, "Could not initialise zlib");
    }
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)in_len;
    uint64_t pos = 0;
    int zr = Z_OK;
    while (zr == Z_OK) {
        z.next_out = chunk;
        z.avail_out = VMDK_INFLATE_CHUNK;
        zr = inflate(&z, Z_NO_FLUSH);
        if (zr != Z_OK && zr != Z_STREAM_END) {
            break;
        }
        uint64_t n = VMDK_INFLATE_CHUNK - z.avail_out;
        if (n == 0 && zr == Z_OK) {
            zr = Z_BUF_ERROR; /* needs input it does not have */
            break;
        }
        /* Copy the part of [pos, pos + n) that falls in the range. */
        uint64_t a = max_u64(pos, skip);
        uint64_t b = min_u64(pos + n, skip + len);
        if (a < b) {
            memcpy(buf + (a - skip), chunk + (a - pos), (size_t)(b - a));
        }
        pos += n;
        if (pos > cluster_bytes) {
            zr = Z_BUF_ERROR;
            break;
        }
    }
    inflateEnd(&z);
    free(chunk);
    if (zr != Z_STREAM_END || pos < skip + len) {
        return error_set(EIO, "Invalid compressed grain in '%s'", filename);
    }
    return 0;
}

int vmdk_read_grain(struct vmdk_extent *e, uint64_t host, uint64_t in_cluster,
                    void *buf, size_t len)
{
    if (!e->compressed) {
        uint64_t at;
        if (add_overflow_u64(host, in_cluster, &at)) {
            return error_set(EIO, "Invalid grain offset in '%s'", e->filename);
        }
        return io_pread(e->io, buf, len, at);
    }
    uint64_t cluster_bytes = e->cluster_sectors * VMDK_SECTOR;
    /* A marker and its data may run over into the next grain. */
    uint64_t avail = 2 * cluster_bytes;
    int64_t fsize = io_get_size(e->io);
    if (fsize < 0) {
        return (int)fsize;
    }
    uint64_t in_file = host < (uint64_t)fsize ? (uint64_t)fsize - host : 0;
    uint64_t start = 0;
    uint64_t data_len = cluster_bytes;
    uint8_t m[12];
    if (e->has_marker) {
        int ret = io_pread(e->io, m, sizeof(m), host);
        if (ret < 0) {
            return ret;
        }
        data_len = load_le32(m + 8);
        start = sizeof(m);
    }
    if (data_len == 0 || data_len > avail - start) {
        return error_set(EIO, "Invalid compressed grain size in '%s'",
                         e->filename);
    }
    /* Bytes past the end of the file read as zero: no need to hold them. */
    uint64_t have = in_file > start ? min_u64(data_len, in_file - start) : 0;
    uint8_t *in = malloc(have ? (size_t)have : 1);
    if (!in) {
        return error_set(ENOMEM, "Out of memory");
    }
    int ret = have ? io_pread(e->io, in, (size_t)have, host + start) : 0;
    if (ret == 0) {
        ret = inflate_range(in, (size_t)have, cluster_bytes, in_cluster, buf,
                            len, e->filename);
    }
    free(in);
    return ret;
}

/* ---- allocation (writes) ---------------------------------------------- */

/*
 * Set the grain table entry for guest byte off of e to gte, in the grain
 * table and in its redundant copy (QEMU's order: primary, then backup),
 * and in the cache.  The grain itself must be written before.
 */
static int set_gte(struct vmdk_extent *e, uint64_t off, uint32_t gte)
{
    uint64_t sector = off / VMDK_SECTOR - (e->end_sector - e->sectors);
    uint64_t l1_index = sector / e->l1_entry_sectors;
    uint64_t l2_index = (sector / e->cluster_sectors) % e->l2_size;
    uint8_t v[4];
    store_le32(v, gte);
    uint32_t l2_sector = e->l1[l1_index];
    int ret = io_pwrite(e->io, v, sizeof(v),
                        (uint64_t)l2_sector * VMDK_SECTOR + l2_index * 4);
    if (ret < 0) {
        return ret;
    }
    for (int i = 0; i < VMDK_L2_CACHE; i++) {
        if (e->l2_cache_off[i] == (uint64_t)l2_sector * VMDK_SECTOR) {
            memcpy(&e->l2_cache[(size_t)i * e->l2_size + l2_index], v, 4);
        }
    }
    if (e->l1_backup && l1_index < e->l1_loaded && e->l1_backup[l1_index]) {
        uint64_t b = (uint64_t)e->l1_backup[l1_index] * VMDK_SECTOR;
        ret = io_pwrite(e->io, v, sizeof(v), b + l2_index * 4);
        if (ret < 0) {
            return ret;
        }
        for (int i = 0; i < VMDK_L2_CACHE; i++) {
            if (e->l2_cache_off[i] == b) {
                memcpy(&e->l2_cache[(size_t)i * e->l2_size + l2_index], v, 4);
            }
        }
    }
    return 0;
}

int vmdk_alloc_grain(struct qimg_node *node, struct vmdk_extent *e,
                     uint64_t off, uint64_t in_cluster, const void *data,
                     size_t n, uint64_t below_end)
{
    uint64_t sector = off / VMDK_SECTOR - (e->end_sector - e->sectors);
    uint64_t l1_index = sector / e->l1_entry_sectors;
    if (l1_index >= e->l1_size || l1_index >= e->l1_loaded ||
        !e->l1[l1_index]) {
        /* QEMU allocates grains, never grain tables. */
        return error_set(EINVAL,
                         "%s: no grain table for guest sector "
                         "%llu",
                         e->filename, (unsigned long long)sector);
    }
    uint64_t at = e->next_cluster_sector;
    if (at > UINT32_MAX - e->cluster_sectors) {
        return error_set(EFBIG,
                         "%s: the extent file is full (grain "
                         "offsets are 32-bit sectors)",
                         e->filename);
    }
    /* The grain first, so that a table never points at garbage. */
    uint64_t cluster = e->cluster_sectors * VMDK_SECTOR;
    int ret = node_fill_new_cluster(node, e->io, at * VMDK_SECTOR,
                                    off - in_cluster, cluster, in_cluster,
                                    data, n, below_end);
    if (ret < 0) {
        return ret;
    }
    e->next_cluster_sector = at + e->cluster_sectors;
    return set_gte(e, off, (uint32_t)at);
}

/* Every grain table both directories name, into e->grain_tables. */
static int build_grain_tables(struct vmdk_extent *e)
{
    const uint64_t gt_bytes = (uint64_t)e->l2_size * 4;
    for (uint32_t i = 0; i < e->l1_loaded; i++) {
        if ((e->l1[i] &&
             extent_set_add(&e->grain_tables, (uint64_t)e->l1[i] * VMDK_SECTOR,
                            gt_bytes) < 0) ||
            (e->l1_backup && e->l1_backup[i] &&
             extent_set_add(&e->grain_tables,
                            (uint64_t)e->l1_backup[i] * VMDK_SECTOR,
                            gt_bytes) < 0)) {
            extent_set_free(&e->grain_tables);
            return error_set(ENOMEM, "Out of memory");
        }
    }
    e->grain_tables_built = true;
    return 0;
}

static int corrupt(const struct vmdk_extent *e, uint64_t at, const char *what)
{
    return error_set(EIO,
                     "%s: VMDK extent is corrupt: a write at offset %llu "
                     "would overwrite %s",
                     e->filename, (unsigned long long)at, what);
}

int vmdk_check_write(struct vmdk_extent *e, uint64_t off, uint64_t host,
                     size_t n)
{
    uint64_t sector = off / VMDK_SECTOR - (e->end_sector - e->sectors);
    uint64_t l1_index = sector / e->l1_entry_sectors;
    const uint64_t gt_bytes = (uint64_t)e->l2_size * 4;
    if (l1_index < e->l1_loaded) {
        uint64_t gt = (uint64_t)e->l1[l1_index] * VMDK_SECTOR;
        uint64_t backup = e->l1_backup && e->l1_backup[l1_index]
                              ? (uint64_t)e->l1_backup[l1_index] * VMDK_SECTOR
                              : 0;
        if (gt && extent_set_overlaps(&e->fixed_meta, gt, gt_bytes)) {
            return corrupt(e, gt, "the header, descriptor or a directory");
        }
        if (backup && extent_set_overlaps(&e->fixed_meta, backup, gt_bytes)) {
            return corrupt(e, backup, "the header, descriptor or a directory");
        }
    }
    if (host == 0) {
        return 0;
    }
    if (extent_set_overlaps(&e->fixed_meta, host, n)) {
        return corrupt(e, host, "the header, descriptor or a directory");
    }
    if (!e->grain_tables_built) {
        int ret = build_grain_tables(e);
        if (ret < 0) {
            return ret;
        }
    }
    return extent_set_overlaps(&e->grain_tables, host, n)
               ? corrupt(e, host, "a grain table")
               : 0;
}

int vmdk_set_zeroed(struct vmdk_extent *e, uint64_t off)
{
    uint64_t sector = off / VMDK_SECTOR - (e->end_sector - e->sectors);
    uint64_t l1_index = sector / e->l1_entry_sectors;
    if (l1_index >= e->l1_size || l1_index >= e->l1_loaded ||
        !e->l1[l1_index]) {
        return error_set(EINVAL,
                         "%s: no grain table for guest sector "
                         "%llu",
                         e->filename, (unsigned long long)sector);
    }
    return set_gte(e, off, VMDK_GTE_ZEROED);
}

/* ---- compressed grains (streamOptimized) ------------------------------ */

int vmdk_check_compressed(struct vmdk_extent *e, uint64_t off, size_t len)
{
    uint64_t cluster = e->cluster_sectors * VMDK_SECTOR;
    uint64_t rel = off - (e->end_sector - e->sectors) * VMDK_SECTOR;
    /*
     * QEMU's rule: a whole grain, or the extent's partial last one; a
     * stream extent without markers cannot say where a grain ends.
     */
    if (rel % cluster != 0 || len == 0 || len > cluster ||
        (len < cluster && rel + len != e->sectors * VMDK_SECTOR) ||
        !e->has_marker) {
        return error_set(EINVAL,
                         "%s: a streamOptimized image takes writes of "
                         "whole grains only",
                         e->filename);
    }
    return 0;
}

int64_t vmdk_compress_grain(struct vmdk_extent *e, const void *buf, size_t len,
                            void *out, size_t cap)
{
    (void)e;
    /*
     * zlib's compress(): the zlib format at the default level, window
     * and memory, as QEMU's vmdk driver writes grains.  The grain is
     * compressed at its length (a partial last grain is not padded).
     */
    uLongf n = (uLongf)cap;
    int zr = compress2(out, &n, buf, (uLong)len, Z_DEFAULT_COMPRESSION);
    if (zr == Z_BUF_ERROR) {
        return 0;
    }
    if (zr != Z_OK) {
        return error_set(zr == Z_MEM_ERROR ? ENOMEM : EIO,
                         "%s: could not compress a grain", e->filename);
    }
    return (int64_t)n;
}

int vmdk_write_compressed(struct vmdk_extent *e, uint64_t off, const void *data,
                          size_t csize)
{
    uint64_t sector = off / VMDK_SECTOR - (e->end_sector - e->sectors);
    uint64_t l1_index = sector / e->l1_entry_sectors;
    if (l1_index >= e->l1_size || l1_index >= e->l1_loaded ||
        !e->l1[l1_index]) {
        return error_set(EINVAL,
                         "%s: no grain table for guest sector "
                         "%llu",
                         e->filename, (unsigned long long)sector);
    }
    uint64_t host = 0;
    int kind = vmdk_cluster_lookup(e, off, &host);
    if (kind < 0) {
        return kind;
    }
    if (kind == VMDK_OK) {
        /* Grains are appended; one cannot be replaced (QEMU's words). */
        return error_set(EIO, "Could not write to allocated cluster for "
                              "streamOptimized");
    }
    uint64_t at = e->next_cluster_sector;
    if (csize > UINT32_MAX - 12 || at > UINT32_MAX ||
        at * VMDK_SECTOR + 12 + csize >
            ((uint64_t)UINT32_MAX + 1) * VMDK_SECTOR) {
        return error_set(EFBIG,
                         "%s: the extent file is full (grain "
                         "offsets are 32-bit sectors)",
                         e->filename);
    }
    /* The grain marker: guest sector (LE64) and data size (LE32). */
    uint8_t *m = malloc(12 + csize);
    if (!m) {
        return error_set(ENOMEM, "Out of memory");
    }
    store_le64(m, sector);
    store_le32(m + 8, (uint32_t)csize);
    memcpy(m + 12, data, csize);
    int ret = io_pwrite(e->io, m, 12 + csize, at * VMDK_SECTOR);
    free(m);
    /*
     * QEMU allocates a whole grain's room before writing the compressed
     * one into it: the file reaches at least the end of that room (a
     * hole), which is how its images end.
     */
    int64_t fsize = ret < 0 ? 0 : io_get_size(e->io);
    uint64_t room = (at + e->cluster_sectors) * VMDK_SECTOR;
    if (fsize < 0) {
        ret = (int)fsize;
    } else if (ret == 0 && (uint64_t)fsize < room) {
        ret = io_truncate(e->io, room);
    }
    if (ret < 0) {
        return ret;
    }
    /* The next grain starts at the next sector: no padding is written. */
    e->next_cluster_sector =
        div_round_up_u64(at * VMDK_SECTOR + 12 + csize, VMDK_SECTOR);
    return set_gte(e, off, (uint32_t)at);
}
