/*
 * libFuzzer target for vmdk's seSparse extents, which an image reaches
 * only through a descriptor: the input is the extent file (const and
 * volatile headers, grain directory, grain tables, grains), written where
 * the fixed descriptor below names it.  fuzz_vmdk cannot get here, since
 * its opens refuse the external files a descriptor names.  The work is
 * done by the shared loop in fuzz_common.c.
 */
#include "fuzz_common.h"

/* The extent line's size is ignored: seSparse takes its header's. */
static const struct fuzz_target target_vmdk_sesparse = {
    .format = "vmdk",
    .descriptor = "# Disk DescriptorFile\n"
                  "version=1\n"
                  "CID=5eb0cafe\n"
                  "parentCID=ffffffff\n"
                  "createType=\"seSparse\"\n"
                  "\n"
                  "# Extent description\n"
                  "RW 8 SESPARSE \"" FUZZ_EXTENT_NAME "\"\n"
                  "\n"
                  "# The Disk Data Base\n"
                  "#DDB\n"
                  "\n"
                  "ddb.virtualHWVersion = \"14\"\n",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_image(&target_vmdk_sesparse, data, size);
    return 0;
}
