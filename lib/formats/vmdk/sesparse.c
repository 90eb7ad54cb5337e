/*
 * ESXi seSparse extents, read only (as QEMU reads them).  The extent
 * starts with a 512-byte const header of 64-bit little-endian fields;
 * a volatile header sector says whether a journal must be replayed.
 * The grain directory and grain tables hold 64-bit entries whose top
 * nibble is a type: a directory entry 0x1 names a grain table by index,
 * a table entry 0x3 names a grain by index (its 60 bits stored with the
 * low 12 bits on top), 0x1 and 0x2 read as zero, 0 is unallocated.
 * Grains are 4 KiB (8 sectors), tables 4096 entries (16 MiB of guest).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "formats/vmdk/vmdk.h"
#include "util/checked.h"
#include "util/endian.h"
#include "util/zero.h"

#define SE_CONST_MAGIC UINT64_C(0x00000000cafebabe)
#define SE_VOLATILE_MAGIC UINT64_C(0x00000000cafecafe)
#define SE_VERSION UINT64_C(0x0000000200000001)
#define SE_GRAIN_SECTORS 8u
#define SE_GT_SECTORS 64u
#define SE_GT_ENTRIES (SE_GT_SECTORS * VMDK_SECTOR / 8u)

/* Byte offsets of the const header fields used here. */
enum {
    SE_MAGIC = 0,
    SE_VERSION_OFF = 8,
    SE_CAPACITY = 16,
    SE_GRAIN_SIZE = 24,
    SE_GT_SIZE = 32,
    SE_FLAGS = 40,
    SE_RESERVED = 48, /* four fields */
    SE_VOLATILE_OFF = 80,
    SE_GD_OFF = 128,
    SE_GD_SIZE = 136,
    SE_GTS_OFF = 144,
    SE_GRAINS_OFF = 192,
    SE_CONST_PAD = 208, /* zero to the end of the sector */
};

/* The volatile header: magic, free gt number, txn seq, replay flag. */
enum {
    SE_V_MAGIC = 0,
    SE_V_REPLAY = 24,
    SE_V_PAD = 32,
};

static int check_const_header(const uint8_t *b)
{
    uint64_t v = load_le64(b + SE_MAGIC);
    if (v != SE_CONST_MAGIC) {
        return error_set(EINVAL, "Bad const header magic: 0x%016" PRIx64, v);
    }
    v = load_le64(b + SE_VERSION_OFF);
    if (v != SE_VERSION) {
        return error_set(ENOTSUP, "Unsupported version: 0x%016" PRIx64, v);
    }
    v = load_le64(b + SE_GRAIN_SIZE);
    if (v != SE_GRAIN_SECTORS) {
        return error_set(ENOTSUP, "Unsupported grain size: %" PRIu64, v);
    }
    v = load_le64(b + SE_GT_SIZE);
    if (v != SE_GT_SECTORS) {
        return error_set(ENOTSUP, "Unsupported grain table size: %" PRIu64, v);
    }
    v = load_le64(b + SE_FLAGS);
    if (v != 0) {
        return error_set(ENOTSUP, "Unsupported flags: 0x%016" PRIx64, v);
    }
    uint64_t r[4];
    for (int i = 0; i < 4; i++) {
        r[i] = load_le64(b + SE_RESERVED + 8 * i);
    }
    if (r[0] || r[1] || r[2] || r[3]) {
        return error_set(ENOTSUP,
                         "Unsupported reserved bits: 0x%016" PRIx64
                         " 0x%016" PRIx64 " 0x%016" PRIx64 " 0x%016" PRIx64,
                         r[0], r[1], r[2], r[3]);
    }
    if (!buf_is_zero(b + SE_CONST_PAD, VMDK_SECTOR - SE_CONST_PAD)) {
        return error_set(ENOTSUP, "Unsupported non-zero const header padding");
    }
    return 0;
}

static int check_volatile_header(const uint8_t *b)
{
    uint64_t v = load_le64(b + SE_V_MAGIC);
    if (v != SE_VOLATILE_MAGIC) {
        return error_set(EINVAL, "Bad volatile header magic: 0x%016" PRIx64, v);
    }
    if (load_le64(b + SE_V_REPLAY) != 0) {
        return error_set(ENOTSUP,
                         "Image is dirty, Replaying journal not supported");
    }
    if (!buf_is_zero(b + SE_V_PAD, VMDK_SECTOR - SE_V_PAD)) {
        return error_set(ENOTSUP,
                         "Unsupported non-zero volatile header padding");
    }
    return 0;
}

/*
 * The directory as far as the file holds it (QEMU reads zeros past the
 * end), counted against the limit for all extents together.
 */
