/*
** test_format.c -- the byte formats: round trips, checksums, hostile input,
** and recovery of a segment cut short after a durability point.
**
** ctest-labels: unit
** ctest-timeout: 60
*/
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "format/objfmt.h"
#include "format/rolling.h"
#include "format/spoolrec.h"
#include "format/wal.h"
#include "harness.h"

static int tmpfile_fd(const char *name) {
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", ws_test_tmpdir(), name);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0);
    return fd;
}

static wsbuf read_fd(int fd) {
    wsbuf b = {0};
    struct stat st;
    CHECK(fstat(fd, &st) == 0);
    CHECK_EQ(wsbuf_reserve(&b, (size_t)st.st_size + 1), 0);
    CHECK_EQ(ws_pread_full(fd, b.p, (size_t)st.st_size, 0), st.st_size);
    b.len = (size_t)st.st_size;
    return b;
}

/* A segment written and read back: every event, in order, with checks. */
static void test_segment_roundtrip(void) {
    wserr err = {0};
    int fd = tmpfile_fd("seg");
    seg_writer *w = NULL;
    uint8_t page[1024];
    CHECK_OK(seg_writer_open(fd, 1024, 0x1d, 42, 10, 0xabc, 5, 3, &w, &err), &err);
    for (int t = 0; t < 5; t++) {
        CHECK_OK(seg_writer_begin_tx(w, 10 + t, &err), &err);
        for (int k = 0; k <= t; k++) {
            memset(page, t * 16 + k, sizeof page);
            CHECK_OK(seg_writer_page(w, 1 + k, page, &err), &err);
        }
        CHECK_OK(seg_writer_commit_tx(w, 10 + t, 1000 + t, 5 + t, t + 1, 100 + t, &err), &err);
    }
    /* out of order is refused */
    CHECK_RC(seg_writer_begin_tx(w, 99, &err), WALSHIP_ERR_STATE, &err);
    ws_walpos pos = {7, 8, 9, 1, 2, 0, 1024, 3, 4};
    seg_header h;
    CHECK_OK(seg_writer_finish(w, &pos, &h, &err), &err);
    seg_writer_free(w);
    CHECK_EQ(h.first_txid, 10);
    CHECK_EQ(h.last_txid, 14);
    wsbuf b = read_fd(fd);
    close(fd);
    seg_iter *it = NULL;
    CHECK_OK(seg_iter_open(b.p, b.len, &it, &err), &err);
    CHECK_EQ(seg_iter_header(it)->resume.frame, 9);
    int pages = 0, commits = 0;
    for (;;) {
        seg_event ev;
        CHECK_OK(seg_iter_next(it, &ev, &err), &err);
        if (ev.type == SEG_EV_END) break;
        if (ev.type == SEG_EV_PAGE) pages++;
        if (ev.type == SEG_EV_COMMIT) {
            CHECK_EQ(ev.post_chk, 100 + commits);
            commits++;
        }
    }
    CHECK_EQ(pages, 15);
    CHECK_EQ(commits, 5);
    seg_iter_free(it);
    /* Any single flipped byte is caught somewhere. */
    for (size_t i = 0; i < b.len; i += 7) {
        b.p[i] ^= 0x40;
        int ok = seg_iter_open(b.p, b.len, &it, NULL) == 0;
        int bad = !ok;
        while (ok) {
            seg_event ev;
            if (seg_iter_next(it, &ev, NULL) != 0) {
                bad = 1;
                break;
            }
            if (ev.type == SEG_EV_END) break;
            if (ev.type == SEG_EV_COMMIT && ev.post_chk != 100 + (ev.txid - 10)) bad = 1;
            if (ev.type == SEG_EV_PAGE && ev.page[0] != ev.page[1023]) bad = 1;
        }
        if (ok) seg_iter_free(it);
        if (!bad && i >= 96 && i < 152) bad = 1; /* the shipper's position: readers ignore it */
        if (!bad) ws_test_fail(__FILE__, __LINE__, "flipped byte %zu went unnoticed", i);
        b.p[i] ^= 0x40;
    }
    wsbuf_free(&b);
}

