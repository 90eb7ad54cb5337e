/*
 * qimg check [--object objectdef] [--image-opts] [-q] [-f fmt]
 *            [--output=ofmt] [-r [leaks | all]] [-T src_cache] [-U] FILE
 *
 * Exit status as qemu-img's: 0 consistent, 1 the check failed, 2
 * corruptions, 3 leaks only, 63 the format has no check.
 */
#include <errno.h>
#include <getopt.h>
#include <string.h>

#include "cli.h"

/* qemu-img's exit status for a format without a check. */
#define CHECK_EXIT_UNSUPPORTED 63

enum {
    OPT_OBJECT = 256,
    OPT_OUTPUT,
    OPT_IMAGE_OPTS,
};

/* Each problem line goes to stderr as qemu-img prints it. */
static void print_problem(const char *line, unsigned kind, void *opaque)
{
    (void)opaque;
    if (kind == QIMG_CHECK_LINE_ERROR) {
        cli_error("%s", line);
    } else {
        fprintf(stderr, "%s\n", line);
    }
}

/* qemu-img's dump_human_image_check. */
static void print_check_human(const struct qimg_check_result *r)
{
    if (!(r->corruptions || r->leaks || r->check_errors)) {
        printf("No errors were found on the image.\n");
    } else {
        if (r->corruptions) {
            printf("\n%lld errors were found on the image.\n"
                   "Data may be corrupted, or further writes to the image "
                   "may corrupt it.\n",
                   (long long)r->corruptions);
        }
        if (r->leaks) {
            printf("\n%lld leaked clusters were found on the image.\n"
                   "This means waste of disk space, but no harm to data.\n",
                   (long long)r->leaks);
        }
        if (r->check_errors) {
            printf("\n%lld internal errors have occurred during the "
                   "check.\n",
                   (long long)r->check_errors);
        }
    }
    if (r->total_clusters != 0 && r->allocated_clusters != 0) {
        printf("%lld/%lld = %0.2f%% allocated, %0.2f%% fragmented, "
               "%0.2f%% compressed clusters\n",
               (long long)r->allocated_clusters, (long long)r->total_clusters,
               (double)r->allocated_clusters * 100.0 /
                   (double)r->total_clusters,
               (double)r->fragmented_clusters * 100.0 /
                   (double)r->allocated_clusters,
               (double)r->compressed_clusters * 100.0 /
                   (double)r->allocated_clusters);
    }
    if (r->image_end_offset) {
        printf("Image end offset: %lld\n", (long long)r->image_end_offset);
    }
}

