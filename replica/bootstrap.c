/*
** bootstrap.c -- getting a replica to a known state: the first copy
** (restored beside PATH, renamed into place), a resume after a restart
** (hash the view, match it with the recorded position), and a
** re-bootstrap in place (the newest state applied as one transaction).
*/
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/log.h"
#include "../common/util.h"
#include "../restore/restore.h"
#include "replica_impl.h"

/* ---- bootstrap, resume, re-bootstrap ---------------------------------------------- */
/* Called as a restore applies (in this thread): keeps status.json's
** heartbeat fresh through a long bootstrap, so `walship status` does not
** call the replica dead meanwhile. */
static void build_progress(void *ctx, uint64_t done, uint64_t total) {
    (void)done;
    (void)total;
    replica *r = ctx;
    if (r->locked) rep_status_write(r, 0);
}

/* Loads the catalog and plans the newest state. Damaged objects the
** catalog found count as corrupt. */
static int plan_latest(replica *r, catalog *cat, restore_plan *plan, wserr *err) {
    restore_target t = {.kind = RESTORE_LATEST};
    int rc = catalog_load(r->st, cat, err);
    rep_status_lock(r);
    r->status.list_requests += cat->nlists;
    r->status.get_requests += cat->ngets;
    r->status.corrupt_objects += cat->ndamaged;
    if (rc) r->status.store_errors++;
    rep_status_unlock(r);
    if (rc) return rc;
    return restore_plan_make(r->st, cat, &t, plan, err);
}

/* Restores the planned state into fd; what it refused as damaged counts,
** whether it succeeds or not. On success whose history this is is taken
** from the catalog. */
static int restore_planned(replica *r, const catalog *cat, const restore_plan *plan, int fd,
                           ws_rolling *roll, restore_result *res, wserr *err) {
    int rc = restore_build(r->st, plan, fd, r->o.parallel, roll, res, build_progress, r, err);
    rep_status_lock(r);
    r->status.bytes_downloaded += plan->bytes;
    r->status.get_requests += plan->nchain + 1;
    r->status.corrupt_objects += res->damaged;
    rep_status_unlock(r);
    if (rc == 0) rep_ident_from_catalog(r, cat, plan->gen, res->generation);
    return rc;
}

/* Restores the newest state into fd. On success the plan's generation and
** the catalog are returned for placing the cursor. */
static int restore_latest(replica *r, int fd, ws_rolling *roll, restore_result *res,
                          catalog *cat, const cat_gen **gen, wserr *err) {
    restore_plan plan = {0};
    memset(res, 0, sizeof *res);
    int rc = plan_latest(r, cat, &plan, err);
    if (rc == 0) rc = restore_planned(r, cat, &plan, fd, roll, res, err);
    *gen = plan.gen;
    restore_plan_free(&plan);
    return rc;
}

static int remove_if_exists(const char *path, wserr *err) {
    if (unlink(path) != 0 && errno != ENOENT)
        return wserr_errno(err, wserr_from_errno(errno), errno, "remove %s", path);
    return 0;
}

