/*
** test_cli_input.c -- what the command line accepts, and what it prints.
**
**   - ws_parse_time: RFC 3339 strictly. Dates that do not exist (2026-02-30,
**     2025-02-29, 2100-02-29, day 0, month 13), hour 24, minute 60, second
**     60, offsets past 23:59, fractions with no or more than 9 digits,
**     missing or extra characters are refused; leap days, offsets, both
**     ends of the range and fractions are computed exactly (against
**     days counted by hand, not against timegm).
**   - ws_redact_url / ws_url_has_credentials: userinfo goes, wherever the
**     URL is (inside a query value, percent-encoded, a secret holding '/'
**     or '@'); URLs without one are left alone byte for byte.
**   - store_open refuses a URL with credentials and its message does not
**     contain them.
**   - The CLI: every numeric option (restore --txid/--parallel, replica
**     --poll-ms/--checkpoint-frames/--parallel and --metrics's port, ship
**     --timeout) refuses overflow, signs, spaces, empty strings and
**     trailing junk with exit 2 and a message naming the option; --time
**     refuses impossible dates with exit 2; --generation refuses non-hex.
**   - Secrets: restore, verify, generations and replica given URLs with
**     credentials (s3:// and file:// userinfo, an endpoint= with userinfo,
**     plain and percent-encoded, a secret with '/') exit non-zero and the
**     secret appears nowhere in stdout or stderr, even at WALSHIP_LOG=debug.
**   - `walship replica` with a bad URL exits 1 and creates nothing: no
**     PATH, no PATH-walship-replica/.
**
** ctest-labels: cli unit
** ctest-timeout: 120
*/
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "dbutil.h"
#include "harness.h"
#include "store/store.h"

/* ---- ws_parse_time ---------------------------------------------------------- */

/* Milliseconds at y-m-d h:m:s UTC, counting days by hand. */
static int64_t ms_at(int y, int m, int d, int hh, int mm, int ss) {
    static const int mdays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int64_t days = 0;
    for (int yy = 1970; yy < y; yy++)
        days += 365 + ((yy % 4 == 0 && yy % 100 != 0) || yy % 400 == 0);
    for (int k = 1; k < m; k++)
        days += mdays[k - 1] + (k == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0));
    days += d - 1;
    return ((days * 24 + hh) * 60 + mm) * 60000 + (int64_t)ss * 1000;
}

static void parses(const char *s, int64_t want) {
    int64_t got = -12345;
    if (ws_parse_time(s, &got) != 0) ws_test_fail(__FILE__, __LINE__, "\"%s\" was refused", s);
    if (got != want)
        ws_test_fail(__FILE__, __LINE__, "\"%s\" parsed as %" PRId64 ", want %" PRId64, s, got,
                     want);
}

static void refused(const char *s) {
    int64_t got = -12345;
    if (ws_parse_time(s, &got) != WALSHIP_ERR_INVALID)
        ws_test_fail(__FILE__, __LINE__, "\"%s\" was accepted as %" PRId64, s, got);
    CHECK_EQ(got, -12345); /* untouched */
}

