/*
 * qcow2: declarations shared by the files of the driver.
 *
 * The on-disk format is QEMU's docs/interop/qcow2.txt; comments cite its
 * sections as [spec: Section].  Behaviour that the spec leaves open (limits,
 * the order of checks, the exact error messages) follows qemu-img 7.2, the
 * program qimg replaces; such facts are marked [QEMU].
 *
 * Layering: header.c, snapshot.c and bitmap.c are pure codecs over byte
 * buffers (no I/O, no globals besides the error channel), so they can be
 * unit tested and fuzzed alone.  qcow2.c does the I/O and owns the state.
 */
#ifndef QIMG_FORMATS_QCOW2_QCOW2_H
#define QIMG_FORMATS_QCOW2_QCOW2_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "crypto/luks1.h"
#include "qimg/qimg.h"

struct qimg_io;
struct qimg_node;

/* ---- Header layout [spec: Header] -------------------------------------- */

#define QCOW2_MAGIC 0x514649fbu /* "QFI\xfb" */
/* A v2 header is exactly this long; v3 fields are absent. */
#define QCOW2_V2_HEADER_LENGTH 72
/* A v3 header holds at least the fields through header_length. */
#define QCOW2_V3_MIN_HEADER_LENGTH 104
/* Offset of the optional compression_type byte [spec: Additional fields]. */
#define QCOW2_COMPRESSION_TYPE_OFFSET 104
/*
 * The header QEMU reads at open and writes back: every field it knows,
 * through compression_type and its 7 padding bytes.  Bytes from here to
 * header_length are "unknown header fields", preserved on rewrite.
 */
#define QCOW2_HEADER_SIZE 112

/* ---- Limits on untrusted header values ------------------------------- */

/* The spec's minimum cluster size, 512 bytes. */
#define QCOW2_MIN_CLUSTER_BITS 9
/* [QEMU] refuses clusters above 2 MiB, bounding the header cluster read. */
#define QCOW2_MAX_CLUSTER_BITS 21
/* [QEMU] a subcluster must hold at least one 512-byte sector. */
#define QCOW2_MIN_SUBCLUSTER_SIZE 512
/* Extended L2 entries split a cluster into this many subclusters. */
#define QCOW2_EXTL2_SUBCLUSTERS 32
/* refcount_bits = 1 << order may not exceed 64 [spec: Header]. */
#define QCOW2_MAX_REFCOUNT_ORDER 6
/* v2 images have 16-bit refcounts [spec: Header]. */
#define QCOW2_V2_REFCOUNT_ORDER 4
/* The spec's limit on the backing file name; QEMU's buffer is 1024. */
#define QCOW2_MAX_BACKING_NAME 1023
/* [QEMU] keeps the backing format in a 16-byte buffer: len < 16. */
#define QCOW2_BACKING_FORMAT_BUF 16
/* [QEMU] active and snapshot L1 tables: at most 32 MiB (4 Mi entries). */
#define QCOW2_MAX_L1_SIZE (32u << 20)
/* [QEMU] the refcount table: at most 8 MiB. */
#define QCOW2_MAX_REFTABLE_SIZE (8u << 20)
/* [QEMU] at most this many internal snapshots. */
#define QCOW2_MAX_SNAPSHOTS 65536
/* [QEMU] the snapshot table may not exceed 64 MiB in total. */
#define QCOW2_MAX_SNAPSHOTS_SIZE (64u << 20)
/* [QEMU] per-entry snapshot extra data, bounding each entry. */
#define QCOW2_MAX_SNAPSHOT_EXTRA_DATA 1024
/* [QEMU] at most this many persistent bitmaps. */
#define QCOW2_MAX_BITMAPS 65535
/* [QEMU] bitmap directory: 1 KiB per bitmap (67107840 bytes). */
#define QCOW2_MAX_BITMAP_DIRECTORY_SIZE (1024u * QCOW2_MAX_BITMAPS)
/* [QEMU] bitmap names are at most 1023 bytes. */
#define QCOW2_MAX_BITMAP_NAME 1023
/* [QEMU] bitmap granularity between 512 bytes and 2 GiB. */
#define QCOW2_MIN_BITMAP_GRANULARITY_BITS 9
#define QCOW2_MAX_BITMAP_GRANULARITY_BITS 31
/* [QEMU] entries of one bitmap table. */
#define QCOW2_MAX_BITMAP_TABLE_SIZE 0x8000000u
/* [QEMU] bytes of bitmap data one bitmap may describe (512 MiB). */
#define QCOW2_MAX_BITMAP_PHYS_SIZE 0x20000000u
/*
 * [QEMU] its block layer fails every request that reaches past this
 * offset (INT64_MAX rounded down to 1 GiB) with EIO.  Metadata reads are
 * checked against it so that a hostile offset gives QEMU's exact error.
 */
#define QCOW2_MAX_IO_END 0x7fffffffc0000000ull
/* [QEMU] "Image is too big" beyond this many L1 entries for the size. */
#define QCOW2_MAX_L1_VM_STATE_INDEX 0x7fffffffu
/*
 * [QEMU] info copies snapshot IDs and names into 128- and 256-byte
 * buffers, so longer ones are shown cut to these lengths.
 */
#define QCOW2_INFO_SNAPSHOT_ID_MAX 127
#define QCOW2_INFO_SNAPSHOT_NAME_MAX 255

/* ---- Feature bits [spec: Header, bytes 72-95] ------------------------ */

#define QCOW2_INCOMPAT_DIRTY (1ull << 0)
#define QCOW2_INCOMPAT_CORRUPT (1ull << 1)
#define QCOW2_INCOMPAT_DATA_FILE (1ull << 2)
#define QCOW2_INCOMPAT_COMPRESSION (1ull << 3)
#define QCOW2_INCOMPAT_EXTL2 (1ull << 4)
#define QCOW2_INCOMPAT_MASK 0x1full

#define QCOW2_COMPAT_LAZY_REFCOUNTS (1ull << 0)

#define QCOW2_AUTOCLEAR_BITMAPS (1ull << 0)
#define QCOW2_AUTOCLEAR_DATA_FILE_RAW (1ull << 1)
#define QCOW2_AUTOCLEAR_MASK 0x3ull

/* Feature name table entry types [spec: Feature name table]. */
#define QCOW2_FEAT_TYPE_INCOMPATIBLE 0
#define QCOW2_FEAT_TYPE_COMPATIBLE 1
#define QCOW2_FEAT_TYPE_AUTOCLEAR 2
#define QCOW2_FEATURE_ENTRY_SIZE 48
#define QCOW2_FEATURE_NAME_SIZE 46

/* crypt_method values [spec: Header, bytes 32-35]. */
#define QCOW2_CRYPT_NONE 0
#define QCOW2_CRYPT_AES 1
#define QCOW2_CRYPT_LUKS 2

/* compression_type values [spec: Additional fields]. */
#define QCOW2_COMPRESSION_ZLIB 0
#define QCOW2_COMPRESSION_ZSTD 1

