/*
** output.c -- `walship restore` as a command: the output path.
**
** ws_restore() plans and builds a restore (restore.c) into a temporary file
** beside the output and renames it into place, so the output path only ever
** holds a complete, verified database, and a restore that fails or is
** stopped leaves everything as it was. In order:
**
**   1. The output path is checked before anything else: not empty, not a
**      directory, symbolic link or other non-file, in a directory that
**      exists. An existing output, or a -wal or -journal beside it (SQLite
**      would replay it into the new file), needs `force`.
**   2. The store is opened: a bad URL fails here.
**   3. The output is claimed: <out>.walship-lock is created (this is also
**      where an unwritable directory fails) and locked with a non-blocking
**      flock; the holder writes its pid into it. A second restore to the
**      same output fails at once naming that pid. Only the holder of the
**      claim creates <out>.walship-tmp-* files, so any found now belong to
**      a restore that died (SIGKILL, power loss): they are removed. A
**      running `walship replica` for the same path (its own lock) is refused
**      too: its bootstrap writes the same kind of temporary file.
**   4. With force, the existing database must not be open in any process:
**      SQLite's POSIX locks say so (in_use below). Checked again just
**      before the swap.
**   5. The database is built, every checksum verified, in
**      <out>.walship-tmp-XXXXXX (exclusive creation), synced, and handed
**      to o->check (the CLI's PRAGMA quick_check).
**   6. The swap, with SIGINT/SIGTERM/SIGHUP/SIGQUIT held off in this
**      thread: the replaced database's -wal, -shm and -journal are renamed
**      aside (<tmp>-wal...), the new file is renamed into place and the
**      directory synced, then the moved files are removed. If the rename
**      fails they are put back.
**   7. The claim is released: the lock file is removed while still locked
**      (claim() re-checks the inode, so a restore that opened the removed
**      file tries again).
**
** o->sigfiles publishes the temp file and the lock file, so the CLI's
** SIGINT/SIGTERM handler can remove them (unlink is async-signal-safe). A
** SIGKILL leaves both; the next restore to the output cleans up (step 3).
*/
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/log.h"
#include "../common/util.h"
#include "restore.h"

#define TMP_INFIX ".walship-tmp-"
#define LOCK_SUFFIX ".walship-lock"

/* SQLite's unix VFS lock bytes (os_unix.c): in a database file PENDING,
** RESERVED and the SHARED range, held during transactions in rollback
** mode; in a -shm file the lock slots from byte 120, the last one (128,
** DMS) held shared by every connection that has the wal-index open. */
#define SQLITE_PENDING_BYTE 0x40000000
#define SQLITE_DB_LOCK_LEN (2 + 510)
#define SQLITE_SHM_LOCK_FIRST 120
#define SQLITE_SHM_LOCK_LEN 9

static const char *const sidecar_sfx[] = {"-wal", "-shm", "-journal"};
#define NSIDECAR 3

typedef struct bar {
    int64_t last_ms;
} bar;

static void draw_bar(void *ctx, uint64_t done, uint64_t total) {
    bar *pb = ctx;
    int64_t now = ws_mono_ms();
    if (done < total && now - pb->last_ms < 100) return;
    pb->last_ms = now;
    int pct = total ? (int)(done * 100 / total) : 100;
    int fill = pct / 4;
    char line[128];
    int n = snprintf(line, sizeof line, "\rrestoring [%.*s%*s] %3d%% %.1f/%.1f MiB", fill,
                     "#########################", 25 - fill, "", pct, (double)done / 1048576.0,
                     (double)total / 1048576.0);
    if (n > 0) {
        ssize_t w = write(STDERR_FILENO, line, (size_t)n);
        (void)w;
    }
}

/* Publishes (path != NULL) or withdraws one file for the signal handler. */
static void sig_publish(volatile sig_atomic_t *flag, char *slot, const char *path) {
    if (path == NULL) {
        *flag = 0;
        atomic_signal_fence(memory_order_seq_cst);
        return;
    }
    *flag = 0;
    atomic_signal_fence(memory_order_seq_cst);
    ws_strlcpy(slot, path, PATH_MAX);
    atomic_signal_fence(memory_order_seq_cst);
    *flag = 1;
}

