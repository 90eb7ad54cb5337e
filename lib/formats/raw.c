/*
 * raw: the image is the file.  Sparse-aware: holes in the host file are
 * reported as zero ranges, and zero writes punch holes when allowed.
 */
#include <errno.h>
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

static int raw_pwrite(struct qimg_node *node, const void *buf, size_t len,
                      uint64_t off)
{
    int ret = raw_check_block0(node, buf, len, off);
    if (ret < 0) {
        return ret;
    }
    return io_pwrite(node->file, buf, len, off);
}

static int raw_pwrite_zeroes(struct qimg_node *node, uint64_t off,
                             uint64_t len, unsigned flags)
{
    int ret = raw_check_block0(node, NULL, len, off);
    if (ret < 0) {
        return ret;
    }
    return io_pwrite_zeroes(node->file, off, len,
                            (flags & QIMG_ZERO_MAY_UNMAP) != 0);
}

static int raw_pdiscard(struct qimg_node *node, uint64_t off, uint64_t len)
{
    return node->file->ops->discard(node->file, off, len);
}

static int raw_flush(struct qimg_node *node)
{
    return node_sync(node, node->file);
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
    .probe = raw_probe,
    .open = raw_open,
    .close = raw_close,
    .pread = raw_pread,
    .pwrite = raw_pwrite,
    .pwrite_zeroes = raw_pwrite_zeroes,
    .pdiscard = raw_pdiscard,
    .flush = raw_flush,
    .block_status = raw_block_status,
    .get_allocated = raw_get_allocated,
    .create_opts = raw_create_opts,
    .create = raw_create,
};
