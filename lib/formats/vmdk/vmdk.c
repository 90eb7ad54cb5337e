/*
 * The vmdk format driver: open (a text descriptor naming extents, or a
 * hosted sparse file by itself), guest reads, block status, info and
 * check, writes.  Extents are in sparse.c, the descriptor grammar in
 * descriptor.c.
 *
 * A streamOptimized extent is written as QEMU 7.2 writes it: every write
 * is a whole grain, deflated behind its grain marker after the last one,
 * into the tables create preallocated (no footer: the header keeps the
 * directory's place); a grain is written once.
 *
 * Extent files are named in the descriptor.  Like QEMU 7.2 with the
 * CVE-2024-4467 fix, a name is a plain file name, resolved against the
 * descriptor's own name (an absolute name is taken as it is, as QEMU
 * does); unlike QEMU, a name that looks like a protocol ("nbd:...",
 * "json:...") is refused instead of being looked for as a local file.
 */
#include <inttypes.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <zlib.h>

#include "core/error.h"
#include "formats/vmdk/vmdk.h"
#include "util/checked.h"
#include "util/endian.h"
#include "util/path.h"

static int vmdk_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    if (len < 4) {
        return 0;
    }
    uint32_t magic = load_be32(buf);
    if (magic == VMDK3_MAGIC || magic == VMDK4_MAGIC) {
        return 100;
    }
    return vmdk_desc_probe(buf, len);
}

static void state_free(struct vmdk_state *s)
{
    if (!s) {
        return;
    }
    for (size_t i = 0; i < s->nb_extents; i++) {
        vmdk_extent_free(&s->extents[i]);
    }
    free(s->extents);
    free(s->create_type);
    free(s);
}

/*
 * Read the text at off of io: up to min(file size, VMDK_DESC_MAX) bytes
 * (QEMU's vmdk_read_desc), NUL-terminated, malloc'd.
 */
static int read_text(struct qimg_io *io, uint64_t off, char **out)
{
    int64_t size = io_get_size(io);
    if (size < 0) {
        return error_set_errno((int)-size, "Could not access file");
    }
    size_t n = (uint64_t)size < VMDK_DESC_MAX ? (size_t)size : VMDK_DESC_MAX;
    /* At least the 4 bytes of a magic, zero past the end of the file. */
    char *buf = calloc(1, (n < 4 ? 4 : n) + 1);
    if (!buf) {
        return error_set(ENOMEM, "Out of memory");
    }
    int ret = io_pread(io, buf, n, off);
    if (ret < 0) {
        free(buf);
        return error_set_errno(-ret, "Could not read from file");
    }
    buf[n] = '\0';
    *out = buf;
    return 0;
}

/*
 * A hosted sparse header with capacity 0 and a descriptor offset (an
 * ESX-style sparse file carrying a full descriptor): 1 and the
 * descriptor's byte offset, else 0.
 */
static int sparse_has_descriptor(struct qimg_io *io, uint64_t *desc_off)
{
    uint8_t b[VMDK4_HEADER_SIZE];
    int ret = io_pread(io, b, sizeof(b), 0);
    if (ret < 0) {
        return error_set_errno(-ret, "Could not read header");
    }
    if (load_be32(b) != VMDK4_MAGIC) {
        return 0;
    }
    struct vmdk4_header h;
    vmdk4_header_decode(b, &h);
    if (h.capacity != 0 || h.desc_offset == 0) {
        return 0;
    }
    if (h.desc_offset > UINT64_MAX / VMDK_SECTOR) {
        return error_set(EINVAL, "Invalid descriptor offset");
    }
    *desc_off = h.desc_offset * VMDK_SECTOR;
    return 1;
}

