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
/* Close a node and everything below it.  Does not flush. */
void node_close(struct qimg_node *node);
/* Flush a node's driver, then its file. */
int node_flush(struct qimg_node *node);

/* Open node's backing chain; the loop and depth checks live here. */
int chain_open_backing(struct qimg_node *node, unsigned flags,
                       const struct chain_link *up);
/* Block status over the chain starting at node (see qimg_block_status). */
int chain_block_status(struct qimg_node *node, uint64_t off, uint64_t len,
                       struct qimg_extent *ext);

#endif
