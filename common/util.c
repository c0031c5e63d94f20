/*
** util.c -- buffers, clocks, hashing and file I/O helpers. See util.h.
*/
#include "util.h"

#include "sysio.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

/* ---- buffers ---------------------------------------------------------- */
int wsbuf_reserve(wsbuf *b, size_t extra) {
    if (extra > WSBUF_MAX - b->len) return WALSHIP_ERR_NOMEM;
    size_t need = b->len + extra;
    if (need <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need) cap = cap > WSBUF_MAX / 2 ? WSBUF_MAX : cap * 2;
    uint8_t *p = realloc(b->p, cap);
    if (p == NULL) return WALSHIP_ERR_NOMEM;
    b->p = p;
    b->cap = cap;
    return 0;
}

int wsbuf_append(wsbuf *b, const void *p, size_t n) {
    if (n == 0) return 0;
    int rc = wsbuf_reserve(b, n);
    if (rc) return rc;
    memcpy(b->p + b->len, p, n);
    b->len += n;
    return 0;
}

void wsbuf_free(wsbuf *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* ---- clocks ----------------------------------------------------------- */
int64_t ws_now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t ws_now_ms(void) { return ws_now_us() / 1000; }

int64_t ws_mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void ws_sleep_ms(int64_t ms) {
    if (ms <= 0) return;
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

void ws_format_time(int64_t ms, char *out, size_t outlen) {
    time_t sec = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&sec, &tm);
    snprintf(out, outlen, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
             (int)(ms % 1000));
}

/* Reads exactly `width` decimal digits. */
static int parse_digits(const char **s, int width, int *out) {
    int v = 0;
    for (int i = 0; i < width; i++) {
        char c = (*s)[i];
        if (c < '0' || c > '9') return -1;
        v = v * 10 + (c - '0');
    }
    *s += width;
    *out = v;
    return 0;
}

static int is_leap(int y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

static int days_in_month(int y, int m) {
    static const int d[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return m == 2 && is_leap(y) ? 29 : d[m - 1];
}

/* Days from 1970-01-01 to y-m-d (proleptic Gregorian; H. Hinnant's
** days_from_civil), with no time_t or time zone involved. */
static int64_t days_from_civil(int y, int m, int d) {
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/* RFC 3339 section 5.6, strictly: every field its exact width and in range
** (the day within its month, leap years included), no leap second (60 is
** refused: nothing walship records carries one), 1 to 9 fraction digits
** (kept to the millisecond), "Z" or an offset of at most 23:59. */
int ws_parse_time(const char *s, int64_t *out_ms) {
    int Y, M, D, h, m, sec, ms = 0;
    const char *p = s;
    if (s == NULL) return WALSHIP_ERR_INVALID;
    if (parse_digits(&p, 4, &Y) || *p++ != '-' || parse_digits(&p, 2, &M) || *p++ != '-' ||
        parse_digits(&p, 2, &D) || (*p != 'T' && *p != 't' && *p != ' '))
        return WALSHIP_ERR_INVALID;
    p++;
    if (parse_digits(&p, 2, &h) || *p++ != ':' || parse_digits(&p, 2, &m) || *p++ != ':' ||
        parse_digits(&p, 2, &sec))
        return WALSHIP_ERR_INVALID;
    if (M < 1 || M > 12 || D < 1 || D > days_in_month(Y, M) || h > 23 || m > 59 || sec > 59)
        return WALSHIP_ERR_INVALID;
    if (*p == '.') {
        p++;
        int digits = 0;
        for (; *p >= '0' && *p <= '9'; p++, digits++)
            if (digits < 3) ms = ms * 10 + (*p - '0');
        if (digits == 0 || digits > 9) return WALSHIP_ERR_INVALID;
        for (; digits < 3; digits++) ms *= 10;
    }
    int offset_min = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int sign = *p == '-' ? -1 : 1, oh, om;
        p++;
        if (parse_digits(&p, 2, &oh) || *p++ != ':' || parse_digits(&p, 2, &om) || oh > 23 ||
            om > 59)
            return WALSHIP_ERR_INVALID;
        offset_min = sign * (oh * 60 + om);
    } else {
        return WALSHIP_ERR_INVALID;
    }
    if (*p != '\0') return WALSHIP_ERR_INVALID;
    int64_t secs = days_from_civil(Y, M, D) * 86400 + (int64_t)h * 3600 + m * 60 + sec;
    *out_ms = (secs - (int64_t)offset_min * 60) * 1000 + ms;
    return 0;
}

/* ---- hashing ---------------------------------------------------------- */
uint64_t ws_hash64(const void *p, size_t n) { return XXH3_64bits(p, n); }

/* ---- file I/O --------------------------------------------------------- */
/* A write the fault layer (sysio.h) fails: nothing, or half of it, lands. */
static int write_fault(int fd, const void *buf, size_t n, off_t off, int positional) {
    size_t part = 0;
    if (ws_sys_write_fault(fd, n, positional ? off : -1, &part) != 0) return -1;
    if (part == 0) return 0;
    ssize_t w = positional ? pwrite(fd, buf, part, off) : write(fd, buf, part);
    (void)w;
    errno = EIO;
    return -1;
}

int ws_write_all(int fd, const void *buf, size_t n) {
    if (write_fault(fd, buf, n, 0, 0) != 0) return -1;
    const uint8_t *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int ws_pwrite_all(int fd, const void *buf, size_t n, off_t off) {
    if (write_fault(fd, buf, n, off, 1) != 0) return -1;
    const uint8_t *p = buf;
    while (n > 0) {
        ssize_t w = pwrite(fd, p, n, off);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
        off += w;
    }
    return 0;
}

ssize_t ws_pread_full(int fd, void *buf, size_t n, off_t off) {
    uint8_t *p = buf;
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, p + got, n - got, off + (off_t)got);
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (r == 0) break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

int ws_fsync_dir_of(const char *path, wserr *err) {
    char dir[PATH_MAX];
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        if (ws_strlcpy(dir, path, sizeof dir))
            return wserr_set(err, WALSHIP_ERR_INVALID, "path too long: %s", path);
    } else {
        if (ws_strlcpy(dir, path, sizeof dir))
            return wserr_set(err, WALSHIP_ERR_INVALID, "path too long: %s", path);
        char *slash = strrchr(dir, '/');
        if (slash == NULL)
            strcpy(dir, ".");
        else if (slash == dir)
            dir[1] = '\0';
        else
            *slash = '\0';
    }
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return wserr_errno(err, wserr_from_errno(errno), errno, "open directory %s", dir);
    int rc = 0;
    if (ws_sys_fsync(fd) != 0 && errno != EINVAL)
        rc = wserr_errno(err, WALSHIP_ERR_IO, errno, "fsync directory %s", dir);
    close(fd);
    return rc;
}

int ws_mkdir_p(const char *path, int mode, wserr *err) {
    char buf[PATH_MAX];
    if (ws_strlcpy(buf, path, sizeof buf))
        return wserr_set(err, WALSHIP_ERR_INVALID, "path too long: %s", path);
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char saved = *p;
            *p = '\0';
            if (mkdir(buf, (mode_t)mode) != 0 && errno != EEXIST)
                return wserr_errno(err, wserr_from_errno(errno), errno, "create directory %s", buf);
            *p = saved;
            if (saved == '\0') break;
        }
    }
    return 0;
}

int ws_write_file_atomic(const char *path, const void *buf, size_t n, wserr *err) {
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp-XXXXXX", path) >= (int)sizeof tmp)
        return wserr_set(err, WALSHIP_ERR_INVALID, "path too long: %s", path);
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) return wserr_errno(err, wserr_from_errno(errno), errno, "create %s", tmp);
    int rc = 0;
    if (ws_write_all(fd, buf, n) != 0 || ws_sys_fdatasync(fd) != 0) {
        rc = wserr_errno(err, wserr_from_errno(errno), errno, "write %s", tmp);
        goto fail;
    }
    if (close(fd) != 0) {
        fd = -1;
        rc = wserr_errno(err, wserr_from_errno(errno), errno, "close %s", tmp);
        goto fail;
    }
    fd = -1;
    if (ws_sys_rename(tmp, path) != 0) {
        rc = wserr_errno(err, wserr_from_errno(errno), errno, "rename %s to %s", tmp, path);
        goto fail;
    }
    return ws_fsync_dir_of(path, err);
fail:
    if (fd >= 0) close(fd);
    unlink(tmp);
    return rc;
}

