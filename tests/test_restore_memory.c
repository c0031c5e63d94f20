/*
** test_restore_memory.c -- restore and the replica stream objects through
** bounded memory, whatever their size, and reject them at the first bad
** byte (issue 7, item 4).
**
** Peak memory is the ru_maxrss of exactly the walship process (wait4), so
** nothing else the test runs counts. Each run must also end well: with a
** clear error naming the object, or with a correct restore.
**
**   garbage     four 1000 MiB segments (sparse files, random first bytes)
**               named after the last real one: restore and verify fail
**               naming the first of them and the newest restorable TXID;
**               a replica bootstrapping on that store reports it; all stay
**               far below one object's size.
**   framed      a 1 GiB segment whose header is valid (its key's TXIDs,
**               generation, database id, checksum) and whose body is
**               garbage, named to span two real segments: it is refused
**               at its first body bytes and the real ones are used; the
**               restore is correct.
**   big         a real segment of over 100 MiB (one transaction of random
**               bytes): restored, and applied by a following replica, with
**               content equal to the database's, in bounded memory.
**   following   the garbage segments appearing while a replica follows:
**               refused (corrupt_objects), bounded memory.
**
** ctest-labels: restore replica trust
** ctest-timeout: 600
*/
#include <signal.h>

#include "replica_testlib.h"
#include "trust_testlib.h"

#define GARBAGE_SIZE ((uint64_t)1000 << 20)
#define BIG_BYTES    (110 << 20)

static const char *root;
static int64_t bound_kib;
static tt_store base;

static void check_rss(const char *what, int64_t kib) {
    fprintf(stderr, "   %s: peak memory %" PRId64 " MiB (bound %" PRId64 " MiB)\n", what,
            kib / 1024, bound_kib / 1024);
    if (kib > bound_kib)
        ws_test_fail(__FILE__, __LINE__, "%s used %" PRId64 " MiB at its peak, more than %" PRId64,
                     what, kib / 1024, bound_kib / 1024);
}

/* Starts `walship replica URL PATH --poll-ms 20` with its output in log. */
static pid_t start_replica(const char *url, const char *path, const char *log) {
    char st[1300];
    snprintf(st, sizeof st, "%s-walship-replica/status.json", path);
    unlink(st);
    fflush(NULL);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execl(ws_test_env("WALSHIP_BIN"), "walship", "replica", url, path, "--poll-ms", "20",
              (char *)NULL);
        _exit(127);
    }
    return pid;
}

/* Stops a replica; returns its peak memory. */
static int64_t stop_replica(pid_t pid) {
    CHECK_EQ(kill(pid, SIGTERM), 0);
    int st = 0;
    struct rusage ru;
    CHECK(wait4(pid, &st, 0, &ru) == pid);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    return ru.ru_maxrss;
}

/* Puts the four garbage segments after s's last TXID; the first's key. */
static void put_garbage(const tt_store *s, char *first_key, size_t n) {
    for (int i = 0; i < 4; i++) {
        char key[300], p[2400];
        uint64_t t = s->last_txid + 1 + (uint64_t)i;
        seg_key(key, sizeof key, s->gen, t, t);
        tt_path(s, key, p, sizeof p);
        tt_garbage(p, GARBAGE_SIZE, 4096);
        if (i == 0) snprintf(first_key, n, "%s", key);
    }
}

static void test_garbage(void) {
    tt_store s;
    char key[300], out[1200], rdb[1200], log[1200], fix[64];
    int64_t kib = 0;
    tt_copy(&base, root, "garbage", &s);
    put_garbage(&s, key, sizeof key);
    snprintf(out, sizeof out, "%s/garbage/out.db", root);
    snprintf(fix, sizeof fix, "--txid %" PRIu64 ")", base.last_txid);
    CHECK(tt_run(&kib, "restore", s.url, "-o", out, "--quiet", (const char *)NULL) != 0);
    check_rss("restore", kib);
    CHECK_CONTAINS(tt_errout, key);
    CHECK_CONTAINS(tt_errout, fix);
    CHECK(!rt_exists(out));
    CHECK(tt_run(&kib, "verify", s.url, "--quiet", (const char *)NULL) != 0);
    check_rss("verify", kib);
    CHECK_CONTAINS(tt_errout, key);

    snprintf(rdb, sizeof rdb, "%s/garbage/replica.db", root);
    snprintf(log, sizeof log, "%s/garbage/replica.log", root);
    pid_t rep = start_replica(s.url, rdb, log);
    tt_wait_replica_status(rdb, key);
    CHECK(!rt_exists(rdb)); /* no bootstrap from an older point */
    check_rss("replica bootstrap", stop_replica(rep));
}

/* A header for segment [a, b] of s: that of s's segment starting at a,
** with the last TXID of the one ending at b. */
static void framed_header(const tt_store *s, int ka, int kb, uint8_t *hdr) {
    char p[2400];
    tt_path(s, s->seg[ka], p, sizeof p);
    int fd = open(p, O_RDONLY);
    CHECK(fd >= 0);
    CHECK(read(fd, hdr, SEG_HEADER_SIZE) == SEG_HEADER_SIZE);
    close(fd);
    ws_put_be32(hdr + 20, (uint32_t)(s->last[kb] - s->first[ka] + 1));
    ws_put_be64(hdr + 40, s->last[kb]);
    ws_put_be64(hdr + 152, ws_hash64(hdr, 152));
    seg_header h;
    wserr e = {0};
    CHECK_OK(seg_parse_header(hdr, SEG_HEADER_SIZE, &h, &e), &e);
}

