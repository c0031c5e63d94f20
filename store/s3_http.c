/*
** s3_http.c -- one S3 request: signing, the connection pool, retries and
** error mapping. See s3_http.h for the contract.
**
** SIGNING. libcurl signs with CURLOPT_AWS_SIGV4 ("aws:amz:REGION:s3"),
** given the access key and secret through CURLOPT_USERNAME/PASSWORD (never
** USERPWD, which splits at the first ':'). libcurl 7.88 leaves three things
** to us (see the project's S3-TEST-SERVERS.md):
**   - x-amz-content-sha256 must be sent; curl signs whatever value we give.
**     We send the hex SHA-256 of every body. Every body is in memory anyway
**     (the writer buffers one part), the server then verifies the bytes it
**     stored (RGW and AWS refuse a mismatch), which matters on plain-http
**     endpoints where nothing else protects them, and there is one code
**     path instead of two. Cost measured on the 2-vCPU test VM without
**     SHA extensions: 390 MB/s, 21 ms per 8 MiB part, on the shipper's
**     thread, never on the commit path.
**   - the query string is signed exactly as written, so callers build it
**     canonical (store_s3.c does).
**   - every CURLOPT_HTTPHEADER entry is signed, even an empty one that is
**     then not sent ("Expect:"), which breaks the signature. We add no empty
**     header. For bodies over 1 MiB curl adds "Expect: 100-continue" itself;
**     that header is not in our list, so it is not signed (checked on the
**     wire: it is absent from SignedHeaders), and RGW answers 100 at once
**     (3 MiB, 8 MiB and 20 MiB puts tested). We keep it: it lets a server
**     refuse a part (403, 412) before 8 MiB cross the wire.
**
** POOL. One process-wide free list of curl easy handles, protected by
** pool_mu. A request takes a handle, resets its options (curl_easy_reset
** keeps its live connections, DNS and TLS session caches) and puts it back.
** So thousands of stores share as many connections as there are requests in
** flight, and the idle list is capped at POOL_IDLE_MAX. Lock order: pool_mu
** is a leaf; nothing else is locked while it is held.
**
** RETRIES. Up to conf.attempts tries. Retried: network failures (connect
** refused or unreachable, reset, timeout, partial transfer, empty reply),
** HTTP 5xx except 501, 429, 408, and the S3 codes SlowDown, RequestTimeout
** and InternalError (also when CompleteMultipartUpload reports them inside a
** 200). Never retried: every other 4xx (403, 404, 400...), 501, TLS
** certificate failures, and our own aborts (object too large, local write
** error). Between tries we sleep a random time in [0, min(5 s, 100 ms *
** 2^(try-1))] ("full jitter"), so clients that failed together do not
** return together, and log one WS_WARN line without any secret. Each try
** sends the whole body again from its start; a download into a file
** descriptor restarts at the descriptor's original offset (or is not
** retried once bytes were written, if the descriptor cannot seek).
**
** CUT-SHORT ANSWERS. libcurl 7.88 reports success when the connection
** closes inside the response headers (seen: an empty "200" for a GET whose
** answer was cut in its Content-Length line). So a transfer counts as done
** only once the blank line ending the headers came and, for a 2xx body,
** exactly Content-Length bytes (an object read also needs a length or
** chunked framing). Anything else is a broken connection, retried as one.
**
** TIMEOUTS. CURLOPT_CONNECTTIMEOUT_MS bounds connecting; a stall limit
** (CURLOPT_LOW_SPEED_LIMIT 1 byte/s for LOW_SPEED_TIME seconds, rounded
** up) bounds silence without capping how long a big transfer may take.
**
** SECRETS. No message or log line contains the secret key, the session
** token, the signature or the Authorization header: messages are built from
** our own words plus the server's <Code> and <Message> (AWS's
** <StringToSign>, <CanonicalRequest> and <SignatureProvided> are never
** read), and s3_redact scrubs the secret and token from anything that
** quotes the server, in case a server echoes them.
*/
#include "s3_http.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/log.h"

#define POOL_IDLE_MAX   16
#define BACKOFF_BASE_MS 100
#define BACKOFF_MAX_MS  5000
#define ERROR_BODY_MAX  ((size_t)64 << 10) /* an <Error> is < 1 KiB; keep a margin */

/* ---- the pool ----------------------------------------------------------- */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;

static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static CURL *pool_idle[POOL_IDLE_MAX]; /* idle handles; protected by pool_mu */
static int pool_nidle;                 /* protected by pool_mu */
static int pool_refs;                  /* open stores; protected by pool_mu */

static void curl_init_once(void) { curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT); }

int s3_http_pool_ref(wserr *err) {
    pthread_once(&curl_once, curl_init_once);
    if (curl_init_rc != CURLE_OK)
        return wserr_set(err, WALSHIP_ERR_NETWORK, "libcurl failed to initialise: %s",
                         curl_easy_strerror(curl_init_rc));
    pthread_mutex_lock(&pool_mu);
    pool_refs++;
    pthread_mutex_unlock(&pool_mu);
    return 0;
}

