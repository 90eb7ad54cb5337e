/*
 * Progress reporting in qemu-img's format.  With -p a bar "    (P/100%)\r"
 * is redrawn when the value moves by more than a minimum step (1% for
 * convert, 2% for compare, as qemu-img), at 0 and at 100, and ends with a
 * newline.  qimg draws the bar on terminals only, so a pipe or a log file
 * stays clean.  Without the bar (no -p, or -q) each SIGUSR1 prints one
 * line "    (P/100%)\n" on stderr at the next update, as qemu-img does.
 *
 * The value is kept in single precision and accumulated the way qemu-img
 * accumulates it, so the same steps print the same numbers.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

static struct {
    bool bar;  /* -p (and not -q) */
    bool draw; /* bar, and stdout is a terminal */
    float current;
    float last_print;
    float min_skip;
} progress;

static volatile sig_atomic_t print_pending;

static void on_sigusr1(int sig)
{
    (void)sig;
    print_pending = 1;
}

static void progress_update(float current)
{
    if (current > 100) {
        current = 100;
    }
    progress.current = current;
    if (!progress.bar) {
        if (print_pending) {
            print_pending = 0;
            fprintf(stderr, "    (%3.2f/100%%)\n", (double)current);
        }
        return;
    }
    if (current > progress.last_print + progress.min_skip ||
        current < progress.last_print - progress.min_skip || current == 0 ||
        current == 100) {
        progress.last_print = current;
        if (progress.draw) {
            printf("    (%3.2f/100%%)\r", (double)current);
            fflush(stdout);
        }
    }
}

void cli_progress_init(bool bar, float min_skip)
{
    memset(&progress, 0, sizeof(progress));
    progress.bar = bar;
    progress.draw = bar && isatty(STDOUT_FILENO);
    progress.min_skip = min_skip;
    print_pending = 0;
    /*
     * The handler is installed with -p too: the signal must never end the
     * process.  SA_RESTART keeps system calls from failing with EINTR.
     */
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_sigusr1;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &sa, NULL);
}

void cli_progress_set(float percent)
{
    progress_update(percent);
}

void cli_progress_step(float delta)
{
    /* qemu-img scales the step by max/100 with max 100, in float. */
    progress_update(progress.current + delta / 100 * 100);
}

void cli_progress_cb(double percent, void *opaque)
{
    (void)opaque;
    progress_update((float)percent);
}

void cli_progress_end(bool complete)
{
    if (complete) {
        progress_update(100);
    }
    if (progress.draw) {
        printf("\n");
    }
}
