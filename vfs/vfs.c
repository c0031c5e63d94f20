/*
** vfs.c -- the "walship" VFS: a shim over the default VFS that ships every
** committed WAL transaction of a database to object storage.
**
** USAGE
**   walship_register(NULL, 0);            (or load walship.so as an extension)
**   sqlite3_open_v2("file:app.db?walship_url=s3%3A%2F%2Fbucket%2Fapp", &db,
**                   SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_URI,
**                   "walship");
**   Options: URI parameters walship_<name> or WALSHIP_<NAME> in the
**   environment (shipper/config.h). Inside SQL: PRAGMA walship_status and
**   SELECT walship_flush(timeout_ms).
**
** IMPLEMENTATION NOTES
**   The shim follows ext/misc/cksumvfs.c: each sqlite3_file it opens is a
**   ws_file with the real file right after it; every method forwards, and a
**   few are intercepted. Only the main database, its WAL and its rollback
**   journal are wrapped; everything else goes straight to the base VFS.
**
**   Commit detection. A WAL transaction commits while its connection holds
**   the WAL write lock (shm lock slot 0). When a connection takes that lock
**   and again just before it releases it, the shim reads the wal-index
**   header from the mapped shm region 0. If (salts, mxFrame) differ from the
**   last watermark in the spool, frames 1..mxFrame of that WAL are committed:
**   a WATERMARK record (24 bytes, no page data) is appended. Nothing is ever
**   inferred from a commit frame being written (ARCHITECTURE.md section 9).
**
**   Checkpoint events. A WAL header write at offset 0 (restart, or first
**   write after a truncate or delete), a truncate that cuts committed frames
**   (TRUNCATE checkpoint) and the delete of the WAL at last close could
**   destroy frames the shipper has not yet captured. Before forwarding any of
**   them the shim copies the committed frames after the shipper's published
**   position into the spool (FRAMES records), appends WAL_END (and WAL_BEGIN
**   for a new header) and syncs the spool. Checkpoints themselves are never
**   delayed or blocked; the copy costs something only when the shipper lags.
**
**   All spool appends happen while SQLite holds the WAL write lock or the
**   exclusive database lock, which serialises them across processes.
**
**   Journal modes. New connections are switched to WAL by the auto-extension
**   (extension.c); PRAGMA journal_mode=<not wal> and locking_mode=EXCLUSIVE
**   are refused with an error; a write in rollback-journal mode is reported
**   as "replication broken" in status and the log.
*/
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/log.h"
#include "../common/sysio.h"
#include "../common/util.h"
#include "../format/spoolrec.h"
#include "../format/wal.h"
#include "../shipper/shipper.h"
#include "sqlite_api.h"
#include "vfs_internal.h"
#include "walship.h"

enum { KIND_MAIN = 1, KIND_WAL = 2, KIND_JOURNAL = 3 };

typedef struct ws_file ws_file;
struct ws_file {
    sqlite3_file base;
    int kind;
    shipper *sh;                 /* KIND_MAIN: NULL when not shipping (read-only, no URL) */
    const volatile void *shm0;   /* KIND_MAIN: shm region 0 as mapped by this connection */
    walidx_hdr at_write;         /* KIND_MAIN: header when WRITE was acquired */
    int have_at_write;
    int holds_write;
    ws_file *db;                 /* KIND_WAL, KIND_JOURNAL: the main database file */
    char *path;                  /* KIND_MAIN, KIND_JOURNAL: file name (owned) */
    sqlite3_file *real;
};

static sqlite3_vfs ws_vfs;
#define BASE_VFS ((sqlite3_vfs *)ws_vfs.pAppData)
#define REAL(f) (((ws_file *)(f))->real)
/* How long a WAL restart waits for the durability point its checkpoint
** asked for before copying the frames itself (vfs on_wal_header). */
#define RESTART_WAIT_MS 10

/* ---- logging into SQLite's error log ----------------------------------------- */
static void log_to_sqlite(int level, const char *line) {
    sqlite3_log(level <= WS_LOG_ERROR ? SQLITE_ERROR : SQLITE_WARNING, "walship: %s", line);
}

/* ---- wal-index access ------------------------------------------------------- */
static int read_idx_hdr(ws_file *f, walidx_hdr *h) {
    if (f->shm0 == NULL) return -1;
    return walidx_hdr_read(f->shm0, h);
}

static void append_rec(ws_file *f, const uint8_t *rec, size_t n, int sync) {
    wserr err = {0};
    if (spool_append(shipper_spool(f->sh), rec, n, sync, &err) != 0)
        shipper_report_error(f->sh, "spool append failed: %s", err.msg);
}

