/*
** bench_replica.c -- end-to-end lag and apply throughput of `walship
** replica`.
**
** USAGE
**   bench_replica [--bin PATH/walship] [--rate TX_PER_S] [--seconds S]
**                 [--poll-ms MS] [--backlog TX] [--dir DIR]
**                 [--lag-only | --apply-only] [--readers N] [--kv]
**   (defaults: walship beside this program's build tree, 100 tx/s, 15 s,
**   poll 50 ms, 4000-transaction backlog, a mktemp directory under /tmp)
**
** LAG: a primary process (walship VFS, ship as soon as possible, file://
** store on local disk) commits at a steady rate; each transaction inserts
** one row with a sequence number, and the primary notes the monotonic time
** right after COMMIT returns. A reader process on the replica (plain
** SQLite, mode=ro) polls max(seq) every 0.5 ms and notes when each number
** became visible. Lag = visible - committed, per transaction: p50, p90,
** p99, max. It covers the whole path: commit, shipper, upload, listing,
** download, verify, apply, publish.
**
** THROUGHPUT: with the replica stopped, the primary commits a backlog of
** transactions that each rewrite 16 random rows of a 20,000-row table
** (about 16 pages each). The replica is started; from the moment it has
** resumed until it has applied the last transaction, pages applied per
** second is measured -- without readers, with 3 readers looping on it, and
** without the WAL fsync (--no-sync) to show what syncing costs.
** --readers N measures only the run with N readers and the fsync on.
**
** --kv (for bench/run): each result is one line of key=value pairs,
**   result=apply readers=N sync=on|off pages=.. txs=.. secs=..
**   pages_per_s=.. txs_per_s=.. reader_busy=0|1
*/
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <dirent.h>

#include "common/util.h"
#include "format/objfmt.h"
#include "walship.h"

static char dir[512], url[600], pdb[600], rdb[600], bin[1024];
static int kv_output;

static int64_t mono_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "bench_replica: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

static void exec_sql(sqlite3 *db, const char *sql) {
    char *e = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &e) != SQLITE_OK) die("%s: %s", sql, e ? e : "?");
}

