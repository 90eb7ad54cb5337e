/* Argument handling shared by the commands, with qemu-img's messages. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static void vcli_error(const char *fmt, va_list ap)
{
    fprintf(stderr, "%s: ", PROGRAM_NAME);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

void cli_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vcli_error(fmt, ap);
    va_end(ap);
}

int cli_usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vcli_error(fmt, ap);
    va_end(ap);
    fprintf(stderr, "Try '%s --help' for more information\n", PROGRAM_NAME);
    return 1;
}

int cli_getopt_error(char **argv, int opt)
{
    extern int optind, optopt;
    const char *arg = argv[optind - 1];
    /* Long options are named as typed, short ones by their letter. */
    bool is_long = strncmp(arg, "--", 2) == 0;
    if (opt == ':') {
        if (!is_long) {
            return cli_usage_error("missing argument for option '-%c'",
                                   optopt);
        }
        size_t len = strcspn(arg, "=");
        return cli_usage_error("missing argument for option '%.*s'",
                               (int)len, arg);
    }
    if (!is_long) {
        return cli_usage_error("unrecognized option '-%c'", optopt);
    }
    return cli_usage_error("unrecognized option '%s'", arg);
}

void cli_report_library_error(void)
{
    cli_error("%s", qimg_get_error());
}

int cli_parse_output(const char *arg, enum output_format *out)
{
    if (strcmp(arg, "json") == 0) {
        *out = OUTPUT_JSON;
        return 0;
    }
    if (strcmp(arg, "human") == 0) {
        *out = OUTPUT_HUMAN;
        return 0;
    }
    cli_error("--output must be used with human or json as argument.");
    return -1;
}

int cli_accumulate_options(char **acc, const char *arg)
{
    if (!cli_option_list_valid(arg)) {
        cli_error("Invalid option list: %s", arg);
        return -1;
    }
    char *joined;
    if (*acc) {
        if (asprintf(&joined, "%s,%s", *acc, arg) < 0) {
            cli_error("Out of memory");
            return -1;
        }
        free(*acc);
    } else {
        joined = strdup(arg);
        if (!joined) {
            cli_error("Out of memory");
            return -1;
        }
    }
    *acc = joined;
    return 0;
}

/*
 * qemu-img shows help when one comma-separated element is exactly "help"
 * or "?" (",," being a literal comma, not a separator).
 */
bool cli_options_want_help(const char *options)
{
    if (!options) {
        return false;
    }
    const char *p = options;
    while (*p) {
        const char *start = p;
        while (*p && !(*p == ',' && p[1] != ',')) {
            p += (*p == ',') ? 2 : 1;
        }
        size_t len = (size_t)(p - start);
        if ((len == 4 && strncmp(start, "help", 4) == 0) ||
            (len == 1 && *start == '?')) {
            return true;
        }
        if (*p == ',') {
            p++;
        }
    }
    return false;
}

/*
 * qemu-img refuses an -o argument that is empty, starts with a comma, or
 * ends in a separator comma, before anything else.
 */
bool cli_option_list_valid(const char *arg)
{
    size_t len = strlen(arg);
    if (len == 0 || arg[0] == ',') {
        return false;
    }
    size_t trailing = 0;
    while (trailing < len && arg[len - 1 - trailing] == ',') {
        trailing++;
    }
    return trailing % 2 == 0;
}

/*
 * Base64 as QEMU's qbase64_decode takes it: only the alphabet, '=' and
 * newlines are allowed, then decoded leniently (padding optional).
 */
static int base64_decode(const char *in, uint8_t **out, size_t *out_len)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t len = strlen(in);
    uint8_t *buf = malloc(len / 4 * 3 + 3);
    if (!buf) {
        cli_error("Out of memory");
        return -1;
    }
    uint32_t acc = 0;
    unsigned bits = 0;
    size_t n = 0;
    bool padding = false;
    for (size_t i = 0; i < len; i++) {
        char c = in[i];
        if (c == '\n' || c == '\r') {
            continue;
        }
        const char *pos = c ? strchr(alphabet, c) : NULL;
        if (c == '=') {
            padding = true;
            continue;
        }
        if (!pos || padding) {
            free(buf);
            cli_error("Base64 data contains invalid characters");
            return -1;
        }
        acc = (acc << 6) | (uint32_t)(pos - alphabet);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            buf[n++] = (uint8_t)(acc >> bits);
        }
    }
    *out = buf;
    *out_len = n;
    return 0;
}

