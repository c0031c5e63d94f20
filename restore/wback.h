/*
** wback.h -- a write-back cache of database pages for restore.
**
** Restore writes each transaction's pages at their offsets. A segment of
** 20,000 one-row transactions rewrites the same few pages 40,000 times; one
** pwrite each made the segments cost more than the snapshot. The cache
** keeps the newest copy of each page written (a later write of a page
** replaces it in memory) and writes them out, in page order with
** neighbouring pages joined into one write, when it is full, when the
** caller flushes, or before anything else writes the file.
**
** Its owner keeps the rules the file needs: pages past a truncation are
** dropped (wback_drop_above) before the file shrinks, the cache is flushed
** before any write that bypasses it, and flushed before the file is read,
** synced or handed on. Not thread-safe; one owner.
*/
#ifndef WS_WBACK_H
#define WS_WBACK_H

#include <stdint.h>

#include "../common/err.h"

#define WBACK_BYTES ((size_t)8 << 20) /* pages held at most, in bytes */

typedef struct wback wback;

/* A cache for the file fd with pages of page_size bytes. NULL when out of
** memory. */
wback *wback_new(int fd, uint32_t page_size);

uint32_t wback_page_size(const wback *w);

/* Page pgno (1-based) now holds data. Writes the cache out first when it is
** full. Returns 0 or an error (err set). */
int wback_put(wback *w, uint32_t pgno, const uint8_t *data, wserr *err);

/* Writes every held page to the file and empties the cache. */
int wback_flush(wback *w, wserr *err);

/* Forgets held pages above `pages` (the file is about to be cut there). */
void wback_drop_above(wback *w, uint32_t pages);

/* Forgets every held page (the file is about to be emptied). */
void wback_clear(wback *w);

void wback_free(wback *w);

#endif
