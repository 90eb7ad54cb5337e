/*
 * Error recording.  The message is stored once, where the problem is
 * found, in thread-local storage; outer layers may prepend context.  The
 * functions return -errnum so a caller can write
 *     return error_set(EINVAL, "bad thing %d", x);
 */
#ifndef QIMG_CORE_ERROR_H
#define QIMG_CORE_ERROR_H

#include <stdarg.h>
#include <stdbool.h>

__attribute__((format(printf, 2, 3)))
int error_set(int errnum, const char *fmt, ...);
/* As qimg_error, with ": strerror(errnum)" appended. */
__attribute__((format(printf, 2, 3)))
int error_set_errno(int errnum, const char *fmt, ...);
/* Prepend "context: " to the current message; returns -errnum. */
__attribute__((format(printf, 2, 3)))
int error_prefix(int errnum, const char *fmt, ...);
void error_clear(void);
/* Pass a warning to the registered handler. */
__attribute__((format(printf, 1, 2)))
void warn_report(const char *fmt, ...);
/*
 * Drop this thread's warnings while mute is set (an image opened a second
 * time must not warn twice).  Returns the previous setting.
 */
bool warn_mute(bool mute);

#endif
