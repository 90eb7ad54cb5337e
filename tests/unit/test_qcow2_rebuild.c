/*
 * qcow2_rebuild_plan(): where a rebuilt refcount structure goes, as
 * qemu-img 7.2's check -r all puts it (placements observed on images
 * it repaired), and the invariants of any plan: every used cluster is
 * covered by a block, blocks and table are counted as used and overlap
 * nothing that was used before.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"
#include "tap.h"

/* A plan over nb clusters, the used ones given by used(k). */
static int plan(struct qcow2_rebuild *r, unsigned cluster_bits,
                unsigned order, uint64_t nb, int (*used)(uint64_t k))
{
    memset(r, 0, sizeof(*r));
    r->cluster_bits = cluster_bits;
    r->order = order;
    r->max_refs_bytes = 64u << 20;
    r->nb_clusters = nb;
    r->refs_bytes = qcow2_refcount_array_bytes(nb, order);
    r->refs = calloc(1, (size_t)r->refs_bytes + 1);
    for (uint64_t k = 0; k < nb; k++) {
        if (used(k)) {
            qcow2_refcount_store(r->refs, k, order, 1);
        }
    }
    return qcow2_rebuild_plan(r);
}

static int first7(uint64_t k)
{
    return k < 7;
}

static int gap2(uint64_t k)
{
    return k != 2;
}

static int all(uint64_t k)
{
    (void)k;
    return 1;
}

static uint64_t seed = 12345;
static uint8_t *random_used;

static int from_random(uint64_t k)
{
    return random_used[k];
}

static void done(struct qcow2_rebuild *r)
{
    free(r->refs);
    free(r->reftable);
}

/*
 * The invariants: used clusters stay used, each range with a used
 * cluster has a block, each block and the table are counted, none of
 * them sits on a cluster used before, and they do not overlap.
 */
static int invariants(const struct qcow2_rebuild *r, uint64_t nb_before,
                      int (*used)(uint64_t k))
{
    unsigned rb_bits = r->cluster_bits + 3 - r->order;
    uint64_t rt_first = r->reftable_offset >> r->cluster_bits;
    uint64_t rt_n = (r->reftable_entries * 8) >> r->cluster_bits;
    uint8_t *mine = calloc(1, (size_t)r->nb_clusters);
    int ok = mine != NULL && rt_n > 0 &&
             rt_first + rt_n <= r->nb_clusters &&
             (r->reftable_entries * 8) % (1u << r->cluster_bits) == 0;
    for (uint64_t i = 0; ok && i < rt_n; i++) {
        ok &= qcow2_refcount_load(r->refs, rt_first + i, r->order) == 1;
        ok &= rt_first + i >= nb_before || !used(rt_first + i);
        mine[rt_first + i] = 1;
    }
    for (uint64_t i = 0; ok && i < r->reftable_entries; i++) {
        uint64_t k = r->reftable[i] >> r->cluster_bits;
        if (r->reftable[i] == 0) {
            continue;
        }
        ok &= k < r->nb_clusters && !mine[k];
        ok &= k >= nb_before || !used(k);
        ok &= qcow2_refcount_load(r->refs, k, r->order) == 1;
        if (ok) {
            mine[k] = 1;
        }
    }
    for (uint64_t k = 0; ok && k < r->nb_clusters; k++) {
        uint64_t n = qcow2_refcount_load(r->refs, k, r->order);
        if (k < nb_before && used(k)) {
            ok &= n == 1;
        }
        if (n) {
            uint64_t idx = k >> rb_bits;
            ok &= idx < r->reftable_entries && r->reftable[idx] != 0;
        }
    }
    free(mine);
    return ok;
}

int main(void)
{
    struct qcow2_rebuild r;

    /*
     * qemu-img -r all on a 1 MiB image with 64 KiB clusters (header,
     * table, block, L1, L2, two data clusters): block at cluster 7,
     * a one-cluster table at 8.
     */
    TAP_OK(plan(&r, 16, 4, 7, first7) == 0);
    tap_eq_u64(r.reftable_offset, 0x80000, "table after the new block");
    tap_eq_u64(r.reftable_entries, 8192, "table of one whole cluster");
    tap_eq_u64(r.reftable[0], 0x70000, "block at the first free cluster");
    tap_eq_u64(r.nb_clusters, 9, "two clusters appended");
    TAP_OK(invariants(&r, 7, first7));
    done(&r);

    /* A free cluster inside the image is used first, by the block. */
    TAP_OK(plan(&r, 16, 4, 7, gap2) == 0);
    tap_eq_u64(r.reftable[0], 0x20000, "block in the gap");
    tap_eq_u64(r.reftable_offset, 0x70000, "table at the end");
    TAP_OK(invariants(&r, 7, gap2));
    done(&r);

    /*
     * 512-byte clusters, 16-bit refcounts: 256 clusters per block.  300
     * used clusters: block 0 goes to 300 (its range is full), block 1
     * to 301, the table (64 entries, one cluster) to 302.
     */
    TAP_OK(plan(&r, 9, 4, 300, all) == 0);
    tap_eq_u64(r.reftable[0], 300 * 512, "full range: block appended");
    tap_eq_u64(r.reftable[1], 301 * 512, "second block after it");
    tap_eq_u64(r.reftable_offset, 302 * 512, "then the table");
    tap_eq_u64(r.reftable_entries, 64, "64 entries per cluster");
    TAP_OK(invariants(&r, 300, all));
    done(&r);

    /*
     * A table that needs more than one cluster: 512-byte clusters with
     * 64-bit refcounts cover 64 clusters per block, 64 blocks per table
     * cluster; 5000 used clusters need 79 blocks, so two table clusters.
     */
    TAP_OK(plan(&r, 9, 6, 5000, all) == 0);
    tap_eq_u64(r.reftable_entries, 128, "two table clusters");
    TAP_OK(invariants(&r, 5000, all));
    done(&r);

    /* Random images of every width: the invariants hold. */
    int ok = 1;
    for (int round = 0; round < 200; round++) {
        unsigned order = (unsigned)(round % 7);
        uint64_t nb = 1 + (seed >> 33) % 3000;
        random_used = malloc((size_t)nb);
        for (uint64_t k = 0; k < nb; k++) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            random_used[k] = k == 0 || (seed >> 60) < (unsigned)(round % 16);
        }
        ok &= plan(&r, 9, order, nb, from_random) == 0;
        ok &= invariants(&r, nb, from_random);
        done(&r);
        free(random_used);
    }
    tap_ok(ok, "random plans keep the invariants (all widths)");

    /* The memory cap fails cleanly. */
    memset(&r, 0, sizeof(r));
    TAP_OK(plan(&r, 9, 4, 300, all) == 0);
    done(&r);
    memset(&r, 0, sizeof(r));
    r.cluster_bits = 9;
    r.order = 4;
    r.nb_clusters = 256;
    r.refs_bytes = 512;
    r.max_refs_bytes = 512;
    r.refs = calloc(1, 512);
    for (uint64_t k = 0; k < 256; k++) {
        qcow2_refcount_store(r.refs, k, 4, 1);
    }
    tap_ok(qcow2_rebuild_plan(&r) == -ENOMEM, "over the cap: ENOMEM");
    done(&r);
    return tap_done();
}
