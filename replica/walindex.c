/*
** walindex.c -- see walindex.h.
**
** IMPLEMENTATION NOTES
**   Layout (SQLite 3.7.0+, unchanged since): the wal-index is a sequence of
**   32 KiB blocks mapped with xShmMap. Block 0 starts with two 48-byte
**   header copies and the 40-byte WalCkptInfo (136 bytes), then 4,062
**   page numbers; every other block holds 4,096 page numbers. The hash
**   table (8,192 16-bit slots, 1-based indexes into the block's page
**   numbers) is at byte 16,384 of every block. Frame F lives in block
**   (F + 4096 - 4062 - 1) / 4096.
**
**   Order of writes in one hold, as in sqlite3WalFrames: frames go to the
**   file first, then their index entries (page number, then hash slot);
**   readers ignore entries past their own mxFrame, so these are invisible
**   until the header moves. The header is written last: fdatasync of the
**   WAL, copy 1, xShmBarrier, copy 0. Readers read copy 0, barrier, copy 1
**   and accept only equal copies with a good checksum.
**
**   Stale entries: a writer that died (or an appender that rolled back)
**   can leave index entries past mxFrame. As in walIndexAppend, appending
**   frame F whose page-number slot is already set first clears every entry
**   past F-1 in that block (walCleanupHash); a block is zeroed whole when
**   its first entry is written.
**
**   Locks are always tried, never waited for: WRITE to append; READ0
**   shared plus READ1..4 exclusive to restart. A reader (any process)
**   therefore never waits for the replica, and the replica never waits for
**   a reader: if one is in the way, the WAL just keeps growing.
*/
#include "walindex.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/log.h"
#include "../common/util.h"
#include "../format/objfmt.h"

#define REGION_SIZE WALIDX_REGION_SIZE
#define HDR_WORDS 34                /* 136-byte header area of block 0, in u32 */
#define HASH_OFFSET_WORDS 4096      /* hash table at byte 16384 of a block */
#define CKPT_NBACKFILL 96
#define CKPT_READMARK 100
#define CKPT_NBACKFILL_ATTEMPTED 128
#define BUF_BYTES ((size_t)4 << 20) /* frames buffered before a write */
#define MAX_REGIONS 65536           /* 2 GiB of wal-index: 268M frames */

struct wal_appender {
    sqlite3_file *db;
    int wal_fd;
    uint32_t page_size;
    size_t frame_size;
    int sync;

    volatile uint32_t **regions; /* mapped blocks, index = block number */
    uint32_t nregions;

    /* valid while WRITE is held */
    int holds_write;
    walidx_hdr hdr;       /* header last read or published */
    wal_hdr whdr;         /* header of the WAL the frames go to */
    int whdr_pending;     /* a new WAL header must be written before frames */
    uint32_t published;   /* hdr.mx_frame */
    wal_cksum ck_pub;     /* running checksum after frame `published` */
    uint32_t frames;      /* frames appended (written or buffered): last frame number */
    wal_cksum ck;         /* running checksum after the last sealed frame */
    uint32_t written;     /* frames written to the file */
    uint32_t max_written; /* highest frame written in this hold */
    uint32_t commit_frame, commit_npage;
    wal_cksum ck_commit;
    uint32_t ncommits; /* commits since the last publish */

    /* frame buffer: frames written+1 .. frames; the last one may be unsealed */
    uint8_t *buf;
    size_t buf_cap; /* in frames */
    int last_unsealed;
    uint32_t unsealed_pgno;
};

/* ---- small helpers ---------------------------------------------------------- */
static int host_big_endian(void) {
    const uint16_t one = 1;
    return *(const uint8_t *)&one == 0;
}

static int shm_lock(wal_appender *a, int slot, int n, int flags) {
    return a->db->pMethods->xShmLock(a->db, slot, n, flags);
}

static void shm_barrier(wal_appender *a) { a->db->pMethods->xShmBarrier(a->db); }