int ws_read_file(const char *path, size_t max, wsbuf *out, wserr *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return wserr_errno(err, wserr_from_errno(errno), errno, "open %s", path);
    int rc = 0;
    out->len = 0;
    for (;;) {
        if (wsbuf_reserve(out, 65536)) {
            rc = wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory reading %s", path);
            break;
        }
        ssize_t r = read(fd, out->p + out->len, out->cap - out->len);
        if (r < 0) {
            if (errno == EINTR) continue;
            rc = wserr_errno(err, WALSHIP_ERR_IO, errno, "read %s", path);
            break;
        }
        if (r == 0) break;
        out->len += (size_t)r;
        if (out->len > max) {
            rc = wserr_set(err, WALSHIP_ERR_CORRUPT, "%s is larger than %zu bytes", path, max);
            break;
        }
    }
    close(fd);
    return rc;
}

int ws_hex16(const char *s, uint64_t *out) {
    uint64_t v = 0;
    for (int i = 0; i < 16; i++) {
        char c = s[i];
        int d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else
            return -1;
        v = v << 4 | (uint64_t)d;
    }
    *out = v;
    return 0;
}

int ws_strlcpy(char *dst, const char *src, size_t n) {
    size_t len = strlen(src);
    if (n == 0) return len > 0;
    size_t c = len < n ? len : n - 1;
    memcpy(dst, src, c);
    dst[c] = '\0';
    return c < len;
}

