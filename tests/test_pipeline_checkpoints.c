/*
** test_pipeline_checkpoints.c -- every way SQLite checkpoints, restarts,
** truncates and deletes its WAL, while nothing ships, then a drain.
**
** A first generation is shipped normally. Then the test process takes the
** shipper election lock (byte 1 of <spool>/ctl) itself, so no process is elected and
** every commit stays in the WAL or in the spool, and runs a random workload
** through the walship VFS with, between transactions:
**   - PASSIVE, FULL, RESTART and TRUNCATE checkpoints (sqlite3_wal_checkpoint_v2);
**   - wal_autocheckpoint set small (1, 4, 16 pages) or off;
**   - journal_size_limit (-1, 0, 4 KiB, 64 KiB);
**   - a second connection that opens, writes and closes;
**   - closing the last connection (checkpoint and delete of the WAL), with and
**     without SQLITE_FCNTL_PERSIST_WAL;
**   - a tiny page cache, so big transactions spill frames early.
** Checked while paused: no checkpoint is refused or left incomplete (shipping
** never blocks a checkpoint), the WAL is 0 bytes after every TRUNCATE
** checkpoint (shipping never makes the WAL grow), the WAL restarts many times,
** and walship_flush times out (nothing can ship).
** Then the lock is released and everything must drain. Every transaction
** bumps meta.seq and the test recorded a content hash for every seq:
**   - latest restore equals the primary byte for byte (after TRUNCATE);
**   - one TXID per commit: the generation's first snapshot is stored before
**     the first commit, so it is seq 0 and TXID first + s is seq s;
**   - restores at random TXIDs, and at the TXIDs just before and after
**     sampled WAL events, give exactly seq = txid - offset with that seq's
**     recorded content.
** The paused phase ends on a TRUNCATE checkpoint with no commit after it, so
** the spool's last records are copied frames and a WAL end.
**
** ctest-labels: pipeline
** ctest-timeout: 300
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

#define MAX_STATES 4096

static uint64_t hashes[MAX_STATES]; /* content hash after seq = index */
static int64_t seq_now;              /* the primary's meta.seq */
static char path[4200], url[4200], wal[4300], spooldir[4300], out[4200];

static void note_state(sqlite3 *db) {
    int64_t s = db_int(db, "SELECT seq FROM meta");
    CHECK_EQ(s, seq_now);
    CHECK(s < MAX_STATES);
    hashes[s] = db_content_hash(db);
}

/* One transaction: a few random changes plus meta.seq + 1. */
static void random_txn(sqlite3 *db) {
    char sql[512];
    db_exec(db, "BEGIN IMMEDIATE");
    int nops = 1 + (int)ws_test_rand_below(4);
    for (int k = 0; k < nops; k++) {
        uint64_t r = ws_test_rand_below(100);
        if (r < 45) {
            /* small rows, or now and then one larger than the whole cache */
            int len = ws_test_rand_below(12) == 0 ? 20000 + (int)ws_test_rand_below(60000)
                                                  : (int)ws_test_rand_below(900);
            snprintf(sql, sizeof sql, "INSERT INTO t(v, w) VALUES (randomblob(%d), hex(randomblob(%d)))",
                     len, (int)ws_test_rand_below(40));
        } else if (r < 70) {
            snprintf(sql, sizeof sql, "UPDATE t SET v = randomblob(%d) WHERE k %% 5 = %d",
                     (int)ws_test_rand_below(600), (int)ws_test_rand_below(5));
        } else if (r < 85) {
            snprintf(sql, sizeof sql, "DELETE FROM t WHERE k %% 7 = %d", (int)ws_test_rand_below(7));
        } else {
            int x = (int)ws_test_rand_below(3);
            snprintf(sql, sizeof sql,
                     "CREATE TABLE IF NOT EXISTS x%d(a); INSERT INTO x%d VALUES (randomblob(%d))",
                     x, x, (int)ws_test_rand_below(3000));
        }
        db_exec(db, sql);
    }
    db_exec(db, "UPDATE meta SET seq = seq + 1");
    db_exec(db, "COMMIT");
    seq_now++;
}

/* The salts of the WAL file now (0 if there is none or it is empty). */
static uint64_t wal_salts(void) {
    FILE *f = fopen(wal, "rb");
    if (f == NULL) return 0;
    uint8_t h[32];
    size_t n = fread(h, 1, sizeof h, f);
    fclose(f);
    if (n < 32) return 0;
    return ws_get_be64(h + 16);
}

static sqlite3 *open_app(void) {
    sqlite3 *db = db_open_walship(path, url, "walship_ship_interval=0");
    db_exec(db, "PRAGMA cache_size=8");
    return db;
}

