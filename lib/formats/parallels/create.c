/*
 * parallels create, byte for byte as qemu-img 7.2's: an "Ext" header
 * (16 heads, clusters of cluster_size rounded up to sectors), an empty
 * BAT, and the file cut at the data offset, the BAT's end rounded up to a
 * whole cluster.  The file exists before the options are checked, as
 * QEMU's (a failed create leaves it empty).  preallocation is checked
 * but, as in QEMU, makes no difference: the file holds no data area.
 */
#include <errno.h>
#include <string.h>

#include "core/error.h"
#include "parallels.h"
#include "util/checked.h"
#include "util/endian.h"

#define PRL_DEFAULT_CLUSTER (1u << 20)
#define PRL_HEADS 16u
/* Sectors per cylinder of QEMU's made-up geometry: 16 heads, 32 sectors. */
#define PRL_CYL_SECTORS 512u

const struct qimg_opt_desc prl_create_opts[] = {
    {"size", QIMG_OPT_SIZE, "Virtual disk size", NULL},
    {"cluster_size", QIMG_OPT_SIZE, "Parallels image cluster size",
     "1048576"},
    {NULL, 0, NULL, NULL},
};

static int prl_opt_size(const struct qimg_opts *opts, const char *name,
                        uint64_t def, uint64_t *out)
{
    const char *text = qimg_opts_get(opts, name);
    *out = def;
    if (text && qimg_parse_size(text, 'B', out) < 0) {
        return error_set(EINVAL, "Parameter '%s' expects a non-negative "
                         "number below 2^64", name);
    }
    return 0;
}

static int prl_create_check(const struct qimg_opts *opts, uint64_t *size,
                            uint64_t *cluster)
{
    int ret = prl_opt_size(opts, "size", 0, size);
    if (ret == 0) {
        ret = prl_opt_size(opts, "cluster_size", PRL_DEFAULT_CLUSTER,
                           cluster);
    }
    if (ret < 0) {
        return ret;
    }
    const char *pa = qimg_opts_get(opts, "preallocation");
    if (pa && strcmp(pa, "off") && strcmp(pa, "falloc") &&
        strcmp(pa, "full")) {
        if (!strcmp(pa, "metadata")) {
            return error_set(ENOTSUP, "Unsupported preallocation mode: %s",
                             pa);
        }
        return error_set(EINVAL, "invalid parameter value: %s", pa);
    }
    if (*cluster > UINT64_MAX - (PRL_SECTOR - 1) ||
        div_round_up_u64(*cluster, PRL_SECTOR) * PRL_SECTOR > INT32_MAX) {
        return error_set(EFBIG, "Cluster size is too large");
    }
    *cluster = div_round_up_u64(*cluster, PRL_SECTOR) * PRL_SECTOR;
    /*
     * QEMU's limit: fewer than 2^32 whole clusters of sectors (a BAT one
     * entry longer, whose count then wraps in the header, passes).
     */
    if (*cluster == 0 ||
        div_round_up_u64(*size, PRL_SECTOR) / (*cluster / PRL_SECTOR) >
            UINT32_MAX) {
        return error_set(EINVAL, "Image size is too large for this cluster "
                         "size");
    }
    return 0;
}

int prl_create(const char *filename, const struct qimg_opts *opts)
{
    struct qimg_opts *file_opts = qimg_opts_new();
    const char *nocow = qimg_opts_get(opts, "nocow");
    if (!file_opts || (nocow && qimg_opts_set(file_opts, "nocow", nocow))) {
        qimg_opts_free(file_opts);
        return error_set(ENOMEM, "Out of memory");
    }
    struct qimg_io *io;
    int ret = create_file(filename, file_opts, &io);
    qimg_opts_free(file_opts);
    if (ret < 0) {
        return ret;
    }
    uint64_t size, cluster;
    ret = prl_create_check(opts, &size, &cluster);
    if (ret < 0) {
        io_close(io);
        return ret;
    }
    uint64_t sectors = div_round_up_u64(size, PRL_SECTOR);
    uint32_t tracks = (uint32_t)(cluster / PRL_SECTOR);
    uint64_t entries = div_round_up_u64(sectors, tracks);
    /*
     * QEMU sizes the BAT in 32 bits: a BAT of 4 GiB or more wraps (the
     * header still counts every entry).  Kept for byte-identical files.
     */
    uint32_t bat_bytes = (uint32_t)(PRL_HEADER_SIZE + entries * 4);
    uint64_t data_off = div_round_up_u64(bat_bytes, cluster) * cluster;

    uint8_t h[PRL_HEADER_SIZE] = {0};
    memcpy(h, PRL_MAGIC_EXT, PRL_MAGIC_LEN);
    store_le32(h + PRL_OFF_VERSION, PRL_VERSION);
    store_le32(h + PRL_OFF_HEADS, PRL_HEADS);
    store_le32(h + PRL_OFF_CYLINDERS, (uint32_t)(sectors / PRL_CYL_SECTORS));
    store_le32(h + PRL_OFF_TRACKS, tracks);
    store_le32(h + PRL_OFF_BAT_ENTRIES, (uint32_t)entries);
    store_le64(h + PRL_OFF_NB_SECTORS, sectors);
    store_le32(h + PRL_OFF_DATA_OFF, (uint32_t)(data_off / PRL_SECTOR));

    /* The BAT is all zeros: a hole up to the data offset. */
    ret = io_truncate(io, data_off);
    if (ret == 0) {
        ret = io_pwrite(io, h, sizeof(h), 0);
    }
    if (ret == 0) {
        ret = io_flush(io);
    }
    io_close(io);
    if (ret < 0) {
        return error_prefix(-ret, "Could not write the Parallels image");
    }
    return 0;
}
