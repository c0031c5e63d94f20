/*
** test_restore_checks.c -- every check a restore makes on what it applies
** has an object that only that check catches.
**
** The objects are crafted with the format writers (format/segment.c,
** snapshot.c) from a made-up page history whose rolling checksums are
** computed here, independently: correct framing, valid zstd, correct
** trailer and index checksums -- but wrong where it counts:
**
**   tx-checksum   a segment whose transaction writes one page that is not
**                 the history's, while the recorded rolling checksum is the
**                 history's: "does not produce its recorded checksum"
**   disagrees     a segment that starts before the current TXID and whose
**                 copy of that transaction belongs to another history:
**                 "disagrees with the history before it"
**   no-follow     a segment whose header's checksum before it is not the
**                 one after the transaction before it: "does not follow"
**   snap-checksum a snapshot with one page changed under its footer's
**                 checksum: "does not match its checksum"
**   gap           a chain missing a TXID: "no segment holds transaction N"
**   foreign       a segment of another database in the generation: "not
**                 part of this history"
** Each makes the restore of the latest state fail with its branch's
** message, the object's key and the newest TXID that can be restored, and
** leaves nothing at the output path (nor touches a file already there).
** With another object holding the same transactions, each is routed
** around instead, byte-exact: at the first transaction of a segment, after
** some of its transactions were applied (the build starts over without
** it), and for a snapshot (an older one is used). Restores to a TXID and
** to a time (the cut inside a segment) are byte-exact too. Failures are
** checked through the CLI; successes through the library (ws_restore with
** no database check: the images are page histories, not SQLite files).
**
** ctest-labels: restore trust
** ctest-timeout: 120
*/
#include "common/log.h"
#include "trust_testlib.h"

#define PS         1024
#define MAXP       48
#define NTX        13 /* transactions 1 (the snapshot) .. NTX */
#define GEN        0x000661bd00000000ull
#define DBID       0x1111222233334444ull
#define OTHER_DBID 0x5555666677778888ull
#define T0_MS      1780000000000ll

/* A page history: the image after each transaction. */
typedef struct hist {
    uint32_t npages[NTX + 1];
    uint8_t img[NTX + 1][MAXP][PS];
    uint64_t chk[NTX + 1];
    int nw[NTX + 1];
    uint32_t w[NTX + 1][4]; /* pages each transaction writes */
} hist;

static hist h, branch;
static const char *root;

static uint64_t image_chk(const hist *x, int t) {
    uint64_t c = 0;
    for (uint32_t p = 1; p <= x->npages[t]; p++)
        c ^= ws_page_hash(p, x->img[t][p - 1], PS);
    return c;
}

/* Transactions from..NTX of x: each writes 1-3 pages, sometimes one more
** (growth), sometimes the database shrinks by one. */
static void make_history(hist *x, int from) {
    if (from == 1) {
        x->npages[1] = 8;
        ws_test_rand_bytes(x->img[1], sizeof x->img[1]);
        for (uint32_t p = 9; p <= MAXP; p++)
            memset(x->img[1][p - 1], 0, PS);
        x->chk[1] = image_chk(x, 1);
        from = 2;
    }
    for (int t = from; t <= NTX; t++) {
        memcpy(x->img[t], x->img[t - 1], sizeof x->img[t]);
        uint32_t n = x->npages[t - 1];
        int kind = (int)ws_test_rand_below(6);
        if (kind == 0 && n < MAXP) n++; /* grows: the new page is written below */
        if (kind == 1 && n > 4) {       /* shrinks */
            memset(x->img[t][n - 1], 0, PS);
            n--;
        }
        x->npages[t] = n;
        x->nw[t] = 1 + (int)ws_test_rand_below(3);
        for (int i = 0; i < x->nw[t]; i++) {
            uint32_t p = i == 0 && kind == 0 ? n : 1 + (uint32_t)ws_test_rand_below(n);
            x->w[t][i] = p;
            ws_test_rand_bytes(x->img[t][p - 1], PS);
        }
        x->chk[t] = image_chk(x, t);
    }
}

static store *open_store(const char *name, char *url, size_t n) {
    snprintf(url, n, "file://%s/%s", root, name);
    store *st = NULL;
    wserr e = {0};
    CHECK_OK(store_open(url, &st, &e), &e);
    return st;
}

