/*
** dbutil.c -- see dbutil.h.
*/
#include "dbutil.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

/* Not XXH_INLINE_ALL: inlined into db_content_hash, XXH3's streaming
** update of a 4-byte value keeps its (dead) long-input path, and gcc 12 at
** -O3 then reports -Warray-bounds against that 4-byte object. The library
** call costs nothing that matters in a test helper. */
#include <xxhash.h>

#include "harness.h"
#include "restore/restore.h"
#include "walship.h"

void db_register(void) {
    static int done;
    if (!done) {
        CHECK_EQ(walship_register(NULL, 0), SQLITE_OK);
        done = 1;
    }
}

sqlite3 *db_open_walship(const char *path, const char *url, const char *extra) {
    db_register();
    char *uri = sqlite3_mprintf("file:%s?walship_url=%s%s%s", path, url, extra ? "&" : "",
                                extra ? extra : "");
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(uri, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_URI,
                             "walship");
    if (rc != SQLITE_OK)
        ws_test_fail(__FILE__, __LINE__, "open %s through walship: %s", uri,
                     db ? sqlite3_errmsg(db) : "?");
    sqlite3_free(uri);
    sqlite3_busy_timeout(db, 10000);
    return db;
}

sqlite3 *db_open_plain(const char *path, int readonly) {
    sqlite3 *db = NULL;
    int flags = readonly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;
    if (sqlite3_open_v2(path, &db, flags, NULL) != SQLITE_OK)
        ws_test_fail(__FILE__, __LINE__, "open %s: %s", path, db ? sqlite3_errmsg(db) : "?");
    sqlite3_busy_timeout(db, 10000);
    return db;
}

void db_exec(sqlite3 *db, const char *sql) {
    char *err = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK)
        ws_test_fail(__FILE__, __LINE__, "%s: %s", sql, err ? err : "?");
}

int db_try_exec(sqlite3 *db, const char *sql) { return sqlite3_exec(db, sql, NULL, NULL, NULL); }

int64_t db_int(sqlite3 *db, const char *sql) {
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        ws_test_fail(__FILE__, __LINE__, "%s: %s", sql, sqlite3_errmsg(db));
    int64_t v = -1;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    else if (rc != SQLITE_DONE)
        ws_test_fail(__FILE__, __LINE__, "%s: %s", sql, sqlite3_errmsg(db));
    sqlite3_finalize(st);
    return v;
}

uint64_t db_content_hash(sqlite3 *db) {
    XXH3_state_t *x = XXH3_createState();
    XXH3_64bits_reset(x);
    sqlite3_stmt *tabs = NULL;
    if (sqlite3_prepare_v2(db,
                           "SELECT name, sql FROM sqlite_schema WHERE type IN "
                           "('table','index','view','trigger') AND name NOT LIKE 'sqlite_%' "
                           "ORDER BY type, name",
                           -1, &tabs, NULL) != SQLITE_OK)
        ws_test_fail(__FILE__, __LINE__, "schema: %s", sqlite3_errmsg(db));
    while (sqlite3_step(tabs) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(tabs, 0);
        const char *sql = (const char *)sqlite3_column_text(tabs, 1);
        if (sql) XXH3_64bits_update(x, sql, strlen(sql));
        if (sql == NULL || strncmp(sql, "CREATE TABLE", 12) != 0) continue;
        char *q = sqlite3_mprintf("SELECT * FROM \"%w\" ORDER BY rowid", name);
        sqlite3_stmt *rows = NULL;
        if (sqlite3_prepare_v2(db, q, -1, &rows, NULL) != SQLITE_OK)
            ws_test_fail(__FILE__, __LINE__, "%s: %s", q, sqlite3_errmsg(db));
        sqlite3_free(q);
        while (sqlite3_step(rows) == SQLITE_ROW) {
            int n = sqlite3_column_count(rows);
            for (int i = 0; i < n; i++) {
                int t = sqlite3_column_type(rows, i);
                XXH3_64bits_update(x, &t, sizeof t);
                const void *b = sqlite3_column_blob(rows, i);
                int len = sqlite3_column_bytes(rows, i);
                if (b && len) XXH3_64bits_update(x, b, (size_t)len);
            }
        }
        sqlite3_finalize(rows);
    }
    sqlite3_finalize(tabs);
    uint64_t h = XXH3_64bits_digest(x);
    XXH3_freeState(x);
    return h;
}

