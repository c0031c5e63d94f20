/*
** catalog.c -- see catalog.h.
**
** Loading, in order:
**   1. one listing of "generations/": every key is classified
**      (objkey_classify); impossible names are warned about and dropped,
**      markers noted, a listed size of 0 (an empty object, or something on
**      file:// that is not a file) makes an object damaged at once;
**   2. `owner`, then each generation's marker (small bounded reads);
**   3. the footer of every snapshot, in parallel (fetch.c);
**   4. per generation: its identity (marker's database id, else its oldest
**      readable snapshot's; page size from its snapshots), then every
**      snapshot is judged against key, identity and lineage, a generation
**      outside the owner's lineage is dropped whole, and the header of its
**      newest segment is read -- again, if that one is not ours -- so that
**      the TXID the generation is said to reach is proven by an object.
**
** Segments may overlap: after a crash the shipper can ship a TXID range
** again with other boundaries. A chain follows TXIDs, not object names: at
** each step it takes, among the usable segments that contain the next TXID,
** the one reaching furthest.
*/
#include "catalog.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "fetch.h"

#define WHY_MAX        240
#define FOOTER_THREADS 8

static void seg_clear(cat_seg *s) {
    free(s->key);
    free(s->why);
}

static void snap_clear(cat_snap *s) {
    free(s->key);
    free(s->why);
}

void catalog_free(catalog *c) {
    for (size_t i = 0; i < c->ngens; i++) {
        cat_gen *g = &c->gens[i];
        for (size_t k = 0; k < g->nsnaps; k++)
            snap_clear(&g->snaps[k]);
        for (size_t k = 0; k < g->nsegs; k++)
            seg_clear(&g->segs[k]);
        free(g->snaps);
        free(g->segs);
    }
    free(c->gens);
    free(c->ignored_gens);
    memset(c, 0, sizeof *c);
}

static cat_gen *gen_for(catalog *c, uint64_t id) {
    for (size_t i = c->ngens; i-- > 0;) /* listings come sorted: the last one, usually */
        if (c->gens[i].id == id) return &c->gens[i];
    cat_gen *g = realloc(c->gens, (c->ngens + 1) * sizeof *g);
    if (g == NULL) return NULL;
    c->gens = g;
    memset(&g[c->ngens], 0, sizeof g[0]);
    g[c->ngens].id = id;
    return &c->gens[c->ngens++];
}

static int cmp_gen(const void *a, const void *b) {
    uint64_t x = ((const cat_gen *)a)->id, y = ((const cat_gen *)b)->id;
    return x < y ? -1 : x > y;
}
static int cmp_snap(const void *a, const void *b) {
    const cat_snap *x = a, *y = b;
    if (x->txid != y->txid) return x->txid < y->txid ? -1 : 1;
    return strcmp(x->key, y->key);
}
static int cmp_seg(const void *a, const void *b) {
    const cat_seg *x = a, *y = b;
    if (x->first != y->first) return x->first < y->first ? -1 : 1;
    if (x->last != y->last) return x->last < y->last ? -1 : 1;
    return strcmp(x->key, y->key);
}

int catalog_object_gone(store *st, const char *key) {
    store_objlist l = {0};
    wserr e = {0};
    int gone = 0;
    if (store_list(st, key, NULL, &l, &e) == 0) {
        gone = 1;
        for (size_t i = 0; i < l.n; i++)
            if (strcmp(l.items[i].key, key) == 0) gone = 0;
    }
    store_objlist_free(&l);
    return gone;
}

/* Flags an object damaged (once), with a warning. why is copied. gone: it
** was deleted since the listing (routed around like damage, counted apart). */
static int mark_damaged_as(catalog *c, int *state, int *gonep, char **whyp, const char *key,
                           const char *why, int gone) {
    if (*state == CAT_DAMAGED) return 0;
    char *w = strdup(why);
    if (w == NULL) return WALSHIP_ERR_NOMEM;
    *state = CAT_DAMAGED;
    *gonep = gone;
    *whyp = w;
    if (gone) {
        c->ngone++;
        WS_INFO("store_object_gone", "key=\"%s\" why=\"deleted since the listing\"", key);
    } else {
        c->ndamaged++;
        WS_WARN("store_object_damaged", "key=\"%s\" why=\"%s\"", key, why);
    }
    return 0;
}

