/*
** spoolrec.h -- the byte format of spool log records (docs/FORMAT.md, "Spool
** log"). Pure encode/decode over memory; no I/O. Every decoder treats its
** input as hostile.
**
** A log file is a 16-byte header ("WSSPOOL\0", u32 version, u32 zero)
** followed by records:
**
**   u32 magic 0x57535243 ("WSRC")  u8 type  u8[3] zero  u32 payload length
**   u32 zero  payload  u64 XXH3-64 of everything before it in the record
**
** All integers big-endian.
*/
#ifndef WS_SPOOLREC_H
#define WS_SPOOLREC_H

#include <stddef.h>
#include <stdint.h>

#define SPOOL_FILE_MAGIC "WSSPOOL"
#define SPOOL_FILE_HDR_SIZE 16
#define SPOOL_FILE_VERSION 1
#define SPOOL_REC_MAGIC 0x57535243u
#define SPOOL_REC_HDR_SIZE 16
#define SPOOL_REC_TRAILER_SIZE 8
#define SPOOL_REC_OVERHEAD (SPOOL_REC_HDR_SIZE + SPOOL_REC_TRAILER_SIZE)
/* Largest payload: a FRAMES record of up to 32 MiB of frames plus its head. */
#define SPOOL_REC_MAX_PAYLOAD ((uint32_t)(32u << 20) + 64u)
/* Frames per FRAMES record are limited so the record stays under the cap. */
#define SPOOL_FRAMES_MAX_BYTES ((uint32_t)(32u << 20))

enum spool_rec_type {
    SPOOL_REC_WATERMARK = 1, /* frames 1..mx_frame of WAL (salt1, salt2) are committed */
    SPOOL_REC_WAL_BEGIN = 2, /* a WAL header is about to be written at offset 0 */
    SPOOL_REC_WAL_END = 3,   /* WAL (salt1, salt2) ends: restart, truncate or delete */
    SPOOL_REC_FRAMES = 4     /* a copy of committed frames of a WAL that is ending */
};

/* LOST: the WAL the spool had open is no longer in the file (removed or
** replaced by a process outside walship); nothing could be copied. */
enum spool_end_reason {
    SPOOL_END_RESTART = 1,
    SPOOL_END_TRUNCATE = 2,
    SPOOL_END_DELETE = 3,
    SPOOL_END_LOST = 4
};

/* Identity of the database file: a file copied in or written outside
** walship has another inode or a newer ctime. */
typedef struct spool_dbid {
    uint64_t dev, ino, size;
    int64_t ctime_ns;
} spool_dbid;

/* A decoded record. For FRAMES, `frames` points into the input buffer. */
typedef struct spool_rec {
    int type;
    uint32_t salt1, salt2;
    uint32_t mx_frame;    /* WATERMARK, WAL_END */
    uint32_t page_size;   /* WATERMARK (0 if unknown), FRAMES, WAL_BEGIN */
    int64_t time_ms;      /* WATERMARK, WAL_BEGIN, WAL_END */
    uint32_t reason;      /* WAL_END */
    uint8_t wal_hdr[32];  /* WAL_BEGIN: the header bytes as written */
    uint32_t first_frame; /* FRAMES */
    uint32_t nframes;     /* FRAMES */
    const uint8_t *frames;/* FRAMES: nframes * (24 + page_size) bytes */
    spool_dbid dbid;      /* WAL_BEGIN, WAL_END: the database file at that moment */
} spool_rec;

/* Writes the 16-byte file header into buf. */
void spool_file_hdr_encode(uint8_t *buf);
/* 0 if buf holds a valid file header, -1 otherwise. */
int spool_file_hdr_check(const uint8_t *buf, size_t n);

/* Encoded size of a record with this payload length. */
static inline size_t spool_rec_size(uint32_t payload_len) {
    return SPOOL_REC_OVERHEAD + (size_t)payload_len;
}

/* Encoders write a whole record into buf, which must have room for
** spool_rec_size(payload); each returns the number of bytes written. */
size_t spool_rec_encode_watermark(uint8_t *buf, uint32_t salt1, uint32_t salt2,
                                  uint32_t mx_frame, uint32_t page_size, int64_t time_ms);
size_t spool_rec_encode_begin(uint8_t *buf, const uint8_t walhdr[32], int64_t time_ms,
                              const spool_dbid *id);
size_t spool_rec_encode_end(uint8_t *buf, uint32_t salt1, uint32_t salt2, uint32_t mx_frame,
                            uint32_t reason, int64_t time_ms, const spool_dbid *id);
#define SPOOL_BEGIN_PAYLOAD 72
#define SPOOL_END_PAYLOAD 56
/* FRAMES in two steps, so frame bytes can be read straight into place:
** spool_rec_frames_layout gives the payload offset of the frame bytes and the
** total size; fill the frames at buf + *frames_off; then seal. */
size_t spool_rec_frames_size(uint32_t nframes, uint32_t page_size);
size_t spool_rec_frames_data_offset(void);
size_t spool_rec_frames_seal(uint8_t *buf, uint32_t salt1, uint32_t salt2, uint32_t first_frame,
                             uint32_t nframes, uint32_t page_size);

/* Decodes the record at the start of buf (n bytes available).
** Returns:  > 0  the record's total size; *out filled
**           0    not enough bytes yet for a whole record (need more input)
**          -1    not a valid record (bad magic, type, length, checksum or
**                payload); the caller decides whether that is a torn tail. */
long spool_rec_decode(const uint8_t *buf, size_t n, spool_rec *out);

/* Reads just the total size a record claims, from its 16-byte header;
** 0 if the header is invalid. Lets a reader fetch exactly one record. */
size_t spool_rec_peek_size(const uint8_t *hdr16);

#endif
