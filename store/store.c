/*
** store.c -- URL dispatch, argument checks and helpers shared by the
** backends. The backends (store_file.c, store_s3.c) do the work.
**
** A URL with credentials in it (user:password@, anywhere, also inside a
** query value or percent-encoded) is refused here, before a backend sees
** it, and every message about a URL shows it through ws_redact_url: no
** secret a user put in a URL reaches an error message or a log.
*/
#include "store_impl.h"

#include "../common/util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ACCEPTED_FORMS                                                         \
    "accepted forms: s3://BUCKET[/PREFIX][?endpoint=URL&region=REGION] or "    \
    "file:///ABSOLUTE/DIR"

/* Removes the userinfo of any URL from the message in err (a backend may
** quote what it was given). */
static void redact_msg(wserr *err) {
    if (err == NULL || !ws_url_has_credentials(err->msg)) return;
    char clean[sizeof err->msg];
    ws_redact_url(clean, sizeof clean, err->msg);
    memcpy(err->msg, clean, sizeof clean);
}

int store_open(const char *url, store **out, wserr *err) {
    *out = NULL;
    if (url == NULL || *url == '\0')
        return wserr_set(err, WALSHIP_ERR_INVALID, "no store URL given; " ACCEPTED_FORMS);
    /* Refused before any backend sees it, so no message can quote a secret;
    ** the URL is shown without it. */
    char shown[512];
    ws_redact_url(shown, sizeof shown, url);
    if (ws_url_has_credentials(url))
        return wserr_set(err, WALSHIP_ERR_INVALID,
                         "the store URL \"%.200s\" has credentials in it (user:password@, not "
                         "shown); walship never takes them from a URL: remove them (S3 "
                         "credentials come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)",
                         shown);
    int rc;
    if (strncmp(url, "s3://", 5) == 0)
        rc = store_s3_open(url, out, err);
    else if (strncmp(url, "file://", 7) == 0)
        rc = store_file_open(url, out, err);
    else
        rc = wserr_set(err, WALSHIP_ERR_INVALID, "unsupported store URL \"%.200s\"; " ACCEPTED_FORMS,
                       shown);
    if (rc) redact_msg(err);
    return rc;
}

void store_free(store *s) {
    if (s == NULL) return;
    s->ops->free(s);
}

const char *store_url(const store *s) { return s->url; }

void store_set_retry_hook(store *s, store_retry_fn fn, void *ctx) {
    if (s->ops->set_retry_hook) s->ops->set_retry_hook(s, fn, ctx);
}

/* Nonzero if s is well-formed UTF-8 (S3 keys must be). */
static int utf8_valid(const unsigned char *s) {
    while (*s) {
        int n = *s < 0x80 ? 0 : (*s & 0xe0) == 0xc0 ? 1 : (*s & 0xf0) == 0xe0 ? 2
                : (*s & 0xf8) == 0xf0 ? 3 : -1;
        if (n < 0 || (n == 1 && *s < 0xc2)) return 0;
        s++;
        for (int i = 0; i < n; i++, s++)
            if ((*s & 0xc0) != 0x80) return 0;
    }
    return 1;
}

int store_key_valid(const char *key) {
    if (key == NULL || *key == '\0' || *key == '/') return 0;
    size_t len = strlen(key);
    if (len > 1024 || key[len - 1] == '/') return 0; /* S3's limit; no folder markers */
    if (!utf8_valid((const unsigned char *)key)) return 0;
    const char *seg = key;
    for (const char *p = key;; p++) {
        if (*p == '/' || *p == '\0') {
            size_t n = (size_t)(p - seg);
            if (n == 0 && *p == '/') return 0; /* "a//b" */
            if ((n == 1 && seg[0] == '.') || (n == 2 && seg[0] == '.' && seg[1] == '.'))
                return 0;
            if (*p == '\0') break;
            seg = p + 1;
        }
    }
    return 1;
}

static int check_key(const char *key, wserr *err) {
    if (store_key_valid(key)) return 0;
    return wserr_set(err, WALSHIP_ERR_INVALID, "invalid object key \"%.200s\"", key ? key : "(null)");
}

int store_put(store *s, const char *key, const void *data, size_t len, int flags,
              wserr *err) {
    if (check_key(key, err)) return WALSHIP_ERR_INVALID;
    return s->ops->put(s, key, data, len, flags, err);
}

int store_writer_open(store *s, const char *key, int flags, store_writer **out,
                      wserr *err) {
    *out = NULL;
    if (check_key(key, err)) return WALSHIP_ERR_INVALID;
    return s->ops->writer_open(s, key, flags, out, err);
}

int store_writer_write(store_writer *w, const void *data, size_t len, wserr *err) {
    if (len == 0) return 0;
    return w->s->ops->writer_write(w, data, len, err);
}

