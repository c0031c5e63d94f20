/*
** test_pipeline_status.c -- the status tells the truth (issue 7, finding 5).
**
**   bad_urls      a destination that can never work (ftp://, s3:// without a
**                 bucket, file://relative, credentials in the URL) refuses the
**                 open, and leaves nothing on disk.
**   no_creds      an s3:// destination without credentials: the database
**                 opens and works; last_error names the missing variables
**                 within seconds; the shipper is alive; flush does not say
**                 "done".
**   stalled       a store that accepts connections and never answers: while
**                 the shipper's upload hangs in its retries, shipper_alive
**                 stays true and last_error says what is failing.
**   drain         `walship ship --drain` on a database no walship process
**                 ever opened ships it; on a rollback-journal database or a
**                 file that is not a database it refuses at once, creating
**                 nothing; with a dead store it gives up at --timeout with a
**                 non-zero exit.
**   check         `walship status --check` exits 0 when healthy, 1 when the
**                 store is unreachable.
**   emfile        a process that runs out of file descriptors opening many
**                 databases: each database either refuses its open, or ships
**                 (flush 1), or says why not in last_error -- none silently
**                 never ships. Then databases that opened and shipped with
**                 descriptors to spare are written to after every descriptor
**                 left was taken (a shipper opens its WAL, spool log, state
**                 and segment files only while it has work): each ships or
**                 says why, and all ship once the descriptors are back.
**
** ctest-labels: pipeline threads
** ctest-timeout: 300
*/
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "dbutil.h"
#include "harness.h"
#include "walship.h"

static char dir[3000];

static void mk(char *out, size_t n, const char *name) { snprintf(out, n, "%s/%s", dir, name); }

static void create_db(const char *path) {
    sqlite3 *db = db_open_plain(path, 0);
    db_exec(db, "PRAGMA journal_mode=WAL; CREATE TABLE IF NOT EXISTS t(k INTEGER PRIMARY KEY, v TEXT)");
    sqlite3_close(db);
}

static int try_open(const char *path, const char *url_enc, sqlite3 **out) {
    db_register();
    char *uri = sqlite3_mprintf("file:%s?walship_url=%s&walship_ship_interval=0", path, url_enc);
    int rc = sqlite3_open_v2(uri, out, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_URI,
                             "walship");
    sqlite3_free(uri);
    if (rc != SQLITE_OK) {
        sqlite3_close(*out);
        *out = NULL;
    }
    return rc;
}


