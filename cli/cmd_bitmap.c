/*
 * qimg bitmap (--merge SOURCE | --add | --remove | --clear | --enable |
 *              --disable)... [-b source_file [-F source_fmt]]
 *              [-g granularity] [--object objectdef]
 *              [--image-opts | -f fmt] filename bitmap
 *
 * As qemu-img 7.2: the actions run in the order given, on one image
 * opened read-write; the first that fails stops the command ("Operation
 * ACTION on bitmap NAME failed: why", exit 1), keeping what the earlier
 * ones did.  --merge takes the bitmap SOURCE of the image itself, or of
 * -b source_file (opened read-only, format -F or probed).  -g is the
 * granularity of --add.  Nothing is printed on success.  Neither image's
 * backing file is opened (bitmaps never read guest data), so an overlay
 * whose backing file is missing still takes bitmaps, as with qemu-img.
 */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

enum {
    OPT_OBJECT = 256,
    OPT_IMAGE_OPTS,
    OPT_ADD,
    OPT_REMOVE,
    OPT_CLEAR,
    OPT_ENABLE,
    OPT_DISABLE,
    OPT_MERGE,
};

/* [QEMU] one per option given; a command line holds at most argc. */
struct action {
    enum qimg_bitmap_op op;
    const char *source; /* --merge */
};

static const char *const op_names[] = {
    [QIMG_BITMAP_ADD] = "add",         [QIMG_BITMAP_REMOVE] = "remove",
    [QIMG_BITMAP_CLEAR] = "clear",     [QIMG_BITMAP_ENABLE] = "enable",
    [QIMG_BITMAP_DISABLE] = "disable", [QIMG_BITMAP_MERGE] = "merge",
};

static int run_actions(struct qimg_image *img, const struct action *acts,
                       size_t n, const char *bitmap, uint64_t granularity,
                       const char *src_file, const char *src_fmt)
{
    struct qimg_image *src = NULL;
    int status = 0;
    for (size_t i = 0; i < n && status == 0; i++) {
        struct qimg_bitmap_request req = {
            .op = acts[i].op,
            .name = bitmap,
            .granularity = granularity,
            .source_name = acts[i].source,
        };
        if (req.op == QIMG_BITMAP_MERGE && src_file && !src) {
            src = qimg_open(src_file, src_fmt, QIMG_OPEN_NO_BACKING);
            if (!src) {
                cli_report_library_error();
                status = 1;
                break;
            }
        }
        req.source = req.op == QIMG_BITMAP_MERGE ? src : NULL;
        if (qimg_bitmap(img, &req) < 0) {
            cli_error("Operation %s on bitmap %s failed: %s", op_names[req.op],
                      bitmap, qimg_get_error());
            status = 1;
        }
    }
    if (src) {
        qimg_close(src);
    }
    return status;
}

int cmd_bitmap(int argc, char **argv)
{
    static const struct option long_opts[] = {
        {"help", no_argument, NULL, 'h'},
        {"object", required_argument, NULL, OPT_OBJECT},
        {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS},
        {"add", no_argument, NULL, OPT_ADD},
        {"remove", no_argument, NULL, OPT_REMOVE},
        {"clear", no_argument, NULL, OPT_CLEAR},
        {"enable", no_argument, NULL, OPT_ENABLE},
        {"disable", no_argument, NULL, OPT_DISABLE},
        {"merge", required_argument, NULL, OPT_MERGE},
        {"granularity", required_argument, NULL, 'g'},
        {"source-file", required_argument, NULL, 'b'},
        {"source-format", required_argument, NULL, 'F'},
        {"format", required_argument, NULL, 'f'},
        {NULL, 0, NULL, 0},
    };
    struct action *acts = calloc((size_t)argc, sizeof(*acts));
    if (!acts) {
        cli_error("Out of memory");
        return 1;
    }
    size_t nb = 0;
    bool add = false, merge = false, image_opts = false;
    uint64_t granularity = 0;
    const char *fmt = NULL, *src_file = NULL, *src_fmt = NULL;
    int status = 1;
    int c;
    while ((c = getopt_long(argc, argv, ":b:f:F:g:h", long_opts, NULL)) != -1) {
        switch (c) {
        case 'h':
            cli_print_help();
            status = 0;
            goto out;
        case 'b':
            src_file = optarg;
            break;
        case 'f':
            fmt = optarg;
            break;
        case 'F':
            src_fmt = optarg;
            break;
        case 'g':
            if (cli_parse_num("granularity", optarg, &granularity) < 0) {
                goto out;
            }
            break;
        case OPT_ADD:
        case OPT_REMOVE:
        case OPT_CLEAR:
        case OPT_ENABLE:
        case OPT_DISABLE:
        case OPT_MERGE:
            acts[nb].op = c == OPT_ADD      ? QIMG_BITMAP_ADD
                          : c == OPT_REMOVE ? QIMG_BITMAP_REMOVE
                          : c == OPT_CLEAR  ? QIMG_BITMAP_CLEAR
                          : c == OPT_ENABLE ? QIMG_BITMAP_ENABLE
                          : c == OPT_MERGE  ? QIMG_BITMAP_MERGE
                                            : QIMG_BITMAP_DISABLE;
            acts[nb].source = c == OPT_MERGE ? optarg : NULL;
            add = add || c == OPT_ADD;
            merge = merge || c == OPT_MERGE;
            nb++;
            break;
        case OPT_OBJECT:
            if (cli_add_object(optarg) < 0) {
                goto out;
            }
            break;
        case OPT_IMAGE_OPTS:
            image_opts = true;
            break;
        default:
            status = cli_getopt_error(argv, c);
            goto out;
        }
    }
    if (nb == 0) {
        cli_error("Need at least one of --add, --remove, --clear, --enable, "
                  "--disable, or --merge");
        goto out;
    }
    if (granularity && !add) {
        cli_error("granularity only supported with --add");
        goto out;
    }
    if (src_fmt && !src_file) {
        cli_error("-F only supported with -b");
        goto out;
    }
    if (src_file && !merge) {
        cli_error("Merge bitmap source file only supported with --merge");
        goto out;
    }
    if (optind != argc - 2) {
        cli_error("Expecting filename and bitmap name");
        goto out;
    }
    struct cli_image_spec spec;
    if (cli_image_spec_get(image_opts, argv[optind], fmt, &spec) < 0) {
        goto out;
    }
    struct qimg_image *img =
        cli_image_spec_open(&spec, QIMG_OPEN_RDWR | QIMG_OPEN_NO_BACKING);
    if (!img) {
        cli_image_spec_report(&spec);
        goto out;
    }
    status = run_actions(img, acts, nb, argv[optind + 1], granularity, src_file,
                         src_fmt);
    if (qimg_close(img) < 0 && status == 0) {
        cli_report_library_error();
        status = 1;
    }
out:
    free(acts);
    return status;
}
