#include "gn.h"

#include <math.h>
#include <omp.h>
#include <string.h>

#include "arch.h"

#define G ENG_GN_GROUPS

/* A pass walks "units": one slice of at most 16 consecutive channels of one channel block,
 * all (h, w) rows of it. A unit's channels are consecutive, so per-channel arrays [c] serve
 * as its per-lane coefficients without copying. */
typedef struct pass {
    const eng_layout *l;
    int nb, b, ns, units; /* blocks, block width, slices per block, units per example */
    int64_t hw;
    const eng_simd *k;    /* full 16-lane slices */
    const eng_simd *kp;   /* shorter slices */
} pass;

typedef struct unit {
    int64_t off; /* element offset of the unit's first row */
    int lanes, ch;
} unit;

static pass pass_of(const eng_layout *l)
{
    pass p = {l, l->c / l->cblk, l->cblk, (l->cblk + 15) / 16, 0, (int64_t)l->h * l->w,
              eng_simd_get(), eng_simd_portable()};
    p.units = p.nb * p.ns;
    return p;
}

/* Unit u of example n in a tensor of hw rows per block (the pass's own, or the pooled one). */
static unit unit_hw(const pass *p, int n, int u, int64_t hw)
{
    int cb = u / p->ns, s = u % p->ns;
    unit r = {((int64_t)n * p->nb + cb) * hw * p->b + s * 16, p->b - s * 16, cb * p->b + s * 16};
    if (r.lanes > 16) r.lanes = 16;
    return r;
}

static unit unit_of(const pass *p, int n, int u) { return unit_hw(p, n, u, p->hw); }

static const eng_simd *kern(const pass *p, int lanes) { return lanes == 16 ? p->k : p->kp; }

static void *at(eng_buf b, int64_t off)
{
    return (char *)b.p + off * (b.t == ENG_ACT_BF16 ? 2 : 4);
}

static eng_rows rows_of(const pass *p, const unit *u, eng_buf x)
{
    eng_rows r = {.rows = p->hw, .stride = p->b, .lanes = u->lanes, .x = at(x, u->off), .xt = x.t};
    return r;
}

/* ---------------------------------------------------------------- workspace */

/* One example's part: channel sums, group sums, group statistics, per-channel coefficients. */
typedef struct img_ws {
    double *s1, *s2, *g1, *g2;              /* [c], [c], [32], [32] */
    float *gmean, *grstd;                   /* [32] each */
    float *sc, *sh, *xm, *xr, *gr, *ga, *gb, *df; /* [c] each */
} img_ws;

static size_t img_bytes(int c)
{
    return ((size_t)16 * c + 4 * 8 * G + 2 * 4 * G + (size_t)32 * c + 63) & ~(size_t)63;
}

size_t eng_gn_ws_bytes(const eng_layout *l) { return img_bytes(l->c) * (size_t)l->n; }

static img_ws img_at(const eng_layout *l, void *ws, int n)
{
    int c = l->c;
    img_ws w;
    w.s1 = (double *)((char *)ws + img_bytes(c) * (size_t)n);
    w.s2 = w.s1 + c, w.g1 = w.s2 + c, w.g2 = w.g1 + G;
    w.gmean = (float *)(w.g2 + G), w.grstd = w.gmean + G;
    float *f = w.grstd + G;
    w.sc = f, w.sh = f + c, w.xm = f + 2 * c, w.xr = f + 3 * c;
    w.gr = f + 4 * c, w.ga = f + 5 * c, w.gb = f + 6 * c, w.df = f + 7 * c;
    return w;
}

/* ---------------------------------------------------------------- the driver */

typedef struct job {
    pass p;
    void *ws;
    eng_buf src, dst, copy;
    const float *gamma, *beta;
    float *mean, *rstd; /* statistics out (forward) or in (recompute, backward); NULL: ws */
    float *feat;
    uint16_t *featb;
    const eng_gn_grad *g;
} job;

typedef void (*unit_fn)(const job *j, int n, int u);
typedef void (*group_fn)(const job *j, int n, int g0, int g1);

/* Work items are segments: the fewest consecutive units that hold whole groups (one unit up
 * to 16 channels per group), of one example. A segment's statistics need nothing outside it,
 * so items run independently, and a segment (16 lanes of every row, 64 KB for 1024 f32 rows)
 * is read a second time from the core's cache rather than from memory. Layouts whose groups
 * do not fall on 16-lane slices make the whole example one segment. */