/* Open the file an extent line names. */
static int open_extent_file(struct qimg_node *node,
                            const struct vmdk_state *s, unsigned flags,
                            const char *name, char **path_out,
                            struct qimg_io **io_out, struct stat *st)
{
    if (flags & QIMG_OPEN_NO_EXTERNAL) {
        return error_set(EPERM,
                         "Could not open extent file: the image "
                         "names extent '%s' and external references are "
                         "refused",
                         name);
    }
    if (path_is_protocol(name)) {
        return error_set(ENOTSUP,
                         "Could not open extent file: '%s' is not "
                         "a plain local file name",
                         name);
    }
    char *path = path_combine(node->filename, name);
    if (!path) {
        return -ENOMEM;
    }
    unsigned io_flags = node->writable ? IO_RDWR : 0;
    if (flags & QIMG_OPEN_FORCE_SHARE) {
        io_flags |= IO_NO_LOCK;
    }
    /*
     * A file that an earlier extent of this image opened is locked
     * already: locking it again would only conflict with that lock and
     * cost the kernel time per lock held (a descriptor can name one
     * file thousands of times).
     */
    if (stat(path, st) == 0) {
        for (size_t i = 0; i < s->nb_extents; i++) {
            const struct vmdk_extent *x = &s->extents[i];
            if (x->own_io && x->dev == (unsigned long long)st->st_dev &&
                x->ino == (unsigned long long)st->st_ino) {
                io_flags |= IO_NO_LOCK;
                break;
            }
        }
    } else {
        memset(st, 0, sizeof(*st));
    }
    int ret = io_file_open(path, io_flags, io_out);
    if (ret < 0) {
        free(path);
        return ret;
    }
    *path_out = path;
    return 0;
}

static int open_desc_extent(struct qimg_node *node, struct vmdk_state *s,
                            unsigned flags, const struct vmdk_desc_extent *d)
{
    char *path = NULL;
    struct qimg_io *io = NULL;
    struct stat st;
    int ret = open_extent_file(node, s, flags, d->name, &path, &io, &st);
    if (ret < 0) {
        return ret;
    }
    struct vmdk_extent *e = NULL;
    if (strcmp(d->type, "FLAT") == 0 || strcmp(d->type, "VMFS") == 0) {
        ret = vmdk_add_flat_extent(s, io, true, path, (uint64_t)d->sectors,
                                   (uint64_t)d->offset, &e);
    } else if (strcmp(d->type, "SESPARSE") == 0) {
        ret = vmdk_open_sesparse_extent(s, io, true, path, node->writable, &e);
    } else {
        uint64_t desc_off;
        char *probe = NULL;
        /* QEMU reads the start first (and fails alike if it cannot). */
        ret = read_text(io, 0, &probe);
        free(probe);
        if (ret == 0) {
            ret = sparse_has_descriptor(io, &desc_off);
        }
        if (ret > 0) {
            /* QEMU would recurse, even into a loop; qimg refuses. */
            ret = error_set(ENOTSUP,
                            "Extent '%s' holds a descriptor of its "
                            "own; nested descriptors are not supported",
                            path);
        }
        if (ret == 0) {
            ret = vmdk_open_sparse_extent(s, io, true, path, flags, &e);
        }
    }
    free(path);
    if (ret < 0) {
        io_close(io);
        return ret;
    }
    e->dev = (unsigned long long)st.st_dev;
    e->ino = (unsigned long long)st.st_ino;
    e->type = strdup(d->type);
    if (!e->type) {
        return error_set(ENOMEM, "Out of memory");
    }
    return 0;
}

static const char *const desc_types[] = {
    "monolithicFlat",       "vmfs",
    "vmfsSparse",           "seSparse",
    "twoGbMaxExtentSparse", "twoGbMaxExtentFlat",
};

/* A descriptor file (or a descriptor embedded in a sparse header). */
static int open_descriptor(struct qimg_node *node, struct vmdk_state *s,
                           unsigned flags, const char *text)
{
    char *ct = NULL;
    int ret =
        vmdk_desc_get_quoted(text, "createType", VMDK_MAX_CREATE_TYPE, &ct);
    if (ret == -ENOMEM) {
        return error_set(ENOMEM, "Out of memory");
    }
    if (ret < 0) {
        return error_set(EINVAL, "invalid VMDK image descriptor");
    }
    bool known = false;
    for (size_t i = 0; i < sizeof(desc_types) / sizeof(desc_types[0]); i++) {
        known = known || strcmp(ct, desc_types[i]) == 0;
    }
    if (!known) {
        ret = error_set(ENOTSUP, "Unsupported image type '%s'", ct);
        free(ct);
        return ret;
    }
    s->create_type = ct;
    s->desc_offset = 0;
    const char *p = text;
    while (*p) {
        struct vmdk_desc_extent d;
        ret = vmdk_desc_next_extent(&p, &d);
        if (ret < 0) {
            return ret;
        }
        if (ret > 0) {
            ret = open_desc_extent(node, s, flags, &d);
            if (ret < 0) {
                return ret;
            }
        }
    }
    if (s->nb_extents == 0) {
        /* QEMU fails an assertion later on such a descriptor. */
        return error_set(EINVAL, "invalid VMDK image descriptor: no "
                                 "extents");
    }
    return 0;
}

