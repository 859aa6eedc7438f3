#include "simd.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- portable kernels */

static inline float ld(const void *p, eng_act_type t, int64_t i)
{
    return t == ENG_ACT_BF16 ? eng_bf16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

static inline void st(void *p, eng_act_type t, int64_t i, float v)
{
    if (t == ENG_ACT_BF16) ((uint16_t *)p)[i] = eng_f32_to_bf16(v);
    else ((float *)p)[i] = v;
}

static void p_sums(const eng_rows *r, double *s1, double *s2)
{
    for (int64_t i = 0; i < r->rows; i++)
        for (int k = 0; k < r->lanes; k++) {
            double v = ld(r->x, r->xt, i * r->stride + k);
            s1[k] += v;
            s2[k] += v * v;
        }
}

static void p_apply(const eng_rows *r)
{
    const float *sc = r->c[0], *sh = r->c[1];
    for (int64_t i = 0; i < r->rows; i++)
        for (int k = 0; k < r->lanes; k++) {
            int64_t o = i * r->stride + k;
            float x = ld(r->x, r->xt, o), v = x * sc[k] + sh[k];
            if (r->y2) st(r->y2, r->xt, o, x);
            st(r->y, r->yt, o, v > 0 ? v : 0);
        }
}

static void p_relu_sum(const eng_rows *r, double *acc)
{
    const float *sc = r->c[0], *sh = r->c[1];
    for (int64_t i = 0; i < r->rows; i++)
        for (int k = 0; k < r->lanes; k++) {
            float v = ld(r->x, r->xt, i * r->stride + k) * sc[k] + sh[k];
            acc[k] += v > 0 ? v : 0;
        }
}

/* The masked incoming gradient of element (i, k). */
static inline float p_grad(const eng_rows *r, int64_t o, int k, float x)
{
    if (!(x * r->c[0][k] + r->c[1][k] > 0)) return 0;
    if (!r->dy) return r->c[7][k];
    float d = ld(r->dy, r->dyt, o);
    return r->dy2 ? d + ld(r->dy2, r->dyt, o) : d;
}

static void p_bwd_sums(const eng_rows *r, double *s1, double *s2)
{
    for (int64_t i = 0; i < r->rows; i++)
        for (int k = 0; k < r->lanes; k++) {
            int64_t o = i * r->stride + k;
            float x = ld(r->x, r->xt, o), d = p_grad(r, o, k, x);
            s1[k] += d;
            s2[k] += (double)(d * ((x - r->c[2][k]) * r->c[3][k]));
        }
}

static void p_bwd_apply(const eng_rows *r)
{
    for (int64_t i = 0; i < r->rows; i++)
        for (int k = 0; k < r->lanes; k++) {
            int64_t o = i * r->stride + k;
            float x = ld(r->x, r->xt, o), d = p_grad(r, o, k, x);
            float v = r->c[4][k] * d - r->c[5][k] - (x - r->c[2][k]) * r->c[3][k] * r->c[6][k];
            if (r->res) v += ld(r->res, r->rt, o);
            st(r->y, r->yt, o, v);
            if (r->y2) st(r->y2, ENG_ACT_BF16, o, v);
        }
}

/* Window (oy, ox): the first maximum in row-major order, pad cells (value 0) included; *at
 * gets the winning cell's row index, or -1 for a pad cell. */
static inline float p_window(const void *in, eng_act_type it, int ih, int iw, int64_t stride,
                             int k, int oy, int ox, int64_t *at)
{
    float m = -INFINITY;
    *at = -1;
    for (int ky = 0; ky < 3; ky++)
        for (int kx = 0; kx < 3; kx++) {
            int y = oy * 2 + ky - 1, x = ox * 2 + kx - 1;
            int pad = y < 0 || x < 0 || y >= ih || x >= iw;
            int64_t cell = pad ? -1 : (int64_t)y * iw + x;
            float v = pad ? 0.0f : ld(in, it, cell * stride + k);
            if (v > m) m = v, *at = cell;
        }
    return m;
}

static void p_pool_row(const void *in, eng_act_type it, int lanes, int ih, int iw,
                       int64_t stride, int oy, int ow, void *out, eng_act_type ot,
                       int64_t ostride)
{
    int64_t at;
    for (int ox = 0; ox < ow; ox++)
        for (int k = 0; k < lanes; k++)
            st(out, ot, ox * ostride + k, p_window(in, it, ih, iw, stride, k, oy, ox, &at));
}

static void p_pool_bwd_row(const void *in, eng_act_type it, int lanes, int ih, int iw,
                           int64_t stride, int oy, int ow, const float *dout, int64_t dstride,
                           float *acc, int64_t astride)
{
    int64_t at;
    for (int ox = 0; ox < ow; ox++)
        for (int k = 0; k < lanes; k++) {
            p_window(in, it, ih, iw, stride, k, oy, ox, &at);
            if (at >= 0) acc[at * astride + k] += dout[ox * dstride + k];
        }
}

static void p_colsums(eng_mat a, const float *b, int64_t rows, int cols, double *sa, double *sab)
{
    for (int64_t i = 0; i < rows; i++)
        for (int o = 0; o < cols; o++) {
            float x = *eng_mat_at(&a, i, o, cols), y = b ? b[i * cols + o] : x;
            sa[o] += x;
            sab[o] += (double)x * y;
        }
}

static void p_standardise(const float *w, void *out, eng_act_type ot, int64_t rows, int cols,
                          const float *mean, const float *inv)
{
    for (int64_t i = 0; i < rows; i++)
        for (int o = 0; o < cols; o++)
            st(out, ot, i * cols + o, (w[i * cols + o] - mean[o]) * inv[o]);
}

static void p_ws_update(eng_mat dws, float *w, float *m, float *gout, int64_t rows, int cols,
                        const float *mean, const float *inv, const float *ga, const float *gb,
                        float mom, float wd, float lr, double *s1, double *s2)
{
    for (int64_t i = 0; i < rows; i++)
        for (int o = 0; o < cols; o++) {
            int64_t e = i * cols + o;
            float what = (w[e] - mean[o]) * inv[o];
            float g = (*eng_mat_at(&dws, i, o, cols) - ga[o] - what * gb[o]) * inv[o];
            if (!m) {
                gout[e] = g;
                continue;
            }
            m[e] = mom * m[e] + (g + wd * w[e]);
            w[e] -= lr * m[e];
            s1[o] += w[e];
            s2[o] += (double)w[e] * w[e];
        }
}

static void p_convert(const void *src, eng_act_type stt, void *dst, eng_act_type dt, int64_t n)
{
    for (int64_t i = 0; i < n; i++) st(dst, dt, i, ld(src, stt, i));
}

static void p_add(float *acc, const float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++) acc[i] += x[i];
}