/* ---- Header extensions [spec: Header extensions] ---------------------- */

#define QCOW2_EXT_END 0x00000000u
#define QCOW2_EXT_BACKING_FORMAT 0xe2792acau
#define QCOW2_EXT_FEATURE_TABLE 0x6803f857u
#define QCOW2_EXT_BITMAPS 0x23852875u
#define QCOW2_EXT_CRYPTO_HEADER 0x0537be77u
#define QCOW2_EXT_DATA_FILE 0x44415441u
/* Each extension starts with u32 type, u32 length. */
#define QCOW2_EXT_HEADER_SIZE 8
/* [spec: Bitmaps extension] and [spec: Full disk encryption header]. */
#define QCOW2_EXT_BITMAPS_SIZE 24
#define QCOW2_EXT_CRYPTO_SIZE 16

/* ---- Guest mapping [spec: Cluster mapping] (for the read path) -------- */

#define QCOW2_L1E_OFFSET_MASK 0x00fffffffffffe00ull
#define QCOW2_L1E_RESERVED_MASK 0x7f000000000001ffull
#define QCOW2_L2E_OFFSET_MASK 0x00fffffffffffe00ull
#define QCOW2_L2E_STD_RESERVED_MASK 0x3f000000000001feull
#define QCOW2_OFLAG_COPIED (1ull << 63)
#define QCOW2_OFLAG_COMPRESSED (1ull << 62)
#define QCOW2_OFLAG_ZERO (1ull << 0)
#define QCOW2_REFT_OFFSET_MASK 0xfffffffffffffe00ull
/* [spec] host offsets have 56 bits (QEMU's QCOW_MAX_CLUSTER_OFFSET). */
#define QCOW2_MAX_HOST_OFFSET ((1ull << 56) - 1)
/* incompatible_features, which the write path updates in place. */
#define QCOW2_HDR_INCOMPAT_OFFSET 72

/* ---- Snapshot table [spec: Snapshots] -------------------------------- */

/* The fixed part of an entry, before its extra data. */
#define QCOW2_SNAPSHOT_HEADER_SIZE 40
/* Extra data QEMU knows: vm_state_size_large, disk_size, icount. */
#define QCOW2_SNAPSHOT_EXTRA_SIZE 24
/* The longest entry: fixed part, extra data, 16-bit id and name sizes. */
#define QCOW2_SNAPSHOT_MAX_ENTRY                                               \
    (QCOW2_SNAPSHOT_HEADER_SIZE + QCOW2_MAX_SNAPSHOT_EXTRA_DATA + 2 * 0xffffu)
/* icount when the entry does not record one. */
#define QCOW2_SNAPSHOT_NO_ICOUNT UINT64_MAX

/* ---- Bitmaps [spec: Bitmaps] ----------------------------------------- */

#define QCOW2_BITMAP_DIR_ENTRY_SIZE 24 /* fixed part of a directory entry */
#define QCOW2_BME_IN_USE (1u << 0)
#define QCOW2_BME_AUTO (1u << 1)
/* [QEMU] treats every flag but in_use and auto as reserved. */
#define QCOW2_BME_RESERVED_FLAGS 0xfffffffcu
#define QCOW2_BITMAP_TYPE_DIRTY_TRACKING 1
#define QCOW2_BMT_RESERVED_MASK 0xff000000000001feull
#define QCOW2_BMT_OFFSET_MASK 0x00fffffffffffe00ull
#define QCOW2_BMT_ALL_ONES (1ull << 0)

/* ---- Decoded structures ---------------------------------------------- */

/* One feature name table entry [spec: Feature name table]. */
struct qcow2_feature {
    uint8_t type;
    uint8_t bit;
    char name[QCOW2_FEATURE_NAME_SIZE + 1]; /* always NUL-terminated */
};

/* An extension qimg does not know, kept to be written back. */
struct qcow2_unknown_ext {
    uint32_t type;
    uint32_t len;
    uint8_t *data;
};

struct qcow2_header {
    /* [spec: Header] bytes 0-71, every version. */
    uint32_t magic;
    uint32_t version;
    uint64_t backing_file_offset;
    uint32_t backing_file_size;
    uint32_t cluster_bits;
    uint64_t size;
    uint32_t crypt_method;
    uint32_t l1_size;
    uint64_t l1_table_offset;
    uint64_t refcount_table_offset;
    uint32_t refcount_table_clusters;
    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    /* [spec: Header] bytes 72-103, v3; for v2 the implied values. */
    uint64_t incompatible_features;
    uint64_t compatible_features;
    uint64_t autoclear_features;
    uint32_t refcount_order;
    uint32_t header_length;
    /* [spec: Additional fields] byte 104, 0 (zlib) when absent. */
    uint8_t compression_type;
    /* Bytes [QCOW2_HEADER_SIZE, header_length): unknown fields. */
    uint8_t *unknown_fields;
    size_t unknown_fields_len;

    /* Derived: 1 << cluster_bits, and where the extension area ends. */
    uint64_t cluster_size;
    uint64_t ext_end;

    /*
     * [spec: Header extensions].  Strings are NUL-terminated copies; like
     * QEMU, an embedded NUL ends them.  NULL when the extension is absent
     * (an empty string when it is present but empty).
     */
    char *backing_format;
    char *data_file;
    bool has_crypto_ext;
    uint64_t crypto_offset;
    uint64_t crypto_length;
    /*
     * Bitmaps extension: nb_bitmaps is 0 unless the extension is present
     * and valid and the autoclear bit vouches for it.  bitmaps_inconsistent
     * says the extension was seen without that bit: QEMU warns and
     * ignores it.
     */
    uint32_t nb_bitmaps;
    uint64_t bitmap_directory_size;
    uint64_t bitmap_directory_offset;
    bool bitmaps_inconsistent;
    /* The image's own feature name table (last one wins), or NULL. */
    struct qcow2_feature *features;
    size_t nb_features;
    /* Unknown extensions in file order. */
    struct qcow2_unknown_ext *unknown_exts;
    size_t nb_unknown_exts;
    size_t cap_unknown_exts;

    /* [spec: Header] the backing file name, or NULL if none. */
    char *backing_file;
};

/* One internal snapshot [spec: Snapshots]. */
struct qcow2_snapshot {
    uint64_t l1_table_offset;
    uint32_t l1_size;
    char *id;   /* NUL-terminated; an embedded NUL ends it, as in QEMU */
    char *name; /* likewise */
    uint32_t date_sec;
    uint32_t date_nsec;
    uint64_t vm_clock_nsec;
    /* The 64-bit extra field when present, else the 32-bit one. */
    uint64_t vm_state_size;
    /* As stored (may be less than QCOW2_SNAPSHOT_EXTRA_SIZE). */
    uint32_t extra_data_size;
    /* From the extra data, else the image's current virtual size. */
    uint64_t disk_size;
    /* From the extra data, else QCOW2_SNAPSHOT_NO_ICOUNT. */
    uint64_t icount;
    /* Extra data past the known 24 bytes, preserved. */
    uint8_t *unknown_extra;
    size_t unknown_extra_len;
};

