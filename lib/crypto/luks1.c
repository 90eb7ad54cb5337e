/*
 * LUKS1: the partition header, its key slots, and the info QEMU shows.
 *
 * The layout is the LUKS1 on-disk format specification (big-endian, 592
 * bytes).  Decoding is a pure codec over a byte buffer: its checks, their
 * order, the name mapping and the messages follow qemu-img 7.2 opening an
 * image without a key (metadata only), verified against its output on
 * damaged headers.  Unlocking (luks1_unlock) follows the specification:
 * PBKDF2 of the password with the slot's salt keys the slot's key
 * material, which decrypts (with the payload's cipher) to stripes that
 * merge to a candidate master key; the master key digest tells whether
 * the candidate is right.  Both the raw luks format and qcow2's LUKS
 * encryption use this file.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nettle/nettle-meta.h>

#include "qimg/qimg.h"
#include "core/error.h"
#include "crypto/cipher.h"
#include "crypto/kdf.h"
#include "crypto/luks1.h"
#include "util/endian.h"

/* Field offsets in the partition header. */
#define LUKS_OFF_VERSION 6
#define LUKS_OFF_CIPHER_NAME 8
#define LUKS_OFF_CIPHER_MODE 40
#define LUKS_OFF_HASH_SPEC 72
#define LUKS_OFF_PAYLOAD 104
#define LUKS_OFF_KEY_BYTES 108
#define LUKS_OFF_MK_DIGEST 112
#define LUKS_OFF_MK_SALT 132
#define LUKS_OFF_MK_ITERS 164
#define LUKS_OFF_UUID 168
#define LUKS_OFF_SLOTS 208
#define LUKS_NAME_LEN 32
#define LUKS_UUID_LEN 40
#define LUKS_SLOT_SIZE 48
/* Within a slot. */
#define LUKS_SLOT_ACTIVE 0
#define LUKS_SLOT_ITERS 4
#define LUKS_SLOT_SALT 8
#define LUKS_SLOT_KEY_OFFSET 40
#define LUKS_SLOT_STRIPES 44

#define LUKS_VERSION 1
#define LUKS_SLOT_ENABLED 0x00ac71f3u
#define LUKS_SLOT_DISABLED 0x0000deadu
/* [QEMU] only accepts the anti-forensic stripe count it writes. */
#define LUKS_STRIPES 4000
#define LUKS_SECTOR 512u
/* The longest master key a known cipher takes: xts with two 256-bit keys. */
#define LUKS_MAX_KEY_BYTES 64u
/* The key material starts after the 4 KiB header area (8 sectors). */
#define LUKS_HEADER_SECTORS 8u

static const uint8_t luks_magic[6] = {'L', 'U', 'K', 'S', 0xba, 0xbe};

/* A cipher family and the QAPI names of its key sizes (0 ends). */
struct luks_cipher {
    const char *name;
    struct {
        uint32_t key_bytes;
        const char *alg;
    } sizes[4];
};

static const struct luks_cipher luks_ciphers[] = {
    {"aes", {{16, "aes-128"}, {24, "aes-192"}, {32, "aes-256"}, {0, NULL}}},
    {"cast5", {{16, "cast5-128"}, {0, NULL}}},
    {"serpent",
     {{16, "serpent-128"}, {24, "serpent-192"}, {32, "serpent-256"},
      {0, NULL}}},
    {"twofish",
     {{16, "twofish-128"}, {24, "twofish-192"}, {32, "twofish-256"},
      {0, NULL}}},
};

/*
 * QAPI QCryptoHashAlgorithm names, their digest lengths, and the cost of
 * one PBKDF2 iteration with each relative to sha256 (nettle on the test
 * machine: md5 1.7, sha1 0.84, sha224 0.93, sha384 4.2, sha512 4.7,
 * ripemd160 3.9; rounded up), for LUKS1_MAX_UNLOCK_COST.  The unit is
 * nettle's sha256, about 140 ns a block on that machine; kdf.c's sha256
 * on the x86 SHA extensions takes 55, so there the budget bounds a
 * sha256 unlock at 40% of the time it bounds the others at.
 */
static const struct {
    const char *name;
    size_t digest;
    uint32_t weight;
} luks_hashes[] = {
    {"md5", 16, 2},    {"sha1", 20, 1},   {"sha224", 28, 1},
    {"sha256", 32, 1}, {"sha384", 48, 5}, {"sha512", 64, 5},
    {"ripemd160", 20, 4},
};

static const char *const luks_modes[] = {"ecb", "cbc", "xts", "ctr"};
static const char *const luks_ivgens[] = {"plain", "plain64", "essiv"};

#define LUKS_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Bytes past len read as zero, as they do past the end of a file. */
static uint32_t luks_be32(const uint8_t *buf, size_t len, size_t off)
{
    uint8_t b[4] = {0};
    for (size_t i = 0; i < 4; i++) {
        if (off + i < len) {
            b[i] = buf[off + i];
        }
    }
    return load_be32(b);
}

static void luks_bytes(const uint8_t *buf, size_t len, size_t off, size_t n,
                       uint8_t *dst)
{
    for (size_t i = 0; i < n; i++) {
        dst[i] = off + i < len ? buf[off + i] : 0;
    }
}

/*
 * Copy the bounded string at off into dst (n + 1 bytes); false if it has
 * no NUL within its n bytes.
 */
