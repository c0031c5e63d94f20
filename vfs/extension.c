/*
** extension.c -- the loadable-extension entry point of walship.so.
**
** USAGE
**   sqlite3 shell:  .load ./walship.so
**   Python:         conn.enable_load_extension(True); conn.load_extension("./walship.so")
**   C:              sqlite3_load_extension(db, "walship.so", 0, &errmsg)
** Loading registers the "walship" VFS (not as the default); open databases
** with vfs="walship" (URI: file:app.db?vfs=walship) afterwards.
**
** The library stays loaded after the loading connection closes
** (SQLITE_OK_LOAD_PERMANENTLY), as the VFS must outlive it.
*/
#include "sqlite_api.h"

#include <stddef.h>

#include "walship.h"

#ifdef WALSHIP_EXTENSION
SQLITE_EXTENSION_INIT1

WALSHIP_API int sqlite3_walship_init(sqlite3 *db, char **pzErrMsg,
                                     const sqlite3_api_routines *pApi);

int sqlite3_walship_init(sqlite3 *db, char **pzErrMsg, const sqlite3_api_routines *pApi) {
    (void)db;
    (void)pzErrMsg;
    SQLITE_EXTENSION_INIT2(pApi);
    int rc = walship_register(NULL, 0);
    if (rc != SQLITE_OK) return rc;
    return SQLITE_OK_LOAD_PERMANENTLY;
}
#endif
