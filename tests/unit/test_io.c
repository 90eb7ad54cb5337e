/*
 * Unit tests of the I/O leaves: the memory leaf, the posix file leaf (in a
 * fresh temporary directory) and the file leaf's QEMU-compatible image
 * locks, checked both by conflicts between opens and byte by byte.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "driver.h"
#include "qimg/qimg.h"
#include "tap.h"

/* The reason line of a lock error (the hint follows on the next line). */
static const char *first_line(const char *msg)
{
    static char line[512];
    snprintf(line, sizeof(line), "%.*s", (int)strcspn(msg, "\n"), msg);
    return line;
}

/* The permissions of a qcow2 user (what QEMU takes for one). */
#define RO_PERM IO_PERM_CONSISTENT_READ
#define RW_PERM (IO_PERM_CONSISTENT_READ | IO_PERM_WRITE | IO_PERM_RESIZE)
#define RW_UNSHARED (IO_PERM_WRITE | IO_PERM_RESIZE)

#define MIB ((uint64_t)1 << 20)

static char tmpdir[] = "/tmp/qimg-test-io-XXXXXX";

static char *tmp_path(const char *name)
{
    static char path[256];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    return path;
}

static bool all_bytes(const uint8_t *p, size_t len, uint8_t v)
{
    for (size_t i = 0; i < len; i++) {
        if (p[i] != v) {
            return false;
        }
    }
    return true;
}

/* ---- mem leaf ---------------------------------------------------------- */