static void test_framed(void) {
    tt_store s;
    char key[300], p[2400], out[1200];
    uint8_t hdr[SEG_HEADER_SIZE];
    int64_t kib = 0;
    tt_copy(&base, root, "framed", &s);
    int k = 1;
    framed_header(&base, k, k + 1, hdr);
    seg_key(key, sizeof key, s.gen, base.first[k], base.last[k + 1]);
    tt_path(&s, key, p, sizeof p);
    tt_garbage(p, (uint64_t)1 << 30, 1 << 20);
    int fd = open(p, O_WRONLY);
    CHECK(fd >= 0 && pwrite(fd, hdr, sizeof hdr, 0) == (ssize_t)sizeof hdr);
    close(fd);
    snprintf(out, sizeof out, "%s/framed/out.db", root);
    int rc = tt_run(&kib, "restore", s.url, "-o", out, "--quiet", (const char *)NULL);
    check_rss("restore around a framed garbage segment", kib);
    if (rc != 0) ws_test_fail(__FILE__, __LINE__, "restore failed: %s", tt_errout);
    CHECK_CONTAINS(tt_errout, key);
    CHECK_CONTAINS(tt_errout, "does not decompress");
    CHECK_EQ(tt_rows(out), base.rows);
}

/* One transaction of BIG_BYTES random bytes on s's database. */
static void big_transaction(tt_store *s) {
    sqlite3 *db = db_open_walship(s->db, s->url, "walship_ship_interval=0");
    char sql[128];
    snprintf(sql, sizeof sql, "INSERT INTO t(v) VALUES (randomblob(%d))", BIG_BYTES);
    db_exec(db, sql);
    CHECK_EQ(walship_flush(s->db, 120000), 1);
    s->rows = db_int(db, "SELECT count(*) FROM t");
    sqlite3_close(db);
    tt_scan(s);
}

static void test_big_and_following(void) {
    tt_store big, s;
    char out[1200], rdb[1200], log[1200], key[300];
    int64_t kib = 0;
    tt_build(&big, root, "big", 3);
    uint64_t before = big.last_txid;
    tt_copy(&big, root, "follow", &s); /* what the replica starts from */
    big_transaction(&big);
    int nbig = -1;
    for (int i = 0; i < big.nsegs; i++)
        if (big.first[i] > before) nbig = i;
    CHECK(nbig >= 0);
    char p[2400];
    tt_path(&big, big.seg[nbig], p, sizeof p);
    CHECK(db_file_size(p) > (int64_t)100 << 20);

    snprintf(out, sizeof out, "%s/big/out.db", root);
    int rc = tt_run(&kib, "restore", big.url, "-o", out, "--quiet", (const char *)NULL);
    if (rc != 0) ws_test_fail(__FILE__, __LINE__, "restore failed: %s", tt_errout);
    CHECK_EQ(tt_rows(out), big.rows);
    sqlite3 *a = db_open_plain(out, 1), *b = db_open_plain(big.db, 1);
    CHECK_U64_EQ(db_content_hash(a), db_content_hash(b));
    sqlite3_close(a);
    sqlite3_close(b);
    check_rss("restore of a 100+ MiB segment", kib);
    unlink(out);

    /* a replica following the copy: the big segment arrives, then garbage */
    snprintf(rdb, sizeof rdb, "%s/follow/replica.db", root);
    snprintf(log, sizeof log, "%s/follow/replica.log", root);
    pid_t rep = start_replica(s.url, rdb, log);
    rt_wait_replica(rdb, big.gen, before, 60000);
    char to[2400];
    tt_path(&s, big.seg[nbig], to, sizeof to);
    CHECK_EQ(ws_test_system("cp '%s' '%s.tmp' && mv '%s.tmp' '%s'", p, to, to, to), 0);
    rt_wait_replica(rdb, big.gen, big.last_txid, 120000);
    s.last_txid = big.last_txid;
    put_garbage(&s, key, sizeof key);
    tt_wait_replica_status(rdb, key);
    int64_t deadline = ws_mono_ms() + 30000;
    while (rt_status_u64(rdb, "corrupt_objects") < 1) {
        if (ws_mono_ms() > deadline) ws_test_fail(__FILE__, __LINE__, "corrupt_objects stays 0");
        ws_sleep_ms(20);
    }
    CHECK_EQ(rt_status_u64(rdb, "applied_txid"), big.last_txid);
    check_rss("replica applying a 100+ MiB segment, then refusing garbage", stop_replica(rep));
    CHECK_EQ(tt_rows(rdb), big.rows);
}

int main(int argc, char **argv) {
    tt_only = argc > 1 ? argv[1] : NULL;
    ws_test_seed(20261210);
    root = ws_test_tmpdir();
    /* Tens of MiB: the download budget, one object's queue, the zstd window,
    ** one staged transaction and the process itself. Sanitizers add their
    ** own bookkeeping (and ASan keeps freed memory in quarantine for a
    ** while), so the bound is looser there, still far below one object. */
    const char *san = getenv("WALSHIP_SANITIZE");
    bound_kib = (san && *san ? 512 : 80) * 1024;
    if (san && *san) setenv("ASAN_OPTIONS", "quarantine_size_mb=16:detect_leaks=1", 0);
    tt_build(&base, root, "base", 6);
    CHECK(base.nsegs >= 3);
    TT_CASE(test_garbage);
    TT_CASE(test_framed);
    TT_CASE(test_big_and_following);
    return 0;
}
