/*
 * libFuzzer target for QEMU's raw "luks" format opened with its key: the
 * input is a LUKS1 container held in memory, opened with key-secret=sec0
 * (the password "abc" the seeds were made with, make_corpus_luks.sh), so
 * that header decoding, the key slots' PBKDF2, key material reads and
 * decryption, the anti-forensic merge, the digest check and then the
 * payload reads all see fuzzed bytes.  The work is done by the shared
 * loop in fuzz_common.c.
 *
 * Inputs whose header asks for more than FUZZ_LUKS_MAX_ITERS PBKDF2
 * iterations, for an active slot or for the master key digest, are
 * skipped before they are opened.  The library bounds that work
 * (LUKS1_MAX_UNLOCK_COST, seconds of CPU: the hostile suite covers it),
 * but seconds per input would stall the fuzzer on the one field that
 * matters least to memory safety; the seeds use QEMU's minimum of 1000.
 * The master key cache is cleared before each input: a key cached from
 * an earlier input with the same header would skip this one's key
 * material and make its run depend on the inputs before it.
 */
#include <stdbool.h>
#include <string.h>

#include "crypto/luks1.h"
#include "fuzz_common.h"
#include "qimg/qimg.h"

#define FUZZ_LUKS_MAX_ITERS 1000u
/* LUKS1 header fields (crypto/luks1.c names them). */
#define FUZZ_LUKS_MK_ITERS 164
#define FUZZ_LUKS_SLOTS 208
#define FUZZ_LUKS_SLOT_SIZE 48
#define FUZZ_LUKS_SLOT_ITERS 4
#define FUZZ_LUKS_NUM_SLOTS 8
#define FUZZ_LUKS_SLOT_ENABLED 0x00ac71f3u

static const struct fuzz_target target_luks = {
    .format = "luks",
    .open_options = "key-secret=sec0",
    .writes = true,
};

/* Big-endian u32 at off; bytes past the input read as zero (as past EOF). */
static uint32_t be32_at(const uint8_t *data, size_t size, size_t off)
{
    uint32_t v = 0;
    for (size_t i = 0; i < 4; i++) {
        v = v << 8 | (off + i < size ? data[off + i] : 0);
    }
    return v;
}

static bool too_expensive(const uint8_t *data, size_t size)
{
    if (be32_at(data, size, FUZZ_LUKS_MK_ITERS) > FUZZ_LUKS_MAX_ITERS) {
        return true;
    }
    for (size_t i = 0; i < FUZZ_LUKS_NUM_SLOTS; i++) {
        size_t s = FUZZ_LUKS_SLOTS + i * FUZZ_LUKS_SLOT_SIZE;
        if (be32_at(data, size, s) == FUZZ_LUKS_SLOT_ENABLED &&
            be32_at(data, size, s + FUZZ_LUKS_SLOT_ITERS) >
                FUZZ_LUKS_MAX_ITERS) {
            return true;
        }
    }
    return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool secret_added;
    if (!secret_added) {
        if (qimg_secret_add("sec0", "abc", 3) < 0) {
            fuzz_finding("qimg_secret_add failed", NULL);
        }
        secret_added = true;
    }
    if (too_expensive(data, size)) {
        return 0;
    }
    /* Each input unlocks for itself (deterministic runs). */
    luks1_key_cache_clear();
    fuzz_image(&target_luks, data, size);
    return 0;
}
