/*
** sysio.c -- durability system calls with fault injection. See sysio.h.
**
** The configuration is read once. Without WALSHIP_FAULTS and
** WALSHIP_POWERLOSS_DIR every function is its system call behind one relaxed
** atomic load. With them, the fd-based calls find the file's path through
** /proc/self/fd (tests only: cost is not a concern there).
*/
#include "sysio.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_RULES 8
#define SHADOW_SFX ".ws-synced"

enum { OP_WRITE = 1, OP_SYNC, OP_CREATE, OP_RENAME, OP_TRUNCATE, OP_SHORT, OP_ANY };

typedef struct rule {
    int op;
    int err;
    char path[256];
    char while_file[PATH_MAX];
    uint64_t after, count;
    _Atomic uint64_t matched, failed;
} rule;

static pthread_once_t once = PTHREAD_ONCE_INIT;
static _Atomic int active; /* 0: plain system calls */
static rule rules[MAX_RULES];
static int nrules;
static char powerloss_dir[PATH_MAX];

static int parse_err(const char *s) {
    if (strcmp(s, "ENOSPC") == 0) return ENOSPC;
    if (strcmp(s, "EIO") == 0) return EIO;
    if (strcmp(s, "EDQUOT") == 0) return EDQUOT;
    if (strcmp(s, "EROFS") == 0) return EROFS;
    return 0;
}

static int parse_op(const char *s) {
    static const char *const names[] = {"write", "sync", "create", "rename", "truncate", "short", "any"};
    for (int i = 0; i < 7; i++)
        if (strcmp(s, names[i]) == 0) return i + 1;
    return 0;
}

/* One RULE (see sysio.h); a malformed rule is reported and ignored. */
static void parse_rule(char *text) {
    if (nrules == MAX_RULES) return;
    rule *r = &rules[nrules];
    memset(r, 0, sizeof *r);
    char *save = NULL;
    char *head = strtok_r(text, ",", &save);
    char *colon = head ? strchr(head, ':') : NULL;
    if (colon == NULL) goto bad;
    *colon = '\0';
    r->op = parse_op(head);
    r->err = parse_err(colon + 1);
    if (r->op == 0 || r->err == 0) goto bad;
    for (char *kv; (kv = strtok_r(NULL, ",", &save)) != NULL;) {
        char *eq = strchr(kv, '=');
        if (eq == NULL) goto bad;
        *eq = '\0';
        const char *v = eq + 1;
        if (strcmp(kv, "path") == 0)
            snprintf(r->path, sizeof r->path, "%s", v);
        else if (strcmp(kv, "while") == 0)
            snprintf(r->while_file, sizeof r->while_file, "%s", v);
        else if (strcmp(kv, "after") == 0)
            r->after = strtoull(v, NULL, 10);
        else if (strcmp(kv, "count") == 0)
            r->count = strtoull(v, NULL, 10);
        else
            goto bad;
    }
    nrules++;
    return;
bad:
    fprintf(stderr, "walship: WALSHIP_FAULTS: ignoring a malformed rule\n");
}

static char kill_point[64];
static _Atomic long kill_left;
static int kill_sig; /* SIGKILL (WALSHIP_KILL_AT) or SIGSTOP (WALSHIP_STOP_AT) */

static void init(void) {
    const char *k = getenv("WALSHIP_KILL_AT");
    kill_sig = SIGKILL;
    if (k == NULL || *k == '\0') {
        k = getenv("WALSHIP_STOP_AT");
        kill_sig = SIGSTOP;
    }
    if (k && *k) {
        const char *c = strchr(k, ':');
        size_t n = c ? (size_t)(c - k) : strlen(k);
        if (n < sizeof kill_point) {
            memcpy(kill_point, k, n);
            kill_point[n] = '\0';
            atomic_store(&kill_left, c ? strtol(c + 1, NULL, 10) : 1);
        }
    }
    const char *f = getenv("WALSHIP_FAULTS");
    if (f && *f) {
        char *copy = strdup(f);
        char *save = NULL;
        for (char *t = copy ? strtok_r(copy, ";", &save) : NULL; t; t = strtok_r(NULL, ";", &save))
            parse_rule(t);
        free(copy);
    }
    const char *p = getenv("WALSHIP_POWERLOSS_DIR");
    if (p && *p) snprintf(powerloss_dir, sizeof powerloss_dir, "%s", p);
    atomic_store(&active, nrules > 0 || powerloss_dir[0] != '\0' || kill_point[0] != '\0');
}

static int on(void) {
    pthread_once(&once, init);
    return atomic_load_explicit(&active, memory_order_relaxed);
}

