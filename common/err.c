/*
** err.c -- error codes, their names, and the wserr message buffer.
*/
#include "err.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *walship_strerror(int err) {
    switch (err) {
    case WALSHIP_OK: return "ok";
    case WALSHIP_ERR_NOMEM: return "out of memory";
    case WALSHIP_ERR_IO: return "local I/O error";
    case WALSHIP_ERR_INVALID: return "invalid argument";
    case WALSHIP_ERR_CORRUPT: return "corrupt data";
    case WALSHIP_ERR_NOTFOUND: return "not found";
    case WALSHIP_ERR_EXISTS: return "already exists";
    case WALSHIP_ERR_AUTH: return "access denied";
    case WALSHIP_ERR_NETWORK: return "network error";
    case WALSHIP_ERR_STORE: return "store error";
    case WALSHIP_ERR_UNSUPPORTED: return "not supported";
    case WALSHIP_ERR_TIMEOUT: return "timed out";
    case WALSHIP_ERR_BUSY: return "busy";
    case WALSHIP_ERR_NOSPACE: return "no space left on device";
    case WALSHIP_ERR_STATE: return "invalid state";
    case WALSHIP_ERR_SQLITE: return "SQLite error";
    case WALSHIP_ERR_OWNER: return "destination belongs to another database";
    default: return "unknown error";
    }
}

void wserr_clear(wserr *err) {
    if (err == NULL) return;
    err->code = 0;
    err->msg[0] = '\0';
}

static void wserr_vset(wserr *err, int code, const char *fmt, va_list ap) {
    err->code = code;
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
}

int wserr_set(wserr *err, int code, const char *fmt, ...) {
    if (err == NULL) return code;
    va_list ap;
    va_start(ap, fmt);
    wserr_vset(err, code, fmt, ap);
    va_end(ap);
    return code;
}

int wserr_errno(wserr *err, int code, int errnum, const char *fmt, ...) {
    if (err == NULL) return code;
    va_list ap;
    va_start(ap, fmt);
    wserr_vset(err, code, fmt, ap);
    va_end(ap);
    size_t n = strlen(err->msg);
    /* Out of descriptors is the user's to fix: say how. */
    const char *fix = errnum == EMFILE || errnum == ENFILE
                          ? "; raise the open-file limit (ulimit -n, or LimitNOFILE= for a service)"
                          : "";
    snprintf(err->msg + n, sizeof err->msg - n, ": %s%s", strerror(errnum), fix);
    return code;
}

int wserr_prefix(wserr *err, const char *fmt, ...) {
    if (err == NULL) return 0;
    char out[WSERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, sizeof out, fmt, ap);
    va_end(ap);
    if (n < 0) return err->code;
    size_t used = (size_t)n < sizeof out ? (size_t)n : sizeof out - 1;
    size_t room = sizeof out - used - 1;
    const char sep[] = ": ";
    size_t k = room < 2 ? room : 2;
    memcpy(out + used, sep, k);
    used += k;
    room -= k;
    size_t mlen = strnlen(err->msg, sizeof err->msg);
    if (mlen > room) mlen = room;
    memcpy(out + used, err->msg, mlen);
    out[used + mlen] = '\0';
    memcpy(err->msg, out, sizeof out);
    return err->code;
}

int wserr_from_errno(int errnum) {
    switch (errnum) {
    case ENOSPC:
#ifdef EDQUOT
    case EDQUOT:
#endif
        return WALSHIP_ERR_NOSPACE;
    case ENOENT: return WALSHIP_ERR_NOTFOUND;
    case EEXIST: return WALSHIP_ERR_EXISTS;
    case ENOMEM: return WALSHIP_ERR_NOMEM;
    default: return WALSHIP_ERR_IO;
    }
}

const char *walship_version(void) { return WALSHIP_VERSION_STRING; }

int walship_version_number(void) { return WALSHIP_VERSION_NUMBER; }