void s3_http_pool_unref(void) {
    CURL *drop[POOL_IDLE_MAX];
    int ndrop = 0;
    pthread_mutex_lock(&pool_mu);
    if (--pool_refs == 0) {
        for (int i = 0; i < pool_nidle; i++)
            drop[ndrop++] = pool_idle[i];
        pool_nidle = 0;
    }
    pthread_mutex_unlock(&pool_mu);
    for (int i = 0; i < ndrop; i++)
        curl_easy_cleanup(drop[i]);
}

/* A handle with default options, from the pool or new. NULL if out of memory. */
static CURL *pool_take(void) {
    CURL *h = NULL;
    pthread_mutex_lock(&pool_mu);
    if (pool_nidle > 0) h = pool_idle[--pool_nidle];
    pthread_mutex_unlock(&pool_mu);
    if (h) {
        curl_easy_reset(h);
        return h;
    }
    return curl_easy_init();
}

/* Returns a handle (and its open connection) to the pool, or closes it
** when the pool is full or no store is open any more. */
static void pool_give(CURL *h) {
    pthread_mutex_lock(&pool_mu);
    if (pool_refs > 0 && pool_nidle < POOL_IDLE_MAX) {
        pool_idle[pool_nidle++] = h;
        h = NULL;
    }
    pthread_mutex_unlock(&pool_mu);
    if (h) curl_easy_cleanup(h);
}

/* ---- small helpers -------------------------------------------------------- */

int s3_uri_encode(wsbuf *out, const char *s, size_t n, int keep_slash) {
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        int plain = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                    c == '-' || c == '_' || c == '.' || c == '~' || (keep_slash && c == '/');
        if (plain) {
            if (wsbuf_append(out, &c, 1)) return WALSHIP_ERR_NOMEM;
        } else {
            char esc[3] = {'%', hex[c >> 4], hex[c & 15]};
            if (wsbuf_append(out, esc, 3)) return WALSHIP_ERR_NOMEM;
        }
    }
    return 0;
}

void s3_sha256_hex(const void *data, size_t len, char out[65]) {
    static const char hex[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_Digest(data ? data : "", len, md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != 32) {
        /* Only on a broken libcrypto; a wrong hash makes the server refuse
        ** the request, which is reported then. */
        memset(out, '0', 64);
        out[64] = '\0';
        return;
    }
    for (unsigned i = 0; i < 32; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[64] = '\0';
}

void s3_md5_base64(const void *data, size_t len, char out[25]) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_Digest(data ? data : "", len, md, &mdlen, EVP_md5(), NULL) != 1 || mdlen != 16) {
        memset(md, 0, 16);
    }
    EVP_EncodeBlock((unsigned char *)out, md, 16); /* 24 chars + NUL */
}

/* Hides every occurrence of secret in msg, in place (msg never grows):
** "[redacted]" when the secret is at least that long, else '*'s. */
static void redact_one(char *msg, const char *secret) {
    static const char mark[] = "[redacted]";
    const size_t mlen = sizeof mark - 1;
    size_t slen = secret ? strlen(secret) : 0;
    if (slen < 4) return; /* nothing meaningful to hide */
    char *p = msg;
    while ((p = strstr(p, secret)) != NULL) {
        if (slen >= mlen) {
            memcpy(p, mark, mlen);
            memmove(p + mlen, p + slen, strlen(p + slen) + 1);
            p += mlen;
        } else {
            memset(p, '*', slen);
            p += slen;
        }
    }
}

void s3_redact(const s3_conf *conf, char *msg) {
    redact_one(msg, conf->secret_key);
    if (conf->token_header) {
        const char *tok = strchr(conf->token_header, ':');
        if (tok) redact_one(msg, tok + 2);
    }
}

void s3_resp_free(s3_resp *r) { wsbuf_free(&r->body); }

/* Full-jitter backoff for try number `attempt` (1-based, the one that
** failed). A splitmix64 stream over an atomic counter: no lock, and
** threads that failed together draw different delays. */
static int64_t backoff_ms(int attempt) {
    static _Atomic uint64_t state;
    uint64_t s = atomic_load_explicit(&state, memory_order_relaxed);
    if (s == 0) {
        uint64_t seed = (uint64_t)ws_now_us() ^ ((uint64_t)getpid() << 32);
        uint64_t zero = 0;
        atomic_compare_exchange_strong(&state, &zero, seed | 1);
    }
    uint64_t z = atomic_fetch_add(&state, 0x9E3779B97F4A7C15ull) + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    int64_t cap = BACKOFF_BASE_MS;
    for (int i = 1; i < attempt && cap < BACKOFF_MAX_MS; i++)
        cap *= 2;
    if (cap > BACKOFF_MAX_MS) cap = BACKOFF_MAX_MS;
    return (int64_t)(z % (uint64_t)(cap + 1));
}

/* ---- one transfer --------------------------------------------------------- */

