/*
 * Replays inputs through a fuzz target without libFuzzer, so committed
 * crash inputs and the seed corpus run as ordinary tests in every build.
 *
 *   replay_TARGET DIR_OR_FILE...
 *
 * Every regular file in each directory (sorted, not recursive) is run
 * through LLVMFuzzerTestOneInput.  The output is TAP, one line per file;
 * a finding aborts the process (as under libFuzzer), which fails the test.
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz_common.h"

/* The fuzz runs use -max_len=1048576; a replayed input is no longer. */
#define REPLAY_MAX_LEN (1u << 20)

static int count;

static int replay_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return -1;
    }
    uint8_t *buf = malloc(REPLAY_MAX_LEN);
    if (!buf) {
        fclose(f);
        return -1;
    }
    size_t n = fread(buf, 1, REPLAY_MAX_LEN, f);
    int err = ferror(f);
    fclose(f);
    if (err) {
        perror(path);
        free(buf);
        return -1;
    }
    /* Flushed first: a finding aborts without flushing stdio. */
    printf("# %s (%zu bytes)\n", path, n);
    fflush(stdout);
    /* An exact-size copy, so ASan sees reads past the input's end. */
    uint8_t *input = malloc(n ? n : 1);
    if (!input) {
        free(buf);
        return -1;
    }
    memcpy(input, buf, n);
    free(buf);
    LLVMFuzzerTestOneInput(input, n);
    free(input);
    printf("ok %d - %s\n", ++count, path);
    fflush(stdout);
    return 0;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int replay_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) {
        perror(dir);
        return -1;
    }
    char **names = NULL;
    size_t nb = 0;
    int ret = 0;
    struct dirent *de;
    while (ret == 0 && (de = readdir(d))) {
        if (de->d_name[0] == '.') {
            continue;
        }
        char **more = realloc(names, (nb + 1) * sizeof(*names));
        if (!more) {
            ret = -1;
            break;
        }
        names = more;
        size_t len = strlen(dir) + strlen(de->d_name) + 2;
        char *path = malloc(len);
        if (!path) {
            ret = -1;
            break;
        }
        snprintf(path, len, "%s/%s", dir, de->d_name);
        names[nb++] = path;
    }
    closedir(d);
    if (nb > 0) {
        qsort(names, nb, sizeof(*names), cmp_names);
    }
    for (size_t i = 0; i < nb; i++) {
        struct stat st;
        if (ret == 0 && stat(names[i], &st) == 0 && S_ISREG(st.st_mode)) {
            ret = replay_file(names[i]);
        }
        free(names[i]);
    }
    free(names);
    return ret;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR_OR_FILE...\n", argv[0]);
        return 2;
    }
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) < 0) {
            perror(argv[i]);
            return 1;
        }
        int ret =
            S_ISDIR(st.st_mode) ? replay_dir(argv[i]) : replay_file(argv[i]);
        if (ret < 0) {
            printf("not ok %d - %s\n", ++count, argv[i]);
            printf("1..%d\n", count);
            return 1;
        }
    }
    if (count == 0) {
        /* A replay test with nothing to replay has lost its inputs. */
        printf("not ok 1 - no inputs found\n1..1\n");
        return 1;
    }
    printf("1..%d\n", count);
    return 0;
}
