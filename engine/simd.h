/* Row kernels of bitd's own passes (GroupNorm+ReLU, root pooling, Weight Standardisation and
 * the update): AVX-512 versions chosen at run time on CPUs that have AVX-512 F+BW, portable
 * ones otherwise. Internal to engine/; callers own every buffer and split the work. */
#ifndef BIT_SIMD_H
#define BIT_SIMD_H

#include <stdint.h>

/* Element types of activation buffers. bf16 is the upper half of an IEEE float, rounded to
 * nearest even when written. */
typedef enum { ENG_ACT_F32 = 0, ENG_ACT_BF16 = 1 } eng_act_type;

/* One job over `rows` rows of `lanes` channels (at most 16; the AVX-512 kernels take exactly
 * 16), `stride` elements apart (16 for nChw16c, C for NHWC). Per-lane coefficients c[] hold
 * `lanes` floats each; what each kernel reads is said at its pointer below. */
typedef struct eng_rows {
    int64_t rows, stride;
    int lanes;
    const void *x;
    eng_act_type xt;
    void *y;          /* output */
    eng_act_type yt;
    void *y2;         /* optional second output: forward, a copy of x (type xt); backward, a
                         bf16 copy of y */
    const void *dy;   /* backward: gradient at the ReLU output, or NULL: c[7] per lane */
    const void *dy2;  /* optional second gradient, added to dy (same type) */
    eng_act_type dyt;
    const void *res;  /* backward: optional residual gradient added to y */
    eng_act_type rt;
    const float *c[8];
} eng_rows;

/* Where element (r, o) of a [rows][cols] f32 matrix lives: plain row-major (off NULL:
 * r * cols + o), or a weight gradient in oneDNN's layout with 16 output channels innermost
 * (off[r] + (o / 16) * chunk + o % 16; cols a multiple of 16). */
typedef struct eng_mat {
    const float *p;
    const int64_t *off;
    int64_t chunk;
} eng_mat;

/* The view of rows r0.. of m. */
static inline eng_mat eng_mat_from(eng_mat m, int64_t r0, int cols)
{
    if (m.off) m.off += r0;
    else m.p += r0 * cols;
    return m;
}

static inline const float *eng_mat_at(const eng_mat *m, int64_t r, int o, int cols)
{
    return m->off ? m->p + m->off[r] + (o / 16) * m->chunk + o % 16 : m->p + r * cols + o;
}

typedef struct eng_simd {
    const char *name;
    /* s1 += sum x, s2 += sum x^2, per lane (c unused) */
    void (*sums)(const eng_rows *r, double *s1, double *s2);
    /* y = max(x * c0 + c1, 0), and y2 = x when y2 is set */
    void (*apply)(const eng_rows *r);
    /* acc += sum max(x * c0 + c1, 0) */
    void (*relu_sum)(const eng_rows *r, double *acc);
    /* GN+ReLU backward, with d = (dy + dy2) where x * c0 + c1 > 0, else 0 (dy NULL: c7),
     * and xhat = (x - c2) * c3: s1 += sum d, s2 += sum d * xhat */
    void (*bwd_sums)(const eng_rows *r, double *s1, double *s2);
    /* y = c4 * d - c5 - xhat * c6 (+ res), y2 = bf16(y) when set */
    void (*bwd_apply)(const eng_rows *r);
    /* BiT's root pooling, output row oy of one slice of `lanes` channels: pad 1 with zeros,
     * 3x3, stride 2. in points at the slice's ih x iw plane (rows `stride` apart), out at the
     * output row (rows `ostride` apart). */
    void (*pool_row)(const void *in, eng_act_type it, int lanes, int ih, int iw, int64_t stride,
                     int oy, int ow, void *out, eng_act_type ot, int64_t ostride);
    /* Its backward for output row oy: adds dout (f32, rows `dstride` apart) to acc (an f32
     * ih x iw plane, `astride` apart) at each window's first maximum in row-major order; a
     * winning pad cell adds nowhere. */
    void (*pool_bwd_row)(const void *in, eng_act_type it, int lanes, int ih, int iw,
                         int64_t stride, int oy, int ow, const float *dout, int64_t dstride,
                         float *acc, int64_t astride);
    /* Column statistics: sa += sum a, sab += sum a * b (b row-major; NULL: a * a), per
     * column. */
    void (*colsums)(eng_mat a, const float *b, int64_t rows, int cols, double *sa, double *sab);
    /* out = (w - mean) * inv per column (out may be bf16) */
    void (*standardise)(const float *w, void *out, eng_act_type ot, int64_t rows, int cols,
                        const float *mean, const float *inv);
    /* The update of a standardised kernel, fused. Per element, with what = (w - mean) * inv:
     * g = (dws - ga - what * gb) * inv (the gradient through WS); then, when m is set,
     * m = mom * m + g + wd * w, w -= lr * m, and s1/s2 collect sum w, sum w^2 of the new w
     * per column; when m is NULL, g is written to w's gradient `gout` instead. */
    void (*ws_update)(eng_mat dws, float *w, float *m, float *gout, int64_t rows, int cols,
                      const float *mean, const float *inv, const float *ga, const float *gb,
                      float mom, float wd, float lr, double *s1, double *s2);
    /* dst (f32 or bf16) = src (f32 or bf16), n elements */
    void (*convert)(const void *src, eng_act_type st, void *dst, eng_act_type dt, int64_t n);
    /* acc += x, n floats */
    void (*add)(float *acc, const float *x, int64_t n);
} eng_simd;

/* The kernels for this CPU (BIT_SIMD=portable in the environment forces the portable ones). */
const eng_simd *eng_simd_get(void);
/* Both sets, for tests: the AVX-512 one is NULL on CPUs without it. */
const eng_simd *eng_simd_portable(void);
const eng_simd *eng_simd_avx512(void);

static inline float eng_bf16_to_f32(uint16_t h)
{
    union { uint32_t u; float f; } v = {(uint32_t)h << 16};
    return v.f;
}
static inline uint16_t eng_f32_to_bf16(float f)
{
    union { float f; uint32_t u; } v = {f};
    return (uint16_t)((v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16);
}

#endif