/* Step 1: the output path, before anything touches the store or the disk.
** dir receives the directory that holds it. */
static int check_out_path(const restore_opts *o, char *dir, size_t dirn, wserr *err) {
    const char *out = o->out_path;
    struct stat st;
    if (out == NULL || *out == '\0')
        return wserr_set(err, WALSHIP_ERR_INVALID,
                         "the output path is empty: give the database file to write with -o PATH");
    size_t len = strlen(out);
    if (out[len - 1] == '/' || len + 32 >= PATH_MAX) /* room for <out>.walship-tmp-XXXXXX-journal */
        return wserr_set(err, WALSHIP_ERR_INVALID,
                         "the output path \"%.300s\" is not a file name (too long, or ends in "
                         "'/'): give the database file to write with -o PATH",
                         out);
    ws_strlcpy(dir, out, dirn);
    char *slash = strrchr(dir, '/');
    if (slash == NULL)
        ws_strlcpy(dir, ".", dirn);
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
    if (stat(dir, &st) != 0)
        return wserr_errno(err, wserr_from_errno(errno), errno,
                           "the directory %.300s for the output does not exist or cannot be "
                           "reached (create it first)",
                           dir);
    if (!S_ISDIR(st.st_mode))
        return wserr_set(err, WALSHIP_ERR_INVALID,
                         "%.300s is not a directory, so %.300s cannot be written there", dir, out);
    if (lstat(out, &st) == 0) {
        if (S_ISDIR(st.st_mode))
            return wserr_set(err, WALSHIP_ERR_INVALID,
                             "the output %.300s is a directory: give the database file to write, "
                             "e.g. %.300s/app.db",
                             out, out);
        if (!S_ISREG(st.st_mode))
            return wserr_set(err, WALSHIP_ERR_INVALID,
                             "the output %.300s is not a regular file (a symbolic link, device "
                             "or pipe): give the path of the database file itself",
                             out);
        if (!o->force)
            return wserr_set(err, WALSHIP_ERR_EXISTS,
                             "%.300s already exists; refusing to overwrite it (use --force to "
                             "replace it)",
                             out);
    } else if (errno != ENOENT) {
        return wserr_errno(err, wserr_from_errno(errno), errno, "cannot examine %.300s", out);
    }
    for (int i = 0; i < NSIDECAR && !o->force; i++) {
        char side[PATH_MAX];
        snprintf(side, sizeof side, "%s%s", out, sidecar_sfx[i]);
        if (i != 1 && lstat(side, &st) == 0) /* a stale -shm alone is harmless */
            return wserr_set(err, WALSHIP_ERR_EXISTS,
                             "%.300s exists: SQLite would replay it into the restored database; "
                             "remove it, or use --force to replace the database and the files "
                             "beside it",
                             side);
    }
    return 0;
}

/* Nonzero if a `walship replica` process holds its lock for this path
** (replica/replica.c: PATH-walship-replica/lock, flock for its lifetime). */
static int replica_running(const char *out) {
    char lock[PATH_MAX];
    if (snprintf(lock, sizeof lock, "%s-walship-replica/lock", out) >= (int)sizeof lock) return 0;
    int fd = open(lock, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return 0;
    int busy = flock(fd, LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK;
    close(fd);
    return busy;
}

/* Step 3: takes the claim on the output; *fd_out holds it (locked, our pid
** written). The path goes into lock (size PATH_MAX). */
static int claim(const char *out, char *lock, int *fd_out, wserr *err) {
    *fd_out = -1;
    snprintf(lock, PATH_MAX, "%s" LOCK_SUFFIX, out);
    if (replica_running(out))
        return wserr_set(err, WALSHIP_ERR_BUSY,
                         "a walship replica process maintains %.300s: stop it before restoring "
                         "to that path",
                         out);
    for (int attempt = 0; attempt < 100; attempt++) {
        int fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
        if (fd < 0)
            return wserr_errno(err, wserr_from_errno(errno), errno,
                               "cannot create %.300s to claim the output (is its directory "
                               "writable?)",
                               lock);
        if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
            int e = errno;
            char pid[24] = "";
            ssize_t n = e == EWOULDBLOCK ? ws_pread_full(fd, pid, sizeof pid - 1, 0) : -1;
            close(fd);
            if (e != EWOULDBLOCK)
                return wserr_errno(err, WALSHIP_ERR_IO, e, "cannot lock %.300s", lock);
            pid[n > 0 ? strspn(pid, "0123456789") : 0] = '\0'; /* the pid, or nothing */
            return wserr_set(err, WALSHIP_ERR_BUSY,
                             "another walship restore%s%s%s is writing %.300s: wait for it to "
                             "finish (or stop it) and try again",
                             pid[0] ? " (pid " : "", pid, pid[0] ? ")" : "", out);
        }
        struct stat held, named;
        if (fstat(fd, &held) == 0 && stat(lock, &named) == 0 && held.st_dev == named.st_dev &&
            held.st_ino == named.st_ino) {
            char pid[24];
            int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
            if (ftruncate(fd, 0) != 0 || ws_pwrite_all(fd, pid, (size_t)n, 0) != 0) {
                int e = errno;
                unlink(lock);
                close(fd);
                return wserr_errno(err, wserr_from_errno(e), e, "cannot write %.300s", lock);
            }
            *fd_out = fd;
            return 0;
        }
        close(fd); /* its holder removed it as we opened it: take the new one */
    }
    return wserr_set(err, WALSHIP_ERR_BUSY,
                     "could not claim %.300s: restores to it keep starting and ending", out);
}

/* Still under the claim: removes what restores that died left beside out. */
static void remove_stale_temps(const char *out, const char *dir) {
    const char *base = strrchr(out, '/');
    base = base ? base + 1 : out;
    char prefix[NAME_MAX + 32];
    if (snprintf(prefix, sizeof prefix, "%s" TMP_INFIX, base) >= (int)sizeof prefix) return;
    size_t plen = strlen(prefix);
    DIR *d = opendir(dir);
    if (d == NULL) return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strncmp(de->d_name, prefix, plen) != 0) continue;
        if (unlinkat(dirfd(d), de->d_name, 0) == 0)
            ws_log_emit(WS_LOG_INFO, "restore_stale_temp", "dir=%s file=%s", dir, de->d_name);
    }
    closedir(d);
}

