/*
 * qimg_check through the public API on a hand-built qcow2 image: the
 * counts, the problem lines passed to the callback, the ImageCheck value,
 * formats without a check, refused repairs, and that a check leaves the
 * file's bytes and modification time alone.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "driver.h"
#include "qimg/qimg.h"
#include "tap.h"
#include "util/endian.h"

#define CS 65536u
#define NB_CLUSTERS 6
/*
 * Layout: header 0, refcount table 0x10000, refcount block 0x20000, L1
 * 0x30000, L2 0x40000, one data cluster 0x50000 mapped at guest 0.
 */
static uint8_t image[NB_CLUSTERS * CS];

static void build(void)
{
    memset(image, 0, sizeof(image));
    uint8_t *h = image;
    store_be32(h, 0x514649fb);
    store_be32(h + 4, 3);
    store_be32(h + 20, 16);             /* cluster_bits */
    store_be64(h + 24, 1024 * 1024);    /* size */
    store_be32(h + 36, 1);              /* l1_size */
    store_be64(h + 40, 3 * CS);         /* l1_table_offset */
    store_be64(h + 48, 1 * CS);         /* refcount_table_offset */
    store_be32(h + 56, 1);              /* refcount_table_clusters */
    store_be32(h + 96, 4);              /* refcount_order */
    store_be32(h + 100, 112);           /* header_length */
    store_be64(image + 1 * CS, 2 * CS); /* reftable[0] */
    for (int i = 0; i < NB_CLUSTERS; i++) {
        store_be16(image + 2 * CS + 2 * i, 1);
    }
    store_be64(image + 3 * CS, (1ull << 63) | 4 * CS); /* L1[0] */
    store_be64(image + 4 * CS, (1ull << 63) | 5 * CS); /* L2[0] */
    memset(image + 5 * CS, 0xab, CS);
}

static char path[256];

static int write_image(void)
{
    FILE *f = fopen(path, "wb");
    if (!f) {
        return -1;
    }
    size_t n = fwrite(image, 1, sizeof(image), f);
    return fclose(f) == 0 && n == sizeof(image) ? 0 : -1;
}

struct lines {
    char text[8][160];
    int n;
};

static void collect(const char *line, unsigned kind, void *opaque)
{
    (void)kind;
    struct lines *l = opaque;
    if (l->n < 8) {
        snprintf(l->text[l->n], sizeof(l->text[0]), "%s", line);
    }
    l->n++;
}

/* Check path; -1 if it could not be opened or checked. */
static int run(struct qimg_check_result *res, struct lines *l)
{
    struct qimg_image *img = qimg_open(path, "qcow2", QIMG_OPEN_CHECK);
    if (!img) {
        return -1;
    }
    memset(l, 0, sizeof(*l));
    int ret = qimg_check(img, 0, collect, l, res);
    qimg_close(img);
    return ret;
}

static int same_file(const struct stat *before)
{
    struct stat now;
    static uint8_t back[sizeof(image)];
    FILE *f = fopen(path, "rb");
    if (!f || stat(path, &now) < 0) {
        if (f) {
            fclose(f);
        }
        return 0;
    }
    size_t n = fread(back, 1, sizeof(back), f);
    fclose(f);
    return n == sizeof(image) && memcmp(back, image, sizeof(image)) == 0 &&
           now.st_mtim.tv_sec == before->st_mtim.tv_sec &&
           now.st_mtim.tv_nsec == before->st_mtim.tv_nsec &&
           now.st_size == before->st_size;
}

