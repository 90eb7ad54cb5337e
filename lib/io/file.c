/*
 * The posix file leaf: a host file or device, with QEMU-compatible image
 * locking.
 *
 * Locking.  QEMU (file-posix) expresses who uses an image as a set of
 * permissions and records them as one-byte shared (F_RDLCK) open file
 * description locks (F_OFD_SETLK) on the image file itself:
 *
 *     byte 100 + i   "perm" lock: this user holds permission i
 *     byte 200 + i   "shared" lock: this user does NOT let others hold i
 *
 * with the QEMU 7.2 permission bits 0 "consistent read", 1 "write",
 * 2 "write unchanged", 3 "resize".  All locks are shared, so taking one
 * never fails; a user instead tests for conflicts with F_OFD_GETLK
 * (a write-lock probe, which only sees other open file descriptions):
 * for each permission it wants, nobody may hold its "shared" byte; for
 * each permission it refuses to share, nobody may hold its "perm" byte.
 * Because the locks belong to the open file description, two opens in one
 * process conflict just as two processes do.
 *
 * This leaf behaves as QEMU does for an image whose format keeps metadata
 * in the file (qcow2 and the like), as observed in /proc/locks:
 *
 *     read-only:   perm {consistent read}           -> bytes 100
 *                  unshared {write, resize}         -> bytes 201, 203
 *     read-write:  perm {consistent read, write, resize}
 *                                                   -> bytes 100, 101, 103
 *                  unshared {write, resize}         -> bytes 201, 203
 *
 * so a running QEMU or qemu-io that writes the image makes both opens fail,
 * and while qimg holds the image QEMU cannot open it for writing (nor, for
 * a qcow2 image, read it without -U).  IO_NO_LOCK (-U) takes no locks and
 * tests nothing.  A filesystem without OFD locks is used unlocked.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "core/error.h"
#include "driver.h"

/* QEMU's lock byte bases (file-posix), see the comment at the top. */
#define IO_FILE_LOCK_PERM_BASE 100
#define IO_FILE_LOCK_SHARED_BASE 200

/* QEMU 7.2 permission bits, in bit order. */
#define IO_FILE_PERM_CONSISTENT_READ IO_PERM_CONSISTENT_READ
#define IO_FILE_PERM_WRITE IO_PERM_WRITE
#define IO_FILE_PERM_WRITE_UNCHANGED IO_PERM_WRITE_UNCHANGED
#define IO_FILE_PERM_RESIZE IO_PERM_RESIZE
#define IO_FILE_PERM_COUNT 4

/* The names QEMU uses in its "Failed to get ... lock" messages. */
static const char *const io_file_perm_names[IO_FILE_PERM_COUNT] = {
    "consistent read",
    "write",
    "write unchanged",
    "resize",
};

/* Bounds the memory used when zeroes must be written out as data. */
#define IO_FILE_ZERO_BUF_MAX ((size_t)1 << 20)

/* The lock bytes one open file description holds, as permission masks. */
struct io_file_locks {
    unsigned perm;     /* bytes 100 + i */
    unsigned unshared; /* bytes 200 + i */
};

struct io_file {
    struct qimg_io io; /* first: the leaf is passed around as qimg_io */
    int fd;
    bool fd_writable;
    /* False with IO_NO_LOCK, or once OFD locks proved unsupported. */
    bool use_lock;
    struct io_file_locks held;
    /* Identity of the file, to make sure a reopen finds the same one. */
    dev_t dev;
    ino_t ino;
    /* IO_DIRECT: a second descriptor with O_DIRECT, or -1. */
    int fd_direct;
    /* fd_direct was opened read-write (else reads only go through it). */
    bool fd_direct_rw;
};

/* Alignment of buffer, offset and length for requests through fd_direct. */
#define IO_FILE_DIRECT_ALIGN 4096u

static const struct qimg_io_ops io_file_ops;

static struct io_file *io_file_from(struct qimg_io *io)
{
    return (struct io_file *)io;
}

/* ---- Locking ----------------------------------------------------------- */

