/*
 * luks: a LUKS1 container as a disk (QEMU's "luks" format), read only.
 *
 * The file starts with the LUKS1 header and key material
 * (crypto/luks1.c); the encrypted payload starts at the header's payload
 * offset and runs to the end of the file.  Guest sector n is payload
 * sector n, and its IV is n.  The guest size is the payload's, rounded
 * up to whole sectors as QEMU's block layer does.
 *
 * [QEMU] opening for I/O needs the password (runtime option key-secret);
 * info opens without it.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/secret.h"
#include "crypto/cipher.h"
#include "crypto/luks1.h"
#include "driver.h"
#include "util/checked.h"

#define LUKS_SECTOR 512u

struct luks_state {
    struct luks1_header hdr;
    struct sector_cipher *cipher; /* NULL for metadata-only opens */
};

static const uint8_t luks_magic[6] = {'L', 'U', 'K', 'S', 0xba, 0xbe};

/* [QEMU] the magic and version 1, in the first 8 bytes. */
static int luks_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    return len >= 8 && memcmp(buf, luks_magic, sizeof(luks_magic)) == 0 &&
                   buf[6] == 0 && buf[7] == 1
               ? 100
               : 0;
}

/* Key material reads: offsets from the start of the file. */
static int luks_file_read(void *opaque, uint8_t *buf, size_t len,
                          uint64_t off)
{
    struct qimg_io *file = opaque;
    int ret = io_pread(file, buf, len, off);
    if (ret < 0) {
        return error_set_errno(-ret, "Could not read encryption header");
    }
    return 0;
}

static void luks_close(struct qimg_node *node)
{
    struct luks_state *s = node->opaque;
    if (s) {
        sector_cipher_free(s->cipher);
        free(s);
    }
    node->opaque = NULL;
}

static int luks_open(struct qimg_node *node, unsigned flags)
{
    struct luks_state *s = calloc(1, sizeof(*s));
    if (!s) {
        return error_set(ENOMEM, "Out of memory");
    }
    node->opaque = s;
    const char *key_secret = node_opt_take(node, "key-secret");
    char *password = NULL;
    size_t password_len = 0;
    int ret = 0;
    /* [QEMU] wants the key before it reads the header. */
    if (!(flags & QIMG_OPEN_NO_IO)) {
        ret = key_secret ? secret_lookup_utf8(key_secret, &password,
                                              &password_len)
                         : error_set(EINVAL, "Parameter 'key-secret' is "
                                     "required for cipher");
    }
    uint8_t buf[LUKS1_HEADER_SIZE];
    if (ret == 0) {
        ret = luks_file_read(node->file, buf, sizeof(buf), 0);
    }
    if (ret == 0) {
        ret = luks1_decode(buf, sizeof(buf), &s->hdr);
    }
    if (ret == 0 && password) {
        ret = luks1_unlock(&s->hdr, (const uint8_t *)password, password_len,
                           luks_file_read, node->file, &s->cipher);
    }
    secret_free(password, password_len);
    int64_t fsize = ret == 0 ? io_get_size(node->file) : 0;
    if (fsize < 0) {
        ret = error_set_errno((int)-fsize, "Could not get the file size");
    }
    if (ret == 0 && (uint64_t)fsize < s->hdr.payload_offset) {
        ret = error_set_errno(EIO, "Could not refresh total sector count");
    }
    uint64_t size = 0;
    if (ret == 0 && align_up_overflow_u64((uint64_t)fsize -
                                              s->hdr.payload_offset,
                                          LUKS_SECTOR, &size)) {
        ret = error_set_errno(EFBIG, "Could not refresh total sector count");
    }
    if (ret < 0) {
        luks_close(node);
        return ret;
    }
    node->size = size;
    return 0;
}

static int luks_pread(struct qimg_node *node, void *buf, size_t len,
                      uint64_t off)
{
    const struct luks_state *s = node->opaque;
    if (!s->cipher) {
        return error_set(EINVAL, "%s: image opened for metadata only",
                         node->filename);
    }
    uint64_t at;
    if (add_overflow_u64(off, s->hdr.payload_offset, &at)) {
        return error_set(EIO, "%s: read past the end of the payload",
                         node->filename);
    }
    return sector_cipher_pread(s->cipher, luks_file_read, node->file, buf,
                               len, at, off);
}

/*
 * QEMU's luks driver reports no block status, so its generic answer is
 * data over the whole range, with no host offset.
 */
static int luks_block_status(struct qimg_node *node, uint64_t off,
                             uint64_t len, uint64_t *pnum, uint64_t *host_off)
{
    (void)node;
    (void)off;
    (void)host_off;
    *pnum = len;
    return BS_DATA;
}

/* ImageInfoSpecific {type: luks, data: QCryptoBlockInfoLUKS}. */
static int luks_get_info(struct qimg_node *node, struct qimg_image_info *info)
{
    const struct luks_state *s = node->opaque;
    info->encrypted = true;
    struct qimg_value *v = qimg_value_new_dict();
    struct qimg_value *data = luks1_info_value(&s->hdr, false);
    if (!v || !data ||
        qimg_value_dict_set(v, "type", qimg_value_new_string("luks")) < 0) {
        qimg_value_free(v);
        qimg_value_free(data);
        return error_set(ENOMEM, "Out of memory");
    }
    if (qimg_value_dict_set(v, "data", data) < 0) {
        qimg_value_free(v);
        return error_set(ENOMEM, "Out of memory");
    }
    info->format_specific = v;
    return 0;
}

/* [QEMU] the key changes what the image reads as. */
static const char *const luks_strong_opts[] = {"key-secret", NULL};

const struct qimg_format_ops format_luks = {
    .name = "luks",
    .strong_opts = luks_strong_opts,
    .probe = luks_probe,
    .open = luks_open,
    .close = luks_close,
    .pread = luks_pread,
    .block_status = luks_block_status,
    .get_info = luks_get_info,
};
