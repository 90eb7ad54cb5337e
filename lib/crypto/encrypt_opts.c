/*
 * qcow and qcow2 encryption options and legacy AES keys, as QEMU 7.2
 * takes them (its messages included).
 */
#include <errno.h>
#include <string.h>

#include "core/error.h"
#include "core/secret.h"
#include "crypto/cipher.h"
#include "crypto/encrypt_opts.h"
#include "crypto/kdf.h"
#include "driver.h"

#define ENCRYPT_PREFIX "encrypt."
/* [QEMU] legacy AES keys are the password's first 16 bytes. */
#define AES_KEY_BYTES 16

/* The first encrypt.* option not yet taken, or NULL. */
static const char *next_encrypt_key(const struct qimg_node *node)
{
    size_t n = node->open_opts ? qimg_opts_count(node->open_opts) : 0;
    for (size_t i = 0; i < n; i++) {
        const char *k = qimg_opts_key(node->open_opts, i);
        if (strncmp(k, ENCRYPT_PREFIX, strlen(ENCRYPT_PREFIX)) == 0) {
            return k;
        }
    }
    return NULL;
}

int crypto_take_encrypt_opts(struct qimg_node *node, const char *method,
                             const char **key_secret)
{
    const char *format = node_opt_take(node, ENCRYPT_PREFIX "format");
    *key_secret = node_opt_take(node, ENCRYPT_PREFIX "key-secret");
    if (format && !method) {
        return error_set(EINVAL, "No encryption in image header, but "
                         "options specified format '%s'", format);
    }
    /* QEMU's own name for AES, "qcow", is refused too. */
    if (format && strcmp(format, method) != 0) {
        return error_set(EINVAL, "Header reported '%s' encryption format "
                         "but options specify '%s'", method, format);
    }
    const char *other = next_encrypt_key(node);
    if (other && method) {
        return error_set(EINVAL, "Parameter '%s' is unexpected",
                         other + strlen(ENCRYPT_PREFIX));
    }
    for (; other; other = next_encrypt_key(node)) {
        (void)node_opt_take(node, other);
    }
    return 0;
}

int crypto_password(const char *key_secret, const char *option,
                    char **password, size_t *len)
{
    if (!key_secret) {
        *password = NULL;
        *len = 0;
        return error_set(EINVAL, "Parameter '%s' is required for cipher",
                         option);
    }
    return secret_lookup_utf8(key_secret, password, len);
}

int crypto_qcow_aes_open(const char *key_secret, struct sector_cipher **out)
{
    *out = NULL;
    char *password;
    size_t len;
    int ret = crypto_password(key_secret, ENCRYPT_PREFIX "key-secret",
                              &password, &len);
    if (ret < 0) {
        return ret;
    }
    uint8_t key[AES_KEY_BYTES] = {0};
    memcpy(key, password, len < sizeof(key) ? len : sizeof(key));
    secret_free(password, len);
    ret = sector_cipher_new("aes-128", "cbc", "plain64", NULL, key,
                            sizeof(key), out);
    kdf_wipe(key, sizeof(key));
    return ret;
}
