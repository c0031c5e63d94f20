/*
** test_pipeline_corrupt.c -- damaged stores: every restore and verify fails
** with a message that names the damaged object, and writes nothing.
**
** A file:// store is filled through the walship VFS (a snapshot and a chain
** of segments, one per flushed batch), then copied once per kind of damage:
**   - one byte flipped in a segment: in its middle, in its header, its last
**     byte;
**   - the snapshot truncated (to half, and by one byte);
**   - a middle segment deleted;
**   - a segment renamed to claim more TXIDs than it holds, and two segments
**     swapping names;
**   - a segment replaced by the same-named segment of another database.
** For each: `walship restore URL -o PATH` exits non-zero, its message names
** the object's key (for a deleted one: the generation and the missing
** TXID), and the output directory stays empty (no partial file, no
** temporary file); a library restore over an existing file fails the same
** way and leaves that file's bytes alone; `walship verify URL` fails
** likewise and leaves nothing in TMPDIR; a restore at a TXID before the
** damage still works. The untouched store verifies.
**
** ctest-labels: pipeline
** ctest-timeout: 300
*/
#include <dirent.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "dbutil.h"
#include "harness.h"
#include "walship.h"

#define MAXSEG 64

static char root[3900];
static const char *bin;

typedef struct seginfo {
    char name[256];
    uint64_t first, last;
} seginfo;

/* A store built from a database, and what is in it. */
typedef struct built {
    char dir[4100];   /* the store's directory */
    char url[4200];
    char gen[17];
    char snap[256];   /* snapshot file name */
    seginfo segs[MAXSEG];
    int nsegs;
} built;

static char needle2[256]; /* a second string every message must hold ("" = none) */

static int cmp_seg(const void *a, const void *b) {
    const seginfo *x = a, *y = b;
    return x->first < y->first ? -1 : x->first > y->first;
}

/* Lists the one generation of the store in b->dir. */
static void scan_store(built *b) {
    char p[4300];
    snprintf(p, sizeof p, "%s/generations", b->dir);
    DIR *d = opendir(p);
    CHECK(d != NULL);
    struct dirent *e;
    int ngen = 0;
    while ((e = readdir(d)) != NULL)
        if (strlen(e->d_name) == 16) {
            memcpy(b->gen, e->d_name, 16);
            b->gen[16] = '\0';
            ngen++;
        }
    closedir(d);
    CHECK_EQ(ngen, 1);
    snprintf(p, sizeof p, "%s/generations/%s/snapshots", b->dir, b->gen);
    d = opendir(p);
    CHECK(d != NULL);
    int nsnap = 0;
    while ((e = readdir(d)) != NULL)
        if (strstr(e->d_name, ".snap")) {
            snprintf(b->snap, sizeof b->snap, "%s", e->d_name);
            nsnap++;
        }
    closedir(d);
    CHECK_EQ(nsnap, 1);
    snprintf(p, sizeof p, "%s/generations/%s/segments", b->dir, b->gen);
    d = opendir(p);
    CHECK(d != NULL);
    b->nsegs = 0;
    while ((e = readdir(d)) != NULL) {
        seginfo s;
        if (sscanf(e->d_name, "%16" SCNx64 "-%16" SCNx64 ".seg", &s.first, &s.last) != 2) continue;
        CHECK(b->nsegs < MAXSEG);
        snprintf(s.name, sizeof s.name, "%s", e->d_name);
        b->segs[b->nsegs++] = s;
    }
    closedir(d);
    qsort(b->segs, (size_t)b->nsegs, sizeof b->segs[0], cmp_seg);
}

/* Writes batches of transactions through walship, one flush (one segment)
** per batch. */
static void build_store(built *b, const char *name, int batches) {
    char dbdir[4100], path[4200];
    snprintf(dbdir, sizeof dbdir, "%s/%s", root, name);
    CHECK_EQ(ws_test_system("mkdir -p '%s'", dbdir), 0);
    snprintf(path, sizeof path, "%s/app.db", dbdir);
    snprintf(b->dir, sizeof b->dir, "%.4000s/store", dbdir);
    snprintf(b->url, sizeof b->url, "file://%s", b->dir);
    sqlite3 *plain = db_open_plain(path, 0);
    db_exec(plain, "PRAGMA journal_mode=WAL; CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB);");
    sqlite3_close(plain);
    sqlite3 *db = db_open_walship(path, b->url, "walship_ship_interval=0");
    CHECK_EQ(walship_flush(path, 60000), 1);
    for (int i = 0; i < batches; i++) {
        for (int k = 0; k < 4; k++) {
            char sql[160];
            snprintf(sql, sizeof sql, "INSERT INTO t(v) VALUES (randomblob(%d))",
                     200 + (int)ws_test_rand_below(5000));
            db_exec(db, sql);
        }
        CHECK_EQ(walship_flush(path, 60000), 1);
    }
    sqlite3_close(db);
    scan_store(b);
}

