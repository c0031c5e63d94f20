/*
** main.c -- the walship command-line tool: dispatch to subcommands.
**
** The tool is a thin layer over the library: every command parses its
** arguments, calls one library entry point and prints the outcome. Errors go
** to stderr as one sentence that names the problem and the fix.
*/
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "common/log.h"
#include "common/util.h"
#include "walship.h"

static void usage(FILE *out) {
    fprintf(out,
            "walship %s -- continuous backups and read replicas for SQLite\n"
            "\n"
            "usage: walship COMMAND [ARGS]\n"
            "\n"
            "commands:\n"
            "  restore URL -o PATH [--txid N | --time T] [--generation ID] [--force]\n"
            "          [--parallel N] [--no-check] [--quiet]\n"
            "                        rebuild the database as of the latest transaction,\n"
            "                        transaction N, or time T (RFC 3339, e.g.\n"
            "                        2026-11-26T09:30:00Z); the result must pass PRAGMA\n"
            "                        quick_check (--no-check: skip); --force replaces\n"
            "                        PATH, never while a process has it open\n"
            "  generations URL       list what the store holds\n"
            "  verify URL [--txid N | --time T]\n"
            "                        full restore to a temporary file, every checksum,\n"
            "                        and PRAGMA integrity_check\n"
            "  ship DB [--url URL] [--drain [--timeout S]] [--adopt]\n"
            "                        run the shipper for DB in this process (the URL\n"
            "                        defaults to where DB already ships); --drain\n"
            "                        uploads everything pending and exits (default\n"
            "                        deadline 300 s; exit 1 if it cannot); --adopt\n"
            "                        takes over a destination another database owns\n"
            "  status DB [--json] [--check [--max-lag-ms N]]\n"
            "                        shipping status of a database; --check exits 1\n"
            "                        unless a shipper runs, with no error and no lag\n"
            "  replica URL PATH [--poll-ms N] [--metrics ADDR:PORT]\n"
            "          [--checkpoint-frames N] [--parallel N] [--no-sync]\n"
            "                        keep a read-only replica of the database at PATH\n"
            "  version               print the version\n"
            "  help                  print this help\n"
            "\n"
            "URL: s3://BUCKET/PREFIX[?endpoint=URL&region=R] or file:///ABS/DIR.\n"
            "S3 credentials come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,\n"
            "AWS_SESSION_TOKEN, AWS_REGION and AWS_ENDPOINT_URL. Log detail:\n"
            "WALSHIP_LOG=error|warn|info|debug.\n",
            walship_version());
}

/* Every message the CLI prints about an error goes through here: it may
** quote a URL the user gave, and a URL's credentials are never printed. */
static void print_error(const char *prefix, const char *msg) {
    char clean[2048];
    ws_redact_url(clean, sizeof clean, msg);
    fprintf(stderr, "%s%s\n", prefix, clean);
}

int cli_fail(const wserr *err) {
    print_error("walship: ", err->msg[0] ? err->msg : walship_strerror(err->code));
    return 1;
}

int cli_usage(const char *cmd, const char *fmt, ...) {
    char msg[1536], prefix[64];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(prefix, sizeof prefix, "walship %s: ", cmd);
    size_t len = strlen(msg);
    snprintf(msg + len, sizeof msg - len, " (run \"walship help\")");
    print_error(prefix, msg);
    return 2;
}

int cli_u64_range(const char *cmd, const char *opt, const char *s, uint64_t min, uint64_t max,
                  uint64_t *out) {
    uint64_t v = 0;
    int ok = s != NULL && *s != '\0';
    for (const char *p = s; ok && *p; p++) {
        unsigned d = (unsigned)(*p - '0');
        if (d > 9 || v > (UINT64_MAX - d) / 10)
            ok = 0; /* not a digit (signs, spaces, junk), or more than UINT64_MAX */
        else
            v = v * 10 + d;
    }
    if (ok && v >= min && v <= max) {
        *out = v;
        return 0;
    }
    const char *given = s ? s : "";
    const char *more = strlen(given) > 40 ? "..." : "";
    if (min == 0 && max == UINT64_MAX)
        return cli_usage(cmd, "%s needs a whole number (digits only, at most %" PRIu64
                              "), not \"%.40s%s\"",
                         opt, max, given, more);
    return cli_usage(cmd, "%s needs a whole number from %" PRIu64 " to %" PRIu64
                          ", not \"%.40s%s\"",
                     opt, min, max, given, more);
}

int cli_u64(const char *cmd, const char *opt, const char *s, uint64_t *out) {
    return cli_u64_range(cmd, opt, s, 0, UINT64_MAX, out);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (getenv("WALSHIP_LOG") == NULL) ws_log_set_stderr_level(WS_LOG_WARN);
    const char *cmd = argv[1];
    static const struct {
        const char *name;
        int (*fn)(int, char **);
    } cmds[] = {{"restore", cmd_restore}, {"verify", cmd_verify},
                {"generations", cmd_generations}, {"ship", cmd_ship},
                {"status", cmd_status}, {"replica", cmd_replica}};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        if (strcmp(cmd, cmds[i].name) == 0) return cmds[i].fn(argc - 1, argv + 1);
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("walship %s\n", walship_version());
        return 0;
    }
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "walship: unknown command \"%s\"; run \"walship help\"\n", cmd);
    return 2;
}
