/*
 * Progress reporting as qemu-img does it: with -p a bar redrawn in place
 * ("    (P/100%)\r") whenever it moves by more than 1%; without -p (or with
 * -q) one line "    (P/100%)\n" on stderr at the next update after each
 * SIGUSR1.  qimg draws the bar on terminals only: a pipe or a log file
 * gets no \r noise.
 */
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

static struct {
    bool bar;   /* -p (and not -q) */
    bool draw;  /* bar and stdout is a terminal */
    double last;
    double current;
} progress;

static volatile sig_atomic_t print_pending;

static void on_sigusr1(int sig)
{
    (void)sig;
    print_pending = 1;
}

void cli_progress_init(bool bar)
{
    memset(&progress, 0, sizeof(progress));
    progress.bar = bar;
    progress.draw = bar && isatty(STDOUT_FILENO);
    print_pending = 0;
    /*
     * The handler is installed with -p too, as the signal must never end
     * the process; it only prints when the bar is off.  SA_RESTART keeps
     * the copy's system calls from failing with EINTR.
     */
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_sigusr1;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &sa, NULL);
    if (progress.draw) {
        cli_progress_print(0.0, true);
    }
}

void cli_progress_print(double percent, bool force)
{
    progress.current = percent;
    if (progress.draw) {
        if (force || percent > progress.last + 1.0 ||
            percent < progress.last - 1.0 || percent == 100.0) {
            progress.last = percent;
            printf("    (%3.2f/100%%)\r", percent);
            fflush(stdout);
        }
    } else if (!progress.bar && print_pending) {
        print_pending = 0;
        fprintf(stderr, "    (%3.2f/100%%)\n", percent);
    }
}

void cli_progress_cb(double percent, void *opaque)
{
    (void)opaque;
    cli_progress_print(percent, false);
}

void cli_progress_end(bool ok)
{
    if (ok) {
        cli_progress_print(100.0, true);
    }
    if (progress.draw) {
        printf("\n");
    }
}