/* The permissions a read-only or read-write user holds and refuses. */
static struct io_file_locks io_file_mode_locks(bool writable)
{
    struct io_file_locks l;
    l.perm = IO_FILE_PERM_CONSISTENT_READ;
    if (writable) {
        l.perm |= IO_FILE_PERM_WRITE | IO_FILE_PERM_RESIZE;
    }
    l.unshared = IO_FILE_PERM_WRITE | IO_FILE_PERM_RESIZE;
    return l;
}

/* Errors meaning "no OFD locks here", not "somebody holds the lock". */
static bool io_file_lock_unsupported(int err)
{
    return err == EINVAL || err == EOPNOTSUPP || err == ENOSYS;
}

/* Take (F_RDLCK) or drop (F_UNLCK) one lock byte. */
static int io_file_setlk(int fd, int byte, short type)
{
    struct flock fl;
    memset(&fl, 0, sizeof(fl));
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = byte;
    fl.l_len = 1;
    if (fcntl(fd, F_OFD_SETLK, &fl) < 0) {
        return -errno;
    }
    return 0;
}

/*
 * 0 if no other open file description holds byte, -EAGAIN if one does,
 * or -errno.  Our own locks never show up: they do not conflict with us.
 */
static int io_file_testlk(int fd, int byte)
{
    struct flock fl;
    memset(&fl, 0, sizeof(fl));
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = byte;
    fl.l_len = 1;
    if (fcntl(fd, F_OFD_GETLK, &fl) < 0) {
        return -errno;
    }
    return fl.l_type == F_UNLCK ? 0 : -EAGAIN;
}

/* Bring one byte to the wanted state; without unlock, only add locks. */
static int io_file_update_byte(int fd, unsigned *held, unsigned bit, bool want,
                               bool unlock, int byte)
{
    int ret = 0;
    if (want && !(*held & bit)) {
        ret = io_file_setlk(fd, byte, F_RDLCK);
        if (ret == 0) {
            *held |= bit;
        }
    } else if (!want && (*held & bit) && unlock) {
        ret = io_file_setlk(fd, byte, F_UNLCK);
        if (ret == 0) {
            *held &= ~bit;
        }
    }
    return ret;
}

/*
 * Hold the bytes of want on fd (and, unless unlock, keep the other bytes
 * held too).  Records no message: on failure *bad_byte names the byte.
 * *held always reflects what is really held.
 */
static int io_file_apply_locks(int fd, struct io_file_locks *held,
                               struct io_file_locks want, bool unlock,
                               int *bad_byte)
{
    for (int i = 0; i < IO_FILE_PERM_COUNT; i++) {
        unsigned bit = 1u << i;
        int byte = IO_FILE_LOCK_PERM_BASE + i;
        int ret = io_file_update_byte(fd, &held->perm, bit,
                                      (want.perm & bit) != 0, unlock, byte);
        if (ret < 0) {
            *bad_byte = byte;
            return ret;
        }
    }
    for (int i = 0; i < IO_FILE_PERM_COUNT; i++) {
        unsigned bit = 1u << i;
        int byte = IO_FILE_LOCK_SHARED_BASE + i;
        int ret = io_file_update_byte(fd, &held->unshared, bit,
                                      (want.unshared & bit) != 0, unlock, byte);
        if (ret < 0) {
            *bad_byte = byte;
            return ret;
        }
    }
    return 0;
}

/*
 * Would another user conflict with l?  Permissions first, then the
 * refusals, in bit order: the same order, hence the same message for a
 * given conflict, as QEMU.
 */