/* Maps block k of the wal-index (growing the file if extend). NULL if the
** block does not exist and extend is 0, or on error (err set). */
static volatile uint32_t *region(wal_appender *a, uint32_t k, int extend, wserr *err) {
    if (k < a->nregions && a->regions[k]) return a->regions[k];
    if (k >= MAX_REGIONS) {
        wserr_set(err, WALSHIP_ERR_CORRUPT, "wal-index block %u is out of range", k);
        return NULL;
    }
    if (k >= a->nregions) {
        uint32_t n = a->nregions ? a->nregions : 8;
        while (n <= k) n *= 2;
        volatile uint32_t **nr = realloc((void *)a->regions, n * sizeof *nr);
        if (nr == NULL) {
            wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
            return NULL;
        }
        memset((void *)(nr + a->nregions), 0, (n - a->nregions) * sizeof *nr);
        a->regions = nr;
        a->nregions = n;
    }
    void volatile *p = NULL;
    int rc = a->db->pMethods->xShmMap(a->db, (int)k, REGION_SIZE, extend, &p);
    if (rc != SQLITE_OK) {
        wserr_set(err, rc == SQLITE_NOMEM ? WALSHIP_ERR_NOMEM : WALSHIP_ERR_IO,
                  "could not map the replica's wal-index (block %u): SQLite error %d", k, rc);
        return NULL;
    }
    if (p == NULL) {
        if (extend) wserr_set(err, WALSHIP_ERR_IO, "the wal-index could not be extended");
        return NULL;
    }
    a->regions[k] = (volatile uint32_t *)p;
    return a->regions[k];
}

static uint32_t ckpt_u32(wal_appender *a, uint32_t off) {
    return __atomic_load_n(&a->regions[0][off / 4], __ATOMIC_RELAXED);
}

static void ckpt_set(wal_appender *a, uint32_t off, uint32_t v) {
    __atomic_store_n(&a->regions[0][off / 4], v, __ATOMIC_RELAXED);
}

/* Where the entries of frame f live: its block's page-number array
** (1-based: pgno[1] is frame zero+1) and hash table. */
typedef struct hashloc {
    volatile uint32_t *pgno; /* pgno[i], i >= 1 */
    volatile uint16_t *hash;
    uint32_t zero;
    uint32_t block;
    uint32_t npage; /* capacity of pgno[] */
} hashloc;

static uint32_t frame_block(uint32_t f) {
    return (f + WALIDX_HASH_NPAGE - WALIDX_HASH_NPAGE_ONE - 1) / WALIDX_HASH_NPAGE;
}

static int hash_get(wal_appender *a, uint32_t block, int extend, hashloc *l, wserr *err) {
    volatile uint32_t *r = region(a, block, extend, err);
    if (r == NULL) {
        /* Nonzero on every path, so callers may rely on *l being set when 0
        ** is returned (region() may or may not have recorded a reason). */
        int code = err ? err->code : 0;
        if (code == 0) {
            wserr_set(err, WALSHIP_ERR_CORRUPT, "wal-index block %u is missing", block);
            code = WALSHIP_ERR_CORRUPT;
        }
        return code;
    }
    l->block = block;
    l->hash = (volatile uint16_t *)(r + HASH_OFFSET_WORDS);
    if (block == 0) {
        l->pgno = r + HDR_WORDS - 1;
        l->zero = 0;
        l->npage = WALIDX_HASH_NPAGE_ONE;
    } else {
        l->pgno = r - 1;
        l->zero = WALIDX_HASH_NPAGE_ONE + (block - 1) * WALIDX_HASH_NPAGE;
        l->npage = WALIDX_HASH_NPAGE;
    }
    return 0;
}

static uint32_t wal_hash(uint32_t pgno) { return (pgno * 383u) & (WALIDX_HASH_NSLOT - 1); }

/* walCleanupHash: clears every entry of frames after mx in mx's block. */
static void cleanup_hash(wal_appender *a, uint32_t mx) {
    if (mx == 0) return;
    hashloc l;
    if (hash_get(a, frame_block(mx), 0, &l, NULL) != 0) return;
    uint32_t limit = mx - l.zero;
    for (uint32_t i = 0; i < WALIDX_HASH_NSLOT; i++)
        if (l.hash[i] > limit) __atomic_store_n(&l.hash[i], 0, __ATOMIC_RELAXED);
    for (uint32_t i = limit + 1; i <= l.npage; i++) l.pgno[i] = 0;
}

