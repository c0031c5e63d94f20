/*
** retention.c -- deleting what no restore inside the retention window needs.
**
** For a point in time T inside the window (now - retention .. now), restore
** needs, in the generation holding T, the newest snapshot at or before T and
** every segment after it. So in each generation the "base" is the newest
** snapshot already older than the window's start; snapshots before the base
** and segments that end at or before it are deleted. A whole generation goes
** when a newer generation's first snapshot is itself older than the window
** start (no T inside the window can fall in the old one). Object times are
** the store's LastModified, never earlier than the commits they hold, which
** keeps the rule on the safe side. The generation being written is never
** deleted. A generation's ownership marker (FORMAT.md 2.3) goes with the
** generation's last object.
*/
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "../common/util.h"
#include "../format/owner.h"
#include "shipper_impl.h"

typedef struct gen_objs {
    uint64_t gen;
    int64_t first_snap_mtime; /* mtime of the oldest snapshot; 0 if none */
    int64_t newest_mtime;
} gen_objs;

int retention_run(shipper *sh, wserr *err) {
    ship_state *ss = &sh->ss;
    if (sh->cfg.retention_ms <= 0) return 0;
    store_objlist all = {0};
    int rc = store_list(ss->st, "generations/", NULL, &all, err);
    if (rc) return rc;
    int64_t cutoff = ws_now_ms() - sh->cfg.retention_ms;

    /* Pass 1: generations, their first snapshot time and newest object. */
    gen_objs *gens = NULL;
    size_t ngen = 0;
    for (size_t i = 0; i < all.n; i++) {
        uint64_t g, a, b;
        int is_snap = objkey_parse_snapshot(all.items[i].key, &g, &a) == 0;
        if (!is_snap && objkey_parse_segment(all.items[i].key, &g, &a, &b) != 0) continue;
        if (ngen == 0 || gens[ngen - 1].gen != g) {
            gen_objs *ng = realloc(gens, (ngen + 1) * sizeof *ng);
            if (ng == NULL) {
                rc = wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
                goto out;
            }
            gens = ng;
            memset(&gens[ngen], 0, sizeof gens[ngen]);
            gens[ngen++].gen = g;
        }
        gen_objs *go = &gens[ngen - 1];
        int64_t mt = all.items[i].mtime_ms;
        if (is_snap && (go->first_snap_mtime == 0 || mt < go->first_snap_mtime))
            go->first_snap_mtime = mt;
        if (mt > go->newest_mtime) go->newest_mtime = mt;
    }

    /* Pass 2: per generation, the base snapshot txid (0 = keep all). */
    const char **del = malloc((all.n ? all.n : 1) * sizeof *del);
    if (del == NULL) {
        rc = wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
        goto out;
    }
    size_t ndel = 0;
    for (size_t gi = 0; gi < ngen; gi++) {
        gen_objs *go = &gens[gi];
        int drop_all = 0;
        if (go->gen != ss->gen) {
            for (size_t k = gi + 1; k < ngen; k++)
                if (gens[k].first_snap_mtime != 0 && gens[k].first_snap_mtime <= cutoff)
                    drop_all = 1;
        }
        uint64_t base = 0;
        for (size_t i = 0; i < all.n && !drop_all; i++) {
            uint64_t g, t;
            if (objkey_parse_snapshot(all.items[i].key, &g, &t) == 0 && g == go->gen &&
                all.items[i].mtime_ms <= cutoff && t > base)
                base = t;
        }
        for (size_t i = 0; i < all.n; i++) {
            uint64_t g, a, b;
            const char *key = all.items[i].key;
            if (objkey_parse_snapshot(key, &g, &a) == 0) {
                if (g == go->gen && (drop_all || (base && a < base))) del[ndel++] = key;
            } else if (objkey_parse_segment(key, &g, &a, &b) == 0) {
                if (g == go->gen && (drop_all || (base && b <= base))) del[ndel++] = key;
            } else if (drop_all) {
                char marker[64];
                owner_gen_key(marker, sizeof marker, go->gen);
                if (strcmp(key, marker) == 0) del[ndel++] = key;
            }
        }
    }
    if (ndel > 0) {
        rc = store_delete_many(ss->st, del, ndel, err);
        if (rc == 0)
            WS_INFO("retention", "db=%s deleted=%zu kept=%zu", sh->db_path, ndel, all.n - ndel);
    }
    free(del);
out:
    free(gens);
    store_objlist_free(&all);
    return rc;
}
