/* The test harness: a program runs cases with T_RUN and ends with t_done(), whose last line
 * "tally: P passed, F failed" .ci/run adds up. A case passes when none of its checks fail. */
#ifndef BIT_T_H
#define BIT_T_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int t_passed, t_failed, t_case_bad;

#define T_CHECK(cond)                                                                  \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            fprintf(stderr, "  %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            t_case_bad = 1;                                                            \
        }                                                                              \
    } while (0)

#define T_CHECKF(cond, ...)                                                            \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            fprintf(stderr, "  %s:%d: check failed: %s: ", __FILE__, __LINE__, #cond);  \
            fprintf(stderr, __VA_ARGS__);                                              \
            fputc('\n', stderr);                                                       \
            t_case_bad = 1;                                                            \
        }                                                                              \
    } while (0)

/* Stops the current case (a later check would only crash on what failed). */
#define T_REQUIRE(cond)                                                                \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            fprintf(stderr, "  %s:%d: required: %s\n", __FILE__, __LINE__, #cond);     \
            t_case_bad = 1;                                                            \
            return;                                                                    \
        }                                                                              \
    } while (0)

#define T_RUN(fn)                                                                      \
    do {                                                                               \
        t_case_bad = 0;                                                                \
        fn();                                                                          \
        if (t_case_bad) { t_failed++; printf("FAIL %s\n", #fn); }                      \
        else { t_passed++; printf("ok   %s\n", #fn); }                                 \
        fflush(stdout);                                                                \
    } while (0)

static inline int t_done(void)
{
    printf("tally: %d passed, %d failed\n", t_passed, t_failed);
    return t_failed ? 1 : 0;
}

/* Path of a file in ../shared/fixtures/bit-tiny (BIT_FIXTURES, set by make check). The
 * result lives until eight more calls, so several may appear in one expression. */
static inline const char *t_fixture(const char *name)
{
    static char buf[8][4096];
    static int next;
    char *b = buf[next++ % 8];
    const char *dir = getenv("BIT_FIXTURES");
    snprintf(b, sizeof buf[0], "%s/%s", dir ? dir : "../shared/fixtures/bit-tiny", name);
    return b;
}

/* A fresh scratch directory under $TMPDIR for this program. */
static inline const char *t_tmpdir(void)
{
    static char buf[512];
    if (!buf[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(buf, sizeof buf, "%s/bit-test-XXXXXX", base ? base : "/tmp");
        if (!mkdtemp(buf)) { perror("mkdtemp"); exit(2); }
    }
    return buf;
}

#endif
