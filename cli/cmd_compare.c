/*
 * qimg compare [--object objectdef] [--image-opts] [-f fmt] [-F fmt]
 *              [-T src_cache] [-p] [-q] [-s] [-U] filename1 filename2
 *
 * Exit status as qemu-img's: 0 identical, 1 different, 2 an image could
 * not be opened, 3 block status failed, 4 a read failed.
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>

#include "cli.h"

enum {
    OPT_OBJECT = 256,
    OPT_IMAGE_OPTS,
};

static bool quiet;

static void compare_progress(uint64_t step, uint64_t total, void *opaque)
{
    (void)opaque;
    /* [QEMU] each step adds (float)step / total * 100 percent. */
    cli_progress_step(step ? (float)step / (float)total * 100 : 0.0f);
}

static void compare_size_mismatch(void *opaque)
{
    (void)opaque;
    if (!quiet) {
        printf("Warning: Image size mismatch!\n");
    }
}

static int run_compare(const struct qimg_compare_params *params,
                       const struct cli_image_spec specs[2])
{
    struct qimg_compare_outcome out;
    if (qimg_compare(params, &out) < 0) {
        if (out.failure == QIMG_COMPARE_FAIL_OPEN && out.image == 2) {
            cli_image_spec_report(&specs[1]);
        } else {
            cli_image_specs_report(specs, 2);
        }
        return out.failure ? out.failure : 4;
    }
    const char *msg = NULL;
    switch (out.result) {
    case QIMG_COMPARE_IDENTICAL:
        if (!quiet) {
            printf("Images are identical.\n");
        }
        return 0;
    case QIMG_COMPARE_CONTENT_MISMATCH:
        msg = "Content mismatch at offset %" PRIu64 "!\n";
        break;
    case QIMG_COMPARE_SIZE_MISMATCH:
        if (!quiet) {
            printf("Strict mode: Image size mismatch!\n");
        }
        return 1;
    case QIMG_COMPARE_STATUS_MISMATCH:
        msg = "Strict mode: Offset %" PRIu64 " block status mismatch!\n";
        break;
    }
    if (!quiet) {
        printf(msg, out.offset);
    }
    return 1;
}

int cmd_compare(int argc, char **argv)
{
    static const struct option long_opts[] = {
        {"help", no_argument, NULL, 'h'},
        {"object", required_argument, NULL, OPT_OBJECT},
        {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS},
        {"force-share", no_argument, NULL, 'U'},
        {NULL, 0, NULL, 0},
    };
    const char *fmt1 = NULL, *fmt2 = NULL, *cache = NULL;
    bool progress = false, strict = false, force_share = false;
    bool image_opts = false;
    int c;

    quiet = false;
    while ((c = getopt_long(argc, argv, ":hf:F:T:pqsU", long_opts, NULL)) !=
           -1) {
        switch (c) {
        case 'h':
            cli_print_help();
            return 0;
        case 'f':
            fmt1 = optarg;
            break;
        case 'F':
            fmt2 = optarg;
            break;
        case 'T':
            cache = optarg;
            break;
        case 'p':
            progress = true;
            break;
        case 'q':
            quiet = true;
            break;
        case 's':
            strict = true;
            break;
        case 'U':
            force_share = true;
            break;
        case OPT_OBJECT:
            /* [QEMU] a bad object definition exits with status 2 here. */
            if (cli_add_object(optarg) < 0) {
                return 2;
            }
            break;
        case OPT_IMAGE_OPTS:
            image_opts = true;
            break;
        default:
            return cli_getopt_error(argv, c);
        }
    }
    /* Progress is not shown in quiet mode. */
    if (quiet) {
        progress = false;
    }
    if (optind != argc - 2) {
        return cli_usage_error("Expecting two image file names");
    }
    /*
     * qemu-img redraws compare's bar in steps of 2% and ends it even when
     * opening fails; the bar is drawn on terminals only (see progress.c).
     */
    cli_progress_init(progress, 2.0f);
    int status;
    struct cli_image_spec specs[2];
    if (cache && !cli_cache_mode_valid(cache)) {
        cli_error("Invalid source cache option: %s", cache);
        status = 2;
    } else if (cli_image_spec_get(image_opts, argv[optind], fmt1,
                                  &specs[0]) < 0 ||
               cli_image_spec_get(image_opts, argv[optind + 1], fmt2,
                                  &specs[1]) < 0) {
        status = 2;
    } else {
        bool no_lock = specs[0].no_locking || specs[1].no_locking;
        struct qimg_compare_params params = {
            .filename1 = specs[0].filename,
            .format1 = specs[0].format,
            .driver_opts1 = cli_image_spec_opts(&specs[0]),
            .filename2 = specs[1].filename,
            .format2 = specs[1].format,
            .driver_opts2 = cli_image_spec_opts(&specs[1]),
            /* file.locking=off on either: both are read without locks. */
            .flags = force_share || no_lock ? QIMG_OPEN_FORCE_SHARE : 0,
            .strict = strict,
            .progress = compare_progress,
            .size_mismatch = compare_size_mismatch,
        };
        status = run_compare(&params, specs);
    }
    cli_progress_end(false);
    return status;
}
