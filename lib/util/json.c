/*
 * qimg_value_to_json: the text of QEMU's qobject_to_json_pretty(), byte
 * for byte, so that "info --output=json" and friends match qemu-img.
 *
 * Layout rules (QEMU's JSON writer in pretty mode):
 *  - a container opens with '{' or '['; each member starts on a new line
 *    indented 4 spaces per open container, members are separated by ',';
 *  - a container closes on a new line indented to its own level, so an
 *    empty one prints as "[" newline indent "]";
 *  - dictionary members print as "key": value in the dictionary's
 *    iteration order (QDict order, kept by value.c);
 *  - no newline after the document.
 * String escaping (QEMU's quoted_str with mod_utf8_codepoint): " \ and
 * \b \f \n \r \t get their short escapes; other code points below 0x20 and
 * from 0x7F on are written as \uXXXX with uppercase hex, as a surrogate
 * pair above U+FFFF; each invalid UTF-8 sequence becomes one \uFFFD.
 *
 * json_compact: qobject_to_json()'s layout, one line with ", " and ": "
 * between members (QEMU's "json:{...}" file names).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "qimg/qimg.h"
#include "util/json.h"

/*
 * Growable output; failed stays set after the first allocation failure.
 * compact selects qobject_to_json()'s one-line layout instead.
 */
struct json_buf {
    bool compact;
    char *data;
    size_t len;
    size_t cap;
    bool failed;
};

static bool json_reserve(struct json_buf *b, size_t extra)
{
    if (b->failed) {
        return false;
    }
    if (extra < b->cap - b->len) {
        return true;
    }
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len <= extra) {
        if (cap > SIZE_MAX / 2) {
            b->failed = true;
            return false;
        }
        cap *= 2;
    }
    char *data = realloc(b->data, cap);
    if (!data) {
        b->failed = true;
        return false;
    }
    b->data = data;
    b->cap = cap;
    return true;
}

static void json_put(struct json_buf *b, const char *s, size_t n)
{
    if (json_reserve(b, n)) {
        memcpy(b->data + b->len, s, n);
        b->len += n;
        b->data[b->len] = '\0';
    }
}

static void json_puts(struct json_buf *b, const char *s)
{
    json_put(b, s, strlen(s));
}

static void json_putc(struct json_buf *b, char c)
{
    json_put(b, &c, 1);
}

static void json_newline(struct json_buf *b, unsigned depth)
{
    json_putc(b, '\n');
    for (unsigned i = 0; i < depth; i++) {
        json_put(b, "    ", 4);
    }
}

static void json_put_u16(struct json_buf *b, uint32_t unit)
{
    char tmp[8];

    snprintf(tmp, sizeof(tmp), "\\u%04" PRIX32, unit);
    json_puts(b, tmp);
}

/*
 * Decode one sequence of QEMU's "modified UTF-8" at s (s[0] != 0).
 * Returns the code point, or -1 for an invalid sequence, and sets *len to
 * the number of bytes it covers, following QEMU's rules exactly:
 *  - 0xFE, 0xFF and stray continuation bytes: invalid, 1 byte;
 *  - a lead byte announces 1..5 continuation bytes; if one is missing the
 *    sequence is invalid and covers the lead plus the continuations seen;
 *  - a complete sequence is invalid when overlong (except C0 80, which is
 *    U+0000), a surrogate, a noncharacter, or above U+10FFFF.
 * The terminating NUL is never a continuation byte, so this never reads
 * past the end of the string.
 */
static int32_t json_utf8_decode(const unsigned char *s, size_t *len)
{
    static const uint32_t min_cp[] = {
        0x80, 0x800, 0x10000, 0x200000, 0x4000000,
    };
    unsigned char lead = s[0];

    *len = 1;
    if (lead < 0x80) {
        return lead;
    }
    if (lead >= 0xFE || (lead & 0x40) == 0) {
        return -1;
    }

    unsigned n = 0; /* bytes in the sequence, lead included */
    unsigned char mask = 0x80;
    while (lead & mask) {
        n++;
        mask >>= 1;
    }
    uint32_t cp = lead & (mask - 1);
    for (unsigned i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80) {
            *len = i;
            return -1;
        }
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    *len = n;

    if (cp > 0x10FFFF) {
        return -1;
    }
    if ((cp >= 0xFDD0 && cp <= 0xFDEF) || (cp & 0xFFFE) == 0xFFFE) {
        return -1; /* noncharacter */
    }
    if (cp >= 0xD800 && cp <= 0xDFFF) {
        return -1; /* surrogate */
    }
    if (cp < min_cp[n - 2] && !(cp == 0 && n == 2)) {
        return -1; /* overlong */
    }
    return (int32_t)cp;
}

