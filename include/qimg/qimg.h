/*
 * libqimg: read, write, inspect and convert virtual disk images.
 *
 * The only installed header.  Every handle is opaque.  Every function that
 * can fail returns -1 (or NULL) and records a one-line message and an errno
 * value for the calling thread, read back with qimg_get_error() and
 * qimg_get_errno().  The message already names the file involved.
 *
 * Offsets and lengths are guest (virtual disk) bytes unless said otherwise.
 * Images are untrusted input: a malformed image fails to open or fails the
 * request with EIO; it never crashes the caller.
 */
#ifndef QIMG_QIMG_H
#define QIMG_QIMG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define QIMG_VERSION_STRING "0.1.0"
/* The qemu-img release whose behaviour and output qimg reproduces. */
#define QIMG_QEMU_COMPAT_VERSION "7.2.22"

/* ---- Errors ------------------------------------------------------------ */

/* The message of the last failure in this thread ("" if none). */
const char *qimg_get_error(void);
/* The errno value of the last failure in this thread (0 if none). */
int qimg_get_errno(void);

/*
 * Warnings (for example "probing guessed raw") are passed to this handler,
 * one message per call, possibly several lines.  The default handler
 * discards them.  The handler is process-wide.
 */
typedef void (*qimg_warning_fn)(const char *message, void *opaque);
void qimg_set_warning_handler(qimg_warning_fn fn, void *opaque);

/* ---- Generic values ---------------------------------------------------- */

/*
 * A small JSON-like tree used for structured results (the shapes of QEMU's
 * QAPI objects).  Dictionaries iterate in QEMU's QDict order, which is the
 * order qemu-img prints keys in, so a printer that walks the tree in order
 * reproduces qemu-img's output.
 */
enum qimg_value_type {
    QIMG_VALUE_BOOL,
    QIMG_VALUE_INT,  /* int64_t */
    QIMG_VALUE_UINT, /* uint64_t */
    QIMG_VALUE_STRING,
    QIMG_VALUE_LIST,
    QIMG_VALUE_DICT,
};

struct qimg_value;

struct qimg_value *qimg_value_new_bool(bool b);
struct qimg_value *qimg_value_new_int(int64_t i);
struct qimg_value *qimg_value_new_uint(uint64_t u);
struct qimg_value *qimg_value_new_string(const char *s);
struct qimg_value *qimg_value_new_list(void);
struct qimg_value *qimg_value_new_dict(void);
/* Take ownership of item; on failure item is freed and -1 returned. */
int qimg_value_list_append(struct qimg_value *list, struct qimg_value *item);
/* Take ownership of item; replaces an existing key. */
int qimg_value_dict_set(struct qimg_value *dict, const char *key,
                        struct qimg_value *item);
void qimg_value_free(struct qimg_value *v);
/* A deep copy, or NULL when out of memory. */
struct qimg_value *qimg_value_copy(const struct qimg_value *v);

enum qimg_value_type qimg_value_type(const struct qimg_value *v);
bool qimg_value_get_bool(const struct qimg_value *v);
int64_t qimg_value_get_int(const struct qimg_value *v);
uint64_t qimg_value_get_uint(const struct qimg_value *v);
const char *qimg_value_get_string(const struct qimg_value *v);
/* Lists and dictionaries: number of items, and item i (0-based). */
size_t qimg_value_count(const struct qimg_value *v);
const struct qimg_value *qimg_value_item(const struct qimg_value *v,
                                         size_t i);
const char *qimg_value_key(const struct qimg_value *dict, size_t i);
const struct qimg_value *qimg_value_dict_get(const struct qimg_value *dict,
                                             const char *key);
/*
 * Serialise as QEMU's pretty JSON (4-space indent, QDict key order, no
 * trailing newline).  Returns a malloc'd string.
 */
char *qimg_value_to_json(const struct qimg_value *v);

/* ---- Option lists ("-o key=value,...") -------------------------------- */

struct qimg_opts;

struct qimg_opts *qimg_opts_new(void);
void qimg_opts_free(struct qimg_opts *opts);
/*
 * Parse "k=v,k2=v2"; ",," is a literal comma.  Later values override
 * earlier ones.  A bare "k" means "k=on".
 */
int qimg_opts_parse(struct qimg_opts *opts, const char *text);
int qimg_opts_set(struct qimg_opts *opts, const char *key, const char *value);
/* NULL if unset. */
const char *qimg_opts_get(const struct qimg_opts *opts, const char *key);
int qimg_opts_unset(struct qimg_opts *opts, const char *key);
size_t qimg_opts_count(const struct qimg_opts *opts);
const char *qimg_opts_key(const struct qimg_opts *opts, size_t i);

/* Creation options a format accepts, for "-o help". */
enum qimg_opt_type {
    QIMG_OPT_STRING,
    QIMG_OPT_BOOL,
    QIMG_OPT_NUMBER,
    QIMG_OPT_SIZE,
};
struct qimg_opt_desc {
    const char *name;
    enum qimg_opt_type type;
    const char *help;
    const char *def; /* default printed in the "Formatting" line, or NULL */
};
/*
 * The creation options of a format (NULL-name terminated, in the format's
 * own order), including the file protocol options when with_protocol is
 * set.  NULL and an error if the format is unknown or cannot create.
 */
const struct qimg_opt_desc *qimg_create_options(const char *format,
                                                bool with_protocol);

/* ---- Formats ----------------------------------------------------------- */

/* Is this a format name qimg knows? */
bool qimg_format_known(const char *format);
/* Format names, NULL-terminated, in the order qemu-img lists them. */
const char *const *qimg_format_names(void);

/* ---- Images ------------------------------------------------------------ */

struct qimg_image;

