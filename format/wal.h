/*
** wal.h -- SQLite's WAL file and wal-index (shm) structures, as walship
** reads and writes them.
**
** Sources: sqlite.org/fileformat2.html#walformat, sqlite.org/walformat.html,
** SQLite's src/wal.c. Facts checked on SQLite 3.40.1 are in ARCHITECTURE.md
** section 9.
**
** WAL file: a 32-byte header then frames of 24-byte header + one page.
** Every field big-endian. The checksum is a pair of 32-bit Fibonacci-weighted
** sums over 32-bit words; the words are read big-endian when the header magic
** is 0x377f0683 and little-endian when it is 0x377f0682. Frame n's checksum
** covers the first 8 bytes of its header and its page, seeded with frame
** n-1's checksum (frame 1: the WAL header's checksum).
**
** wal-index header: two 48-byte copies at offsets 0 and 48 of shm region 0,
** native byte order except aSalt, which holds the WAL header's raw bytes.
** WalCkptInfo follows at offset 96. Locks: slot 0 WRITE, 1 CKPT, 2 RECOVER,
** 3..7 READ0..READ4.
*/
#ifndef WS_WAL_H
#define WS_WAL_H

#include <stddef.h>
#include <stdint.h>

#define WAL_HDR_SIZE 32
#define WAL_FRAME_HDR_SIZE 24
#define WAL_MAGIC_LE 0x377f0682u
#define WAL_MAGIC_BE 0x377f0683u
#define WAL_FORMAT_VERSION 3007000u

#define WALIDX_HDR_SIZE 48
#define WALIDX_CKPT_OFFSET 96 /* WalCkptInfo */
#define WALIDX_NREADER 5
#define WALIDX_LOCK_WRITE 0
#define WALIDX_LOCK_CKPT 1
#define WALIDX_LOCK_RECOVER 2
#define WALIDX_LOCK_READ(i) (3 + (i))
#define WALIDX_REGION_SIZE 32768
#define WALIDX_HASH_NPAGE 4096
#define WALIDX_HASH_NPAGE_ONE 4062 /* frames indexed by region 0 */
#define WALIDX_HASH_NSLOT 8192
#define WALIDX_READMARK_NONE 0xffffffffu

/* A parsed WAL file header. */
typedef struct wal_hdr {
    uint32_t magic;
    uint32_t version;
    uint32_t page_size; /* decoded: 65536 stays 65536 */
    uint32_t ckpt_seq;
    uint32_t salt1, salt2;
    uint32_t ck1, ck2; /* header checksum = seed of frame 1's checksum */
} wal_hdr;

/* A parsed frame header. */
typedef struct wal_frame_hdr {
    uint32_t pgno;
    uint32_t commit_size; /* database size in pages after commit; 0 if not a commit */
    uint32_t salt1, salt2;
    uint32_t ck1, ck2;
} wal_frame_hdr;

/* The running checksum of a WAL: which word order, and its current value. */
typedef struct wal_cksum {
    int big_endian; /* words read big-endian (magic 0x377f0683) */
    uint32_t s1, s2;
} wal_cksum;

/* Parses and validates a 32-byte WAL header (magic, version, page size,
** checksum). Returns 0 if valid, -1 otherwise. */
int wal_hdr_parse(const uint8_t *buf, wal_hdr *out);

/* Encodes a WAL header with a correct checksum into buf (32 bytes). */
void wal_hdr_encode(uint8_t *buf, uint32_t magic, uint32_t page_size, uint32_t ckpt_seq,
                    uint32_t salt1, uint32_t salt2, wal_hdr *out);

void wal_frame_hdr_parse(const uint8_t *buf, wal_frame_hdr *out);

/* Accumulates SQLite's WAL checksum over n bytes (n a multiple of 8). */
void wal_cksum_update(wal_cksum *c, const uint8_t *p, size_t n);

/* Checks frame (header + page) against the WAL's salts and the running
** checksum c; on success advances c to this frame's checksum and returns 0,
** otherwise leaves c unchanged and returns -1. */
int wal_frame_check(const wal_hdr *h, wal_cksum *c, const uint8_t *frame, uint32_t page_size);

/* Fills in the frame header (salts, checksum) of a frame whose pgno,
** commit_size and page data are already in place, advancing c. Used by the
** replica applier to re-checksum frames for its own WAL. */
void wal_frame_seal(const wal_hdr *h, wal_cksum *c, uint8_t *frame, uint32_t pgno,
                    uint32_t commit_size, uint32_t page_size);

/* Byte offset of frame n (1-based) in a WAL with this page size. */
static inline uint64_t wal_frame_offset(uint32_t n, uint32_t page_size) {
    return WAL_HDR_SIZE + (uint64_t)(n - 1) * (WAL_FRAME_HDR_SIZE + page_size);
}

/* A wal-index header (one 48-byte copy), in host byte order except salt
** bytes, which are kept as the raw big-endian WAL header bytes. */
typedef struct walidx_hdr {
    uint32_t version;
    uint32_t unused;
    uint32_t change;
    uint8_t is_init;
    uint8_t big_end_cksum;
    uint16_t page_size_raw; /* 1 means 65536 */
    uint32_t mx_frame;
    uint32_t n_page;
    uint32_t frame_cksum[2];
    uint8_t salt[8];
    uint32_t cksum[2];
} walidx_hdr;

/* Copies both header copies out of a mapped shm region 0 (reading copy 0
** after copy 1, with barriers, as SQLite's readers do) and returns 0 when the
** copies agree, the header is initialised and its checksum is right;
** -1 otherwise (header being written, or not initialised). */
int walidx_hdr_read(const volatile void *shm, walidx_hdr *out);

/* Salts of a wal-index header as the WAL header's numbers. */
uint32_t walidx_salt1(const walidx_hdr *h);
uint32_t walidx_salt2(const walidx_hdr *h);

/* Computes the wal-index header checksum (over its first 40 bytes). */
void walidx_hdr_cksum(walidx_hdr *h);

/* Reads the 16-bit page-size field convention: 1 means 65536. */
static inline uint32_t walidx_page_size(const walidx_hdr *h) {
    return h->page_size_raw == 1 ? 65536u : h->page_size_raw;
}

/* SQLite database header helpers (first 100 bytes of page 1). */
uint32_t sqlite_hdr_page_size(const uint8_t *page1); /* 0 if invalid */

#endif
