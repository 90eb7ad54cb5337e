/*
 * libFuzzer target for the vhdx read path and log replay.  A vhdx image
 * places its structures at MiB offsets, so inputs are compact: the
 * windows below, concatenated, are laid out at their offsets in a 4 MiB
 * image (QEMU's layout: log at 1 MiB, BAT at 2 MiB, metadata at 3 MiB),
 * and the rest of the input follows at 4 MiB, where the payload blocks
 * begin.  The image then goes through the shared loop (fuzz_common.c),
 * and through a read-write open over a memory leaf, which replays a log
 * when there is one, then takes a few guest writes (fuzz_writes).
 * tests/compat/vhdx_tool.py compact makes inputs.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/image.h"
#include "driver.h"
#include "fuzz_common.h"
#include "qimg/qimg.h"

#define KiB 1024u
#define MiB (1024u * 1024u)

static const struct {
    size_t off, len;
} windows[] = {
    {0, 4 * KiB},               /* file identifier */
    {64 * KiB, 4 * KiB},        /* header 1 */
    {128 * KiB, 4 * KiB},       /* header 2 */
    {192 * KiB, 4 * KiB},       /* region table 1 (the rest reads zero) */
    {1 * MiB, 32 * KiB},        /* log */
    {2 * MiB, 4 * KiB},         /* BAT */
    {3 * MiB, 4 * KiB},         /* metadata table */
    {3 * MiB + 64 * KiB, 4 * KiB}, /* metadata items */
};
#define NWINDOWS (sizeof(windows) / sizeof(windows[0]))
#define PAYLOAD_OFFSET (4 * MiB)
/* The most payload bytes taken from one input. */
#define PAYLOAD_MAX (1 * MiB)

static const struct fuzz_target target_vhdx = {
    .format = "vhdx",
};

/*
 * Guest writes on the read-write open, when blocks are small enough that
 * allocating a few costs little: a write at the start and one in the
 * middle (allocations at the end of the file, BAT updates through the
 * log), a zero write over the first, each read back.  A write that
 * succeeds and reads back otherwise is a finding.
 */
#define WRITE_MAX_BLOCK (2 * MiB)
static void fuzz_writes(struct qimg_image *im)
{
    int64_t size = qimg_get_size(im);
    uint64_t bs = qimg_get_cluster_size(im);
    if (size < 4096 || bs == 0 || bs > WRITE_MAX_BLOCK) {
        return;
    }
    uint8_t buf[4096], back[4096];
    const uint64_t offs[2] = {0, (uint64_t)size / 2 & ~(uint64_t)4095};
    for (int i = 0; i < 2; i++) {
        if (offs[i] + sizeof(buf) > (uint64_t)size) {
            continue;
        }
        memset(buf, 0x5a + i, sizeof(buf));
        if (qimg_pwrite(im, buf, sizeof(buf), offs[i]) == 0 &&
            (qimg_pread(im, back, sizeof(back), offs[i]) != 0 ||
             memcmp(buf, back, sizeof(buf)) != 0)) {
            fprintf(stderr, "fuzz: vhdx write did not read back\n");
            abort();
        }
    }
    memset(buf, 0, sizeof(buf));
    if (qimg_pwrite_zeroes(im, 0, sizeof(buf), QIMG_ZERO_MAY_UNMAP) == 0 &&
        (qimg_pread(im, back, sizeof(back), 0) != 0 ||
         memcmp(buf, back, sizeof(buf)) != 0)) {
        fprintf(stderr, "fuzz: vhdx zero write did not read back\n");
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t used = 0;
    size_t end = 0;
    uint8_t *img = calloc(1, PAYLOAD_OFFSET + PAYLOAD_MAX);
    if (!img) {
        return 0;
    }
    for (size_t i = 0; i < NWINDOWS && used < size; i++) {
        size_t n = windows[i].len;
        if (n > size - used) {
            n = size - used;
        }
        memcpy(img + windows[i].off, data + used, n);
        used += n;
        end = windows[i].off + n;
    }
    if (used < size) {
        size_t n = size - used;
        if (n > PAYLOAD_MAX) {
            n = PAYLOAD_MAX;
        }
        memcpy(img + PAYLOAD_OFFSET, data + used, n);
        end = PAYLOAD_OFFSET + n;
    }
    fuzz_image(&target_vhdx, img, end);

    /* A writable open replays a log that needs it; then read a little. */
    struct qimg_io *io;
    if (io_mem_open("fuzz.vhdx", img, end, IO_RDWR, &io) == 0) {
        struct qimg_image *im;
        if (image_open_leaf(io, "vhdx", QIMG_OPEN_RDWR |
                                QIMG_OPEN_NO_EXTERNAL, &im) == 0) {
            uint8_t buf[4096];
            (void)qimg_pread(im, buf, sizeof(buf), 0);
            fuzz_writes(im);
            qimg_close(im);
        }
    }
    free(img);
    return 0;
}
