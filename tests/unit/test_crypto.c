/*
 * lib/crypto: known-answer vectors for the primitives (FIPS-197 AES,
 * IEEE 1619 XTS, RFC 6070 and RFC 7914 PBKDF2), encrypt/decrypt round
 * trips in every mode and IV generator, and sector_cipher_pread over
 * unaligned ranges.
 * (Agreement with QEMU on whole images is tests/compat/encrypted.sh.)
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <nettle/pbkdf2.h>

#include "crypto/cipher.h"
#include "crypto/kdf.h"
#include "qimg/qimg.h"
#include "tap.h"

static void unhex(const char *hex, uint8_t *out)
{
    for (size_t i = 0; hex[2 * i]; i++) {
        unsigned v;
        sscanf(hex + 2 * i, "%2x", &v);
        out[i] = (uint8_t)v;
    }
}

static void expect_hex(const uint8_t *got, const char *hex, const char *name)
{
    uint8_t want[256];
    size_t n = strlen(hex) / 2;
    unhex(hex, want);
    tap_ok(memcmp(got, want, n) == 0, name);
}

static void test_pbkdf2(void)
{
    const struct nettle_hash *sha1 = kdf_hash_lookup("sha1");
    uint8_t out[20];
    TAP_OK(sha1 != NULL);
    TAP_OK(kdf_hash_lookup("sha3-256") == NULL);
    static const struct {
        uint32_t iters;
        const char *hex;
    } v[] = {
        {1, "0c60c80f961f0e71f3a9b524af6012062fe037a6"},
        {2, "ea6c014dc72d6f8ccd1ed92ace1d41f0d8de8957"},
        {4096, "4b007901b765489abead49d926f721d065a429c1"},
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        TAP_OK(kdf_pbkdf2(sha1, (const uint8_t *)"password", 8,
                          (const uint8_t *)"salt", 4, v[i].iters, out,
                          sizeof(out)) == 0);
        expect_hex(out, v[i].hex, "PBKDF2-HMAC-SHA1 (RFC 6070)");
    }
    TAP_OK(kdf_pbkdf2(sha1, (const uint8_t *)"p", 1, (const uint8_t *)"s",
                      1, 0, out, sizeof(out)) < 0);
}

/*
 * PBKDF2-HMAC-SHA256, whichever implementation kdf_pbkdf2 picks (the
 * x86 SHA extensions where the CPU has them): RFC 7914's vectors, then
 * agreement with nettle's pbkdf2_hmac_sha256 over passwords longer and
 * shorter than a block, salts, iteration counts and multi-block outputs.
 */
static void test_pbkdf2_sha256(void)
{
    const struct nettle_hash *sha256 = kdf_hash_lookup("sha256");
    uint8_t out[100], want[100];
    TAP_OK(sha256 != NULL);
    /* RFC 7914, section 11: 64-byte outputs. */
    static const struct {
        const char *pw, *salt;
        uint32_t iters;
        const char *hex;
    } v[] = {
        {"passwd", "salt", 1,
         "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
         "49ca9cccf179b645991664b39d77ef317c71b845b1e30bd509112041d3a19783"},
        {"Password", "NaCl", 80000,
         "4ddcd8f60b98be21830cee5ef22701f9641a4418d04c0414aeff08876b34ab56"
         "a1d425a1225833549adb841b51c9b3176a272bdebba1d078478f62b397f33c8d"},
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        TAP_OK(kdf_pbkdf2(sha256, (const uint8_t *)v[i].pw, strlen(v[i].pw),
                          (const uint8_t *)v[i].salt, strlen(v[i].salt),
                          v[i].iters, out, 64) == 0);
        expect_hex(out, v[i].hex, "PBKDF2-HMAC-SHA256 (RFC 7914)");
    }
    uint8_t pw[150], salt[80];
    uint32_t x = 12345;
    for (size_t i = 0; i < sizeof(pw); i++) {
        x = x * 1103515245u + 12345u;
        pw[i] = (uint8_t)(x >> 16);
    }
    for (size_t i = 0; i < sizeof(salt); i++) {
        x = x * 1103515245u + 12345u;
        salt[i] = (uint8_t)(x >> 16);
    }
    static const size_t pw_lens[] = {0, 1, 31, 32, 55, 63, 64, 65, 150};
    static const size_t salt_lens[] = {0, 16, 32, 55, 56, 64, 80};
    static const uint32_t iters[] = {1, 2, 3, 1000};
    static const size_t out_lens[] = {1, 20, 32, 33, 64, 100};
    bool same = true;
    int runs = 0;
    for (size_t a = 0; a < sizeof(pw_lens) / sizeof(pw_lens[0]); a++) {
        for (size_t b = 0; b < sizeof(salt_lens) / sizeof(salt_lens[0]);
             b++) {
            for (size_t c = 0; c < sizeof(iters) / sizeof(iters[0]); c++) {
                size_t n = out_lens[(a + b + c) % 6];
                memset(out, 0xee, sizeof(out));
                memset(want, 0xee, sizeof(want));
                pbkdf2_hmac_sha256(pw_lens[a], pw, iters[c], salt_lens[b],
                                   salt, n, want);
                same = same &&
                       kdf_pbkdf2(sha256, pw, pw_lens[a], salt, salt_lens[b],
                                  iters[c], out, n) == 0 &&
                       memcmp(out, want, sizeof(out)) == 0;
                runs++;
            }
        }
    }
    tap_ok(same && runs == 9 * 7 * 4,
           "PBKDF2-HMAC-SHA256 agrees with nettle's (252 parameter sets)");
}

