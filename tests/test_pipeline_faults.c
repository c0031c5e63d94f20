/*
** test_pipeline_faults.c -- the spool's disk misbehaves; nothing acknowledged
** is lost (issue 7: "fault injection beyond the network").
**
** Faults come from walship's own fault layer (common/sysio.h): the writer
** runs as a child process with WALSHIP_FAULTS rules, each active while a flag
** file the test creates and removes exists.
**
**   disk_full    the store fails (so segments queue up), then the spool's
**                disk is full (every write under the spool: ENOSPC). Commits
**                go on (some may fail: a WAL restart needs room for its copy)
**                and last_error says the disk is full; the writer stops; the
**                store comes back while the disk is still full: the queue
**                uploads anyway (that is what frees space). Then the disk
**                frees up and everything drains.
**   flaky        for a few seconds, random faults come and go: EIO on
**                fsync of the spool's logs and of the state file, short
**                writes to the logs, ENOSPC on segment files and renames into
**                the queue, while the writer commits and checkpoints
**                (RESTART, TRUNCATE). Then they stop and everything drains.
**   spool_limit  the store fails for long with a 1 MiB spool limit: the
**                queued history is dropped (status: discarding, last_error)
**                and the spool stays small; the store comes back: a new
**                generation holds every row.
**   power_loss   rounds of: a writer (synchronous=FULL) is SIGKILLed at a
**                random moment; the spool then loses every write not synced
**                (WALSHIP_POWERLOSS_DIR: files revert to their last synced
**                bytes); a walship process resumes and flushes.
** Every case ends with: every acknowledged row restored, the restore equal to
** the primary, integrity_check ok.
**
** ctest-labels: pipeline
** ctest-timeout: 600
*/
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/sysio.h"
#include "common/util.h"
#include "dbutil.h"
#include "harness.h"
#include "walship.h"

/* ---- the writer (a child process) ------------------------------------------------- */

/* writer PATH URL FD SYNC FAULTS POWERLOSS: commits one row per transaction into t (seq = max
** + 1) and tells FD each seq after COMMIT returned OK. A failing commit (the
** disk is full, a copy before a WAL restart could not be made) is rolled
** back and tried again. Now and then a RESTART or TRUNCATE checkpoint. Runs
** until killed or until FD is closed. */
/* Children get their fault settings as arguments and set them before any
** thread exists (setenv in the test process, which has shipper threads,
** would race with their getenv). "-" means unset. */
static void child_env(const char *faults, const char *powerloss) {
    if (faults && strcmp(faults, "-") != 0) setenv("WALSHIP_FAULTS", faults, 1);
    if (powerloss && strcmp(powerloss, "-") != 0) setenv("WALSHIP_POWERLOSS_DIR", powerloss, 1);
}

static int writer_main(char **argv) {
    child_env(argv[6], argv[7]);
    int fd = atoi(argv[4]);
    sqlite3 *db = db_open_walship(argv[2], argv[3], "walship_ship_interval=100ms");
    sqlite3_busy_timeout(db, 30000);
    db_exec(db, strcmp(argv[5], "full") == 0 ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL");
    db_exec(db, "PRAGMA wal_autocheckpoint=30");
    int64_t seq = db_int(db, "SELECT coalesce(max(seq), 0) FROM t");
    uint64_t r = (uint64_t)getpid() * 2654435761u;
    signal(SIGPIPE, SIG_IGN);
    for (;;) {
        char sql[160];
        snprintf(sql, sizeof sql, "INSERT INTO t(seq, pad) VALUES (%" PRId64 ", randomblob(%d))",
                 seq + 1, 100 + (int)(r % 3000));
        if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK) {
            sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
            ws_sleep_ms(5);
            continue;
        }
        seq++;
        uint64_t v = (uint64_t)seq;
        if (ws_write_all(fd, &v, sizeof v) != 0) break;
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        if ((r >> 33) % 40 == 0)
            sqlite3_wal_checkpoint_v2(db, "main",
                                      (r >> 40) % 2 ? SQLITE_CHECKPOINT_RESTART : SQLITE_CHECKPOINT_TRUNCATE,
                                      NULL, NULL);
    }
    sqlite3_close(db);
    return 0;
}

