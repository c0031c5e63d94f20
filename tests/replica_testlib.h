/*
** replica_testlib.h -- helpers shared by the tests/test_replica_*.c
** programs (header-only: each test is its own executable).
**
** Processes: helpers run as re-executions of the test binary itself
** (/proc/self/exe with a role argument), never as plain fork() children of
** a process that has SQLite connections open: a forked child would inherit
** the unix VFS's in-memory lock bookkeeping.
**
** Readers: rt_reader_main() is the body of a plain-SQLite reader process on
** a replica (no walship VFS): it loops on read transactions checking the
** bank invariant (sum of balances) and PRAGMA quick_check, and counts
** every SQLITE_BUSY / "database is locked" as a violation. It stops when a
** stop file appears and writes its counters to a result file.
*/
#ifndef WS_REPLICA_TESTLIB_H
#define WS_REPLICA_TESTLIB_H

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "walship.h"

/* ---- processes ------------------------------------------------------------ */
/* Every helper process started, killed at exit if still running (a failed
** check exits at once; its readers must not outlive it). */
static pid_t rt_children[256];
static int rt_nchildren;
static pid_t rt_parent;

static void rt_kill_children(void) {
    if (getpid() != rt_parent) return;
    for (int i = 0; i < rt_nchildren; i++)
        if (rt_children[i] > 0 && kill(rt_children[i], 0) == 0) kill(rt_children[i], SIGKILL);
}

static void rt_track(pid_t pid) {
    if (rt_parent == 0) {
        rt_parent = getpid();
        atexit(rt_kill_children);
    }
    /* Never reaps here: a child's exit status belongs to rt_wait, which
    ** frees the slot when it collects it. */
    for (int i = 0; i < rt_nchildren; i++)
        if (rt_children[i] <= 0) {
            rt_children[i] = pid;
            return;
        }
    if (rt_nchildren < 256) rt_children[rt_nchildren++] = pid;
}

/* Starts the program argv[0] with argv (NULL-terminated) as exe, tracked;
** stdout/stderr are inherited unless out_path is given (both go there). */
static __attribute__((unused)) pid_t rt_spawn_exe(const char *exe, const char *out_path, const char *const *argv) {
    pid_t pid = fork();
    if (pid < 0) ws_test_fail(__FILE__, __LINE__, "fork: %s", strerror(errno));
    if (pid == 0) {
        if (out_path) {
            int fd = open(out_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
            if (fd >= 0) {
                dup2(fd, 1);
                dup2(fd, 2);
                close(fd);
            }
        }
        execv(exe, (char *const *)argv);
        _exit(127);
    }
    rt_track(pid);
    return pid;
}

/* Starts `/proc/self/exe role args...` (NULL-terminated); returns its pid. */
static __attribute__((unused)) pid_t rt_spawn_self(const char *out_path, const char *role, ...) {
    const char *argv[32];
    int n = 0;
    argv[n++] = "self";
    argv[n++] = role;
    va_list ap;
    va_start(ap, role);
    const char *s;
    while ((s = va_arg(ap, const char *)) != NULL && n < 31) argv[n++] = s;
    va_end(ap);
    argv[n] = NULL;
    return rt_spawn_exe("/proc/self/exe", out_path, argv);
}

/* Starts a program (argv NULL-terminated). */
static __attribute__((unused)) pid_t rt_spawn(const char *out_path, const char *const *argv) {
    return rt_spawn_exe(argv[0], out_path, argv);
}

/* Waits for pid; returns its exit status, 128+signal if killed, -1 if it
** did not end within timeout_ms (then it is left running). */
static __attribute__((unused)) int rt_wait(pid_t pid, int64_t timeout_ms) {
    int64_t deadline = ws_mono_ms() + timeout_ms;
    for (;;) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) {
            for (int i = 0; i < rt_nchildren; i++)
                if (rt_children[i] == pid) rt_children[i] = 0;
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
        if (r < 0) return -1;
        if (ws_mono_ms() > deadline) return -1;
        ws_sleep_ms(5);
    }
}

static __attribute__((unused)) void rt_touch(const char *path) {
    int fd = open(path, O_WRONLY | O_CREAT, 0644);
    if (fd >= 0) close(fd);
}

static __attribute__((unused)) int rt_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

