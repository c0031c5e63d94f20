/*
** test_pipeline_retention.c -- retention removes only what no restore inside
** the window needs.
**
** A database ships with a 4 s retention window and a snapshot every second
** while it is written for a while. Then: old objects must go (the store's
** oldest snapshot moves forward), and every point inside the window must
** still restore, to exactly the state the primary had then.
**
** ctest-labels: pipeline
** ctest-timeout: 180
*/
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "dbutil.h"
#include "harness.h"
#include "restore/catalog.h"
#include "walship.h"

#define MAXTX 20000

static uint64_t oldest_snapshot(const char *url, size_t *nobjects) {
    store *st = NULL;
    wserr err = {0};
    catalog cat = {0};
    CHECK_OK(store_open(url, &st, &err), &err);
    CHECK_OK(catalog_load(st, &cat, &err), &err);
    uint64_t oldest = 0;
    *nobjects = 0;
    for (size_t g = 0; g < cat.ngens; g++) {
        *nobjects += cat.gens[g].nsnaps + cat.gens[g].nsegs;
        if (cat.gens[g].nsnaps && (oldest == 0 || cat.gens[g].snaps[0].txid < oldest))
            oldest = cat.gens[g].snaps[0].txid;
    }
    catalog_free(&cat);
    store_free(st);
    return oldest;
}

int main(void) {
    ws_test_seed(77);
    const char *dir = ws_test_tmpdir();
    char path[4200], url[4200], out[4200];
    snprintf(path, sizeof path, "%s/app.db", dir);
    snprintf(out, sizeof out, "%s/r.db", dir);
    snprintf(url, sizeof url, "file://%s/store", dir);
    sqlite3 *db = db_open_walship(path, url,
                                  "walship_ship_interval=100ms&walship_retention=4s&"
                                  "walship_snapshot_interval=1s");
    db_exec(db, "CREATE TABLE meta(seq INTEGER); INSERT INTO meta VALUES (0);"
                "CREATE TABLE t(v BLOB)");
    static uint64_t hash[MAXTX];
    static int64_t t_after[MAXTX];
    int n = 0;
    int64_t start = ws_now_ms();
    size_t objects_before = 0;
    uint64_t first_oldest = 0;
    /* Write until retention has visibly deleted something (or a deadline). */
    while (n < MAXTX - 1) {
        db_exec(db, "BEGIN; INSERT INTO t VALUES (randomblob(500)); UPDATE meta SET seq = seq + 1;"
                    "COMMIT");
        n++;
        hash[n] = db_content_hash(db);
        t_after[n] = ws_now_ms();
        if (n % 50 == 0) {
            size_t objs;
            uint64_t o = oldest_snapshot(url, &objs);
            if (first_oldest == 0) first_oldest = o;
            if (objs > objects_before) objects_before = objs;
            if (o > first_oldest && ws_now_ms() - start > 6000) break;
        }
        CHECK(ws_now_ms() - start < 120000);
    }
    CHECK_EQ(walship_flush(path, 30000), 1);
    size_t objs_after;
    uint64_t oldest = oldest_snapshot(url, &objs_after);
    fprintf(stderr, "%d transactions; oldest snapshot moved from txid %" PRIu64 " to %" PRIu64
                    "; objects now %zu (peak seen %zu)\n",
            n, first_oldest, oldest, objs_after, objects_before);
    CHECK(oldest > first_oldest);

    /* Every point of the last two seconds (well inside the 4 s window)
    ** restores to the state the primary had then; so does the last one,
    ** however long the flush took (the latest state is always kept). */
    int64_t now = ws_now_ms();
    int lo = n;
    while (lo > 1 && t_after[lo - 1] >= now - 2000) lo--;
    int checked = 0;
    for (int k = 0; k < 15; k++) {
        int i = k == 0 ? n : lo + (int)ws_test_rand_below((uint64_t)(n - lo + 1));
        char msg[512];
        int rc = db_restore(url, out, 2, 0, t_after[i], msg, sizeof msg);
        if (rc != 0) ws_test_fail(__FILE__, __LINE__, "restore inside the window: %s", msg);
        sqlite3 *r = db_open_plain(out, 1);
        int64_t seq = db_int(r, "SELECT seq FROM meta");
        CHECK(seq >= i);
        CHECK_U64_EQ(db_content_hash(r), hash[seq]);
        sqlite3_close(r);
        checked++;
    }
    CHECK(checked > 0);
    char msg[512];
    CHECK_EQ(db_restore(url, out, 0, 0, 0, msg, sizeof msg), 0);
    sqlite3 *r = db_open_plain(out, 1);
    CHECK_EQ(db_int(r, "SELECT seq FROM meta"), n);
    sqlite3_close(r);
    sqlite3_close(db);
    return 0;
}
