/*
 * libFuzzer target for the cloop read path: the input is a cloop image held
 * in memory.  The work is done by the shared loop in fuzz_common.c.
 */
#include "fuzz_common.h"

static const struct fuzz_target target_cloop = {
    .format = "cloop",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_image(&target_cloop, data, size);
    return 0;
}
