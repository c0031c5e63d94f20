/*
** s3_xml.c -- expat parsers for the S3 responses walship reads. See s3_xml.h.
**
** IMPLEMENTATION NOTES
**
** All parsers share one small SAX driver (struct xp). It tracks the element
** path down to XP_DEPTH_MAX levels (local names, cut to XP_NAME_MAX), and the
** character data of the innermost open element, capped at S3_XML_TEXT_MAX.
** Each document supplies an `end` callback that sees the path and the text
** of every element as it closes, and optionally a `start` callback; the
** fields S3 sends are all leaves at depth 2 or 3, so this is enough and no
** tree is ever built. Memory is therefore bounded by the caps, plus what
** expat itself needs for a document that is itself capped (S3_XML_DOC_MAX).
**
** Hostile input: a DOCTYPE stops the parser (no entity expansion at all);
** deeper nesting than XP_DEPTH_MAX is tracked by count only; text beyond the
** cap sets a flag and the callback decides (refuse, or cut for <Message>).
** A callback that finds a problem records it with xp_fail, which also stops
** expat, so the first problem is the one reported.
*/
#include "s3_xml.h"

#include <expat.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store_impl.h" /* store_objlist_push */

#define XP_DEPTH_MAX 8
#define XP_NAME_MAX  48

typedef struct xp xp;
struct xp {
    XML_Parser parser;
    const char *doc_name;                  /* for messages: "ListObjectsV2 result" */
    int depth;                             /* open elements; the root is depth 1 */
    char names[XP_DEPTH_MAX][XP_NAME_MAX]; /* names[i]: element at depth i+1 */
    char text[S3_XML_TEXT_MAX + 1];        /* text of the innermost element */
    size_t text_len;
    int text_cut; /* the element had more text than fits */
    int rc;       /* first failure, 0 if none */
    wserr *err;
    /* Called at each start / end of element; depth is that element's. */
    void (*start)(xp *x, void *ctx);
    void (*end)(xp *x, void *ctx);
    void *ctx;
};

