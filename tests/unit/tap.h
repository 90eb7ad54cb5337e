/*
 * A minimal TAP producer for the unit tests: each check prints one
 * "ok N - name" or "not ok N - name" line; tap_done() prints the plan and
 * returns the exit status.
 */
#ifndef QIMG_TESTS_TAP_H
#define QIMG_TESTS_TAP_H

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static int tap_count;
static int tap_failed;

static inline void tap_ok(int cond, const char *name)
{
    tap_count++;
    if (!cond) {
        tap_failed++;
    }
    printf("%sok %d - %s\n", cond ? "" : "not ", tap_count, name);
}

#define TAP_OK(cond) tap_ok((cond) ? 1 : 0, #cond)

static inline void tap_eq_u64(uint64_t got, uint64_t want, const char *name)
{
    tap_ok(got == want, name);
    if (got != want) {
        printf("#   got %" PRIu64 ", want %" PRIu64 "\n", got, want);
    }
}

static inline void tap_eq_str(const char *got, const char *want,
                              const char *name)
{
    int same = got && want ? strcmp(got, want) == 0 : got == want;
    tap_ok(same, name);
    if (!same) {
        printf("#   got  \"%s\"\n#   want \"%s\"\n", got ? got : "(null)",
               want ? want : "(null)");
    }
}

static inline int tap_done(void)
{
    printf("1..%d\n", tap_count);
    return tap_failed ? 1 : 0;
}

#endif
