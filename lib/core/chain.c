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
#include <limits.h>
#include <stdbool.h>
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

int node_fill_new_cluster(struct qimg_node *node, struct qimg_io *file,
                          uint64_t host, uint64_t guest, uint64_t len,
                          uint64_t in_cluster, const void *data, size_t n,
                          uint64_t below_end)
{
    size_t cap = (size_t)min_u64(len, NODE_FILL_CHUNK);
    uint8_t *buf = malloc(cap ? cap : 1);
    if (!buf) {
        return error_set(ENOMEM, "Out of memory");
    }
    int ret = 0;
    for (uint64_t pos = 0; pos < len && ret == 0; pos += cap) {
        size_t c = (size_t)min_u64(cap, len - pos);
        /* The part of [in_cluster, in_cluster + n) in this piece. */
        uint64_t lo = max_u64(pos, in_cluster);
        uint64_t hi = min_u64(pos + c, in_cluster + n);
        /* What lies below, unless the data covers the piece. */
        uint64_t at = guest + pos;
        size_t from_below =
            at < below_end ? (size_t)min_u64(c, below_end - at) : 0;
        if (lo == pos && hi == pos + c) {
            from_below = 0;
        }
        if (from_below == 0 && lo >= hi) {
            /* Nothing to copy: a piece of a huge cluster is only zeros. */
            ret = io_pwrite_zeroes(file, host + pos, c, false);
            continue;
        }
        memset(buf + from_below, 0, c - from_below);
        if (from_below > 0) {
            ret = node_read_below(node, buf, from_below, at);
        }
        if (ret == 0 && lo < hi) {
            if (data) {
                memcpy(buf + (lo - pos),
                       (const uint8_t *)data + (lo - in_cluster),
                       (size_t)(hi - lo));
            } else {
                memset(buf + (lo - pos), 0, (size_t)(hi - lo));
            }
        }
        if (ret == 0) {
            ret = io_pwrite(file, buf, c, host + pos);
        }
    }
    free(buf);
    return ret;
}

int node_below_is_zero(struct qimg_node *node, uint64_t off, uint64_t len)
{
    struct qimg_node *below = node->backing;
    /* Invariant: [off, off + len) is still to be shown to read as zero. */
    while (below && len > 0 && off < below->size) {
        uint64_t n = min_u64(len, below->size - off);
        struct chain_status st;
        int ret = chain_status_above(below, off, n, &st, NULL);
        if (ret < 0) {
            return ret;
        }
        if (!(st.flags & BS_ZERO) || st.pnum == 0) {
            return 0;
        }
        n = min_u64(st.pnum, n);
        off += n;
        len -= n;
    }
    return 1;
}

/* The file a layer's host offsets refer to. */
static struct qimg_io *layer_file(struct qimg_node *node)
{
    return node->data_io ? node->data_io : node->file;
}

/*
 * Is the host range [map, map + *pnum) of file a hole?  QEMU asks the
 * protocol layer, whose length is the file size in whole sectors: a range
 * at or past that end, or a hole that runs to it, reads as zero whatever
 * follows ("zero to the end"); otherwise *pnum is cut to the run the file
 * reports.  Errors are ignored, as QEMU ignores them: this only refines.
 */
static void layer_recurse(struct qimg_io *file, uint64_t map, uint64_t *pnum,
                          unsigned *flags)
{
    int64_t size = io_get_size(file);
    if (size < 0) {
        return;
    }
    uint64_t end = ((uint64_t)size + 511) & ~(uint64_t)511;
    if (map >= end) {
        *flags |= BS_ZERO;
        return;
    }
    uint64_t n = min_u64(*pnum, end - map);
    uint64_t file_pnum = 0;
    int ret = file->ops->block_status(file, map, n, &file_pnum);
    if (ret < 0 || file_pnum == 0 || file_pnum > n) {
        return;
    }
    bool zero = (ret & IO_STATUS_ZERO) != 0;
    if (zero && map + file_pnum == end) {
        *flags |= BS_ZERO;
        return;
    }
    *pnum = file_pnum;
    if (zero) {
        *flags |= BS_ZERO;
    }
}

int layer_block_status(struct qimg_node *node, uint64_t off, uint64_t bytes,
                       struct chain_status *st)
{
    memset(st, 0, sizeof(*st));
    st->node = node;
    if (off >= node->size) {
        st->flags = STATUS_EOF;
        return 0;
    }
    bytes = min_u64(bytes, node->size - off);
    if (bytes == 0) {
        return 0;
    }
    uint64_t pnum = 0;
    uint64_t host = 0;
    int ret = node->drv->block_status(node, off, bytes, &pnum, &host);
    if (ret < 0) {
        return ret;
    }
    if (pnum == 0 || pnum > bytes) {
        return error_set(EIO, "%s: driver returned an invalid block "
                         "status length", node->filename);
    }
    unsigned flags = (unsigned)ret;
    if (flags & BS_OFFSET_VALID) {
        st->map = host;
        st->file = layer_file(node);
    }
    if (flags & (BS_DATA | BS_ZERO)) {
        flags |= BS_ALLOCATED;
    } else {
        /*
         * Unallocated: zero when nothing lies below.  Added after the
         * allocation decision, so the range stays unallocated here.
         */
        flags &= ~BS_ALLOCATED;
        if (!node->backing || off >= node->backing->size) {
            flags |= BS_ZERO;
        }
    }
    if ((flags & BS_RECURSE) && st->file && (flags & BS_DATA) &&
        !(flags & BS_ZERO) && (flags & BS_OFFSET_VALID)) {
        layer_recurse(st->file, st->map, &pnum, &flags);
    }
    if (off + pnum == node->size) {
        flags |= STATUS_EOF;
    }
    st->flags = flags;
    st->pnum = pnum;
    return 0;
}

