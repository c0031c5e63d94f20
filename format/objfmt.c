/*
** objfmt.c -- page hashes, the shipper position record, and object names.
*/
#include "objfmt.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

uint64_t ws_page_hash(uint32_t pgno, const uint8_t *data, uint32_t page_size) {
    return XXH3_64bits_withSeed(data, page_size, pgno);
}

uint64_t ws_zero_page_hash(uint32_t pgno, uint32_t page_size) {
    static const uint8_t zeros[65536];
    return XXH3_64bits_withSeed(zeros, page_size, pgno);
}

int ws_page_size_valid(uint32_t sz) {
    return sz >= 512 && sz <= 65536 && (sz & (sz - 1)) == 0;
}

void ws_walpos_encode(uint8_t *b, const ws_walpos *p) {
    ws_put_be32(b, p->salt1);
    ws_put_be32(b + 4, p->salt2);
    ws_put_be32(b + 8, p->frame);
    ws_put_be32(b + 12, p->ck1);
    ws_put_be32(b + 16, p->ck2);
    ws_put_be32(b + 20, p->flags);
    ws_put_be32(b + 24, p->page_size);
    ws_put_be32(b + 28, 0);
    ws_put_be64(b + 32, p->log_seq);
    ws_put_be64(b + 40, p->log_off);
}

void ws_walpos_decode(const uint8_t *b, ws_walpos *p) {
    p->salt1 = ws_get_be32(b);
    p->salt2 = ws_get_be32(b + 4);
    p->frame = ws_get_be32(b + 8);
    p->ck1 = ws_get_be32(b + 12);
    p->ck2 = ws_get_be32(b + 16);
    p->flags = ws_get_be32(b + 20);
    p->page_size = ws_get_be32(b + 24);
    p->log_seq = ws_get_be64(b + 32);
    p->log_off = ws_get_be64(b + 40);
}

void seg_key(char *out, size_t n, uint64_t generation, uint64_t first_txid, uint64_t last_txid) {
    snprintf(out, n, "generations/%016" PRIx64 "/segments/%016" PRIx64 "-%016" PRIx64 ".seg",
             generation, first_txid, last_txid);
}

void snap_key(char *out, size_t n, uint64_t generation, uint64_t txid) {
    snprintf(out, n, "generations/%016" PRIx64 "/snapshots/%016" PRIx64 ".snap", generation, txid);
}


static const char *parse_gen_prefix(const char *key, uint64_t *gen) {
    static const char pre[] = "generations/";
    if (strncmp(key, pre, sizeof pre - 1) != 0) return NULL;
    key += sizeof pre - 1;
    if (ws_hex16(key, gen) != 0 || key[16] != '/') return NULL;
    return key + 17;
}

int objkey_parse_segment(const char *key, uint64_t *gen, uint64_t *first, uint64_t *last) {
    const char *p = parse_gen_prefix(key, gen);
    if (p == NULL || strncmp(p, "segments/", 9) != 0) return -1;
    p += 9;
    if (ws_hex16(p, first) != 0 || p[16] != '-' || ws_hex16(p + 17, last) != 0) return -1;
    if (strcmp(p + 33, ".seg") != 0 || *first > *last) return -1;
    return 0;
}

int objkey_parse_snapshot(const char *key, uint64_t *gen, uint64_t *txid) {
    const char *p = parse_gen_prefix(key, gen);
    if (p == NULL || strncmp(p, "snapshots/", 10) != 0) return -1;
    p += 10;
    if (ws_hex16(p, txid) != 0 || strcmp(p + 16, ".snap") != 0) return -1;
    return 0;
}

/* Fills *o as OBJKEY_BAD with why; name_len is the object name's length
** when the key continues it (a folder named like the object). */
static void bad_key(objkey *o, const char *why, size_t name_len) {
    o->kind = OBJKEY_BAD;
    o->why = why;
    o->name_len = name_len;
}

void objkey_classify(const char *key, objkey *o) {
    memset(o, 0, sizeof *o);
    static const char pre[] = "generations/";
    if (strncmp(key, pre, sizeof pre - 1) != 0) return;
    const char *g = key + sizeof pre - 1;
    const char *slash = strchr(g, '/');
    if (slash == NULL) return;
    const char *rest = slash + 1;
    int is_seg = strncmp(rest, "segments/", 9) == 0, is_snap = strncmp(rest, "snapshots/", 10) == 0;
    if (slash - g != 16 || ws_hex16(g, &o->gen) != 0) {
        if (is_seg || is_snap) bad_key(o, "its generation is not 16 lowercase hex digits", 0);
        return;
    }
    if (strcmp(rest, "owner") == 0) {
        o->kind = OBJKEY_MARKER;
        return;
    }
    if (!is_seg && !is_snap) return;
    const char *p = rest + (is_seg ? 9 : 10);
    size_t name_len;
    if (is_seg) {
        if (ws_hex16(p, &o->first) != 0 || p[16] != '-' || ws_hex16(p + 17, &o->last) != 0 ||
            strncmp(p + 33, ".seg", 4) != 0 || (p[37] != '\0' && p[37] != '/')) {
            bad_key(o, "it is not a valid segment name", 0);
            return;
        }
        name_len = (size_t)(p + 37 - key);
    } else {
        if (ws_hex16(p, &o->first) != 0 || strncmp(p + 16, ".snap", 5) != 0 ||
            (p[21] != '\0' && p[21] != '/')) {
            bad_key(o, "it is not a valid snapshot name", 0);
            return;
        }
        o->last = o->first;
        name_len = (size_t)(p + 21 - key);
    }
    o->kind = is_seg ? OBJKEY_SEGMENT : OBJKEY_SNAPSHOT;
    if (o->gen == 0 || o->gen >= WS_TXID_LIMIT)
        bad_key(o, "its generation id is 0 or 2^63 or more", 0);
    else if (o->first == 0)
        bad_key(o, "its TXID is 0", 0);
    else if (o->first > o->last)
        bad_key(o, "its first TXID is past its last", 0);
    else if (o->last >= WS_TXID_LIMIT)
        bad_key(o, "its TXID is 2^63 or more", 0);
    else if (key[name_len] == '/')
        bad_key(o, "something else is stored under its name (a folder on file://)", name_len);
}
