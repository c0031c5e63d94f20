/*
** spool.h -- the spool: the queue between the VFS (producer) and the shipper
** (consumer) of one database, in a directory beside it (<db>-walship/).
**
** Files:
**   ctl                 shared control block, mmap'd by every process using
**                       the database (host byte order, never copied elsewhere)
**   log-<16 hex seq>    append-only record files (format/spoolrec.h)
**   (ctl's byte 1 carries the shipper election: an OFD write lock; older
**   builds used a `lock` file, left alone)
**   (the shipper keeps its own files here too: state, pagehash, queue/)
**
** Concurrency. Records are appended only by a VFS connection that holds the
** WAL write lock (shm slot 0) or the exclusive database lock, so appends from
** every process are serialised by SQLite's own locks and need none of ours.
** An appender writes the record at ctl->log_end with pwrite and then
** publishes the new end under a seqlock; a reader never looks past a
** published end, so it never sees a torn record. A process killed mid-append
** leaves bytes past the end that the next append overwrites.
**
** The ctl block is rebuilt from the log files by the first process that opens
** the spool (it holds an exclusive fcntl lock on byte 0 of ctl while doing so;
** every user then holds a shared lock), exactly like SQLite's own -shm
** "DMS" protocol: after a crash of every user or of the machine, no stale
** shared state survives.
*/
#ifndef WS_SPOOL_H
#define WS_SPOOL_H

#include <stddef.h>
#include <stdint.h>

#include "../common/err.h"
#include "../common/util.h"
#include "../format/spoolrec.h"

typedef struct spool spool;

/* A position in the log: file sequence number and byte offset in it. */
typedef struct spool_pos {
    uint64_t seq;
    uint64_t off;
} spool_pos;

static inline int spool_pos_cmp(spool_pos a, spool_pos b) {
    if (a.seq != b.seq) return a.seq < b.seq ? -1 : 1;
    return a.off < b.off ? -1 : a.off > b.off ? 1 : 0;
}

/* What the VFS last recorded about the WAL (read and written under the WAL
** write lock or the exclusive database lock). */
enum { SPOOL_WAL_UNKNOWN = 0, SPOOL_WAL_OPEN = 1, SPOOL_WAL_ENDED = 2 };
typedef struct spool_walinfo {
    uint32_t cur_salt1, cur_salt2; /* last WAL_BEGIN (or WAL_END) recorded */
    uint32_t cur_state;            /* SPOOL_WAL_* */
    uint32_t wm_salt1, wm_salt2;   /* last WATERMARK recorded */
    uint32_t wm_mx;
} spool_walinfo;

#define SPOOL_ERR_MAX 512 /* bytes of last_error, NUL included */

/* The status the elected shipper publishes for `walship status`, PRAGMA
** walship_status and walship_flush. */
typedef struct spool_status {
    /* wall clock of the shipper's last status change (an unchanged status
    ** is not rewritten); 0 = none */
    int64_t heartbeat_ms;
    int32_t pid;               /* the shipper's process */
    uint64_t generation;
    uint64_t txid;             /* last transaction consumed */
    uint64_t shipped_txid;     /* last transaction in the store */
    int64_t oldest_unshipped_ms; /* commit time of the oldest transaction not yet stored; 0 = none */
    spool_pos uploaded;        /* every record before this is in the store */
    uint64_t queue_bytes;      /* closed segments waiting for upload */
    char last_error[SPOOL_ERR_MAX]; /* "" when healthy */
    char generation_reason[SPOOL_ERR_MAX]; /* why the current generation began */
} spool_status;

/* Opens (creating if needed) the spool directory dir for a database and maps
** its ctl block, rebuilding it if this process is the first user. */
int spool_open(const char *dir, spool **out, wserr *err);
void spool_close(spool *sp);
const char *spool_path(const spool *sp);

/* ---- producer side (caller holds the WAL write lock or exclusive db lock) -- */

/* Appends one encoded record. With sync != 0 the log file is fdatasync'ed
** before returning (used before a WAL restart, truncate or delete). */
int spool_append(spool *sp, const uint8_t *rec, size_t n, int sync, wserr *err);
/* Starts a new log file, so what came before can be deleted once consumed. */
int spool_rotate(spool *sp, wserr *err);
void spool_walinfo_get(spool *sp, spool_walinfo *out);
void spool_walinfo_set(spool *sp, const spool_walinfo *in);

/* The shipper's durable position in the WAL, for materialisation: frames
** after (salt1, salt2, frame) are not yet safe anywhere but the WAL. */
void spool_shipped_get(spool *sp, uint32_t *salt1, uint32_t *salt2, uint32_t *frame);

/* ---- consumer side ------------------------------------------------------ */

/* The published end of the log (consistent seq/offset pair). */
void spool_end(spool *sp, spool_pos *out);
/* The first record position of the oldest log file present. */
int spool_begin(spool *sp, spool_pos *out, wserr *err);

