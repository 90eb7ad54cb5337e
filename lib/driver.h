/*
 * The two internal interfaces: I/O leaves (bytes in a host file or buffer)
 * and format drivers (a disk image layout over an I/O leaf).
 *
 * Conventions for both: functions return 0 or -errno (int64_t "value or
 * -errno" where a value is returned).  The message is recorded with
 * error_set() where the problem is found.  Callers never see positive
 * error codes.
 */
#ifndef QIMG_DRIVER_H
#define QIMG_DRIVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qimg/qimg.h"

/* ---- I/O leaves -------------------------------------------------------- */

struct qimg_io;
struct iovec;

/* The most buffers one io_pwritev takes (within every Linux's IOV_MAX). */
#define IO_IOV_MAX 64

/* Flags for io_*_open. */
#define IO_RDWR (1u << 0)
#define IO_CREATE (1u << 1)  /* create; fail if it exists unless IO_TRUNC */
#define IO_TRUNC (1u << 2)   /* create or truncate to 0 */
#define IO_NO_LOCK (1u << 3) /* take no image locks (-U) */
/* Open without locks; the first set_perm takes them (see image.c). */
#define IO_LOCK_LATER (1u << 4)
/*
 * Read aligned requests (and, read-write leaves, write them) with
 * O_DIRECT (bypassing the page cache) where the file system supports it;
 * others are buffered.
 */
#define IO_DIRECT (1u << 5)

/* QEMU's block permissions, as the image locks express them. */
#define IO_PERM_CONSISTENT_READ (1u << 0)
#define IO_PERM_WRITE (1u << 1)
#define IO_PERM_WRITE_UNCHANGED (1u << 2)
#define IO_PERM_RESIZE (1u << 3)

/* Block status of a leaf range. */
#define IO_STATUS_DATA (1u << 0) /* stored bytes (SEEK_DATA) */
#define IO_STATUS_ZERO (1u << 1) /* a hole: reads as zero */

struct qimg_io_ops {
    const char *name;
    /* Close; releases locks.  Does not flush. */
    void (*close)(struct qimg_io *io);
    int64_t (*get_size)(struct qimg_io *io);
    /* Bytes allocated on the host, or -errno. */
    int64_t (*get_allocated)(struct qimg_io *io);
    /* Reads past the end of the file return zeros. */
    int (*pread)(struct qimg_io *io, void *buf, size_t len, uint64_t off);
    int (*pwrite)(struct qimg_io *io, const void *buf, size_t len,
                  uint64_t off);
    /*
     * Optional: the cnt buffers of iov written one after the other from
     * off, as one request (a leaf without it gets one pwrite each).
     */
    int (*pwritev)(struct qimg_io *io, const struct iovec *iov, int cnt,
                   uint64_t off);
    /* Zero a range; with may_unmap it may become a hole. */
    int (*pwrite_zeroes)(struct qimg_io *io, uint64_t off, uint64_t len,
                         bool may_unmap);
    /*
     * Advisory: deallocate if possible.  The contents afterwards are
     * unspecified (zero where a hole was punched, else unchanged); callers
     * that need zeros use pwrite_zeroes.
     */
    int (*discard)(struct qimg_io *io, uint64_t off, uint64_t len);
    int (*flush)(struct qimg_io *io);
    int (*truncate)(struct qimg_io *io, uint64_t size);
    /*
     * Status of the run starting at off, at most len bytes: returns an
     * IO_STATUS_* value and sets *pnum (> 0), or -errno.
     */
    int (*block_status)(struct qimg_io *io, uint64_t off, uint64_t len,
                        uint64_t *pnum);
    /*
     * Hold the IO_PERM_* permissions in perm and refuse to share those in
     * unshared, as QEMU's image locks do.  Holding IO_PERM_WRITE on a leaf
     * opened read-only reopens it read-write.  Returns -EAGAIN with a
     * message if another process conflicts; the old state stays then.
     */
    int (*set_perm)(struct qimg_io *io, unsigned perm, unsigned unshared);
    /*
     * Reserve host space for [off, off + len) as posix_fallocate does,
     * extending the file if needed; the range reads as before (zero past
     * the old end).  NULL: the leaf cannot reserve space.
     */
    int (*allocate)(struct qimg_io *io, uint64_t off, uint64_t len);
};

