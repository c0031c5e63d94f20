/*
** replica.c -- a read replica fed from the store. See replica.h for the
** contract; this comment is the design.
** replica_impl.h says which file of replica/ holds what; this one holds
** the entry points and the replica's own SQLite connection.
**
** POSITION
**   The replica knows, for the state readers currently see: the generation,
**   the TXID, its commit time, and the page hashes behind the rolling
**   checksum (format/rolling.h), which equal the primary's after that TXID.
**   They are recorded in <PATH>-walship-replica/state (two 4 KiB slots
**   written in turn, each with a sequence number and a checksum; see
**   docs/FORMAT.md), together with the salts and mxFrame of the WAL at that
**   point. The page hashes are not stored: at start-up the database as
**   SQLite shows it (WAL frames over the file) is read and hashed once,
**   which both rebuilds them and proves the file still holds what the state
**   says -- whatever happened while no replica process ran. Nothing is
**   downloaded again.
**
** APPLYING (one "batch" = the segments one round downloaded)
**   1. Take the WAL write lock (walindex.h; never waits) and read the
**      wal-index header. It must equal the header this process last
**      published, or differ only by another process's TRUNCATE checkpoint
**      (mxFrame 0, new salts, same change counter); anything else is a
**      write by someone else (below).
**   2. For each segment: a savepoint, then for each transaction: its pages
**      become frames (checksummed with this WAL's salts), pages the
**      database grew by without a frame become zero frames, the page hashes
**      move, and only if the checksum then equals the transaction's
**      recorded post_chk does its last frame become a commit frame. A
**      transaction that fails ends the segment: everything after the
**      savepoint is dropped (frames, index entries, hash changes) and the
**      rest of the segment is still read to tell a damaged object (refused,
**      retried later) from a history that differs from ours (divergence:
**      re-bootstrap).
**   3. Publish: fdatasync the WAL, then the new header (copy 1, barrier,
**      copy 0): readers move from one primary state to a later one.
**   4. Release the lock, then record the position (no fsync; fsynced every
**      10 s, before a restart and at exit).
**
** CHECKPOINTS AND RESTARTS
**   When the WAL holds ckpt_frames frames and the replica is idle (or four
**   times that in any case), a PASSIVE checkpoint runs through the
**   replica's own connection, retried for at most 50 ms while readers that
**   began before the last publish finish (new readers do not hold frames
**   back). If everything got backfilled, the WAL is restarted under the
**   write lock, retried for at most 30 ms, exactly when SQLite's writer
**   would (walindex.h). A reader that stays longer only makes the WAL grow;
**   status shows for how long (wal_pinned_ms). After a restart the next
**   publish truncates the -wal file back to wal_limit_bytes.
**
** CRASHES (kill -9 at any point)
**   Readers only ever see published headers, and a header is published only
**   after its frames are synced, so a crash leaves the last published state
**   (the kernel releases the write lock). Frames and index entries written
**   after it are garbage to SQLite; the next append clears the entries
**   (walCleanupHash). At restart: hash the view, then
**     - its checksum equals the recorded one: resume there;
**     - the recorded switch intent's checksum: resume there (a generation
**       switch published just before the crash);
**     - same WAL (salts), more frames than recorded: the crash came between
**       a publish and the record; every applied transaction ends in exactly
**       one commit frame, so TXID = recorded + commit frames since; the next
**       segment's checksums confirm it;
**     - anything else: re-bootstrap in place.
**
** FOREIGN WRITES
**   Someone writing to the replica (any connection without mode=ro) changes
**   the wal-index header: seen at the next write lock or by the idle check
**   every round. The replica counts it, reports it and re-bootstraps in
**   place: the newest state from the store, diffed against the database as
**   it now is, applied as one transaction.
**
** GENERATIONS AND RE-BOOTSTRAPS IN PLACE
**   A newer generation with a snapshot, a divergence, a foreign write, or
**   history missing from the store: restore the newest state into a file in
**   the state directory (restore_build verifies everything), then write
**   every page that differs from the current view (and every page past its
**   end) as one transaction whose commit frame carries the new size. Readers
**   switch atomically. The page size cannot change this way.
**
** FOLLOWING THE STORE (requests)
**   Each round is one LIST of "generations/" starting after the key of the
**   last segment applied: it returns the new segments of this generation,
**   this generation's snapshots and everything of newer generations. So an
**   idle replica costs one request per poll, and each new segment one GET.
**   A gap (a re-shipped range that starts before the cursor) falls back to a
**   full listing of the generation's segments.
**
** LAG
**   lag_ms is 0 when every transaction the store holds is applied.
**   Otherwise it is now minus the commit time of the first transaction not
**   applied (from its segment's header once downloaded, else the segment's
**   upload time). While the store cannot be reached, it is at least the
**   time since the last successful listing.
*/
#include "replica.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/log.h"
#include "../common/util.h"
#include "replica_impl.h"

