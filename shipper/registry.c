/*
** registry.c -- the process-wide registry of shippers and the thread pool
** that runs them.
**
** There is one shipper per database path in a process, found by path and
** refcounted: every VFS connection to the database holds a reference. The
** pool is a fixed set of worker threads (WALSHIP_THREADS, default 2) that
** run shipper steps: a worker takes the shipper whose due time is earliest,
** runs one bounded step with no lock held, and records when the shipper wants
** to run next. A shipper is never stepped by two workers at once. When the
** last reference goes, the shipper stays in the pool until everything it
** recorded is shipped, then it is freed.
**
** Lock order: pool.mu, then shipper.mu. Neither is held while a step runs.
*/
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../common/log.h"
#include "../common/util.h"
#include "ident.h"
#include "shipper_impl.h"

#define MAX_THREADS 16
#define WAKE_FRAMES 256 /* a busy WAL wakes its shipper every this many frames */

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* workers wait here */
    shipper *list;     /* every shipper of the process */
    shipper **heap;    /* the ones not running, a min-heap on due_mono */
    int nheap, heap_cap;
    pthread_t threads[MAX_THREADS];
    int nthreads;
    int shutdown;
    int64_t trimmed_mono; /* last seg_writer_pool_trim */
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, NULL, 0, 0, {0}, 0, 0, 0};

/* ---- the due-time heap (pool.mu held) ----------------------------------- */
static void heap_swap(int a, int b) {
    shipper *t = pool.heap[a];
    pool.heap[a] = pool.heap[b];
    pool.heap[b] = t;
    pool.heap[a]->heap_idx = a;
    pool.heap[b]->heap_idx = b;
}

static void heap_up(int i) {
    while (i > 0 && pool.heap[(i - 1) / 2]->due_mono > pool.heap[i]->due_mono) {
        heap_swap(i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
}

static void heap_down(int i) {
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < pool.nheap && pool.heap[l]->due_mono < pool.heap[m]->due_mono) m = l;
        if (r < pool.nheap && pool.heap[r]->due_mono < pool.heap[m]->due_mono) m = r;
        if (m == i) return;
        heap_swap(i, m);
        i = m;
    }
}

static int heap_push(shipper *sh) {
    if (pool.nheap == pool.heap_cap) {
        int cap = pool.heap_cap ? pool.heap_cap * 2 : 64;
        shipper **h = realloc(pool.heap, (size_t)cap * sizeof *h);
        if (h == NULL) return -1;
        pool.heap = h;
        pool.heap_cap = cap;
    }
    sh->heap_idx = pool.nheap;
    pool.heap[pool.nheap++] = sh;
    heap_up(sh->heap_idx);
    return 0;
}

static void heap_remove(shipper *sh) {
    int i = sh->heap_idx;
    if (i < 0) return;
    pool.nheap--;
    if (i != pool.nheap) {
        pool.heap[i] = pool.heap[pool.nheap];
        pool.heap[i]->heap_idx = i;
        heap_down(i);
        heap_up(i);
    }
    sh->heap_idx = -1;
}

/* Makes sh due no later than `due` (it may be running: then the worker sees
** the nudge flag when the step ends). */
static void make_due_locked(shipper *sh, int64_t due) {
    if (sh->heap_idx < 0) {
        atomic_store(&sh->nudged, 1);
        return;
    }
    if (due < sh->due_mono) {
        sh->due_mono = due;
        heap_up(sh->heap_idx);
    }
}

static void *base_vfs;

void shipper_set_base_vfs(void *vfs) { base_vfs = vfs; }
void *shipper_base_vfs(void);
void *shipper_base_vfs(void) { return base_vfs; }

/* Absolute deadline for pthread_cond_timedwait from a monotonic ms time. */
static void deadline_in(struct timespec *ts, int64_t ms) {
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (ms % 1000) * 1000000;
    if (ts->tv_nsec >= 1000000000) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000;
    }
}

static void cond_init_mono(pthread_cond_t *cv) {
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &a);
    pthread_condattr_destroy(&a);
}

static void shipper_free(shipper *sh) {
    if (sh == NULL) return;
    ship_state_free(&sh->ss);
    if (sh->elected) spool_unelect(sh->sp);
    spool_close(sh->sp);
    pthread_mutex_destroy(&sh->mu);
    pthread_cond_destroy(&sh->cv);
    free(sh->db_path);
    free(sh->wal_path);
    free(sh);
}

