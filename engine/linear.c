#include "linear.h"

#include <math.h>
#include <oneapi/dnnl/dnnl.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

const double ft_lin_grid[FT_LIN_NGRID] = {1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6};

#define LBFGS_M 10

/* Scratch of one objective evaluation: logits / probabilities [n, k]. */
typedef struct lin_ws {
    float *p;
} lin_ws;

/* Objective and gradient at theta = [W (k x f) | b (k)]; g may be NULL. NAN on a oneDNN
 * failure. */
static double objective(const ft_lin_data *d, double l2, const float *th, float *g, lin_ws *ws)
{
    const int64_t n = d->n, f = d->f, k = d->k;
    const float *w = th, *b = th + k * f;
    if (dnnl_sgemm('N', 'T', n, k, f, 1.0f, d->x, f, w, f, 0.0f, ws->p, k) != dnnl_success) return NAN;
    double loss = 0;
#pragma omp parallel for reduction(+ : loss)
    for (int64_t i = 0; i < n; i++) {
        float *z = ws->p + i * k, mx = -INFINITY;
        for (int c = 0; c < k; c++) z[c] += b[c], mx = z[c] > mx ? z[c] : mx;
        double s = 0;
        for (int c = 0; c < k; c++) s += exp((double)(z[c] - mx));
        loss += mx + log(s) - z[d->y[i]];
        for (int c = 0; c < k; c++) z[c] = (float)((exp((double)(z[c] - mx)) / s - (c == d->y[i])) / n);
    }
    double reg = 0;
    for (int64_t j = 0; j < k * f; j++) reg += (double)w[j] * w[j];
    if (g) {
        if (dnnl_sgemm('T', 'N', k, f, n, 1.0f, ws->p, k, d->x, f, 0.0f, g, f) != dnnl_success) return NAN;
        for (int64_t j = 0; j < k * f; j++) g[j] += (float)(l2 * w[j]);
        for (int c = 0; c < k; c++) {
            double s = 0;
            for (int64_t i = 0; i < n; i++) s += ws->p[i * k + c];
            g[k * f + c] = (float)s;
        }
    }
    return loss / n + 0.5 * l2 * reg;
}

