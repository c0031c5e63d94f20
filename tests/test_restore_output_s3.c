/*
** test_restore_output_s3.c -- restores stopped in the middle of a download,
** and two restores to one output at once, against the real S3 server.
**
** A database of 5 MiB of zeroblobs then 8 MiB of random bytes is shipped
** through the walship VFS. Restores read it through a fault proxy that
** forwards at most 256 KiB of each connection's answers: the listing, the
** snapshot's footer and index and its first chunk (zeros: a few KiB) come
** through, so the first chunk is written into the restore's temp file;
** every later chunk is cut short and retried (WALSHIP_S3_RETRIES=100, with
** back-off: minutes). So a restore is reliably held in the middle of its
** download, its temp file non-empty, with no sleep and no timing guess:
** the test polls for the temp file to grow.
**
**   - A second restore to the same output (direct, not proxied) fails at
**     once, exit 1, naming the first one's pid; the first one's temp file
**     is untouched.
**   - SIGTERM to the held restore: it exits non-zero and its temp file and
**     lock file are gone; no output.
**   - SIGKILL to a held restore: its temp file stays; the next restore to
**     the same output removes it, succeeds, and the result is the shipped
**     database (content hash) and passes quick_check.
**
** ctest-labels: s3 restore
** ctest-timeout: 300
*/
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "faultproxy.h"
#include "test_restore_output.h"

#define CUT_BYTES (256 * 1024)

static char root[3800], dir[3900], out[4000], src[4000];
static char direct[4096], proxied[4096];
static char msg[16384];

/* proxied = direct with its endpoint= value replaced by the proxy's. */
static void make_proxied(int port) {
    const char *e = strstr(direct, "endpoint=");
    CHECK(e != NULL);
    const char *rest = e + strcspn(e, "&");
    snprintf(proxied, sizeof proxied, "%.*sendpoint=http://127.0.0.1:%d%s", (int)(e - direct),
             direct, port, rest);
}

/* Size of the restore temp file beside out (name into name), or -1. */
static int64_t tmp_file(char *name, size_t n) {
    DIR *d = opendir(dir);
    CHECK(d != NULL);
    int64_t size = -1;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strncmp(de->d_name, "restored.db.walship-tmp-", 24) != 0) continue;
        snprintf(name, n, "%s/%s", dir, de->d_name);
        size = db_file_size(name);
        break;
    }
    closedir(d);
    return size;
}

/* Starts `walship restore PROXIED -o OUT` with the retry budget raised;
** its output goes to dir/../restore-<k>.log. Returns its pid once its temp
** file holds data (the first chunk), i.e. it is held mid-download. */
static pid_t start_held_restore(int k, char *tmp, size_t n) {
    char log[4200];
    snprintf(log, sizeof log, "%s/restore-%d.log", root, k);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    extern char **environ;
    char *envp[256];
    int ne = 0;
    for (char **e = environ; *e && ne < 250; e++)
        if (strncmp(*e, "WALSHIP_S3_RETRIES=", 19) != 0) envp[ne++] = *e;
    envp[ne++] = (char *)"WALSHIP_S3_RETRIES=100";
    envp[ne] = NULL;
    const char *bin = ws_test_env("WALSHIP_BIN");
    char *argv[] = {(char *)bin, (char *)"restore", proxied, (char *)"-o", out,
                    (char *)"--parallel", (char *)"2", (char *)"--quiet", NULL};
    pid_t pid = 0;
    CHECK_EQ(posix_spawn(&pid, bin, &fa, NULL, argv, envp), 0);
    posix_spawn_file_actions_destroy(&fa);
    int64_t deadline = ws_mono_ms() + 120000;
    for (;;) {
        if (tmp_file(tmp, n) > 0) return pid;
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            wsbuf b = {0};
            ws_read_file(log, 65536, &b, NULL);
            wsbuf_append(&b, "", 1);
            ws_test_fail(__FILE__, __LINE__, "the restore ended (status %d) before it was held: %s",
                         st, b.p ? (char *)b.p : "");
        }
        if (ws_mono_ms() > deadline)
            ws_test_fail(__FILE__, __LINE__, "no temp file with data appeared beside %s", out);
        ws_sleep_ms(2); /* polling another process's progress, with a deadline */
    }
}

