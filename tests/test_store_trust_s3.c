/*
** test_store_trust_s3.c -- streaming gets on a real S3 server (the test
** RGW), through tests/faultproxy.c, and a restore that meets garbage there.
**
**   resume      the connection is cut after 1 MiB: the retry resumes where
**               the receiver stopped, so it gets every byte exactly once,
**               for a whole object and for a range;
**   stop        a receiver that refuses the first piece ends an 8 MiB get
**               at once, with its own code and message;
**   replaced    the object is replaced between two tries: the get fails
**               instead of handing over a mixture;
**   restore     a store copied to S3 with an 8 MiB garbage segment after
**               its last one: restore fails naming it and the newest TXID
**               that can be restored; with the garbage spanning real
**               segments instead, it is routed around.
**
** Objects stay small: the test RGW is shared and small (memory-backed), and
** deleted objects hold their space until its garbage collection runs.
** Memory bounds with huge objects are test_restore_memory.c's (file://).
**
** ctest-labels: s3 trust
** ctest-timeout: 300
*/
#include <stdatomic.h>

#include "common/log.h"
#include "faultproxy.h"
#include "trust_testlib.h"

static faultproxy *fp;
static const char *root;
static atomic_int retries;

static void log_sink(int level, const char *line) {
    (void)level;
    if (strstr(line, "event=s3_retry")) atomic_fetch_add(&retries, 1);
}

/* url with its endpoint replaced by the proxy's. */
static void via_proxy(const char *url, char *out, size_t n) {
    const char *q = strstr(url, "?endpoint=");
    if (q == NULL) ws_test_skip_s3("WALSHIP_TEST_S3_URL has no endpoint= (needed for the proxy)");
    snprintf(out, n, "%.*s?endpoint=http://127.0.0.1:%d", (int)(q - url), url, fp_port(fp));
}

static int proxied_port(void) {
    const char *ep = getenv("WALSHIP_TEST_S3_ENDPOINT");
    if (ep && strncmp(ep, "http://127.0.0.1:", 17) == 0) return atoi(ep + 17);
    return -1;
}

/* A receiver that keeps everything, and can stop or act on its first piece. */
typedef struct keeper {
    wsbuf got;
    size_t calls;
    int refuse;        /* refuse the first piece */
    store *replace_in; /* on the first piece, replace `key` here */
    const char *key;
} keeper;

static int keep(void *ctx, const uint8_t *data, size_t n, wserr *err) {
    keeper *k = ctx;
    if (k->calls++ == 0) {
        if (k->refuse) return wserr_set(err, WALSHIP_ERR_CORRUPT, "the receiver refused this");
        if (k->replace_in) {
            wserr e = {0};
            CHECK_OK(store_put(k->replace_in, k->key, "other", 5, 0, &e), &e);
        }
    }
    CHECK_EQ(wsbuf_append(&k->got, data, n), 0);
    return 0;
}

static void put_random(store *st, const char *key, size_t size, uint8_t **data) {
    wserr e = {0};
    *data = malloc(size);
    CHECK(*data != NULL);
    ws_test_rand_bytes(*data, size);
    CHECK_OK(store_put(st, key, *data, size, 0, &e), &e);
}

static void test_resume(store *direct, store *px) {
    wserr e = {0};
    uint8_t *data = NULL;
    size_t size = 3 << 20;
    put_random(direct, "obj", size, &data);
    keeper k = {0};
    atomic_store(&retries, 0);
    CHECK_OK(fp_set_mode(fp, FP_NEXT(1, FP_TRUNCATE_AFTER(1 << 20))), &e);
    CHECK_OK(store_get_stream(px, "obj", 0, 0, keep, &k, &e), &e);
    CHECK_EQ(k.got.len, size);
    CHECK(memcmp(k.got.p, data, size) == 0);
    CHECK(atomic_load(&retries) >= 1);
    wsbuf_free(&k.got);

    keeper r = {0};
    CHECK_OK(fp_set_mode(fp, FP_NEXT(1, FP_TRUNCATE_AFTER(600 << 10))), &e);
    CHECK_OK(store_get_stream(px, "obj", 100000, 2 << 20, keep, &r, &e), &e);
    CHECK_EQ(r.got.len, 2 << 20);
    CHECK(memcmp(r.got.p, data + 100000, 2 << 20) == 0);
    wsbuf_free(&r.got);
    free(data);
}

static void test_stop(store *direct, store *px) {
    wserr e = {0};
    char p[1200];
    snprintf(p, sizeof p, "%s/big", root);
    tt_garbage(p, 8 << 20, 8 << 20);
    int fd = open(p, O_RDONLY);
    CHECK(fd >= 0);
    CHECK_OK(store_put_fd(direct, "big", fd, 0, &e), &e);
    close(fd);
    keeper k = {.refuse = 1};
    int64_t t0 = ws_mono_ms();
    CHECK_RC(store_get_stream(px, "big", 0, 0, keep, &k, &e), WALSHIP_ERR_CORRUPT, &e);
    CHECK_STREQ(e.msg, "the receiver refused this");
    CHECK_EQ(k.got.len, 0);
    fprintf(stderr, "   stopped after %lld ms\n", (long long)(ws_mono_ms() - t0));
    wsbuf_free(&k.got);
}

