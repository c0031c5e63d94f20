/*
** checkpoint.c -- passive checkpoints through the replica's connection and
** WAL restarts under the write lock, only when no reader needs the old
** frames (a long reader makes the WAL grow; status says for how long).
*/
#include <sqlite3.h>

#include "../common/util.h"
#include "replica_impl.h"

#define CKPT_WAIT_MS 50
#define RESTART_WAIT_MS 30

void rep_checkpoint_phase(replica *r, int idle) {
    walidx_hdr h;
    uint32_t nb = 0;
    if (walapp_peek(r->app, &h, &nb) != 0) return;
    rep_status_lock(r);
    r->status.wal_frames = h.mx_frame;
    r->status.wal_backfilled = nb;
    rep_status_unlock(r);
    int64_t now = ws_mono_ms();
    if (h.mx_frame == 0) {
        r->pinned_since_ms = 0;
        return;
    }
    int big = h.mx_frame >= r->o.ckpt_frames;
    int huge = h.mx_frame >= 4 * r->o.ckpt_frames;
    int stale = idle && nb < h.mx_frame && now - r->last_publish_ms > 2000;
    if (!((big && (idle || huge)) || stale)) return;
    if (now < r->next_ckpt_try_ms && !stale) return;
    /* PASSIVE, retried briefly while readers that started before the last
    ** publish finish; never waits for a long reader. */
    int64_t until = now + (big ? CKPT_WAIT_MS : 0);
    for (;;) {
        int nlog = 0, nckpt = 0;
        r->sql->wal_checkpoint_v2(r->db, "main", SQLITE_CHECKPOINT_PASSIVE, &nlog, &nckpt);
        if (walapp_peek(r->app, &h, &nb) != 0) return;
        if (nb >= h.mx_frame || ws_mono_ms() >= until) break;
        ws_sleep_ms(1);
    }
    rep_status_lock(r);
    r->status.checkpoints++;
    r->status.wal_backfilled = nb;
    rep_status_unlock(r);
    if (!big) return;
    int restarted = 0;
    if (nb == h.mx_frame) {
        walapp_info info;
        wserr err = {0};
        if (rep_lock_write(r, &info, 1, &err) == 0) {
            int64_t end = ws_mono_ms() + RESTART_WAIT_MS;
            int rs;
            while ((rs = walapp_try_restart(r->app, &err)) == 0 && ws_mono_ms() < end)
                ws_sleep_ms(1);
            if (rs == 1) {
                restarted = 1;
                r->known = *walapp_hdr(r->app);
                /* the header walapp_hdr reports carries the new WAL's salts
                ** and mxFrame 0; keep exactly what is in shared memory */
                walidx_hdr now_hdr;
                if (walapp_peek(r->app, &now_hdr, NULL) == 0) r->known = now_hdr;
            }
            walapp_end(r->app);
            if (restarted) {
                r->just_restarted = 1;
                rep_state_save(r, 1, NULL, &err);
                rep_status_lock(r);
                r->status.wal_restarts++;
                r->status.wal_frames = 0;
                rep_status_unlock(r);
            }
        }
    }
    if (restarted) {
        r->pinned_since_ms = 0;
        r->next_ckpt_try_ms = 0;
    } else {
        /* A reader holds old frames: try again later, less and less often
        ** while it stays (at most every 2 s). */
        if (r->pinned_since_ms == 0) r->pinned_since_ms = now;
        int64_t pinned = ws_mono_ms() - r->pinned_since_ms;
        r->next_ckpt_try_ms = ws_mono_ms() + (pinned < 250 ? 250 : pinned > 2000 ? 2000 : pinned);
    }
    rep_status_lock(r);
    r->status.wal_pinned_ms = r->pinned_since_ms ? ws_mono_ms() - r->pinned_since_ms : 0;
    rep_status_unlock(r);
}