/* Durability points anywhere, in segments of every page size with pages
** that compress well and pages that do not: recovery always gives back
** exactly the transactions up to the point, page for page. (zstd may hold
** decoded bytes back until a call with no more input: a recovery that
** stopped at the end of the input lost them, now and then.) */
static void test_segment_recovery_random(void) {
    static const uint32_t sizes[] = {512, 4096, 65536};
    wserr err = {0};
    for (int round = 0; round < 24; round++) {
        uint32_t psz = sizes[round % 3];
        int ntx = 2 + (int)ws_test_rand_below(12), point = 1 + (int)ws_test_rand_below((uint64_t)ntx);
        int fd = tmpfile_fd("rand");
        seg_writer *w = NULL;
        CHECK_OK(seg_writer_open(fd, psz, 0x1d, 9, 1, 0, 0, 1 + (int)ws_test_rand_below(5), &w, &err),
                 &err);
        uint8_t *page = malloc(psz);
        uint64_t seed = ws_test_rand();
        ws_walpos pos = {1, 2, 0, 0, 0, 0, psz, 1, 16};
        int pages_at_point = 0, pages = 0;
        for (int t = 1; t <= ntx; t++) {
            int np = 1 + (int)ws_test_rand_below(psz > 4096 ? 6 : 40);
            CHECK_OK(seg_writer_begin_tx(w, (uint64_t)t, &err), &err);
            for (int k = 0; k < np; k++) {
                uint64_t x = seed ^ (uint64_t)(pages + 1) * 0x9e3779b97f4a7c15ull;
                for (uint32_t i = 0; i < psz; i++) {
                    x = x * 6364136223846793005ull + 1;
                    page[i] = (pages % 3 == 0) ? (uint8_t)(x >> 56) : (uint8_t)(pages + i / 64);
                }
                CHECK_OK(seg_writer_page(w, (uint32_t)(k + 1), page, &err), &err);
                pages++;
            }
            CHECK_OK(seg_writer_commit_tx(w, (uint64_t)t, t, (uint32_t)np, (uint32_t)np, (uint64_t)t, &err),
                     &err);
            if (t == point) {
                pages_at_point = pages;
                CHECK_OK(seg_writer_sync_point(w, &pos, &err), &err);
            }
        }
        seg_writer_free(w);
        wsbuf b = read_fd(fd);
        close(fd);
        int out = tmpfile_fd("rand-recovered");
        seg_header h;
        CHECK_OK(seg_recover(b.p, b.len, out, 3, &h, &err), &err);
        CHECK_EQ(h.last_txid, point);
        wsbuf r = read_fd(out);
        close(out);
        seg_iter *it = NULL;
        CHECK_OK(seg_iter_open(r.p, r.len, &it, &err), &err);
        int got = 0;
        for (;;) {
            seg_event ev;
            CHECK_OK(seg_iter_next(it, &ev, &err), &err);
            if (ev.type == SEG_EV_END) break;
            if (ev.type != SEG_EV_PAGE) continue;
            uint64_t x = seed ^ (uint64_t)(got + 1) * 0x9e3779b97f4a7c15ull;
            for (uint32_t i = 0; i < psz; i++) {
                x = x * 6364136223846793005ull + 1;
                page[i] = (got % 3 == 0) ? (uint8_t)(x >> 56) : (uint8_t)(got + i / 64);
            }
            CHECK(memcmp(ev.page, page, psz) == 0);
            got++;
        }
        CHECK_EQ(got, pages_at_point);
        seg_iter_free(it);
        free(page);
        wsbuf_free(&b);
        wsbuf_free(&r);
    }
}

