/*
 * libFuzzer target for the parallels read path and check: the input is a
 * Parallels image held in memory; small inputs are also repaired (check
 * -r all, which opens read-write: the in-use mark, BAT fixes, the
 * truncation at close).  The work is done by the shared loop in
 * fuzz_common.c.
 */
#include "fuzz_common.h"

static const struct fuzz_target target_parallels = {
    .format = "parallels",
    .repair = true,
    .writes = true,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_image(&target_parallels, data, size);
    return 0;
}
