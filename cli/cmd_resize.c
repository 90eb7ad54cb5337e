/*
 * qimg resize [--object objectdef] [--image-opts] [-f fmt]
 *             [--preallocation=prealloc] [-q] [--shrink] FILE [+ | -]SIZE
 *
 * As qemu-img 7.2: the size is always the last argument and is taken off
 * before the options are parsed, so that "-1G" is a size and not an
 * option; a leading '+' or '-' makes it relative to the current size.
 * Exit status 0, or 1 on any failure.
 */
#include <errno.h>
#include <getopt.h>
#include <string.h>

#include "cli.h"

enum {
    OPT_OBJECT = 256,
    OPT_IMAGE_OPTS,
    OPT_PREALLOCATION,
    OPT_SHRINK,
};

/* QEMU's PreallocMode names. */
static bool prealloc_mode_valid(const char *mode)
{
    static const char *const modes[] = {"off", "metadata", "falloc", "full"};
    for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
        if (strcmp(mode, modes[i]) == 0) {
            return true;
        }
    }
    return false;
}

/*
 * The size argument without its sign, parsed as qemu-img parses a size
 * option (QEMU's "size" option type); -1 after the message.
 */
static int parse_resize_size(const char *text, uint64_t *out)
{
    if (qimg_parse_size(text, 'B', out) == 0) {
        return 0;
    }
    if (errno == ERANGE) {
        cli_error("Value '%s' is out of range for parameter 'size'", text);
    } else {
        cli_error("Parameter 'size' expects a non-negative number below "
                  "2^64");
        fprintf(stderr,
                "Optional suffix k, M, G, T, P or E means kilo-, "
                "mega-, giga-, tera-, peta-\nand exabytes, respectively.\n");
    }
    return -1;
}

int cmd_resize(int argc, char **argv)
{
    static const struct option long_opts[] = {
        {"help", no_argument, NULL, 'h'},
        {"object", required_argument, NULL, OPT_OBJECT},
        {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS},
        {"preallocation", required_argument, NULL, OPT_PREALLOCATION},
        {"shrink", no_argument, NULL, OPT_SHRINK},
        {NULL, 0, NULL, 0},
    };
    const char *fmt = NULL, *prealloc = "off";
    bool quiet = false, shrink = false;
    bool image_opts = false;
    int c;

    /*
     * The size comes off the end first, so getopt never sees it: a
     * negative relative size would otherwise look like an option.
     */
    if (argc < 3) {
        return cli_usage_error("Not enough arguments");
    }
    const char *size_arg = argv[--argc];

    while ((c = getopt_long(argc, argv, ":f:hq", long_opts, NULL)) != -1) {
        switch (c) {
        case 'h':
            cli_print_help();
            return 0;
        case 'f':
            fmt = optarg;
            break;
        case 'q':
            quiet = true;
            break;
        case OPT_OBJECT:
            if (cli_add_object(optarg) < 0) {
                return 1;
            }
            break;
        case OPT_IMAGE_OPTS:
            image_opts = true;
            break;
        case OPT_PREALLOCATION:
            if (!prealloc_mode_valid(optarg)) {
                cli_error("Invalid preallocation mode '%s'", optarg);
                return 1;
            }
            prealloc = optarg;
            break;
        case OPT_SHRINK:
            shrink = true;
            break;
        default:
            return cli_getopt_error(argv, c);
        }
    }
    if (optind != argc - 1) {
        return cli_usage_error("Expecting image file name and size");
    }
    struct cli_image_spec spec;
    if (cli_image_spec_get(image_opts, argv[optind], fmt, &spec) < 0) {
        return 1;
    }

    /* +N grows by N, -N shrinks by N, N is absolute. */
    int relative = 0;
    if (size_arg[0] == '+') {
        relative = 1;
        size_arg++;
    } else if (size_arg[0] == '-') {
        relative = -1;
        size_arg++;
    }
    uint64_t n;
    if (parse_resize_size(size_arg, &n) < 0) {
        return 1;
    }

    struct qimg_image *img = cli_image_spec_open(&spec, QIMG_OPEN_RDWR);
    if (!img) {
        cli_image_spec_report(&spec);
        return 1;
    }
    int status = 1;
    int64_t current = qimg_get_size(img);
    if (current < 0) {
        cli_error("Failed to inquire current image length: %s",
                  strerror(qimg_get_errno()));
        goto out;
    }
    /*
     * qemu-img computes in 64-bit two's complement: a size of 2^63 or
     * more, or a sum that wraps, comes out as not positive.
     */
    uint64_t total_bits = (uint64_t)current;
    if (relative > 0) {
        total_bits += n;
    } else if (relative < 0) {
        total_bits -= n;
    } else {
        total_bits = n;
    }
    if (total_bits == 0 || total_bits > INT64_MAX) {
        cli_error("New image size must be positive");
        goto out;
    }
    uint64_t total = total_bits;
    bool off = strcmp(prealloc, "off") == 0;
    if (total <= (uint64_t)current && !off) {
        cli_error("Preallocation can only be used for growing images");
        goto out;
    }
    if (total < (uint64_t)current && !shrink) {
        cli_error("Use the --shrink option to perform a shrink operation.");
        cli_error("warning: Shrinking an image will delete all data beyond "
                  "the shrunken image's end. Before performing such an "
                  "operation, make sure there is no important data there.");
        goto out;
    }
    if (qimg_resize(img, total, prealloc, shrink ? QIMG_RESIZE_SHRINK : 0) <
        0) {
        cli_report_library_error();
        goto out;
    }
    if (!quiet) {
        printf("Image resized.\n");
    }
    status = 0;
out:
    /* The size change must reach the disk: a failed flush is a failure. */
    if (qimg_close(img) < 0 && status == 0) {
        cli_report_library_error();
        status = 1;
    }
    return status;
}
