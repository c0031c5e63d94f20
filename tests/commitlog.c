/*
** commitlog.c -- see commitlog.h.
*/
#include "commitlog.h"

#include <inttypes.h>

#include "common/util.h"
#include "dbutil.h"
#include "harness.h"

void cl_after_ms(int64_t t) {
    while (ws_now_ms() <= t) ws_sleep_ms(1);
}

void cl_expect_commit(const char *url, const char *out, int kind, uint64_t txid, int64_t t,
                      const commit_rec *commits, int c) {
    char msg[512];
    const char *how = kind == 1 ? "--txid" : "--time";
    int64_t at = kind == 1 ? (int64_t)txid : t;
    int rc = db_restore(url, out, kind, txid, t, msg, sizeof msg);
    if (rc != 0)
        ws_test_fail(__FILE__, __LINE__, "restore %s %" PRId64 " (commit %d expected): %s", how,
                     at, c, msg);
    sqlite3 *r = db_open_plain(out, 1);
    int64_t seq = db_int(r, "SELECT seq FROM meta");
    uint64_t h = db_content_hash(r);
    sqlite3_close(r);
    if (seq != commits[c].seq || h != commits[c].hash)
        ws_test_fail(__FILE__, __LINE__,
                     "restore %s %" PRId64 " shows seq %" PRId64 "%s; commit %d left seq %" PRId64,
                     how, at, seq, seq == commits[c].seq ? " with other content" : "", c,
                     commits[c].seq);
}
