/*
** test_restore_output.c -- `walship restore`'s output path, with a file://
** store filled through the walship VFS and real processes holding the
** output open.
**
**   - Bad output paths fail at once, before the store is opened (the store
**     URL names a directory that would be created by opening it, and it
**     never is): -o '' (usage, exit 2), a directory, a missing directory,
**     a parent that is a file, a symbolic link, an existing file without
**     --force, a -wal beside a missing output without --force, and (not as
**     root) a directory that is not writable.
**   - A store whose objects all verify but whose database is malformed:
**     restore exits 1 naming quick_check's finding, writes no output and
**     leaves no temp or lock file; over an existing output with --force it
**     leaves that output and its -wal/-shm as they were; --no-check
**     restores it; verify fails naming integrity_check.
**   - --force while another process has the output open: plain SQLite in
**     WAL mode, through walship, and in rollback mode inside a read
**     transaction. Refused, exit 1, naming that process's pid and the fix;
**     the file is the same inode and the holder's next commit is in it.
**     Once the holder is gone the same restore succeeds.
**   - -wal/-shm beside the output: a --force restore whose rename fails
**     (the output made immutable) leaves them, byte for byte, and the
**     output; a successful one removes them and leaves nothing moved aside.
**   - A claim held by another process (<out>.walship-lock, flocked, its
**     pid inside): refused at once naming that pid. Temp files of a restore
**     that died, and its unlocked lock file, are removed by the next
**     restore to the same output.
**   - The output's disk fails (WALSHIP_FAULTS: EIO on the Nth write to the
**     temp file, for every N until the restore needs fewer writes): each
**     failing restore exits 1 naming the failed write and leaves nothing;
**     the last write is the write-back cache's final flush, so both paths
**     are covered, and the first N that no longer fails restores exactly.
**
** ctest-labels: cli restore
** ctest-timeout: 300
*/
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test_restore_output.h"

static char root[3800], dir[3900], url[4000], out[4000]; /* dir: the output's directory */
static char msg[16384];

static void pathf(char *p, size_t n, const char *suffix) { snprintf(p, n, "%s%s", out, suffix); }

/* Neither the output's directory nor the test's may hold a temp or lock
** file. */
static void no_leftovers(int line) {
    char first[256] = "";
    if (ro_leftovers(dir, first, sizeof first) != 0)
        ws_test_fail(__FILE__, line, "a restore left %s in %s", first, dir);
    if (ro_leftovers(root, first, sizeof first) != 0)
        ws_test_fail(__FILE__, line, "a restore left %s in %s", first, root);
}

/* ---- child: hold the output open ----------------------------------------------- */

/* hold MODE DB URL READY STOP: opens DB (MODE plain: SQLite in WAL mode;
** walship: through the VFS shipping to URL; rollback: journal_mode=DELETE
** inside a read transaction), reads, creates READY, waits for STOP, then
** commits a row with x = 4242 and exits 0. */
static int hold_main(char **argv) {
    const char *mode = argv[2], *db = argv[3], *hurl = argv[4], *ready = argv[5],
               *stop = argv[6];
    sqlite3 *h = strcmp(mode, "walship") == 0 ? db_open_walship(db, hurl, "walship_ship_interval=0")
                                              : db_open_plain(db, 0);
    if (strcmp(mode, "rollback") == 0) {
        db_exec(h, "PRAGMA journal_mode=DELETE");
        db_exec(h, "BEGIN; SELECT count(*) FROM t;"); /* SHARED until COMMIT */
    } else {
        CHECK(db_int(h, "SELECT count(*) FROM t") > 0); /* opens the wal-index */
    }
    FILE *f = fopen(ready, "w");
    CHECK(f != NULL);
    fclose(f);
    if (ro_wait_file(stop, 0, 120000) != 0) return 3;
    if (strcmp(mode, "rollback") == 0) db_exec(h, "COMMIT");
    db_exec(h, "INSERT INTO t VALUES (4242)");
    sqlite3_close(h);
    return 0;
}

