/*
** harness.c -- see harness.h.
*/
#include "harness.h"

#include <stdarg.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char tmpdir[4096];
static int failed;
static pid_t owner_pid;
static uint64_t rng_state;
static uint64_t rng_seed; /* what WALSHIP_TEST_SEED must be to replay this run */
static int rng_seeded;

static void cleanup(void) {
    if (getpid() != owner_pid || tmpdir[0] == '\0') return;
    if (failed || getenv("WALSHIP_TEST_KEEP")) {
        fprintf(stderr, "kept test directory %s\n", tmpdir);
        return;
    }
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
}

void ws_test_fail(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    failed = 1;
    fprintf(stderr, "FAIL %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    if (rng_seeded) fprintf(stderr, "(replay with WALSHIP_TEST_SEED=%" PRIu64 ")\n", rng_seed);
    exit(1);
}

void ws_test_skip(const char *why) {
    fprintf(stderr, "SKIP: %s\n", why);
    exit(77);
}

const char *ws_test_tmpdir(void) {
    if (tmpdir[0]) return tmpdir;
    const char *base = getenv("TMPDIR");
    if (base == NULL || *base == '\0') base = "/tmp";
    snprintf(tmpdir, sizeof tmpdir, "%s/walship-test-XXXXXX", base);
    if (mkdtemp(tmpdir) == NULL) {
        tmpdir[0] = '\0';
        ws_test_fail(__FILE__, __LINE__, "mkdtemp failed");
    }
    owner_pid = getpid();
    atexit(cleanup);
    return tmpdir;
}

int ws_test_s3_required(void) {
    const char *req = getenv("WALSHIP_TEST_REQUIRE_S3");
    return req != NULL && strcmp(req, "1") == 0;
}

void ws_test_skip_s3(const char *why) {
    if (ws_test_s3_required())
        ws_test_fail(__FILE__, __LINE__, "%s, but WALSHIP_TEST_REQUIRE_S3=1 (the S3 part must run)",
                     why);
    ws_test_skip(why);
}

int ws_test_s3_configured(void) {
    const char *base = getenv("WALSHIP_TEST_S3_URL");
    if (base != NULL && *base != '\0') return 1;
    if (ws_test_s3_required())
        ws_test_fail(__FILE__, __LINE__,
                     "WALSHIP_TEST_S3_URL is not set but WALSHIP_TEST_REQUIRE_S3=1");
    return 0;
}

const char *ws_test_s3_url(const char *name) {
    static char url[2048];
    if (!ws_test_s3_configured())
        ws_test_skip("WALSHIP_TEST_S3_URL not set (scripts/test sets it)");
    const char *base = getenv("WALSHIP_TEST_S3_URL");
    /* Insert "/<name>-<pid>-<time>" before any "?query". */
    const char *q = strchr(base, '?');
    size_t blen = q ? (size_t)(q - base) : strlen(base);
    while (blen > 5 && base[blen - 1] == '/') blen--;
    snprintf(url, sizeof url, "%.*s/%s-%d-%lld%s", (int)blen, base, name, (int)getpid(),
             (long long)ws_now_us(), q ? q : "");
    return url;
}

void ws_test_seed(uint64_t dflt) {
    const char *s = getenv("WALSHIP_TEST_SEED");
    rng_state = s ? strtoull(s, NULL, 10) : dflt;
    if (rng_state == 0) rng_state = 0x9e3779b97f4a7c15ull;
    rng_seed = rng_state;
    fprintf(stderr, "seed %" PRIu64 "\n", rng_seed);
    rng_seeded = 1;
}

uint64_t ws_test_rand(void) {
    if (!rng_seeded) ws_test_seed(1);
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Dull;
}

uint64_t ws_test_rand_below(uint64_t n) { return n ? ws_test_rand() % n : 0; }

void ws_test_rand_bytes(void *p, size_t n) {
    uint8_t *b = p;
    for (size_t i = 0; i < n; i += 8) {
        uint64_t r = ws_test_rand();
        size_t k = n - i < 8 ? n - i : 8;
        memcpy(b + i, &r, k);
    }
}

int ws_test_system(const char *fmt, ...) {
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int st = system(cmd);
    if (st == -1) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

const char *ws_test_env(const char *name) {
    const char *v = getenv(name);
    if (v == NULL || *v == '\0')
        ws_test_fail(__FILE__, __LINE__, "environment variable %s is not set (run through ctest)",
                     name);
    return v;
}

int ws_test_case_wanted(const char *name) {
    const char *only = getenv("WALSHIP_TEST_CASE");
    return only == NULL || *only == '\0' || strstr(name, only) != NULL;
}