static void test_parse_time(void) {
    parses("1970-01-01T00:00:00Z", 0);
    parses("2026-11-26T09:30:00Z", ms_at(2026, 11, 26, 9, 30, 0));
    parses("2026-11-26t09:30:00z", ms_at(2026, 11, 26, 9, 30, 0));
    parses("2026-11-26 09:30:00Z", ms_at(2026, 11, 26, 9, 30, 0));
    parses("2024-02-29T12:00:00Z", ms_at(2024, 2, 29, 12, 0, 0)); /* leap year */
    parses("2000-02-29T00:00:00Z", ms_at(2000, 2, 29, 0, 0, 0));  /* divisible by 400 */
    parses("2026-12-31T23:59:59Z", ms_at(2026, 12, 31, 23, 59, 59));
    parses("2026-04-30T00:00:00Z", ms_at(2026, 4, 30, 0, 0, 0));
    parses("2026-11-26T09:30:00.5Z", ms_at(2026, 11, 26, 9, 30, 0) + 500);
    parses("2026-11-26T09:30:00.123Z", ms_at(2026, 11, 26, 9, 30, 0) + 123);
    parses("2026-11-26T09:30:00.123456789Z", ms_at(2026, 11, 26, 9, 30, 0) + 123);
    parses("2026-11-26T10:30:00+01:00", ms_at(2026, 11, 26, 9, 30, 0));
    parses("2026-11-26T04:00:00-05:30", ms_at(2026, 11, 26, 9, 30, 0));
    parses("2026-11-26T09:30:00-00:00", ms_at(2026, 11, 26, 9, 30, 0));
    parses("2026-11-27T09:29:00+23:59", ms_at(2026, 11, 26, 9, 30, 0));
    parses("9999-12-31T23:59:59Z", ms_at(9999, 12, 31, 23, 59, 59));

    refused("2026-02-30T00:00:00Z"); /* became 2026-03-02 */
    refused("2026-02-29T00:00:00Z"); /* not a leap year */
    refused("2100-02-29T00:00:00Z"); /* divisible by 100, not by 400 */
    refused("2026-04-31T00:00:00Z");
    refused("2026-06-31T00:00:00Z");
    refused("2026-09-31T00:00:00Z");
    refused("2026-11-31T00:00:00Z");
    refused("2026-01-32T00:00:00Z");
    refused("2026-01-00T00:00:00Z");
    refused("2026-00-10T00:00:00Z");
    refused("2026-13-10T00:00:00Z");
    refused("2026-11-26T24:00:00Z");
    refused("2026-11-26T23:60:00Z");
    refused("2026-11-26T23:59:60Z"); /* no leap seconds */
    refused("2026-11-26T23:59:61Z");
    refused("2026-11-26T09:30:00+24:00");
    refused("2026-11-26T09:30:00+01:60");
    refused("2026-11-26T09:30:00+0100");
    refused("2026-11-26T09:30:00+1:00");
    refused("2026-11-26T09:30:00.Z");
    refused("2026-11-26T09:30:00.1234567890Z"); /* 10 fraction digits */
    refused("2026-11-26T09:30:00");             /* no zone */
    refused("2026-11-26T09:30Z");
    refused("2026-11-26");
    refused("2026-11-26T09:30:00ZZ");
    refused("2026-11-26T09:30:00Z ");
    refused(" 2026-11-26T09:30:00Z");
    refused("+2026-11-26T09:30:00Z");
    refused("2026-1-26T09:30:00Z");
    refused("2026-11-26X09:30:00Z");
    refused("");
    refused("yesterday");
}

/* ---- redaction ------------------------------------------------------------------ */

static void redacts(const char *in, const char *want) {
    char out[512];
    ws_redact_url(out, sizeof out, in);
    if (strcmp(out, want) != 0)
        ws_test_fail(__FILE__, __LINE__, "redact(\"%s\") = \"%s\", want \"%s\"", in, out, want);
    CHECK_EQ(ws_url_has_credentials(in), strcmp(in, want) != 0);
}

static void test_redact(void) {
    redacts("s3://KEY:SECRET@bucket/x", "s3://bucket/x");
    redacts("s3://KEY@bucket/x", "s3://bucket/x");
    redacts("s3://AKIA:abc/def+ghi@bucket/x", "s3://bucket/x"); /* AWS secrets hold '/' */
    redacts("s3://KEY:SE@CRET@bucket/x", "s3://bucket/x");
    redacts("file://KEY:SECRET@localhost/var/x", "file://localhost/var/x");
    redacts("s3://b/x?endpoint=http://K:S@127.0.0.1:9000&region=r",
            "s3://b/x?endpoint=http://127.0.0.1:9000&region=r");
    redacts("s3://b/x?endpoint=http%3A%2F%2FK%3AS%40127.0.0.1%3A9000",
            "s3://b/x?endpoint=http%3A%2F%2F127.0.0.1%3A9000");
    redacts("store URL \"s3://K:S@b/x\" is bad; see https://u:p@h/", "store URL \"s3://b/x\" is bad; see https://h/");
    /* No credentials: unchanged. */
    redacts("s3://bucket/prefix@2026/x", "s3://bucket/prefix@2026/x");
    redacts("file:///data/user@host/store", "file:///data/user@host/store");
    redacts("s3://bucket/x?endpoint=http://127.0.0.1:9000", "s3://bucket/x?endpoint=http://127.0.0.1:9000");
    redacts("no url here: a@b", "no url here: a@b");
    redacts("", "");
    /* Truncation keeps the result terminated and still without the secret. */
    char small[12];
    ws_redact_url(small, sizeof small, "s3://K:SECRET@bucket/x");
    CHECK_STREQ(small, "s3://bucket");
}

