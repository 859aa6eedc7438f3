#include "gn.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "arch.h"

/* Per-channel sums and sums of squares of one example, in double so that E[x^2] - E[x]^2
 * keeps its digits (the fixtures check tiny activations where eps dominates). */
static void channel_sums(const eng_layout *l, const float *src, int n, double *s1, double *s2)
{
    int64_t hw = (int64_t)l->h * l->w;
    int nb = l->c / l->cblk, b = l->cblk;
    #pragma omp parallel for schedule(static)
    for (int cb = 0; cb < nb; cb++) {
        const float *p = src + ((int64_t)n * nb + cb) * hw * b;
        double a1[64] = {0}, a2[64] = {0};
        if (b <= 64) {
            for (int64_t i = 0; i < hw; i++, p += b)
                for (int k = 0; k < b; k++) {
                    double v = p[k];
                    a1[k] += v;
                    a2[k] += v * v;
                }
            for (int k = 0; k < b; k++) s1[cb * b + k] = a1[k], s2[cb * b + k] = a2[k];
        } else { /* NHWC with many channels: accumulate straight into the output */
            for (int k = 0; k < b; k++) s1[k] = s2[k] = 0;
            for (int64_t i = 0; i < hw; i++, p += b)
                for (int k = 0; k < b; k++) {
                    double v = p[k];
                    s1[k] += v;
                    s2[k] += v * v;
                }
        }
    }
}

void eng_pool_root(const eng_layout *in, const float *src, const eng_layout *out, float *dst)
{
    int nb = out->c / out->cblk, b = out->cblk;
    int64_t ihw = (int64_t)in->h * in->w, ohw = (int64_t)out->h * out->w;
    #pragma omp parallel for collapse(3) schedule(static)
    for (int n = 0; n < out->n; n++)
        for (int cb = 0; cb < nb; cb++)
            for (int oy = 0; oy < out->h; oy++) {
                const float *ip = src + ((int64_t)n * nb + cb) * ihw * b;
                float *op = dst + (((int64_t)n * nb + cb) * ohw + (int64_t)oy * out->w) * b;
                for (int ox = 0; ox < out->w; ox++, op += b) {
                    int y0 = oy * 2 - 1, x0 = ox * 2 - 1;
                    /* A window that reaches into the padding sees its zeros: BiT pads with
                     * the value 0, not -inf, so the max is at least 0 there. */
                    int border = y0 < 0 || x0 < 0 || y0 + 2 >= in->h || x0 + 2 >= in->w;
                    for (int k = 0; k < b; k++) op[k] = border ? 0.0f : -INFINITY;
                    for (int y = y0 < 0 ? 0 : y0; y <= y0 + 2 && y < in->h; y++)
                        for (int x = x0 < 0 ? 0 : x0; x <= x0 + 2 && x < in->w; x++) {
                            const float *p = ip + ((int64_t)y * in->w + x) * b;
                            #pragma omp simd
                            for (int k = 0; k < b; k++) op[k] = p[k] > op[k] ? p[k] : op[k];
                        }
                }
            }
}

void eng_layout_to_nchw(const eng_layout *l, const float *src, float *dst)
{
    eng_layout plain = *l;
    plain.cblk = 1;
    for (int n = 0; n < l->n; n++)
        for (int ch = 0; ch < l->c; ch++)
            for (int y = 0; y < l->h; y++)
                for (int x = 0; x < l->w; x++)
                    dst[eng_layout_off(&plain, n, ch, y, x)] = src[eng_layout_off(l, n, ch, y, x)];
}

/* ---------------------------------------------------------------- training */

int eng_gn_stats(const eng_layout *l, const float *src, float *mean, float *rstd)
{
    int c = l->c, cpg = c / ENG_GN_GROUPS;
    double *s1 = malloc(sizeof(double) * 2 * (size_t)c), *s2 = s1 ? s1 + c : NULL;
    if (!s1) return ENG_ENOMEM;
    double cnt = (double)cpg * l->h * l->w;
    for (int n = 0; n < l->n; n++) {
        channel_sums(l, src, n, s1, s2);
        for (int g = 0; g < ENG_GN_GROUPS; g++) {
            double m = 0, q = 0;
            for (int k = g * cpg; k < (g + 1) * cpg; k++) m += s1[k], q += s2[k];
            m /= cnt;
            double var = q / cnt - m * m;
            mean[n * ENG_GN_GROUPS + g] = (float)m;
            rstd[n * ENG_GN_GROUPS + g] = (float)(1.0 / sqrt((var > 0 ? var : 0) + ENG_GN_EPS));
        }
    }
    free(s1);
    return 0;
}

/* Per-channel scale and shift of example n from stored statistics. */
static void affine_from_stats(int c, const float *gamma, const float *beta, const float *mean,
                              const float *rstd, int n, float *scale, float *shift)
{
    int cpg = c / ENG_GN_GROUPS;
    for (int k = 0; k < c; k++) {
        double r = rstd[n * ENG_GN_GROUPS + k / cpg], m = mean[n * ENG_GN_GROUPS + k / cpg];
        scale[k] = (float)(gamma[k] * r);
        shift[k] = (float)(beta[k] - gamma[k] * r * m);
    }
}

