/*
** config.h -- per-database options, from URI parameters (walship_<name>)
** and environment variables (WALSHIP_<NAME>); URI wins.
**
**   url               destination: s3://bucket/prefix or file:///dir. The
**                     WALSHIP_URL environment variable is a base: each
**                     database ships to <base>/<database file name>.
**   ship_interval     batch window before a segment is uploaded (default 1s;
**                     0 = as soon as possible). Durations: 250ms, 5s, 10m, 24h, 7d.
**   zstd_level        1..19 (default 3)
**   snapshot_interval a new snapshot after this long (default 1h), or sooner
**                     once the segments stored since the last one add up
**                     to its size (4 MiB at least)
**   retention         keep what restores to any point in this window need
**                     (default 24h)
**   upload            1 (default): this process may become the shipper; 0: it
**                     only records commits, and `walship ship DB` (or another
**                     process) uploads them
**   adopt             1: this database takes over a destination another
**                     database owns (after a restore on a new machine, say);
**                     0 (default): such a destination is refused
**   spool_limit       bytes the spool may hold while the store is unreachable
**                     (default 0: twice the database size, 1 GiB at least);
**                     past it the queued history is dropped and a new
**                     generation starts once the store answers again
**   spool_dir         where the spool lives (default <db>-walship beside it;
**                     WALSHIP_SPOOL_DIR is a base: <base>/<name>-walship)
*/
#ifndef WS_CONFIG_H
#define WS_CONFIG_H

#include <stdint.h>

#include "../common/err.h"

typedef struct ws_config {
    char url[2048];
    char spool_dir[4096];
    int64_t ship_interval_ms;
    int zstd_level;
    int64_t snapshot_interval_ms;
    int64_t retention_ms;
    int upload;
    int adopt;
    uint64_t spool_limit; /* 0: the default */
} ws_config;

/* Looks up an option by name: first through get_param (URI parameter
** "walship_<name>", may be NULL), then the environment (WALSHIP_<NAME>).
** Fills cfg for the database at db_path. Errors name the bad option. */
typedef const char *(*ws_param_fn)(void *ctx, const char *name);
int ws_config_load(ws_config *cfg, const char *db_path, ws_param_fn get_param, void *ctx,
                   wserr *err);

/* Parses "512MiB", "4GiB", "100MB", "1000" (bytes; k/M/G/T powers of 1000,
** KiB/MiB/GiB/TiB of 1024). Returns 0 or WALSHIP_ERR_INVALID. */
int ws_parse_size(const char *s, uint64_t *out);

/* Parses "250ms", "5s", "10m", "24h", "7d" or a plain number of default_unit_ms. */
int ws_parse_duration(const char *s, int64_t default_unit_ms, int64_t *out_ms);

#endif