static void test_store_open_refuses(void) {
    static const char *const urls[] = {
        "s3://KEY:S3kr1tZ@bucket/x",
        "s3://AKIA:S3k/r1tZ@bucket/x",
        "file://KEY:S3kr1tZ@localhost/tmp/x",
        "https://KEY:S3kr1tZ@host/x",
        "s3://bucket/x?endpoint=http://KEY:S3kr1tZ@127.0.0.1:1",
        "s3://bucket/x?endpoint=http%3A%2F%2FKEY%3AS3kr1tZ%40127.0.0.1%3A1",
    };
    for (size_t i = 0; i < sizeof urls / sizeof urls[0]; i++) {
        store *s = NULL;
        wserr err = {0};
        CHECK_RC(store_open(urls[i], &s, &err), WALSHIP_ERR_INVALID, &err);
        CHECK(s == NULL);
        CHECK_CONTAINS(err.msg, "credentials");
        if (strstr(err.msg, "S3k"))
            ws_test_fail(__FILE__, __LINE__, "the secret of %s is in \"%s\"", urls[i], err.msg);
    }
}

/* ---- the command line -------------------------------------------------------------- */

static char out[16384];

/* None of what a command could have created exists in dir: the output
** r.db or out.db, a replica rep.db and its state directory. */
static void nothing_created(const char *dir, const char *after) {
    static const char *const names[] = {"r.db", "out.db", "rep.db", "rep.db-walship-replica"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char p[4200];
        struct stat st;
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        if (stat(p, &st) == 0) ws_test_fail(__FILE__, __LINE__, "%s left %s", after, p);
    }
}

