/*
** harness.h -- the small test harness every C test links.
**
** A test program is one process (ctest runs each in isolation with a
** timeout). Checks print both sides and the source line, then exit(1): a
** failing check ends the program. Skip with ws_test_skip() (exit code 77).
**
** Temporary directories come from ws_test_tmpdir(); they are removed at exit
** when every check passed and kept (path printed) when one failed.
**
** S3: tests that need a server call ws_test_s3_url(), which builds a unique
** prefix under WALSHIP_TEST_S3_URL (set by scripts/test). Without that
** variable the test is skipped, unless WALSHIP_TEST_REQUIRE_S3=1, which
** makes it fail instead; every other reason an S3 part cannot run goes
** through ws_test_skip_s3(), which fails the same way.
*/
#ifndef WS_TEST_HARNESS_H
#define WS_TEST_HARNESS_H

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/util.h"

void ws_test_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4), noreturn));
void ws_test_skip(const char *why) __attribute__((noreturn));

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) ws_test_fail(__FILE__, __LINE__, "CHECK(%s) failed", #cond); \
    } while (0)

#define CHECK_EQ(a, b)                                                         \
    do {                                                                       \
        int64_t a_ = (int64_t)(a), b_ = (int64_t)(b);                          \
        if (a_ != b_)                                                          \
            ws_test_fail(__FILE__, __LINE__, "%s == %s failed: %" PRId64 " != %" PRId64, \
                         #a, #b, a_, b_);                                      \
    } while (0)

#define CHECK_U64_EQ(a, b)                                                     \
    do {                                                                       \
        uint64_t a_ = (uint64_t)(a), b_ = (uint64_t)(b);                       \
        if (a_ != b_)                                                          \
            ws_test_fail(__FILE__, __LINE__, "%s == %s failed: 0x%016" PRIx64 " != 0x%016" PRIx64, \
                         #a, #b, a_, b_);                                      \
    } while (0)

#define CHECK_STREQ(a, b)                                                      \
    do {                                                                       \
        const char *a_ = (a), *b_ = (b);                                       \
        if (a_ == NULL || b_ == NULL || strcmp(a_, b_) != 0)                   \
            ws_test_fail(__FILE__, __LINE__, "%s == %s failed: \"%s\" != \"%s\"", #a, #b, \
                         a_ ? a_ : "(null)", b_ ? b_ : "(null)");              \
    } while (0)

/* Checks that a walship call returned 0; prints the wserr message if not. */
#define CHECK_OK(expr, errp)                                                   \
    do {                                                                       \
        int rc_ = (expr);                                                      \
        const wserr *e_ = (errp);                                              \
        if (rc_ != 0)                                                          \
            ws_test_fail(__FILE__, __LINE__, "%s returned %d (%s): %s", #expr, rc_, \
                         walship_strerror(rc_), e_ ? e_->msg : "");            \
    } while (0)

/* Checks that a walship call failed with the given code. */
#define CHECK_RC(expr, code, errp)                                             \
    do {                                                                       \
        int rc_ = (expr);                                                      \
        const wserr *e_ = (errp);                                              \
        if (rc_ != (code))                                                     \
            ws_test_fail(__FILE__, __LINE__, "%s returned %d (%s), expected %d (%s): %s", \
                         #expr, rc_, walship_strerror(rc_), (int)(code),       \
                         walship_strerror(code), e_ ? e_->msg : "");           \
    } while (0)

/* Checks that haystack contains needle (for error messages). */
#define CHECK_CONTAINS(haystack, needle)                                       \
    do {                                                                       \
        const char *h_ = (haystack), *n_ = (needle);                           \
        if (h_ == NULL || strstr(h_, n_) == NULL)                              \
            ws_test_fail(__FILE__, __LINE__, "\"%s\" does not contain \"%s\"", \
                         h_ ? h_ : "(null)", n_);                              \
    } while (0)

/* Runs one named subtest function, printing its name; with
** WALSHIP_TEST_CASE=NAME set, only the subtests whose name contains NAME
** (to repeat one case of a test in a loop). */
#define RUN(fn)                                                                \
    do {                                                                       \
        if (ws_test_case_wanted(#fn)) {                                        \
            fprintf(stderr, "-- %s\n", #fn);                                   \
            fn();                                                              \
        }                                                                      \
    } while (0)
int ws_test_case_wanted(const char *name);

/* A fresh directory, removed at exit if the test passes. Owned by the harness. */
const char *ws_test_tmpdir(void);

/* A unique "s3://bucket/prefix?..." URL for this test run (see above). */
const char *ws_test_s3_url(const char *name);
/* 1 if WALSHIP_TEST_REQUIRE_S3=1. */
int ws_test_s3_required(void);
/* 1 if WALSHIP_TEST_S3_URL is set; 0 if not (then the S3 part of a test may
** be left out), and a failed test if it is not set but required. */
int ws_test_s3_configured(void);
/* Skips because the S3 part cannot run (why); fails instead when
** WALSHIP_TEST_REQUIRE_S3=1: a required server that is unusable is an
** error, never a skip. */
void ws_test_skip_s3(const char *why) __attribute__((noreturn));

/* Deterministic pseudo-random numbers (xorshift64*); seed from
** WALSHIP_TEST_SEED or the given default, printed once and again by a
** failing check (the seed, never the current state), so failures replay. */
void ws_test_seed(uint64_t dflt);
uint64_t ws_test_rand(void);
/* Uniform in [0, n). */
uint64_t ws_test_rand_below(uint64_t n);
void ws_test_rand_bytes(void *p, size_t n);

/* Runs a shell command; returns its exit status (or -1). */
int ws_test_system(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Path of a built artefact from the environment ctest sets (WALSHIP_BIN,
** WALSHIP_EXT); fails the test when missing. */
const char *ws_test_env(const char *name);

#endif
