#include "net.h"

#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dnn.h"
#include "gn.h"

#define MAX_SIDE 8192

/* A standardised kernel. It stays plain OIHW until the first plan tells us the layout
 * oneDNN wants; then it is reordered once into that layout and the plain copy dropped. */
typedef struct conv_w {
    int kh, cin, cout, stride, pad, packed;
    dnnl_memory_desc_t md;
    void *data; /* f32 OIHW until packed, then in md's layout and type */
} conv_w;

typedef struct gn_w {
    float *gamma, *beta;
} gn_w;

typedef struct unit_w {
    int cin, mid, cout, stride, proj;
    gn_w ga, gb, gc;
    conv_w a, b, c, p;
} unit_w;

typedef eng_dnn_op op;

typedef struct unit_p {
    eng_layout in, mid_in, mid_out, out;
    void *x, *xo; /* residual stream in and out (equal unless the unit projects) */
    op a, b, c, p;
} unit_p;

/* Everything one (n, h, w) forward needs: primitives, buffers, a stream. One user at a time.
 * oneDNN's CPU primitives (OpenMP runtime) fix their team size when they are created and run
 * parallel regions with num_threads(that size) whatever omp_set_num_threads says later, so a
 * plan is also keyed by the caller's OpenMP thread count: a thread that shrinks its team
 * gets primitives built for the smaller team rather than oversubscribing the cores. */
typedef struct plan {
    int n, h, w, nthr, busy;
    uint64_t last_used;
    dnnl_stream_t stream;
    eng_layout lroot, lpool, lfinal;
    op root, head;
    unit_p *units;
    int nunits_built;
    void *bufs[6];    /* R, X0, X1 (residual stream), P, A, B */
    void *final_buf;  /* residual stream after the last unit */
    void *xin;        /* the input in bf16 (bf16 nets) */
    float *feat;      /* pooled features */
    uint16_t *featb;  /* and in bf16, the head's input (bf16 nets) */
    void *gnws;       /* GroupNorm workspace, sized for the largest layer */
    void *scratch;
    size_t scratch_bytes;
    eng_dnn_pool pool; /* memory objects and private weight copies */
    struct plan *next;
} plan;

struct eng_net {
    eng_arch arch;
    eng_net_opts opts;  /* precision resolved */
    eng_act_type at;    /* activations and weights of the convolutions and the head */
    eng_act_type rt;    /* the residual stream */
    dnnl_engine_t eng;
    conv_w root;
    unit_w *units;
    int nunits, feat;
    gn_w final;
    dnnl_memory_desc_t head_md;
    void *head_w;
    float *head_b;
    int head_packed;
    pthread_mutex_t mu;
    plan *plans;
    int nplans;
    uint64_t tick;
};

#define DN ENG_DN

/* ---------------------------------------------------------------- weights */

/* Weight Standardization of an HWIO kernel into plain OIHW: per output channel, mean and
 * biased variance over (kh, kw, in), (w - mean) / sqrt(var + 1e-10). Done once per load. */
static int conv_load(conv_w *cw, const eng_tensor *t, int stride)
{
    int kh = (int)t->shape[0], kw = (int)t->shape[1], cin = (int)t->shape[2];
    int cout = (int)t->shape[3], per = kh * kw * cin;
    const float *w = t->data;
    cw->kh = kh, cw->cin = cin, cw->cout = cout, cw->stride = stride, cw->pad = (kh - 1) / 2;
    float *ws = eng_alloc(sizeof(float) * (size_t)per * cout);
    if (!(cw->data = ws)) return ENG_ENOMEM;
    dnnl_dims_t dims = {cout, cin, kh, kw};
    if (dnnl_memory_desc_init_by_tag(&cw->md, 4, dims, dnnl_f32, dnnl_oihw) != dnnl_success)
        return ENG_EDNNL;
    #pragma omp parallel for schedule(static)
    for (int o = 0; o < cout; o++) {
        double m = 0, v = 0;
        for (int i = 0; i < per; i++) m += w[(int64_t)i * cout + o];
        m /= per;
        for (int i = 0; i < per; i++) {
            double d = w[(int64_t)i * cout + o] - m;
            v += d * d;
        }
        double r = 1.0 / sqrt(v / per + ENG_WS_EPS);
        for (int y = 0; y < kh; y++)
            for (int x = 0; x < kw; x++)
                for (int ci = 0; ci < cin; ci++) {
                    int64_t src = ((int64_t)(y * kw + x) * cin + ci) * cout + o;
                    int64_t dst = (((int64_t)o * cin + ci) * kh + y) * kw + x;
                    ws[dst] = (float)((w[src] - m) * r);
                }
    }
    return 0;
}

