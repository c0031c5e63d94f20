/*
** apply.c -- applying downloaded segments: each transaction's pages become
** WAL frames and wal-index entries (walindex.h), checked against the
** primary's rolling checksum and rolled back per segment on failure; the
** write lock and foreign writes; publishing (with the crash tests' fault
** injection).
*/
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "../common/util.h"
#include "../format/objfmt.h"
#include "replica_impl.h"

#define PUBLISH_FRAMES 8192 /* publish within a batch after this many frames */

/* Where a segment's application started, to roll back to. */
typedef struct rep_mark {
    uint64_t chk;
    uint32_t db_pages;
    uint64_t txid;
    int64_t commit_ms;
    walapp_savepoint sp;
} rep_mark;

/* ---- rolling-checksum undo -------------------------------------------------------- */
static int undo_push(replica *r, uint32_t pgno, uint64_t old) {
    if (r->nundo == r->undo_cap) {
        size_t cap = r->undo_cap ? r->undo_cap * 2 : 1024;
        undo_ent *u = realloc(r->undo, cap * sizeof *u);
        if (u == NULL) return WALSHIP_ERR_NOMEM;
        r->undo = u;
        r->undo_cap = cap;
    }
    r->undo[r->nundo++] = (undo_ent){pgno, old};
    return 0;
}

static void mark_get(replica *r, rep_mark *m) {
    r->nundo = 0;
    m->chk = r->roll.chk;
    m->db_pages = r->roll.db_pages;
    m->txid = r->txid;
    m->commit_ms = r->commit_ms;
    walapp_savepoint_get(r->app, &m->sp);
    memcpy(r->page1_mark, r->page1, r->page_size);
}

static void mark_rollback(replica *r, const rep_mark *m) {
    while (r->nundo > 0) {
        undo_ent *u = &r->undo[--r->nundo];
        if (u->pgno >= 1 && u->pgno <= r->roll.cap) r->roll.h[u->pgno - 1] = u->old;
    }
    r->roll.chk = m->chk;
    r->roll.db_pages = m->db_pages;
    r->roll.tx_before = m->db_pages;
    r->roll.tx_max = 0;
    r->txid = m->txid;
    r->commit_ms = m->commit_ms;
    memcpy(r->page1, r->page1_mark, r->page_size);
    walapp_rollback_to(r->app, &m->sp);
}

/* ---- applying one segment --------------------------------------------------------- */
/* Where the walk of one segment stands. */
typedef struct seg_apply {
    const seg_ref *s;
    int skipping, in_tx;
    uint32_t tx_frames;
    uint64_t mismatch_txid; /* a transaction did not give its checksum: read on, then say so */
    uint64_t *ntx, *npages;
} seg_apply;

/* The segment's header, the moment it arrived: it must be this history's
** (key, generation, page size, database id, the owner's lineage) and start
** from the replica's state. */
static int apply_header(replica *r, seg_apply *a, const seg_header *h, int *kind, wserr *err) {
    char why[240];
    cat_seg key = {.first = a->s->first, .last = a->s->last, .key = a->s->key};
    int foreign = cat_seg_header_belongs(&r->ident, &r->gen_ident, &key, h, why, sizeof why);
    if (!foreign && h->page_size != r->page_size) {
        snprintf(why, sizeof why, "its page size %u is not the replica's %u", h->page_size,
                 r->page_size);
        foreign = 1;
    }
    if (foreign) {
        *kind = KIND_FOREIGN;
        return wserr_set(err, WALSHIP_ERR_CORRUPT,
                         "segment %s is not part of this history (%s); it is ignored", a->s->key,
                         why);
    }
    if (h->first_txid == r->txid + 1 && h->pre_chk != r->roll.chk) {
        *kind = KIND_DIVERGED;
        return wserr_set(err, WALSHIP_ERR_CORRUPT,
                         "segment %s starts from a database that differs from the replica's at "
                         "TXID %" PRIu64 " (checksum mismatch)",
                         a->s->key, r->txid);
    }
    if (h->first_txid > r->txid + 1) {
        *kind = KIND_CORRUPT;
        return wserr_set(err, WALSHIP_ERR_STATE, "segment %s does not follow TXID %" PRIu64,
                         a->s->key, r->txid);
    }
    rep_status_lock(r);
    r->first_unapplied_ms = h->first_commit_ms; /* for lag */
    rep_status_unlock(r);
    return 0;
}