/* The CIDs and parent hint, from the first sectors of the descriptor. */
static int read_ids(struct qimg_node *node, struct vmdk_state *s)
{
    char *desc = calloc(1, VMDK_DESC_CID_AREA + 1);
    if (!desc) {
        return error_set(ENOMEM, "Out of memory");
    }
    int ret = io_pread(node->file, desc, VMDK_DESC_CID_AREA, s->desc_offset);
    if (ret < 0) {
        free(desc);
        return error_set_errno(-ret, "Could not read the descriptor");
    }
    /* QEMU looks at one byte less than it reads. */
    desc[VMDK_DESC_CID_AREA - 1] = '\0';
    char *hint = NULL;
    ret = vmdk_desc_get_parent_hint(desc, &hint);
    if (ret > 0) {
        node->backing_name = hint;
        node->backing_format = strdup("vmdk");
        ret = node->backing_format ? 0 : -ENOMEM;
    }
    if (ret == 0) {
        ret = vmdk_desc_get_cid(desc, false, &s->cid);
    }
    if (ret == 0) {
        ret = vmdk_desc_get_cid(desc, true, &s->parent_cid);
    }
    free(desc);
    if (ret == -ENOMEM) {
        return error_set(ENOMEM, "Out of memory");
    }
    if (ret < 0) {
        /* QEMU's words: its open fails with the bare errno. */
        return error_set_errno(EINVAL, "Could not open '%s'", node->filename);
    }
    return 0;
}

static int vmdk_open(struct qimg_node *node, unsigned flags)
{
    struct vmdk_state *s = calloc(1, sizeof(*s));
    if (!s) {
        return error_set(ENOMEM, "Out of memory");
    }
    s->writable = node->writable;
    char *text = NULL;
    int ret = read_text(node->file, 0, &text);
    if (ret < 0) {
        goto fail;
    }
    uint32_t magic = load_be32(text);
    if (magic == VMDK3_MAGIC || magic == VMDK4_MAGIC) {
        uint64_t desc_off = 0;
        ret = sparse_has_descriptor(node->file, &desc_off);
        if (ret > 0) {
            char *inner = NULL;
            ret = read_text(node->file, desc_off, &inner);
            if (ret == 0) {
                ret = open_descriptor(node, s, flags, inner);
            }
            free(inner);
        } else if (ret == 0) {
            struct vmdk_extent *e;
            ret = vmdk_open_sparse_extent(s, node->file, false, node->filename,
                                          flags, &e);
            if (ret == 0) {
                s->create_type = strdup(e->compressed ? "streamOptimized"
                                                      : "monolithicSparse");
                ret = s->create_type ? 0 : error_set(ENOMEM, "Out of memory");
            }
        }
        /* QEMU reads the CIDs at sector 1 of every sparse file. */
        s->desc_offset = VMDK_SECTOR;
    } else {
        ret = open_descriptor(node, s, flags, text);
    }
    free(text);
    if (ret < 0) {
        goto fail;
    }
    ret = read_ids(node, s);
    if (ret < 0) {
        goto fail;
    }
    node->size = s->extents[s->nb_extents - 1].end_sector * VMDK_SECTOR;
    node->opaque = s;
    return 0;
fail:
    free(node->backing_name);
    free(node->backing_format);
    node->backing_name = NULL;
    node->backing_format = NULL;
    state_free(s);
    return ret;
}

static void vmdk_close(struct qimg_node *node)
{
    state_free(node->opaque);
    node->opaque = NULL;
    node->data_io = NULL;
}

/* Where guest byte off lies in extent e, and the run left in its grain. */
static void extent_position(const struct vmdk_extent *e, uint64_t off,
                            uint64_t *in_cluster, uint64_t *left)
{
    uint64_t rel = off - (e->end_sector - e->sectors) * VMDK_SECTOR;
    uint64_t cluster = e->cluster_sectors * VMDK_SECTOR;
    *in_cluster = rel % cluster;
    /* Never past the extent's end (a last grain may be partial). */
    *left = min_u64(cluster - *in_cluster, e->sectors * VMDK_SECTOR - rel);
}

