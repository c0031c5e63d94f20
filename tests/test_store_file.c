/*
** test_store_file.c -- what only the file:// backend does (store_file.c):
** URL forms, the on-disk layout, the reserved temp area, atomicity when a
** writer is aborted or its process dies, what a file system cannot hold,
** the in-memory limit, a full disk, permissions, and many threads at once.
** What every backend must do is in test_store_conformance.c.
**
** The full-disk case mounts a 1 MiB tmpfs in a child process's private
** mount namespace (the mount vanishes with the child; without root, inside
** a user namespace); where neither is permitted it is reported as skipped
** and the rest still runs. The
** permission case runs in a child that drops to uid 65534 when started as
** root.
**
** ctest-labels: threads
** ctest-timeout: 120
*/
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "store/store.h"

#define TMP ".walship-tmp"

/* ---- helpers ------------------------------------------------------------ */

/* A fresh directory path under the test's temp dir (not created). */
static const char *fresh_dir(const char *name) {
    static char bufs[8][4096];
    static unsigned next;
    char *b = bufs[next++ % 8];
    snprintf(b, 4096, "%s/%s", ws_test_tmpdir(), name);
    return b;
}

static const char *url_of(const char *dir) {
    static char bufs[8][4200];
    static unsigned next;
    char *b = bufs[next++ % 8];
    snprintf(b, 4200, "file://%s", dir);
    return b;
}

static store *open_store(const char *dir) {
    wserr e = {0}, *err = &e;
    store *s = NULL;
    CHECK_OK(store_open(url_of(dir), &s, err), err);
    CHECK(s != NULL);
    return s;
}

/* Opens url expecting failure with code; returns the message. */
static const char *open_fails(const char *url, int code) {
    static wserr e;
    wserr *err = &e;
    store *s = (store *)&e; /* must be reset to NULL */
    wserr_clear(err);
    CHECK_RC(store_open(url, &s, err), code, err);
    CHECK(s == NULL);
    return e.msg;
}

static void put_str(store *s, const char *key, const char *v) {
    wserr e = {0}, *err = &e;
    CHECK_OK(store_put(s, key, v, strlen(v), 0, err), err);
}

static void check_str(store *s, const char *key, const char *v) {
    wserr e = {0}, *err = &e;
    wsbuf b = {0};
    CHECK_OK(store_get(s, key, &b, err), err);
    CHECK_EQ(b.len, strlen(v));
    CHECK(memcmp(b.p, v, b.len) == 0);
    wsbuf_free(&b);
}

static size_t list_count(store *s, const char *prefix) {
    wserr e = {0}, *err = &e;
    store_objlist l = {0};
    CHECK_OK(store_list(s, prefix, NULL, &l, err), err);
    size_t n = l.n;
    store_objlist_free(&l);
    return n;
}

/* Number of entries in a directory other than "." and ".."; -1 if missing. */
static int count_entries(const char *dir) {
    DIR *d = opendir(dir);
    if (d == NULL) return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0) n++;
    closedir(d);
    return n;
}

static int count_tmp(const char *dir) {
    char p[4200];
    snprintf(p, sizeof p, "%s/" TMP, dir);
    return count_entries(p);
}

static int path_exists(const char *dir, const char *rel) {
    char p[8200];
    struct stat st;
    snprintf(p, sizeof p, "%s/%s", dir, rel);
    return lstat(p, &st) == 0;
}

static mode_t path_mode(const char *path) {
    struct stat st;
    CHECK(lstat(path, &st) == 0);
    return st.st_mode;
}

