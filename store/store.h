/*
** store.h -- the object-store interface: the seam between walship and the
** places it keeps backups.
**
** Two backends sit behind it:
**   s3://BUCKET[/PREFIX][?endpoint=URL&region=R&path_style=1]
**        any S3-compatible server, through libcurl with SigV4 (store_s3.c)
**   file:///ABS/DIR
**        a directory on a local or network file system (store_file.c)
** Anything else is refused with an error that lists the accepted forms.
**
** Keys are relative to the URL's prefix ("generations/0001/x.seg"); they are
** non-empty UTF-8, at most 1024 bytes, neither start nor end with '/', and
** contain no empty, "." or ".." path segment. S3's 1024-byte limit counts
** the URL's prefix too: the s3 backend refuses longer full keys with
** WALSHIP_ERR_INVALID. Listing returns keys in ascending byte order, as S3
** does.
**
** Every function returns 0 (WALSHIP_OK) or a walship_err code, and fills
** `err` with a sentence naming the problem and the likely fix. Secrets never
** appear in messages or logs.
**
** Thread-safety: one `store` may be used from many threads at once; a
** `store_writer` belongs to one thread at a time.
*/
#ifndef WS_STORE_H
#define WS_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "../common/err.h"
#include "../common/util.h"

typedef struct store store;
typedef struct store_writer store_writer;

/* One listed object. */
typedef struct store_obj {
    char *key;        /* relative to the store's prefix; owned by the list */
    uint64_t size;    /* bytes */
    int64_t mtime_ms; /* last modification, ms since the epoch; 0 if unknown */
} store_obj;

/* A growable array of objects; zero-initialise, release with store_objlist_free. */
typedef struct store_objlist {
    store_obj *items;
    size_t n;
    size_t cap;
} store_objlist;

void store_objlist_free(store_objlist *l);

/* Largest object store_get*() reads into memory; bigger ones are refused as
** WALSHIP_ERR_CORRUPT (stream them with store_get_fd instead). */
#define STORE_MEM_MAX ((uint64_t)1 << 30)

/* Flags for puts. */
enum {
    /* Fail with WALSHIP_ERR_EXISTS if the key exists (S3: If-None-Match: *).
    ** A server that cannot do this makes the put fail with
    ** WALSHIP_ERR_UNSUPPORTED; nothing is written then. */
    STORE_PUT_CREATE_ONLY = 1
};

/* Opens a store for url. Reads AWS_* settings from the environment for s3://
** URLs (see README). On success *out owns the handle (free with store_free). */
int store_open(const char *url, store **out, wserr *err);

/* Frees a store; accepts NULL. No request may be in flight. */
void store_free(store *s);

/* The URL the store was opened with, with any secret removed. Owned by s. */
const char *store_url(const store *s);

/* Puts len bytes from memory under key (overwrites unless CREATE_ONLY). */
int store_put(store *s, const char *key, const void *data, size_t len, int flags,
              wserr *err);

/* Puts everything from fd's current offset to its end under key, streaming:
** memory stays bounded whatever the size (multipart upload on S3 above
** STORE_PART_SIZE). */
int store_put_fd(store *s, const char *key, int fd, int flags, wserr *err);

/* Streaming put of unknown length. store_writer_write buffers at most one
** part (STORE_PART_SIZE); on S3 the first full part starts a multipart
** upload. store_writer_commit makes the object visible and frees w, whether
** it succeeds or not; store_writer_abort discards everything (aborting a
** multipart upload) and frees w (NULL allowed). Nothing is visible under key
** unless commit returned 0. */
#define STORE_PART_SIZE ((size_t)8 << 20)
int store_writer_open(store *s, const char *key, int flags, store_writer **out,
                      wserr *err);
int store_writer_write(store_writer *w, const void *data, size_t len, wserr *err);
int store_writer_commit(store_writer *w, wserr *err);
void store_writer_abort(store_writer *w);

/* Reads a whole object into out (out->len is set to its size; previous
** contents are replaced). WALSHIP_ERR_NOTFOUND if there is no such key. */
int store_get(store *s, const char *key, wsbuf *out, wserr *err);

/* Reads bytes [off, off+len) of an object, clipped to its end: fewer bytes
** (possibly none) when the range runs past the end. */
int store_get_range(store *s, const char *key, uint64_t off, uint64_t len,
                    wsbuf *out, wserr *err);

/* Reads the last n bytes of an object (all of it if it is shorter). */
int store_get_tail(store *s, const char *key, uint64_t n, wsbuf *out, wserr *err);

/* Streams a whole object into fd at its current offset. On failure some
** bytes may have been written to fd; the caller owns cleaning them up. */
int store_get_fd(store *s, const char *key, int fd, wserr *err);

/* Receives the bytes of a streamed get, in order, each byte once. Returns 0
** to go on, or a walship_err (with err set) to stop the transfer; the get
** then fails with exactly that code and message. */
typedef int (*store_sink_fn)(void *ctx, const uint8_t *data, size_t n, wserr *err);

/* Streams bytes [off, off+len) of an object (len 0: to its end), clipped to
** its end, to fn in pieces of at most STORE_STREAM_PIECE bytes: memory stays
** bounded whatever the size, and the caller can stop at the first bad byte.
** A retried request resumes where the last one stopped (no byte is handed
** over twice); an object replaced meanwhile (another S3 ETag) fails with
** WALSHIP_ERR_NETWORK. WALSHIP_ERR_NOTFOUND if there is no such object. */
#define STORE_STREAM_PIECE ((size_t)256 << 10)
int store_get_stream(store *s, const char *key, uint64_t off, uint64_t len, store_sink_fn fn,
                     void *ctx, wserr *err);

/* Size and mtime of one object (out->key is left NULL).
** WALSHIP_ERR_NOTFOUND if there is no such key. */
int store_head(store *s, const char *key, store_obj *out, wserr *err);

/* Appends to out every object whose key starts with prefix ("" for all) and
** sorts after start_after (NULL or "" for no bound), in ascending byte
** order, following continuation tokens until the listing ends. */
int store_list(store *s, const char *prefix, const char *start_after,
               store_objlist *out, wserr *err);

/* Deletes one object. Deleting a missing key succeeds. */
int store_delete(store *s, const char *key, wserr *err);

/* Deletes many objects (S3: DeleteObjects in batches of 1000). Missing keys
** succeed. If some deletions fail, returns the first error. */
int store_delete_many(store *s, const char *const *keys, size_t n, wserr *err);

/* Called before every retry a backend makes inside one request (S3: a
** network error, 5xx, 429 or 408), with a sentence saying what failed and
** that it is being retried, so a caller can report an outage at once while
** the request goes on retrying. Set it before the store is shared between
** threads; it runs on the thread making the request. NULL removes it. */
typedef void (*store_retry_fn)(void *ctx, const char *msg);
void store_set_retry_hook(store *s, store_retry_fn fn, void *ctx);

/* Nonzero if key is acceptable (see the rules at the top). */
int store_key_valid(const char *key);

#endif