int main(void)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(path, sizeof(path), "%s/qimg-test-check-XXXXXX",
             tmp ? tmp : "/tmp");
    int fd = mkstemp(path);
    if (fd < 0) {
        tap_ok(0, "mkstemp");
        return tap_done();
    }
    close(fd);

    struct qimg_check_result res;
    struct lines l;
    struct stat before;

    build();
    TAP_OK(write_image() == 0);
    stat(path, &before);
    /* Let a write, if any, show in the modification time. */
    usleep(20000);
    TAP_OK(run(&res, &l) == 0);
    tap_eq_u64(l.n, 0, "clean image: no problem lines");
    tap_eq_u64(res.corruptions + res.leaks + res.check_errors, 0,
               "clean image: no problems");
    tap_eq_u64(res.total_clusters, 16, "total clusters: 1 MiB / 64 KiB");
    tap_eq_u64(res.allocated_clusters, 1, "one allocated cluster");
    tap_eq_u64(res.fragmented_clusters, 0, "not fragmented");
    tap_eq_u64(res.image_end_offset, NB_CLUSTERS * CS, "image end offset");
    TAP_OK(same_file(&before));

    struct qimg_value *v = qimg_check_result_to_value(&res, "x.qcow2", "qcow2");
    char *json = v ? qimg_value_to_json(v) : NULL;
    tap_eq_str(json,
               "{\n"
               "    \"image-end-offset\": 393216,\n"
               "    \"total-clusters\": 16,\n"
               "    \"check-errors\": 0,\n"
               "    \"allocated-clusters\": 1,\n"
               "    \"filename\": \"x.qcow2\",\n"
               "    \"format\": \"qcow2\"\n"
               "}",
               "ImageCheck JSON: QDict order, zero counts left out");
    free(json);
    qimg_value_free(v);

    /* The data cluster's refcount dropped to 0. */
    store_be16(image + 2 * CS + 2 * 5, 0);
    TAP_OK(write_image() == 0);
    stat(path, &before);
    usleep(20000);
    TAP_OK(run(&res, &l) == 0);
    tap_eq_u64(l.n, 2, "refcount 0: two problem lines");
    tap_eq_str(l.text[0], "ERROR cluster 5 refcount=0 reference=1",
               "refcount below references");
    tap_eq_str(l.text[1],
               "ERROR OFLAG_COPIED data cluster: l2_entry=8000000000050000 "
               "refcount=0",
               "COPIED flag against refcount 0");
    tap_eq_u64(res.corruptions, 2, "two corruptions");
    tap_eq_u64(res.leaks, 0, "no leaks");
    TAP_OK(same_file(&before));

    /* An unreferenced cluster with refcount 1: a leak. */
    build();
    store_be64(image + 4 * CS, 0);
    TAP_OK(write_image() == 0);
    TAP_OK(run(&res, &l) == 0);
    tap_eq_str(l.text[0], "Leaked cluster 5 refcount=1 reference=0",
               "leak line");
    TAP_OK(res.leaks == 1 && res.corruptions == 0);
    tap_eq_u64(res.allocated_clusters, 0, "nothing allocated");

    /* No callback is fine. */
    struct qimg_image *img = qimg_open(path, "qcow2", QIMG_OPEN_CHECK);
    TAP_OK(img && qimg_check(img, 0, NULL, NULL, &res) == 0 && res.leaks == 1);
    /* Repairs need a writable image: refused, nothing written. */
    stat(path, &before);
    usleep(20000);
    TAP_OK(img &&
           qimg_check(img, QIMG_CHECK_FIX_LEAKS, NULL, NULL, &res) == -1 &&
           qimg_get_errno() == EROFS);
    TAP_OK(same_file(&before));
    qimg_close(img);
    /* Opened writable, the leak is repaired, and a second run is clean. */
    img = qimg_open(path, "qcow2", QIMG_OPEN_CHECK | QIMG_OPEN_RDWR);
    TAP_OK(img &&
           qimg_check(img, QIMG_CHECK_FIX_LEAKS, NULL, NULL, &res) == 0 &&
           res.leaks == 0 && res.leaks_fixed == 1);
    TAP_OK(img && qimg_check(img, 0, NULL, NULL, &res) == 0 &&
           res.leaks == 0 && res.corruptions == 0 && res.leaks_fixed == 0);
    qimg_close(img);

    /*
     * The work limit: one L2 table of 8192 entries is examined; a limit
     * below that fails the check with EFBIG, and counts it as a check error.
     */
    build();
    TAP_OK(write_image() == 0);
    check_max_table_entries = 8192;
    TAP_OK(run(&res, &l) == 0 && res.check_errors == 0);
    check_max_table_entries = 8191;
    img = qimg_open(path, "qcow2", QIMG_OPEN_CHECK);
    TAP_OK(img && qimg_check(img, 0, NULL, NULL, &res) == -1 &&
           qimg_get_errno() == EFBIG && res.check_errors == 1);
    TAP_OK(strstr(qimg_get_error(), "qimg-test-check-") != NULL);
    qimg_close(img);
    check_max_table_entries = CHECK_DEFAULT_MAX_TABLE_ENTRIES;

    /* raw has no check. */
    img = qimg_open(path, "raw", 0);
    TAP_OK(img && !qimg_check_supported(img));
    TAP_OK(img && qimg_check(img, 0, NULL, NULL, &res) == -1 &&
           qimg_get_errno() == ENOTSUP);
    tap_eq_str(qimg_get_error(), "This image format does not support checks",
               "raw: qemu-img's message");
    qimg_close(img);

    unlink(path);
    return tap_done();
}
