/*
 * qcow2 snapshot table [spec: Snapshots]: decoding with QEMU's limits and
 * encoding as QEMU writes it.
 *
 * The decoder consumes the table in exactly the pieces QEMU reads (fixed
 * part, known extra data, unknown extra data, id, name), so that QEMU's
 * rule that a read past QCOW2_MAX_IO_END fails with EIO gives the same
 * error at the same entry.  Memory is bounded before it is allocated:
 * at most QCOW2_MAX_SNAPSHOTS entries (checked by the header), at most
 * QCOW2_MAX_SNAPSHOT_EXTRA_DATA bytes of extra data and 2 x 64 KiB of
 * strings per entry, and the whole table within QCOW2_MAX_SNAPSHOTS_SIZE.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "formats/qcow2/qcow2.h"
#include "util/checked.h"
#include "util/endian.h"

/* Offsets in an entry [spec: Snapshots, Snapshot table entry]. */
#define SN_L1_TABLE_OFFSET 0
#define SN_L1_SIZE 8
#define SN_ID_STR_SIZE 12
#define SN_NAME_SIZE 14
#define SN_DATE_SEC 16
#define SN_DATE_NSEC 20
#define SN_VM_CLOCK_NSEC 24
#define SN_VM_STATE_SIZE 32
#define SN_EXTRA_DATA_SIZE 36
/* Offsets in the extra data, and the extra size that includes each. */
#define SN_EXTRA_VM_STATE_SIZE_LARGE 0
#define SN_EXTRA_DISK_SIZE 8
#define SN_EXTRA_ICOUNT 16
#define SN_EXTRA_END_VM_STATE_SIZE_LARGE 8
#define SN_EXTRA_END_DISK_SIZE 16
#define SN_EXTRA_END_ICOUNT 24

/* The cursor over the table buffer. */
struct reader {
    const uint8_t *buf;
    size_t len;
    uint64_t table_offset; /* absolute, for QEMU's EIO rule */
    uint64_t off;          /* relative to the table start */
    size_t *needed;
};

/*
 * Take the next n bytes as one QEMU read: EIO if QEMU's block layer would
 * refuse the read, -ENOBUFS if the buffer stops short.
 */
static int take(struct reader *r, uint64_t n, const uint8_t **out)
{
    if (!qcow2_read_in_range(r->table_offset + r->off, n)) {
        return error_set_errno(EIO, "Failed to read snapshot table");
    }
    if (r->off > r->len || n > r->len - r->off) {
        /* off + n <= 64 MiB + one entry: fits in size_t. */
        *r->needed = (size_t)(r->off + n);
        return -ENOBUFS;
    }
    *out = r->buf + r->off;
    r->off += n;
    return 0;
}

static char *dup_bytes(const uint8_t *p, size_t n)
{
    char *s = malloc(n + 1);
    if (s) {
        memcpy(s, p, n);
        s[n] = '\0';
    }
    return s;
}

static void free_entry(struct qcow2_snapshot *sn)
{
    free(sn->id);
    free(sn->name);
    free(sn->unknown_extra);
}

void qcow2_snapshots_free(struct qcow2_snapshot_table *t)
{
    for (uint32_t i = 0; t->sn && i < t->nb; i++) {
        free_entry(&t->sn[i]);
    }
    free(t->sn);
    memset(t, 0, sizeof(*t));
}

