/*
 * LUKS1 containers (crypto/luks1.c): the partition header, unlocking a
 * key slot with a password, and QEMU's QCryptoBlockInfoLUKS value.  Used
 * by the raw luks format and by qcow2's LUKS encryption, which keeps the
 * same header (and key material) in clusters of its own.
 */
#ifndef QIMG_CRYPTO_LUKS1_H
#define QIMG_CRYPTO_LUKS1_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LUKS1_HEADER_SIZE 592
#define LUKS1_NUM_SLOTS 8
#define LUKS1_SALT_SIZE 32
#define LUKS1_DIGEST_SIZE 20

/*
 * The most PBKDF2 work one unlock may spend over all the slots it tries
 * (each slot's key and the master key digest for it), in units of one
 * HMAC-SHA-256 iteration producing one digest-sized block.  A key longer
 * than the digest costs one PBKDF2 pass per block, and the slow hashes
 * count more (luks1.c: luks_hashes' weights), so that the budget bounds
 * time, not a number: 3 * 2^24 units are about 6 s on the 2-core test
 * machine (8.2 * 10^6 units/s with nettle), inside the hostile suite's
 * 10 s of CPU.  QEMU has no limit; it calibrates a slot to 2 s of the
 * creating machine: its default aes-256-xts/sha256 container there has
 * 8.1 * 10^6 slot iterations (two blocks) and 2.0 * 10^6 digest ones,
 * 18 * 10^6 units a slot tried.  So such containers open even with the
 * password in their second slot, and single-slot ones made on a machine
 * up to 2.7 times faster; a hostile u32 count (hours) is refused before
 * anything is spent.
 */
#define LUKS1_MAX_UNLOCK_COST (3ull << 24)
/*
 * Unlocked master keys kept for reopening the same container with the
 * same password in this process (convert opens a source once per
 * worker): at most this many, oldest replaced first.
 */
#define LUKS1_KEY_CACHE_SLOTS 8

/* One key slot (offsets in bytes from the start of the header). */
struct luks1_slot {
    bool active;
    uint32_t iters;
    uint32_t stripes;
    uint64_t key_offset;
    uint8_t salt[LUKS1_SALT_SIZE];
};

/*
 * A decoded LUKS1 header, names already mapped to QEMU's QAPI enum
 * strings (static storage), so info can print them as they are and the
 * cipher code can take them.
 */
struct luks1_header {
    const char *cipher_alg; /* of the payload: "aes-256" for aes-xts-256 */
    const char *cipher_mode;
    const char *ivgen_alg;
    const char *ivgen_hash_alg; /* NULL unless the ivgen is essiv */
    const char *hash_alg;
    uint64_t payload_offset; /* bytes */
    uint32_t key_bytes;      /* master key length (both xts halves) */
    uint32_t master_key_iters;
    uint8_t mk_digest[LUKS1_DIGEST_SIZE];
    uint8_t mk_digest_salt[LUKS1_SALT_SIZE];
    char uuid[41]; /* up to 40 bytes, NUL-terminated copy */
    struct luks1_slot slots[LUKS1_NUM_SLOTS];
};

/*
 * Decode and check the header in buf (len bytes; bytes past len read as
 * zero), with QEMU's checks in QEMU's order and its messages.  No key is
 * needed: this is what QEMU does for a metadata-only open.
 */
int luks1_decode(const uint8_t *buf, size_t len, struct luks1_header *out);

/*
 * Read len bytes at off, counted from the start of the LUKS header, into
 * buf; 0 or -errno with the message set.
 */
typedef int luks1_read_fn(void *opaque, uint8_t *buf, size_t len,
                          uint64_t off);

struct sector_cipher;

/*
 * Find the master key with password: each active slot in turn, as QEMU
 * does.  On success *out is the payload's sector cipher (IVs are sector
 * numbers the caller chooses).  A password that opens no slot fails with
 * -EPERM and QEMU's "Invalid password, cannot unlock any keyslot".
 */
int luks1_unlock(const struct luks1_header *h, const uint8_t *password,
                 size_t password_len, luks1_read_fn *read, void *opaque,
                 struct sector_cipher **out);
/*
 * Forget (and wipe) every cached master key.  The fuzz target calls it
 * before each input, so that an input's run does not depend on the ones
 * before it (a cached key skips the key material an input may mutate).
 */
void luks1_key_cache_clear(void);

/* The choices of a new container (QAPI names, as luks1_header's). */
struct luks1_create_opts {
    const char *cipher_alg;     /* aes-256 */
    const char *cipher_mode;    /* xts */
    const char *ivgen_alg;      /* plain64 */
    const char *ivgen_hash_alg; /* NULL: none (sha256 for essiv) */
    const char *hash_alg;       /* sha256 */
    uint64_t iter_time_ms;      /* PBKDF2 time of the slot: 2000 */
};

struct qimg_opts;

/*
 * QEMU's LUKS creation options PREFIX + cipher-alg, cipher-mode,
 * ivgen-alg, ivgen-hash-alg, hash-alg, iter-time (prefix "" for luks,
 * "encrypt." for qcow2), with QEMU's defaults and messages for names
 * outside its enums.
 */
int luks1_create_opts_parse(const struct qimg_opts *opts, const char *prefix,
                            struct luks1_create_opts *o);

/*
 * Check the choices' combination as creation would (QEMU's messages)
 * and give the header area a container of them takes (its payload
 * offset in bytes).
 */
int luks1_create_check(const struct luks1_create_opts *o, uint64_t *area);

/*
 * A new container as QEMU makes one: a random master key, its digest
 * (PBKDF2 calibrated to iter_time / 8), eight slots of key material
 * after the 4 KiB header, slot 0 holding the master key under password
 * (PBKDF2 calibrated to iter_time), a random uuid.  *area is the
 * header area (payload_offset bytes: header, then each slot's material,
 * unused slots zero), *out the payload's cipher.
 */
int luks1_create(const struct luks1_create_opts *o, const uint8_t *password,
                 size_t password_len, uint8_t **area, size_t *area_len,
                 struct sector_cipher **out);

struct qimg_value;

/*
 * QCryptoBlockInfoLUKS in schema order, with "format": "luks" first when
 * with_format (qcow2's encrypt), or NULL when out of memory.
 */
struct qimg_value *luks1_info_value(const struct luks1_header *h,
                                    bool with_format);

#endif