/* Appends a WATERMARK for header h if it says more than the last one did.
** Caller holds the WAL write lock or the exclusive database lock. */
static void note_header(ws_file *f, const walidx_hdr *h) {
    spool *sp = shipper_spool(f->sh);
    spool_walinfo wi;
    spool_walinfo_get(sp, &wi);
    uint32_t s1 = walidx_salt1(h), s2 = walidx_salt2(h);
    if (h->mx_frame == 0) return; /* an empty WAL commits nothing */
    if (s1 == wi.wm_salt1 && s2 == wi.wm_salt2 && h->mx_frame == wi.wm_mx) return;
    uint8_t rec[SPOOL_REC_OVERHEAD + 24];
    int64_t now = ws_now_ms();
    size_t n = spool_rec_encode_watermark(rec, s1, s2, h->mx_frame, walidx_page_size(h), now);
    append_rec(f, rec, n, 0);
    WS_DEBUG("watermark", "salt1=%08x mx=%u time=%lld", s1, h->mx_frame, (long long)now);
    wi.wm_salt1 = s1;
    wi.wm_salt2 = s2;
    wi.wm_mx = h->mx_frame;
    if (wi.cur_state != SPOOL_WAL_OPEN || wi.cur_salt1 != s1 || wi.cur_salt2 != s2) {
        /* The live WAL is the one in shared memory. If the spool recorded
        ** its end (or a successor's begin) but the writer died before acting
        ** on it, the WAL lives on: follow it again, so that its frames are
        ** copied before it really restarts. */
        wi.cur_salt1 = s1;
        wi.cur_salt2 = s2;
        wi.cur_state = SPOOL_WAL_OPEN;
    }
    spool_walinfo_set(sp, &wi);
    shipper_nudge(f->sh, h->mx_frame);
}

/* The identity of the database file now (zeros if it cannot be read). */
static void db_identity(shipper *sh, spool_dbid *id) {
    struct stat st;
    memset(id, 0, sizeof *id);
    if (stat(shipper_db_path(sh), &st) != 0) return;
    id->dev = (uint64_t)st.st_dev;
    id->ino = (uint64_t)st.st_ino;
    id->size = (uint64_t)st.st_size;
    id->ctime_ns = (int64_t)st.st_ctim.tv_sec * 1000000000 + st.st_ctim.tv_nsec;
}

/* ---- the database file as walship left it ----------------------------------- */
/* Before walship's own writes to the database file (a checkpoint or a WAL
** recovery, which hold the CKPT lock; the checkpoint at last close and a
** journal-mode switch, which hold the exclusive lock; each excludes every
** other walship writer): a file that is not as walship last left it was
** written by someone else, and the shipper checks its content before
** shipping more. The first process to open a database after every other
** user is gone always runs SQLite's WAL recovery, so a file changed while
** walship was not running is caught there. */
static void dbfile_check(ws_file *f) {
    if (spool_dbfile_check(shipper_spool(f->sh), shipper_db_path(f->sh)))
        WS_INFO("dbfile_changed", "db=%s action=\"shipper checks the file\"",
                shipper_db_path(f->sh));
}

/* After walship's own writes: remember the file as it is now. */
static void dbfile_note(shipper *sh) { spool_dbfile_note(shipper_spool(sh), shipper_db_path(sh)); }

/* ---- materialisation ------------------------------------------------------- */
/* Reads n bytes at off from the WAL, through SQLite's handle or a plain fd. */
typedef struct wal_source {
    sqlite3_file *file;
    int fd;
} wal_source;

static int source_read(const wal_source *src, void *buf, size_t n, uint64_t off) {
    if (src->file) {
        int rc = src->file->pMethods->xRead(src->file, buf, (int)n, (sqlite3_int64)off);
        return rc == SQLITE_OK ? 0 : -1;
    }
    ssize_t r = ws_pread_full(src->fd, buf, n, (off_t)off);
    return r == (ssize_t)n ? 0 : -1;
}

