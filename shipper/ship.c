/*
** ship.c -- one database's shipping work, as bounded steps.
**
** A step (run by a pool worker, see registry.c) does, in order:
**   1. election: only the process holding the election lock (byte 1 of
**      <spool>/ctl) ships;
**   2. start-up (once): load the durable state, redo queued segments into
**      the page hashes, check continuity, or start a new generation;
**   3. consumption: read spool records from the resume position and the
**      committed WAL frames they point at, split frames into transactions
**      at commit frames, number them, update the rolling checksum, and
**      append them to the open segment;
**   4. snapshot work (snapjob.c), when one is running;
**   5. closing the open segment once the ship interval has passed (or a
**      flush is asked for): the file is synced and moved into <spool>/queue,
**      then the state file records the new position;
**   6. uploads: queued objects go to the store strictly in order;
**   7. retention, now and then; status for `walship status`.
**
** Consumption rules (ARCHITECTURE.md sections 2-3):
**   WATERMARK(S, mx)  frames up to mx of WAL S are committed; they are read
**                     from the WAL file and each is checked (salts, checksum
**                     chain). A frame that fails the check means the WAL was
**                     restarted underneath: the copy the VFS put in the spool
**                     before the restart will follow, so reading stops.
**   FRAMES(S, ...)    that copy: frames are taken from the record instead.
**   WAL_END(S, mx)    WAL S is finished; every frame up to mx must have been
**                     consumed by now, or history has a gap.
**   WAL_BEGIN(hdr)    a new WAL starts; only valid after WAL_END.
** Anything else (a WAL the spool never announced, a gap, a page size
** change) breaks continuity: the shipper starts a new generation with a
** fresh snapshot instead of shipping a history that does not follow.
*/
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/log.h"
#include "../common/sysio.h"
#include "../common/util.h"
#include "../format/owner.h"
#include "shipper_impl.h"

enum { PH_UNELECTED = 0, PH_INIT = 1, PH_RUN = 2 };

#define ELECT_RETRY_MS 1000
#define IDLE_POLL_MS 100
#define IDLE_POLL_MAX_MS 1000
#define IDLE_TICK_MS 250
#define SEGMENT_MAX_BYTES ((uint64_t)32 << 20)
#define STEP_MAX_RECORDS 4096
#define STEP_MAX_MS 200
#define RETENTION_EVERY_MS (10 * 60 * 1000)
#define BACKOFF_MAX_MS 30000
#define SYNC_POINT_MS 100
#define SYNC_ASKED_MS 5
#define READ_BATCH_FRAMES 256 /* WAL frames read at once while watermarks pile up */
#define CLAIM_EVERY_MS 60000

void *shipper_base_vfs(void);

/* ---- small helpers --------------------------------------------------------- */
static int spool_file(shipper *sh, const char *name, char *out, size_t n) {
    return snprintf(out, n, "%s/%s", spool_path(sh->sp), name) >= (int)n ? -1 : 0;
}

static int queue_dir(shipper *sh, char *out, size_t n) { return spool_file(sh, "queue", out, n); }

uint64_t ship_new_generation_id(void) {
    /* Microseconds since the epoch: sorts by creation time. */
    static _Atomic uint64_t last;
    uint64_t now = (uint64_t)ws_now_us(), prev = atomic_load(&last);
    for (;;) {
        uint64_t next = now > prev ? now : prev + 1;
        if (atomic_compare_exchange_weak(&last, &prev, next)) return next;
    }
}

void ship_state_init(ship_state *ss) {
    memset(ss, 0, sizeof *ss);
    ss->wal_fd = -1;
    ss->seg_fd = -1;
    ss->hs.fd = -1;
}

/* Drops the open segment from memory. The file stays: what it holds up to
** its last durability point is recovered by recover_segment_tmp(). */
static void drop_open_segment(shipper *sh) {
    ship_state *ss = &sh->ss;
    seg_writer_free(ss->segw);
    ss->segw = NULL;
    if (ss->seg_fd >= 0) close(ss->seg_fd);
    ss->seg_fd = -1;
}

static int recover_segment_tmp(shipper *sh, int push, wserr *err);
static void close_base_file(sqlite3_file *f);

/* Drops every in-memory thing that is not durable; the next step re-reads
** the state from disk. */
static void reset_volatile(shipper *sh) {
    ship_state *ss = &sh->ss;
    drop_open_segment(sh); /* start-up recovers its durable part */
    snapjob_free(ss->snap);
    ss->snap = NULL;
    close_base_file(ss->dbf);
    ss->dbf = NULL;
    shipstate_close(&ss->hs);
    ss->hs.fd = -1;
    if (ss->wal_fd >= 0) close(ss->wal_fd);
    ss->wal_fd = -1;
    free(ss->queue);
    ss->queue = NULL;
    ss->nqueue = ss->queue_cap = 0;
    ss->queue_bytes = 0;
    ss->tx_open = 0;
    ss->cur_known = 0;
    ss->nwm = 0;
    ss->pending_mx = 0;
}

void ship_state_free(ship_state *ss) {
    seg_writer_free(ss->segw);
    if (ss->seg_fd >= 0) close(ss->seg_fd);
    snapjob_free(ss->snap);
    close_base_file(ss->dbf);
    shipstate_close(&ss->hs);
    if (ss->wal_fd >= 0) close(ss->wal_fd);
    store_free(ss->st);
    free(ss->queue);
    free(ss->framebuf);
    free(ss->wm);
    wsbuf_free(&ss->recbuf);
    memset(ss, 0, sizeof *ss);
}

static void set_error(shipper *sh, const char *msg) {
    pthread_mutex_lock(&sh->mu);
    ws_strlcpy(sh->vfs_error, msg, sizeof sh->vfs_error);
    pthread_mutex_unlock(&sh->mu);
}

static void clear_error(shipper *sh) {
    pthread_mutex_lock(&sh->mu);
    sh->vfs_error[0] = '\0';
    pthread_mutex_unlock(&sh->mu);
}

/* ---- base VFS access to the database file ----------------------------------- */
/* A filename laid out as SQLite's xOpen expects (4 zero bytes before it, an
** empty parameter list after it), owned by the caller's buffer. */
static char *sqlite_style_name(const char *path, char *buf, size_t n) {
    size_t len = strlen(path);
    if (len + 16 > n) return NULL;
    memset(buf, 0, n);
    memcpy(buf + 4, path, len);
    return buf + 4;
}

struct base_file {
    char name[PATH_MAX + 32];
    /* the sqlite3_file follows, szOsFile bytes */
};

static int open_base_file(shipper *sh, sqlite3_file **out, wserr *err) {
    *out = NULL;
    sqlite3_vfs *vfs = shipper_base_vfs();
    if (vfs == NULL) return wserr_set(err, WALSHIP_ERR_STATE, "no base VFS registered");
    struct base_file *bf = calloc(1, sizeof *bf + (size_t)vfs->szOsFile);
    if (bf == NULL) return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
    char *name = sqlite_style_name(sh->db_path, bf->name, sizeof bf->name);
    sqlite3_file *f = (sqlite3_file *)(bf + 1);
    int outflags = 0;
    if (name == NULL ||
        vfs->xOpen(vfs, name, f, SQLITE_OPEN_READWRITE | SQLITE_OPEN_MAIN_DB, &outflags) !=
            SQLITE_OK) {
        free(bf);
        return wserr_set(err, WALSHIP_ERR_IO, "cannot open %s to read it", sh->db_path);
    }
    *out = f;
    return 0;
}

static void close_base_file(sqlite3_file *f) {
    if (f == NULL) return;
    if (f->pMethods) f->pMethods->xClose(f);
    free((struct base_file *)f - 1);
}

int ship_base_file(shipper *sh, sqlite3_file **out, wserr *err) {
    ship_state *ss = &sh->ss;
    if (ss->dbf && ss->snap == NULL) {
        int moved = 0;
        if (ss->dbf->pMethods->xFileControl(ss->dbf, SQLITE_FCNTL_HAS_MOVED, &moved) != SQLITE_OK ||
            moved) {
            close_base_file(ss->dbf);
            ss->dbf = NULL;
        }
    }
    if (ss->dbf == NULL) {
        int rc = open_base_file(sh, &ss->dbf, err);
        if (rc) return rc;
    }
    *out = ss->dbf;
    return 0;
}

int ship_read_shm_header(shipper *sh, walidx_hdr *out) {
    char shm[PATH_MAX];
    struct stat st;
    if (snprintf(shm, sizeof shm, "%s-shm", sh->db_path) >= (int)sizeof shm) return -1;
    if (stat(shm, &st) != 0 || st.st_size < WALIDX_REGION_SIZE) return -1;
    sqlite3_file *f = NULL;
    if (ship_base_file(sh, &f, NULL) != 0) return -1;
    int rc = -1;
    if (f->pMethods->iVersion >= 2 && f->pMethods->xShmMap) {
        void volatile *p = NULL;
        if (f->pMethods->xShmMap(f, 0, WALIDX_REGION_SIZE, 0, &p) == SQLITE_OK && p) {
            for (int i = 0; i < 100 && rc != 0; i++) rc = walidx_hdr_read(p, out);
        }
        f->pMethods->xShmUnmap(f, 0);
    }
    return rc;
}

/* ---- the transaction splitter ---------------------------------------------- */
static int64_t commit_time_for(ship_state *ss, uint32_t frame) {
    int64_t t = 0;
    int i = 0;
    while (i < ss->nwm && ss->wm[i].mx < frame) i++;
    if (i < ss->nwm) t = ss->wm[i].time_ms;
    /* A commit no watermark covers (seen only through the shared memory,
    ** or recovered after a crash) is timed when it is consumed: never
    ** earlier than it happened, so a restore "as of T" never shows it
    ** before it existed. */
    if (t == 0) t = ws_now_ms();
    if (t < ss->last_time_ms) t = ss->last_time_ms;
    /* Forget watermarks whose frames are all consumed. */
    int k = 0;
    while (k < ss->nwm && ss->wm[k].mx <= frame) k++;
    if (k) {
        memmove(ss->wm, ss->wm + k, (size_t)(ss->nwm - k) * sizeof ss->wm[0]);
        ss->nwm -= k;
    }
    ss->last_time_ms = t;
    return t;
}

static void note_watermark_time(ship_state *ss, uint32_t mx, int64_t t) {
    if (ss->nwm > 0 && ss->wm[ss->nwm - 1].mx >= mx) return;
    if (ss->nwm == ss->wm_cap) {
        int cap = ss->wm_cap ? ss->wm_cap * 2 : 64;
        wm_time *w = cap <= WM_TIMES_MAX ? realloc(ss->wm, (size_t)cap * sizeof *w) : NULL;
        if (w == NULL) {
            /* Out of room: the newest commit takes this later time, which
            ** is never earlier than it happened. */
            ss->wm[ss->nwm - 1].mx = mx;
            return;
        }
        ss->wm = w;
        ss->wm_cap = cap;
    }
    ss->wm[ss->nwm].mx = mx;
    ss->wm[ss->nwm].time_ms = t;
    ss->nwm++;
}

static int folding(const ship_state *ss) { return ss->snap && snapjob_is_genstart(ss->snap); }

static int open_segment(shipper *sh, wserr *err) {
    ship_state *ss = &sh->ss;
    char path[PATH_MAX];
    if (spool_file(sh, "seg.tmp", path, sizeof path))
        return wserr_set(err, WALSHIP_ERR_INVALID, "spool path too long");
    ss->seg_fd = ws_sys_open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (ss->seg_fd < 0) return wserr_errno(err, wserr_from_errno(errno), errno, "create %s", path);
    int rc = seg_writer_open(ss->seg_fd, ss->page_size, sh->db_id, ss->gen, ss->next_txid, ss->hs.r.chk,
                             ss->hs.r.db_pages, sh->cfg.zstd_level, &ss->segw, err);
    if (rc) {
        close(ss->seg_fd);
        ss->seg_fd = -1;
        return rc;
    }
    ss->seg_first_txid = ss->next_txid;
    ss->seg_opened_mono = ws_mono_ms();
    ss->seg_synced_mono = ss->seg_opened_mono;
    ss->seg_synced_ntx = 0;
    ss->seg_first_commit_ms = 0;
    return 0;
}