/* ---- SQLite helpers ------------------------------------------------------ */
static __attribute__((unused)) void rt_exec(sqlite3 *db, const char *sql) {
    char *e = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &e);
    if (rc != SQLITE_OK)
        ws_test_fail(__FILE__, __LINE__, "%s: %s (%d)", sql, e ? e : sqlite3_errmsg(db), rc);
    sqlite3_free(e);
}

/* Runs a query returning one integer; fails the test on error. */
static __attribute__((unused)) int64_t rt_int(sqlite3 *db, const char *sql) {
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        ws_test_fail(__FILE__, __LINE__, "%s: %s", sql, sqlite3_errmsg(db));
    int rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) ws_test_fail(__FILE__, __LINE__, "%s: %s", sql, sqlite3_errmsg(db));
    int64_t v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

/* XXH3 of every row of `SELECT * FROM tbl ORDER BY rowid`, inside whatever
** transaction db has open. Returns 0 and sets *out, or an SQLite code. */
static __attribute__((unused)) int rt_table_hash(sqlite3 *db, const char *tbl, uint64_t *out) {
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT * FROM %s ORDER BY rowid", tbl);
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK) return rc;
    uint64_t h = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int n = sqlite3_column_count(st);
        for (int i = 0; i < n; i++) {
            const void *b = sqlite3_column_blob(st, i);
            int len = sqlite3_column_bytes(st, i);
            h = h * 1000003u ^ (b ? ws_hash64(b, (size_t)len) : 0x55u);
        }
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) return rc;
    *out = h;
    return 0;
}

/* Byte comparison of two files; returns 0 if equal. */
static __attribute__((unused)) int rt_files_equal(const char *a, const char *b) {
    wsbuf x = {0}, y = {0};
    int ra = ws_read_file(a, (size_t)1 << 31, &x, NULL);
    int rb = ws_read_file(b, (size_t)1 << 31, &y, NULL);
    int eq = ra == 0 && rb == 0 && x.len == y.len && memcmp(x.p, y.p, x.len) == 0;
    if (!eq)
        fprintf(stderr, "files differ: %s (%zu bytes) vs %s (%zu bytes)\n", a, x.len, b, y.len);
    wsbuf_free(&x);
    wsbuf_free(&y);
    return eq ? 0 : 1;
}

/* ---- the bank invariant readers ------------------------------------------- */
typedef struct {
    sqlite3 *db;
    sqlite3_stmt *sum, *qc, *begin, *commit;
} rt_reader_conn;

static __attribute__((unused)) void rt_reader_close(rt_reader_conn *c) {
    sqlite3_finalize(c->sum);
    sqlite3_finalize(c->qc);
    sqlite3_finalize(c->begin);
    sqlite3_finalize(c->commit);
    sqlite3_close(c->db);
    memset(c, 0, sizeof *c);
}

/* Opens a reader's connection and its statements; the extended result code
** of the first failure (c->db is kept for its message). */
static __attribute__((unused)) int rt_reader_open(rt_reader_conn *c, const char *uri,
                                                  const char *vfs, int busy_ms) {
    memset(c, 0, sizeof *c);
    int rc = sqlite3_open_v2(uri, &c->db, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, vfs);
    if (rc != SQLITE_OK) return rc;
    sqlite3_extended_result_codes(c->db, 1);
    if (busy_ms > 0) sqlite3_busy_timeout(c->db, busy_ms);
    rc = sqlite3_prepare_v2(c->db, "SELECT coalesce(sum(balance),0), count(*) FROM accounts", -1,
                            &c->sum, NULL);
    if (rc == SQLITE_OK) rc = sqlite3_prepare_v2(c->db, "PRAGMA quick_check", -1, &c->qc, NULL);
    if (rc == SQLITE_OK) rc = sqlite3_prepare_v2(c->db, "BEGIN", -1, &c->begin, NULL);
    if (rc == SQLITE_OK) rc = sqlite3_prepare_v2(c->db, "COMMIT", -1, &c->commit, NULL);
    return rc == SQLITE_OK ? rc : sqlite3_extended_errcode(c->db);
}

