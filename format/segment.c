/*
** segment.c -- writing and reading segment objects.
**
** A segment is a fixed header, one zstd frame holding the body, and a
** trailer (see docs/FORMAT.md):
**
**   header (160 bytes)   magic, version, page size, generation, TXID range,
**                        commit times, rolling checksums before/after, sizes,
**                        the shipper's position, XXH3 of the header
**   body (zstd)          records: BEGIN(txid) PAGE(pgno, data)... COMMIT(...)
**   trailer (24 bytes)   XXH3 of the uncompressed body, compressed length,
**                        "WSEGEND\0"
**
** The writer streams into a file descriptor with bounded memory; the header is
** written last, at offset 0. The reader decompresses in a bounded window and
** checks every structural rule as it goes, so a hostile object can make it
** fail but never read out of bounds or allocate without limit.
*/
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zstd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "objfmt.h"

enum { REC_BEGIN = 1, REC_PAGE = 2, REC_COMMIT = 3 };
#define REC_BEGIN_SIZE 9
#define REC_PAGE_HEAD 5
#define REC_COMMIT_SIZE 33
#define MAX_PGNO 0x7fffffffu

/* ---- writer --------------------------------------------------------------- */
struct seg_writer {
    int fd;
    ZSTD_CCtx *cctx;
    uint8_t *out;
    size_t outcap;
    uint64_t compressed; /* body bytes written to fd */
    XXH3_state_t *xxh;
    seg_header h;
    int in_tx;
    uint64_t cur_txid;
    uint32_t cur_npages;
    uint64_t next_txid;
};

static int w_flush_out(seg_writer *w, size_t n, wserr *err) {
    if (n == 0) return 0;
    if (ws_write_all(w->fd, w->out, n) != 0)
        return wserr_errno(err, wserr_from_errno(errno), errno, "write segment");
    w->compressed += n;
    return 0;
}

/* Feeds uncompressed body bytes through the compressor. */
static int w_feed(seg_writer *w, const void *p, size_t n, ZSTD_EndDirective mode, wserr *err) {
    XXH3_64bits_update(w->xxh, p, n);
    w->h.body_len += n;
    ZSTD_inBuffer in = {p, n, 0};
    for (;;) {
        ZSTD_outBuffer o = {w->out, w->outcap, 0};
        size_t r = ZSTD_compressStream2(w->cctx, &o, &in, mode);
        if (ZSTD_isError(r))
            return wserr_set(err, WALSHIP_ERR_IO, "zstd compression failed: %s", ZSTD_getErrorName(r));
        int rc = w_flush_out(w, o.pos, err);
        if (rc) return rc;
        if (mode == ZSTD_e_end ? r == 0 : in.pos == in.size) break;
    }
    return 0;
}

/* Compressors of closed segments, kept for the next ones: a process with
** many databases taking a trickle of writes opens and closes a segment per
** commit, and a compressor's ~1.8 MiB allocated and freed each time leaves
** the heap fragmented (measured: RSS three times the memory in use). At
** most CCTX_POOL_MAX wait here; the rest are freed, and so are those no
** segment took between two calls of seg_writer_pool_trim (idle costs
** nothing). */
#define CCTX_POOL_MAX 64
static pthread_mutex_t cctx_pool_mu = PTHREAD_MUTEX_INITIALIZER;
static ZSTD_CCtx *cctx_pool[CCTX_POOL_MAX]; /* a stack: taken from the top */
static int cctx_pool_n;
static int cctx_pool_low; /* the smallest cctx_pool_n since the last trim */

static ZSTD_CCtx *cctx_take(void) {
    ZSTD_CCtx *c = NULL;
    pthread_mutex_lock(&cctx_pool_mu);
    if (cctx_pool_n > 0) c = cctx_pool[--cctx_pool_n];
    if (cctx_pool_n < cctx_pool_low) cctx_pool_low = cctx_pool_n;
    pthread_mutex_unlock(&cctx_pool_mu);
    if (c) {
        ZSTD_CCtx_reset(c, ZSTD_reset_session_and_parameters);
        return c;
    }
    return ZSTD_createCCtx();
}

static void cctx_give(ZSTD_CCtx *c) {
    if (c == NULL) return;
    pthread_mutex_lock(&cctx_pool_mu);
    if (cctx_pool_n < CCTX_POOL_MAX) {
        cctx_pool[cctx_pool_n++] = c;
        c = NULL;
    }
    pthread_mutex_unlock(&cctx_pool_mu);
    ZSTD_freeCCtx(c);
}

