/*
** objfmt.h -- the byte formats of the objects walship puts in the store:
** segments (a run of transactions) and snapshots (a whole database image),
** plus the page hash behind the rolling database checksum.
** docs/FORMAT.md is the specification; this header is its implementation's
** contract. Integers are big-endian. Every decoder here treats its input as
** hostile: lengths are checked before use, memory is bounded, and a bad byte
** gives WALSHIP_ERR_CORRUPT with a sentence saying what was wrong.
**
** Rolling checksum: for a database of N pages,
**     chk = XOR over p in 1..N of XXH3_64(page p bytes, seed = p)
** so a transaction updates it by XOR-ing out each old page hash and XOR-ing
** in the new one, and a restore or replica proves byte equality with the
** primary by comparing one 64-bit number per transaction.
*/
#ifndef WS_OBJFMT_H
#define WS_OBJFMT_H

#include <stddef.h>
#include <stdint.h>

#include "../common/err.h"
#include "../common/util.h"

/* ---- page hash ----------------------------------------------------------- */
uint64_t ws_page_hash(uint32_t pgno, const uint8_t *data, uint32_t page_size);
/* Hash of an all-zero page (a page past the old end that no frame wrote). */
uint64_t ws_zero_page_hash(uint32_t pgno, uint32_t page_size);

int ws_page_size_valid(uint32_t sz);

/* TXIDs and generation ids are below 2^63: readers refuse larger ones (in a
** key or a header) instead of doing arithmetic that could wrap. */
#define WS_TXID_LIMIT ((uint64_t)1 << 63)

/* ---- the shipper's position (recorded in segments and snapshots) ---------- */
/* Where the shipper stood in the primary's WAL and spool when an object was
** cut: restore ignores it; a shipper restarting after a crash resumes from it. */
typedef struct ws_walpos {
    uint32_t salt1, salt2; /* the WAL (its header salts); 0,0 = none */
    uint32_t frame;        /* last frame consumed from it (0 = none) */
    uint32_t ck1, ck2;     /* running WAL checksum after that frame */
    uint32_t flags;        /* WS_WALPOS_* */
    uint32_t page_size;
    uint64_t log_seq;      /* spool position after the last applied record */
    uint64_t log_off;
} ws_walpos;
#define WS_WALPOS_BIGEND 1u /* the WAL's checksums read big-endian words */
#define WS_WALPOS_ENDED 2u  /* the WAL has ended (restart/truncate/delete seen) */
#define WS_WALPOS_SIZE 48

void ws_walpos_encode(uint8_t *buf, const ws_walpos *p);
void ws_walpos_decode(const uint8_t *buf, ws_walpos *p);

/* ---- segments -------------------------------------------------------------- */
#define SEG_MAGIC "WALSHSEG"
#define SEG_VERSION 1
#define SEG_HEADER_SIZE 160
#define SEG_TRAILER_SIZE 24
#define SEG_TRAILER_MAGIC "WSEGEND"

typedef struct seg_header {
    uint32_t page_size;
    uint32_t ntx;
    uint64_t generation;
    uint64_t first_txid, last_txid;
    int64_t first_commit_ms, last_commit_ms;
    uint64_t pre_chk, post_chk;
    uint32_t db_pages_before, db_pages_after;
    uint64_t body_len; /* uncompressed body bytes */
    ws_walpos resume;
    uint64_t db_id;    /* the database that shipped it (FORMAT.md section 2.3); 0 = unknown */
} seg_header;

/* Builds a segment into a file descriptor: header placeholder, zstd body,
** trailer, then the real header written at offset 0. One transaction at a
** time: begin_tx, page*, commit_tx. Not thread-safe. */
typedef struct seg_writer seg_writer;
int seg_writer_open(int fd, uint32_t page_size, uint64_t db_id, uint64_t generation,
                    uint64_t first_txid, uint64_t pre_chk, uint32_t db_pages_before,
                    int zstd_level, seg_writer **out, wserr *err);
int seg_writer_begin_tx(seg_writer *w, uint64_t txid, wserr *err);
int seg_writer_page(seg_writer *w, uint32_t pgno, const uint8_t *data, wserr *err);
int seg_writer_commit_tx(seg_writer *w, uint64_t txid, int64_t commit_ms, uint32_t db_pages,
                         uint32_t npages, uint64_t post_chk, wserr *err);
