/*
** spool.c -- the spool directory, its shared control block and its log.
** See spool.h for the protocol; docs/FORMAT.md for the bytes.
*/
#include "spool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sched.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/log.h"
#include "../common/sysio.h"

#define CTL_MAGIC 0x57534354u /* "WSCT" */
#define CTL_VERSION 3u /* 3: the election moved from the lock file to ctl */
#define CTL_SIZE 4096
#define ROTATE_BYTES ((uint64_t)4 << 20)

/* The shared control block. Every field is an atomic so that concurrent
** access from threads of one process is well defined; across processes the
** same lock-free atomics work on the shared mapping. The published end of
** the log is one 64-bit word (file sequence and offset packed), so a
** process killed while publishing leaves the old end or the new one, never
** half of each. One seqlock, ship_lock, gives readers consistent snapshots
** of the fields the one elected shipper writes; since that shipper can be
** killed inside a write section, readers never wait on it for long and the
** next writer repairs the counter (see the seqlock functions). */
struct ctl_block {
    uint32_t magic;
    uint32_t version;
    _Atomic uint64_t log_pos; /* POS_PACK(seq, end) */
    uint64_t pad0;
    _Atomic uint32_t cur_salt1, cur_salt2, cur_state, pad1;
    _Atomic uint32_t wm_salt1, wm_salt2, wm_mx, pad2;
    _Atomic uint32_t ship_lock;
    _Atomic uint32_t shipped_salt1, shipped_salt2, shipped_frame;
    _Atomic uint64_t shipped_check;
    _Atomic uint32_t flush_req;
    _Atomic uint32_t sync_req; /* durability points asked for (zero in older blocks) */
    _Atomic int64_t st_heartbeat_ms;
    _Atomic int32_t st_pid;
    uint32_t pad4;
    _Atomic uint64_t st_generation, st_txid, st_shipped_txid;
    _Atomic int64_t st_oldest_ms;
    _Atomic uint64_t st_up_seq, st_up_off, st_queue_bytes;
    _Atomic uint64_t st_err[SPOOL_ERR_MAX / 8];
    _Atomic uint64_t dbfile_evidence; /* spool_dbfile_note(); survives a rebuild */
    _Atomic uint32_t flush_done;      /* flush requests fully served (shipper) */
    _Atomic uint32_t st_flags;        /* SPOOL_ST_* (shipper) */
    _Atomic uint32_t dbfile_suspect;  /* bumped when the file is not as walship left it */
    _Atomic uint64_t st_genwhy[SPOOL_ERR_MAX / 8]; /* under ship_lock, like the status */
    /* what the shipper put into the store (zero in a block made by an older
    ** build, and after a rebuild) */
    _Atomic uint64_t up_segments, up_segment_bytes, up_snapshots, up_snapshot_bytes;
    /* WAL frames the VFS copied into the spool because the shipper had not
    ** made them durable before SQLite restarted, truncated or deleted the WAL
    ** (zero in a block made by an older build) */
    _Atomic uint64_t copied_frames, copied_bytes;
};
_Static_assert(sizeof(struct ctl_block) <= CTL_SIZE, "ctl block fits its file");

struct spool {
    char *dir;
    int ctl_fd;
    struct ctl_block *ctl;
    /* producer state: touched only under SQLite's WAL write lock */
    int wr_fd;
    uint64_t wr_seq;
    uint64_t dir_synced_seq; /* log files up to this one have a durable directory entry */
    /* the consumer's reader: touched only by the shipper task */
    spool_reader rd;
    /* election */
    _Atomic int elected; /* this object holds the election lock (ELECT_BYTE of ctl) */
};

#define RLX memory_order_relaxed

/* ---- the log position word ------------------------------------------------------ */
#define POS_OFF_BITS 36 /* 64 GiB per log file; 2^28 log files */
#define POS_SEQ_MAX (((uint64_t)1 << (64 - POS_OFF_BITS)) - 1)
static uint64_t pos_pack(uint64_t seq, uint64_t off) { return seq << POS_OFF_BITS | off; }
static uint64_t pos_seq(uint64_t w) { return w >> POS_OFF_BITS; }
static uint64_t pos_off(uint64_t w) { return w & (((uint64_t)1 << POS_OFF_BITS) - 1); }