const char *db_integrity(sqlite3 *db) {
    static char line[256];
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW)
        snprintf(line, sizeof line, "integrity_check failed: %s", sqlite3_errmsg(db));
    else
        snprintf(line, sizeof line, "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    return line;
}

void db_check_latest_restore(const char *db_path, const char *url, const char *out, uint64_t acked,
                             const char *what) {
    sqlite3 *p = db_open_plain(db_path, 0);
    uint64_t want = db_content_hash(p);
    int64_t pmax = db_int(p, "SELECT coalesce(max(seq), 0) FROM t");
    sqlite3_close(p);
    char msg[512];
    if (db_restore(url, out, 0, 0, 0, msg, sizeof msg) != 0)
        ws_test_fail(__FILE__, __LINE__, "%s: restore latest: %s", what, msg);
    sqlite3 *r = db_open_plain(out, 1);
    const char *ic = db_integrity(r);
    if (strcmp(ic, "ok") != 0)
        ws_test_fail(__FILE__, __LINE__, "%s: the restored database is damaged: %s", what, ic);
    int64_t max = db_int(r, "SELECT coalesce(max(seq), 0) FROM t");
    int64_t cnt = db_int(r, "SELECT count(*) FROM t");
    if (max < (int64_t)acked || cnt != max)
        ws_test_fail(__FILE__, __LINE__,
                     "%s: restore holds %" PRId64 " rows up to seq %" PRId64 "; %" PRIu64
                     " were acknowledged (primary: %" PRId64 ")",
                     what, cnt, max, acked, pmax);
    if (db_content_hash(r) != want)
        ws_test_fail(__FILE__, __LINE__,
                     "%s: restore differs from the primary (restored seq %" PRId64
                     ", primary seq %" PRId64 ")",
                     what, max, pmax);
    sqlite3_close(r);
}

char *db_wait_status(sqlite3 *db, const char *field, const char *needle) {
    int64_t deadline = ws_mono_ms() + 20000;
    for (;;) {
        char *js = db_status_json(db);
        char v[1200];
        db_json_text(js, field, v, sizeof v);
        if (strstr(v, needle)) return js;
        if (ws_mono_ms() > deadline)
            ws_test_fail(__FILE__, __LINE__, "status %s never showed \"%s\": %s", field, needle, js);
        free(js);
        ws_sleep_ms(20); /* polling the status */
    }
}

void db_wait_shipper_retired(const char *db_path) {
    int64_t deadline = ws_mono_ms() + 20000;
    while (walship_flush(db_path, 0) != -WALSHIP_ERR_NOTFOUND) {
        if (ws_mono_ms() > deadline)
            ws_test_fail(__FILE__, __LINE__, "the shipper of %s never retired", db_path);
        ws_sleep_ms(20); /* polling the registry */
    }
}

int files_equal(const char *a, const char *b) {
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    int same = fa && fb;
    while (same) {
        char ba[65536], bb[65536];
        size_t na = fread(ba, 1, sizeof ba, fa), nb = fread(bb, 1, sizeof bb, fb);
        if (na != nb || memcmp(ba, bb, na) != 0) same = 0;
        if (na == 0) break;
    }
    if (fa) fclose(fa);
    if (fb) fclose(fb);
    return same;
}

static int restore_to(const char *url, const char *out, uint64_t generation, int kind,
                      uint64_t txid, int64_t time_ms, char *msg, size_t msglen) {
    restore_opts o;
    memset(&o, 0, sizeof o);
    o.url = url;
    o.out_path = out;
    o.force = 1;
    o.parallel = 4;
    o.target.kind = kind;
    o.target.txid = txid;
    o.target.time_ms = time_ms;
    o.target.generation = generation;
    restore_result res;
    wserr err = {0};
    int rc = ws_restore(&o, &res, &err);
    if (msg) snprintf(msg, msglen, "%s", err.msg);
    return rc;
}

