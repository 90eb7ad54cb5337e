/*
 * libFuzzer target for the vpc (VHD) read path: the input is a VHD image
 * held in memory, opened as vpc (so fixed images, which do not probe, are
 * covered too).  The work is done by the shared loop in fuzz_common.c.
 */
#include "fuzz_common.h"

static const struct fuzz_target target_vpc = {
    .format = "vpc",
    .writes = true,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_image(&target_vpc, data, size);
    return 0;
}