/* claim PATH READY STOP: holds an exclusive flock on PATH with its pid in
** it, as a running restore does, until STOP exists. */
static int claim_main(char **argv) {
    int fd = open(argv[2], O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    CHECK(fd >= 0);
    CHECK_EQ(flock(fd, LOCK_EX), 0);
    dprintf(fd, "%ld\n", (long)getpid());
    FILE *f = fopen(argv[3], "w");
    CHECK(f != NULL);
    fclose(f);
    return ro_wait_file(argv[4], 0, 120000) == 0 ? 0 : 3;
}

/* ---- tests -------------------------------------------------------------------------- */

static void expect_path_refused(const char *o, const char *what, int want_rc) {
    char never[4200], nurl[4300];
    snprintf(never, sizeof never, "%s/never-opened", root);
    snprintf(nurl, sizeof nurl, "file://%s", never);
    int rc = ro_cli(msg, sizeof msg, "restore '%s' -o '%s'", nurl, o);
    if (rc != want_rc)
        ws_test_fail(__FILE__, __LINE__, "restore -o '%s' (%s) exited %d, want %d: %s", o, what, rc,
                     want_rc, msg);
    struct stat st;
    if (stat(never, &st) == 0)
        ws_test_fail(__FILE__, __LINE__, "restore -o '%s' (%s) opened the store before checking "
                     "its output: %s", o, what, msg);
    if (strstr(msg, "walship") == NULL || strlen(msg) < 20)
        ws_test_fail(__FILE__, __LINE__, "restore -o '%s' (%s): no clear message: %s", o, what, msg);
}

static void test_path_checks(void) {
    char p[4200], q[4200];
    expect_path_refused("", "empty", 2);
    expect_path_refused(root, "a directory", 1);
    CHECK_CONTAINS(msg, "is a directory");
    snprintf(p, sizeof p, "%s/missing/x.db", root);
    expect_path_refused(p, "a missing directory", 1);
    CHECK_CONTAINS(msg, "does not exist");
    snprintf(q, sizeof q, "%s/afile", root);
    FILE *f = fopen(q, "w");
    CHECK(f != NULL);
    fclose(f);
    snprintf(p, sizeof p, "%s/afile/x.db", root);
    expect_path_refused(p, "a parent that is a file", 1);
    snprintf(p, sizeof p, "%s/link.db", root);
    CHECK_EQ(symlink(q, p), 0);
    expect_path_refused(p, "a symbolic link", 1);
    CHECK_CONTAINS(msg, "not a regular file");
    expect_path_refused(q, "an existing file without --force", 1);
    CHECK_CONTAINS(msg, "--force");
    snprintf(p, sizeof p, "%s/walonly.db-wal", root);
    f = fopen(p, "w");
    CHECK(f != NULL);
    fclose(f);
    snprintf(p, sizeof p, "%s/walonly.db", root);
    expect_path_refused(p, "a -wal beside it", 1);
    CHECK_CONTAINS(msg, "walonly.db-wal");
    if (geteuid() != 0) {
        snprintf(p, sizeof p, "%s/ro", root);
        CHECK_EQ(mkdir(p, 0555), 0);
        snprintf(q, sizeof q, "%s/ro/x.db", root);
        expect_path_refused(q, "a directory that is not writable", 1);
        CHECK_CONTAINS(msg, "writable");
    } else {
        fprintf(stderr, "   (running as root: the unwritable-directory case is not testable)\n");
    }
    no_leftovers(__LINE__);
}

static void test_quick_check(void) {
    char bad_db[4200], bad_url[4300], line[512], side[4200];
    snprintf(bad_db, sizeof bad_db, "%s/src/bad.db", root);
    snprintf(bad_url, sizeof bad_url, "file://%s/bad-store", root);
    ro_build_store(bad_db, bad_url, 1, 0, 0);

    int rc = ro_cli(msg, sizeof msg, "restore '%s' -o '%s' --quiet", bad_url, out);
    if (rc != 1) ws_test_fail(__FILE__, __LINE__, "malformed restore exited %d: %s", rc, msg);
    CHECK_CONTAINS(msg, "quick_check");
    CHECK_CONTAINS(msg, "out of order");
    CHECK_CONTAINS(msg, "--no-check");
    CHECK_EQ(db_file_size(out), -1);
    no_leftovers(__LINE__);

    /* Over an existing output with --force: it and its -wal/-shm stay. */
    CHECK_EQ(ro_cli(msg, sizeof msg, "restore '%s' -o '%s' --quiet", url, out), 0);
    struct stat before, after;
    CHECK_EQ(stat(out, &before), 0);
    pathf(side, sizeof side, "-wal");
    CHECK_EQ(ws_write_file_atomic(side, "old wal", 7, NULL), 0);
    pathf(side, sizeof side, "-shm");
    CHECK_EQ(ws_write_file_atomic(side, "old shm", 7, NULL), 0);
    rc = ro_cli(msg, sizeof msg, "restore '%s' -o '%s' --force --quiet", bad_url, out);
    CHECK_EQ(rc, 1);
    CHECK_CONTAINS(msg, "quick_check");
    CHECK_EQ(stat(out, &after), 0);
    CHECK_EQ(after.st_ino, before.st_ino);
    CHECK_EQ(db_file_size(side), 7);
    pathf(side, sizeof side, "-wal");
    CHECK_EQ(db_file_size(side), 7);
    no_leftovers(__LINE__);
    unlink(side);
    pathf(side, sizeof side, "-shm");
    unlink(side);

    /* --no-check restores it, malformed as it is. */
    rc = ro_cli(msg, sizeof msg, "restore '%s' -o '%s' --force --no-check --quiet", bad_url, out);
    if (rc != 0) ws_test_fail(__FILE__, __LINE__, "--no-check exited %d: %s", rc, msg);
    ro_quick_check(out, line, sizeof line);
    CHECK_CONTAINS(line, "out of order");
    no_leftovers(__LINE__);

    rc = ro_cli(msg, sizeof msg, "verify '%s' --quiet", bad_url);
    CHECK_EQ(rc, 1);
    CHECK_CONTAINS(msg, "integrity_check");

    /* The sound store restores and checks clean. */
    rc = ro_cli(msg, sizeof msg, "restore '%s' -o '%s' --force --quiet", url, out);
    if (rc != 0) ws_test_fail(__FILE__, __LINE__, "restore exited %d: %s", rc, msg);
    ro_quick_check(out, line, sizeof line);
    CHECK_STREQ(line, "ok");
    no_leftovers(__LINE__);
}

static void test_disk_fails(void) {
    char o[4100];
    snprintf(o, sizeof o, "%s/diskfail.db", dir);
    int failed = 0, n;
    for (n = 0; n < 64; n++) {
        int rc = db_capture(msg, sizeof msg,
                            "WALSHIP_FAULTS='write:EIO,path=walship-tmp,after=%d' '%s' restore '%s' "
                            "-o '%s' --quiet",
                            n, ws_test_env("WALSHIP_BIN"), url, o);
        if (rc == 0) break;
        if (rc != 1) ws_test_fail(__FILE__, __LINE__, "after=%d: exit %d: %s", n, rc, msg);
        CHECK_CONTAINS(msg, "write restored database");
        CHECK_EQ(db_file_size(o), -1);
        no_leftovers(__LINE__);
        failed++;
    }
    fprintf(stderr, "   output disk failing: %d restores failed cleanly; with write %d failing, "
                    "the restore needed fewer\n",
            failed, n + 1);
    CHECK(failed >= 2); /* at least a snapshot write and the final flush */
    CHECK(n < 64);
    char line[512];
    ro_quick_check(o, line, sizeof line);
    CHECK_STREQ(line, "ok");
    CHECK_EQ(unlink(o), 0);
    no_leftovers(__LINE__);
}

/* One holder mode: refused while it holds the output, its commit lands in
** the same file, then the restore goes through. */
static void force_while_open(const char *mode) {
    char ready[4200], stop[4200], hurl[4300], want[64];
    fprintf(stderr, "   holder: %s\n", mode);
    CHECK_EQ(ro_cli(msg, sizeof msg, "restore '%s' -o '%s' --force --quiet", url, out), 0);
    snprintf(ready, sizeof ready, "%s/ready-%s", root, mode);
    snprintf(stop, sizeof stop, "%s/stop-%s", root, mode);
    snprintf(hurl, sizeof hurl, "file://%s/holder-store-%s", root, mode);
    const char *args[] = {"hold", mode, out, hurl, ready, stop, NULL};
    pid_t pid = child_spawn(args);
    if (ro_wait_file(ready, 0, 60000) != 0) ws_test_fail(__FILE__, __LINE__, "holder not ready");
    struct stat before, after;
    CHECK_EQ(stat(out, &before), 0);

    int rc = ro_cli(msg, sizeof msg, "restore '%s' -o '%s' --force --quiet", url, out);
    if (rc != 1) ws_test_fail(__FILE__, __LINE__, "restore over a held database exited %d: %s", rc, msg);
    snprintf(want, sizeof want, "process %ld", (long)pid);
    CHECK_CONTAINS(msg, want);
    CHECK_CONTAINS(msg, "stop the application");
    CHECK_EQ(stat(out, &after), 0);
    CHECK_EQ(after.st_ino, before.st_ino);
    no_leftovers(__LINE__);

    FILE *f = fopen(stop, "w");
    CHECK(f != NULL);
    fclose(f);
    CHECK_EQ(child_wait(pid), 0);
    sqlite3 *db = db_open_plain(out, 1);
    CHECK_EQ(db_int(db, "SELECT count(*) FROM t WHERE x = 4242"), 1); /* landed in this file */
    sqlite3_close(db);
    rc = ro_cli(msg, sizeof msg, "restore '%s' -o '%s' --force --quiet", url, out);
    if (rc != 0) ws_test_fail(__FILE__, __LINE__, "restore after the holder left: %d: %s", rc, msg);
    db = db_open_plain(out, 1);
    CHECK_EQ(db_int(db, "SELECT count(*) FROM t WHERE x = 4242"), 0);
    sqlite3_close(db);
    no_leftovers(__LINE__);
}

static void test_force_while_open(void) {
    force_while_open("plain");
    force_while_open("walship");
    force_while_open("rollback");
}

/* Sets or clears FS_IMMUTABLE_FL; 0, or -1 if the file system or the
** process cannot. */
static int set_immutable(const char *path, int on) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    int flags = 0, rc = ioctl(fd, FS_IOC_GETFLAGS, &flags);
    if (rc == 0) {
        flags = on ? flags | FS_IMMUTABLE_FL : flags & ~FS_IMMUTABLE_FL;
        rc = ioctl(fd, FS_IOC_SETFLAGS, &flags);
    }
    close(fd);
    return rc;
}

