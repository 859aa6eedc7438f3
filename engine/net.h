/* The oneDNN inference engine for BiT ResNet-v2. An eng_net owns the standardised,
 * pre-packed weights and is shared read-only by any number of threads; for each input shape
 * it builds a plan (primitives + buffers) once, caches it, and lends it to one caller at a
 * time. Callers own inputs and outputs. */
#ifndef BIT_NET_H
#define BIT_NET_H

#include "arch.h"
#include "prof.h"

typedef enum {
    ENG_PREC_F32 = 0,  /* float32 throughout: what the fixtures check */
    ENG_PREC_BF16 = 1, /* bf16 weights and activations into oneDNN's bf16 kernels; f32
                          accumulation, statistics, residual stream, logits, master weights */
    ENG_PREC_AUTO = 2, /* bf16 where oneDNN dispatches to AVX512-BF16 or AMX, else f32 */
} eng_precision;

/* AUTO resolved for this CPU (as limited by ONEDNN_MAX_CPU_ISA); others unchanged. */
eng_precision eng_precision_resolve(eng_precision p);
const char *eng_precision_name(eng_precision p); /* "f32", "bf16", "auto" */
/* The instruction set oneDNN dispatches to ("avx512_core_bf16", "avx512_core_amx", ...). */
const char *eng_cpu_isa(void);

typedef struct eng_net_opts {
    eng_precision precision;
    int max_plans;  /* cached (batch, height, width, OpenMP threads) plans; 0 = 8 */
    eng_prof *prof; /* borrowed; time per pass kind is added here (one caller at a time) */
} eng_net_opts;

typedef struct eng_net eng_net;

/* Builds a net from a checkpoint whose architecture is a (see eng_arch_from_npz). Weight
 * standardisation happens here, once. The checkpoint may be freed afterwards. */
int eng_net_new(const eng_npz *ckpt, const eng_arch *a, const eng_net_opts *opts, eng_net **out,
                char *err, size_t errlen);
/* The one loader: checkpoint file -> architecture (arch_out, optional) -> net. */
int eng_net_load(const char *path, const eng_net_opts *opts, eng_net **out, eng_arch *arch_out,
                 char *err, size_t errlen);
void eng_net_free(eng_net *net);
const eng_arch *eng_net_arch(const eng_net *net);
/* The precision the net computes in (never AUTO). */
eng_precision eng_net_precision(const eng_net *net);
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
