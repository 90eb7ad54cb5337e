/*
 * vpc: Microsoft's Virtual Hard Disk (VHD), fixed and dynamic images, as
 * qemu-img 7.2 reads and writes them ("Virtual Hard Disk Image Format
 * Specification", Microsoft, 2006; sections cited as [spec]).
 *
 * Layout.  Every image ends with a 512-byte footer [spec "Hard Disk Footer
 * Format"].  A fixed image is the guest disk followed by the footer.  A
 * dynamic image starts with a copy of the footer, then the 1024-byte
 * dynamic disk header [spec "Dynamic Disk Header Format"], the block
 * allocation table (BAT, one big-endian sector number per block, all-ones
 * when the block is absent), and the blocks, each a sector bitmap followed
 * by block_size bytes of data.  The footer is rewritten after the last
 * block whenever a block is added.
 *
 * [QEMU] rules followed here, found by measurement:
 * - The footer at offset 0 decides: if it carries the cookie, the image is
 *   opened as dynamic (the dynamic header is parsed whatever its disk
 *   type says); otherwise the footer at the end must carry the cookie and
 *   disk type 2 (fixed).  A bad checksum on the footer used is fatal
 *   ("Incorrect header checksum"); the copy is not tried.  The dynamic
 *   header's checksum is not checked.
 * - Guest I/O goes straight to the file when the footer says fixed, and
 *   through the BAT otherwise.
 * - The sector bitmaps are not consulted on reads: an allocated block
 *   reads its data area as it is.  A write to a block sets its whole
 *   bitmap (once per block in a row of writes), so no sector written is
 *   ever marked absent.
 * - The virtual size is the CHS geometry's (cylinders * heads * sectors)
 *   for images made by Virtual PC, QEMU's "qemu" and unknown creators,
 *   and current_size for Hyper-V ("win "), QEMU with force_size ("qem2"),
 *   Disk2vhd ("d2v "), XenConverter ("CTXS") and XenServer ("tap\0"), and
 *   for any image whose geometry is the maximum one.
 * - A damaged BAT entry can place a block (its bitmap or data) on the
 *   footer copy, the dynamic header or the BAT; QEMU then writes the
 *   bitmap and guest data over them.  qimg refuses such a write.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "core/error.h"
#include "driver.h"
#include "util/checked.h"
#include "util/endian.h"

#define VPC_SECTOR 512u

/* [spec] Hard Disk Footer: field offsets. */
#define VPC_FOOTER_SIZE 512u
#define FT_COOKIE 0 /* "conectix" */
#define FT_FEATURES 8
#define FT_VERSION 12
#define FT_DATA_OFFSET 16 /* the dynamic header; all-ones when fixed */
#define FT_TIMESTAMP 24   /* seconds since 2000-01-01 00:00 UTC */
#define FT_CREATOR_APP 28
#define FT_CREATOR_VER 32
#define FT_CREATOR_OS 36
#define FT_ORIG_SIZE 40
#define FT_CURRENT_SIZE 48
#define FT_CYLS 56 /* be16 */
#define FT_HEADS 58
#define FT_SECS 59
#define FT_DISK_TYPE 60
#define FT_CHECKSUM 64
#define FT_UUID 68

/* [spec] Dynamic Disk Header: field offsets. */
#define VPC_DYN_SIZE 1024u
#define DH_COOKIE 0 /* "cxsparse" */
#define DH_DATA_OFFSET 8
#define DH_TABLE_OFFSET 16
#define DH_VERSION 24
#define DH_MAX_TABLE_ENTRIES 28
#define DH_BLOCK_SIZE 32
#define DH_CHECKSUM 36

#define VPC_TYPE_FIXED 2
#define VPC_TYPE_DYNAMIC 3
#define VPC_BAT_UNUSED 0xffffffffu

/* [spec] the largest geometry: 65535 cylinders, 16 heads, 255 sectors. */
#define VPC_MAX_CYLS 65535u
#define VPC_MAX_HEADS 16u
#define VPC_MAX_SECS 255u
#define VPC_MAX_GEOMETRY                                                       \
    ((uint64_t)VPC_MAX_CYLS * VPC_MAX_HEADS * VPC_MAX_SECS)
