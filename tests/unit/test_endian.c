/*
 * Endian loads/stores (util/endian.h), checked arithmetic (checked.h) and
 * doubling arrays (grow.h).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tap.h"
#include "util/checked.h"
#include "util/endian.h"
#include "util/grow.h"

static void test_layout(void)
{
    uint8_t b[8];

    store_be16(b, 0x0102);
    TAP_OK(b[0] == 0x01 && b[1] == 0x02);
    store_le16(b, 0x0102);
    TAP_OK(b[0] == 0x02 && b[1] == 0x01);
    store_be32(b, 0x01020304);
    TAP_OK(memcmp(b, "\x01\x02\x03\x04", 4) == 0);
    store_le32(b, 0x01020304);
    TAP_OK(memcmp(b, "\x04\x03\x02\x01", 4) == 0);
    store_be64(b, UINT64_C(0x0102030405060708));
    TAP_OK(memcmp(b, "\x01\x02\x03\x04\x05\x06\x07\x08", 8) == 0);
    store_le64(b, UINT64_C(0x0102030405060708));
    TAP_OK(memcmp(b, "\x08\x07\x06\x05\x04\x03\x02\x01", 8) == 0);

    /* High bits must not sign-extend through int promotion. */
    static const uint8_t ff[8] = {
        0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0xfa, 0xf9, 0xf8,
    };
    tap_eq_u64(load_be16(ff), 0xfffe, "load_be16 high bits");
    tap_eq_u64(load_le16(ff), 0xfeff, "load_le16 high bits");
    tap_eq_u64(load_be32(ff), 0xfffefdfc, "load_be32 high bits");
    tap_eq_u64(load_le32(ff), 0xfcfdfeff, "load_le32 high bits");
    tap_eq_u64(load_be64(ff), UINT64_C(0xfffefdfcfbfaf9f8),
               "load_be64 high bits");
    tap_eq_u64(load_le64(ff), UINT64_C(0xf8f9fafbfcfdfeff),
               "load_le64 high bits");
}

static void test_round_trips(void)
{
    static const uint64_t values[] = {
        0,
        1,
        0x80,
        0xff,
        0x8000,
        0xffff,
        0x80000000u,
        0xffffffffu,
        UINT64_C(0x8000000000000000),
        UINT64_MAX,
        UINT64_C(0x0123456789abcdef),
    };
    uint8_t buf[9];
    int ok = 1;

    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        uint64_t v = values[i];

        /* Unaligned on purpose. */
        store_be16(buf + 1, (uint16_t)v);
        ok &= load_be16(buf + 1) == (uint16_t)v;
        store_le16(buf + 1, (uint16_t)v);
        ok &= load_le16(buf + 1) == (uint16_t)v;
        store_be32(buf + 1, (uint32_t)v);
        ok &= load_be32(buf + 1) == (uint32_t)v;
        store_le32(buf + 1, (uint32_t)v);
        ok &= load_le32(buf + 1) == (uint32_t)v;
        store_be64(buf + 1, v);
        ok &= load_be64(buf + 1) == v;
        store_le64(buf + 1, v);
        ok &= load_le64(buf + 1) == v;
    }
    tap_ok(ok, "round trips");
}

static void test_checked(void)
{
    uint64_t r;

    TAP_OK(!add_overflow_u64(1, 2, &r) && r == 3);
    TAP_OK(!add_overflow_u64(UINT64_MAX - 1, 1, &r) && r == UINT64_MAX);
    TAP_OK(add_overflow_u64(UINT64_MAX, 1, &r));
    TAP_OK(add_overflow_u64(UINT64_C(1) << 63, UINT64_C(1) << 63, &r));

    TAP_OK(!mul_overflow_u64(0, UINT64_MAX, &r) && r == 0);
    TAP_OK(!mul_overflow_u64(UINT64_C(1) << 32, (UINT64_C(1) << 32) - 1, &r) &&
           r == (UINT64_C(1) << 63) +
                    ((UINT64_C(1) << 63) - (UINT64_C(1) << 32)));
    TAP_OK(mul_overflow_u64(UINT64_C(1) << 32, UINT64_C(1) << 32, &r));
    TAP_OK(mul_overflow_u64(UINT64_MAX, 2, &r));

    TAP_OK(!align_up_overflow_u64(0, 512, &r) && r == 0);
    TAP_OK(!align_up_overflow_u64(1, 512, &r) && r == 512);
    TAP_OK(!align_up_overflow_u64(512, 512, &r) && r == 512);
    TAP_OK(!align_up_overflow_u64(UINT64_MAX - 511, 512, &r) &&
           r == UINT64_MAX - 511);
    TAP_OK(align_up_overflow_u64(UINT64_MAX - 510, 512, &r));
    TAP_OK(align_up_overflow_u64(UINT64_MAX, 2, &r));
    TAP_OK(!align_up_overflow_u64(UINT64_MAX, 1, &r) && r == UINT64_MAX);

    TAP_OK(align_down_u64(1023, 512) == 512);
    TAP_OK(align_down_u64(UINT64_MAX, 65536) == UINT64_MAX - 65535);
    TAP_OK(is_aligned_u64(0, 4096) && is_aligned_u64(8192, 4096));
    TAP_OK(!is_aligned_u64(4097, 4096));

    TAP_OK(div_round_up_u64(0, 512) == 0);
    TAP_OK(div_round_up_u64(1, 512) == 1);
    TAP_OK(div_round_up_u64(512, 512) == 1);
    TAP_OK(div_round_up_u64(UINT64_MAX, 2) == UINT64_C(1) << 63);
    TAP_OK(div_round_up_u64(UINT64_MAX, 1) == UINT64_MAX);

    TAP_OK(min_u64(1, UINT64_MAX) == 1 && max_u64(1, UINT64_MAX) == UINT64_MAX);
}

static void test_grow(void)
{
    size_t cap = 0, reallocs = 0;
    uint32_t *a = NULL;
    /* 100,000 appends: 15 reallocations (8, 16, ... 131072), not 100,000. */
    for (uint32_t i = 0; i < 100000; i++) {
        size_t before = cap;
        uint32_t *n = grow_array(a, &cap, i + 1u, sizeof(*a));
        if (!n) {
            break;
        }
        reallocs += cap != before;
        a = n;
        a[i] = i;
    }
    tap_eq_u64(cap, 131072, "grow_array doubles from 8");
    tap_eq_u64(reallocs, 15, "grow_array reallocates log2(n) times");
    TAP_OK(a && a[0] == 0 && a[99999] == 99999);

    /* A need past twice the capacity is met at once. */
    size_t cap2 = 0;
    uint8_t *b = grow_array(NULL, &cap2, 1000, 1);
    TAP_OK(b != NULL && cap2 == 1000);
    free(b);

    /* A size that overflows fails, leaving the array and capacity alone. */
    size_t big = SIZE_MAX / 16 + 1;
    TAP_OK(grow_array(a, &big, big + 1, 16) == NULL &&
           big == SIZE_MAX / 16 + 1);
    size_t small = 4;
    TAP_OK(grow_array(a, &small, SIZE_MAX, 2) == NULL && small == 4);
    free(a);
}

int main(void)
{
    test_layout();
    test_round_trips();
    test_checked();
    test_grow();
    return tap_done();
}
