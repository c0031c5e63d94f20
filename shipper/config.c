/*
** config.c -- option parsing. See config.h.
*/
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/util.h"

int ws_parse_duration(const char *s, int64_t default_unit_ms, int64_t *out_ms) {
    if (s == NULL || *s == '\0') return WALSHIP_ERR_INVALID;
    char *end;
    double v = strtod(s, &end);
    if (end == s || v < 0 || v > 1e15) return WALSHIP_ERR_INVALID;
    int64_t unit = default_unit_ms;
    if (strcmp(end, "") == 0)
        unit = default_unit_ms;
    else if (strcmp(end, "ms") == 0)
        unit = 1;
    else if (strcmp(end, "s") == 0)
        unit = 1000;
    else if (strcmp(end, "m") == 0)
        unit = 60000;
    else if (strcmp(end, "h") == 0)
        unit = 3600000;
    else if (strcmp(end, "d") == 0)
        unit = 86400000;
    else
        return WALSHIP_ERR_INVALID;
    *out_ms = (int64_t)(v * (double)unit);
    return 0;
}

static const char *lookup(const char *name, ws_param_fn get_param, void *ctx) {
    char key[64];
    if (get_param) {
        snprintf(key, sizeof key, "walship_%s", name);
        const char *v = get_param(ctx, key);
        if (v && *v) return v;
    }
    snprintf(key, sizeof key, "WALSHIP_%s", name);
    for (char *p = key; *p; p++) *p = (char)toupper((unsigned char)*p);
    const char *v = getenv(key);
    return v && *v ? v : NULL;
}

static int duration_opt(const char *name, int64_t dflt, int64_t unit, int64_t *out,
                        ws_param_fn get_param, void *ctx, wserr *err) {
    const char *v = lookup(name, get_param, ctx);
    *out = dflt;
    if (v == NULL) return 0;
    if (ws_parse_duration(v, unit, out) != 0)
        return wserr_set(err, WALSHIP_ERR_INVALID,
                         "walship_%s=\"%.100s\" is not a duration (examples: 250ms, 5s, 10m, 24h, 7d)",
                         name, v);
    return 0;
}

static int bool_opt(const char *name, int dflt, int *out, ws_param_fn get_param, void *ctx,
                    wserr *err) {
    const char *v = lookup(name, get_param, ctx);
    *out = dflt;
    if (v == NULL) return 0;
    if (strcmp(v, "0") == 0 || strcmp(v, "off") == 0 || strcmp(v, "false") == 0)
        *out = 0;
    else if (strcmp(v, "1") == 0 || strcmp(v, "on") == 0 || strcmp(v, "true") == 0)
        *out = 1;
    else
        return wserr_set(err, WALSHIP_ERR_INVALID, "walship_%s=\"%.50s\" must be 1 or 0 (on or off)",
                         name, v);
    return 0;
}

int ws_parse_size(const char *s, uint64_t *out) {
    if (s == NULL || *s < '0' || *s > '9') return WALSHIP_ERR_INVALID;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno == ERANGE) return WALSHIP_ERR_INVALID;
    static const struct {
        const char *sfx;
        uint64_t mul;
    } units[] = {{"", 1},          {"B", 1},          {"k", 1000},          {"KB", 1000},
                 {"KiB", 1024},    {"M", 1000000},    {"MB", 1000000},      {"MiB", 1 << 20},
                 {"G", 1000000000}, {"GB", 1000000000}, {"GiB", (uint64_t)1 << 30},
                 {"T", 1000000000000ull}, {"TB", 1000000000000ull}, {"TiB", (uint64_t)1 << 40}};
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcmp(end, units[i].sfx) != 0) continue;
        if (v > UINT64_MAX / units[i].mul) return WALSHIP_ERR_INVALID;
        *out = (uint64_t)v * units[i].mul;
        return 0;
    }
    return WALSHIP_ERR_INVALID;
}