/* ---- seqlocks -------------------------------------------------------------- */
/* Single-writer seqlocks without fences (ThreadSanitizer does not model
** fences): the writer makes the counter odd, stores the fields with release
** semantics, then makes it even with release; the reader loads the counter
** and the fields with acquire, then the counter again. A reader that sees a
** new field value therefore also sees the odd counter and retries.
**
** The writer is another process that can be SIGKILLed inside a section,
** leaving the counter odd for good. So the next writer first makes an odd
** counter even, and a reader waits for an even counter only so long (a few
** thousand tries, yielding), then reads anyway: whatever it reads must be
** checked (the shipped position carries a check value; a torn status is
** only a torn status). */
#define SEQ_READ_TRIES 4096
static void seq_write_begin(_Atomic uint32_t *lk) {
    uint32_t s = atomic_load_explicit(lk, RLX);
    if (s & 1) s++; /* a writer died in its section */
    atomic_store_explicit(lk, s + 1, RLX);
}
static void seq_write_end(_Atomic uint32_t *lk) {
    uint32_t s = atomic_load_explicit(lk, RLX);
    atomic_store_explicit(lk, s + 1, memory_order_release);
}
static uint32_t seq_read_begin(_Atomic uint32_t *lk) {
    uint32_t s;
    for (int i = 0; ((s = atomic_load_explicit(lk, memory_order_acquire)) & 1) && i < SEQ_READ_TRIES;
         i++)
        if (i >= 64) sched_yield();
    return s;
}
static int seq_read_retry(_Atomic uint32_t *lk, uint32_t s) {
    return atomic_load_explicit(lk, RLX) != s;
}
#define SEQ_ST memory_order_release /* field stores inside a write section */
#define SEQ_LD memory_order_acquire /* field loads inside a read section */

/* ---- paths ----------------------------------------------------------------- */
static int log_path(const spool *sp, uint64_t seq, char *out, size_t n) {
    return snprintf(out, n, "%s/log-%016" PRIx64, sp->dir, seq) >= (int)n ? -1 : 0;
}

static int open_log(const spool *sp, uint64_t seq, int flags, wserr *err) {
    char path[PATH_MAX];
    if (log_path(sp, seq, path, sizeof path))
        return -wserr_set(err, WALSHIP_ERR_INVALID, "spool path too long");
    int fd = ws_sys_open(path, flags | O_CLOEXEC, 0644);
    if (fd < 0) return -wserr_errno(err, wserr_from_errno(errno), errno, "open spool log %s", path);
    return fd;
}

/* Creates log file seq (truncating any leftover of a crashed rotation) with
** its header. With durable, the file and its directory entry are synced;
** otherwise that is left to the first synced append (spool_append), so a
** rotation on the commit path costs no fsync. Returns the fd or a negative
** walship_err. */
static int create_log(spool *sp, uint64_t seq, int durable, wserr *err) {
    int fd = open_log(sp, seq, O_RDWR | O_CREAT | O_TRUNC, err);
    if (fd < 0) return fd;
    uint8_t hdr[SPOOL_FILE_HDR_SIZE];
    spool_file_hdr_encode(hdr);
    if (ws_pwrite_all(fd, hdr, sizeof hdr, 0) != 0 || (durable && ws_sys_fdatasync(fd) != 0)) {
        int e = errno;
        close(fd);
        return -wserr_errno(err, wserr_from_errno(e), e, "write spool log header in %s", sp->dir);
    }
    if (durable) {
        int rc = ws_fsync_dir_of(sp->dir, err);
        if (rc) {
            close(fd);
            return -rc;
        }
        sp->dir_synced_seq = seq;
    }
    return fd;
}

/* Lists log sequence numbers present, sorted ascending (caller frees). */
static int list_logs(const spool *sp, uint64_t **out, size_t *nout, wserr *err) {
    *out = NULL;
    *nout = 0;
    DIR *d = opendir(sp->dir);
    if (d == NULL) return wserr_errno(err, wserr_from_errno(errno), errno, "open %s", sp->dir);
    uint64_t *v = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, "log-", 4) != 0 || strlen(e->d_name) != 20) continue;
        char *end;
        uint64_t seq = strtoull(e->d_name + 4, &end, 16);
        if (*end != '\0') continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            uint64_t *nv = realloc(v, cap * sizeof *nv);
            if (nv == NULL) {
                free(v);
                closedir(d);
                return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
            }
            v = nv;
        }
        v[n++] = seq;
    }
    closedir(d);
    for (size_t i = 1; i < n; i++) /* insertion sort: a handful of files */
        for (size_t j = i; j > 0 && v[j - 1] > v[j]; j--) {
            uint64_t t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    *out = v;
    *nout = n;
    return 0;
}

/* Reads the record at off of fd into buf; returns its size, 0 at a clean end
** of file (or a torn/invalid record: the caller decides), -1 on I/O error. */
static long read_rec_at(int fd, uint64_t off, uint64_t limit, wsbuf *buf, spool_rec *rec) {
    if (off + SPOOL_REC_HDR_SIZE > limit) return 0;
    uint8_t hdr[SPOOL_REC_HDR_SIZE];
    ssize_t r = ws_pread_full(fd, hdr, sizeof hdr, (off_t)off);
    if (r < 0) return -1;
    if ((size_t)r < sizeof hdr) return 0;
    size_t total = spool_rec_peek_size(hdr);
    if (total == 0 || off + total > limit) return 0;
    buf->len = 0;
    if (wsbuf_reserve(buf, total)) return -1;
    r = ws_pread_full(fd, buf->p, total, (off_t)off);
    if (r < 0) return -1;
    if ((size_t)r < total) return 0;
    buf->len = total;
    long got = spool_rec_decode(buf->p, total, rec);
    return got > 0 ? got : 0;
}

