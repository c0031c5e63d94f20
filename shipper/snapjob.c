/*
** snapjob.c -- taking a snapshot of a live database without taking any lock.
**
** A snapshot is made the way a fuzzy backup plus redo is: copy the database
** file page by page while writers and checkpointers carry on, and record, in
** an overlay, the final version of every page that any WAL frame wrote
** between the start of the copy and the snapshot's position E. The image
** "copied page, unless the overlay has it" is then exactly the database at
** E:
**   - a page the overlay has: its latest frame at or before E is the value;
**   - a page it does not have was written by no frame of the current WAL (at
**     the start) or of any later one up to E. A checkpoint only ever copies
**     frames of the current WAL into the file, so that page did not change
**     while it was copied, and its value in the file is its value at E
**     (earlier WALs were fully checkpointed before they were restarted).
** E is chosen after the copy ends, at or beyond the commit point the shared
** wal-index header shows then, so every frame a checkpoint could have copied
** into the file during the copy is at or before E, and in the overlay.
**
** The overlay starts with frames 1..mx of the WAL that is current when the
** job starts; after that, ship.c feeds it every frame it consumes. It keeps
** one slot per page, overwritten in place (only the latest version counts),
** so it never holds more than the pages written, whatever the write rate.
** A page the overlay already has when the copy reaches it goes into the base
** as zeros: the image takes it from the overlay anyway.
**
** Bounded work under any write rate:
**   - the size to copy is taken once consumption is placed: pages a
**     checkpoint of an earlier WAL added are in it, later growth comes from
**     frames the overlay has, so the copy never chases a growing file;
**   - E is fixed when the copy ends (the spool's end and the shared header's
**     commit point), so reaching it takes working off what was recorded
**     before it, never what is written after. A busy database restarts its
**     WAL every few hundred frames, so consumption may pass through E's WAL
**     within one step: the feed notes every frame of E's WAL it sees.
** Each step copies at most 8 MiB after consumption had its turn, so neither
** starves the other.
**
** Two kinds:
**   generation start   the shipper has no valid history (first use, or
**                      continuity broken): the job also places the
**                      consumption position, transactions consumed during
**                      the copy are folded into the snapshot, and the new
**                      generation begins with it;
**   periodic           inside a generation: transactions keep being shipped
**                      as segments meanwhile, and the snapshot's checksum
**                      must equal the live one (a self-check).
**
** The job never blocks a writer or a checkpoint: it reads the database file
** through the base VFS (so SQLite's POSIX locks are left alone) and holds no
** SQLite lock at all. Work is done in bounded steps.
*/
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/log.h"
#include "../common/sysio.h"
#include "../common/util.h"
#include "shipper_impl.h"

#define COPY_BYTES_PER_STEP ((uint64_t)8 << 20)
#define FINISH_WAIT_MS 30000
#define AHEAD_GRACE_MS 5000

enum { J_COPY = 1, J_FINISH = 2 };

/* pgno -> offset of the page's one slot in the overlay file (a page written
** again is overwritten in place). Open addressing, grows at 50% load. */
typedef struct pagemap {
    uint32_t *keys; /* 0 = empty */
    uint64_t *vals;
    uint32_t cap, n;
} pagemap;

static int pm_put(pagemap *m, uint32_t k, uint64_t v);

static int pm_grow(pagemap *m) {
    uint32_t cap = m->cap ? m->cap * 2 : 1024;
    pagemap nm = {calloc(cap, sizeof *nm.keys), calloc(cap, sizeof *nm.vals), cap, 0};
    if (nm.keys == NULL || nm.vals == NULL) {
        free(nm.keys);
        free(nm.vals);
        return -1;
    }
    for (uint32_t i = 0; i < m->cap; i++)
        if (m->keys[i]) pm_put(&nm, m->keys[i], m->vals[i]);
    free(m->keys);
    free(m->vals);
    *m = nm;
    return 0;
}

/* The value of key k, or NULL if the map does not have it. */
static uint64_t *pm_find(const pagemap *m, uint32_t k) {
    if (m->cap == 0) return NULL;
    uint32_t i = (k * 2654435761u) & (m->cap - 1);
    while (m->keys[i]) {
        if (m->keys[i] == k) return &m->vals[i];
        i = (i + 1) & (m->cap - 1);
    }
    return NULL;
}

static int pm_put(pagemap *m, uint32_t k, uint64_t v) {
    if ((m->n + 1) * 2 > m->cap && pm_grow(m) != 0) return -1;
    uint32_t i = (k * 2654435761u) & (m->cap - 1);
    while (m->keys[i] && m->keys[i] != k) i = (i + 1) & (m->cap - 1);
    if (m->keys[i] == 0) m->n++;
    m->keys[i] = k;
    m->vals[i] = v;
    return 0;
}

