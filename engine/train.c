#include "train.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dnn.h"
#include "gn.h"

#define DN ENG_DN
#define G ENG_GN_GROUPS

typedef struct tparam {
    eng_param p;
    int64_t n;
    float *w, *g, *m; /* value, gradient, momentum buffer (official layout, e.g. HWIO) */
} tparam;

/* A convolution with its three primitives. The raw kernel lives in its tparam; ws is its
 * standardisation (plain OIHW), refreshed after every update and packed for the primitives. */
typedef struct tconv {
    tparam *par;
    int kh, cin, cout, stride, pad;
    dnnl_memory_desc_t plain, fwd_wmd, bwd_wmd, dif_wmd;
    float *ws, *sig, *wf, *wb, *dwp, *dws;
    float *dwacc; /* packed gradient summed over a step's micro-batches */
    size_t dw_n;  /* floats in the packed gradient */
    int dirty;
    eng_dnn_op fwd, bwdd, bwdw;
} tconv;

typedef struct tunit {
    int proj;
    tparam *ga, *ba, *gb, *bb, *gc, *bc;
    tconv a, b, c, p;
    eng_layout in, mid_in, mid_out, out;
    float *x, *xo, *araw, *braw, *st_a, *st_b, *st_c; /* st: mean [n*32] then rstd [n*32] */
} tunit;

struct eng_trainer {
    eng_arch arch;
    eng_train_opts o;
    dnnl_engine_t eng;
    dnnl_stream_t s;
    tparam *params;
    int np, nu, feat, classes;
    tconv root;
    tunit *units;
    tparam *gf, *bf, *hw, *hb;
    eng_layout lin, lroot, lpool, lfinal;
    float *R, *dR, **X, *T, *dT, *dT2, *dRaw, *dX[2], *Tf, *featv, *dfeat, *logits, *st_f;
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

/* Weight Standardization keeps the kernel's own HWIO layout (the oneDNN descriptor carries
 * HWIO strides and the packing reorder transposes), so every pass here streams rows of
 * `cout` contiguous values. Per output channel: mean and biased variance over (kh, kw, in).
 * Statistics are taken over column blocks so each thread owns its output channels. */
#define WS_COLS 64

static void ws_forward(tconv *c)
{
    int per = c->kh * c->kh * c->cin, co = c->cout;
    const float *w = c->par->w;
    #pragma omp parallel for schedule(static)
    for (int o0 = 0; o0 < co; o0 += WS_COLS) {
        int n = co - o0 < WS_COLS ? co - o0 : WS_COLS;
        double m[WS_COLS] = {0}, v[WS_COLS] = {0};
        float mf[WS_COLS], inv[WS_COLS];
        for (int i = 0; i < per; i++)
            for (int o = 0; o < n; o++) m[o] += w[(int64_t)i * co + o0 + o];
        for (int o = 0; o < n; o++) m[o] /= per;
        for (int i = 0; i < per; i++)
            for (int o = 0; o < n; o++) {
                double d = w[(int64_t)i * co + o0 + o] - m[o];
                v[o] += d * d;
            }
        for (int o = 0; o < n; o++) {
            double sd = sqrt(v[o] / per + ENG_WS_EPS);
            c->sig[o0 + o] = (float)sd;
            mf[o] = (float)m[o], inv[o] = (float)(1.0 / sd);
        }
        for (int i = 0; i < per; i++) {
            const float *wr = w + (int64_t)i * co + o0;
            float *out = c->ws + (int64_t)i * co + o0;
            #pragma omp simd
            for (int o = 0; o < n; o++) out[o] = (wr[o] - mf[o]) * inv[o];
        }
    }
}

/* Gradient through the standardisation, added to the raw kernel's gradient:
 * dw = (g - mean(g) - w_hat * mean(g * w_hat)) / s per output channel. */
static void ws_backward(tconv *c)
{
    int per = c->kh * c->kh * c->cin, co = c->cout;
    float *g = c->par->g;
    #pragma omp parallel for schedule(static)
    for (int o0 = 0; o0 < co; o0 += WS_COLS) {
        int n = co - o0 < WS_COLS ? co - o0 : WS_COLS;
        double mg[WS_COLS] = {0}, mgw[WS_COLS] = {0};
        float a[WS_COLS], b[WS_COLS], inv[WS_COLS];
        for (int i = 0; i < per; i++) {
            const float *gr = c->dws + (int64_t)i * co + o0, *wr = c->ws + (int64_t)i * co + o0;
            for (int o = 0; o < n; o++) mg[o] += gr[o], mgw[o] += (double)gr[o] * wr[o];
        }
        for (int o = 0; o < n; o++)
            inv[o] = 1.0f / c->sig[o0 + o], a[o] = (float)(mg[o] / per), b[o] = (float)(mgw[o] / per);
        for (int i = 0; i < per; i++) {
            const float *gr = c->dws + (int64_t)i * co + o0, *wr = c->ws + (int64_t)i * co + o0;
            float *out = g + (int64_t)i * co + o0;
            #pragma omp simd
            for (int o = 0; o < n; o++) out[o] += (gr[o] - a[o] - wr[o] * b[o]) * inv[o];
        }
    }
}

/* ---------------------------------------------------------------- convolutions */

static dnnl_memory_t mem(eng_trainer *t, const dnnl_memory_desc_t *md, void *h)
{
    return eng_dnn_mem(&t->pool, t->eng, md, h);
}

static void grow_scratch(eng_trainer *t, const_dnnl_primitive_desc_t pd)
{
    size_t b = dnnl_memory_desc_get_size(dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0));
    if (b > t->scratch_bytes) t->scratch_bytes = b;
}