static struct vmdk_extent *extent_at(struct qimg_node *node, uint64_t off)
{
    struct vmdk_state *s = node->opaque;
    struct vmdk_extent *e = vmdk_find_extent(s, off / VMDK_SECTOR);
    if (!e) {
        error_set(EIO, "%s: no extent for guest offset %llu", node->filename,
                  (unsigned long long)off);
    }
    return e;
}

/*
 * [QEMU] vmdk_is_cid_valid: what lies below a grain this image does not
 * have is read (or copied into a new grain) only while a vmdk parent's
 * CID is the parentCID this image was made against; otherwise the read
 * or write fails with EINVAL, the open and the allocated grains are
 * fine.  A match is remembered for the rest of the open.
 */
static int check_parent_cid(struct qimg_node *node)
{
    struct vmdk_state *s = node->opaque;
    const struct qimg_node *parent = node->backing;
    if (s->cid_checked || !parent || parent->drv != &format_vmdk) {
        return 0;
    }
    const struct vmdk_state *ps = parent->opaque;
    if (ps->cid != s->parent_cid) {
        return error_set(EINVAL, "%s: parent CID %08" PRIx32 " is not "
                                 "the image's parentCID %08" PRIx32,
                         node->filename, ps->cid, s->parent_cid);
    }
    s->cid_checked = true;
    return 0;
}

static int vmdk_pread(struct qimg_node *node, void *buf, size_t len,
                      uint64_t off)
{
    uint8_t *p = buf;
    while (len > 0) {
        struct vmdk_extent *e = extent_at(node, off);
        if (!e) {
            return -EIO;
        }
        uint64_t host = 0, in_cluster, left;
        int ret = vmdk_cluster_lookup(e, off, &host);
        if (ret < 0) {
            return ret;
        }
        extent_position(e, off, &in_cluster, &left);
        size_t n = left < len ? (size_t)left : len;
        if (ret == VMDK_UNALLOC) {
            ret = check_parent_cid(node);
            if (ret == 0) {
                ret = node_read_below(node, p, n, off);
            }
        } else if (ret == VMDK_ZEROED) {
            memset(p, 0, n);
        } else {
            ret = vmdk_read_grain(e, host, in_cluster, p, n);
        }
        if (ret < 0) {
            return ret;
        }
        p += n;
        off += n;
        len -= n;
    }
    return 0;
}

static int vmdk_block_status(struct qimg_node *node, uint64_t off, uint64_t len,
                             uint64_t *pnum, uint64_t *host_off)
{
    struct vmdk_extent *e = extent_at(node, off);
    if (!e) {
        return -EIO;
    }
    uint64_t host = 0, in_cluster, left;
    int ret = vmdk_cluster_lookup(e, off, &host);
    if (ret < 0) {
        return ret;
    }
    extent_position(e, off, &in_cluster, &left);
    *pnum = min_u64(left, len);
    if (ret == VMDK_UNALLOC) {
        /*
         * A directory entry of 0 leaves its whole grain table's span
         * unallocated: one run, not one per grain (a header may claim
         * terabytes over an empty directory).
         */
        uint64_t rel = off / VMDK_SECTOR - (e->end_sector - e->sectors);
        uint64_t l1_index = rel / e->l1_entry_sectors;
        bool gd_empty = e->sesparse
                            ? vmdk_sesparse_gd_empty(e, l1_index)
                            : l1_index >= e->l1_loaded || !e->l1[l1_index];
        if (!e->flat && gd_empty) {
            uint64_t span = (l1_index + 1) * e->l1_entry_sectors;
            span = min_u64(span, e->sectors) - rel;
            *pnum = min_u64(len, span * VMDK_SECTOR - off % VMDK_SECTOR);
        }
        return 0;
    }
    if (ret == VMDK_ZEROED) {
        return BS_ZERO;
    }
    int flags = BS_DATA;
    if (!e->compressed) {
        flags |= BS_OFFSET_VALID;
        *host_off = host + in_cluster;
        if (e->flat) {
            flags |= BS_RECURSE;
        }
        /*
         * Host offsets refer to this extent's file: the core reads
         * data_io right after this call (see layer_file in chain.c).
         */
        node->data_io = e->io == node->file ? NULL : e->io;
    }
    return flags;
}

