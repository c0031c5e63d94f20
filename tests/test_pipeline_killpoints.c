/*
** test_pipeline_killpoints.c -- SIGKILL at each place where walship has
** recorded something it has not done yet, deterministically
** (WALSHIP_KILL_AT, common/sysio.h), so every crash-recovery rule of
** docs/ARCHITECTURE.md section 3.2 is exercised in every run:
**
**   wal_end, wal_begin  a WAL restart recorded (end; then the next begin),
**                       the header not written
**   wal_truncate        a TRUNCATE checkpoint's end recorded, the WAL not cut
**   wal_delete          the last close's end recorded, the WAL not deleted
**   seg_synced          a segment's durability point made and published to
**                       the VFS: start-up must recover seg.tmp
**   seg_queued          a segment queued, the state not saved: start-up
**                       must redo it into the page hashes
**   genstart_queued     a generation's first snapshot queued, the state not
**                       saved: an orphan, never uploaded
**   snap_queued         a periodic snapshot queued, the state not saved
**   uploaded            an object stored, not yet removed from the queue
**   wal_header          (its own case) a restart's new WAL header written,
**                       nothing committed; another process's long-lived
**                       connection, which has restarted the WAL more often
**                       and so writes a different header for the same salts,
**                       commits next: its frames chain from its header, and
**                       the history goes on (found by the soak)
**
** For each point a writer (this program again) commits, checkpoints and
** reopens until the point kills it; then another walship process opens the
** database, commits and flushes. Checked: every acknowledged row is in the
** latest restore, which equals the primary and passes integrity_check; the
** store holds one generation (a SIGKILL never costs continuity); and where
** the point has its own recovery rule, the resuming process's log shows the
** rule at work: wal_revived (a WAL whose recorded end never happened lives
** on), after wal_begin either that or wal_lost (the begun WAL's header never
** reached the file: dropped with no frames), depending on how far the
** shipper had got; segment_recovered, state_redone, queue_orphan. After
** wal_delete no rule need fire: the next writer restarts the fully
** checkpointed WAL as usual.
**
** ctest-labels: pipeline
** ctest-timeout: 300
*/
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "dbutil.h"
#include "harness.h"
#include "walship.h"

static const char *const OPTS = "walship_ship_interval=2s&walship_snapshot_interval=1s";