static void test_vectors(void)
{
    struct sector_cipher *c;
    uint8_t key[64] = {0};
    uint8_t buf[64];

    /* FIPS-197 C.1: AES-128, one block (ECB has no IV). */
    unhex("000102030405060708090a0b0c0d0e0f", key);
    unhex("00112233445566778899aabbccddeeff", buf);
    TAP_OK(sector_cipher_new("aes-128", "ecb", NULL, NULL, key, 16, &c) ==
           0);
    TAP_OK(sector_cipher_encrypt(c, 0, buf, 16) == 0);
    expect_hex(buf, "69c4e0d86a7b0430d8cdb78070b4c55a", "AES-128 (FIPS-197)");
    TAP_OK(sector_cipher_decrypt(c, 0, buf, 16) == 0);
    expect_hex(buf, "00112233445566778899aabbccddeeff", "AES-128 decrypt");
    TAP_OK(sector_cipher_decrypt(c, 0, buf, 15) < 0);
    sector_cipher_free(c);

    /* IEEE 1619 XTS-AES-128 vectors 1 and 2 (data unit = plain64 IV). */
    memset(key, 0, sizeof(key));
    memset(buf, 0, 32);
    TAP_OK(sector_cipher_new("aes-128", "xts", "plain64", NULL, key, 32,
                             &c) == 0);
    TAP_OK(sector_cipher_encrypt(c, 0, buf, 32) == 0);
    expect_hex(buf,
               "917cf69ebd68b2ec9b9fe9a3eadda692"
               "cd43d2f59598ed858c02c2652fbf922e",
               "XTS-AES-128 vector 1");
    sector_cipher_free(c);
    memset(key, 0x11, 16);
    memset(key + 16, 0x22, 16);
    memset(buf, 0x44, 32);
    TAP_OK(sector_cipher_new("aes-128", "xts", "plain64", NULL, key, 32,
                             &c) == 0);
    TAP_OK(sector_cipher_encrypt(c, 0x3333333333ull, buf, 32) == 0);
    expect_hex(buf,
               "c454185e6a16936e39334038acef838b"
               "fb186fff7480adc4289382ecd6d394f0",
               "XTS-AES-128 vector 2");
    TAP_OK(sector_cipher_decrypt(c, 0x3333333333ull, buf, 32) == 0);
    tap_ok(buf[0] == 0x44 && buf[31] == 0x44, "XTS-AES-128 decrypt");
    sector_cipher_free(c);

    /* Refusals: wrong key sizes, xts on a 64-bit block, unknown names. */
    TAP_OK(sector_cipher_new("aes-256", "xts", "plain64", NULL, key, 32,
                             &c) < 0 && c == NULL);
    TAP_OK(sector_cipher_new("cast5-128", "xts", "plain64", NULL, key, 32,
                             &c) < 0);
    TAP_OK(sector_cipher_new("des", "cbc", "plain64", NULL, key, 8, &c) < 0);
    TAP_OK(sector_cipher_new("aes-128", "cfb", "plain64", NULL, key, 16,
                             &c) < 0);
    TAP_OK(sector_cipher_new("aes-128", "cbc", "benbi", NULL, key, 16, &c) <
           0);
    TAP_OK(sector_cipher_new("aes-128", "cbc", "essiv", NULL, key, 16, &c) <
           0);
    /* essiv:sha1 would need a 160-bit AES key. */
    TAP_OK(sector_cipher_new("aes-128", "cbc", "essiv", "sha1", key, 16,
                             &c) < 0);
    tap_eq_u64(crypto_cipher_key_bytes("twofish-192"), 24, "key bytes");
    tap_eq_u64(crypto_cipher_key_bytes("rot13"), 0, "unknown cipher");
}

