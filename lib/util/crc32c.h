/*
 * CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as VHDX uses for
 * its headers, region tables and log entries.
 */
#ifndef QIMG_UTIL_CRC32C_H
#define QIMG_UTIL_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/*
 * Continue a CRC-32C over len bytes.  Start with crc = 0; the result of
 * one call can be passed to the next to checksum pieces in order.
 */
uint32_t crc32c_update(uint32_t crc, const void *buf, size_t len);

#endif
