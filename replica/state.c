/*
** state.c -- the replica's recorded position: <PATH>-walship-replica/state,
** two 4 KiB slots written in turn (docs/FORMAT.md: replica state).
*/
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "../common/util.h"
#include "replica_impl.h"

#define STATE_MAGIC "WSREPLST"
#define STATE_VERSION 1
#define STATE_SLOT 4096
#define STATE_SYNC_MS 10000

static void state_encode(uint8_t *b, const rep_state *s) {
    memset(b, 0, STATE_SLOT);
    memcpy(b, STATE_MAGIC, 8);
    ws_put_be32(b + 8, STATE_VERSION);
    ws_put_be32(b + 12, s->flags);
    ws_put_be64(b + 16, s->seq);
    ws_put_be64(b + 24, s->generation);
    ws_put_be64(b + 32, s->txid);
    ws_put_be64(b + 40, s->chk);
    ws_put_be64(b + 48, (uint64_t)s->commit_ms);
    ws_put_be32(b + 56, s->page_size);
    ws_put_be32(b + 60, s->db_pages);
    ws_put_be32(b + 64, s->salt1);
    ws_put_be32(b + 68, s->salt2);
    ws_put_be32(b + 72, s->mx_frame);
    ws_put_be64(b + 80, s->intent_generation);
    ws_put_be64(b + 88, s->intent_txid);
    ws_put_be64(b + 96, s->intent_chk);
    ws_put_be64(b + 104, (uint64_t)s->intent_commit_ms);
    size_t ul = strlen(s->url);
    ws_put_be16(b + 112, (uint16_t)ul);
    memcpy(b + 116, s->url, ul);
    ws_put_be64(b + STATE_SLOT - 8, ws_hash64(b, STATE_SLOT - 8));
}

static int state_decode(const uint8_t *b, rep_state *s) {
    if (memcmp(b, STATE_MAGIC, 8) != 0 || ws_get_be32(b + 8) != STATE_VERSION) return -1;
    if (ws_get_be64(b + STATE_SLOT - 8) != ws_hash64(b, STATE_SLOT - 8)) return -1;
    memset(s, 0, sizeof *s);
    s->flags = ws_get_be32(b + 12);
    s->seq = ws_get_be64(b + 16);
    s->generation = ws_get_be64(b + 24);
    s->txid = ws_get_be64(b + 32);
    s->chk = ws_get_be64(b + 40);
    s->commit_ms = (int64_t)ws_get_be64(b + 48);
    s->page_size = ws_get_be32(b + 56);
    s->db_pages = ws_get_be32(b + 60);
    s->salt1 = ws_get_be32(b + 64);
    s->salt2 = ws_get_be32(b + 68);
    s->mx_frame = ws_get_be32(b + 72);
    s->intent_generation = ws_get_be64(b + 80);
    s->intent_txid = ws_get_be64(b + 88);
    s->intent_chk = ws_get_be64(b + 96);
    s->intent_commit_ms = (int64_t)ws_get_be64(b + 104);
    uint16_t ul = ws_get_be16(b + 112);
    if (ul > STATE_URL_MAX || !ws_page_size_valid(s->page_size)) return -1;
    memcpy(s->url, b + 116, ul);
    s->url[ul] = '\0';
    return 0;
}

/* Loads the newest valid slot; 1 if none is valid, 0 on success. */
int rep_state_load(int fd, rep_state *out) {
    uint8_t b[STATE_SLOT];
    rep_state a, best;
    int have = 0;
    for (int slot = 0; slot < 2; slot++) {
        if (ws_pread_full(fd, b, STATE_SLOT, (off_t)slot * STATE_SLOT) != STATE_SLOT) continue;
        if (state_decode(b, &a) != 0) continue;
        if (!have || a.seq > best.seq) best = a;
        have = 1;
    }
    if (!have) return 1;
    *out = best;
    return 0;
}

/* Writes the position readers see (and an optional switch intent) into the
** older slot. */
int rep_state_save(replica *r, int sync, const rep_state *intent, wserr *err) {
    rep_state s;
    memset(&s, 0, sizeof s);
    s.seq = r->saved.seq + 1;
    s.generation = r->gen;
    s.txid = r->txid;
    s.chk = r->roll.chk;
    s.commit_ms = r->commit_ms;
    s.page_size = r->page_size;
    s.db_pages = r->roll.db_pages;
    if (r->have_known) {
        s.salt1 = walidx_salt1(&r->known);
        s.salt2 = walidx_salt2(&r->known);
        s.mx_frame = r->known.mx_frame;
    }
    if (intent) {
        s.flags |= STATE_F_INTENT;
        s.intent_generation = intent->generation;
        s.intent_txid = intent->txid;
        s.intent_chk = intent->chk;
        s.intent_commit_ms = intent->commit_ms;
    }
    ws_strlcpy(s.url, r->url, sizeof s.url);
    uint8_t b[STATE_SLOT];
    state_encode(b, &s);
    if (ws_pwrite_all(r->state_fd, b, STATE_SLOT, (off_t)(s.seq & 1) * STATE_SLOT) != 0)
        return wserr_errno(err, wserr_from_errno(errno), errno, "write %s", r->state_path);
    int64_t now = ws_mono_ms();
    if (sync || now - r->last_state_sync_ms > STATE_SYNC_MS) {
        if (fdatasync(r->state_fd) != 0)
            return wserr_errno(err, wserr_from_errno(errno), errno, "sync %s", r->state_path);
        r->last_state_sync_ms = now;
    }
    r->saved = s;
    r->have_state = 1;
    return 0;
}

int replica_state_dir(const char *path, char *out, size_t n) {
    return snprintf(out, n, "%s-walship-replica", path) >= (int)n ? -1 : 0;
}
