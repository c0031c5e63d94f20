/*
** store_file.c -- the file:// store backend: objects as files in a directory.
**
** PURPOSE
**
** Keeps walship's objects in a directory on a local or network file system
** (NFS, a mounted archive disk), with the semantics of the S3 backend: puts
** are atomic and either create or replace a whole object, readers never see
** a partly written object, create-only puts never overwrite, and listings
** come back in ascending byte order of the full key. It is the default store
** of the demo and a real option for local archives, not a test double.
**
** USAGE
**
**   file:///ABSOLUTE/DIR              or  file://localhost/ABSOLUTE/DIR
**
** Percent-escapes in the path are decoded ("%20" is a space); '?' and '#'
** must be written as %3F and %23. Relative paths, other hosts and the root
** directory itself are refused. DIR is created (mkdir -p) when missing.
** Files are created with mode 0666 and directories with 0755, both reduced
** by the umask: restrict DIR itself (chmod 700) to keep backups private. A
** DIR that cannot be written (read-only mount, no permission) still opens,
** so that restores from a read-only archive work; puts then fail.
**
** ON-DISK LAYOUT
**
**   DIR/<key>                   one regular file per object; each '/' in a
**                               key is a subdirectory, created as needed and
**                               removed again when a delete leaves it empty
**   DIR/.walship-tmp/<pid>.<seq>.<usec>
**                               a put or streaming writer in flight
**
** Keys beginning with ".walship-tmp" are refused (WALSHIP_ERR_INVALID) by
** every operation, so no object can live in or be mistaken for the temp
** area, and listings skip it. A file system cannot hold what S3 can in
** three cases: a key that is also the "directory" of other keys ("a" and
** "a/b"), a key ending in '/', and a path segment longer than NAME_MAX
** (usually 255 bytes). Those puts fail with WALSHIP_ERR_UNSUPPORTED or
** WALSHIP_ERR_INVALID and a message saying which case it is. Objects are
** regular files: a symbolic link, fifo, socket or device under DIR is
** never read (get and head say there is no such object), but list does
** return it, with size 0, so that a reader can report something named like
** an object that cannot be read instead of silently taking the store for
** one without it. The same goes for an empty directory whose name has a dot
** in it, as an object's name usually has ("x.seg"): the directories a put
** creates and a delete removes (which a listing can see empty for an
** instant) are folders, and folders are never listed. list does not descend
** into symlinked directories (get and head do pass through them, as the
** kernel resolves the path), so do not link parts of DIR elsewhere.
**
** ATOMICITY
**
** A put writes the whole object to a fresh temp file in DIR/.walship-tmp
** (O_EXCL, so two writers never share one), fsyncs and closes it, and only
** then gives it its name. The temp area is inside DIR, hence on the same
** file system, so naming is a single atomic directory operation:
**   - plain put: rename(2) over the final name. A reader opening the key
**     sees the old file or the new one, never a mixture; one already open
**     keeps reading the old inode.
**   - create-only put: link(2) to the final name, which fails with EEXIST
**     if the name exists -- the file system arbitrates between racing
**     puts, so exactly one wins; then the temp name is unlinked. On NFS a
**     retransmitted LINK can report EEXIST although it succeeded, so after
**     an EEXIST the temp file's link count decides (open(2)'s advice).
** Then the destination directory is fsynced, and so is the parent of every
** directory the put created, so the name survives a crash once put returns.
** Until the rename/link, nothing is visible under the key; a crash leaves
** only a temp file, which nothing lists or reads. Opening the store removes
** temp files not modified for an hour (a live writer's file is younger: its
** mtime moves with every write).
**
** Deletes unlink the file, remove the directories that became empty (never
** DIR itself), and fsync the nearest surviving directory. A put racing a
** delete for the same directory can find its parent removed between
** creating it and renaming into it; it recreates the parents and retries.
**
** LISTING
**
** Listing walks only the directories that can hold keys with the prefix:
** it starts at the prefix's directory part and descends into a
** subdirectory "d/" only if "d/" and the prefix agree on their common
** length, and only if some key under "d/" can sort after start_after. It
** collects every matching regular file, then sorts the whole result with
** strcmp, which compares bytes as unsigned char. Sorting the full keys is
** what makes the order equal S3's: readdir order is arbitrary, and a
** per-directory walk would put "a/b" (0x2f) before "a-b" (0x2d). One
** directory handle is open at a time, whatever the depth.
**
** THREADS
**
** A store holds no mutable state (the temp file counter is one process-wide
** atomic); every operation works on its own file descriptors and buffers,
** so any number of threads may share a store. Racing puts of one key leave
** one whole version (the last rename); racing create-only puts leave the
** first (link arbitrates). A store_writer belongs to one thread at a time.
**
** ERRORS
**
** errno values map to walship_err with a message naming the path and DIR:
** ENOSPC/EDQUOT -> NOSPACE ("the disk holding ... is full"), EACCES/EPERM
** -> AUTH (with the uid to grant access to), ENAMETOOLONG on a put ->
** INVALID, anything else -> IO. A missing key, or a name that cannot be an
** object, is NOTFOUND for reads and success for deletes. If DIR itself
** disappears (an unmounted NFS share), puts fail with IO instead of quietly
** recreating it on the disk below; opening the store again creates it.
*/
#include "store_impl.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/log.h"

#define TMP_DIR_NAME     ".walship-tmp"
#define KEY_MAX          1024 /* store_key_valid's limit, as S3's */
#define TMP_NAME_MAX     64   /* "/.walship-tmp/<pid>.<seq>.<usec>" */
#define STALE_TMP_AGE_MS (3600 * 1000)
#define PUBLISH_ATTEMPTS 64 /* retries when a delete removes our parent */
/* DIR must leave room in a PATH_MAX buffer for "/" + key + temp name. */
#define ROOT_MAX (PATH_MAX - KEY_MAX - TMP_NAME_MAX - 2)

