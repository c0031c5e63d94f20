/*
** restore.c -- planning and building a restore. See restore.h.
**
** Planning picks, for the target, the generation that holds it, the newest
** snapshot at or before it, and a chain of segments that covers every TXID
** from the snapshot to the target without a gap (catalog.c). For a time
** target, snapshot footers and segment headers are read with small ranged
** requests to find where the time falls.
**
** Building downloads the snapshot's chunks in parallel and writes them at
** their page offsets, applies the overlay, then streams the segments
** (downloaded ahead in parallel) and applies each transaction in TXID order.
** The rolling checksum is kept page by page (format/rolling.h) and compared
** with the one recorded after every transaction; the snapshot's checksum is
** compared once its image is complete. Any mismatch, gap or bad object
** fails the restore with a message naming the object.
*/
#include "restore.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/log.h"
#include "../common/util.h"
#include "fetch.h"

#define DEFAULT_PARALLEL 8

int restore_snap_footer(store *st, const cat_snap *s, snap_footer *out, wserr *err) {
    wsbuf b = {0};
    int rc = store_get_tail(st, s->key, SNAP_FOOTER_SIZE, &b, err);
    if (rc == 0) rc = snap_parse_footer(b.p, b.len, s->size, out, err);
    if (rc) wserr_prefix(err, "snapshot %s", s->key);
    wsbuf_free(&b);
    return rc;
}

static int seg_header_of(store *st, const cat_seg *s, seg_header *out, wserr *err) {
    wsbuf b = {0};
    int rc = store_get_range(st, s->key, 0, SEG_HEADER_SIZE, &b, err);
    if (rc == 0) rc = seg_parse_header(b.p, b.len, out, err);
    if (rc) wserr_prefix(err, "segment %s", s->key);
    wsbuf_free(&b);
    return rc;
}

void restore_plan_free(restore_plan *p) {
    free(p->chain);
    memset(p, 0, sizeof *p);
}

/* Newest snapshot of g with txid <= max_txid and commit time <= max_ms. */
static int pick_snapshot(store *st, const cat_gen *g, uint64_t max_txid, int64_t max_ms,
                         const cat_snap **out, wserr *err) {
    *out = NULL;
    for (size_t i = g->nsnaps; i-- > 0;) {
        const cat_snap *s = &g->snaps[i];
        if (s->txid > max_txid) continue;
        if (max_ms != INT64_MAX) {
            snap_footer f;
            int rc = restore_snap_footer(st, s, &f, err);
            if (rc) return rc;
            if (f.commit_ms > max_ms) continue;
        }
        *out = s;
        return 0;
    }
    return 0;
}

static void fmt_time(int64_t ms, char *buf, size_t n) { ws_format_time(ms, buf, n); }

int restore_plan_make(store *st, const catalog *cat, const restore_target *t, restore_plan *p,
                      wserr *err) {
    memset(p, 0, sizeof *p);
    p->to_time_ms = INT64_MAX;
    const cat_gen *g = NULL;
    int rc;
    if (cat->ngens == 0)
        return wserr_set(err, WALSHIP_ERR_NOTFOUND,
                         "the store holds no backups at this URL (check the URL and prefix)");
    for (size_t i = cat->ngens; i-- > 0 && g == NULL;) {
        const cat_gen *c = &cat->gens[i];
        if (t->generation && c->id != t->generation) continue;
        if (c->nsnaps == 0) continue; /* still being written, or damaged */
        if (t->kind == RESTORE_TXID) {
            if (t->txid >= cat_gen_first_txid(c) && t->txid <= cat_gen_last_txid(c)) g = c;
        } else if (t->kind == RESTORE_TIME) {
            snap_footer f;
            if ((rc = restore_snap_footer(st, &c->snaps[0], &f, err))) return rc;
            if (f.commit_ms <= t->time_ms) g = c;
        } else {
            g = c;
        }
    }
    if (g == NULL) {
        if (t->generation)
            return wserr_set(err, WALSHIP_ERR_NOTFOUND,
                             "generation %016" PRIx64 " has no restorable state for this target",
                             t->generation);
        if (t->kind == RESTORE_TXID)
            return wserr_set(err, WALSHIP_ERR_NOTFOUND,
                             "no generation holds transaction %" PRIu64
                             " (run `walship generations` to see what is retained)",
                             t->txid);
        if (t->kind == RESTORE_TIME) {
            char when[40];
            fmt_time(t->time_ms, when, sizeof when);
            return wserr_set(err, WALSHIP_ERR_NOTFOUND,
                             "nothing restorable at or before %s (run `walship generations` to "
                             "see what is retained)",
                             when);
        }
        return wserr_set(err, WALSHIP_ERR_NOTFOUND,
                         "no generation has a snapshot yet (the first upload may still be in "
                         "progress)");
    }
    p->gen = g;
    uint64_t last = cat_gen_last_txid(g);
    uint64_t want = t->kind == RESTORE_TXID ? t->txid : last;
    int64_t max_ms = t->kind == RESTORE_TIME ? t->time_ms : INT64_MAX;
    if ((rc = pick_snapshot(st, g, want, max_ms, &p->snap, err))) return rc;
    if (p->snap == NULL)
        return wserr_set(err, WALSHIP_ERR_NOTFOUND,
                         "generation %016" PRIx64 " has no snapshot at or before the target",
                         g->id);
    if ((rc = cat_chain(g, p->snap->txid, want, &p->chain, &p->nchain, err))) return rc;
    if (t->kind == RESTORE_TIME && p->nchain > 0) {
        /* Keep the segments whose first commit is not after the time:
        ** binary search on their headers. */
        size_t lo = 0, hi = p->nchain; /* answer in [lo, hi): count to keep */
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            seg_header h;
            if ((rc = seg_header_of(st, p->chain[mid], &h, err))) return rc;
            if (h.first_commit_ms <= t->time_ms)
                lo = mid + 1;
            else
                hi = mid;
        }
        p->nchain = lo;
        p->to_time_ms = t->time_ms;
    }
    p->to_txid = p->nchain ? p->chain[p->nchain - 1]->last : p->snap->txid;
    if (t->kind == RESTORE_TXID) p->to_txid = t->txid;
    p->bytes = p->snap->size;
    for (size_t i = 0; i < p->nchain; i++) p->bytes += p->chain[i]->size;
    return 0;
}