static int gn_load(gn_w *g, const eng_npz *z, const char *prefix)
{
    char k[128];
    snprintf(k, sizeof k, "%s/group_norm/gamma", prefix);
    const eng_tensor *ga = eng_npz_get(z, k);
    snprintf(k, sizeof k, "%s/group_norm/beta", prefix);
    const eng_tensor *be = eng_npz_get(z, k);
    size_t bytes = eng_tensor_bytes(ga);
    g->gamma = eng_alloc(bytes);
    g->beta = eng_alloc(bytes);
    if (!g->gamma || !g->beta) return ENG_ENOMEM;
    memcpy(g->gamma, ga->data, bytes);
    memcpy(g->beta, be->data, bytes);
    return 0;
}

static int unit_load(unit_w *u, const eng_npz *z, int block, int idx, int cin, int mid)
{
    char pre[64], k[128];
    snprintf(pre, sizeof pre, "resnet/block%d/unit%02d", block + 1, idx + 1);
    u->cin = cin, u->mid = mid, u->cout = 4 * mid;
    u->stride = idx == 0 && block > 0 ? 2 : 1;
    u->proj = idx == 0;
    static const char letters[] = "abc";
    gn_w *gns[] = {&u->ga, &u->gb, &u->gc};
    conv_w *convs[] = {&u->a, &u->b, &u->c};
    for (int i = 0; i < 3; i++) {
        snprintf(k, sizeof k, "%s/%c", pre, letters[i]);
        int rc = gn_load(gns[i], z, k);
        if (rc) return rc;
        snprintf(k, sizeof k, "%s/%c/standardized_conv2d/kernel", pre, letters[i]);
        if ((rc = conv_load(convs[i], eng_npz_get(z, k), i == 1 ? u->stride : 1))) return rc;
    }
    if (u->proj) {
        snprintf(k, sizeof k, "%s/a/proj/standardized_conv2d/kernel", pre);
        return conv_load(&u->p, eng_npz_get(z, k), u->stride);
    }
    return 0;
}

static int head_load(eng_net *net, const eng_npz *z)
{
    if (!net->arch.head) return 0;
    const eng_tensor *k = eng_npz_get(z, "resnet/head/conv2d/kernel");
    const eng_tensor *b = eng_npz_get(z, "resnet/head/conv2d/bias");
    int classes = net->arch.head, f = net->feat;
    /* HWIO [1, 1, F, classes] is the matrix [F][classes]: weights (o, i) at i * classes + o. */
    dnnl_dims_t dims = {classes, f}, strides = {1, classes};
    if (dnnl_memory_desc_init_by_strides(&net->head_md, 2, dims, dnnl_f32, strides))
        return ENG_EDNNL;
    net->head_w = eng_alloc(eng_tensor_bytes(k));
    net->head_b = eng_alloc(eng_tensor_bytes(b));
    if (!net->head_w || !net->head_b) return ENG_ENOMEM;
    memcpy(net->head_w, k->data, eng_tensor_bytes(k));
    memcpy(net->head_b, b->data, eng_tensor_bytes(b));
    return 0;
}

static void conv_free(conv_w *c) { eng_free(c->data); }
static void gn_free(gn_w *g) { eng_free(g->gamma), eng_free(g->beta); }
static void plan_free(plan *p);

int eng_net_load(const char *path, const eng_net_opts *opts, eng_net **out, eng_arch *arch_out,
                 char *err, size_t errlen)
{
    eng_npz *z = NULL;
    eng_arch a;
    *out = NULL;
    int rc = eng_npz_load(path, NULL, &z, err, errlen);
    if (!rc) rc = eng_arch_from_npz(z, &a, err, errlen);
    if (!rc) rc = eng_net_new(z, &a, opts, out, err, errlen);
    eng_npz_free(z);
    if (!rc && arch_out) *arch_out = a;
    return rc;
}

void eng_net_free(eng_net *net)
{
    if (!net) return;
    while (net->plans) {
        plan *p = net->plans;
        net->plans = p->next;
        plan_free(p);
    }
    conv_free(&net->root);
    for (int i = 0; i < net->nunits; i++) {
        unit_w *u = &net->units[i];
        gn_free(&u->ga), gn_free(&u->gb), gn_free(&u->gc);
        conv_free(&u->a), conv_free(&u->b), conv_free(&u->c), conv_free(&u->p);
    }
    free(net->units);
    gn_free(&net->final);
    eng_free(net->head_w);
    eng_free(net->head_b);
    if (net->eng) dnnl_engine_destroy(net->eng);
    pthread_mutex_destroy(&net->mu);
    free(net);
}

