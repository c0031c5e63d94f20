/*
** shipstate.c -- the shipper's state file. See shipstate.h.
*/
#include "shipstate.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/sysio.h"
#include "../common/util.h"

#define SLOT_SIZE 512
#define ENTRIES_OFF 1024
#define STATE_MAGIC "WSSTATE"
#define STATE_VERSION 1

static void put_le64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint64_t get_le64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static void encode_slot(uint8_t *b, uint64_t seq, const ship_record *r) {
    memset(b, 0, SLOT_SIZE);
    memcpy(b, STATE_MAGIC, 8);
    ws_put_be32(b + 8, STATE_VERSION);
    ws_put_be64(b + 16, seq);
    ws_put_be64(b + 24, r->generation);
    ws_put_be64(b + 32, r->txid);
    ws_put_be32(b + 40, r->page_size);
    ws_put_be32(b + 44, r->db_pages);
    ws_put_be64(b + 48, r->chk);
    ws_walpos_encode(b + 56, &r->pos); /* 48 bytes -> 104 */
    ws_put_be64(b + 104, r->shipped_txid);
    ws_put_be64(b + 112, r->last_snapshot_txid);
    ws_put_be64(b + 120, (uint64_t)r->last_snapshot_ms);
    ws_put_be64(b + 128, r->bytes_since_snapshot);
    ws_put_be64(b + 136, (uint64_t)r->last_commit_ms);
    ws_put_be64(b + 144, r->end_id.dev);
    ws_put_be64(b + 152, r->end_id.ino);
    ws_put_be64(b + 160, r->end_id.size);
    ws_put_be64(b + 168, (uint64_t)r->end_id.ctime_ns);
    ws_walpos_encode(b + 176, &r->prev); /* 48 bytes -> 224 */
    ws_put_be32(b + 224, r->have_prev);
    ws_put_be32(b + 228, r->nbegun);
    for (uint32_t i = 0; i < r->nbegun && i < SHIP_BEGUN_MAX; i++)
        ws_walpos_encode(b + 232 + i * WS_WALPOS_SIZE, &r->begun[i]); /* up to 424 */
    ws_put_be64(b + 424, r->last_snapshot_bytes);
    ws_put_be64(b + 432, r->seg_bytes_since_snapshot);
    ws_put_be64(b + SLOT_SIZE - 8, ws_hash64(b, SLOT_SIZE - 8));
}

static int decode_slot(const uint8_t *b, uint64_t *seq, ship_record *r) {
    if (memcmp(b, STATE_MAGIC, 8) != 0 || ws_get_be32(b + 8) != STATE_VERSION) return -1;
    if (ws_get_be64(b + SLOT_SIZE - 8) != ws_hash64(b, SLOT_SIZE - 8)) return -1;
    *seq = ws_get_be64(b + 16);
    r->generation = ws_get_be64(b + 24);
    r->txid = ws_get_be64(b + 32);
    r->page_size = ws_get_be32(b + 40);
    r->db_pages = ws_get_be32(b + 44);
    r->chk = ws_get_be64(b + 48);
    ws_walpos_decode(b + 56, &r->pos);
    r->shipped_txid = ws_get_be64(b + 104);
    r->last_snapshot_txid = ws_get_be64(b + 112);
    r->last_snapshot_ms = (int64_t)ws_get_be64(b + 120);
    r->bytes_since_snapshot = ws_get_be64(b + 128);
    r->last_commit_ms = (int64_t)ws_get_be64(b + 136);
    r->end_id.dev = ws_get_be64(b + 144);
    r->end_id.ino = ws_get_be64(b + 152);
    r->end_id.size = ws_get_be64(b + 160);
    r->end_id.ctime_ns = (int64_t)ws_get_be64(b + 168);
    ws_walpos_decode(b + 176, &r->prev);
    r->have_prev = ws_get_be32(b + 224);
    r->nbegun = ws_get_be32(b + 228);
    if (r->nbegun > SHIP_BEGUN_MAX) return -1;
    for (uint32_t i = 0; i < r->nbegun; i++)
        ws_walpos_decode(b + 232 + i * WS_WALPOS_SIZE, &r->begun[i]);
    r->last_snapshot_bytes = ws_get_be64(b + 424); /* zeros in a slot of an older build */
    r->seg_bytes_since_snapshot = ws_get_be64(b + 432);
    if (r->db_pages > 0x7fffffffu || (r->generation && !ws_page_size_valid(r->page_size))) return -1;
    return 0;
}

