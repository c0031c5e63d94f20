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
    int drain = 0;
    uint64_t timeout_s = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--url") == 0 && i + 1 < argc)
            pc.url = argv[++i];
        else if (strcmp(a, "--drain") == 0)
            drain = 1;
        else if (strcmp(a, "--timeout") == 0 && i + 1 < argc) {
            if (cli_u64("ship", a, argv[++i], &timeout_s)) return 2;
        } else if (a[0] == '-')
            return cli_usage("ship", "unknown option %s", a);
        else if (db == NULL)
            db = a;
        else
            return cli_usage("ship", "unexpected argument \"%s\"", a);
    }
    if (db == NULL) return cli_usage("ship", "usage: walship ship DB [--url URL] [--drain]");
    char path[4096];
    if (full_path("ship", db, path, sizeof path)) return 1;
    if (getenv("WALSHIP_LOG") == NULL) ws_log_set_stderr_level(WS_LOG_INFO);
    shipper_set_base_vfs(sqlite3_vfs_find(NULL));
    ws_config cfg;
    wserr err = {0};
    if (ws_config_load(&cfg, path, cli_param, &pc, &err) != 0) return cli_fail(&err);
    cfg.upload = 1; /* this is the process that uploads, whatever WALSHIP_UPLOAD says */
    shipper *sh = NULL;
    if (shipper_attach(path, &cfg, &sh, &err) != 0) return cli_fail(&err);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    int status = 0;
    if (drain) {
        int64_t deadline = timeout_s ? ws_mono_ms() + (int64_t)timeout_s * 1000 : INT64_MAX;
        int r = 0;
        while (!stop_requested && ws_mono_ms() < deadline) {
            r = shipper_flush(sh, 200);
            if (r != 0) break;
        }
        if (r == 1) {
            fprintf(stderr, "walship ship: drained %s\n", path);
        } else {
            char json[8192];
            ws_status_json(shipper_spool(sh), path, cfg.url, json, sizeof json);
            fprintf(stderr, "walship ship: could not drain %s: %s\n", path,
                    r < 0 ? walship_strerror(-r) : "timed out");
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
    int json = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            json = 1;
        else if (strcmp(argv[i], "--spool-dir") == 0 && i + 1 < argc)
            spool_dir = argv[++i];
        else if (argv[i][0] == '-')
            return cli_usage("status", "unknown option %s", argv[i]);
        else
            db = argv[i];
    }
    if (db == NULL) return cli_usage("status", "usage: walship status DB [--json]");
    char path[4096], dir[4200];
    if (full_path("status", db, path, sizeof path)) return 1;
    int replica_rc = cmd_replica_status(path, json); /* -1: not a replica */
    if (replica_rc >= 0) return replica_rc;
    const char *base = getenv("WALSHIP_SPOOL_DIR");
    const char *slash = strrchr(path, '/');
    if (spool_dir)
        snprintf(dir, sizeof dir, "%s", spool_dir);
    else if (base && *base)
        snprintf(dir, sizeof dir, "%s/%s-walship", base, slash ? slash + 1 : path);
    else
        snprintf(dir, sizeof dir, "%s-walship", path);
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
    ws_status_json(sp, path, NULL, out, sizeof out);
    spool_close(sp);
    if (json) {
        printf("%s\n", out);
        return 0;
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
    return 0;
}