/* Runs `walship ARGS` (ARGS a shell fragment made from fmt) in dir; it must
** exit 2 with a message that contains names. */
static void usage_error(const char *dir, const char *names, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void usage_error(const char *dir, const char *names, const char *fmt, ...) {
    char args[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    int rc = db_capture(out, sizeof out, "cd '%s' && '%s' %s", dir, ws_test_env("WALSHIP_BIN"),
                        args);
    if (rc != 2) ws_test_fail(__FILE__, __LINE__, "walship %s exited %d, want 2: %s", args, rc, out);
    if (strstr(out, names) == NULL)
        ws_test_fail(__FILE__, __LINE__, "walship %s: \"%s\" does not name %s", args, out, names);
}

/* An option and a command line using it: %s for the URL, then the value. */
typedef struct opt_use {
    const char *name, *fmt;
} opt_use;

static void test_cli_numbers(void) {
    const char *dir = ws_test_tmpdir();
    char url[4200];
    snprintf(url, sizeof url, "file://%s/numbers-store", dir);
    static const char *const bad[] = {
        "99999999999999999999999", "18446744073709551616", "-1", "+5", "' 5'", "'5 '",
        "''", "5x", "0x10", "1e3", "'5\n'",
    };
    static const opt_use numeric[] = {
        {"--txid", "restore '%s' -o r.db --txid %s"},
        {"--parallel", "restore '%s' -o r.db --parallel %s"},
        {"--txid", "verify '%s' --txid %s"},
        {"--poll-ms", "replica '%s' rep.db --poll-ms %s"},
        {"--checkpoint-frames", "replica '%s' rep.db --checkpoint-frames %s"},
        {"--parallel", "replica '%s' rep.db --parallel %s"},
        {"--timeout", "ship app.db --url '%s' --timeout %s"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        for (size_t k = 0; k < sizeof numeric / sizeof numeric[0]; k++)
            usage_error(dir, numeric[k].name, numeric[k].fmt, url, bad[i]);
    /* Out of the option's own range; a value missing. */
    usage_error(dir, "--parallel", "restore '%s' -o r.db --parallel 33", url);
    usage_error(dir, "--txid", "restore '%s' -o r.db --txid 0", url);
    usage_error(dir, "--checkpoint-frames", "replica '%s' rep.db --checkpoint-frames 15", url);
    usage_error(dir, "--poll-ms", "replica '%s' rep.db --poll-ms", url);
    static const char *const ports[] = {"127.0.0.1:+80", "' 80'", "127.0.0.1:-1", "99999", "80x",
                                        "''", "127.0.0.1:"};
    for (size_t i = 0; i < sizeof ports / sizeof ports[0]; i++)
        usage_error(dir, "--metrics", "replica '%s' rep.db --metrics %s", url, ports[i]);
    static const char *const times[] = {"2026-02-30T00:00:00Z", "2026-11-26T24:00:00Z",
                                        "2026-11-26T09:30:60Z", "2026-11-26T09:30:00+25:00",
                                        "2026-11-26T09:30:00", "''"};
    for (size_t i = 0; i < sizeof times / sizeof times[0]; i++)
        usage_error(dir, "--time", "restore '%s' -o r.db --time %s", url, times[i]);
    static const char *const gens[] = {"xyz", "-1", "0", "''", "00000000000000000", "0x12"};
    for (size_t i = 0; i < sizeof gens / sizeof gens[0]; i++)
        usage_error(dir, "--generation", "restore '%s' -o r.db --generation %s", url, gens[i]);
    usage_error(dir, "-o", "restore file:///x -o ''");
    nothing_created(dir, "a usage error");
}

static void test_cli_secrets(void) {
    const char *dir = ws_test_tmpdir();
    static const char *const urls[] = {
        "s3://AKIAKEYID:S3kr1tVal@bucket/x",
        "s3://AKIAKEYID:S3kr/1t+Val@bucket/x",
        "file://AKIAKEYID:S3kr1tVal@localhost/tmp/x",
        "s3://bucket/x?endpoint=http://AKIAKEYID:S3kr1tVal@127.0.0.1:1",
        "s3://bucket/x?endpoint=http%3A%2F%2FAKIAKEYID%3AS3kr1tVal%40127.0.0.1%3A1",
        "https://AKIAKEYID:S3kr1tVal@host/x",
    };
    static const char *const cmds[] = {"restore '%s' -o out.db", "verify '%s'",
                                       "generations '%s'", "replica '%s' rep.db",
                                       "restore file:///x '%s' -o out.db"};
    for (size_t u = 0; u < sizeof urls / sizeof urls[0]; u++) {
        for (size_t c = 0; c < sizeof cmds / sizeof cmds[0]; c++) {
            char args[4096];
            snprintf(args, sizeof args, cmds[c], urls[u]);
            int rc = db_capture(out, sizeof out, "cd '%s' && WALSHIP_LOG=debug '%s' %s", dir,
                                ws_test_env("WALSHIP_BIN"), args);
            if (rc == 0) ws_test_fail(__FILE__, __LINE__, "walship %s succeeded: %s", args, out);
            if (strstr(out, "S3kr") || strstr(out, "1t+Val"))
                ws_test_fail(__FILE__, __LINE__, "walship %s printed the secret: %s", args, out);
            if (out[0] == '\0')
                ws_test_fail(__FILE__, __LINE__, "walship %s printed no error", args);
            nothing_created(dir, args);
        }
    }
}

/* A replica given a URL that cannot be opened leaves nothing on disk. */
static void test_replica_bad_url(void) {
    const char *dir = ws_test_tmpdir();
    static const char *const urls[] = {"s3://", "s3://Bad_Bucket/x", "ftp://host/x",
                                       "file://relative/dir", "s3://bucket/x?nope=1"};
    for (size_t i = 0; i < sizeof urls / sizeof urls[0]; i++) {
        int rc = db_capture(out, sizeof out, "cd '%s' && '%s' replica '%s' rep.db", dir,
                            ws_test_env("WALSHIP_BIN"), urls[i]);
        if (rc != 1) ws_test_fail(__FILE__, __LINE__, "replica %s exited %d: %s", urls[i], rc, out);
        nothing_created(dir, urls[i]);
    }
}

int main(void) {
    RUN(test_parse_time);
    RUN(test_redact);
    RUN(test_store_open_refuses);
    RUN(test_cli_numbers);
    RUN(test_cli_secrets);
    RUN(test_replica_bad_url);
    fprintf(stderr, "ok\n");
    return 0;
}