void ws_kill_point(const char *point) {
    if (!on() || kill_point[0] == '\0' || strcmp(point, kill_point) != 0) return;
    if (atomic_fetch_sub(&kill_left, 1) == 1) {
        static const char kmsg[] = "walship: WALSHIP_KILL_AT reached\n";
        static const char smsg[] = "walship: WALSHIP_STOP_AT reached\n";
        const char *msg = kill_sig == SIGKILL ? kmsg : smsg;
        ssize_t w = write(STDERR_FILENO, msg, strlen(msg));
        (void)w;
        /* Sent to this thread, so it is the one that stops (with the
        ** rest of the process) before going on; SIGCONT resumes here. */
        raise(kill_sig);
    }
}


static int fd_path(int fd, char *out, size_t n) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t len = readlink(link, out, n - 1);
    if (len < 0) return -1;
    out[len] = '\0';
    return 0;
}

/* Does a rule make this call fail? Sets errno and returns -1 if so (-2:
** a short write). A full disk (ENOSPC, EDQUOT) fails only calls that need
** room (needs_space): overwriting bytes a file already has, or shrinking
** it, still works on a full file system. */
static int fault(int op, const char *path, int needs_space) {
    for (int i = 0; i < nrules; i++) {
        rule *r = &rules[i];
        if (!needs_space && (r->err == ENOSPC || r->err == EDQUOT)) continue;
        if (r->op != op && !(r->op == OP_ANY && op != OP_SHORT) && !(r->op == OP_SHORT && op == OP_WRITE))
            continue;
        if (r->path[0] && (path == NULL || strstr(path, r->path) == NULL)) continue;
        if (r->while_file[0] && access(r->while_file, F_OK) != 0) continue;
        uint64_t n = atomic_fetch_add(&r->matched, 1);
        if (n < r->after) continue;
        uint64_t k = atomic_fetch_add(&r->failed, 1);
        if (r->count && k >= r->count) continue;
        errno = r->err;
        return r->op == OP_SHORT ? -2 : -1;
    }
    return 0;
}

/* ---- power loss: shadows of synced bytes ------------------------------------ */
static int under_powerloss(const char *path) {
    size_t n = strlen(powerloss_dir);
    return n > 0 && strncmp(path, powerloss_dir, n) == 0 && (path[n] == '/' || path[n] == '\0');
}

static int shadow_name(const char *path, char *out, size_t n) {
    return snprintf(out, n, "%s" SHADOW_SFX, path) >= (int)n ? -1 : 0;
}

/* The shadow of path becomes the bytes of src (a file name) now. */
static void shadow_capture(const char *src, const char *path) {
    char sh[PATH_MAX], tmp[PATH_MAX + 16];
    if (shadow_name(path, sh, sizeof sh) || snprintf(tmp, sizeof tmp, "%s.tmp", sh) >= (int)sizeof tmp)
        return;
    int fd = open(src, O_RDONLY | O_CLOEXEC); /* the caller's may be write-only */
    if (fd < 0) return;
    int out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0) {
        close(fd);
        return;
    }
    char buf[65536];
    off_t off = 0;
    for (;;) {
        ssize_t r = pread(fd, buf, sizeof buf, off);
        if (r <= 0) break;
        if (write(out, buf, (size_t)r) != r) break;
        off += r;
    }
    close(fd);
    close(out);
    rename(tmp, sh);
}

/* A created or truncated file: its durable size changes, its bytes don't. */
static void shadow_resize(const char *path, off_t len, int create) {
    char sh[PATH_MAX];
    if (shadow_name(path, sh, sizeof sh)) return;
    if (create) {
        int fd = open(sh, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd >= 0) close(fd);
        return;
    }
    struct stat st;
    if (stat(sh, &st) == 0 && (st.st_size > len || len > st.st_size)) {
        if (truncate(sh, len) != 0) return;
    }
}

static void shadow_move(const char *from, const char *to, int copy) {
    char a[PATH_MAX], b[PATH_MAX];
    if (shadow_name(from, a, sizeof a) || shadow_name(to, b, sizeof b)) return;
    if (!copy) {
        if (rename(a, b) != 0) unlink(b);
        return;
    }
    if (access(a, F_OK) != 0) {
        unlink(b);
        return;
    }
    shadow_capture(a, to);
}

/* ---- the calls ------------------------------------------------------------------- */
int ws_sys_open(const char *path, int flags, mode_t mode) {
    if (!on()) return open(path, flags, mode);
    int existed = access(path, F_OK) == 0;
    /* Creating a file needs room; opening one that exists does not. */
    if ((flags & O_CREAT) && !existed && fault(OP_CREATE, path, 1) != 0) return -1;
    int fd = open(path, flags, mode);
    if (fd >= 0 && under_powerloss(path) && ((flags & O_TRUNC) || !existed))
        shadow_resize(path, 0, 1);
    return fd;
}