static void mark_dirty(void *ctx, uint32_t p) {
    shipstate *ss = ctx;
    if (ss->all_dirty) return;
    if (ss->ndirty == ss->dirty_cap) {
        uint32_t cap = ss->dirty_cap ? ss->dirty_cap * 2 : 1024;
        uint32_t *d = cap <= (1u << 24) ? realloc(ss->dirty, cap * sizeof *d) : NULL;
        if (d == NULL) { /* too many (or no memory): rewrite everything */
            ss->all_dirty = 1;
            return;
        }
        ss->dirty = d;
        ss->dirty_cap = cap;
    }
    ss->dirty[ss->ndirty++] = p;
}

int shipstate_open(shipstate *ss, const char *dir, ship_record *rec, int *have, wserr *err) {
    memset(ss, 0, sizeof *ss);
    ws_rolling_init(&ss->r, 0);
    *have = 0;
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/state", dir) >= (int)sizeof path)
        return wserr_set(err, WALSHIP_ERR_INVALID, "spool path too long");
    ss->fd = -1;
    if ((ss->path = strdup(path)) == NULL) return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
    ss->fd = ws_sys_open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (ss->fd < 0) return wserr_errno(err, wserr_from_errno(errno), errno, "open %s", path);
    uint8_t slots[2 * SLOT_SIZE];
    ssize_t r = ws_pread_full(ss->fd, slots, sizeof slots, 0);
    if (r < 0) return wserr_errno(err, WALSHIP_ERR_IO, errno, "read %s", path);
    ship_record ra, rb;
    uint64_t sa = 0, sb = 0;
    int va = r >= SLOT_SIZE && decode_slot(slots, &sa, &ra) == 0;
    int vb = r >= 2 * SLOT_SIZE && decode_slot(slots + SLOT_SIZE, &sb, &rb) == 0;
    if (!va && !vb) return 0;
    if (va && (!vb || sa > sb)) {
        *rec = ra;
        ss->seq = sa;
    } else {
        *rec = rb;
        ss->seq = sb;
    }
    ws_rolling_init(&ss->r, rec->page_size);
    size_t bytes = (size_t)rec->db_pages * 8;
    uint8_t *buf = malloc(bytes ? bytes : 1);
    if (buf == NULL) return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
    r = ws_pread_full(ss->fd, buf, bytes, ENTRIES_OFF);
    if (r != (ssize_t)bytes) {
        free(buf);
        return 0; /* hashes missing: treat as no state */
    }
    for (uint32_t i = rec->db_pages; i > 0; i--) {
        if (ws_rolling_set(&ss->r, i, get_le64(buf + (size_t)(i - 1) * 8)) != 0) {
            free(buf);
            return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory for %u page hashes",
                             rec->db_pages);
        }
    }
    free(buf);
    ss->r.db_pages = rec->db_pages;
    ss->r.tx_before = rec->db_pages;
    ss->r.chk = rec->chk;
    ss->r.on_set = mark_dirty;
    ss->r.ctx = ss;
    *have = 1;
    return 0;
}

int shipstate_peek(const char *dir, ship_record *rec) {
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/state", dir) >= (int)sizeof path) return -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    uint8_t slots[2 * SLOT_SIZE];
    ssize_t r = ws_pread_full(fd, slots, sizeof slots, 0);
    close(fd);
    ship_record ra, rb;
    uint64_t sa = 0, sb = 0;
    int va = r >= SLOT_SIZE && decode_slot(slots, &sa, &ra) == 0;
    int vb = r >= 2 * SLOT_SIZE && decode_slot(slots + SLOT_SIZE, &sb, &rb) == 0;
    if (!va && !vb) return -1;
    *rec = va && (!vb || sa > sb) ? ra : rb;
    return 0;
}