static const eng_simd portable = {
    "portable", p_sums, p_apply, p_relu_sum, p_bwd_sums, p_bwd_apply, p_pool_row,
    p_pool_bwd_row, p_colsums, p_standardise, p_ws_update, p_convert, p_add,
};

const eng_simd *eng_simd_portable(void) { return &portable; }

/* ---------------------------------------------------------------- AVX-512 kernels */

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

/* clang spells GCC's push_options/target differently; both compile these
 * kernels for AVX-512 while the rest of the file stays baseline x86-64. */
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,fma"))), \
                             apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,fma")
#endif
#define AI static inline __attribute__((always_inline))

AI __m512 v_ld(const void *p, eng_act_type t, int64_t i)
{
    if (t == ENG_ACT_BF16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)p + i))), 16));
    return _mm512_loadu_ps((const float *)p + i);
}

/* bf16 rounding to nearest even, as eng_f32_to_bf16 (AVX512-BF16 is not required) */
AI void v_st(void *p, eng_act_type t, int64_t i, __m512 v)
{
    if (t == ENG_ACT_BF16) {
        __m512i u = _mm512_castps_si512(v);
        __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
        u = _mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
        _mm256_storeu_si256((__m256i *)((uint16_t *)p + i), _mm512_cvtepi32_epi16(_mm512_srli_epi32(u, 16)));
    } else {
        _mm512_storeu_ps((float *)p + i, v);
    }
}

AI __m512d v_lo(__m512 v) { return _mm512_cvtps_pd(_mm512_castps512_ps256(v)); }
AI __m512d v_hi(__m512 v) { return _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1)); }

AI void v_acc(double *s, __m512d lo, __m512d hi)
{
    _mm512_storeu_pd(s, _mm512_add_pd(_mm512_loadu_pd(s), lo));
    _mm512_storeu_pd(s + 8, _mm512_add_pd(_mm512_loadu_pd(s + 8), hi));
}

