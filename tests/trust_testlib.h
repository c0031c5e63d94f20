/*
** trust_testlib.h -- helpers shared by the store-trust and restore tests
** (tests/test_store_trust*.c, tests/test_restore_*.c); header-only, as each
** test is its own executable.
**
**   tt_build      a real file:// store: a database written through the
**                 walship VFS, one flushed batch (one segment) at a time
**   tt_scan       what a store directory holds (its one generation)
**   tt_run        runs the walship CLI with its output in files, and its
**                 peak memory (ru_maxrss of exactly that child, wait4)
**   tt_put_owner  writes the destination's ownership record
**   tt_garbage    a sparse file of any size with garbage at its start
**   TT_CASE       runs one case, or only the one named on the command line
**   tt_wait_replica_status  waits for a replica's status.json to say something
*/
#ifndef WS_TRUST_TESTLIB_H
#define WS_TRUST_TESTLIB_H

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/util.h"
#include "dbutil.h"
#include "format/objfmt.h"
#include "format/owner.h"
#include "harness.h"
#include "store/store.h"
#include "walship.h"

#define TT_MAXSEG 64

typedef struct tt_store {
    char dir[1024]; /* the store's directory */
    char url[1100];
    char db[1024]; /* the database that shipped it */
    uint64_t gen, db_id, last_txid, snap_txid;
    char snap[256]; /* key of its (newest) snapshot */
    int nsegs;
    char seg[TT_MAXSEG][256]; /* keys, in TXID order */
    uint64_t first[TT_MAXSEG], last[TT_MAXSEG];
    int64_t rows;
} tt_store;

/* Fills s from the store directory s->dir (one generation). */
static __attribute__((unused)) void tt_scan(tt_store *s) {
    store *st = NULL;
    wserr e = {0};
    CHECK_OK(store_open(s->url, &st, &e), &e);
    store_objlist l = {0};
    CHECK_OK(store_list(st, "generations/", NULL, &l, &e), &e);
    s->nsegs = 0;
    s->snap[0] = '\0';
    s->last_txid = 0;
    for (size_t i = 0; i < l.n; i++) {
        objkey k;
        objkey_classify(l.items[i].key, &k);
        if (k.kind == OBJKEY_SNAPSHOT && k.first >= s->snap_txid) {
            s->gen = k.gen;
            s->snap_txid = k.first;
            snprintf(s->snap, sizeof s->snap, "%s", l.items[i].key);
        } else if (k.kind == OBJKEY_SEGMENT) {
            CHECK(s->nsegs < TT_MAXSEG);
            snprintf(s->seg[s->nsegs], sizeof s->seg[0], "%s", l.items[i].key);
            s->first[s->nsegs] = k.first;
            s->last[s->nsegs++] = k.last;
        } else {
            continue;
        }
        if (k.last > s->last_txid) s->last_txid = k.last;
    }
    store_objlist_free(&l);
    CHECK(s->snap[0] != '\0');
    if (s->nsegs > 0) { /* the database id, from a segment header */
        wsbuf b = {0};
        seg_header h;
        CHECK_OK(store_get_range(st, s->seg[0], 0, SEG_HEADER_SIZE, &b, &e), &e);
        CHECK_OK(seg_parse_header(b.p, b.len, &h, &e), &e);
        s->db_id = h.db_id;
        wsbuf_free(&b);
    }
    store_free(st);
}

/* Builds a store in dir/name: a table t, `batches` flushed batches of 4
** inserts (one segment each, usually), through the walship VFS. */
static __attribute__((unused)) void tt_build(tt_store *s, const char *dir, const char *name,
                                             int batches) {
    char sub[900];
    memset(s, 0, sizeof *s);
    snprintf(sub, sizeof sub, "%s/%s", dir, name);
    CHECK_EQ(ws_test_system("mkdir -p '%s'", sub), 0);
    snprintf(s->db, sizeof s->db, "%s/app.db", sub);
    snprintf(s->dir, sizeof s->dir, "%s/store", sub);
    snprintf(s->url, sizeof s->url, "file://%s", s->dir);
    sqlite3 *plain = db_open_plain(s->db, 0);
    db_exec(plain, "PRAGMA journal_mode=WAL; CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB);");
    sqlite3_close(plain);
    sqlite3 *db = db_open_walship(s->db, s->url, "walship_ship_interval=0");
    CHECK_EQ(walship_flush(s->db, 60000), 1);
    for (int i = 0; i < batches; i++) {
        for (int k = 0; k < 4; k++) {
            char sql[160];
            snprintf(sql, sizeof sql, "INSERT INTO t(v) VALUES (randomblob(%d))",
                     200 + (int)ws_test_rand_below(3000));
            db_exec(db, sql);
        }
        CHECK_EQ(walship_flush(s->db, 60000), 1);
    }
    s->rows = db_int(db, "SELECT count(*) FROM t");
    sqlite3_close(db);
    tt_scan(s);
}

/* Copies store src into dir/name; dst is src with the new place. */
static __attribute__((unused)) void tt_copy(const tt_store *src, const char *dir, const char *name,
                                            tt_store *dst) {
    *dst = *src;
    snprintf(dst->dir, sizeof dst->dir, "%s/%s/store", dir, name);
    snprintf(dst->url, sizeof dst->url, "file://%s", dst->dir);
    CHECK_EQ(ws_test_system("rm -rf '%s' && mkdir -p '%s' && cp -a '%s/.' '%s/'", dst->dir,
                            dst->dir, src->dir, dst->dir),
             0);
}