static void test_mem(void)
{
    struct qimg_io *io;
    uint8_t buf[16];
    size_t len;

    TAP_OK(io_mem_open("m", "hello", 5, IO_RDWR, &io) == 0);
    tap_eq_u64((uint64_t)io_get_size(io), 5, "mem: size of initial data");

    memset(buf, 0xaa, sizeof(buf));
    TAP_OK(io_pread(io, buf, 10, 0) == 0);
    tap_ok(memcmp(buf, "hello", 5) == 0 && all_bytes(buf + 5, 5, 0),
           "mem: read past EOF gives zeros");
    memset(buf, 0xaa, sizeof(buf));
    TAP_OK(io_pread(io, buf, 4, 100) == 0);
    tap_ok(all_bytes(buf, 4, 0), "mem: read wholly past EOF gives zeros");

    TAP_OK(io_pwrite(io, "xy", 2, 10) == 0);
    tap_eq_u64((uint64_t)io_get_size(io), 12, "mem: write past EOF grows");
    const uint8_t *data = io_mem_buffer(io, &len);
    tap_ok(len == 12 && memcmp(data, "hello", 5) == 0 &&
               all_bytes(data + 5, 5, 0) && memcmp(data + 10, "xy", 2) == 0,
           "mem: gap before a write past EOF is zero");

    TAP_OK(io_pwrite(io, "zz", 2, 100) == 0 && io_pwrite(io, "", 0, 200) == 0);
    tap_eq_u64((uint64_t)io_get_size(io), 102,
               "mem: zero-length write does not grow");

    TAP_OK(io_pwrite_zeroes(io, 1, 2, false) == 0);
    TAP_OK(io_pread(io, buf, 5, 0) == 0);
    tap_ok(memcmp(buf, "h\0\0lo", 5) == 0, "mem: write zeroes inside");
    TAP_OK(io_pwrite_zeroes(io, 200, 56, true) == 0);
    tap_eq_u64((uint64_t)io_get_size(io), 256, "mem: write zeroes grows");

    TAP_OK(io->ops->discard(io, 3, 1000) == 0);
    tap_eq_u64((uint64_t)io_get_size(io), 256, "mem: discard keeps size");
    TAP_OK(io_pread(io, buf, 5, 0) == 0);
    tap_ok(memcmp(buf, "h\0\0\0\0", 5) == 0, "mem: discard zeroes");

    /* Shrink then grow: the old bytes must not come back. */
    TAP_OK(io_pwrite(io, "abcdefgh", 8, 0) == 0);
    TAP_OK(io_truncate(io, 3) == 0);
    tap_eq_u64((uint64_t)io_get_size(io), 3, "mem: truncate shrinks");
    TAP_OK(io_truncate(io, 8) == 0);
    TAP_OK(io_pread(io, buf, 8, 0) == 0);
    tap_ok(memcmp(buf, "abc", 3) == 0 && all_bytes(buf + 3, 5, 0),
           "mem: truncate grows with zeros");

    uint64_t pnum = 0;
    tap_eq_u64((uint64_t)io->ops->block_status(io, 2, 100, &pnum),
               IO_STATUS_DATA, "mem: block status inside is DATA");
    tap_eq_u64(pnum, 6, "mem: DATA run stops at EOF");
    tap_eq_u64((uint64_t)io->ops->block_status(io, 8, 100, &pnum),
               IO_STATUS_ZERO, "mem: block status past EOF is ZERO");
    tap_eq_u64(pnum, 100, "mem: ZERO run covers the request");

    TAP_OK(io_pwrite(io, "x", 1, (uint64_t)1 << 30) == -EFBIG);
    tap_eq_str(qimg_get_error(), "Could not write to 'm': File too large",
               "mem: growth past 1 GiB message");
    TAP_OK(io_pwrite_zeroes(io, UINT64_MAX - 1, 4, false) == -EFBIG);
    TAP_OK(io_flush(io) == 0);
    io_close(io);
    io_close(NULL);

    TAP_OK(io_mem_open("ro", "abc", 3, 0, &io) == 0);
    TAP_OK(io_pwrite(io, "x", 1, 0) == -EBADF);
    TAP_OK(io_pread(io, buf, 3, 0) == 0 && memcmp(buf, "abc", 3) == 0);
    io_close(io);

    TAP_OK(io_mem_open("empty", NULL, 0, IO_RDWR, &io) == 0);
    data = io_mem_buffer(io, &len);
    tap_ok(data != NULL && len == 0, "mem: empty buffer is not NULL");
    io_close(io);

    /* Borrowed: the caller's bytes in place, never written or freed. */
    static const char lent[] = "lent";
    TAP_OK(io_mem_open_borrowed("b", lent, 4, &io) == 0);
    data = io_mem_buffer(io, &len);
    tap_ok(data == (const uint8_t *)lent && len == 4,
           "mem: a borrowed leaf reads the caller's buffer in place");
    memset(buf, 0xaa, sizeof(buf));
    TAP_OK(io_pread(io, buf, 6, 0) == 0);
    tap_ok(memcmp(buf, "lent\0\0", 6) == 0,
           "mem: borrowed read past EOF gives zeros");
    TAP_OK(io_pwrite(io, "x", 1, 0) == -EBADF);
    TAP_OK(io_pwrite_zeroes(io, 0, 1, false) == -EBADF);
    TAP_OK(io_truncate(io, 1) == -EBADF);
    TAP_OK(io->ops->set_perm(io, IO_PERM_WRITE, 0) == -EACCES);
    TAP_OK(!io->writable && io->ops->set_perm(io, 0, 0) == 0);
    tap_ok(memcmp(lent, "lent", 4) == 0, "mem: a borrowed buffer is unchanged");
    io_close(io);
    TAP_OK(io_mem_open_borrowed("b0", NULL, 0, &io) == 0);
    data = io_mem_buffer(io, &len);
    tap_ok(data != NULL && len == 0, "mem: empty borrowed buffer is not NULL");
    io_close(io);
}

/* ---- file leaf --------------------------------------------------------- */

static void test_file_errors(void)
{
    struct qimg_io *io = (struct qimg_io *)&io;
    char want[512];

    const char *missing = tmp_path("nonexist");
    TAP_OK(io_file_open(missing, 0, &io) == -ENOENT);
    TAP_OK(io == NULL);
    snprintf(want, sizeof(want),
             "Could not open '%s': No such file or directory", missing);
    tap_eq_str(qimg_get_error(), want, "file: missing file message");
    TAP_OK(qimg_get_errno() == ENOENT);

    TAP_OK(io_file_open(tmpdir, 0, &io) == -EINVAL);
    snprintf(want, sizeof(want),
             "'file' driver requires '%s' to be a regular file", tmpdir);
    tap_eq_str(qimg_get_error(), want, "file: directory message");

    const char *path = tmp_path("exists");
    TAP_OK(io_file_open(path, IO_CREATE, &io) == 0);
    TAP_OK(io_pwrite(io, "data", 4, 0) == 0);
    io_close(io);
    TAP_OK(io_file_open(path, IO_CREATE, &io) == -EEXIST);
    snprintf(want, sizeof(want), "Could not create '%s': File exists", path);
    tap_eq_str(qimg_get_error(), want, "file: IO_CREATE on existing file");
    TAP_OK(io_file_open(path, IO_CREATE | IO_TRUNC, &io) == 0);
    tap_eq_u64((uint64_t)io_get_size(io), 0, "file: IO_TRUNC empties");
    io_close(io);

    /* A read-only open cannot write. */
    TAP_OK(io_file_open(path, 0, &io) == 0);
    TAP_OK(io_pwrite(io, "x", 1, 0) == -EBADF);
    snprintf(want, sizeof(want), "Could not write to '%s': Bad file descriptor",
             path);
    tap_eq_str(qimg_get_error(), want, "file: write to read-only message");
    TAP_OK(io_pwrite_zeroes(io, 0, 4096, true) < 0);
    TAP_OK(io_pread(io, want, 1, (uint64_t)INT64_MAX) == -EINVAL);
    io_close(io);
}

