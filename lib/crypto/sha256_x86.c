/*
 * PBKDF2-HMAC-SHA256's iterations (kdf.c) on the x86 SHA extensions:
 * the SHA-256 compression function (FIPS 180-4, section 6.2.2) with its
 * state, U and the running XOR kept in registers from one iteration to
 * the next.  nettle 3.8 uses the extensions too, but behind its general
 * hash interface, whose per-call padding, byte order conversions and
 * context copies cost more than the two compressions of an iteration.
 *
 * The state is kept as the extensions want it, in two registers: ABEF
 * (words A, B, E, F from the high lane down) and CDGH.  Each
 * sha256rnds2 does two rounds, taking W[t] + K[t] for them in its third
 * operand's low 64 bits; the message schedule is four registers of four
 * words, the group g computed from groups g-4 .. g-1 with sha256msg1
 * (the sigma0 terms), an alignr (the W[t-7] terms) and sha256msg2 (the
 * sigma1 terms).
 */
#include <stdbool.h>
#include <stdint.h>

#include "crypto/sha256_x86.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#include <cpuid.h>
#include <immintrin.h>

/* The round constants: the first 32 bits of the fractional parts of the
 * cube roots of the first 64 primes (FIPS 180-4, 4.2.2). */
static const uint32_t sha256_k[64] __attribute__((aligned(16))) = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1,
    0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3,
    0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
    0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147,
    0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
    0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
    0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
    0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

bool sha256_x86_available(void)
{
    unsigned a, b, c, d;
    /* SSSE3 (pshufb) and SSE4.1 (pblendw) besides SHA itself. */
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_SSSE3) ||
        !(c & bit_SSE4_1)) {
        return false;
    }
    if (__get_cpuid_max(0, NULL) < 7) {
        return false;
    }
    __cpuid_count(7, 0, a, b, c, d);
    return (b & (1u << 29)) != 0; /* CPUID.(EAX=7,ECX=0):EBX.SHA */
}

#define SHA_TARGET __attribute__((target("sha,sse4.1,ssse3")))
#define SHA_INLINE SHA_TARGET static inline __attribute__((always_inline))

/* State words (A..D, E..H, as loaded) to the ABEF and CDGH registers. */
SHA_INLINE void to_abef(__m128i dcba, __m128i hgfe, __m128i *abef,
                        __m128i *cdgh)
{
    __m128i cdab = _mm_shuffle_epi32(dcba, 0xb1);
    __m128i efgh = _mm_shuffle_epi32(hgfe, 0x1b);
    *abef = _mm_alignr_epi8(cdab, efgh, 8);
    *cdgh = _mm_blend_epi16(efgh, cdab, 0xf0);
}

/* And back. */
SHA_INLINE void to_words(__m128i abef, __m128i cdgh, __m128i *dcba,
                         __m128i *hgfe)
{
    __m128i feba = _mm_shuffle_epi32(abef, 0x1b);
    __m128i dchg = _mm_shuffle_epi32(cdgh, 0xb1);
    *dcba = _mm_blend_epi16(feba, dchg, 0xf0);
    *hgfe = _mm_alignr_epi8(dchg, feba, 8);
}

/*
 * One compression per lane (lanes: 1 or 2) from the same start state,
 * each lane's message as four groups of four words (W[4g] in the low
 * lane).  The lanes go side by side: each sha256rnds2 waits for the one
 * before it in its lane, so a second lane runs in the first one's
 * shadow.  Inlined with a constant lanes, the loops unroll and every
 * value stays in a register.
 */
SHA_INLINE void compress_lanes(__m128i abef_in, __m128i cdgh_in,
                               __m128i w[][4], __m128i abef[],
                               __m128i cdgh[], const int lanes)
{
    for (int l = 0; l < lanes; l++) {
        abef[l] = abef_in;
        cdgh[l] = cdgh_in;
    }
#pragma GCC unroll 16
    for (int g = 0; g < 16; g++) {
        __m128i k = _mm_load_si128((const __m128i *)&sha256_k[4 * g]);
#pragma GCC unroll 2
        for (int l = 0; l < lanes; l++) {
            __m128i m = w[l][g & 3];
            if (g >= 4) {
                m = _mm_sha256msg1_epu32(w[l][g & 3], w[l][(g + 1) & 3]);
                m = _mm_add_epi32(m, _mm_alignr_epi8(w[l][(g + 3) & 3],
                                                     w[l][(g + 2) & 3], 4));
                m = _mm_sha256msg2_epu32(m, w[l][(g + 3) & 3]);
                w[l][g & 3] = m;
            }
            __m128i wk = _mm_add_epi32(m, k);
            /*
             * After the pair abef is ABEF four rounds on, and cdgh the
             * ABEF of two rounds on, which is CDGH four rounds on.
             */
            cdgh[l] = _mm_sha256rnds2_epu32(cdgh[l], abef[l], wk);
            abef[l] = _mm_sha256rnds2_epu32(abef[l], cdgh[l],
                                            _mm_shuffle_epi32(wk, 0x0e));
        }
    }
    for (int l = 0; l < lanes; l++) {
        abef[l] = _mm_add_epi32(abef[l], abef_in);
        cdgh[l] = _mm_add_epi32(cdgh[l], cdgh_in);
    }
}