/* [QEMU] refuses disks above 2040 GiB (VHD's 32-bit sector numbers). */
#define VPC_MAX_SECTORS 0xff000000ull
/* [QEMU] a BAT of more entries is refused ("Max Table Entries too large"). */
#define VPC_MAX_TABLE_ENTRIES (0x7fffffffu / 4)
/* [QEMU] one read request is at most this many bytes (else it fails). */
#define VPC_MAX_REQUEST 0x7ffffe00ull
/* [QEMU] no request may reach past this offset (2^63 - 2^30). */
#define VPC_MAX_OFFSET 0x7fffffffc0000000ull
/* Blocks one block status call looks at, at most. */
#define VPC_STATUS_MAX_BLOCKS 65536u
/* The block size qemu-img creates dynamic images with. */
#define VPC_CREATE_BLOCK_SIZE (2u * 1024 * 1024)
/* Where qemu-img puts the BAT: after the footer copy and the header. */
#define VPC_CREATE_BAT_OFFSET (3u * VPC_SECTOR)
/* [spec] VHD time stamps count from 2000-01-01 00:00:00 UTC. */
#define VPC_TIME_BASE 946684800

static const char VPC_COOKIE[8] = {'c', 'o', 'n', 'e', 'c', 't', 'i', 'x'};
static const char VPC_DYN_COOKIE[8] = {'c', 'x', 's', 'p', 'a', 'r', 's', 'e'};

struct vpc_state {
    uint8_t footer[VPC_FOOTER_SIZE];
    /* The footer says fixed: guest offsets are file offsets. */
    bool fixed_io;
    /* The dynamic header was parsed (the footer was found at 0). */
    bool dynamic;
    uint32_t block_size;  /* a power of two, >= 512 */
    uint32_t bitmap_size; /* sector bitmap bytes before each block */
    uint32_t max_entries; /* BAT entries, as the header says */
    /*
     * The BAT entries stored inside the file.  [QEMU] reads the part of
     * the BAT past the end of the file as zeros, so entries from
     * bat_loaded on are 0 (block at sector 0) and need no memory.
     */
    uint32_t *bat;
    uint32_t bat_loaded;
    uint64_t bat_offset;
    uint64_t header_offset; /* the dynamic header's */
    /* Where the next block goes (the footer sits there). */
    uint64_t free_offset;
    /* The bitmap last set by a write, or UINT64_MAX. */
    uint64_t last_bitmap;
    uint8_t *ones; /* bitmap_size bytes of 0xff, for writes */
};

/* [spec] one's complement of the byte sum, checksum field counted as 0. */
static uint32_t vpc_checksum(const uint8_t *buf, size_t len, size_t ck_off)
{
    uint32_t sum = 0;
    for (size_t i = 0; i < len; i++) {
        if (i < ck_off || i >= ck_off + 4) {
            sum += buf[i];
        }
    }
    return ~sum;
}

/*
 * [spec] "CHS Calculation": the geometry Virtual PC gives a disk of
 * total sectors (capped at the largest geometry).
 */
static void vpc_geometry(uint64_t total, uint16_t *cyls, uint8_t *heads,
                         uint8_t *secs)
{
    uint64_t cth;
    unsigned h, s;
    total = min_u64(total, VPC_MAX_GEOMETRY);
    if (total >= (uint64_t)VPC_MAX_CYLS * 16 * 63) {
        s = 255;
        h = 16;
        cth = total / s;
    } else {
        s = 17;
        cth = total / s;
        h = (unsigned)div_round_up_u64(cth, 1024);
        if (h < 4) {
            h = 4;
        }
        if (cth >= (uint64_t)h * 1024 || h > 16) {
            s = 31;
            h = 16;
            cth = total / s;
        }
        if (cth >= (uint64_t)h * 1024) {
            s = 63;
            h = 16;
            cth = total / s;
        }
    }
    *cyls = (uint16_t)(cth / h);
    *heads = (uint8_t)h;
    *secs = (uint8_t)s;
}

static int vpc_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    /* Only dynamic images start with a footer; fixed ones probe as raw. */
    return len >= sizeof(VPC_COOKIE) &&
                   memcmp(buf, VPC_COOKIE, sizeof(VPC_COOKIE)) == 0
               ? 100
               : 0;
}

/*
 * Does the creator use current_size rather than the geometry?  [QEMU]'s
 * list; "tap" is matched with its NUL.
 */