/* Copies the committed frames of the WAL (salt1, salt2) that the shipper has
** not yet captured (those after its published position, up to mx) into the
** spool, then appends WAL_END. Returns SQLITE_OK, or an error code that the
** caller returns to SQLite so that nothing is destroyed (a full disk makes
** the checkpoint fail rather than lose transactions). */
static int materialize(ws_file *f, const wal_source *src, uint32_t salt1, uint32_t salt2,
                       uint32_t mx, uint32_t reason) {
    spool *sp = shipper_spool(f->sh);
    wserr err = {0};
    uint8_t walhdr[WAL_HDR_SIZE];
    wal_hdr wh;
    uint32_t first = 1;
    int wrote = 0;
    if (source_read(src, walhdr, sizeof walhdr, 0) != 0 || wal_hdr_parse(walhdr, &wh) != 0 ||
        wh.salt1 != salt1 || wh.salt2 != salt2) {
        /* The WAL the spool has open is not in the file: a process outside
        ** walship checkpointed and removed (or replaced) it. Nothing can be
        ** copied; the end says so, with what walship knew was committed,
        ** and the shipper checks the database file against the shipped
        ** history before anything else ships (a new generation unless it
        ** still matches). */
        WS_WARN("wal_lost", "db=%s salt1=%08x known_frames=%u", f->path ? f->path : "",
                salt1, mx);
        reason = SPOOL_END_LOST;
        first = mx + 1; /* nothing to copy */
    } else {
        uint32_t s1, s2, sf;
        spool_shipped_get(sp, &s1, &s2, &sf);
        if (s1 == salt1 && s2 == salt2) first = sf + 1;
    }
    uint8_t *buf = NULL;
    while (first <= mx) {
        uint32_t per = SPOOL_FRAMES_MAX_BYTES / (WAL_FRAME_HDR_SIZE + wh.page_size);
        uint32_t n = mx - first + 1 < per ? mx - first + 1 : per;
        size_t total = spool_rec_frames_size(n, wh.page_size);
        uint8_t *nb = realloc(buf, total);
        if (nb == NULL) {
            free(buf);
            shipper_report_error(f->sh, "out of memory copying WAL frames to the spool");
            return SQLITE_NOMEM;
        }
        buf = nb;
        size_t bytes = (size_t)n * (WAL_FRAME_HDR_SIZE + wh.page_size);
        if (source_read(src, buf + spool_rec_frames_data_offset(), bytes,
                        wal_frame_offset(first, wh.page_size)) != 0) {
            free(buf);
            shipper_report_error(f->sh, "could not read WAL frames %u..%u to copy them", first,
                                 first + n - 1);
            return SQLITE_IOERR_READ;
        }
        spool_rec_frames_seal(buf, salt1, salt2, first, n, wh.page_size);
        if (spool_append(sp, buf, total, 0, &err) != 0) {
            free(buf);
            shipper_report_error(f->sh, "could not copy WAL frames to the spool (%s); "
                                        "the checkpoint is refused so nothing is lost",
                                 err.msg);
            return err.code == WALSHIP_ERR_NOSPACE ? SQLITE_FULL : SQLITE_IOERR_WRITE;
        }
        spool_count_copy(sp, n, bytes);
        WS_DEBUG("copy", "salt1=%08x first=%u n=%u", salt1, first, n);
        first += n;
        wrote = 1;
    }
    free(buf);
    uint8_t rec[SPOOL_REC_OVERHEAD + SPOOL_END_PAYLOAD];
    spool_dbid id;
    db_identity(f->sh, &id);
    size_t n = spool_rec_encode_end(rec, salt1, salt2, mx, reason, ws_now_ms(), &id);
    /* Copied frames must be durable before the WAL is overwritten or
    ** removed; syncing the end record makes them so. Without any, only the
    ** record of the switch is at stake: lost to a power failure, it costs a
    ** new generation, never a transaction. */
    if (spool_append(sp, rec, n, wrote, &err) != 0) {
        shipper_report_error(f->sh, "spool append failed: %s", err.msg);
        return err.code == WALSHIP_ERR_NOSPACE ? SQLITE_FULL : SQLITE_IOERR_WRITE;
    }
    spool_walinfo wi;
    spool_walinfo_get(sp, &wi);
    wi.cur_salt1 = salt1;
    wi.cur_salt2 = salt2;
    wi.cur_state = SPOOL_WAL_ENDED;
    spool_walinfo_set(sp, &wi);
    if (wrote && spool_rotate(sp, &err) != 0)
        WS_WARN("spool_rotate_failed", "err=\"%s\"", err.msg);
    shipper_nudge(f->sh, 0);
    return SQLITE_OK;
}