static void test_file_io(void)
{
    struct qimg_io *io;
    const char *path = tmp_path("data");
    size_t big = 3 * MIB;
    uint8_t *pattern = malloc(big);
    uint8_t *buf = malloc(big + 4096);
    if (!pattern || !buf) {
        tap_ok(0, "file: allocate buffers");
        free(pattern);
        free(buf);
        return;
    }
    for (size_t i = 0; i < big; i++) {
        pattern[i] = (uint8_t)(i * 7 + i / 4096 + 1);
    }

    TAP_OK(io_file_open(path, IO_CREATE, &io) == 0);
    TAP_OK(io_pwrite(io, pattern, big, 0) == 0);
    TAP_OK(io_flush(io) == 0);
    tap_eq_u64((uint64_t)io_get_size(io), big, "file: size after write");
    io_close(io);

    TAP_OK(io_file_open(path, IO_RDWR, &io) == 0);
    memset(buf, 0xaa, big + 4096);
    TAP_OK(io_pread(io, buf, big + 4096, 0) == 0);
    tap_ok(memcmp(buf, pattern, big) == 0 && all_bytes(buf + big, 4096, 0),
           "file: read back, zeros past EOF");

    int64_t alloc_before = io->ops->get_allocated(io);
    TAP_OK(alloc_before >= (int64_t)big);

    uint64_t pnum = 0;
    tap_eq_u64((uint64_t)io->ops->block_status(io, 0, big, &pnum),
               IO_STATUS_DATA, "file: written range is DATA");
    tap_eq_u64(pnum, big, "file: DATA covers the written range");

    /* Punch a hole in the middle megabyte. */
    TAP_OK(io_pwrite_zeroes(io, MIB, MIB, true) == 0);
    tap_eq_u64((uint64_t)io_get_size(io), big, "file: punching keeps size");
    TAP_OK(io_pread(io, buf, big, 0) == 0);
    tap_ok(memcmp(buf, pattern, MIB) == 0 && all_bytes(buf + MIB, MIB, 0) &&
               memcmp(buf + 2 * MIB, pattern + 2 * MIB, MIB) == 0,
           "file: hole reads as zero, neighbours intact");
    int64_t alloc_after = io->ops->get_allocated(io);
    if (alloc_after < alloc_before) {
        tap_ok(1, "file: punching frees blocks");
        int st = io->ops->block_status(io, 0, big, &pnum);
        tap_ok(st == IO_STATUS_DATA && pnum == MIB,
               "file: data before the hole");
        st = io->ops->block_status(io, MIB, big, &pnum);
        tap_ok(st == IO_STATUS_ZERO && pnum == MIB, "file: the hole is ZERO");
        st = io->ops->block_status(io, MIB + 512, MIB, &pnum);
        tap_ok(st == IO_STATUS_ZERO && pnum == MIB - 512,
               "file: ZERO run from inside the hole");
        st = io->ops->block_status(io, 2 * MIB, big, &pnum);
        tap_ok(st == IO_STATUS_DATA && pnum == MIB,
               "file: data after the hole, clipped at EOF");
    } else {
        tap_ok(1, "file: hole detection # SKIP filesystem keeps no holes");
    }

    int st = io->ops->block_status(io, big, 12345, &pnum);
    tap_ok(st == IO_STATUS_ZERO && pnum == 12345, "file: past EOF is ZERO");

    /* Zeroes without unmapping, then a discard. */
    TAP_OK(io_pwrite_zeroes(io, 0, 4096, false) == 0);
    TAP_OK(io_pread(io, buf, 8192, 0) == 0);
    tap_ok(all_bytes(buf, 4096, 0) &&
               memcmp(buf + 4096, pattern + 4096, 4096) == 0,
           "file: write zeroes without unmap");
    TAP_OK(io->ops->discard(io, 4096, 4096) == 0);
    TAP_OK(io_pread(io, buf, 8192, 4096) == 0);
    tap_ok(all_bytes(buf, 4096, 0) &&
               memcmp(buf + 4096, pattern + 8192, 4096) == 0,
           "file: discard zeroes the range");

    /* Zeroes past EOF extend the file. */
    TAP_OK(io_pwrite_zeroes(io, big + MIB, 4096, true) == 0);
    tap_eq_u64((uint64_t)io_get_size(io), big + MIB + 4096,
               "file: write zeroes past EOF grows");
    TAP_OK(io_pwrite_zeroes(io, big, 2 * MIB, false) == 0);
    tap_eq_u64((uint64_t)io_get_size(io), big + 2 * MIB,
               "file: write zeroes straddling EOF grows");
    TAP_OK(io_pread(io, buf, 2 * MIB, big) == 0);
    tap_ok(all_bytes(buf, 2 * MIB, 0), "file: grown part reads zero");

    TAP_OK(io_pwrite(io, pattern, 8192, 0) == 0);
    TAP_OK(io_truncate(io, 5000) == 0);
    tap_eq_u64((uint64_t)io_get_size(io), 5000, "file: truncate shrinks");
    TAP_OK(io_truncate(io, 2 * MIB) == 0);
    tap_eq_u64((uint64_t)io_get_size(io), 2 * MIB, "file: truncate grows");
    TAP_OK(io_pread(io, buf, 8192, 0) == 0);
    tap_ok(memcmp(buf, pattern, 5000) == 0 &&
               all_bytes(buf + 5000, 8192 - 5000, 0),
           "file: truncated tail comes back as zeros");
    TAP_OK(io->ops->get_allocated(io) < alloc_before);
    io_close(io);

    free(pattern);
    free(buf);
}

