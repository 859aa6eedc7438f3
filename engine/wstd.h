/* Weight Standardisation of a convolution kernel kept in its checkpoint layout (HWIO: rows of
 * `cols` = output channels), its backward, and the SGD step through it fused into one pass.
 * Parallel over rows on the calling thread's OpenMP budget; callers own every buffer,
 * including `part`: eng_wstd_part_bytes of per-thread column sums. */
#ifndef BIT_WSTD_H
#define BIT_WSTD_H

#include <stddef.h>
#include <stdint.h>

#include "prof.h"
#include "simd.h"

/* A kernel [rows][cols] and its standardisation: per output channel (column) mean and
 * 1 / sqrt(biased variance + 1e-10), as floats; w_hat = (w - mean) * inv. */
typedef struct eng_wstd {
    int64_t rows;
    int cols;
    float *w, *m;     /* raw kernel and momentum buffer */
    float *mean, *inv;
    void *out;        /* w_hat, of type ot (f32 or bf16) */
    eng_act_type ot;
    double *part;     /* column sums of up to `threads` threads */
    int threads;
} eng_wstd;

size_t eng_wstd_part_bytes(int cols, int threads);
/* mean, inv and out from w. */
void eng_wstd_forward(eng_wstd *s, eng_prof *prof);
/* g = dL/dw given dws = dL/dw_hat, plain or in oneDNN's gradient layout (see eng_mat). */
void eng_wstd_grad(eng_wstd *s, eng_mat dws, float *g);
/* One SGD step with the gradient through WS: m = mom * m + g + wd * w, w -= lr * m; then
 * mean, inv and out for the new w. */
void eng_wstd_update(eng_wstd *s, eng_mat dws, float mom, float wd, float lr, eng_prof *prof);

#endif
