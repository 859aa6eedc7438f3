#include "wstd.h"

#include <math.h>
#include <omp.h>
#include <string.h>

#include "arch.h"

size_t eng_wstd_part_bytes(int cols, int threads)
{
    return sizeof(double) * 2 * (size_t)cols * (size_t)(threads > 0 ? threads : 1);
}

/* The calling thread's budget, capped at what part holds. */
static int team(const eng_wstd *s)
{
    int nt = omp_get_max_threads();
    return nt < s->threads ? nt : s->threads;
}

/* What one thread does with its rows r0..r0+n-1 and its cleared column sums a, b. */
typedef struct share_job {
    eng_wstd *s;
    eng_mat dws;          /* the gradient wrt w_hat (grad_means, step) */
    float *g;             /* the raw kernel's gradient out (step without momentum) */
    const float *ga, *gb; /* the gradient's column means (step) */
    float mom, wd, lr;
    void (*fn)(const struct share_job *j, int64_t r0, int64_t n, double *a, double *b);
} share_job;

/* Runs j->fn on every thread's share of the rows; returns the team size (threads without rows
 * leave zero sums). */
static int each_share(const share_job *j)
{
    const eng_wstd *s = j->s;
    int team_size = 1;
    #pragma omp parallel num_threads(team(s))
    {
        int nt = omp_get_num_threads(), t = omp_get_thread_num();
        int64_t per = (s->rows + nt - 1) / nt, r0 = per * t < s->rows ? per * t : s->rows;
        int64_t n = r0 + per < s->rows ? per : s->rows - r0;
        double *a = s->part + 2 * (size_t)s->cols * t, *b = a + s->cols;
        memset(a, 0, sizeof(double) * 2 * (size_t)s->cols);
        if (n > 0) j->fn(j, r0, n, a, b);
        #pragma omp single
        team_size = nt;
    }
    return team_size;
}

/* Column totals of every thread's sums. */
static void total(const eng_wstd *s, int nt, int o, double *a, double *b)
{
    *a = *b = 0;
    for (int t = 0; t < nt; t++) {
        *a += s->part[2 * (size_t)s->cols * t + o];
        *b += s->part[2 * (size_t)s->cols * t + s->cols + o];
    }
}

/* mean, inv from column sums of w and w^2 (double: the kernel's mean is small against its
 * spread, so E[w^2] - E[w]^2 loses nothing that matters). */
static void stats_from(eng_wstd *s, int nt)
{
    for (int o = 0; o < s->cols; o++) {
        double a, b;
        total(s, nt, o, &a, &b);
        double m = a / (double)s->rows, var = b / (double)s->rows - m * m;
        s->mean[o] = (float)m;
        s->inv[o] = (float)(1.0 / sqrt((var > 0 ? var : 0) + ENG_WS_EPS));
    }
}

static void w_sums(const share_job *j, int64_t r0, int64_t n, double *a, double *b)
{
    const eng_wstd *s = j->s;
    eng_simd_get()->colsums((eng_mat){s->w + r0 * s->cols, NULL, 0}, NULL, n, s->cols, a, b);
}

static void dws_sums(const share_job *j, int64_t r0, int64_t n, double *a, double *b)
{
    const eng_wstd *s = j->s;
    eng_simd_get()->colsums(eng_mat_from(j->dws, r0, s->cols), s->w + r0 * s->cols, n, s->cols, a, b);
}

static void step(const share_job *j, int64_t r0, int64_t n, double *a, double *b)
{
    const eng_wstd *s = j->s;
    int64_t e = r0 * s->cols;
    eng_simd_get()->ws_update(eng_mat_from(j->dws, r0, s->cols), s->w + e, j->g ? NULL : s->m + e,
                              j->g ? j->g + e : NULL, n, s->cols, s->mean, s->inv, j->ga, j->gb,
                              j->mom, j->wd, j->lr, a, b);
}

static void apply(const share_job *j, int64_t r0, int64_t n, double *a, double *b)
{
    const eng_wstd *s = j->s;
    (void)a, (void)b;
    size_t es = s->ot == ENG_ACT_BF16 ? 2 : 4;
    eng_simd_get()->standardise(s->w + r0 * s->cols, (char *)s->out + (size_t)(r0 * s->cols) * es,
                                s->ot, n, s->cols, s->mean, s->inv);
}

void eng_wstd_forward(eng_wstd *s, eng_prof *prof)
{
    double t0 = eng_prof_start(prof);
    stats_from(s, each_share(&(share_job){.s = s, .fn = w_sums}));
    each_share(&(share_job){.s = s, .fn = apply});
    eng_prof_stop(prof, ENG_OP_WS, t0);
}

/* Per column: ga = mean(dws), gb = mean(dws * w_hat) = inv * (mean(dws * w) - mean * mean(dws)). */
static void grad_means(eng_wstd *s, eng_mat dws, float *ga, float *gb)
{
    int nt = each_share(&(share_job){.s = s, .dws = dws, .fn = dws_sums});
    for (int o = 0; o < s->cols; o++) {
        double a, b, rows = (double)s->rows;
        total(s, nt, o, &a, &b);
        ga[o] = (float)(a / rows);
        gb[o] = (float)(s->inv[o] * (b / rows - s->mean[o] * (a / rows)));
    }
}

void eng_wstd_grad(eng_wstd *s, eng_mat dws, float *g)
{
    float ga[s->cols], gb[s->cols];
    grad_means(s, dws, ga, gb);
    each_share(&(share_job){.s = s, .dws = dws, .g = g, .ga = ga, .gb = gb, .fn = step});
}

void eng_wstd_update(eng_wstd *s, eng_mat dws, float mom, float wd, float lr, eng_prof *prof)
{
    double t0 = eng_prof_start(prof);
    float ga[s->cols], gb[s->cols];
    grad_means(s, dws, ga, gb);
    eng_prof_stop(prof, ENG_OP_WS, t0);
    t0 = eng_prof_start(prof);
    stats_from(s, each_share(&(share_job){.s = s, .dws = dws, .ga = ga, .gb = gb, .mom = mom,
                                          .wd = wd, .lr = lr, .fn = step}));
    eng_prof_stop(prof, ENG_OP_SGD, t0);
    t0 = eng_prof_start(prof);
    each_share(&(share_job){.s = s, .fn = apply});
    eng_prof_stop(prof, ENG_OP_WS, t0);
}
