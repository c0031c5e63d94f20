/*
** shipstate.h -- the shipper's durable local state: where it stands, and the
** hash of every database page (the rolling checksum's terms).
**
** One file, <spool>/state:
**   slot A (512 bytes at 0), slot B (512 bytes at 512)
**                     the state record, written alternately with a rising
**                     sequence number and an XXH3; the valid slot with the
**                     higher sequence wins, so a torn write loses at most
**                     the newest record, never both
**   page hashes       u64 little-endian per page from offset 1024
**                     (entry p-1 for page p)
** Hash entries are written and synced before the slot that vouches for
** them. After a crash, entries may be ahead of the winning slot (written
** for a segment whose slot never landed); the shipper re-applies the
** segments in its local queue that are newer than the slot (redo), which
** sets every such entry again, then checks XOR(entries) against the
** checksum. Any mismatch starts a new generation.
*/
#ifndef WS_SHIPSTATE_H
#define WS_SHIPSTATE_H

#include <stdint.h>

#include "../common/err.h"
#include "../format/objfmt.h"
#include "../format/rolling.h"
#include "../format/spoolrec.h"

#define SHIP_BEGUN_MAX 4

typedef struct ship_record {
    uint64_t generation;       /* 0: no generation yet */
    uint64_t txid;             /* last transaction consumed into a closed object */
    uint32_t page_size;
    uint32_t db_pages;
    uint64_t chk;              /* rolling checksum at txid */
    ws_walpos pos;             /* where consumption resumes */
    uint64_t shipped_txid;     /* last transaction known to be in the store */
    uint64_t last_snapshot_txid;
    int64_t last_snapshot_ms;  /* wall clock when it was taken */
    uint64_t bytes_since_snapshot;     /* page bytes consumed since the last snapshot */
    uint64_t last_snapshot_bytes;      /* its object's size (0: unknown, an older state) */
    uint64_t seg_bytes_since_snapshot; /* segment object bytes closed since then */
    int64_t last_commit_ms;
    spool_dbid end_id;         /* database file when the WAL last ended (delete/truncate) */
    ws_walpos prev;            /* the WAL before the last WAL_BEGIN, while nothing of the new */
    uint32_t have_prev;        /* one is consumed (a begin a dying writer never carried out) */
    uint32_t nbegun;           /* WALs begun since, none with a commit yet (their headers) */
    ws_walpos begun[SHIP_BEGUN_MAX];
} ship_record;

typedef struct shipstate {
    int fd;          /* -1 between saves of an idle database (shipstate_release) */
    char *path;      /* dir/state */
    uint64_t seq;    /* sequence of the slot last written */
    ws_rolling r;    /* live page hashes, database size and checksum */
    uint32_t *dirty; /* pages whose hash changed since the last save */
    uint32_t ndirty, dirty_cap;
    int all_dirty;   /* rewrite every entry on the next save */
} shipstate;

/* Opens or creates the state file in dir. *have is set to 1 and *rec filled
** when a valid record exists; then r holds its hashes, size and checksum. */
int shipstate_open(shipstate *ss, const char *dir, ship_record *rec, int *have, wserr *err);
void shipstate_close(shipstate *ss);
/* Closes the file until the next save reopens it (an idle database holds
** no descriptor it can open again). */
void shipstate_release(shipstate *ss);

/* Reads just the newest valid record of dir/state (no hashes), for status
** readers in any process. Returns 0 if there is one. */
int shipstate_peek(const char *dir, ship_record *rec);

/* Replaces every hash (after a new snapshot): n entries from h, checksum chk. */
int shipstate_replace(shipstate *ss, const uint64_t *h, uint32_t n, uint64_t chk);

/* Writes dirty hashes and syncs, then the record into the next slot and
** syncs again. */
int shipstate_save(shipstate *ss, const ship_record *rec, wserr *err);

#endif
