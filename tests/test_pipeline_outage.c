/*
** test_pipeline_outage.c -- the store goes away and comes back; the
** application never notices.
**
** The database ships to the test S3 server (Ceph RGW) through the fault
** proxy (tests/faultproxy.h), with short S3 timeouts. While the proxy
** refuses connections (a stopped server) and then accepts and never
** answers (a hung one), the application keeps writing, checkpointing
** (TRUNCATE) and reopening its connection:
**   - every statement succeeds; the WAL is 0 bytes after each TRUNCATE;
**   - PRAGMA walship_status shows a last_error and a lag_ms that grows;
**   - walship_flush times out (0) instead of claiming success.
** Then the proxy passes traffic again:
**   - walship_flush returns 1, last_error clears, shipped_txid = txid;
**   - one generation, one TXID per commit;
**   - latest restore (straight from the server) equals the primary byte
**     for byte, and restores at sampled TXIDs show the right commit.
**
** The status is read (PRAGMA walship_status, from this thread) while the
** shipper works in its own: the TSan tree runs this test too (a status
** reader once shared the shipper's open log file descriptor: the shipper
** then read a directory, or someone else's file).
**
** ctest-labels: pipeline s3 threads
** ctest-timeout: 300
*/
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "dbutil.h"
#include "faultproxy.h"
#include "harness.h"
#include "walship.h"

static char path[4200], wal[4300], out[4200];
static char url_direct[4096], url_proxy[4096];
static int64_t seq_now;

/* Builds url_proxy from url_direct with the endpoint's host:port replaced
** by 127.0.0.1:<port>; returns the endpoint's host and port. */
static void proxied_url(const char *direct, int port, char *host, size_t hostlen, int *tport) {
    const char *e = strstr(direct, "endpoint=http://");
    if (e == NULL)
        ws_test_fail(__FILE__, __LINE__, "WALSHIP_TEST_S3_URL has no endpoint=http://HOST:PORT: %s",
                     direct);
    const char *h = e + strlen("endpoint=http://");
    const char *colon = strchr(h, ':');
    if (colon == NULL || (size_t)(colon - h) >= hostlen)
        ws_test_fail(__FILE__, __LINE__, "no port in the endpoint of %s", direct);
    snprintf(host, hostlen, "%.*s", (int)(colon - h), h);
    char *end;
    *tport = (int)strtol(colon + 1, &end, 10);
    snprintf(url_proxy, sizeof url_proxy, "%.*s127.0.0.1:%d%s", (int)(h - direct), direct, port, end);
}

static void txn(sqlite3 *db) {
    char sql[256];
    snprintf(sql, sizeof sql,
             "BEGIN; INSERT INTO t(v) VALUES (randomblob(%d)); UPDATE meta SET seq = seq + 1; COMMIT",
             (int)ws_test_rand_below(ws_test_rand_below(10) ? 500 : 12000));
    char *err = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &err);
    if (rc != SQLITE_OK)
        ws_test_fail(__FILE__, __LINE__, "a write failed during the outage (%d): %s", rc,
                     err ? err : "?");
    seq_now++;
}

static void status(sqlite3 *db, char *err, size_t errlen, int64_t *lag, int64_t *txid,
                   int64_t *shipped) {
    char *js = db_status_json(db);
    db_json_text(js, "last_error", err, errlen);
    *lag = db_json_int(js, "lag_ms");
    *txid = db_json_int(js, "txid");
    *shipped = db_json_int(js, "shipped_txid");
    free(js);
}

static char last_err[512]; /* the error the previous outage left in the status */

/* Writes (and checkpoints, and reopens) through an outage until the status
** shows an error from this outage, and then until lag_ms has grown past the
** value seen then. */

static sqlite3 *write_through_outage(sqlite3 *db, faultproxy *fp, int refused, const char *what) {
    uint64_t conns0 = fp_connections(fp);
    int64_t deadline = ws_mono_ms() + 120000;
    int64_t lag0 = -1, lag = 0, txid, shipped;
    char err[512] = "";
    int n = 0, truncs = 0;
    for (;;) {
        txn(db);
        n++;
        if (n % 25 == 0) {
            CHECK_EQ(sqlite3_wal_checkpoint_v2(db, "main", SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL),
                     SQLITE_OK);
            CHECK_EQ(db_file_size(wal), 0);
            truncs++;
        }
        if (n == 60) {
            CHECK_EQ(sqlite3_close(db), SQLITE_OK);
            db = db_open_walship(path, url_proxy, "walship_ship_interval=50ms");
        }
        status(db, err, sizeof err, &lag, &txid, &shipped);
        /* The shipper must have tried the store since the mode changed
        ** (a refused connection never reaches the proxy). */
        int tried = refused || fp_connections(fp) > conns0;
        /* An error from this outage: not the one the last outage left. */
        if (lag0 < 0 && err[0] && strcmp(err, last_err) != 0 && tried && n >= 30) lag0 = lag;
        if (lag0 >= 0 && lag > lag0 && n >= 80) break;
        if (ws_mono_ms() > deadline)
            ws_test_fail(__FILE__, __LINE__,
                         "%s: after %d writes the status shows last_error \"%s\", lag_ms %" PRId64
                         " (first %" PRId64 ")",
                         what, n, err, lag, lag0);
        ws_sleep_ms(5); /* pacing the workload, not synchronisation */
    }
    CHECK(err[0] != '\0');
    snprintf(last_err, sizeof last_err, "%s", err);
    CHECK(shipped < txid);
    CHECK_EQ(walship_flush(path, 200), 0);
    fprintf(stderr, "%s: %d writes, %d TRUNCATE checkpoints, lag %" PRId64 " ms, error: %s\n", what,
            n, truncs, lag, err);
    return db;
}