static int64_t int_sql(sqlite3 *db, const char *sql) {
    sqlite3_stmt *st = NULL;
    int64_t v = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

static pid_t spawn(const char *const *argv, const char *log) {
    pid_t pid = fork();
    if (pid < 0) die("fork: %s", strerror(errno));
    if (pid == 0) {
        if (log) {
            int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
            if (fd >= 0) {
                dup2(fd, 1);
                dup2(fd, 2);
                close(fd);
            }
        }
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    return pid;
}

static int wait_pid(pid_t pid) {
    int st;
    if (waitpid(pid, &st, 0) != pid) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static pid_t spawn_self(const char *role, const char *a1, const char *a2, const char *a3) {
    const char *argv[] = {"/proc/self/exe", role, a1, a2, a3, NULL};
    return spawn(argv, NULL);
}

static pid_t start_replica(const char *poll, int no_sync) {
    char st[700];
    snprintf(st, sizeof st, "%s-walship-replica/status.json", rdb);
    unlink(st);
    char log[700];
    snprintf(log, sizeof log, "%s/replica.log", dir);
    const char *argv[] = {bin, "replica", url, rdb, "--poll-ms", poll,
                          no_sync ? "--no-sync" : NULL, NULL};
    return spawn(argv, log);
}

static uint64_t status_u64(const char *key) {
    char path[700];
    snprintf(path, sizeof path, "%s-walship-replica/status.json", rdb);
    wsbuf b = {0};
    uint64_t v = 0;
    if (ws_read_file(path, 1 << 20, &b, NULL) == 0 && wsbuf_append(&b, "", 1) == 0) {
        char pat[128];
        snprintf(pat, sizeof pat, "\"%s\":", key);
        const char *p = strstr((const char *)b.p, pat);
        if (p) {
            p += strlen(pat);
            v = *p == '"' ? strtoull(p + 1, NULL, 16) : strtoull(p, NULL, 10);
        }
    }
    wsbuf_free(&b);
    return v;
}

/* Nonzero once the replica's status says it is following. */
static int replica_following(void) {
    char path[700];
    snprintf(path, sizeof path, "%s-walship-replica/status.json", rdb);
    wsbuf b = {0};
    int yes = ws_read_file(path, 1 << 20, &b, NULL) == 0 && wsbuf_append(&b, "", 1) == 0 &&
              strstr((const char *)b.p, "\"state\":\"following\"") != NULL;
    wsbuf_free(&b);
    return yes;
}

static sqlite3 *open_primary(void) {
    char uri[2048];
    snprintf(uri, sizeof uri, "file:%s?walship_url=%s&walship_ship_interval=0", pdb, url);
    sqlite3 *db = NULL;
    if (walship_register(NULL, 0) != SQLITE_OK ||
        sqlite3_open_v2(uri, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_URI,
                        "walship") != SQLITE_OK)
        die("open primary: %s", sqlite3_errmsg(db));
    sqlite3_busy_timeout(db, 10000);
    return db;
}

static void flush_primary(sqlite3 *db) {
    if (int_sql(db, "SELECT walship_flush(120000)") != 1) die("primary flush timed out");
}

/* The shipped TXID of the primary, from PRAGMA walship_status. */
static uint64_t primary_txid(sqlite3 *db) {
    sqlite3_stmt *st = NULL;
    uint64_t v = 0;
    if (sqlite3_prepare_v2(db, "PRAGMA walship_status", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
        const char *j = (const char *)sqlite3_column_text(st, 0);
        const char *p = j ? strstr(j, "\"shipped_txid\":") : NULL;
        if (p) v = strtoull(p + 15, NULL, 10);
    }
    sqlite3_finalize(st);
    return v;
}

/* ---- roles ------------------------------------------------------------------- */
/* seed: creates the tables; writes the shipped TXID to argv[2]. */
/* Flushes the primary, writes its TXID to path (for the parent), closes. */
static int primary_done(sqlite3 *db, const char *path) {
    flush_primary(db);
    FILE *f = fopen(path, "w");
    if (f) {
        fprintf(f, "%" PRIu64 "\n", primary_txid(db));
        fclose(f);
    }
    sqlite3_close(db);
    return 0;
}

static int role_seed(char **argv) {
    sqlite3 *db = open_primary();
    exec_sql(db, "CREATE TABLE IF NOT EXISTS lag(seq INTEGER PRIMARY KEY, pad BLOB)");
    exec_sql(db, "CREATE TABLE IF NOT EXISTS bulk(id INTEGER PRIMARY KEY, v BLOB)");
    if (int_sql(db, "SELECT count(*) FROM bulk") == 0)
        exec_sql(db, "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i<20000) "
                     "INSERT INTO bulk SELECT i, randomblob(180) FROM c");
    return primary_done(db, argv[2]);
}

/* lagwriter OUT RATE SECONDS: commits at RATE tx/s, notes commit times. */
static int role_lagwriter(char **argv) {
    double rate = atof(argv[3]);
    int secs = atoi(argv[4]);
    sqlite3 *db = open_primary();
    int64_t base = int_sql(db, "SELECT coalesce(max(seq),0) FROM lag");
    int n = (int)(rate * secs);
    int64_t *t = calloc((size_t)n + 1, sizeof *t);
    sqlite3_stmt *ins = NULL;
    sqlite3_prepare_v2(db, "INSERT INTO lag VALUES(?, randomblob(100))", -1, &ins, NULL);
    int64_t start = mono_us();
    for (int i = 1; i <= n; i++) {
        int64_t due = start + (int64_t)((double)i * 1e6 / rate);
        int64_t now = mono_us();
        if (due > now) usleep((useconds_t)(due - now));
        sqlite3_bind_int64(ins, 1, base + i);
        if (sqlite3_step(ins) != SQLITE_DONE) die("insert: %s", sqlite3_errmsg(db));
        sqlite3_reset(ins);
        t[i] = mono_us();
    }
    sqlite3_finalize(ins);
    flush_primary(db);
    sqlite3_close(db);
    FILE *f = fopen(argv[2], "w");
    if (f == NULL) return 1;
    for (int i = 1; i <= n; i++) fprintf(f, "%" PRId64 " %" PRId64 "\n", base + i, t[i]);
    fclose(f);
    free(t);
    return 0;
}

/* lagreader OUT STOPFILE: notes when each seq became visible. */
static int role_lagreader(char **argv) {
    char uri[700];
    snprintf(uri, sizeof uri, "file:%s?mode=ro", rdb);
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(uri, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, NULL) != SQLITE_OK)
        die("reader open");
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "SELECT coalesce(max(seq),0) FROM lag", -1, &st, NULL) != SQLITE_OK)
        die("reader prepare: %s", sqlite3_errmsg(db));
    FILE *f = fopen(argv[2], "w");
    struct stat sb;
    int64_t seen = -1;
    while (stat(argv[3], &sb) != 0) {
        if (sqlite3_step(st) == SQLITE_ROW) {
            int64_t m = sqlite3_column_int64(st, 0);
            int64_t now = mono_us();
            if (seen < 0) seen = m;
            for (int64_t s = seen + 1; s <= m; s++) fprintf(f, "%" PRId64 " %" PRId64 "\n", s, now);
            if (m > seen) seen = m;
        }
        sqlite3_reset(st);
        usleep(500);
    }
    fclose(f);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return 0;
}

/* bulk OUT NTX: NTX transactions rewriting 16 random rows each. */
static int role_bulk(char **argv) {
    int n = atoi(argv[3]);
    sqlite3 *db = open_primary();
    sqlite3_stmt *up = NULL;
    sqlite3_prepare_v2(db, "UPDATE bulk SET v=randomblob(180) WHERE id=?", -1, &up, NULL);
    uint64_t seed = (uint64_t)mono_us();
    for (int i = 0; i < n; i++) {
        exec_sql(db, "BEGIN");
        for (int k = 0; k < 16; k++) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            sqlite3_bind_int64(up, 1, 1 + (int64_t)((seed >> 33) % 20000));
            sqlite3_step(up);
            sqlite3_reset(up);
        }
        exec_sql(db, "COMMIT");
    }
    sqlite3_finalize(up);
    return primary_done(db, argv[2]);
}

