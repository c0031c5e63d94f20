/*
** soak.c -- walship under everything at once, for half an hour (issue 7:
** "a soak run ends with restore and replica equal to the primary byte for
** byte").
**
** USAGE
**   scripts/test --soak                      (builds, starts an RGW, runs this)
**   WALSHIP_TEST_S3_URL=s3://BUCKET?endpoint=http://127.0.0.1:PORT \
**   WALSHIP_BIN=build/walship build/tests/walship_soak
**
**   WALSHIP_SOAK_SECONDS   how long the chaos lasts (default 1800)
**   WALSHIP_SOAK_WRITERS   walship writer processes, 2 or 3 (default 3)
**   WALSHIP_SOAK_PACE_MS   a writer pauses 0..N ms between transactions
**                          (default 100): the workload's rate, which keeps
**                          the store's share of the run to tens of MB
**   WALSHIP_TEST_SEED      replay the random decisions of an earlier run
**                          (the seed is printed first); timing still differs
**   WALSHIP_TEST_KEEP=1    keep the directory even when everything held
**
** WHAT RUNS, ALL AT ONCE
**   - Walship writers (this program again, role "writer"): each commits one
**     to three rows per transaction into t, seq = max(seq) + 1 under BEGIN
**     IMMEDIATE, and tells the soak each acknowledged seq range on a pipe.
**     Now and then a RESTART or TRUNCATE checkpoint, a transaction with an
**     overflow chain or one that frees one, a short walship_flush, or
**     closing and reopening the connection. They ship through a fault
**     proxy (tests/faultproxy.h) with short S3 timeouts, so an outage is
**     noticed within seconds.
**   - The killer: every 2-6 s a random writer is SIGKILLed and restarted.
**   - Plain SQLite processes (no walship): readers (every 1-4 s) that
**     open, check and close (as the last connection they checkpoint and
**     delete the WAL), and writers (every 10-30 s) that insert into u and
**     close, TRUNCATE-checkpoint and close, or are SIGKILLed (after their
**     commits, or at any moment).
**   - Blackouts: every 1-3 minutes every walship writer is killed, a plain
**     writer commits and a plain reader closes as the last connection (the
**     WAL is gone while no walship process ran; a new generation may
**     follow), then the writers come back.
**   - Store faults: the proxy refuses or blackholes for 2-10 s, then passes
**     for 10-40 s.
**   - A replica (`walship replica`, child process of the CLI, reading the
**     store directly) with two plain-SQLite readers on file:rep.db?mode=ro
**     in read transactions (counts, PRAGMA quick_check) with a busy
**     timeout. Any SQLITE_BUSY or other error counts against the run, as
**     does a read where count(t) != max(seq) or either goes backwards.
**   A progress line every minute: rows acknowledged, kills, outages,
**   generations, the primary's shipping lag and the replica's lag.
**
** AT THE END
**   Chaos stops (proxy to pass, plain processes stopped, writers told to
**   stop). A final walship process checks the primary (integrity_check,
**   count(t) = max(seq)), TRUNCATE-checkpoints, and walship_flush must
**   return 1. Then:
**   - latest restore equals the primary byte for byte, passes
**     integrity_check, and holds every acknowledged seq of t and key of u;
**   - restores at first, last and sampled TXIDs of every retained
**     generation pass integrity_check with count(t) = max(seq);
**   - the replica reaches the final generation and TXID (`walship status
**     rep.db --json`); its readers are stopped and saw nothing wrong; the
**     replica is stopped with SIGTERM (exit 0) and its file equals the
**     primary byte for byte;
**   - every new generation the walship processes logged has a reason a
**     process outside walship explains (outsider_reasons); a SIGKILL, an
**     outage or walship's own checkpoints never break the history.
**   Exit 0 only if everything held. Failures are printed as they are found
**   ("soak FAIL: ..."), the run goes on to the end, and the directory is
**   kept (its path printed): events.log (what the soak did, with times),
**   writer-N.log, plain.log, final.log (WALSHIP_LOG=info of the walship
**   children), replica.log, reader-N.txt.
**
** IMPLEMENTATION NOTES
**   One thread runs the soak: a poll() loop over the writers' pipes with
**   deadlines for every timer (the fault proxy has its own thread).
**   Children are started with rt_spawn_self (tests/replica_testlib.h:
**   tracked, killed at exit, output into a log) and reaped with
**   rt_wait(pid, 0), so no pid is ever signalled after it was reaped.
**   The store keeps 10 minutes (walship_retention=10m): old snapshots and
**   generations are deleted while the soak runs, which keeps the test
**   server's memory bounded and exercises retention too.
*/
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "dbutil.h"
#include "faultproxy.h"
#include "harness.h"
#include "replica_testlib.h"
#include "walship.h"

#define MAX_WRITERS 3
#define MAX_PLAIN 16
#define RETENTION "10m"
/* u keys a plain writer may use per transaction (it inserts 1..40 rows) */
#define KEYS_PER_TX 64

/* ---- small things shared by every role --------------------------------------------- */

/* A child's random numbers: the harness PRNG seeded with the seed the soak
** drew for it (printed on the child's log), never with the soak's own
** WALSHIP_TEST_SEED, which every child would otherwise share. */
static void child_seed(const char *arg) {
    unsetenv("WALSHIP_TEST_SEED");
    ws_test_seed(strtoull(arg, NULL, 10));
}

/* Sends one acknowledgement {first, last} (inclusive) to the soak; a child
** whose soak is gone exits. */
static void tell(int fd, uint64_t first, uint64_t last) {
    uint64_t m[2] = {first, last};
    if (ws_write_all(fd, m, sizeof m) != 0) _exit(3);
}

/* A child's fatal error: one line on its log, then exit(code). */
static void die(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
static void die(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "soak child pid=%d: ", (int)getpid());
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    exit(code);
}

/* ---- role "writer": a walship writer -------------------------------------------- */

static sqlite3 *writer_open(const char *path, const char *url, const char *extra) {
    sqlite3 *db = db_open_walship(path, url, extra);
    sqlite3_busy_timeout(db, 30000);
    static const char *const ac[] = {"PRAGMA wal_autocheckpoint=8", "PRAGMA wal_autocheckpoint=100",
                                     "PRAGMA wal_autocheckpoint=1000"};
    db_exec(db, ac[ws_test_rand_below(3)]);
    if (ws_test_rand_below(3) == 0) db_exec(db, "PRAGMA cache_size=16"); /* big transactions spill */
    return db;
}

/* writer PATH URL FD SEED STOPFILE EXTRA SLOT PACE_MS
** Commits until STOPFILE appears (then closes and exits 0) or it is killed.
** Every transaction adds 1..3 rows to t (seq = max(seq) + 1 each) and is
** acknowledged on FD as {first seq, last seq} after COMMIT returned OK.
** Any error but a BUSY at BEGIN (retried) ends it with a non-zero status. */
static int writer_main(char **argv) {
    const char *path = argv[2], *url = argv[3], *stop = argv[6], *extra = argv[7];
    int fd = atoi(argv[4]), slot = atoi(argv[8]);
    int64_t pace = atoll(argv[9]);
    child_seed(argv[5]);
    /* An outage must be noticed within seconds (as in test_pipeline_outage). */
    setenv("WALSHIP_S3_TIMEOUT_MS", "1000", 1);
    setenv("WALSHIP_S3_CONNECT_TIMEOUT_MS", "500", 1);
    setenv("WALSHIP_S3_RETRIES", "2", 1);
    if (getenv("WALSHIP_LOG") == NULL) setenv("WALSHIP_LOG", "info", 1);
    signal(SIGPIPE, SIG_IGN);
    fprintf(stderr, "soak writer %d pid=%d start\n", slot, (int)getpid());
    sqlite3 *db = writer_open(path, url, extra);
    sqlite3_stmt *ins = NULL;
    uint64_t busy = 0;
    for (uint64_t n = 0;; n++) {
        if (n % 16 == 0 && rt_exists(stop)) break;
        if (ins == NULL &&
            sqlite3_prepare_v2(db,
                               "INSERT INTO t(seq, writer, pad) SELECT coalesce(max(seq), 0) + 1, "
                               "?1, CASE WHEN ?3 > 0 THEN zeroblob(?3) ELSE randomblob(?2) END "
                               "FROM t",
                               -1, &ins, NULL) != SQLITE_OK)
            die(4, "prepare: %s", sqlite3_errmsg(db));
        uint64_t r = ws_test_rand_below(1000);
        int rc = sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
        if (rc == SQLITE_BUSY) {
            busy++;
            fprintf(stderr, "soak writer %d: BEGIN IMMEDIATE busy (%" PRIu64 " so far)\n", slot, busy);
            continue;
        }
        if (rc != SQLITE_OK) die(4, "BEGIN IMMEDIATE: %s", sqlite3_errmsg(db));
        int rows = 1 + (int)ws_test_rand_below(3);
        int64_t first = 0, last = 0;
        for (int k = 0; k < rows; k++) {
            sqlite3_bind_int(ins, 1, slot);
            /* A few random bytes; 1 in 100 rows carries an overflow chain
            ** (zeros: the store holds the soak's data for tens of MB) */
            sqlite3_bind_int(ins, 2, (int)ws_test_rand_below(33));
            sqlite3_bind_int(ins, 3, r < 10 ? 3000 + (int)ws_test_rand_below(8000) : 0);
            if (sqlite3_step(ins) != SQLITE_DONE) die(4, "insert: %s", sqlite3_errmsg(db));
            sqlite3_reset(ins);
            last = sqlite3_last_insert_rowid(db);
            if (first == 0) first = last;
        }
        if (r >= 10 && r < 20) {
            /* frees an overflow chain if that row has one: free pages to reuse */
            char sql[128];
            snprintf(sql, sizeof sql, "UPDATE t SET pad = NULL WHERE seq = %" PRIu64,
                     1 + ws_test_rand_below((uint64_t)last));
            if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK)
                die(4, "%s: %s", sql, sqlite3_errmsg(db));
        }
        if (sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
            die(5, "COMMIT: %s", sqlite3_errmsg(db));
        tell(fd, (uint64_t)first, (uint64_t)last);
        if (r >= 20 && r < 50) {
            int mode = r < 35 ? SQLITE_CHECKPOINT_RESTART : SQLITE_CHECKPOINT_TRUNCATE;
            rc = sqlite3_wal_checkpoint_v2(db, "main", mode, NULL, NULL);
            if (rc != SQLITE_OK && rc != SQLITE_BUSY)
                die(6, "checkpoint %d: %s", mode, sqlite3_errmsg(db));
        } else if (r >= 50 && r < 55) {
            sqlite3_finalize(ins);
            ins = NULL;
            if (sqlite3_close(db) != SQLITE_OK) die(7, "close: %s", sqlite3_errmsg(db));
            db = writer_open(path, url, extra);
        } else if (r >= 55 && r < 60) {
            walship_flush(path, 100); /* a flush cut short by its timeout now and then */
        }
        if (pace > 0) ws_sleep_ms((int64_t)ws_test_rand_below((uint64_t)pace + 1)); /* the workload's rate */
    }
    sqlite3_finalize(ins);
    if (sqlite3_close(db) != SQLITE_OK) die(7, "close: %s", sqlite3_errmsg(db));
    fprintf(stderr, "soak writer %d pid=%d stopped\n", slot, (int)getpid());
    return 0;
}

