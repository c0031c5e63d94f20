/*
** test_pipeline_snapshot.c -- WAL restarts while a generation-start snapshot
** of a large database runs, and a crash in the middle of one.
**
** While a generation starts, the transactions committed meanwhile are folded
** into the snapshot, and the shipper publishes each as shipped: the overlay
** holds it, so the VFS copies nothing into the spool when SQLite restarts or
** truncates the WAL. A start cut short by a crash begins again from the
** database file.
**
** The test does not race the snapshot: the writer is this process (or a
** child) with walship_upload=0, the shipper is a `walship ship` process, and
** the test stops that process with SIGSTOP once the snapshot's work file
** (<spool>/overlay.tmp) exists -- and only when no update of the spool's
** shared shipper fields is half done (the seqlock at ctl offset 64 is even,
** FORMAT.md 3.2), so a writer reading them never waits for it. Whatever the
** machine's speed, what happens while it is stopped happens mid-snapshot.
** Checked:
**   1. A 64 MiB database, an empty store. While the snapshot is stopped, 48
**      transactions with RESTART and TRUNCATE checkpoints and a tiny
**      wal_autocheckpoint (3 WAL truncations at least, each copying frames
**      into the spool); then the shipper goes on while the writer keeps
**      writing and checkpointing, until the snapshot is in the store. After a
**      flush: the latest restore equals the primary byte for byte; the
**      snapshot's own TXID restores a state the primary really had (its
**      recorded content); and every later TXID restores exactly its
**      transaction's content.
**   2. The same with a writer process and the shipper both SIGKILLed while
**      the snapshot is stopped (after 48 more transactions): the store holds
**      nothing then; reopened through walship (which ships), written to and
**      flushed, the store's latest state equals the primary byte for byte.
**   3. The shipper stops itself (WALSHIP_STOP_AT=genstart_place) after the
**      snapshot first looked at the database file and before it placed
**      consumption; meanwhile the database grows and its WAL is checkpointed
**      and truncated. The generation's first point restores the grown
**      database, and the latest equals the primary byte for byte. (A
**      snapshot that took the size page 1 showed at its first look produced
**      an image too short for its own page 1: seen once in ~25 runs of
**      test_pipeline_faults' flaky case.)
**
** ctest-labels: pipeline
** ctest-timeout: 300
*/
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/util.h"
#include "dbutil.h"
#include "harness.h"
#include "walship.h"

#define DB_MIB 64
#define MAXSEQ 200000

static char dir[4096];

/* A DB_MIB MiB database in WAL mode, written by plain SQLite. */
static void make_big(const char *path) {
    sqlite3 *db = db_open_plain(path, 0);
    char sql[400];
    snprintf(sql, sizeof sql,
             "PRAGMA journal_mode=WAL; CREATE TABLE meta(seq INTEGER); INSERT INTO meta VALUES (0);"
             "CREATE TABLE t(v BLOB); CREATE TABLE big(b BLOB);"
             "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < %d) "
             "INSERT INTO big SELECT randomblob(3000) FROM n; PRAGMA wal_checkpoint(TRUNCATE);",
             DB_MIB * 340);
    db_exec(db, sql);
    sqlite3_close(db);
}

/* One transaction (seq+1); every 8th is followed by a TRUNCATE or RESTART
** checkpoint. Returns 1 if that checkpoint emptied the WAL. */
static int write_one(sqlite3 *db, int i) {
    db_exec(db, "BEGIN; INSERT INTO t VALUES (randomblob(300)); UPDATE meta SET seq = seq + 1;"
                "COMMIT");
    if (i % 8 != 7) return 0;
    int nlog = -1, nckpt = -1;
    int mode = (i / 8) % 2 ? SQLITE_CHECKPOINT_TRUNCATE : SQLITE_CHECKPOINT_RESTART;
    CHECK_EQ(sqlite3_wal_checkpoint_v2(db, "main", mode, &nlog, &nckpt), SQLITE_OK);
    return mode == SQLITE_CHECKPOINT_TRUNCATE && nlog == 0;
}

static sqlite3 *open_ws(const char *path, const char *url) {
    sqlite3 *db = db_open_walship(path, url, "walship_ship_interval=50ms");
    db_exec(db, "PRAGMA wal_autocheckpoint=4");
    return db;
}

/* A writer that records commits but never ships: the shipper is elsewhere. */
static sqlite3 *open_recording(const char *path, const char *url) {
    sqlite3 *db = db_open_walship(path, url, "walship_ship_interval=50ms&walship_upload=0");
    db_exec(db, "PRAGMA wal_autocheckpoint=4");
    return db;
}

