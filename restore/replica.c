/*
** replica.c -- a read replica fed from the store. See replica.h for the
** contract; this comment is the design.
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
#include <inttypes.h>
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
#include "../format/objfmt.h"
#include "../format/rolling.h"
#include "../format/wal.h"
#include "../store/store.h"
#include "catalog.h"
#include "fetch.h"
#include "restore.h"
#include "walindex.h"

#define STATE_MAGIC "WSREPLST"
#define STATE_VERSION 1
#define STATE_SLOT 4096
#define STATE_URL_MAX 2048
#define MAX_SEGS_PER_ROUND 256
#define MAX_BYTES_PER_ROUND ((uint64_t)64 << 20) /* downloaded segments held at once */
#define PUBLISH_FRAMES 8192       /* publish within a batch after this many frames */
#define STATE_SYNC_MS 10000
#define STATUS_WRITE_MS 250
#define MAX_BACKOFF_MS 10000
#define CKPT_WAIT_MS 50
#define RESTART_WAIT_MS 30
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

/* Where a segment's application started, to roll back to. */
typedef struct rep_mark {
    uint64_t chk;
    uint32_t db_pages;
    uint64_t txid;
    int64_t commit_ms;
    walapp_savepoint sp;
} rep_mark;

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

/* ---- status -------------------------------------------------------------------- */
static void status_lock(replica *r) { pthread_mutex_lock(&r->mu); }
static void status_unlock(replica *r) { pthread_mutex_unlock(&r->mu); }

/* Records a problem in the status (and the log). */
static void report(replica *r, int level, const char *event, const char *msg) {
    status_lock(r);
    ws_strlcpy(r->status.last_error, msg, sizeof r->status.last_error);
    r->status.last_error_ms = ws_now_ms();
    status_unlock(r);
    WS_LOG(level, event, "replica=%s err=\"%s\"", r->path, msg);
}

static void rate_add(replica *r, uint64_t tx, uint64_t pages) {
    int64_t sec = ws_mono_ms() / 1000;
    int i = (int)(sec % RATE_BUCKETS);
    status_lock(r);
    if (r->rate_sec[i] != sec) {
        r->rate_sec[i] = sec;
        r->rate_tx[i] = 0;
        r->rate_pages[i] = 0;
    }
    r->rate_tx[i] += tx;
    r->rate_pages[i] += pages;
    status_unlock(r);
}

/* Fills the derived fields of the status. Caller holds mu. */
static void status_refresh(replica *r) {
    replica_status *s = &r->status;
    int64_t now = ws_now_ms(), sec = ws_mono_ms() / 1000;
    uint64_t tx = 0, pages = 0;
    for (int i = 0; i < RATE_BUCKETS; i++) {
        if (sec - r->rate_sec[i] < RATE_BUCKETS) {
            tx += r->rate_tx[i];
            pages += r->rate_pages[i];
        }
    }
    int64_t span = now - s->started_ms;
    double secs = span < RATE_BUCKETS * 1000 ? (double)(span > 1000 ? span : 1000) / 1000.0
                                               : (double)RATE_BUCKETS;
    s->apply_tx_per_s = (double)tx / secs;
    s->apply_pages_per_s = (double)pages / secs;
    int64_t lag = 0;
    if (s->primary_txid > s->applied_txid || s->primary_generation > s->generation) {
        int64_t t = r->first_unapplied_ms ? r->first_unapplied_ms : s->applied_commit_ms;
        if (t > 0 && now > t) lag = now - t;
    }
    /* Blind since the last successful listing (or since start): at least
    ** that far behind, for all we know. */
    int64_t seen = s->last_poll_ok_ms ? s->last_poll_ok_ms : s->started_ms;
    if (s->state == REPLICA_FOLLOWING && now - seen > lag && now - seen > 2 * r->o.poll_ms + 1000)
        lag = now - seen;
    s->lag_ms = lag;
    struct stat st;
    s->wal_bytes = stat(r->wal_path, &st) == 0 ? (uint64_t)st.st_size : 0;
    s->heartbeat_ms = now;
}

void replica_status_get(replica *r, replica_status *out) {
    status_lock(r);
    status_refresh(r);
    *out = r->status;
    status_unlock(r);
}

void replica_set_metrics_addr(replica *r, const char *addr) {
    status_lock(r);
    ws_strlcpy(r->status.metrics_addr, addr, sizeof r->status.metrics_addr);
    status_unlock(r);
}

static const char *state_name(int s) {
    switch (s) {
    case REPLICA_BOOTSTRAPPING: return "bootstrapping";
    case REPLICA_FOLLOWING: return "following";
    case REPLICA_REBOOTSTRAPPING: return "rebootstrapping";
    case REPLICA_STOPPED: return "stopped";
    default: return "starting";
    }
}

void replica_status_to_json(const replica_status *s, char *out, size_t n) {
    char eurl[2300], epath[2100], eerr[1100], rurl[1100];
    ws_redact_url(rurl, sizeof rurl, s->url);
    ws_json_escape(eurl, sizeof eurl, rurl);
    ws_json_escape(epath, sizeof epath, s->path);
    ws_json_escape(eerr, sizeof eerr, s->last_error);
    snprintf(out, n,
             "{\"replica\":\"%s\",\"url\":\"%s\",\"state\":\"%s\",\"pid\":%d,"
             "\"generation\":\"%016" PRIx64 "\",\"applied_txid\":%" PRIu64
             ",\"applied_commit_ms\":%" PRId64 ",\"primary_generation\":\"%016" PRIx64
             "\",\"primary_txid\":%" PRIu64 ",\"lag_ms\":%" PRId64
             ",\"apply_tx_per_s\":%.1f,\"apply_pages_per_s\":%.1f,\"wal_bytes\":%" PRIu64
             ",\"wal_frames\":%u,\"wal_backfilled\":%u,\"wal_pinned_ms\":%" PRId64
             ",\"txs_applied\":%" PRIu64 ",\"pages_applied\":%" PRIu64
             ",\"segments_applied\":%" PRIu64 ",\"bytes_downloaded\":%" PRIu64
             ",\"checkpoints\":%" PRIu64 ",\"wal_restarts\":%" PRIu64 ",\"bootstraps\":%" PRIu64
             ",\"rebootstraps\":%" PRIu64 ",\"foreign_writes\":%" PRIu64
             ",\"divergences\":%" PRIu64 ",\"corrupt_objects\":%" PRIu64
             ",\"store_errors\":%" PRIu64 ",\"list_requests\":%" PRIu64
             ",\"get_requests\":%" PRIu64 ",\"started_ms\":%" PRId64 ",\"heartbeat_ms\":%" PRId64
             ",\"last_poll_ok_ms\":%" PRId64 ",\"last_apply_ms\":%" PRId64
             ",\"metrics\":\"%s\",\"last_error\":\"%s\",\"last_error_ms\":%" PRId64 "}",
             epath, eurl, state_name(s->state), s->pid, s->generation, s->applied_txid,
             s->applied_commit_ms, s->primary_generation, s->primary_txid, s->lag_ms,
             s->apply_tx_per_s, s->apply_pages_per_s, s->wal_bytes, s->wal_frames,
             s->wal_backfilled, s->wal_pinned_ms, s->txs_applied, s->pages_applied,
             s->segments_applied, s->bytes_downloaded, s->checkpoints, s->wal_restarts,
             s->bootstraps, s->rebootstraps, s->foreign_writes, s->divergences,
             s->corrupt_objects, s->store_errors, s->list_requests, s->get_requests,
             s->started_ms, s->heartbeat_ms, s->last_poll_ok_ms, s->last_apply_ms,
             s->metrics_addr, eerr, s->last_error_ms);
}

/* Prometheus label value escaping: backslash, quote, newline. */
static void prom_label(char *out, size_t n, const char *s) {
    size_t o = 0;
    for (; *s && o + 3 < n; s++) {
        if (*s == '\\' || *s == '"') {
            out[o++] = '\\';
            out[o++] = *s;
        } else if (*s == '\n') {
            out[o++] = '\\';
            out[o++] = 'n';
        } else {
            out[o++] = *s;
        }
    }
    out[o] = '\0';
}

