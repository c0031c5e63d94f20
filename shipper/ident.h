/*
** ident.h -- a spool's identity: which database it belongs to, that
** database's id, and the one destination it ships to.
**
** <spool>/ident is a short text file (docs/FORMAT.md section 3.3), created
** the first time a database is opened through walship and read by every
** later open, in any process:
**
**   walship-spool 1
**   db_id 0123456789abcdef     random, never 0; stamped on every object
**   db_path /abs/path/app.db   the database it was created for
**   url s3://bucket/app        where that database ships
**
** It fences a history to one database and one destination:
**   - an open that names another destination is refused (two processes
**     with different URLs would split one stream between two stores);
**   - a spool found beside another path (copied or moved with its
**     database) gets a new id: the database there is a different one as far
**     as any destination is concerned (the owner record decides, see
**     format/owner.h);
**   - `walship ship DB` and `walship status DB` learn the URL from it.
*/
#ifndef WS_IDENT_H
#define WS_IDENT_H

#include <stdint.h>

#include "../common/err.h"

typedef struct ws_ident {
    uint64_t db_id;
    char db_path[4096];
    char url[2048];
} ws_ident;

/* Reads <spool_dir>/ident. WALSHIP_ERR_NOTFOUND if there is none. */
int ident_load(const char *spool_dir, ws_ident *out, wserr *err);

/* The identity for opening db_path with destination url: loads it, creating
** it if absent (create-only, so concurrent first opens agree) and renewing
** the id if it was made for another path. Fails with WALSHIP_ERR_INVALID,
** naming both URLs and the fix, if the spool ships to another destination. */
int ident_attach(const char *spool_dir, const char *db_path, const char *url, ws_ident *out,
                 wserr *err);

/* A random 64-bit id, never 0. */
uint64_t ident_new_id(void);

/* Two destination URLs name the same place (ignoring trailing slashes of
** the path part). */
int ident_same_url(const char *a, const char *b);

#endif