void seg_writer_pool_trim(void) {
    ZSTD_CCtx *drop[CCTX_POOL_MAX];
    pthread_mutex_lock(&cctx_pool_mu);
    /* The bottom cctx_pool_low entries were not taken since the last trim. */
    int k = cctx_pool_low;
    memcpy(drop, cctx_pool, (size_t)k * sizeof *drop);
    memmove(cctx_pool, cctx_pool + k, (size_t)(cctx_pool_n - k) * sizeof *cctx_pool);
    cctx_pool_n -= k;
    cctx_pool_low = cctx_pool_n;
    pthread_mutex_unlock(&cctx_pool_mu);
    for (int i = 0; i < k; i++) ZSTD_freeCCtx(drop[i]);
}

int seg_writer_open(int fd, uint32_t page_size, uint64_t db_id, uint64_t generation,
                    uint64_t first_txid, uint64_t pre_chk, uint32_t db_pages_before,
                    int zstd_level, seg_writer **out, wserr *err) {
    *out = NULL;
    if (!ws_page_size_valid(page_size))
        return wserr_set(err, WALSHIP_ERR_INVALID, "invalid page size %u", page_size);
    seg_writer *w = calloc(1, sizeof *w);
    if (w == NULL) return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
    w->fd = fd;
    w->outcap = ZSTD_CStreamOutSize();
    w->out = malloc(w->outcap);
    w->cctx = cctx_take();
    w->xxh = XXH3_createState();
    if (w->out == NULL || w->cctx == NULL || w->xxh == NULL) {
        seg_writer_free(w);
        return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
    }
    XXH3_64bits_reset(w->xxh);
    ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_compressionLevel, zstd_level);
    ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_checksumFlag, 1);
    /* A 256 KiB window: database pages compress as well as in level 3's
    ** 2 MiB (within 0.1% on a text table and on random blobs), and an open
    ** segment holds ~1.8 MiB of compressor instead of ~3.5. A process with
    ** thousands of databases taking a trickle of writes has one open per
    ** database written in the last ship interval. */
    ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_windowLog, 18);
    w->h.page_size = page_size;
    w->h.generation = generation;
    w->h.db_id = db_id;
    w->h.first_txid = first_txid;
    w->h.pre_chk = pre_chk;
    w->h.post_chk = pre_chk;
    w->h.db_pages_before = db_pages_before;
    w->h.db_pages_after = db_pages_before;
    w->next_txid = first_txid;
    uint8_t zero[SEG_HEADER_SIZE] = {0};
    if (ws_pwrite_all(fd, zero, sizeof zero, 0) != 0 || lseek(fd, SEG_HEADER_SIZE, SEEK_SET) < 0) {
        int e = errno;
        seg_writer_free(w);
        return wserr_errno(err, wserr_from_errno(e), e, "write segment header");
    }
    *out = w;
    return 0;
}

int seg_writer_begin_tx(seg_writer *w, uint64_t txid, wserr *err) {
    if (w->in_tx || txid != w->next_txid)
        return wserr_set(err, WALSHIP_ERR_STATE, "segment: transaction %llu out of order",
                         (unsigned long long)txid);
    uint8_t rec[REC_BEGIN_SIZE];
    rec[0] = REC_BEGIN;
    ws_put_be64(rec + 1, txid);
    w->in_tx = 1;
    w->cur_txid = txid;
    w->cur_npages = 0;
    return w_feed(w, rec, sizeof rec, ZSTD_e_continue, err);
}

int seg_writer_page(seg_writer *w, uint32_t pgno, const uint8_t *data, wserr *err) {
    if (!w->in_tx || pgno == 0 || pgno > MAX_PGNO)
        return wserr_set(err, WALSHIP_ERR_STATE, "segment: page %u outside a transaction", pgno);
    uint8_t rec[REC_PAGE_HEAD];
    rec[0] = REC_PAGE;
    ws_put_be32(rec + 1, pgno);
    int rc = w_feed(w, rec, sizeof rec, ZSTD_e_continue, err);
    if (rc) return rc;
    w->cur_npages++;
    return w_feed(w, data, w->h.page_size, ZSTD_e_continue, err);
}

