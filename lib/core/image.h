/*
 * Image handles and nodes: the core request layer that every public I/O
 * call goes through, and the backing-chain walker.
 */
#ifndef QIMG_CORE_IMAGE_H
#define QIMG_CORE_IMAGE_H

#include "driver.h"

/* A chain deeper than this is refused: a sane chain is a few layers. */
#define CHAIN_MAX_DEPTH 256

struct qimg_image {
    struct qimg_node *top;
    unsigned flags;
};

/*
 * The layers above the one being opened, innermost first: the loop and
 * depth checks of a chain being opened walk this list.
 */
struct chain_link {
    const struct chain_link *up;
    int depth;
    unsigned long long dev;
    unsigned long long ino;
};

/*
 * Open one layer (and, unless QIMG_OPEN_NO_BACKING, its backing chain).
 * up lists the layers above it (NULL for the top of a chain).
 */
int node_open(const char *filename, const char *format, unsigned flags,
              const struct chain_link *up, struct qimg_node **out);
/* node_open with runtime options for the top node (copied), or NULL. */
int node_open_opts(const char *filename, const char *format, unsigned flags,
                   const struct qimg_opts *opts, const struct chain_link *up,
                   struct qimg_node **out);
/*
 * qimg_open_snapshot with qimg_open_opts' runtime options; sel NULL is
 * qimg_open_opts.
 */
struct qimg_image *
image_open_snapshot_opts(const char *filename, const char *format,
                         unsigned flags, const struct qimg_opts *driver_opts,
                         const struct qimg_snapshot_select *sel);
/*
 * Switch the read-only top node of an image just opened to an internal
 * snapshot's view, as qimg_open_snapshot does after its open (a fuzz
 * target loads the snapshots of an image opened over a memory leaf).
 * Returns 0 or -errno, the message prefixed "Failed to load snapshot".
 */
int image_load_snapshot(struct qimg_node *node,
                        const struct qimg_snapshot_select *sel);
/*
 * Open an image over a leaf the caller opened (a memory leaf in the fuzz
 * targets and unit tests), as qimg_open does over a file: format NULL
 * probes, flags are QIMG_OPEN_*.  The leaf is taken over in every case
 * (closed on failure; qimg_close closes it).  Backing file names are
 * resolved against the leaf's name: pass QIMG_OPEN_NO_EXTERNAL (or
 * QIMG_OPEN_NO_BACKING) when the contents are untrusted or the name is
 * not a path.  Returns 0 or -errno with the message set (without the
 * "Could not open" prefix qimg_open adds).
 */
int image_open_leaf(struct qimg_io *file, const char *format,
                    unsigned flags, struct qimg_image **out);
/*
 * image_open_leaf with runtime options for the format, as qimg_open_opts
 * takes them (a fuzz target's key-secret); NULL is image_open_leaf.
 */
int image_open_leaf_opts(struct qimg_io *file, const char *format,
                         unsigned flags, const struct qimg_opts *driver_opts,
                         struct qimg_image **out);
/* The flags qimg_set_open_policy() adds to every open. */
unsigned image_open_policy(void);
/*
 * Test hook: while set, every file node_open opens by name (an image
 * qimg_open opens, its backing files, the base qimg_commit reopens
 * read-write, the new backing file of qimg_rebase) is first offered to
 * resolve, with the IO_* flags the file leaf would get: it returns 1 and
 * a leaf of its own in *out (taken over as node_open's would be), 0 to
 * let the file be opened as usual, or -errno with the message set.  The
 * crash tests use it to put a whole backing chain on crash leaves.  Not
 * exported from the shared library (only qimg_* is) and not thread-safe:
 * set it before opening anything, NULL to clear it.
 */
typedef int (*image_leaf_resolver)(const char *filename, unsigned io_flags,
                                   void *opaque, struct qimg_io **out);
void image_set_leaf_resolver(image_leaf_resolver resolve, void *opaque);
/* Close a node and everything below it.  Does not flush. */
void node_close(struct qimg_node *node);
/*
 * QEMU's warning for a writable image probed as raw (its raw driver
 * prints it at every open of such a node).
 */
void node_warn_probed_raw(const char *filename);
/* Flush a node's driver, then its file. */
int node_flush(struct qimg_node *node);

/* Open node's backing chain; the loop and depth checks live here. */
int chain_open_backing(struct qimg_node *node, unsigned flags,
                       const struct chain_link *up);
/* Block status over the chain starting at node (see qimg_block_status). */
int chain_block_status(struct qimg_node *node, uint64_t off, uint64_t len,
                       struct qimg_extent *ext);

/*
 * Block status as QEMU's block layer composes it (block/io.c), so that
 * the commands built on it (map, compare, convert) see the same runs and
 * flags as qemu-img.  flags holds BS_DATA, BS_ZERO, BS_OFFSET_VALID,
 * BS_ALLOCATED (the layer decided: data or zero), BS_COMPRESSED,
 * BS_RECURSE and STATUS_EOF (the run ends at the end of the layer that
 * answered), with QEMU's rules for adding each.
 */
#define STATUS_EOF (1u << 9)
/*
 * The bits qemu-img compare -s compares (QEMU's status word; BS_RECURSE
 * is internal to QEMU's block layer and does not reach it).
 */
#define STATUS_QEMU_MASK                                                       \
    (BS_DATA | BS_ZERO | BS_OFFSET_VALID | BS_ALLOCATED | STATUS_EOF)

struct chain_status {
    unsigned flags;
    uint64_t pnum; /* bytes from off; 0 only past the end of the layer */
    uint64_t map;  /* host offset in file when BS_OFFSET_VALID */
    struct qimg_io *file; /* the file map refers to, or NULL */
    struct qimg_node *node; /* the layer that answered */
};

/*
 * One layer (QEMU's bdrv_co_block_status with want_zero): the driver's
 * answer for at most bytes at off, made ZERO where nothing lies below
 * (no backing file, or off past its end), with holes of the host file
 * reported as zero for BS_RECURSE runs.  off at or past the end of node
 * gives pnum 0 and STATUS_EOF.
 */
int layer_block_status(struct qimg_node *node, uint64_t off, uint64_t bytes,
                       struct chain_status *st);

/*
 * The whole chain (QEMU's bdrv_block_status_above with no base): the first
 * layer that allocates the run decides; bytes past the end of a short
 * backing file are zero and allocated there.  *depth (may be NULL) is the
 * index of the layer that answered (0 = node).
 */
int chain_status_above(struct qimg_node *node, uint64_t off, uint64_t bytes,
                       struct chain_status *st, int *depth);

/*
 * The layer of top's backing chain (below top) that name designates, as
 * QEMU's bdrv_find_backing_image matches it (qemu-img commit -b): for
 * each layer with a backing file, name and the stored backing name are
 * both resolved against that layer's folder and compared as canonical
 * paths (realpath), protocol names as they are.  0 and *out, -ENOENT
 * (no message) when nothing matches, or -ENOMEM.
 */
int chain_find_backing(struct qimg_node *top, const char *name,
                       struct qimg_node **out);

#endif