/* argv: reader DB STOPFILE RESULTFILE TOTAL [long|tight|churn] [VFS] [BUSY_MS]
** ("churn": a new connection for every read transaction; BUSY_MS: a busy
** timeout, none by default.)
** (VFS "walship": read through the walship VFS, as an application that uses
** it for its primary might; read-only without a URL, it ships nothing.)
** Plain read transactions in a tight loop: BEGIN; sum + count; every 8th
** also PRAGMA quick_check; COMMIT. "long": one read transaction for the
** whole run, re-reading its snapshot and checking it never changes.
** Writes "reads=N violations=V busy=B errors=E changes=C" to RESULTFILE. */
static __attribute__((unused)) int rt_reader_main(int argc, char **argv) {
    if (argc < 6) return 2;
    const char *db_path = argv[2], *stop = argv[3], *result = argv[4];
    int64_t total = strtoll(argv[5], NULL, 10);
    int long_reader = argc > 6 && strcmp(argv[6], "long") == 0;
    int churn = argc > 6 && strcmp(argv[6], "churn") == 0; /* a new connection per read */
    const char *vfs = argc > 7 ? argv[7] : NULL;
    int busy_ms = argc > 8 ? atoi(argv[8]) : 0; /* 0: no busy handler */
    char uri[4200];
    snprintf(uri, sizeof uri, "file:%s?mode=ro", db_path);
    if (vfs && strcmp(vfs, "walship") == 0 && walship_register(NULL, 0) != SQLITE_OK) return 3;
    uint64_t reads = 0, violations = 0, busy = 0, errors = 0, changes = 0, recovery = 0;
    char last_err[256] = "";
    rt_reader_conn conn = {0};
    int rc = rt_reader_open(&conn, uri, vfs, busy_ms);
    if (rc != SQLITE_OK) {
        fprintf(stderr, "reader: open %s: %s\n", uri, conn.db ? sqlite3_errmsg(conn.db) : "?");
        return 3;
    }
    sqlite3 *db = conn.db;
    sqlite3_stmt *sum = conn.sum, *qc = conn.qc, *begin = conn.begin, *commit = conn.commit;
    int64_t snap_sum = 0, snap_count = -1;
    uint64_t snap_hash = 0;
    int in_long = 0, ready_done = 0;
    while (!rt_exists(stop)) {
        if (!in_long) {
            rc = sqlite3_step(begin);
            sqlite3_reset(begin);
            if (rc != SQLITE_DONE) goto step_err;
        }
        rc = sqlite3_step(sum);
        if (rc != SQLITE_ROW) {
            sqlite3_reset(sum);
            goto step_err;
        }
        int64_t s = sqlite3_column_int64(sum, 0), c = sqlite3_column_int64(sum, 1);
        sqlite3_reset(sum);
        if (reads == 0 && !ready_done) {
            char ready[4200];
            snprintf(ready, sizeof ready, "%s.ready", result);
            rt_touch(ready);
            ready_done = 1;
        }
        if (c > 0 && s != total) {
            violations++;
            snprintf(last_err, sizeof last_err, "sum %lld != %lld (count %lld)", (long long)s,
                     (long long)total, (long long)c);
        }
        if (long_reader) {
            uint64_t h = 0;
            if ((rc = rt_table_hash(db, "accounts", &h)) != 0) goto step_err;
            if (!in_long) {
                in_long = 1;
                snap_sum = s;
                snap_count = c;
                snap_hash = h;
            } else if (s != snap_sum || c != snap_count || h != snap_hash) {
                changes++;
                snprintf(last_err, sizeof last_err, "long reader's snapshot changed");
            }
            reads++;
            ws_sleep_ms(20);
            continue;
        }
        if ((reads & 7) == 0) {
            rc = sqlite3_step(qc);
            const unsigned char *t = rc == SQLITE_ROW ? sqlite3_column_text(qc, 0) : NULL;
            int ok = t && strcmp((const char *)t, "ok") == 0;
            sqlite3_reset(qc);
            if (rc != SQLITE_ROW) goto step_err;
            if (!ok) {
                violations++;
                snprintf(last_err, sizeof last_err, "quick_check: %s", t ? (const char *)t : "?");
            }
        }
        rc = sqlite3_step(commit);
        sqlite3_reset(commit);
        if (rc != SQLITE_DONE) goto step_err;
        reads++;
        if (churn) {
            rt_reader_close(&conn);
            /* Opening reads the schema, a read transaction like any other:
            ** a wal-index recovery in progress elsewhere answers it
            ** SQLITE_BUSY_RECOVERY (counted, retried); anything else ends
            ** the reader. */
            while ((rc = rt_reader_open(&conn, uri, vfs, busy_ms)) != SQLITE_OK) {
                if (rc == SQLITE_BUSY_RECOVERY) {
                    recovery++;
                } else if ((rc & 0xff) == SQLITE_BUSY) {
                    busy++;
                } else {
                    fprintf(stderr, "reader: reopen: %s\n", conn.db ? sqlite3_errmsg(conn.db) : "?");
                    rt_reader_close(&conn);
                    return 3;
                }
                snprintf(last_err, sizeof last_err, "reopen: rc=%d %s", rc, sqlite3_errmsg(conn.db));
                rt_reader_close(&conn);
                if (rt_exists(stop)) break;
            }
            if (!conn.db) break;
            db = conn.db;
            sum = conn.sum, qc = conn.qc, begin = conn.begin, commit = conn.commit;
        }
        continue;
    step_err:
        /* SQLITE_BUSY_RECOVERY: another connection is rebuilding the
        ** wal-index after a writer died between the two header copies;
        ** counted apart (SQLite's documented answer to that crash). */
        if (rc == SQLITE_BUSY_RECOVERY)
            recovery++;
        else if (rc == SQLITE_BUSY || (rc & 0xff) == SQLITE_BUSY ||
                 strstr(sqlite3_errmsg(db), "locked") != NULL)
            busy++;
        else
            errors++;
        snprintf(last_err, sizeof last_err, "rc=%d %s", rc, sqlite3_errmsg(db));
        if (sqlite3_get_autocommit(db) == 0) sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        in_long = 0;
    }
    if (in_long && db) sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    rt_reader_close(&conn);
    FILE *f = fopen(result, "w");
    if (f) {
        fprintf(f,
                "reads=%llu violations=%llu busy=%llu errors=%llu changes=%llu recovery=%llu "
                "last=\"%s\"\n",
                (unsigned long long)reads, (unsigned long long)violations,
                (unsigned long long)busy, (unsigned long long)errors,
                (unsigned long long)changes, (unsigned long long)recovery, last_err);
        fclose(f);
    }
    return 0;
}