struct qimg_io {
    const struct qimg_io_ops *ops;
    char *filename;
    bool writable;
    /* A device: its size is fixed, truncate can only hide its end. */
    bool fixed_size;
    /*
     * Writes whose offset, length and buffer are multiples of this go
     * past the page cache (O_DIRECT: cache mode none or directsync); 0
     * when none do.  There zeroing a range (io_pwrite_zeroes, one
     * fallocate) costs far less than writing zero bytes, which a
     * buffered write only copies into the cache.
     */
    uint32_t direct_align;
    /*
     * Nothing was changed through this handle since its last successful
     * flush, so io_flush has nothing to make durable and returns at once
     * (an ordered flush sequence then costs a sync only per step that
     * wrote).  False at open: the first flush always syncs, for whatever
     * was written before.  Read and written with __atomic builtins:
     * several threads may write through one handle.
     */
    bool synced;
};

int io_file_open(const char *filename, unsigned flags, struct qimg_io **out);
/* An in-memory file, for tests and fuzzing.  data is copied. */
int io_mem_open(const char *name, const void *data, size_t len,
                unsigned flags, struct qimg_io **out);
/*
 * A read-only in-memory file over data itself, not a copy: data must stay
 * unchanged until the leaf is closed.  For fuzz inputs opened many times
 * (a copy of a multi-MiB image per open was a third of a fuzz target's
 * time).  It cannot be made writable (EACCES).
 */
int io_mem_open_borrowed(const char *name, const void *data, size_t len,
                         struct qimg_io **out);
/* The current contents of a memory leaf (valid until the next write). */
const uint8_t *io_mem_buffer(struct qimg_io *io, size_t *len);

/* Thin wrappers so callers never reach into ops. */
void io_close(struct qimg_io *io);
int64_t io_get_size(struct qimg_io *io);
int io_pread(struct qimg_io *io, void *buf, size_t len, uint64_t off);
int io_pwrite(struct qimg_io *io, const void *buf, size_t len, uint64_t off);
/* Gathered write: iov[0, cnt) back to back from off (cnt <= IO_IOV_MAX). */
int io_pwritev(struct qimg_io *io, const struct iovec *iov, int cnt,
               uint64_t off);
int io_pwrite_zeroes(struct qimg_io *io, uint64_t off, uint64_t len,
                     bool may_unmap);
/* Sync to stable storage; nothing to do if io->synced. */
int io_flush(struct qimg_io *io);
/* Advisory deallocation (ops->discard; -ENOTSUP without one). */
int io_discard(struct qimg_io *io, uint64_t off, uint64_t len);
/*
 * Reserve [off, off + len) (QEMU's preallocation=falloc) with the leaf's
 * allocate, or by zero writes on leaves without one.
 */
int io_allocate(struct qimg_io *io, uint64_t off, uint64_t len);
int io_truncate(struct qimg_io *io, uint64_t size);

/* ---- Format drivers ---------------------------------------------------- */

struct qimg_node;

/* Block status flags a format returns (same bits as QIMG_EXTENT_*). */
#define BS_DATA QIMG_EXTENT_DATA
#define BS_ZERO QIMG_EXTENT_ZERO
#define BS_ALLOCATED QIMG_EXTENT_ALLOCATED
#define BS_OFFSET_VALID QIMG_EXTENT_OFFSET_VALID
#define BS_COMPRESSED QIMG_EXTENT_COMPRESSED
/*
 * With BS_DATA and BS_OFFSET_VALID: the host range may hold holes (the
 * image was preallocated with metadata only), so the core asks the file
 * at the host offset and reports its holes as zero, as QEMU's
 * BDRV_BLOCK_RECURSE does.  Not a public extent flag.
 */