/* A crash after a durability point: the file has the open header, the
** flushed body and then garbage; recovery yields exactly the transactions up
** to the point. */
static void test_segment_recovery(void) {
    wserr err = {0};
    int fd = tmpfile_fd("open");
    seg_writer *w = NULL;
    uint8_t page[512];
    CHECK_OK(seg_writer_open(fd, 512, 0x1d, 7, 1, 0, 0, 3, &w, &err), &err);
    ws_walpos pos = {1, 2, 0, 0, 0, 0, 512, 1, 16};
    for (int t = 1; t <= 6; t++) {
        CHECK_OK(seg_writer_begin_tx(w, (uint64_t)t, &err), &err);
        memset(page, t, sizeof page);
        CHECK_OK(seg_writer_page(w, (uint32_t)t, page, &err), &err);
        CHECK_OK(seg_writer_commit_tx(w, (uint64_t)t, t, (uint32_t)t, 1, (uint64_t)t * 11, &err), &err);
        if (t == 4) {
            pos.frame = 40;
            CHECK_OK(seg_writer_sync_point(w, &pos, &err), &err);
        }
    }
    /* transactions 5 and 6 were written after the point, then "crash" */
    seg_writer_free(w);
    uint8_t junk[100];
    memset(junk, 0xee, sizeof junk);
    CHECK_EQ(write(fd, junk, sizeof junk), (ssize_t)sizeof junk);
    wsbuf b = read_fd(fd);
    close(fd);
    int out = tmpfile_fd("recovered");
    seg_header h;
    CHECK_OK(seg_recover(b.p, b.len, out, 3, &h, &err), &err);
    CHECK_EQ(h.first_txid, 1);
    CHECK_EQ(h.last_txid, 4);
    CHECK_EQ(h.post_chk, 44);
    CHECK_EQ(h.resume.frame, 40);
    wsbuf r = read_fd(out);
    close(out);
    seg_iter *it = NULL;
    CHECK_OK(seg_iter_open(r.p, r.len, &it, &err), &err);
    int txs = 0;
    for (;;) {
        seg_event ev;
        CHECK_OK(seg_iter_next(it, &ev, &err), &err);
        if (ev.type == SEG_EV_END) break;
        if (ev.type == SEG_EV_PAGE) CHECK_EQ(ev.page[0], ev.pgno);
        if (ev.type == SEG_EV_COMMIT) txs++;
    }
    CHECK_EQ(txs, 4);
    seg_iter_free(it);
    /* A file that never reached a durability point has nothing to recover. */
    memcpy(b.p, "WALSHSEG", 8);
    int out2 = tmpfile_fd("nothing");
    CHECK_RC(seg_recover(b.p, b.len, out2, 3, &h, &err), WALSHIP_ERR_NOTFOUND, &err);
    close(out2);
    wsbuf_free(&b);
    wsbuf_free(&r);
}

/* Snapshot: base chunks plus overlay, footer and index parse, decode. */
static void test_snapshot_roundtrip(void) {
    wserr err = {0};
    int fd = tmpfile_fd("snap");
    snap_writer *w = NULL;
    CHECK_OK(snap_writer_open(fd, 4096, 0x1d, 3, 3, &w, &err), &err);
    static uint8_t pages[4096 * 8];
    for (size_t i = 0; i < sizeof pages; i++) pages[i] = (uint8_t)(i / 4096);
    CHECK_OK(snap_writer_base(w, 1, 8, pages, &err), &err);
    CHECK_OK(snap_writer_overlay(w, 3, pages + 7 * 4096, &err), &err);
    ws_walpos pos = {0};
    CHECK_OK(snap_writer_finish(w, 77, 5000, 8, 0x1234, &pos, &err), &err);
    snap_writer_free(w);
    wsbuf b = read_fd(fd);
    close(fd);
    snap_footer f;
    CHECK_OK(snap_parse_footer(b.p, b.len, b.len, &f, &err), &err);
    CHECK_EQ(f.txid, 77);
    CHECK_EQ(f.index_count, 2);
    snap_chunk *c = NULL;
    CHECK_OK(snap_parse_index(b.p + f.index_off, f.index_count * SNAP_INDEX_ENTRY_SIZE, &f,
                              b.len, &c, &err),
             &err);
    wsbuf u = {0};
    CHECK_OK(snap_decode_chunk(&c[0], b.p + c[0].offset, c[0].clen, 4096, &u, &err), &err);
    CHECK_EQ(u.len, 8 * 4096);
    CHECK_OK(snap_decode_chunk(&c[1], b.p + c[1].offset, c[1].clen, 4096, &u, &err), &err);
    CHECK_EQ(ws_get_be32(u.p), 3);
    CHECK_EQ(u.p[4], 7);
    /* corrupt chunk bytes are caught */
    b.p[c[0].offset + c[0].clen / 2] ^= 1;
    CHECK_RC(snap_decode_chunk(&c[0], b.p + c[0].offset, c[0].clen, 4096, &u, &err),
             WALSHIP_ERR_CORRUPT, &err);
    /* a truncated object has no footer */
    CHECK_RC(snap_parse_footer(b.p, b.len - 1, b.len - 1, &f, &err), WALSHIP_ERR_CORRUPT, &err);
    free(c);
    wsbuf_free(&u);
    wsbuf_free(&b);
}