int main(void) {
    ws_test_seed(20261130);
    snprintf(url_direct, sizeof url_direct, "%s", ws_test_s3_url("outage"));
    setenv("WALSHIP_S3_TIMEOUT_MS", "1000", 1);
    setenv("WALSHIP_S3_CONNECT_TIMEOUT_MS", "500", 1);
    setenv("WALSHIP_S3_RETRIES", "2", 1);
    char host[256];
    int tport = 0;
    proxied_url(url_direct, 0, host, sizeof host, &tport);
    faultproxy *fp = fp_start(host, tport);
    CHECK(fp != NULL);
    proxied_url(url_direct, fp_port(fp), host, sizeof host, &tport);
    fprintf(stderr, "store %s\nthrough the proxy: %s\n", url_direct, url_proxy);

    const char *dir = ws_test_tmpdir();
    snprintf(path, sizeof path, "%s/app.db", dir);
    snprintf(wal, sizeof wal, "%s-wal", path);
    snprintf(out, sizeof out, "%s/restored.db", dir);
    sqlite3 *plain = db_open_plain(path, 0);
    db_exec(plain, "PRAGMA journal_mode=WAL; CREATE TABLE meta(seq INTEGER); INSERT INTO meta VALUES (0);"
                   "CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB);");
    sqlite3_close(plain);

    sqlite3 *db = db_open_walship(path, url_proxy, "walship_ship_interval=50ms");
    for (int i = 0; i < 20; i++) txn(db);
    CHECK_EQ(walship_flush(path, 60000), 1);
    char err[512];
    int64_t lag, txid, shipped;
    status(db, err, sizeof err, &lag, &txid, &shipped);
    CHECK_STREQ(err, "");
    CHECK_EQ(shipped, txid);
    const int64_t base_txid = txid, base_seq = seq_now;

    /* The server is stopped: connections are refused. */
    CHECK_EQ(fp_set_mode(fp, FP_REFUSE), 0);
    db = write_through_outage(db, fp, 1, "refused");

    /* The server hangs: connections are accepted and never answered. */
    CHECK_EQ(fp_set_mode(fp, FP_BLACKHOLE), 0);
    db = write_through_outage(db, fp, 0, "blackholed");

    /* Back: everything ships. */
    CHECK_EQ(fp_set_mode(fp, FP_PASS), 0);
    int fl = walship_flush(path, 120000);
    if (fl != 1) {
        char *js = db_status_json(db);
        ws_test_fail(__FILE__, __LINE__, "walship_flush after the outage returned %d; status %s", fl, js);
    }
    int64_t deadline = ws_mono_ms() + 30000;
    for (;;) {
        status(db, err, sizeof err, &lag, &txid, &shipped);
        if (err[0] == '\0' && shipped == txid) break;
        if (ws_mono_ms() > deadline)
            ws_test_fail(__FILE__, __LINE__, "status still shows \"%s\", shipped %" PRId64 " of %" PRId64,
                         err, shipped, txid);
        ws_sleep_ms(20); /* polling the status */
    }
    /* One TXID per commit: nothing lost or doubled across the outage. */
    CHECK_EQ(txid - base_txid, seq_now - base_seq);

    db_exec(db, "PRAGMA wal_checkpoint(TRUNCATE)");
    char msg[512];
    if (db_restore(url_direct, out, 0, 0, 0, msg, sizeof msg) != 0)
        ws_test_fail(__FILE__, __LINE__, "restore latest: %s", msg);
    if (!files_equal(path, out))
        ws_test_fail(__FILE__, __LINE__, "restored %s differs from the primary %s", out, path);
    CHECK_EQ(db_generation_count(url_direct), 1);
    uint64_t first, last;
    db_txid_range(url_direct, &first, &last);
    CHECK_EQ((int64_t)last, txid);
    for (int k = 0; k < 6; k++) {
        uint64_t t = first + ws_test_rand_below(last - first + 1);
        if (db_restore(url_direct, out, 1, t, 0, msg, sizeof msg) != 0)
            ws_test_fail(__FILE__, __LINE__, "restore --txid %" PRIu64 ": %s", t, msg);
        sqlite3 *r = db_open_plain(out, 1);
        CHECK_EQ(db_int(r, "SELECT seq FROM meta"), seq_now - ((int64_t)last - (int64_t)t));
        CHECK_EQ(db_int(r, "SELECT count(*) FROM t"), db_int(r, "SELECT seq FROM meta"));
        sqlite3_close(r);
    }
    sqlite3_close(db);
    fp_stop(fp);
    return 0;
}