/* resume PATH URL FAULTS POWERLOSS: opens through walship and flushes;
** exit 0 if flushed. */
static int resume_main(char **argv) {
    child_env(argv[4], argv[5]);
    sqlite3 *db = db_open_walship(argv[2], argv[3], "walship_ship_interval=0");
    if (!db_flush_or_say(argv[2], db, 120000, "resume")) return 1;
    sqlite3_close(db);
    return 0;
}

/* ---- the test's side ------------------------------------------------------------- */

typedef struct kase {
    char dir[3000], path[3100], url[3200], store[3100], spool[3200], out[3200];
} kase;

static void setup(kase *k, const char *name) {
    snprintf(k->dir, sizeof k->dir, "%.2900s/%s", ws_test_tmpdir(), name);
    CHECK_EQ(ws_test_system("mkdir -p '%s'", k->dir), 0);
    snprintf(k->path, sizeof k->path, "%s/app.db", k->dir);
    snprintf(k->store, sizeof k->store, "%s/store", k->dir);
    snprintf(k->url, sizeof k->url, "file://%s", k->store);
    snprintf(k->out, sizeof k->out, "%s/restored.db", k->dir);
    db_spool_dir(k->path, k->spool, sizeof k->spool);
    sqlite3 *db = db_open_plain(k->path, 0);
    db_exec(db, "PRAGMA journal_mode=WAL; CREATE TABLE t(seq INTEGER PRIMARY KEY, pad BLOB);");
    sqlite3_close(db);
    fprintf(stderr, "-- case %s\n", name);
}

typedef struct writer {
    pid_t pid;
    int rfd;
    uint64_t acked;
} writer;

/* The fault settings children of the current case get ("-": none). */
static const char *cur_faults = "-", *cur_powerloss = "-";

static writer start_writer(kase *k, const char *sync) {
    int p[2];
    CHECK_EQ(pipe2(p, O_CLOEXEC), 0);
    CHECK_EQ(fcntl(p[1], F_SETFD, 0), 0);
    char fdarg[16];
    snprintf(fdarg, sizeof fdarg, "%d", p[1]);
    const char *args[] = {"writer", k->path, k->url, fdarg, sync, cur_faults, cur_powerloss, NULL};
    writer w = {child_spawn(args), p[0], 0};
    close(p[1]);
    return w;
}

/* Reads acknowledgements for ms milliseconds (until EOF if ms < 0). */
static void drain_acks(writer *w, int ms) {
    struct pollfd p = {w->rfd, POLLIN, 0};
    int64_t until = ws_mono_ms() + (ms < 0 ? 120000 : ms);
    for (;;) {
        int64_t left = until - ws_mono_ms();
        if (left < 0) return;
        int n = poll(&p, 1, (int)left);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return;
        uint64_t v;
        ssize_t got = read(w->rfd, &v, sizeof v);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) return;
        CHECK_EQ(got, (ssize_t)sizeof v);
        w->acked = v;
    }
}

/* Reads acknowledgements until one passes `than` (a minute at most). */
static void wait_acked_past(writer *w, uint64_t than, int line) {
    int64_t deadline = ws_mono_ms() + 60000;
    while (w->acked <= than) {
        if (ws_mono_ms() > deadline)
            ws_test_fail(__FILE__, line, "the writer acknowledged nothing past %" PRIu64 " in a minute",
                         than);
        drain_acks(w, 100);
    }
}

static void kill_writer(writer *w) {
    CHECK_EQ(kill(w->pid, SIGKILL), 0);
    CHECK_EQ(child_wait(w->pid), 128 + SIGKILL);
    drain_acks(w, -1);
    close(w->rfd);
}

static void resume(kase *k) {
    const char *args[] = {"resume", k->path, k->url, cur_faults, cur_powerloss, NULL};
    int rc = child_wait(child_spawn(args));
    if (rc != 0) ws_test_fail(__FILE__, __LINE__, "the resuming walship process failed (%d)", rc);
}

static void flag(const char *path, int on) {
    if (on) {
        int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        CHECK(fd >= 0);
        close(fd);
    } else {
        CHECK(unlink(path) == 0 || errno == ENOENT);
    }
}


static void check_restore(kase *k, uint64_t acked, const char *what) {
    db_check_latest_restore(k->path, k->url, k->out, acked, what);
}

/* `walship status DB --json` (the CLI reads the spool like any process). */
static void status_of(kase *k, char *out, size_t n) {
    db_capture(out, n, "env -u WALSHIP_FAULTS '%s' status '%s' --json", ws_test_env("WALSHIP_BIN"),
               k->path);
}

