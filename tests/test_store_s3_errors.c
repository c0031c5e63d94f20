/*
** test_store_s3_errors.c -- the s3:// backend when things go wrong.
**
** The conformance suite (test_store_conformance.c) checks that the store
** API behaves the same on file:// and s3://; this file checks what only S3
** has: URLs and credentials, authentication failures, a missing bucket, a
** server that stops, hangs, cuts answers short or answers with errors a
** real server will not produce on demand (SlowDown, InternalError, an
** <Error> inside a 200, 501), retries that must resend the whole body,
** create-only puts on a server that ignores If-None-Match, connection
** sharing between stores, and many threads on one store.
**
** Faults come from tests/faultproxy.c, a TCP proxy in this process in
** front of the test RGW (WALSHIP_TEST_S3_URL, endpoint http://127.0.0.1:P).
** Requests are counted at the proxy, so "not retried" means exactly one
** request reached the server. Every failure is also checked for secrets:
** the secret key, a wrong secret, the session token and any signature
** material must never appear in a message or a log line.
**
** Settings used here (read at store_open): WALSHIP_S3_RETRIES=3,
** WALSHIP_S3_CONNECT_TIMEOUT_MS=2000, WALSHIP_S3_TIMEOUT_MS=1000.
*/
/* ctest-labels: s3 threads */
/* ctest-timeout: 300 */
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

#include "common/log.h"
#include "faultproxy.h"
#include "harness.h"
#include "store/store.h"

#define ATTEMPTS      3
#define WRONG_SECRET  "wrong-secret-WALSHIPX0123456789abcdef"
#define SESSION_TOKEN "FQoGZXIvYXdzEXAMPLETOKENwalship0123456789"

static faultproxy *fp;
static char real_secret[256];
static char real_key_id[256];

/* ---- log capture ------------------------------------------------------------- */

static atomic_int retry_lines;
static atomic_int leaked_in_log;

static int has_secret(const char *s) {
    return (real_secret[0] && strstr(s, real_secret)) || strstr(s, WRONG_SECRET) ||
           strstr(s, SESSION_TOKEN) || strstr(s, "Signature=") || strstr(s, "Credential=") ||
           strstr(s, "AWS4-HMAC-SHA256") || strstr(s, "uthorization:");
}

static void log_sink(int level, const char *line) {
    (void)level;
    if (strstr(line, "event=s3_retry")) atomic_fetch_add(&retry_lines, 1);
    if (has_secret(line)) {
        fprintf(stderr, "SECRET IN LOG: %s\n", line);
        atomic_store(&leaked_in_log, 1);
    }
}

/* ---- helpers ------------------------------------------------------------------ */

