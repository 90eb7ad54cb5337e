/* Path helpers; see path.h for the rules and where they come from. */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "util/path.h"

static char *path_oom(void)
{
    error_set(ENOMEM, "Out of memory");
    errno = ENOMEM;
    return NULL;
}

bool path_is_absolute(const char *path)
{
    return path[0] == '/';
}

bool path_is_protocol(const char *name)
{
    return name[strcspn(name, ":/")] == ':';
}

char *path_dirname(const char *path)
{
    size_t len = strlen(path);

    /* Drop trailing slashes, then the last component, then its slashes. */
    while (len > 1 && path[len - 1] == '/') {
        len--;
    }
    while (len > 0 && path[len - 1] != '/') {
        len--;
    }
    while (len > 1 && path[len - 1] == '/') {
        len--;
    }

    char *dir;
    if (len == 0) {
        dir = strdup(".");
    } else {
        dir = strndup(path, len);
    }
    return dir ? dir : path_oom();
}

char *path_combine(const char *base_path, const char *filename)
{
    if (path_is_absolute(filename)) {
        char *copy = strdup(filename);
        return copy ? copy : path_oom();
    }

    /* The prefix kept from base_path ends after "proto:" or the last '/'. */
    size_t keep = 0;
    if (path_is_protocol(base_path)) {
        keep = (size_t)(strchr(base_path, ':') - base_path) + 1;
    }
    const char *slash = strrchr(base_path, '/');
    if (slash && (size_t)(slash - base_path) + 1 > keep) {
        keep = (size_t)(slash - base_path) + 1;
    }

    size_t flen = strlen(filename);
    char *result = malloc(keep + flen + 1);
    if (!result) {
        return path_oom();
    }
    memcpy(result, base_path, keep);
    memcpy(result + keep, filename, flen + 1);
    return result;
}
