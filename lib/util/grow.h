/*
 * Arrays that grow one element at a time, by doubling: n appends cost
 * O(n) bytes copied in all.  Growing by one (realloc to count + 1) is
 * quadratic wherever realloc copies, which ASan's allocator always does
 * and others do without mremap; where an image decides the count (qcow2
 * header extensions, vmdk extents) that was minutes of CPU per open.
 * Arrays that grow by one stay only where a small named limit bounds
 * them (secrets, a backing chain's infos, the CLI's --image-opts specs).
 */
#ifndef QIMG_UTIL_GROW_H
#define QIMG_UTIL_GROW_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

/*
 * Room for need elements of elem bytes: items itself while *cap holds
 * them, else items reallocated to at least twice *cap (8 at first) with
 * *cap updated.  NULL when out of memory or the size overflows; then
 * items and *cap are unchanged and still owned by the caller.
 */
static inline void *grow_array(void *items, size_t *cap, size_t need,
                               size_t elem)
{
    if (need <= *cap) {
        return items;
    }
    size_t n = *cap > SIZE_MAX / 2 ? SIZE_MAX : *cap * 2;
    if (n < 8) {
        n = 8;
    }
    if (n < need) {
        n = need;
    }
    if (elem != 0 && n > SIZE_MAX / elem) {
        return NULL;
    }
    void *p = realloc(items, n * elem);
    if (p) {
        *cap = n;
    }
    return p;
}

#endif
