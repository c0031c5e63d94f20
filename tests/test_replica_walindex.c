/*
** test_replica_walindex.c -- the wal-index writer (replica/walindex.c)
** against real SQLite readers in other processes.
**
** A source database takes bank transfers through SQLite; after each one its
** file is diffed page by page, and the changed pages are appended to a
** replica's WAL with the appender, as the replica process does. Plain
** SQLite readers (re-executions of this program) loop on the replica the
** whole time. Covered: page sizes 512/4096/65536, hash blocks 0..2
** (more than 4,062 + 4,096 frames), batching several transactions into one
** publish, rolled-back frames, stale index entries left by a writer that
** died, the restart rules (a reader in the WAL blocks it, one on READ0
** does not), TRUNCATE checkpoints by another process, and recovery from
** the WAL file alone. At the end of each case the replica equals the
** source byte for byte.
*/
/* ctest-labels: replica */
/* ctest-timeout: 180 */
#include <sqlite3.h>

#include "replica_testlib.h"
#include "replica/walindex.h"

#define NACCOUNTS 200
#define TOTAL (NACCOUNTS * 1000)

typedef struct src_db {
    sqlite3 *db;
    char path[512];
    wsbuf image; /* file content after the last transaction */
    uint32_t page_size;
} src_db;

typedef struct page_set {
    uint32_t *pgno;
    uint8_t *data;
    uint32_t n, cap;
    uint32_t db_pages;
} page_set;

typedef struct rep_db {
    sqlite3 *db;
    sqlite3_file *f;
    int wal_fd;
    wal_appender *a;
    char path[512];
} rep_db;

static const char *dir;

static void read_image(src_db *s, wsbuf *out) {
    wserr err = {0};
    out->len = 0;
    CHECK_OK(ws_read_file(s->path, (size_t)1 << 30, out, &err), &err);
}

static void src_open(src_db *s, const char *name, uint32_t page_size) {
    memset(s, 0, sizeof *s);
    snprintf(s->path, sizeof s->path, "%s/%s", dir, name);
    s->page_size = page_size;
    CHECK_EQ(sqlite3_open(s->path, &s->db), SQLITE_OK);
    char sql[128];
    snprintf(sql, sizeof sql, "PRAGMA page_size=%u", page_size);
    rt_exec(s->db, sql);
    rt_exec(s->db, "PRAGMA journal_mode=WAL");
    rt_exec(s->db, "PRAGMA synchronous=OFF");
    rt_exec(s->db, "CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INTEGER, pad BLOB)");
    rt_exec(s->db, "BEGIN");
    for (int i = 1; i <= NACCOUNTS; i++) {
        snprintf(sql, sizeof sql, "INSERT INTO accounts VALUES(%d, 1000, randomblob(%d))", i,
                 (int)(ws_test_rand_below(page_size / 4) + 10));
        rt_exec(s->db, sql);
    }
    rt_exec(s->db, "COMMIT");
    rt_exec(s->db, "PRAGMA wal_checkpoint(TRUNCATE)");
    read_image(s, &s->image);
}

static void ps_add(page_set *ps, uint32_t pgno, const uint8_t *d, uint32_t page_size) {
    if (ps->n == ps->cap) {
        ps->cap = ps->cap ? ps->cap * 2 : 64;
        ps->pgno = realloc(ps->pgno, ps->cap * sizeof *ps->pgno);
        ps->data = realloc(ps->data, (size_t)ps->cap * page_size);
        CHECK(ps->pgno && ps->data);
    }
    ps->pgno[ps->n] = pgno;
    memcpy(ps->data + (size_t)ps->n * page_size, d, page_size);
    ps->n++;
}

/* Transfers per source transaction (more pages per transaction). */
static int tx_width = 1;

