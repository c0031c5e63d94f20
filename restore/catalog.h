/*
** catalog.h -- what a store holds for one database: its generations, and in
** each the snapshots and segments, from one listing of "generations/" --
** but only what can be trusted to belong there.
**
** Names are not trusted. catalog_load reads the destination's ownership
** record (`owner`) and each generation's marker, every snapshot's footer
** (ranged requests, in parallel), and the header of each generation's
** newest segment, and keeps an object only if its key, its own header or
** footer and those records agree (docs/FORMAT.md section 2.3):
**   - the name is possible (TXIDs not 0, first <= last, below 2^63);
**   - the generation and TXIDs in the object are its name's;
**   - its page size is its generation's, and its database id is the
**     generation's (its marker's, or else its oldest snapshot's) and, when
**     `owner` exists, the owner's or one of its previous owners'.
** An object that fails is "not ours": dropped, with a warning (WS_WARN)
** naming its key and why; a generation written by a database outside the
** owner's lineage is dropped whole. An object that cannot be read or does
** not parse (bad magic or checksum, unreadable, a fifo on file://, gone
** since the listing) is "damaged": kept, flagged CAT_DAMAGED with the reason,
** because it is evidence that the history reaches that far; restore routes
** around it or fails naming it. Segments other than each generation's
** newest are checked when a restore reads them (restore.c).
**
** Used by restore, `walship generations`, verify and the replica.
*/
#ifndef WS_CATALOG_H
#define WS_CATALOG_H

#include <stddef.h>
#include <stdint.h>

#include "../common/err.h"
#include "../format/objfmt.h"
#include "../format/owner.h"
#include "../store/store.h"

/* An object's standing. */
enum {
    CAT_UNCHECKED = 0, /* named well; its header has not been read yet */
    CAT_OK = 1,        /* its header/footer matched its key and its generation */
    CAT_DAMAGED = 2    /* unreadable or malformed: `why` says how */
};

typedef struct cat_snap {
    uint64_t txid;
    char *key;
    uint64_t size;
    int64_t mtime_ms;
    int state;     /* CAT_OK or CAT_DAMAGED */
    int gone;      /* CAT_DAMAGED because it was deleted since the listing */
    char *why;     /* CAT_DAMAGED: a phrase, owned; NULL otherwise */
    snap_footer f; /* CAT_OK: its footer */
} cat_snap;

typedef struct cat_seg {
    uint64_t first, last;
    char *key;
    uint64_t size;
    int64_t mtime_ms;
    int state;              /* CAT_* */
    int gone;               /* CAT_DAMAGED because it was deleted since the listing */
    char *why;              /* CAT_DAMAGED: a phrase, owned; NULL otherwise */
    int64_t last_commit_ms; /* CAT_OK: from its header */
} cat_seg;

typedef struct cat_gen {
    uint64_t id;
    uint64_t db_id;     /* the database that wrote it; 0 if nothing says */
    uint32_t page_size; /* of its snapshots; 0 if none is readable */
    int has_marker;     /* generations/<id>/owner named db_id */
    cat_snap *snaps;    /* ascending txid */
    size_t nsnaps;
    cat_seg *segs; /* ascending first txid, then last */
    size_t nsegs;
} cat_gen;

typedef struct catalog {
    cat_gen *gens; /* ascending id (= creation time) */
    size_t ngens;
    int has_owner; /* the store holds `owner` */
    ws_owner owner;
    uint64_t *ignored_gens; /* generations dropped as another database's, ascending */
    size_t nignored_gens;
    size_t nignored;      /* objects dropped as not ours (each warned about) */
    size_t ndamaged;      /* objects flagged CAT_DAMAGED, not counting ngone */
    size_t ngone;         /* objects deleted since the listing (retention, say) */
    size_t nlists, ngets; /* store requests catalog_load made (also set when it fails) */
} catalog;

/* After an object of the listing could not be read (WALSHIP_ERR_NOTFOUND):
** 1 if a fresh listing no longer has it (deleted meanwhile, by retention
** say: not damage), 0 if it is still there (not a regular file: damage). */
int catalog_object_gone(store *st, const char *key);

/* Lists the store, reads the records and headers above, and builds the
** catalog. Fails only on store errors (listing, reading a record) and a
** damaged `owner` record (without it nothing can be checked). */
int catalog_load(store *st, catalog *out, wserr *err);
void catalog_free(catalog *c);

/* The highest TXID the generation's objects reach (0 if none). */
uint64_t cat_gen_last_txid(const cat_gen *g);
/* The lowest TXID a restore can reach in it: its oldest snapshot (0 if none). */
uint64_t cat_gen_first_txid(const cat_gen *g);
/* Nonzero if generation id was dropped as another database's. */
int catalog_gen_ignored(const catalog *c, uint64_t id);

/* Checks a segment header against its key and its generation (and the
** owner's lineage): 0 if it belongs, else nonzero with a phrase in why
** ("its header says transactions 5..9"). */
int cat_seg_header_belongs(const catalog *c, const cat_gen *g, const cat_seg *s,
                           const seg_header *h, char *why, size_t n);

/* A chain of segments covering (from, to]: an array of pointers into g, in
** order, taking at each step the segment that contains the next TXID and
** reaches furthest, never a CAT_DAMAGED one nor one with skip[i] set (skip
** may be NULL; indexes into g->segs). WALSHIP_ERR_NOTFOUND names the first
** TXID no usable segment covers, the damaged or skipped segments that hold
** it, and the newest TXID that can be reached; *reached is set to it. */
int cat_chain(const cat_gen *g, uint64_t from, uint64_t to, const uint8_t *skip,
              const cat_seg ***out, size_t *n, uint64_t *reached, wserr *err);

#endif
