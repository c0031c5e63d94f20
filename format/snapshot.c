/*
** snapshot.c -- writing and reading snapshot objects.
**
** A snapshot is a database image at one TXID, built so restore can fetch and
** decompress it in parallel:
**
**   file header (32 bytes)   "WALSHSNP", version, page size, generation
**   chunks                   independent zstd frames; BASE chunks hold runs
**                            of raw pages, OVERLAY chunks hold (pgno, page)
**                            records that replace base pages
**   index                    one 40-byte entry per chunk
**   footer (160 bytes)       TXID, commit time, database size, rolling
**                            checksum, index location and hash, the
**                            shipper's position, XXH3 of the footer
**
** The shipper copies the live database file without locks, so base pages
** can be torn or too new; the overlay carries every page any WAL frame wrote
** between the start of the copy and the snapshot's TXID, which makes the
** final image exact (ARCHITECTURE.md, "Snapshots"). Restore applies base
** chunks, then the overlay in order, then truncates to db_pages, and checks
** the rolling checksum.
*/
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "objfmt.h"

struct snap_writer {
    int fd;
    uint32_t page_size;
    uint64_t generation;
    uint64_t db_id;
    ZSTD_CCtx *cctx;
    int level;
    uint64_t off;
    snap_chunk *chunks;
    size_t n, cap;
    uint8_t *ov;
    size_t ov_len, ov_cap;
    uint32_t ov_count;
    uint32_t ov_max;
    uint8_t *cbuf;
    size_t ccap;
};

static int w_write(snap_writer *w, const void *p, size_t n, wserr *err) {
    if (ws_write_all(w->fd, p, n) != 0)
        return wserr_errno(err, wserr_from_errno(errno), errno, "write snapshot");
    w->off += n;
    return 0;
}

int snap_writer_open(int fd, uint32_t page_size, uint64_t db_id, uint64_t generation,
                     int zstd_level, snap_writer **out, wserr *err) {
    *out = NULL;
    if (!ws_page_size_valid(page_size))
        return wserr_set(err, WALSHIP_ERR_INVALID, "invalid page size %u", page_size);
    snap_writer *w = calloc(1, sizeof *w);
    if (w == NULL) return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
    w->fd = fd;
    w->page_size = page_size;
    w->generation = generation;
    w->db_id = db_id;
    w->level = zstd_level;
    w->ov_max = SNAP_CHUNK_BYTES / (4 + page_size);
    /* The overlay and compression buffers grow to what the chunks need (up
    ** to SNAP_CHUNK_BYTES): a small database's snapshot stays small. */
    w->cctx = ZSTD_createCCtx();
    if (w->cctx == NULL) {
        snap_writer_free(w);
        return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
    }
    uint8_t hdr[SNAP_FILE_HDR_SIZE] = {0};
    memcpy(hdr, SNAP_MAGIC, 8);
    ws_put_be32(hdr + 8, SNAP_VERSION);
    ws_put_be32(hdr + 12, page_size);
    ws_put_be64(hdr + 16, generation);
    ws_put_be64(hdr + 24, db_id);
    int rc = w_write(w, hdr, sizeof hdr, err);
    if (rc) {
        snap_writer_free(w);
        return rc;
    }
    *out = w;
    return 0;
}

static int add_chunk(snap_writer *w, uint32_t kind, uint32_t first, uint32_t count,
                     const uint8_t *data, size_t ulen, wserr *err) {
    if (w->n == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 64;
        snap_chunk *c = realloc(w->chunks, cap * sizeof *c);
        if (c == NULL) return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
        w->chunks = c;
        w->cap = cap;
    }
    size_t bound = ZSTD_compressBound(ulen);
    if (w->ccap < bound) {
        uint8_t *b = realloc(w->cbuf, bound);
        if (b == NULL) return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
        w->cbuf = b;
        w->ccap = bound;
    }
    size_t clen = ZSTD_compressCCtx(w->cctx, w->cbuf, w->ccap, data, ulen, w->level);
    if (ZSTD_isError(clen))
        return wserr_set(err, WALSHIP_ERR_IO, "zstd compression failed: %s", ZSTD_getErrorName(clen));
    snap_chunk *c = &w->chunks[w->n];
    c->kind = kind;
    c->first_pgno = first;
    c->count = count;
    c->clen = (uint32_t)clen;
    c->offset = w->off;
    c->ulen = (uint32_t)ulen;
    c->xxh = XXH3_64bits(data, ulen);
    int rc = w_write(w, w->cbuf, clen, err);
    if (rc) return rc;
    w->n++;
    return 0;
}