/* walIndexAppend: records that frame f holds page pgno. */
static int index_append(wal_appender *a, uint32_t f, uint32_t pgno, wserr *err) {
    hashloc l;
    int rc = hash_get(a, frame_block(f), 1, &l, err);
    if (rc) return rc;
    uint32_t idx = f - l.zero;
    if (idx == 1) {
        /* First entry of the block: zero its page numbers and hash table. */
        for (uint32_t i = 1; i <= l.npage; i++) l.pgno[i] = 0;
        for (uint32_t i = 0; i < WALIDX_HASH_NSLOT; i++) l.hash[i] = 0;
    }
    if (l.pgno[idx] != 0) cleanup_hash(a, f - 1); /* leftovers past the last frame */
    uint32_t collide = idx;
    uint32_t k;
    for (k = wal_hash(pgno); l.hash[k]; k = (k + 1) & (WALIDX_HASH_NSLOT - 1)) {
        if (collide-- == 0)
            return wserr_set(err, WALSHIP_ERR_CORRUPT,
                             "the replica's wal-index hash table is corrupt (block %u)", l.block);
    }
    l.pgno[idx] = pgno;
    __atomic_store_n(&l.hash[k], (uint16_t)idx, __ATOMIC_RELAXED);
    return 0;
}

static void (*fault_hook)(int point);
void walapp_set_fault_hook(void (*fn)(int point)) { fault_hook = fn; }

/* walIndexWriteHdr: copy 1, barrier, copy 0. */
static void write_header(wal_appender *a, walidx_hdr *h) {
    h->is_init = 1;
    h->version = WAL_FORMAT_VERSION;
    walidx_hdr_cksum(h);
    uint32_t w[WALIDX_HDR_SIZE / 4];
    memcpy(w, h, sizeof w);
    volatile uint32_t *r = a->regions[0];
    for (int i = 0; i < WALIDX_HDR_SIZE / 4; i++) r[WALIDX_HDR_SIZE / 4 + i] = w[i];
    shm_barrier(a);
    if (fault_hook) fault_hook(2);
    for (int i = 0; i < WALIDX_HDR_SIZE / 4; i++) r[i] = w[i];
}

static uint16_t page_size_raw(uint32_t sz) { return (uint16_t)((sz & 0xff00) | (sz >> 16)); }

static uint32_t random_u32(void) {
    uint32_t v = 0;
    if (getrandom(&v, sizeof v, 0) != (ssize_t)sizeof v) v = (uint32_t)ws_now_us() * 2654435761u;
    return v;
}

/* ---- lifecycle -------------------------------------------------------------- */
int walapp_open(sqlite3_file *db, int wal_fd, uint32_t page_size, wal_appender **out,
                wserr *err) {
    *out = NULL;
    if (db == NULL || db->pMethods == NULL || db->pMethods->iVersion < 2 ||
        db->pMethods->xShmMap == NULL)
        return wserr_set(err, WALSHIP_ERR_UNSUPPORTED,
                         "the replica database is not open with shared-memory support (WAL "
                         "mode with the unix VFS is needed)");
    if (!ws_page_size_valid(page_size))
        return wserr_set(err, WALSHIP_ERR_INVALID, "invalid page size %u", page_size);
    wal_appender *a = calloc(1, sizeof *a);
    if (a == NULL) return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
    a->db = db;
    a->wal_fd = wal_fd;
    a->page_size = page_size;
    a->frame_size = WAL_FRAME_HDR_SIZE + (size_t)page_size;
    a->sync = 1;
    a->buf_cap = BUF_BYTES / a->frame_size;
    if (a->buf_cap < 2) a->buf_cap = 2;
    a->buf = malloc(a->buf_cap * a->frame_size);
    if (a->buf == NULL) {
        free(a);
        return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
    }
    *out = a;
    return 0;
}

void walapp_free(wal_appender *a) {
    if (a == NULL) return;
    if (a->holds_write) walapp_end(a);
    free((void *)a->regions);
    free(a->buf);
    free(a);
}

void walapp_set_sync(wal_appender *a, int on) { a->sync = on; }

const walidx_hdr *walapp_hdr(const wal_appender *a) { return &a->hdr; }

void walapp_salts(const wal_appender *a, uint32_t *salt1, uint32_t *salt2) {
    *salt1 = a->whdr.salt1;
    *salt2 = a->whdr.salt2;
}

uint32_t walapp_pending_frames(const wal_appender *a) { return a->frames - a->published; }
uint32_t walapp_pending_commits(const wal_appender *a) { return a->ncommits; }