int seg_writer_commit_tx(seg_writer *w, uint64_t txid, int64_t commit_ms, uint32_t db_pages,
                         uint32_t npages, uint64_t post_chk, wserr *err) {
    if (!w->in_tx || txid != w->cur_txid || npages != w->cur_npages || db_pages == 0)
        return wserr_set(err, WALSHIP_ERR_STATE, "segment: bad commit of transaction %llu",
                         (unsigned long long)txid);
    uint8_t rec[REC_COMMIT_SIZE];
    rec[0] = REC_COMMIT;
    ws_put_be64(rec + 1, txid);
    ws_put_be64(rec + 9, (uint64_t)commit_ms);
    ws_put_be32(rec + 17, db_pages);
    ws_put_be32(rec + 21, npages);
    ws_put_be64(rec + 25, post_chk);
    int rc = w_feed(w, rec, sizeof rec, ZSTD_e_continue, err);
    if (rc) return rc;
    if (w->h.ntx == 0) w->h.first_commit_ms = commit_ms;
    w->h.last_commit_ms = commit_ms;
    w->h.last_txid = txid;
    w->h.ntx++;
    w->h.post_chk = post_chk;
    w->h.db_pages_after = db_pages;
    w->in_tx = 0;
    w->next_txid = txid + 1;
    return 0;
}

static void encode_header_magic(uint8_t *b, const seg_header *h, const char *magic) {
    memset(b, 0, SEG_HEADER_SIZE);
    memcpy(b, magic, 8);
    ws_put_be32(b + 8, SEG_VERSION);
    ws_put_be32(b + 12, SEG_HEADER_SIZE);
    ws_put_be32(b + 16, h->page_size);
    ws_put_be32(b + 20, h->ntx);
    ws_put_be64(b + 24, h->generation);
    ws_put_be64(b + 32, h->first_txid);
    ws_put_be64(b + 40, h->last_txid);
    ws_put_be64(b + 48, (uint64_t)h->first_commit_ms);
    ws_put_be64(b + 56, (uint64_t)h->last_commit_ms);
    ws_put_be64(b + 64, h->pre_chk);
    ws_put_be64(b + 72, h->post_chk);
    ws_put_be32(b + 80, h->db_pages_before);
    ws_put_be32(b + 84, h->db_pages_after);
    ws_put_be64(b + 88, h->body_len);
    ws_walpos_encode(b + 96, &h->resume);
    ws_put_be64(b + 144, h->db_id);
    ws_put_be64(b + 152, XXH3_64bits(b, 152));
}

static void encode_header(uint8_t *b, const seg_header *h) { encode_header_magic(b, h, SEG_MAGIC); }

int seg_writer_sync_point(seg_writer *w, const ws_walpos *resume, wserr *err) {
    if (w->in_tx || w->h.ntx == 0)
        return wserr_set(err, WALSHIP_ERR_STATE, "segment: sync point %s",
                         w->in_tx ? "inside a transaction" : "with no transactions");
    ZSTD_inBuffer in = {NULL, 0, 0};
    for (;;) {
        ZSTD_outBuffer o = {w->out, w->outcap, 0};
        size_t r = ZSTD_compressStream2(w->cctx, &o, &in, ZSTD_e_flush);
        if (ZSTD_isError(r))
            return wserr_set(err, WALSHIP_ERR_IO, "zstd compression failed: %s", ZSTD_getErrorName(r));
        int rc = w_flush_out(w, o.pos, err);
        if (rc) return rc;
        if (r == 0) break;
    }
    seg_header h = w->h;
    h.body_len = w->compressed; /* the open header records the flushed length */
    h.resume = *resume;
    uint8_t hdr[SEG_HEADER_SIZE];
    encode_header_magic(hdr, &h, SEG_OPEN_MAGIC);
    if (ws_pwrite_all(w->fd, hdr, sizeof hdr, 0) != 0)
        return wserr_errno(err, wserr_from_errno(errno), errno, "write segment header");
    return 0;
}