int snap_writer_base(snap_writer *w, uint32_t first_pgno, uint32_t npages, const uint8_t *pages,
                     wserr *err) {
    if (npages == 0 || first_pgno == 0 || (uint64_t)npages * w->page_size > SNAP_CHUNK_BYTES)
        return wserr_set(err, WALSHIP_ERR_INVALID, "snapshot: bad base chunk");
    return add_chunk(w, SNAP_CHUNK_BASE, first_pgno, npages, pages,
                     (size_t)npages * w->page_size, err);
}

static int flush_overlay(snap_writer *w, wserr *err) {
    if (w->ov_count == 0) return 0;
    int rc = add_chunk(w, SNAP_CHUNK_OVERLAY, 0, w->ov_count, w->ov, w->ov_len, err);
    w->ov_len = 0;
    w->ov_count = 0;
    return rc;
}

int snap_writer_overlay(snap_writer *w, uint32_t pgno, const uint8_t *page, wserr *err) {
    if (pgno == 0) return wserr_set(err, WALSHIP_ERR_INVALID, "snapshot: overlay page 0");
    size_t need = w->ov_len + 4 + (size_t)w->page_size;
    if (w->ov_cap < need) {
        size_t cap = w->ov_cap ? w->ov_cap * 2 : (size_t)64 << 10;
        while (cap < need) cap *= 2;
        if (cap > SNAP_CHUNK_BYTES) cap = SNAP_CHUNK_BYTES;
        uint8_t *b = realloc(w->ov, cap);
        if (b == NULL) return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
        w->ov = b;
        w->ov_cap = cap;
    }
    ws_put_be32(w->ov + w->ov_len, pgno);
    memcpy(w->ov + w->ov_len + 4, page, w->page_size);
    w->ov_len += 4 + (size_t)w->page_size;
    if (++w->ov_count == w->ov_max) return flush_overlay(w, err);
    return 0;
}

int snap_writer_finish(snap_writer *w, uint64_t txid, int64_t commit_ms, uint32_t db_pages,
                       uint64_t chk, const ws_walpos *resume, wserr *err) {
    int rc = flush_overlay(w, err);
    if (rc) return rc;
    if (w->n > SNAP_MAX_CHUNKS) return wserr_set(err, WALSHIP_ERR_INVALID, "snapshot too large");
    size_t ilen = w->n * SNAP_INDEX_ENTRY_SIZE;
    uint8_t *idx = malloc(ilen ? ilen : 1);
    if (idx == NULL) return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < w->n; i++) {
        uint8_t *e = idx + i * SNAP_INDEX_ENTRY_SIZE;
        const snap_chunk *c = &w->chunks[i];
        ws_put_be32(e, c->kind);
        ws_put_be32(e + 4, c->first_pgno);
        ws_put_be32(e + 8, c->count);
        ws_put_be32(e + 12, c->clen);
        ws_put_be64(e + 16, c->offset);
        ws_put_be32(e + 24, c->ulen);
        ws_put_be32(e + 28, 0);
        ws_put_be64(e + 32, c->xxh);
    }
    uint64_t index_off = w->off;
    uint64_t index_xxh = XXH3_64bits(idx, ilen);
    rc = w_write(w, idx, ilen, err);
    free(idx);
    if (rc) return rc;
    uint8_t f[SNAP_FOOTER_SIZE] = {0};
    memcpy(f, SNAP_MAGIC, 8);
    ws_put_be32(f + 8, SNAP_VERSION);
    ws_put_be32(f + 12, SNAP_FOOTER_SIZE);
    ws_put_be32(f + 16, w->page_size);
    ws_put_be32(f + 20, db_pages);
    ws_put_be64(f + 24, w->generation);
    ws_put_be64(f + 32, txid);
    ws_put_be64(f + 40, (uint64_t)commit_ms);
    ws_put_be64(f + 48, chk);
    ws_put_be64(f + 56, index_off);
    ws_put_be32(f + 64, (uint32_t)w->n);
    ws_put_be64(f + 72, index_xxh);
    ws_walpos_encode(f + 80, resume);
    ws_put_be64(f + 128, w->db_id);
    ws_put_be64(f + 152, XXH3_64bits(f, 152));
    return w_write(w, f, sizeof f, err);
}

