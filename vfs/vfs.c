/* vfs.c -- placeholder until the pipeline lands. */
#include "sqlite_api.h"
#include "walship.h"

int walship_register(const char *base_vfs, int make_default) {
    (void)base_vfs;
    (void)make_default;
    return SQLITE_OK;
}

int walship_flush(const char *db_path, int timeout_ms) {
    (void)db_path;
    (void)timeout_ms;
    return -WALSHIP_ERR_NOTFOUND;
}