/* A failed call: the expected code, a message containing needle (if any),
** and no secret anywhere in it. */
#define EXPECT_FAIL(expr, want, needle)                                                            \
    do {                                                                                           \
        int rc__ = (expr);                                                                         \
        check_failure(rc__, (want), err, (needle), #expr, __LINE__);                               \
    } while (0)

static void check_failure(int rc, int want, const wserr *err, const char *needle, const char *what,
                          int line) {
    if (rc != want)
        ws_test_fail(__FILE__, line, "%s returned %d (%s), expected %d (%s): %s", what, rc,
                     walship_strerror(rc), want, walship_strerror(want), err->msg);
    if (err->code != want || err->msg[0] == '\0')
        ws_test_fail(__FILE__, line, "%s: err not filled (code %d, msg \"%s\")", what, err->code,
                     err->msg);
    if (needle && strstr(err->msg, needle) == NULL)
        ws_test_fail(__FILE__, line, "%s: \"%s\" does not contain \"%s\"", what, err->msg, needle);
    if (has_secret(err->msg)) ws_test_fail(__FILE__, line, "%s: secret in \"%s\"", what, err->msg);
    fprintf(stderr, "   ok: %s -> %s\n", what, err->msg);
}

static void set_secret(const char *s) { setenv("AWS_SECRET_ACCESS_KEY", s, 1); }

/* The test server's port, when it is on 127.0.0.1 over http (else -1). */
static int upstream_port(void) {
    static const char pat[] = "endpoint=http://127.0.0.1:";
    const char *u = getenv("WALSHIP_TEST_S3_URL");
    const char *e = u ? strstr(u, pat) : NULL;
    if (e) return atoi(e + sizeof pat - 1);
    const char *ep = getenv("WALSHIP_TEST_S3_ENDPOINT");
    if (ep && strncmp(ep, "http://127.0.0.1:", 17) == 0) return atoi(ep + 17);
    return -1;
}

/* A fresh URL under the test prefix (ws_test_s3_url) whose endpoint is the
** proxy; other query parameters are kept. */
static void proxied_url(const char *name, char *out, size_t cap) {
    const char *u = ws_test_s3_url(name);
    const char *q = strchr(u, '?');
    size_t base = q ? (size_t)(q - u) : strlen(u);
    size_t n =
        (size_t)snprintf(out, cap, "%.*s?endpoint=http://127.0.0.1:%d", (int)base, u, fp_port(fp));
    for (const char *p = q ? q + 1 : NULL; p && *p;) {
        size_t len = strcspn(p, "&");
        if (strncmp(p, "endpoint=", 9) != 0 && len > 0)
            n += (size_t)snprintf(out + n, cap - n, "&%.*s", (int)len, p);
        p += len;
        if (*p == '&') p++;
    }
    CHECK(n < cap);
}

/* Opens a store through the proxy, which is put back to FP_PASS. */
static store *open_proxied(const char *name) {
    char url[2048];
    wserr eb = {0}, *err = &eb;
    store *s = NULL;
    CHECK_OK(fp_set_mode(fp, FP_PASS), err);
    proxied_url(name, url, sizeof url);
    CHECK_OK(store_open(url, &s, err), err);
    return s;
}

/* Deletes everything under the store's prefix, then frees it. */
static void drain_and_free(store *s) {
    wserr eb = {0}, *err = &eb;
    store_objlist l = {0};
    CHECK_OK(fp_set_mode(fp, FP_PASS), err);
    CHECK_OK(store_list(s, "", NULL, &l, err), err);
    const char **keys = calloc(l.n + 1, sizeof *keys);
    CHECK(keys != NULL);
    for (size_t i = 0; i < l.n; i++)
        keys[i] = l.items[i].key;
    CHECK_OK(store_delete_many(s, keys, l.n, err), err);
    free(keys);
    store_objlist_free(&l);
    store_free(s);
}

static void fill(uint8_t *p, size_t n, uint8_t seed) {
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(i * 131 + seed + (i >> 12));
}

/* ---- no server needed ------------------------------------------------------------ */

static void test_bad_urls(void) {
    wserr eb = {0}, *err = &eb;
    store *s = NULL;
    static const char *const bad[] = {"s3://",
                                      "s3:///x",
                                      "s3://Bad_Bucket",
                                      "gs://x",
                                      "s3://ab",
                                      "s3://-bucket",
                                      "s3://bucket-",
                                      "s3://a..b",
                                      "s3://192.168.1.1",
                                      "s3://bucket?foo=1",
                                      "s3://bucket?endpoint",
                                      "s3://bucket?path_style=2",
                                      "s3://bucket/a//b",
                                      "s3://bucket/a/../b",
                                      "s3://bucket//a",
                                      "s3://bucket?region=a:b",
                                      "s3://bucket?endpoint=x%zz"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        EXPECT_FAIL(store_open(bad[i], &s, err), WALSHIP_ERR_INVALID, NULL);
        CHECK(s == NULL);
        /* Everything but the region is about the URL's form: name it. */
        if (strstr(bad[i], "region") == NULL) CHECK_CONTAINS(err->msg, "s3://BUCKET");
    }
    static const char *const bad_endpoints[] = {
        "s3://bucket?endpoint=ftp://127.0.0.1:1", "s3://bucket?endpoint=http://",
        "s3://bucket?endpoint=http://user:pw@127.0.0.1:1", "s3://bucket?endpoint=http://h/p?q=1",
        "s3://bucket?endpoint=http://127.0.0.1:1&endpoint=http://127.0.0.1:2"};
    for (size_t i = 0; i < sizeof bad_endpoints / sizeof bad_endpoints[0]; i++) {
        EXPECT_FAIL(store_open(bad_endpoints[i], &s, err), WALSHIP_ERR_INVALID, "endpoint");
        CHECK(strstr(err->msg, "user:pw") == NULL); /* credentials in a URL are not echoed */
    }
}

static void test_good_urls(void) {
    wserr eb = {0}, *err = &eb;
    static const char *const good[] = {
        "s3://bucket",
        "s3://bucket/",
        "s3://my.bucket/a/b/",
        "s3://b-1/p?region=eu-west-1",
        "s3://bucket/p?endpoint=https%3A%2F%2Fminio.example%3A9000&path_style=0",
        "s3://bucket?endpoint=http://127.0.0.1:9/&region=auto&path_style=1",
        "s3://bucket/.hidden/p~x"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        store *s = NULL;
        CHECK_OK(store_open(good[i], &s, err), err);
        CHECK_STREQ(store_url(s), good[i]);
        store_free(s);
    }
    /* Tuning variables are checked, and named when wrong. */
    static const char *const vars[] = {"WALSHIP_S3_RETRIES", "WALSHIP_S3_TIMEOUT_MS",
                                       "WALSHIP_S3_CONNECT_TIMEOUT_MS"};
    for (int i = 0; i < 3; i++) {
        char *old = strdup(getenv(vars[i]));
        store *s = NULL;
        setenv(vars[i], "0", 1);
        EXPECT_FAIL(store_open("s3://bucket", &s, err), WALSHIP_ERR_INVALID, vars[i]);
        setenv(vars[i], "12x", 1);
        EXPECT_FAIL(store_open("s3://bucket", &s, err), WALSHIP_ERR_INVALID, vars[i]);
        setenv(vars[i], old, 1);
        free(old);
    }
}

static void test_missing_credentials(void) {
    wserr eb = {0}, *err = &eb;
    store *s = NULL;
    char id[256], secret[256];
    ws_strlcpy(id, getenv("AWS_ACCESS_KEY_ID"), sizeof id);
    ws_strlcpy(secret, getenv("AWS_SECRET_ACCESS_KEY"), sizeof secret);

    unsetenv("AWS_ACCESS_KEY_ID");
    unsetenv("AWS_SECRET_ACCESS_KEY");
    EXPECT_FAIL(store_open("s3://bucket/p", &s, err), WALSHIP_ERR_AUTH, "AWS_ACCESS_KEY_ID");
    CHECK_CONTAINS(err->msg, "AWS_SECRET_ACCESS_KEY");
    CHECK_CONTAINS(err->msg, "s3://bucket/p");
    setenv("AWS_ACCESS_KEY_ID", id, 1);
    EXPECT_FAIL(store_open("s3://bucket", &s, err), WALSHIP_ERR_AUTH,
                "AWS_SECRET_ACCESS_KEY is not set");
    setenv("AWS_SECRET_ACCESS_KEY", "", 1);
    EXPECT_FAIL(store_open("s3://bucket", &s, err), WALSHIP_ERR_AUTH,
                "AWS_SECRET_ACCESS_KEY is not set");
    set_secret(secret);
    unsetenv("AWS_ACCESS_KEY_ID");
    EXPECT_FAIL(store_open("s3://bucket", &s, err), WALSHIP_ERR_AUTH,
                "AWS_ACCESS_KEY_ID is not set");
    setenv("AWS_ACCESS_KEY_ID", "has space", 1);
    EXPECT_FAIL(store_open("s3://bucket", &s, err), WALSHIP_ERR_AUTH, "AWS_ACCESS_KEY_ID");
    setenv("AWS_ACCESS_KEY_ID", id, 1);
    setenv("AWS_SESSION_TOKEN", SESSION_TOKEN "\r\nX-Injected: 1", 1);
    EXPECT_FAIL(store_open("s3://bucket", &s, err), WALSHIP_ERR_AUTH, "AWS_SESSION_TOKEN");
    unsetenv("AWS_SESSION_TOKEN");
    CHECK(s == NULL);
}

/* ---- authentication ---------------------------------------------------------------- */

static void test_wrong_secret(void) {
    wserr eb = {0}, *err = &eb;
    wsbuf b = {0};
    store_obj o;
    store_objlist l = {0};
    set_secret(WRONG_SECRET);
    store *s = open_proxied("wrong-secret");
    set_secret(real_secret);

#define ONE_REQUEST(expr, want, needle)                                                            \
    do {                                                                                           \
        uint64_t r0 = fp_requests(fp);                                                             \
        EXPECT_FAIL(expr, want, needle);                                                           \
        CHECK_EQ(fp_requests(fp) - r0, 1);                                                         \
    } while (0)
    ONE_REQUEST(store_put(s, "k", "v", 1, 0, err), WALSHIP_ERR_AUTH, "SignatureDoesNotMatch");
    CHECK_CONTAINS(err->msg, "check AWS_SECRET_ACCESS_KEY");
    ONE_REQUEST(store_get(s, "k", &b, err), WALSHIP_ERR_AUTH, "SignatureDoesNotMatch");
    ONE_REQUEST(store_list(s, "", NULL, &l, err), WALSHIP_ERR_AUTH, "SignatureDoesNotMatch");
    ONE_REQUEST(store_delete(s, "k", err), WALSHIP_ERR_AUTH, "SignatureDoesNotMatch");
    /* HEAD answers carry no body, so no code: the message names both keys. */
    ONE_REQUEST(store_head(s, "k", &o, err), WALSHIP_ERR_AUTH, "AWS_SECRET_ACCESS_KEY");
    CHECK_EQ(l.n, 0);
    store_free(s);

    /* An access key the server does not know. */
    setenv("AWS_ACCESS_KEY_ID", "WALSHIPNOSUCHKEY0001", 1);
    s = open_proxied("unknown-key");
    setenv("AWS_ACCESS_KEY_ID", real_key_id, 1);
    ONE_REQUEST(store_put(s, "k", "v", 1, 0, err), WALSHIP_ERR_AUTH, "InvalidAccessKeyId");
    CHECK_CONTAINS(err->msg, "check AWS_ACCESS_KEY_ID");
    store_free(s);

    /* A session token the server does not accept: refused, token never shown. */
    setenv("AWS_SESSION_TOKEN", SESSION_TOKEN, 1);
    s = open_proxied("bad-token");
    unsetenv("AWS_SESSION_TOKEN");
    uint64_t r0 = fp_requests(fp);
    int rc = store_put(s, "k", "v", 1, 0, err);
    CHECK(rc == WALSHIP_ERR_AUTH || rc == 0);
    if (rc)
        check_failure(rc, WALSHIP_ERR_AUTH, err, NULL, "put with a bad session token", __LINE__);
    CHECK_EQ(fp_requests(fp) - r0, 1);
    store_free(s);
    wsbuf_free(&b);
}

static void test_unknown_bucket(void) {
    wserr eb = {0}, *err = &eb;
    char url[256], bucket[64];
    store *s = NULL;
    wsbuf b = {0};
    store_objlist l = {0};
    store_obj o;
    snprintf(bucket, sizeof bucket, "walship-no-such-bucket-%d", (int)getpid());
    snprintf(url, sizeof url, "s3://%s/p?endpoint=http://127.0.0.1:%d", bucket, fp_port(fp));
    CHECK_OK(store_open(url, &s, err), err);
    ONE_REQUEST(store_put(s, "k", "v", 1, 0, err), WALSHIP_ERR_NOTFOUND, bucket);
    CHECK_CONTAINS(err->msg, "create it or fix the URL");
    ONE_REQUEST(store_get(s, "k", &b, err), WALSHIP_ERR_NOTFOUND, bucket);
    ONE_REQUEST(store_list(s, "", NULL, &l, err), WALSHIP_ERR_NOTFOUND, bucket);
    /* Deleting from a missing bucket is not "already deleted". */
    ONE_REQUEST(store_delete(s, "k", err), WALSHIP_ERR_NOTFOUND, bucket);
    const char *keys[] = {"a", "b"};
    ONE_REQUEST(store_delete_many(s, keys, 2, err), WALSHIP_ERR_NOTFOUND, bucket);
    ONE_REQUEST(store_head(s, "k", &o, err), WALSHIP_ERR_NOTFOUND, NULL);
    store_writer *w = NULL;
    CHECK_OK(store_writer_open(s, "w", 0, &w, err), err);
    CHECK_OK(store_writer_write(w, "abc", 3, err), err);
    ONE_REQUEST(store_writer_commit(w, err), WALSHIP_ERR_NOTFOUND, bucket);
    store_free(s);
    wsbuf_free(&b);
}

/* TLS is always verified, against AWS_CA_BUNDLE when set. An https
** endpoint whose CA file is missing fails at once, naming the variable. */
static void test_tls_settings(void) {
    wserr eb = {0}, *err = &eb;
    char url[256], missing[4200];
    store *s = NULL;
    snprintf(missing, sizeof missing, "%s/no-such-ca.pem", ws_test_tmpdir());
    setenv("AWS_CA_BUNDLE", missing, 1);
    snprintf(url, sizeof url, "s3://wstest/p?endpoint=https://127.0.0.1:%d", fp_port(fp));
    CHECK_OK(store_open(url, &s, err), err);
    unsetenv("AWS_CA_BUNDLE");
    CHECK_OK(fp_set_mode(fp, FP_PASS), err);
    atomic_store(&retry_lines, 0);
    EXPECT_FAIL(store_put(s, "k", "v", 1, 0, err), WALSHIP_ERR_NETWORK, "AWS_CA_BUNDLE");
    CHECK_EQ(atomic_load(&retry_lines), 0); /* a configuration error: not retried */
    store_free(s);
}

/* ---- the server goes away ------------------------------------------------------------ */

static void test_server_stopped(void) {
    wserr eb = {0}, *err = &eb;
    wsbuf b = {0};
    store_objlist l = {0};
    char port[32];
    store *s = open_proxied("stopped");
    snprintf(port, sizeof port, "127.0.0.1:%d", fp_port(fp));

    for (int i = 0; i < 3; i++) {
        char key[32];
        snprintf(key, sizeof key, "k%d", i);
        CHECK_OK(store_put(s, key, key, strlen(key), 0, err), err);
    }
    CHECK_OK(store_get(s, "k1", &b, err), err);

    CHECK_OK(fp_set_mode(fp, FP_REFUSE), err);
    uint64_t c0 = fp_connections(fp);
    atomic_store(&retry_lines, 0);
    int64_t t0 = ws_mono_ms();
    EXPECT_FAIL(store_get(s, "k1", &b, err), WALSHIP_ERR_NETWORK, port);
    int64_t took = ws_mono_ms() - t0;
    CHECK_CONTAINS(err->msg, "after 3 attempts");
    CHECK_CONTAINS(err->msg, "running");
    CHECK_EQ(atomic_load(&retry_lines), ATTEMPTS - 1);
    /* 3 refused connects and at most 100 + 200 ms of backoff; printed, not
    ** asserted (speed belongs to bench/; a hang is caught by the test's
    ** timeout). */
    fprintf(stderr, "   refused: 3 attempts took %lld ms\n", (long long)took);
    EXPECT_FAIL(store_put(s, "k9", "x", 1, 0, err), WALSHIP_ERR_NETWORK, "after 3 attempts");
    EXPECT_FAIL(store_list(s, "", NULL, &l, err), WALSHIP_ERR_NETWORK, "after 3 attempts");
    CHECK_EQ(l.n, 0);
    CHECK_EQ(fp_connections(fp), c0); /* refused in the kernel: nothing was accepted */

    /* Back up: the same store recovers, nothing was lost. */
    CHECK_OK(fp_set_mode(fp, FP_PASS), err);
    CHECK_OK(store_get(s, "k1", &b, err), err);
    CHECK_EQ(b.len, 2);
    CHECK(memcmp(b.p, "k1", 2) == 0);
    CHECK_OK(store_list(s, "", NULL, &l, err), err);
    CHECK_EQ(l.n, 3);
    store_objlist_free(&l);

    /* A multipart upload cut off in the middle: the writer fails, commit
    ** reports it, and nothing appears under the key. */
    size_t n = STORE_PART_SIZE + 4096;
    uint8_t *data = malloc(n);
    CHECK(data != NULL);
    fill(data, n, 7);
    store_writer *w = NULL;
    CHECK_OK(store_writer_open(s, "mp", 0, &w, err), err);
    CHECK_OK(store_writer_write(w, data, STORE_PART_SIZE, err), err);
    CHECK_OK(store_writer_write(w, data + STORE_PART_SIZE, 1, err), err); /* part 1 is sent */
    CHECK_OK(fp_set_mode(fp, FP_REFUSE), err);
    CHECK_OK(store_writer_write(w, data + STORE_PART_SIZE + 1, n - STORE_PART_SIZE - 1, err), err);
    EXPECT_FAIL(store_writer_commit(w, err), WALSHIP_ERR_NETWORK, "part 2");
    CHECK_OK(fp_set_mode(fp, FP_PASS), err);
    store_obj o;
    EXPECT_FAIL(store_head(s, "mp", &o, err), WALSHIP_ERR_NOTFOUND, NULL);

    /* A writer whose part upload fails refuses further writes. */
    CHECK_OK(store_writer_open(s, "mp2", 0, &w, err), err);
    CHECK_OK(store_writer_write(w, data, STORE_PART_SIZE, err), err);
    CHECK_OK(fp_set_mode(fp, FP_REFUSE), err);
    EXPECT_FAIL(store_writer_write(w, data, 1, err), WALSHIP_ERR_NETWORK, "start multipart upload");
    EXPECT_FAIL(store_writer_write(w, data, 1, err), WALSHIP_ERR_STATE, "earlier write failed");
    EXPECT_FAIL(store_writer_commit(w, err), WALSHIP_ERR_STATE, "nothing was stored");
    free(data);
    wsbuf_free(&b);
    drain_and_free(s);
}

static void test_blackhole(void) {
    wserr eb = {0}, *err = &eb;
    wsbuf b = {0};
    setenv("WALSHIP_S3_RETRIES", "2", 1);
    store *s = open_proxied("blackhole");
    setenv("WALSHIP_S3_RETRIES", "3", 1);
    CHECK_OK(store_put(s, "k", "value", 5, 0, err), err);
    CHECK_OK(fp_set_mode(fp, FP_BLACKHOLE), err);
    int64_t t0 = ws_mono_ms();
    EXPECT_FAIL(store_get(s, "k", &b, err), WALSHIP_ERR_NETWORK, "stopped answering");
    int64_t took = ws_mono_ms() - t0;
    CHECK_CONTAINS(err->msg, "after 2 attempts");
    CHECK_CONTAINS(err->msg, "WALSHIP_S3_TIMEOUT_MS");
    fprintf(stderr, "   blackhole: 2 attempts with a 1000 ms stall limit took %lld ms\n",
            (long long)took);
    /* Each try waits at least one whole stall period before giving up (a
    ** lower bound slowness cannot break); the upper end is only printed. */
    CHECK(took >= 2 * 1000);
    CHECK_OK(fp_set_mode(fp, FP_PASS), err);
    CHECK_OK(store_get(s, "k", &b, err), err);
    CHECK_EQ(b.len, 5);
    wsbuf_free(&b);
    drain_and_free(s);
}

static void test_truncated(void) {
    wserr eb = {0}, *err = &eb;
    wsbuf b = {0};
    store_objlist l = {0};
    store_obj o;
    store *s = open_proxied("truncated");
    size_t n = 200 * 1024;
    uint8_t *data = malloc(n);
    CHECK(data != NULL);
    fill(data, n, 3);
    CHECK_OK(store_put(s, "obj", data, n, 0, err), err);
    for (int i = 0; i < 20; i++) {
        char key[32];
        snprintf(key, sizeof key, "many/%02d", i);
        CHECK_OK(store_put(s, key, "x", 1, 0, err), err);
    }
    /* Cut inside the status line, inside the headers, inside the body. */
    static const uint64_t cuts[] = {0, 5, 40, 200, 1000, 100 * 1024};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        fprintf(stderr, "   cut after %llu bytes\n", (unsigned long long)cuts[i]);
        CHECK_OK(fp_set_mode(fp, FP_TRUNCATE_AFTER(cuts[i])), err);
        uint64_t r0 = fp_requests(fp);
        EXPECT_FAIL(store_get(s, "obj", &b, err), WALSHIP_ERR_NETWORK, "after 3 attempts");
        CHECK_EQ(fp_requests(fp) - r0, ATTEMPTS);
        CHECK_EQ(b.len, 0);
        if (cuts[i] < 1000) { /* list and head answers are shorter than that */
            EXPECT_FAIL(store_list(s, "many/", NULL, &l, err), WALSHIP_ERR_NETWORK, NULL);
            CHECK_EQ(l.n, 0);
            EXPECT_FAIL(store_head(s, "obj", &o, err), WALSHIP_ERR_NETWORK, NULL);
            EXPECT_FAIL(store_put(s, "p", "x", 1, 0, err), WALSHIP_ERR_NETWORK, NULL);
        }
    }
    CHECK_OK(fp_set_mode(fp, FP_PASS), err);
    CHECK_OK(store_get(s, "obj", &b, err), err);
    CHECK(b.len == n && memcmp(b.p, data, n) == 0);
    free(data);
    wsbuf_free(&b);
    drain_and_free(s);
}