int seg_writer_finish(seg_writer *w, const ws_walpos *resume, seg_header *hdr_out, wserr *err) {
    if (w->in_tx || w->h.ntx == 0)
        return wserr_set(err, WALSHIP_ERR_STATE, "segment: finish with %s",
                         w->in_tx ? "an open transaction" : "no transactions");
    /* Account the final flush without hashing extra bytes. */
    ZSTD_inBuffer in = {NULL, 0, 0};
    for (;;) {
        ZSTD_outBuffer o = {w->out, w->outcap, 0};
        size_t r = ZSTD_compressStream2(w->cctx, &o, &in, ZSTD_e_end);
        if (ZSTD_isError(r))
            return wserr_set(err, WALSHIP_ERR_IO, "zstd compression failed: %s", ZSTD_getErrorName(r));
        int rc = w_flush_out(w, o.pos, err);
        if (rc) return rc;
        if (r == 0) break;
    }
    uint8_t trailer[SEG_TRAILER_SIZE];
    ws_put_be64(trailer, XXH3_64bits_digest(w->xxh));
    ws_put_be64(trailer + 8, w->compressed);
    memcpy(trailer + 16, SEG_TRAILER_MAGIC, 8);
    if (ws_write_all(w->fd, trailer, sizeof trailer) != 0)
        return wserr_errno(err, wserr_from_errno(errno), errno, "write segment trailer");
    w->h.resume = *resume;
    uint8_t hdr[SEG_HEADER_SIZE];
    encode_header(hdr, &w->h);
    if (ws_pwrite_all(w->fd, hdr, sizeof hdr, 0) != 0)
        return wserr_errno(err, wserr_from_errno(errno), errno, "write segment header");
    if (hdr_out) *hdr_out = w->h;
    return 0;
}

uint64_t seg_writer_bytes(const seg_writer *w) {
    return SEG_HEADER_SIZE + w->compressed + SEG_TRAILER_SIZE;
}

uint32_t seg_writer_ntx(const seg_writer *w) { return w->h.ntx; }

void seg_writer_free(seg_writer *w) {
    if (w == NULL) return;
    cctx_give(w->cctx);
    XXH3_freeState(w->xxh);
    free(w->out);
    free(w);
}

/* ---- reader --------------------------------------------------------------- */
int seg_parse(const uint8_t *obj, size_t n, seg_header *h, wserr *err) {
    if (n < SEG_HEADER_SIZE + SEG_TRAILER_SIZE)
        return wserr_set(err, WALSHIP_ERR_CORRUPT, "segment is %zu bytes, too short", n);
    int rc = seg_parse_header(obj, n, h, err);
    if (rc) return rc;
    const uint8_t *t = obj + n - SEG_TRAILER_SIZE;
    if (memcmp(t + 16, SEG_TRAILER_MAGIC, 8) != 0)
        return wserr_set(err, WALSHIP_ERR_CORRUPT, "segment trailer missing (truncated object?)");
    if (ws_get_be64(t + 8) != n - SEG_HEADER_SIZE - SEG_TRAILER_SIZE)
        return wserr_set(err, WALSHIP_ERR_CORRUPT, "segment length does not match its trailer");
    return 0;
}

static int parse_header_magic(const uint8_t *obj, size_t n, seg_header *h, const char *magic,
                              wserr *err);

int seg_parse_header(const uint8_t *buf, size_t n, seg_header *h, wserr *err) {
    return parse_header_magic(buf, n, h, SEG_MAGIC, err);
}

static int parse_header_magic(const uint8_t *obj, size_t n, seg_header *h, const char *magic,
                              wserr *err) {
    if (n < SEG_HEADER_SIZE)
        return wserr_set(err, WALSHIP_ERR_CORRUPT, "segment is %zu bytes, too short", n);
    if (memcmp(obj, magic, 8) != 0)
        return wserr_set(err, WALSHIP_ERR_CORRUPT, "not a walship segment (bad magic)");
    if (ws_get_be32(obj + 8) != SEG_VERSION)
        return wserr_set(err, WALSHIP_ERR_CORRUPT,
                         "segment format version %u is not supported (this walship reads %d)",
                         ws_get_be32(obj + 8), SEG_VERSION);
    if (ws_get_be32(obj + 12) != SEG_HEADER_SIZE || ws_get_be64(obj + 152) != XXH3_64bits(obj, 152))
        return wserr_set(err, WALSHIP_ERR_CORRUPT, "segment header checksum mismatch");
    memset(h, 0, sizeof *h);
    h->page_size = ws_get_be32(obj + 16);
    h->ntx = ws_get_be32(obj + 20);
    h->generation = ws_get_be64(obj + 24);
    h->first_txid = ws_get_be64(obj + 32);
    h->last_txid = ws_get_be64(obj + 40);
    h->first_commit_ms = (int64_t)ws_get_be64(obj + 48);
    h->last_commit_ms = (int64_t)ws_get_be64(obj + 56);
    h->pre_chk = ws_get_be64(obj + 64);
    h->post_chk = ws_get_be64(obj + 72);
    h->db_pages_before = ws_get_be32(obj + 80);
    h->db_pages_after = ws_get_be32(obj + 84);
    h->body_len = ws_get_be64(obj + 88);
    ws_walpos_decode(obj + 96, &h->resume);
    h->db_id = ws_get_be64(obj + 144);
    if (!ws_page_size_valid(h->page_size) || h->ntx == 0 || h->first_txid == 0 ||
        h->last_txid < h->first_txid || h->last_txid >= WS_TXID_LIMIT ||
        h->last_txid - h->first_txid + 1 != h->ntx || h->db_pages_after == 0 ||
        h->db_pages_after > MAX_PGNO)
        return wserr_set(err, WALSHIP_ERR_CORRUPT, "segment header has inconsistent fields");
    return 0;
}

