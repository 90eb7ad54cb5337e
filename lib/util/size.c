/*
 * Sizes: parsing "1.5G"-style strings and printing "1.34 MiB"-style ones,
 * both exactly as qemu-img 7.2 does (qemu_strtosz and size_to_str).
 *
 * Parsing rules (checked against qemu-img create, see tests/unit/test_size.c):
 *  - leading whitespace and one '+' are accepted (strtoull syntax); trailing
 *    characters after the optional suffix are an error;
 *  - a '-' anywhere in the integral part is EINVAL (not ERANGE);
 *  - "0x"/"0X" after a zero integral part means hexadecimal: no fraction
 *    allowed; a scaling suffix is accepted with a deprecation warning
 *    (hex digits b and e are digits, not suffixes);
 *  - a fraction needs a scale larger than bytes, from the suffix or from
 *    the default suffix; exponents ("1.5e3k") are EINVAL; "1.k" and "1."
 *    are accepted; ".5k" is not (the integral part is required);
 *  - the result is exact (integral part times the scale, plus the fraction
 *    as a 64-bit binary fixed-point number times the scale, rounded half
 *    up) and ERANGE when it does not fit in 64 bits;
 *  - an integral part beyond 2^64-1 is ERANGE, unless characters follow
 *    it, which makes it EINVAL.
 */
#include <errno.h>
#include <locale.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "qimg/qimg.h"

/* The multiplier for a suffix letter (binary units), or 0 if not one. */
static uint64_t size_suffix_mul(char suffix)
{
    switch (suffix) {
    case 'b':
    case 'B':
        return 1;
    case 'k':
    case 'K':
        return UINT64_C(1) << 10;
    case 'm':
    case 'M':
        return UINT64_C(1) << 20;
    case 'g':
    case 'G':
        return UINT64_C(1) << 30;
    case 't':
    case 'T':
        return UINT64_C(1) << 40;
    case 'p':
    case 'P':
        return UINT64_C(1) << 50;
    case 'e':
    case 'E':
        return UINT64_C(1) << 60;
    default:
        return 0;
    }
}

/*
 * strtod and printf("%g") follow LC_NUMERIC, which an application using
 * the library may have set; qemu-img always runs in the C locale.  These
 * switch the calling thread to the C locale for one conversion.  If that
 * cannot be done (out of memory) the current locale is used.
 */
struct size_locale {
    locale_t c;
    locale_t old;
};

static void size_locale_enter(struct size_locale *l)
{
    l->c = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
    l->old = l->c ? uselocale(l->c) : (locale_t)0;
}

static void size_locale_leave(struct size_locale *l)
{
    if (l->c) {
        uselocale(l->old);
        freelocale(l->c);
    }
}

/*
 * strtoull with QEMU's qemu_strtou64 conventions: 0 on success, -EINVAL
 * when no digits were found, -ERANGE on overflow.  *end is always set.
 */
static int size_strtou64(const char *s, int base, const char **end,
                         uint64_t *out)
{
    char *ep;

    errno = 0;
    unsigned long long v = strtoull(s, &ep, base);
    int err = errno;
    *end = ep;
    *out = v;
    if (err == 0 && ep == s) {
        return -EINVAL;
    }
    return -err;
}

/*
 * Parse the fraction that starts at f (which points at '.') with strtod,
 * as QEMU does.  Returns 0 and sets *frac and *end, or nonzero when strtod
 * found no number, over/underflowed or produced a non-finite value; then
 * the fraction is ignored and *end is where QEMU's parser continues from:
 * one character past where strtod stopped or, without a conversion, past
 * the dot.  QEMU would step over the terminating NUL when an out-of-range
 * fraction ends the string ("1.5e99999") and read what follows it; *end
 * is NULL then, which the caller reports as EINVAL (what qemu-img prints
 * for such input in practice).
 */
static int size_parse_fraction(const char *f, const char **end, double *frac)
{
    char *ep;

    struct size_locale loc;

    size_locale_enter(&loc);
    errno = 0;
    double d = strtod(f, &ep);
    int err = errno;
    size_locale_leave(&loc);

    if (err == 0 && ep == f) {
        /* No conversion ("1.k"): skip the dot only. */
        *end = f + 1;
        return -EINVAL;
    }
    if (err != 0) {
        *end = *ep ? ep + 1 : NULL;
        return -err;
    }
    if (!__builtin_isfinite(d)) {
        /* "1.nan" style input: QEMU rewinds to the dot, then skips it. */
        *end = f + 1;
        return -EINVAL;
    }
    *end = ep;
    *frac = d;
    return 0;
}

/*
 * Convert a fraction in [0, 1] into 64-bit binary fixed point.  A value
 * that strtod rounded up to exactly 1.0 ("1.99999999999999999999k") gives
 * 0, which is what qemu-img 7.2 on x86-64 computes (it reads back as
 * "1k"); keeping that keeps the sizes identical.
 */
static uint64_t size_fraction_fixed(double frac)
{
    if (!(frac < 1.0) || frac <= 0.0) {
        return 0;
    }
    return (uint64_t)(frac * 18446744073709551616.0);
}

