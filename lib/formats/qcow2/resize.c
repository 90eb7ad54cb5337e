/*
 * qcow2: changing the guest size (qemu-img resize) [spec: Header (size,
 * l1_size, l1_table_offset), Cluster mapping].
 *
 * Growing may need a longer L1 table: a new one is written whole, synced,
 * the header switched to it, and the old one freed.  Shrinking drops
 * every cluster past the new end (the entries become unallocated, as
 * QEMU's full discard does) and the L2 tables that map nothing any more,
 * then trims the file after the last cluster in use.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "driver.h"
#include "formats/qcow2/qcow2.h"
#include "util/checked.h"
#include "util/endian.h"

/* Header field offsets [spec: Header]. */
#define HDR_SIZE_OFFSET 24
#define HDR_L1_SIZE_OFFSET 36 /* u32 l1_size, then u64 l1_table_offset */

static int write_size(struct qimg_node *node, struct qcow2_state *s,
                      uint64_t size)
{
    uint8_t be[8];
    store_be64(be, size);
    int ret = qcow2_header_update(node, HDR_SIZE_OFFSET, be, 8);
    if (ret == 0) {
        s->hdr.size = size;
        node->size = size;
        s->l1_vm_state_index =
            qcow2_size_to_l1(size, s->cluster_bits,
                             s->subclusters_per_cluster > 1);
    }
    return ret;
}

int qcow2_grow_l1(struct qimg_node *node, struct qcow2_state *s,
                   uint64_t new_size)
{
    const uint64_t cs = s->cluster_size;
    if (new_size > QCOW2_MAX_L1_SIZE / 8) {
        return error_set(EFBIG, "%s: the L1 table would be too large",
                         node->filename);
    }
    /* Everything the new table points at is on disk before it. */
    int ret = qcow2_write_flush(node, s);
    if (ret < 0) {
        return ret;
    }
    uint64_t bytes = new_size * 8;
    uint64_t clusters = div_round_up_u64(bytes, cs);
    uint64_t *t = calloc((size_t)new_size, sizeof(uint64_t));
    uint8_t *buf = calloc(1, (size_t)(clusters * cs));
    if (!t || !buf) {
        free(t);
        free(buf);
        return error_set(ENOMEM, "Out of memory");
    }
    if (s->l1_size > 0) {
        memcpy(t, s->l1_table, (size_t)s->l1_size * 8);
    }
    for (uint64_t i = 0; i < new_size; i++) {
        store_be64(buf + i * 8, t[i]);
    }
    uint64_t off;
    ret = qcow2_alloc_clusters(node, s, clusters, 0, &off, NULL);
    if (ret == 0) {
        ret = io_pwrite(node->file, buf, (size_t)(clusters * cs), off);
        if (ret < 0) {
            ret = error_set_errno(-ret, "%s: could not write the L1 table",
                                  node->filename);
        }
    }
    free(buf);
    /* The new table and its refcount are durable before the switch. */
    if (ret == 0) {
        ret = qcow2_refcount_writeback(node, s);
    }
    if (ret == 0) {
        ret = node_sync(node, node->file);
    }
    if (ret == 0) {
        uint8_t h[12];
        store_be32(h, (uint32_t)new_size);
        store_be64(h + 4, off);
        ret = qcow2_header_update(node, HDR_L1_SIZE_OFFSET, h, sizeof(h));
    }
    if (ret < 0) {
        free(t);
        return ret;
    }
    uint64_t old_off = s->l1_table_offset;
    uint64_t old_bytes = (uint64_t)s->l1_size * 8;
    free(s->l1_table);
    s->l1_table = t;
    s->l1_size = (uint32_t)new_size;
    s->l1_table_offset = off;
    s->hdr.l1_size = (uint32_t)new_size;
    s->hdr.l1_table_offset = off;
    if (old_bytes > 0) {
        ret = qcow2_free_later(node, s, old_off, old_bytes);
    }
    return ret == 0 ? qcow2_write_flush(node, s) : ret;
}