static int tmp_fd(void) {
    char p[1100];
    snprintf(p, sizeof p, "%s/obj.tmp", root);
    int fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0);
    unlink(p);
    return fd;
}

static void put_fd(store *st, const char *key, int fd) {
    wserr e = {0};
    CHECK(lseek(fd, 0, SEEK_SET) == 0);
    CHECK_OK(store_put_fd(st, key, fd, 0, &e), &e);
    close(fd);
}

/* How an object departs from the history. */
typedef struct tweak {
    uint64_t db_id;   /* 0: DBID */
    int bad_tx;       /* this transaction's last page is changed; its checksum is the history's */
    uint64_t pre_xor; /* XOR-ed into the header's checksum before */
    int bad_page;     /* snapshot: this page changed under the footer's checksum */
} tweak;

static const tweak none;

/* Puts segment [a, b] of x. */
static void put_segment(store *st, const hist *x, int a, int b, const tweak *tw, char *key,
                        size_t keyn) {
    int fd = tmp_fd();
    wserr e = {0};
    seg_writer *w = NULL;
    CHECK_OK(seg_writer_open(fd, PS, tw->db_id ? tw->db_id : DBID, GEN, (uint64_t)a,
                             x->chk[a - 1] ^ tw->pre_xor, x->npages[a - 1], 3, &w, &e),
             &e);
    for (int t = a; t <= b; t++) {
        CHECK_OK(seg_writer_begin_tx(w, (uint64_t)t, &e), &e);
        for (int i = 0; i < x->nw[t]; i++) {
            uint8_t page[PS];
            memcpy(page, x->img[t][x->w[t][i] - 1], PS);
            if (t == tw->bad_tx && i == x->nw[t] - 1)
                page[PS / 2] ^= 0x40; /* the last write wins */
            CHECK_OK(seg_writer_page(w, x->w[t][i], page, &e), &e);
        }
        CHECK_OK(seg_writer_commit_tx(w, (uint64_t)t, T0_MS + t * 60000ll, x->npages[t],
                                      (uint32_t)x->nw[t], x->chk[t], &e),
                 &e);
    }
    ws_walpos pos = {0};
    CHECK_OK(seg_writer_finish(w, &pos, NULL, &e), &e);
    seg_writer_free(w);
    seg_key(key, keyn, GEN, (uint64_t)a, (uint64_t)b);
    put_fd(st, key, fd);
}

/* Puts the snapshot of x at transaction t. */
static void put_snapshot(store *st, const hist *x, int t, const tweak *tw, char *key, size_t keyn) {
    int fd = tmp_fd();
    wserr e = {0};
    snap_writer *w = NULL;
    CHECK_OK(snap_writer_open(fd, PS, tw->db_id ? tw->db_id : DBID, GEN, 3, &w, &e), &e);
    uint8_t pages[MAXP][PS];
    memcpy(pages, x->img[t], sizeof pages);
    if (tw->bad_page) pages[tw->bad_page - 1][7] ^= 1;
    CHECK_OK(snap_writer_base(w, 1, x->npages[t], &pages[0][0], &e), &e);
    ws_walpos pos = {0};
    CHECK_OK(
        snap_writer_finish(w, (uint64_t)t, T0_MS + t * 60000ll, x->npages[t], x->chk[t], &pos, &e),
        &e);
    snap_writer_free(w);
    snap_key(key, keyn, GEN, (uint64_t)t);
    put_fd(st, key, fd);
}

/* Nonzero if the file at path is exactly x's image after transaction t. */
static int is_image(const hist *x, int t, const char *path) {
    wsbuf b = {0};
    int ok = ws_read_file(path, 1 << 24, &b, NULL) == 0 && b.len == (size_t)x->npages[t] * PS &&
             memcmp(b.p, x->img[t], b.len) == 0;
    wsbuf_free(&b);
    return ok;
}

/* Warnings the library logs while this process restores (a log sink: the
** images here are page histories, not SQLite databases, so they are
** restored with the library, which checks every checksum but runs no SQL;
** the CLI would also judge them as databases). */
static char warnings[16384];
static size_t nwarnings;

static void keep_warning(int level, const char *line) {
    (void)level;
    size_t n = strlen(line);
    if (nwarnings + n + 2 < sizeof warnings) {
        memcpy(warnings + nwarnings, line, n);
        nwarnings += n;
        warnings[nwarnings++] = '\n';
        warnings[nwarnings] = '\0';
    }
}

