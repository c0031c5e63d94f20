/*
** spoolrec.c -- encode and decode spool log records. See spoolrec.h.
*/
#include "spoolrec.h"

#include <string.h>

#include "../common/util.h"
#include "wal.h"

void spool_file_hdr_encode(uint8_t *buf) {
    memset(buf, 0, SPOOL_FILE_HDR_SIZE);
    memcpy(buf, SPOOL_FILE_MAGIC, 7);
    ws_put_be32(buf + 8, SPOOL_FILE_VERSION);
}

int spool_file_hdr_check(const uint8_t *buf, size_t n) {
    if (n < SPOOL_FILE_HDR_SIZE) return -1;
    if (memcmp(buf, SPOOL_FILE_MAGIC, 8) != 0) return -1; /* includes the NUL */
    if (ws_get_be32(buf + 8) != SPOOL_FILE_VERSION) return -1;
    return 0;
}

static size_t seal(uint8_t *buf, int type, uint32_t payload_len) {
    ws_put_be32(buf, SPOOL_REC_MAGIC);
    buf[4] = (uint8_t)type;
    buf[5] = buf[6] = buf[7] = 0;
    ws_put_be32(buf + 8, payload_len);
    ws_put_be32(buf + 12, 0);
    size_t body = SPOOL_REC_HDR_SIZE + payload_len;
    ws_put_be64(buf + body, ws_hash64(buf, body));
    return body + SPOOL_REC_TRAILER_SIZE;
}

size_t spool_rec_encode_watermark(uint8_t *buf, uint32_t salt1, uint32_t salt2,
                                  uint32_t mx_frame, uint32_t page_size, int64_t time_ms) {
    uint8_t *p = buf + SPOOL_REC_HDR_SIZE;
    ws_put_be32(p, salt1);
    ws_put_be32(p + 4, salt2);
    ws_put_be32(p + 8, mx_frame);
    ws_put_be32(p + 12, page_size);
    ws_put_be64(p + 16, (uint64_t)time_ms);
    return seal(buf, SPOOL_REC_WATERMARK, 24);
}

static void put_dbid(uint8_t *p, const spool_dbid *id) {
    ws_put_be64(p, id->dev);
    ws_put_be64(p + 8, id->ino);
    ws_put_be64(p + 16, id->size);
    ws_put_be64(p + 24, (uint64_t)id->ctime_ns);
}

static void get_dbid(const uint8_t *p, spool_dbid *id) {
    id->dev = ws_get_be64(p);
    id->ino = ws_get_be64(p + 8);
    id->size = ws_get_be64(p + 16);
    id->ctime_ns = (int64_t)ws_get_be64(p + 24);
}

size_t spool_rec_encode_begin(uint8_t *buf, const uint8_t walhdr[32], int64_t time_ms,
                              const spool_dbid *id) {
    uint8_t *p = buf + SPOOL_REC_HDR_SIZE;
    memcpy(p, walhdr, 32);
    ws_put_be64(p + 32, (uint64_t)time_ms);
    put_dbid(p + 40, id);
    return seal(buf, SPOOL_REC_WAL_BEGIN, SPOOL_BEGIN_PAYLOAD);
}

size_t spool_rec_encode_end(uint8_t *buf, uint32_t salt1, uint32_t salt2, uint32_t mx_frame,
                            uint32_t reason, int64_t time_ms, const spool_dbid *id) {
    uint8_t *p = buf + SPOOL_REC_HDR_SIZE;
    ws_put_be32(p, salt1);
    ws_put_be32(p + 4, salt2);
    ws_put_be32(p + 8, mx_frame);
    ws_put_be32(p + 12, reason);
    ws_put_be64(p + 16, (uint64_t)time_ms);
    put_dbid(p + 24, id);
    return seal(buf, SPOOL_REC_WAL_END, SPOOL_END_PAYLOAD);
}

#define FRAMES_HEAD 24

size_t spool_rec_frames_size(uint32_t nframes, uint32_t page_size) {
    return spool_rec_size(FRAMES_HEAD + nframes * (WAL_FRAME_HDR_SIZE + page_size));
}

size_t spool_rec_frames_data_offset(void) { return SPOOL_REC_HDR_SIZE + FRAMES_HEAD; }

