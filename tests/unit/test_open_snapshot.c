/*
 * qimg_open_snapshot's contract on a raw file (a format without internal
 * snapshots): read-only only, a selection is required and must name an
 * id, a name, or one id-or-name; formats without snapshots fail with
 * QEMU's message; nothing is left open on failure.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qimg/qimg.h"
#include "tap.h"

int main(void)
{
    char file[] = "/tmp/qimg-test-snap.XXXXXX";
    int fd = mkstemp(file);
    if (fd < 0 || ftruncate(fd, 1 << 20) < 0) {
        perror("mkstemp");
        return 1;
    }
    close(fd);

    struct qimg_snapshot_select by_id = {.id = "1"};
    struct qimg_image *img =
        qimg_open_snapshot(file, "raw", QIMG_OPEN_RDWR, &by_id);
    TAP_OK(img == NULL);
    TAP_OK(qimg_get_errno() == EINVAL);
    TAP_OK(strstr(qimg_get_error(), "read-only") != NULL);

    img = qimg_open_snapshot(file, "raw", 0, NULL);
    TAP_OK(img == NULL);
    TAP_OK(qimg_get_errno() == EINVAL);

    struct qimg_snapshot_select none = {0};
    img = qimg_open_snapshot(file, "raw", 0, &none);
    TAP_OK(img == NULL);
    TAP_OK(qimg_get_errno() == EINVAL);

    struct qimg_snapshot_select both = {.id = "1", .id_or_name = "1"};
    img = qimg_open_snapshot(file, "raw", 0, &both);
    TAP_OK(img == NULL);
    TAP_OK(qimg_get_errno() == EINVAL);

    img = qimg_open_snapshot(file, "raw", 0, &by_id);
    TAP_OK(img == NULL);
    TAP_OK(qimg_get_errno() == ENOTSUP);
    tap_eq_str(qimg_get_error(),
               "Failed to load snapshot: Block format 'raw' used by device "
               "'' does not support temporarily loading internal snapshots",
               "raw: QEMU's message");

    img = qimg_open_snapshot("/nonexistent/x", "raw", 0, &by_id);
    TAP_OK(img == NULL);
    TAP_OK(qimg_get_errno() == ENOENT);

    /* The unsafe cache mode: writes work, close reports success. */
    img = qimg_open(file, "raw", QIMG_OPEN_RDWR | QIMG_OPEN_CACHE_UNSAFE);
    TAP_OK(img != NULL);
    if (img) {
        TAP_OK(qimg_pwrite(img, "x", 1, 4096) == 0);
        TAP_OK(qimg_flush(img) == 0);
        TAP_OK(qimg_close(img) == 0);
    }
    unlink(file);
    return tap_done();
}