static void run3(const job *j, unit_fn a, group_fn b, unit_fn c)
{
    const pass *p = &j->p;
    int cpg = p->l->c / G, su = p->units;
    if (p->b % 16 == 0 && (16 % cpg == 0 || cpg % 16 == 0)) su = cpg <= 16 ? 1 : cpg / 16;
    int nseg = p->units / su, items = p->l->n * nseg;
    #pragma omp parallel for schedule(static)
    for (int it = 0; it < items; it++) {
        int n = it / nseg, u0 = it % nseg * su;
        for (int u = u0; a && u < u0 + su; u++) a(j, n, u);
        if (b) {
            int ch0 = unit_of(p, n, u0).ch, ch1 = su == p->units ? p->l->c : ch0 + 16 * su;
            b(j, n, ch0 / cpg, ch1 / cpg);
        }
        for (int u = u0; c && u < u0 + su; u++) c(j, n, u);
    }
}

/* ---------------------------------------------------------------- forward */

static void unit_sums(const job *j, int n, int u)
{
    unit un = unit_of(&j->p, n, u);
    img_ws w = img_at(j->p.l, j->ws, n);
    eng_rows r = rows_of(&j->p, &un, j->src);
    for (int k = 0; k < un.lanes; k++) w.s1[un.ch + k] = w.s2[un.ch + k] = 0;
    kern(&j->p, un.lanes)->sums(&r, w.s1 + un.ch, w.s2 + un.ch);
}

/* Mean and 1/sqrt(var + eps) of groups g0..g1-1, from the channel sums (in double so that
 * E[x^2] - E[x]^2 keeps its digits: the fixtures check tiny activations where eps dominates). */
static void group_stats(const job *j, int n, int g0, int g1)
{
    const eng_layout *l = j->p.l;
    img_ws w = img_at(l, j->ws, n);
    int cpg = l->c / G;
    double cnt = (double)cpg * j->p.hw;
    for (int g = g0; g < g1; g++) {
        double m = 0, q = 0;
        for (int k = g * cpg; k < (g + 1) * cpg; k++) m += w.s1[k], q += w.s2[k];
        m /= cnt;
        double var = q / cnt - m * m;
        w.gmean[g] = (float)m;
        w.grstd[g] = (float)(1.0 / sqrt((var > 0 ? var : 0) + ENG_GN_EPS));
        if (j->mean) j->mean[n * G + g] = w.gmean[g], j->rstd[n * G + g] = w.grstd[g];
    }
}

/* The unit's per-channel scale and shift (and mean, rstd for backward) into the workspace. */
static void unit_affine(const job *j, int n, const unit *un, img_ws *w)
{
    int cpg = j->p.l->c / G;
    const float *mean = j->mean ? j->mean + n * G : w->gmean;
    const float *rstd = j->mean ? j->rstd + n * G : w->grstd;
    for (int k = 0; k < un->lanes; k++) {
        int ch = un->ch + k;
        double r = rstd[ch / cpg], m = mean[ch / cpg];
        w->sc[ch] = (float)(j->gamma[ch] * r);
        w->sh[ch] = (float)(j->beta[ch] - j->gamma[ch] * r * m);
        w->xm[ch] = (float)m, w->xr[ch] = (float)r;
    }
}

static void unit_apply(const job *j, int n, int u)
{
    unit un = unit_of(&j->p, n, u);
    img_ws w = img_at(j->p.l, j->ws, n);
    unit_affine(j, n, &un, &w);
    eng_rows r = rows_of(&j->p, &un, j->src);
    r.y = at(j->dst, un.off), r.yt = j->dst.t;
    r.y2 = j->copy.p ? at(j->copy, un.off) : NULL;
    r.c[0] = w.sc + un.ch, r.c[1] = w.sh + un.ch;
    kern(&j->p, un.lanes)->apply(&r);
}

void eng_gn_relu(const eng_layout *l, eng_buf src, eng_buf dst, eng_buf copy, const float *gamma,
                 const float *beta, float *mean, float *rstd, void *ws)
{
    job j = {.p = pass_of(l), .ws = ws, .src = src, .dst = dst, .copy = copy, .gamma = gamma,
             .beta = beta, .mean = mean, .rstd = rstd};
    run3(&j, unit_sums, group_stats, unit_apply);
}

void eng_gn_relu_apply(const eng_layout *l, eng_buf src, eng_buf dst, const float *gamma,
                       const float *beta, const float *mean, const float *rstd, void *ws)
{
    job j = {.p = pass_of(l), .ws = ws, .src = src, .dst = dst, .gamma = gamma, .beta = beta,
             .mean = (float *)mean, .rstd = (float *)rstd};
    run3(&j, NULL, NULL, unit_apply);
}

