/*
** cmd_ship.c -- `walship ship` (a standalone shipper) and `walship status`.
*/
#include <errno.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "common/log.h"
#include "common/util.h"
#include "shipper/ident.h"
#include "shipper/shipper.h"

static volatile sig_atomic_t stop_requested;
static void on_signal(int sig) {
    (void)sig;
    stop_requested = 1;
}

/* Options for a database given on the command line: --url or WALSHIP_URL,
** the rest from the environment. */
typedef struct param_ctx {
    const char *url;
} param_ctx;

static const char *cli_param(void *ctx, const char *name) {
    param_ctx *p = ctx;
    if (strcmp(name, "walship_url") == 0) return p->url;
    return NULL;
}

/* The spool directory of a database: --spool-dir, WALSHIP_SPOOL_DIR/<name>-walship,
** or <db>-walship. */
static void spool_dir_of(const char *path, const char *given, char *out, size_t n) {
    const char *base = getenv("WALSHIP_SPOOL_DIR");
    const char *slash = strrchr(path, '/');
    if (given)
        snprintf(out, n, "%s", given);
    else if (base && *base)
        snprintf(out, n, "%s/%s-walship", base, slash ? slash + 1 : path);
    else
        snprintf(out, n, "%s-walship", path);
}

/* walship follows SQLite databases in WAL mode: anything else is refused
** before a spool is created (a rollback-journal database would never drain,
** and a file that is not a database would get a spool of its own). An empty
** file is a database not yet written. Returns 0 or prints why and returns 1. */
static int check_database_file(const char *path) {
    uint8_t h[100];
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "walship ship: %s: %s\n", path, strerror(errno));
        return 1;
    }
    size_t n = fread(h, 1, sizeof h, f);
    fclose(f);
    if (n == 0) return 0;
    if (n < sizeof h || memcmp(h, "SQLite format 3", 16) != 0) {
        fprintf(stderr, "walship ship: %s is not an SQLite database\n", path);
        return 1;
    }
    if (h[18] != 2 || h[19] != 2) {
        fprintf(stderr,
                "walship ship: %s is in rollback-journal mode; walship ships databases in WAL "
                "mode: run sqlite3 '%s' 'PRAGMA journal_mode=WAL' (with no other connection "
                "open), or open it through walship, which switches it\n",
                path, path);
        return 1;
    }
    return 0;
}

static int full_path(const char *cmd, const char *in, char *out, size_t n) {
    if (realpath(in, out) == NULL) {
        fprintf(stderr, "walship %s: %s: %s\n", cmd, in, strerror(errno));
        return 1;
    }
    (void)n;
    return 0;
}

int cmd_ship(int argc, char **argv) {
    const char *db = NULL;
    param_ctx pc = {NULL};
    int drain = 0, adopt = 0;
    uint64_t timeout_s = 300;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--url") == 0 && i + 1 < argc)
            pc.url = argv[++i];
        else if (strcmp(a, "--drain") == 0)
            drain = 1;
        else if (strcmp(a, "--adopt") == 0)
            adopt = 1;
        else if (strcmp(a, "--timeout") == 0 && i + 1 < argc) {
            if (cli_u64("ship", a, argv[++i], &timeout_s)) return 2;
        } else if (a[0] == '-')
            return cli_usage("ship", "unknown option %s", a);
        else if (db == NULL)
            db = a;
        else
            return cli_usage("ship", "unexpected argument \"%s\"", a);
    }
    if (db == NULL)
        return cli_usage("ship", "usage: walship ship DB [--url URL] [--drain [--timeout S]] "
                                 "[--adopt]");
    char path[4096];
    if (full_path("ship", db, path, sizeof path)) return 1;
    if (check_database_file(path)) return 1;
    if (getenv("WALSHIP_LOG") == NULL) ws_log_set_stderr_level(WS_LOG_INFO);
    shipper_set_base_vfs(sqlite3_vfs_find(NULL));
    /* Without --url (or WALSHIP_URL): where the database already ships. */
    ws_ident id;
    char sdir[4200];
    spool_dir_of(path, NULL, sdir, sizeof sdir);
    const char *envurl = getenv("WALSHIP_URL");
    if (pc.url == NULL && (envurl == NULL || *envurl == '\0') &&
        ident_load(sdir, &id, NULL) == 0)
        pc.url = id.url;
    ws_config cfg;
    wserr err = {0};
    if (ws_config_load(&cfg, path, cli_param, &pc, &err) != 0) return cli_fail(&err);
    cfg.upload = 1; /* this is the process that uploads, whatever WALSHIP_UPLOAD says */
    if (adopt) cfg.adopt = 1;
    shipper *sh = NULL;
    if (shipper_attach(path, &cfg, &sh, &err) != 0) return cli_fail(&err);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    int status = 0;
    if (drain) {
        /* --timeout 0: no deadline. A problem only the user can fix (another
        ** database owns the destination...) ends the wait at once. */
        int64_t deadline = timeout_s ? ws_mono_ms() + (int64_t)timeout_s * 1000 : INT64_MAX;
        int r = 0;
        while (!stop_requested && ws_mono_ms() < deadline) {
            r = shipper_flush(sh, 200);
            if (r != 0) break;
            if (spool_flags_get(shipper_spool(sh)) & SPOOL_ST_PERMANENT) break;
        }
        if (r == 1) {
            fprintf(stderr, "walship ship: drained %s\n", path);
        } else {
            char json[8192];
            spool_status st;
            spool_status_get(shipper_spool(sh), &st);
            shipper_status_json(sh, json, sizeof json);
            fprintf(stderr, "walship ship: could not drain %s: %s\n", path,
                    r < 0            ? walship_strerror(-r)
                    : st.last_error[0] ? st.last_error
                    : stop_requested ? "interrupted"
                                     : "timed out (--timeout)");
            fprintf(stderr, "status: %s\n", json);
            status = 1;
        }
    } else {
        while (!stop_requested) ws_sleep_ms(200);
    }
    shipper_detach(sh);
    shipper_pool_shutdown();
    return status;
}

