/*
 * Overflow-checked arithmetic for values that come from images.  Each
 * returns true when the result overflowed (and then *out is unspecified).
 */
#ifndef QIMG_UTIL_CHECKED_H
#define QIMG_UTIL_CHECKED_H

#include <stdbool.h>
#include <stdint.h>

static inline bool add_overflow_u64(uint64_t a, uint64_t b, uint64_t *out)
{
    return __builtin_add_overflow(a, b, out);
}

static inline bool mul_overflow_u64(uint64_t a, uint64_t b, uint64_t *out)
{
    return __builtin_mul_overflow(a, b, out);
}

/* Round up to a multiple of a power of two; true on overflow. */
static inline bool align_up_overflow_u64(uint64_t v, uint64_t pow2,
                                         uint64_t *out)
{
    uint64_t t;
    if (__builtin_add_overflow(v, pow2 - 1, &t)) {
        return true;
    }
    *out = t & ~(pow2 - 1);
    return false;
}

static inline uint64_t align_down_u64(uint64_t v, uint64_t pow2)
{
    return v & ~(pow2 - 1);
}

static inline bool is_aligned_u64(uint64_t v, uint64_t pow2)
{
    return (v & (pow2 - 1)) == 0;
}

/* Ceiling division of nonzero d; no overflow possible. */
static inline uint64_t div_round_up_u64(uint64_t n, uint64_t d)
{
    return n / d + (n % d != 0);
}

static inline uint64_t min_u64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

static inline uint64_t max_u64(uint64_t a, uint64_t b)
{
    return a > b ? a : b;
}

#endif