typedef struct file_store {
    struct store base; /* must be first */
    char *root;        /* DIR, decoded, no trailing '/'; owned */
    size_t rootlen;
} file_store;

typedef struct file_writer {
    struct store_writer base; /* must be first */
    int fd;                   /* the temp file, -1 once closed */
    int flags;                /* STORE_PUT_* */
    int failed;               /* walship_err of a failed write, 0 if none */
    char *key;                /* owned */
    char tmp[PATH_MAX];       /* temp file path */
} file_writer;

static const struct store_ops file_ops;

/* Next temp file number. Process-wide, so that with the pid it names every
** temp file this process ever makes uniquely, whatever the store handle. */
static atomic_uint_fast64_t tmp_seq;

/* ---- errors and paths -------------------------------------------------- */

/* Records the failure of `what` ("write", "rename", ...) on path, caused by
** errnum, as a walship_err with a message that names DIR and the fix.
** Callers handle the errno values that mean "no such object" themselves;
** here ENOENT means a directory vanished under us. Returns the code. */
static int fs_fail(const file_store *fs, wserr *err, int errnum, const char *what,
                   const char *path) {
    switch (errnum) {
    case ENOSPC:
#ifdef EDQUOT
    case EDQUOT:
#endif
        return wserr_errno(err, WALSHIP_ERR_NOSPACE, errnum,
                           "the disk holding the store directory %.300s is full (or the "
                           "quota is used up): %s %.300s failed; free space there or "
                           "point the store elsewhere",
                           fs->root, what, path);
    case EACCES:
    case EPERM:
        return wserr_errno(err, WALSHIP_ERR_AUTH, errnum,
                           "permission denied: %s %.300s; give the user running walship "
                           "(uid %u) read and write access to %.300s",
                           what, path, (unsigned)geteuid(), fs->root);
    case EROFS:
        return wserr_errno(err, WALSHIP_ERR_IO, errnum,
                           "cannot %s %.300s: the store directory %.300s is on a "
                           "read-only file system",
                           what, path, fs->root);
    case ENAMETOOLONG:
        return wserr_errno(err, WALSHIP_ERR_INVALID, errnum,
                           "cannot %s %.300s: a key segment is longer than this file "
                           "system allows (usually 255 bytes between slashes)",
                           what, path);
    case ENOENT:
        return wserr_errno(err, WALSHIP_ERR_IO, errnum,
                           "cannot %s %.300s (was the store directory %.300s removed or "
                           "unmounted?)",
                           what, path, fs->root);
    case ENOMEM: return wserr_errno(err, WALSHIP_ERR_NOMEM, errnum, "cannot %s %.300s", what, path);
    default: return wserr_errno(err, WALSHIP_ERR_IO, errnum, "cannot %s %.300s", what, path);
    }
}

/* Writes DIR "/" key[0..keylen) into buf (PATH_MAX bytes). The lengths are
** bounded at open (ROOT_MAX) and by store_key_valid, so this always fits;
** the check guards against a future change of either. */
static int key_path(const file_store *fs, const char *key, size_t keylen, char *buf, wserr *err) {
    if (fs->rootlen + 1 + keylen >= PATH_MAX)
        return wserr_set(err, WALSHIP_ERR_INVALID, "path for key \"%.200s\" is too long", key);
    memcpy(buf, fs->root, fs->rootlen);
    buf[fs->rootlen] = '/';
    memcpy(buf + fs->rootlen + 1, key, keylen);
    buf[fs->rootlen + 1 + keylen] = '\0';
    return 0;
}

/* Length of the directory part of key[0..len): the position of the last
** '/' before len, or 0 (DIR itself) if there is none. */
static size_t parent_len(const char *key, size_t len) {
    while (len > 0 && key[len - 1] != '/')
        len--;
    return len > 0 ? len - 1 : 0;
}

/* Refuses keys this backend reserves or cannot store. store.c has already
** checked the general key rules. for_write: the key is about to be created. */
static int check_fs_key(const char *key, int for_write, wserr *err) {
    if (strncmp(key, TMP_DIR_NAME, sizeof TMP_DIR_NAME - 1) == 0)
        return wserr_set(err, WALSHIP_ERR_INVALID,
                         "invalid object key \"%.200s\": keys beginning with \"" TMP_DIR_NAME
                         "\" are reserved for the file store's temp files",
                         key);
    if (for_write && key[strlen(key) - 1] == '/')
        return wserr_set(err, WALSHIP_ERR_UNSUPPORTED,
                         "cannot store key \"%.200s\": the file store cannot hold a key "
                         "ending in '/' (it would be a directory)",
                         key);
    return 0;
}

static int64_t stat_mtime_ms(const struct stat *st) {
    return (int64_t)st->st_mtim.tv_sec * 1000 + st->st_mtim.tv_nsec / 1000000;
}

/* fsyncs the directory key[0..len) (DIR when len == 0). A directory that
** no longer exists needs no sync (a later delete removed it) when
** missing_ok is set. */
static int fsync_key_dir(const file_store *fs, const char *key, size_t len, int missing_ok,
                         wserr *err) {
    char path[PATH_MAX];
    int rc = key_path(fs, key, len, path, err);
    if (rc) return rc;
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        if (missing_ok && errno == ENOENT) return 0;
        return fs_fail(fs, err, errno, "open directory", path);
    }
    if (fsync(fd) != 0 && errno != EINVAL) rc = fs_fail(fs, err, errno, "fsync directory", path);
    close(fd);
    return rc;
}

/* ---- temp files and publishing ----------------------------------------- */

