/*
 * parallels: shared definitions of the Parallels driver (parallels.c:
 * header, reads and guest writes; create.c; check.c).
 *
 * Layout (little-endian): a 64-byte header (magic, version 2, heads,
 * cylinders, tracks = sectors per cluster, BAT entry count, size in
 * sectors, in-use mark, data offset in sectors, flags, extension
 * offset), then the BAT of 32-bit entries at offset 64.  Entry i maps
 * guest cluster i: 0 is unallocated (reads from the backing file, or
 * zero), otherwise the host sector is entry * multiplier, where the
 * multiplier is 1 for the old magic (entries count sectors) and tracks for
 * the "Ext" magic (entries count clusters).
 */
#ifndef QIMG_FORMATS_PARALLELS_H
#define QIMG_FORMATS_PARALLELS_H

#include <stdbool.h>
#include <stdint.h>

#include "driver.h"

#define PRL_SECTOR 512u
#define PRL_HEADER_SIZE 64u
#define PRL_MAGIC "WithoutFreeSpace"
#define PRL_MAGIC_EXT "WithouFreSpacExt"
#define PRL_MAGIC_LEN 16
#define PRL_VERSION 2u
/* The in-use mark QEMU writes while the image is open read-write. */
#define PRL_INUSE_MAGIC 0x746f6e59u
/* QEMU's limits: the cluster (tracks) and the BAT. */
#define PRL_TRACKS_MAX (0x7fffffffu / 513)
#define PRL_BAT_MAX (0x7fffffffu / 4)

#define PRL_OFF_VERSION 16
#define PRL_OFF_HEADS 20
#define PRL_OFF_CYLINDERS 24
#define PRL_OFF_TRACKS 28
#define PRL_OFF_BAT_ENTRIES 32
#define PRL_OFF_NB_SECTORS 36
#define PRL_OFF_INUSE 44
#define PRL_OFF_DATA_OFF 48

struct prl_state {
    uint8_t header[PRL_HEADER_SIZE]; /* as read, in-use mark as on disk */
    uint32_t *bat;
    uint32_t bat_size;
    uint32_t tracks;
    uint64_t multiplier;
    uint64_t cluster_bytes;
    /* The in-use mark was set when the image was opened. */
    bool inuse_at_open;
    /* Opened read-write: close truncates and clears the in-use mark. */
    bool rdwr;
    /*
     * Invariant (read-write): the host offset where the next cluster is
     * allocated, a multiple of the cluster (of a sector for the old
     * magic), past the header, the BAT and every cluster an entry names.
     */
    uint64_t data_end;
};

/*
 * The host byte offset of guest cluster index's start: 0 when it is
 * unallocated, -errno when the entry points past 2^63.
 */
int64_t prl_cluster_host(struct qimg_node *node, uint64_t index);
/* Write BAT entry index from s->bat to the file. */
int prl_write_bat_entry(struct qimg_node *node, uint64_t index);

int prl_check(struct qimg_node *node, unsigned flags,
              qimg_check_message_fn report, void *opaque,
              struct qimg_check_result *res);
extern const struct qimg_opt_desc prl_create_opts[];
int prl_create(const char *filename, const struct qimg_opts *opts);

#endif
