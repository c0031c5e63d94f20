/*
** store_s3.c -- the s3:// backend: every store.h operation against an
** S3-compatible server (AWS S3, Ceph RGW, MinIO, Cloudflare R2...).
**
** USAGE
**
**   s3://BUCKET[/PREFIX][?endpoint=URL&region=REGION&path_style=0|1]
**
** BUCKET follows S3's rules (3-63 characters: a-z 0-9 . -, starting and
** ending with a letter or digit, not an IP address). PREFIX, if any, is
** prepended to every key with a '/'. Query values may be percent-encoded.
**
**   endpoint=URL    http(s)://HOST[:PORT][/PATH] of an S3-compatible server.
**                   Default: AWS_ENDPOINT_URL_S3, then AWS_ENDPOINT_URL, then
**                   AWS itself (https://BUCKET.s3.REGION.amazonaws.com).
**   region=REGION   signing region. Default: AWS_REGION, AWS_DEFAULT_REGION,
**                   then us-east-1.
**   path_style=0|1  path-style addressing (http://HOST/BUCKET/KEY) or
**                   virtual-hosted (http://BUCKET.HOST/KEY). Default: path
**                   style with a custom endpoint (what RGW, MinIO and R2
**                   accept without DNS set-up), virtual-hosted on AWS (and
**                   path style there for bucket names with dots, which the
**                   AWS wildcard certificate does not cover).
**
** Environment, read when the store is opened:
**
**   AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY   required
**   AWS_SESSION_TOKEN          temporary credentials; sent as the signed
**                              x-amz-security-token header
**   AWS_REGION, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL
**                              as above
**   AWS_CA_BUNDLE              CA certificates file for TLS. Certificates
**                              are always verified; there is no switch to
**                              turn that off.
**   WALSHIP_S3_CONNECT_TIMEOUT_MS  limit for connecting (default 5000)
**   WALSHIP_S3_TIMEOUT_MS      stall limit: a request fails when no byte
**                              moves for this long (default 30000; curl
**                              counts it in whole seconds, rounded up). A
**                              big transfer that keeps moving is never cut.
**   WALSHIP_S3_RETRIES         tries per request, including the first
**                              (default 6); see s3_http.c for what is retried
**
** IMPLEMENTATION NOTES
**
** s3_http.c performs one request (signing, pool, retries, error messages);
** s3_xml.c parses the answers. This file maps the store operations onto
** requests:
**
**   put            PUT; above STORE_PART_SIZE, a multipart upload straight
**                  from the caller's memory (so a failed try resends 8 MiB,
**                  not the whole object)
**   writer         buffers one part; commit before the first part is full
**                  is one PUT; otherwise CreateMultipartUpload, UploadPart
**                  per full buffer, CompleteMultipartUpload; any failure or
**                  abort sends AbortMultipartUpload
**   get            GET, with Range for ranges and tails; 416 means the range
**                  starts at or after the end (empty result); a server that
**                  ignores Range (answers 200) is sliced here
**   head           HEAD
**   list           ListObjectsV2 (encoding-type=url, so any key survives
**                  XML), following continuation tokens; objects whose names
**                  the store API could not address ("dir/" markers made by
**                  S3 consoles) are skipped
**
** S3 caps a whole object name at 1024 bytes, so a key that is valid for
** store.h but too long together with the URL's prefix is refused with
** WALSHIP_ERR_INVALID before any request (store.h says so).
**   delete         DELETE; 404 NoSuchKey is success, NoSuchBucket is not
**   delete_many    DeleteObjects (Quiet, Content-MD5) per 1000 keys, per-key
**                  errors checked; keys XML 1.0 cannot carry, and servers
**                  without DeleteObjects (501), fall back to DELETE
**
** Create-only puts (STORE_PUT_CREATE_ONLY) send If-None-Match: *. A server
** that does not implement it may answer 501 (Swift) or silently overwrite
** (s3rver); Ceph RGW 16 honours it on PUT but ignores it on
** CompleteMultipartUpload (measured), while AWS honours both. Since an
** ignored condition cannot be told from a success, the first create-only
** put to a bucket runs a probe: it writes a probe object under the prefix
** (".walship-probe-..."), tries to create it again under the same condition
** (by PUT, or by a one-part multipart upload for objects above one part)
** and deletes it. If the second create was not refused with 412, create-only
** puts of that kind fail with WALSHIP_ERR_UNSUPPORTED before anything is
** written. The verdict is cached per bucket URL for the process (cap_mu).
**
** Thread-safety: the store is immutable after open except for that cache;
** requests borrow connections from s3_http's pool. A writer belongs to one
** thread at a time.
*/
#include "store_impl.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/log.h"
#include "s3_http.h"
#include "s3_xml.h"

#define S3_ACCEPTED                                                                                \
    "accepted form: s3://BUCKET[/PREFIX][?endpoint=URL&region=REGION&path_style=0|1] "             \
    "(BUCKET: 3-63 characters a-z 0-9 . -)"

#define DEFAULT_CONNECT_TIMEOUT_MS 5000
#define DEFAULT_STALL_TIMEOUT_MS   30000
#define DEFAULT_ATTEMPTS           6
#define MULTIPART_MAX_PARTS        10000
#define DELETE_BATCH               1000
#define UPLOAD_ID_MAX              1024
#define S3_KEY_MAX                 1024 /* bytes in a full object name */

typedef struct s3_store {
    store base;     /* must be first */
    s3_conf conf;   /* points into the strings below */
    char *display;  /* "s3://bucket/prefix" */
    char *endpoint; /* scheme://host[:port][/path], no trailing '/' */
    char *base_url; /* conf.base: endpoint, or scheme://BUCKET.host... */
    char *bucket;
    char *bucket_path; /* path of the bucket itself: "/BUCKET" or "/" */
    char *key_path;    /* prepended to encoded keys: "/BUCKET/" or "/" */
    char *prefix;      /* "" or "PREFIX/" */
    char *sigv4;
    char *access_key;
    char *secret_key;
    char *token_header;
    char *ca_bundle;
    char *cap_key; /* create-only cache key: base_url + bucket_path */
    int pool_ref;  /* holds a reference on s3_http's pool */
} s3_store;

/* ---- create-only capability cache ---------------------------------------- */

enum { CAP_UNKNOWN = 0, CAP_YES = 1, CAP_NO = 2 };

typedef struct cap_entry {
    struct cap_entry *next;
    int cap[2]; /* [0] single PUT, [1] CompleteMultipartUpload */
    char key[];
} cap_entry;

static pthread_mutex_t cap_mu = PTHREAD_MUTEX_INITIALIZER;
static cap_entry *cap_list; /* verdicts per bucket URL; protected by cap_mu */
static int cap_users;       /* open s3 stores; the list is freed at 0; protected by cap_mu */

static int cap_get(const s3_store *s, int multi) {
    int v = CAP_UNKNOWN;
    pthread_mutex_lock(&cap_mu);
    for (cap_entry *e = cap_list; e; e = e->next)
        if (strcmp(e->key, s->cap_key) == 0) v = e->cap[multi];
    pthread_mutex_unlock(&cap_mu);
    return v;
}

/* Records a verdict; on allocation failure it is simply not remembered. */
static void cap_set(const s3_store *s, int multi, int v) {
    pthread_mutex_lock(&cap_mu);
    cap_entry *e = cap_list;
    while (e && strcmp(e->key, s->cap_key) != 0)
        e = e->next;
    if (e == NULL) {
        size_t n = strlen(s->cap_key) + 1;
        e = calloc(1, sizeof *e + n);
        if (e) {
            memcpy(e->key, s->cap_key, n);
            e->next = cap_list;
            cap_list = e;
        }
    }
    if (e) e->cap[multi] = v;
    pthread_mutex_unlock(&cap_mu);
}