/* A TCP port on 127.0.0.1 that accepts connections (the kernel's backlog)
** and never answers. */
static int blackhole(int *port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    CHECK(fd >= 0);
    CHECK_EQ(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    CHECK_EQ(listen(fd, 128), 0);
    CHECK_EQ(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    *port = ntohs(a.sin_port);
    return fd;
}

static void case_bad_urls(void) {
    static const char *const urls[] = {"ftp%3A%2F%2Fhost%2Fdir", "s3%3A%2F%2F",
                                       "file%3A%2F%2Frelative%2Fdir",
                                       "s3%3A%2F%2FKEY%3ASECRET%40bucket%2Fx"};
    for (size_t i = 0; i < sizeof urls / sizeof urls[0]; i++) {
        char path[3100], spool[3300];
        snprintf(path, sizeof path, "%s/bad-%zu.db", dir, i);
        create_db(path);
        sqlite3 *db = NULL;
        if (try_open(path, urls[i], &db) == SQLITE_OK)
            ws_test_fail(__FILE__, __LINE__, "walship_url=%s opened", urls[i]);
        db_spool_dir(path, spool, sizeof spool);
        struct stat st;
        CHECK(stat(spool, &st) != 0); /* nothing recorded for a destination that cannot work */
    }
}

/* The two cases below change the environment (credentials, S3 timeouts):
** each runs in a child of its own, which does so before any thread exists
** (setenv next to threads that call getenv is a race). */

/* nocreds DIR */
static int nocreds_main(char **argv) {
    unsetenv("AWS_ACCESS_KEY_ID");
    unsetenv("AWS_SECRET_ACCESS_KEY");
    snprintf(dir, sizeof dir, "%s", argv[2]);
    char path[3100];
    mk(path, sizeof path, "nocreds.db");
    create_db(path);
    sqlite3 *db = NULL;
    CHECK_EQ(try_open(path, "s3%3A%2F%2Fbucket%2Fapp%3Fendpoint%3Dhttp%3A%2F%2F127.0.0.1%3A9", &db),
             SQLITE_OK);
    db_exec(db, "INSERT INTO t(v) VALUES ('works anyway')");
    char *js = db_wait_status(db, "last_error", "AWS_ACCESS_KEY_ID");
    CHECK_EQ(db_json_int(js, "shipper_alive"), 1);
    free(js);
    CHECK(walship_flush(path, 500) != 1);
    sqlite3_close(db);
    return 0;
}

/* stalled DIR */
static int stalled_main(char **argv) {
    snprintf(dir, sizeof dir, "%s", argv[2]);
    setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE", 1);
    setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", 1);
    setenv("WALSHIP_S3_TIMEOUT_MS", "1000", 1);
    setenv("WALSHIP_S3_RETRIES", "20", 1); /* one request keeps retrying for a long while */
    char path[3100], url[256];
    mk(path, sizeof path, "stalled.db");
    create_db(path);
    int port = 0;
    int hole = blackhole(&port);
    snprintf(url, sizeof url, "s3%%3A%%2F%%2Fbucket%%2Fapp%%3Fendpoint%%3Dhttp%%3A%%2F%%2F127.0.0.1%%3A%d",
             port);
    sqlite3 *db = NULL;
    CHECK_EQ(try_open(path, url, &db), SQLITE_OK);
    db_exec(db, "INSERT INTO t(v) VALUES ('x')");
    char *js = db_wait_status(db, "last_error", "retrying");
    free(js);
    /* Alive all along, while the one request goes on retrying. */
    for (int i = 0; i < 50; i++) {
        js = db_status_json(db);
        if (db_json_int(js, "shipper_alive") != 1)
            ws_test_fail(__FILE__, __LINE__, "shipper_alive false while it retries: %s", js);
        free(js);
        ws_sleep_ms(40); /* sampling the status over two seconds */
    }
    sqlite3_close(db);
    close(hole);
    _exit(0); /* the shipper is stuck in its request: no orderly shutdown */
}

static void run_child(const char *role) {
    const char *args[] = {role, dir, NULL};
    int rc = child_wait(child_spawn(args));
    if (rc != 0) ws_test_fail(__FILE__, __LINE__, "case %s failed in its process (%d)", role, rc);
}

static void case_no_creds(void) { run_child("nocreds"); }
static void case_stalled(void) { run_child("stalled"); }

static void case_drain(void) {
    char path[3100], spool[3300], url[3200], out[3200], buf[16384];
    const char *bin = ws_test_env("WALSHIP_BIN");
    /* Never opened through walship: ships, restores. */
    mk(path, sizeof path, "never.db");
    snprintf(url, sizeof url, "file://%s/store-never", dir);
    mk(out, sizeof out, "never-restored.db");
    sqlite3 *db = db_open_plain(path, 0);
    db_exec(db, "PRAGMA journal_mode=WAL; CREATE TABLE t(v); INSERT INTO t VALUES (1), (2), (3)");
    int rc = db_capture(buf, sizeof buf, "'%s' ship '%s' --url '%s' --drain --timeout 60", bin, path, url);
    if (rc != 0) ws_test_fail(__FILE__, __LINE__, "drain of a never-opened database: %d %s", rc, buf);
    char msg[512];
    CHECK_OK(db_restore(url, out, 0, 0, 0, msg, sizeof msg), NULL);
    sqlite3 *r = db_open_plain(out, 1);
    CHECK_U64_EQ(db_content_hash(r), db_content_hash(db));
    sqlite3_close(r);
    sqlite3_close(db);
    /* Without --url: where it already ships. */
    rc = db_capture(buf, sizeof buf, "env -u WALSHIP_URL '%s' ship '%s' --drain --timeout 60", bin, path);
    if (rc != 0) ws_test_fail(__FILE__, __LINE__, "drain without --url: %d %s", rc, buf);

    /* Rollback journal: refused at once, nothing created. */
    mk(path, sizeof path, "rollback.db");
    db = db_open_plain(path, 0);
    db_exec(db, "PRAGMA journal_mode=DELETE; CREATE TABLE t(v); INSERT INTO t VALUES (1)");
    sqlite3_close(db);
    rc = db_capture(buf, sizeof buf, "'%s' ship '%s' --url '%s' --drain --timeout 60", bin, path, url);
    CHECK_EQ(rc, 1);
    CHECK_CONTAINS(buf, "rollback-journal");
    db_spool_dir(path, spool, sizeof spool);
    struct stat st;
    CHECK(stat(spool, &st) != 0);

    /* Not a database. */
    mk(path, sizeof path, "README.txt");
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    fputs("this is not a database, just words; walship must leave it alone\n", f);
    fclose(f);
    rc = db_capture(buf, sizeof buf, "'%s' ship '%s' --url '%s' --drain --timeout 60", bin, path, url);
    CHECK_EQ(rc, 1);
    CHECK_CONTAINS(buf, "not an SQLite database");
    db_spool_dir(path, spool, sizeof spool);
    CHECK(stat(spool, &st) != 0);

    /* A dead store: the deadline ends the wait with an error. */
    mk(path, sizeof path, "deadstore.db");
    create_db(path);
    rc = db_capture(buf, sizeof buf,
                    "AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=y WALSHIP_S3_RETRIES=1 '%s' ship '%s' "
                    "--url 's3://bucket/x?endpoint=http://127.0.0.1:9' --drain --timeout 3",
                    bin, path);
    CHECK_EQ(rc, 1);
    CHECK_CONTAINS(buf, "could not drain");
}

static void case_check(void) {
    char path[3100], url[3200], buf[16384];
    const char *bin = ws_test_env("WALSHIP_BIN");
    mk(path, sizeof path, "check.db");
    snprintf(url, sizeof url, "file://%s/store-check", dir);
    create_db(path);
    sqlite3 *db = db_open_walship(path, url, "walship_ship_interval=0");
    db_exec(db, "INSERT INTO t(v) VALUES ('ok')");
    CHECK_EQ(walship_flush(path, 60000), 1);
    int rc = db_capture(buf, sizeof buf, "'%s' status '%s' --check", bin, path);
    if (rc != 0) ws_test_fail(__FILE__, __LINE__, "status --check of a healthy database: %d %s", rc, buf);
    sqlite3_close(db);
    /* Nobody ships it any more. */
    db_wait_shipper_retired(path);
    rc = db_capture(buf, sizeof buf, "'%s' status '%s' --check", bin, path);
    CHECK_EQ(rc, 1);
    CHECK_CONTAINS(buf, "no shipper");
}

/* Waits (60 s at most) until the database at path ships (flush 1: returns
** 1) or says why not in last_error (returns 2, the reason in why); 0 if it
** did neither: a database that silently stopped shipping. */
static int ships_or_says(const char *path, sqlite3 *db, const char *who, char *why, size_t n) {
    int64_t deadline = ws_mono_ms() + 60000;
    for (;;) {
        if (walship_flush(path, 200) == 1) return 1;
        char *js = db_status_json(db);
        db_json_text(js, "last_error", why, n);
        int said = why[0] != '\0', late = ws_mono_ms() > deadline;
        if (late && !said) fprintf(stderr, "%s: %s neither shipped nor said why: %s\n", who, path, js);
        free(js);
        if (said) return 2;
        if (late) return 0;
    }
}

/* emfile N: opens N databases through walship with few descriptors, writes
** to each, flushes each; exit 0 if every one refused its open, shipped, or
** has a last_error. */
static int emfile_main(char **argv) {
    int n = atoi(argv[2]);
    struct rlimit rl = {64, 64};
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) return 2;
    int silent = 0, refused = 0, shipped = 0, said = 0;
    sqlite3 *dbs[64] = {0};
    char paths[64][3200];
    for (int i = 0; i < n && i < 64; i++) {
        snprintf(paths[i], sizeof paths[i], "%s/emfile-%d.db", argv[3], i);
        char url[3300];
        snprintf(url, sizeof url, "file%%3A%%2F%%2F%s%%2Fstore-emfile-%d", argv[3], i);
        if (try_open(paths[i], url, &dbs[i]) != SQLITE_OK ||
            sqlite3_exec(dbs[i], "CREATE TABLE IF NOT EXISTS t(v); INSERT INTO t VALUES (1)", NULL,
                         NULL, NULL) != SQLITE_OK) {
            refused++;
            sqlite3_close(dbs[i]);
            dbs[i] = NULL;
        }
    }
    /* Each one ships or says why (a slow build may take a while for either). */
    for (int i = 0; i < n && i < 64; i++) {
        if (dbs[i] == NULL) continue;
        char e[600];
        int r = ships_or_says(paths[i], dbs[i], "emfile", e, sizeof e);
        shipped += r == 1;
        said += r == 2;
        silent += r == 0;
    }
    fprintf(stderr, "emfile: %d databases: %d refused their open, %d shipped, %d said why not\n", n,
            refused, shipped, said);
    for (int i = 0; i < n && i < 64; i++) sqlite3_close(dbs[i]);
    return silent == 0 && refused + shipped + said == n && (refused > 0 || said > 0) ? 0 : 1;
}

/* emfile_later N DIR: N databases open and ship with room to spare; then
** every descriptor left is taken, and each database is written to: each
** one ships or says why in last_error (never silently stalls); once the
** descriptors are given back, every one ships. Exit 0 if so. */
static int emfile_later_main(char **argv) {
    int n = atoi(argv[2]);
    if (n > 16) n = 16;
    struct rlimit rl = {256, 256};
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) return 2;
    sqlite3 *dbs[16] = {0};
    char paths[16][3200];
    for (int i = 0; i < n; i++) {
        snprintf(paths[i], sizeof paths[i], "%s/later-%d.db", argv[3], i);
        char url[3300];
        snprintf(url, sizeof url, "file%%3A%%2F%%2F%s%%2Fstore-later-%d", argv[3], i);
        if (try_open(paths[i], url, &dbs[i]) != SQLITE_OK ||
            sqlite3_exec(dbs[i], "CREATE TABLE IF NOT EXISTS t(v); INSERT INTO t VALUES (1)", NULL,
                         NULL, NULL) != SQLITE_OK ||
            walship_flush(paths[i], 60000) != 1) {
            fprintf(stderr, "emfile_later: %s did not ship with descriptors to spare\n", paths[i]);
            return 1;
        }
    }
    int hog[256], nhog = 0;
    while (nhog < 256 && (hog[nhog] = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0) nhog++;
    int silent = 0, shipped = 0, said = 0;
    for (int i = 0; i < n; i++)
        if (sqlite3_exec(dbs[i], "INSERT INTO t VALUES (2)", NULL, NULL, NULL) != SQLITE_OK)
            fprintf(stderr, "emfile_later: a write failed: %s\n", sqlite3_errmsg(dbs[i]));
    for (int i = 0; i < n; i++) {
        char e[600];
        int r = ships_or_says(paths[i], dbs[i], "emfile_later", e, sizeof e);
        if (r == 2 && said == 0) fprintf(stderr, "emfile_later: said: %s\n", e);
        shipped += r == 1;
        said += r == 2;
        silent += r == 0;
    }
    for (int i = 0; i < nhog; i++) close(hog[i]);
    int recovered = 0;
    for (int i = 0; i < n; i++) recovered += walship_flush(paths[i], 90000) == 1;
    fprintf(stderr,
            "emfile_later: %d databases, %d descriptors taken: %d shipped, %d said why not, "
            "%d shipped once they were given back\n",
            n, nhog, shipped, said, recovered);
    for (int i = 0; i < n; i++) sqlite3_close(dbs[i]);
    return silent == 0 && nhog > 0 && recovered == n ? 0 : 1;
}

static void case_emfile(void) {
    char sub[3100];
    mk(sub, sizeof sub, "emfile");
    CHECK_EQ(ws_test_system("mkdir -p '%s'", sub), 0);
    const char *args[] = {"emfile", "40", sub, NULL};
    int rc = child_wait(child_spawn(args));
    CHECK_EQ(rc, 0);
    const char *later[] = {"emfile_later", "12", sub, NULL};
    CHECK_EQ(child_wait(child_spawn(later)), 0);
}

int main(int argc, char **argv) {
    if (argc > 1) child_die_with_parent();
    if (argc > 1 && strcmp(argv[1], "emfile") == 0) return emfile_main(argv);
    if (argc > 1 && strcmp(argv[1], "emfile_later") == 0) return emfile_later_main(argv);
    if (argc > 1 && strcmp(argv[1], "nocreds") == 0) return nocreds_main(argv);
    if (argc > 1 && strcmp(argv[1], "stalled") == 0) return stalled_main(argv);
    snprintf(dir, sizeof dir, "%.2900s", ws_test_tmpdir());
    RUN(case_bad_urls);
    RUN(case_no_creds);
    RUN(case_drain);
    RUN(case_check);
    RUN(case_emfile);
    RUN(case_stalled);
    return 0;
}
