/*
 * qcow2: QEMU's metadata preallocation heuristic, read-only.
 *
 * An image created with preallocation=metadata maps every cluster, but
 * its host file is sparse, so the mapped clusters read as zero.  [QEMU]
 * (qcow2_detect_metadata_preallocation) counts the clusters the
 * refcounts mark as used and compares them with what the host file
 * really allocates; when the refcounts claim clearly more, block status
 * asks the host file about every data run and reports holes as zero.
 * qemu-img map and compare show the result, so qimg decides the same way.
 *
 * Refcount blocks are read one at a time into a single cluster-sized
 * buffer; only the part of the refcount table that covers the file is
 * looked at, so the work is bounded by the file length.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>

#include "core/error.h"
#include "driver.h"
#include "formats/qcow2/qcow2.h"
#include "util/checked.h"
#include "util/endian.h"

/* Does entry i of a refcount block (width 1 << order bits) hold a non-0? */
static bool refcount_nonzero(const uint8_t *block, uint64_t i, unsigned order)
{
    unsigned bits = 1u << order;
    if (bits < 8) {
        /* [spec: Refcount blocks] sub-byte entries: bit 0 is the LSB. */
        uint64_t bit = i * bits;
        unsigned v = block[bit / 8] >> (bit % 8);
        return (v & ((1u << bits) - 1)) != 0;
    }
    const uint8_t *p = block + i * (bits / 8);
    for (unsigned b = 0; b < bits / 8; b++) {
        if (p[b]) {
            return true;
        }
    }
    return false;
}

int qcow2_detect_metadata_prealloc(struct qimg_node *node,
                                   struct qcow2_state *s)
{
    int64_t file_size = io_get_size(node->file);
    if (file_size < 0) {
        return (int)file_size;
    }
    int64_t real = node->file->ops->get_allocated(node->file);
    if (real < 0) {
        return (int)real;
    }
    /* [QEMU] the file length is counted in whole sectors. */
    uint64_t length = ((uint64_t)file_size + 511) & ~(uint64_t)511;
    uint64_t real_clusters = (uint64_t)real / s->cluster_size;
    uint64_t threshold = max_u64(real_clusters * 10 / 9, real_clusters + 2);
    uint64_t end_cluster = div_round_up_u64(length, s->cluster_size);

    unsigned block_bits = s->cluster_bits + 3 - s->refcount_order;
    uint64_t per_block = (uint64_t)1 << block_bits;
    uint64_t nb_blocks = min_u64(div_round_up_u64(end_cluster, per_block),
                                 s->refcount_table_entries);
    uint8_t *block = malloc((size_t)s->cluster_size);
    if (!block) {
        return error_set(ENOMEM, "Out of memory");
    }
    uint64_t count = 0;
    int ret = 0;
    for (uint64_t t = 0; t < nb_blocks && count < threshold; t++) {
        uint8_t e[8];
        uint64_t at = s->refcount_table_offset + t * 8;
        if (!qcow2_read_in_range(at, 8)) {
            ret = error_set(EIO, "qcow2: could not read the refcount table");
            break;
        }
        ret = io_pread(node->file, e, sizeof(e), at);
        if (ret < 0) {
            break;
        }
        uint64_t rb = load_be64(e) & QCOW2_REFT_OFFSET_MASK;
        if (rb == 0) {
            continue;
        }
        if (!is_aligned_u64(rb, s->cluster_size) ||
            !qcow2_read_in_range(rb, s->cluster_size)) {
            ret = error_set(EIO,
                            "qcow2: image '%s' is corrupt: refblock offset "
                            "%#" PRIx64 " unaligned (reftable index: %#" PRIx64
                            ")",
                            node->filename, rb, t);
            break;
        }
        ret = io_pread(node->file, block, (size_t)s->cluster_size, rb);
        if (ret < 0) {
            break;
        }
        uint64_t first = t * per_block;
        uint64_t n = min_u64(per_block, end_cluster - first);
        for (uint64_t i = 0; i < n && count < threshold; i++) {
            count += refcount_nonzero(block, i, s->refcount_order);
        }
    }
    free(block);
    if (ret < 0) {
        return ret;
    }
    return count >= threshold;
}