#define BS_RECURSE (1u << 8)

struct qimg_format_ops {
    /* The name qemu-img uses with -f. */
    const char *name;
    /*
     * Runtime options that change what the image reads as (NULL-ended;
     * QEMU's strong_runtime_opts): an open given any of them is named
     * "json:{...}" in info, as QEMU names it.  NULL: none.
     */
    const char *const *strong_opts;
    /*
     * pread, pwrite, pwrite_zeroes, pdiscard and flush may be called on
     * one node from several threads at once (qimg_concurrent_io): the
     * driver keeps no unguarded state on those paths, and reaches its
     * backing node only under its own exclusion.
     */
    bool concurrent_io;
    /*
     * Score a file from its first bytes (buf holds min(file size, 2048)
     * bytes): 0 = not this format, 100 = certain.  Pure.
     */
    int (*probe)(const uint8_t *buf, size_t len, const char *filename);
    /*
     * Open node->file as this format.  Sets node->size, and, if the image
     * names one, node->backing_name and node->backing_format.
     */
    int (*open)(struct qimg_node *node, unsigned flags);
    /* Free driver state.  Flushing is done before, by flush. */
    void (*close)(struct qimg_node *node);
    /*
     * Guest reads of this layer only.  Ranges this layer does not
     * allocate are read from node->backing with node_read_below().
     * off/len are within node->size.
     */
    int (*pread)(struct qimg_node *node, void *buf, size_t len,
                 uint64_t off);
    int (*pwrite)(struct qimg_node *node, const void *buf, size_t len,
                  uint64_t off);
    int (*pwrite_zeroes)(struct qimg_node *node, uint64_t off, uint64_t len,
                         unsigned flags);
    int (*pdiscard)(struct qimg_node *node, uint64_t off, uint64_t len);
    /*
     * One cluster compressed (see qimg_pwrite_compressed); off is
     * cluster-aligned, len the cluster size or the image's tail.  NULL:
     * the format has no compressed clusters.
     */
    int (*pwrite_compressed)(struct qimg_node *node, const void *buf,
                             size_t len, uint64_t off);
    /*
     * pwrite_compressed in two halves, so that callers can compress on
     * several threads.  compress_cluster compresses the cluster at off
     * (same rules for off/len) into out; it reads only what open set up,
     * so any number of threads may call it at once beside one thread
     * making other calls on the node.  Returns the compressed size, 0
     * when the data does not shrink enough to be stored compressed (or
     * would not fit in cap), or -errno.  pwrite_precompressed stores such
     * a result (csize > 0) as pwrite_compressed would have.  Both NULL
     * when the format compresses only inside pwrite_compressed.
     */
    int64_t (*compress_cluster)(struct qimg_node *node, const void *buf,
                                size_t len, uint64_t off, void *out,
                                size_t cap);
    int (*pwrite_precompressed)(struct qimg_node *node, const void *data,
                                size_t csize, size_t len, uint64_t off);
    /*
     * The end of a run of compressed writes (qemu-img convert -c): finish
     * the file as the format's QEMU driver does (qcow2 pads it to a whole
     * sector).  NULL: nothing to do.
     */
    int (*compressed_end)(struct qimg_node *node);
    /*
     * Set the guest size to size (node->size is updated by the driver).
     * prealloc: "off", "metadata", "falloc" or "full" for the new area
     * (never NULL).  Shrinking drops the data past size; the caller has
     * checked that shrinking was asked for.  NULL: cannot be resized.
     * When the backing file is longer than the old size, the core then
     * zero-writes the new area (QEMU's zero write on truncate).
     */
    int (*truncate)(struct qimg_node *node, uint64_t size,
                    const char *prealloc);
    /*
     * Write cached metadata back and make everything durable, syncing
     * with node_sync() (which does nothing under QIMG_OPEN_CACHE_UNSAFE).
     * Called for writable nodes only, before close.
     */
    int (*flush)(struct qimg_node *node);
    /*
     * Status of this layer only for the run at off (at most len bytes):
     * BS_* flags, *pnum > 0, and *host_off when BS_OFFSET_VALID (an
     * offset in node->data_io, or node->file when that is NULL).  A range
     * that is neither BS_DATA nor BS_ZERO is unallocated here and defers
     * to the backing file; it may still carry a host offset (QEMU reports
     * one for unallocated subclusters of an allocated qcow2 cluster).
     * The run lengths are part of qemu-img's output (compare -s and the
     * progress of compare), so drivers end runs where QEMU's do.
     */
    int (*block_status)(struct qimg_node *node, uint64_t off, uint64_t len,
                        uint64_t *pnum, uint64_t *host_off);
    /* Fill the format-specific parts of info (cluster size, snapshots..) */
    int (*get_info)(struct qimg_node *node, struct qimg_image_info *info);
    /* Host bytes allocated by this image (all its files), or -errno. */
    int64_t (*get_allocated)(struct qimg_node *node);
    /*
     * Switch a read-only node to an internal snapshot's view (QEMU's
     * temporary snapshot load), after open.  NULL: not supported.
     */
    int (*snapshot_load)(struct qimg_node *node,
                         const struct qimg_snapshot_select *sel);
    /*
     * Consistency check of this layer (see qimg_check): each problem goes
     * to report (never NULL) as one line; res is zeroed by the caller.
     * Returns 0 when the check completed, or -errno (message set) when it
     * could not; NULL when the format has no check.
     */
    int (*check)(struct qimg_node *node, unsigned flags,
                 qimg_check_message_fn report, void *opaque,
                 struct qimg_check_result *res);
    /*
     * qemu-img amend (see qimg_amend): the option table (in the order the
     * options are applied) and the function; opts holds only options of
     * that table, with values of their types.  NULL: no amendment.
     */
    const struct qimg_opt_desc *amend_opts;
    int (*amend)(struct qimg_node *node, const struct qimg_opts *opts,
                 qimg_progress_fn progress, void *opaque, unsigned flags);
    /*
     * False when a freshly created image does not read as zeros (luks,
     * or preallocated encrypted qcow2: zero bytes in the file decrypt
     * to noise), so convert writes the zero ranges too.  NULL: true.
     */
    bool (*has_zero_init)(struct qimg_node *node);
    /* Creation: option table and the function. */
    const struct qimg_opt_desc *create_opts;
    int (*create)(const char *filename, const struct qimg_opts *opts);
    /*
     * qemu-img rebase: store name (NULL: no backing file) and format
     * (NULL: none) in the image's header, after flushing what was
     * written, as QEMU's bdrv_change_backing_file does.  -EINVAL for a
     * name the format cannot hold, -ENOSPC when the header would not fit
     * its space (qcow2: the first cluster); the image is unchanged then.
     * node->backing_name/format are updated by the caller.  NULL: the
     * format has no backing files (ENOTSUP).
     */
    int (*change_backing)(struct qimg_node *node, const char *name,
                          const char *format);
    /*
     * qemu-img commit: make every guest range unallocated in this layer
     * (reading through to the backing file), as QEMU's bdrv_make_empty.
     * Flushes.  NULL: not supported (commit then leaves the image).
     */
    int (*make_empty)(struct qimg_node *node);
    /*
     * Internal snapshots of a writable node (qemu-img snapshot -c/-a/-d;
     * the list is get_info's).  NULL: the format has none.  Each returns
     * 0 or -errno with the message set, and leaves the image consistent
     * on disk after every step (at worst leaking clusters).
     * snapshot_create: a new snapshot of the current state named name
     * (any bytes but NUL, at most 65535), taken at date_sec/date_nsec;
     * the format picks its id.  -ENOTSUP when this image cannot hold
     * one.  snapshot_apply: the state becomes the snapshot's (its guest
     * size too); -ENOENT when sel matches none.  snapshot_delete: the
     * first snapshot sel matches is removed and its space freed;
     * -ENOENT when none.  sel as for qimg_open_snapshot().
     */
    int (*snapshot_create)(struct qimg_node *node, const char *name,
                           uint32_t date_sec, uint32_t date_nsec);
    int (*snapshot_apply)(struct qimg_node *node,
                          const struct qimg_snapshot_select *sel);
    int (*snapshot_delete)(struct qimg_node *node,
                           const struct qimg_snapshot_select *sel);
    /*
     * Persistent bitmaps of a writable node (qimg_bitmap; req->source is
     * already resolved to source, the node holding the merge source, or
     * NULL for other operations).  0 or -errno with the message set.
     * NULL: the format has none.
     */
    int (*bitmap)(struct qimg_node *node, const struct qimg_bitmap_request *req,
                  struct qimg_node *source);
    /*
     * True when every guest write must be a compressed one (vmdk
     * streamOptimized; QEMU's needs_compressed_writes): qemu-img convert
     * then writes compressed without -c.  NULL: never.
     */
    bool (*needs_compressed_writes)(struct qimg_node *node);
    /*
     * qimg_set_compression: check level and flags against the image and
     * keep them for later compressed writes on this node (never stored).
     * NULL: the format has no such choice.
     */
    int (*set_compression)(struct qimg_node *node, int level,
                           unsigned flags);
};