/* Open flags. */
#define QIMG_OPEN_RDWR (1u << 0)
/* Open only this layer; unallocated ranges read as zero. */
#define QIMG_OPEN_NO_BACKING (1u << 1)
/* -U: take no image locks; implies read-only use. */
#define QIMG_OPEN_FORCE_SHARE (1u << 2)
/* Metadata only (info): no data file or other secondary files are opened. */
#define QIMG_OPEN_NO_IO (1u << 3)
/*
 * Refuse every reference an image makes to another file (backing file,
 * external data file, extents).  For untrusted images.
 */
#define QIMG_OPEN_NO_EXTERNAL (1u << 4)

/*
 * Flushes of this image do nothing, closing included (qemu-img's "unsafe"
 * cache mode, the default for convert targets).
 */
#define QIMG_OPEN_CACHE_UNSAFE (1u << 5)
/*
 * Read and write around the host page cache (O_DIRECT) where the file
 * system allows it (qemu-img's "none" and "directsync"); requests that are not
 * 4 KiB aligned, and file systems without O_DIRECT, use the page cache.
 */
#define QIMG_OPEN_CACHE_DIRECT (1u << 6)
/*
 * Open to be checked (qemu-img check, QEMU's BDRV_O_CHECK): metadata
 * damage that only a check reports (no refcount table, a bad snapshot
 * table pointer) does not fail the open.
 */
#define QIMG_OPEN_CHECK (1u << 7)

/*
 * Open an image.  format NULL means probe (as qemu-img does: the highest
 * scoring format wins, raw is the fallback; a probed raw image opened for
 * writing raises a warning and refuses writes to its first 512 bytes).
 */
struct qimg_image *qimg_open(const char *filename, const char *format,
                             unsigned flags);
/*
 * qimg_open with runtime options for the image's format (qemu-img's
 * --image-opts keys other than driver and file.*), e.g. "key-secret" for
 * luks or "encrypt.key-secret" for qcow2.  An option the format does not
 * take fails the open ("Block format 'raw' does not support the option
 * 'x'").  driver_opts is copied; NULL is qimg_open.
 */
struct qimg_image *qimg_open_opts(const char *filename, const char *format,
                                  unsigned flags,
                                  const struct qimg_opts *driver_opts);
/*
 * Secrets, as qemu-img's --object secret,id=ID,data=...: process-wide,
 * looked up by id when an open needs a key.  len bytes of data are
 * copied (a passphrase need not be a C string).  A duplicate id fails
 * with EEXIST.  qimg_secrets_clear() wipes and forgets them all.
 */
int qimg_secret_add(const char *id, const void *data, size_t len);
void qimg_secrets_clear(void);
/*
 * Flags added to every open this process makes from now on, the opens a
 * library call makes by itself included (convert's target, commit's
 * base reopened for writing, the backing file create and rebase check):
 * a policy for untrusted input that no call can forget.  Only
 * QIMG_OPEN_NO_EXTERNAL (or 0, to clear it) is accepted; anything else
 * fails with EINVAL.  Set it before opening anything: it is read, not
 * locked, by opens running in other threads.
 */
int qimg_set_open_policy(unsigned flags);
/*
 * Which internal snapshot qimg_open_snapshot() opens: the first in the
 * image's table whose id is id (unless NULL) and whose name is name
 * (unless NULL); or, with id_or_name (id and name then NULL), the first
 * whose id is id_or_name, else the first whose name is.
 */
struct qimg_snapshot_select {
    const char *id;
    const char *name;
    const char *id_or_name;
};

/*
 * Open an image read-only as it was when an internal snapshot was taken
 * (qemu-img convert -l).  The guest size stays the image's current size,
 * as in QEMU; the backing file is the image's current one.  Errors after
 * the open itself read "Failed to load snapshot: why" (for example "Can't
 * find snapshot").  QIMG_OPEN_RDWR is refused.
 */
struct qimg_image *qimg_open_snapshot(const char *filename,
                                      const char *format, unsigned flags,
                                      const struct qimg_snapshot_select *sel);
/* Flush and close.  -1 if the final flush failed; the handle is gone. */
int qimg_close(struct qimg_image *img);

/* Guess the format of a file; returns a static name, or NULL on error. */
const char *qimg_probe(const char *filename);

const char *qimg_get_format(const struct qimg_image *img);
const char *qimg_get_filename(const struct qimg_image *img);
int64_t qimg_get_size(struct qimg_image *img);
/* Cluster (allocation unit) size, or 0 if the format has none. */
uint64_t qimg_get_cluster_size(struct qimg_image *img);

int qimg_pread(struct qimg_image *img, void *buf, size_t len,
               uint64_t offset);
int qimg_pwrite(struct qimg_image *img, const void *buf, size_t len,
                uint64_t offset);
/* QIMG_ZERO_MAY_UNMAP: the range may be deallocated if it reads as zero. */
#define QIMG_ZERO_MAY_UNMAP (1u << 0)
int qimg_pwrite_zeroes(struct qimg_image *img, uint64_t offset,
                       uint64_t len, unsigned flags);
int qimg_discard(struct qimg_image *img, uint64_t offset, uint64_t len);
int qimg_flush(struct qimg_image *img);

/*
 * Threads.  A handle is used by one thread at a time, except where
 * qimg_concurrent_io(img) is true (raw and qcow2 images): then
 * qimg_pread, qimg_pwrite, qimg_pwrite_zeroes, qimg_discard and
 * qimg_flush may be called on img from any number of threads at once.
 * Each call then acts as if made alone at some moment between its start
 * and its return, but for the bytes of writes to overlapping ranges made
 * at the same time, which may mix; a flush makes every write that
 * returned before it started durable.  No other call on img (close,
 * resize, block status, info, snapshots, check, compressed writes...)
 * may overlap any call on it.  qcow2 runs writes that change no metadata
 * (into allocated clusters it owns, of an unencrypted image) side by
 * side and every other request one at a time; raw runs everything side
 * by side.
 */