static void test_sidecars(void) {
    char wal[4200], shm[4200];
    wsbuf b = {0};
    CHECK_EQ(ro_cli(msg, sizeof msg, "restore '%s' -o '%s' --force --quiet", url, out), 0);
    pathf(wal, sizeof wal, "-wal");
    pathf(shm, sizeof shm, "-shm");
    CHECK_EQ(ws_write_file_atomic(wal, "stale wal bytes", 15, NULL), 0);
    CHECK_EQ(ws_write_file_atomic(shm, "stale shm bytes!", 16, NULL), 0);

    if (set_immutable(out, 1) == 0) {
        int rc = ro_cli(msg, sizeof msg, "restore '%s' -o '%s' --force --quiet", url, out);
        CHECK_EQ(set_immutable(out, 0), 0);
        if (rc != 1) ws_test_fail(__FILE__, __LINE__, "rename onto an immutable file: %d: %s", rc, msg);
        CHECK_CONTAINS(msg, "rename");
        CHECK_EQ(ws_read_file(wal, 1024, &b, NULL), 0);
        CHECK(b.len == 15 && memcmp(b.p, "stale wal bytes", 15) == 0);
        CHECK_EQ(ws_read_file(shm, 1024, &b, NULL), 0);
        CHECK(b.len == 16 && memcmp(b.p, "stale shm bytes!", 16) == 0);
        no_leftovers(__LINE__);
    } else {
        fprintf(stderr, "   (cannot make files immutable here: the failed-rename case is skipped)\n");
    }

    int rc = ro_cli(msg, sizeof msg, "restore '%s' -o '%s' --force --quiet", url, out);
    if (rc != 0) ws_test_fail(__FILE__, __LINE__, "restore --force: %d: %s", rc, msg);
    CHECK_EQ(db_file_size(wal), -1);
    CHECK_EQ(db_file_size(shm), -1);
    no_leftovers(__LINE__);
    char line[256];
    ro_quick_check(out, line, sizeof line);
    CHECK_STREQ(line, "ok");
    wsbuf_free(&b);
}

