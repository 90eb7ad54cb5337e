/*
 * qimg map [--object objectdef] [--image-opts] [-f fmt]
 *          [--start-offset=offset] [--max-length=len] [--output=ofmt] [-U]
 *          filename
 *
 * Prints qemu-img 7.2's map: human rows for the data ranges, or one JSON
 * object per line.  The entries come merged from qimg_map_next().
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"

enum {
    OPT_OBJECT = 256,
    OPT_OUTPUT,
    OPT_IMAGE_OPTS,
};

static void print_json_entry(const struct qimg_map_entry *e)
{
    printf("{ \"start\": %" PRIu64 ", \"length\": %" PRIu64
           ", \"depth\": %d, \"present\": %s, \"zero\": %s, \"data\": %s",
           e->start, e->length, e->depth, e->present ? "true" : "false",
           e->zero ? "true" : "false", e->data ? "true" : "false");
    if (e->has_offset) {
        printf(", \"offset\": %" PRIu64, e->offset);
    }
    putchar('}');
}

/*
 * A human row; -1 for data qemu-img cannot place in a file.  The human
 * map only lists data that is not known to read as zero.
 */
static int print_human_entry(const struct qimg_map_entry *e)
{
    if (e->data && !e->has_offset) {
        cli_error("File contains external, encrypted or compressed "
                  "clusters.");
        return -1;
    }
    if (e->data && !e->zero) {
        printf("%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n", e->start,
               e->length, e->has_offset ? e->offset : 0,
               e->filename ? e->filename : "");
    }
    return 0;
}

int cmd_map(int argc, char **argv)
{
    static const struct option long_opts[] = {
        {"help", no_argument, NULL, 'h'},
        {"format", required_argument, NULL, 'f'},
        {"output", required_argument, NULL, OPT_OUTPUT},
        {"object", required_argument, NULL, OPT_OBJECT},
        {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS},
        {"force-share", no_argument, NULL, 'U'},
        {"start-offset", required_argument, NULL, 's'},
        {"max-length", required_argument, NULL, 'l'},
        {NULL, 0, NULL, 0},
    };
    const char *fmt = NULL;
    const char *output_arg = NULL;
    bool force_share = false;
    uint64_t start = 0;
    uint64_t max_length = 0;
    bool has_max = false;
    bool image_opts = false;
    int c;

    while ((c = getopt_long(argc, argv, ":f:s:l:hU", long_opts, NULL)) != -1) {
        switch (c) {
        case 'h':
            cli_print_help();
            return 0;
        case 'f':
            fmt = optarg;
            break;
        case 'U':
            force_share = true;
            break;
        case OPT_OUTPUT:
            output_arg = optarg;
            break;
        case 's':
            if (cli_parse_num("start offset", optarg, &start) < 0) {
                return 1;
            }
            break;
        case 'l':
            if (cli_parse_num("max length", optarg, &max_length) < 0) {
                return 1;
            }
            has_max = true;
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
    if (optind != argc - 1) {
        return cli_usage_error("Expecting one image file name");
    }
    struct cli_image_spec spec;
    if (cli_image_spec_get(image_opts, argv[optind], fmt, &spec) < 0) {
        return 1;
    }
    const char *filename = spec.filename;
    enum output_format output = OUTPUT_HUMAN;
    if (output_arg && cli_parse_output(output_arg, &output) < 0) {
        return 1;
    }

    struct qimg_image *img =
        cli_image_spec_open(&spec, force_share ? QIMG_OPEN_FORCE_SHARE : 0);
    if (!img) {
        cli_image_spec_report(&spec);
        return 1;
    }
    if (output == OUTPUT_HUMAN) {
        printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
    } else {
        putchar('[');
    }
    int status = 0;
    int64_t size = qimg_get_size(img);
    if (size < 0) {
        cli_error("Failed to get size for '%s'", filename);
        qimg_close(img);
        return 1;
    }
    /*
     * [QEMU] the end is start + max length in signed 64-bit arithmetic:
     * a sum past INT64_MAX wraps to a negative end and maps nothing.
     */
    bool nothing = false;
    uint64_t end = (uint64_t)size;
    if (has_max) {
        uint64_t sum = start + max_length;
        if (sum > INT64_MAX) {
            nothing = true;
        } else if (sum < end) {
            end = sum;
        }
    }
    struct qimg_map_entry e;
    uint64_t off = start;
    bool any = false;
    while (!nothing && off < end) {
        int ret = qimg_map_next(img, off, end, &e);
        if (ret < 0) {
            int err = qimg_get_errno() ? qimg_get_errno() : EIO;
            cli_error("Could not read file metadata: %s", strerror(err));
            status = 1;
            break;
        }
        if (ret == 0) {
            break;
        }
        any = true;
        off = e.start + e.length;
        if (output == OUTPUT_JSON) {
            print_json_entry(&e);
            if (off < end) {
                puts(",");
            }
        } else if (print_human_entry(&e) < 0) {
            status = 1;
            break;
        }
    }
    if (!any && status == 0) {
        /* [QEMU] an empty window prints one entry of length 0. */
        memset(&e, 0, sizeof(e));
        e.start = start;
        if (output == OUTPUT_JSON) {
            print_json_entry(&e);
        }
    }
    if (status == 0 && output == OUTPUT_JSON) {
        puts("]");
    }
    qimg_close(img);
    return status;
}