/* Parsed reader result. */
typedef struct rt_reader_result {
    unsigned long long reads, violations, busy, errors, changes, recovery;
    char line[512];
} rt_reader_result;

static __attribute__((unused)) int rt_read_result(const char *path, rt_reader_result *r) {
    memset(r, 0, sizeof *r);
    FILE *f = fopen(path, "r");
    if (f == NULL) return -1;
    if (fgets(r->line, sizeof r->line, f) == NULL) r->line[0] = '\0';
    fclose(f);
    return sscanf(r->line,
                  "reads=%llu violations=%llu busy=%llu errors=%llu changes=%llu recovery=%llu",
                  &r->reads, &r->violations, &r->busy, &r->errors, &r->changes,
                  &r->recovery) == 6
               ? 0
               : -1;
}

/* Waits for reader `pid` (after its stop file was touched) and checks its
** result: it exited 0, read at least min_reads times, and saw no broken
** invariant, SQLITE_BUSY, error or change of a held snapshot; nor
** SQLITE_BUSY_RECOVERY unless allow_recovery (readers without a busy
** handler while the replica is killed between its two header copies). */
static __attribute__((unused)) void rt_reader_finish(int i, pid_t pid, const char *result,
                                                     uint64_t min_reads, int allow_recovery) {
    CHECK_EQ(rt_wait(pid, 30000), 0);
    rt_reader_result r;
    CHECK_EQ(rt_read_result(result, &r), 0);
    fprintf(stderr, "   reader %d: %s", i, r.line);
    CHECK_EQ(r.violations, 0);
    CHECK_EQ(r.busy, 0);
    CHECK_EQ(r.errors, 0);
    CHECK_EQ(r.changes, 0);
    if (!allow_recovery) CHECK_EQ(r.recovery, 0);
    CHECK(r.reads >= min_reads);
}

/* ---- the primary: a bank through the walship VFS ---------------------------------- */
#define RT_NACCOUNTS 100
#define RT_TOTAL (RT_NACCOUNTS * 1000)

