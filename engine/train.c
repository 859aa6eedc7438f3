#include "train.h"

#include <math.h>
#include <omp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dnn.h"
#include "gn.h"
#include "wstd.h"

#define DN ENG_DN
#define G ENG_GN_GROUPS

typedef struct tparam {
    eng_param p;
    int64_t n;
    float *w, *g, *m; /* value, gradient, momentum buffer (official layout, e.g. HWIO) */
} tparam;

/* A convolution with its primitives. The raw kernel and its momentum live in its tparam;
 * ws.out is its standardisation (plain HWIO, in the activation type), refreshed after every
 * update and packed for the forward (wf) and backward-data (wb) primitives. Weight gradients
 * are summed over a step's micro-batches in oneDNN's own layout (dwacc) and unpacked (dws)
 * once per step: the standardisation's gradient is linear, so it is taken once, in the
 * update pass. */
typedef struct tconv {
    tparam *par;
    int kh, cin, cout, stride, pad;
    eng_wstd ws;
    dnnl_memory_desc_t plain, dplain, fwd_wmd, bwd_wmd, dif_wmd;
    void *wf, *wb;
    float *dwp, *dwacc, *dws; /* dws: unpacked, only when dwacc's layout is not readable */
    int64_t *goff;            /* else: where each kernel row's channels sit in dwacc */
    size_t dw_n;
    int nacc; /* micro-batches summed in dwacc since the last update */
    eng_dnn_op fwd, bwdd, bwdw, pack_f, pack_b, unpack;
} tconv;

typedef struct tunit {
    int proj;
    tparam *ga, *ba, *gb, *bb, *gc, *bc;
    tconv a, b, c, p;
    eng_layout in, mid_in, mid_out, out;
    void *x, *xo, *araw, *braw;       /* residual stream in/out; raw outputs of convs a, b */
    float *st_a, *st_b, *st_c;        /* GroupNorm statistics: mean [n*32] then rstd [n*32] */
} tunit;

/* Element types: at for what the convolutions read and write (and backward-weights' inputs),
 * rt for the residual stream, gt for backward-data's outputs. In bf16, the residual gradient
 * is kept in f32 (dX) with a bf16 copy (dXb) for the convolutions. */
struct eng_trainer {
    eng_arch arch;
    eng_train_opts o; /* precision resolved */
    eng_act_type at, rt, gt;
    dnnl_engine_t eng;
    dnnl_stream_t s;
    tparam *params;
    int np, nu, feat, classes, threads;
    tconv root;
    tunit *units;
    tparam *gf, *bf, *hw, *hb;
    eng_layout lin, lroot, lpool, lfinal;
    void *xin, *R, *dR, **X, *T, *dT, *dT2, *dRaw;
    float *dX[2];
    uint16_t *dXb[2];
    float *featv, *dfeat, *logits, *st_f;
    void *gnws, *poolws;
    double *part;
    void *scratch;
    size_t scratch_bytes;
    eng_dnn_pool pool;
};

/* ---------------------------------------------------------------- parameters */

typedef struct collect_ctx {
    eng_trainer *t;
    const eng_npz *z;
    int rc;
} collect_ctx;

static void collect_cb(const eng_param *p, void *ud)
{
    collect_ctx *c = ud;
    tparam *tp = &c->t->params[c->t->np++];
    tp->p = *p;
    tp->n = 1;
    for (int i = 0; i < p->ndim; i++) tp->n *= p->shape[i];
    size_t bytes = sizeof(float) * (size_t)tp->n;
    tp->w = eng_dnn_buf(&c->t->pool, bytes);
    tp->g = eng_dnn_buf(&c->t->pool, bytes);
    tp->m = eng_dnn_buf(&c->t->pool, bytes);
    if (!tp->w || !tp->g || !tp->m) { c->rc = ENG_ENOMEM; return; }
    memcpy(tp->w, eng_npz_get(c->z, p->key)->data, bytes);
}

static void count_cb(const eng_param *p, void *ud) { (void)p, (*(int *)ud)++; }

