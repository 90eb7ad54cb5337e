/* The LUKS1 header decoder (crypto/luks1.c) behind luks and qcow2 info. */
#include <string.h>

#include "crypto/luks1.h"
#include "qimg/qimg.h"
#include "tap.h"
#include "util/endian.h"

#define SLOT_SECTORS 504 /* 64 key bytes x 4000 stripes, 4 KiB aligned */

static void build(uint8_t *h)
{
    memset(h, 0, LUKS1_HEADER_SIZE);
    memcpy(h, "LUKS\xba\xbe", 6);
    store_be16(h + 6, 1);
    strcpy((char *)h + 8, "aes");
    strcpy((char *)h + 40, "xts-plain64");
    strcpy((char *)h + 72, "sha256");
    store_be32(h + 104, 4096);       /* payload offset, sectors */
    store_be32(h + 108, 64);         /* key bytes */
    store_be32(h + 164, 1000);       /* master key digest iterations */
    strcpy((char *)h + 168, "01234567-89ab-cdef-0123-456789abcdef");
    for (int i = 0; i < LUKS1_NUM_SLOTS; i++) {
        uint8_t *s = h + 208 + 48 * i;
        store_be32(s, i == 0 ? 0x00AC71F3 : 0x0000DEAD);
        store_be32(s + 4, i == 0 ? 2000 : 0);
        store_be32(s + 40, 8 + i * SLOT_SECTORS);
        store_be32(s + 44, 4000);
    }
}

int main(void)
{
    uint8_t h[LUKS1_HEADER_SIZE];
    struct luks1_header info;

    build(h);
    TAP_OK(luks1_decode(h, sizeof(h), &info) == 0);
    tap_eq_str(info.cipher_alg, "aes-256", "xts halves the key: aes-256");
    tap_eq_str(info.cipher_mode, "xts", "cipher mode");
    tap_eq_str(info.ivgen_alg, "plain64", "ivgen");
    TAP_OK(info.ivgen_hash_alg == NULL);
    tap_eq_str(info.hash_alg, "sha256", "hash");
    tap_eq_u64(info.payload_offset, 4096 * 512, "payload offset in bytes");
    tap_eq_u64(info.master_key_iters, 1000, "master key iterations");
    tap_eq_str(info.uuid, "01234567-89ab-cdef-0123-456789abcdef", "uuid");
    TAP_OK(info.slots[0].active && info.slots[0].iters == 2000);
    tap_eq_u64(info.slots[0].key_offset, 8 * 512, "slot 0 key offset");
    TAP_OK(!info.slots[1].active);
    tap_eq_u64(info.slots[7].key_offset, (8 + 7 * SLOT_SECTORS) * 512,
               "slot 7 key offset");

    /* essiv carries its hash. */
    build(h);
    store_be32(h + 108, 32);
    memset(h + 40, 0, 32);
    strcpy((char *)h + 40, "cbc-essiv:sha256");
    TAP_OK(luks1_decode(h, sizeof(h), &info) == 0);
    tap_eq_str(info.cipher_alg, "aes-256", "cbc keeps the key: aes-256");
    tap_eq_str(info.ivgen_alg, "essiv", "essiv ivgen");
    tap_eq_str(info.ivgen_hash_alg, "sha256", "essiv hash");

    /* Damage is refused, never trusted. */
    build(h);
    h[0] = 'X';
    TAP_OK(luks1_decode(h, sizeof(h), &info) < 0);
    build(h);
    store_be16(h + 6, 2);
    TAP_OK(luks1_decode(h, sizeof(h), &info) < 0);
    build(h);
    memset(h + 8, 'a', 32); /* cipher name without its NUL */
    TAP_OK(luks1_decode(h, sizeof(h), &info) < 0);
    build(h);
    store_be32(h + 208 + 44, 3999);
    TAP_OK(luks1_decode(h, sizeof(h), &info) < 0);
    tap_eq_str(qimg_get_error(), "Keyslot 0 is corrupted (stripes 3999 != "
               "4000)", "stripes message");
    build(h);
    store_be32(h + 208 + 48 + 40, 8); /* slot 1 overlaps slot 0 */
    TAP_OK(luks1_decode(h, sizeof(h), &info) < 0);
    build(h);
    store_be32(h + 104, 4); /* payload inside the header */
    TAP_OK(luks1_decode(h, sizeof(h), &info) < 0);
    build(h);
    store_be32(h + 164, 0);
    TAP_OK(luks1_decode(h, sizeof(h), &info) < 0);
    /* A short buffer reads as zeros past its end: bad magic, no overrun. */
    TAP_OK(luks1_decode(h, 3, &info) < 0);

    return tap_done();
}