/* Applies one event of the segment. */
static int apply_event(replica *r, seg_apply *a, const seg_event *ev, int *kind, wserr *err) {
    int rc = 0;
    if (a->mismatch_txid) return 0; /* reading on only to tell damage from divergence */
    if (ev->type == SEG_EV_BEGIN) {
        a->skipping = ev->txid <= r->txid;
        if (!a->skipping && ev->txid != r->txid + 1) {
            *kind = KIND_CORRUPT;
            return wserr_set(err, WALSHIP_ERR_CORRUPT,
                             "segment %s: transaction %" PRIu64 " follows %" PRIu64 " (gap)",
                             a->s->key, ev->txid, r->txid);
        }
        if (!a->skipping) {
            ws_rolling_begin(&r->roll);
            a->in_tx = 1;
            a->tx_frames = 0;
        }
    } else if (ev->type == SEG_EV_PAGE) {
        if (a->skipping) return 0;
        if (undo_push(r, ev->pgno, ws_rolling_get(&r->roll, ev->pgno)) != 0 ||
            ws_rolling_page(&r->roll, ev->pgno, ev->page) != 0) {
            *kind = KIND_LOCAL;
            return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
        }
        if ((rc = walapp_page(r->app, ev->pgno, ev->page, err))) {
            *kind = KIND_LOCAL;
            return rc;
        }
        if (ev->pgno == 1) memcpy(r->page1, ev->page, r->page_size);
        a->tx_frames++;
    } else if (ev->type == SEG_EV_COMMIT) {
        if (a->skipping) {
            if (ev->txid == r->txid && ev->post_chk != r->roll.chk) a->mismatch_txid = ev->txid;
            return 0;
        }
        ws_rolling *ro = &r->roll;
        uint32_t before = ro->tx_before, hi = before > ro->tx_max ? before : ro->tx_max;
        /* Pages the database grows by without a frame read as zeros on
        ** the primary (rolling.h); write them, or SQLite could find an
        ** older frame of the page in this WAL. */
        for (uint32_t p = before + 1; p <= ev->db_pages && rc == 0; p++) {
            if (ws_rolling_get(ro, p) != 0) continue;
            if ((rc = walapp_page(r->app, p, r->zero, err))) *kind = KIND_LOCAL;
            a->tx_frames++;
            if (undo_push(r, p, 0) != 0) {
                *kind = KIND_LOCAL;
                rc = wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
            }
        }
        for (uint32_t p = ev->db_pages + 1; p <= hi && rc == 0; p++) {
            uint64_t old = ws_rolling_get(ro, p);
            if (old != 0 && undo_push(r, p, old) != 0) {
                *kind = KIND_LOCAL;
                rc = wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
            }
        }
        if (rc) return rc;
        if (ws_rolling_commit(ro, ev->db_pages) != 0) {
            *kind = KIND_LOCAL;
            return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
        }
        a->in_tx = 0;
        if (ro->chk != ev->post_chk) {
            a->mismatch_txid = ev->txid;
            return 0;
        }
        /* SQLite commits always carry a frame; keep one per
        ** transaction even if a segment held none (page 1 again). */
        if (a->tx_frames == 0 && (rc = walapp_page(r->app, 1, r->page1, err))) {
            *kind = KIND_LOCAL;
            return rc;
        }
        if ((rc = walapp_commit(r->app, ev->db_pages, err))) {
            *kind = KIND_LOCAL;
            return rc;
        }
        r->txid = ev->txid;
        r->commit_ms = ev->commit_ms;
        (*a->ntx)++;
        *a->npages += a->tx_frames;
    }
    return 0;
}

