/*
** test_pipeline_crashloop.c -- a writer SIGKILLed over and over, at random
** moments, while it commits, checkpoints, restarts its WAL and ships.
**
** The writer (this program run again with "writer ...") opens the database
** through walship, reads the largest seq in it and goes on inserting rows
** seq+1, seq+2, ... in transactions of one to a few rows, telling the test
** on a pipe, after every COMMIT that returned SQLITE_OK, the last seq it
** committed, and before every COMMIT, the last seq it is about to commit
** ("attempted"). Every transaction also bumps a commit counter (meta.n), and
** every message carries it; a started writer first reports the counter and
** the largest seq it found. So the test knows, for every commit n, the
** largest seq it left. Now and then the writer runs a RESTART or TRUNCATE
** checkpoint (with wal_autocheckpoint small), a transaction big enough to
** spill the page cache, a walship_flush, a transaction that only frees
** overflow pages, or it closes and reopens its connection (the last close
** checkpoints and deletes the WAL). It is the only process using the
** database, so it is also the shipper: kills land in commits, checkpoints,
** WAL restarts, spool appends, segment uploads and start-up alike.
**
** The test kills it at a random moment -- a third of the time 0-40 ms after
** spawning it (opening, SQLite's recovery, the shipper's start-up), else
** 0-200 ms after its first attempt -- at least 100 times, restarting it each
** time. A restarted writer must go on from a seq between the last
** acknowledged one + 1 and the last attempted one + 1. Then
** `walship ship DB --url URL --drain` uploads what is left, and:
**   - the store's latest restore holds seqs exactly 1..k with k at least the
**     last acknowledged seq and at most the last attempted one, and passes
**     integrity_check;
**   - the primary likewise (1..max, integrity ok); after opening it through
**     walship (which notices commits the spool never heard of), a TRUNCATE
**     checkpoint and a flush, latest restore equals it byte for byte;
**   - every generation in the store, at its first, last and sampled TXIDs,
**     restores a prefix 1..k that passes integrity_check; its TXIDs are
**     consecutive commits (TXID first + i shows counter n_first + i) and
**     each shows exactly the largest seq its commit left (a history with a
**     hole fails here even when every checksum in it is right, as does a
**     restore that is not at the TXID asked for);
**   - one generation: a SIGKILL breaks no continuity.
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
#include <sys/wait.h>
#include <unistd.h>

#include "common/util.h"
#include "dbutil.h"
#include "harness.h"
#include "walship.h"

#define MIN_KILLS 100

/* Messages on the pipe: {kind, first seq, last seq, commit counter} of one
** transaction (first = last + 1: it adds no row), or {MSG_START, largest
** seq, 0, counter} of what a started writer found in the database. */
enum { MSG_ATTEMPT = 1, MSG_ACK = 2, MSG_START = 3 };

static void put_msg(int fd, uint64_t kind, uint64_t first, uint64_t last, uint64_t n) {
    uint64_t m[4] = {kind, first, last, n};
    if (ws_write_all(fd, m, sizeof m) != 0) _exit(3);
}

/* The writer's own random numbers (the harness's would print a seed line
** per restart). */
static uint64_t wr_state = 1;
static uint64_t wr_below(uint64_t n) {
    wr_state ^= wr_state >> 12;
    wr_state ^= wr_state << 25;
    wr_state ^= wr_state >> 27;
    return n ? (wr_state * 0x2545F4914F6CDD1Dull) % n : 0;
}

static sqlite3 *writer_open(const char *path, const char *url) {
    sqlite3 *db = db_open_walship(path, url, "walship_ship_interval=0");
    sqlite3_busy_timeout(db, 30000);
    static const char *const ac[] = {"PRAGMA wal_autocheckpoint=4", "PRAGMA wal_autocheckpoint=16",
                                     "PRAGMA wal_autocheckpoint=100"};
    db_exec(db, ac[wr_below(3)]);
    db_exec(db, "PRAGMA cache_size=16");
    if (wr_below(2)) db_exec(db, "PRAGMA journal_size_limit=8192");
    return db;
}

