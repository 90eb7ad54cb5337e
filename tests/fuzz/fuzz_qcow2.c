/*
 * libFuzzer target for the qcow2 read path: the input is a qcow2 image
 * held in memory.  The work is done by the shared loop in fuzz_common.c.
 */
#include "fuzz_common.h"

static const struct fuzz_target target_qcow2 = {
    .format = "qcow2",
    .repair = true,
    .writes = true,
    .writes_checked = true,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_image(&target_qcow2, data, size);
    return 0;
}