/*
** The decoder behind both readers. It takes the object in pieces of any
** size (seg_stream_feed); seg_stream_next turns what it has into events and
** says SEG_EV_NEED when a piece is used up. Phases: the 160-byte header
** (checked the moment it is complete), the body (one zstd frame, decoded
** into a bounded buffer, its records checked one by one, its XXH3 and
** compressed length counted as it goes), the trailer (the bytes after the
** frame's end; 24 of them, and then nothing). The first failure is sticky.
*/
enum { PH_HEADER = 0, PH_BODY = 1, PH_DONE = 2, PH_FAILED = 3 };

struct seg_stream {
    int phase;
    int partial;     /* seg_recover: the body is a flushed prefix without a trailer */
    int want_header; /* deliver SEG_EV_HEADER (the streaming API) */
    int fail_rc;
    uint8_t hdr[SEG_HEADER_SIZE];
    size_t hdr_have;
    seg_header h;
    uint8_t trl[SEG_TRAILER_SIZE];
    size_t trl_have;
    const uint8_t *in; /* the current piece, owned by the caller */
    size_t in_len, in_pos;
    int last; /* nothing follows the current piece */
    ZSTD_DCtx *dctx;
    int frame_done;
    uint64_t clen; /* compressed body bytes taken */
    uint8_t *buf;  /* decompressed bytes [start, end) not yet parsed */
    size_t cap, start, end;
    XXH3_state_t *xxh;
    uint64_t body_seen;
    int in_tx;
    uint64_t cur_txid;
    uint32_t cur_npages;
    uint64_t next_txid;
    uint32_t ntx_seen;
};

struct seg_iter {
    seg_stream *s;
};

/* Decompressed bytes kept at once: the largest record plus a zstd block. */
#define ITER_BUF (256u * 1024u + 65536u + 64u)
/* Frames asking for a bigger window are refused: walship's writers use
** levels 1..19, whose window is at most 8 MiB (log 23). */
#define WINDOW_LOG_MAX 24

/* Marks the walk failed (for good) and records the message; evaluates to
** WALSHIP_ERR_CORRUPT. */
#define stream_fail(s, err, ...)                                                                  \
    ((s)->phase = PH_FAILED, (s)->fail_rc = WALSHIP_ERR_CORRUPT,                                 \
     wserr_set(err, WALSHIP_ERR_CORRUPT, __VA_ARGS__))

/* Starts the body: h is its (already checked) header. */
static void stream_begin_body(seg_stream *s, const seg_header *h) {
    s->h = *h;
    s->next_txid = h->first_txid;
    s->phase = PH_BODY;
}

static seg_stream *stream_new(int partial, int want_header) {
    seg_stream *s = calloc(1, sizeof *s);
    if (s == NULL) return NULL;
    s->partial = partial;
    s->want_header = want_header;
    s->dctx = ZSTD_createDCtx();
    s->cap = ITER_BUF;
    s->buf = malloc(s->cap);
    s->xxh = XXH3_createState();
    if (s->dctx == NULL || s->buf == NULL || s->xxh == NULL) {
        seg_stream_free(s);
        return NULL;
    }
    /* Bound the decoder's window so a hostile frame cannot demand much memory. */
    ZSTD_DCtx_setParameter(s->dctx, ZSTD_d_windowLogMax, WINDOW_LOG_MAX);
    XXH3_64bits_reset(s->xxh);
    return s;
}

int seg_stream_open(seg_stream **out, wserr *err) {
    *out = stream_new(0, 1);
    return *out ? 0 : wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
}

void seg_stream_feed(seg_stream *s, const uint8_t *data, size_t n, int last) {
    s->in = data;
    s->in_len = data ? n : 0;
    s->in_pos = 0;
    s->last = last;
}