/* Applies the transactions after r->txid of segment s, which streams in
** as fetcher job `job` (bounded memory whatever its size). On failure
** *kind says what kind of failure it was; the caller rolls back to its
** mark. */
static int apply_segment(replica *r, const seg_ref *s, fetcher *fe, size_t job, int *kind,
                         uint64_t *ntx, uint64_t *npages, wserr *err) {
    *kind = KIND_NONE;
    seg_apply a = {.s = s, .skipping = 1, .ntx = ntx, .npages = npages};
    seg_stream *ss = NULL;
    wsbuf piece = {0};
    int rc = seg_stream_open(&ss, err), eof = 0, ended = 0;
    if (rc) *kind = KIND_LOCAL;
    while (rc == 0 && !ended) {
        wserr e = {0};
        rc = fetch_read(fe, job, &piece, &eof, &e);
        if (rc) {
            /* the header check's verdict; else damaged or gone (refused for
            ** a while), or the store failing (retried) */
            *err = e;
            if (r->jobv[job]) {
                *kind = r->jobv[job];
            } else {
                *kind = rc == WALSHIP_ERR_CORRUPT || rc == WALSHIP_ERR_NOTFOUND ? KIND_CORRUPT
                                                                               : KIND_STORE;
                /* Deleted since the listing (retention, say) is not damage. */
                if (rc == WALSHIP_ERR_NOTFOUND && catalog_object_gone(r->st, s->key))
                    *kind = KIND_GONE;
                wserr_prefix(err, "download %s", s->key);
            }
            break;
        }
        seg_stream_feed(ss, piece.p, piece.len, eof);
        for (;;) {
            seg_event ev;
            if ((rc = seg_stream_next(ss, &ev, err))) {
                *kind = KIND_CORRUPT;
                wserr_prefix(err, "segment %s", s->key);
                break;
            }
            if (ev.type == SEG_EV_NEED) break;
            if (ev.type == SEG_EV_END) {
                ended = 1;
                break;
            }
            rc = ev.type == SEG_EV_HEADER ? apply_header(r, &a, seg_stream_header(ss), kind, err)
                                          : apply_event(r, &a, &ev, kind, err);
            if (rc) break;
        }
        if (rc == 0 && eof && !ended) { /* the last piece always ends the walk */
            *kind = KIND_CORRUPT;
            rc = wserr_set(err, WALSHIP_ERR_CORRUPT, "segment %s ends early", s->key);
        }
    }
    wsbuf_free(&piece);
    seg_stream_free(ss);
    if (rc == 0 && a.in_tx && !a.mismatch_txid) {
        *kind = KIND_CORRUPT;
        rc = wserr_set(err, WALSHIP_ERR_CORRUPT, "segment %s ends inside a transaction", s->key);
    }
    if (rc == 0 && a.mismatch_txid) {
        *kind = KIND_DIVERGED;
        rc = wserr_set(err, WALSHIP_ERR_CORRUPT,
                       "transaction %" PRIu64 " of segment %s does not produce the checksum the "
                       "primary recorded: the replica's database differs from the primary's",
                       a.mismatch_txid, s->key);
    }
    return rc;
}

/* ---- the write lock and foreign writes ------------------------------------------- */
int rep_hdr_same(const walidx_hdr *a, const walidx_hdr *b) {
    return memcmp(a, b, sizeof *a) == 0;
}

/* Another process's TRUNCATE checkpoint (or RESTART+TRUNCATE on an empty
** WAL): mxFrame 0 and new salts, but no commit (same change counter, size
** and frame checksum). */
int rep_hdr_truncated(const walidx_hdr *known, const walidx_hdr *now) {
    return now->mx_frame == 0 && now->change == known->change && now->n_page == known->n_page &&
           now->frame_cksum[0] == known->frame_cksum[0] &&
           now->frame_cksum[1] == known->frame_cksum[1];
}

static void foreign_write(replica *r, const walidx_hdr *now) {
    char msg[400];
    snprintf(msg, sizeof msg,
             "someone wrote to the replica %.120s (its WAL changed from frame %u to %u, change "
             "counter %u to %u, outside walship); readers must open it read-only "
             "(file:...?mode=ro). Replacing its content with the primary's",
             r->path, r->known.mx_frame, now->mx_frame, r->known.change, now->change);
    rep_status_lock(r);
    r->status.foreign_writes++;
    rep_status_unlock(r);
    rep_report(r, WS_LOG_ERROR, "replica_foreign_write", msg);
    r->phase = PHASE_REBOOTSTRAP;
    snprintf(r->rebootstrap_why, sizeof r->rebootstrap_why, "foreign write");
}

