/*
** catalog.h -- what a store holds for one database: its generations, and in
** each the snapshots and segments, from one listing of "generations/".
** Used by restore, `walship generations`, verify and the replica.
*/
#ifndef WS_CATALOG_H
#define WS_CATALOG_H

#include <stddef.h>
#include <stdint.h>

#include "../common/err.h"
#include "../store/store.h"

typedef struct cat_snap {
    uint64_t txid;
    char *key;
    uint64_t size;
    int64_t mtime_ms;
} cat_snap;

typedef struct cat_seg {
    uint64_t first, last;
    char *key;
    uint64_t size;
    int64_t mtime_ms;
} cat_seg;

typedef struct cat_gen {
    uint64_t id;
    cat_snap *snaps; /* ascending txid */
    size_t nsnaps;
    cat_seg *segs;   /* ascending first txid, then last */
    size_t nsegs;
} cat_gen;

typedef struct catalog {
    cat_gen *gens; /* ascending id (= creation time) */
    size_t ngens;
} catalog;

/* Lists the store and builds the catalog (unrelated keys are ignored). */
int catalog_load(store *st, catalog *out, wserr *err);
void catalog_free(catalog *c);

/* The highest TXID the generation's objects reach (0 if none). */
uint64_t cat_gen_last_txid(const cat_gen *g);
/* The lowest TXID a restore can reach in it: its oldest snapshot (0 if none). */
uint64_t cat_gen_first_txid(const cat_gen *g);

/* A chain of segments covering (from, to]: an array of pointers into g,
** in order. WALSHIP_ERR_NOTFOUND names the first TXID no segment covers. */
int cat_chain(const cat_gen *g, uint64_t from, uint64_t to, const cat_seg ***out, size_t *n,
              wserr *err);

#endif
