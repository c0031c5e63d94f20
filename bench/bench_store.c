/*
** bench_store.c -- the store's side of a benchmark: what a destination
** holds, and how fast a plain parallel download of it is.
**
** USAGE
**   bench_store list URL
**   bench_store fetch URL [--parallel N] [--out DIR]
**   bench_store clear URL
**
** list: every object under URL (any writer's: walship's, or a peer's), as
**   one line "objects=N bytes=B put_requests=P". P counts what writing them
**   took on S3 with walship's part size: one PUT per object up to 8 MiB, and
**   for a bigger one a multipart upload (create, one PUT per 8 MiB part,
**   complete). bench/run lists before and after a run: the difference is
**   what the run uploaded, as long as nothing was deleted meanwhile
**   (walship's retention deletes only after its 24 h window).
**
** fetch: the simplest alternative to `walship restore`: list URL, then GET
**   every object in N threads (default 8, restore's default), each into its
**   own file in DIR (no fsync; default: discarded). Nothing is decoded or
**   checked. Prints "objects=N bytes=B secs=S" (listing included).
**
** clear: deletes every object under URL (bench/run's prefixes, so that a
**   memory-backed test server does not fill up).
**
** Credentials and endpoints come from the environment, as for walship.
*/
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "store/store.h"

static int fail(const char *what, const wserr *err) {
    fprintf(stderr, "bench_store: %s: %s\n", what, err->msg);
    return 1;
}

static int cmd_list(store *st) {
    store_objlist l = {0};
    wserr err = {0};
    if (store_list(st, "", NULL, &l, &err) != 0) return fail("list", &err);
    uint64_t bytes = 0, puts = 0;
    for (size_t i = 0; i < l.n; i++) {
        bytes += l.items[i].size;
        uint64_t parts = (l.items[i].size + STORE_PART_SIZE - 1) / STORE_PART_SIZE;
        puts += parts <= 1 ? 1 : parts + 2;
    }
    printf("objects=%zu bytes=%" PRIu64 " put_requests=%" PRIu64 "\n", l.n, bytes, puts);
    store_objlist_free(&l);
    return 0;
}

typedef struct fetch_job {
    store *st;
    const store_objlist *l;
    const char *out_dir; /* NULL: discard */
    _Atomic size_t next;
    _Atomic int failed;
} fetch_job;

/* Worker: takes the next object until none is left or one failed. */
static void *fetch_main(void *arg) {
    fetch_job *j = arg;
    for (;;) {
        size_t i = atomic_fetch_add(&j->next, 1);
        if (i >= j->l->n || atomic_load(&j->failed)) return NULL;
        char path[4200];
        if (j->out_dir)
            snprintf(path, sizeof path, "%s/%zu.obj", j->out_dir, i);
        else
            snprintf(path, sizeof path, "/dev/null");
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        wserr err = {0};
        int rc = fd < 0 ? -1 : store_get_fd(j->st, j->l->items[i].key, fd, &err);
        if (fd >= 0) close(fd);
        if (rc != 0) {
            fprintf(stderr, "bench_store: get %s: %s\n", j->l->items[i].key,
                    fd < 0 ? "cannot create the output file" : err.msg);
            atomic_store(&j->failed, 1);
        }
    }
}

static int cmd_fetch(store *st, int parallel, const char *out_dir) {
    int64_t t0 = ws_mono_ms();
    store_objlist l = {0};
    wserr err = {0};
    if (store_list(st, "", NULL, &l, &err) != 0) return fail("list", &err);
    fetch_job j = {.st = st, .l = &l, .out_dir = out_dir};
    pthread_t th[64];
    int started = 0;
    for (; started < parallel; started++)
        if (pthread_create(&th[started], NULL, fetch_main, &j) != 0) break;
    if (started == 0) fetch_main(&j);
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
    uint64_t bytes = 0;
    for (size_t i = 0; i < l.n; i++) bytes += l.items[i].size;
    double secs = (double)(ws_mono_ms() - t0) / 1000.0;
    int failed = atomic_load(&j.failed);
    if (!failed) printf("objects=%zu bytes=%" PRIu64 " secs=%.3f\n", l.n, bytes, secs);
    store_objlist_free(&l);
    return failed;
}

static int cmd_clear(store *st) {
    store_objlist l = {0};
    wserr err = {0};
    if (store_list(st, "", NULL, &l, &err) != 0) return fail("list", &err);
    const char **keys = calloc(l.n + 1, sizeof *keys);
    if (keys == NULL) return 1;
    for (size_t i = 0; i < l.n; i++) keys[i] = l.items[i].key;
    int rc = l.n ? store_delete_many(st, keys, l.n, &err) : 0;
    free(keys);
    store_objlist_free(&l);
    return rc ? fail("delete", &err) : 0;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: bench_store list|fetch|clear URL [--parallel N] [--out DIR]\n");
        return 2;
    }
    int parallel = 8;
    const char *out_dir = NULL;
    for (int i = 3; i < argc; i++) {
        if (strcmp(argv[i], "--parallel") == 0 && i + 1 < argc) {
            parallel = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--out") == 0 && i + 1 < argc) {
            out_dir = argv[++i];
        } else {
            fprintf(stderr, "bench_store: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (parallel < 1 || parallel > 64) {
        fprintf(stderr, "bench_store: --parallel must be 1..64\n");
        return 2;
    }
    store *st = NULL;
    wserr err = {0};
    if (store_open(argv[2], &st, &err) != 0) return fail("open", &err);
    int rc = 2;
    if (strcmp(argv[1], "list") == 0)
        rc = cmd_list(st);
    else if (strcmp(argv[1], "fetch") == 0)
        rc = cmd_fetch(st, parallel, out_dir);
    else if (strcmp(argv[1], "clear") == 0)
        rc = cmd_clear(st);
    else
        fprintf(stderr, "bench_store: unknown command %s\n", argv[1]);
    store_free(st);
    return rc;
}