int chain_status_above(struct qimg_node *node, uint64_t off, uint64_t bytes,
                       struct chain_status *st, int *depth)
{
    int d = 0;
    int ret = layer_block_status(node, off, bytes, st);
    if (ret < 0 || st->pnum == 0 || (st->flags & BS_ALLOCATED)) {
        if (depth) {
            *depth = d;
        }
        return ret;
    }
    uint64_t eof = (st->flags & STATUS_EOF) ? off + st->pnum : 0;
    bytes = st->pnum;
    for (struct qimg_node *p = node->backing; p; p = p->backing) {
        d++;
        ret = layer_block_status(p, off, bytes, st);
        if (ret < 0) {
            return ret;
        }
        if (st->pnum == 0) {
            /*
             * The layer above deferred to this shorter one: the bytes
             * past its end read as zero, allocated by this layer.
             */
            st->pnum = bytes;
            st->flags = BS_ZERO | BS_ALLOCATED;
            st->file = NULL;
            break;
        }
        if (st->flags & BS_ALLOCATED) {
            /* Its end is not the end of the layers above. */
            st->flags &= ~STATUS_EOF;
            break;
        }
        bytes = st->pnum;
    }
    if (eof && off + st->pnum == eof) {
        st->flags |= STATUS_EOF;
    }
    if (depth) {
        *depth = d;
    }
    return 0;
}

int chain_block_status(struct qimg_node *node, uint64_t off, uint64_t len,
                       struct qimg_extent *ext)
{
    struct chain_status st;
    int depth = 0;
    int ret = chain_status_above(node, off, len, &st, &depth);
    if (ret < 0) {
        return ret;
    }
    if (st.pnum == 0) {
        return error_set(EIO, "%s: block status past the end of the image",
                         node->filename);
    }
    ext->offset = off;
    ext->length = st.pnum;
    ext->flags = st.flags & (QIMG_EXTENT_DATA | QIMG_EXTENT_ZERO |
                             QIMG_EXTENT_ALLOCATED | QIMG_EXTENT_OFFSET_VALID |
                             QIMG_EXTENT_COMPRESSED);
    ext->depth = depth;
    ext->host_offset = (st.flags & BS_OFFSET_VALID) ? st.map : 0;
    ext->filename = st.file ? st.file->filename : st.node->filename;
    return 0;
}

/*
 * The canonical path of name resolved against the image rel_to, in buf
 * (PATH_MAX bytes): 1, 0 when it does not resolve, or -ENOMEM.
 */
static int chain_real_path(const char *rel_to, const char *name, char *buf)
{
    char *path = path_combine(rel_to, name);
    if (!path) {
        return -ENOMEM;
    }
    bool ok = realpath(path, buf) != NULL;
    free(path);
    return ok ? 1 : 0;
}

int chain_find_backing(struct qimg_node *top, const char *name,
                       struct qimg_node **out)
{
    char *want = malloc(PATH_MAX);
    char *have = malloc(PATH_MAX);
    int ret = want && have ? -ENOENT : -ENOMEM;
    for (struct qimg_node *cur = top; ret == -ENOENT && cur->backing;
         cur = cur->backing) {
        const char *stored = cur->backing_name;
        if (path_is_protocol(name) || path_is_protocol(stored)) {
            /* Protocol names are compared as they are, then resolved. */
            char *full = path_combine(cur->filename, stored);
            if (!full) {
                ret = -ENOMEM;
                break;
            }
            if (strcmp(name, stored) == 0 || strcmp(name, full) == 0) {
                *out = cur->backing;
                ret = 0;
            }
            free(full);
            continue;
        }
        /* Both resolved against this layer's folder, then canonical. */
        int a = chain_real_path(cur->filename, name, want);
        int b = a > 0 ? chain_real_path(cur->filename, stored, have) : a;
        if (a < 0 || b < 0) {
            ret = -ENOMEM;
        } else if (a > 0 && b > 0 && strcmp(want, have) == 0) {
            *out = cur->backing;
            ret = 0;
        }
    }
    free(want);
    free(have);
    return ret == -ENOMEM ? error_set(ENOMEM, "Out of memory") : ret;
}
