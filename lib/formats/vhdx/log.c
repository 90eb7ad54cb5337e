/*
 * The VHDX log (MS-VHDX 2.3): finding the active sequence and replaying
 * it.  The log is a circular buffer of entries made of 4 KiB sectors: a
 * header and descriptors, then one data sector per data descriptor.  An
 * entry is valid when its signature, checksum, GUID, lengths, and the
 * sequence numbers of its descriptors and data sectors agree.  The
 * active sequence is the chain of valid entries with consecutive
 * sequence numbers that runs from the tail named by the newest entry to
 * that entry; replaying writes its descriptors' sectors in order.
 *
 * Bounds: every entry lies inside the log and inside the file, so no
 * allocation exceeds the file's size; descriptors write only below the
 * entry's last file offset, itself bounded by VHDX_LOG_MAX_FILE_OFFSET.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "formats/vhdx/vhdx.h"
#include "util/checked.h"
#include "util/endian.h"

/* The largest file a log entry may make (the spec's 64 TiB disk, plus). */
#define VHDX_LOG_MAX_FILE_OFFSET (128 * VHDX_TiB)
/*
 * Searching the log: at most this many times the log's length is read
 * for entries that turn out invalid, and at most this many steps are
 * walked along candidate sequences (a log holds at most 2^20 entries:
 * its length is a 32-bit byte count in 4 KiB sectors).  QEMU has no such
 * bounds; a log that needs more is refused with E2BIG (vhdx.c passes
 * the message on, unlike QEMU's EINVAL words for a bad log).
 */
#define VHDX_LOG_SCAN_FACTOR 4u
/*
 * ... but never less than this: a log of up to 1 MiB (QEMU's default)
 * can never reach it, so such logs are searched exactly as QEMU does.
 */
#define VHDX_LOG_SCAN_MIN (256ull << 20)
#define VHDX_LOG_MAX_WALK_STEPS (1u << 22)

struct log_entry {
    uint64_t pos; /* offset inside the log */
    uint32_t length;
    uint32_t tail;
    uint64_t seq;
    uint64_t flushed_file_offset;
    uint64_t last_file_offset;
};

struct vhdx_log_seq {
    uint64_t log_offset;
    uint32_t log_length;
    size_t count;
    struct log_entry *entries; /* in replay order */
};

void vhdx_log_seq_free(struct vhdx_log_seq *seq)
{
    if (seq) {
        free(seq->entries);
        free(seq);
    }
}

/* Read len bytes at log position pos, wrapping at the end of the log. */
static int log_read(struct qimg_io *file, uint64_t log_offset,
                    uint32_t log_length, uint64_t pos, uint8_t *buf,
                    size_t len)
{
    while (len > 0) {
        pos %= log_length;
        size_t n = len;
        if (n > log_length - pos) {
            n = log_length - pos;
        }
        int ret = io_pread(file, buf, n, log_offset + pos);
        if (ret < 0) {
            return error_set_errno(-ret, "Could not read the VHDX log");
        }
        buf += n;
        len -= n;
        pos += n;
    }
    return 0;
}

/*
 * Validate the entry in buf (length bytes) whose header sector passed
 * entry_header_ok.  Returns true and fills e when it is valid.
 */
static bool entry_valid(const uint8_t *buf, uint32_t length,
                        struct log_entry *e)
{
    uint32_t dc = load_le32(buf + 24);
    uint64_t seq = load_le64(buf + 16);
    uint64_t hdr_bytes = VHDX_LOG_HEADER_SIZE +
                         (uint64_t)dc * VHDX_LOG_DESC_SIZE;
    uint64_t hdr_sectors = div_round_up_u64(hdr_bytes, VHDX_LOG_SECTOR);
    if (hdr_sectors > length / VHDX_LOG_SECTOR) {
        return false;
    }
    if (vhdx_checksum(buf, length, 4) != load_le32(buf + 4)) {
        return false;
    }
    uint64_t data_sector = hdr_sectors;
    uint64_t last = load_le64(buf + 56);
    for (uint32_t i = 0; i < dc; i++) {
        const uint8_t *d = buf + VHDX_LOG_HEADER_SIZE +
                           (size_t)i * VHDX_LOG_DESC_SIZE;
        uint32_t sig = load_le32(d);
        uint64_t foff = load_le64(d + 16);
        uint64_t len = VHDX_LOG_SECTOR, end;
        if (load_le64(d + 24) != seq || foff % VHDX_LOG_SECTOR) {
            return false;
        }
        if (sig == VHDX_LOG_ZERO_SIGNATURE) {
            len = load_le64(d + 8);
            if (len % VHDX_LOG_SECTOR) {
                return false;
            }
        } else if (sig == VHDX_LOG_DESC_SIGNATURE) {
            if (data_sector >= length / VHDX_LOG_SECTOR) {
                return false;
            }
            const uint8_t *s = buf + data_sector * VHDX_LOG_SECTOR;
            uint64_t sseq = ((uint64_t)load_le32(s + 4) << 32) |
                            load_le32(s + 4092);
            if (load_le32(s) != VHDX_LOG_DATA_SIGNATURE || sseq != seq) {
                return false;
            }
            data_sector++;
        } else {
            return false;
        }
        /* Writes stay below the file size the entry records. */
        if (add_overflow_u64(foff, len, &end) || end > last) {
            return false;
        }
    }
    if (data_sector != length / VHDX_LOG_SECTOR) {
        return false;
    }
    e->length = length;
    e->seq = seq;
    e->tail = load_le32(buf + 12);
    e->flushed_file_offset = load_le64(buf + 48);
    e->last_file_offset = last;
    return true;
}