/* WAL checksums: SQLite's algorithm, both byte orders, and sealing. */
static void test_wal_checksums(void) {
    uint8_t hdr[WAL_HDR_SIZE];
    wal_hdr h;
    for (int be = 0; be < 2; be++) {
        wal_hdr_encode(hdr, be ? WAL_MAGIC_BE : WAL_MAGIC_LE, 1024, 3, 0x11111111, 0x22222222, &h);
        CHECK_EQ(wal_hdr_parse(hdr, &h), 0);
        wal_cksum ck = {be, h.ck1, h.ck2}, ck2 = ck;
        uint8_t frame[24 + 1024];
        memset(frame + 24, 0x5a, 1024);
        wal_frame_seal(&h, &ck, frame, 9, 12, 1024);
        CHECK_EQ(wal_frame_check(&h, &ck2, frame, 1024), 0);
        CHECK_EQ(ck.s1, ck2.s1);
        frame[100] ^= 1;
        wal_cksum ck3 = {be, h.ck1, h.ck2};
        CHECK_EQ(wal_frame_check(&h, &ck3, frame, 1024), -1);
        hdr[20] ^= 1;
        CHECK_EQ(wal_hdr_parse(hdr, &h), -1);
    }
}

/* Spool records: round trip, torn and corrupted records. */
static void test_spool_records(void) {
    uint8_t buf[256];
    spool_dbid id = {1, 2, 3, 4};
    size_t n = spool_rec_encode_end(buf, 5, 6, 7, SPOOL_END_TRUNCATE, 99, &id);
    spool_rec r;
    CHECK_EQ(spool_rec_decode(buf, n, &r), (long)n);
    CHECK_EQ(r.type, SPOOL_REC_WAL_END);
    CHECK_EQ(r.mx_frame, 7);
    CHECK_EQ(r.dbid.ctime_ns, 4);
    CHECK_EQ(spool_rec_decode(buf, n - 1, &r), 0); /* torn: need more */
    buf[20] ^= 1;
    CHECK_EQ(spool_rec_decode(buf, n, &r), -1); /* corrupt */
}

/* The rolling checksum over a transaction with growth and truncation
** equals a recomputation from scratch. */
static void test_rolling(void) {
    ws_rolling r;
    ws_rolling_init(&r, 512);
    uint8_t page[512];
    ws_rolling_begin(&r);
    for (uint32_t p = 1; p <= 10; p++) {
        memset(page, (int)p, sizeof page);
        CHECK_EQ(ws_rolling_page(&r, p, page), 0);
    }
    CHECK_EQ(ws_rolling_commit(&r, 12), 0); /* 11, 12: zero pages */
    CHECK_U64_EQ(r.chk, ws_rolling_recompute(&r));
    CHECK_U64_EQ(ws_rolling_get(&r, 12), ws_zero_page_hash(12, 512));
    ws_rolling_begin(&r);
    memset(page, 99, sizeof page);
    CHECK_EQ(ws_rolling_page(&r, 3, page), 0);
    CHECK_EQ(ws_rolling_commit(&r, 5), 0); /* shrink */
    CHECK_U64_EQ(r.chk, ws_rolling_recompute(&r));
    CHECK_U64_EQ(ws_rolling_get(&r, 6), 0);
    ws_rolling_free(&r);
}

int main(void) {
    RUN(test_segment_roundtrip);
    RUN(test_segment_recovery);
    RUN(test_segment_recovery_random);
    RUN(test_snapshot_roundtrip);
    RUN(test_wal_checksums);
    RUN(test_spool_records);
    RUN(test_rolling);
    return 0;
}