/* State of one try, shared with curl's callbacks. */
typedef struct xfer {
    const s3_req *req;
    s3_resp *resp;
    size_t sent;        /* bytes of req->body handed to curl */
    long status;        /* status of the response being received */
    int to_sink;        /* that status is 2xx: the body is the answer */
    uint64_t delivered; /* answer bytes taken this try */
    uint64_t fd_high;   /* highest fd position written by any try, minus fd_base */
    off_t fd_base;      /* fd offset at the start (seekable fds) */
    int fd_seekable;
    int headers_done; /* the blank line ending the final response's headers came */
    int chunked;      /* Transfer-Encoding: chunked (curl checks the last chunk) */
    int abort_code;   /* set when a callback stops the transfer */
    char abort_msg[256];
    uint64_t cb_high;               /* S3_SINK_CB: body bytes handed over by all tries */
    char cb_etag[S3_XML_TEXT_MAX + 1]; /* the ETag of the try that handed over the first */
    wserr cb_err;                   /* the receiver's own error, passed on as it is */
    wsbuf errbody; /* body of a non-2xx response, capped */
} xfer;

static size_t xfer_abort(xfer *x, int code, const char *msg) {
    if (x->abort_code == 0) {
        x->abort_code = code;
        ws_strlcpy(x->abort_msg, msg, sizeof x->abort_msg);
    }
    return 0; /* makes curl stop with CURLE_WRITE_ERROR */
}

static size_t read_cb(char *dst, size_t size, size_t nitems, void *ud) {
    xfer *x = ud;
    size_t room = size * nitems;
    size_t left = x->req->body_len - x->sent;
    size_t n = left < room ? left : room;
    if (n) memcpy(dst, (const char *)x->req->body + x->sent, n);
    x->sent += n;
    return n;
}

/* curl rewinds the body when it must resend it (a dead reused connection,
** a 100-continue refused); only offsets within the body make sense. */
static int seek_cb(void *ud, curl_off_t offset, int origin) {
    xfer *x = ud;
    if (origin != SEEK_SET || offset < 0 || (uint64_t)offset > x->req->body_len)
        return CURL_SEEKFUNC_FAIL;
    x->sent = (size_t)offset;
    return CURL_SEEKFUNC_OK;
}

/* Matches a header name case-insensitively; returns its trimmed value. */
static const char *header_value(const char *line, size_t len, const char *name, size_t *vlen) {
    size_t nlen = strlen(name);
    if (len <= nlen || strncasecmp(line, name, nlen) != 0 || line[nlen] != ':') return NULL;
    const char *v = line + nlen + 1, *end = line + len;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ' || end[-1] == '\t'))
        end--;
    *vlen = (size_t)(end - v);
    return v;
}

