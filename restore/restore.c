/*
** restore.c -- planning and building a restore. See restore.h.
**
** PLANNING picks, for the target, the generation that holds it, the newest
** readable snapshot at or before it (a damaged one newer than that is
** routed around, with a warning), and a chain of segments that covers every
** TXID from the snapshot to the target without a gap (catalog.c). The
** catalog has already dropped what is not this history's and read every
** snapshot footer; for a time target, segment headers are read with small
** ranged requests to find where the time falls.
**
** BUILDING downloads the snapshot's chunks in parallel (fetch.c), checks its
** file header against its footer, writes the chunks at their page offsets,
** applies the overlay and checks the image's rolling checksum. Then the
** segments stream in, in TXID order, through fetch.c's bounded queues into
** a streaming decoder (format seg_stream): a segment's header is judged
** against its key, its generation and the owner's lineage the moment its
** first 160 bytes arrive (by the download thread, which stops a bad object
** at once, and again here), and its body is verified as it is decoded.
**
** A transaction's pages are staged in memory (up to STAGE_MAX; a bigger one
** is written as it comes) and reach the file only once the rolling checksum
** after it equals the one its COMMIT recorded. So when a segment turns out
** damaged or foreign part-way, the image is still exactly the one after the
** last transaction applied, and the build can route around it: the segment
** is refused (with a warning), a new chain is planned from there without
** it, and downloading starts again. Only when no other object holds the
** next transaction does the build fail, with the refused object's own
** message, the missing transaction, and the newest TXID that can be
** restored. A damaged snapshot is routed around the same way, by starting
** over from an older one. "The file" is reached through a write-back cache
** (wback.c): it keeps the newest copy of each page and writes runs of pages
** in order, so a page rewritten by thousands of transactions costs one
** write, not thousands.
**
** FAILURES are of two kinds: the object's (not ours, damaged, unreadable,
** gone since the listing: refuse and route around) and everyone else's
** (the store unreachable, a local write failing, memory: fail at once).
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
#include "wback.h"

#define DEFAULT_PARALLEL 8
#define STAGE_MAX        ((size_t)16 << 20) /* staged pages of one transaction, at most */
#define WHY_MAX          240

/* Whose fault a failure is. */
enum { V_FATAL = 0, V_NOT_OURS = 1, V_DAMAGED = 2, V_GONE = 3 };

int restore_snap_footer(store *st, const cat_snap *s, snap_footer *out, wserr *err) {
    if (s->state == CAT_OK) {
        *out = s->f;
        return 0;
    }
    wsbuf b = {0};
    int rc = store_get_tail(st, s->key, SNAP_FOOTER_SIZE, &b, err);
    if (rc == 0) rc = snap_parse_footer(b.p, b.len, s->size, out, err);
    if (rc) wserr_prefix(err, "snapshot %s", s->key);
    wsbuf_free(&b);
    return rc;
}

void restore_plan_free(restore_plan *p) {
    free(p->chain);
    memset(p, 0, sizeof *p);
}

/* ---- planning ----------------------------------------------------------------- */

/* Newest readable snapshot of g with txid <= max_txid and commit time <=
** max_ms, not skipped (skip may be NULL; indexes g->snaps). A damaged one
** that would have been newer is named in a warning; if there is none at
** all, the error names the damaged one, or says there is none. */
static int pick_snapshot(const cat_gen *g, uint64_t max_txid, int64_t max_ms, const uint8_t *skip,
                         const cat_snap **out, wserr *err) {
    const cat_snap *passed = NULL;
    *out = NULL;
    for (size_t i = g->nsnaps; i-- > 0;) {
        const cat_snap *s = &g->snaps[i];
        if (s->txid > max_txid) continue;
        if (s->state != CAT_OK || (skip && skip[i])) {
            if (passed == NULL) passed = s;
            continue;
        }
        if (s->f.commit_ms > max_ms) continue;
        if (passed)
            WS_WARN("restore_route_around",
                    "snapshot=\"%s\" why=\"%s\" instead=\"%s\" (restoring from the older snapshot "
                    "and the segments after it)",
                    passed->key, passed->why ? passed->why : "refused", s->key);
        *out = s;
        return 0;
    }
    if (passed)
        return wserr_set(err, WALSHIP_ERR_CORRUPT,
                         "snapshot %s %s, and generation %016" PRIx64
                         " has no other snapshot at or before the target to start from (run "
                         "`walship generations` to see what else is retained)",
                         passed->key, passed->why ? passed->why : "was refused", g->id);
    return wserr_set(err, WALSHIP_ERR_NOTFOUND,
                     "generation %016" PRIx64 " has no snapshot at or before the target", g->id);
}

/* The commit time of a generation's oldest readable snapshot (INT64_MAX
** if none). */
static int64_t gen_first_ms(const cat_gen *g) {
    for (size_t i = 0; i < g->nsnaps; i++)
        if (g->snaps[i].state == CAT_OK) return g->snaps[i].f.commit_ms;
    return INT64_MAX;
}