/* The file of key in store s. */
static __attribute__((unused)) void tt_path(const tt_store *s, const char *key, char *out,
                                            size_t n) {
    snprintf(out, n, "%s/%s", s->dir, key);
}

/* `test_NAME CASE` runs only the case CASE (after the setup): main sets
** tt_only from argv[1] and runs each case with TT_CASE. */
static __attribute__((unused)) const char *tt_only;
#define TT_CASE(fn)                                                                                \
    do {                                                                                           \
        if (tt_only == NULL || strcmp(tt_only, #fn) == 0) RUN(fn);                                 \
    } while (0)

/* Rows of table t in a database file (-1 if it cannot be read). */
static __attribute__((unused)) int64_t tt_rows(const char *path) {
    sqlite3 *db = NULL;
    int64_t n = -1;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK) {
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(db, "SELECT count(*) FROM t", -1, &st, NULL) == SQLITE_OK &&
            sqlite3_step(st) == SQLITE_ROW)
            n = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
    }
    sqlite3_close(db);
    return n;
}

/* Output of the last tt_run. */
static char tt_out[65536], tt_errout[65536];

static void tt_slurp(const char *path, char *buf, size_t n) {
    wsbuf b = {0};
    buf[0] = '\0';
    if (ws_read_file(path, 1 << 24, &b, NULL) == 0) {
        size_t k = b.len < n - 1 ? b.len : n - 1;
        memcpy(buf, b.p, k);
        buf[k] = '\0';
    }
    wsbuf_free(&b);
}

/* Runs `walship args...` (NULL-terminated) to its end; stdout goes to
** tt_out, stderr to tt_errout. Returns the exit status (128+signal if
** killed); *maxrss_kib (if not NULL) gets the peak resident memory of that
** process. */
static __attribute__((unused)) int tt_run(int64_t *maxrss_kib, const char *arg0, ...) {
    const char *argv[32];
    int n = 0;
    argv[n++] = ws_test_env("WALSHIP_BIN");
    va_list ap;
    va_start(ap, arg0);
    for (const char *a = arg0; a != NULL && n < 31; a = va_arg(ap, const char *))
        argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;
    char outp[4200], errp[4200];
    snprintf(outp, sizeof outp, "%s/tt_run.out", ws_test_tmpdir());
    snprintf(errp, sizeof errp, "%s/tt_run.err", ws_test_tmpdir());
    fflush(NULL);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        int o = open(outp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int e = open(errp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (o < 0 || e < 0) _exit(126);
        dup2(o, 1);
        dup2(e, 2);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    int st = 0;
    struct rusage ru;
    CHECK(wait4(pid, &st, 0, &ru) == pid);
    if (maxrss_kib) *maxrss_kib = ru.ru_maxrss;
    tt_slurp(outp, tt_out, sizeof tt_out);
    tt_slurp(errp, tt_errout, sizeof tt_errout);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* Writes `owner` into the store at url: db_id owns it, prev (0: none) owned
** it before. */
static __attribute__((unused)) void tt_put_owner(const char *url, uint64_t db_id, uint64_t prev) {
    ws_owner o;
    memset(&o, 0, sizeof o);
    o.db_id = db_id;
    snprintf(o.host, sizeof o.host, "testhost");
    snprintf(o.path, sizeof o.path, "/test/app.db");
    o.since_ms = ws_now_ms();
    if (prev) o.previous[o.nprevious++] = prev;
    char buf[OWNER_RECORD_MAX];
    size_t len = owner_encode(&o, buf, sizeof buf);
    CHECK(len > 0);
    store *st = NULL;
    wserr e = {0};
    CHECK_OK(store_open(url, &st, &e), &e);
    CHECK_OK(store_put(st, OWNER_KEY, buf, len, 0, &e), &e);
    store_free(st);
}

/* A file of `size` bytes at path (sparse: costs no disk) starting with
** `head` random bytes. */
static __attribute__((unused)) void tt_garbage(const char *path, uint64_t size, size_t head) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0);
    uint8_t buf[4096];
    while (head > 0) {
        size_t k = head < sizeof buf ? head : sizeof buf;
        ws_test_rand_bytes(buf, k);
        CHECK(write(fd, buf, k) == (ssize_t)k);
        head -= k;
    }
    CHECK(ftruncate(fd, (off_t)size) == 0);
    close(fd);
}

/* Waits (up to a minute) until the status.json of the replica at rdb
** holds needle (in last_error, say). */
static __attribute__((unused)) void tt_wait_replica_status(const char *rdb, const char *needle) {
    char path[1300], st[16384] = "";
    snprintf(path, sizeof path, "%s-walship-replica/status.json", rdb);
    int64_t deadline = ws_mono_ms() + 60000;
    while (ws_mono_ms() < deadline) {
        tt_slurp(path, st, sizeof st);
        if (strstr(st, needle) != NULL) return;
        ws_sleep_ms(20);
    }
    ws_test_fail(__FILE__, __LINE__, "the replica's status never held \"%s\": %s", needle, st);
}

/* Nonzero if dir holds nothing. */
static __attribute__((unused)) int tt_dir_empty(const char *dir) {
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "[ -z \"$(ls -A '%s')\" ]", dir);
    return ws_test_system("%s", cmd) == 0;
}

#endif
