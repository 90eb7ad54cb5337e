/*
 * Hashes, PBKDF2 and the LUKS1 anti-forensic merge, on nettle.
 *
 * The merge follows the LUKS1 on-disk format specification (section
 * "AF-Splitter"): the key material of a slot is stripes blocks; folding
 * them in with a hash-based diffusion gives the master key back.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <nettle/hmac.h>
#include <nettle/nettle-meta.h>
#include <nettle/pbkdf2.h>

#include "core/error.h"
#include "crypto/kdf.h"
#include "util/endian.h"

static const struct {
    const char *name;
    const struct nettle_hash *hash;
} kdf_hashes[] = {
    {"md5", &nettle_md5},       {"sha1", &nettle_sha1},
    {"sha224", &nettle_sha224}, {"sha256", &nettle_sha256},
    {"sha384", &nettle_sha384}, {"sha512", &nettle_sha512},
    {"ripemd160", &nettle_ripemd160},
};

const struct nettle_hash *kdf_hash_lookup(const char *name)
{
    for (size_t i = 0; i < sizeof(kdf_hashes) / sizeof(kdf_hashes[0]); i++) {
        if (strcmp(kdf_hashes[i].name, name) == 0) {
            return kdf_hashes[i].hash;
        }
    }
    return NULL;
}

void kdf_wipe(void *p, size_t len)
{
    if (p) {
        explicit_bzero(p, len);
    }
}

/* The largest nettle hash context, so one can live on the stack. */
#define KDF_CTX_MAX 512
#define KDF_DIGEST_MAX 64

void kdf_hash(const struct nettle_hash *hash, const uint8_t *data, size_t len,
              uint8_t *out)
{
    _Alignas(16) uint8_t ctx[KDF_CTX_MAX];
    hash->init(ctx);
    hash->update(ctx, len, data);
    hash->digest(ctx, hash->digest_size, out);
    kdf_wipe(ctx, sizeof(ctx));
}

/* HMAC over any nettle hash, in the shape nettle's pbkdf2() calls. */
struct kdf_hmac {
    const struct nettle_hash *hash;
    _Alignas(16) uint8_t outer[KDF_CTX_MAX];
    _Alignas(16) uint8_t inner[KDF_CTX_MAX];
    _Alignas(16) uint8_t state[KDF_CTX_MAX];
};

static void kdf_hmac_update(void *ctx, size_t len, const uint8_t *data)
{
    struct kdf_hmac *h = ctx;
    hmac_update(h->state, h->hash, len, data);
}

static void kdf_hmac_digest(void *ctx, size_t len, uint8_t *out)
{
    struct kdf_hmac *h = ctx;
    hmac_digest(h->outer, h->inner, h->state, h->hash, len, out);
}

int kdf_pbkdf2(const struct nettle_hash *hash, const uint8_t *password,
               size_t password_len, const uint8_t *salt, size_t salt_len,
               uint32_t iterations, uint8_t *out, size_t out_len)
{
    if (hash->context_size > KDF_CTX_MAX || iterations == 0) {
        return error_set(EINVAL, "PBKDF2 parameters not supported");
    }
    struct kdf_hmac *h = malloc(sizeof(*h));
    if (!h) {
        return error_set(ENOMEM, "Out of memory");
    }
    h->hash = hash;
    hmac_set_key(h->outer, h->inner, h->state, hash, password_len, password);
    pbkdf2(h, kdf_hmac_update, kdf_hmac_digest, hash->digest_size, iterations,
           salt_len, salt, out_len, out);
    kdf_wipe(h, sizeof(*h));
    free(h);
    return 0;
}

/*
 * The diffusion of one block: each digest-sized piece i (the last may be
 * shorter) becomes H(be32(i) || piece), cut to the piece's length.
 */
static void af_diffuse(const struct nettle_hash *hash, uint8_t *buf,
                       size_t len)
{
    _Alignas(16) uint8_t ctx[KDF_CTX_MAX];
    uint8_t digest[KDF_DIGEST_MAX];
    size_t ds = hash->digest_size;
    for (size_t i = 0, off = 0; off < len; i++, off += ds) {
        size_t n = len - off < ds ? len - off : ds;
        uint8_t iv[4];
        store_be32(iv, (uint32_t)i);
        hash->init(ctx);
        hash->update(ctx, sizeof(iv), iv);
        hash->update(ctx, n, buf + off);
        hash->digest(ctx, ds, digest);
        memcpy(buf + off, digest, n);
    }
    kdf_wipe(ctx, sizeof(ctx));
    kdf_wipe(digest, sizeof(digest));
}

int kdf_af_merge(const struct nettle_hash *hash, const uint8_t *split,
                 size_t block_len, uint32_t stripes, uint8_t *out)
{
    if (stripes == 0 || hash->context_size > KDF_CTX_MAX ||
        hash->digest_size > KDF_DIGEST_MAX) {
        return error_set(EINVAL, "Anti-forensic merge parameters not "
                         "supported");
    }
    memset(out, 0, block_len);
    for (uint32_t s = 0; s + 1 < stripes; s++) {
        const uint8_t *blk = split + (size_t)s * block_len;
        for (size_t i = 0; i < block_len; i++) {
            out[i] ^= blk[i];
        }
        af_diffuse(hash, out, block_len);
    }
    const uint8_t *last = split + (size_t)(stripes - 1) * block_len;
    for (size_t i = 0; i < block_len; i++) {
        out[i] ^= last[i];
    }
    return 0;
}