static int dir_is_empty(const char *dir, char *first, size_t n) {
    DIR *d = opendir(dir);
    CHECK(d != NULL);
    struct dirent *e;
    int empty = 1;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        snprintf(first, n, "%s", e->d_name);
        empty = 0;
        break;
    }
    closedir(d);
    return empty;
}

/* Damages a copy of the pristine store as `how` says, then checks every
** way of reading it. `needle` must appear in every error message;
** good_txid (if not 0) must still restore. */
typedef void (*damage_fn)(const built *pristine, const char *store_dir, char *needle, size_t n,
                          uint64_t *good_txid);

static void check_damage(const built *pristine, const char *name, damage_fn damage) {
    char cdir[4100], store_dir[4200], url[4300], outdir[4200], out[4300], vtmp[4200], needle[256];
    snprintf(cdir, sizeof cdir, "%s/%s", root, name);
    snprintf(store_dir, sizeof store_dir, "%s/store", cdir);
    snprintf(url, sizeof url, "file://%s", store_dir);
    snprintf(outdir, sizeof outdir, "%s/out", cdir);
    snprintf(out, sizeof out, "%s/restored.db", outdir);
    snprintf(vtmp, sizeof vtmp, "%s/vtmp", cdir);
    CHECK_EQ(ws_test_system("mkdir -p '%s' '%s' '%s' && cp -a '%s/.' '%s/'", cdir, outdir, vtmp,
                            pristine->dir, store_dir),
             0);
    uint64_t good = 0;
    needle[0] = needle2[0] = '\0';
    damage(pristine, store_dir, needle, sizeof needle, &good);
    fprintf(stderr, "-- %s (message must name \"%s\")\n", name, needle);

    /* CLI restore into an empty directory. */
    char buf[8192], first[512];
    int rc = db_capture(buf, sizeof buf, "'%s' restore '%s' -o '%s'", bin, url, out);
    if (rc == 0) ws_test_fail(__FILE__, __LINE__, "%s: restore succeeded: %s", name, buf);
    if (strstr(buf, needle) == NULL || strstr(buf, needle2) == NULL)
        ws_test_fail(__FILE__, __LINE__, "%s: restore message does not name \"%s\" \"%s\": %s", name,
                     needle, needle2, buf);
    if (!dir_is_empty(outdir, first, sizeof first))
        ws_test_fail(__FILE__, __LINE__, "%s: a failed restore left %s/%s", name, outdir, first);

    /* Library restore over an existing file: fails, file untouched, nothing beside it. */
    FILE *f = fopen(out, "wb");
    CHECK(f != NULL);
    fputs("precious bytes that must survive\n", f);
    fclose(f);
    char msg[1024];
    rc = db_restore(url, out, 0, 0, 0, msg, sizeof msg);
    if (rc != WALSHIP_ERR_CORRUPT && rc != WALSHIP_ERR_NOTFOUND)
        ws_test_fail(__FILE__, __LINE__, "%s: library restore returned %d (%s): %s", name, rc,
                     walship_strerror(rc), msg);
    CHECK_CONTAINS(msg, needle);
    CHECK_CONTAINS(msg, needle2);
    CHECK_EQ(db_file_size(out), (int64_t)strlen("precious bytes that must survive\n"));
    CHECK_EQ(unlink(out), 0);
    if (!dir_is_empty(outdir, first, sizeof first))
        ws_test_fail(__FILE__, __LINE__, "%s: a failed restore left %s/%s", name, outdir, first);

    /* verify */
    rc = db_capture(buf, sizeof buf, "TMPDIR='%s' '%s' verify '%s'", vtmp, bin, url);
    if (rc == 0) ws_test_fail(__FILE__, __LINE__, "%s: verify succeeded: %s", name, buf);
    if (strstr(buf, needle) == NULL || strstr(buf, needle2) == NULL)
        ws_test_fail(__FILE__, __LINE__, "%s: verify message does not name \"%s\" \"%s\": %s", name,
                     needle, needle2, buf);
    if (!dir_is_empty(vtmp, first, sizeof first))
        ws_test_fail(__FILE__, __LINE__, "%s: verify left %s/%s", name, vtmp, first);

    /* What lies before the damage is still there. */
    if (good) {
        rc = db_restore(url, out, 1, good, 0, msg, sizeof msg);
        if (rc != 0)
            ws_test_fail(__FILE__, __LINE__, "%s: restore --txid %" PRIu64 " (before the damage): %s",
                         name, good, msg);
        sqlite3 *r = db_open_plain(out, 1);
        db_int(r, "SELECT count(*) FROM t");
        sqlite3_close(r);
        unlink(out);
    }
}

