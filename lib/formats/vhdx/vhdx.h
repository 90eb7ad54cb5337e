/*
 * VHDX (Hyper-V virtual hard disk, MS-VHDX v1.0): on-disk structures,
 * their codecs (header.c), the log (log.c) and the driver state.
 *
 * Layout (MS-VHDX 2.1): a 1 MiB header section holding the file type
 * identifier (0), two headers (64 KiB, 128 KiB) and two region tables
 * (192 KiB, 256 KiB); then regions named by the region table: the BAT and
 * the metadata region, and the log named by the header.  All fields are
 * little-endian; GUIDs are kept as their 16 stored bytes.
 */
#ifndef QIMG_FORMATS_VHDX_H
#define QIMG_FORMATS_VHDX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "driver.h"

#define VHDX_KiB 1024ull
#define VHDX_MiB (1024ull * 1024)
#define VHDX_TiB (1024ull * 1024 * 1024 * 1024)

/* 2.2.1: "vhdxfile" then a UTF-16 creator string, in 64 KiB. */
#define VHDX_FILE_ID_SIGNATURE "vhdxfile"
#define VHDX_FILE_ID_SIZE (64 * VHDX_KiB)
#define VHDX_CREATOR_BYTES 512

/* 2.2.2: the two headers, 4 KiB each (the crc covers the 4 KiB). */
#define VHDX_HEADER1_OFFSET (64 * VHDX_KiB)
#define VHDX_HEADER2_OFFSET (128 * VHDX_KiB)
#define VHDX_HEADER_SIZE 4096u
#define VHDX_HEADER_SIGNATURE 0x64616568u /* "head" */
#define VHDX_HEADER_SECTION_END VHDX_MiB

/* 2.2.3: region tables, 64 KiB each, at most 2047 entries. */
#define VHDX_REGION_TABLE1_OFFSET (192 * VHDX_KiB)
#define VHDX_REGION_TABLE2_OFFSET (256 * VHDX_KiB)
#define VHDX_REGION_TABLE_SIZE (64 * 1024u)
#define VHDX_REGION_SIGNATURE 0x69676572u /* "regi" */
#define VHDX_REGION_MAX_ENTRIES 2047u
#define VHDX_REGION_ENTRY_REQUIRED 1u

/* 2.6: the metadata table, 64 KiB at the start of the region. */
#define VHDX_METADATA_TABLE_SIZE (64 * 1024u)
#define VHDX_METADATA_SIGNATURE "metadata"
#define VHDX_METADATA_MAX_ENTRIES 2047u
#define VHDX_META_IS_USER 1u
#define VHDX_META_IS_VIRTUAL_DISK 2u
#define VHDX_META_IS_REQUIRED 4u

/* 2.6.2.1: file parameters flags. */
#define VHDX_PARAMS_LEAVE_BLOCKS_ALLOCATED 1u
#define VHDX_PARAMS_HAS_PARENT 2u

/* 2.6.2.1: block size limits (a power of two in between). */
#define VHDX_BLOCK_SIZE_MIN VHDX_MiB
#define VHDX_BLOCK_SIZE_MAX (256 * VHDX_MiB)
/* [QEMU] the largest virtual disk it accepts (the spec's 64 TiB). */
#define VHDX_MAX_IMAGE_SIZE (64 * VHDX_TiB)

/* 2.5.1: BAT entries: state in bits 0-2, file offset in MiB at 20-63. */
#define VHDX_BAT_STATE_MASK 7u
#define VHDX_BAT_OFFSET_MASK (~(uint64_t)(VHDX_MiB - 1))
#define VHDX_PAYLOAD_NOT_PRESENT 0u
#define VHDX_PAYLOAD_UNDEFINED 1u
#define VHDX_PAYLOAD_ZERO 2u
#define VHDX_PAYLOAD_UNMAPPED 3u
/* [QEMU] the 0.95 draft's UNMAPPED, read as zero (reserved in 1.0). */
#define VHDX_PAYLOAD_UNMAPPED_V095 5u
#define VHDX_PAYLOAD_FULLY_PRESENT 6u
#define VHDX_PAYLOAD_PARTIALLY_PRESENT 7u
#define VHDX_SB_NOT_PRESENT 0u
#define VHDX_SB_PRESENT 6u
/* Sector bitmaps cover 2^23 sectors per 1 MiB block (2.5). */
#define VHDX_CHUNK_SECTORS (1ull << 23)