/* Looks for a lock that conflicts with a write lock on [start, start+len)
** of path. Returns 1 (pid of the holder in *pid, -1 if unknown) if there is
** one, 0 if not (or path does not exist). */
static int lock_held(const char *path, off_t start, off_t len, pid_t *pid) {
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0) return 0;
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = start, .l_len = len};
    int held = fcntl(fd, F_GETLK, &fl) == 0 && fl.l_type != F_UNLCK;
    if (held) *pid = fl.l_pid > 0 ? fl.l_pid : -1;
    close(fd);
    return held;
}

/* Step 4: with force, WALSHIP_ERR_BUSY if a process has the output open
** through SQLite: a shared lock on the -shm (every WAL-mode connection) or
** a lock on the database file's lock bytes (rollback mode, during a
** transaction). An application that opened the file without reading yet
** holds nothing, so cannot be seen: stop applications before a restore. */
static int in_use(const char *out, wserr *err) {
    char shm[PATH_MAX];
    pid_t pid = -1;
    snprintf(shm, sizeof shm, "%s-shm", out);
    const char *which = NULL;
    if (lock_held(shm, SQLITE_SHM_LOCK_FIRST, SQLITE_SHM_LOCK_LEN, &pid))
        which = "its -shm";
    else if (lock_held(out, SQLITE_PENDING_BYTE, SQLITE_DB_LOCK_LEN, &pid))
        which = "the database file";
    if (which == NULL) return 0;
    char who[32] = "another process";
    if (pid > 0) snprintf(who, sizeof who, "process %ld", (long)pid);
    return wserr_set(err, WALSHIP_ERR_BUSY,
                     "%.300s is open: %s holds SQLite's lock on %s; stop the application that "
                     "uses it, then restore over it with --force",
                     out, who, which);
}

/* Renames path+sfx[i] to tmp+sfx[i] for each that exists (step 6); on
** failure moves back what it moved. moved[i] records what was moved. */
static int move_sidecars_aside(const char *out, const char *tmp, int moved[NSIDECAR],
                               wserr *err) {
    for (int i = 0; i < NSIDECAR; i++) {
        char from[PATH_MAX], to[PATH_MAX];
        moved[i] = 0;
        snprintf(from, sizeof from, "%s%s", out, sidecar_sfx[i]);
        snprintf(to, sizeof to, "%s%s", tmp, sidecar_sfx[i]);
        if (rename(from, to) == 0) {
            moved[i] = 1;
        } else if (errno != ENOENT) {
            int e = errno;
            for (int k = 0; k < i; k++) {
                if (!moved[k]) continue;
                snprintf(from, sizeof from, "%s%s", out, sidecar_sfx[k]);
                snprintf(to, sizeof to, "%s%s", tmp, sidecar_sfx[k]);
                if (rename(to, from) == 0) moved[k] = 0;
            }
            snprintf(from, sizeof from, "%s%s", out, sidecar_sfx[i]);
            return wserr_errno(err, wserr_from_errno(e), e, "cannot move %.300s aside", from);
        }
    }
    return 0;
}

/* After the swap: removes the moved files (keep = 0), or puts them back
** (keep = 1, the rename failed). */
static void finish_sidecars(const char *out, const char *tmp, const int moved[NSIDECAR],
                            int keep) {
    for (int i = 0; i < NSIDECAR; i++) {
        if (!moved[i]) continue;
        char orig[PATH_MAX], aside[PATH_MAX];
        snprintf(orig, sizeof orig, "%s%s", out, sidecar_sfx[i]);
        snprintf(aside, sizeof aside, "%s%s", tmp, sidecar_sfx[i]);
        if (keep ? rename(aside, orig) : unlink(aside))
            ws_log_emit(WS_LOG_WARN, "restore_sidecar", "file=%s action=%s errno=%d", aside,
                        keep ? "restore" : "remove", errno);
    }
}