/* ---- roles "plainwriter" and "plainreader": SQLite without walship ---------------- */

/* plainwriter PATH FD KEYBASE NTX MODE SEED
** NTX transactions of 1..40 rows into u with keys from KEYBASE on (at most
** KEYS_PER_TX per transaction), each acknowledged on FD as {first, last}
** key; then MODE: "close" closes (as the last connection: checkpoint, WAL
** deleted), "truncate" runs a TRUNCATE checkpoint first, "hang" waits to be
** killed (its WAL stays). */
static int plainwriter_main(char **argv) {
    const char *path = argv[2], *mode = argv[6];
    int fd = atoi(argv[3]);
    uint64_t key = strtoull(argv[4], NULL, 10);
    int ntx = atoi(argv[5]);
    child_seed(argv[7]);
    signal(SIGPIPE, SIG_IGN);
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK)
        die(4, "plain writer: open %s: %s", path, sqlite3_errmsg(db));
    sqlite3_busy_timeout(db, 30000);
    if (ws_test_rand_below(2)) db_exec(db, "PRAGMA wal_autocheckpoint=0");
    for (int i = 0; i < ntx; i++) {
        uint64_t rows = 1 + ws_test_rand_below(40);
        char sql[400];
        snprintf(sql, sizeof sql,
                 "BEGIN IMMEDIATE; WITH RECURSIVE c(x) AS (SELECT %" PRIu64
                 " UNION ALL SELECT x + 1 FROM c WHERE x < %" PRIu64 ") "
                 "INSERT INTO u(k, v) SELECT x, randomblob(%d) FROM c; COMMIT",
                 key, key + rows - 1, (int)ws_test_rand_below(300));
        char *err = NULL;
        if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK)
            die(5, "plain writer: %s: %s", sql, err ? err : "?");
        tell(fd, key, key + rows - 1);
        key += KEYS_PER_TX;
    }
    if (strcmp(mode, "hang") == 0)
        for (;;) pause();
    if (strcmp(mode, "truncate") == 0) {
        int rc = sqlite3_wal_checkpoint_v2(db, "main", SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
        if (rc != SQLITE_OK && rc != SQLITE_BUSY)
            die(6, "plain writer: TRUNCATE checkpoint: %s", sqlite3_errmsg(db));
    }
    if (sqlite3_close(db) != SQLITE_OK) die(7, "plain writer: close: %s", sqlite3_errmsg(db));
    return 0;
}

/* plainreader PATH: opens, checks count(t) = max(seq) in one read
** transaction, closes (as the last connection its close checkpoints and
** deletes the WAL). Exit 0 when all held. */
static int plainreader_main(char **argv) {
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(argv[2], &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK)
        die(4, "plain reader: open %s: %s", argv[2], sqlite3_errmsg(db));
    sqlite3_busy_timeout(db, 30000);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "SELECT count(*), coalesce(max(seq), 0) FROM t", -1, &st, NULL) !=
            SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW)
        die(5, "plain reader: %s", sqlite3_errmsg(db));
    int64_t c = sqlite3_column_int64(st, 0), m = sqlite3_column_int64(st, 1);
    sqlite3_finalize(st);
    if (c != m) die(6, "plain reader: the primary has %" PRId64 " rows up to seq %" PRId64, c, m);
    if (sqlite3_close(db) != SQLITE_OK) die(7, "plain reader: close: %s", sqlite3_errmsg(db));
    return 0;
}

/* ---- role "repreader": a plain reader of the replica ---------------------------- */

/* Opens the replica read-only with a busy timeout and prepares the reads
** in an rt_reader_conn (replica_testlib.h; closed by rt_reader_close), its
** `sum` statement reading this soak's counts instead: count(t), max(seq),
** count(u). SQLITE_OK or the extended code of the first failure (c->db kept
** for its message). */
static int repread_open(rt_reader_conn *c, const char *uri) {
    memset(c, 0, sizeof *c);
    int rc = sqlite3_open_v2(uri, &c->db, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, "unix");
    if (c->db) sqlite3_extended_result_codes(c->db, 1);
    if (rc != SQLITE_OK) return c->db ? sqlite3_extended_errcode(c->db) : rc;
    sqlite3_busy_timeout(c->db, 5000);
    if ((rc = sqlite3_prepare_v2(c->db, "BEGIN", -1, &c->begin, NULL)) == SQLITE_OK &&
        (rc = sqlite3_prepare_v2(c->db,
                                 "SELECT (SELECT count(*) FROM t), (SELECT coalesce(max(seq), 0) "
                                 "FROM t), (SELECT count(*) FROM u)",
                                 -1, &c->sum, NULL)) == SQLITE_OK &&
        (rc = sqlite3_prepare_v2(c->db, "PRAGMA quick_check", -1, &c->qc, NULL)) == SQLITE_OK)
        rc = sqlite3_prepare_v2(c->db, "COMMIT", -1, &c->commit, NULL);
    return rc == SQLITE_OK ? rc : sqlite3_extended_errcode(c->db);
}

typedef struct repcount {
    unsigned long long reads, violations, busy, errors, recovery, opens, qchecks;
    int64_t max_seq, rows_u;
    char last[256];
} repcount;

/* Writes the counters in rt_reader_main's format (rt_read_result parses
** them; "changes" is always 0 here), through a temp file and a rename so
** the soak never reads half a line. */
static void repcount_write(const repcount *k, const char *result) {
    char tmp[4300];
    snprintf(tmp, sizeof tmp, "%s.tmp", result);
    FILE *f = fopen(tmp, "w");
    if (f == NULL) return;
    fprintf(f,
            "reads=%llu violations=%llu busy=%llu errors=%llu changes=0 recovery=%llu last=\"%s\" "
            "opens=%llu quick_checks=%llu max_seq=%" PRId64 " rows_u=%" PRId64 "\n",
            k->reads, k->violations, k->busy, k->errors, k->recovery, k->last, k->opens,
            k->qchecks, k->max_seq, k->rows_u);
    fclose(f);
    rename(tmp, result);
}

/* Counts a failed SQLite call the way rt_reader_main does. */
static void repcount_error(repcount *k, sqlite3 *db, int rc, const char *what) {
    if (rc == SQLITE_BUSY_RECOVERY)
        k->recovery++;
    else if ((rc & 0xff) == SQLITE_BUSY || (db && strstr(sqlite3_errmsg(db), "locked")))
        k->busy++;
    else
        k->errors++;
    snprintf(k->last, sizeof k->last, "%s: rc=%d %s", what, rc, db ? sqlite3_errmsg(db) : "?");
}