int ws_config_load(ws_config *cfg, const char *db_path, ws_param_fn get_param, void *ctx,
                   wserr *err) {
    memset(cfg, 0, sizeof *cfg);
    const char *url = get_param ? get_param(ctx, "walship_url") : NULL;
    if (url && *url) {
        if (ws_strlcpy(cfg->url, url, sizeof cfg->url))
            return wserr_set(err, WALSHIP_ERR_INVALID, "walship_url is too long");
    } else {
        const char *base = getenv("WALSHIP_URL");
        if (base == NULL || *base == '\0')
            return wserr_set(err, WALSHIP_ERR_INVALID,
                             "no destination: add walship_url=URL to the database URI or set "
                             "WALSHIP_URL (e.g. s3://bucket/prefix or file:///dir); database %s",
                             db_path);
        const char *slash = strrchr(db_path, '/');
        const char *name = slash ? slash + 1 : db_path;
        /* Insert "/<name>" before any "?query" of the base URL. */
        const char *q = strchr(base, '?');
        size_t blen = q ? (size_t)(q - base) : strlen(base);
        while (blen > 0 && base[blen - 1] == '/') blen--;
        if (snprintf(cfg->url, sizeof cfg->url, "%.*s/%s%s", (int)blen, base, name, q ? q : "") >=
            (int)sizeof cfg->url)
            return wserr_set(err, WALSHIP_ERR_INVALID, "WALSHIP_URL is too long");
    }
    int rc;
    if ((rc = duration_opt("ship_interval", 1000, 1, &cfg->ship_interval_ms, get_param, ctx, err)))
        return rc;
    if ((rc = duration_opt("snapshot_interval", 3600000, 1000, &cfg->snapshot_interval_ms,
                           get_param, ctx, err)))
        return rc;
    if ((rc = duration_opt("retention", 86400000, 1000, &cfg->retention_ms, get_param, ctx, err)))
        return rc;
    if ((rc = bool_opt("upload", 1, &cfg->upload, get_param, ctx, err))) return rc;
    if ((rc = bool_opt("adopt", 0, &cfg->adopt, get_param, ctx, err))) return rc;
    const char *lim = lookup("spool_limit", get_param, ctx);
    cfg->spool_limit = 0;
    if (lim && ws_parse_size(lim, &cfg->spool_limit) != 0)
        return wserr_set(err, WALSHIP_ERR_INVALID,
                         "walship_spool_limit=\"%.50s\" is not a size (examples: 512MiB, 4GiB, "
                         "0 for the default)",
                         lim);
    const char *lv = lookup("zstd_level", get_param, ctx);
    cfg->zstd_level = 3;
    if (lv) {
        char *end;
        long l = strtol(lv, &end, 10);
        if (*end != '\0' || l < 1 || l > 19)
            return wserr_set(err, WALSHIP_ERR_INVALID,
                             "walship_zstd_level=\"%.50s\" must be a number from 1 to 19", lv);
        cfg->zstd_level = (int)l;
    }
    /* The URI parameter names this database's spool directory; the
    ** environment variable is a base shared by every database. */
    const char *sd = get_param ? get_param(ctx, "walship_spool_dir") : NULL;
    const char *sbase = getenv("WALSHIP_SPOOL_DIR");
    const char *slash = strrchr(db_path, '/');
    int n;
    if (sd && *sd)
        n = snprintf(cfg->spool_dir, sizeof cfg->spool_dir, "%s", sd);
    else if (sbase && *sbase)
        n = snprintf(cfg->spool_dir, sizeof cfg->spool_dir, "%s/%s-walship", sbase,
                     slash ? slash + 1 : db_path);
    else
        n = snprintf(cfg->spool_dir, sizeof cfg->spool_dir, "%s-walship", db_path);
    if (n >= (int)sizeof cfg->spool_dir)
        return wserr_set(err, WALSHIP_ERR_INVALID, "spool directory path is too long");
    return 0;
}