/* The kernels are written once with the element types as arguments; each entry point
 * dispatches to copies specialised for constant types. */
#define BY_TYPE(fn, t, ...)                                                             \
    do {                                                                                \
        if ((t) == ENG_ACT_BF16) fn(__VA_ARGS__, ENG_ACT_BF16);                         \
        else fn(__VA_ARGS__, ENG_ACT_F32);                                              \
    } while (0)

AI void v_sums_t(const eng_rows *r, double *s1, double *s2, eng_act_type xt)
{
    __m512d a0 = _mm512_setzero_pd(), a1 = a0, b0 = a0, b1 = a0;
    for (int64_t i = 0; i < r->rows; i++) {
        __m512 v = v_ld(r->x, xt, i * r->stride);
        __m512d lo = v_lo(v), hi = v_hi(v);
        a0 = _mm512_add_pd(a0, lo), a1 = _mm512_add_pd(a1, hi);
        b0 = _mm512_fmadd_pd(lo, lo, b0), b1 = _mm512_fmadd_pd(hi, hi, b1);
    }
    v_acc(s1, a0, a1);
    v_acc(s2, b0, b1);
}
static void v_sums(const eng_rows *r, double *s1, double *s2) { BY_TYPE(v_sums_t, r->xt, r, s1, s2); }

AI void v_apply_tt(const eng_rows *r, eng_act_type xt, eng_act_type yt)
{
    __m512 sc = _mm512_loadu_ps(r->c[0]), sh = _mm512_loadu_ps(r->c[1]), z = _mm512_setzero_ps();
    for (int64_t i = 0; i < r->rows; i++) {
        int64_t o = i * r->stride;
        __m512 x = v_ld(r->x, xt, o);
        if (r->y2) v_st(r->y2, xt, o, x);
        v_st(r->y, yt, o, _mm512_max_ps(_mm512_fmadd_ps(x, sc, sh), z));
    }
}
AI void v_apply_t(const eng_rows *r, eng_act_type xt) { BY_TYPE(v_apply_tt, r->yt, r, xt); }
static void v_apply(const eng_rows *r) { BY_TYPE(v_apply_t, r->xt, r); }

AI void v_relu_sum_t(const eng_rows *r, double *acc, eng_act_type xt)
{
    __m512 sc = _mm512_loadu_ps(r->c[0]), sh = _mm512_loadu_ps(r->c[1]), z = _mm512_setzero_ps();
    __m512d a0 = _mm512_setzero_pd(), a1 = a0;
    for (int64_t i = 0; i < r->rows; i++) {
        __m512 v = _mm512_max_ps(_mm512_fmadd_ps(v_ld(r->x, xt, i * r->stride), sc, sh), z);
        a0 = _mm512_add_pd(a0, v_lo(v)), a1 = _mm512_add_pd(a1, v_hi(v));
    }
    v_acc(acc, a0, a1);
}
static void v_relu_sum(const eng_rows *r, double *acc) { BY_TYPE(v_relu_sum_t, r->xt, r, acc); }

/* The incoming gradient at row offset o, masked by the ReLU: the same fused multiply-add as
 * the forward apply decides, so forward and backward agree on every element. */
AI __m512 v_grad(const eng_rows *r, int64_t o, __m512 x, __m512 sc, __m512 sh, __m512 df,
                 eng_act_type dyt)
{
    __mmask16 pos = _mm512_cmp_ps_mask(_mm512_fmadd_ps(x, sc, sh), _mm512_setzero_ps(), _CMP_GT_OQ);
    __m512 d = df;
    if (r->dy) {
        d = v_ld(r->dy, dyt, o);
        if (r->dy2) d = _mm512_add_ps(d, v_ld(r->dy2, dyt, o));
    }
    return _mm512_maskz_mov_ps(pos, d);
}

AI __m512 v_df(const eng_rows *r) { return r->dy ? _mm512_setzero_ps() : _mm512_loadu_ps(r->c[7]); }

