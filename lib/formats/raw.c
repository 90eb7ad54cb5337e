/*
 * raw: the image is the file.  Sparse-aware: holes in the host file are
 * reported as zero ranges, and zero writes punch holes when allowed.
 */
#include <errno.h>
#include <pthread.h>
#include <string.h>

#include "core/error.h"
#include "driver.h"

/* The first sector of a probed raw image may not change (see image.c). */
#define RAW_PROTECTED_BYTES 512

static int raw_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)buf;
    (void)len;
    (void)filename;
    /* The fallback: anything is a raw image, with the lowest confidence. */
    return 1;
}

static int raw_open(struct qimg_node *node, unsigned flags)
{
    (void)flags;
    int64_t size = io_get_size(node->file);
    if (size < 0) {
        return (int)size;
    }
    /*
     * Disks are made of 512-byte sectors: a file whose length is not a
     * multiple shows a whole last sector, its tail read as zeros (as
     * QEMU's block layer does).
     */
    if ((uint64_t)size > UINT64_MAX - 511) {
        return error_set(EFBIG, "Image too large");
    }
    node->size = ((uint64_t)size + 511) & ~(uint64_t)511;
    return 0;
}

static void raw_close(struct qimg_node *node)
{
    (void)node;
}

static int raw_pread(struct qimg_node *node, void *buf, size_t len,
                     uint64_t off)
{
    return io_pread(node->file, buf, len, off);
}

/*
 * A guest that writes a qcow2 header into sector 0 of a raw disk whose
 * format was guessed would turn it into a qcow2 image on the next probe,
 * naming any host file as its backing file.  Refuse writes that would make
 * the first sector probe as another format.
 */
static int raw_check_block0(struct qimg_node *node, const void *buf,
                            size_t len, uint64_t off)
{
    if (!node->protect_block0 || off >= RAW_PROTECTED_BYTES) {
        return 0;
    }
    uint8_t sector[RAW_PROTECTED_BYTES];
    int ret = io_pread(node->file, sector, sizeof(sector), 0);
    if (ret < 0) {
        return ret;
    }
    size_t n = RAW_PROTECTED_BYTES - off;
    if (n > len) {
        n = len;
    }
    if (buf) {
        memcpy(sector + off, buf, n);
    } else {
        memset(sector + off, 0, n);
    }
    if (format_probe_buffer(sector, sizeof(sector), node->filename) !=
        &format_raw) {
        return error_set(EPERM, "%s: refusing a write that would change "
                         "the guessed raw format of the image; specify "
                         "-f raw", node->filename);
    }
    return 0;
}

/*
 * Writes that reach the protected bytes go one at a time (concurrent_io):
 * two checked side by side could each pass and together write a header.
 * Rare (the first sector of probed images), so one lock for all nodes.
 */
static pthread_mutex_t block0_lock = PTHREAD_MUTEX_INITIALIZER;

static bool raw_block0_locked(struct qimg_node *node, uint64_t off)
{
    if (!node->protect_block0 || off >= RAW_PROTECTED_BYTES) {
        return false;
    }
    pthread_mutex_lock(&block0_lock);
    return true;
}

static int raw_block0_unlock(bool locked, int ret)
{
    if (locked) {
        pthread_mutex_unlock(&block0_lock);
    }
    return ret;
}

static int raw_pwrite(struct qimg_node *node, const void *buf, size_t len,
                      uint64_t off)
{
    bool locked = raw_block0_locked(node, off);
    int ret = raw_check_block0(node, buf, len, off);
    if (ret == 0) {
        ret = io_pwrite(node->file, buf, len, off);
    }
    return raw_block0_unlock(locked, ret);
}

static int raw_pwrite_zeroes(struct qimg_node *node, uint64_t off,
                             uint64_t len, unsigned flags)
{
    bool locked = raw_block0_locked(node, off);
    int ret = raw_check_block0(node, NULL, len, off);
    if (ret == 0) {
        ret = io_pwrite_zeroes(node->file, off, len,
                               (flags & QIMG_ZERO_MAY_UNMAP) != 0);
    }
    return raw_block0_unlock(locked, ret);
}

static int raw_pdiscard(struct qimg_node *node, uint64_t off, uint64_t len)
{
    return io_discard(node->file, off, len);
}

static int raw_flush(struct qimg_node *node)
{
    return node_sync(node, node->file);
}

/* Zeros written per request by preallocation=full (as QEMU's file driver). */
#define RAW_FULL_CHUNK 65536

/*
 * QEMU's file driver writes the first sector of a file grown from empty,
 * so that the file system has a block to probe alignment with; the map of
 * the file shows it as data, so qimg does the same.  Failures are ignored
 * (it is an optimisation there).
 */
static void raw_allocate_first_block(struct qimg_io *file)
{
    static const uint8_t zeros[RAW_PROTECTED_BYTES];
    (void)io_pwrite(file, zeros, sizeof(zeros), 0);
}

/* Write zeros over [from, to) of the file: preallocation=full. */
static int raw_write_zeros(struct qimg_io *file, uint64_t from, uint64_t to)
{
    static const uint8_t zeros[RAW_FULL_CHUNK];
    while (from < to) {
        size_t n = to - from < RAW_FULL_CHUNK ? (size_t)(to - from)
                                               : RAW_FULL_CHUNK;
        int ret = io_pwrite(file, zeros, n, from);
        if (ret < 0) {
            return error_set_errno(-ret, "Could not write zeros for "
                                   "preallocation");
        }
        from += n;
    }
    return 0;
}

