/*
 * libFuzzer target for the pure on-disk codecs: the bytes go straight to
 * one structure's decoder, with no image around them, so the fuzzer
 * spends its time inside the parser and not in getting an open to reach
 * it.  The first byte selects the codec (its value modulo NCODECS) and a
 * variant (the value divided by NCODECS: decode flags, or whether the
 * checksum is made right first so the fuzzer gets past it); the rest is
 * the structure:
 *
 *   qcow2-header     header, extensions, feature table, backing name
 *                    (qcow2_header_decode + _finish); what decodes is
 *                    encoded again and must decode to the same header
 *   qcow2-snapshots  snapshot table: u16 count, u32 disk size, table;
 *                    round trip through the encoder
 *   qcow2-bitmaps    bitmap directory: u16 count, cluster bits, u32 disk
 *                    sectors, directory; names and tables checked
 *   qcow2-luks       the LUKS header of an encrypted qcow2
 *   vhdx-header      a 4 KiB header; round trip
 *   vhdx-regions     the 64 KiB region table; round trip
 *   vhdx-metadata    u32 region length, the 64 KiB metadata table and
 *                    the items after it (offsets from the table's start)
 *   vmdk-descriptor  a text descriptor (lib/formats/vmdk/descriptor.c):
 *                    probe, createType, every extent line, CIDs, parent
 *   vmdk-sparse      the sparse extent header; round trip
 *
 * The vpc, vdi and qed header decoders are private to their drivers and
 * reached through the per-format targets (fuzz_vpc etc.), whose inputs
 * are the header bytes at their offsets.
 *
 * A decoder must accept or refuse with a message (refusing without one
 * is a finding), and what it accepts must survive its encoder.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/luks1.h"
#include "formats/qcow2/qcow2.h"
#include "formats/vhdx/vhdx.h"
#include "formats/vmdk/vmdk.h"
#include "fuzz_common.h"
#include "qimg/qimg.h"
#include "util/endian.h"

#define FUZZ_CODEC_NAME "fuzz-input"

/* A copy of [p, p + n) at least min bytes long, zero-padded, +1 NUL. */
static uint8_t *padded_copy(const uint8_t *p, size_t n, size_t min)
{
    size_t len = n > min ? n : min;
    uint8_t *b = calloc(1, len + 1);
    if (!b) {
        fuzz_finding("out of memory in the fuzz target", NULL);
    }
    if (n) {
        memcpy(b, p, n);
    }
    return b;
}

static void same(bool ok, const char *what)
{
    if (!ok) {
        fuzz_finding("a decoded structure changed through its encoder",
                     what);
    }
}