static bool luks_string(const uint8_t *buf, size_t len, size_t off, size_t n,
                        char *dst)
{
    bool terminated = false;
    for (size_t i = 0; i < n; i++) {
        dst[i] = off + i < len ? (char)buf[off + i] : '\0';
        if (dst[i] == '\0') {
            terminated = true;
        }
    }
    dst[n] = '\0';
    return terminated;
}

static const char *luks_lookup(const char *const *names, size_t nb,
                               const char *name)
{
    for (size_t i = 0; i < nb; i++) {
        if (strcmp(names[i], name) == 0) {
            return names[i];
        }
    }
    return NULL;
}

static int luks_hash_lookup(const char *name, const char **out,
                            size_t *digest)
{
    for (size_t i = 0; i < LUKS_ARRAY_SIZE(luks_hashes); i++) {
        if (strcmp(luks_hashes[i].name, name) == 0) {
            *out = luks_hashes[i].name;
            if (digest) {
                *digest = luks_hashes[i].digest;
            }
            return 0;
        }
    }
    return error_set(EINVAL, "Hash algorithm '%s' not supported", name);
}

/*
 * [QEMU] sectors of key material for one slot: key bytes times stripes,
 * in 32-bit arithmetic as QEMU computes it (it wraps for huge key sizes),
 * rounded up to sectors and then to the header size.
 */
static uint32_t luks_splitkey_sectors(uint32_t key_bytes, uint32_t stripes)
{
    uint32_t bytes = key_bytes * stripes;
    uint32_t sectors = bytes / LUKS_SECTOR + (bytes % LUKS_SECTOR != 0);
    return (sectors + LUKS_HEADER_SECTORS - 1) / LUKS_HEADER_SECTORS *
           LUKS_HEADER_SECTORS;
}

/* [QEMU] the basic sanity checks, before any name is looked at. */
static int luks_check_slots(const uint8_t *buf, size_t len,
                            uint32_t key_bytes, uint32_t payload)
{
    uint32_t start[LUKS1_NUM_SLOTS];
    uint32_t count[LUKS1_NUM_SLOTS];
    for (size_t i = 0; i < LUKS1_NUM_SLOTS; i++) {
        size_t s = LUKS_OFF_SLOTS + i * LUKS_SLOT_SIZE;
        start[i] = luks_be32(buf, len, s + LUKS_SLOT_KEY_OFFSET);
        count[i] = luks_splitkey_sectors(
            key_bytes, luks_be32(buf, len, s + LUKS_SLOT_STRIPES));
    }
    for (size_t i = 0; i < LUKS1_NUM_SLOTS; i++) {
        size_t s = LUKS_OFF_SLOTS + i * LUKS_SLOT_SIZE;
        uint32_t active = luks_be32(buf, len, s + LUKS_SLOT_ACTIVE);
        uint32_t stripes = luks_be32(buf, len, s + LUKS_SLOT_STRIPES);
        if (stripes != LUKS_STRIPES) {
            return error_set(EINVAL,
                             "Keyslot %zu is corrupted (stripes %" PRIu32
                             " != %d)",
                             i, stripes, LUKS_STRIPES);
        }
        if (active != LUKS_SLOT_DISABLED && active != LUKS_SLOT_ENABLED) {
            return error_set(EINVAL,
                             "Keyslot %zu state (active/disable) is corrupted",
                             i);
        }
        if (active == LUKS_SLOT_ENABLED &&
            luks_be32(buf, len, s + LUKS_SLOT_ITERS) == 0) {
            return error_set(EINVAL, "Keyslot %zu iteration count is zero", i);
        }
        /* 32-bit sums, as QEMU does them. */
        if ((uint32_t)(start[i] + count[i]) > payload) {
            return error_set(
                EINVAL, "Keyslot %zu is overlapping with the encrypted payload",
                i);
        }
        for (size_t j = i + 1; j < LUKS1_NUM_SLOTS; j++) {
            if ((uint32_t)(start[i] + count[i]) > start[j] &&
                (uint32_t)(start[j] + count[j]) > start[i]) {
                return error_set(
                    EINVAL, "Keyslots %zu and %zu are overlapping in the header",
                    i, j);
            }
        }
    }
    return 0;
}

