/*
 * qcow2 persistent dirty bitmaps [spec: Bitmaps]: the directory, and the
 * checks QEMU makes when it loads each bitmap at open.
 *
 * The directory is at most QCOW2_MAX_BITMAP_DIRECTORY_SIZE bytes (checked
 * before it is read) and holds at most QCOW2_MAX_BITMAPS entries; each
 * name is copied only after its entry was found to lie inside the
 * directory.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "formats/qcow2/qcow2.h"
#include "util/checked.h"
#include "util/endian.h"

/* Offsets in a directory entry [spec: Bitmap directory]. */
#define BME_TABLE_OFFSET 0
#define BME_TABLE_SIZE 8
#define BME_FLAGS 12
#define BME_TYPE 16
#define BME_GRANULARITY_BITS 17
#define BME_NAME_SIZE 18
#define BME_EXTRA_DATA_SIZE 20

int qcow2_bitmap_dir_check_size(uint64_t dir_size)
{
    if (dir_size == 0) {
        return error_set(EINVAL, "Requested bitmap directory size is zero");
    }
    if (dir_size > QCOW2_MAX_BITMAP_DIRECTORY_SIZE) {
        return error_set(EINVAL, "Requested bitmap directory size is too "
                                 "big");
    }
    return 0;
}

void qcow2_bitmaps_free(struct qcow2_bitmap_list *list)
{
    for (uint32_t i = 0; list->bm && i < list->nb; i++) {
        free(list->bm[i].name);
    }
    free(list->bm);
    memset(list, 0, sizeof(*list));
}

uint64_t qcow2_bitmap_table_entries(uint64_t disk_size,
                                    unsigned granularity_bits,
                                    uint64_t cluster_size)
{
    if (disk_size == 0 || granularity_bits > 63) {
        return 0;
    }
    /*
     * [spec: Bitmap data] one bit per granule.  QEMU serialises the bits
     * in 64-bit words, then stores whole clusters of them.
     */
    uint64_t words = (((disk_size - 1) >> granularity_bits) >> 6) + 1;
    return div_round_up_u64(words * 8, cluster_size);
}

/*
 * QEMU's per-entry constraints [spec: Bitmap directory], with its
 * narrower limits.  disk_size is the virtual disk size.
 */
static bool entry_ok(const struct qcow2_bitmap *bm, uint16_t name_size,
                     uint64_t cluster_size, uint64_t disk_size)
{
    if (bm->table_size == 0 || bm->table_offset == 0 ||
        !is_aligned_u64(bm->table_offset, cluster_size) ||
        bm->table_size > QCOW2_MAX_BITMAP_TABLE_SIZE ||
        bm->granularity_bits > QCOW2_MAX_BITMAP_GRANULARITY_BITS ||
        bm->granularity_bits < QCOW2_MIN_BITMAP_GRANULARITY_BITS ||
        (bm->flags & QCOW2_BME_RESERVED_FLAGS) ||
        name_size > QCOW2_MAX_BITMAP_NAME ||
        bm->type != QCOW2_BITMAP_TYPE_DIRTY_TRACKING) {
        return false;
    }
    /* QEMU's disk length query fails for sizes past INT64_MAX. */
    if (disk_size > INT64_MAX) {
        return false;
    }
    /* table_size <= 2^27 and cluster_size <= 2^21: no overflow. */
    uint64_t phys = (uint64_t)bm->table_size * cluster_size;
    if (phys > QCOW2_MAX_BITMAP_PHYS_SIZE) {
        return false;
    }
    /*
     * A bitmap in use may be stale (e.g. from before a resize); one that
     * is not must cover the disk.  phys * 8 << 31 < 2^64.
     */
    if (!(bm->flags & QCOW2_BME_IN_USE) &&
        disk_size > ((phys * 8) << bm->granularity_bits)) {
        return false;
    }
    return true;
}

struct name_ref {
    const char *name;
    uint32_t index;
};

static int by_name(const void *a, const void *b)
{
    const struct name_ref *x = a;
    const struct name_ref *y = b;
    int c = strcmp(x->name, y->name);
    if (c != 0) {
        return c;
    }
    return x->index < y->index ? -1 : x->index > y->index;
}

