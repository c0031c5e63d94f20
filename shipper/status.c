/*
** status.c -- the status of a database's shipping as one JSON object, for
** PRAGMA walship_status and `walship status`. Reads only the spool's shared
** control block and a few file sizes, so it works in any process.
*/
#include <dirent.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "../common/util.h"
#include "shipper.h"
#include "shipstate.h"

static uint64_t dir_bytes(const char *dir, int depth) {
    uint64_t total = 0;
    DIR *d = opendir(dir);
    if (d == NULL) return 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        char path[PATH_MAX];
        struct stat st;
        if (snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= (int)sizeof path) continue;
        if (lstat(path, &st) != 0) continue;
        if (S_ISDIR(st.st_mode) && depth < 2)
            total += dir_bytes(path, depth + 1);
        else if (S_ISREG(st.st_mode))
            total += (uint64_t)st.st_size;
    }
    closedir(d);
    return total;
}

void ws_status_json(spool *sp, const char *db_path, const char *url, const char *local_error,
                    char *out, size_t n) {
    spool_status st;
    spool_status_get(sp, &st);
    if (st.last_error[0] == '\0' && local_error != NULL)
        ws_strlcpy(st.last_error, local_error, sizeof st.last_error);
    if (st.heartbeat_ms == 0) {
        /* No shipper has run since the spool was last opened: what the
        ** last one made durable is in its state file. */
        ship_record rec;
        if (shipstate_peek(spool_path(sp), &rec) == 0) {
            st.generation = rec.generation;
            st.txid = rec.txid;
            st.shipped_txid = rec.shipped_txid;
            st.uploaded.seq = rec.pos.log_seq;
            st.uploaded.off = rec.pos.log_off;
            st.heartbeat_ms = -1; /* known position, no live shipper */
        }
    }
    spool_pos end;
    spool_end(sp, &end);
    int64_t now = ws_now_ms();
    int64_t lag = 0;
    int pending = st.heartbeat_ms == 0 || spool_pos_cmp(st.uploaded, end) < 0;
    if (pending) {
        /* The oldest commit not yet in the store: the first record past the
        ** uploaded position, or what the shipper holds locally. */
        int64_t oldest = st.oldest_unshipped_ms;
        spool_pos pos = st.heartbeat_ms ? st.uploaded : (spool_pos){0, 0};
        if (st.heartbeat_ms == 0) spool_begin(sp, &pos, NULL);
        wsbuf buf = {0};
        spool_rec rec;
        /* Its own reader: the shipper's belongs to the shipper's thread. */
        spool_reader rd = {.fd = -1};
        for (int i = 0; i < 64 && spool_read(sp, &rd, &pos, &buf, &rec, NULL) > 0; i++) {
            if (rec.type == SPOOL_REC_WATERMARK) {
                if (oldest == 0 || rec.time_ms < oldest) oldest = rec.time_ms;
                break;
            }
        }
        spool_reader_close(&rd);
        wsbuf_free(&buf);
        if (oldest > 0 && now > oldest) lag = now - oldest;
    } else if (st.oldest_unshipped_ms > 0 && now > st.oldest_unshipped_ms) {
        lag = now - st.oldest_unshipped_ms;
    }
    char wal[PATH_MAX];
    struct stat ws;
    uint64_t wal_bytes = 0;
    if (snprintf(wal, sizeof wal, "%s-wal", db_path) < (int)sizeof wal && stat(wal, &ws) == 0)
        wal_bytes = (uint64_t)ws.st_size;
    char edb[1024], eurl[2048], eerr[1200], rurl[2048];
    ws_json_escape(edb, sizeof edb, db_path);
    ws_redact_url(rurl, sizeof rurl, url ? url : "");
    ws_json_escape(eurl, sizeof eurl, rurl);
    ws_json_escape(eerr, sizeof eerr, st.last_error);
    char ewhy[1200];
    ws_json_escape(ewhy, sizeof ewhy, st.generation_reason);
    /* A shipper lives while some process holds the election lock, however
    ** long its current upload takes. */
    int alive = spool_shipper_alive(sp);
    uint32_t flags = spool_flags_get(sp);
    spool_uploads up;
    spool_uploads_get(sp, &up);
    snprintf(out, n,
             "{\"db\":\"%s\",\"url\":\"%s\",\"generation\":\"%016" PRIx64 "\",\"txid\":%" PRIu64
             ",\"shipped_txid\":%" PRIu64 ",\"lag_ms\":%" PRId64 ",\"spool_bytes\":%" PRIu64
             ",\"wal_bytes\":%" PRIu64 ",\"queue_bytes\":%" PRIu64
             ",\"segments_uploaded\":%" PRIu64 ",\"segment_bytes_uploaded\":%" PRIu64
             ",\"snapshots_uploaded\":%" PRIu64 ",\"snapshot_bytes_uploaded\":%" PRIu64
             ",\"wal_frames_copied\":%" PRIu64 ",\"wal_bytes_copied\":%" PRIu64
             ",\"shipper_pid\":%d,\"shipper_alive\":%s,\"discarding\":%s,"
             "\"error_needs_user\":%s,\"generation_reason\":\"%s\",\"last_error\":\"%s\"}",
             edb, eurl, st.generation, st.txid, st.shipped_txid, lag,
             dir_bytes(spool_path(sp), 0), wal_bytes, st.queue_bytes, up.segments,
             up.segment_bytes, up.snapshots, up.snapshot_bytes, up.copied_frames, up.copied_bytes,
             (int)st.pid,
             alive ? "true" : "false", (flags & SPOOL_ST_DISCARDING) ? "true" : "false",
             (flags & SPOOL_ST_PERMANENT) ? "true" : "false", ewhy, eerr);
}
