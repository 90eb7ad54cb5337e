/*
 * open_rw FILE: open a qcow2 image read-write through the public API and
 * close it again, writing nothing else, or print the error.  A dirty
 * image is repaired by the open, as QEMU's writable opens do; used by
 * tests/compat/check_repair.sh.
 */
#include <stdio.h>

#include "qimg/qimg.h"

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: open_rw FILE\n");
        return 2;
    }
    struct qimg_image *img = qimg_open(argv[1], "qcow2", QIMG_OPEN_RDWR);
    if (!img) {
        fprintf(stderr, "%s\n", qimg_get_error());
        return 1;
    }
    if (qimg_close(img) != 0) {
        fprintf(stderr, "%s\n", qimg_get_error());
        return 1;
    }
    return 0;
}
