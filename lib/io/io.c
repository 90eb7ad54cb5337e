/*
 * The thin io_* wrappers declared in driver.h.  They dispatch through ops,
 * so that callers never reach into a leaf's table (each leaf records its
 * own error messages), and keep io->synced: every call that may change
 * the file clears it before the change, a successful flush sets it.
 */
#include <errno.h>
#include <stddef.h>
#include <sys/uio.h>

#include "driver.h"

void io_close(struct qimg_io *io)
{
    if (!io) {
        return;
    }
    io->ops->close(io);
}

int64_t io_get_size(struct qimg_io *io)
{
    return io->ops->get_size(io);
}

int io_pread(struct qimg_io *io, void *buf, size_t len, uint64_t off)
{
    return io->ops->pread(io, buf, len, off);
}

/*
 * Cleared before the change is made: a flush racing with this write then
 * either sees it unsynced or clears it after syncing, never skips it.
 */
static void changing(struct qimg_io *io)
{
    __atomic_store_n(&io->synced, false, __ATOMIC_SEQ_CST);
}

int io_pwrite(struct qimg_io *io, const void *buf, size_t len, uint64_t off)
{
    changing(io);
    return io->ops->pwrite(io, buf, len, off);
}

int io_pwritev(struct qimg_io *io, const struct iovec *iov, int cnt,
               uint64_t off)
{
    changing(io);
    if (io->ops->pwritev) {
        return io->ops->pwritev(io, iov, cnt, off);
    }
    for (int i = 0; i < cnt; i++) {
        int ret = io->ops->pwrite(io, iov[i].iov_base, iov[i].iov_len, off);
        if (ret < 0) {
            return ret;
        }
        off += iov[i].iov_len;
    }
    return 0;
}

int io_pwrite_zeroes(struct qimg_io *io, uint64_t off, uint64_t len,
                     bool may_unmap)
{
    changing(io);
    return io->ops->pwrite_zeroes(io, off, len, may_unmap);
}

int io_allocate(struct qimg_io *io, uint64_t off, uint64_t len)
{
    changing(io);
    if (io->ops->allocate) {
        return io->ops->allocate(io, off, len);
    }
    return io->ops->pwrite_zeroes(io, off, len, false);
}

int io_discard(struct qimg_io *io, uint64_t off, uint64_t len)
{
    if (!io->ops->discard) {
        return -ENOTSUP;
    }
    changing(io);
    return io->ops->discard(io, off, len);
}

int io_flush(struct qimg_io *io)
{
    /*
     * Taken before syncing: a write that starts during the sync clears it
     * again, so the next flush syncs that write.
     */
    if (__atomic_exchange_n(&io->synced, true, __ATOMIC_SEQ_CST)) {
        return 0;
    }
    int ret = io->ops->flush(io);
    if (ret < 0) {
        changing(io);
    }
    return ret;
}

int io_truncate(struct qimg_io *io, uint64_t size)
{
    changing(io);
    return io->ops->truncate(io, size);
}
