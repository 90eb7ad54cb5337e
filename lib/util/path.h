/*
 * Path helpers for image file names (POSIX paths only).  The semantics are
 * QEMU's where QEMU has the function (path_is_absolute, path_has_protocol,
 * path_combine in block.c), because backing file names are resolved the
 * way qemu-img resolves them.
 */
#ifndef QIMG_UTIL_PATH_H
#define QIMG_UTIL_PATH_H

#include <stdbool.h>

/* Does path start with '/'? */
bool path_is_absolute(const char *path);

/*
 * Does name carry a protocol prefix ("nbd:...", "json:{...}")?  True when
 * a ':' comes before any '/' (QEMU's path_has_protocol), so "a:b" and
 * ":x" are protocol names while "./a:b" and "/x/a:b" are plain files.
 */
bool path_is_protocol(const char *name);

/*
 * The directory part of path, as POSIX dirname() defines it ("a/b" ->
 * "a", "b" -> ".", "/b" -> "/", "a/b/" -> "a"), malloc'd.  NULL with
 * ENOMEM recorded if allocation fails.
 */
char *path_dirname(const char *path);

/*
 * Resolve filename (a backing file name as stored in an image) relative
 * to base_path (the image's own name), as QEMU's path_combine does:
 *  - an absolute filename is returned as is;
 *  - otherwise filename is appended to base_path cut after its last '/'
 *    (or after its "protocol:" prefix, whichever is later), so a base
 *    without either gives filename unchanged.  No normalisation is done:
 *    "dir//img" and "x.qcow2" give "dir//x.qcow2".
 * malloc'd; NULL with ENOMEM recorded if allocation fails.
 */
char *path_combine(const char *base_path, const char *filename);

#endif