/* Percent-encodes a URL for use as a URI parameter value. */
static __attribute__((unused)) void rt_uri_encode(char *out, size_t n, const char *s) {
    size_t o = 0;
    for (; *s && o + 4 < n; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            strchr("-_.~/:", c))
            out[o++] = (char)c;
        else
            o += (size_t)snprintf(out + o, n - o, "%%%02X", c);
    }
    out[o] = '\0';
}

/* Finds "key":<number> or "key":"<hex>" in a flat JSON object. */
static __attribute__((unused)) int rt_json_u64(const char *json, const char *key, uint64_t *out) {
    char pat[128];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = strstr(json, pat);
    if (p == NULL) return -1;
    p += strlen(pat);
    if (*p == '"') *out = strtoull(p + 1, NULL, 16);
    else *out = strtoull(p, NULL, 10);
    return 0;
}

/* argv: primary DB URL NTX DONEFILE [DELAY_US]
** Opens DB through the walship VFS (ship as soon as possible), creates and
** seeds the bank if needed (two commits), runs NTX transfers (each one
** transaction; now and then an account opened or closed with balance 0, or
** its padding resized, so pages split and merge), waits until everything is
** in the store and writes "<generation hex> <txid> <accounts hash hex>
** <commits>" to DONEFILE: the generation and TXID from PRAGMA
** walship_status, what the test itself can check them against -- the
** content (rt_table_hash of accounts) and how many commits this run made. */
static __attribute__((unused)) int rt_primary_main(int argc, char **argv) {
    if (argc < 6) return 2;
    const char *dbp = argv[2], *url = argv[3], *done = argv[5];
    long ntx = strtol(argv[4], NULL, 10);
    long delay_us = argc > 6 ? strtol(argv[6], NULL, 10) : 0;
    if (walship_register(NULL, 0) != SQLITE_OK) return 3;
    char enc[4096], uri[8192];
    rt_uri_encode(enc, sizeof enc, url);
    snprintf(uri, sizeof uri, "file:%s?walship_url=%s&walship_ship_interval=0", dbp, enc);
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(uri, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_URI,
                        "walship") != SQLITE_OK) {
        fprintf(stderr, "primary: open: %s\n", sqlite3_errmsg(db));
        return 3;
    }
    sqlite3_busy_timeout(db, 10000);
    long commits = ntx;
    if (rt_int(db, "SELECT count(*) FROM sqlite_schema WHERE name = 'accounts'") == 0) {
        rt_exec(db, "CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INTEGER NOT NULL, "
                    "pad BLOB)");
        commits++;
    }
    if (rt_int(db, "SELECT count(*) FROM accounts") == 0) {
        commits++;
        rt_exec(db, "BEGIN");
        char sql[200];
        for (int i = 1; i <= RT_NACCOUNTS; i++) {
            snprintf(sql, sizeof sql, "INSERT INTO accounts VALUES(%d, 1000, randomblob(%d))", i,
                     100 + (i * 37) % 900);
            rt_exec(db, sql);
        }
        rt_exec(db, "COMMIT");
    }
    uint64_t seed = (uint64_t)ws_now_us() ^ (uint64_t)getpid();
    for (long i = 0; i < ntx; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        /* Every transfer changes two balances: a transaction that changes
        ** nothing writes no WAL commit (SQLite skips identical rows), and
        ** each one here must be one commit, one TXID. */
        int a = 1 + (int)((seed >> 33) % RT_NACCOUNTS), b = 1 + (int)((seed >> 17) % RT_NACCOUNTS);
        if (b == a) b = a % RT_NACCOUNTS + 1;
        int amt = 1 + (int)((seed >> 45) % 99), kind = (int)((seed >> 7) % 20);
        char sql[300];
        rt_exec(db, "BEGIN IMMEDIATE");
        snprintf(sql, sizeof sql,
                 "UPDATE accounts SET balance=balance-%d WHERE id=%d; "
                 "UPDATE accounts SET balance=balance+%d WHERE id=%d",
                 amt, a, amt, b);
        rt_exec(db, sql);
        if (kind == 0) {
            snprintf(sql, sizeof sql, "UPDATE accounts SET pad=randomblob(%d) WHERE id=%d",
                     (int)((seed >> 20) % 6000), a);
            rt_exec(db, sql);
        } else if (kind == 1) {
            snprintf(sql, sizeof sql,
                     "INSERT INTO accounts(balance, pad) VALUES(0, randomblob(%d))",
                     (int)((seed >> 22) % 3000));
            rt_exec(db, sql);
        } else if (kind == 2) {
            rt_exec(db, "DELETE FROM accounts WHERE id IN (SELECT id FROM accounts WHERE "
                        "balance=0 AND id>100 ORDER BY id LIMIT 1)");
        }
        rt_exec(db, "COMMIT");
        if (delay_us > 0) usleep((useconds_t)delay_us);
    }
    if (rt_int(db, "SELECT walship_flush(120000)") != 1) {
        fprintf(stderr, "primary: flush timed out\n");
        return 4;
    }
    sqlite3_stmt *st = NULL;
    char line[160] = "";
    uint64_t hash = 0;
    if (rt_table_hash(db, "accounts", &hash) != 0) return 8;
    if (sqlite3_prepare_v2(db, "PRAGMA walship_status", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
        const char *j = (const char *)sqlite3_column_text(st, 0);
        uint64_t gen = 0, txid = 0;
        if (j && rt_json_u64(j, "generation", &gen) == 0 && rt_json_u64(j, "shipped_txid", &txid) == 0)
            snprintf(line, sizeof line, "%016llx %llu %016llx %ld\n", (unsigned long long)gen,
                     (unsigned long long)txid, (unsigned long long)hash, commits);
    }
    sqlite3_finalize(st);
    if (rt_int(db, "SELECT sum(balance) FROM accounts") != RT_TOTAL) return 5;
    sqlite3_close(db);
    if (line[0] == '\0') return 6;
    FILE *f = fopen(done, "w");
    if (f == NULL) return 7;
    fputs(line, f);
    fclose(f);
    return 0;
}

