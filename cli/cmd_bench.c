/*
 * qimg bench [-c count] [-d depth] [-f fmt] [--flush-interval=N] [-i aio]
 *            [-n] [--no-drain] [-o offset] [--pattern=N] [-q] [-s size]
 *            [-S step] [-t cache] [-w] [-U] [--image-opts] filename
 *
 * qemu-img 7.2's options, checks (in its order: each option as it comes,
 * then the file name, then the flush interval), messages and output; -q
 * does not silence the output, as in qemu-img 7.2.  qimg_bench does the
 * work.  --image-opts takes the plain form
 * "[driver=FMT,][file.driver=file,]file.filename=PATH".
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

enum {
    OPT_FLUSH_INTERVAL = 256,
    OPT_IMAGE_OPTS,
    OPT_PATTERN,
    OPT_NO_DRAIN,
};

/* qemu-img's defaults. */
#define BENCH_DEFAULT_COUNT 75000
#define BENCH_DEFAULT_DEPTH 64
#define BENCH_DEFAULT_BUFFER 4096

/*
 * An unsigned number as qemu-img reads -c, -d, --pattern and
 * --flush-interval (strtoul, any base, no suffix) that is at most max;
 * -1 if not.
 */
static int parse_uint(const char *arg, uint64_t max, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(arg, &end, 0);
    if (errno != 0 || end == arg || *end != '\0' || v > max) {
        return -1;
    }
    *out = v;
    return 0;
}

/*
 * -t: the open flags of a cache mode, and whether writes are written
 * through (a flush after each); -1 for an unknown mode.
 */
static int bench_cache_flags(const char *mode, unsigned *flags,
                             bool *write_through)
{
    *flags = 0;
    *write_through = false;
    if (strcmp(mode, "writeback") == 0) {
        return 0;
    }
    if (strcmp(mode, "none") == 0 || strcmp(mode, "off") == 0) {
        *flags = QIMG_OPEN_CACHE_DIRECT;
        return 0;
    }
    if (strcmp(mode, "directsync") == 0) {
        *flags = QIMG_OPEN_CACHE_DIRECT;
        *write_through = true;
        return 0;
    }
    if (strcmp(mode, "writethrough") == 0) {
        *write_through = true;
        return 0;
    }
    if (strcmp(mode, "unsafe") == 0) {
        *flags = QIMG_OPEN_CACHE_UNSAFE;
        return 0;
    }
    return -1;
}

/*
 * --image-opts: the file name and format from "driver=FMT,
 * file.driver=file,file.filename=PATH" (any order); the strings are
 * malloc'd.  -1 after printing qemu-img's message.
 */
static int parse_image_opts(const char *spec, char **filename, char **fmt)
{
    struct qimg_opts *opts = qimg_opts_new();
    int ret = -1;
    if (!opts) {
        cli_error("Out of memory");
        return -1;
    }
    if (qimg_opts_parse(opts, spec) < 0) {
        cli_error("Could not open '%s': %s", spec, qimg_get_error());
        goto out;
    }
    const char *driver = qimg_opts_get(opts, "driver");
    const char *file_driver = qimg_opts_get(opts, "file.driver");
    const char *path = qimg_opts_get(opts, "file.filename");
    if (driver && !qimg_format_known(driver)) {
        cli_error("Could not open '%s': Unknown driver '%s'", spec, driver);
        goto out;
    }
    if (file_driver && strcmp(file_driver, "file") != 0) {
        cli_error("Could not open '%s': Unknown driver '%s'", spec,
                  file_driver);
        goto out;
    }
    for (size_t i = 0; i < qimg_opts_count(opts); i++) {
        const char *key = qimg_opts_key(opts, i);
        if (strcmp(key, "driver") != 0 && strcmp(key, "file.driver") != 0 &&
            strcmp(key, "file.filename") != 0) {
            cli_error("Could not open '%s': Block format '%s' does not "
                      "support the option '%s'", spec,
                      driver ? driver : "raw", key);
            goto out;
        }
    }
    if (!path) {
        cli_error("Could not open '%s': A block device must be specified "
                  "for \"file\"", spec);
        goto out;
    }
    *filename = strdup(path);
    *fmt = driver ? strdup(driver) : NULL;
    if (!*filename || (driver && !*fmt)) {
        free(*filename);
        cli_error("Out of memory");
        goto out;
    }
    ret = 0;
out:
    qimg_opts_free(opts);
    return ret;
}

static void print_start(const struct qimg_bench_params *p, void *opaque)
{
    (void)opaque;
    printf("Sending %" PRIu64 " %s requests, %" PRIu64 " bytes each, "
           "%" PRIu64 " in parallel (starting at offset %" PRIu64
           ", step size %" PRIu64 ")\n",
           p->count, p->write ? "write" : "read", p->buffer_size, p->depth,
           p->offset, p->step);
    if (p->flush_interval) {
        printf("Sending flush every %" PRIu64 " requests\n",
               p->flush_interval);
    }
    /* Seen before the run, as qemu-img's line is on a terminal. */
    fflush(stdout);
}

/*
 * qemu-img names the options string, not the file, in its open errors
 * with --image-opts: "Could not open 'FILE': ..." becomes "Could not
 * open 'SPEC': ...".
 */