/* Ends the segment (no transaction may be open); fills *hdr_out with the
** header written. The caller fsyncs and closes fd. */
/* Frees the pooled compressors (kept from closed segments for the next
** ones) that no segment took since the previous call. Call it now and then
** (the shipper's workers: every 10 s). */
void seg_writer_pool_trim(void);
int seg_writer_finish(seg_writer *w, const ws_walpos *resume, seg_header *hdr_out, wserr *err);
/* A durability point for a segment still being written: flushes the
** compressed stream (every transaction so far becomes decodable) and writes
** an "open" header at offset 0 (magic SEG_OPEN_MAGIC, the same fields as the
** final header, with the compressed body length at offset 88). After the
** caller syncs fd, a crash leaves a file seg_recover() can turn into a
** complete segment holding every transaction up to this point. No
** transaction may be open. */
#define SEG_OPEN_MAGIC "WALSHOPN"
int seg_writer_sync_point(seg_writer *w, const ws_walpos *resume, wserr *err);

/* Bytes written to fd so far (compressed). */
uint64_t seg_writer_bytes(const seg_writer *w);
uint32_t seg_writer_ntx(const seg_writer *w);
void seg_writer_free(seg_writer *w);

/* Parses and checks a segment's header and trailer (obj holds the whole
** object). */
int seg_parse(const uint8_t *obj, size_t n, seg_header *out, wserr *err);
/* Parses and checks only the header (the first SEG_HEADER_SIZE bytes). */
int seg_parse_header(const uint8_t *buf, size_t n, seg_header *out, wserr *err);

/* Walks a segment's body. Events come in order: BEGIN, PAGE..., COMMIT,
** BEGIN, ... then END once the body checksum and every count matched. A
** COMMIT is only delivered after its transaction's structure was checked;
** the caller checks post_chk against its own rolling checksum. */
enum {
    SEG_EV_BEGIN = 1,
    SEG_EV_PAGE = 2,
    SEG_EV_COMMIT = 3,
    SEG_EV_END = 4,
    SEG_EV_HEADER = 5, /* seg_stream only: the header arrived and is well-formed */
    SEG_EV_NEED = 6    /* seg_stream only: feed the next piece */
};
typedef struct seg_event {
    int type;
    uint64_t txid;        /* BEGIN, COMMIT */
    uint32_t pgno;        /* PAGE */
    const uint8_t *page;  /* PAGE: page_size bytes, valid until the next call */
    int64_t commit_ms;    /* COMMIT */
    uint32_t db_pages;    /* COMMIT: database size in pages after the transaction */
    uint32_t npages;      /* COMMIT */
    uint64_t post_chk;    /* COMMIT: rolling checksum after the transaction */
} seg_event;
typedef struct seg_iter seg_iter;
int seg_iter_open(const uint8_t *obj, size_t n, seg_iter **out, wserr *err);
const seg_header *seg_iter_header(const seg_iter *it);
int seg_iter_next(seg_iter *it, seg_event *ev, wserr *err);
void seg_iter_free(seg_iter *it);

/* The same walk over an object that arrives in pieces (a download), with
** memory bounded whatever its size: the caller feeds a piece, then calls
** seg_stream_next until it says SEG_EV_NEED, then feeds the next one (the
** piece must stay valid until then); `last` marks the final piece (n may be
** 0). Events: SEG_EV_HEADER as soon as the first 160 bytes are in and their
** checksum and fields hold (seg_stream_header is valid from then on), then
** BEGIN, PAGE..., COMMIT as each record is decoded, and END only when the
** trailer's compressed length and body XXH3 matched and nothing followed it.
** The first bad byte fails the walk (WALSHIP_ERR_CORRUPT); failures are
** final. The same rules as seg_iter, which is this fed in one piece. */
typedef struct seg_stream seg_stream;
int seg_stream_open(seg_stream **out, wserr *err);
void seg_stream_feed(seg_stream *s, const uint8_t *data, size_t n, int last);
int seg_stream_next(seg_stream *s, seg_event *ev, wserr *err);
/* The header once SEG_EV_HEADER was delivered, NULL before. */
const seg_header *seg_stream_header(const seg_stream *s);
/* Compressed body bytes decoded so far. */
uint64_t seg_stream_compressed(const seg_stream *s);
void seg_stream_free(seg_stream *s);

/* Rebuilds a complete segment from a segment file cut short after a
** durability point (open header + flushed body): writes it into out_fd and
** fills *hdr_out. WALSHIP_ERR_NOTFOUND if the file has no durability point. */
int seg_recover(const uint8_t *file, size_t n, int out_fd, int zstd_level, seg_header *hdr_out,
                wserr *err);

/* Object key of a segment: "generations/<gen>/segments/<first>-<last>.seg". */
void seg_key(char *out, size_t n, uint64_t generation, uint64_t first_txid, uint64_t last_txid);