/* A reader's open log file. The shipper reads through the spool's own
** (rd NULL in spool_read); anyone else (a status reader in another thread,
** the CLI) brings one of its own: {-1, 0}, closed with spool_reader_close. */
typedef struct spool_reader {
    int fd;
    uint64_t seq;
    /* read-ahead of file seq: bytes [ra_off, ra_off + ra_len), all before
    ** the published end when read (records there never change) */
    uint8_t *ra;
    size_t ra_len;
    uint64_t ra_off;
} spool_reader;
void spool_reader_close(spool_reader *rd);
/* Closes the shipper's reader until the next spool_read reopens it (an idle
** database holds no descriptor it can open again). Only from the thread
** running the shipper's step. */
void spool_reader_release(spool *sp);

/* Reads the record at *pos into buf and decodes it into rec, moving *pos past
** it (and across file boundaries). Returns 1 for a record, 0 at the
** published end, or a negative walship_err. A record that fails its checks
** before the published end is corruption of the spool (WALSHIP_ERR_CORRUPT).
** rd: the caller's reader, or NULL for the shipper's (only the thread
** running the shipper's step may use that one). */
int spool_read(spool *sp, spool_reader *rd, spool_pos *pos, wsbuf *buf, spool_rec *rec,
               wserr *err);

/* Bytes in the log files now (a directory listing and a stat per file). */
uint64_t spool_log_bytes(spool *sp);

/* Deletes log files that lie entirely before pos (never the current one). */
void spool_trim(spool *sp, spool_pos pos);

void spool_shipped_set(spool *sp, uint32_t salt1, uint32_t salt2, uint32_t frame);
void spool_status_set(spool *sp, const spool_status *st);
void spool_status_get(spool *sp, spool_status *out);

/* walship_flush support: a caller bumps the request counter (getting its
** request number) and waits until the shipper has marked that number done:
** everything committed when the shipper took the request up is in the
** store. Numbers wrap; compare with (int32_t)(done - req) >= 0. */
uint32_t spool_flush_request(spool *sp);
uint32_t spool_flush_requests(spool *sp);
void spool_flush_done_set(spool *sp, uint32_t req);
uint32_t spool_flush_done(spool *sp);

/* A checkpoint is starting: the WAL may restart soon, and every committed
** frame the shipper has not made durable by then is copied into the spool
** on the committing thread. A request asks the shipper for a durability
** point now (it runs beside the checkpoint's own syncs) instead of at its
** usual pace. */
void spool_sync_request(spool *sp);
uint32_t spool_sync_requests(spool *sp);

/* What the shipper put into the store since the spool's block was last
** built (its first user opened it): objects and their bytes, by kind; and
** what the VFS copied from the WAL into the spool meanwhile (frames the
** shipper had not made durable when SQLite restarted, truncated or deleted
** the WAL). */
typedef struct spool_uploads {
    uint64_t segments, segment_bytes, snapshots, snapshot_bytes;
    uint64_t copied_frames, copied_bytes;
} spool_uploads;
void spool_count_upload(spool *sp, int snapshot, uint64_t bytes);
void spool_count_copy(spool *sp, uint64_t frames, uint64_t bytes);
void spool_uploads_get(spool *sp, spool_uploads *out);

/* Evidence of the database file's state after walship's own last write to
** it (a checkpoint, the WAL's delete at close, a WAL's begin): a hash of
** its device, inode, size and mtime. A later mismatch means another process
** wrote it, and the shipper checks the file before shipping anything more.
** Any connection may note it (last writer wins: a stale note only costs a
** check). 0 = unknown. */
struct stat;
uint64_t spool_dbfile_evidence(const struct stat *st);
void spool_dbfile_note(spool *sp, const char *db_path);
uint64_t spool_dbfile_noted(spool *sp);
/* Compares the file with the note; on a mismatch bumps the suspect counter
** (the shipper checks the file's content when it moves) and returns 1. */
int spool_dbfile_check(spool *sp, const char *db_path);
uint32_t spool_dbfile_suspects(spool *sp);

/* Status flags the shipper publishes besides its status record. */
enum {
    SPOOL_ST_PERMANENT = 1,  /* last_error needs the user (config, ownership): retrying won't help */
    SPOOL_ST_DISCARDING = 2  /* not storing history (spool limit or refused destination) */
};
void spool_flags_set(spool *sp, uint32_t flags);
uint32_t spool_flags_get(spool *sp);

/* The process id the shipper last published in its status (0 if none). */
int spool_shipper_pid(spool *sp);

/* Nonzero if some process holds the election lock now: a shipper lives. */
int spool_shipper_alive(spool *sp);

/* Election: try to become this database's shipper (a non-blocking OFD write
** lock on byte 1 of dir/ctl, through the ctl descriptor: no descriptor of its
** own). Returns 1 if this spool object now holds it, 0 if another does. */
int spool_try_elect(spool *sp, wserr *err);
void spool_unelect(spool *sp);

#endif