/* repreader REPLICA STOPFILE RESULTFILE SEED
** Read transactions on file:REPLICA?mode=ro until STOPFILE appears: counts
** of t and u, PRAGMA quick_check about every 2 s, a new connection every
** 50-150 reads. A violation: count(t) != max(seq), quick_check not ok, or
** max(seq) or count(u) going backwards (the replica shows the primary's
** commits in order and never an older state). Every 5 s and at the end the
** counters go to RESULTFILE; "RESULTFILE.ready" appears after the first
** read. */
static int repreader_main(char **argv) {
    const char *rep = argv[2], *stop = argv[3], *result = argv[4];
    child_seed(argv[5]);
    char uri[4200];
    snprintf(uri, sizeof uri, "file:%s?mode=ro", rep);
    repcount k;
    memset(&k, 0, sizeof k);
    rt_reader_conn c = {0};
    int64_t next_qc = ws_mono_ms() + 2000, next_report = ws_mono_ms() + 5000;
    uint64_t reopen_after = 50 + ws_test_rand_below(100);
    while (!rt_exists(stop)) {
        if (c.db == NULL) {
            k.opens++;
            int rc = repread_open(&c, uri);
            if (rc != SQLITE_OK) {
                repcount_error(&k, c.db, rc, "open");
                rt_reader_close(&c);
                ws_sleep_ms(10); /* pacing the retries of a failed open */
                continue;
            }
        }
        int rc = sqlite3_step(c.begin);
        sqlite3_reset(c.begin);
        if (rc != SQLITE_DONE) {
            repcount_error(&k, c.db, rc, "BEGIN");
            continue;
        }
        rc = sqlite3_step(c.sum);
        if (rc == SQLITE_ROW) {
            int64_t nt = sqlite3_column_int64(c.sum, 0), mx = sqlite3_column_int64(c.sum, 1);
            int64_t nu = sqlite3_column_int64(c.sum, 2);
            if (nt != mx || mx < k.max_seq || nu < k.rows_u) {
                k.violations++;
                snprintf(k.last, sizeof k.last,
                         "read %" PRId64 " rows of t up to seq %" PRId64 ", %" PRId64
                         " of u; before: seq %" PRId64 ", %" PRId64 " of u",
                         nt, mx, nu, k.max_seq, k.rows_u);
            }
            k.max_seq = mx;
            k.rows_u = nu;
            rc = SQLITE_DONE;
        }
        sqlite3_reset(c.sum);
        if (rc == SQLITE_DONE && ws_mono_ms() >= next_qc) {
            rc = sqlite3_step(c.qc);
            const char *t = rc == SQLITE_ROW ? (const char *)sqlite3_column_text(c.qc, 0) : NULL;
            if (rc == SQLITE_ROW && (t == NULL || strcmp(t, "ok") != 0)) {
                k.violations++;
                snprintf(k.last, sizeof k.last, "quick_check: %s", t ? t : "?");
            }
            if (rc == SQLITE_ROW) rc = SQLITE_DONE;
            sqlite3_reset(c.qc);
            k.qchecks++;
            next_qc = ws_mono_ms() + 2000;
        }
        if (rc != SQLITE_DONE) {
            repcount_error(&k, c.db, rc, "read");
            sqlite3_exec(c.db, "ROLLBACK", NULL, NULL, NULL);
            continue;
        }
        rc = sqlite3_step(c.commit);
        sqlite3_reset(c.commit);
        if (rc != SQLITE_DONE) {
            repcount_error(&k, c.db, rc, "COMMIT");
            sqlite3_exec(c.db, "ROLLBACK", NULL, NULL, NULL);
            continue;
        }
        if (k.reads++ == 0) {
            char ready[4300];
            snprintf(ready, sizeof ready, "%s.ready", result);
            rt_touch(ready);
        }
        if (--reopen_after == 0) {
            rt_reader_close(&c);
            reopen_after = 50 + ws_test_rand_below(100);
        }
        if (ws_mono_ms() >= next_report) {
            repcount_write(&k, result);
            next_report = ws_mono_ms() + 5000;
        }
        ws_sleep_ms((int64_t)ws_test_rand_below(6)); /* the readers' rate: two of them share two cores */
    }
    rt_reader_close(&c);
    repcount_write(&k, result);
    return 0;
}

/* ---- role "final": the last walship process ------------------------------------- */

/* final PATH URL EXTRA OUTFILE
** Opens the primary through walship (which ships what the plain processes
** left), checks it, TRUNCATE-checkpoints, and walship_flush must return 1.
** Writes "<generation hex> <txid> <shipped_txid> <max seq> <rows of u>" to
** OUTFILE and exits 0; any failure exits non-zero saying why. */
static int final_main(char **argv) {
    const char *path = argv[2], *url = argv[3], *extra = argv[4], *out = argv[5];
    if (getenv("WALSHIP_LOG") == NULL) setenv("WALSHIP_LOG", "info", 1);
    fprintf(stderr, "soak final pid=%d start\n", (int)getpid());
    sqlite3 *db = db_open_walship(path, url, extra);
    sqlite3_busy_timeout(db, 60000);
    const char *ic = db_integrity(db);
    if (strcmp(ic, "ok") != 0) die(4, "the primary fails integrity_check: %s", ic);
    int64_t cnt = db_int(db, "SELECT count(*) FROM t"), max = db_int(db, "SELECT max(seq) FROM t");
    if (cnt != max) die(5, "the primary has %" PRId64 " rows up to seq %" PRId64, cnt, max);
    int rc = sqlite3_wal_checkpoint_v2(db, "main", SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
    if (rc != SQLITE_OK) die(6, "TRUNCATE checkpoint: %d %s", rc, sqlite3_errmsg(db));
    if (!db_flush_or_say(path, db, 600000, "soak final")) die(7, "walship_flush failed");
    char *js = db_status_json(db);
    uint64_t gen = 0, txid = 0, shipped = 0;
    if (rt_json_u64(js, "generation", &gen) || rt_json_u64(js, "txid", &txid) ||
        rt_json_u64(js, "shipped_txid", &shipped))
        die(8, "no generation/txid in the status: %s", js);
    free(js);
    int64_t nu = db_int(db, "SELECT count(*) FROM u");
    if (sqlite3_close(db) != SQLITE_OK) die(9, "close: %s", sqlite3_errmsg(db));
    FILE *f = fopen(out, "w");
    if (f == NULL) die(10, "%s: %s", out, strerror(errno));
    fprintf(f, "%016" PRIx64 " %" PRIu64 " %" PRIu64 " %" PRId64 " %" PRId64 "\n", gen, txid,
            shipped, max, nu);
    fclose(f);
    return 0;
}

/* ---- the soak: what it knows ------------------------------------------------------ */

/* A set of positive integers (acknowledged seqs, acknowledged keys) as a
** bitmap; grows up to 2^31 members' worth (256 MiB would be a runaway). */
typedef struct seqset {
    uint8_t *bits;
    uint64_t cap; /* bits */
    uint64_t count, max;
} seqset;

static void seqset_add(seqset *s, uint64_t v) {
    if (v >= s->cap) {
        uint64_t cap = s->cap ? s->cap : 1 << 16;
        while (cap <= v) cap *= 2;
        if (cap > (uint64_t)1 << 31) ws_test_fail(__FILE__, __LINE__, "value %" PRIu64 " too large", v);
        uint8_t *b = realloc(s->bits, cap / 8);
        CHECK(b != NULL);
        memset(b + s->cap / 8, 0, (cap - s->cap) / 8);
        s->bits = b;
        s->cap = cap;
    }
    if (s->bits[v / 8] & (1u << (v % 8))) return;
    s->bits[v / 8] |= (uint8_t)(1u << (v % 8));
    s->count++;
    if (v > s->max) s->max = v;
}

static int seqset_has(const seqset *s, uint64_t v) {
    return v < s->cap && (s->bits[v / 8] & (1u << (v % 8))) != 0;
}

enum { K_WRITER = 1, K_PLAINW, K_PLAINR, K_REPLICA, K_READER };

/* A child process the soak watches. */
typedef struct proc {
    pid_t pid;       /* 0: slot free */
    int kind;        /* K_* */
    int rfd;         /* its acknowledgements, -1: none */
    uint8_t part[16];
    size_t npart;    /* bytes of a message not yet complete */
    int killed;      /* SIGKILLed by the soak */
    int64_t kill_at; /* plain writers: SIGKILL then (0: never) */
    int64_t started;
    int slot;        /* writers: 0..MAX_WRITERS-1 */
} proc;

static struct soak {
    char dir[1024], path[1100], out[1100], rep[1100], final_out[1100];
    char url[2048], url_proxy[2048], extra[256], stop_writers[1100], stop_readers[1100];
    char log_plain[1100], log_replica[1100], log_final[1100], events[1100];
    faultproxy *fp;
    FILE *ev;
    int nwriters;
    int64_t pace_ms, t0;
    proc writers[MAX_WRITERS];
    int64_t restart_at[MAX_WRITERS]; /* 0: running or not to restart */
    proc plain[MAX_PLAIN];
    proc replica, readers[2];
    char reader_result[2][1100];
    seqset seqs, keys;
    uint64_t txs, next_key;
    /* counters for the report */
    uint64_t kills, starts, outages_refuse, outages_blackhole, blackouts, plain_reads;
    uint64_t plain_writes, plain_killed, replica_restarts;
    int64_t outage_ms;
    double uploaded_mib; /* store_mib's estimate at the last progress line */
    int64_t max_ship_lag, max_replica_lag; /* the largest seen by progress() */
    int fault;          /* 0 pass, 1 refuse, 2 blackhole */
    int64_t fault_since;
    int nfail;
    char first_fail[1024];
} S;

static double elapsed_s(void) { return (double)(ws_mono_ms() - S.t0) / 1000.0; }

/* One line on events.log (wall clock, as the children's logs show it, and
** seconds since the start), for reading a failure. */
static void event(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void event(const char *fmt, ...) {
    if (S.ev == NULL) return;
    char now[64];
    ws_format_time(ws_now_ms(), now, sizeof now);
    va_list ap;
    va_start(ap, fmt);
    fprintf(S.ev, "%s %9.3f ", now, elapsed_s());
    vfprintf(S.ev, fmt, ap);
    fputc('\n', S.ev);
    va_end(ap);
    fflush(S.ev);
}

/* Records a failed check and goes on: the soak reports everything at the
** end and exits 1 (keeping the directory). */
static void soak_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void soak_fail(const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "soak FAIL at %.1f s: %s\n", elapsed_s(), msg);
    event("FAIL %s", msg);
    if (S.nfail++ == 0) snprintf(S.first_fail, sizeof S.first_fail, "%s", msg);
}

/* ---- the soak: children ------------------------------------------------------------- */

/* Starts `self ROLE a1 ... a8` (up to the first NULL) into p, its output
** appended to log. With want_pipe, the argument "@FD" becomes the number of
** the descriptor the child writes its acknowledgements to (a pipe's write
** end, inherited by this child only), and p->rfd is the read end
** (non-blocking). */
static void proc_start(proc *p, int kind, const char *log, int want_pipe, const char *role,
                       const char *a1, const char *a2, const char *a3, const char *a4,
                       const char *a5, const char *a6, const char *a7, const char *a8) {
    int pp[2] = {-1, -1};
    char fdarg[16] = "";
    if (want_pipe) {
        CHECK_EQ(pipe2(pp, O_CLOEXEC), 0);
        CHECK_EQ(fcntl(pp[1], F_SETFD, 0), 0); /* inherited by this child only */
        CHECK_EQ(fcntl(pp[0], F_SETFL, O_NONBLOCK), 0);
        snprintf(fdarg, sizeof fdarg, "%d", pp[1]);
    }
    /* "@FD" stands for the pipe's descriptor among the arguments */
    const char *a[8] = {a1, a2, a3, a4, a5, a6, a7, a8};
    for (int i = 0; i < 8; i++)
        if (a[i] && strcmp(a[i], "@FD") == 0) a[i] = fdarg;
    memset(p, 0, sizeof *p);
    p->rfd = -1;
    p->pid = rt_spawn_self(log, role, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7],
                           (const char *)NULL);
    p->kind = kind;
    p->started = ws_mono_ms();
    if (want_pipe) {
        close(pp[1]);
        p->rfd = pp[0];
    }
}

