/*
 * qcow2: metadata overlap checks and the corrupt bit [spec: Header,
 * incompatible bit 1].
 *
 * A hostile or damaged image can claim (through a refcount of zero or an
 * L2 entry) that a cluster holding metadata is free or is guest data, or
 * place one table on another (an L1 table on the header).  Writing there
 * would destroy the image, so before guest data, a newly allocated
 * cluster or a table written in place goes to the file, the range is
 * compared with the metadata the image is known to have, as QEMU's
 * default overlap checks ("cached") do: in QEMU's order, with its names,
 * leaving out the class being written (an L2 table may be written over
 * itself).  An overlap marks the image corrupt and the write fails.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
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

/* Whether a cluster that one of n table entries names overlaps [off, +len). */
static bool table_hit(const uint64_t *entry, uint64_t n, uint64_t mask,
                      uint64_t off, uint64_t len, uint64_t cs)
{
    const uint64_t *end = entry + n;
    for (; entry < end; entry++) {
        uint64_t at = *entry & mask;
        if (at && overlaps(off, len, at, cs)) {
            return true;
        }
    }
    return false;
}

const char *qcow2_overlap_find(const struct qcow2_state *s,
                               const uint64_t *reftable,
                               uint64_t reftable_entries, uint64_t off,
                               uint64_t len, unsigned ignore)
{
    const uint64_t cs = s->cluster_size;
    /*
     * A table written in place (ignore names its class) is not on an L2
     * table or a refcount block when the tables were apart at the start
     * of writing: tables placed since were checked when allocated.  A
     * snapshot's L2 table was not among those looked at.
     */
    if (ignore && !(ignore & QCOW2_OL_INACTIVE_L2) && s->tables_apart &&
        reftable == s->refcount_table) {
        ignore |= QCOW2_OL_ACTIVE_L2 | QCOW2_OL_REFCOUNT_BLOCK;
    }
#define CHECK(class) (!(ignore & (class)))
    if (CHECK(QCOW2_OL_MAIN_HEADER) && overlaps(off, len, 0, cs)) {
        return "qcow2_header";
    }
    if (CHECK(QCOW2_OL_ACTIVE_L1) &&
        overlaps(off, len, s->l1_table_offset, (uint64_t)s->l1_size * 8)) {
        return "active L1 table";
    }
    /* The table scans: the hot part of every allocation's check. */
    if (CHECK(QCOW2_OL_ACTIVE_L2) && s->l1_table &&
        table_hit(s->l1_table, s->l1_size, QCOW2_L1E_OFFSET_MASK, off, len,
                  cs)) {
        return "active L2 table";
    }
    if (CHECK(QCOW2_OL_REFCOUNT_TABLE) &&
        overlaps(off, len, s->refcount_table_offset, reftable_entries * 8)) {
        return "refcount table";
    }
    if (CHECK(QCOW2_OL_REFCOUNT_BLOCK) && reftable &&
        table_hit(reftable, reftable_entries, QCOW2_REFT_OFFSET_MASK, off,
                  len, cs)) {
        return "refcount block";
    }
    if (CHECK(QCOW2_OL_SNAPSHOT_TABLE) && s->hdr.nb_snapshots > 0 &&
        overlaps(off, len, s->hdr.snapshots_offset, s->snapshots.size)) {
        return "snapshot table";
    }
    for (uint32_t i = 0; CHECK(QCOW2_OL_INACTIVE_L1) && i < s->snapshots.nb;
         i++) {
        const struct qcow2_snapshot *sn = &s->snapshots.sn[i];
        if (overlaps(off, len, sn->l1_table_offset,
                     (uint64_t)sn->l1_size * 8)) {
            return "inactive L1 table";
        }
    }
    if (CHECK(QCOW2_OL_BITMAP_DIRECTORY) && s->hdr.nb_bitmaps > 0 &&
        overlaps(off, len, s->hdr.bitmap_directory_offset,
                 s->hdr.bitmap_directory_size)) {
        return "bitmap directory";
    }
#undef CHECK
    return NULL;
}

struct range {
    uint64_t start, end;
};