uint64_t snap_writer_bytes(const snap_writer *w) { return w->off; }

void snap_writer_free(snap_writer *w) {
    if (w == NULL) return;
    ZSTD_freeCCtx(w->cctx);
    free(w->chunks);
    free(w->ov);
    free(w->cbuf);
    free(w);
}

int snap_parse_footer(const uint8_t *b, size_t n, uint64_t obj_size, snap_footer *f, wserr *err) {
    if (n < SNAP_FOOTER_SIZE || obj_size < SNAP_FILE_HDR_SIZE + SNAP_FOOTER_SIZE)
        return wserr_set(err, WALSHIP_ERR_CORRUPT, "snapshot is too short (%llu bytes)",
                         (unsigned long long)obj_size);
    b += n - SNAP_FOOTER_SIZE;
    if (memcmp(b, SNAP_MAGIC, 8) != 0)
        return wserr_set(err, WALSHIP_ERR_CORRUPT, "snapshot footer missing (truncated object?)");
    if (ws_get_be32(b + 8) != SNAP_VERSION)
        return wserr_set(err, WALSHIP_ERR_CORRUPT,
                         "snapshot format version %u is not supported (this walship reads %d)",
                         ws_get_be32(b + 8), SNAP_VERSION);
    if (ws_get_be32(b + 12) != SNAP_FOOTER_SIZE || ws_get_be64(b + 152) != XXH3_64bits(b, 152))
        return wserr_set(err, WALSHIP_ERR_CORRUPT, "snapshot footer checksum mismatch");
    memset(f, 0, sizeof *f);
    f->page_size = ws_get_be32(b + 16);
    f->db_pages = ws_get_be32(b + 20);
    f->generation = ws_get_be64(b + 24);
    f->txid = ws_get_be64(b + 32);
    f->commit_ms = (int64_t)ws_get_be64(b + 40);
    f->chk = ws_get_be64(b + 48);
    f->index_off = ws_get_be64(b + 56);
    f->index_count = ws_get_be32(b + 64);
    f->index_xxh = ws_get_be64(b + 72);
    ws_walpos_decode(b + 80, &f->resume);
    f->db_id = ws_get_be64(b + 128);
    uint64_t ilen = (uint64_t)f->index_count * SNAP_INDEX_ENTRY_SIZE;
    if (!ws_page_size_valid(f->page_size) || f->db_pages == 0 || f->db_pages > 0x7fffffffu ||
        f->txid == 0 || f->txid >= WS_TXID_LIMIT || f->index_count > SNAP_MAX_CHUNKS ||
        f->index_off < SNAP_FILE_HDR_SIZE || f->index_off > obj_size - SNAP_FOOTER_SIZE ||
        obj_size - SNAP_FOOTER_SIZE - f->index_off != ilen) /* never wraps */
        return wserr_set(err, WALSHIP_ERR_CORRUPT, "snapshot footer has inconsistent fields");
    return 0;
}

