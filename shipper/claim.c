/*
** claim.c -- a history belongs to one database: the shipper's side of the
** ownership records (docs/FORMAT.md section 2.3, format/owner.h).
**
**   claim_destination   before anything is uploaded (at start-up, at every
**                       generation start and now and then): the store's
**                       `owner` record must name this database, or be
**                       created naming it (create-only, so two databases
**                       starting at once cannot both win). Another
**                       database's record is adopted only when it names this
**                       very host and path (the spool was lost, the
**                       database is the same) or when the user says so
**                       (walship_adopt=1, e.g. after restoring onto a new
**                       machine); otherwise the destination is refused.
**   claim_generation    before a generation's first object: its marker
**                       `generations/<gen>/owner`, create-only; a shipper
**                       never extends a generation whose marker names
**                       another database.
**
** Both run on the shipper's worker, with the store's own retries; their
** failures are reported like any upload failure.
*/
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "../common/log.h"
#include "../common/util.h"
#include "../format/owner.h"
#include "shipper_impl.h"

static void our_record(shipper *sh, ws_owner *o) {
    memset(o, 0, sizeof *o);
    o->db_id = sh->db_id;
    if (gethostname(o->host, sizeof o->host) != 0) snprintf(o->host, sizeof o->host, "unknown");
    o->host[sizeof o->host - 1] = '\0';
    snprintf(o->path, sizeof o->path, "%s", sh->db_path);
    o->since_ms = ws_now_ms();
}

/* Reads and parses the record at key. WALSHIP_ERR_NOTFOUND if absent. */
static int read_record(shipper *sh, const char *key, ws_owner *o, wserr *err) {
    wsbuf b = {0};
    int rc = store_get(sh->ss.st, key, &b, err);
    if (rc == 0 && b.len > OWNER_RECORD_MAX)
        rc = wserr_set(err, WALSHIP_ERR_CORRUPT, "%s is %zu bytes, not an ownership record", key,
                       b.len);
    if (rc == 0) rc = owner_parse(b.p, b.len, o, err);
    if (rc && rc != WALSHIP_ERR_NOTFOUND) wserr_prefix(err, "%s in the store", key);
    wsbuf_free(&b);
    return rc;
}

static int write_record(shipper *sh, const char *key, const ws_owner *o, int create_only,
                        wserr *err) {
    char text[OWNER_RECORD_MAX];
    size_t n = owner_encode(o, text, sizeof text);
    if (n == 0) return wserr_set(err, WALSHIP_ERR_INVALID, "cannot write the ownership record");
    int rc = store_put(sh->ss.st, key, text, n, create_only ? STORE_PUT_CREATE_ONLY : 0, err);
    if (rc == WALSHIP_ERR_UNSUPPORTED && create_only) {
        /* A server without conditional puts: write, then read back who won. */
        wserr_clear(err);
        WS_WARN("create_only_unsupported", "db=%s key=%s", sh->db_path, key);
        rc = store_put(sh->ss.st, key, text, n, 0, err);
        ws_owner back;
        if (rc == 0 && (rc = read_record(sh, key, &back, err)) == 0 && back.db_id != o->db_id)
            rc = WALSHIP_ERR_EXISTS;
    }
    return rc;
}

int claim_destination(shipper *sh, wserr *err) {
    ws_owner cur, ours;
    our_record(sh, &ours);
    for (int attempt = 0; attempt < 3; attempt++) {
        int rc = read_record(sh, OWNER_KEY, &cur, err);
        if (rc == WALSHIP_ERR_NOTFOUND) {
            wserr_clear(err);
            rc = write_record(sh, OWNER_KEY, &ours, 1, err);
            if (rc == WALSHIP_ERR_EXISTS) {
                wserr_clear(err);
                continue; /* another database claimed it this instant: look again */
            }
            if (rc == 0)
                WS_INFO("destination_claimed", "db=%s db_id=%016" PRIx64, sh->db_path, sh->db_id);
            return rc;
        }
        if (rc) return rc;
        if (cur.db_id == sh->db_id) return 0;
        int same_place = strcmp(cur.host, ours.host) == 0 && strcmp(cur.path, ours.path) == 0;
        if (!same_place && !sh->cfg.adopt) {
            char url[2048];
            ws_redact_url(url, sizeof url, sh->cfg.url);
            return wserr_set(err, WALSHIP_ERR_OWNER,
                             "%s holds the backups of another database (%s on %s, id %016" PRIx64
                             "); %s (id %016" PRIx64 ") ships nothing there. Give it its own "
                             "destination (walship_url), or, if it now replaces that database "
                             "(restored from these backups), open it once with walship_adopt=1",
                             url, cur.path, cur.host, cur.db_id, sh->db_path, sh->db_id);
        }
        WS_WARN("destination_adopted",
                "db=%s db_id=%016" PRIx64 " previous_db_id=%016" PRIx64
                " previous=\"%s on %s\" why=\"%s\"",
                sh->db_path, sh->db_id, cur.db_id, cur.path, cur.host,
                same_place ? "same host and path: the spool was lost" : "walship_adopt=1");
        owner_succeed(&cur, sh->db_id, ours.host, ours.path, ours.since_ms);
        return write_record(sh, OWNER_KEY, &cur, 0, err);
    }
    return wserr_set(err, WALSHIP_ERR_BUSY, "could not settle the destination's owner record");
}

int claim_writable(shipper *sh, wserr *err) {
    int rc = claim_destination(sh, err);
    ws_owner cur;
    if (rc == 0) rc = read_record(sh, OWNER_KEY, &cur, err);
    if (rc == 0 && cur.db_id != sh->db_id)
        rc = wserr_set(err, WALSHIP_ERR_OWNER, "the destination changed owner");
    if (rc == 0) rc = write_record(sh, OWNER_KEY, &cur, 0, err);
    return rc;
}

int claim_generation(shipper *sh, uint64_t gen, wserr *err) {
    char key[64];
    owner_gen_key(key, sizeof key, gen);
    ws_owner ours, cur;
    our_record(sh, &ours);
    int rc = write_record(sh, key, &ours, 1, err);
    if (rc != WALSHIP_ERR_EXISTS) return rc;
    wserr_clear(err);
    if ((rc = read_record(sh, key, &cur, err))) return rc;
    if (cur.db_id == sh->db_id) return 0; /* ours, from before a restart */
    return wserr_set(err, WALSHIP_ERR_OWNER,
                     "generation %016" PRIx64 " in the store belongs to another database (%s on "
                     "%s); it is never extended",
                     gen, cur.path, cur.host);
}

int claim_generation_check(shipper *sh, uint64_t gen, wserr *err) {
    char key[64];
    owner_gen_key(key, sizeof key, gen);
    ws_owner cur;
    int rc = read_record(sh, key, &cur, err);
    if (rc == WALSHIP_ERR_NOTFOUND) {
        /* Written before markers existed (or its put was cut short): mark it now. */
        wserr_clear(err);
        return claim_generation(sh, gen, err);
    }
    if (rc) return rc;
    if (cur.db_id == sh->db_id) return 0;
    return wserr_set(err, WALSHIP_ERR_OWNER,
                     "generation %016" PRIx64 " in the store belongs to another database (%s on "
                     "%s)",
                     gen, cur.path, cur.host);
}