struct qcow2_snapshot_table {
    struct qcow2_snapshot *sn;
    uint32_t nb;
    /* Bytes from the table start to the end of the last entry. */
    uint64_t size;
};

/* One bitmap directory entry [spec: Bitmap directory]. */
struct qcow2_bitmap {
    uint64_t table_offset;
    uint32_t table_size;
    uint32_t flags;
    uint8_t type;
    uint8_t granularity_bits;
    char *name; /* NUL-terminated; an embedded NUL ends it, as in QEMU */
    /* An earlier entry has the same name (set by the decoder). */
    bool dup_name;
};

struct qcow2_bitmap_list {
    struct qcow2_bitmap *bm;
    uint32_t nb;
};

/*
 * A bitmap whose table the write path holds (bitmap_write.c): one that was
 * not in use when the image was opened.
 */
struct qcow2_bitmap_track {
    uint32_t index;        /* in qcow2_state.bitmaps */
    bool enabled;          /* 'auto': records guest writes */
    uint64_t *table;       /* host byte order, table_size entries */
    uint8_t *owned;        /* entry i names a cluster this handle made */
    bool table_dirty;      /* differs from the stored table */
    uint64_t stored_bytes; /* bytes of the stored table (freed at a store) */
};

/* ---- Guest mapping state (cluster.c) ---------------------------------- */

/*
 * L2 tables are cached in slices of at most this many bytes, so the
 * cache never holds more than QCOW2_L2_CACHE_SLOTS * QCOW2_L2_SLICE_MAX
 * bytes whatever the cluster size.
 */
#define QCOW2_L2_SLICE_MAX 4096u
#define QCOW2_L2_CACHE_SLOTS 256u
/*
 * At most this many slices of one L2 table are read at once (a miss
 * reads the slices after it too, into empty slots; cluster.c).
 */
#define QCOW2_L2_READAHEAD 16u

struct qcow2_l2_slot {
    uint64_t host_off; /* file offset of the slice; 0 = empty slot */
    uint64_t last_use; /* LRU clock value of the last hit */
    uint8_t *data;     /* slice bytes as stored (big-endian) */
    bool dirty;        /* changed since it was read or written */
};

struct qcow2_l2_cache {
    struct qcow2_l2_slot slot[QCOW2_L2_CACHE_SLOTS];
    uint64_t clock;
    size_t slice_size; /* min(cluster_size, QCOW2_L2_SLICE_MAX) */
    /* QCOW2_L2_READAHEAD slices, for a read ahead; allocated at its use. */
    uint8_t *ra_buf;
};

/* QEMU's (sub)cluster types [spec: Cluster mapping, Extended L2 Entries]. */
enum qcow2_sc_type {
    QCOW2_SC_UNALLOCATED,       /* read from the backing file */
    QCOW2_SC_UNALLOCATED_ALLOC, /* extl2: host cluster set, subcluster not */
    QCOW2_SC_ZERO_PLAIN,        /* reads as zero, no host cluster */
    QCOW2_SC_ZERO_ALLOC,        /* reads as zero, host cluster reserved */
    QCOW2_SC_NORMAL,            /* data at host_off */
    QCOW2_SC_COMPRESSED,        /* one compressed cluster */
};

/* A run of guest bytes with one mapping type. */
struct qcow2_mapping {
    enum qcow2_sc_type type;
    uint64_t bytes;    /* > 0; never crosses an L2 slice */
    /* NORMAL, ZERO_ALLOC, UNALLOCATED_ALLOC: host offset of the start */
    uint64_t host_off;
    uint64_t l2_entry; /* COMPRESSED: the descriptor */
};

/* ---- Write path state (refcount.c, write.c) --------------------------- */

/*
 * Refcount blocks are cached whole (one cluster each, at most 2 MiB), in
 * this many slots: allocation walks forward, so few are hot at a time.
 */
#define QCOW2_RB_CACHE_SLOTS 4u

struct qcow2_rb_slot {
    uint64_t host_off; /* file offset of the block; 0 = empty slot */
    uint64_t last_use;
    uint8_t *data;
    bool dirty;
};

/* A host range whose refcounts drop by one at the next flush. */
struct qcow2_free_range {
    uint64_t off;   /* cluster-aligned */
    uint64_t bytes; /* whole clusters */
};

/*
 * Frees wait for the flush that writes the L2 and L1 tables no longer
 * naming them (a freed cluster must not be reused, nor its refcount
 * drop on disk, while an old table on disk still points at it).  Past
 * this many ranges a write flushes first, bounding the list.
 */
#define QCOW2_MAX_PENDING_FREES 65536u

/* ---- Driver state ----------------------------------------------------- */

struct qcow2_state {
    /*
     * Concurrency (qcow2.c, the driver ops): the request ops (pread,
     * pwrite, zero writes, discards, compressed writes, flush, block
     * status) take lock exclusively, but for a write that changes no
     * metadata (qcow2_pwrite_in_place), which takes it shared.  Every
     * field below is read and written under the exclusive lock only,
     * or read under the shared one (nothing changes them then), but for
     * the L2 cache, which the shared writers also use and which l2_lock
     * guards among them.  So while a shared writer's data write is in
     * flight no cluster is freed, reallocated or rewritten by anyone.
     * The other ops (open, close, truncate, snapshots, check, amend,
     * info) take no lock: the API requires exclusive use for them.
     */
    pthread_rwlock_t lock;
    pthread_mutex_t l2_lock;

    struct qcow2_header hdr;
    unsigned open_flags; /* QIMG_OPEN_* */

    /* Geometry [spec: Cluster mapping, Extended L2 Entries]. */
    unsigned cluster_bits;
    uint64_t cluster_size;
    unsigned l2_entry_size; /* 8, or 16 with extended L2 entries */
    unsigned l2_bits;       /* log2 of entries per L2 table */
    uint64_t l2_entries;
    unsigned subclusters_per_cluster;
    uint64_t subcluster_size;
    unsigned subcluster_bits;
    /* Compressed cluster descriptor fields [spec: Cluster mapping]. */
    unsigned csize_shift;
    uint64_t csize_mask;
    uint64_t cluster_offset_mask;
    /* First L1 index past the guest disk, where VM state starts. */
    uint64_t l1_vm_state_index;

    /* Active L1 table, host byte order; NULL until loaded. */
    uint32_t l1_size;
    uint64_t l1_table_offset;
    uint64_t *l1_table;

    /* Refcounts [spec: Host cluster management]; loaded by writers. */
    unsigned refcount_order;
    uint64_t refcount_table_offset;
    uint64_t refcount_table_entries;
    uint64_t *refcount_table;

    struct qcow2_snapshot_table snapshots;
    struct qcow2_bitmap_list bitmaps;

    /*
     * External data file [spec: Header, incompatible bit 2]: the guest
     * data lives there at host offset == guest offset.  NULL when guest
     * data is in the image file, and when the image was opened for
     * metadata only (QIMG_OPEN_NO_IO), where QEMU does not open it either.
     */
    bool has_data_file;
    struct qimg_io *data_file;