/* ---- locking ----------------------------------------------------------- */

/*
 * The QEMU lock bytes some other open file description holds on path:
 * bit i for byte 100 + i, bit 4 + i for byte 200 + i.
 */
static unsigned lock_bytes_held(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    unsigned mask = 0;
    if (fd < 0) {
        return ~0u;
    }
    for (int i = 0; i < 8; i++) {
        struct flock fl;
        memset(&fl, 0, sizeof(fl));
        fl.l_type = F_WRLCK;
        fl.l_whence = SEEK_SET;
        fl.l_start = (i < 4 ? 100 : 196) + i;
        fl.l_len = 1;
        if (fcntl(fd, F_OFD_GETLK, &fl) < 0) {
            mask = ~0u;
            break;
        }
        if (fl.l_type != F_UNLCK) {
            mask |= 1u << i;
        }
    }
    close(fd);
    return mask;
}

/* Bytes 100 (consistent read), 201 (write) and 203 (resize). */
#define HELD_RO (0x1u | 0x20u | 0x80u)
/* Adds 101 (write) and 103 (resize). */
#define HELD_RW (0xbu | 0x20u | 0x80u)

static void test_locking(void)
{
    const char *path = tmp_path("locked");
    struct qimg_io *a, *b, *c, *d;

    TAP_OK(io_file_open(path, IO_CREATE, &a) == 0);
    TAP_OK(io_pwrite(a, "keep", 4, 0) == 0);
    tap_eq_u64(lock_bytes_held(path), HELD_RW,
               "lock: RW holds 100,101,103,201,203");

    TAP_OK(io_file_open(path, IO_RDWR, &b) == -EAGAIN);
    tap_eq_str(first_line(qimg_get_error()), "Failed to get \"write\" lock",
               "lock: RW then RW fails");
    TAP_OK(qimg_get_errno() == EAGAIN);
    TAP_OK(io_file_open(path, 0, &b) == -EAGAIN);
    tap_eq_str(first_line(qimg_get_error()), "Failed to get shared \"write\" lock",
               "lock: RW then RO fails");
    TAP_OK(io_file_open(path, IO_RDWR | IO_NO_LOCK, &b) == 0);
    TAP_OK(io_file_open(path, IO_NO_LOCK, &c) == 0);
    tap_eq_u64(lock_bytes_held(path), HELD_RW, "lock: -U opens take none");
    io_close(b);
    io_close(c);
    tap_eq_u64(lock_bytes_held(path), HELD_RW, "lock: -U close drops none");
    io_close(a);
    tap_eq_u64(lock_bytes_held(path), 0, "lock: close releases");
    TAP_OK(io_file_open(path, IO_RDWR | IO_NO_LOCK, &c) == 0);
    tap_eq_u64(lock_bytes_held(path), 0, "lock: -U holds nothing");
    io_close(c);

    TAP_OK(io_file_open(path, 0, &a) == 0);
    tap_eq_u64(lock_bytes_held(path), HELD_RO, "lock: RO holds 100,201,203");
    TAP_OK(io_file_open(path, 0, &b) == 0);
    tap_ok(1, "lock: RO then RO succeeds");
    TAP_OK(io_file_open(path, IO_RDWR, &c) == -EAGAIN);
    tap_eq_str(first_line(qimg_get_error()), "Failed to get \"write\" lock",
               "lock: RO then RW fails");
    TAP_OK(io_file_open(path, IO_CREATE | IO_TRUNC, &c) == -EAGAIN);
    tap_eq_u64(lock_bytes_held(path), HELD_RO,
               "lock: failed opens leave no bytes behind");
    tap_eq_u64((uint64_t)io_get_size(a), 4,
               "lock: refused IO_TRUNC leaves the file alone");
    TAP_OK(io_file_open(path, IO_RDWR | IO_NO_LOCK, &c) == 0);
    io_close(c);

    /* a cannot become writable while b reads; nothing changes. */
    TAP_OK(a->ops->set_perm(a, RW_PERM, RW_UNSHARED) == -EAGAIN);
    tap_eq_str(first_line(qimg_get_error()), "Failed to get \"write\" lock",
               "lock: upgrade refused while another reads");
    TAP_OK(!a->writable);
    io_close(b);
    tap_eq_u64(lock_bytes_held(path), HELD_RO, "lock: failed upgrade keeps RO");

    /* Alone, a can: it reopens read-write and holds the RW bytes. */
    TAP_OK(a->ops->set_perm(a, RW_PERM, RW_UNSHARED) == 0);
    TAP_OK(a->writable);
    tap_eq_u64(lock_bytes_held(path), HELD_RW, "lock: upgrade takes RW bytes");
    TAP_OK(io_pwrite(a, "abc", 3, 0) == 0);
    TAP_OK(io_file_open(path, 0, &b) == -EAGAIN);

    /* And back: readers are welcome again. */
    TAP_OK(a->ops->set_perm(a, RO_PERM, RW_UNSHARED) == 0);
    TAP_OK(!a->writable);
    tap_eq_u64(lock_bytes_held(path), HELD_RO, "lock: downgrade drops bytes");
    TAP_OK(io_file_open(path, 0, &b) == 0);
    TAP_OK(io_file_open(path, 0, &d) == 0);
    io_close(d);
    /* Second upgrade path: the descriptor is already read-write. */
    TAP_OK(a->ops->set_perm(a, RW_PERM, RW_UNSHARED) == -EAGAIN);
    io_close(b);
    TAP_OK(a->ops->set_perm(a, RW_PERM, RW_UNSHARED) == 0);
    tap_eq_u64(lock_bytes_held(path), HELD_RW, "lock: re-upgrade in place");
    io_close(a);
    TAP_OK(io_file_open(path, IO_RDWR, &a) == 0);
    io_close(a);
}

