/*
** util.h -- small shared helpers: byte order, growable buffers, clocks,
** hashing, and careful file I/O.
**
** Byte order: walship formats are big-endian unless FORMAT.md says otherwise;
** the get/put helpers below never assume alignment.
*/
#ifndef WS_UTIL_H
#define WS_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "err.h"

/* ---- byte order ------------------------------------------------------- */
static inline uint32_t ws_get_be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint64_t ws_get_be64(const uint8_t *p) {
    return (uint64_t)ws_get_be32(p) << 32 | ws_get_be32(p + 4);
}
static inline uint16_t ws_get_be16(const uint8_t *p) {
    return (uint16_t)(p[0] << 8 | p[1]);
}
static inline void ws_put_be16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}
static inline void ws_put_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}
static inline void ws_put_be64(uint8_t *p, uint64_t v) {
    ws_put_be32(p, (uint32_t)(v >> 32));
    ws_put_be32(p + 4, (uint32_t)v);
}

/* ---- growable buffer -------------------------------------------------- */
/* A byte buffer that grows by doubling up to WSBUF_MAX. Zero-initialise
** ({0}) before use; wsbuf_free() releases it and leaves it empty. */
typedef struct wsbuf {
    uint8_t *p;
    size_t len;
    size_t cap;
} wsbuf;

#define WSBUF_MAX ((size_t)1 << 32) /* 4 GiB: nothing walship holds is larger */

/* Ensures room for `extra` more bytes. WALSHIP_ERR_NOMEM on failure or when
** the result would exceed WSBUF_MAX. */
int wsbuf_reserve(wsbuf *b, size_t extra);
int wsbuf_append(wsbuf *b, const void *p, size_t n);
void wsbuf_free(wsbuf *b);

/* ---- clocks ----------------------------------------------------------- */
int64_t ws_now_ms(void);  /* wall clock, ms since the Unix epoch */
int64_t ws_now_us(void);  /* wall clock, us since the Unix epoch */
int64_t ws_mono_ms(void); /* monotonic clock, ms */
void ws_sleep_ms(int64_t ms);

/* Formats ms since the epoch as "2026-11-26T09:30:00.123Z" into out (>= 32 bytes). */
void ws_format_time(int64_t ms, char *out, size_t outlen);
/* Parses an RFC 3339 time ("2026-11-26T09:30:00Z", optional ".fff" of 1
** to 9 digits, "Z" or a "+hh:mm"/"-hh:mm" offset) into ms since the epoch.
** Strict: a date that does not exist (2026-02-30), an hour, minute, second
** (60 included) or offset out of range, or anything after the time is
** WALSHIP_ERR_INVALID and *out_ms is left alone. Returns 0 or that. */
int ws_parse_time(const char *s, int64_t *out_ms);

/* ---- hashing ---------------------------------------------------------- */
/* 64-bit XXH3 of a byte range: the checksum used by every walship format. */
uint64_t ws_hash64(const void *p, size_t n);

/* ---- file I/O --------------------------------------------------------- */
/* write(2)/pwrite(2)/pread(2) loops that retry on EINTR and short counts.
** ws_pread_full returns the number of bytes read (less than n only at EOF)
** or -1 with errno set. */
int ws_write_all(int fd, const void *buf, size_t n);
int ws_pwrite_all(int fd, const void *buf, size_t n, off_t off);
ssize_t ws_pread_full(int fd, void *buf, size_t n, off_t off);

/* fsync(2) of the directory holding path (or of path itself if it is a
** directory). */
int ws_fsync_dir_of(const char *path, wserr *err);
/* mkdir -p with the given mode. */
int ws_mkdir_p(const char *path, int mode, wserr *err);
/* Writes buf to path atomically: temp file in the same directory, fsync,
** rename, fsync of the directory. */
int ws_write_file_atomic(const char *path, const void *buf, size_t n, wserr *err);
/* Reads a whole file (at most max bytes, else WALSHIP_ERR_CORRUPT) into out. */
int ws_read_file(const char *path, size_t max, wsbuf *out, wserr *err);

/* Parses the 16 lowercase hex digits at s (what follows is not looked at)
** into *out. Returns 0, or -1 if any of them is not one. */
int ws_hex16(const char *s, uint64_t *out);

/* Copies at most n bytes of src into dst (size n) and always NUL-terminates.
** Returns nonzero if src was truncated. */
int ws_strlcpy(char *dst, const char *src, size_t n);

/* Writes s into out (size n) as the body of a JSON string: quotes and
** backslashes escaped, control characters as \u00XX; truncated to fit. */
void ws_json_escape(char *out, size_t n, const char *s);

/* Copies s into out (size n, truncated to fit) without the userinfo
** ("user:password@") of any URL in it, including URLs inside query values
** and percent-encoded ones, for messages, status output and logs. Every
** message that shows a URL a user gave shows it through this. */
void ws_redact_url(char *out, size_t n, const char *s);
/* Nonzero if ws_redact_url would remove something from s: a URL in it
** carries credentials. */
int ws_url_has_credentials(const char *s);

#endif