#define mark_damaged(c, obj, key_, reason_) \
    mark_damaged_as((c), &(obj)->state, &(obj)->gone, &(obj)->why, (key_), (reason_), 0)

/* An object of the listing that could not be read: gone, or damaged. */
static int mark_unreadable(catalog *c, store *st, int *state, int *gonep, char **whyp,
                           const char *key) {
    int gone = catalog_object_gone(st, key);
    return mark_damaged_as(c, state, gonep, whyp, key,
                           gone ? "deleted since the listing"
                                : "it cannot be read (not a regular file, or unreadable)",
                           gone);
}

/* Takes a CAT_DAMAGED object out of the counts (it is dropped). */
static void uncount(catalog *c, int state, int gone) {
    if (state != CAT_DAMAGED) return;
    if (gone)
        c->ngone--;
    else
        c->ndamaged--;
}

static void warn_ignored(catalog *c, const char *key, const char *why) {
    c->nignored++;
    WS_WARN("store_object_ignored", "key=\"%s\" why=\"%s\" (not this destination's history)", key,
            why);
}

/* Step 1: one listed key. A key continuing an object's name with '/' (a
** folder of that name) stands for that object, damaged. */
static int take_key(catalog *c, store_obj *o) {
    objkey k;
    objkey_classify(o->key, &k);
    if (k.kind == OBJKEY_OTHER) return 0;
    const char *why = NULL;
    char *key = NULL;
    if (k.kind == OBJKEY_BAD && k.name_len > 0) {
        why = k.why;
        key = strndup(o->key, k.name_len);
        if (key == NULL) return WALSHIP_ERR_NOMEM;
        objkey_classify(key, &k); /* the object's own name */
    }
    if (k.kind == OBJKEY_BAD) {
        warn_ignored(c, key ? key : o->key, k.why);
        free(key);
        return 0;
    }
    cat_gen *g = gen_for(c, k.gen);
    if (g == NULL) goto nomem;
    if (k.kind == OBJKEY_MARKER) {
        g->has_marker = 1;
        return 0;
    }
    if (key == NULL) {
        key = o->key; /* moved into the catalog */
        o->key = NULL;
        if (o->size == 0) why = "it is empty, or not a regular file";
    }
    if (k.kind == OBJKEY_SNAPSHOT) {
        cat_snap *s = realloc(g->snaps, (g->nsnaps + 1) * sizeof *s);
        if (s == NULL) goto nomem;
        g->snaps = s;
        s[g->nsnaps] =
            (cat_snap){.txid = k.first, .key = key, .size = o->size, .mtime_ms = o->mtime_ms};
        s = &g->snaps[g->nsnaps++];
        return why ? mark_damaged(c, s, key, why) : 0;
    }
    cat_seg *s = realloc(g->segs, (g->nsegs + 1) * sizeof *s);
    if (s == NULL) goto nomem;
    g->segs = s;
    s[g->nsegs] = (cat_seg){
        .first = k.first, .last = k.last, .key = key, .size = o->size, .mtime_ms = o->mtime_ms};
    s = &g->segs[g->nsegs++];
    return why ? mark_damaged(c, s, key, why) : 0;
nomem:
    if (key != o->key) free(key);
    return WALSHIP_ERR_NOMEM;
}

/* Removes objects listed twice under one key (S3 can hold "k" and "k/x"):
** the readable entry stays. Arrays are sorted, so duplicates are adjacent. */
static void dedupe(catalog *c, cat_gen *g) {
    size_t k = 0;
    for (size_t i = 0; i < g->nsegs; i++) {
        if (k > 0 && strcmp(g->segs[k - 1].key, g->segs[i].key) == 0) {
            cat_seg *keep = &g->segs[k - 1], *drop = &g->segs[i];
            if (keep->state == CAT_DAMAGED && drop->state != CAT_DAMAGED) {
                cat_seg t = *keep;
                *keep = *drop;
                *drop = t;
            }
            uncount(c, drop->state, drop->gone);
            seg_clear(drop);
            continue;
        }
        g->segs[k++] = g->segs[i];
    }
    g->nsegs = k;
    k = 0;
    for (size_t i = 0; i < g->nsnaps; i++) {
        if (k > 0 && strcmp(g->snaps[k - 1].key, g->snaps[i].key) == 0) {
            cat_snap *keep = &g->snaps[k - 1], *drop = &g->snaps[i];
            if (keep->state == CAT_DAMAGED && drop->state != CAT_DAMAGED) {
                cat_snap t = *keep;
                *keep = *drop;
                *drop = t;
            }
            uncount(c, drop->state, drop->gone);
            snap_clear(drop);
            continue;
        }
        g->snaps[k++] = g->snaps[i];
    }
    g->nsnaps = k;
}