static void store_frozen(kase *k, int on) {
    if (ws_test_system("chattr -R %ci '%s'", on ? '+' : '-', k->store) != 0)
        ws_test_fail(__FILE__, __LINE__,
                     "chattr %ci %s failed: this test needs root on a file system with the "
                     "immutable attribute (ext4, xfs, btrfs)",
                     on ? '+' : '-', k->store);
}

static int queue_files(kase *k) {
    char buf[4096];
    db_capture(buf, sizeof buf, "ls '%s/queue' 2>/dev/null | wc -l", k->spool);
    return atoi(buf);
}

/* ---- cases ------------------------------------------------------------------------ */

static void case_disk_full(void) {
    static kase k;
    setup(&k, "disk_full");
    char full[3100], rules[16000];
    snprintf(full, sizeof full, "%s/flag-disk-full", k.dir);
    snprintf(rules, sizeof rules, "any:ENOSPC,path=%s/,while=%s", k.spool, full);
    cur_faults = rules;
    writer w = start_writer(&k, "normal");
    wait_acked_past(&w, 0, __LINE__);
    /* The store fails (its directories immutable: nothing can be created
    ** in them, even by root): closed segments wait in the queue. */
    store_frozen(&k, 1);
    int64_t deadline = ws_mono_ms() + 60000;
    while (queue_files(&k) < 2) {
        if (ws_mono_ms() > deadline) ws_test_fail(__FILE__, __LINE__, "nothing queued while the store failed");
        drain_acks(&w, 50);
    }
    /* The spool's disk fills up. Commits go on (those needing a copy fail
    ** and are retried); the status says why nothing moves. */
    flag(full, 1);
    uint64_t at_full = w.acked;
    char st[16384];
    deadline = ws_mono_ms() + 60000;
    for (;;) {
        drain_acks(&w, 50);
        status_of(&k, st, sizeof st);
        if (strstr(st, "No space left on device") || strstr(st, "no space")) break;
        if (ws_mono_ms() > deadline)
            ws_test_fail(__FILE__, __LINE__, "last_error never named the full disk: %s", st);
    }
    wait_acked_past(&w, at_full, __LINE__); /* the application did not stop */
    /* The writer stops; the store comes back; the disk is still full. */
    kill_writer(&w);
    store_frozen(&k, 0);
    const char *args[] = {"resume", k.path, k.url, cur_faults, cur_powerloss, NULL};
    pid_t r = child_spawn(args); /* its shipper does the work; its flush waits */
    deadline = ws_mono_ms() + 120000;
    while (queue_files(&k) > 0) {
        if (ws_mono_ms() > deadline)
            ws_test_fail(__FILE__, __LINE__, "the queue never drained while the disk was full");
        ws_sleep_ms(50);
    }
    /* Room again: everything drains. */
    flag(full, 0);
    int rc = child_wait(r);
    if (rc != 0) ws_test_fail(__FILE__, __LINE__, "flush after the disk freed up failed (%d)", rc);
    cur_faults = "-";
    check_restore(&k, w.acked, "disk_full");
}

/* The store fails for long with a small walship_spool_limit: the queued
** history is dropped (discarding, said in last_error) instead of filling
** the disk; when the store answers, a new generation holds everything. */
static void case_spool_limit(void) {
    static kase k;
    setup(&k, "spool_limit");
    sqlite3 *db = db_open_walship(k.path, k.url, "walship_ship_interval=100ms&walship_spool_limit=1MiB");
    db_exec(db, "INSERT INTO t(seq, pad) VALUES (1, randomblob(1000))");
    CHECK_EQ(walship_flush(k.path, 60000), 1);
    store_frozen(&k, 1);
    char *js = NULL;
    int64_t seq = 1, peak = 0;
    int64_t deadline = ws_mono_ms() + 120000;
    for (;;) {
        char sql[128];
        for (int i = 0; i < 20; i++) {
            snprintf(sql, sizeof sql, "INSERT INTO t(seq, pad) VALUES (%" PRId64 ", randomblob(4000))",
                     ++seq);
            db_exec(db, sql);
        }
        js = db_status_json(db);
        int64_t sb = db_json_int(js, "spool_bytes");
        if (sb > peak) peak = sb;
        if (db_json_int(js, "discarding") == 1 && seq > 3000) break;
        if (ws_mono_ms() > deadline)
            ws_test_fail(__FILE__, __LINE__, "the spool limit never took effect: %s", js);
        free(js);
        ws_sleep_ms(5); /* pacing the workload */
    }
    char e[600];
    db_json_text(js, "last_error", e, sizeof e);
    CHECK_CONTAINS(e, "limit");
    free(js);
    /* Bounded: about the limit, plus one log file and one segment. */
    if (peak > (int64_t)8 << 20)
        ws_test_fail(__FILE__, __LINE__, "the spool grew to %" PRId64 " bytes past a 1 MiB limit", peak);
    store_frozen(&k, 0);
    CHECK_EQ(walship_flush(k.path, 120000), 1);
    js = db_status_json(db);
    db_json_text(js, "generation_reason", e, sizeof e);
    CHECK_CONTAINS(e, "limit");
    free(js);
    CHECK_EQ(db_generation_count(k.url), 2);
    check_restore(&k, (uint64_t)seq, "spool_limit");
    fprintf(stderr, "%" PRId64 " rows written during the outage; spool peak %" PRId64 " bytes\n", seq,
            peak);
    sqlite3_close(db);
}

