/*
 * The crash-simulating leaf (test-only, after SQLite's crash VFS): an
 * in-memory file that logs every change and can later produce the file
 * a power failure at any point of that log would have left.
 *
 * Model: a flush (io_flush) makes every change before it durable.  The
 * changes after the last completed flush sit in a volatile cache: at a
 * crash each is applied whole, dropped, or torn (some of its 512-byte
 * sectors reach the file, the others do not), independently, in issue
 * order.  A sector is never half written and never holds bytes nobody
 * wrote (the "powersafe overwrite" disk of SQLite's model).
 *
 * Reads during the run see every change, as a page cache would.  Not part
 * of libqimg: it is built into the test helper library only.
 */
#ifndef QIMG_IO_CRASH_H
#define QIMG_IO_CRASH_H

#include <stddef.h>
#include <stdint.h>

#include "driver.h"

/* The sector size tearing works in. */
#define IO_CRASH_SECTOR 512

/* What a crash does to the changes after the last completed flush. */
enum io_crash_fate {
    IO_CRASH_RANDOM,    /* each applied, dropped or torn (seeded) */
    IO_CRASH_APPLY_ALL, /* as if the next flush had completed */
    IO_CRASH_DROP_ALL,  /* as if nothing after the flush was written */
};

/* What one io_crash_build did, for the test's log. */
struct io_crash_stats {
    uint64_t durable_pos; /* log entries made durable by a flush */
    uint64_t pending;     /* changes after it, up to the cut */
    uint64_t applied, dropped, torn;
};

/*
 * Open a crash leaf whose durable initial contents are a copy of data
 * (len bytes).  flags: IO_RDWR (else read-only until set_perm asks for
 * writing, as for the memory leaf).
 */
int io_crash_open(const char *name, const void *data, size_t len,
                  unsigned flags, struct qimg_io **out);

/* Log entries so far: every write, zero write, discard, truncate, flush. */
uint64_t io_crash_position(struct qimg_io *io);
/* Flushes so far. */
uint64_t io_crash_flushes(struct qimg_io *io);
/* The log position of flush n (0-based), or -1 when there is none. */
int64_t io_crash_flush_position(struct qimg_io *io, uint64_t n);

/*
 * The file a crash at log position cut leaves: entries [0, cut) were
 * issued; every flush among them completed, so everything before the
 * last of them is on disk; the changes between it and cut meet fate
 * (seeded by seed for IO_CRASH_RANDOM).  A cut at a flush's own position
 * is a crash during that flush.  *buf is malloc'd (at least one byte),
 * *len its file size.  0 or -errno.
 */
int io_crash_build(struct qimg_io *io, uint64_t cut, enum io_crash_fate fate,
                   uint64_t seed, uint8_t **buf, size_t *len,
                   struct io_crash_stats *st);

#endif /* QIMG_IO_CRASH_H */