/* Takes in the acknowledgements waiting on p's pipe; returns 1 at EOF. */
static int proc_read(proc *p) {
    if (p->rfd < 0) return 1;
    for (;;) {
        uint8_t buf[4096];
        memcpy(buf, p->part, p->npart);
        ssize_t got = read(p->rfd, buf + p->npart, sizeof buf - p->npart);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0 && errno == EAGAIN) return 0;
        if (got < 0) ws_test_fail(__FILE__, __LINE__, "read: %s", strerror(errno));
        if (got == 0) return 1;
        size_t n = p->npart + (size_t)got, i = 0;
        for (; i + 16 <= n; i += 16) {
            uint64_t m[2];
            memcpy(m, buf + i, 16);
            if (m[0] == 0 || m[1] < m[0] || m[1] - m[0] > KEYS_PER_TX) {
                soak_fail("a child (pid %d) sent an impossible acknowledgement %" PRIu64 "..%" PRIu64,
                          (int)p->pid, m[0], m[1]);
                continue;
            }
            seqset *s = p->kind == K_WRITER ? &S.seqs : &S.keys;
            for (uint64_t v = m[0]; v <= m[1]; v++) seqset_add(s, v);
            if (p->kind == K_WRITER) S.txs++;
        }
        p->npart = n - i;
        memcpy(p->part, buf + i, p->npart);
    }
}

/* If p's process has ended: takes in the rest of its pipe, frees the slot
** and returns its exit status (128+signal if killed); else -1. */
static int proc_reap(proc *p) {
    if (p->pid == 0) return -1;
    int st = rt_wait(p->pid, 0);
    if (st < 0) return -1;
    if (p->rfd >= 0) {
        /* it is gone: everything it wrote is in the pipe */
        int flags = fcntl(p->rfd, F_GETFL);
        fcntl(p->rfd, F_SETFL, flags & ~O_NONBLOCK);
        while (!proc_read(p)) {
        }
        close(p->rfd);
        p->rfd = -1;
    }
    if (p->npart) soak_fail("pid %d left half a message on its pipe", (int)p->pid);
    p->pid = 0;
    return st;
}

static void proc_kill(proc *p) {
    if (p->pid == 0 || p->killed) return;
    CHECK_EQ(kill(p->pid, SIGKILL), 0); /* never reaped yet: still ours */
    p->killed = 1;
}

/* Waits (polling, up to timeout_ms) for p to end; returns proc_reap's status
** or -1 on timeout. */
static int proc_wait(proc *p, int64_t timeout_ms) {
    int64_t deadline = ws_mono_ms() + timeout_ms;
    for (;;) {
        proc_read(p);
        int st = proc_reap(p);
        if (st >= 0 || ws_mono_ms() > deadline) return st;
        ws_sleep_ms(5); /* polling a child's exit */
    }
}

static void writer_start(int slot) {
    char seed[32], sl[16], pace[32];
    snprintf(seed, sizeof seed, "%" PRIu64, ws_test_rand() | 1);
    snprintf(sl, sizeof sl, "%d", slot);
    snprintf(pace, sizeof pace, "%" PRId64, S.pace_ms);
    char log[4300];
    snprintf(log, sizeof log, "%s/writer-%d.log", S.dir, slot);
    /* the ship interval is the shipper's: whichever writer is elected */
    snprintf(S.extra, sizeof S.extra, "walship_ship_interval=%s&walship_retention=" RETENTION,
             ws_test_rand_below(2) ? "250ms" : "1s");
    proc_start(&S.writers[slot], K_WRITER, log, 1, "writer", S.path, S.url_proxy, "@FD", seed,
               S.stop_writers, S.extra, sl, pace);
    S.writers[slot].slot = slot;
    S.restart_at[slot] = 0;
    S.starts++;
    event("writer %d started pid %d (%s)", slot, (int)S.writers[slot].pid, S.extra);
}

static proc *plain_slot(void) {
    for (int i = 0; i < MAX_PLAIN; i++)
        if (S.plain[i].pid == 0) return &S.plain[i];
    return NULL;
}

/* A plain writer: mode "close", "truncate" or "hang" (killed at kill_at). */
static proc *plain_writer_start(const char *mode, int64_t kill_after_ms) {
    proc *p = plain_slot();
    if (p == NULL) return NULL;
    int ntx = 1 + (int)ws_test_rand_below(5);
    char base[32], n[16], seed[32];
    snprintf(base, sizeof base, "%" PRIu64, S.next_key);
    snprintf(n, sizeof n, "%d", ntx);
    snprintf(seed, sizeof seed, "%" PRIu64, ws_test_rand() | 1);
    S.next_key += (uint64_t)ntx * KEYS_PER_TX;
    proc_start(p, K_PLAINW, S.log_plain, 1, "plainwriter", S.path, "@FD", base, n, mode, seed,
               NULL, NULL);
    p->kill_at = kill_after_ms >= 0 ? ws_mono_ms() + kill_after_ms : 0;
    S.plain_writes++;
    event("plain writer pid %d: %d transactions from key %s, %s%s", (int)p->pid, ntx, base, mode,
          kill_after_ms >= 0 ? ", to be killed" : "");
    return p;
}

static proc *plain_reader_start(void) {
    proc *p = plain_slot();
    if (p == NULL) return NULL;
    proc_start(p, K_PLAINR, S.log_plain, 0, "plainreader", S.path, NULL, NULL, NULL, NULL, NULL,
               NULL, NULL);
    S.plain_reads++;
    event("plain reader pid %d", (int)p->pid);
    return p;
}