/* One random transaction on the source; returns the pages it changed. */
static void src_tx(src_db *s, page_set *ps) {
    char sql[256];
    int a = 1, b;
    rt_exec(s->db, "BEGIN");
    for (int w = 0; w < tx_width; w++) {
        a = 1 + (int)ws_test_rand_below(NACCOUNTS);
        b = 1 + (int)ws_test_rand_below(NACCOUNTS);
        int amt = 1 + (int)ws_test_rand_below(50);
        snprintf(sql, sizeof sql, "UPDATE accounts SET balance=balance-%d WHERE id=%d", amt, a);
        rt_exec(s->db, sql);
        snprintf(sql, sizeof sql, "UPDATE accounts SET balance=balance+%d WHERE id=%d", amt, b);
        rt_exec(s->db, sql);
    }
    uint64_t r = ws_test_rand_below(10);
    if (r == 0) {
        snprintf(sql, sizeof sql, "UPDATE accounts SET pad=randomblob(%d) WHERE id=%d",
                 (int)ws_test_rand_below(s->page_size) + 1, a);
        rt_exec(s->db, sql);
    } else if (r == 1) {
        snprintf(sql, sizeof sql, "INSERT INTO accounts(balance,pad) VALUES(0, randomblob(%d))",
                 (int)ws_test_rand_below(s->page_size * 2) + 1);
        rt_exec(s->db, sql);
    } else if (r == 2) {
        rt_exec(s->db, "DELETE FROM accounts WHERE id IN (SELECT id FROM accounts WHERE "
                       "balance=0 AND id>" "200" " LIMIT 1)");
    }
    rt_exec(s->db, "COMMIT");
    rt_exec(s->db, "PRAGMA wal_checkpoint(TRUNCATE)");
    wsbuf now = {0};
    read_image(s, &now);
    ps->n = 0;
    uint32_t np = (uint32_t)(now.len / s->page_size), op = (uint32_t)(s->image.len / s->page_size);
    for (uint32_t p = 1; p <= np; p++) {
        const uint8_t *d = now.p + (size_t)(p - 1) * s->page_size;
        if (p <= op && memcmp(d, s->image.p + (size_t)(p - 1) * s->page_size, s->page_size) == 0)
            continue;
        ps_add(ps, p, d, s->page_size);
    }
    ps->db_pages = np;
    /* SQLite always writes page 1 on commit; keep that invariant */
    if (ps->n == 0) ps_add(ps, 1, now.p, s->page_size);
    wsbuf_free(&s->image);
    s->image = now;
}

static void rep_open(rep_db *r, const src_db *s, const char *name) {
    memset(r, 0, sizeof *r);
    snprintf(r->path, sizeof r->path, "%s/%s", dir, name);
    wserr err = {0};
    CHECK_OK(ws_write_file_atomic(r->path, s->image.p, s->image.len, &err), &err);
    CHECK_EQ(sqlite3_open_v2(r->path, &r->db, SQLITE_OPEN_READWRITE, "unix"), SQLITE_OK);
    CHECK_EQ(rt_int(r->db, "SELECT count(*) FROM sqlite_master") > 0, 1);
    CHECK_EQ(sqlite3_file_control(r->db, "main", SQLITE_FCNTL_FILE_POINTER, &r->f), SQLITE_OK);
    char wal[600];
    snprintf(wal, sizeof wal, "%s-wal", r->path);
    r->wal_fd = open(wal, O_RDWR | O_CLOEXEC);
    CHECK(r->wal_fd >= 0);
    CHECK_OK(walapp_open(r->f, r->wal_fd, s->page_size, &r->a, &err), &err);
}

static void rep_close(rep_db *r) {
    walapp_free(r->a);
    close(r->wal_fd);
    CHECK_EQ(sqlite3_close(r->db), SQLITE_OK);
}

/* Begins a hold, retrying while another connection has WRITE. */
static void rep_begin(rep_db *r, walapp_info *info) {
    wserr err = {0};
    int64_t deadline = ws_mono_ms() + 20000;
    int rc;
    while ((rc = walapp_begin(r->a, info, &err)) == WALSHIP_ERR_BUSY && ws_mono_ms() < deadline)
        ws_sleep_ms(1);
    CHECK_OK(rc, &err);
}