static void walinfo_apply(spool_walinfo *wi, const spool_rec *r) {
    switch (r->type) {
    case SPOOL_REC_WATERMARK:
        wi->wm_salt1 = r->salt1;
        wi->wm_salt2 = r->salt2;
        wi->wm_mx = r->mx_frame;
        break;
    case SPOOL_REC_WAL_BEGIN:
        wi->cur_salt1 = r->salt1;
        wi->cur_salt2 = r->salt2;
        wi->cur_state = SPOOL_WAL_OPEN;
        break;
    case SPOOL_REC_WAL_END:
        wi->cur_salt1 = r->salt1;
        wi->cur_salt2 = r->salt2;
        wi->cur_state = SPOOL_WAL_ENDED;
        break;
    default:
        break;
    }
}

static uint64_t shipped_check(uint32_t a, uint32_t b, uint32_t c) {
    uint8_t buf[12];
    ws_put_be32(buf, a);
    ws_put_be32(buf + 4, b);
    ws_put_be32(buf + 8, c);
    return ws_hash64(buf, sizeof buf) | 1; /* never 0: 0 means "unset" */
}

/* Rebuilds the ctl block from the log files. Runs only while this process
** holds the exclusive ctl lock, so nobody else reads or appends. */
static int rebuild_ctl(spool *sp, wserr *err) {
    struct ctl_block *c = sp->ctl;
    int keep_shipped = c->magic == CTL_MAGIC && c->version == CTL_VERSION &&
                       atomic_load(&c->shipped_check) ==
                           shipped_check(atomic_load(&c->shipped_salt1),
                                         atomic_load(&c->shipped_salt2),
                                         atomic_load(&c->shipped_frame));
    uint32_t s1 = keep_shipped ? atomic_load(&c->shipped_salt1) : 0;
    uint32_t s2 = keep_shipped ? atomic_load(&c->shipped_salt2) : 0;
    uint32_t sf = keep_shipped ? atomic_load(&c->shipped_frame) : 0;
    /* Self-checking (a hash of the file's identity): garbage only means
    ** "unknown", which makes the shipper check the file. */
    uint64_t evidence = c->magic == CTL_MAGIC ? atomic_load(&c->dbfile_evidence) : 0;
    memset((void *)c, 0, sizeof *c);
    atomic_store(&c->dbfile_evidence, evidence);
    /* Nobody knows what happened while no process had the spool open: the
    ** shipper compares the file with the evidence at start-up anyway. */

    uint64_t *seqs = NULL;
    size_t n = 0;
    int rc = list_logs(sp, &seqs, &n, err);
    if (rc) return rc;
    spool_walinfo wi = {0};
    uint64_t last_seq = 0, last_end = 0;
    wsbuf buf = {0};
    for (size_t i = 0; i < n; i++) {
        int fd = open_log(sp, seqs[i], O_RDWR, err);
        if (fd < 0) {
            rc = -fd;
            goto out;
        }
        struct stat st;
        uint8_t fh[SPOOL_FILE_HDR_SIZE];
        uint64_t end = SPOOL_FILE_HDR_SIZE;
        if (fstat(fd, &st) != 0 || ws_pread_full(fd, fh, sizeof fh, 0) != (ssize_t)sizeof fh ||
            spool_file_hdr_check(fh, sizeof fh) != 0) {
            /* A file whose header never made it to disk holds nothing. */
            if (i + 1 < n) {
                close(fd);
                continue;
            }
            spool_file_hdr_encode(fh);
            if (ws_pwrite_all(fd, fh, sizeof fh, 0) != 0 || ws_sys_ftruncate(fd, sizeof fh) != 0) {
                rc = wserr_errno(err, wserr_from_errno(errno), errno, "repair spool log in %s",
                                 sp->dir);
                close(fd);
                goto out;
            }
        } else {
            spool_rec rec;
            long got;
            while ((got = read_rec_at(fd, end, (uint64_t)st.st_size, &buf, &rec)) > 0) {
                walinfo_apply(&wi, &rec);
                end += (uint64_t)got;
            }
            if (got < 0) {
                rc = wserr_errno(err, WALSHIP_ERR_IO, errno, "read spool log in %s", sp->dir);
                close(fd);
                goto out;
            }
            if ((uint64_t)st.st_size != end && i + 1 == n && ws_sys_ftruncate(fd, (off_t)end) != 0) {
                rc = wserr_errno(err, wserr_from_errno(errno), errno, "trim spool log in %s",
                                 sp->dir);
                close(fd);
                goto out;
            }
            if ((uint64_t)st.st_size != end)
                WS_WARN("spool_repair", "dir=%s seq=%" PRIu64 " kept=%" PRIu64 " size=%lld",
                        sp->dir, seqs[i], end, (long long)st.st_size);
        }
        close(fd);
        last_seq = seqs[i];
        last_end = end;
    }
    if (last_seq == 0) {
        int fd = create_log(sp, 1, 1, err);
        if (fd < 0) {
            rc = -fd;
            goto out;
        }
        close(fd);
        last_seq = 1;
        last_end = SPOOL_FILE_HDR_SIZE;
    }
    c->version = CTL_VERSION;
    atomic_store(&c->log_pos, pos_pack(last_seq, last_end));
    spool_walinfo_set(sp, &wi);
    atomic_store(&c->shipped_salt1, s1);
    atomic_store(&c->shipped_salt2, s2);
    atomic_store(&c->shipped_frame, sf);
    atomic_store(&c->shipped_check, shipped_check(s1, s2, sf));
    atomic_store(&c->ship_lock, 0); /* a full barrier before the magic */
    c->magic = CTL_MAGIC;
out:
    wsbuf_free(&buf);
    free(seqs);
    return rc;
}