static int io_file_check_locks(int fd, struct io_file_locks l)
{
    for (int i = 0; i < IO_FILE_PERM_COUNT; i++) {
        if (!(l.perm & (1u << i))) {
            continue;
        }
        int ret = io_file_testlk(fd, IO_FILE_LOCK_SHARED_BASE + i);
        if (ret == -EAGAIN) {
            return error_set(EAGAIN, "Failed to get \"%s\" lock",
                             io_file_perm_names[i]);
        }
        if (ret < 0) {
            return error_set_errno(-ret, "Failed to get \"%s\" lock",
                                   io_file_perm_names[i]);
        }
    }
    for (int i = 0; i < IO_FILE_PERM_COUNT; i++) {
        if (!(l.unshared & (1u << i))) {
            continue;
        }
        int ret = io_file_testlk(fd, IO_FILE_LOCK_PERM_BASE + i);
        if (ret == -EAGAIN) {
            return error_set(EAGAIN, "Failed to get shared \"%s\" lock",
                             io_file_perm_names[i]);
        }
        if (ret < 0) {
            return error_set_errno(-ret, "Failed to get shared \"%s\" lock",
                                   io_file_perm_names[i]);
        }
    }
    return 0;
}

/*
 * Move fd's locks from *held to want.  The new bytes are taken before the
 * conflict test and the old ones dropped only after it passes, so the
 * image is never less protected than in either state; on a conflict the
 * old state is restored.
 */
static int io_file_change_locks(struct io_file *f, int fd,
                                struct io_file_locks *held,
                                struct io_file_locks want)
{
    struct io_file_locks old = *held;
    struct io_file_locks both = {old.perm | want.perm,
                                 old.unshared | want.unshared};
    int bad_byte = 0;
    int ret = io_file_apply_locks(fd, held, both, false, &bad_byte);
    if (ret < 0) {
        if (io_file_lock_unsupported(-ret) && held->perm == 0 &&
            held->unshared == 0) {
            /*
             * The very first lock failed this way: the filesystem has no
             * OFD locks (some FUSE and network filesystems).  Proceed
             * unlocked, as QEMU's default locking=auto does.
             */
            f->use_lock = false;
            return 0;
        }
        ret = error_set_errno(-ret, "Failed to lock byte %d", bad_byte);
        goto restore;
    }
    ret = io_file_check_locks(fd, want);
    if (ret == -EAGAIN) {
        /* qemu-img's hint, on a line of its own. */
        char reason[256];
        snprintf(reason, sizeof(reason), "%s", qimg_get_error());
        ret = error_set(EAGAIN, "%s\nIs another process using the image "
                        "[%s]?", reason, f->io.filename);
    }
    if (ret < 0) {
        goto restore;
    }
    /* Dropping locks cannot conflict; a failure leaves a byte held. */
    (void)io_file_apply_locks(fd, held, want, true, &bad_byte);
    return 0;

restore:
    (void)io_file_apply_locks(fd, held, old, true, &bad_byte);
    return ret;
}

static void io_file_unlock_all(int fd, struct io_file_locks *held)
{
    struct io_file_locks none = {0, 0};
    int bad_byte;
    (void)io_file_apply_locks(fd, held, none, true, &bad_byte);
}

/* ---- Opening ----------------------------------------------------------- */

/*
 * open() plus the checks every open needs.  O_NONBLOCK keeps a FIFO from
 * blocking the open; it is cleared again for the files we accept.
 */
static int io_file_open_fd(const char *filename, int oflags, int *pfd,
                           struct stat *st)
{
    /* QEMU's file driver refuses an empty name before trying to open it. */
    if (!(oflags & O_CREAT) && filename[0] == '\0') {
        return error_set(EINVAL, "The 'file' block driver requires a file "
                                 "name");
    }
    int fd;
    do {
        fd = open(filename, oflags | O_CLOEXEC | O_NONBLOCK, 0644);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) {
        if (oflags & O_CREAT) {
            return error_set_errno(errno, "Could not create '%s'", filename);
        }
        return error_set_errno(errno, "Could not open '%s'", filename);
    }
    if (fstat(fd, st) < 0) {
        int err = errno;
        close(fd);
        return error_set_errno(err, "Could not open '%s'", filename);
    }
    /* QEMU's file driver takes regular files, its host_device devices. */
    if (!S_ISREG(st->st_mode) && !S_ISBLK(st->st_mode) &&
        !S_ISCHR(st->st_mode)) {
        close(fd);
        return error_set(EINVAL,
                         "'file' driver requires '%s' to be a regular file",
                         filename);
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0) {
        int err = errno;
        close(fd);
        return error_set_errno(err, "Could not open '%s'", filename);
    }
    *pfd = fd;
    return 0;
}

