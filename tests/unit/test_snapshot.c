/*
 * qimg_snapshot_create/apply/delete through the public API, all on one
 * open handle (so the driver's cached state must follow every step):
 * contents revert and stay put under later writes, compressed clusters,
 * ids as QEMU numbers them, qimg_check clean after each step, and the
 * errors and messages of the contract (missing snapshot, read-only
 * handle, raw images).
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qimg/qimg.h"
#include "tap.h"

#define SIZE (4u << 20)
#define CLUSTER 65536u

static char dir[] = "/tmp/qimg-test-snapshot.XXXXXX";

static char *path(const char *name)
{
    static char buf[256];
    snprintf(buf, sizeof(buf), "%s/%s", dir, name);
    return buf;
}

/* Does the image read as byte c over [off, off + len)? */
static int reads_as(struct qimg_image *img, uint64_t off, size_t len, int c)
{
    uint8_t *buf = malloc(len);
    int same = buf && qimg_pread(img, buf, len, off) == 0;
    for (size_t i = 0; same && i < len; i++) {
        same = buf[i] == (uint8_t)c;
    }
    free(buf);
    return same;
}

static int fill(struct qimg_image *img, uint64_t off, size_t len, int c)
{
    uint8_t *buf = malloc(len);
    if (!buf) {
        return -1;
    }
    memset(buf, c, len);
    int ret = qimg_pwrite(img, buf, len, off);
    free(buf);
    return ret;
}

/* qimg_check finds nothing: no corruption, no leak, no error. */
static int check_clean(struct qimg_image *img)
{
    struct qimg_check_result res;
    if (qimg_flush(img) < 0 || qimg_check(img, 0, NULL, NULL, &res) < 0) {
        return 0;
    }
    return res.corruptions == 0 && res.leaks == 0 && res.check_errors == 0;
}

/* The snapshots' "id:name" joined by spaces. */
static char *listing(struct qimg_image *img)
{
    static char buf[512];
    buf[0] = '\0';
    struct qimg_image_info *info = qimg_get_info(img);
    for (size_t i = 0; info && i < info->nb_snapshots; i++) {
        size_t n = strlen(buf);
        snprintf(buf + n, sizeof(buf) - n, "%s%s:%s", i ? " " : "",
                 info->snapshots[i].id, info->snapshots[i].name);
    }
    qimg_image_info_free(info);
    return buf;
}