static void json_string(struct json_buf *b, const char *str)
{
    const unsigned char *p = (const unsigned char *)str;

    json_putc(b, '"');
    while (*p) {
        size_t len;
        int32_t cp = json_utf8_decode(p, &len);

        p += len;
        switch (cp) {
        case '"':
            json_puts(b, "\\\"");
            break;
        case '\\':
            json_puts(b, "\\\\");
            break;
        case '\b':
            json_puts(b, "\\b");
            break;
        case '\f':
            json_puts(b, "\\f");
            break;
        case '\n':
            json_puts(b, "\\n");
            break;
        case '\r':
            json_puts(b, "\\r");
            break;
        case '\t':
            json_puts(b, "\\t");
            break;
        default:
            if (cp < 0) {
                cp = 0xFFFD;
            }
            if (cp > 0xFFFF) {
                uint32_t c = (uint32_t)cp - 0x10000;
                json_put_u16(b, 0xD800 + (c >> 10));
                json_put_u16(b, 0xDC00 + (c & 0x3FF));
            } else if (cp < 0x20 || cp >= 0x7F) {
                json_put_u16(b, (uint32_t)cp);
            } else {
                json_putc(b, (char)cp);
            }
            break;
        }
    }
    json_putc(b, '"');
}

static void json_value(struct json_buf *b, const struct qimg_value *v,
                       unsigned depth)
{
    char tmp[32];
    size_t count;

    switch (qimg_value_type(v)) {
    case QIMG_VALUE_BOOL:
        json_puts(b, qimg_value_get_bool(v) ? "true" : "false");
        break;
    case QIMG_VALUE_INT:
        snprintf(tmp, sizeof(tmp), "%" PRId64, qimg_value_get_int(v));
        json_puts(b, tmp);
        break;
    case QIMG_VALUE_UINT:
        snprintf(tmp, sizeof(tmp), "%" PRIu64, qimg_value_get_uint(v));
        json_puts(b, tmp);
        break;
    case QIMG_VALUE_STRING:
        json_string(b, qimg_value_get_string(v));
        break;
    case QIMG_VALUE_LIST:
    case QIMG_VALUE_DICT: {
        bool dict = qimg_value_type(v) == QIMG_VALUE_DICT;

        json_putc(b, dict ? '{' : '[');
        count = qimg_value_count(v);
        for (size_t i = 0; i < count && !b->failed; i++) {
            if (i > 0) {
                json_puts(b, b->compact ? ", " : ",");
            }
            if (!b->compact) {
                json_newline(b, depth + 1);
            }
            if (dict) {
                json_string(b, qimg_value_key(v, i));
                json_puts(b, ": ");
            }
            json_value(b, qimg_value_item(v, i), depth + 1);
        }
        if (!b->compact) {
            json_newline(b, depth);
        }
        json_putc(b, dict ? '}' : ']');
        break;
    }
    }
}

static char *to_json(const struct qimg_value *v, bool compact)
{
    if (!v) {
        error_set(EINVAL, "No value to serialise");
        errno = EINVAL;
        return NULL;
    }

    struct json_buf b = {.compact = compact};
    json_value(&b, v, 0);
    if (b.failed || !b.data) {
        free(b.data);
        error_set(ENOMEM, "Out of memory");
        errno = ENOMEM;
        return NULL;
    }
    return b.data;
}

char *qimg_value_to_json(const struct qimg_value *v)
{
    return to_json(v, false);
}

char *json_compact(const struct qimg_value *v)
{
    return to_json(v, true);
}
