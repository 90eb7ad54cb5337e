/*
 * The in-memory leaf: a growable buffer, for unit tests and fuzzing.
 *
 * Invariant: buf holds cap >= 1 bytes (so io_mem_buffer never returns NULL
 * for an open leaf) and the file contents are buf[0, size).  Bytes past
 * size are not kept zero; every operation that grows the file zeroes the
 * bytes it exposes.  A borrowed leaf (io_mem_open_borrowed) reads the
 * caller's buffer in place and never writes: it is not writable and
 * refuses to become so, and close leaves buf alone.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "driver.h"

/* A fuzz input or test image never needs more; bounds host memory use. */
#define IO_MEM_MAX_SIZE ((uint64_t)1 << 30)
/* Smallest allocation, so that small writes do not realloc each time. */
#define IO_MEM_MIN_CAP 4096

struct io_mem {
    struct qimg_io io; /* first: the leaf is passed around as qimg_io */
    uint8_t *buf;
    size_t size;
    size_t cap;
    bool borrowed; /* buf is the caller's: read-only, not freed */
};

static const struct qimg_io_ops io_mem_ops;

static struct io_mem *io_mem_from(struct qimg_io *io)
{
    return (struct io_mem *)io;
}

/* Check that [off, off + len) stays within the size limit. */
static int io_mem_check_end(struct io_mem *m, uint64_t off, uint64_t len,
                            uint64_t *end)
{
    if (off > IO_MEM_MAX_SIZE || len > IO_MEM_MAX_SIZE - off) {
        return error_set_errno(EFBIG, "Could not write to '%s'",
                               m->io.filename);
    }
    *end = off + len;
    return 0;
}

/* Make the file at least new_size bytes long; new bytes read as zero. */
static int io_mem_grow(struct io_mem *m, uint64_t new_size)
{
    if (new_size <= m->size) {
        return 0;
    }
    if (new_size > IO_MEM_MAX_SIZE) {
        return error_set_errno(EFBIG, "Could not write to '%s'",
                               m->io.filename);
    }
    if (new_size > m->cap) {
        /* Doubling keeps a run of appending writes linear overall. */
        size_t cap = m->cap;
        while (cap < new_size) {
            cap *= 2;
        }
        if (cap > IO_MEM_MAX_SIZE) {
            cap = (size_t)IO_MEM_MAX_SIZE;
        }
        uint8_t *buf = realloc(m->buf, cap);
        if (!buf) {
            return error_set(ENOMEM, "Could not grow '%s' to %zu bytes",
                             m->io.filename, cap);
        }
        m->buf = buf;
        m->cap = cap;
    }
    memset(m->buf + m->size, 0, (size_t)new_size - m->size);
    m->size = (size_t)new_size;
    return 0;
}

static int io_mem_check_writable(struct io_mem *m)
{
    if (!m->io.writable) {
        return error_set_errno(EBADF, "Could not write to '%s'",
                               m->io.filename);
    }
    return 0;
}

static void io_mem_close(struct qimg_io *io)
{
    struct io_mem *m = io_mem_from(io);
    if (!m->borrowed) {
        free(m->buf);
    }
    free(m->io.filename);
    free(m);
}

static int64_t io_mem_get_size(struct qimg_io *io)
{
    return (int64_t)io_mem_from(io)->size;
}

static int64_t io_mem_get_allocated(struct qimg_io *io)
{
    return (int64_t)io_mem_from(io)->size;
}

static int io_mem_pread(struct qimg_io *io, void *buf, size_t len, uint64_t off)
{
    struct io_mem *m = io_mem_from(io);
    size_t n = 0;
    if (off < m->size) {
        n = m->size - (size_t)off;
        if (n > len) {
            n = len;
        }
        memcpy(buf, m->buf + off, n);
    }
    /* Past the end of the file reads as zero, as for a host file. */
    memset((uint8_t *)buf + n, 0, len - n);
    return 0;
}

static int io_mem_pwrite(struct qimg_io *io, const void *buf, size_t len,
                         uint64_t off)
{
    struct io_mem *m = io_mem_from(io);
    uint64_t end = 0;
    int ret = io_mem_check_writable(m);
    if (ret < 0) {
        return ret;
    }
    if (len == 0) {
        return 0; /* a zero-length write never extends the file */
    }
    ret = io_mem_check_end(m, off, len, &end);
    if (ret < 0) {
        return ret;
    }
    ret = io_mem_grow(m, end);
    if (ret < 0) {
        return ret;
    }
    memcpy(m->buf + off, buf, len);
    return 0;
}

/* Zero the part of [off, off + len) that lies inside the buffer. */
static void io_mem_zero_existing(struct io_mem *m, uint64_t off, uint64_t len)
{
    if (off < m->size) {
        size_t n = m->size - (size_t)off;
        if (n > len) {
            n = (size_t)len;
        }
        memset(m->buf + off, 0, n);
    }
}

