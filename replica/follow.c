/*
** follow.c -- following the store: one LIST per round from the cursor,
** candidates and the chain to download, objects refused for a while,
** generations ignored, whose history this is, and the round itself
** (download in parallel, apply, move the cursor).
*/
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "../common/util.h"
#include "../format/objfmt.h"
#include "replica_impl.h"

#define MAX_SEGS_PER_ROUND 256
#define MAX_BYTES_PER_ROUND ((uint64_t)64 << 20) /* downloaded segments held at once */

/* ---- listing -------------------------------------------------------------------- */
void rep_cands_free(replica *r) {
    for (size_t i = 0; i < r->ncands; i++) free(r->cands[i].key);
    free(r->cands);
    r->cands = NULL;
    r->ncands = 0;
}

static bad_key *bad_find(replica *r, const char *key) {
    for (int i = 0; i < NBAD; i++)
        if (r->bad[i].key[0] && strcmp(r->bad[i].key, key) == 0) return &r->bad[i];
    return NULL;
}

void rep_bad_mark(replica *r, const char *key) {
    bad_key *b = bad_find(r, key);
    if (b == NULL) {
        b = &r->bad[0];
        for (int i = 0; i < NBAD; i++)
            if (r->bad[i].key[0] == '\0' || r->bad[i].retry_ms < b->retry_ms) b = &r->bad[i];
        ws_strlcpy(b->key, key, sizeof b->key);
        b->backoff_ms = 0;
    }
    b->backoff_ms = b->backoff_ms ? b->backoff_ms * 2 : 1000;
    if (b->backoff_ms > 60000) b->backoff_ms = 60000;
    b->retry_ms = ws_mono_ms() + b->backoff_ms;
}

static int is_bad(replica *r, const char *key) {
    bad_key *b = bad_find(r, key);
    return b && ws_mono_ms() < b->retry_ms;
}

static void gen_prefix(char *out, size_t n, uint64_t gen) {
    snprintf(out, n, "generations/%016" PRIx64 "/segments/", gen);
}

/* What a listing says beyond this generation's segments. */
typedef struct listing_info {
    uint64_t newest_snap_gen; /* newest generation (> ours) with a snapshot */
    uint64_t primary_gen, primary_txid;
    uint64_t own_snap_txid;   /* newest snapshot of our generation */
} listing_info;

static int list_store(replica *r, const char *prefix, const char *after, store_objlist *l,
                      wserr *err) {
    int rc = store_list(r->st, prefix, after, l, err);
    rep_status_lock(r);
    r->status.list_requests += 1 + l->n / 1000;
    if (rc) r->status.store_errors++;
    rep_status_unlock(r);
    return rc;
}

static int gen_ignored(const replica *r, uint64_t gen) {
    for (int i = 0; i < r->nignored_gens; i++)
        if (r->ignored_gens[i] == gen) return 1;
    return 0;
}

void rep_gen_ignore(replica *r, uint64_t gen) {
    if (gen_ignored(r, gen)) return;
    if (r->nignored_gens == NIGNORED_GENS) {
        memmove(r->ignored_gens, r->ignored_gens + 1,
                sizeof r->ignored_gens - sizeof r->ignored_gens[0]);
        r->nignored_gens--;
    }
    r->ignored_gens[r->nignored_gens++] = gen;
}

/* Warns about an impossible key once per process (the listing repeats it). */
static void warn_key_once(replica *r, const char *key, const char *why) {
    for (int i = 0; i < r->nwarned && i < NBAD; i++)
        if (strncmp(r->warned[i], key, sizeof r->warned[i] - 1) == 0) return;
    ws_strlcpy(r->warned[r->nwarned % NBAD], key, sizeof r->warned[0]);
    r->nwarned++;
    char msg[400];
    snprintf(msg, sizeof msg, "object %.250s is ignored: %s", key, why);
    rep_report(r, WS_LOG_WARN, "replica_object_ignored", msg);
}

