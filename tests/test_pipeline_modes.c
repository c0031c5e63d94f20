/*
** test_pipeline_modes.c -- what walship does with journal modes, locking
** modes, missing destinations, and what it reports.
**
**   - A database in rollback-journal mode opened through walship is in WAL
**     mode afterwards (PRAGMA journal_mode, and bytes 18-19 of the file),
**     and what it held before ships: restore equals the primary.
**   - PRAGMA journal_mode=DELETE, MEMORY, OFF, TRUNCATE, PERSIST (any case,
**     with or without "main.") fails with a message that mentions walship;
**     the database stays in WAL mode and keeps shipping.
**   - PRAGMA locking_mode=EXCLUSIVE fails the same way; locking_mode stays
**     normal.
**   - Opening read-write with no walship_url and no WALSHIP_URL fails, and
**     the reason ("no destination") reaches SQLite's error log, also for a
**     database at a long path; read-only it opens as a plain reader. With WALSHIP_URL set, the database ships
**     to <WALSHIP_URL>/<file name>.
**   - PRAGMA walship_status is one JSON object with generation (16 hex
**     digits, the store's generation), txid, shipped_txid, lag_ms,
**     spool_bytes, wal_bytes (the WAL's size), last_error (""); after a
**     flush shipped_txid = txid and lag_ms = 0. SELECT walship_flush(ms)
**     returns 1, and is unknown on a connection that does not use walship.
**   - Right after walship_flush returns 1, shipped_txid = txid (200 times).
**   - segments_uploaded, segment_bytes_uploaded, snapshots_uploaded and
**     snapshot_bytes_uploaded equal the store's segment and snapshot files.
**   - A periodic snapshot comes once the segments since the last one add up
**     to its size (4 MiB at least), not more often: 12 MiB of
**     incompressible history over a 1 MiB database gives one or two.
**   - With nothing shipped (walship_upload=0), lag_ms is exactly how long
**     the first commit has waited, within the clock readings around it.
**   - wal_frames_copied and wal_bytes_copied count what the VFS copied into
**     the spool at a WAL restart: with no shipper, every committed frame of
**     the WAL the checkpoint reported (frames and bytes exactly).
**
** ctest-labels: pipeline
** ctest-timeout: 200
*/
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "dbutil.h"
#include "harness.h"
#include "walship.h"

static char logbuf[16384];
static size_t loglen;

static void log_cb(void *ctx, int code, const char *msg) {
    (void)ctx;
    int n = snprintf(logbuf + loglen, sizeof logbuf - loglen, "[%d] %s\n", code, msg);
    if (n > 0 && loglen + (size_t)n < sizeof logbuf) loglen += (size_t)n;
}

static char dir[3800];

static void mkpath(char *out, size_t n, const char *name) { snprintf(out, n, "%s/%s", dir, name); }

static void restore_equals(const char *url, const char *path, sqlite3 *db) {
    char out[4200], msg[512];
    snprintf(out, sizeof out, "%s.restored", path);
    CHECK_EQ(walship_flush(path, 60000), 1);
    db_exec(db, "PRAGMA wal_checkpoint(TRUNCATE)");
    CHECK_EQ(walship_flush(path, 60000), 1);
    if (db_restore(url, out, 0, 0, 0, msg, sizeof msg) != 0)
        ws_test_fail(__FILE__, __LINE__, "restore %s: %s", url, msg);
    if (!files_equal(path, out)) ws_test_fail(__FILE__, __LINE__, "%s differs from %s", out, path);
}

static void text_of(sqlite3 *db, const char *sql, char *out, size_t n) {
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        ws_test_fail(__FILE__, __LINE__, "%s: %s", sql, sqlite3_errmsg(db));
    CHECK_EQ(sqlite3_step(st), SQLITE_ROW);
    const char *t = (const char *)sqlite3_column_text(st, 0);
    snprintf(out, n, "%s", t ? t : "(null)");
    sqlite3_finalize(st);
}

