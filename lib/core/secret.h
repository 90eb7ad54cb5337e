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
/* Wipe and free a secret_lookup() copy. */
void secret_free(uint8_t *data, size_t len);

#endif