/* [QEMU] "<mode>-<ivgen>[:<ivhash>]" and the cipher, hash, ivgen names. */
static int luks_parse_names(const char *cipher_name, char *mode,
                            const char *hash_spec, uint32_t key_bytes,
                            struct luks1_header *out)
{
    char *ivgen = strchr(mode, '-');
    if (!ivgen) {
        return error_set(EINVAL, "Unexpected cipher mode string format '%s'",
                         mode);
    }
    *ivgen++ = '\0';
    char *ivhash = strchr(ivgen, ':');
    const char *ivhash_alg = NULL;
    size_t ivhash_digest = 0;
    if (ivhash) {
        *ivhash++ = '\0';
        int ret = luks_hash_lookup(ivhash, &ivhash_alg, &ivhash_digest);
        if (ret < 0) {
            return ret;
        }
    }
    out->cipher_mode = luks_lookup(luks_modes, LUKS_ARRAY_SIZE(luks_modes),
                                   mode);
    if (!out->cipher_mode) {
        return error_set(EINVAL, "Cipher mode '%s' not supported", mode);
    }
    /* XTS keys hold two cipher keys of half the size. */
    uint32_t kb = strcmp(mode, "xts") == 0 ? key_bytes / 2 : key_bytes;
    uint32_t family = 0;
    out->cipher_alg = NULL;
    for (size_t i = 0; !out->cipher_alg && i < LUKS_ARRAY_SIZE(luks_ciphers);
         i++) {
        if (strcmp(luks_ciphers[i].name, cipher_name) != 0) {
            continue;
        }
        for (size_t j = 0; luks_ciphers[i].sizes[j].key_bytes; j++) {
            if (luks_ciphers[i].sizes[j].key_bytes == kb) {
                out->cipher_alg = luks_ciphers[i].sizes[j].alg;
                family = (uint32_t)i;
                break;
            }
        }
    }
    if (!out->cipher_alg) {
        return error_set(EINVAL,
                         "Algorithm '%s' with key size %" PRIu32
                         " bytes not supported",
                         cipher_name, kb);
    }
    int ret = luks_hash_lookup(hash_spec, &out->hash_alg, NULL);
    if (ret < 0) {
        return ret;
    }
    out->ivgen_alg = luks_lookup(luks_ivgens, LUKS_ARRAY_SIZE(luks_ivgens),
                                 ivgen);
    if (!out->ivgen_alg) {
        return error_set(EINVAL, "IV generator '%s' not supported", ivgen);
    }
    /*
     * Only essiv uses (and reports) the ivgen hash; plain and plain64
     * ignore one, like dm-crypt.
     */
    out->ivgen_hash_alg = NULL;
    if (strcmp(out->ivgen_alg, "essiv") == 0) {
        if (!ivhash_alg) {
            return error_set(EINVAL,
                             "Missing IV generator hash specification");
        }
        /*
         * [QEMU] essiv keys a cipher of the digest's size: it must exist
         * in the same family (cast5 has only its own key size).
         */
        if (ivhash_digest != kb) {
            const struct luks_cipher *c = &luks_ciphers[family];
            bool found = false;
            for (size_t j = 0; c->sizes[j].key_bytes; j++) {
                found = found || c->sizes[j].key_bytes == ivhash_digest;
            }
            if (strcmp(c->name, "cast5") == 0) {
                return error_set(EINVAL, "Cipher %s not supported with essiv",
                                 out->cipher_alg);
            }
            if (!found) {
                const char *fam = family == 0   ? "AES"
                                  : family == 2 ? "Serpent"
                                                : "Twofish";
                return error_set(EINVAL,
                                 "No %s cipher with key size %zu available",
                                 fam, ivhash_digest);
            }
        }
        out->ivgen_hash_alg = ivhash_alg;
    }
    return 0;
}

int luks1_decode(const uint8_t *buf, size_t len,
                      struct luks1_header *out)
{
    memset(out, 0, sizeof(*out));
    uint8_t magic[sizeof(luks_magic)] = {0};
    memcpy(magic, buf, len < sizeof(magic) ? len : sizeof(magic));
    if (memcmp(magic, luks_magic, sizeof(magic)) != 0) {
        return error_set(EINVAL, "Volume is not in LUKS format");
    }
    uint32_t version = luks_be32(buf, len, LUKS_OFF_VERSION - 2) & 0xffff;
    if (version != LUKS_VERSION) {
        return error_set(EINVAL, "LUKS version %" PRIu32 " is not supported",
                         version);
    }
    char cipher_name[LUKS_NAME_LEN + 1];
    char cipher_mode[LUKS_NAME_LEN + 1];
    char hash_spec[LUKS_NAME_LEN + 1];
    if (!luks_string(buf, len, LUKS_OFF_CIPHER_NAME, LUKS_NAME_LEN,
                     cipher_name)) {
        return error_set(EINVAL, "LUKS header cipher name is not NUL "
                                 "terminated");
    }
    if (!luks_string(buf, len, LUKS_OFF_CIPHER_MODE, LUKS_NAME_LEN,
                     cipher_mode)) {
        return error_set(EINVAL, "LUKS header cipher mode is not NUL "
                                 "terminated");
    }
    if (!luks_string(buf, len, LUKS_OFF_HASH_SPEC, LUKS_NAME_LEN,
                     hash_spec)) {
        return error_set(EINVAL, "LUKS header hash spec is not NUL "
                                 "terminated");
    }
    uint32_t payload = luks_be32(buf, len, LUKS_OFF_PAYLOAD);
    if (payload < LUKS_HEADER_SECTORS) {
        return error_set(EINVAL, "LUKS payload is overlapping with the "
                                 "header");
    }
    uint32_t mk_iters = luks_be32(buf, len, LUKS_OFF_MK_ITERS);
    if (mk_iters == 0) {
        return error_set(EINVAL, "LUKS key iteration count is zero");
    }
    uint32_t key_bytes = luks_be32(buf, len, LUKS_OFF_KEY_BYTES);
    int ret = luks_check_slots(buf, len, key_bytes, payload);
    if (ret < 0) {
        return ret;
    }
    ret = luks_parse_names(cipher_name, cipher_mode, hash_spec, key_bytes,
                           out);
    if (ret < 0) {
        return ret;
    }

    /* [QEMU] shows the uuid as its first 40 bytes, up to a NUL. */
    (void)luks_string(buf, len, LUKS_OFF_UUID, LUKS_UUID_LEN, out->uuid);
    out->payload_offset = (uint64_t)payload * LUKS_SECTOR;
    out->key_bytes = key_bytes;
    out->master_key_iters = mk_iters;
    luks_bytes(buf, len, LUKS_OFF_MK_DIGEST, LUKS1_DIGEST_SIZE,
               out->mk_digest);
    luks_bytes(buf, len, LUKS_OFF_MK_SALT, LUKS1_SALT_SIZE,
               out->mk_digest_salt);
    for (size_t i = 0; i < LUKS1_NUM_SLOTS; i++) {
        size_t s = LUKS_OFF_SLOTS + i * LUKS_SLOT_SIZE;
        struct luks1_slot *sl = &out->slots[i];
        sl->active = luks_be32(buf, len, s + LUKS_SLOT_ACTIVE) ==
                     LUKS_SLOT_ENABLED;
        sl->iters = luks_be32(buf, len, s + LUKS_SLOT_ITERS);
        sl->stripes = luks_be32(buf, len, s + LUKS_SLOT_STRIPES);
        sl->key_offset =
            (uint64_t)luks_be32(buf, len, s + LUKS_SLOT_KEY_OFFSET) *
            LUKS_SECTOR;
        luks_bytes(buf, len, s + LUKS_SLOT_SALT, LUKS1_SALT_SIZE, sl->salt);
    }
    return 0;
}