static void rep_tx(rep_db *r, const page_set *ps, uint32_t page_size) {
    wserr err = {0};
    for (uint32_t i = 0; i < ps->n; i++)
        CHECK_OK(walapp_page(r->a, ps->pgno[i], ps->data + (size_t)i * page_size, &err), &err);
    CHECK_OK(walapp_commit(r->a, ps->db_pages, &err), &err);
}

/* One source transaction applied and published in its own hold of WRITE. */
static void rep_apply_one(rep_db *r, src_db *src, page_set *ps, uint32_t page_size) {
    wserr err = {0};
    walapp_info info;
    rep_begin(r, &info);
    src_tx(src, ps);
    rep_tx(r, ps, page_size);
    CHECK_OK(walapp_publish(r->a, &err), &err);
    walapp_end(r->a);
}

static void rep_check_index(rep_db *r) {
    wserr err = {0};
    CHECK_OK(walapp_check_index(r->a, &err), &err);
}

/* Checkpoints the replica fully through a separate connection and compares
** it with the source. */
static void rep_compare(rep_db *r, src_db *s) {
    sqlite3 *c = NULL;
    CHECK_EQ(sqlite3_open_v2(r->path, &c, SQLITE_OPEN_READWRITE, "unix"), SQLITE_OK);
    rt_int(c, "SELECT count(*) FROM sqlite_master"); /* opens the WAL */
    int nlog = -1, nckpt = -1;
    CHECK_EQ(sqlite3_wal_checkpoint_v2(c, "main", SQLITE_CHECKPOINT_FULL, &nlog, &nckpt), SQLITE_OK);
    CHECK_EQ(nlog, nckpt);
    CHECK_EQ(rt_int(c, "SELECT sum(balance) FROM accounts"), TOTAL);
    sqlite3_close(c);
    CHECK_EQ(rt_files_equal(r->path, s->path), 0);
}

/* Ends a case: the replica, checkpointed, equals the source; all freed. */
static void case_end(rep_db *r, src_db *s, page_set *ps) {
    rep_close(r);
    rep_compare(r, s);
    free(ps->pgno);
    free(ps->data);
    wsbuf_free(&s->image);
    sqlite3_close(s->db);
}


typedef struct readers {
    pid_t pid[8];
    char result[8][600];
    int n;
    char stop[600];
} readers;

static void readers_start(readers *rd, const char *db, int ntight, int with_long) {
    memset(rd, 0, sizeof *rd);
    static int gen;
    snprintf(rd->stop, sizeof rd->stop, "%s/stop-%d", dir, ++gen);
    char total[32];
    snprintf(total, sizeof total, "%d", TOTAL);
    for (int i = 0; i < ntight + with_long; i++) {
        snprintf(rd->result[i], sizeof rd->result[i], "%s/reader-%d-%d.txt", dir, gen, i);
        rd->pid[i] = rt_spawn_self(NULL, "reader", db, rd->stop, rd->result[i], total,
                                   i == ntight ? "long" : "tight", (const char *)NULL);
        rd->n++;
    }
}

static void readers_stop(readers *rd, uint64_t min_reads) {
    rt_touch(rd->stop);
    for (int i = 0; i < rd->n; i++) rt_reader_finish(i, rd->pid[i], rd->result[i], min_reads, 0);
}

/* Many transactions, published one by one or in batches, no restart:
** the WAL grows through several hash blocks. */
static void run_growth(uint32_t page_size, int ntx) {
    src_db s;
    rep_db r;
    char sname[64], rname[64];
    snprintf(sname, sizeof sname, "src-%u.db", page_size);
    snprintf(rname, sizeof rname, "rep-%u.db", page_size);
    src_open(&s, sname, page_size);
    rep_open(&r, &s, rname);
    readers rd;
    readers_start(&rd, r.path, 2, 1);
    page_set ps = {0};
    wserr err = {0};
    uint32_t frames = 0;
    walapp_set_sync(r.a, page_size == 4096); /* the sync path once is enough */
    for (int i = 0; i < ntx;) {
        int batch = 1 + (int)ws_test_rand_below(4);
        walapp_info info;
        rep_begin(&r, &info);
        CHECK_EQ(info.hdr.mx_frame, frames);
        for (int k = 0; k < batch && i < ntx; k++, i++) {
            src_tx(&s, &ps);
            rep_tx(&r, &ps, page_size);
            frames += ps.n;
        }
        CHECK_OK(walapp_publish(r.a, &err), &err);
        walapp_end(r.a);
    }
    fprintf(stderr, "   page size %u: %d transactions, %u frames\n", page_size, ntx, frames);
    rep_check_index(&r);
    readers_stop(&rd, 1);
    case_end(&r, &s, &ps);
}

