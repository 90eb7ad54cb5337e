/*
 * VMDK: VMware's virtual disk (Virtual Disk Format 1.1 and 5.0 specs, and
 * QEMU's reading of them, which decides what an image means here).
 *
 * An image is a text descriptor naming one or more extents.  A hosted
 * sparse file ("KDMV" header, monolithicSparse and streamOptimized) is
 * opened as one extent by itself, its embedded descriptor being read only
 * for the CIDs and the parent hint, as QEMU does.
 */
#ifndef QIMG_FORMATS_VMDK_H
#define QIMG_FORMATS_VMDK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "driver.h"
#include "util/extent_set.h"

#define VMDK_SECTOR 512u
#define VMDK4_MAGIC 0x4b444d56u /* "KDMV" read big-endian */
#define VMDK3_MAGIC 0x434f5744u /* "COWD" read big-endian */

/* Header flags [spec: Hosted Sparse Extent Header]. */
#define VMDK4_FLAG_NL_DETECT (1u << 0)
#define VMDK4_FLAG_RGD (1u << 1)
#define VMDK4_FLAG_ZERO_GRAIN (1u << 2)
#define VMDK4_FLAG_COMPRESS (1u << 16)
#define VMDK4_FLAG_MARKER (1u << 17)
#define VMDK4_COMPRESSION_DEFLATE 1u
/* gd_offset of a stream header whose directory is found via the footer. */
#define VMDK4_GD_AT_END UINT64_MAX

/* A grain table entry that reads as zero (zeroed-grain feature). */
#define VMDK_GTE_ZEROED 1u

/* Stream markers [spec: Stream-Optimized Compressed Sparse Extents]. */
#define VMDK_MARKER_EOS 0u
#define VMDK_MARKER_GT 1u
#define VMDK_MARKER_GD 2u
#define VMDK_MARKER_FOOTER 3u

/*
 * Limits on untrusted values, QEMU's (so that the images it opens open):
 * a descriptor is read up to 1 MiB - 1; the CIDs and parent hint are
 * looked for in the first 20 sectors of it; a grain is at most 1 GiB
 * (2^21 sectors); a grain table has at most 512 entries; the grain
 * directory at most 32 Mi entries; names as QEMU's buffers hold them.
 */
#define VMDK_DESC_MAX ((1u << 20) - 1)
#define VMDK_DESC_CID_AREA (20u * VMDK_SECTOR)
#define VMDK_MAX_GRAIN_SECTORS 0x200000u
#define VMDK_MAX_GT_ENTRIES 512u
#define VMDK_MAX_GD_ENTRIES (32u * 1024 * 1024)
#define VMDK_MAX_CREATE_TYPE 127u
#define VMDK_MAX_EXTENT_NAME 511u
#define VMDK_MAX_HINT 4095u
/* A sane descriptor has a few extents; QEMU has no limit (qimg's own). */
#define VMDK_MAX_EXTENTS 4096u
/*
 * Grain directory entries held over all extents of one image (each
 * extent's directory and backup): one extent at the per-extent limit
 * fits, and a descriptor naming one big file thousands of times cannot
 * multiply it (qimg's own; QEMU has no total).  256 MiB.
 */
#define VMDK_MAX_GD_ENTRIES_TOTAL (2ull * VMDK_MAX_GD_ENTRIES)

/* The hosted sparse header [spec: SparseExtentHeader], little-endian. */
#define VMDK4_HEADER_SIZE 79u /* magic included */
struct vmdk4_header {
    uint32_t version;
    uint32_t flags;
    uint64_t capacity;    /* sectors */
    uint64_t granularity; /* sectors per grain */
    uint64_t desc_offset; /* sectors */
    uint64_t desc_size;   /* sectors */
    uint32_t num_gtes_per_gt;
    uint64_t rgd_offset;   /* sectors */
    uint64_t gd_offset;    /* sectors; ~0 (GD_AT_END) in a stream header */
    uint64_t grain_offset; /* sectors: metadata ends here */
    uint8_t unclean;
    uint8_t check_bytes[4]; /* "\n \r\n" */
    uint16_t compress_algorithm;
};

/* Decode len >= VMDK4_HEADER_SIZE bytes (starting at the magic). */
void vmdk4_header_decode(const uint8_t *buf, struct vmdk4_header *h);
void vmdk4_header_encode(const struct vmdk4_header *h, uint8_t *buf);

/* ---- descriptor.c: pure text parsing ---------------------------------- */

/* QEMU's probe of a text descriptor (blank lines, comments, version=N). */
int vmdk_desc_probe(const uint8_t *buf, size_t len);