/* Removes sh from the list (pool.mu held; it is not in the heap). */
static void unlink_locked(shipper *sh) {
    for (shipper **pp = &pool.list; *pp; pp = &(*pp)->next) {
        if (*pp == sh) {
            *pp = sh->next;
            return;
        }
    }
}

static void *worker_main(void *arg) {
    (void)arg;
    pthread_mutex_lock(&pool.mu);
    while (!pool.shutdown) {
        int64_t now = ws_mono_ms();
        if (now - pool.trimmed_mono >= 10000) {
            pool.trimmed_mono = now;
            seg_writer_pool_trim();
        }
        if (pool.nheap == 0 || pool.heap[0]->due_mono > now) {
            int64_t wait = pool.nheap ? pool.heap[0]->due_mono - now : 1000;
            if (wait > 1000) wait = 1000;
            struct timespec ts;
            deadline_in(&ts, wait > 0 ? wait : 1);
            pthread_cond_timedwait(&pool.cv, &pool.mu, &ts);
            continue;
        }
        /* The most overdue shipper: none can starve the others. */
        shipper *best = pool.heap[0];
        heap_remove(best);
        best->running = 1;
        atomic_store(&best->nudged, 0);
        pthread_mutex_unlock(&pool.mu);
        int64_t next = ship_step(best);
        pthread_mutex_lock(&pool.mu);
        best->running = 0;
        best->due_mono = atomic_exchange(&best->nudged, 0) ? ws_mono_ms() : next;
        int retire = best->refs == 0 && ship_idle(best);
        if (retire) {
            unlink_locked(best);
        } else {
            heap_push(best); /* cannot fail: attach made room for every shipper */
        }
        shipper_wake_waiters(best);
        if (retire) {
            pthread_mutex_unlock(&pool.mu);
            shipper_free(best);
            pthread_mutex_lock(&pool.mu);
        }
        if (pool.nheap > 0 && pool.heap[0]->due_mono <= ws_mono_ms())
            pthread_cond_signal(&pool.cv); /* more work: wake a sibling */
    }
    pthread_mutex_unlock(&pool.mu);
    return NULL;
}

/* Starts the workers on first use (pool.mu held). */
static int pool_start_locked(wserr *err) {
    if (pool.nthreads > 0) return 0;
    /* Worker deadlines are monotonic (deadline_in): the condition variable
    ** must wait on that clock, or every wait ends at once and idle workers
    ** spin. Nobody waits on it while no worker runs. */
    static int cv_mono;
    if (!cv_mono) {
        pthread_cond_destroy(&pool.cv);
        cond_init_mono(&pool.cv);
        cv_mono = 1;
    }
    int n = 2;
    const char *env = getenv("WALSHIP_THREADS");
    if (env && *env) {
        n = atoi(env);
        if (n < 1) n = 1;
        if (n > MAX_THREADS) n = MAX_THREADS;
    }
    pool.shutdown = 0;
    for (int i = 0; i < n; i++) {
        int rc = pthread_create(&pool.threads[i], NULL, worker_main, NULL);
        if (rc != 0) {
            if (i > 0) break; /* run with fewer workers */
            return wserr_errno(err, WALSHIP_ERR_NOMEM, rc, "start shipper thread");
        }
        pool.nthreads++;
    }
    return 0;
}

void shipper_pool_shutdown(void) {
    pthread_mutex_lock(&pool.mu);
    pool.shutdown = 1;
    pthread_cond_broadcast(&pool.cv);
    int n = pool.nthreads;
    pool.nthreads = 0;
    pthread_mutex_unlock(&pool.mu);
    for (int i = 0; i < n; i++) pthread_join(pool.threads[i], NULL);
    pthread_mutex_lock(&pool.mu);
    shipper *list = pool.list;
    pool.list = NULL;
    free(pool.heap);
    pool.heap = NULL;
    pool.nheap = pool.heap_cap = 0;
    pthread_mutex_unlock(&pool.mu);
    while (list) {
        shipper *next = list->next;
        shipper_free(list);
        list = next;
    }
}

static shipper *find_locked(const char *db_path) {
    for (shipper *sh = pool.list; sh; sh = sh->next)
        if (strcmp(sh->db_path, db_path) == 0) return sh;
    return NULL;
}