static void report_error(const char *spec, const char *filename)
{
    static const char head[] = "Could not open '";
    const size_t n = sizeof(head) - 1;
    const char *msg = qimg_get_error();
    if (spec) {
        size_t flen = strlen(filename);
        if (strncmp(msg, head, n) == 0 &&
            strncmp(msg + n, filename, flen) == 0 &&
            strncmp(msg + n + flen, "': ", 3) == 0) {
            cli_error("Could not open '%s': %s", spec, msg + n + flen + 3);
            return;
        }
    }
    cli_error("%s", msg);
}

int cmd_bench(int argc, char **argv)
{
    static const struct option long_opts[] = {
        {"help", no_argument, NULL, 'h'},
        {"flush-interval", required_argument, NULL, OPT_FLUSH_INTERVAL},
        {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS},
        {"pattern", required_argument, NULL, OPT_PATTERN},
        {"no-drain", no_argument, NULL, OPT_NO_DRAIN},
        {"force-share", no_argument, NULL, 'U'},
        {NULL, 0, NULL, 0},
    };
    struct qimg_bench_params p = {
        .count = BENCH_DEFAULT_COUNT,
        .depth = BENCH_DEFAULT_DEPTH,
        .buffer_size = BENCH_DEFAULT_BUFFER,
    };
    const char *fmt = NULL;
    bool image_opts = false, force_share = false;
    unsigned cache_flags = 0;
    uint64_t v;
    int c;

    while ((c = getopt_long(argc, argv, ":hc:d:f:ni:o:qs:S:t:wU", long_opts,
                            NULL)) != -1) {
        switch (c) {
        case 'h':
            cli_print_help();
            return 0;
        case 'c':
            if (parse_uint(optarg, INT_MAX, &p.count) < 0) {
                cli_error("Invalid request count specified");
                return 1;
            }
            break;
        case 'd':
            /*
             * qemu-img 7.2 takes 0 and then waits for ever; 10.1 refuses
             * it as qimg does.
             */
            if (parse_uint(optarg, INT_MAX, &p.depth) < 0 || p.depth == 0) {
                cli_error("Invalid queue depth specified");
                return 1;
            }
            break;
        case 'f':
            fmt = optarg;
            break;
        case 'n':
            p.native_aio = true;
            break;
        case 'i':
            if (strcmp(optarg, "native") == 0) {
                p.native_aio = true;
            } else if (strcmp(optarg, "threads") == 0 ||
                       strcmp(optarg, "io_uring") == 0) {
                p.native_aio = false;
            } else {
                cli_error("Invalid aio option: %s", optarg);
                return 1;
            }
            break;
        case 'o':
            if (cli_parse_num("offset", optarg, &p.offset) < 0) {
                return 1;
            }
            break;
        case 'q':
            /* qemu-img 7.2 accepts -q and prints all the same. */
            break;
        case 's':
            if (cli_parse_num_range("buffer size", optarg, 0, INT_MAX,
                                    &p.buffer_size) < 0) {
                return 1;
            }
            break;
        case 'S':
            if (cli_parse_num_range("step_size", optarg, 0, INT_MAX,
                                    &p.step) < 0) {
                return 1;
            }
            break;
        case 't':
            if (bench_cache_flags(optarg, &cache_flags,
                                  &p.write_through) < 0) {
                cli_error("Invalid cache mode");
                return 1;
            }
            break;
        case 'w':
            p.write = true;
            break;
        case 'U':
            force_share = true;
            break;
        case OPT_PATTERN:
            if (parse_uint(optarg, 0xff, &v) < 0) {
                cli_error("Invalid pattern byte specified");
                return 1;
            }
            p.pattern = (uint8_t)v;
            break;
        case OPT_FLUSH_INTERVAL:
            if (parse_uint(optarg, INT_MAX, &p.flush_interval) < 0) {
                cli_error("Invalid flush interval specified");
                return 1;
            }
            break;
        case OPT_NO_DRAIN:
            p.no_drain = true;
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
    if (p.flush_interval && !p.write) {
        cli_error("--flush-interval is only available in write tests");
        return 1;
    }
    if (p.flush_interval && p.flush_interval < p.depth) {
        cli_error("Flush interval can't be smaller than depth");
        return 1;
    }

    const char *spec = NULL;
    char *opts_file = NULL, *opts_fmt = NULL;
    if (image_opts) {
        if (fmt) {
            cli_error("--image-opts and --format are mutually exclusive");
            return 1;
        }
        spec = argv[optind];
        if (parse_image_opts(spec, &opts_file, &opts_fmt) < 0) {
            return 1;
        }
        p.filename = opts_file;
        p.format = opts_fmt;
    } else {
        p.filename = argv[optind];
        p.format = fmt;
    }
    p.flags = cache_flags | (force_share ? QIMG_OPEN_FORCE_SHARE : 0);
    p.start = print_start;

    struct qimg_bench_result res;
    int status = 0;
    if (qimg_bench(&p, &res) < 0) {
        report_error(spec, p.filename);
        status = 1;
    } else {
        printf("Run completed in %3.3f seconds.\n", res.seconds);
    }
    free(opts_file);
    free(opts_fmt);
    return status;
}