int walapp_peek(wal_appender *a, walidx_hdr *hdr, uint32_t *n_backfill) {
    if (region(a, 0, 0, NULL) == NULL) return -1;
    if (walidx_hdr_read(a->regions[0], hdr) != 0) return -1;
    if (n_backfill) *n_backfill = ckpt_u32(a, CKPT_NBACKFILL);
    return 0;
}

/* Prepares a new WAL (frames start at 1): salts from the wal-index unless
** they are unset or equal to those of the header in the file, then the
** header that walapp_page will write first. */
static void prepare_new_wal(wal_appender *a) {
    uint32_t s1 = walidx_salt1(&a->hdr), s2 = walidx_salt2(&a->hdr);
    uint8_t old[WAL_HDR_SIZE];
    wal_hdr oh;
    int have_old = ws_pread_full(a->wal_fd, old, sizeof old, 0) == (ssize_t)sizeof old &&
                   wal_hdr_parse(old, &oh) == 0;
    if (s1 == 0 && s2 == 0) {
        s1 = random_u32();
        s2 = random_u32();
    } else if (have_old && oh.salt1 == s1 && oh.salt2 == s2) {
        s1 += 1;
        s2 = random_u32();
    }
    uint32_t magic = WAL_MAGIC_LE | (uint32_t)host_big_endian();
    uint8_t buf[WAL_HDR_SIZE];
    wal_hdr_encode(buf, magic, a->page_size, have_old ? oh.ckpt_seq + 1 : 0, s1, s2, &a->whdr);
    a->whdr_pending = 1;
    a->ck = (wal_cksum){.big_endian = (int)(magic & 1), .s1 = a->whdr.ck1, .s2 = a->whdr.ck2};
    a->ck_pub = a->ck;
    a->ck_commit = a->ck;
    a->hdr.big_end_cksum = (uint8_t)(magic & 1);
    ws_put_be32(a->hdr.salt, s1);
    ws_put_be32(a->hdr.salt + 4, s2);
}

int walapp_begin(wal_appender *a, walapp_info *info, wserr *err) {
    if (a->holds_write) return wserr_set(err, WALSHIP_ERR_STATE, "write lock already held");
    if (region(a, 0, 1, err) == NULL) return err ? err->code : WALSHIP_ERR_IO;
    int rc = shm_lock(a, WALIDX_LOCK_WRITE, 1, SQLITE_SHM_LOCK | SQLITE_SHM_EXCLUSIVE);
    if (rc == SQLITE_BUSY)
        return wserr_set(err, WALSHIP_ERR_BUSY,
                         "another connection holds the replica's WAL write lock (a writer, or a "
                         "RESTART/TRUNCATE checkpoint)");
    if (rc != SQLITE_OK)
        return wserr_set(err, WALSHIP_ERR_IO, "could not lock the replica's wal-index: SQLite error %d",
                         rc);
    a->holds_write = 1;
    walidx_hdr h;
    if (walidx_hdr_read(a->regions[0], &h) != 0) {
        walapp_end(a);
        return wserr_set(err, WALSHIP_ERR_STATE,
                         "the replica's wal-index header is torn or not initialised (a writer "
                         "stopped mid-update); SQLite recovers it on the next read");
    }
    /* An index recovered from an empty WAL has no page size yet. */
    if (h.version != WAL_FORMAT_VERSION ||
        (walidx_page_size(&h) != a->page_size && (h.mx_frame != 0 || h.page_size_raw != 0))) {
        walapp_end(a);
        return wserr_set(err, WALSHIP_ERR_CORRUPT,
                         "the replica's wal-index says version %u, page size %u; expected "
                         "%u-byte pages",
                         h.version, walidx_page_size(&h), a->page_size);
    }
    a->hdr = h;
    a->published = a->frames = a->written = a->max_written = h.mx_frame;
    a->commit_frame = h.mx_frame;
    a->commit_npage = h.n_page;
    a->ncommits = 0;
    a->last_unsealed = 0;
    a->whdr_pending = 0;
    if (h.mx_frame == 0) {
        prepare_new_wal(a);
    } else {
        uint8_t buf[WAL_HDR_SIZE];
        if (ws_pread_full(a->wal_fd, buf, sizeof buf, 0) != (ssize_t)sizeof buf ||
            wal_hdr_parse(buf, &a->whdr) != 0 || a->whdr.salt1 != walidx_salt1(&h) ||
            a->whdr.salt2 != walidx_salt2(&h) || a->whdr.page_size != a->page_size ||
            (int)(a->whdr.magic & 1) != h.big_end_cksum) {
            walapp_end(a);
            return wserr_set(err, WALSHIP_ERR_CORRUPT,
                             "the replica's WAL file does not match its wal-index (salts, page "
                             "size or byte order differ)");
        }
        a->ck = (wal_cksum){.big_endian = h.big_end_cksum, .s1 = h.frame_cksum[0],
                            .s2 = h.frame_cksum[1]};
        a->ck_pub = a->ck;
        a->ck_commit = a->ck;
    }
    if (info) {
        info->hdr = h;
        info->n_backfill = ckpt_u32(a, CKPT_NBACKFILL);
        for (int i = 0; i < WALIDX_NREADER; i++)
            info->read_mark[i] = ckpt_u32(a, CKPT_READMARK + 4 * (uint32_t)i);
        info->n_backfill_attempted = ckpt_u32(a, CKPT_NBACKFILL_ATTEMPTED);
    }
    return 0;
}