SHA_INLINE void hmac_iterate_lanes(const uint32_t inner[8],
                                   const uint32_t outer[8], uint32_t u[][8],
                                   uint32_t t[][8], uint32_t count,
                                   const int lanes)
{
    __m128i in_abef, in_cdgh, out_abef, out_cdgh;
    to_abef(_mm_loadu_si128((const __m128i *)&inner[0]),
            _mm_loadu_si128((const __m128i *)&inner[4]), &in_abef, &in_cdgh);
    to_abef(_mm_loadu_si128((const __m128i *)&outer[0]),
            _mm_loadu_si128((const __m128i *)&outer[4]), &out_abef,
            &out_cdgh);
    /*
     * The message after the 64-byte key block is U (eight words), then
     * 0x80 and zeros, then its length in bits, 768: the same for the
     * inner hash and the outer.
     */
    const __m128i pad_lo = _mm_set_epi32(0, 0, 0, (int)0x80000000u);
    const __m128i pad_hi = _mm_set_epi32(768, 0, 0, 0);
    __m128i ulo[2], uhi[2], tlo[2], thi[2], abef[2], cdgh[2], w[2][4];
    for (int l = 0; l < lanes; l++) {
        ulo[l] = _mm_loadu_si128((const __m128i *)&u[l][0]);
        uhi[l] = _mm_loadu_si128((const __m128i *)&u[l][4]);
        tlo[l] = _mm_loadu_si128((const __m128i *)&t[l][0]);
        thi[l] = _mm_loadu_si128((const __m128i *)&t[l][4]);
    }
    for (uint32_t n = 0; n < count; n++) {
        for (int l = 0; l < lanes; l++) {
            w[l][0] = ulo[l];
            w[l][1] = uhi[l];
            w[l][2] = pad_lo;
            w[l][3] = pad_hi;
        }
        compress_lanes(in_abef, in_cdgh, w, abef, cdgh, lanes);
        for (int l = 0; l < lanes; l++) {
            to_words(abef[l], cdgh[l], &w[l][0], &w[l][1]);
            w[l][2] = pad_lo;
            w[l][3] = pad_hi;
        }
        compress_lanes(out_abef, out_cdgh, w, abef, cdgh, lanes);
        for (int l = 0; l < lanes; l++) {
            to_words(abef[l], cdgh[l], &ulo[l], &uhi[l]);
            tlo[l] = _mm_xor_si128(tlo[l], ulo[l]);
            thi[l] = _mm_xor_si128(thi[l], uhi[l]);
        }
    }
    for (int l = 0; l < lanes; l++) {
        _mm_storeu_si128((__m128i *)&u[l][0], ulo[l]);
        _mm_storeu_si128((__m128i *)&u[l][4], uhi[l]);
        _mm_storeu_si128((__m128i *)&t[l][0], tlo[l]);
        _mm_storeu_si128((__m128i *)&t[l][4], thi[l]);
    }
}

SHA_TARGET void sha256_x86_hmac_iterate(const uint32_t inner[8],
                                        const uint32_t outer[8],
                                        uint32_t u[][8], uint32_t t[][8],
                                        int lanes, uint32_t count)
{
    if (lanes == 2) {
        hmac_iterate_lanes(inner, outer, u, t, count, 2);
    } else {
        hmac_iterate_lanes(inner, outer, u, t, count, 1);
    }
}

#else

bool sha256_x86_available(void)
{
    return false;
}

void sha256_x86_hmac_iterate(const uint32_t inner[8], const uint32_t outer[8],
                             uint32_t u[][8], uint32_t t[][8], int lanes,
                             uint32_t count)
{
    (void)inner;
    (void)outer;
    (void)u;
    (void)t;
    (void)lanes;
    (void)count;
}

#endif
