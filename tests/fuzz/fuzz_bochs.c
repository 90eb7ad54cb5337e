/*
 * libFuzzer target for the bochs read path: the input is a Bochs image held
 * in memory.  The work is done by the shared loop in fuzz_common.c.
 */
#include "fuzz_common.h"

static const struct fuzz_target target_bochs = {
    .format = "bochs",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_image(&target_bochs, data, size);
    return 0;
}
