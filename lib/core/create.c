/*
 * Image creation: option tables, the "Formatting ..." summary, and the
 * file-protocol part every format's create starts with.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/error.h"
#include "core/image.h"
#include "util/path.h"

/* The file protocol's creation options, appended to every format's. */
static const struct qimg_opt_desc file_create_opts[] = {
    {"size", QIMG_OPT_SIZE, "Virtual disk size", NULL},
    {"nocow", QIMG_OPT_BOOL, "Turn off copy-on-write (valid only on btrfs)",
     NULL},
    {"preallocation", QIMG_OPT_STRING,
     "Preallocation mode (allowed values: off, falloc, full)", NULL},
    {"extent_size_hint", QIMG_OPT_SIZE,
     "Extent size hint for the image file, 0 to disable", NULL},
    {NULL, 0, NULL, NULL},
};

/* Merged tables are built once per format and kept for the process. */
#define MAX_MERGED_OPTS 64
static const struct qimg_format_ops *merged_owner[8];
static struct qimg_opt_desc merged_table[8][MAX_MERGED_OPTS];
static pthread_mutex_t merged_lock = PTHREAD_MUTEX_INITIALIZER;

static bool desc_has(const struct qimg_opt_desc *list, size_t n,
                     const char *name)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(list[i].name, name) == 0) {
            return true;
        }
    }
    return false;
}

static const struct qimg_opt_desc *
merged_options(const struct qimg_format_ops *drv)
{
    const struct qimg_opt_desc *result = NULL;
    pthread_mutex_lock(&merged_lock);
    for (size_t slot = 0; slot < 8; slot++) {
        if (merged_owner[slot] == drv) {
            result = merged_table[slot];
            break;
        }
        if (merged_owner[slot]) {
            continue;
        }
        /* The format's own options first, then the protocol's new ones. */
        struct qimg_opt_desc *t = merged_table[slot];
        size_t n = 0;
        for (const struct qimg_opt_desc *d = drv->create_opts; d->name;
             d++) {
            t[n++] = *d;
        }
        for (const struct qimg_opt_desc *d = file_create_opts; d->name;
             d++) {
            if (!desc_has(t, n, d->name) && n + 1 < MAX_MERGED_OPTS) {
                t[n++] = *d;
            }
        }
        t[n].name = NULL;
        merged_owner[slot] = drv;
        result = t;
        break;
    }
    pthread_mutex_unlock(&merged_lock);
    return result;
}

static const struct qimg_format_ops *creator(const char *format)
{
    const struct qimg_format_ops *drv = format_lookup(format);
    if (!drv) {
        error_set(EINVAL, "Unknown file format '%s'", format);
        return NULL;
    }
    if (!drv->create || !drv->create_opts) {
        error_set(ENOTSUP, "Format driver '%s' does not support image "
                  "creation", format);
        return NULL;
    }
    return drv;
}

const struct qimg_opt_desc *qimg_create_options(const char *format,
                                                bool with_protocol)
{
    error_clear();
    const struct qimg_format_ops *drv = creator(format);
    if (!drv) {
        errno = qimg_get_errno();
        return NULL;
    }
    if (!with_protocol) {
        return drv->create_opts;
    }
    const struct qimg_opt_desc *t = merged_options(drv);
    if (!t) {
        error_set(ENOMEM, "Too many formats");
        errno = ENOMEM;
    }
    return t;
}

/* Append to a growing string; false when out of memory. */
static bool sb_append(char **buf, size_t *len, size_t *cap, const char *s,
                      size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t ncap = (*cap ? *cap * 2 : 128);
        while (ncap < *len + n + 1) {
            ncap *= 2;
        }
        char *nb = realloc(*buf, ncap);
        if (!nb) {
            return false;
        }
        *buf = nb;
        *cap = ncap;
    }
    memcpy(*buf + *len, s, n);
    *len += n;
    (*buf)[*len] = '\0';
    return true;
}

char *qimg_create_summary(const char *format, const struct qimg_opts *opts)
{
    error_clear();
    const struct qimg_opt_desc *descs = qimg_create_options(format, true);
    if (!descs) {
        return NULL;
    }
    char *buf = NULL;
    size_t len = 0, cap = 0;
    bool ok = sb_append(&buf, &len, &cap, "fmt=", 4) &&
              sb_append(&buf, &len, &cap, format, strlen(format));
    /* qemu_opts_print: descriptor order; set values, else defaults. */
    for (const struct qimg_opt_desc *d = descs; ok && d->name; d++) {
        const char *value = qimg_opts_get(opts, d->name);
        char number[32];
        if (value && d->type == QIMG_OPT_SIZE) {
            uint64_t size;
            if (qimg_parse_size(value, 'B', &size) == 0) {
                snprintf(number, sizeof(number), "%llu",
                         (unsigned long long)size);
                value = number;
            }
        }
        if (!value) {
            value = d->def;
        }
        if (!value) {
            continue;
        }
        ok = sb_append(&buf, &len, &cap, " ", 1) &&
             sb_append(&buf, &len, &cap, d->name, strlen(d->name)) &&
             sb_append(&buf, &len, &cap, "=", 1);
        /* Strings are printed with commas doubled, as they are parsed. */
        for (const char *p = value; ok && *p; p++) {
            ok = sb_append(&buf, &len, &cap, p, 1);
            if (ok && *p == ',' && d->type == QIMG_OPT_STRING) {
                ok = sb_append(&buf, &len, &cap, ",", 1);
            }
        }
    }
    if (!ok) {
        free(buf);
        error_set(ENOMEM, "Out of memory");
        errno = ENOMEM;
        return NULL;
    }
    return buf;
}