static int lock_ctl(int fd, short type, int wait) {
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = 0, .l_len = 1};
    return fcntl(fd, wait ? F_OFD_SETLKW : F_OFD_SETLK, &fl);
}

int spool_open(const char *dir, spool **out, wserr *err) {
    *out = NULL;
    spool *sp = calloc(1, sizeof *sp);
    if (sp == NULL) return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
    sp->ctl_fd = sp->wr_fd = sp->rd.fd = -1;
    sp->dir = strdup(dir);
    int rc = 0;
    if (sp->dir == NULL) {
        rc = wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
        goto fail;
    }
    rc = ws_mkdir_p(dir, 0755, err);
    if (rc) goto fail;
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/ctl", dir) >= (int)sizeof path) {
        rc = wserr_set(err, WALSHIP_ERR_INVALID, "spool path too long: %s", dir);
        goto fail;
    }
    sp->ctl_fd = ws_sys_open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (sp->ctl_fd < 0) {
        rc = wserr_errno(err, wserr_from_errno(errno), errno, "open %s", path);
        goto fail;
    }
    int first = lock_ctl(sp->ctl_fd, F_WRLCK, 0) == 0;
    if (!first && lock_ctl(sp->ctl_fd, F_RDLCK, 1) != 0) {
        rc = wserr_errno(err, WALSHIP_ERR_IO, errno, "lock %s", path);
        goto fail;
    }
    struct stat st;
    if (fstat(sp->ctl_fd, &st) != 0 ||
        (st.st_size < CTL_SIZE && ws_sys_ftruncate(sp->ctl_fd, CTL_SIZE) != 0)) {
        rc = wserr_errno(err, wserr_from_errno(errno), errno, "size %s", path);
        goto fail;
    }
    void *m = mmap(NULL, CTL_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, sp->ctl_fd, 0);
    if (m == MAP_FAILED) {
        rc = wserr_errno(err, WALSHIP_ERR_IO, errno, "map %s", path);
        goto fail;
    }
    sp->ctl = m;
    if (first) {
        rc = rebuild_ctl(sp, err);
        if (rc) goto fail;
        if (lock_ctl(sp->ctl_fd, F_RDLCK, 0) != 0) {
            rc = wserr_errno(err, WALSHIP_ERR_IO, errno, "lock %s", path);
            goto fail;
        }
    } else if (sp->ctl->magic != CTL_MAGIC || sp->ctl->version != CTL_VERSION) {
        rc = wserr_set(err, WALSHIP_ERR_CORRUPT,
                       "spool control file %s is not valid while in use by another process; "
                       "is an incompatible walship version running?",
                       path);
        goto fail;
    }
    *out = sp;
    return 0;
fail:
    spool_close(sp);
    return rc;
}

void spool_close(spool *sp) {
    if (sp == NULL) return;
    if (sp->ctl) munmap((void *)sp->ctl, CTL_SIZE);
    if (sp->ctl_fd >= 0) close(sp->ctl_fd);
    if (sp->wr_fd >= 0) close(sp->wr_fd);
    spool_reader_close(&sp->rd);
    free(sp->dir);
    free(sp);
}

const char *spool_path(const spool *sp) { return sp->dir; }

/* ---- producer -------------------------------------------------------------- */
static void publish_end(spool *sp, uint64_t seq, uint64_t end) {
    atomic_store_explicit(&sp->ctl->log_pos, pos_pack(seq, end), memory_order_release);
}

static int writer_fd(spool *sp, uint64_t seq, wserr *err) {
    if (sp->wr_fd >= 0 && sp->wr_seq == seq) return 0;
    int fd = open_log(sp, seq, O_RDWR, err);
    if (fd < 0) return -fd;
    if (sp->wr_fd >= 0) close(sp->wr_fd);
    sp->wr_fd = fd;
    sp->wr_seq = seq;
    return 0;
}

static int rotate_locked(spool *sp, uint64_t seq, uint64_t end, wserr *err) {
    if (seq + 1 > POS_SEQ_MAX)
        return wserr_set(err, WALSHIP_ERR_STATE,
                         "spool %s has used every log file number; drain it (walship ship DB "
                         "--drain), then remove it",
                         sp->dir);
    int rc = writer_fd(sp, seq, err);
    if (rc) return rc;
    if (ws_sys_ftruncate(sp->wr_fd, (off_t)end) != 0)
        return wserr_errno(err, wserr_from_errno(errno), errno, "trim spool log in %s", sp->dir);
    int fd = create_log(sp, seq + 1, 0, err);
    if (fd < 0) return -fd;
    close(sp->wr_fd);
    sp->wr_fd = fd;
    sp->wr_seq = seq + 1;
    publish_end(sp, seq + 1, SPOOL_FILE_HDR_SIZE);
    return 0;
}

int spool_rotate(spool *sp, wserr *err) {
    uint64_t w = atomic_load_explicit(&sp->ctl->log_pos, RLX);
    uint64_t seq = pos_seq(w), end = pos_off(w);
    if (end <= SPOOL_FILE_HDR_SIZE) return 0;
    return rotate_locked(sp, seq, end, err);
}

int spool_append(spool *sp, const uint8_t *rec, size_t n, int sync, wserr *err) {
    uint64_t w = atomic_load_explicit(&sp->ctl->log_pos, RLX);
    uint64_t seq = pos_seq(w), end = pos_off(w);
    int rc;
    if (end >= ROTATE_BYTES) {
        rc = rotate_locked(sp, seq, end, err);
        if (rc) return rc;
        seq++;
        end = SPOOL_FILE_HDR_SIZE;
    }
    rc = writer_fd(sp, seq, err);
    if (rc) return rc;
    if (ws_pwrite_all(sp->wr_fd, rec, n, (off_t)end) != 0)
        return wserr_errno(err, wserr_from_errno(errno), errno, "append to spool log in %s",
                           sp->dir);
    if (sync) {
        if (ws_sys_fdatasync(sp->wr_fd) != 0)
            return wserr_errno(err, wserr_from_errno(errno), errno, "sync spool log in %s",
                               sp->dir);
        /* A log file created without a sync needs its directory entry made
        ** durable too, once (per process). */
        if (seq > sp->dir_synced_seq) {
            rc = ws_fsync_dir_of(sp->dir, err);
            if (rc) return rc;
            sp->dir_synced_seq = seq;
        }
    }
    publish_end(sp, seq, end + n);
    return 0;
}

void spool_walinfo_get(spool *sp, spool_walinfo *o) {
    struct ctl_block *c = sp->ctl;
    o->cur_salt1 = atomic_load_explicit(&c->cur_salt1, RLX);
    o->cur_salt2 = atomic_load_explicit(&c->cur_salt2, RLX);
    o->cur_state = atomic_load_explicit(&c->cur_state, RLX);
    o->wm_salt1 = atomic_load_explicit(&c->wm_salt1, RLX);
    o->wm_salt2 = atomic_load_explicit(&c->wm_salt2, RLX);
    o->wm_mx = atomic_load_explicit(&c->wm_mx, RLX);
}

void spool_walinfo_set(spool *sp, const spool_walinfo *i) {
    struct ctl_block *c = sp->ctl;
    atomic_store_explicit(&c->cur_salt1, i->cur_salt1, RLX);
    atomic_store_explicit(&c->cur_salt2, i->cur_salt2, RLX);
    atomic_store_explicit(&c->cur_state, i->cur_state, RLX);
    atomic_store_explicit(&c->wm_salt1, i->wm_salt1, RLX);
    atomic_store_explicit(&c->wm_salt2, i->wm_salt2, RLX);
    atomic_store_explicit(&c->wm_mx, i->wm_mx, RLX);
}

void spool_shipped_get(spool *sp, uint32_t *s1, uint32_t *s2, uint32_t *frame) {
    struct ctl_block *c = sp->ctl;
    uint32_t s;
    uint64_t chk;
    do {
        s = seq_read_begin(&c->ship_lock);
        *s1 = atomic_load_explicit(&c->shipped_salt1, SEQ_LD);
        *s2 = atomic_load_explicit(&c->shipped_salt2, SEQ_LD);
        *frame = atomic_load_explicit(&c->shipped_frame, SEQ_LD);
        chk = atomic_load_explicit(&c->shipped_check, SEQ_LD);
    } while (seq_read_retry(&c->ship_lock, s));
    /* Torn by a shipper killed mid-write: unknown, so nothing counts as
    ** shipped (a copy before a WAL restart then takes every frame). */
    if (chk != shipped_check(*s1, *s2, *frame)) *s1 = *s2 = *frame = 0;
}

/* ---- consumer ---------------------------------------------------------------- */
void spool_end(spool *sp, spool_pos *out) {
    uint64_t w = atomic_load_explicit(&sp->ctl->log_pos, memory_order_acquire);
    out->seq = pos_seq(w);
    out->off = pos_off(w);
}

int spool_begin(spool *sp, spool_pos *out, wserr *err) {
    uint64_t *seqs = NULL;
    size_t n = 0;
    int rc = list_logs(sp, &seqs, &n, err);
    if (rc) return rc;
    spool_pos end;
    spool_end(sp, &end);
    out->seq = n ? seqs[0] : end.seq;
    out->off = SPOOL_FILE_HDR_SIZE;
    free(seqs);
    return 0;
}

static int reader_fd(spool *sp, spool_reader *rd, uint64_t seq, wserr *err) {
    if (rd->fd >= 0 && rd->seq == seq) return 0;
    int fd = open_log(sp, seq, O_RDONLY, err);
    if (fd < 0) return -fd;
    if (rd->fd >= 0) close(rd->fd);
    rd->fd = fd;
    rd->seq = seq;
    rd->ra_len = 0;
    return 0;
}

void spool_reader_close(spool_reader *rd) {
    if (rd->fd >= 0) close(rd->fd);
    free(rd->ra);
    memset(rd, 0, sizeof *rd);
    rd->fd = -1;
}

void spool_reader_release(spool *sp) { spool_reader_close(&sp->rd); }

/* read_rec_at through the reader's read-ahead: a busy WAL appends a 48-byte
** watermark per commit, and reading them a chunk at a time instead of with
** two preads each is most of what consuming them costs. Records larger than
** half a chunk (copied frames) are read directly. */
#define READ_AHEAD_BYTES ((size_t)64 << 10)
static long read_rec_ahead(spool_reader *rd, uint64_t off, uint64_t limit, wsbuf *buf,
                           spool_rec *rec) {
    if (off + SPOOL_REC_HDR_SIZE > limit) return 0;
    if (rd->ra == NULL && (rd->ra = malloc(READ_AHEAD_BYTES)) == NULL)
        return read_rec_at(rd->fd, off, limit, buf, rec);
    for (int pass = 0;; pass++) {
        int have = rd->ra_len > 0 && off >= rd->ra_off &&
                   off + SPOOL_REC_HDR_SIZE <= rd->ra_off + rd->ra_len;
        if (have) {
            const uint8_t *p = rd->ra + (off - rd->ra_off);
            size_t total = spool_rec_peek_size(p);
            if (total == 0 || off + total > limit) return 0;
            if (off + total <= rd->ra_off + rd->ra_len) {
                buf->len = 0;
                if (wsbuf_reserve(buf, total)) return -1;
                memcpy(buf->p, p, total);
                buf->len = total;
                long got = spool_rec_decode(buf->p, total, rec);
                return got > 0 ? got : 0;
            }
            if (total > READ_AHEAD_BYTES / 2 || pass > 0)
                return read_rec_at(rd->fd, off, limit, buf, rec);
        } else if (pass > 0) {
            return 0; /* the file ends before the published end says */
        }
        uint64_t want = limit - off < READ_AHEAD_BYTES ? limit - off : READ_AHEAD_BYTES;
        ssize_t r = ws_pread_full(rd->fd, rd->ra, (size_t)want, (off_t)off);
        rd->ra_off = off;
        rd->ra_len = r > 0 ? (size_t)r : 0;
        if (r < 0) return -1;
    }
}

int spool_read(spool *sp, spool_reader *rd, spool_pos *pos, wsbuf *buf, spool_rec *rec,
               wserr *err) {
    if (rd == NULL) rd = &sp->rd;
    for (;;) {
        spool_pos end;
        spool_end(sp, &end);
        if (spool_pos_cmp(*pos, end) >= 0) return 0;
        uint64_t limit;
        int rc = reader_fd(sp, rd, pos->seq, err);
        if (rc == WALSHIP_ERR_NOTFOUND && pos->seq < end.seq) {
            /* A sequence number skipped by an interrupted rotation. */
            wserr_clear(err);
            pos->seq++;
            pos->off = SPOOL_FILE_HDR_SIZE;
            continue;
        }
        if (rc) return -rc;
        if (pos->seq == end.seq) {
            limit = end.off;
        } else {
            struct stat st;
            if (fstat(rd->fd, &st) != 0)
                return -wserr_errno(err, WALSHIP_ERR_IO, errno, "stat spool log");
            limit = (uint64_t)st.st_size;
        }
        if (pos->off >= limit) {
            if (pos->seq == end.seq) return 0;
            pos->seq++;
            pos->off = SPOOL_FILE_HDR_SIZE;
            continue;
        }
        long got = read_rec_ahead(rd, pos->off, limit, buf, rec);
        if (got < 0) return -wserr_errno(err, WALSHIP_ERR_IO, errno, "read spool log");
        if (got == 0)
            return -wserr_set(err, WALSHIP_ERR_CORRUPT,
                              "spool log %s/log-%016" PRIx64 " is corrupt at offset %" PRIu64,
                              sp->dir, pos->seq, pos->off);
        pos->off += (uint64_t)got;
        return 1;
    }
}

