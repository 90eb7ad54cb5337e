/* Thread-local error message and errno; the public getters. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "qimg/qimg.h"

/* Long enough for any message that names two paths. */
#define ERROR_MESSAGE_MAX 4096

static __thread char error_message[ERROR_MESSAGE_MAX];
static __thread int error_errno;

static qimg_warning_fn warning_fn;
static void *warning_opaque;

static int error_vset(int errnum, bool with_strerror, const char *fmt,
                      va_list ap)
{
    int n = vsnprintf(error_message, sizeof(error_message), fmt, ap);
    if (with_strerror && n >= 0 && (size_t)n < sizeof(error_message)) {
        snprintf(error_message + n, sizeof(error_message) - (size_t)n,
                 ": %s", strerror(errnum));
    }
    error_errno = errnum;
    return -errnum;
}

int error_set(int errnum, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int ret = error_vset(errnum, false, fmt, ap);
    va_end(ap);
    return ret;
}

int error_set_errno(int errnum, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int ret = error_vset(errnum, true, fmt, ap);
    va_end(ap);
    return ret;
}

int error_prefix(int errnum, const char *fmt, ...)
{
    char prefix[ERROR_MESSAGE_MAX];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);
    if (n < 0) {
        n = 0;
    }
    /* Shift the old message right and put "prefix: " in front of it. */
    size_t plen = (size_t)n < sizeof(prefix) ? (size_t)n : sizeof(prefix) - 1;
    size_t old_len = strlen(error_message);
    size_t room = sizeof(error_message) - 1;
    if (plen + 2 > room) {
        plen = room - 2;
    }
    if (old_len > room - plen - 2) {
        old_len = room - plen - 2;
    }
    memmove(error_message + plen + 2, error_message, old_len);
    error_message[plen + 2 + old_len] = '\0';
    memcpy(error_message, prefix, plen);
    error_message[plen] = ':';
    error_message[plen + 1] = ' ';
    error_errno = errnum;
    return -errnum;
}

void error_clear(void)
{
    error_message[0] = '\0';
    error_errno = 0;
}

const char *qimg_get_error(void)
{
    return error_message;
}

int qimg_get_errno(void)
{
    return error_errno;
}

void qimg_set_warning_handler(qimg_warning_fn fn, void *opaque)
{
    warning_fn = fn;
    warning_opaque = opaque;
}

static _Thread_local bool warnings_muted;

bool warn_mute(bool mute)
{
    bool old = warnings_muted;
    warnings_muted = mute;
    return old;
}

void warn_report(const char *fmt, ...)
{
    if (!warning_fn || warnings_muted) {
        return;
    }
    char msg[ERROR_MESSAGE_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    warning_fn(msg, warning_opaque);
}