static void replica_start(void) {
    const char *argv[] = {ws_test_env("WALSHIP_BIN"), "replica", S.url, S.rep, "--poll-ms", "200",
                          NULL};
    memset(&S.replica, 0, sizeof S.replica);
    S.replica.rfd = -1;
    S.replica.kind = K_REPLICA;
    S.replica.pid = rt_spawn(S.log_replica, argv);
    S.replica.started = ws_mono_ms();
    event("replica started pid %d", (int)S.replica.pid);
}

static void readers_start(void) {
    for (int i = 0; i < 2; i++) {
        char seed[32], log[4300];
        snprintf(seed, sizeof seed, "%" PRIu64, ws_test_rand() | 1);
        snprintf(S.reader_result[i], sizeof S.reader_result[i], "%s/reader-%d.txt", S.dir, i);
        snprintf(log, sizeof log, "%s/reader-%d.log", S.dir, i);
        proc_start(&S.readers[i], K_READER, log, 0, "repreader", S.rep, S.stop_readers,
                   S.reader_result[i], seed, NULL, NULL, NULL, NULL);
        event("replica reader %d started pid %d", i, (int)S.readers[i].pid);
    }
}

/* Polls every pipe until `until` (monotonic ms), at most 100 ms per poll. */
static void pump(int64_t until) {
    struct pollfd pf[MAX_WRITERS + MAX_PLAIN];
    proc *who[MAX_WRITERS + MAX_PLAIN];
    int n = 0;
    for (int i = 0; i < S.nwriters; i++)
        if (S.writers[i].rfd >= 0) {
            pf[n] = (struct pollfd){S.writers[i].rfd, POLLIN, 0};
            who[n++] = &S.writers[i];
        }
    for (int i = 0; i < MAX_PLAIN; i++)
        if (S.plain[i].rfd >= 0) {
            pf[n] = (struct pollfd){S.plain[i].rfd, POLLIN, 0};
            who[n++] = &S.plain[i];
        }
    int64_t wait = until - ws_mono_ms();
    if (wait > 100) wait = 100;
    if (wait < 0) wait = 0;
    int r = poll(pf, (nfds_t)n, (int)wait);
    if (r < 0 && errno != EINTR) ws_test_fail(__FILE__, __LINE__, "poll: %s", strerror(errno));
    for (int i = 0; r > 0 && i < n; i++)
        if (pf[i].revents) proc_read(who[i]);
}

/* Judges the end of a child the soak did not stop on purpose. */
static void judge_exit(const proc *p, pid_t pid, int st, const char *what) {
    if (p->killed && st == 128 + SIGKILL) return;
    if (st == 0 && p->kind != K_REPLICA && p->kind != K_READER) return;
    soak_fail("%s (pid %d, started %.1f s in) exited with status %d; see its log in %s", what,
              (int)pid, (double)(p->started - S.t0) / 1000.0, st, S.dir);
}

/* Reaps every child that ended and judges how; with restart, a writer
** comes back after a pause of up to a second, and the replica at once
** (its end was a failure already). */
static void reap_all(int restart) {
    static const char *const names[] = {"", "a walship writer", "a plain writer", "a plain reader",
                                        "the replica", "a replica reader"};
    proc *all[MAX_WRITERS + MAX_PLAIN + 3];
    int n = 0;
    for (int i = 0; i < S.nwriters; i++) all[n++] = &S.writers[i];
    for (int i = 0; i < MAX_PLAIN; i++) all[n++] = &S.plain[i];
    all[n++] = &S.replica;
    all[n++] = &S.readers[0];
    all[n++] = &S.readers[1];
    for (int i = 0; i < n; i++) {
        proc *p = all[i];
        pid_t pid = p->pid;
        int st = proc_reap(p);
        if (st < 0) continue;
        judge_exit(p, pid, st, names[p->kind]);
        event("%s pid %d ended: %d%s", names[p->kind], (int)pid, st, p->killed ? " (killed)" : "");
        if (!restart) continue;
        if (p->kind == K_WRITER) S.restart_at[p->slot] = ws_mono_ms() + (int64_t)ws_test_rand_below(1000);
        if (p->kind == K_REPLICA) {
            S.replica_restarts++;
            replica_start();
        }
    }
}

/* Pumps and reaps until no writer (with writers) and no plain process
** runs, or timeout_ms passes (a failure). */
static void wait_quiet(int writers, int64_t timeout_ms, const char *what) {
    int64_t deadline = ws_mono_ms() + timeout_ms;
    for (;;) {
        pump(ws_mono_ms() + 20);
        reap_all(0);
        int running = 0;
        for (int i = 0; writers && i < S.nwriters; i++) running += S.writers[i].pid != 0;
        for (int i = 0; i < MAX_PLAIN; i++) running += S.plain[i].pid != 0;
        if (running == 0) return;
        if (ws_mono_ms() > deadline) {
            soak_fail("%s: %d process(es) still running after %" PRId64 " s", what, running,
                      timeout_ms / 1000);
            return;
        }
    }
}

/* ---- the soak: chaos ------------------------------------------------------------- */

static void fault_set(int mode) {
    static const char *const names[] = {"pass", "refuse", "blackhole"};
    fp_mode m = mode == 1 ? FP_REFUSE : mode == 2 ? FP_BLACKHOLE : FP_PASS;
    if (fp_set_mode(S.fp, m) != 0) ws_test_fail(__FILE__, __LINE__, "fault proxy: cannot set %s", names[mode]);
    if (S.fault != 0 && mode == 0) S.outage_ms += ws_mono_ms() - S.fault_since;
    if (mode == 1) S.outages_refuse++;
    if (mode == 2) S.outages_blackhole++;
    S.fault = mode;
    S.fault_since = ws_mono_ms();
    event("store %s", names[mode]);
}

/* Every walship process gone; a plain writer commits and a plain reader
** closes as the last connection (checkpointing and deleting the WAL), so
** walship finds a WAL that went away without it; then the writers return. */
static void blackout(void) {
    event("blackout: every walship writer killed");
    S.blackouts++;
    for (int i = 0; i < S.nwriters; i++)
        if (S.writers[i].pid) {
            proc_kill(&S.writers[i]);
            S.kills++;
        }
    for (int i = 0; i < MAX_PLAIN; i++)
        if (S.plain[i].kind == K_PLAINW) proc_kill(&S.plain[i]); /* a hanging one keeps the WAL */
    wait_quiet(1, 120000, "blackout");
    plain_writer_start("close", -1);
    wait_quiet(1, 120000, "the blackout's plain writer");
    plain_reader_start();
    wait_quiet(1, 120000, "the blackout's plain reader");
    for (int i = 0; i < S.nwriters; i++) writer_start(i);
}

/* Looks at `walship generations URL`: sets *held to the MiB the store
** holds now and returns the MiB uploaded so far, near enough: the sum over
** every generation ever seen of the largest size it was seen at (retention
** removes objects between two looks). -1 if the listing failed. */
static double store_mib(double *held, int64_t *ngen) {
    static struct {
        uint64_t id;
        double mib;
    } seen[4096];
    static size_t nseen;
    static char out[1 << 18];
    *held = 0;
    *ngen = 0;
    if (db_capture(out, sizeof out, "'%s' generations '%s'", ws_test_env("WALSHIP_BIN"), S.url) != 0)
        return -1;
    for (char *line = out; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = '\0';
        uint64_t id;
        char *sp = strrchr(line, ' ');
        if (strlen(line) > 17 && line[16] == ' ' && sscanf(line, "%16" SCNx64, &id) == 1 && sp) {
            double mib = atof(sp + 1);
            *held += mib;
            ++*ngen;
            size_t i = 0;
            while (i < nseen && seen[i].id != id) i++;
            if (i == nseen && nseen < sizeof seen / sizeof seen[0]) seen[nseen++].id = id;
            if (i < nseen && mib > seen[i].mib) seen[i].mib = mib;
        }
        line = nl ? nl + 1 : NULL;
    }
    double total = 0;
    for (size_t i = 0; i < nseen; i++) total += seen[i].mib;
    return total;
}

