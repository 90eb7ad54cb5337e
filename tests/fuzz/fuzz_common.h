/*
 * The driver loop the format fuzz targets share: one input is one
 * in-memory image, taken through probe, a metadata-only open with info,
 * a read-only open with windowed block status and bounded reads, and
 * (later) check.  A per-format target is a struct fuzz_target and a
 * LLVMFuzzerTestOneInput that calls fuzz_image().
 *
 * The image never reaches another file: every open refuses external
 * references (QIMG_OPEN_NO_EXTERNAL), and an open that names a backing
 * file and still succeeds aborts the run as a finding.
 */
#ifndef QIMG_TESTS_FUZZ_COMMON_H
#define QIMG_TESTS_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>

struct fuzz_target {
    /* The format the input is opened as (never probed: untrusted). */
    const char *format;
};

/* Run one input; findings abort (sanitizers report the rest). */
void fuzz_image(const struct fuzz_target *t, const uint8_t *data, size_t size);

/* libFuzzer's entry point, defined by each target. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif
