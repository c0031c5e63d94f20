/*
** err.h -- how walship reports failures internally.
**
** Functions that can fail return an int: 0 (WALSHIP_OK) or a walship_err
** code. When they take a `wserr *err`, they also leave a human sentence in it
** that names the problem and, where one is known, the fix. Callers that add
** context use wserr_prefix(). A NULL err is allowed everywhere: the code is
** still returned, the sentence is dropped.
**
** Messages never contain secrets (access keys, signatures, tokens).
*/
#ifndef WS_ERR_H
#define WS_ERR_H

#include "walship.h"

#define WSERR_MSG_MAX 512

typedef struct wserr {
    int code;                 /* walship_err, 0 when no error was recorded */
    char msg[WSERR_MSG_MAX];  /* NUL-terminated sentence, "" when code == 0 */
} wserr;

/* Resets err to "no error". Accepts NULL. */
void wserr_clear(wserr *err);

/* Records code and a printf-style message in err (if not NULL) and returns
** code, so callers can write `return wserr_set(err, WALSHIP_ERR_IO, ...)`. */
int wserr_set(wserr *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Like wserr_set, appending ": <strerror(errnum)>" to the message. */
int wserr_errno(wserr *err, int code, int errnum, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Prepends "<context>: " to the message already in err; keeps its code.
** Returns err->code (or 0 for NULL err). */
int wserr_prefix(wserr *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Maps an errno value from a local file operation to a walship_err:
** ENOSPC/EDQUOT -> NOSPACE, ENOENT -> NOTFOUND, EEXIST -> EXISTS,
** ENOMEM -> NOMEM, everything else -> IO. */
int wserr_from_errno(int errnum);

#endif
