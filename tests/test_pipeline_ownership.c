/*
** test_pipeline_ownership.c -- a history belongs to one database (issue 7,
** finding 3).
**
**   two_urls      a database ships to URL A; opening it with URL B, while the
**                 first process still has it open and after it closed, is
**                 refused; nothing reaches B; A restores the primary.
**   two_dbs       two databases with the same file name under one
**                 WALSHIP_URL base claim the same destination: the second
**                 ships nothing, says why in last_error (within seconds), and
**                 the destination keeps restoring the first; the first goes on
**                 shipping.
**   adopt         a database restored elsewhere from the backups and opened
**                 with the same URL is refused until walship_adopt=1; then it
**                 owns the destination (a new generation; restore gives its
**                 content) and the old database, reopened, is refused.
**   spool_lost    a database whose spool directory was deleted reopens with
**                 the same URL on the same host and path: it takes its own
**                 destination back by itself.
**   markers       the store holds the owner record and one marker per
**                 generation, naming the database.
**
** ctest-labels: pipeline
** ctest-timeout: 300
*/
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "dbutil.h"
#include "format/owner.h"
#include "harness.h"
#include "store/store.h"
#include "walship.h"

static char dir[4100];

static void mkpath(char *out, size_t n, const char *name) {
    snprintf(out, n, "%s/%s", dir, name);
}

/* Opens through walship; returns the SQLite result code (db NULL on failure). */
static int try_open(const char *path, const char *url, const char *extra, sqlite3 **out) {
    db_register();
    char *uri = sqlite3_mprintf("file:%s?walship_url=%s%s%s", path, url, extra ? "&" : "",
                                extra ? extra : "");
    int rc = sqlite3_open_v2(uri, out, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_URI,
                             "walship");
    sqlite3_free(uri);
    if (rc != SQLITE_OK) {
        sqlite3_close(*out);
        *out = NULL;
    } else {
        sqlite3_busy_timeout(*out, 10000);
    }
    return rc;
}

static void create_db(const char *path) {
    sqlite3 *db = db_open_plain(path, 0);
    db_exec(db, "PRAGMA journal_mode=WAL; CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT)");
    sqlite3_close(db);
}

static void insert(sqlite3 *db, const char *tag, int n) {
    for (int i = 0; i < n; i++) {
        char sql[200];
        snprintf(sql, sizeof sql, "INSERT INTO t(v) VALUES ('%s-%d')", tag, i);
        db_exec(db, sql);
    }
}

static void flush_ok(const char *path, sqlite3 *db) {
    int fl = walship_flush(path, 60000);
    if (fl != 1) {
        char *js = db_status_json(db);
        ws_test_fail(__FILE__, __LINE__, "walship_flush(%s) returned %d; status %s", path, fl, js);
    }
}

/* A new database <name>.db shipping to file://<dir>/store-<name> (paths into
** pa and url), n rows committed and flushed. */
static sqlite3 *shipping_db(const char *name, int n, char *pa, size_t pan, char *url, size_t urln) {
    char f[200], sd[4300];
    snprintf(f, sizeof f, "%s.db", name);
    mkpath(pa, pan, f);
    snprintf(f, sizeof f, "store-%s", name);
    mkpath(sd, sizeof sd, f);
    snprintf(url, urln, "file://%s", sd);
    create_db(pa);
    sqlite3 *db = db_open_walship(pa, url, "walship_ship_interval=0");
    insert(db, "a", n);
    flush_ok(pa, db);
    return db;
}

/* The store's latest restore has exactly db's content. */
static void restores_to(const char *url, sqlite3 *db, const char *what) {
    char out[4300], msg[512];
    mkpath(out, sizeof out, "restored.db");
    if (db_restore(url, out, 0, 0, 0, msg, sizeof msg) != 0)
        ws_test_fail(__FILE__, __LINE__, "%s: restore: %s", what, msg);
    sqlite3 *r = db_open_plain(out, 1);
    uint64_t got = db_content_hash(r);
    sqlite3_close(r);
    if (got != db_content_hash(db))
        ws_test_fail(__FILE__, __LINE__, "%s: the store's latest is not this database", what);
}


