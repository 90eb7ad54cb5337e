/* same_bytes A B: exit 0 if the two files hold the same bytes, 1 if they
 * differ (in size or content), 2 on an error: "cmp -s A B", but without
 * reading the ranges that are holes in both files.  cmp reads a sparse
 * 5 GiB image through the kernel's zero fill (tens of seconds); here only
 * the ranges where either file has data are read.  A range that SEEK_HOLE
 * reports as a hole reads as zeros, so skipping one that is a hole in both
 * files cannot hide a difference.  Files that cannot seek by data (pipes,
 * file systems without SEEK_DATA) are compared as streams. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CHUNK (1 << 20)

static char buf_a[CHUNK], buf_b[CHUNK];

/* Read exactly len bytes at off (pread) or from the stream (off < 0);
 * returns the count read, short only at end of file, or -1. */
static ssize_t read_full(int fd, char *buf, size_t len, off_t off)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = off < 0 ? read(fd, buf + got, len - got)
                            : pread(fd, buf + got, len - got,
                                    off + (off_t)got);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    return (ssize_t)got;
}

static int compare_streams(int a, int b)
{
    for (;;) {
        ssize_t na = read_full(a, buf_a, CHUNK, -1);
        ssize_t nb = read_full(b, buf_b, CHUNK, -1);
        if (na < 0 || nb < 0)
            return 2;
        if (na != nb || memcmp(buf_a, buf_b, (size_t)na) != 0)
            return 1;
        if (na == 0)
            return 0;
    }
}

/* The end of the run of one kind (data or hole) that holds pos, and
 * whether it is data; -1 if SEEK_DATA/SEEK_HOLE do not work here. */
static int run_at(int fd, off_t pos, off_t size, off_t *end, int *data)
{
    off_t d = lseek(fd, pos, SEEK_DATA);
    if (d < 0) {
        if (errno != ENXIO)
            return -1;
        d = size; /* a hole up to the end */
    }
    if (d > pos) {
        *data = 0;
        *end = d;
        return 0;
    }
    off_t h = lseek(fd, pos, SEEK_HOLE);
    if (h < 0)
        return -1;
    *data = 1;
    *end = h;
    return 0;
}

static int compare_files(int a, int b, off_t size)
{
    off_t pos = 0;
    while (pos < size) {
        off_t end_a, end_b;
        int data_a, data_b;
        if (run_at(a, pos, size, &end_a, &data_a) < 0 ||
            run_at(b, pos, size, &end_b, &data_b) < 0)
            return -1;
        off_t end = end_a < end_b ? end_a : end_b;
        if (end > size)
            end = size;
        if (end <= pos)
            return -1; /* no progress: trust nothing, compare streams */
        if (data_a || data_b) {
            for (off_t at = pos; at < end;) {
                size_t len = end - at < CHUNK ? (size_t)(end - at) : CHUNK;
                ssize_t na = read_full(a, buf_a, len, at);
                ssize_t nb = read_full(b, buf_b, len, at);
                if (na < 0 || nb < 0)
                    return 2;
                if (na != nb || memcmp(buf_a, buf_b, (size_t)na) != 0)
                    return 1;
                if ((size_t)na < len)
                    return 1; /* shrank under us: not the same */
                at += (off_t)len;
            }
        }
        pos = end;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: same_bytes FILE_A FILE_B\n");
        return 2;
    }
    int a = open(argv[1], O_RDONLY);
    int b = open(argv[2], O_RDONLY);
    if (a < 0 || b < 0)
        return 2;
    struct stat sa, sb;
    if (fstat(a, &sa) < 0 || fstat(b, &sb) < 0)
        return 2;
    if (S_ISREG(sa.st_mode) && S_ISREG(sb.st_mode)) {
        if (sa.st_size != sb.st_size)
            return 1;
        int r = compare_files(a, b, sa.st_size);
        if (r >= 0)
            return r;
        if (lseek(a, 0, SEEK_SET) < 0 || lseek(b, 0, SEEK_SET) < 0)
            return 2;
    }
    return compare_streams(a, b);
}
