/*
 * qcow2 refcount entries of every width (refcount_order 0..6): the
 * layout [spec: Host cluster management] (big-endian from 8 bits, LSB
 * first below), round trips, neighbours untouched, truncation to the
 * width, and the packed array size.
 */
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"
#include "tap.h"

#define ENTRIES 1000

static uint64_t max_of(unsigned order)
{
    return order == 6 ? UINT64_MAX : (1ull << (1u << order)) - 1;
}

static uint64_t pattern(uint64_t i, unsigned order)
{
    return (i * 0x9e3779b97f4a7c15ull + 7) & max_of(order);
}

int main(void)
{
    /* Known layouts. */
    const uint8_t b0[] = {0xa5};
    const uint64_t want0[] = {1, 0, 1, 0, 0, 1, 0, 1};
    int ok = 1;
    for (int i = 0; i < 8; i++) {
        ok &= qcow2_refcount_load(b0, i, 0) == want0[i];
    }
    tap_ok(ok, "1-bit entries: entry 0 is the least significant bit");
    const uint8_t b1[] = {0xe4, 0x1b};
    ok = 1;
    for (int i = 0; i < 4; i++) {
        ok &= qcow2_refcount_load(b1, i, 1) == (uint64_t)i;
        ok &= qcow2_refcount_load(b1, 4 + i, 1) == (uint64_t)(3 - i);
    }
    tap_ok(ok, "2-bit entries: LSB first within each byte");
    const uint8_t b2[] = {0x21, 0xf0};
    tap_eq_u64(qcow2_refcount_load(b2, 0, 2), 1, "4-bit entry 0 (low nibble)");
    tap_eq_u64(qcow2_refcount_load(b2, 1, 2), 2, "4-bit entry 1 (high nibble)");
    tap_eq_u64(qcow2_refcount_load(b2, 2, 2), 0, "4-bit entry 2");
    tap_eq_u64(qcow2_refcount_load(b2, 3, 2), 15, "4-bit entry 3");
    const uint8_t b3[] = {0x05, 0xff};
    tap_eq_u64(qcow2_refcount_load(b3, 1, 3), 255, "8-bit entry");
    const uint8_t b4[] = {0x00, 0x00, 0x12, 0x34};
    tap_eq_u64(qcow2_refcount_load(b4, 1, 4), 0x1234, "16-bit big-endian");
    const uint8_t b5[] = {0, 0, 0, 0, 0x12, 0x34, 0x56, 0x78};
    tap_eq_u64(qcow2_refcount_load(b5, 1, 5), 0x12345678, "32-bit big-endian");
    const uint8_t b6[] = {0,    0,    0,    0,    0,    0,    0,    0,
                          0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef};
    tap_eq_u64(qcow2_refcount_load(b6, 1, 6), 0x0123456789abcdefull,
               "64-bit big-endian");

    for (unsigned order = 0; order <= QCOW2_MAX_REFCOUNT_ORDER; order++) {
        char name[96];
        size_t bytes = (size_t)qcow2_refcount_array_bytes(ENTRIES, order);
        uint8_t *a = calloc(1, bytes);
        if (!a) {
            tap_ok(0, "allocation");
            continue;
        }
        for (uint64_t i = 0; i < ENTRIES; i++) {
            qcow2_refcount_store(a, i, order, pattern(i, order));
        }
        ok = 1;
        for (uint64_t i = 0; i < ENTRIES; i++) {
            ok &= qcow2_refcount_load(a, i, order) == pattern(i, order);
        }
        snprintf(name, sizeof(name), "%u-bit: %d entries round trip",
                 1u << order, ENTRIES);
        tap_ok(ok, name);

        /* One entry to its maximum, then to 0: neighbours stay. */
        qcow2_refcount_store(a, 501, order, max_of(order));
        ok = qcow2_refcount_load(a, 501, order) == max_of(order);
        qcow2_refcount_store(a, 501, order, 0);
        ok &= qcow2_refcount_load(a, 501, order) == 0;
        ok &= qcow2_refcount_load(a, 500, order) == pattern(500, order);
        ok &= qcow2_refcount_load(a, 502, order) == pattern(502, order);
        snprintf(name, sizeof(name), "%u-bit: max and 0, neighbours kept",
                 1u << order);
        tap_ok(ok, name);

        /* Values wider than the entry keep only its bits. */
        qcow2_refcount_store(a, 7, order, UINT64_MAX);
        snprintf(name, sizeof(name), "%u-bit: wider value truncated",
                 1u << order);
        tap_eq_u64(qcow2_refcount_load(a, 7, order), max_of(order), name);
        tap_ok(qcow2_refcount_load(a, 6, order) == pattern(6, order) &&
                   qcow2_refcount_load(a, 8, order) == pattern(8, order),
               "  ...without touching its neighbours");
        free(a);
    }

    tap_eq_u64(qcow2_refcount_array_bytes(8, 0), 1, "8 1-bit entries: 1 byte");
    tap_eq_u64(qcow2_refcount_array_bytes(9, 0), 2, "9 1-bit entries: 2 bytes");
    tap_eq_u64(qcow2_refcount_array_bytes(3, 1), 1, "3 2-bit entries: 1 byte");
    tap_eq_u64(qcow2_refcount_array_bytes(3, 2), 2, "3 4-bit entries: 2 bytes");
    tap_eq_u64(qcow2_refcount_array_bytes(5, 4), 10, "5 16-bit entries");
    tap_eq_u64(qcow2_refcount_array_bytes(5, 6), 40, "5 64-bit entries");
    return tap_done();
}