bool qimg_concurrent_io(const struct qimg_image *img);

/*
 * Write one guest cluster compressed (qemu-img convert -c): offset is a
 * multiple of the cluster size and len is the cluster size, or what is
 * left of the image for its last cluster (written zero-padded).  Data
 * that does not shrink is stored uncompressed.  Formats without
 * compressed clusters fail with ENOTSUP.  A call with len 0 ends a run of
 * compressed writes (qemu-img convert -c does it last): the file is
 * padded to a whole number of 512-byte sectors, as QEMU pads it.
 */
int qimg_pwrite_compressed(struct qimg_image *img, const void *buf,
                           size_t len, uint64_t offset);

/*
 * qimg_pwrite_compressed in two steps, for callers that compress on
 * several threads and write on one.  qimg_compress_cluster compresses the
 * cluster at offset (the same offset and len rules) into out, which holds
 * cap bytes (the cluster size is always enough); it changes nothing and
 * only reads settings fixed at open, so it may run on any number of
 * threads at once, also while one other thread makes calls on img.  It
 * returns the compressed size, 0 when the data does not shrink enough to
 * be stored compressed (write it with qimg_pwrite instead), or -1
 * (ENOTSUP for formats that compress only inside qimg_pwrite_compressed,
 * or that have no compressed clusters).
 * qimg_pwrite_compressed_data stores a result of n > 0 bytes for the
 * cluster at offset of len guest bytes, as qimg_pwrite_compressed does.
 */
int64_t qimg_compress_cluster(struct qimg_image *img, const void *buf,
                              size_t len, uint64_t offset, void *out,
                              size_t cap);
int qimg_pwrite_compressed_data(struct qimg_image *img, const void *data,
                                size_t n, size_t len, uint64_t offset);

/*
 * qimg extension (qemu-img has no such choice): how later compressed
 * writes on this handle compress.  level 0 is the format's default (what
 * QEMU writes, byte for byte); qcow2 takes zlib levels 1..9 (always a
 * 4 KiB window, as QEMU writes) and zstd levels 1..22.  flags:
 * QIMG_COMPRESS_LIBDEFLATE encodes zlib clusters with libdeflate, levels
 * 1..12 (much faster; QEMU reads them, but matches reach up to 32 KiB
 * back, past the 4 KiB window QEMU's own encoder keeps to).  Nothing is
 * stored in the image.  Fails with ERANGE for a level out of range,
 * EINVAL for flags that do not fit the image's compression type, ENOTSUP
 * for a format without the choice or a build without libdeflate.
 */
#define QIMG_COMPRESS_LIBDEFLATE (1u << 0)
int qimg_set_compression(struct qimg_image *img, int level, unsigned flags);

/*
 * Change the guest size (qemu-img resize).  prealloc is NULL or "off",
 * "metadata", "falloc" or "full" and applies to the new area.  Shrinking
 * needs QIMG_RESIZE_SHRINK; data past the new end is lost.
 */
#define QIMG_RESIZE_SHRINK (1u << 0)
int qimg_resize(struct qimg_image *img, uint64_t size, const char *prealloc,
                unsigned flags);

/* Block status flags. */
#define QIMG_EXTENT_DATA (1u << 0)  /* reads from stored data */
#define QIMG_EXTENT_ZERO (1u << 1)  /* reads as zero */
#define QIMG_EXTENT_ALLOCATED (1u << 2) /* allocated in some layer */
#define QIMG_EXTENT_OFFSET_VALID (1u << 3) /* host_offset is meaningful */
#define QIMG_EXTENT_COMPRESSED (1u << 4)

struct qimg_extent {
    uint64_t offset;
    uint64_t length;
    unsigned flags;
    /* Chain depth that decided the range (0 = the image itself). */
    int depth;
    /* Byte offset in `filename` when QIMG_EXTENT_OFFSET_VALID. */
    uint64_t host_offset;
    /* File holding the data; valid until the image is closed. */
    const char *filename;
};

/*
 * Describe the longest run starting at offset (at most len bytes) whose
 * status is uniform across the whole backing chain.  Returns 0 and fills
 * ext, or -1.
 */
int qimg_block_status(struct qimg_image *img, uint64_t offset, uint64_t len,
                      struct qimg_extent *ext);

/* ---- Information (qemu-img info) -------------------------------------- */

struct qimg_snapshot_info {
    char *id;
    char *name;
    uint64_t vm_state_size;
    uint32_t date_sec;
    uint32_t date_nsec;
    uint64_t vm_clock_nsec;
    bool has_icount;
    uint64_t icount;
};

struct qimg_image_info {
    char *filename;
    char *format;
    uint64_t virtual_size;
    int64_t actual_size; /* bytes allocated on the host; -1 unknown */
    uint64_t cluster_size; /* 0 when the format has none */
    bool encrypted;
    bool dirty_flag;
    char *backing_filename;      /* as stored in the image, or NULL */
    char *full_backing_filename; /* resolved against the image's folder */
    char *backing_format;        /* or NULL */
    size_t nb_snapshots;
    struct qimg_snapshot_info *snapshots;
    /* {"type": FMT, "data": {...}} or NULL. */
    struct qimg_value *format_specific;
    /*
     * The format could not describe the disk as one (QEMU's get_info
     * failed: vmdk extents of different kinds): no cluster size and no
     * dirty-flag in the output.
     */
    bool no_disk_info;
};

