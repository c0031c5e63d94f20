/*
** output.c -- `walship restore` as a command: the output path.
**
** ws_restore() plans and builds a restore (restore.c) into a temporary file
** beside the output, syncs it and renames it into place, so the output path
** only ever holds a complete, verified database. An existing output is
** refused unless `force` is set.
*/
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/log.h"
#include "../common/util.h"
#include "restore.h"

typedef struct bar {
    int64_t last_ms;
} bar;

static void draw_bar(void *ctx, uint64_t done, uint64_t total) {
    bar *pb = ctx;
    int64_t now = ws_mono_ms();
    if (done < total && now - pb->last_ms < 100) return;
    pb->last_ms = now;
    int pct = total ? (int)(done * 100 / total) : 100;
    int fill = pct / 4;
    char line[128];
    int n = snprintf(line, sizeof line, "\rrestoring [%.*s%*s] %3d%% %.1f/%.1f MiB", fill,
                     "#########################", 25 - fill, "", pct, (double)done / 1048576.0,
                     (double)total / 1048576.0);
    if (n > 0) {
        ssize_t w = write(STDERR_FILENO, line, (size_t)n);
        (void)w;
    }
}

int ws_restore(const restore_opts *o, restore_result *res, wserr *err) {
    struct stat st;
    if (!o->force && lstat(o->out_path, &st) == 0)
        return wserr_set(err, WALSHIP_ERR_EXISTS,
                         "%s already exists; refusing to overwrite it (use --force to replace "
                         "it)",
                         o->out_path);
    store *s = NULL;
    catalog cat = {0};
    restore_plan plan = {0};
    ws_rolling r;
    ws_rolling_init(&r, 0);
    char tmp[PATH_MAX];
    int fd = -1;
    int rc = store_open(o->url, &s, err);
    if (rc) goto out;
    if ((rc = catalog_load(s, &cat, err))) goto out;
    if ((rc = restore_plan_make(s, &cat, &o->target, &plan, err))) goto out;
    if (snprintf(tmp, sizeof tmp, "%s.walship-tmp-XXXXXX", o->out_path) >= (int)sizeof tmp) {
        rc = wserr_set(err, WALSHIP_ERR_INVALID, "output path too long");
        goto out;
    }
    fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        rc = wserr_errno(err, wserr_from_errno(errno), errno, "create a temporary file beside %s",
                         o->out_path);
        goto out;
    }
    bar pb = {0};
    int show = o->progress && isatty(STDERR_FILENO);
    rc = restore_build(s, &plan, fd, o->parallel, &r, res, show ? draw_bar : NULL, &pb, err);
    if (show) {
        ssize_t w = write(STDERR_FILENO, "\n", 1);
        (void)w;
    }
    if (rc) goto fail_tmp;
    if (fsync(fd) != 0) {
        rc = wserr_errno(err, wserr_from_errno(errno), errno, "sync restored database");
        goto fail_tmp;
    }
    close(fd);
    fd = -1;
    if (o->force) {
        /* A stale WAL beside the new file would be replayed into it. */
        static const char *const sfx[] = {"-wal", "-shm", "-journal"};
        for (int i = 0; i < 3; i++) {
            char side[PATH_MAX];
            snprintf(side, sizeof side, "%s%s", o->out_path, sfx[i]);
            if (unlink(side) != 0 && errno != ENOENT) {
                rc = wserr_errno(err, wserr_from_errno(errno), errno, "remove %s", side);
                goto fail_tmp;
            }
        }
    }
    if (rename(tmp, o->out_path) != 0) {
        rc = wserr_errno(err, wserr_from_errno(errno), errno, "rename into %s", o->out_path);
        goto fail_tmp;
    }
    rc = ws_fsync_dir_of(o->out_path, err);
    goto out;
fail_tmp:
    if (fd >= 0) close(fd);
    fd = -1;
    unlink(tmp);
out:
    if (fd >= 0) close(fd);
    ws_rolling_free(&r);
    restore_plan_free(&plan);
    catalog_free(&cat);
    store_free(s);
    return rc;
}
