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
#include <sys/random.h>
#include <time.h>

#include <nettle/hmac.h>
#include <nettle/nettle-meta.h>
#include <nettle/pbkdf2.h>

#include "core/error.h"
#include "crypto/kdf.h"
#include "crypto/sha256_x86.h"
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

/*
 * PBKDF2-HMAC-SHA256 on the x86 SHA extensions.  The key's inner and
 * outer HMAC states are nettle's (hmac_sha256_set_key), and so is each
 * output block's first iteration (over the salt); the others, which hash
 * the previous 32-byte U, run in sha256_x86_hmac_iterate, two output
 * blocks side by side (a LUKS key of 64 bytes is two).
 */
static void pbkdf2_sha256_x86(const uint8_t *password, size_t password_len,
                              const uint8_t *salt, size_t salt_len,
                              uint32_t iterations, uint8_t *out,
                              size_t out_len)
{
    struct hmac_sha256_ctx ctx;
    hmac_sha256_set_key(&ctx, password_len, password);
    uint32_t u[2][8], t[2][8];
    uint8_t d[SHA256_DIGEST_SIZE];
    for (uint32_t i = 1; out_len > 0; i += 2) {
        int lanes = out_len > SHA256_DIGEST_SIZE ? 2 : 1;
        for (int l = 0; l < lanes; l++) {
            uint8_t be[4];
            store_be32(be, i + (uint32_t)l);
            hmac_sha256_update(&ctx, salt_len, salt);
            hmac_sha256_update(&ctx, sizeof(be), be);
            hmac_sha256_digest(&ctx, sizeof(d), d);
            for (int w = 0; w < 8; w++) {
                u[l][w] = t[l][w] = load_be32(d + 4 * w);
            }
        }
        sha256_x86_hmac_iterate(ctx.inner.state, ctx.outer.state, u, t, lanes,
                                iterations - 1);
        for (int l = 0; l < lanes; l++) {
            size_t n = out_len < sizeof(d) ? out_len : sizeof(d);
            for (int w = 0; w < 8; w++) {
                store_be32(d + 4 * w, t[l][w]);
            }
            memcpy(out, d, n);
            out += n;
            out_len -= n;
        }
    }
    kdf_wipe(&ctx, sizeof(ctx));
    kdf_wipe(u, sizeof(u));
    kdf_wipe(t, sizeof(t));
    kdf_wipe(d, sizeof(d));
}

/*
 * PBKDF2 as nettle computes it (its pbkdf2_hmac_sha256 for sha256, as
 * QEMU 7.2 calls it; HMAC over the general hash interface otherwise):
 * the speed QEMU times its iteration counts with.
 */
static int pbkdf2_nettle(const struct nettle_hash *hash,
                         const uint8_t *password, size_t password_len,
                         const uint8_t *salt, size_t salt_len,
                         uint32_t iterations, uint8_t *out, size_t out_len)
{
    if (hash == &nettle_sha256) {
        pbkdf2_hmac_sha256(password_len, password, iterations, salt_len, salt,
                           out_len, out);
        return 0;
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

int kdf_pbkdf2(const struct nettle_hash *hash, const uint8_t *password,
               size_t password_len, const uint8_t *salt, size_t salt_len,
               uint32_t iterations, uint8_t *out, size_t out_len)
{
    if (hash->context_size > KDF_CTX_MAX || iterations == 0) {
        return error_set(EINVAL, "PBKDF2 parameters not supported");
    }
    /* sha256, the default of QEMU and cryptsetup: most unlocks' cost. */
    if (hash == &nettle_sha256 && sha256_x86_available()) {
        pbkdf2_sha256_x86(password, password_len, salt, salt_len, iterations,
                          out, out_len);
        return 0;
    }
    return pbkdf2_nettle(hash, password, password_len, salt, salt_len,
                         iterations, out, out_len);
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

int kdf_random(uint8_t *buf, size_t len)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = getrandom(buf + done, len - done, 0);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return error_set_errno(n < 0 ? errno : EIO,
                                   "Could not get random bytes");
        }
        done += (size_t)n;
    }
    return 0;
}

int kdf_af_split(const struct nettle_hash *hash, const uint8_t *key,
                 size_t block_len, uint32_t stripes, uint8_t *split)
{
    if (stripes == 0 || hash->context_size > KDF_CTX_MAX ||
        hash->digest_size > KDF_DIGEST_MAX) {
        return error_set(EINVAL, "Anti-forensic split parameters not "
                         "supported");
    }
    uint8_t *d = calloc(1, block_len);
    if (!d) {
        return error_set(ENOMEM, "Out of memory");
    }
    int ret = kdf_random(split, (size_t)(stripes - 1) * block_len);
    for (uint32_t s = 0; ret == 0 && s + 1 < stripes; s++) {
        const uint8_t *blk = split + (size_t)s * block_len;
        for (size_t i = 0; i < block_len; i++) {
            d[i] ^= blk[i];
        }
        af_diffuse(hash, d, block_len);
    }
    uint8_t *last = split + (size_t)(stripes - 1) * block_len;
    for (size_t i = 0; ret == 0 && i < block_len; i++) {
        last[i] = d[i] ^ key[i];
    }
    kdf_wipe(d, block_len);
    free(d);
    return ret;
}

static uint64_t thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/*
 * Time trial runs (growing until one takes 100 ms of CPU; QEMU goes to
 * 500 ms with a millisecond clock) and scale to iter_ms / divisor.  The
 * trials run nettle's PBKDF2, QEMU's, not kdf_pbkdf2's faster sha256: an
 * image qimg makes takes QEMU iter_ms to unlock, as one QEMU makes.
 */
int kdf_pbkdf2_iterations(const struct nettle_hash *hash,
                          const uint8_t *password, size_t password_len,
                          const uint8_t *salt, size_t salt_len,
                          size_t out_len, uint64_t iter_ms, uint32_t divisor,
                          uint32_t min_iters, uint32_t *iters)
{
    uint8_t out[128];
    if (out_len > sizeof(out)) {
        return error_set(EINVAL, "PBKDF2 output too long");
    }
    uint64_t n = 1 << 12, ns;
    for (;;) {
        uint64_t start = thread_cpu_ns();
        int ret = pbkdf2_nettle(hash, password, password_len, salt, salt_len,
                             (uint32_t)n, out, out_len);
        if (ret < 0) {
            return ret;
        }
        ns = thread_cpu_ns() - start;
        if (ns >= 100000000u || n >= (1u << 30)) {
            break;
        }
        n = ns < 10000000u ? n * 10 : n * 100000000u / ns + 1;
    }
    kdf_wipe(out, sizeof(out));
    /* Iterations per millisecond, scaled (in double: no overflow). */
    double per_ms = (double)n * 1e6 / (double)(ns ? ns : 1);
    double want = per_ms * (double)iter_ms / (double)divisor;
    if (want > (double)UINT32_MAX) {
        return error_set(E2BIG, "PBKDF iterations %.0f too large for a "
                         "LUKS header", want);
    }
    *iters = want < (double)min_iters ? min_iters : (uint32_t)want;
    return 0;
}
