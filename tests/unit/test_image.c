/*
 * The public image API on raw files: open/probe, reads and writes, zero
 * writes, discard, block status, close; the probed-raw warning and the
 * first-sector guard; the error convention.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qimg/qimg.h"
#include "tap.h"

static char warning[4096];
static int warnings;

static void on_warning(const char *msg, void *opaque)
{
    (void)opaque;
    snprintf(warning, sizeof(warning), "%s", msg);
    warnings++;
}

static char dir[] = "/tmp/qimg-test-image.XXXXXX";

static char *path(const char *name)
{
    static char buf[256];
    snprintf(buf, sizeof(buf), "%s/%s", dir, name);
    return buf;
}

static void make_file(const char *name, size_t size)
{
    int fd = open(path(name), O_CREAT | O_TRUNC | O_WRONLY, 0644);
    if (fd >= 0) {
        if (ftruncate(fd, (off_t)size) < 0) {
            perror("ftruncate");
        }
        close(fd);
    }
}

int main(void)
{
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    qimg_set_warning_handler(on_warning, NULL);
    make_file("a.raw", 1 << 20);

    /* Probing: a raw file read-only raises no warning. */
    struct qimg_image *img = qimg_open(path("a.raw"), NULL, 0);
    TAP_OK(img != NULL);
    tap_eq_str(qimg_get_format(img), "raw", "probed raw");
    tap_eq_u64(warnings, 0, "no warning for a read-only probed raw");
    tap_eq_u64((uint64_t)qimg_get_size(img), 1 << 20, "size");
    TAP_OK(qimg_pwrite(img, "x", 1, 0) == -1 && qimg_get_errno() == EACCES);
    TAP_OK(qimg_close(img) == 0);
    tap_eq_str(qimg_probe(path("a.raw")), "raw", "qimg_probe raw");

    /* Read-write probed raw: the 3-line warning and the block-0 guard. */
    img = qimg_open(path("a.raw"), NULL, QIMG_OPEN_RDWR);
    TAP_OK(img != NULL);
    tap_eq_u64(warnings, 1, "one warning for a read-write probed raw");
    char want[1024];
    snprintf(want, sizeof(want),
             "WARNING: Image format was not specified for '%s' and probing "
             "guessed raw.\n"
             "         Automatically detecting the format is dangerous for "
             "raw images, write operations on block 0 will be restricted.\n"
             "         Specify the 'raw' format explicitly to remove the "
             "restrictions.", path("a.raw"));
    tap_eq_str(warning, want, "warning text is qemu-img's");
    static const uint8_t qcow2_magic[8] = {'Q', 'F', 'I', 0xfb, 0, 0, 0, 3};
    TAP_OK(qimg_pwrite(img, qcow2_magic, sizeof(qcow2_magic), 0) == -1);
    tap_eq_u64(qimg_get_errno(), EPERM, "qcow2 header into block 0: EPERM");
    TAP_OK(qimg_pwrite(img, "hello", 5, 0) == 0);
    TAP_OK(qimg_pwrite(img, qcow2_magic, sizeof(qcow2_magic), 512) == 0);
    TAP_OK(qimg_pwrite_zeroes(img, 0, 4096, 0) == 0);
    TAP_OK(qimg_close(img) == 0);

    /* Explicit raw: no warning, no guard. */
    warnings = 0;
    img = qimg_open(path("a.raw"), "raw", QIMG_OPEN_RDWR);
    TAP_OK(img != NULL);
    tap_eq_u64(warnings, 0, "no warning with -f raw");
    TAP_OK(qimg_pwrite(img, qcow2_magic, sizeof(qcow2_magic), 0) == 0);
    uint8_t buf[16];
    TAP_OK(qimg_pread(img, buf, 8, 0) == 0 && memcmp(buf, qcow2_magic, 8)
                                                   == 0);
    /* Out of range requests are refused before the driver. */
    TAP_OK(qimg_pread(img, buf, 16, (1 << 20) - 8) == -1 &&
           qimg_get_errno() == EINVAL);

    /* Zero writes that may unmap leave a hole; block status sees it. */
    static uint8_t data[65536];
    memset(data, 0xab, sizeof(data));
    TAP_OK(qimg_pwrite(img, data, sizeof(data), 131072) == 0);
    TAP_OK(qimg_flush(img) == 0);
    struct qimg_extent e;
    TAP_OK(qimg_block_status(img, 131072, 65536, &e) == 0);
    TAP_OK((e.flags & QIMG_EXTENT_DATA) && e.depth == 0 &&
           (e.flags & QIMG_EXTENT_ALLOCATED));
    TAP_OK(qimg_pwrite_zeroes(img, 131072, 65536, QIMG_ZERO_MAY_UNMAP) == 0);
    TAP_OK(qimg_block_status(img, 131072, 65536, &e) == 0);
    TAP_OK(e.flags & QIMG_EXTENT_ZERO);
    TAP_OK(qimg_pread(img, data, 512, 131072) == 0 && data[0] == 0 &&
           data[511] == 0);
    TAP_OK(qimg_discard(img, 0, 65536) == 0);
    TAP_OK(qimg_block_status(img, 0, 0, &e) == -1);
    TAP_OK(qimg_close(img) == 0);

    /* The error convention: -1/NULL plus message and errno. */
    img = qimg_open(path("missing.raw"), NULL, 0);
    TAP_OK(img == NULL);
    tap_eq_u64(qimg_get_errno(), ENOENT, "missing file: ENOENT");
    snprintf(want, sizeof(want), "Could not open '%s': Could not open '%s': "
             "No such file or directory", path("missing.raw"),
             path("missing.raw"));
    tap_eq_str(qimg_get_error(), want, "missing file message");
    TAP_OK(qimg_open(path("a.raw"), "nosuch", 0) == NULL &&
           qimg_get_errno() == EINVAL);
    TAP_OK(qimg_open(path("a.raw"), NULL,
                     QIMG_OPEN_RDWR | QIMG_OPEN_FORCE_SHARE) == NULL);

    /* Odd sizes show whole sectors, the tail reads as zeros. */
    make_file("odd.raw", 1000);
    img = qimg_open(path("odd.raw"), "raw", 0);
    tap_eq_u64((uint64_t)qimg_get_size(img), 1024, "1000 bytes show as 1024");
    memset(buf, 0xff, sizeof(buf));
    TAP_OK(qimg_pread(img, buf, 16, 1008) == 0 && buf[0] == 0 &&
           buf[15] == 0);
    TAP_OK(qimg_close(img) == 0);

    /* Creation: raw with a size, and the summary line. */
    struct qimg_opts *opts = qimg_opts_new();
    TAP_OK(qimg_opts_parse(opts, "size=1M,preallocation=full") == 0);
    TAP_OK(qimg_create_prepare(path("new.raw"), "raw", opts, 0) == 0);
    char *summary = qimg_create_summary("raw", opts);
    tap_eq_str(summary, "fmt=raw size=1048576 preallocation=full",
               "create summary");
    free(summary);
    TAP_OK(qimg_create(path("new.raw"), "raw", opts) == 0);
    struct stat st;
    TAP_OK(stat(path("new.raw"), &st) == 0 && st.st_size == 1048576 &&
           st.st_blocks * 512 >= 1048576);
    qimg_opts_free(opts);

    /* A failed create leaves nothing behind. */
    opts = qimg_opts_new();
    TAP_OK(qimg_opts_parse(opts, "size=1M,preallocation=bad") == 0);
    TAP_OK(qimg_create(path("bad.raw"), "raw", opts) == -1);
    TAP_OK(stat(path("bad.raw"), &st) == -1 && errno == ENOENT);
    qimg_opts_free(opts);

    /*
     * The open policy: QIMG_OPEN_NO_EXTERNAL added to every open, the
     * ones a call makes by itself included; other flags are refused.
     */
    opts = qimg_opts_new();
    char spec[512];
    snprintf(spec, sizeof(spec), "backing_file=%s,backing_fmt=raw",
             path("a.raw"));
    TAP_OK(qimg_opts_parse(opts, spec) == 0);
    TAP_OK(qimg_create_prepare(path("top.qcow2"), "qcow2", opts, 0) == 0);
    TAP_OK(qimg_create(path("top.qcow2"), "qcow2", opts) == 0);
    qimg_opts_free(opts);
    TAP_OK(qimg_set_open_policy(QIMG_OPEN_RDWR) == -1 &&
           qimg_get_errno() == EINVAL);
    TAP_OK(qimg_set_open_policy(QIMG_OPEN_NO_EXTERNAL) == 0);
    TAP_OK(qimg_open(path("top.qcow2"), NULL, 0) == NULL &&
           qimg_get_errno() == EPERM);
    TAP_OK(strstr(qimg_get_error(), "external references are refused") !=
           NULL);
    img = qimg_open(path("top.qcow2"), NULL, QIMG_OPEN_NO_BACKING);
    TAP_OK(img != NULL);
    TAP_OK(qimg_close(img) == 0);
    img = qimg_open(path("a.raw"), "raw", 0);
    TAP_OK(img != NULL);
    TAP_OK(qimg_close(img) == 0);
    TAP_OK(qimg_set_open_policy(0) == 0);
    img = qimg_open(path("top.qcow2"), NULL, 0);
    TAP_OK(img != NULL);
    TAP_OK(qimg_close(img) == 0);

    unlink(path("a.raw"));
    unlink(path("odd.raw"));
    unlink(path("new.raw"));
    unlink(path("top.qcow2"));
    rmdir(dir);
    return tap_done();
}