/* loopreader STOPFILE: tight read transactions over the bulk table. */
static int role_loopreader(char **argv) {
    char uri[700];
    snprintf(uri, sizeof uri, "file:%s?mode=ro", rdb);
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(uri, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, NULL) != SQLITE_OK)
        return 1;
    struct stat sb;
    long busy = 0;
    while (stat(argv[2], &sb) != 0) {
        int rc = sqlite3_exec(db, "SELECT count(*), sum(length(v)) FROM bulk WHERE id % 97 = 0",
                              NULL, NULL, NULL);
        if ((rc & 0xff) == SQLITE_BUSY && busy++ == 0)
            fprintf(stderr, "loopreader: rc=%d %s\n", sqlite3_extended_errcode(db),
                    sqlite3_errmsg(db));
    }
    sqlite3_close(db);
    return busy ? 2 : 0;
}

/* ---- measurements --------------------------------------------------------------- */
static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t read_u64_file(const char *path) {
    FILE *f = fopen(path, "r");
    unsigned long long v = 0;
    if (f == NULL || fscanf(f, "%llu", &v) != 1) die("cannot read %s", path);
    fclose(f);
    return v;
}

static void wait_applied(uint64_t txid, int64_t timeout_ms) {
    int64_t end = ws_mono_ms() + timeout_ms;
    while (status_u64("applied_txid") < txid) {
        if (ws_mono_ms() > end) die("the replica did not reach TXID %" PRIu64, txid);
        ws_sleep_ms(2);
    }
}

