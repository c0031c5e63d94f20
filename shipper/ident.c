/*
** ident.c -- a spool's identity file. See ident.h.
*/
#include "ident.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "../common/log.h"
#include "../common/sysio.h"
#include "../common/util.h"
#include "../format/owner.h"

#define IDENT_MAGIC "walship-spool 1"
#define IDENT_MAX 8192

uint64_t ident_new_id(void) {
    uint64_t v = 0;
    while (v == 0) {
        if (getrandom(&v, sizeof v, 0) != (ssize_t)sizeof v)
            v = (uint64_t)ws_now_us() * 0x9e3779b97f4a7c15ull ^ (uint64_t)getpid();
    }
    return v;
}

static size_t url_core_len(const char *u) {
    const char *q = strchr(u, '?');
    size_t n = q ? (size_t)(q - u) : strlen(u);
    while (n > 0 && u[n - 1] == '/') n--;
    return n;
}

int ident_same_url(const char *a, const char *b) {
    size_t na = url_core_len(a), nb = url_core_len(b);
    if (na != nb || memcmp(a, b, na) != 0) return 0;
    const char *qa = strchr(a, '?'), *qb = strchr(b, '?');
    return strcmp(qa ? qa : "", qb ? qb : "") == 0;
}

static int ident_path(const char *dir, char *out, size_t n) {
    return snprintf(out, n, "%s/ident", dir) >= (int)n ? -1 : 0;
}

int ident_load(const char *spool_dir, ws_ident *out, wserr *err) {
    memset(out, 0, sizeof *out);
    char path[PATH_MAX];
    if (ident_path(spool_dir, path, sizeof path))
        return wserr_set(err, WALSHIP_ERR_INVALID, "spool path too long: %s", spool_dir);
    wsbuf b = {0};
    int rc = ws_read_file(path, IDENT_MAX, &b, err);
    if (rc) {
        wsbuf_free(&b);
        return rc;
    }
    char v[64];
    size_t mlen = strlen(IDENT_MAGIC);
    if (b.len <= mlen || memcmp(b.p, IDENT_MAGIC, mlen) != 0 || b.p[mlen] != '\n' ||
        ws_kv_get((const char *)b.p, b.len, "db_id", v, sizeof v) != 0 ||
        ws_hex64_parse(v, &out->db_id) != 0 || out->db_id == 0 ||
        ws_kv_get((const char *)b.p, b.len, "db_path", out->db_path, sizeof out->db_path) != 0 ||
        ws_kv_get((const char *)b.p, b.len, "url", out->url, sizeof out->url) != 0) {
        wsbuf_free(&b);
        return wserr_set(err, WALSHIP_ERR_CORRUPT,
                         "%s is damaged (it should name the database's id, path and "
                         "destination); move it away to let walship write a new one",
                         path);
    }
    wsbuf_free(&b);
    return 0;
}

/* Writes id for db_path/url. With replace == 0 the file is created only if
** absent (WALSHIP_ERR_EXISTS otherwise), so two first opens agree. */
static int ident_write(const char *spool_dir, const ws_ident *id, int replace, wserr *err) {
    char path[PATH_MAX], tmp[PATH_MAX + 32], text[IDENT_MAX];
    if (strchr(id->db_path, '\n') || strchr(id->url, '\n'))
        return wserr_set(err, WALSHIP_ERR_INVALID, "a path or URL with a newline cannot be recorded");
    int n = snprintf(text, sizeof text, IDENT_MAGIC "\ndb_id %016" PRIx64 "\ndb_path %s\nurl %s\n",
                     id->db_id, id->db_path, id->url);
    if (ident_path(spool_dir, path, sizeof path) || n < 0 || n >= (int)sizeof text ||
        snprintf(tmp, sizeof tmp, "%s.tmp-%d", path, (int)getpid()) >= (int)sizeof tmp)
        return wserr_set(err, WALSHIP_ERR_INVALID, "spool path too long: %s", spool_dir);
    int fd = ws_sys_open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return wserr_errno(err, wserr_from_errno(errno), errno, "create %s", tmp);
    int rc = 0;
    if (ws_write_all(fd, text, (size_t)n) != 0 || ws_sys_fdatasync(fd) != 0)
        rc = wserr_errno(err, wserr_from_errno(errno), errno, "write %s", tmp);
    close(fd);
    if (rc == 0) {
        int r = replace ? ws_sys_rename(tmp, path) : ws_sys_link(tmp, path);
        if (r != 0)
            rc = errno == EEXIST && !replace
                     ? WALSHIP_ERR_EXISTS
                     : wserr_errno(err, wserr_from_errno(errno), errno, "install %s", path);
    }
    unlink(tmp);
    if (rc == 0) rc = ws_fsync_dir_of(path, err);
    return rc;
}

int ident_attach(const char *spool_dir, const char *db_path, const char *url, ws_ident *out,
                 wserr *err) {
    for (int attempt = 0; attempt < 3; attempt++) {
        int rc = ident_load(spool_dir, out, err);
        if (rc == WALSHIP_ERR_NOTFOUND) {
            wserr_clear(err);
            memset(out, 0, sizeof *out);
            out->db_id = ident_new_id();
            if (ws_strlcpy(out->db_path, db_path, sizeof out->db_path) ||
                ws_strlcpy(out->url, url, sizeof out->url))
                return wserr_set(err, WALSHIP_ERR_INVALID, "database path or URL too long");
            rc = ident_write(spool_dir, out, 0, err);
            if (rc == WALSHIP_ERR_EXISTS) continue; /* another process was first: use its */
            if (rc == 0)
                WS_INFO("spool_identity", "db=%s db_id=%016" PRIx64 " created=1", db_path,
                        out->db_id);
            return rc;
        }
        if (rc) return rc;
        if (strcmp(out->db_path, db_path) != 0) {
            /* Copied or moved with its database: whatever it shipped
            ** belongs to the database at the old path. */
            uint64_t old = out->db_id;
            WS_WARN("spool_moved",
                    "spool=%s was_for=\"%s\" now_for=\"%s\" old_db_id=%016" PRIx64
                    " action=\"new database id\"",
                    spool_dir, out->db_path, db_path, old);
            out->db_id = ident_new_id();
            ws_strlcpy(out->db_path, db_path, sizeof out->db_path);
            if (!ident_same_url(out->url, url)) ws_strlcpy(out->url, url, sizeof out->url);
            return ident_write(spool_dir, out, 1, err);
        }
        if (!ident_same_url(out->url, url)) {
            char have[2048], want[2048];
            ws_redact_url(have, sizeof have, out->url);
            ws_redact_url(want, sizeof want, url);
            return wserr_set(err, WALSHIP_ERR_INVALID,
                             "%s ships to %s (recorded in %s/ident), not to %s: one database has "
                             "one destination. Open it with that URL; to move it to a new one, "
                             "stop every process using it, run `walship ship %s --drain`, then "
                             "remove %s",
                             db_path, have, spool_dir, want, db_path, spool_dir);
        }
        return 0;
    }
    return wserr_set(err, WALSHIP_ERR_IO, "could not settle %s/ident with other processes",
                     spool_dir);
}
