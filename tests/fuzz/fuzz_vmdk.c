/*
 * libFuzzer target for the vmdk read path: the input is a vmdk image
 * (a hosted sparse or stream-optimized file, or a descriptor, whose
 * extents the shared loop's no-external-references open refuses) held in
 * memory.  The work is done by the shared loop in fuzz_common.c.
 */
#include "fuzz_common.h"

static const struct fuzz_target target_vmdk = {
    .format = "vmdk",
    .writes = true,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_image(&target_vmdk, data, size);
    return 0;
}
