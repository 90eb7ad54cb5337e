/*
 * libFuzzer target for the dmg read path: the input is a dmg (UDIF) image held
 * in memory.  The work is done by the shared loop in fuzz_common.c.
 */
#include "fuzz_common.h"

static const struct fuzz_target target_dmg = {
    .format = "dmg",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_image(&target_dmg, data, size);
    return 0;
}