/* ---- building ---------------------------------------------------------------- */
typedef struct builder {
    store *st;
    int fd;
    ws_rolling *r;
    uint32_t pgsz;
    uint64_t txid;
    int64_t commit_ms;
    uint64_t file_pages; /* pages the file has now */
    restore_progress_fn progress;
    void *pctx;
    uint64_t done, total;
} builder;

static void report(builder *b, uint64_t add) {
    b->done += add;
    if (b->progress) b->progress(b->pctx, b->done, b->total);
}

static int write_page(builder *b, uint32_t pgno, const uint8_t *data, wserr *err) {
    if (ws_pwrite_all(b->fd, data, b->pgsz, (off_t)(pgno - 1) * b->pgsz) != 0)
        return wserr_errno(err, wserr_from_errno(errno), errno, "write restored database");
    if (pgno > b->file_pages) b->file_pages = pgno;
    return 0;
}

static int set_size(builder *b, uint32_t pages, wserr *err) {
    if (pages == b->file_pages) return 0;
    if (ftruncate(b->fd, (off_t)pages * b->pgsz) != 0)
        return wserr_errno(err, wserr_from_errno(errno), errno, "resize restored database");
    b->file_pages = pages;
    return 0;
}

static int build_snapshot(builder *b, const cat_snap *s, int parallel, wserr *err) {
    snap_footer f;
    int rc = restore_snap_footer(b->st, s, &f, err);
    if (rc) return rc;
    if (f.txid != s->txid)
        return wserr_set(err, WALSHIP_ERR_CORRUPT, "snapshot %s says it is at TXID %" PRIu64,
                         s->key, f.txid);
    wsbuf ib = {0};
    snap_chunk *chunks = NULL;
    uint64_t ilen = (uint64_t)f.index_count * SNAP_INDEX_ENTRY_SIZE;
    rc = ilen ? store_get_range(b->st, s->key, f.index_off, ilen, &ib, err) : 0;
    if (rc == 0) rc = snap_parse_index(ib.p, ib.len, &f, s->size, &chunks, err);
    wsbuf_free(&ib);
    if (rc) return wserr_prefix(err, "snapshot %s", s->key);
    b->pgsz = f.page_size;
    b->r->page_size = f.page_size;
    fetch_job *jobs = calloc(f.index_count ? f.index_count : 1, sizeof *jobs);
    if (jobs == NULL) {
        free(chunks);
        return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
    }
    for (uint32_t i = 0; i < f.index_count; i++)
        jobs[i] = (fetch_job){s->key, chunks[i].offset, chunks[i].clen};
    fetcher *fe = NULL;
    rc = fetch_start(b->st, jobs, f.index_count, parallel, (size_t)parallel * 2, &fe, err);
    wsbuf cbuf = {0}, ubuf = {0};
    for (uint32_t i = 0; rc == 0 && i < f.index_count; i++) {
        const snap_chunk *c = &chunks[i];
        rc = fetch_take(fe, i, &cbuf, err);
        if (rc == 0) rc = snap_decode_chunk(c, cbuf.p, cbuf.len, f.page_size, &ubuf, err);
        if (rc) {
            wserr_prefix(err, "snapshot %s chunk %u", s->key, i);
            break;
        }
        if (c->kind == SNAP_CHUNK_BASE) {
            if (ws_pwrite_all(b->fd, ubuf.p, ubuf.len, (off_t)(c->first_pgno - 1) * f.page_size)) {
                rc = wserr_errno(err, wserr_from_errno(errno), errno, "write restored database");
                break;
            }
            for (uint32_t k = 0; k < c->count && rc == 0; k++) {
                uint32_t p = c->first_pgno + k;
                rc = ws_rolling_set(b->r, p,
                                    ws_page_hash(p, ubuf.p + (size_t)k * f.page_size, f.page_size));
            }
            if (c->first_pgno + c->count - 1 > b->file_pages)
                b->file_pages = c->first_pgno + c->count - 1;
        } else {
            for (uint32_t k = 0; k < c->count && rc == 0; k++) {
                const uint8_t *rec = ubuf.p + (size_t)k * (4 + f.page_size);
                uint32_t p = ws_get_be32(rec);
                rc = write_page(b, p, rec + 4, err);
                if (rc == 0) rc = ws_rolling_set(b->r, p, ws_page_hash(p, rec + 4, f.page_size));
            }
        }
        if (rc && err && err->code == 0) rc = wserr_set(err, rc, "out of memory");
        report(b, c->clen);
    }
    wsbuf_free(&cbuf);
    wsbuf_free(&ubuf);
    fetch_free(fe);
    free(jobs);
    free(chunks);
    if (rc) return rc;
    /* The image: pages 1..db_pages; pages the snapshot never wrote are zero. */
    for (uint32_t p = 1; p <= f.db_pages; p++)
        if (ws_rolling_get(b->r, p) == 0) ws_rolling_set(b->r, p, ws_zero_page_hash(p, f.page_size));
    for (uint32_t p = f.db_pages + 1; p <= b->r->cap; p++) b->r->h[p - 1] = 0;
    b->r->db_pages = f.db_pages;
    b->r->tx_before = f.db_pages;
    if ((rc = set_size(b, f.db_pages, err))) return rc;
    b->r->chk = ws_rolling_recompute(b->r);
    if (b->r->chk != f.chk)
        return wserr_set(err, WALSHIP_ERR_CORRUPT,
                         "snapshot %s does not match its checksum (the object is damaged)",
                         s->key);
    b->txid = f.txid;
    b->commit_ms = f.commit_ms;
    return 0;
}