int eng_gn_relu_apply(const eng_layout *l, const float *src, float *dst, const float *gamma,
                      const float *beta, const float *mean, const float *rstd)
{
    int c = l->c, nb = c / l->cblk, b = l->cblk;
    int64_t hw = (int64_t)l->h * l->w;
    float *scale = malloc(sizeof(float) * 2 * (size_t)c * l->n);
    if (!scale) return ENG_ENOMEM;
    for (int n = 0; n < l->n; n++)
        affine_from_stats(c, gamma, beta, mean, rstd, n, scale + 2 * (size_t)c * n,
                          scale + 2 * (size_t)c * n + c);
    #pragma omp parallel for collapse(2) schedule(static)
    for (int n = 0; n < l->n; n++)
        for (int cb = 0; cb < nb; cb++) {
            int64_t base = ((int64_t)n * nb + cb) * hw * b;
            const float *sc = scale + 2 * (size_t)c * n + cb * b, *sh = sc + c;
            const float *p = src + base;
            float *q = dst + base;
            for (int64_t i = 0; i < hw; i++, p += b, q += b)
                #pragma omp simd
                for (int k = 0; k < b; k++) {
                    float v = p[k] * sc[k] + sh[k];
                    q[k] = v > 0 ? v : 0;
                }
        }
    free(scale);
    return 0;
}

int eng_gn_relu(const eng_layout *l, const float *src, float *dst, const float *gamma,
                const float *beta, float *mean, float *rstd)
{
    float *own = mean ? NULL : malloc(sizeof(float) * 2 * ENG_GN_GROUPS * (size_t)l->n);
    if (!mean && !own) return ENG_ENOMEM;
    float *m = mean ? mean : own, *r = mean ? rstd : own + ENG_GN_GROUPS * l->n;
    int rc = eng_gn_stats(l, src, m, r);
    if (!rc) rc = eng_gn_relu_apply(l, src, dst, gamma, beta, m, r);
    free(own);
    return rc;
}

int eng_gn_relu_pool(const eng_layout *l, const float *src, float *feat, const float *gamma,
                     const float *beta)
{
    int c = l->c, nb = c / l->cblk, b = l->cblk;
    int64_t hw = (int64_t)l->h * l->w;
    float *st = malloc(sizeof(float) * 2 * ENG_GN_GROUPS * (size_t)l->n);
    float *aff = malloc(sizeof(float) * 2 * (size_t)c * l->n);
    int rc = st && aff ? eng_gn_stats(l, src, st, st + ENG_GN_GROUPS * l->n) : ENG_ENOMEM;
    for (int n = 0; !rc && n < l->n; n++)
        affine_from_stats(c, gamma, beta, st, st + ENG_GN_GROUPS * l->n, n, aff + 2 * (size_t)c * n,
                          aff + 2 * (size_t)c * n + c);
    if (!rc) {
        #pragma omp parallel for collapse(2) schedule(static)
        for (int n = 0; n < l->n; n++)
            for (int ch = 0; ch < c; ch++) {
                const float *p = src + ((int64_t)n * nb + ch / b) * hw * b + ch % b;
                float sc = aff[2 * (size_t)c * n + ch], sh = aff[2 * (size_t)c * n + c + ch];
                double acc = 0;
                for (int64_t i = 0; i < hw; i++) {
                    float v = p[i * b] * sc + sh;
                    acc += v > 0 ? v : 0;
                }
                feat[(int64_t)n * c + ch] = (float)(acc / (double)hw);
            }
    }
    free(st);
    free(aff);
    return rc;
}

/* Per example and channel block: sums over (h, w) of the ReLU-masked output gradient and of
 * it times x-hat, lane by lane (contiguous, so the compiler vectorises). dy NULL: the gradient
 * is dfeat spread evenly over (h, w) by the head's average pool. */
static void bwd_sums(const eng_layout *l, const float *x, const float *mean, const float *rstd,
                     const float *gamma, const float *beta, const float *dy, const float *dfeat,
                     int n, int cb, double *s1, double *s2)
{
    int c = l->c, nb = c / l->cblk, b = l->cblk, cpg = c / ENG_GN_GROUPS;
    int64_t hw = (int64_t)l->h * l->w, base = ((int64_t)n * nb + cb) * hw * b;
    float sc[b], sh[b], xm[b], xr[b], df[b];
    for (int k = 0; k < b; k++) {
        int ch = cb * b + k, g = n * ENG_GN_GROUPS + ch / cpg;
        double r = rstd[g], m = mean[g];
        sc[k] = (float)(gamma[ch] * r), sh[k] = (float)(beta[ch] - gamma[ch] * r * m);
        xm[k] = (float)m, xr[k] = (float)r;
        df[k] = dy ? 0 : dfeat[(int64_t)n * c + ch] / (float)hw;
        s1[k] = s2[k] = 0;
    }
    for (int64_t i = 0; i < hw; i++) {
        const float *xp = x + base + i * b, *dp = dy ? dy + base + i * b : df;
        #pragma omp simd
        for (int k = 0; k < b; k++) {
            float d = xp[k] * sc[k] + sh[k] > 0 ? dp[k] : 0.0f;
            s1[k] += d;
            s2[k] += (double)d * ((xp[k] - xm[k]) * xr[k]);
        }
    }
}