/* Reads a small text record (owner, marker): *found = 0 if absent. */
static int read_record(store *st, catalog *c, const char *key, ws_owner *o, int *found,
                       wserr *err) {
    wsbuf b = {0};
    *found = 0;
    c->ngets++;
    int rc = store_get_range(st, key, 0, OWNER_RECORD_MAX + 1, &b, err);
    if (rc == WALSHIP_ERR_NOTFOUND) {
        wserr_clear(err);
        rc = 0;
    } else if (rc == 0) {
        *found = 1;
        rc = owner_parse(b.p, b.len, o, err);
    }
    wsbuf_free(&b);
    return rc;
}

/* Step 3: reads every snapshot's footer (ranged requests in parallel). A
** footer that cannot be read or parsed makes its snapshot damaged; one
** whose generation or TXID is not its name's drops it. */
static int read_footers(store *st, catalog *c, wserr *err) {
    size_t n = 0;
    for (size_t i = 0; i < c->ngens; i++)
        n += c->gens[i].nsnaps;
    if (n == 0) return 0;
    fetch_job *jobs = calloc(n, sizeof *jobs);
    cat_snap **who = calloc(n, sizeof *who);
    int rc = 0;
    if (jobs == NULL || who == NULL) {
        rc = wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
        goto out;
    }
    size_t nj = 0;
    for (size_t i = 0; i < c->ngens; i++)
        for (size_t k = 0; k < c->gens[i].nsnaps; k++) {
            cat_snap *s = &c->gens[i].snaps[k];
            if (s->state == CAT_DAMAGED) continue;
            if (s->size < SNAP_FILE_HDR_SIZE + SNAP_FOOTER_SIZE) {
                char why[80];
                snprintf(why, sizeof why, "it is %" PRIu64 " bytes, too short for a snapshot",
                         s->size);
                if ((rc = mark_damaged(c, s, s->key, why))) goto nomem;
                continue;
            }
            who[nj] = s;
            jobs[nj++] = (fetch_job){s->key, s->size - SNAP_FOOTER_SIZE, SNAP_FOOTER_SIZE, 0};
        }
    fetcher *f = NULL;
    fetch_opts fo = {.threads = FOOTER_THREADS};
    c->ngets += nj;
    if (nj > 0 && (rc = fetch_start(st, jobs, nj, &fo, &f, err)) != 0) goto out;
    wsbuf b = {0};
    for (size_t i = 0; i < nj && rc == 0; i++) {
        cat_snap *s = who[i];
        wserr e = {0};
        int frc = fetch_take(f, i, &b, &e);
        if (frc == 0) frc = snap_parse_footer(b.p, b.len, s->size, &s->f, &e);
        if (frc == WALSHIP_ERR_CORRUPT || frc == WALSHIP_ERR_NOTFOUND) {
            rc = frc == WALSHIP_ERR_NOTFOUND
                     ? mark_unreadable(c, st, &s->state, &s->gone, &s->why, s->key)
                     : mark_damaged(c, s, s->key, e.msg);
            if (rc) rc = wserr_set(err, rc, "out of memory");
        } else if (frc) {
            rc = frc;
            *err = e;
        } else {
            s->state = CAT_OK;
        }
    }
    wsbuf_free(&b);
    fetch_free(f);
out:
    free(jobs);
    free(who);
    return rc;
nomem:
    rc = wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
    goto out;
}

/* What an object says about itself (header or footer), against what its
** key and its generation say. Returns 0 if it belongs; otherwise nonzero,
** with a phrase in why. `says` is "header" or "footer". */
typedef struct obj_claims {
    const char *says;
    uint64_t generation, first, last;
    uint32_t page_size;
    uint64_t db_id;
} obj_claims;