    /* The LUKS header of a crypt_method 2 image, once decoded. */
    bool has_luks;
    struct luks1_header luks;
    /*
     * The key of an encrypted image opened for I/O (crypto.c), else
     * NULL.  Sectors take their IVs from host offsets (LUKS) or guest
     * offsets (legacy AES).
     */
    struct sector_cipher *cipher;
    bool cipher_host_sectors;

    /* Read path (cluster.c): L2 slices and the last compressed cluster. */
    struct qcow2_l2_cache l2_cache;
    uint8_t *z_in;  /* 2 * cluster_size: the longest descriptor's bytes */
    uint8_t *z_out; /* cluster_size: decompressed cluster */
    bool z_valid;   /* z_out holds the cluster of descriptor z_entry */
    uint64_t z_entry;
    /* Write side: qimg_set_compression's choice (0, 0: QEMU's). */
    int z_level;
    unsigned z_flags;

    /*
     * [QEMU] block status asks the host file about data clusters when the
     * image looks preallocated with metadata only (prealloc.c), decided
     * once, at the first block status call.
     */
    bool prealloc_checked;
    bool metadata_prealloc;

    /*
     * Write path (refcount.c, write.c).  Refcounts are loaded by the
     * first write; until then refcount_table is NULL.  Cached refcount
     * blocks and L2 slices are written back in the order that keeps the
     * image consistent at every flush: data, refcount blocks, (sync), L2
     * slices, (sync), L1 entries, (sync), then the deferred frees.
     */
    bool write_ready;
    /*
     * No active L2 table or refcount block overlaps other metadata (found
     * by qcow2_overlap_tables_apart at write_begin), so metadata written
     * in place needs no scan of those tables: tables allocated since were
     * checked when allocated.  Cleared when the active L1 table is
     * replaced (a snapshot applied).
     */
    bool tables_apart;
    /* The corrupt bit was set by this handle: every write fails. */
    bool corrupt;
    /* Lazy refcounts: the dirty bit is set on disk (first write). */
    bool dirty_set;
    struct qcow2_rb_slot rb_cache[QCOW2_RB_CACHE_SLOTS];
    uint64_t rb_clock;
    unsigned rb_bits; /* log2 of refcount entries per block */
    uint64_t refcount_max;
    /* Allocation hint: no cluster below it is free. */
    uint64_t free_cluster_index;
    /* Where the next compressed cluster may go (0: a new cluster). */
    uint64_t free_byte_offset;
    /* Active L1 entries [l1_dirty_lo, l1_dirty_hi) differ from disk. */
    uint64_t l1_dirty_lo;
    uint64_t l1_dirty_hi;
    struct qcow2_free_range *pending_free;
    size_t nb_pending_free;
    /* Freed clusters not yet discarded (refcount.c, cluster_freed). */
    struct qcow2_free_range *discards;
    size_t nb_discards;
    size_t cap_discards;
    size_t cap_pending_free;
    /* Scratch buffers of one cluster (COW, compression). */
    uint8_t *cow_buf;
    uint8_t *zbuf;
    /*
     * A second COW buffer, for a write batch (write.c) whose first and
     * last clusters both copy bytes in; allocated at its first use.
     */
    uint8_t *cow_buf2;

    /*
     * Persistent bitmaps kept true by the writes (bitmap_write.c), loaded
     * at the first guest write or resize.  bm_in_use: the stored directory
     * flags them in use; bm_store_needed: tables or data changed since the
     * last store; bm_header_needed: a stored directory awaits the header;
     * bm_resizing: flushes keep them in use (tables and size disagree).
     */
    struct qcow2_bitmap_track *bm_tracks;
    uint32_t nb_bm_tracks;
    uint8_t *bm_buf; /* one cluster */
    bool bm_loaded;
    bool bm_in_use;
    bool bm_store_needed;
    bool bm_header_needed;
    bool bm_resizing;
};

/* ---- header.c ---------------------------------------------------------- */

/* Flags for qcow2_header_decode(). */
/* The image is being opened for writing (a corrupt image is refused). */
#define QCOW2_DECODE_RDWR (1u << 0)
/*
 * Opened to be checked or repaired (QEMU's BDRV_O_CHECK): a corrupt image
 * may be written, a missing refcount table and a bad snapshot table
 * offset are tolerated.
 */
#define QCOW2_DECODE_CHECK (1u << 1)
/*
 * Metadata only (info): the external data file and the encryption keys
 * are not needed, so their absence is not an error.
 */
#define QCOW2_DECODE_NO_IO (1u << 2)

/*
 * How many bytes from the start of the file qcow2_header_decode() wants:
 * the first cluster if the fixed header names a usable cluster size, else
 * QCOW2_HEADER_SIZE (decoding will then fail on the fixed header).  buf
 * holds the first len bytes of the file; missing bytes read as zero.
 */
size_t qcow2_header_bytes_needed(const uint8_t *buf, size_t len);

/*
 * Decode and validate the header, its extensions and the table locations,
 * doing QEMU's open-time checks in QEMU's order up to the point where
 * QEMU opens the external data file.  buf holds the first len bytes of
 * the file (ideally qcow2_header_bytes_needed()); bytes past len read as
 * zero, as they do past the end of a file.  flags: QCOW2_DECODE_*.
 *
 * Reads QEMU would make and that would fail because they reach past
 * QCOW2_MAX_IO_END (the L1 and refcount tables) fail here with its EIO
 * message, so the error is the same without any I/O.
 *
 * On failure the message is set and hdr may hold partial results; free
 * it with qcow2_header_free() in both cases.  hdr->bitmaps_inconsistent
 * is meaningful even on failure (QEMU warns before failing).
 */
int qcow2_header_decode(const uint8_t *buf, size_t len, unsigned flags,
                        struct qcow2_header *hdr);

/*
 * The checks QEMU makes after opening the data file: the encryption
 * header must exist (unless QCOW2_DECODE_NO_IO), the backing file name
 * must fit; reads the backing file name into hdr->backing_file.
 */
int qcow2_header_decode_finish(const uint8_t *buf, size_t len, unsigned flags,
                               struct qcow2_header *hdr);

void qcow2_header_free(struct qcow2_header *hdr);

/*
 * Write the header as QEMU's qcow2_update_header would: the fixed
 * header (72 bytes for v2; 112 plus the unknown fields for v3, with
 * header_length set to match), then the extensions in QEMU's order
 * (backing format, data file name if incompatible bit 2 is set, crypto
 * header pointer, QEMU's feature name table for v3 images with clusters
 * over 4 KiB, bitmaps if nb_bitmaps > 0, unknown extensions in reverse
 * file order as QEMU does), the end marker, and the backing file name.
 * The rest of buf is zeroed.  hdr->backing_file_offset/size and
 * header_length of hdr are ignored: they follow from the layout.
 * Returns the number of bytes used, or -ENOSPC (message set) if they do
 * not fit in len, or -EINVAL for a header QEMU would refuse to write.
 */