/* Consumes one validated frame (24-byte header + page) as frame number
** `index` of the current WAL. */
static int consume_frame(shipper *sh, const uint8_t *frame, uint32_t index, wserr *err) {
    ship_state *ss = &sh->ss;
    wal_frame_hdr fh;
    wal_frame_hdr_parse(frame, &fh);
    const uint8_t *page = frame + WAL_FRAME_HDR_SIZE;
    int fold = folding(ss);
    int rc;
    if (!ss->tx_open) {
        ss->tx_open = 1;
        ss->tx_npages = 0;
        if (!fold) {
            if (ss->segw == NULL && (rc = open_segment(sh, err))) return rc;
            ss->tx_txid = ss->next_txid;
            if ((rc = seg_writer_begin_tx(ss->segw, ss->tx_txid, err))) return rc;
            ws_rolling_begin(&ss->hs.r);
        }
    }
    if (!fold) {
        if (ws_rolling_page(&ss->hs.r, fh.pgno, page))
            return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory for page hashes");
        if ((rc = seg_writer_page(ss->segw, fh.pgno, page, err))) return rc;
    }
    if (ss->snap && (rc = snapjob_feed(ss->snap, ss->cur.salt1, ss->cur.salt2, fh.pgno, page,
                                       fh.commit_size)))
        return wserr_set(err, rc, "snapshot overlay write failed");
    ss->tx_npages++;
    ss->cur.frame = index;
    if (fh.commit_size == 0) return 0;

    /* Commit frame: the transaction is whole. */
    int64_t t = commit_time_for(ss, index);
    WS_DEBUG("commit", "txid=%llu salt1=%08x frame=%u time=%lld fold=%d nwm=%d",
             (unsigned long long)ss->next_txid, ss->cur.salt1, index, (long long)t, fold, ss->nwm);
    if (!fold) {
        if (ws_rolling_commit(&ss->hs.r, fh.commit_size))
            return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory for page hashes");
        if ((rc = seg_writer_commit_tx(ss->segw, ss->tx_txid, t, fh.commit_size, ss->tx_npages,
                                       ss->hs.r.chk, err)))
            return rc;
        if (ss->seg_first_commit_ms == 0) ss->seg_first_commit_ms = t;
        ss->next_txid++;
        ss->rec.bytes_since_snapshot += (uint64_t)ss->tx_npages * ss->page_size;
    }
    ss->rec.last_commit_ms = t;
    ss->tx_open = 0;
    /* A folded transaction is in the snapshot's overlay, which is all a
    ** generation start needs of it (cut short by a crash, the start begins
    ** again from the database file): the VFS need not copy it before a WAL
    ** restart. Without this, every restart during a long snapshot would copy
    ** and sync a whole WAL on the checkpointer's time. */
    if (fold) spool_shipped_set(sh->sp, ss->cur.salt1, ss->cur.salt2, index);
    return 0;
}

/* ---- the WAL file ------------------------------------------------------------ */
/* Opens the WAL file now in place (again, if it was replaced or released).
** Returns 0, 1 if there is no WAL file (nothing to read: quiet), or a
** walship error: a descriptor that cannot be had (EMFILE, say) is an error
** the status shows, never a WAL taken for gone. */
static int wal_fd_current(shipper *sh, wserr *err) {
    ship_state *ss = &sh->ss;
    struct stat st;
    if (stat(sh->wal_path, &st) != 0) {
        if (ss->wal_fd >= 0) close(ss->wal_fd);
        ss->wal_fd = -1;
        return 1;
    }
    if (ss->wal_fd >= 0 && st.st_dev == ss->wal_dev && st.st_ino == ss->wal_ino) return 0;
    if (ss->wal_fd >= 0) close(ss->wal_fd);
    ss->wal_fd = open(sh->wal_path, O_RDONLY | O_CLOEXEC);
    if (ss->wal_fd < 0 || fstat(ss->wal_fd, &st) != 0) {
        int e = errno;
        if (ss->wal_fd >= 0) close(ss->wal_fd);
        ss->wal_fd = -1;
        if (e == ENOENT) return 1;
        return -wserr_errno(err, wserr_from_errno(e), e, "open %s", sh->wal_path);
    }
    ss->wal_dev = st.st_dev;
    ss->wal_ino = st.st_ino;
    return 0;
}

/* Between segments: what an idle database can do without until work comes
** (its descriptors and read buffers), so thousands of them cost little. */
static void release_idle(shipper *sh) {
    ship_state *ss = &sh->ss;
    if (ss->wal_fd >= 0) close(ss->wal_fd);
    ss->wal_fd = -1;
    spool_reader_release(sh->sp);
    shipstate_release(&ss->hs);
    free(ss->framebuf);
    ss->framebuf = NULL;
    ss->framebuf_cap = 0;
    wsbuf_free(&ss->recbuf);
}

static wal_hdr cur_wal_hdr(const ship_state *ss) {
    wal_hdr h;
    memset(&h, 0, sizeof h);
    h.salt1 = ss->cur.salt1;
    h.salt2 = ss->cur.salt2;
    h.page_size = ss->page_size;
    return h;
}

/* Reads, checks and consumes frames cur.frame+1..upto from the WAL file.
** Stops quietly (returning 0) at the first frame that is not there or not
** valid: the WAL was restarted or removed and the spool will carry a copy. */
int ship_read_wal_frames(shipper *sh, uint32_t upto, wserr *err) {
    ship_state *ss = &sh->ss;
    if (!ss->cur_known || (ss->cur.flags & WS_WALPOS_ENDED) || upto <= ss->cur.frame) return 0;
    int w = wal_fd_current(sh, err);
    if (w != 0) return w < 0 ? -w : 0;
    uint8_t hb[WAL_HDR_SIZE];
    wal_hdr h;
    if (ws_pread_full(ss->wal_fd, hb, sizeof hb, 0) != (ssize_t)sizeof hb ||
        wal_hdr_parse(hb, &h) != 0 || h.salt1 != ss->cur.salt1 || h.salt2 != ss->cur.salt2 ||
        h.page_size != ss->page_size)
        return 0;
    size_t fsz = WAL_FRAME_HDR_SIZE + (size_t)ss->page_size;
    uint32_t per = (uint32_t)((1u << 20) / fsz);
    if (per == 0) per = 1;
    /* Up to 1 MiB per read, but no more than this read needs: a database
    ** taking a trickle of commits reads a frame or two. */
    if (upto - ss->cur.frame < per) per = upto - ss->cur.frame;
    if (ss->framebuf_cap < per * fsz) {
        uint8_t *b = realloc(ss->framebuf, per * fsz);
        if (b == NULL) return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
        ss->framebuf = b;
        ss->framebuf_cap = per * fsz;
    }
    wal_hdr vh = cur_wal_hdr(ss);
    wal_cksum ck = {.big_endian = ss->big_endian, .s1 = ss->cur.ck1, .s2 = ss->cur.ck2};
    while (ss->cur.frame < upto) {
        uint32_t first = ss->cur.frame + 1;
        uint32_t n = upto - ss->cur.frame < per ? upto - ss->cur.frame : per;
        ssize_t got = ws_pread_full(ss->wal_fd, ss->framebuf, n * fsz,
                                    (off_t)wal_frame_offset(first, ss->page_size));
        if (got < 0) return 0;
        uint32_t have = (uint32_t)((size_t)got / fsz);
        for (uint32_t i = 0; i < have; i++) {
            uint8_t *fr = ss->framebuf + (size_t)i * fsz;
            if (wal_frame_check(&vh, &ck, fr, ss->page_size) != 0) return 0;
            int rc = consume_frame(sh, fr, first + i, err);
            if (rc) return rc;
            ss->cur.ck1 = ck.s1;
            ss->cur.ck2 = ck.s2;
        }
        if (have < n) return 0;
    }
    return 0;
}

/* ---- generations -------------------------------------------------------------- */
static int close_segment(shipper *sh, wserr *err);

/* Continuity is broken: finish what can be finished and start over with a
** new generation (a fresh snapshot). */
static int break_continuity(shipper *sh, const char *why, wserr *err) {
    ship_state *ss = &sh->ss;
    ws_strlcpy(ss->gen_reason, why, sizeof ss->gen_reason);
    WS_WARN("new_generation",
            "db=%s reason=\"%s\" wal=%08x/%08x frame=%u flags=%u log=%" PRIu64 "/%" PRIu64,
            sh->db_path, why, ss->cur.salt1, ss->cur.salt2, ss->cur.frame, ss->cur.flags,
            ss->cur.log_seq, ss->cur.log_off);
    if (ss->snap && snapjob_is_genstart(ss->snap)) {
        /* Already starting one: begin that again from the current state. */
        snapjob_free(ss->snap);
        ss->snap = NULL;
    }
    if (ss->segw && !ss->tx_open && seg_writer_ntx(ss->segw) > 0) {
        int rc = close_segment(sh, err);
        if (rc) return rc;
    } else if (ss->segw) {
        /* Inside a transaction: keep what the last durability point made
        ** safe (the VFS no longer holds copies of those frames). */
        drop_open_segment(sh);
        int rc = recover_segment_tmp(sh, 1, err);
        if (rc) return rc;
    }
    snapjob_free(ss->snap);
    ss->snap = NULL;
    ss->tx_open = 0;
    ss->cur_known = 0;
    ss->nwm = 0;
    ss->pending_mx = 0;
    return snapjob_start(sh, 1, err);
}

/* ---- records ------------------------------------------------------------------ */
static int same_wal(const ship_state *ss, uint32_t s1, uint32_t s2) {
    return ss->cur_known && ss->cur.salt1 == s1 && ss->cur.salt2 == s2;
}

/* Makes the WAL with header h current, nothing consumed from it yet (its
** header checksum seeds the frame checksum chain). */
void ship_start_wal(ship_state *ss, const wal_hdr *h) {
    ss->cur.salt1 = h->salt1;
    ss->cur.salt2 = h->salt2;
    ss->cur.frame = 0;
    ss->cur.ck1 = h->ck1;
    ss->cur.ck2 = h->ck2;
    ss->big_endian = (int)(h->magic & 1);
    ss->cur.flags = ss->big_endian ? WS_WALPOS_BIGEND : 0;
    ss->pending_mx = 0;
    ss->nwm = 0;
}

/* A writer records a WAL's end (and the next WAL's begin) just before it
** restarts, truncates or deletes the WAL; killed in between, it leaves a WAL
** that lives on: the next process recovers it and appends to it. When
** commits show up for the WAL that ended, and nothing was consumed from a
** newer one since, the end never happened: consumption goes back to where
** that WAL stood. Returns 1 if cur is now the WAL (s1, s2), open. */
static int revive_wal(shipper *sh, uint32_t s1, uint32_t s2) {
    ship_state *ss = &sh->ss;
    if (same_wal(ss, s1, s2)) {
        if (ss->cur.flags & WS_WALPOS_ENDED) {
            ss->cur.flags &= ~WS_WALPOS_ENDED;
            memset(&ss->rec.end_id, 0, sizeof ss->rec.end_id);
            WS_INFO("wal_revived", "db=%s salt1=%08x how=\"its end never happened\"", sh->db_path, s1);
        }
        return 1;
    }
    int cur_empty = ss->cur.frame == 0 && !ss->tx_open && ss->pending_mx == 0 &&
                    !(ss->cur.flags & WS_WALPOS_ENDED);
    if (cur_empty) {
        /* A WAL begun before the current (empty) one whose own successor
        ** never came to be: start it from its header. */
        for (int i = 0; i < ss->nbegun; i++) {
            if (ss->begun[i].salt1 != s1 || ss->begun[i].salt2 != s2) continue;
            uint64_t seq = ss->cur.log_seq, off = ss->cur.log_off;
            ss->cur = ss->begun[i];
            ss->cur.log_seq = seq;
            ss->cur.log_off = off;
            ss->big_endian = (ss->cur.flags & WS_WALPOS_BIGEND) != 0;
            ss->nbegun = i; /* those begun after it never were */
            ss->nwm = 0;
            WS_INFO("wal_revived", "db=%s salt1=%08x how=\"begun earlier; its successor never was\"",
                    sh->db_path, s1);
            return 1;
        }
    }
    if (ss->have_prev && ss->prev.salt1 == s1 && ss->prev.salt2 == s2 && cur_empty) {
        uint64_t seq = ss->cur.log_seq, off = ss->cur.log_off;
        ss->cur = ss->prev;
        ss->cur.flags &= ~WS_WALPOS_ENDED;
        ss->cur.log_seq = seq;
        ss->cur.log_off = off;
        ss->big_endian = (ss->cur.flags & WS_WALPOS_BIGEND) != 0;
        ss->pending_mx = 0;
        ss->nwm = 0;
        ss->have_prev = 0;
        ss->nbegun = 0;
        memset(&ss->rec.end_id, 0, sizeof ss->rec.end_id);
        WS_INFO("wal_revived", "db=%s salt1=%08x how=\"the begin after it never happened\"",
                sh->db_path, s1);
        return 1;
    }
    if (cur_empty && !(s1 == ss->prev.salt1 && s2 == ss->prev.salt2)) {
        /* Every WAL begun since the last one anything was consumed from
        ** committed nothing (or its watermarks would have made it current):
        ** commits in the WAL that is in the file now, whatever begin record
        ** announced it, continue the history from its own header. */
        uint8_t hb[WAL_HDR_SIZE];
        wal_hdr h;
        int fd = open(sh->wal_path, O_RDONLY | O_CLOEXEC);
        int ok = fd >= 0 && ws_pread_full(fd, hb, sizeof hb, 0) == (ssize_t)sizeof hb &&
                 wal_hdr_parse(hb, &h) == 0 && h.salt1 == s1 && h.salt2 == s2 &&
                 h.page_size == ss->page_size;
        if (fd >= 0) close(fd);
        if (ok) {
            ship_start_wal(ss, &h);
            ss->nbegun = 0;
            WS_INFO("wal_revived", "db=%s salt1=%08x how=\"the WAL in the file\"", sh->db_path, s1);
            return 1;
        }
    }
    return 0;
}

