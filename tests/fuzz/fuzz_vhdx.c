/*
 * libFuzzer target for the vhdx read path and log replay.  A vhdx image
 * places its structures at MiB offsets, so inputs are compact: the
 * windows below, concatenated, are laid out at their offsets in a 4 MiB
 * image (QEMU's layout: log at 1 MiB, BAT at 2 MiB, metadata at 3 MiB),
 * and the rest of the input follows at 4 MiB, where the payload blocks
 * begin.  The image then goes through the shared loop (fuzz_common.c),
 * whose writes step opens it read-write, which replays a log when there
 * is one, and then takes a few guest writes.
 * tests/compat/vhdx_tool.py compact makes inputs.
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"

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
    /* Its writable open replays a log that needs it, then writes. */
    .writes = true,
};

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
    free(img);
    return 0;
}