/* Sanitizer builds run everything several times slower: smaller loads
** (never below what a case needs to reach its boundaries). */
static int scale(int n) {
    const char *s = getenv("WALSHIP_SANITIZE");
    return s && *s ? n / 3 : n;
}

static void test_growth_4096(void) { run_growth(4096, scale(300)); }
static void test_growth_512_blocks(void) {
    /* more than 4,062 + 4,096 frames: three hash blocks */
    tx_width = 6;
    run_growth(512, 1100);
    tx_width = 1;
}
static void test_growth_65536(void) { run_growth(65536, scale(150)); }

/* Frames committed but rolled back (to a savepoint, or by ending the hold
** unpublished) leave no trace: the index checks clean, readers see only
** published states, and the next frames reuse the slots. */
static void test_rollback(void) {
    src_db s;
    rep_db r;
    src_open(&s, "src-rb.db", 1024);
    rep_open(&r, &s, "rep-rb.db");
    page_set ps = {0}, junk = {0};
    wserr err = {0};
    /* junk: a transaction from another database state. */
    src_db other;
    src_open(&other, "other-rb.db", 1024);
    for (int round = 0; round < 200; round++) {
        walapp_info info;
        rep_begin(&r, &info);
        walapp_savepoint sp;
        src_tx(&s, &ps);
        rep_tx(&r, &ps, 1024);
        walapp_savepoint_get(r.a, &sp);
        src_tx(&other, &junk);
        rep_tx(&r, &junk, 1024); /* committed in the hold, then dropped */
        walapp_rollback_to(r.a, &sp);
        if (round % 3 == 0) {
            /* end without publishing: everything since begin is dropped */
            walapp_end(r.a);
            rep_check_index(&r);
            rep_begin(&r, &info);
            rep_tx(&r, &ps, 1024);
        }
        CHECK_OK(walapp_publish(r.a, &err), &err);
        walapp_end(r.a);
        rep_check_index(&r);
    }
    rep_close(&r);
    rep_compare(&r, &s);
    free(ps.pgno);
    free(ps.data);
    free(junk.pgno);
    free(junk.data);
    wsbuf_free(&s.image);
    wsbuf_free(&other.image);
    sqlite3_close(s.db);
    sqlite3_close(other.db);
}

/* argv: crashwriter REPLICA PAGESIZE NFRAMES -- appends NFRAMES frames of
** junk (forcing them into the file and the index) and dies holding WRITE. */
static int crash_writer_main(int argc, char **argv) {
    if (argc < 5) return 2;
    uint32_t psz = (uint32_t)atoi(argv[3]);
    int n = atoi(argv[4]);
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(argv[2], &db, SQLITE_OPEN_READWRITE, "unix") != SQLITE_OK) return 3;
    rt_int(db, "SELECT count(*) FROM sqlite_master");
    sqlite3_file *f = NULL;
    sqlite3_file_control(db, "main", SQLITE_FCNTL_FILE_POINTER, &f);
    char wal[600];
    snprintf(wal, sizeof wal, "%s-wal", argv[2]);
    int fd = open(wal, O_RDWR);
    wal_appender *a = NULL;
    wserr err = {0};
    if (walapp_open(f, fd, psz, &a, &err) != 0) return 4;
    while (walapp_begin(a, NULL, &err) == WALSHIP_ERR_BUSY) ws_sleep_ms(1);
    uint8_t *page = calloc(1, psz);
    for (int i = 0; i < n; i++) {
        memset(page, i & 0xff, psz);
        if (walapp_page(a, 2 + (uint32_t)(i % 7), page, &err) != 0) return 5;
        if (i % 5 == 4 && walapp_commit(a, 9, &err) != 0) return 6;
    }
    fflush(stderr);
    _exit(0); /* no publish, no end: the index keeps entries past mxFrame */
}

