#include "dnn.h"

#include <stdlib.h>
#include <string.h>

dnnl_memory_t eng_dnn_mem(eng_dnn_pool *p, dnnl_engine_t eng, const dnnl_memory_desc_t *md,
                          void *h)
{
    if (p->n == p->cap) {
        int cap = p->cap ? 2 * p->cap : 64;
        dnnl_memory_t *m = realloc(p->mems, sizeof *m * (size_t)cap);
        if (!m) return NULL;
        p->mems = m, p->cap = cap;
    }
    dnnl_memory_t mem = NULL;
    if (dnnl_memory_create(&mem, md, eng, h ? h : DNNL_MEMORY_NONE) != dnnl_success) return NULL;
    p->mems[p->n++] = mem;
    return mem;
}

void *eng_dnn_raw(eng_dnn_pool *p, size_t bytes)
{
    if (p->nbufs == p->capbufs) {
        int cap = p->capbufs ? 2 * p->capbufs : 16;
        float **o = realloc(p->bufs, sizeof *o * (size_t)cap);
        if (!o) return NULL;
        p->bufs = o, p->capbufs = cap;
    }
    float *b = eng_alloc(bytes ? bytes : 64);
    if (b) p->bufs[p->nbufs++] = b;
    return b;
}

void *eng_dnn_buf(eng_dnn_pool *p, size_t bytes)
{
    void *b = eng_dnn_raw(p, bytes);
    if (b) memset(b, 0, bytes);
    return b;
}

void eng_dnn_pool_fini(eng_dnn_pool *p)
{
    for (int i = 0; i < p->n; i++) dnnl_memory_destroy(p->mems[i]);
    for (int i = 0; i < p->nbufs; i++) eng_free(p->bufs[i]);
    free(p->mems);
    free(p->bufs);
    memset(p, 0, sizeof *p);
}

void eng_dnn_op_fini(eng_dnn_op *o)
{
    if (o->prim) dnnl_primitive_destroy(o->prim);
    o->prim = NULL;
}

int eng_dnn_reorder(dnnl_engine_t eng, dnnl_stream_t stream, const dnnl_memory_desc_t *smd,
                    void *src, const dnnl_memory_desc_t *dmd, void *dst, char *err, size_t errlen)
{
    int rc = 0;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_t prim = NULL;
    dnnl_memory_t ms = NULL, md = NULL;
    dnnl_stream_t s = stream;
    ENG_DN(dnnl_reorder_primitive_desc_create(&pd, smd, eng, dmd, eng, NULL));
    ENG_DN(dnnl_primitive_create(&prim, pd));
    ENG_DN(dnnl_memory_create(&ms, smd, eng, src));
    ENG_DN(dnnl_memory_create(&md, dmd, eng, dst));
    if (!s) ENG_DN(dnnl_stream_create(&s, eng, dnnl_stream_default_flags));
    dnnl_exec_arg_t args[] = {{DNNL_ARG_FROM, ms}, {DNNL_ARG_TO, md}};
    ENG_DN(dnnl_primitive_execute(prim, s, 2, args));
    ENG_DN(dnnl_stream_wait(s));
fail:
    if (s && !stream) dnnl_stream_destroy(s);
    if (ms) dnnl_memory_destroy(ms);
    if (md) dnnl_memory_destroy(md);
    if (prim) dnnl_primitive_destroy(prim);
    if (pd) dnnl_primitive_desc_destroy(pd);
    return rc;
}

int eng_dnn_exec(dnnl_stream_t s, const eng_dnn_op *o, char *err, size_t errlen)
{
    int rc = 0;
    ENG_DN(dnnl_primitive_execute(o->prim, s, o->nargs, o->args));
    ENG_DN(dnnl_stream_wait(s));
fail:
    return rc;
}

dnnl_format_tag_t eng_dnn_tag(int cblk, int c)
{
    if (cblk == 16) return dnnl_nChw16c;
    if (cblk == 8) return dnnl_nChw8c;
    return cblk == 1 ? dnnl_nchw : (cblk == c ? dnnl_nhwc : dnnl_format_tag_undef);
}

dnnl_data_type_t eng_dnn_dt(eng_act_type t) { return t == ENG_ACT_BF16 ? dnnl_bf16 : dnnl_f32; }

int eng_dnn_act_md(dnnl_memory_desc_t *md, const eng_layout *l, eng_act_type t)
{
    dnnl_dims_t d = {l->n, l->c, l->h, l->w};
    return dnnl_memory_desc_init_by_tag(md, 4, d, eng_dnn_dt(t), eng_dnn_tag(l->cblk, l->c)) ==
                   dnnl_success
               ? 0
               : ENG_EDNNL;
}

int eng_dnn_reorder_op(dnnl_engine_t eng, eng_dnn_pool *p, const dnnl_memory_desc_t *smd,
                       void *src, const dnnl_memory_desc_t *dmd, void *dst, eng_dnn_op *o,
                       char *err, size_t errlen)
{
    int rc = 0;
    dnnl_primitive_desc_t pd = NULL;
    ENG_DN(dnnl_reorder_primitive_desc_create(&pd, smd, eng, dmd, eng, NULL));
    ENG_DN(dnnl_primitive_create(&o->prim, pd));
    o->nargs = 2;
    o->args[0] = (dnnl_exec_arg_t){DNNL_ARG_FROM, eng_dnn_mem(p, eng, smd, src)};
    o->args[1] = (dnnl_exec_arg_t){DNNL_ARG_TO, eng_dnn_mem(p, eng, dmd, dst)};
    if (!o->args[0].memory || !o->args[1].memory)
        rc = eng_errf(err, errlen, ENG_ENOMEM, "out of memory for a reorder");
fail:
    if (pd) dnnl_primitive_desc_destroy(pd);
    return rc;
}

int eng_dnn_attr(int sum, dnnl_primitive_attr_t *attr)
{
    dnnl_post_ops_t po = NULL;
    *attr = NULL;
    if (dnnl_primitive_attr_create(attr)) return ENG_EDNNL;
    if (dnnl_primitive_attr_set_scratchpad_mode(*attr, dnnl_scratchpad_mode_user)) goto fail;
    if (!sum) return 0;
    int bad = dnnl_post_ops_create(&po) || dnnl_post_ops_append_sum(po, 1.0f) ||
              dnnl_primitive_attr_set_post_ops(*attr, po);
    dnnl_post_ops_destroy(po);
    if (!bad) return 0;
fail:
    dnnl_primitive_attr_destroy(*attr);
    *attr = NULL;
    return ENG_EDNNL;
}

int eng_dnn_set_scratch(eng_dnn_op *o, void *buf)
{
    if (!o->prim) return 0;
    return dnnl_memory_set_data_handle(o->args[o->nargs - 1].memory, buf) == dnnl_success
               ? 0
               : ENG_EDNNL;
}
