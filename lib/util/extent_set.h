/*
 * A set of byte ranges of a file: where a format keeps its metadata.
 *
 * Formats without qcow2's refcounts cannot tell from one table entry
 * whether the cluster it names is guest data; a damaged or hostile table
 * may name the header, the L1 table or another table.  Before guest data
 * goes into a cluster the image already had, its range is looked up
 * here, and a hit refuses the write: the image is corrupt, and writing
 * would destroy its metadata (QEMU writes there for these formats).
 *
 * Ranges are added in any order; a lookup sorts and merges them first
 * if they came out of order (tables a format allocates go at the end of
 * the file, so appends usually keep the set sorted).  Each range costs
 * 16 bytes: formats add one per table entry at most, so the set is
 * bounded by the table limits that already bound their tables.
 */
#ifndef QIMG_UTIL_EXTENT_SET_H
#define QIMG_UTIL_EXTENT_SET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct extent {
    uint64_t start, end; /* [start, end); end saturates at UINT64_MAX */
};

struct extent_set {
    struct extent *v;
    size_t n, cap;
    bool sorted; /* v is sorted by start and its ranges are disjoint */
};

/* [start, start + len) joins the set (nothing for len 0); -ENOMEM. */
int extent_set_add(struct extent_set *set, uint64_t start, uint64_t len);

/* Whether [start, start + len) shares a byte with the set. */
bool extent_set_overlaps(struct extent_set *set, uint64_t start, uint64_t len);

void extent_set_free(struct extent_set *set);

#endif