static void test_rollback_db_switched(void) {
    char path[4000], url[4000];
    mkpath(path, sizeof path, "rollback.db");
    snprintf(url, sizeof url, "file://%s/rollback-store", dir);
    sqlite3 *p = db_open_plain(path, 0);
    db_exec(p, "PRAGMA journal_mode=DELETE; CREATE TABLE t(a, b);"
               "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 200) "
               "INSERT INTO t SELECT x, randomblob(500) FROM c;");
    sqlite3_close(p);
    uint8_t hdr[20];
    int fd = open(path, O_RDONLY);
    CHECK(fd >= 0);
    CHECK_EQ(pread(fd, hdr, 20, 0), 20);
    CHECK_EQ(hdr[18], 1); /* rollback journal */

    sqlite3 *db = db_open_walship(path, url, "walship_ship_interval=0");
    char mode[64];
    text_of(db, "PRAGMA journal_mode", mode, sizeof mode);
    CHECK_STREQ(mode, "wal");
    CHECK_EQ(pread(fd, hdr, 20, 0), 20);
    CHECK_EQ(hdr[18], 2);
    CHECK_EQ(hdr[19], 2);
    close(fd);
    db_exec(db, "INSERT INTO t VALUES (201, 'after')");
    restore_equals(url, path, db);
    sqlite3_close(db);
}

static void test_refused_pragmas(void) {
    char path[4000], url[4000];
    mkpath(path, sizeof path, "pragmas.db");
    snprintf(url, sizeof url, "file://%s/pragmas-store", dir);
    sqlite3 *db = db_open_walship(path, url, "walship_ship_interval=0");
    db_exec(db, "CREATE TABLE t(a)");
    static const char *const refused[] = {
        "PRAGMA journal_mode=DELETE",    "PRAGMA journal_mode=MEMORY",
        "PRAGMA journal_mode=OFF",       "PRAGMA journal_mode=TRUNCATE",
        "PRAGMA journal_mode=PERSIST",   "PRAGMA journal_mode=delete",
        "PRAGMA main.journal_mode=off",  "PRAGMA journal_mode = 'memory'",
        "PRAGMA locking_mode=EXCLUSIVE", "PRAGMA main.locking_mode=exclusive",
        "PRAGMA locking_mode = Exclusive"};
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        char *err = NULL;
        int rc = sqlite3_exec(db, refused[i], NULL, NULL, &err);
        if (rc == SQLITE_OK)
            ws_test_fail(__FILE__, __LINE__, "\"%s\" through walship succeeded", refused[i]);
        if (err == NULL || strstr(err, "walship") == NULL)
            ws_test_fail(__FILE__, __LINE__, "\"%s\": the error does not mention walship: %s",
                         refused[i], err ? err : "(none)");
        sqlite3_free(err);
        char mode[64];
        text_of(db, "PRAGMA journal_mode", mode, sizeof mode);
        CHECK_STREQ(mode, "wal");
        text_of(db, "PRAGMA locking_mode", mode, sizeof mode);
        CHECK_STREQ(mode, "normal");
        /* still shipping */
        db_exec(db, "INSERT INTO t VALUES (randomblob(100))");
        CHECK_EQ(walship_flush(path, 60000), 1);
    }
    /* What walship allows. */
    db_exec(db, "PRAGMA journal_mode=WAL; PRAGMA locking_mode=NORMAL;");
    restore_equals(url, path, db);
    sqlite3_close(db);
}

static void test_destination(void) {
    char path[4000], uri[4200];
    mkpath(path, sizeof path, "nourl.db");
    unsetenv("WALSHIP_URL");
    db_register();
    loglen = 0;
    logbuf[0] = '\0';
    snprintf(uri, sizeof uri, "file:%s", path);
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(uri, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_URI,
                             "walship");
    if (rc == SQLITE_OK) ws_test_fail(__FILE__, __LINE__, "opened %s through walship with no destination", path);
    fprintf(stderr, "open without a destination: %d %s; log: %s", rc, db ? sqlite3_errmsg(db) : "",
            logbuf);
    CHECK_CONTAINS(logbuf, "walship");
    CHECK_CONTAINS(logbuf, "no destination");
    /* It names the database; SQLite's log cuts a message at about 210
    ** bytes, so only the path's beginning is sure to be there. */
    char named[64];
    snprintf(named, sizeof named, "database %.12s", path);
    CHECK_CONTAINS(logbuf, named);
    sqlite3_close(db);

    /* Read-only without a destination: a plain reader. */
    sqlite3 *p = db_open_plain(path, 0);
    db_exec(p, "PRAGMA journal_mode=WAL; CREATE TABLE t(a); INSERT INTO t VALUES (42);");
    sqlite3_close(p);
    db = NULL;
    rc = sqlite3_open_v2(uri, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, "walship");
    if (rc != SQLITE_OK)
        ws_test_fail(__FILE__, __LINE__, "read-only open without a destination: %s", sqlite3_errmsg(db));
    CHECK_EQ(db_int(db, "SELECT a FROM t"), 42);
    sqlite3_close(db);

    /* WALSHIP_URL is a base: <base>/<file name>. */
    char base[4100], url[4200];
    snprintf(base, sizeof base, "file://%s/envstore", dir);
    setenv("WALSHIP_URL", base, 1);
    db = NULL;
    rc = sqlite3_open_v2(uri, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_URI, "walship");
    if (rc != SQLITE_OK) ws_test_fail(__FILE__, __LINE__, "open with WALSHIP_URL: %s", sqlite3_errmsg(db));
    sqlite3_busy_timeout(db, 10000);
    db_exec(db, "INSERT INTO t VALUES (43)");
    snprintf(url, sizeof url, "%s/nourl.db", base);
    restore_equals(url, path, db);
    sqlite3_close(db);
    unsetenv("WALSHIP_URL");
}