/*
 * A written disk gets a new CID (QEMU: at the first write of each open),
 * so that images made against the old contents can tell.  The new value
 * has as many hex digits as the old, so the text keeps its length and
 * one small write in place replaces it.
 */
static int update_cid(struct qimg_node *node, struct vmdk_state *s)
{
    if (s->cid_updated) {
        return 0;
    }
    char desc[VMDK_DESC_CID_AREA + 1];
    int ret = io_pread(node->file, desc, VMDK_DESC_CID_AREA, s->desc_offset);
    if (ret < 0) {
        return ret;
    }
    desc[VMDK_DESC_CID_AREA] = '\0';
    char *p = strstr(desc, "CID");
    if (!p || !strstr(desc, "parentCID") || p[3] != '=') {
        return error_set(EINVAL, "%s: cannot update the CID", node->filename);
    }
    p += 4;
    size_t n = 0;
    while (n < 8 &&
           ((p[n] >= '0' && p[n] <= '9') || (p[n] >= 'a' && p[n] <= 'f'))) {
        n++;
    }
    if (n == 0) {
        return error_set(EINVAL, "%s: cannot update the CID", node->filename);
    }
    uint32_t cid;
    if (getrandom(&cid, sizeof(cid), 0) != (ssize_t)sizeof(cid)) {
        return error_set(EIO, "Could not get random bytes for the CID");
    }
    if (n < 8) {
        cid &= (1u << (4 * n)) - 1;
    }
    /* Exactly n digits: a leading digit that is not zero. */
    cid |= 1u << (4 * (n - 1));
    char digits[9];
    snprintf(digits, sizeof(digits), "%x", cid);
    ret =
        io_pwrite(node->file, digits, n, s->desc_offset + (uint64_t)(p - desc));
    if (ret < 0) {
        return ret;
    }
    s->cid = cid;
    s->cid_updated = true;
    return 0;
}

/* Write n bytes of buf (zeros when NULL) at off, within one grain. */
static int write_chunk(struct qimg_node *node, struct vmdk_extent *e,
                       const void *buf, size_t n, uint64_t off, uint64_t host,
                       int kind, uint64_t in_cluster)
{
    if (kind == VMDK_OK) {
        if (!buf) {
            return io_pwrite_zeroes(e->io, host + in_cluster, n, false);
        }
        return io_pwrite(e->io, buf, n, host + in_cluster);
    }
    /* A zeroed grain reads zero, not what lies below (QEMU). */
    uint64_t below_end = 0;
    if (kind != VMDK_ZEROED && node->backing) {
        /* [QEMU] even a whole-grain write: the parent CID is checked. */
        int ret = check_parent_cid(node);
        if (ret < 0) {
            return ret;
        }
        below_end = UINT64_MAX;
    }
    return vmdk_alloc_grain(node, e, off, in_cluster, buf, n, below_end);
}

/* Compress and append one grain of a stream extent (zeros when NULL). */
static int write_compressed_chunk(struct vmdk_extent *e, const void *buf,
                                  size_t n, uint64_t off)
{
    int ret = vmdk_check_compressed(e, off, n);
    if (ret < 0) {
        return ret;
    }
    size_t cap = (size_t)compressBound((uLong)n);
    uint8_t *z = malloc(cap);
    uint8_t *zeros = buf ? NULL : calloc(1, n);
    if (!z || (!buf && !zeros)) {
        free(z);
        free(zeros);
        return error_set(ENOMEM, "Out of memory");
    }
    int64_t csize = vmdk_compress_grain(e, buf ? buf : zeros, n, z, cap);
    if (csize == 0) {
        csize = error_set(EIO, "%s: could not compress a grain", e->filename);
    }
    ret = csize < 0 ? (int)csize
                    : vmdk_write_compressed(e, off, z, (size_t)csize);
    free(z);
    free(zeros);
    return ret;
}

