/*
** test_store_trust_replica.c -- the replica does not take the store's word
** for what an object is, when it bootstraps and when it follows (issue 7,
** item 4).
**
** A database ships to a file:// store; the replica follows a copy of that
** store, into which the test moves the database's later segments one by one
** (as a primary's uploads would arrive), after tampering with the copy:
**
**   bootstrap   - a generations/ffffffffffffffff/ copy of an old snapshot
**                 and another database's newer generation (with `owner`
**                 naming this one) are ignored: the replica starts from the
**                 real newest state;
**               - a damaged segment in the chain: the bootstrap fails, the
**                 error names it and corrupt_objects counts it; once the
**                 object is whole again the bootstrap succeeds;
**               - a fifo named like the last segment: the bootstrap fails
**                 naming it instead of starting from an older state.
**   following   - a segment of another database named for the next TXIDs is
**                 refused as "not part of this history" (not as corrupt) and
**                 the real segments are applied when they arrive;
**               - another database's newer generation appearing is not
**                 switched to (no re-bootstrap), and the replica follows on;
**               - an impossible ffffffffffffffff.snap appearing changes
**                 neither primary_txid nor the position.
** At the end the replica's content equals the database's.
**
** ctest-labels: replica trust
** ctest-timeout: 300
*/
#include "replica_testlib.h"
#include "trust_testlib.h"

static const char *root;
static tt_store full, other; /* the database's whole history; another database's */
static char logp[1200];

/* Copies into s the segments of `full` that start after `after` and end at
** or before `upto`. */
static void deliver(const tt_store *s, uint64_t after, uint64_t upto) {
    for (int i = 0; i < full.nsegs; i++) {
        if (full.first[i] <= after || full.last[i] > upto) continue;
        char from[2400], to[2400];
        tt_path(&full, full.seg[i], from, sizeof from);
        tt_path(s, full.seg[i], to, sizeof to);
        CHECK_EQ(ws_test_system("cp '%s' '%s.tmp' && mv '%s.tmp' '%s'", from, to, to, to), 0);
    }
}

/* A store holding `full` up to TXID upto (its snapshot and segments). */
static void partial_copy(tt_store *s, const char *name, uint64_t upto) {
    tt_copy(&full, root, name, s);
    for (int i = 0; i < full.nsegs; i++) {
        if (full.last[i] <= upto) continue;
        char p[2400];
        tt_path(s, full.seg[i], p, sizeof p);
        CHECK_EQ(unlink(p), 0);
    }
}

static void replica_paths(const char *name, char *rdb, size_t n) {
    snprintf(rdb, n, "%s/%s/replica.db", root, name);
    snprintf(logp, sizeof logp, "%s/%s/replica.log", root, name);
}

static void stop(pid_t rep) {
    kill(rep, SIGTERM);
    CHECK_EQ(rt_wait(rep, 30000), 0);
}

static void check_content(const char *rdb, int64_t rows) { CHECK_EQ(tt_rows(rdb), rows); }

static void test_bootstrap_ignores_foreign(void) {
    tt_store s;
    char rdb[1200], key[1400], snap[2400];
    replica_paths("boot-foreign", rdb, sizeof rdb);
    tt_copy(&full, root, "boot-foreign", &s);
    tt_path(&full, full.snap, snap, sizeof snap);
    snprintf(key, sizeof key, "%s/generations/ffffffffffffffff/snapshots", s.dir);
    CHECK_EQ(ws_test_system("mkdir -p '%s' && cp '%s' '%s/'", key, snap, key), 0);
    CHECK_EQ(ws_test_system("cp -a '%s/generations/%016" PRIx64 "' '%s/generations/'", other.dir,
                            other.gen, s.dir),
             0);
    tt_put_owner(s.url, full.db_id, 0);
    pid_t rep = rt_start_replica(s.url, rdb, logp, NULL, NULL);
    rt_wait_replica(rdb, full.gen, full.last_txid, 60000);
    stop(rep);
    check_content(rdb, full.rows);
    CHECK_EQ(rt_status_u64(rdb, "generation") == full.gen, 1);
    CHECK_EQ(rt_status_u64(rdb, "corrupt_objects"), 0);
}

static void test_bootstrap_counts_damage(void) {
    tt_store s;
    char rdb[1200], p[2400], keep[2400];
    replica_paths("boot-damage", rdb, sizeof rdb);
    tt_copy(&full, root, "boot-damage", &s);
    int mid = full.nsegs / 2;
    tt_path(&s, full.seg[mid], p, sizeof p);
    snprintf(keep, sizeof keep, "%s/%s/keep.seg", root, "boot-damage");
    CHECK_EQ(ws_test_system("cp '%s' '%s'", p, keep), 0);
    /* one byte in the middle of the body */
    int64_t size = db_file_size(p);
    CHECK_EQ(ws_test_system("printf 'Z' | dd of='%s' bs=1 seek=%" PRId64
                            " conv=notrunc status=none",
                            p, size / 2),
             0);
    pid_t rep = rt_start_replica(s.url, rdb, logp, NULL, NULL);
    tt_wait_replica_status(rdb, full.seg[mid]);
    int64_t deadline = ws_mono_ms() + 30000;
    while (rt_status_u64(rdb, "corrupt_objects") < 1) {
        if (ws_mono_ms() > deadline) ws_test_fail(__FILE__, __LINE__, "corrupt_objects stays 0");
        ws_sleep_ms(20);
    }
    CHECK(!rt_exists(rdb)); /* no bootstrap from an older point */
    CHECK_EQ(ws_test_system("cp '%s' '%s.tmp' && mv '%s.tmp' '%s'", keep, p, p, p), 0);
    rt_wait_replica(rdb, full.gen, full.last_txid, 90000);
    stop(rep);
    check_content(rdb, full.rows);
}