static void test_status(void) {
    char path[4000], url[4000], wal[4100];
    mkpath(path, sizeof path, "status.db");
    snprintf(wal, sizeof wal, "%s-wal", path);
    snprintf(url, sizeof url, "file://%s/status-store", dir);
    sqlite3 *db = db_open_walship(path, url, "walship_ship_interval=0");
    db_exec(db, "CREATE TABLE t(a); INSERT INTO t VALUES (randomblob(5000));");
    CHECK_EQ(db_int(db, "SELECT walship_flush(60000)"), 1);
    char *js = db_status_json(db);
    fprintf(stderr, "status: %s\n", js);
    sqlite3 *mem = NULL;
    CHECK_EQ(sqlite3_open(":memory:", &mem), SQLITE_OK);
    sqlite3_stmt *st = NULL;
    CHECK_EQ(sqlite3_prepare_v2(mem,
                                "SELECT json_valid(?1), json_type(?1, '$.generation'), "
                                "json_type(?1, '$.txid'), json_type(?1, '$.shipped_txid'), "
                                "json_type(?1, '$.lag_ms'), json_type(?1, '$.spool_bytes'), "
                                "json_type(?1, '$.wal_bytes'), json_type(?1, '$.last_error')",
                                -1, &st, NULL),
             SQLITE_OK);
    sqlite3_bind_text(st, 1, js, -1, SQLITE_TRANSIENT);
    CHECK_EQ(sqlite3_step(st), SQLITE_ROW);
    CHECK_EQ(sqlite3_column_int(st, 0), 1);
    static const char *const types[] = {"text", "integer", "integer", "integer",
                                        "integer", "integer", "text"};
    for (int i = 0; i < 7; i++) CHECK_STREQ((const char *)sqlite3_column_text(st, i + 1), types[i]);
    sqlite3_finalize(st);
    sqlite3_close(mem);

    char gen[64], err[256];
    db_json_text(js, "generation", gen, sizeof gen);
    db_json_text(js, "last_error", err, sizeof err);
    CHECK_EQ(strlen(gen), 16);
    CHECK_EQ(strspn(gen, "0123456789abcdef"), 16);
    uint64_t ids[4], first[4], last[4];
    CHECK_EQ(db_generation_list(url, ids, first, last, 4), 1);
    char want[32];
    snprintf(want, sizeof want, "%016" PRIx64, ids[0]);
    CHECK_STREQ(gen, want);
    CHECK_STREQ(err, "");
    CHECK(db_json_int(js, "txid") >= 1);
    CHECK_EQ(db_json_int(js, "shipped_txid"), db_json_int(js, "txid"));
    CHECK_EQ(db_json_int(js, "txid"), (int64_t)last[0]);
    CHECK_EQ(db_json_int(js, "lag_ms"), 0); /* everything committed is in the store */
    CHECK(db_json_int(js, "spool_bytes") > 0);
    CHECK_EQ(db_json_int(js, "wal_bytes"), db_file_size(wal));
    /* What it says it uploaded is what the store holds. */
    char out[256];
    int64_t counts[2][2]; /* [segments, snapshots][objects, bytes] */
    static const char *const kinds[2] = {"seg", "snap"};
    for (int k = 0; k < 2; k++) {
        CHECK_EQ(db_capture(out, sizeof out,
                            "find '%s/status-store/generations' -type f -name '*.%s' -printf '%%s\\n' "
                            "| awk '{n++; b+=$1} END {print n+0, b+0}'",
                            dir, kinds[k]),
                 0);
        CHECK_EQ(sscanf(out, "%" SCNd64 " %" SCNd64, &counts[k][0], &counts[k][1]), 2);
    }
    /* The generation's snapshot; its first transactions may be folded into
    ** it (no segment then). */
    CHECK(counts[1][0] >= 1);
    CHECK_EQ(db_json_int(js, "segments_uploaded"), counts[0][0]);
    CHECK_EQ(db_json_int(js, "segment_bytes_uploaded"), counts[0][1]);
    CHECK_EQ(db_json_int(js, "snapshots_uploaded"), counts[1][0]);
    CHECK_EQ(db_json_int(js, "snapshot_bytes_uploaded"), counts[1][1]);
    /* Right after a flush returns, the status shows what it waited for. */
    for (int i = 0; i < 200; i++) {
        db_exec(db, "INSERT INTO t VALUES (randomblob(100))");
        CHECK_EQ(walship_flush(path, 60000), 1);
        char *j2 = db_status_json(db);
        int64_t tx = db_json_int(j2, "txid"), shipped = db_json_int(j2, "shipped_txid");
        free(j2);
        if (shipped != tx)
            ws_test_fail(__FILE__, __LINE__, "after flush %d: shipped_txid %" PRId64 ", txid %" PRId64,
                         i, shipped, tx);
    }
    CHECK(db_json_int(js, "wal_bytes") > 0);
    free(js);

    /* After a TRUNCATE checkpoint the WAL is empty, and status says so. */
    db_exec(db, "PRAGMA wal_checkpoint(TRUNCATE)");
    js = db_status_json(db);
    CHECK_EQ(db_json_int(js, "wal_bytes"), 0);
    free(js);

    /* walship_flush is a function of walship connections only. */
    sqlite3 *p = db_open_plain(path, 1);
    sqlite3_stmt *fst = NULL;
    CHECK(sqlite3_prepare_v2(p, "SELECT walship_flush(10)", -1, &fst, NULL) != SQLITE_OK);
    sqlite3_finalize(fst);
    sqlite3_close(p);
    sqlite3_close(db);
}

