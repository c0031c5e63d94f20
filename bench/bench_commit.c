/*
** bench_commit.c -- what walship costs on the commit path, side by side.
**
** USAGE
**   bench_commit [--tx N] [--sync normal|full] [--s3 URL] [--snapshot-mb M]
**   bench_commit --setup plain|naive|walship [--url URL] [--db PATH]
**                [--sync normal|full] [--rows N] [--seconds S | --count N]
**                [--rate R] [--prefill-mb M]
**   bench_commit --versions
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
**
** One run (--setup, what bench/run drives): one setup, in this process
** alone, on the database at --db (created if missing; --prefill-mb first
** fills a fresh one with M MiB of half-compressible rows through plain
** SQLite, so that walship starts with a snapshot of it). Each transaction
** inserts N 200-byte rows (--rows, default 1) and updates a counter; the
** loop runs S seconds (default 5) or N commits, unthrottled or paced at R
** commits/s (--rate; latency is the commit's own time, from BEGIN to the
** end of COMMIT, not from when it was due). walship's generation start is
** flushed before the clock starts. Prints one line of key=value pairs:
**   commits, secs, commits_per_s, p50_us, p99_us, p999_us, max_us,
**   cpu_ms (user+system of this process, shipper threads included, from
**   the first commit until everything is in the store), wal_peak,
**   spool_peak, tmp_peak (bytes; sampled every 10 ms by a child process,
**   whose CPU is not counted; the spool is <db>-walship/, temp files are
**   its *.tmp), keepup_ms (walship: from the last commit until
**   walship_flush returns 1, i.e. everything is in the store; -1 if it
**   did not within 120 s; 0 for the others), copied_bytes (walship: WAL
**   bytes the VFS copied into the spool at restarts, from walship_status).
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
#include <poll.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
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
    double mean_us, p50_us, p99_us, p999_us, max_us;
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
    s.p999_us = (double)lat[(n * 999) / 1000] / 1000.0;
    s.max_us = (double)lat[n - 1] / 1000.0;
    return s;
}

/* ---- the naive alternative: copy each commit's frames synchronously -------- */
typedef struct naive {
    int archive_fd;
    char wal_path[4300];
    int64_t wal_pos; /* bytes of the WAL already archived */
} naive;

/* After each commit: appends the WAL bytes up to the commit's last frame
** (nframes frames) that the archive does not have yet, fdatasyncs the
** archive, then checkpoints at 1000 frames as SQLite's default hook does
** (setting a WAL hook replaces it). A WAL that restarted since is archived
** again from its header. */
static int naive_hook(void *arg, sqlite3 *db, const char *schema, int nframes) {
    naive *n = arg;
    int fd = open(n->wal_path, O_RDONLY);
    if (fd < 0) return SQLITE_OK;
    uint8_t hdr[32];
    if (pread(fd, hdr, sizeof hdr, 0) != (ssize_t)sizeof hdr) {
        close(fd);
        return SQLITE_OK;
    }
    int64_t pgsz = ((int64_t)hdr[8] << 24) | (hdr[9] << 16) | (hdr[10] << 8) | hdr[11];
    if (pgsz == 1) pgsz = 65536;
    int64_t end = 32 + (int64_t)nframes * (24 + pgsz);
    if (end < n->wal_pos) n->wal_pos = 0; /* restarted */
    static char buf[1 << 20];
    while (n->wal_pos < end) {
        size_t want = end - n->wal_pos < (int64_t)sizeof buf ? (size_t)(end - n->wal_pos) : sizeof buf;
        ssize_t r = pread(fd, buf, want, n->wal_pos);
        if (r <= 0) break;
        if (write(n->archive_fd, buf, (size_t)r) != r) break;
        n->wal_pos += r;
    }
    close(fd);
    fdatasync(n->archive_fd);
    if (nframes >= 1000) sqlite3_wal_checkpoint(db, schema);
    return SQLITE_OK;
}

/* ---- workloads --------------------------------------------------------------- */
/* The body of one transaction: rows 200-byte rows inserted, a counter updated. */
static void commit_one(sqlite3 *db, sqlite3_stmt *ins, sqlite3_stmt *upd, int i, int rows) {
    static char payload[200];
    memset(payload, 'a' + (i % 26), sizeof payload);
    sqlite3_bind_text(ins, 1, payload, sizeof payload, SQLITE_STATIC);
    for (int r = 0; r < rows; r++) {
        if (sqlite3_step(ins) != SQLITE_DONE) die(db, "insert");
        sqlite3_reset(ins);
    }
    if (sqlite3_step(upd) != SQLITE_DONE) die(db, "update");
    sqlite3_reset(upd);
}

