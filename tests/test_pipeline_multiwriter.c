/*
** test_pipeline_multiwriter.c -- several writer processes on one database
** through the walship VFS, and shipper elections when the shipper dies.
**
** Five writer processes (this program run again with "writer ...") insert
** rows (w, n, gseq) concurrently: n counts the writer's own commits and gseq
** is max(gseq)+1 taken inside the write transaction, so gseq is the global
** commit order. Each writer reports every commit SQLite acknowledged on a
** pipe. Whichever writer holds the election lock ships for all of them; the
** test finds it with `walship status --json`, SIGKILLs it mid-run, waits
** until status names another live writer as shipper_pid, and does that
** twice. When the writers are done, the test opens the database itself
** (its shipper is elected now: status must name this process), drains, and
** checks:
**   - every acknowledged row is in the primary; each writer's rows are
**     1..c with c at most one past its last acknowledgement; gseq is 1..total;
**   - latest restore equals the primary byte for byte (after TRUNCATE);
**   - in every generation, at its first, last and sampled TXIDs, the gseq
**     set is exactly 1..k (commit order, no holes), each writer's rows are
**     1..c_w and in gseq order, and k never goes down; in the first one --
**     whose snapshot the test let reach the store before any writer began,
**     so its TXID t0 holds no row -- exactly one TXID per commit (TXID
**     t0 + k holds k rows, the last TXID t0 + every row committed);
**   - one generation: killing the shipper breaks no continuity.
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

#define NWRITERS 5
#define ROWS_PER_WRITER 260
#define DONE_MARK 0xffffffffu

/* ---- the writer process ----------------------------------------------------- */

static void put_msg(int fd, uint32_t w, uint32_t n) {
    uint32_t m[2] = {w, n};
    if (ws_write_all(fd, m, sizeof m) != 0) _exit(3);
}

