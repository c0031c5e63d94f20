/*
** owner.h -- ownership records: what ties a destination, and each
** generation in it, to the one database that writes it.
**
** A history belongs to one database. Every database that ships gets a
** random 64-bit id (kept in its spool, shipper/ident.c) and stamps it on
** every object it writes (segment header, snapshot header and footer). The
** store holds two kinds of records naming it (docs/FORMAT.md section 2.3):
**
**   owner                    the database that ships to this destination
**                            now, and the ones that did before it
**                            (`previous`, oldest first);
**   generations/<gen>/owner  the database that began generation <gen>,
**                            written create-only before any of its objects,
**                            so no other database can extend it.
**
** Both are short text records, one "key value" line each, that humans can
** read with any tool. The parser treats them as hostile input: bounded,
** every field checked, unknown keys ignored (later versions may add some).
*/
#ifndef WS_OWNER_H
#define WS_OWNER_H

#include <stddef.h>
#include <stdint.h>

#include "../common/err.h"

#define OWNER_KEY "owner"
#define OWNER_PREVIOUS_MAX 64
#define OWNER_RECORD_MAX 8192 /* bytes; larger objects are refused */

typedef struct ws_owner {
    uint64_t db_id;                        /* never 0 */
    char host[256];                        /* hostname of the database's machine */
    char path[2048];                       /* the database file's absolute path */
    int64_t since_ms;                      /* when it became the owner */
    uint64_t previous[OWNER_PREVIOUS_MAX]; /* earlier owners, oldest first */
    int nprevious;
} ws_owner;

/* Writes the record as text into out (size n). Returns its length, or 0 if
** it does not fit or a field cannot be written (a newline in a path). */
size_t owner_encode(const ws_owner *o, char *out, size_t n);

/* Parses a record (at most OWNER_RECORD_MAX bytes). WALSHIP_ERR_CORRUPT
** with a sentence saying what is wrong. */
int owner_parse(const void *buf, size_t n, ws_owner *out, wserr *err);

/* Nonzero if id is o's database or one of the databases before it. */
int owner_lineage_has(const ws_owner *o, uint64_t id);

/* Makes o's database a previous owner and id (at host, path) the owner.
** The oldest previous entries drop out past OWNER_PREVIOUS_MAX. */
void owner_succeed(ws_owner *o, uint64_t id, const char *host, const char *path, int64_t now_ms);

/* Key of a generation's ownership marker: "generations/<gen>/owner". */
void owner_gen_key(char *out, size_t n, uint64_t generation);

/* ---- the "key value" lines both records (and the spool's ident) use ---- */

/* Finds the line "key value" in buf (n bytes) and copies value (the rest of
** the line after one space) into out. Returns 0, or -1 if there is no such
** line or the value does not fit. */
int ws_kv_get(const char *buf, size_t n, const char *key, char *out, size_t outn);

/* Parses exactly 16 lowercase hex digits. Returns 0 or -1. */
int ws_hex64_parse(const char *s, uint64_t *out);

#endif