/* The full 128-bit product a * b (no __int128 on 32-bit targets). */
static void size_mul_64x64(uint64_t a, uint64_t b, uint64_t *hi, uint64_t *lo)
{
    uint64_t a_lo = a & 0xffffffffu;
    uint64_t a_hi = a >> 32;
    uint64_t b_lo = b & 0xffffffffu;
    uint64_t b_hi = b >> 32;
    uint64_t ll = a_lo * b_lo;
    uint64_t lh = a_lo * b_hi;
    uint64_t hl = a_hi * b_lo;
    uint64_t hh = a_hi * b_hi;
    /* Middle column; cannot overflow: at most 3 * (2^32 - 1). */
    uint64_t mid = (ll >> 32) + (lh & 0xffffffffu) + (hl & 0xffffffffu);

    *lo = (mid << 32) | (ll & 0xffffffffu);
    *hi = hh + (lh >> 32) + (hl >> 32) + (mid >> 32);
}

static int size_fail(int errnum, const char *text)
{
    if (errnum == ERANGE) {
        error_set(ERANGE, "Size '%s' is too large", text);
    } else {
        error_set(EINVAL, "Invalid size '%s'", text);
    }
    errno = errnum;
    return -1;
}

int qimg_parse_size(const char *text, char default_suffix, uint64_t *out)
{
    if (!text || !out) {
        error_set(EINVAL, "Invalid size: no text");
        errno = EINVAL;
        return -1;
    }
    if (default_suffix == '\0') {
        default_suffix = 'B';
    }
    uint64_t default_mul = size_suffix_mul(default_suffix);
    if (default_mul == 0) {
        error_set(EINVAL, "Invalid default size suffix '%c'", default_suffix);
        errno = EINVAL;
        return -1;
    }

    const char *end;
    uint64_t val;
    uint64_t valf = 0;
    bool hex = false;
    int ret = size_strtou64(text, 10, &end, &val);

    /*
     * An error stops parsing at the integral part; whether it is EINVAL
     * or ERANGE then depends on what follows, as in QEMU.
     */
    if (ret < 0) {
        return size_fail(*end ? EINVAL : -ret, text);
    }
    if (memchr(text, '-', (size_t)(end - text))) {
        return size_fail(EINVAL, text);
    }
    if (val == 0 && (*end == 'x' || *end == 'X')) {
        ret = size_strtou64(text, 16, &end, &val);
        if (ret < 0) {
            return size_fail(*end ? EINVAL : -ret, text);
        }
        if (*end == '.') {
            return size_fail(EINVAL, text);
        }
        hex = true;
    } else if (*end == '.') {
        const char *f = end;
        double frac = 0.0;

        if (size_parse_fraction(f, &end, &frac) != 0) {
            if (!end) {
                return size_fail(EINVAL, text);
            }
        } else {
            if (memchr(f, 'e', (size_t)(end - f)) ||
                memchr(f, 'E', (size_t)(end - f))) {
                return size_fail(EINVAL, text);
            }
            valf = size_fraction_fixed(frac);
        }
    }

    uint64_t mul = size_suffix_mul(*end);
    if (mul != 0) {
        if (hex) {
            warn_report("Using a multiplier suffix on hex numbers is "
                        "deprecated: %s",
                        text);
        }
        end++;
    } else {
        mul = default_mul;
    }
    if (*end != '\0') {
        return size_fail(EINVAL, text);
    }

    if (mul == 1) {
        /* A fraction of a byte makes no sense: a scale is required. */
        if (valf != 0) {
            return size_fail(EINVAL, text);
        }
    } else {
        /*
         * Exact 64.64 fixed point times an integer scale; the fraction's
         * contribution is rounded half up to a whole byte.
         */
        uint64_t hi, lo, fhi, flo;

        size_mul_64x64(val, mul, &hi, &lo);
        size_mul_64x64(valf, mul, &fhi, &flo);
        /* Add the whole bytes of the fraction, then round on bit 63. */
        uint64_t carry = (flo >> 63) & 1;
        lo += fhi;
        hi += lo < fhi;
        lo += carry;
        hi += lo < carry;
        if (hi != 0) {
            return size_fail(ERANGE, text);
        }
        val = lo;
    }
    *out = val;
    return 0;
}

/*
 * The binary exponent of a finite positive double, as frexp() returns it
 * (x = m * 2^e with 0.5 <= m < 1).  Read from the representation so that
 * the library needs no libm.  x is never subnormal here: it is at least
 * 1 / (1000 / 1024).
 */
static int size_frexp_exponent(double x)
{
    uint64_t bits;

    memcpy(&bits, &x, sizeof(bits));
    return (int)((bits >> 52) & 0x7ff) - 1022;
}

void qimg_format_size(uint64_t bytes, char *buf, size_t buflen)
{
    static const char *const units[] = {
        "B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB",
    };

    if (!buf || buflen == 0) {
        return;
    }

    /*
     * floor(log2(bytes * 1024 / 1000)) / 10 picks the unit, so a value
     * switches to the next unit once it reaches 1000 of the current one
     * (1000 bytes is "0.977 KiB").  Values in [999.5, 1000) of a unit
     * still use it and print as "1e+03", exactly as QEMU does.
     */
    int unit = 0;
    if (bytes != 0) {
        int e = size_frexp_exponent((double)bytes / (1000.0 / 1024.0));
        unit = (e - 1) / 10;
    }
    if (unit > 6) {
        unit = 6;
    }
    uint64_t div = UINT64_C(1) << (unit * 10);
    struct size_locale loc;

    size_locale_enter(&loc);
    snprintf(buf, buflen, "%0.3g %s", (double)bytes / (double)div, units[unit]);
    size_locale_leave(&loc);
}