static void case_flaky(void) {
    static kase k;
    setup(&k, "flaky");
    enum { NF = 5 };
    char flags[NF][3100], rules[20000];
    const char *what[NF] = {"sync:EIO,path=%s/log-", "sync:EIO,path=%s/state",
                            "short:EIO,path=%s/log-", "write:ENOSPC,path=%s/seg.tmp",
                            "rename:ENOSPC,path=%s/queue"};
    size_t len = 0;
    for (int i = 0; i < NF; i++) {
        snprintf(flags[i], sizeof flags[i], "%s/flag-%d", k.dir, i);
        char spec[3400];
        snprintf(spec, sizeof spec, what[i], k.spool);
        len += (size_t)snprintf(rules + len, sizeof rules - len, "%s%s,while=%s", i ? ";" : "", spec,
                                flags[i]);
    }
    cur_faults = rules;
    writer w = start_writer(&k, "normal");
    /* Faults begin once the writer runs: an open whose spool cannot be
    ** created is refused, and a slow start (ASan, a busy machine) must not
    ** meet one. */
    wait_acked_past(&w, 0, __LINE__);
    drain_acks(&w, 200);
    int toggles = 0;
    for (int64_t until = ws_mono_ms() + 4000; ws_mono_ms() < until; toggles++) {
        flag(flags[ws_test_rand_below(NF)], (int)ws_test_rand_below(2));
        drain_acks(&w, (int)ws_test_rand_below(150));
    }
    for (int i = 0; i < NF; i++) flag(flags[i], 0);
    drain_acks(&w, 300);
    kill_writer(&w);
    resume(&k);
    cur_faults = "-";
    fprintf(stderr, "%d fault toggles, %" PRIu64 " rows acknowledged\n", toggles, w.acked);
    check_restore(&k, w.acked, "flaky");
}

static void case_power_loss(void) {
    static kase k;
    setup(&k, "power_loss");
    cur_powerloss = k.spool;
    uint64_t acked = 0;
    int rounds = getenv("WALSHIP_SANITIZE") && *getenv("WALSHIP_SANITIZE") ? 10 : 30;
    int changed_total = 0;
    for (int round = 0; round < rounds; round++) {
        writer w = start_writer(&k, "full");
        w.acked = acked;
        drain_acks(&w, 50 + (int)ws_test_rand_below(250));
        kill_writer(&w);
        acked = w.acked;
        /* Power fails: the spool keeps only what was synced. */
        int changed = ws_powerloss_apply(k.spool);
        CHECK(changed >= 0);
        changed_total += changed;
        resume(&k);
        char what[64];
        snprintf(what, sizeof what, "power loss round %d", round);
        check_restore(&k, acked, what);
    }
    cur_powerloss = "-";
    fprintf(stderr, "%d power losses (%d spool files reverted or lost), %" PRIu64 " rows acknowledged\n",
            rounds, changed_total, acked);
}

int main(int argc, char **argv) {
    if (argc > 1) child_die_with_parent();
    if (argc > 1 && strcmp(argv[1], "writer") == 0) return writer_main(argv);
    if (argc > 1 && strcmp(argv[1], "resume") == 0) return resume_main(argv);
    ws_test_seed(20261203);
    RUN(case_disk_full);
    RUN(case_spool_limit);
    RUN(case_flaky);
    RUN(case_power_loss);
    return 0;
}