int shipper_attach(const char *db_path, const ws_config *cfg, shipper **out, wserr *err) {
    *out = NULL;
    pthread_mutex_lock(&pool.mu);
    shipper *sh = find_locked(db_path);
    if (sh) {
        if (strcmp(sh->cfg.url, cfg->url) != 0) {
            pthread_mutex_unlock(&pool.mu);
            return wserr_set(err, WALSHIP_ERR_INVALID,
                             "%s is already shipping to a different URL in this process; one "
                             "database has one destination",
                             db_path);
        }
        sh->refs++;
        pthread_mutex_unlock(&pool.mu);
        *out = sh;
        return 0;
    }
    int rc = pool_start_locked(err);
    if (rc) {
        pthread_mutex_unlock(&pool.mu);
        return rc;
    }
    pthread_mutex_unlock(&pool.mu);

    /* A destination that can never work (not a URL walship knows, no bucket,
    ** a relative path) refuses the open: the application would otherwise
    ** run without backups. What may change while it runs (credentials, the
    ** store being reachable) is the shipper's to report in last_error. */
    store *probe = NULL;
    rc = store_open(cfg->url, &probe, err);
    store_free(probe);
    if (rc == WALSHIP_ERR_INVALID) return rc;
    wserr_clear(err);

    /* Build the new shipper without the pool lock (opening the spool does
    ** file I/O), then insert it unless another thread won the race. */
    sh = calloc(1, sizeof *sh);
    if (sh == NULL) return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
    pthread_mutex_init(&sh->mu, NULL);
    cond_init_mono(&sh->cv);
    ship_state_init(&sh->ss);
    sh->cfg = *cfg;
    sh->db_path = strdup(db_path);
    size_t n = strlen(db_path) + 5;
    sh->wal_path = malloc(n);
    if (sh->db_path == NULL || sh->wal_path == NULL) {
        shipper_free(sh);
        return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
    }
    snprintf(sh->wal_path, n, "%s-wal", db_path);
    rc = spool_open(cfg->spool_dir, &sh->sp, err);
    ws_ident id;
    if (rc == 0) rc = ident_attach(cfg->spool_dir, db_path, cfg->url, &id, err);
    if (rc) {
        shipper_free(sh);
        return rc;
    }
    sh->db_id = id.db_id;
    sh->refs = 1;
    sh->heap_idx = -1;
    sh->due_mono = ws_mono_ms();
    pthread_mutex_lock(&pool.mu);
    shipper *other = find_locked(db_path);
    if (other) {
        other->refs++;
        pthread_mutex_unlock(&pool.mu);
        shipper_free(sh);
        *out = other;
        return 0;
    }
    if (heap_push(sh) != 0) {
        pthread_mutex_unlock(&pool.mu);
        shipper_free(sh);
        return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
    }
    sh->next = pool.list;
    pool.list = sh;
    pthread_cond_signal(&pool.cv);
    pthread_mutex_unlock(&pool.mu);
    *out = sh;
    return 0;
}

void shipper_detach(shipper *sh) {
    if (sh == NULL) return;
    pthread_mutex_lock(&pool.mu);
    sh->refs--;
    if (sh->refs == 0) {
        /* Let a worker look at it soon: it retires once drained. */
        make_due_locked(sh, ws_mono_ms());
        pthread_cond_signal(&pool.cv);
    }
    pthread_mutex_unlock(&pool.mu);
}

shipper *shipper_find(const char *db_path) {
    pthread_mutex_lock(&pool.mu);
    shipper *sh = find_locked(db_path);
    if (sh) sh->refs++;
    pthread_mutex_unlock(&pool.mu);
    return sh;
}

spool *shipper_spool(shipper *sh) { return sh->sp; }
const ws_config *shipper_config(shipper *sh) { return &sh->cfg; }
const char *shipper_db_path(shipper *sh) { return sh->db_path; }

void shipper_nudge(shipper *sh, uint32_t mx_frame) {
    /* Called on every commit: no lock, and normally nothing at all. A ship
    ** interval of 0 wants each commit shipped at once; otherwise the step
    ** comes at its own pace (it polls the spool's end, which costs a memory
    ** read) and waking a thread per commit would only burn CPU the
    ** application needs -- except every WAKE_FRAMES frames of a busy WAL:
    ** then the shipper takes the frames while they are fresh, so that a
    ** checkpoint's request for a durability point (shipper_sync_request)
    ** finds little left to read before the WAL may restart. */
    uint32_t woke = atomic_load_explicit(&sh->woke_mx, memory_order_relaxed);
    int busy = mx_frame - woke >= WAKE_FRAMES; /* wraps when the WAL restarted */
    if (sh->cfg.ship_interval_ms != 0 && !busy) return;
    atomic_store_explicit(&sh->woke_mx, mx_frame, memory_order_relaxed);
    pthread_mutex_lock(&pool.mu);
    make_due_locked(sh, ws_mono_ms());
    pthread_cond_signal(&pool.cv);
    pthread_mutex_unlock(&pool.mu);
}

