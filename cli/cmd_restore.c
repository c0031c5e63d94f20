/*
** cmd_restore.c -- `walship restore`, `walship verify`, `walship generations`.
**
** restore and verify are ws_restore() (restore/output.c) plus what the
** library leaves to its caller: the SQLite check of the result (restore:
** PRAGMA quick_check unless --no-check; verify: PRAGMA integrity_check),
** and removing the unfinished temp file and the claim on SIGINT/SIGTERM.
*/
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "common/util.h"
#include "restore/restore.h"

/* ---- stopping cleanly --------------------------------------------------- */
/* What ws_restore publishes for on_stop; static, so the handler reaches it. */
static struct restore_sigfiles sigfiles;

/* SIGINT/SIGTERM during a restore: remove the unfinished database and the
** claim (unlink and _exit are async-signal-safe), exit 128+signal. */
static void on_stop(int sig) {
    if (sigfiles.tmp_set) unlink(sigfiles.tmp);
    if (sigfiles.lock_set) unlink(sigfiles.lock);
    _exit(128 + sig);
}

static void catch_stop_signals(restore_opts *o) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;
    sigfillset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    o->sigfiles = &sigfiles;
}

/* ---- the SQLite check ------------------------------------------------------ */
typedef struct db_check {
    const char *pragma; /* "quick_check" or "integrity_check" */
    const char *hint;   /* appended to the reason, or "" */
} db_check;

