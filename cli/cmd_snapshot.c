/*
 * qimg snapshot [--object objectdef] [--image-opts] [-U] [-q]
 *               [-l | -a snapshot | -c snapshot | -d snapshot] filename
 *
 * As qemu-img 7.2: one action at most ("Cannot mix ..."); without one
 * the image is only opened (read-write).  -l lists as info does (nothing
 * for no snapshots), -c creates, -a applies by id or name, -d deletes by
 * name.  -q changes nothing (the actions print nothing on success).
 * There is no -f in 7.2.  Exit status 0, or 1 on any failure.
 */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

enum {
    OPT_OBJECT = 256,
    OPT_IMAGE_OPTS,
};

enum action {
    ACTION_NONE,
    ACTION_LIST,
    ACTION_APPLY,
    ACTION_CREATE,
    ACTION_DELETE,
};

/* [QEMU] qemu-img copies the name into a 256-byte buffer. */
#define CREATE_NAME_MAX 255

static int list_snapshots(struct qimg_image *img)
{
    struct qimg_image_info *info = qimg_get_info(img);
    if (!info) {
        cli_report_library_error();
        return 1;
    }
    if (info->nb_snapshots > 0) {
        printf("Snapshot list:\n");
        print_snapshot_table(info->snapshots, info->nb_snapshots);
    }
    qimg_image_info_free(info);
    return 0;
}

static int create_snapshot(struct qimg_image *img, const char *name)
{
    char *cut = strndup(name, CREATE_NAME_MAX);
    if (!cut) {
        cli_error("Out of memory");
        return 1;
    }
    int ret = qimg_snapshot_create(img, cut);
    free(cut);
    if (ret < 0) {
        int err = qimg_get_errno();
        cli_error("Could not create snapshot '%s': %d (%s)", name, -err,
                  strerror(err));
        return 1;
    }
    return 0;
}

int cmd_snapshot(int argc, char **argv)
{
    static const struct option long_opts[] = {
        {"help", no_argument, NULL, 'h'},
        {"object", required_argument, NULL, OPT_OBJECT},
        {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS},
        {"force-share", no_argument, NULL, 'U'},
        {NULL, 0, NULL, 0},
    };
    enum action action = ACTION_NONE;
    const char *name = NULL;
    bool force_share = false;
    bool image_opts = false;
    int c;

    while ((c = getopt_long(argc, argv, ":la:c:d:hqU", long_opts, NULL)) !=
           -1) {
        switch (c) {
        case 'h':
            cli_print_help();
            return 0;
        case 'l':
        case 'a':
        case 'c':
        case 'd':
            if (action != ACTION_NONE) {
                return cli_usage_error("Cannot mix '-l', '-a', '-c', '-d'");
            }
            action = c == 'l'   ? ACTION_LIST
                     : c == 'a' ? ACTION_APPLY
                     : c == 'c' ? ACTION_CREATE
                                : ACTION_DELETE;
            name = c == 'l' ? NULL : optarg;
            break;
        case 'q':
            /* Nothing is printed on success anyway; -l still lists. */
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
    if (cli_image_spec_get(image_opts, argv[optind], NULL, &spec) < 0) {
        return 1;
    }

    /* [QEMU] read-write unless listing, even without an action. */
    unsigned flags = action == ACTION_LIST ? 0 : QIMG_OPEN_RDWR;
    if (force_share) {
        flags |= QIMG_OPEN_FORCE_SHARE;
    }
    struct qimg_image *img = cli_image_spec_open(&spec, flags);
    if (!img) {
        cli_image_spec_report(&spec);
        return 1;
    }
    int status = 0;
    switch (action) {
    case ACTION_NONE:
        break;
    case ACTION_LIST:
        status = list_snapshots(img);
        break;
    case ACTION_CREATE:
        status = create_snapshot(img, name);
        break;
    case ACTION_APPLY: {
        struct qimg_snapshot_select sel = {.id_or_name = name};
        if (qimg_snapshot_apply(img, &sel) < 0) {
            cli_error("Could not apply snapshot '%s': %s", name,
                      qimg_get_error());
            status = 1;
        }
        break;
    }
    case ACTION_DELETE: {
        /* [QEMU] qemu-img finds the snapshot to delete by name only. */
        struct qimg_snapshot_select sel = {.name = name};
        if (qimg_snapshot_delete(img, &sel) < 0) {
            cli_error("Could not delete snapshot '%s': %s", name,
                      qimg_get_error());
            status = 1;
        }
        break;
    }
    }
    if (qimg_close(img) < 0 && status == 0) {
        cli_report_library_error();
        status = 1;
    }
    return status;
}