static void restore_check(uint64_t txid, int64_t want_seq) {
    char msg[512];
    int rc = db_restore(url, out, 1, txid, 0, msg, sizeof msg);
    if (rc != 0) ws_test_fail(__FILE__, __LINE__, "restore --txid %" PRIu64 ": %s", txid, msg);
    sqlite3 *r = db_open_plain(out, 1);
    int64_t seq = db_int(r, "SELECT seq FROM meta");
    if (seq != want_seq)
        ws_test_fail(__FILE__, __LINE__,
                     "restore at TXID %" PRIu64 " shows seq %" PRId64 ", expected %" PRId64, txid,
                     seq, want_seq);
    if (db_content_hash(r) != hashes[seq])
        ws_test_fail(__FILE__, __LINE__, "restore at TXID %" PRIu64 " (seq %" PRId64
                                         ") is not the state the primary had",
                     txid, seq);
    sqlite3_close(r);
}

int main(void) {
    ws_test_seed(20261127);
    const char *dir = ws_test_tmpdir();
    snprintf(path, sizeof path, "%s/app.db", dir);
    snprintf(url, sizeof url, "file://%s/store", dir);
    snprintf(wal, sizeof wal, "%s-wal", path);
    snprintf(out, sizeof out, "%s/restored.db", dir);
    db_spool_dir(path, spooldir, sizeof spooldir);

    sqlite3 *plain = db_open_plain(path, 0);
    db_exec(plain, "PRAGMA page_size=1024; PRAGMA journal_mode=WAL;"
                   "CREATE TABLE meta(seq INTEGER); INSERT INTO meta VALUES (0);"
                   "CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB, w TEXT);");
    sqlite3_close(plain);

    /* Phase 1: a generation shipped the normal way. Its first snapshot is
    ** in the store before the first commit, so it holds seq 0, and (one
    ** TXID per commit) TXID = seq + that snapshot's TXID. */
    sqlite3 *db = open_app();
    note_state(db);
    int64_t deadline = ws_mono_ms() + 60000;
    while (db_generation_count(url) == 0) {
        if (ws_mono_ms() > deadline)
            ws_test_fail(__FILE__, __LINE__, "no snapshot reached the store in 60 s");
        ws_sleep_ms(10); /* polling the store, with a deadline */
    }
    uint64_t first0, last0;
    db_txid_range(url, &first0, &last0);
    CHECK_U64_EQ(last0, first0);
    const int64_t offset = (int64_t)first0; /* txid = seq + offset inside the generation */
    for (int i = 0; i < 20; i++) {
        random_txn(db);
        note_state(db);
    }
    CHECK_EQ(walship_flush(path, 60000), 1);
    sqlite3_close(db);
    const int64_t seq1 = seq_now;

    /* Once this process's shipper retires it lets go of the election lock. */
    int lockfd = db_hold_ship_lock(spooldir, 60000);
    if (lockfd < 0) ws_test_fail(__FILE__, __LINE__, "the shipper never released the election lock of %s", spooldir);
    uint64_t first1, last1;
    db_txid_range(url, &first1, &last1);
    CHECK_U64_EQ(first1, first0);
    CHECK_EQ((int64_t)last1, seq1 + offset);
    restore_check(first1, 0);
    restore_check(last1, seq1);
    fprintf(stderr, "phase 1: txids %" PRIu64 "..%" PRIu64 ", seq %" PRId64 "\n", first1, last1,
            seq1);

    /* Phase 2: paused. */
    db = open_app();
    sqlite3 *second = NULL;
    int nckpt[4] = {0}, ntrunc0 = 0, ncloses = 0, npersist = 0, nflush_timeouts = 0;
    int restarts = 0;
    uint64_t salts = wal_salts();
    int64_t event_seq[512];
    int nevents = 0;
    const int ntx = 360;
    for (int i = 0; i < ntx; i++) {
        sqlite3 *w = second && ws_test_rand_below(4) == 0 ? second : db;
        random_txn(w);
        note_state(db);
        uint64_t s = wal_salts();
        if (s != 0 && s != salts) restarts++;
        if (s != 0) salts = s;

        uint64_t r = ws_test_rand_below(100);
        int event = 1;
        if (r < 20) {
            static const int modes[] = {SQLITE_CHECKPOINT_PASSIVE, SQLITE_CHECKPOINT_FULL,
                                        SQLITE_CHECKPOINT_RESTART, SQLITE_CHECKPOINT_TRUNCATE};
            int m = (int)ws_test_rand_below(4);
            int nlog = -1, nck = -1;
            int rc = sqlite3_wal_checkpoint_v2(db, "main", modes[m], &nlog, &nck);
            if (rc != SQLITE_OK)
                ws_test_fail(__FILE__, __LINE__, "checkpoint mode %d failed: %s", m,
                             sqlite3_errmsg(db));
            /* Nobody reads: every mode gets everything into the database. */
            CHECK_EQ(nlog, nck);
            nckpt[m]++;
            if (modes[m] == SQLITE_CHECKPOINT_TRUNCATE) {
                CHECK_EQ(nlog, 0);
                int64_t sz = db_file_size(wal);
                if (sz != 0)
                    ws_test_fail(__FILE__, __LINE__,
                                 "WAL is %" PRId64 " bytes after a TRUNCATE checkpoint", sz);
                ntrunc0++;
            }
        } else if (r < 26) {
            static const int sizes[] = {0, 1, 4, 16, 1000};
            char sql[64];
            snprintf(sql, sizeof sql, "PRAGMA wal_autocheckpoint=%d", sizes[ws_test_rand_below(5)]);
            db_exec(db, sql);
        } else if (r < 31) {
            static const int limits[] = {-1, 0, 4096, 65536};
            char sql[64];
            snprintf(sql, sizeof sql, "PRAGMA journal_size_limit=%d", limits[ws_test_rand_below(4)]);
            db_exec(db, sql);
            if (second) db_exec(second, sql);
        } else if (r < 36) {
            if (second) {
                sqlite3_close(second);
                second = NULL;
            } else {
                second = open_app();
            }
        } else if (r < 42) {
            /* Close the last connection: checkpoint, then delete the WAL (or
            ** keep it with PERSIST_WAL). */
            if (second) {
                sqlite3_close(second);
                second = NULL;
            }
            int persist = ws_test_rand_below(3) == 0;
            int64_t limit = db_int(db, "PRAGMA journal_size_limit");
            if (persist) {
                int one = 1;
                CHECK_EQ(sqlite3_file_control(db, "main", SQLITE_FCNTL_PERSIST_WAL, &one), SQLITE_OK);
                npersist++;
            }
            CHECK_EQ(sqlite3_close(db), SQLITE_OK);
            ncloses++;
            int64_t sz = db_file_size(wal);
            if (!persist && sz != -1)
                ws_test_fail(__FILE__, __LINE__, "the WAL survived the last close (%" PRId64 " bytes)", sz);
            if (persist && limit >= 0 && sz != 0)
                ws_test_fail(__FILE__, __LINE__,
                             "PERSIST_WAL with journal_size_limit=%" PRId64
                             ": WAL is %" PRId64 " bytes after the last close", limit, sz);
            db = open_app();
        } else if (r < 44) {
            /* Nothing can ship while the lock is held. */
            CHECK_EQ(walship_flush(path, 50), 0);
            nflush_timeouts++;
        } else {
            event = 0;
        }
        if (event && nevents < 512) event_seq[nevents++] = seq_now;
    }
    if (second) sqlite3_close(second);
    /* End on a TRUNCATE checkpoint with no commit after it: the spool's last
    ** records are then the copied frames and the WAL's end. */
    db_exec(db, "PRAGMA wal_checkpoint(TRUNCATE)");
    CHECK_EQ(db_file_size(wal), 0);
    fprintf(stderr,
            "paused phase: %d transactions, checkpoints P/F/R/T %d/%d/%d/%d, %d WAL restarts, "
            "%d last closes (%d with PERSIST_WAL)\n",
            ntx, nckpt[0], nckpt[1], nckpt[2], nckpt[3], restarts, ncloses, npersist);
    CHECK(nckpt[0] > 0 && nckpt[1] > 0 && nckpt[2] > 0 && nckpt[3] > 0);
    CHECK(ntrunc0 > 0);
    CHECK(restarts >= 20);
    CHECK(ncloses >= 5 && npersist >= 1);
    CHECK(nflush_timeouts >= 1);
    /* Still nothing shipped: the store ends where phase 1 did. */
    {
        uint64_t f, l;
        db_txid_range(url, &f, &l);
        CHECK_U64_EQ(l, last1);
    }

    /* Unpause and drain. */
    close(lockfd);
    int fl = walship_flush(path, 120000);
    if (fl != 1) {
        char *js = db_status_json(db);
        ws_test_fail(__FILE__, __LINE__, "walship_flush after the pause returned %d; status %s", fl, js);
    }
    db_exec(db, "PRAGMA wal_checkpoint(TRUNCATE)");
    CHECK_EQ(db_file_size(wal), 0);
    char msg[512];
    if (db_restore(url, out, 0, 0, 0, msg, sizeof msg) != 0)
        ws_test_fail(__FILE__, __LINE__, "restore latest: %s", msg);
    if (!files_equal(path, out))
        ws_test_fail(__FILE__, __LINE__, "restored %s differs from the primary %s", out, path);
    CHECK_EQ(db_generation_count(url), 1);

    /* One TXID per commit, no more, no fewer. */
    uint64_t first, last;
    db_txid_range(url, &first, &last);
    fprintf(stderr, "after drain: txids %" PRIu64 "..%" PRIu64 ", seq %" PRId64 "\n", first, last,
            seq_now);
    CHECK_EQ((int64_t)last, seq_now + offset);

    /* Intermediate states: around every WAL event, and random ones. */
    int checked = 0;
    for (int e = 0; e < nevents; e += 1 + (int)ws_test_rand_below(4)) {
        int64_t s = event_seq[e];
        for (int64_t d = 0; d <= 1; d++) {
            int64_t q = s + d;
            if (q < seq1 || q > seq_now) continue;
            restore_check((uint64_t)(q + offset), q);
            checked++;
        }
    }
    for (int k = 0; k < 20; k++) {
        int64_t q = seq1 + (int64_t)ws_test_rand_below((uint64_t)(seq_now - seq1 + 1));
        restore_check((uint64_t)(q + offset), q);
        checked++;
    }
    fprintf(stderr, "%d intermediate restores checked\n", checked);
    sqlite3_close(db);
    return 0;
}
