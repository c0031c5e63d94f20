/*
** bench_commit.c -- what walship costs on the commit path, side by side.
**
** USAGE
**   bench_commit [--tx N] [--sync normal|full] [--s3 URL] [--snapshot-mb M]
**
** Part 1 runs the same workload (N autocommit transactions, each inserting one
** 200-byte row and updating a counter) against:
**   plain     SQLite, WAL mode, no backup at all
**   naive     SQLite plus the simplest synchronous log shipping: a
**             sqlite3_wal_hook that copies each commit's new WAL frames to
**             an archive file and fsyncs it (what "ship every commit" looks
**             like without walship's watermark design)
**   walship   the walship VFS shipping to a file:// store (ship interval 1s)
**   walship-s3  the same to an S3 server, if --s3 URL is given
** and prints mean/p50/p99/max commit latency and the ratio to plain.
**
** Part 2 (--snapshot-mb M, default 256) builds an M MiB database and runs
** the same workload on it three ways: plain SQLite alone; plain SQLite while
** another thread reads, zstd-compresses, writes and fsyncs a copy of the file
** (what any snapshot costs the machine); and through walship with an empty
** store, so that a generation-start snapshot of the whole file runs in the
** background meanwhile. Same synchronous setting everywhere.
*/
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <inttypes.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zstd.h>

#include "common/util.h"
#include "walship.h"

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void die(sqlite3 *db, const char *what) {
    fprintf(stderr, "bench_commit: %s: %s\n", what, db ? sqlite3_errmsg(db) : "?");
    exit(1);
}

static void exec(sqlite3 *db, const char *sql) {
    char *err = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK) {
        fprintf(stderr, "bench_commit: %s: %s\n", sql, err ? err : "?");
        exit(1);
    }
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

typedef struct stats {
    double mean_us, p50_us, p99_us, max_us;
    int64_t n;
} stats;

static stats summarize(int64_t *lat, int64_t n) {
    stats s = {0};
    if (n == 0) return s;
    qsort(lat, (size_t)n, sizeof *lat, cmp_i64);
    double sum = 0;
    for (int64_t i = 0; i < n; i++) sum += (double)lat[i];
    s.n = n;
    s.mean_us = sum / (double)n / 1000.0;
    s.p50_us = (double)lat[n / 2] / 1000.0;
    s.p99_us = (double)lat[(n * 99) / 100] / 1000.0;
    s.max_us = (double)lat[n - 1] / 1000.0;
    return s;
}

/* ---- the naive alternative: copy each commit's frames synchronously -------- */
typedef struct naive {
    int archive_fd;
    char wal_path[4300];
    int64_t wal_pos; /* bytes of the WAL already archived */
} naive;

static int naive_hook(void *arg, sqlite3 *db, const char *schema, int nframes) {
    naive *n = arg;
    (void)db;
    (void)schema;
    (void)nframes;
    int fd = open(n->wal_path, O_RDONLY);
    if (fd < 0) return SQLITE_OK;
    struct stat st;
    fstat(fd, &st);
    if (st.st_size < n->wal_pos) n->wal_pos = 0; /* restarted */
    static char buf[1 << 20];
    while (n->wal_pos < st.st_size) {
        ssize_t r = pread(fd, buf, sizeof buf, n->wal_pos);
        if (r <= 0) break;
        if (write(n->archive_fd, buf, (size_t)r) != r) break;
        n->wal_pos += r;
    }
    close(fd);
    fdatasync(n->archive_fd);
    return SQLITE_OK;
}

/* ---- workloads --------------------------------------------------------------- */
static void commit_one(sqlite3 *db, sqlite3_stmt *ins, sqlite3_stmt *upd, int i) {
    static char payload[200];
    memset(payload, 'a' + (i % 26), sizeof payload);
    sqlite3_bind_text(ins, 1, payload, sizeof payload, SQLITE_STATIC);
    if (sqlite3_step(ins) != SQLITE_DONE) die(db, "insert");
    sqlite3_reset(ins);
    if (sqlite3_step(upd) != SQLITE_DONE) die(db, "update");
    sqlite3_reset(upd);
}

static void schema(sqlite3 *db, const char *sync) {
    char sql[256];
    snprintf(sql, sizeof sql,
             "PRAGMA journal_mode=WAL; PRAGMA synchronous=%s;"
             "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT);"
             "CREATE TABLE IF NOT EXISTS c(n INTEGER); INSERT INTO c VALUES (0);",
             sync);
    exec(db, sql);
}

static sqlite3 *open_db(const char *path, const char *url) {
    sqlite3 *db = NULL;
    if (url) {
        char *uri = sqlite3_mprintf("file:%s?walship_url=%s", path, url);
        if (sqlite3_open_v2(uri, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_URI,
                            "walship") != SQLITE_OK)
            die(db, "open through walship");
        sqlite3_free(uri);
    } else if (sqlite3_open(path, &db) != SQLITE_OK) {
        die(db, "open");
    }
    return db;
}

