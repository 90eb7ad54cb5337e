#include "util/extent_set.h"

#include <errno.h>
#include <stdlib.h>

#include "util/grow.h"

static uint64_t range_end(uint64_t start, uint64_t len)
{
    return len > UINT64_MAX - start ? UINT64_MAX : start + len;
}

int extent_set_add(struct extent_set *set, uint64_t start, uint64_t len)
{
    if (len == 0) {
        return 0;
    }
    uint64_t end = range_end(start, len);
    if (set->n > 0) {
        struct extent *last = &set->v[set->n - 1];
        if (set->sorted && start <= last->end && start >= last->start) {
            /* Touches the last range: the common append of a table
             * right after the previous one. */
            last->end = end > last->end ? end : last->end;
            return 0;
        }
    }
    struct extent *v = grow_array(set->v, &set->cap, set->n + 1, sizeof(*v));
    if (!v) {
        return -ENOMEM;
    }
    set->v = v;
    bool in_order = set->n == 0 || (set->sorted && start > v[set->n - 1].end);
    v[set->n++] = (struct extent){start, end};
    set->sorted = in_order;
    return 0;
}

static int by_start(const void *a, const void *b)
{
    const struct extent *x = a, *y = b;
    return x->start < y->start ? -1 : x->start > y->start;
}

/* Sort, then merge overlapping and touching ranges. */
static void normalize(struct extent_set *set)
{
    qsort(set->v, set->n, sizeof(*set->v), by_start);
    size_t out = 0;
    for (size_t i = 0; i < set->n; i++) {
        if (out > 0 && set->v[i].start <= set->v[out - 1].end) {
            if (set->v[i].end > set->v[out - 1].end) {
                set->v[out - 1].end = set->v[i].end;
            }
        } else {
            set->v[out++] = set->v[i];
        }
    }
    set->n = out;
    set->sorted = true;
}

bool extent_set_overlaps(struct extent_set *set, uint64_t start, uint64_t len)
{
    if (len == 0 || set->n == 0) {
        return false;
    }
    if (!set->sorted) {
        normalize(set);
    }
    uint64_t end = range_end(start, len);
    /* The first range ending after start: it overlaps if it begins
     * before end. */
    size_t lo = 0, hi = set->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (set->v[mid].end <= start) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo < set->n && set->v[lo].start < end;
}

void extent_set_free(struct extent_set *set)
{
    free(set->v);
    *set = (struct extent_set){0};
}