int64_t qcow2_header_encode(const struct qcow2_header *hdr, uint8_t *buf,
                            size_t len);

/*
 * QEMU's qcow2_validate_table(): entries * entry_len bytes at offset must
 * fit max_bytes ("WHAT too large"), start on a cluster and end below
 * INT64_MAX ("WHAT offset invalid").
 */
int qcow2_validate_table(uint64_t offset, uint64_t entries,
                         uint64_t entry_len, uint64_t max_bytes,
                         uint64_t cluster_size, const char *what);

/* The feature name table QEMU 7.2 writes, and its entry count. */
extern const struct qcow2_feature qcow2_std_features[];
#define QCOW2_NB_STD_FEATURES 8

/*
 * QEMU's size_to_l1(): L1 entries needed to map size bytes, computed in
 * wrapping 64-bit arithmetic exactly as QEMU does.
 */
uint64_t qcow2_size_to_l1(uint64_t size, unsigned cluster_bits,
                          bool extended_l2);

/* "zlib" or "zstd" (QAPI Qcow2CompressionType), NULL for others. */
const char *qcow2_compression_name(uint8_t type);

/* Would QEMU's block layer accept a read of n bytes at off? */
static inline bool qcow2_read_in_range(uint64_t off, uint64_t n)
{
    return off <= QCOW2_MAX_IO_END && n <= QCOW2_MAX_IO_END - off;
}

/* ---- snapshot.c -------------------------------------------------------- */

/*
 * Decode nb snapshot table entries.  buf holds len bytes of the file
 * from table_offset (the table's absolute offset, used only for QEMU's
 * EIO rule); bytes are consumed entry by entry exactly as QEMU reads
 * them, with its limits: at most QCOW2_MAX_SNAPSHOT_EXTRA_DATA bytes of
 * extra data per entry and QCOW2_MAX_SNAPSHOTS_SIZE for the whole table.
 * default_disk_size is used for entries without a disk size.
 *
 * Returns 0, or -ENOBUFS when buf ends before the table does: *needed is
 * then a length to retry with (never more than QCOW2_MAX_SNAPSHOTS_SIZE +
 * QCOW2_SNAPSHOT_MAX_ENTRY + 8, after which the table is too big), or
 * another -errno with the message set.  out is empty on failure.
 */
int qcow2_snapshots_decode(const uint8_t *buf, size_t len,
                           uint64_t table_offset, uint32_t nb,
                           uint64_t default_disk_size,
                           struct qcow2_snapshot_table *out, size_t *needed);

/*
 * The encoded size of a table as QEMU writes it (each entry with at least
 * 24 bytes of extra data, id and name cut at their first NUL), or -EFBIG
 * (message set) if it exceeds QCOW2_MAX_SNAPSHOTS_SIZE.
 */
int64_t qcow2_snapshots_encoded_size(const struct qcow2_snapshot_table *t);

/* Encode into buf (zeroed first); returns the size or -errno. */
int64_t qcow2_snapshots_encode(const struct qcow2_snapshot_table *t,
                               uint8_t *buf, size_t len);

void qcow2_snapshots_free(struct qcow2_snapshot_table *t);

/* ---- bitmap.c ---------------------------------------------------------- */

/*
 * QEMU's checks of the directory size from the bitmaps extension, made
 * before it reads the directory.
 */
int qcow2_bitmap_dir_check_size(uint64_t dir_size);

/*
 * Decode the bitmap directory (buf: the dir_size bytes at the directory
 * offset) holding nb_bitmaps entries, checking each entry as QEMU does
 * for an image of cluster_size clusters and disk_size bytes.
 */
int qcow2_bitmaps_decode(const uint8_t *buf, size_t len, uint32_t nb_bitmaps,
                         uint64_t cluster_size, uint64_t disk_size,
                         struct qcow2_bitmap_list *out);

/*
 * QEMU loads every bitmap at open: its name must be unique (an in_use
 * bitmap whose name was already loaded is skipped), and the table of a
 * bitmap not in use must be valid and exactly as long as the disk needs.
 * Checks bitmap index i of list against the earlier ones.  Returns 1 if
 * its table must be checked with qcow2_bitmap_check_table(), 0 if not, or
 * -errno with the message set.
 */
int qcow2_bitmap_check_name(const struct qcow2_bitmap_list *list, uint32_t i);

/*
 * Check a bitmap table (table: table_size big-endian entries) for a disk
 * of disk_size bytes.
 */
int qcow2_bitmap_check_table(const struct qcow2_bitmap *bm,
                             const uint8_t *table, uint64_t cluster_size,
                             uint64_t disk_size);

/* The bitmap table entries QEMU expects for a disk of disk_size bytes. */
uint64_t qcow2_bitmap_table_entries(uint64_t disk_size,
                                    unsigned granularity_bits,
                                    uint64_t cluster_size);

/*
 * The directory of list's entries as the spec lays it out (no extra
 * data, names as decoded: an embedded NUL shortened them), and its size.
 * Encode returns the bytes written or -ENOSPC when len is short.
 */
size_t qcow2_bitmaps_encoded_size(const struct qcow2_bitmap_list *list);
int64_t qcow2_bitmaps_encode(const struct qcow2_bitmap_list *list,
                             uint8_t *buf, size_t len);

void qcow2_bitmaps_free(struct qcow2_bitmap_list *list);

/* ---- bitmap_write.c ---------------------------------------------------- */

/*
 * A guest write, zero write or discard of [off, off + len) is about to be
 * made: the bitmaps are flagged in use on disk (once), and the granules'
 * bits set in every enabled bitmap.  s->lock held exclusively.
 */
int qcow2_bitmaps_note_write(struct qimg_node *node, struct qcow2_state *s,
                             uint64_t off, uint64_t len);
/* Tables for new_size (before the header's size changes; flagged in use). */
int qcow2_bitmaps_resize(struct qimg_node *node, struct qcow2_state *s,
                         uint64_t new_size);
/*
 * The flush's two steps: store changed tables and a new directory with
 * the bitmaps flagged in_use or not, in new clusters (before the refcount
 * write-back); then, once those are on disk, the header naming it.
 */
int qcow2_bitmaps_store(struct qimg_node *node, struct qcow2_state *s,
                        bool in_use);
int qcow2_bitmaps_commit(struct qimg_node *node, struct qcow2_state *s);
/* The bitmap callback (driver.h; qemu-img bitmap). */
int qcow2_bitmap(struct qimg_node *node, const struct qimg_bitmap_request *req,
                 struct qimg_node *source);
/* The first bitmap that was in use when the image was opened, or NULL. */
const char *qcow2_bitmaps_stale(const struct qcow2_state *s);
void qcow2_bitmaps_write_free(struct qcow2_state *s);

/* ---- crypto.c --------------------------------------------------------- */

/*
 * Take the encrypt.* runtime options, decode the LUKS header, and for an
 * I/O open of an encrypted image get its key (s->cipher), with QEMU's
 * checks and messages.
 */
int qcow2_crypto_open(struct qimg_node *node, struct qcow2_state *s,
                      unsigned flags);