/*
 * The O_DIRECT descriptor for aligned requests (reads, and writes when
 * rw).  Without O_DIRECT support (or if the name now leads to another
 * file) requests stay buffered: the cache mode only asks to bypass the
 * page cache where that works.
 */
static void io_file_open_direct(struct io_file *f, bool rw)
{
    int fd;
    int mode = rw ? O_RDWR : O_RDONLY;
    do {
        fd = open(f->io.filename, mode | O_DIRECT | O_CLOEXEC | O_NONBLOCK);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) {
        return;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || st.st_dev != f->dev || st.st_ino != f->ino ||
        !S_ISREG(st.st_mode)) {
        close(fd);
        return;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0) {
        close(fd);
        return;
    }
    f->fd_direct = fd;
    f->fd_direct_rw = rw;
    f->io.direct_align = rw ? IO_FILE_DIRECT_ALIGN : 0;
}

int io_file_open(const char *filename, unsigned flags, struct qimg_io **out)
{
    *out = NULL;
    bool creating = (flags & (IO_CREATE | IO_TRUNC)) != 0;
    bool rw = creating || (flags & IO_RDWR);
    int oflags = rw ? O_RDWR : O_RDONLY;
    if (creating) {
        oflags |= O_CREAT;
        /*
         * No O_TRUNC: an existing file is emptied only once the locks
         * show nobody else uses it.
         */
        if (!(flags & IO_TRUNC)) {
            oflags |= O_EXCL;
        }
    }

    struct io_file *f = calloc(1, sizeof(*f));
    char *name = strdup(filename);
    if (!f || !name) {
        free(f);
        free(name);
        return error_set(ENOMEM, "Could not open '%s': out of memory",
                         filename);
    }
    struct stat st;
    int ret = io_file_open_fd(filename, oflags, &f->fd, &st);
    if (ret < 0) {
        free(f);
        free(name);
        return ret;
    }
    f->fd_direct = -1;
    f->io.ops = &io_file_ops;
    f->io.filename = name;
    f->io.writable = rw;
    f->io.fixed_size = S_ISBLK(st.st_mode) || S_ISCHR(st.st_mode);
    f->fd_writable = rw;
    f->dev = st.st_dev;
    f->ino = st.st_ino;
    f->use_lock = !(flags & IO_NO_LOCK);

    if (f->use_lock && !(flags & IO_LOCK_LATER)) {
        ret = io_file_change_locks(f, f->fd, &f->held, io_file_mode_locks(rw));
        if (ret < 0) {
            goto fail;
        }
    }
    if ((flags & IO_TRUNC) && S_ISREG(st.st_mode) && st.st_size != 0 &&
        ftruncate(f->fd, 0) < 0) {
        ret = error_set_errno(errno, "Could not truncate '%s'", filename);
        goto fail;
    }
    if (flags & IO_DIRECT) {
        io_file_open_direct(f, rw);
    }
    *out = &f->io;
    return 0;

fail:
    io_file_unlock_all(f->fd, &f->held);
    close(f->fd);
    free(f->io.filename);
    free(f);
    return ret;
}

static void io_file_close(struct qimg_io *io)
{
    struct io_file *f = io_file_from(io);
    /*
     * Closing the last descriptor drops the locks anyway; unlocking first
     * also covers a forked child that still shares the description.
     */
    if (f->use_lock) {
        io_file_unlock_all(f->fd, &f->held);
    }
    if (f->fd_direct >= 0) {
        close(f->fd_direct);
    }
    close(f->fd);
    free(f->io.filename);
    free(f);
}

/*
 * Read-only to read-write needs a new descriptor, which starts with no
 * locks.  The old descriptor's locks must go first: they would conflict
 * with the new one's test.  On failure the old state is taken back.
 */
