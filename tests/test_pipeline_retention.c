/*
** test_pipeline_retention.c -- retention keeps exactly what a restore inside
** the window needs, and deletes what no such restore needs.
**
** A database ships with a 4 s retention window and a snapshot every second
** while it is written (every transaction bumps meta.seq). The test waits for
** the generation's first snapshot before the first commit, so TXID t0 (that
** snapshot) is commit 0 and TXID t0 + c is commit c; for every commit it
** records the content hash and the wall-clock interval around it, keeping a
** free millisecond after each (so the moment a commit ended belongs to it
** alone). It lists the store about every 100 ms while writing. Once 6 s have
** passed and a listing shows that retention deleted something, it closes the
** database and takes the shipper election lock itself: from that moment
** (X) nothing ships and nothing is deleted, so every retention run happened
** before X and its window began before X - 4 s. Then:
**   - kept: every moment of the window [X - 4 s, X], sampled from its oldest
**     to its newest end (12 points), restores exactly the commit that had
**     ended by then; so does the oldest snapshot kept (a state older than the
**     window that the window's start needs), by TXID and by time; the last
**     TXID is t0 + the number of commits (nothing was lost);
**   - gone: the commit before the oldest snapshot kept is NOTFOUND by TXID
**     and by time; no segment ends at or before that snapshot; and of the
**     snapshots older than the window of the run that did the observed
**     deletion (its start is bounded by the listing before it), at most one
**     -- the base it kept -- is left.
** A window cut short fails "kept" at the window's oldest end; one kept too
** long fails "gone".
**
** ctest-labels: pipeline
** ctest-timeout: 180
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
#include "restore/catalog.h"
#include "walship.h"

#define MAXTX 40000
#define WINDOW_MS 4000
#define MAXSNAPS 256

static commit_rec commits[MAXTX];

/* The store's one generation: its snapshots (TXID, upload time) and the
** lowest last TXID among its segments. */
typedef struct store_view {
    size_t nsnaps;
    uint64_t snap_txid[MAXSNAPS];
    int64_t snap_mtime[MAXSNAPS];
    uint64_t min_seg_last; /* UINT64_MAX without segments */
    uint64_t last_txid;
} store_view;

static void load_view(const char *url, store_view *v) {
    store *st = NULL;
    wserr err = {0};
    catalog cat = {0};
    CHECK_OK(store_open(url, &st, &err), &err);
    CHECK_OK(catalog_load(st, &cat, &err), &err);
    memset(v, 0, sizeof *v);
    v->min_seg_last = UINT64_MAX;
    CHECK_EQ(cat.ngens, 1);
    const cat_gen *g = &cat.gens[0];
    CHECK(g->nsnaps >= 1 && g->nsnaps <= MAXSNAPS);
    for (size_t i = 0; i < g->nsnaps; i++) {
        v->snap_txid[i] = g->snaps[i].txid;
        v->snap_mtime[i] = g->snaps[i].mtime_ms;
        CHECK(i == 0 || v->snap_txid[i] > v->snap_txid[i - 1]);
    }
    v->nsnaps = g->nsnaps;
    for (size_t i = 0; i < g->nsegs; i++)
        if (g->segs[i].last < v->min_seg_last) v->min_seg_last = g->segs[i].last;
    v->last_txid = cat_gen_last_txid(g);
    catalog_free(&cat);
    store_free(st);
}

static char path[4200], url[4200], out[4200];

/* Restores at TXID txid (kind 1) or time t (kind 2): exactly commit c. */
static void expect_commit(int kind, uint64_t txid, int64_t t, int c) {
    cl_expect_commit(url, out, kind, txid, t, commits, c);
}

/* Restores at TXID txid (kind 1) or time t (kind 2) and checks that the
** store no longer has it. */
static void expect_gone(int kind, uint64_t txid, int64_t t) {
    char msg[512];
    int rc = db_restore(url, out, kind, txid, t, msg, sizeof msg);
    if (rc != WALSHIP_ERR_NOTFOUND)
        ws_test_fail(__FILE__, __LINE__,
                     "restore %s %" PRId64 " (before the oldest state retention must keep) "
                     "returned %d, not NOTFOUND: %s",
                     kind == 1 ? "--txid" : "--time", kind == 1 ? (int64_t)txid : t, rc, msg);
}