static int apply_frames_record(shipper *sh, const spool_rec *r, wserr *err) {
    ship_state *ss = &sh->ss;
    size_t fsz = WAL_FRAME_HDR_SIZE + (size_t)r->page_size;
    if (r->page_size != ss->page_size) return break_continuity(sh, "page size changed", err);
    if (r->first_frame > ss->cur.frame + 1)
        return break_continuity(sh, "frames missing before a copied range", err);
    wal_hdr vh = cur_wal_hdr(ss);
    wal_cksum ck = {.big_endian = ss->big_endian, .s1 = ss->cur.ck1, .s2 = ss->cur.ck2};
    for (uint32_t i = 0; i < r->nframes; i++) {
        uint32_t idx = r->first_frame + i;
        if (idx <= ss->cur.frame) continue;
        const uint8_t *fr = r->frames + (size_t)i * fsz;
        if (wal_frame_check(&vh, &ck, fr, r->page_size) != 0)
            return break_continuity(sh, "a copied WAL frame failed its checksum", err);
        int rc = consume_frame(sh, fr, idx, err);
        if (rc) return rc;
        ss->cur.ck1 = ck.s1;
        ss->cur.ck2 = ck.s2;
    }
    return 0;
}

static int db_view_matches(shipper *sh, int *ok, char *why, size_t whyn, wserr *err);

/* The WAL the spool had open vanished (or was replaced) without walship
** seeing it end: a process outside walship checkpointed and removed it
** (SPOOL_END_LOST). Its frames can no longer be read. If every commit walship
** knew of was consumed and the database still follows the shipped history
** (db_view_matches), nothing was lost and the history goes on; otherwise
** something walship never shipped reached the file: a new generation. */
static int wal_lost(shipper *sh, const spool_rec *r, wserr *err) {
    ship_state *ss = &sh->ss;
    if (!same_wal(ss, r->salt1, r->salt2) && !revive_wal(sh, r->salt1, r->salt2)) {
        /* Every WAL the VFS announces is followed from its begin record on,
        ** so a lost WAL this generation never followed ended before the
        ** generation began: the generation's snapshot read the file after. */
        WS_DEBUG("wal_lost_ignored", "db=%s salt1=%08x cur=%08x", sh->db_path, r->salt1,
                 ss->cur.salt1);
        return 0;
    }
    uint32_t known = r->mx_frame > ss->pending_mx ? r->mx_frame : ss->pending_mx;
    if (ss->tx_open || ss->cur.frame < known)
        return break_continuity(sh,
                                "the WAL was checkpointed and removed by a process outside walship "
                                "before all its commits were shipped",
                                err);
    int ok = 0;
    char why[160];
    int rc = db_view_matches(sh, &ok, why, sizeof why, err);
    if (rc) return rc;
    if (!ok) {
        char reason[320];
        snprintf(reason, sizeof reason,
                 "the database changed outside walship (its WAL was removed by another "
                 "process; %s)",
                 why);
        return break_continuity(sh, reason, err);
    }
    WS_INFO("wal_lost_checked", "db=%s salt1=%08x frames=%u action=\"history continues\"",
            sh->db_path, r->salt1, ss->cur.frame);
    ss->cur.flags |= WS_WALPOS_ENDED;
    ss->rec.end_id = r->dbid;
    ss->pending_mx = 0;
    ss->nwm = 0;
    return 0;
}

/* Applies one record. Returns 0 or an error; continuity breaks are handled
** inside (a new generation starts). */
static int apply_record(shipper *sh, const spool_rec *r, wserr *err) {
    ship_state *ss = &sh->ss;
    if (r->type != SPOOL_REC_WATERMARK)
        WS_DEBUG("record", "pid=%d type=%d salt1=%08x mx=%u reason=%u cur=%08x/%u flags=%u "
                           "known=%d endid=%llu dbid=%llu",
                 (int)getpid(), r->type, r->salt1, r->mx_frame, r->reason, ss->cur.salt1,
                 ss->cur.frame, ss->cur.flags, ss->cur_known,
                 (unsigned long long)ss->rec.end_id.ctime_ns,
                 (unsigned long long)r->dbid.ctime_ns);
    switch (r->type) {
    case SPOOL_REC_WATERMARK:
        if (!ss->cur_known) {
            /* A snapshot start will place us; while discarding, every
            ** committed frame counts as taken care of. */
            if (ss->discarding) spool_shipped_set(sh->sp, r->salt1, r->salt2, r->mx_frame);
            return 0;
        }
        if (same_wal(ss, r->salt1, r->salt2) && (ss->cur.flags & WS_WALPOS_ENDED) &&
            r->mx_frame <= ss->cur.frame)
            return 0; /* nothing past the end */
        if (!revive_wal(sh, r->salt1, r->salt2)) {
            WS_DEBUG("revive_failed",
                     "pid=%d have_prev=%d prev=%08x/%u cur=%08x/%u flags=%u tx=%d wm=%08x/%u "
                     "pending=%u",
                     (int)getpid(), ss->have_prev, ss->prev.salt1, ss->prev.frame, ss->cur.salt1,
                     ss->cur.frame, ss->cur.flags, ss->tx_open, r->salt1, r->mx_frame,
                     ss->pending_mx);
            if (ss->cur.flags & WS_WALPOS_ENDED)
                return break_continuity(sh, "commits in a WAL walship never saw begin", err);
            return break_continuity(sh, "the WAL changed outside walship", err);
        }
        if (r->mx_frame > ss->pending_mx) ss->pending_mx = r->mx_frame;
        note_watermark_time(ss, r->mx_frame, r->time_ms);
        /* The frames are read in batches (consume() takes the rest when
        ** the records run out or another kind comes): a commit's few frames
        ** are not worth a stat and two preads of their own. */
        if (ss->pending_mx - ss->cur.frame < READ_BATCH_FRAMES) return 0;
        return ship_read_wal_frames(sh, ss->pending_mx, err);
    case SPOOL_REC_FRAMES:
        if (!ss->cur_known) return 0;
        if (r->first_frame + r->nframes - 1 <= ss->cur.frame && same_wal(ss, r->salt1, r->salt2))
            return 0; /* a copy of frames already consumed */
        if (!revive_wal(sh, r->salt1, r->salt2)) return 0; /* frames of a WAL left behind */
        return apply_frames_record(sh, r, err);
    case SPOOL_REC_WAL_END:
        if (!ss->cur_known) return 0;
        if (r->reason == SPOOL_END_LOST) return wal_lost(sh, r, err);
        revive_wal(sh, r->salt1, r->salt2); /* the end of a WAL that lived on */
        if (!same_wal(ss, r->salt1, r->salt2)) {
            if (ss->cur.flags & WS_WALPOS_ENDED) return 0; /* already ended */
            return break_continuity(sh, "a WAL walship was not following ended", err);
        }
        if (ss->cur.flags & WS_WALPOS_ENDED) {
            /* Ended again (the first end was never carried out): the last
            ** word on how it ended counts. */
            if (r->mx_frame > ss->cur.frame)
                return break_continuity(sh, "committed frames were lost before shipping", err);
            if (r->reason == SPOOL_END_RESTART)
                memset(&ss->rec.end_id, 0, sizeof ss->rec.end_id);
            else
                ss->rec.end_id = r->dbid;
            return 0;
        }
        if (r->mx_frame > ss->cur.frame) {
            /* Last chance: if the frames are still in the file (a delete
            ** that has not happened yet), take them from there. */
            int rc = ship_read_wal_frames(sh, r->mx_frame, err);
            if (rc) return rc;
            if (r->mx_frame > ss->cur.frame)
                return break_continuity(sh, "committed frames were lost before shipping", err);
        }
        if (ss->tx_open) return break_continuity(sh, "a WAL ended inside a transaction", err);
        ss->cur.flags |= WS_WALPOS_ENDED;
        /* After a delete or truncate the database file is complete and
        ** should stay exactly as it is until the next WAL begins. */
        if (r->reason != SPOOL_END_RESTART)
            ss->rec.end_id = r->dbid;
        else
            memset(&ss->rec.end_id, 0, sizeof ss->rec.end_id);
        ss->pending_mx = 0;
        ss->nwm = 0;
        return 0;
    case SPOOL_REC_WAL_BEGIN: {
        if (!ss->cur_known) return 0;
        if (same_wal(ss, r->salt1, r->salt2) && !(ss->cur.flags & WS_WALPOS_ENDED)) {
            /* The same WAL's header written again: its writer died before
            ** committing anything, and the next one wrote the header anew.
            ** SQLite puts the writing connection's checkpoint count in it,
            ** so its checksum, the seed of every frame checksum, may differ:
            ** with nothing of the WAL consumed yet, the last header counts. */
            wal_hdr h;
            if (ss->cur.frame == 0 && ss->pending_mx == 0 && !ss->tx_open &&
                r->page_size == ss->page_size && wal_hdr_parse(r->wal_hdr, &h) == 0)
                ship_start_wal(ss, &h);
            return 0;
        }
        /* A WAL that never committed anything (its begin was recorded by a
        ** writer that died before writing it) ends without a trace; the WAL
        ** before it stays the one to go back to. */
        int empty = !(ss->cur.flags & WS_WALPOS_ENDED) && ss->cur.frame == 0 &&
                    ss->pending_mx == 0 && !ss->tx_open;
        if (!(ss->cur.flags & WS_WALPOS_ENDED) && !empty)
            return break_continuity(sh, "a new WAL began while the old one had not ended", err);
        if (r->page_size != ss->page_size)
            return break_continuity(sh, "page size changed", err);
        spool_dbid none = {0};
        if (memcmp(&ss->rec.end_id, &none, sizeof none) != 0 &&
            memcmp(&ss->rec.end_id, &r->dbid, sizeof r->dbid) != 0)
            return break_continuity(sh, "the database file changed while no WAL was open "
                                        "(copied in, or written outside walship)",
                                    err);
        if (!empty) {
            ss->prev = ss->cur; /* in case this begin never takes effect (revive_wal) */
            ss->have_prev = 1;
            ss->nbegun = 0;
        } else {
            /* The empty one may yet turn out to be the live WAL. */
            if (ss->nbegun == (int)(sizeof ss->begun / sizeof ss->begun[0])) {
                memmove(ss->begun, ss->begun + 1, sizeof ss->begun - sizeof ss->begun[0]);
                ss->nbegun--;
            }
            ss->begun[ss->nbegun++] = ss->cur;
        }
        memset(&ss->rec.end_id, 0, sizeof ss->rec.end_id);
        wal_hdr h;
        wal_hdr_parse(r->wal_hdr, &h);
        ship_start_wal(ss, &h);
        return 0;
    }
    default:
        return 0;
    }
}

/* Reads the frames the watermarks consumed so far announced; once nothing
** is pending, everything before pos is taken. */
static int take_pending(shipper *sh, spool_pos pos, wserr *err) {
    ship_state *ss = &sh->ss;
    int rc = ship_read_wal_frames(sh, ss->pending_mx, err);
    if (rc) return rc;
    if (!ss->cur_known || ss->pending_mx <= ss->cur.frame || (ss->cur.flags & WS_WALPOS_ENDED))
        ss->resume = pos;
    return 0;
}

/* Reads and applies records until the end of the spool or the step budget. */
static int consume(shipper *sh, int64_t deadline, wserr *err) {
    ship_state *ss = &sh->ss;
    for (int i = 0; i < STEP_MAX_RECORDS && ws_mono_ms() < deadline; i++) {
        spool_pos before = ss->cur.log_seq || ss->cur.log_off
                               ? (spool_pos){ss->cur.log_seq, ss->cur.log_off}
                               : (spool_pos){0, 0};
        spool_pos pos = before;
        spool_rec rec;
        int r = spool_read(sh->sp, NULL, &pos, &ss->recbuf, &rec, err);
        if (r < 0) return -r;
        if (r == 0) {
            /* Nothing new (pos may have moved past the end of a finished
            ** log file to the start of the next): keep the position, and
            ** read the frames announced (or whose read failed earlier). */
            ss->cur.log_seq = pos.seq;
            ss->cur.log_off = pos.off;
            return take_pending(sh, pos, err);
        }
        int had_pending = ss->cur_known && ss->pending_mx > ss->cur.frame;
        if (had_pending && rec.type != SPOOL_REC_WATERMARK) {
            /* Every other record acts on what came before it in full. */
            int rc = take_pending(sh, before, err);
            if (rc) return rc;
            had_pending = ss->cur_known && ss->pending_mx > ss->cur.frame;
        }
        ss->cur.log_seq = pos.seq;
        ss->cur.log_off = pos.off;
        int rc = apply_record(sh, &rec, err);
        if (rc) return rc;
        if (ss->cur.log_seq != pos.seq || ss->cur.log_off != pos.off)
            continue; /* a new generation placed consumption (and resume) elsewhere */
        if (!ss->cur_known || ss->pending_mx <= ss->cur.frame || (ss->cur.flags & WS_WALPOS_ENDED))
            ss->resume = pos;
        else if (!had_pending)
            ss->resume = before;
    }
    return ss->cur_known && ss->pending_mx > ss->cur.frame
               ? take_pending(sh, (spool_pos){ss->cur.log_seq, ss->cur.log_off}, err)
               : 0;
}

