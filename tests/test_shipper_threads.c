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
** exactly its primary.
**
** ctest-labels: threads pipeline
** ctest-timeout: 300
*/
#include <pthread.h>
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
    ** made every wait return at once: two threads spinning forever.) A
    ** spinning worker burns the whole interval; a sleeping pool almost
    ** nothing. */
    sqlite3 *idle = db_open_walship(paths[0], urls[0], NULL);
    db_exec(idle, "INSERT INTO t VALUES (-1, -1, NULL)");
    CHECK_EQ(walship_flush(paths[0], 60000), 1);
    struct timespec c0, c1;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
    int64_t w0 = ws_mono_ms();
    while (ws_mono_ms() - w0 < 1500) ws_sleep_ms(100);
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
    int64_t cpu_ms = (int64_t)(c1.tv_sec - c0.tv_sec) * 1000 + (c1.tv_nsec - c0.tv_nsec) / 1000000;
    fprintf(stderr, "idle for 1.5 s: %lld ms of CPU\n", (long long)cpu_ms);
    CHECK(cpu_ms < 500);
    sqlite3_close(idle);
    return 0;
}