void qcow2_crypto_close(struct qcow2_state *s);

/* ---- cluster.c ---------------------------------------------------------- */

/*
 * The mapping of the guest bytes at off (at most len > 0 of them): the
 * longest run of one type within one L2 slice, host offsets contiguous
 * for the types that have one; a compressed run is one cluster.  Checks
 * every entry it uses and fails with -EIO on corruption.
 */
int qcow2_get_mapping(struct qimg_node *node, struct qcow2_state *s,
                      uint64_t off, uint64_t len, struct qcow2_mapping *m);

/*
 * The decompressed cluster of a compressed descriptor, in s->z_out
 * (cluster_size bytes); the last one is kept.
 */
int qcow2_read_compressed(struct qimg_node *node, struct qcow2_state *s,
                          uint64_t l2_entry);

/* Free the L2 cache and the compression buffers. */
void qcow2_cluster_free(struct qcow2_state *s);

/* ---- prealloc.c --------------------------------------------------------- */

/*
 * QEMU's metadata preallocation heuristic: 1 if the refcounts mark at
 * least max(real * 10 / 9, real + 2) clusters of the file as used, where
 * real is the number of clusters the host file actually allocates; 0 if
 * not, or -errno (a refcount block that cannot be read or is misaligned).
 */
int qcow2_detect_metadata_prealloc(struct qimg_node *node,
                                   struct qcow2_state *s);

/* ---- compress.c --------------------------------------------------------- */

/*
 * Decompress one cluster: fill all of dst (dst_len bytes) from at most
 * src_len bytes of src, compressed with type (QCOW2_COMPRESSION_*).
 * Trailing input may belong to the next cluster and is ignored.  Returns
 * 0, -EIO if the data does not decompress to a full cluster, -ENOMEM or
 * -ENOTSUP.  Sets no message: the caller knows the context.
 */
int qcow2_decompress(uint8_t type, uint8_t *dst, size_t dst_len,
                     const uint8_t *src, size_t src_len);

/* ---- check.c ------------------------------------------------------------ */

struct qimg_check_result;

/*
 * Refcount entry index of a refcount block (or of any array packed the
 * same way), for refcount_bits = 1 << order, order 0..6 [spec: Host
 * cluster management]: widths of 8 bits and more are big-endian; in
 * narrower ones entry 0 is in the least significant bits of byte 0.
 * store keeps only the low refcount_bits bits of value.
 */
uint64_t qcow2_refcount_load(const uint8_t *block, uint64_t index,
                             unsigned order);
void qcow2_refcount_store(uint8_t *block, uint64_t index, unsigned order,
                          uint64_t value);
/* Bytes holding entries refcount entries of width 1 << order. */
uint64_t qcow2_refcount_array_bytes(uint64_t entries, unsigned order);

/* The driver's check callback (see struct qimg_format_ops). */
int qcow2_check(struct qimg_node *node, unsigned flags,
                void (*report)(const char *line, unsigned kind, void *opaque),
                void *opaque, struct qimg_check_result *res);

/*
 * One run of QEMU's qcow2 check on node (state s), repairing what fix
 * (QIMG_CHECK_FIX_LEAKS, QIMG_CHECK_FIX_ERRORS) allows, as qemu-img
 * check -r does: refcounts set to the references counted, the refcount
 * structure rebuilt when a used cluster has refcount 0 or a refcount
 * block is broken (FIX_ERRORS), COPIED flags set from the refcounts,
 * then the dirty bit cleared (and the corrupt bit, when the run left no
 * corruption and no check error).  fix 0 is the read-only check.  Each
 * problem and repair goes to report (NULL: dropped) as qemu-img words
 * it; res is zeroed first and then holds the counts (found = left
 * unrepaired, *_fixed = repaired).  Returns 0 when the run completed,
 * else -errno with the message set.  As with qemu-img, a run that fixed
 * something should be followed by a run with fix 0 to get the final
 * counts ("Double checking the fixed image now...").
 *
 * It works on node->file directly (reads and writes there, never through
 * a cache).  A fix run first writes the write path's caches back
 * (qcow2_write_flush() when s->write_ready) and at the end drops them:
 * qcow2_write_free() (refcount cache and table; the next write loads
 * them again) and every L2 slice.  qcow2_open() calls it with both flags
 * for a dirty image opened writable without QIMG_OPEN_CHECK, as QEMU
 * does.  fix needs node->writable (EROFS).
 *
 * What it updates in s, to match what it wrote:
 *  - s->l1_table entries whose COPIED flag it fixed (the L1 on disk too);
 *  - after a rebuild: s->hdr.refcount_table_offset/_clusters,
 *    s->refcount_table_offset/_entries;
 *  - s->refcount_table, the refcount block cache, pending frees and the
 *    L2 slices are dropped (write_ready false) after any fix run;
 *  - s->hdr.incompatible_features (dirty/corrupt bits cleared, and
 *    s->dirty_set; or the corrupt bit and s->corrupt set when it signals
 *    a corruption on the writable image); the header cluster is then
 *    rewritten from s->hdr (QEMU's qcow2_update_header), so s->hdr must
 *    be current;
 *  - s->snapshots is re-read.
 */
int qcow2_repair(struct qimg_node *node, struct qcow2_state *s,
                 unsigned fix, qimg_check_message_fn report, void *opaque,
                 struct qimg_check_result *res);

/*
 * Where QEMU 7.2 puts a rebuilt refcount structure (check -r all), pure:
 * refs holds the counted references of nb_clusters clusters, packed as
 * refcount blocks pack them (width 1 << order; refs_bytes allocated,
 * zero past the entries).  Every block range with a used cluster gets a
 * refcount block in the first free cluster at or after the start of its
 * range; then the table (a whole number of clusters of entries) takes
 * the first free run from cluster 0, and blocks are given to the ranges
 * it lands in, until the table stops growing.  The clusters taken are
 * counted in refs (which grows by realloc, at most max_refs_bytes: then
 * ENOMEM).  Out: reftable (host order, malloc'ed, reftable_entries
 * entries: file offsets of the blocks, 0 for none) and reftable_offset.
 * Writing block i as bytes [i * cluster_size, (i + 1) * cluster_size) of
 * refs (zero past refs_bytes) and then the table gives QEMU's result.
 */
struct qcow2_rebuild {
    unsigned cluster_bits;
    unsigned order;
    uint64_t max_refs_bytes;
    uint8_t *refs;
    uint64_t nb_clusters;
    uint64_t refs_bytes;
    uint64_t *reftable;
    uint64_t reftable_entries;
    uint64_t reftable_offset;
};
int qcow2_rebuild_plan(struct qcow2_rebuild *r);

/*
 * Read and decode the snapshot table the header names into s->snapshots
 * (qcow2.c; an open for checking leaves it to the check).
 */
int qcow2_read_snapshot_table(struct qimg_node *node, struct qcow2_state *s);

/* ---- refcount.c ---------------------------------------------------------- */