int main(void) {
    ws_test_seed(77);
    const char *dir = ws_test_tmpdir();
    char spool[4300];
    snprintf(path, sizeof path, "%s/app.db", dir);
    snprintf(out, sizeof out, "%s/r.db", dir);
    snprintf(url, sizeof url, "file://%s/store", dir);
    db_spool_dir(path, spool, sizeof spool);
    sqlite3 *plain = db_open_plain(path, 0);
    db_exec(plain, "PRAGMA journal_mode=WAL; CREATE TABLE meta(seq INTEGER);"
                   "INSERT INTO meta VALUES (0); CREATE TABLE t(v BLOB)");
    sqlite3_close(plain);

    sqlite3 *db = db_open_walship(path, url,
                                  "walship_ship_interval=100ms&walship_retention=4s&"
                                  "walship_snapshot_interval=1s");
    int64_t deadline = ws_mono_ms() + 60000;
    while (db_generation_count(url) == 0) {
        if (ws_mono_ms() > deadline)
            ws_test_fail(__FILE__, __LINE__, "no snapshot reached the store in 60 s");
        ws_sleep_ms(10); /* polling the store, with a deadline */
    }
    store_view v;
    load_view(url, &v);
    const uint64_t t0 = v.snap_txid[0]; /* commit 0: nothing was committed before it */
    commits[0].seq = 0;
    commits[0].hash = db_content_hash(db);
    commits[0].t_before = commits[0].t_after = ws_now_ms();
    cl_after_ms(commits[0].t_after);

    /* Write; list the store now and then; stop once a listing after 6 s
    ** shows a deletion. */
    int nc = 0;
    int64_t start = ws_mono_ms(), listed_at = 0, prev_list_wall = 0, deleted_after_wall = 0;
    uint64_t prev_oldest = t0;
    size_t prev_nsnaps = v.nsnaps;
    while (deleted_after_wall == 0) {
        CHECK(nc + 1 < MAXTX);
        CHECK(ws_mono_ms() - start < 120000);
        commit_rec *c = &commits[++nc];
        c->t_before = ws_now_ms();
        db_exec(db, "BEGIN; INSERT INTO t VALUES (randomblob(500)); UPDATE meta SET seq = seq + 1;"
                    "COMMIT");
        c->t_after = ws_now_ms();
        cl_after_ms(c->t_after);
        c->seq = nc;
        c->hash = db_content_hash(db);
        if (ws_mono_ms() - listed_at >= 100) {
            int64_t list_wall = ws_now_ms();
            listed_at = ws_mono_ms();
            load_view(url, &v);
            int deleted = v.snap_txid[0] > prev_oldest || v.nsnaps < prev_nsnaps;
            if (deleted && ws_mono_ms() - start >= 6000 && prev_list_wall > 0)
                deleted_after_wall = prev_list_wall; /* the run began after about then */
            prev_oldest = v.snap_txid[0];
            prev_nsnaps = v.nsnaps;
            prev_list_wall = list_wall;
        }
    }
    /* Closing the last connection lets the shipper finish uploading and
    ** retire; then the test holds the election lock and the store stands
    ** still. */
    sqlite3_close(db);
    int lockfd = db_hold_ship_lock(spool, 60000);
    if (lockfd < 0) ws_test_fail(__FILE__, __LINE__, "the shipper never released the election lock of %s", spool);
    const int64_t x = ws_now_ms();
    load_view(url, &v);
    const uint64_t base = v.snap_txid[0];
    const int cb = (int)(base - t0); /* the commit the oldest snapshot kept holds */
    fprintf(stderr,
            "%d commits (TXIDs %" PRIu64 "..%" PRIu64 "); after retention the oldest snapshot is "
            "TXID %" PRIu64 " (commit %d, %" PRId64 " ms before the window), %zu snapshot(s)\n",
            nc, t0, v.last_txid, base, cb, (x - WINDOW_MS) - commits[cb].t_after, v.nsnaps);
    CHECK_U64_EQ(v.last_txid, t0 + (uint64_t)nc);
    CHECK(base > t0 && cb <= nc);

    /* Kept: the window, from its oldest moment to its newest. */
    for (int j = 0; j < 12; j++) {
        int64_t tj = x - WINDOW_MS + (int64_t)j * WINDOW_MS / 11;
        int c = 0; /* the first commit that ended at or after tj: its end is in the window */
        while (c <= nc && commits[c].t_after < tj) c++;
        if (c > nc)
            expect_commit(2, 0, x, nc); /* after the last commit */
        else
            expect_commit(2, 0, commits[c].t_after, c);
    }
    /* Kept: the oldest snapshot, older than the window, which its start
    ** needs; and TXIDs up to the last. */
    CHECK(commits[cb].t_after <= x - WINDOW_MS);
    expect_commit(1, base, 0, cb);
    expect_commit(2, 0, commits[cb].t_after, cb);
    expect_commit(1, t0 + (uint64_t)nc, 0, nc);
    for (int k = 0; k < 4; k++) {
        int c = cb + (int)ws_test_rand_below((uint64_t)(nc - cb + 1));
        expect_commit(1, t0 + (uint64_t)c, 0, c);
    }

    /* Gone: what only restores before the oldest snapshot kept needed. */
    expect_gone(1, base - 1, 0);
    expect_gone(2, 0, commits[cb - 1].t_after);
    if (v.min_seg_last != UINT64_MAX && v.min_seg_last <= base)
        ws_test_fail(__FILE__, __LINE__,
                     "a segment ending at TXID %" PRIu64 " is kept, but the oldest snapshot kept "
                     "is TXID %" PRIu64,
                     v.min_seg_last, base);
    /* The run that deleted what the listing after deleted_after_wall missed
    ** began no earlier than a second before it; every snapshot uploaded
    ** before its window but its base had to go. */
    int64_t old_cutoff = deleted_after_wall - 1000 - WINDOW_MS;
    int older = 0;
    for (size_t i = 0; i < v.nsnaps; i++)
        if (v.snap_mtime[i] <= old_cutoff) older++;
    if (older > 1)
        ws_test_fail(__FILE__, __LINE__,
                     "%d snapshots uploaded before %" PRId64 " are kept; retention keeps only the "
                     "newest of those",
                     older, old_cutoff);
    close(lockfd);
    return 0;
}