/* Options every create accepts for the chain; checked separately. */
static bool is_backing_option(const char *key)
{
    return strcmp(key, "backing_file") == 0 ||
           strcmp(key, "backing_fmt") == 0;
}

bool opt_parse_bool(const char *text, bool *out)
{
    static const char *const yes[] = {"on", "yes", "true", "y"};
    static const char *const no[] = {"off", "no", "false", "n"};
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        if (strcmp(text, yes[i]) == 0) {
            *out = true;
            return true;
        }
        if (strcmp(text, no[i]) == 0) {
            *out = false;
            return true;
        }
    }
    return false;
}

int opt_check_value(const struct qimg_opt_desc *d, const char *v)
{
    bool b;
    uint64_t u;
    char *end;
    if (!v) {
        return 0;
    }
    switch (d->type) {
    case QIMG_OPT_BOOL:
        if (!opt_parse_bool(v, &b)) {
            return error_set(EINVAL, "Parameter '%s' expects 'on' or 'off'",
                             d->name);
        }
        break;
    case QIMG_OPT_SIZE:
        if (qimg_parse_size(v, 'B', &u) < 0) {
            return error_set(EINVAL, "Parameter '%s' expects a non-negative "
                             "number below 2^64\nOptional suffix k, M, G, "
                             "T, P or E means kilo-, mega-, giga-, tera-, "
                             "peta-\nand exabytes, respectively.", d->name);
        }
        break;
    case QIMG_OPT_NUMBER:
        errno = 0;
        (void)strtoull(v, &end, 0);
        if (errno || end == v || *end || *v == '-') {
            return error_set(EINVAL, "Parameter '%s' expects a number",
                             d->name);
        }
        break;
    case QIMG_OPT_STRING:
        break;
    }
    return 0;
}

/* Refuse options the format does not know, before touching any file. */
static int check_known_options(const char *format,
                               const struct qimg_opt_desc *descs,
                               const struct qimg_opts *opts)
{
    for (size_t i = 0; i < qimg_opts_count(opts); i++) {
        const char *key = qimg_opts_key(opts, i);
        bool known = is_backing_option(key);
        for (const struct qimg_opt_desc *d = descs; d->name && !known;
             d++) {
            known = strcmp(d->name, key) == 0;
        }
        if (!known) {
            return error_set(EINVAL, "Invalid parameter '%s'", key);
        }
    }
    for (const struct qimg_opt_desc *d = descs; d->name; d++) {
        int ret = opt_check_value(d, qimg_opts_get(opts, d->name));
        if (ret < 0) {
            return ret;
        }
    }
    for (int i = 0; i < 2; i++) {
        const char *key = i == 0 ? "backing_file" : "backing_fmt";
        if (!qimg_opts_get(opts, key)) {
            continue;
        }
        bool supported = false;
        for (const struct qimg_opt_desc *d = descs; d->name; d++) {
            supported = supported || strcmp(d->name, key) == 0;
        }
        if (!supported) {
            return error_set(ENOTSUP, "Backing file%s not supported for "
                             "file format '%s'", i == 0 ? "" : " format",
                             format);
        }
    }
    return 0;
}

/*
 * Open the backing file the way the new image will: to prove it exists,
 * to learn its format when none was given, and to inherit its size.
 */
static int check_backing(const char *filename, struct qimg_opts *opts)
{
    const char *backing = qimg_opts_get(opts, "backing_file");
    const char *backing_fmt = qimg_opts_get(opts, "backing_fmt");
    char *path = path_combine(filename, backing);
    if (!path) {
        return error_set(ENOMEM, "Out of memory");
    }
    struct qimg_node *node;
    int ret = node_open(path, backing_fmt, QIMG_OPEN_FORCE_SHARE, NULL,
                        &node);
    free(path);
    if (ret < 0) {
        /* error_set() reuses the buffer the message is in: copy it. */
        char *why = strdup(qimg_get_error());
        ret = error_set(-ret, "%s\nCould not open backing image.",
                        why ? why : "Out of memory");
        free(why);
        return ret;
    }
    if (!backing_fmt) {
        ret = error_set(EINVAL, "Backing file specified without backing "
                        "format\nDetected format of %s.", node->drv->name);
    } else if (!qimg_opts_get(opts, "size")) {
        char text[32];
        snprintf(text, sizeof(text), "%llu",
                 (unsigned long long)node->size);
        if (qimg_opts_set(opts, "size", text) < 0) {
            ret = error_set(ENOMEM, "Out of memory");
        }
    }
    node_close(node);
    return ret;
}

