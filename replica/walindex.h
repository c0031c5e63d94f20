/*
** walindex.h -- appending transactions to a live SQLite WAL and its
** wal-index, the way SQLite's own writer does, so that readers in any
** process see each transaction whole or not at all.
**
** The replica (replica/) is the only user. It never writes through SQLite:
** it takes the WAL write lock with the database connection's own xShmLock,
** writes frames to the -wal file with its own descriptor, appends the
** page-number array and hash table entries in the mapped wal-index, and
** publishes a new wal-index header (copy 1, barrier, copy 0). Formats:
** sqlite.org/fileformat2.html#walformat, sqlite.org/walformat.html, SQLite's
** src/wal.c (walIndexAppend, walCleanupHash, walRestartHdr,
** walIndexWriteHdr); the byte orders checked on 3.40.1 are in
** ARCHITECTURE.md section 9.
**
** A hold of the write lock:
**
**   walapp_begin        take WRITE (never waits), read and check the header
**   walapp_try_restart  start the WAL over when SQLite's rules allow it
**   walapp_page ...     frames of a transaction (buffered, then written)
**   walapp_commit       the last frame written becomes the commit frame
**   walapp_savepoint / walapp_rollback_to   drop frames after a point
**   walapp_publish      fdatasync the WAL, then write the header
**   walapp_end          drop anything unpublished, release WRITE
**
** Nothing here calls sqlite3_* functions: only the methods of the
** connection's sqlite3_file (xShmMap, xShmLock, xShmBarrier, xRead,
** xFileSize), so this file stays linkable into walship.so, which takes its
** SQLite from the host process.
**
** Thread-safety: an appender belongs to one thread.
*/
#ifndef WS_WALINDEX_H
#define WS_WALINDEX_H

#include <sqlite3.h> /* types only */
#include <stdint.h>

#include "../common/err.h"
#include "../format/rolling.h"
#include "../format/wal.h"

typedef struct wal_appender wal_appender;

/* The state of the wal-index as walapp_begin found it. */
typedef struct walapp_info {
    walidx_hdr hdr;         /* the header (both copies agreed, checksum right) */
    uint32_t n_backfill;    /* WalCkptInfo.nBackfill */
    uint32_t read_mark[5];  /* WalCkptInfo.aReadMark */
    uint32_t n_backfill_attempted;
} walapp_info;

/* A point in the frames written during one hold, to roll back to. */
typedef struct walapp_savepoint {
    uint32_t frames;      /* frames written (or buffered) before the point */
    uint32_t commit_frame;
    uint32_t commit_npage;
    wal_cksum ck, ck_commit;
    uint32_t ncommits;
} walapp_savepoint;

/* Creates an appender for the database whose main file (as SQLite opened
** it: shared-memory methods required) is db, with its WAL open read-write
** on wal_fd. Neither is owned. page_size is the database's. */
int walapp_open(sqlite3_file *db, int wal_fd, uint32_t page_size, wal_appender **out,
                wserr *err);
void walapp_free(wal_appender *a); /* accepts NULL; releases WRITE if held */

/* When set (the default), walapp_publish fdatasyncs the WAL before it
** writes the header. Benchmarks turn it off to measure the rest. */
void walapp_set_sync(wal_appender *a, int on);

/* Tries to take the WAL write lock without waiting and reads the header.
** WALSHIP_ERR_BUSY: another connection holds it (a writer or a
** RESTART/TRUNCATE/FULL checkpoint). WALSHIP_ERR_STATE: the header is torn
** or uninitialised (a writer died mid-update): the lock is released again;
** let SQLite recover (any read on a connection does it) and retry.
** WALSHIP_ERR_CORRUPT: the header or WAL file does not fit this database. */
int walapp_begin(wal_appender *a, walapp_info *info, wserr *err);

/* While holding WRITE and before any frame: if everything in the WAL has
** been backfilled (nBackfill == mxFrame > 0), no checkpointer is at work
** (READ0 shared) and no reader uses the WAL (READ1..4 exclusive), resets the
** wal-index as SQLite's walRestartHdr does (salt1+1, new salt2, mxFrame 0,
** nBackfill 0, read mark 1 = 0, marks 2..4 unused) so new frames start at
** frame 1. Returns 1 if it restarted, 0 if a reader or checkpointer
** prevented it (never waits), or a negative walship_err. */
int walapp_try_restart(wal_appender *a, wserr *err);

/* Appends a frame for page pgno (page_size bytes at data, copied). */
int walapp_page(wal_appender *a, uint32_t pgno, const uint8_t *data, wserr *err);

/* Marks the last frame appended as the commit frame of a transaction that
** leaves the database db_pages pages long. WALSHIP_ERR_STATE if no frame was
** appended since the last commit. */
int walapp_commit(wal_appender *a, uint32_t db_pages, wserr *err);

void walapp_savepoint_get(const wal_appender *a, walapp_savepoint *sp);
/* Drops every frame after sp (index entries are cleared as SQLite's
** walCleanupHash does). sp must not be before the last publish. */
void walapp_rollback_to(wal_appender *a, const walapp_savepoint *sp);

/* Frames appended since the last publish / commits among them. */
uint32_t walapp_pending_frames(const wal_appender *a);
uint32_t walapp_pending_commits(const wal_appender *a);

/* Makes the frames up to the last commit frame visible: writes what is
** buffered, fdatasyncs the WAL (unless turned off), then writes the new
** header (iChange+1). Frames of an unfinished transaction stay pending.
** No-op when nothing was committed since the last publish. */
int walapp_publish(wal_appender *a, wserr *err);

/* Writes the buffered frames (and indexes them) without publishing. */
int walapp_flush(wal_appender *a, wserr *err);

/* Test hook: called between the two header copies when set (the replica's
** crash tests use it to leave a torn header). */
void walapp_set_fault_hook(void (*fn)(int point));

/* Discards anything not published (clearing its index entries and
** invalidating its first frame in the file) and releases WRITE. */
void walapp_end(wal_appender *a);

/* The header as last read or published in this hold (valid after begin). */
const walidx_hdr *walapp_hdr(const wal_appender *a);
/* Salts of the WAL the frames go to (known after begin; after a restart,
** the new WAL's). */
void walapp_salts(const wal_appender *a, uint32_t *salt1, uint32_t *salt2);

/* Reads nBackfill and the header without taking any lock; 0 on success,
** -1 if the header could not be read consistently. */
int walapp_peek(wal_appender *a, walidx_hdr *hdr, uint32_t *n_backfill);

/* While holding WRITE: the content hashes of the database as readers see
** it now (frames 1..mxFrame of the WAL over the database file), into r
** (initialised for the page size by the caller; replaced). If page1 is not
** NULL it receives page 1 (page_size bytes; zeros for an empty database).
** If commits_after is not NULL, it receives the number of commit frames
** among frames (after_frame, mxFrame]. */
int walapp_view_hashes(wal_appender *a, ws_rolling *r, uint8_t *page1, uint32_t after_frame,
                       uint32_t *commits_after, wserr *err);

/* Truncates the WAL file to max(limit, end of the last published frame)
** when it is longer: only call right after the first publish following a
** restart (no reader can then need anything past the published frames). */
int walapp_limit_size(wal_appender *a, uint64_t limit, wserr *err);

/* Checks the hash tables of the wal-index against its page-number arrays
** for frames 1..mxFrame: every entry reachable by its page number, no
** slot pointing past mxFrame in the last block. For tests. 0 when
** consistent. */
int walapp_check_index(wal_appender *a, wserr *err);

#endif
