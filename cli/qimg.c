/*
 * qimg: the command line.  Global options, then one subcommand; each
 * subcommand lives in its own cmd_*.c and only parses and prints.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *synopsis;
};


/* Every qemu-img 7.2 subcommand, with its synopsis from qemu-img's help. */
static const struct command commands[] = {
    {"amend", cmd_amend,
     "amend [--object objectdef] [--image-opts] [-p] [-q] [-f fmt] "
     "[-t cache] [--force] -o options filename"},
    {"bench", cmd_bench,
     "bench [-c count] [-d depth] [-f fmt] "
     "[--flush-interval=flush_interval] [-i aio] [-n] [--no-drain] "
     "[-o offset] [--pattern=pattern] [-q] [-s buffer_size] "
     "[-S step_size] [-t cache] [-w] [-U] filename"},
    {"bitmap", cmd_bitmap,
     "bitmap (--merge SOURCE | --add | --remove | --clear | --enable | "
     "--disable)... [-b source_file [-F source_fmt]] [-g granularity] "
     "[--object objectdef] [--image-opts | -f fmt] filename bitmap"},
    {"check", cmd_check,
     "check [--object objectdef] [--image-opts] [-q] [-f fmt] "
     "[--output=ofmt] [-r [leaks | all]] [-T src_cache] [-U] filename"},
    {"commit", cmd_commit,
     "commit [--object objectdef] [--image-opts] [-q] [-f fmt] [-t cache] "
     "[-b base] [-r rate_limit] [-d] [-p] filename"},
    {"compare", cmd_compare,
     "compare [--object objectdef] [--image-opts] [-f fmt] [-F fmt] "
     "[-T src_cache] [-p] [-q] [-s] [-U] filename1 filename2"},
    {"convert", cmd_convert,
     "convert [--object objectdef] [--image-opts] [--target-image-opts] "
     "[--target-is-zero] [--bitmaps] [-U] [-C] [-c] [-p] [-q] [-n] "
     "[-f fmt] [-t cache] [-T src_cache] [-O output_fmt] "
     "[-B backing_file [-F backing_fmt]] [-o options] [-l snapshot_param] "
     "[-S sparse_size] [-r rate_limit] [-m num_coroutines] [-W] "
     "[--salvage] filename [filename2 [...]] output_filename"},
    {"create", cmd_create,
     "create [--object objectdef] [-q] [-f fmt] [-b backing_file "
     "[-F backing_fmt]] [-u] [-o options] filename [size]"},
    {"dd", cmd_dd,
     "dd [--image-opts] [-U] [-f fmt] [-O output_fmt] [bs=block_size] "
     "[count=blocks] [skip=blocks] if=input of=output"},
    {"info", cmd_info,
     "info [--object objectdef] [--image-opts] [-f fmt] [--output=ofmt] "
     "[--backing-chain] [-U] filename"},
    {"map", cmd_map,
     "map [--object objectdef] [--image-opts] [-f fmt] "
     "[--start-offset=offset] [--max-length=len] [--output=ofmt] [-U] "
     "filename"},
    {"measure", cmd_measure,
     "measure [--output=ofmt] [-O output_fmt] [-o options] [--size N | "
     "[--object objectdef] [--image-opts] [-f fmt] [-l snapshot_param] "
     "filename]"},
    {"snapshot", cmd_snapshot,
     "snapshot [--object objectdef] [--image-opts] [-U] [-q] [-l | "
     "-a snapshot | -c snapshot | -d snapshot] filename"},
    {"rebase", cmd_rebase,
     "rebase [--object objectdef] [--image-opts] [-U] [-q] [-f fmt] "
     "[-t cache] [-T src_cache] [-p] [-u] -b backing_file "
     "[-F backing_fmt] filename"},
    {"resize", cmd_resize,
     "resize [--object objectdef] [--image-opts] [-f fmt] "
     "[--preallocation=prealloc] [-q] [--shrink] filename [+ | -]size"},
};
#define COMMANDS_COUNT (sizeof(commands) / sizeof(commands[0]))


static void print_version(void)
{
    printf("%s version %s (compatible with qemu-img %s)\n"
           "Copyright (c) 2026 the qimg developers\n",
           PROGRAM_NAME, QIMG_VERSION_STRING, QIMG_QEMU_COMPAT_VERSION);
}