static void unit_relu_pool(const job *j, int n, int u)
{
    unit un = unit_of(&j->p, n, u);
    img_ws w = img_at(j->p.l, j->ws, n);
    unit_affine(j, n, &un, &w);
    eng_rows r = rows_of(&j->p, &un, j->src);
    r.c[0] = w.sc + un.ch, r.c[1] = w.sh + un.ch;
    double acc[16] = {0};
    kern(&j->p, un.lanes)->relu_sum(&r, acc);
    for (int k = 0; k < un.lanes; k++) {
        float f = (float)(acc[k] / (double)j->p.hw);
        j->feat[(int64_t)n * j->p.l->c + un.ch + k] = f;
        if (j->featb) j->featb[(int64_t)n * j->p.l->c + un.ch + k] = eng_f32_to_bf16(f);
    }
}

void eng_gn_relu_pool(const eng_layout *l, eng_buf src, float *feat, uint16_t *featb,
                      const float *gamma, const float *beta, float *mean, float *rstd, void *ws)
{
    job j = {.p = pass_of(l), .ws = ws, .src = src, .gamma = gamma, .beta = beta, .mean = mean,
             .rstd = rstd, .feat = feat, .featb = featb};
    run3(&j, unit_sums, group_stats, unit_relu_pool);
}

/* ---------------------------------------------------------------- backward */

static eng_rows grad_rows(const job *j, const unit *un, const img_ws *w)
{
    const eng_gn_grad *g = j->g;
    eng_rows r = rows_of(&j->p, un, g->x);
    r.dy = g->dy.p ? at(g->dy, un->off) : NULL;
    r.dy2 = g->dy.p && g->dy2.p ? at(g->dy2, un->off) : NULL;
    r.dyt = g->dy.t;
    r.c[0] = w->sc + un->ch, r.c[1] = w->sh + un->ch, r.c[2] = w->xm + un->ch;
    r.c[3] = w->xr + un->ch, r.c[4] = w->gr + un->ch, r.c[5] = w->ga + un->ch;
    r.c[6] = w->gb + un->ch, r.c[7] = w->df + un->ch;
    return r;
}

/* Per lane: sums over (h, w) of the ReLU-masked gradient and of it times x-hat. */
static void unit_bwd_sums(const job *j, int n, int u)
{
    unit un = unit_of(&j->p, n, u);
    img_ws w = img_at(j->p.l, j->ws, n);
    unit_affine(j, n, &un, &w);
    for (int k = 0; k < un.lanes; k++) {
        int ch = un.ch + k;
        w.s1[ch] = w.s2[ch] = 0;
        w.df[ch] = j->g->dy.p ? 0 : j->g->dfeat[(int64_t)n * j->p.l->c + ch] / (float)j->p.hw;
    }
    eng_rows r = grad_rows(j, &un, &w);
    kern(&j->p, un.lanes)->bwd_sums(&r, w.s1 + un.ch, w.s2 + un.ch);
}

static void group_bwd(const job *j, int n, int g0, int g1)
{
    img_ws w = img_at(j->p.l, j->ws, n);
    int cpg = j->p.l->c / G;
    for (int g = g0; g < g1; g++) {
        double a1 = 0, a2 = 0;
        for (int q = g * cpg; q < (g + 1) * cpg; q++)
            a1 += j->gamma[q] * w.s1[q], a2 += j->gamma[q] * w.s2[q];
        w.g1[g] = a1, w.g2[g] = a2;
    }
}

/* dx = r * (gamma * d - mean_g(gamma * d) - xhat * mean_g(gamma * d * xhat)) */
static void unit_bwd_apply(const job *j, int n, int u)
{
    unit un = unit_of(&j->p, n, u);
    img_ws w = img_at(j->p.l, j->ws, n);
    int cpg = j->p.l->c / G;
    double cnt = (double)cpg * j->p.hw;
    for (int k = 0; k < un.lanes; k++) {
        int ch = un.ch + k;
        double r = w.xr[ch];
        w.gr[ch] = (float)(j->gamma[ch] * r);
        w.ga[ch] = (float)(r * w.g1[ch / cpg] / cnt);
        w.gb[ch] = (float)(r * w.g2[ch / cpg] / cnt);
    }
    const eng_gn_grad *g = j->g;
    eng_rows r = grad_rows(j, &un, &w);
    r.y = at(g->dx, un.off), r.yt = g->dx.t;
    r.y2 = g->dx_bf16 ? at((eng_buf){g->dx_bf16, ENG_ACT_BF16}, un.off) : NULL;
    if (g->res.p) r.res = at(g->res, un.off), r.rt = g->res.t;
    kern(&j->p, un.lanes)->bwd_apply(&r);
}