/* ---- retries that succeed ----------------------------------------------------------- */

typedef struct pipe_reader {
    int fd;
    wsbuf got;
} pipe_reader;

static void *read_pipe(void *arg) {
    pipe_reader *r = arg;
    uint8_t buf[65536];
    ssize_t k;
    while ((k = read(r->fd, buf, sizeof buf)) > 0)
        if (wsbuf_append(&r->got, buf, (size_t)k)) break;
    return NULL;
}

static void test_retry_resends(void) {
    wserr eb = {0}, *err = &eb;
    wsbuf b = {0};
    store *s = open_proxied("resend");
    size_t n = 3 << 20; /* over 1 MiB: curl sends Expect: 100-continue */
    uint8_t *data = malloc(n);
    CHECK(data != NULL);
    fill(data, n, 11);

    /* The first two connections are cut as soon as the request starts; the
    ** third try must send the whole body again (the server checks its
    ** SHA-256, so a partial or shifted body would be refused). */
    CHECK_OK(fp_set_mode(fp, FP_NEXT(2, FP_TRUNCATE_AFTER(0))), err);
    atomic_store(&retry_lines, 0);
    CHECK_OK(store_put(s, "big", data, n, 0, err), err);
    CHECK_EQ(atomic_load(&retry_lines), 2);
    CHECK_OK(store_get(s, "big", &b, err), err);
    CHECK(b.len == n && memcmp(b.p, data, n) == 0);
    /* Small body (no Expect), and one more cut than tries: it fails. */
    CHECK_OK(fp_set_mode(fp, FP_NEXT(3, FP_TRUNCATE_AFTER(0))), err);
    EXPECT_FAIL(store_put(s, "small", "abc", 3, 0, err), WALSHIP_ERR_NETWORK, "after 3 attempts");
    CHECK_OK(fp_set_mode(fp, FP_NEXT(2, FP_TRUNCATE_AFTER(0))), err);
    CHECK_OK(store_put(s, "small", "abc", 3, 0, err), err);

    /* A download cut in the middle of the body starts over, in memory... */
    CHECK_OK(fp_set_mode(fp, FP_NEXT(1, FP_TRUNCATE_AFTER(700 * 1024))), err);
    CHECK_OK(store_get(s, "big", &b, err), err);
    CHECK(b.len == n && memcmp(b.p, data, n) == 0);
    CHECK_OK(fp_set_mode(fp, FP_NEXT(1, FP_TRUNCATE_AFTER(700 * 1024))), err);
    CHECK_OK(store_get_range(s, "big", 1000, 2 << 20, &b, err), err);
    CHECK(b.len == 2 << 20 && memcmp(b.p, data + 1000, 2 << 20) == 0);

    /* ...and into a file, at the file's offset, which ends after the object. */
    char path[4096];
    snprintf(path, sizeof path, "%s/get_fd", ws_test_tmpdir());
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    CHECK(fd >= 0);
    CHECK(write(fd, "HEAD", 4) == 4);
    CHECK_OK(fp_set_mode(fp, FP_NEXT(1, FP_TRUNCATE_AFTER(700 * 1024))), err);
    CHECK_OK(store_get_fd(s, "big", fd, err), err);
    CHECK_EQ(lseek(fd, 0, SEEK_CUR), 4 + (off_t)n);
    CHECK_OK(ws_read_file(path, n + 4, &b, err), err);
    CHECK(b.len == n + 4 && memcmp(b.p, "HEAD", 4) == 0 && memcmp(b.p + 4, data, n) == 0);
    close(fd);

    /* A pipe cannot be rewound: once bytes went out, the cut is final. */
    int pfd[2];
    CHECK(pipe(pfd) == 0);
    pipe_reader r = {.fd = pfd[0]};
    pthread_t th;
    CHECK(pthread_create(&th, NULL, read_pipe, &r) == 0);
    CHECK_OK(fp_set_mode(fp, FP_NEXT(1, FP_TRUNCATE_AFTER(700 * 1024))), err);
    EXPECT_FAIL(store_get_fd(s, "big", pfd[1], err), WALSHIP_ERR_NETWORK, "cannot seek");
    /* but a failure before the first byte is retried */
    CHECK_OK(fp_set_mode(fp, FP_NEXT(1, FP_TRUNCATE_AFTER(0))), err);
    CHECK_OK(store_get_fd(s, "big", pfd[1], err), err);
    close(pfd[1]);
    CHECK(pthread_join(th, NULL) == 0);
    close(pfd[0]);
    CHECK(r.got.len > n && memcmp(r.got.p + r.got.len - n, data, n) == 0);
    wsbuf_free(&r.got);
    free(data);
    wsbuf_free(&b);
    drain_and_free(s);
}

