/*
** syscall_recorder.c -- an LD_PRELOAD library that records, in order, the
** calls a process makes to change files: what it wrote where, what it synced,
** truncated, removed and renamed. Tests use the record to check the order of
** durability steps that no crash test can see (kill -9 never loses the page
** cache; only a power failure would).
**
** USAGE
**   LD_PRELOAD=<build>/tests/libwalship_syscall_recorder.so \
**   WALSHIP_SYSCALL_LOG=/abs/log WALSHIP_SYSCALL_PREFIX=/abs/dir/ program ...
**
** Every successful call of write, pwrite, pwrite64, writev, pwritev,
** fsync, fdatasync, ftruncate, ftruncate64, unlink, unlinkat, rename and
** renameat on a file whose absolute path starts with WALSHIP_SYSCALL_PREFIX
** (every file when unset; never the log itself) appends one line to the log:
**
**   <op> <pid> <fd> <offset> <length> <size after> <path> [<new path>]
**
** offset: where the bytes went (-1 for syncs, truncates, unlinks, renames);
** length: bytes written, or the new size for a truncate (-1 otherwise);
** size after: the file's size once the call returned (-1 when unknown). A
** descriptor's path is resolved through /proc/self/fd. Each line is one
** write() to a file opened with O_APPEND, after the call returned: so when a
** process has done A and then B, A's line is in the log before B starts.
**
** IMPLEMENTATION NOTES
**   The real functions come from dlsym(RTLD_NEXT). The log is written with
**   the raw write system call, so the recorder never records itself. Lines
**   are built on the stack (bounded); a path longer than PATH_MAX is logged
**   as "?". Nothing here allocates. The interposed functions are exported
**   explicitly (the tree builds with -fvisibility=hidden).
*/
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static int log_fd = -1;
static char log_path[PATH_MAX];
static char prefix[PATH_MAX];
static pthread_once_t once = PTHREAD_ONCE_INIT;

/* Opens the log named by WALSHIP_SYSCALL_LOG (once per process). */
static void rec_init(void) {
    const char *p = getenv("WALSHIP_SYSCALL_LOG");
    const char *x = getenv("WALSHIP_SYSCALL_PREFIX");
    if (x) snprintf(prefix, sizeof prefix, "%s", x);
    if (p == NULL || *p == '\0' || snprintf(log_path, sizeof log_path, "%s", p) >= (int)sizeof log_path)
        return;
    log_fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
}

/* 1 if path is one to record. */
static int wanted(const char *path) {
    if (log_fd < 0 || strcmp(path, log_path) == 0) return 0;
    return prefix[0] == '\0' || strncmp(path, prefix, strlen(prefix)) == 0;
}

/* The path of fd into out (n bytes); "?" if it cannot be resolved. */
static void fd_path(int fd, char *out, size_t n) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t k = readlink(link, out, n - 1);
    if (k <= 0 || (size_t)k >= n - 1) k = snprintf(out, n, "?");
    out[k] = '\0';
}

static long long fd_size(int fd) {
    struct stat st;
    return fstat(fd, &st) == 0 ? (long long)st.st_size : -1;
}

static void emit(const char *op, int fd, long long off, long long len, long long size,
                 const char *path, const char *path2) {
    char line[2 * PATH_MAX + 160];
    int n = snprintf(line, sizeof line, "%s %d %d %lld %lld %lld %s%s%s\n", op, (int)getpid(), fd,
                     off, len, size, path, path2 ? " " : "", path2 ? path2 : "");
    if (n <= 0) return;
    if (n >= (int)sizeof line) n = (int)sizeof line - 1;
    int saved = errno;
    (void)syscall(SYS_write, log_fd, line, (size_t)n);
    errno = saved;
}

/* Records a call on a descriptor that succeeded. */
static void rec_fd(const char *op, int fd, long long off, long long len) {
    pthread_once(&once, rec_init);
    if (log_fd < 0 || fd < 0) return;
    char path[PATH_MAX];
    fd_path(fd, path, sizeof path);
    if (!wanted(path)) return;
    int saved = errno;
    long long size = fd_size(fd);
    errno = saved;
    emit(op, fd, off, len, size, path, NULL);
}