/* writer PATH URL FD: commits one row per transaction, telling FD each seq
** after COMMIT returned; checkpoints now and then, and reopens. Runs until
** its kill point (WALSHIP_KILL_AT) stops it. */
static int writer_main(char **argv) {
    int fd = atoi(argv[4]);
    sqlite3 *db = db_open_walship(argv[2], argv[3], OPTS);
    int64_t seq = db_int(db, "SELECT coalesce(max(seq), 0) FROM t");
    for (int64_t n = 1;; n++) {
        char sql[128];
        snprintf(sql, sizeof sql, "INSERT INTO t(seq, pad) VALUES (%" PRId64 ", randomblob(300))",
                 seq + 1);
        db_exec(db, sql);
        seq++;
        uint64_t v = (uint64_t)seq;
        if (ws_write_all(fd, &v, sizeof v) != 0) return 1;
        if (n % 25 == 0) sqlite3_wal_checkpoint_v2(db, "main", SQLITE_CHECKPOINT_RESTART, NULL, NULL);
        if (n % 60 == 0) sqlite3_wal_checkpoint_v2(db, "main", SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
        if (n % 150 == 0) {
            sqlite3_close(db); /* the last close checkpoints and deletes the WAL */
            db = db_open_walship(argv[2], argv[3], OPTS);
        }
        if (n % 10 == 0) ws_sleep_ms(20); /* pacing: segments get durability points */
    }
}

/* onewrite PATH URL: commits one row (its kill point stops it first). */
static int onewrite_main(char **argv) {
    sqlite3 *db = db_open_walship(argv[2], argv[3], OPTS);
    db_exec(db, "INSERT INTO t(seq, pad) SELECT coalesce(max(seq), 0) + 1, randomblob(10) FROM t");
    return 3; /* not killed */
}

static FILE *resume_log;
static void log_sink(int level, const char *line) {
    (void)level;
    fprintf(resume_log, "%s\n", line);
    fflush(resume_log);
}

/* resume PATH URL LOG: opens through walship (its log lines go to LOG),
** commits two rows and flushes; exit 0 if flushed. */
static int resume_main(char **argv) {
    resume_log = fopen(argv[4], "w");
    if (resume_log == NULL) return 2;
    db_register();
    ws_log_set_sink(log_sink, WS_LOG_INFO);
    sqlite3 *db = db_open_walship(argv[2], argv[3], "walship_ship_interval=0");
    db_exec(db, "INSERT INTO t(seq, pad) SELECT coalesce(max(seq), 0) + 1, randomblob(10) FROM t");
    db_exec(db, "INSERT INTO t(seq, pad) SELECT coalesce(max(seq), 0) + 1, randomblob(10) FROM t");
    if (!db_flush_or_say(argv[2], db, 60000, "resume")) return 1;
    sqlite3_close(db);
    return 0;
}


/* A case's directory <tmp>/name with a new database app.db (table t), its
** store and the restore's output path. */
typedef struct kcase {
    char dir[3000], path[3100], url[3200], out[3200];
} kcase;

static void kcase_setup(kcase *k, const char *name) {
    snprintf(k->dir, sizeof k->dir, "%.2900s/%s", ws_test_tmpdir(), name);
    CHECK_EQ(ws_test_system("mkdir -p '%s'", k->dir), 0);
    snprintf(k->path, sizeof k->path, "%s/app.db", k->dir);
    snprintf(k->url, sizeof k->url, "file://%s/store", k->dir);
    snprintf(k->out, sizeof k->out, "%s/restored.db", k->dir);
    sqlite3 *db = db_open_plain(k->path, 0);
    db_exec(db, "PRAGMA journal_mode=WAL; CREATE TABLE t(seq INTEGER PRIMARY KEY, pad BLOB);");
    sqlite3_close(db);
}

static void run_point(const char *point, int nth, const char *expect_event) {
    static kcase k;
    char logp[3200], kill_at[96], fdarg[16];
    kcase_setup(&k, point);
    const char *path = k.path, *url = k.url, *out = k.out;
    snprintf(logp, sizeof logp, "%s/resume.log", k.dir);

    int p[2];
    CHECK_EQ(pipe2(p, O_CLOEXEC), 0);
    CHECK_EQ(fcntl(p[1], F_SETFD, 0), 0);
    snprintf(fdarg, sizeof fdarg, "%d", p[1]);
    snprintf(kill_at, sizeof kill_at, "%s:%d", point, nth);
    setenv("WALSHIP_KILL_AT", kill_at, 1);
    const char *args[] = {"writer", path, url, fdarg, NULL};
    pid_t pid = child_spawn(args);
    unsetenv("WALSHIP_KILL_AT");
    close(p[1]);
    uint64_t acked = 0, v;
    struct pollfd pf = {p[0], POLLIN, 0};
    int64_t deadline = ws_mono_ms() + 90000;
    for (;;) {
        int n = poll(&pf, 1, 1000);
        if (n > 0) {
            ssize_t got = read(p[0], &v, sizeof v);
            if (got == (ssize_t)sizeof v) {
                acked = v;
                continue;
            }
            if (got == 0) break; /* the writer is gone */
        }
        if (ws_mono_ms() > deadline) {
            kill(pid, SIGKILL);
            ws_test_fail(__FILE__, __LINE__, "%s: the writer never reached its kill point", point);
        }
    }
    close(p[0]);
    CHECK_EQ(child_wait(pid), 128 + SIGKILL);

    const char *rargs[] = {"resume", path, url, logp, NULL};
    int rc = child_wait(child_spawn(rargs));
    if (rc != 0) ws_test_fail(__FILE__, __LINE__, "%s: the resuming process failed (%d)", point, rc);
    acked += 2;

    char what[96];
    snprintf(what, sizeof what, "kill point %s", point);
    db_check_latest_restore(path, url, out, acked, what);
    size_t gens = db_generation_count(url);
    if (gens != 1) ws_test_fail(__FILE__, __LINE__, "%s: %zu generations, expected 1", point, gens);
    if (expect_event) {
        wsbuf b = {0};
        wserr err = {0};
        CHECK_OK(ws_read_file(logp, 1 << 20, &b, &err), &err);
        CHECK_OK(wsbuf_append(&b, "", 1), NULL);
        /* expect_event: one event name, or several separated by '|' */
        int seen = 0;
        for (const char *e = expect_event; *e && !seen;) {
            size_t n = strcspn(e, "|");
            char needle[96];
            snprintf(needle, sizeof needle, "event=%.*s ", (int)n, e);
            seen = strstr((const char *)b.p, needle) != NULL;
            e += n + (e[n] == '|');
        }
        if (!seen)
            ws_test_fail(__FILE__, __LINE__, "%s: the resume never showed event=%s; its log:\n%s",
                         point, expect_event, (const char *)b.p);
        wsbuf_free(&b);
    }
    fprintf(stderr, "   %-16s killed after %" PRIu64 " commits%s%s\n", point, acked - 2,
            expect_event ? ", recovered: " : "", expect_event ? expect_event : "");
}

static void insert_rows(sqlite3 *db, int n) {
    for (int i = 0; i < n; i++)
        db_exec(db, "INSERT INTO t(seq, pad) SELECT coalesce(max(seq), 0) + 1, randomblob(300) FROM t");
}

static void run_rewritten_header(void) {
    static kcase k;
    kcase_setup(&k, "wal_header");
    const char *path = k.path, *url = k.url, *out = k.out;
    /* A long-lived connection that restarts the WAL three times (its
    ** checkpoint count, in every header it writes, becomes 3)... */
    sqlite3 *db = db_open_walship(path, url, "walship_ship_interval=0");
    db_exec(db, "PRAGMA wal_autocheckpoint=0");
    for (int i = 0; i < 4; i++) {
        insert_rows(db, 5);
        CHECK_EQ(walship_flush(path, 60000), 1);
        CHECK_EQ(sqlite3_wal_checkpoint_v2(db, "main", SQLITE_CHECKPOINT_PASSIVE, NULL, NULL),
                 SQLITE_OK);
    }
    /* ...then another process restarts it (count 1), writes the new header
    ** and dies before its commit. */
    setenv("WALSHIP_KILL_AT", "wal_header:1", 1);
    const char *args[] = {"onewrite", path, url, NULL};
    pid_t pid = child_spawn(args);
    unsetenv("WALSHIP_KILL_AT");
    CHECK_EQ(child_wait(pid), 128 + SIGKILL);
    /* The long-lived connection commits into that WAL with its own header. */
    insert_rows(db, 10);
    if (!db_flush_or_say(path, db, 60000, "wal_header"))
        ws_test_fail(__FILE__, __LINE__, "wal_header: the history did not go on");
    db_check_latest_restore(path, url, out, 30, "kill point wal_header");
    size_t gens = db_generation_count(url);
    if (gens != 1) ws_test_fail(__FILE__, __LINE__, "wal_header: %zu generations, expected 1", gens);
    sqlite3_close(db);
    fprintf(stderr, "   %-16s a header rewritten by another connection: one generation\n",
            "wal_header");
}

int main(int argc, char **argv) {
    if (argc > 1) child_die_with_parent();
    if (argc > 1 && strcmp(argv[1], "onewrite") == 0) return onewrite_main(argv);
    if (argc > 1 && strcmp(argv[1], "writer") == 0) return writer_main(argv);
    if (argc > 1 && strcmp(argv[1], "resume") == 0) return resume_main(argv);
    ws_test_seed(20261203);
    static const struct {
        const char *point;
        const char *event;
    } points[] = {{"wal_end", "wal_revived"},           {"wal_begin", "wal_lost|wal_revived"},
                  {"wal_truncate", "wal_revived"},      {"wal_delete", NULL},
                  {"seg_synced", "segment_recovered"}, {"seg_queued", "state_redone"},
                  {"genstart_queued", "queue_orphan"}, {"snap_queued", NULL},
                  {"uploaded", NULL}};
    const char *only = getenv("WALSHIP_TEST_KILLPOINT"); /* debugging: one point */
    for (size_t i = 0; i < sizeof points / sizeof points[0]; i++) {
        if (only && strcmp(only, points[i].point) != 0) continue;
        /* A database has one generation start: kill at the first. */
        int nth = strcmp(points[i].point, "genstart_queued") == 0 ? 1 : 1 + (int)ws_test_rand_below(3);
        run_point(points[i].point, nth, points[i].event);
    }
    if (!only || strcmp(only, "wal_header") == 0) {
        db_register();
        run_rewritten_header();
    }
    return 0;
}
