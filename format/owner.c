/*
** owner.c -- ownership records. See owner.h; the bytes are specified in
** docs/FORMAT.md section 2.3.
*/
#include "owner.h"

#include "../common/util.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define OWNER_MAGIC "walship-owner 1"

int ws_hex64_parse(const char *s, uint64_t *out) {
    if (strnlen(s, 17) != 16) return -1;
    return ws_hex16(s, out);
}

int ws_kv_get(const char *buf, size_t n, const char *key, char *out, size_t outn) {
    size_t klen = strlen(key);
    size_t i = 0;
    while (i < n) {
        const char *line = buf + i;
        const char *nl = memchr(line, '\n', n - i);
        size_t len = nl ? (size_t)(nl - line) : n - i;
        i += len + 1;
        if (len > klen && memcmp(line, key, klen) == 0 && line[klen] == ' ') {
            size_t vlen = len - klen - 1;
            if (vlen >= outn || memchr(line + klen + 1, '\0', vlen)) return -1;
            memcpy(out, line + klen + 1, vlen);
            out[vlen] = '\0';
            return 0;
        }
    }
    return -1;
}

static int has_newline(const char *s) { return strchr(s, '\n') != NULL; }

size_t owner_encode(const ws_owner *o, char *out, size_t n) {
    if (o->db_id == 0 || has_newline(o->host) || has_newline(o->path)) return 0;
    int w = snprintf(out, n,
                     OWNER_MAGIC "\ndb_id %016" PRIx64 "\nhost %s\npath %s\nsince_ms %" PRId64 "\n",
                     o->db_id, o->host, o->path, o->since_ms);
    if (w < 0 || (size_t)w >= n) return 0;
    size_t len = (size_t)w;
    if (o->nprevious > 0) {
        w = snprintf(out + len, n - len, "previous");
        if (w < 0 || (size_t)w >= n - len) return 0;
        len += (size_t)w;
        for (int i = 0; i < o->nprevious; i++) {
            w = snprintf(out + len, n - len, " %016" PRIx64, o->previous[i]);
            if (w < 0 || (size_t)w >= n - len) return 0;
            len += (size_t)w;
        }
        if (len + 1 >= n) return 0;
        out[len++] = '\n';
        out[len] = '\0';
    }
    return len;
}

int owner_parse(const void *vbuf, size_t n, ws_owner *o, wserr *err) {
    const char *buf = vbuf;
    memset(o, 0, sizeof *o);
    size_t mlen = strlen(OWNER_MAGIC);
    if (n > OWNER_RECORD_MAX)
        return wserr_set(err, WALSHIP_ERR_CORRUPT, "ownership record is %zu bytes, more than %d",
                         n, OWNER_RECORD_MAX);
    if (n < mlen + 1 || memcmp(buf, OWNER_MAGIC, mlen) != 0 || buf[mlen] != '\n')
        return wserr_set(err, WALSHIP_ERR_CORRUPT,
                         "not a walship ownership record (it must start with \"" OWNER_MAGIC "\")");
    char v[4096];
    if (ws_kv_get(buf, n, "db_id", v, sizeof v) != 0 || ws_hex64_parse(v, &o->db_id) != 0 ||
        o->db_id == 0)
        return wserr_set(err, WALSHIP_ERR_CORRUPT,
                         "ownership record has no valid db_id (16 lowercase hex digits)");
    if (ws_kv_get(buf, n, "host", o->host, sizeof o->host) != 0) o->host[0] = '\0';
    if (ws_kv_get(buf, n, "path", o->path, sizeof o->path) != 0) o->path[0] = '\0';
    if (ws_kv_get(buf, n, "since_ms", v, sizeof v) == 0) {
        char *end;
        long long t = strtoll(v, &end, 10);
        if (*end != '\0' || end == v)
            return wserr_set(err, WALSHIP_ERR_CORRUPT, "ownership record has a bad since_ms");
        o->since_ms = (int64_t)t;
    }
    if (ws_kv_get(buf, n, "previous", v, sizeof v) == 0) {
        const char *p = v;
        while (*p) {
            if (o->nprevious == OWNER_PREVIOUS_MAX)
                return wserr_set(err, WALSHIP_ERR_CORRUPT,
                                 "ownership record lists more than %d previous owners",
                                 OWNER_PREVIOUS_MAX);
            char id[17];
            if (strlen(p) < 16) goto bad_prev;
            memcpy(id, p, 16);
            id[16] = '\0';
            if (ws_hex64_parse(id, &o->previous[o->nprevious]) != 0 ||
                o->previous[o->nprevious] == 0)
                goto bad_prev;
            o->nprevious++;
            p += 16;
            if (*p == ' ')
                p++;
            else if (*p != '\0')
                goto bad_prev;
        }
    }
    return 0;
bad_prev:
    return wserr_set(err, WALSHIP_ERR_CORRUPT,
                     "ownership record has a bad previous list (16-hex-digit ids, one space apart)");
}

int owner_lineage_has(const ws_owner *o, uint64_t id) {
    if (id == 0) return 0;
    if (o->db_id == id) return 1;
    for (int i = 0; i < o->nprevious; i++)
        if (o->previous[i] == id) return 1;
    return 0;
}

void owner_succeed(ws_owner *o, uint64_t id, const char *host, const char *path, int64_t now_ms) {
    if (o->db_id != 0 && o->db_id != id) {
        if (o->nprevious == OWNER_PREVIOUS_MAX) {
            memmove(o->previous, o->previous + 1, sizeof o->previous - sizeof o->previous[0]);
            o->nprevious--;
        }
        o->previous[o->nprevious++] = o->db_id;
    }
    o->db_id = id;
    snprintf(o->host, sizeof o->host, "%s", host);
    snprintf(o->path, sizeof o->path, "%s", path);
    o->since_ms = now_ms;
}

void owner_gen_key(char *out, size_t n, uint64_t generation) {
    snprintf(out, n, "generations/%016" PRIx64 "/owner", generation);
}