/*
 * A device keeps its size: only a resize to the size it has succeeds, and
 * no preallocation applies (QEMU's file driver, whose words these are).
 */
static int raw_truncate_device(struct qimg_node *node, uint64_t size,
                               const char *prealloc)
{
    if (strcmp(prealloc, "off") != 0) {
        return error_set(ENOTSUP, "Preallocation mode '%s' unsupported for "
                         "this non-regular file", prealloc);
    }
    int64_t cur = io_get_size(node->file);
    if (cur < 0) {
        return (int)cur;
    }
    if ((uint64_t)cur != size) {
        return error_set(ENOTSUP, "Cannot resize device files");
    }
    return 0;
}

/*
 * Resize the file to exactly size bytes; the new area is a hole (off),
 * reserved (falloc) or written with zeros (full).  A failed preallocation
 * restores the old length so that nothing half-done stays behind.
 */
static int raw_truncate(struct qimg_node *node, uint64_t size,
                        const char *prealloc)
{
    /* node->size is size rounded up to whole sectors. */
    if (size > INT64_MAX - 511) {
        return error_set(EFBIG, "Image size too large");
    }
    struct qimg_io *file = node->file;
    int ret;
    if (file->fixed_size) {
        ret = raw_truncate_device(node, size, prealloc);
        if (ret == 0) {
            node->size = (size + 511) & ~(uint64_t)511;
        }
        return ret;
    }
    int64_t scur = io_get_size(file);
    if (scur < 0) {
        return (int)scur;
    }
    uint64_t cur = (uint64_t)scur;
    bool off = strcmp(prealloc, "off") == 0;
    bool falloc = strcmp(prealloc, "falloc") == 0;
    bool full = strcmp(prealloc, "full") == 0;
    if (!off && cur > size) {
        return error_set(ENOTSUP, "Cannot use preallocation for shrinking "
                         "files");
    }
    if (!off && !falloc && !full) {
        return error_set(ENOTSUP, "Unsupported preallocation mode: %s",
                         prealloc);
    }

    if (falloc) {
        /* posix_fallocate extends the file itself. */
        ret = 0;
        if (size != cur) {
            ret = io_allocate(file, cur, size - cur);
            if (ret < 0) {
                ret = error_set_errno(-ret, "Could not preallocate new data");
            } else if (cur == 0) {
                raw_allocate_first_block(file);
            }
        }
    } else {
        ret = io_truncate(file, size);
        if (ret < 0) {
            return error_set_errno(-ret, "Could not resize file");
        }
        if (full) {
            ret = raw_write_zeros(file, cur, size);
            /* QEMU's full preallocation syncs whatever the cache mode. */
            if (ret == 0) {
                ret = io_flush(file);
                if (ret < 0) {
                    ret = error_set_errno(-ret, "Could not flush file to "
                                          "disk");
                }
            }
        } else if (cur == 0 && size > 0) {
            raw_allocate_first_block(file);
        }
    }
    if (ret < 0) {
        /* Best effort: the first error is the one reported. */
        (void)io_truncate(file, cur);
        return ret;
    }
    scur = io_get_size(file);
    if (scur < 0) {
        return (int)scur;
    }
    if ((uint64_t)scur > INT64_MAX - 511) {
        return error_set(EFBIG, "Image too large");
    }
    node->size = ((uint64_t)scur + 511) & ~(uint64_t)511;
    return 0;
}

static int raw_block_status(struct qimg_node *node, uint64_t off,
                            uint64_t len, uint64_t *pnum, uint64_t *host_off)
{
    int ret = node->file->ops->block_status(node->file, off, len, pnum);
    if (ret < 0) {
        return ret;
    }
    *host_off = off;
    /* Every byte of a raw image belongs to it: always allocated here. */
    int flags = BS_ALLOCATED | BS_OFFSET_VALID;
    flags |= (ret & IO_STATUS_ZERO) ? BS_ZERO : BS_DATA;
    return flags;
}

static int64_t raw_get_allocated(struct qimg_node *node)
{
    return node->file->ops->get_allocated(node->file);
}

static const struct qimg_opt_desc raw_create_opts[] = {
    {"size", QIMG_OPT_SIZE, "Virtual disk size", NULL},
    {NULL, 0, NULL, NULL},
};

static int raw_create(const char *filename, const struct qimg_opts *opts)
{
    /* The file protocol does all the work: size and preallocation. */
    return create_file(filename, opts, NULL);
}

const struct qimg_format_ops format_raw = {
    .name = "raw",
    /* Every request is a call on the descriptor; nothing is kept. */
    .concurrent_io = true,
    .probe = raw_probe,
    .open = raw_open,
    .close = raw_close,
    .pread = raw_pread,
    .pwrite = raw_pwrite,
    .pwrite_zeroes = raw_pwrite_zeroes,
    .pdiscard = raw_pdiscard,
    .flush = raw_flush,
    .truncate = raw_truncate,
    .block_status = raw_block_status,
    .get_allocated = raw_get_allocated,
    .create_opts = raw_create_opts,
    .create = raw_create,
};
