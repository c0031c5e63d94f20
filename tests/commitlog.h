/*
** commitlog.h -- what a test records about each commit of its primary, so
** that restores can be held to it: the state the commit left (a counter the
** transaction bumped, and the content hash, dbutil.h db_content_hash) and
** the wall-clock interval around the COMMIT call (a commit's time in the
** store is taken inside that call).
**
** With after_ms() between commits, the millisecond a commit ended in belongs
** to it alone: a restore at that time must be exactly that commit, one at a
** TXID exactly the commit the TXID stands for. Pipeline tests only.
*/
#ifndef WS_TEST_COMMITLOG_H
#define WS_TEST_COMMITLOG_H

#include <stdint.h>

typedef struct commit_rec {
    int64_t seq;   /* meta.seq the commit left */
    uint64_t hash; /* db_content_hash after it */
    int64_t t_before, t_after;
} commit_rec;

/* Returns once the wall clock (ms) has passed t: a commit begun then starts
** in a later millisecond than one that ended at t (costs at most 1 ms). */
void cl_after_ms(int64_t t);

/* Restores url into out at TXID txid (kind 1) or time t (kind 2) and fails
** the test unless the result shows exactly commit c: its meta.seq and its
** content hash. */
void cl_expect_commit(const char *url, const char *out, int kind, uint64_t txid, int64_t t,
                      const commit_rec *commits, int c);

#endif
