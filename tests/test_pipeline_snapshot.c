/*
** test_pipeline_snapshot.c -- WAL restarts while a generation-start snapshot
** of a large database runs, and a crash in the middle of one.
**
** While a generation starts, the transactions committed meanwhile are folded
** into the snapshot, and the shipper publishes each as shipped: the overlay
** holds it, so the VFS copies nothing into the spool when SQLite restarts or
** truncates the WAL. A start cut short by a crash begins again from the
** database file. Checked:
**   1. A 64 MiB database is opened through walship with an empty store and
**      written to, with TRUNCATE and RESTART checkpoints and a tiny
**      wal_autocheckpoint, until its snapshot is in the store (several WAL
**      truncations must happen before it is). After a flush: the latest
**      restore equals the primary byte for byte; the snapshot's own TXID
**      restores a state the primary really had (its recorded content); and
**      every later TXID restores exactly its transaction's content.
**   2. The same with a writer process SIGKILLed before its snapshot is in
**      the store; reopened, written to and flushed, the store's latest state
**      equals the primary byte for byte.
**
** ctest-labels: pipeline
** ctest-timeout: 300
*/
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "dbutil.h"
#include "harness.h"
#include "walship.h"

#define DB_MIB 64
#define MAXSEQ 200000

static char dir[4096];

/* A DB_MIB MiB database in WAL mode, written by plain SQLite. */
static void make_big(const char *path) {
    sqlite3 *db = db_open_plain(path, 0);
    char sql[400];
    snprintf(sql, sizeof sql,
             "PRAGMA journal_mode=WAL; CREATE TABLE meta(seq INTEGER); INSERT INTO meta VALUES (0);"
             "CREATE TABLE t(v BLOB); CREATE TABLE big(b BLOB);"
             "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < %d) "
             "INSERT INTO big SELECT randomblob(3000) FROM n; PRAGMA wal_checkpoint(TRUNCATE);",
             DB_MIB * 340);
    db_exec(db, sql);
    sqlite3_close(db);
}

/* One transaction (seq+1); every 8th is followed by a TRUNCATE or RESTART
** checkpoint. Returns 1 if that checkpoint emptied the WAL. */
static int write_one(sqlite3 *db, int i) {
    db_exec(db, "BEGIN; INSERT INTO t VALUES (randomblob(300)); UPDATE meta SET seq = seq + 1;"
                "COMMIT");
    if (i % 8 != 7) return 0;
    int nlog = -1, nckpt = -1;
    int mode = (i / 8) % 2 ? SQLITE_CHECKPOINT_TRUNCATE : SQLITE_CHECKPOINT_RESTART;
    CHECK_EQ(sqlite3_wal_checkpoint_v2(db, "main", mode, &nlog, &nckpt), SQLITE_OK);
    return mode == SQLITE_CHECKPOINT_TRUNCATE && nlog == 0;
}

static sqlite3 *open_ws(const char *path, const char *url) {
    sqlite3 *db = db_open_walship(path, url, "walship_ship_interval=50ms");
    db_exec(db, "PRAGMA wal_autocheckpoint=4");
    return db;
}

static void check_latest(const char *path, const char *url, sqlite3 *db) {
    char out[4200], msg[512];
    CHECK_EQ(walship_flush(path, 120000), 1);
    db_exec(db, "PRAGMA wal_checkpoint(TRUNCATE)");
    snprintf(out, sizeof out, "%s/latest.db", dir);
    int rc = db_restore(url, out, 0, 0, 0, msg, sizeof msg);
    if (rc != 0) ws_test_fail(__FILE__, __LINE__, "restore latest: %s", msg);
    CHECK(files_equal(path, out));
}