/* Parses a listing: our generation's segments past r->txid become
** candidates; the rest feeds li. Impossible names (a TXID of 0 or past
** 2^63, first after last) and generations known to be another database's
** are ignored. */
static int take_listing(replica *r, store_objlist *l, listing_info *li, wserr *err) {
    for (size_t i = 0; i < l->n; i++) {
        const store_obj *o = &l->items[i];
        objkey k;
        objkey_classify(o->key, &k);
        if (k.kind == OBJKEY_BAD) {
            warn_key_once(r, o->key, k.why);
            continue;
        }
        if ((k.kind != OBJKEY_SEGMENT && k.kind != OBJKEY_SNAPSHOT) || gen_ignored(r, k.gen))
            continue;
        if (k.gen > li->primary_gen) {
            li->primary_gen = k.gen;
            li->primary_txid = 0;
        }
        if (k.gen == li->primary_gen && k.last > li->primary_txid) li->primary_txid = k.last;
        if (k.kind == OBJKEY_SNAPSHOT) {
            if (k.gen > r->gen && k.gen > li->newest_snap_gen) li->newest_snap_gen = k.gen;
            if (k.gen == r->gen && k.first > li->own_snap_txid) li->own_snap_txid = k.first;
            continue;
        }
        if (k.gen != r->gen || k.last <= r->txid) continue;
        seg_ref *c = realloc(r->cands, (r->ncands + 1) * sizeof *c);
        if (c == NULL) return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
        r->cands = c;
        c[r->ncands++] = (seg_ref){o->key, k.first, k.last, o->mtime_ms, o->size};
        l->items[i].key = NULL;
    }
    return 0;
}

/* Takes whose history this is from a catalog (g: the replica's generation
** in it, NULL if it is not there). */
void rep_ident_from_catalog(replica *r, const catalog *cat, const cat_gen *g, uint64_t gen) {
    r->ident.has_owner = cat->has_owner;
    r->ident.owner = cat->owner;
    memset(&r->gen_ident, 0, sizeof r->gen_ident);
    r->gen_ident.id = gen;
    if (g) {
        r->gen_ident.db_id = g->db_id;
        r->gen_ident.page_size = g->page_size;
    }
    for (size_t i = 0; i < cat->nignored_gens; i++) rep_gen_ignore(r, cat->ignored_gens[i]);
    r->have_ident = 1;
}

/* After a resume: loads the catalog for whose history this is. */
static int load_ident(replica *r, wserr *err) {
    catalog cat = {0};
    int rc = catalog_load(r->st, &cat, err);
    rep_status_lock(r);
    r->status.list_requests += cat.nlists;
    r->status.get_requests += cat.ngets;
    r->status.corrupt_objects += cat.ndamaged;
    if (rc) r->status.store_errors++;
    rep_status_unlock(r);
    if (rc) return rc;
    const cat_gen *g = NULL;
    for (size_t i = 0; i < cat.ngens; i++)
        if (cat.gens[i].id == r->gen) g = &cat.gens[i];
    rep_ident_from_catalog(r, &cat, g, r->gen);
    catalog_free(&cat);
    return 0;
}

/* A chain of candidates from r->txid+1, at most max long and about
** MAX_BYTES_PER_ROUND big, skipping objects recently refused. */
static size_t make_chain(replica *r, const seg_ref **chain, size_t max) {
    size_t n = 0;
    uint64_t next = r->txid + 1, bytes = 0;
    while (n < max && bytes < MAX_BYTES_PER_ROUND) {
        const seg_ref *best = NULL;
        for (size_t i = 0; i < r->ncands; i++) {
            const seg_ref *c = &r->cands[i];
            if (c->first <= next && c->last >= next && !is_bad(r, c->key) &&
                (best == NULL || c->last > best->last))
                best = c;
        }
        if (best == NULL) break;
        chain[n++] = best;
        bytes += best->size;
        next = best->last + 1;
    }
    return n;
}

/* The cursor for a generation whose segments (sorted by key) are segs:
** the key of the last segment before the first one still needed. */
void rep_cursor_from_catalog(replica *r, const cat_gen *g) {
    gen_prefix(r->cursor, sizeof r->cursor, r->gen);
    if (g == NULL) return;
    for (size_t i = 0; i < g->nsegs; i++) {
        if (g->segs[i].last > r->txid) break;
        ws_strlcpy(r->cursor, g->segs[i].key, sizeof r->cursor);
    }
}