/* The running shipper process, killed at exit (a failed check exits at once;
** the process must not outlive the test). */
static pid_t live_shipper, live_writer;
static pid_t test_pid;

static void kill_children(void) {
    if (getpid() != test_pid) return;
    if (live_shipper > 0) kill(live_shipper, SIGKILL);
    if (live_writer > 0) kill(live_writer, SIGKILL);
}

/* Starts `walship ship PATH --url URL` (ship interval 50 ms); returns its pid. */
static pid_t start_shipper(const char *path, const char *url) {
    const char *bin = ws_test_env("WALSHIP_BIN");
    char *const argv[] = {(char *)bin, (char *)"ship", (char *)path, (char *)"--url", (char *)url,
                          NULL};
    int quiet = getenv("WALSHIP_LOG") == NULL; /* warnings only, unless asked */
    setenv("WALSHIP_SHIP_INTERVAL", "50ms", 1);
    if (quiet) setenv("WALSHIP_LOG", "warn", 1);
    extern char **environ;
    pid_t pid = 0;
    int rc = posix_spawn(&pid, bin, NULL, NULL, argv, environ);
    unsetenv("WALSHIP_SHIP_INTERVAL");
    if (quiet) unsetenv("WALSHIP_LOG");
    if (rc != 0) ws_test_fail(__FILE__, __LINE__, "posix_spawn %s: %d", bin, rc);
    live_shipper = pid;
    return pid;
}

static int path_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

/* The spool's shipper seqlock counter (ctl offset 64, host order). */
static uint32_t ship_seqlock(const char *spool) {
    char p[4300];
    snprintf(p, sizeof p, "%s/ctl", spool);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    uint32_t v = 1;
    if (fd < 0 || ws_pread_full(fd, &v, sizeof v, 64) != (ssize_t)sizeof v)
        ws_test_fail(__FILE__, __LINE__, "read %s", p);
    close(fd);
    return v;
}

/* Stops the shipper process pid while its generation-start snapshot is in
** progress (its work file exists) and no write of the spool's shipper fields
** is half done. Fails if no snapshot is seen in progress within 60 s. */
static void stop_mid_snapshot(pid_t pid, const char *spool, const char *url) {
    char overlay[4400];
    snprintf(overlay, sizeof overlay, "%s/overlay.tmp", spool);
    int64_t deadline = ws_mono_ms() + 60000;
    for (;;) {
        if (ws_mono_ms() > deadline)
            ws_test_fail(__FILE__, __LINE__,
                         "no snapshot seen in progress in 60 s (%zu generation(s) stored)",
                         db_generation_count(url));
        if (!path_exists(overlay)) {
            ws_sleep_ms(1); /* polling for the work file, with a deadline */
            continue;
        }
        CHECK_EQ(kill(pid, SIGSTOP), 0);
        int st = 0;
        CHECK_EQ(waitpid(pid, &st, WUNTRACED), pid);
        CHECK(WIFSTOPPED(st));
        if (path_exists(overlay) && (ship_seqlock(spool) & 1) == 0) return;
        CHECK_EQ(kill(pid, SIGCONT), 0);
    }
}

static void check_latest(const char *path, const char *url, sqlite3 *db) {
    char out[4200], msg[512];
    CHECK_EQ(walship_flush(path, 120000), 1);
    db_exec(db, "PRAGMA wal_checkpoint(TRUNCATE)");
    snprintf(out, sizeof out, "%s/latest.db", dir);
    int rc = db_restore(url, out, 0, 0, 0, msg, sizeof msg);
    if (rc != 0) ws_test_fail(__FILE__, __LINE__, "restore latest: %s", msg);
    CHECK(files_equal(path, out));
}