/* Creates a new, empty temp file in DIR/.walship-tmp; its path goes to tmp
** (PATH_MAX bytes) and its descriptor to *fd_out. Recreates the temp
** directory if someone removed it. */
static int tmp_create(file_store *fs, char *tmp, int *fd_out, wserr *err) {
    *fd_out = -1;
    int recreated = 0;
    for (int attempt = 0; attempt < 100; attempt++) {
        uint64_t seq = (uint64_t)atomic_fetch_add(&tmp_seq, 1);
        snprintf(tmp, PATH_MAX, "%s/" TMP_DIR_NAME "/%ld.%" PRIu64 ".%" PRId64, fs->root,
                 (long)getpid(), seq, ws_now_us());
        int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd >= 0) {
            *fd_out = fd;
            return 0;
        }
        if (errno == EEXIST) continue; /* a crashed process with our pid left it */
        if (errno == ENOENT && !recreated) {
            recreated = 1;
            char dir[PATH_MAX];
            snprintf(dir, sizeof dir, "%s/" TMP_DIR_NAME, fs->root);
            if (mkdir(dir, 0755) != 0 && errno != EEXIST)
                return fs_fail(fs, err, errno, "create directory", dir);
            continue;
        }
        return fs_fail(fs, err, errno, "create temp file", tmp);
    }
    return wserr_set(err, WALSHIP_ERR_IO,
                     "could not find a free temp file name in %.300s/" TMP_DIR_NAME, fs->root);
}

/* Makes the temp file's contents durable and closes it. Always closes *fd
** and sets it to -1. close(2) is checked: NFS reports write errors there. */
static int tmp_finish(const file_store *fs, int *fd, const char *tmp, wserr *err) {
    int rc = 0;
    if (fsync(*fd) != 0) rc = fs_fail(fs, err, errno, "write", tmp);
    if (close(*fd) != 0 && rc == 0) rc = fs_fail(fs, err, errno, "write", tmp);
    *fd = -1;
    return rc;
}

/* Explains a put onto a name that is a directory or runs through a file. */
static int publish_conflict(const char *key, int errnum, wserr *err) {
    if (errnum == ENOTDIR)
        return wserr_set(err, WALSHIP_ERR_UNSUPPORTED,
                         "cannot store key \"%.200s\": a shorter key that is a prefix of it "
                         "up to a '/' is an object, and the file store cannot hold both",
                         key);
    return wserr_set(err, WALSHIP_ERR_UNSUPPORTED,
                     "cannot store key \"%.200s\": other keys start with \"%.200s/\", so it "
                     "is a directory in the file store, which cannot hold both",
                     key, key);
}

/* Creates the directories of key's directory part that are missing. Sets
** *created_from to the length of the topmost directory it created (left
** alone if it created none), so the caller can fsync their parents. */
static int make_parents(const file_store *fs, const char *key, size_t *created_from, wserr *err) {
    char path[PATH_MAX];
    for (size_t i = 0; key[i] != '\0'; i++) {
        if (key[i] != '/') continue;
        int rc = key_path(fs, key, i, path, err);
        if (rc) return rc;
        if (mkdir(path, 0755) == 0) {
            if (i < *created_from) *created_from = i;
            continue;
        }
        if (errno == EEXIST) continue;
        if (errno == ENOTDIR) return publish_conflict(key, ENOTDIR, err);
        return fs_fail(fs, err, errno, "create directory", path);
    }
    return 0;
}

/* Gives the finished temp file tmp the name of key: rename(2) over it, or
** link(2) for STORE_PUT_CREATE_ONLY (WALSHIP_ERR_EXISTS if the key exists).
** Creates missing parent directories and fsyncs every directory whose
** entries changed. The temp name is gone afterwards unless an error
** occurred before the object became visible; the caller unlinks it then
** (unlinking a name that no longer exists is harmless). */
static int publish(file_store *fs, const char *tmp, const char *key, int flags, wserr *err) {
    char dst[PATH_MAX];
    size_t keylen = strlen(key);
    size_t created_from = SIZE_MAX;
    int create_only = (flags & STORE_PUT_CREATE_ONLY) != 0;
    int rc = key_path(fs, key, keylen, dst, err);
    if (rc) return rc;

    for (int attempt = 0;; attempt++) {
        int r = create_only ? link(tmp, dst) : rename(tmp, dst);
        if (r == 0) break;
        int e = errno;
        struct stat st;
        if (create_only && e == EEXIST) {
            if (stat(tmp, &st) == 0 && st.st_nlink >= 2) break; /* NFS: it did succeed */
            if (lstat(dst, &st) == 0 && S_ISDIR(st.st_mode))
                return publish_conflict(key, EISDIR, err);
            return wserr_set(err, WALSHIP_ERR_EXISTS,
                             "object \"%.200s\" already exists in %.300s (create-only put)", key,
                             fs->root);
        }
        if (e == ENOENT && attempt < PUBLISH_ATTEMPTS) {
            if (lstat(tmp, &st) != 0)
                return wserr_set(err, WALSHIP_ERR_IO,
                                 "temp file %.300s vanished before it could be named \"%.200s\" "
                                 "(removed as stale by another process after an hour without "
                                 "writes?)",
                                 tmp, key);
            rc = make_parents(fs, key, &created_from, err);
            if (rc) return rc;
            continue; /* a concurrent delete may remove them again: retry */
        }
        if (e == EISDIR || e == ENOTDIR || e == ENOTEMPTY || e == EEXIST)
            return publish_conflict(key, e, err);
        if (create_only && (e == EPERM || e == EOPNOTSUPP || e == EMLINK))
            return wserr_errno(err, WALSHIP_ERR_UNSUPPORTED, e,
                               "the file system of %.300s cannot make hard links, which "
                               "create-only puts need (key \"%.200s\")",
                               fs->root, key);
        return fs_fail(fs, err, e, create_only ? "link" : "rename into", dst);
    }
    if (create_only && unlink(tmp) != 0)
        WS_WARN("store_file_tmp_unlink", "path=\"%s\" errno=%d", tmp, errno);

    /* fsync the key's directory, then the parent of each directory we made. */
    size_t len = parent_len(key, keylen);
    for (;;) {
        rc = fsync_key_dir(fs, key, len, 0, err);
        if (rc)
            return wserr_prefix(err, "object \"%.200s\" was written but may not survive a crash",
                                key);
        if (len == 0 || len < created_from) break;
        len = parent_len(key, len);
    }
    return 0;
}