/* Shipping part of the lag: for every transaction committed in
** [from_ms, to_ms] (primary wall clock), the time until the segment holding
** it was in the store (the object file's mtime). */
static void ship_lag_report(int64_t from_ms, int64_t to_ms) {
    char gdir[700];
    snprintf(gdir, sizeof gdir, "%s/store/generations", dir);
    DIR *g = opendir(gdir);
    if (g == NULL) return;
    int64_t *v = NULL;
    size_t n = 0, cap = 0;
    struct dirent *ge;
    while ((ge = readdir(g)) != NULL) {
        if (ge->d_name[0] == '.') continue;
        char sdir[1200];
        snprintf(sdir, sizeof sdir, "%s/%s/segments", gdir, ge->d_name);
        DIR *sd = opendir(sdir);
        if (sd == NULL) continue;
        struct dirent *se;
        while ((se = readdir(sd)) != NULL) {
            if (se->d_name[0] == '.') continue;
            char path[1600];
            snprintf(path, sizeof path, "%s/%s", sdir, se->d_name);
            struct stat st;
            if (stat(path, &st) != 0) continue;
            int64_t mt = (int64_t)st.st_mtim.tv_sec * 1000 + st.st_mtim.tv_nsec / 1000000;
            if (mt < from_ms || mt > to_ms + 10000) continue;
            wsbuf b = {0};
            seg_iter *it = NULL;
            if (ws_read_file(path, 1 << 30, &b, NULL) == 0 && seg_iter_open(b.p, b.len, &it, NULL) == 0) {
                seg_event ev;
                while (seg_iter_next(it, &ev, NULL) == 0 && ev.type != SEG_EV_END) {
                    if (ev.type != SEG_EV_COMMIT || ev.commit_ms < from_ms || ev.commit_ms > to_ms)
                        continue;
                    if (n == cap) {
                        cap = cap ? cap * 2 : 1024;
                        v = realloc(v, cap * sizeof *v);
                    }
                    v[n++] = mt - ev.commit_ms;
                }
            }
            seg_iter_free(it);
            wsbuf_free(&b);
        }
        closedir(sd);
    }
    closedir(g);
    if (n > 0) {
        qsort(v, n, sizeof *v, cmp_i64);
        printf("      of which primary -> store (commit to segment uploaded): p50=%" PRId64
               " ms  p90=%" PRId64 " ms  p99=%" PRId64 " ms  (%zu transactions)\n",
               v[n / 2], v[n * 9 / 10], v[n * 99 / 100], n);
    }
    free(v);
}

static void measure_lag(double rate, int secs, const char *poll) {
    char wfile[700], rfile[700], stop[700];
    snprintf(wfile, sizeof wfile, "%s/lag-writer.txt", dir);
    snprintf(rfile, sizeof rfile, "%s/lag-reader.txt", dir);
    snprintf(stop, sizeof stop, "%s/lag-stop", dir);
    unlink(stop);
    pid_t rep = start_replica(poll, 0);
    int64_t end = ws_mono_ms() + 30000;
    while (!replica_following() && ws_mono_ms() < end) ws_sleep_ms(10);
    ws_sleep_ms(300);
    char r[32], s[32];
    snprintf(r, sizeof r, "%g", rate);
    snprintf(s, sizeof s, "%d", secs);
    pid_t rd = spawn_self("lagreader", rfile, stop, NULL);
    ws_sleep_ms(200);
    int64_t wall0 = ws_now_ms();
    pid_t w = spawn_self("lagwriter", wfile, r, s);
    if (wait_pid(w) != 0) die("lag writer failed");
    int64_t wall1 = ws_now_ms();
    ws_sleep_ms(2000);
    int fd = open(stop, O_CREAT | O_WRONLY, 0644);
    close(fd);
    wait_pid(rd);
    kill(rep, SIGTERM);
    wait_pid(rep);
    /* join */
    FILE *fw = fopen(wfile, "r"), *fr = fopen(rfile, "r");
    if (fw == NULL || fr == NULL) die("lag files missing");
    int cap = (int)(rate * secs) + 16, n = 0;
    int64_t *commit = calloc((size_t)cap, sizeof *commit), *lag = calloc((size_t)cap, sizeof *lag);
    int64_t first = -1;
    long long sq, t;
    int nw = 0;
    while (fscanf(fw, "%lld %lld", &sq, &t) == 2 && nw < cap) {
        if (first < 0) first = sq;
        commit[nw++] = t;
    }
    while (fscanf(fr, "%lld %lld", &sq, &t) == 2) {
        int64_t i = sq - first;
        if (i >= 0 && i < nw) lag[n++] = t - commit[i];
    }
    fclose(fw);
    fclose(fr);
    if (n == 0) die("no lag samples");
    qsort(lag, (size_t)n, sizeof *lag, cmp_i64);
    printf("lag   rate=%g tx/s  poll=%s ms  samples=%d/%d  p50=%.1f ms  p90=%.1f ms  p99=%.1f ms  "
           "max=%.1f ms\n",
           rate, poll, n, nw, lag[n / 2] / 1000.0, lag[n * 9 / 10] / 1000.0,
           lag[n * 99 / 100] / 1000.0, lag[n - 1] / 1000.0);
    ship_lag_report(wall0, wall1);
    fflush(stdout);
    free(commit);
    free(lag);
}

