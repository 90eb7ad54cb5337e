/*
 * The -l argument of convert and measure: "snapshot.id=ID,snapshot.name=
 * NAME" options, or a bare id-or-name, as qemu-img 7.2 takes them.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/*
 * -l snapshot.id=ID,snapshot.name=NAME is a QemuOpts list named
 * "snapshot" with those two string options; qemu-img 7.2 parses it as
 * QEMU's option parser does, with these messages.  Later keys override
 * earlier ones; "id=X" is the list entry's identifier, which must be
 * well formed and unique among the -l options given.
 */

/*
 * One element of a QemuOpts string at p: its key and value (malloc'd)
 * and where the next element starts.  A key without "=" is a boolean
 * flag ("noKEY" means KEY=off); *flag is set then.
 */
static const char *opt_element(const char *p, char **key, char **value,
                               bool *flag)
{
    size_t klen = strcspn(p, "=,");
    *flag = p[klen] != '=';
    if (*flag) {
        bool no = strncmp(p, "no", 2) == 0;
        *key = strndup(p + (no ? 2 : 0), klen - (no ? 2 : 0));
        *value = strdup(no ? "off" : "on");
        p += klen;
    } else {
        *key = strndup(p, klen);
        p += klen + 1;
        /* The value runs to the next single comma; ",," is a comma. */
        size_t cap = strlen(p) + 1, n = 0;
        *value = malloc(cap);
        while (*value && *p) {
            if (*p == ',') {
                if (p[1] != ',') {
                    break;
                }
                p++;
            }
            (*value)[n++] = *p++;
        }
        if (*value) {
            (*value)[n] = '\0';
        }
    }
    if (*p == ',') {
        p++;
    }
    return p;
}

static bool is_help_key(const char *key)
{
    return strcmp(key, "help") == 0 || strcmp(key, "?") == 0;
}

/* QEMU's id_wellformed(): a letter, then letters, digits, - . _ */
static bool id_wellformed(const char *id)
{
    if (!((*id >= 'a' && *id <= 'z') || (*id >= 'A' && *id <= 'Z'))) {
        return false;
    }
    for (const char *p = id + 1; *p; p++) {
        if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                    "0123456789-._", *p)) {
            return false;
        }
    }
    return true;
}

/*
 * Parse one "-l snapshot.…" argument into sn (replacing what an earlier
 * one set).  Returns 0, or -1 after printing qemu-img's messages.
 */
static int parse_snapshot_opts(struct snapshot_opts *sn, const char *arg)
{
    char *key = NULL, *value = NULL, *id = NULL, *name = NULL;
    char *list_id = NULL;
    bool flag, ok = true;
    int ret = -1;

    /* The entry's identifier comes first: the first "id=" element. */
    for (const char *p = arg; *p && ok && !list_id;) {
        p = opt_element(p, &key, &value, &flag);
        if (!key || !value) {
            ok = false;
        } else if (strcmp(key, "id") == 0) {
            list_id = value;
            value = NULL;
        }
        free(key);
        free(value);
        key = value = NULL;
    }
    if (!ok) {
        cli_error("Out of memory");
        goto out;
    }
    if (list_id) {
        if (!id_wellformed(list_id)) {
            cli_error("Parameter 'id' expects an identifier");
            fprintf(stderr, "Identifiers consist of letters, digits, '-', "
                    "'.', '_', starting with a letter.\n");
            goto fail;
        }
        for (size_t i = 0; i < sn->nb_ids; i++) {
            if (strcmp(sn->ids[i], list_id) == 0) {
                cli_error("Duplicate ID '%s' for snapshot", list_id);
                goto fail;
            }
        }
    }
    for (const char *p = arg; *p;) {
        const char *start = p;
        p = opt_element(p, &key, &value, &flag);
        if (!key || !value) {
            cli_error("Out of memory");
            goto out;
        }
        if (flag && is_help_key(key)) {
            printf("snapshot options:\n"
                   "  snapshot.id=<str>      - snapshot id\n"
                   "  snapshot.name=<str>    - snapshot name\n");
            goto fail;
        }
        if (flag) {
            size_t len = strcspn(start, "=,");
            fprintf(stderr, "%s: warning: short-form boolean option '%.*s' "
                    "deprecated\nPlease use %s=%s instead\n", PROGRAM_NAME,
                    (int)len, start, key, value);
        }
        if (strcmp(key, "id") == 0) {
            /* The identifier, taken above. */
        } else if (strcmp(key, SNAPSHOT_OPT_PREFIX "id") == 0) {
            free(id);
            id = value;
            value = NULL;
        } else if (strcmp(key, SNAPSHOT_OPT_PREFIX "name") == 0) {
            free(name);
            name = value;
            value = NULL;
        } else {
            cli_error("Invalid parameter '%s'", key);
            goto fail;
        }
        free(key);
        free(value);
        key = value = NULL;
    }
    if (list_id) {
        if (sn->nb_ids == MAX_SNAPSHOT_OPTS) {
            cli_error("Too many snapshot options");
            goto out;
        }
        sn->ids[sn->nb_ids++] = list_id;
        list_id = NULL;
    }
    free(sn->id);
    free(sn->name);
    sn->id = id;
    sn->name = name;
    id = name = NULL;
    ret = 0;
    goto out;
fail:
    cli_error("Failed in parsing snapshot param '%s'", arg);
out:
    free(key);
    free(value);
    free(id);
    free(name);
    free(list_id);
    return ret;
}

void snapshot_opts_free(struct snapshot_opts *sn)
{
    free(sn->id);
    free(sn->name);
    for (size_t i = 0; i < sn->nb_ids; i++) {
        free(sn->ids[i]);
    }
}

int cli_snapshot_arg(struct snapshot_opts *sn, const char *arg)
{
    if (strncmp(arg, SNAPSHOT_OPT_PREFIX, strlen(SNAPSHOT_OPT_PREFIX)) != 0) {
        sn->bare = arg;
        return 0;
    }
    if (parse_snapshot_opts(sn, arg) < 0) {
        return -1;
    }
    sn->have_opts = true;
    return 0;
}

bool cli_snapshot_given(const struct snapshot_opts *sn)
{
    return sn->have_opts || sn->bare;
}

struct qimg_snapshot_select cli_snapshot_select(const struct snapshot_opts *sn)
{
    /* A -l snapshot.… option wins over a bare -l, as in qemu-img. */
    struct qimg_snapshot_select sel = {
        .id = sn->have_opts ? sn->id : NULL,
        .name = sn->have_opts ? sn->name : NULL,
        .id_or_name = sn->have_opts ? NULL : sn->bare,
    };
    return sel;
}
