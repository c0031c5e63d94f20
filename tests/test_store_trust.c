/*
** test_store_trust.c -- restore, verify and `walship generations` do not
** take the store's word for what an object is (issue 7, item 4).
**
** A file:// store is filled through the walship VFS (a snapshot and a chain
** of segments), then copied once per case, and the copy is tampered with:
**
**   not ours (ignored with a warning naming the key; the real latest state
**   is restored, verified, and listed):
**     - a directory generations/ffffffffffffffff/ holding a copy of an old
**       snapshot (an impossible generation id), and the same under a
**       possible id (its footer names another generation);
**     - another database's newer generation copied under the prefix, while
**       `owner` names this database (and, the other way round, accepted
**       once `owner` lists that database as a previous owner);
**     - a 1-byte ffffffffffffffff.snap in the generation (a TXID that would
**       wrap), a 0000...0000.snap, a segment named last..first;
**     - a copy of an old segment named as if it held newer transactions.
**   ours but damaged (restore and verify fail naming the object and the
**   newest TXID that can be restored; that --txid works; nothing is left
**   at the output path):
**     - a 1-byte snapshot named past the last transaction;
**     - a fifo, an empty directory, and a directory with a file in it,
**       each named like the last segment (file:// lists them now);
**   told apart (catalog_object_gone): an object deleted since the listing
**     (retention, say) is gone, not damage; one still listed but not a
**     regular file is damage (a replica counts only damage in
**     corrupt_objects);
**   routed around (restored, with a warning):
**     - a garbage segment named to span two real ones (the chain prefers
**       it): the real ones are used instead.
**
** ctest-labels: pipeline trust
** ctest-timeout: 300
*/
#include <sys/stat.h>

#include "restore/catalog.h"
#include "store/store.h"
#include "trust_testlib.h"

static const char *root;
static tt_store pristine, other;

/* The real latest state is restored and verified, and `generations` lists
** only the real generation; warn (if not NULL) appears on stderr of each
** (of `generations` too unless the object is one only a restore reads). */
static int listing_warns = 1;
static void expect_latest(const tt_store *s, const char *name, const char *warn,
                          const char *not_listed) {
    char out[1200];
    snprintf(out, sizeof out, "%s/%s/out.db", root, name);
    int rc = tt_run(NULL, "restore", s->url, "-o", out, "--quiet", (const char *)NULL);
    if (rc != 0) ws_test_fail(__FILE__, __LINE__, "%s: restore failed: %s", name, tt_errout);
    CHECK_EQ(tt_rows(out), pristine.rows);
    char want[64];
    snprintf(want, sizeof want, "transaction %" PRIu64 " ", pristine.last_txid);
    CHECK_CONTAINS(tt_errout, want);
    if (warn) CHECK_CONTAINS(tt_errout, warn);

    rc = tt_run(NULL, "verify", s->url, "--quiet", (const char *)NULL);
    if (rc != 0) ws_test_fail(__FILE__, __LINE__, "%s: verify failed: %s", name, tt_errout);
    snprintf(want, sizeof want, "ok: transaction %" PRIu64 " ", pristine.last_txid);
    CHECK_CONTAINS(tt_out, want);
    if (warn) CHECK_CONTAINS(tt_errout, warn);

    rc = tt_run(NULL, "generations", s->url, (const char *)NULL);
    if (rc != 0) ws_test_fail(__FILE__, __LINE__, "%s: generations failed: %s", name, tt_errout);
    char gen[32], range[64];
    snprintf(gen, sizeof gen, "%016" PRIx64, pristine.gen);
    snprintf(range, sizeof range, "..%" PRIu64 " ", pristine.last_txid);
    CHECK_CONTAINS(tt_out, gen);
    CHECK_CONTAINS(tt_out, range);
    if (not_listed && strstr(tt_out, not_listed) != NULL)
        ws_test_fail(__FILE__, __LINE__, "%s: generations lists %s: %s", name, not_listed, tt_out);
    if (warn && listing_warns) CHECK_CONTAINS(tt_errout, warn);
}