/* writer PATH URL ACKFD SEED */
static int writer_main(char **argv) {
    const char *path = argv[2], *url = argv[3];
    int fd = atoi(argv[4]);
    wr_state = strtoull(argv[5], NULL, 10) | 1;
    sqlite3 *db = writer_open(path, url);
    int64_t seq = db_int(db, "SELECT coalesce(max(seq), 0) FROM t");
    int64_t n = db_int(db, "SELECT n FROM meta");
    put_msg(fd, MSG_START, (uint64_t)seq, 0, (uint64_t)n);
    sqlite3_stmt *ins = NULL;
    for (;;) {
        if (ins == NULL &&
            sqlite3_prepare_v2(db, "INSERT INTO t(seq, pad) VALUES (?1, randomblob(?2))", -1, &ins,
                               NULL) != SQLITE_OK)
            ws_test_fail(__FILE__, __LINE__, "prepare: %s", sqlite3_errmsg(db));
        uint64_t r = wr_below(1000);
        int rows = 1 + (int)wr_below(3);
        int big = r < 40; /* spills the 16-page cache */
        db_exec(db, "BEGIN IMMEDIATE");
        int64_t first = seq + 1;
        for (int k = 0; k < rows; k++) {
            sqlite3_bind_int64(ins, 1, ++seq);
            sqlite3_bind_int(ins, 2, big ? 3000 + (int)wr_below(6000)
                                         : (int)wr_below(400));
            if (sqlite3_step(ins) != SQLITE_DONE)
                ws_test_fail(__FILE__, __LINE__, "insert: %s", sqlite3_errmsg(db));
            sqlite3_reset(ins);
        }
        if (big) db_exec(db, "UPDATE t SET pad = randomblob(length(pad)) WHERE seq % 13 = 0");
        db_exec(db, "UPDATE meta SET n = n + 1");
        n++;
        put_msg(fd, MSG_ATTEMPT, (uint64_t)first, (uint64_t)seq, (uint64_t)n);
        int rc = sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
        if (rc != SQLITE_OK) ws_test_fail(__FILE__, __LINE__, "COMMIT: %s", sqlite3_errmsg(db));
        put_msg(fd, MSG_ACK, (uint64_t)first, (uint64_t)seq, (uint64_t)n);
        if (r >= 40 && r < 90) {
            int mode = r < 65 ? SQLITE_CHECKPOINT_RESTART : SQLITE_CHECKPOINT_TRUNCATE;
            sqlite3_wal_checkpoint_v2(db, "main", mode, NULL, NULL);
        } else if (r >= 90 && r < 100) {
            sqlite3_finalize(ins);
            ins = NULL;
            sqlite3_close(db);
            db = writer_open(path, url);
        } else if (r >= 100 && r < 110) {
            walship_flush(path, 200);
        } else if (r >= 110 && r < 140) {
            /* frees overflow pages: the database has free pages to reuse */
            db_exec(db, "BEGIN IMMEDIATE; UPDATE t SET pad = NULL WHERE seq % 17 = 5 AND "
                        "length(pad) > 300; UPDATE meta SET n = n + 1");
            n++;
            put_msg(fd, MSG_ATTEMPT, (uint64_t)seq + 1, (uint64_t)seq, (uint64_t)n);
            if (sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
                ws_test_fail(__FILE__, __LINE__, "COMMIT: %s", sqlite3_errmsg(db));
            put_msg(fd, MSG_ACK, (uint64_t)seq + 1, (uint64_t)seq, (uint64_t)n);
        }
    }
}

/* ---- the test ------------------------------------------------------------------ */

static char path[4200], url[4200], out[4200];

/* The first line of PRAGMA integrity_check (static buffer). */

#define MAXCOMMITS (1 << 18)
#define SEQ_UNKNOWN UINT64_MAX

/* The largest seq commit n left (SEQ_UNKNOWN until known): from its
** acknowledgement, or from what the next writer found in the database. */
static uint64_t seq_at[MAXCOMMITS];

typedef struct tally {
    uint64_t acked;         /* highest seq known committed (acknowledged, or found by the next writer) */
    uint64_t acked_n;       /* the counter of that commit */
    uint64_t attempted;     /* last seq of the transaction in flight */
    uint64_t attempted_n;   /* its counter (0: none in flight) */
    uint64_t max_attempted; /* highest seq any writer ever tried to commit */
    int fresh;              /* no attempt yet from the current writer */
} tally;

/* A started writer found counter n and largest seq `seq` in the database:
** the last acknowledged commit, or the one in flight when its predecessor
** was killed. */
static void note_start(tally *t, uint64_t seq, uint64_t n) {
    int acked_state = n == t->acked_n && seq == t->acked;
    int inflight_state = t->attempted_n != 0 && n == t->attempted_n && seq == t->attempted;
    if (!acked_state && !inflight_state)
        ws_test_fail(__FILE__, __LINE__,
                     "a started writer finds commit %" PRIu64 " with seq %" PRIu64
                     " (acknowledged: commit %" PRIu64 " seq %" PRIu64 "; in flight: commit %" PRIu64
                     " seq %" PRIu64 ")",
                     n, seq, t->acked_n, t->acked, t->attempted_n, t->attempted);
    CHECK(n < MAXCOMMITS);
    seq_at[n] = seq;
    t->acked = seq;
    t->acked_n = n;
    t->attempted_n = 0;
}

static void read_msgs(int fd, tally *t, int wait_ms) {
    struct pollfd p = {fd, POLLIN, 0};
    for (;;) {
        int n = poll(&p, 1, wait_ms);
        if (n <= 0) return;
        uint64_t m[4];
        ssize_t got = read(fd, m, sizeof m);
        if (got == 0) return; /* EOF */
        if (got < 0) {
            if (errno == EINTR) continue;
            ws_test_fail(__FILE__, __LINE__, "read: %s", strerror(errno));
        }
        CHECK_EQ(got, (ssize_t)sizeof m);
        if (m[0] == MSG_START) {
            note_start(t, m[1], m[3]);
        } else if (m[0] == MSG_ATTEMPT) {
            if (t->fresh) {
                /* A restarted writer goes on from the largest seq in the
                ** database: every acknowledged one survived the kill, and
                ** at most the one in flight was added. */
                if (m[1] < t->acked + 1 || m[1] > t->max_attempted + 1)
                    ws_test_fail(__FILE__, __LINE__,
                                 "a restarted writer starts at seq %" PRIu64
                                 " (acknowledged %" PRIu64 ", attempted %" PRIu64 ")",
                                 m[1], t->acked, t->max_attempted);
                t->fresh = 0;
            } else {
                CHECK_U64_EQ(m[1], t->acked + 1);
            }
            CHECK(m[2] + 1 >= m[1]);
            CHECK_U64_EQ(m[3], t->acked_n + 1);
            t->attempted = m[2];
            t->attempted_n = m[3];
            if (m[2] > t->max_attempted) t->max_attempted = m[2];
        } else {
            CHECK_EQ(m[0], MSG_ACK);
            CHECK_U64_EQ(m[2], t->attempted);
            CHECK_U64_EQ(m[3], t->attempted_n);
            CHECK(m[3] < MAXCOMMITS);
            seq_at[m[3]] = m[2];
            t->acked = m[2];
            t->acked_n = m[3];
            t->attempted_n = 0;
        }
        wait_ms = 0;
    }
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "writer") == 0) return writer_main(argv);
    ws_test_seed(20261129);
    const char *dir = ws_test_tmpdir();
    snprintf(path, sizeof path, "%s/app.db", dir);
    snprintf(url, sizeof url, "file://%s/store", dir);
    snprintf(out, sizeof out, "%s/restored.db", dir);
    sqlite3 *plain = db_open_plain(path, 0);
    db_exec(plain, "PRAGMA page_size=1024; PRAGMA journal_mode=WAL;"
                   "CREATE TABLE t(seq INTEGER PRIMARY KEY, pad BLOB);"
                   "CREATE TABLE meta(n INTEGER); INSERT INTO meta VALUES (0);");
    sqlite3_close(plain);
    for (size_t i = 0; i < MAXCOMMITS; i++) seq_at[i] = SEQ_UNKNOWN;
    seq_at[0] = 0;

    tally t = {0, 0, 0, 0, 0, 1};
    int kills = 0, starts = 0;
    while (kills < MIN_KILLS) {
        int p[2];
        CHECK_EQ(pipe2(p, O_CLOEXEC), 0);
        CHECK_EQ(fcntl(p[1], F_SETFD, 0), 0);
        char fdarg[16], seed[32];
        snprintf(fdarg, sizeof fdarg, "%d", p[1]);
        snprintf(seed, sizeof seed, "%" PRIu64, ws_test_rand() | 1);
        const char *args[] = {"writer", path, url, fdarg, seed, NULL};
        pid_t pid = child_spawn(args);
        close(p[1]);
        starts++;
        t.fresh = 1;
        /* A random moment: a third of the kills during start-up (opening,
        ** recovery, the shipper's start), the rest once it is writing. */
        if (ws_test_rand_below(3) == 0) {
            int64_t until = ws_mono_ms() + (int64_t)ws_test_rand_below(40);
            for (int64_t now; (now = ws_mono_ms()) < until;) read_msgs(p[0], &t, (int)(until - now));
        } else {
            int64_t deadline = ws_mono_ms() + 60000;
            while (t.fresh && ws_mono_ms() < deadline) read_msgs(p[0], &t, 50);
            if (t.fresh)
                ws_test_fail(__FILE__, __LINE__, "a restarted writer made no attempt in 60 s");
            int64_t until = ws_mono_ms() + (int64_t)ws_test_rand_below(200);
            for (int64_t now; (now = ws_mono_ms()) < until;) read_msgs(p[0], &t, (int)(until - now));
        }
        int st = 0;
        pid_t w = waitpid(pid, &st, WNOHANG);
        if (w == pid)
            ws_test_fail(__FILE__, __LINE__, "the writer exited on its own (status 0x%x)", st);
        CHECK_EQ(kill(pid, SIGKILL), 0);
        CHECK_EQ(child_wait(pid), 128 + SIGKILL);
        read_msgs(p[0], &t, 1000); /* up to EOF */
        close(p[0]);
        kills++;
    }
    fprintf(stderr, "%d kills, %d starts, %" PRIu64 " rows known committed, %" PRIu64 " attempted\n",
            kills, starts, t.acked, t.max_attempted);
    CHECK(t.acked >= 200);

    /* Drain with the standalone shipper. Every acknowledged commit had its
    ** watermark in the spool before COMMIT returned, so it must be shipped. */
    char buf[16384];
    int rc = db_capture(buf, sizeof buf, "'%s' ship '%s' --url '%s' --drain --timeout 120",
                        ws_test_env("WALSHIP_BIN"), path, url);
    if (rc != 0) ws_test_fail(__FILE__, __LINE__, "walship ship --drain failed (%d): %s", rc, buf);
    char msg[512];
    if (db_restore(url, out, 0, 0, 0, msg, sizeof msg) != 0)
        ws_test_fail(__FILE__, __LINE__, "restore latest after the drain: %s", msg);
    sqlite3 *r = db_open_plain(out, 1);
    int64_t m1 = db_int(r, "SELECT coalesce(max(seq), 0) FROM t");
    int64_t n1 = db_int(r, "SELECT n FROM meta");
    CHECK_EQ(db_int(r, "SELECT count(*) FROM t"), m1);
    if (m1 < (int64_t)t.acked || m1 > (int64_t)t.max_attempted)
        ws_test_fail(__FILE__, __LINE__,
                     "after the drain the store reaches seq %" PRId64 "; acknowledged %" PRIu64
                     ", attempted %" PRIu64, m1, t.acked, t.max_attempted);
    CHECK_STREQ(db_integrity(r), "ok");
    sqlite3_close(r);

    /* The primary: exactly 1..max, every acknowledged seq, nothing never
    ** attempted. Opening it runs SQLite's recovery if the last writer died
    ** with commits the spool never heard of; the checkpoint and the flush
    ** ship those too. */
    sqlite3 *db = db_open_walship(path, url, "walship_ship_interval=0");
    int64_t max = db_int(db, "SELECT max(seq) FROM t");
    CHECK_EQ(db_int(db, "SELECT count(*) FROM t"), max);
    CHECK(max >= m1 && max <= (int64_t)t.max_attempted);
    /* the last writer's commit in flight is decided now: in or not */
    note_start(&t, (uint64_t)max, (uint64_t)db_int(db, "SELECT n FROM meta"));
    CHECK(n1 >= 0 && n1 <= (int64_t)t.acked_n);
    CHECK_U64_EQ(seq_at[n1], (uint64_t)m1);
    CHECK_STREQ(db_integrity(db), "ok");
    db_exec(db, "PRAGMA wal_checkpoint(TRUNCATE)");
    int fl = walship_flush(path, 60000);
    if (fl != 1) {
        char *js = db_status_json(db);
        ws_test_fail(__FILE__, __LINE__, "walship_flush returned %d; status %s", fl, js);
    }
    if (db_restore(url, out, 0, 0, 0, msg, sizeof msg) != 0)
        ws_test_fail(__FILE__, __LINE__, "restore latest: %s", msg);
    if (!files_equal(path, out))
        ws_test_fail(__FILE__, __LINE__, "restored %s differs from the primary %s", out, path);
    r = db_open_plain(out, 1);
    CHECK_EQ(db_int(r, "SELECT max(seq) FROM t"), max);
    CHECK_STREQ(db_integrity(r), "ok");
    sqlite3_close(r);

    /* Every generation's history: restores at its first and last TXID and
    ** at a few in between are prefixes 1..k that pass integrity_check. Its
    ** TXIDs are consecutive commits: once its first TXID shows counter n0,
    ** TXID first + i must show counter n0 + i, with exactly the largest seq
    ** that commit left. (A history with a hole in it fails here even when
    ** every object's checksum is right.) */
    enum { MAXGEN = 512 };
    static uint64_t gid[MAXGEN], gfirst[MAXGEN], glast[MAXGEN];
    size_t ngen = db_generation_list(url, gid, gfirst, glast, MAXGEN);
    CHECK(ngen >= 1 && ngen <= MAXGEN);
    int nrestores = 0;
    for (size_t g = 0; g < ngen; g++) {
        if (glast[g] < gfirst[g] || gfirst[g] == 0) continue; /* no snapshot: not restorable */
        uint64_t span = glast[g] - gfirst[g] + 1;
        int nsamples = ngen > 8 ? 3 : 12;
        uint64_t samples[12];
        samples[0] = gfirst[g];
        samples[1] = glast[g];
        for (int k = 2; k < nsamples; k++) samples[k] = gfirst[g] + ws_test_rand_below(span);
        for (int a = 0; a < nsamples; a++)
            for (int b = a + 1; b < nsamples; b++)
                if (samples[b] < samples[a]) {
                    uint64_t x = samples[a];
                    samples[a] = samples[b];
                    samples[b] = x;
                }
        int64_t n0 = -1;
        for (int k = 0; k < nsamples; k++) {
            if (db_restore_in(url, out, gid[g], 1, samples[k], msg, sizeof msg) != 0)
                ws_test_fail(__FILE__, __LINE__, "restore generation %016" PRIx64 " --txid %" PRIu64 ": %s",
                             gid[g], samples[k], msg);
            nrestores++;
            r = db_open_plain(out, 1);
            const char *ic = db_integrity(r);
            if (strcmp(ic, "ok") != 0)
                ws_test_fail(__FILE__, __LINE__,
                             "generation %016" PRIx64 " at TXID %" PRIu64 " restores a corrupt database: %s",
                             gid[g], samples[k], ic);
            int64_t m = db_int(r, "SELECT coalesce(max(seq), 0) FROM t");
            int64_t c = db_int(r, "SELECT count(*) FROM t");
            if (c != m)
                ws_test_fail(__FILE__, __LINE__,
                             "generation %016" PRIx64 " at TXID %" PRIu64 ": %" PRId64 " rows but seq up to %" PRId64
                             " (transactions missing from the history)",
                             gid[g], samples[k], c, m);
            int64_t n = db_int(r, "SELECT n FROM meta");
            sqlite3_close(r);
            if (k == 0) n0 = n;
            if (n != n0 + (int64_t)(samples[k] - gfirst[g]))
                ws_test_fail(__FILE__, __LINE__,
                             "generation %016" PRIx64 " at TXID %" PRIu64 " shows commit %" PRId64
                             "; its TXID %" PRIu64 " showed commit %" PRId64,
                             gid[g], samples[k], n, gfirst[g], n0);
            CHECK(n >= 0 && n <= (int64_t)t.acked_n);
            if (seq_at[n] != (uint64_t)m)
                ws_test_fail(__FILE__, __LINE__,
                             "generation %016" PRIx64 " at TXID %" PRIu64 " (commit %" PRId64
                             ") reaches seq %" PRId64 "; that commit left seq %" PRIu64,
                             gid[g], samples[k], n, m, seq_at[n]);
        }
    }
    fprintf(stderr, "primary at seq %" PRId64 "; %zu generation(s), %d restores checked\n", max, ngen,
            nrestores);
    /* A SIGKILL breaks no continuity (the spool and the state survive it):
    ** one generation, as ARCHITECTURE.md section 3 says. */
    CHECK_EQ(ngen, 1);
    sqlite3_close(db);
    return 0;
}
