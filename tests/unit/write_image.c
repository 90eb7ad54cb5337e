/*
 * write_image FILE FORMAT OP...: apply guest operations to an image
 * through the public API, the way a qemu-io command line would, so that
 * tests can run the same sequence through qemu-io on a copy and compare:
 *   w:OFF:LEN:BYTE   write LEN bytes of BYTE (qemu-io write -P BYTE)
 *   z:OFF:LEN        zero write (write -z)
 *   u:OFF:LEN        zero write that may unmap (write -z -u)
 *   d:OFF:LEN        discard
 *   c:OFF:LEN:BYTE   compressed write of whole clusters (write -c -P)
 *   r:SIZE           resize (growing; shrinking with a leading '-')
 *   f                flush
 *   o                close and reopen
 *   k                stop here without closing or flushing, as a crash
 *                    would (what the operations so far put on disk stays)
 * Numbers are decimal or 0x hex.  Prints the error and exits 1 on failure.
 * With QIMG_WRITE_KEY=OPTION:PASSWORD in the environment the image is
 * opened with the runtime option OPTION (key-secret, encrypt.key-secret)
 * naming a secret holding PASSWORD.
 * Used by tests/compat/qcow2_write.sh and encrypted.sh.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qimg/qimg.h"

static struct qimg_image *img;
static struct qimg_opts *open_opts;

static struct qimg_image *open_image(const char *file, const char *format)
{
    return qimg_open_opts(file, format, QIMG_OPEN_RDWR, open_opts);
}

static int fail(const char *op)
{
    fprintf(stderr, "%s: %s\n", op, qimg_get_error());
    return 1;
}

static int apply(const char *file, const char *format, const char *op)
{
    unsigned long long a = 0, b = 0, c = 0;
    char kind = op[0];
    const char *p = op + 1;
    if (*p == ':') {
        char *end;
        a = strtoull(p + 1, &end, 0);
        if (*end == ':') {
            b = strtoull(end + 1, &end, 0);
        }
        if (*end == ':') {
            c = strtoull(end + 1, &end, 0);
        }
    }
    switch (kind) {
    case 'w':
    case 'c': {
        uint8_t *buf = malloc(b ? b : 1);
        if (!buf) {
            return fail(op);
        }
        memset(buf, (int)c, b);
        int ret = 0;
        if (kind == 'w') {
            ret = qimg_pwrite(img, buf, b, a);
        } else {
            uint64_t cs = qimg_get_cluster_size(img);
            for (uint64_t o = 0; ret == 0 && o < b; o += cs) {
                uint64_t n = b - o < cs ? b - o : cs;
                ret = qimg_pwrite_compressed(img, buf + o, n, a + o);
            }
        }
        free(buf);
        return ret < 0 ? fail(op) : 0;
    }
    case 'z':
        return qimg_pwrite_zeroes(img, a, b, 0) < 0 ? fail(op) : 0;
    case 'u':
        return qimg_pwrite_zeroes(img, a, b, QIMG_ZERO_MAY_UNMAP) < 0
                   ? fail(op)
                   : 0;
    case 'd':
        return qimg_discard(img, a, b) < 0 ? fail(op) : 0;
    case 'r': {
        bool shrink = op[2] == '-';
        uint64_t size = strtoull(op + 2 + shrink, NULL, 0);
        return qimg_resize(img, size, NULL, shrink ? QIMG_RESIZE_SHRINK : 0) < 0
                   ? fail(op)
                   : 0;
    }
    case 'f':
        return qimg_flush(img) < 0 ? fail(op) : 0;
    case 'k':
        _exit(0);
    case 'o':
        if (qimg_close(img) < 0) {
            img = NULL;
            return fail(op);
        }
        img = open_image(file, format);
        return img ? 0 : fail(op);
    default:
        fprintf(stderr, "unknown operation '%s'\n", op);
        return 1;
    }
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: write_image FILE FORMAT OP...\n");
        return 2;
    }
    const char *key = getenv("QIMG_WRITE_KEY");
    const char *colon = key ? strchr(key, ':') : NULL;
    if (colon) {
        char option[64];
        snprintf(option, sizeof(option), "%.*s", (int)(colon - key), key);
        open_opts = qimg_opts_new();
        if (!open_opts || qimg_secret_add("wkey", colon + 1,
                                          strlen(colon + 1)) < 0 ||
            qimg_opts_set(open_opts, option, "wkey") < 0) {
            return fail("key");
        }
    }
    img = open_image(argv[1], argv[2]);
    if (!img) {
        return fail("open");
    }
    for (int i = 3; i < argc; i++) {
        if (apply(argv[1], argv[2], argv[i]) != 0) {
            qimg_close(img);
            return 1;
        }
    }
    return qimg_close(img) < 0 ? fail("close") : 0;
}