/*
 * Internal snapshots (qemu-img snapshot) of an image opened with
 * QIMG_OPEN_RDWR; the list is qimg_get_info()'s snapshots.  Each returns
 * 0, or -1 with qimg_get_errno() and qimg_get_error() set:
 *  - qimg_snapshot_create: a snapshot of the current guest state named
 *    name (NUL-terminated, at most 65535 bytes; names need not be
 *    unique), dated now; the format picks the id (qcow2: the largest
 *    numeric id + 1).  ENOTSUP when the format or the image cannot hold
 *    internal snapshots (raw; qcow2 with an external data file).
 *  - qimg_snapshot_apply: the guest state (contents and virtual size)
 *    becomes the first snapshot sel selects; ENOENT ("Failed to load
 *    snapshot: No such file or directory") when none does, ENOTSUP
 *    ("Block driver does not support snapshots") for formats without.
 *  - qimg_snapshot_delete: the first snapshot sel selects is removed
 *    and the space only it used becomes free; ENOENT ("snapshot not
 *    found") when none does, for formats without snapshots too.
 * sel as for qimg_open_snapshot(); qemu-img applies by id_or_name and
 * deletes by name.  Every step leaves a consistent image on disk.
 */
int qimg_snapshot_create(struct qimg_image *img, const char *name);
int qimg_snapshot_apply(struct qimg_image *img,
                        const struct qimg_snapshot_select *sel);
int qimg_snapshot_delete(struct qimg_image *img,
                         const struct qimg_snapshot_select *sel);

/*
 * Persistent dirty bitmaps (qemu-img bitmap) of an image opened with
 * QIMG_OPEN_RDWR: one operation on the bitmap named name.
 *  - ADD: a new, empty bitmap recording guest writes (DISABLED in req
 *    flags: not recording); granularity a power of two from 512 to 2^31,
 *    0 for the format's default (qcow2: the cluster size within 4 KiB to
 *    64 KiB).  EEXIST when the name is taken.
 *  - REMOVE, CLEAR (all bits zero), ENABLE, DISABLE.
 *  - MERGE: every bit set in bitmap source_name of source (an image
 *    opened read-only or not; NULL: img itself) is set in name; the
 *    disks must be of one size, granularities may differ.
 * ENOENT ("Dirty bitmap 'NAME' not found") for a missing bitmap, ENOTSUP
 * for formats without persistent bitmaps (all but qcow2 v3).  0, or -1
 * with qimg_get_errno() and qimg_get_error() set.  The change is on disk
 * after the next flush (qimg_close); every flushed state is consistent.
 */
enum qimg_bitmap_op {
    QIMG_BITMAP_ADD,
    QIMG_BITMAP_REMOVE,
    QIMG_BITMAP_CLEAR,
    QIMG_BITMAP_ENABLE,
    QIMG_BITMAP_DISABLE,
    QIMG_BITMAP_MERGE,
};
#define QIMG_BITMAP_DISABLED (1u << 0)
struct qimg_bitmap_request {
    enum qimg_bitmap_op op;
    const char *name;
    uint64_t granularity;           /* ADD */
    unsigned flags;                 /* ADD: QIMG_BITMAP_DISABLED */
    struct qimg_image *source;      /* MERGE */
    const char *source_name;        /* MERGE */
};
int qimg_bitmap(struct qimg_image *img, const struct qimg_bitmap_request *req);

struct qimg_image_info *qimg_get_info(struct qimg_image *img);
void qimg_image_info_free(struct qimg_image_info *info);
/* The same information shaped as QEMU's ImageInfo object. */
struct qimg_value *qimg_image_info_to_value(
    const struct qimg_image_info *info);
/*
 * Information about every image of the chain starting at filename, each
 * opened by itself (as "qemu-img info --backing-chain" does).  A loop in
 * the chain is an error.  Returns the count, or -1; *out is malloc'd.
 */
int qimg_get_chain_info(const char *filename, const char *format,
                        unsigned flags, struct qimg_image_info ***out);

/* ---- Creation ---------------------------------------------------------- */

/*
 * The option summary qemu-img prints after "Formatting 'FILE', ", for
 * example "fmt=raw size=1048576".  malloc'd.
 */
char *qimg_create_summary(const char *format, const struct qimg_opts *opts);
/* Do not open the backing file while creating (qemu-img create -u). */
#define QIMG_CREATE_BACKING_UNSAFE (1u << 0)
/*
 * Validate creation options and complete them: unknown options and a
 * missing size are refused, the backing file is opened (unless
 * QIMG_CREATE_BACKING_UNSAFE) to check it and to inherit its size.  The
 * messages start with "FILENAME: ".  Call before qimg_create_summary and
 * qimg_create.
 */
int qimg_create_prepare(const char *filename, const char *format,
                        struct qimg_opts *opts, unsigned flags);
/*
 * Create an image from prepared options ("size" and format options).  On
 * failure nothing is left behind at filename unless it existed before.
 * Messages start with "FILENAME: ".
 */
int qimg_create(const char *filename, const char *format,
                const struct qimg_opts *opts);

/* ---- Conversion (qemu-img convert) ----------------------------------- */

/* Progress in percent (0 to 100) of the bytes walked so far. */
typedef void (*qimg_progress_fn)(double percent, void *opaque);

