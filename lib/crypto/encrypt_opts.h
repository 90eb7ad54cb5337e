/*
 * The encryption runtime options of qcow and qcow2 (encrypt.format,
 * encrypt.key-secret) and the keys they lead to (crypto/encrypt_opts.c).
 */
#ifndef QIMG_CRYPTO_ENCRYPT_OPTS_H
#define QIMG_CRYPTO_ENCRYPT_OPTS_H

#include <stddef.h>

struct qimg_node;
struct sector_cipher;

/*
 * Take every encrypt.* runtime option of node.  method is the image's
 * encryption ("aes", "luks") or NULL for none.  [QEMU] encrypt.format
 * must name method; in an encrypted image any key but format and
 * key-secret is unexpected; an unencrypted one ignores them.
 * *key_secret is the secret's id or NULL.
 */
int crypto_take_encrypt_opts(struct qimg_node *node, const char *method,
                             const char **key_secret);

/*
 * The password of secret key_secret, NUL-terminated (free with
 * secret_free(*password, *len)); option names the runtime option for
 * QEMU's "Parameter 'OPTION' is required for cipher" when key_secret is
 * NULL.
 */
int crypto_password(const char *key_secret, const char *option,
                    char **password, size_t *len);

/*
 * qcow's and qcow2's legacy AES: the password, zero-padded or cut to 16
 * bytes, keys AES-128-CBC with plain64 IVs of guest sectors.
 */
int crypto_qcow_aes_open(const char *key_secret, struct sector_cipher **out);

#endif
