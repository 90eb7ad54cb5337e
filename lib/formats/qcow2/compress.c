/*
 * qcow2: decompression of compressed clusters [spec: Compressed Clusters
 * Descriptor, Additional fields].  Pure: bytes in, one cluster out.
 *
 * A compressed cluster is stored as whole 512-byte sectors, so the input
 * usually holds trailing bytes of the next compressed cluster; both
 * decoders stop as soon as the cluster is full and ignore the rest.  A
 * stream that ends, or stops making progress, before the cluster is full
 * is an error: the image is corrupt.
 */
#include <errno.h>
#include <stdint.h>
#include <zlib.h>
#include <zstd.h>
#include <zstd_errors.h>
#ifdef QIMG_HAVE_LIBDEFLATE
#include <libdeflate.h>
#endif

#include "formats/qcow2/qcow2.h"

/*
 * zlib: a raw deflate stream (no zlib header), 4 KiB window, which is
 * what windowBits -12 selects.  [QEMU] accepts the cluster as soon as the
 * output buffer is full, whether inflate reports the stream end or that
 * it ran out of output space (Z_BUF_ERROR).
 */
static int qcow2_inflate_zlib(uint8_t *dst, size_t dst_len,
                              const uint8_t *src, size_t src_len)
{
    /* Both lengths are bounded by 2 * 2 MiB (callers), so fit in uInt. */
    if (dst_len > UINT32_MAX || src_len > UINT32_MAX) {
        return -EIO;
    }
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

/*
 * The zlib decoder above decides what is a valid cluster.  libdeflate
 * (whole-buffer, several times faster) takes the common case: a stream
 * that ends exactly when the cluster is full, with unused trailing bytes
 * (actual_in tells where it ended; they are not looked at).  Anything
 * else -- a stream that ends early, runs past the cluster, is cut short
 * or is bad in libdeflate's eyes -- goes to zlib, whose answer stands, so
 * every stream zlib accepts gives zlib's bytes.  On valid deflate both
 * decoders give the same bytes.  libdeflate is laxer than zlib on some
 * invalid streams (length symbols 286/287, distance symbols 30/31, a
 * one-codeword code's unused codeword, an empty literal code): those
 * decode to some cluster here where QEMU reports an error.  Either way
 * no byte outside src or dst is touched: libdeflate checks every read
 * and write against the buffer ends.
 */
static int qcow2_inflate(uint8_t *dst, size_t dst_len, const uint8_t *src,
                         size_t src_len)
{
#ifdef QIMG_HAVE_LIBDEFLATE
    struct libdeflate_decompressor *d = libdeflate_alloc_decompressor();
    if (!d) {
        return -ENOMEM;
    }
    size_t in = 0, out = 0;
    enum libdeflate_result r = libdeflate_deflate_decompress_ex(
        d, src, src_len, dst, dst_len, &in, &out);
    libdeflate_free_decompressor(d);
    if (r == LIBDEFLATE_SUCCESS && out == dst_len && in <= src_len) {
        return 0;
    }
#endif
    return qcow2_inflate_zlib(dst, dst_len, src, src_len);
}

/*
 * zstd: streaming decompression until the cluster is full.  Each call
 * must consume input or produce output; without progress the input is
 * exhausted (truncated frame) and the loop would never end.
 */
static int qcow2_unzstd(uint8_t *dst, size_t dst_len, const uint8_t *src,
                        size_t src_len)
{
    ZSTD_DCtx *dctx = ZSTD_createDCtx();
    if (!dctx) {
        return -ENOMEM;
    }
    ZSTD_inBuffer in = {src, src_len, 0};
    ZSTD_outBuffer out = {dst, dst_len, 0};
    int ret = 0;
    while (out.pos < out.size) {
        size_t last_in = in.pos;
        size_t last_out = out.pos;
        size_t zret = ZSTD_decompressStream(dctx, &out, &in);
        if (ZSTD_isError(zret)) {
            ret = -EIO;
            break;
        }
        if (in.pos == last_in && out.pos == last_out) {
            ret = -EIO;
            break;
        }
        /* A finished frame that did not fill the cluster. */
        if (zret == 0 && out.pos < out.size && in.pos >= in.size) {
            ret = -EIO;
            break;
        }
    }
    ZSTD_freeDCtx(dctx);
    return ret;
}

int qcow2_decompress(uint8_t type, uint8_t *dst, size_t dst_len,
                     const uint8_t *src, size_t src_len)
{
    switch (type) {
    case QCOW2_COMPRESSION_ZLIB:
        return qcow2_inflate(dst, dst_len, src, src_len);
    case QCOW2_COMPRESSION_ZSTD:
        return qcow2_unzstd(dst, dst_len, src, src_len);
    default:
        /* qcow2_header_decode() refuses other types. */
        return -ENOTSUP;
    }
}

/*
 * zlib as QEMU writes it: raw deflate, 4 KiB window (-12), memLevel 9,
 * one Z_FINISH call, at the default level (6) unless the caller picked
 * another (--compression-level).  Output that does not fit in dst_cap
 * (the caller passes cluster_size - 1) means "store it plain".
 */
static int64_t qcow2_deflate(int level, uint8_t *dst, size_t dst_cap,
                             const uint8_t *src, size_t src_len)
{
    if (dst_cap > UINT32_MAX || src_len > UINT32_MAX) {
        return -EINVAL;
    }
    z_stream z = {0};
    if (deflateInit2(&z, level ? level : Z_DEFAULT_COMPRESSION, Z_DEFLATED,
                     -12, 9, Z_DEFAULT_STRATEGY) != Z_OK) {
        return -ENOMEM;
    }
    z.next_in = (Bytef *)(uintptr_t)src;
    z.avail_in = (uInt)src_len;
    z.next_out = dst;
    z.avail_out = (uInt)dst_cap;
    int ret = deflate(&z, Z_FINISH);
    int64_t out = ret == Z_STREAM_END ? (int64_t)(dst_cap - z.avail_out)
                                      : -ENOSPC;
    deflateEnd(&z);
    return out;
}

#ifdef QIMG_HAVE_LIBDEFLATE
/*
 * libdeflate's encoder (opt-in): raw deflate too, but it looks for
 * matches up to 32 KiB back, not 4 KiB, so a stream may use distances a
 * strict 4 KiB-window reader refuses (QEMU and zlib accept them: the
 * whole cluster is inflated into one buffer).  A compressor per call:
 * it holds no state between calls and this runs on any thread.
 */
static int64_t qcow2_libdeflate(int level, uint8_t *dst, size_t dst_cap,
                                const uint8_t *src, size_t src_len)
{
    struct libdeflate_compressor *z =
        libdeflate_alloc_compressor(level ? level : 6);
    if (!z) {
        return -ENOMEM;
    }
    size_t n = libdeflate_deflate_compress(z, src, src_len, dst, dst_cap);
    libdeflate_free_compressor(z);
    return n ? (int64_t)n : -ENOSPC;
}
#endif

/* zstd: one frame at the default level (3) unless another was picked. */
static int64_t qcow2_zstd(int level, uint8_t *dst, size_t dst_cap,
                          const uint8_t *src, size_t src_len)
{
    size_t n = ZSTD_compress(dst, dst_cap, src, src_len,
                             level ? level : ZSTD_CLEVEL_DEFAULT);
    if (ZSTD_isError(n)) {
        return ZSTD_getErrorCode(n) == ZSTD_error_dstSize_tooSmall
                   ? -ENOSPC
                   : -ENOMEM;
    }
    return (int64_t)n;
}

int qcow2_compression_check(uint8_t type, int level, unsigned flags)
{
    if (flags & ~QIMG_COMPRESS_LIBDEFLATE) {
        return -EINVAL;
    }
    if (flags & QIMG_COMPRESS_LIBDEFLATE) {
#ifndef QIMG_HAVE_LIBDEFLATE
        return -ENOTSUP;
#else
        if (type != QCOW2_COMPRESSION_ZLIB) {
            return -EINVAL;
        }
        return level >= 0 && level <= QCOW2_LIBDEFLATE_LEVEL_MAX ? 0
                                                                 : -ERANGE;
#endif
    }
    switch (type) {
    case QCOW2_COMPRESSION_ZLIB:
        return level >= 0 && level <= 9 ? 0 : -ERANGE;
    case QCOW2_COMPRESSION_ZSTD:
        return level >= 0 && level <= ZSTD_maxCLevel() ? 0 : -ERANGE;
    default:
        return -ENOTSUP;
    }
}

int64_t qcow2_compress(uint8_t type, int level, unsigned flags, uint8_t *dst,
                       size_t dst_cap, const uint8_t *src, size_t src_len)
{
    switch (type) {
    case QCOW2_COMPRESSION_ZLIB:
#ifdef QIMG_HAVE_LIBDEFLATE
        if (flags & QIMG_COMPRESS_LIBDEFLATE) {
            return qcow2_libdeflate(level, dst, dst_cap, src, src_len);
        }
#else
        (void)flags; /* qcow2_compression_check refused the flag */
#endif
        return qcow2_deflate(level, dst, dst_cap, src, src_len);
    case QCOW2_COMPRESSION_ZSTD:
        return qcow2_zstd(level, dst, dst_cap, src, src_len);
    default:
        return -ENOTSUP;
    }
}
