/*
** status.c -- what the replica is doing: the status snapshot and its rate
** counters, problem reports, the status as JSON and as Prometheus text,
** status.json beside the state, and `walship status PATH` for a replica.
*/
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/log.h"
#include "../common/util.h"
#include "replica_impl.h"

#define STATUS_WRITE_MS 250

/* Records a problem in the status (and the log). */
void rep_report(replica *r, int level, const char *event, const char *msg) {
    rep_status_lock(r);
    ws_strlcpy(r->status.last_error, msg, sizeof r->status.last_error);
    r->status.last_error_ms = ws_now_ms();
    rep_status_unlock(r);
    WS_LOG(level, event, "replica=%s err=\"%s\"", r->path, msg);
}

void rep_rate_add(replica *r, uint64_t tx, uint64_t pages) {
    int64_t sec = ws_mono_ms() / 1000;
    int i = (int)(sec % RATE_BUCKETS);
    rep_status_lock(r);
    if (r->rate_sec[i] != sec) {
        r->rate_sec[i] = sec;
        r->rate_tx[i] = 0;
        r->rate_pages[i] = 0;
    }
    r->rate_tx[i] += tx;
    r->rate_pages[i] += pages;
    rep_status_unlock(r);
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
    rep_status_lock(r);
    status_refresh(r);
    *out = r->status;
    rep_status_unlock(r);
}

void replica_set_metrics_addr(replica *r, const char *addr) {
    rep_status_lock(r);
    ws_strlcpy(r->status.metrics_addr, addr, sizeof r->status.metrics_addr);
    rep_status_unlock(r);
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
void rep_status_write(replica *r, int force) {
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

void rep_set_phase_status(replica *r, int st) {
    rep_status_lock(r);
    r->status.state = st;
    rep_status_unlock(r);
    /* a bootstrap is one long round: say so before it starts */
    if (r->locked) rep_status_write(r, 1);
}