static void test_concurrent(void) {
    char tmp[4200], want[64];
    pid_t a = start_held_restore(1, tmp, sizeof tmp);
    int64_t size = db_file_size(tmp);
    int64_t t0 = ws_mono_ms();
    int rc = ro_cli(msg, sizeof msg, "restore '%s' -o '%s' --quiet", direct, out);
    int64_t took = ws_mono_ms() - t0;
    if (rc != 1) ws_test_fail(__FILE__, __LINE__, "second restore exited %d: %s", rc, msg);
    snprintf(want, sizeof want, "another walship restore (pid %ld)", (long)a);
    CHECK_CONTAINS(msg, want);
    fprintf(stderr, "   refused in %" PRId64 " ms: %s", took, msg);
    CHECK(db_file_size(tmp) >= size); /* the first one's file is untouched */
    CHECK_EQ(db_file_size(out), -1);

    /* SIGTERM: the held restore removes its files and exits non-zero. */
    CHECK_EQ(kill(a, SIGTERM), 0);
    rc = child_wait(a);
    CHECK(rc != 0);
    CHECK_EQ(db_file_size(tmp), -1);
    CHECK_EQ(db_file_size(out), -1);
    char first[256] = "";
    if (ro_leftovers(dir, first, sizeof first) != 0)
        ws_test_fail(__FILE__, __LINE__, "SIGTERM left %s", first);
}

static void test_sigkill(void) {
    char tmp[4200], first[256] = "";
    pid_t a = start_held_restore(2, tmp, sizeof tmp);
    CHECK_EQ(kill(a, SIGKILL), 0);
    CHECK_EQ(child_wait(a), 128 + SIGKILL);
    CHECK(db_file_size(tmp) > 0); /* what SIGKILL leaves */
    int rc = ro_cli(msg, sizeof msg, "restore '%s' -o '%s' --quiet", direct, out);
    if (rc != 0) ws_test_fail(__FILE__, __LINE__, "restore after a SIGKILLed one: %d: %s", rc, msg);
    CHECK_EQ(db_file_size(tmp), -1);
    if (ro_leftovers(dir, first, sizeof first) != 0)
        ws_test_fail(__FILE__, __LINE__, "a restore left %s", first);
    char line[256];
    ro_quick_check(out, line, sizeof line);
    CHECK_STREQ(line, "ok");
    sqlite3 *x = db_open_plain(src, 1), *y = db_open_plain(out, 1);
    CHECK_U64_EQ(db_content_hash(y), db_content_hash(x));
    sqlite3_close(x);
    sqlite3_close(y);
}

int main(void) {
    snprintf(direct, sizeof direct, "%s", ws_test_s3_url("restore-output"));
    const char *ep = getenv("WALSHIP_TEST_S3_ENDPOINT");
    char host[256];
    int port = 0;
    if (ep == NULL || sscanf(ep, "http://%255[^:/]:%d", host, &port) != 2)
        ws_test_fail(__FILE__, __LINE__, "WALSHIP_TEST_S3_ENDPOINT is not http://HOST:PORT: %s",
                     ep ? ep : "(unset)");
    faultproxy *fp = fp_start(host, port);
    CHECK(fp != NULL);
    make_proxied(fp_port(fp));
    snprintf(root, sizeof root, "%s", ws_test_tmpdir());
    snprintf(dir, sizeof dir, "%s/out", root);
    snprintf(out, sizeof out, "%s/restored.db", dir);
    snprintf(src, sizeof src, "%s/app.db", root);
    CHECK_EQ(mkdir(dir, 0755), 0);
    ro_build_store(src, direct, 0, 5, 8);
    CHECK_EQ(fp_set_mode(fp, FP_TRUNCATE_AFTER(CUT_BYTES)), 0);
    RUN(test_concurrent);
    RUN(test_sigkill);
    fp_stop(fp);
    fprintf(stderr, "ok\n");
    return 0;
}