/*
 * Load the refcount table for writing (once; s->write_ready after).
 * Checks every reftable entry's alignment.
 */
int qcow2_refcount_init(struct qimg_node *node, struct qcow2_state *s);
/* Drop the refcount cache and table (after close or a repair). */
void qcow2_refcount_free(struct qcow2_state *s);
/* The refcount of the cluster with index cluster (0 past the table). */
int qcow2_refcount_get(struct qimg_node *node, struct qcow2_state *s,
                       uint64_t cluster, uint64_t *out);
/*
 * Allocate n contiguous free clusters with refcount 1 (exactly n, or
 * with QCOW2_ALLOC_UPTO between 1 and n, the count in *got).  *off is the
 * host offset of the first.  The range is checked against the image's
 * metadata first (a hostile refcount table must not make data overwrite
 * an L2 table): an overlap marks the image corrupt.
 */
#define QCOW2_ALLOC_UPTO (1u << 0)
int qcow2_alloc_clusters(struct qimg_node *node, struct qcow2_state *s,
                         uint64_t n, unsigned flags, uint64_t *off,
                         uint64_t *got);
/*
 * Room for bytes (<= 2 clusters) of compressed data, packed after the
 * previous compressed cluster as QEMU packs them: each host cluster the
 * range touches gains one reference.
 */
int qcow2_alloc_bytes(struct qimg_node *node, struct qcow2_state *s,
                      uint64_t bytes, uint64_t *off);
/* One reference to each cluster of [off, off + bytes) goes at the flush. */
int qcow2_free_later(struct qimg_node *node, struct qcow2_state *s,
                     uint64_t off, uint64_t bytes);
/* Drop the references of a compressed descriptor (at the flush). */
int qcow2_free_compressed_later(struct qimg_node *node,
                                struct qcow2_state *s, uint64_t l2_entry);
/* Write dirty refcount blocks back (no sync). */
int qcow2_refcount_writeback(struct qimg_node *node, struct qcow2_state *s);
/* Apply the deferred frees and write the blocks back (no sync). */
int qcow2_refcount_apply_frees(struct qimg_node *node, struct qcow2_state *s);
/* Issue the held run of freed clusters as one discard (advisory). */
void qcow2_discard_flush(struct qimg_node *node, struct qcow2_state *s);
/* The index of the last cluster in use + 1 (the file may end there). */
int qcow2_refcount_end(struct qimg_node *node, struct qcow2_state *s,
                       uint64_t *end);
/*
 * One more reference to a cluster in use (cached, written back by the
 * next refcount write-back): EINVAL when it is unused or at
 * refcount_max, as QEMU refuses it.
 */
int qcow2_refcount_add_one(struct qimg_node *node, struct qcow2_state *s,
                           uint64_t cluster);
/*
 * One reference less, now (EINVAL when it has none): only for a cluster
 * that no table on disk names more often than its new count says.  A
 * cluster reaching 0 is free at once (and discarded).
 */
int qcow2_refcount_drop_one(struct qimg_node *node, struct qcow2_state *s,
                            uint64_t cluster);

/* ---- snapshot_write.c ---------------------------------------------------- */

int qcow2_snapshot_create(struct qimg_node *node, const char *name,
                          uint32_t date_sec, uint32_t date_nsec);
int qcow2_snapshot_apply(struct qimg_node *node,
                         const struct qimg_snapshot_select *sel);
int qcow2_snapshot_delete(struct qimg_node *node,
                          const struct qimg_snapshot_select *sel);
/*
 * Write s->snapshots again as a new table, every entry complete (the
 * repair of v3 entries without vm_state_size_large and disk_size, as
 * QEMU's qcow2_check_fix_snapshot_table).  The dirty bit must be clear
 * and the write path's caches current.
 */
int qcow2_snapshot_table_rewrite(struct qimg_node *node,
                                 struct qcow2_state *s);

/* ---- overlap.c ---------------------------------------------------------- */

/*
 * Metadata classes of the overlap checks, in QEMU's order (the first
 * class hit names the overlap).  Bitmap tables and inactive L2 tables are
 * not checked, as in QEMU's default mode; QCOW2_OL_INACTIVE_L2 in ignore
 * says a snapshot's L2 table is being written (every table is scanned).
 */
#define QCOW2_OL_MAIN_HEADER (1u << 0)
#define QCOW2_OL_ACTIVE_L1 (1u << 1)
#define QCOW2_OL_ACTIVE_L2 (1u << 2)
#define QCOW2_OL_REFCOUNT_TABLE (1u << 3)
#define QCOW2_OL_REFCOUNT_BLOCK (1u << 4)
#define QCOW2_OL_SNAPSHOT_TABLE (1u << 5)
#define QCOW2_OL_INACTIVE_L1 (1u << 6)
#define QCOW2_OL_BITMAP_DIRECTORY (1u << 7)
#define QCOW2_OL_INACTIVE_L2 (1u << 8)
/*
 * Refuse a write of [off, off + len) in the image file that would land on
 * metadata the image is known to have, other than the classes in ignore
 * (the one being written in place): the image is marked corrupt and -EIO
 * returned, as QEMU does.
 */
int qcow2_overlap_check(struct qimg_node *node, struct qcow2_state *s,
                        uint64_t off, uint64_t len, unsigned ignore);
/*
 * The metadata [off, off + len) overlaps (QEMU's names: "qcow2_header",
 * "active L2 table", ...), or NULL; changes nothing.
 */
const char *qcow2_overlap_what(const struct qcow2_state *s, uint64_t off,
                               uint64_t len, unsigned ignore);
/*
 * Whether no active L2 table or refcount block overlaps other metadata
 * (false also when memory is short: the checks then scan every table).
 */
bool qcow2_overlap_tables_apart(const struct qcow2_state *s);
/* The same with another refcount table (check's, while it rebuilds). */
const char *qcow2_overlap_find(const struct qcow2_state *s,
                               const uint64_t *reftable,
                               uint64_t reftable_entries, uint64_t off,
                               uint64_t len, unsigned ignore);
/*
 * Set the corrupt bit (once), warn as QEMU does ("qcow2: Marking image as
 * corrupt: WHAT; further corruption events will be suppressed"), and
 * return -EIO with the message set.
 */
