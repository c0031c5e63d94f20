/*
** test_restore_output.h -- helpers shared by test_restore_output.c (file://
** store) and test_restore_output_s3.c (S3 through a fault proxy): a store
** filled through the walship VFS, optionally with a malformed database, and
** looks at what a restore left beside its output.
*/
#ifndef WS_TEST_RESTORE_OUTPUT_H
#define WS_TEST_RESTORE_OUTPUT_H

#include <dirent.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "dbutil.h"
#include "harness.h"
#include "walship.h"

/* Ships a database to url through the walship VFS: tables t (rows 1..10,
** then zero_mib MiB of zeroblobs, then random_mib MiB of randomblobs) and b
** (100 small rows). Pages are allocated in that order, so a snapshot's
** 4 MiB chunks that hold only zeroblobs compress to almost nothing and the
** random ones do not. With malformed, b's root page has its first two cell
** pointers swapped before shipping: every object verifies by checksum, and
** PRAGMA quick_check says "Rowid ... out of order". db is left closed. */
static inline void ro_build_store(const char *db, const char *url, int malformed, int zero_mib,
                                  int random_mib) {
    sqlite3 *p = db_open_plain(db, 0);
    db_exec(p, "PRAGMA page_size=4096; PRAGMA journal_mode=WAL;"
               "CREATE TABLE t(x); CREATE TABLE b(x);"
               "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<100)"
               " INSERT INTO b SELECT i FROM n;"
               "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<10)"
               " INSERT INTO t SELECT i FROM n;");
    /* 3000-byte rows: one per 4 KiB page. */
    char sql[512];
    snprintf(sql, sizeof sql,
             "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n LIMIT %d)"
             " INSERT INTO t SELECT zeroblob(3000) FROM n;"
             "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n LIMIT %d)"
             " INSERT INTO t SELECT randomblob(3000) FROM n;",
             zero_mib * 256, random_mib * 256);
    db_exec(p, sql);
    int64_t root = db_int(p, "SELECT rootpage FROM sqlite_schema WHERE name='b'");
    db_exec(p, "PRAGMA wal_checkpoint(TRUNCATE)");
    sqlite3_close(p);
    if (malformed) {
        FILE *f = fopen(db, "r+b");
        CHECK(f != NULL);
        long off = (long)(root - 1) * 4096;
        unsigned char hdr[12];
        CHECK_EQ(fseek(f, off, SEEK_SET), 0);
        CHECK_EQ(fread(hdr, 1, sizeof hdr, f), sizeof hdr);
        CHECK_EQ(hdr[0], 0x0d); /* a table leaf: cell pointers from byte 8 */
        unsigned char swapped[4] = {hdr[10], hdr[11], hdr[8], hdr[9]};
        CHECK_EQ(fseek(f, off + 8, SEEK_SET), 0);
        CHECK_EQ(fwrite(swapped, 1, 4, f), 4);
        CHECK_EQ(fclose(f), 0);
    }
    sqlite3 *w = db_open_walship(db, url, "walship_ship_interval=0");
    db_exec(w, "INSERT INTO t VALUES (11)");
    CHECK_EQ(walship_flush(db, 60000), 1);
    sqlite3_close(w);
}

/* The first line of PRAGMA quick_check on path ("ok" if sound), into out. */
static inline void ro_quick_check(const char *path, char *out, size_t n) {
    sqlite3 *db = db_open_plain(path, 1);
    sqlite3_stmt *st = NULL;
    CHECK_EQ(sqlite3_prepare_v2(db, "PRAGMA quick_check", -1, &st, NULL), SQLITE_OK);
    int rc = sqlite3_step(st);
    snprintf(out, n, "%s",
             rc == SQLITE_ROW ? (const char *)sqlite3_column_text(st, 0) : sqlite3_errmsg(db));
    sqlite3_finalize(st);
    sqlite3_close(db);
}

/* Names in dir a restore must not leave: "*.walship-tmp-*" (its temp file,
** and the -wal/-shm/-journal it moves aside) and "*.walship-lock" (its
** claim). Returns how many, the first one's name in first (may be NULL). */
static inline int ro_leftovers(const char *dir, char *first, size_t n) {
    DIR *d = opendir(dir);
    CHECK(d != NULL);
    int count = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name);
        int lock = len > 13 && strcmp(de->d_name + len - 13, ".walship-lock") == 0;
        if (!lock && strstr(de->d_name, ".walship-tmp-") == NULL) continue;
        if (count++ == 0 && first) snprintf(first, n, "%s", de->d_name);
    }
    closedir(d);
    return count;
}

/* Runs `walship ARGS` (a shell fragment) with stdout and stderr in out;
** returns the exit status. */
static inline int ro_cli(char *out, size_t n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static inline int ro_cli(char *out, size_t n, const char *fmt, ...) {
    char args[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    return db_capture(out, n, "'%s' %s", ws_test_env("WALSHIP_BIN"), args);
}

/* Waits until path exists with at least min_size bytes; 0, or -1 once
** timeout_ms passed. */
static inline int ro_wait_file(const char *path, int64_t min_size, int timeout_ms) {
    int64_t deadline = ws_mono_ms() + timeout_ms;
    for (;;) {
        struct stat st;
        if (stat(path, &st) == 0 && st.st_size >= min_size) return 0;
        if (ws_mono_ms() >= deadline) return -1;
        ws_sleep_ms(2); /* polling for another process's file, with a deadline */
    }
}

#endif