/* ---- SQLite ------------------------------------------------------------------------ */
static int text_cb(void *ctx, int n, char **v, char **names) {
    (void)names;
    if (n > 0 && v[0]) ws_strlcpy(ctx, v[0], 32);
    return 0;
}

int rep_sql_exec(replica *r, const char *sql, char *first_value, wserr *err) {
    char *msg = NULL;
    if (first_value) first_value[0] = '\0';
    int rc = r->sql->exec(r->db, sql, first_value ? text_cb : NULL, first_value, &msg);
    if (rc != SQLITE_OK) {
        wserr_set(err, WALSHIP_ERR_SQLITE, "%s on %s: %s", sql, r->path,
                  msg ? msg : r->sql->errmsg(r->db));
        r->sql->free(msg);
        return WALSHIP_ERR_SQLITE;
    }
    return 0;
}

static void conn_close(replica *r) {
    walapp_free(r->app);
    r->app = NULL;
    if (r->wal_fd >= 0) close(r->wal_fd);
    r->wal_fd = -1;
    if (r->db) r->sql->close(r->db);
    r->db = NULL;
    r->dbf = NULL;
}

/* Opens the replica's own connection (unix VFS, never walship), checks WAL
** mode and page size, opens the WAL (a read does it), and the appender. The
** connection stays open for the life of the process, never in a
** transaction: it keeps the WAL and wal-index alive (a closing reader is
** never the last connection) and runs the checkpoints. */
int rep_conn_open(replica *r, wserr *err) {
    const char *vfs = r->sql->vfs_find("unix") ? "unix" : NULL;
    int rc = r->sql->open_v2(r->path, &r->db, SQLITE_OPEN_READWRITE, vfs);
    if (rc != SQLITE_OK) {
        wserr_set(err, WALSHIP_ERR_SQLITE, "open %s: %s", r->path,
                  r->db ? r->sql->errmsg(r->db) : "out of memory");
        conn_close(r);
        return WALSHIP_ERR_SQLITE;
    }
    /* Closing must not try to checkpoint: that attempt holds the database
    ** file's PENDING lock for a moment, and a reader opening its
    ** connection then (with no busy handler) would get SQLITE_BUSY. */
    r->sql->db_config(r->db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, (int *)NULL);
    char v[32];
    if ((rc = rep_sql_exec(r, "PRAGMA busy_timeout=5000", NULL, err)) ||
        (rc = rep_sql_exec(r, "PRAGMA wal_autocheckpoint=0", NULL, err)) ||
        (rc = rep_sql_exec(r, "PRAGMA journal_mode", v, err)))
        goto fail;
    if (strcmp(v, "wal") != 0) {
        rc = wserr_set(err, WALSHIP_ERR_INVALID,
                       "%s is not in WAL mode (journal_mode is %s), so it is not a walship "
                       "replica; remove it or choose another path",
                       r->path, v);
        goto fail;
    }
    /* The first read opens the WAL (and recovers the wal-index if needed). */
    if ((rc = rep_sql_exec(r, "SELECT count(*) FROM sqlite_master", NULL, err)) ||
        (rc = rep_sql_exec(r, "PRAGMA page_size", v, err)))
        goto fail;
    uint32_t psz = (uint32_t)strtoul(v, NULL, 10);
    if (r->page_size && psz != r->page_size) {
        rc = wserr_set(err, WALSHIP_ERR_INVALID, "%s has %u-byte pages, its replica state says %u",
                       r->path, psz, r->page_size);
        goto fail;
    }
    r->page_size = psz;
    if ((rc = rep_sql_exec(r, "PRAGMA busy_timeout=0", NULL, err))) goto fail;
    if (r->sql->file_control(r->db, "main", SQLITE_FCNTL_FILE_POINTER, &r->dbf) != SQLITE_OK ||
        r->dbf == NULL) {
        rc = wserr_set(err, WALSHIP_ERR_SQLITE, "no file handle for %s", r->path);
        goto fail;
    }
    r->wal_fd = open(r->wal_path, O_RDWR | O_CLOEXEC);
    if (r->wal_fd < 0) {
        rc = wserr_errno(err, wserr_from_errno(errno), errno, "open %s", r->wal_path);
        goto fail;
    }
    if ((rc = walapp_open(r->dbf, r->wal_fd, psz, &r->app, err))) goto fail;
    walapp_set_sync(r->app, !r->o.no_sync);
    free(r->page1);
    free(r->page1_mark);
    free(r->zero);
    r->page1 = calloc(1, psz);
    r->page1_mark = calloc(1, psz);
    r->zero = calloc(1, psz);
    if (r->page1 == NULL || r->page1_mark == NULL || r->zero == NULL) {
        rc = wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
        goto fail;
    }
    return 0;
fail:
    conn_close(r);
    return rc;
}