static void case_two_urls(void) {
    char path[4300], urla[4300], urlb[4300];
    mkpath(path, sizeof path, "two_urls.db");
    mkpath(urla, sizeof urla, "store-a");
    mkpath(urlb, sizeof urlb, "store-b");
    char ua[4400], ub[4400];
    snprintf(ua, sizeof ua, "file://%s", urla);
    snprintf(ub, sizeof ub, "file://%s", urlb);
    create_db(path);
    sqlite3 *a = db_open_walship(path, ua, "walship_ship_interval=0");
    insert(a, "a", 10);
    flush_ok(path, a);
    sqlite3 *b = NULL;
    CHECK(try_open(path, ub, "walship_ship_interval=0", &b) != SQLITE_OK);
    insert(a, "a2", 5);
    flush_ok(path, a);
    restores_to(ua, a, "two_urls, A");
    sqlite3_close(a);
    /* Closed: the spool still remembers where this database ships. */
    CHECK(try_open(path, ub, NULL, &b) != SQLITE_OK);
    store *st = NULL;
    wserr err = {0};
    store_objlist l = {0};
    CHECK_OK(store_open(ub, &st, &err), &err);
    CHECK_OK(store_list(st, "", NULL, &l, &err), &err);
    CHECK_EQ(l.n, 0);
    store_objlist_free(&l);
    store_free(st);
}

static void case_two_dbs(void) {
    char pa[4300], pb[4300], base[4300], url[4400];
    mkpath(pa, sizeof pa, "x/a");
    mkpath(pb, sizeof pb, "x/b");
    CHECK_EQ(ws_test_system("mkdir -p '%s' '%s'", pa, pb), 0);
    strcat(pa, "/app.db");
    strcat(pb, "/app.db");
    mkpath(base, sizeof base, "base");
    snprintf(url, sizeof url, "file://%s/app.db", base);
    create_db(pa);
    create_db(pb);
    sqlite3 *a = db_open_walship(pa, "", "walship_ship_interval=0");
    insert(a, "a", 20);
    flush_ok(pa, a);
    sqlite3 *b = db_open_walship(pb, "", "walship_ship_interval=0");
    insert(b, "b", 7);
    char *js = db_wait_status(b, "last_error", "holds the backups of another database");
    CHECK_CONTAINS(js, pa);
    CHECK_EQ(db_json_int(js, "error_needs_user"), 1);
    CHECK_EQ(db_json_int(js, "discarding"), 1);
    free(js);
    CHECK(walship_flush(pb, 2000) != 1);
    restores_to(url, a, "two_dbs after b");
    insert(a, "a2", 3);
    flush_ok(pa, a);
    restores_to(url, a, "two_dbs, a goes on");
    sqlite3_close(b);
    sqlite3_close(a);
}

