/* oneDNN plumbing shared by the inference net and the trainer: error mapping, memory
 * objects registered for release, reorders, activation descriptors, attributes.
 * Internal to engine/; an eng_dnn_pool owns every memory object made through it. */
#ifndef BIT_DNN_H
#define BIT_DNN_H

#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl_debug.h>

#include "common.h"
#include "gn.h"

/* Runs a oneDNN call; on failure fills err/errlen, sets rc and jumps to fail. */
#define ENG_DN(call)                                                                    \
    do {                                                                                \
        dnnl_status_t st_ = (call);                                                     \
        if (st_ != dnnl_success) {                                                      \
            rc = eng_errf(err, errlen, ENG_EDNNL, "oneDNN: %s: %s", #call,              \
                          dnnl_status2str(st_));                                        \
            goto fail;                                                                  \
        }                                                                               \
    } while (0)

typedef struct eng_dnn_op {
    dnnl_primitive_t prim;
    int nargs;
    dnnl_exec_arg_t args[8];
} eng_dnn_op;

typedef struct eng_dnn_pool {
    dnnl_memory_t *mems;
    int n, cap;
    float **bufs; /* owned buffers (eng_alloc) */
    int nbufs, capbufs;
} eng_dnn_pool;

/* A memory object on md with handle h (NULL = set later), released with the pool. */
dnnl_memory_t eng_dnn_mem(eng_dnn_pool *p, dnnl_engine_t eng, const dnnl_memory_desc_t *md,
                          void *h);
/* A zeroed buffer released with the pool. */
void *eng_dnn_buf(eng_dnn_pool *p, size_t bytes);
/* One left as it is (pages untouched until used: oversized buffers cost no memory). */
void *eng_dnn_raw(eng_dnn_pool *p, size_t bytes);
void eng_dnn_pool_fini(eng_dnn_pool *p);
void eng_dnn_op_fini(eng_dnn_op *o);

/* One-off reorder between two layouts (weights packing, gradient unpacking). */
int eng_dnn_reorder(dnnl_engine_t eng, dnnl_stream_t s, const dnnl_memory_desc_t *smd, void *src,
                    const dnnl_memory_desc_t *dmd, void *dst, char *err, size_t errlen);
int eng_dnn_exec(dnnl_stream_t s, const eng_dnn_op *o, char *err, size_t errlen);

/* The oneDNN tag of an eng_layout's channel blocking (see gn.h). */
dnnl_format_tag_t eng_dnn_tag(int cblk, int c);
dnnl_data_type_t eng_dnn_dt(eng_act_type t);
int eng_dnn_act_md(dnnl_memory_desc_t *md, const eng_layout *l, eng_act_type t);
/* Attributes every primitive gets: user scratchpad and optionally an accumulating sum
 * post-op (the residual add). */
int eng_dnn_attr(int sum, dnnl_primitive_attr_t *attr);
/* A reorder primitive between two descriptors, made once and run many times. */
int eng_dnn_reorder_op(dnnl_engine_t eng, eng_dnn_pool *p, const dnnl_memory_desc_t *smd,
                       void *src, const dnnl_memory_desc_t *dmd, void *dst, eng_dnn_op *o,
                       char *err, size_t errlen);
/* Sets the scratchpad argument of op o (always its last argument) to buf. */
int eng_dnn_set_scratch(eng_dnn_op *o, void *buf);

#endif
