/*
 * qimg rebase [--object objectdef] [--image-opts] [-U] [-q] [-f fmt]
 *             [-t cache] [-T src_cache] [-p] [-u] -b backing_file
 *             [-F backing_fmt] FILE
 *
 * As qemu-img 7.2: safe mode (the default) needs -b ("" removes the
 * backing file after copying its data in); -u only rewrites the header
 * (without -b it removes the backing file).  A new backing file needs
 * -F, checked when the header is changed, after the copy.  -U applies
 * to the new backing file.  Exit status 0, or 1 on any failure.
 */
#include <getopt.h>
#include <string.h>

#include "cli.h"

enum {
    OPT_OBJECT = 256,
    OPT_IMAGE_OPTS,
};

static unsigned rebase_cache_flags(const char *cache)
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

int cmd_rebase(int argc, char **argv)
{
    static const struct option long_opts[] = {
        {"help", no_argument, NULL, 'h'},
        {"object", required_argument, NULL, OPT_OBJECT},
        {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS},
        {"force-share", no_argument, NULL, 'U'},
        {NULL, 0, NULL, 0},
    };
    const char *fmt = NULL, *cache = "writeback", *src_cache = "writeback";
    const char *out_base = NULL, *out_basefmt = NULL;
    bool progress = false, quiet = false, unsafe = false, force_share = false;
    bool image_opts = false;
    int c;

    while ((c = getopt_long(argc, argv, ":hf:F:b:upt:T:qU", long_opts,
                            NULL)) != -1) {
        switch (c) {
        case 'h':
            cli_print_help();
            return 0;
        case 'f':
            fmt = optarg;
            break;
        case 'F':
            out_basefmt = optarg;
            break;
        case 'b':
            out_base = optarg;
            break;
        case 'u':
            unsafe = true;
            break;
        case 'p':
            progress = true;
            break;
        case 't':
            cache = optarg;
            break;
        case 'T':
            src_cache = optarg;
            break;
        case 'q':
            quiet = true;
            break;
        case 'U':
            force_share = true;
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
    if (!unsafe && !out_base) {
        return cli_usage_error("Must specify backing file (-b) or use "
                               "unsafe mode (-u)");
    }
    cli_progress_init(progress, 2.0f);
    cli_progress_set(0);
    if (!cli_cache_mode_valid(src_cache)) {
        cli_progress_end(false);
        cli_error("Invalid source cache option: %s", src_cache);
        return 1;
    }
    if (!cli_cache_mode_valid(cache)) {
        cli_progress_end(false);
        cli_error("Invalid cache option: %s", cache);
        return 1;
    }
    unsigned bflags = rebase_cache_flags(src_cache) &
                      QIMG_OPEN_CACHE_DIRECT;
    if (force_share) {
        bflags |= QIMG_OPEN_FORCE_SHARE;
    }
    struct cli_image_spec spec;
    if (cli_image_spec_get(image_opts, argv[optind], fmt, &spec) < 0) {
        cli_progress_end(false);
        return 1;
    }
    if (spec.no_locking) {
        cli_progress_end(false);
        cli_error("Could not open '%s': file.locking=off is supported for "
                  "read-only opens only", spec.spec);
        return 1;
    }
    struct qimg_rebase_params p = {
        .filename = spec.filename,
        .format = spec.format,
        .driver_opts = cli_image_spec_opts(&spec),
        .flags = rebase_cache_flags(cache),
        .backing_flags = bflags,
        .backing_file = out_base,
        .backing_format = out_basefmt,
        .unsafe = unsafe,
        .progress = cli_progress_cb,
    };
    int ret = qimg_rebase(&p);
    cli_progress_end(ret == 0);
    if (ret < 0) {
        cli_image_spec_report(&spec);
        return 1;
    }
    return 0;
}