/* A writer that died after indexing frames it never published: the next
** append must clear those entries (walCleanupHash) before reusing slots. */
static void test_stale_entries_from_dead_writer(void) {
    src_db s;
    rep_db r;
    src_open(&s, "src-stale.db", 512);
    rep_open(&r, &s, "rep-stale.db");
    readers rd;
    readers_start(&rd, r.path, 2, 0);
    page_set ps = {0};
    tx_width = 4;
    walapp_set_sync(r.a, 0);
    for (int round = 0; round < 4; round++) {
        /* some real transactions, then a dead writer leaves junk entries
        ** (enough to overflow its buffer into the file and index, across a
        ** block boundary; mxFrame itself is in block 1 by the last rounds) */
        for (int i = 0; i < 40 + round * 120; i++) rep_apply_one(&r, &s, &ps, 512);
        char n[16];
        snprintf(n, sizeof n, "%d", 9000 + round * 500);
        pid_t pid = rt_spawn_self(NULL, "crashwriter", r.path, "512", n, (const char *)NULL);
        CHECK_EQ(rt_wait(pid, 60000), 0);
        /* the junk is past mxFrame: readers do not see it */
        rep_apply_one(&r, &s, &ps, 512);
        rep_check_index(&r);
    }
    tx_width = 1;
    readers_stop(&rd, 1);
    case_end(&r, &s, &ps);
}

/* Restart rules, with readers as separate connections of this process. */
static void test_restart_rules(void) {
    src_db s;
    rep_db r;
    src_open(&s, "src-rs.db", 4096);
    rep_open(&r, &s, "rep-rs.db");
    page_set ps = {0};
    wserr err = {0};
    sqlite3 *rdr = NULL, *ck = NULL;
    CHECK_EQ(sqlite3_open_v2(r.path, &rdr, SQLITE_OPEN_READONLY, "unix"), SQLITE_OK);
    CHECK_EQ(sqlite3_open_v2(r.path, &ck, SQLITE_OPEN_READWRITE, "unix"), SQLITE_OK);
    rt_int(ck, "SELECT count(*) FROM sqlite_master"); /* opens the WAL */
    walapp_info info;
    for (int i = 0; i < 5; i++) rep_apply_one(&r, &s, &ps, 4096);
    /* not backfilled: no restart */
    rep_begin(&r, &info);
    CHECK_EQ(walapp_try_restart(r.a, &err), 0);
    walapp_end(r.a);
    /* a reader inside the WAL (mark == mxFrame) */
    rt_exec(rdr, "BEGIN");
    int64_t before = rt_int(rdr, "SELECT count(*) FROM accounts");
    int nlog, nckpt;
    CHECK_EQ(sqlite3_wal_checkpoint_v2(ck, "main", SQLITE_CHECKPOINT_PASSIVE, &nlog, &nckpt),
             SQLITE_OK);
    CHECK_EQ(nlog, nckpt); /* its mark is mxFrame, so everything is backfilled */
    rep_begin(&r, &info);
    CHECK_EQ(info.n_backfill, info.hdr.mx_frame);
    CHECK_EQ(walapp_try_restart(r.a, &err), 0); /* it holds a READ lock >= 1 */
    src_tx(&s, &ps);
    rep_tx(&r, &ps, 4096);
    CHECK_OK(walapp_publish(r.a, &err), &err);
    walapp_end(r.a);
    CHECK_EQ(rt_int(rdr, "SELECT count(*) FROM accounts"), before);
    rt_exec(rdr, "COMMIT");
    CHECK_EQ(sqlite3_wal_checkpoint_v2(ck, "main", SQLITE_CHECKPOINT_PASSIVE, &nlog, &nckpt),
             SQLITE_OK);
    /* a reader that started after the full backfill reads the database
    ** file only (READ0) and does not block a restart */
    rt_exec(rdr, "BEGIN");
    uint64_t h0 = 0, h1 = 0;
    CHECK_EQ(rt_table_hash(rdr, "accounts", &h0), 0);
    rep_begin(&r, &info);
    uint32_t old_salt1 = walidx_salt1(&info.hdr);
    CHECK_EQ(walapp_try_restart(r.a, &err), 1);
    CHECK_EQ(walapp_hdr(r.a)->mx_frame, 0);
    uint32_t s1, s2;
    walapp_salts(r.a, &s1, &s2);
    CHECK_EQ(s1, old_salt1 + 1);
    for (int i = 0; i < 3; i++) {
        src_tx(&s, &ps);
        rep_tx(&r, &ps, 4096);
    }
    CHECK_OK(walapp_publish(r.a, &err), &err);
    walapp_end(r.a);
    CHECK_EQ(rt_table_hash(rdr, "accounts", &h1), 0);
    CHECK_U64_EQ(h0, h1);
    rt_exec(rdr, "COMMIT");
    rep_check_index(&r);
    sqlite3_close(rdr);
    sqlite3_close(ck);
    case_end(&r, &s, &ps);
}