/*
 * Check an entry's header sector: signature, GUID, lengths inside the log
 * and the file, tail inside the log.  Sets *length when it is plausible.
 */
static bool entry_header_ok(const uint8_t *sec, uint32_t log_length,
                            uint64_t file_room, const struct vhdx_guid *guid,
                            uint32_t *length)
{
    struct vhdx_guid g;
    memcpy(g.b, sec + 32, 16);
    uint32_t len = load_le32(sec + 8);
    uint32_t tail = load_le32(sec + 12);
    if (load_le32(sec) != VHDX_LOG_ENTRY_SIGNATURE ||
        !vhdx_guid_equal(&g, guid) || len == 0 ||
        len % VHDX_LOG_SECTOR || len > log_length || len > file_room ||
        tail % VHDX_LOG_SECTOR || tail >= log_length ||
        load_le64(sec + 56) > VHDX_LOG_MAX_FILE_OFFSET ||
        load_le64(sec + 48) > load_le64(sec + 56)) {
        return false;
    }
    *length = len;
    return true;
}

/*
 * The entries found, for newest_first (qsort has no context argument;
 * the log is searched at open, one image at a time per thread).
 */
static _Thread_local const struct log_entry *sort_found;

/* Highest sequence number first; equal ones by position. */
static int newest_first(const void *a, const void *b)
{
    const struct log_entry *x = &sort_found[*(const size_t *)a];
    const struct log_entry *y = &sort_found[*(const size_t *)b];
    if (x->seq != y->seq) {
        return x->seq > y->seq ? -1 : 1;
    }
    return x->pos < y->pos ? -1 : x->pos > y->pos;
}

/* The index of the entry at log position pos (found[] sorted by pos). */
static size_t find_pos(const struct log_entry *found, size_t n, uint64_t pos)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (found[mid].pos < pos) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo < n && found[lo].pos == pos ? lo : SIZE_MAX;
}

int vhdx_log_find(struct qimg_io *file, const struct vhdx_header *h,
                  struct vhdx_log_seq **out)
{
    *out = NULL;
    uint32_t log_length = h->log_length;
    uint64_t log_offset = h->log_offset;
    if (vhdx_guid_is_zero(&h->log_guid) || log_length < VHDX_LOG_SECTOR) {
        return 0;
    }
    int64_t fsize = io_get_size(file);
    if (fsize < 0) {
        return (int)fsize;
    }
    /* Only the part of the log inside the file can hold entries. */
    if (log_offset >= (uint64_t)fsize) {
        return 0;
    }
    uint64_t room = (uint64_t)fsize - log_offset;
    uint64_t slots = log_length / VHDX_LOG_SECTOR;
    if (slots > room / VHDX_LOG_SECTOR) {
        slots = room / VHDX_LOG_SECTOR;
    }
    struct log_entry *found = NULL;
    size_t nfound = 0;
    uint8_t *sec = malloc(VHDX_LOG_SECTOR);
    uint8_t *buf = NULL;
    size_t *order = NULL;
    struct log_entry *chain = NULL;
    int ret = 0;
    if (!sec) {
        return error_set(ENOMEM, "Out of memory");
    }
    if (slots > 0) {
        found = calloc(slots, sizeof(*found));
        if (!found) {
            ret = error_set(ENOMEM, "Out of memory");
            goto out;
        }
    }
    /*
     * Bytes read for entries that then fail validation: a stale header
     * whose body newer entries overwrote costs its length once, so a log
     * written by a sane writer stays far below the budget, and a hostile
     * one (every sector a header claiming the whole log) is refused
     * instead of reading the log once per sector.
     */
    uint64_t wasted = 0;
    uint64_t wasted_max = max_u64(VHDX_LOG_SCAN_FACTOR * (uint64_t)log_length,
                                  VHDX_LOG_SCAN_MIN);
    for (uint64_t i = 0; i < slots; i++) {
        uint64_t pos = i * VHDX_LOG_SECTOR;
        uint32_t len;
        ret = log_read(file, log_offset, log_length, pos, sec,
                       VHDX_LOG_SECTOR);
        if (ret < 0) {
            goto out;
        }
        if (!entry_header_ok(sec, log_length, room, &h->log_guid, &len)) {
            continue;
        }
        uint8_t *nb = realloc(buf, len);
        if (!nb) {
            ret = error_set(ENOMEM, "Out of memory");
            goto out;
        }
        buf = nb;
        ret = log_read(file, log_offset, log_length, pos, buf, len);
        if (ret < 0) {
            goto out;
        }
        struct log_entry e;
        if (entry_valid(buf, len, &e)) {
            e.pos = pos;
            found[nfound++] = e;
        } else {
            wasted += len;
            if (wasted > wasted_max) {
                ret = error_set(E2BIG, "VHDX log: too many damaged "
                                "entries to search (more than %llu "
                                "bytes read)",
                                (unsigned long long)wasted_max);
                goto out;
            }
        }
    }
    if (nfound == 0) {
        goto out;
    }

