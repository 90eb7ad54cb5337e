/*
 * qcow2: encryption at open [spec: Header, crypt_method; Full disk
 * encryption header pointer].
 *
 * crypt_method 2 (LUKS) keeps a LUKS1 header and its key material in the
 * clusters the crypto extension names; data sectors are numbered by
 * their host offset.  crypt_method 1 (legacy AES) has no header: the
 * password, zero-padded or cut to 16 bytes, is an AES-128-CBC key, and
 * sectors are numbered by their guest offset (plain64 IVs).
 *
 * The encrypt.* runtime options are QEMU's (crypto/encrypt_opts.c).
 * Opening for I/O needs the key; metadata-only opens (info) do not.
 */
#include <errno.h>
#include <string.h>

#include "core/error.h"
#include "core/secret.h"
#include "crypto/cipher.h"
#include "crypto/encrypt_opts.h"
#include "crypto/luks1.h"
#include "driver.h"
#include "formats/qcow2/qcow2.h"

static const char *method_name(uint32_t crypt_method)
{
    return crypt_method == QCOW2_CRYPT_AES    ? "aes"
           : crypt_method == QCOW2_CRYPT_LUKS ? "luks"
                                              : NULL;
}

struct luks_read_ctx {
    struct qimg_io *file;
    uint64_t offset;
    uint64_t length;
};

/*
 * [QEMU] reads of the LUKS area may not leave the region the extension
 * names.
 */
static int luks_read(void *opaque, uint8_t *buf, size_t len, uint64_t off)
{
    const struct luks_read_ctx *r = opaque;
    if (off > r->length || len > r->length - off) {
        return error_set(EINVAL,
                         "Request for data outside of extension header");
    }
    uint64_t at = r->offset + off;
    int ret = qcow2_read_in_range(at, len) ? io_pread(r->file, buf, len, at)
                                           : -EIO;
    if (ret < 0) {
        return error_set_errno(-ret, "Could not read encryption header");
    }
    return 0;
}

static int open_luks(struct qimg_node *node, struct qcow2_state *s,
                     unsigned flags, const char *key_secret)
{
    char *password = NULL;
    size_t password_len = 0;
    /* [QEMU] wants the key before it reads the header. */
    if (!(flags & QIMG_OPEN_NO_IO)) {
        int ret = crypto_password(key_secret, "encrypt.key-secret",
                                  &password, &password_len);
        if (ret < 0) {
            return ret;
        }
    }
    struct luks_read_ctx r = {
        .file = node->file,
        .offset = s->hdr.crypto_offset,
        .length = s->hdr.crypto_length,
    };
    uint8_t buf[LUKS1_HEADER_SIZE];
    int ret = luks_read(&r, buf, sizeof(buf), 0);
    if (ret == 0) {
        ret = luks1_decode(buf, sizeof(buf), &s->luks);
    }
    if (ret == 0) {
        s->has_luks = true;
        if (password) {
            ret = luks1_unlock(&s->luks, (const uint8_t *)password,
                               password_len, luks_read, &r, &s->cipher);
        }
    }
    secret_free(password, password_len);
    s->cipher_host_sectors = true;
    return ret;
}

int qcow2_crypto_open(struct qimg_node *node, struct qcow2_state *s,
                      unsigned flags)
{
    const char *key_secret;
    int ret = crypto_take_encrypt_opts(
        node, method_name(s->hdr.crypt_method), &key_secret);
    if (ret < 0) {
        return ret;
    }
    if (s->hdr.crypt_method == QCOW2_CRYPT_LUKS && s->hdr.has_crypto_ext) {
        return open_luks(node, s, flags, key_secret);
    }
    if (s->hdr.crypt_method == QCOW2_CRYPT_AES &&
        !(flags & QIMG_OPEN_NO_IO)) {
        s->cipher_host_sectors = false;
        return crypto_qcow_aes_open(key_secret, &s->cipher);
    }
    return 0;
}

void qcow2_crypto_close(struct qcow2_state *s)
{
    sector_cipher_free(s->cipher);
    s->cipher = NULL;
}