static int do_write(struct qimg_node *node, const uint8_t *buf, uint64_t len,
                    uint64_t off, bool zero)
{
    struct vmdk_state *s = node->opaque;
    int ret = 0;
    while (ret == 0 && len > 0) {
        struct vmdk_extent *e = extent_at(node, off);
        if (!e) {
            ret = -EIO;
            break;
        }
        uint64_t host = 0, in_cluster, left;
        if (e->compressed) {
            /* Every write to a stream extent is a compressed one (QEMU). */
            extent_position(e, off, &in_cluster, &left);
            size_t n = left < len ? (size_t)left : (size_t)len;
            ret = write_compressed_chunk(e, zero ? NULL : buf, n, off);
            if (!zero) {
                buf += n;
            }
            off += n;
            len -= n;
            continue;
        }
        int kind = vmdk_cluster_lookup(e, off, &host);
        if (kind < 0) {
            ret = kind;
            break;
        }
        extent_position(e, off, &in_cluster, &left);
        size_t n = left < len ? (size_t)left : (size_t)len;
        uint64_t cluster = e->cluster_sectors * VMDK_SECTOR;
        if (!e->flat) {
            ret = vmdk_check_write(e, off,
                                   kind == VMDK_OK ? host + in_cluster : 0, n);
            if (ret < 0) {
                break;
            }
        }
        if (zero && e->has_zero_grain && !e->flat && in_cluster == 0 &&
            n == cluster) {
            ret = vmdk_set_zeroed(e, off);
        } else {
            ret = write_chunk(node, e, zero ? NULL : buf, n, off, host, kind,
                              in_cluster);
        }
        if (!zero) {
            buf += n;
        }
        off += n;
        len -= n;
    }
    /*
     * [QEMU] the CID changes after the first write of an open that
     * succeeded; one that failed (a parent CID mismatch) leaves it.
     */
    return ret < 0 ? ret : update_cid(node, s);
}

static int vmdk_pwrite(struct qimg_node *node, const void *buf, size_t len,
                       uint64_t off)
{
    return do_write(node, buf, len, off, false);
}

static int vmdk_pwrite_zeroes(struct qimg_node *node, uint64_t off,
                              uint64_t len, unsigned flags)
{
    (void)flags;
    return do_write(node, NULL, len, off, true);
}

/* The stream extent holding a compressed request, checked. */
static int compressed_extent(struct qimg_node *node, size_t len, uint64_t off,
                             struct vmdk_extent **out)
{
    struct vmdk_extent *e = extent_at(node, off);
    if (!e) {
        return -EIO;
    }
    int ret = e->compressed ? vmdk_check_compressed(e, off, len) : 0;
    if (ret == 0) {
        *out = e;
    }
    return ret;
}

/*
 * The end of a run of compressed writes: each extent file is padded to
 * a whole sector (the last grain ends mid-sector), as QEMU does.
 */
static int end_compressed(struct qimg_node *node)
{
    struct vmdk_state *s = node->opaque;
    for (size_t i = 0; i < s->nb_extents; i++) {
        int64_t n = io_get_size(s->extents[i].io);
        if (n < 0) {
            return (int)n;
        }
        uint64_t end = div_round_up_u64((uint64_t)n, VMDK_SECTOR) * VMDK_SECTOR;
        if (end != (uint64_t)n) {
            int ret = io_truncate(s->extents[i].io, end);
            if (ret < 0) {
                return ret;
            }
        }
    }
    return 0;
}

static int vmdk_pwrite_compressed(struct qimg_node *node, const void *buf,
                                  size_t len, uint64_t off)
{
    struct vmdk_extent *e = NULL;
    int ret = compressed_extent(node, len, off, &e);
    if (ret == 0 && !e->compressed) {
        /* QEMU writes the grains of other extents plain. */
        return do_write(node, buf, len, off, false);
    }
    if (ret == 0) {
        ret = update_cid(node, node->opaque);
    }
    if (ret == 0) {
        ret = write_compressed_chunk(e, buf, len, off);
    }
    return ret;
}

static int64_t vmdk_compress_cluster(struct qimg_node *node, const void *buf,
                                     size_t len, uint64_t off, void *out,
                                     size_t cap)
{
    struct vmdk_extent *e = NULL;
    int ret = compressed_extent(node, len, off, &e);
    if (ret < 0) {
        return ret;
    }
    /*
     * Other extents store grains plain (0: a plain write).  A stream
     * grain that does not fit cap comes back as a plain write too, which
     * compresses it in turn (a stream grain is never stored plain).
     */
    if (!e->compressed) {
        return 0;
    }
    return vmdk_compress_grain(e, buf, len, out, cap);
}

