/*
** vfs_internal.h -- shared between the files of vfs/.
*/
#ifndef WS_VFS_INTERNAL_H
#define WS_VFS_INTERNAL_H

#include "sqlite_api.h"

/* Nonzero if the named schema of db is opened through the walship VFS. */
int ws_vfs_is_walship(sqlite3 *db, const char *schema);

/* Registers the auto-extension that prepares every new connection whose main
** database uses the walship VFS (WAL mode, SQL functions). Idempotent. */
int ws_register_auto_extension(void);

#endif