static int create_prepare(const char *filename, const char *format,
                          struct qimg_opts *opts, unsigned flags)
{
    const struct qimg_format_ops *drv = creator(format);
    if (!drv) {
        return -qimg_get_errno();
    }
    int ret = check_known_options(format, merged_options(drv), opts);
    if (ret < 0) {
        return ret;
    }
    const char *backing = qimg_opts_get(opts, "backing_file");
    if (backing) {
        if (strcmp(backing, filename) == 0) {
            return error_set(EINVAL, "Error: Trying to create an image with "
                             "the same filename as the backing file");
        }
        if (!(flags & QIMG_CREATE_BACKING_UNSAFE)) {
            ret = check_backing(filename, opts);
        } else if (!qimg_opts_get(opts, "backing_fmt")) {
            ret = error_set(EINVAL, "Backing file specified without "
                            "backing format");
        }
        if (ret < 0) {
            return ret;
        }
    }
    if (!qimg_opts_get(opts, "size")) {
        return error_set(EINVAL, "Image creation needs a size parameter");
    }
    return 0;
}

int qimg_create_prepare(const char *filename, const char *format,
                        struct qimg_opts *opts, unsigned flags)
{
    error_clear();
    int ret = create_prepare(filename, format, opts, flags);
    if (ret < 0) {
        error_prefix(-ret, "%s", filename);
        errno = -ret;
        return -1;
    }
    return 0;
}

static int parse_bool_opt(const struct qimg_opts *opts, const char *key,
                          bool *out)
{
    const char *v = qimg_opts_get(opts, key);
    *out = false;
    if (v && !opt_parse_bool(v, out)) {
        return error_set(EINVAL, "Parameter '%s' expects 'on' or 'off'", key);
    }
    return 0;
}

/* Size of the zero buffer used for preallocation=full. */
#define PREALLOC_CHUNK (1024 * 1024)

static int prealloc_full(struct qimg_io *io, uint64_t size)
{
    void *zeros = calloc(1, PREALLOC_CHUNK);
    if (!zeros) {
        return error_set(ENOMEM, "Out of memory");
    }
    int ret = 0;
    for (uint64_t off = 0; off < size && ret == 0; off += PREALLOC_CHUNK) {
        size_t n = size - off < PREALLOC_CHUNK ? (size_t)(size - off)
                                               : PREALLOC_CHUNK;
        ret = io_pwrite(io, zeros, n, off);
    }
    free(zeros);
    return ret;
}

int create_file(const char *filename, const struct qimg_opts *opts,
                struct qimg_io **out)
{
    uint64_t size = 0;
    const char *size_str = qimg_opts_get(opts, "size");
    if (size_str && qimg_parse_size(size_str, 'B', &size) < 0) {
        return error_set(EINVAL, "Parameter 'size' expects a non-negative "
                         "number below 2^64");
    }
    /* The file protocol works in whole sectors, as QEMU's does. */
    if (size > INT64_MAX - 511) {
        return error_set(EFBIG, "Image size too large");
    }
    size = (size + 511) & ~(uint64_t)511;
    const char *prealloc = qimg_opts_get(opts, "preallocation");
    if (!prealloc) {
        prealloc = "off";
    }
    if (strcmp(prealloc, "off") != 0 && strcmp(prealloc, "falloc") != 0 &&
        strcmp(prealloc, "full") != 0) {
        return error_set(EINVAL, "Invalid parameter '%s'", prealloc);
    }
    bool nocow;
    int ret = parse_bool_opt(opts, "nocow", &nocow);
    if (ret < 0) {
        return ret;
    }

    struct stat st;
    bool existed = stat(filename, &st) == 0;
    struct qimg_io *io;
    ret = io_file_open(filename, IO_RDWR | IO_CREATE | IO_TRUNC, &io);
    if (ret < 0) {
        return ret;
    }
    ret = io_truncate(io, 0);
    if (ret == 0) {
        ret = io_truncate(io, size);
    }
    if (ret == 0 && strcmp(prealloc, "falloc") == 0 && size > 0) {
        ret = io_allocate(io, 0, size);
    }
    if (ret == 0 && strcmp(prealloc, "full") == 0) {
        ret = prealloc_full(io, size);
    }
    if (ret < 0 || !out) {
        io_close(io);
    }
    if (ret < 0) {
        /* Leave nothing half-written behind. */
        if (!existed) {
            unlink(filename);
        }
        return ret;
    }
    if (out) {
        *out = io;
    }
    return 0;
}

int qimg_create(const char *filename, const char *format,
                const struct qimg_opts *opts)
{
    error_clear();
    const struct qimg_format_ops *drv = creator(format);
    int ret;
    if (!drv) {
        ret = -qimg_get_errno();
        goto fail;
    }
    struct stat st;
    bool existed = stat(filename, &st) == 0;
    ret = drv->create(filename, opts);
    if (ret < 0) {
        if (!existed) {
            unlink(filename);
        }
        goto fail;
    }
    return 0;
fail:
    error_prefix(-ret, "%s", filename);
    errno = -ret;
    return -1;
}