int eng_gn_relu_backward(const eng_layout *l, const float *x, const float *mean,
                         const float *rstd, const float *gamma, const float *beta,
                         const float *dy, const float *dfeat, const float *res, float *dx,
                         float *dgamma, float *dbeta)
{
    int c = l->c, nb = c / l->cblk, b = l->cblk, cpg = c / ENG_GN_GROUPS;
    int64_t hw = (int64_t)l->h * l->w;
    if (b > 256) return ENG_EUNSUPPORTED; /* lane arrays live on the stack */
    double *s = malloc(sizeof(double) * 2 * (size_t)c * l->n);
    if (!s) return ENG_ENOMEM;
    #pragma omp parallel for collapse(2) schedule(static)
    for (int n = 0; n < l->n; n++)
        for (int cb = 0; cb < nb; cb++) {
            double *s1 = s + 2 * (size_t)c * n + cb * b;
            bwd_sums(l, x, mean, rstd, gamma, beta, dy, dfeat, n, cb, s1, s1 + c);
        }
    for (int n = 0; n < l->n; n++)
        for (int ch = 0; ch < c; ch++) {
            dbeta[ch] += (float)s[2 * (size_t)c * n + ch];
            dgamma[ch] += (float)s[2 * (size_t)c * n + c + ch];
        }
    /* dx = r * (gamma * dy_masked - mean_g(gamma * dy) - xhat * mean_g(gamma * dy * xhat)) */
    #pragma omp parallel for collapse(2) schedule(static)
    for (int n = 0; n < l->n; n++)
        for (int cb = 0; cb < nb; cb++) {
            const double *s1 = s + 2 * (size_t)c * n, *s2 = s1 + c;
            int64_t base = ((int64_t)n * nb + cb) * hw * b;
            float sc[b], sh[b], xm[b], xr[b], ga[b], gb[b], gr[b], df[b];
            for (int k = 0; k < b; k++) {
                int ch = cb * b + k, g = ch / cpg;
                double r = rstd[n * ENG_GN_GROUPS + g], m = mean[n * ENG_GN_GROUPS + g];
                double a1 = 0, a2 = 0, cnt = (double)cpg * hw;
                for (int q = g * cpg; q < (g + 1) * cpg; q++)
                    a1 += gamma[q] * s1[q], a2 += gamma[q] * s2[q];
                sc[k] = (float)(gamma[ch] * r), sh[k] = (float)(beta[ch] - gamma[ch] * r * m);
                xm[k] = (float)m, xr[k] = (float)r;
                ga[k] = (float)(r * a1 / cnt), gb[k] = (float)(r * a2 / cnt);
                gr[k] = (float)(gamma[ch] * r);
                df[k] = dy ? 0 : dfeat[(int64_t)n * c + ch] / (float)hw;
            }
            for (int64_t i = 0; i < hw; i++) {
                int64_t o = base + i * b;
                const float *xp = x + o, *dp = dy ? dy + o : df;
                float *op = dx + o;
                const float *rp = res ? res + o : NULL;
                #pragma omp simd
                for (int k = 0; k < b; k++) {
                    float d = xp[k] * sc[k] + sh[k] > 0 ? dp[k] : 0.0f;
                    float v = gr[k] * d - ga[k] - (xp[k] - xm[k]) * xr[k] * gb[k];
                    op[k] = rp ? v + rp[k] : v;
                }
            }
        }
    free(s);
    return 0;
}

void eng_pool_root_backward(const eng_layout *in, const float *src, const eng_layout *out,
                            const float *dout, float *dsrc)
{
    #pragma omp parallel for collapse(2) schedule(static)
    for (int n = 0; n < in->n; n++)
        for (int ch = 0; ch < in->c; ch++) {
            for (int y = 0; y < in->h; y++)
                for (int x = 0; x < in->w; x++) dsrc[eng_layout_off(in, n, ch, y, x)] = 0;
            for (int oy = 0; oy < out->h; oy++)
                for (int ox = 0; ox < out->w; ox++) {
                    /* First maximum in row-major window order, the zero padding included:
                     * when a pad cell wins, the gradient goes nowhere. */
                    float m = -INFINITY;
                    int64_t at = -1;
                    for (int ky = 0; ky < 3; ky++)
                        for (int kx = 0; kx < 3; kx++) {
                            int y = oy * 2 + ky - 1, x = ox * 2 + kx - 1;
                            int pad = y < 0 || x < 0 || y >= in->h || x >= in->w;
                            int64_t o = pad ? -1 : eng_layout_off(in, n, ch, y, x);
                            float v = pad ? 0.0f : src[o];
                            if (v > m) m = v, at = o;
                        }
                    if (at >= 0) dsrc[at] += dout[eng_layout_off(out, n, ch, oy, ox)];
                }
        }
}
