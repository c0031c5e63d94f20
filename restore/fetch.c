/*
** fetch.c -- see fetch.h. A mutex and two condition variables: workers wait
** for room in the window, the consumer waits for its job to be done.
*/
#include "fetch.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define MAX_THREADS 32

typedef struct slot {
    int state; /* 0 pending, 1 running, 2 done, 3 taken */
    int rc;
    wserr err;
    wsbuf buf;
} slot;

struct fetcher {
    store *st;
    const fetch_job *jobs;
    size_t n;
    size_t window;
    slot *slots;
    size_t next;   /* next job a worker takes */
    size_t low;    /* lowest job not yet taken */
    int stop;
    uint64_t bytes;
    pthread_mutex_t mu;
    pthread_cond_t room;
    pthread_cond_t done;
    pthread_t th[MAX_THREADS];
    int nth;
};

static void advance_low(fetcher *f) {
    while (f->low < f->n && f->slots[f->low].state == 3) f->low++;
}

static void *worker(void *arg) {
    fetcher *f = arg;
    pthread_mutex_lock(&f->mu);
    for (;;) {
        while (!f->stop && f->next < f->n && f->next >= f->low + f->window)
            pthread_cond_wait(&f->room, &f->mu);
        if (f->stop || f->next >= f->n) break;
        size_t i = f->next++;
        slot *s = &f->slots[i];
        s->state = 1;
        pthread_mutex_unlock(&f->mu);
        const fetch_job *j = &f->jobs[i];
        wsbuf buf = {0};
        wserr err = {0};
        int rc = j->len ? store_get_range(f->st, j->key, j->off, j->len, &buf, &err)
                        : store_get(f->st, j->key, &buf, &err);
        if (rc == 0 && j->len && buf.len != j->len)
            rc = wserr_set(&err, WALSHIP_ERR_CORRUPT, "%s is shorter than its index says", j->key);
        pthread_mutex_lock(&f->mu);
        s->rc = rc;
        s->err = err;
        s->buf = buf;
        s->state = 2;
        f->bytes += buf.len;
        pthread_cond_broadcast(&f->done);
    }
    pthread_mutex_unlock(&f->mu);
    return NULL;
}

int fetch_start(store *st, const fetch_job *jobs, size_t n, int threads, size_t window,
                fetcher **out, wserr *err) {
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
    f->window = window ? window : 1;
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->room, NULL);
    pthread_cond_init(&f->done, NULL);
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if ((size_t)threads > n) threads = n ? (int)n : 1;
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

int fetch_take(fetcher *f, size_t i, wsbuf *out, wserr *err) {
    if (i >= f->n) return wserr_set(err, WALSHIP_ERR_INVALID, "no such download");
    pthread_mutex_lock(&f->mu);
    slot *s = &f->slots[i];
    while (s->state != 2 && s->state != 3) pthread_cond_wait(&f->done, &f->mu);
    if (s->state == 3) {
        pthread_mutex_unlock(&f->mu);
        return wserr_set(err, WALSHIP_ERR_STATE, "download taken twice");
    }
    int rc = s->rc;
    if (rc && err) *err = s->err;
    wsbuf_free(out);
    *out = s->buf;
    memset(&s->buf, 0, sizeof s->buf);
    s->state = 3;
    advance_low(f);
    pthread_cond_broadcast(&f->room);
    pthread_mutex_unlock(&f->mu);
    return rc;
}

uint64_t fetch_bytes(fetcher *f) {
    pthread_mutex_lock(&f->mu);
    uint64_t b = f->bytes;
    pthread_mutex_unlock(&f->mu);
    return b;
}

void fetch_free(fetcher *f) {
    if (f == NULL) return;
    pthread_mutex_lock(&f->mu);
    f->stop = 1;
    pthread_cond_broadcast(&f->room);
    pthread_mutex_unlock(&f->mu);
    for (int i = 0; i < f->nth; i++) pthread_join(f->th[i], NULL);
    for (size_t i = 0; i < f->n; i++) wsbuf_free(&f->slots[i].buf);
    free(f->slots);
    pthread_mutex_destroy(&f->mu);
    pthread_cond_destroy(&f->room);
    pthread_cond_destroy(&f->done);
    free(f);
}
