/*
** autoext.c -- what every new connection through walship gets: WAL mode and
** the walship_flush() SQL function.
**
** Registered with sqlite3_auto_extension by walship_register(), so it runs
** inside sqlite3_open_v2 for every connection of the process (in the
** extension build, for every connection opened after walship.so was loaded).
** For connections whose main database is not opened through walship it does
** nothing.
**
**   SELECT walship_flush(timeout_ms)   1 when every transaction committed so
**                                      far is in the store, 0 on timeout
**                                      (negative timeout: wait forever)
*/
#include <stddef.h>

#include "../shipper/shipper.h"
#include "sqlite_api.h"
#include "vfs_internal.h"
#include "walship.h"

static void flush_func(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
    sqlite3 *db = sqlite3_context_db_handle(ctx);
    sqlite3_int64 timeout = argc > 0 ? sqlite3_value_int64(argv[0]) : -1;
    const char *path = sqlite3_db_filename(db, "main");
    shipper *sh = path ? shipper_find(path) : NULL;
    if (sh == NULL) {
        sqlite3_result_error(ctx, "walship_flush: this database is not shipped by walship "
                                  "(open it with vfs=walship and a walship_url)", -1);
        return;
    }
    int rc = shipper_flush(sh, timeout);
    shipper_detach(sh);
    if (rc < 0) {
        sqlite3_result_error(ctx, walship_strerror(-rc), -1);
        return;
    }
    sqlite3_result_int(ctx, rc);
}

static int prepare_connection(sqlite3 *db, char **pzErrMsg, const void *pApi) {
    (void)pApi;
    if (!ws_vfs_is_walship(db, "main")) return SQLITE_OK;
    int rc = sqlite3_create_function(db, "walship_flush", -1, SQLITE_UTF8, NULL, flush_func,
                                     NULL, NULL);
    if (rc != SQLITE_OK) return rc;
    if (sqlite3_db_readonly(db, "main") == 1) return SQLITE_OK;
    /* Another connection may hold a lock for a moment (a checkpoint, the
    ** last connection closing): wait for it. The new connection has no busy
    ** handler of its own yet, and gets none from us afterwards. */
    sqlite3_busy_timeout(db, 10000);
    char *err = NULL;
    rc = sqlite3_exec(db, "PRAGMA journal_mode=WAL", NULL, NULL, &err);
    sqlite3_busy_timeout(db, 0);
    if (rc == SQLITE_OK) {
        /* The pragma reports the mode it ended in; anything but wal (e.g. a
        ** memory database) means walship cannot ship this database. */
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL) == SQLITE_OK &&
            sqlite3_step(st) == SQLITE_ROW) {
            const unsigned char *mode = sqlite3_column_text(st, 0);
            if (mode == NULL || sqlite3_stricmp((const char *)mode, "wal") != 0) {
                *pzErrMsg = sqlite3_mprintf("walship: could not switch %s to WAL mode "
                                            "(journal_mode is %s)",
                                            sqlite3_db_filename(db, "main"),
                                            mode ? (const char *)mode : "unknown");
                rc = SQLITE_ERROR;
            }
        }
        sqlite3_finalize(st);
        return rc;
    }
    *pzErrMsg = sqlite3_mprintf("walship: could not switch %s to WAL mode: %s",
                                sqlite3_db_filename(db, "main"), err ? err : "unknown error");
    sqlite3_free(err);
    return rc;
}

int ws_register_auto_extension(void) {
    return sqlite3_auto_extension((void (*)(void))prepare_connection);
}
