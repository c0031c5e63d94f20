/*
** fetch.h -- parallel downloads with bounded memory, for restore and the
** replica.
**
** Jobs are numbered byte ranges of objects. A few threads download ahead
** of the consumer, streaming (store_get_stream): every job's bytes go into
** its own queue, which the consumer drains in pieces (fetch_read) or whole
** (fetch_take). Memory is bounded in bytes, not objects: jobs the consumer
** is not reading yet hold at most `budget` bytes together (a worker whose
** next piece would pass it waits), and the job being read at most
** FETCH_JOB_CAP more; so an object of any size streams through a few MiB,
** and a worker never runs further ahead than the budget.
**
** A job can be checked as soon as its first bytes arrive (fetch_opts.check,
** e.g. a segment header against its key): a failed check stops that
** download at once, so a huge garbage object costs a few pieces, not its
** size.
**
** Jobs are consumed in increasing order: reading or taking job i drops
** every earlier job not read to its end. Thread-safety: one consumer
** thread per fetcher.
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
    uint64_t len; /* 0: to the end of the object; otherwise exactly this many bytes */
    uint64_t max; /* 0: no limit; otherwise more bytes than this fail the job (CORRUPT) */
} fetch_job;

/* Checks the first bytes of job `job` (n = check_len, or fewer if the job
** is shorter). Returns 0, or a walship_err with err set: the job then fails
** with that error and its download stops. Called from a download thread. */
typedef int (*fetch_check_fn)(void *ctx, size_t job, const uint8_t *head, size_t n, wserr *err);

#define FETCH_CHECK_MAX      4096
#define FETCH_BUDGET_DEFAULT ((uint64_t)16 << 20)
#define FETCH_JOB_CAP        ((uint64_t)4 << 20)

typedef struct fetch_opts {
    int threads;      /* download threads (1..32) */
    uint64_t budget;  /* bytes held for jobs not being read; 0: FETCH_BUDGET_DEFAULT */
    size_t check_len; /* 0: no check; at most FETCH_CHECK_MAX */
    fetch_check_fn check;
    void *check_ctx;
} fetch_opts;

typedef struct fetcher fetcher;

/* Starts the download threads over jobs[0..n) (the array must stay alive
** until fetch_free). */
int fetch_start(store *st, const fetch_job *jobs, size_t n, const fetch_opts *o, fetcher **out,
                wserr *err);

/* Waits for the next piece of job i and moves it into out (replacing its
** contents; out's old buffer is reused). At the end of the job *eof is set,
** out is empty, and the job's result is returned: 0, or its error (a store
** error, a failed check, WALSHIP_ERR_CORRUPT when the object is shorter than
** the range or longer than max). */
int fetch_read(fetcher *f, size_t i, wsbuf *out, int *eof, wserr *err);

/* Waits for all of job i and moves its bytes into out. Returns its result. */
int fetch_take(fetcher *f, size_t i, wsbuf *out, wserr *err);

/* Gives job i up: its download stops and its bytes are freed. */
void fetch_drop(fetcher *f, size_t i);

/* Bytes downloaded so far (for progress). */
uint64_t fetch_bytes(fetcher *f);

/* The most bytes the fetcher held at once (for tests of its bound). */
uint64_t fetch_peak(fetcher *f);

/* Stops the workers (pending jobs are dropped) and frees everything. NULL
** is fine. */
void fetch_free(fetcher *f);

#endif