int eng_net_new(const eng_npz *ckpt, const eng_arch *a, const eng_net_opts *opts, eng_net **out,
                char *err, size_t errlen)
{
    *out = NULL;
    int rc = eng_arch_check(ckpt, a, err, errlen);
    if (rc) return rc;
    eng_net *net = calloc(1, sizeof *net);
    if (!net) return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    pthread_mutex_init(&net->mu, NULL);
    net->arch = *a;
    if (opts) net->opts = *opts;
    if (net->opts.max_plans <= 0) net->opts.max_plans = 8;
    net->opts.precision = eng_precision_resolve(net->opts.precision);
    net->at = net->opts.precision == ENG_PREC_BF16 ? ENG_ACT_BF16 : ENG_ACT_F32;
    net->rt = ENG_ACT_F32;
    net->feat = a->width * 32;
    DN(dnnl_engine_create(&net->eng, dnnl_cpu, 0));
    for (int b = 0; b < 4; b++) net->nunits += a->units[b];
    net->units = calloc((size_t)net->nunits, sizeof *net->units);
    if (!net->units) { rc = ENG_ENOMEM; goto oom; }
    if ((rc = conv_load(&net->root, eng_npz_get(ckpt, "resnet/root_block/standardized_conv2d/kernel"), 2)))
        goto oom;
    int cin = a->width, i = 0;
    for (int b = 0; b < 4; b++)
        for (int u = 0; u < a->units[b]; u++, i++) {
            if ((rc = unit_load(&net->units[i], ckpt, b, u, u ? 4 * (a->width << b) : cin,
                                a->width << b)))
                goto oom;
            cin = 4 * (a->width << b);
        }
    if ((rc = gn_load(&net->final, ckpt, "resnet")) || (rc = head_load(net, ckpt))) goto oom;
    *out = net;
    return 0;
oom:
    rc = eng_errf(err, errlen, rc, "cannot build the network: %s",
                  rc == ENG_EDNNL ? "oneDNN refused a descriptor" : "out of memory");
fail:
    eng_net_free(net);
    return rc;
}

const eng_arch *eng_net_arch(const eng_net *net) { return &net->arch; }
eng_precision eng_net_precision(const eng_net *net) { return net->opts.precision; }

eng_precision eng_precision_resolve(eng_precision p)
{
    if (p != ENG_PREC_AUTO) return p;
    unsigned isa = (unsigned)dnnl_get_effective_cpu_isa(), bf16 = dnnl_cpu_isa_avx512_core_bf16;
    return (isa & bf16) == bf16 ? ENG_PREC_BF16 : ENG_PREC_F32; /* AMX's bits include these */
}

const char *eng_precision_name(eng_precision p)
{
    return p == ENG_PREC_BF16 ? "bf16" : p == ENG_PREC_AUTO ? "auto" : "f32";
}

const char *eng_cpu_isa(void)
{
    switch (dnnl_get_effective_cpu_isa()) {
    case dnnl_cpu_isa_sse41: return "sse41";
    case dnnl_cpu_isa_avx: return "avx";
    case dnnl_cpu_isa_avx2: return "avx2";
    case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni";
    case dnnl_cpu_isa_avx512_mic: return "avx512_mic";
    case dnnl_cpu_isa_avx512_mic_4ops: return "avx512_mic_4ops";
    case dnnl_cpu_isa_avx512_core: return "avx512_core";
    case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx";
    default: return "other";
    }
}
int eng_net_out_dim(const eng_net *net) { return net->arch.head ? net->arch.head : net->feat; }

/* ---------------------------------------------------------------- plans */

/* Weights in the layout `want`: the shared copy (packed into `want` on first use, under the
 * net's lock), or a private reorder when this shape prefers another layout. */
