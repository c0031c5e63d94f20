/*
** test_replica_errors.c -- how a replica behaves when things go wrong, with
** readers on it the whole time.
**
**   refusals      a second replica process on the same path; a path that
**                 holds a database that is not a replica
**   status        `walship status PATH` (human and --json) and the metrics
**                 endpoint (Prometheus text) report position and lag
**   corrupt       damaged segments (a flipped byte in the body, a cut-off
**                 object) are refused and reported; the replica keeps
**                 serving its last state and applies once the object is
**                 whole again
**   divergence    a well-formed segment whose checksums do not follow the
**                 replica's history: applying stops, it is reported, and
**                 the replica re-bootstraps (once the store lets it)
**   foreign write someone writes to the replica: detected, reported,
**                 content replaced by the primary's
**   damage while stopped  a page of the file changed while no replica ran:
**                 found by the hash at resume, repaired in place
** At the end replica and primary are byte for byte equal.
*/
/* ctest-labels: replica threads */
/* ctest-timeout: 180 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "format/objfmt.h"
#include "replica_testlib.h"

static const char *dir;
static char url[700], pdb[600], rdb[600], done[600], logp[700], store_dir[600];
static pid_t rep;

static void start_replica(void) {
    rep = rt_start_replica(url, rdb, logp, "--metrics", "127.0.0.1:0");
}

static void stop_replica(void) {
    kill(rep, SIGTERM);
    CHECK_EQ(rt_wait(rep, 30000), 0);
}

/* Waits until a status counter reaches at least want. */
static void wait_counter(const char *key, uint64_t want) {
    int64_t deadline = ws_mono_ms() + 30000;
    while (rt_status_u64(rdb, key) < want) {
        if (ws_mono_ms() > deadline) {
            char st[16384] = "";
            rt_replica_status(rdb, st, sizeof st);
            ws_test_fail(__FILE__, __LINE__, "status %s did not reach %llu: %s", key,
                         (unsigned long long)want, st);
        }
        ws_sleep_ms(20);
    }
}