int walapp_try_restart(wal_appender *a, wserr *err) {
    if (!a->holds_write || a->frames != a->published)
        return -wserr_set(err, WALSHIP_ERR_STATE, "restart needs the write lock and no new frames");
    uint32_t mx = a->hdr.mx_frame;
    if (mx == 0 || ckpt_u32(a, CKPT_NBACKFILL) != mx) return 0;
    /* READ0 shared keeps out a checkpointer, which holds it exclusively
    ** while it copies frames and publishes nBackfill. */
    if (shm_lock(a, WALIDX_LOCK_READ(0), 1, SQLITE_SHM_LOCK | SQLITE_SHM_SHARED) != SQLITE_OK)
        return 0;
    int restarted = 0;
    if (ckpt_u32(a, CKPT_NBACKFILL) == mx &&
        shm_lock(a, WALIDX_LOCK_READ(1), WALIDX_NREADER - 1,
                 SQLITE_SHM_LOCK | SQLITE_SHM_EXCLUSIVE) == SQLITE_OK) {
        /* walRestartHdr */
        walidx_hdr h = a->hdr;
        h.mx_frame = 0;
        ws_put_be32(h.salt, walidx_salt1(&h) + 1);
        uint32_t s2 = random_u32();
        memcpy(h.salt + 4, &s2, 4);
        write_header(a, &h);
        ckpt_set(a, CKPT_NBACKFILL, 0);
        ckpt_set(a, CKPT_NBACKFILL_ATTEMPTED, 0);
        ckpt_set(a, CKPT_READMARK + 4, 0);
        for (uint32_t i = 2; i < WALIDX_NREADER; i++)
            ckpt_set(a, CKPT_READMARK + 4 * i, WALIDX_READMARK_NONE);
        shm_lock(a, WALIDX_LOCK_READ(1), WALIDX_NREADER - 1,
                 SQLITE_SHM_UNLOCK | SQLITE_SHM_EXCLUSIVE);
        a->hdr = h;
        a->published = a->frames = a->written = a->max_written = 0;
        a->commit_frame = 0;
        prepare_new_wal(a);
        restarted = 1;
    }
    shm_lock(a, WALIDX_LOCK_READ(0), 1, SQLITE_SHM_UNLOCK | SQLITE_SHM_SHARED);
    return restarted;
}

/* ---- frames ----------------------------------------------------------------- */
static uint8_t *buf_frame(wal_appender *a, uint32_t f) {
    return a->buf + (size_t)(f - a->written - 1) * a->frame_size;
}

static void seal_last(wal_appender *a, uint32_t commit_size) {
    uint8_t *fr = buf_frame(a, a->frames);
    wal_frame_seal(&a->whdr, &a->ck, fr, a->unsealed_pgno, commit_size, a->page_size);
    a->last_unsealed = 0;
}