/* Parses digits [p, p+n) as uint64; -1 on anything else or overflow. */
static int parse_u64n(const char *p, size_t n, uint64_t *out) {
    uint64_t v = 0;
    if (n == 0) return -1;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') return -1;
        unsigned d = (unsigned)(p[i] - '0');
        if (v > (UINT64_MAX - d) / 10) return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

static size_t header_cb(char *line, size_t size, size_t nitems, void *ud) {
    xfer *x = ud;
    size_t len = size * nitems;
    s3_resp *r = x->resp;
    const char *v;
    size_t vlen;
    if (len >= 5 && memcmp(line, "HTTP/", 5) == 0) {
        /* A new response (after a 100 Continue, or the first): forget the
        ** previous one's headers. "HTTP/1.1 200 OK" / "HTTP/2 200". */
        const char *sp = memchr(line, ' ', len);
        uint64_t st = 0;
        if (sp == NULL || (size_t)(line + len - sp) < 4 || parse_u64n(sp + 1, 3, &st) != 0)
            return xfer_abort(x, WALSHIP_ERR_NETWORK, "the server sent a malformed status line");
        x->status = (long)st;
        x->to_sink = st >= 200 && st < 300;
        x->headers_done = x->chunked = 0;
        r->has_length = r->has_range_total = 0;
        r->length = r->range_total = 0;
        r->etag[0] = '\0';
        return len;
    }
    if ((len == 2 && line[0] == '\r' && line[1] == '\n') || (len == 1 && line[0] == '\n')) {
        if (x->status >= 200) x->headers_done = 1;
    } else if ((v = header_value(line, len, "content-length", &vlen)) != NULL) {
        if (parse_u64n(v, vlen, &r->length) != 0)
            return xfer_abort(x, WALSHIP_ERR_CORRUPT, "the server sent an invalid Content-Length");
        r->has_length = 1;
        if (x->to_sink && x->req->sink == S3_SINK_BUF && x->req->method[0] != 'H') {
            if (r->length > x->req->buf_max) {
                char msg[200];
                snprintf(msg, sizeof msg,
                         "the object is %llu bytes, more than the %llu that may be read into "
                         "memory: stream it to a file instead",
                         (unsigned long long)r->length, (unsigned long long)x->req->buf_max);
                return xfer_abort(x, WALSHIP_ERR_CORRUPT, msg);
            }
            if (r->length > 0 && r->length <= WSBUF_MAX &&
                wsbuf_reserve(x->req->buf, (size_t)r->length) != 0)
                return xfer_abort(x, WALSHIP_ERR_NOMEM, "out of memory for the object");
        }
    } else if ((v = header_value(line, len, "content-range", &vlen)) != NULL) {
        /* "bytes 0-99/1234"; a 416 has "*" in place of the range. */
        const char *slash = memchr(v, '/', vlen);
        if (slash && parse_u64n(slash + 1, (size_t)(v + vlen - slash - 1), &r->range_total) == 0)
            r->has_range_total = 1;
    } else if ((v = header_value(line, len, "transfer-encoding", &vlen)) != NULL) {
        x->chunked = vlen >= 7 && strncasecmp(v + vlen - 7, "chunked", 7) == 0;
    } else if ((v = header_value(line, len, "etag", &vlen)) != NULL) {
        if (vlen >= sizeof r->etag)
            return xfer_abort(x, WALSHIP_ERR_CORRUPT, "the server sent an over-long ETag");
        memcpy(r->etag, v, vlen);
        r->etag[vlen] = '\0';
    }
    return len;
}

/* Writes the answer to a file descriptor: pwrite at fd_base + delivered
** when seekable (so a retry overwrites the same bytes), else write. */
static size_t sink_fd(xfer *x, const char *data, size_t n) {
    const uint8_t *p = (const uint8_t *)data;
    int rc;
    if (x->fd_seekable)
        rc = ws_pwrite_all(x->req->fd, p, n, x->fd_base + (off_t)x->delivered);
    else
        rc = ws_write_all(x->req->fd, p, n);
    if (rc != 0) {
        char msg[200];
        snprintf(msg, sizeof msg, "writing the object to the local file failed: %s",
                 strerror(errno));
        return xfer_abort(x, wserr_from_errno(errno), msg);
    }
    x->delivered += n;
    if (x->delivered > x->fd_high) x->fd_high = x->delivered;
    return n;
}

/* Hands the answer to req->cb. A retry reads the object again from its
** start; the bytes an earlier try handed over are skipped, and a changed
** ETag means the bytes would not belong together. */
static size_t sink_cb(xfer *x, const char *data, size_t n) {
    uint64_t pos = x->delivered; /* offset of data in this try's answer */
    x->delivered += n;
    if (pos == 0 && n > 0) {
        if (x->cb_high == 0)
            ws_strlcpy(x->cb_etag, x->resp->etag, sizeof x->cb_etag);
        else if (x->cb_etag[0] && x->resp->etag[0] && strcmp(x->cb_etag, x->resp->etag) != 0)
            return xfer_abort(x, WALSHIP_ERR_NETWORK,
                              "the object was replaced while it was being downloaded; try again");
    }
    if (pos + n <= x->cb_high) return n;
    size_t skip = pos < x->cb_high ? (size_t)(x->cb_high - pos) : 0;
    int rc = x->req->cb(x->req->cb_ctx, x->status, (const uint8_t *)data + skip, n - skip,
                        &x->cb_err);
    if (rc != 0) {
        if (x->cb_err.code == 0) wserr_set(&x->cb_err, rc, "the receiver stopped the download");
        return xfer_abort(x, rc, x->cb_err.msg);
    }
    x->cb_high += n - skip;
    return n;
}

static size_t write_cb(char *data, size_t size, size_t nitems, void *ud) {
    xfer *x = ud;
    size_t n = size * nitems;
    if (!x->to_sink) {
        /* An error document: keep the start of it, drop the rest. */
        size_t room = ERROR_BODY_MAX - x->errbody.len;
        if (wsbuf_append(&x->errbody, data, n < room ? n : room) != 0)
            return xfer_abort(x, WALSHIP_ERR_NOMEM, "out of memory reading an error response");
        return n;
    }
    switch (x->req->sink) {
    case S3_SINK_FD: return sink_fd(x, data, n);
    case S3_SINK_CB: return sink_cb(x, data, n);
    case S3_SINK_BUF:
        if (x->delivered + n > x->req->buf_max) {
            char msg[200];
            snprintf(msg, sizeof msg,
                     "the object is larger than the %llu bytes that may be read into memory: "
                     "stream it to a file instead",
                     (unsigned long long)x->req->buf_max);
            return xfer_abort(x, WALSHIP_ERR_CORRUPT, msg);
        }
        if (wsbuf_append(x->req->buf, data, n) != 0)
            return xfer_abort(x, WALSHIP_ERR_NOMEM, "out of memory for the object");
        x->delivered += n;
        return n;
    default:
        if (x->resp->body.len + n > S3_XML_DOC_MAX)
            return xfer_abort(x, WALSHIP_ERR_CORRUPT,
                              "the server's answer is larger than any S3 result");
        if (wsbuf_append(&x->resp->body, data, n) != 0)
            return xfer_abort(x, WALSHIP_ERR_NOMEM, "out of memory reading the server's answer");
        x->delivered += n;
        return n;
    }
}

/* ---- classification ------------------------------------------------------- */

static int code_is(const s3_resp *r, const char *code) { return strcmp(r->s3.code, code) == 0; }

static int status_retryable(const s3_resp *r) {
    if (code_is(r, "SlowDown") || code_is(r, "RequestTimeout") || code_is(r, "InternalError"))
        return 1;
    if (r->status == 501 || code_is(r, "NotImplemented")) return 0;
    return r->status >= 500 || r->status == 429 || r->status == 408;
}

static int curl_retryable(CURLcode cc) {
    switch (cc) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_PARTIAL_FILE:
    case CURLE_GOT_NOTHING:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_WEIRD_SERVER_REPLY: return 1;
    default: return 0;
    }
}

