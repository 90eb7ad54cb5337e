/*
 * qcow2_decompress() (lib/formats/qcow2/compress.c): round trips for
 * both compression types, and the hostile cases a corrupt image can
 * produce (truncated, short, garbage streams) fail with -EIO.  zlib
 * clusters go through libdeflate first when it is built in: the answer
 * must be zlib's (same bytes, same accept/reject) for streams that run
 * past the cluster, stop without an end, or are damaged.  The encoder
 * choices (levels, libdeflate) round trip and their ranges are checked.
 */
#include <errno.h>
#include <stdbool.h>
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

/* zlib alone, as QEMU reads a cluster: the reference answer. */
static int zlib_ref(uint8_t *dst, size_t dst_len, const uint8_t *src,
                    size_t src_len)
{
    z_stream z = {0};
    if (inflateInit2(&z, -12) != Z_OK) {
        return -ENOMEM;
    }
    z.next_in = (Bytef *)(uintptr_t)src;
    z.avail_in = (uInt)src_len;
    z.next_out = dst;
    z.avail_out = (uInt)dst_len;
    int ret = inflate(&z, Z_FINISH);
    int ok = (ret == Z_STREAM_END || ret == Z_BUF_ERROR) && z.avail_out == 0;
    inflateEnd(&z);
    return ok ? 0 : -EIO;
}

/* Same answer as zlib_ref, and the same bytes when accepted. */
static bool same_as_zlib(const uint8_t *src, size_t src_len, size_t cluster,
                         uint8_t *out, uint8_t *ref)
{
    int got = qcow2_decompress(QCOW2_COMPRESSION_ZLIB, out, cluster, src,
                               src_len);
    int want = zlib_ref(ref, cluster, src, src_len);
    return got == want && (got != 0 || memcmp(out, ref, cluster) == 0);
}

static void test_zlib_edges(void)
{
    uint8_t *plain = malloc(2 * CLUSTER);
    uint8_t *packed = malloc(4 * CLUSTER);
    uint8_t *out = malloc(CLUSTER);
    uint8_t *ref = malloc(CLUSTER);
    TAP_OK(plain && packed && out && ref);
    if (!plain || !packed || !out || !ref) {
        goto done;
    }
    fill(plain, 2 * CLUSTER);

    /*
     * A stream of two clusters' worth: zlib fills the cluster and stops
     * (libdeflate runs out of room and hands over).
     */
    size_t n = deflate_raw(plain, 2 * CLUSTER, packed, 4 * CLUSTER);
    TAP_OK(n > 0);
    TAP_OK(qcow2_decompress(QCOW2_COMPRESSION_ZLIB, out, CLUSTER, packed,
                            n) == 0);
    TAP_OK(memcmp(out, plain, CLUSTER) == 0);
    TAP_OK(same_as_zlib(packed, n, CLUSTER, out, ref));

    /*
     * Cut at every 97th byte: accepted exactly when zlib fills the
     * cluster from what is left (a stream without its end).
     */
    n = deflate_raw(plain, CLUSTER, packed, 4 * CLUSTER);
    bool all_same = true;
    int accepted = 0;
    for (size_t cut = 0; cut <= n; cut += 97) {
        all_same = all_same && same_as_zlib(packed, cut, CLUSTER, out, ref);
        accepted += zlib_ref(ref, CLUSTER, packed, cut) == 0;
    }
    all_same = all_same && same_as_zlib(packed, n, CLUSTER, out, ref);
    TAP_OK(all_same);
    tap_ok(accepted <= 1, "cut streams are refused");

    /*
     * Damaged streams: one byte changed in turn at many places of a
     * dynamic-Huffman stream and of a fixed-Huffman one (a 4 KiB
     * cluster of short text, which zlib codes with fixed codes).
     */
    uint32_t x = 99;
    all_same = true;
    int rejected = 0;
    for (int k = 0; k < 400; k++) {
        size_t cluster = k % 2 ? 4096 : CLUSTER;
        size_t len = deflate_raw(plain, cluster, packed, 4 * CLUSTER);
        x = x * 1103515245u + 12345u;
        size_t at = (x >> 8) % len;
        packed[at] ^= (uint8_t)(1u << ((x >> 4) & 7));
        all_same = all_same && same_as_zlib(packed, len, cluster, out, ref);
        rejected += zlib_ref(ref, cluster, packed, len) != 0;
    }
    TAP_OK(all_same);
    printf("# %d of 400 damaged streams refused\n", rejected);
    tap_ok(rejected > 40, "damaged streams are refused");

    /* Garbage as long as the longest descriptor: nothing past the end. */
    memset(packed, 0xff, 2 * CLUSTER);
    TAP_OK(same_as_zlib(packed, 2 * CLUSTER, CLUSTER, out, ref));
    memset(packed, 0x00, 2 * CLUSTER);
    TAP_OK(same_as_zlib(packed, 2 * CLUSTER, CLUSTER, out, ref));

done:
    free(plain);
    free(packed);
    free(out);
    free(ref);
}