static void cleanup(void)
{
    static const char *const names[] = {"exists", "data", "locked", "vec"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        unlink(tmp_path(names[i]));
    }
    rmdir(tmpdir);
}

/* io_pwritev: the file leaf's pwritev and the one-by-one fallback. */
static void test_pwritev_on(struct qimg_io *io, const char *what)
{
    uint8_t a[5000], c[3];
    memset(a, 0x11, sizeof(a));
    memset(c, 0x33, sizeof(c));
    struct iovec iov[4] = {
        {a, sizeof(a)}, {c, 0}, {c, sizeof(c)}, {a, 100},
    };
    /* Past the end: the gap before reads zero. */
    char msg[128];
    snprintf(msg, sizeof(msg), "%s: pwritev of 4 buffers", what);
    tap_ok(io_pwritev(io, iov, 4, 1000) == 0, msg);
    uint8_t buf[7000];
    memset(buf, 0xee, sizeof(buf));
    int ret = io_pread(io, buf, 1000 + 5103, 0);
    snprintf(msg, sizeof(msg), "%s: pwritev wrote the buffers back to back",
             what);
    tap_ok(ret == 0 && all_bytes(buf, 1000, 0) &&
               all_bytes(buf + 1000, 5000, 0x11) &&
               all_bytes(buf + 6000, 3, 0x33) &&
               all_bytes(buf + 6003, 100, 0x11),
           msg);
    snprintf(msg, sizeof(msg), "%s: size after pwritev", what);
    tap_eq_u64((uint64_t)io_get_size(io), 6103, msg);
}

