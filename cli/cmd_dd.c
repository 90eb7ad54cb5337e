/*
 * qimg dd [--image-opts] [-U] [-f fmt] [-O output_fmt] [bs=block_size]
 *         [count=blocks] [skip=blocks] if=input of=output
 *
 * qemu-img 7.2's operands: KEY=VALUE words after the options, read in
 * order, the first bad one failing at once (no usage hint); a repeated
 * operand replaces the earlier value.  Then qimg_dd does the work.
 */
#include <getopt.h>
#include <stdint.h>
#include <string.h>

#include "cli.h"

enum {
    OPT_OBJECT = 256,
    OPT_IMAGE_OPTS,
};

#define DEFAULT_BLOCK_SIZE 512

struct dd_operands {
    const char *input;
    const char *output;
    uint64_t bs;
    bool has_count;
    uint64_t count;
    uint64_t skip;
};

/* One KEY=VALUE operand; -1 after printing qemu-img's message. */
static int parse_operand(const char *arg, struct dd_operands *ops)
{
    const char *eq = strchr(arg, '=');
    size_t klen = eq ? (size_t)(eq - arg) : strlen(arg);
    if (!eq) {
        cli_error("unrecognized operand %s", arg);
        return -1;
    }
    const char *val = eq + 1;
    if (klen == 2 && strncmp(arg, "bs", 2) == 0) {
        return cli_parse_num_range("bs", val, 1, QIMG_DD_MAX_BLOCK_SIZE,
                                   &ops->bs);
    }
    if (klen == 5 && strncmp(arg, "count", 5) == 0) {
        ops->has_count = true;
        return cli_parse_num_range("count", val, 0, INT64_MAX, &ops->count);
    }
    if (klen == 4 && strncmp(arg, "skip", 4) == 0) {
        return cli_parse_num_range("skip", val, 0, INT64_MAX, &ops->skip);
    }
    if (klen == 2 && strncmp(arg, "if", 2) == 0) {
        ops->input = val;
        return 0;
    }
    if (klen == 2 && strncmp(arg, "of", 2) == 0) {
        ops->output = val;
        return 0;
    }
    cli_error("unrecognized operand %.*s", (int)klen, arg);
    return -1;
}

int cmd_dd(int argc, char **argv)
{
    static const struct option long_opts[] = {
        {"help", no_argument, NULL, 'h'},
        {"object", required_argument, NULL, OPT_OBJECT},
        {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS},
        {"force-share", no_argument, NULL, 'U'},
        {NULL, 0, NULL, 0},
    };
    const char *fmt = NULL;
    const char *out_fmt = "raw";
    bool force_share = false;
    struct dd_operands ops = {.bs = DEFAULT_BLOCK_SIZE};
    bool image_opts = false;
    int c;

    while ((c = getopt_long(argc, argv, ":hf:O:U", long_opts, NULL)) != -1) {
        switch (c) {
        case 'h':
            cli_print_help();
            return 0;
        case 'f':
            fmt = optarg;
            break;
        case 'O':
            out_fmt = optarg;
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
    for (int i = optind; i < argc; i++) {
        if (parse_operand(argv[i], &ops) < 0) {
            return 1;
        }
    }
    if (!ops.input || !ops.output) {
        cli_error("Must specify both input and output files");
        return 1;
    }

    /* [QEMU] --image-opts is for the input; the output is a file name. */
    struct cli_image_spec spec;
    if (cli_image_spec_get(image_opts, ops.input, fmt, &spec) < 0) {
        return 1;
    }
    struct qimg_dd_params params = {
        .input = spec.filename,
        .input_format = spec.format,
        .input_driver_opts = cli_image_spec_opts(&spec),
        .input_flags = cli_image_spec_flags(
            &spec, force_share ? QIMG_OPEN_FORCE_SHARE : 0),
        .output = ops.output,
        .output_format = out_fmt,
        .block_size = ops.bs,
        .has_count = ops.has_count,
        .count = ops.count,
        .skip = ops.skip,
    };
    struct qimg_dd_result res;
    int ret = qimg_dd(&params, &res);
    /* Printed where qemu-img prints it: after creation, before any copy. */
    if (res.skip_past_end) {
        cli_error("%s: cannot skip to specified offset", ops.input);
    }
    if (ret < 0) {
        cli_image_spec_report(&spec);
        return 1;
    }
    return 0;
}
