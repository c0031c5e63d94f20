/*
** test_store_conformance.c -- one suite over the store API (store/store.h),
** run against every backend in one program.
**
** The cases are rows of a table {name, function}. The program runs the whole
** table against file:// in a temp directory, then against s3:// under
** ws_test_s3_url("conformance"), which skips the program (exit 77) when no
** S3 server is configured -- after file:// has already run -- or fails it
** under WALSHIP_TEST_REQUIRE_S3=1. Each case works under its own key prefix
** ("<case>/"); after each case the runner deletes whatever it left, and after
** the table the whole store must list empty.
**
** What "conforms" means is store.h's contract, plus three expectations it
** implies: a NOTFOUND from store_get_fd writes nothing to the fd, range and
** tail requests on an empty object return empty, and a create-only put that
** a backend cannot guarantee returns WALSHIP_ERR_UNSUPPORTED (accepted for
** s3 only, and printed) instead of overwriting.
**
** S3 cost: about 2,600 requests and 110 MiB each way; ~10-20 s on a local RGW.
**
** ctest-labels: s3
** ctest-timeout: 240
*/
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "store/store.h"

typedef struct backend {
    const char *name; /* "file", "s3" */
    int is_file;
    store *s;
} backend;

static backend *B;            /* the backend under test */
static const char *case_name; /* the running case: its keys start with "<name>/" */

/* ---- helpers ------------------------------------------------------------ */

/* The key "<case>/<suffix>" in one of 16 rotating buffers (enough for the
** keys one statement uses). Main thread only. */
static const char *K(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static const char *K(const char *fmt, ...) {
    static char bufs[16][1200];
    static unsigned next;
    char *b = bufs[next++ % 16];
    int n = snprintf(b, 1200, "%s/", case_name);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b + n, 1200 - (size_t)n, fmt, ap);
    va_end(ap);
    return b;
}

static uint8_t *rand_data(size_t n) {
    uint8_t *p = malloc(n ? n : 1);
    CHECK(p != NULL);
    ws_test_rand_bytes(p, n);
    return p;
}

static void put_bytes(const char *key, const void *data, size_t n) {
    wserr err_buf = {0}, *err = &err_buf;
    CHECK_OK(store_put(B->s, key, data, n, 0, err), err);
}

/* Checks that key holds exactly data[0..n). */
static void check_content(const char *key, const void *data, size_t n) {
    wserr err_buf = {0}, *err = &err_buf;
    wsbuf b = {0};
    CHECK(wsbuf_append(&b, "stale", 5) == 0); /* must be replaced, not appended to */
    CHECK_OK(store_get(B->s, key, &b, err), err);
    CHECK_EQ(b.len, n);
    CHECK(n == 0 || memcmp(b.p, data, n) == 0);
    wsbuf_free(&b);
}

static void check_missing(const char *key) {
    wserr err_buf = {0}, *err = &err_buf;
    store_obj o;
    CHECK_RC(store_head(B->s, key, &o, err), WALSHIP_ERR_NOTFOUND, err);
}

static uint64_t head_size(const char *key) {
    wserr err_buf = {0}, *err = &err_buf;
    store_obj o;
    CHECK_OK(store_head(B->s, key, &o, err), err);
    CHECK(o.key == NULL);
    return o.size;
}

static void list(const char *prefix, const char *after, store_objlist *out) {
    wserr err_buf = {0}, *err = &err_buf;
    store_objlist_free(out);
    CHECK_OK(store_list(B->s, prefix, after, out, err), err);
}

/* Checks that l is in strictly ascending byte order. */
static void check_sorted(const store_objlist *l) {
    for (size_t i = 1; i < l->n; i++)
        if (strcmp(l->items[i - 1].key, l->items[i].key) >= 0)
            ws_test_fail(__FILE__, __LINE__, "list out of order at %zu: \"%s\" then \"%s\"", i,
                         l->items[i - 1].key, l->items[i].key);
}

static int strptrcmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static uint64_t hash_fd_from(int fd, off_t off, size_t n) {
    uint8_t *p = malloc(n ? n : 1);
    CHECK(p != NULL);
    CHECK_EQ(ws_pread_full(fd, p, n, off), (ssize_t)n);
    uint64_t h = ws_hash64(p, n);
    free(p);
    return h;
}

static char *local_path(const char *name) {
    static char path[4096];
    snprintf(path, sizeof path, "%s/%s-%s", ws_test_tmpdir(), B->name, name);
    return path;
}

/* A thread's outcome, checked by the main thread. */
typedef struct thread_result {
    int rc;
    char msg[WSERR_MSG_MAX + 64];
} thread_result;

static void thread_fail(thread_result *r, int rc, const char *what, const wserr *err) {
    if (r->rc) return;
    r->rc = rc;
    snprintf(r->msg, sizeof r->msg, "%s: %s (%s)", what, walship_strerror(rc), err ? err->msg : "");
}

static void check_thread(const thread_result *r) {
    if (r->rc) ws_test_fail(__FILE__, __LINE__, "thread failed: %s", r->msg);
}

/* ---- cases -------------------------------------------------------------- */

static void case_roundtrip(void) {
    const size_t sizes[] = {0, 1, 1 << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        uint8_t *d = rand_data(sizes[i]);
        const char *key = K("obj-%zu", sizes[i]);
        put_bytes(key, d, sizes[i]);
        check_content(key, d, sizes[i]);
        CHECK_U64_EQ(head_size(key), sizes[i]);
        free(d);
    }
}

