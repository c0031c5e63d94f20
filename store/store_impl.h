/*
** store_impl.h -- what a store backend implements. Only store/ includes it.
**
** store.c parses nothing but the scheme, validates keys and arguments, then
** calls the backend through this table. Each backend's open function parses
** its own URL form.
*/
#ifndef WS_STORE_IMPL_H
#define WS_STORE_IMPL_H

#include "store.h"

struct store_ops {
    const char *scheme; /* "s3", "file" */
    void (*free)(store *s);
    int (*put)(store *s, const char *key, const void *data, size_t len, int flags,
               wserr *err);
    /* Streaming writer: backend-specific state behind store_writer. */
    int (*writer_open)(store *s, const char *key, int flags, store_writer **out,
                       wserr *err);
    int (*writer_write)(store_writer *w, const void *data, size_t len, wserr *err);
    int (*writer_commit)(store_writer *w, wserr *err);
    void (*writer_abort)(store_writer *w);
    /* off/len as store_get_range; tail != 0 means "last len bytes" (off ignored);
    ** whole == 1 means the full object (off/len ignored). */
    int (*get)(store *s, const char *key, int whole, int tail, uint64_t off,
               uint64_t len, wsbuf *out, wserr *err);
    int (*get_fd)(store *s, const char *key, int fd, wserr *err);
    /* store_get_stream; len 0 means to the end. */
    int (*get_stream)(store *s, const char *key, uint64_t off, uint64_t len, store_sink_fn fn,
                      void *ctx, wserr *err);
    int (*head)(store *s, const char *key, store_obj *out, wserr *err);
    int (*list)(store *s, const char *prefix, const char *start_after,
                store_objlist *out, wserr *err);
    int (*del)(store *s, const char *key, wserr *err);
    int (*del_many)(store *s, const char *const *keys, size_t n, wserr *err);
    /* Optional: backends that retry inside a request report each retry. */
    void (*set_retry_hook)(store *s, store_retry_fn fn, void *ctx);
};

/* The common head of every backend's store struct. */
struct store {
    const struct store_ops *ops;
    char *url; /* as given, secrets removed; owned */
};

/* The common head of every backend's writer struct. */
struct store_writer {
    store *s;
};

/* Backend constructors: url is the full URL including the scheme. */
int store_file_open(const char *url, store **out, wserr *err);
int store_s3_open(const char *url, store **out, wserr *err);

/* Appends one object to a list, copying key. WALSHIP_ERR_NOMEM on failure. */
int store_objlist_push(store_objlist *l, const char *key, size_t keylen, uint64_t size,
                    int64_t mtime_ms);

#endif