struct qimg_convert_params {
    /* The sources, concatenated in this order (each padded to 512 bytes). */
    const char *const *sources;
    size_t nb_sources;
    const char *source_format; /* NULL: probe each source */
    /*
     * --image-opts: per source (nb_sources entries), its format (NULL
     * entry: probe) replacing source_format, and its runtime options
     * for qimg_open_opts (NULL entry: none).  Either array may be NULL.
     */
    const char *const *source_formats;
    const struct qimg_opts *const *source_driver_opts;
    unsigned source_flags;     /* extra QIMG_OPEN_* flags for the sources */
    /*
     * Read the first source at this internal snapshot, or NULL (as
     * qemu-img's -l snapshot.id/name does; the others are read as they
     * are now).
     */
    const struct qimg_snapshot_select *source_snapshot;
    /* Extra QIMG_OPEN_* flags for the target (QIMG_OPEN_CACHE_UNSAFE). */
    unsigned target_flags;
    const char *target;
    const char *target_format; /* NULL means raw */
    /* Creation options for the target (its size is set here), or NULL. */
    const struct qimg_opts *target_opts;
    /* --target-image-opts: the target's runtime options, or NULL. */
    const struct qimg_opts *target_driver_opts;
    /* With no_create and no target_format: probe the target's format. */
    bool target_probe;
    /*
     * Zero runs of at least this many bytes (a multiple of 512, at most
     * 16 MiB) are not written as data; 0 writes everything (fully
     * allocated target).  qemu-img's default is 4096.
     */
    uint64_t sparse_size;
    /* -n: the target exists; it is opened as target_format (raw). */
    bool no_create;
    bool target_is_zero; /* -n only: the target already reads as zero */
    qimg_progress_fn progress; /* or NULL */
    void *progress_opaque;
    /*
     * -B/-F: the new target's backing file (as stored in it, relative to
     * the target's folder) and its format, required with a backing file;
     * they win over target_opts' backing_file and backing_fmt.  Only the
     * first source's top layer is copied: ranges it leaves to its own
     * backing file stay unallocated (the caller asserts the new backing
     * file holds the same there).  Of its data, target clusters that the
     * new backing file already holds stay unallocated too (not with
     * sparse_size 0); its zero ranges are written as zeroes.  With
     * no_create, backing_file only says that the target has a backing
     * file.  One source only.
     */
    const char *backing_file;
    const char *backing_format;
    /*
     * -c: write whole target clusters compressed (the format must have
     * compressed clusters; not with encryption or preallocation).
     */
    bool compress;
    /*
     * --bitmaps: the source's persistent bitmaps are copied to the target
     * after the data (one source; a target format that stores them,
     * qcow2 v3), each with its granularity, enabled or not, and its bits.
     * A bitmap in use (inconsistent) fails the conversion before the
     * target is made, unless skip_broken_bitmaps: then it is skipped with
     * a warning.
     */
    bool bitmaps;
    bool skip_broken_bitmaps;
    /* -m: copy threads (1 to 16, at most 4 are used); 0: by CPU count. */
    unsigned parallel;
    /*
     * -W: write each chunk as soon as it is read instead of in guest
     * order (same contents; a qcow2 target's clusters may be laid out
     * in another order).
     */
    bool out_of_order;
    /*
     * qimg extension (--compression-level, --compressor): with compress,
     * the level and QIMG_COMPRESS_* flags given to qimg_set_compression
     * on the target; 0 and 0 write what qemu-img writes.
     */
    int compression_level;
    unsigned compression_flags;
};

/*
 * Copy the guest contents of the sources into the target, as qemu-img
 * convert does (its checks and messages, in its order).  A target this
 * call created is removed again if the conversion fails.
 */
int qimg_convert(const struct qimg_convert_params *params);

/* ---- Allocation map (qemu-img map) ----------------------------------- */

/* One entry of qemu-img map's output. */
struct qimg_map_entry {
    uint64_t start;
    uint64_t length;
    /* The layer that decided (0 = the image itself, 1 = its backing..) */
    int depth;
    /* Allocated by some layer; false where only zeros lie below. */
    bool present;
    bool zero; /* reads as zero */
    bool data; /* the bytes come from stored data */
    /* offset is meaningful: the bytes are at offset in filename. */
    bool has_offset;
    uint64_t offset;
    /* With has_offset, the file holding the bytes (valid until close). */
    const char *filename;
};

/*
 * The map entry that starts at start, ending at most at end (clamped to
 * the image size): qemu-img map's status of the chain, each layer asked
 * from the top down until one has data or zeros (an unallocated range
 * with nothing below it is zero at the bottom layer; a range past the
 * end of a short backing file is zero at the layer above it), with
 * adjacent runs merged as qemu-img 7.2 merges them: the same data, zero,
 * depth, present, has_offset and filename, and contiguous offsets.
 * Block status is asked in windows of at most 1 GiB, never for the whole
 * disk at once; a long run simply takes several of them.
 *
 * Returns 1 with *e filled, 0 when start >= end (no entry), or -1.  The
 * next entry starts at e->start + e->length.
 */
int qimg_map_next(struct qimg_image *img, uint64_t start, uint64_t end,
                  struct qimg_map_entry *e);

/* ---- Comparison (qemu-img compare) ----------------------------------- */

enum qimg_compare_result {
    QIMG_COMPARE_IDENTICAL,
    /* The first differing 512-byte sector starts at offset. */
    QIMG_COMPARE_CONTENT_MISMATCH,
    /* Strict mode: the sizes differ. */
    QIMG_COMPARE_SIZE_MISMATCH,
    /* Strict mode: the block status differs at offset. */
    QIMG_COMPARE_STATUS_MISMATCH,
};

/* Why a comparison could not finish: qemu-img compare's exit codes. */
#define QIMG_COMPARE_FAIL_OPEN 2
#define QIMG_COMPARE_FAIL_STATUS 3
#define QIMG_COMPARE_FAIL_READ 4

struct qimg_compare_params {
    const char *filename1;
    const char *format1; /* NULL: probe */
    const char *filename2;
    const char *format2;
    /* --image-opts: runtime options for qimg_open_opts, or NULL. */
    const struct qimg_opts *driver_opts1;
    const struct qimg_opts *driver_opts2;
    unsigned flags; /* extra QIMG_OPEN_* flags for both (FORCE_SHARE) */
    /* -s: sizes and block status (allocation) must match as well. */
    bool strict;
    /*
     * Progress as qemu-img reports it, or NULL: called once with step 0
     * when the walk starts, then with the bytes of each step; total is
     * the larger image size.
     */
    void (*progress)(uint64_t step, uint64_t total, void *opaque);
    /*
     * Non-strict mode, sizes differ: called before the tail of the
     * larger image is checked for zeros (qemu-img's warning), or NULL.
     */
    void (*size_mismatch)(void *opaque);
    void *opaque;
};