/* ---- closing segments and the queue ------------------------------------------ */
static int queue_push(ship_state *ss, const queued *q) {
    if (ss->nqueue == ss->queue_cap) {
        int cap = ss->queue_cap ? ss->queue_cap * 2 : 16;
        queued *nq = realloc(ss->queue, (size_t)cap * sizeof *nq);
        if (nq == NULL) return WALSHIP_ERR_NOMEM;
        ss->queue = nq;
        ss->queue_cap = cap;
    }
    ss->queue[ss->nqueue++] = *q;
    ss->queue_bytes += q->bytes;
    return 0;
}

int ship_enqueue(shipper *sh, const char *tmp_path, const queued *q, wserr *err) {
    char dir[PATH_MAX], path[PATH_MAX];
    if (queue_dir(sh, dir, sizeof dir) ||
        snprintf(path, sizeof path, "%s/%s", dir, q->name) >= (int)sizeof path)
        return wserr_set(err, WALSHIP_ERR_INVALID, "spool path too long");
    int rc = ws_mkdir_p(dir, 0755, err);
    if (rc) return rc;
    if (ws_sys_rename(tmp_path, path) != 0)
        return wserr_errno(err, wserr_from_errno(errno), errno, "move %s into the queue", tmp_path);
    rc = ws_fsync_dir_of(path, err);
    if (rc) return rc;
    if (queue_push(&sh->ss, q)) return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
    return 0;
}

/* The durable record that matches the live position (between transactions). */
static void live_record(ship_state *ss, ship_record *r) {
    r->generation = ss->gen;
    r->txid = ss->next_txid - 1;
    r->page_size = ss->page_size;
    r->db_pages = ss->hs.r.db_pages;
    r->chk = ss->hs.r.chk;
    r->pos = ss->cur;
    r->pos.flags = (ss->cur.flags & WS_WALPOS_ENDED) | (ss->big_endian ? WS_WALPOS_BIGEND : 0);
    r->pos.page_size = ss->page_size;
    r->pos.log_seq = ss->resume.seq;
    r->pos.log_off = ss->resume.off;
    if (!ss->cur_known) r->pos.salt1 = r->pos.salt2 = 0;
    r->prev = ss->prev;
    r->have_prev = (uint32_t)ss->have_prev;
    r->nbegun = (uint32_t)ss->nbegun;
    memcpy(r->begun, ss->begun, sizeof r->begun);
}

int ship_save_state(shipper *sh, wserr *err) {
    ship_state *ss = &sh->ss;
    /* Only between objects: the live position must not claim transactions
    ** that sit in an unclosed segment. */
    if (ss->segw != NULL || ss->tx_open)
        return wserr_set(err, WALSHIP_ERR_STATE, "state saved with an open segment");
    /* While a generation-start snapshot folds transactions, the live
    ** position belongs to the new generation and the rest to the old one:
    ** nothing consistent to save until the snapshot is queued. */
    if (folding(ss)) return 0;
    live_record(ss, &ss->rec);
    ss->rec.shipped_txid = ss->shipped_txid;
    int rc = shipstate_save(&ss->hs, &ss->rec, err);
    if (rc) return rc;
    spool_shipped_set(sh->sp, ss->rec.pos.salt1, ss->rec.pos.salt2, ss->rec.pos.frame);
    return 0;
}

static int close_segment(shipper *sh, wserr *err) {
    ship_state *ss = &sh->ss;
    ship_record r;
    live_record(ss, &r);
    seg_header hdr;
    int rc = seg_writer_finish(ss->segw, &r.pos, &hdr, err);
    if (rc) return rc;
    if (ws_sys_fdatasync(ss->seg_fd) != 0)
        return wserr_errno(err, wserr_from_errno(errno), errno, "sync segment");
    queued q;
    memset(&q, 0, sizeof q);
    snprintf(q.name, sizeof q.name, "%016" PRIx64 "-%016" PRIx64 "-%016" PRIx64 ".seg", ss->gen,
             hdr.first_txid, hdr.last_txid);
    q.generation = ss->gen;
    q.first_txid = hdr.first_txid;
    q.last_txid = hdr.last_txid;
    q.last_commit_ms = hdr.last_commit_ms;
    q.resume.seq = r.pos.log_seq;
    q.resume.off = r.pos.log_off;
    q.wal_salt1 = r.pos.salt1;
    q.wal_salt2 = r.pos.salt2;
    q.wal_frame = r.pos.frame;
    q.bytes = seg_writer_bytes(ss->segw);
    char tmp[PATH_MAX];
    spool_file(sh, "seg.tmp", tmp, sizeof tmp);
    seg_writer_free(ss->segw);
    ss->segw = NULL;
    close(ss->seg_fd);
    ss->seg_fd = -1;
    rc = ship_enqueue(sh, tmp, &q, err);
    if (rc) return rc;
    ss->rec.seg_bytes_since_snapshot += q.bytes;
    ws_kill_point("seg_queued"); /* start-up must redo it into the page hashes */
    return ship_save_state(sh, err);
}

int ship_close_segment_if_open(shipper *sh, wserr *err) {
    ship_state *ss = &sh->ss;
    if (ss->segw == NULL) return 0;
    if (ss->tx_open || seg_writer_ntx(ss->segw) == 0)
        return wserr_set(err, WALSHIP_ERR_STATE, "segment cannot be closed inside a transaction");
    return close_segment(sh, err);
}

static int segment_due(shipper *sh) {
    ship_state *ss = &sh->ss;
    if (ss->segw == NULL || ss->tx_open || seg_writer_ntx(ss->segw) == 0) return 0;
    if (seg_writer_bytes(ss->segw) >= SEGMENT_MAX_BYTES) return 1;
    if (ws_mono_ms() - ss->seg_opened_mono >= sh->cfg.ship_interval_ms) return 1;
    uint32_t fr = spool_flush_requests(sh->sp);
    if (fr != ss->flush_seen) return 1;
    return 0;
}

/* A durability point for the open segment (format: seg_writer_sync_point):
** once synced, its transactions survive a crash of this process, so the VFS
** need not copy their frames before a WAL restart. Taken at most every
** SYNC_POINT_MS while transactions arrive, which keeps that copy to about
** that much WAL instead of a whole ship interval; and at once when a
** checkpoint asks (spool_sync_request), at most every SYNC_ASKED_MS: then
** it runs beside the checkpoint's own syncs, and the restart that follows
** the checkpoint usually finds nothing left to copy. */
static int sync_point(shipper *sh, wserr *err) {
    ship_state *ss = &sh->ss;
    uint32_t asked = spool_sync_requests(sh->sp);
    if (ss->segw == NULL || seg_writer_ntx(ss->segw) == ss->seg_synced_ntx) {
        ss->sync_seen = asked; /* nothing to make durable */
        return 0;
    }
    if (ss->tx_open) return 0;
    int64_t since = ws_mono_ms() - ss->seg_synced_mono;
    if (since < SYNC_POINT_MS && (asked == ss->sync_seen || since < SYNC_ASKED_MS)) return 0;
    ss->sync_seen = asked;
    ship_record r;
    live_record(ss, &r);
    int rc = seg_writer_sync_point(ss->segw, &r.pos, err);
    if (rc) return rc;
    if (ws_sys_fdatasync(ss->seg_fd) != 0)
        return wserr_errno(err, wserr_from_errno(errno), errno, "sync segment");
    ss->seg_synced_ntx = seg_writer_ntx(ss->segw);
    ss->seg_synced_mono = ws_mono_ms();
    spool_shipped_set(sh->sp, r.pos.salt1, r.pos.salt2, r.pos.frame);
    shipper_wake_waiters(sh); /* a WAL restart may be waiting for this point */
    WS_DEBUG("sync_point", "db=%s salt1=%08x frame=%u asked=%d", sh->db_path, r.pos.salt1,
             r.pos.frame, since < SYNC_POINT_MS);
    ws_kill_point("seg_synced"); /* start-up must recover seg.tmp */
    return 0;
}

/* Turns a segment file cut short (a crash, or a transaction that never
** completed) into a complete queued segment holding everything up to its
** last durability point; removes it otherwise. With push, the segment is
** also added to the in-memory queue. */
static int recover_segment_tmp(shipper *sh, int push, wserr *err) {
    char path[PATH_MAX], out[PATH_MAX];
    if (spool_file(sh, "seg.tmp", path, sizeof path) || spool_file(sh, "seg.rec", out, sizeof out))
        return wserr_set(err, WALSHIP_ERR_INVALID, "spool path too long");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    struct stat st;
    int rc = 0;
    void *m = MAP_FAILED;
    int ofd = -1;
    if (fstat(fd, &st) != 0 || st.st_size < SEG_HEADER_SIZE) goto done;
    m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) goto done;
    ofd = ws_sys_open(out, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (ofd < 0) {
        rc = wserr_errno(err, wserr_from_errno(errno), errno, "create %s", out);
        goto done;
    }
    seg_header h;
    wserr e2 = {0};
    if (seg_parse(m, (size_t)st.st_size, &h, NULL) == 0) {
        /* Finished (closing was cut short before the rename): the file is
        ** a complete segment already; take it as it is. */
        if (ws_pwrite_all(ofd, m, (size_t)st.st_size, 0) != 0) {
            rc = wserr_errno(err, wserr_from_errno(errno), errno, "copy %s", path);
            goto done;
        }
    } else if (seg_recover(m, (size_t)st.st_size, ofd, sh->cfg.zstd_level, &h, &e2) != 0) {
        if (e2.code != WALSHIP_ERR_NOTFOUND) {
            /* Kept for a look (the history goes on from the state: frames
            ** it covered and the WAL no longer holds start a new generation). */
            char bad[PATH_MAX];
            WS_WARN("segment_recovery_failed", "db=%s err=\"%s\" kept=seg.tmp.bad", sh->db_path,
                    e2.msg);
            if (spool_file(sh, "seg.tmp.bad", bad, sizeof bad) == 0) rename(path, bad);
        }
        goto done;
    }
    if (ws_sys_fdatasync(ofd) != 0) {
        rc = wserr_errno(err, wserr_from_errno(errno), errno, "sync %s", out);
        goto done;
    }
    queued q;
    memset(&q, 0, sizeof q);
    snprintf(q.name, sizeof q.name, "%016" PRIx64 "-%016" PRIx64 "-%016" PRIx64 ".seg",
             h.generation, h.first_txid, h.last_txid);
    char dir[PATH_MAX], dst[PATH_MAX + 128];
    queue_dir(sh, dir, sizeof dir);
    if ((rc = ws_mkdir_p(dir, 0755, err))) goto done;
    snprintf(dst, sizeof dst, "%s/%s", dir, q.name);
    if (ws_sys_rename(out, dst) != 0) {
        rc = wserr_errno(err, wserr_from_errno(errno), errno, "move %s into the queue", out);
        goto done;
    }
    rc = ws_fsync_dir_of(dst, err);
    if (rc == 0 && push) {
        q.generation = h.generation;
        q.first_txid = h.first_txid;
        q.last_txid = h.last_txid;
        q.last_commit_ms = h.last_commit_ms;
        q.resume.seq = h.resume.log_seq;
        q.resume.off = h.resume.log_off;
        q.wal_salt1 = h.resume.salt1;
        q.wal_salt2 = h.resume.salt2;
        q.wal_frame = h.resume.frame;
        struct stat qs;
        q.bytes = stat(dst, &qs) == 0 ? (uint64_t)qs.st_size : 0;
        if (queue_push(&sh->ss, &q)) rc = wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
    }
    WS_INFO("segment_recovered", "db=%s txids=%" PRIu64 "..%" PRIu64, sh->db_path, h.first_txid,
            h.last_txid);
done:
    if (m != MAP_FAILED) munmap(m, (size_t)st.st_size);
    if (ofd >= 0) close(ofd);
    close(fd);
    unlink(out);
    if (rc == 0) unlink(path);
    return rc;
}