void shipper_sync_request(shipper *sh) {
    spool_sync_request(sh->sp);
    pthread_mutex_lock(&pool.mu);
    make_due_locked(sh, ws_mono_ms());
    pthread_cond_signal(&pool.cv);
    pthread_mutex_unlock(&pool.mu);
}

void shipper_wake_waiters(shipper *sh) {
    pthread_mutex_lock(&sh->mu);
    pthread_cond_broadcast(&sh->cv);
    pthread_mutex_unlock(&sh->mu);
}

int shipper_wait_durable(shipper *sh, uint32_t salt1, uint32_t salt2, uint32_t mx,
                         int64_t max_ms) {
    if (spool_shipper_pid(sh->sp) != (int)getpid()) return 0; /* not ours to wake */
    int64_t deadline = ws_mono_ms() + max_ms;
    int ok = 0;
    pthread_mutex_lock(&sh->mu);
    for (;;) {
        uint32_t s1, s2, fr;
        spool_shipped_get(sh->sp, &s1, &s2, &fr);
        if (s1 == salt1 && s2 == salt2 && fr >= mx) {
            ok = 1;
            break;
        }
        int64_t now = ws_mono_ms();
        if (now >= deadline) break;
        struct timespec ts; /* woken when a durability point is published */
        deadline_in(&ts, deadline - now);
        pthread_cond_timedwait(&sh->cv, &sh->mu, &ts);
    }
    pthread_mutex_unlock(&sh->mu);
    return ok;
}

int shipper_flush(shipper *sh, int64_t timeout_ms) {
    uint32_t req = spool_flush_request(sh->sp);
    int64_t deadline = timeout_ms < 0 ? INT64_MAX : ws_mono_ms() + timeout_ms;
    pthread_mutex_lock(&pool.mu);
    make_due_locked(sh, ws_mono_ms());
    pthread_cond_broadcast(&pool.cv);
    pthread_mutex_unlock(&pool.mu);
    pthread_mutex_lock(&sh->mu);
    for (;;) {
        if ((int32_t)(spool_flush_done(sh->sp) - req) >= 0) {
            pthread_mutex_unlock(&sh->mu);
            return 1;
        }
        int64_t now = ws_mono_ms();
        if (now >= deadline) break;
        /* Woken after each local step; the 20 ms cap covers a shipper that
        ** runs in another process. */
        struct timespec ts;
        int64_t wait = deadline - now < 20 ? deadline - now : 20;
        deadline_in(&ts, wait);
        pthread_cond_timedwait(&sh->cv, &sh->mu, &ts);
    }
    pthread_mutex_unlock(&sh->mu);
    return 0;
}

void shipper_stash_final_hdr(shipper *sh, const walidx_hdr *h) {
    pthread_mutex_lock(&sh->mu);
    sh->final_hdr = *h;
    sh->have_final = 1;
    pthread_mutex_unlock(&sh->mu);
}

int shipper_take_final_hdr(shipper *sh, walidx_hdr *out) {
    pthread_mutex_lock(&sh->mu);
    int have = sh->have_final;
    if (have) *out = sh->final_hdr;
    sh->have_final = 0;
    pthread_mutex_unlock(&sh->mu);
    return have ? 0 : -1;
}

void shipper_status_json(shipper *sh, char *out, size_t n) {
    char local[SPOOL_ERR_MAX];
    pthread_mutex_lock(&sh->mu);
    ws_strlcpy(local, sh->vfs_error, sizeof local);
    pthread_mutex_unlock(&sh->mu);
    ws_status_json(sh->sp, sh->db_path, sh->cfg.url, local, out, n);
}

void shipper_report_error(shipper *sh, const char *fmt, ...) {
    char msg[SPOOL_ERR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&sh->mu);
    memcpy(sh->vfs_error, msg, sizeof msg);
    pthread_mutex_unlock(&sh->mu);
    WS_ERROR("replication_error", "db=%s err=\"%s\"", sh->db_path, msg);
}