void cli_print_help(void)
{
    print_version();
    printf("usage: %s [standard options] command [command options]\n"
           "Disk image utility, a drop-in replacement for qemu-img\n"
           "\n"
           "    '-h', '--help'       display this help and exit\n"
           "    '-V', '--version'    output version information and exit\n"
           "    '-T', '--trace'      [[enable=]<pattern>][,events=<file>]"
           "[,file=<file>]\n"
           "                         accepted for compatibility; "
           "tracing is not supported\n"
           "\n"
           "Command syntax:\n",
           PROGRAM_NAME);
    for (size_t i = 0; i < COMMANDS_COUNT; i++) {
        printf("  %s\n", commands[i].synopsis);
    }
    printf("\n"
           "Command parameters:\n"
           "  'filename' is a disk image filename\n"
           "  'fmt' is the disk image format. It is guessed automatically "
           "in most cases\n"
           "  'size' is the disk image size in bytes. Optional suffixes\n"
           "    'k' or 'K' (kilobyte, 1024), 'M' (megabyte, 1024k), 'G' "
           "(gigabyte, 1024M),\n"
           "    'T' (terabyte, 1024G), 'P' (petabyte, 1024T) and 'E' "
           "(exabyte, 1024P)  are\n"
           "    supported. 'b' is ignored.\n"
           "  'options' is a comma separated list of format specific "
           "options in a\n"
           "    name=value format. Use -o help for an overview of the "
           "options supported by\n"
           "    the used format\n"
           "  '-q' use Quiet mode - do not print any output (except "
           "errors)\n"
           "  '--output' takes the format in which the output must be "
           "done (human or json)\n"
           "\n"
           "Supported formats:");
    for (const char *const *f = qimg_format_names(); *f; f++) {
        printf(" %s", *f);
    }
    printf("\n\nSee the qimg(1) manual and README.md for details.\n");
}

/*
 * -T [enable=]PATTERN[,events=FILE][,file=FILE]: qimg has no trace events,
 * so, like qemu-img with an unknown event, it warns that the pattern
 * matches nothing.
 */
static void cli_trace_option(const char *arg)
{
    if (strchr(arg, '=') != NULL && strncmp(arg, "enable=", 7) != 0) {
        return; /* events=FILE or file=FILE only */
    }
    if (strncmp(arg, "enable=", 7) == 0) {
        arg += 7;
    }
    fprintf(stderr, "%s: warning: trace event '%.*s' does not exist\n",
            PROGRAM_NAME, (int)strcspn(arg, ","), arg);
}

/*
 * Library warnings are printed as qemu-img prints warn_report() ones,
 * except the probed-raw banner, which qemu-img prints as it is.
 */
static void print_warning(const char *message, void *opaque)
{
    (void)opaque;
    if (strncmp(message, "WARNING: ", 9) == 0) {
        fprintf(stderr, "%s\n", message);
    } else {
        fprintf(stderr, "%s: warning: %s\n", PROGRAM_NAME, message);
    }
}

/*
 * QIMG_NO_EXTERNAL=1: no image may make qimg open a file it names
 * (backing file, data file, extent), whatever the subcommand; for
 * untrusted images.  Read here once so that every subcommand, and every
 * open a library call makes by itself, obeys it.  A value other than 0
 * or 1 is an error rather than "off", so that a typo cannot drop it.
 */
static int apply_no_external(void)
{
    const char *v = getenv("QIMG_NO_EXTERNAL");
    if (!v || strcmp(v, "") == 0 || strcmp(v, "0") == 0) {
        return 0;
    }
    if (strcmp(v, "1") != 0) {
        cli_error("QIMG_NO_EXTERNAL must be 0 or 1, not '%s'", v);
        return -1;
    }
    if (qimg_set_open_policy(QIMG_OPEN_NO_EXTERNAL) < 0) {
        cli_report_library_error();
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option long_opts[] = {
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {"trace", required_argument, NULL, 'T'},
        {NULL, 0, NULL, 0},
    };
    int c;

    qimg_set_warning_handler(print_warning, NULL);
    if (apply_no_external() < 0) {
        return 1;
    }
    if (argc < 2) {
        return cli_usage_error("Not enough arguments");
    }
    /* '+': stop at the first non-option, the command name. */
    opterr = 0;
    while ((c = getopt_long(argc, argv, "+:hVT:", long_opts, NULL)) != -1) {
        switch (c) {
        case 'h':
            cli_print_help();
            return 0;
        case 'V':
            print_version();
            return 0;
        case 'T':
            cli_trace_option(optarg);
            break;
        default:
            return cli_getopt_error(argv, c);
        }
    }
    if (optind >= argc) {
        return cli_usage_error("Not enough arguments");
    }
    const char *name = argv[optind];
    argc -= optind;
    argv += optind;
    /* Each command parses its own options from argv[0] = its name. */
    optind = 0;
    for (size_t i = 0; i < COMMANDS_COUNT; i++) {
        if (strcmp(commands[i].name, name) == 0) {
            int status = commands[i].run(argc, argv);
            if (fflush(stdout) != 0 && status == 0) {
                cli_error("write error on standard output");
                status = 1;
            }
            return status;
        }
    }
    return cli_usage_error("Command not found: %s", name);
}