static void folding_with_restarts(void) {
    char path[4200], url[4200], out[4200], msg[512];
    snprintf(path, sizeof path, "%s/a.db", dir);
    snprintf(url, sizeof url, "file://%s/store-a", dir);
    make_big(path);
    sqlite3 *db = open_ws(path, url);
    int n = 0, truncations = 0;
    int64_t deadline = ws_mono_ms() + 240000;
    while (db_generation_count(url) == 0) {
        for (int k = 0; k < 16; k++, n++) {
            CHECK(n + 1 < MAXSEQ);
            truncations += write_one(db, n);
        }
        CHECK(ws_mono_ms() < deadline);
    }
    fprintf(stderr, "%d transactions, %d WAL truncations before the snapshot was stored\n", n,
            truncations);
    CHECK(truncations >= 3);
    /* and some after it, shipped as segments */
    for (int k = 0; k < 200; k++, n++) write_one(db, n);
    check_latest(path, url, db);

    uint64_t first = 0, last = 0;
    db_txid_range(url, &first, &last);
    CHECK(last > first);
    /* The snapshot's TXID is a state the primary had; each later TXID is
    ** exactly one more transaction. Transaction k set seq = k and added row
    ** k of t (rows are never changed), so the state at seq k is: rows 1..k
    ** of the primary's t, and the untouched big table. */
    snprintf(out, sizeof out, "%s/at.db", dir);
    int64_t base_seq = -1, nbig = db_int(db, "SELECT count(*) FROM big");
    char sql[4400];
    for (uint64_t t = first; t <= last; t += (t == first ? 1 : 1 + ws_test_rand_below(40))) {
        int rc = db_restore(url, out, 1, t, 0, msg, sizeof msg);
        if (rc != 0) ws_test_fail(__FILE__, __LINE__, "restore --txid %" PRIu64 ": %s", t, msg);
        sqlite3 *r = db_open_plain(out, 1);
        int64_t seq = db_int(r, "SELECT seq FROM meta");
        CHECK(seq >= 0 && seq <= n);
        if (base_seq < 0) base_seq = seq - (int64_t)(t - first);
        CHECK_EQ(seq, base_seq + (int64_t)(t - first));
        CHECK_EQ(db_int(r, "SELECT count(*) FROM t"), seq);
        snprintf(sql, sizeof sql, "ATTACH '%s' AS p", path);
        db_exec(r, sql);
        CHECK_EQ(db_int(r, "SELECT count(*) FROM main.t AS a JOIN p.t AS b ON a.rowid = b.rowid AND a.v = b.v"), seq);
        CHECK_EQ(db_int(r, "SELECT count(*) FROM big"), nbig);
        sqlite3_close(r);
    }
    sqlite3_close(db);
}

typedef struct killed_arg {
    const char *path, *url;
} killed_arg;

/* Child: writes until killed. */
static int writer_forever(void *arg) {
    killed_arg *a = arg;
    db_register();
    sqlite3 *db = open_ws(a->path, a->url);
    for (int i = 0; i < MAXSEQ; i++) write_one(db, i);
    sqlite3_close(db);
    return 1; /* never reached: the parent kills it long before */
}

static void crash_while_folding(void) {
    char path[4200], url[4200];
    snprintf(path, sizeof path, "%s/b.db", dir);
    snprintf(url, sizeof url, "file://%s/store-b", dir);
    make_big(path);
    killed_arg a = {path, url};
    pid_t pid = child_start(writer_forever, &a);
    /* until the writer has checkpointed its WAL a few times (every 8th commit) */
    sqlite3 *ro = db_open_plain(path, 1);
    int64_t deadline = ws_mono_ms() + 120000;
    while (db_int(ro, "SELECT seq FROM meta") < 48) {
        CHECK(ws_mono_ms() < deadline);
        ws_sleep_ms(5); /* polling a condition, with a deadline */
    }
    sqlite3_close(ro);
    int stored = db_generation_count(url) > 0;
    CHECK_EQ(kill(pid, SIGKILL), 0);
    CHECK_EQ(child_wait(pid), 128 + SIGKILL);
    fprintf(stderr, "writer killed %s its snapshot was stored\n", stored ? "after" : "before");
    CHECK(!stored);
    sqlite3 *db = open_ws(path, url);
    for (int i = 0; i < 100; i++) write_one(db, i);
    check_latest(path, url, db);
    sqlite3_close(db);
}

int main(void) {
    ws_test_seed(31);
    snprintf(dir, sizeof dir, "%s", ws_test_tmpdir());
    db_register();
    fprintf(stderr, "-- WAL restarts while a generation-start snapshot runs\n");
    folding_with_restarts();
    fprintf(stderr, "-- a writer killed while its generation-start snapshot runs\n");
    crash_while_folding();
    return 0;
}