static int foreign(const catalog *c, const cat_gen *g, uint64_t key_first, uint64_t key_last,
                   const obj_claims *o, char *why, size_t n) {
    if (o->generation != g->id)
        snprintf(why, n, "its %s says generation %016" PRIx64, o->says, o->generation);
    else if (o->first != key_first || o->last != key_last)
        snprintf(why, n, "its %s says transactions %" PRIu64 "..%" PRIu64, o->says, o->first,
                 o->last);
    else if (g->page_size && o->page_size != g->page_size)
        snprintf(why, n, "its page size %u is not its generation's %u", o->page_size, g->page_size);
    else if (g->db_id && o->db_id && o->db_id != g->db_id) /* 0: written before ids existed */
        snprintf(why, n,
                 "it was written by database %016" PRIx64 ", generation %016" PRIx64
                 " by database %016" PRIx64,
                 o->db_id, g->id, g->db_id);
    else if (c->has_owner && !owner_lineage_has(&c->owner, o->db_id))
        snprintf(why, n,
                 "it was written by database %016" PRIx64 ", not by the destination's owner "
                 "%016" PRIx64 " or one before it",
                 o->db_id, c->owner.db_id);
    else
        return 0;
    return 1;
}

/* Nonzero if a snapshot's footer says it is what its key and generation say. */
static int snap_belongs(const catalog *c, const cat_gen *g, const cat_snap *s, char *why,
                        size_t n) {
    const snap_footer *f = &s->f;
    obj_claims o = {"footer", f->generation, f->txid, f->txid, f->page_size, f->db_id};
    return !foreign(c, g, s->txid, s->txid, &o, why, n);
}

int cat_seg_header_belongs(const catalog *c, const cat_gen *g, const cat_seg *s,
                           const seg_header *h, char *why, size_t n) {
    obj_claims o = {"header", h->generation, h->first_txid, h->last_txid, h->page_size, h->db_id};
    return foreign(c, g, s->first, s->last, &o, why, n);
}

/* Fixes a generation's identity: its marker's database id, or its oldest
** readable snapshot's; the page size of its oldest readable snapshot of
** that database. */
static void gen_identity(cat_gen *g) {
    for (size_t k = 0; k < g->nsnaps; k++) {
        const cat_snap *s = &g->snaps[k];
        if (s->state != CAT_OK || s->f.generation != g->id || s->f.txid != s->txid) continue;
        if (g->db_id == 0) g->db_id = s->f.db_id;
        if (s->f.db_id == g->db_id) {
            g->page_size = s->f.page_size;
            return;
        }
    }
}

/* Drops the snapshots that are not ours (with a warning). */
static void judge_snapshots(catalog *c, cat_gen *g) {
    size_t k = 0;
    for (size_t i = 0; i < g->nsnaps; i++) {
        cat_snap *s = &g->snaps[i];
        char why[WHY_MAX];
        if (s->state == CAT_OK && !snap_belongs(c, g, s, why, sizeof why)) {
            warn_ignored(c, s->key, why);
            snap_clear(s);
            continue;
        }
        g->snaps[k++] = *s;
    }
    g->nsnaps = k;
}

/* Reads the header of g's segment i: 0 and *h, or the object's verdict. */
static int read_seg_header(store *st, catalog *c, cat_seg *s, seg_header *h, wserr *err) {
    wsbuf b = {0};
    wserr e = {0};
    c->ngets++;
    int rc = store_get_range(st, s->key, 0, SEG_HEADER_SIZE, &b, &e);
    if (rc == 0) rc = seg_parse_header(b.p, b.len, h, &e);
    wsbuf_free(&b);
    if (rc == WALSHIP_ERR_CORRUPT || rc == WALSHIP_ERR_NOTFOUND) {
        rc = rc == WALSHIP_ERR_NOTFOUND
                 ? mark_unreadable(c, st, &s->state, &s->gone, &s->why, s->key)
                 : mark_damaged(c, s, s->key, e.msg);
        if (rc) return wserr_set(err, rc, "out of memory");
        return WALSHIP_ERR_CORRUPT;
    }
    if (rc) *err = e;
    return rc;
}