/* ---- unlocking ----------------------------------------------------------- */

/*
 * Try one active slot: its PBKDF2 key decrypts its key material (from
 * sector 0, with the payload's cipher spec), the stripes merge into a
 * candidate, and the candidate's digest must match the header's.
 * Returns 1 with the key in mk, 0 for a wrong password, or -errno.
 */
static int luks_try_slot(const struct luks1_header *h,
                         const struct luks1_slot *sl,
                         const struct nettle_hash *hash,
                         const uint8_t *password, size_t password_len,
                         luks1_read_fn *read, void *opaque, uint8_t *split,
                         uint8_t *mk)
{
    size_t kb = h->key_bytes;
    size_t split_len = kb * sl->stripes;
    uint8_t slot_key[LUKS_MAX_KEY_BYTES];
    uint8_t digest[LUKS1_DIGEST_SIZE];
    struct sector_cipher *c = NULL;

    int ret = kdf_pbkdf2(hash, password, password_len, sl->salt,
                         LUKS1_SALT_SIZE, sl->iters, slot_key, kb);
    if (ret == 0) {
        ret = read(opaque, split, split_len, sl->key_offset);
    }
    if (ret == 0) {
        ret = sector_cipher_new(h->cipher_alg, h->cipher_mode, h->ivgen_alg,
                                h->ivgen_hash_alg, slot_key, kb, &c);
    }
    if (ret == 0) {
        ret = sector_cipher_decrypt(c, 0, split, split_len);
    }
    if (ret == 0) {
        ret = kdf_af_merge(hash, split, kb, sl->stripes, mk);
    }
    if (ret == 0) {
        ret = kdf_pbkdf2(hash, mk, kb, h->mk_digest_salt, LUKS1_SALT_SIZE,
                         h->master_key_iters, digest, sizeof(digest));
    }
    if (ret == 0) {
        ret = memcmp(digest, h->mk_digest, sizeof(digest)) == 0;
    }
    sector_cipher_free(c);
    kdf_wipe(slot_key, sizeof(slot_key));
    kdf_wipe(digest, sizeof(digest));
    kdf_wipe(split, split_len);
    return ret;
}

/*
 * The key cache.  An entry matches only the same decoded header (the
 * master key digest, its salt and iterations, key size and names among
 * it) and the same password, so a cached key always passes the digest
 * check the slots would have led to.  Entries live until the process
 * ends; their keys are wiped when replaced.
 */
struct luks_cached_key {
    bool used;
    struct luks1_header hdr;
    uint8_t *password; /* password_len bytes, private copy */
    size_t password_len;
    uint8_t key[LUKS_MAX_KEY_BYTES];
};

static pthread_mutex_t key_cache_lock = PTHREAD_MUTEX_INITIALIZER;
static struct luks_cached_key key_cache[LUKS1_KEY_CACHE_SLOTS];
static size_t key_cache_next;

static bool same_header(const struct luks1_header *a,
                        const struct luks1_header *b)
{
    return a->key_bytes == b->key_bytes &&
           a->master_key_iters == b->master_key_iters &&
           a->cipher_alg == b->cipher_alg && a->cipher_mode == b->cipher_mode &&
           a->ivgen_alg == b->ivgen_alg &&
           a->ivgen_hash_alg == b->ivgen_hash_alg &&
           a->hash_alg == b->hash_alg &&
           memcmp(a->mk_digest, b->mk_digest, sizeof(a->mk_digest)) == 0 &&
           memcmp(a->mk_digest_salt, b->mk_digest_salt,
                  sizeof(a->mk_digest_salt)) == 0 &&
           strcmp(a->uuid, b->uuid) == 0;
}

static bool key_cache_find(const struct luks1_header *h,
                           const uint8_t *password, size_t password_len,
                           uint8_t *key)
{
    bool found = false;
    pthread_mutex_lock(&key_cache_lock);
    for (size_t i = 0; !found && i < LUKS1_KEY_CACHE_SLOTS; i++) {
        const struct luks_cached_key *e = &key_cache[i];
        if (e->used && e->password_len == password_len &&
            memcmp(e->password, password, password_len) == 0 &&
            same_header(&e->hdr, h)) {
            memcpy(key, e->key, h->key_bytes);
            found = true;
        }
    }
    pthread_mutex_unlock(&key_cache_lock);
    return found;
}

/* Best effort: a key that cannot be cached is simply derived again. */
static void key_cache_add(const struct luks1_header *h,
                          const uint8_t *password, size_t password_len,
                          const uint8_t *key)
{
    uint8_t *copy = malloc(password_len ? password_len : 1);
    if (!copy) {
        return;
    }
    memcpy(copy, password, password_len);
    pthread_mutex_lock(&key_cache_lock);
    struct luks_cached_key *e = &key_cache[key_cache_next];
    key_cache_next = (key_cache_next + 1) % LUKS1_KEY_CACHE_SLOTS;
    if (e->used) {
        kdf_wipe(e->password, e->password_len);
        free(e->password);
        kdf_wipe(e->key, sizeof(e->key));
    }
    e->used = true;
    e->hdr = *h;
    e->password = copy;
    e->password_len = password_len;
    memcpy(e->key, key, h->key_bytes);
    pthread_mutex_unlock(&key_cache_lock);
}