static void cap_user(int delta) {
    cap_entry *drop = NULL;
    pthread_mutex_lock(&cap_mu);
    cap_users += delta;
    if (cap_users == 0) {
        drop = cap_list;
        cap_list = NULL;
    }
    pthread_mutex_unlock(&cap_mu);
    while (drop) {
        cap_entry *next = drop->next;
        free(drop);
        drop = next;
    }
}

/* ---- URL and environment ---------------------------------------------------- */

/* S3 bucket naming rules (the current ones, without legacy upper case). */
static int bucket_valid(const char *b, size_t n) {
    if (n < 3 || n > 63) return 0;
    int digits_dots_only = 1;
    for (size_t i = 0; i < n; i++) {
        char c = b[i];
        int alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
        if (!alnum && c != '.' && c != '-') return 0;
        if ((i == 0 || i == n - 1) && !alnum) return 0;
        if (c == '.' && (b[i + 1] == '.' || b[i + 1] == '-' || (i > 0 && b[i - 1] == '-')))
            return 0;
        if (!(c == '.' || (c >= '0' && c <= '9'))) digits_dots_only = 0;
    }
    return !digits_dots_only; /* "192.168.1.1" looks like an IP address */
}

static int hexdig(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Percent-decodes s[0..n) into a new string; NULL on a bad escape, a NUL
** byte, or no memory (*nomem tells which). */
static char *pct_decode(const char *s, size_t n, int *nomem) {
    char *out = malloc(n + 1), *w = out;
    *nomem = out == NULL;
    if (out == NULL) return NULL;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%') {
            int hi = i + 2 < n ? hexdig(s[i + 1]) : -1;
            int lo = i + 2 < n ? hexdig(s[i + 2]) : -1;
            if (hi < 0 || lo < 0 || (hi | lo) == 0) {
                free(out);
                return NULL;
            }
            *w++ = (char)(hi << 4 | lo);
            i += 2;
        } else {
            *w++ = s[i];
        }
    }
    *w = '\0';
    return out;
}

/* Reads a positive integer setting from the environment, within [lo, hi]. */
static int env_long(const char *name, long dflt, long lo, long hi, long *out, wserr *err) {
    const char *v = getenv(name);
    *out = dflt;
    if (v == NULL || *v == '\0') return 0;
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || *end != '\0' || x < lo || x > hi)
        return wserr_set(err, WALSHIP_ERR_INVALID,
                         "%s=\"%.40s\" is not a whole number from %ld to %ld", name, v, lo, hi);
    *out = x;
    return 0;
}

/* Printable ASCII without spaces: what may go into a header line unharmed. */
static int header_safe(const char *s) {
    for (; *s; s++)
        if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f) return 0;
    return 1;
}

/* strdup that records NOMEM in *rc. */
static char *dup_or(const char *s, int *rc) {
    char *d = strdup(s);
    if (d == NULL) *rc = WALSHIP_ERR_NOMEM;
    return d;
}