int qcow2_signal_corruption(struct qimg_node *node, struct qcow2_state *s,
                            const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- write.c ------------------------------------------------------------- */

/* These expect s->lock held exclusively (the driver ops take it). */
int qcow2_pread(struct qimg_node *node, void *buf, size_t len, uint64_t off);
int qcow2_pwrite(struct qimg_node *node, const void *buf, size_t len,
                 uint64_t off);
/*
 * A guest write that changes no metadata, with s->lock held shared: every
 * byte lies in a cluster (subcluster) that is allocated, ours alone
 * (COPIED), neither compressed nor zero-flagged, in an unencrypted image
 * whose write path is set up.  Then the host offsets are looked up under
 * l2_lock and the data written with only the shared lock held.  1 when
 * written, 0 when it is not such a write (nothing was written: take the
 * exclusive path, which also reports anything odd), -errno when a data
 * write failed.  probe: only say whether it is such a write (1 or 0),
 * writing nothing.
 */
int qcow2_pwrite_in_place(struct qimg_node *node, const void *buf,
                          size_t len, uint64_t off, bool probe);
int qcow2_pwrite_zeroes(struct qimg_node *node, uint64_t off, uint64_t len,
                        unsigned flags);
int qcow2_pdiscard(struct qimg_node *node, uint64_t off, uint64_t len);
int qcow2_pwrite_compressed(struct qimg_node *node, const void *buf,
                            size_t len, uint64_t off);
int64_t qcow2_compress_cluster(struct qimg_node *node, const void *buf,
                               size_t len, uint64_t off, void *out,
                               size_t cap);
int qcow2_pwrite_precompressed(struct qimg_node *node, const void *data,
                               size_t csize, size_t len, uint64_t off);
int qcow2_compressed_end(struct qimg_node *node);
int qcow2_set_compression(struct qimg_node *node, int level, unsigned flags);
/*
 * Write everything cached back in the safe order and sync (see
 * qcow2_state); clears the dirty bit of lazy refcounts at the end.
 */
int qcow2_write_flush(struct qimg_node *node, struct qcow2_state *s);
/* Prepare for the first write: refcounts, the dirty bit, buffers. */
int qcow2_write_begin(struct qimg_node *node, struct qcow2_state *s);
/*
 * What every write does first: refuse a corrupt image, qcow2_write_begin,
 * flush when the deferred frees are many, set the lazy dirty bit.
 */
int qcow2_write_prepare(struct qimg_node *node, struct qcow2_state *s);
/*
 * Rebuild the refcounts of an image whose dirty bit is set (opened for
 * writing after a crash with lazy refcounts) and clear the bit.
 */
int qcow2_repair_dirty(struct qimg_node *node, struct qcow2_state *s);
/* Free the write path's buffers and caches. */
void qcow2_write_free(struct qcow2_state *s);
/* Write incompatible_features (and s->hdr's copy) and sync. */
int qcow2_set_incompat(struct qimg_node *node, struct qcow2_state *s,
                       uint64_t features);
/* Active L1 entry i differs from the table on disk. */
void qcow2_l1_mark_dirty(struct qcow2_state *s, uint64_t i);
/*
 * Write the whole header cluster again from s->hdr (extensions included)
 * and sync; ENOSPC when it no longer fits.
 */
int qcow2_header_rewrite(struct qimg_node *node, struct qcow2_state *s);
/* Change header bytes [off, off + len) on disk and sync. */
int qcow2_header_update(struct qimg_node *node, uint64_t off,
                        const void *bytes, size_t len);
/*
 * The L2 entry (and extended bitmap) of guest cluster index cluster for
 * writing: allocates or copies the L2 table as needed, *entry points at
 * the entry in a cached slice that is marked dirty.
 */
int qcow2_l2_entry_rw(struct qimg_node *node, struct qcow2_state *s,
                      uint64_t cluster, uint8_t **entry);

/*
 * QEMU's full discard of every guest cluster (make_empty's fallback):
 * each L2 entry becomes 0 (unallocated, reading from the backing file)
 * and its host cluster loses a reference; L2 tables stay.  Flushes.
 */
int qcow2_discard_all(struct qimg_node *node, struct qcow2_state *s);

/* ---- backing.c ----------------------------------------------------------- */

/* The change_backing and make_empty callbacks (see driver.h). */
int qcow2_change_backing(struct qimg_node *node, const char *name,
                         const char *format);
int qcow2_make_empty(struct qimg_node *node);

/* ---- resize.c ------------------------------------------------------------ */

int qcow2_truncate(struct qimg_node *node, uint64_t size,
                   const char *prealloc);
/*
 * A new active L1 table of new_size entries (more than now), written and
 * switched to with everything flushed; the old one is freed.
 */
int qcow2_grow_l1(struct qimg_node *node, struct qcow2_state *s,
                  uint64_t new_size);

/* ---- cluster.c (write side) ---------------------------------------------- */

/* The cached slice at slice_off, marked dirty; *out points at its bytes. */
int qcow2_l2_slice_rw(struct qimg_node *node, struct qcow2_state *s,
                      uint64_t slice_off, uint8_t **out);
/*
 * The L2 entry (and bitmap word, 0 without extended L2 entries) of index
 * idx in the slice at slice_off, for the shared write path: from the
 * cache, or read into a slot when the one to reuse is clean (writing a
 * dirty slice back would need the refcounts written first).  1 with the
 * entry, 0 when it cannot be had that way, -errno on a read error.
 * Caller holds lock shared (or exclusive) and l2_lock.
 */
int qcow2_l2_peek_locked(struct qimg_node *node, struct qcow2_state *s,
                         uint64_t slice_off, uint64_t idx, uint64_t *entry,
                         uint64_t *bitmap);
/* Forget cached slices inside [off, off + len) without writing them. */
void qcow2_l2_invalidate(struct qcow2_state *s, uint64_t off, uint64_t len);
/* Write every dirty slice back (no sync). */
int qcow2_l2_writeback(struct qimg_node *node, struct qcow2_state *s);

/* ---- compress.c (write side) --------------------------------------------- */

/*
 * Compress src as QEMU does for type (raw deflate with a 4 KiB window at
 * level 6, or one zstd frame at level 3) into at most dst_cap bytes:
 * the size, -ENOSPC when it does not fit, or -ENOMEM/-ENOTSUP.  level 0
 * is that default; another level and flags (QIMG_COMPRESS_*, see
 * qimg_set_compression) must have passed qcow2_compression_check.
 */
int64_t qcow2_compress(uint8_t type, int level, unsigned flags, uint8_t *dst,
                       size_t dst_cap, const uint8_t *src, size_t src_len);
/* libdeflate's highest level (12: its slowest, smallest output). */
#define QCOW2_LIBDEFLATE_LEVEL_MAX 12
/*
 * Can type compress at level (0: default) with flags?  0, -ERANGE for a
 * level out of range, -EINVAL for flags that do not fit the type,
 * -ENOTSUP for libdeflate in a build without it.
 */
int qcow2_compression_check(uint8_t type, int level, unsigned flags);

/* Creation (create.c): QEMU's option table and the create function. */
#include "qimg/qimg.h"
extern const struct qimg_opt_desc qcow2_create_opts[];
int qcow2_create(const char *filename, const struct qimg_opts *opts);
/*
 * The image qcow2_create makes, written into io (truncated first), which
 * the caller opened read-write and keeps: for fuzzing and tests over a
 * memory leaf.  An external data file is refused (ENOTSUP).
 */
int qcow2_create_on_io(struct qimg_io *io, const struct qimg_opts *opts);

/* Amendment (amend.c): QEMU's amend option table and the callback. */
extern const struct qimg_opt_desc qcow2_amend_opts[];
int qcow2_amend(struct qimg_node *node, const struct qimg_opts *opts,
                qimg_progress_fn progress, void *opaque, unsigned flags);

#endif
