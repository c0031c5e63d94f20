/*
** test_pipeline_snapload.c -- periodic snapshots under a saturating writer:
** they finish, and their work files stay within the database's size.
**
** A snapshot's position E is fixed when its copy of the database file ends;
** consumption must then reach it. A busy database restarts its WAL every
** few hundred frames, so consumption can pass through E's WAL inside one
** step; and the overlay (overlay.tmp) must keep one slot per page, not one
** per frame, or it grows with the write rate (ARCHITECTURE.md 3.3).
**
** One connection through walship (file:// store, ship interval 100 ms,
** snapshot interval 1 s; the page-bytes rule makes one due even sooner)
** commits single-row transactions back to back, as fast as it can: three in
** four update one row of a small table `hot` (the same pages, over and
** over), one in four appends a row to `t` (seq 1, 2, ...). The schedule is
** drawn from the test's seed, so the test knows every TXID's content. A
** thread polls the sizes of <spool>/overlay.tmp and <spool>/snap.tmp
** meanwhile. Checked:
**   1. a periodic snapshot made while the writer keeps writing reaches the
**      store while it still writes: one whose TXID is past the middle of
**      the first WRITE_MIN transactions is seen there before the writer
**      stops (it writes on until then, WRITE_MAX at most);
**   2. overlay.tmp never held more than the database's pages, and snap.tmp
**      plus overlay.tmp never more than twice the database (+ 1 MiB for
**      chunk framing), at the largest size the database reached;
**   3. one generation; the latest restore equals the primary; restores at
**      the TXIDs of the periodic snapshots taken during the writes pass
**      integrity_check and hold exactly that TXID's content (`t`'s rows, and
**      the sum of `hot`'s versions).
** Sizes and positions only: nothing here depends on how fast the machine is.
**
** ctest-labels: pipeline
** ctest-timeout: 300
*/
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "dbutil.h"
#include "harness.h"
#include "restore/catalog.h"
#include "store/store.h"
#include "walship.h"

#define HOT_ROWS 3000
#define WRITE_MIN 40000
#define WRITE_MAX 400000
#define CHECK_EVERY 1000 /* transactions between looks at the store */
#define MAX_CHECKED_SNAPS 8
#define FRAMING_SLACK ((int64_t)1 << 20)

static char path[4200], url[4200], out[4200], spool[4300];

/* The schedule: transaction i (1-based) appends to t when hot_id[i] == 0,
** else sets hot row hot_id[i] to version i. */
static uint16_t hot_id[WRITE_MAX + 1];

/* ---- the size poller ------------------------------------------------------- */
static atomic_int poll_stop;
static int64_t peak_overlay, peak_pair;
static long polls, polls_with_job;

static void *poll_sizes(void *arg) {
    (void)arg;
    char ov[4400], sn[4400];
    snprintf(ov, sizeof ov, "%s/overlay.tmp", spool);
    snprintf(sn, sizeof sn, "%s/snap.tmp", spool);
    while (!atomic_load(&poll_stop)) {
        int64_t o = db_file_size(ov), s = db_file_size(sn);
        if (o < 0) o = 0;
        if (s < 0) s = 0;
        if (o > peak_overlay) peak_overlay = o;
        if (o + s > peak_pair) peak_pair = o + s;
        polls++;
        if (o > 0 || s > 0) polls_with_job++;
        ws_sleep_ms(2); /* a sampling interval, not a wait for anything */
    }
    return NULL;
}

/* ---- the store ------------------------------------------------------------- */
/* The TXIDs of the store's snapshots (one generation), ascending; returns
** how many (at most max). */
static size_t store_snapshots(uint64_t *txids, size_t max) {
    store *st = NULL;
    wserr err = {0};
    catalog cat = {0};
    CHECK_OK(store_open(url, &st, &err), &err);
    CHECK_OK(catalog_load(st, &cat, &err), &err);
    CHECK_EQ(cat.ngens, 1);
    const cat_gen *g = &cat.gens[0];
    size_t n = 0;
    for (size_t i = 0; i < g->nsnaps && n < max; i++) {
        CHECK_EQ(g->snaps[i].state, CAT_OK);
        txids[n++] = g->snaps[i].txid;
    }
    catalog_free(&cat);
    store_free(st);
    return n;
}

/* ---- expected content ------------------------------------------------------- */
/* After the first k transactions: rows of t, and the sum of hot's versions. */
static void expected_after(uint64_t k, int64_t *rows, int64_t *ver_sum) {
    static uint32_t ver[HOT_ROWS + 1];
    memset(ver, 0, sizeof ver);
    *rows = 0;
    for (uint64_t i = 1; i <= k; i++) {
        if (hot_id[i] == 0)
            (*rows)++;
        else
            ver[hot_id[i]] = (uint32_t)i;
    }
    *ver_sum = 0;
    for (int r = 1; r <= HOT_ROWS; r++) *ver_sum += ver[r];
}

static void check_restore_at(uint64_t txid, uint64_t base_txid) {
    char msg[512];
    int rc = db_restore(url, out, 1, txid, 0, msg, sizeof msg);
    if (rc != 0) ws_test_fail(__FILE__, __LINE__, "restore --txid %" PRIu64 ": %s", txid, msg);
    sqlite3 *r = db_open_plain(out, 1);
    const char *ic = db_integrity(r);
    if (strcmp(ic, "ok") != 0)
        ws_test_fail(__FILE__, __LINE__, "restore at snapshot %" PRIu64 " is damaged: %s", txid, ic);
    int64_t rows, ver_sum;
    expected_after(txid - base_txid, &rows, &ver_sum);
    CHECK_EQ(db_int(r, "SELECT count(*) FROM t"), rows);
    CHECK_EQ(db_int(r, "SELECT coalesce(max(seq), 0) FROM t"), rows);
    CHECK_EQ(db_int(r, "SELECT sum(ver) FROM hot"), ver_sum);
    sqlite3_close(r);
}