/* curl 7.88 reports success when a connection closes inside the response
** headers, or (without a length) anywhere in the body. So a transfer that
** curl calls complete is checked here: NULL if whole, else what is wrong. */
static const char *answer_cut(const xfer *x, const s3_resp *r, char *buf, size_t cap) {
    const s3_req *q = x->req;
    if (!x->headers_done) return "the answer ended inside its headers";
    if (!x->to_sink || q->method[0] == 'H' || r->status == 204) return NULL;
    if (r->has_length && x->delivered != r->length) {
        snprintf(buf, cap, "the answer ended after %llu of %llu bytes",
                 (unsigned long long)x->delivered, (unsigned long long)r->length);
        return buf;
    }
    if (!r->has_length && !x->chunked && q->sink != S3_SINK_NONE)
        return "the object came without a length, so it cannot be known to be whole";
    return NULL;
}

/* "put of \"k\" in s3://b/p" or "list of s3://b/p", for the front of a message. */
static void describe(const s3_conf *c, const s3_req *q, char *out, size_t n) {
    if (q->key)
        snprintf(out, n, "S3 %s of \"%.200s\" in %s", q->op, q->key, c->display);
    else
        snprintf(out, n, "S3 %s of %s", q->op, c->display);
}

/* Message for a transfer that ended without an HTTP answer. */
static int fail_network(const s3_conf *c, const s3_req *q, CURLcode cc, const char *errbuf,
                        int attempts, wserr *err) {
    char what[320];
    describe(c, q, what, sizeof what);
    const char *detail = errbuf[0] ? errbuf : curl_easy_strerror(cc);
    switch (cc) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
        return wserr_set(err, WALSHIP_ERR_NETWORK,
                         "%s failed: cannot reach %s (%s) after %d attempt%s: check that the "
                         "endpoint URL is right and the server is running",
                         what, c->endpoint, detail, attempts, attempts == 1 ? "" : "s");
    case CURLE_OPERATION_TIMEDOUT:
        return wserr_set(err, WALSHIP_ERR_NETWORK,
                         "%s failed: %s stopped answering (%s; limits: connect %ld ms, stall "
                         "%ld ms) after %d attempt%s: check the server and the network path, or "
                         "raise WALSHIP_S3_CONNECT_TIMEOUT_MS / WALSHIP_S3_TIMEOUT_MS",
                         what, c->endpoint, detail, c->connect_timeout_ms, c->stall_timeout_ms,
                         attempts, attempts == 1 ? "" : "s");
    case CURLE_SSL_CACERT_BADFILE:
        return wserr_set(err, WALSHIP_ERR_NETWORK,
                         "%s failed: the CA certificates to check %s with cannot be loaded (%s): "
                         "check that AWS_CA_BUNDLE names a readable PEM file",
                         what, c->endpoint, detail);
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
        return wserr_set(err, WALSHIP_ERR_NETWORK,
                         "%s failed: the TLS certificate of %s is not trusted (%s): if the "
                         "server uses a private CA, set AWS_CA_BUNDLE to its certificate file",
                         what, c->endpoint, detail);
    default:
        return wserr_set(err, WALSHIP_ERR_NETWORK,
                         "%s failed: network error talking to %s (%s) after %d attempt%s: check "
                         "the server and the network path",
                         what, c->endpoint, detail, attempts, attempts == 1 ? "" : "s");
    }
}

