/*
** sqlite_api.h -- how vfs/ reaches SQLite.
**
** Compiled twice: for libwalship (direct calls into the linked libsqlite3)
** and, with WALSHIP_EXTENSION defined, for the loadable walship.so, where
** every SQLite call goes through the sqlite3_api routine table that the
** host process's SQLite hands to sqlite3_walship_init. That is what lets
** walship.so work inside Python, Node or Go processes that carry their own
** SQLite. Every file in vfs/ includes this header instead of sqlite3.h.
*/
#ifndef WS_SQLITE_API_H
#define WS_SQLITE_API_H

#ifdef WALSHIP_EXTENSION
#include <sqlite3ext.h>
SQLITE_EXTENSION_INIT3
#else
#include <sqlite3.h>
#endif

#endif