static int cmp_range(const void *a, const void *b)
{
    uint64_t x = ((const struct range *)a)->start;
    uint64_t y = ((const struct range *)b)->start;
    return x < y ? -1 : x > y;
}

/*
 * Ranges sorted by start, each end raised to the largest end so far: a
 * range [a, b) overlaps one of them exactly when the last that starts
 * below b ends above a.
 */
static void sort_ranges(struct range *r, size_t n)
{
    qsort(r, n, sizeof(*r), cmp_range);
    for (size_t i = 1; i < n; i++) {
        r[i].end = max_u64(r[i].end, r[i - 1].end);
    }
}

static bool hits(const struct range *r, size_t n, uint64_t a, uint64_t len)
{
    uint64_t b = a + len;
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (r[mid].start < b) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo > 0 && r[lo - 1].end > a;
}

static void add_range(struct range *r, size_t *n, uint64_t off, uint64_t len)
{
    if (len > 0) {
        r[*n].start = off;
        /* A table that wraps (named by a damaged snapshot) reaches the end. */
        if (add_overflow_u64(off, len, &r[*n].end)) {
            r[*n].end = UINT64_MAX;
        }
        (*n)++;
    }
}

bool qcow2_overlap_tables_apart(const struct qcow2_state *s)
{
    const uint64_t cs = s->cluster_size;
    if (!s->l1_table || !s->refcount_table) {
        return false;
    }
    /* The single tables; then the refcount blocks. */
    size_t nfixed = 0, nrb = 0;
    size_t cap_fixed = 5 + (size_t)s->snapshots.nb;
    struct range *fixed = malloc(cap_fixed * sizeof(*fixed));
    struct range *rb =
        malloc(((size_t)s->refcount_table_entries + 1) * sizeof(*rb));
    bool apart = fixed && rb;
    if (apart) {
        add_range(fixed, &nfixed, 0, cs);
        add_range(fixed, &nfixed, s->l1_table_offset,
                  (uint64_t)s->l1_size * 8);
        add_range(fixed, &nfixed, s->refcount_table_offset,
                  s->refcount_table_entries * 8);
        if (s->hdr.nb_snapshots > 0) {
            add_range(fixed, &nfixed, s->hdr.snapshots_offset,
                      s->snapshots.size);
        }
        for (uint32_t i = 0; i < s->snapshots.nb; i++) {
            add_range(fixed, &nfixed, s->snapshots.sn[i].l1_table_offset,
                      (uint64_t)s->snapshots.sn[i].l1_size * 8);
        }
        if (s->hdr.nb_bitmaps > 0) {
            add_range(fixed, &nfixed, s->hdr.bitmap_directory_offset,
                      s->hdr.bitmap_directory_size);
        }
        sort_ranges(fixed, nfixed);
        for (uint64_t i = 0; i < s->refcount_table_entries; i++) {
            uint64_t off = s->refcount_table[i] & QCOW2_REFT_OFFSET_MASK;
            if (off) {
                apart = apart && !hits(fixed, nfixed, off, cs);
                add_range(rb, &nrb, off, cs);
            }
        }
        sort_ranges(rb, nrb);
    }
    for (uint32_t i = 0; apart && i < s->l1_size; i++) {
        uint64_t off = s->l1_table[i] & QCOW2_L1E_OFFSET_MASK;
        apart = !off || (!hits(fixed, nfixed, off, cs) &&
                         !hits(rb, nrb, off, cs));
    }
    free(fixed);
    free(rb);
    return apart;
}

const char *qcow2_overlap_what(const struct qcow2_state *s, uint64_t off,
                               uint64_t len, unsigned ignore)
{
    return qcow2_overlap_find(s, s->refcount_table, s->refcount_table_entries,
                              off, len, ignore);
}

int qcow2_overlap_check(struct qimg_node *node, struct qcow2_state *s,
                        uint64_t off, uint64_t len, unsigned ignore)
{
    const char *what = qcow2_overlap_what(s, off, len, ignore);
    if (!what) {
        return 0;
    }
    return qcow2_signal_corruption(node, s,
                                   "Preventing invalid write on metadata "
                                   "(overlaps with %s)",
                                   what);
}