/* ---- puts -------------------------------------------------------------- */

/* store_put: temp file, fsync, publish. Nothing is visible under key unless
** it returns 0; on failure the temp file is removed. */
static int file_put(store *s, const char *key, const void *data, size_t len, int flags,
                    wserr *err) {
    file_store *fs = (file_store *)s;
    char tmp[PATH_MAX];
    int fd = -1;
    int rc = check_fs_key(key, 1, err);
    if (rc) return rc;
    rc = tmp_create(fs, tmp, &fd, err);
    if (rc) return rc;
    if (ws_write_all(fd, data, len) != 0) {
        rc = fs_fail(fs, err, errno, "write", tmp);
        goto out;
    }
    rc = tmp_finish(fs, &fd, tmp, err);
    if (rc) goto out;
    rc = publish(fs, tmp, key, flags, err);
out:
    if (fd >= 0) close(fd);
    if (rc) unlink(tmp);
    return rc;
}

/* store_writer_open: creates the temp file now, so that a store that
** cannot be written fails here rather than after the data was produced. */
static int file_writer_open(store *s, const char *key, int flags, store_writer **out, wserr *err) {
    file_store *fs = (file_store *)s;
    int rc = check_fs_key(key, 1, err);
    if (rc) return rc;
    file_writer *w = calloc(1, sizeof *w);
    if (w == NULL) return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
    w->base.s = s;
    w->flags = flags;
    w->fd = -1;
    w->key = strdup(key);
    if (w->key == NULL) {
        rc = wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
        goto fail;
    }
    rc = tmp_create(fs, w->tmp, &w->fd, err);
    if (rc) goto fail;
    *out = &w->base;
    return 0;
fail:
    free(w->key);
    free(w);
    return rc;
}

/* Appends to the temp file. After a failure the writer only accepts abort
** (commit returns the same error). */
static int file_writer_write(store_writer *base, const void *data, size_t len, wserr *err) {
    file_writer *w = (file_writer *)base;
    if (w->failed)
        return wserr_set(err, w->failed, "an earlier write to \"%.200s\" failed", w->key);
    if (ws_write_all(w->fd, data, len) != 0) {
        w->failed = fs_fail((file_store *)w->base.s, err, errno, "write", w->tmp);
        return w->failed;
    }
    return 0;
}

/* Closes the temp file if open and frees w; the temp name is the caller's. */
static void writer_free(file_writer *w) {
    if (w->fd >= 0) close(w->fd);
    free(w->key);
    free(w);
}

/* store_writer_commit: fsync, publish, free w -- whether it succeeds or not;
** on failure the temp file is removed and nothing is visible. */
static int file_writer_commit(store_writer *base, wserr *err) {
    file_writer *w = (file_writer *)base;
    file_store *fs = (file_store *)w->base.s;
    int rc = w->failed;
    if (rc) {
        wserr_set(err, rc, "an earlier write to \"%.200s\" failed; nothing was stored", w->key);
        goto out;
    }
    rc = tmp_finish(fs, &w->fd, w->tmp, err);
    if (rc) goto out;
    rc = publish(fs, w->tmp, w->key, w->flags, err);
out:
    if (rc) unlink(w->tmp);
    writer_free(w);
    return rc;
}

/* store_writer_abort: removes the temp file and frees w. */
static void file_writer_abort(store_writer *base) {
    file_writer *w = (file_writer *)base;
    if (unlink(w->tmp) != 0)
        WS_WARN("store_file_tmp_unlink", "path=\"%s\" errno=%d", w->tmp, errno);
    writer_free(w);
}

/* ---- reads ------------------------------------------------------------- */

/* Nonzero if errno value e from a lookup of key means "no such object":
** nothing there, a file where a directory was expected, a symlink, or a
** name too long to exist on this file system. */
static int errno_is_missing(int e) {
    return e == ENOENT || e == ENOTDIR || e == ELOOP || e == ENAMETOOLONG;
}

static int no_object(const file_store *fs, const char *key, wserr *err) {
    return wserr_set(err, WALSHIP_ERR_NOTFOUND, "no object \"%.200s\" in %.300s", key, fs->root);
}

/* Opens key's file for reading: *fd_out and its stat. WALSHIP_ERR_NOTFOUND
** if there is no regular file under that name (a directory, a symlink or a
** fifo is not an object; O_NONBLOCK keeps a fifo from blocking the open). */
static int open_object(const file_store *fs, const char *key, int *fd_out, struct stat *st,
                       wserr *err) {
    char path[PATH_MAX];
    *fd_out = -1;
    int rc = key_path(fs, key, strlen(key), path, err);
    if (rc) return rc;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0)
        return errno_is_missing(errno) ? no_object(fs, key, err)
                                       : fs_fail(fs, err, errno, "open", path);
    if (fstat(fd, st) != 0)
        rc = fs_fail(fs, err, errno, "stat", path);
    else if (!S_ISREG(st->st_mode))
        rc = no_object(fs, key, err);
    if (rc) {
        close(fd);
        return rc;
    }
    *fd_out = fd;
    return 0;
}

