/*
 * qimg convert [options] SOURCE... TARGET: option parsing with qemu-img
 * 7.2's checks and messages (in its order), then qimg_convert, which makes
 * the checks that need the images.  Unsupported features fail with one
 * line.
 */
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

enum {
    OPT_OBJECT = 256,
    OPT_IMAGE_OPTS,
    OPT_TARGET_IMAGE_OPTS,
    OPT_SALVAGE,
    OPT_TARGET_IS_ZERO,
    OPT_BITMAPS,
    OPT_SKIP_BROKEN,
    OPT_COMPRESSION_LEVEL,
    OPT_COMPRESSOR,
};

#define MAX_SPARSE (16u * 1024 * 1024)
#define TARGET_IS_ZERO_BACKING                                               \
    "Cannot use --target-is-zero when the destination image has a backing " \
    "file"
#define MAX_COROUTINES 16

/*
 * -t/-T: qemu-img's cache modes.  For the target, "unsafe" skips the
 * flush when it is closed; "none" ("off") and "directsync" write around
 * the page cache (O_DIRECT) where possible; all but "unsafe" flush at the
 * end.  -T is checked and otherwise ignored: sources are read through
 * the page cache.
 */

int cmd_convert(int argc, char **argv)
{
    static const struct option long_opts[] = {
        {"help", no_argument, NULL, 'h'},
        {"object", required_argument, NULL, OPT_OBJECT},
        {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS},
        {"force-share", no_argument, NULL, 'U'},
        {"target-image-opts", no_argument, NULL, OPT_TARGET_IMAGE_OPTS},
        {"salvage", no_argument, NULL, OPT_SALVAGE},
        {"target-is-zero", no_argument, NULL, OPT_TARGET_IS_ZERO},
        {"bitmaps", no_argument, NULL, OPT_BITMAPS},
        {"skip-broken-bitmaps", no_argument, NULL, OPT_SKIP_BROKEN},
        /* qimg extensions (qemu-img has neither). */
        {"compression-level", required_argument, NULL,
         OPT_COMPRESSION_LEVEL},
        {"compressor", required_argument, NULL, OPT_COMPRESSOR},
        {NULL, 0, NULL, 0},
    };
    const char *fmt = NULL, *out_fmt = NULL, *out_base = NULL;
    const char *backing_fmt = NULL;
    const char *src_cache = NULL;
    /* qemu-img convert's default target cache mode. */
    const char *cache = "unsafe";
    struct snapshot_opts sn_opts = {0};
    struct cli_image_spec *specs = NULL;
    const char **src_names = NULL, **src_fmts = NULL;
    const struct qimg_opts **src_dopts = NULL;
    char *options = NULL;
    bool copy_range = false, compress = false, explicit_sparse = false;
    bool progress = false, quiet = false, no_create = false;
    bool force_share = false, image_opts = false, tgt_image_opts = false;
    bool salvage = false, target_is_zero = false, bitmaps = false;
    bool skip_broken = false;
    uint64_t sparse = 4096;
    unsigned parallel = 0;
    bool out_of_order = false;
    int compression_level = 0;
    unsigned compression_flags = 0;
    struct qimg_opts *opts = NULL;
    int status = 1;
    int c;

    while ((c = getopt_long(argc, argv, ":hf:O:B:CcF:o:l:S:pt:T:qnm:WUr:",
                            long_opts, NULL)) != -1) {
        switch (c) {
        case 'h':
            cli_print_help();
            status = 0;
            goto out;
        case 'f':
            fmt = optarg;
            break;
        case 'O':
            out_fmt = optarg;
            break;
        case 'B':
            out_base = optarg;
            break;
        case 'C':
            copy_range = true;
            break;
        case 'c':
            compress = true;
            break;
        case 'F':
            backing_fmt = optarg;
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
        case 'S':
            if (cli_parse_num("buffer size for sparse output", optarg,
                          &sparse) < 0) {
                goto out;
            }
            if (sparse % 512 != 0 || sparse > MAX_SPARSE) {
                cli_error("Invalid buffer size for sparse output specified. "
                          "Valid sizes are multiples of 512 up to %u. "
                          "Select 0 to disable sparse detection (fully "
                          "allocates output).", MAX_SPARSE);
                goto out;
            }
            explicit_sparse = true;
            break;
        case 'p':
            progress = true;
            break;
        case 't':
            cache = optarg;
            break;
        case 'T':
            src_cache = optarg;
            break;
        case 'q':
            quiet = true;
            break;
        case 'n':
            no_create = true;
            break;
        case 'm': {
            char *end;
            errno = 0;
            long n = strtol(optarg, &end, 0);
            if (errno || end == optarg || *end || n < 1 ||
                n > MAX_COROUTINES) {
                cli_error("Invalid number of coroutines. Allowed number of "
                          "coroutines is between 1 and %d", MAX_COROUTINES);
                goto out;
            }
            parallel = (unsigned)n;
            break;
        }
        case 'W':
            out_of_order = true;
            break;
        case 'U':
            force_share = true;
            break;
        case 'r': {
            uint64_t rate;
            if (cli_parse_num("rate limit", optarg, &rate) < 0) {
                goto out;
            }
            break;
        }
        case OPT_OBJECT:
            if (cli_add_object(optarg) < 0) {
                goto out;
            }
            break;
        case OPT_IMAGE_OPTS:
            image_opts = true;
            break;
        case OPT_TARGET_IMAGE_OPTS:
            tgt_image_opts = true;
            break;
        case OPT_SALVAGE:
            salvage = true;
            break;
        case OPT_TARGET_IS_ZERO:
            target_is_zero = true;
            break;
        case OPT_BITMAPS:
            bitmaps = true;
            break;
        case OPT_SKIP_BROKEN:
            skip_broken = true;
            break;
        case OPT_COMPRESSION_LEVEL: {
            /* The range depends on the target: qimg_convert checks it. */
            char *end;
            errno = 0;
            long n = strtol(optarg, &end, 10);
            if (errno || end == optarg || *end || n < 1 || n > 100) {
                cli_error("Invalid compression level '%s'", optarg);
                goto out;
            }
            compression_level = (int)n;
            break;
        }
        case OPT_COMPRESSOR:
            if (strcmp(optarg, "libdeflate") == 0) {
                compression_flags = QIMG_COMPRESS_LIBDEFLATE;
            } else if (strcmp(optarg, "zlib") == 0 ||
                       strcmp(optarg, "default") == 0) {
                compression_flags = 0;
            } else {
                cli_error("Invalid compressor '%s' (zlib or libdeflate)",
                          optarg);
                goto out;
            }
            break;
        default:
            status = cli_getopt_error(argv, c);
            goto out;
        }
    }
    if (!out_fmt && !tgt_image_opts) {
        out_fmt = "raw";
    }

    if (skip_broken && !bitmaps) {
        cli_error("Use of --skip-broken-bitmaps requires --bitmaps");
        goto out;
    }
    if (compress && copy_range) {
        cli_error("Cannot enable copy offloading when -c is used");
        goto out;
    }
    if (explicit_sparse && copy_range) {
        cli_error("Cannot enable copy offloading when -S is used");
        goto out;
    }
    if (copy_range && salvage) {
        cli_error("Cannot use copy offloading in salvaging mode");
        goto out;
    }
    if (tgt_image_opts && !no_create) {
        cli_error("--target-image-opts requires use of -n flag");
        goto out;
    }
    if (no_create && options) {
        cli_error("-o has no effect when skipping image creation");
        goto out;
    }
    if (target_is_zero && !no_create) {
        cli_error("--target-is-zero requires use of -n flag");
        goto out;
    }

    int nb_sources = argc - optind - 1;
    const char *target = nb_sources >= 1 ? argv[argc - 1] : NULL;
    if (cli_options_want_help(options)) {
        if (!out_fmt) {
            cli_error("Option help requires a format be specified");
            goto out;
        }
        status = cli_print_create_help(out_fmt, target);
        goto out;
    }
    if (nb_sources < 1) {
        cli_error("Must specify image file name");
        goto out;
    }
    if (src_cache && !cli_cache_mode_valid(src_cache)) {
        cli_error("Invalid source cache option: %s", src_cache);
        goto out;
    }
    /* Only a bare -l is refused; snapshot.… applies to the first. */
    if (sn_opts.bare && !sn_opts.have_opts && nb_sources > 1) {
        cli_error("No support for concatenating multiple snapshot");
        goto out;
    }
    if (cache && !cli_cache_mode_valid(cache)) {
        cli_error("Invalid cache option: %s", cache);
        goto out;
    }

    /* Features the copy engine does not have yet: one clear line each. */
    const char *missing = NULL;
    if (copy_range) {
        missing = "-C (copy offloading)";
    } else if (salvage) {
        missing = "--salvage";
    }
    if (missing) {
        cli_error("convert: %s is not supported yet", missing);
        goto out;
    }
    if (options) {
        opts = qimg_opts_new();
        if (!opts) {
            cli_error("Out of memory");
            goto out;
        }
        if (qimg_opts_parse(opts, options) < 0) {
            cli_report_library_error();
            goto out;
        }
    }

    /*
     * The images: specs[0..nb_sources-1] the sources, specs[nb_sources]
     * the target.  qemu-img opens the sources first, so -f with
     * --image-opts fails before -O with --target-image-opts.
     */
    specs = calloc((size_t)nb_sources + 1, sizeof(*specs));
    src_names = calloc((size_t)nb_sources, sizeof(*src_names));
    src_fmts = calloc((size_t)nb_sources, sizeof(*src_fmts));
    src_dopts = calloc((size_t)nb_sources, sizeof(*src_dopts));
    if (!specs || !src_names || !src_fmts || !src_dopts) {
        cli_error("Out of memory");
        goto out;
    }
    bool src_no_lock = false;
    for (int i = 0; i < nb_sources; i++) {
        if (cli_image_spec_get(image_opts, argv[optind + i], fmt,
                               &specs[i]) < 0) {
            goto out;
        }
        src_names[i] = specs[i].filename;
        src_fmts[i] = specs[i].format;
        src_dopts[i] = cli_image_spec_opts(&specs[i]);
        src_no_lock |= specs[i].no_locking;
    }
    struct cli_image_spec *tspec = &specs[nb_sources];
    if (tgt_image_opts) {
        if (cli_image_spec_get(true, target, out_fmt, tspec) < 0) {
            goto out;
        }
        if (tspec->no_locking) {
            cli_error("Could not open '%s': file.locking=off is supported "
                      "for read-only opens only", tspec->spec);
            goto out;
        }
    } else if (cli_image_spec_plain(target, out_fmt, tspec) < 0) {
        goto out;
    }

    struct qimg_snapshot_select sel = cli_snapshot_select(&sn_opts);
    unsigned target_flags = 0;
    if (strcmp(cache, "unsafe") == 0) {
        target_flags |= QIMG_OPEN_CACHE_UNSAFE;
    } else if (strcmp(cache, "none") == 0 || strcmp(cache, "off") == 0 ||
               strcmp(cache, "directsync") == 0) {
        target_flags |= QIMG_OPEN_CACHE_DIRECT;
    }
    cli_progress_init(progress && !quiet, 1.0f);
    cli_progress_set(0);
    struct qimg_convert_params params = {
        .sources = src_names,
        .nb_sources = (size_t)nb_sources,
        .source_format = image_opts ? NULL : fmt,
        .source_formats = image_opts ? src_fmts : NULL,
        .source_driver_opts = image_opts ? src_dopts : NULL,
        /* file.locking=off on any source: all are read without locks. */
        .source_flags = force_share || src_no_lock ? QIMG_OPEN_FORCE_SHARE
                                                   : 0,
        .source_snapshot = cli_snapshot_given(&sn_opts) ? &sel : NULL,
        .target_flags = target_flags,
        .target = tspec->filename,
        .target_format = tspec->format,
        .target_driver_opts = cli_image_spec_opts(tspec),
        .target_probe = tgt_image_opts,
        .target_opts = opts,
        .sparse_size = sparse,
        .no_create = no_create,
        .target_is_zero = target_is_zero,
        .progress = cli_progress_cb,
        .progress_opaque = NULL,
        .backing_file = out_base,
        .backing_format = backing_fmt,
        .compress = compress,
        .bitmaps = bitmaps,
        .skip_broken_bitmaps = skip_broken,
        .parallel = parallel,
        .out_of_order = out_of_order,
        .compression_level = compression_level,
        .compression_flags = compression_flags,
    };
    if (qimg_convert(&params) < 0) {
        cli_progress_end(false);
        cli_image_specs_report(specs, (size_t)nb_sources + 1);
        /*
         * [QEMU] 7.2 reports this combination and still exits 0 (its
         * error path keeps the status of the last successful step).
         */
        if (target_is_zero && out_base &&
            strcmp(qimg_get_error(), TARGET_IS_ZERO_BACKING) == 0) {
            status = 0;
        }
    } else {
        cli_progress_end(true);
        status = 0;
    }
out:
    free(specs);
    free(src_names);
    free(src_fmts);
    free(src_dopts);
    snapshot_opts_free(&sn_opts);
    qimg_opts_free(opts);
    free(options);
    return status;
}
