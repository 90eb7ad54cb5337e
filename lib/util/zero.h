/*
 * Zero detection for copy loops: does a buffer hold only zero bytes?
 */
#ifndef QIMG_UTIL_ZERO_H
#define QIMG_UTIL_ZERO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/*
 * A non-zero first word answers at once.  Otherwise whole 512-byte blocks
 * are ORed together word by word with no early exit inside a block, which
 * compilers turn into a few vector instructions; the first non-zero block
 * ends the scan.
 */
static inline bool buf_is_zero(const uint8_t *p, size_t len)
{
    size_t i = 0;
    /* Data usually shows in its first word: no need to load the rest. */
    if (len >= sizeof(uint64_t)) {
        uint64_t first;
        memcpy(&first, p, sizeof(first));
        if (first != 0) {
            return false;
        }
    }
    for (; len - i >= 512; i += 512) {
        uint64_t acc = 0;
        for (size_t j = 0; j < 512; j += 8) {
            uint64_t w;
            memcpy(&w, p + i + j, sizeof(w));
            acc |= w;
        }
        if (acc != 0) {
            return false;
        }
    }
    for (; i < len; i++) {
        if (p[i] != 0) {
            return false;
        }
    }
    return true;
}

#endif
