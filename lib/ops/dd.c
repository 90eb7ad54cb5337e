/*
 * qimg_dd: qemu-img 7.2's dd.  The output is created with the size the
 * operands give, then filled from the input front to back.
 *
 * qemu-img 7.2 computes the output size in this order, and qimg keeps it
 * (it is not GNU dd's): the input size, rounded up to 512 bytes; capped
 * at count * bs when count is given and the product fits in int64; then
 * minus skip * bs, or 0 when that offset lies past the (capped) size.  So
 * skip and count together copy count - skip blocks, not count.
 *
 * Every byte is written as data, zeros included (qemu-img writes each
 * block with a plain write), so the output is fully allocated just as
 * qemu-img's.  Only the public API is used.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qimg/qimg.h"
#include "core/error.h"
#include "util/checked.h"

#define SECTOR 512u
/*
 * The largest copy buffer.  Blocks up to this size are copied several at
 * a time (a whole number of blocks per read, so a read error stops at the
 * same block as qemu-img's block-by-block copy); larger blocks are copied
 * in pieces of this size, so after a read error inside such a block the
 * pieces of it before the error are in the output, where qemu-img would
 * have written none of that block.
 */
#define DD_BUF_MAX (1u * 1024 * 1024)

struct dd {
    const struct qimg_dd_params *p;
    struct qimg_image *in;
    struct qimg_image *out;
    uint64_t in_size; /* what the input itself holds */
    uint8_t *buf;
};

/* Bytes copied at once: whole blocks, or a piece of one big block. */
static size_t chunk_size(uint64_t bs)
{
    return bs <= DD_BUF_MAX ? (size_t)(DD_BUF_MAX / bs * bs) : DD_BUF_MAX;
}

/* Read [off, off + len) of the input; bytes past its end read as zero. */
static int read_input(struct dd *d, uint8_t *buf, uint64_t off, size_t len)
{
    size_t avail = 0;
    if (off < d->in_size) {
        avail = (size_t)min_u64(d->in_size - off, len);
    }
    if (avail > 0 && qimg_pread(d->in, buf, avail, off) < 0) {
        int err = qimg_get_errno() ? qimg_get_errno() : EIO;
        return error_set(err, "error while reading from input image file: "
                         "%s", strerror(err));
    }
    memset(buf + avail, 0, len - avail);
    return 0;
}

static int write_output(struct dd *d, const uint8_t *buf, uint64_t off,
                        size_t len)
{
    if (qimg_pwrite(d->out, buf, len, off) < 0) {
        int err = qimg_get_errno() ? qimg_get_errno() : EIO;
        return error_set(err, "error while writing to output image file: "
                         "%s", strerror(err));
    }
    return 0;
}

/*
 * Copy input [in_pos, end) to output offset 0 onwards.  *copied counts
 * the bytes written, also when a read or write fails part way.
 */
static int copy_data(struct dd *d, uint64_t in_pos, uint64_t end,
                     uint64_t *copied)
{
    uint64_t bs = d->p->block_size;
    size_t chunk = chunk_size(bs);
    uint64_t out_pos = 0;
    while (in_pos < end) {
        size_t n = (size_t)min_u64(end - in_pos, chunk);
        int ret = read_input(d, d->buf, in_pos, n);
        if (ret < 0 && n > bs) {
            /*
             * qemu-img reads one block at a time: write the blocks before
             * the one that fails, then fail with its error.
             */
            size_t good = 0;
            while (good < n) {
                size_t b = (size_t)min_u64(n - good, bs);
                ret = read_input(d, d->buf + good, in_pos + good, b);
                if (ret < 0) {
                    break;
                }
                good += b;
            }
            if (ret < 0 && good > 0) {
                /* Keep the read error if the write succeeds. */
                char *msg = strdup(qimg_get_error());
                int wret = write_output(d, d->buf, out_pos, good);
                if (wret == 0) {
                    *copied += good;
                    error_set(-ret, "%s", msg ? msg : "Out of memory");
                } else {
                    ret = wret;
                }
                free(msg);
            }
        }
        if (ret < 0) {
            return ret;
        }
        ret = write_output(d, d->buf, out_pos, n);
        if (ret < 0) {
            return ret;
        }
        *copied += n;
        in_pos += n;
        out_pos += n;
    }
    return 0;
}

/* "FILE: why" from creation becomes qemu-img dd's wording. */
static int create_error(const char *filename)
{
    int err = qimg_get_errno() ? qimg_get_errno() : EIO;
    const char *msg = qimg_get_error();
    size_t plen = strlen(filename);
    if (strncmp(msg, filename, plen) == 0 &&
        strncmp(msg + plen, ": ", 2) == 0) {
        msg += plen + 2;
    }
    char *why = strdup(msg);
    if (!why) {
        return error_set(ENOMEM, "Out of memory");
    }
    error_set(err, "%s: error while creating output image: %s", filename,
              why);
    free(why);
    return -err;
}

