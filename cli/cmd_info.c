/* qimg info [-f fmt] [--output=human|json] [--backing-chain] [-U] FILE */
#include <getopt.h>
#include <stdlib.h>

#include "cli.h"

enum {
    OPT_OBJECT = 256,
    OPT_OUTPUT,
    OPT_BACKING_CHAIN,
    OPT_IMAGE_OPTS,
};

static int print_infos(struct qimg_image_info **list, int count,
                       bool chain, enum output_format output)
{
    if (output == OUTPUT_HUMAN) {
        for (int i = 0; i < count; i++) {
            if (i > 0) {
                putchar('\n');
            }
            print_image_info_human(list[i]);
        }
        return 0;
    }
    struct qimg_value *v = NULL;
    if (chain) {
        v = qimg_value_new_list();
        for (int i = 0; v && i < count; i++) {
            struct qimg_value *item = qimg_image_info_to_value(list[i]);
            if (!item || qimg_value_list_append(v, item) < 0) {
                qimg_value_free(v);
                v = NULL;
            }
        }
    } else {
        v = qimg_image_info_to_value(list[0]);
    }
    if (!v) {
        cli_error("Out of memory");
        return 1;
    }
    int ret = print_json_value(v);
    qimg_value_free(v);
    return ret < 0 ? 1 : 0;
}

int cmd_info(int argc, char **argv)
{
    static const struct option long_opts[] = {
        {"help", no_argument, NULL, 'h'},
        {"format", required_argument, NULL, 'f'},
        {"output", required_argument, NULL, OPT_OUTPUT},
        {"backing-chain", no_argument, NULL, OPT_BACKING_CHAIN},
        {"object", required_argument, NULL, OPT_OBJECT},
        {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS},
        {"force-share", no_argument, NULL, 'U'},
        {NULL, 0, NULL, 0},
    };
    const char *fmt = NULL;
    const char *output_arg = NULL;
    bool chain = false, force_share = false, image_opts = false;
    int c;

    while ((c = getopt_long(argc, argv, ":f:hU", long_opts, NULL)) != -1) {
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
        case OPT_BACKING_CHAIN:
            chain = true;
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
    enum output_format output = OUTPUT_HUMAN;
    if (output_arg && cli_parse_output(output_arg, &output) < 0) {
        return 1;
    }
    struct cli_image_spec spec;
    if (cli_image_spec_get(image_opts, argv[optind], fmt, &spec) < 0) {
        return 1;
    }

    unsigned flags = QIMG_OPEN_NO_BACKING | QIMG_OPEN_NO_IO;
    if (force_share) {
        flags |= QIMG_OPEN_FORCE_SHARE;
    }
    flags = cli_image_spec_flags(&spec, flags);
    struct qimg_image_info **list = NULL;
    int count = -1;
    if (chain) {
        /*
         * The chain walk opens by name; the top's runtime options are
         * checked by one open of the top first.
         */
        struct qimg_image *top = cli_image_spec_opts(&spec)
                                     ? cli_image_spec_open(&spec, flags)
                                     : NULL;
        if (top || !cli_image_spec_opts(&spec)) {
            count = qimg_get_chain_info(spec.filename, spec.format, flags,
                                        &list);
        }
        /* The top as opened with its options (a json: name with a key). */
        struct qimg_image_info *top_info =
            count > 0 && top ? qimg_get_info(top) : NULL;
        if (top_info) {
            qimg_image_info_free(list[0]);
            list[0] = top_info;
        }
        qimg_close(top);
    } else {
        struct qimg_image *img = cli_image_spec_open(&spec, flags);
        struct qimg_image_info *info = img ? qimg_get_info(img) : NULL;
        qimg_close(img);
        list = info ? malloc(sizeof(*list)) : NULL;
        if (list) {
            list[0] = info;
            count = 1;
        } else if (info) {
            qimg_image_info_free(info);
            cli_error("Out of memory");
            return 1;
        }
    }
    if (count < 0) {
        cli_image_spec_report(&spec);
        free(list);
        return 1;
    }
    int status = print_infos(list, count, chain, output);
    for (int i = 0; i < count; i++) {
        qimg_image_info_free(list[i]);
    }
    free(list);
    return status;
}
