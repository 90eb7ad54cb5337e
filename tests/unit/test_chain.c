/*
 * Block status and reads above a backing chain, on a fake three-layer
 * chain: each layer allocates a known set of 64 KiB units and answers
 * reads with its own byte value there.
 */
#include <stdlib.h>
#include <string.h>

#include "core/image.h"
#include "tap.h"

#define UNIT 65536

struct fake_layer {
    const char *map; /* one char per unit: 'D' data, 'Z' zero, '.' none */
    uint8_t fill;
};

static int fake_block_status(struct qimg_node *node, uint64_t off,
                             uint64_t len, uint64_t *pnum,
                             uint64_t *host_off)
{
    const struct fake_layer *l = node->opaque;
    uint64_t u = off / UNIT;
    char kind = l->map[u];
    uint64_t end = off;
    while (end < off + len && l->map[end / UNIT] == kind) {
        end = (end / UNIT + 1) * UNIT;
    }
    *pnum = (end > off + len ? off + len : end) - off;
    *host_off = off + 0x100000;
    switch (kind) {
    case 'D':
        return BS_ALLOCATED | BS_DATA | BS_OFFSET_VALID;
    case 'Z':
        return BS_ALLOCATED | BS_ZERO;
    default:
        return 0;
    }
}

static int fake_pread(struct qimg_node *node, void *buf, size_t len,
                      uint64_t off)
{
    const struct fake_layer *l = node->opaque;
    uint8_t *p = buf;
    while (len > 0) {
        uint64_t unit_end = (off / UNIT + 1) * UNIT;
        size_t n = (size_t)(unit_end - off < len ? unit_end - off : len);
        char kind = l->map[off / UNIT];
        if (kind == 'D') {
            memset(p, l->fill, n);
        } else if (kind == 'Z') {
            memset(p, 0, n);
        } else {
            int ret = node_read_below(node, p, n, off);
            if (ret < 0) {
                return ret;
            }
        }
        p += n;
        off += n;
        len -= n;
    }
    return 0;
}

static void fake_close(struct qimg_node *node)
{
    (void)node;
}

static const struct qimg_format_ops fake_format = {
    .name = "fake",
    .pread = fake_pread,
    .block_status = fake_block_status,
    .close = fake_close,
};

static struct qimg_node *layer(const char *name, struct fake_layer *l,
                               struct qimg_node *below)
{
    struct qimg_node *n = calloc(1, sizeof(*n));
    n->drv = &fake_format;
    n->opaque = l;
    n->filename = strdup(name);
    n->size = strlen(l->map) * (uint64_t)UNIT;
    n->backing = below;
    return n;
}

int main(void)
{
    /*           unit: 0123456789 */
    struct fake_layer base = {"DDDD", 0xb0};      /* short: 4 units */
    struct fake_layer mid = {"..DZ....D.", 0x4d};
    struct fake_layer top = {"D.....Z...", 0x70};
    struct qimg_node *nb = layer("base", &base, NULL);
    struct qimg_node *nm = layer("mid", &mid, nb);
    struct qimg_node *nt = layer("top", &top, nm);
    struct qimg_extent e;

    /* Unit 0: allocated in the top layer. */
    TAP_OK(chain_block_status(nt, 0, 10 * UNIT, &e) == 0);
    tap_eq_u64(e.length, UNIT, "top data run length");
    tap_eq_u64(e.depth, 0, "top data depth");
    TAP_OK(e.flags == (QIMG_EXTENT_ALLOCATED | QIMG_EXTENT_DATA |
                       QIMG_EXTENT_OFFSET_VALID));
    tap_eq_str(e.filename, "top", "top data file");
    tap_eq_u64(e.host_offset, 0x100000, "host offset");

    /* Unit 1: falls through mid to base data; the run stops where mid's
     * unallocated run ends (unit 2 is mid's). */
    TAP_OK(chain_block_status(nt, UNIT, 9 * UNIT, &e) == 0);
    tap_eq_u64(e.length, UNIT, "base data under two layers: length");
    tap_eq_u64(e.depth, 2, "base data depth");
    tap_eq_str(e.filename, "base", "base data file");

    /* Unit 3: zero in mid. */
    TAP_OK(chain_block_status(nt, 3 * UNIT, UNIT, &e) == 0);
    tap_eq_u64(e.depth, 1, "mid zero depth");
    TAP_OK(e.flags == (QIMG_EXTENT_ALLOCATED | QIMG_EXTENT_ZERO));

    /*
     * Units 4-5: past the end of the short base: zeros, allocated by the
     * short layer (QEMU's bdrv_block_status_above, which compare -s
     * shows: the bytes behave as if that layer allocated them).
     */
    TAP_OK(chain_block_status(nt, 4 * UNIT, 2 * UNIT, &e) == 0);
    tap_eq_u64(e.length, 2 * UNIT, "past short backing: length");
    tap_eq_u64(e.depth, 2, "past short backing: depth is the bottom");
    TAP_OK(e.flags == (QIMG_EXTENT_ZERO | QIMG_EXTENT_ALLOCATED));

    /* Unit 6: zero in top even though mid below has nothing. */
    TAP_OK(chain_block_status(nt, 6 * UNIT, 4 * UNIT, &e) == 0);
    tap_eq_u64(e.length, UNIT, "top zero length");
    TAP_OK(e.flags & QIMG_EXTENT_ZERO);
    tap_eq_u64(e.depth, 0, "top zero depth");

    /* A request in the middle of a unit is answered from there. */
    TAP_OK(chain_block_status(nt, 8 * UNIT + 512, UNIT, &e) == 0);
    tap_eq_u64(e.offset, 8 * UNIT + 512, "unaligned start kept");
    tap_eq_u64(e.length, UNIT - 512, "unaligned run ends at unit end");
    tap_eq_u64(e.depth, 1, "mid data depth");

    /* Reads: every unit shows the layer that decides it. */
    uint8_t *buf = malloc(10 * UNIT);
    TAP_OK(fake_pread(nt, buf, 10 * UNIT, 0) == 0);
    static const uint8_t want[10] = {0x70, 0xb0, 0x4d, 0, 0, 0,
                                     0,    0,    0x4d, 0};
    int good = 1;
    for (int u = 0; u < 10; u++) {
        for (int i = 0; i < UNIT; i++) {
            if (buf[u * UNIT + i] != want[u]) {
                good = 0;
            }
        }
    }
    tap_ok(good, "reads through the chain see the deciding layer");

    /* A read straddling the end of the short backing file. */
    memset(buf, 0xff, 2 * UNIT);
    TAP_OK(node_read_below(nm, buf, 2 * UNIT, 3 * UNIT) == 0);
    tap_ok(buf[0] == 0xb0 && buf[UNIT] == 0 && buf[2 * UNIT - 1] == 0,
           "read across the end of a short backing file zero-fills");

    free(buf);
    for (struct qimg_node *n = nt; n;) {
        struct qimg_node *below = n->backing;
        free(n->filename);
        free(n);
        n = below;
    }
    return tap_done();
}