static void test_claims(void) {
    char lock[4200], stale[4200], ready[4200], stop[4200], want[64];
    pathf(lock, sizeof lock, ".walship-lock");
    snprintf(ready, sizeof ready, "%s/ready-claim", root);
    snprintf(stop, sizeof stop, "%s/stop-claim", root);
    const char *args[] = {"claim", lock, ready, stop, NULL};
    pid_t pid = child_spawn(args);
    if (ro_wait_file(ready, 0, 60000) != 0) ws_test_fail(__FILE__, __LINE__, "claimer not ready");
    int rc = ro_cli(msg, sizeof msg, "restore '%s' -o '%s' --force --quiet", url, out);
    if (rc != 1) ws_test_fail(__FILE__, __LINE__, "restore against a claim: %d: %s", rc, msg);
    snprintf(want, sizeof want, "another walship restore (pid %ld)", (long)pid);
    CHECK_CONTAINS(msg, want);
    CHECK_EQ(db_file_size(lock) > 0, 1); /* the holder's claim is not touched */
    FILE *f = fopen(stop, "w");
    CHECK(f != NULL);
    fclose(f);
    CHECK_EQ(child_wait(pid), 0);

    /* What a SIGKILLed restore leaves: its (unlocked) claim and temp files. */
    pathf(stale, sizeof stale, ".walship-tmp-Zz9Zz9");
    CHECK_EQ(ws_write_file_atomic(stale, "half a database", 15, NULL), 0);
    pathf(stale, sizeof stale, ".walship-tmp-Zz9Zz9-wal");
    CHECK_EQ(ws_write_file_atomic(stale, "moved aside", 11, NULL), 0);
    CHECK_EQ(ro_leftovers(dir, NULL, 0), 3);
    rc = ro_cli(msg, sizeof msg, "restore '%s' -o '%s' --force --quiet", url, out);
    if (rc != 0) ws_test_fail(__FILE__, __LINE__, "restore after a dead one: %d: %s", rc, msg);
    no_leftovers(__LINE__);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "hold") == 0) return hold_main(argv);
    if (argc > 1 && strcmp(argv[1], "claim") == 0) return claim_main(argv);
    snprintf(root, sizeof root, "%s", ws_test_tmpdir());
    snprintf(dir, sizeof dir, "%s/out", root);
    snprintf(url, sizeof url, "file://%s/store", root);
    snprintf(out, sizeof out, "%s/restored.db", dir);
    char p[4200];
    snprintf(p, sizeof p, "%s/src", root);
    CHECK_EQ(mkdir(p, 0755), 0);
    CHECK_EQ(mkdir(dir, 0755), 0);
    snprintf(p, sizeof p, "%s/src/app.db", root);
    ro_build_store(p, url, 0, 0, 0);
    RUN(test_path_checks);
    RUN(test_quick_check);
    RUN(test_force_while_open);
    RUN(test_sidecars);
    RUN(test_claims);
    RUN(test_disk_fails);
    fprintf(stderr, "ok\n");
    return 0;
}
