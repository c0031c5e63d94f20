/*
** rolling.h -- the rolling database checksum and the page hashes behind it.
**
**   chk = XOR over p in 1..db_pages of ws_page_hash(p, page p)
**
** One transaction moves it as follows: each written page's old hash is
** XOR-ed out and its new hash in; at the commit, pages past the new size are
** XOR-ed out (truncation), and pages the database grew by without a frame
** writing them count as zero pages. Pages past db_pages always have hash 0
** here. The shipper, restore and the replica all keep the checksum with
** this one piece of code, so they agree by construction.
*/
#ifndef WS_ROLLING_H
#define WS_ROLLING_H

#include <stdint.h>

typedef struct ws_rolling {
    uint64_t *h;        /* h[p-1] = hash of page p; 0 past db_pages */
    uint32_t cap;       /* entries allocated */
    uint32_t page_size;
    uint32_t db_pages;
    uint64_t chk;
    uint32_t tx_before; /* db_pages when the open transaction began */
    uint32_t tx_max;    /* highest page it wrote */
    /* Called with every page whose hash changes (dirty tracking); may be NULL. */
    void (*on_set)(void *ctx, uint32_t pgno);
    void *ctx;
} ws_rolling;

/* Initialises r for a page size; no pages. */
void ws_rolling_init(ws_rolling *r, uint32_t page_size);
void ws_rolling_free(ws_rolling *r);

/* Sets the hash of page p directly (loading state, snapshots); grows the
** array. Returns 0 or WALSHIP_ERR_NOMEM. Does not touch chk. */
int ws_rolling_set(ws_rolling *r, uint32_t p, uint64_t h);
static inline uint64_t ws_rolling_get(const ws_rolling *r, uint32_t p) {
    return p >= 1 && p <= r->cap ? r->h[p - 1] : 0;
}

/* A transaction: begin, page*, commit(new size). */
void ws_rolling_begin(ws_rolling *r);
int ws_rolling_page(ws_rolling *r, uint32_t pgno, const uint8_t *data);
/* Same, with the page's hash already computed. */
int ws_rolling_page_hash(ws_rolling *r, uint32_t pgno, uint64_t h);
int ws_rolling_commit(ws_rolling *r, uint32_t db_pages);

/* XOR of h[1..db_pages], for consistency checks. */
uint64_t ws_rolling_recompute(const ws_rolling *r);

#endif