/* Restore and verify of the latest state fail naming needle and the fix
** (--txid good); nothing is left at the output; --txid good restores. */
static void expect_refused(const tt_store *s, const char *name, const char *needle, uint64_t good) {
    char dir[1100], out[1200], fix[64];
    snprintf(dir, sizeof dir, "%s/%s/out", root, name);
    snprintf(out, sizeof out, "%s/restored.db", dir);
    snprintf(fix, sizeof fix, "--txid %" PRIu64 ")", good);
    CHECK_EQ(ws_test_system("mkdir -p '%s'", dir), 0);
    int rc = tt_run(NULL, "restore", s->url, "-o", out, "--quiet", (const char *)NULL);
    if (rc == 0) ws_test_fail(__FILE__, __LINE__, "%s: restore succeeded: %s", name, tt_errout);
    CHECK_CONTAINS(tt_errout, needle);
    CHECK_CONTAINS(tt_errout, fix);
    if (!tt_dir_empty(dir))
        ws_test_fail(__FILE__, __LINE__, "%s: a failed restore left files", name);
    rc = tt_run(NULL, "verify", s->url, "--quiet", (const char *)NULL);
    if (rc == 0) ws_test_fail(__FILE__, __LINE__, "%s: verify succeeded: %s", name, tt_out);
    CHECK_CONTAINS(tt_errout, needle);
    char txid[32];
    snprintf(txid, sizeof txid, "%" PRIu64, good);
    rc = tt_run(NULL, "restore", s->url, "-o", out, "--txid", txid, "--quiet", (const char *)NULL);
    if (rc != 0)
        ws_test_fail(__FILE__, __LINE__, "%s: restore --txid %s failed: %s", name, txid, tt_errout);
    CHECK(tt_rows(out) > 0);
}

/* Puts a copy of file `from` (a path) at key in s. */
static void put_copy(const tt_store *s, const char *from, const char *key) {
    char to[2400];
    tt_path(s, key, to, sizeof to);
    CHECK_EQ(ws_test_system("mkdir -p \"$(dirname '%s')\" && cp '%s' '%s'", to, from, to), 0);
}

static void put_bytes(const tt_store *s, const char *key, const char *bytes) {
    char to[2400];
    tt_path(s, key, to, sizeof to);
    CHECK_EQ(ws_test_system("mkdir -p \"$(dirname '%s')\" && printf '%s' > '%s'", to, bytes, to),
             0);
}

static void test_bogus_generation_dirs(void) {
    tt_store s;
    char snap[2400], key[300];
    tt_path(&pristine, pristine.snap, snap, sizeof snap);
    const char *snapname = strrchr(pristine.snap, '/') + 1;

    tt_copy(&pristine, root, "gen-ffff", &s);
    snprintf(key, sizeof key, "generations/ffffffffffffffff/snapshots/%s", snapname);
    put_copy(&s, snap, key);
    expect_latest(&s, "gen-ffff", "generations/ffffffffffffffff/snapshots/", "ffffffffffffffff");

    tt_copy(&pristine, root, "gen-copy", &s);
    snprintf(key, sizeof key, "generations/7ffffffffffffff0/snapshots/%s", snapname);
    put_copy(&s, snap, key);
    expect_latest(&s, "gen-copy", "its footer says generation", "7ffffffffffffff0");
}

static void copy_generation(const tt_store *from, const tt_store *to) {
    CHECK_EQ(ws_test_system("cp -a '%s/generations/%016" PRIx64 "' '%s/generations/'", from->dir,
                            from->gen, to->dir),
             0);
}

static void test_foreign_generation(void) {
    CHECK(other.gen > pristine.gen); /* it would be "latest" */
    CHECK(other.db_id != pristine.db_id && other.db_id != 0);
    char gen[32];
    snprintf(gen, sizeof gen, "%016" PRIx64, other.gen);
    tt_store s;
    tt_copy(&pristine, root, "foreign", &s);
    copy_generation(&other, &s);
    tt_put_owner(s.url, pristine.db_id, 0);
    expect_latest(&s, "foreign", gen, gen);

    /* The other database owning the destination before this one: its
    ** history is this destination's (its newer generation is the latest). */
    tt_put_owner(s.url, pristine.db_id, other.db_id);
    char out[1200];
    snprintf(out, sizeof out, "%s/foreign/lineage.db", root);
    CHECK_EQ(tt_run(NULL, "restore", s.url, "-o", out, "--quiet", (const char *)NULL), 0);
    CHECK_EQ(tt_rows(out), other.rows);
    CHECK_CONTAINS(tt_errout, gen);
}

static void test_impossible_names(void) {
    tt_store s;
    char key[300], from[2400];
    tt_copy(&pristine, root, "names", &s);
    snprintf(key, sizeof key, "generations/%016" PRIx64 "/snapshots/ffffffffffffffff.snap",
             pristine.gen);
    put_bytes(&s, key, "x");
    snprintf(key, sizeof key, "generations/%016" PRIx64 "/snapshots/0000000000000000.snap",
             pristine.gen);
    put_bytes(&s, key, "x");
    snprintf(key, sizeof key,
             "generations/%016" PRIx64 "/segments/%016" PRIx64 "-%016" PRIx64 ".seg", pristine.gen,
             pristine.last_txid + 9, pristine.last_txid + 2);
    tt_path(&pristine, pristine.seg[0], from, sizeof from);
    put_copy(&s, from, key);
    expect_latest(&s, "names", "ffffffffffffffff.snap", "18446744073709551615");
    CHECK_CONTAINS(tt_errout, "0000000000000000.snap");
}