struct mem_medium {
    const uint8_t *data;
    size_t len;
};

static int mem_read(void *opaque, uint8_t *buf, size_t len, uint64_t off)
{
    const struct mem_medium *m = opaque;
    if (off > m->len || len > m->len - off) {
        return -5;
    }
    memcpy(buf, m->data + off, len);
    return 0;
}

/*
 * Encrypt a random 8 KiB whose sectors are numbered from 1000 (IVs) but
 * stored 3 sectors into the medium, then read slices back.
 */
static void roundtrip(const char *alg, const char *mode, const char *ivgen,
                      const char *ivhash)
{
    enum { SECTORS = 16, SKIP = 3 };
    size_t kb = crypto_cipher_key_bytes(alg) * (strcmp(mode, "xts") ? 1 : 2);
    uint8_t key[64];
    for (size_t i = 0; i < sizeof(key); i++) {
        key[i] = (uint8_t)(i * 37 + 11);
    }
    struct sector_cipher *c;
    char name[160];
    snprintf(name, sizeof(name), "%s-%s-%s%s%s", alg, mode, ivgen,
             ivhash ? ":" : "", ivhash ? ivhash : "");
    if (sector_cipher_new(alg, mode, ivgen, ivhash, key, kb, &c) < 0) {
        tap_ok(0, name);
        printf("#   %s\n", qimg_get_error());
        return;
    }
    size_t len = SECTORS * CRYPTO_SECTOR_SIZE;
    uint8_t *plain = malloc(len);
    uint8_t *medium = calloc(SKIP * CRYPTO_SECTOR_SIZE + len, 1);
    uint8_t *out = malloc(len);
    uint64_t seed = 88172645463325252ull;
    for (size_t i = 0; i < len; i++) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        plain[i] = (uint8_t)seed;
    }
    uint8_t *enc = medium + SKIP * CRYPTO_SECTOR_SIZE;
    memcpy(enc, plain, len);
    int ok = sector_cipher_encrypt(c, 1000, enc, len) == 0 &&
             memcmp(enc, plain, len) != 0;
    struct mem_medium m = {medium, SKIP * CRYPTO_SECTOR_SIZE + len};
    static const size_t slices[][2] = {
        {0, 8192}, {1, 10}, {511, 2}, {100, 3000}, {512, 512},
        {4000, 4192}, {8191, 1}, {0, 1}, {1024, 1536},
    };
    for (size_t i = 0; ok && i < sizeof(slices) / sizeof(slices[0]); i++) {
        size_t o = slices[i][0], n = slices[i][1];
        memset(out, 0, n);
        ok = sector_cipher_pread(c, mem_read, &m, out, n,
                                 SKIP * CRYPTO_SECTOR_SIZE + o,
                                 1000 * CRYPTO_SECTOR_SIZE + o) == 0 &&
             memcmp(out, plain + o, n) == 0;
    }
    /* Offsets that disagree within a sector are refused. */
    ok = ok && sector_cipher_pread(c, mem_read, &m, out, 8, 1, 2) < 0;
    tap_ok(ok, name);
    sector_cipher_free(c);
    free(plain);
    free(medium);
    free(out);
}

int main(void)
{
    test_pbkdf2();
    test_pbkdf2_sha256();
    test_vectors();
    static const char *const algs[] = {
        "aes-128",     "aes-192",     "aes-256",     "cast5-128",
        "serpent-128", "serpent-192", "serpent-256", "twofish-128",
        "twofish-192", "twofish-256",
    };
    for (size_t i = 0; i < sizeof(algs) / sizeof(algs[0]); i++) {
        roundtrip(algs[i], "cbc", "plain64", NULL);
        roundtrip(algs[i], "ctr", "plain", NULL);
        roundtrip(algs[i], "ecb", "plain64", NULL);
        if (strncmp(algs[i], "cast5", 5) != 0) {
            roundtrip(algs[i], "xts", "plain64", NULL);
            roundtrip(algs[i], "cbc", "essiv", "sha256");
        } else {
            roundtrip(algs[i], "cbc", "essiv", "md5");
        }
    }
    return tap_done();
}