static void folding_with_restarts(void) {
    char path[4200], url[4200], out[4200], msg[512], spool[4300];
    snprintf(path, sizeof path, "%s/a.db", dir);
    snprintf(url, sizeof url, "file://%s/store-a", dir);
    db_spool_dir(path, spool, sizeof spool);
    make_big(path);
    sqlite3 *db = open_recording(path, url);
    pid_t shipper = start_shipper(path, url);
    stop_mid_snapshot(shipper, spool, url);
    int n = 0, truncations = 0;
    for (int k = 0; k < 48; k++, n++) truncations += write_one(db, n);
    fprintf(stderr, "%d WAL truncations while the snapshot was stopped\n", truncations);
    CHECK(truncations >= 3);
    CHECK_EQ(db_generation_count(url), 0);
    CHECK_EQ(kill(shipper, SIGCONT), 0);
    /* and more while it runs, until it is in the store */
    int64_t deadline = ws_mono_ms() + 240000;
    while (db_generation_count(url) == 0) {
        for (int k = 0; k < 16; k++, n++) {
            CHECK(n + 1 < MAXSEQ);
            truncations += write_one(db, n);
        }
        CHECK(ws_mono_ms() < deadline);
    }
    fprintf(stderr, "%d transactions, %d WAL truncations before the snapshot was stored\n", n,
            truncations);
    /* and some after it, shipped as segments */
    for (int k = 0; k < 200; k++, n++) write_one(db, n);
    check_latest(path, url, db);

    uint64_t first = 0, last = 0;
    db_txid_range(url, &first, &last);
    CHECK(last > first);
    /* The snapshot's TXID is a state the primary had; each later TXID is
    ** exactly one more transaction. Transaction k set seq = k and added row
    ** k of t (rows are never changed), so the state at seq k is: rows 1..k
    ** of the primary's t, and the untouched big table. */
    snprintf(out, sizeof out, "%s/at.db", dir);
    int64_t base_seq = -1, nbig = db_int(db, "SELECT count(*) FROM big");
    char sql[4400];
    for (uint64_t t = first; t <= last; t += (t == first ? 1 : 1 + ws_test_rand_below(40))) {
        int rc = db_restore(url, out, 1, t, 0, msg, sizeof msg);
        if (rc != 0) ws_test_fail(__FILE__, __LINE__, "restore --txid %" PRIu64 ": %s", t, msg);
        sqlite3 *r = db_open_plain(out, 1);
        int64_t seq = db_int(r, "SELECT seq FROM meta");
        CHECK(seq >= 0 && seq <= n);
        if (base_seq < 0) base_seq = seq - (int64_t)(t - first);
        CHECK_EQ(seq, base_seq + (int64_t)(t - first));
        CHECK_EQ(db_int(r, "SELECT count(*) FROM t"), seq);
        snprintf(sql, sizeof sql, "ATTACH '%s' AS p", path);
        db_exec(r, sql);
        CHECK_EQ(db_int(r, "SELECT count(*) FROM main.t AS a JOIN p.t AS b ON a.rowid = b.rowid AND a.v = b.v"), seq);
        CHECK_EQ(db_int(r, "SELECT count(*) FROM big"), nbig);
        sqlite3_close(r);
    }
    /* the last TXID is the last commit */
    CHECK_EQ(base_seq + (int64_t)(last - first), n);
    CHECK_EQ(kill(shipper, SIGTERM), 0);
    CHECK_EQ(child_wait(shipper), 0);
    live_shipper = 0;
    sqlite3_close(db);
}

/* writer PATH URL: records commits (no shipping) until killed. */
static int writer_main(char **argv) {
    db_register();
    sqlite3 *db = open_recording(argv[2], argv[3]);
    for (int i = 0; i < MAXSEQ; i++) write_one(db, i);
    sqlite3_close(db);
    return 1; /* never reached: the test kills it long before */
}

static void crash_while_folding(void) {
    char path[4200], url[4200], spool[4300];
    snprintf(path, sizeof path, "%s/b.db", dir);
    snprintf(url, sizeof url, "file://%s/store-b", dir);
    db_spool_dir(path, spool, sizeof spool);
    make_big(path);
    const char *args[] = {"writer", path, url, NULL};
    pid_t writer = child_spawn(args);
    live_writer = writer;
    sqlite3 *ro = db_open_plain(path, 1);
    int64_t deadline = ws_mono_ms() + 120000;
    while (db_int(ro, "SELECT seq FROM meta") < 1) { /* its spool exists */
        CHECK(ws_mono_ms() < deadline);
        ws_sleep_ms(5); /* polling a condition, with a deadline */
    }
    pid_t shipper = start_shipper(path, url);
    stop_mid_snapshot(shipper, spool, url);
    /* until the writer has checkpointed its WAL a few times (every 8th commit) */
    int64_t seq0 = db_int(ro, "SELECT seq FROM meta");
    while (db_int(ro, "SELECT seq FROM meta") < seq0 + 48) {
        CHECK(ws_mono_ms() < deadline);
        ws_sleep_ms(5); /* polling a condition, with a deadline */
    }
    sqlite3_close(ro);
    CHECK_EQ(kill(writer, SIGKILL), 0);
    CHECK_EQ(child_wait(writer), 128 + SIGKILL);
    live_writer = 0;
    CHECK_EQ(kill(shipper, SIGKILL), 0);
    CHECK_EQ(child_wait(shipper), 128 + SIGKILL);
    live_shipper = 0;
    /* killed mid-snapshot: nothing of the generation was stored */
    CHECK_EQ(db_generation_count(url), 0);
    sqlite3 *db = open_ws(path, url);
    for (int i = 0; i < 100; i++) write_one(db, i);
    check_latest(path, url, db);
    sqlite3_close(db);
}