void spool_trim(spool *sp, spool_pos pos) {
    /* WALSHIP_DEBUG_KEEP_SPOOL=1: keep every log file (debugging). Read each
    ** time (a trim follows a log rotation, rarely): a cached flag would be
    ** shared by the shipper threads without a lock. */
    if (getenv("WALSHIP_DEBUG_KEEP_SPOOL") != NULL) return;
    uint64_t *seqs = NULL;
    size_t n = 0;
    if (list_logs(sp, &seqs, &n, NULL) != 0) return;
    spool_pos end;
    spool_end(sp, &end);
    for (size_t i = 0; i < n; i++) {
        if (seqs[i] >= pos.seq || seqs[i] >= end.seq) break;
        char path[PATH_MAX];
        if (log_path(sp, seqs[i], path, sizeof path) == 0 && unlink(path) != 0 && errno != ENOENT)
            WS_WARN("spool_trim_failed", "path=%s errno=%d", path, errno);
    }
    free(seqs);
}

void spool_shipped_set(spool *sp, uint32_t s1, uint32_t s2, uint32_t frame) {
    struct ctl_block *c = sp->ctl;
    seq_write_begin(&c->ship_lock);
    atomic_store_explicit(&c->shipped_salt1, s1, SEQ_ST);
    atomic_store_explicit(&c->shipped_salt2, s2, SEQ_ST);
    atomic_store_explicit(&c->shipped_frame, frame, SEQ_ST);
    atomic_store_explicit(&c->shipped_check, shipped_check(s1, s2, frame), SEQ_ST);
    seq_write_end(&c->ship_lock);
}

void spool_status_set(spool *sp, const spool_status *st) {
    struct ctl_block *c = sp->ctl;
    seq_write_begin(&c->ship_lock);
    atomic_store_explicit(&c->st_heartbeat_ms, st->heartbeat_ms, SEQ_ST);
    atomic_store_explicit(&c->st_pid, st->pid, SEQ_ST);
    atomic_store_explicit(&c->st_generation, st->generation, SEQ_ST);
    atomic_store_explicit(&c->st_txid, st->txid, SEQ_ST);
    atomic_store_explicit(&c->st_shipped_txid, st->shipped_txid, SEQ_ST);
    atomic_store_explicit(&c->st_oldest_ms, st->oldest_unshipped_ms, SEQ_ST);
    atomic_store_explicit(&c->st_up_seq, st->uploaded.seq, SEQ_ST);
    atomic_store_explicit(&c->st_up_off, st->uploaded.off, SEQ_ST);
    atomic_store_explicit(&c->st_queue_bytes, st->queue_bytes, SEQ_ST);
    for (int i = 0; i < SPOOL_ERR_MAX / 8; i++) {
        uint64_t w;
        memcpy(&w, st->last_error + i * 8, 8);
        atomic_store_explicit(&c->st_err[i], w, SEQ_ST);
        memcpy(&w, st->generation_reason + i * 8, 8);
        atomic_store_explicit(&c->st_genwhy[i], w, SEQ_ST);
    }
    seq_write_end(&c->ship_lock);
}

void spool_status_get(spool *sp, spool_status *o) {
    struct ctl_block *c = sp->ctl;
    uint32_t s;
    do {
        s = seq_read_begin(&c->ship_lock);
        o->heartbeat_ms = atomic_load_explicit(&c->st_heartbeat_ms, SEQ_LD);
        o->pid = atomic_load_explicit(&c->st_pid, SEQ_LD);
        o->generation = atomic_load_explicit(&c->st_generation, SEQ_LD);
        o->txid = atomic_load_explicit(&c->st_txid, SEQ_LD);
        o->shipped_txid = atomic_load_explicit(&c->st_shipped_txid, SEQ_LD);
        o->oldest_unshipped_ms = atomic_load_explicit(&c->st_oldest_ms, SEQ_LD);
        o->uploaded.seq = atomic_load_explicit(&c->st_up_seq, SEQ_LD);
        o->uploaded.off = atomic_load_explicit(&c->st_up_off, SEQ_LD);
        o->queue_bytes = atomic_load_explicit(&c->st_queue_bytes, SEQ_LD);
        for (int i = 0; i < SPOOL_ERR_MAX / 8; i++) {
            uint64_t w = atomic_load_explicit(&c->st_err[i], SEQ_LD);
            memcpy(o->last_error + i * 8, &w, 8);
            w = atomic_load_explicit(&c->st_genwhy[i], SEQ_LD);
            memcpy(o->generation_reason + i * 8, &w, 8);
        }
    } while (seq_read_retry(&c->ship_lock, s));
    o->last_error[sizeof o->last_error - 1] = '\0';
    o->generation_reason[sizeof o->generation_reason - 1] = '\0';
}

uint32_t spool_flush_request(spool *sp) { return atomic_fetch_add(&sp->ctl->flush_req, 1) + 1; }

uint32_t spool_flush_requests(spool *sp) { return atomic_load(&sp->ctl->flush_req); }

void spool_sync_request(spool *sp) { atomic_fetch_add(&sp->ctl->sync_req, 1); }

uint32_t spool_sync_requests(spool *sp) { return atomic_load(&sp->ctl->sync_req); }