/* One entry; i is its index, for messages. */
static int decode_entry(struct reader *r, uint32_t i,
                        uint64_t default_disk_size, struct qcow2_snapshot *sn)
{
    const uint8_t *p = NULL;
    int ret = take(r, QCOW2_SNAPSHOT_HEADER_SIZE, &p);
    if (ret < 0) {
        return ret;
    }
    sn->l1_table_offset = load_be64(p + SN_L1_TABLE_OFFSET);
    sn->l1_size = load_be32(p + SN_L1_SIZE);
    uint16_t id_size = load_be16(p + SN_ID_STR_SIZE);
    uint16_t name_size = load_be16(p + SN_NAME_SIZE);
    sn->date_sec = load_be32(p + SN_DATE_SEC);
    sn->date_nsec = load_be32(p + SN_DATE_NSEC);
    sn->vm_clock_nsec = load_be64(p + SN_VM_CLOCK_NSEC);
    sn->vm_state_size = load_be32(p + SN_VM_STATE_SIZE);
    sn->extra_data_size = load_be32(p + SN_EXTRA_DATA_SIZE);
    if (sn->extra_data_size > QCOW2_MAX_SNAPSHOT_EXTRA_DATA) {
        return error_set(EFBIG,
                         "Too much extra metadata in snapshot table "
                         "entry %" PRIu32 "\nYou can force-remove this "
                         "extra metadata with qemu-img check -r all",
                         i);
    }

    /* [spec: Snapshots] known extra data; a field is there if it fits. */
    uint32_t known =
        (uint32_t)min_u64(sn->extra_data_size, QCOW2_SNAPSHOT_EXTRA_SIZE);
    ret = take(r, known, &p);
    if (ret < 0) {
        return ret;
    }
    if (sn->extra_data_size >= SN_EXTRA_END_VM_STATE_SIZE_LARGE) {
        sn->vm_state_size = load_be64(p + SN_EXTRA_VM_STATE_SIZE_LARGE);
    }
    sn->disk_size = sn->extra_data_size >= SN_EXTRA_END_DISK_SIZE
                        ? load_be64(p + SN_EXTRA_DISK_SIZE)
                        : default_disk_size;
    sn->icount = sn->extra_data_size >= SN_EXTRA_END_ICOUNT
                     ? load_be64(p + SN_EXTRA_ICOUNT)
                     : QCOW2_SNAPSHOT_NO_ICOUNT;
    if (sn->extra_data_size > QCOW2_SNAPSHOT_EXTRA_SIZE) {
        /* Unknown extra data: at most 1000 bytes, kept for rewrites. */
        size_t n = sn->extra_data_size - QCOW2_SNAPSHOT_EXTRA_SIZE;
        ret = take(r, n, &p);
        if (ret < 0) {
            return ret;
        }
        sn->unknown_extra = malloc(n);
        if (!sn->unknown_extra) {
            return error_set(ENOMEM, "Out of memory");
        }
        memcpy(sn->unknown_extra, p, n);
        sn->unknown_extra_len = n;
    }

    ret = take(r, id_size, &p);
    if (ret < 0) {
        return ret;
    }
    sn->id = dup_bytes(p, id_size);
    if (!sn->id) {
        return error_set(ENOMEM, "Out of memory");
    }
    ret = take(r, name_size, &p);
    if (ret < 0) {
        return ret;
    }
    sn->name = dup_bytes(p, name_size);
    if (!sn->name) {
        return error_set(ENOMEM, "Out of memory");
    }
    return 0;
}

int qcow2_snapshots_decode(const uint8_t *buf, size_t len,
                           uint64_t table_offset, uint32_t nb,
                           uint64_t default_disk_size,
                           struct qcow2_snapshot_table *out, size_t *needed)
{
    memset(out, 0, sizeof(*out));
    if (nb == 0) {
        return 0;
    }
    /* The header check guarantees this; a direct caller may not. */
    if (nb > QCOW2_MAX_SNAPSHOTS) {
        return error_set(EFBIG, "Snapshot table too large");
    }
    out->sn = calloc(nb, sizeof(*out->sn));
    if (!out->sn) {
        return error_set(ENOMEM, "Out of memory");
    }
    out->nb = nb;

    struct reader r = {
        .buf = buf,
        .len = len,
        .table_offset = table_offset,
        .needed = needed,
    };
    int ret = 0;
    for (uint32_t i = 0; i < nb; i++) {
        /* [spec: Snapshots] each entry starts 8-byte aligned. */
        r.off = (r.off + 7) & ~(uint64_t)7;
        ret = decode_entry(&r, i, default_disk_size, &out->sn[i]);
        if (ret < 0) {
            break;
        }
        /* r.off is the table length so far, padding included. */
        if (r.off > QCOW2_MAX_SNAPSHOTS_SIZE) {
            ret = error_set(EFBIG,
                            "Snapshot table is too big\nYou can "
                            "force-remove all %" PRIu32 " overhanging "
                            "snapshots with qemu-img check -r all",
                            nb - i);
            break;
        }
    }
    if (ret < 0) {
        qcow2_snapshots_free(out);
        return ret;
    }
    out->size = r.off;
    return 0;
}