int snap_parse_index(const uint8_t *b, size_t n, const snap_footer *f, uint64_t obj_size,
                     snap_chunk **out, wserr *err) {
    *out = NULL;
    size_t ilen = (size_t)f->index_count * SNAP_INDEX_ENTRY_SIZE;
    if (n != ilen || XXH3_64bits(b, n) != f->index_xxh)
        return wserr_set(err, WALSHIP_ERR_CORRUPT, "snapshot index checksum mismatch");
    snap_chunk *c = calloc(f->index_count ? f->index_count : 1, sizeof *c);
    if (c == NULL) return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
    uint64_t next_off = SNAP_FILE_HDR_SIZE;
    uint32_t next_pgno = 1;
    int seen_overlay = 0;
    for (uint32_t i = 0; i < f->index_count; i++) {
        const uint8_t *e = b + (size_t)i * SNAP_INDEX_ENTRY_SIZE;
        snap_chunk *x = &c[i];
        x->kind = ws_get_be32(e);
        x->first_pgno = ws_get_be32(e + 4);
        x->count = ws_get_be32(e + 8);
        x->clen = ws_get_be32(e + 12);
        x->offset = ws_get_be64(e + 16);
        x->ulen = ws_get_be32(e + 24);
        x->xxh = ws_get_be64(e + 32);
        /* A chunk is at most 4 MiB; compressed, at most zstd's bound for that
        ** (so a download of one never exceeds it). */
        int ok = x->offset == next_off && x->clen > 0 &&
                 x->clen <= ZSTD_compressBound(SNAP_CHUNK_BYTES) && x->ulen <= SNAP_CHUNK_BYTES &&
                 x->offset + x->clen <= f->index_off && x->count > 0 && ws_get_be32(e + 28) == 0;
        if (ok && x->kind == SNAP_CHUNK_BASE) {
            ok = !seen_overlay && x->first_pgno == next_pgno &&
                 (uint64_t)x->count * f->page_size == x->ulen &&
                 (uint64_t)x->first_pgno + x->count - 1 <= 0x7fffffffu;
            next_pgno = x->first_pgno + x->count;
        } else if (ok && x->kind == SNAP_CHUNK_OVERLAY) {
            seen_overlay = 1;
            ok = x->first_pgno == 0 && (uint64_t)x->count * (4 + f->page_size) == x->ulen;
        } else {
            ok = 0;
        }
        if (!ok) {
            free(c);
            return wserr_set(err, WALSHIP_ERR_CORRUPT, "snapshot index entry %u is invalid", i);
        }
        next_off = x->offset + x->clen;
    }
    if (next_off != f->index_off) {
        free(c);
        return wserr_set(err, WALSHIP_ERR_CORRUPT, "snapshot chunks do not cover the object");
    }
    (void)obj_size;
    *out = c;
    return 0;
}

int snap_decode_chunk(const snap_chunk *c, const uint8_t *cbuf, size_t clen, uint32_t page_size,
                      wsbuf *out, wserr *err) {
    if (clen != c->clen)
        return wserr_set(err, WALSHIP_ERR_CORRUPT, "snapshot chunk has %zu bytes, expected %u",
                         clen, c->clen);
    unsigned long long want = ZSTD_getFrameContentSize(cbuf, clen);
    if (want != c->ulen)
        return wserr_set(err, WALSHIP_ERR_CORRUPT, "snapshot chunk size mismatch");
    out->len = 0;
    if (wsbuf_reserve(out, c->ulen ? c->ulen : 1))
        return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
    size_t got = ZSTD_decompress(out->p, c->ulen, cbuf, clen);
    if (ZSTD_isError(got) || got != c->ulen)
        return wserr_set(err, WALSHIP_ERR_CORRUPT, "snapshot chunk does not decompress");
    if (XXH3_64bits(out->p, got) != c->xxh)
        return wserr_set(err, WALSHIP_ERR_CORRUPT, "snapshot chunk checksum mismatch");
    out->len = got;
    if (c->kind == SNAP_CHUNK_OVERLAY) {
        for (uint32_t i = 0; i < c->count; i++) {
            uint32_t pg = ws_get_be32(out->p + (size_t)i * (4 + page_size));
            if (pg == 0 || pg > 0x7fffffffu)
                return wserr_set(err, WALSHIP_ERR_CORRUPT, "snapshot overlay names page %u", pg);
        }
    }
    return 0;
}