/* Step 4 for segments: the newest segment must prove the TXIDs its name
** claims. Not ours: dropped, and the next newest is read. Damaged: kept. */
static int judge_top_segment(store *st, catalog *c, cat_gen *g, wserr *err) {
    for (;;) {
        size_t top = g->nsegs;
        for (size_t i = 0; i < g->nsegs; i++)
            if (top == g->nsegs || g->segs[i].last >= g->segs[top].last) top = i;
        if (top == g->nsegs) return 0;
        cat_seg *s = &g->segs[top];
        if (s->state == CAT_DAMAGED) return 0;
        seg_header h;
        int rc = read_seg_header(st, c, s, &h, err);
        if (rc == WALSHIP_ERR_CORRUPT) return 0;
        if (rc) return rc;
        char why[WHY_MAX];
        if (g->db_id == 0 && h.generation == g->id) g->db_id = h.db_id; /* nothing else says */
        if (!cat_seg_header_belongs(c, g, s, &h, why, sizeof why)) {
            s->state = CAT_OK;
            s->last_commit_ms = h.last_commit_ms;
            return 0;
        }
        warn_ignored(c, s->key, why);
        seg_clear(s);
        memmove(s, s + 1, (g->nsegs - top - 1) * sizeof *s);
        g->nsegs--;
    }
}

/* Drops generation index i (another database's). */
static int drop_gen(catalog *c, size_t i) {
    cat_gen *g = &c->gens[i];
    uint64_t *ig = realloc(c->ignored_gens, (c->nignored_gens + 1) * sizeof *ig);
    if (ig == NULL) return WALSHIP_ERR_NOMEM;
    c->ignored_gens = ig;
    ig[c->nignored_gens++] = g->id;
    WS_WARN("store_generation_ignored",
            "generation=%016" PRIx64 " db_id=%016" PRIx64 " owner=%016" PRIx64
            " objects=%zu why=\"written by a database that is not the destination's owner or one "
            "before it\"",
            g->id, g->db_id, c->owner.db_id, g->nsnaps + g->nsegs);
    c->nignored += g->nsnaps + g->nsegs;
    for (size_t k = 0; k < g->nsnaps; k++) {
        uncount(c, g->snaps[k].state, g->snaps[k].gone);
        snap_clear(&g->snaps[k]);
    }
    for (size_t k = 0; k < g->nsegs; k++) {
        uncount(c, g->segs[k].state, g->segs[k].gone);
        seg_clear(&g->segs[k]);
    }
    free(g->snaps);
    free(g->segs);
    memmove(g, g + 1, (c->ngens - i - 1) * sizeof *g);
    c->ngens--;
    return 0;
}

int catalog_load(store *st, catalog *out, wserr *err) {
    memset(out, 0, sizeof *out);
    store_objlist l = {0};
    int rc = store_list(st, "generations/", NULL, &l, err);
    out->nlists = 1 + l.n / 1000;
    for (size_t i = 0; rc == 0 && i < l.n; i++)
        if (take_key(out, &l.items[i]) != 0)
            rc = wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
    store_objlist_free(&l);
    if (rc) goto fail;
    if (out->ngens > 1) qsort(out->gens, out->ngens, sizeof *out->gens, cmp_gen);
    for (size_t i = 0; i < out->ngens; i++) {
        cat_gen *g = &out->gens[i];
        if (g->nsnaps > 1) qsort(g->snaps, g->nsnaps, sizeof *g->snaps, cmp_snap);
        if (g->nsegs > 1) qsort(g->segs, g->nsegs, sizeof *g->segs, cmp_seg);
        dedupe(out, g);
    }

    int found = 0;
    if ((rc = read_record(st, out, OWNER_KEY, &out->owner, &found, err)) != 0) {
        if (rc == WALSHIP_ERR_CORRUPT)
            wserr_prefix(err,
                         "the destination's ownership record \"%s\" is damaged, so nothing in "
                         "the store can be checked against it (put back a good copy, or "
                         "remove it to read the store unchecked)",
                         OWNER_KEY);
        goto fail;
    }
    out->has_owner = found;
    for (size_t i = 0; i < out->ngens; i++) {
        cat_gen *g = &out->gens[i];
        if (!g->has_marker) continue;
        char key[64];
        ws_owner m;
        wserr e = {0};
        owner_gen_key(key, sizeof key, g->id);
        int mrc = read_record(st, out, key, &m, &found, &e);
        if (mrc == 0 && found) {
            g->db_id = m.db_id;
        } else if (mrc == WALSHIP_ERR_CORRUPT || (mrc == 0 && !found)) {
            g->has_marker = 0;
            WS_WARN(
                "store_marker_damaged",
                "key=\"%s\" why=\"%s\" (the generation's snapshots say which database wrote it)",
                key, mrc ? e.msg : "gone since the listing");
        } else {
            rc = mrc;
            *err = e;
            goto fail;
        }
    }
    if ((rc = read_footers(st, out, err)) != 0) goto fail;
    for (size_t i = out->ngens; i-- > 0;) {
        cat_gen *g = &out->gens[i];
        gen_identity(g);
        if (out->has_owner && g->db_id && !owner_lineage_has(&out->owner, g->db_id)) {
            if ((rc = drop_gen(out, i)) != 0) goto nomem;
            continue;
        }
        judge_snapshots(out, g);
        if ((rc = judge_top_segment(st, out, g, err)) != 0) goto fail;
        if (g->nsnaps == 0 && g->nsegs == 0) { /* nothing of it was ours */
            free(g->snaps);
            free(g->segs);
            memmove(g, g + 1, (out->ngens - i - 1) * sizeof *g);
            out->ngens--;
        }
    }
    return 0;
nomem:
    rc = wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
fail : {
    size_t nl = out->nlists, ng = out->ngets;
    catalog_free(out);
    out->nlists = nl;
    out->ngets = ng;
}
    return rc;
}