static const dnnl_memory_desc_t *qmd(const_dnnl_primitive_desc_t pd, dnnl_query_t q)
{
    return dnnl_primitive_desc_query_md(pd, q, 0);
}

/* Builds forward, backward-data (unless dsrc is NULL) and backward-weights primitives of c
 * between activation layouts in -> out. sum: the forward adds into dst (residual). */
static int tconv_build(eng_trainer *t, tconv *c, tparam *par, int stride, const eng_layout *in,
                       void *src, const eng_layout *out, void *dst, int sum, void *dsrc,
                       void *ddst, char *err, size_t errlen)
{
    int rc = 0, bf16 = t->o.precision == ENG_PREC_BF16;
    c->par = par;
    c->kh = (int)par->p.shape[0], c->cin = (int)par->p.shape[2], c->cout = (int)par->p.shape[3];
    c->stride = stride, c->pad = (c->kh - 1) / 2;
    dnnl_memory_desc_t smd, dmd, wany;
    dnnl_convolution_desc_t fd, bd, wd;
    dnnl_primitive_attr_t attr = NULL, battr = NULL;
    dnnl_primitive_desc_t fpd = NULL, bpd = NULL, wpd = NULL;
    dnnl_dims_t wdims = {c->cout, c->cin, c->kh, c->kh}, st = {stride, stride}, pd = {c->pad, c->pad};
    size_t wbytes = sizeof(float) * (size_t)par->n;
    if (eng_dnn_act_md(&smd, in) || eng_dnn_act_md(&dmd, out) ||
        eng_dnn_attr(bf16, sum, &attr) || eng_dnn_attr(bf16, 0, &battr)) {
        rc = eng_errf(err, errlen, ENG_EDNNL, "oneDNN: descriptor refused for %s", par->p.key);
        goto fail;
    }
    DN(dnnl_memory_desc_init_by_tag(&wany, 4, wdims, dnnl_f32, dnnl_format_tag_any));
    /* the raw kernel's own layout: HWIO, i.e. strides (O: 1, I: O, H: kw*I*O, W: I*O) */
    dnnl_dims_t hwio = {1, c->cout, (dnnl_dim_t)c->kh * c->cin * c->cout, (dnnl_dim_t)c->cin * c->cout};
    DN(dnnl_memory_desc_init_by_strides(&c->plain, 4, wdims, dnnl_f32, hwio));
    DN(dnnl_convolution_forward_desc_init(&fd, dnnl_forward_training, dnnl_convolution_direct,
                                          &smd, &wany, NULL, &dmd, st, pd, pd));
    DN(dnnl_primitive_desc_create(&fpd, &fd, attr, t->eng, NULL));
    DN(dnnl_convolution_backward_weights_desc_init(&wd, dnnl_convolution_direct, &smd, &wany,
                                                   NULL, &dmd, st, pd, pd));
    DN(dnnl_primitive_desc_create(&wpd, &wd, battr, t->eng, fpd));
    c->fwd_wmd = *qmd(fpd, dnnl_query_weights_md);
    c->dif_wmd = *qmd(wpd, dnnl_query_diff_weights_md);
    c->ws = eng_dnn_buf(&t->pool, wbytes);
    c->dws = eng_dnn_buf(&t->pool, wbytes);
    c->sig = eng_dnn_buf(&t->pool, sizeof(float) * (size_t)c->cout);
    c->wf = eng_dnn_buf(&t->pool, dnnl_memory_desc_get_size(&c->fwd_wmd));
    c->dwp = eng_dnn_buf(&t->pool, dnnl_memory_desc_get_size(&c->dif_wmd));
    c->dwacc = eng_dnn_buf(&t->pool, dnnl_memory_desc_get_size(&c->dif_wmd));
    c->dw_n = dnnl_memory_desc_get_size(&c->dif_wmd) / sizeof(float);
    if (!c->ws || !c->dws || !c->sig || !c->wf || !c->dwp || !c->dwacc) goto oom;
    eng_dnn_op *f = &c->fwd, *w = &c->bwdw;
    f->args[0] = (dnnl_exec_arg_t){DNNL_ARG_SRC, mem(t, &smd, src)};
    f->args[1] = (dnnl_exec_arg_t){DNNL_ARG_WEIGHTS, mem(t, &c->fwd_wmd, c->wf)};
    f->args[2] = (dnnl_exec_arg_t){DNNL_ARG_DST, mem(t, &dmd, dst)};
    f->args[3] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, mem(t, qmd(fpd, dnnl_query_scratchpad_md), NULL)};
    f->nargs = 4;
    w->args[0] = (dnnl_exec_arg_t){DNNL_ARG_SRC, mem(t, &smd, src)};
    w->args[1] = (dnnl_exec_arg_t){DNNL_ARG_DIFF_DST, mem(t, &dmd, ddst)};
    w->args[2] = (dnnl_exec_arg_t){DNNL_ARG_DIFF_WEIGHTS, mem(t, &c->dif_wmd, c->dwp)};
    w->args[3] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, mem(t, qmd(wpd, dnnl_query_scratchpad_md), NULL)};
    w->nargs = 4;
    grow_scratch(t, fpd);
    grow_scratch(t, wpd);
    DN(dnnl_primitive_create(&f->prim, fpd));
    DN(dnnl_primitive_create(&w->prim, wpd));
    if (dsrc) {
        DN(dnnl_convolution_backward_data_desc_init(&bd, dnnl_convolution_direct, &smd, &wany,
                                                    &dmd, st, pd, pd));
        DN(dnnl_primitive_desc_create(&bpd, &bd, battr, t->eng, fpd));
        c->bwd_wmd = *qmd(bpd, dnnl_query_weights_md);
        c->wb = dnnl_memory_desc_equal(&c->bwd_wmd, &c->fwd_wmd)
                    ? c->wf
                    : eng_dnn_buf(&t->pool, dnnl_memory_desc_get_size(&c->bwd_wmd));
        if (!c->wb) goto oom;
        eng_dnn_op *b = &c->bwdd;
        b->args[0] = (dnnl_exec_arg_t){DNNL_ARG_DIFF_DST, mem(t, &dmd, ddst)};
        b->args[1] = (dnnl_exec_arg_t){DNNL_ARG_WEIGHTS, mem(t, &c->bwd_wmd, c->wb)};
        b->args[2] = (dnnl_exec_arg_t){DNNL_ARG_DIFF_SRC, mem(t, &smd, dsrc)};
        b->args[3] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, mem(t, qmd(bpd, dnnl_query_scratchpad_md), NULL)};
        b->nargs = 4;
        grow_scratch(t, bpd);
        DN(dnnl_primitive_create(&b->prim, bpd));
    }
    for (int i = 0; i < 4; i++)
        if (!f->args[i].memory || !w->args[i].memory || (dsrc && !c->bwdd.args[i].memory)) goto oom;
    goto fail;