/* Finds the last TXID in a segment body committed at or before max_ms. */
static int last_txid_by_time(const wsbuf *obj, int64_t max_ms, uint64_t *out, wserr *err) {
    seg_iter *it = NULL;
    int rc = seg_iter_open(obj->p, obj->len, &it, err);
    *out = 0;
    while (rc == 0) {
        seg_event ev;
        rc = seg_iter_next(it, &ev, err);
        if (rc || ev.type == SEG_EV_END) break;
        if (ev.type == SEG_EV_COMMIT && ev.commit_ms <= max_ms) *out = ev.txid;
    }
    seg_iter_free(it);
    return rc;
}

static int apply_segment(builder *b, const cat_seg *s, const wsbuf *obj, uint64_t to_txid,
                         wserr *err) {
    seg_iter *it = NULL;
    int rc = seg_iter_open(obj->p, obj->len, &it, err);
    if (rc) return wserr_prefix(err, "segment %s", s->key);
    const seg_header *h = seg_iter_header(it);
    if (h->first_txid != s->first || h->last_txid != s->last || h->page_size != b->pgsz) {
        seg_iter_free(it);
        return wserr_set(err, WALSHIP_ERR_CORRUPT,
                         "segment %s does not hold what its name says (or its page size differs)",
                         s->key);
    }
    if (h->first_txid == b->txid + 1 && h->pre_chk != b->r->chk) {
        seg_iter_free(it);
        return wserr_set(err, WALSHIP_ERR_CORRUPT,
                         "segment %s does not follow transaction %" PRIu64
                         " (checksum mismatch: history out of order)",
                         s->key, b->txid);
    }
    int skipping = 0;
    for (;;) {
        seg_event ev;
        rc = seg_iter_next(it, &ev, err);
        if (rc) {
            wserr_prefix(err, "segment %s", s->key);
            break;
        }
        if (ev.type == SEG_EV_END) break;
        if (ev.type == SEG_EV_BEGIN) {
            if (ev.txid > to_txid) break; /* target reached */
            skipping = ev.txid <= b->txid;
            if (!skipping && ev.txid != b->txid + 1) {
                rc = wserr_set(err, WALSHIP_ERR_CORRUPT,
                               "segment %s: transaction %" PRIu64 " follows %" PRIu64 " (gap)",
                               s->key, ev.txid, b->txid);
                break;
            }
            if (!skipping) ws_rolling_begin(b->r);
        } else if (ev.type == SEG_EV_PAGE) {
            if (skipping) continue;
            if ((rc = write_page(b, ev.pgno, ev.page, err))) break;
            if ((rc = ws_rolling_page(b->r, ev.pgno, ev.page))) {
                rc = wserr_set(err, rc, "out of memory");
                break;
            }
        } else if (ev.type == SEG_EV_COMMIT) {
            if (skipping) {
                if (ev.txid == b->txid && ev.post_chk != b->r->chk) {
                    rc = wserr_set(err, WALSHIP_ERR_CORRUPT,
                                   "segment %s disagrees with the history before it at TXID %" PRIu64,
                                   s->key, ev.txid);
                    break;
                }
                continue;
            }
            if ((rc = ws_rolling_commit(b->r, ev.db_pages))) {
                rc = wserr_set(err, rc, "out of memory");
                break;
            }
            if (ev.db_pages < b->file_pages && (rc = set_size(b, ev.db_pages, err))) break;
            if (b->r->chk != ev.post_chk) {
                rc = wserr_set(err, WALSHIP_ERR_CORRUPT,
                               "segment %s: transaction %" PRIu64
                               " does not produce its recorded checksum (the object is damaged, "
                               "or it belongs to another history)",
                               s->key, ev.txid);
                break;
            }
            b->txid = ev.txid;
            b->commit_ms = ev.commit_ms;
        }
    }
    seg_iter_free(it);
    return rc;
}