/* Uploads queued objects in order until the queue is empty or one fails. */
static int upload_queue(shipper *sh, int64_t deadline, wserr *err) {
    ship_state *ss = &sh->ss;
    char dir[PATH_MAX];
    if (queue_dir(sh, dir, sizeof dir)) return wserr_set(err, WALSHIP_ERR_INVALID, "path too long");
    while (ss->nqueue > 0) {
        queued *q = &ss->queue[0];
        char path[PATH_MAX + 128], key[256];
        snprintf(path, sizeof path, "%s/%s", dir, q->name);
        if (q->is_snapshot)
            snap_key(key, sizeof key, q->generation, q->last_txid);
        else
            seg_key(key, sizeof key, q->generation, q->first_txid, q->last_txid);
        /* A queued object newer than the saved state is still the redo log
        ** of that state: it may go only once the state covers it. */
        if (q->generation == ss->rec.generation && q->last_txid > ss->rec.txid)
            return wserr_set(err, WALSHIP_ERR_STATE, "queued %s is not yet covered by the state",
                             q->name);
        /* Before a generation's first object, and once a minute while
        ** uploading: the destination must still be ours (another database
        ** may have adopted it); a generation gets its marker before anything
        ** of it is visible. */
        if (q->generation != ss->marked_gen || ws_mono_ms() >= ss->next_claim_mono) {
            int rc = claim_destination(sh, err);
            if (rc == 0 && q->generation != ss->marked_gen)
                rc = claim_generation(sh, q->generation, err);
            if (rc) return rc;
            ss->marked_gen = q->generation;
            ss->next_claim_mono = ws_mono_ms() + CLAIM_EVERY_MS;
        }
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) return wserr_errno(err, wserr_from_errno(errno), errno, "open %s", path);
        int rc = store_put_fd(ss->st, key, fd, 0, err);
        close(fd);
        if (rc) return rc;
        ws_kill_point("uploaded"); /* uploaded again after a restart: it overwrites itself */
        WS_DEBUG("uploaded", "db=%s key=%s bytes=%" PRIu64, sh->db_path, key, q->bytes);
        spool_count_upload(sh->sp, q->is_snapshot, q->bytes);
        unlink(path);
        if (q->last_txid > ss->shipped_txid || q->generation != ss->rec.generation)
            ss->shipped_txid = q->last_txid;
        ss->uploaded = q->resume;
        ss->queue_bytes -= q->bytes;
        memmove(ss->queue, ss->queue + 1, (size_t)(ss->nqueue - 1) * sizeof *q);
        ss->nqueue--;
        if (ws_mono_ms() >= deadline) break;
    }
    return 0;
}

/* ---- start-up -------------------------------------------------------------------- */
static int cmp_queued(const void *a, const void *b) {
    return strcmp(((const queued *)a)->name, ((const queued *)b)->name);
}

/* Reads the header (segment) or footer (snapshot) of a queued file. */
static int describe_queued(const char *path, const char *name, queued *q) {
    memset(q, 0, sizeof q[0]);
    ws_strlcpy(q->name, name, sizeof q->name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    struct stat st;
    int rc = -1;
    if (fstat(fd, &st) != 0) goto out;
    q->bytes = (uint64_t)st.st_size;
    size_t len = strlen(name);
    if (len > 5 && strcmp(name + len - 5, ".snap") == 0) {
        uint8_t f[SNAP_FOOTER_SIZE];
        snap_footer sf;
        if (st.st_size < SNAP_FOOTER_SIZE ||
            ws_pread_full(fd, f, sizeof f, st.st_size - SNAP_FOOTER_SIZE) != (ssize_t)sizeof f ||
            snap_parse_footer(f, sizeof f, (uint64_t)st.st_size, &sf, NULL) != 0)
            goto out;
        q->is_snapshot = 1;
        q->generation = sf.generation;
        q->first_txid = q->last_txid = sf.txid;
        q->last_commit_ms = sf.commit_ms;
        q->resume.seq = sf.resume.log_seq;
        q->resume.off = sf.resume.log_off;
        q->wal_salt1 = sf.resume.salt1;
        q->wal_salt2 = sf.resume.salt2;
        q->wal_frame = sf.resume.frame;
        rc = 0;
    } else if (len > 4 && strcmp(name + len - 4, ".seg") == 0) {
        void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) goto out;
        seg_header h;
        if (seg_parse(m, (size_t)st.st_size, &h, NULL) == 0) {
            q->generation = h.generation;
            q->first_txid = h.first_txid;
            q->last_txid = h.last_txid;
            q->last_commit_ms = h.last_commit_ms;
            q->resume.seq = h.resume.log_seq;
            q->resume.off = h.resume.log_off;
            q->wal_salt1 = h.resume.salt1;
            q->wal_salt2 = h.resume.salt2;
            q->wal_frame = h.resume.frame;
            rc = 0;
        }
        munmap(m, (size_t)st.st_size);
    }
out:
    close(fd);
    return rc;
}

static int load_queue(shipper *sh, wserr *err) {
    ship_state *ss = &sh->ss;
    char dir[PATH_MAX];
    if (queue_dir(sh, dir, sizeof dir)) return wserr_set(err, WALSHIP_ERR_INVALID, "path too long");
    DIR *d = opendir(dir);
    if (d == NULL) return 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char path[PATH_MAX + 256];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        queued q;
        if (describe_queued(path, e->d_name, &q) != 0) {
            WS_WARN("queue_discard", "path=%s reason=\"unreadable\"", path);
            unlink(path);
            continue;
        }
        if (queue_push(ss, &q)) {
            closedir(d);
            return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
        }
    }
    closedir(d);
    if (ss->nqueue > 1) qsort(ss->queue, (size_t)ss->nqueue, sizeof *ss->queue, cmp_queued);
    return 0;
}

/* Re-applies queued segments newer than the durable record to the page
** hashes (see shipstate.h). Returns 0 when the state is consistent. */
static int redo_queue(shipper *sh, wserr *err) {
    ship_state *ss = &sh->ss;
    char dir[PATH_MAX];
    queue_dir(sh, dir, sizeof dir);
    for (int i = 0; i < ss->nqueue; i++) {
        queued *q = &ss->queue[i];
        if (q->generation != ss->gen || q->last_txid <= ss->next_txid - 1) continue;
        if (q->is_snapshot || q->first_txid != ss->next_txid)
            return wserr_set(err, WALSHIP_ERR_CORRUPT, "queued object %s does not follow", q->name);
        char path[PATH_MAX + 128];
        snprintf(path, sizeof path, "%s/%s", dir, q->name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) return wserr_errno(err, WALSHIP_ERR_IO, errno, "open %s", path);
        void *m = mmap(NULL, (size_t)q->bytes, PROT_READ, MAP_PRIVATE, fd, 0);
        close(fd);
        if (m == MAP_FAILED) return wserr_errno(err, WALSHIP_ERR_IO, errno, "map %s", path);
        seg_iter *it = NULL;
        int rc = seg_iter_open(m, (size_t)q->bytes, &it, err);
        /* Entries may already hold values of these very transactions (a
        ** save that synced its entries but not its slot), so hashes are set,
        ** not XOR-ed; the checksum is recomputed once at the end. */
        ws_rolling *r = &ss->hs.r;
        uint32_t before = r->db_pages, maxp = 0;
        while (rc == 0) {
            seg_event ev;
            rc = seg_iter_next(it, &ev, err);
            if (rc || ev.type == SEG_EV_END) break;
            if (ev.type == SEG_EV_BEGIN) {
                before = r->db_pages;
                maxp = 0;
            } else if (ev.type == SEG_EV_PAGE) {
                rc = ws_rolling_set(r, ev.pgno, ws_page_hash(ev.pgno, ev.page, ss->page_size));
                if (ev.pgno > maxp) maxp = ev.pgno;
            } else if (ev.type == SEG_EV_COMMIT) {
                uint32_t hi = before > maxp ? before : maxp;
                for (uint32_t p = ev.db_pages + 1; p <= hi && rc == 0; p++) rc = ws_rolling_set(r, p, 0);
                for (uint32_t p = before + 1; p <= ev.db_pages && rc == 0; p++)
                    if (ws_rolling_get(r, p) == 0)
                        rc = ws_rolling_set(r, p, ws_zero_page_hash(p, ss->page_size));
                r->db_pages = ev.db_pages;
                r->chk = ev.post_chk;
                ss->next_txid = ev.txid + 1;
            }
        }
        if (rc == 0) {
            const seg_header *h = seg_iter_header(it);
            ss->cur.salt1 = h->resume.salt1;
            ss->cur.salt2 = h->resume.salt2;
            ss->cur.frame = h->resume.frame;
            ss->cur.ck1 = h->resume.ck1;
            ss->cur.ck2 = h->resume.ck2;
            ss->cur.flags = h->resume.flags;
            ss->resume.seq = h->resume.log_seq;
            ss->resume.off = h->resume.log_off;
        }
        seg_iter_free(it);
        munmap(m, (size_t)q->bytes);
        if (rc) return rc;
    }
    return 0;
}

static void cleanup_tmp_files(shipper *sh) {
    static const char *const names[] = {"seg.tmp", "snap.tmp", "overlay.tmp"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char path[PATH_MAX];
        if (spool_file(sh, names[i], path, sizeof path) == 0) unlink(path);
    }
}

