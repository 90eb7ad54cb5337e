/*
 * PBKDF2-HMAC-SHA256's iterations on the x86 SHA extensions
 * (crypto/sha256_x86.c).
 */
#ifndef QIMG_CRYPTO_SHA256_X86_H
#define QIMG_CRYPTO_SHA256_X86_H

#include <stdbool.h>
#include <stdint.h>

/* Does this CPU have the SHA extensions (and SSSE3, SSE4.1)? */
bool sha256_x86_available(void);

/*
 * count HMAC-SHA256 iterations of PBKDF2 on lanes (1 or 2) independent
 * output blocks: per lane, u = HMAC(u) and t ^= u, count times.  inner
 * and outer are the key's HMAC states after its padded block (nettle's
 * hmac_sha256_ctx inner.state and outer.state); every array holds the
 * eight big-endian words of a digest as host integers.  Only when
 * sha256_x86_available().
 */
void sha256_x86_hmac_iterate(const uint32_t inner[8], const uint32_t outer[8],
                             uint32_t u[][8], uint32_t t[][8], int lanes,
                             uint32_t count);

#endif