static int io_file_reopen_rw(struct io_file *f, struct io_file_locks want)
{
    struct stat st;
    int fd;
    int ret = io_file_open_fd(f->io.filename, O_RDWR, &fd, &st);
    if (ret < 0) {
        return ret;
    }
    if (st.st_dev != f->dev || st.st_ino != f->ino) {
        close(fd);
        return error_set(EIO, "Could not reopen '%s': the file was replaced",
                         f->io.filename);
    }
    if (f->use_lock) {
        struct io_file_locks old = f->held;
        struct io_file_locks held = {0, 0};
        io_file_unlock_all(f->fd, &f->held);
        ret = io_file_change_locks(f, fd, &held, want);
        if (ret < 0) {
            int bad_byte;
            io_file_unlock_all(fd, &held);
            close(fd);
            /* Shared locks cannot be refused: taking them back succeeds. */
            (void)io_file_apply_locks(f->fd, &f->held, old, true, &bad_byte);
            return ret;
        }
        f->held = held;
    }
    close(f->fd);
    f->fd = fd;
    f->fd_writable = true;
    f->io.writable = true;
    return 0;
}

static int io_file_set_perm(struct qimg_io *io, unsigned perm,
                            unsigned unshared)
{
    struct io_file *f = io_file_from(io);
    struct io_file_locks want = {perm, unshared};
    bool writable = (perm & IO_FILE_PERM_WRITE) != 0;
    if (writable && !f->fd_writable) {
        return io_file_reopen_rw(f, want);
    }
    if (f->use_lock) {
        int ret = io_file_change_locks(f, f->fd, &f->held, want);
        if (ret < 0) {
            return ret;
        }
    }
    io->writable = writable;
    return 0;
}

/* ---- I/O --------------------------------------------------------------- */

/* off_t is signed: refuse requests that do not fit before any syscall. */
static int io_file_check_range(struct io_file *f, uint64_t off, uint64_t len)
{
    if (off > INT64_MAX || len > INT64_MAX - off) {
        return error_set(EINVAL,
                         "'%s': request at offset %" PRIu64 " of %" PRIu64
                         " bytes is out of range",
                         f->io.filename, off, len);
    }
    return 0;
}

static int64_t io_file_get_size(struct qimg_io *io)
{
    struct io_file *f = io_file_from(io);
    struct stat st;
    if (fstat(f->fd, &st) < 0) {
        return error_set_errno(errno, "Could not stat '%s'", f->io.filename);
    }
    if (S_ISREG(st.st_mode)) {
        return st.st_size;
    }
    /* Devices report no size in st_size; their end is where it is. */
    off_t end = lseek(f->fd, 0, SEEK_END);
    if (end < 0) {
        return error_set_errno(errno, "Could not get the size of '%s'",
                               f->io.filename);
    }
    return end;
}

static int64_t io_file_get_allocated(struct qimg_io *io)
{
    struct io_file *f = io_file_from(io);
    struct stat st;
    if (fstat(f->fd, &st) < 0) {
        return error_set_errno(errno, "Could not stat '%s'", f->io.filename);
    }
    /* st_blocks counts 512-byte units whatever the filesystem block. */
    return (int64_t)st.st_blocks * 512;
}

static int io_file_pread(struct qimg_io *io, void *buf, size_t len,
                         uint64_t off)
{
    struct io_file *f = io_file_from(io);
    int ret = io_file_check_range(f, off, len);
    if (ret < 0) {
        return ret;
    }
    uint8_t *p = buf;
    size_t done = 0;
    /* O_DIRECT only for requests aligned in memory and in the file. */
    int fd = f->fd;
    if (f->fd_direct >= 0 && (uintptr_t)buf % IO_FILE_DIRECT_ALIGN == 0 &&
        off % IO_FILE_DIRECT_ALIGN == 0 && len % IO_FILE_DIRECT_ALIGN == 0) {
        fd = f->fd_direct;
    }
    while (done < len) {
        ssize_t n = pread(fd, p + done, len - done, (off_t)(off + done));
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno == EINVAL && fd != f->fd) {
                /* An alignment O_DIRECT wants that we did not know. */
                fd = f->fd;
                continue;
            }
            return error_set_errno(errno, "Could not read from '%s'",
                                   f->io.filename);
        }
        if (n == 0) {
            /* End of file: the rest reads as zeros. */
            memset(p + done, 0, len - done);
            break;
        }
        done += (size_t)n;
    }
    return 0;
}

