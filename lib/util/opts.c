/*
 * Option lists ("-o key=value,..."): an ordered list of unique keys, each
 * with a string value.
 *
 * qimg_opts_parse follows QEMU 7.2's QemuOpts parser (opts_do_parse with
 * no implied first name), checked against qemu-img create:
 *  - elements are separated by ','; in a value ",," stands for one ','.
 *    A key ends at the first '=' or ',' and cannot contain either;
 *  - "k=v" sets k; a bare "k" sets k=on and a bare "nok" sets k=off
 *    ("-o nocow" means cow=off, as in QEMU); a bare "help" or "?" is
 *    stored as key "help" with value "on" so that callers can detect
 *    "-o help";
 *  - "id" is an ordinary key here.  QemuOpts takes it as the list's id
 *    instead of an option, so "qemu-img create -o id=x" ignores it: users
 *    of creation options must skip "id" themselves ("--object
 *    secret,id=..." needs it kept);
 *  - an empty element between commas is an option with an empty name
 *    (",,"-escaping aside), which qemu-img rejects later as
 *    "Invalid parameter ''"; it is stored so callers can do the same.
 * A repeated key takes the later value and keeps its first position.  That
 * is what qemu-img shows: it looks up the last occurrence of an option and
 * prints options in the format's own order, never in list order.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "qimg/qimg.h"
#include "util/grow.h"

/* Longest key or value accepted, in bytes (no real option comes close). */
#define OPTS_MAX_LEN 4096

struct opts_entry {
    char *key;
    char *value;
};

struct qimg_opts {
    struct opts_entry *items;
    size_t count;
    size_t cap;
};

static int opts_fail(int errnum, const char *fmt, const char *arg)
{
    error_set(errnum, fmt, arg);
    errno = errnum;
    return -1;
}

struct qimg_opts *qimg_opts_new(void)
{
    struct qimg_opts *opts = calloc(1, sizeof(*opts));

    if (!opts) {
        opts_fail(ENOMEM, "%s", "Out of memory");
    }
    return opts;
}

void qimg_opts_free(struct qimg_opts *opts)
{
    if (!opts) {
        return;
    }
    for (size_t i = 0; i < opts->count; i++) {
        free(opts->items[i].key);
        free(opts->items[i].value);
    }
    free(opts->items);
    free(opts);
}

static struct opts_entry *opts_find(const struct qimg_opts *opts,
                                    const char *key)
{
    for (size_t i = 0; i < opts->count; i++) {
        if (strcmp(opts->items[i].key, key) == 0) {
            return &opts->items[i];
        }
    }
    return NULL;
}

/*
 * Set key to value, taking ownership of both strings (freed on failure).
 * Lengths are already checked.
 */
static int opts_set_owned(struct qimg_opts *opts, char *key, char *value)
{
    struct opts_entry *e = opts_find(opts, key);

    if (e) {
        free(key);
        free(e->value);
        e->value = value;
        return 0;
    }
    struct opts_entry *items = grow_array(opts->items, &opts->cap,
                                          opts->count + 1, sizeof(*items));
    if (!items) {
        free(key);
        free(value);
        return opts_fail(ENOMEM, "%s", "Out of memory");
    }
    opts->items = items;
    opts->items[opts->count++] = (struct opts_entry){
        .key = key,
        .value = value,
    };
    return 0;
}

static int opts_check_len(const char *what, size_t len)
{
    if (len > OPTS_MAX_LEN) {
        return opts_fail(EINVAL, "Option %s is too long", what);
    }
    return 0;
}

int qimg_opts_set(struct qimg_opts *opts, const char *key, const char *value)
{
    if (!opts || !key || !value) {
        return opts_fail(EINVAL, "%s", "Invalid option");
    }
    if (opts_check_len("name", strlen(key)) < 0 ||
        opts_check_len("value", strlen(value)) < 0) {
        return -1;
    }
    char *k = strdup(key);
    char *v = strdup(value);
    if (!k || !v) {
        free(k);
        free(v);
        return opts_fail(ENOMEM, "%s", "Out of memory");
    }
    return opts_set_owned(opts, k, v);
}

/*
 * One parsed element of an option string.  The key is text[key_off..]
 * of key_len bytes; the value is either a literal (flag_value) or the
 * escaped text starting at value_off, whose unescaped length is value_len.
 */