/* Restores url to transaction txid (0: the latest) or time ms; the image
** must be x's after transaction t, and `warn` (if not NULL) must have been
** logged. */
static void expect_image(const char *url, uint64_t txid, int64_t ms, const hist *x, int t,
                         const char *warn) {
    char out[1200], msg[1024];
    snprintf(out, sizeof out, "%s/restored.db", root);
    nwarnings = 0;
    warnings[0] = '\0';
    int rc = db_restore(url, out, txid ? 1 : ms ? 2 : 0, txid, ms, msg, sizeof msg);
    if (rc != 0) ws_test_fail(__FILE__, __LINE__, "restore of %s failed: %s", url, msg);
    if (!is_image(x, t, out))
        ws_test_fail(__FILE__, __LINE__, "restore of %s is not the image after transaction %d: %s",
                     url, t, warnings);
    if (warn) CHECK_CONTAINS(warnings, warn);
    unlink(out);
}

static void expect_restores(const char *url, const hist *x, int t, const char *warn) {
    expect_image(url, 0, 0, x, t, warn);
}

/* The latest state does not restore: the message holds what, key, and the
** fix (--txid good; 0: none, no snapshot to start from); nothing is left at the output path, and a
*file already
** there keeps its bytes. */
static void expect_refused(const char *name, const char *url, const char *what, const char *key,
                           uint64_t good) {
    char dir[1100], out[1200], fix[64], msg[1024];
    snprintf(dir, sizeof dir, "%s/%s-out", root, name);
    snprintf(out, sizeof out, "%s/restored.db", dir);
    snprintf(fix, sizeof fix, "--txid %" PRIu64 ")", good);
    CHECK_EQ(ws_test_system("mkdir -p '%s'", dir), 0);
    int rc = tt_run(NULL, "restore", url, "-o", out, "--quiet", (const char *)NULL);
    if (rc == 0) ws_test_fail(__FILE__, __LINE__, "%s: restore succeeded: %s", name, tt_errout);
    CHECK_CONTAINS(tt_errout, what);
    CHECK_CONTAINS(tt_errout, key);
    if (good) CHECK_CONTAINS(tt_errout, fix);
    if (!tt_dir_empty(dir)) ws_test_fail(__FILE__, __LINE__, "%s: the restore left a file", name);
    FILE *f = fopen(out, "wb");
    CHECK(f != NULL);
    fputs("precious", f);
    fclose(f);
    rc = db_restore(url, out, 0, 0, 0, msg, sizeof msg);
    CHECK(rc == WALSHIP_ERR_CORRUPT || rc == WALSHIP_ERR_NOTFOUND);
    CHECK_CONTAINS(msg, what);
    CHECK_EQ(db_file_size(out), 8);
    CHECK_EQ(unlink(out), 0);
    CHECK(tt_dir_empty(dir));
}

/* A store: the snapshot at 1 and segments [2,4] [5,7] [8,10] [11,NTX], with
** `tw` applied to the one starting at `at` (0: none). Keys of the
** snapshot and the tweaked segment come back. */
static void standard_store(store *st, const tweak *tw, int at, char *snap, char *tkey) {
    static const int ranges[][2] = {{2, 4}, {5, 7}, {8, 10}, {11, NTX}};
    char key[300];
    put_snapshot(st, &h, 1, at == 1 ? tw : &none, snap, 300);
    for (int i = 0; i < 4; i++) {
        put_segment(st, &h, ranges[i][0], ranges[i][1], ranges[i][0] == at ? tw : &none, key,
                    sizeof key);
        if (ranges[i][0] == at) snprintf(tkey, 300, "%s", key);
    }
}

static void test_good(void) {
    char url[1100], snap[300], key[300];
    store *st = open_store("good", url, sizeof url);
    standard_store(st, &none, 0, snap, key);
    store_free(st);
    expect_restores(url, &h, NTX, NULL);
    expect_image(url, 6, 0, &h, 6, NULL);
    /* the time falls inside segment [5,7]: cut after transaction 6 */
    expect_image(url, 0, T0_MS + 6 * 60000ll + 30000, &h, 6, NULL);
}

