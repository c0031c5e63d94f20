/*
** restore.h -- rebuilding a database from the store, as of the latest
** transaction, a TXID, or a point in time.
**
** ws_restore() never leaves a partial or unverified file at the output
** path: it builds into a temporary file beside it, checks every checksum
** (object checksums, each transaction's rolling database checksum, and the
** snapshot's), syncs, and renames. An existing output is refused unless
** `force` is set.
**
** The pieces are exposed for `walship verify` and the replica: plan a
** restore from a catalog (catalog.h: only objects that belong to this
** history), then build the image into any file descriptor while keeping the
** page hashes (the replica continues from them). Building streams every
** object through bounded memory and checks each one against its key as its
** first bytes arrive; an object that is not this history's or is damaged is
** routed around when another covers the same transactions (with a
** warning), and otherwise the build fails naming it and the newest TXID
** that can be restored.
*/
#ifndef WS_RESTORE_H
#define WS_RESTORE_H

#include <limits.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/err.h"
#include "../format/objfmt.h"
#include "../format/rolling.h"
#include "../store/store.h"
#include "catalog.h"

enum { RESTORE_LATEST = 0, RESTORE_TXID = 1, RESTORE_TIME = 2 };

typedef struct restore_target {
    int kind;          /* RESTORE_* */
    uint64_t txid;     /* RESTORE_TXID */
    int64_t time_ms;   /* RESTORE_TIME: the state after the last commit at or before it */
    uint64_t generation; /* 0: choose; otherwise only this generation */
} restore_target;

/* What to download and apply. Pointers point into the catalog, which must
** outlive the plan. */
typedef struct restore_plan {
    const catalog *cat;
    const cat_gen *gen;
    const cat_snap *snap;
    const cat_seg **chain; /* owned: free with restore_plan_free */
    size_t nchain;
    uint64_t to_txid;      /* apply up to this TXID */
    int64_t to_time_ms;    /* and no commit after this time (INT64_MAX: no limit) */
    uint64_t bytes;        /* total bytes to download */
} restore_plan;

typedef struct restore_result {
    uint64_t generation;
    uint64_t txid;
    int64_t commit_ms;
    uint32_t page_size;
    uint32_t db_pages;
    uint64_t chk;
    uint64_t bytes;
    size_t nsegments;
    size_t damaged; /* objects found damaged while building (also set when it fails) */
    size_t gone;    /* objects deleted since the listing (retention, say), routed around */
    size_t ignored; /* objects found not to be this history's while building */
} restore_result;

/* Progress reporting: called now and then with bytes done and total. */
typedef void (*restore_progress_fn)(void *ctx, uint64_t done, uint64_t total);

int restore_plan_make(store *st, const catalog *cat, const restore_target *t, restore_plan *out,
                      wserr *err);
void restore_plan_free(restore_plan *p);

/* Builds the planned image into fd (which should be empty), verifying
** everything; r receives the page hashes, size and checksum of the result.
** res is filled on success; its damaged/ignored counts also on failure. */
int restore_build(store *st, const restore_plan *p, int fd, int parallel, ws_rolling *r,
                  restore_result *res, restore_progress_fn progress, void *pctx, wserr *err);

typedef struct restore_opts {
    const char *url;
    const char *out_path;
    restore_target target;
    int force;     /* replace an existing output (refused while it is open anywhere) */
    int parallel;  /* download threads; 0 = default (8) */
    int progress;  /* draw a progress bar on stderr if it is a terminal */
    /* Judges the built database before it is put in place (the library
    ** calls no SQLite; the CLI runs PRAGMA quick_check here). Called on the
    ** synced temporary file; returns 0 if it is sound, otherwise nonzero
    ** with one sentence in msg (size n). NULL: no check. */
    int (*check)(void *ctx, const char *tmp_path, char *msg, size_t n);
    void *check_ctx;
    /* Files a signal handler may remove while ws_restore runs (NULL: none
    ** published). ws_restore writes a path completely, then sets its flag
    ** (with a signal fence between), and clears the flag before the path
    ** stops being its own. A handler that sees a flag set may unlink(2)
    ** that path and _exit: tmp is the unfinished database, lock the claim
    ** on the output (see ws_restore). */
    struct restore_sigfiles {
        volatile sig_atomic_t tmp_set, lock_set;
        char tmp[PATH_MAX];
        char lock[PATH_MAX];
    } *sigfiles;
} restore_opts;

/* Restores o->target from o->url into o->out_path. Before anything is
** downloaded: the output path is checked (not empty, not a directory or
** other non-file, its directory exists; an existing output, or a -wal or
** -journal beside it, needs force), the URL is opened, the output is
** claimed (<out>.walship-lock, flock: a second restore to the same output
** fails at once with WALSHIP_ERR_BUSY naming the first one's pid; temp files
** of restores that died are removed), and with force the existing database
** must not be open in any process (SQLite's own locks; WALSHIP_ERR_BUSY
** naming the holder). The database is built in <out>.walship-tmp-XXXXXX,
** every checksum verified, synced and passed to o->check; only then is it
** renamed into place, the -wal/-shm/-journal of the replaced database moved
** aside first and removed after (put back if the rename fails). On any
** failure the output and the files beside it are as they were and no temp
** file is left. Returns 0 and fills res, or a walship_err with err set. */
int ws_restore(const restore_opts *o, restore_result *res, wserr *err);

/* A snapshot's footer: the catalog's when it read it, else one ranged
** request. */
int restore_snap_footer(store *st, const cat_snap *s, snap_footer *out, wserr *err);

#endif
