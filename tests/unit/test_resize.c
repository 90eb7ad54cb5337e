/*
 * qimg_resize through the public API on raw files: the core's checks
 * (shrink flag, size limit, read-only images), the raw driver's resize
 * (exact file length, sector-rounded guest size, data kept, new area
 * zero), preallocation of the new area, and refused modes leaving the
 * file as it was.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qimg/qimg.h"
#include "tap.h"

static char dir[] = "/tmp/qimg-test-resize.XXXXXX";

static char *path(const char *name)
{
    static char buf[256];
    snprintf(buf, sizeof(buf), "%s/%s", dir, name);
    return buf;
}

static void make_file(const char *name, size_t size)
{
    int fd = open(path(name), O_CREAT | O_TRUNC | O_WRONLY, 0644);
    if (fd >= 0) {
        if (ftruncate(fd, (off_t)size) < 0) {
            perror("ftruncate");
        }
        close(fd);
    }
}

static int64_t file_length(const char *name)
{
    struct stat st;
    return stat(path(name), &st) == 0 ? (int64_t)st.st_size : -1;
}

static int64_t file_allocated(const char *name)
{
    struct stat st;
    return stat(path(name), &st) == 0 ? (int64_t)st.st_blocks * 512 : -1;
}

/* Does the image read as byte c over [off, off + len)? */
static int reads_as(struct qimg_image *img, uint64_t off, size_t len, int c)
{
    uint8_t *buf = malloc(len);
    int same = buf && qimg_pread(img, buf, len, off) == 0;
    for (size_t i = 0; same && i < len; i++) {
        same = buf[i] == (uint8_t)c;
    }
    free(buf);
    return same;
}

int main(void)
{
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    make_file("a.raw", 1 << 20);

    struct qimg_image *img = qimg_open(path("a.raw"), "raw", QIMG_OPEN_RDWR);
    TAP_OK(img != NULL);
    uint8_t data[4096];
    memset(data, 0x5a, sizeof(data));
    TAP_OK(qimg_pwrite(img, data, sizeof(data), (1 << 20) - 4096) == 0);

    /* Growing: exact file length, guest size in whole sectors. */
    TAP_OK(qimg_resize(img, (2 << 20) + 100, NULL, 0) == 0);
    tap_eq_u64((uint64_t)file_length("a.raw"), (2 << 20) + 100,
               "file grown to the exact length");
    tap_eq_u64((uint64_t)qimg_get_size(img), (2 << 20) + 512,
               "guest size rounded up to a sector");
    TAP_OK(reads_as(img, (1 << 20) - 4096, 4096, 0x5a));
    TAP_OK(reads_as(img, 1 << 20, 1 << 20, 0));

    /* Shrinking needs the flag; nothing changes without it. */
    TAP_OK(qimg_resize(img, 1 << 20, NULL, 0) == -1);
    tap_eq_u64((uint64_t)qimg_get_errno(), EINVAL, "shrink refused");
    tap_eq_u64((uint64_t)file_length("a.raw"), (2 << 20) + 100,
               "refused shrink keeps the length");
    TAP_OK(qimg_resize(img, 1 << 20, "off", QIMG_RESIZE_SHRINK) == 0);
    tap_eq_u64((uint64_t)qimg_get_size(img), 1 << 20, "shrunk");
    TAP_OK(reads_as(img, (1 << 20) - 4096, 4096, 0x5a));
    /* The guest sees its new size at once: reads past it fail. */
    TAP_OK(qimg_pread(img, data, 512, 1 << 20) == -1);

    /* QEMU's block layer limit: INT64_MAX rounded down to 1 GiB. */
    TAP_OK(qimg_resize(img, UINT64_C(0x7fffffffc0000001), NULL, 0) == -1);
    tap_eq_str(qimg_get_error(),
               "offset(9223372035781033985) exceeds "
               "maximum(9223372035781033984)",
               "size limit message");
    TAP_OK(qimg_resize(img, UINT64_MAX, NULL, 0) == -1);

    /* Modes: metadata is not a raw file's, unknown names fail alike. */
    TAP_OK(qimg_resize(img, 2 << 20, "metadata", 0) == -1);
    tap_eq_str(qimg_get_error(), "Unsupported preallocation mode: metadata",
               "metadata refused");
    TAP_OK(qimg_resize(img, 2 << 20, "bogus", 0) == -1);
    tap_eq_u64((uint64_t)file_length("a.raw"), 1 << 20,
               "refused modes keep the length");
    TAP_OK(qimg_resize(img, 1 << 19, "full", QIMG_RESIZE_SHRINK) == -1);
    tap_eq_str(qimg_get_error(),
               "Cannot use preallocation for shrinking "
               "files",
               "preallocated shrink refused");

    /* falloc and full allocate the new area; off leaves a hole. */
    int64_t before = file_allocated("a.raw");
    TAP_OK(qimg_resize(img, 2 << 20, "off", 0) == 0);
    TAP_OK(file_allocated("a.raw") == before);
    TAP_OK(qimg_resize(img, 3 << 20, "falloc", 0) == 0);
    TAP_OK(file_allocated("a.raw") >= before + (1 << 20));
    TAP_OK(qimg_resize(img, 4 << 20, "full", 0) == 0);
    TAP_OK(file_allocated("a.raw") >= before + (2 << 20));
    TAP_OK(reads_as(img, 1 << 20, 3 << 20, 0));
    TAP_OK(qimg_close(img) == 0);

    /* An image opened read-only cannot be resized. */
    img = qimg_open(path("a.raw"), "raw", 0);
    TAP_OK(img != NULL);
    TAP_OK(qimg_resize(img, 8 << 20, NULL, 0) == -1);
    tap_eq_u64((uint64_t)qimg_get_errno(), EACCES, "read-only refused");
    TAP_OK(qimg_close(img) == 0);
    tap_eq_u64((uint64_t)file_length("a.raw"), 4 << 20,
               "read-only image unchanged");

    /* From empty: the first sector becomes data, as QEMU's file driver. */
    make_file("e.raw", 0);
    img = qimg_open(path("e.raw"), "raw", QIMG_OPEN_RDWR);
    TAP_OK(img != NULL);
    TAP_OK(qimg_resize(img, 100, NULL, 0) == 0);
    tap_eq_u64((uint64_t)file_length("e.raw"), 512, "first sector written");
    TAP_OK(qimg_close(img) == 0);

    unlink(path("a.raw"));
    unlink(path("e.raw"));
    rmdir(dir);
    return tap_done();
}