/* Message for an HTTP answer that is an error (or an <Error> in a 200). */
static int fail_http(const s3_conf *c, const s3_req *q, const s3_resp *r, wserr *err) {
    char what[320], said[S3_XML_CODE_MAX + S3_XML_MESSAGE_MAX + 48];
    describe(c, q, what, sizeof what);
    if (r->s3.code[0] && r->s3.message[0])
        snprintf(said, sizeof said, "HTTP %ld %s: %s", r->status, r->s3.code, r->s3.message);
    else if (r->s3.code[0])
        snprintf(said, sizeof said, "HTTP %ld %s", r->status, r->s3.code);
    else
        snprintf(said, sizeof said, "HTTP %ld", r->status);
    int n = r->attempts;
    const char *tries = n == 1 ? "attempt" : "attempts";
    int rc;

    if (code_is(r, "NoSuchBucket"))
        rc = wserr_set(
            err, WALSHIP_ERR_NOTFOUND,
            "%s failed: bucket \"%s\" does not exist at %s (%s): create it or fix the URL", what,
            c->bucket, c->endpoint, said);
    else if (code_is(r, "NoSuchKey") || (r->status == 404 && r->s3.code[0] == '\0'))
        rc = wserr_set(err, WALSHIP_ERR_NOTFOUND, "%s failed: no such object (%s)", what, said);
    else if (code_is(r, "SignatureDoesNotMatch"))
        rc = wserr_set(err, WALSHIP_ERR_AUTH,
                       "%s failed: SignatureDoesNotMatch: the secret key does not match the "
                       "access key: check AWS_SECRET_ACCESS_KEY (%s)",
                       what, said);
    else if (code_is(r, "InvalidAccessKeyId"))
        rc = wserr_set(err, WALSHIP_ERR_AUTH,
                       "%s failed: InvalidAccessKeyId: the server does not know access key \"%s\": "
                       "check AWS_ACCESS_KEY_ID (%s)",
                       what, c->access_key, said);
    else if (code_is(r, "ExpiredToken") || code_is(r, "InvalidToken") ||
             code_is(r, "TokenRefreshRequired"))
        rc = wserr_set(err, WALSHIP_ERR_AUTH,
                       "%s failed: the session token is expired or invalid: refresh "
                       "AWS_SESSION_TOKEN together with the keys (%s)",
                       what, said);
    else if (code_is(r, "RequestTimeTooSkewed"))
        rc = wserr_set(err, WALSHIP_ERR_AUTH,
                       "%s failed: this machine's clock is too far from the server's: fix the "
                       "clock (NTP) (%s)",
                       what, said);
    else if (code_is(r, "AuthorizationHeaderMalformed") || r->status == 301 ||
             code_is(r, "PermanentRedirect"))
        rc = wserr_set(err, WALSHIP_ERR_INVALID,
                       "%s failed: the bucket is in another region or needs another endpoint "
                       "(%s): set region= in the URL or AWS_REGION to the bucket's region",
                       what, said);
    else if (code_is(r, "AccessDenied") || r->status == 403 || r->status == 401)
        rc = wserr_set(err, WALSHIP_ERR_AUTH,
                       "%s failed: access denied (%s): check AWS_ACCESS_KEY_ID and "
                       "AWS_SECRET_ACCESS_KEY, and the permissions of that key on bucket \"%s\"",
                       what, said, c->bucket);
    else if (r->status == 412 || code_is(r, "PreconditionFailed"))
        rc = wserr_set(err, WALSHIP_ERR_EXISTS, "%s failed: the object already exists (%s)", what,
                       said);
    else if (r->status == 501 || code_is(r, "NotImplemented"))
        rc = wserr_set(err, WALSHIP_ERR_UNSUPPORTED,
                       "%s failed: the server does not implement this request (%s)", what, said);
    else if (code_is(r, "SlowDown") || r->status == 429)
        rc = wserr_set(err, WALSHIP_ERR_STORE,
                       "%s failed: the server kept asking to slow down (%s) after %d %s: lower the "
                       "request rate or ask the provider for more capacity",
                       what, said, n, tries);
    else if (code_is(r, "RequestTimeout") || r->status == 408)
        rc = wserr_set(err, WALSHIP_ERR_NETWORK,
                       "%s failed: the server gave up waiting for the request (%s) after %d %s: "
                       "the network path to %s is too slow or stalls",
                       what, said, n, tries, c->endpoint);
    else if (r->status >= 500 || code_is(r, "InternalError"))
        rc = wserr_set(err, WALSHIP_ERR_STORE,
                       "%s failed: server error (%s) after %d %s: the store is having trouble; "
                       "try again later",
                       what, said, n, tries);
    else
        rc = wserr_set(err, WALSHIP_ERR_STORE, "%s failed: the server refused the request (%s)",
                       what, said);
    if (err) s3_redact(c, err->msg);
    return rc;
}

/* ---- perform ---------------------------------------------------------------- */

/* Builds the signed headers. NULL when out of memory. */
static struct curl_slist *build_headers(const s3_conf *c, const s3_req *q) {
    struct curl_slist *h = NULL, *t;
    char line[160], sha[65];
    s3_sha256_hex(q->body, q->body_len, sha);
    snprintf(line, sizeof line, "x-amz-content-sha256: %s", sha);
#define ADD(s)                                                                                     \
    do {                                                                                           \
        t = curl_slist_append(h, (s));                                                             \
        if (t == NULL) goto fail;                                                                  \
        h = t;                                                                                     \
    } while (0)
    ADD(line);
    if (c->token_header) ADD(c->token_header);
    if (q->content_type) {
        snprintf(line, sizeof line, "Content-Type: %s", q->content_type);
        ADD(line);
    }
    if (q->content_md5) {
        snprintf(line, sizeof line, "Content-MD5: %s", q->content_md5);
        ADD(line);
    }
    if (q->range) {
        snprintf(line, sizeof line, "Range: %s", q->range);
        ADD(line);
    }
    if (q->if_none_match) ADD("If-None-Match: *");
#undef ADD
    return h;
fail:
    curl_slist_free_all(h);
    return NULL;
}