/*
 * Mark every entry whose name an earlier entry has: sort by (name, index),
 * so each run of equal names starts with the earliest.  O(n log n), where
 * comparing every pair could take billions of steps.
 */
static int mark_duplicates(struct qcow2_bitmap_list *list)
{
    if (list->nb < 2) {
        return 0;
    }
    struct name_ref *refs = malloc(list->nb * sizeof(*refs));
    if (!refs) {
        return error_set(ENOMEM, "Out of memory");
    }
    for (uint32_t i = 0; i < list->nb; i++) {
        refs[i] = (struct name_ref){list->bm[i].name, i};
    }
    qsort(refs, list->nb, sizeof(*refs), by_name);
    for (uint32_t k = 1; k < list->nb; k++) {
        if (strcmp(refs[k].name, refs[k - 1].name) == 0) {
            list->bm[refs[k].index].dup_name = true;
        }
    }
    free(refs);
    return 0;
}

static int broken(void)
{
    return error_set(EINVAL, "Broken bitmap directory");
}

int qcow2_bitmaps_decode(const uint8_t *buf, size_t len, uint32_t nb_bitmaps,
                         uint64_t cluster_size, uint64_t disk_size,
                         struct qcow2_bitmap_list *out)
{
    memset(out, 0, sizeof(*out));
    int ret = qcow2_bitmap_dir_check_size(len);
    if (ret < 0) {
        return ret;
    }
    /* The header check guarantees this; a direct caller may not. */
    if (nb_bitmaps == 0 || nb_bitmaps > QCOW2_MAX_BITMAPS) {
        return error_set(EINVAL, "Invalid number of bitmaps");
    }
    out->bm = calloc(nb_bitmaps, sizeof(*out->bm));
    if (!out->bm) {
        return error_set(ENOMEM, "Out of memory");
    }

    size_t pos = 0;
    while (pos < len) {
        if (len - pos < QCOW2_BITMAP_DIR_ENTRY_SIZE) {
            ret = broken();
            goto fail;
        }
        if (out->nb == nb_bitmaps) {
            ret = error_set(EINVAL, "More bitmaps found than specified in "
                                    "header extension");
            goto fail;
        }
        const uint8_t *e = buf + pos;
        struct qcow2_bitmap *bm = &out->bm[out->nb++];
        bm->table_offset = load_be64(e + BME_TABLE_OFFSET);
        bm->table_size = load_be32(e + BME_TABLE_SIZE);
        bm->flags = load_be32(e + BME_FLAGS);
        bm->type = e[BME_TYPE];
        bm->granularity_bits = e[BME_GRANULARITY_BITS];
        uint16_t name_size = load_be16(e + BME_NAME_SIZE);
        uint32_t extra = load_be32(e + BME_EXTRA_DATA_SIZE);

        /*
         * [spec: Bitmap directory] entries are 8-byte aligned.  QEMU sums
         * the sizes in a 32-bit int; with a huge extra_data_size that
         * wraps, so reproduce the wrapped value to fail the same way.
         */
        uint32_t wrapped = (uint32_t)(QCOW2_BITMAP_DIR_ENTRY_SIZE + name_size +
                                      (uint64_t)extra);
        int32_t step = (int32_t)((wrapped + 7u) & ~7u);
        if (step > 0 && (size_t)step > len - pos) {
            ret = broken();
            goto fail;
        }
        if (extra != 0) {
            ret = error_set(EINVAL, "Bitmap extra data is not supported");
            goto fail;
        }
        /* Now step = 24 + name_size rounded up, and it fits. */
        const char *name = (const char *)e + QCOW2_BITMAP_DIR_ENTRY_SIZE;
        if (!entry_ok(bm, name_size, cluster_size, disk_size)) {
            ret = error_set(EINVAL,
                            "Bitmap '%.*s' doesn't satisfy the "
                            "constraints",
                            (int)name_size, name);
            goto fail;
        }
        bm->name = malloc((size_t)name_size + 1);
        if (!bm->name) {
            ret = error_set(ENOMEM, "Out of memory");
            goto fail;
        }
        memcpy(bm->name, name, name_size);
        bm->name[name_size] = '\0';
        pos += (size_t)step;
    }
    if (out->nb != nb_bitmaps) {
        ret = error_set(EINVAL, "Less bitmaps found than specified in "
                                "header extension");
        goto fail;
    }
    ret = mark_duplicates(out);
    if (ret < 0) {
        goto fail;
    }
    return 0;

fail:
    qcow2_bitmaps_free(out);
    return ret;
}