static void test_qcow2(void)
{
    struct qimg_opts *opts = qimg_opts_new();
    int ret = opts ? qimg_opts_parse(opts, "size=4M") : -1;
    if (ret == 0) {
        ret = qimg_create(path("a.qcow2"), "qcow2", opts);
    }
    qimg_opts_free(opts);
    TAP_OK(ret == 0);
    struct qimg_image *img = qimg_open(path("a.qcow2"), "qcow2",
                                       QIMG_OPEN_RDWR);
    TAP_OK(img != NULL);
    if (!img) {
        return;
    }
    uint8_t *z = calloc(1, CLUSTER);
    memset(z, 5, CLUSTER);
    TAP_OK(fill(img, 0, 1u << 20, 1) == 0);
    TAP_OK(qimg_pwrite_compressed(img, z, CLUSTER, 2u << 20) == 0);
    TAP_OK(qimg_snapshot_create(img, "a") == 0);
    tap_eq_str(listing(img), "1:a", "one snapshot, id 1");
    TAP_OK(check_clean(img));

    /* Shared clusters are copied, not overwritten. */
    TAP_OK(fill(img, 512u << 10, 1u << 20, 2) == 0);
    memset(z, 6, CLUSTER);
    TAP_OK(qimg_pwrite_compressed(img, z, CLUSTER, 3u << 20) == 0);
    TAP_OK(fill(img, 2u << 20, 4096, 7) == 0);
    TAP_OK(qimg_snapshot_create(img, "a") == 0);
    tap_eq_str(listing(img), "1:a 2:a", "names need not be unique");
    TAP_OK(check_clean(img));

    struct qimg_snapshot_select by_name = {.name = "a"};
    struct qimg_snapshot_select two = {.id_or_name = "2"};
    struct qimg_snapshot_select one = {.id = "1"};
    TAP_OK(qimg_snapshot_apply(img, &by_name) == 0);
    TAP_OK(reads_as(img, 0, 1u << 20, 1));
    TAP_OK(reads_as(img, 1u << 20, 1u << 20, 0));
    TAP_OK(reads_as(img, 2u << 20, CLUSTER, 5));
    TAP_OK(reads_as(img, 3u << 20, CLUSTER, 0));
    TAP_OK(check_clean(img));

    /* Writes after an apply leave both snapshots as they were. */
    TAP_OK(fill(img, 0, 2u << 20, 3) == 0);
    TAP_OK(check_clean(img));
    TAP_OK(qimg_snapshot_apply(img, &two) == 0);
    TAP_OK(reads_as(img, 0, 512u << 10, 1));
    TAP_OK(reads_as(img, 512u << 10, 1u << 20, 2));
    TAP_OK(reads_as(img, 2u << 20, 4096, 7));
    TAP_OK(reads_as(img, 2u << 20 | 4096, CLUSTER - 4096, 5));
    TAP_OK(reads_as(img, 3u << 20, CLUSTER, 6));
    TAP_OK(qimg_snapshot_apply(img, &one) == 0);
    TAP_OK(reads_as(img, 512u << 10, 512u << 10, 1));

    /* Delete the first, then the id goes on from the largest left. */
    TAP_OK(qimg_snapshot_delete(img, &one) == 0);
    tap_eq_str(listing(img), "2:a", "first deleted");
    TAP_OK(check_clean(img));
    TAP_OK(reads_as(img, 0, 1u << 20, 1));
    TAP_OK(qimg_snapshot_create(img, "c") == 0);
    tap_eq_str(listing(img), "2:a 3:c", "next id after the largest");
    TAP_OK(qimg_snapshot_delete(img, &two) == 0);
    struct qimg_snapshot_select c = {.name = "c"};
    TAP_OK(qimg_snapshot_delete(img, &c) == 0);
    tap_eq_str(listing(img), "", "all deleted");
    TAP_OK(check_clean(img));
    TAP_OK(reads_as(img, 0, 1u << 20, 1));
    TAP_OK(reads_as(img, 2u << 20, CLUSTER, 5));

    /* Missing snapshots. */
    struct qimg_snapshot_select nope = {.id_or_name = "nope"};
    TAP_OK(qimg_snapshot_apply(img, &nope) == -1);
    tap_eq_u64((uint64_t)qimg_get_errno(), ENOENT, "apply missing: ENOENT");
    tap_eq_str(qimg_get_error(),
               "Failed to load snapshot: No such file or directory",
               "apply missing: message");
    TAP_OK(qimg_snapshot_delete(img, &nope) == -1);
    tap_eq_str(qimg_get_error(), "snapshot not found",
               "delete missing: message");
    TAP_OK(qimg_close(img) == 0);
    free(z);

    /* A read-only handle refuses every change. */
    img = qimg_open(path("a.qcow2"), "qcow2", 0);
    TAP_OK(img != NULL);
    if (img) {
        TAP_OK(qimg_snapshot_create(img, "x") == -1);
        tap_eq_u64((uint64_t)qimg_get_errno(), EACCES, "read-only: EACCES");
        tap_eq_str(listing(img), "", "read-only: nothing made");
        qimg_close(img);
    }
}

static void test_raw(void)
{
    struct qimg_opts *opts = qimg_opts_new();
    int ret = opts ? qimg_opts_parse(opts, "size=1M") : -1;
    if (ret == 0) {
        ret = qimg_create(path("r.raw"), "raw", opts);
    }
    qimg_opts_free(opts);
    struct qimg_image *img = qimg_open(path("r.raw"), "raw", QIMG_OPEN_RDWR);
    TAP_OK(ret == 0 && img != NULL);
    if (!img) {
        return;
    }
    struct qimg_snapshot_select x = {.id_or_name = "x"};
    TAP_OK(qimg_snapshot_create(img, "x") == -1);
    tap_eq_u64((uint64_t)qimg_get_errno(), ENOTSUP, "raw create: ENOTSUP");
    TAP_OK(qimg_snapshot_apply(img, &x) == -1);
    tap_eq_str(qimg_get_error(), "Block driver does not support snapshots",
               "raw apply: message");
    TAP_OK(qimg_snapshot_delete(img, &x) == -1);
    tap_eq_u64((uint64_t)qimg_get_errno(), ENOENT, "raw delete: ENOENT");
    qimg_close(img);
}

int main(void)
{
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_qcow2();
    test_raw();
    unlink(path("a.qcow2"));
    unlink(path("r.raw"));
    rmdir(dir);
    return tap_done();
}