/* See store_ops.get: whole object, last len bytes (tail), or [off, off+len)
** clipped to the end. out's previous contents are replaced. */
static int file_get(store *s, const char *key, int whole, int tail, uint64_t off, uint64_t len,
                    wsbuf *out, wserr *err) {
    file_store *fs = (file_store *)s;
    struct stat st;
    int fd = -1;
    out->len = 0;
    int rc = check_fs_key(key, 0, err);
    if (rc) return rc;
    rc = open_object(fs, key, &fd, &st, err);
    if (rc) return rc;
    uint64_t size = (uint64_t)st.st_size, n;
    if (whole) {
        if (size > STORE_MEM_MAX) {
            rc = wserr_set(err, WALSHIP_ERR_CORRUPT,
                           "object \"%.200s\" is %" PRIu64 " bytes, more than the %" PRIu64
                           " that are read into memory; stream it with store_get_fd",
                           key, size, (uint64_t)STORE_MEM_MAX);
            goto out;
        }
        off = 0;
        n = size;
    } else if (tail) {
        n = len < size ? len : size;
        off = size - n;
    } else {
        n = off >= size ? 0 : (len < size - off ? len : size - off);
    }
    if (wsbuf_reserve(out, (size_t)n) != 0) {
        rc = wserr_set(err, WALSHIP_ERR_NOMEM,
                       "out of memory reading \"%.200s\" (%" PRIu64 " bytes)", key, n);
        goto out;
    }
    ssize_t got = n ? ws_pread_full(fd, out->p, (size_t)n, (off_t)off) : 0;
    if (got < 0) {
        rc = fs_fail(fs, err, errno, "read object", key);
        goto out;
    }
    if ((uint64_t)got != n) {
        rc = wserr_set(err, WALSHIP_ERR_IO,
                       "object \"%.200s\" in %.300s shrank while being read (was it changed "
                       "outside walship?)",
                       key, fs->root);
        goto out;
    }
    out->len = (size_t)n;
out:
    close(fd);
    return rc;
}

