/*
** walship.h -- public C API of walship.
**
** walship gives a SQLite database continuous, compressed, point-in-time
** backups in S3-compatible object storage and read replicas fed from it.
** An application registers the "walship" VFS once and opens its database
** through it; every committed transaction is then shipped to the store.
**
**   walship_register(NULL, 0);
**   sqlite3_open_v2("file:app.db?walship_url=s3%3A%2F%2Fbucket%2Fapp", &db,
**                   SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
**                   SQLITE_OPEN_URI, "walship");
**
** Error codes are stable: they are never renumbered, only appended.
** Every function is thread-safe unless its comment says otherwise.
*/
#ifndef WALSHIP_H
#define WALSHIP_H

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define WALSHIP_API __attribute__((visibility("default")))
#else
#define WALSHIP_API
#endif

#define WALSHIP_VERSION_MAJOR 0
#define WALSHIP_VERSION_MINOR 1
#define WALSHIP_VERSION_PATCH 0
#define WALSHIP_VERSION_STRING "0.1.0"
/* MAJOR*10000 + MINOR*100 + PATCH, comparable with walship_version_number(). */
#define WALSHIP_VERSION_NUMBER                                                 \
    (WALSHIP_VERSION_MAJOR * 10000 + WALSHIP_VERSION_MINOR * 100 +             \
     WALSHIP_VERSION_PATCH)

/* The version of the library actually linked or loaded, which may differ
** from the header a program was compiled against. */
WALSHIP_API const char *walship_version(void);
WALSHIP_API int walship_version_number(void);

/* Error codes. 0 is success; everything else is a failure whose meaning
** walship_strerror() names. Never renumbered. */
typedef enum walship_err {
    WALSHIP_OK = 0,
    WALSHIP_ERR_NOMEM = 1,       /* out of memory */
    WALSHIP_ERR_IO = 2,          /* local file system error */
    WALSHIP_ERR_INVALID = 3,     /* bad argument, URL or option */
    WALSHIP_ERR_CORRUPT = 4,     /* data failed a check: magic, length, checksum */
    WALSHIP_ERR_NOTFOUND = 5,    /* object, file or generation does not exist */
    WALSHIP_ERR_EXISTS = 6,      /* target exists (create-only put, restore without --force) */
    WALSHIP_ERR_AUTH = 7,        /* credentials refused or missing */
    WALSHIP_ERR_NETWORK = 8,     /* store unreachable, connection or timeout */
    WALSHIP_ERR_STORE = 9,       /* the store answered with an error */
    WALSHIP_ERR_UNSUPPORTED = 10,/* the store or database lacks a needed feature */
    WALSHIP_ERR_TIMEOUT = 11,    /* a deadline passed */
    WALSHIP_ERR_BUSY = 12,       /* another process holds what is needed */
    WALSHIP_ERR_NOSPACE = 13,    /* local disk full */
    WALSHIP_ERR_STATE = 14,      /* operation not valid in the current state */
    WALSHIP_ERR_SQLITE = 15,     /* SQLite returned an error */
    WALSHIP_ERR_OWNER = 16       /* the destination holds another database's history */
} walship_err;

/* A short, static, English description of an error code ("corrupt data").
** Unknown codes give "unknown error". Never NULL. */
WALSHIP_API const char *walship_strerror(int err);

/* Registers the "walship" VFS as a shim over the VFS named base_vfs
** (NULL: the current default VFS). make_default != 0 also makes it the
** default VFS. Idempotent: a second call returns SQLITE_OK without changes.
** Returns a SQLite result code. */
WALSHIP_API int walship_register(const char *base_vfs, int make_default);

/* Blocks until every transaction committed so far to the database at
** db_path is in the store -- whether committed through walship in any
** process or by a plain SQLite connection (its commits are taken from the
** WAL) -- or until timeout_ms passes (negative: wait forever). Returns 1
** when flushed, 0 on timeout (the database's status says why), and a
** negative walship_err on failure (-WALSHIP_ERR_NOTFOUND if the database is
** not open through walship in this process). */
WALSHIP_API int walship_flush(const char *db_path, int timeout_ms);

#ifdef __cplusplus
}
#endif
#endif /* WALSHIP_H */