void eng_gn_relu_backward(const eng_layout *l, const eng_gn_grad *g, void *ws)
{
    job j = {.p = pass_of(l), .ws = ws, .gamma = g->gamma, .beta = g->beta,
             .mean = (float *)g->mean, .rstd = (float *)g->rstd, .g = g};
    run3(&j, unit_bwd_sums, group_bwd, unit_bwd_apply);
    for (int n = 0; n < l->n; n++) {
        img_ws w = img_at(l, ws, n);
        for (int ch = 0; ch < l->c; ch++) {
            g->dbeta[ch] += (float)w.s1[ch];
            g->dgamma[ch] += (float)w.s2[ch];
        }
    }
}

/* ---------------------------------------------------------------- root pooling */

void eng_pool_root(const eng_layout *in, eng_buf src, const eng_layout *out, eng_buf dst)
{
    pass p = pass_of(in);
    int64_t ohw = (int64_t)out->h * out->w;
    int planes = in->n * p.units;
    #pragma omp parallel for collapse(2) schedule(static)
    for (int q = 0; q < planes; q++)
        for (int oy = 0; oy < out->h; oy++) {
            unit ui = unit_of(&p, q / p.units, q % p.units);
            unit uo = unit_hw(&p, q / p.units, q % p.units, ohw);
            kern(&p, ui.lanes)->pool_row(at(src, ui.off), src.t, ui.lanes, in->h, in->w, p.b, oy,
                                         out->w, at(dst, uo.off + (int64_t)oy * out->w * p.b),
                                         dst.t, p.b);
        }
}

size_t eng_pool_ws_bytes(const eng_layout *in, int threads)
{
    return sizeof(float) * 16 * (size_t)in->h * in->w * (size_t)(threads > 0 ? threads : 1);
}

/* Per plane (example, 16-lane slice): gradients summed in f32, straight into an f32 dsrc or
 * into the thread's part of ws, then rounded once into a bf16 dsrc. */
void eng_pool_root_backward(const eng_layout *in, eng_buf src, const eng_layout *out,
                            const float *dout, eng_buf dsrc, void *ws, int threads)
{
    pass p = pass_of(in);
    int64_t ohw = (int64_t)out->h * out->w;
    int planes = in->n * p.units, nt = omp_get_max_threads();
    if (nt > threads) nt = threads;
    #pragma omp parallel for schedule(static) num_threads(nt)
    for (int q = 0; q < planes; q++) {
        unit ui = unit_of(&p, q / p.units, q % p.units);
        unit uo = unit_hw(&p, q / p.units, q % p.units, ohw);
        int direct = dsrc.t == ENG_ACT_F32;
        float *acc = direct ? (float *)dsrc.p + ui.off
                            : (float *)ws + (size_t)omp_get_thread_num() * 16 * p.hw;
        int64_t astride = direct ? p.b : 16;
        for (int64_t i = 0; i < p.hw; i++) memset(acc + i * astride, 0, sizeof(float) * ui.lanes);
        const eng_simd *k = kern(&p, ui.lanes);
        for (int oy = 0; oy < out->h; oy++)
            k->pool_bwd_row(at(src, ui.off), src.t, ui.lanes, in->h, in->w, p.b, oy, out->w,
                            dout + uo.off + (int64_t)oy * out->w * p.b, p.b, acc, astride);
        if (!direct)
            for (int64_t i = 0; i < p.hw; i++)
                k->convert(acc + i * 16, ENG_ACT_F32, at(dsrc, ui.off + i * p.b), dsrc.t, ui.lanes);
    }
}

void eng_layout_to_nchw(const eng_layout *l, eng_buf src, float *dst)
{
    eng_layout plain = *l;
    plain.cblk = 1;
    for (int n = 0; n < l->n; n++)
        for (int ch = 0; ch < l->c; ch++)
            for (int y = 0; y < l->h; y++)
                for (int x = 0; x < l->w; x++) {
                    int64_t o = eng_layout_off(l, n, ch, y, x);
                    dst[eng_layout_off(&plain, n, ch, y, x)] =
                        src.t == ENG_ACT_BF16 ? eng_bf16_to_f32(((const uint16_t *)src.p)[o])
                                              : ((const float *)src.p)[o];
                }
}