static void case_adopt(void) {
    char pa[4300], pc[4300], url[4400], msg[512];
    mkpath(pc, sizeof pc, "adopt-c.db");
    sqlite3 *a = shipping_db("adopt", 10, pa, sizeof pa, url, sizeof url);
    sqlite3_close(a);
    /* The machine is lost; the database comes back from its backups elsewhere. */
    if (db_restore(url, pc, 0, 0, 0, msg, sizeof msg) != 0)
        ws_test_fail(__FILE__, __LINE__, "restore: %s", msg);
    sqlite3 *c = db_open_walship(pc, url, "walship_ship_interval=0");
    insert(c, "c", 4);
    char *js = db_wait_status(c, "last_error", "walship_adopt=1");
    free(js);
    CHECK(walship_flush(pc, 1000) != 1);
    sqlite3_close(c);
    /* The shipper of c retires once idle; reopening takes the new option. */
    db_wait_shipper_retired(pc);
    c = db_open_walship(pc, url, "walship_ship_interval=0&walship_adopt=1");
    insert(c, "c2", 2);
    flush_ok(pc, c);
    restores_to(url, c, "adopt, c owns it");
    size_t gens = db_generation_count(url);
    CHECK(gens >= 2);
    /* The old database, back from the dead, is refused. */
    db_wait_shipper_retired(pa);
    a = db_open_walship(pa, url, "walship_ship_interval=0");
    insert(a, "zombie", 3);
    js = db_wait_status(a, "last_error", "holds the backups of another database");
    free(js);
    CHECK(walship_flush(pa, 1000) != 1);
    restores_to(url, c, "adopt, after the old one came back");
    CHECK_EQ(db_generation_count(url), gens);
    sqlite3_close(a);
    sqlite3_close(c);
}

static void case_spool_lost(void) {
    char pa[4300], url[4400], spool[4400];
    sqlite3 *a = shipping_db("lost", 10, pa, sizeof pa, url, sizeof url);
    sqlite3_close(a);
    db_wait_shipper_retired(pa);
    db_spool_dir(pa, spool, sizeof spool);
    CHECK_EQ(ws_test_system("rm -rf '%s'", spool), 0);
    a = db_open_walship(pa, url, "walship_ship_interval=0");
    insert(a, "a2", 3);
    flush_ok(pa, a);
    restores_to(url, a, "spool_lost");
    sqlite3_close(a);
}

static void case_markers(void) {
    char pa[4300], url[4400], spool[4400];
    sqlite3 *a = shipping_db("markers", 3, pa, sizeof pa, url, sizeof url);
    /* The spool's identity names the database and its destination. */
    db_spool_dir(pa, spool, sizeof spool);
    char identpath[4500];
    snprintf(identpath, sizeof identpath, "%s/ident", spool);
    wsbuf b = {0};
    wserr err = {0};
    CHECK_OK(ws_read_file(identpath, 8192, &b, &err), &err);
    CHECK_OK(wsbuf_append(&b, "", 1), NULL);
    char idhex[64];
    CHECK_EQ(ws_kv_get((const char *)b.p, b.len - 1, "db_id", idhex, sizeof idhex), 0);
    uint64_t id = 0;
    CHECK_EQ(ws_hex64_parse(idhex, &id), 0);
    CHECK_CONTAINS((const char *)b.p, url);
    wsbuf_free(&b);
    store *st = NULL;
    CHECK_OK(store_open(url, &st, &err), &err);
    ws_owner o;
    CHECK_OK(store_get(st, OWNER_KEY, &b, &err), &err);
    CHECK_OK(owner_parse(b.p, b.len, &o, &err), &err);
    CHECK_U64_EQ(o.db_id, id);
    CHECK_STREQ(o.path, pa);
    uint64_t ids[4], first[4], last[4];
    CHECK_EQ(db_generation_list(url, ids, first, last, 4), 1);
    char key[64];
    owner_gen_key(key, sizeof key, ids[0]);
    CHECK_OK(store_get(st, key, &b, &err), &err);
    CHECK_OK(owner_parse(b.p, b.len, &o, &err), &err);
    CHECK_U64_EQ(o.db_id, id);
    wsbuf_free(&b);
    store_free(st);
    sqlite3_close(a);
}

int main(void) {
    snprintf(dir, sizeof dir, "%s", ws_test_tmpdir());
    /* The base destination of case_two_dbs, set before any thread exists
    ** (the other cases name their URL, which wins). */
    char base[4400];
    snprintf(base, sizeof base, "file://%s/base", dir);
    setenv("WALSHIP_URL", base, 1);
    RUN(case_two_urls);
    RUN(case_two_dbs);
    RUN(case_adopt);
    RUN(case_spool_lost);
    RUN(case_markers);
    return 0;
}