/* Drop the mapping of guest clusters [first, end) and emptied L2 tables. */
static int drop_tail(struct qimg_node *node, struct qcow2_state *s,
                     uint64_t first, uint64_t end, uint64_t keep_l1)
{
    int ret = 0;
    for (uint64_t c = first; ret == 0 && c < end; c++) {
        uint64_t l1i = c >> s->l2_bits;
        if (l1i >= s->l1_size || !(s->l1_table[l1i] & QCOW2_L1E_OFFSET_MASK)) {
            /* No table: skip to the next one. */
            c = ((l1i + 1) << s->l2_bits) - 1;
            continue;
        }
        uint8_t *p;
        ret = qcow2_l2_entry_rw(node, s, c, &p);
        if (ret < 0) {
            break;
        }
        uint64_t e = load_be64(p);
        uint64_t host = e & QCOW2_L2E_OFFSET_MASK;
        store_be64(p, 0);
        if (s->l2_entry_size == 16) {
            store_be64(p + 8, 0);
        }
        if (s->has_data_file) {
            continue;
        }
        if (e & QCOW2_OFLAG_COMPRESSED) {
            ret = qcow2_free_compressed_later(node, s, e);
        } else if (host) {
            ret = qcow2_free_later(node, s, host, s->cluster_size);
        }
    }
    for (uint64_t i = keep_l1; ret == 0 && i < s->l1_size; i++) {
        uint64_t l2 = s->l1_table[i] & QCOW2_L1E_OFFSET_MASK;
        if (l2) {
            s->l1_table[i] = 0;
            qcow2_l1_mark_dirty(s, i);
            ret = qcow2_free_later(node, s, l2, s->cluster_size);
        }
    }
    return ret;
}

/*
 * Host clusters for guest clusters [first, end) that have none, in one
 * contiguous run where possible (QEMU's preallocation of a new area);
 * falloc and full also reserve the bytes in the file.
 */
static int preallocate(struct qimg_node *node, struct qcow2_state *s,
                       uint64_t first, uint64_t end, const char *mode)
{
    const uint64_t cs = s->cluster_size;
    bool reserve = strcmp(mode, "metadata") != 0;
    uint64_t c = first;
    int ret = 0;
    uint64_t file_end = 0;
    while (ret == 0 && c < end) {
        uint8_t *p;
        ret = qcow2_l2_entry_rw(node, s, c, &p);
        if (ret < 0) {
            break;
        }
        uint64_t host, got = 1;
        if (s->has_data_file) {
            host = c << s->cluster_bits;
        } else {
            uint64_t left = ((c >> s->l2_bits) + 1) << s->l2_bits;
            ret = qcow2_alloc_clusters(node, s, min_u64(end, left) - c,
                                       QCOW2_ALLOC_UPTO, &host, &got);
            if (ret < 0) {
                break;
            }
        }
        if (reserve) {
            struct qimg_io *io = s->has_data_file ? s->data_file : node->file;
            ret = strcmp(mode, "falloc") == 0
                      ? io_allocate(io, host, got * cs)
                      : io_pwrite_zeroes(io, host, got * cs, false);
            if (ret < 0) {
                ret = error_set_errno(-ret, "%s: could not preallocate",
                                      node->filename);
                break;
            }
        }
        for (uint64_t i = 0; ret == 0 && i < got; i++) {
            ret = qcow2_l2_entry_rw(node, s, c + i, &p);
            if (ret == 0) {
                store_be64(p, (host + i * cs) | QCOW2_OFLAG_COPIED);
                if (s->l2_entry_size == 16) {
                    store_be64(p + 8, 0xffffffffull);
                }
            }
        }
        file_end = max_u64(file_end, host + got * cs);
        c += got;
    }
    if (ret == 0 && !s->has_data_file) {
        /* Data clusters past the end of the file would read as corrupt. */
        int64_t fsize = io_get_size(node->file);
        if (fsize >= 0 && (uint64_t)fsize < file_end) {
            ret = io_truncate(node->file, file_end);
        }
    }
    return ret;
}

/* The refusals, before anything changes; then the write path set up. */
static int truncate_check(struct qimg_node *node, struct qcow2_state *s,
                          uint64_t size, const char *prealloc)
{
    if (size & 511) {
        return error_set(EINVAL, "The new size must be a multiple of 512");
    }
    /*
     * [QEMU] a v2 snapshot need not record its disk size, so applying
     * one to a resized image could not restore the size.
     */
    if (s->snapshots.nb > 0 && s->hdr.version < 3) {
        return error_set(ENOTSUP,
                         "Can't resize a v2 image which has snapshots");
    }
    /*
     * [QEMU] a bitmap flagged in use when the image was opened is stale:
     * it cannot be resized with the others.
     */
    const char *stale = qcow2_bitmaps_stale(s);
    if (stale) {
        return error_set(EINVAL,
                         "Bitmap '%s' is inconsistent and cannot be used\n"
                         "Try block-dirty-bitmap-remove to delete this "
                         "bitmap from disk",
                         stale);
    }
    bool off = strcmp(prealloc, "off") == 0;
    if (!off && strcmp(prealloc, "metadata") && strcmp(prealloc, "falloc") &&
        strcmp(prealloc, "full")) {
        return error_set(EINVAL, "Unsupported preallocation mode '%s'",
                         prealloc);
    }
    uint64_t old = node->size;
    if (size < old && !off) {
        return error_set(ENOTSUP,
                         "Preallocation can only be used for growing images");
    }
    int ret = qcow2_write_begin(node, s);
    if (ret < 0) {
        return ret;
    }
    if (s->corrupt) {
        return error_set(EIO, "qcow2: image '%s' is marked corrupt",
                         node->filename);
    }
    return 0;
}

