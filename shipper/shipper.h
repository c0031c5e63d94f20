/*
** shipper.h -- one database's shipper, and the process-wide registry and
** thread pool that run every shipper of the process.
**
** A `shipper` exists once per database path per process (refcounted). It
** owns the spool handle the VFS appends to, and the state that turns spool
** records and WAL frames into segments and snapshots in the store. Its work
** runs as short steps on a small fixed pool of threads (WALSHIP_THREADS,
** default 2), so a process with 10,000 databases has a handful of threads
** and a handful of connections. Only the process that holds the spool's
** election lock uploads; in every other process the shipper object just
** carries the spool for the VFS and answers status/flush by reading the
** shared control block.
**
** Thread-safety: every function here may be called from any thread.
*/
#ifndef WS_SHIPPER_H
#define WS_SHIPPER_H

#include <stdint.h>

#include "../common/err.h"
#include "../format/wal.h"
#include "config.h"
#include "spool.h"

typedef struct shipper shipper;

/* Finds or creates the shipper of the database at db_path (a full path, as
** SQLite's xFullPathname gives it). A new one opens the spool, and starts the
** pool if needed. On success *out holds a reference; release it with
** shipper_detach. If one exists with a different URL, fails with
** WALSHIP_ERR_INVALID (one database, one destination). */
int shipper_attach(const char *db_path, const ws_config *cfg, shipper **out, wserr *err);

/* Drops a reference. The last reference keeps the shipper running in the
** background until everything recorded is in the store (or the process
** exits); then it is freed. */
void shipper_detach(shipper *sh);

/* Takes a reference to the shipper of db_path if one exists; NULL if not. */
shipper *shipper_find(const char *db_path);

spool *shipper_spool(shipper *sh);
const ws_config *shipper_config(shipper *sh);
const char *shipper_db_path(shipper *sh);

/* Tells the pool that a record was appended (cheap; called on commit) for
** a WAL now mx_frame frames long. */
void shipper_nudge(shipper *sh, uint32_t mx_frame);

/* A checkpoint is starting (VFS): asks the elected shipper, wherever it
** runs, for a durability point now, and wakes it if it runs here. */
void shipper_sync_request(shipper *sh);

/* Waits up to max_ms for the shipper of this process (no other) to make
** WAL (salt1, salt2) durable up to frame mx: 1 if it did. */
int shipper_wait_durable(shipper *sh, uint32_t salt1, uint32_t salt2, uint32_t mx,
                         int64_t max_ms);

/* Waits until every record appended to the spool before the call is in the
** store: 1 when done, 0 on timeout (timeout_ms < 0: no limit), or a negative
** walship_err. Works whichever process is the elected shipper. */
int shipper_flush(shipper *sh, int64_t timeout_ms);

/* The VFS's stash for the wal-index header captured when the last
** connection unmaps shared memory before deleting the WAL. */
void shipper_stash_final_hdr(shipper *sh, const walidx_hdr *h);
int shipper_take_final_hdr(shipper *sh, walidx_hdr *out);

/* Records a problem the VFS saw (shown by status) and logs it. */
void shipper_report_error(shipper *sh, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Writes the status of a database as one JSON object (see README) into out.
** spool may belong to any process; url may be NULL. local_error (may be
** NULL) is a problem the calling process saw itself: shown as last_error
** when the shared status holds none (a process that could not even take
** part in the election has no other way to say why nothing ships). */
void ws_status_json(spool *sp, const char *db_path, const char *url, const char *local_error,
                    char *out, size_t n);

/* ws_status_json for this process's shipper of a database, with its own
** last problem as local_error. */
void shipper_status_json(shipper *sh, char *out, size_t n);

/* The VFS the shipper reads the database file and its shared memory
** through (a sqlite3_vfs*, normally the default "unix" VFS): never plain
** open/close on those files, whose POSIX locks SQLite owns. Set once by
** walship_register (or by the CLI) before any attach. */
void shipper_set_base_vfs(void *vfs);

/* For tests and `walship ship`: stop all shipping work in this process and
** wait for running steps to finish (called before exit in the CLI). */
void shipper_pool_shutdown(void);

#endif
