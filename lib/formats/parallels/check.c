/*
 * parallels check, as QEMU 7.2's: an in-use mark left set is a corruption
 * ("image was not closed correctly"), a BAT entry naming a cluster that
 * starts past the end of the file is one ("cluster N is outside image"),
 * and file space past the end of the last cluster is leaked (counted in
 * whole clusters).  QEMU does not look for two entries naming the same
 * cluster, and neither does this.  -r all clears the bad entries (the
 * in-use mark is cleared at close anyway); -r leaks truncates the file.
 * A cluster is fragmented when the guest cluster before it is allocated
 * but not stored just before it in the file.
 */
#include <errno.h>
#include <stdio.h>

#include "core/error.h"
#include "parallels.h"
#include "util/endian.h"
#include "util/checked.h"

int prl_check(struct qimg_node *node, unsigned flags,
              qimg_check_message_fn report, void *opaque,
              struct qimg_check_result *res)
{
    struct prl_state *s = node->opaque;
    bool fix_errors = flags & QIMG_CHECK_FIX_ERRORS;
    char line[160];
    int64_t file_size = io_get_size(node->file);
    if (file_size < 0) {
        res->check_errors++;
        return 0;
    }
    /* QEMU sees the file's length in whole sectors. */
    uint64_t size = div_round_up_u64((uint64_t)file_size, PRL_SECTOR) *
                    PRL_SECTOR;

    if (s->inuse_at_open) {
        snprintf(line, sizeof(line), "%s image was not closed correctly",
                 fix_errors ? "Repairing" : "ERROR");
        report(line, QIMG_CHECK_LINE_PLAIN, opaque);
        res->corruptions++;
        if (fix_errors) {
            /* The mark is cleared on disk when the image is closed. */
            s->inuse_at_open = false;
            res->corruptions_fixed++;
        }
    }

    res->total_clusters = s->bat_size;
    uint64_t high = (uint64_t)load_le32(s->header + PRL_OFF_DATA_OFF) *
                    PRL_SECTOR;
    uint64_t prev = 0; /* the previous guest cluster's host offset */
    for (uint32_t i = 0; i < s->bat_size; i++) {
        int64_t host = prl_cluster_host(node, i);
        if (host < 0) {
            return (int)host;
        }
        if (host == 0) {
            prev = 0;
            continue;
        }
        if ((uint64_t)host > size) {
            snprintf(line, sizeof(line), "%s cluster %u is outside image",
                     fix_errors ? "Repairing" : "ERROR", i);
            report(line, QIMG_CHECK_LINE_PLAIN, opaque);
            res->corruptions++;
            if (fix_errors) {
                s->bat[i] = 0;
                int ret = prl_write_bat_entry(node, i);
                if (ret < 0) {
                    res->check_errors++;
                    return 0;
                }
                res->corruptions_fixed++;
                prev = 0;
                continue;
            }
        }
        res->allocated_clusters++;
        if (prev != 0 && (uint64_t)host != prev + s->cluster_bytes) {
            res->fragmented_clusters++;
        }
        prev = (uint64_t)host;
        high = max_u64(high, (uint64_t)host + s->cluster_bytes);
    }
    res->image_end_offset = (int64_t)high;

    if (size > high) {
        uint64_t leak = size - high;
        bool fix = flags & QIMG_CHECK_FIX_LEAKS;
        snprintf(line, sizeof(line), "%s space leaked at the end of the "
                 "image %llu", fix ? "Repairing" : "ERROR",
                 (unsigned long long)leak);
        report(line, QIMG_CHECK_LINE_PLAIN, opaque);
        int64_t clusters = (int64_t)div_round_up_u64(leak, s->cluster_bytes);
        res->leaks += clusters;
        if (fix) {
            int ret = io_truncate(node->file, high);
            if (ret < 0) {
                res->check_errors++;
                return 0;
            }
            res->leaks_fixed += clusters;
        }
    }
    return 0;
}
