/*
 * The VMDK text descriptor [spec: The Descriptor File].  The grammar is
 * QEMU's reading of it, quirks included, since the images people convert
 * are the ones QEMU opens: keys are found by substring search, and the
 * fields of an extent line are separated by any white space, so that a
 * blank line before an extent line reads that extent twice.
 *
 * All functions are pure: they look at a NUL-terminated text only.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "formats/vmdk/vmdk.h"

/* The C locale's isspace, independent of the process locale. */
static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' ||
           c == '\r';
}

static bool line_is(const uint8_t *p, const uint8_t *end, const char *s)
{
    size_t n = strlen(s);
    return (size_t)(end - p) >= n && memcmp(p, s, n) == 0;
}

/*
 * Before the "version=N" line only comment lines and lines of spaces may
 * come (not empty lines: QEMU requires a space first).
 */
int vmdk_desc_probe(const uint8_t *buf, size_t len)
{
    const uint8_t *p = buf;
    const uint8_t *end = buf + len;
    while (p < end) {
        if (*p == '#') {
            while (p < end && *p != '\n') {
                p++;
            }
            p++;
            continue;
        }
        if (*p == ' ') {
            while (p < end && *p == ' ') {
                p++;
            }
            if (p < end && *p == '\r') {
                p++;
            }
            if (p == end || *p != '\n') {
                return 0;
            }
            p++;
            continue;
        }
        for (char v = '1'; v <= '3'; v++) {
            char lf[] = {'v', 'e', 'r', 's', 'i', 'o', 'n', '=', v, '\n', 0};
            char crlf[] = {'v', 'e', 'r', 's',  'i',  'o',
                           'n', '=', v,   '\r', '\n', 0};
            if (line_is(p, end, lf) || line_is(p, end, crlf)) {
                return 100;
            }
        }
        return 0;
    }
    return 0;
}

int vmdk_desc_get_quoted(const char *desc, const char *key, size_t max,
                         char **out)
{
    const char *p = strstr(desc, key);
    if (!p) {
        return -EINVAL;
    }
    size_t rest = strlen(p);
    size_t skip = strlen(key) + 2; /* the key, '=' and '"', unchecked */
    if (skip >= rest) {
        return -EINVAL;
    }
    p += skip;
    const char *q = strchr(p, '"');
    if (!q || (size_t)(q - p) > max) {
        return -EINVAL;
    }
    char *v = strndup(p, (size_t)(q - p));
    if (!v) {
        return -ENOMEM;
    }
    *out = v;
    return 0;
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/*
 * scanf's %x: white space, a sign, an optional 0x, hex digits; the value
 * saturates at 64 bits and is then cut to 32 (as glibc stores it).
 */
static bool scan_hex32(const char *p, uint32_t *out)
{
    while (is_space(*p)) {
        p++;
    }
    bool neg = false;
    if (*p == '+' || *p == '-') {
        neg = *p == '-';
        p++;
    }
    if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X') && hex_digit(p[2]) >= 0) {
        p += 2;
    }
    if (hex_digit(*p) < 0) {
        return false;
    }
    uint64_t v = 0;
    bool sat = false;
    for (; hex_digit(*p) >= 0; p++) {
        if (v > (UINT64_MAX >> 4)) {
            sat = true;
        }
        v = (v << 4) | (uint64_t)hex_digit(*p);
    }
    if (sat) {
        v = UINT64_MAX;
    }
    if (neg) {
        v = -v;
    }
    *out = (uint32_t)v;
    return true;
}

int vmdk_desc_get_cid(const char *desc, bool parent, uint32_t *out)
{
    const char *key = parent ? "parentCID" : "CID";
    const char *p = strstr(desc, key);
    if (!p) {
        return -EINVAL;
    }
    /* The name and one character ('=') are skipped, unchecked. */
    size_t skip = strlen(key) + 1;
    if (strlen(p) < skip) {
        return -EINVAL;
    }
    return scan_hex32(p + skip, out) ? 0 : -EINVAL;
}