static int weights_for(eng_net *net, plan *p, dnnl_memory_desc_t *md, void **data, int *packed,
                       const dnnl_memory_desc_t *want, void **use, char *err, size_t errlen)
{
    int first = !*packed;
    *packed = 1;
    if (dnnl_memory_desc_equal(md, want)) {
        *use = *data;
        return 0;
    }
    int plain = first;
    size_t bytes = dnnl_memory_desc_get_size(want);
    void *dst = plain ? eng_alloc(bytes) : eng_dnn_buf(&p->pool, bytes);
    if (!dst) return eng_errf(err, errlen, ENG_ENOMEM, "out of memory packing weights");
    int rc = eng_dnn_reorder(net->eng, NULL, md, *data, want, dst, err, errlen);
    if (rc) {
        if (plain) eng_free(dst);
        return rc;
    }
    if (plain) { /* first plan: the packed copy becomes the shared one */
        eng_free(*data);
        *data = dst;
        *md = *want;
    }
    *use = dst;
    return 0;
}

/* Finishes an op from its primitive descriptor: weights, memories, scratchpad size. */
static int op_finish(eng_net *net, plan *p, dnnl_primitive_desc_t pd, op *o, void *src,
                     dnnl_memory_desc_t *wmd, void **wdata, int *packed, void *dst,
                     const dnnl_memory_desc_t *bias_md, void *bias, char *err, size_t errlen)
{
    int rc = 0;
    void *w = NULL;
    const dnnl_memory_desc_t *want = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    const dnnl_memory_desc_t *smd = dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0);
    const dnnl_memory_desc_t *dmd = dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
    const dnnl_memory_desc_t *pmd = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    if ((rc = weights_for(net, p, wmd, wdata, packed, want, &w, err, errlen))) return rc;
    size_t sb = dnnl_memory_desc_get_size(pmd);
    if (sb > p->scratch_bytes) p->scratch_bytes = sb;
    o->nargs = 0;
    o->args[o->nargs++] = (dnnl_exec_arg_t){DNNL_ARG_SRC, eng_dnn_mem(&p->pool, net->eng, smd, src)};
    o->args[o->nargs++] = (dnnl_exec_arg_t){DNNL_ARG_WEIGHTS, eng_dnn_mem(&p->pool, net->eng, want, w)};
    o->args[o->nargs++] = (dnnl_exec_arg_t){DNNL_ARG_DST, eng_dnn_mem(&p->pool, net->eng, dmd, dst)};
    if (bias_md)
        o->args[o->nargs++] =
            (dnnl_exec_arg_t){DNNL_ARG_BIAS, eng_dnn_mem(&p->pool, net->eng, bias_md, bias)};
    /* the scratchpad is always last: eng_dnn_set_scratch relies on it */
    o->args[o->nargs++] =
        (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, eng_dnn_mem(&p->pool, net->eng, pmd, NULL)};
    for (int i = 0; i < o->nargs; i++)
        if (!o->args[i].memory) return eng_errf(err, errlen, ENG_EDNNL, "oneDNN: memory");
    DN(dnnl_primitive_create(&o->prim, pd));
fail:
    return rc;
}

static int conv_op(eng_net *net, plan *p, conv_w *cw, const dnnl_memory_desc_t *smd, void *src,
                   const dnnl_memory_desc_t *dmd, void *dst, int sum, op *o,
                   dnnl_memory_desc_t *chosen_dst, char *err, size_t errlen)
{
    int rc = 0;
    dnnl_memory_desc_t wany;
    dnnl_convolution_desc_t cd;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_dims_t wd = {cw->cout, cw->cin, cw->kh, cw->kh}, st = {cw->stride, cw->stride},
                pad = {cw->pad, cw->pad};
    DN(dnnl_memory_desc_init_by_tag(&wany, 4, wd, eng_dnn_dt(net->at), dnnl_format_tag_any));
    DN(dnnl_convolution_forward_desc_init(&cd, dnnl_forward_inference, dnnl_convolution_direct, smd,
                                          &wany, NULL, dmd, st, pad, pad));
    if (eng_dnn_attr(sum, &attr)) {
        rc = eng_errf(err, errlen, ENG_EDNNL, "oneDNN: attributes refused");
        goto fail;
    }
    DN(dnnl_primitive_desc_create(&pd, &cd, attr, net->eng, NULL));
    if (chosen_dst) *chosen_dst = *dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
    if (src || dst)
        rc = op_finish(net, p, pd, o, src, &cw->md, &cw->data, &cw->packed, dst, NULL, NULL, err,
                       errlen);
fail:
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (attr) dnnl_primitive_attr_destroy(attr);
    return rc;
}

/* The activation layout is whatever oneDNN picks for the root convolution's output; every
 * later layer is then created on that same layout, so no reorder ever runs between layers. */