/* Writes the sealed buffered frames (all but an unsealed last one) and
** indexes them. */
static int flush_frames(wal_appender *a, wserr *err) {
    uint32_t upto = a->last_unsealed ? a->frames - 1 : a->frames;
    if (upto <= a->written) return 0;
    if (a->whdr_pending) {
        uint8_t hb[WAL_HDR_SIZE];
        wal_hdr_encode(hb, a->whdr.magic, a->page_size, a->whdr.ckpt_seq, a->whdr.salt1,
                       a->whdr.salt2, NULL);
        if (ws_pwrite_all(a->wal_fd, hb, sizeof hb, 0) != 0)
            return wserr_errno(err, wserr_from_errno(errno), errno, "write the replica's WAL header");
        a->whdr_pending = 0;
    }
    uint32_t n = upto - a->written;
    if (ws_pwrite_all(a->wal_fd, a->buf, (size_t)n * a->frame_size,
                      (off_t)wal_frame_offset(a->written + 1, a->page_size)) != 0)
        return wserr_errno(err, wserr_from_errno(errno), errno, "write the replica's WAL");
    for (uint32_t i = 0; i < n; i++) {
        uint32_t f = a->written + 1 + i;
        int rc = index_append(a, f, ws_get_be32(a->buf + (size_t)i * a->frame_size), err);
        if (rc) return rc;
    }
    if (a->last_unsealed)
        memmove(a->buf, a->buf + (size_t)n * a->frame_size, a->frame_size);
    a->written = upto;
    if (upto > a->max_written) a->max_written = upto;
    return 0;
}

int walapp_page(wal_appender *a, uint32_t pgno, const uint8_t *data, wserr *err) {
    if (!a->holds_write) return wserr_set(err, WALSHIP_ERR_STATE, "write lock not held");
    if (pgno == 0 || pgno > 0x7fffffffu)
        return wserr_set(err, WALSHIP_ERR_CORRUPT, "page number %u is out of range", pgno);
    if (a->frames == UINT32_MAX - 1)
        return wserr_set(err, WALSHIP_ERR_STATE, "the replica's WAL is full");
    if (a->last_unsealed) seal_last(a, 0);
    if (a->frames - a->written == a->buf_cap) {
        int rc = flush_frames(a, err);
        if (rc) return rc;
    }
    a->frames++;
    uint8_t *fr = buf_frame(a, a->frames);
    ws_put_be32(fr, pgno);
    memcpy(fr + WAL_FRAME_HDR_SIZE, data, a->page_size);
    a->unsealed_pgno = pgno;
    a->last_unsealed = 1;
    return 0;
}

int walapp_commit(wal_appender *a, uint32_t db_pages, wserr *err) {
    if (!a->last_unsealed)
        return wserr_set(err, WALSHIP_ERR_STATE, "a commit needs a frame to carry it");
    if (db_pages == 0) return wserr_set(err, WALSHIP_ERR_CORRUPT, "a commit to an empty database");
    seal_last(a, db_pages);
    a->commit_frame = a->frames;
    a->commit_npage = db_pages;
    a->ck_commit = a->ck;
    a->ncommits++;
    return 0;
}

void walapp_savepoint_get(const wal_appender *a, walapp_savepoint *sp) {
    sp->frames = a->last_unsealed ? a->frames - 1 : a->frames;
    sp->commit_frame = a->commit_frame;
    sp->commit_npage = a->commit_npage;
    sp->ck = a->ck;
    sp->ck_commit = a->ck_commit;
    sp->ncommits = a->ncommits;
}

void walapp_rollback_to(wal_appender *a, const walapp_savepoint *sp) {
    uint32_t to = sp->frames < a->published ? a->published : sp->frames;
    a->last_unsealed = 0;
    if (to < a->written) {
        cleanup_hash(a, to); /* entries past `to` are stale now */
        a->written = to;
    }
    a->frames = to;
    a->ck = sp->ck;
    a->commit_frame = sp->commit_frame;
    a->commit_npage = sp->commit_npage;
    a->ck_commit = sp->ck_commit;
    a->ncommits = sp->ncommits;
}

int walapp_flush(wal_appender *a, wserr *err) {
    if (!a->holds_write) return wserr_set(err, WALSHIP_ERR_STATE, "write lock not held");
    return flush_frames(a, err);
}

