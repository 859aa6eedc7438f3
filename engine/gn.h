/* GroupNorm + ReLU, fused, and BiT's root pooling, on the activation layouts oneDNN's
 * convolutions use, in f32 or bf16 (statistics and arithmetic always in f32/f64). oneDNN 2.6
 * has no GroupNorm, so this is ours. Each pass is parallel over the calling thread's OpenMP
 * budget (independent segments: whole groups of one example) and allocates nothing: callers
 * own every buffer, including the workspace. */
#ifndef BIT_GN_H
#define BIT_GN_H

#include <stddef.h>
#include <stdint.h>

#include "simd.h"

/* A 4-D activation tensor [n, c, h, w] stored as "nC(hw)b": channel blocks of cblk
 * channels innermost. cblk = 1 is NCHW, 8 / 16 are oneDNN's nChw8c / nChw16c, and
 * cblk = c is NHWC. Offset of (n, ch, y, x): ((n*(c/cblk) + ch/cblk)*h*w + y*w + x)*cblk + ch%cblk. */
typedef struct eng_layout {
    int n, c, h, w, cblk;
} eng_layout;

/* An activation buffer and its element type. Inputs of a pass are only read. */
typedef struct eng_buf {
    void *p;
    eng_act_type t;
} eng_buf;

static inline eng_buf eng_f32(float *p) { return (eng_buf){p, ENG_ACT_F32}; }

static inline int64_t eng_layout_off(const eng_layout *l, int n, int ch, int y, int x)
{
    int64_t hw = (int64_t)l->h * l->w;
    return (((int64_t)n * (l->c / l->cblk) + ch / l->cblk) * hw + (int64_t)y * l->w + x) * l->cblk +
           ch % l->cblk;
}
static inline int64_t eng_layout_size(const eng_layout *l)
{
    return (int64_t)l->n * l->c * l->h * l->w;
}

/* Bytes of workspace the GroupNorm passes need for l (per-example sums and coefficients). */
size_t eng_gn_ws_bytes(const eng_layout *l);

/* dst = relu(GN(src) * gamma + beta), 32 groups of consecutive channels, eps 1e-5. dst may be
 * src (same type). mean/rstd, when non-NULL, receive the [n * 32] statistics (backward needs
 * them); copy, when copy.p is set, receives src unchanged (type src.t). */
void eng_gn_relu(const eng_layout *l, eng_buf src, eng_buf dst, eng_buf copy, const float *gamma,
                 const float *beta, float *mean, float *rstd, void *ws);
/* dst = relu(GN(src)) from statistics computed before (backward's recomputation). */
void eng_gn_relu_apply(const eng_layout *l, eng_buf src, eng_buf dst, const float *gamma,
                       const float *beta, const float *mean, const float *rstd, void *ws);
/* The head's input: feat[n * c] = mean over (h, w) of relu(GN(src)), plain [n, c]; featb,
 * when non-NULL, gets a bf16 copy; mean/rstd as for eng_gn_relu. */
void eng_gn_relu_pool(const eng_layout *l, eng_buf src, float *feat, uint16_t *featb,
                      const float *gamma, const float *beta, float *mean, float *rstd, void *ws);

/* Backward of relu(GN(x)). The gradient at the ReLU output is dy (+ dy2 when dy2.p is set,
 * same layout and type) or, when dy.p is NULL, dfeat [n * c] spread evenly over (h, w) (the
 * head's average pool). dx = d/dx (+ res when res.p is set: a residual branch; res may be dx);
 * dx_bf16, when non-NULL, gets a bf16 copy of dx. dgamma/dbeta are accumulated (+=). */
typedef struct eng_gn_grad {
    eng_buf x;
    const float *mean, *rstd, *gamma, *beta;
    eng_buf dy, dy2;
    const float *dfeat;
    eng_buf res, dx;
    uint16_t *dx_bf16;
    float *dgamma, *dbeta;
} eng_gn_grad;
void eng_gn_relu_backward(const eng_layout *l, const eng_gn_grad *g, void *ws);

/* BiT's root pooling: pad by 1 with the value 0 (not -inf), then 3x3 stride-2 max-pool. */
void eng_pool_root(const eng_layout *in, eng_buf src, const eng_layout *out, eng_buf dst);
/* Its backward: dsrc (overwritten) from dout (f32, out's layout). A bf16 dsrc is summed in f32
 * in ws first: eng_pool_ws_bytes(in, threads) bytes serve up to `threads` threads. */
size_t eng_pool_ws_bytes(const eng_layout *in, int threads);
void eng_pool_root_backward(const eng_layout *in, eng_buf src, const eng_layout *out,
                            const float *dout, eng_buf dsrc, void *ws, int threads);
/* Copies a layout to plain NCHW f32 (for taps and tests). */
void eng_layout_to_nchw(const eng_layout *l, eng_buf src, float *dst);

#endif