AI void v_bwd_sums_tt(const eng_rows *r, double *s1, double *s2, eng_act_type xt, eng_act_type dyt)
{
    __m512 sc = _mm512_loadu_ps(r->c[0]), sh = _mm512_loadu_ps(r->c[1]);
    __m512 xm = _mm512_loadu_ps(r->c[2]), xr = _mm512_loadu_ps(r->c[3]), df = v_df(r);
    __m512d a0 = _mm512_setzero_pd(), a1 = a0, b0 = a0, b1 = a0;
    for (int64_t i = 0; i < r->rows; i++) {
        int64_t o = i * r->stride;
        __m512 x = v_ld(r->x, xt, o), d = v_grad(r, o, x, sc, sh, df, dyt);
        __m512 p = _mm512_mul_ps(d, _mm512_mul_ps(_mm512_sub_ps(x, xm), xr));
        a0 = _mm512_add_pd(a0, v_lo(d)), a1 = _mm512_add_pd(a1, v_hi(d));
        b0 = _mm512_add_pd(b0, v_lo(p)), b1 = _mm512_add_pd(b1, v_hi(p));
    }
    v_acc(s1, a0, a1);
    v_acc(s2, b0, b1);
}
AI void v_bwd_sums_t(const eng_rows *r, double *s1, double *s2, eng_act_type xt)
{
    BY_TYPE(v_bwd_sums_tt, r->dyt, r, s1, s2, xt);
}
static void v_bwd_sums(const eng_rows *r, double *s1, double *s2)
{
    BY_TYPE(v_bwd_sums_t, r->xt, r, s1, s2);
}

AI void v_bwd_apply_tt(const eng_rows *r, eng_act_type xt, eng_act_type dyt)
{
    __m512 sc = _mm512_loadu_ps(r->c[0]), sh = _mm512_loadu_ps(r->c[1]);
    __m512 xm = _mm512_loadu_ps(r->c[2]), xr = _mm512_loadu_ps(r->c[3]);
    __m512 gr = _mm512_loadu_ps(r->c[4]), ga = _mm512_loadu_ps(r->c[5]);
    __m512 gb = _mm512_loadu_ps(r->c[6]), df = v_df(r);
    for (int64_t i = 0; i < r->rows; i++) {
        int64_t o = i * r->stride;
        __m512 x = v_ld(r->x, xt, o), d = v_grad(r, o, x, sc, sh, df, dyt);
        __m512 xh = _mm512_mul_ps(_mm512_sub_ps(x, xm), xr);
        __m512 v = _mm512_sub_ps(_mm512_sub_ps(_mm512_mul_ps(gr, d), ga), _mm512_mul_ps(xh, gb));
        if (r->res) v = _mm512_add_ps(v, v_ld(r->res, r->rt, o));
        v_st(r->y, r->yt, o, v);
        if (r->y2) v_st(r->y2, ENG_ACT_BF16, o, v);
    }
}
AI void v_bwd_apply_t(const eng_rows *r, eng_act_type xt) { BY_TYPE(v_bwd_apply_tt, r->dyt, r, xt); }
static void v_bwd_apply(const eng_rows *r) { BY_TYPE(v_bwd_apply_t, r->xt, r); }

AI void v_pool_row_t(const void *in, int ih, int iw, int64_t stride, int oy, int ow, void *out,
                     eng_act_type ot, int64_t ostride, eng_act_type it)
{
    int y0 = oy * 2 - 1;
    for (int ox = 0; ox < ow; ox++) {
        int x0 = ox * 2 - 1;
        /* a window reaching into the padding sees its zeros: the max is at least 0 */
        int border = y0 < 0 || x0 < 0 || y0 + 2 >= ih || x0 + 2 >= iw;
        __m512 m = border ? _mm512_setzero_ps() : _mm512_set1_ps(-INFINITY);
        for (int y = y0 < 0 ? 0 : y0; y <= y0 + 2 && y < ih; y++)
            for (int x = x0 < 0 ? 0 : x0; x <= x0 + 2 && x < iw; x++)
                m = _mm512_max_ps(m, v_ld(in, it, ((int64_t)y * iw + x) * stride));
        v_st(out, ot, ox * ostride, m);
    }
}
static void v_pool_row(const void *in, eng_act_type it, int lanes, int ih, int iw,
                       int64_t stride, int oy, int ow, void *out, eng_act_type ot, int64_t ostride)
{
    (void)lanes;
    BY_TYPE(v_pool_row_t, it, in, ih, iw, stride, oy, ow, out, ot, ostride);
}

