/*
 * qcow2_decompress() (lib/formats/qcow2/compress.c): round trips for
 * both compression types, and the hostile cases a corrupt image can
 * produce (truncated, short, garbage streams) fail with -EIO.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

#include "formats/qcow2/qcow2.h"
#include "tap.h"

#define CLUSTER 65536u

/* Raw deflate with a 4 KiB window, as qcow2 stores zlib clusters. */
static size_t deflate_raw(const uint8_t *src, size_t n, uint8_t *dst,
                          size_t cap)
{
    z_stream z = {0};
    if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9,
                     Z_DEFAULT_STRATEGY) != Z_OK) {
        return 0;
    }
    z.next_in = (Bytef *)(uintptr_t)src;
    z.avail_in = (uInt)n;
    z.next_out = dst;
    z.avail_out = (uInt)cap;
    int ret = deflate(&z, Z_FINISH);
    size_t out = ret == Z_STREAM_END ? cap - z.avail_out : 0;
    deflateEnd(&z);
    return out;
}

static void fill(uint8_t *p, size_t n)
{
    uint32_t x = 12345;
    for (size_t i = 0; i < n; i++) {
        x = x * 1103515245u + 12345u;
        /* Compressible but not trivial. */
        p[i] = (uint8_t)((i / 64) ^ ((x >> 16) & 3));
    }
}

static void test_type(uint8_t type)
{
    uint8_t *plain = malloc(CLUSTER);
    uint8_t *packed = malloc(2 * CLUSTER);
    uint8_t *out = malloc(CLUSTER);
    TAP_OK(plain && packed && out);
    if (!plain || !packed || !out) {
        goto done;
    }
    fill(plain, CLUSTER);

    size_t n;
    size_t half;
    if (type == QCOW2_COMPRESSION_ZLIB) {
        n = deflate_raw(plain, CLUSTER, packed, 2 * CLUSTER);
    } else {
        n = ZSTD_compress(packed, 2 * CLUSTER, plain, CLUSTER, 3);
        n = ZSTD_isError(n) ? 0 : n;
    }
    TAP_OK(n > 0 && n < CLUSTER);

    /* Round trip, with trailing bytes of "the next cluster" after it. */
    memset(packed + n, 0xa5, 512);
    TAP_OK(qcow2_decompress(type, out, CLUSTER, packed, n + 512) == 0);
    TAP_OK(memcmp(out, plain, CLUSTER) == 0);
    if (type == QCOW2_COMPRESSION_ZLIB) {
        TAP_OK(qcow2_decompress(type, out, CLUSTER, packed, n) == 0);
    }

    /* Truncated input: the cluster cannot be filled. */
    tap_eq_u64((uint64_t)qcow2_decompress(type, out, CLUSTER, packed, n / 2),
               (uint64_t)-EIO, "truncated stream");
    tap_eq_u64((uint64_t)qcow2_decompress(type, out, CLUSTER, packed, 0),
               (uint64_t)-EIO, "empty input");

    /* A complete stream of half a cluster is too short. */
    if (type == QCOW2_COMPRESSION_ZLIB) {
        half = deflate_raw(plain, CLUSTER / 2, packed, 2 * CLUSTER);
    } else {
        half = ZSTD_compress(packed, 2 * CLUSTER, plain, CLUSTER / 2, 3);
        half = ZSTD_isError(half) ? 0 : half;
    }
    TAP_OK(half > 0);
    tap_eq_u64((uint64_t)qcow2_decompress(type, out, CLUSTER, packed, half),
               (uint64_t)-EIO, "short stream");

    /* Garbage. */
    memset(packed, 0xff, 4096);
    tap_eq_u64((uint64_t)qcow2_decompress(type, out, CLUSTER, packed, 4096),
               (uint64_t)-EIO, "garbage");

done:
    free(plain);
    free(packed);
    free(out);
}

int main(void)
{
    test_type(QCOW2_COMPRESSION_ZLIB);
    test_type(QCOW2_COMPRESSION_ZSTD);
    uint8_t b[16] = {0};
    tap_eq_u64((uint64_t)qcow2_decompress(7, b, sizeof(b), b, sizeof(b)),
               (uint64_t)-ENOTSUP, "unknown type");
    return tap_done();
}