/* One layer of an image: a format over a file, maybe with a backing node. */
struct qimg_node {
    const struct qimg_format_ops *drv;
    void *opaque; /* driver state */
    struct qimg_io *file;
    char *filename;
    uint64_t size;
    bool writable;
    /* Flushes do nothing (QIMG_OPEN_CACHE_UNSAFE). */
    bool no_flush;
    /* Writes to the first 512 bytes are refused (probed raw). */
    bool protect_block0;
    /*
     * The file block status host offsets refer to, when it is not
     * node->file (a qcow2 external data file).  Owned by the driver.
     */
    struct qimg_io *data_io;
    /* As stored in the image (NULL if none) and resolved. */
    char *backing_name;
    char *backing_format;
    struct qimg_node *backing;
    /*
     * Runtime options of this open (--image-opts' driver keys other than
     * driver and file.*: "key-secret", "encrypt.key-secret"), or NULL.
     * A driver takes the keys it knows with node_opt_take(); whatever is
     * left after open fails it, with QEMU's message.
     */
    struct qimg_opts *open_opts;
    struct qimg_opts *open_opts_taken;
    /* The name info shows when it is not filename (QEMU's json: names). */
    char *display_name;
};

/*
 * The value of runtime option key for this open, or NULL, marking it as
 * understood by the driver.  The string lives as long as the node.
 */
