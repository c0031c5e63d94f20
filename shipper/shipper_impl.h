/*
** shipper_impl.h -- the inside of a shipper, shared by the files of shipper/.
**
** Lock order (outer first): pool.mu (registry.c) -> shipper.mu. A step runs
** with neither held; the fields under "step state" belong to the one worker
** running the step (the pool never runs two steps of one shipper at once).
*/
#ifndef WS_SHIPPER_IMPL_H
#define WS_SHIPPER_IMPL_H

#include <pthread.h>
#include <sqlite3.h> /* types only: the shipper never calls into SQLite */
#include <stdatomic.h>
#include <stdint.h>

#include "../format/objfmt.h"
#include "../format/wal.h"
#include "../store/store.h"
#include "shipper.h"
#include "shipstate.h"

typedef struct snapjob snapjob;

/* Commit times learned from watermarks of the current WAL, waiting for
** their frames to be consumed. */
typedef struct wm_time {
    uint32_t mx;
    int64_t time_ms;
} wm_time;
#define WM_TIMES_MAX (1 << 20) /* one per commit of the current WAL, at most */

/* A closed object waiting in <spool>/queue for upload. */
typedef struct queued {
    char name[96];   /* file name in queue/ */
    int is_snapshot;
    uint64_t generation;
    uint64_t first_txid, last_txid;
    int64_t last_commit_ms;
    spool_pos resume;          /* records before this are covered */
    uint32_t wal_salt1, wal_salt2, wal_frame; /* WAL position covered */
    uint64_t bytes;
} queued;

typedef struct ship_state {
    int phase;                 /* PH_* in ship.c */
    int64_t retry_at_ms;       /* monotonic; back-off after errors */
    int64_t backoff_ms;
    store *st;
    shipstate hs;              /* page hashes + durable record */
    ship_record rec;           /* the durable record as of the last close */

    /* live position: everything consumed so far */
    uint64_t gen;
    uint64_t next_txid;
    uint32_t page_size;           /* database size and checksum live in hs.r */
    int cur_known;             /* a WAL position is established */
    ws_walpos cur;             /* frame = last consumed; log pos = next record */
    int big_endian;
    ws_walpos prev;            /* the WAL before the last WAL_BEGIN (revive_wal) */
    int have_prev;
    ws_walpos begun[SHIP_BEGUN_MAX]; /* WALs begun since (nothing consumed from them yet) */
    int nbegun;
    int64_t place_mismatch_since; /* snapjob.c: spool and WAL file disagree since */
    uint32_t pending_mx;       /* highest committed frame of cur known */
    wm_time *wm;               /* growable; oldest first */
    int nwm, wm_cap;
    int64_t last_time_ms;
    spool_pos resume;          /* first record not fully applied */
    wsbuf recbuf;
    int wal_fd;
    dev_t wal_dev;
    ino_t wal_ino;

    /* the transaction being consumed */
    int tx_open;
    uint64_t tx_txid;
    uint32_t tx_npages;

    /* the segment being built */
    seg_writer *segw;
    int seg_fd;
    uint64_t seg_first_txid;
    int64_t seg_opened_mono;
    int64_t seg_first_commit_ms;
    int64_t seg_synced_mono;   /* last durability point of the open segment */
    uint32_t seg_synced_ntx;   /* transactions it covered */
    uint32_t sync_seen;        /* durability point requests served (spool_sync_requests) */

    /* closed objects awaiting upload, oldest first */
    queued *queue;
    int nqueue, queue_cap;
    uint64_t queue_bytes;
    uint64_t shipped_txid;
    spool_pos uploaded;

    snapjob *snap;
    sqlite3_file *dbf;         /* ship_base_file's handle, NULL until used */
    spool_status published;    /* what publish_status last wrote (heartbeat aside) */
    char gen_reason[SPOOL_ERR_MAX]; /* why the next/current generation began (status) */
    int64_t next_retention_mono;
    uint64_t marked_gen;       /* generation whose ownership marker is known written */
    int64_t next_claim_mono;   /* next look at the destination's owner while uploading */
    int elect_failed;          /* the last election attempt failed (its error is shown) */

    /* Discarding (ship.c): history is not kept while the destination is
    ** refused (another database owns it) or the spool hit its limit during
    ** an outage; commits are followed only so the VFS copies nothing. */
    int discarding;            /* DISCARD_* */
    int64_t discard_retry_mono;
    int64_t discard_backoff_ms;
    int64_t limit_check_mono;  /* last look at the spool's size */
    int upload_failing;        /* the last upload attempt failed */
    uint64_t trimmed_seq;      /* spool files before this one are gone */
    int64_t idle_ms;           /* current poll interval when nothing happens */
    uint32_t flush_seen;       /* flush requests that closed a segment */
    /* walship_flush (ship.c flush_*): the request being served and its target */
    int flush_active;
    uint32_t flush_req;        /* last request number taken up */
    spool_pos flush_end;       /* everything recorded before this ... */
    uint32_t flush_salt1, flush_salt2, flush_mx; /* ... and what shm showed committed */
    uint32_t suspect_seen;     /* spool_dbfile_suspects() last checked */
    uint8_t *framebuf;         /* scratch for WAL reads */
    size_t framebuf_cap;
} ship_state;