/* The weight of a hash luks_hash_lookup returned (the heaviest if not). */
static uint64_t luks_hash_weight(const char *name)
{
    uint64_t w = 0;
    for (size_t i = 0; i < LUKS_ARRAY_SIZE(luks_hashes); i++) {
        if (strcmp(luks_hashes[i].name, name) == 0) {
            return luks_hashes[i].weight;
        }
        w = w > luks_hashes[i].weight ? w : luks_hashes[i].weight;
    }
    return w;
}

/*
 * PBKDF2 work in LUKS1_MAX_UNLOCK_COST units: one pass of iters per
 * digest-sized block of output.  At most 5 * 2^32 * 64: no overflow.
 */
static uint64_t luks_pbkdf2_cost(uint64_t weight, uint32_t iters,
                                 size_t out_len, size_t digest)
{
    uint64_t blocks = (out_len + digest - 1) / digest;
    return weight * iters * blocks;
}

void luks1_key_cache_clear(void)
{
    pthread_mutex_lock(&key_cache_lock);
    for (size_t i = 0; i < LUKS1_KEY_CACHE_SLOTS; i++) {
        struct luks_cached_key *e = &key_cache[i];
        if (e->used) {
            kdf_wipe(e->password, e->password_len);
            free(e->password);
            kdf_wipe(e->key, sizeof(e->key));
        }
        memset(e, 0, sizeof(*e));
    }
    key_cache_next = 0;
    pthread_mutex_unlock(&key_cache_lock);
}

int luks1_unlock(const struct luks1_header *h, const uint8_t *password,
                 size_t password_len, luks1_read_fn *read, void *opaque,
                 struct sector_cipher **out)
{
    *out = NULL;
    const struct nettle_hash *hash = kdf_hash_lookup(h->hash_alg);
    if (!hash) {
        return error_set(EINVAL, "Hash algorithm '%s' not supported",
                         h->hash_alg);
    }
    if (h->key_bytes == 0 || h->key_bytes > LUKS_MAX_KEY_BYTES) {
        return error_set(EINVAL, "LUKS key size %" PRIu32 " not supported",
                         h->key_bytes);
    }
    /*
     * Each slot tried costs its key's PBKDF2 and the digest's; a digest
     * alone over the budget fails every slot: say so before any work.
     */
    uint64_t weight = luks_hash_weight(h->hash_alg);
    uint64_t digest_cost = luks_pbkdf2_cost(weight, h->master_key_iters,
                                            LUKS1_DIGEST_SIZE,
                                            hash->digest_size);
    if (digest_cost > LUKS1_MAX_UNLOCK_COST) {
        return error_set(E2BIG, "LUKS master key iteration count %" PRIu32
                         " needs more PBKDF2 work than qimg's limit",
                         h->master_key_iters);
    }
    uint8_t mk[LUKS_MAX_KEY_BYTES];
    if (key_cache_find(h, password, password_len, mk)) {
        int ret = sector_cipher_new(h->cipher_alg, h->cipher_mode,
                                    h->ivgen_alg, h->ivgen_hash_alg, mk,
                                    h->key_bytes, out);
        kdf_wipe(mk, sizeof(mk));
        return ret;
    }
    /* Stripes were checked by luks1_decode (LUKS_STRIPES). */
    uint8_t *split = malloc((size_t)h->key_bytes * LUKS_STRIPES);
    if (!split) {
        return error_set(ENOMEM, "Out of memory");
    }
    uint64_t spent = 0;
    int ret = 0;
    for (size_t i = 0; ret == 0 && i < LUKS1_NUM_SLOTS; i++) {
        const struct luks1_slot *sl = &h->slots[i];
        if (!sl->active) {
            continue;
        }
        /* Refused before it is spent: the budget bounds the time. */
        uint64_t cost = luks_pbkdf2_cost(weight, sl->iters, h->key_bytes,
                                         hash->digest_size) +
                        digest_cost;
        if (cost > LUKS1_MAX_UNLOCK_COST) {
            ret = error_set(E2BIG, "LUKS key slot %zu iteration count %" PRIu32
                            " needs more PBKDF2 work than qimg's limit",
                            i, sl->iters);
            break;
        }
        if (spent + cost > LUKS1_MAX_UNLOCK_COST) {
            ret = error_set(E2BIG, "LUKS key slots need more PBKDF2 work "
                            "than qimg's limit to try");
            break;
        }
        spent += cost;
        ret = luks_try_slot(h, sl, hash, password, password_len, read, opaque,
                            split, mk);
    }
    free(split);
    if (ret == 1) {
        key_cache_add(h, password, password_len, mk);
        ret = sector_cipher_new(h->cipher_alg, h->cipher_mode, h->ivgen_alg,
                                h->ivgen_hash_alg, mk, h->key_bytes, out);
    } else if (ret == 0) {
        ret = error_set(EPERM, "Invalid password, cannot unlock any keyslot");
    }
    kdf_wipe(mk, sizeof(mk));
    return ret;
}

/* ---- creation ------------------------------------------------------------ */

