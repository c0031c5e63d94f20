/*
** test_restore_wback.c -- restore's write-back page cache (restore/wback.c)
** against a model: random writes, rewrites, truncations and flushes, with
** page sizes from 512 to 65536 and more pages than the cache holds; after
** every flush the file must equal the model byte for byte. Each page size
** spans 1.5 times the pages the cache holds, so it also fills up.
**
** ctest-labels: unit
** ctest-timeout: 120
*/
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "restore/wback.h"


static void check_file(int fd, const uint8_t *model, uint32_t pages, uint32_t pgsz) {
    struct stat st;
    CHECK_EQ(fstat(fd, &st), 0);
    CHECK_EQ((long long)st.st_size, (long long)pages * pgsz);
    uint8_t *got = malloc((size_t)pages * pgsz + 1);
    CHECK(got != NULL);
    CHECK_EQ((long long)pread(fd, got, (size_t)pages * pgsz, 0), (long long)pages * pgsz);
    for (uint32_t p = 0; p < pages; p++)
        if (memcmp(got + (size_t)p * pgsz, model + (size_t)p * pgsz, pgsz) != 0)
            ws_test_fail(__FILE__, __LINE__, "page %u differs from the model (page size %u)",
                         p + 1, pgsz);
    free(got);
}

/* One round: the owner's rules of restore.c (the size is the highest page
** written, cut with drop_above + ftruncate, flushed before it is read). */
static void round_for(uint32_t pgsz, int ops) {
    char path[4096];
    snprintf(path, sizeof path, "%s/wback-%u.db", ws_test_tmpdir(), pgsz);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    CHECK(fd >= 0);
    const uint32_t max_pages = (uint32_t)(WBACK_BYTES / pgsz) * 3 / 2;
    uint8_t *model = calloc(max_pages, pgsz);
    uint8_t *page = malloc(pgsz);
    CHECK(model != NULL && page != NULL);
    wback *w = wback_new(fd, pgsz);
    CHECK(w != NULL);
    wserr err = {0};
    uint32_t pages = 0, flushes = 0;
    for (int op = 0; op < ops; op++) {
        uint64_t r = ws_test_rand_below(1000);
        if (r < 900) {
            /* writes: mostly a few hot pages, some spread, some runs */
            uint32_t p = r < 500   ? 1 + (uint32_t)ws_test_rand_below(8)
                         : r < 800 ? 1 + (uint32_t)ws_test_rand_below(max_pages)
                                   : 1 + (uint32_t)(op % max_pages);
            ws_test_rand_bytes(page, 16);
            memset(page + 16, (int)(op & 0xff), pgsz - 16);
            CHECK_EQ(wback_put(w, p, page, &err), 0);
            memcpy(model + (size_t)(p - 1) * pgsz, page, pgsz);
            if (p > pages) pages = p;
        } else if (r < 990) {
            /* a truncation */
            uint32_t to = pages ? (uint32_t)ws_test_rand_below(pages + 1) : 0;
            wback_drop_above(w, to);
            CHECK_EQ(ftruncate(fd, (off_t)to * pgsz), 0);
            memset(model + (size_t)to * pgsz, 0, (size_t)(pages - to) * pgsz);
            pages = to;
        } else if (r < 992) {
            CHECK_EQ(wback_flush(w, &err), 0);
            flushes++;
            check_file(fd, model, pages, pgsz);
        }
        /* else: nothing (so the cache also fills up between flushes) */
    }
    CHECK_EQ(wback_flush(w, &err), 0);
    check_file(fd, model, pages, pgsz);
    /* clear forgets: what it held never reaches the file */
    ws_test_rand_bytes(page, pgsz);
    CHECK_EQ(wback_put(w, 1, page, &err), 0);
    wback_clear(w);
    CHECK_EQ(wback_flush(w, &err), 0);
    check_file(fd, model, pages, pgsz);
    fprintf(stderr, "page size %u: %d operations, %u flushes, %u pages at the end\n", pgsz, ops,
            flushes, pages);
    wback_free(w);
    free(model);
    free(page);
    close(fd);
}

int main(void) {
    ws_test_seed(20261204);
    static const uint32_t sizes[] = {512, 1024, 4096, 65536};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++)
        round_for(sizes[i], 40000);
    return 0;
}
