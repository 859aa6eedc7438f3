/* The oneDNN inference engine for BiT ResNet-v2. An eng_net owns the standardised,
 * pre-packed weights and is shared read-only by any number of threads; for each input shape
 * it builds a plan (primitives + buffers) once, caches it, and lends it to one caller at a
 * time. Callers own inputs and outputs. */
#ifndef BIT_NET_H
#define BIT_NET_H

#include "arch.h"

typedef enum {
    ENG_PREC_F32 = 0,  /* exact float32: what the fixtures check */
    ENG_PREC_BF16 = 1, /* convolutions may compute in bfloat16 (AMX/AVX-512 BF16), f32 in/out */
} eng_precision;

typedef struct eng_net_opts {
    eng_precision precision;
    int max_plans; /* cached (batch, height, width) plans; 0 = 8 */
} eng_net_opts;

typedef struct eng_net eng_net;

/* Builds a net from a checkpoint whose architecture is a (see eng_arch_from_npz). Weight
 * standardisation happens here, once. The checkpoint may be freed afterwards. */
int eng_net_new(const eng_npz *ckpt, const eng_arch *a, const eng_net_opts *opts, eng_net **out,
                char *err, size_t errlen);
void eng_net_free(eng_net *net);
const eng_arch *eng_net_arch(const eng_net *net);
/* Output width: the head's classes, or the feature width when the checkpoint has no head. */
int eng_net_out_dim(const eng_net *net);

/* Intermediate results for tests and debugging: called with plain NCHW copies of the root
 * conv output ("root_conv"), after pooling ("root_pool"), after each block ("block1".."block4")
 * and the pooled features ("prelogits", c = feature width, h = w = 1). */
typedef void (*eng_tap_fn)(void *ud, const char *stage, const float *nchw, int n, int c, int h,
                           int w);

/* logits[n * out_dim] = net(input), input a float32 NCHW batch [n, 3, h, w] (h, w >= 32),
 * already normalised. Thread-safe; OpenMP threads come from the calling thread's budget. */
int eng_net_forward(eng_net *net, const float *input, int n, int h, int w, float *logits,
                    eng_tap_fn tap, void *tap_ud, char *err, size_t errlen);

#endif