/* ---- kinds of damage -------------------------------------------------------------- */

static void seg_path(const built *b, const char *store_dir, int i, char *out, size_t n) {
    snprintf(out, n, "%s/generations/%s/segments/%s", store_dir, b->gen, b->segs[i].name);
}
static void seg_key(const built *b, int i, char *out, size_t n) {
    snprintf(out, n, "generations/%s/segments/%s", b->gen, b->segs[i].name);
}

static void flip_at(const char *path, int64_t off) {
    FILE *f = fopen(path, "r+b");
    CHECK(f != NULL);
    if (off < 0) {
        fseek(f, 0, SEEK_END);
        off += ftell(f);
    }
    CHECK_EQ(fseek(f, (long)off, SEEK_SET), 0);
    int c = fgetc(f);
    CHECK(c != EOF);
    CHECK_EQ(fseek(f, (long)off, SEEK_SET), 0);
    fputc(c ^ 0x20, f);
    fclose(f);
}

static int mid(const built *b) { return b->nsegs / 2; }

static void flip_segment_middle(const built *b, const char *dir, char *needle, size_t n, uint64_t *good) {
    char p[4400];
    seg_path(b, dir, mid(b), p, sizeof p);
    flip_at(p, db_file_size(p) / 2);
    seg_key(b, mid(b), needle, n);
    *good = b->segs[mid(b)].first - 1;
}

static void flip_segment_header(const built *b, const char *dir, char *needle, size_t n, uint64_t *good) {
    char p[4400];
    seg_path(b, dir, mid(b), p, sizeof p);
    flip_at(p, 20);
    seg_key(b, mid(b), needle, n);
    *good = b->segs[mid(b)].first - 1;
}

static void flip_segment_last(const built *b, const char *dir, char *needle, size_t n, uint64_t *good) {
    char p[4400];
    int i = b->nsegs - 1;
    seg_path(b, dir, i, p, sizeof p);
    flip_at(p, -1);
    seg_key(b, i, needle, n);
    *good = b->segs[i].first - 1;
}

static void truncate_snapshot(const built *b, const char *dir, char *needle, size_t n, int64_t cut) {
    char p[4400];
    snprintf(p, sizeof p, "%s/generations/%s/snapshots/%s", dir, b->gen, b->snap);
    int64_t sz = db_file_size(p);
    CHECK_EQ(truncate(p, cut > 0 ? sz - cut : sz / 2), 0);
    snprintf(needle, n, "generations/%s/snapshots/%s", b->gen, b->snap);
}
static void truncate_snapshot_half(const built *b, const char *dir, char *needle, size_t n, uint64_t *good) {
    truncate_snapshot(b, dir, needle, n, 0);
    *good = 0;
}
static void truncate_snapshot_one(const built *b, const char *dir, char *needle, size_t n, uint64_t *good) {
    truncate_snapshot(b, dir, needle, n, 1);
    *good = 0;
}

static void delete_segment(const built *b, const char *dir, char *needle, size_t n, uint64_t *good) {
    char p[4400];
    seg_path(b, dir, mid(b), p, sizeof p);
    CHECK_EQ(unlink(p), 0);
    /* Nothing names the missing object; the generation and TXID it held do. */
    snprintf(needle, n, "%s", b->gen);
    snprintf(needle2, sizeof needle2, "transaction %" PRIu64, b->segs[mid(b)].first);
    *good = b->segs[mid(b)].first - 1;
}