static int io_file_pwrite_fd(struct io_file *f, const void *buf, size_t len,
                             uint64_t off)
{
    const uint8_t *p = buf;
    size_t done = 0;
    /* O_DIRECT only for requests aligned in memory and in the file. */
    int fd = f->fd;
    if (f->fd_direct >= 0 && f->fd_direct_rw &&
        (uintptr_t)buf % IO_FILE_DIRECT_ALIGN == 0 &&
        off % IO_FILE_DIRECT_ALIGN == 0 && len % IO_FILE_DIRECT_ALIGN == 0) {
        fd = f->fd_direct;
    }
    while (done < len) {
        ssize_t n = pwrite(fd, p + done, len - done, (off_t)(off + done));
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno == EINVAL && fd != f->fd) {
                /* An alignment O_DIRECT wants that we did not know. */
                fd = f->fd;
                continue;
            }
            return error_set_errno(errno, "Could not write to '%s'",
                                   f->io.filename);
        }
        if (n == 0) {
            /* No progress and no error: give up rather than spin. */
            return error_set_errno(EIO, "Could not write to '%s'",
                                   f->io.filename);
        }
        done += (size_t)n;
    }
    return 0;
}

static int io_file_pwrite(struct qimg_io *io, const void *buf, size_t len,
                          uint64_t off)
{
    struct io_file *f = io_file_from(io);
    int ret = io_file_check_range(f, off, len);
    if (ret < 0) {
        return ret;
    }
    return io_file_pwrite_fd(f, buf, len, off);
}

/*
 * One pwritev for buffers that io_file_pwrite would write one by one
 * (qcow2 sends a new cluster's data and its copied-in tail together).
 * A short write goes on from where it stopped.
 */
static int io_file_pwritev(struct qimg_io *io, const struct iovec *iov,
                           int cnt, uint64_t off)
{
    struct io_file *f = io_file_from(io);
    if (cnt < 0 || cnt > IO_IOV_MAX) {
        return error_set(EINVAL, "'%s': too many buffers in one write",
                         f->io.filename);
    }
    struct iovec v[IO_IOV_MAX];
    uint64_t len = 0;
    bool aligned = f->fd_direct >= 0 && f->fd_direct_rw &&
                   off % IO_FILE_DIRECT_ALIGN == 0;
    for (int i = 0; i < cnt; i++) {
        v[i] = iov[i];
        len += iov[i].iov_len;
        aligned = aligned &&
                  (uintptr_t)iov[i].iov_base % IO_FILE_DIRECT_ALIGN == 0 &&
                  iov[i].iov_len % IO_FILE_DIRECT_ALIGN == 0;
    }
    int ret = io_file_check_range(f, off, len);
    if (ret < 0) {
        return ret;
    }
    /* O_DIRECT only when every buffer is aligned in memory and the file. */
    int fd = aligned ? f->fd_direct : f->fd;
    int first = 0;
    while (first < cnt) {
        if (v[first].iov_len == 0) {
            first++;
            continue;
        }
        ssize_t n = pwritev(fd, v + first, cnt - first, (off_t)off);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno == EINVAL && fd != f->fd) {
                /* An alignment O_DIRECT wants that we did not know. */
                fd = f->fd;
                continue;
            }
            return error_set_errno(errno, "Could not write to '%s'",
                                   f->io.filename);
        }
        if (n == 0) {
            /* No progress and no error: give up rather than spin. */
            return error_set_errno(EIO, "Could not write to '%s'",
                                   f->io.filename);
        }
        off += (uint64_t)n;
        size_t left = (size_t)n;
        while (left > 0 && left >= v[first].iov_len) {
            left -= v[first].iov_len;
            first++;
        }
        if (left > 0) {
            v[first].iov_base = (uint8_t *)v[first].iov_base + left;
            v[first].iov_len -= left;
        }
    }
    return 0;
}

