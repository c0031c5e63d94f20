/*
** s3_http.h -- one S3 request over libcurl: SigV4 signing, the shared pool
** of connections, timeouts, retries with backoff, and turning a failure
** into a walship error that names the fix. Used by store_s3.c only.
**
** The caller describes a request (s3_req) against an endpoint (s3_conf);
** s3_http_perform runs it, retrying what is worth retrying, and fills an
** s3_resp. Thread-safe: any number of threads may perform requests at once,
** each borrowing one curl handle (and so one connection) from the pool for
** the length of the request.
*/
#ifndef WS_S3_HTTP_H
#define WS_S3_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "../common/err.h"
#include "../common/util.h"
#include "s3_xml.h"

/* Where and how to reach one bucket. Immutable once the store is open, so
** shared by every thread without a lock. All strings owned by the store. */
typedef struct s3_conf {
    const char *display;  /* "s3://BUCKET/PREFIX" (no query), for messages */
    const char *endpoint; /* "http://127.0.0.1:7480" or "https://s3.eu-west-1.amazonaws.com" */
    const char *base;     /* URL every request path is appended to (scheme, host, and
                          ** "/BUCKET" when path-style) */
    const char *bucket;
    const char *sigv4; /* "aws:amz:REGION:s3" */
    const char *access_key;
    const char *secret_key;
    const char *token_header; /* "x-amz-security-token: ..." or NULL */
    const char *ca_bundle;    /* AWS_CA_BUNDLE or NULL */
    long connect_timeout_ms;
    long stall_timeout_ms;
    int attempts; /* total tries per request, >= 1 */
    /* Told before each retry (store_set_retry_hook); may be NULL. */
    void (*on_retry)(void *ctx, const char *msg);
    void *retry_ctx;
} s3_conf;

/* Where a successful (2xx) response body goes. Error bodies are always
** kept apart (capped) for the error parser. */
enum {
    S3_SINK_NONE = 0, /* a body is read into s3_resp.body, capped at S3_XML_DOC_MAX */
    S3_SINK_BUF = 1,  /* appended to req.buf (reset per attempt), at most req.buf_max */
    S3_SINK_FD = 2,   /* written to req.fd at its current offset */
    S3_SINK_CB = 3    /* handed to req.cb in order; a retry resumes where the last try stopped
                      ** (each byte is handed over once) and fails if the ETag changed */
};

/* An S3_SINK_CB receiver: status is the answer's (200, or 206 for a range).
** Returns 0 to go on, or a walship_err with err set to stop the request,
** which then fails with that code and message (not retried). */
typedef int (*s3_sink_fn)(void *ctx, long status, const uint8_t *data, size_t n, wserr *err);

typedef struct s3_req {
    const char *op;     /* for messages and logs: "put", "list", "upload part 3" */
    const char *method; /* GET PUT POST DELETE HEAD */
    const char *path;   /* percent-encoded, appended to conf.base: "/pfx/k" or "" */
    const char *query;  /* canonical query string without '?', or NULL */
    const char *key;    /* object key for messages (relative), NULL for bucket ops */
    const void *body;   /* request body (resent whole on every attempt) */
    size_t body_len;
    const char *content_type; /* or NULL */
    const char *content_md5;  /* base64, or NULL */
    const char *range;        /* "bytes=0-99", or NULL */
    int if_none_match;        /* send "If-None-Match: *" */
    int error_in_200;         /* a 200 body may be an <Error> (CompleteMultipartUpload) */
    int sink;
    wsbuf *buf;
    uint64_t buf_max;
    int fd;
    s3_sink_fn cb; /* S3_SINK_CB */
    void *cb_ctx;
} s3_req;

typedef struct s3_resp {
    long status;  /* final HTTP status, 0 if none arrived */
    int attempts; /* how many tries were made */
    int has_length;
    uint64_t length; /* Content-Length of the final response */
    int has_range_total;
    uint64_t range_total;           /* object size from Content-Range: bytes a-b/TOTAL */
    char etag[S3_XML_TEXT_MAX + 1]; /* ETag header, quotes kept; "" if none */
    int64_t mtime_ms;               /* Last-Modified, 0 if none */
    s3_xml_error s3;                /* <Error> of a failed response (code "" if none) */
    wsbuf body;                     /* S3_SINK_NONE body; owned, free with s3_resp_free */
} s3_resp;

void s3_resp_free(s3_resp *r);

/* Runs req against conf with retries (see the policy in s3_http.c).
** Returns 0 for a 2xx answer. Otherwise returns a walship_err and fills
** err with a sentence naming the request, the problem and the fix; resp
** still holds the last status and <Error> code, so callers can treat some
** answers differently (404 on DELETE, 412, 416). resp is reset on entry
** and must be released with s3_resp_free whatever the result. */
int s3_http_perform(const s3_conf *conf, const s3_req *req, s3_resp *resp, wserr *err);

/* Process-wide connection pool: each open store holds one reference, and
** the idle connections are closed when the last reference goes. */
int s3_http_pool_ref(wserr *err);
void s3_http_pool_unref(void);

/* Appends s[0..n) percent-encoded as SigV4 wants: everything but
** A-Za-z0-9-_.~ (and '/' when keep_slash) as %XX, upper-case hex. */
int s3_uri_encode(wsbuf *out, const char *s, size_t n, int keep_slash);

/* Lower-case hex SHA-256 of data (65 bytes incl. NUL). */
void s3_sha256_hex(const void *data, size_t len, char out[65]);
/* Base64 of the MD5 of data (25 bytes incl. NUL). */
void s3_md5_base64(const void *data, size_t len, char out[25]);

/* Replaces every occurrence of the conf's secret key and session token in
** msg with "[redacted]". Used on every message that includes server text. */
void s3_redact(const s3_conf *conf, char *msg);

#endif