const char *node_opt_take(struct qimg_node *node, const char *key);
/*
 * node_opt_take for a size (QemuOpts' rules: suffixes k..E, bytes by
 * default, no sign), with QEMU's message for a bad value.  *given says
 * whether the option was there; *out is 0 when not.
 */
int node_opt_take_size(struct qimg_node *node, const char *key, bool *given,
                       uint64_t *out);

const struct qimg_format_ops *format_lookup(const char *name);
/* The best-scoring format for a header buffer (raw as the fallback). */
const struct qimg_format_ops *format_probe_buffer(const uint8_t *buf,
                                                  size_t len,
                                                  const char *filename);

/*
 * Create a host file for an image (the file protocol's part of creation):
 * honours the "size", "preallocation" (off, falloc, full) and "nocow"
 * options.  An existing file is truncated.  With out, the file stays open
 * read-write and is returned; otherwise it is closed.
 */
int create_file(const char *filename, const struct qimg_opts *opts,
                struct qimg_io **out);

/*
 * QEMU's -o booleans (core/create.c): on/yes/true/y and off/no/false/n set
 * *out and return true; anything else returns false.
 */
bool opt_parse_bool(const char *text, bool *out);
/*
 * Check one -o value (NULL: unset, fine) against its declared type, with
 * the words of QEMU's option parser (core/create.c).  0 or -EINVAL.
 */
