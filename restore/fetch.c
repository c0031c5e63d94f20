/*
** fetch.c -- see fetch.h.
**
** One mutex and two condition variables: `room` wakes workers waiting to
** start a job or to queue a piece, `done` wakes the consumer waiting for a
** piece or for a job's end. Each job has a slot holding the bytes the
** consumer has not read yet; fetch_read hands the whole queue over by
** swapping buffers, so a byte is copied once, from the network into the
** slot.
**
** The bound: `buffered` counts the bytes held in all slots. A worker may
** queue a piece for the job the consumer is reading (`want`) while that
** slot holds less than FETCH_JOB_CAP, and for any other job while the total
** stays within the budget; otherwise it waits. The job being read can
** always move, so the consumer never waits for a worker that waits for the
** consumer, and workers start jobs in order, so the job it wants is started
** before any later one.
*/
#include "fetch.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define MAX_THREADS 32

enum { SLOT_PENDING = 0, SLOT_RUNNING = 1, SLOT_DONE = 2 };

typedef struct slot {
    int state; /* SLOT_* */
    int gone;  /* taken to its end, or dropped: nobody reads it any more */
    int rc;    /* the job's result, once SLOT_DONE */
    wserr err;
    wsbuf buf;    /* bytes not read yet */
    uint64_t got; /* bytes received */
} slot;

struct fetcher {
    store *st;
    const fetch_job *jobs;
    size_t n;
    fetch_opts o;
    slot *slots;
    size_t next;   /* next job a worker starts */
    size_t low;    /* lowest job not gone */
    size_t want;   /* the job the consumer reads */
    size_t window; /* jobs started ahead of low, at most */
    int stop;
    uint64_t bytes, buffered, peak;
    pthread_mutex_t mu; /* protects everything above */
    pthread_cond_t room;
    pthread_cond_t done;
    pthread_t th[MAX_THREADS];
    int nth;
};

/* One download in progress (a worker's own state). */
typedef struct dl {
    fetcher *f;
    size_t i;
    uint8_t head[FETCH_CHECK_MAX];
    size_t head_have;
    int checked;
} dl;

static void advance_low(fetcher *f) {
    while (f->low < f->n && f->slots[f->low].gone)
        f->low++;
}

static void slot_release(fetcher *f, slot *s) {
    f->buffered -= s->buf.len;
    wsbuf_free(&s->buf);
    s->gone = 1;
}

/* Runs the job's check once its first check_len bytes are in (or at its
** end with fewer). */
static int run_check(dl *d, wserr *err) {
    fetcher *f = d->f;
    if (d->checked || f->o.check == NULL) return 0;
    d->checked = 1;
    return f->o.check(f->o.check_ctx, d->i, d->head, d->head_have, err);
}

/* store_sink_fn: queues a piece for the consumer, waiting for room. */
static int sink(void *ctx, const uint8_t *data, size_t n, wserr *err) {
    dl *d = ctx;
    fetcher *f = d->f;
    if (!d->checked && f->o.check != NULL) {
        size_t room = f->o.check_len - d->head_have, k = n < room ? n : room;
        memcpy(d->head + d->head_have, data, k);
        d->head_have += k;
        int rc = d->head_have == f->o.check_len ? run_check(d, err) : 0;
        if (rc) return rc;
    }
    const fetch_job *j = &f->jobs[d->i];
    int rc = 0;
    pthread_mutex_lock(&f->mu);
    slot *s = &f->slots[d->i];
    for (;;) {
        if (f->stop || s->gone) {
            rc = wserr_set(err, WALSHIP_ERR_STATE, "download of %s given up", j->key);
            goto out;
        }
        if (d->i == f->want ? s->buf.len == 0 || s->buf.len + n <= FETCH_JOB_CAP
                            : f->buffered + n <= f->o.budget)
            break;
        pthread_cond_wait(&f->room, &f->mu);
    }
    s->got += n;
    f->bytes += n;
    if (j->max && s->got > j->max) {
        rc = wserr_set(err, WALSHIP_ERR_CORRUPT,
                       "%s is larger than the %llu bytes it was listed or indexed with", j->key,
                       (unsigned long long)j->max);
        goto out;
    }
    if (wsbuf_append(&s->buf, data, n) != 0) {
        rc = wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory downloading %s", j->key);
        goto out;
    }
    f->buffered += n;
    if (f->buffered > f->peak) f->peak = f->buffered;
    pthread_cond_broadcast(&f->done);
out:
    pthread_mutex_unlock(&f->mu);
    return rc;
}

/* A worker may start job i: within the window, and within the budget
** unless the consumer waits for it. */
static int may_start(const fetcher *f, size_t i) {
    return i < f->low + f->window && (i == f->want || f->buffered < f->o.budget);
}

static void *worker(void *arg) {
    fetcher *f = arg;
    dl *d = malloc(sizeof *d);
    pthread_mutex_lock(&f->mu);
    for (;;) {
        while (!f->stop && f->next < f->n && !may_start(f, f->next))
            pthread_cond_wait(&f->room, &f->mu);
        if (f->stop || f->next >= f->n) break;
        size_t i = f->next++;
        slot *s = &f->slots[i];
        if (s->gone) continue;
        s->state = SLOT_RUNNING;
        pthread_mutex_unlock(&f->mu);
        const fetch_job *j = &f->jobs[i];
        wserr err = {0};
        int rc;
        if (d == NULL) {
            rc = wserr_set(&err, WALSHIP_ERR_NOMEM, "out of memory");
        } else {
            d->f = f;
            d->i = i;
            d->head_have = d->checked = 0;
            rc = store_get_stream(f->st, j->key, j->off, j->len, sink, d, &err);
            if (rc == 0) rc = run_check(d, &err); /* shorter than check_len */
        }
        pthread_mutex_lock(&f->mu);
        if (rc == 0 && j->len && s->got != j->len)
            rc = wserr_set(&err, WALSHIP_ERR_CORRUPT,
                           "%s is shorter than its index says (%llu bytes at %llu, %llu there)",
                           j->key, (unsigned long long)j->len, (unsigned long long)j->off,
                           (unsigned long long)s->got);
        s->rc = rc;
        s->err = err;
        s->state = SLOT_DONE;
        pthread_cond_broadcast(&f->done);
    }
    pthread_mutex_unlock(&f->mu);
    free(d);
    return NULL;
}

