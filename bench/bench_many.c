/*
** bench_many.c -- one process, many databases each taking a trickle of
** writes: descriptors and memory per database, idle CPU (issue 8, "many
** databases").
**
** USAGE
**   bench_many --dir DIR --dbs N [--seconds S] [--rate R] [--idle-seconds I]
**              [--url-base URL]
**
** 1. SQLite's own descriptors per database: 100 databases (or N if fewer)
**    opened with plain SQLite in WAL mode, written once, kept open; the
**    descriptors they add, divided by their number. Then closed.
** 2. N databases opened through walship (each to its own destination under
**    --url-base, default file://DIR/store), a table created and one row
**    written in each, then walship_flush on each (60 s at most).
** 3. For S seconds (default 10), R commits/s (default 200) spread at random
**    over the N databases; then walship_flush on each.
** 4. I seconds (default 10) with no writes: the CPU the process used, then
**    the descriptors the N databases hold (idle, every segment closed).
** Prints one line:
**   result= dbs=N open_errors=E flushed=F/N sqlite_fds_per_db=A
**   fds_per_db=B walship_fds_per_db=B-A rss_trickle_mib=M1 (at the end of
**   the trickle) rss_idle_mib=M2 heap_mib=H (in use, glibc's count)
**   sqlite_heap_mib=S (SQLite's part of it) rss_trimmed_mib=M3 (after
**   malloc_trim) trickle_commits=C
**   trickle_flushed=F2/N idle_cpu_pct=P open_secs=T
** The open-file limit is raised to what N databases need when the hard
** limit allows it (or the process may raise it: CAP_SYS_RESOURCE); exit 1
** if a database could
** not be opened, written or flushed.
*/
#include <dirent.h>
#include <inttypes.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>

#include <sqlite3.h>

#include "walship.h"

static int count_fds(void) {
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL) return -1;
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n - 1; /* the directory's own */
}

static double rss_mib(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0) kb = atof(line + 6);
    if (f) fclose(f);
    return kb / 1024.0;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void sleep_s(double s) {
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

static int exec_ok(sqlite3 *db, const char *sql) {
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) == SQLITE_OK) return 1;
    fprintf(stderr, "bench_many: %s: %s\n", sql, msg ? msg : sqlite3_errmsg(db));
    sqlite3_free(msg);
    return 0;
}

static void raise_nofile(int want) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
    if ((rlim_t)want > rl.rlim_max) {
        struct rlimit up = {(rlim_t)want, (rlim_t)want};
        if (setrlimit(RLIMIT_NOFILE, &up) == 0) return; /* root */
    }
    rl.rlim_cur = (rlim_t)want < rl.rlim_max ? (rlim_t)want : rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
}

/* walship_flush on every database; returns how many flushed. */
static int flush_all(char **paths, int n) {
    int ok = 0;
    for (int i = 0; i < n; i++)
        if (paths[i] && walship_flush(paths[i], 60000) == 1) ok++;
    return ok;
}

