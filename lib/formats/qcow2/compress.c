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

#include "formats/qcow2/qcow2.h"

/*
 * zlib: a raw deflate stream (no zlib header), 4 KiB window, which is
 * what windowBits -12 selects.  [QEMU] accepts the cluster as soon as the
 * output buffer is full, whether inflate reports the stream end or that
 * it ran out of output space (Z_BUF_ERROR).
 */
static int qcow2_inflate(uint8_t *dst, size_t dst_len, const uint8_t *src,
                         size_t src_len)
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
 * zlib as QEMU writes it: raw deflate, 4 KiB window (-12), the default
 * level and memLevel 9, one Z_FINISH call.  Output that does not fit in
 * dst_cap (the caller passes cluster_size - 1) means "store it plain".
 */
static int64_t qcow2_deflate(uint8_t *dst, size_t dst_cap,
                             const uint8_t *src, size_t src_len)
{
    if (dst_cap > UINT32_MAX || src_len > UINT32_MAX) {
        return -EINVAL;
    }
    z_stream z = {0};
    if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9,
                     Z_DEFAULT_STRATEGY) != Z_OK) {
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

/* zstd: one frame at the default level (3), as QEMU's single call makes. */
static int64_t qcow2_zstd(uint8_t *dst, size_t dst_cap, const uint8_t *src,
                          size_t src_len)
{
    size_t n = ZSTD_compress(dst, dst_cap, src, src_len,
                             ZSTD_CLEVEL_DEFAULT);
    if (ZSTD_isError(n)) {
        return ZSTD_getErrorCode(n) == ZSTD_error_dstSize_tooSmall
                   ? -ENOSPC
                   : -ENOMEM;
    }
    return (int64_t)n;
}

int64_t qcow2_compress(uint8_t type, uint8_t *dst, size_t dst_cap,
                       const uint8_t *src, size_t src_len)
{
    switch (type) {
    case QCOW2_COMPRESSION_ZLIB:
        return qcow2_deflate(dst, dst_cap, src, src_len);
    case QCOW2_COMPRESSION_ZSTD:
        return qcow2_zstd(dst, dst_cap, src, src_len);
    default:
        return -ENOTSUP;
    }
}