/* The shipping status of the primary (`walship status PATH --json`), the
** store and the replica's status.json, summed up in one line. */
static void progress(void) {
    char js[16384], err[512] = "";
    int64_t lag = -1, gen_n = 0;
    double held = 0, uploaded = store_mib(&held, &gen_n);
    S.uploaded_mib = uploaded;
    if (db_capture(js, sizeof js, "'%s' status '%s' --json 2>/dev/null", ws_test_env("WALSHIP_BIN"),
                   S.path) == 0 && js[0] == '{') {
        lag = db_json_int(js, "lag_ms");
        db_json_text(js, "last_error", err, sizeof err);
    }
    uint64_t applied = rt_status_u64(S.rep, "applied_txid"), ptx = rt_status_u64(S.rep, "primary_txid");
    uint64_t rlag = rt_status_u64(S.rep, "lag_ms");
    if (lag > S.max_ship_lag) S.max_ship_lag = lag;
    if ((int64_t)rlag > S.max_replica_lag) S.max_replica_lag = (int64_t)rlag;
    unsigned long long reads = 0, bad = 0;
    for (int i = 0; i < 2; i++) {
        rt_reader_result r;
        if (rt_read_result(S.reader_result[i], &r) == 0) {
            reads += r.reads;
            bad += r.violations + r.busy + r.errors + r.recovery;
        }
    }
    fprintf(stderr,
            "soak %5.0f s: rows %" PRIu64 " (%" PRIu64 " txs, u keys %" PRIu64 "), kills %" PRIu64
            ", outages %" PRIu64 " (%.0f s), blackouts %" PRIu64 ", plain r/w %" PRIu64 "/%" PRIu64
            ", generations %" PRId64 " (%.1f MiB held, %.1f uploaded), ship lag %" PRId64
            " ms%s%.60s, replica %" PRIu64 "/%" PRIu64 " lag %" PRIu64 " ms, replica reads %llu (bad %llu)\n",
            elapsed_s(), S.seqs.count, S.txs, S.keys.count, S.kills,
            S.outages_refuse + S.outages_blackhole, (double)S.outage_ms / 1000.0, S.blackouts,
            S.plain_reads, S.plain_writes, gen_n, held, uploaded, lag, err[0] ? ", last_error " : "", err, applied,
            ptx, rlag, reads, bad);
    event("progress: %" PRIu64 " rows, generations %" PRId64 ", ship lag %" PRId64
          " ms, replica %" PRIu64 "/%" PRIu64 " lag %" PRIu64 " ms",
          S.seqs.count, gen_n, lag, applied, ptx, rlag);
}

static int64_t after(int64_t lo_ms, int64_t hi_ms) {
    return ws_mono_ms() + lo_ms + (int64_t)ws_test_rand_below((uint64_t)(hi_ms - lo_ms + 1));
}

/* Waits, pumping the pipes, until the store holds a restorable generation
** and the replica has bootstrapped from it and its readers read. */
static void warm_up(void) {
    int64_t deadline = ws_mono_ms() + 180000;
    int64_t next_check = 0;
    while (S.replica.pid == 0) {
        pump(ws_mono_ms() + 100);
        reap_all(1);
        if (ws_mono_ms() < next_check) continue;
        next_check = ws_mono_ms() + 1000;
        uint64_t id[1], first[1], last[1];
        if (S.seqs.count > 0 && db_generation_list(S.url, id, first, last, 1) > 0 && first[0] > 0)
            replica_start();
        else if (ws_mono_ms() > deadline)
            ws_test_fail(__FILE__, __LINE__, "no restorable generation in the store after 180 s");
    }
    char ready[2][4300];
    while (rt_status_u64(S.rep, "applied_txid") == 0) {
        pump(ws_mono_ms() + 100);
        reap_all(1);
        if (ws_mono_ms() > deadline)
            ws_test_fail(__FILE__, __LINE__, "the replica did not bootstrap (see %s)", S.log_replica);
    }
    readers_start();
    for (int i = 0; i < 2; i++) snprintf(ready[i], sizeof ready[i], "%s.ready", S.reader_result[i]);
    while (!rt_exists(ready[0]) || !rt_exists(ready[1])) {
        pump(ws_mono_ms() + 100);
        reap_all(1);
        if (ws_mono_ms() > deadline) ws_test_fail(__FILE__, __LINE__, "the replica readers did not read");
    }
    event("warm-up done: replica at TXID %" PRIu64, rt_status_u64(S.rep, "applied_txid"));
}

/* The chaos, for `seconds`. */
static void chaos(int64_t seconds) {
    int64_t end = ws_mono_ms() + seconds * 1000;
    int64_t next_kill = after(2000, 6000), next_read = after(1000, 4000);
    int64_t next_write = after(10000, 30000), next_fault = after(5000, 20000);
    int64_t next_blackout = after(60000, 180000), next_progress = ws_mono_ms() + 60000;
    while (ws_mono_ms() < end) {
        pump(end);
        reap_all(1);
        int64_t now = ws_mono_ms();
        for (int i = 0; i < S.nwriters; i++)
            if (S.writers[i].pid == 0 && S.restart_at[i] && now >= S.restart_at[i]) writer_start(i);
        for (int i = 0; i < MAX_PLAIN; i++)
            if (S.plain[i].pid && S.plain[i].kill_at && now >= S.plain[i].kill_at) {
                proc_kill(&S.plain[i]);
                S.plain_killed++;
                event("plain writer pid %d killed", (int)S.plain[i].pid);
                S.plain[i].kill_at = 0;
            }
        if (now >= next_kill) {
            int i = (int)ws_test_rand_below((uint64_t)S.nwriters);
            if (S.writers[i].pid && !S.writers[i].killed) {
                proc_kill(&S.writers[i]);
                S.kills++;
                event("writer %d pid %d killed", i, (int)S.writers[i].pid);
            }
            next_kill = after(2000, 6000);
        }
        if (now >= next_read) {
            plain_reader_start();
            next_read = after(1000, 4000);
        }
        if (now >= next_write) {
            /* Each may start a generation (a WAL it restarts or truncates
            ** while walship runs, or one it removes when walship is gone):
            ** not too often, every snapshot is the whole database. */
            uint64_t r = ws_test_rand_below(10);
            if (r < 4)
                plain_writer_start("close", -1);
            else if (r < 6)
                plain_writer_start("truncate", -1);
            else if (r < 9) /* killed after its commits, with its WAL left behind */
                plain_writer_start("hang", 200 + (int64_t)ws_test_rand_below(3000));
            else /* killed at any moment, perhaps inside a transaction */
                plain_writer_start("close", (int64_t)ws_test_rand_below(300));
            next_write = after(10000, 30000);
        }
        if (now >= next_fault) {
            if (S.fault == 0) {
                fault_set(1 + (int)ws_test_rand_below(2));
                next_fault = after(2000, 10000);
            } else {
                fault_set(0);
                next_fault = after(10000, 40000);
            }
        }
        if (now >= next_blackout) {
            blackout();
            next_blackout = after(60000, 180000);
        }
        if (now >= next_progress) {
            progress();
            next_progress = ws_mono_ms() + 60000;
        }
    }
}

/* Chaos ends: the store answers, the plain processes and the writers stop. */
static void calm(void) {
    if (S.fault) fault_set(0);
    /* the plain writers still to be killed (every hanging one is) */
    for (int i = 0; i < MAX_PLAIN; i++)
        if (S.plain[i].pid && S.plain[i].kill_at) {
            proc_kill(&S.plain[i]);
            S.plain_killed++;
        }
    rt_touch(S.stop_writers);
    for (int i = 0; i < S.nwriters; i++) S.restart_at[i] = 0;
    wait_quiet(1, 120000, "stopping the writers and plain processes");
    event("calm: every writer stopped");
}

/* ---- the soak: the checks at the end --------------------------------------------------- */

/* Opens a database file read-only as it is, SQLite's locks left aside
** (nothing else has it open now). */
static sqlite3 *open_immutable(const char *path) {
    char uri[4300];
    snprintf(uri, sizeof uri, "file:%s?immutable=1", path);
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(uri, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, NULL) != SQLITE_OK)
        ws_test_fail(__FILE__, __LINE__, "open %s: %s", uri, db ? sqlite3_errmsg(db) : "?");
    return db;
}

/* Every member of want is a value of `sql` (one integer column) in db;
** returns how many are missing (and names the first). */
static uint64_t missing_in(sqlite3 *db, const char *sql, const seqset *want, uint64_t *first_missing) {
    seqset have = {0};
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        ws_test_fail(__FILE__, __LINE__, "%s: %s", sql, sqlite3_errmsg(db));
    while (sqlite3_step(st) == SQLITE_ROW) {
        int64_t v = sqlite3_column_int64(st, 0);
        if (v > 0) seqset_add(&have, (uint64_t)v);
    }
    sqlite3_finalize(st);
    uint64_t miss = 0;
    *first_missing = 0;
    for (uint64_t v = 1; v <= want->max; v++)
        if (seqset_has(want, v) && !seqset_has(&have, v) && miss++ == 0) *first_missing = v;
    free(have.bits);
    return miss;
}

