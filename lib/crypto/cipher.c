/*
 * Sector ciphers on nettle's block ciphers.
 *
 * Each 512-byte sector is encrypted on its own with an IV made from its
 * number (dm-crypt's scheme, which LUKS1 and qcow's AES use):
 *   plain    the number's low 32 bits, little-endian, zero-padded;
 *   plain64  the number, 64-bit little-endian, zero-padded;
 *   essiv    plain64 encrypted with a cipher keyed by the hash of the key
 *            (same family, key size = digest size).
 * Modes: ecb (no IV), cbc, ctr (the IV as a big-endian counter) and xts
 * (IEEE 1619, the IV as tweak; no ciphertext stealing, as sectors are
 * whole blocks).  XTS is done here rather than with nettle's xts_*: the
 * tweaks of a sector are computed first and the blocks go through the
 * cipher in one call, which lets nettle's AES-NI path run unbroken.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <nettle/cbc.h>
#include <nettle/ctr.h>
#include <nettle/nettle-meta.h>

#include "core/error.h"
#include "crypto/cipher.h"
#include "crypto/kdf.h"
#include "util/endian.h"

#define BLOCK_MAX 16u
#define XTS_BLOCK 16u

enum cipher_mode { MODE_ECB, MODE_CBC, MODE_XTS, MODE_CTR };
enum ivgen_kind { IVGEN_NONE, IVGEN_PLAIN, IVGEN_PLAIN64, IVGEN_ESSIV };

static const struct {
    const char *name;
    const char *family;
    const struct nettle_cipher *alg;
} cipher_algs[] = {
    {"aes-128", "aes", &nettle_aes128},
    {"aes-192", "aes", &nettle_aes192},
    {"aes-256", "aes", &nettle_aes256},
    {"cast5-128", "cast5", &nettle_cast128},
    {"serpent-128", "serpent", &nettle_serpent128},
    {"serpent-192", "serpent", &nettle_serpent192},
    {"serpent-256", "serpent", &nettle_serpent256},
    {"twofish-128", "twofish", &nettle_twofish128},
    {"twofish-192", "twofish", &nettle_twofish192},
    {"twofish-256", "twofish", &nettle_twofish256},
};
#define NB_CIPHER_ALGS (sizeof(cipher_algs) / sizeof(cipher_algs[0]))

/* A block cipher with both key schedules. */
struct keyed_cipher {
    const struct nettle_cipher *alg;
    void *enc;
    void *dec;
};

struct sector_cipher {
    enum cipher_mode mode;
    enum ivgen_kind ivgen;
    size_t block; /* the cipher's block size: 8 or 16 */
    struct keyed_cipher data;
    struct keyed_cipher tweak; /* xts only */
    struct keyed_cipher essiv; /* essiv only */
};

static int alg_index(const char *name)
{
    for (size_t i = 0; i < NB_CIPHER_ALGS; i++) {
        if (strcmp(cipher_algs[i].name, name) == 0) {
            return (int)i;
        }
    }
    return -1;
}

size_t crypto_cipher_key_bytes(const char *alg)
{
    int i = alg_index(alg);
    return i < 0 ? 0 : cipher_algs[i].alg->key_size;
}

static int keyed_init(struct keyed_cipher *k, const struct nettle_cipher *alg,
                      const uint8_t *key)
{
    k->alg = alg;
    k->enc = malloc(alg->context_size);
    k->dec = malloc(alg->context_size);
    if (!k->enc || !k->dec) {
        return error_set(ENOMEM, "Out of memory");
    }
    alg->set_encrypt_key(k->enc, key);
    alg->set_decrypt_key(k->dec, key);
    return 0;
}

static void keyed_free(struct keyed_cipher *k)
{
    if (k->alg) {
        kdf_wipe(k->enc, k->alg->context_size);
        kdf_wipe(k->dec, k->alg->context_size);
    }
    free(k->enc);
    free(k->dec);
}

void sector_cipher_free(struct sector_cipher *c)
{
    if (c) {
        keyed_free(&c->data);
        keyed_free(&c->tweak);
        keyed_free(&c->essiv);
        free(c);
    }
}

/*
 * essiv's cipher: alg's family with the digest's size as key size, with
 * QEMU's messages when there is none.
 */