const seg_header *seg_stream_header(const seg_stream *s) {
    return s->phase == PH_HEADER ? NULL : &s->h;
}

uint64_t seg_stream_compressed(const seg_stream *s) { return s->clen; }

void seg_stream_free(seg_stream *s) {
    if (s == NULL) return;
    ZSTD_freeDCtx(s->dctx);
    XXH3_freeState(s->xxh);
    free(s->buf);
    free(s);
}

/* Moves input after the end of the zstd frame into the trailer. */
static int take_trailer(seg_stream *s, wserr *err) {
    size_t left = s->in_len - s->in_pos, room = SEG_TRAILER_SIZE - s->trl_have;
    size_t k = left < room ? left : room;
    if (k > 0) memcpy(s->trl + s->trl_have, s->in + s->in_pos, k);
    s->trl_have += k;
    s->in_pos += k;
    if (s->in_pos < s->in_len)
        return stream_fail(s, err, "segment length does not match its trailer (bytes after it)");
    return 0;
}

/* Makes at least k decompressed bytes available at buf[start..end).
** Returns 1 if they are, 0 at the clean end of the body, 2 when the current
** piece is used up, -1 on error. */
static int need(seg_stream *s, size_t k, wserr *err) {
    while (s->end - s->start < k) {
        if (s->start > 0) {
            memmove(s->buf, s->buf + s->start, s->end - s->start);
            s->end -= s->start;
            s->start = 0;
        }
        if (s->frame_done) {
            if (s->end == 0) return 0;
            stream_fail(s, err, "segment body ends inside a record");
            return -1;
        }
        int input_done = s->in_pos == s->in_len;
        if (input_done) {
            if (!s->last) return 2;
            if (!s->partial) {
                stream_fail(s, err, "segment body is truncated");
                return -1;
            }
            /* The flushed prefix is all there is; but zstd may still hold
            ** decoded bytes it had no room for in the last call: those come
            ** out of calls with no input, until one gives nothing. */
        }
        ZSTD_inBuffer in = {s->in, s->in_len, s->in_pos};
        ZSTD_outBuffer o = {s->buf + s->end, s->cap - s->end, 0};
        size_t r = ZSTD_decompressStream(s->dctx, &o, &in);
        if (input_done && !ZSTD_isError(r) && o.pos == 0) {
            s->frame_done = 1;
            continue;
        }
        if (ZSTD_isError(r)) {
            stream_fail(s, err, "segment body does not decompress: %s", ZSTD_getErrorName(r));
            return -1;
        }
        s->clen += in.pos - s->in_pos;
        s->in_pos = in.pos;
        if (o.pos > 0) {
            XXH3_64bits_update(s->xxh, s->buf + s->end, o.pos);
            s->body_seen += o.pos;
            s->end += o.pos;
            if (!s->partial && s->body_seen > s->h.body_len) {
                stream_fail(s, err, "segment body longer than its header says");
                return -1;
            }
        }
        if (r == 0) {
            s->frame_done = 1;
            if (s->partial) {
                if (s->in_pos != s->in_len) {
                    stream_fail(s, err, "bytes after the segment body");
                    return -1;
                }
            } else if (take_trailer(s, err) != 0) {
                return -1;
            }
        }
    }
    return 1;
}

/* The body ended cleanly: checks the counts, then the trailer. Returns 1
** when everything matched (END), 2 when more input is needed, -1. */
static int finish(seg_stream *s, wserr *err) {
    if (s->partial) {
        if (s->in_tx || s->ntx_seen != s->h.ntx) {
            stream_fail(s, err, "recovered segment body is incomplete");
            return -1;
        }
        return 1;
    }
    if (s->in_tx || s->ntx_seen != s->h.ntx || s->body_seen != s->h.body_len) {
        stream_fail(s, err, "segment body is incomplete (%u of %u transactions)",
                 s->ntx_seen, s->h.ntx);
        return -1;
    }
    if (take_trailer(s, err) != 0) return -1;
    if (s->trl_have < SEG_TRAILER_SIZE || !s->last) {
        if (!s->last) return 2;
        stream_fail(s, err, "segment trailer missing (truncated object?)");
        return -1;
    }
    if (memcmp(s->trl + 16, SEG_TRAILER_MAGIC, 8) != 0) {
        stream_fail(s, err, "segment trailer missing (truncated object?)");
        return -1;
    }
    if (ws_get_be64(s->trl + 8) != s->clen) {
        stream_fail(s, err, "segment length does not match its trailer");
        return -1;
    }
    if (XXH3_64bits_digest(s->xxh) != ws_get_be64(s->trl)) {
        stream_fail(s, err, "segment body checksum mismatch");
        return -1;
    }
    return 1;
}