/* store_get_stream: reads [off, off+len) (len 0: to the end) in pieces of
** STORE_STREAM_PIECE bytes into one reused buffer and hands each to fn. */
static int file_get_stream(store *s, const char *key, uint64_t off, uint64_t len,
                           store_sink_fn fn, void *ctx, wserr *err) {
    file_store *fs = (file_store *)s;
    struct stat st;
    int fd = -1;
    uint8_t *buf = NULL;
    int rc = check_fs_key(key, 0, err);
    if (rc) return rc;
    rc = open_object(fs, key, &fd, &st, err);
    if (rc) return rc;
    uint64_t size = (uint64_t)st.st_size;
    uint64_t end = off >= size ? off : (len == 0 || len > size - off ? size : off + len);
    buf = malloc(STORE_STREAM_PIECE);
    if (buf == NULL) {
        rc = wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (uint64_t pos = off; pos < end;) {
        size_t want = end - pos < STORE_STREAM_PIECE ? (size_t)(end - pos) : STORE_STREAM_PIECE;
        ssize_t got = ws_pread_full(fd, buf, want, (off_t)pos);
        if (got < 0) {
            rc = fs_fail(fs, err, errno, "read object", key);
            goto out;
        }
        if (got == 0) {
            rc = wserr_set(err, WALSHIP_ERR_IO,
                           "object \"%.200s\" in %.300s shrank while being read (was it changed "
                           "outside walship?)",
                           key, fs->root);
            goto out;
        }
        if ((rc = fn(ctx, buf, (size_t)got, err)) != 0) goto out;
        pos += (uint64_t)got;
    }
out:
    free(buf);
    close(fd);
    return rc;
}

/* store_sink_fn of file_get_fd: appends each piece to the output file. */
typedef struct fd_out {
    int fd;
    const char *key;
} fd_out;

static int write_piece(void *ctx, const uint8_t *data, size_t n, wserr *err) {
    const fd_out *o = ctx;
    if (ws_write_all(o->fd, data, n) == 0) return 0;
    int e = errno;
    return wserr_errno(err, wserr_from_errno(e), e,
                       "cannot write object \"%.200s\" to the output file", o->key);
}

/* store_get_fd: copies the object to outfd at its current offset. Nothing
** is written when the key is missing. */
static int file_get_fd(store *s, const char *key, int outfd, wserr *err) {
    fd_out o = {outfd, key};
    return file_get_stream(s, key, 0, 0, write_piece, &o, err);
}

/* store_head: size and mtime (ms) from lstat; NOTFOUND unless a regular file. */
static int file_head(store *s, const char *key, store_obj *out, wserr *err) {
    file_store *fs = (file_store *)s;
    char path[PATH_MAX];
    struct stat st;
    int rc = check_fs_key(key, 0, err);
    if (rc) return rc;
    rc = key_path(fs, key, strlen(key), path, err);
    if (rc) return rc;
    if (lstat(path, &st) != 0) {
        if (!errno_is_missing(errno)) return fs_fail(fs, err, errno, "stat", path);
        st.st_mode = 0;
    }
    if (!S_ISREG(st.st_mode)) return no_object(fs, key, err);
    out->size = (uint64_t)st.st_size;
    out->mtime_ms = stat_mtime_ms(&st);
    return 0;
}

/* ---- listing ----------------------------------------------------------- */

typedef struct list_walk {
    const file_store *fs;
    const char *prefix;
    size_t prefix_len;
    const char *after; /* NULL: no lower bound */
    size_t after_len;
    store_objlist *out;
    wserr *err;
    size_t key_off;      /* where keys start in path: rootlen + 1 */
    size_t start_len;    /* key length of the directory the walk starts in */
    char path[PATH_MAX]; /* DIR "/" key being looked at */
} list_walk;

/* Nonzero if some key starting with dir (dir_len bytes, ending in '/') can
** start with the prefix and sort after start_after. */
static int dir_may_match(const list_walk *w, const char *dir, size_t dir_len) {
    size_t m = dir_len < w->prefix_len ? dir_len : w->prefix_len;
    if (memcmp(dir, w->prefix, m) != 0) return 0;
    if (w->after == NULL) return 1;
    /* Every key under dir sorts below after iff dir sorts below after on
    ** their common length: if after runs out first, or starts with dir,
    ** some key can still be larger. */
    m = dir_len < w->after_len ? dir_len : w->after_len;
    return memcmp(dir, w->after, m) >= 0;
}

/* Appends key (keylen bytes) to the listing if it has the prefix and sorts
** after start_after. */
static int list_push(list_walk *w, const char *key, size_t keylen, const struct stat *st) {
    if (keylen < w->prefix_len || memcmp(key, w->prefix, w->prefix_len) != 0) return 0;
    if (w->after && strcmp(key, w->after) <= 0) return 0;
    uint64_t size = S_ISREG(st->st_mode) ? (uint64_t)st->st_size : 0;
    if (store_objlist_push(w->out, key, keylen, size, stat_mtime_ms(st)))
        return wserr_set(w->err, WALSHIP_ERR_NOMEM, "out of memory listing %.300s", w->fs->root);
    return 0;
}

/* Lists the directory whose key prefix rel (rel_len bytes, "" or ending in
** '/') is already in w->path at key_off. Appends matching entries to
** w->out, then recurses into the subdirectories that may hold matches,
** after closing this directory. Entries that vanish meanwhile are skipped.
** An empty directory below the starting one whose name has a dot is listed
** as its own name (see the top of the file). */
static int list_dir(list_walk *w, size_t rel_len) {
    char *key = w->path + w->key_off;
    wsbuf subdirs = {0}; /* NUL-terminated names to descend into */
    int rc = 0, nentries = 0;
    struct stat dst;
    key[rel_len] = '\0';
    DIR *d = opendir(w->path);
    if (d == NULL) {
        if (errno == ENOENT || errno == ENOTDIR) return 0;
        return fs_fail(w->fs, w->err, errno, "list directory", w->path);
    }
    int have_dst = fstat(dirfd(d), &dst) == 0;
    for (;;) {
        errno = 0;
        struct dirent *de = readdir(d);
        if (de == NULL) {
            if (errno != 0) rc = fs_fail(w->fs, w->err, errno, "list directory", w->path);
            break;
        }
        const char *name = de->d_name;
        size_t namelen = strlen(name);
        if (name[0] == '.' && (namelen == 1 || (namelen == 2 && name[1] == '.'))) continue;
        nentries++;
        if (rel_len == 0 && strncmp(name, TMP_DIR_NAME, sizeof TMP_DIR_NAME - 1) == 0) continue;
        size_t keylen = rel_len + namelen;
        if (keylen > KEY_MAX) continue; /* no valid key is that long */
        memcpy(key + rel_len, name, namelen + 1);

        struct stat st;
        int have_stat = 0;
        unsigned char type = de->d_type;
        if (type == DT_UNKNOWN) {
            if (fstatat(dirfd(d), name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
            have_stat = 1;
            type = S_ISDIR(st.st_mode) ? DT_DIR : S_ISREG(st.st_mode) ? DT_REG : DT_UNKNOWN;
        }
        if (type == DT_DIR) {
            if (keylen + 2 > KEY_MAX) continue; /* "dir/" + one byte would be too long */
            key[keylen] = '/';
            if (dir_may_match(w, key, keylen + 1) && wsbuf_append(&subdirs, name, namelen + 1)) {
                rc = wserr_set(w->err, WALSHIP_ERR_NOMEM, "out of memory listing %.300s",
                               w->fs->root);
                break;
            }
            continue;
        }
        /* A regular file is an object; anything else that is not a
        ** directory (symlink, fifo, socket, device) is listed too, so that a
        ** reader can report it; reading it finds no object. */
        if (keylen < w->prefix_len || memcmp(key, w->prefix, w->prefix_len) != 0) continue;
        if (w->after && strcmp(key, w->after) <= 0) continue;
        if (!have_stat && fstatat(dirfd(d), name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
            if (errno == ENOENT) continue; /* deleted meanwhile */
            rc = fs_fail(w->fs, w->err, errno, "stat", w->path);
            break;
        }
        if (S_ISDIR(st.st_mode)) continue; /* replaced by a directory meanwhile */
        if ((rc = list_push(w, key, keylen, &st)) != 0) break;
    }
    closedir(d);
    if (rc == 0 && nentries == 0 && rel_len > w->start_len && have_dst) {
        key[rel_len - 1] = '\0'; /* "a/b.c/" -> "a/b.c" */
        const char *base = memrchr(key, '/', rel_len - 1);
        if (strchr(base ? base + 1 : key, '.') != NULL) rc = list_push(w, key, rel_len - 1, &dst);
    }
    for (size_t i = 0; rc == 0 && i < subdirs.len;) {
        const char *name = (const char *)subdirs.p + i;
        size_t namelen = strlen(name);
        memcpy(key + rel_len, name, namelen);
        key[rel_len + namelen] = '/';
        rc = list_dir(w, rel_len + namelen + 1);
        i += namelen + 1;
    }
    wsbuf_free(&subdirs);
    return rc;
}

/* qsort order of store_obj by key: strcmp, i.e. unsigned bytes, as S3. */
static int objcmp(const void *a, const void *b) {
    return strcmp(((const store_obj *)a)->key, ((const store_obj *)b)->key);
}

/* Length of the directory part of prefix ("a/b/" of "a/b/c") that the walk
** can start from, or -1 if no valid key can start with prefix (an empty,
** "." or ".." segment, or the reserved temp area). */
static long prefix_start_len(const char *prefix) {
    const char *slash = strrchr(prefix, '/');
    if (slash == NULL) return 0;
    size_t dir_len = (size_t)(slash - prefix) + 1;
    if (strncmp(prefix, TMP_DIR_NAME, sizeof TMP_DIR_NAME - 1) == 0) return -1;
    const char *seg = prefix;
    for (const char *p = prefix; p < prefix + dir_len; p++) {
        if (*p != '/') continue;
        size_t n = (size_t)(p - seg);
        if (n == 0 || (n == 1 && seg[0] == '.') || (n == 2 && seg[0] == '.' && seg[1] == '.'))
            return -1;
        seg = p + 1;
    }
    return dir_len > KEY_MAX ? -1 : (long)dir_len;
}

/* store_list: walks the directories that may hold matches (see LISTING at
** the top), then sorts what it appended. On failure out is as it was. */
static int file_list(store *s, const char *prefix, const char *start_after, store_objlist *out,
                     wserr *err) {
    file_store *fs = (file_store *)s;
    size_t n0 = out->n;
    long start = prefix_start_len(prefix);
    if (start < 0) return 0;
    list_walk *w = malloc(sizeof *w); /* PATH_MAX is too much for some thread stacks */
    if (w == NULL) return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
    w->fs = fs;
    w->prefix = prefix;
    w->prefix_len = strlen(prefix);
    w->after = start_after;
    w->after_len = start_after ? strlen(start_after) : 0;
    w->out = out;
    w->err = err;
    w->key_off = fs->rootlen + 1;
    w->start_len = (size_t)start;
    memcpy(w->path, fs->root, fs->rootlen);
    w->path[fs->rootlen] = '/';
    memcpy(w->path + w->key_off, prefix, (size_t)start);
    int rc = 0;
    if (dir_may_match(w, prefix, (size_t)start)) rc = list_dir(w, (size_t)start);
    free(w);
    if (rc) {
        for (size_t i = n0; i < out->n; i++)
            free(out->items[i].key);
        out->n = n0;
        return rc;
    }
    if (out->n - n0 > 1) qsort(out->items + n0, out->n - n0, sizeof *out->items, objcmp);
    return 0;
}

/* ---- deletes ----------------------------------------------------------- */

/* Unlinks key's file and removes the directories that became empty, never
** DIR. *sync_len is set to the length of the directory whose entries
** changed last (0 = DIR), or SIZE_MAX if nothing was removed. A missing
** key, or one naming a directory, is not an object: success, no change. */
static int delete_one(file_store *fs, const char *key, size_t *sync_len, wserr *err) {
    char path[PATH_MAX];
    size_t keylen = strlen(key);
    *sync_len = SIZE_MAX;
    int rc = check_fs_key(key, 0, err);
    if (rc) return rc;
    rc = key_path(fs, key, keylen, path, err);
    if (rc) return rc;
    if (unlink(path) != 0) {
        int e = errno;
        struct stat st;
        if (errno_is_missing(e) || e == EISDIR) return 0;
        if (e == EPERM && lstat(path, &st) == 0 && S_ISDIR(st.st_mode)) return 0;
        return fs_fail(fs, err, e, "delete", path);
    }
    size_t len = parent_len(key, keylen);
    while (len > 0) {
        if (key_path(fs, key, len, path, NULL) != 0 || rmdir(path) != 0) break;
        len = parent_len(key, len);
    }
    *sync_len = len;
    return 0;
}

/* store_delete: unlink, prune empty directories, fsync the survivor. */
static int file_delete(store *s, const char *key, wserr *err) {
    file_store *fs = (file_store *)s;
    size_t sync_len;
    int rc = delete_one(fs, key, &sync_len, err);
    if (rc || sync_len == SIZE_MAX) return rc;
    return fsync_key_dir(fs, key, sync_len, 1, err);
}

/* qsort order of C strings. */
static int strptrcmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Deletes every key, going on after a failure; then fsyncs each changed
** directory once. Returns the first error. */
static int file_delete_many(store *s, const char *const *keys, size_t n, wserr *err) {
    file_store *fs = (file_store *)s;
    char **dirs = calloc(n, sizeof *dirs);
    size_t ndirs = 0;
    int rc = 0;
    if (dirs == NULL) return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        size_t sync_len;
        wserr one;
        int r = delete_one(fs, keys[i], &sync_len, &one);
        if (r) {
            if (rc == 0) {
                rc = r;
                if (err) *err = one;
            }
            continue;
        }
        if (sync_len == SIZE_MAX) continue;
        dirs[ndirs] = strndup(keys[i], sync_len);
        if (dirs[ndirs] == NULL) {
            if (rc == 0) rc = wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
            continue;
        }
        ndirs++;
    }
    if (ndirs > 1) qsort(dirs, ndirs, sizeof *dirs, strptrcmp);
    for (size_t i = 0; i < ndirs; i++) {
        if (i > 0 && strcmp(dirs[i], dirs[i - 1]) == 0) continue;
        wserr one;
        int r = fsync_key_dir(fs, dirs[i], strlen(dirs[i]), 1, &one);
        if (r && rc == 0) {
            rc = r;
            if (err) *err = one;
        }
    }
    for (size_t i = 0; i < ndirs; i++)
        free(dirs[i]);
    free(dirs);
    return rc;
}

/* ---- open and free ----------------------------------------------------- */

/* Value of one hex digit, or -1. */
static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

#define FILE_FORMS "file:///ABSOLUTE/DIR or file://localhost/ABSOLUTE/DIR"

/* Parses file:///ABS/DIR or file://localhost/ABS/DIR into a decoded
** absolute path without trailing '/'. On success *root_out is owned by the
** caller. */
static int parse_file_url(const char *url, char **root_out, wserr *err) {
    const char *p = url + strlen("file://");
    *root_out = NULL;
    if (strncasecmp(p, "localhost/", 10) == 0) p += strlen("localhost");
    if (*p != '/') {
        size_t hostlen = strcspn(p, "/");
        if (hostlen == 0 || strcasecmp(p, "localhost") == 0)
            return wserr_set(err, WALSHIP_ERR_INVALID,
                             "store URL \"%.200s\" names no directory; use " FILE_FORMS, url);
        return wserr_set(
            err, WALSHIP_ERR_INVALID,
            "store URL \"%.200s\" names host \"%.*s\"; a file store needs a local "
            "absolute path (relative paths and other hosts are not accepted): use " FILE_FORMS,
            url, (int)(hostlen > 100 ? 100 : hostlen), p);
    }
    if (strpbrk(p, "?#"))
        return wserr_set(err, WALSHIP_ERR_INVALID,
                         "store URL \"%.200s\" has a '?' or '#'; a file store takes no options, "
                         "and a path containing those characters must write them as %%3F and %%23",
                         url);
    char *root = malloc(strlen(p) + 1);
    if (root == NULL) return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
    size_t n = 0;
    for (const char *q = p; *q; q++) {
        if (*q != '%') {
            root[n++] = *q;
            continue;
        }
        int hi = hexval(q[1]), lo = hi < 0 ? -1 : hexval(q[2]);
        if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
            free(root);
            return wserr_set(err, WALSHIP_ERR_INVALID,
                             "store URL \"%.200s\" has a bad percent-escape at \"%.3s\" (use %%XX "
                             "with two hex digits, not %%00)",
                             url, q);
        }
        root[n++] = (char)(hi << 4 | lo);
        q += 2;
    }
    while (n > 1 && root[n - 1] == '/')
        n--;
    root[n] = '\0';
    if (n <= 1) {
        free(root);
        return wserr_set(err, WALSHIP_ERR_INVALID,
                         "store URL \"%.200s\" names the root directory; give the store a "
                         "directory of its own: " FILE_FORMS,
                         url);
    }
    if (n > ROOT_MAX) {
        free(root);
        return wserr_set(err, WALSHIP_ERR_INVALID,
                         "store URL \"%.200s\": the directory path is longer than %d bytes", url,
                         ROOT_MAX);
    }
    *root_out = root;
    return 0;
}

/* mkdir -p of DIR, mode 0755 before the umask. */
static int make_root(const file_store *fs, wserr *err) {
    char path[PATH_MAX];
    memcpy(path, fs->root, fs->rootlen + 1);
    for (char *p = path + 1;; p++) {
        if (*p != '/' && *p != '\0') continue;
        char saved = *p;
        *p = '\0';
        if (mkdir(path, 0755) != 0 && errno != EEXIST)
            return fs_fail(fs, err, errno, "create directory", path);
        *p = saved;
        if (saved == '\0') break;
    }
    return 0;
}

/* Removes temp files of puts that crashed: those not modified for an hour.
** Best effort; failures are logged, not returned. */
static void remove_stale_tmp(const file_store *fs, const char *tmpdir) {
    DIR *d = opendir(tmpdir);
    if (d == NULL) return;
    int64_t cutoff = ws_now_ms() - STALE_TMP_AGE_MS;
    unsigned removed = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        struct stat st;
        if (de->d_name[0] == '.') continue;
        if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
        if (!S_ISREG(st.st_mode) || stat_mtime_ms(&st) >= cutoff) continue;
        if (unlinkat(dirfd(d), de->d_name, 0) == 0)
            removed++;
        else if (errno != ENOENT) /* another process removed it first */
            WS_WARN("store_file_stale_tmp", "path=\"%s/%s\" errno=%d", tmpdir, de->d_name, errno);
    }
    closedir(d);
    if (removed) WS_INFO("store_file_stale_tmp", "dir=\"%s\" removed=%u", fs->root, removed);
}

/* Makes sure DIR is a directory (creating it if missing) and that the temp
** area exists where DIR is writable. */
static int prepare_root(const file_store *fs, wserr *err) {
    struct stat st;
    char tmpdir[PATH_MAX];
    if (stat(fs->root, &st) != 0) {
        if (errno != ENOENT) return fs_fail(fs, err, errno, "open store directory", fs->root);
        int rc = make_root(fs, err);
        if (rc) return rc;
        if (stat(fs->root, &st) != 0)
            return fs_fail(fs, err, errno, "open store directory", fs->root);
    }
    if (!S_ISDIR(st.st_mode))
        return wserr_set(err, WALSHIP_ERR_INVALID,
                         "store directory %.300s exists but is not a directory", fs->root);
    snprintf(tmpdir, sizeof tmpdir, "%s/" TMP_DIR_NAME, fs->root);
    if (mkdir(tmpdir, 0755) != 0) {
        int e = errno;
        if (e == EACCES || e == EPERM || e == EROFS) {
            /* Read-only store: reads work, puts will say why they cannot. */
            WS_INFO("store_file_read_only", "dir=\"%s\" errno=%d", fs->root, e);
            return 0;
        }
        if (e != EEXIST) return fs_fail(fs, err, e, "create directory", tmpdir);
        if (lstat(tmpdir, &st) != 0 || !S_ISDIR(st.st_mode))
            return wserr_set(err, WALSHIP_ERR_INVALID,
                             "%.300s exists but is not a directory; the file store keeps its "
                             "temp files there: move it away",
                             tmpdir);
    }
    remove_stale_tmp(fs, tmpdir);
    return 0;
}

/* store_free: the store owns no open files, only its strings. */
static void file_free(store *s) {
    file_store *fs = (file_store *)s;
    free(fs->root);
    free(fs->base.url);
    free(fs);
}

/* Opens file:///DIR (see USAGE at the top): parses and decodes the URL,
** creates DIR if missing, prepares the temp area and removes stale temp
** files. On success *out owns the store; on failure *out is NULL. */
int store_file_open(const char *url, store **out, wserr *err) {
    *out = NULL;
    file_store *fs = calloc(1, sizeof *fs);
    if (fs == NULL) return wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
    fs->base.ops = &file_ops;
    int rc = parse_file_url(url, &fs->root, err);
    if (rc) goto fail;
    fs->rootlen = strlen(fs->root);
    fs->base.url = strdup(url);
    if (fs->base.url == NULL) {
        rc = wserr_set(err, WALSHIP_ERR_NOMEM, "out of memory");
        goto fail;
    }
    rc = prepare_root(fs, err);
    if (rc) goto fail;
    *out = &fs->base;
    return 0;
fail:
    file_free(&fs->base);
    return rc;
}

static const struct store_ops file_ops = {
    .scheme = "file",
    .free = file_free,
    .put = file_put,
    .writer_open = file_writer_open,
    .writer_write = file_writer_write,
    .writer_commit = file_writer_commit,
    .writer_abort = file_writer_abort,
    .get = file_get,
    .get_fd = file_get_fd,
    .get_stream = file_get_stream,
    .head = file_head,
    .list = file_list,
    .del = file_delete,
    .del_many = file_delete_many,
};