static void schema(sqlite3 *db, const char *sync) {
    char sql[256];
    snprintf(sql, sizeof sql,
             "PRAGMA journal_mode=WAL; PRAGMA synchronous=%s;"
             "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT);"
             "CREATE TABLE IF NOT EXISTS c(n INTEGER);"
             "INSERT INTO c SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM c);",
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

/* How a commit loop is paced: rows per transaction, commits per second
** (0: as fast as it goes), and a CLOCK_MONOTONIC deadline (0: none). */
typedef struct pace {
    int rows;
    double rate;
    int64_t until_ns;
} pace;

/* Commits the workload (pc->rows rows inserted, a counter updated; NULL pc:
** one row, unthrottled) until done(arg), checked every 64 commits, the
** deadline, or cap commits (done NULL and no deadline: exactly cap); lat
** gets each commit's latency, from BEGIN to the end of COMMIT. */
static stats commit_until(sqlite3 *db, int64_t *lat, int64_t cap, int (*done)(void *), void *arg,
                          double *secs, const pace *pc) {
    static const pace unpaced = {.rows = 1};
    if (pc == NULL) pc = &unpaced;
    sqlite3_stmt *ins = NULL, *upd = NULL;
    if (sqlite3_prepare_v2(db, "INSERT INTO t(v) VALUES (?)", -1, &ins, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db, "UPDATE c SET n = n + 1", -1, &upd, NULL) != SQLITE_OK)
        die(db, "prepare");
    int64_t n = 0, t_start = now_ns();
    while (n < cap) {
        if (pc->rate > 0) {
            int64_t due = t_start + (int64_t)((double)n * 1e9 / pc->rate);
            struct timespec ts = {.tv_sec = due / 1000000000, .tv_nsec = due % 1000000000};
            if (due > now_ns()) clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
        }
        int64_t t0 = now_ns();
        if (pc->until_ns && t0 >= pc->until_ns) break;
        exec(db, "BEGIN");
        commit_one(db, ins, upd, (int)n, pc->rows);
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
    stats s = commit_until(db, lat, ntx, NULL, NULL, NULL, NULL);
    free(lat);
    return s;
}

static void print_row(const char *name, stats s, const stats *base) {
    printf("| %-11s | %8.1f | %8.1f | %8.1f | %9.1f | %6.2f |\n", name, s.mean_us, s.p50_us, s.p99_us,
           s.max_us, base ? s.mean_us / base->mean_us : 1.0);
}

/* ---- one run (--setup): what bench/run drives ----------------------------------- */

/* Peaks of the files a setup keeps beside the database, sampled by a child
** process (so that its CPU does not count as the writer's). */
typedef struct sampler {
    pid_t pid;
    int go_fd;  /* parent's end: one byte starts sampling, close stops it */
    int res_fd; /* parent's end: the child writes its peaks here */
} sampler;

typedef struct peaks {
    int64_t wal, spool, tmp;
} peaks;

/* Adds the sizes of the regular files under dir to *all, and those named
** *.tmp to *tmp. */
static void dir_bytes(const char *dir, int64_t *all, int64_t *tmp) {
    DIR *d = opendir(dir);
    if (d == NULL) return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        char p[4600];
        struct stat st;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        if (lstat(p, &st) != 0) continue;
        if (S_ISDIR(st.st_mode)) {
            dir_bytes(p, all, tmp);
        } else if (S_ISREG(st.st_mode)) {
            size_t n = strlen(e->d_name);
            *all += st.st_size;
            if (n > 4 && strcmp(e->d_name + n - 4, ".tmp") == 0) *tmp += st.st_size;
        }
    }
    closedir(d);
}

static void sampler_child(const char *db, int go_fd, int res_fd) {
    char wal[4300], spool[4300];
    snprintf(wal, sizeof wal, "%s-wal", db);
    snprintf(spool, sizeof spool, "%s-walship", db);
    peaks pk = {0};
    char c;
    if (read(go_fd, &c, 1) != 1) _exit(0);
    for (;;) {
        struct stat st;
        int64_t all = 0, tmp = 0;
        if (stat(wal, &st) == 0 && st.st_size > pk.wal) pk.wal = st.st_size;
        dir_bytes(spool, &all, &tmp);
        if (all > pk.spool) pk.spool = all;
        if (tmp > pk.tmp) pk.tmp = tmp;
        struct pollfd pfd = {.fd = go_fd, .events = POLLIN};
        if (poll(&pfd, 1, 10) != 0) break; /* the parent closed its end */
    }
    if (write(res_fd, &pk, sizeof pk) != (ssize_t)sizeof pk) _exit(1);
    _exit(0);
}

/* Forks the sampler; it waits for sampler_go. Call before any thread exists. */
static void sampler_start(sampler *s, const char *db) {
    int go[2], res[2];
    if (pipe(go) != 0 || pipe(res) != 0) die(NULL, "pipe");
    fflush(NULL);
    s->pid = fork();
    if (s->pid < 0) die(NULL, "fork");
    if (s->pid == 0) {
        close(go[1]);
        close(res[0]);
        sampler_child(db, go[0], res[1]);
    }
    close(go[0]);
    close(res[1]);
    s->go_fd = go[1];
    s->res_fd = res[0];
}

static void sampler_go(sampler *s) {
    if (write(s->go_fd, "g", 1) != 1) die(NULL, "sampler");
}

static peaks sampler_stop(sampler *s) {
    peaks pk = {-1, -1, -1};
    close(s->go_fd);
    if (read(s->res_fd, &pk, sizeof pk) != (ssize_t)sizeof pk) pk = (peaks){-1, -1, -1};
    close(s->res_fd);
    waitpid(s->pid, NULL, 0);
    return pk;
}

static int64_t cpu_ns(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ((int64_t)ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000 +
           ((int64_t)ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000;
}

/* Fills a new database at path with about mb MiB: rows of 2,000 hex digits
** (random bytes, so about half of it compresses), then truncates its WAL. */
static void prefill(const char *path, int mb) {
    sqlite3 *db = open_db(path, NULL);
    char sql[512];
    snprintf(sql, sizeof sql,
             "PRAGMA journal_mode=WAL; CREATE TABLE fill(b TEXT); BEGIN;"
             "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < %d) "
             "INSERT INTO fill SELECT hex(randomblob(1000)) FROM n; COMMIT;"
             "PRAGMA wal_checkpoint(TRUNCATE);",
             mb * 512);
    exec(db, sql);
    sqlite3_close(db);
}

typedef struct run_opts {
    const char *setup, *url, *db, *sync;
    int rows, prefill_mb;
    double seconds, rate;
    int64_t count;
} run_opts;

/* An integer field of PRAGMA walship_status (-1 if absent). */
static int64_t status_int(sqlite3 *db, const char *key) {
    int64_t v = -1;
    sqlite3_stmt *st = NULL;
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    if (sqlite3_prepare_v2(db, "PRAGMA walship_status", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
        const char *js = (const char *)sqlite3_column_text(st, 0);
        const char *p = js ? strstr(js, pat) : NULL;
        if (p) v = strtoll(p + strlen(pat), NULL, 10);
    }
    sqlite3_finalize(st);
    return v;
}

/* One setup, one line of key=value results on stdout (see the header). */
static int run_one(const run_opts *o) {
    int is_walship = strcmp(o->setup, "walship") == 0, is_naive = strcmp(o->setup, "naive") == 0;
    if (!is_walship && !is_naive && strcmp(o->setup, "plain") != 0) {
        fprintf(stderr, "bench_commit: unknown setup '%s'\n", o->setup);
        return 2;
    }
    if (o->db == NULL || (is_walship && o->url == NULL)) {
        fprintf(stderr, "bench_commit: --setup needs --db (and --url for walship)\n");
        return 2;
    }
    struct stat st;
    if (o->prefill_mb > 0 && stat(o->db, &st) != 0) prefill(o->db, o->prefill_mb);
    sampler smp;
    sampler_start(&smp, o->db);
    walship_register(NULL, 0);
    sqlite3 *db = open_db(o->db, is_walship ? o->url : NULL);
    sqlite3_busy_timeout(db, 10000);
    schema(db, o->sync);
    if (is_walship && walship_flush(o->db, 600000) != 1) die(db, "flush before the run");
    naive nv = {.archive_fd = -1};
    if (is_naive) {
        char archive[4300];
        snprintf(nv.wal_path, sizeof nv.wal_path, "%s-wal", o->db);
        snprintf(archive, sizeof archive, "%s.archive", o->db);
        nv.archive_fd = open(archive, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (nv.archive_fd < 0) die(db, "open the archive");
        sqlite3_wal_hook(db, naive_hook, &nv);
    }
    int64_t cap = o->count > 0 ? o->count : 0;
    if (cap == 0) {
        double per_s = o->rate > 0 ? o->rate * 1.05 + 16 : 200000;
        cap = (int64_t)(per_s * o->seconds) + 1024;
    }
    int64_t *lat = malloc((size_t)cap * sizeof *lat);
    if (lat == NULL) die(db, "out of memory");
    pace pc = {.rows = o->rows, .rate = o->rate};
    sampler_go(&smp);
    int64_t cpu0 = cpu_ns(), t0 = now_ns();
    if (o->count <= 0) pc.until_ns = t0 + (int64_t)(o->seconds * 1e9);
    double secs = 0;
    stats s = commit_until(db, lat, cap, NULL, NULL, &secs, &pc);
    if (o->count <= 0 && s.n == cap)
        fprintf(stderr, "bench_commit: warning: stopped at the latency buffer's cap (%" PRId64
                        " commits) before %.1f s\n", cap, o->seconds);
    int64_t keepup_ms = 0, t_end = now_ns();
    if (is_walship)
        keepup_ms = walship_flush(o->db, 120000) == 1 ? (now_ns() - t_end) / 1000000 : -1;
    int64_t cpu = cpu_ns() - cpu0;
    peaks pk = sampler_stop(&smp);
    int64_t copied = is_walship ? status_int(db, "wal_bytes_copied") : 0;
    sqlite3_close(db);
    if (nv.archive_fd >= 0) close(nv.archive_fd);
    free(lat);
    printf("setup=%s rows=%d sync=%s rate=%g commits=%" PRId64 " secs=%.3f commits_per_s=%.1f "
           "mean_us=%.1f p50_us=%.1f p99_us=%.1f p999_us=%.1f max_us=%.1f cpu_ms=%.1f "
           "cpu_us_per_commit=%.2f wal_peak=%" PRId64 " spool_peak=%" PRId64 " tmp_peak=%" PRId64
           " keepup_ms=%" PRId64 " copied_bytes=%" PRId64 "\n",
           o->setup, o->rows, o->sync, o->rate, s.n, secs, secs > 0 ? (double)s.n / secs : 0,
           s.mean_us, s.p50_us, s.p99_us, s.p999_us, s.max_us, (double)cpu / 1e6,
           s.n ? (double)cpu / 1e3 / (double)s.n : 0, pk.wal, pk.spool, pk.tmp, keepup_ms,
           copied);
    return 0;
}

int main(int argc, char **argv) {
    int ntx = 20000, snap_mb = 256;
    const char *sync = "normal", *s3 = NULL;
    run_opts one = {.rows = 1, .seconds = 5};
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--versions") == 0) {
            printf("sqlite=%s zstd=%s\n", sqlite3_libversion(), ZSTD_versionString());
            return 0;
        } else if (strcmp(argv[i], "--setup") == 0 && i + 1 < argc)
            one.setup = argv[++i];
        else if (strcmp(argv[i], "--url") == 0 && i + 1 < argc)
            one.url = argv[++i];
        else if (strcmp(argv[i], "--db") == 0 && i + 1 < argc)
            one.db = argv[++i];
        else if (strcmp(argv[i], "--rows") == 0 && i + 1 < argc)
            one.rows = atoi(argv[++i]);
        else if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
            one.seconds = atof(argv[++i]);
        else if (strcmp(argv[i], "--count") == 0 && i + 1 < argc)
            one.count = atoll(argv[++i]);
        else if (strcmp(argv[i], "--rate") == 0 && i + 1 < argc)
            one.rate = atof(argv[++i]);
        else if (strcmp(argv[i], "--prefill-mb") == 0 && i + 1 < argc)
            one.prefill_mb = atoi(argv[++i]);
        else if (strcmp(argv[i], "--tx") == 0 && i + 1 < argc)
            ntx = atoi(argv[++i]);
        else if (strcmp(argv[i], "--sync") == 0 && i + 1 < argc)
            sync = argv[++i];
        else if (strcmp(argv[i], "--s3") == 0 && i + 1 < argc)
            s3 = argv[++i];
        else if (strcmp(argv[i], "--snapshot-mb") == 0 && i + 1 < argc)
            snap_mb = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: bench_commit [--tx N] [--sync normal|full] [--s3 URL] "
                            "[--snapshot-mb M]\n"
                            "       bench_commit --setup plain|naive|walship [--url URL] --db PATH\n"
                            "                    [--sync normal|full] [--rows N] [--seconds S | "
                            "--count N]\n                    [--rate R] [--prefill-mb M]\n"
                            "       bench_commit --versions\n");
            return 2;
        }
    }
    if (one.setup) {
        one.sync = sync;
        if (one.rows < 1 || one.seconds <= 0 || one.rate < 0) {
            fprintf(stderr, "bench_commit: --rows, --seconds and --rate must be positive\n");
            return 2;
        }
        return run_one(&one);
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
        stats with_copy = commit_until(db, lat, cap, copy_done, &cp, &copy_secs, NULL);
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
        stats during = commit_until(db, lat, cap, snapshot_stored, gens, &snap_secs, NULL);
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
