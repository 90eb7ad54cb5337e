/*
 * qimg measure [--output=ofmt] [-O output_fmt] [-o options]
 *              [--size N | [--object objectdef] [--image-opts] [-f fmt]
 *              [-l snapshot_param] filename]
 *
 * Prints the size a new image would need, as qemu-img 7.2 does; the
 * numbers come from qimg_measure().
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#define INVALID_OPTIONS "Invalid options for file format '"

enum {
    OPT_OBJECT = 256,
    OPT_OUTPUT,
    OPT_IMAGE_OPTS,
    OPT_SIZE,
};

static int print_result(const struct qimg_measure_result *r,
                        enum output_format output)
{
    if (output == OUTPUT_HUMAN) {
        printf("required size: %" PRIu64 "\n", r->required);
        printf("fully allocated size: %" PRIu64 "\n", r->fully_allocated);
        if (r->has_bitmaps) {
            printf("bitmaps size: %" PRIu64 "\n", r->bitmaps);
        }
        return 0;
    }
    struct qimg_value *v = qimg_measure_result_to_value(r);
    if (!v) {
        cli_error("Out of memory");
        return -1;
    }
    int ret = print_json_value(v);
    qimg_value_free(v);
    return ret;
}

int cmd_measure(int argc, char **argv)
{
    static const struct option long_opts[] = {
        {"help", no_argument, NULL, 'h'},
        {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS},
        {"object", required_argument, NULL, OPT_OBJECT},
        {"output", required_argument, NULL, OPT_OUTPUT},
        {"size", required_argument, NULL, OPT_SIZE},
        {"force-share", no_argument, NULL, 'U'},
        {NULL, 0, NULL, 0},
    };
    const char *fmt = NULL;
    const char *out_fmt = "raw";
    struct snapshot_opts sn_opts = {0};
    bool force_share = false;
    bool image_opts = false;
    char *options = NULL;
    struct qimg_opts *opts = NULL;
    enum output_format output = OUTPUT_HUMAN;
    uint64_t size = 0;
    bool has_size = false;
    int status = 1;
    int c;

    /*
     * [QEMU] measure lets getopt report a bad option on stderr, then
     * prints the help and succeeds.
     */
    opterr = 1;
    while ((c = getopt_long(argc, argv, "hf:O:o:l:U", long_opts, NULL)) !=
           -1) {
        switch (c) {
        case 'h':
        case '?':
            cli_print_help();
            status = 0;
            goto out;
        case 'f':
            fmt = optarg;
            break;
        case 'O':
            out_fmt = optarg;
            break;
        case 'o':
            if (cli_accumulate_options(&options, optarg) < 0) {
                goto out;
            }
            break;
        case 'l':
            if (cli_snapshot_arg(&sn_opts, optarg) < 0) {
                goto out;
            }
            break;
        case 'U':
            force_share = true;
            break;
        case OPT_OBJECT:
            if (cli_add_object(optarg) < 0) {
                goto out;
            }
            break;
        case OPT_IMAGE_OPTS:
            image_opts = true;
            break;
        case OPT_OUTPUT:
            if (cli_parse_output(optarg, &output) < 0) {
                goto out;
            }
            break;
        case OPT_SIZE:
            if (cli_parse_num("image size", optarg, &size) < 0) {
                goto out;
            }
            has_size = true;
            break;
        default:
            goto out;
        }
    }
    if (argc - optind > 1) {
        cli_error("At most one filename argument is allowed.");
        goto out;
    }
    const char *filename = optind < argc ? argv[optind] : NULL;
    if (filename && has_size) {
        cli_error("--size N cannot be used together with a filename.");
        goto out;
    }
    if (!filename && !has_size) {
        cli_error("Either --size N or one filename must be specified.");
        goto out;
    }
    if (!filename && (image_opts || fmt || cli_snapshot_given(&sn_opts))) {
        cli_error("--image-opts, -f, and -l require a filename argument.");
        goto out;
    }
    struct cli_image_spec spec = {0};
    if (filename &&
        cli_image_spec_get(image_opts, filename, fmt, &spec) < 0) {
        goto out;
    }
    if (options) {
        opts = qimg_opts_new();
        if (!opts || qimg_opts_parse(opts, options) < 0) {
            cli_report_library_error();
            goto out;
        }
    }

    struct qimg_snapshot_select sel = cli_snapshot_select(&sn_opts);
    struct qimg_measure_params p = {
        .target_format = out_fmt,
        .target_opts = opts,
        .source = spec.filename,
        .source_format = spec.format,
        .source_driver_opts = cli_image_spec_opts(&spec),
        .source_flags = cli_image_spec_flags(
            &spec, force_share ? QIMG_OPEN_FORCE_SHARE : 0),
        .source_snapshot = cli_snapshot_given(&sn_opts) ? &sel : NULL,
        .size = size,
    };
    struct qimg_measure_result r;
    if (qimg_measure(&p, &r) < 0) {
        /* qemu-img reports the option list failure as a second error. */
        const char *msg = qimg_get_error();
        const char *last = strrchr(msg, '\n');
        if (last && strncmp(last + 1, INVALID_OPTIONS,
                            strlen(INVALID_OPTIONS)) == 0) {
            cli_error("%.*s", (int)(last - msg), msg);
            cli_error("%s", last + 1);
        } else {
            cli_image_spec_report(&spec);
        }
        goto out;
    }
    status = print_result(&r, output) < 0 ? 1 : 0;
out:
    qimg_opts_free(opts);
    free(options);
    snapshot_opts_free(&sn_opts);
    return status;
}
