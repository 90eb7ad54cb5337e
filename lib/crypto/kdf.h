/*
 * Hashes by their QAPI names, PBKDF2 and the LUKS1 anti-forensic merge
 * (crypto/kdf.c, on nettle).  Used to unlock LUKS key slots.
 */
#ifndef QIMG_CRYPTO_KDF_H
#define QIMG_CRYPTO_KDF_H

#include <stddef.h>
#include <stdint.h>

struct nettle_hash;

/*
 * The hash QEMU calls name (QCryptoHashAlgorithm: md5, sha1, sha224,
 * sha256, sha384, sha512, ripemd160), or NULL.
 */
const struct nettle_hash *kdf_hash_lookup(const char *name);

/* out = digest of data[0, len) (hash->digest_size bytes). */
void kdf_hash(const struct nettle_hash *hash, const uint8_t *data, size_t len,
              uint8_t *out);

/*
 * PBKDF2 with HMAC over hash (RFC 8018): out_len bytes of key from the
 * password and salt.  iterations > 0; the caller bounds it.  sha256 runs
 * on the x86 SHA extensions where the CPU has them (2-3x nettle's).
 */
int kdf_pbkdf2(const struct nettle_hash *hash, const uint8_t *password,
               size_t password_len, const uint8_t *salt, size_t salt_len,
               uint32_t iterations, uint8_t *out, size_t out_len);

/*
 * The LUKS1 anti-forensic merge: stripes blocks of block_len bytes in
 * split, each but the last folded in with hash's diffusion, into out
 * (block_len bytes).  stripes >= 1.
 */
int kdf_af_merge(const struct nettle_hash *hash, const uint8_t *split,
                 size_t block_len, uint32_t stripes, uint8_t *out);

/*
 * The LUKS1 anti-forensic split, kdf_af_merge's inverse: key (block_len
 * bytes) becomes stripes blocks in split, all but the last random.
 */
int kdf_af_split(const struct nettle_hash *hash, const uint8_t *key,
                 size_t block_len, uint32_t stripes, uint8_t *split);

/* len bytes from the kernel's random source (getrandom). */
int kdf_random(uint8_t *buf, size_t len);

/*
 * QEMU's PBKDF2 calibration: the iterations that take nettle's PBKDF2
 * (which QEMU uses) about iter_ms milliseconds of this thread's CPU for
 * this password, salt and output length, at least min_iters; -E2BIG
 * (message set) above UINT32_MAX.
 */
int kdf_pbkdf2_iterations(const struct nettle_hash *hash,
                          const uint8_t *password, size_t password_len,
                          const uint8_t *salt, size_t salt_len,
                          size_t out_len, uint64_t iter_ms, uint32_t divisor,
                          uint32_t min_iters, uint32_t *iters);

/* Zero len bytes at p in a way the compiler keeps (key material). */
void kdf_wipe(void *p, size_t len);

#endif
