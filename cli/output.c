/* Printing results the way qemu-img prints them. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

int print_json_value(const struct qimg_value *v)
{
    char *json = qimg_value_to_json(v);
    if (!json) {
        cli_error("Out of memory");
        return -1;
    }
    printf("%s\n", json);
    free(json);
    return 0;
}

static void print_scalar(const struct qimg_value *v)
{
    switch (qimg_value_type(v)) {
    case QIMG_VALUE_BOOL:
        printf("%s", qimg_value_get_bool(v) ? "true" : "false");
        break;
    case QIMG_VALUE_INT:
        printf("%" PRId64, qimg_value_get_int(v));
        break;
    case QIMG_VALUE_UINT:
        printf("%" PRIu64, qimg_value_get_uint(v));
        break;
    case QIMG_VALUE_STRING:
        printf("%s", qimg_value_get_string(v));
        break;
    default:
        break;
    }
}

static bool is_composite(const struct qimg_value *v)
{
    enum qimg_value_type t = qimg_value_type(v);
    return t == QIMG_VALUE_LIST || t == QIMG_VALUE_DICT;
}

/*
 * qemu-img's generic dump of a format-specific object: keys with '-'
 * shown as ' ', 4 spaces per level, list items as "[i]:".
 */
void print_value_human(const struct qimg_value *v, int indent)
{
    if (!is_composite(v)) {
        print_scalar(v);
        return;
    }
    bool dict = qimg_value_type(v) == QIMG_VALUE_DICT;
    for (size_t i = 0; i < qimg_value_count(v); i++) {
        const struct qimg_value *item = qimg_value_item(v, i);
        bool composite = is_composite(item);
        printf("%*s", indent * 4, "");
        if (dict) {
            for (const char *k = qimg_value_key(v, i); *k; k++) {
                putchar(*k == '-' ? ' ' : *k);
            }
            printf(":%c", composite ? '\n' : ' ');
        } else {
            printf("[%zu]:%c", i, composite ? '\n' : ' ');
        }
        print_value_human(item, indent + 1);
        if (!composite) {
            putchar('\n');
        }
    }
}

static void print_snapshot_header(void)
{
    printf("%-10s%-17s%8s%20s%13s%11s", "ID", "TAG", "VM SIZE", "DATE",
           "VM CLOCK", "ICOUNT");
}

static void print_snapshot_row(const struct qimg_snapshot_info *s)
{
    char size[32], date[64], clock[64], icount[32] = "";
    qimg_format_size(s->vm_state_size, size, sizeof(size));
    time_t t = (time_t)s->date_sec;
    struct tm tm;
    if (localtime_r(&t, &tm)) {
        strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S", &tm);
    } else {
        date[0] = '\0';
    }
    uint64_t secs = s->vm_clock_nsec / 1000000000ULL;
    snprintf(clock, sizeof(clock), "%02u:%02u:%02u.%03u",
             (unsigned)(secs / 3600), (unsigned)((secs / 60) % 60),
             (unsigned)(secs % 60),
             (unsigned)((s->vm_clock_nsec / 1000000) % 1000));
    if (s->has_icount && s->icount != UINT64_MAX) {
        snprintf(icount, sizeof(icount), "%" PRId64, (int64_t)s->icount);
    }
    printf("%-9s %-16s %8s%20s%13s%11s", s->id, s->name, size, date, clock,
           icount);
}

void print_snapshot_table(const struct qimg_snapshot_info *snaps, size_t n)
{
    print_snapshot_header();
    putchar('\n');
    for (size_t i = 0; i < n; i++) {
        print_snapshot_row(&snaps[i]);
        putchar('\n');
    }
}

void print_image_info_human(const struct qimg_image_info *info)
{
    char vsize[32], dsize[32];
    qimg_format_size(info->virtual_size, vsize, sizeof(vsize));
    if (info->actual_size >= 0) {
        qimg_format_size((uint64_t)info->actual_size, dsize, sizeof(dsize));
    } else {
        snprintf(dsize, sizeof(dsize), "unavailable");
    }
    printf("image: %s\n"
           "file format: %s\n"
           "virtual size: %s (%" PRIu64 " bytes)\n"
           "disk size: %s\n",
           info->filename, info->format, vsize, info->virtual_size, dsize);
    if (info->encrypted) {
        printf("encrypted: yes\n");
    }
    if (info->cluster_size) {
        printf("cluster_size: %" PRIu64 "\n", info->cluster_size);
    }
    if (info->dirty_flag) {
        printf("cleanly shut down: no\n");
    }
    if (info->backing_filename) {
        printf("backing file: %s", info->backing_filename);
        if (!info->full_backing_filename) {
            printf(" (cannot determine actual path)");
        } else if (strcmp(info->backing_filename,
                          info->full_backing_filename) != 0) {
            printf(" (actual path: %s)", info->full_backing_filename);
        }
        putchar('\n');
    }
    if (info->backing_format) {
        printf("backing file format: %s\n", info->backing_format);
    }
    if (info->nb_snapshots > 0) {
        printf("Snapshot list:\n");
        print_snapshot_table(info->snapshots, info->nb_snapshots);
    }
    if (info->format_specific) {
        const struct qimg_value *data =
            qimg_value_dict_get(info->format_specific, "data");
        if (data) {
            printf("Format specific information:\n");
            print_value_human(data, 1);
        }
    }
}
