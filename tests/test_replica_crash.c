/*
** test_replica_crash.c -- kill -9 of the replica mid-apply, and a
** generation switch, under readers.
**
** Plain SQLite readers loop on the replica for the whole test (checking the
** bank invariant and quick_check; any SQLITE_BUSY counts as a failure,
** except SQLITE_BUSY_RECOVERY after a crash between the two header copies,
** for readers without a busy timeout -- see the check at the end).
** Meanwhile the replica process is killed with SIGKILL again and again
** while the primary writes: at injected points (frames written but not
** published; between the two wal-index header copies, which leaves a torn
** header for readers to recover; after publishing but before recording the
** position) and at random moments. Each time it is restarted and must
** resume without downloading the database again and converge. Then the
** primary starts a new generation (its spool is lost), and the replica
** switches to it as one transaction -- once with a crash in the middle of
** publishing that switch. After each primary run the replica's readers see
** exactly the accounts the primary left (its content hash), and inside a
** generation the TXID moved by exactly the commits it made. At the end,
** replica and primary are equal byte for byte.
*/
/* ctest-labels: replica slow */
/* ctest-timeout: 240 */
#include "replica_testlib.h"

static const char *dir;
static char url[600], pdb[600], rdb[600], done[600], logp[700];

static pid_t start_replica_fault(const char *fault) {
    if (fault) setenv("WALSHIP_REPLICA_FAULT", fault, 1);
    pid_t pid = rt_start_replica(url, rdb, logp, "--checkpoint-frames", "150");
    if (fault) unsetenv("WALSHIP_REPLICA_FAULT");
    return pid;
}