    /*
     * Try the newest entries first (ties: lowest position first): the
     * first whose tail leads to it through consecutive valid entries is
     * the active sequence.  found[] is sorted by position, so each step
     * of a walk is a binary search; the walks together take at most
     * VHDX_LOG_MAX_WALK_STEPS steps (a real log needs one walk, no
     * longer than its entry count).
     */
    order = malloc(nfound * sizeof(*order));
    chain = malloc(nfound * sizeof(*chain));
    if (!order || !chain) {
        ret = error_set(ENOMEM, "Out of memory");
        goto out;
    }
    for (size_t i = 0; i < nfound; i++) {
        order[i] = i;
    }
    sort_found = found;
    qsort(order, nfound, sizeof(*order), newest_first);
    uint64_t steps = 0;
    for (size_t attempt = 0; attempt < nfound; attempt++) {
        size_t head = order[attempt];
        size_t n = 0;
        uint64_t pos = found[head].tail;
        bool ok = false;
        while (n < nfound) {
            if (++steps > VHDX_LOG_MAX_WALK_STEPS) {
                ret = error_set(E2BIG, "VHDX log: no active sequence "
                                "found within %u steps",
                                VHDX_LOG_MAX_WALK_STEPS);
                goto out;
            }
            size_t k = find_pos(found, nfound, pos);
            if (k == SIZE_MAX ||
                (n > 0 && found[k].seq != chain[n - 1].seq + 1)) {
                break;
            }
            chain[n++] = found[k];
            if (k == head) {
                ok = true;
                break;
            }
            pos = (pos + found[k].length) % log_length;
        }
        if (ok) {
            struct vhdx_log_seq *q = calloc(1, sizeof(*q));
            if (!q) {
                ret = error_set(ENOMEM, "Out of memory");
                goto out;
            }
            q->log_offset = log_offset;
            q->log_length = log_length;
            q->count = n;
            q->entries = chain;
            chain = NULL;
            *out = q;
            ret = 1;
            break;
        }
    }
out:
    free(chain);
    free(order);
    free(found);
    free(buf);
    free(sec);
    return ret;
}

/* The file's size, or -errno. */
static int64_t file_size(struct qimg_io *file)
{
    int64_t size = io_get_size(file);
    if (size < 0) {
        return error_set_errno((int)-size, "Could not replay the VHDX log");
    }
    return size;
}

