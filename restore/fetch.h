/*
** fetch.h -- parallel downloads with bounded memory, for restore and the
** replica. Jobs are numbered; a few threads fetch ahead of the consumer, at
** most `window` jobs past the last one taken, and the consumer takes results
** in any order it likes (usually in job order).
*/
#ifndef WS_FETCH_H
#define WS_FETCH_H

#include <stddef.h>
#include <stdint.h>

#include "../common/err.h"
#include "../common/util.h"
#include "../store/store.h"

typedef struct fetch_job {
    const char *key; /* owned by the caller, alive until fetch_free */
    uint64_t off;
    uint64_t len;    /* 0: the whole object */
} fetch_job;

typedef struct fetcher fetcher;

/* Starts `threads` workers over jobs[0..n). */
int fetch_start(store *st, const fetch_job *jobs, size_t n, int threads, size_t window,
                fetcher **out, wserr *err);
/* Waits for job i and moves its bytes into out (replacing out's contents).
** Each job can be taken once. Returns the job's error, if it failed. */
int fetch_take(fetcher *f, size_t i, wsbuf *out, wserr *err);
/* Bytes downloaded so far (for progress). */
uint64_t fetch_bytes(fetcher *f);
/* Stops the workers (pending jobs are dropped) and frees everything. */
void fetch_free(fetcher *f);

#endif