int main(void) {
    ws_test_seed(8);
    const char *dir = ws_test_tmpdir();
    snprintf(path, sizeof path, "%s/app.db", dir);
    snprintf(out, sizeof out, "%s/r.db", dir);
    snprintf(url, sizeof url, "file://%s/store", dir);
    db_spool_dir(path, spool, sizeof spool);

    sqlite3 *db = db_open_walship(path, url,
                                  "walship_ship_interval=100ms&walship_snapshot_interval=1s");
    char sql[600];
    snprintf(sql, sizeof sql,
             "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
             "CREATE TABLE t(seq INTEGER PRIMARY KEY, v BLOB);"
             "CREATE TABLE hot(id INTEGER PRIMARY KEY, ver INTEGER, pad BLOB);"
             "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < %d) "
             "INSERT INTO hot SELECT i, 0, randomblob(300) FROM n;",
             HOT_ROWS);
    db_exec(db, sql);
    CHECK_EQ(walship_flush(path, 60000), 1);
    uint64_t first = 0, base_txid = 0;
    db_txid_range(url, &first, &base_txid);

    sqlite3_stmt *ins = NULL, *upd = NULL;
    CHECK_EQ(sqlite3_prepare_v2(db, "INSERT INTO t(seq, v) VALUES (?1, randomblob(100))", -1, &ins,
                                NULL),
             SQLITE_OK);
    CHECK_EQ(sqlite3_prepare_v2(db, "UPDATE hot SET ver = ?1, pad = randomblob(300) WHERE id = ?2",
                                -1, &upd, NULL),
             SQLITE_OK);
    pthread_t poller;
    CHECK_EQ(pthread_create(&poller, NULL, poll_sizes, NULL), 0);

    /* 1. Write until a snapshot from past the middle is in the store. */
    static uint64_t snaps[4096];
    uint64_t i = 0, rows = 0;
    int seen = 0;
    while (!seen) {
        if (i == WRITE_MAX)
            ws_test_fail(__FILE__, __LINE__,
                         "%d transactions written, and no periodic snapshot past TXID %" PRIu64
                         " is in the store",
                         WRITE_MAX, base_txid + WRITE_MIN / 2);
        i++;
        sqlite3_stmt *st;
        if (ws_test_rand_below(4) == 0) {
            hot_id[i] = 0;
            st = ins;
            sqlite3_bind_int64(ins, 1, (sqlite3_int64)++rows);
        } else {
            hot_id[i] = (uint16_t)(1 + ws_test_rand_below(HOT_ROWS));
            st = upd;
            sqlite3_bind_int64(upd, 1, (sqlite3_int64)i);
            sqlite3_bind_int64(upd, 2, hot_id[i]);
        }
        CHECK_EQ(sqlite3_step(st), SQLITE_DONE);
        sqlite3_reset(st);
        if (i >= WRITE_MIN && i % CHECK_EVERY == 0) {
            size_t n = store_snapshots(snaps, sizeof snaps / sizeof snaps[0]);
            seen = n > 0 && snaps[n - 1] > base_txid + WRITE_MIN / 2;
        }
    }
    atomic_store(&poll_stop, 1);
    pthread_join(poller, NULL);
    sqlite3_finalize(ins);
    sqlite3_finalize(upd);
    int64_t db_bytes = db_int(db, "PRAGMA page_count") * db_int(db, "PRAGMA page_size");
    fprintf(stderr,
            "%" PRIu64 " transactions; database %" PRId64 " bytes; peaks: overlay.tmp %" PRId64
            ", snap.tmp + overlay.tmp %" PRId64 " (%ld of %ld polls saw a snapshot at work)\n",
            i, db_bytes, peak_overlay, peak_pair, polls_with_job, polls);

    /* 2. The work files stayed within the database's size. */
    if (peak_overlay > db_bytes)
        ws_test_fail(__FILE__, __LINE__, "overlay.tmp reached %" PRId64 " bytes, database %" PRId64,
                     peak_overlay, db_bytes);
    if (peak_pair > 2 * db_bytes + FRAMING_SLACK)
        ws_test_fail(__FILE__, __LINE__,
                     "snap.tmp + overlay.tmp reached %" PRId64 " bytes, database %" PRId64,
                     peak_pair, db_bytes);

    /* 3. Restores: latest, and at the periodic snapshots of the writes. */
    CHECK_EQ(walship_flush(path, 60000), 1);
    db_check_latest_restore(path, url, out, rows, "latest after the writes");
    size_t n = store_snapshots(snaps, sizeof snaps / sizeof snaps[0]);
    size_t during = 0;
    for (size_t k = 0; k < n; k++) during += snaps[k] > base_txid;
    CHECK(during >= 1);
    size_t step = during > MAX_CHECKED_SNAPS ? during / MAX_CHECKED_SNAPS : 1;
    for (size_t k = n - during; k < n; k += step) check_restore_at(snaps[k], base_txid);
    check_restore_at(snaps[n - 1], base_txid);
    fprintf(stderr, "%zu periodic snapshots during the writes; restores at %zu checked\n", during,
            (during + step - 1) / step + 1);
    sqlite3_close(db);
    return 0;
}
