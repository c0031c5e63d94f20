/*
** rolling.c -- see rolling.h.
*/
#include "rolling.h"

#include <stdlib.h>
#include <string.h>

#include "../include/walship.h"
#include "objfmt.h"

#define MAX_PAGES 0x7fffffffu

void ws_rolling_init(ws_rolling *r, uint32_t page_size) {
    memset(r, 0, sizeof *r);
    r->page_size = page_size;
}

void ws_rolling_free(ws_rolling *r) {
    free(r->h);
    r->h = NULL;
    r->cap = 0;
}

static int grow(ws_rolling *r, uint32_t n) {
    if (n <= r->cap) return 0;
    if (n > MAX_PAGES) return WALSHIP_ERR_INVALID;
    uint32_t cap = r->cap ? r->cap : 1024;
    while (cap < n) cap = cap > MAX_PAGES / 2 ? MAX_PAGES : cap * 2;
    uint64_t *h = realloc(r->h, (size_t)cap * sizeof *h);
    if (h == NULL) return WALSHIP_ERR_NOMEM;
    memset(h + r->cap, 0, (size_t)(cap - r->cap) * sizeof *h);
    r->h = h;
    r->cap = cap;
    return 0;
}

int ws_rolling_set(ws_rolling *r, uint32_t p, uint64_t h) {
    if (p == 0) return WALSHIP_ERR_INVALID;
    int rc = grow(r, p);
    if (rc) return rc;
    r->h[p - 1] = h;
    if (r->on_set) r->on_set(r->ctx, p);
    return 0;
}

void ws_rolling_begin(ws_rolling *r) {
    r->tx_before = r->db_pages;
    r->tx_max = 0;
}

int ws_rolling_page_hash(ws_rolling *r, uint32_t pgno, uint64_t h) {
    uint64_t old = ws_rolling_get(r, pgno);
    int rc = ws_rolling_set(r, pgno, h);
    if (rc) return rc;
    r->chk ^= old ^ h;
    if (pgno > r->tx_max) r->tx_max = pgno;
    return 0;
}

int ws_rolling_page(ws_rolling *r, uint32_t pgno, const uint8_t *data) {
    return ws_rolling_page_hash(r, pgno, ws_page_hash(pgno, data, r->page_size));
}

int ws_rolling_commit(ws_rolling *r, uint32_t db_pages) {
    uint32_t hi = r->tx_before > r->tx_max ? r->tx_before : r->tx_max;
    for (uint32_t p = db_pages + 1; p <= hi; p++) { /* truncation */
        uint64_t old = ws_rolling_get(r, p);
        if (old == 0) continue;
        r->chk ^= old;
        r->h[p - 1] = 0;
        if (r->on_set) r->on_set(r->ctx, p);
    }
    for (uint32_t p = r->tx_before + 1; p <= db_pages; p++) { /* growth without a frame */
        if (ws_rolling_get(r, p) != 0) continue;
        uint64_t z = ws_zero_page_hash(p, r->page_size);
        int rc = ws_rolling_set(r, p, z);
        if (rc) return rc;
        r->chk ^= z;
    }
    r->db_pages = db_pages;
    r->tx_before = db_pages;
    r->tx_max = 0;
    return 0;
}

uint64_t ws_rolling_recompute(const ws_rolling *r) {
    uint64_t x = 0;
    for (uint32_t i = 0; i < r->db_pages && i < r->cap; i++) x ^= r->h[i];
    return x;
}