/* Removes what an interrupted bootstrap left: "<path>.walship-tmp-*" beside
** the replica and the state directory's image file. Only with the lock. */
static void cleanup_stale_temps(replica *r) {
    char dirpart[PATH_MAX], prefix[PATH_MAX];
    ws_strlcpy(dirpart, r->path, sizeof dirpart);
    char *slash = strrchr(dirpart, '/');
    if (slash == NULL) return;
    *slash = '\0';
    snprintf(prefix, sizeof prefix, "%s.walship-tmp-", slash + 1);
    DIR *d = opendir(dirpart[0] ? dirpart : "/");
    if (d != NULL) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (strncmp(e->d_name, prefix, strlen(prefix)) != 0) continue;
            char p[PATH_MAX + 256];
            snprintf(p, sizeof p, "%s/%s", dirpart, e->d_name);
            if (unlink(p) == 0) WS_INFO("replica_stale_temp_removed", "path=%s", p);
        }
        closedir(d);
    }
    char img[PATH_MAX + 32];
    snprintf(img, sizeof img, "%s/image.tmp", r->dir);
    unlink(img);
}

/* ---- public entry points ---------------------------------------------------------- */
int replica_open(const replica_opts *o, replica **out, wserr *err) {
    *out = NULL;
    if (o->url == NULL || o->path == NULL || o->sql == NULL)
        return wserr_set(err, WALSHIP_ERR_INVALID, "replica: a URL, a path and SQLite are needed");
    if (strlen(o->url) > STATE_URL_MAX)
        return wserr_set(err, WALSHIP_ERR_INVALID, "the store URL is too long");
    replica *r = calloc(1, sizeof *r);
    if (r == NULL) return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
    pthread_mutex_init(&r->mu, NULL);
    r->o = *o;
    r->sql = o->sql;
    r->lock_fd = r->state_fd = r->wal_fd = -1;
    if (r->o.poll_ms <= 0) r->o.poll_ms = 200;
    if (r->o.ckpt_frames == 0) r->o.ckpt_frames = 1000;
    if (r->o.wal_limit_bytes == 0) r->o.wal_limit_bytes = (uint64_t)64 << 20;
    if (r->o.parallel <= 0) r->o.parallel = 4;
    ws_rolling_init(&r->roll, 0);
    ws_strlcpy(r->url, o->url, sizeof r->url);
    int rc;
    /* an absolute path: the state directory, status and sqlite all agree */
    char dirpart[PATH_MAX];
    ws_strlcpy(dirpart, o->path, sizeof dirpart);
    char *slash = strrchr(dirpart, '/');
    const char *base = o->path;
    if (slash) {
        *slash = '\0';
        base = slash + 1;
        if (dirpart[0] == '\0') ws_strlcpy(dirpart, "/", sizeof dirpart);
    } else {
        ws_strlcpy(dirpart, ".", sizeof dirpart);
    }
    char absdir[PATH_MAX];
    if (realpath(dirpart, absdir) == NULL) {
        rc = wserr_errno(err, wserr_from_errno(errno), errno, "directory of %s", o->path);
        goto fail;
    }
    if (*base == '\0' ||
        snprintf(r->path, sizeof r->path, "%s/%s", strcmp(absdir, "/") ? absdir : "", base) >=
            (int)sizeof r->path) {
        rc = wserr_set(err, WALSHIP_ERR_INVALID, "bad replica path \"%s\"", o->path);
        goto fail;
    }
    snprintf(r->wal_path, sizeof r->wal_path, "%s-wal", r->path);
    if (replica_state_dir(r->path, r->dir, sizeof r->dir) != 0) {
        rc = wserr_set(err, WALSHIP_ERR_INVALID, "replica path too long");
        goto fail;
    }
    snprintf(r->state_path, sizeof r->state_path, "%s/state", r->dir);
    snprintf(r->status_path, sizeof r->status_path, "%s/status.json", r->dir);
    struct stat st;
    int db_exists = stat(r->path, &st) == 0;
    int dir_exists = stat(r->dir, &st) == 0;
    if (db_exists && !dir_exists) {
        rc = wserr_set(err, WALSHIP_ERR_EXISTS,
                       "%s exists but is not a walship replica (no %s); remove it or choose "
                       "another path",
                       r->path, r->dir);
        goto fail;
    }
    if ((rc = ws_mkdir_p(r->dir, 0755, err))) goto fail;
    char lock[PATH_MAX + 16];
    snprintf(lock, sizeof lock, "%s/lock", r->dir);
    r->lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (r->lock_fd < 0) {
        rc = wserr_errno(err, wserr_from_errno(errno), errno, "open %s", lock);
        goto fail;
    }
    if (flock(r->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        rc = wserr_set(err, WALSHIP_ERR_BUSY,
                       "another walship replica process is already maintaining %s", r->path);
        goto fail;
    }
    r->locked = 1;
    cleanup_stale_temps(r);
    r->state_fd = open(r->state_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (r->state_fd < 0) {
        rc = wserr_errno(err, wserr_from_errno(errno), errno, "open %s", r->state_path);
        goto fail;
    }
    if (rep_state_load(r->state_fd, &r->saved) == 0) {
        r->have_state = 1;
        if (strcmp(r->saved.url, r->url) != 0) {
            char was[2048], now[2048];
            ws_redact_url(was, sizeof was, r->saved.url);
            ws_redact_url(now, sizeof now, r->url);
            rc = wserr_set(err, WALSHIP_ERR_INVALID,
                           "%s is a replica of %s, not of %s; remove it (and %s) to replicate "
                           "another store",
                           r->path, was, now, r->dir);
            goto fail;
        }
        r->page_size = r->saved.page_size;
    } else if (db_exists) {
        rc = wserr_set(err, WALSHIP_ERR_EXISTS,
                       "%s exists but its replica state (%s) is missing or damaged; remove "
                       "both to bootstrap again",
                       r->path, r->state_path);
        goto fail;
    }
    if ((rc = store_open(r->url, &r->st, err))) goto fail;
    r->phase = db_exists ? PHASE_RESUME : PHASE_BOOTSTRAP;
    r->status.pid = (int)getpid();
    r->status.started_ms = ws_now_ms();
    r->status.state = REPLICA_STARTING;
    if (r->have_state) {
        r->status.generation = r->saved.generation;
        r->status.applied_txid = r->saved.txid;
        r->status.applied_commit_ms = r->saved.commit_ms;
    }
    ws_redact_url(r->status.url, sizeof r->status.url, r->url);
    ws_strlcpy(r->status.path, r->path, sizeof r->status.path);
    *out = r;
    return 0;
fail:
    replica_close(r);
    return rc;
}

int replica_step(replica *r, int64_t *wait_ms, wserr *err) {
    *wait_ms = 0;
    wserr e = {0};
    int rc = 0;
    switch (r->phase) {
    case PHASE_BOOTSTRAP:
        rc = rep_bootstrap_fresh(r, &e);
        break;
    case PHASE_RESUME:
        rc = rep_resume(r, &e);
        break;
    case PHASE_REBOOTSTRAP:
        rc = rep_rebootstrap(r, &e);
        if (rc == 0 && r->phase == PHASE_REBOOTSTRAP)
            *wait_ms = r->next_rebootstrap_ms - ws_mono_ms();
        break;
    default:
        rep_set_phase_status(r, REPLICA_FOLLOWING);
        rc = rep_follow(r, wait_ms, &e);
        if (rc == 0 && r->phase == PHASE_FOLLOW) rep_checkpoint_phase(r, *wait_ms > 0);
        break;
    }
    if (rc) {
        /* Store and lock problems pass; they are retried with backoff. */
        /* Fatal: the path is not a replica, the primary cannot be
        ** followed (UNSUPPORTED), local I/O fails, memory. Everything else
        ** (the store, a full disk, a lock held elsewhere, SQLite errors
        ** while someone else holds the database) is retried. */
        int passing = rc == WALSHIP_ERR_NETWORK || rc == WALSHIP_ERR_TIMEOUT ||
                      rc == WALSHIP_ERR_STORE || rc == WALSHIP_ERR_AUTH ||
                      rc == WALSHIP_ERR_NOTFOUND || rc == WALSHIP_ERR_CORRUPT ||
                      rc == WALSHIP_ERR_BUSY || rc == WALSHIP_ERR_STATE ||
                      rc == WALSHIP_ERR_NOSPACE || rc == WALSHIP_ERR_SQLITE;
        rep_report(r, WS_LOG_ERROR, "replica_error", e.msg);
        if (!passing) {
            if (err) *err = e;
            rep_status_write(r, 1);
            return rc;
        }
        r->backoff_ms = r->backoff_ms ? r->backoff_ms * 2 : r->o.poll_ms;
        if (r->backoff_ms > MAX_BACKOFF_MS) r->backoff_ms = MAX_BACKOFF_MS;
        *wait_ms = r->backoff_ms;
        if (r->phase == PHASE_FOLLOW) r->next_try_ms = ws_mono_ms() + r->backoff_ms;
    }
    if (*wait_ms < 0) *wait_ms = 0;
    rep_status_write(r, 0);
    return 0;
}

int replica_run(replica *r, volatile sig_atomic_t *stop, wserr *err) {
    while (!*stop) {
        int64_t wait = 0;
        int rc = replica_step(r, &wait, err);
        if (rc) return rc;
        int64_t until = ws_mono_ms() + wait;
        while (!*stop && ws_mono_ms() < until) {
            int64_t left = until - ws_mono_ms();
            ws_sleep_ms(left < 50 ? left : 50);
            rep_status_write(r, 0); /* keep the heartbeat and lag fresh while waiting */
        }
    }
    return 0;
}

void replica_close(replica *r) {
    if (r == NULL) return;
    if (r->app && r->phase == PHASE_FOLLOW) {
        /* Leave the WAL empty when no reader still needs it (TRUNCATE never
        ** waits: busy timeout 0; readers keep their snapshots). A connection
        ** that opens the replica while no process has it open rebuilds the
        ** wal-index from the WAL, and others opening meanwhile without a
        ** busy handler get SQLITE_BUSY_RECOVERY: an empty WAL makes that
        ** instant, a long one makes it last. Refused by a reader, it still
        ** backfills what it can, as PASSIVE would. */
        int nlog, nckpt;
        r->sql->wal_checkpoint_v2(r->db, "main", SQLITE_CHECKPOINT_TRUNCATE, &nlog, &nckpt);
    }
    if (r->locked && r->state_fd >= 0 && r->have_state && r->app) {
        wserr e = {0};
        rep_state_save(r, 1, NULL, &e);
    }
    conn_close(r);
    rep_status_lock(r);
    r->status.state = REPLICA_STOPPED;
    rep_status_unlock(r);
    if (r->locked) rep_status_write(r, 1);
    rep_cands_free(r);
    store_free(r->st);
    ws_rolling_free(&r->roll);
    free(r->undo);
    free(r->page1);
    free(r->page1_mark);
    free(r->zero);
    if (r->state_fd >= 0) close(r->state_fd);
    if (r->lock_fd >= 0) close(r->lock_fd);
    pthread_mutex_destroy(&r->mu);
    free(r);
}
