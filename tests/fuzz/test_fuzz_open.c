/*
 * The fuzz targets' open path: images opened over a memory leaf with
 * image_open_leaf() refuse the backing and data files they name under
 * QIMG_OPEN_NO_EXTERNAL, and read their own layer alone with
 * QIMG_OPEN_NO_BACKING.  Uses the committed seeds (made by qemu-img,
 * see make_corpus.sh --tiny):
 *   corpus/qcow2/backing-cs512.qcow2   backing base.qcow2, 0x56 at 1k..2k
 *   corpus/qcow2/datafile-cs512.qcow2  data file data.raw, 64 KiB
 *   corpus/qcow2/v2-cs512.qcow2        0x11 at 0..512, 4 MiB
 * and regressions whose error is checked here:
 *   regress/qcow2/v2-zero-flag.qcow2   v2-cs512 with the zero flag in L2
 *                                      entry 2 (qemu-io: read fails, EIO)
 *
 *   test_fuzz_open FUZZ_SRC_DIR
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/image.h"
#include "driver.h"
#include "qimg/qimg.h"
#include "tap.h"

static const char *srcdir;

/* Open a seed as an image over a memory leaf; 0 or -errno. */
static int open_seed(const char *name, const char *format, unsigned flags,
                     struct qimg_image **img)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", srcdir, name);
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return -ENOENT;
    }
    static uint8_t buf[1 << 20];
    size_t n = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    struct qimg_io *io;
    int ret = io_mem_open(name, buf, n, 0, &io);
    if (ret < 0) {
        return ret;
    }
    return image_open_leaf(io, format, flags, img);
}

static bool all_bytes(const uint8_t *p, size_t n, uint8_t v)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] != v) {
            return false;
        }
    }
    return true;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s FUZZ_SRC_DIR\n", argv[0]);
        return 2;
    }
    srcdir = argv[1];
    const unsigned untrusted = QIMG_OPEN_NO_EXTERNAL | QIMG_OPEN_FORCE_SHARE;
    struct qimg_image *img = NULL;
    uint8_t buf[4096];

    /* A backing file name is refused, not looked up. */
    int ret =
        open_seed("corpus/qcow2/backing-cs512.qcow2", "qcow2", untrusted, &img);
    tap_eq_u64((uint64_t)-ret, EPERM, "backing file refused with EPERM");
    TAP_OK(img == NULL);
    tap_eq_str(qimg_get_error(),
               "Could not open backing file: the image names backing file "
               "'base.qcow2' and external references are refused",
               "backing refusal message");

    /* This layer alone: its data, zeros elsewhere. */
    ret = open_seed("corpus/qcow2/backing-cs512.qcow2", "qcow2",
                    untrusted | QIMG_OPEN_NO_BACKING, &img);
    TAP_OK(ret == 0 && img != NULL);
    if (img) {
        tap_eq_str(qimg_get_format(img), "qcow2", "format");
        tap_eq_u64((uint64_t)qimg_get_size(img), 65536, "size");
        TAP_OK(img->top->backing == NULL);
        TAP_OK(qimg_pread(img, buf, 2048, 0) == 0);
        TAP_OK(all_bytes(buf, 1024, 0) && all_bytes(buf + 1024, 1024, 0x56));
        struct qimg_extent e;
        TAP_OK(qimg_block_status(img, 0, 65536, &e) == 0);
        tap_eq_u64(e.length, 1024, "unallocated run before the data");
        TAP_OK(e.flags == QIMG_EXTENT_ZERO);
        TAP_OK(qimg_close(img) == 0);
        img = NULL;
    }

    /* A data file name is refused too, even with no backing wanted. */
    ret = open_seed("corpus/qcow2/datafile-cs512.qcow2", "qcow2",
                    untrusted | QIMG_OPEN_NO_BACKING, &img);
    tap_eq_u64((uint64_t)-ret, EPERM, "data file refused with EPERM");
    tap_eq_str(qimg_get_error(),
               "Could not open data file: the image names data file "
               "'data.raw' and external references are refused",
               "data file refusal message");
    /* ... while a metadata-only open (info) never needs it. */
    ret = open_seed("corpus/qcow2/datafile-cs512.qcow2", "qcow2",
                    untrusted | QIMG_OPEN_NO_BACKING | QIMG_OPEN_NO_IO, &img);
    TAP_OK(ret == 0 && img != NULL);
    if (img) {
        struct qimg_image_info *info = qimg_get_info(img);
        TAP_OK(info != NULL);
        qimg_image_info_free(info);
        qimg_close(img);
        img = NULL;
    }

    /* Probing over a leaf, and an unknown format. */
    ret = open_seed("corpus/qcow2/v2-cs512.qcow2", NULL, untrusted, &img);
    TAP_OK(ret == 0 && img != NULL);
    if (img) {
        tap_eq_str(qimg_get_format(img), "qcow2", "probed qcow2");
        TAP_OK(qimg_pread(img, buf, 512, 0) == 0 && all_bytes(buf, 512, 0x11));
        qimg_close(img);
        img = NULL;
    }
    ret = open_seed("corpus/qcow2/v2-cs512.qcow2", "nosuch", untrusted, &img);
    tap_eq_u64((uint64_t)-ret, EINVAL, "unknown format");
    tap_eq_str(qimg_get_error(), "Unknown driver 'nosuch'",
               "unknown format message");

    /*
     * [spec] the zero flag must be 0 in v2 images; QEMU reads them as
     * corrupt (EIO), qimg too, and the run before the entry is fine.
     */
    ret =
        open_seed("regress/qcow2/v2-zero-flag.qcow2", "qcow2", untrusted, &img);
    TAP_OK(ret == 0 && img != NULL);
    if (img) {
        struct qimg_extent e;
        TAP_OK(qimg_block_status(img, 0, 4096, &e) == 0);
        tap_eq_u64(e.length, 512, "v2: the data cluster before the entry");
        TAP_OK(qimg_pread(img, buf, 512, 1024) < 0);
        tap_eq_u64((uint64_t)qimg_get_errno(), EIO, "v2 zero flag: EIO");
        tap_eq_str(qimg_get_error(),
                   "qcow2: image 'regress/qcow2/v2-zero-flag.qcow2' is "
                   "corrupt: zero cluster entry found in pre-v3 image (L2 "
                   "offset 0xa00, L2 index 0x2)",
                   "v2 zero flag message");
        TAP_OK(qimg_block_status(img, 1024, 512, &e) < 0);
        qimg_close(img);
        img = NULL;
    }
    return tap_done();
}