int db_restore(const char *url, const char *out, int kind, uint64_t txid, int64_t time_ms,
               char *msg, size_t msglen) {
    return restore_to(url, out, 0, kind, txid, time_ms, msg, msglen);
}

void db_txid_range(const char *url, uint64_t *first, uint64_t *last) {
    store *st = NULL;
    wserr err = {0};
    catalog cat = {0};
    CHECK_OK(store_open(url, &st, &err), &err);
    CHECK_OK(catalog_load(st, &cat, &err), &err);
    CHECK(cat.ngens > 0);
    const cat_gen *g = &cat.gens[cat.ngens - 1];
    *first = cat_gen_first_txid(g);
    *last = cat_gen_last_txid(g);
    catalog_free(&cat);
    store_free(st);
}

pid_t child_spawn(const char *const args[]) {
    char *argv[64];
    int n = 0;
    argv[n++] = (char *)"/proc/self/exe";
    for (; args[n - 1] && n < 63; n++) argv[n] = (char *)args[n - 1];
    argv[n] = NULL;
    pid_t pid = 0;
    extern char **environ;
    int rc = posix_spawn(&pid, "/proc/self/exe", NULL, NULL, argv, environ);
    if (rc != 0) ws_test_fail(__FILE__, __LINE__, "posix_spawn failed: %d", rc);
    return pid;
}

void child_die_with_parent(void) {
    pid_t parent = getppid();
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent) _exit(1);
}

pid_t child_start(int (*fn)(void *), void *arg) {
    fflush(NULL);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) _exit(fn(arg));
    return pid;
}

int child_wait(pid_t pid) {
    int st = 0;
    while (waitpid(pid, &st, 0) < 0) {
    }
    if (WIFEXITED(st)) return WEXITSTATUS(st);
    if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
    return -1;
}

/* ---- spool, status and the command line ------------------------------------ */

void db_spool_dir(const char *db_path, char *out, size_t n) {
    if (snprintf(out, n, "%s-walship", db_path) >= (int)n)
        ws_test_fail(__FILE__, __LINE__, "path too long: %s", db_path);
}

int db_hold_ship_lock(const char *spool_dir, int timeout_ms) {
    char path[4200];
    snprintf(path, sizeof path, "%s/ctl", spool_dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) ws_test_fail(__FILE__, __LINE__, "open %s: %s", path, strerror(errno));
    int64_t deadline = ws_mono_ms() + timeout_ms;
    for (;;) {
        struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 1, .l_len = 1};
        if (fcntl(fd, F_OFD_SETLK, &fl) == 0) return fd;
        if (errno != EAGAIN && errno != EACCES)
            ws_test_fail(__FILE__, __LINE__, "lock %s: %s", path, strerror(errno));
        if (ws_mono_ms() >= deadline) break;
        ws_sleep_ms(10); /* polling a lock another process holds */
    }
    close(fd);
    return -1;
}

int db_flush_or_say(const char *path, sqlite3 *db, int timeout_ms, const char *who) {
    int fl = walship_flush(path, timeout_ms);
    if (fl == 1) return 1;
    char *js = db_status_json(db);
    fprintf(stderr, "%s: walship_flush returned %d; status %s\n", who, fl, js);
    free(js);
    return 0;
}

char *db_status_json(sqlite3 *db) {
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "PRAGMA walship_status", -1, &st, NULL) != SQLITE_OK)
        ws_test_fail(__FILE__, __LINE__, "PRAGMA walship_status: %s", sqlite3_errmsg(db));
    int rc = sqlite3_step(st);
    if (rc != SQLITE_ROW)
        ws_test_fail(__FILE__, __LINE__, "PRAGMA walship_status gave no row (%d): %s", rc,
                     sqlite3_errmsg(db));
    const char *t = (const char *)sqlite3_column_text(st, 0);
    char *out = strdup(t ? t : "");
    sqlite3_finalize(st);
    CHECK(out != NULL);
    return out;
}