/* restore_opts.check: opens path read-only and immutable (no locks, no
** -wal or -shm created beside it) and runs PRAGMA <pragma>. Returns 0 if
** its first row is "ok"; otherwise 1 with its first lines in msg. */
static int check_db(void *ctx, const char *path, char *msg, size_t n) {
    const db_check *c = ctx;
    /* file: URI of the path: everything but unreserved characters and '/'
    ** percent-encoded, so '?', '#' and '%' in a path stay part of it. */
    static char uri[3 * PATH_MAX + 32];
    size_t u = (size_t)snprintf(uri, sizeof uri, "file:");
    for (const unsigned char *p = (const unsigned char *)path; *p && u + 4 < sizeof uri; p++) {
        int plain = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                    (*p >= '0' && *p <= '9') || strchr("/-._~", *p) != NULL;
        u += (size_t)(plain ? snprintf(uri + u, sizeof uri - u, "%c", *p)
                            : snprintf(uri + u, sizeof uri - u, "%%%02X", *p));
    }
    snprintf(uri + u, sizeof uri - u, "?immutable=1");
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA %s", c->pragma);
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int bad = 1;
    size_t used = 0;
    msg[0] = '\0';
    if (sqlite3_open_v2(uri, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        snprintf(msg, n, "cannot run %s: %s", sql, db ? sqlite3_errmsg(db) : "out of memory");
    } else {
        int rows = 0, rc;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
            const char *line = (const char *)sqlite3_column_text(st, 0);
            if (rows++ == 0 && line && strcmp(line, "ok") == 0) {
                bad = 0;
                break;
            }
            if (used + 1 < n)
                used += (size_t)snprintf(msg + used, n - used, "%s%s: %s", rows > 1 ? "; " : "",
                                         sql, line ? line : "?");
        }
        if (rc != SQLITE_ROW && rc != SQLITE_DONE)
            snprintf(msg, n, "%s: %s", sql, sqlite3_errmsg(db));
        else if (rows == 0)
            snprintf(msg, n, "%s returned nothing", sql);
    }
    for (char *p = msg; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' '; /* one line: "*** in database main ***\n..." */
    used = strlen(msg);
    if (bad && c->hint[0] && used + 1 < n) snprintf(msg + used, n - used, " %s", c->hint);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return bad;
}

/* ---- options ----------------------------------------------------------------- */
/* Parses the target options shared by restore and verify. Returns 0 if argv[i]
** was one (advancing *i), -1 if not, 2 on a usage error. */
static int parse_target(const char *cmd, int argc, char **argv, int *i, restore_target *t) {
    const char *a = argv[*i];
    if (strcmp(a, "--txid") != 0 && strcmp(a, "--time") != 0 && strcmp(a, "--generation") != 0)
        return -1;
    if (*i + 1 >= argc) return cli_usage(cmd, "%s needs a value", a);
    const char *v = argv[++*i];
    if (strcmp(a, "--txid") == 0) {
        if (t->kind != RESTORE_LATEST) return cli_usage(cmd, "give --txid or --time, not both");
        t->kind = RESTORE_TXID;
        return cli_u64_range(cmd, a, v, 1, UINT64_MAX, &t->txid);
    }
    if (strcmp(a, "--time") == 0) {
        if (t->kind != RESTORE_LATEST) return cli_usage(cmd, "give --txid or --time, not both");
        t->kind = RESTORE_TIME;
        if (ws_parse_time(v, &t->time_ms) != 0)
            return cli_usage(cmd,
                             "--time needs an RFC 3339 time that exists, such as "
                             "2026-11-26T09:30:00Z or 2026-11-26T10:30:00.250+01:00, not \"%.60s\"",
                             v);
        return 0;
    }
    size_t len = strlen(v);
    uint64_t g = 0;
    for (size_t k = 0; k < len && len <= 16; k++) {
        char c = v[k];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) {
            g = 0;
            break;
        }
        g = g << 4 | (uint64_t)d;
    }
    if (len == 0 || len > 16 || g == 0)
        return cli_usage(cmd, "--generation needs a generation id (1 to 16 hex digits, as "
                              "`walship generations` lists them), not \"%.40s\"", v);
    t->generation = g;
    return 0;
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

#define RESTORE_USAGE                                                                          \
    "usage: walship restore URL -o PATH [--txid N | --time T] [--generation ID] [--force] "   \
    "[--parallel N] [--no-check] [--quiet]"

int cmd_restore(int argc, char **argv) {
    restore_opts o;
    memset(&o, 0, sizeof o);
    o.progress = 1;
    int no_check = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int r = parse_target("restore", argc, argv, &i, &o.target);
        if (r == 0) continue;
        if (r > 0) return r;
        if (strcmp(a, "-o") == 0 || strcmp(a, "--output") == 0) {
            if (i + 1 >= argc || argv[i + 1][0] == '\0')
                return cli_usage("restore", "%s needs the path of the database file to write", a);
            o.out_path = argv[++i];
        } else if (strcmp(a, "--force") == 0) {
            o.force = 1;
        } else if (strcmp(a, "--no-check") == 0) {
            no_check = 1;
        } else if (strcmp(a, "--parallel") == 0) {
            uint64_t n;
            if (i + 1 >= argc) return cli_usage("restore", "--parallel needs a value");
            if (cli_u64_range("restore", a, argv[++i], 1, 32, &n)) return 2;
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
    if (o.url == NULL || o.out_path == NULL) return cli_usage("restore", RESTORE_USAGE);
    db_check quick = {"quick_check", "(--no-check restores it anyway)"};
    if (!no_check) {
        o.check = check_db;
        o.check_ctx = &quick;
    }
    catch_stop_signals(&o);
    restore_result res;
    wserr err = {0};
    if (ws_restore(&o, &res, &err) != 0) return cli_fail(&err);
    print_result(no_check ? "restored (not checked: --no-check)" : "restored", &res);
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
    db_check full = {"integrity_check", ""};
    o.check = check_db;
    o.check_ctx = &full;
    catch_stop_signals(&o);
    restore_result res;
    wserr err = {0};
    int status = 0;
    if (ws_restore(&o, &res, &err) != 0) {
        status = cli_fail(&err);
    } else {
        print_result("verified objects", &res);
        printf("ok: transaction %" PRIu64 " restores byte-exact and passes integrity_check\n",
               res.txid);
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
    if (cat.ngens == 0) {
        char shown[1024];
        ws_redact_url(shown, sizeof shown, argv[1]);
        fprintf(stderr, "walship: no generations at %s\n", shown);
    }
    catalog_free(&cat);
    store_free(st);
    return 0;
}
