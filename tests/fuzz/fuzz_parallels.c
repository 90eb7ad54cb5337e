/*
 * libFuzzer target for the parallels read path: the input is a Parallels
 * image held in memory.  The work is done by the shared loop in
 * fuzz_common.c.
 */
#include "fuzz_common.h"

static const struct fuzz_target target_parallels = {
    .format = "parallels",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_image(&target_parallels, data, size);
    return 0;
}
