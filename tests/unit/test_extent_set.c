/*
 * extent_set: ranges added in and out of order, touching and nested,
 * and lookups at every edge of them.
 */
#include <stdint.h>

#include "tap.h"
#include "util/extent_set.h"

int main(void)
{
    struct extent_set set = {0};
    TAP_OK(!extent_set_overlaps(&set, 0, UINT64_MAX));

    /* Appends in order: [0, 512), [4096, 6144) touching [6144, 8192). */
    TAP_OK(extent_set_add(&set, 0, 512) == 0);
    TAP_OK(extent_set_add(&set, 4096, 2048) == 0);
    TAP_OK(extent_set_add(&set, 6144, 2048) == 0);
    TAP_OK(extent_set_add(&set, 100, 0) == 0);
    TAP_OK(set.sorted && set.n == 2);
    TAP_OK(extent_set_overlaps(&set, 0, 1));
    TAP_OK(extent_set_overlaps(&set, 511, 1));
    TAP_OK(!extent_set_overlaps(&set, 512, 3584));
    TAP_OK(extent_set_overlaps(&set, 512, 3585));
    TAP_OK(extent_set_overlaps(&set, 8191, 100));
    TAP_OK(!extent_set_overlaps(&set, 8192, 100));
    TAP_OK(!extent_set_overlaps(&set, 300, 0));

    /* Out of order, nested and overlapping: sorted at the next lookup. */
    TAP_OK(extent_set_add(&set, 2048, 512) == 0);
    TAP_OK(extent_set_add(&set, 2100, 10) == 0);
    TAP_OK(extent_set_add(&set, 2400, 400) == 0);
    TAP_OK(!set.sorted);
    TAP_OK(!extent_set_overlaps(&set, 1024, 1024));
    TAP_OK(set.sorted && set.n == 3);
    TAP_OK(extent_set_overlaps(&set, 2047, 2));
    TAP_OK(extent_set_overlaps(&set, 2799, 1));
    TAP_OK(!extent_set_overlaps(&set, 2800, 1296));

    /* Ranges that reach the top of the offsets saturate. */
    TAP_OK(extent_set_add(&set, UINT64_MAX - 10, 100) == 0);
    TAP_OK(extent_set_overlaps(&set, UINT64_MAX - 1, 1));
    TAP_OK(extent_set_overlaps(&set, UINT64_MAX - 20, UINT64_MAX));
    TAP_OK(!extent_set_overlaps(&set, 1u << 20, 1u << 20));

    /* Many appends, then a lookup between each pair. */
    extent_set_free(&set);
    for (uint64_t i = 0; i < 10000; i++) {
        extent_set_add(&set, (10000 - i) * 1024, 512);
    }
    int misses = 0;
    for (uint64_t i = 1; i <= 10000; i++) {
        misses += extent_set_overlaps(&set, i * 1024 + 512, 512);
        misses += !extent_set_overlaps(&set, i * 1024 + 511, 2);
    }
    TAP_OK(misses == 0 && set.n == 10000);
    extent_set_free(&set);
    TAP_OK(set.n == 0 && set.v == NULL);
    return tap_done();
}