static bool vpc_creator_uses_size(const uint8_t *app)
{
    static const char *const apps[] = {"win ", "qem2", "d2v ", "CTXS",
                                       "tap"};
    for (size_t i = 0; i < sizeof(apps) / sizeof(apps[0]); i++) {
        if (memcmp(app, apps[i], 4) == 0) {
            return true;
        }
    }
    return false;
}

/* A read QEMU's block layer would refuse (too long or too far). */
static bool vpc_read_refused(uint64_t off, uint64_t len)
{
    return len > VPC_MAX_REQUEST || off > VPC_MAX_OFFSET - len;
}

static void vpc_free(struct vpc_state *s)
{
    if (s) {
        free(s->bat);
        free(s->ones);
        free(s);
    }
}

static int vpc_read_footer(struct qimg_node *node, struct vpc_state *s,
                           uint64_t file_size)
{
    uint8_t *f = s->footer;
    int ret = io_pread(node->file, f, VPC_FOOTER_SIZE, 0);
    if (ret < 0) {
        return error_set_errno(-ret, "Unable to read VHD header");
    }
    s->dynamic = true;
    if (memcmp(f + FT_COOKIE, VPC_COOKIE, sizeof(VPC_COOKIE)) != 0) {
        /* A fixed disk has its footer at the end only. */
        if (file_size < VPC_FOOTER_SIZE) {
            return error_set(EINVAL, "invalid VPC image");
        }
        ret = io_pread(node->file, f, VPC_FOOTER_SIZE,
                       file_size - VPC_FOOTER_SIZE);
        if (ret < 0) {
            return error_set_errno(-ret, "Unable to read VHD header");
        }
        if (memcmp(f + FT_COOKIE, VPC_COOKIE, sizeof(VPC_COOKIE)) != 0 ||
            load_be32(f + FT_DISK_TYPE) != VPC_TYPE_FIXED) {
            return error_set(EINVAL, "invalid VPC image");
        }
        s->dynamic = false;
    }
    if (vpc_checksum(f, VPC_FOOTER_SIZE, FT_CHECKSUM) !=
        load_be32(f + FT_CHECKSUM)) {
        return error_set(EINVAL, "Incorrect header checksum");
    }
    s->fixed_io = load_be32(f + FT_DISK_TYPE) == VPC_TYPE_FIXED;

    uint64_t sectors = (uint64_t)load_be16(f + FT_CYLS) * f[FT_HEADS] *
                       f[FT_SECS];
    if (vpc_creator_uses_size(f + FT_CREATOR_APP) ||
        sectors == VPC_MAX_GEOMETRY) {
        sectors = load_be64(f + FT_CURRENT_SIZE) / VPC_SECTOR;
    }
    if (sectors > VPC_MAX_SECTORS) {
        return error_set(EFBIG, "Could not open '%s': File too large",
                         node->filename);
    }
    node->size = sectors * VPC_SECTOR;
    return 0;
}