AI void v_pool_bwd_row_t(const void *in, int ih, int iw, int64_t stride, int oy, int ow,
                         const float *dout, int64_t dstride, float *acc, int64_t astride,
                         eng_act_type it)
{
    for (int ox = 0; ox < ow; ox++) {
        __m512 m = _mm512_set1_ps(-INFINITY);
        __m512i at = _mm512_set1_epi32(-1);
        for (int j = 0; j < 9; j++) { /* row-major window order; a pad cell is 9 + j */
            int y = oy * 2 + j / 3 - 1, x = ox * 2 + j % 3 - 1;
            int pad = y < 0 || x < 0 || y >= ih || x >= iw;
            __m512 v = pad ? _mm512_setzero_ps() : v_ld(in, it, ((int64_t)y * iw + x) * stride);
            __mmask16 gt = _mm512_cmp_ps_mask(v, m, _CMP_GT_OQ);
            m = _mm512_mask_mov_ps(m, gt, v);
            at = _mm512_mask_mov_epi32(at, gt, _mm512_set1_epi32(pad ? 9 + j : j));
        }
        __m512 d = _mm512_loadu_ps(dout + ox * dstride);
        for (int j = 0; j < 9; j++) {
            int y = oy * 2 + j / 3 - 1, x = ox * 2 + j % 3 - 1;
            if (y < 0 || x < 0 || y >= ih || x >= iw) continue;
            __mmask16 hit = _mm512_cmpeq_epi32_mask(at, _mm512_set1_epi32(j));
            if (!hit) continue;
            float *a = acc + ((int64_t)y * iw + x) * astride;
            _mm512_storeu_ps(a, _mm512_mask_add_ps(_mm512_loadu_ps(a), hit, _mm512_loadu_ps(a), d));
        }
    }
}
static void v_pool_bwd_row(const void *in, eng_act_type it, int lanes, int ih, int iw,
                           int64_t stride, int oy, int ow, const float *dout, int64_t dstride,
                           float *acc, int64_t astride)
{
    (void)lanes;
    BY_TYPE(v_pool_bwd_row_t, it, in, ih, iw, stride, oy, ow, dout, dstride, acc, astride);
}

/* Column kernels: rows four at a time (four sequential streams), their sums over each
 * 16-column chunk kept in registers, then added to the caller's per-column sums. */
#define QUAD 4

static void v_colsums(eng_mat a, const float *b, int64_t rows, int cols, double *sa, double *sab)
{
    if (cols % 16) {
        p_colsums(a, b, rows, cols, sa, sab);
        return;
    }
    for (int64_t i0 = 0; i0 < rows; i0 += QUAD) {
        int nq = rows - i0 < QUAD ? (int)(rows - i0) : QUAD;
        for (int o = 0; o < cols; o += 16) {
            __m512d a0 = _mm512_setzero_pd(), a1 = a0, b0 = a0, b1 = a0;
            for (int q = 0; q < nq; q++) {
                __m512 x = _mm512_loadu_ps(eng_mat_at(&a, i0 + q, o, cols));
                __m512 y = b ? _mm512_loadu_ps(b + (i0 + q) * cols + o) : x;
                __m512d xl = v_lo(x), xh = v_hi(x);
                a0 = _mm512_add_pd(a0, xl), a1 = _mm512_add_pd(a1, xh);
                b0 = _mm512_fmadd_pd(xl, v_lo(y), b0), b1 = _mm512_fmadd_pd(xh, v_hi(y), b1);
            }
            v_acc(sa + o, a0, a1);
            v_acc(sab + o, b0, b1);
        }
    }
}

static void v_standardise(const float *w, void *out, eng_act_type ot, int64_t rows, int cols,
                          const float *mean, const float *inv)
{
    if (cols % 16) {
        p_standardise(w, out, ot, rows, cols, mean, inv);
        return;
    }
    for (int64_t i = 0; i < rows; i++)
        for (int o = 0; o < cols; o += 16) {
            __m512 x = _mm512_loadu_ps(w + i * cols + o);
            v_st(out, ot, i * cols + o,
                 _mm512_mul_ps(_mm512_sub_ps(x, _mm512_loadu_ps(mean + o)), _mm512_loadu_ps(inv + o)));
        }
}