/* ---- snapshots ---------------------------------------------------------- */
#define SNAP_MAGIC "WALSHSNP"
#define SNAP_VERSION 1
#define SNAP_FILE_HDR_SIZE 32
#define SNAP_FOOTER_SIZE 160
#define SNAP_INDEX_ENTRY_SIZE 40
#define SNAP_CHUNK_BYTES ((uint32_t)4 << 20) /* uncompressed bytes per chunk */
#define SNAP_MAX_CHUNKS (1u << 24)
enum { SNAP_CHUNK_BASE = 1, SNAP_CHUNK_OVERLAY = 2 };

typedef struct snap_footer {
    uint32_t page_size;
    uint32_t db_pages;
    uint64_t generation;
    uint64_t txid;
    int64_t commit_ms;
    uint64_t chk;
    uint64_t index_off;
    uint32_t index_count;
    uint64_t index_xxh;
    ws_walpos resume;
    uint64_t db_id; /* the database that shipped it (FORMAT.md section 2.3); 0 = unknown */
} snap_footer;

typedef struct snap_chunk {
    uint32_t kind;       /* SNAP_CHUNK_BASE: raw pages; OVERLAY: (u32 pgno, page) records */
    uint32_t first_pgno; /* BASE: first page */
    uint32_t count;      /* BASE: pages; OVERLAY: records */
    uint32_t clen;       /* compressed bytes */
    uint64_t offset;     /* of the compressed bytes in the object */
    uint32_t ulen;       /* uncompressed bytes */
    uint64_t xxh;        /* XXH3-64 of the uncompressed bytes */
} snap_chunk;

/* Writes a snapshot into a file descriptor, base chunks first (in page
** order), then overlay records, then the index and footer. Not thread-safe. */
typedef struct snap_writer snap_writer;
int snap_writer_open(int fd, uint32_t page_size, uint64_t db_id, uint64_t generation,
                     int zstd_level, snap_writer **out, wserr *err);
/* One base chunk of npages consecutive pages from first_pgno. */
int snap_writer_base(snap_writer *w, uint32_t first_pgno, uint32_t npages, const uint8_t *pages,
                     wserr *err);
/* One overlay page (a later version that replaces the base page). */
int snap_writer_overlay(snap_writer *w, uint32_t pgno, const uint8_t *page, wserr *err);
int snap_writer_finish(snap_writer *w, uint64_t txid, int64_t commit_ms, uint32_t db_pages,
                       uint64_t chk, const ws_walpos *resume, wserr *err);
uint64_t snap_writer_bytes(const snap_writer *w);
void snap_writer_free(snap_writer *w);

/* Parses a footer from the last SNAP_FOOTER_SIZE bytes of an object of
** obj_size bytes. */
int snap_parse_footer(const uint8_t *buf, size_t n, uint64_t obj_size, snap_footer *out,
                      wserr *err);
/* Parses the index (index_count entries at index_off) into a malloc'd array
** that the caller frees; checks every entry against the object size. */
int snap_parse_index(const uint8_t *buf, size_t n, const snap_footer *f, uint64_t obj_size,
                     snap_chunk **out, wserr *err);
/* Decompresses one chunk into out (resized to ulen) and checks its hash and
** shape (BASE: count*page_size bytes; OVERLAY: count records). */
int snap_decode_chunk(const snap_chunk *c, const uint8_t *cbuf, size_t clen, uint32_t page_size,
                      wsbuf *out, wserr *err);

void snap_key(char *out, size_t n, uint64_t generation, uint64_t txid);

/* ---- names ---------------------------------------------------------------- */
/* Parses "generations/<16 hex>/..." keys. Each returns 0 on a match. */
int objkey_parse_segment(const char *key, uint64_t *gen, uint64_t *first, uint64_t *last);
int objkey_parse_snapshot(const char *key, uint64_t *gen, uint64_t *txid);

/* What a key under "generations/" is, for readers that must not trust names. */
enum {
    OBJKEY_OTHER = 0,    /* not a walship object name */
    OBJKEY_SEGMENT = 1,  /* a.first..a.last */
    OBJKEY_SNAPSHOT = 2, /* a.first == a.last == its TXID */
    OBJKEY_MARKER = 3,   /* generations/<gen>/owner */
    OBJKEY_BAD = 4       /* named like an object, but impossible: see why */
};
typedef struct objkey {
    int kind;
    uint64_t gen, first, last;
    size_t name_len; /* OBJKEY_BAD for "<object key>/...": the object key's length, else 0 */
    const char *why; /* OBJKEY_BAD: a phrase ("its TXID is 0") */
} objkey;
/* Classifies key. Segment and snapshot names are BAD when a TXID is 0, the
** first is past the last, or a TXID or the generation is 0 or at least
** WS_TXID_LIMIT; a key that continues an object name with '/' (a directory
** of that name on file://) is BAD with name_len set. */
void objkey_classify(const char *key, objkey *out);

#endif