int cmd_check(int argc, char **argv)
{
    static const struct option long_opts[] = {
        {"help", no_argument, NULL, 'h'},
        {"format", required_argument, NULL, 'f'},
        {"repair", required_argument, NULL, 'r'},
        {"output", required_argument, NULL, OPT_OUTPUT},
        {"object", required_argument, NULL, OPT_OBJECT},
        {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS},
        {"force-share", no_argument, NULL, 'U'},
        {NULL, 0, NULL, 0},
    };
    const char *fmt = NULL, *output_arg = NULL, *cache = NULL;
    bool quiet = false, force_share = false;
    unsigned fix = 0;
    bool image_opts = false;
    int c;

    while ((c = getopt_long(argc, argv, ":hf:r:T:qU", long_opts, NULL)) != -1) {
        switch (c) {
        case 'h':
            cli_print_help();
            return 0;
        case 'f':
            fmt = optarg;
            break;
        case 'r':
            if (strcmp(optarg, "leaks") == 0) {
                fix = QIMG_CHECK_FIX_LEAKS;
            } else if (strcmp(optarg, "all") == 0) {
                fix = QIMG_CHECK_FIX_LEAKS | QIMG_CHECK_FIX_ERRORS;
            } else {
                return cli_usage_error("Unknown option value for -r "
                                       "(expecting 'leaks' or 'all'): %s",
                                       optarg);
            }
            break;
        case OPT_OUTPUT:
            output_arg = optarg;
            break;
        case 'T':
            cache = optarg;
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
    if (optind != argc - 1) {
        return cli_usage_error("Expecting one image file name");
    }
    struct cli_image_spec spec;
    if (cli_image_spec_get(image_opts, argv[optind], fmt, &spec) < 0) {
        return 1;
    }
    /* qemu-img names the option string where it names the image. */
    const char *filename = spec.spec ? spec.spec : spec.filename;
    enum output_format output = OUTPUT_HUMAN;
    if (output_arg && cli_parse_output(output_arg, &output) < 0) {
        return 1;
    }
    if (cache && !cli_cache_mode_valid(cache)) {
        cli_error("Invalid source cache option: %s", cache);
        return 1;
    }
    unsigned flags = QIMG_OPEN_CHECK;
    if (force_share) {
        flags |= QIMG_OPEN_FORCE_SHARE;
    }
    if (fix) {
        flags |= QIMG_OPEN_RDWR;
    }
    if (fix && force_share) {
        /* qemu-img's words for -U with a writable open. */
        cli_error("Could not open '%s': force-share=on can only be used "
                  "with read-only images",
                  filename);
        return 1;
    }
    struct qimg_image *img = cli_image_spec_open(&spec, flags);
    if (!img) {
        cli_image_spec_report(&spec);
        return 1;
    }
    if (!qimg_check_supported(img)) {
        cli_error("This image format does not support checks");
        qimg_close(img);
        return CHECK_EXIT_UNSUPPORTED;
    }

    struct qimg_check_result res;
    int ret = qimg_check(img, fix, print_problem, NULL, &res);
    int err = ret < 0 ? qimg_get_errno() : 0;
    if (ret < 0 && err == ENOTSUP) {
        /* qemu-img's words for any check that says ENOTSUP (vmdk -r). */
        cli_error("This image format does not support checks");
        qimg_close(img);
        return CHECK_EXIT_UNSUPPORTED;
    }
    if (ret == 0 && (res.corruptions_fixed || res.leaks_fixed)) {
        /* qemu-img checks again and reports that, with what was fixed. */
        int64_t corruptions_fixed = res.corruptions_fixed;
        int64_t leaks_fixed = res.leaks_fixed;
        if (output == OUTPUT_HUMAN && !quiet) {
            printf("The following inconsistencies were found and "
                   "repaired:\n\n"
                   "    %lld leaked clusters\n"
                   "    %lld corruptions\n\n"
                   "Double checking the fixed image now...\n",
                   (long long)leaks_fixed, (long long)corruptions_fixed);
            fflush(stdout);
        }
        ret = qimg_check(img, 0, print_problem, NULL, &res);
        err = ret < 0 ? qimg_get_errno() : 0;
        res.corruptions_fixed = corruptions_fixed;
        res.leaks_fixed = leaks_fixed;
    }
    int status = 0;
    if (ret == 0 && !quiet) {
        if (output == OUTPUT_HUMAN) {
            print_check_human(&res);
        } else {
            struct qimg_value *v = qimg_check_result_to_value(
                &res, filename, qimg_get_format(img));
            if (!v) {
                cli_error("Out of memory");
                status = 1;
            } else if (print_json_value(v) < 0) {
                status = 1;
            }
            qimg_value_free(v);
        }
    }
    qimg_close(img);
    if (status != 0) {
        return status;
    }
    if (ret < 0 && err == ENOTSUP) {
        /* A format that checks but cannot repair (vdi), as qemu-img. */
        cli_error("This image format does not support checks");
        return CHECK_EXIT_UNSUPPORTED;
    }
    if (ret < 0 || res.check_errors) {
        /* qemu-img names only the errno; the detail is in the library's. */
        if (ret < 0) {
            cli_error("Check failed: %s", strerror(err));
        } else {
            cli_error("Check failed");
        }
        return 1;
    }
    if (res.corruptions) {
        return 2;
    }
    return res.leaks ? 3 : 0;
}
