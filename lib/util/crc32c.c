/*
 * CRC-32C, table driven, one byte at a time.  The table is built on first
 * use; building it twice from two threads writes the same values, so no
 * lock is needed beyond the final flag store.
 */
#include "util/crc32c.h"

#include <stdbool.h>

#define CRC32C_POLY 0x82F63B78u

static uint32_t crc32c_table[256];
static volatile bool crc32c_ready;

static void crc32c_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) {
            c = (c & 1) ? (c >> 1) ^ CRC32C_POLY : c >> 1;
        }
        crc32c_table[i] = c;
    }
    __atomic_store_n(&crc32c_ready, true, __ATOMIC_RELEASE);
}

uint32_t crc32c_update(uint32_t crc, const void *buf, size_t len)
{
    if (!__atomic_load_n(&crc32c_ready, __ATOMIC_ACQUIRE)) {
        crc32c_init();
    }
    const uint8_t *p = buf;
    /* The register holds the complement between calls. */
    uint32_t c = ~crc;
    for (size_t i = 0; i < len; i++) {
        c = crc32c_table[(c ^ p[i]) & 0xff] ^ (c >> 8);
    }
    return ~c;
}
