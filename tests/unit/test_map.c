/*
 * The map and compare calls on raw files: the contracts of
 * qimg_map_next (end clamped, empty windows, merged runs, offsets and
 * file names) and of qimg_compare (outcomes, strict mode, the size
 * callback, progress steps summing to the larger size, open failures).
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qimg/qimg.h"
#include "tap.h"

static char dir[] = "/tmp/qimg-test-map.XXXXXX";

static char *path(const char *name)
{
    static char buf[4][256];
    static int n;
    char *b = buf[n++ % 4];
    snprintf(b, sizeof(buf[0]), "%s/%s", dir, name);
    return b;
}

/* A sparse file of size bytes with one 4 KiB block of 0x5a at data_at. */
static void make_file(const char *name, size_t size, long data_at)
{
    int fd = open(path(name), O_CREAT | O_TRUNC | O_WRONLY, 0644);
    if (fd < 0) {
        perror("open");
        return;
    }
    if (ftruncate(fd, (off_t)size) < 0) {
        perror("ftruncate");
    }
    if (data_at >= 0) {
        char block[4096];
        memset(block, 0x5a, sizeof(block));
        if (pwrite(fd, block, sizeof(block), data_at) != sizeof(block)) {
            perror("pwrite");
        }
    }
    close(fd);
}

static uint64_t steps, step_total, step_calls;
static int size_calls;

static void on_progress(uint64_t step, uint64_t total, void *opaque)
{
    (void)opaque;
    steps += step;
    step_total = total;
    step_calls++;
}

static void on_size(void *opaque)
{
    (void)opaque;
    size_calls++;
}

static int compare(const char *a, const char *b, bool strict,
                   struct qimg_compare_outcome *out)
{
    struct qimg_compare_params p = {
        .filename1 = path(a),
        .format1 = "raw",
        .filename2 = path(b),
        .format2 = "raw",
        .strict = strict,
        .progress = on_progress,
        .size_mismatch = on_size,
    };
    steps = step_total = step_calls = 0;
    size_calls = 0;
    return qimg_compare(&p, out);
}

int main(void)
{
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    make_file("a.raw", 1 << 20, 65536);
    make_file("b.raw", 1 << 20, 65536);
    make_file("c.raw", 2 << 20, 65536);
    make_file("d.raw", 1 << 20, -1);

    struct qimg_image *img = qimg_open(path("a.raw"), "raw", 0);
    TAP_OK(img != NULL);
    struct qimg_map_entry e;

    /* Hole, data, hole: three entries covering the file. */
    TAP_OK(qimg_map_next(img, 0, UINT64_MAX, &e) == 1);
    tap_eq_u64(e.length, 65536, "hole up to the data");
    TAP_OK(e.zero && !e.data && e.present && e.has_offset);
    tap_eq_str(e.filename, path("a.raw"), "file name of the run");
    TAP_OK(qimg_map_next(img, 65536, UINT64_MAX, &e) == 1);
    TAP_OK(e.data && !e.zero && e.offset == 65536);
    tap_eq_u64(e.length, 4096, "data block");
    TAP_OK(qimg_map_next(img, 69632, UINT64_MAX, &e) == 1);
    tap_eq_u64(e.start + e.length, 1 << 20, "end clamped to the size");
    /* A window cuts entries; an empty window has none. */
    TAP_OK(qimg_map_next(img, 1000, 3000, &e) == 1);
    tap_eq_u64(e.length, 2000, "window end");
    tap_eq_u64(e.offset, 1000, "offset of an unaligned start");
    TAP_OK(qimg_map_next(img, 3000, 3000, &e) == 0);
    TAP_OK(qimg_map_next(img, 5 << 20, UINT64_MAX, &e) == 0);
    TAP_OK(qimg_map_next(NULL, 0, 1, &e) == -1);
    qimg_close(img);

    struct qimg_compare_outcome out;
    TAP_OK(compare("a.raw", "b.raw", false, &out) == 0);
    TAP_OK(out.result == QIMG_COMPARE_IDENTICAL);
    tap_eq_u64(steps, 1 << 20, "progress steps cover the image");
    tap_eq_u64(step_total, 1 << 20, "progress total");
    TAP_OK(step_calls >= 2);
    TAP_OK(compare("a.raw", "b.raw", true, &out) == 0);
    TAP_OK(out.result == QIMG_COMPARE_IDENTICAL);

    /* A larger image with a zero tail: identical after the callback. */
    TAP_OK(compare("a.raw", "c.raw", false, &out) == 0);
    TAP_OK(out.result == QIMG_COMPARE_IDENTICAL);
    tap_eq_u64(size_calls, 1, "size mismatch reported once");
    tap_eq_u64(steps, 2 << 20, "progress covers the larger image");
    TAP_OK(compare("c.raw", "a.raw", true, &out) == 0);
    TAP_OK(out.result == QIMG_COMPARE_SIZE_MISMATCH);
    tap_eq_u64(size_calls, 0, "strict mode has no warning");

    /* Data against a hole: the data's first sector. */
    TAP_OK(compare("a.raw", "d.raw", false, &out) == 0);
    TAP_OK(out.result == QIMG_COMPARE_CONTENT_MISMATCH);
    tap_eq_u64(out.offset, 65536, "mismatch offset");
    TAP_OK(compare("d.raw", "a.raw", true, &out) == 0);
    TAP_OK(out.result == QIMG_COMPARE_STATUS_MISMATCH);
    tap_eq_u64(out.offset, 0, "status mismatch offset");

    /* Open failures say so. */
    TAP_OK(compare("a.raw", "none.raw", false, &out) == -1);
    tap_eq_u64((uint64_t)out.failure, QIMG_COMPARE_FAIL_OPEN, "open failure");
    TAP_OK(strstr(qimg_get_error(), "none.raw") != NULL);

    const char *names[] = {"a.raw", "b.raw", "c.raw", "d.raw"};
    for (size_t i = 0; i < 4; i++) {
        unlink(path(names[i]));
    }
    rmdir(dir);
    return tap_done();
}
