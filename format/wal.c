/*
** wal.c -- parsing, checksumming and sealing of WAL frames, and reading
** the wal-index header. See wal.h for the layouts.
*/
#include "wal.h"

#include <string.h>

#include "../common/util.h"

static int host_is_big_endian(void) {
    const uint16_t one = 1;
    return *(const uint8_t *)&one == 0;
}

void wal_cksum_update(wal_cksum *c, const uint8_t *p, size_t n) {
    uint32_t s1 = c->s1, s2 = c->s2;
    if (c->big_endian == host_is_big_endian()) {
        /* Words in host order: plain loads (memcpy keeps them aligned-safe). */
        for (size_t i = 0; i + 8 <= n; i += 8) {
            uint32_t w[2];
            memcpy(w, p + i, 8);
            s1 += w[0] + s2;
            s2 += w[1] + s1;
        }
    } else {
        for (size_t i = 0; i + 8 <= n; i += 8) {
            uint32_t w[2];
            memcpy(w, p + i, 8);
            s1 += __builtin_bswap32(w[0]) + s2;
            s2 += __builtin_bswap32(w[1]) + s1;
        }
    }
    c->s1 = s1;
    c->s2 = s2;
}

static int page_size_valid(uint32_t sz) {
    return sz >= 512 && sz <= 65536 && (sz & (sz - 1)) == 0;
}

int wal_hdr_parse(const uint8_t *buf, wal_hdr *out) {
    wal_hdr h;
    h.magic = ws_get_be32(buf);
    h.version = ws_get_be32(buf + 4);
    h.page_size = ws_get_be32(buf + 8);
    h.ckpt_seq = ws_get_be32(buf + 12);
    h.salt1 = ws_get_be32(buf + 16);
    h.salt2 = ws_get_be32(buf + 20);
    h.ck1 = ws_get_be32(buf + 24);
    h.ck2 = ws_get_be32(buf + 28);
    if ((h.magic & 0xfffffffeu) != WAL_MAGIC_LE) return -1;
    if (h.version != WAL_FORMAT_VERSION) return -1;
    if (!page_size_valid(h.page_size)) return -1;
    wal_cksum c = {.big_endian = (int)(h.magic & 1), .s1 = 0, .s2 = 0};
    wal_cksum_update(&c, buf, 24);
    if (c.s1 != h.ck1 || c.s2 != h.ck2) return -1;
    *out = h;
    return 0;
}

void wal_hdr_encode(uint8_t *buf, uint32_t magic, uint32_t page_size, uint32_t ckpt_seq,
                    uint32_t salt1, uint32_t salt2, wal_hdr *out) {
    ws_put_be32(buf, magic);
    ws_put_be32(buf + 4, WAL_FORMAT_VERSION);
    ws_put_be32(buf + 8, page_size);
    ws_put_be32(buf + 12, ckpt_seq);
    ws_put_be32(buf + 16, salt1);
    ws_put_be32(buf + 20, salt2);
    wal_cksum c = {.big_endian = (int)(magic & 1), .s1 = 0, .s2 = 0};
    wal_cksum_update(&c, buf, 24);
    ws_put_be32(buf + 24, c.s1);
    ws_put_be32(buf + 28, c.s2);
    if (out) wal_hdr_parse(buf, out);
}

void wal_frame_hdr_parse(const uint8_t *buf, wal_frame_hdr *out) {
    out->pgno = ws_get_be32(buf);
    out->commit_size = ws_get_be32(buf + 4);
    out->salt1 = ws_get_be32(buf + 8);
    out->salt2 = ws_get_be32(buf + 12);
    out->ck1 = ws_get_be32(buf + 16);
    out->ck2 = ws_get_be32(buf + 20);
}

int wal_frame_check(const wal_hdr *h, wal_cksum *c, const uint8_t *frame, uint32_t page_size) {
    wal_frame_hdr f;
    wal_frame_hdr_parse(frame, &f);
    if (f.pgno == 0 || f.salt1 != h->salt1 || f.salt2 != h->salt2) return -1;
    wal_cksum next = *c;
    wal_cksum_update(&next, frame, 8);
    wal_cksum_update(&next, frame + WAL_FRAME_HDR_SIZE, page_size);
    if (next.s1 != f.ck1 || next.s2 != f.ck2) return -1;
    *c = next;
    return 0;
}

void wal_frame_seal(const wal_hdr *h, wal_cksum *c, uint8_t *frame, uint32_t pgno,
                    uint32_t commit_size, uint32_t page_size) {
    ws_put_be32(frame, pgno);
    ws_put_be32(frame + 4, commit_size);
    ws_put_be32(frame + 8, h->salt1);
    ws_put_be32(frame + 12, h->salt2);
    wal_cksum_update(c, frame, 8);
    wal_cksum_update(c, frame + WAL_FRAME_HDR_SIZE, page_size);
    ws_put_be32(frame + 16, c->s1);
    ws_put_be32(frame + 20, c->s2);
}

/* The wal-index header checksum always uses native word order. */
static void walidx_cksum_raw(const uint8_t *p, uint32_t out[2]) {
    wal_cksum c = {.big_endian = host_is_big_endian(), .s1 = 0, .s2 = 0};
    wal_cksum_update(&c, p, 40);
    out[0] = c.s1;
    out[1] = c.s2;
}

int walidx_hdr_read(const volatile void *shm, walidx_hdr *out) {
    walidx_hdr h1, h2;
    const volatile uint8_t *p = shm;
    /* Same order as SQLite's walIndexTryHdr: copy 0 first, barrier, copy 1.
    ** A writer stores copy 1 first and copy 0 last, so equal copies are a
    ** complete header. */
    uint8_t a[WALIDX_HDR_SIZE], b[WALIDX_HDR_SIZE];
    for (int i = 0; i < WALIDX_HDR_SIZE; i++) a[i] = p[i];
    __sync_synchronize(); /* what SQLite's walShmBarrier does between the copies */
    for (int i = 0; i < WALIDX_HDR_SIZE; i++) b[i] = p[WALIDX_HDR_SIZE + i];
    if (memcmp(a, b, WALIDX_HDR_SIZE) != 0) return -1;
    memcpy(&h1, a, sizeof h1);
    memcpy(&h2, b, sizeof h2);
    (void)h2;
    if (h1.is_init == 0) return -1;
    uint32_t ck[2];
    walidx_cksum_raw(a, ck);
    if (ck[0] != h1.cksum[0] || ck[1] != h1.cksum[1]) return -1;
    *out = h1;
    return 0;
}

void walidx_hdr_cksum(walidx_hdr *h) {
    uint8_t raw[WALIDX_HDR_SIZE];
    memcpy(raw, h, sizeof raw);
    walidx_cksum_raw(raw, h->cksum);
}

uint32_t walidx_salt1(const walidx_hdr *h) { return ws_get_be32(h->salt); }
uint32_t walidx_salt2(const walidx_hdr *h) { return ws_get_be32(h->salt + 4); }

uint32_t sqlite_hdr_page_size(const uint8_t *page1) {
    static const char magic[16] = "SQLite format 3";
    if (memcmp(page1, magic, 16) != 0) return 0;
    uint32_t sz = (uint32_t)page1[16] << 8 | page1[17];
    if (sz == 1) sz = 65536;
    return page_size_valid(sz) ? sz : 0;
}
