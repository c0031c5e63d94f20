/*
** cmd_restore.c -- `walship restore`, `walship verify`, `walship generations`.
*/
#include <inttypes.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "common/util.h"
#include "restore/restore.h"

/* Parses the target options shared by restore and verify. Returns 0 if argv[i]
** was one (advancing *i), -1 if not, 2 on a usage error. */
static int parse_target(const char *cmd, int argc, char **argv, int *i, restore_target *t) {
    const char *a = argv[*i];
    if (strcmp(a, "--txid") == 0 || strcmp(a, "--time") == 0 || strcmp(a, "--generation") == 0) {
        if (*i + 1 >= argc) return cli_usage(cmd, "%s needs a value", a);
        const char *v = argv[++*i];
        if (strcmp(a, "--txid") == 0) {
            if (t->kind != RESTORE_LATEST) return cli_usage(cmd, "give --txid or --time, not both");
            t->kind = RESTORE_TXID;
            return cli_u64(cmd, a, v, &t->txid) ? 2 : 0;
        }
        if (strcmp(a, "--time") == 0) {
            if (t->kind != RESTORE_LATEST) return cli_usage(cmd, "give --txid or --time, not both");
            t->kind = RESTORE_TIME;
            if (ws_parse_time(v, &t->time_ms) != 0)
                return cli_usage(cmd, "--time needs an RFC 3339 time such as 2026-11-26T09:30:00Z, "
                                      "not \"%s\"", v);
            return 0;
        }
        char *end;
        t->generation = strtoull(v, &end, 16);
        if (*end != '\0' || t->generation == 0)
            return cli_usage(cmd, "--generation needs a generation id (16 hex digits)");
        return 0;
    }
    return -1;
}

static void print_result(const char *what, const restore_result *r) {
    char when[40];
    ws_format_time(r->commit_ms, when, sizeof when);
    fprintf(stderr,
            "%s: generation %016" PRIx64 ", transaction %" PRIu64 " (committed %s), %u pages of "
            "%u bytes, %zu segment(s), %.1f MiB downloaded, checksum %016" PRIx64 " verified\n",
            what, r->generation, r->txid, when, r->db_pages, r->page_size, r->nsegments,
            (double)r->bytes / 1048576.0, r->chk);
}

int cmd_restore(int argc, char **argv) {
    restore_opts o;
    memset(&o, 0, sizeof o);
    o.progress = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int r = parse_target("restore", argc, argv, &i, &o.target);
        if (r == 0) continue;
        if (r > 0) return r;
        if (strcmp(a, "-o") == 0 || strcmp(a, "--output") == 0) {
            if (i + 1 >= argc) return cli_usage("restore", "-o needs a path");
            o.out_path = argv[++i];
        } else if (strcmp(a, "--force") == 0) {
            o.force = 1;
        } else if (strcmp(a, "--parallel") == 0) {
            uint64_t n;
            if (i + 1 >= argc || cli_u64("restore", a, argv[++i], &n) || n == 0 || n > 32)
                return cli_usage("restore", "--parallel needs a number from 1 to 32");
            o.parallel = (int)n;
        } else if (strcmp(a, "--quiet") == 0) {
            o.progress = 0;
        } else if (a[0] == '-') {
            return cli_usage("restore", "unknown option %s", a);
        } else if (o.url == NULL) {
            o.url = a;
        } else {
            return cli_usage("restore", "unexpected argument \"%s\"", a);
        }
    }
    if (o.url == NULL || o.out_path == NULL)
        return cli_usage("restore", "usage: walship restore URL -o PATH [--txid N | --time T] "
                                    "[--force]");
    restore_result res;
    wserr err = {0};
    if (ws_restore(&o, &res, &err) != 0) return cli_fail(&err);
    print_result("restored", &res);
    printf("%s\n", o.out_path);
    return 0;
}

