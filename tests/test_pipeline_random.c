/*
** test_pipeline_random.c -- randomised workloads through the walship VFS,
** then restores of the latest state and of random TXIDs and times.
**
** Each workload mixes inserts, updates, deletes, schema changes, large
** blobs (overflow chains), VACUUM (the database shrinks) and checkpoints of
** every mode, at page sizes 512, 4096 and 65536. Every transaction also bumps
** meta.seq, so a restored database says which primary state it claims to be.
** The test waits for the generation's first snapshot before the first
** commit, then records for every commit (VACUUM is one too) the state it
** left -- seq and content hash -- and the wall-clock interval around it.
** Nothing below is read back from the code under test as an expectation:
**   - latest: byte-for-byte equal to the primary after a TRUNCATE checkpoint;
**   - TXIDs: the store holds one generation of exactly one TXID per commit
**     (last - first = commits), and TXID first + c restores exactly commit
**     c's state (first, last and 22 random ones);
**   - times: a moment T between the end of commit c and the start of the
**     next (the test keeps one free millisecond there) restores exactly
**     commit c (the first, the last and 22 random ones);
**     a moment before the database was first opened through walship is
**     NOTFOUND.
**
** ctest-labels: pipeline s3
** ctest-timeout: 600
*/
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "commitlog.h"
#include "common/util.h"
#include "dbutil.h"
#include "harness.h"
#include "walship.h"

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

    /* Nothing of this database can be restored as of a moment before it was
    ** first opened through walship. */
    int64_t t_unshipped = ws_now_ms() - 1;
    sqlite3 *db = db_open_walship(path, url, "walship_ship_interval=50ms");
    CHECK_EQ(db_int(db, "PRAGMA page_size"), pgsz);
    /* The generation's first snapshot is stored before the first commit, so
    ** it holds state 0, and the generation's first TXID is commit 0. */
    int64_t deadline = ws_mono_ms() + 60000;
    while (db_generation_count(url) == 0) {
        if (ws_mono_ms() > deadline)
            ws_test_fail(__FILE__, __LINE__, "no snapshot of %s reached the store in 60 s", path);
        ws_sleep_ms(10); /* polling the store, with a deadline */
    }
    /* ntx transactions and at most one VACUUM after each */
    commit_rec *commits = calloc(2 * (size_t)ntx + 1, sizeof *commits);
    CHECK(commits != NULL);
    int nc = 0; /* the last commit */
    commits[0].hash = db_content_hash(db);
    commits[0].t_before = commits[0].t_after = ws_now_ms();
    cl_after_ms(commits[0].t_after);
    for (int i = 1; i <= ntx; i++) {
        commit_rec *c = &commits[++nc];
        c->t_before = ws_now_ms();
        random_txn(db, pgsz, i);
        c->t_after = ws_now_ms();
        cl_after_ms(c->t_after);
        c->seq = db_int(db, "SELECT seq FROM meta");
        CHECK_EQ(c->seq, i);
        c->hash = db_content_hash(db);
        uint64_t r = ws_test_rand_below(100);
        if (r < 3) {
            static const char *const modes[] = {"PASSIVE", "FULL", "RESTART", "TRUNCATE"};
            snprintf(sql, sizeof sql, "PRAGMA wal_checkpoint(%s)", modes[ws_test_rand_below(4)]);
            db_exec(db, sql);
        } else if (r < 4) {
            /* VACUUM rewrites every page (the file shrinks after deletes)
            ** in one commit of its own that keeps the content. */
            commit_rec *v = &commits[++nc];
            v->t_before = ws_now_ms();
            db_exec(db, "VACUUM");
            v->t_after = ws_now_ms();
            cl_after_ms(v->t_after);
            v->seq = i;
            v->hash = db_content_hash(db);
            CHECK_U64_EQ(v->hash, c->hash);
        } else if (r < 5) {
            /* close and reopen: the last connection checkpoints and deletes the WAL */
            CHECK_EQ(walship_flush(path, 60000), 1);
            sqlite3_close(db);
            db = db_open_walship(path, url, "walship_ship_interval=50ms");
        }
    }
    CHECK_EQ(walship_flush(path, 120000), 1);
    db_exec(db, "PRAGMA wal_checkpoint(TRUNCATE)");
    int64_t t_end = ws_now_ms();

    /* Latest: byte for byte. */
    char msg[512];
    CHECK_EQ(db_restore(url, out, 0, 0, 0, msg, sizeof msg), 0);
    if (!files_equal(path, out))
        ws_test_fail(__FILE__, __LINE__, "restored %s differs from the primary %s", out, path);

    /* TXIDs: one generation whose TXIDs are the commits 0..nc, in order, so
    ** TXID first + c is exactly commit c. The first, the last and random
    ** ones between. */
    CHECK_EQ(db_generation_count(url), 1);
    uint64_t first, last;
    db_txid_range(url, &first, &last);
    fprintf(stderr, "  txids %" PRIu64 "..%" PRIu64 " for commits 0..%d\n", first, last, nc);
    CHECK_EQ(last - first, (uint64_t)nc);
    for (int k = 0; k < 24; k++) {
        int c = k == 0 ? 0 : k == 1 ? nc : (int)ws_test_rand_below((uint64_t)nc + 1);
        cl_expect_commit(url, out, 1, first + (uint64_t)c, 0, commits, c);
    }

    /* Times: a moment T between the end of commit c and the start of the
    ** next one has exactly one answer, commit c (every commit that ended by
    ** T is in, none that began after T). */
    for (int k = 0; k < 24; k++) {
        int c = k == 0 ? 0 : k == 1 ? nc : (int)ws_test_rand_below((uint64_t)nc + 1);
        int64_t t = commits[c].t_after;
        CHECK(t < (c < nc ? commits[c + 1].t_before : t_end + 1)); /* cl_after_ms() */
        cl_expect_commit(url, out, 2, 0, t, commits, c);
    }
    int rc = db_restore(url, out, 2, 0, t_unshipped, msg, sizeof msg);
    if (rc != WALSHIP_ERR_NOTFOUND)
        ws_test_fail(__FILE__, __LINE__,
                     "restore --time %" PRId64 " (before the first snapshot) returned %d, not "
                     "NOTFOUND: %s",
                     t_unshipped, rc, msg);
    sqlite3_close(db);
    free(commits);
}

int main(void) {
    ws_test_seed(20261126);
    run("p4096", 4096, 400, NULL);
    run("p512", 512, 250, NULL);
    run("p65536", 65536, 120, NULL);
    /* The same through a real S3 server (Ceph RGW under scripts/test). */
    if (ws_test_s3_configured()) run("s3", 4096, 150, ws_test_s3_url("random"));
    return 0;
}