void ws_json_escape(char *out, size_t n, const char *s) {
    size_t o = 0;
    for (; *s && o + 7 < n; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20) {
            o += (size_t)snprintf(out + o, n - o, "\\u%04x", c);
        } else {
            out[o++] = (char)c;
        }
    }
    out[o] = '\0';
}

/* ---- URL credentials ---------------------------------------------------- */
/* Credentials hide in URLs as RFC 3986 userinfo, "scheme://user:password@host",
** also inside a query value (endpoint=http://u:p@host) and percent-encoded
** there (endpoint=http%3A%2F%2Fu%3Ap%40host). Secrets are not always
** well-formed: an AWS secret key may hold '/', so "s3://AKIA:abc/def@bucket"
** counts too (a ':' before the first '/' and an '@' later). The userinfo
** reaches to the last '@' of the part scanned, so a secret holding '@' is
** removed whole. Redaction may remove a little more than a secret; it never
** leaves one. */

static int hexdig(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Length of the token at p that stands for character c: c itself or its
** %XX escape; 0 if neither. */
static size_t url_tok(const char *p, char c) {
    if (*p == c) return 1;
    if (p[0] == '%' && hexdig(p[1]) >= 0 && hexdig(p[2]) >= 0 &&
        (hexdig(p[1]) << 4 | hexdig(p[2])) == (unsigned char)c)
        return 3;
    return 0;
}

/* Length of a scheme separator "://" (any part of it escaped) at p, or 0. */
static size_t scheme_sep(const char *p) {
    size_t a = url_tok(p, ':'), b = a ? url_tok(p + a, '/') : 0;
    size_t c = b ? url_tok(p + a + b, '/') : 0;
    return c ? a + b + c : 0;
}

/* Nonzero for a character that ends a URL quoted in text: never part of
** one unescaped (RFC 3986 appendix C). */
static int url_end(char c) {
    return (unsigned char)c <= ' ' || c == '"' || c == '\'' || c == '<' || c == '>' || c == '`';
}

/* The userinfo at p (just after a scheme separator): its length including
** the final '@', or 0 if there is none. The part scanned ends at '#', at
** '?', where the URL ends in text, and, for a URL that is itself a query
** value (in_query), at '&'. */
static size_t userinfo_len(const char *p, int in_query) {
    int slash = 0, colon = 0;
    size_t at_end = 0, i = 0;
    while (p[i] && !url_end(p[i]) && p[i] != '#' && p[i] != '?' && !(in_query && p[i] == '&')) {
        size_t t;
        if ((t = url_tok(p + i, '@'))) {
            if (!slash || colon) at_end = i + t;
        } else if ((t = url_tok(p + i, '/'))) {
            slash = 1;
        } else if ((t = url_tok(p + i, ':'))) {
            if (!slash) colon = 1;
        } else {
            t = 1;
        }
        i += t;
    }
    return at_end;
}

/* Copies s into out (size n, may be 0 to only look), leaving out every
** userinfo. Returns the number of userinfo parts found. */
static int redact(char *out, size_t n, const char *s) {
    size_t o = 0;
    int found = 0, in_query = 0;
    for (size_t i = 0; s[i];) {
        size_t sep = scheme_sep(s + i), u = 0;
        if (sep) u = userinfo_len(s + i + sep, in_query);
        if (sep == 0) sep = 1; /* copy one character */
        if (s[i] == '?') in_query = 1;
        if (url_end(s[i])) in_query = 0; /* the next URL in a message starts afresh */
        for (size_t k = 0; k < sep; k++, o++)
            if (o + 1 < n) out[o] = s[i + k];
        i += sep + u;
        found += u > 0;
    }
    if (n) out[o < n ? o : n - 1] = '\0';
    return found;
}

void ws_redact_url(char *out, size_t n, const char *s) { redact(out, n, s ? s : ""); }

int ws_url_has_credentials(const char *s) { return s && redact(NULL, 0, s) > 0; }