static void test_pwritev(void)
{
    struct qimg_io *io;
    TAP_OK(io_file_open(tmp_path("vec"), IO_CREATE, &io) == 0);
    test_pwritev_on(io, "file");
    struct iovec many[IO_IOV_MAX + 1];
    uint8_t b = 1;
    for (int i = 0; i <= IO_IOV_MAX; i++) {
        many[i] = (struct iovec){&b, 1};
    }
    tap_ok(io_pwritev(io, many, IO_IOV_MAX + 1, 0) == -EINVAL,
           "file: pwritev refuses more than IO_IOV_MAX buffers");
    tap_ok(io_pwritev(io, many, IO_IOV_MAX, 0) == 0,
           "file: pwritev of IO_IOV_MAX buffers");
    io_close(io);
    TAP_OK(io_mem_open("vec", NULL, 0, IO_RDWR, &io) == 0);
    test_pwritev_on(io, "mem");
    io_close(io);
}

/* ---- io_flush syncs only what changed --------------------------------- */

static const struct qimg_io_ops *inner_ops;
static int flushes;
static int flush_result;

static int counting_flush(struct qimg_io *io)
{
    flushes++;
    return flush_result != 0 ? flush_result : inner_ops->flush(io);
}

static void test_flush_skips(void)
{
    struct qimg_io *io;
    TAP_OK(io_mem_open("flush", NULL, 0, IO_RDWR, &io) == 0);
    inner_ops = io->ops;
    struct qimg_io_ops counting = *io->ops;
    counting.flush = counting_flush;
    io->ops = &counting;
    uint8_t b = 7;
    struct iovec v = {&b, 1};

    tap_ok(io_flush(io) == 0 && flushes == 1,
           "flush: the first flush of a handle syncs");
    tap_ok(io_flush(io) == 0 && flushes == 1,
           "flush: nothing changed since, nothing synced");
    tap_ok(io_pwrite(io, &b, 1, 0) == 0 && io_flush(io) == 0 &&
               flushes == 2, "flush: after a pwrite it syncs");
    tap_ok(io_pwritev(io, &v, 1, 1) == 0 && io_flush(io) == 0 &&
               flushes == 3, "flush: after a pwritev it syncs");
    tap_ok(io_pwrite_zeroes(io, 0, 1, false) == 0 && io_flush(io) == 0 &&
               flushes == 4, "flush: after a zero write it syncs");
    tap_ok(io_truncate(io, 4096) == 0 && io_flush(io) == 0 && flushes == 5,
           "flush: after a truncate it syncs");
    tap_ok(io_allocate(io, 0, 8192) == 0 && io_flush(io) == 0 &&
               flushes == 6, "flush: after an allocation it syncs");
    tap_ok(io_discard(io, 0, 4096) == 0 && io_flush(io) == 0 &&
               flushes == 7, "flush: after a discard it syncs");
    tap_ok(io_pwrite(io, &b, 1, 0) == 0, "flush: write before a failure");
    flush_result = -EIO;
    tap_ok(io_flush(io) == -EIO && flushes == 8, "flush: a failed sync");
    flush_result = 0;
    tap_ok(io_flush(io) == 0 && flushes == 9,
           "flush: after a failed sync the next flush syncs again");
    tap_ok(io_flush(io) == 0 && flushes == 9,
           "flush: and then nothing is left to sync");
    io->ops = inner_ops;
    io_close(io);
}

int main(void)
{
    test_mem();
    test_flush_skips();
    if (!mkdtemp(tmpdir)) {
        tap_ok(0, "mkdtemp");
        return tap_done();
    }
    test_file_errors();
    test_file_io();
    test_pwritev();
    test_locking();
    cleanup();
    return tap_done();
}