/* [QEMU] the least PBKDF2 iterations it writes, and the digest's share. */
#define LUKS_MIN_ITERS 1000u
#define LUKS_MK_ITER_DIVISOR 8u

static void put_name(uint8_t *hdr, size_t off, const char *name)
{
    size_t n = strlen(name);
    memcpy(hdr + off, name, n < LUKS_NAME_LEN ? n : LUKS_NAME_LEN - 1);
}

/* A version 4 UUID in the 36 characters LUKS stores. */
static int luks_uuid(char *out)
{
    uint8_t u[16];
    int ret = kdf_random(u, sizeof(u));
    if (ret < 0) {
        return ret;
    }
    u[6] = (uint8_t)((u[6] & 0x0f) | 0x40);
    u[8] = (uint8_t)((u[8] & 0x3f) | 0x80);
    snprintf(out, 37,
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
             "%02x%02x%02x%02x%02x%02x",
             u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9],
             u[10], u[11], u[12], u[13], u[14], u[15]);
    return 0;
}

/* QAPI's enums for the names (QEMU checks them before anything else). */
static const char *const cipher_alg_names[] = {
    "aes-128",     "aes-192",     "aes-256",     "des",
    "3des",        "cast5-128",   "serpent-128", "serpent-192",
    "serpent-256", "twofish-128", "twofish-192", "twofish-256", NULL};
static const char *const cipher_mode_names[] = {"ecb", "cbc", "xts", "ctr",
                                                NULL};
static const char *const ivgen_names[] = {"plain", "plain64", "essiv", NULL};
static const char *const hash_names[] = {"md5",    "sha1",   "sha224",
                                         "sha256", "sha384", "sha512",
                                         "ripemd160", NULL};

static int enum_opt(const struct qimg_opts *opts, const char *prefix,
                    const char *name, const char *const *names,
                    const char *def, const char **out)
{
    char key[64];
    snprintf(key, sizeof(key), "%s%s", prefix, name);
    const char *v = qimg_opts_get(opts, key);
    *out = def;
    if (!v) {
        return 0;
    }
    for (size_t i = 0; names[i]; i++) {
        if (strcmp(names[i], v) == 0) {
            *out = names[i];
            return 0;
        }
    }
    /* [QEMU] names the member of the encrypt. group without its prefix. */
    return error_set(EINVAL, "Parameter '%s' does not accept value '%s'",
                     name, v);
}

int luks1_create_opts_parse(const struct qimg_opts *opts, const char *prefix,
                            struct luks1_create_opts *o)
{
    int ret = enum_opt(opts, prefix, "cipher-alg", cipher_alg_names,
                       "aes-256", &o->cipher_alg);
    if (ret == 0) {
        ret = enum_opt(opts, prefix, "cipher-mode", cipher_mode_names, "xts",
                       &o->cipher_mode);
    }
    if (ret == 0) {
        ret = enum_opt(opts, prefix, "ivgen-alg", ivgen_names, "plain64",
                       &o->ivgen_alg);
    }
    if (ret == 0) {
        ret = enum_opt(opts, prefix, "ivgen-hash-alg", hash_names, NULL,
                       &o->ivgen_hash_alg);
    }
    if (ret == 0) {
        ret = enum_opt(opts, prefix, "hash-alg", hash_names, "sha256",
                       &o->hash_alg);
    }
    char key[64];
    snprintf(key, sizeof(key), "%siter-time", prefix);
    const char *text = qimg_opts_get(opts, key);
    o->iter_time_ms = 2000;
    if (ret == 0 && text) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(text, &end, 0);
        if (!*text || *end || errno || text[0] == '-') {
            ret = error_set(EINVAL, "Parameter '%s' expects a number", key);
        }
        o->iter_time_ms = v;
    }
    return ret;
}

/* The master key length: the cipher's key, twice for xts. */
static uint32_t create_key_bytes(const struct luks1_create_opts *o)
{
    size_t alg_bytes = crypto_cipher_key_bytes(o->cipher_alg);
    return (uint32_t)(strcmp(o->cipher_mode, "xts") == 0 ? 2 * alg_bytes
                                                         : alg_bytes);
}

int luks1_create_check(const struct luks1_create_opts *o, uint64_t *area)
{
    if (crypto_cipher_key_bytes(o->cipher_alg) == 0) {
        return error_set(EINVAL, "Algorithm '%s' not supported",
                         o->cipher_alg);
    }
    if (!kdf_hash_lookup(o->hash_alg)) {
        return error_set(EINVAL, "Hash algorithm '%s' not supported",
                         o->hash_alg);
    }
    uint32_t kb = create_key_bytes(o);
    /* The names' combination, checked by making a cipher of them. */
    uint8_t key[LUKS_MAX_KEY_BYTES] = {0};
    struct sector_cipher *c;
    const char *ivhash = o->ivgen_hash_alg;
    if (!ivhash && strcmp(o->ivgen_alg, "essiv") == 0) {
        ivhash = "sha256";
    }
    int ret = sector_cipher_new(o->cipher_alg, o->cipher_mode, o->ivgen_alg,
                                ivhash, key, kb, &c);
    if (ret < 0) {
        return ret;
    }
    sector_cipher_free(c);
    /*
     * [QEMU] 7.2 asserts that a slot's key material is whole sectors, so
     * it cannot open (nor make) a container whose material is not: 24-
     * byte keys outside xts.  cryptsetup makes them; qimg reads them but
     * does not write what QEMU cannot read.
     */
    if ((uint64_t)kb * LUKS_STRIPES % LUKS_SECTOR != 0) {
        return error_set(ENOTSUP, "LUKS key material of %s in mode %s is "
                         "not a whole number of sectors, which QEMU cannot "
                         "open", o->cipher_alg, o->cipher_mode);
    }
    *area = ((uint64_t)LUKS_HEADER_SECTORS +
             LUKS1_NUM_SLOTS * (uint64_t)luks_splitkey_sectors(
                                   kb, LUKS_STRIPES)) *
            LUKS_SECTOR;
    return 0;
}