/* Starts a primary in the background. */
static pid_t start_primary(long ntx, long delay_us) {
    char n[32], d[32];
    snprintf(n, sizeof n, "%ld", ntx);
    snprintf(d, sizeof d, "%ld", delay_us);
    unlink(done);
    return rt_spawn_self(NULL, "primary", pdb, url, n, done, d, (const char *)NULL);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "reader") == 0) return rt_reader_main(argc, argv);
    if (argc > 1 && strcmp(argv[1], "primary") == 0) return rt_primary_main(argc, argv);
    dir = ws_test_tmpdir();
    ws_test_seed(11);
    snprintf(url, sizeof url, "file://%s/store", dir);
    snprintf(pdb, sizeof pdb, "%s/primary.db", dir);
    snprintf(rdb, sizeof rdb, "%s/replica.db", dir);
    snprintf(done, sizeof done, "%s/primary.done", dir);
    snprintf(logp, sizeof logp, "%s/replica.log", dir);
    uint64_t gen, txid;

    rt_done d;
    fprintf(stderr, "-- seed, bootstrap, start readers\n");
    rt_run_primary(pdb, url, 50, done, 0, &gen, &txid);
    pid_t rep = start_replica_fault(NULL);
    rt_wait_replica(rdb, gen, txid, 30000);
    char stop[700], total[32];
    snprintf(stop, sizeof stop, "%s/stop-readers", dir);
    snprintf(total, sizeof total, "%d", RT_TOTAL);
    /* 0: tight, 1: a new connection per read, both without a busy handler;
    ** 2: tight with a busy timeout, as applications should read */
    pid_t rd[3];
    char res[3][700];
    static const char *const mode[3] = {"tight", "churn", "tight"};
    static const char *const busy[3] = {"0", "0", "5000"};
    for (int i = 0; i < 3; i++) {
        snprintf(res[i], sizeof res[i], "%s/reader-%d.txt", dir, i);
        rd[i] = rt_spawn_self(NULL, "reader", rdb, stop, res[i], total, mode[i], "unix", busy[i],
                              (const char *)NULL);
        char ready[4096];
        snprintf(ready, sizeof ready, "%s.ready", res[i]);
        rt_wait_file(ready, 30000);
    }

    fprintf(stderr, "-- kill -9 mid-apply, restart, converge\n");
    static const char *faults[] = {"frames:3", "header:2", "published:4", NULL,
                                   "header:5", "frames:1", NULL,          "published:1"};
    int nrounds = (int)(sizeof faults / sizeof faults[0]);
    for (int round = 0; round < nrounds; round++) {
        kill(rep, SIGTERM);
        CHECK_EQ(rt_wait(rep, 30000), 0);
        const char *san = getenv("WALSHIP_SANITIZE");
        long ntx = san && *san ? 200 : 400;
        uint64_t txid_before = txid;
        pid_t prim = start_primary(ntx, 2000);
        rep = start_replica_fault(faults[round]);
        int st;
        if (faults[round]) {
            st = rt_wait(rep, 60000); /* dies at the injected point */
            CHECK_EQ(st, 128 + SIGKILL);
        } else {
            /* a random moment once it has resumed (and is applying) */
            int64_t deadline = ws_mono_ms() + 30000;
            char js[16384] = "";
            while (rt_replica_status(rdb, js, sizeof js) != 0 ||
                   strstr(js, "\"state\":\"following\"") == NULL) {
                if (ws_mono_ms() > deadline)
                    ws_test_fail(__FILE__, __LINE__, "the replica did not resume: %s", js);
                ws_sleep_ms(5); /* polling its status, with a deadline */
            }
            ws_sleep_ms((int64_t)ws_test_rand_below(800));
            kill(rep, SIGKILL);
            CHECK_EQ(rt_wait(rep, 30000), 128 + SIGKILL);
        }
        fprintf(stderr, "   round %d: killed (%s)\n", round, faults[round] ? faults[round] : "random");
        rep = start_replica_fault(NULL);
        CHECK_EQ(rt_wait(prim, 120000), 0);
        rt_read_done_full(done, &d);
        gen = d.gen;
        txid = d.txid;
        CHECK_EQ(d.commits, ntx);
        CHECK_EQ(txid - txid_before, ntx); /* same generation: one TXID per commit */
        rt_wait_replica(rdb, gen, txid, 60000);
        rt_check_replica_content(rdb, d.hash);
    }
    CHECK_EQ(rt_status_u64(rdb, "rebootstraps"), 0);
    CHECK_EQ(rt_status_u64(rdb, "divergences"), 0);
    /* resumed every time (from the record, or from the WAL when the crash
    ** came after a publish) without downloading the database again */
    CHECK_EQ(rt_count_in_file(logp, "event=replica_bootstrapped"), 1);
    CHECK_EQ(rt_count_in_file(logp, "event=replica_rebootstrapped"), 0);
    CHECK_EQ(rt_count_in_file(logp, "event=replica_resumed"), 2 * nrounds);
    CHECK(rt_count_in_file(logp, "by=wal") >= 1);

    fprintf(stderr, "-- a new generation on the primary, switched to under readers\n");
    CHECK_EQ(ws_test_system("rm -rf '%s-walship'", pdb), 0); /* the primary lost its spool */
    uint64_t gen1 = gen;
    rt_run_primary(pdb, url, 300, done, 0, &gen, &txid);
    CHECK(gen != gen1);
    rt_wait_replica(rdb, gen, txid, 60000);
    rt_read_done_full(done, &d);
    rt_check_replica_content(rdb, d.hash);
    CHECK(rt_status_u64(rdb, "rebootstraps") >= 1);

    fprintf(stderr, "-- and again, with a crash while publishing the switch\n");
    kill(rep, SIGTERM);
    CHECK_EQ(rt_wait(rep, 30000), 0);
    CHECK_EQ(ws_test_system("rm -rf '%s-walship'", pdb), 0);
    gen1 = gen;
    rt_run_primary(pdb, url, 200, done, 0, &gen, &txid);
    CHECK(gen != gen1);
    rep = start_replica_fault("header:1");
    CHECK_EQ(rt_wait(rep, 60000), 128 + SIGKILL);
    rep = start_replica_fault(NULL);
    rt_wait_replica(rdb, gen, txid, 60000);
    rt_read_done_full(done, &d);
    rt_check_replica_content(rdb, d.hash);

    fprintf(stderr, "-- stop readers; byte for byte\n");
    rt_touch(stop);
    /* A replica killed between the two wal-index header copies (the
    ** "header" fault) leaves a torn header; the first reader to see it
    ** rebuilds the index from the WAL, and SQLite answers other readers
    ** that have no busy handler SQLITE_BUSY_RECOVERY meanwhile. Reader 2
    ** has a busy timeout: it just waits. */
    for (int i = 0; i < 3; i++) rt_reader_finish(i, rd[i], res[i], 1, i != 2);
    char st[16384];
    CHECK_EQ(rt_replica_status(rdb, st, sizeof st), 0);
    fprintf(stderr, "   %s", st);
    CHECK_EQ(rt_status_u64(rdb, "foreign_writes"), 0);
    kill(rep, SIGTERM);
    CHECK_EQ(rt_wait(rep, 30000), 0);
    CHECK_EQ(rt_files_equal(pdb, rdb), 0);
    return 0;
}
