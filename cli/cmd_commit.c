/*
 * qimg commit [--object objectdef] [--image-opts] [-q] [-f fmt] [-t cache]
 *             [-b base] [-r rate_limit] [-d] [-p] FILE
 *
 * As qemu-img 7.2: -b names the image of the backing chain to commit
 * into and implies -d (the layers in between no longer read as before,
 * so the top image is kept as it is); -r is checked and otherwise
 * ignored (qimg does not throttle).  "Image committed." on success.
 * Exit status 0, or 1 on any failure.
 */
#include <getopt.h>
#include <string.h>

#include "cli.h"

enum {
    OPT_OBJECT = 256,
    OPT_IMAGE_OPTS,
};

/* The QIMG_OPEN_* flags of a qemu-img cache mode (already validated). */
static unsigned commit_cache_flags(const char *cache)
{
    if (strcmp(cache, "unsafe") == 0) {
        return QIMG_OPEN_CACHE_UNSAFE;
    }
    if (strcmp(cache, "none") == 0 || strcmp(cache, "off") == 0 ||
        strcmp(cache, "directsync") == 0) {
        return QIMG_OPEN_CACHE_DIRECT;
    }
    return 0;
}

int cmd_commit(int argc, char **argv)
{
    static const struct option long_opts[] = {
        {"help", no_argument, NULL, 'h'},
        {"object", required_argument, NULL, OPT_OBJECT},
        {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS},
        {NULL, 0, NULL, 0},
    };
    /* qemu-img's default cache mode (BDRV_DEFAULT_CACHE). */
    const char *fmt = NULL, *cache = "writeback", *base = NULL;
    bool progress = false, quiet = false, drop = false;
    uint64_t rate_limit = 0;
    bool image_opts = false;
    int c;

    while ((c = getopt_long(argc, argv, ":f:ht:b:dpqr:", long_opts, NULL)) !=
           -1) {
        switch (c) {
        case 'h':
            cli_print_help();
            return 0;
        case 'f':
            fmt = optarg;
            break;
        case 't':
            cache = optarg;
            break;
        case 'b':
            base = optarg;
            drop = true; /* -b implies -d */
            break;
        case 'd':
            drop = true;
            break;
        case 'p':
            progress = true;
            break;
        case 'q':
            quiet = true;
            break;
        case 'r':
            if (cli_parse_num("rate limit", optarg, &rate_limit) < 0) {
                return 1;
            }
            break;
        case OPT_OBJECT:
            if (cli_add_object(optarg) < 0) {
                return 1;
            }
            break;
        case OPT_IMAGE_OPTS:
            image_opts = true;
            break;
        default:
            return cli_getopt_error(argv, c);
        }
    }
    if (quiet) {
        progress = false;
    }
    if (optind != argc - 1) {
        return cli_usage_error("Expecting one image file name");
    }
    if (!cli_cache_mode_valid(cache)) {
        cli_error("Invalid cache option: %s", cache);
        return 1;
    }
    struct cli_image_spec spec;
    if (cli_image_spec_get(image_opts, argv[optind], fmt, &spec) < 0) {
        return 1;
    }
    if (spec.no_locking) {
        cli_error("Could not open '%s': file.locking=off is supported for "
                  "read-only opens only", spec.spec);
        return 1;
    }
    struct qimg_commit_params p = {
        .filename = spec.filename,
        .format = spec.format,
        .driver_opts = cli_image_spec_opts(&spec),
        .flags = commit_cache_flags(cache),
        .base = base,
        .drop = drop,
        .progress = cli_progress_cb,
    };
    cli_progress_init(progress, 1.0f);
    cli_progress_set(0);
    int ret = qimg_commit(&p);
    cli_progress_end(ret == 0);
    if (ret < 0) {
        cli_image_spec_report(&spec);
        return 1;
    }
    if (!quiet) {
        printf("Image committed.\n");
    }
    return 0;
}