static void test_old_segment_renamed_newer(void) {
    tt_store s;
    char key[300], from[2400];
    tt_copy(&pristine, root, "renamed", &s);
    snprintf(key, sizeof key,
             "generations/%016" PRIx64 "/segments/%016" PRIx64 "-%016" PRIx64 ".seg", pristine.gen,
             pristine.last_txid + 1, pristine.last_txid + 3);
    tt_path(&pristine, pristine.seg[1], from, sizeof from);
    put_copy(&s, from, key);
    expect_latest(&s, "renamed", key, NULL);
    CHECK_CONTAINS(tt_errout, "its header says transactions");
}

static void test_damaged_newest_snapshot(void) {
    tt_store s;
    char key[300];
    tt_copy(&pristine, root, "snap-past", &s);
    snprintf(key, sizeof key, "generations/%016" PRIx64 "/snapshots/%016" PRIx64 ".snap",
             pristine.gen, pristine.last_txid + 5);
    put_bytes(&s, key, "x");
    expect_refused(&s, "snap-past", key, pristine.last_txid);
}

/* The last segment replaced by something that is not a file. */
static void test_unreadable_last_segment(void) {
    const char *kinds[] = {"fifo", "emptydir", "dir"};
    int last = pristine.nsegs - 1;
    for (int i = 0; i < 3; i++) {
        tt_store s;
        char name[64], p[2400];
        snprintf(name, sizeof name, "last-%s", kinds[i]);
        tt_copy(&pristine, root, name, &s);
        tt_path(&s, pristine.seg[last], p, sizeof p);
        CHECK_EQ(unlink(p), 0);
        if (i == 0) {
            CHECK_EQ(mkfifo(p, 0644), 0);
        } else {
            CHECK_EQ(mkdir(p, 0755), 0);
            if (i == 2) CHECK_EQ(ws_test_system("echo junk > '%s/junk'", p), 0);
        }
        fprintf(stderr, "   %s\n", name);
        expect_refused(&s, name, pristine.seg[last], pristine.first[last] - 1);
    }
}

/* A garbage object named to span two real segments: the chain takes it
** first (it reaches furthest), finds it damaged and uses the real ones. */
static void test_routed_around(void) {
    tt_store s;
    char key[300], p[2400];
    tt_copy(&pristine, root, "around", &s);
    int k = 1;
    CHECK(pristine.nsegs > k + 1);
    snprintf(key, sizeof key,
             "generations/%016" PRIx64 "/segments/%016" PRIx64 "-%016" PRIx64 ".seg", pristine.gen,
             pristine.first[k], pristine.last[k + 1]);
    tt_path(&s, key, p, sizeof p);
    tt_garbage(p, 1 << 20, 4096);
    listing_warns = 0; /* only a restore reads that far */
    expect_latest(&s, "around", key, NULL);
    listing_warns = 1;
    CHECK_EQ(tt_run(NULL, "verify", s.url, "--quiet", (const char *)NULL), 0);
    CHECK_CONTAINS(tt_errout, "not a walship segment");
    CHECK_CONTAINS(tt_errout, "restore_route_around");
}

static void test_gone_or_damaged(void) {
    tt_store s;
    char p[2400];
    tt_copy(&pristine, root, "gone", &s);
    store *st = NULL;
    wserr err = {0};
    CHECK_OK(store_open(s.url, &st, &err), &err);
    CHECK_EQ(catalog_object_gone(st, pristine.seg[0]), 0); /* there */
    tt_path(&s, pristine.seg[0], p, sizeof p);
    CHECK_EQ(unlink(p), 0);
    CHECK_EQ(catalog_object_gone(st, pristine.seg[0]), 1); /* deleted */
    CHECK_EQ(mkfifo(p, 0644), 0);
    CHECK_EQ(catalog_object_gone(st, pristine.seg[0]), 0); /* listed, not a file: damage */
    store_free(st);
}

int main(int argc, char **argv) {
    tt_only = argc > 1 ? argv[1] : NULL;
    ws_test_seed(20261207);
    root = ws_test_tmpdir();
    tt_build(&pristine, root, "pristine", 8);
    tt_build(&other, root, "other", 3);
    fprintf(stderr,
            "store: generation %016" PRIx64 ", snapshot %s, %d segments, TXIDs to %" PRIu64
            ", %" PRId64 " rows\n",
            pristine.gen, pristine.snap, pristine.nsegs, pristine.last_txid, pristine.rows);
    CHECK(pristine.nsegs >= 4);
    expect_latest(&pristine, "pristine", NULL, NULL);
    TT_CASE(test_bogus_generation_dirs);
    TT_CASE(test_foreign_generation);
    TT_CASE(test_impossible_names);
    TT_CASE(test_old_segment_renamed_newer);
    TT_CASE(test_damaged_newest_snapshot);
    TT_CASE(test_unreadable_last_segment);
    TT_CASE(test_routed_around);
    TT_CASE(test_gone_or_damaged);
    return 0;
}