static int choose_cblk(eng_net *net, plan *p, const dnnl_memory_desc_t *in_md, char *err,
                       size_t errlen)
{
    dnnl_memory_desc_t any, got;
    dnnl_dims_t d = {p->lroot.n, p->lroot.c, p->lroot.h, p->lroot.w};
    int rc = dnnl_memory_desc_init_by_tag(&any, 4, d, eng_dnn_dt(net->at), dnnl_format_tag_any)
                 ? ENG_EDNNL
                 : 0;
    if (rc || (rc = conv_op(net, p, &net->root, in_md, NULL, &any, NULL, 0, NULL, &got, err,
                            errlen)))
        return rc ? rc : eng_errf(err, errlen, ENG_EDNNL, "oneDNN: bad root descriptor");
    int options[] = {16, 8, 1, p->lroot.c};
    for (int i = 0; i < 4; i++) {
        dnnl_memory_desc_t cand;
        eng_layout l = p->lroot;
        l.cblk = options[i];
        if (eng_dnn_act_md(&cand, &l, net->at) == 0 && dnnl_memory_desc_equal(&cand, &got))
            return options[i];
    }
    return 16; /* an unexpected pick: impose the usual AVX-512 layout */
}

static eng_layout lay(int n, int c, int h, int w, int cblk)
{
    return (eng_layout){n, c, h, w, cblk == -1 ? c : cblk};
}

/* The head: bf16 (or f32) features and weights, f32 bias and logits. */
static int head_op(eng_net *net, plan *p, char *err, size_t errlen)
{
    int rc = 0, n = p->n, f = net->feat, k = net->arch.head;
    dnnl_memory_desc_t smd, wany, bmd, dmd;
    dnnl_inner_product_desc_t ipd;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_dims_t sd = {n, f}, wd = {k, f}, bd = {k}, dd = {n, k};
    DN(dnnl_memory_desc_init_by_tag(&smd, 2, sd, eng_dnn_dt(net->at), dnnl_nc));
    DN(dnnl_memory_desc_init_by_tag(&wany, 2, wd, eng_dnn_dt(net->at), dnnl_format_tag_any));
    DN(dnnl_memory_desc_init_by_tag(&bmd, 1, bd, dnnl_f32, dnnl_x));
    DN(dnnl_memory_desc_init_by_tag(&dmd, 2, dd, dnnl_f32, dnnl_nc));
    DN(dnnl_inner_product_forward_desc_init(&ipd, dnnl_forward_inference, &smd, &wany, &bmd, &dmd));
    if (eng_dnn_attr(0, &attr)) {
        rc = eng_errf(err, errlen, ENG_EDNNL, "oneDNN: attributes refused");
        goto fail;
    }
    DN(dnnl_primitive_desc_create(&pd, &ipd, attr, net->eng, NULL));
    void *src = net->at == ENG_ACT_BF16 ? (void *)p->featb : (void *)p->feat;
    rc = op_finish(net, p, pd, &p->head, src, &net->head_md, &net->head_w, &net->head_packed,
                   NULL, &bmd, net->head_b, err, errlen);
fail:
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (attr) dnnl_primitive_attr_destroy(attr);
    return rc;
}

static void plan_free(plan *p)
{
    if (!p) return;
    eng_dnn_op_fini(&p->root);
    eng_dnn_op_fini(&p->head);
    for (int u = 0; p->units && u < p->nunits_built; u++) {
        unit_p *up = &p->units[u];
        eng_dnn_op_fini(&up->a), eng_dnn_op_fini(&up->b);
        eng_dnn_op_fini(&up->c), eng_dnn_op_fini(&up->p);
    }
    free(p->units);
    eng_dnn_pool_fini(&p->pool);
    if (p->stream) dnnl_stream_destroy(p->stream);
    free(p);
}

static size_t max_size(size_t a, size_t b) { return a > b ? a : b; }
static size_t act_bytes(const eng_layout *l, eng_act_type t)
{
    return (size_t)eng_layout_size(l) * (t == ENG_ACT_BF16 ? 2 : 4);
}

/* Shapes of every unit and the bytes each buffer role needs: R, X0, X1, P, A, B, then the
 * GroupNorm workspace. */