struct snapjob {
    int genstart;
    int phase;
    uint64_t gen;
    uint32_t pgsz;
    uint32_t file_pages;
    uint32_t next_pgno;
    uint64_t *base_hash;
    sqlite3_file *dbf;     /* the shipper's (ship_base_file), not the job's */
    int tmp_fd;
    snap_writer *w;
    int ov_fd;
    uint64_t ov_len;
    pagemap map;
    uint32_t last_commit_size;
    int have_commit;
    uint32_t hdr_db_pages; /* database size in page 1's header once placed, 0 if unknown */
    uint8_t *buf;
    size_t bufcap;
    int64_t start_ms;      /* when the job started (for the log) */
    int64_t copied_ms;     /* when the copy ended */
    int64_t progress_ms;   /* J_FINISH: when consumption last moved towards */
    spool_pos progress_pos; /* ... target_log, and where it stood then */
    int64_t ahead_since;   /* when the catch-up target was taken */
    int target_set;        /* the commit point to reach before finishing */
    spool_pos target_log;  /* ... and the spool position */
    int target_wal_seen;   /* a frame of the target's WAL was consumed */
    uint32_t target_salt1, target_salt2, target_mx;
};

int snapjob_active(const snapjob *j) { return j != NULL; }
int snapjob_is_genstart(const snapjob *j) { return j && j->genstart; }

static int spool_tmp(shipper *sh, const char *name, char *out, size_t n) {
    return snprintf(out, n, "%s/%s", spool_path(shipper_spool(sh)), name) >= (int)n ? -1 : 0;
}

void snapjob_free(snapjob *j) {
    if (j == NULL) return;
    snap_writer_free(j->w);
    if (j->tmp_fd >= 0) close(j->tmp_fd);
    if (j->ov_fd >= 0) close(j->ov_fd);
    free(j->map.keys);
    free(j->map.vals);
    free(j->base_hash);
    free(j->buf);
    free(j);
}

/* Frees the job and removes its temp files. */
static void abandon(shipper *sh, snapjob *j) {
    char p[PATH_MAX];
    snapjob_free(j);
    if (spool_tmp(sh, "snap.tmp", p, sizeof p) == 0) unlink(p);
    if (spool_tmp(sh, "overlay.tmp", p, sizeof p) == 0) unlink(p);
}

int snapjob_feed(snapjob *j, uint32_t salt1, uint32_t salt2, uint32_t pgno, const uint8_t *page,
                 uint32_t commit_size) {
    /* Only a page's latest version counts: one slot per page, so the
    ** overlay never outgrows the pages written, whatever the write rate. */
    uint64_t *slot = pm_find(&j->map, pgno);
    uint64_t off = slot ? *slot : j->ov_len;
    if (ws_pwrite_all(j->ov_fd, page, j->pgsz, (off_t)off) != 0) return wserr_from_errno(errno);
    if (slot == NULL) {
        if (pm_put(&j->map, pgno, off) != 0) return WALSHIP_ERR_NOMEM;
        j->ov_len += j->pgsz;
    }
    /* Consumption may pass through the target's WAL inside one step (a busy
    ** database restarts its WAL every few hundred frames): noted here,
    ** where every consumed frame passes. */
    if (j->target_set && salt1 == j->target_salt1 && salt2 == j->target_salt2)
        j->target_wal_seen = 1;
    if (commit_size) {
        j->last_commit_size = commit_size;
        j->have_commit = 1;
    }
    return 0;
}

static int ensure_buf(snapjob *j, size_t n) {
    if (j->bufcap >= n) return 0;
    uint8_t *b = realloc(j->buf, n);
    if (b == NULL) return -1;
    j->buf = b;
    j->bufcap = n;
    return 0;
}

/* Finds how many frames of the WAL (header h) are committed when neither the
** spool nor the shared memory says: like SQLite's recovery, the last valid
** commit frame of the checksum chain. */
static uint32_t scan_committed(int fd, const wal_hdr *h) {
    size_t fsz = WAL_FRAME_HDR_SIZE + (size_t)h->page_size;
    uint8_t *fr = malloc(fsz);
    if (fr == NULL) return 0;
    wal_cksum ck = {.big_endian = (int)(h->magic & 1), .s1 = h->ck1, .s2 = h->ck2};
    uint32_t last_commit = 0;
    for (uint32_t n = 1;; n++) {
        if (ws_pread_full(fd, fr, fsz, (off_t)wal_frame_offset(n, h->page_size)) != (ssize_t)fsz)
            break;
        if (wal_frame_check(h, &ck, fr, h->page_size) != 0) break;
        if (ws_get_be32(fr + 4) != 0) last_commit = n;
    }
    free(fr);
    return last_commit;
}