/* 2.3: the log, in 4 KiB sectors. */
#define VHDX_LOG_SECTOR 4096u
#define VHDX_LOG_ENTRY_SIGNATURE 0x65676f6cu /* "loge" */
#define VHDX_LOG_ZERO_SIGNATURE 0x6f72657au  /* "zero" */
#define VHDX_LOG_DESC_SIGNATURE 0x63736564u  /* "desc" */
#define VHDX_LOG_DATA_SIGNATURE 0x61746164u  /* "data" */
#define VHDX_LOG_HEADER_SIZE 64u
#define VHDX_LOG_DESC_SIZE 32u
/* Bytes of a data sector that hold data: 4096 - 4 - 4 - 4. */
#define VHDX_LOG_DATA_BYTES 4084u

struct vhdx_guid {
    uint8_t b[16];
};

extern const struct vhdx_guid vhdx_guid_bat;
extern const struct vhdx_guid vhdx_guid_metadata;
extern const struct vhdx_guid vhdx_guid_file_params;
extern const struct vhdx_guid vhdx_guid_virtual_size;
extern const struct vhdx_guid vhdx_guid_page83;
extern const struct vhdx_guid vhdx_guid_logical_sector;
extern const struct vhdx_guid vhdx_guid_physical_sector;
extern const struct vhdx_guid vhdx_guid_parent_locator;

bool vhdx_guid_is_zero(const struct vhdx_guid *g);
bool vhdx_guid_equal(const struct vhdx_guid *a, const struct vhdx_guid *b);

/* 2.2.2 header. */
struct vhdx_header {
    uint32_t checksum;
    uint64_t sequence;
    struct vhdx_guid file_write_guid;
    struct vhdx_guid data_write_guid;
    struct vhdx_guid log_guid;
    uint16_t log_version;
    uint16_t version;
    uint32_t log_length;
    uint64_t log_offset;
};

/* CRC-32C of len bytes with the 4 bytes at crc_off taken as zero. */
uint32_t vhdx_checksum(const uint8_t *buf, size_t len, size_t crc_off);

/*
 * Decode a 4 KiB header.  Returns true when it is valid as QEMU judges
 * one: the signature, the checksum and version 1.
 */
bool vhdx_header_decode(const uint8_t *buf, size_t len,
                        struct vhdx_header *out);
/* Encode into 4 KiB (zeroed reserved bytes) with its checksum. */
void vhdx_header_encode(const struct vhdx_header *h, uint8_t *buf);

/* The regions qimg knows from the region table (2.2.3.2). */
struct vhdx_regions {
    uint64_t bat_offset;
    uint32_t bat_length;
    uint64_t meta_offset;
    uint32_t meta_length;
};

/*
 * A list of file ranges [start, end) that must not overlap ([QEMU] checks
 * each new region and each payload block against those already known).
 */
#define VHDX_MAX_KNOWN_REGIONS 4
struct vhdx_region_list {
    size_t count;
    uint64_t start[VHDX_MAX_KNOWN_REGIONS];
    uint64_t end[VHDX_MAX_KNOWN_REGIONS];
};
/*
 * 0 when [start, start + len) overlaps nothing in the list; otherwise
 * -EINVAL after reporting QEMU's line (a warning) about the overlap.
 */
int vhdx_region_check(const struct vhdx_region_list *list, uint64_t start,
                      uint64_t len);
void vhdx_region_add(struct vhdx_region_list *list, uint64_t start,
                     uint64_t len);

/*
 * Decode a 64 KiB region table: signature, checksum, count, and each
 * entry (alignment, duplicates, unknown required regions), checking each
 * known region against list and adding it.  -EINVAL/-ENOTSUP with the
 * message set.
 */
int vhdx_region_table_decode(const uint8_t *buf, size_t len,
                             const char *filename,
                             struct vhdx_region_list *list,
                             struct vhdx_regions *out);
/* Encode a region table naming the BAT and the metadata region. */
void vhdx_region_table_encode(const struct vhdx_regions *r, uint8_t *buf);

/* The metadata items a non-differencing image uses (2.6.2). */
struct vhdx_metadata {
    uint32_t block_size;
    uint32_t params_flags;
    uint64_t virtual_size;
    struct vhdx_guid page83;
    uint32_t logical_sector_size;
    uint32_t physical_sector_size;
    bool has_parent_locator;
};

/*
 * Decode the metadata region: table (buf holds its 64 KiB), then the
 * items, read through read_item (offsets are relative to the region,
 * checked to lie inside meta_length).  Validates the values as QEMU
 * does.  -EINVAL/-ENOTSUP with the message set.
 */
typedef int (*vhdx_read_fn)(void *opaque, void *buf, size_t len,
                            uint64_t off);