int main(int argc, char **argv) {
    const char *dir = NULL, *url_base = NULL;
    int n = 0, rate = 200;
    double seconds = 10, idle = 10;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (v == NULL) goto usage;
        if (strcmp(a, "--dir") == 0) dir = v;
        else if (strcmp(a, "--dbs") == 0) n = atoi(v);
        else if (strcmp(a, "--seconds") == 0) seconds = atof(v);
        else if (strcmp(a, "--rate") == 0) rate = atoi(v);
        else if (strcmp(a, "--idle-seconds") == 0) idle = atof(v);
        else if (strcmp(a, "--url-base") == 0) url_base = v;
        else goto usage;
        i++;
    }
    if (dir == NULL || n <= 0 || rate <= 0 || seconds < 0 || idle < 0) goto usage;
    raise_nofile(n * 12 + 1000);
    walship_register(NULL, 0);
    char path[4096], sql[256];
    int bad = 0;

    /* 1. SQLite's own descriptors per database. */
    int np = n < 100 ? n : 100;
    sqlite3 **plain = calloc((size_t)np, sizeof *plain);
    int fd0 = count_fds();
    for (int i = 0; i < np; i++) {
        snprintf(path, sizeof path, "%s/plain-%d.db", dir, i);
        if (sqlite3_open(path, &plain[i]) != SQLITE_OK ||
            !exec_ok(plain[i], "PRAGMA journal_mode=WAL; CREATE TABLE IF NOT EXISTS t(v);"
                               "INSERT INTO t VALUES (randomblob(100))"))
            return 1;
    }
    double sqlite_per = (double)(count_fds() - fd0) / np;
    for (int i = 0; i < np; i++) sqlite3_close(plain[i]);
    free(plain);

    /* 2. N databases through walship. */
    sqlite3 **dbs = calloc((size_t)n, sizeof *dbs);
    char **paths = calloc((size_t)n, sizeof *paths);
    fd0 = count_fds();
    double t0 = now_s();
    int open_errors = 0;
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/db-%d.db", dir, i);
        char *uri = url_base ? sqlite3_mprintf("file:%s?walship_url=%s/db-%d", path, url_base, i)
                             : sqlite3_mprintf("file:%s?walship_url=file://%s/store/db-%d", path,
                                               dir, i);
        int rc = sqlite3_open_v2(uri, &dbs[i],
                                 SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_URI,
                                 "walship");
        sqlite3_free(uri);
        if (rc != SQLITE_OK || !exec_ok(dbs[i], "CREATE TABLE IF NOT EXISTS t(v);"
                                                "INSERT INTO t VALUES (randomblob(100))")) {
            if (open_errors++ < 3)
                fprintf(stderr, "bench_many: database %d: %s\n", i, sqlite3_errmsg(dbs[i]));
            sqlite3_close(dbs[i]);
            dbs[i] = NULL;
            continue;
        }
        paths[i] = strdup(path);
    }
    int flushed = flush_all(paths, n);
    double open_secs = now_s() - t0;

    /* 3. A trickle of writes. */
    uint64_t r = 88172645463325252ull;
    int commits = 0;
    double start = now_s();
    while (now_s() - start < seconds) {
        double due = start + (double)commits / rate;
        double wait = due - now_s();
        if (wait > 0) sleep_s(wait);
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        int i = (int)(r % (uint64_t)n);
        if (dbs[i] == NULL) continue;
        snprintf(sql, sizeof sql, "INSERT INTO t VALUES (randomblob(%d))", 50 + (int)(r % 400));
        if (!exec_ok(dbs[i], sql)) bad = 1;
        commits++;
    }
    double rss_trickle = rss_mib();
    int trickle_flushed = flush_all(paths, n);

    /* 4. Idle. */
    double c0 = cpu_s(), w0 = now_s();
    sleep_s(idle);
    double idle_pct = idle > 0 ? 100.0 * (cpu_s() - c0) / (now_s() - w0) : 0;
    int fds = count_fds() - fd0; /* idle: no segment open */
    double per = (double)fds / n;
    /* RSS keeps heap memory freed but not given back to the system; the
    ** heap in use (glibc's count) and RSS after malloc_trim say the rest. */
    double rss_idle = rss_mib();
    struct mallinfo2 mi = mallinfo2();
    double heap = (double)(mi.uordblks + mi.hblkhd) / 1048576.0;
    double sqlite_heap = (double)sqlite3_memory_used() / 1048576.0;
    malloc_trim(0);
    printf("result= dbs=%d open_errors=%d flushed=%d/%d sqlite_fds_per_db=%.2f fds_per_db=%.2f "
           "walship_fds_per_db=%.2f rss_trickle_mib=%.0f rss_idle_mib=%.0f heap_mib=%.0f "
           "sqlite_heap_mib=%.0f rss_trimmed_mib=%.0f trickle_commits=%d trickle_flushed=%d/%d "
           "idle_cpu_pct=%.2f open_secs=%.1f\n",
           n, open_errors, flushed, n, sqlite_per, per, per - sqlite_per, rss_trickle, rss_idle,
           heap, sqlite_heap, rss_mib(), commits, trickle_flushed, n, idle_pct, open_secs);
    fflush(stdout);
    for (int i = 0; i < n; i++) {
        sqlite3_close(dbs[i]);
        free(paths[i]);
    }
    free(dbs);
    free(paths);
    return bad || open_errors || flushed != n || trickle_flushed != n;
usage:
    fprintf(stderr, "usage: bench_many --dir DIR --dbs N [--seconds S] [--rate R] "
                    "[--idle-seconds I] [--url-base URL]\n");
    return 2;
}
