/*
** catalog.c -- see catalog.h.
**
** Segments may overlap: after a crash the shipper can ship a TXID range
** again with other boundaries. A chain follows TXIDs, not object names: at
** each step it takes, among the segments that contain the next TXID, the
** one reaching furthest.
*/
#include "catalog.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "../format/objfmt.h"

void catalog_free(catalog *c) {
    for (size_t i = 0; i < c->ngens; i++) {
        cat_gen *g = &c->gens[i];
        for (size_t k = 0; k < g->nsnaps; k++) free(g->snaps[k].key);
        for (size_t k = 0; k < g->nsegs; k++) free(g->segs[k].key);
        free(g->snaps);
        free(g->segs);
    }
    free(c->gens);
    c->gens = NULL;
    c->ngens = 0;
}

static cat_gen *gen_for(catalog *c, uint64_t id) {
    for (size_t i = 0; i < c->ngens; i++)
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
    uint64_t x = ((const cat_snap *)a)->txid, y = ((const cat_snap *)b)->txid;
    return x < y ? -1 : x > y;
}
static int cmp_seg(const void *a, const void *b) {
    const cat_seg *x = a, *y = b;
    if (x->first != y->first) return x->first < y->first ? -1 : 1;
    return x->last < y->last ? -1 : x->last > y->last;
}

int catalog_load(store *st, catalog *out, wserr *err) {
    memset(out, 0, sizeof *out);
    store_objlist l = {0};
    int rc = store_list(st, "generations/", NULL, &l, err);
    if (rc) return rc;
    for (size_t i = 0; i < l.n; i++) {
        uint64_t gid, a, b;
        const store_obj *o = &l.items[i];
        if (objkey_parse_snapshot(o->key, &gid, &a) == 0) {
            cat_gen *g = gen_for(out, gid);
            cat_snap *s = g ? realloc(g->snaps, (g->nsnaps + 1) * sizeof *s) : NULL;
            if (s == NULL) goto nomem;
            g->snaps = s;
            s[g->nsnaps] = (cat_snap){a, o->key, o->size, o->mtime_ms};
            l.items[i].key = NULL;
            g->nsnaps++;
        } else if (objkey_parse_segment(o->key, &gid, &a, &b) == 0) {
            cat_gen *g = gen_for(out, gid);
            cat_seg *s = g ? realloc(g->segs, (g->nsegs + 1) * sizeof *s) : NULL;
            if (s == NULL) goto nomem;
            g->segs = s;
            s[g->nsegs] = (cat_seg){a, b, o->key, o->size, o->mtime_ms};
            l.items[i].key = NULL;
            g->nsegs++;
        }
    }
    store_objlist_free(&l);
    if (out->ngens > 1) qsort(out->gens, out->ngens, sizeof *out->gens, cmp_gen);
    for (size_t i = 0; i < out->ngens; i++) {
        cat_gen *g = &out->gens[i];
        if (g->nsnaps > 1) qsort(g->snaps, g->nsnaps, sizeof *g->snaps, cmp_snap);
        if (g->nsegs > 1) qsort(g->segs, g->nsegs, sizeof *g->segs, cmp_seg);
    }
    return 0;
nomem:
    store_objlist_free(&l);
    catalog_free(out);
    return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
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

int cat_chain(const cat_gen *g, uint64_t from, uint64_t to, const cat_seg ***out, size_t *n,
              wserr *err) {
    *out = NULL;
    *n = 0;
    const cat_seg **v = NULL;
    size_t cnt = 0;
    uint64_t next = from + 1;
    while (next <= to) {
        const cat_seg *best = NULL;
        for (size_t i = 0; i < g->nsegs; i++) {
            const cat_seg *s = &g->segs[i];
            if (s->first <= next && s->last >= next && (best == NULL || s->last > best->last))
                best = s;
        }
        if (best == NULL) {
            free(v);
            return wserr_set(err, WALSHIP_ERR_NOTFOUND,
                             "no segment holds transaction %" PRIu64 " of generation %016" PRIx64
                             " (the store is missing objects)",
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
    return 0;
}