static void plan_shapes(const eng_net *net, plan *p, int blk, size_t need[7])
{
    int hw[5][2];
    eng_arch_spatial(p->h, p->w, hw);
    int n = p->n, H = hw[0][0], W = hw[0][1], i = 0;
    eng_act_type at = net->at, rt = net->rt;
    size_t x = act_bytes(&p->lpool, rt);
    p->lfinal = lay(n, net->feat, hw[4][0], hw[4][1], blk);
    need[0] = act_bytes(&p->lroot, at);
    need[3] = need[4] = need[5] = 0;
    need[6] = eng_gn_ws_bytes(&p->lfinal);
    for (int b = 0; b < 4; b++)
        for (int u = 0; u < net->arch.units[b]; u++, i++) {
            const unit_w *uw = &net->units[i];
            unit_p *up = &p->units[i];
            int oh = hw[b][0], ow = hw[b][1];
            up->in = lay(n, uw->cin, H, W, blk);
            up->mid_in = lay(n, uw->mid, H, W, blk);
            up->mid_out = lay(n, uw->mid, oh, ow, blk);
            up->out = lay(n, uw->cout, oh, ow, blk);
            H = oh, W = ow;
            x = max_size(x, max_size(act_bytes(&up->in, rt), act_bytes(&up->out, rt)));
            need[3] = max_size(need[3], act_bytes(&up->in, at));
            need[4] = max_size(need[4], act_bytes(&up->mid_in, at));
            need[5] = max_size(need[5], act_bytes(&up->mid_out, at));
            need[6] = max_size(need[6], max_size(eng_gn_ws_bytes(&up->in),
                                                 eng_gn_ws_bytes(&up->mid_in)));
        }
    need[1] = need[2] = x;
}

static int unit_ops(eng_net *net, plan *p, int i, void **cur, char *err, size_t errlen)
{
    unit_w *uw = &net->units[i];
    unit_p *up = &p->units[i];
    dnnl_memory_desc_t m_in, m_mi, m_mo, m_out;
    int rc = eng_dnn_act_md(&m_in, &up->in, net->at);
    if (!rc) rc = eng_dnn_act_md(&m_mi, &up->mid_in, net->at);
    if (!rc) rc = eng_dnn_act_md(&m_mo, &up->mid_out, net->at);
    if (!rc) rc = eng_dnn_act_md(&m_out, &up->out, net->rt);
    if (rc) return eng_errf(err, errlen, rc, "oneDNN: activation descriptor refused");
    void *P = p->bufs[3], *A = p->bufs[4], *B = p->bufs[5];
    up->x = *cur;
    up->xo = uw->proj ? (*cur == p->bufs[1] ? p->bufs[2] : p->bufs[1]) : *cur;
    if ((uw->proj && (rc = conv_op(net, p, &uw->p, &m_in, P, &m_out, up->xo, 0, &up->p, NULL, err,
                                   errlen))) ||
        (rc = conv_op(net, p, &uw->a, &m_in, P, &m_mi, A, 0, &up->a, NULL, err, errlen)) ||
        (rc = conv_op(net, p, &uw->b, &m_mi, A, &m_mo, B, 0, &up->b, NULL, err, errlen)) ||
        (rc = conv_op(net, p, &uw->c, &m_mo, B, &m_out, up->xo, 1, &up->c, NULL, err, errlen)))
        return rc;
    *cur = up->xo;
    return 0;
}

/* Buffers of a plan, all from its pool. */
static int plan_buffers(const eng_net *net, plan *p, const size_t need[7])
{
    int bf = net->at == ENG_ACT_BF16;
    for (int i = 0; i < 6; i++) /* every buffer is written before it is read */
        if (!(p->bufs[i] = eng_dnn_raw(&p->pool, need[i]))) return ENG_ENOMEM;
    p->feat = eng_dnn_raw(&p->pool, sizeof(float) * (size_t)p->n * net->feat);
    p->featb = bf ? eng_dnn_raw(&p->pool, 2 * (size_t)p->n * net->feat) : NULL;
    p->xin = bf ? eng_dnn_raw(&p->pool, 2 * (size_t)p->n * 3 * p->h * p->w) : NULL;
    p->gnws = eng_dnn_raw(&p->pool, need[6]);
    return p->feat && p->gnws && (!bf || (p->featb && p->xin)) ? 0 : ENG_ENOMEM;
}

