/*
** replica.h -- a read replica: a local SQLite database kept up to date
** from the store, which any SQLite client can read while it changes.
**
** USAGE
**   static const replica_sqlite api = REPLICA_SQLITE_LINKED;
**   replica_opts o = {.url = "s3://bucket/app", .path = "/var/lib/app/replica.db",
**                     .sql = &api};
**   replica *r;
**   if (replica_open(&o, &r, &err) == 0) {
**       replica_run(r, &stop_flag, &err);   (until *stop_flag becomes nonzero)
**       replica_close(r);
**   }
** Readers open the file read-only with any SQLite (file:replica.db?mode=ro),
** with or without the walship VFS.
**
** What it does (details in replica.c):
**   bootstrap   restore the newest state into a temporary file beside PATH
**               (already in WAL mode), fsync, rename into place;
**   follow      list the store from the last segment seen (one LIST per
**               poll), download new segments, verify every transaction's
**               rolling checksum, and append each transaction to the
**               replica's WAL and wal-index as SQLite's writer would
**               (replica/walindex.h): readers see it whole or not at all;
**   checkpoint  passive checkpoints and WAL restarts, only when no reader
**               needs the old frames (a long reader makes the WAL grow);
**   switch      a new generation, a divergence (checksum mismatch) or a
**               write by someone else is repaired by applying the newest
**               state as one transaction;
**   resume      after a restart, the database as SQLite shows it is hashed
**               and matched with the recorded position
**               (<PATH>-walship-replica/state): nothing is downloaded again.
**
** SQLite is reached only through the replica_sqlite table the caller
** passes: this library is also linked into walship.so, which must not
** reference SQLite symbols of its own.
**
** Thread-safety: a replica belongs to the thread that runs it, except
** replica_status_get(), which any thread may call.
*/
#ifndef WS_REPLICA_H
#define WS_REPLICA_H

#include <signal.h>
#include <sqlite3.h> /* types only */
#include <stddef.h>
#include <stdint.h>

#include "../common/err.h"

/* The SQLite routines the replica uses. */
typedef struct replica_sqlite {
    int (*open_v2)(const char *, sqlite3 **, int, const char *);
    int (*close)(sqlite3 *);
    int (*exec)(sqlite3 *, const char *, int (*)(void *, int, char **, char **), void *, char **);
    int (*file_control)(sqlite3 *, const char *, int, void *);
    int (*wal_checkpoint_v2)(sqlite3 *, const char *, int, int *, int *);
    const char *(*errmsg)(sqlite3 *);
    void (*free)(void *);
    sqlite3_vfs *(*vfs_find)(const char *);
    int (*db_config)(sqlite3 *, int, ...);
} replica_sqlite;

/* The table for a program linked with libsqlite3. */
#define REPLICA_SQLITE_LINKED                                                         \
    {sqlite3_open_v2,   sqlite3_close,  sqlite3_exec, sqlite3_file_control,           \
     sqlite3_wal_checkpoint_v2, sqlite3_errmsg, sqlite3_free, sqlite3_vfs_find,     \
     sqlite3_db_config}

typedef struct replica_opts {
    const char *url;           /* the store (what the primary ships to) */
    const char *path;          /* the replica database */
    const replica_sqlite *sql; /* required */
    int64_t poll_ms;           /* between listings when idle (default 200) */
    uint32_t ckpt_frames;      /* checkpoint when the WAL holds this many frames (1000) */
    uint64_t wal_limit_bytes;  /* truncate a restarted WAL back to this (64 MiB) */
    int parallel;              /* download threads when catching up (4) */
    int no_sync;               /* skip the WAL fdatasync before publishing (benchmarks) */
} replica_opts;

enum {
    REPLICA_STARTING = 0,
    REPLICA_BOOTSTRAPPING = 1, /* building the first copy */
    REPLICA_FOLLOWING = 2,
    REPLICA_REBOOTSTRAPPING = 3, /* replacing the content in place */
    REPLICA_STOPPED = 4
};

/* A snapshot of what the replica is doing, for status and metrics. */
typedef struct replica_status {
    char url[1024];
    char path[1024];
    int state; /* REPLICA_* */
    int pid;
    uint64_t generation;
    uint64_t applied_txid;      /* last transaction readers can see */
    int64_t applied_commit_ms;  /* its commit time on the primary */
    uint64_t primary_txid;      /* newest transaction seen in the store */
    uint64_t primary_generation;
    int64_t lag_ms;             /* how far behind readers are (see replica.c) */
    double apply_tx_per_s;      /* over the last 10 s */
    double apply_pages_per_s;
    uint64_t wal_bytes;         /* size of the replica's -wal file */
    uint32_t wal_frames;        /* mxFrame */
    uint32_t wal_backfilled;    /* nBackfill */
    int64_t wal_pinned_ms;      /* how long a reader has kept the WAL from restarting */
    uint64_t txs_applied, pages_applied, segments_applied, bytes_downloaded;
    uint64_t checkpoints, wal_restarts, bootstraps, rebootstraps;
    uint64_t foreign_writes, divergences, corrupt_objects, store_errors;
    uint64_t list_requests, get_requests;
    int64_t started_ms, heartbeat_ms, last_poll_ok_ms, last_apply_ms;
    char last_error[512];
    int64_t last_error_ms;
    char metrics_addr[64];
} replica_status;

typedef struct replica replica;

/* Prepares a replica of o->url at o->path: takes the replica's lock (one
** process per replica), reads its recorded position if there is one, and
** refuses a PATH that exists but is not a replica of this URL. The
** bootstrap or resume itself happens in the first replica_step(). */
int replica_open(const replica_opts *o, replica **out, wserr *err);

/* One round: bootstrap or resume if needed, list the store, download and
** apply what is new, checkpoint. Problems that can pass (store unreachable,
** a corrupt object, a foreign write, a lock held by someone else) are
** recorded in the status and retried later; the function still returns 0.
** It returns an error only when the replica cannot continue (PATH is not a
** replica, the local disk fails). *wait_ms receives how long to wait before
** the next round (0: more work is ready). */
int replica_step(replica *r, int64_t *wait_ms, wserr *err);

/* Runs rounds until *stop becomes nonzero (checked at least every 50 ms)
** or a fatal error. */
int replica_run(replica *r, volatile sig_atomic_t *stop, wserr *err);

/* Checkpoints what readers allow, records the position, closes SQLite and
** releases the lock. Accepts NULL. */
void replica_close(replica *r);

/* Thread-safe copy of the current status. */
void replica_status_get(replica *r, replica_status *out);

/* Records the metrics endpoint's address (shown in status). */
void replica_set_metrics_addr(replica *r, const char *addr);

/* The status as one JSON object / as Prometheus text exposition format. */
void replica_status_to_json(const replica_status *st, char *out, size_t n);
void replica_metrics_text(const replica_status *st, char *out, size_t n);

/* For `walship status PATH`: if PATH is a replica, writes its status as
** JSON (from the file the running replica keeps beside it, plus whether
** that process is alive) and returns 0; returns -1 if PATH is not a
** replica. */
int replica_status_json(const char *path, char *out, size_t n);

/* The replica's state directory: "<path>-walship-replica". */
int replica_state_dir(const char *path, char *out, size_t n);

#endif