static sqlite3_stmt *json_query(sqlite3 **mem, const char *json, const char *field) {
    if (sqlite3_open(":memory:", mem) != SQLITE_OK) ws_test_fail(__FILE__, __LINE__, "open :memory:");
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(*mem, "SELECT json_extract(?1, '$.' || ?2), json_valid(?1)", -1, &st,
                           NULL) != SQLITE_OK)
        ws_test_fail(__FILE__, __LINE__, "json_extract: %s", sqlite3_errmsg(*mem));
    sqlite3_bind_text(st, 1, json, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, field, -1, SQLITE_TRANSIENT);
    if (sqlite3_step(st) != SQLITE_ROW) ws_test_fail(__FILE__, __LINE__, "json_extract: no row");
    if (sqlite3_column_int(st, 1) != 1)
        ws_test_fail(__FILE__, __LINE__, "not valid JSON: %s", json);
    return st;
}

int64_t db_json_int(const char *json, const char *field) {
    sqlite3 *mem = NULL;
    sqlite3_stmt *st = json_query(&mem, json, field);
    int64_t v = sqlite3_column_type(st, 0) == SQLITE_INTEGER ? sqlite3_column_int64(st, 0) : -1;
    sqlite3_finalize(st);
    sqlite3_close(mem);
    return v;
}

void db_json_text(const char *json, const char *field, char *out, size_t n) {
    sqlite3 *mem = NULL;
    sqlite3_stmt *st = json_query(&mem, json, field);
    const char *t = (const char *)sqlite3_column_text(st, 0);
    snprintf(out, n, "%s", t ? t : "");
    sqlite3_finalize(st);
    sqlite3_close(mem);
}

int64_t db_file_size(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) return -1;
    return (int64_t)st.st_size;
}

int db_capture(char *out, size_t n, const char *fmt, ...) {
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    char full[8300];
    snprintf(full, sizeof full, "( %s ) 2>&1", cmd);
    fflush(NULL);
    FILE *p = popen(full, "r");
    if (p == NULL) return -1;
    size_t len = 0;
    if (n > 0) out[0] = '\0';
    char buf[4096];
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, p)) > 0) {
        if (n > 0 && len < n - 1) {
            size_t k = got < n - 1 - len ? got : n - 1 - len;
            memcpy(out + len, buf, k);
            len += k;
            out[len] = '\0';
        }
    }
    int st = pclose(p);
    if (st == -1) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

size_t db_generation_count(const char *url) {
    store *st = NULL;
    wserr err = {0};
    catalog cat = {0};
    CHECK_OK(store_open(url, &st, &err), &err);
    CHECK_OK(catalog_load(st, &cat, &err), &err);
    size_t n = cat.ngens;
    catalog_free(&cat);
    store_free(st);
    return n;
}

size_t db_generation_list(const char *url, uint64_t *ids, uint64_t *first, uint64_t *last,
                          size_t max) {
    store *st = NULL;
    wserr err = {0};
    catalog cat = {0};
    CHECK_OK(store_open(url, &st, &err), &err);
    CHECK_OK(catalog_load(st, &cat, &err), &err);
    for (size_t i = 0; i < cat.ngens && i < max; i++) {
        ids[i] = cat.gens[i].id;
        first[i] = cat_gen_first_txid(&cat.gens[i]);
        last[i] = cat_gen_last_txid(&cat.gens[i]);
    }
    size_t n = cat.ngens;
    catalog_free(&cat);
    store_free(st);
    return n;
}

int db_restore_in(const char *url, const char *out, uint64_t generation, int kind, uint64_t txid,
                  char *msg, size_t msglen) {
    return restore_to(url, out, generation, kind, txid, 0, msg, msglen);
}
