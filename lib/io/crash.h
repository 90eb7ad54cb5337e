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
    /* The last completed flush: the file's changes before it are durable. */
    uint64_t durable_pos;
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
/*
 * The same, for a further file of the machine peer's file is on: the two
 * (and every other peer) share one log clock, so that one cut is one
 * power failure for all of them (a commit writes the backing file, then
 * the image).  A flush makes only its own file's changes durable.
 */
int io_crash_open_peer(struct qimg_io *peer, const char *name,
                       const void *data, size_t len, unsigned flags,
                       struct qimg_io **out);
/*
 * Another handle on io's file (flags: IO_RDWR or 0), as a second open of
 * the same path: the file lives until its last handle is closed, so a
 * test can keep one handle to build crashes from while the images that
 * opened the others are closed and reopened.
 */
int io_crash_dup(struct qimg_io *io, unsigned flags, struct qimg_io **out);

/*
 * Log entries so far on the shared clock: every write, zero write,
 * discard, truncate and flush of io's file and of its peers.
 */
uint64_t io_crash_position(struct qimg_io *io);
/*
 * Model a disk whose first physical sector holds bytes [0, len) of io's
 * file: a torn change keeps that piece whole (all new or all old).  For
 * a qcow2 header cluster, which is rewritten in one write (as QEMU
 * does) and spans more than one 512-byte sector: see crash_qcow2.c.
 */
void io_crash_set_atomic(struct qimg_io *io, uint64_t len);
/* Changes to io's file since its last flush (0: all durable). */
uint64_t io_crash_unflushed(struct qimg_io *io);
/* Flushes of io's file so far. */
uint64_t io_crash_flushes(struct qimg_io *io);
/* The clock position of its flush n (0-based), or -1 when there is none. */
int64_t io_crash_flush_position(struct qimg_io *io, uint64_t n);

/*
 * The file a crash at clock position cut leaves: entries [0, cut) were
 * issued; every flush of this file among them completed, so its changes
 * before the last of them are on disk; its changes between that flush
 * and cut meet fate (seeded by seed for IO_CRASH_RANDOM).  A cut at a
 * flush's own position is a crash during that flush.  *buf is malloc'd
 * (at least one byte), *len its file size.  0 or -errno.
 */
int io_crash_build(struct qimg_io *io, uint64_t cut, enum io_crash_fate fate,
                   uint64_t seed, uint8_t **buf, size_t *len,
                   struct io_crash_stats *st);

#endif /* QIMG_IO_CRASH_H */