/* What a primary run left in its DONEFILE. */
typedef struct rt_done {
    uint64_t gen, txid; /* from walship_status */
    uint64_t hash;      /* rt_table_hash of its accounts at the end */
    uint64_t commits;   /* transactions this run committed */
} rt_done;

static __attribute__((unused)) void rt_read_done_full(const char *path, rt_done *d) {
    FILE *f = fopen(path, "r");
    unsigned long long g = 0, t = 0, h = 0, c = 0;
    if (f == NULL || fscanf(f, "%llx %llu %llx %llu", &g, &t, &h, &c) != 4)
        ws_test_fail(__FILE__, __LINE__, "no primary result in %s", path);
    fclose(f);
    d->gen = g;
    d->txid = t;
    d->hash = h;
    d->commits = c;
}

/* Reads a primary's DONEFILE: its generation and last TXID. */
static __attribute__((unused)) void rt_read_done(const char *path, uint64_t *gen, uint64_t *txid) {
    rt_done d;
    rt_read_done_full(path, &d);
    *gen = d.gen;
    *txid = d.txid;
}

/* Checks that a reader opening the replica now sees exactly the accounts
** the primary recorded (hash from its DONEFILE). */
static __attribute__((unused)) void rt_check_replica_content(const char *replica, uint64_t hash) {
    char uri[4200];
    snprintf(uri, sizeof uri, "file:%s?mode=ro", replica);
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(uri, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, "unix") != SQLITE_OK)
        ws_test_fail(__FILE__, __LINE__, "open %s: %s", uri, db ? sqlite3_errmsg(db) : "?");
    sqlite3_busy_timeout(db, 5000);
    rt_exec(db, "BEGIN");
    uint64_t h = 0;
    int rc = rt_table_hash(db, "accounts", &h);
    if (rc != 0) ws_test_fail(__FILE__, __LINE__, "read %s: %s", replica, sqlite3_errmsg(db));
    rt_exec(db, "COMMIT");
    sqlite3_close(db);
    if (h != hash)
        ws_test_fail(__FILE__, __LINE__,
                     "readers of %s see accounts with hash %016llx; the primary left %016llx",
                     replica, (unsigned long long)h, (unsigned long long)hash);
}

