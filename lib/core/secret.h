/* Secrets by id (core/secret.c); the public half is qimg_secret_add(). */
#ifndef QIMG_CORE_SECRET_H
#define QIMG_CORE_SECRET_H

#include <stddef.h>
#include <stdint.h>

/*
 * A private copy of secret id's bytes in *data (free with secret_free),
 * or -ENOENT with QEMU's "No secret with id 'X'".
 */
int secret_lookup(const char *id, uint8_t **data, size_t *len);
/*
 * Secret id as a password: a NUL-terminated private copy in *password
 * (len bytes before the NUL; free with secret_free(*password, len)).
 * [QEMU] the bytes must be valid UTF-8 without NUL, else "Data from
 * secret ID is not valid UTF-8".
 */
int secret_lookup_utf8(const char *id, char **password, size_t *len);
/* Wipe and free a secret_lookup() copy. */
void secret_free(void *data, size_t len);

#endif