static int vmdk_pwrite_precompressed(struct qimg_node *node, const void *data,
                                     size_t csize, size_t len, uint64_t off)
{
    struct vmdk_extent *e = NULL;
    int ret = compressed_extent(node, len, off, &e);
    if (ret == 0 && !e->compressed) {
        ret = error_set(EINVAL,
                        "%s: compressed data for a grain stored "
                        "plain",
                        node->filename);
    }
    if (ret == 0) {
        ret = update_cid(node, node->opaque);
    }
    if (ret == 0) {
        ret = vmdk_write_compressed(e, off, data, csize);
    }
    return ret;
}

/* A streamOptimized image: every extent compressed (QEMU's test). */
static bool vmdk_needs_compressed_writes(struct qimg_node *node)
{
    const struct vmdk_state *s = node->opaque;
    return s->nb_extents > 0 && s->extents[0].compressed;
}

static int vmdk_flush(struct qimg_node *node)
{
    struct vmdk_state *s = node->opaque;
    for (size_t i = 0; i < s->nb_extents; i++) {
        if (s->extents[i].own_io) {
            int ret = node_sync(node, s->extents[i].io);
            if (ret < 0) {
                return ret;
            }
        }
    }
    return node_sync(node, node->file);
}

static int put(struct qimg_value *dict, const char *key,
               struct qimg_value *item)
{
    return qimg_value_dict_set(dict, key, item) < 0 ? -ENOMEM : 0;
}

/* QEMU's VmdkExtentInfo, in its field order. */
static struct qimg_value *extent_value(const struct vmdk_extent *e)
{
    struct qimg_value *d = qimg_value_new_dict();
    int ret = d ? 0 : -ENOMEM;
    if (ret == 0 && e->compressed) {
        ret = put(d, "compressed", qimg_value_new_bool(true));
    }
    if (ret == 0) {
        ret = put(d, "virtual-size",
                  qimg_value_new_int((int64_t)(e->sectors * VMDK_SECTOR)));
    }
    if (ret == 0) {
        ret = put(d, "filename", qimg_value_new_string(e->filename));
    }
    if (ret == 0 && !e->flat) {
        ret = put(
            d, "cluster-size",
            qimg_value_new_int((int64_t)(e->cluster_sectors * VMDK_SECTOR)));
    }
    if (ret == 0) {
        ret = put(d, "format", qimg_value_new_string(e->type ? e->type : ""));
    }
    if (ret < 0) {
        qimg_value_free(d);
        return NULL;
    }
    return d;
}

static struct qimg_value *specific_value(const struct vmdk_state *s)
{
    struct qimg_value *top = qimg_value_new_dict();
    struct qimg_value *data = qimg_value_new_dict();
    struct qimg_value *list = qimg_value_new_list();
    int ret = top && data && list ? 0 : -ENOMEM;
    for (size_t i = 0; ret == 0 && i < s->nb_extents; i++) {
        struct qimg_value *x = extent_value(&s->extents[i]);
        ret = x && qimg_value_list_append(list, x) == 0 ? 0 : -ENOMEM;
        if (ret < 0) {
            qimg_value_free(x);
        }
    }
    if (ret == 0) {
        ret = put(data, "cid", qimg_value_new_uint(s->cid));
    }
    if (ret == 0) {
        ret = put(data, "parent-cid", qimg_value_new_uint(s->parent_cid));
    }
    if (ret == 0) {
        ret = put(data, "create-type", qimg_value_new_string(s->create_type));
    }
    if (ret == 0) {
        ret = put(data, "extents", list);
        list = NULL;
    }
    if (ret == 0) {
        ret = put(top, "type", qimg_value_new_string("vmdk"));
    }
    if (ret == 0) {
        ret = put(top, "data", data);
        data = NULL;
    }
    qimg_value_free(list);
    qimg_value_free(data);
    if (ret < 0) {
        qimg_value_free(top);
        return NULL;
    }
    return top;
}

/* QEMU's vmdk_extents_type_eq: one grain size for the whole disk. */
static bool same_kind(const struct vmdk_extent *a, const struct vmdk_extent *b)
{
    return a->flat == b->flat && a->compressed == b->compressed &&
           (a->flat || a->cluster_sectors == b->cluster_sectors);
}