static int truncate_image(struct qimg_node *node, struct qcow2_state *s,
                          uint64_t size, const char *prealloc)
{
    const uint64_t cs = s->cluster_size;
    bool off = strcmp(prealloc, "off") == 0;
    uint64_t old = node->size;
    int ret;
    bool extl2 = s->subclusters_per_cluster > 1;
    uint64_t new_l1 = qcow2_size_to_l1(size, s->cluster_bits, extl2);
    if (size < old) {
        uint64_t first = div_round_up_u64(size, cs);
        uint64_t end = div_round_up_u64(old, cs);
        ret = drop_tail(node, s, first, end, new_l1);
        if (ret == 0) {
            ret = write_size(node, s, size);
        }
        if (ret == 0) {
            ret = qcow2_write_flush(node, s);
        }
        uint64_t last;
        if (ret == 0 && !s->has_data_file) {
            ret = qcow2_refcount_end(node, s, &last);
        }
        if (ret == 0 && !s->has_data_file) {
            int64_t fsize = io_get_size(node->file);
            if (fsize >= 0 && last * cs < (uint64_t)fsize) {
                ret = io_truncate(node->file, last * cs);
            }
        }
        if (ret == 0 && s->data_file &&
            (s->hdr.autoclear_features & QCOW2_AUTOCLEAR_DATA_FILE_RAW)) {
            ret = io_truncate(s->data_file, size);
        }
        return ret;
    }
    if (new_l1 > s->l1_size) {
        ret = qcow2_grow_l1(node, s, new_l1);
        if (ret < 0) {
            return ret;
        }
    }
    /*
     * The new area reads as zero before the header shows it, so that a
     * crash leaves the old size or zeros, never old bytes: the bytes of
     * the old last cluster past the old end (they may hold data from
     * before a shrink) and, over a longer backing file, the whole area it
     * would show through.  The core zero-writes that area again after
     * the size switch, as QEMU does, which finds it zero.
     */
    uint64_t zero_end = min_u64(div_round_up_u64(old, cs) * cs, size);
    if (node->backing && node->backing->size > old) {
        zero_end = max_u64(zero_end, min_u64(node->backing->size, size));
    }
    if (zero_end > old) {
        ret = qcow2_pwrite_zeroes(node, old, zero_end - old, 0);
        if (ret == 0) {
            ret = qcow2_write_flush(node, s);
        }
        if (ret < 0) {
            return ret;
        }
    }
    if (s->data_file &&
        (s->hdr.autoclear_features & QCOW2_AUTOCLEAR_DATA_FILE_RAW)) {
        ret = io_truncate(s->data_file, size);
        if (ret < 0) {
            return error_set_errno(-ret, "%s: could not resize the data file",
                                   s->data_file->filename);
        }
    }
    ret = write_size(node, s, size);
    if (ret == 0 && !off) {
        ret = preallocate(node, s, div_round_up_u64(old, cs),
                          div_round_up_u64(size, cs), prealloc);
    }
    if (ret == 0) {
        ret = qcow2_write_flush(node, s);
    }
    return ret;
}

/*
 * Persistent bitmaps get tables for the new size first and stay flagged
 * in use until the header has the new size: every flush in between keeps
 * them so, since the tables and the size disagree until then (and for
 * good if the resize fails half-way: the bitmaps are then inconsistent,
 * which QEMU says, never wrong).
 */
int qcow2_truncate(struct qimg_node *node, uint64_t size, const char *prealloc)
{
    struct qcow2_state *s = node->opaque;
    int ret = truncate_check(node, s, size, prealloc);
    if (ret < 0 || s->bitmaps.nb == 0 || size == node->size) {
        return ret < 0 ? ret : truncate_image(node, s, size, prealloc);
    }
    s->bm_resizing = true;
    ret = qcow2_bitmaps_resize(node, s, size);
    if (ret == 0) {
        ret = truncate_image(node, s, size, prealloc);
    }
    if (ret == 0) {
        s->bm_resizing = false;
        ret = qcow2_write_flush(node, s);
    }
    return ret;
}
