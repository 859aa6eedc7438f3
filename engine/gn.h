/* GroupNorm + ReLU, fused, on the activation layouts oneDNN's convolutions use. oneDNN 2.6
 * has no GroupNorm, so this is ours: two passes (per-channel sums, then normalise+ReLU),
 * parallel with OpenMP over the caller's thread budget. Callers own every buffer. */
#ifndef BIT_GN_H
#define BIT_GN_H

#include <stdint.h>

/* A 4-D activation tensor [n, c, h, w] stored as "nC(hw)b": channel blocks of cblk
 * channels innermost. cblk = 1 is NCHW, 8 / 16 are oneDNN's nChw8c / nChw16c, and
 * cblk = c is NHWC. Offset of (n, ch, y, x): ((n*(c/cblk) + ch/cblk)*h*w + y*w + x)*cblk + ch%cblk. */
typedef struct eng_layout {
    int n, c, h, w, cblk;
} eng_layout;

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

/* dst = relu(GN(src) * gamma + beta) with 32 groups of consecutive channels and eps 1e-5.
 * Returns 0 or ENG_ENOMEM. dst may equal src. mean/rstd, when non-NULL, receive [n * 32] statistics (for backward). */
int eng_gn_relu(const eng_layout *l, const float *src, float *dst, const float *gamma,
                const float *beta, float *mean, float *rstd);
/* The head: feat[n * c] = mean over (h, w) of relu(GN(src)), plain [n, c]. */
int eng_gn_relu_pool(const eng_layout *l, const float *src, float *feat, const float *gamma,
                     const float *beta);
/* BiT's root pooling: pad by 1 with the value 0 (not -inf), then 3x3 stride-2 max-pool. */
void eng_pool_root(const eng_layout *in, const float *src, const eng_layout *out, float *dst);
/* Training: statistics [n * 32] (mean, 1/sqrt(var + eps)) of src. */
int eng_gn_stats(const eng_layout *l, const float *src, float *mean, float *rstd);
/* dst = relu(GN(src)) from statistics computed before (forward, or recomputation in backward). */
int eng_gn_relu_apply(const eng_layout *l, const float *src, float *dst, const float *gamma,
                      const float *beta, const float *mean, const float *rstd);
/* Backward of relu(GN(x)): dx = d/dx given the gradient at the ReLU output, which is dy (same
 * layout as x) or, when dy is NULL, dfeat [n * c] spread evenly over (h, w) (the head's average
 * pool). Adds res to dx when res is non-NULL (a residual branch; res may equal dx).
 * dgamma/dbeta are accumulated (+=). */
int eng_gn_relu_backward(const eng_layout *l, const float *x, const float *mean,
                         const float *rstd, const float *gamma, const float *beta,
                         const float *dy, const float *dfeat, const float *res, float *dx,
                         float *dgamma, float *dbeta);
/* Backward of eng_pool_root: dsrc (overwritten) from dout. */
void eng_pool_root_backward(const eng_layout *in, const float *src, const eng_layout *out,
                            const float *dout, float *dsrc);
/* Copies a layout to plain NCHW (for taps and tests). */
void eng_layout_to_nchw(const eng_layout *l, const float *src, float *dst);

#endif