void replica_metrics_text(const replica_status *s, char *out, size_t n) {
    char db[2100], err[1100], url[1100], rurl[1100];
    prom_label(db, sizeof db, s->path);
    prom_label(err, sizeof err, s->last_error);
    ws_redact_url(rurl, sizeof rurl, s->url);
    prom_label(url, sizeof url, rurl);
    size_t o = 0;
#define EMIT(...)                                                                   \
    do {                                                                            \
        if (o < n) o += (size_t)snprintf(out + o, n - o, __VA_ARGS__);             \
    } while (0)
#define METRIC(name, type, help, fmt, val)                                          \
    EMIT("# HELP walship_replica_" name " " help "\n# TYPE walship_replica_" name " " type \
         "\nwalship_replica_" name "{db=\"%s\"} " fmt "\n",                        \
         db, val)
    EMIT("# HELP walship_replica_info The replica, its store and state (value always 1).\n"
         "# TYPE walship_replica_info gauge\n"
         "walship_replica_info{db=\"%s\",url=\"%s\",generation=\"%016" PRIx64
         "\",state=\"%s\"} 1\n",
         db, url, s->generation, state_name(s->state));
    METRIC("applied_txid", "gauge", "Last primary transaction readers can see.", "%" PRIu64,
           s->applied_txid);
    METRIC("primary_txid", "gauge", "Newest primary transaction seen in the store.", "%" PRIu64,
           s->primary_txid);
    METRIC("lag_seconds", "gauge",
           "How far behind the primary readers are (0 when everything in the store is applied).",
           "%.3f", (double)s->lag_ms / 1000.0);
    METRIC("applied_commit_timestamp_seconds", "gauge",
           "Commit time on the primary of the last applied transaction.", "%.3f",
           (double)s->applied_commit_ms / 1000.0);
    METRIC("apply_transactions_per_second", "gauge", "Transactions applied, last 10 s.", "%.1f",
           s->apply_tx_per_s);
    METRIC("apply_pages_per_second", "gauge", "Pages applied, last 10 s.", "%.1f",
           s->apply_pages_per_s);
    METRIC("wal_bytes", "gauge", "Size of the replica's -wal file.", "%" PRIu64, s->wal_bytes);
    METRIC("wal_frames", "gauge", "Frames in the replica's WAL (mxFrame).", "%u", s->wal_frames);
    METRIC("wal_pinned_seconds", "gauge",
           "How long readers have kept the WAL from being checkpointed and restarted.", "%.3f",
           (double)s->wal_pinned_ms / 1000.0);
    METRIC("transactions_applied_total", "counter", "Transactions applied.", "%" PRIu64,
           s->txs_applied);
    METRIC("pages_applied_total", "counter", "Pages applied.", "%" PRIu64, s->pages_applied);
    METRIC("segments_applied_total", "counter", "Segments applied.", "%" PRIu64,
           s->segments_applied);
    METRIC("downloaded_bytes_total", "counter", "Bytes downloaded from the store.", "%" PRIu64,
           s->bytes_downloaded);
    METRIC("checkpoints_total", "counter", "Checkpoints run by the replica.", "%" PRIu64,
           s->checkpoints);
    METRIC("wal_restarts_total", "counter", "WAL restarts done by the replica.", "%" PRIu64,
           s->wal_restarts);
    METRIC("bootstraps_total", "counter", "Full bootstraps into a new file.", "%" PRIu64,
           s->bootstraps);
    METRIC("rebootstraps_total", "counter",
           "Content replaced in place (new generation, divergence, foreign write).", "%" PRIu64,
           s->rebootstraps);
    METRIC("foreign_writes_total", "counter", "Writes to the replica by other connections.",
           "%" PRIu64, s->foreign_writes);
    METRIC("divergences_total", "counter", "Checksum mismatches against the primary's history.",
           "%" PRIu64, s->divergences);
    METRIC("corrupt_objects_total", "counter", "Store objects refused as damaged.", "%" PRIu64,
           s->corrupt_objects);
    METRIC("store_errors_total", "counter", "Failed store requests.", "%" PRIu64,
           s->store_errors);
    EMIT("# HELP walship_replica_store_requests_total Store requests by kind.\n"
         "# TYPE walship_replica_store_requests_total counter\n"
         "walship_replica_store_requests_total{db=\"%s\",op=\"list\"} %" PRIu64 "\n"
         "walship_replica_store_requests_total{db=\"%s\",op=\"get\"} %" PRIu64 "\n",
         db, s->list_requests, db, s->get_requests);
    METRIC("last_error_timestamp_seconds", "gauge", "When the last error happened (0: never).",
           "%.3f", (double)s->last_error_ms / 1000.0);
    EMIT("# HELP walship_replica_last_error The last error (value always 1).\n"
         "# TYPE walship_replica_last_error gauge\n"
         "walship_replica_last_error{db=\"%s\",error=\"%s\"} 1\n",
         db, err);
#undef METRIC
#undef EMIT
}