/* Runs a primary to completion. */
static __attribute__((unused)) void rt_run_primary(const char *db, const char *url, long ntx,
                                                    const char *done, long delay_us,
                                                    uint64_t *gen, uint64_t *txid) {
    char n[32], d[32];
    snprintf(n, sizeof n, "%ld", ntx);
    snprintf(d, sizeof d, "%ld", delay_us);
    unlink(done);
    pid_t pid = rt_spawn_self(NULL, "primary", db, url, n, done, d, (const char *)NULL);
    int st = rt_wait(pid, 240000);
    if (st != 0) ws_test_fail(__FILE__, __LINE__, "primary exited with %d", st);
    rt_read_done(done, gen, txid);
}

/* The replica's status.json, read into buf (0 if present). */
static __attribute__((unused)) int rt_replica_status(const char *replica, char *buf, size_t n) {
    char path[4200];
    snprintf(path, sizeof path, "%s-walship-replica/status.json", replica);
    wsbuf b = {0};
    int rc = ws_read_file(path, 1 << 20, &b, NULL);
    if (rc == 0) {
        size_t k = b.len < n - 1 ? b.len : n - 1;
        memcpy(buf, b.p, k);
        buf[k] = '\0';
    }
    wsbuf_free(&b);
    return rc;
}

static __attribute__((unused)) uint64_t rt_status_u64(const char *replica, const char *key) {
    char buf[16384];
    uint64_t v = 0;
    if (rt_replica_status(replica, buf, sizeof buf) == 0) rt_json_u64(buf, key, &v);
    return v;
}

/* Waits until the replica shows generation gen at TXID >= txid. */
static __attribute__((unused)) void rt_wait_replica(const char *replica, uint64_t gen,
                                                     uint64_t txid, int64_t timeout_ms) {
    int64_t deadline = ws_mono_ms() + timeout_ms;
    char buf[16384];
    uint64_t g = 0, t = 0;
    while (ws_mono_ms() < deadline) {
        if (rt_replica_status(replica, buf, sizeof buf) == 0 &&
            rt_json_u64(buf, "generation", &g) == 0 && rt_json_u64(buf, "applied_txid", &t) == 0 &&
            g == gen && t >= txid)
            return;
        ws_sleep_ms(20);
    }
    ws_test_fail(__FILE__, __LINE__,
                 "replica %s did not reach generation %016llx TXID %llu (at %016llx %llu): %s",
                 replica, (unsigned long long)gen, (unsigned long long)txid,
                 (unsigned long long)g, (unsigned long long)t, buf);
}

/* Starts `walship replica URL PATH --poll-ms 20 ...extra` with its output
** in LOG. The previous replica process must have ended: its status file is
** removed so that waits see only the new one's. */
static __attribute__((unused)) pid_t rt_start_replica(const char *url, const char *path,
                                                      const char *log, const char *extra1,
                                                      const char *extra2) {
    const char *argv[16];
    int n = 0;
    argv[n++] = ws_test_env("WALSHIP_BIN");
    argv[n++] = "replica";
    argv[n++] = url;
    argv[n++] = path;
    argv[n++] = "--poll-ms";
    argv[n++] = "20";
    /* status read from now on must come from the new process */
    char st[4200];
    snprintf(st, sizeof st, "%s-walship-replica/status.json", path);
    unlink(st);
    if (extra1) argv[n++] = extra1;
    if (extra2) argv[n++] = extra2;
    argv[n] = NULL;
    return rt_spawn(log, argv);
}

/* Occurrences of needle in a file. */
static __attribute__((unused)) int rt_count_in_file(const char *path, const char *needle) {
    wsbuf b = {0};
    int n = 0;
    if (ws_read_file(path, 1 << 26, &b, NULL) == 0 && wsbuf_append(&b, "", 1) == 0)
        for (const char *p = (const char *)b.p; (p = strstr(p, needle)) != NULL; p++) n++;
    wsbuf_free(&b);
    return n;
}

/* Waits for a file to appear. */
static __attribute__((unused)) void rt_wait_file(const char *path, int64_t timeout_ms) {
    int64_t deadline = ws_mono_ms() + timeout_ms;
    while (!rt_exists(path)) {
        if (ws_mono_ms() > deadline) ws_test_fail(__FILE__, __LINE__, "%s did not appear", path);
        ws_sleep_ms(10);
    }
}

#endif