/* Errors by which fallocate says "not this mode here", not a failure. */
static bool io_file_falloc_unsupported(int err)
{
    return err == EOPNOTSUPP || err == ENOSYS || err == EINVAL || err == ENODEV;
}

/* The last resort: write zeroes as data, one bounded buffer at a time. */
static int io_file_write_zero_buffers(struct io_file *f, uint64_t off,
                                      uint64_t len)
{
    size_t buf_len =
        len < IO_FILE_ZERO_BUF_MAX ? (size_t)len : IO_FILE_ZERO_BUF_MAX;
    uint8_t *zeroes = calloc(1, buf_len);
    if (!zeroes) {
        return error_set(ENOMEM, "Could not write to '%s': out of memory",
                         f->io.filename);
    }
    int ret = 0;
    while (len > 0) {
        size_t n = len < buf_len ? (size_t)len : buf_len;
        ret = io_file_pwrite_fd(f, zeroes, n, off);
        if (ret < 0) {
            break;
        }
        off += n;
        len -= n;
    }
    free(zeroes);
    return ret;
}

static int io_file_pwrite_zeroes(struct qimg_io *io, uint64_t off, uint64_t len,
                                 bool may_unmap)
{
    struct io_file *f = io_file_from(io);
    int ret = io_file_check_range(f, off, len);
    if (ret < 0 || len == 0) {
        return ret;
    }
    int64_t size = io_file_get_size(io);
    if (size < 0) {
        return (int)size;
    }
    uint64_t end = off + len;
    /* A hole reads as zero; KEEP_SIZE because punching cannot extend. */
    if (may_unmap && end <= (uint64_t)size) {
        if (fallocate(f->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                      (off_t)off, (off_t)len) == 0) {
            return 0;
        }
        if (!io_file_falloc_unsupported(errno)) {
            return error_set_errno(errno, "Could not write to '%s'",
                                   f->io.filename);
        }
    }
    /* Zeroes without writing them; extends the file when end > size. */
    if (fallocate(f->fd, FALLOC_FL_ZERO_RANGE, (off_t)off, (off_t)len) == 0) {
        return 0;
    }
    if (!io_file_falloc_unsupported(errno)) {
        return error_set_errno(errno, "Could not write to '%s'",
                               f->io.filename);
    }
    /* Wholly past the end: growing the file leaves a hole that reads 0. */
    if (off >= (uint64_t)size) {
        struct stat st;
        if (fstat(f->fd, &st) == 0 && S_ISREG(st.st_mode)) {
            if (ftruncate(f->fd, (off_t)end) < 0) {
                return error_set_errno(errno, "Could not write to '%s'",
                                       f->io.filename);
            }
            return 0;
        }
    }
    return io_file_write_zero_buffers(f, off, len);
}

static int io_file_discard(struct qimg_io *io, uint64_t off, uint64_t len)
{
    struct io_file *f = io_file_from(io);
    int ret = io_file_check_range(f, off, len);
    if (ret < 0 || len == 0) {
        return ret;
    }
    if (fallocate(f->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off,
                  (off_t)len) == 0) {
        return 0;
    }
    /* Discard is advisory: a filesystem that cannot punch keeps data. */
    if (io_file_falloc_unsupported(errno)) {
        return 0;
    }
    return error_set_errno(errno, "Could not discard '%s'", f->io.filename);
}

static int io_file_flush(struct qimg_io *io)
{
    struct io_file *f = io_file_from(io);
    if (fdatasync(f->fd) < 0) {
        /*
         * EINVAL: a special file (a character device) with nothing to
         * sync; not a sign of lost data.
         */
        if (errno == EINVAL) {
            return 0;
        }
        return error_set_errno(errno, "Could not flush '%s'", f->io.filename);
    }
    return 0;
}