static tparam *param(eng_trainer *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static tparam *param(eng_trainer *t, const char *fmt, ...)
{
    char key[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(key, sizeof key, fmt, ap);
    va_end(ap);
    for (int i = 0; i < t->np; i++)
        if (!strcmp(t->params[i].p.key, key)) return &t->params[i];
    return NULL;
}

/* ---------------------------------------------------------------- convolutions */

static size_t es(eng_act_type t) { return t == ENG_ACT_BF16 ? 2 : 4; }

static dnnl_memory_t mem(eng_trainer *t, const dnnl_memory_desc_t *md, void *h)
{
    return eng_dnn_mem(&t->pool, t->eng, md, h);
}

static const dnnl_memory_desc_t *qmd(const_dnnl_primitive_desc_t pd, dnnl_query_t q)
{
    return dnnl_primitive_desc_query_md(pd, q, 0);
}

/* Sets op o's four arguments; the scratchpad is last (its buffer comes later). */
static void op4(eng_trainer *t, eng_dnn_op *o, const_dnnl_primitive_desc_t pd, int a0,
                const dnnl_memory_desc_t *m0, void *h0, int a1, const dnnl_memory_desc_t *m1,
                void *h1, int a2, const dnnl_memory_desc_t *m2, void *h2)
{
    o->args[0] = (dnnl_exec_arg_t){a0, mem(t, m0, h0)};
    o->args[1] = (dnnl_exec_arg_t){a1, mem(t, m1, h1)};
    o->args[2] = (dnnl_exec_arg_t){a2, mem(t, m2, h2)};
    o->args[3] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, mem(t, qmd(pd, dnnl_query_scratchpad_md), NULL)};
    o->nargs = 4;
    size_t b = dnnl_memory_desc_get_size(qmd(pd, dnnl_query_scratchpad_md));
    if (b > t->scratch_bytes) t->scratch_bytes = b;
}

/* What one convolution connects: src (type at) -> dst, and in backward ddst -> dsrc (type gt;
 * NULL for the root, whose input needs no gradient). sum: the forward adds into dst. */
typedef struct tconv_io {
    const eng_layout *in, *out;
    void *src, *dst, *ddst, *dsrc;
    eng_act_type dst_t, ddst_t;
    int sum;
} tconv_io;

/* Offset of element idx (O, I, H, W) in a blocked descriptor. */
static int64_t blocked_off(const dnnl_memory_desc_t *md, const dnnl_dim_t idx[4])
{
    const dnnl_blocking_desc_t *b = &md->format_desc.blocking;
    dnnl_dim_t blk[4] = {1, 1, 1, 1}, off = md->offset0, step = 1;
    for (int k = 0; k < b->inner_nblks; k++) blk[b->inner_idxs[k]] *= b->inner_blks[k];
    for (int d = 0; d < 4; d++) off += idx[d] / blk[d] * b->strides[d];
    for (int k = b->inner_nblks - 1; k >= 0; k--) { /* innermost block first */
        int d = (int)b->inner_idxs[k];
        dnnl_dim_t inner = 1;
        for (int j = k + 1; j < b->inner_nblks; j++)
            if (b->inner_idxs[j] == d) inner *= b->inner_blks[j];
        off += idx[d] % blk[d] / inner % b->inner_blks[k] * step;
        step *= b->inner_blks[k];
    }
    return off;
}

/* When oneDNN's weight gradient keeps 16 output channels innermost (its AVX-512 layouts),
 * each kernel row's 16-channel chunks are vectors the update can read in place: their
 * offsets, so no unpacking reorder runs. NULL otherwise. */
static int64_t *grad_offsets(eng_trainer *t, const tconv *c)
{
    const dnnl_memory_desc_t *md = &c->dif_wmd;
    const dnnl_blocking_desc_t *b = &md->format_desc.blocking;
    int nb = b->inner_nblks;
    if (md->format_kind != dnnl_blocked || c->cout % 16 || nb < 1 || b->inner_idxs[nb - 1] != 0 ||
        b->inner_blks[nb - 1] != 16)
        return NULL;
    for (int k = 0; k < nb - 1; k++)
        if (b->inner_idxs[k] == 0) return NULL; /* output channels blocked twice */
    int64_t *off = eng_dnn_buf(&t->pool, sizeof(int64_t) * (size_t)c->ws.rows);
    for (int y = 0; off && y < c->kh; y++)
        for (int x = 0; x < c->kh; x++)
            for (int i = 0; i < c->cin; i++)
                off[((int64_t)y * c->kh + x) * c->cin + i] = blocked_off(md, (dnnl_dim_t[4]){0, i, y, x});
    return off;
}

/* The kernel's standardisation, its buffers and the reorders that pack and unpack it. */
static int tconv_weights(eng_trainer *t, tconv *c, char *err, size_t errlen)
{
    int rc = 0;
    dnnl_dims_t wdims = {c->cout, c->cin, c->kh, c->kh};
    /* the kernel's own layout, HWIO: strides (O: 1, I: O, H: kw*I*O, W: I*O) */
    dnnl_dims_t hwio = {1, c->cout, (dnnl_dim_t)c->kh * c->cin * c->cout, (dnnl_dim_t)c->cin * c->cout};
    DN(dnnl_memory_desc_init_by_strides(&c->plain, 4, wdims, eng_dnn_dt(t->at), hwio));
    DN(dnnl_memory_desc_init_by_strides(&c->dplain, 4, wdims, dnnl_f32, hwio));
    size_t n = (size_t)c->par->n;
    c->ws = (eng_wstd){.rows = (int64_t)c->kh * c->kh * c->cin, .cols = c->cout, .w = c->par->w,
                       .m = c->par->m, .ot = t->at, .part = t->part, .threads = t->threads};
    c->ws.mean = eng_dnn_buf(&t->pool, sizeof(float) * (size_t)c->cout);
    c->ws.inv = eng_dnn_buf(&t->pool, sizeof(float) * (size_t)c->cout);
    c->ws.out = eng_dnn_buf(&t->pool, n * es(t->at));
    c->dw_n = dnnl_memory_desc_get_size(&c->dif_wmd) / sizeof(float);
    c->dwp = eng_dnn_buf(&t->pool, c->dw_n * sizeof(float));
    c->dwacc = eng_dnn_buf(&t->pool, c->dw_n * sizeof(float));
    c->wf = eng_dnn_buf(&t->pool, dnnl_memory_desc_get_size(&c->fwd_wmd));
    c->goff = grad_offsets(t, c);
    c->dws = c->goff ? NULL : eng_dnn_buf(&t->pool, n * sizeof(float));
    if (!c->ws.mean || !c->ws.inv || !c->ws.out || (!c->dws && !c->goff) || !c->dwp ||
        !c->dwacc || !c->wf)
        return eng_errf(err, errlen, ENG_ENOMEM, "out of memory for %s", c->par->p.key);
    if ((rc = eng_dnn_reorder_op(t->eng, &t->pool, &c->plain, c->ws.out, &c->fwd_wmd, c->wf,
                                 &c->pack_f, err, errlen)) ||
        (c->dws && (rc = eng_dnn_reorder_op(t->eng, &t->pool, &c->dif_wmd, c->dwacc, &c->dplain,
                                            c->dws, &c->unpack, err, errlen))))
        return rc;
fail:
    return rc;
}

static int tconv_bwd_data(eng_trainer *t, tconv *c, const tconv_io *io, const dnnl_memory_desc_t *wany,
                          const dnnl_primitive_desc_t fpd, char *err, size_t errlen)
{
    int rc = 0;
    dnnl_memory_desc_t dsmd, ddmd;
    dnnl_convolution_desc_t bd;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t bpd = NULL;
    dnnl_dims_t st = {c->stride, c->stride}, pd = {c->pad, c->pad};
    if (eng_dnn_act_md(&dsmd, io->in, t->gt) || eng_dnn_act_md(&ddmd, io->out, io->ddst_t) ||
        eng_dnn_attr(0, &attr)) {
        rc = eng_errf(err, errlen, ENG_EDNNL, "oneDNN: descriptor refused for %s", c->par->p.key);
        goto fail;
    }
    DN(dnnl_convolution_backward_data_desc_init(&bd, dnnl_convolution_direct, &dsmd, wany, &ddmd,
                                                st, pd, pd));
    DN(dnnl_primitive_desc_create(&bpd, &bd, attr, t->eng, fpd));
    c->bwd_wmd = *qmd(bpd, dnnl_query_weights_md);
    if (dnnl_memory_desc_equal(&c->bwd_wmd, &c->fwd_wmd)) {
        c->wb = c->wf;
    } else if (!(c->wb = eng_dnn_buf(&t->pool, dnnl_memory_desc_get_size(&c->bwd_wmd))) ||
               (rc = eng_dnn_reorder_op(t->eng, &t->pool, &c->plain, c->ws.out, &c->bwd_wmd, c->wb,
                                        &c->pack_b, err, errlen))) {
        if (!rc) rc = eng_errf(err, errlen, ENG_ENOMEM, "out of memory for %s", c->par->p.key);
        goto fail;
    }
    op4(t, &c->bwdd, bpd, DNNL_ARG_DIFF_DST, &ddmd, io->ddst, DNNL_ARG_WEIGHTS, &c->bwd_wmd, c->wb,
        DNNL_ARG_DIFF_SRC, &dsmd, io->dsrc);
    DN(dnnl_primitive_create(&c->bwdd.prim, bpd));
fail:
    if (bpd) dnnl_primitive_desc_destroy(bpd);
    if (attr) dnnl_primitive_attr_destroy(attr);
    return rc;
}

/* Forward, backward-weights and (unless io->dsrc is NULL) backward-data primitives. */
static int tconv_build(eng_trainer *t, tconv *c, tparam *par, int stride, const tconv_io *io,
                       char *err, size_t errlen)
{
    int rc = 0;
    c->par = par;
    c->kh = (int)par->p.shape[0], c->cin = (int)par->p.shape[2], c->cout = (int)par->p.shape[3];
    c->stride = stride, c->pad = (c->kh - 1) / 2;
    dnnl_memory_desc_t smd, dmd, ddmd, wany, dwany;
    dnnl_convolution_desc_t fd, wd;
    dnnl_primitive_attr_t attr = NULL, battr = NULL;
    dnnl_primitive_desc_t fpd = NULL, wpd = NULL;
    dnnl_dims_t wdims = {c->cout, c->cin, c->kh, c->kh}, st = {stride, stride}, pd = {c->pad, c->pad};
    if (eng_dnn_act_md(&smd, io->in, t->at) || eng_dnn_act_md(&dmd, io->out, io->dst_t) ||
        eng_dnn_act_md(&ddmd, io->out, io->ddst_t) || eng_dnn_attr(io->sum, &attr) ||
        eng_dnn_attr(0, &battr)) {
        rc = eng_errf(err, errlen, ENG_EDNNL, "oneDNN: descriptor refused for %s", par->p.key);
        goto fail;
    }
    DN(dnnl_memory_desc_init_by_tag(&wany, 4, wdims, eng_dnn_dt(t->at), dnnl_format_tag_any));
    DN(dnnl_memory_desc_init_by_tag(&dwany, 4, wdims, dnnl_f32, dnnl_format_tag_any));
    DN(dnnl_convolution_forward_desc_init(&fd, dnnl_forward_training, dnnl_convolution_direct,
                                          &smd, &wany, NULL, &dmd, st, pd, pd));
    DN(dnnl_primitive_desc_create(&fpd, &fd, attr, t->eng, NULL));
    DN(dnnl_convolution_backward_weights_desc_init(&wd, dnnl_convolution_direct, &smd, &dwany,
                                                   NULL, &ddmd, st, pd, pd));
    DN(dnnl_primitive_desc_create(&wpd, &wd, battr, t->eng, fpd));
    c->fwd_wmd = *qmd(fpd, dnnl_query_weights_md);
    c->dif_wmd = *qmd(wpd, dnnl_query_diff_weights_md);
    if ((rc = tconv_weights(t, c, err, errlen))) goto fail;
    op4(t, &c->fwd, fpd, DNNL_ARG_SRC, &smd, io->src, DNNL_ARG_WEIGHTS, &c->fwd_wmd, c->wf,
        DNNL_ARG_DST, &dmd, io->dst);
    op4(t, &c->bwdw, wpd, DNNL_ARG_SRC, &smd, io->src, DNNL_ARG_DIFF_DST, &ddmd, io->ddst,
        DNNL_ARG_DIFF_WEIGHTS, &c->dif_wmd, c->dwacc);
    DN(dnnl_primitive_create(&c->fwd.prim, fpd));
    DN(dnnl_primitive_create(&c->bwdw.prim, wpd));
    if (io->dsrc && (rc = tconv_bwd_data(t, c, io, &wany, fpd, err, errlen))) goto fail;
    for (int i = 0; i < 4; i++)
        if (!c->fwd.args[i].memory || !c->bwdw.args[i].memory ||
            (io->dsrc && !c->bwdd.args[i].memory))
            rc = eng_errf(err, errlen, ENG_ENOMEM, "out of memory for %s", par->p.key);
fail:
    if (fpd) dnnl_primitive_desc_destroy(fpd);
    if (wpd) dnnl_primitive_desc_destroy(wpd);
    if (attr) dnnl_primitive_attr_destroy(attr);
    if (battr) dnnl_primitive_attr_destroy(battr);
    return rc;
}

static int run_op(eng_trainer *t, eng_op k, const eng_dnn_op *o, char *err, size_t errlen)
{
    int rc;
    ENG_PROF(t->o.prof, k, rc = eng_dnn_exec(t->s, o, err, errlen));
    return rc;
}

/* Packs the standardised kernel for the forward and backward-data primitives. */
static int tconv_pack(eng_trainer *t, tconv *c, char *err, size_t errlen)
{
    int rc = run_op(t, ENG_OP_REORDER, &c->pack_f, err, errlen);
    if (!rc && c->pack_b.prim) rc = run_op(t, ENG_OP_REORDER, &c->pack_b, err, errlen);
    return rc;
}

/* Backward-weights of one micro-batch: the first of a step writes the sum directly. */
static int tconv_grad(eng_trainer *t, tconv *c, char *err, size_t errlen)
{
    int rc = 0;
    DN(dnnl_memory_set_data_handle(c->bwdw.args[2].memory, c->nacc ? c->dwp : c->dwacc));
    if ((rc = run_op(t, ENG_OP_CONV_BWD_W, &c->bwdw, err, errlen))) goto fail;
    if (c->nacc) ENG_PROF(t->o.prof, ENG_OP_GRAD_SUM, eng_simd_get()->add(c->dwacc, c->dwp, (int64_t)c->dw_n));
    c->nacc++;
fail:
    return rc;
}

/* The step's summed gradient wrt the standardised kernel, read in place or unpacked (zero
 * without micro-batches). */
static int tconv_dws(eng_trainer *t, tconv *c, eng_mat *dws, char *err, size_t errlen)
{
    *dws = c->goff ? (eng_mat){c->dwacc, c->goff, c->dif_wmd.format_desc.blocking.strides[0]}
                   : (eng_mat){c->dws, NULL, 0};
    if (!c->nacc) memset(c->goff ? c->dwacc : c->dws, 0, sizeof(float) * (c->goff ? c->dw_n : (size_t)c->par->n));
    return c->nacc && !c->goff ? run_op(t, ENG_OP_REORDER, &c->unpack, err, errlen) : 0;
}

static void tconv_fini(tconv *c)
{
    eng_dnn_op *ops[] = {&c->fwd, &c->bwdd, &c->bwdw, &c->pack_f, &c->pack_b, &c->unpack};
    for (int i = 0; i < 6; i++) eng_dnn_op_fini(ops[i]);
}

/* Calls fn for every convolution. */
static int each_conv(eng_trainer *t, int (*fn)(eng_trainer *, tconv *, char *, size_t), char *err,
                     size_t errlen)
{
    int rc = fn(t, &t->root, err, errlen);
    for (int i = 0; !rc && i < t->nu; i++) {
        tunit *u = &t->units[i];
        if ((rc = fn(t, &u->a, err, errlen)) || (rc = fn(t, &u->b, err, errlen)) ||
            (rc = fn(t, &u->c, err, errlen)))
            break;
        if (u->proj) rc = fn(t, &u->p, err, errlen);
    }
    return rc;
}

/* ---------------------------------------------------------------- building */

/* Activation buffers are written before they are read. */
static void *act(eng_trainer *t, const eng_layout *l, eng_act_type ty)
{
    return eng_dnn_raw(&t->pool, es(ty) * (size_t)eng_layout_size(l));
}

static void *fbuf(eng_trainer *t, int64_t n) { return eng_dnn_buf(&t->pool, sizeof(float) * (size_t)n); }

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* Layouts of every unit and the largest size of each shared buffer role (elements), and the
 * GroupNorm workspace (bytes). */
static void plan_layouts(eng_trainer *t, int blk, int64_t *maxT, int64_t *maxRaw, int64_t *maxX,
                         size_t *gnws)
{
    int hw[5][2], n = t->o.micro_batch;
    eng_arch_spatial(t->o.h, t->o.w, hw);
    int H = hw[0][0], W = hw[0][1], i = 0;
    *maxX = eng_layout_size(&t->lpool);
    *maxT = *maxRaw = 0;
    t->lfinal = (eng_layout){n, t->feat, hw[4][0], hw[4][1], blk};
    *gnws = eng_gn_ws_bytes(&t->lfinal);
    for (int b = 0; b < 4; b++)
        for (int u = 0; u < t->arch.units[b]; u++, i++) {
            tunit *tu = &t->units[i];
            int mid = t->arch.width << b, cin = u ? 4 * mid : (b ? 2 * mid : t->arch.width);
            tu->in = (eng_layout){n, cin, H, W, blk};
            tu->mid_in = (eng_layout){n, mid, H, W, blk};
            tu->mid_out = (eng_layout){n, mid, hw[b][0], hw[b][1], blk};
            tu->out = (eng_layout){n, 4 * mid, hw[b][0], hw[b][1], blk};
            H = hw[b][0], W = hw[b][1];
            *maxT = max64(*maxT, max64(eng_layout_size(&tu->in), eng_layout_size(&tu->mid_in)));
            *maxRaw = max64(*maxRaw, eng_layout_size(&tu->mid_in));
            *maxX = max64(*maxX, eng_layout_size(&tu->out));
            size_t g = eng_gn_ws_bytes(&tu->in) > eng_gn_ws_bytes(&tu->mid_in)
                           ? eng_gn_ws_bytes(&tu->in) : eng_gn_ws_bytes(&tu->mid_in);
            if (g > *gnws) *gnws = g;
        }
}

static int unit_build(eng_trainer *t, int b, int u, int i, char *err, size_t errlen)
{
    tunit *tu = &t->units[i];
    const char *pre = "resnet/block%d/unit%02d/%c/%s";
    tu->proj = u == 0;
    int stride = u == 0 && b > 0 ? 2 : 1, n = t->o.micro_batch, rc;
    tu->ga = param(t, pre, b + 1, u + 1, 'a', "group_norm/gamma");
    tu->ba = param(t, pre, b + 1, u + 1, 'a', "group_norm/beta");
    tu->gb = param(t, pre, b + 1, u + 1, 'b', "group_norm/gamma");
    tu->bb = param(t, pre, b + 1, u + 1, 'b', "group_norm/beta");
    tu->gc = param(t, pre, b + 1, u + 1, 'c', "group_norm/gamma");
    tu->bc = param(t, pre, b + 1, u + 1, 'c', "group_norm/beta");
    tu->x = t->X[i], tu->xo = t->X[i + 1];
    tu->araw = act(t, &tu->mid_in, t->at);
    tu->braw = act(t, &tu->mid_out, t->at);
    tu->st_a = fbuf(t, 2 * n * G), tu->st_b = fbuf(t, 2 * n * G), tu->st_c = fbuf(t, 2 * n * G);
    if (!tu->araw || !tu->braw || !tu->st_a || !tu->st_b || !tu->st_c)
        return eng_errf(err, errlen, ENG_ENOMEM, "out of memory for the activations");
    /* Gradients ping-pong: unit i's output gradient is dX[i % 2], its input's dX[(i + 1) % 2];
     * the convolutions read the bf16 copy when there is one. */
    void *dcur = t->dXb[i % 2] ? (void *)t->dXb[i % 2] : (void *)t->dX[i % 2];
    eng_act_type dct = t->dXb[i % 2] ? ENG_ACT_BF16 : ENG_ACT_F32;
    tconv_io ia = {&tu->in, &tu->mid_in, t->T, tu->araw, t->dRaw, t->dT, t->at, t->at, 0};
    tconv_io ib = {&tu->mid_in, &tu->mid_out, t->T, tu->braw, t->dRaw, t->dT, t->at, t->at, 0};
    tconv_io ic = {&tu->mid_out, &tu->out, t->T, tu->xo, dcur, t->dT, t->rt, dct, 1};
    tconv_io ip = {&tu->in, &tu->out, t->T, tu->xo, dcur, t->dT2, t->rt, dct, 0};
    if ((rc = tconv_build(t, &tu->a, param(t, pre, b + 1, u + 1, 'a', "standardized_conv2d/kernel"),
                          1, &ia, err, errlen)) ||
        (rc = tconv_build(t, &tu->b, param(t, pre, b + 1, u + 1, 'b', "standardized_conv2d/kernel"),
                          stride, &ib, err, errlen)) ||
        (rc = tconv_build(t, &tu->c, param(t, pre, b + 1, u + 1, 'c', "standardized_conv2d/kernel"),
                          1, &ic, err, errlen)))
        return rc;
    if (tu->proj)
        rc = tconv_build(t, &tu->p, param(t, pre, b + 1, u + 1, 'a', "proj/standardized_conv2d/kernel"),
                         stride, &ip, err, errlen);
    return rc;
}

void eng_trainer_free(eng_trainer *t)
{
    if (!t) return;
    tconv_fini(&t->root);
    for (int i = 0; t->units && i < t->nu; i++) {
        tunit *u = &t->units[i];
        tconv_fini(&u->a), tconv_fini(&u->b), tconv_fini(&u->c), tconv_fini(&u->p);
    }
    eng_dnn_pool_fini(&t->pool);
    free(t->units);
    free(t->params);
    free(t->X);
    if (t->s) dnnl_stream_destroy(t->s);
    if (t->eng) dnnl_engine_destroy(t->eng);
    free(t);
}

static int set_scratch(eng_trainer *t, tconv *c, char *err, size_t errlen)
{
    (void)err, (void)errlen;
    return eng_dnn_set_scratch(&c->fwd, t->scratch) | eng_dnn_set_scratch(&c->bwdd, t->scratch) |
                   eng_dnn_set_scratch(&c->bwdw, t->scratch)
               ? ENG_EDNNL
               : 0;
}

static int standardise(eng_trainer *t, tconv *c, char *err, size_t errlen)
{
    eng_wstd_forward(&c->ws, t->o.prof);
    return tconv_pack(t, c, err, errlen);
}

/* Activation and gradient buffers of one micro-batch shape. */
static int buffers(eng_trainer *t)
{
    int n = t->o.micro_batch, bf = t->at == ENG_ACT_BF16;
    int64_t maxT, maxRaw, maxX;
    size_t gnws;
    plan_layouts(t, 16, &maxT, &maxRaw, &maxX, &gnws);
    eng_layout lx = {1, 1, 1, 1, 1}, lt = lx, lr = lx;
    lx.n = (int)maxX, lt.n = (int)maxT, lr.n = (int)maxRaw;
    t->xin = bf ? act(t, &t->lin, ENG_ACT_BF16) : NULL;
    t->R = act(t, &t->lroot, t->at), t->dR = act(t, &t->lroot, t->at);
    t->X[0] = act(t, &t->lpool, t->rt);
    for (int i = 0; i < t->nu; i++)
        if (!(t->X[i + 1] = act(t, &t->units[i].out, t->rt))) return ENG_ENOMEM;
    t->T = act(t, &lt, t->at), t->dT = act(t, &lt, t->gt), t->dT2 = act(t, &lt, t->gt);
    t->dRaw = act(t, &lr, t->at);
    for (int k = 0; k < 2; k++) {
        t->dX[k] = fbuf(t, maxX);
        t->dXb[k] = bf ? act(t, &lx, ENG_ACT_BF16) : NULL;
        if (!t->dX[k] || (bf && !t->dXb[k])) return ENG_ENOMEM;
    }
    t->featv = fbuf(t, (int64_t)n * t->feat), t->dfeat = fbuf(t, (int64_t)n * t->feat);
    t->logits = fbuf(t, (int64_t)n * t->classes), t->st_f = fbuf(t, 2 * n * G);
    t->gnws = eng_dnn_buf(&t->pool, gnws);
    t->poolws = eng_dnn_buf(&t->pool, eng_pool_ws_bytes(&t->lroot, t->threads));
    return (bf && !t->xin) || !t->R || !t->dR || !t->X[0] || !t->T || !t->dT || !t->dT2 ||
                   !t->dRaw || !t->featv || !t->dfeat || !t->logits || !t->st_f || !t->gnws ||
                   !t->poolws
               ? ENG_ENOMEM
               : 0;
}

static int build(eng_trainer *t, const eng_npz *ckpt, char *err, size_t errlen)
{
    int rc = 0, total = 0, cmax = 0;
    eng_arch_params(&t->arch, count_cb, &total);
    t->params = calloc((size_t)total, sizeof *t->params);
    for (int b = 0; b < 4; b++) t->nu += t->arch.units[b];
    t->units = calloc((size_t)t->nu, sizeof *t->units);
    t->X = calloc((size_t)t->nu + 1, sizeof *t->X);
    if (!t->params || !t->units || !t->X) goto oom;
    collect_ctx cc = {t, ckpt, 0};
    eng_arch_params(&t->arch, collect_cb, &cc);
    if (cc.rc) goto oom;
    for (int i = 0; i < t->np; i++)
        if (t->params[i].p.kind == ENG_P_CONV && t->params[i].p.shape[3] > cmax)
            cmax = (int)t->params[i].p.shape[3];
    if (!(t->part = eng_dnn_buf(&t->pool, eng_wstd_part_bytes(cmax, t->threads)))) goto oom;
    DN(dnnl_engine_create(&t->eng, dnnl_cpu, 0));
    DN(dnnl_stream_create(&t->s, t->eng, dnnl_stream_default_flags));
    int n = t->o.micro_batch, rh = eng_out_size(t->o.h, 7, 2, 3), rw = eng_out_size(t->o.w, 7, 2, 3);
    t->lin = (eng_layout){n, 3, t->o.h, t->o.w, 1};
    t->lroot = (eng_layout){n, t->arch.width, rh, rw, 16};
    t->lpool = (eng_layout){n, t->arch.width, eng_out_size(rh, 3, 2, 1), eng_out_size(rw, 3, 2, 1), 16};
    if (buffers(t)) goto oom;
    tconv_io ir = {&t->lin, &t->lroot, t->xin, t->R, t->dR, NULL, t->at, t->at, 0};
    if ((rc = tconv_build(t, &t->root, param(t, "resnet/root_block/standardized_conv2d/kernel"), 2,
                          &ir, err, errlen)))
        return rc;
    for (int b = 0, i = 0; b < 4; b++)
        for (int u = 0; u < t->arch.units[b]; u++, i++)
            if ((rc = unit_build(t, b, u, i, err, errlen))) return rc;
    t->gf = param(t, "resnet/group_norm/gamma"), t->bf = param(t, "resnet/group_norm/beta");
    t->hw = param(t, "resnet/head/conv2d/kernel"), t->hb = param(t, "resnet/head/conv2d/bias");
    if (!(t->scratch = eng_dnn_raw(&t->pool, t->scratch_bytes)) || each_conv(t, set_scratch, err, errlen))
        goto oom;
    return each_conv(t, standardise, err, errlen);
oom:
    rc = eng_errf(err, errlen, ENG_ENOMEM, "out of memory building the trainer");
fail:
    return rc;
}

int eng_trainer_new(const eng_npz *ckpt, const eng_arch *a, const eng_train_opts *o,
                    eng_trainer **out, char *err, size_t errlen)
{
    *out = NULL;
    if (a->head <= 0) return eng_errf(err, errlen, ENG_EINVAL, "training needs a head");
    if (o->micro_batch < 1 || o->h < ENG_MIN_RES || o->w < ENG_MIN_RES || o->h > 4096 || o->w > 4096)
        return eng_errf(err, errlen, ENG_EINVAL, "bad training shape %dx%dx%d", o->micro_batch,
                        o->h, o->w);
    int rc = eng_arch_check(ckpt, a, err, errlen);
    if (rc) return rc;
    eng_trainer *t = calloc(1, sizeof *t);
    if (!t) return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    t->arch = *a, t->o = *o, t->feat = 32 * a->width, t->classes = a->head;
    t->o.precision = eng_precision_resolve(o->precision);
    t->at = t->o.precision == ENG_PREC_BF16 ? ENG_ACT_BF16 : ENG_ACT_F32;
    t->rt = ENG_ACT_F32, t->gt = ENG_ACT_F32;
    t->threads = omp_get_max_threads();
    if ((rc = build(t, ckpt, err, errlen))) {
        eng_trainer_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

eng_precision eng_trainer_precision(const eng_trainer *t) { return t->o.precision; }

/* ---------------------------------------------------------------- forward and backward */

static void gn_fwd(eng_trainer *t, const eng_layout *l, eng_buf x, eng_buf copy, const tparam *g,
                   const tparam *b, float *st)
{
    ENG_PROF(t->o.prof, ENG_OP_GN_FWD,
             eng_gn_relu(l, x, (eng_buf){t->T, t->at}, copy, g->w, b->w, st, st + l->n * G, t->gnws));
}

static void recompute(eng_trainer *t, const eng_layout *l, eng_buf x, const tparam *g,
                      const tparam *b, const float *st)
{
    ENG_PROF(t->o.prof, ENG_OP_GN_RECOMPUTE,
             eng_gn_relu_apply(l, x, (eng_buf){t->T, t->at}, g->w, b->w, st, st + l->n * G, t->gnws));
}

static void gn_bwd(eng_trainer *t, const eng_layout *l, eng_gn_grad *gr, const tparam *g,
                   const tparam *b, const float *st)
{
    gr->mean = st, gr->rstd = st + l->n * G, gr->gamma = g->w, gr->beta = b->w;
    gr->dgamma = g->g, gr->dbeta = b->g;
    ENG_PROF(t->o.prof, ENG_OP_GN_BWD, eng_gn_relu_backward(l, gr, t->gnws));
}

static int unit_forward(eng_trainer *t, tunit *u, char *err, size_t errlen)
{
    eng_buf x = {u->x, t->rt}, none = {0};
    /* without a projection the residual passes on: GN_a's pass copies it on its way */
    gn_fwd(t, &u->in, x, u->proj ? none : (eng_buf){u->xo, t->rt}, u->ga, u->ba, u->st_a);
    int rc = u->proj ? run_op(t, ENG_OP_CONV_FWD, &u->p.fwd, err, errlen) : 0;
    if (!rc) rc = run_op(t, ENG_OP_CONV_FWD, &u->a.fwd, err, errlen);
    if (rc) return rc;
    gn_fwd(t, &u->mid_in, (eng_buf){u->araw, t->at}, none, u->gb, u->bb, u->st_b);
    if ((rc = run_op(t, ENG_OP_CONV_FWD, &u->b.fwd, err, errlen))) return rc;
    gn_fwd(t, &u->mid_out, (eng_buf){u->braw, t->at}, none, u->gc, u->bc, u->st_c);
    return run_op(t, ENG_OP_CONV_FWD, &u->c.fwd, err, errlen); /* adds into xo: the residual */
}

/* Backward of one convolution whose source is in t->T: weights, then data. */
static int conv_bwd(eng_trainer *t, tconv *c, char *err, size_t errlen)
{
    int rc = tconv_grad(t, c, err, errlen);
    return rc ? rc : run_op(t, ENG_OP_CONV_BWD_DATA, &c->bwdd, err, errlen);
}

static int unit_backward(eng_trainer *t, tunit *u, int i, char *err, size_t errlen)
{
    float *dcur = t->dX[i % 2], *dprev = t->dX[(i + 1) % 2];
    eng_buf araw = {u->araw, t->at}, braw = {u->braw, t->at}, x = {u->x, t->rt};
    eng_buf dT = {t->dT, t->gt}, dRaw = {t->dRaw, t->at};
    int rc;
    recompute(t, &u->mid_out, braw, u->gc, u->bc, u->st_c);
    if ((rc = conv_bwd(t, &u->c, err, errlen))) return rc;
    gn_bwd(t, &u->mid_out, &(eng_gn_grad){.x = braw, .dy = dT, .dx = dRaw}, u->gc, u->bc, u->st_c);
    recompute(t, &u->mid_in, araw, u->gb, u->bb, u->st_b);
    if ((rc = conv_bwd(t, &u->b, err, errlen))) return rc;
    gn_bwd(t, &u->mid_in, &(eng_gn_grad){.x = araw, .dy = dT, .dx = dRaw}, u->gb, u->bb, u->st_b);
    recompute(t, &u->in, x, u->ga, u->ba, u->st_a);
    if ((rc = conv_bwd(t, &u->a, err, errlen)) || (u->proj && (rc = conv_bwd(t, &u->p, err, errlen))))
        return rc;
    /* the projection's data gradient joins in the GN pass; the shortcut's is the residual; unit
     * 0's input gradient goes to the pool (f32), the others' also to bf16 for the convs */
    eng_gn_grad gr = {.x = x, .dy = dT, .dx = eng_f32(dprev),
                      .dy2 = u->proj ? (eng_buf){t->dT2, t->gt} : (eng_buf){0},
                      .res = u->proj ? (eng_buf){0} : eng_f32(dcur),
                      .dx_bf16 = i ? t->dXb[(i + 1) % 2] : NULL};
    gn_bwd(t, &u->in, &gr, u->ga, u->ba, u->st_a);
    return 0;
}

static void head_forward(eng_trainer *t)
{
    int n = t->o.micro_batch, f = t->feat, k = t->classes;
    const float *w = t->hw->w;
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++) {
        float *out = t->logits + (int64_t)i * k;
        for (int j = 0; j < k; j++) out[j] = t->hb->w[j];
        for (int c = 0; c < f; c++) {
            float a = t->featv[(int64_t)i * f + c];
            const float *row = w + (int64_t)c * k;
            #pragma omp simd
            for (int j = 0; j < k; j++) out[j] += a * row[j];
        }
    }
}

/* Softmax cross-entropy (MixUp-weighted) of the logits; leaves scale * dloss/dlogits in
 * t->logits and returns the mean loss. */
static double loss_and_grad(eng_trainer *t, const int64_t *y, const int64_t *y2, double lam,
                            double scale)
{
    int n = t->o.micro_batch, k = t->classes;
    double total = 0;
    for (int i = 0; i < n; i++) {
        float *z = t->logits + (int64_t)i * k;
        double mx = z[0], sum = 0;
        for (int j = 1; j < k; j++) mx = z[j] > mx ? z[j] : mx;
        for (int j = 0; j < k; j++) sum += exp(z[j] - mx);
        double lse = mx + log(sum);
        total += lam * (lse - z[y[i]]) + (y2 ? (1 - lam) * (lse - z[y2[i]]) : 0);
        for (int j = 0; j < k; j++) {
            double p = exp(z[j] - lse);
            double target = (j == y[i] ? lam : 0) + (y2 && j == y2[i] ? 1 - lam : 0);
            z[j] = (float)((p - target) * scale / n);
        }
    }
    return total / n;
}

/* Head gradients from dlogits (in t->logits); dfeat for the final GroupNorm. */
static void head_backward(eng_trainer *t)
{
    int n = t->o.micro_batch, f = t->feat, k = t->classes;
    const float *dl = t->logits, *w = t->hw->w;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < k; j++) t->hb->g[j] += dl[(int64_t)i * k + j];
    #pragma omp parallel for schedule(static)
    for (int c = 0; c < f; c++) {
        float *gw = t->hw->g + (int64_t)c * k;
        const float *row = w + (int64_t)c * k;
        for (int i = 0; i < n; i++) {
            float a = t->featv[(int64_t)i * f + c];
            const float *d = dl + (int64_t)i * k;
            double s = 0;
            #pragma omp simd reduction(+ : s)
            for (int j = 0; j < k; j++) {
                gw[j] += a * d[j];
                s += row[j] * d[j];
            }
            t->dfeat[(int64_t)i * f + c] = (float)s;
        }
    }
}

static int forward(eng_trainer *t, const float *x, char *err, size_t errlen)
{
    int rc = 0, n = t->o.micro_batch;
    eng_prof *pr = t->o.prof;
    if (t->xin) { /* bf16: the input rounded once, in its plain layout */
        ENG_PROF(pr, ENG_OP_REORDER, eng_simd_get()->convert(x, ENG_ACT_F32, t->xin, ENG_ACT_BF16,
                                                             eng_layout_size(&t->lin)));
    } else {
        DN(dnnl_memory_set_data_handle(t->root.fwd.args[0].memory, (void *)x));
        DN(dnnl_memory_set_data_handle(t->root.bwdw.args[0].memory, (void *)x));
    }
    if ((rc = run_op(t, ENG_OP_CONV_FWD, &t->root.fwd, err, errlen))) goto fail;
    ENG_PROF(pr, ENG_OP_POOL, eng_pool_root(&t->lroot, (eng_buf){t->R, t->at}, &t->lpool,
                                            (eng_buf){t->X[0], t->rt}));
    for (int i = 0; i < t->nu; i++)
        if ((rc = unit_forward(t, &t->units[i], err, errlen))) goto fail;
    ENG_PROF(pr, ENG_OP_GN_FWD,
             eng_gn_relu_pool(&t->lfinal, (eng_buf){t->X[t->nu], t->rt}, t->featv, NULL, t->gf->w,
                              t->bf->w, t->st_f, t->st_f + n * G, t->gnws));
    ENG_PROF(pr, ENG_OP_HEAD, head_forward(t));
fail:
    return rc;
}

int eng_trainer_logits(eng_trainer *t, const float *x, float *logits, char *err, size_t errlen)
{
    int rc = forward(t, x, err, errlen);
    if (!rc) memcpy(logits, t->logits, sizeof(float) * (size_t)t->o.micro_batch * t->classes);
    return rc;
}

int eng_trainer_step(eng_trainer *t, const float *x, const int64_t *y, const int64_t *y2,
                     float lam, float scale, double *loss, float *logits, char *err,
                     size_t errlen)
{
    int n = t->o.micro_batch;
    for (int i = 0; i < n; i++)
        if (y[i] < 0 || y[i] >= t->classes || (y2 && (y2[i] < 0 || y2[i] >= t->classes)))
            return eng_errf(err, errlen, ENG_EINVAL, "label out of range [0, %d)", t->classes);
    int rc = forward(t, x, err, errlen);
    if (rc) return rc;
    if (logits) memcpy(logits, t->logits, sizeof(float) * (size_t)n * t->classes);
    double l;
    ENG_PROF(t->o.prof, ENG_OP_HEAD, l = loss_and_grad(t, y, y2, y2 ? lam : 1.0, scale); head_backward(t));
    if (loss) *loss = l;
    int last = (t->nu - 1) % 2;
    gn_bwd(t, &t->lfinal,
           &(eng_gn_grad){.x = {t->X[t->nu], t->rt}, .dfeat = t->dfeat, .dx = eng_f32(t->dX[last]),
                          .dx_bf16 = t->dXb[last]},
           t->gf, t->bf, t->st_f);
    for (int i = t->nu - 1; i >= 0; i--)
        if ((rc = unit_backward(t, &t->units[i], i, err, errlen))) return rc;
    ENG_PROF(t->o.prof, ENG_OP_POOL,
             eng_pool_root_backward(&t->lroot, (eng_buf){t->R, t->at}, &t->lpool, t->dX[1],
                                    (eng_buf){t->dR, t->at}, t->poolws, t->threads));
    return tconv_grad(t, &t->root, err, errlen);
}

/* ---------------------------------------------------------------- update and export */

/* SGD through WS for one convolution, then its new standardisation packed. */
static int conv_update(eng_trainer *t, tconv *c, float mom, float wd, float lr, char *err,
                       size_t errlen)
{
    eng_mat dws;
    int rc = tconv_dws(t, c, &dws, err, errlen);
    if (rc) return rc;
    eng_wstd_update(&c->ws, dws, mom, wd, lr, t->o.prof);
    c->nacc = 0;
    return tconv_pack(t, c, err, errlen);
}

int eng_trainer_update(eng_trainer *t, double lr, double momentum, double wd_conv, char *err,
                       size_t errlen)
{
    float mom = (float)momentum, rate = (float)lr, wd = (float)wd_conv;
    int rc = conv_update(t, &t->root, mom, wd, rate, err, errlen);
    for (int i = 0; !rc && i < t->nu; i++) {
        tunit *u = &t->units[i];
        tconv *cs[] = {&u->a, &u->b, &u->c, &u->p};
        for (int k = 0; !rc && k < (u->proj ? 4 : 3); k++)
            rc = conv_update(t, cs[k], mom, wd, rate, err, errlen);
    }
    if (rc) return rc;
    double t0 = eng_prof_start(t->o.prof);
    for (int i = 0; i < t->np; i++) { /* GroupNorm and the head: plain SGD */
        tparam *p = &t->params[i];
        if (p->p.kind == ENG_P_CONV) continue;
        #pragma omp parallel for simd schedule(static) if (p->n > 65536)
        for (int64_t k = 0; k < p->n; k++) {
            p->m[k] = mom * p->m[k] + p->g[k];
            p->w[k] -= rate * p->m[k];
            p->g[k] = 0;
        }
    }
    eng_prof_stop(t->o.prof, ENG_OP_SGD, t0);
    return 0;
}

typedef enum { OUT_W, OUT_M, OUT_G } which;

static int export(const eng_trainer *t, which wh, eng_npz **out)
{
    eng_npz *z = eng_npz_new();
    if (!z) return ENG_ENOMEM;
    for (int i = 0; i < t->np; i++) {
        const tparam *p = &t->params[i];
        eng_tensor *x = eng_tensor_new(ENG_F32, 0, p->p.ndim, p->p.shape);
        if (!x || eng_npz_put(z, p->p.key, x)) {
            eng_npz_free(z);
            return ENG_ENOMEM;
        }
        memcpy(x->data, wh == OUT_W ? p->w : wh == OUT_M ? p->m : p->g, sizeof(float) * (size_t)p->n);
    }
    *out = z;
    return 0;
}

int eng_trainer_params(const eng_trainer *t, eng_npz **out) { return export(t, OUT_W, out); }
int eng_trainer_momentum(const eng_trainer *t, eng_npz **out) { return export(t, OUT_M, out); }
/* A convolution's raw-kernel gradient of the pending micro-batches, into its tparam. */
static int conv_grad(eng_trainer *t, tconv *c, char *err, size_t errlen)
{
    eng_mat dws;
    int rc = tconv_dws(t, c, &dws, err, errlen);
    if (!rc) eng_wstd_grad(&c->ws, dws, c->par->g);
    return rc;
}

int eng_trainer_grads(eng_trainer *t, eng_npz **out)
{
    int rc = each_conv(t, conv_grad, NULL, 0);
    return rc ? rc : export(t, OUT_G, out);
}

int eng_trainer_set_momentum(eng_trainer *t, const eng_npz *m, char *err, size_t errlen)
{
    for (int i = 0; i < t->np; i++) {
        tparam *p = &t->params[i];
        const eng_tensor *x = eng_npz_get(m, p->p.key);
        if (!eng_tensor_is_f32(x, p->p.ndim, p->p.shape))
            return eng_errf(err, errlen, ENG_EFORMAT, "momentum for %s is missing or mis-shaped",
                            p->p.key);
    }
    for (int i = 0; i < t->np; i++)
        memcpy(t->params[i].m, eng_npz_get(m, t->params[i].p.key)->data,
               sizeof(float) * (size_t)t->params[i].n);
    return 0;
}
