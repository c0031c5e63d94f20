/*
** test_replica_s3.c -- a replica following an S3 store (scripts/test starts
** a Ceph RGW), through a fault proxy.
**
**   follow     a primary ships to S3; the replica (talking to S3 through
**              tests/faultproxy.c) follows it under readers
**   requests   an idle replica makes exactly one LIST per poll and no GET:
**              the proxy's request count equals the replica's own counters
**   outage     the proxy refuses connections: the replica keeps serving the
**              last state, counts store errors, reports the error and a
**              growing lag; when the store is back it catches up
** At the end replica and primary are byte for byte equal.
*/
/* ctest-labels: s3 replica */
/* ctest-timeout: 180 */
#include "faultproxy.h"
#include "replica_testlib.h"

static const char *dir;
static char url[2048], rurl[2048], pdb[600], rdb[600], done[600], logp[700];

/* Replaces the endpoint of an s3:// URL with the proxy's. */
static void proxy_url(const char *in, int port, char *out, size_t n, char *host, int *hport) {
    const char *e = strstr(in, "endpoint=");
    if (e == NULL) ws_test_skip_s3("WALSHIP_TEST_S3_URL has no endpoint= (needed to put a proxy in front)");
    const char *v = e + 9, *end = v + strcspn(v, "&");
    char ep[512];
    snprintf(ep, sizeof ep, "%.*s", (int)(end - v), v);
    /* http://HOST:PORT[/] */
    const char *h = strstr(ep, "://");
    h = h ? h + 3 : ep;
    const char *colon = strrchr(h, ':');
    if (colon == NULL) ws_test_skip_s3("the S3 endpoint has no port");
    snprintf(host, 256, "%.*s", (int)(colon - h), h);
    *hport = atoi(colon + 1);
    snprintf(out, n, "%.*shttp://127.0.0.1:%d%s", (int)(v - in), in, port, end);
}

static void wait_status(const char *key, uint64_t at_least) {
    int64_t deadline = ws_mono_ms() + 30000;
    while (rt_status_u64(rdb, key) < at_least) {
        if (ws_mono_ms() > deadline) ws_test_fail(__FILE__, __LINE__, "%s never reached %llu", key,
                                                  (unsigned long long)at_least);
        ws_sleep_ms(20);
    }
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "reader") == 0) return rt_reader_main(argc, argv);
    if (argc > 1 && strcmp(argv[1], "primary") == 0) return rt_primary_main(argc, argv);
    snprintf(url, sizeof url, "%s", ws_test_s3_url("replica"));
    dir = ws_test_tmpdir();
    snprintf(pdb, sizeof pdb, "%s/primary.db", dir);
    snprintf(rdb, sizeof rdb, "%s/replica.db", dir);
    snprintf(done, sizeof done, "%s/primary.done", dir);
    snprintf(logp, sizeof logp, "%s/replica.log", dir);
    char host[256];
    int hport = 0;
    proxy_url(url, 1, rurl, sizeof rurl, host, &hport); /* parse only */
    faultproxy *fp = fp_start(host, hport);
    CHECK(fp != NULL);
    proxy_url(url, fp_port(fp), rurl, sizeof rurl, host, &hport);

    fprintf(stderr, "-- follow through the proxy\n");
    uint64_t gen, txid;
    rt_run_primary(pdb, url, 30, done, 0, &gen, &txid);
    pid_t rep = rt_start_replica(rurl, rdb, logp, "--poll-ms", "100");
    rt_wait_replica(rdb, gen, txid, 60000);
    char stop[700], total[32], res[2][700];
    snprintf(stop, sizeof stop, "%s/stop-readers", dir);
    snprintf(total, sizeof total, "%d", RT_TOTAL);
    pid_t rd[2];
    for (int i = 0; i < 2; i++) {
        snprintf(res[i], sizeof res[i], "%s/reader-%d.txt", dir, i);
        rd[i] = rt_spawn_self(NULL, "reader", rdb, stop, res[i], total, "tight", (const char *)NULL);
    }
    uint64_t txid0 = txid;
    rt_run_primary(pdb, url, 150, done, 0, &gen, &txid);
    rt_wait_replica(rdb, gen, txid, 60000);
    rt_done d;
    rt_read_done_full(done, &d);
    CHECK_EQ(txid - txid0, 150); /* one TXID per commit */
    rt_check_replica_content(rdb, d.hash);

    fprintf(stderr, "-- requests of an idle replica\n");
    kill(rep, SIGTERM);
    CHECK_EQ(rt_wait(rep, 30000), 0);
    uint64_t before = fp_requests(fp);
    rep = rt_start_replica(rurl, rdb, logp, "--poll-ms", "100");
    rt_wait_replica(rdb, gen, txid, 60000);
    wait_status("list_requests", 21);
    kill(rep, SIGTERM);
    CHECK_EQ(rt_wait(rep, 30000), 0);
    uint64_t reqs = fp_requests(fp) - before;
    uint64_t lists = rt_status_u64(rdb, "list_requests"), gets = rt_status_u64(rdb, "get_requests");
    fprintf(stderr,
            "   %llu HTTP requests seen by the proxy; the replica counted %llu LIST + %llu GET "
            "(one full listing at resume, then one LIST per poll)\n",
            (unsigned long long)reqs, (unsigned long long)lists, (unsigned long long)gets);
    CHECK_EQ(gets, 0);
    CHECK_EQ(reqs, lists + gets);

    fprintf(stderr, "-- the store goes away, and comes back\n");
    rep = rt_start_replica(rurl, rdb, logp, "--poll-ms", "100");
    rt_wait_replica(rdb, gen, txid, 60000);
    uint64_t applied = txid;
    CHECK_EQ(fp_set_mode(fp, FP_REFUSE), 0);
    pid_t prim = rt_spawn_self(NULL, "primary", pdb, url, "100", done, "0", (const char *)NULL);
    wait_status("store_errors", 1);
    wait_status("lag_ms", 1500);
    char st[16384];
    CHECK_EQ(rt_replica_status(rdb, st, sizeof st), 0);
    fprintf(stderr, "   during the outage: %.240s\n", strstr(st, "\"lag_ms\""));
    CHECK_EQ(rt_status_u64(rdb, "applied_txid"), applied); /* still serving the last state */
    CHECK(strstr(st, "\"last_error\":\"\"") == NULL);
    CHECK_EQ(rt_wait(prim, 120000), 0);
    rt_read_done(done, &gen, &txid);
    CHECK_EQ(fp_set_mode(fp, FP_PASS), 0);
    rt_wait_replica(rdb, gen, txid, 60000);
    rt_read_done_full(done, &d);
    CHECK_EQ(txid - applied, 100);
    rt_check_replica_content(rdb, d.hash);

    rt_touch(stop);
    for (int i = 0; i < 2; i++) rt_reader_finish(i, rd[i], res[i], 1, 0);
    kill(rep, SIGTERM);
    CHECK_EQ(rt_wait(rep, 30000), 0);
    CHECK_EQ(rt_files_equal(pdb, rdb), 0);
    fp_stop(fp);
    return 0;
}