static int essiv_init(struct sector_cipher *c, int alg, const char *ivhash,
                      const uint8_t *key, size_t key_len)
{
    const struct nettle_hash *hash = ivhash ? kdf_hash_lookup(ivhash) : NULL;
    if (!hash) {
        return error_set(EINVAL, "Missing IV generator hash specification");
    }
    const char *family = cipher_algs[alg].family;
    int found = -1;
    for (size_t i = 0; i < NB_CIPHER_ALGS; i++) {
        if (strcmp(cipher_algs[i].family, family) == 0 &&
            cipher_algs[i].alg->key_size == hash->digest_size) {
            found = (int)i;
        }
    }
    if (found < 0 && strcmp(family, "cast5") == 0) {
        return error_set(EINVAL, "Cipher %s not supported with essiv",
                         cipher_algs[alg].name);
    }
    if (found < 0) {
        return error_set(EINVAL, "No %s cipher with key size %u available",
                         strcmp(family, "aes") == 0       ? "AES"
                         : strcmp(family, "serpent") == 0 ? "Serpent"
                                                          : "Twofish",
                         hash->digest_size);
    }
    uint8_t digest[64];
    kdf_hash(hash, key, key_len, digest);
    int ret = keyed_init(&c->essiv, cipher_algs[found].alg, digest);
    kdf_wipe(digest, sizeof(digest));
    return ret;
}

int sector_cipher_new(const char *alg, const char *mode, const char *ivgen,
                      const char *ivhash, const uint8_t *key, size_t key_len,
                      struct sector_cipher **out)
{
    *out = NULL;
    int ai = alg_index(alg);
    if (ai < 0) {
        return error_set(EINVAL, "Cipher algorithm '%s' not supported", alg);
    }
    const struct nettle_cipher *nc = cipher_algs[ai].alg;
    struct sector_cipher *c = calloc(1, sizeof(*c));
    if (!c) {
        return error_set(ENOMEM, "Out of memory");
    }
    c->block = nc->block_size;
    if (strcmp(mode, "ecb") == 0) {
        c->mode = MODE_ECB;
    } else if (strcmp(mode, "cbc") == 0) {
        c->mode = MODE_CBC;
    } else if (strcmp(mode, "xts") == 0) {
        c->mode = MODE_XTS;
    } else if (strcmp(mode, "ctr") == 0) {
        c->mode = MODE_CTR;
    } else {
        sector_cipher_free(c);
        return error_set(EINVAL, "Cipher mode '%s' not supported", mode);
    }
    size_t want = c->mode == MODE_XTS ? 2 * nc->key_size : nc->key_size;
    int ret = 0;
    if (key_len != want) {
        ret = error_set(EINVAL, "Cipher %s-%s needs a %zu-byte key, not %zu",
                        alg, mode, want, key_len);
    } else if (c->block > BLOCK_MAX ||
               (c->mode == MODE_XTS && c->block != XTS_BLOCK)) {
        /* [QEMU] its words for cast5 in xts. */
        ret = error_set(EINVAL, "Unsupported cipher mode %s", mode);
    }
    if (ret == 0 && c->mode != MODE_ECB) {
        if (!ivgen) {
            ret = error_set(EINVAL, "Cipher mode %s needs an IV generator",
                            mode);
        } else if (strcmp(ivgen, "plain") == 0) {
            c->ivgen = IVGEN_PLAIN;
        } else if (strcmp(ivgen, "plain64") == 0) {
            c->ivgen = IVGEN_PLAIN64;
        } else if (strcmp(ivgen, "essiv") == 0) {
            c->ivgen = IVGEN_ESSIV;
            ret = essiv_init(c, ai, ivhash, key, key_len);
        } else {
            ret = error_set(EINVAL, "IV generator '%s' not supported", ivgen);
        }
    }
    if (ret == 0) {
        ret = keyed_init(&c->data, nc, key);
    }
    if (ret == 0 && c->mode == MODE_XTS) {
        ret = keyed_init(&c->tweak, nc, key + nc->key_size);
    }
    if (ret < 0) {
        sector_cipher_free(c);
        return ret;
    }
    *out = c;
    return 0;
}

static void make_iv(const struct sector_cipher *c, uint64_t sector,
                    uint8_t *iv)
{
    memset(iv, 0, c->block);
    uint8_t le[8];
    store_le64(le, sector);
    switch (c->ivgen) {
    case IVGEN_NONE:
        break;
    case IVGEN_PLAIN:
        memcpy(iv, le, c->block < 4 ? c->block : 4);
        break;
    case IVGEN_PLAIN64:
        memcpy(iv, le, c->block < 8 ? c->block : 8);
        break;
    case IVGEN_ESSIV:
        memcpy(iv, le, c->block < 8 ? c->block : 8);
        c->essiv.alg->encrypt(c->essiv.enc, c->block, iv, iv);
        break;
    }
}

/* x times alpha in GF(2^128), the 128-bit value little-endian. */
static void xts_double(uint8_t *t)
{
    uint64_t lo = load_le64(t);
    uint64_t hi = load_le64(t + 8);
    uint64_t carry = hi >> 63;
    hi = hi << 1 | lo >> 63;
    lo = lo << 1 ^ (carry ? 0x87 : 0);
    store_le64(t, lo);
    store_le64(t + 8, hi);
}

