/*
 * qemu-img's progress display (-p): "    (x.xx/100%)\r" on stdout, redrawn
 * when the value moves by more than a minimum step and at 0 and 100, and
 * a newline at the end.  The value is kept in single precision and
 * accumulated the way qemu-img accumulates it, so the same steps print
 * the same numbers.
 */
#include <stdio.h>

#include "cli.h"

static struct {
    bool enabled;
    float current;
    float last_print;
    float min_skip;
} progress;

void cli_progress_init(bool enabled, float min_skip)
{
    progress.enabled = enabled;
    progress.current = 0;
    progress.last_print = 0;
    progress.min_skip = min_skip;
}

static void progress_update(float current)
{
    if (current > 100) {
        current = 100;
    }
    progress.current = current;
    if (current > progress.last_print + progress.min_skip ||
        current < progress.last_print - progress.min_skip || current == 0 ||
        current == 100) {
        progress.last_print = current;
        if (progress.enabled) {
            printf("    (%3.2f/100%%)\r", (double)current);
            fflush(stdout);
        }
    }
}

void cli_progress_step(float delta)
{
    progress_update(progress.current + delta / 100 * 100);
}

void cli_progress_set(float percent)
{
    progress_update(percent);
}

void cli_progress_end(void)
{
    if (progress.enabled) {
        printf("\n");
    }
}