/* Records the first failure and stops expat. Always returns the code. */
static int xp_fail(xp *x, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int xp_fail(xp *x, int code, const char *fmt, ...) {
    if (x->rc) return x->rc;
    x->rc = code;
    if (x->err) {
        char msg[WSERR_MSG_MAX];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        wserr_set(x->err, code, "%s", msg);
    }
    XML_StopParser(x->parser, XML_FALSE);
    return code;
}

/* Is the element now closing/opening (at x->depth) exactly this path?
** Pass the names from the root down, NULL-terminated. */
static int xp_at(const xp *x, const char *n1, const char *n2, const char *n3) {
    const char *want[3] = {n1, n2, n3};
    int d = 0;
    while (d < 3 && want[d])
        d++;
    if (x->depth != d) return 0;
    for (int i = 0; i < d; i++)
        if (strcmp(x->names[i], want[i]) != 0) return 0;
    return 1;
}

/* The local part of a possibly prefixed name. */
static const char *local_name(const XML_Char *name) {
    const char *colon = strrchr(name, ':');
    return colon ? colon + 1 : name;
}

static void XMLCALL on_start(void *ud, const XML_Char *name, const XML_Char **atts) {
    xp *x = ud;
    (void)atts;
    x->depth++;
    if (x->depth <= XP_DEPTH_MAX) ws_strlcpy(x->names[x->depth - 1], local_name(name), XP_NAME_MAX);
    x->text_len = 0;
    x->text_cut = 0;
    x->text[0] = '\0';
    if (x->start) x->start(x, x->ctx);
}

static void XMLCALL on_end(void *ud, const XML_Char *name) {
    xp *x = ud;
    (void)name;
    x->text[x->text_len] = '\0';
    if (x->end && x->depth <= XP_DEPTH_MAX) x->end(x, x->ctx);
    x->depth--;
    x->text_len = 0;
    x->text_cut = 0;
}

static void XMLCALL on_text(void *ud, const XML_Char *s, int len) {
    xp *x = ud;
    if (len <= 0) return;
    size_t room = S3_XML_TEXT_MAX - x->text_len;
    size_t n = (size_t)len;
    if (n > room) {
        n = room;
        x->text_cut = 1;
    }
    memcpy(x->text + x->text_len, s, n);
    x->text_len += n;
}

static void XMLCALL on_doctype(void *ud, const XML_Char *name, const XML_Char *sysid,
                               const XML_Char *pubid, int has_internal_subset) {
    xp *x = ud;
    (void)name, (void)sysid, (void)pubid, (void)has_internal_subset;
    xp_fail(x, WALSHIP_ERR_CORRUPT, "the %s contains a DOCTYPE, which S3 never sends; refusing it",
            x->doc_name);
}

/* Runs expat over doc with x's callbacks. The root element must be one of
** the NULL-terminated roots (checked by the caller's start callback via
** xp_check_root). Returns 0 or the first failure. */
static int xp_run(xp *x, const void *doc, size_t len) {
    if (len == 0)
        return wserr_set(x->err, WALSHIP_ERR_CORRUPT,
                         "the %s is empty: the server or a proxy cut the response", x->doc_name);
    if (len > S3_XML_DOC_MAX || len > INT_MAX)
        return wserr_set(x->err, WALSHIP_ERR_CORRUPT,
                         "the %s is %zu bytes, more than the %zu allowed", x->doc_name, len,
                         S3_XML_DOC_MAX);
    x->parser = XML_ParserCreate(NULL);
    if (x->parser == NULL) return wserr_set(x->err, WALSHIP_ERR_NOMEM, "out of memory parsing XML");
    XML_SetUserData(x->parser, x);
    XML_SetElementHandler(x->parser, on_start, on_end);
    XML_SetCharacterDataHandler(x->parser, on_text);
    XML_SetStartDoctypeDeclHandler(x->parser, on_doctype);
    enum XML_Status st = XML_Parse(x->parser, doc, (int)len, XML_TRUE);
    if (st != XML_STATUS_OK && x->rc == 0) {
        enum XML_Error code = XML_GetErrorCode(x->parser);
        x->rc = code == XML_ERROR_NO_MEMORY ? WALSHIP_ERR_NOMEM : WALSHIP_ERR_CORRUPT;
        wserr_set(x->err, x->rc,
                  "the %s is not well-formed XML (line %lu, column %lu: %s); the response was "
                  "probably cut short or did not come from an S3 server",
                  x->doc_name, (unsigned long)XML_GetCurrentLineNumber(x->parser),
                  (unsigned long)XML_GetCurrentColumnNumber(x->parser), XML_ErrorString(code));
    }
    XML_ParserFree(x->parser);
    x->parser = NULL;
    return x->rc;
}

/* At depth 1, checks the root's name against want (NULL-terminated list). */
static int xp_check_root(xp *x, const char *const *want) {
    if (x->depth != 1) return 1;
    for (const char *const *w = want; *w; w++)
        if (strcmp(x->names[0], *w) == 0) return 1;
    xp_fail(x, WALSHIP_ERR_CORRUPT, "the %s has root element <%.40s>, expected <%s>", x->doc_name,
            x->names[0], want[0]);
    return 0;
}

/* Copies the current text into dst (cap bytes incl. NUL); over-long text
** is CORRUPT unless cut_ok, in which case it is cut. */
static void xp_take(xp *x, char *dst, size_t cap, int cut_ok) {
    if ((x->text_cut || x->text_len >= cap) && !cut_ok) {
        xp_fail(x, WALSHIP_ERR_CORRUPT, "element <%s> of the %s is longer than %zu bytes",
                x->names[x->depth - 1], x->doc_name, cap - 1);
        return;
    }
    ws_strlcpy(dst, x->text, cap);
}

/* ---- <Error> ------------------------------------------------------------ */

typedef struct err_ctx {
    s3_xml_error *out;
} err_ctx;

static const char *const error_roots[] = {"Error", NULL};

static void error_start(xp *x, void *ctx) {
    (void)ctx;
    xp_check_root(x, error_roots);
}

static void error_end(xp *x, void *ctx) {
    err_ctx *c = ctx;
    if (xp_at(x, "Error", "Code", NULL))
        xp_take(x, c->out->code, sizeof c->out->code, 0);
    else if (xp_at(x, "Error", "Message", NULL))
        xp_take(x, c->out->message, sizeof c->out->message, 1);
}

int s3_xml_parse_error(const void *doc, size_t len, s3_xml_error *out, wserr *err) {
    memset(out, 0, sizeof *out);
    err_ctx c = {out};
    xp x = {.doc_name = "error response",
            .err = err,
            .start = error_start,
            .end = error_end,
            .ctx = &c};
    return xp_run(&x, doc, len);
}

/* ---- ListObjectsV2 ----------------------------------------------------- */

typedef struct list_ctx {
    s3_xml_list *out;
    int url_encoded;
    /* the <Contents> entry being read */
    int in_contents, have_key, have_size;
    char key[S3_XML_TEXT_MAX + 1];
    uint64_t size;
    int64_t mtime_ms;
} list_ctx;

static const char *const list_roots[] = {"ListBucketResult", NULL};

static void list_start(xp *x, void *ctx) {
    list_ctx *c = ctx;
    if (!xp_check_root(x, list_roots)) return;
    if (xp_at(x, "ListBucketResult", "Contents", NULL)) {
        c->in_contents = 1;
        c->have_key = c->have_size = 0;
        c->size = 0;
        c->mtime_ms = 0;
    }
}

/* Parses a decimal uint64 with no sign, no spaces, no overflow. */
static int parse_u64(const char *s, uint64_t *out) {
    uint64_t v = 0;
    if (*s == '\0') return -1;
    for (; *s; s++) {
        if (*s < '0' || *s > '9') return -1;
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10) return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

static void list_end(xp *x, void *ctx) {
    list_ctx *c = ctx;
    s3_xml_list *out = c->out;
    if (xp_at(x, "ListBucketResult", "Contents", "Key")) {
        xp_take(x, c->key, sizeof c->key, 0);
        c->have_key = x->rc == 0;
    } else if (xp_at(x, "ListBucketResult", "Contents", "Size")) {
        if (parse_u64(x->text, &c->size) != 0)
            xp_fail(x, WALSHIP_ERR_CORRUPT, "the %s has an invalid <Size> \"%.40s\"", x->doc_name,
                    x->text);
        c->have_size = 1;
    } else if (xp_at(x, "ListBucketResult", "Contents", "LastModified")) {
        /* A date we cannot read is "unknown" (0), not a reason to fail. */
        if (ws_parse_time(x->text, &c->mtime_ms) != 0) c->mtime_ms = 0;
    } else if (xp_at(x, "ListBucketResult", "Contents", NULL)) {
        c->in_contents = 0;
        if (!c->have_key || !c->have_size) {
            xp_fail(x, WALSHIP_ERR_CORRUPT, "the %s has a <Contents> entry without %s", x->doc_name,
                    c->have_key ? "<Size>" : "<Key>");
            return;
        }
        if (store_objlist_push(&out->objs, c->key, strlen(c->key), c->size, c->mtime_ms) != 0)
            xp_fail(x, WALSHIP_ERR_NOMEM, "out of memory reading the %s", x->doc_name);
    } else if (xp_at(x, "ListBucketResult", "IsTruncated", NULL)) {
        if (strcmp(x->text, "true") == 0)
            out->truncated = 1;
        else if (strcmp(x->text, "false") == 0)
            out->truncated = 0;
        else
            xp_fail(x, WALSHIP_ERR_CORRUPT, "the %s has an invalid <IsTruncated> \"%.40s\"",
                    x->doc_name, x->text);
    } else if (xp_at(x, "ListBucketResult", "NextContinuationToken", NULL)) {
        if (x->text_cut) {
            xp_fail(x, WALSHIP_ERR_CORRUPT, "the %s has a continuation token longer than %d bytes",
                    x->doc_name, S3_XML_TEXT_MAX);
            return;
        }
        free(out->next_token);
        out->next_token = strdup(x->text);
        if (out->next_token == NULL)
            xp_fail(x, WALSHIP_ERR_NOMEM, "out of memory reading the %s", x->doc_name);
    } else if (xp_at(x, "ListBucketResult", "EncodingType", NULL)) {
        c->url_encoded = strcmp(x->text, "url") == 0;
    }
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decodes an encoding-type=url key in place: %XX is a byte and '+' a space
** (AWS writes spaces as '+' and a real '+' as %2B; RGW writes %20 and
** %2B). A bad escape or a NUL byte is refused. */
static int url_decode_inplace(char *s) {
    char *w = s;
    for (const char *r = s; *r; r++) {
        if (*r == '+') {
            *w++ = ' ';
        } else if (*r == '%') {
            int hi = hexval(r[1]), lo = hi < 0 ? -1 : hexval(r[2]);
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) return -1;
            *w++ = (char)(hi << 4 | lo);
            r += 2;
        } else {
            *w++ = *r;
        }
    }
    *w = '\0';
    return 0;
}

int s3_xml_parse_list(const void *doc, size_t len, s3_xml_list *out, wserr *err) {
    list_ctx *c = calloc(1, sizeof *c); /* ~4 KiB: keep it off small thread stacks */
    if (c == NULL) return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory reading a listing");
    c->out = out;
    xp x = {.doc_name = "ListObjectsV2 result",
            .err = err,
            .start = list_start,
            .end = list_end,
            .ctx = c};
    int rc = xp_run(&x, doc, len);
    if (rc == 0 && c->url_encoded) {
        for (size_t i = 0; i < out->objs.n; i++) {
            if (url_decode_inplace(out->objs.items[i].key) != 0) {
                rc = wserr_set(err, WALSHIP_ERR_CORRUPT,
                               "the ListObjectsV2 result has a badly url-encoded key \"%.200s\"",
                               out->objs.items[i].key);
                break;
            }
        }
    }
    free(c);
    return rc;
}

void s3_xml_list_free(s3_xml_list *l) {
    store_objlist_free(&l->objs);
    free(l->next_token);
    l->next_token = NULL;
    l->truncated = 0;
}

/* ---- InitiateMultipartUploadResult -------------------------------------- */

typedef struct init_ctx {
    char *id;
    size_t cap;
    int seen;
} init_ctx;

static const char *const init_roots[] = {"InitiateMultipartUploadResult", NULL};

static void init_start(xp *x, void *ctx) {
    (void)ctx;
    xp_check_root(x, init_roots);
}

static void init_end(xp *x, void *ctx) {
    init_ctx *c = ctx;
    if (xp_at(x, "InitiateMultipartUploadResult", "UploadId", NULL)) {
        xp_take(x, c->id, c->cap, 0);
        c->seen = 1;
    }
}

int s3_xml_parse_initiate(const void *doc, size_t len, char *upload_id, size_t cap, wserr *err) {
    if (cap > 0) upload_id[0] = '\0';
    init_ctx c = {upload_id, cap, 0};
    xp x = {.doc_name = "CreateMultipartUpload result",
            .err = err,
            .start = init_start,
            .end = init_end,
            .ctx = &c};
    int rc = xp_run(&x, doc, len);
    if (rc == 0 && (!c.seen || upload_id[0] == '\0'))
        rc = wserr_set(err, WALSHIP_ERR_CORRUPT,
                       "the CreateMultipartUpload result has no <UploadId>");
    return rc;
}

/* ---- CompleteMultipartUploadResult (or an Error inside a 200) ------------ */

typedef struct complete_ctx {
    int *failed;
    s3_xml_error *e;
} complete_ctx;

static const char *const complete_roots[] = {"CompleteMultipartUploadResult", "Error", NULL};

static void complete_start(xp *x, void *ctx) {
    complete_ctx *c = ctx;
    if (!xp_check_root(x, complete_roots)) return;
    if (x->depth == 1) *c->failed = strcmp(x->names[0], "Error") == 0;
}

static void complete_end(xp *x, void *ctx) {
    complete_ctx *c = ctx;
    if (xp_at(x, "Error", "Code", NULL))
        xp_take(x, c->e->code, sizeof c->e->code, 0);
    else if (xp_at(x, "Error", "Message", NULL))
        xp_take(x, c->e->message, sizeof c->e->message, 1);
}

int s3_xml_parse_complete(const void *doc, size_t len, int *failed, s3_xml_error *e, wserr *err) {
    *failed = 0;
    memset(e, 0, sizeof *e);
    complete_ctx c = {failed, e};
    xp x = {.doc_name = "CompleteMultipartUpload result",
            .err = err,
            .start = complete_start,
            .end = complete_end,
            .ctx = &c};
    int rc = xp_run(&x, doc, len);
    if (rc) *failed = 0;
    return rc;
}

/* ---- DeleteResult ------------------------------------------------------- */

typedef struct delete_ctx {
    s3_xml_delete *out;
    char key[S3_XML_TEXT_MAX + 1];
    s3_xml_error e;
} delete_ctx;

static const char *const delete_roots[] = {"DeleteResult", NULL};

static void delete_start(xp *x, void *ctx) {
    delete_ctx *c = ctx;
    if (!xp_check_root(x, delete_roots)) return;
    if (xp_at(x, "DeleteResult", "Error", NULL)) {
        c->key[0] = '\0';
        memset(&c->e, 0, sizeof c->e);
    }
}

static void delete_end(xp *x, void *ctx) {
    delete_ctx *c = ctx;
    s3_xml_delete *out = c->out;
    if (xp_at(x, "DeleteResult", "Deleted", NULL)) {
        out->deleted++;
    } else if (xp_at(x, "DeleteResult", "Error", "Key")) {
        xp_take(x, c->key, sizeof c->key, 0);
    } else if (xp_at(x, "DeleteResult", "Error", "Code")) {
        xp_take(x, c->e.code, sizeof c->e.code, 0);
    } else if (xp_at(x, "DeleteResult", "Error", "Message")) {
        xp_take(x, c->e.message, sizeof c->e.message, 1);
    } else if (xp_at(x, "DeleteResult", "Error", NULL)) {
        if (strcmp(c->e.code, "NoSuchKey") == 0) {
            out->deleted++;
            return;
        }
        if (out->failed++ == 0) {
            memcpy(out->first_key, c->key, sizeof out->first_key);
            out->first = c->e;
            if (out->first.code[0] == '\0')
                ws_strlcpy(out->first.code, "(no code)", sizeof out->first.code);
        }
    }
}

int s3_xml_parse_delete(const void *doc, size_t len, s3_xml_delete *out, wserr *err) {
    memset(out, 0, sizeof *out);
    delete_ctx *c = calloc(1, sizeof *c);
    if (c == NULL) return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory reading a DeleteResult");
    c->out = out;
    xp x = {.doc_name = "DeleteObjects result",
            .err = err,
            .start = delete_start,
            .end = delete_end,
            .ctx = c};
    int rc = xp_run(&x, doc, len);
    free(c);
    return rc;
}

/* ---- escaping ------------------------------------------------------------ */

/* Length of the valid UTF-8 sequence at s (at most n bytes), 0 if invalid.
** Rejects overlong forms, surrogates and code points past U+10FFFF, which
** no XML parser would accept. */
static size_t utf8_len(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    size_t len;
    uint32_t cp, min;
    if (c < 0x80) return 1;
    if ((c & 0xE0) == 0xC0)
        len = 2, cp = c & 0x1F, min = 0x80;
    else if ((c & 0xF0) == 0xE0)
        len = 3, cp = c & 0x0F, min = 0x800;
    else if ((c & 0xF8) == 0xF0)
        len = 4, cp = c & 0x07, min = 0x10000;
    else
        return 0;
    if (len > n) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = cp << 6 | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF) || cp == 0xFFFE || cp == 0xFFFF)
        return 0;
    return len;
}

int s3_xml_escape(wsbuf *out, const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        const char *rep = NULL;
        switch (p[i]) {
        case '&': rep = "&amp;"; break;
        case '<': rep = "&lt;"; break;
        case '>': rep = "&gt;"; break;
        case '"': rep = "&quot;"; break;
        case '\'': rep = "&apos;"; break;
        case '\t': rep = "&#9;"; break;
        case '\n': rep = "&#10;"; break;
        case '\r': rep = "&#13;"; break;
        default: break;
        }
        if (rep) {
            if (wsbuf_append(out, rep, strlen(rep))) return WALSHIP_ERR_NOMEM;
            i++;
            continue;
        }
        if (p[i] < 0x20) return WALSHIP_ERR_INVALID;
        size_t k = utf8_len(p + i, n - i);
        if (k == 0) return WALSHIP_ERR_INVALID;
        if (wsbuf_append(out, p + i, k)) return WALSHIP_ERR_NOMEM;
        i += k;
    }
    return 0;
}