static void xor_into(uint8_t *dst, const uint8_t *src, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        dst[i] ^= src[i];
    }
}

/* One sector (n bytes, a multiple of the block) of XTS. */
static void xts_sector(const struct sector_cipher *c, const uint8_t *iv,
                       uint8_t *buf, size_t n, bool decrypt)
{
    _Alignas(16) uint8_t tweaks[CRYPTO_SECTOR_SIZE];
    uint8_t t[XTS_BLOCK];
    c->tweak.alg->encrypt(c->tweak.enc, XTS_BLOCK, t, iv);
    for (size_t off = 0; off < n; off += XTS_BLOCK) {
        memcpy(tweaks + off, t, XTS_BLOCK);
        xts_double(t);
    }
    xor_into(buf, tweaks, n);
    if (decrypt) {
        c->data.alg->decrypt(c->data.dec, n, buf, buf);
    } else {
        c->data.alg->encrypt(c->data.enc, n, buf, buf);
    }
    xor_into(buf, tweaks, n);
}

static int sector_crypt(const struct sector_cipher *c, uint64_t sector,
                        uint8_t *buf, size_t len, bool decrypt)
{
    if (len % c->block != 0) {
        return error_set(EINVAL, "Length %zu is not a multiple of the "
                         "cipher's block size %zu", len, c->block);
    }
    uint8_t iv[BLOCK_MAX];
    for (size_t off = 0; off < len; off += CRYPTO_SECTOR_SIZE, sector++) {
        size_t n = len - off < CRYPTO_SECTOR_SIZE ? len - off
                                                   : CRYPTO_SECTOR_SIZE;
        uint8_t *p = buf + off;
        make_iv(c, sector, iv);
        switch (c->mode) {
        case MODE_ECB:
            if (decrypt) {
                c->data.alg->decrypt(c->data.dec, n, p, p);
            } else {
                c->data.alg->encrypt(c->data.enc, n, p, p);
            }
            break;
        case MODE_CBC:
            if (decrypt) {
                cbc_decrypt(c->data.dec, c->data.alg->decrypt, c->block, iv,
                            n, p, p);
            } else {
                cbc_encrypt(c->data.enc, c->data.alg->encrypt, c->block, iv,
                            n, p, p);
            }
            break;
        case MODE_CTR:
            ctr_crypt(c->data.enc, c->data.alg->encrypt, c->block, iv, n, p,
                      p);
            break;
        case MODE_XTS:
            xts_sector(c, iv, p, n, decrypt);
            break;
        }
    }
    return 0;
}

int sector_cipher_decrypt(const struct sector_cipher *c, uint64_t sector,
                          uint8_t *buf, size_t len)
{
    return sector_crypt(c, sector, buf, len, true);
}

int sector_cipher_encrypt(const struct sector_cipher *c, uint64_t sector,
                          uint8_t *buf, size_t len)
{
    return sector_crypt(c, sector, buf, len, false);
}

int sector_cipher_pread(const struct sector_cipher *c, sector_read_fn *read,
                        void *opaque, uint8_t *buf, size_t len, uint64_t off,
                        uint64_t iv_off)
{
    if ((off ^ iv_off) % CRYPTO_SECTOR_SIZE != 0) {
        return error_set(EINVAL, "Encrypted read at offset %" PRIu64
                         " does not start on its sector", off);
    }
    /* Invariant: buf[0, len) is still to be filled from off. */
    while (len > 0) {
        size_t head = (size_t)(off % CRYPTO_SECTOR_SIZE);
        int ret;
        size_t n;
        if (head == 0 && len >= CRYPTO_SECTOR_SIZE) {
            n = len - len % CRYPTO_SECTOR_SIZE;
            ret = read(opaque, buf, n, off);
            if (ret == 0) {
                ret = sector_cipher_decrypt(c, iv_off / CRYPTO_SECTOR_SIZE,
                                            buf, n);
            }
        } else {
            _Alignas(16) uint8_t sector[CRYPTO_SECTOR_SIZE];
            n = CRYPTO_SECTOR_SIZE - head;
            if (n > len) {
                n = len;
            }
            ret = read(opaque, sector, sizeof(sector), off - head);
            if (ret == 0) {
                ret = sector_cipher_decrypt(c, iv_off / CRYPTO_SECTOR_SIZE,
                                            sector, sizeof(sector));
            }
            if (ret == 0) {
                memcpy(buf, sector + head, n);
            }
            kdf_wipe(sector, sizeof(sector));
        }
        if (ret < 0) {
            return ret;
        }
        buf += n;
        len -= n;
        off += n;
        iv_off += n;
    }
    return 0;
}