static void measure_throughput(int backlog, int nreaders, int no_sync) {
    char done[700], stop[700];
    snprintf(done, sizeof done, "%s/bulk.done", dir);
    snprintf(stop, sizeof stop, "%s/bulk-stop", dir);
    unlink(stop);
    char n[32];
    snprintf(n, sizeof n, "%d", backlog);
    pid_t w = spawn_self("bulk", done, n, NULL);
    if (wait_pid(w) != 0) die("bulk writer failed");
    uint64_t target = read_u64_file(done);
    sync(); /* measure the replica, not the writeback of the primary's writes */
    pid_t rds[8];
    for (int i = 0; i < nreaders; i++) rds[i] = spawn_self("loopreader", stop, NULL, NULL);
    int64_t t_spawn = ws_mono_ms();
    pid_t rep = start_replica("50", no_sync);
    /* resumed: the status file appears once it follows */
    while (!replica_following()) {
        if (ws_mono_ms() - t_spawn > 60000) die("replica did not start");
        ws_sleep_ms(1);
    }
    int64_t t0 = mono_us();
    uint64_t p0 = status_u64("pages_applied");
    wait_applied(target, 600000);
    int64_t t1 = mono_us();
    uint64_t pages = status_u64("pages_applied") - p0, txs = status_u64("txs_applied");
    int fd = open(stop, O_CREAT | O_WRONLY, 0644);
    close(fd);
    int busy = 0;
    for (int i = 0; i < nreaders; i++) busy |= wait_pid(rds[i]) != 0;
    kill(rep, SIGTERM);
    wait_pid(rep);
    double s = (double)(t1 - t0) / 1e6;
    if (kv_output) {
        printf("result=apply readers=%d sync=%s pages=%" PRIu64 " txs=%" PRIu64
               " secs=%.3f pages_per_s=%.0f txs_per_s=%.0f reader_busy=%d\n",
               nreaders, no_sync ? "off" : "on", pages, txs, s, (double)pages / s,
               (double)txs / s, busy);
        fflush(stdout);
        return;
    }
    printf("apply backlog=%d tx  readers=%d  sync=%s  %" PRIu64 " pages, %" PRIu64
           " tx in %.2f s  =>  %.0f pages/s, %.0f tx/s%s\n",
           backlog, nreaders, no_sync ? "off" : "on", pages, txs, s, (double)pages / s,
           (double)txs / s, busy ? "  (a reader saw SQLITE_BUSY!)" : "");
    fflush(stdout);
}