/* The bytes entry sn takes when written, without its leading padding. */
static uint64_t entry_size(const struct qcow2_snapshot *sn)
{
    return QCOW2_SNAPSHOT_HEADER_SIZE + QCOW2_SNAPSHOT_EXTRA_SIZE +
           sn->unknown_extra_len + strlen(sn->id) + strlen(sn->name);
}

int64_t qcow2_snapshots_encoded_size(const struct qcow2_snapshot_table *t)
{
    uint64_t off = 0;
    for (uint32_t i = 0; i < t->nb; i++) {
        const struct qcow2_snapshot *sn = &t->sn[i];
        if (sn->unknown_extra_len >
                QCOW2_MAX_SNAPSHOT_EXTRA_DATA - QCOW2_SNAPSHOT_EXTRA_SIZE ||
            strlen(sn->id) > UINT16_MAX || strlen(sn->name) > UINT16_MAX) {
            return error_set(
                EINVAL, "Snapshot table entry %" PRIu32 " cannot be encoded",
                i);
        }
        off = ((off + 7) & ~(uint64_t)7) + entry_size(sn);
        if (off > QCOW2_MAX_SNAPSHOTS_SIZE) {
            return error_set(EFBIG, "Snapshot table is too big");
        }
    }
    return (int64_t)off;
}

int64_t qcow2_snapshots_encode(const struct qcow2_snapshot_table *t,
                               uint8_t *buf, size_t len)
{
    int64_t size = qcow2_snapshots_encoded_size(t);
    if (size < 0) {
        return size;
    }
    if ((uint64_t)size > len) {
        return error_set(ENOSPC, "Snapshot table does not fit its buffer");
    }
    memset(buf, 0, len);
    size_t off = 0;
    for (uint32_t i = 0; i < t->nb; i++) {
        const struct qcow2_snapshot *sn = &t->sn[i];
        size_t id_size = strlen(sn->id);
        size_t name_size = strlen(sn->name);
        off = (off + 7) & ~(size_t)7;
        uint8_t *p = buf + off;
        store_be64(p + SN_L1_TABLE_OFFSET, sn->l1_table_offset);
        store_be32(p + SN_L1_SIZE, sn->l1_size);
        store_be16(p + SN_ID_STR_SIZE, (uint16_t)id_size);
        store_be16(p + SN_NAME_SIZE, (uint16_t)name_size);
        store_be32(p + SN_DATE_SEC, sn->date_sec);
        store_be32(p + SN_DATE_NSEC, sn->date_nsec);
        store_be64(p + SN_VM_CLOCK_NSEC, sn->vm_clock_nsec);
        /*
         * [QEMU] a VM state too large for the old 32-bit field is stored
         * as 0 there, so old readers see a disk-only snapshot.
         */
        store_be32(p + SN_VM_STATE_SIZE, sn->vm_state_size <= UINT32_MAX
                                             ? (uint32_t)sn->vm_state_size
                                             : 0);
        /* [QEMU] always writes the 24 known bytes of extra data. */
        store_be32(
            p + SN_EXTRA_DATA_SIZE,
            (uint32_t)(QCOW2_SNAPSHOT_EXTRA_SIZE + sn->unknown_extra_len));
        p += QCOW2_SNAPSHOT_HEADER_SIZE;
        store_be64(p + SN_EXTRA_VM_STATE_SIZE_LARGE, sn->vm_state_size);
        store_be64(p + SN_EXTRA_DISK_SIZE, sn->disk_size);
        store_be64(p + SN_EXTRA_ICOUNT, sn->icount);
        p += QCOW2_SNAPSHOT_EXTRA_SIZE;
        if (sn->unknown_extra_len > 0) {
            memcpy(p, sn->unknown_extra, sn->unknown_extra_len);
            p += sn->unknown_extra_len;
        }
        memcpy(p, sn->id, id_size);
        p += id_size;
        memcpy(p, sn->name, name_size);
        off += (size_t)entry_size(sn);
    }
    return size;
}
