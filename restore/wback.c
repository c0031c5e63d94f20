/*
** wback.c -- see wback.h.
**
** Pages live in slots (insertion order); an open-addressing table with
** linear probing maps a page number to its slot. Flushing sorts the slots
** by page number and copies each run of consecutive pages into a 1 MiB
** buffer written with one call (ws_pwrite_all, so the test fault layer
** sees restore's writes like every other).
*/
#include "wback.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "../common/util.h"

#define RUN_BYTES ((size_t)1 << 20)

struct wback {
    int fd;
    uint32_t pgsz;
    uint32_t cap, n; /* slots, slots used */
    uint32_t *pgno;  /* per slot */
    uint8_t *data;   /* cap pages */
    uint32_t *tab;   /* slot + 1, or 0 for empty */
    uint32_t mask;
    uint64_t *order; /* flush scratch: page number << 32 | slot, sorted */
    uint8_t *run;    /* flush scratch: consecutive pages */
};

static uint32_t hash_pgno(uint32_t p) { return p * 2654435761u; }

wback *wback_new(int fd, uint32_t page_size) {
    wback *w = calloc(1, sizeof *w);
    if (w == NULL) return NULL;
    w->fd = fd;
    w->pgsz = page_size;
    w->cap = (uint32_t)(WBACK_BYTES / page_size);
    if (w->cap < 16) w->cap = 16;
    uint32_t t = 1;
    while (t < 2 * w->cap) t <<= 1;
    w->mask = t - 1;
    size_t runb = RUN_BYTES > page_size ? RUN_BYTES : page_size;
    w->pgno = malloc((size_t)w->cap * sizeof *w->pgno);
    w->data = malloc((size_t)w->cap * page_size);
    w->tab = calloc(t, sizeof *w->tab);
    w->order = malloc((size_t)w->cap * sizeof *w->order);
    w->run = malloc(runb);
    if (!w->pgno || !w->data || !w->tab || !w->order || !w->run) {
        wback_free(w);
        return NULL;
    }
    return w;
}

uint32_t wback_page_size(const wback *w) { return w->pgsz; }

/* The table position holding pgno, or the empty one where it would go. */
static uint32_t find(const wback *w, uint32_t pgno) {
    uint32_t i = hash_pgno(pgno) & w->mask;
    while (w->tab[i] && w->pgno[w->tab[i] - 1] != pgno)
        i = (i + 1) & w->mask;
    return i;
}

static void rebuild(wback *w) {
    memset(w->tab, 0, ((size_t)w->mask + 1) * sizeof *w->tab);
    for (uint32_t s = 0; s < w->n; s++)
        w->tab[find(w, w->pgno[s])] = s + 1;
}

int wback_put(wback *w, uint32_t pgno, const uint8_t *data, wserr *err) {
    uint32_t i = find(w, pgno);
    if (w->tab[i] == 0) {
        if (w->n == w->cap) {
            int rc = wback_flush(w, err);
            if (rc) return rc;
            i = find(w, pgno);
        }
        w->pgno[w->n] = pgno;
        w->tab[i] = ++w->n;
    }
    memcpy(w->data + (size_t)(w->tab[i] - 1) * w->pgsz, data, w->pgsz);
    return 0;
}

static int by_key(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int wback_flush(wback *w, wserr *err) {
    if (w->n == 0) return 0;
    for (uint32_t s = 0; s < w->n; s++) w->order[s] = (uint64_t)w->pgno[s] << 32 | s;
    qsort(w->order, w->n, sizeof *w->order, by_key);
    size_t per_run = (RUN_BYTES > w->pgsz ? RUN_BYTES : w->pgsz) / w->pgsz;
    for (uint32_t k = 0; k < w->n;) {
        uint32_t first = (uint32_t)(w->order[k] >> 32);
        size_t m = 0;
        while (k + m < w->n && m < per_run && (w->order[k + m] >> 32) == first + m) {
            uint32_t slot = (uint32_t)w->order[k + m];
            memcpy(w->run + m * w->pgsz, w->data + (size_t)slot * w->pgsz, w->pgsz);
            m++;
        }
        if (ws_pwrite_all(w->fd, w->run, m * w->pgsz, (off_t)(first - 1) * w->pgsz) != 0)
            return wserr_errno(err, wserr_from_errno(errno), errno, "write restored database");
        k += (uint32_t)m;
    }
    wback_clear(w);
    return 0;
}

void wback_drop_above(wback *w, uint32_t pages) {
    uint32_t kept = 0;
    for (uint32_t s = 0; s < w->n; s++) {
        if (w->pgno[s] > pages) continue;
        if (kept != s) {
            w->pgno[kept] = w->pgno[s];
            memcpy(w->data + (size_t)kept * w->pgsz, w->data + (size_t)s * w->pgsz, w->pgsz);
        }
        kept++;
    }
    if (kept == w->n) return;
    w->n = kept;
    rebuild(w);
}

void wback_clear(wback *w) {
    w->n = 0;
    memset(w->tab, 0, ((size_t)w->mask + 1) * sizeof *w->tab);
}

void wback_free(wback *w) {
    if (w == NULL) return;
    free(w->pgno);
    free(w->data);
    free(w->tab);
    free(w->order);
    free(w->run);
    free(w);
}