/*
 * The value of key="VALUE" (QEMU's vmdk_parse_description: the first
 * occurrence of key anywhere, then two characters skipped).  0 and a
 * malloc'd string, -EINVAL when absent or longer than max, -ENOMEM.
 */
int vmdk_desc_get_quoted(const char *desc, const char *key, size_t max,
                         char **out);

/*
 * CID or parentCID (parent true): hex after "CID=" / "parentCID=", the
 * first occurrence of the name.  0 or -EINVAL.
 */
int vmdk_desc_get_cid(const char *desc, bool parent, uint32_t *out);

/*
 * parentFileNameHint="NAME": 1 and a malloc'd *out, 0 when absent,
 * -EINVAL when unterminated or too long, -ENOMEM.
 */
int vmdk_desc_get_parent_hint(const char *desc, char **out);

/* One extent line of a descriptor. */
struct vmdk_desc_extent {
    char access[11];
    int64_t sectors;
    char type[11];
    char name[VMDK_MAX_EXTENT_NAME + 1];
    int64_t offset; /* -1 when absent */
};

/*
 * Parse the extent line at *pos (QEMU's reading: "RW SECTORS TYPE
 * \"NAME\" [OFFSET]", fields separated by any white space, including
 * line ends).  Returns 1 with *e filled for an extent to open, 0 for a
 * line that is not one (comments, other keys, RDONLY, unknown types),
 * or -EINVAL with the "Invalid extent line: ..." message set.  *pos
 * moves to the next line in every case.
 */
int vmdk_desc_next_extent(const char **pos, struct vmdk_desc_extent *e);

/* ---- sparse.c: extents ------------------------------------------------ */

#define VMDK_L2_CACHE 16

struct vmdk_extent {
    struct qimg_io *io;
    bool own_io;    /* opened here (not node->file) */
    unsigned long long dev, ino; /* of an own_io file, to share its lock */
    char *filename; /* as QEMU names the file in info */
    char *type;     /* descriptor type ("FLAT", "SPARSE"), NULL if none */
    bool flat;
    bool compressed;
    bool has_marker;
    bool has_zero_grain;
    uint32_t version;
    uint64_t sectors;         /* guest sectors of this extent */
    uint64_t end_sector;      /* guest sector after it */
    uint64_t flat_start;      /* bytes: where a flat extent starts in io */
    uint64_t cluster_sectors; /* flat: the whole extent */
    uint32_t l2_size;         /* entries per grain table */
    uint64_t l1_entry_sectors;
    uint32_t l1_size;
    uint64_t l1_offset;        /* bytes */
    uint64_t l1_backup_offset; /* bytes, 0 if none */
    /* Entries of the grain directories present in the file (the rest 0). */
    uint32_t l1_loaded;
    uint32_t *l1;
    uint32_t *l1_backup;
    uint64_t next_cluster_sector; /* allocation point (end of the file) */
    /*
     * Metadata of a sparse extent that guest data must never overwrite:
     * the header sector, the embedded descriptor and both directories
     * (set at open), and every grain table they name (built at the first
     * write into an existing grain).
     */
    struct extent_set fixed_meta;
    struct extent_set grain_tables;
    bool grain_tables_built;
    uint32_t *l2_cache;           /* VMDK_L2_CACHE tables of l2_size */
    uint64_t l2_cache_off[VMDK_L2_CACHE];
    uint32_t l2_cache_next;
    /* seSparse extents (sesparse.c): 64-bit tables, read only. */
    bool sesparse;
    uint64_t se_gt_offset;     /* sectors: the grain tables */
    uint64_t se_grains_offset; /* sectors: the grains */
    uint64_t *se_l1;           /* l1_loaded entries, host order */
    uint64_t *se_l2_cache;     /* VMDK_L2_CACHE tables of l2_size */
};

struct vmdk_state {
    struct vmdk_extent *extents;
    size_t nb_extents;
    size_t cap_extents;
    uint32_t cid;
    uint32_t parent_cid;
    char *create_type;
    uint64_t desc_offset; /* bytes: where the descriptor text is */
    bool writable;
    bool cid_updated; /* the first write of this open changed the CID */
    bool cid_checked; /* the vmdk parent's CID is parent_cid */
    uint64_t gd_entries; /* loaded so far, <= VMDK_MAX_GD_ENTRIES_TOTAL */
};

/* Results of vmdk_cluster_lookup. */
#define VMDK_OK 0
#define VMDK_UNALLOC 1
#define VMDK_ZEROED 2