/* [spec: Bitmap directory] one entry: fixed part, name, 8-byte padding. */
static size_t entry_bytes(const struct qcow2_bitmap *bm)
{
    return (QCOW2_BITMAP_DIR_ENTRY_SIZE + strlen(bm->name) + 7) & ~(size_t)7;
}

size_t qcow2_bitmaps_encoded_size(const struct qcow2_bitmap_list *list)
{
    size_t n = 0;
    for (uint32_t i = 0; i < list->nb; i++) {
        n += entry_bytes(&list->bm[i]);
    }
    return n;
}

int64_t qcow2_bitmaps_encode(const struct qcow2_bitmap_list *list,
                             uint8_t *buf, size_t len)
{
    size_t need = qcow2_bitmaps_encoded_size(list);
    if (need > len) {
        return error_set(ENOSPC, "No space for the bitmap directory");
    }
    memset(buf, 0, need);
    uint8_t *e = buf;
    for (uint32_t i = 0; i < list->nb; i++) {
        const struct qcow2_bitmap *bm = &list->bm[i];
        size_t name_size = strlen(bm->name);
        store_be64(e + BME_TABLE_OFFSET, bm->table_offset);
        store_be32(e + BME_TABLE_SIZE, bm->table_size);
        store_be32(e + BME_FLAGS, bm->flags);
        e[BME_TYPE] = bm->type;
        e[BME_GRANULARITY_BITS] = bm->granularity_bits;
        /* Decoded names are at most QCOW2_MAX_BITMAP_NAME bytes. */
        store_be16(e + BME_NAME_SIZE, (uint16_t)name_size);
        memcpy(e + QCOW2_BITMAP_DIR_ENTRY_SIZE, bm->name, name_size);
        e += entry_bytes(bm);
    }
    return (int64_t)need;
}

int qcow2_bitmap_check_name(const struct qcow2_bitmap_list *list, uint32_t i)
{
    const struct qcow2_bitmap *bm = &list->bm[i];
    if (bm->dup_name) {
        /* [QEMU] an in-use copy of a loaded bitmap is skipped. */
        if (bm->flags & QCOW2_BME_IN_USE) {
            return 0;
        }
        return error_set(EINVAL, "Bitmap already exists: %s", bm->name);
    }
    /* The data of a bitmap in use is not loaded, nor its table checked. */
    return (bm->flags & QCOW2_BME_IN_USE) ? 0 : 1;
}

int qcow2_bitmap_check_table(const struct qcow2_bitmap *bm,
                             const uint8_t *table, uint64_t cluster_size,
                             uint64_t disk_size)
{
    for (uint32_t i = 0; i < bm->table_size; i++) {
        /* [spec: Bitmap table] entry layout. */
        uint64_t entry = load_be64(table + (size_t)i * 8);
        uint64_t offset = entry & QCOW2_BMT_OFFSET_MASK;
        if ((entry & QCOW2_BMT_RESERVED_MASK) ||
            (offset != 0 && ((entry & QCOW2_BMT_ALL_ONES) ||
                             !is_aligned_u64(offset, cluster_size)))) {
            return error_set_errno(EINVAL,
                                   "Could not read bitmap_table "
                                   "table from image for bitmap '%s'",
                                   bm->name);
        }
    }
    uint64_t want = qcow2_bitmap_table_entries(disk_size, bm->granularity_bits,
                                               cluster_size);
    if (want != bm->table_size || want > QCOW2_MAX_BITMAP_TABLE_SIZE) {
        return error_set_errno(EINVAL,
                               "Could not read bitmap '%s' from "
                               "image",
                               bm->name);
    }
    return 0;
}
