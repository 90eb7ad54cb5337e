/*
 * qcow2: the operations of qemu-img commit and rebase on the image
 * itself: changing the backing file named in the header, and emptying
 * the image after its data went into its backing file.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "driver.h"
#include "formats/qcow2/qcow2.h"
#include "util/checked.h"
#include "util/endian.h"

/* Header field offsets [spec: Header]. */
#define HDR_L1_TABLE_OFFSET 40
/* l1_table_offset, refcount_table_offset, refcount_table_clusters. */
#define HDR_TABLES_LEN 20
/* Bytes of one L1 and one refcount table entry [spec]. */
#define L1E_SIZE 8
#define RTE_SIZE 8

static char *dup_or_null(const char *s, bool *oom)
{
    if (!s) {
        return NULL;
    }
    char *d = strdup(s);
    if (!d) {
        *oom = true;
    }
    return d;
}

int qcow2_change_backing(struct qimg_node *node, const char *name,
                         const char *format)
{
    struct qcow2_state *s = node->opaque;
    /*
     * [QEMU] a raw external data file must read as the guest does, so it
     * cannot gain a backing file; the spec limits the name to 1023 bytes.
     */
    if (name && (s->hdr.autoclear_features & QCOW2_AUTOCLEAR_DATA_FILE_RAW)) {
        return error_set(EINVAL, "%s: a raw external data file cannot have "
                         "a backing file", node->filename);
    }
    if (name && strlen(name) > QCOW2_MAX_BACKING_NAME) {
        return error_set(EINVAL, "%s: backing file name too long",
                         node->filename);
    }
    if (s->corrupt) {
        return error_set(EIO, "qcow2: image '%s' is marked corrupt",
                         node->filename);
    }
    /* The data the new backing file relies on is durable first. */
    int ret = s->write_ready ? qcow2_write_flush(node, s)
                             : node_sync(node, node->file);
    if (ret < 0) {
        return ret;
    }
    bool oom = false;
    char *new_name = dup_or_null(name, &oom);
    char *new_fmt = dup_or_null(format, &oom);
    uint8_t *buf = malloc((size_t)s->cluster_size);
    if (oom || !buf) {
        free(new_name);
        free(new_fmt);
        free(buf);
        return error_set(ENOMEM, "Out of memory");
    }
    char *old_name = s->hdr.backing_file;
    char *old_fmt = s->hdr.backing_format;
    s->hdr.backing_file = new_name;
    s->hdr.backing_format = new_fmt;
    /*
     * [QEMU] the whole header, extensions and name included, must fit in
     * the first cluster: ENOSPC ("No space left in the file header").
     */
    int64_t n = qcow2_header_encode(&s->hdr, buf, (size_t)s->cluster_size);
    if (n < 0) {
        ret = (int)n;
    } else {
        ret = io_pwrite(node->file, buf, (size_t)s->cluster_size, 0);
        if (ret == 0) {
            ret = node_sync(node, node->file);
        }
        if (ret < 0) {
            ret = error_set_errno(-ret, "%s: could not update the qcow2 "
                                  "header", node->filename);
        }
    }
    free(buf);
    if (ret < 0) {
        s->hdr.backing_file = old_name;
        s->hdr.backing_format = old_fmt;
        free(new_name);
        free(new_fmt);
        return ret;
    }
    free(old_name);
    free(old_fmt);
    return 0;
}

/* Zero [off, off + len) of the image file and flush. */
static int zero_synced(struct qimg_node *node, uint64_t off, uint64_t len)
{
    int ret = len > 0 ? io_pwrite_zeroes(node->file, off, len, false) : 0;
    if (ret == 0) {
        ret = node_sync(node, node->file);
    }
    if (ret < 0) {
        return error_set_errno(-ret, "%s: could not empty the image",
                               node->filename);
    }
    return 0;
}

/*
 * QEMU's make_completely_empty: with no snapshot, bitmap, encryption or
 * data file holding clusters, the file is rebuilt as header, refcount
 * table (cluster 1), one refcount block (cluster 2) and a zeroed L1
 * table (cluster 3 on), and cut after them.  The dirty bit covers the
 * steps where the refcounts on disk are wrong; a v3 image has it.
 *
 * The new layout takes clusters the old one may use for anything (a
 * moved L1 table leaves cluster 3 to L2 tables and data), so every step
 * is flushed before the next relies on it: the old L1 table is zeroed
 * (from then on every cluster reads from the backing file, which the
 * commit flushed), then the new one, then the header names it; only
 * then are clusters 1 and 2 rewritten, and the header names the new
 * refcount table last.  A crash in between leaves a dirty image whose
 * tables name nothing but zeros or the old, intact clusters.
 */
