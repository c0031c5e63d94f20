/*
** test_pipeline_outsiders.c -- processes that are not walship touch the
** database between walship's writers: nothing acknowledged is lost, no
** restore is malformed, and walship_flush never says "done" early.
**
**   malformed  (issue 7, finding 1) a walship writer commits and flushes and
**              is SIGKILLed; a plain sqlite3 writer commits 500 rows in one
**              transaction and is SIGKILLed (its WAL stays); a plain reader
**              opens and closes (as the last connection it checkpoints the
**              WAL into the file and deletes it); a walship writer commits
**              300 rows and flushes. Restore must equal the primary and pass
**              integrity_check.
**   plainflush (finding 5) a plain connection commits while a walship
**              connection is open and idle: walship_flush returns 1 only once
**              those commits are in the store.
**   rounds     (finding 2) at least 200 rounds of: a walship writer
**              committing one row per transaction is SIGKILLed at a random
**              moment; then a plain sqlite3 reader, or a plain writer (that
**              closes, is SIGKILLed with its WAL left behind, or truncates its
**              WAL), touches the database; then a walship process opens it,
**              may commit, and walship_flush returns 1. Every round: every
**              acknowledged row is in the restore, the restore has exactly the
**              primary's content, and it passes integrity_check.
**
** Writers run as child processes (this program again, so no walship state
** is shared with the test). WALSHIP_TEST_OUTSIDER_ROUNDS overrides the
** number of rounds (200 by default, 60 in sanitizer builds).
**
** ctest-labels: pipeline
** ctest-timeout: 900
*/
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/util.h"
#include "dbutil.h"
#include "harness.h"
#include "walship.h"

#define MSG_FLUSHED UINT64_MAX

/* ---- children ------------------------------------------------------------------- */

static void tell(int fd, uint64_t v) {
    if (ws_write_all(fd, &v, sizeof v) != 0) _exit(3);
}

/* walwriter PATH URL FD LIMIT: opens through walship and commits one row
** per transaction into t (seq = max + 1), telling FD each seq after COMMIT
** returned. LIMIT 0: until killed; else LIMIT rows, then walship_flush (it
** must return 1), tell MSG_FLUSHED and wait to be killed. */
static int walwriter_main(char **argv) {
    int fd = atoi(argv[4]);
    long limit = atol(argv[5]);
    sqlite3 *db = db_open_walship(argv[2], argv[3], "walship_ship_interval=0");
    sqlite3_busy_timeout(db, 30000);
    db_exec(db, "PRAGMA wal_autocheckpoint=50");
    int64_t seq = db_int(db, "SELECT coalesce(max(seq), 0) FROM t");
    for (long n = 0; limit == 0 || n < limit; n++) {
        char sql[128];
        snprintf(sql, sizeof sql, "INSERT INTO t(seq, pad) VALUES (%" PRId64 ", randomblob(200))",
                 seq + 1);
        db_exec(db, sql);
        tell(fd, (uint64_t)++seq);
    }
    if (walship_flush(argv[2], 60000) != 1) _exit(4);
    tell(fd, MSG_FLUSHED);
    for (;;) pause();
}

/* plainwriter PATH FD ROWS MODE: a plain SQLite connection (no walship)
** inserts ROWS rows into u in one transaction and tells FD (1); then MODE
** "hang" waits to be killed (its WAL stays), "truncate" runs a TRUNCATE
** checkpoint and closes, "close" just closes (as the last connection it
** checkpoints and deletes the WAL). */
static int plainwriter_main(char **argv) {
    int fd = atoi(argv[3]);
    sqlite3 *db = db_open_plain(argv[2], 0);
    sqlite3_busy_timeout(db, 30000);
    db_exec(db, "PRAGMA wal_autocheckpoint=0");
    char sql[256];
    snprintf(sql, sizeof sql,
             "BEGIN; WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < %d) "
             "INSERT INTO u(v) SELECT randomblob(300) FROM c; COMMIT",
             atoi(argv[4]));
    db_exec(db, sql);
    if (strcmp(argv[5], "truncate") == 0) db_exec(db, "PRAGMA wal_checkpoint(TRUNCATE)");
    tell(fd, 1);
    if (strcmp(argv[5], "hang") == 0)
        for (;;) pause();
    sqlite3_close(db);
    return 0;
}

/* resume PATH URL ROWS: opens through walship, commits ROWS rows into t,
** flushes, closes; exits 0 if walship_flush returned 1. */
static int resume_main(char **argv) {
    sqlite3 *db = db_open_walship(argv[2], argv[3], "walship_ship_interval=0");
    sqlite3_busy_timeout(db, 30000);
    int rows = atoi(argv[4]);
    int64_t seq = db_int(db, "SELECT coalesce(max(seq), 0) FROM t");
    for (int i = 1; i <= rows; i++) {
        char sql[128];
        snprintf(sql, sizeof sql, "INSERT INTO t(seq, pad) VALUES (%" PRId64 ", randomblob(200))",
                 seq + i);
        db_exec(db, sql);
    }
    if (!db_flush_or_say(argv[2], db, 60000, "resume")) return 1;
    sqlite3_close(db);
    return 0;
}