static void test_replaced(store *direct, store *px) {
    wserr e = {0};
    uint8_t *data = NULL;
    put_random(direct, "moving", 2 << 20, &data);
    keeper k = {.replace_in = direct, .key = "moving"};
    CHECK_OK(fp_set_mode(fp, FP_NEXT(1, FP_TRUNCATE_AFTER(512 << 10))), &e);
    CHECK_RC(store_get_stream(px, "moving", 0, 0, keep, &k, &e), WALSHIP_ERR_NETWORK, &e);
    CHECK_CONTAINS(e.msg, "replaced while it was being downloaded");
    CHECK(k.got.len < (2u << 20));
    wsbuf_free(&k.got);
    free(data);
}

/* Copies every object of a file:// store to st. */
static void upload(const tt_store *s, store *st) {
    store *src = NULL;
    wserr e = {0};
    CHECK_OK(store_open(s->url, &src, &e), &e);
    store_objlist l = {0};
    CHECK_OK(store_list(src, "", NULL, &l, &e), &e);
    for (size_t i = 0; i < l.n; i++) {
        char p[2400];
        tt_path(s, l.items[i].key, p, sizeof p);
        int fd = open(p, O_RDONLY);
        CHECK(fd >= 0);
        CHECK_OK(store_put_fd(st, l.items[i].key, fd, 0, &e), &e);
        close(fd);
    }
    store_objlist_free(&l);
    store_free(src);
}

static void test_restore(void) {
    tt_store s;
    char key[300], p[2400], out[1200], fix[64], url[2048];
    tt_build(&s, root, "db", 5);
    CHECK(s.nsegs >= 3);
    seg_key(key, sizeof key, s.gen, s.last_txid + 1, s.last_txid + 1);
    tt_path(&s, key, p, sizeof p);
    tt_garbage(p, 8 << 20, 4096);
    snprintf(url, sizeof url, "%s", ws_test_s3_url("restore"));
    store *st = NULL;
    wserr e = {0};
    CHECK_OK(store_open(url, &st, &e), &e);
    upload(&s, st);
    snprintf(out, sizeof out, "%s/out.db", root);
    snprintf(fix, sizeof fix, "--txid %" PRIu64 ")", s.last_txid);
    CHECK(tt_run(NULL, "restore", url, "-o", out, "--quiet", (const char *)NULL) != 0);
    CHECK_CONTAINS(tt_errout, key);
    CHECK_CONTAINS(tt_errout, fix);
    CHECK(db_file_size(out) < 0);

    /* the garbage spanning two real segments instead: routed around */
    CHECK_OK(store_delete(st, key, &e), &e);
    seg_key(key, sizeof key, s.gen, s.first[1], s.last[2]);
    CHECK_OK(store_put(st, key, "garbage, not a segment", 22, 0, &e), &e);
    CHECK_EQ(tt_run(NULL, "restore", url, "-o", out, "--quiet", (const char *)NULL), 0);
    CHECK_CONTAINS(tt_errout, key);
    CHECK_EQ(tt_rows(out), s.rows);
    store_objlist l = {0}; /* leave nothing behind in the bucket */
    CHECK_OK(store_list(st, "", NULL, &l, &e), &e);
    for (size_t i = 0; i < l.n; i++)
        CHECK_OK(store_delete(st, l.items[i].key, &e), &e);
    store_objlist_free(&l);
    store_free(st);
}

int main(void) {
    ws_test_seed(20261211);
    root = ws_test_tmpdir();
    const char *url = ws_test_s3_url("stream");
    int port = proxied_port();
    if (port < 0)
        ws_test_skip_s3("the S3 endpoint is not http://127.0.0.1:PORT (needed for the proxy)");
    setenv("WALSHIP_S3_RETRIES", "3", 1);
    ws_log_set_sink(log_sink, WS_LOG_WARN);
    fp = fp_start("127.0.0.1", port);
    CHECK(fp != NULL);
    char purl[2048];
    via_proxy(url, purl, sizeof purl);
    store *direct = NULL, *px = NULL;
    wserr e = {0};
    CHECK_OK(store_open(url, &direct, &e), &e);
    CHECK_OK(store_open(purl, &px, &e), &e);
    fprintf(stderr, "-- test_resume\n");
    test_resume(direct, px);
    fprintf(stderr, "-- test_stop\n");
    test_stop(direct, px);
    fprintf(stderr, "-- test_replaced\n");
    test_replaced(direct, px);
    const char *keys[] = {"obj", "big", "moving"};
    CHECK_OK(store_delete_many(direct, keys, 3, &e), &e);
    store_free(px);
    store_free(direct);
    fp_stop(fp);
    RUN(test_restore);
    return 0;
}