int opt_check_value(const struct qimg_opt_desc *d, const char *value);

/*
 * Make io's writes durable (fsync), unless node's syncs are off
 * (QIMG_OPEN_CACHE_UNSAFE).  A driver's flush writes its caches back in
 * every case and calls this between the steps that must be ordered.
 */
int node_sync(struct qimg_node *node, struct qimg_io *io);

/* Read from the layer below node (zeros past its end or without one). */
int node_read_below(struct qimg_node *node, void *buf, size_t len,
                    uint64_t off);

/*
 * Fill a cluster just allocated at host in file (len bytes, guest offset
 * guest): what the layer below node holds there up to guest offset
 * below_end (zeros past it, past the layer's end or without one), with
 * n bytes of data laid over it at in_cluster (zeros when data is NULL).
 * Written in pieces of at most NODE_FILL_CHUNK bytes, so a cluster as
 * large as a format allows (parallels 2 GiB, vmdk 1 GiB) costs no more
 * memory than a small one.  0 or -errno.
 */
#define NODE_FILL_CHUNK (1u << 20)
int node_fill_new_cluster(struct qimg_node *node, struct qimg_io *file,
                          uint64_t host, uint64_t guest, uint64_t len,
                          uint64_t in_cluster, const void *data, size_t n,
                          uint64_t below_end);

/*
 * Does the layer below node read as zero over [off, off + len)?  1 when
 * its block status says so (or nothing lies below), 0 when not (or when
 * it cannot tell cheaply), -errno on error.
 */
int node_below_is_zero(struct qimg_node *node, uint64_t off, uint64_t len);

/*
 * The most table entries (qcow2: L2 entries) one check may examine, over
 * all its tables; a format's check fails with EFBIG past it, so that a
 * few crafted tables that repeat each other cannot keep a check busy for
 * hours.  The default, CHECK_DEFAULT_MAX_TABLE_ENTRIES, is 128 TiB of
 * guest space at 64 KiB clusters (some 15 seconds); fuzzing lowers it.
 * Not thread-safe to change while checks run.
 */
/*
 * pwrite_zeroes flag (besides QIMG_ZERO_MAY_UNMAP): the range must still
 * read as zero after the image gets a backing file it does not have now
 * (safe rebase).  A format that would leave it unallocated (qcow2 v2
 * without a backing file: QEMU 7.2's rebase loses data there) writes
 * zeros instead.
 */
#define ZERO_UNDER_NEW_BACKING (1u << 8)

#define CHECK_DEFAULT_MAX_TABLE_ENTRIES (1ull << 31)
extern uint64_t check_max_table_entries;

/* Drivers. */
extern const struct qimg_format_ops format_raw;
extern const struct qimg_format_ops format_qcow2;
extern const struct qimg_format_ops format_vdi;
extern const struct qimg_format_ops format_qcow;
extern const struct qimg_format_ops format_vpc;
extern const struct qimg_format_ops format_vmdk;
extern const struct qimg_format_ops format_vhdx;
extern const struct qimg_format_ops format_qed;
extern const struct qimg_format_ops format_bochs;
extern const struct qimg_format_ops format_cloop;
extern const struct qimg_format_ops format_luks;
extern const struct qimg_format_ops format_parallels;
extern const struct qimg_format_ops format_dmg;

#endif /* QIMG_DRIVER_H */