/* The committed frame count of WAL (s1, s2) as far as this connection and
** the spool know. */
static uint32_t committed_mx(ws_file *db, uint32_t s1, uint32_t s2) {
    uint32_t mx = 0;
    spool_walinfo wi;
    spool_walinfo_get(shipper_spool(db->sh), &wi);
    if (wi.wm_salt1 == s1 && wi.wm_salt2 == s2) mx = wi.wm_mx;
    if (db->have_at_write && walidx_salt1(&db->at_write) == s1 &&
        walidx_salt2(&db->at_write) == s2 && db->at_write.mx_frame > mx)
        mx = db->at_write.mx_frame;
    return mx;
}

/* Which WAL is about to be restarted, truncated or deleted. The header in
** the file says it best: the spool may have recorded an end that a writer
** killed in between never carried out (the WAL then lived on). Without a
** valid header, the WAL the spool has open (if any) is the one. Returns 0
** if there is such a WAL. */
static int open_wal_salts(ws_file *db, const wal_source *src, uint32_t *s1, uint32_t *s2) {
    uint8_t buf[WAL_HDR_SIZE];
    wal_hdr h;
    if (source_read(src, buf, sizeof buf, 0) == 0 && wal_hdr_parse(buf, &h) == 0) {
        *s1 = h.salt1;
        *s2 = h.salt2;
        return 0;
    }
    spool_walinfo wi;
    spool_walinfo_get(shipper_spool(db->sh), &wi);
    if (wi.cur_state != SPOOL_WAL_OPEN) return -1;
    *s1 = wi.cur_salt1;
    *s2 = wi.cur_salt2;
    return 0;
}

/* A new WAL header is about to be written at offset 0. */
static int on_wal_header(ws_file *w, const uint8_t *hdrbuf) {
    ws_file *db = w->db;
    wal_hdr nh;
    if (wal_hdr_parse(hdrbuf, &nh) != 0) return SQLITE_OK; /* not a header: leave it */
    wal_source src = {.file = w->real, .fd = -1};
    uint32_t s1, s2;
    if (open_wal_salts(db, &src, &s1, &s2) == 0 && (s1 != nh.salt1 || s2 != nh.salt2)) {
        uint32_t mx = committed_mx(db, s1, s2);
        /* The checkpoint before this restart asked the shipper for a
        ** durability point; it is usually done or nearly so, and waiting a
        ** little for it costs less than copying up to a whole WAL and
        ** syncing the copy. */
        shipper_wait_durable(db->sh, s1, s2, mx, RESTART_WAIT_MS);
        int rc = materialize(db, &src, s1, s2, mx, SPOOL_END_RESTART);
        if (rc != SQLITE_OK) return rc;
        ws_kill_point("wal_end");
    }
    uint8_t rec[SPOOL_REC_OVERHEAD + SPOOL_BEGIN_PAYLOAD];
    spool_dbid id;
    db_identity(db->sh, &id);
    size_t n = spool_rec_encode_begin(rec, hdrbuf, ws_now_ms(), &id);
    wserr err = {0};
    spool *sp = shipper_spool(db->sh);
    /* Not synced: whatever came before it already is (materialize), and a
    ** begin record lost to a power failure costs a new generation. */
    if (spool_append(sp, rec, n, 0, &err) != 0) {
        shipper_report_error(db->sh, "spool append failed: %s", err.msg);
        return err.code == WALSHIP_ERR_NOSPACE ? SQLITE_FULL : SQLITE_IOERR_WRITE;
    }
    spool_walinfo wi;
    spool_walinfo_get(sp, &wi);
    wi.cur_salt1 = nh.salt1;
    wi.cur_salt2 = nh.salt2;
    wi.cur_state = SPOOL_WAL_OPEN;
    spool_walinfo_set(sp, &wi);
    dbfile_note(db->sh); /* a journal-mode switch may have written page 1 */
    ws_kill_point("wal_begin");
    return SQLITE_OK;
}

/* The WAL is about to be truncated to size bytes. */
static int on_wal_truncate(ws_file *w, sqlite3_int64 size) {
    ws_file *db = w->db;
    wal_source src = {.file = w->real, .fd = -1};
    uint32_t s1, s2;
    if (open_wal_salts(db, &src, &s1, &s2) != 0) return SQLITE_OK;
    uint8_t buf[WAL_HDR_SIZE];
    wal_hdr h;
    if (source_read(&src, buf, sizeof buf, 0) != 0 || wal_hdr_parse(buf, &h) != 0 ||
        h.salt1 != s1 || h.salt2 != s2)
        return SQLITE_OK; /* the file no longer holds that WAL: already handled */
    uint32_t mx = committed_mx(db, s1, s2);
    if (size >= (sqlite3_int64)wal_frame_offset(mx + 1, h.page_size) && size >= WAL_HDR_SIZE)
        return SQLITE_OK; /* cuts only frames that are not committed */
    int rc = materialize(db, &src, s1, s2, mx, SPOOL_END_TRUNCATE);
    if (rc == SQLITE_OK) ws_kill_point("wal_truncate");
    return rc;
}