static int load_se_directory(struct vmdk_state *s, struct vmdk_extent *e)
{
    int64_t fsize = io_get_size(e->io);
    if (fsize < 0) {
        return (int)fsize;
    }
    uint64_t off = e->l1_offset;
    uint64_t n = 0;
    if (off < (uint64_t)fsize) {
        n = min_u64(e->l1_size, div_round_up_u64((uint64_t)fsize - off, 8));
    }
    if (n > VMDK_MAX_GD_ENTRIES_TOTAL - s->gd_entries) {
        return error_set(EFBIG,
                         "The extents' grain directories are too "
                         "big together (more than %llu entries)",
                         (unsigned long long)VMDK_MAX_GD_ENTRIES_TOTAL);
    }
    s->gd_entries += n;
    uint64_t *t = calloc(n ? n : 1, sizeof(uint64_t));
    if (!t) {
        return error_set(ENOMEM, "Out of memory");
    }
    int ret = n ? io_pread(e->io, t, n * 8, off) : 0;
    if (ret < 0) {
        free(t);
        return error_set_errno(-ret,
                               "Could not read l1 table from extent "
                               "'%s'",
                               e->filename);
    }
    for (uint64_t i = 0; i < n; i++) {
        t[i] = load_le64(&t[i]);
    }
    e->se_l1 = t;
    e->l1_loaded = (uint32_t)n;
    return 0;
}

/*
 * The byte offset of a sector field as QEMU computes it: the product
 * wraps modulo 2^64, and a request past its largest offset fails (EIO).
 * False for those.
 */
static bool se_offset(uint64_t sectors, uint64_t *out)
{
    uint64_t off = sectors * VMDK_SECTOR;
    *out = off;
    return off <= (uint64_t)INT64_MAX - (UINT64_C(1) << 31);
}

int vmdk_open_sesparse_extent(struct vmdk_state *s, struct qimg_io *io,
                              bool own_io, const char *filename, bool writable,
                              struct vmdk_extent **out)
{
    if (writable) {
        /* QEMU: a read-write open without auto-read-only fails so. */
        return error_set(EACCES,
                         "No write support for seSparse images available");
    }
    uint8_t b[VMDK_SECTOR];
    int ret = io_pread(io, b, sizeof(b), 0);
    if (ret < 0) {
        return error_set_errno(-ret,
                               "Could not read const header from "
                               "file '%s'",
                               filename);
    }
    ret = check_const_header(b);
    if (ret < 0) {
        return ret;
    }
    uint64_t vol = 0;
    uint8_t vb[VMDK_SECTOR];
    if (!se_offset(load_le64(b + SE_VOLATILE_OFF), &vol)) {
        return error_set(EIO,
                         "Could not read volatile header from "
                         "file '%s': Input/output error",
                         filename);
    }
    ret = io_pread(io, vb, sizeof(vb), vol);
    if (ret < 0) {
        return error_set_errno(-ret,
                               "Could not read volatile header from "
                               "file '%s'",
                               filename);
    }
    ret = check_volatile_header(vb);
    if (ret < 0) {
        return ret;
    }
    /*
     * QEMU computes the directory's entry count in 64 bits and keeps
     * the low 32 (vmdk_add_extent takes a uint32_t), then bounds it.
     */
    uint64_t gd_size = load_le64(b + SE_GD_SIZE);
    uint32_t l1_size = (uint32_t)(gd_size * (VMDK_SECTOR / 8));
    if (l1_size > VMDK_MAX_GD_ENTRIES) {
        return error_set(EFBIG, "L1 size too big");
    }
    uint64_t gd_off = 0;
    if (!se_offset(load_le64(b + SE_GD_OFF), &gd_off)) {
        return error_set(EIO,
                         "Could not read l1 table from extent "
                         "'%s': Input/output error",
                         filename);
    }
    struct vmdk_extent *e = NULL;
    ret = vmdk_extent_append(s, &e);
    if (ret < 0) {
        return ret;
    }
    e->io = io; /* for load_se_directory; counted by vmdk_extent_commit */
    e->filename = strdup(filename);
    if (!e->filename) {
        ret = error_set(ENOMEM, "Out of memory");
        goto fail;
    }
    e->sesparse = true;
    e->sectors = load_le64(b + SE_CAPACITY);
    e->cluster_sectors = SE_GRAIN_SECTORS;
    e->l2_size = SE_GT_ENTRIES;
    e->l1_entry_sectors = (uint64_t)SE_GT_ENTRIES * SE_GRAIN_SECTORS;
    e->l1_size = l1_size;
    e->l1_offset = gd_off;
    e->se_gt_offset = load_le64(b + SE_GTS_OFF);
    e->se_grains_offset = load_le64(b + SE_GRAINS_OFF);
    ret = load_se_directory(s, e);
    if (ret < 0) {
        goto fail;
    }
    e->se_l2_cache = calloc((size_t)VMDK_L2_CACHE * SE_GT_ENTRIES, 8);
    if (!e->se_l2_cache) {
        ret = error_set(ENOMEM, "Out of memory");
        goto fail;
    }
    for (int i = 0; i < VMDK_L2_CACHE; i++) {
        e->l2_cache_off[i] = UINT64_MAX;
    }
    /* vmdk_extent_commit sets the name again. */
    free(e->filename);
    e->filename = NULL;
    ret = vmdk_extent_commit(s, e, io, own_io, filename);
    if (ret < 0) {
        goto fail;
    }
    *out = &s->extents[s->nb_extents - 1];
    return 0;
fail:
    e->own_io = false; /* the caller still owns io on failure */
    vmdk_extent_free(e);
    return ret;
}