/* Waits (60 s at most) until process pid has stopped itself. */
static void wait_stopped(pid_t pid) {
    int64_t deadline = ws_mono_ms() + 60000;
    for (;;) {
        int st = 0;
        pid_t r = waitpid(pid, &st, WUNTRACED | WNOHANG);
        if (r == pid) {
            CHECK(WIFSTOPPED(st));
            return;
        }
        CHECK_EQ(r, 0);
        if (ws_mono_ms() > deadline) ws_test_fail(__FILE__, __LINE__, "the shipper never stopped");
        ws_sleep_ms(5); /* polling a condition, with a deadline */
    }
}

static void grown_before_placing(void) {
    char path[4200], url[4200], out[4200], msg[512];
    snprintf(path, sizeof path, "%s/c.db", dir);
    snprintf(url, sizeof url, "file://%s/store-c", dir);
    sqlite3 *p = db_open_plain(path, 0);
    db_exec(p, "PRAGMA journal_mode=WAL; CREATE TABLE meta(seq INTEGER); INSERT INTO meta VALUES (0);"
               "CREATE TABLE t(v BLOB); CREATE TABLE big(b BLOB);"
               "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 20) "
               "INSERT INTO big SELECT randomblob(3000) FROM n;");
    sqlite3_close(p);
    sqlite3 *db = open_recording(path, url);
    int64_t pages0 = db_int(db, "PRAGMA page_count");
    setenv("WALSHIP_STOP_AT", "genstart_place", 1);
    pid_t shipper = start_shipper(path, url);
    unsetenv("WALSHIP_STOP_AT");
    wait_stopped(shipper);
    /* The database grows, and the WAL that grew it is checkpointed and
    ** truncated: the snapshot will find no WAL, only a longer file. */
    db_exec(db, "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 15) "
                "INSERT INTO big SELECT randomblob(3000) FROM n;");
    int nlog = -1, nckpt = -1;
    CHECK_EQ(sqlite3_wal_checkpoint_v2(db, "main", SQLITE_CHECKPOINT_TRUNCATE, &nlog, &nckpt),
             SQLITE_OK);
    CHECK_EQ(nlog, 0);
    int64_t pages1 = db_int(db, "PRAGMA page_count");
    fprintf(stderr, "the database grew from %" PRId64 " to %" PRId64 " pages before placing\n",
            pages0, pages1);
    CHECK(pages1 > pages0);
    CHECK_EQ(kill(shipper, SIGCONT), 0);
    int64_t deadline = ws_mono_ms() + 120000;
    while (db_generation_count(url) == 0) {
        CHECK(ws_mono_ms() < deadline);
        ws_sleep_ms(5); /* polling a condition, with a deadline */
    }
    /* The generation's first point is the grown database. */
    uint64_t first = 0, last = 0;
    db_txid_range(url, &first, &last);
    snprintf(out, sizeof out, "%s/c-first.db", dir);
    int rc = db_restore(url, out, 1, first, 0, msg, sizeof msg);
    if (rc != 0) ws_test_fail(__FILE__, __LINE__, "restore --txid %" PRIu64 ": %s", first, msg);
    sqlite3 *r = db_open_plain(out, 1);
    CHECK_EQ(db_int(r, "SELECT count(*) FROM big"), 35);
    CHECK_EQ(db_int(r, "PRAGMA page_count"), pages1);
    sqlite3_close(r);
    for (int i = 0; i < 20; i++) write_one(db, i);
    check_latest(path, url, db);
    CHECK_EQ(kill(shipper, SIGTERM), 0);
    CHECK_EQ(child_wait(shipper), 0);
    live_shipper = 0;
    sqlite3_close(db);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "writer") == 0) return writer_main(argv);
    ws_test_seed(31);
    snprintf(dir, sizeof dir, "%s", ws_test_tmpdir());
    test_pid = getpid();
    atexit(kill_children);
    db_register();
    fprintf(stderr, "-- WAL restarts while a generation-start snapshot runs\n");
    folding_with_restarts();
    fprintf(stderr, "-- a writer and its shipper killed while the generation-start snapshot runs\n");
    crash_while_folding();
    fprintf(stderr, "-- the database grows between the snapshot's first look and its placing\n");
    grown_before_placing();
    return 0;
}