int walapp_publish(wal_appender *a, wserr *err) {
    if (!a->holds_write) return wserr_set(err, WALSHIP_ERR_STATE, "write lock not held");
    if (a->ncommits == 0) return 0;
    int rc = flush_frames(a, err);
    if (rc) return rc;
    if (a->sync && fdatasync(a->wal_fd) != 0)
        return wserr_errno(err, wserr_from_errno(errno), errno, "sync the replica's WAL");
    walidx_hdr h = a->hdr;
    h.mx_frame = a->commit_frame;
    h.n_page = a->commit_npage;
    h.frame_cksum[0] = a->ck_commit.s1;
    h.frame_cksum[1] = a->ck_commit.s2;
    h.page_size_raw = page_size_raw(a->page_size);
    h.big_end_cksum = (uint8_t)a->ck_commit.big_endian;
    ws_put_be32(h.salt, a->whdr.salt1);
    ws_put_be32(h.salt + 4, a->whdr.salt2);
    h.change++;
    write_header(a, &h);
    a->hdr = h;
    a->published = h.mx_frame;
    a->ck_pub = a->ck_commit;
    a->ncommits = 0;
    return 0;
}

void walapp_end(wal_appender *a) {
    if (!a->holds_write) return;
    if (a->frames > a->published || a->max_written > a->published) {
        walapp_savepoint sp = {.frames = a->published, .commit_frame = a->published,
                               .commit_npage = a->hdr.n_page, .ck = a->ck_pub,
                               .ck_commit = a->ck_pub, .ncommits = 0};
        uint32_t max_written = a->max_written;
        walapp_rollback_to(a, &sp);
        if (max_written > a->published) {
            /* Break the checksum chain at the first dropped frame, so a
            ** recovery cannot bring back what was refused. */
            uint8_t zero[WAL_FRAME_HDR_SIZE] = {0};
            if (ws_pwrite_all(a->wal_fd, zero, sizeof zero,
                              (off_t)wal_frame_offset(a->published + 1, a->page_size)) != 0)
                WS_WARN("replica_wal_invalidate_failed", "frame=%u errno=%d", a->published + 1,
                        errno);
        }
    }
    shm_lock(a, WALIDX_LOCK_WRITE, 1, SQLITE_SHM_UNLOCK | SQLITE_SHM_EXCLUSIVE);
    a->holds_write = 0;
}

/* ---- reading the current view ----------------------------------------------- */
static int read_db_page(wal_appender *a, uint32_t pgno, uint8_t *out, wserr *err) {
    int rc = a->db->pMethods->xRead(a->db, out, (int)a->page_size,
                                    (sqlite3_int64)(pgno - 1) * a->page_size);
    if (rc == SQLITE_OK || rc == SQLITE_IOERR_SHORT_READ) return 0; /* short: zero-filled */
    return wserr_set(err, WALSHIP_ERR_IO, "read page %u of the replica database: SQLite error %d",
                     pgno, rc);
}

int walapp_view_hashes(wal_appender *a, ws_rolling *r, uint8_t *page1, uint32_t after_frame,
                       uint32_t *commits_after, wserr *err) {
    if (!a->holds_write) return wserr_set(err, WALSHIP_ERR_STATE, "write lock not held");
    uint32_t mx = a->published;
    uint32_t npages;
    if (mx > 0) {
        npages = a->hdr.n_page;
    } else {
        sqlite3_int64 sz = 0;
        if (a->db->pMethods->xFileSize(a->db, &sz) != SQLITE_OK)
            return wserr_set(err, WALSHIP_ERR_IO, "could not size the replica database");
        npages = (uint32_t)(sz / a->page_size);
    }
    uint32_t *latest = NULL;
    uint8_t *page = malloc(a->frame_size);
    int rc = 0;
    if (page == NULL) return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
    if (npages > 0) {
        latest = calloc(npages + 1, sizeof *latest);
        if (latest == NULL) {
            free(page);
            return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
        }
    }
    uint32_t ncommit = 0;
    for (uint32_t f = 1; f <= mx; f++) {
        hashloc l;
        if ((rc = hash_get(a, frame_block(f), 0, &l, err))) goto out;
        uint32_t p = l.pgno[f - l.zero];
        if (p == 0) {
            rc = wserr_set(err, WALSHIP_ERR_CORRUPT, "the replica's wal-index has no page for frame %u",
                           f);
            goto out;
        }
        if (p <= npages) latest[p] = f;
    }
    if (commits_after) {
        for (uint32_t f = after_frame + 1; f <= mx; f++) {
            uint8_t fh[WAL_FRAME_HDR_SIZE];
            if (ws_pread_full(a->wal_fd, fh, sizeof fh, (off_t)wal_frame_offset(f, a->page_size)) !=
                (ssize_t)sizeof fh) {
                rc = wserr_errno(err, WALSHIP_ERR_IO, errno, "read the replica's WAL");
                goto out;
            }
            if (ws_get_be32(fh + 4) != 0) ncommit++;
        }
        *commits_after = ncommit;
    }
    uint32_t psz = r->page_size;
    ws_rolling_free(r);
    ws_rolling_init(r, psz);
    if (page1) memset(page1, 0, a->page_size);
    for (uint32_t p = 1; p <= npages; p++) {
        if (latest[p]) {
            ssize_t got = ws_pread_full(a->wal_fd, page, a->page_size,
                                        (off_t)wal_frame_offset(latest[p], a->page_size) +
                                            WAL_FRAME_HDR_SIZE);
            if (got != (ssize_t)a->page_size) {
                rc = wserr_errno(err, WALSHIP_ERR_IO, errno ? errno : EIO, "read the replica's WAL");
                goto out;
            }
        } else if ((rc = read_db_page(a, p, page, err))) {
            goto out;
        }
        if (ws_rolling_set(r, p, ws_page_hash(p, page, a->page_size)) != 0) {
            rc = wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
            goto out;
        }
        if (p == 1 && page1) memcpy(page1, page, a->page_size);
    }
    r->db_pages = npages;
    r->tx_before = npages;
    r->chk = ws_rolling_recompute(r);
out:
    free(latest);
    free(page);
    return rc;
}