/* ---- part 2 helpers ---------------------------------------------------------- */
typedef struct copier {
    const char *src;
    char dst[4300];
    int level;
    _Atomic int done;
} copier;

/* Reads src in 4 MiB chunks, compresses each, writes them to dst, fsyncs. */
static void *copy_main(void *arg) {
    copier *c = arg;
    size_t chunk = (size_t)4 << 20, bound = ZSTD_compressBound(chunk);
    uint8_t *in = malloc(chunk), *out = malloc(bound);
    ZSTD_CCtx *cc = ZSTD_createCCtx();
    int in_fd = open(c->src, O_RDONLY), out_fd = open(c->dst, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    for (off_t off = 0; in_fd >= 0 && out_fd >= 0;) {
        ssize_t r = pread(in_fd, in, chunk, off);
        if (r <= 0) break;
        size_t z = ZSTD_compressCCtx(cc, out, bound, in, (size_t)r, c->level);
        if (ZSTD_isError(z) || write(out_fd, out, z) != (ssize_t)z) break;
        off += r;
    }
    if (out_fd >= 0) fsync(out_fd);
    if (in_fd >= 0) close(in_fd);
    if (out_fd >= 0) close(out_fd);
    ZSTD_freeCCtx(cc);
    free(in);
    free(out);
    atomic_store(&c->done, 1);
    return NULL;
}

static int copy_done(void *arg) { return atomic_load(&((copier *)arg)->done); }

/* Whether generations/<gen>/snapshots/ holds a snapshot yet. */
static int snapshot_stored(void *arg) {
    const char *gens = arg;
    DIR *d = opendir(gens);
    if (d == NULL) return 0;
    int found = 0;
    struct dirent *e;
    while (!found && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char sub[4600];
        snprintf(sub, sizeof sub, "%s/%s/snapshots", gens, e->d_name);
        DIR *s = opendir(sub);
        if (s == NULL) continue;
        struct dirent *f;
        while ((f = readdir(s)) != NULL) {
            size_t n = strlen(f->d_name);
            if (n > 5 && strcmp(f->d_name + n - 5, ".snap") == 0) found = 1;
        }
        closedir(s);
    }
    closedir(d);
    return found;
}

/* Commits the workload (one row inserted, a counter updated) until done(arg),
** checked every 64 commits, or until cap commits (done NULL: exactly cap);
** lat gets each commit's latency. */
static stats commit_until(sqlite3 *db, int64_t *lat, int64_t cap, int (*done)(void *), void *arg,
                          double *secs) {
    sqlite3_stmt *ins = NULL, *upd = NULL;
    if (sqlite3_prepare_v2(db, "INSERT INTO t(v) VALUES (?)", -1, &ins, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db, "UPDATE c SET n = n + 1", -1, &upd, NULL) != SQLITE_OK)
        die(db, "prepare");
    int64_t n = 0, t_start = now_ns();
    while (n < cap) {
        int64_t t0 = now_ns();
        exec(db, "BEGIN");
        commit_one(db, ins, upd, (int)n);
        exec(db, "COMMIT");
        lat[n++] = now_ns() - t0;
        if (done && (n & 63) == 0 && done(arg)) break;
    }
    if (secs) *secs = (double)(now_ns() - t_start) / 1e9;
    sqlite3_finalize(ins);
    sqlite3_finalize(upd);
    return summarize(lat, n);
}

static stats run_commits(sqlite3 *db, int ntx) {
    int64_t *lat = malloc((size_t)ntx * sizeof *lat);
    if (lat == NULL) die(db, "out of memory");
    stats s = commit_until(db, lat, ntx, NULL, NULL, NULL);
    free(lat);
    return s;
}

static void print_row(const char *name, stats s, const stats *base) {
    printf("| %-11s | %8.1f | %8.1f | %8.1f | %9.1f | %6.2f |\n", name, s.mean_us, s.p50_us, s.p99_us,
           s.max_us, base ? s.mean_us / base->mean_us : 1.0);
}

int main(int argc, char **argv) {
    int ntx = 20000, snap_mb = 256;
    const char *sync = "normal", *s3 = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--tx") == 0 && i + 1 < argc)
            ntx = atoi(argv[++i]);
        else if (strcmp(argv[i], "--sync") == 0 && i + 1 < argc)
            sync = argv[++i];
        else if (strcmp(argv[i], "--s3") == 0 && i + 1 < argc)
            s3 = argv[++i];
        else if (strcmp(argv[i], "--snapshot-mb") == 0 && i + 1 < argc)
            snap_mb = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: bench_commit [--tx N] [--sync normal|full] [--s3 URL] "
                            "[--snapshot-mb M]\n");
            return 2;
        }
    }
    walship_register(NULL, 0);
    char dir[] = "/tmp/walship-bench-XXXXXX";
    if (mkdtemp(dir) == NULL) return 1;
    char path[4200], url[4200], cmd[4400];

    printf("## Commit latency, %d transactions, synchronous=%s (us per commit)\n\n", ntx, sync);
    printf("| setup       |     mean |      p50 |      p99 |       max | x plain |\n");
    printf("| ----------- | -------- | -------- | -------- | --------- | ------- |\n");
    /* plain */
    snprintf(path, sizeof path, "%s/plain.db", dir);
    sqlite3 *db = open_db(path, NULL);
    schema(db, sync);
    stats plain = run_commits(db, ntx);
    sqlite3_close(db);
    print_row("plain", plain, NULL);
    /* naive */
    snprintf(path, sizeof path, "%s/naive.db", dir);
    naive nv = {0};
    snprintf(nv.wal_path, sizeof nv.wal_path, "%s-wal", path);
    snprintf(url, sizeof url, "%s/naive.archive", dir);
    nv.archive_fd = open(url, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    db = open_db(path, NULL);
    schema(db, sync);
    sqlite3_wal_hook(db, naive_hook, &nv);
    stats naive_s = run_commits(db, ntx);
    sqlite3_close(db);
    close(nv.archive_fd);
    print_row("naive", naive_s, &plain);
    /* walship, file store */
    snprintf(path, sizeof path, "%s/ws.db", dir);
    snprintf(url, sizeof url, "file://%s/store", dir);
    db = open_db(path, url);
    schema(db, sync);
    stats ws = run_commits(db, ntx);
    walship_flush(path, 60000);
    sqlite3_close(db);
    print_row("walship", ws, &plain);
    if (s3) {
        snprintf(path, sizeof path, "%s/ws3.db", dir);
        db = open_db(path, s3);
        schema(db, sync);
        stats w3 = run_commits(db, ntx);
        walship_flush(path, 60000);
        sqlite3_close(db);
        print_row("walship-s3", w3, &plain);
    }

    if (snap_mb > 0) {
        /* Part 2: commits while M MiB are read and compressed. */
        snprintf(path, sizeof path, "%s/big.db", dir);
        db = open_db(path, NULL);
        schema(db, sync);
        exec(db, "CREATE TABLE big(b BLOB)");
        exec(db, "BEGIN");
        char sql[256];
        snprintf(sql, sizeof sql,
                 "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < %d) "
                 "INSERT INTO big SELECT randomblob(3000) FROM n",
                 snap_mb * 340);
        exec(db, sql);
        exec(db, "COMMIT; PRAGMA wal_checkpoint(TRUNCATE);");
        int64_t cap = 4000000;
        int64_t *lat = malloc((size_t)cap * sizeof *lat);
        stats base = run_commits(db, 4000);
        /* plain SQLite while another thread copies the file the way a
        ** snapshot does (read, zstd, write, fsync): the machine's cost */
        copier cp = {.src = path, .level = 3};
        snprintf(cp.dst, sizeof cp.dst, "%s/big.copy", dir);
        pthread_t th;
        if (pthread_create(&th, NULL, copy_main, &cp) != 0) return 1;
        double copy_secs = 0;
        stats with_copy = commit_until(db, lat, cap, copy_done, &cp, &copy_secs);
        pthread_join(th, NULL);
        sqlite3_close(db);
        /* walship: a generation-start snapshot of the whole file */
        snprintf(url, sizeof url, "file://%s/bigstore", dir);
        db = open_db(path, url);
        snprintf(sql, sizeof sql, "PRAGMA synchronous=%s", sync);
        exec(db, sql);
        char gens[4250];
        snprintf(gens, sizeof gens, "%s/bigstore/generations", dir);
        double snap_secs = 0;
        stats during = commit_until(db, lat, cap, snapshot_stored, gens, &snap_secs);
        walship_flush(path, 600000);
        sqlite3_close(db);
        free(lat);
        printf("\n## Commit latency while a %d MiB database is snapshotted (us per commit)\n\n",
               snap_mb);
        printf("| setup       |     mean |      p50 |      p99 |       max | x plain |\n");
        printf("| ----------- | -------- | -------- | -------- | --------- | ------- |\n");
        print_row("plain", base, NULL);
        print_row("plain+copy", with_copy, &base);
        print_row("walship", during, &base);
        printf("\nplain+copy: %" PRId64 " commits during the %.1f s copy (read, zstd -3, write, "
               "fsync in another thread);\nwalship: %" PRId64
               " commits during the %.1f s generation-start snapshot\n",
               with_copy.n, copy_secs, during.n, snap_secs);
    }
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    return 0;
}