int luks1_create(const struct luks1_create_opts *o, const uint8_t *password,
                 size_t password_len, uint8_t **area, size_t *area_len,
                 struct sector_cipher **out)
{
    *area = NULL;
    *area_len = 0;
    *out = NULL;
    uint64_t area_bytes;
    int check = luks1_create_check(o, &area_bytes);
    if (check < 0) {
        return check;
    }
    const struct nettle_hash *hash = kdf_hash_lookup(o->hash_alg);
    const char *ivhash = o->ivgen_hash_alg;
    if (!ivhash && strcmp(o->ivgen_alg, "essiv") == 0) {
        ivhash = "sha256";
    }
    uint32_t kb = create_key_bytes(o);
    uint8_t mk[LUKS_MAX_KEY_BYTES];
    uint8_t slot_key[LUKS_MAX_KEY_BYTES];
    uint8_t mk_salt[LUKS1_SALT_SIZE], slot_salt[LUKS1_SALT_SIZE];
    uint8_t digest[LUKS1_DIGEST_SIZE];
    struct sector_cipher *payload = NULL, *slot = NULL;
    uint8_t *buf = NULL;
    uint32_t mk_iters = 0, slot_iters = 0;
    char uuid[37];

    /* The payload cipher first: it checks the names' combination. */
    int ret = kdf_random(mk, kb);
    if (ret == 0) {
        ret = sector_cipher_new(o->cipher_alg, o->cipher_mode, o->ivgen_alg,
                                ivhash, mk, kb, &payload);
    }
    if (ret == 0) {
        ret = kdf_random(mk_salt, sizeof(mk_salt));
    }
    if (ret == 0) {
        ret = kdf_pbkdf2_iterations(hash, mk, kb, mk_salt, sizeof(mk_salt),
                                    sizeof(digest), o->iter_time_ms,
                                    LUKS_MK_ITER_DIVISOR, LUKS_MIN_ITERS,
                                    &mk_iters);
    }
    if (ret == 0) {
        ret = kdf_pbkdf2(hash, mk, kb, mk_salt, sizeof(mk_salt), mk_iters,
                         digest, sizeof(digest));
    }
    /* Slot i's material at 8 + i * sectors, the payload after slot 7. */
    uint32_t slot_sectors = luks_splitkey_sectors(kb, LUKS_STRIPES);
    uint32_t payload_sectors = LUKS_HEADER_SECTORS +
                               LUKS1_NUM_SLOTS * slot_sectors;
    size_t len = (size_t)payload_sectors * LUKS_SECTOR;
    size_t split_len = (size_t)kb * LUKS_STRIPES;
    if (ret == 0) {
        buf = calloc(1, len);
        ret = buf ? 0 : error_set(ENOMEM, "Out of memory");
    }
    if (ret == 0) {
        ret = kdf_random(slot_salt, sizeof(slot_salt));
    }
    if (ret == 0) {
        ret = kdf_pbkdf2_iterations(hash, password, password_len, slot_salt,
                                    sizeof(slot_salt), kb, o->iter_time_ms,
                                    1, LUKS_MIN_ITERS, &slot_iters);
    }
    /* Never make what luks1_unlock would refuse to open. */
    if (ret == 0) {
        uint64_t weight = luks_hash_weight(o->hash_alg);
        uint64_t cost =
            luks_pbkdf2_cost(weight, slot_iters, kb, hash->digest_size) +
            luks_pbkdf2_cost(weight, mk_iters, LUKS1_DIGEST_SIZE,
                             hash->digest_size);
        if (cost > LUKS1_MAX_UNLOCK_COST) {
            ret = error_set(E2BIG, "iter-time %llu ms needs more PBKDF2 "
                            "work than qimg's unlock limit allows",
                            (unsigned long long)o->iter_time_ms);
        }
    }
    if (ret == 0) {
        ret = kdf_pbkdf2(hash, password, password_len, slot_salt,
                         sizeof(slot_salt), slot_iters, slot_key, kb);
    }
    uint8_t *material = buf ? buf + LUKS_HEADER_SECTORS * LUKS_SECTOR : NULL;
    if (ret == 0) {
        ret = kdf_af_split(hash, mk, kb, LUKS_STRIPES, material);
    }
    if (ret == 0) {
        ret = sector_cipher_new(o->cipher_alg, o->cipher_mode, o->ivgen_alg,
                                ivhash, slot_key, kb, &slot);
    }
    if (ret == 0) {
        ret = sector_cipher_encrypt(slot, 0, material, split_len);
    }
    if (ret == 0) {
        ret = luks_uuid(uuid);
    }
    if (ret == 0) {
        memcpy(buf, luks_magic, sizeof(luks_magic));
        store_be16(buf + LUKS_OFF_VERSION, LUKS_VERSION);
        char family[LUKS_NAME_LEN];
        snprintf(family, sizeof(family), "%.*s",
                 (int)strcspn(o->cipher_alg, "-"), o->cipher_alg);
        put_name(buf, LUKS_OFF_CIPHER_NAME, family);
        char mode[LUKS_NAME_LEN * 2];
        snprintf(mode, sizeof(mode), "%s-%s%s%s", o->cipher_mode,
                 o->ivgen_alg, ivhash ? ":" : "", ivhash ? ivhash : "");
        put_name(buf, LUKS_OFF_CIPHER_MODE, mode);
        put_name(buf, LUKS_OFF_HASH_SPEC, o->hash_alg);
        store_be32(buf + LUKS_OFF_PAYLOAD, payload_sectors);
        store_be32(buf + LUKS_OFF_KEY_BYTES, kb);
        memcpy(buf + LUKS_OFF_MK_DIGEST, digest, sizeof(digest));
        memcpy(buf + LUKS_OFF_MK_SALT, mk_salt, sizeof(mk_salt));
        store_be32(buf + LUKS_OFF_MK_ITERS, mk_iters);
        memcpy(buf + LUKS_OFF_UUID, uuid, 36);
        for (size_t i = 0; i < LUKS1_NUM_SLOTS; i++) {
            uint8_t *sl = buf + LUKS_OFF_SLOTS + i * LUKS_SLOT_SIZE;
            store_be32(sl + LUKS_SLOT_ACTIVE,
                       i == 0 ? LUKS_SLOT_ENABLED : LUKS_SLOT_DISABLED);
            store_be32(sl + LUKS_SLOT_ITERS, i == 0 ? slot_iters : 0);
            if (i == 0) {
                memcpy(sl + LUKS_SLOT_SALT, slot_salt, sizeof(slot_salt));
            }
            store_be32(sl + LUKS_SLOT_KEY_OFFSET,
                       LUKS_HEADER_SECTORS + (uint32_t)i * slot_sectors);
            store_be32(sl + LUKS_SLOT_STRIPES, LUKS_STRIPES);
        }
    }
    sector_cipher_free(slot);
    kdf_wipe(mk, sizeof(mk));
    kdf_wipe(slot_key, sizeof(slot_key));
    if (ret < 0) {
        sector_cipher_free(payload);
        if (buf) {
            kdf_wipe(buf, len);
            free(buf);
        }
        return ret;
    }
    *area = buf;
    *area_len = len;
    *out = payload;
    return 0;
}