/* Records a call on paths that succeeded (made absolute against dirfd). */
static void rec_path(const char *op, int dirfd, const char *p, int dirfd2, const char *p2) {
    pthread_once(&once, rec_init);
    if (log_fd < 0) return;
    char a[PATH_MAX], b[PATH_MAX];
    for (int i = 0; i < 2; i++) {
        const char *in = i ? p2 : p;
        int dfd = i ? dirfd2 : dirfd;
        char *out = i ? b : a;
        if (in == NULL) continue;
        if (in[0] == '/') {
            snprintf(out, PATH_MAX, "%s", in);
        } else {
            char base[PATH_MAX];
            if (dfd == AT_FDCWD) {
                if (getcwd(base, sizeof base) == NULL) snprintf(base, sizeof base, "?");
            } else {
                fd_path(dfd, base, sizeof base);
            }
            if (snprintf(out, PATH_MAX, "%s/%s", base, in) >= PATH_MAX) snprintf(out, PATH_MAX, "?");
        }
    }
    if (!wanted(a) && !(p2 && wanted(b))) return;
    emit(op, -1, -1, -1, -1, a, p2 ? b : NULL);
}

#define EXPORT __attribute__((visibility("default")))

/* Records a write(v) of r bytes that ended at the descriptor's offset now
** (O_APPEND included); nothing if it failed. */
static void rec_written_before_cursor(int fd, ssize_t r) {
    if (r <= 0) return;
    int saved = errno;
    off_t end = lseek(fd, 0, SEEK_CUR);
    errno = saved;
    rec_fd("write", fd, end >= 0 ? (long long)end - r : -1, r);
}

/* Declares real_<name>, the next definition of name (libc's), found once. */
#define REAL(name)                                                                      \
    static __typeof__(name) *real_##name;                                               \
    if (real_##name == NULL) real_##name = (__typeof__(name) *)dlsym(RTLD_NEXT, #name)

EXPORT ssize_t write(int fd, const void *buf, size_t n) {
    REAL(write);
    ssize_t r = real_write(fd, buf, n);
    rec_written_before_cursor(fd, r);
    return r;
}

EXPORT ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
    REAL(pwrite);
    ssize_t r = real_pwrite(fd, buf, n, off);
    if (r > 0) rec_fd("pwrite", fd, (long long)off, r);
    return r;
}

EXPORT ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off) {
    REAL(pwrite64);
    ssize_t r = real_pwrite64(fd, buf, n, off);
    if (r > 0) rec_fd("pwrite", fd, (long long)off, r);
    return r;
}

EXPORT ssize_t writev(int fd, const struct iovec *iov, int cnt) {
    REAL(writev);
    ssize_t r = real_writev(fd, iov, cnt);
    rec_written_before_cursor(fd, r);
    return r;
}

EXPORT ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off) {
    REAL(pwritev);
    ssize_t r = real_pwritev(fd, iov, cnt, off);
    if (r > 0) rec_fd("pwrite", fd, (long long)off, r);
    return r;
}

EXPORT int fsync(int fd) {
    REAL(fsync);
    int r = real_fsync(fd);
    if (r == 0) rec_fd("fsync", fd, -1, -1);
    return r;
}

EXPORT int fdatasync(int fd) {
    REAL(fdatasync);
    int r = real_fdatasync(fd);
    if (r == 0) rec_fd("fdatasync", fd, -1, -1);
    return r;
}

EXPORT int ftruncate(int fd, off_t len) {
    REAL(ftruncate);
    int r = real_ftruncate(fd, len);
    if (r == 0) rec_fd("ftruncate", fd, -1, (long long)len);
    return r;
}

EXPORT int ftruncate64(int fd, off64_t len) {
    REAL(ftruncate64);
    int r = real_ftruncate64(fd, len);
    if (r == 0) rec_fd("ftruncate", fd, -1, (long long)len);
    return r;
}

EXPORT int unlink(const char *p) {
    REAL(unlink);
    int r = real_unlink(p);
    if (r == 0) rec_path("unlink", AT_FDCWD, p, AT_FDCWD, NULL);
    return r;
}

EXPORT int unlinkat(int dfd, const char *p, int flags) {
    REAL(unlinkat);
    int r = real_unlinkat(dfd, p, flags);
    if (r == 0) rec_path("unlink", dfd, p, AT_FDCWD, NULL);
    return r;
}

EXPORT int rename(const char *a, const char *b) {
    REAL(rename);
    int r = real_rename(a, b);
    if (r == 0) rec_path("rename", AT_FDCWD, a, AT_FDCWD, b);
    return r;
}

EXPORT int renameat(int da, const char *a, int db, const char *b) {
    REAL(renameat);
    int r = real_renameat(da, a, db, b);
    if (r == 0) rec_path("rename", da, a, db, b);
    return r;
}