static int create_output(const struct qimg_dd_params *p, const char *fmt,
                         uint64_t size)
{
    struct qimg_opts *opts = qimg_opts_new();
    if (!opts) {
        return error_set(ENOMEM, "Out of memory");
    }
    char num[32];
    snprintf(num, sizeof(num), "%llu", (unsigned long long)size);
    int ret = qimg_opts_set(opts, "size", num);
    if (ret == 0) {
        ret = qimg_create_prepare(p->output, fmt, opts, 0);
    }
    if (ret == 0) {
        ret = qimg_create(p->output, fmt, opts);
    }
    qimg_opts_free(opts);
    return ret < 0 ? create_error(p->output) : 0;
}

static int check_params(const struct qimg_dd_params *p)
{
    if (!p || !p->input || !p->output) {
        return error_set(EINVAL, "Must specify both input and output files");
    }
    if (p->block_size < 1 || p->block_size > QIMG_DD_MAX_BLOCK_SIZE) {
        return error_set(EINVAL, "Invalid bs specified. Must be between 1 "
                         "and %u.", QIMG_DD_MAX_BLOCK_SIZE);
    }
    if (p->has_count && p->count > INT64_MAX) {
        return error_set(EINVAL, "Invalid count specified. Must be between "
                         "0 and %lld.", (long long)INT64_MAX);
    }
    if (p->skip > INT64_MAX) {
        return error_set(EINVAL, "Invalid skip specified. Must be between "
                         "0 and %lld.", (long long)INT64_MAX);
    }
    return 0;
}

/* The plan: the copy is input [*start, *end) to output offset 0. */
static int plan(struct dd *d, uint64_t *start, uint64_t *end, bool *past)
{
    const struct qimg_dd_params *p = d->p;
    int64_t s = qimg_get_size(d->in);
    if (s < 0) {
        return error_set(qimg_get_errno() ? qimg_get_errno() : EIO,
                         "Failed to get size for '%s'", p->input);
    }
    d->in_size = (uint64_t)s;
    uint64_t size;
    /* [QEMU] the block layer counts whole sectors. */
    if (align_up_overflow_u64(d->in_size, SECTOR, &size) ||
        size > INT64_MAX) {
        return error_set(EFBIG, "Failed to get size for '%s'", p->input);
    }
    uint64_t bs = p->block_size;
    uint64_t limit;
    if (p->has_count && !mul_overflow_u64(p->count, bs, &limit) &&
        limit <= INT64_MAX && limit < size) {
        size = limit;
    }
    uint64_t offset;
    *past = mul_overflow_u64(p->skip, bs, &offset) || offset > INT64_MAX ||
            offset > size;
    *start = *past ? size : offset;
    *end = size;
    return 0;
}

/*
 * Close an image.  After an earlier failure (ret < 0) its message is
 * kept, whatever the close does; otherwise a failing close (a flush)
 * is the failure.
 */
static int close_image(struct qimg_image *img, int ret)
{
    if (!img) {
        return ret;
    }
    if (ret == 0) {
        return qimg_close(img) < 0 ? -1 : 0;
    }
    char *msg = strdup(qimg_get_error());
    int err = qimg_get_errno();
    qimg_close(img);
    error_set(err ? err : EIO, "%s", msg ? msg : "Out of memory");
    free(msg);
    return ret;
}

int qimg_dd(const struct qimg_dd_params *params, struct qimg_dd_result *out)
{
    struct dd d = {.p = params};
    struct qimg_dd_result res = {0};
    int ret = -1;

    error_clear();
    if (check_params(params) < 0) {
        goto done;
    }
    const char *fmt = params->output_format ? params->output_format : "raw";
    d.in = qimg_open_opts(params->input, params->input_format,
                          params->input_flags, params->input_driver_opts);
    if (!d.in) {
        goto done;
    }
    if (!qimg_format_known(fmt)) {
        error_set(EINVAL, "Unknown file format");
        goto done;
    }
    uint64_t start = 0, end = 0;
    bool past = false;
    if (plan(&d, &start, &end, &past) < 0) {
        goto done;
    }
    res.output_size = end - start;
    if (create_output(params, fmt, res.output_size) < 0) {
        goto done;
    }
    d.out = qimg_open(params->output, fmt, QIMG_OPEN_RDWR);
    if (!d.out) {
        goto done;
    }
    /* [QEMU] only now is a skip past the end reported, and not an error. */
    res.skip_past_end = past;
    d.buf = malloc(chunk_size(params->block_size));
    if (!d.buf) {
        error_set(ENOMEM, "Out of memory");
        goto done;
    }
    if (copy_data(&d, start, end, &res.bytes_copied) < 0) {
        goto done;
    }
    ret = 0;
done:
    ret = close_image(d.out, ret);
    ret = close_image(d.in, ret);
    free(d.buf);
    if (out) {
        *out = res;
    }
    if (ret < 0) {
        errno = qimg_get_errno() ? qimg_get_errno() : EIO;
    }
    return ret;
}