struct qimg_compare_outcome {
    enum qimg_compare_result result;
    uint64_t offset; /* for the mismatches that name one */
    /* On failure: QIMG_COMPARE_FAIL_*; the message names the file. */
    int failure;
    /* QIMG_COMPARE_FAIL_OPEN: which image (1 or 2) failed to open. */
    int image;
};

/*
 * Compare the guest contents of two images as qemu-img compare does:
 * ranges both read as zero are skipped by block status, ranges allocated
 * in one image only must read as zero in the other's place, the rest is
 * read in chunks of at most 2 MiB and compared by sector.  Without
 * strict, a larger image must read as zero past the end of the smaller.
 * Returns 0 when the comparison finished (*out says how), -1 on failure
 * (out->failure says which kind).
 */
int qimg_compare(const struct qimg_compare_params *p,
                 struct qimg_compare_outcome *out);
/* ---- Consistency check (qemu-img check) ----------------------------- */

/*
 * The counts of one check, as QEMU's BdrvCheckResult and ImageCheck hold
 * them.  corruptions: problems that may lose data (a refcount below the
 * number of references, bad table offsets, wrong COPIED flags...); leaks:
 * clusters whose refcount is above their references (wasted space only);
 * check_errors: places the check could not examine (I/O errors).
 * image_end_offset is (highest cluster in use or referenced + 1) *
 * cluster size.  The cluster counts describe the active guest mapping:
 * total = virtual size in clusters (rounded up), allocated = clusters
 * with a host cluster or compressed data, fragmented = allocated clusters
 * not stored right after the previous one of the same L2 table (every
 * compressed cluster counts), compressed = compressed clusters.
 */
struct qimg_check_result {
    int64_t corruptions;
    int64_t leaks;
    int64_t check_errors;
    int64_t corruptions_fixed;
    int64_t leaks_fixed;
    int64_t image_end_offset;
    int64_t total_clusters;
    int64_t allocated_clusters;
    int64_t fragmented_clusters;
    int64_t compressed_clusters;
};

/*
 * Receives each problem found, one line per call, without a trailing
 * newline, worded as qemu-img prints it on stderr (for example "ERROR
 * cluster 5 refcount=0 reference=1" or "Leaked cluster 6 refcount=1
 * reference=0"), in the order found.  kind says how qemu-img prints the
 * line: QIMG_CHECK_LINE_PLAIN as it is, QIMG_CHECK_LINE_ERROR as an error
 * message (after its program name and ": ").  The library prints nothing
 * itself.
 */
#define QIMG_CHECK_LINE_PLAIN 0u
#define QIMG_CHECK_LINE_ERROR 1u
typedef void (*qimg_check_message_fn)(const char *line, unsigned kind,
                                      void *opaque);

/* Repair flags for qimg_check() (qemu-img check -r leaks / -r all). */
#define QIMG_CHECK_FIX_LEAKS (1u << 0)
#define QIMG_CHECK_FIX_ERRORS (1u << 1)

/* Does the image's format implement qimg_check()?  (qcow2 does, raw not.) */
bool qimg_check_supported(const struct qimg_image *img);

/*
 * Check the metadata of the image's top layer (not its backing files).
 * Without flags nothing is written to the image.  Open it with
 * QIMG_OPEN_CHECK to check images whose damage would fail a normal open.
 * With QIMG_CHECK_FIX_* flags (the image opened with QIMG_OPEN_RDWR,
 * else EROFS) one run repairs what it may, as qemu-img check -r does;
 * out then counts what was repaired (*_fixed) apart from what was left.
 * qemu-img follows a run that fixed anything with a run without flags
 * ("Double checking the fixed image now...") and reports that run's
 * counts with the first run's *_fixed.  fn may be NULL.
 *
 * Returns 0 when the check ran to the end, whatever it found: *out holds
 * the counts.  Returns -1 when it could not complete (the format has no
 * check: ENOTSUP with "This image format does not support checks"; an
 * I/O error or the image being too large to check: that errno); *out
 * then holds the counts so far, check_errors included, and qemu-img
 * would print "Check failed: " and strerror(errno).
 */
int qimg_check(struct qimg_image *img, unsigned flags,
               qimg_check_message_fn fn, void *opaque,
               struct qimg_check_result *out);

/*
 * The result as QEMU's ImageCheck object: filename and format (both
 * strings, as given), check-errors always, every other count only when
 * it is non-zero.  NULL when out of memory.
 */
struct qimg_value *qimg_check_result_to_value(
    const struct qimg_check_result *res, const char *filename,
    const char *format);

/* ---- Size measurement (qemu-img measure) ----------------------------- */

struct qimg_measure_params {
    /* The target format: "raw" (NULL) or "qcow2". */
    const char *target_format;
    /* The target's creation options (-o), or NULL. */
    const struct qimg_opts *target_opts;
    /*
     * The source image, or NULL to measure an empty image of size bytes
     * (at most INT64_MAX).  The source is opened read-only with
     * source_flags, at source_snapshot when that is not NULL.
     */
    const char *source;
    const char *source_format; /* NULL: probe */
    /* --image-opts: the source's runtime options, or NULL. */
    const struct qimg_opts *source_driver_opts;
    unsigned source_flags;
    const struct qimg_snapshot_select *source_snapshot;
    uint64_t size;
};

struct qimg_measure_result {
    /* Bytes the target needs for the source's data and all metadata. */
    uint64_t required;
    /* Bytes the target needs with every cluster allocated. */
    uint64_t fully_allocated;
    /* bitmaps is meaningful: a qcow2 v3 source and a qcow2 v3 target. */
    bool has_bitmaps;
    /* Bytes the source's persistent bitmaps take in the target. */
    uint64_t bitmaps;
};