/* Runs fn(arg) in a child process; returns its exit status (77 = skipped). */
static int in_child(void (*fn)(const void *), const void *arg) {
    fflush(stderr);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        fn(arg);
        exit(0);
    }
    int st;
    CHECK(waitpid(pid, &st, 0) == pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* ---- URL forms ---------------------------------------------------------- */

static void test_url_forms(void) {
    wserr e = {0}, *err = &e;
    const char *dir = fresh_dir("url");
    char url[8400];
    umask(022);

    /* accepted: the plain form creates the directory, 0755 */
    store *s = open_store(dir);
    CHECK_STREQ(store_url(s), url_of(dir));
    CHECK((path_mode(dir) & 0777) == 0755);
    CHECK(S_ISDIR(path_mode(fresh_dir("url/" TMP))));
    put_str(s, "k", "v");
    store_free(s);

    const char *same[] = {"file://localhost%s", "file://LOCALHOST%s", "file://%s/", "file://%s//"};
    for (size_t i = 0; i < sizeof same / sizeof *same; i++) {
        snprintf(url, sizeof url, same[i], dir);
        CHECK_OK(store_open(url, &s, err), err);
        CHECK_STREQ(store_url(s), url);
        check_str(s, "k", "v"); /* the same directory */
        store_free(s);
    }

    /* percent-decoding, and mkdir -p of several levels */
    snprintf(url, sizeof url, "file://%s/a/b%%20c/d%%25e%%3Ff%%23g/%%C3%%BC", dir);
    CHECK_OK(store_open(url, &s, err), err);
    store_free(s);
    CHECK(path_exists(dir, "a/b c/d%e?f#g/\xc3\xbc/" TMP));
    CHECK((path_mode(fresh_dir("url/a/b c")) & 0777) == 0755);

    /* rejected */
    static const struct {
        const char *url, *needle;
    } bad[] = {
        {"file://relative/dir", "host \"relative\""},
        {"file://backup.example.com/srv/x", "host \"backup.example.com\""},
        {"file://", "names no directory"},
        {"file://localhost", "names no directory"},
        {"file:///", "root directory"},
        {"file://localhost/", "root directory"},
        {"file:////", "root directory"},
        {"file:///tmp/a%zz", "percent-escape"},
        {"file:///tmp/a%2", "percent-escape"},
        {"file:///tmp/a%00b", "percent-escape"},
        {"file:///tmp/a?mode=x", "'?'"},
        {"file:///tmp/a#frag", "'#'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        const char *msg = open_fails(bad[i].url, WALSHIP_ERR_INVALID);
        CHECK_CONTAINS(msg, bad[i].needle);
        if (strncmp(bad[i].url, "file:///tmp/a", 13) != 0)
            CHECK_CONTAINS(msg, "file:///ABSOLUTE/DIR");
    }
    CHECK_CONTAINS(open_fails("file:relative/dir", WALSHIP_ERR_INVALID), "file:///ABSOLUTE/DIR");

    char *longpath = malloc(5000);
    CHECK(longpath != NULL);
    memcpy(longpath, "file:///", 8);
    memset(longpath + 8, 'l', 4000);
    longpath[4008] = '\0';
    CHECK_CONTAINS(open_fails(longpath, WALSHIP_ERR_INVALID), "longer than");
    free(longpath);

    /* a regular file where the directory should be */
    const char *file = fresh_dir("url-file");
    int fd = open(file, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    CHECK(fd >= 0);
    close(fd);
    CHECK_CONTAINS(open_fails(url_of(file), WALSHIP_ERR_INVALID), "not a directory");
    /* ... or where the temp area should be */
    const char *dir2 = fresh_dir("url-tmpfile");
    CHECK(mkdir(dir2, 0755) == 0);
    snprintf(url, sizeof url, "%s/" TMP, dir2);
    fd = open(url, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    CHECK(fd >= 0);
    close(fd);
    CHECK_CONTAINS(open_fails(url_of(dir2), WALSHIP_ERR_INVALID), TMP);
}

/* ---- layout, reserved keys, what a file system cannot hold ------------- */

static void test_layout(void) {
    wserr e = {0}, *err = &e;
    const char *dir = fresh_dir("layout");
    umask(022);
    store *s = open_store(dir);
    put_str(s, "gen/0001/seg/a", "A");
    char p[8200];
    snprintf(p, sizeof p, "%s/gen/0001/seg/a", dir);
    CHECK(S_ISREG(path_mode(p)));
    CHECK((path_mode(p) & 0777) == 0644);
    CHECK((path_mode(fresh_dir("layout/gen/0001")) & 0777) == 0755);
    wsbuf b = {0};
    CHECK_OK(ws_read_file(p, 100, &b, err), err);
    CHECK(b.len == 1 && b.p[0] == 'A');
    wsbuf_free(&b);
    CHECK_EQ(count_tmp(dir), 0);

    /* Deleting removes directories left empty, never DIR or a non-empty one. */
    put_str(s, "x/y/z/1", "1");
    put_str(s, "x/y/2", "2");
    CHECK_OK(store_delete(s, "x/y/z/1", err), err);
    CHECK(!path_exists(dir, "x/y/z"));
    CHECK(path_exists(dir, "x/y/2"));
    CHECK_OK(store_delete(s, "x/y/2", err), err);
    CHECK(!path_exists(dir, "x"));
    const char *all[] = {"gen/0001/seg/a"};
    CHECK_OK(store_delete_many(s, all, 1, err), err);
    CHECK(!path_exists(dir, "gen"));
    CHECK(path_exists(dir, TMP));
    CHECK_EQ(count_entries(dir), 1);
    /* A single key at the top: DIR stays. */
    put_str(s, "top", "t");
    CHECK_OK(store_delete(s, "top", err), err);
    CHECK_EQ(count_entries(dir), 1);
    store_free(s);
    CHECK(S_ISDIR(path_mode(dir)));
}

static void test_reserved(void) {
    wserr e = {0}, *err = &e;
    const char *dir = fresh_dir("reserved");
    store *s = open_store(dir);
    wsbuf b = {0};
    store_obj o;
    store_writer *w = NULL;
    const char *keys[] = {TMP, TMP "/x", TMP "x", TMP "/a/b"};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
        CHECK_RC(store_put(s, keys[i], "x", 1, 0, err), WALSHIP_ERR_INVALID, err);
        CHECK_CONTAINS(e.msg, "reserved");
        CHECK_RC(store_writer_open(s, keys[i], 0, &w, err), WALSHIP_ERR_INVALID, err);
        CHECK(w == NULL);
        CHECK_RC(store_get(s, keys[i], &b, err), WALSHIP_ERR_INVALID, err);
        CHECK_RC(store_get_range(s, keys[i], 0, 1, &b, err), WALSHIP_ERR_INVALID, err);
        CHECK_RC(store_head(s, keys[i], &o, err), WALSHIP_ERR_INVALID, err);
        CHECK_RC(store_delete(s, keys[i], err), WALSHIP_ERR_INVALID, err);
    }
    /* what lies in the temp area, or next to it, is never listed */
    char p[8200];
    snprintf(p, sizeof p, "%s/" TMP "/stray", dir);
    CHECK_OK(ws_write_file_atomic(p, "s", 1, err), err);
    snprintf(p, sizeof p, "%s/" TMP "x", dir);
    CHECK_OK(ws_write_file_atomic(p, "s", 1, err), err);
    put_str(s, ".walship", "ok"); /* not reserved: a different name */
    put_str(s, "k", "v");
    store_objlist l = {0};
    CHECK_OK(store_list(s, "", NULL, &l, err), err);
    CHECK_EQ(l.n, 2);
    CHECK_STREQ(l.items[0].key, ".walship");
    CHECK_STREQ(l.items[1].key, "k");
    store_objlist_free(&l);
    CHECK_EQ(list_count(s, TMP), 0);
    CHECK_EQ(list_count(s, TMP "/"), 0);
    CHECK_EQ(list_count(s, ".walship-t"), 0);
    /* a removed temp area is recreated by the next put */
    CHECK_EQ(ws_test_system("rm -rf '%s/" TMP "'", dir), 0);
    put_str(s, "k2", "v2");
    check_str(s, "k2", "v2");
    CHECK_EQ(count_tmp(dir), 0);
    store_free(s);
}

static void test_fs_limits(void) {
    wserr e = {0}, *err = &e;
    const char *dir = fresh_dir("limits");
    store *s = open_store(dir);
    store_writer *w = NULL;
    put_str(s, "d/x", "dx");
    put_str(s, "f", "file");

    /* a key that is also the directory of other keys */
    CHECK_RC(store_put(s, "d", "v", 1, 0, err), WALSHIP_ERR_UNSUPPORTED, err);
    CHECK_CONTAINS(e.msg, "other keys start with \"d/\"");
    CHECK_RC(store_put(s, "d", "v", 1, STORE_PUT_CREATE_ONLY, err), WALSHIP_ERR_UNSUPPORTED, err);
    CHECK_OK(store_writer_open(s, "d", 0, &w, err), err);
    CHECK_OK(store_writer_write(w, "v", 1, err), err);
    CHECK_RC(store_writer_commit(w, err), WALSHIP_ERR_UNSUPPORTED, err);
    /* a key below an object */
    CHECK_RC(store_put(s, "f/x", "v", 1, 0, err), WALSHIP_ERR_UNSUPPORTED, err);
    CHECK_CONTAINS(e.msg, "is an object");
    CHECK_RC(store_put(s, "f/x/y", "v", 1, STORE_PUT_CREATE_ONLY, err), WALSHIP_ERR_UNSUPPORTED,
             err);
    /* a key ending in '/' (an S3 folder marker) is refused for every backend */
    CHECK(!store_key_valid("e/"));
    CHECK_RC(store_put(s, "e/", "v", 1, 0, err), WALSHIP_ERR_INVALID, err);
    CHECK_RC(store_writer_open(s, "e/", 0, &w, err), WALSHIP_ERR_INVALID, err);
    /* a segment longer than NAME_MAX */
    char key[400];
    memset(key, 's', 256);
    key[256] = '\0';
    CHECK_RC(store_put(s, key, "v", 1, 0, err), WALSHIP_ERR_INVALID, err);
    CHECK_CONTAINS(e.msg, "255 bytes");
    wsbuf b0 = {0};
    store_obj o0;
    CHECK_RC(store_get(s, key, &b0, err), WALSHIP_ERR_NOTFOUND, err); /* cannot exist */
    CHECK_RC(store_head(s, key, &o0, err), WALSHIP_ERR_NOTFOUND, err);
    CHECK_OK(store_delete(s, key, err), err);
    memset(key, 's', 255);
    key[255] = '\0';
    put_str(s, key, "255 is fine");
    check_str(s, key, "255 is fine");

    /* reads and deletes of a directory name see no object and change nothing */
    wsbuf b = {0};
    store_obj o;
    CHECK_RC(store_get(s, "d", &b, err), WALSHIP_ERR_NOTFOUND, err);
    CHECK_RC(store_get(s, "d/", &b, err), WALSHIP_ERR_INVALID, err);
    CHECK_RC(store_head(s, "d/", &o, err), WALSHIP_ERR_INVALID, err);
    CHECK_OK(store_delete(s, "d", err), err);
    CHECK_RC(store_delete(s, "d/", err), WALSHIP_ERR_INVALID, err);
    CHECK_RC(store_get(s, "f/x", &b, err), WALSHIP_ERR_NOTFOUND, err);
    check_str(s, "d/x", "dx");
    check_str(s, "f", "file");
    CHECK_EQ(count_tmp(dir), 0); /* every failed put cleaned up */
    CHECK_EQ(list_count(s, ""), 3);
    store_free(s);
}

/* Symlinks, fifos and other non-regular files, and empty directories named
** like files, are not objects: reading one finds nothing, but list returns
** them (size 0) so that readers can report them; an empty folder is not
** listed; list does not follow a symlinked directory (here a loop). */
static void test_non_objects(void) {
    wserr e = {0}, *err = &e;
    const char *dir = fresh_dir("nonobj");
    store *s = open_store(dir);
    put_str(s, "real", "r");
    char p[8200], t[8200];
    snprintf(p, sizeof p, "%s/link", dir);
    snprintf(t, sizeof t, "%s/real", dir);
    CHECK(symlink(t, p) == 0);
    snprintf(p, sizeof p, "%s/dirlink", dir);
    CHECK(symlink(dir, p) == 0); /* a loop, if it were followed */
    snprintf(p, sizeof p, "%s/fifo", dir);
    CHECK(mkfifo(p, 0600) == 0);
    wsbuf b = {0};
    store_obj o;
    const char *names[] = {"link", "fifo", "dirlink"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        CHECK_RC(store_get(s, names[i], &b, err), WALSHIP_ERR_NOTFOUND, err);
        CHECK_RC(store_head(s, names[i], &o, err), WALSHIP_ERR_NOTFOUND, err);
    }
    snprintf(p, sizeof p, "%s/empty.dir", dir);
    CHECK(mkdir(p, 0755) == 0);
    snprintf(p, sizeof p, "%s/emptyfolder", dir);
    CHECK(mkdir(p, 0755) == 0);
    CHECK_RC(store_get(s, "empty.dir", &b, err), WALSHIP_ERR_NOTFOUND, err);
    store_objlist l = {0};
    CHECK_OK(store_list(s, "", NULL, &l, err), err);
    const char *listed[] = {"dirlink", "empty.dir", "fifo", "link", "real"};
    CHECK_EQ(l.n, 5);
    for (size_t i = 0; i < l.n; i++) {
        CHECK_STREQ(l.items[i].key, listed[i]);
        CHECK_EQ(l.items[i].size, strcmp(listed[i], "real") == 0 ? 1 : 0);
    }
    store_objlist_free(&l);
    store_free(s);
}

/* Objects above STORE_MEM_MAX are refused by store_get before allocating;
** ranges and tails of them still work. A sparse file costs no disk. */
static void test_mem_max(void) {
    wserr e = {0}, *err = &e;
    const char *dir = fresh_dir("memmax");
    store *s = open_store(dir);
    put_str(s, "big", "x");
    char p[8200];
    snprintf(p, sizeof p, "%s/big", dir);
    CHECK(truncate(p, (off_t)STORE_MEM_MAX + 1) == 0);
    wsbuf b = {0};
    CHECK_RC(store_get(s, "big", &b, err), WALSHIP_ERR_CORRUPT, err);
    CHECK_CONTAINS(e.msg, "store_get_fd");
    CHECK(b.cap < 1 << 20); /* nothing was allocated for it */
    CHECK_OK(store_get_tail(s, "big", 4, &b, err), err);
    CHECK_EQ(b.len, 4);
    CHECK(memcmp(b.p, "\0\0\0\0", 4) == 0);
    CHECK_OK(store_get_range(s, "big", 0, 2, &b, err), err);
    CHECK(b.len == 2 && b.p[0] == 'x' && b.p[1] == 0);
    CHECK_OK(store_get_range(s, "big", STORE_MEM_MAX, 100, &b, err), err);
    CHECK_EQ(b.len, 1);
    store_obj o;
    CHECK_OK(store_head(s, "big", &o, err), err);
    CHECK_U64_EQ(o.size, STORE_MEM_MAX + 1);
    CHECK_OK(store_delete(s, "big", err), err);
    wsbuf_free(&b);
    store_free(s);
}

/* ---- atomicity ---------------------------------------------------------- */

static void test_writer_visibility(void) {
    wserr e = {0}, *err = &e;
    const char *dir = fresh_dir("visible");
    store *s = open_store(dir);
    store_writer *w = NULL;
    store_obj o;
    uint8_t chunk[65536];
    ws_test_rand_bytes(chunk, sizeof chunk);

    put_str(s, "obj", "old");
    CHECK_OK(store_writer_open(s, "obj", 0, &w, err), err);
    for (int i = 0; i < 16; i++)
        CHECK_OK(store_writer_write(w, chunk, sizeof chunk, err), err);
    CHECK_EQ(count_tmp(dir), 1); /* the bytes are in the temp area... */
    check_str(s, "obj", "old");  /* ...and nowhere else */
    CHECK_EQ(list_count(s, ""), 1);
    store_writer_abort(w);
    CHECK_EQ(count_tmp(dir), 0);
    check_str(s, "obj", "old");

    CHECK_OK(store_writer_open(s, "new/obj", 0, &w, err), err);
    CHECK_OK(store_writer_write(w, chunk, sizeof chunk, err), err);
    CHECK_RC(store_head(s, "new/obj", &o, err), WALSHIP_ERR_NOTFOUND, err);
    CHECK(!path_exists(dir, "new"));
    CHECK_OK(store_writer_commit(w, err), err);
    CHECK_EQ(count_tmp(dir), 0);
    CHECK_OK(store_head(s, "new/obj", &o, err), err);
    CHECK_U64_EQ(o.size, sizeof chunk);

    /* create-only leaves no temp file whether it wins or loses */
    CHECK_OK(store_put(s, "co", "1", 1, STORE_PUT_CREATE_ONLY, err), err);
    CHECK_EQ(count_tmp(dir), 0);
    CHECK_RC(store_put(s, "co", "2", 1, STORE_PUT_CREATE_ONLY, err), WALSHIP_ERR_EXISTS, err);
    CHECK_EQ(count_tmp(dir), 0);
    char p[8200];
    struct stat st;
    snprintf(p, sizeof p, "%s/co", dir);
    CHECK(stat(p, &st) == 0);
    CHECK_EQ(st.st_nlink, 1); /* the temp name was unlinked */
    check_str(s, "co", "1");
    store_free(s);
}

/* A process that dies mid-write leaves only a temp file, which nothing
** lists or reads; reopening removes it once it is an hour old. */
static void crash_child(const void *arg) {
    const char *dir = arg;
    wserr e = {0}, *err = &e;
    store *s = NULL;
    store_writer *w = NULL;
    if (store_open(url_of(dir), &s, err) || store_writer_open(s, "crash/obj", 0, &w, err) ||
        store_writer_write(w, "partial", 7, err))
        _exit(1);
    _exit(0); /* no commit, no abort, no cleanup: a crash */
}

static void test_crashed_writer(void) {
    wserr e = {0}, *err = &e;
    const char *dir = fresh_dir("crash");
    store *s = open_store(dir);
    CHECK_EQ(in_child(crash_child, dir), 0);
    CHECK_EQ(in_child(crash_child, dir), 0);
    CHECK_EQ(count_tmp(dir), 2);
    CHECK_EQ(list_count(s, ""), 0);
    store_obj o;
    CHECK_RC(store_head(s, "crash/obj", &o, err), WALSHIP_ERR_NOTFOUND, err);
    store_free(s);

    /* young temp files may belong to a live writer: kept */
    s = open_store(dir);
    store_free(s);
    CHECK_EQ(count_tmp(dir), 2);

    /* age one of them past the hour */
    char tmpdir[4200], p[8400];
    snprintf(tmpdir, sizeof tmpdir, "%s/" TMP, dir);
    DIR *d = opendir(tmpdir);
    CHECK(d != NULL);
    struct dirent *de;
    do
        de = readdir(d);
    while (de != NULL && de->d_name[0] == '.');
    CHECK(de != NULL);
    snprintf(p, sizeof p, "%s/%s", tmpdir, de->d_name);
    closedir(d);
    struct timespec old[2] = {{.tv_sec = time(NULL) - 7200}, {.tv_sec = time(NULL) - 7200}};
    CHECK(utimensat(AT_FDCWD, p, old, 0) == 0);
    s = open_store(dir);
    CHECK_EQ(count_tmp(dir), 1);
    CHECK(!path_exists(dir, "crash"));
    CHECK_EQ(list_count(s, ""), 0);
    store_free(s);
}

/* ---- full disk ---------------------------------------------------------- */

/* Writes s to the file at path; 0 on success. */
static int write_proc(const char *path, const char *s) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    int rc = ws_write_all(fd, s, strlen(s));
    close(fd);
    return rc;
}

/* Enters a private mount namespace: directly as root, else inside a new
** user namespace (where an unprivileged user may mount a tmpfs). */
static int private_mount_ns(void) {
    if (unshare(CLONE_NEWNS) == 0) return 0;
    uid_t uid = geteuid();
    gid_t gid = getegid();
    char map[64];
    if (unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0) return -1;
    if (write_proc("/proc/self/setgroups", "deny") != 0) return -1;
    snprintf(map, sizeof map, "0 %u 1", (unsigned)uid);
    if (write_proc("/proc/self/uid_map", map) != 0) return -1;
    snprintf(map, sizeof map, "0 %u 1", (unsigned)gid);
    return write_proc("/proc/self/gid_map", map);
}

static void full_disk_child(const void *arg) {
    const char *dir = arg;
    if (private_mount_ns() != 0 || mount("none", "/", "none", MS_REC | MS_PRIVATE, NULL) != 0 ||
        mount("walship-test", dir, "tmpfs", 0, "size=1m") != 0) {
        fprintf(stderr, "cannot mount a tmpfs here: %s\n", strerror(errno));
        exit(77);
    }
    wserr e = {0}, *err = &e;
    store *s = open_store(dir);
    size_t big = 2 << 20;
    uint8_t *data = calloc(1, big);
    CHECK(data != NULL);
    CHECK_OK(store_put(s, "small", data, 100000, 0, err), err);

    CHECK_RC(store_put(s, "huge", data, big, 0, err), WALSHIP_ERR_NOSPACE, err);
    CHECK_CONTAINS(e.msg, dir);
    CHECK_CONTAINS(e.msg, "is full");
    CHECK_EQ(count_tmp(dir), 0);
    CHECK_RC(store_put(s, "huge", data, big, STORE_PUT_CREATE_ONLY, err), WALSHIP_ERR_NOSPACE, err);
    CHECK_EQ(count_tmp(dir), 0);

    /* the writer fails at a write (tmpfs allocates on write), stays failed */
    store_writer *w = NULL;
    CHECK_OK(store_writer_open(s, "w", 0, &w, err), err);
    int rc = 0;
    for (size_t off = 0; off < big && rc == 0; off += 65536)
        rc = store_writer_write(w, data, 65536, err);
    CHECK_RC(rc, WALSHIP_ERR_NOSPACE, err);
    CHECK_RC(store_writer_write(w, data, 1, err), WALSHIP_ERR_NOSPACE, err);
    CHECK_RC(store_writer_commit(w, err), WALSHIP_ERR_NOSPACE, err);
    CHECK_EQ(count_tmp(dir), 0);

    /* put_fd the same way, from a file on another file system */
    char src[4200];
    snprintf(src, sizeof src, "%s-src", dir);
    int fd = open(src, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    CHECK(fd >= 0 && ws_write_all(fd, data, big) == 0 && lseek(fd, 0, SEEK_SET) == 0);
    CHECK_RC(store_put_fd(s, "fd", fd, 0, err), WALSHIP_ERR_NOSPACE, err);
    close(fd);
    unlink(src);
    CHECK_EQ(count_tmp(dir), 0);

    /* nothing was lost, and the space of failed puts came back */
    wsbuf b = {0};
    CHECK_OK(store_get(s, "small", &b, err), err);
    CHECK_EQ(b.len, 100000);
    wsbuf_free(&b);
    store_obj o;
    CHECK_RC(store_head(s, "huge", &o, err), WALSHIP_ERR_NOTFOUND, err);
    CHECK_RC(store_head(s, "w", &o, err), WALSHIP_ERR_NOTFOUND, err);
    CHECK_OK(store_put(s, "after", data, 600000, 0, err), err);
    CHECK_OK(store_delete(s, "small", err), err);
    store_free(s);
    free(data);
}

static void test_full_disk(void) {
    const char *dir = fresh_dir("full");
    CHECK(mkdir(dir, 0755) == 0);
    int st = in_child(full_disk_child, dir);
    if (st == 77) {
        fprintf(stderr, "   skipped: full-disk case needs a tmpfs mount (root, or user "
                        "namespaces enabled)\n");
        return;
    }
    CHECK_EQ(st, 0);
    CHECK_EQ(count_entries(dir), 0); /* the tmpfs went away with the child */
}

/* ---- permissions -------------------------------------------------------- */

static void no_permission_child(const void *arg) {
    const char *dir = arg;
    if (geteuid() == 0) {
        CHECK(setgroups(0, NULL) == 0);
        CHECK(setgid(65534) == 0);
        CHECK(setuid(65534) == 0);
    }
    wserr e = {0}, *err = &e;
    /* a read-only archive opens, and reads work */
    store *s = open_store(dir);
    check_str(s, "obj", "readable");
    CHECK_EQ(list_count(s, ""), 1);
    /* writes fail with AUTH, naming the directory */
    CHECK_RC(store_put(s, "new", "x", 1, 0, err), WALSHIP_ERR_AUTH, err);
    CHECK_CONTAINS(e.msg, "permission denied");
    CHECK_CONTAINS(e.msg, dir);
    store_writer *w = NULL;
    CHECK_RC(store_writer_open(s, "new", 0, &w, err), WALSHIP_ERR_AUTH, err);
    CHECK_RC(store_delete(s, "obj", err), WALSHIP_ERR_AUTH, err);
    CHECK_CONTAINS(e.msg, "permission denied");
    store_free(s);
    /* a store directory that cannot be created */
    char sub[4200];
    snprintf(sub, sizeof sub, "file://%s/sub/dir", dir);
    const char *msg = open_fails(sub, WALSHIP_ERR_AUTH);
    CHECK_CONTAINS(msg, "permission denied");
}

static void test_permissions(void) {
    const char *dir = fresh_dir("perm");
    store *s = open_store(dir);
    put_str(s, "obj", "readable");
    store_free(s);
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s/" TMP, dir);
    int root = geteuid() == 0;
    CHECK(chmod(ws_test_tmpdir(), 0711) == 0); /* let uid 65534 reach dir */
    if (!root) CHECK(chmod(dir, 0555) == 0 && chmod(tmp, 0555) == 0);
    int st = in_child(no_permission_child, dir);
    if (!root) CHECK(chmod(dir, 0755) == 0 && chmod(tmp, 0755) == 0);
    CHECK(chmod(ws_test_tmpdir(), 0700) == 0);
    CHECK_EQ(st, 0);
}

/* ---- threads ------------------------------------------------------------ */

enum { CHURNERS = 6, CHURN_OPS = 300, HOT_WRITERS = 2, HOT_READERS = 2, HOT_WRITES = 150 };

typedef struct worker {
    store *s;
    int id;
    atomic_int *writers_left;
    int rc;
    char msg[WSERR_MSG_MAX + 200];
    unsigned long reads;
} worker;

static void worker_fail(worker *w, int rc, const char *what, const wserr *err) {
    if (w->rc) return;
    w->rc = rc ? rc : -1;
    snprintf(w->msg, sizeof w->msg, "thread %d: %s: %s", w->id, what, err ? err->msg : "");
}

/* The size a churn key's object has: encoded in the key as "-s<size>". */
static size_t churn_size(const char *key) {
    const char *p = strstr(key, "-s");
    return p ? (size_t)strtoul(p + 2, NULL, 10) : (size_t)-1;
}

/* Puts, reads back, lists and deletes keys in directories shared with the
** other churners, so directories are created and removed under each other. */
static void *churn_main(void *arg) {
    worker *w = arg;
    uint8_t buf[4096];
    char key[128], batch_keys[4][128];
    const char *batch[4];
    int nbatch = 0;
    for (int i = 0; i < CHURN_OPS && w->rc == 0; i++) {
        wserr e = {0};
        size_t size = (size_t)((i * 131 + w->id * 17) % 4000);
        snprintf(key, sizeof key, "t/d%d/e%d/k%d-%d-s%zu", (i + w->id) % 3, i % 2, w->id, i, size);
        memset(buf, (int)(i & 0xff), size);
        int rc = store_put(w->s, key, buf, size, i % 5 == 0 ? STORE_PUT_CREATE_ONLY : 0, &e);
        if (rc) {
            worker_fail(w, rc, key, &e);
            break;
        }
        wsbuf b = {0};
        rc = store_get(w->s, key, &b, &e);
        if (rc || b.len != size || (size && (b.p[0] != (uint8_t)i || b.p[size - 1] != (uint8_t)i)))
            worker_fail(w, rc, "read back", &e);
        wsbuf_free(&b);
        if (i % 10 == 0) {
            store_objlist l = {0};
            rc = store_list(w->s, "t/", NULL, &l, &e);
            if (rc) worker_fail(w, rc, "list", &e);
            for (size_t j = 0; j < l.n; j++) {
                if (j && strcmp(l.items[j - 1].key, l.items[j].key) >= 0)
                    worker_fail(w, 0, "list out of order", NULL);
                if (strcmp(l.items[j].key, "t/hot") != 0 &&
                    l.items[j].size != churn_size(l.items[j].key))
                    worker_fail(w, 0, "listed size differs from the size put", NULL);
            }
            store_objlist_free(&l);
        }
        if (i % 4 == 3) continue; /* keep some */
        if (i % 2) {
            rc = store_delete(w->s, key, &e);
            if (rc) worker_fail(w, rc, "delete", &e);
        } else {
            snprintf(batch_keys[nbatch], sizeof batch_keys[nbatch], "%s", key);
            batch[nbatch] = batch_keys[nbatch];
            if (++nbatch == 4) {
                rc = store_delete_many(w->s, batch, 4, &e);
                if (rc) worker_fail(w, rc, "delete_many", &e);
                nbatch = 0;
            }
        }
    }
    wserr e = {0};
    int rc = nbatch ? store_delete_many(w->s, batch, (size_t)nbatch, &e) : 0;
    if (rc) worker_fail(w, rc, "delete_many", &e);
    return NULL;
}

/* A self-checking object: 8 bytes of hash over the rest. */
static size_t hot_fill(uint8_t *buf, unsigned seed) {
    size_t n = 16 + (seed * 7919u) % (256 * 1024);
    for (size_t i = 8; i < n; i++)
        buf[i] = (uint8_t)(seed + i * 31);
    ws_put_be64(buf, ws_hash64(buf + 8, n - 8));
    return n;
}

static void *hot_writer_main(void *arg) {
    worker *w = arg;
    uint8_t *buf = malloc(300 * 1024);
    for (int i = 0; buf && i < HOT_WRITES && w->rc == 0; i++) {
        wserr e = {0};
        size_t n = hot_fill(buf, (unsigned)(w->id * 1000 + i));
        int rc;
        if (i % 3 == 0) {
            store_writer *wr = NULL;
            rc = store_writer_open(w->s, "t/hot", 0, &wr, &e);
            for (size_t off = 0; rc == 0 && off < n; off += 10007)
                rc = store_writer_write(wr, buf + off, n - off < 10007 ? n - off : 10007, &e);
            if (rc == 0)
                rc = store_writer_commit(wr, &e);
            else
                store_writer_abort(wr);
        } else {
            rc = store_put(w->s, "t/hot", buf, n, 0, &e);
        }
        if (rc) worker_fail(w, rc, "overwrite t/hot", &e);
    }
    free(buf);
    atomic_fetch_sub(w->writers_left, 1);
    return NULL;
}

/* Reads t/hot until the writers are done: always a whole version. */
static void *hot_reader_main(void *arg) {
    worker *w = arg;
    wsbuf b = {0};
    while (w->rc == 0) {
        int last = atomic_load(w->writers_left) == 0;
        wserr e = {0};
        int rc = store_get(w->s, "t/hot", &b, &e);
        if (rc)
            worker_fail(w, rc, "get t/hot", &e);
        else if (b.len < 16 || ws_get_be64(b.p) != ws_hash64(b.p + 8, b.len - 8))
            worker_fail(w, 0, "t/hot is not one whole version", NULL);
        w->reads++;
        if (last) break;
    }
    wsbuf_free(&b);
    return NULL;
}

static void test_threads(void) {
    wserr e = {0}, *err = &e;
    const char *dir = fresh_dir("threads");
    store *s = open_store(dir);
    uint8_t *buf = malloc(300 * 1024);
    CHECK(buf != NULL);
    size_t n = hot_fill(buf, 1);
    CHECK_OK(store_put(s, "t/hot", buf, n, 0, err), err);
    free(buf);

    enum { N = CHURNERS + HOT_WRITERS + HOT_READERS };
    atomic_int writers_left = HOT_WRITERS;
    pthread_t t[N];
    worker w[N];
    for (int i = 0; i < N; i++) {
        w[i] = (worker){.s = s, .id = i, .writers_left = &writers_left};
        void *(*fn)(void *) = i < CHURNERS                 ? churn_main
                              : i < CHURNERS + HOT_WRITERS ? hot_writer_main
                                                           : hot_reader_main;
        CHECK(pthread_create(&t[i], NULL, fn, &w[i]) == 0);
    }
    unsigned long reads = 0;
    for (int i = 0; i < N; i++) {
        CHECK(pthread_join(t[i], NULL) == 0);
        if (w[i].rc)
            ws_test_fail(__FILE__, __LINE__, "%s (%s)", w[i].msg, walship_strerror(w[i].rc));
        reads += w[i].reads;
    }
    CHECK(reads >= HOT_READERS);

    /* what is left: t/hot plus every fourth churn key, each intact */
    store_objlist l = {0};
    CHECK_OK(store_list(s, "", NULL, &l, err), err);
    CHECK_EQ(l.n, 1 + CHURNERS * (CHURN_OPS / 4));
    const char **keys = calloc(l.n, sizeof *keys);
    CHECK(keys != NULL);
    for (size_t i = 0; i < l.n; i++) {
        keys[i] = l.items[i].key;
        if (strcmp(keys[i], "t/hot") != 0) CHECK_EQ(l.items[i].size, churn_size(keys[i]));
    }
    CHECK_OK(store_delete_many(s, keys, l.n, err), err);
    free(keys);
    store_objlist_free(&l);
    CHECK_EQ(list_count(s, ""), 0);
    CHECK_EQ(count_entries(dir), 1); /* only the temp area: every directory went */
    CHECK_EQ(count_tmp(dir), 0);
    store_free(s);
}

/* ---- a removed store directory ----------------------------------------- */

static void test_root_removed(void) {
    wserr e = {0}, *err = &e;
    const char *dir = fresh_dir("gone");
    store *s = open_store(dir);
    put_str(s, "a/b", "1");
    CHECK_EQ(ws_test_system("rm -rf '%s'", dir), 0);
    /* not recreated behind the user's back (it may be an unmounted NFS dir) */
    CHECK_RC(store_put(s, "a/b", "2", 1, 0, err), WALSHIP_ERR_IO, err);
    CHECK_CONTAINS(e.msg, "removed");
    wsbuf b = {0};
    CHECK_RC(store_get(s, "a/b", &b, err), WALSHIP_ERR_NOTFOUND, err);
    CHECK_EQ(list_count(s, ""), 0);
    CHECK_OK(store_delete(s, "a/b", err), err);
    CHECK(!path_exists(dir, ""));
    store_free(s);
    s = open_store(dir); /* opening creates it again */
    put_str(s, "a/b", "3");
    check_str(s, "a/b", "3");
    store_free(s);
}

int main(void) {
    ws_test_seed(777);
    umask(022); /* the mode checks below, and uid 65534 reading what root made */
    RUN(test_url_forms);
    RUN(test_layout);
    RUN(test_reserved);
    RUN(test_fs_limits);
    RUN(test_non_objects);
    RUN(test_mem_max);
    RUN(test_writer_visibility);
    RUN(test_crashed_writer);
    RUN(test_full_disk);
    RUN(test_permissions);
    RUN(test_threads);
    RUN(test_root_removed);
    return 0;
}