/* printf into a new string; NULL (and *rc = NOMEM) on failure. */
static char *fmt_or(int *rc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static char *fmt_or(int *rc, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *out = NULL;
    if (vasprintf(&out, fmt, ap) < 0) {
        out = NULL;
        *rc = WALSHIP_ERR_NOMEM;
    }
    va_end(ap);
    return out;
}

static void s3_free(store *st) {
    s3_store *s = (s3_store *)st;
    if (s == NULL) return;
    if (s->secret_key) explicit_bzero(s->secret_key, strlen(s->secret_key));
    if (s->token_header) explicit_bzero(s->token_header, strlen(s->token_header));
    free(s->base.url);
    free(s->display);
    free(s->endpoint);
    free(s->base_url);
    free(s->bucket);
    free(s->bucket_path);
    free(s->key_path);
    free(s->prefix);
    free(s->sigv4);
    free(s->access_key);
    free(s->secret_key);
    free(s->token_header);
    free(s->ca_bundle);
    free(s->cap_key);
    if (s->pool_ref) {
        s3_http_pool_unref();
        cap_user(-1);
    }
    free(s);
}

/* Parses endpoint (http(s)://HOST[:PORT][/PATH]) into s->endpoint and, with
** the addressing style, s->base_url / bucket_path / key_path. */
static int set_endpoint(s3_store *s, const char *ep, int path_style, const char *region,
                        wserr *err) {
    int rc = 0;
    if (ep == NULL) {
        /* AWS. Dotted bucket names break the *.s3 wildcard certificate. */
        int vhost = path_style == 0 || (path_style < 0 && strchr(s->bucket, '.') == NULL);
        s->endpoint = fmt_or(&rc, "https://s3.%s.amazonaws.com", region);
        s->base_url = vhost ? fmt_or(&rc, "https://%s.s3.%s.amazonaws.com", s->bucket, region)
                            : fmt_or(&rc, "https://s3.%s.amazonaws.com", region);
        s->bucket_path = vhost ? dup_or("/", &rc) : fmt_or(&rc, "/%s", s->bucket);
        s->key_path = vhost ? dup_or("/", &rc) : fmt_or(&rc, "/%s/", s->bucket);
        if (rc) return wserr_set(err, rc, "out of memory opening an S3 store");
        return 0;
    }
    size_t skip;
    if (strncmp(ep, "http://", 7) == 0)
        skip = 7;
    else if (strncmp(ep, "https://", 8) == 0)
        skip = 8;
    else
        return wserr_set(err, WALSHIP_ERR_INVALID,
                         "the S3 endpoint must start with http:// or https:// (for example "
                         "endpoint=http://127.0.0.1:7480)");
    const char *host = ep + skip;
    size_t hlen = strcspn(host, "/?#");
    if (hlen == 0) return wserr_set(err, WALSHIP_ERR_INVALID, "the S3 endpoint has no host name");
    if (memchr(host, '@', hlen))
        return wserr_set(err, WALSHIP_ERR_INVALID,
                         "the S3 endpoint must not contain credentials: set AWS_ACCESS_KEY_ID and "
                         "AWS_SECRET_ACCESS_KEY instead");
    if (strpbrk(host + hlen, "?#"))
        return wserr_set(err, WALSHIP_ERR_INVALID,
                         "the S3 endpoint must not have a query or fragment");
    size_t elen = strlen(ep);
    while (elen > skip + hlen && ep[elen - 1] == '/')
        elen--;
    const char *path = host + hlen; /* up to ep + elen */
    int plen = (int)(ep + elen - path);
    s->endpoint = fmt_or(&rc, "%.*s", (int)elen, ep);
    if (path_style != 0) {
        s->base_url = fmt_or(&rc, "%.*s", (int)elen, ep);
        s->bucket_path = fmt_or(&rc, "/%s", s->bucket);
        s->key_path = fmt_or(&rc, "/%s/", s->bucket);
    } else {
        s->base_url =
            fmt_or(&rc, "%.*s%s.%.*s%.*s", (int)skip, ep, s->bucket, (int)hlen, host, plen, path);
        s->bucket_path = dup_or("/", &rc);
        s->key_path = dup_or("/", &rc);
    }
    if (rc) return wserr_set(err, rc, "out of memory opening an S3 store");
    return 0;
}

/* Reads the credentials and tuning settings from the environment. */
static int read_env(s3_store *s, wserr *err) {
    int rc = 0;
    const char *ak = getenv("AWS_ACCESS_KEY_ID");
    const char *sk = getenv("AWS_SECRET_ACCESS_KEY");
    const char *tok = getenv("AWS_SESSION_TOKEN");
    int have_ak = ak && *ak, have_sk = sk && *sk;
    if (!have_ak || !have_sk)
        return wserr_set(err, WALSHIP_ERR_AUTH,
                         "no S3 credentials for %s: %s; set AWS_ACCESS_KEY_ID and "
                         "AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary credentials)",
                         s->display,
                         !have_ak && !have_sk
                             ? "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set"
                         : !have_ak ? "AWS_ACCESS_KEY_ID is not set"
                                    : "AWS_SECRET_ACCESS_KEY is not set");
    if (!header_safe(ak))
        return wserr_set(
            err, WALSHIP_ERR_AUTH,
            "AWS_ACCESS_KEY_ID contains spaces or control characters: check its value");
    if (tok && *tok && !header_safe(tok))
        return wserr_set(
            err, WALSHIP_ERR_AUTH,
            "AWS_SESSION_TOKEN contains spaces or control characters: check its value");
    s->access_key = dup_or(ak, &rc);
    s->secret_key = dup_or(sk, &rc);
    if (tok && *tok) s->token_header = fmt_or(&rc, "x-amz-security-token: %s", tok);
    const char *ca = getenv("AWS_CA_BUNDLE");
    if (ca && *ca) s->ca_bundle = dup_or(ca, &rc);
    if (rc) return wserr_set(err, rc, "out of memory opening an S3 store");

    long v;
    if ((rc = env_long("WALSHIP_S3_CONNECT_TIMEOUT_MS", DEFAULT_CONNECT_TIMEOUT_MS, 1, 3600000, &v,
                       err)))
        return rc;
    s->conf.connect_timeout_ms = v;
    if ((rc = env_long("WALSHIP_S3_TIMEOUT_MS", DEFAULT_STALL_TIMEOUT_MS, 1, 3600000, &v, err)))
        return rc;
    s->conf.stall_timeout_ms = v;
    if ((rc = env_long("WALSHIP_S3_RETRIES", DEFAULT_ATTEMPTS, 1, 100, &v, err))) return rc;
    s->conf.attempts = (int)v;
    return 0;
}

/* Valid signing region: what AWS, RGW, MinIO and R2 ("auto") use. */
static int region_valid(const char *r) {
    size_t n = strlen(r);
    if (n == 0 || n > 64) return 0;
    for (; *r; r++)
        if (!((*r >= 'a' && *r <= 'z') || (*r >= 'A' && *r <= 'Z') || (*r >= '0' && *r <= '9') ||
              *r == '-' || *r == '_'))
            return 0;
    return 1;
}

/* Splits QUERY ("endpoint=...&region=...&path_style=1") into its three
** settings; anything else is refused. Values are percent-decoded. */
static int parse_query(const char *q, char **endpoint, char **region, int *path_style, wserr *err) {
    while (*q) {
        size_t n = strcspn(q, "&");
        const char *eq = memchr(q, '=', n);
        if (n == 0) {
            q++;
            continue;
        }
        if (eq == NULL)
            return wserr_set(err, WALSHIP_ERR_INVALID,
                             "URL parameter \"%.*s\" has no value; " S3_ACCEPTED,
                             (int)(n > 60 ? 60 : n), q);
        size_t nlen = (size_t)(eq - q);
        int nomem = 0;
        char *val = pct_decode(eq + 1, n - nlen - 1, &nomem);
        if (val == NULL)
            return wserr_set(err, nomem ? WALSHIP_ERR_NOMEM : WALSHIP_ERR_INVALID,
                             nomem ? "out of memory opening an S3 store"
                                   : "URL parameter \"%.*s\" has a bad %%-escape; " S3_ACCEPTED,
                             (int)(nlen > 60 ? 60 : nlen), q);
        char **slot = NULL;
        if (nlen == 8 && memcmp(q, "endpoint", 8) == 0) {
            slot = endpoint;
        } else if (nlen == 6 && memcmp(q, "region", 6) == 0) {
            slot = region;
        } else if (nlen == 10 && memcmp(q, "path_style", 10) == 0) {
            int ok = strcmp(val, "0") == 0 || strcmp(val, "1") == 0;
            if (ok) *path_style = val[0] - '0';
            free(val);
            if (!ok)
                return wserr_set(err, WALSHIP_ERR_INVALID,
                                 "path_style must be 0 or 1; " S3_ACCEPTED);
        } else {
            free(val);
            return wserr_set(err, WALSHIP_ERR_INVALID,
                             "unknown URL parameter \"%.*s\" (known: endpoint, region, "
                             "path_style); " S3_ACCEPTED,
                             (int)(nlen > 60 ? 60 : nlen), q);
        }
        if (slot) {
            if (*slot) {
                free(val);
                return wserr_set(err, WALSHIP_ERR_INVALID, "URL parameter \"%.*s\" is given twice",
                                 (int)nlen, q);
            }
            *slot = val;
        }
        q += n;
        if (*q == '&') q++;
    }
    return 0;
}

static const struct store_ops s3_ops;

int store_s3_open(const char *url, store **out, wserr *err) {
    s3_store *s = NULL;
    char *endpoint = NULL, *region = NULL, *prefix = NULL;
    int path_style = -1, rc = 0;

    *out = NULL;
    if (strncmp(url, "s3://", 5) != 0)
        return wserr_set(err, WALSHIP_ERR_INVALID, "not an s3:// URL; " S3_ACCEPTED);
    const char *b = url + 5;
    size_t blen = strcspn(b, "/?#");
    if (blen == 0)
        return wserr_set(err, WALSHIP_ERR_INVALID,
                         "the URL \"%.200s\" names no bucket; " S3_ACCEPTED, url);
    if (!bucket_valid(b, blen))
        return wserr_set(err, WALSHIP_ERR_INVALID,
                         "\"%.*s\" is not a valid S3 bucket name (3-63 characters: lower-case "
                         "letters, digits, '.' and '-', starting and ending with a letter or "
                         "digit); " S3_ACCEPTED,
                         (int)(blen > 100 ? 100 : blen), b);
    const char *rest = b + blen;
    if (*rest == '#')
        return wserr_set(err, WALSHIP_ERR_INVALID,
                         "the URL must not have a #fragment; " S3_ACCEPTED);
    const char *q = strchr(rest, '?');
    size_t plen = q ? (size_t)(q - rest) : strlen(rest);
    /* "/PREFIX/" -> "PREFIX"; a second leading '/' is an empty segment, refused below */
    if (plen > 0 && rest[0] == '/') rest++, plen--;
    while (plen > 0 && rest[plen - 1] == '/')
        plen--;

    s = calloc(1, sizeof *s);
    if (s == NULL) return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory opening an S3 store");
    s->base.ops = &s3_ops;
    s->bucket = strndup(b, blen);
    prefix = strndup(rest, plen);
    if (s->bucket == NULL || prefix == NULL) {
        rc = wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory opening an S3 store");
        goto out;
    }
    if (plen > 0 && !store_key_valid(prefix)) {
        rc = wserr_set(
            err, WALSHIP_ERR_INVALID,
            "the prefix \"%.200s\" is not valid (no empty, \".\" or \"..\" segments); " S3_ACCEPTED,
            prefix);
        goto out;
    }
    s->prefix = plen > 0 ? fmt_or(&rc, "%s/", prefix) : dup_or("", &rc);
    s->display =
        plen > 0 ? fmt_or(&rc, "s3://%s/%s", s->bucket, prefix) : fmt_or(&rc, "s3://%s", s->bucket);
    s->base.url = dup_or(url, &rc);
    if (rc) {
        rc = wserr_set(err, rc, "out of memory opening an S3 store");
        goto out;
    }
    if (q && (rc = parse_query(q + 1, &endpoint, &region, &path_style, err))) goto out;

    if (region == NULL) {
        const char *r = getenv("AWS_REGION");
        if (r == NULL || *r == '\0') r = getenv("AWS_DEFAULT_REGION");
        if (r == NULL || *r == '\0') r = "us-east-1";
        region = dup_or(r, &rc);
    }
    if (endpoint == NULL) {
        const char *e = getenv("AWS_ENDPOINT_URL_S3");
        if (e == NULL || *e == '\0') e = getenv("AWS_ENDPOINT_URL");
        if (e && *e) endpoint = dup_or(e, &rc);
    }
    if (rc) {
        rc = wserr_set(err, rc, "out of memory opening an S3 store");
        goto out;
    }
    if (!region_valid(region)) {
        rc = wserr_set(err, WALSHIP_ERR_INVALID,
                       "\"%.64s\" is not a valid S3 region name (letters, digits, '-', '_'): fix "
                       "region= or AWS_REGION",
                       region);
        goto out;
    }
    if ((rc = set_endpoint(s, endpoint, path_style, region, err))) goto out;
    if ((rc = read_env(s, err))) goto out;
    s->sigv4 = fmt_or(&rc, "aws:amz:%s:s3", region);
    s->cap_key = fmt_or(&rc, "%s%s", s->base_url, s->bucket_path);
    if (rc) {
        rc = wserr_set(err, rc, "out of memory opening an S3 store");
        goto out;
    }
    if ((rc = s3_http_pool_ref(err))) goto out;
    s->pool_ref = 1;
    cap_user(+1);

    s->conf.display = s->display;
    s->conf.endpoint = s->endpoint;
    s->conf.base = s->base_url;
    s->conf.bucket = s->bucket;
    s->conf.sigv4 = s->sigv4;
    s->conf.access_key = s->access_key;
    s->conf.secret_key = s->secret_key;
    s->conf.token_header = s->token_header;
    s->conf.ca_bundle = s->ca_bundle;
    *out = &s->base;
    s = NULL; /* owned by *out now */
out:
    s3_free(s ? &s->base : NULL);
    free(endpoint);
    free(region);
    free(prefix);
    return rc;
}

/* ---- request building ---------------------------------------------------------- */

static int nomem(wserr *err) {
    return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory building an S3 request");
}

/* S3 limits the whole object name, prefix included, to 1024 bytes; a
** longer one can never exist, so it is refused before any request. */
static int full_key_ok(const s3_store *s, const char *key, wserr *err) {
    size_t n = strlen(s->prefix) + strlen(key);
    if (n <= S3_KEY_MAX) return 0;
    return wserr_set(err, WALSHIP_ERR_INVALID,
                     "object key \"%.100s...\" is too long for S3: with the prefix of %s it has "
                     "%zu bytes, and S3 allows %d; use shorter keys or a shorter prefix",
                     key, s->display, n, S3_KEY_MAX);
}

/* Sets out to the percent-encoded path of key: "/BUCKET/PREFIX/KEY". On
** failure out is released. */
static int object_path(const s3_store *s, const char *key, wsbuf *out, wserr *err) {
    int rc = full_key_ok(s, key, err);
    if (rc) return rc;
    out->len = 0;
    if (wsbuf_append(out, s->key_path, strlen(s->key_path)) ||
        s3_uri_encode(out, s->prefix, strlen(s->prefix), 1) ||
        s3_uri_encode(out, key, strlen(key), 1) || wsbuf_append(out, "", 1)) {
        wsbuf_free(out);
        return nomem(err);
    }
    return 0;
}

typedef struct qparam {
    const char *name;
    const char *value; /* NULL: valueless, written "name=" */
} qparam;

static int qparam_cmp(const void *a, const void *b) {
    return strcmp(((const qparam *)a)->name, ((const qparam *)b)->name);
}

/* Sets out to the canonical query string of ps[0..n): sorted by name,
** values percent-encoded (libcurl 7.88 signs the query as written). */
static int build_query(wsbuf *out, qparam *ps, size_t n) {
    out->len = 0;
    qsort(ps, n, sizeof *ps, qparam_cmp);
    for (size_t i = 0; i < n; i++) {
        const char *v = ps[i].value ? ps[i].value : "";
        if ((i > 0 && wsbuf_append(out, "&", 1)) ||
            s3_uri_encode(out, ps[i].name, strlen(ps[i].name), 0) || wsbuf_append(out, "=", 1) ||
            s3_uri_encode(out, v, strlen(v), 0))
            return WALSHIP_ERR_NOMEM;
    }
    return wsbuf_append(out, "", 1);
}

/* PUT of one object from memory; inm adds If-None-Match: * (412 is
** WALSHIP_ERR_EXISTS, 501 WALSHIP_ERR_UNSUPPORTED). */
static int obj_put(s3_store *s, const char *key, const void *data, size_t len, int inm,
                   wserr *err) {
    wsbuf path = {0};
    s3_resp resp = {0};
    int rc = object_path(s, key, &path, err);
    if (rc) return rc;
    s3_req q = {.op = inm ? "create-only put" : "put",
                .method = "PUT",
                .path = (const char *)path.p,
                .key = key,
                .body = data,
                .body_len = len,
                .content_type = "application/octet-stream",
                .if_none_match = inm};
    rc = s3_http_perform(&s->conf, &q, &resp, err);
    s3_resp_free(&resp);
    wsbuf_free(&path);
    return rc;
}

/* DELETE of one object; a missing key is success, a missing bucket is not. */
static int obj_delete(s3_store *s, const char *key, wserr *err) {
    wsbuf path = {0};
    s3_resp resp = {0};
    int rc = object_path(s, key, &path, err);
    if (rc) return rc;
    s3_req q = {.op = "delete", .method = "DELETE", .path = (const char *)path.p, .key = key};
    rc = s3_http_perform(&s->conf, &q, &resp, err);
    if (rc == WALSHIP_ERR_NOTFOUND && strcmp(resp.s3.code, "NoSuchBucket") != 0) {
        wserr_clear(err);
        rc = 0;
    }
    s3_resp_free(&resp);
    wsbuf_free(&path);
    return rc;
}

/* ---- multipart uploads ------------------------------------------------------- */

typedef struct mpu {
    const char *key;                   /* borrowed */
    char upload_id[UPLOAD_ID_MAX + 1]; /* "" until started */
    int nparts;
    wsbuf parts_xml; /* <Part> entries for Complete */
} mpu;

/* "partNumber=N&uploadId=ID" (part > 0) or "uploadId=ID". */
static int mpu_query(const mpu *m, int part, wsbuf *out) {
    char num[16];
    qparam ps[2] = {{"uploadId", m->upload_id}, {"partNumber", num}};
    snprintf(num, sizeof num, "%d", part);
    return build_query(out, ps, part > 0 ? 2 : 1);
}

static void mpu_free(mpu *m) {
    wsbuf_free(&m->parts_xml);
    m->upload_id[0] = '\0';
    m->nparts = 0;
}

/* Best-effort AbortMultipartUpload (with the usual retries); a failure is
** logged, since the caller is already failing or discarding, and a bucket
** lifecycle rule can collect what is left. Frees m's state. */
static void mpu_abort(s3_store *s, mpu *m) {
    wsbuf path = {0}, query = {0};
    s3_resp resp = {0};
    wserr e;
    wserr_clear(&e);
    if (m->upload_id[0] == '\0') goto out;
    if (object_path(s, m->key, &path, &e) == 0 && mpu_query(m, 0, &query) != 0) nomem(&e);
    if (e.code == 0) {
        s3_req q = {.op = "abort multipart upload",
                    .method = "DELETE",
                    .path = (const char *)path.p,
                    .query = (const char *)query.p,
                    .key = m->key};
        if (s3_http_perform(&s->conf, &q, &resp, &e) == WALSHIP_ERR_NOTFOUND) wserr_clear(&e);
    }
    if (e.code)
        WS_WARN("s3_abort_failed", "store=%s key=\"%.200s\" upload_id=\"%.100s\" err=\"%s\"",
                s->display, m->key, m->upload_id, e.msg);
out:
    s3_resp_free(&resp);
    wsbuf_free(&path);
    wsbuf_free(&query);
    mpu_free(m);
}

/* CreateMultipartUpload for key; on success m holds the upload id. */
static int mpu_begin(s3_store *s, mpu *m, const char *key, wserr *err) {
    wsbuf path = {0}, query = {0};
    s3_resp resp = {0};
    qparam ps[1] = {{"uploads", NULL}};
    int rc;
    memset(m, 0, sizeof *m);
    m->key = key;
    if ((rc = object_path(s, key, &path, err))) goto out;
    if (build_query(&query, ps, 1)) {
        rc = nomem(err);
        goto out;
    }
    s3_req q = {.op = "start multipart upload",
                .method = "POST",
                .path = (const char *)path.p,
                .query = (const char *)query.p,
                .key = key,
                .content_type = "application/octet-stream"};
    if ((rc = s3_http_perform(&s->conf, &q, &resp, err))) goto out;
    if ((rc = s3_xml_parse_initiate(resp.body.p, resp.body.len, m->upload_id, sizeof m->upload_id,
                                    err)))
        wserr_prefix(err, "S3 start multipart upload of \"%.200s\" in %s", key, s->display);
out:
    s3_resp_free(&resp);
    wsbuf_free(&path);
    wsbuf_free(&query);
    return rc;
}

/* UploadPart of data as the next part; remembers its ETag for Complete. */
static int mpu_upload(s3_store *s, mpu *m, const void *data, size_t len, wserr *err) {
    wsbuf path = {0}, query = {0};
    s3_resp resp = {0};
    char op[48], num[16];
    int rc;
    if (m->nparts >= MULTIPART_MAX_PARTS)
        return wserr_set(err, WALSHIP_ERR_INVALID,
                         "S3 put of \"%.200s\" in %s failed: the object is larger than S3 allows "
                         "(%d parts of %zu MiB)",
                         m->key, s->display, MULTIPART_MAX_PARTS, STORE_PART_SIZE >> 20);
    int part = m->nparts + 1;
    snprintf(op, sizeof op, "upload of part %d", part);
    snprintf(num, sizeof num, "%d", part);
    if ((rc = object_path(s, m->key, &path, err))) goto out;
    if (mpu_query(m, part, &query)) {
        rc = nomem(err);
        goto out;
    }
    s3_req q = {.op = op,
                .method = "PUT",
                .path = (const char *)path.p,
                .query = (const char *)query.p,
                .key = m->key,
                .body = data,
                .body_len = len};
    if ((rc = s3_http_perform(&s->conf, &q, &resp, err))) goto out;
    if (resp.etag[0] == '\0') {
        rc = wserr_set(err, WALSHIP_ERR_STORE,
                       "S3 upload of part %d of \"%.200s\" in %s failed: the server sent no ETag, "
                       "which CompleteMultipartUpload needs",
                       part, m->key, s->display);
        goto out;
    }
    if (wsbuf_append(&m->parts_xml, "<Part><PartNumber>", 18) ||
        wsbuf_append(&m->parts_xml, num, strlen(num)) ||
        wsbuf_append(&m->parts_xml, "</PartNumber><ETag>", 19)) {
        rc = nomem(err);
        goto out;
    }
    rc = s3_xml_escape(&m->parts_xml, resp.etag, strlen(resp.etag));
    if (rc == WALSHIP_ERR_INVALID) {
        rc = wserr_set(err, WALSHIP_ERR_STORE,
                       "S3 upload of part %d of \"%.200s\" failed: the server sent an ETag with "
                       "control characters",
                       part, m->key);
        goto out;
    }
    if (rc || wsbuf_append(&m->parts_xml, "</ETag></Part>", 14)) {
        rc = nomem(err);
        goto out;
    }
    m->nparts = part;
out:
    s3_resp_free(&resp);
    wsbuf_free(&path);
    wsbuf_free(&query);
    return rc;
}

/* CompleteMultipartUpload (If-None-Match: * when inm). An <Error> inside a
** 200 is a failure. On any failure the upload is aborted. m is freed. */
static int mpu_complete(s3_store *s, mpu *m, int inm, wserr *err) {
    wsbuf path = {0}, query = {0}, body = {0};
    s3_resp resp = {0};
    int rc;
    static const char open[] =
        "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">";
    static const char close[] = "</CompleteMultipartUpload>";
    if ((rc = object_path(s, m->key, &path, err))) goto out;
    if (mpu_query(m, 0, &query) || wsbuf_append(&body, open, sizeof open - 1) ||
        wsbuf_append(&body, m->parts_xml.p, m->parts_xml.len) ||
        wsbuf_append(&body, close, sizeof close - 1)) {
        rc = nomem(err);
        goto out;
    }
    s3_req q = {.op = inm ? "create-only complete multipart upload" : "complete multipart upload",
                .method = "POST",
                .path = (const char *)path.p,
                .query = (const char *)query.p,
                .key = m->key,
                .body = body.p,
                .body_len = body.len,
                .content_type = "application/xml",
                .if_none_match = inm,
                .error_in_200 = 1};
    rc = s3_http_perform(&s->conf, &q, &resp, err);
out:
    if (rc)
        mpu_abort(s, m);
    else
        mpu_free(m);
    s3_resp_free(&resp);
    wsbuf_free(&path);
    wsbuf_free(&query);
    wsbuf_free(&body);
    return rc;
}

/* ---- create-only ----------------------------------------------------------------- */

/* Writes a probe object and tries to create it again under If-None-Match
** (by PUT, or by a one-part multipart upload when multi), then deletes it.
** Sets *verdict to CAP_YES when the second create was refused with 412,
** CAP_NO when it succeeded or the server does not implement the header. */
static int probe_create_only(s3_store *s, int multi, int *verdict, wserr *err) {
    static atomic_uint counter;
    static const char body[] = "walship create-only probe: safe to delete\n";
    char pkey[80];
    mpu m;
    int rc;
    snprintf(pkey, sizeof pkey, ".walship-probe-%x-%llx-%x", (unsigned)getpid(),
             (unsigned long long)ws_now_us(), atomic_fetch_add(&counter, 1));
    *verdict = CAP_UNKNOWN;
    if (!multi) {
        rc = obj_put(s, pkey, body, sizeof body - 1, 1, err);
        if (rc == WALSHIP_ERR_UNSUPPORTED) {
            *verdict = CAP_NO; /* refused outright: nothing was written */
            wserr_clear(err);
            return 0;
        }
        if (rc) return rc;
        rc = obj_put(s, pkey, body, sizeof body - 1, 1, err);
    } else {
        if ((rc = obj_put(s, pkey, body, sizeof body - 1, 0, err))) return rc;
        rc = mpu_begin(s, &m, pkey, err);
        if (rc == 0 && (rc = mpu_upload(s, &m, body, sizeof body - 1, err)) != 0) mpu_abort(s, &m);
        if (rc == 0) rc = mpu_complete(s, &m, 1, err);
    }
    if (rc == WALSHIP_ERR_EXISTS) {
        *verdict = CAP_YES;
        rc = 0;
    } else if (rc == 0 || rc == WALSHIP_ERR_UNSUPPORTED) {
        *verdict = CAP_NO;
        rc = 0;
    }
    if (rc == 0) wserr_clear(err);
    wserr e;
    if (obj_delete(s, pkey, &e) != 0)
        WS_WARN("s3_probe_delete_failed", "store=%s key=\"%s\" err=\"%s\"", s->display, pkey,
                e.msg);
    return rc;
}

/* 0 if create-only puts of this kind (single PUT, or multipart when multi)
** are safe on this bucket, WALSHIP_ERR_UNSUPPORTED if not, or the error
** that stopped the probe. */
static int need_create_only(s3_store *s, const char *key, int multi, wserr *err) {
    int v = cap_get(s, multi);
    if (v == CAP_UNKNOWN) {
        int rc = probe_create_only(s, multi, &v, err);
        if (rc) {
            wserr_prefix(err,
                         "create-only put of \"%.200s\": checking whether the server honours "
                         "If-None-Match",
                         key);
            return rc;
        }
        cap_set(s, multi, v);
        WS_INFO("s3_create_only_probe", "store=%s kind=%s honoured=%s", s->display,
                multi ? "multipart" : "put", v == CAP_YES ? "yes" : "no");
    }
    if (v == CAP_YES) return 0;
    if (multi)
        return wserr_set(err, WALSHIP_ERR_UNSUPPORTED,
                         "S3 create-only put of \"%.200s\" in %s: the server at %s does not honour "
                         "If-None-Match on CompleteMultipartUpload (Ceph RGW 16 ignores it), so "
                         "objects larger than %zu MiB cannot be created without risk of "
                         "overwriting; nothing was written",
                         key, s->display, s->endpoint, STORE_PART_SIZE >> 20);
    return wserr_set(err, WALSHIP_ERR_UNSUPPORTED,
                     "S3 create-only put of \"%.200s\" in %s: the server at %s does not honour "
                     "If-None-Match: *, so it cannot refuse to overwrite; nothing was written",
                     key, s->display, s->endpoint);
}

/* ---- put ----------------------------------------------------------------------- */

static int put_single(s3_store *s, const char *key, const void *data, size_t len, int flags,
                      wserr *err) {
    int create_only = (flags & STORE_PUT_CREATE_ONLY) != 0;
    int rc;
    if (create_only && (rc = need_create_only(s, key, 0, err))) return rc;
    rc = obj_put(s, key, data, len, create_only, err);
    if (create_only && rc == WALSHIP_ERR_UNSUPPORTED) cap_set(s, 0, CAP_NO);
    return rc;
}

/* Starts a multipart upload, after the create-only check when asked. */
static int mpu_start(s3_store *s, mpu *m, const char *key, int flags, wserr *err) {
    int rc;
    if ((flags & STORE_PUT_CREATE_ONLY) && (rc = need_create_only(s, key, 1, err))) return rc;
    return mpu_begin(s, m, key, err);
}

static int s3_put(store *st, const char *key, const void *data, size_t len, int flags, wserr *err) {
    s3_store *s = (s3_store *)st;
    if (len <= STORE_PART_SIZE) return put_single(s, key, data, len, flags, err);
    /* Large: upload straight from the caller's memory, one part at a time. */
    mpu m;
    int rc = mpu_start(s, &m, key, flags, err);
    if (rc) return rc;
    const uint8_t *p = data;
    for (size_t off = 0; off < len; off += STORE_PART_SIZE) {
        size_t n = len - off < STORE_PART_SIZE ? len - off : STORE_PART_SIZE;
        if ((rc = mpu_upload(s, &m, p + off, n, err))) {
            mpu_abort(s, &m);
            return rc;
        }
    }
    return mpu_complete(s, &m, (flags & STORE_PUT_CREATE_ONLY) != 0, err);
}

/* ---- streaming writer ----------------------------------------------------------- */

typedef struct s3_writer {
    store_writer base; /* must be first */
    char *key;
    int flags;
    wsbuf part; /* bytes not yet sent; at most STORE_PART_SIZE */
    mpu m;
    int started; /* m is a live multipart upload */
    int failed;  /* a write failed; the upload is already aborted */
} s3_writer;

static void writer_free(s3_writer *w) {
    wsbuf_free(&w->part);
    free(w->key);
    free(w);
}

static int s3_writer_open(store *st, const char *key, int flags, store_writer **out, wserr *err) {
    int rc = full_key_ok((s3_store *)st, key, err);
    if (rc) return rc;
    s3_writer *w = calloc(1, sizeof *w);
    if (w == NULL || (w->key = strdup(key)) == NULL) {
        free(w);
        return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory opening an S3 writer");
    }
    w->base.s = st;
    w->flags = flags;
    *out = &w->base;
    return 0;
}

/* Sends the full buffer as the next part, starting the upload if needed. */
static int writer_flush(s3_writer *w, wserr *err) {
    s3_store *s = (s3_store *)w->base.s;
    int rc;
    if (!w->started) {
        if ((rc = mpu_start(s, &w->m, w->key, w->flags, err))) return rc;
        w->started = 1;
    }
    if ((rc = mpu_upload(s, &w->m, w->part.p, w->part.len, err))) return rc;
    w->part.len = 0;
    return 0;
}

static int s3_writer_write(store_writer *bw, const void *data, size_t len, wserr *err) {
    s3_writer *w = (s3_writer *)bw;
    const uint8_t *p = data;
    if (w->failed)
        return wserr_set(err, WALSHIP_ERR_STATE,
                         "S3 write of \"%.200s\": an earlier write failed; abort the writer",
                         w->key);
    while (len > 0) {
        /* A full buffer goes out only once more data arrives, so an object
        ** of exactly one part is a single PUT. */
        if (w->part.len == STORE_PART_SIZE) {
            int rc = writer_flush(w, err);
            if (rc) {
                if (w->started) mpu_abort((s3_store *)w->base.s, &w->m);
                w->started = 0;
                w->failed = 1;
                return rc;
            }
        }
        size_t room = STORE_PART_SIZE - w->part.len;
        size_t n = len < room ? len : room;
        if (wsbuf_append(&w->part, p, n)) {
            if (w->started) mpu_abort((s3_store *)w->base.s, &w->m);
            w->started = 0;
            w->failed = 1;
            return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory buffering an S3 upload");
        }
        p += n;
        len -= n;
    }
    return 0;
}

static int s3_writer_commit(store_writer *bw, wserr *err) {
    s3_writer *w = (s3_writer *)bw;
    s3_store *s = (s3_store *)w->base.s;
    int rc;
    if (w->failed) {
        rc = wserr_set(err, WALSHIP_ERR_STATE,
                       "S3 put of \"%.200s\": an earlier write failed; nothing was stored", w->key);
    } else if (!w->started) {
        rc = put_single(s, w->key, w->part.p, w->part.len, w->flags, err);
    } else {
        rc = w->part.len > 0 ? mpu_upload(s, &w->m, w->part.p, w->part.len, err) : 0;
        if (rc)
            mpu_abort(s, &w->m);
        else
            rc = mpu_complete(s, &w->m, (w->flags & STORE_PUT_CREATE_ONLY) != 0, err);
    }
    writer_free(w);
    return rc;
}

static void s3_writer_abort(store_writer *bw) {
    s3_writer *w = (s3_writer *)bw;
    if (w->started) mpu_abort((s3_store *)w->base.s, &w->m);
    writer_free(w);
}

/* ---- get ------------------------------------------------------------------------- */

static int s3_get(store *st, const char *key, int whole, int tail, uint64_t off, uint64_t len,
                  wsbuf *out, wserr *err) {
    s3_store *s = (s3_store *)st;
    wsbuf path = {0};
    s3_resp resp = {0};
    char range[64];
    int rc = object_path(s, key, &path, err);
    if (rc) return rc;
    if (!whole && tail) {
        snprintf(range, sizeof range, "bytes=-%llu", (unsigned long long)len);
    } else if (!whole) {
        uint64_t last = off > UINT64_MAX - len ? UINT64_MAX : off + len - 1;
        snprintf(range, sizeof range, "bytes=%llu-%llu", (unsigned long long)off,
                 (unsigned long long)last);
    }
    /* The cap stays STORE_MEM_MAX for ranges too: a server that ignores
    ** Range sends the whole object, which is then sliced below. */
    s3_req q = {.op = whole ? "get" : "ranged get",
                .method = "GET",
                .path = (const char *)path.p,
                .key = key,
                .range = whole ? NULL : range,
                .sink = S3_SINK_BUF,
                .buf = out,
                .buf_max = STORE_MEM_MAX};
    rc = s3_http_perform(&s->conf, &q, &resp, err);
    if (rc) {
        out->len = 0;
        if (!whole && resp.status == 416) { /* the range starts at or past the end */
            wserr_clear(err);
            rc = 0;
        }
        goto out;
    }
    if (!whole && resp.status == 200) {
        /* Range ignored: we hold the whole object; keep the asked part. */
        size_t size = out->len, from, n;
        if (tail) {
            n = len < size ? (size_t)len : size;
            from = size - n;
        } else {
            from = off < size ? (size_t)off : size;
            n = len < size - from ? (size_t)len : size - from;
        }
        if (n) memmove(out->p, out->p + from, n);
        out->len = n;
    } else if (!whole && out->len > len) {
        rc = wserr_set(err, WALSHIP_ERR_CORRUPT,
                       "S3 ranged get of \"%.200s\" in %s: the server sent %zu bytes for a range "
                       "of %llu",
                       key, s->display, out->len, (unsigned long long)len);
        out->len = 0;
    }
out:
    s3_resp_free(&resp);
    wsbuf_free(&path);
    return rc;
}

static int s3_get_fd(store *st, const char *key, int fd, wserr *err) {
    s3_store *s = (s3_store *)st;
    wsbuf path = {0};
    s3_resp resp = {0};
    int rc = object_path(s, key, &path, err);
    if (rc) return rc;
    s3_req q = {.op = "get",
                .method = "GET",
                .path = (const char *)path.p,
                .key = key,
                .sink = S3_SINK_FD,
                .fd = fd};
    rc = s3_http_perform(&s->conf, &q, &resp, err);
    s3_resp_free(&resp);
    wsbuf_free(&path);
    return rc;
}

/* A store_get_stream in progress: slices the answer when a server ignored
** the Range header (200 with the whole object). */
typedef struct s3_stream {
    store_sink_fn fn;
    void *ctx;
    uint64_t off, len; /* the range asked for; len 0: to the end */
    uint64_t pos;      /* answer bytes seen (s3_http never repeats any) */
} s3_stream;

static int s3_stream_cb(void *ctx, long status, const uint8_t *data, size_t n, wserr *err) {
    s3_stream *st = ctx;
    uint64_t pos = st->pos;
    st->pos += n;
    if (status != 200 || (st->off == 0 && st->len == 0)) return st->fn(st->ctx, data, n, err);
    uint64_t lo = st->off, hi = st->len ? st->off + st->len : UINT64_MAX;
    uint64_t a = pos > lo ? pos : lo, b = pos + n < hi ? pos + n : hi;
    if (a >= b) return 0;
    return st->fn(st->ctx, data + (a - pos), (size_t)(b - a), err);
}

static int s3_get_stream(store *st, const char *key, uint64_t off, uint64_t len,
                         store_sink_fn fn, void *ctx, wserr *err) {
    s3_store *s = (s3_store *)st;
    wsbuf path = {0};
    s3_resp resp = {0};
    char range[64];
    int rc = object_path(s, key, &path, err);
    if (rc) return rc;
    if (len > 0 && off > UINT64_MAX - len) len = UINT64_MAX - off;
    if (len > 0)
        snprintf(range, sizeof range, "bytes=%llu-%llu", (unsigned long long)off,
                 (unsigned long long)(off + len - 1));
    else
        snprintf(range, sizeof range, "bytes=%llu-", (unsigned long long)off);
    s3_stream sst = {fn, ctx, off, len, 0};
    s3_req q = {.op = "get",
                .method = "GET",
                .path = (const char *)path.p,
                .key = key,
                .range = off > 0 || len > 0 ? range : NULL,
                .sink = S3_SINK_CB,
                .cb = s3_stream_cb,
                .cb_ctx = &sst};
    rc = s3_http_perform(&s->conf, &q, &resp, err);
    if (rc && resp.status == 416) { /* the range starts at or past the end: nothing */
        wserr_clear(err);
        rc = 0;
    }
    s3_resp_free(&resp);
    wsbuf_free(&path);
    return rc;
}

/* ---- head ------------------------------------------------------------------------ */

static int s3_head(store *st, const char *key, store_obj *out, wserr *err) {
    s3_store *s = (s3_store *)st;
    wsbuf path = {0};
    s3_resp resp = {0};
    int rc = object_path(s, key, &path, err);
    if (rc) return rc;
    s3_req q = {.op = "head", .method = "HEAD", .path = (const char *)path.p, .key = key};
    rc = s3_http_perform(&s->conf, &q, &resp, err);
    if (rc == 0 && !resp.has_length)
        rc = wserr_set(err, WALSHIP_ERR_CORRUPT,
                       "S3 head of \"%.200s\" in %s: the server sent no Content-Length", key,
                       s->display);
    if (rc == 0) {
        out->size = resp.length;
        out->mtime_ms = resp.mtime_ms; /* Last-Modified: whole seconds */
    }
    s3_resp_free(&resp);
    wsbuf_free(&path);
    return rc;
}

/* ---- list ------------------------------------------------------------------------ */

static int s3_list(store *st, const char *prefix, const char *start_after, store_objlist *out,
                   wserr *err) {
    s3_store *s = (s3_store *)st;
    size_t n0 = out->n, plen = strlen(s->prefix);
    char *full_prefix = NULL, *full_start = NULL, *token = NULL;
    wsbuf query = {0};
    s3_xml_list page = {0};
    s3_resp resp = {0};
    int rc = 0;

    full_prefix = fmt_or(&rc, "%s%s", s->prefix, prefix);
    if (start_after) full_start = fmt_or(&rc, "%s%s", s->prefix, start_after);
    if (rc) {
        rc = nomem(err);
        goto out;
    }
    for (int pageno = 1;; pageno++) {
        qparam ps[5];
        size_t np = 0;
        ps[np++] = (qparam){"list-type", "2"};
        ps[np++] = (qparam){"encoding-type", "url"};
        ps[np++] = (qparam){"prefix", full_prefix};
        if (token)
            ps[np++] = (qparam){"continuation-token", token};
        else if (full_start)
            ps[np++] = (qparam){"start-after", full_start};
        if (build_query(&query, ps, np)) {
            rc = nomem(err);
            goto out;
        }
        s3_req q = {
            .op = "list", .method = "GET", .path = s->bucket_path, .query = (const char *)query.p};
        if ((rc = s3_http_perform(&s->conf, &q, &resp, err))) goto out;
        s3_xml_list_free(&page);
        if ((rc = s3_xml_parse_list(resp.body.p, resp.body.len, &page, err))) {
            wserr_prefix(err, "S3 list of %s (page %d)", s->display, pageno);
            goto out;
        }
        for (size_t i = 0; i < page.objs.n; i++) {
            const store_obj *o = &page.objs.items[i];
            size_t klen = strlen(o->key);
            if (klen < plen || memcmp(o->key, s->prefix, plen) != 0) {
                rc = wserr_set(err, WALSHIP_ERR_CORRUPT,
                               "S3 list of %s: the server listed \"%.200s\", which is outside "
                               "the prefix asked for",
                               s->display, o->key);
                goto out;
            }
            /* Objects the store API could not address ("dir/" markers made by
            ** S3 consoles, "a//b") were not written through it: skip them. */
            if (!store_key_valid(o->key + plen)) continue;
            if (store_objlist_push(out, o->key + plen, klen - plen, o->size, o->mtime_ms)) {
                rc = nomem(err);
                goto out;
            }
        }
        if (!page.truncated) break;
        if (page.next_token == NULL || page.next_token[0] == '\0' ||
            (token && strcmp(token, page.next_token) == 0)) {
            rc = wserr_set(err, WALSHIP_ERR_CORRUPT,
                           "S3 list of %s: the server said the listing continues but gave %s "
                           "continuation token",
                           s->display, page.next_token && page.next_token[0] ? "the same" : "no");
            goto out;
        }
        free(token);
        token = page.next_token;
        page.next_token = NULL;
    }
out:
    if (rc) { /* leave out as it was */
        for (size_t i = n0; i < out->n; i++)
            free(out->items[i].key);
        out->n = n0;
    }
    s3_xml_list_free(&page);
    s3_resp_free(&resp);
    wsbuf_free(&query);
    free(full_prefix);
    free(full_start);
    free(token);
    return rc;
}

/* ---- delete --------------------------------------------------------------------- */

static int s3_del(store *st, const char *key, wserr *err) {
    return obj_delete((s3_store *)st, key, err);
}

/* Maps one per-key <Error> of a DeleteResult to a walship error. */
static int delete_entry_error(s3_store *s, const s3_xml_delete *d, wserr *err) {
    int code = strcmp(d->first.code, "AccessDenied") == 0 ? WALSHIP_ERR_AUTH : WALSHIP_ERR_STORE;
    wserr_set(err, code, "S3 delete of \"%.200s\" in %s failed: %s%s%s (%zu of the batch failed)%s",
              d->first_key, s->display, d->first.code, d->first.message[0] ? ": " : "",
              d->first.message, d->failed,
              code == WALSHIP_ERR_AUTH ? ": the credentials may not delete in this bucket" : "");
    if (err) s3_redact(&s->conf, err->msg);
    return code;
}

/* One DeleteObjects request for keys[0..n) (n <= 1000, all XML-safe).
** *unsupported is set when the server does not implement DeleteObjects. */
static int delete_batch(s3_store *s, const char *const *keys, size_t n, int *unsupported,
                        wserr *err) {
    wsbuf body = {0}, query = {0};
    s3_resp resp = {0};
    s3_xml_delete *d = NULL;
    qparam ps[1] = {{"delete", NULL}};
    char md5[25];
    int rc = 0;
    static const char open[] =
        "<Delete xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Quiet>true</Quiet>";
    if (build_query(&query, ps, 1) || wsbuf_append(&body, open, sizeof open - 1)) goto oom;
    for (size_t i = 0; i < n; i++) {
        if (wsbuf_append(&body, "<Object><Key>", 13) ||
            s3_xml_escape(&body, s->prefix, strlen(s->prefix)) ||
            s3_xml_escape(&body, keys[i], strlen(keys[i])) ||
            wsbuf_append(&body, "</Key></Object>", 15))
            goto oom;
    }
    if (wsbuf_append(&body, "</Delete>", 9)) goto oom;
    s3_md5_base64(body.p, body.len, md5);
    s3_req q = {.op = "multi-object delete",
                .method = "POST",
                .path = s->bucket_path,
                .query = (const char *)query.p,
                .body = body.p,
                .body_len = body.len,
                .content_type = "application/xml",
                .content_md5 = md5};
    rc = s3_http_perform(&s->conf, &q, &resp, err);
    if (rc == WALSHIP_ERR_UNSUPPORTED) *unsupported = 1;
    if (rc) goto out;
    d = malloc(sizeof *d);
    if (d == NULL) goto oom;
    if ((rc = s3_xml_parse_delete(resp.body.p, resp.body.len, d, err))) {
        wserr_prefix(err, "S3 multi-object delete of %s", s->display);
        goto out;
    }
    if (d->failed) rc = delete_entry_error(s, d, err);
    goto out;
oom:
    rc = nomem(err);
out:
    free(d);
    s3_resp_free(&resp);
    wsbuf_free(&body);
    wsbuf_free(&query);
    return rc;
}

/* Nonzero if key (with the prefix) can travel in a DeleteObjects body. */
static int xml_safe(const s3_store *s, const char *key) {
    wsbuf tmp = {0};
    int ok = s3_xml_escape(&tmp, s->prefix, strlen(s->prefix)) == 0 &&
             s3_xml_escape(&tmp, key, strlen(key)) == 0;
    wsbuf_free(&tmp);
    return ok;
}

/* Deletes one key with DELETE, keeping the first failure in *first. */
static int delete_one(s3_store *s, const char *key, int *first_rc, wserr *err) {
    wserr e;
    int rc = obj_delete(s, key, &e);
    if (rc && *first_rc == 0) {
        *first_rc = rc;
        if (err) *err = e;
    }
    return rc;
}

static int s3_del_many(store *st, const char *const *keys, size_t n, wserr *err) {
    s3_store *s = (s3_store *)st;
    int first_rc = 0, unsupported = 0;
    for (size_t i = 0; i < n; i++) /* one impossible key fails the call before any delete */
        if ((first_rc = full_key_ok(s, keys[i], err))) return first_rc;
    const char **batch = malloc(DELETE_BATCH * sizeof *batch);
    if (batch == NULL) return nomem(err);
    for (size_t i = 0; i < n;) {
        size_t nb = 0;
        for (; i < n && nb < DELETE_BATCH; i++) {
            if (!unsupported && xml_safe(s, keys[i])) {
                batch[nb++] = keys[i];
            } else if (delete_one(s, keys[i], &first_rc, err) == WALSHIP_ERR_NETWORK) {
                goto out; /* key not expressible in XML 1.0, or no DeleteObjects */
            }
        }
        if (nb == 0) continue;
        wserr e;
        wserr_clear(&e);
        int rc = delete_batch(s, batch, nb, &unsupported, &e);
        if (unsupported) { /* the server has no DeleteObjects: this batch key by key */
            for (size_t k = 0; k < nb; k++)
                if (delete_one(s, batch[k], &first_rc, err) == WALSHIP_ERR_NETWORK) goto out;
            continue;
        }
        if (rc && first_rc == 0) {
            first_rc = rc;
            if (err) *err = e;
        }
        if (rc == WALSHIP_ERR_NETWORK) break; /* the rest would fail the same way */
    }
out:
    free(batch);
    return first_rc;
}

static void s3_set_retry_hook(store *st, store_retry_fn fn, void *ctx) {
    s3_store *s = (s3_store *)st;
    s->conf.on_retry = fn;
    s->conf.retry_ctx = ctx;
}

static const struct store_ops s3_ops = {
    .scheme = "s3",
    .free = s3_free,
    .put = s3_put,
    .writer_open = s3_writer_open,
    .writer_write = s3_writer_write,
    .writer_commit = s3_writer_commit,
    .writer_abort = s3_writer_abort,
    .get = s3_get,
    .get_fd = s3_get_fd,
    .get_stream = s3_get_stream,
    .head = s3_head,
    .list = s3_list,
    .del = s3_del,
    .del_many = s3_del_many,
    .set_retry_hook = s3_set_retry_hook,
};