void shipstate_release(shipstate *ss) {
    if (ss->fd >= 0) close(ss->fd);
    ss->fd = -1;
}

void shipstate_close(shipstate *ss) {
    if (ss->fd >= 0) close(ss->fd);
    ws_rolling_free(&ss->r);
    free(ss->dirty);
    free(ss->path);
    memset(ss, 0, sizeof *ss);
    ss->fd = -1;
}

int shipstate_replace(shipstate *ss, const uint64_t *h, uint32_t n, uint64_t chk) {
    ss->r.on_set = NULL;
    for (uint32_t p = n; p > 0; p--)
        if (ws_rolling_set(&ss->r, p, h[p - 1]) != 0) return WALSHIP_ERR_NOMEM;
    for (uint32_t p = n + 1; p <= ss->r.cap; p++) ss->r.h[p - 1] = 0;
    ss->r.db_pages = n;
    ss->r.tx_before = n;
    ss->r.chk = chk;
    ss->r.on_set = mark_dirty;
    ss->r.ctx = ss;
    ss->all_dirty = 1;
    ss->ndirty = 0;
    return 0;
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Writes entries [first, last] (1-based pages) in one pwrite. */
static int write_run(shipstate *ss, uint32_t first, uint32_t last, uint8_t *scratch) {
    for (uint32_t p = first; p <= last; p++)
        put_le64(scratch + (size_t)(p - first) * 8, ws_rolling_get(&ss->r, p));
    return ws_pwrite_all(ss->fd, scratch, (size_t)(last - first + 1) * 8,
                         ENTRIES_OFF + (off_t)(first - 1) * 8);
}

int shipstate_save(shipstate *ss, const ship_record *rec, wserr *err) {
    enum { RUN = 8192 };
    if (ss->fd < 0) {
        if (ss->path == NULL) return wserr_set(err, WALSHIP_ERR_STATE, "shipper state not open");
        ss->fd = ws_sys_open(ss->path, O_RDWR | O_CLOEXEC, 0644);
        if (ss->fd < 0)
            return wserr_errno(err, wserr_from_errno(errno), errno, "open %s", ss->path);
    }
    uint8_t *scratch = malloc(RUN * 8);
    if (scratch == NULL) return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
    int bad = 0;
    if (ss->all_dirty) {
        for (uint32_t p = 1; p <= rec->db_pages && !bad; p += RUN) {
            uint32_t last = p + RUN - 1 < rec->db_pages ? p + RUN - 1 : rec->db_pages;
            bad = write_run(ss, p, last, scratch) != 0;
        }
        if (!bad && ws_sys_ftruncate(ss->fd, ENTRIES_OFF + (off_t)rec->db_pages * 8) != 0) bad = 1;
    } else if (ss->ndirty) {
        qsort(ss->dirty, ss->ndirty, sizeof *ss->dirty, cmp_u32);
        uint32_t i = 0;
        while (i < ss->ndirty && !bad) {
            uint32_t first = ss->dirty[i], last = first;
            while (i + 1 < ss->ndirty && ss->dirty[i + 1] <= last + 1 && ss->dirty[i + 1] - first < RUN)
                last = ss->dirty[++i];
            i++;
            bad = write_run(ss, first, last, scratch) != 0;
        }
    }
    free(scratch);
    /* Entries are durable before the slot that vouches for them. */
    if (bad || ws_sys_fdatasync(ss->fd) != 0)
        return wserr_errno(err, wserr_from_errno(errno), errno, "write shipper state");
    uint8_t slot[SLOT_SIZE];
    uint64_t seq = ss->seq + 1;
    encode_slot(slot, seq, rec);
    if (ws_pwrite_all(ss->fd, slot, SLOT_SIZE, (off_t)(seq % 2) * SLOT_SIZE) != 0 ||
        ws_sys_fdatasync(ss->fd) != 0)
        return wserr_errno(err, wserr_from_errno(errno), errno, "write shipper state");
    ss->seq = seq;
    ss->ndirty = 0;
    ss->all_dirty = 0;
    return 0;
}