/* Runs a command, capturing its output; returns the exit status. */
static int run_capture(char *out, size_t n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int run_capture(char *out, size_t n, const char *fmt, ...) {
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    FILE *p = popen(cmd, "r");
    if (p == NULL) return -1;
    size_t k = fread(out, 1, n - 1, p);
    out[k] = '\0';
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* GET path from 127.0.0.1:port. */
static void http_get(int port, const char *path, char *out, size_t n) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK_EQ(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    char req[256];
    int rl = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n", path);
    CHECK_EQ(write(fd, req, (size_t)rl), rl);
    size_t k = 0;
    ssize_t got;
    while (k + 1 < n && (got = read(fd, out + k, n - 1 - k)) > 0) k += (size_t)got;
    out[k] = '\0';
    close(fd);
}

/* The keys of this generation's segments that hold txid, sorted. */
static int segments_holding(uint64_t gen, uint64_t txid, char keys[][700], int max) {
    char cmd[800];
    snprintf(cmd, sizeof cmd, "ls '%s/generations/%016llx/segments'", store_dir,
             (unsigned long long)gen);
    FILE *p = popen(cmd, "r");
    CHECK(p != NULL);
    char name[256];
    int n = 0;
    while (n < max && fgets(name, sizeof name, p)) {
        unsigned long long a, b;
        if (sscanf(name, "%16llx-%16llx.seg", &a, &b) == 2 && a <= txid && b >= txid)
            snprintf(keys[n++], 700, "%s/generations/%016llx/segments/%016llx-%016llx.seg",
                     store_dir, (unsigned long long)gen, a, b);
    }
    pclose(p);
    return n;
}

static void test_refusals(void) {
    char out[8192];
    /* a second process on the same replica */
    int st = run_capture(out, sizeof out, "'%s' replica '%s' '%s' 2>&1",
                         ws_test_env("WALSHIP_BIN"), url, rdb);
    CHECK_EQ(st, 1);
    CHECK_CONTAINS(out, "already maintaining");
    /* a database that is not a replica */
    char other[700];
    snprintf(other, sizeof other, "%s/plain.db", dir);
    sqlite3 *db = NULL;
    CHECK_EQ(sqlite3_open(other, &db), SQLITE_OK);
    rt_exec(db, "CREATE TABLE t(x)");
    sqlite3_close(db);
    st = run_capture(out, sizeof out, "'%s' replica '%s' '%s' 2>&1", ws_test_env("WALSHIP_BIN"),
                     url, other);
    CHECK_EQ(st, 1);
    CHECK_CONTAINS(out, "not a walship replica");
    /* the metrics endpoint is loopback only */
    char other2[700];
    snprintf(other2, sizeof other2, "%s/other.db", dir);
    st = run_capture(out, sizeof out, "'%s' replica '%s' '%s' --metrics 0.0.0.0:0 2>&1",
                     ws_test_env("WALSHIP_BIN"), url, other2);
    CHECK_EQ(st, 2);
    CHECK_CONTAINS(out, "loopback");
    char sd[800];
    snprintf(sd, sizeof sd, "%s-walship-replica", other2);
    CHECK(!rt_exists(sd)); /* refused before anything was created */
}

static void test_status_and_metrics(uint64_t txid) {
    char out[16384];
    CHECK_EQ(run_capture(out, sizeof out, "'%s' status '%s'", ws_test_env("WALSHIP_BIN"), rdb), 0);
    CHECK_CONTAINS(out, "applied_txid");
    CHECK_CONTAINS(out, "lag_ms");
    CHECK_CONTAINS(out, "wal_bytes");
    CHECK_CONTAINS(out, "alive                true");
    CHECK_EQ(run_capture(out, sizeof out, "'%s' status --json '%s'", ws_test_env("WALSHIP_BIN"),
                         rdb),
             0);
    uint64_t v = 0;
    CHECK_EQ(rt_json_u64(out, "applied_txid", &v), 0);
    CHECK_EQ(v, txid);
    char st[16384];
    CHECK_EQ(rt_replica_status(rdb, st, sizeof st), 0);
    const char *m = strstr(st, "\"metrics\":\"127.0.0.1:");
    CHECK(m != NULL);
    int port = atoi(m + strlen("\"metrics\":\"127.0.0.1:"));
    http_get(port, "/metrics", out, sizeof out);
    CHECK_CONTAINS(out, "HTTP/1.1 200");
    CHECK_CONTAINS(out, "text/plain; version=0.0.4");
    char line[1024];
    snprintf(line, sizeof line, "walship_replica_applied_txid{db=\"%s\"} %llu", rdb,
             (unsigned long long)txid);
    CHECK_CONTAINS(out, line);
    CHECK_CONTAINS(out, "walship_replica_lag_seconds{");
    CHECK_CONTAINS(out, "walship_replica_primary_txid{");
    CHECK_CONTAINS(out, "walship_replica_apply_pages_per_second{");
    CHECK_CONTAINS(out, "walship_replica_wal_bytes{");
    CHECK_CONTAINS(out, "walship_replica_last_error{");
    http_get(port, "/status", out, sizeof out);
    CHECK_CONTAINS(out, "\"applied_txid\":");
    http_get(port, "/nope", out, sizeof out);
    CHECK_CONTAINS(out, "HTTP/1.1 404");
}

/* Damages every segment that holds txid (flip: a byte in the body;
** otherwise: cut the object short), runs check, then restores them. */
static void with_damaged_segments(uint64_t gen, uint64_t txid, int flip, uint64_t applied) {
    char keys[8][700];
    int n = segments_holding(gen, txid, keys, 8);
    CHECK(n > 0);
    wsbuf saved[8];
    memset(saved, 0, sizeof saved);
    uint64_t corrupt0 = rt_status_u64(rdb, "corrupt_objects");
    for (int i = 0; i < n; i++) {
        wserr err = {0};
        CHECK_OK(ws_read_file(keys[i], 1 << 28, &saved[i], &err), &err);
        wsbuf bad = {0};
        wsbuf_append(&bad, saved[i].p, saved[i].len);
        if (flip)
            bad.p[SEG_HEADER_SIZE + (bad.len - SEG_HEADER_SIZE - SEG_TRAILER_SIZE) / 2] ^= 0x5a;
        else
            bad.len = bad.len * 2 / 3;
        CHECK_OK(ws_write_file_atomic(keys[i], bad.p, bad.len, &err), &err);
        wsbuf_free(&bad);
    }
    start_replica();
    wait_counter("corrupt_objects", corrupt0 + 1);
    char st[16384];
    CHECK_EQ(rt_replica_status(rdb, st, sizeof st), 0);
    CHECK_CONTAINS(st, "segment");
    CHECK_EQ(rt_status_u64(rdb, "applied_txid"), applied); /* still serving the last state */
    fprintf(stderr, "   refused: %.200s\n", strstr(st, "\"last_error\""));
    for (int i = 0; i < n; i++) {
        wserr err = {0};
        CHECK_OK(ws_write_file_atomic(keys[i], saved[i].p, saved[i].len, &err), &err);
        wsbuf_free(&saved[i]);
    }
}

/* A segment after txid whose transaction does not produce the checksum it
** claims, but which is otherwise well formed. */
static void put_diverging_segment(uint64_t gen, uint64_t txid, char *key_out) {
    char keys[8][700];
    int n = segments_holding(gen, txid, keys, 8);
    CHECK(n > 0);
    wsbuf obj = {0};
    wserr err = {0};
    CHECK_OK(ws_read_file(keys[0], 1 << 28, &obj, &err), &err);
    seg_header h;
    CHECK_OK(seg_parse(obj.p, obj.len, &h, &err), &err);
    CHECK_EQ(h.last_txid, txid);
    wsbuf_free(&obj);
    char tmp[700];
    snprintf(tmp, sizeof tmp, "%s/crafted.seg", dir);
    int fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0);
    seg_writer *w = NULL;
    CHECK_OK(seg_writer_open(fd, h.page_size, h.db_id, gen, txid + 1, h.post_chk, h.db_pages_after, 3, &w,
                             &err),
             &err);
    uint8_t *page = calloc(1, h.page_size);
    ws_test_rand_bytes(page, h.page_size);
    CHECK_OK(seg_writer_begin_tx(w, txid + 1, &err), &err);
    CHECK_OK(seg_writer_page(w, 2, page, &err), &err);
    CHECK_OK(seg_writer_commit_tx(w, txid + 1, ws_now_ms(), h.db_pages_after, 1,
                                  0x0123456789abcdefull, &err),
             &err);
    ws_walpos pos;
    memset(&pos, 0, sizeof pos);
    seg_header out;
    CHECK_OK(seg_writer_finish(w, &pos, &out, &err), &err);
    seg_writer_free(w);
    free(page);
    close(fd);
    snprintf(key_out, 700, "%s/generations/%016llx/segments/%016llx-%016llx.seg", store_dir,
             (unsigned long long)gen, (unsigned long long)(txid + 1),
             (unsigned long long)(txid + 1));
    CHECK_EQ(rename(tmp, key_out), 0);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "reader") == 0) return rt_reader_main(argc, argv);
    if (argc > 1 && strcmp(argv[1], "primary") == 0) return rt_primary_main(argc, argv);
    dir = ws_test_tmpdir();
    ws_test_seed(5);
    snprintf(store_dir, sizeof store_dir, "%s/store", dir);
    snprintf(url, sizeof url, "file://%s", store_dir);
    snprintf(pdb, sizeof pdb, "%s/primary.db", dir);
    snprintf(rdb, sizeof rdb, "%s/replica.db", dir);
    snprintf(done, sizeof done, "%s/primary.done", dir);
    snprintf(logp, sizeof logp, "%s/replica.log", dir);
    uint64_t gen, txid;
    rt_run_primary(pdb, url, 60, done, 0, &gen, &txid);
    start_replica();
    rt_wait_replica(rdb, gen, txid, 30000);
    char stop[700], total[32], res[2][700];
    snprintf(stop, sizeof stop, "%s/stop-readers", dir);
    snprintf(total, sizeof total, "%d", RT_TOTAL);
    pid_t rd[2];
    for (int i = 0; i < 2; i++) {
        snprintf(res[i], sizeof res[i], "%s/reader-%d.txt", dir, i);
        rd[i] = rt_spawn_self(NULL, "reader", rdb, stop, res[i], total, "tight", (const char *)NULL);
    }

    RUN(test_refusals);
    fprintf(stderr, "-- test_status_and_metrics\n");
    test_status_and_metrics(txid);

    fprintf(stderr, "-- corrupt objects are refused, then applied once whole\n");
    for (int flip = 1; flip >= 0; flip--) {
        stop_replica();
        uint64_t applied = txid;
        rt_run_primary(pdb, url, 40, done, 0, &gen, &txid);
        with_damaged_segments(gen, applied + 1, flip, applied);
        rt_wait_replica(rdb, gen, txid, 30000);
    }

    fprintf(stderr, "-- a history that does not follow: stop, report, re-bootstrap\n");
    {
        char key[700];
        put_diverging_segment(gen, txid, key);
        wait_counter("divergences", 1);
        CHECK_EQ(rt_status_u64(rdb, "applied_txid"), txid);
        char st[16384];
        CHECK_EQ(rt_replica_status(rdb, st, sizeof st), 0);
        fprintf(stderr, "   %.300s\n", strstr(st, "\"last_error\""));
        /* (last_error may already be the failed re-bootstrap's: the store
        ** still holds the bad segment) */
        CHECK(rt_count_in_file(logp, "does not produce the checksum the primary recorded") >= 1);
        unlink(key); /* the store is right again */
        wait_counter("rebootstraps", 1);
        rt_run_primary(pdb, url, 30, done, 0, &gen, &txid);
        rt_wait_replica(rdb, gen, txid, 30000);
    }

    fprintf(stderr, "-- a foreign write is detected and undone\n");
    {
        uint64_t rb = rt_status_u64(rdb, "rebootstraps");
        sqlite3 *db = NULL;
        CHECK_EQ(sqlite3_open_v2(rdb, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
        sqlite3_busy_timeout(db, 5000);
        rt_exec(db, "INSERT INTO accounts(balance, pad) VALUES(0, x'00')");
        sqlite3_close(db);
        wait_counter("foreign_writes", 1);
        wait_counter("rebootstraps", rb + 1);
        char st[16384];
        CHECK_EQ(rt_replica_status(rdb, st, sizeof st), 0);
        CHECK_CONTAINS(st, "someone wrote to the replica");
        rt_run_primary(pdb, url, 20, done, 0, &gen, &txid);
        rt_wait_replica(rdb, gen, txid, 30000);
    }

    fprintf(stderr, "-- stop readers\n");
    rt_touch(stop);
    for (int i = 0; i < 2; i++) rt_reader_finish(i, rd[i], res[i], 1, 0);

    fprintf(stderr, "-- damage while no replica runs is found at resume and repaired\n");
    stop_replica();
    {
        /* With no reader left, the replica empties its WAL at exit (a
        ** TRUNCATE checkpoint; SQLite's own checkpoint-on-close is off, see
        ** conn_open), so that the next connection's wal-index rebuild is
        ** instant. A plain connection then removes the empty WAL as any
        ** last SQLite connection would. */
        struct stat wst;
        char walp[700];
        snprintf(walp, sizeof walp, "%s-wal", rdb);
        CHECK(stat(walp, &wst) != 0 || wst.st_size == 0);
        sqlite3 *p = NULL;
        CHECK_EQ(sqlite3_open_v2(rdb, &p, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
        rt_exec(p, "SELECT count(*) FROM sqlite_master");
        CHECK_EQ(sqlite3_close(p), SQLITE_OK);
        char wal[700];
        snprintf(wal, sizeof wal, "%s-wal", rdb);
        CHECK(!rt_exists(wal));
        int fd = open(rdb, O_RDWR);
        CHECK(fd >= 0);
        uint8_t junk[64];
        memset(junk, 0xee, sizeof junk);
        CHECK_EQ(ws_pwrite_all(fd, junk, sizeof junk, 3 * 4096 - 64), 0);
        close(fd);
    }
    start_replica();
    wait_counter("rebootstraps", 1);
    rt_wait_replica(rdb, gen, txid, 30000);
    CHECK_EQ(rt_count_in_file(logp, "event=replica_resume_mismatch"), 1);
    stop_replica();
    CHECK_EQ(rt_files_equal(pdb, rdb), 0);
    return 0;
}