struct shipper {
    /* registry (pool.mu) */
    shipper *next;
    char *db_path;
    int refs;
    int running;
    int heap_idx;              /* position in the pool's due heap; -1 while running */
    int64_t due_mono;
    int elected;
    /* immutable after attach */
    ws_config cfg;
    uint64_t db_id;            /* the database's id (ident.h), stamped on every object */
    spool *sp;
    char *wal_path;
    /* cross-thread (mu) */
    pthread_mutex_t mu;
    pthread_cond_t cv;         /* broadcast after every step (flush waiters) */
    walidx_hdr final_hdr;
    int have_final;
    char vfs_error[SPOOL_ERR_MAX];
    atomic_int nudged;
    _Atomic uint32_t woke_mx;  /* WAL frame count at the last wake by a commit */
    /* step state */
    ship_state ss;
};

/* ship.c */
void ship_state_init(ship_state *ss);
void ship_state_free(ship_state *ss);
/* Runs one bounded step; returns the monotonic time it wants to run again. */
int64_t ship_step(shipper *sh);

/* Wakes threads waiting on sh->cv (shipper_flush, shipper_wait_durable):
** after each step, and when a durability point is published mid-step. */
void shipper_wake_waiters(shipper *sh);
/* Nonzero if nothing recorded is waiting to be shipped. */
int ship_idle(shipper *sh);

/* snapjob.c */
int snapjob_start(shipper *sh, int genstart, wserr *err);
/* Advances the job by a bounded amount of work. Returns 0, or an error (the
** job is then abandoned). */
int snapjob_step(shipper *sh, wserr *err);
/* Consumption feeds every frame it consumes while a job is active: the
** frame of WAL (salt1, salt2) writing page pgno, commit_size as in its
** header. Returns 0 or a walship error code. */
int snapjob_feed(snapjob *j, uint32_t salt1, uint32_t salt2, uint32_t pgno, const uint8_t *page,
                 uint32_t commit_size);
int snapjob_active(const snapjob *j);
int snapjob_is_genstart(const snapjob *j);
void snapjob_free(snapjob *j);

/* ship.c helpers used by snapjob.c */
int ship_read_wal_frames(shipper *sh, uint32_t upto, wserr *err);
/* Makes the WAL with header h current, nothing consumed from it yet. */
void ship_start_wal(ship_state *ss, const wal_hdr *h);
/* Makes the live position durable (state file) and publishes it to the VFS. */
int ship_save_state(shipper *sh, wserr *err);
/* Closes the open segment (if any) into the queue; fails inside a transaction. */
int ship_close_segment_if_open(shipper *sh, wserr *err);
int ship_enqueue(shipper *sh, const char *tmp_path, const queued *q, wserr *err);
/* The database file through the base VFS (so SQLite's POSIX locks are left
** alone), one handle per shipper kept open: every close would park the
** descriptor in SQLite's pending list while the application holds locks,
** one more per concurrent use. Reopened when the file at the path is
** another one (SQLITE_FCNTL_HAS_MOVED), except while a snapshot reads it.
** Only from the thread running the shipper's step; never closed by the
** caller. */
int ship_base_file(shipper *sh, sqlite3_file **out, wserr *err);
int ship_read_shm_header(shipper *sh, walidx_hdr *out);
uint64_t ship_new_generation_id(void);

/* retention.c */
int retention_run(shipper *sh, wserr *err);

/* claim.c: ownership records (docs/FORMAT.md 2.3). WALSHIP_ERR_OWNER when
** another database owns the destination or the generation. */
int claim_destination(shipper *sh, wserr *err);
int claim_generation(shipper *sh, uint64_t gen, wserr *err);
/* For a generation being resumed: its marker must be ours (written if absent). */
int claim_generation_check(shipper *sh, uint64_t gen, wserr *err);
/* claim_destination, then proof that the store takes writes: the
** destination's record, ours, is written again as it is. */
int claim_writable(shipper *sh, wserr *err);

#endif