/* Parse the dynamic header and load the BAT. */
static int vpc_read_dynamic(struct qimg_node *node, struct vpc_state *s,
                            uint64_t file_size)
{
    uint8_t h[VPC_DYN_SIZE];
    uint64_t hoff = load_be64(s->footer + FT_DATA_OFFSET);
    if (vpc_read_refused(hoff, sizeof(h))) {
        return error_set(EINVAL, "Error reading dynamic VHD header");
    }
    int ret = io_pread(node->file, h, sizeof(h), hoff);
    if (ret < 0) {
        return error_set_errno(-ret, "Error reading dynamic VHD header");
    }
    if (memcmp(h + DH_COOKIE, VPC_DYN_COOKIE, sizeof(VPC_DYN_COOKIE)) != 0) {
        return error_set(EINVAL, "Invalid header magic");
    }
    uint32_t bs = load_be32(h + DH_BLOCK_SIZE);
    if (bs < VPC_SECTOR || (bs & (bs - 1)) != 0) {
        return error_set(EINVAL, "Invalid block size %" PRIu32, bs);
    }
    s->block_size = bs;
    /* One bit per sector, in whole sectors. */
    s->bitmap_size =
        (uint32_t)align_down_u64(bs / (8 * VPC_SECTOR) + 511, VPC_SECTOR);
    s->max_entries = load_be32(h + DH_MAX_TABLE_ENTRIES);
    if (node->size / bs > 0xffffffffu) {
        return error_set(EINVAL, "Too many blocks");
    }
    /* No overflow: both factors are below 2^32. */
    if ((uint64_t)s->max_entries * bs < node->size) {
        return error_set(EINVAL, "Page table too small");
    }
    if (s->max_entries > VPC_MAX_TABLE_ENTRIES) {
        return error_set(EINVAL, "Max Table Entries too large (%" PRId32 ")",
                         (int32_t)s->max_entries);
    }
    uint64_t bat_bytes = (uint64_t)s->max_entries * 4;
    s->header_offset = hoff;
    s->bat_offset = load_be64(h + DH_TABLE_OFFSET);
    if (vpc_read_refused(s->bat_offset, bat_bytes)) {
        return error_set(EINVAL, "Error reading pagetable");
    }

    /* Only the part inside the file takes memory; the rest reads as 0. */
    uint64_t in_file = s->bat_offset < file_size ? file_size - s->bat_offset
                                                 : 0;
    s->bat_loaded =
        (uint32_t)min_u64(s->max_entries, div_round_up_u64(in_file, 4));
    if (s->bat_loaded > 0) {
        s->bat = calloc(s->bat_loaded, 4);
        if (!s->bat) {
            return error_set(ENOMEM, "Unable to allocate memory for page "
                             "table");
        }
        size_t n = (size_t)min_u64(in_file, (uint64_t)s->bat_loaded * 4);
        ret = io_pread(node->file, s->bat, n, s->bat_offset);
        if (ret < 0) {
            return error_set_errno(-ret, "Error reading pagetable");
        }
    }

    /* The first free byte: past the BAT and past every block. */
    uint64_t block_span = (uint64_t)s->bitmap_size + bs;
    uint64_t fdbo = 0;
    /* No overflow: the BAT range was bounded above. */
    (void)align_up_overflow_u64(s->bat_offset + bat_bytes, VPC_SECTOR, &fdbo);
    for (uint32_t i = 0; i < s->bat_loaded; i++) {
        uint32_t e = load_be32(&s->bat[i]);
        s->bat[i] = e;
        if (e != VPC_BAT_UNUSED) {
            /* At most 2^41 + 2^32: no overflow. */
            fdbo = max_u64(fdbo, (uint64_t)e * VPC_SECTOR + block_span);
        }
    }
    if (s->bat_loaded < s->max_entries) {
        fdbo = max_u64(fdbo, block_span);
    }
    if (fdbo > file_size) {
        return error_set(EINVAL, "block-vpc: free_data_block_offset points "
                         "after the end of file. The image has been "
                         "truncated.");
    }
    s->free_offset = fdbo;
    s->last_bitmap = UINT64_MAX;
    return 0;
}

static int vpc_open(struct qimg_node *node, unsigned flags)
{
    (void)flags;
    struct vpc_state *s = calloc(1, sizeof(*s));
    if (!s) {
        return error_set(ENOMEM, "Out of memory");
    }
    int64_t fsize = io_get_size(node->file);
    int ret = (int)fsize;
    if (fsize >= 0) {
        ret = vpc_read_footer(node, s, (uint64_t)fsize);
    }
    if (ret == 0 && s->dynamic) {
        ret = vpc_read_dynamic(node, s, (uint64_t)fsize);
    }
    if (ret < 0) {
        vpc_free(s);
        return ret;
    }
    node->opaque = s;
    return 0;
}

static void vpc_close(struct qimg_node *node)
{
    vpc_free(node->opaque);
    node->opaque = NULL;
}

static uint32_t vpc_bat_entry(const struct vpc_state *s, uint64_t index)
{
    if (index >= s->max_entries) {
        return VPC_BAT_UNUSED;
    }
    return index < s->bat_loaded ? s->bat[index] : 0;
}

/* The file offset of guest offset off in the block of BAT entry e. */
static uint64_t vpc_host_offset(const struct vpc_state *s, uint32_t e,
                                uint64_t off)
{
    return (uint64_t)e * VPC_SECTOR + s->bitmap_size +
           (off & (s->block_size - 1));
}

