/*
** test_shipper_threads.c -- many databases, many connections, many threads
** in one process: the registry, the shared worker pool, the spool's shared
** control block and walship_flush from several threads at once. Built for
** the ThreadSanitizer run, and checks that everything arrives.
**
** Four threads each own a database (two connections each, alternating) and
** one thread writes to a database another thread also writes to; flushes
** come from every thread; connections open and close all along (so
** shippers retire and come back). At the end every database restores to
** exactly its primary, and an idle process's threads sleep: over 2 s they
** use less than a quarter of the CPU a spinning thread gets meanwhile.
**
** ctest-labels: threads pipeline
** ctest-timeout: 300
*/
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/util.h"
#include "dbutil.h"
#include "harness.h"
#include "walship.h"

#define NDB 4
#define NTHREADS 5
#define ROUNDS 60

static char paths[NDB][4200];
static char urls[NDB][4200];

typedef struct worker {
    int id;
    int db;
    int errors;
} worker;

static void *work(void *arg) {
    worker *w = arg;
    for (int round = 0; round < ROUNDS; round++) {
        sqlite3 *a = db_open_walship(paths[w->db], urls[w->db], "walship_ship_interval=20ms");
        sqlite3 *b = db_open_walship(paths[w->db], urls[w->db], "walship_ship_interval=20ms");
        for (int i = 0; i < 10; i++) {
            sqlite3 *c = (i & 1) ? a : b;
            char sql[200];
            snprintf(sql, sizeof sql,
                     "INSERT INTO t(writer, n, pad) VALUES (%d, %d, randomblob(%d))", w->id,
                     round * 10 + i, 100 + i * 50);
            if (db_try_exec(c, sql) != SQLITE_OK) {
                fprintf(stderr, "thread %d: insert: %s\n", w->id, sqlite3_errmsg(c));
                w->errors++;
            }
        }
        if (round % 7 == 0) {
            int64_t t0 = ws_mono_ms();
            int f = walship_flush(paths[w->db], 60000);
            if (f != 1) {
                fprintf(stderr, "thread %d: flush returned %d after %lld ms\n", w->id, f,
                        (long long)(ws_mono_ms() - t0));
                w->errors++;
            }
        }
        if (round % 11 == 0) db_try_exec(a, "PRAGMA wal_checkpoint(TRUNCATE)");
        sqlite3_close(a);
        sqlite3_close(b);
    }
    return NULL;
}

static int64_t cpu_ns(clockid_t clk) {
    struct timespec ts;
    CHECK_EQ(clock_gettime(clk, &ts), 0);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static atomic_int spin_stop;

/* A thread that spins until told to stop; *arg receives its CPU time (ns):
** what a thread that never sleeps gets of this machine right now. */
static void *spin(void *arg) {
    int64_t c0 = cpu_ns(CLOCK_THREAD_CPUTIME_ID);
    volatile uint64_t x = 0;
    while (!atomic_load_explicit(&spin_stop, memory_order_relaxed)) x++;
    *(int64_t *)arg = cpu_ns(CLOCK_THREAD_CPUTIME_ID) - c0;
    return NULL;
}

int main(void) {
    const char *dir = ws_test_tmpdir();
    db_register();
    for (int d = 0; d < NDB; d++) {
        snprintf(paths[d], sizeof paths[d], "%s/db%d.db", dir, d);
        snprintf(urls[d], sizeof urls[d], "file://%s/store%d", dir, d);
        sqlite3 *db = db_open_walship(paths[d], urls[d], NULL);
        db_exec(db, "CREATE TABLE t(writer INTEGER, n INTEGER, pad BLOB)");
        sqlite3_close(db);
    }
    pthread_t th[NTHREADS];
    worker ws[NTHREADS];
    for (int i = 0; i < NTHREADS; i++) {
        ws[i] = (worker){.id = i, .db = i % NDB, .errors = 0};
        CHECK_EQ(pthread_create(&th[i], NULL, work, &ws[i]), 0);
    }
    for (int i = 0; i < NTHREADS; i++) {
        CHECK_EQ(pthread_join(th[i], NULL), 0);
        CHECK_EQ(ws[i].errors, 0);
    }
    for (int d = 0; d < NDB; d++) {
        sqlite3 *db = db_open_walship(paths[d], urls[d], NULL);
        CHECK_EQ(walship_flush(paths[d], 60000), 1);
        db_exec(db, "PRAGMA wal_checkpoint(TRUNCATE)");
        int writers = d == 0 ? 2 : 1; /* thread 4 shares database 0 */
        CHECK_EQ(db_int(db, "SELECT count(*) FROM t"), writers * ROUNDS * 10);
        char out[4300], msg[512];
        snprintf(out, sizeof out, "%s/restored%d.db", dir, d);
        int rc = db_restore(urls[d], out, 0, 0, 0, msg, sizeof msg);
        if (rc != 0) ws_test_fail(__FILE__, __LINE__, "restore %d: %s", d, msg);
        CHECK(files_equal(paths[d], out));
        sqlite3_close(db);
    }

    /* Idle is idle: with a database open and nothing to ship, the worker
    ** threads sleep. (A condition variable waiting on the wrong clock once
    ** made every wait return at once: two threads spinning forever.) The
    ** yardstick is a thread of the test's own that spins over the same 2 s:
    ** a spinning worker gets about as much CPU as it does, however fast or
    ** busy the machine; a sleeping pool next to nothing. Everything but the
    ** spinner and this (sleeping) thread must stay under a quarter of it. */
    sqlite3 *idle = db_open_walship(paths[0], urls[0], NULL);
    db_exec(idle, "INSERT INTO t VALUES (-1, -1, NULL)");
    CHECK_EQ(walship_flush(paths[0], 60000), 1);
    int64_t p0 = cpu_ns(CLOCK_PROCESS_CPUTIME_ID), m0 = cpu_ns(CLOCK_THREAD_CPUTIME_ID);
    int64_t spin_ns = 0;
    pthread_t spinner;
    CHECK_EQ(pthread_create(&spinner, NULL, spin, &spin_ns), 0);
    int64_t w0 = ws_mono_ms();
    while (ws_mono_ms() - w0 < 2000) ws_sleep_ms(50); /* the idle period being measured */
    atomic_store(&spin_stop, 1);
    CHECK_EQ(pthread_join(spinner, NULL), 0);
    int64_t others_ns = (cpu_ns(CLOCK_PROCESS_CPUTIME_ID) - p0) -
                        (cpu_ns(CLOCK_THREAD_CPUTIME_ID) - m0) - spin_ns;
    fprintf(stderr, "idle for 2 s: the pool used %lld ms of CPU, a spinning thread %lld ms\n",
            (long long)(others_ns / 1000000), (long long)(spin_ns / 1000000));
    CHECK(spin_ns > 0);
    if (others_ns * 4 >= spin_ns)
        ws_test_fail(__FILE__, __LINE__,
                     "an idle process used %lld ms of CPU besides a spinning thread's %lld ms: "
                     "its threads do not sleep",
                     (long long)(others_ns / 1000000), (long long)(spin_ns / 1000000));
    sqlite3_close(idle);
    return 0;
}