/* argv: checkpointer DB STOPFILE -- checkpoints in a loop (PASSIVE, FULL,
** RESTART, TRUNCATE in turn) from a separate process, as an application
** that reads the replica might. (RESTART and TRUNCATE need a read-write
** connection: with mode=ro, SQLite cannot truncate the WAL.) */
static int checkpointer_main(int argc, char **argv) {
    if (argc < 4) return 2;
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(argv[2], &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) return 3;
    sqlite3_busy_timeout(db, 20);
    if (sqlite3_exec(db, "SELECT count(*) FROM sqlite_master", NULL, NULL, NULL) != SQLITE_OK)
        return 3; /* opens the WAL: a checkpoint needs it */
    static const int modes[] = {SQLITE_CHECKPOINT_PASSIVE, SQLITE_CHECKPOINT_FULL,
                                SQLITE_CHECKPOINT_RESTART, SQLITE_CHECKPOINT_TRUNCATE};
    unsigned long n = 0, ok = 0;
    while (!rt_exists(argv[3])) {
        int nlog, nckpt;
        int rc = sqlite3_wal_checkpoint_v2(db, "main", modes[n % 4], &nlog, &nckpt);
        if (rc == SQLITE_OK) ok++;
        else if (rc != SQLITE_BUSY) {
            fprintf(stderr, "checkpointer: %s\n", sqlite3_errmsg(db));
            return 4;
        }
        n++;
        ws_sleep_ms(10 + (int)(n % 7) * 5);
    }
    sqlite3_close(db);
    fprintf(stderr, "   checkpointer: %lu checkpoints, %lu ok\n", n, ok);
    return 0;
}