static int plan_build(eng_net *net, int n, int h, int w, plan **out, char *err, size_t errlen)
{
    int rc = 0;
    plan *p = calloc(1, sizeof *p);
    if (!p || !(p->units = calloc((size_t)net->nunits, sizeof *p->units))) goto oom;
    p->n = n, p->h = h, p->w = w;
    DN(dnnl_stream_create(&p->stream, net->eng, dnnl_stream_default_flags));
    int rh = eng_out_size(h, 7, 2, 3), rw = eng_out_size(w, 7, 2, 3);
    p->lroot = lay(n, net->arch.width, rh, rw, 1);
    dnnl_memory_desc_t in_md, root_md;
    eng_layout lin = {n, 3, h, w, 1};
    if ((rc = eng_dnn_act_md(&in_md, &lin, net->at))) goto fail;
    int blk = choose_cblk(net, p, &in_md, err, errlen);
    if (blk < 0) { rc = blk; goto fail; }
    if (blk == net->arch.width && blk != 16 && blk != 8) blk = -1; /* NHWC: block = all channels */
    p->lroot = lay(n, net->arch.width, rh, rw, blk);
    p->lpool = lay(n, net->arch.width, eng_out_size(rh, 3, 2, 1), eng_out_size(rw, 3, 2, 1), blk);
    size_t need[7];
    plan_shapes(net, p, blk, need);
    if (plan_buffers(net, p, need)) goto oom;
    if ((rc = eng_dnn_act_md(&root_md, &p->lroot, net->at))) goto fail;
    if ((rc = conv_op(net, p, &net->root, &in_md, p->xin, &root_md, p->bufs[0], 0, &p->root, NULL,
                      err, errlen)))
        goto fail;
    void *cur = p->bufs[1];
    for (int i = 0; i < net->nunits; i++) {
        p->nunits_built = i + 1;
        if ((rc = unit_ops(net, p, i, &cur, err, errlen))) goto fail;
    }
    p->final_buf = cur;
    if (net->arch.head && (rc = head_op(net, p, err, errlen))) goto fail;
    if (!(p->scratch = eng_dnn_raw(&p->pool, p->scratch_bytes))) goto oom;
    int bad = eng_dnn_set_scratch(&p->root, p->scratch) || eng_dnn_set_scratch(&p->head, p->scratch);
    for (int u = 0; u < net->nunits; u++) {
        unit_p *up = &p->units[u];
        bad |= eng_dnn_set_scratch(&up->a, p->scratch) || eng_dnn_set_scratch(&up->b, p->scratch) ||
               eng_dnn_set_scratch(&up->c, p->scratch) || eng_dnn_set_scratch(&up->p, p->scratch);
    }
    if (bad) {
        rc = eng_errf(err, errlen, ENG_EDNNL, "oneDNN: cannot attach the scratchpad");
        goto fail;
    }
    *out = p;
    return 0;
oom:
    rc = eng_errf(err, errlen, ENG_ENOMEM, "out of memory building a %dx%dx%d plan", n, h, w);
fail:
    plan_free(p);
    return rc;
}

/* ---------------------------------------------------------------- forward */

static plan *plan_acquire(eng_net *net, int n, int h, int w, char *err, size_t errlen, int *rc)
{
    int nthr = omp_get_max_threads();
    pthread_mutex_lock(&net->mu);
    plan *p, *lru = NULL, **lru_link = NULL;
    for (plan **link = &net->plans; (p = *link); link = &p->next) {
        if (!p->busy && p->n == n && p->h == h && p->w == w && p->nthr == nthr) break;
        if (!p->busy && (!lru || p->last_used < lru->last_used)) lru = p, lru_link = link;
    }
    if (!p) {
        if (net->nplans >= net->opts.max_plans && lru) { /* evict the least recently used */
            *lru_link = lru->next;
            plan_free(lru);
            net->nplans--;
        }
        /* Built under the lock: weights are packed on first use and shared by all plans. */
        *rc = plan_build(net, n, h, w, &p, err, errlen);
        if (*rc) {
            pthread_mutex_unlock(&net->mu);
            return NULL;
        }
        p->nthr = nthr;
        p->next = net->plans;
        net->plans = p;
        net->nplans++;
    }
    p->busy = 1;
    p->last_used = ++net->tick;
    pthread_mutex_unlock(&net->mu);
    return p;
}

static void plan_release(eng_net *net, plan *p)
{
    pthread_mutex_lock(&net->mu);
    p->busy = 0;
    pthread_mutex_unlock(&net->mu);
}

static int run(const eng_net *net, const plan *p, const op *o, char *err, size_t errlen)
{
    int rc;
    ENG_PROF(net->opts.prof, ENG_OP_CONV_FWD, rc = eng_dnn_exec(p->stream, o, err, errlen));
    return rc;
}

static void tap_layout(eng_tap_fn tap, void *ud, const char *stage, const eng_layout *l,
                       eng_buf data)
{
    float *plain = malloc(sizeof(float) * (size_t)eng_layout_size(l));
    if (!plain) return;
    eng_layout_to_nchw(l, data, plain);
    tap(ud, stage, plain, l->n, l->c, l->h, l->w);
    free(plain);
}