/* Sets every option of one request on h (again, identically, on a retry). */
static CURLcode setup_handle(CURL *h, const s3_conf *c, const s3_req *q, const char *url,
                             struct curl_slist *headers, xfer *x, char *errbuf) {
    CURLcode cc = CURLE_OK;
#define SET(opt, val)                                                                              \
    do {                                                                                           \
        cc = curl_easy_setopt(h, opt, val);                                                        \
        if (cc != CURLE_OK) return cc;                                                             \
    } while (0)
    SET(CURLOPT_URL, url);
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_PATH_AS_IS, 1L);
    SET(CURLOPT_AWS_SIGV4, c->sigv4);
    SET(CURLOPT_USERNAME, c->access_key);
    SET(CURLOPT_PASSWORD, c->secret_key);
    SET(CURLOPT_HTTPHEADER, headers);
    SET(CURLOPT_SSL_VERIFYPEER, 1L);
    SET(CURLOPT_SSL_VERIFYHOST, 2L);
    if (c->ca_bundle) SET(CURLOPT_CAINFO, c->ca_bundle);
    SET(CURLOPT_CONNECTTIMEOUT_MS, c->connect_timeout_ms);
    SET(CURLOPT_LOW_SPEED_LIMIT, 1L);
    SET(CURLOPT_LOW_SPEED_TIME, (c->stall_timeout_ms + 999) / 1000);
    SET(CURLOPT_TCP_KEEPALIVE, 1L);
    SET(CURLOPT_FILETIME, 1L);
    SET(CURLOPT_ERRORBUFFER, errbuf);
    SET(CURLOPT_HEADERFUNCTION, header_cb);
    SET(CURLOPT_HEADERDATA, x);
    SET(CURLOPT_WRITEFUNCTION, write_cb);
    SET(CURLOPT_WRITEDATA, x);
    if (strcmp(q->method, "PUT") == 0) {
        SET(CURLOPT_UPLOAD, 1L);
        SET(CURLOPT_INFILESIZE_LARGE, (curl_off_t)q->body_len);
    } else if (strcmp(q->method, "POST") == 0) {
        SET(CURLOPT_POST, 1L);
        SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)q->body_len);
    } else if (strcmp(q->method, "HEAD") == 0) {
        SET(CURLOPT_NOBODY, 1L);
    } else if (strcmp(q->method, "GET") != 0) {
        SET(CURLOPT_CUSTOMREQUEST, q->method);
    }
    SET(CURLOPT_READFUNCTION, read_cb);
    SET(CURLOPT_READDATA, x);
    SET(CURLOPT_SEEKFUNCTION, seek_cb);
    SET(CURLOPT_SEEKDATA, x);
#undef SET
    return cc;
}

/* Prepares x and the sinks for try number `attempt`. Returns nonzero when
** the sink cannot be rewound for another try. */
static int xfer_begin(xfer *x, s3_resp *resp, int attempt) {
    const s3_req *q = x->req;
    if (attempt > 1 && q->sink == S3_SINK_FD && !x->fd_seekable && x->delivered > 0) return -1;
    x->sent = 0;
    x->status = 0;
    x->to_sink = 0;
    x->delivered = 0;
    x->errbody.len = 0;
    resp->body.len = 0;
    resp->status = 0;
    resp->has_length = resp->has_range_total = 0;
    resp->etag[0] = '\0';
    resp->mtime_ms = 0;
    memset(&resp->s3, 0, sizeof resp->s3);
    if (q->sink == S3_SINK_BUF) q->buf->len = 0;
    return 0;
}