static void rename_claims_more(const built *b, const char *dir, char *needle, size_t n, uint64_t *good) {
    char from[4400], to[4400];
    int i = mid(b);
    seg_path(b, dir, i, from, sizeof from);
    snprintf(to, sizeof to, "%s/generations/%s/segments/%016" PRIx64 "-%016" PRIx64 ".seg", dir,
             b->gen, b->segs[i].first, b->segs[i].last + 1);
    CHECK_EQ(rename(from, to), 0);
    snprintf(needle, n, "generations/%s/segments/%016" PRIx64 "-%016" PRIx64 ".seg", b->gen,
             b->segs[i].first, b->segs[i].last + 1);
    *good = b->segs[i].first - 1;
}

static void swap_names(const built *b, const char *dir, char *needle, size_t n, uint64_t *good) {
    char a[4400], c[4400], tmp[4400];
    int i = mid(b);
    seg_path(b, dir, i, a, sizeof a);
    seg_path(b, dir, i + 1, c, sizeof c);
    snprintf(tmp, sizeof tmp, "%.4300s.tmp", a);
    CHECK_EQ(rename(a, tmp), 0);
    CHECK_EQ(rename(c, a), 0);
    CHECK_EQ(rename(tmp, c), 0);
    seg_key(b, i, needle, n); /* the first one a restore meets */
    *good = b->segs[i].first - 1;
}

static built other;

static void foreign_segment(const built *b, const char *dir, char *needle, size_t n, uint64_t *good) {
    /* the other database's segment with the same TXID range */
    int i = -1;
    for (int k = 1; k < b->nsegs && i < 0; k++)
        for (int j = 0; j < other.nsegs; j++)
            if (other.segs[j].first == b->segs[k].first && other.segs[j].last == b->segs[k].last) i = k;
    if (i < 0) ws_test_fail(__FILE__, __LINE__, "the two stores share no segment range");
    char p[4400];
    seg_path(b, dir, i, p, sizeof p);
    CHECK_EQ(ws_test_system("cp '%s/generations/%s/segments/%s' '%s'", other.dir, other.gen,
                            b->segs[i].name, p),
             0);
    seg_key(b, i, needle, n);
    *good = b->segs[i].first - 1;
}

int main(void) {
    ws_test_seed(20261202);
    snprintf(root, sizeof root, "%.3800s", ws_test_tmpdir());
    bin = ws_test_env("WALSHIP_BIN");
    static built pristine;
    build_store(&pristine, "pristine", 8);
    build_store(&other, "other", 8);
    fprintf(stderr, "generation %s: snapshot %s, %d segments\n", pristine.gen, pristine.snap,
            pristine.nsegs);
    CHECK(pristine.nsegs >= 6);

    /* The untouched store verifies. */
    char buf[8192];
    int rc = db_capture(buf, sizeof buf, "'%s' verify '%s'", bin, pristine.url);
    if (rc != 0) ws_test_fail(__FILE__, __LINE__, "verify of the untouched store failed: %s", buf);
    CHECK_CONTAINS(buf, "ok");

    check_damage(&pristine, "flip-segment-middle", flip_segment_middle);
    check_damage(&pristine, "flip-segment-header", flip_segment_header);
    check_damage(&pristine, "flip-segment-last-byte", flip_segment_last);
    check_damage(&pristine, "truncate-snapshot-half", truncate_snapshot_half);
    check_damage(&pristine, "truncate-snapshot-one-byte", truncate_snapshot_one);
    check_damage(&pristine, "delete-middle-segment", delete_segment);
    check_damage(&pristine, "rename-segment-claims-more", rename_claims_more);
    check_damage(&pristine, "swap-segment-names", swap_names);
    check_damage(&pristine, "foreign-segment", foreign_segment);

    /* And the pristine store still verifies (nothing above touched it). */
    rc = db_capture(buf, sizeof buf, "'%s' verify '%s'", bin, pristine.url);
    if (rc != 0) ws_test_fail(__FILE__, __LINE__, "verify of the untouched store failed: %s", buf);
    return 0;
}