bool vmdk_sesparse_gd_empty(const struct vmdk_extent *e, uint64_t l1_index)
{
    return l1_index >= e->l1_loaded || e->se_l1[l1_index] == 0;
}

/* The grain table at byte off, through the cache. */
static int load_se_l2(struct vmdk_extent *e, uint64_t off, const uint64_t **out)
{
    for (int i = 0; i < VMDK_L2_CACHE; i++) {
        if (e->l2_cache_off[i] == off) {
            *out = e->se_l2_cache + (size_t)i * SE_GT_ENTRIES;
            return 0;
        }
    }
    uint32_t slot = e->l2_cache_next;
    e->l2_cache_next = (slot + 1) % VMDK_L2_CACHE;
    uint64_t *t = e->se_l2_cache + (size_t)slot * SE_GT_ENTRIES;
    e->l2_cache_off[slot] = UINT64_MAX;
    int ret = io_pread(e->io, t, (size_t)SE_GT_ENTRIES * 8, off);
    if (ret < 0) {
        return error_set_errno(-ret, "Could not read grain table of '%s'",
                               e->filename);
    }
    for (size_t i = 0; i < SE_GT_ENTRIES; i++) {
        t[i] = load_le64(&t[i]);
    }
    e->l2_cache_off[slot] = off;
    *out = t;
    return 0;
}

static int bad_entry(const struct vmdk_extent *e, uint64_t off,
                     const char *what)
{
    return error_set(EIO, "Invalid %s for guest sector %llu of '%s'", what,
                     (unsigned long long)(off / VMDK_SECTOR), e->filename);
}

int vmdk_sesparse_lookup(struct vmdk_extent *e, uint64_t off, uint64_t *host)
{
    uint64_t sector = off / VMDK_SECTOR - (e->end_sector - e->sectors);
    uint64_t l1_index = sector / e->l1_entry_sectors;
    if (l1_index >= e->l1_size) {
        return error_set(EIO,
                         "Guest sector %llu of '%s' is outside its "
                         "grain directory",
                         (unsigned long long)(off / VMDK_SECTOR), e->filename);
    }
    uint64_t gde = l1_index < e->l1_loaded ? e->se_l1[l1_index] : 0;
    if (gde == 0) {
        return VMDK_UNALLOC;
    }
    /* QEMU: the top 32 bits must be exactly 0x10000000. */
    if ((gde >> 32) != UINT64_C(0x10000000)) {
        return bad_entry(e, off, "grain directory entry");
    }
    /* QEMU's sum wraps modulo 2^64; it must then fit 32 bits. */
    uint64_t gt_sector = e->se_gt_offset + (gde & UINT32_MAX) * SE_GT_SECTORS;
    if (gt_sector > UINT32_MAX) {
        return bad_entry(e, off, "grain directory entry");
    }
    const uint64_t *l2 = NULL;
    int ret = load_se_l2(e, gt_sector * VMDK_SECTOR, &l2);
    if (ret < 0) {
        return ret;
    }
    uint64_t gte = l2[(sector / e->cluster_sectors) % e->l2_size];
    switch (gte >> 60) {
    case 0x0:
        if (gte != 0) {
            return bad_entry(e, off, "grain table entry");
        }
        return VMDK_UNALLOC;
    case 0x1: /* unmapped (SCSI UNMAP) */
    case 0x2: /* zeroed */
        return VMDK_ZEROED;
    case 0x3: {
        /* The grain index: 12 low bits stored above the other 48. */
        uint64_t idx = ((gte >> 48) & 0xfff) |
                       ((gte & UINT64_C(0x0000ffffffffffff)) << 12);
        /*
         * QEMU computes the host offset modulo 2^64 (so a huge index
         * may land back in the file); a request past its largest
         * offset fails.
         */
        if (!se_offset(e->se_grains_offset + idx * SE_GRAIN_SECTORS, host)) {
            return bad_entry(e, off, "grain table entry");
        }
        return VMDK_OK;
    }
    default:
        return bad_entry(e, off, "grain table entry");
    }
}