/* Open the hosted sparse extent in io (header at 0) and append it. */
int vmdk_open_sparse_extent(struct vmdk_state *s, struct qimg_io *io,
                            bool own_io, const char *filename, unsigned flags,
                            struct vmdk_extent **out);
/* Append a flat extent of sectors sectors at start_sector in io. */
int vmdk_add_flat_extent(struct vmdk_state *s, struct qimg_io *io, bool own_io,
                         const char *filename, uint64_t sectors,
                         uint64_t start_sector, struct vmdk_extent **out);
void vmdk_extent_free(struct vmdk_extent *e);
/*
 * Adding an extent: a zeroed slot at the end of s->extents, then (once
 * filled in) counted in s with its guest range after the previous one.
 */
int vmdk_extent_append(struct vmdk_state *s, struct vmdk_extent **out);
int vmdk_extent_commit(struct vmdk_state *s, struct vmdk_extent *e,
                       struct qimg_io *io, bool own_io, const char *filename);
/* The extent holding guest sector, or NULL. */
struct vmdk_extent *vmdk_find_extent(struct vmdk_state *s, uint64_t sector);
/*
 * Where guest byte off of extent e lives: VMDK_OK with *host (bytes in
 * e->io: the grain, or for flat extents its start), VMDK_UNALLOC,
 * VMDK_ZEROED, or -EIO with a message for a table outside the
 * directory or unreadable.
 */
int vmdk_cluster_lookup(struct vmdk_extent *e, uint64_t off, uint64_t *host);
/* Read len bytes of the grain at host, from offset in_cluster of it. */
int vmdk_read_grain(struct vmdk_extent *e, uint64_t host, uint64_t in_cluster,
                    void *buf, size_t len);

/*
 * Allocate a grain at the end of e's file for the grain holding guest
 * byte off (its table exists, the entry is free or zeroed): write the
 * whole grain (node's layer below up to guest offset below_end, zeros
 * past it, with n bytes of data at in_cluster: zeros when data is NULL),
 * then point the table and its redundant copy at it.
 */
int vmdk_alloc_grain(struct qimg_node *node, struct vmdk_extent *e,
                     uint64_t off, uint64_t in_cluster, const void *data,
                     size_t n, uint64_t below_end);
/* Mark the grain holding off as reading zero (zeroed-grain extents). */
int vmdk_set_zeroed(struct vmdk_extent *e, uint64_t off);
/*
 * Before a write at guest byte off of sparse extent e puts anything in
 * the file: the grain tables it may update must not lie on the header,
 * the descriptor or a directory, and (host != 0) n bytes of guest data
 * at host, in an existing grain, must not lie on any of those or on a
 * grain table.  A damaged directory or table can put them there; QEMU
 * then writes over its metadata.  -EIO naming what would be hit.
 */
int vmdk_check_write(struct vmdk_extent *e, uint64_t off, uint64_t host,
                     size_t n);

/*
 * Compressed grains of a stream extent (QEMU's streamOptimized writes).
 * vmdk_check_compressed: off/len must be a whole grain of e (or its
 * partial last one), else -EINVAL.  vmdk_compress_grain: len bytes of
 * buf deflated (zlib format) into out; the size, 0 when it does not fit
 * cap, or -errno; any thread.  vmdk_write_compressed: append the grain
 * marker and csize bytes of data after the last grain and point the
 * tables at it; -EIO for a grain already written.
 */
int vmdk_check_compressed(struct vmdk_extent *e, uint64_t off, size_t len);
int64_t vmdk_compress_grain(struct vmdk_extent *e, const void *buf, size_t len,
                            void *out, size_t cap);
int vmdk_write_compressed(struct vmdk_extent *e, uint64_t off, const void *data,
                          size_t csize);

/* ---- sesparse.c: ESXi seSparse extents, read only ------------------- */

/*
 * Open the seSparse extent in io (const header at 0) and append it;
 * writable opens are refused as QEMU refuses them.
 */
int vmdk_open_sesparse_extent(struct vmdk_state *s, struct qimg_io *io,
                              bool own_io, const char *filename, bool writable,
                              struct vmdk_extent **out);
/* vmdk_cluster_lookup for a seSparse extent. */
int vmdk_sesparse_lookup(struct vmdk_extent *e, uint64_t off, uint64_t *host);
/* Whether the directory entry l1_index of seSparse extent e is empty. */
bool vmdk_sesparse_gd_empty(const struct vmdk_extent *e, uint64_t l1_index);

/* ---- create.c -------------------------------------------------------- */

extern const struct qimg_opt_desc vmdk_create_opts[];
int vmdk_create(const char *filename, const struct qimg_opts *opts);

#endif