/* Full listing of this generation's segments, to place the cursor (after
** a resume) or to find a segment that starts before it. */
static int relist_generation(replica *r, wserr *err) {
    char prefix[128];
    gen_prefix(prefix, sizeof prefix, r->gen);
    store_objlist l = {0};
    int rc = list_store(r, prefix, NULL, &l, err);
    if (rc) {
        store_objlist_free(&l);
        return rc;
    }
    rep_cands_free(r); /* the full listing replaces them */
    cat_gen g = {.id = r->gen};
    cat_seg *segs = calloc(l.n ? l.n : 1, sizeof *segs);
    if (segs == NULL) {
        store_objlist_free(&l);
        return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < l.n; i++) {
        uint64_t gid, a, b;
        if (objkey_parse_segment(l.items[i].key, &gid, &a, &b) == 0 && gid == r->gen)
            segs[g.nsegs++] = (cat_seg){.first = a, .last = b, .key = l.items[i].key};
    }
    g.segs = segs;
    rep_cursor_from_catalog(r, &g); /* keys are listed in order */
    listing_info li = {0};
    rc = take_listing(r, &l, &li, err);
    free(segs);
    store_objlist_free(&l);
    return rc;
}

/* ---- following -------------------------------------------------------------------- */
/* fetch_check_fn for segment downloads: the header, the moment it is in
** (runs in a download thread; reads only what does not change during a
** round). */
static int check_segment(void *ctx, size_t job, const uint8_t *head, size_t n, wserr *err) {
    replica *r = ctx;
    const seg_ref *s = r->round_chain[job];
    seg_header h;
    char why[240];
    cat_seg key = {.first = s->first, .last = s->last, .key = s->key};
    int rc = seg_parse_header(head, n, &h, err);
    if (rc) {
        r->jobv[job] = KIND_CORRUPT;
        return wserr_prefix(err, "segment %s", s->key);
    }
    if (cat_seg_header_belongs(&r->ident, &r->gen_ident, &key, &h, why, sizeof why)) {
        r->jobv[job] = KIND_FOREIGN;
        return wserr_set(err, WALSHIP_ERR_CORRUPT,
                         "segment %s is not part of this history (%s); it is ignored", s->key, why);
    }
    return 0;
}

void rep_store_failed(replica *r, const wserr *e) {
    rep_report(r, WS_LOG_WARN, "replica_store_error", e->msg);
    r->backoff_ms = r->backoff_ms ? r->backoff_ms * 2 : r->o.poll_ms;
    if (r->backoff_ms > MAX_BACKOFF_MS) r->backoff_ms = MAX_BACKOFF_MS;
    r->next_try_ms = ws_mono_ms() + r->backoff_ms;
}

