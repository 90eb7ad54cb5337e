/*
 * qimg amend [--object objectdef] [--image-opts] [-p] [-q] [-f fmt]
 *            [-t cache] [--force] -o options filename
 *
 * Silent on success, as qemu-img.  -o help lists the format's amend
 * options ("Amend options for 'FMT':"); with -f it needs no image.
 */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

enum {
    OPT_OBJECT = 256,
    OPT_IMAGE_OPTS,
    OPT_FORCE,
};

static int by_name(const void *a, const void *b)
{
    const struct qimg_opt_desc *da = a, *db = b;
    return strcmp(da->name, db->name);
}

static const char *type_label(enum qimg_opt_type t)
{
    switch (t) {
    case QIMG_OPT_BOOL:
        return "bool (on/off)";
    case QIMG_OPT_NUMBER:
        return "num";
    case QIMG_OPT_SIZE:
        return "size";
    case QIMG_OPT_STRING:
    default:
        return "str";
    }
}

/* qemu-img's print_amend_option_help: the list, sorted by name. */
static int print_amend_help(const char *format)
{
    const struct qimg_opt_desc *descs = qimg_amend_options(format);
    if (!descs) {
        cli_report_library_error();
        return 1;
    }
    size_t n = 0;
    while (descs[n].name) {
        n++;
    }
    struct qimg_opt_desc *sorted = malloc((n + 1) * sizeof(*sorted));
    if (!sorted) {
        cli_error("Out of memory");
        return 1;
    }
    memcpy(sorted, descs, (n + 1) * sizeof(*sorted));
    qsort(sorted, n, sizeof(*sorted), by_name);
    printf("Amend options for '%s':\n", format);
    for (size_t i = 0; i < n; i++) {
        char head[256];
        snprintf(head, sizeof(head), "%s=<%s>", sorted[i].name,
                 type_label(sorted[i].type));
        printf("  %-22s - %s\n", head, sorted[i].help);
    }
    free(sorted);
    return 0;
}

int cmd_amend(int argc, char **argv)
{
    static const struct option long_opts[] = {
        {"help", no_argument, NULL, 'h'},
        {"object", required_argument, NULL, OPT_OBJECT},
        {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS},
        {"force", no_argument, NULL, OPT_FORCE},
        {NULL, 0, NULL, 0},
    };
    const char *fmt = NULL, *cache = NULL;
    char *options = NULL;
    bool progress = false, quiet = false, force = false;
    int status = 1;
    bool image_opts = false;
    int c;

    while ((c = getopt_long(argc, argv, ":ho:f:t:pq", long_opts, NULL)) !=
           -1) {
        switch (c) {
        case 'h':
            free(options);
            cli_print_help();
            return 0;
        case 'o':
            if (cli_accumulate_options(&options, optarg) < 0) {
                goto out;
            }
            break;
        case 'f':
            fmt = optarg;
            break;
        case 't':
            cache = optarg;
            break;
        case 'p':
            progress = true;
            break;
        case 'q':
            quiet = true;
            break;
        case OPT_FORCE:
            force = true;
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
            free(options);
            return cli_getopt_error(argv, c);
        }
    }
    if (!options) {
        return cli_usage_error("Must specify options (-o)");
    }
    if (quiet) {
        progress = false;
    }
    bool help = cli_options_want_help(options);
    if (fmt && help) {
        status = print_amend_help(fmt);
        goto out;
    }
    if (optind != argc - 1) {
        cli_error("Expecting one image file name");
        goto out;
    }
    struct cli_image_spec spec;
    if (cli_image_spec_get(image_opts, argv[optind], fmt, &spec) < 0) {
        goto out;
    }
    if (cache && !cli_cache_mode_valid(cache)) {
        cli_error("Invalid cache option: %s", cache);
        goto out;
    }
    unsigned flags = QIMG_OPEN_RDWR;
    if (cache && strcmp(cache, "unsafe") == 0) {
        flags |= QIMG_OPEN_CACHE_UNSAFE;
    } else if (cache && (strcmp(cache, "none") == 0 ||
                         strcmp(cache, "off") == 0 ||
                         strcmp(cache, "directsync") == 0)) {
        flags |= QIMG_OPEN_CACHE_DIRECT;
    }
    struct qimg_image *img = cli_image_spec_open(&spec, flags);
    if (!img) {
        cli_image_spec_report(&spec);
        goto out;
    }
    if (help) {
        status = print_amend_help(qimg_get_format(img));
        qimg_close(img);
        goto out;
    }
    if (!qimg_amend_options(qimg_get_format(img))) {
        cli_report_library_error();
        qimg_close(img);
        goto out;
    }
    struct qimg_opts *opts = qimg_opts_new();
    if (!opts || qimg_opts_parse(opts, options) < 0) {
        cli_report_library_error();
        qimg_opts_free(opts);
        qimg_close(img);
        goto out;
    }
    cli_progress_init(progress, 1.0f);
    /* qemu-img shows 0% before and 100% after, whatever the format did. */
    cli_progress_set(0);
    int ret = qimg_amend(img, opts, cli_progress_cb, NULL,
                         force ? QIMG_AMEND_FORCE : 0);
    cli_progress_set(100);
    if (ret < 0) {
        cli_report_library_error();
    }
    qimg_opts_free(opts);
    if (qimg_close(img) < 0 && ret == 0) {
        cli_report_library_error();
        ret = -1;
    }
    cli_progress_end(false);
    status = ret < 0 ? 1 : 0;
out:
    free(options);
    return status;
}