/* Appends to err's message the newest state that can be restored (the
** failure is at TXID reached+1). Returns rc. */
static int add_restorable(wserr *err, int rc, uint64_t reached) {
    if (err == NULL) return rc;
    char msg[WSERR_MSG_MAX * 2];
    snprintf(msg, sizeof msg,
             "%s; the newest state that can be restored is transaction %" PRIu64
             " (use --txid %" PRIu64 ")",
             err->msg, reached, reached);
    return wserr_set(err, rc, "%s", msg);
}

/* Reads and judges a segment's header (for the time search). */
static int seg_header_of(store *st, const catalog *cat, const cat_gen *g, const cat_seg *s,
                         seg_header *out, wserr *err) {
    wsbuf b = {0};
    char why[WHY_MAX];
    int rc = store_get_range(st, s->key, 0, SEG_HEADER_SIZE, &b, err);
    if (rc == 0) rc = seg_parse_header(b.p, b.len, out, err);
    if (rc == 0 && cat_seg_header_belongs(cat, g, s, out, why, sizeof why))
        rc = wserr_set(err, WALSHIP_ERR_CORRUPT, "%s", why);
    if (rc) wserr_prefix(err, "segment %s", s->key);
    wsbuf_free(&b);
    return rc;
}

int restore_plan_make(store *st, const catalog *cat, const restore_target *t, restore_plan *p,
                      wserr *err) {
    memset(p, 0, sizeof *p);
    p->cat = cat;
    p->to_time_ms = INT64_MAX;
    const cat_gen *g = NULL;
    int rc;
    if (t->kind == RESTORE_TXID && (t->txid == 0 || t->txid >= WS_TXID_LIMIT))
        return wserr_set(err, WALSHIP_ERR_INVALID,
                         "there is no transaction %" PRIu64 " (TXIDs run from 1 to 2^63-1)",
                         t->txid);
    if (cat->ngens == 0) {
        if (cat->nignored > 0)
            return wserr_set(err, WALSHIP_ERR_NOTFOUND,
                             "the store holds no backups of this destination's database at this "
                             "URL (%zu object(s) there were ignored as another history's: see the "
                             "warnings)",
                             cat->nignored);
        return wserr_set(err, WALSHIP_ERR_NOTFOUND,
                         "the store holds no backups at this URL (check the URL and prefix)");
    }
    for (size_t i = cat->ngens; i-- > 0 && g == NULL;) {
        const cat_gen *c = &cat->gens[i];
        if (t->generation && c->id != t->generation) continue;
        if (c->nsnaps == 0) continue; /* still being written */
        if (t->kind == RESTORE_TXID) {
            if (t->txid >= cat_gen_first_txid(c) && t->txid <= cat_gen_last_txid(c)) g = c;
        } else if (t->kind == RESTORE_TIME) {
            if (gen_first_ms(c) <= t->time_ms) g = c;
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
            ws_format_time(t->time_ms, when, sizeof when);
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
    if ((rc = pick_snapshot(g, want, max_ms, NULL, &p->snap, err))) return rc;
    /* A chain as far as the listed objects reach. When something is missing
    ** or damaged before the target, the plan stops there and building
    ** fails at that point, naming it, after checking everything before it
    ** (only then is it known how far a restore can really go). */
    uint64_t reached;
    int partial = 0;
    rc = cat_chain(g, p->snap->txid, want, NULL, &p->chain, &p->nchain, &reached, err);
    if (rc == WALSHIP_ERR_NOTFOUND) {
        wserr_clear(err);
        partial = 1;
        rc = cat_chain(g, p->snap->txid, reached, NULL, &p->chain, &p->nchain, &reached, err);
    }
    if (rc) return rc;
    size_t planned = p->nchain;
    if (t->kind == RESTORE_TIME && p->nchain > 0) {
        /* Keep the segments whose first commit is not after the time:
        ** binary search on their headers. A header that cannot be used
        ** ends the search; building then finds the cut by itself. */
        size_t lo = 0, hi = p->nchain; /* answer in [lo, hi): count to keep */
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            seg_header h;
            wserr e = {0};
            if (seg_header_of(st, cat, g, p->chain[mid], &h, &e) != 0) {
                lo = hi = p->nchain;
                break;
            }
            if (h.first_commit_ms <= t->time_ms)
                lo = mid + 1;
            else
                hi = mid;
        }
        p->nchain = lo;
        p->to_time_ms = t->time_ms;
    }
    p->to_txid = p->nchain ? p->chain[p->nchain - 1]->last : p->snap->txid;
    if (t->kind != RESTORE_TIME || (partial && p->nchain == planned)) p->to_txid = want;
    p->bytes = p->snap->size;
    for (size_t i = 0; i < p->nchain; i++)
        p->bytes += p->chain[i]->size;
    return 0;
}

/* ---- building ---------------------------------------------------------------- */
typedef struct undo_ent {
    uint32_t pgno;
    uint64_t old;
} undo_ent;

typedef struct builder {
    store *st;
    const restore_plan *p;
    const cat_gen *g;
    int fd;
    wback *wb; /* pages on their way to fd (created at the first page) */
    int parallel;
    ws_rolling *r;
    uint32_t pgsz;
    uint64_t txid;
    int64_t commit_ms;
    uint64_t file_pages; /* pages the file has now */
    restore_progress_fn progress;
    void *pctx;
    uint64_t done, total;
    restore_result *res;
    /* the open transaction */
    int in_tx;
    wsbuf stage;    /* (u32 pgno, page) records not written yet */
    int direct;     /* it outgrew the stage: its pages went straight to the file */
    undo_ent *undo; /* page hashes it changed, to roll back */
    size_t nundo, undo_cap;
    uint64_t tx_chk; /* checksum and size before it */
    uint32_t tx_pages;
    /* the segment being applied */
    const cat_seg *seg;
    uint64_t to;  /* apply up to this TXID */
    int time_cut; /* the time target falls in this segment: `to` is set from a scan */
    int finished; /* the target is reached: stop */
    /* refusals */
    uint8_t *seg_skip; /* per g->segs */
    uint8_t *jobv;     /* per chain job: the download check's verdict */
    const cat_seg **chain;
    wserr refusal;        /* the last object refused, for the final message */
    int restart;          /* a refused segment had given transactions: build again without it */
    int fail_in_tx;       /* the refused segment failed inside a transaction (not at its end) */
    uint8_t *snap_skip;   /* per g->snaps: refused snapshots */
    const cat_snap *base; /* the snapshot the image starts from */
} builder;

static void report(builder *b, uint64_t add) {
    b->done += add;
    if (b->progress) b->progress(b->pctx, b->done, b->total);
}

static int nomem(wserr *err) { return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory"); }

/* Writes a page, through the write-back cache: file_pages counts the pages
** the file has once the cache is flushed. */
static int write_at(builder *b, uint32_t pgno, const uint8_t *data, wserr *err) {
    if (b->wb && wback_page_size(b->wb) != b->pgsz) {
        int rc = wback_flush(b->wb, err);
        if (rc) return rc;
        wback_free(b->wb);
        b->wb = NULL;
    }
    if (b->wb == NULL && (b->wb = wback_new(b->fd, b->pgsz)) == NULL) return nomem(err);
    int rc = wback_put(b->wb, pgno, data, err);
    if (rc) return rc;
    if (pgno > b->file_pages) b->file_pages = pgno;
    return 0;
}

static int flush_pages(builder *b, wserr *err) { return b->wb ? wback_flush(b->wb, err) : 0; }

static int set_size(builder *b, uint32_t pages, wserr *err) {
    if (pages == b->file_pages) return 0;
    if (b->wb) wback_drop_above(b->wb, pages);
    if (ftruncate(b->fd, (off_t)pages * b->pgsz) != 0)
        return wserr_errno(err, wserr_from_errno(errno), errno, "resize restored database");
    b->file_pages = pages;
    return 0;
}

/* Records an object's refusal: counted, warned about, kept for the final
** message. Returns the error code. */
static int refuse(builder *b, int verdict, wserr *err) {
    if (verdict == V_NOT_OURS)
        b->res->ignored++;
    else if (verdict == V_GONE)
        b->res->gone++;
    else
        b->res->damaged++;
    WS_WARN("restore_object_refused", "why=\"%s\"", err->msg);
    b->refusal = *err;
    return err->code;
}

/* ---- the open transaction: staged pages and undo ---- */
static void tx_begin(builder *b) {
    b->in_tx = 1;
    b->stage.len = 0;
    b->direct = 0;
    b->nundo = 0;
    b->tx_chk = b->r->chk;
    b->tx_pages = b->r->db_pages;
    ws_rolling_begin(b->r);
}

static int undo_push(builder *b, uint32_t pgno, uint64_t old) {
    if (b->nundo == b->undo_cap) {
        size_t cap = b->undo_cap ? b->undo_cap * 2 : 1024;
        undo_ent *u = realloc(b->undo, cap * sizeof *u);
        if (u == NULL) return WALSHIP_ERR_NOMEM;
        b->undo = u;
        b->undo_cap = cap;
    }
    b->undo[b->nundo++] = (undo_ent){pgno, old};
    return 0;
}

/* Writes the staged pages (in order: a later copy of a page wins). */
static int stage_flush(builder *b, wserr *err) {
    size_t rec = 4 + (size_t)b->pgsz;
    for (size_t off = 0; off + rec <= b->stage.len; off += rec) {
        int rc = write_at(b, ws_get_be32(b->stage.p + off), b->stage.p + off + 4, err);
        if (rc) return rc;
    }
    b->stage.len = 0;
    return 0;
}

static int tx_page(builder *b, uint32_t pgno, const uint8_t *page, wserr *err) {
    if (undo_push(b, pgno, ws_rolling_get(b->r, pgno)) != 0 || ws_rolling_page(b->r, pgno, page))
        return nomem(err);
    if (!b->direct && b->stage.len + 4 + b->pgsz > STAGE_MAX) {
        int rc = stage_flush(b, err); /* too big to stage: it cannot be undone any more */
        if (rc) return rc;
        b->direct = 1;
    }
    if (b->direct) return write_at(b, pgno, page, err);
    uint8_t no[4];
    ws_put_be32(no, pgno);
    if (wsbuf_append(&b->stage, no, 4) != 0 || wsbuf_append(&b->stage, page, b->pgsz) != 0)
        return nomem(err);
    return 0;
}

/* Puts the page hashes back as they were before the open transaction. */
static void tx_rollback(builder *b) {
    ws_rolling *r = b->r;
    while (b->nundo > 0) {
        undo_ent *u = &b->undo[--b->nundo];
        if (u->pgno >= 1 && u->pgno <= r->cap) r->h[u->pgno - 1] = u->old;
    }
    r->chk = b->tx_chk;
    r->db_pages = b->tx_pages;
    r->tx_before = b->tx_pages;
    r->tx_max = 0;
    b->stage.len = 0;
    b->in_tx = 0;
}

/* Ends the open transaction: the checksum must be the recorded one, then
** its pages reach the file. A mismatch rolls it back (V_DAMAGED). */
static int tx_commit(builder *b, const seg_event *ev, int *verdict, wserr *err) {
    ws_rolling *r = b->r;
    uint32_t before = r->tx_before, hi = before > r->tx_max ? before : r->tx_max;
    for (uint32_t p = ev->db_pages + 1; p <= hi; p++) /* truncated */
        if (ws_rolling_get(r, p) != 0 && undo_push(b, p, ws_rolling_get(r, p)) != 0)
            return nomem(err);
    for (uint32_t p = before + 1; p <= ev->db_pages; p++) /* grown without a page */
        if (ws_rolling_get(r, p) == 0 && undo_push(b, p, 0) != 0) return nomem(err);
    if (ws_rolling_commit(r, ev->db_pages) != 0) return nomem(err);
    if (r->chk != ev->post_chk) {
        int direct = b->direct;
        tx_rollback(b);
        b->fail_in_tx = 1;
        *verdict = direct ? V_FATAL : V_DAMAGED;
        return wserr_set(err, WALSHIP_ERR_CORRUPT,
                         "segment %s: transaction %" PRIu64
                         " does not produce its recorded checksum (the object is damaged, or it "
                         "belongs to another history)%s",
                         b->seg->key, ev->txid,
                         direct ? "; its pages (over 16 MiB) were already written, so nothing can "
                                  "stand in for it"
                                : "");
    }
    int rc = stage_flush(b, err);
    if (rc == 0 && ev->db_pages < b->file_pages) rc = set_size(b, ev->db_pages, err);
    if (rc) return rc;
    b->in_tx = 0;
    b->txid = ev->txid;
    b->commit_ms = ev->commit_ms;
    return 0;
}

/* ---- segments ---- */

/* Judges a segment header against its key, generation and lineage, and
** the image being built. Returns 0 or the verdict's error. */
static int judge_header(const builder *b, const cat_seg *s, const seg_header *h, int *verdict,
                        wserr *err) {
    char why[WHY_MAX];
    int bad = cat_seg_header_belongs(b->p->cat, b->g, s, h, why, sizeof why);
    if (!bad && h->page_size != b->pgsz) {
        snprintf(why, sizeof why, "its page size %u is not the snapshot's %u", h->page_size,
                 b->pgsz);
        bad = 1;
    }
    if (!bad) return 0;
    *verdict = V_NOT_OURS;
    return wserr_set(err, WALSHIP_ERR_CORRUPT,
                     "segment %s is not part of this history (%s); it is ignored", s->key, why);
}

/* fetch_check_fn for segment downloads: the header, the moment it is in. */
static int check_segment(void *ctx, size_t job, const uint8_t *head, size_t n, wserr *err) {
    builder *b = ctx;
    const cat_seg *s = b->chain[job];
    seg_header h;
    int verdict = V_DAMAGED;
    int rc = seg_parse_header(head, n, &h, err);
    if (rc) wserr_prefix(err, "segment %s", s->key);
    if (rc == 0) rc = judge_header(b, s, &h, &verdict, err);
    if (rc) b->jobv[job] = (uint8_t)verdict;
    return rc;
}

/* Scans segment s (a second download, streaming) for the last TXID after
** b->txid committed at or before the time target; the current TXID if
** none. */
typedef struct scan {
    seg_stream *ss;
    int64_t max_ms;
    uint64_t after, cut;
} scan;

/* Feeds a piece to the scan and takes the commits it completes. */
static int scan_feed(scan *sc, const uint8_t *data, size_t n, int last, wserr *err) {
    seg_stream_feed(sc->ss, data, n, last);
    for (;;) {
        seg_event ev;
        int rc = seg_stream_next(sc->ss, &ev, err);
        if (rc) return rc;
        if (ev.type == SEG_EV_NEED || ev.type == SEG_EV_END) return 0;
        if (ev.type == SEG_EV_COMMIT && ev.txid > sc->after && ev.commit_ms <= sc->max_ms)
            sc->cut = ev.txid;
    }
}

static int scan_sink(void *ctx, const uint8_t *data, size_t n, wserr *err) {
    return scan_feed(ctx, data, n, 0, err);
}

static int time_cut(builder *b, const cat_seg *s, uint64_t *cut, int *verdict, wserr *err) {
    scan sc = {.max_ms = b->p->to_time_ms, .after = b->txid, .cut = b->txid};
    int rc = seg_stream_open(&sc.ss, err);
    if (rc) return rc;
    rc = store_get_stream(b->st, s->key, 0, 0, scan_sink, &sc, err);
    if (rc == 0) rc = scan_feed(&sc, NULL, 0, 1, err);
    seg_stream_free(sc.ss);
    if (rc == WALSHIP_ERR_CORRUPT || rc == WALSHIP_ERR_NOTFOUND) {
        *verdict = V_DAMAGED;
        return wserr_prefix(err, "segment %s", s->key);
    }
    *cut = sc.cut;
    return rc;
}

/* Applies the events the decoder has for the segment being read, until it
** wants input. *state: 0 going on, 1 the segment ended (or the target was
** reached in it). */
static int pump(builder *b, seg_stream *ss, int *state, int *verdict, wserr *err) {
    const cat_seg *s = b->seg;
    for (;;) {
        seg_event ev;
        int rc = seg_stream_next(ss, &ev, err);
        if (rc) {
            *verdict = V_DAMAGED;
            return wserr_prefix(err, "segment %s", s->key);
        }
        switch (ev.type) {
        case SEG_EV_NEED: return 0;
        case SEG_EV_END:
            *state = 1;
            if (b->time_cut || b->txid >= b->p->to_txid) b->finished = 1;
            return 0;
        case SEG_EV_HEADER: {
            const seg_header *h = seg_stream_header(ss);
            if ((rc = judge_header(b, s, h, verdict, err))) return rc;
            if (h->first_txid == b->txid + 1 && h->pre_chk != b->r->chk) {
                *verdict = V_DAMAGED;
                return wserr_set(err, WALSHIP_ERR_CORRUPT,
                                 "segment %s does not follow transaction %" PRIu64
                                 " (checksum mismatch: history out of order)",
                                 s->key, b->txid);
            }
            if (b->p->to_time_ms != INT64_MAX && h->last_commit_ms > b->p->to_time_ms) {
                uint64_t cut = b->txid;
                if ((rc = time_cut(b, s, &cut, verdict, err))) return rc;
                if (cut < b->to) b->to = cut;
                b->time_cut = 1;
            }
            break;
        }
        case SEG_EV_BEGIN:
            if (ev.txid > b->to) { /* target reached */
                *state = 1;
                b->finished = 1;
                return 0;
            }
            if (ev.txid > b->txid) tx_begin(b);
            break;
        case SEG_EV_PAGE:
            if (b->in_tx && (rc = tx_page(b, ev.pgno, ev.page, err))) return rc;
            break;
        case SEG_EV_COMMIT:
            if (!b->in_tx) {
                if (ev.txid == b->txid && ev.post_chk != b->r->chk) {
                    *verdict = V_DAMAGED;
                    return wserr_set(err, WALSHIP_ERR_CORRUPT,
                                     "segment %s disagrees with the history before it at TXID "
                                     "%" PRIu64,
                                     s->key, ev.txid);
                }
                break;
            }
            if ((rc = tx_commit(b, &ev, verdict, err))) return rc;
            break;
        }
    }
}

/* Streams chain job `job` (segment s) from the fetcher and applies it. */
static int apply_segment(builder *b, fetcher *fe, size_t job, const cat_seg *s, int *verdict,
                         wserr *err) {
    seg_stream *ss = NULL;
    wsbuf piece = {0};
    int rc = seg_stream_open(&ss, err), state = 0, eof = 0;
    b->seg = s;
    b->to = b->p->to_txid;
    b->time_cut = 0;
    b->fail_in_tx = 0;
    *verdict = V_FATAL;
    while (rc == 0 && state == 0) {
        wserr e = {0};
        rc = fetch_read(fe, job, &piece, &eof, &e);
        if (rc) {
            *err = e;
            if (b->jobv[job]) {
                *verdict = b->jobv[job];
            } else if (rc == WALSHIP_ERR_CORRUPT) {
                *verdict = V_DAMAGED;
                wserr_prefix(err, "segment %s", s->key);
            } else if (rc == WALSHIP_ERR_NOTFOUND) {
                int gone = catalog_object_gone(b->st, s->key);
                *verdict = gone ? V_GONE : V_DAMAGED;
                rc = wserr_set(err, WALSHIP_ERR_CORRUPT, "segment %s %s", s->key,
                               gone ? "was deleted since the listing"
                                    : "cannot be read (not a regular file, or unreadable)");
            } else {
                wserr_prefix(err, "segment %s", s->key);
            }
            break;
        }
        seg_stream_feed(ss, piece.p, piece.len, eof);
        rc = pump(b, ss, &state, verdict, err);
        if (rc == 0 && eof && state == 0) { /* cannot happen: the last piece ends the walk */
            *verdict = V_DAMAGED;
            rc = wserr_set(err, WALSHIP_ERR_CORRUPT, "segment %s ends early", s->key);
        }
    }
    if (rc && b->in_tx) {
        b->fail_in_tx = 1;
        if (b->direct && *verdict != V_FATAL) {
            *verdict = V_FATAL;
            wserr_prefix(err, "(a transaction over 16 MiB was part-written, so nothing can stand "
                              "in for this object)");
        }
        tx_rollback(b);
    }
    if (state) fetch_drop(fe, job); /* the target was reached inside it */
    wsbuf_free(&piece);
    seg_stream_free(ss);
    if (rc == 0) {
        b->res->nsegments++;
        report(b, s->size);
    }
    return rc;
}

/* After segment s was refused at b->txid, having started it at `start`:
** plans a chain without it, from where it is possible. Returns 0 when
** building can go on (b->restart set if it must start over because s had
** already given transactions that now need another source), or the failure,
** with the refused object's own message first and the newest TXID that can
** be restored: as far as the other segments reach, or as far as s itself
** goes before the transaction that failed (a restore to a TXID stops
** reading a segment there; one that failed at its end could not be read to
** its last transaction). */
static int route_around(builder *b, const cat_seg *s, uint64_t start, wserr *err) {
    const cat_seg **chain = NULL;
    size_t n = 0;
    uint64_t from = b->txid > start ? start : b->txid, reached;
    wserr e = {0};
    b->seg_skip[s - b->g->segs] = 1;
    int rc = cat_chain(b->g, from, b->p->to_txid, b->seg_skip, &chain, &n, &reached, &e);
    free(chain);
    if (rc == WALSHIP_ERR_NOTFOUND) {
        wserr_set(err, WALSHIP_ERR_CORRUPT,
                  "%s; no other segment holds transaction %" PRIu64 " of generation %016" PRIx64,
                  b->refusal.msg, reached + 1, b->g->id);
        uint64_t own = b->txid > start && !b->fail_in_tx ? b->txid - 1 : b->txid;
        return add_restorable(err, WALSHIP_ERR_CORRUPT, own > reached ? own : reached);
    }
    if (rc) {
        *err = e;
        return rc;
    }
    if (b->txid > start) {
        WS_WARN("restore_start_over",
                "segment=\"%s\" why=\"it had given transactions %" PRIu64 "..%" PRIu64
                " before it failed; other segments hold them\"",
                s->key, start + 1, b->txid);
        b->restart = 1;
    } else {
        WS_WARN("restore_route_around",
                "segment=\"%s\" from_txid=%" PRIu64 " (other segments hold its transactions)",
                s->key, from + 1);
    }
    return 0;
}

/* Applies segments from b->txid to the plan's target, planning the chain
** again without a segment each time one is refused. */
static int build_segments(builder *b, wserr *err) {
    const restore_plan *p = b->p;
    int rc = 0;
    while (rc == 0 && !b->finished && !b->restart && b->txid < p->to_txid) {
        const cat_seg **chain = NULL;
        size_t n = 0;
        uint64_t reached;
        rc = cat_chain(b->g, b->txid, p->to_txid, b->seg_skip, &chain, &n, &reached, err);
        if (rc == WALSHIP_ERR_NOTFOUND && reached > b->txid) {
            /* apply what can be reached; the gap fails the next round */
            wserr_clear(err);
            rc = cat_chain(b->g, b->txid, reached, b->seg_skip, &chain, &n, &reached, err);
        }
        if (rc) return add_restorable(err, rc, reached);
        fetch_job *jobs = calloc(n, sizeof *jobs);
        uint8_t *jobv = calloc(n, 1);
        fetcher *fe = NULL;
        if (jobs == NULL || jobv == NULL) {
            rc = nomem(err);
        } else {
            for (size_t i = 0; i < n; i++)
                jobs[i] = (fetch_job){chain[i]->key, 0, 0, 0};
            b->chain = chain;
            b->jobv = jobv;
            fetch_opts fo = {.threads = b->parallel,
                             .check_len = SEG_HEADER_SIZE,
                             .check = check_segment,
                             .check_ctx = b};
            rc = fetch_start(b->st, jobs, n, &fo, &fe, err);
        }
        for (size_t i = 0; rc == 0 && i < n && !b->finished && b->txid < p->to_txid; i++) {
            int verdict;
            uint64_t start = b->txid;
            rc = apply_segment(b, fe, i, chain[i], &verdict, err);
            if (rc && verdict != V_FATAL) {
                refuse(b, verdict, err);
                rc = route_around(b, chain[i], start, err);
                break; /* plan again from here (or start over) */
            }
        }
        fetch_free(fe);
        b->chain = NULL;
        b->jobv = NULL;
        free(jobv);
        free(jobs);
        free(chain);
    }
    return rc;
}

/* ---- the snapshot ---- */

/* Checks the snapshot's 32-byte file header against its footer. */
static int check_file_header(const cat_snap *s, const uint8_t *h, size_t n, wserr *err) {
    if (n < SNAP_FILE_HDR_SIZE || memcmp(h, SNAP_MAGIC, 8) != 0 ||
        ws_get_be32(h + 8) != SNAP_VERSION || ws_get_be32(h + 12) != s->f.page_size ||
        ws_get_be64(h + 16) != s->f.generation || ws_get_be64(h + 24) != s->f.db_id)
        return wserr_set(err, WALSHIP_ERR_CORRUPT,
                         "snapshot %s: its file header does not match its footer (the object is "
                         "damaged)",
                         s->key);
    return 0;
}

/* Writes one decoded chunk into the image. */
static int apply_chunk(builder *b, const snap_chunk *c, const wsbuf *u, wserr *err) {
    uint32_t ps = b->pgsz;
    if (c->kind == SNAP_CHUNK_BASE) {
        int rc = flush_pages(b, err); /* held pages are older: written first */
        if (rc) return rc;
        if (ws_pwrite_all(b->fd, u->p, u->len, (off_t)(c->first_pgno - 1) * ps))
            return wserr_errno(err, wserr_from_errno(errno), errno, "write restored database");
        for (uint32_t k = 0; k < c->count; k++) {
            uint32_t p = c->first_pgno + k;
            if (ws_rolling_set(b->r, p, ws_page_hash(p, u->p + (size_t)k * ps, ps)))
                return nomem(err);
        }
        if (c->first_pgno + c->count - 1 > b->file_pages)
            b->file_pages = c->first_pgno + c->count - 1;
        return 0;
    }
    for (uint32_t k = 0; k < c->count; k++) {
        const uint8_t *rec = u->p + (size_t)k * (4 + ps);
        uint32_t p = ws_get_be32(rec);
        int rc = write_at(b, p, rec + 4, err);
        if (rc) return rc;
        if (ws_rolling_set(b->r, p, ws_page_hash(p, rec + 4, ps))) return nomem(err);
    }
    return 0;
}

/* Builds the image of snapshot s into the (empty) file. A failure that is
** the object's (damaged, unreadable, gone) sets *verdict to V_DAMAGED. */
static int build_snapshot(builder *b, const cat_snap *s, int *verdict, wserr *err) {
    const snap_footer *f = &s->f;
    wsbuf ib = {0}, cbuf = {0}, ubuf = {0};
    snap_chunk *chunks = NULL;
    fetch_job *jobs = NULL;
    fetcher *fe = NULL;
    int local = 0; /* the failure is ours: writing the image, memory */
    *verdict = V_FATAL;
    uint64_t ilen = (uint64_t)f->index_count * SNAP_INDEX_ENTRY_SIZE;
    int rc = ilen ? store_get_range(b->st, s->key, f->index_off, ilen, &ib, err) : 0;
    if (rc == 0) rc = snap_parse_index(ib.p, ib.len, f, s->size, &chunks, err);
    if (rc) goto out;
    b->pgsz = f->page_size;
    b->r->page_size = f->page_size;
    jobs = calloc(f->index_count ? f->index_count : 1, sizeof *jobs);
    if (jobs == NULL) {
        rc = nomem(err);
        goto out;
    }
    /* The first job starts at 0: the file header comes with it. */
    for (uint32_t i = 0; i < f->index_count; i++)
        jobs[i] = (fetch_job){s->key, i ? chunks[i].offset : 0,
                              chunks[i].clen + (i ? 0 : chunks[i].offset), 0};
    fetch_opts fo = {.threads = b->parallel};
    if (f->index_count > 0) {
        rc = fetch_start(b->st, jobs, f->index_count, &fo, &fe, err);
    } else {
        rc = store_get_range(b->st, s->key, 0, SNAP_FILE_HDR_SIZE, &cbuf, err);
        if (rc == 0) rc = check_file_header(s, cbuf.p, cbuf.len, err);
    }
    for (uint32_t i = 0; rc == 0 && i < f->index_count; i++) {
        const snap_chunk *c = &chunks[i];
        if ((rc = fetch_take(fe, i, &cbuf, err))) break;
        size_t skip = i ? 0 : (size_t)c->offset;
        if (i == 0 && (rc = check_file_header(s, cbuf.p, cbuf.len, err))) break;
        rc = snap_decode_chunk(c, cbuf.p + skip, cbuf.len - skip, f->page_size, &ubuf, err);
        if (rc) {
            wserr_prefix(err, "snapshot %s chunk %u", s->key, i);
            break;
        }
        if ((rc = apply_chunk(b, c, &ubuf, err))) local = 1;
        report(b, c->clen);
    }
    if (rc) goto out;
    /* The image: pages 1..db_pages; pages the snapshot never wrote are zero. */
    local = 1;
    for (uint32_t p = 1; p <= f->db_pages; p++)
        if (ws_rolling_get(b->r, p) == 0 &&
            ws_rolling_set(b->r, p, ws_zero_page_hash(p, f->page_size))) {
            rc = nomem(err);
            goto out;
        }
    for (uint32_t p = f->db_pages + 1; p <= b->r->cap; p++)
        b->r->h[p - 1] = 0;
    b->r->db_pages = f->db_pages;
    b->r->tx_before = f->db_pages;
    if ((rc = set_size(b, f->db_pages, err))) goto out;
    local = 0;
    b->r->chk = ws_rolling_recompute(b->r);
    if (b->r->chk != f->chk) {
        rc = wserr_set(err, WALSHIP_ERR_CORRUPT,
                       "snapshot %s does not match its checksum (the object is damaged)", s->key);
        goto out;
    }
    b->txid = f->txid;
    b->commit_ms = f->commit_ms;
out:
    if (rc == WALSHIP_ERR_CORRUPT && !local) {
        *verdict = V_DAMAGED;
        if (strncmp(err->msg, "snapshot ", 9) != 0) wserr_prefix(err, "snapshot %s", s->key);
    } else if (rc == WALSHIP_ERR_NOTFOUND && !local) {
        int gone = catalog_object_gone(b->st, s->key);
        *verdict = gone ? V_GONE : V_DAMAGED;
        rc = wserr_set(err, WALSHIP_ERR_CORRUPT, "snapshot %s %s", s->key,
                       gone ? "was deleted since the listing"
                            : "cannot be read (not a regular file, or unreadable)");
    }
    fetch_free(fe);
    wsbuf_free(&ib);
    wsbuf_free(&cbuf);
    wsbuf_free(&ubuf);
    free(jobs);
    free(chunks);
    return rc;
}

/* Forgets everything built so far (to start over from another snapshot). */
static int reset_image(builder *b, wserr *err) {
    if (b->wb) wback_clear(b->wb);
    if (ftruncate(b->fd, 0) != 0)
        return wserr_errno(err, wserr_from_errno(errno), errno, "reset restored database");
    b->file_pages = 0;
    if (b->r->h) memset(b->r->h, 0, (size_t)b->r->cap * sizeof *b->r->h);
    b->r->db_pages = b->r->tx_before = b->r->tx_max = 0;
    b->r->chk = 0;
    return 0;
}

/* Builds from the plan's snapshot (or the one used last), or from an older
** one when it is refused. */
static int build_base(builder *b, wserr *err) {
    const restore_plan *p = b->p;
    const cat_snap *s = b->base ? b->base : p->snap;
    int rc;
    for (;;) {
        int verdict;
        rc = build_snapshot(b, s, &verdict, err);
        if (rc == 0 || verdict == V_FATAL) break;
        refuse(b, verdict, err);
        b->snap_skip[s - b->g->snaps] = 1;
        wserr e = {0};
        const cat_snap *older = NULL;
        if (pick_snapshot(b->g, p->to_txid, p->to_time_ms, b->snap_skip, &older, &e) != 0) {
            rc = wserr_set(err, WALSHIP_ERR_CORRUPT,
                           "%s, and generation %016" PRIx64
                           " has no other snapshot at or before the target to start from (run "
                           "`walship generations` to see what else is retained)",
                           b->refusal.msg, b->g->id);
            break;
        }
        if ((rc = reset_image(b, err))) break;
        s = older;
    }
    if (rc == 0) b->base = s;
    return rc;
}

int restore_build(store *st, const restore_plan *p, int fd, int parallel, ws_rolling *r,
                  restore_result *res, restore_progress_fn progress, void *pctx, wserr *err) {
    memset(res, 0, sizeof *res);
    builder b = {.st = st,
                 .p = p,
                 .g = p->gen,
                 .fd = fd,
                 .r = r,
                 .res = res,
                 .parallel = parallel > 0 ? parallel : DEFAULT_PARALLEL,
                 .progress = progress,
                 .pctx = pctx,
                 .total = p->bytes};
    b.seg_skip = calloc(p->gen->nsegs ? p->gen->nsegs : 1, 1);
    b.snap_skip = calloc(p->gen->nsnaps ? p->gen->nsnaps : 1, 1);
    int rc = b.seg_skip && b.snap_skip ? 0 : nomem(err);
    while (rc == 0) {
        rc = build_base(&b, err);
        if (rc == 0) rc = build_segments(&b, err);
        if (rc || !b.restart) break;
        /* a refused segment had given transactions: again, without it */
        b.restart = 0;
        b.finished = 0;
        b.txid = 0;
        b.done = 0;
        res->nsegments = 0;
        rc = reset_image(&b, err);
    }
    if (rc == 0 && b.txid < p->to_txid && p->to_time_ms == INT64_MAX)
        rc = wserr_set(err, WALSHIP_ERR_NOTFOUND,
                       "the store's objects end at transaction %" PRIu64 ", before %" PRIu64,
                       b.txid, p->to_txid);
    if (rc == 0) rc = set_size(&b, r->db_pages, err);
    if (rc == 0) rc = flush_pages(&b, err);
    if (rc == 0) {
        res->generation = p->gen->id;
        res->txid = b.txid;
        res->commit_ms = b.commit_ms;
        res->page_size = b.pgsz;
        res->db_pages = r->db_pages;
        res->chk = r->chk;
        res->bytes = p->bytes;
    }
    free(b.seg_skip);
    free(b.snap_skip);
    free(b.undo);
    wsbuf_free(&b.stage);
    wback_free(b.wb);
    return rc;
}
