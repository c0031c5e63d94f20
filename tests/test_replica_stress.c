/*
** test_replica_stress.c -- a replica under concurrent readers.
**
** A primary (a process using the walship VFS, shipping as soon as possible
** to a file:// store) runs a bank: every transfer is one transaction and
** the sum of balances never changes. `walship replica` follows it. Plain
** SQLite readers in other processes (mode=ro; one of them through the
** walship VFS, the others plain SQLite) loop on the replica checking the
** sum and PRAGMA quick_check, for the whole run.
**
**   phase A  three tight readers; thousands of transactions; the replica
**            restarts its WAL several times. No violation, no
**            SQLITE_BUSY / "database is locked", no other error.
**   phase B  one reader holds a single read transaction for the whole
**            phase and must see its snapshot unchanged while the replica
**            applies; the WAL grows meanwhile (status says so), and
**            restarts again once that reader ends.
**   end      primary and replica byte for byte equal after both were
**            checkpointed (each closed as the last connection).
** After each primary run the replica's readers see exactly the accounts the
** primary left (its own content hash), and its TXID moved by exactly the
** commits it made.
*/
/* ctest-labels: replica slow */
/* ctest-timeout: 240 */
#include "replica_testlib.h"

static const char *dir;
static char url[600], pdb[600], rdb[600], done[600];

typedef struct readers {
    pid_t pid[8];
    char result[8][700];
    int n;
    char stop[700];
} readers;

/* Tight readers: the first opens a new connection for every read, the
** last reads through the walship VFS; then the long reader, if any. */
static void readers_start(readers *rd, int ntight, int with_long) {
    static int gen;
    memset(rd, 0, sizeof *rd);
    snprintf(rd->stop, sizeof rd->stop, "%s/stop-%d", dir, ++gen);
    char total[32];
    snprintf(total, sizeof total, "%d", RT_TOTAL);
    for (int i = 0; i < ntight + with_long; i++) {
        snprintf(rd->result[i], sizeof rd->result[i], "%s/reader-%d-%d.txt", dir, gen, i);
        rd->pid[i] = rt_spawn_self(NULL, "reader", rdb, rd->stop, rd->result[i], total,
                                   i >= ntight ? "long" : i == 0 ? "churn" : "tight",
                                   i == ntight - 1 ? "walship" : "unix", (const char *)NULL);
        rd->n++;
    }
    for (int i = 0; i < rd->n; i++) {
        char ready[4096];
        snprintf(ready, sizeof ready, "%s.ready", rd->result[i]);
        rt_wait_file(ready, 30000);
    }
}

static void readers_stop(readers *rd) {
    rt_touch(rd->stop);
    for (int i = 0; i < rd->n; i++) rt_reader_finish(i, rd->pid[i], rd->result[i], 1, 0);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "reader") == 0) return rt_reader_main(argc, argv);
    if (argc > 1 && strcmp(argv[1], "primary") == 0) return rt_primary_main(argc, argv);
    dir = ws_test_tmpdir();
    snprintf(url, sizeof url, "file://%s/store", dir);
    snprintf(pdb, sizeof pdb, "%s/primary.db", dir);
    snprintf(rdb, sizeof rdb, "%s/replica.db", dir);
    snprintf(done, sizeof done, "%s/primary.done", dir);
    char log[700];
    snprintf(log, sizeof log, "%s/replica.log", dir);
    uint64_t gen, txid;

    rt_done d;
    fprintf(stderr, "-- seed the primary, bootstrap the replica\n");
    rt_run_primary(pdb, url, 10, done, 0, &gen, &txid);
    pid_t rep = rt_start_replica(url, rdb, log, "--checkpoint-frames", "200");
    rt_wait_replica(rdb, gen, txid, 30000);
    rt_read_done_full(done, &d);
    rt_check_replica_content(rdb, d.hash);

    fprintf(stderr, "-- phase A: tight readers, thousands of transactions\n");
    readers rd;
    readers_start(&rd, 3, 0);
    int64_t t0 = ws_mono_ms();
    uint64_t applied0 = rt_status_u64(rdb, "txs_applied"), txid0 = txid;
    rt_run_primary(pdb, url, 2500, done, 0, &gen, &txid);
    rt_wait_replica(rdb, gen, txid, 60000);
    rt_read_done_full(done, &d);
    CHECK_EQ(d.commits, 2500);
    CHECK_EQ(txid - txid0, d.commits); /* one TXID per commit the primary made */
    rt_check_replica_content(rdb, d.hash);
    uint64_t restarts_a = rt_status_u64(rdb, "wal_restarts");
    uint64_t applied = rt_status_u64(rdb, "txs_applied") - applied0;
    fprintf(stderr, "   %llu transactions applied, %llu WAL restarts, %.1f s\n",
            (unsigned long long)applied, (unsigned long long)restarts_a,
            (double)(ws_mono_ms() - t0) / 1000.0);
    readers_stop(&rd);
    CHECK_EQ(applied, d.commits);
    CHECK(restarts_a >= 3);

    fprintf(stderr, "-- phase B: one reader keeps a snapshot for the whole phase\n");
    readers_start(&rd, 2, 1);
    uint64_t frames0 = rt_status_u64(rdb, "wal_frames");
    uint64_t txid_b = txid;
    rt_run_primary(pdb, url, 800, done, 0, &gen, &txid);
    rt_wait_replica(rdb, gen, txid, 60000);
    rt_read_done_full(done, &d);
    CHECK_EQ(txid - txid_b, 800);
    rt_check_replica_content(rdb, d.hash);
    /* the WAL could not restart while the long reader held its snapshot */
    int64_t deadline = ws_mono_ms() + 20000;
    while (rt_status_u64(rdb, "wal_pinned_ms") == 0 && ws_mono_ms() < deadline) ws_sleep_ms(50);
    uint64_t frames1 = rt_status_u64(rdb, "wal_frames");
    uint64_t pinned = rt_status_u64(rdb, "wal_pinned_ms");
    uint64_t restarts_b = rt_status_u64(rdb, "wal_restarts");
    fprintf(stderr, "   WAL frames %llu -> %llu, pinned for %llu ms\n", (unsigned long long)frames0,
            (unsigned long long)frames1, (unsigned long long)pinned);
    CHECK(frames1 > 800);
    CHECK(pinned > 0);
    readers_stop(&rd);
    /* once it is gone, the replica checkpoints and restarts again */
    deadline = ws_mono_ms() + 20000;
    while (rt_status_u64(rdb, "wal_restarts") == restarts_b && ws_mono_ms() < deadline)
        ws_sleep_ms(50);
    CHECK(rt_status_u64(rdb, "wal_restarts") > restarts_b);

    fprintf(stderr, "-- end: counters, then byte-for-byte equality\n");
    char st[16384];
    CHECK_EQ(rt_replica_status(rdb, st, sizeof st), 0);
    fprintf(stderr, "   %s", st);
    CHECK_EQ(rt_status_u64(rdb, "foreign_writes"), 0);
    CHECK_EQ(rt_status_u64(rdb, "divergences"), 0);
    CHECK_EQ(rt_status_u64(rdb, "corrupt_objects"), 0);
    CHECK_EQ(rt_status_u64(rdb, "rebootstraps"), 0);
    kill(rep, SIGTERM);
    CHECK_EQ(rt_wait(rep, 30000), 0);
    CHECK_EQ(rt_files_equal(pdb, rdb), 0);
    return 0;
}