/* writer PATH URL ID COUNT ACKFD HOLDFD SEED */
static int writer_main(char **argv) {
    const char *path = argv[2], *url = argv[3];
    int id = atoi(argv[4]), count = atoi(argv[5]), ackfd = atoi(argv[6]), holdfd = atoi(argv[7]);
    char seedenv[64];
    snprintf(seedenv, sizeof seedenv, "%s", argv[8]);
    setenv("WALSHIP_TEST_SEED", seedenv, 1);
    ws_test_seed(1);
    sqlite3 *db = db_open_walship(path, url, "walship_ship_interval=20ms");
    sqlite3_busy_timeout(db, 60000);
    db_exec(db, "PRAGMA wal_autocheckpoint=64");
    sqlite3_stmt *ins = NULL;
    if (sqlite3_prepare_v2(db,
                           "INSERT INTO t(w, n, gseq, pad) VALUES (?1, ?2, "
                           "(SELECT coalesce(max(gseq), 0) + 1 FROM t), randomblob(?3))",
                           -1, &ins, NULL) != SQLITE_OK)
        ws_test_fail(__FILE__, __LINE__, "prepare: %s", sqlite3_errmsg(db));
    for (int n = 1; n <= count; n++) {
        int rc;
        while ((rc = db_try_exec(db, "BEGIN IMMEDIATE")) == SQLITE_BUSY) {
        }
        if (rc != SQLITE_OK) ws_test_fail(__FILE__, __LINE__, "BEGIN: %s", sqlite3_errmsg(db));
        sqlite3_bind_int(ins, 1, id);
        sqlite3_bind_int(ins, 2, n);
        sqlite3_bind_int(ins, 3, (int)ws_test_rand_below(ws_test_rand_below(20) ? 300 : 9000));
        if (sqlite3_step(ins) != SQLITE_DONE)
            ws_test_fail(__FILE__, __LINE__, "insert: %s", sqlite3_errmsg(db));
        sqlite3_reset(ins);
        if (sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
            ws_test_fail(__FILE__, __LINE__, "COMMIT: %s", sqlite3_errmsg(db));
        put_msg(ackfd, (uint32_t)id, (uint32_t)n);
        uint64_t r = ws_test_rand_below(100);
        if (r < 2)
            sqlite3_wal_checkpoint_v2(db, "main", SQLITE_CHECKPOINT_RESTART, NULL, NULL);
        else if (r < 4)
            sqlite3_wal_checkpoint_v2(db, "main", SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    }
    sqlite3_finalize(ins);
    put_msg(ackfd, (uint32_t)id, DONE_MARK);
    /* Stay open (and available for election) until the test lets go. */
    char c;
    while (read(holdfd, &c, 1) != 0) {
    }
    sqlite3_close(db);
    return 0;
}

/* ---- the test ------------------------------------------------------------------ */

static char path[4200], url[4200], out[4200];
static pid_t pids[NWRITERS];
static int alive[NWRITERS], done[NWRITERS];
static uint32_t acked[NWRITERS + 1];
static int ackfd = -1;

/* Reads whatever acknowledgements are waiting (up to wait_ms for the first). */
static void drain_acks(int wait_ms) {
    struct pollfd p = {ackfd, POLLIN, 0};
    while (poll(&p, 1, wait_ms) > 0) {
        uint32_t m[2];
        ssize_t got = read(ackfd, m, sizeof m);
        if (got <= 0) return;
        /* Writers send whole 8-byte messages (atomic below PIPE_BUF). */
        CHECK_EQ(got, (ssize_t)sizeof m);
        CHECK(m[0] >= 1 && m[0] <= NWRITERS);
        if (m[1] == DONE_MARK) {
            done[m[0] - 1] = 1;
        } else {
            CHECK_EQ(m[1], acked[m[0]] + 1); /* acknowledged in order */
            acked[m[0]] = m[1];
        }
        wait_ms = 0;
    }
}

static int writer_index(pid_t pid) {
    for (int i = 0; i < NWRITERS; i++)
        if (pids[i] == pid) return i;
    return -1;
}

/* The elected shipper according to `walship status --json`, 0 if none. */
static pid_t status_shipper(int *alive_flag) {
    char buf[8192];
    int rc = db_capture(buf, sizeof buf, "'%s' status '%s' --json", ws_test_env("WALSHIP_BIN"), path);
    *alive_flag = 0;
    if (rc != 0 && strstr(buf, "no spool at") != NULL) return 0; /* no writer has opened it yet */
    if (rc != 0) ws_test_fail(__FILE__, __LINE__, "walship status failed (%d): %s", rc, buf);
    char *nl = strchr(buf, '\n');
    if (nl) *nl = '\0';
    char a[16];
    db_json_text(buf, "shipper_alive", a, sizeof a);
    *alive_flag = strcmp(a, "1") == 0 || strcmp(a, "true") == 0;
    return (pid_t)db_json_int(buf, "shipper_pid");
}

/* Waits until a live writer other than `not` is the elected, live shipper;
** returns its index. */
static int await_shipper(pid_t not) {
    int64_t deadline = ws_mono_ms() + 60000;
    while (ws_mono_ms() < deadline) {
        drain_acks(20);
        int live = 0;
        pid_t p = status_shipper(&live);
        int i = writer_index(p);
        if (live && p != not && i >= 0 && alive[i]) return i;
    }
    ws_test_fail(__FILE__, __LINE__, "no writer took over shipping from pid %d", (int)not);
}

/* Restores TXID txid of generation gen and checks it is a commit-order
** prefix; with exact != 0, also that it holds exactly txid - offset rows.
** Returns the number of rows. */
static int64_t check_restored(uint64_t gen, uint64_t txid, int exact, int64_t offset) {
    char msg[512];
    if (db_restore_in(url, out, gen, 1, txid, msg, sizeof msg) != 0)
        ws_test_fail(__FILE__, __LINE__, "restore generation %016" PRIx64 " --txid %" PRIu64 ": %s",
                     gen, txid, msg);
    sqlite3 *r = db_open_plain(out, 1);
    int64_t rows = db_int(r, "SELECT count(*) FROM t");
    if (exact && rows != (int64_t)txid - offset)
        ws_test_fail(__FILE__, __LINE__, "TXID %" PRIu64 " restores %" PRId64 " rows, expected %" PRId64,
                     txid, rows, (int64_t)txid - offset);
    /* gseq: exactly 1..rows */
    CHECK_EQ(db_int(r, "SELECT count(DISTINCT gseq) FROM t"), rows);
    CHECK_EQ(db_int(r, "SELECT coalesce(max(gseq), 0) FROM t"), rows);
    CHECK_EQ(db_int(r, "SELECT coalesce(min(gseq), 1) FROM t"), 1);
    /* each writer: 1..c_w */
    for (int w = 1; w <= NWRITERS; w++) {
        char q[200];
        snprintf(q, sizeof q, "SELECT count(*) = count(DISTINCT n) AND count(*) = coalesce(max(n), 0) "
                              "AND coalesce(min(n), 1) = 1 FROM t WHERE w = %d", w);
        if (db_int(r, q) != 1)
            ws_test_fail(__FILE__, __LINE__, "TXID %" PRIu64 ": writer %d's rows have a hole", txid, w);
    }
    /* and gseq follows each writer's order */
    CHECK_EQ(db_int(r, "SELECT count(*) FROM t a JOIN t b ON a.w = b.w AND a.n < b.n "
                       "AND a.gseq > b.gseq"), 0);
    sqlite3_close(r);
    return rows;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "writer") == 0) return writer_main(argv);
    ws_test_seed(20261128);
    const char *dir = ws_test_tmpdir();
    snprintf(path, sizeof path, "%s/app.db", dir);
    snprintf(url, sizeof url, "file://%s/store", dir);
    snprintf(out, sizeof out, "%s/restored.db", dir);
    sqlite3 *plain = db_open_plain(path, 0);
    db_exec(plain, "PRAGMA journal_mode=WAL;"
                   "CREATE TABLE t(gseq INTEGER UNIQUE, w INTEGER, n INTEGER, pad BLOB);"
                   "CREATE INDEX tw ON t(w, n);");
    sqlite3_close(plain);
    /* The generation's first snapshot, of the empty table, is in the store
    ** before any writer starts: its TXID is commit 0. */
    sqlite3 *first_open = db_open_walship(path, url, "walship_ship_interval=0");
    int64_t snap_deadline = ws_mono_ms() + 60000;
    while (db_generation_count(url) == 0) {
        if (ws_mono_ms() > snap_deadline)
            ws_test_fail(__FILE__, __LINE__, "no snapshot reached the store in 60 s");
        ws_sleep_ms(10); /* polling the store, with a deadline */
    }
    sqlite3_close(first_open);
    uint64_t txid0, txid0_last;
    db_txid_range(url, &txid0, &txid0_last);
    CHECK_U64_EQ(txid0_last, txid0);

    int ack[2], hold[2];
    CHECK_EQ(pipe2(ack, O_CLOEXEC), 0);
    CHECK_EQ(pipe2(hold, O_CLOEXEC), 0);
    /* Children inherit the write end of ack and the read end of hold. */
    CHECK_EQ(fcntl(ack[1], F_SETFD, 0), 0);
    CHECK_EQ(fcntl(hold[0], F_SETFD, 0), 0);
    ackfd = ack[0];
    for (int i = 0; i < NWRITERS; i++) {
        char id[16], cnt[16], a[16], h[16], seed[32];
        snprintf(id, sizeof id, "%d", i + 1);
        snprintf(cnt, sizeof cnt, "%d", ROWS_PER_WRITER);
        snprintf(a, sizeof a, "%d", ack[1]);
        snprintf(h, sizeof h, "%d", hold[0]);
        snprintf(seed, sizeof seed, "%" PRIu64, ws_test_rand() | 1);
        const char *args[] = {"writer", path, url, id, cnt, a, h, seed, NULL};
        pids[i] = child_spawn(args);
        alive[i] = 1;
    }
    close(ack[1]);
    close(hold[0]);

    /* Kill the elected shipper twice, mid-run; someone else must take over. */
    pid_t killed = 0;
    int nkilled = 0;
    for (int round = 0; round < 2; round++) {
        int s = await_shipper(killed);
        fprintf(stderr, "round %d: writer %d (pid %d) ships\n", round, s + 1, (int)pids[s]);
        /* Let it ship for a while, then kill it at a random moment. */
        uint32_t base = 0;
        for (int i = 0; i < NWRITERS; i++) base += acked[i + 1];
        int64_t deadline = ws_mono_ms() + 60000;
        for (;;) {
            uint32_t total = 0;
            for (int i = 0; i < NWRITERS; i++) total += acked[i + 1];
            if (total >= base + 60 || ws_mono_ms() > deadline) break;
            drain_acks(20);
        }
        drain_acks((int)ws_test_rand_below(60));
        if (done[s]) fprintf(stderr, "  (writer %d had finished its rows)\n", s + 1);
        CHECK_EQ(kill(pids[s], SIGKILL), 0);
        CHECK_EQ(child_wait(pids[s]), 128 + SIGKILL);
        alive[s] = 0;
        killed = pids[s];
        nkilled++;
        fprintf(stderr, "  killed pid %d after %u of its rows\n", (int)pids[s], acked[s + 1]);
    }
    int s = await_shipper(killed);
    fprintf(stderr, "after the kills: writer %d (pid %d) ships\n", s + 1, (int)pids[s]);

    /* Wait for the survivors to finish their rows, then let them close. */
    int64_t deadline = ws_mono_ms() + 180000;
    for (;;) {
        int waiting = 0;
        for (int i = 0; i < NWRITERS; i++)
            if (alive[i] && !done[i]) waiting++;
        if (waiting == 0) break;
        if (ws_mono_ms() > deadline) ws_test_fail(__FILE__, __LINE__, "writers did not finish");
        drain_acks(100);
    }
    close(hold[1]);
    for (int i = 0; i < NWRITERS; i++)
        if (alive[i]) CHECK_EQ(child_wait(pids[i]), 0);
    drain_acks(0);
    close(ackfd);

    /* Drain: this process becomes the shipper once the writers are gone. */
    sqlite3 *db = db_open_walship(path, url, "walship_ship_interval=0");
    int fl = walship_flush(path, 120000);
    if (fl != 1) {
        char *js = db_status_json(db);
        ws_test_fail(__FILE__, __LINE__, "walship_flush returned %d; status %s", fl, js);
    }
    char *js = db_status_json(db);
    CHECK_EQ(db_json_int(js, "shipper_pid"), getpid());
    free(js);

    /* The primary holds every acknowledged row, in each writer's order. */
    int64_t total = 0;
    for (int w = 1; w <= NWRITERS; w++) {
        char q[160];
        snprintf(q, sizeof q, "SELECT count(*) FROM t WHERE w = %d", w);
        int64_t c = db_int(db, q);
        snprintf(q, sizeof q, "SELECT coalesce(max(n), 0) FROM t WHERE w = %d", w);
        CHECK_EQ(db_int(db, q), c);
        if (c < (int64_t)acked[w] || c > (int64_t)acked[w] + 1)
            ws_test_fail(__FILE__, __LINE__, "writer %d: %" PRId64 " rows, %u acknowledged", w, c,
                         acked[w]);
        total += c;
    }
    CHECK_EQ(db_int(db, "SELECT count(*) FROM t"), total);
    CHECK_EQ(db_int(db, "SELECT max(gseq) FROM t"), total);
    CHECK_EQ(nkilled, 2);

    db_exec(db, "PRAGMA wal_checkpoint(TRUNCATE)");
    CHECK_EQ(walship_flush(path, 60000), 1);
    char msg[512];
    if (db_restore(url, out, 0, 0, 0, msg, sizeof msg) != 0)
        ws_test_fail(__FILE__, __LINE__, "restore latest: %s", msg);
    if (!files_equal(path, out))
        ws_test_fail(__FILE__, __LINE__, "restored %s differs from the primary %s", out, path);
    /* Every generation: prefixes in commit order at its first, last and
    ** sampled TXIDs, never going back; the newest one also exactly one TXID
    ** per commit. */
    uint64_t gid[16], gfirst[16], glast[16];
    size_t ngen = db_generation_list(url, gid, gfirst, glast, 16);
    CHECK(ngen >= 1 && ngen <= 16);
    int64_t offset = (int64_t)txid0; /* TXID txid0 + k: the k-th commit (k rows) */
    CHECK_U64_EQ(gfirst[0], txid0);
    CHECK_EQ((int64_t)glast[ngen - 1], total + offset);
    for (size_t g = 0; g < ngen; g++) {
        int exact = g == 0;
        uint64_t samples[16];
        samples[0] = gfirst[g];
        for (int k = 1; k < 15; k++) samples[k] = gfirst[g] + ws_test_rand_below(glast[g] - gfirst[g] + 1);
        samples[15] = glast[g];
        for (int a = 1; a < 15; a++)
            for (int b = a + 1; b < 15; b++)
                if (samples[b] < samples[a]) {
                    uint64_t x = samples[a];
                    samples[a] = samples[b];
                    samples[b] = x;
                }
        int64_t prev = -1;
        for (int k = 0; k < 16; k++) {
            int64_t rows = check_restored(gid[g], samples[k], exact, offset);
            CHECK(rows >= prev);
            prev = rows;
        }
        fprintf(stderr, "generation %016" PRIx64 ": txids %" PRIu64 "..%" PRIu64 " checked\n", gid[g],
                gfirst[g], glast[g]);
    }
    fprintf(stderr, "%" PRId64 " rows, %zu generation(s)\n", total, ngen);
    /* Killing a process breaks no continuity: one generation. */
    CHECK_EQ(ngen, 1);
    sqlite3_close(db);
    return 0;
}