/* ---- answers a real server will not give on demand ------------------------------------ */

/* A canned HTTP answer with an XML body and a correct Content-Length. */
static const char *canned(char *out, size_t cap, const char *status, const char *extra,
                          const char *body) {
    snprintf(out, cap,
             "HTTP/1.1 %s\r\nContent-Type: application/xml\r\nContent-Length: %zu\r\n%s"
             "Connection: close\r\n\r\n%s",
             status, strlen(body), extra, body);
    return out;
}

static void test_canned_answers(void) {
    wserr eb = {0}, *err = &eb;
    wsbuf b = {0};
    store_objlist l = {0};
    char resp[4096];
    store *s = open_proxied("canned");
    static const struct {
        const char *status, *body;
        int want, requests;
        const char *needle;
    } cases[] = {
        {"503 Slow Down",
         "<Error><Code>SlowDown</Code><Message>Please reduce your request rate."
         "</Message></Error>",
         WALSHIP_ERR_STORE, ATTEMPTS, "slow down"},
        {"500 Internal Server Error", "<Error><Code>InternalError</Code></Error>",
         WALSHIP_ERR_STORE, ATTEMPTS, "InternalError"},
        {"400 Bad Request", "<Error><Code>RequestTimeout</Code></Error>", WALSHIP_ERR_NETWORK,
         ATTEMPTS, "gave up waiting"},
        {"429 Too Many Requests", "", WALSHIP_ERR_STORE, ATTEMPTS, "HTTP 429"},
        {"502 Bad Gateway", "<html><body>502 Bad Gateway</body></html>", WALSHIP_ERR_STORE,
         ATTEMPTS, "HTTP 502"},
        {"408 Request Timeout", "", WALSHIP_ERR_NETWORK, ATTEMPTS, "HTTP 408"},
        {"403 Forbidden",
         "<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>",
         WALSHIP_ERR_AUTH, 1, "access denied"},
        {"404 Not Found", "<Error><Code>NoSuchKey</Code></Error>", WALSHIP_ERR_NOTFOUND, 1,
         "no such object"},
        {"403 Forbidden", "<Error><Code>RequestTimeTooSkewed</Code></Error>", WALSHIP_ERR_AUTH, 1,
         "clock"},
        {"400 Bad Request",
         "<Error><Code>AuthorizationHeaderMalformed</Code><Message>the region "
         "'us-east-1' is wrong; expecting 'eu-west-1'</Message></Error>",
         WALSHIP_ERR_INVALID, 1, "region="},
        {"200 OK", "0123456789", 0, 1, NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        canned(resp, sizeof resp, cases[i].status, "", cases[i].body);
        CHECK_OK(fp_set_mode(fp, FP_RESPOND(resp)), err);
        uint64_t r0 = fp_requests(fp);
        if (cases[i].want) {
            /* the wrong secret may only appear redacted */
            EXPECT_FAIL(store_get(s, "k", &b, err), cases[i].want, cases[i].needle);
        } else {
            CHECK_OK(store_get(s, "k", &b, err), err);
            CHECK_EQ(b.len, 10);
        }
        CHECK_EQ(fp_requests(fp) - r0, cases[i].requests);
    }

    /* A server that echoes the secret key: the message shows it redacted. */
    char body[512];
    snprintf(body, sizeof body,
             "<Error><Code>InvalidArgument</Code><Message>bad key %s</Message>"
             "</Error>",
             real_secret);
    canned(resp, sizeof resp, "400 Bad Request", "", body);
    CHECK_OK(fp_set_mode(fp, FP_RESPOND(resp)), err);
    EXPECT_FAIL(store_get(s, "k", &b, err), WALSHIP_ERR_STORE, "bad key [redacted]");

    /* A length announced past STORE_MEM_MAX is refused before any allocation. */
    snprintf(resp, sizeof resp, "HTTP/1.1 200 OK\r\nContent-Length: 4000000000\r\n\r\n");
    CHECK_OK(fp_set_mode(fp, FP_RESPOND(resp)), err);
    EXPECT_FAIL(store_get(s, "k", &b, err), WALSHIP_ERR_CORRUPT, "stream it to a file");

    /* Broken listings are CORRUPT, and not retried. */
    static const char *const bad_lists[] = {
        "<ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key>x</Key>",
        "<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>",
        "<ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key>elsewhere/x</Key>"
        "<Size>1</Size></Contents></ListBucketResult>",
        "not xml at all"};
    static const char *const needles[] = {"not well-formed", "no continuation token",
                                          "outside the prefix", "not well-formed"};
    for (int i = 0; i < 4; i++) {
        canned(resp, sizeof resp, "200 OK", "", bad_lists[i]);
        CHECK_OK(fp_set_mode(fp, FP_RESPOND(resp)), err);
        uint64_t r0 = fp_requests(fp);
        EXPECT_FAIL(store_list(s, "", NULL, &l, err), WALSHIP_ERR_CORRUPT, needles[i]);
        CHECK_EQ(fp_requests(fp) - r0, 1);
        CHECK_EQ(l.n, 0);
    }
    /* A per-key error inside a DeleteObjects answer is reported. */
    canned(resp, sizeof resp, "200 OK", "",
           "<DeleteResult><Error><Key>x</Key><Code>NoSuchKey</Code></Error><Error><Key>y</Key>"
           "<Code>AccessDenied</Code><Message>Access Denied</Message></Error></DeleteResult>");
    CHECK_OK(fp_set_mode(fp, FP_RESPOND(resp)), err);
    const char *keys[] = {"x", "y"};
    EXPECT_FAIL(store_delete_many(s, keys, 2, err), WALSHIP_ERR_AUTH, "AccessDenied");
    store_free(s);

    /* A server that answers 501 to If-None-Match: create-only is
    ** unsupported, and the object is never written. */
    s = open_proxied("canned-501");
    canned(resp, sizeof resp, "501 Not Implemented", "",
           "<Error><Code>NotImplemented</Code><Message>A header you provided implies "
           "functionality that is not implemented</Message></Error>");
    CHECK_OK(fp_set_mode(fp, FP_RESPOND(resp)), err);
    uint64_t r0 = fp_requests(fp);
    EXPECT_FAIL(store_put(s, "k", "v", 1, STORE_PUT_CREATE_ONLY, err), WALSHIP_ERR_UNSUPPORTED,
                "If-None-Match");
    CHECK_EQ(fp_requests(fp) - r0, 1);
    store_free(s);

    /* A server that ignores If-None-Match (says 200 to everything): the
    ** probe's second create succeeds, so create-only is refused; only the
    ** probe (put, put, delete) reached the server. */
    s = open_proxied("canned-ignore");
    canned(resp, sizeof resp, "200 OK", "ETag: \"abc\"\r\n", "");
    CHECK_OK(fp_set_mode(fp, FP_RESPOND(resp)), err);
    r0 = fp_requests(fp);
    EXPECT_FAIL(store_put(s, "k", "v", 1, STORE_PUT_CREATE_ONLY, err), WALSHIP_ERR_UNSUPPORTED,
                "does not honour If-None-Match");
    CHECK_EQ(fp_requests(fp) - r0, 3);
    /* The verdict is remembered for the bucket: no second probe. */
    EXPECT_FAIL(store_put(s, "k2", "v", 1, STORE_PUT_CREATE_ONLY, err), WALSHIP_ERR_UNSUPPORTED,
                "nothing was written");
    CHECK_EQ(fp_requests(fp) - r0, 3);
    /* Plain puts are fine. */
    CHECK_OK(store_put(s, "k", "v", 1, 0, err), err);
    store_free(s);
    wsbuf_free(&b);
}

/* CompleteMultipartUpload may say 200 and still fail: the <Error> inside is
** read, retried when its code says so, and the upload is aborted. */
static void test_error_inside_200(void) {
    wserr eb = {0}, *err = &eb;
    char resp[1024];
    store *s = open_proxied("in200");
    size_t n = STORE_PART_SIZE + 1;
    uint8_t *data = malloc(n);
    CHECK(data != NULL);
    fill(data, n, 5);
    store_writer *w = NULL;
    CHECK_OK(store_writer_open(s, "mp", 0, &w, err), err);
    CHECK_OK(store_writer_write(w, data, n, err), err); /* part 1 went to RGW */
    canned(resp, sizeof resp, "200 OK", "ETag: \"0123\"\r\n",
           "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\n<Error><Code>InternalError</Code>"
           "<Message>We encountered an internal error. Please try again.</Message></Error>");
    CHECK_OK(fp_set_mode(fp, FP_RESPOND(resp)), err);
    uint64_t r0 = fp_requests(fp);
    EXPECT_FAIL(store_writer_commit(w, err), WALSHIP_ERR_STORE, "InternalError");
    CHECK_CONTAINS(err->msg, "complete multipart upload");
    /* last part, 3 tries of Complete, then the abort */
    CHECK_EQ(fp_requests(fp) - r0, 1 + ATTEMPTS + 1);
    CHECK_OK(fp_set_mode(fp, FP_PASS), err);
    store_obj o;
    EXPECT_FAIL(store_head(s, "mp", &o, err), WALSHIP_ERR_NOTFOUND, NULL);
    free(data);
    drain_and_free(s);
}

/* ---- sharing ------------------------------------------------------------------------- */

/* Hundreds of stores (one per database) share a handful of connections. */
static void test_many_stores(void) {
    wserr eb = {0}, *err = &eb;
    enum { N = 300 };
    store **ss = calloc(N, sizeof *ss);
    CHECK(ss != NULL);
    CHECK_OK(fp_set_mode(fp, FP_PASS), err); /* drops any pooled connection */
    uint64_t c0 = fp_connections(fp);
    for (int i = 0; i < N; i++) {
        char name[32];
        snprintf(name, sizeof name, "many-%03d", i);
        ss[i] = open_proxied(name);
    }
    for (int i = 0; i < N; i++) {
        store_obj o;
        CHECK_OK(store_put(ss[i], "db", "x", 1, 0, err), err);
        CHECK_OK(store_head(ss[i], "db", &o, err), err);
        CHECK_EQ(o.size, 1);
    }
    uint64_t used = fp_connections(fp) - c0;
    fprintf(stderr, "   %d stores, %d requests: %llu connection(s)\n", N, 2 * N,
            (unsigned long long)used);
    CHECK(used <= 2);
    for (int i = 0; i < N; i++)
        CHECK_OK(store_delete(ss[i], "db", err), err);
    for (int i = 0; i < N; i++)
        store_free(ss[i]);
    free(ss);
}

typedef struct worker {
    store *shared; /* one store for all threads */
    store *own;    /* and one per thread, as databases would have */
    int id;
    int failed;
    char msg[WSERR_MSG_MAX];
} worker;

static void *work(void *arg) {
    worker *wk = arg;
    wserr e = {0};
    wsbuf b = {0};
    char key[64];
    uint8_t buf[5000];
    for (int i = 0; i < 24 && !wk->failed; i++) {
        store *s = i % 2 ? wk->shared : wk->own;
        size_t n = (size_t)(wk->id * 97 + i * 31) % sizeof buf;
        fill(buf, n, (uint8_t)(wk->id + i));
        snprintf(key, sizeof key, "t%d/k%02d", wk->id, i);
        store_objlist l = {0};
        if (store_put(s, key, buf, n, 0, &e) || store_get(s, key, &b, &e) ||
            store_list(s, key, NULL, &l, &e)) {
            wk->failed = 1;
        } else if (b.len != n || (n > 0 && memcmp(b.p, buf, n) != 0) || l.n != 1) {
            wk->failed = 1;
            snprintf(e.msg, sizeof e.msg, "thread %d: wrong data for %s", wk->id, key);
        } else if (store_delete(s, key, &e)) {
            wk->failed = 1;
        }
        store_objlist_free(&l);
    }
    if (wk->failed) memcpy(wk->msg, e.msg, sizeof wk->msg);
    wsbuf_free(&b);
    return NULL;
}

/* One store used by many threads at once, next to stores of their own
** (checked by TSan in the build-tsan tree: this file has the "threads"
** label). The threads share the connection pool: at most one connection
** per thread. */
static void test_threads(void) {
    wserr eb = {0}, *err = &eb;
    enum { T = 8 };
    pthread_t th[T];
    worker wk[T];
    store *s = open_proxied("threads");
    for (int i = 0; i < T; i++) {
        char name[32];
        snprintf(name, sizeof name, "thread-%d", i);
        wk[i] = (worker){.shared = s, .own = open_proxied(name), .id = i};
    }
    CHECK_OK(fp_set_mode(fp, FP_PASS), err);
    uint64_t c0 = fp_connections(fp);
    for (int i = 0; i < T; i++)
        CHECK(pthread_create(&th[i], NULL, work, &wk[i]) == 0);
    for (int i = 0; i < T; i++)
        CHECK(pthread_join(th[i], NULL) == 0);
    for (int i = 0; i < T; i++)
        if (wk[i].failed) ws_test_fail(__FILE__, __LINE__, "worker %d: %s", i, wk[i].msg);
    uint64_t used = fp_connections(fp) - c0;
    fprintf(stderr, "   %d threads: %llu connection(s)\n", T, (unsigned long long)used);
    CHECK(used <= T);
    for (int i = 0; i < T; i++)
        drain_and_free(wk[i].own);
    drain_and_free(s);
}

/* ---- sizes and timing, straight to the server -------------------------------------- */

static void test_large_objects(void) {
    wserr eb = {0}, *err = &eb;
    wsbuf b = {0};
    store *s = NULL;
    CHECK_OK(store_open(ws_test_s3_url("s3-large"), &s, err), err);
    size_t n = 20 << 20;
    uint8_t *data = malloc(n);
    CHECK(data != NULL);
    fill(data, n, 9);

    int64_t t0 = ws_mono_ms();
    CHECK_OK(store_put(s, "single-8MiB", data, STORE_PART_SIZE, 0, err), err); /* one PUT */
    int64_t t1 = ws_mono_ms();
    store_writer *w = NULL;
    CHECK_OK(store_writer_open(s, "multi-20MiB", 0, &w, err), err);
    for (size_t off = 0; off < n; off += 1 << 20)
        CHECK_OK(store_writer_write(w, data + off, 1 << 20, err), err);
    CHECK_OK(store_writer_commit(w, err), err);
    int64_t t2 = ws_mono_ms();
    CHECK_OK(store_get(s, "multi-20MiB", &b, err), err);
    int64_t t3 = ws_mono_ms();
    CHECK(b.len == n && memcmp(b.p, data, n) == 0);
    CHECK_OK(store_get(s, "single-8MiB", &b, err), err);
    CHECK(b.len == STORE_PART_SIZE && memcmp(b.p, data, STORE_PART_SIZE) == 0);
    fprintf(stderr, "   8 MiB single PUT %lld ms; 20 MiB multipart put %lld ms, get %lld ms\n",
            (long long)(t1 - t0), (long long)(t2 - t1), (long long)(t3 - t2));

    /* Create-only: a single PUT is refused the second time; a multipart
    ** one is allowed only where the server honours the condition. */
    CHECK_OK(store_put(s, "once", "1", 1, STORE_PUT_CREATE_ONLY, err), err);
    EXPECT_FAIL(store_put(s, "once", "2", 1, STORE_PUT_CREATE_ONLY, err), WALSHIP_ERR_EXISTS,
                "already exists");
    CHECK_OK(store_get(s, "once", &b, err), err);
    CHECK(b.len == 1 && b.p[0] == '1');
    int rc = store_put(s, "big-once", data, n, STORE_PUT_CREATE_ONLY, err);
    store_obj o;
    if (rc == WALSHIP_ERR_UNSUPPORTED) { /* Ceph RGW 16 */
        check_failure(rc, WALSHIP_ERR_UNSUPPORTED, err, "CompleteMultipartUpload",
                      "big create-only", __LINE__);
        EXPECT_FAIL(store_head(s, "big-once", &o, err), WALSHIP_ERR_NOTFOUND, NULL);
    } else { /* AWS and others that honour it */
        CHECK_OK(rc, err);
        EXPECT_FAIL(store_put(s, "big-once", data, n, STORE_PUT_CREATE_ONLY, err),
                    WALSHIP_ERR_EXISTS, NULL);
    }
    free(data);
    wsbuf_free(&b);
    store_objlist l = {0};
    CHECK_OK(store_list(s, "", NULL, &l, err), err);
    for (size_t i = 0; i < l.n; i++)
        CHECK(strncmp(l.items[i].key, ".walship-probe", 14) != 0);
    store_objlist_free(&l);
    const char *keys[] = {"single-8MiB", "multi-20MiB", "once", "big-once"};
    CHECK_OK(store_delete_many(s, keys, 4, err), err);
    store_free(s);
}

int main(void) {
    setenv("WALSHIP_S3_RETRIES", "3", 1);
    setenv("WALSHIP_S3_CONNECT_TIMEOUT_MS", "2000", 1);
    setenv("WALSHIP_S3_TIMEOUT_MS", "1000", 1);
    if (getenv("AWS_ACCESS_KEY_ID") == NULL) setenv("AWS_ACCESS_KEY_ID", "AKIDOFFLINE", 1);
    if (getenv("AWS_SECRET_ACCESS_KEY") == NULL)
        setenv("AWS_SECRET_ACCESS_KEY", "offline-secret", 1);
    ws_strlcpy(real_secret, getenv("AWS_SECRET_ACCESS_KEY"), sizeof real_secret);
    ws_strlcpy(real_key_id, getenv("AWS_ACCESS_KEY_ID"), sizeof real_key_id);
    unsetenv("AWS_SESSION_TOKEN");
    ws_log_set_sink(log_sink, WS_LOG_INFO);

    RUN(test_bad_urls);
    RUN(test_good_urls);
    RUN(test_missing_credentials);

    (void)ws_test_s3_url("probe"); /* skips (or fails under REQUIRE_S3) without a server */
    int port = upstream_port();
    if (port <= 0) ws_test_skip_s3("the fault-proxy tests need an http://127.0.0.1 S3 endpoint");
    fp = fp_start("127.0.0.1", port);
    CHECK(fp != NULL);
    RUN(test_wrong_secret);
    RUN(test_unknown_bucket);
    RUN(test_tls_settings);
    RUN(test_server_stopped);
    RUN(test_blackhole);
    RUN(test_truncated);
    RUN(test_retry_resends);
    RUN(test_canned_answers);
    RUN(test_error_inside_200);
    RUN(test_many_stores);
    RUN(test_threads);
    RUN(test_large_objects);
    fp_stop(fp);
    CHECK_EQ(atomic_load(&leaked_in_log), 0);
    return 0;
}