static int io_file_truncate(struct qimg_io *io, uint64_t size)
{
    struct io_file *f = io_file_from(io);
    int ret = io_file_check_range(f, size, 0);
    if (ret < 0) {
        return ret;
    }
    struct stat st;
    if (fstat(f->fd, &st) < 0) {
        return error_set_errno(errno, "Could not stat '%s'", f->io.filename);
    }
    if (!S_ISREG(st.st_mode)) {
        /* A device has a fixed size: "shrinking" it only hides the end. */
        int64_t cur = io_file_get_size(io);
        if (cur < 0) {
            return (int)cur;
        }
        if (size > (uint64_t)cur) {
            return error_set(ENOTSUP, "Cannot grow device files");
        }
        return 0;
    }
    if (ftruncate(f->fd, (off_t)size) < 0) {
        return error_set_errno(errno, "Could not truncate '%s'",
                               f->io.filename);
    }
    return 0;
}

/*
 * posix_fallocate: the file system reserves the blocks (unwritten extents
 * that read as zero) or, without fallocate support, glibc writes a zero
 * into each block.
 */
static int io_file_allocate(struct qimg_io *io, uint64_t off, uint64_t len)
{
    struct io_file *f = io_file_from(io);
    int ret = io_file_check_range(f, off, len);
    if (ret < 0 || len == 0) {
        return ret;
    }
    /* posix_fallocate returns the error instead of setting errno. */
    int err = posix_fallocate(f->fd, (off_t)off, (off_t)len);
    if (err != 0) {
        return error_set_errno(err, "Could not allocate space in '%s'",
                               f->io.filename);
    }
    return 0;
}

/*
 * Holes from SEEK_DATA/SEEK_HOLE.  Past the end of the file is a hole (it
 * reads as zero).  When the filesystem cannot tell, everything is data,
 * which is always a correct answer.
 */
static int io_file_block_status(struct qimg_io *io, uint64_t off, uint64_t len,
                                uint64_t *pnum)
{
    struct io_file *f = io_file_from(io);
    if (len == 0) {
        return error_set(EINVAL, "'%s': block status of an empty range",
                         f->io.filename);
    }
    int64_t size = io_file_get_size(io);
    if (size < 0) {
        return (int)size;
    }
    if (off >= (uint64_t)size) {
        *pnum = len;
        return IO_STATUS_ZERO;
    }
    uint64_t in_file = (uint64_t)size - off;
    if (in_file > len) {
        in_file = len;
    }

    off_t data = lseek(f->fd, (off_t)off, SEEK_DATA);
    if (data < 0) {
        if (errno == ENXIO) {
            /* No data from off to the end: a trailing hole, then EOF. */
            *pnum = len;
            return IO_STATUS_ZERO;
        }
        *pnum = in_file;
        return IO_STATUS_DATA;
    }
    if ((uint64_t)data > off) {
        uint64_t hole = (uint64_t)data - off;
        *pnum = hole < len ? hole : len;
        return IO_STATUS_ZERO;
    }
    if ((uint64_t)data < off) {
        /* Not what SEEK_DATA promises; do not guess. */
        *pnum = in_file;
        return IO_STATUS_DATA;
    }
    off_t hole = lseek(f->fd, (off_t)off, SEEK_HOLE);
    if (hole < 0 || (uint64_t)hole <= off) {
        /* The file changed under us, or no answer: call it data. */
        *pnum = in_file;
        return IO_STATUS_DATA;
    }
    uint64_t run = (uint64_t)hole - off;
    *pnum = run < in_file ? run : in_file;
    return IO_STATUS_DATA;
}

static const struct qimg_io_ops io_file_ops = {
    .name = "file",
    .close = io_file_close,
    .get_size = io_file_get_size,
    .get_allocated = io_file_get_allocated,
    .pread = io_file_pread,
    .pwrite = io_file_pwrite,
    .pwritev = io_file_pwritev,
    .pwrite_zeroes = io_file_pwrite_zeroes,
    .discard = io_file_discard,
    .flush = io_file_flush,
    .truncate = io_file_truncate,
    .allocate = io_file_allocate,
    .block_status = io_file_block_status,
    .set_perm = io_file_set_perm,
};