static void test_bootstrap_refuses_fifo(void) {
    tt_store s;
    char rdb[1200], p[2400];
    replica_paths("boot-fifo", rdb, sizeof rdb);
    tt_copy(&full, root, "boot-fifo", &s);
    int last = full.nsegs - 1;
    tt_path(&s, full.seg[last], p, sizeof p);
    CHECK_EQ(unlink(p), 0);
    CHECK_EQ(mkfifo(p, 0644), 0);
    pid_t rep = rt_start_replica(s.url, rdb, logp, NULL, NULL);
    tt_wait_replica_status(rdb, full.seg[last]);
    CHECK(!rt_exists(rdb));
    stop(rep);
}

/* Follows a copy that grows; meanwhile things that are not this history's
** appear in it. */
static void test_following(void) {
    tt_store s;
    char rdb[1200], key[300], from[2400], to[2400];
    replica_paths("follow", rdb, sizeof rdb);
    uint64_t t0 = full.last[full.nsegs / 3];
    partial_copy(&s, "follow", t0);
    tt_put_owner(s.url, full.db_id, 0);
    pid_t rep = rt_start_replica(s.url, rdb, logp, NULL, NULL);
    rt_wait_replica(rdb, full.gen, t0, 60000);

    /* another database's segment, named for the next transactions */
    snprintf(key, sizeof key,
             "generations/%016" PRIx64 "/segments/%016" PRIx64 "-%016" PRIx64 ".seg", full.gen,
             t0 + 1, t0 + 40);
    tt_path(&other, other.seg[0], from, sizeof from);
    tt_path(&s, key, to, sizeof to);
    /* copied whole into place, as a store shows objects (a listing must
    ** never catch it half written: that is damage, counted as such) */
    CHECK_EQ(ws_test_system("cp '%s' '%s.tmp' && mv '%s.tmp' '%s'", from, to, to, to), 0);
    tt_wait_replica_status(rdb, "not part of this history");
    CHECK_EQ(rt_status_u64(rdb, "applied_txid"), t0);
    CHECK_EQ(rt_status_u64(rdb, "corrupt_objects"), 0);

    /* the real segments arrive: applied, the foreign one stays refused */
    uint64_t t1 = full.last[2 * full.nsegs / 3];
    deliver(&s, t0, t1);
    rt_wait_replica(rdb, full.gen, t1, 60000);
    CHECK_EQ(unlink(to), 0);

    /* another database's newer generation, and an impossible snapshot name */
    CHECK_EQ(ws_test_system("cp -a '%s/generations/%016" PRIx64 "' '%s/gen.tmp' && "
                            "mv '%s/gen.tmp' '%s/generations/%016" PRIx64 "'",
                            other.dir, other.gen, s.dir, s.dir, s.dir, other.gen),
             0);
    snprintf(key, sizeof key, "generations/%016" PRIx64 "/snapshots/ffffffffffffffff.snap",
             full.gen);
    tt_path(&s, key, to, sizeof to);
    CHECK_EQ(ws_test_system("printf x > '%s'", to), 0);
    char gen[32];
    snprintf(gen, sizeof gen, "%016" PRIx64, other.gen);
    tt_wait_replica_status(rdb, gen);
    deliver(&s, t1, full.last_txid);
    rt_wait_replica(rdb, full.gen, full.last_txid, 60000);
    CHECK_EQ(rt_status_u64(rdb, "rebootstraps"), 0);
    CHECK_EQ(rt_status_u64(rdb, "corrupt_objects"), 0);
    CHECK_EQ(rt_status_u64(rdb, "primary_txid"), full.last_txid);
    CHECK_EQ(rt_status_u64(rdb, "applied_txid"), full.last_txid);
    stop(rep);
    check_content(rdb, full.rows);
}

int main(int argc, char **argv) {
    tt_only = argc > 1 ? argv[1] : NULL;
    ws_test_seed(20261208);
    root = ws_test_tmpdir();
    tt_build(&full, root, "full", 12);
    tt_build(&other, root, "other", 3);
    CHECK(other.gen > full.gen);
    CHECK(full.nsegs >= 9);
    TT_CASE(test_bootstrap_ignores_foreign);
    TT_CASE(test_bootstrap_counts_damage);
    TT_CASE(test_bootstrap_refuses_fifo);
    TT_CASE(test_following);
    return 0;
}