static int make_completely_empty(struct qimg_node *node,
                                 struct qcow2_state *s)
{
    const uint64_t cs = s->cluster_size;
    uint64_t l1_bytes = (uint64_t)s->l1_size * L1E_SIZE;
    uint64_t l1_clusters = div_round_up_u64(l1_bytes, cs);

    int ret = qcow2_set_incompat(node, s, s->hdr.incompatible_features |
                                              QCOW2_INCOMPAT_DIRTY);
    if (ret < 0) {
        return ret;
    }
    /* Nothing cached may be written over the new layout. */
    qcow2_write_free(s);
    qcow2_l2_invalidate(s, 0, UINT64_MAX);
    s->z_valid = false;

    ret = zero_synced(node, s->l1_table_offset, l1_clusters * cs);
    if (ret == 0) {
        ret = zero_synced(node, 3 * cs, l1_clusters * cs);
    }
    if (ret < 0) {
        return ret;
    }
    if (s->l1_table) {
        memset(s->l1_table, 0, (size_t)l1_bytes);
    }
    s->l1_dirty_lo = s->l1_dirty_hi = 0;
    uint8_t tables[HDR_TABLES_LEN];
    store_be64(tables, 3 * cs);
    ret = qcow2_header_update(node, HDR_L1_TABLE_OFFSET, tables, L1E_SIZE);
    if (ret < 0) {
        return ret;
    }
    s->l1_table_offset = s->hdr.l1_table_offset = 3 * cs;

    /* The refcount table (one entry), the block with clusters 0..3+L1. */
    uint8_t *block = calloc(2, (size_t)cs);
    if (!block) {
        return error_set(ENOMEM, "Out of memory");
    }
    store_be64(block, 2 * cs);
    for (uint64_t i = 0; i < 3 + l1_clusters; i++) {
        qcow2_refcount_store(block + cs, i, s->refcount_order, 1);
    }
    ret = io_pwrite(node->file, block, (size_t)(2 * cs), cs);
    free(block);
    if (ret == 0) {
        ret = node_sync(node, node->file);
    }
    if (ret < 0) {
        return error_set_errno(-ret, "%s: could not write a refcount block",
                               node->filename);
    }
    store_be64(tables + 8, cs);
    store_be32(tables + 16, 1);
    ret = qcow2_header_update(node, HDR_L1_TABLE_OFFSET + L1E_SIZE,
                              tables + 8, sizeof(tables) - L1E_SIZE);
    if (ret < 0) {
        return ret;
    }
    s->refcount_table_offset = s->hdr.refcount_table_offset = cs;
    s->hdr.refcount_table_clusters = 1;
    s->refcount_table_entries = cs / RTE_SIZE;

    ret = qcow2_set_incompat(node, s, s->hdr.incompatible_features &
                                          ~QCOW2_INCOMPAT_DIRTY);
    s->dirty_set = false;
    if (ret == 0) {
        ret = io_truncate(node->file, (3 + l1_clusters) * cs);
        if (ret < 0) {
            ret = error_set_errno(-ret, "%s: could not truncate the image",
                                  node->filename);
        }
    }
    return ret;
}

int qcow2_make_empty(struct qimg_node *node)
{
    struct qcow2_state *s = node->opaque;
    if (s->corrupt) {
        return error_set(EIO, "qcow2: image '%s' is marked corrupt",
                         node->filename);
    }
    uint64_t l1_clusters =
        div_round_up_u64((uint64_t)s->l1_size * L1E_SIZE, s->cluster_size);
    uint64_t rb_entries =
        (s->cluster_size * 8) >> s->refcount_order;
    /*
     * [QEMU] the fast path needs the dirty bit (v3), nothing else that
     * owns clusters, and the new metadata in one refcount block.
     */
    if (s->hdr.version >= 3 && s->snapshots.nb == 0 &&
        s->hdr.nb_bitmaps == 0 && s->hdr.crypt_method != QCOW2_CRYPT_LUKS &&
        !s->has_data_file && 3 + l1_clusters <= rb_entries) {
        int ret = s->write_ready ? qcow2_write_flush(node, s) : 0;
        return ret < 0 ? ret : make_completely_empty(node, s);
    }
    /* Otherwise every active cluster is discarded, unallocated. */
    return qcow2_discard_all(node, s);
}