/* Takes WRITE and checks the header against what this process published.
** Returns 0 with the lock held; WALSHIP_ERR_BUSY (lock held elsewhere);
** WALSHIP_ERR_STATE after detecting a foreign write (phase changed); or
** another error. */
int rep_lock_write(replica *r, walapp_info *info, int check_foreign, wserr *err) {
    int rc = walapp_begin(r->app, info, err);
    if (rc == WALSHIP_ERR_STATE) {
        /* A torn header: a writer died mid-update. A read through our
        ** connection lets SQLite rebuild the index from the WAL. */
        rep_sql_exec(r, "SELECT count(*) FROM sqlite_master", NULL, NULL);
        rc = walapp_begin(r->app, info, err);
        if (rc == 0 && r->have_known && !rep_hdr_same(&r->known, &info->hdr)) {
            /* Rebuilt by recovery: the change counter restarts at 0. The
            ** content is whatever the WAL holds; hash it to know. */
            walapp_end(r->app);
            r->phase = PHASE_RESUME;
            return wserr_set(err, WALSHIP_ERR_STATE, "the replica's wal-index was rebuilt");
        }
    }
    if (rc) return rc;
    if (check_foreign && r->have_known && !rep_hdr_same(&r->known, &info->hdr)) {
        if (rep_hdr_truncated(&r->known, &info->hdr)) {
            r->known = info->hdr;
        } else {
            walapp_end(r->app);
            foreign_write(r, &info->hdr);
            return wserr_set(err, WALSHIP_ERR_STATE, "foreign write");
        }
    }
    return 0;
}

/* Fault injection for the crash tests: WALSHIP_REPLICA_FAULT=POINT:N
** kills this process with SIGKILL at POINT of the Nth publish:
**   frames     frames written, not yet synced or published
**   header     between the two wal-index header copies (a torn header)
**   published  header written, position not yet recorded
** Unset (always, outside tests) it costs one branch per publish. */
static int fault_point = -1; /* 0: not configured */
static long fault_count;

static void fault_check(int point) {
    if (fault_point == 0) return;
    if (fault_point < 0) {
        const char *v = getenv("WALSHIP_REPLICA_FAULT");
        fault_point = 0;
        if (v == NULL) return;
        const char *c = strchr(v, ':');
        fault_count = c ? strtol(c + 1, NULL, 10) : 1;
        if (strncmp(v, "frames", 6) == 0) fault_point = 1;
        if (strncmp(v, "header", 6) == 0) fault_point = 2;
        if (strncmp(v, "published", 9) == 0) fault_point = 3;
        if (fault_point) walapp_set_fault_hook(fault_point == 2 ? fault_check : NULL);
        return;
    }
    if (point != fault_point) return;
    if (--fault_count <= 0) {
        WS_WARN("replica_fault_injected", "point=%d", point);
        raise(SIGKILL);
    }
}

/* Publishes what is committed, and records it. */
int rep_publish(replica *r, wserr *err) {
    if (walapp_pending_commits(r->app) == 0) return 0;
    if (fault_point) {
        fault_check(0);
        walapp_flush(r->app, NULL);
        fault_check(1);
    }
    int rc = walapp_publish(r->app, err);
    if (rc) return rc;
    r->known = *walapp_hdr(r->app);
    r->have_known = 1;
    r->last_publish_ms = ws_mono_ms();
    if (fault_point) fault_check(3);
    if (r->just_restarted) {
        r->just_restarted = 0;
        if (walapp_limit_size(r->app, r->o.wal_limit_bytes, err) != 0)
            WS_WARN("replica_wal_limit_failed", "replica=%s err=\"%s\"", r->path, err->msg);
        wserr_clear(err);
    }
    rep_status_lock(r);
    r->status.generation = r->gen;
    r->status.applied_txid = r->txid;
    r->status.applied_commit_ms = r->commit_ms;
    r->status.last_apply_ms = ws_now_ms();
    r->status.wal_frames = r->known.mx_frame;
    rep_status_unlock(r);
    return 0;
}

