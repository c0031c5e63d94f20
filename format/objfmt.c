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

/* Parses exactly 16 lowercase hex digits. */
static int parse_hex16(const char *s, uint64_t *out) {
    uint64_t v = 0;
    for (int i = 0; i < 16; i++) {
        char c = s[i];
        int d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else
            return -1;
        v = v << 4 | (uint64_t)d;
    }
    *out = v;
    return 0;
}

static const char *parse_gen_prefix(const char *key, uint64_t *gen) {
    static const char pre[] = "generations/";
    if (strncmp(key, pre, sizeof pre - 1) != 0) return NULL;
    key += sizeof pre - 1;
    if (parse_hex16(key, gen) != 0 || key[16] != '/') return NULL;
    return key + 17;
}

int objkey_parse_segment(const char *key, uint64_t *gen, uint64_t *first, uint64_t *last) {
    const char *p = parse_gen_prefix(key, gen);
    if (p == NULL || strncmp(p, "segments/", 9) != 0) return -1;
    p += 9;
    if (parse_hex16(p, first) != 0 || p[16] != '-' || parse_hex16(p + 17, last) != 0) return -1;
    if (strcmp(p + 33, ".seg") != 0 || *first > *last) return -1;
    return 0;
}

int objkey_parse_snapshot(const char *key, uint64_t *gen, uint64_t *txid) {
    const char *p = parse_gen_prefix(key, gen);
    if (p == NULL || strncmp(p, "snapshots/", 10) != 0) return -1;
    p += 10;
    if (parse_hex16(p, txid) != 0 || strcmp(p + 16, ".snap") != 0) return -1;
    return 0;
}