/* The write side: every level and encoder round trips. */
static void test_encoders(void)
{
    uint8_t *plain = malloc(CLUSTER);
    uint8_t *packed = malloc(CLUSTER);
    uint8_t *out = malloc(CLUSTER);
    TAP_OK(plain && packed && out);
    if (!plain || !packed || !out) {
        goto done;
    }
    fill(plain, CLUSTER);
    const uint8_t z = QCOW2_COMPRESSION_ZLIB, zs = QCOW2_COMPRESSION_ZSTD;
    static const struct {
        uint8_t type;
        int level;
        unsigned flags;
    } cases[] = {
        {QCOW2_COMPRESSION_ZLIB, 0, 0},  {QCOW2_COMPRESSION_ZLIB, 1, 0},
        {QCOW2_COMPRESSION_ZLIB, 9, 0},  {QCOW2_COMPRESSION_ZSTD, 0, 0},
        {QCOW2_COMPRESSION_ZSTD, 1, 0},  {QCOW2_COMPRESSION_ZSTD, 19, 0},
#ifdef QIMG_HAVE_LIBDEFLATE
        {QCOW2_COMPRESSION_ZLIB, 0, QIMG_COMPRESS_LIBDEFLATE},
        {QCOW2_COMPRESSION_ZLIB, 1, QIMG_COMPRESS_LIBDEFLATE},
        {QCOW2_COMPRESSION_ZLIB, 12, QIMG_COMPRESS_LIBDEFLATE},
#endif
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        TAP_OK(qcow2_compression_check(cases[i].type, cases[i].level,
                                       cases[i].flags) == 0);
        int64_t n = qcow2_compress(cases[i].type, cases[i].level,
                                   cases[i].flags, packed, CLUSTER - 1,
                                   plain, CLUSTER);
        TAP_OK(n > 0 && n < CLUSTER);
        memset(out, 0, CLUSTER);
        TAP_OK(n > 0 && qcow2_decompress(cases[i].type, out, CLUSTER, packed,
                                         (size_t)n) == 0);
        TAP_OK(memcmp(out, plain, CLUSTER) == 0);
    }
    /* The default is QEMU's stream, byte for byte (deflate_raw). */
    int64_t n = qcow2_compress(z, 0, 0, packed, CLUSTER - 1, plain, CLUSTER);
    size_t m = deflate_raw(plain, CLUSTER, out, CLUSTER);
    TAP_OK(n > 0 && (size_t)n == m && memcmp(packed, out, m) == 0);
    /* Incompressible data does not fit: stored plain by the caller. */
    uint32_t x = 5;
    for (size_t i = 0; i < CLUSTER; i++) {
        x = x * 1103515245u + 12345u;
        plain[i] = (uint8_t)(x >> 24);
    }
    tap_eq_u64((uint64_t)qcow2_compress(z, 0, 0, packed, CLUSTER - 1, plain,
                                        CLUSTER),
               (uint64_t)-ENOSPC, "zlib: no room");

    tap_eq_u64((uint64_t)qcow2_compression_check(z, 10, 0),
               (uint64_t)-ERANGE, "zlib level 10");
    tap_eq_u64((uint64_t)qcow2_compression_check(z, -1, 0),
               (uint64_t)-ERANGE, "zlib level -1");
    tap_eq_u64((uint64_t)qcow2_compression_check(zs, 23, 0),
               (uint64_t)-ERANGE, "zstd level 23");
    tap_eq_u64((uint64_t)qcow2_compression_check(z, 0, 1u << 7),
               (uint64_t)-EINVAL, "unknown flag");
#ifdef QIMG_HAVE_LIBDEFLATE
    tap_eq_u64((uint64_t)qcow2_compression_check(z, 13,
                                                 QIMG_COMPRESS_LIBDEFLATE),
               (uint64_t)-ERANGE, "libdeflate level 13");
    tap_eq_u64((uint64_t)qcow2_compression_check(zs, 1,
                                                 QIMG_COMPRESS_LIBDEFLATE),
               (uint64_t)-EINVAL, "libdeflate with zstd");
    tap_eq_u64((uint64_t)qcow2_compress(z, 1, QIMG_COMPRESS_LIBDEFLATE,
                                        packed, CLUSTER - 1, plain, CLUSTER),
               (uint64_t)-ENOSPC, "libdeflate: no room");
#else
    tap_eq_u64((uint64_t)qcow2_compression_check(z, 1,
                                                 QIMG_COMPRESS_LIBDEFLATE),
               (uint64_t)-ENOTSUP, "no libdeflate in this build");
#endif
done:
    free(plain);
    free(packed);
    free(out);
}

int main(void)
{
    test_zlib_edges();
    test_encoders();
    test_type(QCOW2_COMPRESSION_ZLIB);
    test_type(QCOW2_COMPRESSION_ZSTD);
    uint8_t b[16] = {0};
    tap_eq_u64((uint64_t)qcow2_decompress(7, b, sizeof(b), b, sizeof(b)),
               (uint64_t)-ENOTSUP, "unknown type");
    return tap_done();
}
