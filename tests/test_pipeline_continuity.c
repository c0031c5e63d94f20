/*
** test_pipeline_continuity.c -- writes walship never saw, and database
** files swapped under it: a new generation when history breaks, the same
** one when it does not, and never a history that does not follow.
**
** Each case uses its own database and file:// store; every commit (through
** walship or not) bumps meta.seq and the test records the content hash of
** every state the primary was in. Checked in every case: latest restore
** equals the primary byte for byte (after a TRUNCATE checkpoint), the
** number of generations is the expected one (catalog and `walship
** generations`), and restores at the first, last and sampled TXIDs of every
** generation are states the primary had, seq never going down inside one.
**
**   a  walship closes; a plain sqlite3 connection writes, checkpoints and
**      closes (deleting the WAL); walship reopens and writes: 2 generations,
**      the first ending exactly at the state walship closed in.
**   b  the file is replaced while closed by a copy of another database:
**      copied over it (same inode), renamed over it (new inode), or an older
**      copy of itself: 2 generations each.
**   c  a plain connection writes while walship has the database open, no
**      checkpoint: its commits ship in the same generation, whether walship
**      writes next or closes next (1 generation).
**   d  the plain connection restarts the WAL behind walship's back (after a
**      full checkpoint): shipped history so far, then a new generation;
**      also with commits walship had not shipped yet when the WAL was
**      overwritten (election lock held): those are lost to the old
**      generation, which must end before them, not skip them.
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
#include "harness.h"
#include "walship.h"

#define MAX_STATES 2048

typedef struct kase {
    char name[64];
    char path[4200], wal[4300], url[4300], out[4300], spool[4300];
    uint64_t hashes[MAX_STATES]; /* every state the primary had */
    int64_t seqs[MAX_STATES];
    int nstates;
} kase;

static void note(kase *k, sqlite3 *db) {
    CHECK(k->nstates < MAX_STATES);
    k->seqs[k->nstates] = db_int(db, "SELECT seq FROM meta");
    k->hashes[k->nstates++] = db_content_hash(db);
}

/* The first state index after `after` with this content, or -1. (The same
** content can occur twice: a database replaced by an older copy of itself.) */
static int find_state(const kase *k, uint64_t h, int after) {
    for (int i = after + 1; i < k->nstates; i++)
        if (k->hashes[i] == h) return i;
    return -1;
}

static void txn(kase *k, sqlite3 *db) {
    char sql[256];
    snprintf(sql, sizeof sql,
             "BEGIN IMMEDIATE; INSERT INTO t(v) VALUES (randomblob(%d));"
             "UPDATE meta SET seq = seq + 1; COMMIT",
             (int)ws_test_rand_below(ws_test_rand_below(8) ? 400 : 9000));
    db_exec(db, sql);
    note(k, db);
}

static void setup(kase *k, const char *name) {
    memset(k, 0, sizeof *k);
    snprintf(k->name, sizeof k->name, "%s", name);
    char dir[4000];
    snprintf(dir, sizeof dir, "%.3900s/%s", ws_test_tmpdir(), name);
    CHECK_EQ(ws_test_system("mkdir -p '%s'", dir), 0);
    snprintf(k->path, sizeof k->path, "%s/app.db", dir);
    snprintf(k->wal, sizeof k->wal, "%s-wal", k->path);
    snprintf(k->url, sizeof k->url, "file://%s/store", dir);
    snprintf(k->out, sizeof k->out, "%s/restored.db", dir);
    db_spool_dir(k->path, k->spool, sizeof k->spool);
    sqlite3 *plain = db_open_plain(k->path, 0);
    db_exec(plain, "PRAGMA journal_mode=WAL; CREATE TABLE meta(seq INTEGER); INSERT INTO meta VALUES (0);"
                   "CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB);");
    note(k, plain);
    sqlite3_close(plain);
    fprintf(stderr, "-- case %s\n", name);
}

static sqlite3 *app_open(kase *k) { return db_open_walship(k->path, k->url, "walship_ship_interval=0"); }

static void flush_ok(kase *k, sqlite3 *db) {
    int fl = walship_flush(k->path, 60000);
    if (fl != 1) {
        char *js = db_status_json(db);
        ws_test_fail(__FILE__, __LINE__, "%s: walship_flush returned %d; status %s", k->name, fl, js);
    }
}

/* A plain connection (no walship) that never checkpoints by itself. */
static sqlite3 *plain_open(kase *k) {
    sqlite3 *p = db_open_plain(k->path, 0);
    db_exec(p, "PRAGMA wal_autocheckpoint=0");
    return p;
}

static uint64_t wal_salts(kase *k) {
    FILE *f = fopen(k->wal, "rb");
    if (f == NULL) return 0;
    uint8_t h[32];
    size_t n = fread(h, 1, sizeof h, f);
    fclose(f);
    return n == 32 ? ws_get_be64(h + 16) : 0;
}

