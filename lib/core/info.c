/*
 * qemu-img info: what an image is, as QEMU's ImageInfo object.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/error.h"
#include "core/image.h"
#include "util/path.h"

/* --backing-chain stops here even without a loop. */
#define INFO_CHAIN_MAX CHAIN_MAX_DEPTH

static char *dup_or_null(const char *s, int *err)
{
    if (!s) {
        return NULL;
    }
    char *d = strdup(s);
    if (!d) {
        *err = -ENOMEM;
    }
    return d;
}

void qimg_image_info_free(struct qimg_image_info *info)
{
    if (!info) {
        return;
    }
    free(info->filename);
    free(info->format);
    free(info->backing_filename);
    free(info->full_backing_filename);
    free(info->backing_format);
    for (size_t i = 0; i < info->nb_snapshots; i++) {
        free(info->snapshots[i].id);
        free(info->snapshots[i].name);
    }
    free(info->snapshots);
    qimg_value_free(info->format_specific);
    free(info);
}

static int node_get_info(struct qimg_node *node,
                         struct qimg_image_info **out)
{
    struct qimg_image_info *info = calloc(1, sizeof(*info));
    if (!info) {
        return error_set(ENOMEM, "Out of memory");
    }
    int err = 0;
    info->filename = dup_or_null(
        node->display_name ? node->display_name : node->filename, &err);
    info->format = dup_or_null(node->drv->name, &err);
    info->virtual_size = node->size;
    info->backing_filename = dup_or_null(node->backing_name, &err);
    info->backing_format = dup_or_null(node->backing_format, &err);
    if (node->backing_name) {
        info->full_backing_filename =
            path_combine(node->filename, node->backing_name);
        if (!info->full_backing_filename) {
            err = -ENOMEM;
        }
    }
    if (err < 0) {
        qimg_image_info_free(info);
        return error_set(ENOMEM, "Out of memory");
    }

    int64_t allocated = node->drv->get_allocated
                            ? node->drv->get_allocated(node)
                            : node->file->ops->get_allocated(node->file);
    info->actual_size = allocated < 0 ? -1 : allocated;

    if (node->drv->get_info) {
        int ret = node->drv->get_info(node, info);
        if (ret < 0) {
            qimg_image_info_free(info);
            return ret;
        }
    }
    *out = info;
    return 0;
}

struct qimg_image_info *qimg_get_info(struct qimg_image *img)
{
    struct qimg_image_info *info = NULL;
    int ret = node_get_info(img->top, &info);
    if (ret < 0) {
        errno = -ret;
        return NULL;
    }
    return info;
}

int qimg_get_chain_info(const char *filename, const char *format,
                        unsigned flags, struct qimg_image_info ***out)
{
    struct qimg_image_info **list = NULL;
    int count = 0;
    int ret = 0;
    char *name = strdup(filename);
    char *fmt = format ? strdup(format) : NULL;
    /* (dev, ino) of each image seen, to refuse a loop. */
    struct stat seen[INFO_CHAIN_MAX];

    if (!name || (format && !fmt)) {
        ret = error_set(ENOMEM, "Out of memory");
        goto out;
    }
    flags = (flags | QIMG_OPEN_NO_BACKING | image_open_policy()) &
            ~QIMG_OPEN_RDWR;

    while (name) {
        struct stat st;
        if (stat(name, &st) == 0) {
            for (int i = 0; i < count; i++) {
                if (seen[i].st_dev == st.st_dev &&
                    seen[i].st_ino == st.st_ino) {
                    ret = error_set(ELOOP, "Backing file '%s' creates an "
                                    "infinite loop.", name);
                    goto out;
                }
            }
        }
        if (count >= INFO_CHAIN_MAX) {
            ret = error_set(ELOOP, "Backing chain of '%s' is deeper than %d "
                            "images", filename, INFO_CHAIN_MAX);
            goto out;
        }
        seen[count] = st;

        struct qimg_image *img = qimg_open(name, fmt, flags);
        if (!img) {
            ret = -qimg_get_errno();
            goto out;
        }
        struct qimg_image_info *info = qimg_get_info(img);
        qimg_close(img);
        if (!info) {
            ret = -qimg_get_errno();
            goto out;
        }
        struct qimg_image_info **grown =
            realloc(list, (size_t)(count + 1) * sizeof(*list));
        if (!grown) {
            qimg_image_info_free(info);
            ret = error_set(ENOMEM, "Out of memory");
            goto out;
        }
        list = grown;
        list[count++] = info;

        free(name);
        free(fmt);
        name = NULL;
        fmt = NULL;
        if (info->full_backing_filename) {
            if (flags & QIMG_OPEN_NO_EXTERNAL) {
                ret = error_set(EPERM, "'%s' names backing file '%s' and "
                                "external references are refused",
                                info->filename, info->backing_filename);
                goto out;
            }
            if (path_is_protocol(info->backing_filename)) {
                ret = error_set(ENOTSUP, "Could not open backing file: '%s' "
                                "is not a plain local file name",
                                info->backing_filename);
                goto out;
            }
            name = strdup(info->full_backing_filename);
            fmt = info->backing_format ? strdup(info->backing_format)
                                       : NULL;
            if (!name || (info->backing_format && !fmt)) {
                ret = error_set(ENOMEM, "Out of memory");
                goto out;
            }
        }
    }

out:
    free(name);
    free(fmt);
    if (ret < 0) {
        for (int i = 0; i < count; i++) {
            qimg_image_info_free(list[i]);
        }
        free(list);
        errno = -ret;
        return -1;
    }
    *out = list;
    return count;
}