struct opts_elem {
    size_t key_off;
    size_t key_len;
    const char *flag_value; /* "on"/"off" for a bare flag, else NULL */
    size_t value_off;
    size_t value_len;
};

/*
 * Split the element starting at p; returns the offset of the next
 * element (past the separating comma), or the string's length.
 */
static size_t opts_scan(const char *text, size_t p, struct opts_elem *el)
{
    size_t len = strcspn(text + p, "=,");

    memset(el, 0, sizeof(*el));
    el->key_off = p;
    el->key_len = len;
    p += len;
    if (text[p] != '=') {
        /* A bare flag: "k", "nok", "help", "?". */
        const char *k = text + el->key_off;

        if ((len == 4 && memcmp(k, "help", 4) == 0) ||
            (len == 1 && k[0] == '?')) {
            el->flag_value = "on";
        } else if (len >= 2 && memcmp(k, "no", 2) == 0) {
            el->key_off += 2;
            el->key_len -= 2;
            el->flag_value = "off";
        } else {
            el->flag_value = "on";
        }
    } else {
        /* A value runs to the first single ','; ",," is a comma. */
        p++;
        el->value_off = p;
        while (text[p]) {
            if (text[p] == ',') {
                if (text[p + 1] != ',') {
                    break;
                }
                p++;
            }
            p++;
            el->value_len++;
        }
    }
    if (text[p] == ',') {
        p++;
    }
    return p;
}

static char *opts_elem_key(const char *text, const struct opts_elem *el)
{
    const char *k = text + el->key_off;

    if (el->flag_value && el->key_len == 1 && k[0] == '?') {
        return strdup("help");
    }
    return strndup(k, el->key_len);
}

static char *opts_elem_value(const char *text, const struct opts_elem *el)
{
    if (el->flag_value) {
        return strdup(el->flag_value);
    }
    char *v = malloc(el->value_len + 1);
    if (!v) {
        return NULL;
    }
    const char *s = text + el->value_off;
    for (size_t i = 0; i < el->value_len; i++) {
        if (*s == ',') {
            s++; /* the first of ",," */
        }
        v[i] = *s++;
    }
    v[el->value_len] = '\0';
    return v;
}

int qimg_opts_parse(struct qimg_opts *opts, const char *text)
{
    struct opts_elem el;
    size_t p;

    if (!opts || !text) {
        return opts_fail(EINVAL, "%s", "Invalid option list");
    }

    /*
     * Check every element first, so that a rejected string changes
     * nothing (except when memory runs out part way).
     */
    for (p = 0; text[p];) {
        p = opts_scan(text, p, &el);
        if (opts_check_len("name", el.key_len) < 0 ||
            opts_check_len("value", el.value_len) < 0) {
            return -1;
        }
    }

    for (p = 0; text[p];) {
        p = opts_scan(text, p, &el);
        char *k = opts_elem_key(text, &el);
        char *v = opts_elem_value(text, &el);
        if (!k || !v) {
            free(k);
            free(v);
            return opts_fail(ENOMEM, "%s", "Out of memory");
        }
        if (opts_set_owned(opts, k, v) < 0) {
            return -1;
        }
    }
    return 0;
}

const char *qimg_opts_get(const struct qimg_opts *opts, const char *key)
{
    if (!opts || !key) {
        return NULL;
    }
    const struct opts_entry *e = opts_find(opts, key);
    return e ? e->value : NULL;
}

int qimg_opts_unset(struct qimg_opts *opts, const char *key)
{
    if (!opts || !key) {
        return opts_fail(EINVAL, "%s", "Invalid option");
    }
    struct opts_entry *e = opts_find(opts, key);
    if (e) {
        size_t i = (size_t)(e - opts->items);

        free(e->key);
        free(e->value);
        memmove(&opts->items[i], &opts->items[i + 1],
                (opts->count - i - 1) * sizeof(*opts->items));
        opts->count--;
    }
    return 0;
}

size_t qimg_opts_count(const struct qimg_opts *opts)
{
    return opts ? opts->count : 0;
}

const char *qimg_opts_key(const struct qimg_opts *opts, size_t i)
{
    return opts && i < opts->count ? opts->items[i].key : NULL;
}