static int vpc_pread(struct qimg_node *node, void *buf, size_t len,
                     uint64_t off)
{
    struct vpc_state *s = node->opaque;
    if (s->fixed_io) {
        return io_pread(node->file, buf, len, off);
    }
    uint8_t *p = buf;
    while (len > 0) {
        uint64_t in_block = off & (s->block_size - 1);
        size_t n = (size_t)min_u64(len, s->block_size - in_block);
        uint32_t e = vpc_bat_entry(s, off / s->block_size);
        int ret;
        if (e == VPC_BAT_UNUSED) {
            ret = node_read_below(node, p, n, off);
        } else {
            ret = io_pread(node->file, p, n, vpc_host_offset(s, e, off));
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

static int vpc_sync(struct qimg_node *node)
{
    int ret = node_sync(node, node->file);
    if (ret < 0) {
        return error_set_errno(-ret, "%s: could not flush", node->filename);
    }
    return 0;
}

static int vpc_ones(struct vpc_state *s)
{
    if (!s->ones) {
        s->ones = malloc(s->bitmap_size);
        if (!s->ones) {
            return error_set(ENOMEM, "Out of memory");
        }
        memset(s->ones, 0xff, s->bitmap_size);
    }
    return 0;
}

/*
 * Add the block for BAT index, crash-safe: its bitmap (all set) first,
 * then the footer at the new end of the file, then the BAT entry, each
 * made durable before the next.  A crash before the BAT entry leaves the
 * block unreachable but the image intact.
 */
static int vpc_alloc_block(struct qimg_node *node, struct vpc_state *s,
                           uint64_t index, uint32_t *entry)
{
    if (index >= s->bat_loaded) {
        return error_set(EIO, "%s: block %" PRIu64 " has no BAT entry",
                         node->filename, index);
    }
    uint64_t start = s->free_offset;
    uint64_t end;
    if (start / VPC_SECTOR > 0xfffffffeu ||
        add_overflow_u64(start, (uint64_t)s->bitmap_size + s->block_size,
                         &end) ||
        end > VPC_MAX_OFFSET - VPC_FOOTER_SIZE) {
        return error_set(EFBIG, "%s: the image file is full",
                         node->filename);
    }
    int ret = vpc_ones(s);
    if (ret < 0) {
        return ret;
    }
    ret = io_pwrite(node->file, s->ones, s->bitmap_size, start);
    if (ret == 0) {
        ret = vpc_sync(node);
    }
    if (ret == 0) {
        ret = io_pwrite(node->file, s->footer, VPC_FOOTER_SIZE, end);
    }
    if (ret == 0) {
        ret = vpc_sync(node);
    }
    uint8_t be[4];
    uint32_t e = (uint32_t)(start / VPC_SECTOR);
    store_be32(be, e);
    if (ret == 0) {
        ret = io_pwrite(node->file, be, sizeof(be),
                        s->bat_offset + index * 4);
    }
    if (ret == 0) {
        ret = vpc_sync(node);
    }
    if (ret < 0) {
        return ret;
    }
    s->free_offset = end;
    s->bat[index] = e;
    s->last_bitmap = start;
    *entry = e;
    return 0;
}

static bool vpc_overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return a < b + blen && b < a + alen;
}

/*
 * A write into the existing block at sector e (its bitmap and data) must
 * not land on the footer copy, the dynamic header or the BAT.  All the
 * ranges end below 2^42 (vpc_read_refused and the 32-bit entry).
 */
static int vpc_check_block(struct qimg_node *node, const struct vpc_state *s,
                           uint32_t e)
{
    uint64_t start = (uint64_t)e * VPC_SECTOR;
    uint64_t span = (uint64_t)s->bitmap_size + s->block_size;
    const char *what = NULL;
    if (start < VPC_FOOTER_SIZE) {
        what = "the footer copy";
    } else if (vpc_overlaps(start, span, s->header_offset, VPC_DYN_SIZE)) {
        what = "the dynamic header";
    } else if (vpc_overlaps(start, span, s->bat_offset,
                            (uint64_t)s->max_entries * 4)) {
        what = "the BAT";
    }
    if (what) {
        return error_set(EIO, "%s: VHD image is corrupt: the block at offset "
                         "%" PRIu64 " lies on %s",
                         node->filename, start, what);
    }
    return 0;
}

static int vpc_pwrite(struct qimg_node *node, const void *buf, size_t len,
                      uint64_t off)
{
    struct vpc_state *s = node->opaque;
    if (s->fixed_io) {
        return io_pwrite(node->file, buf, len, off);
    }
    const uint8_t *p = buf;
    while (len > 0) {
        uint64_t in_block = off & (s->block_size - 1);
        size_t n = (size_t)min_u64(len, s->block_size - in_block);
        uint64_t index = off / s->block_size;
        uint32_t e = vpc_bat_entry(s, index);
        int ret = e == VPC_BAT_UNUSED ? vpc_alloc_block(node, s, index, &e)
                                      : vpc_check_block(node, s, e);
        if (ret == 0 && (uint64_t)e * VPC_SECTOR != s->last_bitmap) {
            /* Mark every sector of the block present (see the top). */
            uint64_t bitmap = (uint64_t)e * VPC_SECTOR;
            ret = vpc_ones(s);
            if (ret == 0) {
                ret = io_pwrite(node->file, s->ones, s->bitmap_size, bitmap);
            }
            if (ret == 0) {
                ret = vpc_sync(node);
            }
            if (ret == 0) {
                s->last_bitmap = bitmap;
            }
        }
        if (ret == 0) {
            ret = io_pwrite(node->file, p, n, vpc_host_offset(s, e, off));
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

static int vpc_flush(struct qimg_node *node)
{
    return node_sync(node, node->file);
}

/*
 * [QEMU]: a fixed image is the file (its holes read as zero); in a
 * dynamic one an allocated block is data up to its end, and absent blocks
 * in a row are one zero run.
 */
static int vpc_block_status(struct qimg_node *node, uint64_t off,
                            uint64_t len, uint64_t *pnum, uint64_t *host_off)
{
    struct vpc_state *s = node->opaque;
    if (s->fixed_io) {
        *pnum = len;
        *host_off = off;
        return BS_DATA | BS_OFFSET_VALID | BS_RECURSE;
    }
    /* A bounded scan per call; the caller asks again for the rest. */
    len = min_u64(len, (uint64_t)s->block_size * VPC_STATUS_MAX_BLOCKS);
    uint64_t done = 0;
    while (done < len) {
        uint64_t pos = off + done;
        uint64_t n = min_u64(len - done,
                             s->block_size - (pos & (s->block_size - 1)));
        uint32_t e = vpc_bat_entry(s, pos / s->block_size);
        if (e != VPC_BAT_UNUSED) {
            if (done > 0) {
                break;
            }
            *pnum = n;
            *host_off = vpc_host_offset(s, e, pos);
            return BS_DATA | BS_OFFSET_VALID;
        }
        done += n;
    }
    *pnum = done;
    return BS_ZERO;
}

static int vpc_get_info(struct qimg_node *node, struct qimg_image_info *info)
{
    const struct vpc_state *s = node->opaque;
    if (!s->fixed_io) {
        info->cluster_size = s->block_size;
    }
    return 0;
}

static int64_t vpc_get_allocated(struct qimg_node *node)
{
    return node->file->ops->get_allocated(node->file);
}

/* ---- Creation ---------------------------------------------------------- */

static const struct qimg_opt_desc vpc_create_opts[] = {
    {"size", QIMG_OPT_SIZE, "Virtual disk size", NULL},
    {"subformat", QIMG_OPT_STRING,
     "Type of virtual hard disk format. Supported formats are "
     "{dynamic (default) | fixed} ",
     NULL},
    {"force_size", QIMG_OPT_BOOL,
     "Force disk size calculation to use the actual size specified, rather "
     "than using the nearest CHS-based calculation",
     NULL},
    {NULL, 0, NULL, NULL},
};

struct vpc_create_params {
    bool fixed;
    bool force_size;
    uint64_t size; /* rounded up to whole sectors */
};

static int vpc_create_params(const struct qimg_opts *opts,
                             struct vpc_create_params *p)
{
    memset(p, 0, sizeof(*p));
    uint64_t size = 0;
    const char *v = qimg_opts_get(opts, "size");
    if (v && qimg_parse_size(v, 'B', &size) < 0) {
        return error_set(EINVAL, "Parameter 'size' expects a non-negative "
                         "number below 2^64");
    }
    if (size > VPC_MAX_SECTORS * VPC_SECTOR) {
        return error_set(EFBIG, "The image size is too large for file "
                         "format 'vpc'");
    }
    p->size = (size + VPC_SECTOR - 1) & ~(uint64_t)(VPC_SECTOR - 1);
    if (p->size > VPC_MAX_SECTORS * VPC_SECTOR) {
        return error_set(EFBIG, "The image size is too large for file "
                         "format 'vpc'");
    }
    v = qimg_opts_get(opts, "subformat");
    if (v && strcmp(v, "fixed") == 0) {
        p->fixed = true;
    } else if (v && strcmp(v, "dynamic") != 0) {
        return error_set(EINVAL, "Parameter 'subformat' does not accept "
                         "value '%s'", v);
    }
    /* [QEMU] the file protocol's words (it parses this one for vpc). */
    v = qimg_opts_get(opts, "preallocation");
    if (v && strcmp(v, "off") != 0 && strcmp(v, "falloc") != 0 &&
        strcmp(v, "full") != 0) {
        return error_set(EINVAL, "invalid parameter value: %s", v);
    }
    v = qimg_opts_get(opts, "force_size");
    if (v && !opt_parse_bool(v, &p->force_size)) {
        return error_set(EINVAL, "Parameter 'force_size' expects 'on' or "
                         "'off'");
    }
    return 0;
}

/* A random (version 4) UUID, as QEMU stores in new images. */
static int vpc_uuid(uint8_t *out)
{
    size_t got = 0;
    while (got < 16) {
        ssize_t n = getrandom(out + got, 16 - got, 0);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return error_set_errno(errno, "Could not generate a UUID");
        }
        got += (size_t)n;
    }
    out[6] = (uint8_t)((out[6] & 0x0f) | 0x40);
    out[8] = (uint8_t)((out[8] & 0x3f) | 0x80);
    return 0;
}

/* The footer of a new image of total sectors. */
static int vpc_make_footer(uint8_t *f, const struct vpc_create_params *p,
                           uint64_t total)
{
    uint16_t cyls = 0;
    uint8_t heads = 0, secs = 0;
    if (p->force_size) {
        cyls = VPC_MAX_CYLS;
        heads = VPC_MAX_HEADS;
        secs = VPC_MAX_SECS;
    } else {
        /*
         * [QEMU] the smallest geometry of at least the size (capped at the
         * largest), searched one sector at a time: the geometries of the
         * algorithm are at most heads * sectors (4080) apart.
         */
        total = min_u64(total, VPC_MAX_GEOMETRY);
        for (uint64_t i = 0; total > (uint64_t)cyls * heads * secs; i++) {
            vpc_geometry(total + i, &cyls, &heads, &secs);
        }
    }
    uint64_t sectors = (uint64_t)cyls * heads * secs;
    if (sectors == VPC_MAX_GEOMETRY) {
        sectors = p->size / VPC_SECTOR;
        if (sectors > VPC_MAX_SECTORS) {
            return error_set(EFBIG, "Disk size is too large, max size is "
                             "2040 GiB");
        }
    }
    memset(f, 0, VPC_FOOTER_SIZE);
    memcpy(f + FT_COOKIE, VPC_COOKIE, sizeof(VPC_COOKIE));
    memcpy(f + FT_CREATOR_APP, p->force_size ? "qem2" : "qemu", 4);
    memcpy(f + FT_CREATOR_OS, "Wi2k", 4);
    store_be32(f + FT_FEATURES, 2); /* [spec] reserved bit, always set */
    store_be32(f + FT_VERSION, 0x00010000);
    store_be64(f + FT_DATA_OFFSET, p->fixed ? UINT64_MAX : VPC_SECTOR);
    store_be32(f + FT_TIMESTAMP, (uint32_t)(time(NULL) - VPC_TIME_BASE));
    /* [QEMU] claims to be Virtual PC 2007 (5.3). */
    store_be32(f + FT_CREATOR_VER, 0x00050003);
    store_be64(f + FT_ORIG_SIZE, sectors * VPC_SECTOR);
    store_be64(f + FT_CURRENT_SIZE, sectors * VPC_SECTOR);
    store_be16(f + FT_CYLS, cyls);
    f[FT_HEADS] = heads;
    f[FT_SECS] = secs;
    store_be32(f + FT_DISK_TYPE, p->fixed ? VPC_TYPE_FIXED
                                          : VPC_TYPE_DYNAMIC);
    int ret = vpc_uuid(f + FT_UUID);
    if (ret < 0) {
        return ret;
    }
    store_be32(f + FT_CHECKSUM, vpc_checksum(f, VPC_FOOTER_SIZE, FT_CHECKSUM));
    return 0;
}

static int vpc_write_dynamic(struct qimg_io *io, const uint8_t *footer)
{
    uint64_t size = load_be64(footer + FT_CURRENT_SIZE);
    uint64_t entries = div_round_up_u64(size, VPC_CREATE_BLOCK_SIZE);
    uint64_t bat_bytes;
    /* At most 2040 GiB / 2 MiB entries: no overflow. */
    (void)align_up_overflow_u64(entries * 4, VPC_SECTOR, &bat_bytes);

    uint8_t h[VPC_DYN_SIZE] = {0};
    memcpy(h + DH_COOKIE, VPC_DYN_COOKIE, sizeof(VPC_DYN_COOKIE));
    store_be64(h + DH_DATA_OFFSET, UINT64_MAX);
    store_be64(h + DH_TABLE_OFFSET, VPC_CREATE_BAT_OFFSET);
    store_be32(h + DH_VERSION, 0x00010000);
    store_be32(h + DH_MAX_TABLE_ENTRIES, (uint32_t)entries);
    store_be32(h + DH_BLOCK_SIZE, VPC_CREATE_BLOCK_SIZE);
    store_be32(h + DH_CHECKSUM, vpc_checksum(h, sizeof(h), DH_CHECKSUM));

    int ret = io_pwrite(io, footer, VPC_FOOTER_SIZE, 0);
    if (ret == 0) {
        ret = io_pwrite(io, h, sizeof(h), VPC_SECTOR);
    }
    /* The BAT, all entries absent, in sectors. */
    uint8_t ones[VPC_SECTOR];
    memset(ones, 0xff, sizeof(ones));
    for (uint64_t off = 0; ret == 0 && off < bat_bytes; off += VPC_SECTOR) {
        ret = io_pwrite(io, ones, sizeof(ones), VPC_CREATE_BAT_OFFSET + off);
    }
    if (ret == 0) {
        ret = io_pwrite(io, footer, VPC_FOOTER_SIZE,
                        VPC_CREATE_BAT_OFFSET + bat_bytes);
    }
    return ret;
}

static int vpc_write_fixed(struct qimg_io *io, const uint8_t *footer)
{
    uint64_t size = load_be64(footer + FT_CURRENT_SIZE);
    int ret = io_truncate(io, size + VPC_FOOTER_SIZE);
    if (ret == 0) {
        ret = io_pwrite(io, footer, VPC_FOOTER_SIZE, size);
    }
    return ret;
}

static int vpc_create(const char *filename, const struct qimg_opts *opts)
{
    struct vpc_create_params p;
    int ret = vpc_create_params(opts, &p);
    if (ret < 0) {
        return ret;
    }
    /*
     * [QEMU] the file protocol gets the options without the size, so the
     * file starts empty: preallocation and nocow apply to nothing.
     */
    struct qimg_opts *fopts = qimg_opts_new();
    if (!fopts) {
        return error_set(ENOMEM, "Out of memory");
    }
    for (size_t i = 0; ret == 0 && i < qimg_opts_count(opts); i++) {
        const char *key = qimg_opts_key(opts, i);
        if (strcmp(key, "size") != 0 && strcmp(key, "subformat") != 0 &&
            strcmp(key, "force_size") != 0 &&
            qimg_opts_set(fopts, key, qimg_opts_get(opts, key)) < 0) {
            ret = error_set(ENOMEM, "Out of memory");
        }
    }
    struct qimg_io *io = NULL;
    if (ret == 0) {
        ret = create_file(filename, fopts, &io);
    }
    qimg_opts_free(fopts);
    if (ret < 0) {
        return ret;
    }
    uint8_t footer[VPC_FOOTER_SIZE];
    ret = vpc_make_footer(footer, &p, p.size / VPC_SECTOR);
    if (ret == 0) {
        ret = p.fixed ? vpc_write_fixed(io, footer)
                      : vpc_write_dynamic(io, footer);
    }
    if (ret == 0) {
        ret = io_flush(io);
    }
    io_close(io);
    return ret;
}

const struct qimg_format_ops format_vpc = {
    .name = "vpc",
    .probe = vpc_probe,
    .open = vpc_open,
    .close = vpc_close,
    .pread = vpc_pread,
    .pwrite = vpc_pwrite,
    .flush = vpc_flush,
    .block_status = vpc_block_status,
    .get_info = vpc_get_info,
    .get_allocated = vpc_get_allocated,
    .create_opts = vpc_create_opts,
    .create = vpc_create,
};
