/*
 * --image-opts (and convert's --target-image-opts): the file name
 * argument is an option string, as qemu-img 7.2 reads it:
 *
 *   [file=]...,driver=FMT,file.filename=PATH[,file.driver=file]
 *   [,file.locking=on|off|auto][,file.aio=threads|io_uring][,FMT options]
 *
 * A first element without '=' is the value of the implied key "file"
 * (qemu-img's "source" option list), which names a node: there are none,
 * so it fails as QEMU does.  driver and file.* are the CLI's business;
 * every other key goes to qimg_open_opts as a runtime option of the
 * format, which fails the open for a key the driver does not take (with
 * QEMU's "Block format 'X' does not support the option 'Y'").  That is
 * also how backing.* and backing=null end: qemu-img refuses them too.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static void spec_free(struct cli_image_spec *s)
{
    free(s->filename);
    free(s->format);
    qimg_opts_free(s->driver_opts);
    memset(s, 0, sizeof(*s));
}

/*
 * The strings of every spec handed out live until exit (a command's many
 * return paths need not free them): kept here, freed by an atexit hook.
 */
static struct cli_image_spec *kept;
static size_t nb_kept;

static void free_kept(void)
{
    for (size_t i = 0; i < nb_kept; i++) {
        spec_free(&kept[i]);
    }
    free(kept);
    kept = NULL;
    nb_kept = 0;
}

static int keep(struct cli_image_spec *s)
{
    if (!kept && atexit(free_kept) != 0) {
        spec_free(s);
        cli_error("Out of memory");
        return -1;
    }
    struct cli_image_spec *n = realloc(kept, (nb_kept + 1) * sizeof(*n));
    if (!n) {
        spec_free(s);
        cli_error("Out of memory");
        return -1;
    }
    kept = n;
    kept[nb_kept++] = *s;
    return 0;
}

/* "Could not open 'SPEC': <why>", as every --image-opts open error. */
__attribute__((format(printf, 2, 3)))
static int spec_error(const char *spec, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    cli_error("Could not open '%s': %s", spec, buf);
    return -1;
}

/* Does the first element of an option string lack '='? */
static bool first_element_bare(const char *spec)
{
    for (const char *p = spec; *p; p++) {
        if (*p == '=') {
            return false;
        }
        if (*p == ',') {
            return true;
        }
    }
    return true;
}

int cli_image_opts_parse(const char *spec, struct cli_image_spec *out)
{
    memset(out, 0, sizeof(*out));
    out->spec = spec;
    struct qimg_opts *opts = qimg_opts_new();
    out->driver_opts = qimg_opts_new();
    if (!opts || !out->driver_opts) {
        qimg_opts_free(opts);
        spec_free(out);
        cli_error("Out of memory");
        return -1;
    }
    int ret = -1;
    const char *text = spec;
    char *implied = NULL;
    if (first_element_bare(spec)) {
        implied = malloc(strlen(spec) + sizeof("file="));
        if (!implied) {
            cli_error("Out of memory");
            goto out;
        }
        strcpy(implied, "file=");
        strcat(implied, spec);
        text = implied;
    }
    if (qimg_opts_parse(opts, text) < 0) {
        cli_report_library_error();
        goto out;
    }
    const char *file = qimg_opts_get(opts, "file");
    if (file) {
        /* A string "file" is a reference to an existing node. */
        spec_error(spec, "Cannot find device='%s' nor node-name='%s'", file,
                   file);
        goto out;
    }
    const char *driver = qimg_opts_get(opts, "driver");
    const char *file_driver = qimg_opts_get(opts, "file.driver");
    const char *path = qimg_opts_get(opts, "file.filename");
    bool any_file = false;
    for (size_t i = 0; i < qimg_opts_count(opts); i++) {
        any_file |= strncmp(qimg_opts_key(opts, i), "file.", 5) == 0;
    }
    if (!driver && !any_file) {
        spec_error(spec, "Must specify either driver or file");
        goto out;
    }
    if (driver && strcmp(driver, "file") == 0) {
        spec_error(spec, "qimg opens images through a format driver; "
                   "driver=file (a protocol node alone) is not supported");
        goto out;
    }
    if (driver && !qimg_format_known(driver)) {
        spec_error(spec, "Unknown driver '%s'", driver);
        goto out;
    }
    if (file_driver && strcmp(file_driver, "file") != 0) {
        if (qimg_format_known(file_driver)) {
            spec_error(spec, "qimg opens the 'file' protocol only, not "
                       "file.driver=%s", file_driver);
        } else {
            spec_error(spec, "Unknown driver '%s'", file_driver);
        }
        goto out;
    }
    for (size_t i = 0; i < qimg_opts_count(opts); i++) {
        const char *key = qimg_opts_key(opts, i);
        const char *val = qimg_opts_get(opts, key);
        if (strcmp(key, "driver") == 0 || strcmp(key, "file.driver") == 0 ||
            strcmp(key, "file.filename") == 0) {
            continue;
        }
        if (strncmp(key, "file.", 5) != 0) {
            if (qimg_opts_set(out->driver_opts, key, val) < 0) {
                cli_report_library_error();
                goto out;
            }
            continue;
        }
        const char *sub = key + 5;
        if (strcmp(sub, "locking") == 0) {
            if (strcmp(val, "off") == 0) {
                out->no_locking = true;
            } else if (strcmp(val, "on") != 0 && strcmp(val, "auto") != 0) {
                spec_error(spec, "invalid parameter value: %s", val);
                goto out;
            }
        } else if (strcmp(sub, "aio") == 0) {
            /* The I/O engine is qimg's own; threads and io_uring read alike. */
            if (strcmp(val, "native") == 0) {
                spec_error(spec, "aio=native was specified, but it requires "
                           "cache.direct=on, which was not specified.");
                goto out;
            }
            if (strcmp(val, "threads") != 0 && strcmp(val, "io_uring") != 0) {
                spec_error(spec, "Invalid parameter '%s'", val);
                goto out;
            }
        } else {
            spec_error(spec, "Block protocol 'file' doesn't support the "
                       "option '%s'", sub);
            goto out;
        }
    }
    if (!path) {
        spec_error(spec, "A block device must be specified for \"file\"");
        goto out;
    }
    out->filename = strdup(path);
    out->format = driver ? strdup(driver) : NULL;
    if (!out->filename || (driver && !out->format)) {
        cli_error("Out of memory");
        goto out;
    }
    ret = keep(out);
out:
    free(implied);
    qimg_opts_free(opts);
    if (ret < 0) {
        spec_free(out);
    }
    return ret;
}