static void v_ws_update(eng_mat dws, float *w, float *m, float *gout, int64_t rows, int cols,
                        const float *mean, const float *inv, const float *ga, const float *gb,
                        float mom, float wd, float lr, double *s1, double *s2)
{
    if (cols % 16) {
        p_ws_update(dws, w, m, gout, rows, cols, mean, inv, ga, gb, mom, wd, lr, s1, s2);
        return;
    }
    __m512 vm = _mm512_set1_ps(mom), vd = _mm512_set1_ps(wd), vl = _mm512_set1_ps(lr);
    for (int64_t i0 = 0; i0 < rows; i0 += QUAD) {
        int nq = rows - i0 < QUAD ? (int)(rows - i0) : QUAD;
        for (int o = 0; o < cols; o += 16) {
            __m512 mv = _mm512_loadu_ps(mean + o), iv = _mm512_loadu_ps(inv + o);
            __m512 av = _mm512_loadu_ps(ga + o), bv = _mm512_loadu_ps(gb + o);
            __m512d a0 = _mm512_setzero_pd(), a1 = a0, b0 = a0, b1 = a0;
            for (int q = 0; q < nq; q++) {
                int64_t e = (i0 + q) * cols + o;
                __m512 wv = _mm512_loadu_ps(w + e);
                __m512 what = _mm512_mul_ps(_mm512_sub_ps(wv, mv), iv);
                __m512 g = _mm512_sub_ps(_mm512_loadu_ps(eng_mat_at(&dws, i0 + q, o, cols)), av);
                g = _mm512_mul_ps(_mm512_sub_ps(g, _mm512_mul_ps(what, bv)), iv);
                if (!m) {
                    _mm512_storeu_ps(gout + e, g);
                    continue;
                }
                __m512 mm = _mm512_add_ps(_mm512_mul_ps(vm, _mm512_loadu_ps(m + e)),
                                          _mm512_add_ps(g, _mm512_mul_ps(vd, wv)));
                _mm512_storeu_ps(m + e, mm);
                wv = _mm512_sub_ps(wv, _mm512_mul_ps(vl, mm));
                _mm512_storeu_ps(w + e, wv);
                __m512d lo = v_lo(wv), hi = v_hi(wv);
                a0 = _mm512_add_pd(a0, lo), a1 = _mm512_add_pd(a1, hi);
                b0 = _mm512_fmadd_pd(lo, lo, b0), b1 = _mm512_fmadd_pd(hi, hi, b1);
            }
            if (m) v_acc(s1 + o, a0, a1), v_acc(s2 + o, b0, b1);
        }
    }
}

AI void v_convert_tt(const void *src, void *dst, int64_t n, eng_act_type dt, eng_act_type stt)
{
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) v_st(dst, dt, i, v_ld(src, stt, i));
    if (i < n) p_convert((const char *)src + i * (stt == ENG_ACT_BF16 ? 2 : 4), stt,
                         (char *)dst + i * (dt == ENG_ACT_BF16 ? 2 : 4), dt, n - i);
}
AI void v_convert_t(const void *src, eng_act_type stt, void *dst, int64_t n, eng_act_type dt)
{
    BY_TYPE(v_convert_tt, stt, src, dst, n, dt);
}
static void v_convert(const void *src, eng_act_type stt, void *dst, eng_act_type dt, int64_t n)
{
    BY_TYPE(v_convert_t, dt, src, stt, dst, n);
}

static void v_add(float *acc, const float *x, int64_t n)
{
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(acc + i, _mm512_add_ps(_mm512_loadu_ps(acc + i), _mm512_loadu_ps(x + i)));
    for (; i < n; i++) acc[i] += x[i];
}

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

static const eng_simd avx512 = {
    "avx512", v_sums, v_apply, v_relu_sum, v_bwd_sums, v_bwd_apply, v_pool_row,
    v_pool_bwd_row, v_colsums, v_standardise, v_ws_update, v_convert, v_add,
};

const eng_simd *eng_simd_avx512(void)
{
    __builtin_cpu_init();
    int ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    return ok ? &avx512 : NULL;
}
#else
const eng_simd *eng_simd_avx512(void) { return NULL; }
#endif

/* BIT_SIMD=portable forces the portable kernels (tests run the fixtures through both). */
const eng_simd *eng_simd_get(void)
{
    const char *force = getenv("BIT_SIMD");
    const eng_simd *k = force && !strcmp(force, "portable") ? NULL : eng_simd_avx512();
    return k ? k : &portable;
}