int cmd_verify(int argc, char **argv) {
    restore_opts o;
    memset(&o, 0, sizeof o);
    o.progress = 1;
    for (int i = 1; i < argc; i++) {
        int r = parse_target("verify", argc, argv, &i, &o.target);
        if (r == 0) continue;
        if (r > 0) return r;
        if (strcmp(argv[i], "--quiet") == 0) {
            o.progress = 0;
            continue;
        }
        if (argv[i][0] == '-') return cli_usage("verify", "unknown option %s", argv[i]);
        if (o.url) return cli_usage("verify", "unexpected argument \"%s\"", argv[i]);
        o.url = argv[i];
    }
    if (o.url == NULL) return cli_usage("verify", "usage: walship verify URL [--txid N | --time T]");
    const char *tmpdir = getenv("TMPDIR");
    char dir[4096], path[4200];
    snprintf(dir, sizeof dir, "%s/walship-verify-XXXXXX", tmpdir && *tmpdir ? tmpdir : "/tmp");
    if (mkdtemp(dir) == NULL) {
        perror("walship verify: mkdtemp");
        return 1;
    }
    snprintf(path, sizeof path, "%s/verify.db", dir);
    o.out_path = path;
    restore_result res;
    wserr err = {0};
    int status = 0;
    if (ws_restore(&o, &res, &err) != 0) {
        status = cli_fail(&err);
    } else {
        print_result("verified objects", &res);
        sqlite3 *db = NULL;
        sqlite3_stmt *st = NULL;
        int ok = 0;
        if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
            sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL) == SQLITE_OK) {
            ok = 1;
            int rows = 0;
            while (sqlite3_step(st) == SQLITE_ROW) {
                const char *line = (const char *)sqlite3_column_text(st, 0);
                if (rows++ == 0 && line && strcmp(line, "ok") == 0) continue;
                ok = 0;
                fprintf(stderr, "walship verify: integrity_check: %s\n", line ? line : "?");
            }
        } else {
            fprintf(stderr, "walship verify: cannot open the restored database: %s\n",
                    db ? sqlite3_errmsg(db) : "out of memory");
        }
        sqlite3_finalize(st);
        sqlite3_close(db);
        if (ok) {
            printf("ok: transaction %" PRIu64 " restores byte-exact and passes integrity_check\n",
                   res.txid);
        } else {
            status = 1;
        }
    }
    unlink(path);
    rmdir(dir);
    return status;
}

int cmd_generations(int argc, char **argv) {
    if (argc != 2 || argv[1][0] == '-') return cli_usage("generations", "usage: walship generations URL");
    store *st = NULL;
    catalog cat = {0};
    wserr err = {0};
    if (store_open(argv[1], &st, &err) != 0) return cli_fail(&err);
    if (catalog_load(st, &cat, &err) != 0) {
        store_free(st);
        return cli_fail(&err);
    }
    printf("%-16s  %-24s  %-24s  %9s  %9s  %-21s  %10s\n", "generation", "created", "last commit",
           "snapshots", "segments", "transactions", "MiB");
    for (size_t i = 0; i < cat.ngens; i++) {
        const cat_gen *g = &cat.gens[i];
        char created[40] = "-", last[40] = "-", range[48] = "-";
        ws_format_time((int64_t)(g->id / 1000), created, sizeof created);
        uint64_t bytes = 0;
        for (size_t k = 0; k < g->nsnaps; k++) bytes += g->snaps[k].size;
        for (size_t k = 0; k < g->nsegs; k++) bytes += g->segs[k].size;
        if (g->nsnaps) {
            snprintf(range, sizeof range, "%" PRIu64 "..%" PRIu64, cat_gen_first_txid(g),
                     cat_gen_last_txid(g));
            int64_t last_ms = 0;
            wserr e2 = {0};
            if (g->nsegs) {
                wsbuf b = {0};
                const cat_seg *s = &g->segs[g->nsegs - 1];
                seg_header h;
                if (store_get_range(st, s->key, 0, SEG_HEADER_SIZE, &b, &e2) == 0 &&
                    seg_parse_header(b.p, b.len, &h, &e2) == 0)
                    last_ms = h.last_commit_ms;
                wsbuf_free(&b);
            } else {
                snap_footer f;
                if (restore_snap_footer(st, &g->snaps[g->nsnaps - 1], &f, &e2) == 0)
                    last_ms = f.commit_ms;
            }
            if (last_ms) ws_format_time(last_ms, last, sizeof last);
        }
        printf("%016" PRIx64 "  %-24s  %-24s  %9zu  %9zu  %-21s  %10.1f\n", g->id, created, last,
               g->nsnaps, g->nsegs, range, (double)bytes / 1048576.0);
    }
    if (cat.ngens == 0) fprintf(stderr, "walship: no generations at %s\n", argv[1]);
    catalog_free(&cat);
    store_free(st);
    return 0;
}