static void gn(const eng_net *net, const plan *p, const eng_layout *l, eng_buf src, eng_buf dst,
               const gn_w *g)
{
    ENG_PROF(net->opts.prof, ENG_OP_GN_FWD,
             eng_gn_relu(l, src, dst, (eng_buf){0}, g->gamma, g->beta, NULL, NULL, p->gnws));
}

static int unit_run(const eng_net *net, const plan *p, int i, char *err, size_t errlen)
{
    const unit_w *uw = &net->units[i];
    const unit_p *up = &p->units[i];
    eng_buf P = {p->bufs[3], net->at}, A = {p->bufs[4], net->at}, B = {p->bufs[5], net->at};
    gn(net, p, &up->in, (eng_buf){up->x, net->rt}, P, &uw->ga);
    int rc = uw->proj ? run(net, p, &up->p, err, errlen) : 0;
    if (!rc) rc = run(net, p, &up->a, err, errlen);
    if (rc) return rc;
    gn(net, p, &up->mid_in, A, A, &uw->gb);
    if ((rc = run(net, p, &up->b, err, errlen))) return rc;
    gn(net, p, &up->mid_out, B, B, &uw->gc);
    return run(net, p, &up->c, err, errlen);
}

static int plan_run(const eng_net *net, plan *p, const float *input, float *logits,
                    eng_tap_fn tap, void *ud, char *err, size_t errlen)
{
    int rc = 0;
    eng_prof *pr = net->opts.prof;
    if (p->xin) /* bf16 nets: the input rounded once, in its plain layout */
        ENG_PROF(pr, ENG_OP_REORDER, eng_simd_get()->convert(input, ENG_ACT_F32, p->xin, ENG_ACT_BF16,
                                                             (int64_t)p->n * 3 * p->h * p->w));
    else
        DN(dnnl_memory_set_data_handle(p->root.args[0].memory, (void *)input));
    if ((rc = run(net, p, &p->root, err, errlen))) goto fail;
    eng_buf R = {p->bufs[0], net->at}, X0 = {p->bufs[1], net->rt};
    if (tap) tap_layout(tap, ud, "root_conv", &p->lroot, R);
    ENG_PROF(pr, ENG_OP_POOL, eng_pool_root(&p->lroot, R, &p->lpool, X0));
    if (tap) tap_layout(tap, ud, "root_pool", &p->lpool, X0);
    for (int b = 0, i = 0; b < 4; b++) {
        for (int u = 0; u < net->arch.units[b]; u++, i++)
            if ((rc = unit_run(net, p, i, err, errlen))) goto fail;
        static const char *names[] = {"block1", "block2", "block3", "block4"};
        if (tap) tap_layout(tap, ud, names[b], &p->units[i - 1].out, (eng_buf){p->units[i - 1].xo, net->rt});
    }
    ENG_PROF(pr, ENG_OP_GN_FWD,
             eng_gn_relu_pool(&p->lfinal, (eng_buf){p->final_buf, net->rt}, p->feat, p->featb,
                              net->final.gamma, net->final.beta, NULL, NULL, p->gnws));
    if (tap) tap(ud, "prelogits", p->feat, p->n, net->feat, 1, 1);
    if (!net->arch.head) {
        memcpy(logits, p->feat, sizeof(float) * (size_t)p->n * net->feat);
        return 0;
    }
    DN(dnnl_memory_set_data_handle(p->head.args[2].memory, logits));
    ENG_PROF(pr, ENG_OP_HEAD, rc = eng_dnn_exec(p->stream, &p->head, err, errlen));
fail:
    return rc;
}

int eng_net_forward(eng_net *net, const float *input, int n, int h, int w, float *logits,
                    eng_tap_fn tap, void *tap_ud, char *err, size_t errlen)
{
    if (n < 1 || n > 65536 || h < ENG_MIN_RES || w < ENG_MIN_RES || h > MAX_SIDE || w > MAX_SIDE)
        return eng_errf(err, errlen, ENG_EINVAL,
                        "input must be [n, 3, h, w] with 1 <= n <= 65536 and %d <= h, w <= %d "
                        "(got n=%d, h=%d, w=%d)", ENG_MIN_RES, MAX_SIDE, n, h, w);
    int rc = 0;
    plan *p = plan_acquire(net, n, h, w, err, errlen, &rc);
    if (!p) return rc;
    rc = plan_run(net, p, input, logits, tap, tap_ud, err, errlen);
    plan_release(net, p);
    return rc;
}
