/*
** test_sync_order.c -- what must be on disk before what, seen from outside.
**
** A SIGKILL never loses the page cache, so no crash test notices a missing
** fdatasync: only a power failure would. This test runs the processes under
** tests/syscall_recorder.c (LD_PRELOAD), which appends one line per write,
** sync, truncate, unlink and rename to a log, in the order the process made
** them, and checks the order of durability steps:
**
**   spool   A writer (walship_upload=0: nothing ships, so every WAL restart,
**           TRUNCATE checkpoint and last close must first copy the WAL's
**           committed frames into the spool) commits, checkpoints and
**           closes. Before SQLite writes a new WAL header at offset 0 of the
**           -wal, truncates the -wal or deletes it, every FRAMES record the
**           VFS appended to a spool log (a pwrite longer than the 96 bytes of
**           the largest other record, FORMAT.md 3.1) must have been followed
**           by an fdatasync of that log. Each of the three must happen after
**           a copy at least once.
**   replica `walship replica` follows a primary while this process polls the
**           replica's -shm for wal-index headers the way SQLite readers read
**           them (format/wal.h walidx_hdr_read). Publishing is a store to
**           shared memory, not a system call, so it is observed here: each
**           time a new header (salts, mxFrame M) appears, the recorder's log
**           must already hold, after the last write of frame M and of the
**           WAL header, an fdatasync of the -wal (the replica syncs before it
**           publishes, in program order, so that line precedes the header).
**           A header whose frame M the -wal no longer holds (the replica
**           restarted its WAL since) is skipped. Then the same with
**           `--no-sync`: the check must catch the missing syncs (it can
**           fail).
**
** Runs in the normal build only: the recorder is not built to be preloaded
** next to a sanitizer runtime (WALSHIP_SANITIZE set: skipped).
**
** ctest-labels: replica pipeline
** ctest-timeout: 180
*/
#include <sys/mman.h>

#include "dbutil.h"
#include "format/wal.h"
#include "replica_testlib.h"

static const char *dir;

/* ---- the recorder's log ----------------------------------------------------- */
enum { EV_WRITE = 1, EV_SYNC, EV_TRUNC, EV_UNLINK, EV_RENAME };

typedef struct sysev {
    int op;
    int path; /* index into syslog.paths */
    long long off, len, size;
} sysev;

#define MAXPATHS 1024

/* A log being read as it grows: complete lines become events, in order. */
typedef struct syslog {
    char file[850];
    long long parsed; /* bytes of the file turned into events */
    sysev *ev;
    size_t n, cap;
    char *paths[MAXPATHS];
    int npaths;
} syslog;

static int path_id(syslog *l, const char *p) {
    for (int i = 0; i < l->npaths; i++)
        if (strcmp(l->paths[i], p) == 0) return i;
    CHECK(l->npaths < MAXPATHS);
    l->paths[l->npaths] = strdup(p);
    CHECK(l->paths[l->npaths] != NULL);
    return l->npaths++;
}