/* First copy: restore beside PATH, check it is in WAL mode, sync, record,
** rename into place, open. */
int rep_bootstrap_fresh(replica *r, wserr *err) {
    rep_set_phase_status(r, REPLICA_BOOTSTRAPPING);
    char tmp[PATH_MAX + 32];
    if (snprintf(tmp, sizeof tmp, "%s.walship-tmp-XXXXXX", r->path) >= (int)sizeof tmp)
        return wserr_set(err, WALSHIP_ERR_INVALID, "replica path too long");
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0)
        return wserr_errno(err, wserr_from_errno(errno), errno, "create a temporary file beside %s",
                           r->path);
    /* readable like any file this process creates (mkostemp makes 0600) */
    mode_t um = umask(0);
    umask(um);
    if (fchmod(fd, 0666 & ~um) != 0)
        WS_WARN("replica_chmod_failed", "path=%s errno=%d", tmp, errno);
    ws_rolling roll;
    ws_rolling_init(&roll, 0);
    restore_result res;
    catalog cat = {0};
    const cat_gen *g = NULL;
    int rc = restore_latest(r, fd, &roll, &res, &cat, &g, err);
    uint8_t hdr[100];
    if (rc == 0 && ws_pread_full(fd, hdr, sizeof hdr, 0) != (ssize_t)sizeof hdr)
        rc = wserr_errno(err, WALSHIP_ERR_IO, errno ? errno : EIO, "read back %s", tmp);
    if (rc == 0 && (hdr[18] != 2 || hdr[19] != 2))
        rc = wserr_set(err, WALSHIP_ERR_UNSUPPORTED,
                       "the primary's database is not in WAL mode at TXID %" PRIu64
                       " (header bytes 18-19 are %u,%u), so a replica cannot follow it",
                       res.txid, hdr[18], hdr[19]);
    if (rc == 0 && fsync(fd) != 0)
        rc = wserr_errno(err, wserr_from_errno(errno), errno, "sync %s", tmp);
    close(fd);
    if (rc == 0) {
        r->gen = res.generation;
        r->txid = res.txid;
        r->commit_ms = res.commit_ms;
        r->page_size = res.page_size;
        ws_rolling_free(&r->roll);
        r->roll = roll;
        ws_rolling_init(&roll, 0);
        r->have_known = 0;
        rc = rep_state_save(r, 1, NULL, err);
    }
    /* Stale -wal/-shm beside a missing database would be replayed into it. */
    char side[PATH_MAX + 8];
    snprintf(side, sizeof side, "%s-wal", r->path);
    if (rc == 0) rc = remove_if_exists(side, err);
    snprintf(side, sizeof side, "%s-shm", r->path);
    if (rc == 0) rc = remove_if_exists(side, err);
    if (rc == 0 && rename(tmp, r->path) != 0)
        rc = wserr_errno(err, wserr_from_errno(errno), errno, "rename into %s", r->path);
    if (rc == 0) rc = ws_fsync_dir_of(r->path, err);
    if (rc) {
        unlink(tmp);
        ws_rolling_free(&roll);
        catalog_free(&cat);
        return rc;
    }
    rep_cursor_from_catalog(r, g);
    catalog_free(&cat);
    /* From here on the file is in place: never bootstrap over it again
    ** (readers may have it open); a failure below is retried as a resume. */
    r->phase = PHASE_RESUME;
    if ((rc = rep_conn_open(r, err))) return rc;
    walidx_hdr h;
    uint32_t nb;
    if (walapp_peek(r->app, &h, &nb) == 0) {
        r->known = h;
        r->have_known = 1;
    }
    /* page 1 of the image, for transactions that carry no page */
    if (r->dbf->pMethods->xRead(r->dbf, r->page1, (int)r->page_size, 0) != SQLITE_OK)
        memset(r->page1, 0, r->page_size);
    if ((rc = rep_state_save(r, 1, NULL, err))) return rc;
    rep_status_lock(r);
    r->status.bootstraps++;
    r->status.generation = r->gen;
    r->status.applied_txid = r->txid;
    r->status.applied_commit_ms = r->commit_ms;
    rep_status_unlock(r);
    rep_status_lock(r);
    r->status.state = REPLICA_FOLLOWING;
    r->status.primary_generation = r->gen;
    r->status.primary_txid = r->txid;
    rep_status_unlock(r);
    WS_INFO("replica_bootstrapped", "replica=%s generation=%016" PRIx64 " txid=%" PRIu64
            " pages=%u", r->path, r->gen, r->txid, r->roll.db_pages);
    r->phase = PHASE_FOLLOW;
    return 0;
}

/* Takes the write lock, waiting up to ms for it (other connections hold it
** only briefly unless they write or run RESTART/TRUNCATE checkpoints). */
static int lock_write_wait(replica *r, walapp_info *info, int check_foreign, int64_t ms,
                           wserr *err) {
    int64_t until = ws_mono_ms() + ms;
    int rc;
    while ((rc = rep_lock_write(r, info, check_foreign, err)) == WALSHIP_ERR_BUSY &&
           ws_mono_ms() < until)
        ws_sleep_ms(2);
    return rc;
}

