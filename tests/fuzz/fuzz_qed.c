/*
 * libFuzzer target for the qed read path: the input is a QED image held
 * in memory.  The work is done by the shared loop in fuzz_common.c.
 */
#include "fuzz_common.h"

static const struct fuzz_target target_qed = {
    .format = "qed",
    .writes = true,
    .writes_checked = true,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_image(&target_qed, data, size);
    return 0;
}