/* Parses the lines appended since the last call. */
static void syslog_update(syslog *l) {
    int fd = open(l->file, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return; /* nothing recorded yet */
    for (;;) {
        char buf[65536];
        ssize_t got = pread(fd, buf, sizeof buf - 1, (off_t)l->parsed);
        CHECK(got >= 0);
        if (got == 0) break;
        buf[got] = '\0';
        char *p = buf, *nl;
        while ((nl = strchr(p, '\n')) != NULL) {
            *nl = '\0';
            char op[16], path[4200];
            int pid, fd2;
            sysev e;
            if (sscanf(p, "%15s %d %d %lld %lld %lld %4199s", op, &pid, &fd2, &e.off, &e.len,
                       &e.size, path) != 7)
                ws_test_fail(__FILE__, __LINE__, "bad line in %s: %s", l->file, p);
            e.op = strcmp(op, "write") == 0 || strcmp(op, "pwrite") == 0 ? EV_WRITE
                   : strcmp(op, "fsync") == 0 || strcmp(op, "fdatasync") == 0 ? EV_SYNC
                   : strcmp(op, "ftruncate") == 0 ? EV_TRUNC
                   : strcmp(op, "unlink") == 0 ? EV_UNLINK
                                                : EV_RENAME;
            e.path = path_id(l, path);
            if (l->n == l->cap) {
                l->cap = l->cap ? l->cap * 2 : 4096;
                l->ev = realloc(l->ev, l->cap * sizeof *l->ev);
                CHECK(l->ev != NULL);
            }
            l->ev[l->n++] = e;
            l->parsed += (long long)(nl - p) + 1;
            p = nl + 1;
        }
        if (p == buf) {
            CHECK((size_t)got < sizeof buf - 1); /* a line longer than the buffer */
            break;                              /* a line still being written */
        }
    }
    close(fd);
}

static void syslog_free(syslog *l) {
    for (int i = 0; i < l->npaths; i++) free(l->paths[i]);
    free(l->ev);
    memset(l, 0, sizeof *l);
}

/* Sets the recorder up for the next process started (until recorder_off). */
static void recorder_on(const char *log, const char *prefix) {
    setenv("LD_PRELOAD", ws_test_env("WALSHIP_RECORDER"), 1);
    setenv("WALSHIP_SYSCALL_LOG", log, 1);
    setenv("WALSHIP_SYSCALL_PREFIX", prefix, 1);
}

static void recorder_off(void) {
    unsetenv("LD_PRELOAD");
    unsetenv("WALSHIP_SYSCALL_LOG");
    unsetenv("WALSHIP_SYSCALL_PREFIX");
}

/* ---- the spool: copied frames are synced before the WAL goes --------------- */
#define SPOOL_MAX_SMALL_RECORD 96 /* WAL_BEGIN; WATERMARK 48, WAL_END 80 */

/* spoolwriter PATH URL: commits, restarts, truncates and finally deletes its
** WAL, with nothing shipped. */
static int spool_writer_main(char **argv) {
    db_register();
    sqlite3 *db = db_open_walship(argv[2], argv[3], "walship_upload=0");
    db_exec(db, "PRAGMA wal_autocheckpoint=0; PRAGMA cache_size=16;"
                "CREATE TABLE t(v BLOB)");
    for (int i = 1; i <= 40; i++) {
        db_exec(db, "INSERT INTO t VALUES (randomblob(3000))");
        if (i % 10 == 3) /* the next commit restarts the WAL: a new header at offset 0 */
            CHECK_EQ(sqlite3_wal_checkpoint_v2(db, "main", SQLITE_CHECKPOINT_RESTART, NULL, NULL),
                     SQLITE_OK);
        if (i % 10 == 7)
            CHECK_EQ(sqlite3_wal_checkpoint_v2(db, "main", SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL),
                     SQLITE_OK);
    }
    CHECK_EQ(sqlite3_close(db), SQLITE_OK); /* the last close deletes the WAL */
    return 0;
}

static void test_spool_synced_before_the_wal_goes(void) {
    char sub[700], path[800], wal[850], url[800], log[800];
    snprintf(sub, sizeof sub, "%s/spooltest", dir);
    CHECK_EQ(mkdir(sub, 0755), 0);
    snprintf(path, sizeof path, "%s/app.db", sub);
    snprintf(wal, sizeof wal, "%s-wal", path);
    snprintf(url, sizeof url, "file://%s/store", dir);
    snprintf(log, sizeof log, "%s/spool.sys", dir);
    recorder_on(log, sub);
    const char *args[] = {"spoolwriter", path, url, NULL};
    pid_t pid = child_spawn(args);
    recorder_off();
    CHECK_EQ(child_wait(pid), 0);

    syslog l;
    memset(&l, 0, sizeof l);
    snprintf(l.file, sizeof l.file, "%s", log);
    syslog_update(&l);
    int wal_id = path_id(&l, wal);
    static int dirty[MAXPATHS]; /* a spool log with a FRAMES record not synced yet */
    int copied = 0, nframes = 0, headers = 0, truncates = 0, deletes = 0;
    for (size_t i = 0; i < l.n; i++) {
        const sysev *e = &l.ev[i];
        int is_log = strstr(l.paths[e->path], "-walship/log-") != NULL;
        if (is_log && e->op == EV_WRITE && e->len > SPOOL_MAX_SMALL_RECORD) {
            dirty[e->path] = 1;
            copied = 1;
            nframes++;
        }
        if (is_log && e->op == EV_SYNC) dirty[e->path] = 0;
        const char *what = NULL;
        if (e->path == wal_id && e->op == EV_WRITE && e->off == 0 && e->len == WAL_HDR_SIZE)
            what = "a new WAL header is written";
        else if (e->path == wal_id && e->op == EV_TRUNC)
            what = "the WAL is truncated";
        else if (e->path == wal_id && e->op == EV_UNLINK)
            what = "the WAL is deleted";
        if (what == NULL) continue;
        for (int p = 0; p < l.npaths; p++)
            if (dirty[p])
                ws_test_fail(__FILE__, __LINE__,
                             "%s (event %zu of %s) while frames copied into %s are not synced",
                             what, i, log, l.paths[p]);
        if (copied) {
            headers += e->op == EV_WRITE;
            truncates += e->op == EV_TRUNC;
            deletes += e->op == EV_UNLINK;
        }
        copied = 0;
    }
    fprintf(stderr,
            "   %zu calls recorded; %d FRAMES records; after a copy: %d WAL headers, %d "
            "truncations, %d deletions\n",
            l.n, nframes, headers, truncates, deletes);
    CHECK(headers >= 1);
    CHECK(truncates >= 1);
    CHECK_EQ(deletes, 1);
    syslog_free(&l);
}

/* ---- the replica: the WAL is synced before a header is published ----------- */
static char url[600], pdb[600], rdb[600], rwal[700], done[600], replog[700];

typedef struct observer {
    syslog l;
    int wal_id;
    int fd;               /* the replica's -wal, read-only */
    const uint8_t *shm;   /* the replica's -shm, mapped read-only */
    walidx_hdr last;      /* the last header seen */
    int checked, skipped, violations;
    char first_violation[2048];
} observer;

/* The event index after which the range [s, e) of the -wal was last
** written (-1 if it never was). */
static long last_write(const observer *o, uint64_t s, uint64_t e) {
    for (size_t i = o->l.n; i-- > 0;) {
        const sysev *v = &o->l.ev[i];
        if (v->path == o->wal_id && v->op == EV_WRITE && (uint64_t)v->off < e &&
            (uint64_t)(v->off + v->len) > s)
            return (long)i;
    }
    return -1;
}

/* A header h just appeared: checks that the log holds an fdatasync of the
** -wal after the last writes of frame mxFrame and of the WAL header. */
static void observe(observer *o, const walidx_hdr *h) {
    uint32_t m = h->mx_frame, psz = walidx_page_size(h);
    if (m == 0) return; /* a restart: no frame published */
    syslog_update(&o->l);
    uint64_t s = wal_frame_offset(m, psz), e = s + WAL_FRAME_HDR_SIZE + psz;
    /* Still this WAL's frame m in the file? (read after the log: a rewrite
    ** that is not in the log yet shows here) */
    uint8_t wh[WAL_HDR_SIZE], fh[WAL_FRAME_HDR_SIZE];
    if (ws_pread_full(o->fd, wh, sizeof wh, 0) != (ssize_t)sizeof wh ||
        ws_pread_full(o->fd, fh, sizeof fh, (off_t)s) != (ssize_t)sizeof fh ||
        memcmp(wh + 16, h->salt, 8) != 0 || memcmp(fh + 8, h->salt, 8) != 0) {
        o->skipped++;
        return;
    }
    long wf = last_write(o, s, e), wh_i = last_write(o, 0, WAL_HDR_SIZE);
    if (wf < 0 || wh_i < 0)
        ws_test_fail(__FILE__, __LINE__,
                     "mxFrame %u is published but the log has no write of %s in %s", m,
                     wf < 0 ? "that frame" : "the WAL header", rwal);
    long after = wf > wh_i ? wf : wh_i;
    int synced = 0;
    for (size_t i = (size_t)after + 1; i < o->l.n && !synced; i++)
        synced = o->l.ev[i].path == o->wal_id && o->l.ev[i].op == EV_SYNC;
    o->checked++;
    if (!synced && o->violations++ == 0)
        snprintf(o->first_violation, sizeof o->first_violation,
                 "header with mxFrame %u published before %s was synced (frame written at "
                 "event %ld of %s, no fdatasync after it)",
                 m, rwal, wf, o->l.file);
}

/* Follows a primary of ntx transactions with the replica (started under
** the recorder with the given extra options), observing every header. */
static void follow(observer *o, long ntx, const char *opt1, const char *opt2) {
    recorder_on(o->l.file, rdb);
    pid_t rep = rt_start_replica(url, rdb, replog, opt1, opt2);
    recorder_off();
    uint64_t gen, txid;
    rt_read_done(done, &gen, &txid);
    rt_wait_replica(rdb, gen, txid, 30000);
    char shm_path[700];
    snprintf(shm_path, sizeof shm_path, "%s-shm", rdb);
    int shm_fd = open(shm_path, O_RDONLY | O_CLOEXEC); /* the replica is following: it exists */
    CHECK(shm_fd >= 0);
    void *map = mmap(NULL, 32768, PROT_READ, MAP_SHARED, shm_fd, 0);
    CHECK(map != MAP_FAILED);
    close(shm_fd);
    o->shm = map;
    o->fd = open(rwal, O_RDONLY | O_CLOEXEC);
    CHECK(o->fd >= 0);
    memset(&o->last, 0, sizeof o->last);

    char n[32];
    snprintf(n, sizeof n, "%ld", ntx);
    unlink(done);
    pid_t prim = rt_spawn_self(NULL, "primary", pdb, url, n, done, "1000", (const char *)NULL);
    int64_t deadline = ws_mono_ms() + 120000;
    int prim_status = -1;
    uint64_t want = 0;
    for (;;) {
        walidx_hdr h;
        if (walidx_hdr_read(o->shm, &h) == 0 &&
            (h.mx_frame != o->last.mx_frame || memcmp(h.salt, o->last.salt, 8) != 0)) {
            observe(o, &h);
            o->last = h;
        }
        int st = 0;
        if (prim_status < 0 && waitpid(prim, &st, WNOHANG) == prim) {
            prim_status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
            if (prim_status != 0)
                ws_test_fail(__FILE__, __LINE__, "primary exited with %d", prim_status);
            rt_read_done(done, &gen, &want);
        }
        if (prim_status == 0 && rt_status_u64(rdb, "applied_txid") >= want) break;
        if (ws_mono_ms() > deadline) ws_test_fail(__FILE__, __LINE__, "the replica did not catch up");
        usleep(200); /* polling shared memory */
    }
    rt_wait_replica(rdb, gen, want, 30000);
    kill(rep, SIGTERM);
    CHECK_EQ(rt_wait(rep, 30000), 0);
    munmap(map, 32768);
    close(o->fd);
}

static void test_replica_synced_before_publish(void) {
    snprintf(url, sizeof url, "file://%s/rstore", dir);
    snprintf(pdb, sizeof pdb, "%s/primary.db", dir);
    snprintf(rdb, sizeof rdb, "%s/replica.db", dir);
    snprintf(rwal, sizeof rwal, "%s-wal", rdb);
    snprintf(done, sizeof done, "%s/primary.done", dir);
    snprintf(replog, sizeof replog, "%s/replica.log", dir);
    uint64_t gen, txid;
    rt_run_primary(pdb, url, 30, done, 0, &gen, &txid);

    observer o;
    memset(&o, 0, sizeof o);
    snprintf(o.l.file, sizeof o.l.file, "%s/replica.sys", dir);
    o.wal_id = path_id(&o.l, rwal);
    follow(&o, 400, "--checkpoint-frames", "300");
    fprintf(stderr, "   synced: %d headers checked, %d skipped (WAL restarted since), %zu calls\n",
            o.checked, o.skipped, o.l.n);
    if (o.violations) ws_test_fail(__FILE__, __LINE__, "%s", o.first_violation);
    CHECK(o.checked >= 10);

    /* The check can fail: without the syncs it must. */
    int before = o.checked;
    o.violations = 0;
    follow(&o, 150, "--no-sync", NULL);
    fprintf(stderr, "   --no-sync: %d headers checked, %d without a sync before them\n",
            o.checked - before, o.violations);
    CHECK(o.checked - before >= 5);
    CHECK(o.violations >= 1);
    syslog_free(&o.l);
    CHECK_EQ(rt_files_equal(pdb, rdb), 0);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "primary") == 0) return rt_primary_main(argc, argv);
    if (argc > 1 && strcmp(argv[1], "spoolwriter") == 0) return spool_writer_main(argv);
    const char *san = getenv("WALSHIP_SANITIZE");
    if (san && *san)
        ws_test_skip("the syscall recorder is preloaded in the normal build only");
    dir = ws_test_tmpdir();
    RUN(test_spool_synced_before_the_wal_goes);
    RUN(test_replica_synced_before_publish);
    return 0;
}
