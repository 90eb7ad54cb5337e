/*
 * qimg_map_next: qemu-img map's entries.
 *
 * qemu-img map asks each layer in turn, from the top, until one reports
 * data or zeros (QEMU's get_block_status in qemu-img.c), then merges
 * adjacent answers that agree (entry_mergeable).  The layer answers come
 * from the core's QEMU-shaped block status (core/chain.c), which is why
 * this op uses the core directly rather than only the public API.
 */
#include <errno.h>
#include <string.h>

#include "core/error.h"
#include "core/image.h"
#include "util/checked.h"

/* Largest range asked about at once (qemu-img's map probes 1 GiB). */
#define MAP_WINDOW (1ull << 30)

/* One answer of the layer walk for at most n bytes at off. */
static int map_piece(struct qimg_node *top, uint64_t off, uint64_t n,
                     struct qimg_map_entry *e)
{
    struct qimg_node *node = top;
    struct chain_status st;
    int depth = 0;
    unsigned flags;
    for (;;) {
        int ret = layer_block_status(node, off, n, &st);
        if (ret < 0) {
            return ret;
        }
        if (st.pnum == 0) {
            /* A layer above would have reported zeros past this end. */
            return error_set(EIO, "%s: block status past the end",
                             node->filename);
        }
        n = st.pnum;
        flags = st.flags;
        if (flags & (BS_ZERO | BS_DATA)) {
            break;
        }
        node = node->backing;
        if (!node) {
            /* [QEMU] nothing decided: all flags clear. */
            flags = 0;
            break;
        }
        depth++;
    }
    memset(e, 0, sizeof(*e));
    e->start = off;
    e->length = n;
    e->depth = depth;
    e->present = (flags & BS_ALLOCATED) != 0;
    e->zero = (flags & BS_ZERO) != 0;
    e->data = (flags & BS_DATA) != 0;
    e->has_offset = (flags & BS_OFFSET_VALID) != 0;
    if (e->has_offset) {
        e->offset = st.map;
        e->filename = st.file ? st.file->filename : NULL;
    }
    return 0;
}

/* qemu-img 7.2's entry_mergeable (next follows cur directly). */
static bool map_mergeable(const struct qimg_map_entry *cur,
                          const struct qimg_map_entry *next)
{
    if (cur->zero != next->zero || cur->data != next->data ||
        cur->depth != next->depth || cur->present != next->present ||
        !cur->filename != !next->filename ||
        cur->has_offset != next->has_offset) {
        return false;
    }
    if (cur->filename && strcmp(cur->filename, next->filename) != 0) {
        return false;
    }
    uint64_t end;
    if (cur->has_offset && (add_overflow_u64(cur->offset, cur->length, &end) ||
                            end != next->offset)) {
        return false;
    }
    return true;
}

static int map_fail(int ret)
{
    errno = -ret;
    return -1;
}

int qimg_map_next(struct qimg_image *img, uint64_t start, uint64_t end,
                  struct qimg_map_entry *e)
{
    error_clear();
    if (!img || !e) {
        return map_fail(error_set(EINVAL, "qimg_map_next: no image"));
    }
    struct qimg_node *top = img->top;
    end = min_u64(end, top->size);
    if (start >= end) {
        return 0;
    }
    int ret = map_piece(top, start, min_u64(MAP_WINDOW, end - start), e);
    if (ret < 0) {
        return map_fail(ret);
    }
    while (e->start + e->length < end) {
        uint64_t off = e->start + e->length;
        struct qimg_map_entry next;
        ret = map_piece(top, off, min_u64(MAP_WINDOW, end - off), &next);
        if (ret < 0) {
            return map_fail(ret);
        }
        if (!map_mergeable(e, &next)) {
            break;
        }
        e->length += next.length;
    }
    return 1;
}