int walapp_limit_size(wal_appender *a, uint64_t limit, wserr *err) {
    struct stat st;
    if (fstat(a->wal_fd, &st) != 0)
        return wserr_errno(err, WALSHIP_ERR_IO, errno, "stat the replica's WAL");
    uint64_t keep = a->published ? wal_frame_offset(a->published + 1, a->page_size) : WAL_HDR_SIZE;
    if (a->max_written > a->published)
        keep = wal_frame_offset(a->max_written + 1, a->page_size);
    if (keep < limit) keep = limit;
    if ((uint64_t)st.st_size <= keep) return 0;
    if (ftruncate(a->wal_fd, (off_t)keep) != 0)
        return wserr_errno(err, wserr_from_errno(errno), errno, "truncate the replica's WAL");
    return 0;
}

int walapp_check_index(wal_appender *a, wserr *err) {
    walidx_hdr h;
    if (walapp_peek(a, &h, NULL) != 0)
        return wserr_set(err, WALSHIP_ERR_STATE, "wal-index header not readable");
    uint32_t mx = h.mx_frame;
    if (mx == 0) return 0;
    for (uint32_t b = 0; b <= frame_block(mx); b++) {
        hashloc l;
        int rc = hash_get(a, b, 0, &l, err);
        if (rc) return rc;
        uint32_t limit = mx - l.zero < l.npage ? mx - l.zero : l.npage;
        uint32_t nslot = 0;
        for (uint32_t i = 0; i < WALIDX_HASH_NSLOT; i++) {
            uint16_t v = l.hash[i];
            if (v == 0) continue;
            if (v > limit)
                return wserr_set(err, WALSHIP_ERR_CORRUPT,
                                 "block %u: hash slot %u points at entry %u past mxFrame %u", b, i,
                                 v, mx);
            nslot++;
        }
        if (nslot != limit)
            return wserr_set(err, WALSHIP_ERR_CORRUPT, "block %u: %u hash entries for %u frames", b,
                             nslot, limit);
        for (uint32_t i = 1; i <= limit; i++) {
            uint32_t p = l.pgno[i];
            uint32_t k = wal_hash(p);
            while (l.hash[k] && l.hash[k] != i) k = (k + 1) & (WALIDX_HASH_NSLOT - 1);
            if (p == 0 || l.hash[k] != i)
                return wserr_set(err, WALSHIP_ERR_CORRUPT,
                                 "block %u: frame %u (page %u) is not reachable by its hash", b,
                                 l.zero + i, p);
        }
        for (uint32_t i = limit + 1; i <= l.npage && b == frame_block(mx); i++)
            if (l.pgno[i] != 0)
                return wserr_set(err, WALSHIP_ERR_CORRUPT,
                                 "block %u: stale page number at entry %u past mxFrame %u", b, i,
                                 mx);
    }
    return 0;
}