/* `walship generations URL`: the number of generation lines. */
static int cli_generations(kase *k) {
    char buf[16384];
    int rc = db_capture(buf, sizeof buf, "'%s' generations '%s'", ws_test_env("WALSHIP_BIN"), k->url);
    if (rc != 0) ws_test_fail(__FILE__, __LINE__, "walship generations failed (%d): %s", rc, buf);
    int n = 0;
    char *save = NULL;
    for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
        if (strspn(line, "0123456789abcdef") == 16 && line[16] == ' ') n++;
    return n;
}

/* Restores a TXID of generation gen and returns the first state index
** after `after` that it equals (failing if there is none: the generation
** shows a state the primary never had, or goes back in time). */
static int restored_state(kase *k, uint64_t gen, int kind, uint64_t txid, int after) {
    char msg[512];
    if (db_restore_in(k->url, k->out, gen, kind, txid, msg, sizeof msg) != 0)
        ws_test_fail(__FILE__, __LINE__, "%s: restore generation %016" PRIx64 " txid %" PRIu64 ": %s",
                     k->name, gen, txid, msg);
    sqlite3 *r = db_open_plain(k->out, 1);
    uint64_t h = db_content_hash(r);
    int64_t seq = db_int(r, "SELECT seq FROM meta");
    sqlite3_close(r);
    int i = find_state(k, h, after);
    if (i < 0)
        ws_test_fail(__FILE__, __LINE__,
                     "%s: generation %016" PRIx64 " at TXID %" PRIu64 " (seq %" PRId64
                     ") is not a state the primary had (after state %d)",
                     k->name, gen, txid, seq, after);
    return i;
}

/* The common end of every case: drain, compare, count generations, and walk
** every generation. Returns the state index of each generation's latest in
** latest[] (up to 8). */
static void finish(kase *k, sqlite3 *db, size_t want_gens, int *latest) {
    flush_ok(k, db);
    db_exec(db, "PRAGMA wal_checkpoint(TRUNCATE)");
    flush_ok(k, db);
    char msg[512];
    if (db_restore(k->url, k->out, 0, 0, 0, msg, sizeof msg) != 0)
        ws_test_fail(__FILE__, __LINE__, "%s: restore latest: %s", k->name, msg);
    if (!files_equal(k->path, k->out))
        ws_test_fail(__FILE__, __LINE__, "%s: restored %s differs from the primary %s", k->name, k->out,
                     k->path);
    uint64_t ids[8], first[8], last[8];
    size_t n = db_generation_list(k->url, ids, first, last, 8);
    if (n != want_gens)
        ws_test_fail(__FILE__, __LINE__, "%s: %zu generation(s), expected %zu", k->name, n, want_gens);
    CHECK_EQ(cli_generations(k), (int)want_gens);
    for (size_t g = 0; g < n; g++) {
        CHECK(first[g] > 0 && first[g] <= last[g]);
        /* Inside a generation the history only moves forward. */
        int prev = -1;
        for (uint64_t t = first[g]; t <= last[g]; t++) prev = restored_state(k, ids[g], 1, t, prev);
        latest[g] = prev;
        int l = restored_state(k, ids[g], 0, 0, -1);
        CHECK_U64_EQ(k->hashes[l], k->hashes[prev]);
    }
    sqlite3_close(db);
}

/* a: a plain writer while walship is closed. */
static void case_plain_between(void) {
    static kase k;
    setup(&k, "a-plain-between");
    sqlite3 *db = app_open(&k);
    for (int i = 0; i < 10; i++) txn(&k, db);
    flush_ok(&k, db);
    sqlite3_close(db);
    CHECK_EQ(db_file_size(k.wal), -1);
    int closed_at = k.nstates - 1;

    sqlite3 *p = plain_open(&k);
    for (int i = 0; i < 5; i++) txn(&k, p);
    db_exec(p, "PRAGMA wal_checkpoint(TRUNCATE)");
    sqlite3_close(p);
    CHECK_EQ(db_file_size(k.wal), -1);

    db = app_open(&k);
    for (int i = 0; i < 5; i++) txn(&k, db);
    int latest[8];
    finish(&k, db, 2, latest);
    CHECK_EQ(latest[0], closed_at);
}