int vmdk_desc_get_parent_hint(const char *desc, char **out)
{
    static const char key[] = "parentFileNameHint";
    const char *p = strstr(desc, key);
    if (!p) {
        return 0;
    }
    size_t skip = sizeof(key) + 1; /* key, '=' and '"', unchecked */
    if (strlen(p) < skip) {
        return -EINVAL;
    }
    p += skip;
    const char *q = strchr(p, '"');
    if (!q || (size_t)(q - p) > VMDK_MAX_HINT) {
        return -EINVAL;
    }
    char *v = strndup(p, (size_t)(q - p));
    if (!v) {
        return -ENOMEM;
    }
    *out = v;
    return 1;
}

/* ---- extent lines: scanf's conversions, written out ------------------ */

static const char *skip_space(const char *p)
{
    while (is_space(*p)) {
        p++;
    }
    return p;
}

/* %Ns: up to max non-space characters, at least one. */
static bool scan_word(const char **pp, char *out, size_t max)
{
    const char *p = skip_space(*pp);
    size_t n = 0;
    while (*p && !is_space(*p) && n < max) {
        out[n++] = *p++;
    }
    out[n] = '\0';
    *pp = p;
    return n > 0;
}

/* %lld: a decimal with an optional sign, saturating as strtoll does. */
static bool scan_int64(const char **pp, int64_t *out)
{
    const char *p = skip_space(*pp);
    bool neg = false;
    if (*p == '+' || *p == '-') {
        neg = *p == '-';
        p++;
    }
    if (*p < '0' || *p > '9') {
        return false;
    }
    uint64_t v = 0;
    bool sat = false;
    for (; *p >= '0' && *p <= '9'; p++) {
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10) {
            sat = true;
        } else {
            v = v * 10 + d;
        }
    }
    uint64_t lim = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    if (sat || v > lim) {
        v = lim;
    }
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    *pp = p;
    return true;
}

/* How many of the five fields of an extent line match (scanf's count). */
static int scan_extent(const char *p, struct vmdk_desc_extent *e)
{
    if (!scan_word(&p, e->access, sizeof(e->access) - 1)) {
        return 0;
    }
    if (!scan_int64(&p, &e->sectors)) {
        return 1;
    }
    if (!scan_word(&p, e->type, sizeof(e->type) - 1)) {
        return 2;
    }
    p = skip_space(p);
    if (*p != '"') {
        return 3;
    }
    p++;
    size_t n = 0;
    while (*p && *p != '\n' && *p != '\r' && *p != '"' &&
           n < VMDK_MAX_EXTENT_NAME) {
        e->name[n++] = *p++;
    }
    e->name[n] = '\0';
    if (n == 0) {
        return 3;
    }
    if (*p != '"') {
        return 4;
    }
    p++;
    return scan_int64(&p, &e->offset) ? 5 : 4;
}

static const char *next_line(const char *p)
{
    const char *nl = strchr(p, '\n');
    return nl ? nl + 1 : p + strlen(p);
}

int vmdk_desc_next_extent(const char **pos, struct vmdk_desc_extent *e)
{
    const char *p = *pos;
    const char *np = next_line(p);
    *pos = np;
    memset(e, 0, sizeof(*e));
    e->offset = -1;
    int matches = scan_extent(p, e);
    if (matches < 4 || strcmp(e->access, "RW") != 0) {
        return 0;
    }
    bool bad = false;
    if (strcmp(e->type, "FLAT") == 0) {
        bad = matches != 5 || e->offset < 0;
    } else if (strcmp(e->type, "VMFS") == 0) {
        bad = matches != 4;
        e->offset = 0;
    } else {
        bad = matches != 4;
    }
    if (bad) {
        size_t n = (size_t)(np - p);
        if (n > 0 && p[n - 1] == '\n') {
            n--;
        }
        return error_set(EINVAL, "Invalid extent line: %.*s", (int)n, p);
    }
    if (e->sectors <= 0 ||
        (strcmp(e->type, "FLAT") != 0 && strcmp(e->type, "SPARSE") != 0 &&
         strcmp(e->type, "VMFS") != 0 && strcmp(e->type, "VMFSSPARSE") != 0 &&
         strcmp(e->type, "SESPARSE") != 0)) {
        return 0;
    }
    return 1;
}
