/*
** fuzz_segment_stream.c -- libFuzzer target: the streaming segment decoder
** (seg_stream), fed the input in pieces of varying sizes, must agree with
** the in-memory one (seg_iter) on every event and on the outcome:
**   - seg_iter walks to END  => seg_stream delivers the same events, END;
**   - seg_iter fails         => seg_stream never reaches END, and what it
**                               delivered before failing are seg_iter's
**                               events in order (seg_iter checks the
**                               trailer when it opens; the stream only at
**                               the end, so it may deliver more).
** Piece sizes come from the input's own bytes (deterministic per input).
** A disagreement aborts.
*/
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "format/objfmt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_EVENTS 4096

/* One event, as a number that changes with any field (and page byte). */
static uint64_t digest(const seg_event *ev, uint32_t page_size) {
    uint64_t h = (uint64_t)ev->type * 0x9E3779B97F4A7C15ull;
    h ^= ev->txid * 31 + ev->pgno;
    h ^= ((uint64_t)ev->commit_ms << 1) ^ ((uint64_t)ev->db_pages << 7) ^ ev->npages ^ ev->post_chk;
    if (ev->type == SEG_EV_PAGE) h ^= ws_hash64(ev->page, page_size);
    return h;
}

/* The in-memory walk: fills ev with digests; returns 1 on END, 0 on failure. */
static int walk_memory(const uint8_t *data, size_t size, uint64_t *ev, size_t *n) {
    seg_iter *it = NULL;
    *n = 0;
    if (seg_iter_open(data, size, &it, NULL) != 0) return 0;
    uint32_t ps = seg_iter_header(it)->page_size;
    int end = 0;
    while (*n < MAX_EVENTS) {
        seg_event e;
        if (seg_iter_next(it, &e, NULL) != 0) break;
        if (e.type == SEG_EV_END) {
            end = 1;
            break;
        }
        ev[(*n)++] = digest(&e, ps);
    }
    seg_iter_free(it);
    return end;
}

static uint64_t rng;
static size_t next_piece(size_t left) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    size_t k = 1 + (size_t)(rng % 97);
    if (rng & 0x100000) k = 1 + (size_t)(rng % 4096); /* sometimes bigger ones */
    return k < left ? k : left;
}

/* The streaming walk: returns 1 on END, 0 on failure; ev/n as above. */
static int walk_stream(const uint8_t *data, size_t size, uint64_t *ev, size_t *n) {
    seg_stream *s = NULL;
    *n = 0;
    if (seg_stream_open(&s, NULL) != 0) abort();
    size_t pos = 0;
    int end = 0, failed = 0;
    while (!end && !failed && *n < MAX_EVENTS) {
        size_t k = next_piece(size - pos);
        seg_stream_feed(s, data + pos, k, pos + k == size);
        pos += k;
        for (;;) {
            seg_event e;
            if (seg_stream_next(s, &e, NULL) != 0) {
                failed = 1;
                break;
            }
            if (e.type == SEG_EV_NEED) {
                if (pos == size) abort(); /* the last piece must end the walk */
                break;
            }
            if (e.type == SEG_EV_END) {
                end = 1;
                break;
            }
            if (e.type == SEG_EV_HEADER) {
                if (seg_stream_header(s) == NULL) abort();
                continue;
            }
            if (*n == MAX_EVENTS) break;
            ev[(*n)++] = digest(&e, seg_stream_header(s)->page_size);
        }
    }
    seg_stream_free(s);
    return end;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static uint64_t a[MAX_EVENTS], b[MAX_EVENTS];
    size_t na, nb;
    rng = 0x243F6A8885A308D3ull ^ size;
    for (size_t i = 0; i < size && i < 8; i++)
        rng = rng * 131 + data[size - 1 - i];
    if (rng == 0) rng = 1;
    int end_a = walk_memory(data, size, a, &na);
    int end_b = walk_stream(data, size, b, &nb);
    if (na == MAX_EVENTS || nb == MAX_EVENTS) return 0; /* too long to compare */
    if (end_a != end_b) abort();
    if (end_a && na != nb) abort();
    if (!end_a && na > 0 && nb > na) abort(); /* after an open, both fail at one point */
    size_t m = na < nb ? na : nb;
    for (size_t i = 0; i < m; i++)
        if (a[i] != b[i]) abort();
    return 0;
}
