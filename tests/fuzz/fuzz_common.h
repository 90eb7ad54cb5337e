/*
 * The driver loop the format fuzz targets share: one input is one
 * in-memory image, taken through probe, a metadata-only open with info,
 * a read-only open with windowed block status, bounded reads and check,
 * and for some formats a repair on a writable copy.  A per-format target
 * is a struct fuzz_target and a LLVMFuzzerTestOneInput that calls
 * fuzz_image().
 *
 * The image never reaches another file: every open refuses external
 * references (QIMG_OPEN_NO_EXTERNAL), and an open that names a backing
 * file and still succeeds aborts the run as a finding.  The one
 * exception is a target whose input is an extent file (.descriptor):
 * its fixed descriptor names only the input, written to a private
 * directory, and nothing in the input can name a file.
 */
#ifndef QIMG_TESTS_FUZZ_COMMON_H
#define QIMG_TESTS_FUZZ_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct fuzz_target {
    /* The format the input is opened as (never probed: untrusted). */
    const char *format;
    /*
     * Also repair a small input (qemu-img check -r all) on a writable
     * copy, and check the repaired image again.
     */
    bool repair;
    /*
     * Runtime options for every open (qimg_opts_parse text, e.g.
     * "key-secret=sec0" for a keyed luks open); NULL for none.
     */
    const char *open_options;
    /*
     * Not NULL: the input is not an image but the one extent file this
     * descriptor text names, as FUZZ_EXTENT_NAME (formats whose extents
     * are only reached through a descriptor, like vmdk's seSparse).  The
     * input is written to that file in a private directory and the
     * descriptor, a memory leaf there, is the image opened.
     */
    const char *descriptor;
    /*
     * Also take a few guest writes on a writable copy of the input
     * (fuzz_writes): every call must succeed or fail with a message, and
     * a write within one sector must read back whatever the tables say.
     */
    bool writes;
    /*
     * The format's check proves that no two guest clusters share a host
     * cluster (qcow2's refcounts, qed's and vdi's used maps): on an image
     * it finds clean, every write must also read back, still read back
     * after a clean close and a reopen, and leave no corruption.
     */
    bool writes_checked;
};

/* The file name a target's descriptor gives its extent. */
#define FUZZ_EXTENT_NAME "fuzz-extent"

/* Run one input; findings abort (sanitizers report the rest). */
void fuzz_image(const struct fuzz_target *t, const uint8_t *data, size_t size);

/*
 * A memory leaf for targets that write: a copy of data (len bytes) that
 * refuses to grow past max_size (EFBIG, message set), so that a hostile
 * table offset cannot make a write allocate a gigabyte, and that, when
 * keep is not NULL, hands its final contents to *keep as it is closed
 * (so an image can be closed cleanly and then looked at).  Returns 0 or
 * -errno.
 */
struct fuzz_kept {
    uint8_t *data; /* malloc'd; NULL until the leaf is closed */
    size_t len;
};
struct qimg_io;
int fuzz_leaf_open(const uint8_t *data, size_t len, bool writable,
                   uint64_t max_size, struct fuzz_kept *keep,
                   struct qimg_io **out);
/* The current contents of an open fuzz leaf. */
const uint8_t *fuzz_leaf_buffer(struct qimg_io *io, size_t *len);
void fuzz_kept_free(struct fuzz_kept *k);

/* Print what broke and abort: libFuzzer reports the input. */
void fuzz_finding(const char *what, const char *detail)
    __attribute__((noreturn));
/* A failing call must leave a message and an errno (else a finding). */
void fuzz_expect_error_set(const char *call);

/* libFuzzer's entry point, defined by each target. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif
