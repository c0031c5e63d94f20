/*
** test_pipeline_random.c -- randomised workloads through the walship VFS,
** then restores of the latest state and of random TXIDs and times.
**
** Each workload mixes inserts, updates, deletes, schema changes, large
** blobs (overflow chains), VACUUM (the database shrinks) and checkpoints of
** every mode, at page sizes 512, 4096 and 65536. Every transaction also bumps
** meta.seq, so a restored database says which primary state it claims to be;
** the test recorded a content hash for every state, and checks:
**   - latest: byte-for-byte equal to the primary after a TRUNCATE checkpoint;
**   - 20+ random TXIDs: the content equals the recorded state of its seq, and
**     a higher TXID never shows an older seq;
**   - 20+ random times: the seq is one that could have been committed by then.
**
** ctest-labels: pipeline s3
** ctest-timeout: 600
*/
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "dbutil.h"
#include "harness.h"
#include "walship.h"

typedef struct state {
    uint64_t hash;
    int64_t t_before, t_after; /* wall clock around the commit */
} state;

static void random_txn(sqlite3 *db, uint32_t pgsz, int i) {
    char sql[512];
    db_exec(db, "BEGIN IMMEDIATE");
    int nops = 1 + (int)ws_test_rand_below(4);
    for (int k = 0; k < nops; k++) {
        uint64_t r = ws_test_rand_below(100);
        if (r < 40) {
            /* insert a row with a blob from tiny to several pages */
            size_t len = (size_t)ws_test_rand_below(ws_test_rand_below(10) == 0 ? 4 * pgsz : 300);
            sqlite3_stmt *st = NULL;
            sqlite3_prepare_v2(db, "INSERT INTO t(a, b) VALUES (?, ?)", -1, &st, NULL);
            uint8_t *blob = malloc(len + 1);
            ws_test_rand_bytes(blob, len);
            sqlite3_bind_int64(st, 1, (int64_t)ws_test_rand());
            sqlite3_bind_blob(st, 2, blob, (int)len, SQLITE_TRANSIENT);
            CHECK_EQ(sqlite3_step(st), SQLITE_DONE);
            sqlite3_finalize(st);
            free(blob);
        } else if (r < 55) {
            snprintf(sql, sizeof sql,
                     "UPDATE t SET a = a + 1, b = randomblob(%d) WHERE rowid %% 7 = %d",
                     (int)ws_test_rand_below(200), (int)ws_test_rand_below(7));
            db_exec(db, sql);
        } else if (r < 70) {
            snprintf(sql, sizeof sql, "DELETE FROM t WHERE rowid %% %d = %d",
                     ws_test_rand_below(4) ? 5 : 2, (int)ws_test_rand_below(2));
            db_exec(db, sql);
        } else if (r < 78) {
            snprintf(sql, sizeof sql,
                     "CREATE TABLE IF NOT EXISTS x%d(k INTEGER PRIMARY KEY, v TEXT);"
                     "INSERT INTO x%d(v) SELECT hex(randomblob(40)) FROM t LIMIT 30",
                     i % 5, i % 5);
            db_exec(db, sql);
        } else if (r < 82) {
            snprintf(sql, sizeof sql, "DROP TABLE IF EXISTS x%d", (int)ws_test_rand_below(5));
            db_exec(db, sql);
        } else if (r < 86) {
            snprintf(sql, sizeof sql, "CREATE INDEX IF NOT EXISTS ia%d ON t(a)", i % 3);
            db_exec(db, sql);
        } else if (r < 88) {
            snprintf(sql, sizeof sql, "DROP INDEX IF EXISTS ia%d", (int)ws_test_rand_below(3));
            db_exec(db, sql);
        } else {
            /* a large blob: a long overflow chain */
            snprintf(sql, sizeof sql, "INSERT INTO t(a, b) VALUES (0, randomblob(%d))",
                     (int)(pgsz * (2 + ws_test_rand_below(30))));
            db_exec(db, sql);
        }
    }
    db_exec(db, "UPDATE meta SET seq = seq + 1");
    db_exec(db, "COMMIT");
}

static void run(const char *name, uint32_t pgsz, int ntx, const char *url_base) {
    char dir[4096], path[4200], url[4200], out[4200];
    snprintf(dir, sizeof dir, "%s/%s", ws_test_tmpdir(), name);
    CHECK_EQ(ws_test_system("mkdir -p '%s'", dir), 0);
    snprintf(path, sizeof path, "%s/app.db", dir);
    snprintf(out, sizeof out, "%s/restored.db", dir);
    if (url_base)
        snprintf(url, sizeof url, "%s", url_base);
    else
        snprintf(url, sizeof url, "file://%s/store", dir);
    fprintf(stderr, "workload %s: page size %u, %d transactions, %s\n", name, pgsz, ntx, url);

    /* The page size is fixed before WAL mode; create the file plainly. */
    sqlite3 *plain = db_open_plain(path, 0);
    char sql[256];
    snprintf(sql, sizeof sql, "PRAGMA page_size=%u; PRAGMA journal_mode=WAL;", pgsz);
    db_exec(plain, sql);
    db_exec(plain, "CREATE TABLE meta(seq INTEGER); INSERT INTO meta VALUES (0);"
                   "CREATE TABLE t(a INTEGER, b BLOB);");
    sqlite3_close(plain);

    sqlite3 *db = db_open_walship(path, url, "walship_ship_interval=50ms");
    CHECK_EQ(db_int(db, "PRAGMA page_size"), pgsz);
    state *states = calloc((size_t)ntx + 1, sizeof *states);
    states[0].hash = db_content_hash(db);
    for (int i = 1; i <= ntx; i++) {
        states[i].t_before = ws_now_ms();
        random_txn(db, pgsz, i);
        states[i].t_after = ws_now_ms();
        CHECK_EQ(db_int(db, "SELECT seq FROM meta"), i);
        states[i].hash = db_content_hash(db);
        uint64_t r = ws_test_rand_below(100);
        if (r < 3) {
            static const char *const modes[] = {"PASSIVE", "FULL", "RESTART", "TRUNCATE"};
            snprintf(sql, sizeof sql, "PRAGMA wal_checkpoint(%s)", modes[ws_test_rand_below(4)]);
            db_exec(db, sql);
        } else if (r < 4) {
            /* VACUUM rewrites every page (the file shrinks after deletes)
            ** but keeps the content: the state stays states[i]. */
            db_exec(db, "VACUUM");
            CHECK_U64_EQ(db_content_hash(db), states[i].hash);
        } else if (r < 5) {
            /* close and reopen: the last connection checkpoints and deletes the WAL */
            CHECK_EQ(walship_flush(path, 60000) >= 0, 1);
            sqlite3_close(db);
            db = db_open_walship(path, url, "walship_ship_interval=50ms");
        }
    }
    CHECK_EQ(walship_flush(path, 120000), 1);
    db_exec(db, "PRAGMA wal_checkpoint(TRUNCATE)");

    /* Latest: byte for byte. */
    char msg[512];
    CHECK_EQ(db_restore(url, out, 0, 0, 0, msg, sizeof msg), 0);
    if (!files_equal(path, out))
        ws_test_fail(__FILE__, __LINE__, "restored %s differs from the primary %s", out, path);

    /* Random TXIDs. */
    uint64_t first, last;
    db_txid_range(url, &first, &last);
    fprintf(stderr, "  txids %" PRIu64 "..%" PRIu64 "\n", first, last);
    int64_t prev_seq = -1;
    uint64_t samples[24];
    for (int k = 0; k < 24; k++) samples[k] = first + ws_test_rand_below(last - first + 1);
    for (int a = 0; a < 24; a++) /* ascending, so seq must not go down */
        for (int b = a + 1; b < 24; b++)
            if (samples[b] < samples[a]) {
                uint64_t t = samples[a];
                samples[a] = samples[b];
                samples[b] = t;
            }
    for (int k = 0; k < 24; k++) {
        int rc = db_restore(url, out, 1, samples[k], 0, msg, sizeof msg);
        if (rc != 0) ws_test_fail(__FILE__, __LINE__, "restore --txid %" PRIu64 ": %s", samples[k], msg);
        sqlite3 *r = db_open_plain(out, 1);
        int64_t seq = db_int(r, "SELECT seq FROM meta");
        CHECK(seq >= 0 && seq <= ntx);
        if (db_content_hash(r) != states[seq].hash)
            ws_test_fail(__FILE__, __LINE__, "restore at TXID %" PRIu64 " (seq %" PRId64
                         ") is not a state the primary had", samples[k], seq);
        CHECK(seq >= prev_seq);
        prev_seq = seq;
        sqlite3_close(r);
    }

    /* Random times: the state after the last commit at or before T. */
    for (int k = 0; k < 24; k++) {
        int i = 1 + (int)ws_test_rand_below((uint64_t)ntx);
        int64_t t = states[i].t_after;
        int rc = db_restore(url, out, 2, 0, t, msg, sizeof msg);
        if (rc != 0) {
            /* Before the first snapshot's commit there is nothing to restore. */
            CHECK_EQ(rc, WALSHIP_ERR_NOTFOUND);
            continue;
        }
        sqlite3 *r = db_open_plain(out, 1);
        int64_t seq = db_int(r, "SELECT seq FROM meta");
        CHECK(seq >= 0 && seq <= ntx);
        CHECK_U64_EQ(db_content_hash(r), states[seq].hash);
        /* Every commit that returned by t is in; none that started after t. */
        for (int j = 1; j <= ntx; j++) {
            if (states[j].t_after <= t && seq < j)
                ws_test_fail(__FILE__, __LINE__,
                             "restore at time %" PRId64 " lacks commit %d (done at %" PRId64 ")", t,
                             j, states[j].t_after);
            if (states[j].t_before > t && seq >= j)
                ws_test_fail(__FILE__, __LINE__,
                             "restore at time %" PRId64 " has commit %d (begun at %" PRId64 ")", t,
                             j, states[j].t_before);
        }
        sqlite3_close(r);
    }
    sqlite3_close(db);
    free(states);
}

int main(void) {
    ws_test_seed(20261126);
    run("p4096", 4096, 400, NULL);
    run("p512", 512, 250, NULL);
    run("p65536", 65536, 120, NULL);
    /* The same through a real S3 server (Ceph RGW under scripts/test). */
    if (getenv("WALSHIP_TEST_S3_URL") || getenv("WALSHIP_TEST_REQUIRE_S3"))
        run("s3", 4096, 150, ws_test_s3_url("random"));
    return 0;
}
