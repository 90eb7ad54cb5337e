/*
 * Sector ciphers (crypto/cipher.c, on nettle): a block cipher, a chaining
 * mode and an IV generator, applied 512-byte sector by sector as LUKS1
 * and qcow's AES encryption (dm-crypt's scheme) do.
 *
 * A sector_cipher is immutable once made, so any number of threads may
 * encrypt and decrypt with one at the same time.
 */
#ifndef QIMG_CRYPTO_CIPHER_H
#define QIMG_CRYPTO_CIPHER_H

#include <stddef.h>
#include <stdint.h>

#define CRYPTO_SECTOR_SIZE 512u

struct sector_cipher;

/*
 * Key bytes of cipher alg (QAPI QCryptoCipherAlgorithm names: aes-128,
 * aes-192, aes-256, cast5-128, serpent-128/192/256, twofish-128/192/256),
 * or 0 if qimg does not know it.
 */
size_t crypto_cipher_key_bytes(const char *alg);

/*
 * A sector cipher: alg as above; mode ecb, cbc, xts or ctr; ivgen plain,
 * plain64 or essiv (ignored for ecb); ivhash names essiv's hash
 * (kdf_hash_lookup), NULL otherwise.  key is key_len bytes: the cipher's
 * key size, twice that for xts (data key, then tweak key).  The key is
 * copied into the cipher's schedules only.
 */
int sector_cipher_new(const char *alg, const char *mode, const char *ivgen,
                      const char *ivhash, const uint8_t *key, size_t key_len,
                      struct sector_cipher **out);
void sector_cipher_free(struct sector_cipher *c);

/*
 * Decrypt (encrypt) len bytes in place, the first sector being number
 * sector (its IV); every 512 bytes start a new sector, and the last may
 * be shorter.  len must be a multiple of the cipher's block size (-EINVAL
 * otherwise, and nothing changes).
 */
int sector_cipher_decrypt(const struct sector_cipher *c, uint64_t sector,
                          uint8_t *buf, size_t len);
int sector_cipher_encrypt(const struct sector_cipher *c, uint64_t sector,
                          uint8_t *buf, size_t len);

/* Read len bytes at off into buf: 0 or -errno with the message set. */
typedef int sector_read_fn(void *opaque, uint8_t *buf, size_t len,
                           uint64_t off);

/*
 * Read and decrypt len bytes of an encrypted medium at byte offset off,
 * whose sectors take their IVs from iv_off: the byte at off belongs to
 * sector iv_off / 512 (off and iv_off must agree modulo 512).  Partial
 * sectors at either end are read whole into a bounce sector; the rest
 * is read into buf and decrypted in place.
 */
int sector_cipher_pread(const struct sector_cipher *c, sector_read_fn *read,
                        void *opaque, uint8_t *buf, size_t len, uint64_t off,
                        uint64_t iv_off);

#endif
