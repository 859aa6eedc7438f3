/* Where the engine's time goes, per kind of pass (bit bench --profile). A caller-owned
 * eng_prof is lent to a net or a trainer through its options; the engine only adds to it,
 * from the thread that drives it (passes are timed whole, after their threads joined). */
#ifndef BIT_PROF_H
#define BIT_PROF_H

#include <stdint.h>

#include "common.h"

typedef enum {
    ENG_OP_CONV_FWD,     /* oneDNN convolutions, forward */
    ENG_OP_CONV_BWD_DATA,
    ENG_OP_CONV_BWD_W,
    ENG_OP_GN_FWD,       /* GroupNorm statistics + fused ReLU apply (the final one with its pool) */
    ENG_OP_GN_RECOMPUTE, /* the backward pass's re-application of GN+ReLU */
    ENG_OP_GN_BWD,
    ENG_OP_POOL,         /* root max-pool, forward and backward */
    ENG_OP_HEAD,         /* the head's matrix product, loss and their gradients */
    ENG_OP_WS,           /* weight standardisation: statistics and the standardised copy */
    ENG_OP_SGD,          /* the update pass (with the WS backward folded into it) */
    ENG_OP_GRAD_SUM,     /* summing weight gradients over a step's micro-batches */
    ENG_OP_REORDER,      /* layout/precision changes: input, weight packing, gradient unpacking */
    ENG_OP_LOADER,       /* waiting for the data loader */
    ENG_OP_OTHER,        /* residual copies and adds */
    ENG_OP_N
} eng_op;

typedef struct eng_prof {
    double ms[ENG_OP_N];
    int64_t calls[ENG_OP_N];
} eng_prof;

/* The JSON key of an op kind ("conv_fwd", ...). */
const char *eng_prof_name(eng_op k);
static inline double eng_prof_start(const eng_prof *p) { return p ? eng_now_ms() : 0; }
static inline void eng_prof_stop(eng_prof *p, eng_op k, double t0)
{
    if (!p) return;
    p->ms[k] += eng_now_ms() - t0;
    p->calls[k]++;
}

/* Times one statement as op kind k when p is non-NULL. */
#define ENG_PROF(p, k, stmt)                                                                \
    do {                                                                                    \
        double t0_ = eng_prof_start(p);                                                     \
        stmt;                                                                               \
        eng_prof_stop((p), (k), t0_);                                                       \
    } while (0)

#endif