int vhdx_log_replay(struct qimg_io *file, const struct vhdx_log_seq *seq)
{
    uint8_t *buf = NULL;
    uint8_t sector[VHDX_LOG_SECTOR];
    int ret = 0;
    for (size_t k = 0; k < seq->count; k++) {
        const struct log_entry *e = &seq->entries[k];
        int64_t fsize = file_size(file);
        if (fsize < 0) {
            ret = (int)fsize;
            goto out;
        }
        /*
         * 2.3.1.1: the file lost writes this entry says were flushed
         * ([QEMU] fails the open then, before the entry's writes).
         */
        if (e->flushed_file_offset > (uint64_t)fsize) {
            ret = -EINVAL;
            goto out;
        }
        uint8_t *nb = realloc(buf, e->length);
        if (!nb) {
            ret = error_set(ENOMEM, "Out of memory");
            goto out;
        }
        buf = nb;
        ret = log_read(file, seq->log_offset, seq->log_length, e->pos, buf,
                       e->length);
        if (ret < 0) {
            goto out;
        }
        uint32_t dc = load_le32(buf + 24);
        uint64_t data_sector = div_round_up_u64(
            VHDX_LOG_HEADER_SIZE + (uint64_t)dc * VHDX_LOG_DESC_SIZE,
            VHDX_LOG_SECTOR);
        for (uint32_t i = 0; i < dc; i++) {
            const uint8_t *d = buf + VHDX_LOG_HEADER_SIZE +
                               (size_t)i * VHDX_LOG_DESC_SIZE;
            uint64_t foff = load_le64(d + 16);
            if (load_le32(d) == VHDX_LOG_ZERO_SIGNATURE) {
                ret = io_pwrite_zeroes(file, foff, load_le64(d + 8), false);
            } else {
                /* Leading 8 bytes, 4084 data bytes, trailing 4 bytes. */
                const uint8_t *s = buf + data_sector * VHDX_LOG_SECTOR;
                memcpy(sector, d + 8, 8);
                memcpy(sector + 8, s + 8, VHDX_LOG_DATA_BYTES);
                memcpy(sector + 8 + VHDX_LOG_DATA_BYTES, d + 4, 4);
                ret = io_pwrite(file, sector, sizeof(sector), foff);
                data_sector++;
            }
            if (ret < 0) {
                ret = error_set_errno(-ret, "Could not replay the VHDX "
                                      "log");
                goto out;
            }
        }
        /*
         * 2.3.3: the file is at least as long as the entry says, rounded
         * up to whole MiB as [QEMU] extends it.
         */
        uint64_t last;
        if (align_up_overflow_u64(e->last_file_offset, VHDX_MiB, &last)) {
            ret = error_set(EINVAL, "VHDX log: file offset overflow");
            goto out;
        }
        fsize = file_size(file);
        if (fsize < 0) {
            ret = (int)fsize;
            goto out;
        }
        if ((uint64_t)fsize < last) {
            ret = io_truncate(file, last);
            if (ret < 0) {
                ret = error_set_errno(-ret, "Could not replay the VHDX "
                                      "log");
                goto out;
            }
        }
    }
    ret = io_flush(file);
    if (ret < 0) {
        ret = error_set_errno(-ret, "Could not replay the VHDX log");
    }
out:
    free(buf);
    return ret;
}

void vhdx_log_sector_entry_encode(const struct vhdx_log_sector_entry *e,
                                  uint8_t *out)
{
    memset(out, 0, VHDX_LOG_ONE_SECTOR_ENTRY);
    /* 2.3.1.1: the entry header. */
    store_le32(out, VHDX_LOG_ENTRY_SIGNATURE);
    store_le32(out + 8, VHDX_LOG_ONE_SECTOR_ENTRY);
    store_le32(out + 12, e->tail);
    store_le64(out + 16, e->seq);
    store_le32(out + 24, 1);
    memcpy(out + 32, e->guid.b, 16);
    store_le64(out + 48, e->flushed_file_offset);
    store_le64(out + 56, e->last_file_offset);
    /*
     * 2.3.1.3: the data descriptor keeps the sector's first 8 and last 4
     * bytes, whose places the data sector uses for its signature and
     * sequence number halves (2.3.1.4).
     */
    uint8_t *d = out + VHDX_LOG_HEADER_SIZE;
    store_le32(d, VHDX_LOG_DESC_SIGNATURE);
    memcpy(d + 4, e->sector + 8 + VHDX_LOG_DATA_BYTES, 4);
    memcpy(d + 8, e->sector, 8);
    store_le64(d + 16, e->file_offset);
    store_le64(d + 24, e->seq);
    uint8_t *s = out + VHDX_LOG_SECTOR;
    store_le32(s, VHDX_LOG_DATA_SIGNATURE);
    store_le32(s + 4, (uint32_t)(e->seq >> 32));
    memcpy(s + 8, e->sector + 8, VHDX_LOG_DATA_BYTES);
    store_le32(s + 8 + VHDX_LOG_DATA_BYTES, (uint32_t)e->seq);
    /* 2.3.1.1: the checksum covers the whole entry. */
    store_le32(out + 4, vhdx_checksum(out, VHDX_LOG_ONE_SECTOR_ENTRY, 4));
}

int vhdx_log_write(struct qimg_io *file, uint64_t log_offset,
                   uint32_t log_length, uint32_t pos, const uint8_t *buf,
                   size_t len)
{
    while (len > 0) {
        pos %= log_length;
        size_t n = len;
        if (n > log_length - pos) {
            n = log_length - pos;
        }
        int ret = io_pwrite(file, buf, n, log_offset + pos);
        if (ret < 0) {
            return error_set_errno(-ret, "Could not write the VHDX log");
        }
        buf += n;
        len -= n;
        pos += (uint32_t)n;
    }
    return 0;
}