oom:
    rc = eng_errf(err, errlen, ENG_ENOMEM, "out of memory for %s", par->p.key);
fail:
    if (fpd) dnnl_primitive_desc_destroy(fpd);
    if (bpd) dnnl_primitive_desc_destroy(bpd);
    if (wpd) dnnl_primitive_desc_destroy(wpd);
    if (attr) dnnl_primitive_attr_destroy(attr);
    if (battr) dnnl_primitive_attr_destroy(battr);
    return rc;
}

/* Standardise the raw kernel and pack it for the forward and backward-data primitives. */
static int tconv_refresh(eng_trainer *t, tconv *c, char *err, size_t errlen)
{
    ws_forward(c);
    int rc = eng_dnn_reorder(t->eng, t->s, &c->plain, c->ws, &c->fwd_wmd, c->wf, err, errlen);
    if (!rc && c->wb && c->wb != c->wf)
        rc = eng_dnn_reorder(t->eng, t->s, &c->plain, c->ws, &c->bwd_wmd, c->wb, err, errlen);
    return rc;
}

/* Backward-weights of one micro-batch, summed in oneDNN's own layout: the standardisation's
 * gradient is linear, so it is unpacked and taken through WS once per step (tconv_flush),
 * not once per micro-batch. */
static int tconv_grad(eng_trainer *t, tconv *c, char *err, size_t errlen)
{
    int rc = eng_dnn_exec(t->s, &c->bwdw, err, errlen);
    if (rc) return rc;
    float *acc = c->dwacc;
    const float *d = c->dwp;
    #pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < c->dw_n; i++) acc[i] += d[i];
    c->dirty = 1;
    return 0;
}