int rep_follow(replica *r, int64_t *wait_ms, wserr *err) {
    *wait_ms = r->o.poll_ms;
    rep_check_foreign_idle(r);
    if (r->phase != PHASE_FOLLOW) {
        *wait_ms = 0;
        return 0;
    }
    if (ws_mono_ms() < r->next_try_ms) {
        *wait_ms = r->next_try_ms - ws_mono_ms();
        return 0;
    }
    wserr e = {0};
    int rc;
    if (r->cursor[0] == '\0' && (rc = relist_generation(r, &e))) {
        rep_store_failed(r, &e);
        return 0;
    }
    store_objlist l = {0};
    listing_info li = {.primary_gen = r->gen, .primary_txid = r->txid};
    rc = list_store(r, "generations/", r->cursor, &l, &e);
    if (rc == 0) {
        rep_cands_free(r); /* everything past the cursor is in this listing */
        rc = take_listing(r, &l, &li, &e);
    }
    store_objlist_free(&l);
    if (rc) {
        rep_store_failed(r, &e);
        return 0;
    }
    r->backoff_ms = 0;
    rep_status_lock(r);
    r->status.last_poll_ok_ms = ws_now_ms();
    r->status.primary_generation = li.primary_gen;
    r->status.primary_txid = li.primary_txid > r->txid || li.primary_gen != r->gen ? li.primary_txid
                                                                                    : r->txid;
    rep_status_unlock(r);
    if (li.newest_snap_gen > r->gen) {
        WS_INFO("replica_new_generation", "replica=%s from=%016" PRIx64 " to=%016" PRIx64,
                r->path, r->gen, li.newest_snap_gen);
        r->phase = PHASE_REBOOTSTRAP;
        r->switch_gen = li.newest_snap_gen;
        snprintf(r->rebootstrap_why, sizeof r->rebootstrap_why, "new generation %016" PRIx64,
                 li.newest_snap_gen);
        *wait_ms = 0;
        return 0;
    }
    /* drop candidates that are behind us */
    size_t k = 0;
    for (size_t i = 0; i < r->ncands; i++) {
        if (r->cands[i].last > r->txid)
            r->cands[k++] = r->cands[i];
        else
            free(r->cands[i].key);
    }
    r->ncands = k;
    const seg_ref *chain[MAX_SEGS_PER_ROUND];
    size_t n = make_chain(r, chain, MAX_SEGS_PER_ROUND);
    if (n == 0 && r->ncands > 0) {
        int covered = 0;
        for (size_t i = 0; i < r->ncands; i++)
            if (r->cands[i].first <= r->txid + 1) covered = 1;
        if (!covered) {
            /* A gap after the cursor: look at the whole generation. */
            if ((rc = relist_generation(r, &e))) {
                rep_store_failed(r, &e);
                return 0;
            }
            n = make_chain(r, chain, MAX_SEGS_PER_ROUND);
            if (n == 0) {
                covered = 0;
                for (size_t i = 0; i < r->ncands; i++)
                    if (r->cands[i].first <= r->txid + 1) covered = 1;
                if (!covered && li.own_snap_txid > r->txid) {
                    r->phase = PHASE_REBOOTSTRAP;
                    snprintf(r->rebootstrap_why, sizeof r->rebootstrap_why,
                             "transaction %" PRIu64 " is no longer in the store",
                             r->txid + 1);
                    *wait_ms = 0;
                    return 0;
                }
                if (!covered) {
                    char msg[200];
                    snprintf(msg, sizeof msg,
                             "transaction %" PRIu64 " of generation %016" PRIx64
                             " is missing from the store (later ones are there); waiting",
                             r->txid + 1, r->gen);
                    rep_report(r, WS_LOG_WARN, "replica_gap", msg);
                }
            }
        }
    }
    /* lag bookkeeping: the oldest transaction we know of and have not applied */
    int64_t oldest = 0;
    for (size_t i = 0; i < r->ncands; i++)
        if (r->cands[i].last > r->txid && (oldest == 0 || r->cands[i].mtime_ms < oldest))
            oldest = r->cands[i].mtime_ms;
    rep_status_lock(r);
    r->first_unapplied_ms = oldest;
    rep_status_unlock(r);
    if (n == 0) return 0;
    /* Segments are judged against whose history this is: after a resume,
    ** learn it now (an idle replica never needs to). */
    if (!r->have_ident && (rc = load_ident(r, &e))) {
        rep_store_failed(r, &e);
        return 0;
    }
    /* Download the chain in parallel, streaming: each segment is checked the
    ** moment its header arrives and applied as it decodes, so memory stays
    ** bounded whatever the objects' sizes. */
    fetch_job *jobs = calloc(n, sizeof *jobs);
    uint8_t *jobv = calloc(n, 1);
    fetcher *fe = NULL;
    if (jobs == NULL || jobv == NULL) {
        free(jobs);
        free(jobv);
        return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++) jobs[i] = (fetch_job){chain[i]->key, 0, 0, 0};
    r->round_chain = chain;
    r->jobv = jobv;
    fetch_opts fo = {.threads = r->o.parallel,
                     .check_len = SEG_HEADER_SIZE,
                     .check = check_segment,
                     .check_ctx = r};
    size_t applied = 0;
    char last_key[512] = "";
    rc = fetch_start(r->st, jobs, n, &fo, &fe, err);
    if (rc == 0) rc = rep_apply_batch(r, chain, fe, n, &applied, err);
    if (applied > 0) ws_strlcpy(last_key, chain[applied - 1]->key, sizeof last_key);
    uint64_t bytes = fe ? fetch_bytes(fe) : 0;
    fetch_free(fe);
    r->round_chain = NULL;
    r->jobv = NULL;
    free(jobv);
    free(jobs);
    rep_status_lock(r);
    r->status.get_requests += applied < n ? applied + 1 : n;
    r->status.bytes_downloaded += bytes;
    rep_status_unlock(r);
    if (rc) return rc;
    if (last_key[0]) ws_strlcpy(r->cursor, last_key, sizeof r->cursor);
    /* more to do right away? */
    int more = 0;
    for (size_t i = 0; i < r->ncands; i++)
        if (r->cands[i].last > r->txid && !is_bad(r, r->cands[i].key)) more = 1;
    if (more && applied == n) *wait_ms = 0;
    rep_status_lock(r);
    if (!more) r->first_unapplied_ms = 0;
    if (r->status.primary_txid < r->txid && r->status.primary_generation == r->gen)
        r->status.primary_txid = r->txid;
    rep_status_unlock(r);
    return 0;
}