/* A segment [5,7] whose transaction bad_tx is wrong: refused (the newest
** restorable TXID is good); with [5,6] and [7,7] beside it, the restore is
** routed around them, with the warning `warn`. */
static void tx_checksum_case(const char *name, int bad_tx, uint64_t good, const char *warn) {
    char url[1100], snap[300], key[300], alt[300];
    tweak tw = {.bad_tx = bad_tx};
    store *st = open_store(name, url, sizeof url);
    standard_store(st, &tw, 5, snap, key);
    expect_refused(name, url, "does not produce its recorded checksum", key, good);
    put_segment(st, &h, 5, 6, &none, alt, sizeof alt);
    put_segment(st, &h, 7, 7, &none, alt, sizeof alt);
    store_free(st);
    expect_restores(url, &h, NTX, warn);
}

static void test_tx_checksum(void) {
    tx_checksum_case("tx-checksum", 5, 4, "restore_route_around");
    /* the bad transaction is the segment's last: 5 and 6 came from it before
    ** it failed, so the build starts over without it */
    tx_checksum_case("tx-checksum-late", 7, 6, "restore_start_over");
}

static void test_disagrees(void) {
    char url[1100], snap[300], key[300], k2[300];
    store *st = open_store("disagrees", url, sizeof url);
    put_snapshot(st, &h, 1, &none, snap, sizeof snap);
    put_segment(st, &h, 2, 4, &none, k2, sizeof k2);
    put_segment(st, &branch, 4, 7, &none, key, sizeof key); /* its 4 is not ours */
    store_free(st);
    expect_refused("disagrees", url, "disagrees with the history before it at TXID 4", key, 4);
}

static void test_no_follow(void) {
    char url[1100], snap[300], key[300];
    tweak tw = {.pre_xor = 0x100};
    store *st = open_store("no-follow", url, sizeof url);
    standard_store(st, &tw, 8, snap, key);
    store_free(st);
    expect_refused("no-follow", url, "does not follow transaction 7", key, 7);
}

static void test_snapshot_checksum(void) {
    char url[1100], snap[300], key[300], old[300];
    tweak tw = {.bad_page = 3};
    store *st = open_store("snap-checksum", url, sizeof url);
    standard_store(st, &tw, 1, snap, key);
    store_free(st);
    expect_refused("snap-checksum", url, "does not match its checksum", snap, 0);
    /* a damaged newer snapshot: an older one and the segments are used */
    st = open_store("snap-newer", url, sizeof url);
    standard_store(st, &none, 0, old, key);
    put_snapshot(st, &h, 10, &tw, snap, sizeof snap);
    store_free(st);
    expect_restores(url, &h, NTX, snap);
}

static void test_gap(void) {
    char url[1100], snap[300], key[300], want[64];
    store *st = open_store("gap", url, sizeof url);
    put_snapshot(st, &h, 1, &none, snap, sizeof snap);
    put_segment(st, &h, 2, 4, &none, key, sizeof key);
    put_segment(st, &h, 6, NTX, &none, key, sizeof key);
    store_free(st);
    snprintf(want, sizeof want, "%016" PRIx64, (uint64_t)GEN);
    expect_refused("gap", url, "no segment holds transaction 5 of generation", want, 4);
}

static void test_foreign_segment(void) {
    char url[1100], snap[300], key[300], alt[300];
    tweak tw = {.db_id = OTHER_DBID};
    store *st = open_store("foreign", url, sizeof url);
    standard_store(st, &tw, 5, snap, key);
    expect_refused("foreign", url, "not part of this history", key, 4);
    CHECK_CONTAINS(tt_errout, "5555666677778888");
    put_segment(st, &h, 5, 6, &none, alt, sizeof alt);
    put_segment(st, &h, 7, 7, &none, alt, sizeof alt);
    store_free(st);
    expect_restores(url, &h, NTX, key);
}

int main(int argc, char **argv) {
    tt_only = argc > 1 ? argv[1] : NULL;
    ws_test_seed(20261209);
    root = ws_test_tmpdir();
    ws_log_set_sink(keep_warning, WS_LOG_WARN);
    make_history(&h, 1);
    memcpy(&branch, &h, sizeof h);
    make_history(&branch, 4); /* the same up to 3, then another history */
    CHECK(branch.chk[4] != h.chk[4]);
    TT_CASE(test_good);
    TT_CASE(test_tx_checksum);
    TT_CASE(test_disagrees);
    TT_CASE(test_no_follow);
    TT_CASE(test_snapshot_checksum);
    TT_CASE(test_gap);
    TT_CASE(test_foreign_segment);
    return 0;
}