/*
 * The size a new image needs, as qemu-img measure reports it.  For raw,
 * the virtual size rounded up to 512 bytes.  For qcow2 (options
 * cluster_size, refcount_bits, extended_l2, compat, preallocation),
 * fully_allocated is the size rounded up to a cluster plus the metadata
 * of the whole disk (header, L1, L2 tables, refcount blocks and table);
 * required is that metadata plus the data clusters: every cluster with
 * data somewhere in the source's chain (block status; zero clusters do
 * not count), none for a plain size, all with preallocation=falloc or
 * full.  Other formats fail ("Block driver 'F' does not support size
 * measurement"), as do unknown or ill-typed options: the message then
 * ends with a line "Invalid options for file format 'F'" that qemu-img
 * prints as an error of its own.  The source is opened before the
 * target format is looked at, as in qemu-img.  Returns 0 or -1.
 */
int qimg_measure(const struct qimg_measure_params *p,
                 struct qimg_measure_result *out);
/* {"bitmaps" (when has_bitmaps), "required", "fully-allocated"}, or NULL. */
struct qimg_value *qimg_measure_result_to_value(
    const struct qimg_measure_result *r);

/* ---- Block copy (qemu-img dd) ---------------------------------------- */

/* The largest bs= qemu-img dd accepts (INT_MAX). */
#define QIMG_DD_MAX_BLOCK_SIZE 2147483647u

struct qimg_dd_params {
    const char *input;
    const char *input_format;  /* NULL: probe */
    unsigned input_flags;      /* extra QIMG_OPEN_* flags (FORCE_SHARE) */
    /* --image-opts: the input's runtime options, or NULL. */
    const struct qimg_opts *input_driver_opts;
    const char *output;        /* created, replacing any existing file */
    const char *output_format; /* NULL means raw */
    /* bs=: 1 to QIMG_DD_MAX_BLOCK_SIZE bytes (qemu-img's default: 512). */
    uint64_t block_size;
    bool has_count;
    uint64_t count; /* count=: blocks, at most INT64_MAX */
    uint64_t skip;  /* skip=: blocks, at most INT64_MAX */
};

struct qimg_dd_result {
    /* The virtual size the output was created with. */
    uint64_t output_size;
    /*
     * skip lies past the end of the (count-capped) input: the output was
     * created empty and nothing was copied.  qemu-img prints "INPUT:
     * cannot skip to specified offset" and still succeeds.
     */
    bool skip_past_end;
    uint64_t bytes_copied; /* also after a failure part way */
};

/*
 * qemu-img 7.2's dd.  The input is opened (read-only, with input_flags),
 * the output format checked ("Unknown file format"), then the output is
 * created with size S - skip * bs, where S is the input size rounded up
 * to 512 bytes and capped at count * bs (when count is set and the
 * product fits in int64): note that skip is subtracted after the cap, as
 * in qemu-img 7.2, so count=C skip=K copies C - K blocks.  A skip past S
 * gives an empty output (skip_past_end).  Then input bytes [skip * bs,
 * S) are written to the output from offset 0, zeros included, so the
 * output is fully allocated (as qemu-img's).  The output is left in
 * place when the copy fails.  Messages are qemu-img's ("Could not open
 * ...", "OUTPUT: error while creating output image: why", "error while
 * reading from input image file: why", "error while writing to output
 * image file: why").  Returns 0 or -1; *out (may be NULL) is filled
 * either way.
 */
int qimg_dd(const struct qimg_dd_params *p, struct qimg_dd_result *out);

/* ---- Amending format options (qemu-img amend) ------------------------ */

/*
 * The options qemu-img amend takes for a format (NULL-name terminated, in
 * the order the format applies them), or NULL with the error: "Unknown
 * file format 'F'" or "Format driver 'F' does not support option
 * amendment".
 */
const struct qimg_opt_desc *qimg_amend_options(const char *format);

/* --force: allow amendments QEMU calls unsafe (LUKS key slots). */
#define QIMG_AMEND_FORCE (1u << 0)
/*
 * Change format options of an image opened with QIMG_OPEN_RDWR in place,
 * as qemu-img amend does (qcow2: compat, refcount_bits, lazy_refcounts,
 * size, data_file, data_file_raw; backing_file/backing_fmt only when they
 * equal the image's).  Options are checked first with QEMU's words
 * ("Invalid parameter 'K'", with a second line "This option is only
 * supported for image creation" for creation-only options); the changes
 * are then made in QEMU's order (upgrade, refcount width, header, lazy
 * refcounts, size, downgrade), so a failure leaves the steps before it
 * done, as in QEMU.  progress (may be NULL) gets percentages of the long
 * steps.  Returns 0 or -1.
 */
int qimg_amend(struct qimg_image *img, const struct qimg_opts *opts,
               qimg_progress_fn progress, void *opaque, unsigned flags);

/* ---- Committing and rebasing (qemu-img commit, rebase) -------------- */

struct qimg_commit_params {
    const char *filename;
    const char *format; /* NULL: probe */
    /* --image-opts: the image's runtime options, or NULL. */
    const struct qimg_opts *driver_opts;
    /* Extra QIMG_OPEN_* flags (QIMG_OPEN_CACHE_UNSAFE/_DIRECT, -t). */
    unsigned flags;
    /*
     * -b: the image of the backing chain to commit into, matched as
     * qemu-img matches it (resolved against each layer's folder and
     * compared as canonical paths); NULL: the immediate backing file.
     */
    const char *base;
    /*
     * -d: leave the image as it is.  qemu-img sets it with -b, since
     * the layers between the image and a deeper base no longer read as
     * they did.
     */
    bool drop;
    qimg_progress_fn progress; /* or NULL */
    void *opaque;
};