static int tconv_flush(eng_trainer *t, tconv *c, char *err, size_t errlen)
{
    if (!c->dirty) return 0;
    int rc = eng_dnn_reorder(t->eng, t->s, &c->dif_wmd, c->dwacc, &c->plain, c->dws, err, errlen);
    if (rc) return rc;
    ws_backward(c);
    memset(c->dwacc, 0, c->dw_n * sizeof(float));
    c->dirty = 0;
    return 0;
}

static void tconv_fini(tconv *c)
{
    eng_dnn_op_fini(&c->fwd), eng_dnn_op_fini(&c->bwdd), eng_dnn_op_fini(&c->bwdw);
}

/* ---------------------------------------------------------------- building */

static float *buf(eng_trainer *t, const eng_layout *l)
{
    return eng_dnn_buf(&t->pool, sizeof(float) * (size_t)eng_layout_size(l));
}

static float *fbuf(eng_trainer *t, int64_t n) { return eng_dnn_buf(&t->pool, sizeof(float) * (size_t)n); }

/* Layouts of every unit and the largest size of each shared buffer role. */
static void plan_layouts(eng_trainer *t, int blk, int64_t *maxT, int64_t *maxRaw, int64_t *maxX)
{
    int hw[5][2], n = t->o.micro_batch;
    eng_arch_spatial(t->o.h, t->o.w, hw);
    int H = hw[0][0], W = hw[0][1], i = 0;
    *maxX = eng_layout_size(&t->lpool);
    *maxT = *maxRaw = 0;
    for (int b = 0; b < 4; b++)
        for (int u = 0; u < t->arch.units[b]; u++, i++) {
            tunit *tu = &t->units[i];
            int mid = t->arch.width << b, cin = u ? 4 * mid : (b ? 2 * mid : t->arch.width);
            tu->in = (eng_layout){n, cin, H, W, blk};
            tu->mid_in = (eng_layout){n, mid, H, W, blk};
            tu->mid_out = (eng_layout){n, mid, hw[b][0], hw[b][1], blk};
            tu->out = (eng_layout){n, 4 * mid, hw[b][0], hw[b][1], blk};
            H = hw[b][0], W = hw[b][1];
            int64_t s_in = eng_layout_size(&tu->in), s_mi = eng_layout_size(&tu->mid_in);
            int64_t s_out = eng_layout_size(&tu->out);
            if (s_in > *maxT) *maxT = s_in;
            if (s_mi > *maxT) *maxT = s_mi;
            if (s_mi > *maxRaw) *maxRaw = s_mi;
            if (s_out > *maxX) *maxX = s_out;
        }
    t->lfinal = (eng_layout){n, t->feat, H, W, blk};
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
    tu->araw = buf(t, &tu->mid_in);
    tu->braw = buf(t, &tu->mid_out);
    tu->st_a = fbuf(t, 2 * n * G), tu->st_b = fbuf(t, 2 * n * G), tu->st_c = fbuf(t, 2 * n * G);
    if (!tu->araw || !tu->braw || !tu->st_a || !tu->st_b || !tu->st_c)
        return eng_errf(err, errlen, ENG_ENOMEM, "out of memory for the activations");
    /* Gradients ping-pong: unit i's output gradient is dX[i % 2], its input's dX[(i + 1) % 2]. */
    float *dcur = t->dX[i % 2];
    if ((rc = tconv_build(t, &tu->a, param(t, pre, b + 1, u + 1, 'a', "standardized_conv2d/kernel"),
                          1, &tu->in, t->T, &tu->mid_in, tu->araw, 0, t->dT, t->dRaw, err, errlen)) ||
        (rc = tconv_build(t, &tu->b, param(t, pre, b + 1, u + 1, 'b', "standardized_conv2d/kernel"),
                          stride, &tu->mid_in, t->T, &tu->mid_out, tu->braw, 0, t->dT, t->dRaw, err,
                          errlen)) ||
        (rc = tconv_build(t, &tu->c, param(t, pre, b + 1, u + 1, 'c', "standardized_conv2d/kernel"),
                          1, &tu->mid_out, t->T, &tu->out, tu->xo, 1, t->dT, dcur, err, errlen)))
        return rc;
    if (tu->proj)
        rc = tconv_build(t, &tu->p, param(t, pre, b + 1, u + 1, 'a', "proj/standardized_conv2d/kernel"),
                         stride, &tu->in, t->T, &tu->out, tu->xo, 0, t->dT2, dcur, err, errlen);
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
    eng_free(t->scratch);
    if (t->s) dnnl_stream_destroy(t->s);
    if (t->eng) dnnl_engine_destroy(t->eng);
    free(t);
}

