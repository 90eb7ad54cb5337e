/*
 * read_image FILE OUT.raw [FORMAT]: open an image with its backing chain
 * through the public API and write its whole guest content to OUT.raw,
 * read with qimg_pread in chunks of varying size (so that requests start
 * and end inside clusters).  Prints the error and exits 1 on failure.
 * read_image --map FILE: print "start length data zero offset" for each
 * extent qimg_block_status returns (offset -1 when not valid).
 * Used by tests/compat/qcow2_read.sh.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qimg/qimg.h"

#define CHUNK_MAX (3u * 1024 * 1024 + 4096)

static int map_image(const char *filename)
{
    struct qimg_image *img = qimg_open(filename, NULL, 0);
    if (!img) {
        fprintf(stderr, "%s\n", qimg_get_error());
        return 1;
    }
    int64_t size = qimg_get_size(img);
    int rc = size < 0;
    uint64_t off = 0;
    while (rc == 0 && off < (uint64_t)size) {
        struct qimg_extent e;
        if (qimg_block_status(img, off, (uint64_t)size - off, &e) < 0) {
            fprintf(stderr, "%s\n", qimg_get_error());
            rc = 1;
            break;
        }
        printf("%llu %llu %d %d %lld\n", (unsigned long long)e.offset,
               (unsigned long long)e.length, (e.flags & QIMG_EXTENT_DATA) != 0,
               (e.flags & QIMG_EXTENT_ZERO) != 0,
               (e.flags & QIMG_EXTENT_OFFSET_VALID) ? (long long)e.host_offset
                                                    : -1LL);
        off += e.length;
    }
    if (qimg_close(img) != 0) {
        rc = 1;
    }
    return rc;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--map") == 0) {
        return map_image(argv[2]);
    }
    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: read_image FILE OUT.raw [FORMAT]\n");
        return 2;
    }
    struct qimg_image *img = qimg_open(argv[1], argc == 4 ? argv[3] : NULL, 0);
    if (!img) {
        fprintf(stderr, "%s\n", qimg_get_error());
        return 1;
    }
    int64_t size = qimg_get_size(img);
    FILE *out = fopen(argv[2], "wb");
    uint8_t *buf = malloc(CHUNK_MAX);
    int rc = 0;
    if (size < 0 || !out || !buf) {
        fprintf(stderr, "read_image: setup failed\n");
        rc = 1;
    }
    /* Chunk sizes cycle through odd multiples of 512 up to CHUNK_MAX. */
    static const uint64_t chunks[] = {
        512, 65536 + 1024, 4096, 3u * 1024 * 1024 + 4096, 1536, 1048576,
    };
    uint64_t off = 0;
    for (size_t i = 0; rc == 0 && off < (uint64_t)size; i++) {
        uint64_t n = chunks[i % (sizeof(chunks) / sizeof(chunks[0]))];
        if (n > (uint64_t)size - off) {
            n = (uint64_t)size - off;
        }
        if (qimg_pread(img, buf, (size_t)n, off) < 0) {
            fprintf(stderr, "%s\n", qimg_get_error());
            rc = 1;
        } else if (fwrite(buf, 1, (size_t)n, out) != n) {
            fprintf(stderr, "read_image: write failed\n");
            rc = 1;
        }
        off += n;
    }
    free(buf);
    if (out && fclose(out) != 0) {
        rc = 1;
    }
    if (qimg_close(img) != 0) {
        rc = 1;
    }
    return rc;
}