/* Writes status.json beside the state (temp + rename; no fsync: it is
** rewritten every round and lost on a crash without harm). */
static void status_write(replica *r, int force) {
    int64_t now = ws_mono_ms();
    if (!force && now - r->last_status_write_ms < STATUS_WRITE_MS) return;
    r->last_status_write_ms = now;
    replica_status s;
    replica_status_get(r, &s);
    char json[8192], tmp[PATH_MAX + 64];
    replica_status_to_json(&s, json, sizeof json);
    snprintf(tmp, sizeof tmp, "%s.tmp", r->status_path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return;
    size_t len = strlen(json);
    json[len++] = '\n';
    int ok = ws_write_all(fd, json, len) == 0;
    close(fd);
    if (ok) rename(tmp, r->status_path);
}

int replica_state_dir(const char *path, char *out, size_t n) {
    return snprintf(out, n, "%s-walship-replica", path) >= (int)n ? -1 : 0;
}

int replica_status_json(const char *path, char *out, size_t n) {
    char dir[PATH_MAX], file[PATH_MAX + 32];
    if (replica_state_dir(path, dir, sizeof dir) != 0) return -1;
    snprintf(file, sizeof file, "%s/state", dir);
    struct stat st;
    if (stat(file, &st) != 0) return -1;
    snprintf(file, sizeof file, "%s/status.json", dir);
    wsbuf b = {0};
    if (ws_read_file(file, 65536, &b, NULL) != 0 || b.len < 2 || b.p[0] != '{') {
        wsbuf_free(&b);
        snprintf(out, n, "{\"replica\":\"%s\",\"alive\":false,\"state\":\"unknown\"}", path);
        return 0;
    }
    while (b.len > 0 && (b.p[b.len - 1] == '\n' || b.p[b.len - 1] == '}')) b.len--;
    /* Is the process that wrote it still there and recent? */
    int pid = 0;
    int64_t hb = 0;
    const char *p;
    wsbuf_append(&b, "", 1);
    if ((p = strstr((const char *)b.p, "\"pid\":")) != NULL) pid = atoi(p + 6);
    if ((p = strstr((const char *)b.p, "\"heartbeat_ms\":")) != NULL) hb = strtoll(p + 15, NULL, 10);
    int alive = pid > 0 && (kill(pid, 0) == 0 || errno == EPERM) && ws_now_ms() - hb < 15000 &&
                strstr((const char *)b.p, "\"state\":\"stopped\"") == NULL;
    snprintf(out, n, "%.*s,\"alive\":%s}", (int)strlen((const char *)b.p), (const char *)b.p,
             alive ? "true" : "false");
    wsbuf_free(&b);
    return 0;
}

/* ---- the state file --------------------------------------------------------------- */
static void state_encode(uint8_t *b, const rep_state *s) {
    memset(b, 0, STATE_SLOT);
    memcpy(b, STATE_MAGIC, 8);
    ws_put_be32(b + 8, STATE_VERSION);
    ws_put_be32(b + 12, s->flags);
    ws_put_be64(b + 16, s->seq);
    ws_put_be64(b + 24, s->generation);
    ws_put_be64(b + 32, s->txid);
    ws_put_be64(b + 40, s->chk);
    ws_put_be64(b + 48, (uint64_t)s->commit_ms);
    ws_put_be32(b + 56, s->page_size);
    ws_put_be32(b + 60, s->db_pages);
    ws_put_be32(b + 64, s->salt1);
    ws_put_be32(b + 68, s->salt2);
    ws_put_be32(b + 72, s->mx_frame);
    ws_put_be64(b + 80, s->intent_generation);
    ws_put_be64(b + 88, s->intent_txid);
    ws_put_be64(b + 96, s->intent_chk);
    ws_put_be64(b + 104, (uint64_t)s->intent_commit_ms);
    size_t ul = strlen(s->url);
    ws_put_be16(b + 112, (uint16_t)ul);
    memcpy(b + 116, s->url, ul);
    ws_put_be64(b + STATE_SLOT - 8, ws_hash64(b, STATE_SLOT - 8));
}

static int state_decode(const uint8_t *b, rep_state *s) {
    if (memcmp(b, STATE_MAGIC, 8) != 0 || ws_get_be32(b + 8) != STATE_VERSION) return -1;
    if (ws_get_be64(b + STATE_SLOT - 8) != ws_hash64(b, STATE_SLOT - 8)) return -1;
    memset(s, 0, sizeof *s);
    s->flags = ws_get_be32(b + 12);
    s->seq = ws_get_be64(b + 16);
    s->generation = ws_get_be64(b + 24);
    s->txid = ws_get_be64(b + 32);
    s->chk = ws_get_be64(b + 40);
    s->commit_ms = (int64_t)ws_get_be64(b + 48);
    s->page_size = ws_get_be32(b + 56);
    s->db_pages = ws_get_be32(b + 60);
    s->salt1 = ws_get_be32(b + 64);
    s->salt2 = ws_get_be32(b + 68);
    s->mx_frame = ws_get_be32(b + 72);
    s->intent_generation = ws_get_be64(b + 80);
    s->intent_txid = ws_get_be64(b + 88);
    s->intent_chk = ws_get_be64(b + 96);
    s->intent_commit_ms = (int64_t)ws_get_be64(b + 104);
    uint16_t ul = ws_get_be16(b + 112);
    if (ul > STATE_URL_MAX || !ws_page_size_valid(s->page_size)) return -1;
    memcpy(s->url, b + 116, ul);
    s->url[ul] = '\0';
    return 0;
}

/* Loads the newest valid slot; 1 if none is valid, 0 on success. */
static int state_load(int fd, rep_state *out) {
    uint8_t b[STATE_SLOT];
    rep_state a, best;
    int have = 0;
    for (int slot = 0; slot < 2; slot++) {
        if (ws_pread_full(fd, b, STATE_SLOT, (off_t)slot * STATE_SLOT) != STATE_SLOT) continue;
        if (state_decode(b, &a) != 0) continue;
        if (!have || a.seq > best.seq) best = a;
        have = 1;
    }
    if (!have) return 1;
    *out = best;
    return 0;
}

/* Writes the position readers see (and an optional switch intent) into the
** older slot. */
static int state_save(replica *r, int sync, const rep_state *intent, wserr *err) {
    rep_state s;
    memset(&s, 0, sizeof s);
    s.seq = r->saved.seq + 1;
    s.generation = r->gen;
    s.txid = r->txid;
    s.chk = r->roll.chk;
    s.commit_ms = r->commit_ms;
    s.page_size = r->page_size;
    s.db_pages = r->roll.db_pages;
    if (r->have_known) {
        s.salt1 = walidx_salt1(&r->known);
        s.salt2 = walidx_salt2(&r->known);
        s.mx_frame = r->known.mx_frame;
    }
    if (intent) {
        s.flags |= STATE_F_INTENT;
        s.intent_generation = intent->generation;
        s.intent_txid = intent->txid;
        s.intent_chk = intent->chk;
        s.intent_commit_ms = intent->commit_ms;
    }
    ws_strlcpy(s.url, r->url, sizeof s.url);
    uint8_t b[STATE_SLOT];
    state_encode(b, &s);
    if (ws_pwrite_all(r->state_fd, b, STATE_SLOT, (off_t)(s.seq & 1) * STATE_SLOT) != 0)
        return wserr_errno(err, wserr_from_errno(errno), errno, "write %s", r->state_path);
    int64_t now = ws_mono_ms();
    if (sync || now - r->last_state_sync_ms > STATE_SYNC_MS) {
        if (fdatasync(r->state_fd) != 0)
            return wserr_errno(err, wserr_from_errno(errno), errno, "sync %s", r->state_path);
        r->last_state_sync_ms = now;
    }
    r->saved = s;
    r->have_state = 1;
    return 0;
}

/* ---- SQLite ------------------------------------------------------------------------ */
static int text_cb(void *ctx, int n, char **v, char **names) {
    (void)names;
    if (n > 0 && v[0]) ws_strlcpy(ctx, v[0], 32);
    return 0;
}

static int sql_exec(replica *r, const char *sql, char *first_value, wserr *err) {
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
static int conn_open(replica *r, wserr *err) {
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
    if ((rc = sql_exec(r, "PRAGMA busy_timeout=5000", NULL, err)) ||
        (rc = sql_exec(r, "PRAGMA wal_autocheckpoint=0", NULL, err)) ||
        (rc = sql_exec(r, "PRAGMA journal_mode", v, err)))
        goto fail;
    if (strcmp(v, "wal") != 0) {
        rc = wserr_set(err, WALSHIP_ERR_INVALID,
                       "%s is not in WAL mode (journal_mode is %s), so it is not a walship "
                       "replica; remove it or choose another path",
                       r->path, v);
        goto fail;
    }
    /* The first read opens the WAL (and recovers the wal-index if needed). */
    if ((rc = sql_exec(r, "SELECT count(*) FROM sqlite_master", NULL, err)) ||
        (rc = sql_exec(r, "PRAGMA page_size", v, err)))
        goto fail;
    uint32_t psz = (uint32_t)strtoul(v, NULL, 10);
    if (r->page_size && psz != r->page_size) {
        rc = wserr_set(err, WALSHIP_ERR_INVALID, "%s has %u-byte pages, its replica state says %u",
                       r->path, psz, r->page_size);
        goto fail;
    }
    r->page_size = psz;
    if ((rc = sql_exec(r, "PRAGMA busy_timeout=0", NULL, err))) goto fail;
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

/* ---- rolling-checksum undo -------------------------------------------------------- */
static int undo_push(replica *r, uint32_t pgno, uint64_t old) {
    if (r->nundo == r->undo_cap) {
        size_t cap = r->undo_cap ? r->undo_cap * 2 : 1024;
        undo_ent *u = realloc(r->undo, cap * sizeof *u);
        if (u == NULL) return WALSHIP_ERR_NOMEM;
        r->undo = u;
        r->undo_cap = cap;
    }
    r->undo[r->nundo++] = (undo_ent){pgno, old};
    return 0;
}

static void mark_get(replica *r, rep_mark *m) {
    r->nundo = 0;
    m->chk = r->roll.chk;
    m->db_pages = r->roll.db_pages;
    m->txid = r->txid;
    m->commit_ms = r->commit_ms;
    walapp_savepoint_get(r->app, &m->sp);
    memcpy(r->page1_mark, r->page1, r->page_size);
}

static void mark_rollback(replica *r, const rep_mark *m) {
    while (r->nundo > 0) {
        undo_ent *u = &r->undo[--r->nundo];
        if (u->pgno >= 1 && u->pgno <= r->roll.cap) r->roll.h[u->pgno - 1] = u->old;
    }
    r->roll.chk = m->chk;
    r->roll.db_pages = m->db_pages;
    r->roll.tx_before = m->db_pages;
    r->roll.tx_max = 0;
    r->txid = m->txid;
    r->commit_ms = m->commit_ms;
    memcpy(r->page1, r->page1_mark, r->page_size);
    walapp_rollback_to(r->app, &m->sp);
}

/* ---- applying one segment --------------------------------------------------------- */
/* Where the walk of one segment stands. */
typedef struct seg_apply {
    const seg_ref *s;
    int skipping, in_tx;
    uint32_t tx_frames;
    uint64_t mismatch_txid; /* a transaction did not give its checksum: read on, then say so */
    uint64_t *ntx, *npages;
} seg_apply;

/* The segment's header, the moment it arrived: it must be this history's
** (key, generation, page size, database id, the owner's lineage) and start
** from the replica's state. */
static int apply_header(replica *r, seg_apply *a, const seg_header *h, int *kind, wserr *err) {
    char why[240];
    cat_seg key = {.first = a->s->first, .last = a->s->last, .key = a->s->key};
    int foreign = cat_seg_header_belongs(&r->ident, &r->gen_ident, &key, h, why, sizeof why);
    if (!foreign && h->page_size != r->page_size) {
        snprintf(why, sizeof why, "its page size %u is not the replica's %u", h->page_size,
                 r->page_size);
        foreign = 1;
    }
    if (foreign) {
        *kind = KIND_FOREIGN;
        return wserr_set(err, WALSHIP_ERR_CORRUPT,
                         "segment %s is not part of this history (%s); it is ignored", a->s->key,
                         why);
    }
    if (h->first_txid == r->txid + 1 && h->pre_chk != r->roll.chk) {
        *kind = KIND_DIVERGED;
        return wserr_set(err, WALSHIP_ERR_CORRUPT,
                         "segment %s starts from a database that differs from the replica's at "
                         "TXID %" PRIu64 " (checksum mismatch)",
                         a->s->key, r->txid);
    }
    if (h->first_txid > r->txid + 1) {
        *kind = KIND_CORRUPT;
        return wserr_set(err, WALSHIP_ERR_STATE, "segment %s does not follow TXID %" PRIu64,
                         a->s->key, r->txid);
    }
    status_lock(r);
    r->first_unapplied_ms = h->first_commit_ms; /* for lag */
    status_unlock(r);
    return 0;
}

/* Applies one event of the segment. */
static int apply_event(replica *r, seg_apply *a, const seg_event *ev, int *kind, wserr *err) {
    int rc = 0;
    if (a->mismatch_txid) return 0; /* reading on only to tell damage from divergence */
    if (ev->type == SEG_EV_BEGIN) {
        a->skipping = ev->txid <= r->txid;
        if (!a->skipping && ev->txid != r->txid + 1) {
            *kind = KIND_CORRUPT;
            return wserr_set(err, WALSHIP_ERR_CORRUPT,
                             "segment %s: transaction %" PRIu64 " follows %" PRIu64 " (gap)",
                             a->s->key, ev->txid, r->txid);
        }
        if (!a->skipping) {
            ws_rolling_begin(&r->roll);
            a->in_tx = 1;
            a->tx_frames = 0;
        }
    } else if (ev->type == SEG_EV_PAGE) {
        if (a->skipping) return 0;
        if (undo_push(r, ev->pgno, ws_rolling_get(&r->roll, ev->pgno)) != 0 ||
            ws_rolling_page(&r->roll, ev->pgno, ev->page) != 0) {
            *kind = KIND_LOCAL;
            return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
        }
        if ((rc = walapp_page(r->app, ev->pgno, ev->page, err))) {
            *kind = KIND_LOCAL;
            return rc;
        }
        if (ev->pgno == 1) memcpy(r->page1, ev->page, r->page_size);
        a->tx_frames++;
    } else if (ev->type == SEG_EV_COMMIT) {
        if (a->skipping) {
            if (ev->txid == r->txid && ev->post_chk != r->roll.chk) a->mismatch_txid = ev->txid;
            return 0;
        }
        ws_rolling *ro = &r->roll;
        uint32_t before = ro->tx_before, hi = before > ro->tx_max ? before : ro->tx_max;
        /* Pages the database grows by without a frame read as zeros on
        ** the primary (rolling.h); write them, or SQLite could find an
        ** older frame of the page in this WAL. */
        for (uint32_t p = before + 1; p <= ev->db_pages && rc == 0; p++) {
            if (ws_rolling_get(ro, p) != 0) continue;
            if ((rc = walapp_page(r->app, p, r->zero, err))) *kind = KIND_LOCAL;
            a->tx_frames++;
            if (undo_push(r, p, 0) != 0) {
                *kind = KIND_LOCAL;
                rc = wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
            }
        }
        for (uint32_t p = ev->db_pages + 1; p <= hi && rc == 0; p++) {
            uint64_t old = ws_rolling_get(ro, p);
            if (old != 0 && undo_push(r, p, old) != 0) {
                *kind = KIND_LOCAL;
                rc = wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
            }
        }
        if (rc) return rc;
        if (ws_rolling_commit(ro, ev->db_pages) != 0) {
            *kind = KIND_LOCAL;
            return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
        }
        a->in_tx = 0;
        if (ro->chk != ev->post_chk) {
            a->mismatch_txid = ev->txid;
            return 0;
        }
        /* SQLite commits always carry a frame; keep one per
        ** transaction even if a segment held none (page 1 again). */
        if (a->tx_frames == 0 && (rc = walapp_page(r->app, 1, r->page1, err))) {
            *kind = KIND_LOCAL;
            return rc;
        }
        if ((rc = walapp_commit(r->app, ev->db_pages, err))) {
            *kind = KIND_LOCAL;
            return rc;
        }
        r->txid = ev->txid;
        r->commit_ms = ev->commit_ms;
        (*a->ntx)++;
        *a->npages += a->tx_frames;
    }
    return 0;
}

/* Applies the transactions after r->txid of segment s, which streams in
** as fetcher job `job` (bounded memory whatever its size). On failure
** *kind says what kind of failure it was; the caller rolls back to its
** mark. */
static int apply_segment(replica *r, const seg_ref *s, fetcher *fe, size_t job, int *kind,
                         uint64_t *ntx, uint64_t *npages, wserr *err) {
    *kind = KIND_NONE;
    seg_apply a = {.s = s, .skipping = 1, .ntx = ntx, .npages = npages};
    seg_stream *ss = NULL;
    wsbuf piece = {0};
    int rc = seg_stream_open(&ss, err), eof = 0, ended = 0;
    if (rc) *kind = KIND_LOCAL;
    while (rc == 0 && !ended) {
        wserr e = {0};
        rc = fetch_read(fe, job, &piece, &eof, &e);
        if (rc) {
            /* the header check's verdict; else damaged or gone (refused for
            ** a while), or the store failing (retried) */
            *err = e;
            if (r->jobv[job]) {
                *kind = r->jobv[job];
            } else {
                *kind = rc == WALSHIP_ERR_CORRUPT || rc == WALSHIP_ERR_NOTFOUND ? KIND_CORRUPT
                                                                               : KIND_STORE;
                /* Deleted since the listing (retention, say) is not damage. */
                if (rc == WALSHIP_ERR_NOTFOUND && catalog_object_gone(r->st, s->key))
                    *kind = KIND_GONE;
                wserr_prefix(err, "download %s", s->key);
            }
            break;
        }
        seg_stream_feed(ss, piece.p, piece.len, eof);
        for (;;) {
            seg_event ev;
            if ((rc = seg_stream_next(ss, &ev, err))) {
                *kind = KIND_CORRUPT;
                wserr_prefix(err, "segment %s", s->key);
                break;
            }
            if (ev.type == SEG_EV_NEED) break;
            if (ev.type == SEG_EV_END) {
                ended = 1;
                break;
            }
            rc = ev.type == SEG_EV_HEADER ? apply_header(r, &a, seg_stream_header(ss), kind, err)
                                          : apply_event(r, &a, &ev, kind, err);
            if (rc) break;
        }
        if (rc == 0 && eof && !ended) { /* the last piece always ends the walk */
            *kind = KIND_CORRUPT;
            rc = wserr_set(err, WALSHIP_ERR_CORRUPT, "segment %s ends early", s->key);
        }
    }
    wsbuf_free(&piece);
    seg_stream_free(ss);
    if (rc == 0 && a.in_tx && !a.mismatch_txid) {
        *kind = KIND_CORRUPT;
        rc = wserr_set(err, WALSHIP_ERR_CORRUPT, "segment %s ends inside a transaction", s->key);
    }
    if (rc == 0 && a.mismatch_txid) {
        *kind = KIND_DIVERGED;
        rc = wserr_set(err, WALSHIP_ERR_CORRUPT,
                       "transaction %" PRIu64 " of segment %s does not produce the checksum the "
                       "primary recorded: the replica's database differs from the primary's",
                       a.mismatch_txid, s->key);
    }
    return rc;
}

/* fetch_check_fn for segment downloads: the header, the moment it is in
** (runs in a download thread; reads only what does not change during a
** round). */
static int check_segment(void *ctx, size_t job, const uint8_t *head, size_t n, wserr *err) {
    replica *r = ctx;
    const seg_ref *s = r->round_chain[job];
    seg_header h;
    char why[240];
    cat_seg key = {.first = s->first, .last = s->last, .key = s->key};
    int rc = seg_parse_header(head, n, &h, err);
    if (rc) {
        r->jobv[job] = KIND_CORRUPT;
        return wserr_prefix(err, "segment %s", s->key);
    }
    if (cat_seg_header_belongs(&r->ident, &r->gen_ident, &key, &h, why, sizeof why)) {
        r->jobv[job] = KIND_FOREIGN;
        return wserr_set(err, WALSHIP_ERR_CORRUPT,
                         "segment %s is not part of this history (%s); it is ignored", s->key, why);
    }
    return 0;
}

/* ---- the write lock and foreign writes ------------------------------------------- */
static int hdr_same(const walidx_hdr *a, const walidx_hdr *b) {
    return memcmp(a, b, sizeof *a) == 0;
}

/* Another process's TRUNCATE checkpoint (or RESTART+TRUNCATE on an empty
** WAL): mxFrame 0 and new salts, but no commit (same change counter, size
** and frame checksum). */
static int hdr_truncated(const walidx_hdr *known, const walidx_hdr *now) {
    return now->mx_frame == 0 && now->change == known->change && now->n_page == known->n_page &&
           now->frame_cksum[0] == known->frame_cksum[0] &&
           now->frame_cksum[1] == known->frame_cksum[1];
}

static void foreign_write(replica *r, const walidx_hdr *now) {
    char msg[400];
    snprintf(msg, sizeof msg,
             "someone wrote to the replica %.120s (its WAL changed from frame %u to %u, change "
             "counter %u to %u, outside walship); readers must open it read-only "
             "(file:...?mode=ro). Replacing its content with the primary's",
             r->path, r->known.mx_frame, now->mx_frame, r->known.change, now->change);
    status_lock(r);
    r->status.foreign_writes++;
    status_unlock(r);
    report(r, WS_LOG_ERROR, "replica_foreign_write", msg);
    r->phase = PHASE_REBOOTSTRAP;
    snprintf(r->rebootstrap_why, sizeof r->rebootstrap_why, "foreign write");
}

/* Takes WRITE and checks the header against what this process published.
** Returns 0 with the lock held; WALSHIP_ERR_BUSY (lock held elsewhere);
** WALSHIP_ERR_STATE after detecting a foreign write (phase changed); or
** another error. */
static int lock_write(replica *r, walapp_info *info, int check_foreign, wserr *err) {
    int rc = walapp_begin(r->app, info, err);
    if (rc == WALSHIP_ERR_STATE) {
        /* A torn header: a writer died mid-update. A read through our
        ** connection lets SQLite rebuild the index from the WAL. */
        sql_exec(r, "SELECT count(*) FROM sqlite_master", NULL, NULL);
        rc = walapp_begin(r->app, info, err);
        if (rc == 0 && r->have_known && !hdr_same(&r->known, &info->hdr)) {
            /* Rebuilt by recovery: the change counter restarts at 0. The
            ** content is whatever the WAL holds; hash it to know. */
            walapp_end(r->app);
            r->phase = PHASE_RESUME;
            return wserr_set(err, WALSHIP_ERR_STATE, "the replica's wal-index was rebuilt");
        }
    }
    if (rc) return rc;
    if (check_foreign && r->have_known && !hdr_same(&r->known, &info->hdr)) {
        if (hdr_truncated(&r->known, &info->hdr)) {
            r->known = info->hdr;
        } else {
            walapp_end(r->app);
            foreign_write(r, &info->hdr);
            return wserr_set(err, WALSHIP_ERR_STATE, "foreign write");
        }
    }
    return 0;
}

/* Fault injection for the crash tests: WALSHIP_REPLICA_FAULT=POINT:N
** kills this process with SIGKILL at POINT of the Nth publish:
**   frames     frames written, not yet synced or published
**   header     between the two wal-index header copies (a torn header)
**   published  header written, position not yet recorded
** Unset (always, outside tests) it costs one branch per publish. */
static int fault_point = -1; /* 0: not configured */
static long fault_count;

static void fault_check(int point) {
    if (fault_point == 0) return;
    if (fault_point < 0) {
        const char *v = getenv("WALSHIP_REPLICA_FAULT");
        fault_point = 0;
        if (v == NULL) return;
        const char *c = strchr(v, ':');
        fault_count = c ? strtol(c + 1, NULL, 10) : 1;
        if (strncmp(v, "frames", 6) == 0) fault_point = 1;
        if (strncmp(v, "header", 6) == 0) fault_point = 2;
        if (strncmp(v, "published", 9) == 0) fault_point = 3;
        if (fault_point) walapp_set_fault_hook(fault_point == 2 ? fault_check : NULL);
        return;
    }
    if (point != fault_point) return;
    if (--fault_count <= 0) {
        WS_WARN("replica_fault_injected", "point=%d", point);
        raise(SIGKILL);
    }
}

/* Publishes what is committed, and records it. */
static int publish(replica *r, wserr *err) {
    if (walapp_pending_commits(r->app) == 0) return 0;
    if (fault_point) {
        fault_check(0);
        walapp_flush(r->app, NULL);
        fault_check(1);
    }
    int rc = walapp_publish(r->app, err);
    if (rc) return rc;
    r->known = *walapp_hdr(r->app);
    r->have_known = 1;
    r->last_publish_ms = ws_mono_ms();
    if (fault_point) fault_check(3);
    if (r->just_restarted) {
        r->just_restarted = 0;
        if (walapp_limit_size(r->app, r->o.wal_limit_bytes, err) != 0)
            WS_WARN("replica_wal_limit_failed", "replica=%s err=\"%s\"", r->path, err->msg);
        wserr_clear(err);
    }
    status_lock(r);
    r->status.generation = r->gen;
    r->status.applied_txid = r->txid;
    r->status.applied_commit_ms = r->commit_ms;
    r->status.last_apply_ms = ws_now_ms();
    r->status.wal_frames = r->known.mx_frame;
    status_unlock(r);
    return 0;
}

/* ---- listing -------------------------------------------------------------------- */
static void cands_free(replica *r) {
    for (size_t i = 0; i < r->ncands; i++) free(r->cands[i].key);
    free(r->cands);
    r->cands = NULL;
    r->ncands = 0;
}

static bad_key *bad_find(replica *r, const char *key) {
    for (int i = 0; i < NBAD; i++)
        if (r->bad[i].key[0] && strcmp(r->bad[i].key, key) == 0) return &r->bad[i];
    return NULL;
}

static void bad_mark(replica *r, const char *key) {
    bad_key *b = bad_find(r, key);
    if (b == NULL) {
        b = &r->bad[0];
        for (int i = 0; i < NBAD; i++)
            if (r->bad[i].key[0] == '\0' || r->bad[i].retry_ms < b->retry_ms) b = &r->bad[i];
        ws_strlcpy(b->key, key, sizeof b->key);
        b->backoff_ms = 0;
    }
    b->backoff_ms = b->backoff_ms ? b->backoff_ms * 2 : 1000;
    if (b->backoff_ms > 60000) b->backoff_ms = 60000;
    b->retry_ms = ws_mono_ms() + b->backoff_ms;
}

static int is_bad(replica *r, const char *key) {
    bad_key *b = bad_find(r, key);
    return b && ws_mono_ms() < b->retry_ms;
}

static void gen_prefix(char *out, size_t n, uint64_t gen) {
    snprintf(out, n, "generations/%016" PRIx64 "/segments/", gen);
}

/* What a listing says beyond this generation's segments. */
typedef struct listing_info {
    uint64_t newest_snap_gen; /* newest generation (> ours) with a snapshot */
    uint64_t primary_gen, primary_txid;
    uint64_t own_snap_txid;   /* newest snapshot of our generation */
} listing_info;

static int list_store(replica *r, const char *prefix, const char *after, store_objlist *l,
                      wserr *err) {
    int rc = store_list(r->st, prefix, after, l, err);
    status_lock(r);
    r->status.list_requests += 1 + l->n / 1000;
    if (rc) r->status.store_errors++;
    status_unlock(r);
    return rc;
}

static int gen_ignored(const replica *r, uint64_t gen) {
    for (int i = 0; i < r->nignored_gens; i++)
        if (r->ignored_gens[i] == gen) return 1;
    return 0;
}

static void gen_ignore(replica *r, uint64_t gen) {
    if (gen_ignored(r, gen)) return;
    if (r->nignored_gens == NIGNORED_GENS) {
        memmove(r->ignored_gens, r->ignored_gens + 1,
                sizeof r->ignored_gens - sizeof r->ignored_gens[0]);
        r->nignored_gens--;
    }
    r->ignored_gens[r->nignored_gens++] = gen;
}

/* Warns about an impossible key once per process (the listing repeats it). */
static void warn_key_once(replica *r, const char *key, const char *why) {
    for (int i = 0; i < r->nwarned && i < NBAD; i++)
        if (strncmp(r->warned[i], key, sizeof r->warned[i] - 1) == 0) return;
    ws_strlcpy(r->warned[r->nwarned % NBAD], key, sizeof r->warned[0]);
    r->nwarned++;
    char msg[400];
    snprintf(msg, sizeof msg, "object %.250s is ignored: %s", key, why);
    report(r, WS_LOG_WARN, "replica_object_ignored", msg);
}

/* Parses a listing: our generation's segments past r->txid become
** candidates; the rest feeds li. Impossible names (a TXID of 0 or past
** 2^63, first after last) and generations known to be another database's
** are ignored. */
static int take_listing(replica *r, store_objlist *l, listing_info *li, wserr *err) {
    for (size_t i = 0; i < l->n; i++) {
        const store_obj *o = &l->items[i];
        objkey k;
        objkey_classify(o->key, &k);
        if (k.kind == OBJKEY_BAD) {
            warn_key_once(r, o->key, k.why);
            continue;
        }
        if ((k.kind != OBJKEY_SEGMENT && k.kind != OBJKEY_SNAPSHOT) || gen_ignored(r, k.gen))
            continue;
        if (k.gen > li->primary_gen) {
            li->primary_gen = k.gen;
            li->primary_txid = 0;
        }
        if (k.gen == li->primary_gen && k.last > li->primary_txid) li->primary_txid = k.last;
        if (k.kind == OBJKEY_SNAPSHOT) {
            if (k.gen > r->gen && k.gen > li->newest_snap_gen) li->newest_snap_gen = k.gen;
            if (k.gen == r->gen && k.first > li->own_snap_txid) li->own_snap_txid = k.first;
            continue;
        }
        if (k.gen != r->gen || k.last <= r->txid) continue;
        seg_ref *c = realloc(r->cands, (r->ncands + 1) * sizeof *c);
        if (c == NULL) return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
        r->cands = c;
        c[r->ncands++] = (seg_ref){o->key, k.first, k.last, o->mtime_ms, o->size};
        l->items[i].key = NULL;
    }
    return 0;
}

/* Takes whose history this is from a catalog (g: the replica's generation
** in it, NULL if it is not there). */
static void ident_from_catalog(replica *r, const catalog *cat, const cat_gen *g, uint64_t gen) {
    r->ident.has_owner = cat->has_owner;
    r->ident.owner = cat->owner;
    memset(&r->gen_ident, 0, sizeof r->gen_ident);
    r->gen_ident.id = gen;
    if (g) {
        r->gen_ident.db_id = g->db_id;
        r->gen_ident.page_size = g->page_size;
    }
    for (size_t i = 0; i < cat->nignored_gens; i++) gen_ignore(r, cat->ignored_gens[i]);
    r->have_ident = 1;
}

/* After a resume: loads the catalog for whose history this is. */
static int load_ident(replica *r, wserr *err) {
    catalog cat = {0};
    int rc = catalog_load(r->st, &cat, err);
    status_lock(r);
    r->status.list_requests += cat.nlists;
    r->status.get_requests += cat.ngets;
    r->status.corrupt_objects += cat.ndamaged;
    if (rc) r->status.store_errors++;
    status_unlock(r);
    if (rc) return rc;
    const cat_gen *g = NULL;
    for (size_t i = 0; i < cat.ngens; i++)
        if (cat.gens[i].id == r->gen) g = &cat.gens[i];
    ident_from_catalog(r, &cat, g, r->gen);
    catalog_free(&cat);
    return 0;
}

/* A chain of candidates from r->txid+1, at most max long and about
** MAX_BYTES_PER_ROUND big, skipping objects recently refused. */
static size_t make_chain(replica *r, const seg_ref **chain, size_t max) {
    size_t n = 0;
    uint64_t next = r->txid + 1, bytes = 0;
    while (n < max && bytes < MAX_BYTES_PER_ROUND) {
        const seg_ref *best = NULL;
        for (size_t i = 0; i < r->ncands; i++) {
            const seg_ref *c = &r->cands[i];
            if (c->first <= next && c->last >= next && !is_bad(r, c->key) &&
                (best == NULL || c->last > best->last))
                best = c;
        }
        if (best == NULL) break;
        chain[n++] = best;
        bytes += best->size;
        next = best->last + 1;
    }
    return n;
}

/* The cursor for a generation whose segments (sorted by key) are segs:
** the key of the last segment before the first one still needed. */
static void cursor_from_catalog(replica *r, const cat_gen *g) {
    gen_prefix(r->cursor, sizeof r->cursor, r->gen);
    if (g == NULL) return;
    for (size_t i = 0; i < g->nsegs; i++) {
        if (g->segs[i].last > r->txid) break;
        ws_strlcpy(r->cursor, g->segs[i].key, sizeof r->cursor);
    }
}

/* Full listing of this generation's segments, to place the cursor (after
** a resume) or to find a segment that starts before it. */
static int relist_generation(replica *r, wserr *err) {
    char prefix[128];
    gen_prefix(prefix, sizeof prefix, r->gen);
    store_objlist l = {0};
    int rc = list_store(r, prefix, NULL, &l, err);
    if (rc) {
        store_objlist_free(&l);
        return rc;
    }
    cands_free(r); /* the full listing replaces them */
    cat_gen g = {.id = r->gen};
    cat_seg *segs = calloc(l.n ? l.n : 1, sizeof *segs);
    if (segs == NULL) {
        store_objlist_free(&l);
        return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < l.n; i++) {
        uint64_t gid, a, b;
        if (objkey_parse_segment(l.items[i].key, &gid, &a, &b) == 0 && gid == r->gen)
            segs[g.nsegs++] = (cat_seg){.first = a, .last = b, .key = l.items[i].key};
    }
    g.segs = segs;
    cursor_from_catalog(r, &g); /* keys are listed in order */
    listing_info li = {0};
    rc = take_listing(r, &l, &li, err);
    free(segs);
    store_objlist_free(&l);
    return rc;
}

/* ---- bootstrap, resume, re-bootstrap ---------------------------------------------- */
static void set_phase_status(replica *r, int st) {
    status_lock(r);
    r->status.state = st;
    status_unlock(r);
    /* a bootstrap is one long round: say so before it starts */
    if (r->locked) status_write(r, 1);
}

/* Called as a restore applies (in this thread): keeps status.json's
** heartbeat fresh through a long bootstrap, so `walship status` does not
** call the replica dead meanwhile. */
static void build_progress(void *ctx, uint64_t done, uint64_t total) {
    (void)done;
    (void)total;
    replica *r = ctx;
    if (r->locked) status_write(r, 0);
}

/* Loads the catalog and plans the newest state. Damaged objects the
** catalog found count as corrupt. */
static int plan_latest(replica *r, catalog *cat, restore_plan *plan, wserr *err) {
    restore_target t = {.kind = RESTORE_LATEST};
    int rc = catalog_load(r->st, cat, err);
    status_lock(r);
    r->status.list_requests += cat->nlists;
    r->status.get_requests += cat->ngets;
    r->status.corrupt_objects += cat->ndamaged;
    if (rc) r->status.store_errors++;
    status_unlock(r);
    if (rc) return rc;
    return restore_plan_make(r->st, cat, &t, plan, err);
}

/* Restores the planned state into fd; what it refused as damaged counts,
** whether it succeeds or not. On success whose history this is is taken
** from the catalog. */
static int restore_planned(replica *r, const catalog *cat, const restore_plan *plan, int fd,
                           ws_rolling *roll, restore_result *res, wserr *err) {
    int rc = restore_build(r->st, plan, fd, r->o.parallel, roll, res, build_progress, r, err);
    status_lock(r);
    r->status.bytes_downloaded += plan->bytes;
    r->status.get_requests += plan->nchain + 1;
    r->status.corrupt_objects += res->damaged;
    status_unlock(r);
    if (rc == 0) ident_from_catalog(r, cat, plan->gen, res->generation);
    return rc;
}

/* Restores the newest state into fd. On success the plan's generation and
** the catalog are returned for placing the cursor. */
static int restore_latest(replica *r, int fd, ws_rolling *roll, restore_result *res,
                          catalog *cat, const cat_gen **gen, wserr *err) {
    restore_plan plan = {0};
    memset(res, 0, sizeof *res);
    int rc = plan_latest(r, cat, &plan, err);
    if (rc == 0) rc = restore_planned(r, cat, &plan, fd, roll, res, err);
    *gen = plan.gen;
    restore_plan_free(&plan);
    return rc;
}

static int remove_if_exists(const char *path, wserr *err) {
    if (unlink(path) != 0 && errno != ENOENT)
        return wserr_errno(err, wserr_from_errno(errno), errno, "remove %s", path);
    return 0;
}

/* First copy: restore beside PATH, check it is in WAL mode, sync, record,
** rename into place, open. */
static int bootstrap_fresh(replica *r, wserr *err) {
    set_phase_status(r, REPLICA_BOOTSTRAPPING);
    char tmp[PATH_MAX + 32];
    if (snprintf(tmp, sizeof tmp, "%s.walship-tmp-XXXXXX", r->path) >= (int)sizeof tmp)
        return wserr_set(err, WALSHIP_ERR_INVALID, "replica path too long");
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0)
        return wserr_errno(err, wserr_from_errno(errno), errno, "create a temporary file beside %s",
                           r->path);
    /* readable like any file this process creates (mkostemp makes 0600) */
    mode_t um = umask(0);
    umask(um);
    if (fchmod(fd, 0666 & ~um) != 0)
        WS_WARN("replica_chmod_failed", "path=%s errno=%d", tmp, errno);
    ws_rolling roll;
    ws_rolling_init(&roll, 0);
    restore_result res;
    catalog cat = {0};
    const cat_gen *g = NULL;
    int rc = restore_latest(r, fd, &roll, &res, &cat, &g, err);
    uint8_t hdr[100];
    if (rc == 0 && ws_pread_full(fd, hdr, sizeof hdr, 0) != (ssize_t)sizeof hdr)
        rc = wserr_errno(err, WALSHIP_ERR_IO, errno ? errno : EIO, "read back %s", tmp);
    if (rc == 0 && (hdr[18] != 2 || hdr[19] != 2))
        rc = wserr_set(err, WALSHIP_ERR_UNSUPPORTED,
                       "the primary's database is not in WAL mode at TXID %" PRIu64
                       " (header bytes 18-19 are %u,%u), so a replica cannot follow it",
                       res.txid, hdr[18], hdr[19]);
    if (rc == 0 && fsync(fd) != 0)
        rc = wserr_errno(err, wserr_from_errno(errno), errno, "sync %s", tmp);
    close(fd);
    if (rc == 0) {
        r->gen = res.generation;
        r->txid = res.txid;
        r->commit_ms = res.commit_ms;
        r->page_size = res.page_size;
        ws_rolling_free(&r->roll);
        r->roll = roll;
        ws_rolling_init(&roll, 0);
        r->have_known = 0;
        rc = state_save(r, 1, NULL, err);
    }
    /* Stale -wal/-shm beside a missing database would be replayed into it. */
    char side[PATH_MAX + 8];
    snprintf(side, sizeof side, "%s-wal", r->path);
    if (rc == 0) rc = remove_if_exists(side, err);
    snprintf(side, sizeof side, "%s-shm", r->path);
    if (rc == 0) rc = remove_if_exists(side, err);
    if (rc == 0 && rename(tmp, r->path) != 0)
        rc = wserr_errno(err, wserr_from_errno(errno), errno, "rename into %s", r->path);
    if (rc == 0) rc = ws_fsync_dir_of(r->path, err);
    if (rc) {
        unlink(tmp);
        ws_rolling_free(&roll);
        catalog_free(&cat);
        return rc;
    }
    cursor_from_catalog(r, g);
    catalog_free(&cat);
    /* From here on the file is in place: never bootstrap over it again
    ** (readers may have it open); a failure below is retried as a resume. */
    r->phase = PHASE_RESUME;
    if ((rc = conn_open(r, err))) return rc;
    walidx_hdr h;
    uint32_t nb;
    if (walapp_peek(r->app, &h, &nb) == 0) {
        r->known = h;
        r->have_known = 1;
    }
    /* page 1 of the image, for transactions that carry no page */
    if (r->dbf->pMethods->xRead(r->dbf, r->page1, (int)r->page_size, 0) != SQLITE_OK)
        memset(r->page1, 0, r->page_size);
    if ((rc = state_save(r, 1, NULL, err))) return rc;
    status_lock(r);
    r->status.bootstraps++;
    r->status.generation = r->gen;
    r->status.applied_txid = r->txid;
    r->status.applied_commit_ms = r->commit_ms;
    status_unlock(r);
    status_lock(r);
    r->status.state = REPLICA_FOLLOWING;
    r->status.primary_generation = r->gen;
    r->status.primary_txid = r->txid;
    status_unlock(r);
    WS_INFO("replica_bootstrapped", "replica=%s generation=%016" PRIx64 " txid=%" PRIu64
            " pages=%u", r->path, r->gen, r->txid, r->roll.db_pages);
    r->phase = PHASE_FOLLOW;
    return 0;
}

/* Takes the write lock, waiting up to ms for it (other connections hold it
** only briefly unless they write or run RESTART/TRUNCATE checkpoints). */
static int lock_write_wait(replica *r, walapp_info *info, int check_foreign, int64_t ms,
                           wserr *err) {
    int64_t until = ws_mono_ms() + ms;
    int rc;
    while ((rc = lock_write(r, info, check_foreign, err)) == WALSHIP_ERR_BUSY &&
           ws_mono_ms() < until)
        ws_sleep_ms(2);
    return rc;
}

/* After a restart of this process: hash what readers see and find out
** which primary state it is. */
static int resume(replica *r, wserr *err) {
    set_phase_status(r, REPLICA_STARTING);
    int rc;
    if (r->db == NULL && (rc = conn_open(r, err))) return rc;
    walapp_info info;
    if ((rc = lock_write_wait(r, &info, 0, 10000, err))) {
        if (rc == WALSHIP_ERR_BUSY)
            wserr_prefix(err, "resume (is someone writing to the replica?)");
        return rc;
    }
    const rep_state *s = &r->saved;
    int same_wal = walidx_salt1(&info.hdr) == s->salt1 && walidx_salt2(&info.hdr) == s->salt2 &&
                   info.hdr.mx_frame >= s->mx_frame;
    uint32_t commits = 0;
    ws_rolling live;
    ws_rolling_init(&live, r->page_size);
    rc = walapp_view_hashes(r->app, &live, r->page1, same_wal ? s->mx_frame : 0,
                            same_wal ? &commits : NULL, err);
    walapp_end(r->app);
    if (rc) {
        ws_rolling_free(&live);
        return rc;
    }
    r->known = info.hdr;
    r->have_known = 1;
    ws_rolling_free(&r->roll);
    r->roll = live;
    const char *how;
    if (live.chk == s->chk) {
        r->gen = s->generation;
        r->txid = s->txid;
        r->commit_ms = s->commit_ms;
        how = "recorded";
    } else if ((s->flags & STATE_F_INTENT) && live.chk == s->intent_chk) {
        r->gen = s->intent_generation;
        r->txid = s->intent_txid;
        r->commit_ms = s->intent_commit_ms;
        how = "switch";
    } else if (same_wal && commits > 0) {
        /* Published after the last record: one commit frame per
        ** transaction. The next segment's checksums confirm it. */
        r->gen = s->generation;
        r->txid = s->txid + commits;
        r->commit_ms = s->commit_ms;
        how = "wal";
    } else {
        r->gen = s->generation;
        r->txid = s->txid;
        r->commit_ms = s->commit_ms;
        char msg[300];
        snprintf(msg, sizeof msg,
                 "the replica %.120s no longer holds the state recorded for it (TXID %" PRIu64
                 "): it was written to or damaged while no replica ran; replacing its content",
                 r->path, s->txid);
        report(r, WS_LOG_WARN, "replica_resume_mismatch", msg);
        r->phase = PHASE_REBOOTSTRAP;
        snprintf(r->rebootstrap_why, sizeof r->rebootstrap_why, "content mismatch at resume");
        return 0;
    }
    WS_INFO("replica_resumed", "replica=%s generation=%016" PRIx64 " txid=%" PRIu64 " by=%s",
            r->path, r->gen, r->txid, how);
    if ((rc = state_save(r, 1, NULL, err))) return rc;
    status_lock(r);
    r->status.generation = r->gen;
    r->status.applied_txid = r->txid;
    r->status.applied_commit_ms = r->commit_ms;
    r->status.wal_frames = r->known.mx_frame;
    status_unlock(r);
    r->cursor[0] = '\0'; /* placed by a full listing of the generation */
    r->phase = PHASE_FOLLOW;
    status_lock(r);
    r->status.state = REPLICA_FOLLOWING;
    r->status.primary_generation = r->gen;
    r->status.primary_txid = r->txid;
    status_unlock(r);
    return 0;
}

/* Replaces the replica's content with the newest state in the store, as
** one transaction of every page that differs. */
static int rebootstrap(replica *r, wserr *err) {
    if (ws_mono_ms() < r->next_rebootstrap_ms) return 0;
    set_phase_status(r, REPLICA_REBOOTSTRAPPING);
    char tmp[PATH_MAX + 32];
    snprintf(tmp, sizeof tmp, "%s/image.tmp", r->dir);
    int fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return wserr_errno(err, wserr_from_errno(errno), errno, "create %s", tmp);
    ws_rolling target, view;
    ws_rolling_init(&target, 0);
    ws_rolling_init(&view, r->page_size);
    restore_result res;
    catalog cat = {0};
    const cat_gen *g = NULL;
    uint8_t *page = NULL;
    int locked = 0;
    restore_plan plan = {0};
    memset(&res, 0, sizeof res);
    int rc = plan_latest(r, &cat, &plan, err);
    if (rc == 0 && r->switch_gen > r->gen && plan.gen->id == r->gen) {
        /* The newer generation that asked for the switch is not this
        ** history's, or holds nothing usable: stay, and stop looking at it. */
        char msg[300];
        snprintf(msg, sizeof msg,
                 "generation %016" PRIx64 " is ignored: it is not this destination's history, "
                 "or none of its snapshots can be used (see the warnings)",
                 r->switch_gen);
        report(r, WS_LOG_WARN, "replica_generation_ignored", msg);
        gen_ignore(r, r->switch_gen);
        ident_from_catalog(r, &cat, plan.gen, r->gen);
        r->switch_gen = 0;
        r->phase = PHASE_FOLLOW;
        restore_plan_free(&plan);
        goto out;
    }
    if (rc == 0) rc = restore_planned(r, &cat, &plan, fd, &target, &res, err);
    g = plan.gen;
    restore_plan_free(&plan);
    if (rc) goto out;
    if (res.page_size != r->page_size) {
        rc = wserr_set(err, WALSHIP_ERR_UNSUPPORTED,
                       "the primary's page size changed from %u to %u; a replica cannot follow "
                       "that in place: stop it, remove %s, and start it again",
                       r->page_size, res.page_size, r->path);
        goto out;
    }
    page = malloc(r->page_size);
    if (page == NULL) {
        rc = wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
        goto out;
    }
    walapp_info info;
    if ((rc = lock_write_wait(r, &info, 0, 5000, err))) goto out;
    locked = 1;
    const ws_rolling *live = &r->roll;
    if (r->view_untrusted || !r->have_known || !hdr_same(&r->known, &info.hdr)) {
        if (r->view_untrusted || !(r->have_known && hdr_truncated(&r->known, &info.hdr))) {
            /* Someone else changed it: hash what readers see now. */
            if ((rc = walapp_view_hashes(r->app, &view, NULL, 0, NULL, err))) goto out;
            live = &view;
        }
    }
    /* Record the intent first: a crash after the publish resumes there. */
    rep_state intent = {.generation = res.generation, .txid = res.txid, .chk = res.chk,
                        .commit_ms = res.commit_ms};
    if ((rc = state_save(r, 1, &intent, err))) goto out;
    uint32_t nframes = 0;
    for (uint32_t p = 1; p <= target.db_pages; p++) {
        if (p <= live->db_pages && ws_rolling_get(live, p) == ws_rolling_get(&target, p)) continue;
        if (ws_pread_full(fd, page, r->page_size, (off_t)(p - 1) * r->page_size) < 0) {
            rc = wserr_errno(err, WALSHIP_ERR_IO, errno, "read %s", tmp);
            goto out;
        }
        if ((rc = walapp_page(r->app, p, page, err))) goto out;
        nframes++;
    }
    if (nframes > 0 || target.db_pages != live->db_pages) {
        if (nframes == 0) {
            if (ws_pread_full(fd, page, r->page_size, 0) < 0) {
                rc = wserr_errno(err, WALSHIP_ERR_IO, errno, "read %s", tmp);
                goto out;
            }
            if ((rc = walapp_page(r->app, 1, page, err))) goto out;
            nframes = 1;
        }
        if ((rc = walapp_commit(r->app, target.db_pages, err))) goto out;
    }
    /* The new position, kept only if the publish succeeds. */
    uint64_t old_gen = r->gen, old_txid = r->txid;
    int64_t old_commit_ms = r->commit_ms;
    ws_rolling old_roll = r->roll;
    r->gen = res.generation;
    r->txid = res.txid;
    r->commit_ms = res.commit_ms;
    r->roll = target;
    if (walapp_pending_commits(r->app) > 0 && (rc = publish(r, err)) != 0) {
        r->gen = old_gen;
        r->txid = old_txid;
        r->commit_ms = old_commit_ms;
        r->roll = old_roll;
        r->phase = PHASE_RESUME; /* what readers see is now uncertain: hash it */
        goto out;
    }
    if (walapp_pending_commits(r->app) == 0 && nframes == 0) {
        r->known = info.hdr;
        r->have_known = 1;
    }
    ws_rolling_free(&old_roll);
    ws_rolling_init(&target, 0);
    if (ws_pread_full(fd, r->page1, r->page_size, 0) < 0) memset(r->page1, 0, r->page_size);
    walapp_end(r->app);
    locked = 0;
    if ((rc = state_save(r, 1, NULL, err))) goto out;
    cursor_from_catalog(r, g);
    cands_free(r);
    status_lock(r);
    r->status.rebootstraps++;
    r->status.txs_applied++;
    r->status.pages_applied += nframes;
    status_unlock(r);
    rate_add(r, 1, nframes);
    WS_INFO("replica_rebootstrapped",
            "replica=%s why=\"%s\" generation=%016" PRIx64 " txid=%" PRIu64 " frames=%u",
            r->path, r->rebootstrap_why, r->gen, r->txid, nframes);
    r->phase = PHASE_FOLLOW;
    r->view_untrusted = 0;
    r->switch_gen = 0;
    r->rebootstrap_backoff_ms = 0;
out:
    if (locked) walapp_end(r->app);
    if (rc) {
        /* Back off: a store that keeps failing, or a writer that keeps
        ** writing, should not make the replica download in a loop. */
        r->rebootstrap_backoff_ms = r->rebootstrap_backoff_ms ? r->rebootstrap_backoff_ms * 2 : 1000;
        if (r->rebootstrap_backoff_ms > 60000) r->rebootstrap_backoff_ms = 60000;
        r->next_rebootstrap_ms = ws_mono_ms() + r->rebootstrap_backoff_ms;
    }
    free(page);
    close(fd);
    unlink(tmp);
    ws_rolling_free(&target);
    ws_rolling_free(&view);
    catalog_free(&cat);
    return rc;
}

/* ---- checkpoints ----------------------------------------------------------------- */
static void checkpoint_phase(replica *r, int idle) {
    walidx_hdr h;
    uint32_t nb = 0;
    if (walapp_peek(r->app, &h, &nb) != 0) return;
    status_lock(r);
    r->status.wal_frames = h.mx_frame;
    r->status.wal_backfilled = nb;
    status_unlock(r);
    int64_t now = ws_mono_ms();
    if (h.mx_frame == 0) {
        r->pinned_since_ms = 0;
        return;
    }
    int big = h.mx_frame >= r->o.ckpt_frames;
    int huge = h.mx_frame >= 4 * r->o.ckpt_frames;
    int stale = idle && nb < h.mx_frame && now - r->last_publish_ms > 2000;
    if (!((big && (idle || huge)) || stale)) return;
    if (now < r->next_ckpt_try_ms && !stale) return;
    /* PASSIVE, retried briefly while readers that started before the last
    ** publish finish; never waits for a long reader. */
    int64_t until = now + (big ? CKPT_WAIT_MS : 0);
    for (;;) {
        int nlog = 0, nckpt = 0;
        r->sql->wal_checkpoint_v2(r->db, "main", SQLITE_CHECKPOINT_PASSIVE, &nlog, &nckpt);
        if (walapp_peek(r->app, &h, &nb) != 0) return;
        if (nb >= h.mx_frame || ws_mono_ms() >= until) break;
        ws_sleep_ms(1);
    }
    status_lock(r);
    r->status.checkpoints++;
    r->status.wal_backfilled = nb;
    status_unlock(r);
    if (!big) return;
    int restarted = 0;
    if (nb == h.mx_frame) {
        walapp_info info;
        wserr err = {0};
        if (lock_write(r, &info, 1, &err) == 0) {
            int64_t end = ws_mono_ms() + RESTART_WAIT_MS;
            int rs;
            while ((rs = walapp_try_restart(r->app, &err)) == 0 && ws_mono_ms() < end)
                ws_sleep_ms(1);
            if (rs == 1) {
                restarted = 1;
                r->known = *walapp_hdr(r->app);
                /* the header walapp_hdr reports carries the new WAL's salts
                ** and mxFrame 0; keep exactly what is in shared memory */
                walidx_hdr now_hdr;
                if (walapp_peek(r->app, &now_hdr, NULL) == 0) r->known = now_hdr;
            }
            walapp_end(r->app);
            if (restarted) {
                r->just_restarted = 1;
                state_save(r, 1, NULL, &err);
                status_lock(r);
                r->status.wal_restarts++;
                r->status.wal_frames = 0;
                status_unlock(r);
            }
        }
    }
    if (restarted) {
        r->pinned_since_ms = 0;
        r->next_ckpt_try_ms = 0;
    } else {
        /* A reader holds old frames: try again later, less and less often
        ** while it stays (at most every 2 s). */
        if (r->pinned_since_ms == 0) r->pinned_since_ms = now;
        int64_t pinned = ws_mono_ms() - r->pinned_since_ms;
        r->next_ckpt_try_ms = ws_mono_ms() + (pinned < 250 ? 250 : pinned > 2000 ? 2000 : pinned);
    }
    status_lock(r);
    r->status.wal_pinned_ms = r->pinned_since_ms ? ws_mono_ms() - r->pinned_since_ms : 0;
    status_unlock(r);
}

/* ---- following -------------------------------------------------------------------- */
static void store_failed(replica *r, const wserr *e);

/* Applies the chain's segments, streaming in from fe, under one hold of
** the write lock. */
static int apply_batch(replica *r, const seg_ref *const *chain, fetcher *fe, size_t n,
                       size_t *applied, wserr *err) {
    *applied = 0;
    walapp_info info;
    int rc = lock_write(r, &info, 1, err);
    if (rc == WALSHIP_ERR_BUSY) {
        if (++r->busy_rounds % 25 == 0)
            report(r, WS_LOG_WARN, "replica_write_lock_busy", err->msg);
        return 0;
    }
    if (rc) return rc == WALSHIP_ERR_STATE ? 0 : rc;
    r->busy_rounds = 0;
    if (info.n_backfill == info.hdr.mx_frame && info.hdr.mx_frame >= r->o.ckpt_frames &&
        walapp_try_restart(r->app, err) == 1) {
        r->known = info.hdr;
        walidx_hdr now_hdr;
        if (walapp_peek(r->app, &now_hdr, NULL) == 0) r->known = now_hdr;
        r->just_restarted = 1;
        status_lock(r);
        r->status.wal_restarts++;
        status_unlock(r);
        if ((rc = state_save(r, 1, NULL, err))) {
            walapp_end(r->app);
            return rc;
        }
    }
    uint64_t ntx = 0, npages = 0;
    for (size_t i = 0; i < n; i++) {
        rep_mark m;
        mark_get(r, &m);
        int kind = KIND_NONE;
        uint64_t tx0 = ntx, pg0 = npages;
        rc = apply_segment(r, chain[i], fe, i, &kind, &ntx, &npages, err);
        if (rc) {
            mark_rollback(r, &m);
            ntx = tx0;
            npages = pg0;
            if (kind == KIND_CORRUPT || kind == KIND_FOREIGN || kind == KIND_GONE) {
                /* refused for a while; another segment holding the same
                ** transactions is taken if there is one */
                bad_mark(r, chain[i]->key);
                status_lock(r);
                if (kind == KIND_CORRUPT) r->status.corrupt_objects++;
                status_unlock(r);
                if (kind == KIND_GONE) /* retention's work, not a problem: relist */
                    WS_INFO("replica_object_gone", "replica=%s err=\"%s\"", r->path, err->msg);
                else
                    report(r, kind == KIND_CORRUPT ? WS_LOG_ERROR : WS_LOG_WARN,
                           kind == KIND_CORRUPT ? "replica_corrupt_object" : "replica_object_ignored",
                           err->msg);
                r->cursor[0] = '\0'; /* relist: the range may be held elsewhere */
                rc = 0;
            } else if (kind == KIND_STORE) {
                store_failed(r, err);
                rc = 0;
            } else if (kind == KIND_DIVERGED) {
                status_lock(r);
                r->status.divergences++;
                status_unlock(r);
                report(r, WS_LOG_ERROR, "replica_diverged", err->msg);
                r->phase = PHASE_REBOOTSTRAP;
                r->view_untrusted = 1;
                snprintf(r->rebootstrap_why, sizeof r->rebootstrap_why, "checksum mismatch");
                rc = 0;
            }
            break;
        }
        (*applied)++;
        if (walapp_pending_frames(r->app) >= PUBLISH_FRAMES && (rc = publish(r, err))) break;
    }
    int prc = rc == 0 ? publish(r, err) : 0;
    int dropped = walapp_pending_commits(r->app) > 0;
    walapp_end(r->app);
    if (rc || prc) {
        /* A local failure (I/O, memory): what was applied but not published
        ** is gone, so the position in memory is ahead of what readers see.
        ** Rebuild it from the database. */
        if (dropped || prc) r->phase = PHASE_RESUME;
        return rc ? rc : prc;
    }
    if (ntx > 0) {
        status_lock(r);
        r->status.txs_applied += ntx;
        r->status.pages_applied += npages;
        r->status.segments_applied += *applied;
        status_unlock(r);
        rate_add(r, ntx, npages);
        return state_save(r, 0, NULL, err);
    }
    return 0;
}

/* The idle check for foreign writes: compare the header with ours. */
static void check_foreign_idle(replica *r) {
    walidx_hdr h;
    if (!r->have_known || walapp_peek(r->app, &h, NULL) != 0 || hdr_same(&h, &r->known)) return;
    if (hdr_truncated(&r->known, &h)) {
        r->known = h;
        return;
    }
    /* Confirm under the lock (the read may have raced a header update). */
    walapp_info info;
    wserr err = {0};
    if (lock_write(r, &info, 1, &err) == 0) walapp_end(r->app);
}

static void store_failed(replica *r, const wserr *e) {
    report(r, WS_LOG_WARN, "replica_store_error", e->msg);
    r->backoff_ms = r->backoff_ms ? r->backoff_ms * 2 : r->o.poll_ms;
    if (r->backoff_ms > MAX_BACKOFF_MS) r->backoff_ms = MAX_BACKOFF_MS;
    r->next_try_ms = ws_mono_ms() + r->backoff_ms;
}

static int follow(replica *r, int64_t *wait_ms, wserr *err) {
    *wait_ms = r->o.poll_ms;
    check_foreign_idle(r);
    if (r->phase != PHASE_FOLLOW) {
        *wait_ms = 0;
        return 0;
    }
    if (ws_mono_ms() < r->next_try_ms) {
        *wait_ms = r->next_try_ms - ws_mono_ms();
        return 0;
    }
    wserr e = {0};
    int rc;
    if (r->cursor[0] == '\0' && (rc = relist_generation(r, &e))) {
        store_failed(r, &e);
        return 0;
    }
    store_objlist l = {0};
    listing_info li = {.primary_gen = r->gen, .primary_txid = r->txid};
    rc = list_store(r, "generations/", r->cursor, &l, &e);
    if (rc == 0) {
        cands_free(r); /* everything past the cursor is in this listing */
        rc = take_listing(r, &l, &li, &e);
    }
    store_objlist_free(&l);
    if (rc) {
        store_failed(r, &e);
        return 0;
    }
    r->backoff_ms = 0;
    status_lock(r);
    r->status.last_poll_ok_ms = ws_now_ms();
    r->status.primary_generation = li.primary_gen;
    r->status.primary_txid = li.primary_txid > r->txid || li.primary_gen != r->gen ? li.primary_txid
                                                                                    : r->txid;
    status_unlock(r);
    if (li.newest_snap_gen > r->gen) {
        WS_INFO("replica_new_generation", "replica=%s from=%016" PRIx64 " to=%016" PRIx64,
                r->path, r->gen, li.newest_snap_gen);
        r->phase = PHASE_REBOOTSTRAP;
        r->switch_gen = li.newest_snap_gen;
        snprintf(r->rebootstrap_why, sizeof r->rebootstrap_why, "new generation %016" PRIx64,
                 li.newest_snap_gen);
        *wait_ms = 0;
        return 0;
    }
    /* drop candidates that are behind us */
    size_t k = 0;
    for (size_t i = 0; i < r->ncands; i++) {
        if (r->cands[i].last > r->txid)
            r->cands[k++] = r->cands[i];
        else
            free(r->cands[i].key);
    }
    r->ncands = k;
    const seg_ref *chain[MAX_SEGS_PER_ROUND];
    size_t n = make_chain(r, chain, MAX_SEGS_PER_ROUND);
    if (n == 0 && r->ncands > 0) {
        int covered = 0;
        for (size_t i = 0; i < r->ncands; i++)
            if (r->cands[i].first <= r->txid + 1) covered = 1;
        if (!covered) {
            /* A gap after the cursor: look at the whole generation. */
            if ((rc = relist_generation(r, &e))) {
                store_failed(r, &e);
                return 0;
            }
            n = make_chain(r, chain, MAX_SEGS_PER_ROUND);
            if (n == 0) {
                covered = 0;
                for (size_t i = 0; i < r->ncands; i++)
                    if (r->cands[i].first <= r->txid + 1) covered = 1;
                if (!covered && li.own_snap_txid > r->txid) {
                    r->phase = PHASE_REBOOTSTRAP;
                    snprintf(r->rebootstrap_why, sizeof r->rebootstrap_why,
                             "transaction %" PRIu64 " is no longer in the store",
                             r->txid + 1);
                    *wait_ms = 0;
                    return 0;
                }
                if (!covered) {
                    char msg[200];
                    snprintf(msg, sizeof msg,
                             "transaction %" PRIu64 " of generation %016" PRIx64
                             " is missing from the store (later ones are there); waiting",
                             r->txid + 1, r->gen);
                    report(r, WS_LOG_WARN, "replica_gap", msg);
                }
            }
        }
    }
    /* lag bookkeeping: the oldest transaction we know of and have not applied */
    int64_t oldest = 0;
    for (size_t i = 0; i < r->ncands; i++)
        if (r->cands[i].last > r->txid && (oldest == 0 || r->cands[i].mtime_ms < oldest))
            oldest = r->cands[i].mtime_ms;
    status_lock(r);
    r->first_unapplied_ms = oldest;
    status_unlock(r);
    if (n == 0) return 0;
    /* Segments are judged against whose history this is: after a resume,
    ** learn it now (an idle replica never needs to). */
    if (!r->have_ident && (rc = load_ident(r, &e))) {
        store_failed(r, &e);
        return 0;
    }
    /* Download the chain in parallel, streaming: each segment is checked the
    ** moment its header arrives and applied as it decodes, so memory stays
    ** bounded whatever the objects' sizes. */
    fetch_job *jobs = calloc(n, sizeof *jobs);
    uint8_t *jobv = calloc(n, 1);
    fetcher *fe = NULL;
    if (jobs == NULL || jobv == NULL) {
        free(jobs);
        free(jobv);
        return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++) jobs[i] = (fetch_job){chain[i]->key, 0, 0, 0};
    r->round_chain = chain;
    r->jobv = jobv;
    fetch_opts fo = {.threads = r->o.parallel,
                     .check_len = SEG_HEADER_SIZE,
                     .check = check_segment,
                     .check_ctx = r};
    size_t applied = 0;
    char last_key[512] = "";
    rc = fetch_start(r->st, jobs, n, &fo, &fe, err);
    if (rc == 0) rc = apply_batch(r, chain, fe, n, &applied, err);
    if (applied > 0) ws_strlcpy(last_key, chain[applied - 1]->key, sizeof last_key);
    uint64_t bytes = fe ? fetch_bytes(fe) : 0;
    fetch_free(fe);
    r->round_chain = NULL;
    r->jobv = NULL;
    free(jobv);
    free(jobs);
    status_lock(r);
    r->status.get_requests += applied < n ? applied + 1 : n;
    r->status.bytes_downloaded += bytes;
    status_unlock(r);
    if (rc) return rc;
    if (last_key[0]) ws_strlcpy(r->cursor, last_key, sizeof r->cursor);
    /* more to do right away? */
    int more = 0;
    for (size_t i = 0; i < r->ncands; i++)
        if (r->cands[i].last > r->txid && !is_bad(r, r->cands[i].key)) more = 1;
    if (more && applied == n) *wait_ms = 0;
    status_lock(r);
    if (!more) r->first_unapplied_ms = 0;
    if (r->status.primary_txid < r->txid && r->status.primary_generation == r->gen)
        r->status.primary_txid = r->txid;
    status_unlock(r);
    return 0;
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
    if (state_load(r->state_fd, &r->saved) == 0) {
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
        rc = bootstrap_fresh(r, &e);
        break;
    case PHASE_RESUME:
        rc = resume(r, &e);
        break;
    case PHASE_REBOOTSTRAP:
        rc = rebootstrap(r, &e);
        if (rc == 0 && r->phase == PHASE_REBOOTSTRAP)
            *wait_ms = r->next_rebootstrap_ms - ws_mono_ms();
        break;
    default:
        set_phase_status(r, REPLICA_FOLLOWING);
        rc = follow(r, wait_ms, &e);
        if (rc == 0 && r->phase == PHASE_FOLLOW) checkpoint_phase(r, *wait_ms > 0);
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
        report(r, WS_LOG_ERROR, "replica_error", e.msg);
        if (!passing) {
            if (err) *err = e;
            status_write(r, 1);
            return rc;
        }
        r->backoff_ms = r->backoff_ms ? r->backoff_ms * 2 : r->o.poll_ms;
        if (r->backoff_ms > MAX_BACKOFF_MS) r->backoff_ms = MAX_BACKOFF_MS;
        *wait_ms = r->backoff_ms;
        if (r->phase == PHASE_FOLLOW) r->next_try_ms = ws_mono_ms() + r->backoff_ms;
    }
    if (*wait_ms < 0) *wait_ms = 0;
    status_write(r, 0);
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
            status_write(r, 0); /* keep the heartbeat and lag fresh while waiting */
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
        state_save(r, 1, NULL, &e);
    }
    conn_close(r);
    status_lock(r);
    r->status.state = REPLICA_STOPPED;
    status_unlock(r);
    if (r->locked) status_write(r, 1);
    cands_free(r);
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