static int set_all_scratch(eng_trainer *t)
{
    int bad = 0;
    tconv *cs[4];
    bad |= eng_dnn_set_scratch(&t->root.fwd, t->scratch) | eng_dnn_set_scratch(&t->root.bwdw, t->scratch);
    for (int i = 0; i < t->nu; i++) {
        tunit *u = &t->units[i];
        cs[0] = &u->a, cs[1] = &u->b, cs[2] = &u->c, cs[3] = &u->p;
        for (int k = 0; k < 4; k++)
            bad |= eng_dnn_set_scratch(&cs[k]->fwd, t->scratch) |
                   eng_dnn_set_scratch(&cs[k]->bwdd, t->scratch) |
                   eng_dnn_set_scratch(&cs[k]->bwdw, t->scratch);
    }
    return bad ? ENG_EDNNL : 0;
}

static int refresh_all(eng_trainer *t, char *err, size_t errlen)
{
    int rc = tconv_refresh(t, &t->root, err, errlen);
    for (int i = 0; !rc && i < t->nu; i++) {
        tunit *u = &t->units[i];
        rc = tconv_refresh(t, &u->a, err, errlen);
        if (!rc) rc = tconv_refresh(t, &u->b, err, errlen);
        if (!rc) rc = tconv_refresh(t, &u->c, err, errlen);
        if (!rc && u->proj) rc = tconv_refresh(t, &u->p, err, errlen);
    }
    return rc;
}

