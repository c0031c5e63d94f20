/*
** log.h -- one-line, key=value event logging for the library and the CLI.
**
** A line is one event: `level=warn event=upload_retry key=... err="..."`.
** The level is checked before anything is formatted (WS_LOG). Lines go to
** an optional sink (the VFS installs one that forwards to sqlite3_log) and
** to stderr when the level is enabled there. The library never writes to
** stdout.
**
** stderr level: WALSHIP_LOG=error|warn|info|debug|off (default: off for the
** library; the CLI calls ws_log_set_stderr_level(WS_LOG_INFO)).
*/
#ifndef WS_LOG_H
#define WS_LOG_H

enum { WS_LOG_OFF = 0, WS_LOG_ERROR = 1, WS_LOG_WARN = 2, WS_LOG_INFO = 3, WS_LOG_DEBUG = 4 };

/* Where lines go besides stderr; level is one of WS_LOG_*. Set once at
** start-up (not synchronised against concurrent logging). */
typedef void (*ws_log_sink_fn)(int level, const char *line);
void ws_log_set_sink(ws_log_sink_fn fn, int max_level);
void ws_log_set_stderr_level(int level);

/* Parses "error", "warn", "info", "debug", "off"; returns -1 if unknown. */
int ws_log_level_parse(const char *s);

/* Nonzero if a line at this level would go anywhere. Cheap. */
int ws_log_enabled(int level);

void ws_log_emit(int level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define WS_LOG(level, event, ...)                                              \
    do {                                                                       \
        if (ws_log_enabled(level)) ws_log_emit(level, event, __VA_ARGS__);     \
    } while (0)
#define WS_ERROR(event, ...) WS_LOG(WS_LOG_ERROR, event, __VA_ARGS__)
#define WS_WARN(event, ...) WS_LOG(WS_LOG_WARN, event, __VA_ARGS__)
#define WS_INFO(event, ...) WS_LOG(WS_LOG_INFO, event, __VA_ARGS__)
#define WS_DEBUG(event, ...) WS_LOG(WS_LOG_DEBUG, event, __VA_ARGS__)

#endif