int fetch_start(store *st, const fetch_job *jobs, size_t n, const fetch_opts *o, fetcher **out,
                wserr *err) {
    *out = NULL;
    fetcher *f = calloc(1, sizeof *f);
    if (f == NULL) return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
    f->slots = calloc(n ? n : 1, sizeof *f->slots);
    if (f->slots == NULL) {
        free(f);
        return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
    }
    f->st = st;
    f->jobs = jobs;
    f->n = n;
    f->o = *o;
    if (f->o.budget == 0) f->o.budget = FETCH_BUDGET_DEFAULT;
    if (f->o.check_len > FETCH_CHECK_MAX) f->o.check_len = FETCH_CHECK_MAX;
    if (f->o.check_len == 0) f->o.check = NULL;
    int threads = o->threads < 1 ? 1 : o->threads > MAX_THREADS ? MAX_THREADS : o->threads;
    if ((size_t)threads > n) threads = n ? (int)n : 1;
    f->window = (size_t)threads * 2 > 4 ? (size_t)threads * 2 : 4;
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->room, NULL);
    pthread_cond_init(&f->done, NULL);
    for (int i = 0; i < threads; i++) {
        if (pthread_create(&f->th[i], NULL, worker, f) != 0) break;
        f->nth++;
    }
    if (f->nth == 0) {
        fetch_free(f);
        return wserr_set(err, WALSHIP_ERR_NOMEM, "cannot start download threads");
    }
    *out = f;
    return 0;
}

/* Makes i the job being read; drops the unread jobs before it. Caller
** holds mu. */
static void want_job(fetcher *f, size_t i) {
    for (size_t k = f->low; k < i; k++)
        if (!f->slots[k].gone) slot_release(f, &f->slots[k]);
    advance_low(f);
    f->want = i;
    pthread_cond_broadcast(&f->room);
}

int fetch_read(fetcher *f, size_t i, wsbuf *out, int *eof, wserr *err) {
    *eof = 0;
    out->len = 0;
    if (i >= f->n) return wserr_set(err, WALSHIP_ERR_INVALID, "no such download");
    pthread_mutex_lock(&f->mu);
    slot *s = &f->slots[i];
    if (s->gone) {
        pthread_mutex_unlock(&f->mu);
        return wserr_set(err, WALSHIP_ERR_STATE, "download %zu read after its end", i);
    }
    if (f->want != i || i > f->low) want_job(f, i);
    while (s->buf.len == 0 && s->state != SLOT_DONE)
        pthread_cond_wait(&f->done, &f->mu);
    int rc = 0;
    if (s->buf.len > 0) {
        wsbuf t = *out;
        *out = s->buf;
        s->buf = t;
        f->buffered -= out->len;
    } else {
        *eof = 1;
        rc = s->rc;
        if (rc && err) *err = s->err;
        slot_release(f, s);
        advance_low(f);
    }
    pthread_cond_broadcast(&f->room);
    pthread_mutex_unlock(&f->mu);
    return rc;
}

int fetch_take(fetcher *f, size_t i, wsbuf *out, wserr *err) {
    wsbuf piece = {0};
    int eof = 0, rc = fetch_read(f, i, out, &eof, err);
    while (rc == 0 && !eof) {
        rc = fetch_read(f, i, &piece, &eof, err);
        if (rc == 0 && piece.len && wsbuf_append(out, piece.p, piece.len) != 0) {
            fetch_drop(f, i);
            rc = wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
        }
    }
    wsbuf_free(&piece);
    return rc;
}

void fetch_drop(fetcher *f, size_t i) {
    if (f == NULL || i >= f->n) return;
    pthread_mutex_lock(&f->mu);
    if (!f->slots[i].gone) slot_release(f, &f->slots[i]);
    advance_low(f);
    pthread_cond_broadcast(&f->room);
    pthread_mutex_unlock(&f->mu);
}

uint64_t fetch_bytes(fetcher *f) {
    pthread_mutex_lock(&f->mu);
    uint64_t b = f->bytes;
    pthread_mutex_unlock(&f->mu);
    return b;
}

uint64_t fetch_peak(fetcher *f) {
    pthread_mutex_lock(&f->mu);
    uint64_t b = f->peak;
    pthread_mutex_unlock(&f->mu);
    return b;
}

void fetch_free(fetcher *f) {
    if (f == NULL) return;
    pthread_mutex_lock(&f->mu);
    f->stop = 1;
    pthread_cond_broadcast(&f->room);
    pthread_mutex_unlock(&f->mu);
    for (int i = 0; i < f->nth; i++)
        pthread_join(f->th[i], NULL);
    for (size_t i = 0; i < f->n; i++)
        wsbuf_free(&f->slots[i].buf);
    free(f->slots);
    pthread_mutex_destroy(&f->mu);
    pthread_cond_destroy(&f->room);
    pthread_cond_destroy(&f->done);
    free(f);
}