/* lag_ms measures how long the oldest commit not in the store has waited.
** A database opened with walship_upload=0 ships nothing: its first commit
** (made in [t_before, t_after]) stays the oldest, and a status read in
** [q0, q1] must say q0 - t_after <= lag_ms <= q1 - t_before; the test waits
** until that is at least 300 ms. */
static void test_lag(void) {
    char path[4000], url[4000];
    mkpath(path, sizeof path, "lag.db");
    snprintf(url, sizeof url, "file://%s/lag-store", dir);
    sqlite3 *db = db_open_walship(path, url, "walship_upload=0");
    int64_t t_before = ws_now_ms();
    db_exec(db, "CREATE TABLE t(a)");
    int64_t t_after = ws_now_ms();
    db_exec(db, "INSERT INTO t VALUES (1)");
    while (ws_now_ms() < t_after + 300) ws_sleep_ms(10); /* the lag being measured */
    int64_t q0 = ws_now_ms();
    char *js = db_status_json(db);
    int64_t q1 = ws_now_ms();
    int64_t lag = db_json_int(js, "lag_ms");
    fprintf(stderr, "nothing shipped, first commit %" PRId64 "..%" PRId64 ", status at %" PRId64
                    "..%" PRId64 ": %s\n",
            t_before, t_after, q0, q1, js);
    if (lag < q0 - t_after || lag > q1 - t_before)
        ws_test_fail(__FILE__, __LINE__,
                     "lag_ms is %" PRId64 "; the oldest unshipped commit waited %" PRId64
                     "..%" PRId64 " ms",
                     lag, q0 - t_after, q1 - t_before);
    CHECK_EQ(db_json_int(js, "shipped_txid"), 0);
    free(js);
    sqlite3_close(db);
}