/* A secret's bytes from file=PATH, read whole, as QEMU does. */
static int read_secret_file(const char *path, uint8_t **out, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        cli_error("Unable to read %s: Failed to open file \u201c%s\u201d: %s",
                  path, path, strerror(errno));
        return -1;
    }
    size_t cap = 256, n = 0;
    uint8_t *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap || cap >= (1u << 20)) {
            break;
        }
        uint8_t *grown = realloc(buf, cap * 2);
        if (!grown) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = grown;
        cap *= 2;
    }
    bool failed = ferror(f) || n == cap;
    fclose(f);
    if (!buf || failed) {
        free(buf);
        cli_error("Unable to read %s: %s", path,
                  buf ? "file too large or unreadable" : "Out of memory");
        return -1;
    }
    *out = buf;
    *len = n;
    return 0;
}

/*
 * --object [qom-type=]secret,id=ID,data=D|file=F[,format=raw|base64]:
 * the one object type qemu-img's commands use, stored for opens that
 * need a key.  keyid (secrets encrypted with another secret) is refused.
 */
int cli_add_object(const char *def)
{
    static const char *const known[] = {"id", "data", "file", "format",
                                        "keyid", "iv", NULL};
    struct qimg_opts *opts = qimg_opts_new();
    if (!opts) {
        cli_error("Out of memory");
        return -1;
    }
    int ret = -1;
    uint8_t *bytes = NULL;
    size_t len = 0;
    const char *comma = strchr(def, ',');
    size_t type_len = comma ? (size_t)(comma - def) : strlen(def);
    char *type = strndup(def, type_len);
    if (!type) {
        cli_error("Out of memory");
        goto out;
    }
    if (strncmp(type, "qom-type=", 9) == 0) {
        memmove(type, type + 9, strlen(type + 9) + 1);
    }
    if (comma && qimg_opts_parse(opts, comma + 1) < 0) {
        cli_error("%s", qimg_get_error());
        goto out;
    }
    if (strcmp(type, "secret") != 0) {
        cli_error("Parameter 'qom-type' does not accept value '%s'", type);
        goto out;
    }
    const char *id = qimg_opts_get(opts, "id");
    if (!id) {
        cli_error("Parameter 'id' is missing");
        goto out;
    }
    for (size_t i = 0; i < qimg_opts_count(opts); i++) {
        const char *key = qimg_opts_key(opts, i);
        size_t k = 0;
        while (known[k] && strcmp(known[k], key) != 0) {
            k++;
        }
        if (!known[k]) {
            if (strcmp(key, "loaded") == 0) {
                cli_error("Property 'secret.loaded' is not writable");
            } else {
                cli_error("Parameter '%s' is unexpected", key);
            }
            goto out;
        }
    }
    const char *data = qimg_opts_get(opts, "data");
    const char *file = qimg_opts_get(opts, "file");
    const char *format = qimg_opts_get(opts, "format");
    if (format && strcmp(format, "raw") != 0 &&
        strcmp(format, "base64") != 0) {
        cli_error("Parameter 'format' does not accept value '%s'", format);
        goto out;
    }
    if (data && file) {
        cli_error("'file' and 'data' are mutually exclusive");
        goto out;
    }
    if (!data && !file) {
        cli_error("Either 'file' or 'data' must be provided");
        goto out;
    }
    const char *keyid = qimg_opts_get(opts, "keyid");
    if (keyid) {
        cli_error("secret '%s': encrypted secrets (keyid) are not supported",
                  id);
        goto out;
    }
    if (file) {
        if (read_secret_file(file, &bytes, &len) < 0) {
            goto out;
        }
    } else {
        len = strlen(data);
        bytes = (uint8_t *)strdup(data);
        if (!bytes) {
            cli_error("Out of memory");
            goto out;
        }
    }
    if (format && strcmp(format, "base64") == 0) {
        /* The raw bytes as a C string for the decoder. */
        char *text = malloc(len + 1);
        uint8_t *decoded = NULL;
        size_t decoded_len = 0;
        if (!text) {
            cli_error("Out of memory");
            goto out;
        }
        memcpy(text, bytes, len);
        text[len] = 0;
        int r = base64_decode(text, &decoded, &decoded_len);
        explicit_bzero(text, len);
        free(text);
        if (r < 0) {
            goto out;
        }
        explicit_bzero(bytes, len);
        free(bytes);
        bytes = decoded;
        len = decoded_len;
    }
    if (qimg_secret_add(id, bytes, len) < 0) {
        cli_error("%s", qimg_get_error());
        goto out;
    }
    ret = 0;
out:
    if (bytes) {
        explicit_bzero(bytes, len);
        free(bytes);
    }
    free(type);
    qimg_opts_free(opts);
    return ret;
}