/* ---- a batch ------------------------------------------------------------------- */
/* Applies the chain's segments, streaming in from fe, under one hold of
** the write lock. */
int rep_apply_batch(replica *r, const seg_ref *const *chain, fetcher *fe, size_t n,
                    size_t *applied, wserr *err) {
    *applied = 0;
    walapp_info info;
    int rc = rep_lock_write(r, &info, 1, err);
    if (rc == WALSHIP_ERR_BUSY) {
        if (++r->busy_rounds % 25 == 0)
            rep_report(r, WS_LOG_WARN, "replica_write_lock_busy", err->msg);
        return 0;
    }
    if (rc) return rc == WALSHIP_ERR_STATE ? 0 : rc;
    r->busy_rounds = 0;
    if (info.n_backfill == info.hdr.mx_frame && info.hdr.mx_frame >= r->o.ckpt_frames &&
        walapp_try_restart(r->app, err) == 1) {
        r->known = info.hdr;
        walidx_hdr now_hdr;
        if (walapp_peek(r->app, &now_hdr, NULL) == 0) r->known = now_hdr;
        r->just_restarted = 1;
        rep_status_lock(r);
        r->status.wal_restarts++;
        rep_status_unlock(r);
        if ((rc = rep_state_save(r, 1, NULL, err))) {
            walapp_end(r->app);
            return rc;
        }
    }
    uint64_t ntx = 0, npages = 0;
    for (size_t i = 0; i < n; i++) {
        rep_mark m;
        mark_get(r, &m);
        int kind = KIND_NONE;
        uint64_t tx0 = ntx, pg0 = npages;
        rc = apply_segment(r, chain[i], fe, i, &kind, &ntx, &npages, err);
        if (rc) {
            mark_rollback(r, &m);
            ntx = tx0;
            npages = pg0;
            if (kind == KIND_CORRUPT || kind == KIND_FOREIGN || kind == KIND_GONE) {
                /* refused for a while; another segment holding the same
                ** transactions is taken if there is one */
                rep_bad_mark(r, chain[i]->key);
                rep_status_lock(r);
                if (kind == KIND_CORRUPT) r->status.corrupt_objects++;
                rep_status_unlock(r);
                if (kind == KIND_GONE) /* retention's work, not a problem: relist */
                    WS_INFO("replica_object_gone", "replica=%s err=\"%s\"", r->path, err->msg);
                else
                    rep_report(r, kind == KIND_CORRUPT ? WS_LOG_ERROR : WS_LOG_WARN,
                               kind == KIND_CORRUPT ? "replica_corrupt_object"
                                                    : "replica_object_ignored",
                               err->msg);
                r->cursor[0] = '\0'; /* relist: the range may be held elsewhere */
                rc = 0;
            } else if (kind == KIND_STORE) {
                rep_store_failed(r, err);
                rc = 0;
            } else if (kind == KIND_DIVERGED) {
                rep_status_lock(r);
                r->status.divergences++;
                rep_status_unlock(r);
                rep_report(r, WS_LOG_ERROR, "replica_diverged", err->msg);
                r->phase = PHASE_REBOOTSTRAP;
                r->view_untrusted = 1;
                snprintf(r->rebootstrap_why, sizeof r->rebootstrap_why, "checksum mismatch");
                rc = 0;
            }
            break;
        }
        (*applied)++;
        if (walapp_pending_frames(r->app) >= PUBLISH_FRAMES && (rc = rep_publish(r, err))) break;
    }
    int prc = rc == 0 ? rep_publish(r, err) : 0;
    int dropped = walapp_pending_commits(r->app) > 0;
    walapp_end(r->app);
    if (rc || prc) {
        /* A local failure (I/O, memory): what was applied but not published
        ** is gone, so the position in memory is ahead of what readers see.
        ** Rebuild it from the database. */
        if (dropped || prc) r->phase = PHASE_RESUME;
        return rc ? rc : prc;
    }
    if (ntx > 0) {
        rep_status_lock(r);
        r->status.txs_applied += ntx;
        r->status.pages_applied += npages;
        r->status.segments_applied += *applied;
        rep_status_unlock(r);
        rep_rate_add(r, ntx, npages);
        return rep_state_save(r, 0, NULL, err);
    }
    return 0;
}

/* The idle check for foreign writes: compare the header with ours. */
void rep_check_foreign_idle(replica *r) {
    walidx_hdr h;
    if (!r->have_known || walapp_peek(r->app, &h, NULL) != 0 || rep_hdr_same(&h, &r->known)) return;
    if (rep_hdr_truncated(&r->known, &h)) {
        r->known = h;
        return;
    }
    /* Confirm under the lock (the read may have raced a header update). */
    walapp_info info;
    wserr err = {0};
    if (rep_lock_write(r, &info, 1, &err) == 0) walapp_end(r->app);
}