static bool str_same(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* ---- qcow2 --------------------------------------------------------------- */

static void codec_qcow2_header(const uint8_t *p, size_t n, unsigned variant)
{
    unsigned flags = variant & (QCOW2_DECODE_RDWR | QCOW2_DECODE_CHECK |
                                QCOW2_DECODE_NO_IO);
    struct qcow2_header h;
    memset(&h, 0, sizeof(h));
    (void)qcow2_header_bytes_needed(p, n);
    int ret = qcow2_header_decode(p, n, flags, &h);
    if (ret == 0) {
        ret = qcow2_header_decode_finish(p, n, flags, &h);
    }
    if (ret < 0) {
        fuzz_expect_error_set("qcow2_header_decode");
        qcow2_header_free(&h);
        return;
    }
    size_t cs = (size_t)h.cluster_size;
    uint8_t *buf = malloc(cs);
    if (!buf) {
        fuzz_finding("out of memory in the fuzz target", NULL);
    }
    int64_t used = qcow2_header_encode(&h, buf, cs);
    if (used < 0) {
        fuzz_expect_error_set("qcow2_header_encode");
    } else {
        struct qcow2_header h2;
        memset(&h2, 0, sizeof(h2));
        ret = qcow2_header_decode(buf, cs, flags, &h2);
        if (ret == 0) {
            ret = qcow2_header_decode_finish(buf, cs, flags, &h2);
        }
        if (ret < 0) {
            fprintf(stderr, "fuzz_codecs: re-decode: %s\n",
                    qimg_get_error());
        }
        same(ret == 0, "qcow2 header: the encoded header does not decode");
        same(h2.version == h.version && h2.cluster_bits == h.cluster_bits &&
                 h2.size == h.size && h2.crypt_method == h.crypt_method &&
                 h2.l1_size == h.l1_size &&
                 h2.l1_table_offset == h.l1_table_offset &&
                 h2.refcount_table_offset == h.refcount_table_offset &&
                 h2.refcount_table_clusters == h.refcount_table_clusters &&
                 h2.nb_snapshots == h.nb_snapshots &&
                 h2.snapshots_offset == h.snapshots_offset &&
                 h2.incompatible_features == h.incompatible_features &&
                 h2.compatible_features == h.compatible_features &&
                 h2.autoclear_features == h.autoclear_features &&
                 h2.refcount_order == h.refcount_order &&
                 h2.compression_type == h.compression_type &&
                 h2.nb_bitmaps == h.nb_bitmaps &&
                 h2.bitmap_directory_offset == h.bitmap_directory_offset &&
                 h2.has_crypto_ext == h.has_crypto_ext &&
                 h2.crypto_offset == h.crypto_offset &&
                 h2.nb_unknown_exts == h.nb_unknown_exts &&
                 str_same(h2.backing_format, h.backing_format) &&
                 /*
                  * As QEMU's header rewrite: the data file name is kept
                  * only while the external data file bit is set.
                  */
                 str_same(h2.data_file,
                          (h.incompatible_features & QCOW2_INCOMPAT_DATA_FILE)
                              ? h.data_file
                              : NULL) &&
                 str_same(h2.backing_file, h.backing_file),
             "qcow2 header");
        qcow2_header_free(&h2);
    }
    free(buf);
    qcow2_header_free(&h);
}

static void codec_qcow2_snapshots(const uint8_t *p, size_t n)
{
    if (n < 6) {
        return;
    }
    uint32_t nb = load_le16(p);
    uint64_t disk_size = (uint64_t)load_le32(p + 2) * 512;
    p += 6;
    n -= 6;
    struct qcow2_snapshot_table t;
    memset(&t, 0, sizeof(t));
    size_t needed = 0;
    /* The table's own offset only matters for QEMU's EIO rule. */
    int ret = qcow2_snapshots_decode(p, n, 65536, nb, disk_size, &t,
                                     &needed);
    if (ret == -ENOBUFS) {
        if (needed <= n) {
            fuzz_finding("snapshot table: ENOBUFS with the bytes at hand",
                         NULL);
        }
        return;
    }
    if (ret < 0) {
        fuzz_expect_error_set("qcow2_snapshots_decode");
        return;
    }
    int64_t size = qcow2_snapshots_encoded_size(&t);
    if (size < 0) {
        fuzz_expect_error_set("qcow2_snapshots_encoded_size");
        qcow2_snapshots_free(&t);
        return;
    }
    uint8_t *buf = malloc(size ? (size_t)size : 1);
    if (!buf) {
        fuzz_finding("out of memory in the fuzz target", NULL);
    }
    int64_t used = qcow2_snapshots_encode(&t, buf, (size_t)size);
    same(used == size, "snapshot table: encoded size");
    struct qcow2_snapshot_table t2;
    memset(&t2, 0, sizeof(t2));
    ret = qcow2_snapshots_decode(buf, (size_t)size, 65536, nb, disk_size,
                                 &t2, &needed);
    same(ret == 0 && t2.nb == t.nb, "snapshot table: re-decode");
    for (uint32_t i = 0; i < t.nb; i++) {
        const struct qcow2_snapshot *a = &t.sn[i], *b = &t2.sn[i];
        same(str_same(a->id, b->id) && str_same(a->name, b->name) &&
                 a->l1_table_offset == b->l1_table_offset &&
                 a->l1_size == b->l1_size && a->date_sec == b->date_sec &&
                 a->vm_state_size == b->vm_state_size &&
                 a->disk_size == b->disk_size,
             "snapshot table: an entry");
    }
    qcow2_snapshots_free(&t2);
    free(buf);
    qcow2_snapshots_free(&t);
}

static void codec_qcow2_bitmaps(const uint8_t *p, size_t n)
{
    if (n < 7) {
        return;
    }
    uint32_t nb = load_le16(p);
    uint64_t cs = 1ull << (QCOW2_MIN_CLUSTER_BITS + p[2] % 13);
    uint64_t disk_size = (uint64_t)load_le32(p + 3) * 512;
    p += 7;
    n -= 7;
    if (qcow2_bitmap_dir_check_size(n) < 0) {
        fuzz_expect_error_set("qcow2_bitmap_dir_check_size");
        return;
    }
    struct qcow2_bitmap_list list;
    memset(&list, 0, sizeof(list));
    if (qcow2_bitmaps_decode(p, n, nb, cs, disk_size, &list) < 0) {
        fuzz_expect_error_set("qcow2_bitmaps_decode");
        qcow2_bitmaps_free(&list);
        return;
    }
    for (uint32_t i = 0; i < list.nb; i++) {
        int ret = qcow2_bitmap_check_name(&list, i);
        if (ret < 0) {
            fuzz_expect_error_set("qcow2_bitmap_check_name");
            break;
        }
        const struct qcow2_bitmap *bm = &list.bm[i];
        /* The directory's own bytes stand in for the table. */
        if (ret == 1 && (uint64_t)bm->table_size * 8 <= n &&
            qcow2_bitmap_check_table(bm, p, cs, disk_size) < 0) {
            fuzz_expect_error_set("qcow2_bitmap_check_table");
        }
        (void)qcow2_bitmap_table_entries(disk_size, bm->granularity_bits,
                                         cs);
    }
    qcow2_bitmaps_free(&list);
}

static void codec_qcow2_luks(const uint8_t *p, size_t n)
{
    struct luks1_header info;
    memset(&info, 0, sizeof(info));
    if (luks1_decode(p, n, &info) < 0) {
        fuzz_expect_error_set("luks1_decode");
    }
}

/* ---- vhdx ---------------------------------------------------------------- */

static bool vhdx_header_same(const struct vhdx_header *a,
                             const struct vhdx_header *b)
{
    return a->sequence == b->sequence &&
           vhdx_guid_equal(&a->file_write_guid, &b->file_write_guid) &&
           vhdx_guid_equal(&a->data_write_guid, &b->data_write_guid) &&
           vhdx_guid_equal(&a->log_guid, &b->log_guid) &&
           a->log_version == b->log_version && a->version == b->version &&
           a->log_length == b->log_length && a->log_offset == b->log_offset;
}

static void codec_vhdx_header(const uint8_t *p, size_t n, unsigned variant)
{
    uint8_t *b = padded_copy(p, n, VHDX_HEADER_SIZE);
    if (variant & 1) {
        store_le32(b + 4, vhdx_checksum(b, VHDX_HEADER_SIZE, 4));
    }
    struct vhdx_header h, h2;
    if (vhdx_header_decode(b, n > VHDX_HEADER_SIZE ? n : VHDX_HEADER_SIZE,
                           &h)) {
        uint8_t *e = calloc(1, VHDX_HEADER_SIZE);
        if (!e) {
            fuzz_finding("out of memory in the fuzz target", NULL);
        }
        vhdx_header_encode(&h, e);
        same(vhdx_header_decode(e, VHDX_HEADER_SIZE, &h2) &&
                 vhdx_header_same(&h, &h2),
             "vhdx header");
        free(e);
    }
    free(b);
}

static void codec_vhdx_regions(const uint8_t *p, size_t n, unsigned variant)
{
    uint8_t *b = padded_copy(p, n, VHDX_REGION_TABLE_SIZE);
    if (variant & 1) {
        store_le32(b + 4, vhdx_checksum(b, VHDX_REGION_TABLE_SIZE, 4));
    }
    struct vhdx_region_list list = {0};
    vhdx_region_add(&list, 0, VHDX_MiB);
    struct vhdx_regions r, r2;
    if (vhdx_region_table_decode(b, VHDX_REGION_TABLE_SIZE, FUZZ_CODEC_NAME,
                                 &list, &r) < 0) {
        fuzz_expect_error_set("vhdx_region_table_decode");
    } else {
        uint8_t *e = calloc(1, VHDX_REGION_TABLE_SIZE);
        if (!e) {
            fuzz_finding("out of memory in the fuzz target", NULL);
        }
        vhdx_region_table_encode(&r, e);
        struct vhdx_region_list list2 = {0};
        vhdx_region_add(&list2, 0, VHDX_MiB);
        same(vhdx_region_table_decode(e, VHDX_REGION_TABLE_SIZE,
                                      FUZZ_CODEC_NAME, &list2, &r2) == 0 &&
                 r.bat_offset == r2.bat_offset &&
                 r.bat_length == r2.bat_length &&
                 r.meta_offset == r2.meta_offset &&
                 r.meta_length == r2.meta_length,
             "vhdx region table");
        free(e);
    }
    free(b);
}

struct meta_src {
    const uint8_t *p;
    size_t n;
};

/* Items are read from the input, as from the file: zeros past its end. */
static int meta_read(void *opaque, void *buf, size_t len, uint64_t off)
{
    const struct meta_src *m = opaque;
    memset(buf, 0, len);
    if (off < m->n) {
        size_t k = m->n - (size_t)off < len ? m->n - (size_t)off : len;
        memcpy(buf, m->p + off, k);
    }
    return 0;
}

static void codec_vhdx_metadata(const uint8_t *p, size_t n)
{
    if (n < 4) {
        return;
    }
    uint32_t meta_length = load_le32(p);
    p += 4;
    n -= 4;
    uint8_t *table = padded_copy(p, n < VHDX_METADATA_TABLE_SIZE
                                        ? n
                                        : VHDX_METADATA_TABLE_SIZE,
                                 VHDX_METADATA_TABLE_SIZE);
    struct meta_src src = {p, n};
    struct vhdx_metadata m;
    if (vhdx_metadata_decode(table, VHDX_METADATA_TABLE_SIZE, meta_length,
                             FUZZ_CODEC_NAME, meta_read, &src, &m) < 0) {
        fuzz_expect_error_set("vhdx_metadata_decode");
    } else {
        struct vhdx_geometry g;
        if (vhdx_geometry(&m, &g) < 0) {
            fuzz_expect_error_set("vhdx_geometry");
        }
    }
    free(table);
}

/* ---- vmdk ---------------------------------------------------------------- */

static void codec_vmdk_descriptor(const uint8_t *p, size_t n)
{
    (void)vmdk_desc_probe(p, n);
    /* The driver parses a NUL-terminated copy (an embedded NUL ends it). */
    char *text = (char *)padded_copy(p, n, 0);
    char *s = NULL;
    int ret = vmdk_desc_get_quoted(text, "createType", VMDK_MAX_CREATE_TYPE,
                                   &s);
    if (ret == 0 && (!s || strlen(s) > VMDK_MAX_CREATE_TYPE)) {
        fuzz_finding("vmdk createType longer than its limit", NULL);
    }
    free(s);
    const char *pos = text;
    for (int lines = 0; *pos; lines++) {
        const char *before = pos;
        struct vmdk_desc_extent e;
        ret = vmdk_desc_next_extent(&pos, &e);
        if (ret < 0) {
            fuzz_expect_error_set("vmdk_desc_next_extent");
        }
        if (pos <= before || pos > text + n) {
            fuzz_finding("vmdk_desc_next_extent did not move forward",
                         NULL);
        }
        if (ret > 0 && (memchr(e.access, 0, sizeof(e.access)) == NULL ||
                        memchr(e.type, 0, sizeof(e.type)) == NULL ||
                        memchr(e.name, 0, sizeof(e.name)) == NULL)) {
            fuzz_finding("vmdk extent field not terminated", NULL);
        }
    }
    char *hint = NULL;
    ret = vmdk_desc_get_parent_hint(text, &hint);
    if (ret == 1 && !hint) {
        fuzz_finding("vmdk parent hint found but not returned", NULL);
    }
    free(hint);
    uint32_t cid;
    (void)vmdk_desc_get_cid(text, false, &cid);
    (void)vmdk_desc_get_cid(text, true, &cid);
    free(text);
}

static void codec_vmdk_sparse(const uint8_t *p, size_t n)
{
    uint8_t *b = padded_copy(p, n, VMDK4_HEADER_SIZE);
    struct vmdk4_header h, h2;
    uint8_t e1[VMDK4_HEADER_SIZE], e2[VMDK4_HEADER_SIZE];
    vmdk4_header_decode(b, &h);
    vmdk4_header_encode(&h, e1);
    vmdk4_header_decode(e1, &h2);
    vmdk4_header_encode(&h2, e2);
    same(memcmp(e1, e2, sizeof(e1)) == 0, "vmdk sparse header");
    free(b);
}

/* ---- Dispatch ------------------------------------------------------------ */

enum {
    CODEC_QCOW2_HEADER,
    CODEC_QCOW2_SNAPSHOTS,
    CODEC_QCOW2_BITMAPS,
    CODEC_QCOW2_LUKS,
    CODEC_VHDX_HEADER,
    CODEC_VHDX_REGIONS,
    CODEC_VHDX_METADATA,
    CODEC_VMDK_DESCRIPTOR,
    CODEC_VMDK_SPARSE,
    NCODECS
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) {
        return 0;
    }
    unsigned codec = data[0] % NCODECS, variant = data[0] / NCODECS;
    const uint8_t *p = data + 1;
    size_t n = size - 1;
    switch (codec) {
    case CODEC_QCOW2_HEADER:
        codec_qcow2_header(p, n, variant);
        break;
    case CODEC_QCOW2_SNAPSHOTS:
        codec_qcow2_snapshots(p, n);
        break;
    case CODEC_QCOW2_BITMAPS:
        codec_qcow2_bitmaps(p, n);
        break;
    case CODEC_QCOW2_LUKS:
        codec_qcow2_luks(p, n);
        break;
    case CODEC_VHDX_HEADER:
        codec_vhdx_header(p, n, variant);
        break;
    case CODEC_VHDX_REGIONS:
        codec_vhdx_regions(p, n, variant);
        break;
    case CODEC_VHDX_METADATA:
        codec_vhdx_metadata(p, n);
        break;
    case CODEC_VMDK_DESCRIPTOR:
        codec_vmdk_descriptor(p, n);
        break;
    default:
        codec_vmdk_sparse(p, n);
        break;
    }
    return 0;
}
