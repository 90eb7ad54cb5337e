/*
 * open_image FILE [FORMAT]: open an image with its whole backing chain
 * through the public API (what convert and compare will do) and print the
 * chain depth at offset 0, or the error.  Used by tests/compat/chain.sh.
 */
#include <stdio.h>

#include "qimg/qimg.h"

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: open_image FILE [FORMAT]\n");
        return 2;
    }
    struct qimg_image *img = qimg_open(argv[1], argc == 3 ? argv[2] : NULL,
                                       0);
    if (!img) {
        fprintf(stderr, "%s\n", qimg_get_error());
        return 1;
    }
    printf("opened %s, %lld bytes\n", qimg_get_format(img),
           (long long)qimg_get_size(img));
    return qimg_close(img) == 0 ? 0 : 1;
}
