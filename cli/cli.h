/*
 * Shared pieces of the qimg command line: error and usage reporting with
 * qemu-img's wording, option helpers, and output printers.  The CLI uses
 * only the public qimg.h API.
 */
#ifndef QIMG_CLI_H
#define QIMG_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "qimg/qimg.h"

#define PROGRAM_NAME "qimg"

enum output_format {
    OUTPUT_HUMAN,
    OUTPUT_JSON,
};

/* "qimg: <message>" on stderr. */
__attribute__((format(printf, 1, 2)))
void cli_error(const char *fmt, ...);
/* As cli_error, then "Try 'qimg --help' ..."; returns exit status 1. */
__attribute__((format(printf, 1, 2)))
int cli_usage_error(const char *fmt, ...);
/* Report a getopt failure (missing argument / unknown option); returns 1. */
int cli_getopt_error(char **argv, int opt);
/* The library's last error, printed as "qimg: <message>". */
void cli_report_library_error(void);

/* Parse --output's argument; returns -1 (after printing) if invalid. */
int cli_parse_output(const char *arg, enum output_format *out);
/*
 * Append one -o argument to an accumulated option string, after qemu-img's
 * list validation; prints the error and returns -1 on failure.
 */
int cli_accumulate_options(char **acc, const char *arg);
/* Does an option string ask for help ("help" or "?" among its keys)? */
bool cli_options_want_help(const char *options);
/* Is one -o argument a well-formed list (see args.c)? */
bool cli_option_list_valid(const char *arg);
/* Validate an --object definition (secret objects are remembered). */
int cli_add_object(const char *def);

/*
 * qemu-img's cvtnum: a size for the option called name (as in "Invalid
 * start offset specified"), at most INT64_MAX; -1 after the message.
 */
int cli_parse_num(const char *name, const char *arg, uint64_t *out);
/* The same for a value in [min, max] (max at most INT64_MAX). */
int cli_parse_num_range(const char *name, const char *arg, uint64_t min,
                        uint64_t max, uint64_t *out);
/* Is this one of qemu-img's cache modes (-t/-T)? */
bool cli_cache_mode_valid(const char *mode);

/* Print a create-options help list; filename NULL = format-only list. */
int cli_print_create_help(const char *format, const char *filename);

/* Output helpers. */
void print_value_human(const struct qimg_value *v, int indent);
void print_image_info_human(const struct qimg_image_info *info);
void print_snapshot_table(const struct qimg_snapshot_info *snaps, size_t n);
int print_json_value(const struct qimg_value *v);

/*
 * Progress (cli/progress.c), in qemu-img's format.  init(bar, min_skip):
 * bar is -p without -q, drawn on a terminal only; min_skip is the
 * smallest change that redraws (qemu-img: 1 for convert, 2 for compare).
 * Without the bar, SIGUSR1 asks for one line on stderr at the next
 * update.  set/cb take a percentage, step adds one; end(complete) shows
 * 100% first when complete, then ends the bar line.
 */
void cli_progress_init(bool bar, float min_skip);
void cli_progress_set(float percent);
void cli_progress_step(float delta);
void cli_progress_cb(double percent, void *opaque);
void cli_progress_end(bool complete);

/*
 * -l of convert and measure (snapshot_arg.c).  cli_snapshot_arg takes one
 * argument: "snapshot.id=ID,snapshot.name=NAME" replaces what an earlier
 * such option set, anything else is a bare id-or-name; -1 after printing
 * qemu-img's messages.  The options win over a bare -l, whatever the
 * order (cli_snapshot_select).
 */
#define SNAPSHOT_OPT_PREFIX "snapshot."
#define MAX_SNAPSHOT_OPTS 64
struct snapshot_opts {
    char *id;
    char *name;
    /* Identifiers given with "id=" by earlier -l options. */
    char *ids[MAX_SNAPSHOT_OPTS];
    size_t nb_ids;
    bool have_opts;   /* a snapshot.… option was given */
    const char *bare; /* the last bare -l, or NULL */
};
int cli_snapshot_arg(struct snapshot_opts *sn, const char *arg);
bool cli_snapshot_given(const struct snapshot_opts *sn);
struct qimg_snapshot_select cli_snapshot_select(const struct snapshot_opts *sn);
void snapshot_opts_free(struct snapshot_opts *sn);

/*
 * An image named on the command line (image_opts.c): a plain file name
 * and -f, or an --image-opts option string split into the file name,
 * the format (driver=, NULL to probe) and the format's runtime options.
 * spec is the option string (for messages), NULL for a plain name.
 * The strings live until exit.
 */
struct cli_image_spec {
    const char *spec;
    char *filename;
    char *format;
    struct qimg_opts *driver_opts; /* NULL or possibly empty */
    bool no_locking;               /* file.locking=off */
};
int cli_image_opts_parse(const char *spec, struct cli_image_spec *out);
int cli_image_spec_plain(const char *filename, const char *format,
                         struct cli_image_spec *out);
/* Either of the above; -f with --image-opts fails as qemu-img. */
int cli_image_spec_get(bool image_opts, const char *arg, const char *format,
                       struct cli_image_spec *out);
/* flags plus what the spec implies (file.locking=off: FORCE_SHARE). */
unsigned cli_image_spec_flags(const struct cli_image_spec *s, unsigned flags);
/* The spec's driver options, or NULL when there are none. */
static inline const struct qimg_opts *
cli_image_spec_opts(const struct cli_image_spec *s)
{
    return s->driver_opts && qimg_opts_count(s->driver_opts) ? s->driver_opts
                                                             : NULL;
}
struct qimg_image *cli_image_spec_open(const struct cli_image_spec *s,
                                       unsigned flags);
/* The library's error, naming the option string as qemu-img does. */
void cli_image_spec_report(const struct cli_image_spec *s);
/* The same for an error that may come from any of n images. */
void cli_image_specs_report(const struct cli_image_spec *s, size_t n);

/* The commands. */
int cmd_check(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_create(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_map(int argc, char **argv);
int cmd_compare(int argc, char **argv);
int cmd_measure(int argc, char **argv);
int cmd_dd(int argc, char **argv);
int cmd_resize(int argc, char **argv);
int cmd_amend(int argc, char **argv);
int cmd_commit(int argc, char **argv);
int cmd_rebase(int argc, char **argv);
int cmd_snapshot(int argc, char **argv);
int cmd_bitmap(int argc, char **argv);
int cmd_bench(int argc, char **argv);

void cli_print_help(void);

#endif