/* The header phase: collects 160 bytes and checks them. 1 when done, 2
** when more input is needed, -1. */
static int take_header(seg_stream *s, wserr *err) {
    size_t left = s->in_len - s->in_pos, room = SEG_HEADER_SIZE - s->hdr_have;
    size_t k = left < room ? left : room;
    if (k > 0) memcpy(s->hdr + s->hdr_have, s->in + s->in_pos, k);
    s->hdr_have += k;
    s->in_pos += k;
    if (s->hdr_have < SEG_HEADER_SIZE) {
        if (!s->last) return 2;
        stream_fail(s, err, "segment is %zu bytes, too short", s->hdr_have);
        return -1;
    }
    seg_header h;
    if (parse_header_magic(s->hdr, sizeof s->hdr, &h, SEG_MAGIC, err) != 0) {
        s->phase = PH_FAILED;
        s->fail_rc = WALSHIP_ERR_CORRUPT;
        return -1;
    }
    stream_begin_body(s, &h);
    return 1;
}

int seg_stream_next(seg_stream *s, seg_event *ev, wserr *err) {
    memset(ev, 0, sizeof *ev);
    if (s->phase == PH_FAILED)
        return wserr_set(err, s->fail_rc, "segment: reading went on after a failure");
    if (s->phase == PH_DONE) {
        if (s->in_pos < s->in_len)
            return stream_fail(s, err, "segment length does not match its trailer (bytes after it)");
        ev->type = SEG_EV_END;
        return 0;
    }
    if (s->phase == PH_HEADER) {
        int r = take_header(s, err);
        if (r < 0) return WALSHIP_ERR_CORRUPT;
        if (r == 2) {
            ev->type = SEG_EV_NEED;
            return 0;
        }
        if (s->want_header) {
            ev->type = SEG_EV_HEADER;
            return 0;
        }
    }
    int r = need(s, 1, err);
    if (r < 0) return WALSHIP_ERR_CORRUPT;
    if (r == 2) {
        ev->type = SEG_EV_NEED;
        return 0;
    }
    if (r == 0) {
        r = finish(s, err);
        if (r < 0) return WALSHIP_ERR_CORRUPT;
        if (r == 2) {
            ev->type = SEG_EV_NEED;
            return 0;
        }
        s->phase = PH_DONE;
        ev->type = SEG_EV_END;
        return 0;
    }
    uint8_t tag = s->buf[s->start];
    switch (tag) {
    case REC_BEGIN:
        if ((r = need(s, REC_BEGIN_SIZE, err)) != 1) goto short_record;
        ev->type = SEG_EV_BEGIN;
        ev->txid = ws_get_be64(s->buf + s->start + 1);
        if (s->in_tx || ev->txid != s->next_txid || ev->txid > s->h.last_txid) {
            return stream_fail(s, err, "segment: transaction %llu out of order",
                     (unsigned long long)ev->txid);
        }
        s->in_tx = 1;
        s->cur_txid = ev->txid;
        s->cur_npages = 0;
        s->start += REC_BEGIN_SIZE;
        return 0;
    case REC_PAGE: {
        size_t sz = REC_PAGE_HEAD + s->h.page_size;
        if ((r = need(s, sz, err)) != 1) goto short_record;
        ev->type = SEG_EV_PAGE;
        ev->pgno = ws_get_be32(s->buf + s->start + 1);
        ev->page = s->buf + s->start + REC_PAGE_HEAD;
        if (!s->in_tx || ev->pgno == 0 || ev->pgno > MAX_PGNO) {
            return stream_fail(s, err, "segment: bad page record (page %u)", ev->pgno);
        }
        s->cur_npages++;
        s->start += sz;
        return 0;
    }
    case REC_COMMIT: {
        if ((r = need(s, REC_COMMIT_SIZE, err)) != 1) goto short_record;
        const uint8_t *p = s->buf + s->start;
        ev->type = SEG_EV_COMMIT;
        ev->txid = ws_get_be64(p + 1);
        ev->commit_ms = (int64_t)ws_get_be64(p + 9);
        ev->db_pages = ws_get_be32(p + 17);
        ev->npages = ws_get_be32(p + 21);
        ev->post_chk = ws_get_be64(p + 25);
        if (!s->in_tx || ev->txid != s->cur_txid || ev->npages != s->cur_npages ||
            ev->db_pages == 0 || ev->db_pages > MAX_PGNO) {
            return stream_fail(s, err, "segment: bad commit record for %llu",
                     (unsigned long long)ev->txid);
        }
        s->in_tx = 0;
        s->next_txid = ev->txid + 1;
        s->ntx_seen++;
        s->start += REC_COMMIT_SIZE;
        return 0;
    }
    default:
        return stream_fail(s, err, "segment: unknown record tag %u", tag);
    }
short_record:
    if (r < 0) return WALSHIP_ERR_CORRUPT;
    if (r == 2) { /* the record continues in the next piece: nothing consumed */
        memset(ev, 0, sizeof *ev);
        ev->type = SEG_EV_NEED;
        return 0;
    }
    return stream_fail(s, err, "segment body ends inside a record");
}