/* The WAL at wal_path is about to be deleted (last connection closing). */
static int on_wal_delete(shipper *sh, const char *wal_path) {
    ws_file tmp;
    memset(&tmp, 0, sizeof tmp);
    tmp.sh = sh;
    walidx_hdr fin;
    if (shipper_take_final_hdr(sh, &fin) == 0) {
        tmp.at_write = fin;
        tmp.have_at_write = 1;
    }
    int fd = open(wal_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return SQLITE_OK; /* nothing to save */
    wal_source src = {.file = NULL, .fd = fd};
    uint32_t s1, s2;
    int rc = SQLITE_OK;
    if (open_wal_salts(&tmp, &src, &s1, &s2) == 0)
        rc = materialize(&tmp, &src, s1, s2, committed_mx(&tmp, s1, s2), SPOOL_END_DELETE);
    close(fd);
    if (rc == SQLITE_OK) ws_kill_point("wal_delete");
    return rc;
}

/* ---- io methods -------------------------------------------------------------- */
static int wsClose(sqlite3_file *pFile) {
    ws_file *f = (ws_file *)pFile;
    int rc = REAL(f)->pMethods ? REAL(f)->pMethods->xClose(REAL(f)) : SQLITE_OK;
    if (f->kind == KIND_JOURNAL && f->db && f->db->sh) {
        /* A rollback-journal transaction just ended. If the database is
        ** still not in WAL format, it was a write walship cannot ship. */
        uint8_t ver[2] = {0, 0};
        sqlite3_file *dbreal = f->db->real;
        if (dbreal->pMethods->xRead(dbreal, ver, 2, 18) == SQLITE_OK && ver[0] != 2 && ver[0] != 0)
            shipper_report_error(f->db->sh,
                                 "%s was written in rollback-journal mode, which walship cannot "
                                 "ship: run PRAGMA journal_mode=WAL",
                                 f->db->path ? f->db->path : "database");
    }
    if (f->sh) shipper_detach(f->sh);
    f->sh = NULL;
    sqlite3_free(f->path);
    f->path = NULL;
    return rc;
}

static int wsRead(sqlite3_file *f, void *p, int n, sqlite3_int64 off) {
    return REAL(f)->pMethods->xRead(REAL(f), p, n, off);
}

static int wsWrite(sqlite3_file *pFile, const void *p, int n, sqlite3_int64 off) {
    ws_file *f = (ws_file *)pFile;
    if (f->kind == KIND_WAL && off == 0 && n >= WAL_HDR_SIZE && f->db && f->db->sh) {
        int rc = on_wal_header(f, p);
        if (rc != SQLITE_OK) return rc;
        rc = REAL(f)->pMethods->xWrite(REAL(f), p, n, off);
        if (rc == SQLITE_OK) ws_kill_point("wal_header"); /* written, nothing committed */
        return rc;
    }
    return REAL(f)->pMethods->xWrite(REAL(f), p, n, off);
}

static int wsTruncate(sqlite3_file *pFile, sqlite3_int64 size) {
    ws_file *f = (ws_file *)pFile;
    if (f->kind == KIND_WAL && f->db && f->db->sh) {
        int rc = on_wal_truncate(f, size);
        if (rc != SQLITE_OK) return rc;
    }
    return REAL(f)->pMethods->xTruncate(REAL(f), size);
}

static int wsSync(sqlite3_file *f, int flags) { return REAL(f)->pMethods->xSync(REAL(f), flags); }
static int wsFileSize(sqlite3_file *f, sqlite3_int64 *p) {
    return REAL(f)->pMethods->xFileSize(REAL(f), p);
}
static int wsLock(sqlite3_file *pFile, int l) {
    ws_file *f = (ws_file *)pFile;
    int rc = REAL(f)->pMethods->xLock(REAL(f), l);
    /* In WAL mode only the checkpoint at last close and a journal-mode
    ** switch take the exclusive lock: both write the file. */
    if (rc == SQLITE_OK && l == SQLITE_LOCK_EXCLUSIVE && f->kind == KIND_MAIN && f->sh)
        dbfile_check(f);
    return rc;
}
static int wsUnlock(sqlite3_file *f, int l) { return REAL(f)->pMethods->xUnlock(REAL(f), l); }
static int wsCheckReservedLock(sqlite3_file *f, int *p) {
    return REAL(f)->pMethods->xCheckReservedLock(REAL(f), p);
}
static int wsSectorSize(sqlite3_file *f) { return REAL(f)->pMethods->xSectorSize(REAL(f)); }
static int wsDeviceCharacteristics(sqlite3_file *f) {
    return REAL(f)->pMethods->xDeviceCharacteristics(REAL(f));
}

/* Handles PRAGMAs addressed to the VFS: walship_status, and the journal and
** locking modes walship cannot ship. */
static int handle_pragma(ws_file *f, char **azArg) {
    const char *name = azArg[1];
    const char *val = azArg[2];
    if (sqlite3_stricmp(name, "walship_status") == 0) {
        char *json = sqlite3_malloc(8192);
        if (json == NULL) return SQLITE_NOMEM;
        if (f->sh)
            shipper_status_json(f->sh, json, 8192);
        else
            snprintf(json, 8192, "{\"shipping\":false}");
        azArg[0] = json;
        return SQLITE_OK;
    }
    if (f->sh == NULL || val == NULL) return SQLITE_NOTFOUND;
    if (sqlite3_stricmp(name, "journal_mode") == 0 && sqlite3_stricmp(val, "wal") != 0) {
        azArg[0] = sqlite3_mprintf("walship: journal_mode=%s is not supported: databases "
                                   "opened through walship stay in WAL mode",
                                   val);
        return SQLITE_ERROR;
    }
    if (sqlite3_stricmp(name, "locking_mode") == 0 && sqlite3_stricmp(val, "exclusive") == 0) {
        azArg[0] = sqlite3_mprintf("walship: locking_mode=EXCLUSIVE is not supported: it keeps "
                                   "the WAL index out of shared memory, where walship watches "
                                   "commits");
        return SQLITE_ERROR;
    }
    return SQLITE_NOTFOUND;
}

static int wsFileControl(sqlite3_file *pFile, int op, void *pArg) {
    ws_file *f = (ws_file *)pFile;
    if (op == SQLITE_FCNTL_PRAGMA && f->kind == KIND_MAIN) {
        int rc = handle_pragma(f, (char **)pArg);
        if (rc != SQLITE_NOTFOUND) return rc;
    }
    if (op == SQLITE_FCNTL_VFSNAME) {
        int rc = REAL(f)->pMethods->xFileControl(REAL(f), op, pArg);
        if (rc == SQLITE_OK) {
            char **pz = (char **)pArg;
            *pz = sqlite3_mprintf("walship/%z", *pz);
        }
        return rc;
    }
    return REAL(f)->pMethods->xFileControl(REAL(f), op, pArg);
}

static int wsShmMap(sqlite3_file *pFile, int iPg, int pgsz, int bExtend, void volatile **pp) {
    ws_file *f = (ws_file *)pFile;
    int rc = REAL(f)->pMethods->xShmMap(REAL(f), iPg, pgsz, bExtend, pp);
    if (rc == SQLITE_OK && iPg == 0 && *pp) f->shm0 = *pp;
    return rc;
}

static int wsShmLock(sqlite3_file *pFile, int offset, int n, int flags) {
    ws_file *f = (ws_file *)pFile;
    int write_slot = f->sh && offset == WALIDX_LOCK_WRITE && (flags & SQLITE_SHM_EXCLUSIVE);
    if (write_slot && (flags & SQLITE_SHM_UNLOCK) && f->holds_write) {
        /* Still holding WRITE: the header is stable and final. */
        walidx_hdr h;
        if (read_idx_hdr(f, &h) == 0)
            note_header(f, &h);
        else
            WS_DEBUG("write_release_unreadable", "db=%s shm=%p", f->path, (const void *)f->shm0);
        f->holds_write = 0;
        f->have_at_write = 0;
    }
    int rc = REAL(f)->pMethods->xShmLock(REAL(f), offset, n, flags);
    if (rc == SQLITE_OK && f->sh && offset == WALIDX_LOCK_CKPT && (flags & SQLITE_SHM_EXCLUSIVE)) {
        /* A checkpoint (or a recovery) by this connection: it writes the
        ** database file while it holds CKPT. */
        if (flags & SQLITE_SHM_LOCK) {
            dbfile_check(f);
            shipper_sync_request(f->sh); /* before the restart that may follow */
        } else
            dbfile_note(f->sh);
    }
    if (rc == SQLITE_OK && write_slot && (flags & SQLITE_SHM_LOCK)) {
        f->holds_write = 1;
        f->have_at_write = read_idx_hdr(f, &f->at_write) == 0;
        /* Commits this process did not see (another process's recovery, a
        ** writer outside walship) show up as a jump at acquisition. */
        if (f->have_at_write) note_header(f, &f->at_write);
    }
    return rc;
}

static void wsShmBarrier(sqlite3_file *f) { REAL(f)->pMethods->xShmBarrier(REAL(f)); }

static int wsShmUnmap(sqlite3_file *pFile, int deleteFlag) {
    ws_file *f = (ws_file *)pFile;
    if (deleteFlag && f->sh) {
        /* The last connection is closing under the exclusive database lock:
        ** keep the final header for the WAL delete that follows. */
        walidx_hdr h;
        if (read_idx_hdr(f, &h) == 0) {
            note_header(f, &h);
            shipper_stash_final_hdr(f->sh, &h);
        }
    }
    f->shm0 = NULL;
    return REAL(f)->pMethods->xShmUnmap(REAL(f), deleteFlag);
}

static int wsFetch(sqlite3_file *f, sqlite3_int64 off, int n, void **pp) {
    return REAL(f)->pMethods->xFetch(REAL(f), off, n, pp);
}
static int wsUnfetch(sqlite3_file *f, sqlite3_int64 off, void *p) {
    return REAL(f)->pMethods->xUnfetch(REAL(f), off, p);
}

static const sqlite3_io_methods ws_io_methods = {
    3, wsClose, wsRead, wsWrite, wsTruncate, wsSync, wsFileSize, wsLock, wsUnlock,
    wsCheckReservedLock, wsFileControl, wsSectorSize, wsDeviceCharacteristics, wsShmMap,
    wsShmLock, wsShmBarrier, wsShmUnmap, wsFetch, wsUnfetch};

/* ---- vfs methods ------------------------------------------------------------- */
static const char *uri_param(void *ctx, const char *name) {
    return sqlite3_uri_parameter((sqlite3_filename)ctx, name);
}

static int wsOpen(sqlite3_vfs *pVfs, sqlite3_filename zName, sqlite3_file *pFile, int flags,
                  int *pOutFlags) {
    ws_file *f = (ws_file *)pFile;
    sqlite3_vfs *base = BASE_VFS;
    int wrap = zName && (flags & (SQLITE_OPEN_MAIN_DB | SQLITE_OPEN_WAL |
                                  SQLITE_OPEN_MAIN_JOURNAL));
    if (!wrap) return base->xOpen(base, zName, pFile, flags, pOutFlags);
    memset(f, 0, sizeof *f);
    f->real = (sqlite3_file *)&f[1];
    if (flags & SQLITE_OPEN_MAIN_DB) {
        f->kind = KIND_MAIN;
        ws_config cfg;
        wserr err = {0};
        if (ws_config_load(&cfg, zName, uri_param, (void *)zName, &err) != 0) {
            if (!(flags & SQLITE_OPEN_READONLY) || err.code != WALSHIP_ERR_INVALID ||
                strstr(err.msg, "no destination") == NULL) {
                WS_ERROR("open_refused", "err=\"%s\"", err.msg);
                pFile->pMethods = NULL;
                return SQLITE_CANTOPEN;
            }
            /* Read-only without a destination: a plain reader, not shipped. */
        } else if (shipper_attach(zName, &cfg, &f->sh, &err) != 0) {
            WS_ERROR("open_refused", "err=\"%s\" db=%s", err.msg, zName);
            pFile->pMethods = NULL;
            return SQLITE_CANTOPEN;
        }
        f->path = sqlite3_mprintf("%s", zName);
    } else {
        f->kind = (flags & SQLITE_OPEN_WAL) ? KIND_WAL : KIND_JOURNAL;
        sqlite3_file *dbf = sqlite3_database_file_object(zName);
        if (dbf && dbf->pMethods == &ws_io_methods && ((ws_file *)dbf)->kind == KIND_MAIN)
            f->db = (ws_file *)dbf;
    }
    int rc = base->xOpen(base, zName, f->real, flags, pOutFlags);
    if (rc != SQLITE_OK) {
        if (f->sh) shipper_detach(f->sh);
        sqlite3_free(f->path);
        pFile->pMethods = NULL;
        return rc;
    }
    pFile->pMethods = &ws_io_methods;
    return SQLITE_OK;
}

static int wsDelete(sqlite3_vfs *pVfs, const char *zPath, int dirSync) {
    sqlite3_vfs *base = BASE_VFS;
    size_t len = zPath ? strlen(zPath) : 0;
    if (len > 4 && strcmp(zPath + len - 4, "-wal") == 0) {
        char *db = sqlite3_mprintf("%.*s", (int)(len - 4), zPath);
        shipper *sh = db ? shipper_find(db) : NULL;
        sqlite3_free(db);
        if (sh) {
            int rc = on_wal_delete(sh, zPath);
            if (rc == SQLITE_OK) {
                rc = base->xDelete(base, zPath, dirSync);
                dbfile_note(sh); /* the checkpoint at close wrote the file */
            }
            shipper_detach(sh);
            return rc;
        }
    }
    return base->xDelete(base, zPath, dirSync);
}

static int wsAccess(sqlite3_vfs *v, const char *z, int flags, int *pOut) {
    return BASE_VFS->xAccess(BASE_VFS, z, flags, pOut);
}
static int wsFullPathname(sqlite3_vfs *v, const char *z, int n, char *out) {
    return BASE_VFS->xFullPathname(BASE_VFS, z, n, out);
}
static void *wsDlOpen(sqlite3_vfs *v, const char *z) { return BASE_VFS->xDlOpen(BASE_VFS, z); }
static void wsDlError(sqlite3_vfs *v, int n, char *z) { BASE_VFS->xDlError(BASE_VFS, n, z); }
static void (*wsDlSym(sqlite3_vfs *v, void *p, const char *z))(void) {
    return BASE_VFS->xDlSym(BASE_VFS, p, z);
}
static void wsDlClose(sqlite3_vfs *v, void *p) { BASE_VFS->xDlClose(BASE_VFS, p); }
static int wsRandomness(sqlite3_vfs *v, int n, char *z) {
    return BASE_VFS->xRandomness(BASE_VFS, n, z);
}
static int wsSleep(sqlite3_vfs *v, int us) { return BASE_VFS->xSleep(BASE_VFS, us); }
static int wsCurrentTime(sqlite3_vfs *v, double *p) {
    return BASE_VFS->xCurrentTime(BASE_VFS, p);
}
static int wsGetLastError(sqlite3_vfs *v, int n, char *z) {
    return BASE_VFS->xGetLastError ? BASE_VFS->xGetLastError(BASE_VFS, n, z) : 0;
}
static int wsCurrentTimeInt64(sqlite3_vfs *v, sqlite3_int64 *p) {
    return BASE_VFS->xCurrentTimeInt64(BASE_VFS, p);
}

static sqlite3_vfs ws_vfs = {
    2,    sizeof(ws_file), 1024, NULL, "walship", NULL,
    wsOpen, wsDelete, wsAccess, wsFullPathname, wsDlOpen, wsDlError, wsDlSym, wsDlClose,
    wsRandomness, wsSleep, wsCurrentTime, wsGetLastError, wsCurrentTimeInt64,
    NULL, NULL, NULL};

int ws_vfs_is_walship(sqlite3 *db, const char *schema) {
    sqlite3_vfs *v = NULL;
    if (sqlite3_file_control(db, schema, SQLITE_FCNTL_VFS_POINTER, &v) != SQLITE_OK) return 0;
    return v == &ws_vfs;
}

int walship_register(const char *base_vfs, int make_default) {
    int rc;
#ifndef WALSHIP_EXTENSION
    /* A loaded extension runs inside an initialised SQLite already. */
    rc = sqlite3_initialize();
    if (rc != SQLITE_OK) return rc;
#endif
    if (sqlite3_vfs_find("walship") != NULL) return SQLITE_OK;
    sqlite3_vfs *base = sqlite3_vfs_find(base_vfs);
    if (base == NULL) return SQLITE_NOTFOUND;
    if (base->iVersion < 2 || base->xCurrentTimeInt64 == NULL) return SQLITE_ERROR;
    ws_vfs.pAppData = base;
    ws_vfs.szOsFile = (int)sizeof(ws_file) + base->szOsFile;
    ws_vfs.mxPathname = base->mxPathname;
    ws_log_set_sink(log_to_sqlite, WS_LOG_WARN);
    shipper_set_base_vfs(base);
    rc = sqlite3_vfs_register(&ws_vfs, make_default);
    if (rc != SQLITE_OK) return rc;
    return ws_register_auto_extension();
}

int walship_flush(const char *db_path, int timeout_ms) {
    shipper *sh = shipper_find(db_path);
    if (sh == NULL) return -WALSHIP_ERR_NOTFOUND;
    int rc = shipper_flush(sh, timeout_ms);
    shipper_detach(sh);
    return rc;
}