static int compare_desc(const void *a, const void *b)
{
    const struct qimg_opt_desc *da = a, *db = b;
    return strcmp(da->name, db->name);
}

static const char *type_label(enum qimg_opt_type t)
{
    switch (t) {
    case QIMG_OPT_BOOL:
        return "bool (on/off)";
    case QIMG_OPT_NUMBER:
        return "num";
    case QIMG_OPT_SIZE:
        return "size";
    case QIMG_OPT_STRING:
    default:
        return "str";
    }
}

int cli_print_create_help(const char *format, const char *filename)
{
    const struct qimg_opt_desc *descs =
        qimg_create_options(format, filename != NULL);
    if (!descs) {
        cli_report_library_error();
        return 1;
    }
    size_t n = 0;
    while (descs[n].name) {
        n++;
    }
    struct qimg_opt_desc *sorted = malloc((n + 1) * sizeof(*sorted));
    if (!sorted) {
        cli_error("Out of memory");
        return 1;
    }
    memcpy(sorted, descs, (n + 1) * sizeof(*sorted));
    qsort(sorted, n, sizeof(*sorted), compare_desc);
    if (filename) {
        printf("Supported options:\n");
    } else {
        printf("Supported %s options:\n", format);
    }
    for (size_t i = 0; i < n; i++) {
        char head[256];
        snprintf(head, sizeof(head), "%s=<%s>", sorted[i].name,
                 type_label(sorted[i].type));
        printf("  %-22s - %s\n", head, sorted[i].help);
    }
    free(sorted);
    if (!filename) {
        printf("\nThe protocol level may support further options.\n"
               "Specify the target filename to include those options.\n");
    }
    return 0;
}

int cli_parse_num(const char *name, const char *arg, uint64_t *out)
{
    return cli_parse_num_range(name, arg, 0, INT64_MAX, out);
}

int cli_parse_num_range(const char *name, const char *arg, uint64_t min,
                        uint64_t max, uint64_t *out)
{
    /* *out is not set when parsing fails. */
    uint64_t v;
    bool parsed = qimg_parse_size(arg, 'B', &v) == 0;
    if (!parsed || v < min || v > max) {
        if (parsed || errno == ERANGE) {
            cli_error("Invalid %s specified. Must be between %" PRIu64
                      " and %" PRIu64 ".", name, min, max);
        } else {
            cli_error("Invalid %s specified. You may use k, M, G, T, P or "
                      "E suffixes for", name);
            cli_error("kilobytes, megabytes, gigabytes, terabytes, "
                      "petabytes and exabytes.");
        }
        return -1;
    }
    *out = v;
    return 0;
}

bool cli_cache_mode_valid(const char *mode)
{
    static const char *const modes[] = {
        "none", "off", "writeback", "writethrough", "directsync", "unsafe",
    };
    for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
        if (strcmp(mode, modes[i]) == 0) {
            return true;
        }
    }
    return false;
}