static double dot(const float *a, const float *b, int64_t n)
{
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

/* d = -H g by the two-loop recursion over the stored pairs (oldest first from head). */
static void direction(const float *g, float *d, float *const *s, float *const *y, const double *rho,
                      int m, int head, int64_t n, double *alpha)
{
    for (int64_t i = 0; i < n; i++) d[i] = -g[i];
    for (int j = m - 1; j >= 0; j--) {
        int q = (head + j) % LBFGS_M;
        alpha[q] = rho[q] * dot(s[q], d, n);
        for (int64_t i = 0; i < n; i++) d[i] -= (float)(alpha[q] * y[q][i]);
    }
    if (m) {
        int q = (head + m - 1) % LBFGS_M;
        double gamma = dot(s[q], y[q], n) / dot(y[q], y[q], n);
        for (int64_t i = 0; i < n; i++) d[i] *= (float)gamma;
    }
    for (int j = 0; j < m; j++) {
        int q = (head + j) % LBFGS_M;
        double beta = rho[q] * dot(y[q], d, n);
        for (int64_t i = 0; i < n; i++) d[i] += (float)((alpha[q] - beta) * s[q][i]);
    }
}

int ft_lin_fit(const ft_lin_data *dt, double l2, int iters, float *w, float *b, double *loss)
{
    const int64_t n = (int64_t)dt->k * dt->f + dt->k;
    float *buf = eng_alloc(sizeof(float) * (size_t)n * (5 + 2 * LBFGS_M)); /* x g xn gn d, s y pairs */
    lin_ws ws = {eng_alloc(sizeof(float) * (size_t)dt->n * dt->k)};
    int rc = 0;
    if (!buf || !ws.p) {
        rc = ENG_ENOMEM;
        goto fail;
    }
    float *x = buf, *g = x + n, *xn = g + n, *gn = xn + n, *d = gn + n, *s[LBFGS_M], *y[LBFGS_M];
    double rho[LBFGS_M], alpha[LBFGS_M];
    for (int j = 0; j < LBFGS_M; j++) s[j] = d + n * (1 + 2 * j), y[j] = s[j] + n;
    memcpy(x, w, sizeof(float) * (size_t)dt->k * dt->f);
    memcpy(x + (int64_t)dt->k * dt->f, b, sizeof(float) * (size_t)dt->k);
    double fx = objective(dt, l2, x, g, &ws);
    int m = 0, head = 0;
    for (int it = 0; it < iters && isfinite(fx); it++) {
        direction(g, d, s, y, rho, m, head, n, alpha);
        double gd = dot(g, d, n), t = 1;
        if (gd >= 0) { /* not a descent direction: restart from the gradient */
            m = head = 0;
            for (int64_t i = 0; i < n; i++) d[i] = -g[i];
            gd = dot(g, d, n);
        }
        if (m == 0) t = 1 / sqrt(dot(g, g, n) + 1e-30);
        double fn = NAN;
        for (int ls = 0; ls < 40; ls++, t *= 0.5) {
            for (int64_t i = 0; i < n; i++) xn[i] = x[i] + (float)(t * d[i]);
            fn = objective(dt, l2, xn, gn, &ws);
            if (fn <= fx + 1e-4 * t * gd) break;
        }
        if (!(fn <= fx)) break; /* no progress possible at float precision */
        int q = (head + m) % LBFGS_M;
        if (m == LBFGS_M) head = (head + 1) % LBFGS_M;
        else m++;
        for (int64_t i = 0; i < n; i++) s[q][i] = xn[i] - x[i], y[q][i] = gn[i] - g[i];
        double sy = dot(s[q], y[q], n);
        if (sy > 1e-12) rho[q] = 1 / sy;
        else m--, head = m == 0 ? 0 : head; /* a useless pair: drop it */
        double rel = (fx - fn) / (fabs(fx) + 1e-12);
        memcpy(x, xn, sizeof(float) * (size_t)n), memcpy(g, gn, sizeof(float) * (size_t)n);
        fx = fn;
        if (rel < 1e-10) break;
    }
    if (!isfinite(fx)) rc = ENG_EDNNL;
    memcpy(w, x, sizeof(float) * (size_t)dt->k * dt->f);
    memcpy(b, x + (int64_t)dt->k * dt->f, sizeof(float) * (size_t)dt->k);
    if (loss) *loss = fx;
fail:
    eng_free(buf);
    eng_free(ws.p);
    return rc;
}

double ft_lin_accuracy(const ft_lin_data *d, const float *w, const float *b)
{
    int64_t hit = 0;
#pragma omp parallel for reduction(+ : hit)
    for (int64_t i = 0; i < d->n; i++) {
        const float *xi = d->x + i * d->f;
        int best = 0;
        double bz = -INFINITY;
        for (int c = 0; c < d->k; c++) {
            double z = b[c] + dot(w + (int64_t)c * d->f, xi, d->f);
            if (z > bz) bz = z, best = c;
        }
        hit += best == d->y[i];
    }
    return d->n ? (double)hit / (double)d->n : 0;
}

int ft_lin_select(const ft_lin_data *train, const ft_lin_data *val, float *w, float *b,
                  double *l2, double *val_top1, void (*progress)(void *ud, int i), void *ud)
{
    size_t nw = (size_t)train->k * train->f;
    float *cw = eng_calloc(sizeof(float) * nw), *cb = eng_calloc(sizeof(float) * (size_t)train->k);
    int rc = cw && cb ? 0 : ENG_ENOMEM;
    *val_top1 = -1;
    for (int i = 0; i < FT_LIN_NGRID && !rc; i++) {
        rc = ft_lin_fit(train, ft_lin_grid[i], i ? FT_LIN_PATH_ITERS : FT_LIN_FIRST_ITERS, cw, cb, NULL);
        double acc = rc ? 0 : ft_lin_accuracy(val->n ? val : train, cw, cb);
        if (!rc && acc > *val_top1) { /* strictly better: ties keep the stronger L2 */
            *val_top1 = acc, *l2 = ft_lin_grid[i];
            memcpy(w, cw, sizeof(float) * nw);
            memcpy(b, cb, sizeof(float) * (size_t)train->k);
        }
        if (progress) progress(ud, i);
    }
    eng_free(cw);
    eng_free(cb);
    return rc;
}

double ft_linear_head_seconds(int64_t n, int features, int classes)
{
    /* iterations (with ~1.5 objective evaluations each) times two matrix products of
     * 2 n f k flops, at a conservative 50 GFLOP/s for oneDNN's sgemm on a few cores */
    double iters = FT_LIN_FIRST_ITERS + (FT_LIN_NGRID - 1) * FT_LIN_PATH_ITERS;
    return iters * 1.5 * 4.0 * (double)n * features * classes / 50e9 + 1.0;
}