/* ---- does the database still follow the shipped history? ------------------- */
/* Marks in `covered` (a bitmap of pages 1..npages) every page a frame of the
** WAL now in the file writes (frames with that WAL's salts, committed or
** not), and sets *nframes to how many there are. A WAL with another page
** size covers nothing and sets *pgsz_differs. */
static void wal_cover(shipper *sh, uint8_t *covered, uint32_t npages, uint32_t *nframes,
                      int *pgsz_differs) {
    ship_state *ss = &sh->ss;
    *nframes = 0;
    int fd = open(sh->wal_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    uint8_t hb[WAL_HDR_SIZE];
    wal_hdr h;
    if (ws_pread_full(fd, hb, sizeof hb, 0) != (ssize_t)sizeof hb || wal_hdr_parse(hb, &h) != 0) {
        close(fd);
        return;
    }
    if (h.page_size != ss->page_size) {
        *pgsz_differs = 1;
        close(fd);
        return;
    }
    size_t fsz = WAL_FRAME_HDR_SIZE + (size_t)h.page_size;
    uint32_t per = (uint32_t)(((size_t)1 << 20) / fsz);
    if (per == 0) per = 1;
    uint8_t *buf = malloc(per * fsz);
    for (uint32_t first = 1; buf != NULL;) {
        ssize_t got = ws_pread_full(fd, buf, per * fsz, (off_t)wal_frame_offset(first, h.page_size));
        uint32_t have = got > 0 ? (uint32_t)((size_t)got / fsz) : 0;
        uint32_t i = 0;
        for (; i < have; i++) {
            const uint8_t *fr = buf + (size_t)i * fsz;
            if (ws_get_be32(fr + 8) != h.salt1 || ws_get_be32(fr + 12) != h.salt2) break;
            uint32_t p = ws_get_be32(fr);
            if (p >= 1 && p <= npages) covered[(p - 1) / 8] |= (uint8_t)(1u << ((p - 1) % 8));
        }
        if (i > 0) *nframes = first + i - 1;
        if (i < per) break;
        first += per;
    }
    free(buf);
    close(fd);
}

static int is_covered(const uint8_t *covered, uint32_t p) {
    return (covered[(p - 1) / 8] >> ((p - 1) % 8)) & 1;
}

/* Does the database as SQLite shows it still follow the shipped history?
** The live WAL's frames reach the store through the spool, so only the
** pages no frame of it writes need a look: each has kept its value since
** that WAL began, so it must equal the shipped page hash (the hashes are
** the state at the consumption position, which lies in that WAL or at the
** end of the one before it; the caller makes sure consumption has caught
** up). A page that differs was written by someone walship never saw: a file
** copied in, a process in rollback-journal mode, a checkpoint of frames
** walship never shipped. Pages a checkpoint copies in while this runs are
** covered by frames a second look at the WAL finds. Runs on the shipper,
** reading the whole file: only when the cheap evidence says so. Sets *ok,
** and on a mismatch writes a reason into why. */
#define VIEW_BAD_MAX 64
static int db_view_matches(shipper *sh, int *ok, char *why, size_t whyn, wserr *err) {
    ship_state *ss = &sh->ss;
    uint32_t n = ss->hs.r.db_pages, pgsz = ss->page_size;
    *ok = 1;
    why[0] = '\0';
    uint8_t *covered = calloc((size_t)n / 8 + 1, 1);
    uint8_t *buf = malloc((size_t)1 << 20 > pgsz ? (size_t)1 << 20 : pgsz);
    sqlite3_file *f = NULL;
    int rc = 0;
    if (covered == NULL || buf == NULL) {
        rc = wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
        goto out;
    }
    uint32_t nframes = 0, nframes2 = 0;
    int pgsz_differs = 0;
    wal_cover(sh, covered, n, &nframes, &pgsz_differs);
    if (pgsz_differs) {
        *ok = 0;
        snprintf(why, whyn, "its WAL has another page size");
        goto out;
    }
    if (ship_base_file(sh, &f, err) != 0) {
        wserr_clear(err);
        *ok = 0;
        snprintf(why, whyn, "the database file is gone");
        goto out;
    }
    sqlite3_int64 size = 0;
    f->pMethods->xFileSize(f, &size);
    uint32_t file_pages = (uint32_t)((uint64_t)size / pgsz);
    uint32_t bad[VIEW_BAD_MAX], nbad = 0, nbad_total = 0;
    uint32_t per = (uint32_t)(((size_t)1 << 20) / pgsz);
    if (per == 0) per = 1;
    for (uint32_t p = 1; p <= n; p += per) {
        uint32_t cnt = n - p + 1 < per ? n - p + 1 : per;
        memset(buf, 0, (size_t)cnt * pgsz);
        if (p <= file_pages) {
            uint32_t rd = file_pages - p + 1 < cnt ? file_pages - p + 1 : cnt;
            int r = f->pMethods->xRead(f, buf, (int)((size_t)rd * pgsz), (sqlite3_int64)(p - 1) * pgsz);
            if (r != SQLITE_OK && r != SQLITE_IOERR_SHORT_READ) {
                rc = wserr_set(err, WALSHIP_ERR_IO, "read %s to check it (error %d)", sh->db_path, r);
                goto out;
            }
        }
        for (uint32_t k = 0; k < cnt; k++) {
            uint32_t pg = p + k;
            if (is_covered(covered, pg)) continue;
            if (ws_page_hash(pg, buf + (size_t)k * pgsz, pgsz) == ws_rolling_get(&ss->hs.r, pg)) continue;
            nbad_total++;
            if (nbad < VIEW_BAD_MAX) bad[nbad++] = pg;
        }
    }
    if (nbad_total > 0) {
        /* A checkpoint may have copied frames appended since the first look. */
        wal_cover(sh, covered, n, &nframes2, &pgsz_differs);
        uint32_t still = 0, first_bad = 0;
        for (uint32_t i = 0; i < nbad; i++)
            if (!is_covered(covered, bad[i]) && still++ == 0) first_bad = bad[i];
        if (still > 0 || nbad_total > nbad) {
            *ok = 0;
            snprintf(why, whyn, "page %u (and %u more) differs from the shipped history",
                     first_bad ? first_bad : bad[0], nbad_total - 1);
            goto out;
        }
    }
    if (nframes == 0 && nframes2 == 0 && file_pages != n) {
        /* No live WAL: the file alone is the database. */
        *ok = 0;
        snprintf(why, whyn, "it has %u pages, the shipped history %u", file_pages, n);
    }
out:
    free(covered);
    free(buf);
    return rc;
}

static void publish_status(shipper *sh);

/* The store retries a failing request for a while: say so at once. Runs on
** the worker running this shipper's step (the request is made there). */
static void on_store_retry(void *ctx, const char *msg) {
    shipper *sh = ctx;
    set_error(sh, msg);
    publish_status(sh);
}

static int start_up(shipper *sh, wserr *err) {
    ship_state *ss = &sh->ss;
    int rc;
    if (ss->st == NULL) {
        if ((rc = store_open(sh->cfg.url, &ss->st, err))) return rc;
        store_set_retry_hook(ss->st, on_store_retry, sh);
    }
    /* Nothing is uploaded to a destination another database owns. */
    if ((rc = claim_destination(sh, err))) return rc;
    if ((rc = recover_segment_tmp(sh, 0, err))) return rc;
    cleanup_tmp_files(sh);
    ship_record rec;
    int have = 0;
    memset(&rec, 0, sizeof rec);
    if ((rc = shipstate_open(&ss->hs, spool_path(sh->sp), &rec, &have, err))) return rc;
    if ((rc = load_queue(sh, err))) return rc;
    /* Objects of a generation the state never recorded are orphans of a
    ** generation start cut short: never upload them (a new one starts). */
    for (int i = 0; i < ss->nqueue;) {
        queued *q = &ss->queue[i];
        if (q->generation > (have ? rec.generation : 0)) {
            char dir[PATH_MAX], path[PATH_MAX + 128];
            queue_dir(sh, dir, sizeof dir);
            snprintf(path, sizeof path, "%s/%s", dir, q->name);
            WS_INFO("queue_orphan", "db=%s removed=%s", sh->db_path, q->name);
            unlink(path);
            ss->queue_bytes -= q->bytes;
            memmove(q, q + 1, (size_t)(ss->nqueue - i - 1) * sizeof *q);
            ss->nqueue--;
        } else {
            i++;
        }
    }
    ss->rec = rec;
    ss->shipped_txid = rec.shipped_txid;
    if (!have || rec.generation == 0) {
        if (ss->gen_reason[0] == '\0')
            snprintf(ss->gen_reason, sizeof ss->gen_reason, "first shipped from this spool");
        return snapjob_start(sh, 1, err);
    }

    ss->gen = rec.generation;
    ss->next_txid = rec.txid + 1;
    ss->page_size = rec.page_size;
    ss->cur = rec.pos;
    ss->big_endian = (rec.pos.flags & WS_WALPOS_BIGEND) != 0;
    ss->resume.seq = rec.pos.log_seq;
    ss->resume.off = rec.pos.log_off;
    ss->prev = rec.prev;
    ss->have_prev = rec.have_prev != 0;
    ss->nbegun = (int)rec.nbegun;
    memcpy(ss->begun, rec.begun, sizeof ss->begun);
    wserr e2 = {0};
    if (redo_queue(sh, &e2) != 0) {
        WS_WARN("state_redo_failed", "db=%s err=\"%s\"", sh->db_path, e2.msg);
        return break_continuity(sh, "local state could not be recovered", err);
    }
    /* A position restored by redo comes without the file identity of its
    ** time; start-up's own file check stands in for it. */
    if (ss->resume.seq != rec.pos.log_seq || ss->resume.off != rec.pos.log_off) {
        memset(&ss->rec.end_id, 0, sizeof ss->rec.end_id);
        ss->have_prev = 0;
        WS_INFO("state_redone", "db=%s from_txid=%" PRIu64 " to_txid=%" PRIu64, sh->db_path,
                rec.txid, ss->next_txid - 1);
    }
    if (ws_rolling_recompute(&ss->hs.r) != ss->hs.r.chk) {
        WS_DEBUG("state_mismatch",
                 "slot_txid=%llu slot_pages=%u next_txid=%llu pages=%u chk=%016llx xor=%016llx "
                 "nqueue=%d",
                 (unsigned long long)rec.txid, rec.db_pages, (unsigned long long)ss->next_txid,
                 ss->hs.r.db_pages, (unsigned long long)ss->hs.r.chk,
                 (unsigned long long)ws_rolling_recompute(&ss->hs.r), ss->nqueue);
        return break_continuity(sh, "local page hashes do not match the shipped checksum", err);
    }
    ss->cur.log_seq = ss->resume.seq;
    ss->cur.log_off = ss->resume.off;
    ss->cur_known = ss->cur.salt1 != 0 || ss->cur.salt2 != 0 || (ss->cur.flags & WS_WALPOS_ENDED);
    if (!ss->cur_known) return break_continuity(sh, "no WAL position in the local state", err);
    /* What redo recovered must be in the state before any of those queued
    ** objects is uploaded and removed (they are the redo log). */
    if (ss->next_txid - 1 > rec.txid && (rc = ship_save_state(sh, err))) return rc;

    /* The spool must still hold everything from the resume position on. */
    spool_pos begin, end;
    if ((rc = spool_begin(sh->sp, &begin, err))) return rc;
    spool_end(sh->sp, &end);
    if (spool_pos_cmp(ss->resume, begin) < 0 || spool_pos_cmp(ss->resume, end) > 0)
        return break_continuity(sh, "the spool lost records since the last shipped position", err);
    /* The database file as walship last left it? If not (or unknown), its
    ** content is checked before anything more is shipped (ship_step). */
    spool_dbfile_check(sh->sp, sh->db_path);
    /* Is this generation still in the store (a wiped bucket, a changed URL)? */
    if (rec.last_snapshot_txid) {
        int in_queue = 0;
        for (int i = 0; i < ss->nqueue; i++)
            if (ss->queue[i].is_snapshot && ss->queue[i].generation == ss->gen) in_queue = 1;
        if (!in_queue) {
            char key[256];
            store_obj o;
            snap_key(key, sizeof key, ss->gen, rec.last_snapshot_txid);
            rc = store_head(ss->st, key, &o, err);
            if (rc == WALSHIP_ERR_NOTFOUND) {
                wserr_clear(err);
                return break_continuity(sh, "the store no longer holds this generation", err);
            }
            if (rc) return rc;
        }
    }
    /* The generation must be ours (a spool copied from another database's
    ** would extend its history). */
    rc = claim_generation_check(sh, ss->gen, err);
    if (rc == WALSHIP_ERR_OWNER) {
        WS_WARN("generation_foreign", "db=%s err=\"%s\"", sh->db_path, err->msg);
        wserr_clear(err);
        return break_continuity(sh, "the generation in the store belongs to another database", err);
    }
    if (rc) return rc;
    ss->marked_gen = ss->gen;
    ss->uploaded = ss->nqueue ? ss->queue[0].resume : ss->resume;
    return 0;
}

/* ---- status -------------------------------------------------------------------- */
static void publish_status(shipper *sh) {
    ship_state *ss = &sh->ss;
    spool_status st;
    memset(&st, 0, sizeof st);
    st.heartbeat_ms = ss->published.heartbeat_ms;
    st.pid = (int32_t)getpid();
    st.generation = ss->gen;
    st.txid = ss->next_txid ? ss->next_txid - 1 : 0;
    st.shipped_txid = ss->shipped_txid;
    st.queue_bytes = ss->queue_bytes;
    /* Everything before `uploaded` is in the store; when nothing is
    ** waiting locally that is the consumption position itself. */
    int local_pending = ss->nqueue > 0 || ss->segw != NULL || ss->tx_open ||
                        (ss->snap && snapjob_active(ss->snap));
    if (!local_pending && ss->cur_known) ss->uploaded = ss->resume;
    st.uploaded = ss->uploaded;
    if (ss->nqueue > 0)
        st.oldest_unshipped_ms = ss->queue[0].last_commit_ms;
    else if (ss->segw)
        st.oldest_unshipped_ms = ss->seg_first_commit_ms;
    pthread_mutex_lock(&sh->mu);
    ws_strlcpy(st.last_error, sh->vfs_error, sizeof st.last_error);
    pthread_mutex_unlock(&sh->mu);
    ws_strlcpy(st.generation_reason, ss->gen_reason, sizeof st.generation_reason);
    /* Unchanged: nothing to write. An idle database's step then leaves the
    ** shared page alone (each write of a page the kernel has written back
    ** costs a fault and an inode update). Readers only ask whether a
    ** shipper has published at all. */
    if (st.heartbeat_ms && memcmp(&st, &ss->published, sizeof st) == 0) return;
    st.heartbeat_ms = ws_now_ms();
    spool_status_set(sh->sp, &st);
    ss->published = st;
}

static int64_t fail_backoff(shipper *sh, const wserr *err) {
    ship_state *ss = &sh->ss;
    ss->backoff_ms = ss->backoff_ms ? ss->backoff_ms * 2 : 500;
    if (ss->backoff_ms > BACKOFF_MAX_MS) ss->backoff_ms = BACKOFF_MAX_MS;
    set_error(sh, err->msg);
    WS_WARN("ship_failed", "db=%s err=\"%s\" retry_ms=%" PRId64, sh->db_path, err->msg,
            ss->backoff_ms);
    return ws_mono_ms() + ss->backoff_ms;
}

/* A periodic snapshot is due after snapshot_interval, or once it pays for
** itself: when the segments stored since the last one add up to that
** snapshot's size (4 MiB at least). Bytes uploaded then stay within twice
** the segments' (a snapshot is only re-sent once as much history has
** accrued), and a restore downloads at most about two snapshots' worth.
** Before the size of a snapshot is known (a state from an older build):
** once the pages shipped add up to the database size, 16 MiB at least. */
static int snapshot_due(shipper *sh) {
    ship_state *ss = &sh->ss;
    if (ss->gen == 0 || ss->rec.last_snapshot_ms == 0) return 0;
    if (ws_now_ms() - ss->rec.last_snapshot_ms >= sh->cfg.snapshot_interval_ms) return 1;
    if (ss->rec.last_snapshot_bytes > 0) {
        uint64_t pay = (uint64_t)4 << 20;
        if (ss->rec.last_snapshot_bytes > pay) pay = ss->rec.last_snapshot_bytes;
        return ss->rec.seg_bytes_since_snapshot >= pay;
    }
    uint64_t db_bytes = (uint64_t)ss->hs.r.db_pages * ss->page_size;
    uint64_t floor = (uint64_t)16 << 20;
    return ss->rec.bytes_since_snapshot >= (db_bytes > floor ? db_bytes : floor);
}

/* ---- commits the spool does not know, and walship_flush ---------------------- */
/* Consumption has read every record appended so far. */
static int caught_up_with_spool(shipper *sh) {
    ship_state *ss = &sh->ss;
    spool_pos end;
    spool_end(sh->sp, &end);
    return spool_pos_cmp((spool_pos){ss->cur.log_seq, ss->cur.log_off}, end) >= 0;
}

/* Takes up commits the shared wal-index shows but no watermark recorded (a
** writer outside walship, or one whose watermark is on its way) as if a
** watermark had said so; the caller has caught up with the spool. Sets
** the salts and mx shared memory showed (mx 0: nothing). Every
** record is appended before the shared header can show what it announces
** (a WAL_BEGIN before the first commit of its WAL), so when the spool end
** has not moved since before the header was read, the header holds nothing
** the spool will still tell: commits in an unannounced WAL are a change
** outside walship. */
static int take_shm_commits(shipper *sh, uint32_t *salt1, uint32_t *salt2, uint32_t *mx,
                            int *taken, wserr *err) {
    ship_state *ss = &sh->ss;
    *mx = 0;
    *taken = 0;
    spool_pos before;
    spool_end(sh->sp, &before);
    walidx_hdr ih;
    if (ship_read_shm_header(sh, &ih) != 0 || ih.mx_frame == 0) {
        *taken = 1;
        return 0;
    }
    spool_pos after;
    spool_end(sh->sp, &after);
    if (spool_pos_cmp(before, after) != 0 || !caught_up_with_spool(sh)) return 0; /* next step */
    *salt1 = walidx_salt1(&ih);
    *salt2 = walidx_salt2(&ih);
    *mx = ih.mx_frame;
    *taken = 1;
    if (!ss->cur_known || ss->tx_open) return 0;
    if (same_wal(ss, *salt1, *salt2) && !(ss->cur.flags & WS_WALPOS_ENDED) &&
        *mx <= ss->pending_mx)
        return 0;
    if (same_wal(ss, *salt1, *salt2) && (ss->cur.flags & WS_WALPOS_ENDED) && *mx <= ss->cur.frame)
        return 0;
    spool_rec r;
    memset(&r, 0, sizeof r);
    r.type = SPOOL_REC_WATERMARK;
    r.salt1 = *salt1;
    r.salt2 = *salt2;
    r.mx_frame = *mx;
    r.page_size = walidx_page_size(&ih);
    r.time_ms = ws_now_ms(); /* never earlier than the commit */
    WS_DEBUG("shm_commits", "db=%s salt1=%08x mx=%u cur=%08x/%u", sh->db_path, *salt1, *mx,
             ss->cur.salt1, ss->cur.frame);
    return apply_record(sh, &r, err);
}

/* Committed frames walship knows of (pending_mx) cannot be read because
** the WAL file no longer holds that WAL, and no record explains it: a
** process outside walship removed or restarted the WAL (a writer of
** walship records the WAL's end and copies its frames before it touches
** the file). Handled as the VFS's SPOOL_END_LOST would be. */
static int check_wal_gone(shipper *sh, wserr *err) {
    ship_state *ss = &sh->ss;
    if (!ss->cur_known || (ss->cur.flags & WS_WALPOS_ENDED) || ss->pending_mx <= ss->cur.frame)
        return 0;
    spool_pos before;
    spool_end(sh->sp, &before);
    if (spool_pos_cmp((spool_pos){ss->cur.log_seq, ss->cur.log_off}, before) < 0) return 0;
    uint8_t hb[WAL_HDR_SIZE];
    wal_hdr h;
    int fd = open(sh->wal_path, O_RDONLY | O_CLOEXEC);
    int there = fd >= 0 && ws_pread_full(fd, hb, sizeof hb, 0) == (ssize_t)sizeof hb &&
                wal_hdr_parse(hb, &h) == 0 && h.salt1 == ss->cur.salt1 && h.salt2 == ss->cur.salt2;
    if (fd >= 0) close(fd);
    spool_pos after;
    spool_end(sh->sp, &after);
    if (there || spool_pos_cmp(before, after) != 0) return 0;
    WS_WARN("wal_gone", "db=%s salt1=%08x consumed=%u committed=%u", sh->db_path, ss->cur.salt1,
            ss->cur.frame, ss->pending_mx);
    spool_rec r;
    memset(&r, 0, sizeof r);
    r.type = SPOOL_REC_WAL_END;
    r.reason = SPOOL_END_LOST;
    r.salt1 = ss->cur.salt1;
    r.salt2 = ss->cur.salt2;
    r.mx_frame = ss->pending_mx;
    return wal_lost(sh, &r, err);
}

/* A walship_flush request not yet taken up becomes the target: everything
** recorded now, plus what shared memory shows committed. */
static int flush_take(shipper *sh, wserr *err) {
    ship_state *ss = &sh->ss;
    uint32_t req = spool_flush_requests(sh->sp);
    if (req == ss->flush_req || ss->flush_active || !caught_up_with_spool(sh)) return 0;
    int taken = 0;
    uint32_t s1 = 0, s2 = 0, mx = 0;
    int rc = take_shm_commits(sh, &s1, &s2, &mx, &taken, err);
    if (rc || !taken) return rc;
    ss->flush_req = req;
    ss->flush_active = 1;
    spool_end(sh->sp, &ss->flush_end);
    ss->flush_salt1 = s1;
    ss->flush_salt2 = s2;
    ss->flush_mx = mx;
    return 0;
}

/* Is the flush target in the store? */
static int flush_reached(shipper *sh) {
    ship_state *ss = &sh->ss;
    if (ss->nqueue > 0 || ss->segw != NULL || ss->tx_open || (ss->snap && snapjob_is_genstart(ss->snap)))
        return 0;
    if (!ss->cur_known) {
        /* No generation yet: only right if there is nothing to ship at all. */
        struct stat st;
        return ss->snap == NULL && ss->flush_mx == 0 &&
               (stat(sh->db_path, &st) != 0 || st.st_size == 0);
    }
    if (spool_pos_cmp((spool_pos){ss->cur.log_seq, ss->cur.log_off}, ss->flush_end) < 0) return 0;
    if (!(ss->cur.flags & WS_WALPOS_ENDED) && ss->pending_mx > ss->cur.frame) return 0;
    if (ss->flush_mx > 0 && same_wal(ss, ss->flush_salt1, ss->flush_salt2) &&
        ss->cur.frame < ss->flush_mx)
        return 0;
    return 1;
}

static void flush_finish(shipper *sh) {
    ship_state *ss = &sh->ss;
    if (!ss->flush_active || !flush_reached(sh)) return;
    ss->flush_active = 0;
    /* The status first: whoever the flush wakes reads it at once, and it
    ** must already show what the flush waited for (shipped_txid). */
    publish_status(sh);
    spool_flush_done_set(sh->sp, ss->flush_req);
}

/* The salts of the WAL now in the file; -1 if there is none (or no header). */
static int file_wal_salts(shipper *sh, uint32_t *s1, uint32_t *s2) {
    uint8_t hb[WAL_HDR_SIZE];
    wal_hdr h;
    int fd = open(sh->wal_path, O_RDONLY | O_CLOEXEC);
    int ok = fd >= 0 && ws_pread_full(fd, hb, sizeof hb, 0) == (ssize_t)sizeof hb &&
             wal_hdr_parse(hb, &h) == 0;
    if (fd >= 0) close(fd);
    if (!ok) return -1;
    *s1 = h.salt1;
    *s2 = h.salt2;
    return 0;
}

/* The database file was found not as walship left it (spool_dbfile_check):
** once consumption has caught up, its content must still follow the shipped
** history, or a new generation starts. */
static int check_suspect(shipper *sh, wserr *err) {
    ship_state *ss = &sh->ss;
    uint32_t n = spool_dbfile_suspects(sh->sp);
    if (n == ss->suspect_seen) return 0;
    if (!ss->cur_known || ss->snap != NULL || ss->tx_open || ss->pending_mx > ss->cur.frame) {
        if (!ss->cur_known || (ss->snap && snapjob_is_genstart(ss->snap))) ss->suspect_seen = n;
        return 0; /* a generation start reads the file anew anyway; or later */
    }
    /* The check holds while the WAL in the file is the one consumption
    ** stands in (or its successor, begun from the state consumed) and no
    ** record arrives meanwhile: a checkpoint and restart during the check
    ** would put pages of frames not consumed yet into the file. Otherwise
    ** it is tried again at a later step. */
    spool_pos e0, e1;
    spool_end(sh->sp, &e0);
    if (spool_pos_cmp((spool_pos){ss->cur.log_seq, ss->cur.log_off}, e0) < 0) return 0;
    uint32_t a1 = 0, a2 = 0, b1 = 0, b2 = 0;
    int had = file_wal_salts(sh, &a1, &a2) == 0;
    if (had && !(ss->cur.flags & WS_WALPOS_ENDED) && !same_wal(ss, a1, a2)) return 0;
    int ok = 0;
    char why[160];
    int rc = db_view_matches(sh, &ok, why, sizeof why, err);
    if (rc) return rc;
    spool_end(sh->sp, &e1);
    int has = file_wal_salts(sh, &b1, &b2) == 0;
    if (spool_pos_cmp(e0, e1) != 0 || had != has || a1 != b1 || a2 != b2) return 0;
    ss->suspect_seen = n;
    if (ok) {
        WS_INFO("dbfile_checked", "db=%s result=\"follows the shipped history\"", sh->db_path);
        spool_dbfile_note(sh->sp, sh->db_path);
        return 0;
    }
    char reason[320];
    snprintf(reason, sizeof reason, "the database file changed outside walship (%s)", why);
    return break_continuity(sh, reason, err);
}

/* ---- discarding ------------------------------------------------------------------ */
enum { DISCARD_NONE = 0, DISCARD_LIMIT = 1, DISCARD_OWNER = 2 };
#define DISCARD_RETRY_MIN_MS 2000
#define DISCARD_RETRY_MAX_MS 60000
#define LIMIT_CHECK_EVERY_MS 250
#define LIMIT_FLOOR ((uint64_t)1 << 30)

/* Stops keeping history: what is queued or being built is dropped, the
** state says "no generation", and from now on consumption only tells the
** VFS that every committed frame is taken care of (so the spool stays
** small and checkpoints copy nothing). Every committed transaction is in
** the database file; a new generation's snapshot picks it up when
** discarding ends (leave_discard). */
static void enter_discard(shipper *sh, int kind, const char *why) {
    ship_state *ss = &sh->ss;
    WS_ERROR("discarding", "db=%s reason=\"%s\" queued_bytes=%" PRIu64, sh->db_path, why,
             ss->queue_bytes);
    drop_open_segment(sh);
    snapjob_free(ss->snap);
    ss->snap = NULL;
    cleanup_tmp_files(sh);
    char dir[PATH_MAX];
    if (queue_dir(sh, dir, sizeof dir) == 0) {
        for (int i = 0; i < ss->nqueue; i++) {
            char path[PATH_MAX + 128];
            snprintf(path, sizeof path, "%s/%s", dir, ss->queue[i].name);
            unlink(path);
        }
    }
    ss->nqueue = 0;
    ss->queue_bytes = 0;
    ss->cur_known = 0;
    ss->gen = 0;
    ss->tx_open = 0;
    ss->pending_mx = 0;
    ss->nwm = 0;
    ss->discarding = kind;
    ss->upload_failing = 0;
    ss->discard_backoff_ms = DISCARD_RETRY_MIN_MS;
    ss->discard_retry_mono = ws_mono_ms() + ss->discard_backoff_ms;
    /* A restart must not take up the dropped history again. */
    memset(&ss->rec, 0, sizeof ss->rec);
    wserr e2 = {0};
    if (ss->hs.path && shipstate_save(&ss->hs, &ss->rec, &e2) != 0)
        WS_WARN("discard_state_failed", "db=%s err=\"%s\"", sh->db_path, e2.msg);
    set_error(sh, why);
    spool_flags_set(sh->sp, SPOOL_ST_DISCARDING | (kind == DISCARD_OWNER ? SPOOL_ST_PERMANENT : 0));
}

/* While discarding: now and then, see whether it can end (the store
** answers; the destination is ours again). Then a new generation starts. */
static void discard_retry(shipper *sh) {
    ship_state *ss = &sh->ss;
    if (ws_mono_ms() < ss->discard_retry_mono) return;
    wserr err = {0};
    int rc;
    if (ss->discarding == DISCARD_OWNER) {
        rc = claim_destination(sh, &err);
    } else {
        /* A store that answers reads may still refuse writes: a new
        ** generation's snapshot would fill the spool again. */
        rc = claim_writable(sh, &err);
    }
    if (rc == 0) {
        WS_WARN("discarding_ends", "db=%s action=\"new generation\"", sh->db_path);
        snprintf(ss->gen_reason, sizeof ss->gen_reason, "%s",
                 ss->discarding == DISCARD_OWNER ? "the destination became this database's"
                                                 : "the store answered again after the spool "
                                                   "outgrew its limit");
        ss->discarding = DISCARD_NONE;
        ss->retry_at_ms = 0;
        ss->backoff_ms = 0;
        spool_flags_set(sh->sp, 0);
        clear_error(sh);
        return; /* cur_known is 0: the step starts a new generation */
    }
    if (rc == WALSHIP_ERR_OWNER) {
        ss->discarding = DISCARD_OWNER;
        set_error(sh, err.msg);
        spool_flags_set(sh->sp, SPOOL_ST_DISCARDING | SPOOL_ST_PERMANENT);
    }
    ss->discard_backoff_ms *= 2;
    if (ss->discard_backoff_ms > DISCARD_RETRY_MAX_MS) ss->discard_backoff_ms = DISCARD_RETRY_MAX_MS;
    ss->discard_retry_mono = ws_mono_ms() + ss->discard_backoff_ms;
}

static uint64_t tmp_bytes(shipper *sh, const char *name) {
    char path[PATH_MAX];
    struct stat st;
    if (spool_file(sh, name, path, sizeof path) != 0 || stat(path, &st) != 0) return 0;
    return (uint64_t)st.st_size;
}

/* The spool's limit: walship_spool_limit, or twice the database (1 GiB at
** least). Checked while uploads fail: past it, the queued history goes. */
static void check_spool_limit(shipper *sh) {
    ship_state *ss = &sh->ss;
    int64_t now = ws_mono_ms();
    if (now - ss->limit_check_mono < LIMIT_CHECK_EVERY_MS) return;
    ss->limit_check_mono = now;
    uint64_t limit = sh->cfg.spool_limit;
    if (limit == 0) {
        uint64_t db = (uint64_t)ss->hs.r.db_pages * ss->page_size;
        limit = db * 2 > LIMIT_FLOOR ? db * 2 : LIMIT_FLOOR;
    }
    uint64_t used = ss->queue_bytes + spool_log_bytes(sh->sp);
    if (ss->segw) used += seg_writer_bytes(ss->segw);
    if (ss->snap) used += tmp_bytes(sh, "snap.tmp") + tmp_bytes(sh, "overlay.tmp");
    if (used <= limit) return;
    char why[WSERR_MSG_MAX], cause[200];
    pthread_mutex_lock(&sh->mu);
    ws_strlcpy(cause, sh->vfs_error, sizeof cause);
    pthread_mutex_unlock(&sh->mu);
    snprintf(why, sizeof why,
             "the spool reached its limit (%" PRIu64 " MiB, walship_spool_limit) while the store "
             "failed (%s): %" PRIu64 " MiB of queued history were dropped; a new generation "
             "starts when the store answers (committed transactions are all in the database)",
             limit >> 20, cause, ss->queue_bytes >> 20);
    enter_discard(sh, DISCARD_LIMIT, why);
}

/* The spool's disk is full. Everything local needs space, but uploading
** what is queued frees it and needs none: every queued object the durable
** state already covers goes now (the others are the state's redo log and
** stay), so a full disk drains as soon as the store takes the objects. */
static void upload_to_free_space(shipper *sh) {
    ship_state *ss = &sh->ss;
    wserr e = {0};
    if (ss->st == NULL) return;
    if (ss->nqueue == 0 &&
        (shipstate_peek(spool_path(sh->sp), &ss->rec) != 0 || load_queue(sh, &e) != 0))
        return;
    uint64_t before = ss->queue_bytes;
    upload_queue(sh, ws_mono_ms() + 5000, &e);
    if (ss->queue_bytes < before)
        WS_WARN("disk_full_upload", "db=%s freed_bytes=%" PRIu64 " still_queued=%d", sh->db_path,
                before - ss->queue_bytes, ss->nqueue);
}

/* ---- the step ------------------------------------------------------------------- */
int64_t ship_step(shipper *sh) {
    ship_state *ss = &sh->ss;
    int64_t now = ws_mono_ms();
    wserr err = {0};
    if (ss->phase == PH_UNELECTED) {
        if (!sh->cfg.upload) return now + 3600 * 1000; /* records only; never ships */
        int r = spool_try_elect(sh->sp, &err);
        if (r < 0) {
            /* Not even a candidate (EMFILE, say): the status of this
            ** process shows why (shipper_status_json). */
            set_error(sh, err.msg);
            ss->elect_failed = 1;
        } else if (ss->elect_failed) {
            clear_error(sh);
            ss->elect_failed = 0;
        }
        if (r <= 0) return now + ELECT_RETRY_MS;
        sh->elected = 1;
        ss->phase = PH_INIT;
        WS_INFO("elected", "db=%s pid=%d", sh->db_path, (int)getpid());
    }
    if (ss->phase == PH_INIT) {
        int rc0 = start_up(sh, &err);
        if (rc0 == WALSHIP_ERR_OWNER) {
            enter_discard(sh, DISCARD_OWNER, err.msg);
        } else if (rc0 != 0) {
            if (err.code == WALSHIP_ERR_NOSPACE) upload_to_free_space(sh);
            reset_volatile(sh);
            int64_t next = fail_backoff(sh, &err);
            publish_status(sh);
            return next;
        }
        ss->phase = PH_RUN;
        ss->next_retention_mono = now + (sh->cfg.retention_ms / 4 < 5000 ? sh->cfg.retention_ms / 4 : 5000);
    }

    int64_t deadline = now + STEP_MAX_MS;
    spool_pos before = {ss->cur.log_seq, ss->cur.log_off};
    int rc = 0;
    if (ss->discarding) discard_retry(sh);
    if (!ss->cur_known && ss->snap == NULL && !ss->discarding) rc = snapjob_start(sh, 1, &err);
    if (rc == 0 && ss->snap == NULL && ss->cur_known && snapshot_due(sh))
        rc = snapjob_start(sh, 0, &err);
    if (rc == 0) rc = consume(sh, deadline, &err);
    if (rc == 0) rc = check_wal_gone(sh, &err);
    if (rc == 0) rc = check_suspect(sh, &err);
    if (rc == 0) rc = flush_take(sh, &err);
    if (rc == 0 && ss->snap) rc = snapjob_step(sh, &err);
    if (rc == 0 && !segment_due(sh)) rc = sync_point(sh, &err);
    if (rc == 0 && segment_due(sh)) {
        ss->flush_seen = spool_flush_requests(sh->sp);
        rc = close_segment(sh, &err);
    }
    if (rc != 0) {
        /* Local failure (disk, memory, a corrupt spool): drop what is not
        ** durable and start again from the state file. */
        WS_ERROR("ship_reset", "db=%s err=\"%s\"", sh->db_path, err.msg);
        if (err.code == WALSHIP_ERR_NOSPACE) upload_to_free_space(sh);
        reset_volatile(sh);
        ss->phase = PH_INIT;
        int64_t next = fail_backoff(sh, &err);
        publish_status(sh);
        return next;
    }
    if (ss->segw == NULL && !ss->tx_open) ss->flush_seen = spool_flush_requests(sh->sp);

    /* An idle database is polled less and less often (up to once a
    ** second), so thousands of them cost next to nothing; any record
    ** brings the poll back to IDLE_POLL_MS. In-process commits need no
    ** polling to be found quickly only when the ship interval is 0 (they
    ** nudge); other processes' commits are found by this poll. */
    spool_pos after = {ss->cur.log_seq, ss->cur.log_off};
    if (spool_pos_cmp(before, after) != 0 || ss->segw || ss->nqueue || ss->snap)
        ss->idle_ms = IDLE_POLL_MS;
    else if (ss->idle_ms < IDLE_POLL_MAX_MS)
        ss->idle_ms = ss->idle_ms ? ss->idle_ms * 2 : IDLE_POLL_MS;
    if (ss->idle_ms > IDLE_POLL_MAX_MS) ss->idle_ms = IDLE_POLL_MAX_MS;
    int64_t next = ws_mono_ms() + ss->idle_ms;
    /* Idle polls fall on shared 250 ms ticks: a worker woken once runs the
    ** polls of every idle database due then, instead of one wake-up (two
    ** context switches) per database per second. */
    if (ss->idle_ms >= IDLE_POLL_MAX_MS) next += IDLE_TICK_MS - next % IDLE_TICK_MS;
    if (ss->nqueue > 0 && ws_mono_ms() >= ss->retry_at_ms) {
        wserr uerr = {0};
        int urc = upload_queue(sh, ws_mono_ms() + 5000, &uerr);
        if (urc == WALSHIP_ERR_OWNER) {
            enter_discard(sh, DISCARD_OWNER, uerr.msg);
        } else if (urc != 0) {
            ss->retry_at_ms = fail_backoff(sh, &uerr);
            ss->upload_failing = 1;
        } else {
            ss->upload_failing = 0;
            ss->backoff_ms = 0;
            clear_error(sh);
            if (ss->nqueue == 0 && ss->segw == NULL) ship_save_state(sh, &err);
        }
    }
    /* While uploads fail, the spool only grows: keep it within its limit. */
    if (ss->upload_failing && ss->nqueue > 0 && !ss->discarding) check_spool_limit(sh);
    if (ws_mono_ms() >= ss->next_retention_mono && ss->nqueue == 0 && !ss->discarding) {
        wserr rerr = {0};
        /* Only while the destination is ours: never delete another's. */
        int crc = claim_destination(sh, &rerr);
        if (crc == WALSHIP_ERR_OWNER)
            enter_discard(sh, DISCARD_OWNER, rerr.msg);
        else if (crc == 0 && retention_run(sh, &rerr) != 0)
            WS_WARN("retention_failed", "db=%s err=\"%s\"", sh->db_path, rerr.msg);
        /* Every ten minutes, or four times per window if that is shorter. */
        int64_t every = sh->cfg.retention_ms / 4;
        if (every > RETENTION_EVERY_MS || every <= 0) every = RETENTION_EVERY_MS;
        ss->next_retention_mono = ws_mono_ms() + every;
    }
    flush_finish(sh);
    /* Records before the durable resume position are never read again;
    ** whole files before it go once the position moves to a newer file. */
    if (ss->discarding && ss->resume.seq > ss->trimmed_seq) {
        spool_trim(sh->sp, ss->resume);
        ss->trimmed_seq = ss->resume.seq;
    } else if (ss->rec.pos.log_seq > ss->trimmed_seq) {
        spool_trim(sh->sp, (spool_pos){ss->rec.pos.log_seq, ss->rec.pos.log_off});
        ss->trimmed_seq = ss->rec.pos.log_seq;
    }
    publish_status(sh);
    /* Between segments, a database holds no descriptor or buffer it can
    ** have again when work comes: thousands of databases in one process
    ** then cost about two descriptors each (the spool's control file and
    ** log), not eight. */
    if (ss->segw == NULL && ss->snap == NULL && !ss->tx_open) release_idle(sh);

    /* When to come back. */
    if (ss->segw && !ss->tx_open) {
        int64_t due = ss->seg_opened_mono + sh->cfg.ship_interval_ms;
        if (seg_writer_ntx(ss->segw) != ss->seg_synced_ntx) {
            int64_t wait = spool_sync_requests(sh->sp) != ss->sync_seen ? SYNC_ASKED_MS
                                                                         : SYNC_POINT_MS;
            if (ss->seg_synced_mono + wait < due) due = ss->seg_synced_mono + wait;
        }
        if (due < next) next = due;
    }
    if (ss->snap && snapjob_active(ss->snap)) next = ws_mono_ms();
    /* Queued objects are due at their retry time; consumption, durability
    ** points and the spool limit keep their own pace meanwhile (a backoff
    ** of up to 30 s must not stop them: the VFS would copy every frame the
    ** shipper has not taken into the spool, unchecked). */
    if (ss->nqueue > 0 && ss->retry_at_ms < next)
        next = ss->retry_at_ms > ws_mono_ms() ? ss->retry_at_ms : ws_mono_ms();
    spool_pos end;
    spool_end(sh->sp, &end);
    if (spool_pos_cmp((spool_pos){ss->cur.log_seq, ss->cur.log_off}, end) < 0 && ss->cur_known)
        next = ws_mono_ms();
    return next;
}

int ship_idle(shipper *sh) {
    ship_state *ss = &sh->ss;
    if (!sh->elected) return 1;
    if (ss->phase != PH_RUN) return 0;
    spool_pos end;
    spool_end(sh->sp, &end);
    return ss->nqueue == 0 && ss->segw == NULL && !ss->tx_open && ss->snap == NULL &&
           spool_pos_cmp((spool_pos){ss->cur.log_seq, ss->cur.log_off}, end) >= 0;
}
