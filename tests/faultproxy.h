/*
** faultproxy.h -- a TCP forwarder that breaks on command, for tests.
**
** fp_start() listens on 127.0.0.1 at an ephemeral port and forwards every
** connection to a target (the test S3 server), from one thread of the test
** process. Point a client at fp_port() and switch modes to simulate a store
** that stops, hangs or cuts answers short:
**
**   FP_PASS                forward both ways (the default)
**   FP_REFUSE              the listening socket is closed, so connects are
**                          refused ("server stopped"); open connections are
**                          dropped too
**   FP_BLACKHOLE           connections are accepted and never answered
**   FP_TRUNCATE_AFTER(n)   each connection forwards n bytes of response,
**                          then both sides are closed (n = 0: closed as soon
**                          as the client sends anything)
**   FP_RESPOND(raw)        nothing is forwarded: each connection gets the
**                          bytes raw (one whole HTTP response, which should
**                          say "Connection: close") once the client's request
**                          headers are in, then is closed; for answers a
**                          real server will not give on demand (503
**                          SlowDown, an <Error> inside a 200, 501)
**   FP_NEXT(k, mode)       mode for the next k connections only; after them
**                          the proxy is back to FP_PASS (REFUSE ignores k)
**
** Every mode change drops the connections open at that moment (a client's
** pooled connection would otherwise keep the old behaviour), and
** fp_set_mode returns only once the proxy thread has applied it: a connect
** made after fp_set_mode(fp, FP_REFUSE) returns is refused, and one made
** after switching back to FP_PASS succeeds (the same port is bound again).
**
**   faultproxy *fp = fp_start("127.0.0.1", 7480);
**   ... requests to http://127.0.0.1:<fp_port(fp)> ...
**   fp_set_mode(fp, FP_REFUSE);   ... the store is down ...
**   fp_set_mode(fp, FP_PASS);     ... and back ...
**   fp_stop(fp);
**
** All functions are thread-safe. Synchronisation is a control pipe plus a
** condition variable; the proxy thread sleeps only in poll(2).
*/
#ifndef WS_TEST_FAULTPROXY_H
#define WS_TEST_FAULTPROXY_H

#include <stddef.h>
#include <stdint.h>

typedef struct faultproxy faultproxy;

enum { FP_KIND_PASS, FP_KIND_REFUSE, FP_KIND_BLACKHOLE, FP_KIND_TRUNCATE, FP_KIND_RESPOND };

typedef struct fp_mode {
    int kind;             /* FP_KIND_* */
    uint64_t n;           /* FP_KIND_TRUNCATE: response bytes forwarded per connection */
    unsigned count;       /* applies to the next `count` connections; 0 = all */
    const char *response; /* FP_KIND_RESPOND: copied by fp_set_mode, at most 60 KiB */
} fp_mode;

#define FP_PASS                  ((fp_mode){FP_KIND_PASS, 0, 0, NULL})
#define FP_REFUSE                ((fp_mode){FP_KIND_REFUSE, 0, 0, NULL})
#define FP_BLACKHOLE             ((fp_mode){FP_KIND_BLACKHOLE, 0, 0, NULL})
#define FP_TRUNCATE_AFTER(bytes) ((fp_mode){FP_KIND_TRUNCATE, (uint64_t)(bytes), 0, NULL})
#define FP_RESPOND(raw)          ((fp_mode){FP_KIND_RESPOND, 0, 0, (raw)})
#define FP_NEXT(k, m)            ((fp_mode){(m).kind, (m).n, (unsigned)(k), (m).response})

/* Starts a proxy to target_host:target_port in FP_PASS mode. Returns NULL
** (after printing why to stderr) if it cannot listen or start its thread. */
faultproxy *fp_start(const char *target_host, int target_port);

/* The local port clients should connect to. Constant for the proxy's life. */
int fp_port(const faultproxy *fp);

/* Switches mode; returns 0 once applied, -1 if the port could not be bound
** again when leaving FP_REFUSE (the proxy then stays refusing) or if a
** FP_RESPOND answer is too long or cannot be copied. */
int fp_set_mode(faultproxy *fp, fp_mode mode);

/* Connections accepted so far. */
uint64_t fp_connections(const faultproxy *fp);

/* HTTP/1.1 requests seen from clients so far (request lines ending in
** " HTTP/1.1\r\n"; a request body would have to contain those exact bytes
** to be miscounted). */
uint64_t fp_requests(const faultproxy *fp);

/* Stops the thread, closes every socket and frees fp. Accepts NULL. */
void fp_stop(faultproxy *fp);

#endif