int cli_image_spec_plain(const char *filename, const char *format,
                         struct cli_image_spec *out)
{
    memset(out, 0, sizeof(*out));
    out->filename = strdup(filename);
    out->format = format ? strdup(format) : NULL;
    if (!out->filename || (format && !out->format)) {
        spec_free(out);
        cli_error("Out of memory");
        return -1;
    }
    return keep(out);
}

int cli_image_spec_get(bool image_opts, const char *arg, const char *format,
                       struct cli_image_spec *out)
{
    if (!image_opts) {
        return cli_image_spec_plain(arg, format, out);
    }
    if (format) {
        memset(out, 0, sizeof(*out));
        cli_error("--image-opts and --format are mutually exclusive");
        return -1;
    }
    return cli_image_opts_parse(arg, out);
}

unsigned cli_image_spec_flags(const struct cli_image_spec *s, unsigned flags)
{
    /* Without locks nothing conflicts: as -U for a read-only open. */
    if (s->no_locking && !(flags & QIMG_OPEN_RDWR)) {
        flags |= QIMG_OPEN_FORCE_SHARE;
    }
    return flags;
}

struct qimg_image *cli_image_spec_open(const struct cli_image_spec *s,
                                       unsigned flags)
{
    if (s->no_locking && (flags & QIMG_OPEN_RDWR)) {
        /* qimg has no lock-free writable open; refuse rather than lock. */
        spec_error(s->spec, "file.locking=off is supported for read-only "
                   "opens only");
        return NULL;
    }
    return qimg_open_opts(s->filename, s->format,
                          cli_image_spec_flags(s, flags),
                          s->driver_opts && qimg_opts_count(s->driver_opts)
                              ? s->driver_opts : NULL);
}

void cli_image_spec_report(const struct cli_image_spec *s)
{
    cli_image_specs_report(s, 1);
}

void cli_image_specs_report(const struct cli_image_spec *s, size_t n)
{
    static const char head[] = "Could not open '";
    const size_t hlen = sizeof(head) - 1;
    const char *msg = qimg_get_error();
    for (size_t i = 0; i < n; i++) {
        if (!s[i].spec) {
            continue;
        }
        size_t flen = strlen(s[i].filename);
        if (strncmp(msg, head, hlen) == 0 &&
            strncmp(msg + hlen, s[i].filename, flen) == 0 &&
            strncmp(msg + hlen + flen, "': ", 3) == 0) {
            cli_error("Could not open '%s': %s", s[i].spec,
                      msg + hlen + flen + 3);
            return;
        }
    }
    cli_error("%s", msg);
}