int main(int argc, char **argv) {
    if (argc > 1 && argv[1][0] != '-') {
        /* a role: the directory comes from the environment */
        const char *d = getenv("BENCH_REPLICA_DIR");
        if (d == NULL) die("no BENCH_REPLICA_DIR");
        snprintf(dir, sizeof dir, "%s", d);
        snprintf(url, sizeof url, "file://%s/store", dir);
        snprintf(pdb, sizeof pdb, "%s/primary.db", dir);
        snprintf(rdb, sizeof rdb, "%s/replica.db", dir);
        if (strcmp(argv[1], "seed") == 0) return role_seed(argv);
        if (strcmp(argv[1], "lagwriter") == 0) return role_lagwriter(argv);
        if (strcmp(argv[1], "lagreader") == 0) return role_lagreader(argv);
        if (strcmp(argv[1], "bulk") == 0) return role_bulk(argv);
        if (strcmp(argv[1], "loopreader") == 0) return role_loopreader(argv);
        die("unknown role %s", argv[1]);
    }
    double rate = 100;
    int secs = 15, backlog = 4000;
    const char *poll = "50";
    int do_lag = 1, do_apply = 1, only_readers = -1;
    bin[0] = '\0';
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--bin") == 0 && i + 1 < argc) snprintf(bin, sizeof bin, "%s", argv[++i]);
        else if (strcmp(argv[i], "--rate") == 0 && i + 1 < argc) rate = atof(argv[++i]);
        else if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc) secs = atoi(argv[++i]);
        else if (strcmp(argv[i], "--poll-ms") == 0 && i + 1 < argc) poll = argv[++i];
        else if (strcmp(argv[i], "--backlog") == 0 && i + 1 < argc) backlog = atoi(argv[++i]);
        else if (strcmp(argv[i], "--dir") == 0 && i + 1 < argc) snprintf(dir, sizeof dir, "%s", argv[++i]);
        else if (strcmp(argv[i], "--lag-only") == 0) do_apply = 0;
        else if (strcmp(argv[i], "--apply-only") == 0) do_lag = 0;
        else if (strcmp(argv[i], "--readers") == 0 && i + 1 < argc) only_readers = atoi(argv[++i]);
        else if (strcmp(argv[i], "--kv") == 0) kv_output = 1;
        else die("usage: bench_replica [--bin walship] [--rate N] [--seconds S] [--poll-ms MS] "
                 "[--backlog TX] [--dir DIR] [--lag-only | --apply-only] [--readers N] [--kv]");
    }
    if (only_readers > 8) die("--readers: at most 8");
    if (bin[0] == '\0') {
        /* <build>/bench/bench_replica -> <build>/walship */
        char self[900];
        ssize_t k = readlink("/proc/self/exe", self, sizeof self - 1);
        if (k <= 0) die("cannot find myself");
        self[k] = '\0';
        char *slash = strrchr(self, '/');
        if (slash) *slash = '\0';
        snprintf(bin, sizeof bin, "%s/../walship", self);
    }
    if (access(bin, X_OK) != 0) die("no walship binary at %s (use --bin)", bin);
    if (dir[0] == '\0') {
        snprintf(dir, sizeof dir, "/tmp/bench-replica-XXXXXX");
        if (mkdtemp(dir) == NULL) die("mkdtemp");
    }
    setenv("BENCH_REPLICA_DIR", dir, 1);
    snprintf(url, sizeof url, "file://%s/store", dir);
    snprintf(pdb, sizeof pdb, "%s/primary.db", dir);
    snprintf(rdb, sizeof rdb, "%s/replica.db", dir);
    if (!kv_output) printf("bench_replica: dir=%s walship=%s\n", dir, bin);
    char seedf[700];
    snprintf(seedf, sizeof seedf, "%s/seed.done", dir);
    if (wait_pid(spawn_self("seed", seedf, NULL, NULL)) != 0) die("seed failed");
    uint64_t t = read_u64_file(seedf);
    pid_t rep = start_replica(poll, 0); /* bootstrap */
    wait_applied(t, 60000);
    kill(rep, SIGTERM);
    wait_pid(rep);
    if (do_lag) {
        measure_lag(rate, secs, poll);
        if (strcmp(poll, "200") != 0) measure_lag(rate, secs, "200");
    }
    if (do_apply && only_readers >= 0) {
        measure_throughput(backlog, only_readers, 0);
    } else if (do_apply) {
        measure_throughput(backlog, 0, 0);
        measure_throughput(backlog, 3, 0);
        measure_throughput(backlog, 0, 1);
    }
    if (!kv_output) printf("bench_replica: done (remove %s when finished)\n", dir);
    return 0;
}