/* The latest restore: byte for byte the primary, intact, every
** acknowledged seq and key in it. */
static void check_latest(uint64_t gen, uint64_t txid) {
    char msg[512];
    if (db_restore(S.url, S.out, 0, 0, 0, msg, sizeof msg) != 0) {
        soak_fail("restore latest: %s", msg);
        return;
    }
    if (!files_equal(S.path, S.out))
        soak_fail("the latest restore %s differs from the primary %s", S.out, S.path);
    uint64_t ids[1024], first[1024], last[1024];
    size_t ngen = db_generation_list(S.url, ids, first, last, 1024);
    if (ngen == 0 || ngen > 1024 || ids[ngen - 1] != gen || last[ngen - 1] != txid)
        soak_fail("the store's newest generation is %016" PRIx64 " at TXID %" PRIu64
                  "; the final process shipped %016" PRIx64 " at %" PRIu64,
                  ngen ? ids[ngen - 1] : 0, ngen ? last[ngen - 1] : 0, gen, txid);
    sqlite3 *r = open_immutable(S.out);
    const char *ic = db_integrity(r);
    if (strcmp(ic, "ok") != 0) soak_fail("the latest restore fails integrity_check: %s", ic);
    int64_t cnt = db_int(r, "SELECT count(*) FROM t"), max = db_int(r, "SELECT max(seq) FROM t");
    if (cnt != max) soak_fail("the latest restore has %" PRId64 " rows up to seq %" PRId64, cnt, max);
    uint64_t fm = 0, miss = missing_in(r, "SELECT seq FROM t", &S.seqs, &fm);
    if (miss) soak_fail("%" PRIu64 " acknowledged seqs are not in the restore (first: %" PRIu64 ")", miss, fm);
    miss = missing_in(r, "SELECT k FROM u", &S.keys, &fm);
    if (miss) soak_fail("%" PRIu64 " acknowledged keys of u are not in the restore (first: %" PRIu64 ")", miss, fm);
    fprintf(stderr, "soak: latest restore = primary (%" PRId64 " rows of t, %" PRId64 " of u), integrity ok\n",
            max, db_int(r, "SELECT count(*) FROM u"));
    sqlite3_close(r);
}

/* Restores at the first, last and sampled TXIDs of every retained
** generation: intact, and count(t) = max(seq). Returns how many ran. */
static int check_history(size_t *ngen_out) {
    enum { MAXGEN = 1024, MAXRESTORES = 60 };
    static uint64_t id[MAXGEN], first[MAXGEN], last[MAXGEN];
    size_t ngen = db_generation_list(S.url, id, first, last, MAXGEN);
    *ngen_out = ngen;
    if (ngen > MAXGEN) ngen = MAXGEN;
    int done = 0;
    for (size_t g = 0; g < ngen; g++) {
        if (first[g] == 0 || last[g] < first[g]) {
            event("generation %016" PRIx64 " holds no restorable range", id[g]);
            continue;
        }
        int budget = (MAXRESTORES - done) / (int)(ngen - g);
        int extra = budget > 4 ? 2 : budget > 2 ? budget - 2 : 0;
        uint64_t t[4] = {first[g], last[g], 0, 0};
        int n = budget >= 2 ? 2 : 1;
        for (int k = 0; k < extra; k++) t[n++] = first[g] + ws_test_rand_below(last[g] - first[g] + 1);
        for (int k = 0; k < n; k++) {
            char msg[512], ic[512];
            if (db_restore_in(S.url, S.out, id[g], 1, t[k], msg, sizeof msg) != 0) {
                soak_fail("restore generation %016" PRIx64 " --txid %" PRIu64 ": %s", id[g], t[k], msg);
                continue;
            }
            done++;
            sqlite3 *r = open_immutable(S.out);
            ws_strlcpy(ic, db_integrity(r), sizeof ic);
            int64_t cnt = db_int(r, "SELECT count(*) FROM t"), max = db_int(r, "SELECT coalesce(max(seq), 0) FROM t");
            sqlite3_close(r);
            if (strcmp(ic, "ok") != 0)
                soak_fail("generation %016" PRIx64 " at TXID %" PRIu64 " fails integrity_check: %s",
                          id[g], t[k], ic);
            if (cnt != max)
                soak_fail("generation %016" PRIx64 " at TXID %" PRIu64 " has %" PRId64
                          " rows up to seq %" PRId64, id[g], t[k], cnt, max);
            event("restored generation %016" PRIx64 " at TXID %" PRIu64 " (range %" PRIu64 "..%" PRIu64
                  "): %s, seq %" PRId64, id[g], t[k], first[g], last[g], ic, max);
        }
    }
    return done;
}

/* The replica reaches gen/txid (as `walship status rep.db --json` says);
** its readers stop and must have seen nothing wrong; SIGTERM; its file
** equals the primary. Returns how long catching up took (ms). */
static int64_t check_replica(uint64_t gen, uint64_t txid, uint64_t *reads) {
    int64_t t_start = ws_mono_ms(), deadline = t_start + 300000, caught = -1;
    char js[16384] = "";
    uint64_t g = 0, t = 0;
    while (ws_mono_ms() < deadline) {
        reap_all(0);
        if (db_capture(js, sizeof js, "'%s' status '%s' --json", ws_test_env("WALSHIP_BIN"), S.rep) == 0 &&
            rt_json_u64(js, "generation", &g) == 0 && rt_json_u64(js, "applied_txid", &t) == 0 &&
            g == gen && t >= txid) {
            caught = ws_mono_ms() - t_start;
            break;
        }
        ws_sleep_ms(100); /* polling the replica's status */
    }
    if (caught < 0)
        soak_fail("the replica did not reach generation %016" PRIx64 " TXID %" PRIu64
                  " in 300 s (at %016" PRIx64 " %" PRIu64 "): %s", gen, txid, g, t, js);
    else
        fprintf(stderr, "soak: replica caught up %" PRId64 " ms after the final flush: %s\n", caught, js);
    uint64_t v = 0;
    if (rt_json_u64(js, "corrupt_objects", &v) == 0 && v) soak_fail("the replica counted %" PRIu64 " corrupt objects", v);
    if (rt_json_u64(js, "foreign_writes", &v) == 0 && v) soak_fail("the replica counted %" PRIu64 " foreign writes", v);
    rt_touch(S.stop_readers);
    *reads = 0;
    for (int i = 0; i < 2; i++) {
        int st = proc_wait(&S.readers[i], 60000);
        rt_reader_result r;
        if (st != 0) soak_fail("replica reader %d ended with %d", i, st);
        if (rt_read_result(S.reader_result[i], &r) != 0) {
            soak_fail("replica reader %d left no result in %s", i, S.reader_result[i]);
            continue;
        }
        fprintf(stderr, "soak: replica reader %d: %s", i, r.line);
        *reads += r.reads;
        if (r.violations || r.busy || r.errors || r.recovery || r.reads == 0)
            soak_fail("replica reader %d: %s", i, r.line);
    }
    if (S.replica.pid) {
        CHECK_EQ(kill(S.replica.pid, SIGTERM), 0);
        int st = proc_wait(&S.replica, 60000);
        if (st != 0) soak_fail("the replica exited with %d after SIGTERM (log: %s)", st, S.log_replica);
    }
    if (!files_equal(S.path, S.rep)) soak_fail("the replica %s differs from the primary %s", S.rep, S.path);
    else fprintf(stderr, "soak: replica = primary, byte for byte\n");
    return caught;
}

/* Why a new generation may begin in this soak: processes outside walship
** write, checkpoint, truncate, restart and delete the WAL, and walship
** cannot always follow (README: "If the database is changed behind
** walship's back ... starts a new generation"). Every other reason is a
** failure: a SIGKILL, a store outage, a checkpoint or a restart of
** walship's own processes must never break the history. */
static const char *const outsider_reasons[] = {
    "the WAL was checkpointed and removed by a process outside walship",
    "the database changed outside walship",
    "the WAL changed outside walship",
    "commits in a WAL walship never saw begin",
    "the database file changed while no WAL was open",
    "the database file changed outside walship",
};

static int outsider_reason(const char *r) {
    for (size_t i = 0; i < sizeof outsider_reasons / sizeof outsider_reasons[0]; i++)
        if (strncmp(r, outsider_reasons[i], strlen(outsider_reasons[i])) == 0) return 1;
    return 0;
}

/* Counts the new generations the walship children logged (event
** new_generation) by reason, into out: "N (reason: count; ...)". A reason's
** details in parentheses are left out, so alike ones count together. Each
** one no outsider explains is a failure, named with its log line. */
static int generation_reasons(char *out, size_t n) {
    enum { MAXR = 16 };
    static char reason[MAXR][128];
    int count[MAXR] = {0}, nr = 0, total = 0;
    char path[1200];
    for (int f = 0; f <= MAX_WRITERS; f++) {
        if (f < MAX_WRITERS)
            snprintf(path, sizeof path, "%s/writer-%d.log", S.dir, f);
        else
            snprintf(path, sizeof path, "%s", S.log_final);
        wsbuf b = {0};
        if (ws_read_file(path, (size_t)1 << 28, &b, NULL) != 0 || wsbuf_append(&b, "", 1) != 0) {
            wsbuf_free(&b);
            continue;
        }
        for (const char *p = (const char *)b.p; (p = strstr(p, "event=new_generation")) != NULL; p++) {
            const char *r = strstr(p, "reason=\""), *nl = strchr(p, '\n');
            if (r == NULL || (nl && r > nl)) continue;
            r += 8;
            int line = nl ? (int)(nl - p) : (int)strlen(p);
            if (!outsider_reason(r))
                soak_fail("a new generation no process outside walship explains (%s): %.*s", path,
                          line < 400 ? line : 400, p);
            size_t len = strcspn(r, "\"(\n");
            while (len > 0 && r[len - 1] == ' ') len--;
            if (len >= sizeof reason[0]) len = sizeof reason[0] - 1;
            int i = 0;
            while (i < nr && (strlen(reason[i]) != len || strncmp(reason[i], r, len) != 0)) i++;
            if (i == nr && nr < MAXR) {
                memcpy(reason[nr], r, len);
                reason[nr++][len] = '\0';
            }
            if (i < nr) count[i]++;
            total++;
        }
        wsbuf_free(&b);
    }
    size_t o = (size_t)snprintf(out, n, "%d", total);
    for (int i = 0; i < nr && o < n; i++)
        o += (size_t)snprintf(out + o, n - o, "%s%s: %d", i ? "; " : " (", reason[i], count[i]);
    if (nr && o < n) snprintf(out + o, n - o, ")");
    return total;
}