static int sync_common(int fd, int data_only) {
    if (!on()) return data_only ? fdatasync(fd) : fsync(fd);
    char path[PATH_MAX];
    int have = fd_path(fd, path, sizeof path) == 0;
    if (fault(OP_SYNC, have ? path : NULL, 1) != 0) return -1;
    int rc = data_only ? fdatasync(fd) : fsync(fd);
    struct stat st;
    if (rc == 0 && have && under_powerloss(path) && fstat(fd, &st) == 0 && S_ISREG(st.st_mode))
        shadow_capture(path, path);
    return rc;
}

int ws_sys_fdatasync(int fd) { return sync_common(fd, 1); }
int ws_sys_fsync(int fd) { return sync_common(fd, 0); }

int ws_sys_rename(const char *from, const char *to) {
    if (!on()) return rename(from, to);
    if (fault(OP_RENAME, to, 1) != 0) return -1;
    int rc = rename(from, to);
    if (rc == 0 && under_powerloss(to)) shadow_move(from, to, 0);
    return rc;
}

int ws_sys_link(const char *from, const char *to) {
    if (!on()) return link(from, to);
    if (fault(OP_RENAME, to, 1) != 0) return -1;
    int rc = link(from, to);
    if (rc == 0 && under_powerloss(to)) shadow_move(from, to, 1);
    return rc;
}

int ws_sys_ftruncate(int fd, off_t len) {
    if (!on()) return ftruncate(fd, len);
    char path[PATH_MAX];
    int have = fd_path(fd, path, sizeof path) == 0;
    struct stat st;
    int grows = fstat(fd, &st) != 0 || len > st.st_size;
    if (fault(OP_TRUNCATE, have ? path : NULL, grows) != 0) return -1;
    int rc = ftruncate(fd, len);
    if (rc == 0 && have && under_powerloss(path)) shadow_resize(path, len, 0);
    return rc;
}

int ws_sys_write_fault(int fd, size_t n, off_t off, size_t *short_len) {
    *short_len = 0;
    if (!on() || nrules == 0) return 0;
    char path[PATH_MAX];
    int have = fd_path(fd, path, sizeof path) == 0;
    struct stat st;
    if (off < 0) off = lseek(fd, 0, SEEK_CUR);
    int grows = off < 0 || fstat(fd, &st) != 0 || off + (off_t)n > st.st_size;
    int r = fault(OP_WRITE, have ? path : NULL, grows);
    if (r == -2) {
        *short_len = n / 2;
        return n / 2 > 0 ? 0 : -1;
    }
    return r;
}

/* ---- applying a power loss ------------------------------------------------------ */
static int ends_with(const char *s, const char *sfx) {
    size_t a = strlen(s), b = strlen(sfx);
    return a >= b && strcmp(s + a - b, sfx) == 0;
}

/* Names in dir, read before anything in it changes (a directory changed
** while it is read may show an entry twice or not at all). */
static char **list_names(const char *dir, size_t *n) {
    *n = 0;
    DIR *d = opendir(dir);
    if (d == NULL) return NULL;
    char **v = NULL;
    size_t cap = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        if (*n == cap) {
            cap = cap ? cap * 2 : 32;
            char **nv = realloc(v, cap * sizeof *nv);
            if (nv == NULL) break;
            v = nv;
        }
        if ((v[*n] = strdup(e->d_name)) != NULL) (*n)++;
    }
    closedir(d);
    return v;
}

static int apply_dir(const char *dir) {
    size_t n = 0;
    char **names = list_names(dir, &n);
    int changed = 0;
    for (size_t i = 0; i < n; i++) {
        char path[PATH_MAX], sh[PATH_MAX];
        if (snprintf(path, sizeof path, "%s/%s", dir, names[i]) >= (int)sizeof path) continue;
        struct stat st;
        if (lstat(path, &st) != 0) continue;
        if (S_ISDIR(st.st_mode)) {
            int c = apply_dir(path);
            if (c > 0) changed += c;
            continue;
        }
        if (!S_ISREG(st.st_mode) || ends_with(path, SHADOW_SFX)) continue;
        if (shadow_name(path, sh, sizeof sh)) continue;
        if (access(sh, F_OK) == 0) {
            if (rename(sh, path) == 0) changed++;
        } else if (unlink(path) == 0) {
            changed++; /* never synced, never created through these calls */
        }
    }
    /* Shadows left over belong to files deleted after they were synced. */
    for (size_t i = 0; i < n; i++) {
        char path[PATH_MAX];
        if (ends_with(names[i], SHADOW_SFX) &&
            snprintf(path, sizeof path, "%s/%s", dir, names[i]) < (int)sizeof path)
            unlink(path);
        free(names[i]);
    }
    free(names);
    return changed;
}

int ws_powerloss_apply(const char *dir) { return apply_dir(dir); }