/* ---- info ---------------------------------------------------------------- */

static int put(struct qimg_value *dict, const char *key,
               struct qimg_value *item)
{
    return qimg_value_dict_set(dict, key, item) < 0 ? -ENOMEM : 0;
}

/* Each slot: active, iters and stripes (only when active), key-offset. */
static struct qimg_value *luks_slot_value(const struct luks1_slot *sl)
{
    struct qimg_value *d = qimg_value_new_dict();
    int ret = d ? put(d, "active", qimg_value_new_bool(sl->active)) : -ENOMEM;
    if (ret == 0 && sl->active) {
        ret = put(d, "iters", qimg_value_new_int(sl->iters));
    }
    if (ret == 0 && sl->active) {
        ret = put(d, "stripes", qimg_value_new_int(sl->stripes));
    }
    if (ret == 0) {
        ret = put(d, "key-offset", qimg_value_new_int((int64_t)sl->key_offset));
    }
    if (ret < 0) {
        qimg_value_free(d);
        return NULL;
    }
    return d;
}

/*
 * Schema order of QCryptoBlockInfoLUKS: cipher-alg, cipher-mode,
 * ivgen-alg, ivgen-hash-alg (essiv only), hash-alg, payload-offset,
 * master-key-iters, uuid, slots.  The value tree orders the keys as
 * QEMU's QDict prints them.
 */
struct qimg_value *luks1_info_value(const struct luks1_header *l,
                                    bool with_format)
{
    struct qimg_value *e = qimg_value_new_dict();
    struct qimg_value *slots = qimg_value_new_list();
    int ret = e && slots ? 0 : -ENOMEM;
    if (ret == 0 && with_format) {
        ret = put(e, "format", qimg_value_new_string("luks"));
    }
    if (ret == 0) {
        ret = put(e, "cipher-alg", qimg_value_new_string(l->cipher_alg));
    }
    if (ret == 0) {
        ret = put(e, "cipher-mode", qimg_value_new_string(l->cipher_mode));
    }
    if (ret == 0) {
        ret = put(e, "ivgen-alg", qimg_value_new_string(l->ivgen_alg));
    }
    if (ret == 0 && l->ivgen_hash_alg) {
        ret =
            put(e, "ivgen-hash-alg", qimg_value_new_string(l->ivgen_hash_alg));
    }
    if (ret == 0) {
        ret = put(e, "hash-alg", qimg_value_new_string(l->hash_alg));
    }
    if (ret == 0) {
        ret = put(e, "payload-offset",
                  qimg_value_new_int((int64_t)l->payload_offset));
    }
    if (ret == 0) {
        ret =
            put(e, "master-key-iters", qimg_value_new_int(l->master_key_iters));
    }
    if (ret == 0) {
        ret = put(e, "uuid", qimg_value_new_string(l->uuid));
    }
    for (size_t i = 0; ret == 0 && i < LUKS1_NUM_SLOTS; i++) {
        struct qimg_value *sv = luks_slot_value(&l->slots[i]);
        /* list_append frees sv itself when it fails. */
        ret = sv && qimg_value_list_append(slots, sv) == 0 ? 0 : -ENOMEM;
    }
    if (ret == 0) {
        ret = put(e, "slots", slots);
        slots = NULL;
    }
    qimg_value_free(slots);
    if (ret < 0) {
        qimg_value_free(e);
        return NULL;
    }
    return e;
}