static int io_mem_pwrite_zeroes(struct qimg_io *io, uint64_t off, uint64_t len,
                                bool may_unmap)
{
    (void)may_unmap;
    struct io_mem *m = io_mem_from(io);
    uint64_t end = 0;
    int ret = io_mem_check_writable(m);
    if (ret < 0) {
        return ret;
    }
    if (len == 0) {
        return 0;
    }
    ret = io_mem_check_end(m, off, len, &end);
    if (ret < 0) {
        return ret;
    }
    /* Zero the old bytes first: growing zeroes the new ones itself. */
    io_mem_zero_existing(m, off, len);
    return io_mem_grow(m, end);
}

static int io_mem_discard(struct qimg_io *io, uint64_t off, uint64_t len)
{
    struct io_mem *m = io_mem_from(io);
    int ret = io_mem_check_writable(m);
    if (ret < 0) {
        return ret;
    }
    /* Like punching a hole with KEEP_SIZE: never grows the file. */
    io_mem_zero_existing(m, off, len);
    return 0;
}

static int io_mem_flush(struct qimg_io *io)
{
    (void)io;
    return 0;
}

static int io_mem_truncate(struct qimg_io *io, uint64_t size)
{
    struct io_mem *m = io_mem_from(io);
    int ret = io_mem_check_writable(m);
    if (ret < 0) {
        return ret;
    }
    if (size > m->size) {
        return io_mem_grow(m, size);
    }
    m->size = (size_t)size;
    return 0;
}

static int io_mem_block_status(struct qimg_io *io, uint64_t off, uint64_t len,
                               uint64_t *pnum)
{
    struct io_mem *m = io_mem_from(io);
    if (len == 0) {
        return error_set(EINVAL, "'%s': block status of an empty range",
                         m->io.filename);
    }
    if (off >= m->size) {
        *pnum = len;
        return IO_STATUS_ZERO;
    }
    uint64_t n = m->size - off;
    *pnum = n < len ? n : len;
    return IO_STATUS_DATA;
}

static int io_mem_set_perm(struct qimg_io *io, unsigned perm,
                           unsigned unshared)
{
    /* Nothing to lock: a memory leaf is private to this process. */
    (void)unshared;
    if ((perm & IO_PERM_WRITE) && io_mem_from(io)->borrowed) {
        return error_set_errno(EACCES, "Could not open '%s' for writing",
                               io->filename);
    }
    io->writable = (perm & IO_PERM_WRITE) != 0;
    return 0;
}

static const struct qimg_io_ops io_mem_ops = {
    .name = "mem",
    .close = io_mem_close,
    .get_size = io_mem_get_size,
    .get_allocated = io_mem_get_allocated,
    .pread = io_mem_pread,
    .pwrite = io_mem_pwrite,
    .pwrite_zeroes = io_mem_pwrite_zeroes,
    .discard = io_mem_discard,
    .flush = io_mem_flush,
    .truncate = io_mem_truncate,
    .block_status = io_mem_block_status,
    .set_perm = io_mem_set_perm,
};

int io_mem_open(const char *name, const void *data, size_t len, unsigned flags,
                struct qimg_io **out)
{
    *out = NULL;
    if (!name) {
        name = "";
    }
    if (flags & IO_TRUNC) {
        len = 0;
    }
    if (len > IO_MEM_MAX_SIZE) {
        return error_set_errno(EFBIG, "Could not open '%s'", name);
    }
    struct io_mem *m = calloc(1, sizeof(*m));
    if (!m) {
        return error_set(ENOMEM, "Could not open '%s': out of memory", name);
    }
    m->cap = len > IO_MEM_MIN_CAP ? len : IO_MEM_MIN_CAP;
    m->buf = malloc(m->cap);
    m->io.filename = strdup(name);
    if (!m->buf || !m->io.filename) {
        free(m->buf);
        free(m->io.filename);
        free(m);
        return error_set(ENOMEM, "Could not open '%s': out of memory", name);
    }
    if (len) {
        memcpy(m->buf, data, len);
    }
    m->size = len;
    m->io.ops = &io_mem_ops;
    m->io.writable = (flags & (IO_RDWR | IO_CREATE | IO_TRUNC)) != 0;
    *out = &m->io;
    return 0;
}

const uint8_t *io_mem_buffer(struct qimg_io *io, size_t *len)
{
    if (!io || io->ops != &io_mem_ops) {
        if (len) {
            *len = 0;
        }
        return NULL;
    }
    struct io_mem *m = io_mem_from(io);
    if (len) {
        *len = m->size;
    }
    return m->buf;
}

int io_mem_open_borrowed(const char *name, const void *data, size_t len,
                         struct qimg_io **out)
{
    *out = NULL;
    static const uint8_t empty[1];
    if (!name) {
        name = "";
    }
    if (len > IO_MEM_MAX_SIZE) {
        return error_set_errno(EFBIG, "Could not open '%s'", name);
    }
    struct io_mem *m = calloc(1, sizeof(*m));
    char *filename = strdup(name);
    if (!m || !filename) {
        free(m);
        free(filename);
        return error_set(ENOMEM, "Could not open '%s': out of memory", name);
    }
    /* Never written (not writable, set_perm refuses): the cast is safe. */
    m->buf = (uint8_t *)(uintptr_t)(len ? data : empty);
    m->size = len;
    m->cap = len ? len : 1;
    m->borrowed = true;
    m->io.filename = filename;
    m->io.ops = &io_mem_ops;
    m->io.writable = false;
    *out = &m->io;
    return 0;
}
