/*
 * libFuzzer target for the vdi read path: the input is a VDI image held
 * in memory.  The work is done by the shared loop in fuzz_common.c.
 */
#include "fuzz_common.h"

static const struct fuzz_target target_vdi = {
    .format = "vdi",
    .writes = true,
    .writes_checked = true,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_image(&target_vdi, data, size);
    return 0;
}