int cmd_replica_status(const char *path, int json); /* cli/cmd_replica.c */

int cmd_status(int argc, char **argv) {
    const char *db = NULL, *spool_dir = NULL;
    int json = 0, check = 0;
    uint64_t max_lag_ms = 60000;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            json = 1;
        else if (strcmp(argv[i], "--check") == 0)
            check = 1;
        else if (strcmp(argv[i], "--max-lag-ms") == 0 && i + 1 < argc) {
            if (cli_u64("status", argv[i], argv[i + 1], &max_lag_ms)) return 2;
            i++;
        }
        else if (strcmp(argv[i], "--spool-dir") == 0 && i + 1 < argc)
            spool_dir = argv[++i];
        else if (argv[i][0] == '-')
            return cli_usage("status", "unknown option %s", argv[i]);
        else
            db = argv[i];
    }
    if (db == NULL)
        return cli_usage("status", "usage: walship status DB [--json] [--check [--max-lag-ms N]]");
    char path[4096], dir[4200];
    if (full_path("status", db, path, sizeof path)) return 1;
    int replica_rc = cmd_replica_status(path, json); /* -1: not a replica */
    if (replica_rc >= 0) return replica_rc;
    spool_dir_of(path, spool_dir, dir, sizeof dir);
    struct stat st;
    if (stat(dir, &st) != 0) {
        fprintf(stderr,
                "walship status: no spool at %s: %s has not been opened through walship (or "
                "its spool is elsewhere: --spool-dir)\n",
                dir, path);
        return 1;
    }
    spool *sp = NULL;
    wserr err = {0};
    if (spool_open(dir, &sp, &err) != 0) return cli_fail(&err);
    char out[8192];
    ws_ident id;
    ws_status_json(sp, path, ident_load(dir, &id, NULL) == 0 ? id.url : NULL, NULL, out,
                   sizeof out);
    spool_close(sp);
    int rc = 0;
    if (check) {
        /* Healthy: a live shipper, no error, keeping history, not behind. */
        char *e = strstr(out, "\"last_error\":\"");
        int has_error = e && e[14] != '"';
        long long lag = 0;
        const char *l = strstr(out, "\"lag_ms\":");
        if (l) lag = atoll(l + 9);
        const char *why = has_error                                ? "last_error is set"
                          : strstr(out, "\"shipper_alive\":false") ? "no shipper is running"
                          : strstr(out, "\"discarding\":true")     ? "history is being discarded"
                          : (uint64_t)lag > max_lag_ms             ? "lag_ms is over --max-lag-ms"
                                                                   : NULL;
        if (why) {
            fprintf(stderr, "walship status: %s is not healthy: %s\n", path, why);
            rc = 1;
        }
    }
    if (json) {
        printf("%s\n", out);
        return rc;
    }
    /* Human form: one "key: value" line per JSON member. */
    const char *p = out + 1;
    while (*p && *p != '}') {
        const char *colon = strchr(p, ':');
        if (colon == NULL) break;
        int in_str = colon[1] == '"';
        const char *v = colon + 1 + in_str;
        const char *end = v;
        while (*end && (in_str ? (*end != '"' || end[-1] == '\\') : (*end != ',' && *end != '}')))
            end++;
        printf("%-14.*s %.*s\n", (int)(colon - p - 2), p + 1, (int)(end - v), v);
        p = end + in_str;
        if (*p == ',') p++;
    }
    return rc;
}