static void case_overwrite(void) {
    uint8_t *a = rand_data(5000), *b = rand_data(70);
    put_bytes(K("x"), a, 5000);
    put_bytes(K("x"), b, 70);
    check_content(K("x"), b, 70);
    CHECK_U64_EQ(head_size(K("x")), 70);
    put_bytes(K("x"), a, 0); /* down to empty */
    check_content(K("x"), a, 0);
    store_objlist l = {0};
    list(K("%s", ""), NULL, &l);
    CHECK_EQ(l.n, 1);
    CHECK_U64_EQ(l.items[0].size, 0);
    store_objlist_free(&l);
    free(a);
    free(b);
}

static void case_missing(void) {
    wserr err_buf = {0}, *err = &err_buf;
    wsbuf b = {0};
    put_bytes(K("dir/child"), "c", 1); /* "dir" is then a prefix, not an object */
    const char *keys[] = {K("nothing"), K("dir"), K("dir/chil"), K("dir/child/x")};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
        CHECK_RC(store_get(B->s, keys[i], &b, err), WALSHIP_ERR_NOTFOUND, err);
        CHECK(err->msg[0] != '\0');
        CHECK_RC(store_get_range(B->s, keys[i], 0, 10, &b, err), WALSHIP_ERR_NOTFOUND, err);
        CHECK_RC(store_get_tail(B->s, keys[i], 10, &b, err), WALSHIP_ERR_NOTFOUND, err);
        check_missing(keys[i]);
    }
    /* A NOTFOUND from get_fd writes nothing (no error body into a restore). */
    int fd = open(local_path("missing-out"), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    CHECK(fd >= 0);
    CHECK_RC(store_get_fd(B->s, K("nothing"), fd, err), WALSHIP_ERR_NOTFOUND, err);
    struct stat st;
    CHECK(fstat(fd, &st) == 0);
    CHECK_EQ(st.st_size, 0);
    close(fd);
    unlink(local_path("missing-out"));
    wsbuf_free(&b);
}

static void case_head(void) {
    wserr err_buf = {0}, *err = &err_buf;
    int64_t slack = B->is_file ? 2000 : 30000; /* S3 Last-Modified is in whole seconds */
    int64_t t0 = ws_now_ms();
    put_bytes(K("h"), "0123456789", 10);
    int64_t t1 = ws_now_ms();
    store_obj o;
    CHECK_OK(store_head(B->s, K("h"), &o, err), err);
    CHECK_U64_EQ(o.size, 10);
    if (o.mtime_ms < t0 - slack || o.mtime_ms > t1 + slack)
        ws_test_fail(__FILE__, __LINE__, "mtime %lld not within [%lld, %lld] +- %lld",
                     (long long)o.mtime_ms, (long long)t0, (long long)t1, (long long)slack);
    store_objlist l = {0};
    list(K("h"), NULL, &l);
    CHECK_EQ(l.n, 1);
    CHECK_STREQ(l.items[0].key, K("h"));
    CHECK_U64_EQ(l.items[0].size, 10);
    /* list may carry milliseconds where HEAD has whole seconds */
    CHECK(llabs(l.items[0].mtime_ms - o.mtime_ms) < 1000);
    store_objlist_free(&l);
}

static void case_ranges(void) {
    enum { SZ = 1000 };
    wserr err_buf = {0}, *err = &err_buf;
    wsbuf b = {0};
    uint8_t *d = rand_data(SZ);
    put_bytes(K("r"), d, SZ);
    put_bytes(K("empty"), "", 0);
    static const struct {
        uint64_t off, len;
        size_t want_off, want_len;
    } rows[] = {
        {0, 10, 0, 10},
        {0, 1, 0, 1},
        {500, 1, 500, 1},
        {SZ - 1, 1, SZ - 1, 1},
        {SZ - 1, 100, SZ - 1, 1},
        {990, 100, 990, 10},
        {0, SZ, 0, SZ},
        {0, SZ + 1, 0, SZ},
        {0, STORE_MEM_MAX, 0, SZ},
        {SZ, 5, 0, 0},
        {SZ + 1, 1, 0, 0},
        {5000, 5, 0, 0},
        {123, 0, 0, 0},
        {UINT64_MAX - 5, 10, 0, 0},
    };
    for (size_t i = 0; i < sizeof rows / sizeof *rows; i++) {
        CHECK(wsbuf_append(&b, "junk", 4) == 0);
        int rc = store_get_range(B->s, K("r"), rows[i].off, rows[i].len, &b, err);
        if (rc != 0 || b.len != rows[i].want_len ||
            (b.len && memcmp(b.p, d + rows[i].want_off, b.len) != 0))
            ws_test_fail(__FILE__, __LINE__,
                         "range off=%llu len=%llu: rc=%d len=%zu, want %zu bytes from %zu: %s",
                         (unsigned long long)rows[i].off, (unsigned long long)rows[i].len, rc,
                         b.len, rows[i].want_len, rows[i].want_off, err->msg);
    }
    CHECK_OK(store_get_range(B->s, K("empty"), 0, 10, &b, err), err);
    CHECK_EQ(b.len, 0);
    CHECK_OK(store_get_range(B->s, K("empty"), 1, 10, &b, err), err);
    CHECK_EQ(b.len, 0);
    CHECK_OK(store_get_tail(B->s, K("empty"), 10, &b, err), err);
    CHECK_EQ(b.len, 0);
    wsbuf_free(&b);
    free(d);
}