int vhdx_metadata_decode(const uint8_t *table, size_t len,
                         uint32_t meta_length, const char *filename,
                         vhdx_read_fn read_item, void *opaque,
                         struct vhdx_metadata *out);

/* Derived BAT geometry. */
struct vhdx_geometry {
    uint64_t chunk_ratio;  /* payload blocks per sector bitmap block */
    uint64_t data_blocks;  /* payload blocks covering the disk */
    uint64_t bat_entries;  /* entries the BAT must hold */
};
int vhdx_geometry(const struct vhdx_metadata *m, struct vhdx_geometry *g);
/* The BAT index of payload block b. */
static inline uint64_t vhdx_bat_index(const struct vhdx_geometry *g,
                                      uint64_t b)
{
    return b + b / g->chunk_ratio;
}

/* Driver state. */
struct vhdx_state {
    struct vhdx_header hdr[2];
    int cur; /* index of the current header */
    struct vhdx_regions regions;
    struct vhdx_region_list known;
    struct vhdx_metadata meta;
    struct vhdx_geometry geo;
    uint64_t *bat;
    /* The log was replayed at open (check reports it as fixed). */
    bool log_replayed;
    /* This open's file write GUID, once one was made. */
    struct vhdx_guid session;

    /* Guest writes (guest_write.c). */
    /* The BAT was checked at open (not so for a check's open). */
    bool bat_checked;
    /* The headers carry this open's GUIDs (2.2.2: before the first write). */
    bool data_guid_done;
    /* A BAT update failed half-way: memory and file may disagree. */
    bool broken;
    /* Where this open's next log entry goes, and its sequence number. */
    uint32_t log_pos;
    uint64_t log_seq;
};

/* A random (version 4) GUID, as QEMU makes them. */
int vhdx_guid_generate(struct vhdx_guid *g);
/*
 * Write the next header twice, so that both slots hold it (2.2.2.1):
 * sequence number one higher each time, file write GUID session, a new
 * data write GUID each time when asked, log GUID log_guid.  Each write is
 * synced before the next.
 */
int vhdx_update_headers(struct qimg_node *node, struct vhdx_state *s,
                        const struct vhdx_guid *session, bool new_data_guid,
                        const struct vhdx_guid *log_guid);

/* Guest writes (guest_write.c); differencing images never get here. */
int vhdx_pwrite(struct qimg_node *node, const void *buf, size_t len,
                uint64_t off);
int vhdx_pwrite_zeroes(struct qimg_node *node, uint64_t off, uint64_t len,
                       unsigned flags);

/*
 * Is there a log to replay?  Scans the log named by the current header
 * (its GUID non-zero) for a valid active sequence.  Returns 1 with the
 * sequence found (kept inside the state for vhdx_log_replay), 0 when
 * nothing is to be replayed, -errno on read errors.
 */
struct vhdx_log_seq;
int vhdx_log_find(struct qimg_io *file, const struct vhdx_header *h,
                  struct vhdx_log_seq **out);
/* Replay a sequence found by vhdx_log_find (writes the file). */
int vhdx_log_replay(struct qimg_io *file, const struct vhdx_log_seq *seq);
void vhdx_log_seq_free(struct vhdx_log_seq *seq);

/*
 * A log entry that changes one 4 KiB file sector (2.3.1): a header
 * sector holding one data descriptor, then the data sector.  [QEMU]
 * logs each BAT change so, one entry per change.
 */
#define VHDX_LOG_ONE_SECTOR_ENTRY (2 * VHDX_LOG_SECTOR)
struct vhdx_log_sector_entry {
    uint64_t seq;
    uint32_t tail;           /* log offset of the sequence's first entry */
    struct vhdx_guid guid;   /* the header's log GUID */
    uint64_t flushed_file_offset;
    uint64_t last_file_offset;
    uint64_t file_offset;    /* of the sector, 4 KiB aligned */
    const uint8_t *sector;   /* its 4096 new bytes */
};
/* Encode into out (VHDX_LOG_ONE_SECTOR_ENTRY bytes), checksum included. */
void vhdx_log_sector_entry_encode(const struct vhdx_log_sector_entry *e,
                                  uint8_t *out);
/*
 * Write len bytes (whole 4 KiB sectors) at log offset pos, wrapping at the
 * end of the log as the circular buffer does.  pos < log_length, both
 * multiples of 4 KiB.
 */
int vhdx_log_write(struct qimg_io *file, uint64_t log_offset,
                   uint32_t log_length, uint32_t pos, const uint8_t *buf,
                   size_t len);

/* Creation (create.c). */
extern const struct qimg_opt_desc vhdx_create_opts[];
int vhdx_create(const char *filename, const struct qimg_opts *opts);

#endif
