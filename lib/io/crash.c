/*
 * The crash-simulating leaf (see crash.h).
 *
 * Invariants: a file's live holds it as every issued change left it
 * (what reads see); log[0, nlog) holds its changes and flushes in issue
 * order, each change with its own copy of the bytes and its position on
 * the clock the file shares with its peers (increasing along the log);
 * dur holds initial with log[0, dur_idx) applied, where dur_idx is 0 or
 * the index of a flush, so that building crashes at increasing cuts
 * replays each entry once.  A file lives while a handle on it is open;
 * a clock while a file uses it.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "io/crash.h"

/* Test images are small; bounds what a runaway workload can take. */
#define IO_CRASH_MAX_SIZE ((uint64_t)1 << 30)

enum crash_kind {
    CRASH_WRITE,
    CRASH_ZERO,     /* pwrite_zeroes and discard (the leaf zeroes both) */
    CRASH_TRUNCATE,
    CRASH_FLUSH,
};

struct crash_entry {
    enum crash_kind kind;
    uint64_t pos; /* on the shared clock */
    uint64_t off; /* the new size for CRASH_TRUNCATE */
    uint64_t len;
    uint8_t *data; /* CRASH_WRITE only */
};

/* A file image: bytes [0, size) of p, cap >= size. */
struct crash_buf {
    uint8_t *p;
    size_t size, cap;
};

/* The log positions of the files that share one (one power failure). */
struct crash_clock {
    uint64_t now;
    unsigned refs;
};

struct crash_file {
    struct crash_clock *clock;
    unsigned refs; /* open handles */
    struct crash_buf live, dur, initial;
    uint64_t dur_idx;
    struct crash_entry *log;
    uint64_t nlog, log_cap;
    uint64_t *flush_idx; /* indexes into log of its flushes */
    uint64_t atomic_len; /* [0, atomic_len) tears as one piece */
    uint64_t nflush, flush_cap;
};

/* One handle (what a node holds): its own name and permissions. */
struct io_crash {
    struct qimg_io io; /* first: passed around as qimg_io */
    struct crash_file *f;
};

static struct io_crash *crash_from(struct qimg_io *io)
{
    return (struct io_crash *)io;
}

/* ---- Byte buffers ----------------------------------------------------- */

