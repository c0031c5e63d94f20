/*
** replica_impl.h -- the inside of a replica, shared by the files of replica/.
** The design is in replica.c; the contract in replica.h.
**
**   replica.c     the entry points (open, step, run, close) and the
**                 replica's own SQLite connection
**   follow.c      following the store: listing, choosing and downloading
**                 segments, whose history this is
**   apply.c       applying segments as WAL frames, the write lock, foreign
**                 writes, publishing
**   checkpoint.c  checkpoints and WAL restarts
**   bootstrap.c   bootstrap, resume, re-bootstrap in place
**   state.c       the state file (two 4 KiB slots)
**   status.c      status, metrics text, status.json
**   walindex.c    the WAL and wal-index writer (walindex.h)
**
** Thread-safety: everything belongs to the thread that runs the replica,
** except the status and rate counters, which r->mu protects.
*/
#ifndef WS_REPLICA_IMPL_H
#define WS_REPLICA_IMPL_H

#include <limits.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/err.h"
#include "../format/rolling.h"
#include "../format/wal.h"
#include "../restore/catalog.h"
#include "../restore/fetch.h"
#include "../store/store.h"
#include "replica.h"
#include "walindex.h"

#define STATE_URL_MAX 2048
#define MAX_BACKOFF_MS 10000
#define NBAD 64
#define NIGNORED_GENS 64
#define RATE_BUCKETS 10

enum { PHASE_INIT, PHASE_BOOTSTRAP, PHASE_RESUME, PHASE_FOLLOW, PHASE_REBOOTSTRAP };
/* What went wrong with a segment (KIND_NONE must be 0: jobv starts zeroed). */
enum { KIND_NONE = 0, KIND_CORRUPT, KIND_DIVERGED, KIND_LOCAL, KIND_FOREIGN, KIND_STORE, KIND_GONE };

/* The recorded position (docs/FORMAT.md: replica state). */
typedef struct rep_state {
    uint64_t seq;
    uint32_t flags; /* STATE_F_* */
    uint64_t generation, txid, chk;
    int64_t commit_ms;
    uint32_t page_size, db_pages;
    uint32_t salt1, salt2, mx_frame;
    uint64_t intent_generation, intent_txid, intent_chk;
    int64_t intent_commit_ms;
    char url[STATE_URL_MAX + 1];
} rep_state;
#define STATE_F_INTENT 1u

typedef struct undo_ent {
    uint32_t pgno;
    uint64_t old;
} undo_ent;

typedef struct bad_key {
    char key[256];
    int64_t retry_ms;
    int64_t backoff_ms;
} bad_key;

/* A segment found by a listing. */
typedef struct seg_ref {
    char *key;
    uint64_t first, last;
    int64_t mtime_ms;
    uint64_t size;
} seg_ref;

struct replica {
    replica_opts o;
    const replica_sqlite *sql;
    char url[STATE_URL_MAX + 1];
    char path[PATH_MAX], dir[PATH_MAX], state_path[PATH_MAX + 32], status_path[PATH_MAX + 32];
    char wal_path[PATH_MAX + 8];
    int lock_fd, state_fd;
    int locked; /* this process holds the replica's lock (and may write its files) */
    store *st;

    /* SQLite and the appender (open from the first bootstrap/resume on) */
    sqlite3 *db;
    sqlite3_file *dbf;
    int wal_fd;
    wal_appender *app;

    int phase;
    char rebootstrap_why[256];
    int have_state;
    rep_state saved; /* as last loaded or written */
    int64_t last_state_sync_ms;

    /* the position readers see (after the last publish) */
    uint64_t gen, txid;
    int64_t commit_ms;
    uint32_t page_size;
    ws_rolling roll;
    uint8_t *page1, *page1_mark, *zero;
    walidx_hdr known;
    int have_known;

    /* per-segment undo */
    undo_ent *undo;
    size_t nundo, undo_cap;

    /* whose history this is: the destination's owner and the generation's
    ** identity, from the catalog at each (re-)bootstrap, or loaded after a
    ** resume; segments are checked against them */
    int have_ident;
    catalog ident;     /* only has_owner and owner are used */
    cat_gen gen_ident; /* id, db_id, page_size */
    uint64_t ignored_gens[NIGNORED_GENS]; /* another database's generations: never switched to */
    int nignored_gens;
    uint64_t switch_gen; /* the newer generation a re-bootstrap was asked to switch to */
    char warned[NBAD][256]; /* listed keys already warned about as impossible */
    int nwarned;

    /* following */
    const seg_ref *const *round_chain; /* the segments being downloaded (check_segment) */
    uint8_t *jobv;                     /* per download: what its header check found */
    char cursor[512];
    seg_ref *cands;
    size_t ncands;
    int64_t first_unapplied_ms; /* commit (or upload) time of the oldest unapplied */
    bad_key bad[NBAD];
    int64_t next_try_ms, backoff_ms;
    int64_t rebootstrap_backoff_ms, next_rebootstrap_ms;
    int just_restarted;
    int64_t last_publish_ms, pinned_since_ms, next_ckpt_try_ms;
    int busy_rounds;
    int view_untrusted; /* hash the view before a re-bootstrap (after a divergence) */

    /* status */
    pthread_mutex_t mu; /* protects status and rate */
    replica_status status;
    uint64_t rate_tx[RATE_BUCKETS], rate_pages[RATE_BUCKETS];
    int64_t rate_sec[RATE_BUCKETS];
    int64_t last_status_write_ms;
};

/* r->mu guards status and the rate counters. */
static inline void rep_status_lock(replica *r) { pthread_mutex_lock(&r->mu); }
static inline void rep_status_unlock(replica *r) { pthread_mutex_unlock(&r->mu); }

/* status.c */
void rep_report(replica *r, int level, const char *event, const char *msg);
void rep_rate_add(replica *r, uint64_t tx, uint64_t pages);
void rep_status_write(replica *r, int force);
void rep_set_phase_status(replica *r, int st);

/* state.c */
int rep_state_load(int fd, rep_state *out);
int rep_state_save(replica *r, int sync, const rep_state *intent, wserr *err);

/* replica.c: the replica's own SQLite connection */
int rep_sql_exec(replica *r, const char *sql, char *first_value, wserr *err);
int rep_conn_open(replica *r, wserr *err);

/* apply.c */
int rep_hdr_same(const walidx_hdr *a, const walidx_hdr *b);
int rep_hdr_truncated(const walidx_hdr *known, const walidx_hdr *now);
int rep_lock_write(replica *r, walapp_info *info, int check_foreign, wserr *err);
int rep_publish(replica *r, wserr *err);
int rep_apply_batch(replica *r, const seg_ref *const *chain, fetcher *fe, size_t n,
                    size_t *applied, wserr *err);
void rep_check_foreign_idle(replica *r);

/* follow.c */
void rep_cands_free(replica *r);
void rep_bad_mark(replica *r, const char *key);
void rep_gen_ignore(replica *r, uint64_t gen);
void rep_ident_from_catalog(replica *r, const catalog *cat, const cat_gen *g, uint64_t gen);
void rep_cursor_from_catalog(replica *r, const cat_gen *g);
void rep_store_failed(replica *r, const wserr *e);
int rep_follow(replica *r, int64_t *wait_ms, wserr *err);

/* checkpoint.c */
void rep_checkpoint_phase(replica *r, int idle);

/* bootstrap.c */
int rep_bootstrap_fresh(replica *r, wserr *err);
int rep_resume(replica *r, wserr *err);
int rep_rebootstrap(replica *r, wserr *err);

#endif