/*
 * qemu-img 7.2's commit.  The image is opened read-write ("Could not
 * open ..."), the base found ("Did not find 'BASE' in the backing chain
 * of 'FILENAME'", "Image does not have a backing file") and reopened
 * read-write.  A base shorter than the image grows to its size.  Every
 * range that some layer above the base allocates (whole chunks of the
 * base's cluster size, at least 4 KiB, or 64 KiB for raw) is written
 * into the base as the chain reads it: zero runs as zero writes (that
 * may unmap), the rest as data.  Unless drop, the image is then emptied
 * (qcow2: every cluster unallocated, reading through to the base; the
 * backing file name stays).  Backing file names are never changed.
 * Returns 0 or -1.
 */
int qimg_commit(const struct qimg_commit_params *p);

struct qimg_rebase_params {
    const char *filename;
    const char *format; /* NULL: probe */
    /* --image-opts: the image's runtime options, or NULL. */
    const struct qimg_opts *driver_opts;
    /* Extra QIMG_OPEN_* flags for the image (cache mode, -t). */
    unsigned flags;
    /*
     * Extra QIMG_OPEN_* flags for the new backing file
     * (QIMG_OPEN_FORCE_SHARE for -U, QIMG_OPEN_CACHE_DIRECT for -T).
     */
    unsigned backing_flags;
    /*
     * -b: the new backing file name, stored as given and resolved
     * against the image's folder; "" (or NULL) removes the backing file.
     */
    const char *backing_file;
    /* -F: its format (qemu-img 7.2 requires one for a backing file). */
    const char *backing_format;
    /* -u: change the header only; the old backing file is not opened. */
    bool unsafe;
    qimg_progress_fn progress; /* or NULL */
    void *opaque;
};

/*
 * qemu-img 7.2's rebase.  The image is opened read-write (without its
 * backing chain when unsafe), backing_format checked ("Invalid format
 * name: 'F'").  Safe mode opens the new backing file ("Could not open
 * new backing file 'B': why") and, for every range the image does not
 * allocate, writes into the image the 512-byte sectors where the old and
 * new backing files read differently (zero writes past the end of the
 * old one), so the image reads as before.  Then the header names the new
 * file and format ("Could not change the backing file to 'B': why", with
 * "backing format must be specified" without a format, "No space left in
 * the file header" when the name does not fit the header cluster,
 * "Operation not supported" for formats without backing files).  The
 * copied data stays when only that last step fails, as in qemu-img.
 * Returns 0 or -1.
 */
int qimg_rebase(const struct qimg_rebase_params *p);

/* ---- I/O benchmark (qemu-img bench) ---------------------------------- */

struct qimg_bench_params {
    const char *filename;
    const char *format; /* NULL: probe */
    /*
     * Extra QIMG_OPEN_* flags: QIMG_OPEN_FORCE_SHARE (-U, reads only),
     * QIMG_OPEN_CACHE_DIRECT / QIMG_OPEN_CACHE_UNSAFE (-t).  The image is
     * opened with QIMG_OPEN_RDWR for a write test.
     */
    unsigned flags;
    /* -t writethrough/directsync: each write is followed by a flush. */
    bool write_through;
    /* -n / -i native: refused, as qemu-img does, without CACHE_DIRECT. */
    bool native_aio;
    bool write;            /* -w: write requests instead of reads */
    uint64_t count;        /* -c: requests, at most INT_MAX */
    uint64_t depth;        /* -d: requests in flight, 1 to INT_MAX */
    uint64_t offset;       /* -o: offset of the first request */
    uint64_t buffer_size;  /* -s: bytes per request, at most INT_MAX */
    uint64_t step;         /* -S: offset step, 0 = buffer_size */
    uint8_t pattern;       /* --pattern: the byte written */
    /* --flush-interval (writes only, at least depth): 0 = none. */
    uint64_t flush_interval;
    /* --no-drain: flush next to the requests in flight. */
    bool no_drain;
    /*
     * Called once, after the image is open and before the first request
     * (qemu-img prints its "Sending ..." lines there), with the
     * parameters as used (step resolved).  May be NULL.
     */
    void (*start)(const struct qimg_bench_params *used, void *opaque);
    void *opaque;
};

struct qimg_bench_result {
    double seconds;    /* from the first request to the last completion */
    uint64_t requests; /* completed */
    uint64_t flushes;
};

/*
 * qemu-img 7.2's bench: count requests of buffer_size bytes, the first at
 * offset and each next one step bytes further, modulo the image size
 * (so offsets wrap to offset + k * step - size, not to offset), with
 * depth of them in flight; write tests write buffers of pattern bytes.
 * A request that does not fit in the image fails the run with "Failed
 * request: Input/output error", as in qemu-img.  With flush_interval, a
 * flush is made whenever the number of requests not yet issued is a
 * multiple of it (qemu-img's rule), after the requests in flight have
 * completed unless no_drain.  Parameter errors use qemu-img's words
 * ("--flush-interval is only available in write tests", "Flush interval
 * can't be smaller than depth", "Invalid queue depth specified" for
 * depth 0, which qemu-img 7.2 accepts and then waits for ever on).  On an
 * empty image, offsets stay where they are (qemu-img 7.2 dies dividing
 * by zero).  The image is closed (and so flushed) after the timing ends.
 * Returns 0 or -1; *out (may be NULL) holds what was done either way.
 */
int qimg_bench(const struct qimg_bench_params *p,
               struct qimg_bench_result *out);

/* ---- Sizes ------------------------------------------------------------- */

/*
 * Parse a size with an optional suffix (b, k/K, M, G, T, P, E; binary
 * multiples; fractions like "1.5G" allowed).  default_suffix applies to a
 * bare number ('B' for bytes).  Returns 0 or -1 with errno EINVAL/ERANGE.
 */
int qimg_parse_size(const char *text, char default_suffix, uint64_t *out);
/* Human size as qemu prints it ("1.34 MiB", "0 B") into buf. */
void qimg_format_size(uint64_t bytes, char *buf, size_t buflen);

#ifdef __cplusplus
}
#endif

#endif /* QIMG_QIMG_H */