static void case_tail(void) {
    enum { SZ = 1000 };
    wserr err_buf = {0}, *err = &err_buf;
    wsbuf b = {0};
    uint8_t *d = rand_data(SZ);
    put_bytes(K("t"), d, SZ);
    const uint64_t ns[] = {1, 10, SZ - 1, SZ, SZ + 1, STORE_MEM_MAX};
    for (size_t i = 0; i < sizeof ns / sizeof *ns; i++) {
        size_t want = ns[i] < SZ ? (size_t)ns[i] : SZ;
        CHECK(wsbuf_append(&b, "junk", 4) == 0);
        CHECK_OK(store_get_tail(B->s, K("t"), ns[i], &b, err), err);
        CHECK_EQ(b.len, want);
        CHECK(memcmp(b.p, d + SZ - want, want) == 0);
    }
    CHECK_OK(store_get_tail(B->s, K("t"), 0, &b, err), err);
    CHECK_EQ(b.len, 0);
    wsbuf_free(&b);
    free(d);
}

/* 20 MiB through put_fd (from the fd's current offset) and get_fd (at the
** fd's current offset), compared by checksum both ways. */
static void case_fd_20mib(void) {
    enum { SKIP = 4096 };
    const size_t n = (size_t)20 << 20;
    wserr err_buf = {0}, *err = &err_buf;
    uint8_t *d = rand_data(n);
    uint64_t h = ws_hash64(d, n);
    char src[4096], dst[4096];
    snprintf(src, sizeof src, "%s", local_path("fd-src"));
    snprintf(dst, sizeof dst, "%s", local_path("fd-dst"));

    int fd = open(src, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    CHECK(fd >= 0);
    uint8_t junk[SKIP];
    memset(junk, 0xA5, sizeof junk);
    CHECK(ws_write_all(fd, junk, SKIP) == 0 && ws_write_all(fd, d, n) == 0);
    CHECK_EQ(lseek(fd, SKIP, SEEK_SET), SKIP);
    CHECK_OK(store_put_fd(B->s, K("big"), fd, 0, err), err);
    CHECK_EQ(lseek(fd, 0, SEEK_CUR), SKIP + (off_t)n); /* read to the end */
    close(fd);
    CHECK_U64_EQ(head_size(K("big")), n);

    fd = open(dst, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    CHECK(fd >= 0);
    CHECK(ws_write_all(fd, "abc", 3) == 0);
    CHECK_OK(store_get_fd(B->s, K("big"), fd, err), err);
    struct stat st;
    CHECK(fstat(fd, &st) == 0);
    CHECK_EQ(st.st_size, 3 + (off_t)n);
    CHECK_U64_EQ(hash_fd_from(fd, 3, n), h);
    char head[3];
    CHECK_EQ(ws_pread_full(fd, head, 3, 0), 3);
    CHECK(memcmp(head, "abc", 3) == 0);
    close(fd);

    wsbuf b = {0};
    CHECK_OK(store_get(B->s, K("big"), &b, err), err);
    CHECK_EQ(b.len, n);
    CHECK_U64_EQ(ws_hash64(b.p, b.len), h);
    wsbuf_free(&b);
    unlink(src);
    unlink(dst);
    free(d);
}

/* Writes d[0..n) to w in chunks of odd sizes; after `check_after` bytes,
** checks that nothing is visible under key yet. */
static void write_odd_chunks(store_writer *w, const uint8_t *d, size_t n, const char *key,
                             size_t check_after) {
    static const size_t chunk[] = {
        1, 7, 4093, 65537, (1 << 20) + 3, (3 << 20) | 1, STORE_PART_SIZE + 1, 12345};
    wserr err_buf = {0}, *err = &err_buf;
    size_t off = 0;
    int checked = 0;
    for (unsigned i = 0; off < n; i++) {
        size_t c = chunk[i % (sizeof chunk / sizeof *chunk)];
        if (c > n - off) c = n - off;
        CHECK_OK(store_writer_write(w, d + off, c, err), err);
        off += c;
        if (!checked && off >= check_after && off < n) {
            checked = 1;
            check_missing(key);
            store_objlist l = {0};
            list(key, NULL, &l);
            CHECK_EQ(l.n, 0);
        }
    }
}

static void case_writer_parts(void) {
    const size_t n = 3 * STORE_PART_SIZE + 12345;
    wserr err_buf = {0}, *err = &err_buf;
    store_writer *w = NULL;
    uint8_t *d = rand_data(n);
    CHECK_OK(store_writer_open(B->s, K("multi"), 0, &w, err), err);
    write_odd_chunks(w, d, n, K("multi"), 2 * STORE_PART_SIZE + 1);
    CHECK_OK(store_writer_commit(w, err), err);
    CHECK_U64_EQ(head_size(K("multi")), n);
    wsbuf b = {0};
    CHECK_OK(store_get(B->s, K("multi"), &b, err), err);
    CHECK_EQ(b.len, n);
    CHECK_U64_EQ(ws_hash64(b.p, b.len), ws_hash64(d, n));
    wsbuf_free(&b);

    /* A writer that writes nothing commits an empty object; a small one a
    ** single-request object. */
    CHECK_OK(store_writer_open(B->s, K("empty"), 0, &w, err), err);
    CHECK_OK(store_writer_commit(w, err), err);
    check_content(K("empty"), "", 0);
    CHECK_OK(store_writer_open(B->s, K("small"), 0, &w, err), err);
    CHECK_OK(store_writer_write(w, "hello ", 6, err), err);
    CHECK_OK(store_writer_write(w, "", 0, err), err);
    CHECK_OK(store_writer_write(w, "world", 5, err), err);
    CHECK_OK(store_writer_commit(w, err), err);
    check_content(K("small"), "hello world", 11);
    free(d);
}

static void case_writer_abort(void) {
    const size_t n = STORE_PART_SIZE + STORE_PART_SIZE / 2;
    wserr err_buf = {0}, *err = &err_buf;
    store_writer *w = NULL;
    uint8_t *d = rand_data(n);
    put_bytes(K("kept"), "original", 8);

    CHECK_OK(store_writer_open(B->s, K("kept"), 0, &w, err), err);
    write_odd_chunks(w, d, n, "", n);
    store_writer_abort(w);
    check_content(K("kept"), "original", 8);

    CHECK_OK(store_writer_open(B->s, K("gone"), 0, &w, err), err);
    write_odd_chunks(w, d, n, K("gone"), STORE_PART_SIZE + 1);
    store_writer_abort(w);
    check_missing(K("gone"));

    CHECK_OK(store_writer_open(B->s, K("never"), 0, &w, err), err);
    store_writer_abort(w);
    check_missing(K("never"));
    store_writer_abort(NULL);

    store_objlist l = {0};
    list(K("%s", ""), NULL, &l);
    CHECK_EQ(l.n, 1);
    CHECK_STREQ(l.items[0].key, K("kept"));
    store_objlist_free(&l);
    free(d);
}

/* Result of a create-only put: 1 if done, 0 if the backend says it cannot
** (accepted for s3 only, as store.h documents for such servers). */
static int create_only_ok(int rc, const wserr *err, const char *what) {
    if (rc == WALSHIP_ERR_UNSUPPORTED && !B->is_file) {
        fprintf(stderr, "   note: %s backend: %s unsupported: %s\n", B->name, what, err->msg);
        return 0;
    }
    CHECK_OK(rc, err);
    return 1;
}

/* A create-only streaming put of n bytes onto key: EXISTS or, on s3,
** UNSUPPORTED -- at open, at a write (then the writer is aborted) or at
** commit. */
static void writer_create_only_refused(const char *key, size_t n) {
    wserr err_buf = {0}, *err = &err_buf;
    store_writer *w = NULL;
    int rc = store_writer_open(B->s, key, STORE_PUT_CREATE_ONLY, &w, err);
    if (rc == 0) {
        uint8_t *d = rand_data(n);
        size_t c = n / 3 + 1;
        for (size_t off = 0; rc == 0 && off < n; off += c)
            rc = store_writer_write(w, d + off, n - off < c ? n - off : c, err);
        if (rc == 0)
            rc = store_writer_commit(w, err);
        else
            store_writer_abort(w);
        free(d);
    }
    if (rc == WALSHIP_ERR_UNSUPPORTED && !B->is_file) {
        fprintf(stderr, "   note: %s backend: create-only writer of %zu bytes unsupported: %s\n",
                B->name, n, err->msg);
        return;
    }
    CHECK_RC(rc, WALSHIP_ERR_EXISTS, err);
}

static void case_create_only(void) {
    wserr err_buf = {0}, *err = &err_buf;
    uint8_t *a = rand_data(300), *b = rand_data(200);
    int rc = store_put(B->s, K("once"), a, 300, STORE_PUT_CREATE_ONLY, err);
    if (!create_only_ok(rc, err, "create-only put")) {
        check_missing(K("once")); /* "nothing is written then" */
        free(a);
        free(b);
        return;
    }
    CHECK_RC(store_put(B->s, K("once"), b, 200, STORE_PUT_CREATE_ONLY, err), WALSHIP_ERR_EXISTS,
             err);
    check_content(K("once"), a, 300);

    /* the same through put_fd and the writer, small and multipart */
    int fd = open(local_path("co-src"), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    CHECK(fd >= 0 && ws_write_all(fd, b, 200) == 0 && lseek(fd, 0, SEEK_SET) == 0);
    CHECK_RC(store_put_fd(B->s, K("once"), fd, STORE_PUT_CREATE_ONLY, err), WALSHIP_ERR_EXISTS,
             err);
    close(fd);
    unlink(local_path("co-src"));
    writer_create_only_refused(K("once"), 100);
    writer_create_only_refused(K("once"), STORE_PART_SIZE + 1);
    check_content(K("once"), a, 300);

    /* a create-only writer onto a new key stores it */
    store_writer *w = NULL;
    CHECK_OK(store_writer_open(B->s, K("new"), STORE_PUT_CREATE_ONLY, &w, err), err);
    CHECK_OK(store_writer_write(w, b, 200, err), err);
    if (create_only_ok(store_writer_commit(w, err), err, "create-only writer"))
        check_content(K("new"), b, 200);

    /* a plain put still overwrites */
    put_bytes(K("once"), b, 200);
    check_content(K("once"), b, 200);
    free(a);
    free(b);
}

enum { RACERS = 8 };
typedef struct racer {
    pthread_barrier_t *go;
    const char *key;
    uint8_t data[64];
    int rc;
    thread_result res;
} racer;

static void *racer_main(void *arg) {
    racer *r = arg;
    wserr err_buf = {0}, *err = &err_buf;
    pthread_barrier_wait(r->go);
    r->rc = store_put(B->s, r->key, r->data, sizeof r->data, STORE_PUT_CREATE_ONLY, err);
    if (r->rc != 0 && r->rc != WALSHIP_ERR_EXISTS && r->rc != WALSHIP_ERR_UNSUPPORTED)
        thread_fail(&r->res, r->rc, "create-only put", err);
    return NULL;
}

/* Racing create-only puts of one key: exactly one wins, and its bytes stay. */
static void case_create_only_race(void) {
    pthread_barrier_t go;
    pthread_t t[RACERS];
    racer r[RACERS];
    const char *key = K("contested");
    CHECK(pthread_barrier_init(&go, NULL, RACERS) == 0);
    for (int i = 0; i < RACERS; i++) {
        memset(&r[i], 0, sizeof r[i]);
        r[i].go = &go;
        r[i].key = key;
        ws_test_rand_bytes(r[i].data, sizeof r[i].data);
        r[i].data[0] = (uint8_t)i;
        CHECK(pthread_create(&t[i], NULL, racer_main, &r[i]) == 0);
    }
    int winners = 0, winner = -1, unsupported = 0;
    for (int i = 0; i < RACERS; i++) {
        CHECK(pthread_join(t[i], NULL) == 0);
        check_thread(&r[i].res);
        if (r[i].rc == 0) winners++, winner = i;
        if (r[i].rc == WALSHIP_ERR_UNSUPPORTED) unsupported++;
    }
    pthread_barrier_destroy(&go);
    if (unsupported && !B->is_file) {
        fprintf(stderr, "   note: %s backend: create-only puts unsupported\n", B->name);
        return;
    }
    CHECK_EQ(unsupported, 0);
    CHECK_EQ(winners, 1);
    check_content(key, r[winner].data, sizeof r[winner].data);
}

/* Checks store_list(prefix, after) against the expected keys (sorted,
** with their sizes) filtered the same way. */
static void check_list_against(char **keys, const uint64_t *sizes, size_t n, const char *prefix,
                               const char *after) {
    store_objlist l = {0};
    list(prefix, after, &l);
    check_sorted(&l);
    size_t j = 0, plen = strlen(prefix);
    for (size_t i = 0; i < n; i++) {
        if (strncmp(keys[i], prefix, plen) != 0) continue;
        if (after && strcmp(keys[i], after) <= 0) continue;
        if (j >= l.n)
            ws_test_fail(__FILE__, __LINE__, "list(\"%s\", after \"%s\") misses \"%s\"", prefix,
                         after ? after : "", keys[i]);
        if (strcmp(l.items[j].key, keys[i]) != 0)
            ws_test_fail(__FILE__, __LINE__,
                         "list(\"%s\", after \"%s\") item %zu is \"%s\", expected \"%s\"", prefix,
                         after ? after : "", j, l.items[j].key, keys[i]);
        CHECK_U64_EQ(l.items[j].size, sizes[i]);
        j++;
    }
    if (j != l.n)
        ws_test_fail(__FILE__, __LINE__, "list(\"%s\", after \"%s\") has %zu items, expected %zu",
                     prefix, after ? after : "", l.n, j);
    store_objlist_free(&l);
}

/* Puts the given key suffixes (size = index + 1), sorts the full keys, and
** returns them with their sizes in the same order. */
static char **put_named(const char *const *names, size_t n, uint64_t **sizes_out) {
    char **keys = calloc(n, sizeof *keys);
    uint64_t *sizes = calloc(n, sizeof *sizes);
    CHECK(keys && sizes);
    for (size_t i = 0; i < n; i++) {
        keys[i] = strdup(K("%s", names[i]));
        CHECK(keys[i] != NULL);
    }
    qsort(keys, n, sizeof *keys, strptrcmp);
    for (size_t i = 0; i < n; i++) {
        sizes[i] = 1 + i % 7;
        uint8_t buf[8] = {0};
        put_bytes(keys[i], buf, (size_t)sizes[i]);
    }
    *sizes_out = sizes;
    return keys;
}

static void free_keys(char **keys, size_t n) {
    for (size_t i = 0; i < n; i++)
        free(keys[i]);
    free(keys);
}

/* Byte order of full keys: '/' (0x2f) sorts between '.' and '0', so "a/b"
** comes after "a-b" and "a.b" and before "a0" -- whatever the directories.
** Bytes compare unsigned: "\xc3\xbc" sorts after '~'. Bounds are valid
** UTF-8 (U+0080, U+10FFFF), as S3 keys must be: RGW echoes StartAfter
** into its XML unescaped. */
static void case_list_order(void) {
    static const char *const names[] = {
        "a-b",       "a.b", "a/b", "a/b-",    "a/b0", "a/ba",   "a/c/d",      "a/c/d0", "a/c-",
        "a0",        "ab",  "a b", "a+b",     "a=b",  "a&b",    "a%b",        "a?b",    "a#b",
        "a\xc3\xa9", "A",   "~",   "b/a/a/a", "b/a-", "b/a/a-", "\xc3\xbc/x", "z"};
    const size_t n = sizeof names / sizeof *names;
    uint64_t *sizes;
    char **keys = put_named(names, n, &sizes);
    static const char *const bounds[][2] = {
        {"", NULL},       {"a", NULL},       {"a/", NULL}, {"a/b", NULL},   {"a/c/", NULL},
        {"b/a", NULL},    {"nothing", NULL}, {"", "a.b"},  {"", "a/"},      {"", "a/c"},
        {"", "a/c/d"},    {"", "a/zzz"},     {"", "a/b"},  {"a/", "a/b0"},  {"b/", "b/a/"},
        {"", "\xc2\x80"}, {"", "~"},         {"", "a"},    {"a", "a/c/d0"}, {"a/c", "a/c/"},
    };
    for (size_t i = 0; i < sizeof bounds / sizeof *bounds; i++) {
        char prefix[256], after[256];
        snprintf(prefix, sizeof prefix, "%s", K("%s", bounds[i][0]));
        if (bounds[i][1]) snprintf(after, sizeof after, "%s", K("%s", bounds[i][1]));
        check_list_against(keys, sizes, n, prefix, bounds[i][1] ? after : NULL);
    }
    /* start_after below and above the case's keys */
    check_list_against(keys, sizes, n, K("%s", ""), case_name);
    check_list_against(keys, sizes, n, K("%s", ""), K("\xf4\x8f\xbf\xbf"));
    free_keys(keys, n);
    free(sizes);
}

/* Keys S3 must escape in paths and query strings, and deep paths. */
static void case_special_keys(void) {
    static const char *const names[] = {"with space",
                                        " lead",
                                        "trail ",
                                        "plus+sign",
                                        "eq=al",
                                        "amp&ersand",
                                        "per%cent",
                                        "%2F",
                                        "%41%",
                                        "ques?tion",
                                        "hash#tag",
                                        "semi;colon",
                                        "comma,",
                                        "quote'\"",
                                        "paren()",
                                        "dollar$",
                                        "at@",
                                        "bracket[]",
                                        "brace{}",
                                        "back\\slash",
                                        "caret^",
                                        "pipe|",
                                        "lt<gt>",
                                        "star*",
                                        "tilde~",
                                        "\xc3\xbc/\xe6\x97\xa5\xe6\x9c\xac \xe8\xaa\x9e",
                                        "emoji\xf0\x9f\x98\x80",
                                        "deep/1/2/3/4/5/6/7/8/9/10/11/12/13/14/15/16/x",
                                        "..dots",
                                        "a..b/.c"};
    const size_t n = sizeof names / sizeof *names;
    wserr err_buf = {0}, *err = &err_buf;
    wsbuf b = {0};
    uint64_t *sizes;
    char **keys = put_named(names, n, &sizes);
    check_list_against(keys, sizes, n, K("%s", ""), NULL);
    for (size_t i = 0; i < n; i++) {
        uint8_t want[8] = {0};
        check_content(keys[i], want, (size_t)sizes[i]);
        CHECK_U64_EQ(head_size(keys[i]), sizes[i]);
        CHECK_OK(store_get_range(B->s, keys[i], 0, 1, &b, err), err);
        CHECK_EQ(b.len, 1);
        check_list_against(keys, sizes, n, keys[i], NULL);
        check_list_against(keys, sizes, n, K("%s", ""), keys[i]);
    }
    for (size_t i = 0; i < n; i++) {
        CHECK_OK(store_delete(B->s, keys[i], err), err);
        check_missing(keys[i]);
    }
    store_objlist l = {0};
    list(K("%s", ""), NULL, &l);
    CHECK_EQ(l.n, 0);
    wsbuf_free(&b);
    free_keys(keys, n);
    free(sizes);
}

enum { MANY = 1100, PUTTERS = 8 };
typedef struct putter {
    char **keys;
    const uint64_t *sizes;
    int first;
    thread_result res;
} putter;

static void *putter_main(void *arg) {
    putter *p = arg;
    uint8_t buf[16] = {0};
    for (int i = p->first; i < MANY && p->res.rc == 0; i += PUTTERS) {
        wserr err_buf = {0}, *err = &err_buf;
        int rc = store_put(B->s, p->keys[i], buf, (size_t)p->sizes[i], 0, err);
        if (rc) thread_fail(&p->res, rc, p->keys[i], err);
    }
    return NULL;
}

/* 1,100 keys (put by 8 threads): one listing across S3's 1,000-key pages,
** start_after in the middle, prefixes, then delete_many of all of them. */
static void case_many_keys(void) {
    char **keys = calloc(MANY, sizeof *keys);
    uint64_t *sizes = calloc(MANY, sizeof *sizes);
    CHECK(keys && sizes);
    for (int i = 0; i < MANY; i++) {
        keys[i] = strdup(i % 4 == 0 ? K("m%04d", i) : K("m/d%d/%04d", i % 4, i));
        CHECK(keys[i] != NULL);
    }
    qsort(keys, MANY, sizeof *keys, strptrcmp);
    for (int i = 0; i < MANY; i++)
        sizes[i] = (uint64_t)(i % 13);

    pthread_t t[PUTTERS];
    putter p[PUTTERS];
    for (int i = 0; i < PUTTERS; i++) {
        p[i] = (putter){.keys = keys, .sizes = sizes, .first = i};
        CHECK(pthread_create(&t[i], NULL, putter_main, &p[i]) == 0);
    }
    for (int i = 0; i < PUTTERS; i++) {
        CHECK(pthread_join(t[i], NULL) == 0);
        check_thread(&p[i].res);
    }

    store_objlist l = {0};
    list(K("%s", ""), NULL, &l);
    CHECK_EQ(l.n, MANY);
    list(K("%s", ""), keys[550], &l);
    CHECK_EQ(l.n, MANY - 551);
    CHECK_STREQ(l.items[0].key, keys[551]);
    store_objlist_free(&l);
    check_list_against(keys, sizes, MANY, K("%s", ""), NULL);
    check_list_against(keys, sizes, MANY, K("%s", ""), keys[550]);
    check_list_against(keys, sizes, MANY, K("m/d2/"), NULL);
    check_list_against(keys, sizes, MANY, K("m/d"), K("m/d1/0777"));
    check_list_against(keys, sizes, MANY, K("m0"), K("m05"));

    wserr err_buf = {0}, *err = &err_buf;
    CHECK_OK(store_delete_many(B->s, (const char *const *)keys, MANY, err), err);
    list(K("%s", ""), NULL, &l);
    CHECK_EQ(l.n, 0);
    CHECK_OK(store_delete_many(B->s, (const char *const *)keys, MANY, err), err);
    free_keys(keys, MANY);
    free(sizes);
}

static void case_delete(void) {
    wserr err_buf = {0}, *err = &err_buf;
    put_bytes(K("a"), "1", 1);
    put_bytes(K("b"), "22", 2);
    put_bytes(K("dir/x"), "333", 3);
    CHECK_OK(store_delete(B->s, K("a"), err), err);
    check_missing(K("a"));
    wsbuf b = {0};
    CHECK_RC(store_get(B->s, K("a"), &b, err), WALSHIP_ERR_NOTFOUND, err);
    CHECK_OK(store_delete(B->s, K("a"), err), err);     /* again */
    CHECK_OK(store_delete(B->s, K("never"), err), err); /* never existed */
    CHECK_OK(store_delete(B->s, K("dir"), err), err);   /* a prefix, not an object */
    check_content(K("dir/x"), "333", 3);
    check_content(K("b"), "22", 2);

    const char *some[] = {K("b"), K("missing"), K("dir/x")};
    CHECK_OK(store_delete_many(B->s, some, 3, err), err);
    check_missing(K("b"));
    check_missing(K("dir/x"));
    store_objlist l = {0};
    list(K("%s", ""), NULL, &l);
    CHECK_EQ(l.n, 0);
    wsbuf_free(&b);
}

/* store.c refuses bad keys the same way for every call and every backend. */
static void case_invalid_keys(void) {
    char toolong[1100];
    memset(toolong, 'k', 1025);
    toolong[1025] = '\0';
    const char *bad[] = {"",    "/a",    "a//b", "//",   ".",      "..",    "./a",
                         "a/.", "a/./b", "a/..", "../a", "a/../b", toolong, NULL};
    wserr err_buf = {0}, *err = &err_buf;
    wsbuf b = {0};
    store_obj o;
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    CHECK(devnull >= 0);
    put_bytes(K("good"), "g", 1);
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        const char *k = bad[i];
        CHECK(!store_key_valid(k));
        CHECK_RC(store_put(B->s, k, "x", 1, 0, err), WALSHIP_ERR_INVALID, err);
        CHECK_CONTAINS(err->msg, "invalid object key");
        CHECK_RC(store_put(B->s, k, "x", 1, STORE_PUT_CREATE_ONLY, err), WALSHIP_ERR_INVALID, err);
        CHECK_RC(store_put_fd(B->s, k, devnull, 0, err), WALSHIP_ERR_INVALID, err);
        CHECK_RC(store_get(B->s, k, &b, err), WALSHIP_ERR_INVALID, err);
        CHECK_RC(store_get_range(B->s, k, 0, 1, &b, err), WALSHIP_ERR_INVALID, err);
        CHECK_RC(store_get_tail(B->s, k, 1, &b, err), WALSHIP_ERR_INVALID, err);
        CHECK_RC(store_get_fd(B->s, k, devnull, err), WALSHIP_ERR_INVALID, err);
        CHECK_RC(store_head(B->s, k, &o, err), WALSHIP_ERR_INVALID, err);
        CHECK_RC(store_delete(B->s, k, err), WALSHIP_ERR_INVALID, err);
        store_writer *w = (store_writer *)&o; /* must be reset to NULL */
        CHECK_RC(store_writer_open(B->s, k, 0, &w, err), WALSHIP_ERR_INVALID, err);
        CHECK(w == NULL);
        /* one bad key fails the whole batch before anything is deleted */
        const char *batch[] = {K("good"), k};
        CHECK_RC(store_delete_many(B->s, batch, 2, err), WALSHIP_ERR_INVALID, err);
        check_content(K("good"), "g", 1);
    }
    static const char *const good[] = {"a", "a/b", ".a", "..a", "a..", "a/.b", "a/...", "\xc3\xbc"};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++)
        CHECK(store_key_valid(good[i]));
    /* folder markers and broken UTF-8 are refused by every backend alike */
    static const char *const refused[] = {"a/", "a//b", "\xc3", "\xff", "a/\x80" "b"};
    for (size_t i = 0; i < sizeof refused / sizeof *refused; i++)
        CHECK(!store_key_valid(refused[i]));
    /* prefixes that no valid key can have list nothing (and never escape) */
    store_objlist l = {0};
    const char *noprefix[] = {"../", "/", "./", "a//", "..", "/etc"};
    for (size_t i = 0; i < sizeof noprefix / sizeof *noprefix; i++) {
        list(noprefix[i], NULL, &l);
        if (strcmp(noprefix[i], "..") != 0) CHECK_EQ(l.n, 0);
        for (size_t j = 0; j < l.n; j++)
            CHECK_CONTAINS(l.items[j].key, "..");
    }
    store_objlist_free(&l);
    close(devnull);
    wsbuf_free(&b);
}

/* Builds "<case>/" + segments of at most 200 'q's to exactly len bytes. */
static void long_key(char *key, size_t len) {
    size_t n = (size_t)snprintf(key, len + 1, "%s/", case_name);
    while (n < len) {
        size_t seg = len - n > 200 ? 200 : len - n;
        memset(key + n, 'q', seg);
        n += seg;
        if (n < len - 1) key[n++] = '/';
    }
    key[len] = '\0';
}

/* Long keys. 600 bytes must work everywhere. store_key_valid accepts up
** to 1,024, but S3's limit applies to the full object name, prefix
** included, so a backend may be unable to hold the longest keys: then it
** must say so with WALSHIP_ERR_INVALID (a permanent error), not a store
** error a caller would retry. */
static void case_long_keys(void) {
    wserr err_buf = {0}, *err = &err_buf;
    char key[1100];
    const size_t lens[] = {600, 1024};
    for (size_t i = 0; i < 2; i++) {
        long_key(key, lens[i]);
        CHECK(store_key_valid(key));
        int rc = store_put(B->s, key, "max", 3, 0, err);
        if (rc == WALSHIP_ERR_INVALID && lens[i] == 1024) {
            fprintf(stderr, "   note: %s backend: a %zu-byte key is refused: %s\n", B->name,
                    lens[i], err->msg);
            continue;
        }
        CHECK_OK(rc, err);
        check_content(key, "max", 3);
        store_objlist l = {0};
        list(K("%s", ""), NULL, &l);
        CHECK_EQ(l.n, 1);
        CHECK_STREQ(l.items[0].key, key);
        store_objlist_free(&l);
        CHECK_OK(store_delete(B->s, key, err), err);
        check_missing(key);
    }
}

/* ---- runner ------------------------------------------------------------- */

typedef struct conformance_case {
    const char *name;
    void (*fn)(void);
} conformance_case;

static const conformance_case cases[] = {
    {"roundtrip", case_roundtrip},
    {"overwrite", case_overwrite},
    {"missing", case_missing},
    {"head", case_head},
    {"ranges", case_ranges},
    {"tail", case_tail},
    {"fd-20mib", case_fd_20mib},
    {"writer-parts", case_writer_parts},
    {"writer-abort", case_writer_abort},
    {"create-only", case_create_only},
    {"create-only-race", case_create_only_race},
    {"list-order", case_list_order},
    {"special-keys", case_special_keys},
    {"many-keys", case_many_keys},
    {"delete", case_delete},
    {"invalid-keys", case_invalid_keys},
    {"long-keys", case_long_keys},
};

/* Deletes whatever keys start with prefix. */
static void wipe(const char *prefix) {
    wserr err_buf = {0}, *err = &err_buf;
    store_objlist l = {0};
    list(prefix, NULL, &l);
    const char **keys = calloc(l.n + 1, sizeof *keys);
    CHECK(keys != NULL);
    for (size_t i = 0; i < l.n; i++)
        keys[i] = l.items[i].key;
    CHECK_OK(store_delete_many(B->s, keys, l.n, err), err);
    free(keys);
    store_objlist_free(&l);
}

static void run_backend(backend *be, const char *url) {
    wserr err_buf = {0}, *err = &err_buf;
    B = be;
    CHECK_OK(store_open(url, &be->s, err), err);
    CHECK(strncmp(store_url(be->s), be->name, strlen(be->name)) == 0);
    int64_t total0 = ws_mono_ms();
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        case_name = cases[i].name;
        int64_t t0 = ws_mono_ms();
        cases[i].fn();
        char prefix[128];
        snprintf(prefix, sizeof prefix, "%s/", case_name);
        wipe(prefix);
        fprintf(stderr, "-- %-5s %-18s %6lld ms\n", be->name, case_name,
                (long long)(ws_mono_ms() - t0));
    }
    store_objlist l = {0};
    list("", NULL, &l);
    for (size_t i = 0; i < l.n && i < 5; i++)
        fprintf(stderr, "left over: %s\n", l.items[i].key);
    CHECK_EQ(l.n, 0);
    store_objlist_free(&l);
    fprintf(stderr, "== %s backend: %zu cases passed in %lld ms\n", be->name,
            sizeof cases / sizeof *cases, (long long)(ws_mono_ms() - total0));
    store_free(be->s);
    be->s = NULL;
}

/* "file://" + dir with every byte outside [A-Za-z0-9/._~-] percent-encoded. */
static void file_url_of(const char *dir, char *url, size_t n) {
    size_t j = (size_t)snprintf(url, n, "file://");
    for (const unsigned char *p = (const unsigned char *)dir; *p && j + 4 < n; p++) {
        if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
            strchr("/._~-", *p))
            url[j++] = (char)*p;
        else
            j += (size_t)snprintf(url + j, n - j, "%%%02X", *p);
    }
    url[j] = '\0';
}

int main(void) {
    ws_test_seed(20240611);
    char dir[4200], url[13000];
    snprintf(dir, sizeof dir, "%s/store", ws_test_tmpdir());
    file_url_of(dir, url, sizeof url);
    backend file = {.name = "file", .is_file = 1};
    run_backend(&file, url);

    backend s3 = {.name = "s3", .is_file = 0};
    run_backend(&s3, ws_test_s3_url("conformance"));
    return 0;
}
