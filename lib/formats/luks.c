/*
 * luks: a LUKS1 container as a disk (QEMU's "luks" format): create,
 * read, write.
 *
 * The file starts with the LUKS1 header and key material
 * (crypto/luks1.c); the encrypted payload starts at the header's payload
 * offset and runs to the end of the file.  Guest sector n is payload
 * sector n, and its IV is n.  The guest size is the payload's, rounded
 * up to whole sectors as QEMU's block layer does.
 *
 * [QEMU] opening for I/O needs the password (runtime option key-secret);
 * info opens without it.  Writes encrypt whole sectors; a partial sector
 * is read, decrypted, merged and encrypted again.  A new container does
 * not read as zeros (zero bytes in the file decrypt to noise), so zero
 * writes write encrypted zeros, as QEMU's do.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/secret.h"
#include "crypto/cipher.h"
#include "crypto/kdf.h"
#include "crypto/luks1.h"
#include "driver.h"
#include "util/checked.h"

#define LUKS_SECTOR 512u
/* Guest bytes encrypted per write call: bounds the bounce buffer. */
#define LUKS_WRITE_CHUNK (1u << 20)

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

static int luks_file_write(struct qimg_node *node, const uint8_t *buf,
                           size_t len, uint64_t off)
{
    int ret = io_pwrite(node->file, buf, len, off);
    if (ret < 0) {
        return error_set_errno(-ret, "%s: could not write encrypted data",
                               node->filename);
    }
    return 0;
}

/* One partial sector: read, decrypt, merge n bytes at head, encrypt. */
static int luks_write_partial(struct qimg_node *node,
                              const struct luks_state *s, const uint8_t *src,
                              size_t n, uint64_t off)
{
    _Alignas(16) uint8_t sector[LUKS_SECTOR];
    uint64_t start = off - off % LUKS_SECTOR;
    int ret = sector_cipher_pread(s->cipher, luks_file_read, node->file,
                                  sector, sizeof(sector),
                                  s->hdr.payload_offset + start, start);
    if (ret == 0) {
        memcpy(sector + off % LUKS_SECTOR, src, n);
        ret = sector_cipher_encrypt(s->cipher, start / LUKS_SECTOR, sector,
                                    sizeof(sector));
    }
    if (ret == 0) {
        ret = luks_file_write(node, sector, sizeof(sector),
                              s->hdr.payload_offset + start);
    }
    kdf_wipe(sector, sizeof(sector));
    return ret;
}

/* src NULL: zeros. */
static int luks_write(struct qimg_node *node, const uint8_t *src, size_t len,
                      uint64_t off)
{
    const struct luks_state *s = node->opaque;
    if (!s->cipher) {
        return error_set(EINVAL, "%s: image opened for metadata only",
                         node->filename);
    }
    static const uint8_t zeros[LUKS_SECTOR];
    uint8_t *bounce = NULL;
    int ret = 0;
    /* Invariant: src[0, len) is still to be written at guest offset off. */
    while (ret == 0 && len > 0) {
        size_t head = (size_t)(off % LUKS_SECTOR);
        size_t n;
        if (head != 0 || len < LUKS_SECTOR) {
            n = LUKS_SECTOR - head < len ? LUKS_SECTOR - head : len;
            ret = luks_write_partial(node, s, src ? src : zeros, n, off);
        } else {
            n = len - len % LUKS_SECTOR;
            if (n > LUKS_WRITE_CHUNK) {
                n = LUKS_WRITE_CHUNK;
            }
            if (!bounce) {
                bounce = malloc(LUKS_WRITE_CHUNK);
                if (!bounce) {
                    ret = error_set(ENOMEM, "Out of memory");
                    break;
                }
            }
            if (src) {
                memcpy(bounce, src, n);
            } else {
                memset(bounce, 0, n);
            }
            ret = sector_cipher_encrypt(s->cipher, off / LUKS_SECTOR, bounce,
                                        n);
            if (ret == 0) {
                ret = luks_file_write(node, bounce, n,
                                      s->hdr.payload_offset + off);
            }
        }
        if (src) {
            src += n;
        }
        off += n;
        len -= n;
    }
    free(bounce);
    return ret;
}

static int luks_pwrite(struct qimg_node *node, const void *buf, size_t len,
                       uint64_t off)
{
    return luks_write(node, buf, len, off);
}

static int luks_pwrite_zeroes(struct qimg_node *node, uint64_t off,
                              uint64_t len, unsigned flags)
{
    (void)flags;
    while (len > 0) {
        size_t n = len > LUKS_WRITE_CHUNK ? LUKS_WRITE_CHUNK : (size_t)len;
        int ret = luks_write(node, NULL, n, off);
        if (ret < 0) {
            return ret;
        }
        off += n;
        len -= n;
    }
    return 0;
}

/* Zero bytes in the file decrypt to noise. */
static bool luks_has_zero_init(struct qimg_node *node)
{
    (void)node;
    return false;
}

static int luks_flush(struct qimg_node *node)
{
    return node_sync(node, node->file);
}

/* ---- create -------------------------------------------------------------- */