/* b: the file replaced while closed. how: 0 copied over, 1 renamed over,
** 2 an older copy of itself copied over. */
static void case_replaced(int how) {
    static kase k;
    static const char *const names[] = {"b-copied-over", "b-renamed-over", "b-older-self"};
    setup(&k, names[how]);
    char other[4300], saved[4300];
    snprintf(other, sizeof other, "%s.other", k.path);
    snprintf(saved, sizeof saved, "%s.saved", k.path);

    sqlite3 *db = app_open(&k);
    for (int i = 0; i < 6; i++) txn(&k, db);
    flush_ok(&k, db);
    sqlite3_close(db);
    if (how == 2) {
        /* keep this state, go on, close again */
        CHECK_EQ(ws_test_system("cp '%s' '%s'", k.path, saved), 0);
        db = app_open(&k);
        for (int i = 0; i < 4; i++) txn(&k, db);
        flush_ok(&k, db);
        sqlite3_close(db);
    }
    int closed_at = k.nstates - 1;
    CHECK_EQ(db_file_size(k.wal), -1);

    if (how == 2) {
        CHECK_EQ(ws_test_system("cp '%s' '%s'", saved, k.path), 0);
    } else {
        sqlite3 *o = db_open_plain(other, 0);
        db_exec(o, "CREATE TABLE meta(seq INTEGER); INSERT INTO meta VALUES (1000);"
                   "CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB);"
                   "INSERT INTO t(v) SELECT randomblob(300) FROM (SELECT 1 UNION SELECT 2 UNION SELECT 3);"
                   "PRAGMA journal_mode=WAL;");
        sqlite3_close(o);
        if (how == 0)
            CHECK_EQ(ws_test_system("cp '%s' '%s'", other, k.path), 0);
        else
            CHECK_EQ(ws_test_system("cp '%s' '%s.tmp' && mv '%s.tmp' '%s'", other, k.path, k.path, k.path), 0);
    }
    CHECK_EQ(ws_test_system("rm -f '%s-wal' '%s-shm'", k.path, k.path), 0);
    sqlite3 *p = db_open_plain(k.path, 1);
    note(&k, p); /* the state it was replaced with */
    sqlite3_close(p);

    db = app_open(&k);
    for (int i = 0; i < 4; i++) txn(&k, db);
    int latest[8];
    finish(&k, db, 2, latest);
    CHECK_EQ(latest[0], closed_at);
}

/* c: plain commits while walship is open; then walship writes (then=0) or
** closes as the last connection (then=1). */
static void case_plain_inside(int then) {
    static kase k;
    setup(&k, then ? "c-plain-inside-close" : "c-plain-inside-write");
    sqlite3 *db = app_open(&k);
    for (int i = 0; i < 5; i++) txn(&k, db);
    flush_ok(&k, db);
    uint64_t salts = wal_salts(&k);
    sqlite3 *p = plain_open(&k);
    for (int i = 0; i < 6; i++) txn(&k, p);
    sqlite3_close(p); /* not the last connection: no checkpoint */
    CHECK_U64_EQ(wal_salts(&k), salts);
    if (then == 0) {
        txn(&k, db);
    } else {
        sqlite3_close(db);
        CHECK_EQ(db_file_size(k.wal), -1);
        db = app_open(&k);
    }
    int latest[8];
    finish(&k, db, 1, latest);
    CHECK_EQ(latest[0], k.nstates - 1);
}

/* d: a plain writer restarts the WAL behind walship's back. unshipped=1:
** walship's last commits were not shipped yet when that happened. */
static void case_plain_restart(int unshipped) {
    static kase k;
    setup(&k, unshipped ? "d-plain-restart-unshipped" : "d-plain-restart");
    sqlite3 *db = app_open(&k);
    for (int i = 0; i < 5; i++) txn(&k, db);
    flush_ok(&k, db);
    int shipped_at = k.nstates - 1;
    int lockfd = -1;
    if (unshipped) {
        /* Stop shipping: close so this process's shipper retires, take the
        ** election lock, reopen. */
        sqlite3_close(db);
        lockfd = db_hold_ship_lock(k.spool, 60000);
        CHECK(lockfd >= 0);
        db = app_open(&k);
        for (int i = 0; i < 4; i++) txn(&k, db);
        CHECK_EQ(walship_flush(k.path, 50), 0);
    }
    /* Everything into the database file, so the next writer restarts. */
    int nlog = -1, nckpt = -1;
    CHECK_EQ(sqlite3_wal_checkpoint_v2(db, "main", SQLITE_CHECKPOINT_PASSIVE, &nlog, &nckpt), SQLITE_OK);
    CHECK_EQ(nlog, nckpt);
    uint64_t salts = wal_salts(&k);
    int before_plain = k.nstates - 1;
    sqlite3 *p = plain_open(&k);
    for (int i = 0; i < 4; i++) txn(&k, p);
    sqlite3_close(p);
    CHECK(wal_salts(&k) != salts); /* the plain writer restarted the WAL */
    /* walship writes on: with the lock still held when unshipped, so the
    ** shipper finds several commits of the new WAL waiting when it starts. */
    for (int i = 0; i < 3; i++) txn(&k, db);
    if (unshipped) close(lockfd);
    int latest[8];
    finish(&k, db, 2, latest);
    /* The old generation ends at a state that was shipped before the
    ** restart, never past a hole. */
    CHECK(latest[0] >= shipped_at && latest[0] <= before_plain);
}

int main(void) {
    ws_test_seed(20261201);
    case_plain_between();
    for (int how = 0; how < 3; how++) case_replaced(how);
    case_plain_inside(0);
    case_plain_inside(1);
    case_plain_restart(0);
    case_plain_restart(1);
    return 0;
}