/* Reads frames 1..upto of the WAL straight into the overlay (periodic
** snapshots: these were consumed before the job began). */
static int overlay_from_wal(shipper *sh, snapjob *j, uint32_t upto, wserr *err) {
    ship_state *ss = &sh->ss;
    if (upto == 0) return 0;
    int fd = open(sh->wal_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return wserr_set(err, WALSHIP_ERR_BUSY, "WAL moved on during snapshot start");
    uint8_t hb[WAL_HDR_SIZE];
    wal_hdr h;
    int rc = 0;
    if (ws_pread_full(fd, hb, sizeof hb, 0) != (ssize_t)sizeof hb || wal_hdr_parse(hb, &h) != 0 ||
        h.salt1 != ss->cur.salt1 || h.salt2 != ss->cur.salt2) {
        rc = wserr_set(err, WALSHIP_ERR_BUSY, "WAL moved on during snapshot start");
        goto out;
    }
    size_t fsz = WAL_FRAME_HDR_SIZE + (size_t)h.page_size;
    if (ensure_buf(j, fsz)) {
        rc = wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
        goto out;
    }
    wal_cksum ck = {.big_endian = (int)(h.magic & 1), .s1 = h.ck1, .s2 = h.ck2};
    for (uint32_t n = 1; n <= upto; n++) {
        if (ws_pread_full(fd, j->buf, fsz, (off_t)wal_frame_offset(n, h.page_size)) !=
                (ssize_t)fsz ||
            wal_frame_check(&h, &ck, j->buf, h.page_size) != 0) {
            rc = wserr_set(err, WALSHIP_ERR_BUSY, "WAL moved on during snapshot start");
            goto out;
        }
        if ((rc = snapjob_feed(j, h.salt1, h.salt2, ws_get_be32(j->buf),
                               j->buf + WAL_FRAME_HDR_SIZE, ws_get_be32(j->buf + 4))))
            goto out;
    }
    /* The chain must end where consumption stands, or this was another WAL. */
    if (ck.s1 != ss->cur.ck1 || ck.s2 != ss->cur.ck2)
        rc = wserr_set(err, WALSHIP_ERR_BUSY, "WAL moved on during snapshot start");
out:
    close(fd);
    return rc;
}

/* Places consumption at the start of a generation: the WAL as it is now,
** frames 1..mx of it into the overlay (through consume, which folds them). */
static int place_genstart(shipper *sh, snapjob *j, int *retry, wserr *err) {
    ship_state *ss = &sh->ss;
    *retry = 0;
    spool_pos p0;
    spool_end(shipper_spool(sh), &p0);
    ss->cur_known = 1;
    memset(&ss->cur, 0, sizeof ss->cur);
    ss->cur.flags = WS_WALPOS_ENDED;
    ss->cur.log_seq = p0.seq;
    ss->cur.log_off = p0.off;
    ss->resume = p0;
    ss->pending_mx = 0;
    ss->nwm = 0;
    ss->tx_open = 0;
    ss->page_size = j->pgsz;
    /* Nothing carries over from the history being left behind. */
    memset(&ss->rec.end_id, 0, sizeof ss->rec.end_id);
    ss->have_prev = 0;
    ss->nbegun = 0;

    int fd = open(sh->wal_path, O_RDONLY | O_CLOEXEC);
    uint8_t hb[WAL_HDR_SIZE];
    wal_hdr h;
    int file_wal = fd >= 0 && ws_pread_full(fd, hb, sizeof hb, 0) == (ssize_t)sizeof hb &&
                   wal_hdr_parse(hb, &h) == 0;
    /* A writer records a WAL's end and the next one's begin before it acts
    ** on the file: when the spool and the file disagree, that is happening
    ** right now; look again in a moment. (If the writer died in between,
    ** the disagreement stays: after a grace period the file wins.) */
    spool_walinfo wi0;
    spool_walinfo_get(shipper_spool(sh), &wi0);
    int in_flight = file_wal ? (wi0.cur_state == SPOOL_WAL_OPEN &&
                                (wi0.cur_salt1 != h.salt1 || wi0.cur_salt2 != h.salt2)) ||
                                   (wi0.cur_state == SPOOL_WAL_ENDED && wi0.cur_salt1 == h.salt1 &&
                                    wi0.cur_salt2 == h.salt2)
                             : wi0.cur_state == SPOOL_WAL_OPEN;
    if (in_flight) {
        int64_t now = ws_mono_ms();
        if (ss->place_mismatch_since == 0) ss->place_mismatch_since = now;
        if (now - ss->place_mismatch_since < 2000) {
            if (fd >= 0) close(fd);
            *retry = 1;
            return 0;
        }
    }
    ss->place_mismatch_since = 0;
    if (file_wal && h.page_size == j->pgsz) {
        uint32_t mx = 0;
        spool_walinfo wi;
        spool_walinfo_get(shipper_spool(sh), &wi);
        if (wi.wm_salt1 == h.salt1 && wi.wm_salt2 == h.salt2) mx = wi.wm_mx;
        walidx_hdr ih;
        int have_shm = ship_read_shm_header(sh, &ih) == 0;
        if (have_shm && walidx_salt1(&ih) == h.salt1 && walidx_salt2(&ih) == h.salt2 &&
            ih.mx_frame > mx)
            mx = ih.mx_frame;
        if (mx == 0 && !have_shm) mx = scan_committed(fd, &h);
        ship_start_wal(ss, &h);
        ss->pending_mx = mx;
        int rc = ship_read_wal_frames(sh, mx, err);
        if (rc) {
            close(fd);
            return rc;
        }
        if (ss->cur.frame < mx) *retry = 1; /* the WAL moved under us */
    }
    if (fd >= 0) close(fd);
    /* No WAL_BEGIN/WAL_END may have slipped in while we looked. */
    spool_pos pos = p0;
    spool_rec rec;
    wsbuf buf = {0};
    int r;
    while ((r = spool_read(shipper_spool(sh), NULL, &pos, &buf, &rec, err)) > 0)
        if (rec.type == SPOOL_REC_WAL_BEGIN || rec.type == SPOOL_REC_WAL_END) *retry = 1;
    wsbuf_free(&buf);
    if (r < 0) return -r;
    return 0;
}

static int take_file_size(snapjob *j, wserr *err);

int snapjob_start(shipper *sh, int genstart, wserr *err) {
    ship_state *ss = &sh->ss;
    snapjob *j = calloc(1, sizeof *j);
    if (j == NULL) return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
    j->tmp_fd = j->ov_fd = -1;
    j->genstart = genstart;
    j->gen = genstart ? ship_new_generation_id() : ss->gen;
    int rc = ship_base_file(sh, &j->dbf, err);
    if (rc) {
        snapjob_free(j);
        /* No database file yet: nothing to snapshot; try again later. */
        if (genstart) {
            wserr_clear(err);
            return 0;
        }
        return rc;
    }
    sqlite3_int64 fsize = 0;
    j->dbf->pMethods->xFileSize(j->dbf, &fsize);
    uint8_t h100[100];
    memset(h100, 0, sizeof h100);
    if (fsize >= 100) j->dbf->pMethods->xRead(j->dbf, h100, 100, 0);
    uint32_t pgsz = sqlite_hdr_page_size(h100);
    if (pgsz && genstart && (h100[18] != 2 || h100[19] != 2)) {
        /* Not (yet) in WAL format: the connection that opened it is
        ** switching it right now, rewriting page 1 in place. */
        snapjob_free(j);
        return 0;
    }
    if (pgsz == 0) {
        /* A database not yet written: the WAL header has the page size. */
        int fd = open(sh->wal_path, O_RDONLY | O_CLOEXEC);
        uint8_t hb[WAL_HDR_SIZE];
        wal_hdr h;
        if (fd >= 0 && ws_pread_full(fd, hb, sizeof hb, 0) == (ssize_t)sizeof hb &&
            wal_hdr_parse(hb, &h) == 0)
            pgsz = h.page_size;
        if (fd >= 0) close(fd);
    }
    if (pgsz == 0 || (!genstart && pgsz != ss->page_size)) {
        snapjob_free(j);
        return 0; /* nothing to snapshot yet */
    }
    j->pgsz = pgsz;
    j->file_pages = (uint32_t)((uint64_t)fsize / pgsz);
    j->next_pgno = 1;
    char tmp[PATH_MAX], ov[PATH_MAX];
    if (spool_tmp(sh, "snap.tmp", tmp, sizeof tmp) || spool_tmp(sh, "overlay.tmp", ov, sizeof ov)) {
        snapjob_free(j);
        return wserr_set(err, WALSHIP_ERR_INVALID, "spool path too long");
    }
    j->tmp_fd = ws_sys_open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    j->ov_fd = ws_sys_open(ov, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    j->base_hash = calloc(j->file_pages ? j->file_pages : 1, sizeof *j->base_hash);
    if (j->tmp_fd < 0 || j->ov_fd < 0 || j->base_hash == NULL) {
        rc = j->base_hash ? wserr_errno(err, wserr_from_errno(errno), errno, "create %s", tmp)
                          : wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
        abandon(sh, j);
        return rc;
    }
    rc = snap_writer_open(j->tmp_fd, pgsz, sh->db_id, j->gen, sh->cfg.zstd_level, &j->w, err);
    if (rc) {
        abandon(sh, j);
        return rc;
    }
    ss->snap = j;
    if (genstart) {
        int retry = 0;
        /* Tests act here: the file was looked at, consumption not yet placed. */
        ws_kill_point("genstart_place");
        rc = place_genstart(sh, j, &retry, err);
        if (rc || retry) {
            ss->snap = NULL;
            ss->cur_known = 0;
            abandon(sh, j);
            return rc;
        }
    } else {
        rc = overlay_from_wal(sh, j, (ss->cur.flags & WS_WALPOS_ENDED) ? 0 : ss->cur.frame, err);
        if (rc) {
            ss->snap = NULL;
            abandon(sh, j);
            if (rc == WALSHIP_ERR_BUSY) {
                wserr_clear(err);
                return 0; /* try again at the next step */
            }
            return rc;
        }
    }
    /* What to copy: the file as it is now that consumption is placed. */
    if ((rc = take_file_size(j, err))) {
        ss->snap = NULL;
        if (genstart) ss->cur_known = 0;
        abandon(sh, j);
        return rc;
    }
    j->phase = J_COPY;
    j->start_ms = ws_mono_ms();
    WS_INFO("snapshot_start", "db=%s generation=%016" PRIx64 " kind=%s pages=%u", sh->db_path,
            j->gen, genstart ? "generation-start" : "periodic", j->file_pages);
    return 0;
}

/* Copies the next run of database pages into base chunks. A page the
** overlay already has is taken from the overlay in the image, whatever the
** file holds: it goes into the base as zeros (which compress to nothing), so
** the snapshot does not carry it twice. */
static int copy_some(snapjob *j, wserr *err) {
    uint32_t per_chunk = SNAP_CHUNK_BYTES / j->pgsz;
    uint64_t budget = COPY_BYTES_PER_STEP;
    if (j->file_pages < per_chunk) per_chunk = j->file_pages ? j->file_pages : 1;
    if (ensure_buf(j, (size_t)per_chunk * j->pgsz))
        return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
    while (j->next_pgno <= j->file_pages && budget > 0) {
        uint32_t n = j->file_pages - j->next_pgno + 1;
        if (n > per_chunk) n = per_chunk;
        size_t bytes = (size_t)n * j->pgsz;
        int rc = j->dbf->pMethods->xRead(j->dbf, j->buf, (int)bytes,
                                         (sqlite3_int64)(j->next_pgno - 1) * j->pgsz);
        if (rc != SQLITE_OK && rc != SQLITE_IOERR_SHORT_READ)
            return wserr_set(err, WALSHIP_ERR_IO, "read database file for snapshot (error %d)", rc);
        for (uint32_t i = 0; i < n; i++) {
            uint8_t *page = j->buf + (size_t)i * j->pgsz;
            if (pm_find(&j->map, j->next_pgno + i)) memset(page, 0, j->pgsz);
            j->base_hash[j->next_pgno - 1 + i] = ws_page_hash(j->next_pgno + i, page, j->pgsz);
        }
        rc = snap_writer_base(j->w, j->next_pgno, n, j->buf, err);
        if (rc) return rc;
        j->next_pgno += n;
        budget = budget > bytes ? budget - bytes : 0;
    }
    return 0;
}

/* Takes the size to copy once consumption is placed (the overlay has every
** frame of the WAL in the file from here on). The file may have grown since
** the job opened it: a checkpoint of an earlier WAL, which finished before
** the WAL in the file began, copied pages past the old end; no frame the
** overlay will see writes them, so their value in the file is final. Growth
** after this comes from frames the overlay has, so the copy never chases a
** file that a busy database keeps growing: its work is bounded by the size
** taken here.
** The database's size in page 1's header is read here too, not when the job
** opened the file: that checkpoint may have changed it in between, and a
** generation start that folds no commit takes its size from it. */
static int take_file_size(snapjob *j, wserr *err) {
    sqlite3_int64 fsize = 0;
    if (j->dbf->pMethods->xFileSize(j->dbf, &fsize) != SQLITE_OK)
        return wserr_set(err, WALSHIP_ERR_IO, "size of the database file for snapshot");
    uint64_t pages = (uint64_t)fsize / j->pgsz;
    uint8_t h100[100];
    j->hdr_db_pages = 0;
    if (fsize >= 100 && j->dbf->pMethods->xRead(j->dbf, h100, 100, 0) == SQLITE_OK &&
        sqlite_hdr_page_size(h100) == j->pgsz &&
        ws_get_be32(h100 + 24) == ws_get_be32(h100 + 92))
        j->hdr_db_pages = ws_get_be32(h100 + 28);
    if (pages <= j->file_pages) return 0;
    if (pages > 0x7fffffffu) return wserr_set(err, WALSHIP_ERR_CORRUPT, "database file too large");
    uint64_t *h = realloc(j->base_hash, (size_t)pages * sizeof *h);
    if (h == NULL) return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
    j->base_hash = h;
    j->file_pages = (uint32_t)pages;
    return 0;
}

/* One overlay slot: where a page's latest version is in overlay.tmp. */
typedef struct ov_slot {
    uint64_t off;
    uint32_t pgno;
} ov_slot;

static int cmp_slot_off_desc(const void *a, const void *b) {
    uint64_t x = ((const ov_slot *)a)->off, y = ((const ov_slot *)b)->off;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* overlay.tmp is cut back by this much at a time while its pages move into
** the snapshot. */
#define OVERLAY_SHRINK_BYTES ((uint64_t)1 << 20)

/* Writes the overlay, computes the image's page hashes and checksum, and
** finishes the object. hashes_out receives a malloc'd array of db_pages.
** The overlay's pages move into the snapshot from the end of overlay.tmp
** backwards, and the file is cut short behind them, so the two files
** together never hold much more than the base plus the overlay once (the
** snapshot's overlay records are in no particular order; each page once). */
static int finalize_image(snapjob *j, uint32_t db_pages, uint64_t txid, int64_t commit_ms,
                          const ws_walpos *resume, uint64_t **hashes_out, uint64_t *chk_out,
                          wserr *err) {
    uint64_t *h = calloc(db_pages ? db_pages : 1, sizeof *h);
    ov_slot *slots = malloc((j->map.n ? j->map.n : 1) * sizeof *slots);
    int rc = 0;
    if (h == NULL || slots == NULL || ensure_buf(j, j->pgsz)) {
        rc = wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (uint32_t p = 1; p <= db_pages; p++)
        h[p - 1] = p <= j->file_pages ? j->base_hash[p - 1] : ws_zero_page_hash(p, j->pgsz);
    uint32_t n = 0;
    for (uint32_t i = 0; i < j->map.cap; i++)
        if (j->map.keys[i]) slots[n++] = (ov_slot){j->map.vals[i], j->map.keys[i]};
    qsort(slots, n, sizeof *slots, cmp_slot_off_desc);
    uint64_t kept = j->ov_len; /* overlay.tmp's length */
    for (uint32_t i = 0; i < n; i++) {
        uint32_t k = slots[i].pgno;
        if (k <= db_pages) {
            if (ws_pread_full(j->ov_fd, j->buf, j->pgsz, (off_t)slots[i].off) !=
                (ssize_t)j->pgsz) {
                rc = wserr_errno(err, WALSHIP_ERR_IO, errno, "read snapshot overlay");
                goto out;
            }
            h[k - 1] = ws_page_hash(k, j->buf, j->pgsz);
            if ((rc = snap_writer_overlay(j->w, k, j->buf, err))) goto out;
        }
        if (kept - slots[i].off >= OVERLAY_SHRINK_BYTES) {
            if (ftruncate(j->ov_fd, (off_t)slots[i].off) != 0) {
                rc = wserr_errno(err, wserr_from_errno(errno), errno, "shorten snapshot overlay");
                goto out;
            }
            kept = slots[i].off;
        }
    }
    uint64_t chk = 0;
    for (uint32_t p = 0; p < db_pages; p++) chk ^= h[p];
    if ((rc = snap_writer_finish(j->w, txid, commit_ms, db_pages, chk, resume, err))) goto out;
    if (ws_sys_fdatasync(j->tmp_fd) != 0) {
        rc = wserr_errno(err, wserr_from_errno(errno), errno, "sync snapshot");
        goto out;
    }
    *hashes_out = h;
    h = NULL;
    *chk_out = chk;
out:
    free(h);
    free(slots);
    return rc;
}

/* Has consumption reached the commit point the shared memory showed when
** the copy ended? The target is taken once: later commits do not move it,
** so a busy database cannot keep a snapshot from finishing. */
static int caught_up(shipper *sh, wserr *err, int *done) {
    ship_state *ss = &sh->ss;
    snapjob *j = ss->snap;
    *done = 0;
    if (!j->target_set) {
        /* Everything recorded by now (a checkpoint that truncates or deletes
        ** the WAL records its end first) plus what shared memory shows as
        ** committed (a watermark may still be on its way). */
        spool_end(shipper_spool(sh), &j->target_log);
        walidx_hdr ih;
        if (ship_read_shm_header(sh, &ih) == 0 && ih.mx_frame > 0) {
            j->target_salt1 = walidx_salt1(&ih);
            j->target_salt2 = walidx_salt2(&ih);
            j->target_mx = ih.mx_frame;
        } else {
            j->target_mx = 0; /* no live WAL content */
        }
        j->target_set = 1;
        j->ahead_since = ws_mono_ms();
        /* Consumption may be in the target's WAL already, or have left it:
        ** a writer records the next WAL's begin just before the shared
        ** memory shows that WAL. From here on, snapjob_feed notes it. */
        if ((ss->cur.salt1 == j->target_salt1 && ss->cur.salt2 == j->target_salt2) ||
            (ss->have_prev && ss->prev.salt1 == j->target_salt1 &&
             ss->prev.salt2 == j->target_salt2))
            j->target_wal_seen = 1;
    }
    if (ss->tx_open) return 0;
    if (spool_pos_cmp((spool_pos){ss->cur.log_seq, ss->cur.log_off}, j->target_log) < 0)
        return 0; /* consume the records up to the target first */
    if (j->target_mx == 0) {
        *done = 1;
        return 0;
    }
    int in_target = ss->cur.salt1 == j->target_salt1 && ss->cur.salt2 == j->target_salt2;
    if (in_target) j->target_wal_seen = 1;
    if (!in_target) {
        /* Either still in an older WAL (its end and the target's begin are
        ** on their way) or already past the target's WAL. */
        *done = j->target_wal_seen;
        return 0;
    }
    if (ss->cur.frame >= j->target_mx) {
        *done = 1;
        return 0;
    }
    if (ss->pending_mx < j->target_mx && !(ss->cur.flags & WS_WALPOS_ENDED)) {
        /* Committed, but its watermark is not consumed yet: it is still in
        ** the spool ahead of us, or about to be appended (the writer does so
        ** before releasing the write lock). Waiting keeps commit times
        ** exact. A commit that never gets one (a writer outside walship) is
        ** read after a grace period with nothing left to consume. */
        spool_pos end;
        spool_end(shipper_spool(sh), &end);
        if (spool_pos_cmp((spool_pos){ss->cur.log_seq, ss->cur.log_off}, end) < 0 ||
            ws_mono_ms() - j->ahead_since < AHEAD_GRACE_MS)
            return 0;
        ss->pending_mx = j->target_mx;
    }
    int rc = ship_read_wal_frames(sh, ss->pending_mx, err);
    if (rc) return rc;
    *done = ss->cur.frame >= j->target_mx && !ss->tx_open;
    return 0;
}

int snapjob_step(shipper *sh, wserr *err) {
    ship_state *ss = &sh->ss;
    snapjob *j = ss->snap;
    int rc = 0;
    if (j->phase == J_COPY) {
        rc = copy_some(j, err);
        if (rc) goto fail;
        if (j->next_pgno <= j->file_pages) return 0;
        j->phase = J_FINISH;
        j->copied_ms = j->progress_ms = ws_mono_ms();
        j->progress_pos = (spool_pos){ss->cur.log_seq, ss->cur.log_off};
    }
    int done = 0;
    rc = caught_up(sh, err, &done);
    if (rc) goto fail;
    if (!done) {
        /* The target is fixed, so consumption reaches it by working off
        ** what was recorded before it, however long a backlog takes; the
        ** clock runs only while consumption stands still short of it, or
        ** once it is past the target's records. */
        spool_pos at = {ss->cur.log_seq, ss->cur.log_off};
        if (spool_pos_cmp(j->progress_pos, j->target_log) < 0 &&
            spool_pos_cmp(at, j->progress_pos) != 0) {
            j->progress_pos = at;
            j->progress_ms = ws_mono_ms();
        }
        if (ws_mono_ms() - j->progress_ms > FINISH_WAIT_MS) {
            rc = wserr_set(err, WALSHIP_ERR_TIMEOUT,
                           "snapshot could not catch up with the WAL (is a writer bypassing "
                           "walship?)");
            goto fail;
        }
        return 0;
    }

    /* The image is at the current consumption position. */
    uint32_t db_pages;
    uint64_t txid;
    if (j->genstart) {
        /* No commit folded: the image is the file as placed, whose size
        ** page 1 says (the file may be longer, never shorter). */
        db_pages = j->have_commit ? j->last_commit_size
                   : j->hdr_db_pages && j->hdr_db_pages <= j->file_pages ? j->hdr_db_pages
                                                                         : j->file_pages;
        txid = ss->next_txid ? ss->next_txid : 1;
    } else {
        db_pages = ss->hs.r.db_pages;
        txid = ss->next_txid - 1;
    }
    if (db_pages == 0) {
        /* An empty database: nothing worth a generation yet. */
        ss->snap = NULL;
        abandon(sh, j);
        ss->cur_known = 0;
        return 0;
    }
    int64_t commit_ms = ss->rec.last_commit_ms ? ss->rec.last_commit_ms : ws_now_ms();
    ws_walpos resume = ss->cur;
    resume.flags = (ss->cur.flags & WS_WALPOS_ENDED) | (ss->big_endian ? WS_WALPOS_BIGEND : 0);
    resume.page_size = j->pgsz;
    resume.log_seq = ss->resume.seq;
    resume.log_off = ss->resume.off;
    uint64_t *hashes = NULL, chk = 0;
    rc = finalize_image(j, db_pages, txid, commit_ms, &resume, &hashes, &chk, err);
    if (rc) goto fail;
    if (!j->genstart && chk != ss->hs.r.chk) {
        free(hashes);
        WS_ERROR("snapshot_mismatch",
                 "db=%s txid=%" PRIu64 " snapshot=%016" PRIx64 " live=%016" PRIx64, sh->db_path,
                 txid, chk, ss->hs.r.chk);
        rc = wserr_set(err, WALSHIP_ERR_CORRUPT,
                       "periodic snapshot does not match the shipped history; discarded");
        goto fail;
    }
    /* Transactions up to txid must be in a closed segment before the
    ** snapshot that includes them is recorded. */
    if (!j->genstart && (rc = ship_close_segment_if_open(sh, err))) {
        free(hashes);
        goto fail;
    }
    queued q;
    memset(&q, 0, sizeof q);
    snprintf(q.name, sizeof q.name, "%016" PRIx64 "-%016" PRIx64 "-%016" PRIx64 ".snap", j->gen,
             txid, txid);
    q.is_snapshot = 1;
    q.generation = j->gen;
    q.first_txid = q.last_txid = txid;
    q.last_commit_ms = commit_ms;
    q.resume.seq = resume.log_seq;
    q.resume.off = resume.log_off;
    q.wal_salt1 = resume.salt1;
    q.wal_salt2 = resume.salt2;
    q.wal_frame = resume.frame;
    q.bytes = snap_writer_bytes(j->w);
    char tmp[PATH_MAX];
    spool_tmp(sh, "snap.tmp", tmp, sizeof tmp);
    rc = ship_enqueue(sh, tmp, &q, err);
    if (rc) {
        free(hashes);
        goto fail;
    }
    ws_kill_point(j->genstart ? "genstart_queued" : "snap_queued");
    if (j->genstart) {
        ss->gen = j->gen;
        ss->next_txid = txid + 1;
        ss->page_size = j->pgsz;
        ss->hs.r.page_size = j->pgsz;
        rc = shipstate_replace(&ss->hs, hashes, db_pages, chk);
        if (rc) {
            free(hashes);
            rc = wserr_set(err, rc, "out of memory");
            goto fail;
        }
    }
    free(hashes);
    ss->rec.last_snapshot_txid = txid;
    ss->rec.last_snapshot_ms = ws_now_ms();
    ss->rec.bytes_since_snapshot = 0;
    ss->rec.last_snapshot_bytes = q.bytes;
    ss->rec.seg_bytes_since_snapshot = 0;
    ss->snap = NULL;
    WS_INFO("snapshot_done",
            "db=%s generation=%016" PRIx64 " txid=%" PRIu64 " pages=%u bytes=%" PRIu64
            " overlay_pages=%u copy_ms=%" PRId64 " catch_up_ms=%" PRId64,
            sh->db_path, j->gen, txid, db_pages, q.bytes, j->map.n, j->copied_ms - j->start_ms,
            ws_mono_ms() - j->copied_ms);
    abandon(sh, j);
    /* Persist: the state now describes the snapshot's position. */
    return ship_save_state(sh, err);
fail:
    ss->snap = NULL;
    if (j->genstart) ss->cur_known = 0; /* a new attempt re-places consumption */
    abandon(sh, j);
    return rc;
}