/* After a restart of this process: hash what readers see and find out
** which primary state it is. */
int rep_resume(replica *r, wserr *err) {
    rep_set_phase_status(r, REPLICA_STARTING);
    int rc;
    if (r->db == NULL && (rc = rep_conn_open(r, err))) return rc;
    walapp_info info;
    if ((rc = lock_write_wait(r, &info, 0, 10000, err))) {
        if (rc == WALSHIP_ERR_BUSY)
            wserr_prefix(err, "resume (is someone writing to the replica?)");
        return rc;
    }
    const rep_state *s = &r->saved;
    int same_wal = walidx_salt1(&info.hdr) == s->salt1 && walidx_salt2(&info.hdr) == s->salt2 &&
                   info.hdr.mx_frame >= s->mx_frame;
    uint32_t commits = 0;
    ws_rolling live;
    ws_rolling_init(&live, r->page_size);
    rc = walapp_view_hashes(r->app, &live, r->page1, same_wal ? s->mx_frame : 0,
                            same_wal ? &commits : NULL, err);
    walapp_end(r->app);
    if (rc) {
        ws_rolling_free(&live);
        return rc;
    }
    r->known = info.hdr;
    r->have_known = 1;
    ws_rolling_free(&r->roll);
    r->roll = live;
    const char *how;
    if (live.chk == s->chk) {
        r->gen = s->generation;
        r->txid = s->txid;
        r->commit_ms = s->commit_ms;
        how = "recorded";
    } else if ((s->flags & STATE_F_INTENT) && live.chk == s->intent_chk) {
        r->gen = s->intent_generation;
        r->txid = s->intent_txid;
        r->commit_ms = s->intent_commit_ms;
        how = "switch";
    } else if (same_wal && commits > 0) {
        /* Published after the last record: one commit frame per
        ** transaction. The next segment's checksums confirm it. */
        r->gen = s->generation;
        r->txid = s->txid + commits;
        r->commit_ms = s->commit_ms;
        how = "wal";
    } else {
        r->gen = s->generation;
        r->txid = s->txid;
        r->commit_ms = s->commit_ms;
        char msg[300];
        snprintf(msg, sizeof msg,
                 "the replica %.120s no longer holds the state recorded for it (TXID %" PRIu64
                 "): it was written to or damaged while no replica ran; replacing its content",
                 r->path, s->txid);
        rep_report(r, WS_LOG_WARN, "replica_resume_mismatch", msg);
        r->phase = PHASE_REBOOTSTRAP;
        snprintf(r->rebootstrap_why, sizeof r->rebootstrap_why, "content mismatch at resume");
        return 0;
    }
    WS_INFO("replica_resumed", "replica=%s generation=%016" PRIx64 " txid=%" PRIu64 " by=%s",
            r->path, r->gen, r->txid, how);
    if ((rc = rep_state_save(r, 1, NULL, err))) return rc;
    rep_status_lock(r);
    r->status.generation = r->gen;
    r->status.applied_txid = r->txid;
    r->status.applied_commit_ms = r->commit_ms;
    r->status.wal_frames = r->known.mx_frame;
    rep_status_unlock(r);
    r->cursor[0] = '\0'; /* placed by a full listing of the generation */
    r->phase = PHASE_FOLLOW;
    rep_status_lock(r);
    r->status.state = REPLICA_FOLLOWING;
    r->status.primary_generation = r->gen;
    r->status.primary_txid = r->txid;
    rep_status_unlock(r);
    return 0;
}

