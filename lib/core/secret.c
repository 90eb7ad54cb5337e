/*
 * Secrets (qemu-img's --object secret,id=ID,data=...|file=...): a
 * process-wide table from id to bytes, filled by the caller before opening
 * and read by drivers that need a key (LUKS, legacy qcow AES) through
 * secret_lookup().  Ids are unique, as QEMU's object ids are.
 *
 * Invariant: every stored value is a private copy; lookups hand out
 * another copy so that a convert worker thread never shares the table's
 * memory, and callers wipe and free theirs (secret_free).
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/secret.h"
#include "qimg/qimg.h"

/* More than any command line holds; bounds the table. */
#define SECRETS_MAX 1024
#define SECRET_MAX_LEN (1u << 20)

struct secret {
    char *id;
    uint8_t *data;
    size_t len;
};

static pthread_mutex_t secrets_lock = PTHREAD_MUTEX_INITIALIZER;
static struct secret *secrets;
static size_t secrets_count;

static void wipe(void *p, size_t len)
{
    if (p) {
        explicit_bzero(p, len);
    }
}

int qimg_secret_add(const char *id, const void *data, size_t len)
{
    error_clear();
    int ret = 0;
    if (!id || !*id) {
        ret = error_set(EINVAL, "Parameter 'id' is missing");
    } else if (!data && len) {
        ret = error_set(EINVAL, "Either 'file' or 'data' must be provided");
    } else if (len > SECRET_MAX_LEN) {
        ret = error_set(EFBIG, "secret '%s' is longer than %u bytes", id,
                        SECRET_MAX_LEN);
    }
    if (ret < 0) {
        errno = -ret;
        return -1;
    }
    pthread_mutex_lock(&secrets_lock);
    for (size_t i = 0; i < secrets_count; i++) {
        if (strcmp(secrets[i].id, id) == 0) {
            ret = error_set(EEXIST, "attempt to add duplicate property "
                            "'%s' to object (type 'container')", id);
            goto out;
        }
    }
    if (secrets_count == SECRETS_MAX) {
        ret = error_set(E2BIG, "too many secrets");
        goto out;
    }
    struct secret *grown = realloc(secrets,
                                   (secrets_count + 1) * sizeof(*secrets));
    if (!grown) {
        ret = error_set(ENOMEM, "Out of memory");
        goto out;
    }
    secrets = grown;
    struct secret *s = &secrets[secrets_count];
    s->id = strdup(id);
    s->data = malloc(len ? len : 1);
    if (!s->id || !s->data) {
        free(s->id);
        free(s->data);
        ret = error_set(ENOMEM, "Out of memory");
        goto out;
    }
    if (len) {
        memcpy(s->data, data, len);
    }
    s->len = len;
    secrets_count++;
out:
    pthread_mutex_unlock(&secrets_lock);
    if (ret < 0) {
        errno = -ret;
        return -1;
    }
    return 0;
}

void qimg_secrets_clear(void)
{
    pthread_mutex_lock(&secrets_lock);
    for (size_t i = 0; i < secrets_count; i++) {
        wipe(secrets[i].data, secrets[i].len);
        free(secrets[i].data);
        free(secrets[i].id);
    }
    free(secrets);
    secrets = NULL;
    secrets_count = 0;
    pthread_mutex_unlock(&secrets_lock);
}

int secret_lookup(const char *id, uint8_t **data, size_t *len)
{
    *data = NULL;
    *len = 0;
    int ret = -ENOENT;
    pthread_mutex_lock(&secrets_lock);
    for (size_t i = 0; i < secrets_count; i++) {
        if (strcmp(secrets[i].id, id) == 0) {
            uint8_t *copy = malloc(secrets[i].len ? secrets[i].len : 1);
            if (!copy) {
                ret = error_set(ENOMEM, "Out of memory");
                break;
            }
            memcpy(copy, secrets[i].data, secrets[i].len);
            *data = copy;
            *len = secrets[i].len;
            ret = 0;
            break;
        }
    }
    pthread_mutex_unlock(&secrets_lock);
    if (ret == -ENOENT) {
        error_set(ENOENT, "No secret with id '%s'", id);
    }
    return ret;
}

/* Strict UTF-8 (no overlong forms, surrogates or NUL), as GLib checks. */
static bool valid_utf8(const uint8_t *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        uint8_t c = s[i];
        size_t n;
        uint32_t cp;
        if (c == 0) {
            return false;
        } else if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            n = 1;
            cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            n = 2;
            cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            n = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (len - i <= n) {
            return false;
        }
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xc0) != 0x80) {
                return false;
            }
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        static const uint32_t min_cp[4] = {0, 0x80, 0x800, 0x10000};
        if (cp < min_cp[n] || cp > 0x10ffff ||
            (cp >= 0xd800 && cp <= 0xdfff)) {
            return false;
        }
        i += n + 1;
    }
    return true;
}

int secret_lookup_utf8(const char *id, char **password, size_t *len)
{
    *password = NULL;
    *len = 0;
    uint8_t *data;
    size_t n;
    int ret = secret_lookup(id, &data, &n);
    if (ret < 0) {
        return ret;
    }
    if (!valid_utf8(data, n)) {
        secret_free(data, n);
        return error_set(EINVAL, "Data from secret %s is not valid UTF-8",
                         id);
    }
    char *s = malloc(n + 1);
    if (!s) {
        secret_free(data, n);
        return error_set(ENOMEM, "Out of memory");
    }
    memcpy(s, data, n);
    s[n] = '\0';
    secret_free(data, n);
    *password = s;
    *len = n;
    return 0;
}

void secret_free(void *data, size_t len)
{
    wipe(data, len);
    free(data);
}