static int vmdk_get_info(struct qimg_node *node, struct qimg_image_info *info)
{
    struct vmdk_state *s = node->opaque;
    bool uniform = true;
    for (size_t i = 1; i < s->nb_extents; i++) {
        uniform = uniform && same_kind(&s->extents[0], &s->extents[i]);
    }
    if (!uniform) {
        info->no_disk_info = true;
    } else if (!s->extents[0].flat) {
        info->cluster_size = s->extents[0].cluster_sectors * VMDK_SECTOR;
    }
    info->format_specific = specific_value(s);
    if (!info->format_specific) {
        return error_set(ENOMEM, "Out of memory");
    }
    return 0;
}

/* The descriptor (or sparse) file plus every extent file opened here. */
static int64_t vmdk_get_allocated(struct qimg_node *node)
{
    struct vmdk_state *s = node->opaque;
    int64_t total = node->file->ops->get_allocated(node->file);
    if (total < 0) {
        return total;
    }
    for (size_t i = 0; i < s->nb_extents; i++) {
        struct vmdk_extent *e = &s->extents[i];
        if (!e->own_io) {
            continue;
        }
        int64_t n = e->io->ops->get_allocated(e->io);
        if (n < 0) {
            return n;
        }
        total += n;
    }
    return total;
}

/*
 * QEMU's vmdk check: every grain of the disk must lie before the end of
 * its extent file.  The first problem ends the check, which then fails
 * with EINVAL, as QEMU's does ("Check failed: Invalid argument").
 */
static int vmdk_check(struct qimg_node *node, unsigned flags,
                      qimg_check_message_fn report, void *opaque,
                      struct qimg_check_result *res)
{
    if (flags & (QIMG_CHECK_FIX_LEAKS | QIMG_CHECK_FIX_ERRORS)) {
        return error_set(ENOTSUP, "This image format does not support "
                                  "checks");
    }
    uint64_t total = node->size / VMDK_SECTOR;
    uint64_t sector = 0;
    char line[128];
    uint64_t steps = 0;
    while (sector < total) {
        /* One grain per step: a huge disk of tiny grains is bounded. */
        if (++steps > check_max_table_entries) {
            return error_set(EFBIG, "Check stopped: more than %llu grains",
                             (unsigned long long)check_max_table_entries);
        }
        struct vmdk_extent *e = vmdk_find_extent(node->opaque, sector);
        if (!e) {
            snprintf(line, sizeof(line),
                     "ERROR: could not find extent for "
                     "sector %llu",
                     (unsigned long long)sector);
            break;
        }
        uint64_t host = 0;
        int ret = vmdk_cluster_lookup(e, sector * VMDK_SECTOR, &host);
        if (ret < 0) {
            snprintf(line, sizeof(line),
                     "ERROR: could not get "
                     "cluster_offset for sector %llu",
                     (unsigned long long)sector);
            break;
        }
        if (ret == VMDK_OK) {
            int64_t len = io_get_size(e->io);
            if (len < 0) {
                snprintf(line, sizeof(line),
                         "ERROR: could not get extent "
                         "file length for sector %llu",
                         (unsigned long long)sector);
                break;
            }
            if (host >= (uint64_t)len) {
                snprintf(line, sizeof(line),
                         "ERROR: cluster offset for "
                         "sector %llu points after EOF",
                         (unsigned long long)sector);
                break;
            }
        }
        sector += e->cluster_sectors;
    }
    if (sector >= total) {
        return 0;
    }
    report(line, QIMG_CHECK_LINE_PLAIN, opaque);
    res->corruptions++;
    return error_set(EINVAL, "Check failed");
}

const struct qimg_format_ops format_vmdk = {
    .name = "vmdk",
    .probe = vmdk_probe,
    .open = vmdk_open,
    .close = vmdk_close,
    .pread = vmdk_pread,
    .pwrite = vmdk_pwrite,
    .pwrite_zeroes = vmdk_pwrite_zeroes,
    .pwrite_compressed = vmdk_pwrite_compressed,
    .compress_cluster = vmdk_compress_cluster,
    .pwrite_precompressed = vmdk_pwrite_precompressed,
    .compressed_end = end_compressed,
    .needs_compressed_writes = vmdk_needs_compressed_writes,
    .flush = vmdk_flush,
    .block_status = vmdk_block_status,
    .get_info = vmdk_get_info,
    .get_allocated = vmdk_get_allocated,
    .check = vmdk_check,
    .create_opts = vmdk_create_opts,
    .create = vmdk_create,
};