/* ---- the test's side ------------------------------------------------------------- */

typedef struct kase {
    char path[4200], url[4200], out[4200];
} kase;

static void setup(kase *k, const char *name) {
    char dir[4100];
    snprintf(dir, sizeof dir, "%.4000s/%s", ws_test_tmpdir(), name);
    CHECK_EQ(ws_test_system("mkdir -p '%s'", dir), 0);
    snprintf(k->path, sizeof k->path, "%s/app.db", dir);
    snprintf(k->url, sizeof k->url, "file://%s/store", dir);
    snprintf(k->out, sizeof k->out, "%s/restored.db", dir);
    sqlite3 *db = db_open_plain(k->path, 0);
    db_exec(db, "PRAGMA journal_mode=WAL; CREATE TABLE t(seq INTEGER PRIMARY KEY, pad BLOB);"
                "CREATE TABLE u(k INTEGER PRIMARY KEY, v BLOB);");
    sqlite3_close(db);
    fprintf(stderr, "-- case %s\n", name);
}

/* A child of this program with a pipe it writes u64 messages to. */
typedef struct child {
    pid_t pid;
    int rfd;
} child;

static child spawn_piped(const char *mode, const char *a1, const char *a2, const char *a3,
                         const char *a4) {
    int p[2];
    CHECK_EQ(pipe2(p, O_CLOEXEC), 0);
    CHECK_EQ(fcntl(p[1], F_SETFD, 0), 0);
    char fdarg[16];
    snprintf(fdarg, sizeof fdarg, "%d", p[1]);
    const char *args[7] = {mode, a1, NULL, NULL, NULL, NULL, NULL};
    /* The descriptor goes where each child expects it. */
    if (strcmp(mode, "walwriter") == 0) {
        args[2] = a2;
        args[3] = fdarg;
        args[4] = a3;
    } else {
        args[2] = fdarg;
        args[3] = a2;
        args[4] = a3;
        (void)a4;
    }
    child c = {child_spawn(args), p[0]};
    close(p[1]);
    return c;
}

/* The next message, waiting at most wait_ms (< 0: up to a minute). Returns
** 0 on a timeout or at EOF. */
static uint64_t read_one(child *c, int wait_ms) {
    struct pollfd p = {c->rfd, POLLIN, 0};
    for (;;) {
        int n = poll(&p, 1, wait_ms < 0 ? 60000 : wait_ms);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return 0;
        uint64_t m;
        ssize_t got = read(c->rfd, &m, sizeof m);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) return 0;
        CHECK_EQ(got, (ssize_t)sizeof m);
        return m;
    }
}

/* Reads every message for ms milliseconds (until EOF with ms < 0), keeping
** the last seq in *acked. */
static void read_for(child *c, int ms, uint64_t *acked) {
    int64_t until = ws_mono_ms() + (ms < 0 ? 600000 : ms);
    for (;;) {
        int64_t left = until - ws_mono_ms();
        if (left < 0) left = 0;
        uint64_t m = read_one(c, ms < 0 ? -1 : (int)left);
        if (m == 0) {
            if (ms < 0 || ws_mono_ms() >= until) return;
            continue;
        }
        if (m != MSG_FLUSHED) *acked = m;
    }
}

static void kill_child(child *c) {
    CHECK_EQ(kill(c->pid, SIGKILL), 0);
    CHECK_EQ(child_wait(c->pid), 128 + SIGKILL);
}

static void finish_child(child *c, uint64_t *acked) {
    read_for(c, -1, acked);
    close(c->rfd);
}

/* A plain writer: inserts rows into u, then mode (hang: killed here). */
static void plain_write(kase *k, int rows, const char *mode) {
    char nrows[16];
    snprintf(nrows, sizeof nrows, "%d", rows);
    child c = spawn_piped("plainwriter", k->path, nrows, mode, NULL);
    uint64_t m = read_one(&c, -1);
    if (m != 1) ws_test_fail(__FILE__, __LINE__, "the plain writer did not commit");
    if (strcmp(mode, "hang") == 0)
        kill_child(&c);
    else
        CHECK_EQ(child_wait(c.pid), 0);
    close(c.rfd);
}

/* A plain reader in this process: as the last connection, its close
** checkpoints the WAL into the file and deletes it. */
static void plain_read(kase *k) {
    sqlite3 *db = db_open_plain(k->path, 0);
    sqlite3_busy_timeout(db, 30000);
    (void)db_int(db, "SELECT count(*) FROM t"); /* fails the test on error */
    CHECK_EQ(sqlite3_close(db), SQLITE_OK);
}

static void resume(kase *k, int rows) {
    char nrows[16];
    snprintf(nrows, sizeof nrows, "%d", rows);
    const char *args[] = {"resume", k->path, k->url, nrows, NULL};
    int rc = child_wait(child_spawn(args));
    if (rc != 0) ws_test_fail(__FILE__, __LINE__, "the resuming walship process failed (%d)", rc);
}


