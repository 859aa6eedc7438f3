/* BiT ResNet-v2 architectures and the official .npz schema: key names, expected shapes,
 * inference of the architecture from a checkpoint, the released names, size and FLOPs.
 * Everything here is pure computation on caller-owned values. */
#ifndef BIT_ARCH_H
#define BIT_ARCH_H

#include <stdint.h>

#include "npz.h"

#define ENG_GN_GROUPS 32
#define ENG_GN_EPS 1e-5
#define ENG_WS_EPS 1e-10
#define ENG_MIN_RES 32

typedef struct eng_arch {
    int units[4]; /* bottleneck units per block */
    int width;    /* root conv channels; block k has middle width width * 2^k */
    int head;     /* classes of the head; 0 = no head (features only) */
} eng_arch;

typedef enum { ENG_P_CONV, ENG_P_GAMMA, ENG_P_BETA, ENG_P_HEAD_W, ENG_P_HEAD_B } eng_pkind;

typedef struct eng_param {
    char key[96];
    eng_pkind kind;
    int ndim;
    int64_t shape[4];
} eng_param;

/* Calls fn for every parameter of arch in a fixed order (root, blocks, final GN, head). */
void eng_arch_params(const eng_arch *a, void (*fn)(const eng_param *p, void *ud), void *ud);
int64_t eng_arch_param_count(const eng_arch *a);
/* "R50x1" ... for the released shapes, else "custom". */
const char *eng_arch_name(const eng_arch *a);
/* Fills a from a released name ("R50x1", also "BiT-M-R50x1"); head as given. */
int eng_arch_by_name(const char *name, int head, eng_arch *a, char *err, size_t errlen);
/* Reads the architecture from the keys and shapes and checks every array it implies;
 * an error names the key and the expected shape. */
int eng_arch_from_npz(const eng_npz *z, eng_arch *a, char *err, size_t errlen);
int eng_arch_check(const eng_npz *z, const eng_arch *a, char *err, size_t errlen);
/* The architecture of a checkpoint file from its zip directory and .npy headers alone (no
 * weights read), every array's shape checked as eng_arch_from_npz does: cheap enough for
 * listings and readiness probes. A missing file is ENG_ENOTFOUND; messages name the file. */
int eng_arch_probe(const char *path, eng_arch *a, char *err, size_t errlen);

/* Output size of a convolution or pooling: floor((n + 2p - k) / s) + 1. */
static inline int eng_out_size(int n, int k, int s, int p) { return (n + 2 * p - k) / s + 1; }
/* Spatial size after the root (conv + pool) and after block k (0..3). */
void eng_arch_spatial(int h, int w, int hw_out[5][2]);
/* Multiply-adds times two of one forward pass of one image at h x w. */
double eng_arch_flops(const eng_arch *a, int h, int w);

/* Bytes one trainer needs for micro-batches of n images at h x w: parameters, momentum,
 * gradients and their standardised and packed copies, plus every activation training keeps
 * for backward. An upper estimate (calibrated against measured peak RSS) used to refuse or
 * split a job before it runs out of memory. */
uint64_t eng_arch_train_bytes(const eng_arch *a, int n, int h, int w);

/* A fresh checkpoint: He-normal kernels, GN gamma 1 / beta 0, head zero or random. */
int eng_arch_init(const eng_arch *a, uint64_t seed, int random_head, eng_npz **out,
                  char *err, size_t errlen);

#endif
