/*
 * libFuzzer target for the qcow (version 1) read path: the input is a
 * qcow image held in memory.  The work is done by the shared loop in
 * fuzz_common.c.
 */
#include "fuzz_common.h"

static const struct fuzz_target target_qcow = {
    .format = "qcow",
    .writes = true,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_image(&target_qcow, data, size);
    return 0;
}