static int buf_reserve(struct crash_buf *b, uint64_t size)
{
    if (size > IO_CRASH_MAX_SIZE) {
        return -EFBIG;
    }
    if (size <= b->cap && b->p) {
        return 0;
    }
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < size) {
        cap *= 2;
    }
    uint8_t *p = realloc(b->p, cap);
    if (!p) {
        return -ENOMEM;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

/* Set the file size; bytes a growth exposes read as zero. */
static int buf_resize(struct crash_buf *b, uint64_t size)
{
    int ret = buf_reserve(b, size);
    if (ret < 0) {
        return ret;
    }
    if (size > b->size) {
        memset(b->p + b->size, 0, (size_t)size - b->size);
    }
    b->size = (size_t)size;
    return 0;
}

static int buf_copy(struct crash_buf *dst, const struct crash_buf *src)
{
    int ret = buf_reserve(dst, src->size);
    if (ret < 0) {
        return ret;
    }
    memcpy(dst->p, src->p, src->size);
    dst->size = src->size;
    return 0;
}

/*
 * Apply [lo, hi) of entry e (relative to its offset) to b: the bytes of
 * a write, zeros for a zero write, growing the file to the range's end
 * (discards were clipped to the file when logged, so never grow it).
 */
static int buf_apply_range(struct crash_buf *b, const struct crash_entry *e,
                           uint64_t lo, uint64_t hi)
{
    uint64_t off = e->off + lo, len = hi - lo;
    if (len == 0) {
        return 0;
    }
    if (off + len > b->size) {
        int ret = buf_resize(b, off + len);
        if (ret < 0) {
            return ret;
        }
    }
    if (e->kind == CRASH_WRITE) {
        memcpy(b->p + off, e->data + lo, (size_t)len);
    } else {
        memset(b->p + off, 0, (size_t)len);
    }
    return 0;
}

static int buf_apply(struct crash_buf *b, const struct crash_entry *e)
{
    switch (e->kind) {
    case CRASH_WRITE:
    case CRASH_ZERO:
        return buf_apply_range(b, e, 0, e->len);
    case CRASH_TRUNCATE:
        return buf_resize(b, e->off);
    case CRASH_FLUSH:
        break;
    }
    return 0;
}

/* ---- Log -------------------------------------------------------------- */

static int log_append(struct crash_file *c, enum crash_kind kind,
                      uint64_t off, uint64_t len, const void *data)
{
    if (c->nlog == c->log_cap) {
        uint64_t cap = c->log_cap ? c->log_cap * 2 : 256;
        struct crash_entry *log = realloc(c->log, (size_t)cap * sizeof(*log));
        if (!log) {
            return error_set(ENOMEM, "Out of memory");
        }
        c->log = log;
        c->log_cap = cap;
    }
    struct crash_entry *e = &c->log[c->nlog];
    e->kind = kind;
    e->pos = c->clock->now;
    e->off = off;
    e->len = len;
    e->data = NULL;
    if (data) {
        e->data = malloc(len ? (size_t)len : 1);
        if (!e->data) {
            return error_set(ENOMEM, "Out of memory");
        }
        memcpy(e->data, data, (size_t)len);
    }
    if (kind == CRASH_FLUSH) {
        if (c->nflush == c->flush_cap) {
            uint64_t cap = c->flush_cap ? c->flush_cap * 2 : 64;
            uint64_t *fp = realloc(c->flush_idx, (size_t)cap * sizeof(*fp));
            if (!fp) {
                return error_set(ENOMEM, "Out of memory");
            }
            c->flush_idx = fp;
            c->flush_cap = cap;
        }
        c->flush_idx[c->nflush++] = c->nlog;
    }
    c->nlog++;
    c->clock->now++;
    return 0;
}

/* ---- Leaf operations ---------------------------------------------------- */

static int crash_check_write(struct io_crash *c, uint64_t off, uint64_t len)
{
    if (!c->io.writable) {
        return error_set_errno(EBADF, "Could not write to '%s'",
                               c->io.filename);
    }
    if (off > IO_CRASH_MAX_SIZE || len > IO_CRASH_MAX_SIZE - off) {
        return error_set_errno(EFBIG, "Could not write to '%s'",
                               c->io.filename);
    }
    return 0;
}

static int crash_fail(struct io_crash *c, int ret)
{
    return error_set_errno(-ret, "Could not write to '%s'", c->io.filename);
}

static void file_unref(struct crash_file *f)
{
    if (!f || --f->refs > 0) {
        return;
    }
    for (uint64_t i = 0; i < f->nlog; i++) {
        free(f->log[i].data);
    }
    free(f->log);
    free(f->flush_idx);
    free(f->live.p);
    free(f->dur.p);
    free(f->initial.p);
    if (f->clock && --f->clock->refs == 0) {
        free(f->clock);
    }
    free(f);
}

static void crash_close(struct qimg_io *io)
{
    struct io_crash *c = crash_from(io);
    file_unref(c->f);
    free(c->io.filename);
    free(c);
}

static int64_t crash_get_size(struct qimg_io *io)
{
    return (int64_t)crash_from(io)->f->live.size;
}

static int crash_pread(struct qimg_io *io, void *buf, size_t len,
                       uint64_t off)
{
    struct crash_file *f = crash_from(io)->f;
    size_t n = 0;
    if (off < f->live.size) {
        n = f->live.size - (size_t)off;
        if (n > len) {
            n = len;
        }
        memcpy(buf, f->live.p + off, n);
    }
    memset((uint8_t *)buf + n, 0, len - n);
    return 0;
}

/* Log a change and apply it to what reads see. */
static int crash_change(struct io_crash *c, enum crash_kind kind,
                        uint64_t off, uint64_t len, const void *data)
{
    struct crash_file *f = c->f;
    int ret = log_append(f, kind, off, len, data);
    if (ret == 0) {
        ret = buf_apply(&f->live, &f->log[f->nlog - 1]);
        if (ret < 0) {
            return crash_fail(c, ret);
        }
    }
    return ret;
}

static int crash_pwrite(struct qimg_io *io, const void *buf, size_t len,
                        uint64_t off)
{
    struct io_crash *c = crash_from(io);
    int ret = crash_check_write(c, off, len);
    if (ret < 0 || len == 0) {
        return ret;
    }
    return crash_change(c, CRASH_WRITE, off, len, buf);
}

static int crash_pwrite_zeroes(struct qimg_io *io, uint64_t off,
                               uint64_t len, bool may_unmap)
{
    (void)may_unmap;
    struct io_crash *c = crash_from(io);
    int ret = crash_check_write(c, off, len);
    if (ret < 0 || len == 0) {
        return ret;
    }
    return crash_change(c, CRASH_ZERO, off, len, NULL);
}

static int crash_discard(struct qimg_io *io, uint64_t off, uint64_t len)
{
    struct io_crash *c = crash_from(io);
    int ret = crash_check_write(c, off, len);
    if (ret < 0) {
        return ret;
    }
    /* A hole punch that keeps the size: zero what lies inside the file. */
    uint64_t size = c->f->live.size;
    if (off >= size) {
        return 0;
    }
    if (len > size - off) {
        len = size - off;
    }
    if (len == 0) {
        return 0;
    }
    return crash_change(c, CRASH_ZERO, off, len, NULL);
}

static int crash_flush(struct qimg_io *io)
{
    return log_append(crash_from(io)->f, CRASH_FLUSH, 0, 0, NULL);
}

static int crash_truncate(struct qimg_io *io, uint64_t size)
{
    struct io_crash *c = crash_from(io);
    int ret = crash_check_write(c, size, 0);
    if (ret < 0) {
        return ret;
    }
    return crash_change(c, CRASH_TRUNCATE, size, 0, NULL);
}

static int crash_block_status(struct qimg_io *io, uint64_t off, uint64_t len,
                              uint64_t *pnum)
{
    struct io_crash *c = crash_from(io);
    uint64_t size = c->f->live.size;
    if (len == 0) {
        return error_set(EINVAL, "'%s': block status of an empty range",
                         c->io.filename);
    }
    if (off >= size) {
        *pnum = len;
        return IO_STATUS_ZERO;
    }
    uint64_t n = size - off;
    *pnum = n < len ? n : len;
    return IO_STATUS_DATA;
}

static int crash_set_perm(struct qimg_io *io, unsigned perm,
                          unsigned unshared)
{
    (void)unshared;
    io->writable = (perm & IO_PERM_WRITE) != 0;
    return 0;
}

static const struct qimg_io_ops io_crash_ops = {
    .name = "crash",
    .close = crash_close,
    .get_size = crash_get_size,
    .get_allocated = crash_get_size,
    .pread = crash_pread,
    .pwrite = crash_pwrite,
    .pwrite_zeroes = crash_pwrite_zeroes,
    .discard = crash_discard,
    .flush = crash_flush,
    .truncate = crash_truncate,
    .block_status = crash_block_status,
    .set_perm = crash_set_perm,
};

/* A new handle on f (which it holds a reference to). */
static int handle_new(struct crash_file *f, const char *name, unsigned flags,
                      struct qimg_io **out)
{
    struct io_crash *c = calloc(1, sizeof(*c));
    char *n = strdup(name ? name : "");
    if (!c || !n) {
        free(c);
        free(n);
        return error_set(ENOMEM, "Out of memory");
    }
    c->io.ops = &io_crash_ops;
    c->io.filename = n;
    c->io.writable = (flags & IO_RDWR) != 0;
    c->f = f;
    f->refs++;
    *out = &c->io;
    return 0;
}

static struct io_crash *crash_checked(struct qimg_io *io)
{
    return io && io->ops == &io_crash_ops ? crash_from(io) : NULL;
}

int io_crash_open_peer(struct qimg_io *peer, const char *name,
                       const void *data, size_t len, unsigned flags,
                       struct qimg_io **out)
{
    *out = NULL;
    struct io_crash *p = NULL;
    if (peer && !(p = crash_checked(peer))) {
        return error_set(EINVAL, "not a crash leaf");
    }
    struct crash_file *f = calloc(1, sizeof(*f));
    if (!f) {
        return error_set(ENOMEM, "Out of memory");
    }
    int ret = 0;
    if (p) {
        f->clock = p->f->clock;
    } else {
        f->clock = calloc(1, sizeof(*f->clock));
        ret = f->clock ? 0 : -ENOMEM;
    }
    if (f->clock) {
        f->clock->refs++;
    }
    if (ret == 0) {
        ret = buf_resize(&f->initial, len);
    }
    if (ret == 0) {
        if (len) {
            memcpy(f->initial.p, data, len);
        }
        ret = buf_copy(&f->live, &f->initial);
    }
    if (ret == 0) {
        ret = buf_copy(&f->dur, &f->initial);
    }
    if (ret == 0) {
        ret = handle_new(f, name, flags, out);
    }
    if (ret < 0) {
        f->refs++;
        file_unref(f);
        return error_set_errno(-ret, "Could not open '%s'",
                               name ? name : "");
    }
    return 0;
}

int io_crash_open(const char *name, const void *data, size_t len,
                  unsigned flags, struct qimg_io **out)
{
    return io_crash_open_peer(NULL, name, data, len, flags, out);
}

int io_crash_dup(struct qimg_io *io, unsigned flags, struct qimg_io **out)
{
    *out = NULL;
    struct io_crash *c = crash_checked(io);
    if (!c) {
        return error_set(EINVAL, "not a crash leaf");
    }
    return handle_new(c->f, c->io.filename, flags, out);
}

uint64_t io_crash_position(struct qimg_io *io)
{
    struct io_crash *c = crash_checked(io);
    return c ? c->f->clock->now : 0;
}

void io_crash_set_atomic(struct qimg_io *io, uint64_t len)
{
    struct io_crash *c = crash_checked(io);
    if (c) {
        c->f->atomic_len = len;
    }
}

uint64_t io_crash_unflushed(struct qimg_io *io)
{
    struct io_crash *c = crash_checked(io);
    if (!c) {
        return 0;
    }
    struct crash_file *f = c->f;
    return f->nlog - (f->nflush ? f->flush_idx[f->nflush - 1] + 1 : 0);
}

uint64_t io_crash_flushes(struct qimg_io *io)
{
    struct io_crash *c = crash_checked(io);
    return c ? c->f->nflush : 0;
}

int64_t io_crash_flush_position(struct qimg_io *io, uint64_t n)
{
    struct io_crash *c = crash_checked(io);
    if (!c || n >= c->f->nflush) {
        return -1;
    }
    return (int64_t)c->f->log[c->f->flush_idx[n]].pos;
}

/* ---- Building a crashed file ----------------------------------------- */

/* splitmix64: a small seeded generator, enough to pick fates. */
static uint64_t crash_rand(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Apply the sectors of a change that a torn write lets through. */
static int apply_torn(struct crash_buf *b, const struct crash_entry *e,
                      uint64_t atomic_len, uint64_t *rng)
{
    uint64_t pos = 0;
    while (pos < e->len) {
        /* The piece of the change inside one file sector. */
        uint64_t sector_end = (e->off + pos) / IO_CRASH_SECTOR *
                                  IO_CRASH_SECTOR + IO_CRASH_SECTOR;
        if (e->off + pos < atomic_len) {
            sector_end = atomic_len;
        }
        uint64_t end = sector_end - e->off;
        if (end > e->len) {
            end = e->len;
        }
        if (crash_rand(rng) & 1) {
            int ret = buf_apply_range(b, e, pos, end);
            if (ret < 0) {
                return ret;
            }
        }
        pos = end;
    }
    return 0;
}

/*
 * The last flush of f before cut: dur must hold everything before it.
 * Sets *end to the index of the first entry at or past cut.
 */
static int advance_durable(struct crash_file *f, uint64_t cut, uint64_t *end)
{
    uint64_t target = 0;
    /* Flush positions grow: find the last one below cut. */
    uint64_t lo = 0, hi = f->nflush;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (f->log[f->flush_idx[mid]].pos < cut) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if (lo > 0) {
        target = f->flush_idx[lo - 1];
    }
    lo = target;
    hi = f->nlog;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (f->log[mid].pos < cut) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    *end = lo;
    if (target < f->dur_idx) {
        int ret = buf_copy(&f->dur, &f->initial);
        if (ret < 0) {
            return ret;
        }
        f->dur_idx = 0;
    }
    for (uint64_t i = f->dur_idx; i < target; i++) {
        int ret = buf_apply(&f->dur, &f->log[i]);
        if (ret < 0) {
            return ret;
        }
    }
    f->dur_idx = target;
    return 0;
}

int io_crash_build(struct qimg_io *io, uint64_t cut, enum io_crash_fate fate,
                   uint64_t seed, uint8_t **buf, size_t *len,
                   struct io_crash_stats *st)
{
    *buf = NULL;
    *len = 0;
    struct io_crash *c = crash_checked(io);
    if (!c) {
        return error_set(EINVAL, "not a crash leaf");
    }
    struct crash_file *f = c->f;
    if (cut > f->clock->now) {
        return error_set(EINVAL, "crash cut %llu past the log (%llu)",
                         (unsigned long long)cut,
                         (unsigned long long)f->clock->now);
    }
    memset(st, 0, sizeof(*st));
    struct crash_buf out = {0};
    uint64_t end = 0;
    int ret = advance_durable(f, cut, &end);
    if (ret == 0) {
        ret = buf_copy(&out, &f->dur);
    }
    st->durable_pos = f->dur_idx > 0 ? f->log[f->dur_idx].pos : 0;
    uint64_t rng = seed;
    /* The flush at dur_idx completed: the changes after it are pending. */
    uint64_t first = f->dur_idx + (f->dur_idx < end &&
                                   f->log[f->dur_idx].kind == CRASH_FLUSH);
    for (uint64_t i = first; ret == 0 && i < end; i++) {
        const struct crash_entry *e = &f->log[i];
        if (e->kind == CRASH_FLUSH) {
            continue; /* only the last flush before cut can be here */
        }
        st->pending++;
        unsigned choice = fate == IO_CRASH_APPLY_ALL  ? 0
                          : fate == IO_CRASH_DROP_ALL ? 1
                                                      : crash_rand(&rng) % 3;
        if (choice == 2 && e->kind == CRASH_TRUNCATE) {
            choice = crash_rand(&rng) & 1; /* a size change is atomic */
        }
        if (choice == 0) {
            st->applied++;
            ret = buf_apply(&out, e);
        } else if (choice == 1) {
            st->dropped++;
        } else {
            st->torn++;
            ret = apply_torn(&out, e, f->atomic_len, &rng);
        }
    }
    if (ret < 0) {
        free(out.p);
        return error_set_errno(-ret, "could not build the crashed '%s'",
                               c->io.filename);
    }
    if (!out.p) {
        out.p = malloc(1);
        if (!out.p) {
            return error_set(ENOMEM, "Out of memory");
        }
    }
    *buf = out.p;
    *len = out.size;
    return 0;
}