static int build(eng_trainer *t, const eng_npz *ckpt, char *err, size_t errlen)
{
    int rc = 0, n = t->o.micro_batch, total = 0;
    eng_arch_params(&t->arch, count_cb, &total);
    t->params = calloc((size_t)total, sizeof *t->params);
    for (int b = 0; b < 4; b++) t->nu += t->arch.units[b];
    t->units = calloc((size_t)t->nu, sizeof *t->units);
    t->X = calloc((size_t)t->nu + 1, sizeof *t->X);
    if (!t->params || !t->units || !t->X) goto oom;
    collect_ctx cc = {t, ckpt, 0};
    eng_arch_params(&t->arch, collect_cb, &cc);
    if (cc.rc) goto oom;
    DN(dnnl_engine_create(&t->eng, dnnl_cpu, 0));
    DN(dnnl_stream_create(&t->s, t->eng, dnnl_stream_default_flags));
    int rh = eng_out_size(t->o.h, 7, 2, 3), rw = eng_out_size(t->o.w, 7, 2, 3), blk = 16;
    t->lin = (eng_layout){n, 3, t->o.h, t->o.w, 1};
    t->lroot = (eng_layout){n, t->arch.width, rh, rw, blk};
    t->lpool = (eng_layout){n, t->arch.width, eng_out_size(rh, 3, 2, 1), eng_out_size(rw, 3, 2, 1), blk};
    int64_t maxT, maxRaw, maxX;
    plan_layouts(t, blk, &maxT, &maxRaw, &maxX);
    t->R = buf(t, &t->lroot), t->dR = buf(t, &t->lroot);
    t->X[0] = buf(t, &t->lpool);
    for (int i = 0; i < t->nu; i++)
        if (!(t->X[i + 1] = buf(t, &t->units[i].out))) goto oom;
    t->T = fbuf(t, maxT), t->dT = fbuf(t, maxT), t->dT2 = fbuf(t, maxT), t->dRaw = fbuf(t, maxRaw);
    t->dX[0] = fbuf(t, maxX), t->dX[1] = fbuf(t, maxX), t->Tf = buf(t, &t->lfinal);
    t->featv = fbuf(t, (int64_t)n * t->feat), t->dfeat = fbuf(t, (int64_t)n * t->feat);
    t->logits = fbuf(t, (int64_t)n * t->classes), t->st_f = fbuf(t, 2 * n * G);
    if (!t->R || !t->dR || !t->X[0] || !t->T || !t->dT || !t->dT2 || !t->dRaw || !t->dX[0] ||
        !t->dX[1] || !t->Tf || !t->featv || !t->dfeat || !t->logits || !t->st_f)
        goto oom;
    if ((rc = tconv_build(t, &t->root, param(t, "resnet/root_block/standardized_conv2d/kernel"), 2,
                          &t->lin, NULL, &t->lroot, t->R, 0, NULL, t->dR, err, errlen)))
        return rc;
    for (int b = 0, i = 0; b < 4; b++)
        for (int u = 0; u < t->arch.units[b]; u++, i++)
            if ((rc = unit_build(t, b, u, i, err, errlen))) return rc;
    t->gf = param(t, "resnet/group_norm/gamma"), t->bf = param(t, "resnet/group_norm/beta");
    t->hw = param(t, "resnet/head/conv2d/kernel"), t->hb = param(t, "resnet/head/conv2d/bias");
    if (!(t->scratch = eng_alloc(t->scratch_bytes ? t->scratch_bytes : 64)) || set_all_scratch(t))
        goto oom;
    return refresh_all(t, err, errlen);
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
    if ((rc = build(t, ckpt, err, errlen))) {
        eng_trainer_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

/* ---------------------------------------------------------------- forward and backward */

static int gn_fwd(const eng_layout *l, const float *x, float *dst, const tparam *g,
                  const tparam *b, float *st)
{
    return eng_gn_relu(l, x, dst, g->w, b->w, st, st + l->n * G);
}

static int gn_bwd(const eng_layout *l, const float *x, const float *st, const tparam *g,
                  const tparam *b, const float *dy, const float *dfeat, const float *res, float *dx)
{
    return eng_gn_relu_backward(l, x, st, st + l->n * G, g->w, b->w, dy, dfeat, res, dx, g->g, b->g);
}

static int unit_forward(eng_trainer *t, tunit *u, char *err, size_t errlen)
{
    int rc = gn_fwd(&u->in, u->x, t->T, u->ga, u->ba, u->st_a);
    if (!rc) {
        if (u->proj) rc = eng_dnn_exec(t->s, &u->p.fwd, err, errlen);
        else memcpy(u->xo, u->x, sizeof(float) * (size_t)eng_layout_size(&u->out));
    }
    if (!rc) rc = eng_dnn_exec(t->s, &u->a.fwd, err, errlen);
    if (!rc) rc = gn_fwd(&u->mid_in, u->araw, t->T, u->gb, u->bb, u->st_b);
    if (!rc) rc = eng_dnn_exec(t->s, &u->b.fwd, err, errlen);
    if (!rc) rc = gn_fwd(&u->mid_out, u->braw, t->T, u->gc, u->bc, u->st_c);
    if (!rc) rc = eng_dnn_exec(t->s, &u->c.fwd, err, errlen); /* adds into xo: the residual */
    return rc;
}

static void add(float *dst, const float *src, int64_t n)
{
    #pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; i++) dst[i] += src[i];
}

static int unit_backward(eng_trainer *t, tunit *u, int i, char *err, size_t errlen)
{
    float *dcur = t->dX[i % 2], *dprev = t->dX[(i + 1) % 2];
    int n = t->o.micro_batch, rc;
    if ((rc = eng_gn_relu_apply(&u->mid_out, u->braw, t->T, u->gc->w, u->bc->w, u->st_c,
                                u->st_c + n * G)) ||
        (rc = tconv_grad(t, &u->c, err, errlen)) ||
        (rc = eng_dnn_exec(t->s, &u->c.bwdd, err, errlen)) ||
        (rc = gn_bwd(&u->mid_out, u->braw, u->st_c, u->gc, u->bc, t->dT, NULL, NULL, t->dRaw)) ||
        (rc = eng_gn_relu_apply(&u->mid_in, u->araw, t->T, u->gb->w, u->bb->w, u->st_b,
                                u->st_b + n * G)) ||
        (rc = tconv_grad(t, &u->b, err, errlen)) ||
        (rc = eng_dnn_exec(t->s, &u->b.bwdd, err, errlen)) ||
        (rc = gn_bwd(&u->mid_in, u->araw, u->st_b, u->gb, u->bb, t->dT, NULL, NULL, t->dRaw)) ||
        (rc = eng_gn_relu_apply(&u->in, u->x, t->T, u->ga->w, u->ba->w, u->st_a, u->st_a + n * G)) ||
        (rc = tconv_grad(t, &u->a, err, errlen)) ||
        (rc = eng_dnn_exec(t->s, &u->a.bwdd, err, errlen)))
        return rc;
    if (u->proj) {
        if ((rc = tconv_grad(t, &u->p, err, errlen)) ||
            (rc = eng_dnn_exec(t->s, &u->p.bwdd, err, errlen)))
            return rc;
        add(t->dT, t->dT2, eng_layout_size(&u->in));
    }
    return gn_bwd(&u->in, u->x, u->st_a, u->ga, u->ba, t->dT, NULL, u->proj ? NULL : dcur, dprev);
}

/* logits = feat . W + b with W the head's [F][classes] matrix. */
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
    DN(dnnl_memory_set_data_handle(t->root.fwd.args[0].memory, (void *)x));
    DN(dnnl_memory_set_data_handle(t->root.bwdw.args[0].memory, (void *)x));
    if ((rc = eng_dnn_exec(t->s, &t->root.fwd, err, errlen))) goto fail;
    eng_pool_root(&t->lroot, t->R, &t->lpool, t->X[0]);
    for (int i = 0; i < t->nu; i++)
        if ((rc = unit_forward(t, &t->units[i], err, errlen))) goto fail;
    if ((rc = eng_gn_stats(&t->lfinal, t->X[t->nu], t->st_f, t->st_f + n * G))) goto oom;
    /* pooled features: relu(GN) averaged, through the same apply as the backward recompute */
    float *tmp = t->Tf;
    if ((rc = eng_gn_relu_apply(&t->lfinal, t->X[t->nu], tmp, t->gf->w, t->bf->w, t->st_f,
                                t->st_f + n * G)))
        goto oom;
    eng_layout plain = t->lfinal;
    int64_t hw = (int64_t)plain.h * plain.w;
    #pragma omp parallel for collapse(2) schedule(static)
    for (int i = 0; i < n; i++)
        for (int c = 0; c < t->feat; c++) {
            double s = 0;
            for (int y = 0; y < plain.h; y++)
                for (int xx = 0; xx < plain.w; xx++) s += tmp[eng_layout_off(&plain, i, c, y, xx)];
            t->featv[(int64_t)i * t->feat + c] = (float)(s / hw);
        }
    head_forward(t);
    return 0;
oom:
    rc = eng_errf(err, errlen, rc, "out of memory in GroupNorm");
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
    double l = loss_and_grad(t, y, y2, y2 ? lam : 1.0, scale);
    if (loss) *loss = l;
    head_backward(t);
    float *dlast = t->dX[(t->nu - 1) % 2];
    if ((rc = gn_bwd(&t->lfinal, t->X[t->nu], t->st_f, t->gf, t->bf, NULL, t->dfeat, NULL, dlast)))
        return eng_errf(err, errlen, rc, "out of memory in GroupNorm");
    for (int i = t->nu - 1; i >= 0; i--)
        if ((rc = unit_backward(t, &t->units[i], i, err, errlen))) return rc;
    eng_pool_root_backward(&t->lroot, t->R, &t->lpool, t->dX[1], t->dR);
    return tconv_grad(t, &t->root, err, errlen);
}

/* ---------------------------------------------------------------- update and export */

/* Takes every conv's summed packed gradient into the raw kernels' gradients. */
static int flush_all(eng_trainer *t, char *err, size_t errlen)
{
    int rc = tconv_flush(t, &t->root, err, errlen);
    for (int i = 0; !rc && i < t->nu; i++) {
        tunit *u = &t->units[i];
        rc = tconv_flush(t, &u->a, err, errlen);
        if (!rc) rc = tconv_flush(t, &u->b, err, errlen);
        if (!rc) rc = tconv_flush(t, &u->c, err, errlen);
        if (!rc && u->proj) rc = tconv_flush(t, &u->p, err, errlen);
    }
    return rc;
}

int eng_trainer_update(eng_trainer *t, double lr, double momentum, double wd_conv, char *err,
                       size_t errlen)
{
    int frc = flush_all(t, err, errlen);
    if (frc) return frc;
    for (int i = 0; i < t->np; i++) {
        tparam *p = &t->params[i];
        float wd = p->p.kind == ENG_P_CONV ? (float)wd_conv : 0.0f;
        float mom = (float)momentum, rate = (float)lr;
        #pragma omp parallel for simd schedule(static)
        for (int64_t k = 0; k < p->n; k++) {
            float g = p->g[k] + wd * p->w[k];
            p->m[k] = mom * p->m[k] + g;
            p->w[k] -= rate * p->m[k];
            p->g[k] = 0;
        }
    }
    return refresh_all(t, err, errlen);
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
int eng_trainer_grads(eng_trainer *t, eng_npz **out)
{
    int rc = flush_all(t, NULL, 0);
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