int restore_build(store *st, const restore_plan *p, int fd, int parallel, ws_rolling *r,
                  restore_result *res, restore_progress_fn progress, void *pctx, wserr *err) {
    if (parallel <= 0) parallel = DEFAULT_PARALLEL;
    builder b = {.st = st, .fd = fd, .r = r, .progress = progress, .pctx = pctx, .total = p->bytes};
    memset(res, 0, sizeof *res);
    int rc = build_snapshot(&b, p->snap, parallel, err);
    if (rc) return rc;
    if (p->nchain > 0) {
        fetch_job *jobs = calloc(p->nchain, sizeof *jobs);
        if (jobs == NULL) return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
        for (size_t i = 0; i < p->nchain; i++) jobs[i] = (fetch_job){p->chain[i]->key, 0, 0};
        fetcher *fe = NULL;
        rc = fetch_start(st, jobs, p->nchain, parallel, (size_t)parallel * 2, &fe, err);
        wsbuf obj = {0};
        for (size_t i = 0; rc == 0 && i < p->nchain; i++) {
            rc = fetch_take(fe, i, &obj, err);
            if (rc) {
                wserr_prefix(err, "segment %s", p->chain[i]->key);
                break;
            }
            uint64_t to = p->to_txid;
            if (p->to_time_ms != INT64_MAX && i + 1 == p->nchain) {
                uint64_t by_time;
                if ((rc = last_txid_by_time(&obj, p->to_time_ms, &by_time, err))) {
                    wserr_prefix(err, "segment %s", p->chain[i]->key);
                    break;
                }
                if (by_time < to) to = by_time > b.txid ? by_time : b.txid;
            }
            rc = apply_segment(&b, p->chain[i], &obj, to, err);
            report(&b, p->chain[i]->size);
        }
        wsbuf_free(&obj);
        fetch_free(fe);
        free(jobs);
        if (rc) return rc;
    }
    if (b.txid < p->to_txid && p->to_time_ms == INT64_MAX)
        return wserr_set(err, WALSHIP_ERR_NOTFOUND,
                         "the store's objects end at transaction %" PRIu64 ", before %" PRIu64,
                         b.txid, p->to_txid);
    if ((rc = set_size(&b, r->db_pages, err))) return rc;
    res->generation = p->gen->id;
    res->txid = b.txid;
    res->commit_ms = b.commit_ms;
    res->page_size = b.pgsz;
    res->db_pages = r->db_pages;
    res->chk = r->chk;
    res->bytes = p->bytes;
    res->nsegments = p->nchain;
    return 0;
}
