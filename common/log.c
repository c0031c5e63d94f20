/*
** log.c -- event logging. See log.h for the contract.
**
** The stderr level is read from WALSHIP_LOG on first use. Levels are atomics
** so that enabled checks from many threads need no lock; each line is
** formatted into a stack buffer and written with one write(2), so lines from
** different threads do not interleave.
*/
#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static atomic_int stderr_level = -1; /* -1: not yet read from WALSHIP_LOG */
static atomic_int sink_level = WS_LOG_OFF;
static ws_log_sink_fn sink_fn;

int ws_log_level_parse(const char *s) {
    static const char *const names[] = {"off", "error", "warn", "info", "debug"};
    if (s == NULL) return -1;
    for (int i = 0; i < 5; i++)
        if (strcmp(s, names[i]) == 0) return i;
    return -1;
}

static int stderr_level_get(void) {
    int lv = atomic_load_explicit(&stderr_level, memory_order_relaxed);
    if (lv < 0) {
        lv = ws_log_level_parse(getenv("WALSHIP_LOG"));
        if (lv < 0) lv = WS_LOG_OFF;
        int expected = -1;
        atomic_compare_exchange_strong(&stderr_level, &expected, lv);
        lv = atomic_load(&stderr_level);
    }
    return lv;
}

void ws_log_set_sink(ws_log_sink_fn fn, int max_level) {
    sink_fn = fn;
    atomic_store(&sink_level, fn ? max_level : WS_LOG_OFF);
}

void ws_log_set_stderr_level(int level) { atomic_store(&stderr_level, level); }

int ws_log_enabled(int level) {
    return level <= stderr_level_get() ||
           level <= atomic_load_explicit(&sink_level, memory_order_relaxed);
}

void ws_log_emit(int level, const char *event, const char *fmt, ...) {
    static const char *const names[] = {"off", "error", "warn", "info", "debug"};
    char line[1024];
    int lv = level < 1 ? 1 : level > 4 ? 4 : level;
    int n = snprintf(line, sizeof line, "level=%s event=%s ", names[lv], event);
    if (n < 0) return;
    if ((size_t)n < sizeof line) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
        va_end(ap);
    }
    if (level <= atomic_load_explicit(&sink_level, memory_order_relaxed) && sink_fn)
        sink_fn(level, line);
    if (level <= stderr_level_get()) {
        char out[1200];
        struct timespec ts;
        struct tm tm;
        clock_gettime(CLOCK_REALTIME, &ts);
        gmtime_r(&ts.tv_sec, &tm);
        int m = snprintf(out, sizeof out,
                         "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ walship %s\n",
                         tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                         tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000L, line);
        if (m > 0) {
            size_t len = (size_t)m < sizeof out ? (size_t)m : sizeof out - 1;
            ssize_t w = write(STDERR_FILENO, out, len);
            (void)w; /* nothing useful to do if stderr is gone */
        }
    }
}