/* Another process checkpoints (including RESTART and TRUNCATE) while the
** appender restarts and appends; readers loop throughout. */
static void test_concurrent_checkpoints(void) {
    src_db s;
    rep_db r;
    src_open(&s, "src-cc.db", 4096);
    rep_open(&r, &s, "rep-cc.db");
    readers rd;
    readers_start(&rd, r.path, 2, 0);
    char stop[600];
    snprintf(stop, sizeof stop, "%s/stop-ckpt", dir);
    pid_t ck = rt_spawn_self(NULL, "checkpointer", r.path, stop, (const char *)NULL);
    page_set ps = {0};
    wserr err = {0};
    int restarts = 0, truncated = 0, backfilled = 0;
    /* a few hundred transactions, then until both kinds of restart were
    ** seen (bounded) */
    for (int i = 0; i < scale(400) || ((restarts < 2 || truncated < 1) && i < 6000); i++) {
        walapp_info info;
        rep_begin(&r, &info);
        if (info.hdr.mx_frame == 0 && i > 0) truncated++;
        src_tx(&s, &ps);
        rep_tx(&r, &ps, 4096);
        CHECK_OK(walapp_publish(r.a, &err), &err);
        walapp_end(r.a);
        if (i % 50 == 0) rep_check_index(&r);
        if (i % 20 != 19) continue;
        /* The replica's checkpoint phase: readers that began before the
        ** last publish pin older frames for a moment; new ones do not.
        ** Retry the passive checkpoint, then the restart, for a few
        ** milliseconds, never longer. */
        int64_t until = ws_mono_ms() + 50;
        uint32_t nb = 0;
        walidx_hdr h;
        for (;;) {
            int nlog, nckpt;
            sqlite3_wal_checkpoint_v2(r.db, "main", SQLITE_CHECKPOINT_PASSIVE, &nlog, &nckpt);
            if (walapp_peek(r.a, &h, &nb) == 0 && nb == h.mx_frame) break;
            if (ws_mono_ms() > until) break;
            ws_sleep_ms(1);
        }
        if (nb != h.mx_frame || walapp_begin(r.a, &info, &err) != 0) continue;
        if (info.n_backfill == info.hdr.mx_frame) backfilled++;
        int rs;
        until = ws_mono_ms() + 30;
        while ((rs = walapp_try_restart(r.a, &err)) == 0 && ws_mono_ms() < until) ws_sleep_ms(1);
        CHECK(rs >= 0);
        restarts += rs;
        walapp_end(r.a);
    }
    rt_touch(stop);
    CHECK_EQ(rt_wait(ck, 30000), 0);
    fprintf(stderr,
            "   %d restarts by the appender, %d WALs truncated by the checkpointer, %d fully "
            "backfilled\n",
            restarts, truncated, backfilled);
    CHECK(restarts > 0);
    CHECK(truncated > 0);
    readers_stop(&rd, 1);
    rep_check_index(&r);
    case_end(&r, &s, &ps);
}

/* Every connection closes (SQLite checkpoints and deletes the WAL), or the
** shared memory is lost: what SQLite rebuilds from the WAL file alone is
** the last published state. */
static void test_recovery_from_wal(void) {
    src_db s;
    rep_db r;
    src_open(&s, "src-rec.db", 4096);
    rep_open(&r, &s, "rep-rec.db");
    page_set ps = {0};
    for (int i = 0; i < 50; i++) rep_apply_one(&r, &s, &ps, 4096);
    /* Drop the wal-index: copy db+wal aside and open the copy cold. */
    char cdb[700], cwal[700], wal[700];
    snprintf(cdb, sizeof cdb, "%s/cold.db", dir);
    snprintf(cwal, sizeof cwal, "%s/cold.db-wal", dir);
    snprintf(wal, sizeof wal, "%s-wal", r.path);
    CHECK_EQ(ws_test_system("cp '%s' '%s' && cp '%s' '%s'", r.path, cdb, wal, cwal), 0);
    sqlite3 *c = NULL;
    CHECK_EQ(sqlite3_open_v2(cdb, &c, SQLITE_OPEN_READWRITE, "unix"), SQLITE_OK);
    CHECK_EQ(rt_int(c, "SELECT sum(balance) FROM accounts"), TOTAL);
    rt_exec(c, "PRAGMA wal_checkpoint(TRUNCATE)");
    sqlite3_close(c);
    CHECK_EQ(rt_files_equal(cdb, s.path), 0);
    case_end(&r, &s, &ps);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "reader") == 0) return rt_reader_main(argc, argv);
    if (argc > 1 && strcmp(argv[1], "crashwriter") == 0) return crash_writer_main(argc, argv);
    if (argc > 1 && strcmp(argv[1], "checkpointer") == 0) return checkpointer_main(argc, argv);
    dir = ws_test_tmpdir();
    ws_test_seed(4);
    RUN(test_growth_4096);
    RUN(test_growth_512_blocks);
    RUN(test_growth_65536);
    RUN(test_rollback);
    RUN(test_stale_entries_from_dead_writer);
    RUN(test_restart_rules);
    RUN(test_concurrent_checkpoints);
    RUN(test_recovery_from_wal);
    return 0;
}