/* Step 6: puts tmp in place of out. Signals that would stop the process are
** held off in this thread meanwhile, so they cannot split the swap. */
static int swap_into_place(const restore_opts *o, const char *tmp, wserr *err) {
    sigset_t block, saved;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGHUP);
    sigaddset(&block, SIGQUIT);
    pthread_sigmask(SIG_BLOCK, &block, &saved);
    int moved[NSIDECAR] = {0, 0, 0};
    int rc = 0;
    if (o->force) {
        if ((rc = in_use(o->out_path, err))) goto out;
        if ((rc = move_sidecars_aside(o->out_path, tmp, moved, err))) goto out;
    }
    /* Without force nothing may be replaced, even a file created meanwhile. */
    int moved_in = o->force ? rename(tmp, o->out_path)
                            : renameat2(AT_FDCWD, tmp, AT_FDCWD, o->out_path, RENAME_NOREPLACE);
    if (moved_in != 0 && !o->force && errno == EINVAL) /* a file system without it */
        moved_in = rename(tmp, o->out_path);
    if (moved_in != 0) {
        rc = wserr_errno(err, wserr_from_errno(errno), errno,
                         "cannot rename the restored database into %.300s (it is unchanged)",
                         o->out_path);
        finish_sidecars(o->out_path, tmp, moved, 1);
        goto out;
    }
    if (o->sigfiles) sig_publish(&o->sigfiles->tmp_set, o->sigfiles->tmp, NULL);
    finish_sidecars(o->out_path, tmp, moved, 0);
    rc = ws_fsync_dir_of(o->out_path, err);
out:
    pthread_sigmask(SIG_SETMASK, &saved, NULL);
    return rc;
}

int ws_restore(const restore_opts *o, restore_result *res, wserr *err) {
    store *s = NULL;
    catalog cat = {0};
    restore_plan plan = {0};
    ws_rolling r;
    ws_rolling_init(&r, 0);
    char dir[PATH_MAX], tmp[PATH_MAX], lock[PATH_MAX];
    int fd = -1, lock_fd = -1, have_tmp = 0;
    struct restore_sigfiles *sf = o->sigfiles;
    int rc = check_out_path(o, dir, sizeof dir, err);
    if (rc) return rc;
    if ((rc = store_open(o->url, &s, err))) goto out;
    if ((rc = claim(o->out_path, lock, &lock_fd, err))) goto out;
    if (sf) sig_publish(&sf->lock_set, sf->lock, lock);
    remove_stale_temps(o->out_path, dir);
    if (o->force && (rc = in_use(o->out_path, err))) goto out;

    snprintf(tmp, sizeof tmp, "%s" TMP_INFIX "XXXXXX", o->out_path);
    fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        rc = wserr_errno(err, wserr_from_errno(errno), errno, "create a temporary file beside %s",
                         o->out_path);
        goto out;
    }
    have_tmp = 1;
    if (sf) sig_publish(&sf->tmp_set, sf->tmp, tmp);

    if ((rc = catalog_load(s, &cat, err))) goto out;
    if ((rc = restore_plan_make(s, &cat, &o->target, &plan, err))) goto out;
    bar pb = {0};
    int show = o->progress && isatty(STDERR_FILENO);
    rc = restore_build(s, &plan, fd, o->parallel, &r, res, show ? draw_bar : NULL, &pb, err);
    if (show) {
        ssize_t w = write(STDERR_FILENO, "\n", 1);
        (void)w;
    }
    if (rc) goto out;
    if (fsync(fd) != 0) {
        rc = wserr_errno(err, wserr_from_errno(errno), errno, "sync restored database");
        goto out;
    }
    close(fd);
    fd = -1;
    if (o->check) {
        char msg[400] = "";
        if (o->check(o->check_ctx, tmp, msg, sizeof msg) != 0) {
            rc = wserr_set(err, WALSHIP_ERR_CORRUPT,
                           "the restored database (generation %016" PRIx64 ", transaction %" PRIu64
                           ") verifies against every checksum but fails its check: %s; %.300s "
                           "was left as it was",
                           res->generation, res->txid, msg[0] ? msg : "no reason given",
                           o->out_path);
            goto out;
        }
    }
    if ((rc = swap_into_place(o, tmp, err))) goto out;
    have_tmp = 0;
out:
    if (fd >= 0) close(fd);
    if (have_tmp) {
        if (sf) sig_publish(&sf->tmp_set, sf->tmp, NULL);
        unlink(tmp);
    }
    if (lock_fd >= 0) {
        if (sf) sig_publish(&sf->lock_set, sf->lock, NULL);
        unlink(lock); /* still locked: see claim() */
        close(lock_fd);
    }
    ws_rolling_free(&r);
    restore_plan_free(&plan);
    catalog_free(&cat);
    store_free(s);
    return rc;
}