/* Each setter returns false after an allocation failure. */
static bool put(struct qimg_value *dict, const char *key,
                struct qimg_value *v)
{
    return v && qimg_value_dict_set(dict, key, v) == 0;
}

static struct qimg_value *snapshot_to_value(const struct qimg_snapshot_info *s)
{
    struct qimg_value *d = qimg_value_new_dict();
    if (!d) {
        return NULL;
    }
    /* QAPI SnapshotInfo, schema order. */
    bool ok = put(d, "id", qimg_value_new_string(s->id)) &&
              put(d, "name", qimg_value_new_string(s->name)) &&
              put(d, "vm-state-size", qimg_value_new_int(
                                          (int64_t)s->vm_state_size)) &&
              put(d, "date-sec", qimg_value_new_int(s->date_sec)) &&
              put(d, "date-nsec", qimg_value_new_int(s->date_nsec)) &&
              put(d, "vm-clock-sec",
                  qimg_value_new_int(
                      (int64_t)(s->vm_clock_nsec / 1000000000ULL))) &&
              put(d, "vm-clock-nsec",
                  qimg_value_new_int(
                      (int64_t)(s->vm_clock_nsec % 1000000000ULL)));
    /* An icount of -1 means "not recorded", as if it were absent. */
    if (ok && s->has_icount && s->icount != UINT64_MAX) {
        /* QAPI's icount is a signed int: ~0 - 1 prints as -2. */
        ok = put(d, "icount", qimg_value_new_int((int64_t)s->icount));
    }
    if (!ok) {
        qimg_value_free(d);
        return NULL;
    }
    return d;
}

struct qimg_value *qimg_image_info_to_value(
    const struct qimg_image_info *info)
{
    struct qimg_value *d = qimg_value_new_dict();
    if (!d) {
        return NULL;
    }
    /* QAPI ImageInfo in schema order; the dict reorders as QEMU's does. */
    bool ok = put(d, "filename", qimg_value_new_string(info->filename)) &&
              put(d, "format", qimg_value_new_string(info->format)) &&
              (info->no_disk_info ||
               put(d, "dirty-flag", qimg_value_new_bool(info->dirty_flag)));
    if (ok && info->actual_size >= 0) {
        ok = put(d, "actual-size", qimg_value_new_int(info->actual_size));
    }
    ok = ok && put(d, "virtual-size",
                   qimg_value_new_int((int64_t)info->virtual_size));
    if (ok && info->cluster_size) {
        ok = put(d, "cluster-size",
                 qimg_value_new_int((int64_t)info->cluster_size));
    }
    if (ok && info->encrypted) {
        ok = put(d, "encrypted", qimg_value_new_bool(true));
    }
    if (ok && info->backing_filename) {
        ok = put(d, "backing-filename",
                 qimg_value_new_string(info->backing_filename)) &&
             put(d, "full-backing-filename",
                 qimg_value_new_string(info->full_backing_filename));
    }
    if (ok && info->backing_format) {
        ok = put(d, "backing-filename-format",
                 qimg_value_new_string(info->backing_format));
    }
    if (ok && info->nb_snapshots > 0) {
        struct qimg_value *list = qimg_value_new_list();
        ok = list != NULL;
        for (size_t i = 0; ok && i < info->nb_snapshots; i++) {
            struct qimg_value *s = snapshot_to_value(&info->snapshots[i]);
            ok = s && qimg_value_list_append(list, s) == 0;
        }
        if (ok) {
            ok = put(d, "snapshots", list);
        } else {
            qimg_value_free(list);
        }
    }
    if (ok && info->format_specific) {
        ok = put(d, "format-specific",
                 qimg_value_copy(info->format_specific));
    }
    if (!ok) {
        qimg_value_free(d);
        errno = ENOMEM;
        return NULL;
    }
    return d;
}