/* Builds S.url_proxy: S.url with the endpoint's host:port replaced by the
** proxy's; returns the endpoint's host and port in host/port. */
static void proxy_url(char *host, size_t hostlen, int *port) {
    const char *e = strstr(S.url, "endpoint=http://");
    if (e == NULL) ws_test_fail(__FILE__, __LINE__, "WALSHIP_TEST_S3_URL has no endpoint=http://HOST:PORT");
    const char *h = e + strlen("endpoint=http://"), *colon = strchr(h, ':');
    if (colon == NULL || (size_t)(colon - h) >= hostlen)
        ws_test_fail(__FILE__, __LINE__, "no port in the endpoint of %s", S.url);
    snprintf(host, hostlen, "%.*s", (int)(colon - h), h);
    char *end;
    *port = (int)strtol(colon + 1, &end, 10);
    S.fp = fp_start(host, *port);
    CHECK(S.fp != NULL);
    snprintf(S.url_proxy, sizeof S.url_proxy, "%.*s127.0.0.1:%d%s", (int)(h - S.url), S.url,
             fp_port(S.fp), end);
}

static void setup(void) {
    snprintf(S.dir, sizeof S.dir, "%s", ws_test_tmpdir());
    snprintf(S.path, sizeof S.path, "%s/app.db", S.dir);
    snprintf(S.out, sizeof S.out, "%s/restored.db", S.dir);
    snprintf(S.rep, sizeof S.rep, "%s/rep.db", S.dir);
    snprintf(S.final_out, sizeof S.final_out, "%s/final.txt", S.dir);
    snprintf(S.stop_writers, sizeof S.stop_writers, "%s/stop-writers", S.dir);
    snprintf(S.stop_readers, sizeof S.stop_readers, "%s/stop-readers", S.dir);
    snprintf(S.log_plain, sizeof S.log_plain, "%s/plain.log", S.dir);
    snprintf(S.log_replica, sizeof S.log_replica, "%s/replica.log", S.dir);
    snprintf(S.log_final, sizeof S.log_final, "%s/final.log", S.dir);
    snprintf(S.events, sizeof S.events, "%s/events.log", S.dir);
    snprintf(S.url, sizeof S.url, "%s", ws_test_s3_url("soak"));
    S.ev = fopen(S.events, "w");
    CHECK(S.ev != NULL);
    char host[256];
    int port = 0;
    proxy_url(host, sizeof host, &port);
    fprintf(stderr, "soak: directory %s\nsoak: store %s\nsoak: writers ship through %s\n", S.dir,
            S.url, S.url_proxy);
    sqlite3 *db = db_open_plain(S.path, 0);
    db_exec(db, "PRAGMA journal_mode=WAL;"
                "CREATE TABLE t(seq INTEGER PRIMARY KEY, writer INTEGER, pad BLOB);"
                "CREATE TABLE u(k INTEGER PRIMARY KEY, v BLOB);");
    sqlite3_close(db);
    S.next_key = 1;
}

static int64_t env_int(const char *name, int64_t dflt, int64_t lo, int64_t hi) {
    const char *v = getenv(name);
    if (v == NULL || *v == '\0') return dflt;
    char *end;
    long long x = strtoll(v, &end, 10);
    if (*end != '\0' || x < lo || x > hi)
        ws_test_fail(__FILE__, __LINE__, "%s=%s: want a whole number from %lld to %lld", name, v,
                     (long long)lo, (long long)hi);
    return x;
}

int main(int argc, char **argv) {
    if (argc > 1) child_die_with_parent();
    if (argc > 9 && strcmp(argv[1], "writer") == 0) return writer_main(argv);
    if (argc > 7 && strcmp(argv[1], "plainwriter") == 0) return plainwriter_main(argv);
    if (argc > 2 && strcmp(argv[1], "plainreader") == 0) return plainreader_main(argv);
    if (argc > 5 && strcmp(argv[1], "repreader") == 0) return repreader_main(argv);
    if (argc > 5 && strcmp(argv[1], "final") == 0) return final_main(argv);
    if (argc > 1) {
        fprintf(stderr, "walship_soak: unknown role or missing arguments: %s\n", argv[1]);
        return 2;
    }
    int64_t seconds = env_int("WALSHIP_SOAK_SECONDS", 1800, 10, 7 * 86400);
    S.nwriters = (int)env_int("WALSHIP_SOAK_WRITERS", 3, 2, MAX_WRITERS);
    S.pace_ms = env_int("WALSHIP_SOAK_PACE_MS", 100, 0, 10000);
    ws_test_seed((uint64_t)ws_now_us());
    signal(SIGPIPE, SIG_IGN);
    setup();
    S.t0 = ws_mono_ms();
    fprintf(stderr, "soak: %" PRId64 " s of chaos, %d writers, pace %" PRId64 " ms\n", seconds,
            S.nwriters, S.pace_ms);
    for (int i = 0; i < S.nwriters; i++) writer_start(i);
    warm_up();
    int64_t chaos_start = ws_mono_ms();
    chaos(seconds);
    double chaos_s = (double)(ws_mono_ms() - chaos_start) / 1000.0;
    progress();
    calm();

    /* The last walship process: everything into the store. */
    char fin_line[256] = "";
    proc fin;
    proc_start(&fin, K_PLAINR, S.log_final, 0, "final", S.path, S.url_proxy, S.extra, S.final_out,
               NULL, NULL, NULL, NULL);
    int st = proc_wait(&fin, 900000);
    FILE *f = st == 0 ? fopen(S.final_out, "r") : NULL;
    unsigned long long gen = 0, txid = 0, shipped = 0;
    long long fmax = 0, fu = 0;
    if (f == NULL || fgets(fin_line, sizeof fin_line, f) == NULL ||
        sscanf(fin_line, "%llx %llu %llu %lld %lld", &gen, &txid, &shipped, &fmax, &fu) != 5)
        ws_test_fail(__FILE__, __LINE__, "the final walship process failed (%d; log %s)", st, S.log_final);
    fclose(f);
    if (shipped != txid) soak_fail("after the final flush shipped_txid %llu != txid %llu", shipped, txid);
    event("final: generation %016llx txid %llu, primary at seq %lld", gen, txid, fmax);

    check_latest(gen, txid);
    size_t ngen = 0;
    int restores = check_history(&ngen);
    uint64_t reads = 0;
    int64_t catchup = check_replica(gen, txid, &reads);
    char reasons[2048];
    generation_reasons(reasons, sizeof reasons);
    fprintf(stderr, "soak: new generations logged: %s\n", reasons);

    fprintf(stderr,
            "soak %s: %.0f s of chaos (seed printed above); %" PRIu64 " rows acknowledged in %" PRIu64
            " transactions (primary at seq %lld, TXID %llu), %" PRIu64 " keys of u; %" PRIu64
            " writer kills, %" PRIu64 " writer starts, %" PRIu64 " blackouts; store outages %" PRIu64
            " refused + %" PRIu64 " blackholed (%.0f s); plain readers %" PRIu64 ", plain writers %" PRIu64
            " (%" PRIu64 " killed); %zu generation(s) retained, %d history restores; largest lag seen "
            "by the minute: shipping %" PRId64 " ms, replica %" PRId64 " ms; replica caught up %" PRId64
            " ms after the final flush, %" PRIu64 " replica reads, %" PRIu64
            " replica restarts; about %.0f MiB uploaded\n",
            S.nfail ? "FAILED" : "passed", chaos_s, S.seqs.count, S.txs, fmax, txid, S.keys.count,
            S.kills, S.starts, S.blackouts, S.outages_refuse, S.outages_blackhole,
            (double)S.outage_ms / 1000.0, S.plain_reads, S.plain_writes, S.plain_killed, ngen,
            restores, S.max_ship_lag, S.max_replica_lag, catchup, reads, S.replica_restarts,
            S.uploaded_mib);
    fp_stop(S.fp);
    free(S.seqs.bits);
    free(S.keys.bits);
    if (S.nfail)
        ws_test_fail(__FILE__, __LINE__, "%d check(s) failed; the first: %s", S.nfail, S.first_fail);
    fclose(S.ev);
    return 0;
}