int seg_iter_open(const uint8_t *obj, size_t n, seg_iter **out, wserr *err) {
    *out = NULL;
    seg_header h;
    int rc = seg_parse(obj, n, &h, err);
    if (rc) return rc;
    seg_iter *it = calloc(1, sizeof *it);
    if (it == NULL || (it->s = stream_new(0, 0)) == NULL) {
        free(it);
        return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
    }
    stream_begin_body(it->s, &h);
    seg_stream_feed(it->s, obj + SEG_HEADER_SIZE, n - SEG_HEADER_SIZE, 1);
    *out = it;
    return 0;
}

const seg_header *seg_iter_header(const seg_iter *it) { return &it->s->h; }

int seg_iter_next(seg_iter *it, seg_event *ev, wserr *err) {
    int rc = seg_stream_next(it->s, ev, err);
    if (rc == 0 && ev->type == SEG_EV_NEED) /* everything was fed: cannot happen */
        return stream_fail(it->s, err, "segment body is truncated");
    return rc;
}

void seg_iter_free(seg_iter *it) {
    if (it == NULL) return;
    seg_stream_free(it->s);
    free(it);
}

int seg_recover(const uint8_t *file, size_t n, int out_fd, int zstd_level, seg_header *hdr_out,
                wserr *err) {
    seg_header h;
    if (n < SEG_HEADER_SIZE || memcmp(file, SEG_OPEN_MAGIC, 8) != 0)
        return wserr_set(err, WALSHIP_ERR_NOTFOUND, "no durability point in the segment file");
    int rc = parse_header_magic(file, n, &h, SEG_OPEN_MAGIC, err);
    if (rc) return rc;
    uint64_t clen = h.body_len;
    if (clen > n - SEG_HEADER_SIZE)
        return wserr_set(err, WALSHIP_ERR_CORRUPT, "segment file shorter than its durability point");
    seg_stream *s = stream_new(1, 0);
    if (s == NULL) return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
    stream_begin_body(s, &h);
    seg_stream_feed(s, file + SEG_HEADER_SIZE, (size_t)clen, 1);
    seg_writer *w = NULL;
    rc = seg_writer_open(out_fd, h.page_size, h.db_id, h.generation, h.first_txid, h.pre_chk,
                         h.db_pages_before, zstd_level, &w, err);
    while (rc == 0) {
        seg_event ev;
        rc = seg_stream_next(s, &ev, err);
        if (rc || ev.type == SEG_EV_END) break;
        if (ev.type == SEG_EV_BEGIN)
            rc = seg_writer_begin_tx(w, ev.txid, err);
        else if (ev.type == SEG_EV_PAGE)
            rc = seg_writer_page(w, ev.pgno, ev.page, err);
        else if (ev.type == SEG_EV_COMMIT)
            rc = seg_writer_commit_tx(w, ev.txid, ev.commit_ms, ev.db_pages, ev.npages,
                                      ev.post_chk, err);
        else
            rc = stream_fail(s, err, "recovered segment body is incomplete");
    }
    if (rc == 0 && (seg_writer_ntx(w) != h.ntx || w->h.post_chk != h.post_chk))
        rc = wserr_set(err, WALSHIP_ERR_CORRUPT, "recovered segment does not match its header");
    if (rc == 0) rc = seg_writer_finish(w, &h.resume, hdr_out, err);
    seg_writer_free(w);
    seg_stream_free(s);
    return rc;
}