int s3_http_perform(const s3_conf *c, const s3_req *q, s3_resp *resp, wserr *err) {
    CURL *h = NULL;
    struct curl_slist *headers = NULL;
    wsbuf url = {0};
    xfer x = {.req = q, .resp = resp};
    char errbuf[CURL_ERROR_SIZE];
    int rc = 0;

    wsbuf_free(&resp->body);
    memset(resp, 0, sizeof *resp);
    if (wsbuf_append(&url, c->base, strlen(c->base)) ||
        wsbuf_append(&url, q->path, strlen(q->path)) ||
        (q->query &&
         (wsbuf_append(&url, "?", 1) || wsbuf_append(&url, q->query, strlen(q->query)))) ||
        wsbuf_append(&url, "", 1)) {
        rc = wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory building an S3 request");
        goto out;
    }
    headers = build_headers(c, q);
    h = pool_take();
    if (headers == NULL || h == NULL) {
        rc = wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory building an S3 request");
        goto out;
    }
    if (q->sink == S3_SINK_FD) {
        int fl = fcntl(q->fd, F_GETFL);
        off_t pos = lseek(q->fd, 0, SEEK_CUR);
        /* pwrite ignores the offset under O_APPEND: write sequentially then. */
        x.fd_seekable = pos >= 0 && fl >= 0 && !(fl & O_APPEND);
        x.fd_base = pos >= 0 ? pos : 0;
    }

    for (int attempt = 1;; attempt++) {
        if (xfer_begin(&x, resp, attempt) != 0) {
            char what[320];
            describe(c, q, what, sizeof what);
            rc = wserr_set(err, WALSHIP_ERR_NETWORK,
                           "%s failed: the transfer broke after %llu bytes were written to a "
                           "file descriptor that cannot seek, so it was not retried",
                           what, (unsigned long long)x.fd_high);
            goto out;
        }
        resp->attempts = attempt;
        errbuf[0] = '\0';
        CURLcode cc = setup_handle(h, c, q, (const char *)url.p, headers, &x, errbuf);
        if (cc != CURLE_OK) {
            rc = wserr_set(err, WALSHIP_ERR_INVALID, "cannot set up an S3 request: %s",
                           curl_easy_strerror(cc));
            goto out;
        }
        cc = curl_easy_perform(h);
        char reason[200], cutbuf[96];
        const char *cut;
        if (x.abort_code && x.cb_err.code) {
            rc = x.cb_err.code; /* the receiver's verdict, word for word */
            if (err) *err = x.cb_err;
            goto out;
        } else if (x.abort_code) {
            char what[320];
            describe(c, q, what, sizeof what);
            rc = wserr_set(err, x.abort_code, "%s failed: %s", what, x.abort_msg);
            goto out;
        } else if (cc != CURLE_OK) {
            if (!curl_retryable(cc) || attempt >= c->attempts) {
                rc = fail_network(c, q, cc, errbuf, attempt, err);
                goto out;
            }
            ws_strlcpy(reason, errbuf[0] ? errbuf : curl_easy_strerror(cc), sizeof reason);
        } else if ((cut = answer_cut(&x, resp, cutbuf, sizeof cutbuf)) != NULL) {
            resp->status = 0; /* no answer to go by */
            if (attempt >= c->attempts) {
                char what[320];
                describe(c, q, what, sizeof what);
                rc = wserr_set(err, WALSHIP_ERR_NETWORK,
                               "%s failed: the connection to %s broke (%s) after %d attempt%s: "
                               "check the server and the network path",
                               what, c->endpoint, cut, attempt, attempt == 1 ? "" : "s");
                goto out;
            }
            ws_strlcpy(reason, cut, sizeof reason);
        } else {
            curl_off_t ft = -1;
            resp->status = x.status;
            if (curl_easy_getinfo(h, CURLINFO_FILETIME_T, &ft) == CURLE_OK && ft >= 0)
                resp->mtime_ms = (int64_t)ft * 1000;
            int failed = resp->status < 200 || resp->status >= 300;
            if (failed && x.errbody.len > 0) {
                /* An unreadable error body still leaves the status to go by. */
                if (s3_xml_parse_error(x.errbody.p, x.errbody.len, &resp->s3, NULL) != 0)
                    memset(&resp->s3, 0, sizeof resp->s3);
            } else if (!failed && q->error_in_200) {
                int is_error = 0;
                rc = s3_xml_parse_complete(resp->body.p, resp->body.len, &is_error, &resp->s3, err);
                if (rc) {
                    wserr_prefix(err, "S3 %s of \"%.200s\"", q->op, q->key ? q->key : "");
                    goto out;
                }
                failed = is_error;
            }
            if (!failed) {
                if (q->sink == S3_SINK_FD && x.fd_seekable) {
                    /* Leave the offset after the object, and drop any longer
                    ** tail an earlier try wrote (the object changed between). */
                    struct stat st;
                    if (x.fd_high > x.delivered && fstat(q->fd, &st) == 0 && S_ISREG(st.st_mode) &&
                        ftruncate(q->fd, x.fd_base + (off_t)x.delivered) != 0) {
                        rc =
                            wserr_errno(err, WALSHIP_ERR_IO, errno, "truncate the download target");
                        goto out;
                    }
                    lseek(q->fd, x.fd_base + (off_t)x.delivered, SEEK_SET);
                }
                rc = 0;
                goto out;
            }
            if (!status_retryable(resp) || attempt >= c->attempts) {
                rc = fail_http(c, q, resp, err);
                goto out;
            }
            snprintf(reason, sizeof reason, "HTTP %ld %s", resp->status, resp->s3.code);
        }
        /* Every path that does not retry has left the loop by now. */
        int64_t wait = backoff_ms(attempt);
        s3_redact(c, reason);
        WS_WARN("s3_retry",
                "op=\"%s\" key=\"%.200s\" store=%s attempt=%d max=%d wait_ms=%lld reason=\"%s\"",
                q->op, q->key ? q->key : "", c->display, attempt, c->attempts, (long long)wait,
                reason);
        if (c->on_retry) {
            char msg[512];
            snprintf(msg, sizeof msg, "S3 %s of \"%.150s\" in %s failed (%s); retrying (attempt %d of %d)",
                     q->op, q->key ? q->key : "", c->display, reason, attempt + 1, c->attempts);
            c->on_retry(c->retry_ctx, msg);
        }
        ws_sleep_ms(wait);
    }
out:
    if (rc && err) s3_redact(c, err->msg);
    if (h) pool_give(h);
    curl_slist_free_all(headers);
    wsbuf_free(&url);
    wsbuf_free(&x.errbody);
    return rc;
}