/* Replaces the replica's content with the newest state in the store, as
** one transaction of every page that differs. */
int rep_rebootstrap(replica *r, wserr *err) {
    if (ws_mono_ms() < r->next_rebootstrap_ms) return 0;
    rep_set_phase_status(r, REPLICA_REBOOTSTRAPPING);
    char tmp[PATH_MAX + 32];
    snprintf(tmp, sizeof tmp, "%s/image.tmp", r->dir);
    int fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return wserr_errno(err, wserr_from_errno(errno), errno, "create %s", tmp);
    ws_rolling target, view;
    ws_rolling_init(&target, 0);
    ws_rolling_init(&view, r->page_size);
    restore_result res;
    catalog cat = {0};
    const cat_gen *g = NULL;
    uint8_t *page = NULL;
    int locked = 0;
    restore_plan plan = {0};
    memset(&res, 0, sizeof res);
    int rc = plan_latest(r, &cat, &plan, err);
    if (rc == 0 && r->switch_gen > r->gen && plan.gen->id == r->gen) {
        /* The newer generation that asked for the switch is not this
        ** history's, or holds nothing usable: stay, and stop looking at it. */
        char msg[300];
        snprintf(msg, sizeof msg,
                 "generation %016" PRIx64 " is ignored: it is not this destination's history, "
                 "or none of its snapshots can be used (see the warnings)",
                 r->switch_gen);
        rep_report(r, WS_LOG_WARN, "replica_generation_ignored", msg);
        rep_gen_ignore(r, r->switch_gen);
        rep_ident_from_catalog(r, &cat, plan.gen, r->gen);
        r->switch_gen = 0;
        r->phase = PHASE_FOLLOW;
        restore_plan_free(&plan);
        goto out;
    }
    if (rc == 0) rc = restore_planned(r, &cat, &plan, fd, &target, &res, err);
    g = plan.gen;
    restore_plan_free(&plan);
    if (rc) goto out;
    if (res.page_size != r->page_size) {
        rc = wserr_set(err, WALSHIP_ERR_UNSUPPORTED,
                       "the primary's page size changed from %u to %u; a replica cannot follow "
                       "that in place: stop it, remove %s, and start it again",
                       r->page_size, res.page_size, r->path);
        goto out;
    }
    page = malloc(r->page_size);
    if (page == NULL) {
        rc = wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
        goto out;
    }
    walapp_info info;
    if ((rc = lock_write_wait(r, &info, 0, 5000, err))) goto out;
    locked = 1;
    const ws_rolling *live = &r->roll;
    if (r->view_untrusted || !r->have_known || !rep_hdr_same(&r->known, &info.hdr)) {
        if (r->view_untrusted || !(r->have_known && rep_hdr_truncated(&r->known, &info.hdr))) {
            /* Someone else changed it: hash what readers see now. */
            if ((rc = walapp_view_hashes(r->app, &view, NULL, 0, NULL, err))) goto out;
            live = &view;
        }
    }
    /* Record the intent first: a crash after the publish resumes there. */
    rep_state intent = {.generation = res.generation, .txid = res.txid, .chk = res.chk,
                        .commit_ms = res.commit_ms};
    if ((rc = rep_state_save(r, 1, &intent, err))) goto out;
    uint32_t nframes = 0;
    for (uint32_t p = 1; p <= target.db_pages; p++) {
        if (p <= live->db_pages && ws_rolling_get(live, p) == ws_rolling_get(&target, p)) continue;
        if (ws_pread_full(fd, page, r->page_size, (off_t)(p - 1) * r->page_size) < 0) {
            rc = wserr_errno(err, WALSHIP_ERR_IO, errno, "read %s", tmp);
            goto out;
        }
        if ((rc = walapp_page(r->app, p, page, err))) goto out;
        nframes++;
    }
    if (nframes > 0 || target.db_pages != live->db_pages) {
        if (nframes == 0) {
            if (ws_pread_full(fd, page, r->page_size, 0) < 0) {
                rc = wserr_errno(err, WALSHIP_ERR_IO, errno, "read %s", tmp);
                goto out;
            }
            if ((rc = walapp_page(r->app, 1, page, err))) goto out;
            nframes = 1;
        }
        if ((rc = walapp_commit(r->app, target.db_pages, err))) goto out;
    }
    /* The new position, kept only if the publish succeeds. */
    uint64_t old_gen = r->gen, old_txid = r->txid;
    int64_t old_commit_ms = r->commit_ms;
    ws_rolling old_roll = r->roll;
    r->gen = res.generation;
    r->txid = res.txid;
    r->commit_ms = res.commit_ms;
    r->roll = target;
    if (walapp_pending_commits(r->app) > 0 && (rc = rep_publish(r, err)) != 0) {
        r->gen = old_gen;
        r->txid = old_txid;
        r->commit_ms = old_commit_ms;
        r->roll = old_roll;
        r->phase = PHASE_RESUME; /* what readers see is now uncertain: hash it */
        goto out;
    }
    if (walapp_pending_commits(r->app) == 0 && nframes == 0) {
        r->known = info.hdr;
        r->have_known = 1;
    }
    ws_rolling_free(&old_roll);
    ws_rolling_init(&target, 0);
    if (ws_pread_full(fd, r->page1, r->page_size, 0) < 0) memset(r->page1, 0, r->page_size);
    walapp_end(r->app);
    locked = 0;
    if ((rc = rep_state_save(r, 1, NULL, err))) goto out;
    rep_cursor_from_catalog(r, g);
    rep_cands_free(r);
    rep_status_lock(r);
    r->status.rebootstraps++;
    r->status.txs_applied++;
    r->status.pages_applied += nframes;
    rep_status_unlock(r);
    rep_rate_add(r, 1, nframes);
    WS_INFO("replica_rebootstrapped",
            "replica=%s why=\"%s\" generation=%016" PRIx64 " txid=%" PRIu64 " frames=%u",
            r->path, r->rebootstrap_why, r->gen, r->txid, nframes);
    r->phase = PHASE_FOLLOW;
    r->view_untrusted = 0;
    r->switch_gen = 0;
    r->rebootstrap_backoff_ms = 0;
out:
    if (locked) walapp_end(r->app);
    if (rc) {
        /* Back off: a store that keeps failing, or a writer that keeps
        ** writing, should not make the replica download in a loop. */
        r->rebootstrap_backoff_ms = r->rebootstrap_backoff_ms ? r->rebootstrap_backoff_ms * 2 : 1000;
        if (r->rebootstrap_backoff_ms > 60000) r->rebootstrap_backoff_ms = 60000;
        r->next_rebootstrap_ms = ws_mono_ms() + r->rebootstrap_backoff_ms;
    }
    free(page);
    close(fd);
    unlink(tmp);
    ws_rolling_free(&target);
    ws_rolling_free(&view);
    catalog_free(&cat);
    return rc;
}
