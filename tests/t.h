/* The test harness: a program runs cases with T_RUN and ends with t_done(), whose last line
 * "tally: P passed, F failed" .ci/run adds up. A case passes when none of its checks fail. */
#ifndef BIT_T_H
#define BIT_T_H

#include <math.h>
#include <stdint.h>
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

/* Comparisons that print both sides on failure, as libuv's ASSERT_EQ: integers (any integer
 * type, compared as intmax_t), strings (NULL-safe) and floating-point values within tol. */
/* Integers only: a floating-point operand selects a struct, which cannot be cast to intmax_t
 * (a compile error, not a silently truncated comparison). */
struct t_not_an_integer_ { int x; };
static const struct t_not_an_integer_ t_nai_;
#define T_INT_(x) _Generic((x), float: t_nai_, double: t_nai_, long double: t_nai_, default: (x))
#define T_CMP_(a, op, b, stop)                                                         \
    do {                                                                               \
        intmax_t t_a_ = (intmax_t)T_INT_(a), t_b_ = (intmax_t)T_INT_(b);              \
        if (!(t_a_ op t_b_)) {                                                         \
            fprintf(stderr, "  %s:%d: check failed: %s %s %s (%jd vs %jd)\n", __FILE__, \
                    __LINE__, #a, #op, #b, t_a_, t_b_);                                \
            t_case_bad = 1;                                                            \
            if (stop) return;                                                          \
        }                                                                              \
    } while (0)
#define T_EQ(a, b) T_CMP_(a, ==, b, 0)
#define T_NE(a, b) T_CMP_(a, !=, b, 0)
#define T_LT(a, b) T_CMP_(a, <, b, 0)
#define T_LE(a, b) T_CMP_(a, <=, b, 0)
#define T_GT(a, b) T_CMP_(a, >, b, 0)
#define T_GE(a, b) T_CMP_(a, >=, b, 0)
#define T_REQ_EQ(a, b) T_CMP_(a, ==, b, 1) /* stops the case, as T_REQUIRE */

#define T_STREQ(a, b)                                                                  \
    do {                                                                               \
        const char *t_a_ = (a), *t_b_ = (b);                                           \
        if (!t_a_ || !t_b_ || strcmp(t_a_, t_b_)) {                                    \
            fprintf(stderr, "  %s:%d: check failed: %s == %s (\"%s\" vs \"%s\")\n",       \
                    __FILE__, __LINE__, #a, #b, t_a_ ? t_a_ : "(null)",                 \
                    t_b_ ? t_b_ : "(null)");                                           \
            t_case_bad = 1;                                                            \
        }                                                                              \
    } while (0)

#define T_NEAR(a, b, tol)                                                              \
    do {                                                                               \
        double t_a_ = (double)(a), t_b_ = (double)(b), t_t_ = (double)(tol);           \
        if (!(fabs(t_a_ - t_b_) <= t_t_)) {                                            \
            fprintf(stderr, "  %s:%d: check failed: %s ~ %s (%.9g vs %.9g, tolerance %g)\n", \
                    __FILE__, __LINE__, #a, #b, t_a_, t_b_, t_t_);                     \
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