void spool_count_upload(spool *sp, int snapshot, uint64_t bytes) {
    struct ctl_block *c = sp->ctl;
    atomic_fetch_add_explicit(snapshot ? &c->up_snapshots : &c->up_segments, 1, RLX);
    atomic_fetch_add_explicit(snapshot ? &c->up_snapshot_bytes : &c->up_segment_bytes, bytes, RLX);
}

void spool_uploads_get(spool *sp, spool_uploads *out) {
    struct ctl_block *c = sp->ctl;
    out->segments = atomic_load_explicit(&c->up_segments, RLX);
    out->segment_bytes = atomic_load_explicit(&c->up_segment_bytes, RLX);
    out->snapshots = atomic_load_explicit(&c->up_snapshots, RLX);
    out->snapshot_bytes = atomic_load_explicit(&c->up_snapshot_bytes, RLX);
    out->copied_frames = atomic_load_explicit(&c->copied_frames, RLX);
    out->copied_bytes = atomic_load_explicit(&c->copied_bytes, RLX);
}

void spool_count_copy(spool *sp, uint64_t frames, uint64_t bytes) {
    atomic_fetch_add_explicit(&sp->ctl->copied_frames, frames, RLX);
    atomic_fetch_add_explicit(&sp->ctl->copied_bytes, bytes, RLX);
}

void spool_flush_done_set(spool *sp, uint32_t req) { atomic_store(&sp->ctl->flush_done, req); }

uint32_t spool_flush_done(spool *sp) { return atomic_load(&sp->ctl->flush_done); }

uint64_t spool_dbfile_evidence(const struct stat *st) {
    uint64_t v[4] = {(uint64_t)st->st_dev, (uint64_t)st->st_ino, (uint64_t)st->st_size,
                     (uint64_t)st->st_mtim.tv_sec * 1000000000u + (uint64_t)st->st_mtim.tv_nsec};
    return ws_hash64(v, sizeof v) | 1;
}

void spool_dbfile_note(spool *sp, const char *db_path) {
    struct stat st;
    uint64_t ev = stat(db_path, &st) == 0 ? spool_dbfile_evidence(&st) : 0;
    atomic_store(&sp->ctl->dbfile_evidence, ev);
}

uint64_t spool_dbfile_noted(spool *sp) { return atomic_load(&sp->ctl->dbfile_evidence); }

int spool_dbfile_check(spool *sp, const char *db_path) {
    struct stat st;
    uint64_t ev = stat(db_path, &st) == 0 ? spool_dbfile_evidence(&st) : 0;
    if (ev == atomic_load(&sp->ctl->dbfile_evidence)) return 0;
    atomic_fetch_add(&sp->ctl->dbfile_suspect, 1);
    return 1;
}

uint32_t spool_dbfile_suspects(spool *sp) { return atomic_load(&sp->ctl->dbfile_suspect); }

uint64_t spool_log_bytes(spool *sp) {
    uint64_t *seqs = NULL, total = 0;
    size_t n = 0;
    if (list_logs(sp, &seqs, &n, NULL) != 0) return 0;
    for (size_t i = 0; i < n; i++) {
        char path[PATH_MAX];
        struct stat st;
        if (log_path(sp, seqs[i], path, sizeof path) == 0 && stat(path, &st) == 0)
            total += (uint64_t)st.st_size;
    }
    free(seqs);
    return total;
}

void spool_flags_set(spool *sp, uint32_t flags) { atomic_store(&sp->ctl->st_flags, flags); }

uint32_t spool_flags_get(spool *sp) { return atomic_load(&sp->ctl->st_flags); }

int spool_shipper_pid(spool *sp) { return (int)atomic_load_explicit(&sp->ctl->st_pid, RLX); }

/* The election is an OFD write lock on byte ELECT_BYTE of ctl, taken through
** the ctl descriptor every user of the spool holds anyway (no descriptor of
** its own). OFD locks belong to the open file description: another spool
** object's conflicts with it even inside the holder's process, and closing
** some other descriptor of the file does not drop it. */
#define ELECT_BYTE 1

static int elect_lock(spool *sp, short type, int cmd) {
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = ELECT_BYTE, .l_len = 1};
    int rc = fcntl(sp->ctl_fd, cmd, &fl);
    if (rc == 0 && cmd == F_OFD_GETLK) return fl.l_type != F_UNLCK;
    return rc;
}

int spool_shipper_alive(spool *sp) {
    if (sp->elected) return 1;
    return elect_lock(sp, F_WRLCK, F_OFD_GETLK) == 1;
}

int spool_try_elect(spool *sp, wserr *err) {
    if (sp->elected) return 1;
    if (elect_lock(sp, F_WRLCK, F_OFD_SETLK) == 0) {
        sp->elected = 1;
        return 1;
    }
    if (errno == EAGAIN || errno == EACCES) return 0;
    return -wserr_errno(err, WALSHIP_ERR_IO, errno, "lock %s/ctl (shipper election)", sp->dir);
}

void spool_unelect(spool *sp) {
    if (!sp->elected) return;
    elect_lock(sp, F_UNLCK, F_OFD_SETLK);
    sp->elected = 0;
}
