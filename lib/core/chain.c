/*
 * Backing chains: opening the layers below an image, reading below a
 * layer, and block status above a chain.
 *
 * "Unallocated here" is not "zero": a range a layer does not allocate is
 * decided by the layers below it, and bytes past the end of a shorter
 * backing file read as zeros.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/error.h"
#include "core/image.h"
#include "util/checked.h"
#include "util/path.h"

static int chain_stat(const char *path, struct chain_link *link)
{
    struct stat st;
    if (stat(path, &st) < 0) {
        return error_set_errno(errno, "Could not open '%s'", path);
    }
    link->dev = (unsigned long long)st.st_dev;
    link->ino = (unsigned long long)st.st_ino;
    return 0;
}

int chain_open_backing(struct qimg_node *node, unsigned flags,
                       const struct chain_link *up)
{
    const char *name = node->backing_name;
    if (flags & QIMG_OPEN_NO_EXTERNAL) {
        return error_set(EPERM, "Could not open backing file: the image "
                         "names backing file '%s' and external references "
                         "are refused", name);
    }
    if (path_is_protocol(name)) {
        return error_set(ENOTSUP, "Could not open backing file: '%s' is "
                         "not a plain local file name", name);
    }

    struct chain_link self = {
        .up = up,
        .depth = up ? up->depth + 1 : 0,
    };
    int ret = chain_stat(node->filename, &self);
    if (ret < 0) {
        return ret;
    }
    if (self.depth + 1 >= CHAIN_MAX_DEPTH) {
        return error_set(ELOOP, "Could not open backing file: the backing "
                         "chain is deeper than %d images", CHAIN_MAX_DEPTH);
    }

    char *path = path_combine(node->filename, name);
    if (!path) {
        return error_set(ENOMEM, "Out of memory");
    }
    struct chain_link below = {0};
    ret = chain_stat(path, &below);
    if (ret < 0) {
        ret = error_prefix(-ret, "Could not open backing file");
        free(path);
        return ret;
    }
    for (const struct chain_link *l = &self; l; l = l->up) {
        if (l->dev == below.dev && l->ino == below.ino) {
            ret = error_set(ELOOP, "Backing file '%s' creates an infinite "
                            "loop.", path);
            free(path);
            return ret;
        }
    }

    /* Backing files are only read; they are never written through. */
    unsigned backing_flags = (flags & ~QIMG_OPEN_RDWR);
    ret = node_open(path, node->backing_format, backing_flags, &self,
                    &node->backing);
    if (ret < 0) {
        /* Loop and depth errors already say what happened. */
        if (ret != -ELOOP) {
            ret = error_prefix(-ret, "Could not open backing file");
        }
    }
    free(path);
    return ret;
}

int node_read_below(struct qimg_node *node, void *buf, size_t len,
                    uint64_t off)
{
    struct qimg_node *below = node->backing;
    size_t n = 0;
    if (below && off < below->size) {
        n = (size_t)min_u64(len, below->size - off);
        int ret = below->drv->pread(below, buf, n, off);
        if (ret < 0) {
            return ret;
        }
    }
    memset((uint8_t *)buf + n, 0, len - n);
    return 0;
}

int chain_block_status(struct qimg_node *node, uint64_t off, uint64_t len,
                       struct qimg_extent *ext)
{
    int depth = 0;
    uint64_t n = len;
    unsigned flags;
    uint64_t host = 0;
    const char *filename = node->filename;

    for (;;) {
        if (off >= node->size) {
            /* Past the end of a shorter backing file: zeros. */
            flags = QIMG_EXTENT_ZERO;
            break;
        }
        n = min_u64(n, node->size - off);
        uint64_t pnum = 0;
        int ret = node->drv->block_status(node, off, n, &pnum, &host);
        if (ret < 0) {
            return ret;
        }
        if (pnum == 0 || pnum > n) {
            return error_set(EIO, "%s: driver returned an invalid block "
                             "status length", node->filename);
        }
        n = pnum;
        filename = node->filename;
        if ((ret & BS_ALLOCATED) || !node->backing) {
            flags = (unsigned)ret;
            if (!(ret & BS_ALLOCATED)) {
                /* Nothing below: an unallocated range reads as zeros. */
                flags |= QIMG_EXTENT_ZERO;
            }
            break;
        }
        node = node->backing;
        depth++;
    }

    ext->offset = off;
    ext->length = n;
    ext->flags = flags;
    ext->depth = depth;
    ext->host_offset = (flags & QIMG_EXTENT_OFFSET_VALID) ? host : 0;
    ext->filename = filename;
    return 0;
}
