/*
 * qcow2: metadata overlap checks and the corrupt bit [spec: Header,
 * incompatible bit 1].
 *
 * A hostile or damaged image can claim (through a refcount of zero or an
 * L2 entry) that a cluster holding metadata is free or is guest data.
 * Writing there would destroy the image, so before guest data or a newly
 * allocated cluster is written the range is compared with the metadata
 * the image is known to have, as QEMU's default overlap checks do; an
 * overlap marks the image corrupt and the write fails.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core/error.h"
#include "driver.h"
#include "formats/qcow2/qcow2.h"
#include "util/checked.h"

int qcow2_signal_corruption(struct qimg_node *node, struct qcow2_state *s,
                            const char *fmt, ...)
{
    char what[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    if (node->writable && !s->corrupt) {
        s->corrupt = true;
        warn_report("qcow2: Marking image as corrupt: %s; further "
                    "corruption events will be suppressed",
                    what);
        /* v2 headers have no feature bits: the mark stays in memory. */
        if (s->hdr.version >= 3) {
            (void)qcow2_set_incompat(node, s,
                                     s->hdr.incompatible_features |
                                         QCOW2_INCOMPAT_CORRUPT);
        }
    }
    return error_set(EIO, "qcow2: image '%s' is corrupt: %s", node->filename,
                     what);
}

static bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return alen > 0 && blen > 0 && a < b + blen && b < a + alen;
}

const char *qcow2_overlap_what(const struct qcow2_state *s, uint64_t off,
                               uint64_t len)
{
    const uint64_t cs = s->cluster_size;
    const char *what = NULL;
    if (overlaps(off, len, 0, cs)) {
        what = "main header";
    } else if (overlaps(off, len, s->l1_table_offset,
                        (uint64_t)s->l1_size * 8)) {
        what = "active L1 table";
    } else if (overlaps(off, len, s->refcount_table_offset,
                        s->refcount_table_entries * 8)) {
        what = "refcount table";
    } else if (s->hdr.nb_snapshots > 0 &&
               overlaps(off, len, s->hdr.snapshots_offset,
                        s->snapshots.size)) {
        what = "snapshot table";
    } else if (s->hdr.nb_bitmaps > 0 &&
               overlaps(off, len, s->hdr.bitmap_directory_offset,
                        s->hdr.bitmap_directory_size)) {
        what = "bitmap directory";
    }
    for (uint32_t i = 0; !what && s->l1_table && i < s->l1_size; i++) {
        uint64_t l2 = s->l1_table[i] & QCOW2_L1E_OFFSET_MASK;
        if (l2 && overlaps(off, len, l2, cs)) {
            what = "active L2 table";
        }
    }
    for (uint64_t i = 0; !what && s->refcount_table &&
                         i < s->refcount_table_entries;
         i++) {
        uint64_t rb = s->refcount_table[i] & QCOW2_REFT_OFFSET_MASK;
        if (rb && overlaps(off, len, rb, cs)) {
            what = "refcount block";
        }
    }
    for (uint32_t i = 0; !what && i < s->snapshots.nb; i++) {
        const struct qcow2_snapshot *sn = &s->snapshots.sn[i];
        if (overlaps(off, len, sn->l1_table_offset,
                     (uint64_t)sn->l1_size * 8)) {
            what = "inactive L1 table";
        }
    }
    return what;
}

int qcow2_overlap_check(struct qimg_node *node, struct qcow2_state *s,
                        uint64_t off, uint64_t len)
{
    const char *what = qcow2_overlap_what(s, off, len);
    if (!what) {
        return 0;
    }
    return qcow2_signal_corruption(node, s,
                                   "Preventing invalid write on metadata "
                                   "(overlaps with %s)",
                                   what);
}