uint64_t cat_gen_last_txid(const cat_gen *g) {
    uint64_t t = 0;
    for (size_t i = 0; i < g->nsnaps; i++)
        if (g->snaps[i].txid > t) t = g->snaps[i].txid;
    for (size_t i = 0; i < g->nsegs; i++)
        if (g->segs[i].last > t) t = g->segs[i].last;
    return t;
}

uint64_t cat_gen_first_txid(const cat_gen *g) { return g->nsnaps ? g->snaps[0].txid : 0; }

int catalog_gen_ignored(const catalog *c, uint64_t id) {
    for (size_t i = 0; i < c->nignored_gens; i++)
        if (c->ignored_gens[i] == id) return 1;
    return 0;
}

int cat_chain(const cat_gen *g, uint64_t from, uint64_t to, const uint8_t *skip,
              const cat_seg ***out, size_t *n, uint64_t *reached, wserr *err) {
    *out = NULL;
    *n = 0;
    *reached = from;
    const cat_seg **v = NULL;
    size_t cnt = 0;
    uint64_t next = from + 1; /* from < 2^63: no wrap */
    while (next <= to) {
        const cat_seg *best = NULL, *bad = NULL;
        for (size_t i = 0; i < g->nsegs; i++) {
            const cat_seg *s = &g->segs[i];
            if (s->first > next || s->last < next) continue;
            if (s->state == CAT_DAMAGED || (skip && skip[i])) {
                if (bad == NULL || (s->state == CAT_DAMAGED && bad->state != CAT_DAMAGED)) bad = s;
                continue;
            }
            if (best == NULL || s->last > best->last) best = s;
        }
        if (best == NULL) {
            free(v);
            *reached = next - 1;
            if (bad && bad->state == CAT_DAMAGED)
                return wserr_set(err, WALSHIP_ERR_NOTFOUND,
                                 "no usable segment holds transaction %" PRIu64
                                 " of generation %016" PRIx64 ": segment %s holds it but %s",
                                 next, g->id, bad->key, bad->why);
            if (bad)
                return wserr_set(err, WALSHIP_ERR_NOTFOUND,
                                 "no usable segment holds transaction %" PRIu64
                                 " of generation %016" PRIx64
                                 ": segment %s holds it but was refused",
                                 next, g->id, bad->key);
            return wserr_set(err, WALSHIP_ERR_NOTFOUND,
                             "no segment holds transaction %" PRIu64 " of generation %016" PRIx64
                             " (a gap: the store is missing objects)",
                             next, g->id);
        }
        const cat_seg **nv = realloc(v, (cnt + 1) * sizeof *nv);
        if (nv == NULL) {
            free(v);
            return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
        }
        v = nv;
        v[cnt++] = best;
        next = best->last + 1;
    }
    *out = v;
    *n = cnt;
    *reached = to;
    return 0;
}