/* With walship_upload=0 no shipper makes anything durable, so the restart
** after a full checkpoint copies every committed frame of the old WAL. */
static void test_copied(void) {
    char path[4000], url[4000];
    mkpath(path, sizeof path, "copied.db");
    snprintf(url, sizeof url, "file://%s/copied-store", dir);
    sqlite3 *db = db_open_walship(path, url, "walship_upload=0");
    db_exec(db, "CREATE TABLE t(a)");
    for (int i = 0; i < 20; i++) db_exec(db, "INSERT INTO t VALUES (randomblob(300))");
    char *js = db_status_json(db);
    CHECK_EQ(db_json_int(js, "wal_frames_copied"), 0);
    free(js);
    sqlite3_stmt *st = NULL;
    CHECK_EQ(sqlite3_prepare_v2(db, "PRAGMA wal_checkpoint(PASSIVE)", -1, &st, NULL), SQLITE_OK);
    CHECK_EQ(sqlite3_step(st), SQLITE_ROW);
    CHECK_EQ(sqlite3_column_int(st, 0), 0);                                 /* not busy */
    int64_t frames = sqlite3_column_int64(st, 1);
    CHECK_EQ(sqlite3_column_int64(st, 2), frames);                          /* all backfilled */
    sqlite3_finalize(st);
    CHECK(frames >= 20);
    db_exec(db, "INSERT INTO t VALUES (1)"); /* restarts the WAL */
    js = db_status_json(db);
    fprintf(stderr, "after the restart of a %" PRId64 "-frame WAL: %s\n", frames, js);
    CHECK_EQ(db_json_int(js, "wal_frames_copied"), frames);
    CHECK_EQ(db_json_int(js, "wal_bytes_copied"), frames * (24 + 4096));
    free(js);
    sqlite3_close(db);
}

/* The reason must survive a long path: SQLite's error log truncates a
** message to about 210 bytes, so the reason has to come before the path. */
static void test_destination_long_path(void) {
    unsetenv("WALSHIP_URL");
    db_register();
    char deep[4000], deeppath[4100], deepuri[4200];
    snprintf(deep, sizeof deep, "%.3700s/%s/%s", dir,
             "a-directory-name-of-sixty-characters-for-a-realistic-depth-1",
             "a-directory-name-of-sixty-characters-for-a-realistic-depth-2");
    CHECK_EQ(ws_test_system("mkdir -p '%s'", deep), 0);
    snprintf(deeppath, sizeof deeppath, "%s/app.db", deep);
    snprintf(deepuri, sizeof deepuri, "file:%s", deeppath);
    loglen = 0;
    logbuf[0] = '\0';
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(deepuri, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_URI,
                             "walship");
    CHECK(rc != SQLITE_OK);
    sqlite3_close(db);
    fprintf(stderr, "with a %zu-byte path, log: %s", strlen(deeppath), logbuf);
    CHECK_CONTAINS(logbuf, "no destination");
}

static void test_snapshot_pays(void) {
    char path[4000], url[4000];
    mkpath(path, sizeof path, "pays.db");
    snprintf(url, sizeof url, "file://%s/pays-store", dir);
    sqlite3 *db = db_open_walship(path, url, "walship_ship_interval=0");
    db_exec(db, "CREATE TABLE t(v); WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
                "WHERE x < 1000) INSERT INTO t SELECT randomblob(1000) FROM c");
    CHECK_EQ(walship_flush(path, 60000), 1);
    for (int i = 0; i < 3000; i++) db_exec(db, "INSERT INTO t VALUES (randomblob(4000))");
    CHECK_EQ(walship_flush(path, 60000), 1);
    char *js = db_status_json(db);
    int64_t segs = db_json_int(js, "segment_bytes_uploaded");
    int64_t snaps = db_json_int(js, "snapshots_uploaded");
    fprintf(stderr, "pays: %" PRId64 " segment bytes, %" PRId64 " snapshots (%" PRId64 " bytes)\n",
            segs, snaps, db_json_int(js, "snapshot_bytes_uploaded"));
    CHECK(segs > (int64_t)12 << 20);
    /* The generation's first, then one per 4 MiB of segments at most (the
    ** database grows past 4 MiB, so fewer). */
    CHECK(snaps >= 2);
    CHECK(snaps <= 1 + segs / ((int64_t)4 << 20));
    free(js);
    sqlite3_close(db);
}

int main(void) {
    /* Before anything initialises SQLite: collect its error log. */
    CHECK_EQ(sqlite3_config(SQLITE_CONFIG_LOG, log_cb, NULL), SQLITE_OK);
    ws_test_seed(20261203);
    snprintf(dir, sizeof dir, "%.3700s", ws_test_tmpdir());
    RUN(test_refused_pragmas);
    RUN(test_status);
    RUN(test_snapshot_pays);
    RUN(test_lag);
    RUN(test_copied);
    RUN(test_destination);
    RUN(test_rollback_db_switched);
    RUN(test_destination_long_path);
    return 0;
}