size_t spool_rec_frames_seal(uint8_t *buf, uint32_t salt1, uint32_t salt2, uint32_t first_frame,
                             uint32_t nframes, uint32_t page_size) {
    uint8_t *p = buf + SPOOL_REC_HDR_SIZE;
    ws_put_be32(p, salt1);
    ws_put_be32(p + 4, salt2);
    ws_put_be32(p + 8, first_frame);
    ws_put_be32(p + 12, nframes);
    ws_put_be32(p + 16, page_size);
    ws_put_be32(p + 20, 0);
    return seal(buf, SPOOL_REC_FRAMES, FRAMES_HEAD + nframes * (WAL_FRAME_HDR_SIZE + page_size));
}

size_t spool_rec_peek_size(const uint8_t *hdr) {
    if (ws_get_be32(hdr) != SPOOL_REC_MAGIC) return 0;
    uint32_t len = ws_get_be32(hdr + 8);
    if (len > SPOOL_REC_MAX_PAYLOAD) return 0;
    return spool_rec_size(len);
}

static int page_size_ok(uint32_t sz) {
    return sz >= 512 && sz <= 65536 && (sz & (sz - 1)) == 0;
}

long spool_rec_decode(const uint8_t *buf, size_t n, spool_rec *out) {
    if (n < SPOOL_REC_HDR_SIZE) return 0;
    size_t total = spool_rec_peek_size(buf);
    if (total == 0) return -1;
    if (buf[5] || buf[6] || buf[7] || ws_get_be32(buf + 12) != 0) return -1;
    if (n < total) return 0;
    uint32_t len = ws_get_be32(buf + 8);
    size_t body = SPOOL_REC_HDR_SIZE + len;
    if (ws_get_be64(buf + body) != ws_hash64(buf, body)) return -1;
    const uint8_t *p = buf + SPOOL_REC_HDR_SIZE;
    memset(out, 0, sizeof *out);
    out->type = buf[4];
    switch (out->type) {
    case SPOOL_REC_WATERMARK:
        if (len != 24) return -1;
        out->salt1 = ws_get_be32(p);
        out->salt2 = ws_get_be32(p + 4);
        out->mx_frame = ws_get_be32(p + 8);
        out->page_size = ws_get_be32(p + 12);
        out->time_ms = (int64_t)ws_get_be64(p + 16);
        if (out->page_size != 0 && !page_size_ok(out->page_size)) return -1;
        break;
    case SPOOL_REC_WAL_BEGIN: {
        if (len != SPOOL_BEGIN_PAYLOAD) return -1;
        wal_hdr h;
        memcpy(out->wal_hdr, p, 32);
        if (wal_hdr_parse(p, &h) != 0) return -1;
        out->salt1 = h.salt1;
        out->salt2 = h.salt2;
        out->page_size = h.page_size;
        out->time_ms = (int64_t)ws_get_be64(p + 32);
        get_dbid(p + 40, &out->dbid);
        break;
    }
    case SPOOL_REC_WAL_END:
        if (len != SPOOL_END_PAYLOAD) return -1;
        get_dbid(p + 24, &out->dbid);
        out->salt1 = ws_get_be32(p);
        out->salt2 = ws_get_be32(p + 4);
        out->mx_frame = ws_get_be32(p + 8);
        out->reason = ws_get_be32(p + 12);
        out->time_ms = (int64_t)ws_get_be64(p + 16);
        if (out->reason < SPOOL_END_RESTART || out->reason > SPOOL_END_LOST) return -1;
        break;
    case SPOOL_REC_FRAMES: {
        if (len < FRAMES_HEAD) return -1;
        out->salt1 = ws_get_be32(p);
        out->salt2 = ws_get_be32(p + 4);
        out->first_frame = ws_get_be32(p + 8);
        out->nframes = ws_get_be32(p + 12);
        out->page_size = ws_get_be32(p + 16);
        if (ws_get_be32(p + 20) != 0) return -1;
        if (!page_size_ok(out->page_size) || out->first_frame == 0 || out->nframes == 0)
            return -1;
        uint64_t want = (uint64_t)out->nframes * (WAL_FRAME_HDR_SIZE + out->page_size);
        if (want != (uint64_t)len - FRAMES_HEAD) return -1;
        if ((uint64_t)out->first_frame + out->nframes - 1 > UINT32_MAX) return -1;
        out->frames = p + FRAMES_HEAD;
        break;
    }
    default:
        return -1;
    }
    return (long)total;
}