static const struct qimg_opt_desc luks_create_opts[] = {
    {"size", QIMG_OPT_SIZE, "Virtual disk size", NULL},
    {"key-secret", QIMG_OPT_STRING,
     "ID of the secret that provides the keyslot passphrase", NULL},
    {"cipher-alg", QIMG_OPT_STRING, "Name of encryption cipher algorithm",
     NULL},
    {"cipher-mode", QIMG_OPT_STRING, "Name of encryption cipher mode", NULL},
    {"ivgen-alg", QIMG_OPT_STRING, "Name of IV generator algorithm", NULL},
    {"ivgen-hash-alg", QIMG_OPT_STRING, "Name of IV generator hash algorithm",
     NULL},
    {"hash-alg", QIMG_OPT_STRING, "Name of encryption hash algorithm", NULL},
    {"iter-time", QIMG_OPT_NUMBER, "Time to spend in PBKDF in milliseconds",
     NULL},
    {"preallocation", QIMG_OPT_STRING,
     "Preallocation mode (allowed values: off, falloc, full)", NULL},
    {NULL, 0, NULL, NULL},
};

static int luks_create_check(const struct qimg_opts *opts,
                             struct luks1_create_opts *o, uint64_t *size)
{
    int ret = luks1_create_opts_parse(opts, "", o);
    const char *text;
    text = qimg_opts_get(opts, "size");
    *size = 0;
    if (ret == 0 && text && qimg_parse_size(text, 'B', size) < 0) {
        ret = error_set(EINVAL, "Parameter 'size' expects a non-negative "
                        "number below 2^64");
    }
    /* [QEMU] takes metadata too, and then preallocates nothing. */
    const char *pa = qimg_opts_get(opts, "preallocation");
    if (ret == 0 && pa && strcmp(pa, "off") && strcmp(pa, "metadata") &&
        strcmp(pa, "falloc") && strcmp(pa, "full")) {
        ret = error_set(EINVAL, "invalid parameter value: %s", pa);
    }
    return ret;
}

static int luks_create(const char *filename, const struct qimg_opts *opts)
{
    struct luks1_create_opts o;
    uint64_t size;
    int ret = luks_create_check(opts, &o, &size);
    const char *key_secret = qimg_opts_get(opts, "key-secret");
    char *password = NULL;
    size_t password_len = 0;
    if (ret == 0) {
        ret = key_secret ? secret_lookup_utf8(key_secret, &password,
                                              &password_len)
                         : error_set(EINVAL, "Parameter 'key-secret' is "
                                     "required for cipher");
    }
    uint8_t *area = NULL;
    size_t area_len = 0;
    struct sector_cipher *cipher = NULL;
    if (ret == 0) {
        ret = luks1_create(&o, (const uint8_t *)password, password_len,
                           &area, &area_len, &cipher);
    }
    secret_free(password, password_len);
    sector_cipher_free(cipher);
    uint64_t total = 0;
    if (ret == 0 && add_overflow_u64(size, area_len, &total)) {
        ret = error_set(EFBIG, "Image size too large");
    }
    /* The file protocol sizes (and preallocates) the whole file. */
    struct qimg_opts *file_opts = ret == 0 ? qimg_opts_new() : NULL;
    char total_text[32];
    snprintf(total_text, sizeof(total_text), "%llu",
             (unsigned long long)total);
    const char *keep[] = {"preallocation", "nocow", "extent_size_hint"};
    if (ret == 0 && (!file_opts ||
                     qimg_opts_set(file_opts, "size", total_text) < 0)) {
        ret = error_set(ENOMEM, "Out of memory");
    }
    const char *pa = qimg_opts_get(opts, "preallocation");
    if (pa && strcmp(pa, "metadata") == 0) {
        keep[0] = NULL;
    }
    for (size_t i = 0; ret == 0 && i < sizeof(keep) / sizeof(keep[0]); i++) {
        const char *v = keep[i] ? qimg_opts_get(opts, keep[i]) : NULL;
        if (v && qimg_opts_set(file_opts, keep[i], v) < 0) {
            ret = error_set(ENOMEM, "Out of memory");
        }
    }
    struct qimg_io *io = NULL;
    if (ret == 0) {
        ret = create_file(filename, file_opts, &io);
    }
    qimg_opts_free(file_opts);
    /*
     * [QEMU] writes the header and slot 0's key material only: the other
     * slots stay holes.
     */
    struct luks1_header hdr;
    if (ret == 0) {
        ret = luks1_decode(area, area_len, &hdr);
    }
    if (ret == 0) {
        const struct luks1_slot *sl = &hdr.slots[0];
        size_t material = (size_t)hdr.key_bytes * sl->stripes;
        ret = io_pwrite(io, area, LUKS1_HEADER_SIZE, 0);
        if (ret == 0) {
            ret = io_pwrite(io, area + sl->key_offset, material,
                            sl->key_offset);
        }
        if (ret == 0) {
            ret = io_flush(io);
        }
        if (ret < 0) {
            ret = error_set_errno(-ret, "Could not write encryption header");
        }
    }
    io_close(io);
    if (area) {
        kdf_wipe(area, area_len);
        free(area);
    }
    return ret;
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
    .pwrite = luks_pwrite,
    .pwrite_zeroes = luks_pwrite_zeroes,
    .flush = luks_flush,
    .block_status = luks_block_status,
    .get_info = luks_get_info,
    .create_opts = luks_create_opts,
    .create = luks_create,
    .has_zero_init = luks_has_zero_init,
};
