/* qimg create [-f fmt] [-b backing [-F fmt]] [-u] [-o opts] [-q] FILE [SIZE] */
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

enum { OPT_OBJECT = 256 };

static void size_error(void)
{
    cli_error("Invalid image size specified. You may use k, M, G, T, P or "
              "E suffixes for");
    cli_error("kilobytes, megabytes, gigabytes, terabytes, petabytes and "
              "exabytes.");
}

int cmd_create(int argc, char **argv)
{
    static const struct option long_opts[] = {
        {"help", no_argument, NULL, 'h'},
        {"object", required_argument, NULL, OPT_OBJECT},
        {NULL, 0, NULL, 0},
    };
    const char *fmt = "raw";
    const char *base = NULL, *base_fmt = NULL;
    char *options = NULL;
    bool quiet = false, unsafe = false;
    int status = 1;
    struct qimg_opts *opts = NULL;
    int c;

    while ((c = getopt_long(argc, argv, ":F:b:f:ho:qu", long_opts, NULL)) !=
           -1) {
        switch (c) {
        case 'h':
            cli_print_help();
            status = 0;
            goto out;
        case 'F':
            base_fmt = optarg;
            break;
        case 'b':
            base = optarg;
            break;
        case 'f':
            fmt = optarg;
            break;
        case 'o':
            if (cli_accumulate_options(&options, optarg) < 0) {
                goto out;
            }
            break;
        case 'q':
            quiet = true;
            break;
        case 'u':
            unsafe = true;
            break;
        case OPT_OBJECT:
            if (cli_add_object(optarg) < 0) {
                goto out;
            }
            break;
        default:
            status = cli_getopt_error(argv, c);
            goto out;
        }
    }

    /* -o help needs no file name. */
    if (cli_options_want_help(options)) {
        const char *file = optind < argc ? argv[optind] : NULL;
        status = cli_print_create_help(fmt, file);
        goto out;
    }
    if (optind >= argc) {
        status = cli_usage_error("Expecting image file name");
        goto out;
    }
    const char *filename = argv[optind++];

    const char *size_arg = NULL;
    if (optind < argc) {
        size_arg = argv[optind++];
    }
    if (optind != argc) {
        status = cli_usage_error("Unexpected argument: %s", argv[optind]);
        goto out;
    }
    uint64_t size = 0;
    if (size_arg) {
        if (qimg_parse_size(size_arg, 'B', &size) < 0) {
            if (errno == ERANGE) {
                cli_error("Invalid image size specified. Must be between 0 "
                          "and 9223372036854775807.");
            } else {
                size_error();
            }
            goto out;
        }
        if (size > INT64_MAX) {
            cli_error("Invalid image size specified. Must be between 0 and "
                      "9223372036854775807.");
            goto out;
        }
    }

    if (!qimg_format_known(fmt)) {
        cli_error("%s: Unknown file format '%s'", filename, fmt);
        goto out;
    }
    opts = qimg_opts_new();
    if (!opts) {
        cli_error("Out of memory");
        goto out;
    }
    if (options && qimg_opts_parse(opts, options) < 0) {
        cli_error("%s: %s", filename, qimg_get_error());
        goto out;
    }
    if (size_arg) {
        if (qimg_opts_get(opts, "size")) {
            cli_error("%s: The image size must be specified only once",
                      filename);
            goto out;
        }
        char text[32];
        snprintf(text, sizeof(text), "%llu", (unsigned long long)size);
        qimg_opts_set(opts, "size", text);
    }
    if (base) {
        qimg_opts_set(opts, "backing_file", base);
    }
    if (base_fmt) {
        qimg_opts_set(opts, "backing_fmt", base_fmt);
    }
    if (qimg_create_prepare(filename, fmt, opts,
                            unsafe ? QIMG_CREATE_BACKING_UNSAFE : 0) < 0) {
        const char *msg = qimg_get_error();
        if (strstr(msg, "\nDetected format of ")) {
            /* qemu-img prints this hint without a final newline. */
            fprintf(stderr, "%s: %s", PROGRAM_NAME, msg);
        } else {
            cli_error("%s", msg);
        }
        goto out;
    }
    if (!quiet) {
        char *summary = qimg_create_summary(fmt, opts);
        if (!summary) {
            cli_report_library_error();
            goto out;
        }
        printf("Formatting '%s', %s\n", filename, summary);
        fflush(stdout);
        free(summary);
    }
    if (qimg_create(filename, fmt, opts) < 0) {
        cli_error("%s", qimg_get_error());
        goto out;
    }
    status = 0;
out:
    qimg_opts_free(opts);
    free(options);
    return status;
}