static void check_restore(kase *k, uint64_t acked, const char *what) {
    db_check_latest_restore(k->path, k->url, k->out, acked, what);
}

/* ---- cases ------------------------------------------------------------------------ */

static void case_malformed(void) {
    static kase k;
    setup(&k, "malformed");
    uint64_t acked = 0;
    child w = spawn_piped("walwriter", k.path, k.url, "40", NULL);
    for (uint64_t m; (m = read_one(&w, -1)) != MSG_FLUSHED; acked = m)
        if (m == 0) ws_test_fail(__FILE__, __LINE__, "the walship writer did not flush");
    kill_child(&w);
    finish_child(&w, &acked);
    CHECK_EQ(acked, 40);
    plain_write(&k, 500, "hang");
    plain_read(&k);
    resume(&k, 300);
    check_restore(&k, acked + 300, "malformed");
}

static void case_plainflush(void) {
    static kase k;
    setup(&k, "plainflush");
    sqlite3 *db = db_open_walship(k.path, k.url, "walship_ship_interval=0");
    db_exec(db, "INSERT INTO t(seq, pad) VALUES (1, randomblob(100))");
    CHECK_EQ(walship_flush(k.path, 60000), 1);
    /* A plain connection in this process commits; walship's connection stays
    ** open and idle, so no watermark records these commits. */
    sqlite3 *p = db_open_plain(k.path, 0);
    db_exec(p, "PRAGMA wal_autocheckpoint=0");
    for (int i = 0; i < 20; i++) db_exec(p, "INSERT INTO u(v) VALUES (randomblob(500))");
    CHECK_EQ(walship_flush(k.path, 60000), 1);
    char msg[512];
    if (db_restore(k.url, k.out, 0, 0, 0, msg, sizeof msg) != 0)
        ws_test_fail(__FILE__, __LINE__, "restore: %s", msg);
    sqlite3 *r = db_open_plain(k.out, 1);
    CHECK_EQ(db_int(r, "SELECT count(*) FROM u"), 20);
    CHECK_U64_EQ(db_content_hash(r), db_content_hash(p));
    sqlite3_close(r);
    sqlite3_close(p);
    sqlite3_close(db);
}

static void case_rounds(void) {
    static kase k;
    setup(&k, "rounds");
    /* 200 rounds in the normal build; sanitizer builds (several times
    ** slower) run fewer of the same rounds. */
    const char *env = getenv("WALSHIP_TEST_OUTSIDER_ROUNDS");
    const char *san = getenv("WALSHIP_SANITIZE");
    int rounds = env && *env ? atoi(env) : san && *san ? 60 : 200;
    uint64_t acked = 0;
    int kinds[6] = {0};
    for (int round = 0; round < rounds; round++) {
        child w = spawn_piped("walwriter", k.path, k.url, "0", NULL);
        /* Kill at a random moment: a few while it opens, most once it writes. */
        if (ws_test_rand_below(5) == 0) {
            read_for(&w, (int)ws_test_rand_below(30), &acked);
        } else {
            uint64_t m = read_one(&w, -1);
            if (m == 0) ws_test_fail(__FILE__, __LINE__, "the walship writer made no commit");
            acked = m;
            read_for(&w, (int)ws_test_rand_below(120), &acked);
        }
        kill_child(&w);
        finish_child(&w, &acked);
        int kind = (int)ws_test_rand_below(6);
        kinds[kind]++;
        switch (kind) {
        case 0: plain_read(&k); break;
        case 1: plain_write(&k, 1 + (int)ws_test_rand_below(200), "close"); break;
        case 2: /* finding 1's pattern */
            plain_write(&k, 1 + (int)ws_test_rand_below(500), "hang");
            plain_read(&k);
            break;
        case 3: plain_write(&k, 1 + (int)ws_test_rand_below(50), "truncate"); break;
        case 4: plain_write(&k, 1 + (int)ws_test_rand_below(50), "hang"); break;
        default: break; /* nobody else: walship simply resumes */
        }
        int rows = (int)ws_test_rand_below(3);
        resume(&k, rows);
        acked += (uint64_t)rows;
        char what[64];
        snprintf(what, sizeof what, "round %d (outsider %d)", round, kind);
        check_restore(&k, acked, what);
    }
    fprintf(stderr,
            "%d rounds (reader %d, writer %d, killed writer + reader %d, truncating writer %d, "
            "killed writer %d, none %d), %" PRIu64 " rows acknowledged, %zu generation(s)\n",
            rounds, kinds[0], kinds[1], kinds[2], kinds[3], kinds[4], kinds[5], acked,
            db_generation_count(k.url));
}

int main(int argc, char **argv) {
    if (argc > 1) child_die_with_parent();
    if (argc > 1 && strcmp(argv[1], "walwriter") == 0) return walwriter_main(argv);
    if (argc > 1 && strcmp(argv[1], "plainwriter") == 0) return plainwriter_main(argv);
    if (argc > 1 && strcmp(argv[1], "resume") == 0) return resume_main(argv);
    ws_test_seed(20261203);
    RUN(case_malformed);
    RUN(case_plainflush);
    RUN(case_rounds);
    return 0;
}