int store_writer_commit(store_writer *w, wserr *err) {
    return w->s->ops->writer_commit(w, err);
}

void store_writer_abort(store_writer *w) {
    if (w == NULL) return;
    w->s->ops->writer_abort(w);
}

int store_put_fd(store *s, const char *key, int fd, int flags, wserr *err) {
    store_writer *w = NULL;
    int rc = store_writer_open(s, key, flags, &w, err);
    if (rc) return rc;
    size_t bufsz = 1 << 20;
    uint8_t *buf = malloc(bufsz);
    if (buf == NULL) {
        store_writer_abort(w);
        return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
    }
    for (;;) {
        ssize_t r = read(fd, buf, bufsz);
        if (r < 0) {
            if (errno == EINTR) continue;
            rc = wserr_errno(err, WALSHIP_ERR_IO, errno, "read upload source for %s", key);
            break;
        }
        if (r == 0) break;
        rc = store_writer_write(w, buf, (size_t)r, err);
        if (rc) break;
    }
    free(buf);
    if (rc) {
        store_writer_abort(w);
        return rc;
    }
    return store_writer_commit(w, err);
}

int store_get(store *s, const char *key, wsbuf *out, wserr *err) {
    if (check_key(key, err)) return WALSHIP_ERR_INVALID;
    out->len = 0;
    return s->ops->get(s, key, 1, 0, 0, 0, out, err);
}

int store_get_range(store *s, const char *key, uint64_t off, uint64_t len,
                    wsbuf *out, wserr *err) {
    if (check_key(key, err)) return WALSHIP_ERR_INVALID;
    if (len > STORE_MEM_MAX)
        return wserr_set(err, WALSHIP_ERR_INVALID, "range of %llu bytes is too large",
                         (unsigned long long)len);
    out->len = 0;
    if (len == 0) return 0;
    return s->ops->get(s, key, 0, 0, off, len, out, err);
}

int store_get_tail(store *s, const char *key, uint64_t n, wsbuf *out, wserr *err) {
    if (check_key(key, err)) return WALSHIP_ERR_INVALID;
    if (n > STORE_MEM_MAX)
        return wserr_set(err, WALSHIP_ERR_INVALID, "tail of %llu bytes is too large",
                         (unsigned long long)n);
    out->len = 0;
    if (n == 0) return 0;
    return s->ops->get(s, key, 0, 1, 0, n, out, err);
}

int store_get_fd(store *s, const char *key, int fd, wserr *err) {
    if (check_key(key, err)) return WALSHIP_ERR_INVALID;
    return s->ops->get_fd(s, key, fd, err);
}

int store_get_stream(store *s, const char *key, uint64_t off, uint64_t len, store_sink_fn fn,
                     void *ctx, wserr *err) {
    if (check_key(key, err)) return WALSHIP_ERR_INVALID;
    return s->ops->get_stream(s, key, off, len, fn, ctx, err);
}

int store_head(store *s, const char *key, store_obj *out, wserr *err) {
    if (check_key(key, err)) return WALSHIP_ERR_INVALID;
    memset(out, 0, sizeof *out);
    return s->ops->head(s, key, out, err);
}

int store_list(store *s, const char *prefix, const char *start_after,
               store_objlist *out, wserr *err) {
    return s->ops->list(s, prefix ? prefix : "", start_after && *start_after ? start_after : NULL,
                        out, err);
}

int store_delete(store *s, const char *key, wserr *err) {
    if (check_key(key, err)) return WALSHIP_ERR_INVALID;
    return s->ops->del(s, key, err);
}

int store_delete_many(store *s, const char *const *keys, size_t n, wserr *err) {
    for (size_t i = 0; i < n; i++)
        if (check_key(keys[i], err)) return WALSHIP_ERR_INVALID;
    if (n == 0) return 0;
    return s->ops->del_many(s, keys, n, err);
}

void store_objlist_free(store_objlist *l) {
    for (size_t i = 0; i < l->n; i++) free(l->items[i].key);
    free(l->items);
    l->items = NULL;
    l->n = l->cap = 0;
}

int store_objlist_push(store_objlist *l, const char *key, size_t keylen, uint64_t size,
                    int64_t mtime_ms) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        store_obj *items = realloc(l->items, cap * sizeof *items);
        if (items == NULL) return WALSHIP_ERR_NOMEM;
        l->items = items;
        l->cap = cap;
    }
    char *k = malloc(keylen + 1);
    if (k == NULL) return WALSHIP_ERR_NOMEM;
    memcpy(k, key, keylen);
    k[keylen] = '\0';
    l->items[l->n].key = k;
    l->items[l->n].size = size;
    l->items[l->n].mtime_ms = mtime_ms;
    l->n++;
    return 0;
}
