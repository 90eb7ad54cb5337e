/*
 * lock_holder ro|rw FILE: open FILE with the file leaf (taking its image
 * locks), print "ready", and hold it until stdin reaches end of file.
 * Used by tests/compat/locking.sh to pit qimg's locks against QEMU's.
 * Exits 1 with the error message on stderr if the open fails.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "driver.h"
#include "qimg/qimg.h"

int main(int argc, char **argv)
{
    if (argc != 3 ||
        (strcmp(argv[1], "ro") != 0 && strcmp(argv[1], "rw") != 0)) {
        fprintf(stderr, "usage: lock_holder ro|rw FILE\n");
        return 2;
    }
    unsigned flags = strcmp(argv[1], "rw") == 0 ? IO_RDWR : 0;
    struct qimg_io *io;
    if (io_file_open(argv[2], flags, &io) < 0) {
        fprintf(stderr, "lock_holder: %s\n", qimg_get_error());
        return 1;
    }
    printf("ready\n");
    fflush(stdout);

    /* Hold the locks until whoever drives us closes our stdin. */
    char buf[256];
    for (;;) {
        ssize_t n = read(STDIN_FILENO, buf, sizeof(buf));
        if (n == 0 || (n < 0 && errno != EINTR)) {
            break;
        }
    }
    io_close(io);
    return 0;
}
