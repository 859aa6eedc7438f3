/* The AVX-512 row kernels against the portable ones, kernel by kernel, on seeded random data
 * in f32 and bf16: CPUs without AVX-512 run the portable code, so both must compute the same
 * thing (up to fused multiply-add rounding). Also bf16 rounding itself. */
#include "rng.h"
#include "simd.h"
#include "t.h"

#define ROWS 37
#define STRIDE 48 /* rows three slices apart, as NHWC with 48 channels */
#define N (ROWS * STRIDE)

static const eng_simd *v, *p;
static eng_rng rng;

static void fill(float *x, int n, double lo, double hi)
{
    for (int i = 0; i < n; i++) x[i] = (float)(lo + (hi - lo) * eng_rng_uniform(&rng));
}

/* src in type t: f32 as is, bf16 rounded into a uint16 copy */
static const void *as(const float *x, eng_act_type t, uint16_t *tmp, int n)
{
    if (t == ENG_ACT_F32) return x;
    for (int i = 0; i < n; i++) tmp[i] = eng_f32_to_bf16(x[i]);
    return tmp;
}

static float get(const void *b, eng_act_type t, int i)
{
    return t == ENG_ACT_BF16 ? eng_bf16_to_f32(((const uint16_t *)b)[i]) : ((const float *)b)[i];
}

static int near(double a, double b, double tol) { return fabs(a - b) <= tol * (1 + fabs(b)); }

static void bf16_rounding(void)
{
    T_CHECK(eng_f32_to_bf16(1.0f) == 0x3f80);
    T_CHECK(eng_bf16_to_f32(0x3f80) == 1.0f);
    T_CHECK(eng_f32_to_bf16(1.0f + 1.0f / 256) == 0x3f80);          /* tie: to even */
    T_CHECK(eng_f32_to_bf16(1.0f + 3.0f / 256) == 0x3f82);          /* tie: to even, up */
    T_CHECK(eng_f32_to_bf16(1.0f + 1.0f / 256 + 1e-6f) == 0x3f81);  /* above the tie */
    T_CHECK(eng_f32_to_bf16(-2.5f) == 0xc020);
    float x[64];
    uint16_t a[64], b[64];
    fill(x, 64, -1000, 1000);
    p->convert(x, ENG_ACT_F32, a, ENG_ACT_BF16, 64);
    for (int i = 0; i < 64; i++) T_CHECK(a[i] == eng_f32_to_bf16(x[i]));
    for (int i = 0; i < 64; i++) /* 8 significant bits: relative error at most u = 2^-8 */
        T_CHECK(fabs(eng_bf16_to_f32(a[i]) - x[i]) <= fabs(x[i]) / 256);
    if (!v) return;
    v->convert(x, ENG_ACT_F32, b, ENG_ACT_BF16, 64);
    T_CHECK(!memcmp(a, b, sizeof a));
}

/* One eng_rows job over the test buffers: 16 lanes of every row, rows STRIDE apart. */
static eng_rows job(const void *x, eng_act_type t, float *c[8])
{
    eng_rows r = {.rows = ROWS, .stride = STRIDE, .lanes = 16, .x = x, .xt = t};
    for (int k = 0; k < 8; k++) r.c[k] = c[k];
    return r;
}

static void gn_kernels(void)
{
    float x[N], dy[N], dy2[N], res[N], cf[8][16], *c[8];
    uint16_t xb[N], dyb[N], dy2b[N];
    fill(x, N, -2, 3), fill(dy, N, -1, 1), fill(dy2, N, -1, 1), fill(res, N, -1, 1);
    for (int k = 0; k < 8; k++) fill(cf[k], 16, k == 1 ? -1 : 0.2, k == 1 ? 1 : 2), c[k] = cf[k];
    for (int t = 0; t < 2; t++) {
        eng_act_type ty = t ? ENG_ACT_BF16 : ENG_ACT_F32;
        const void *xs = as(x, ty, xb, N), *ds = as(dy, ty, dyb, N), *d2 = as(dy2, ty, dy2b, N);
        double s[4][16] = {{0}};
        eng_rows r = job(xs, ty, c);
        p->sums(&r, s[0], s[1]), v->sums(&r, s[2], s[3]);
        for (int k = 0; k < 16; k++)
            T_CHECKF(near(s[0][k], s[2][k], 1e-12) && near(s[1][k], s[3][k], 1e-12), "sums %d", k);
        float y[2][N], cp[2][N];
        for (int i = 0; i < 2; i++) {
            eng_rows a = job(xs, ty, c);
            a.y = y[i], a.yt = ENG_ACT_F32, a.y2 = cp[i];
            (i ? v : p)->apply(&a);
        }
        for (int i = 0; i < ROWS; i++)
            for (int k = 0; k < 16; k++) {
                int o = i * STRIDE + k;
                T_CHECKF(near(y[0][o], y[1][o], 1e-6), "apply %d", o);
                T_CHECKF(get(cp[0], ty, o) == get(xs, ty, o) && get(cp[1], ty, o) == get(xs, ty, o),
                         "copy %d", o);
            }
        double acc[2][16] = {{0}};
        p->relu_sum(&r, acc[0]), v->relu_sum(&r, acc[1]);
        for (int k = 0; k < 16; k++) T_CHECKF(near(acc[0][k], acc[1][k], 1e-6), "relu_sum %d", k);
        for (int variant = 0; variant < 2; variant++) { /* dy + dy2 + res, or dfeat (c7) */
            double b[4][16] = {{0}};
            float dx[2][N];
            uint16_t dxb[2][N];
            for (int i = 0; i < 2; i++) {
                eng_rows g = job(xs, ty, c);
                g.dy = variant ? NULL : ds, g.dy2 = variant ? NULL : d2, g.dyt = ty;
                g.res = variant ? NULL : res, g.rt = ENG_ACT_F32;
                g.y = dx[i], g.yt = ENG_ACT_F32, g.y2 = dxb[i];
                (i ? v : p)->bwd_sums(&g, b[2 * i], b[2 * i + 1]);
                (i ? v : p)->bwd_apply(&g);
            }
            for (int k = 0; k < 16; k++)
                T_CHECKF(near(b[0][k], b[2][k], 1e-5) && near(b[1][k], b[3][k], 1e-5),
                         "bwd sums %d: %g %g / %g %g", k, b[0][k], b[2][k], b[1][k], b[3][k]);
            for (int i = 0; i < ROWS; i++)
                for (int k = 0; k < 16; k++) {
                    int o = i * STRIDE + k;
                    T_CHECKF(near(dx[0][o], dx[1][o], 1e-5), "bwd apply %d", o);
                    T_CHECK(dxb[1][o] == eng_f32_to_bf16(dx[1][o]));
                }
        }
    }
}

/* Root pooling on an 9 x 7 plane (odd sizes: the last window is clipped), rows 16 apart,
 * negative values included (padding zeros then win). */
static void pool_kernels(void)
{
    enum { IH = 9, IW = 7, OH = 5, OW = 4 };
    float in[IH * IW * 16], out[2][OH * OW * 16], dout[OH * OW * 16], acc[2][IH * IW * 16];
    uint16_t inb[IH * IW * 16];
    fill(in, IH * IW * 16, -1, 0.5), fill(dout, OH * OW * 16, -1, 1);
    for (int i = 0; i < IH * IW * 16; i++) in[i] = floorf(in[i] * 4) / 4; /* ties, zeros */
    for (int t = 0; t < 2; t++) {
        eng_act_type ty = t ? ENG_ACT_BF16 : ENG_ACT_F32;
        const void *src = as(in, ty, inb, IH * IW * 16);
        memset(acc, 0, sizeof acc);
        for (int i = 0; i < 2; i++)
            for (int oy = 0; oy < OH; oy++) {
                (i ? v : p)->pool_row(src, ty, 16, IH, IW, 16, oy, OW, out[i] + oy * OW * 16,
                                      ENG_ACT_F32, 16);
                (i ? v : p)->pool_bwd_row(src, ty, 16, IH, IW, 16, oy, OW, dout + oy * OW * 16, 16,
                                          acc[i], 16);
            }
        T_CHECK(!memcmp(out[0], out[1], sizeof out[0]));
        T_CHECK(!memcmp(acc[0], acc[1], sizeof acc[0]));
        /* the fixtures' rule, directly: the first maximum in row-major order, pads (value 0)
         * included; a winning pad takes the gradient nowhere */
        float want[IH * IW * 16] = {0};
        int padwins = 0;
        for (int oy = 0; oy < OH; oy++)
            for (int ox = 0; ox < OW; ox++)
                for (int k = 0; k < 16; k++) {
                    float m = -INFINITY;
                    int at = -1;
                    for (int j = 0; j < 9; j++) {
                        int y = 2 * oy + j / 3 - 1, x = 2 * ox + j % 3 - 1;
                        int pad = y < 0 || x < 0 || y >= IH || x >= IW;
                        float val = pad ? 0 : in[(y * IW + x) * 16 + k];
                        if (val > m) m = val, at = pad ? -1 : (y * IW + x) * 16 + k;
                    }
                    T_CHECK(out[0][(oy * OW + ox) * 16 + k] == m);
                    if (at >= 0) want[at] += dout[(oy * OW + ox) * 16 + k];
                    else padwins++;
                }
        T_CHECK(!memcmp(want, acc[0], sizeof want) && padwins > 0);
    }
}

static void column_kernels(void)
{
    enum { R = 29, C = 40 }; /* 40 columns: two full chunks and a short one */
    float w[2][R * C], m[2][R * C], dws[R * C], g[2][R * C], mean[C], inv[C], ga[C], gb[C];
    uint16_t ob[2][R * C];
    fill(w[0], R * C, -0.1, 0.1), fill(m[0], R * C, -0.01, 0.01), fill(dws, R * C, -1, 1);
    fill(mean, C, -0.01, 0.01), fill(inv, C, 5, 20), fill(ga, C, -0.1, 0.1), fill(gb, C, -0.1, 0.1);
    memcpy(w[1], w[0], sizeof w[0]), memcpy(m[1], m[0], sizeof m[0]);
    double s[4][C] = {{0}};
    eng_mat plain = {dws, NULL, 0};
    p->colsums(plain, w[0], R, C, s[0], s[1]), v->colsums(plain, w[0], R, C, s[2], s[3]);
    for (int o = 0; o < C; o++) T_CHECK(near(s[0][o], s[2][o], 1e-12) && near(s[1][o], s[3][o], 1e-12));
    p->standardise(w[0], ob[0], ENG_ACT_BF16, R, C, mean, inv);
    v->standardise(w[0], ob[1], ENG_ACT_BF16, R, C, mean, inv);
    T_CHECK(!memcmp(ob[0], ob[1], sizeof ob[0]));
    p->ws_update(plain, w[0], NULL, g[0], R, C, mean, inv, ga, gb, 0, 0, 0, NULL, NULL);
    v->ws_update(plain, w[0], NULL, g[1], R, C, mean, inv, ga, gb, 0, 0, 0, NULL, NULL);
    T_CHECK(!memcmp(g[0], g[1], sizeof g[0]));
    float w0[R * C], m0[R * C];
    memcpy(w0, w[0], sizeof w0), memcpy(m0, m[0], sizeof m0);
    memset(s, 0, sizeof s);
    for (int i = 0; i < 2; i++)
        (i ? v : p)->ws_update(plain, w[i], m[i], NULL, R, C, mean, inv, ga, gb, 0.9f, 1e-4f, 0.05f,
                               s[2 * i], s[2 * i + 1]);
    T_CHECK(!memcmp(w[0], w[1], sizeof w[0]) && !memcmp(m[0], m[1], sizeof m[0]));
    for (int o = 0; o < C; o++) T_CHECK(near(s[0][o], s[2][o], 1e-12) && near(s[1][o], s[3][o], 1e-12));
    /* the update element by element: g through WS, then SGD with momentum and weight decay,
     * and the new column sums */
    double s1[C] = {0};
    for (int e = 0; e < R * C; e++) {
        int o = e % C;
        float what = (w0[e] - mean[o]) * inv[o], gv = (dws[e] - ga[o] - what * gb[o]) * inv[o];
        T_CHECK(g[0][e] == gv);
        float mv = 0.9f * m0[e] + (gv + 1e-4f * w0[e]);
        T_CHECK(m[0][e] == mv && w[0][e] == w0[e] - 0.05f * mv);
        s1[o] += w[0][e];
    }
    for (int o = 0; o < C; o++) T_CHECK(near(s[0][o], s1[o], 1e-12));
}

/* The same sums and gradient read from a blocked copy (16 columns innermost, rows in reverse,
 * chunks far apart), as the trainer reads oneDNN's weight gradient in place. */
static void column_kernels_blocked(void)
{
    enum { R = 21, C = 48, CH = 4096 };
    static float dws[R * C], packed[3 * CH], w[R * C], mean[C], inv[C], ga[C], gb[C], g[4][R * C];
    int64_t off[R];
    fill(dws, R * C, -1, 1), fill(w, R * C, -0.1, 0.1), fill(mean, C, -0.01, 0.01);
    fill(inv, C, 5, 20), fill(ga, C, -0.1, 0.1), fill(gb, C, -0.1, 0.1);
    for (int r = 0; r < R; r++) {
        off[r] = (R - 1 - r) * 16 + 7;
        for (int o = 0; o < C; o++) packed[off[r] + (o / 16) * CH + o % 16] = dws[r * C + o];
    }
    eng_mat pm = {packed, off, CH}, pl = {dws, NULL, 0};
    const eng_simd *ks[] = {p, v};
    for (int i = 0; i < 2; i++) {
        double s[4][C] = {{0}};
        ks[i]->colsums(pl, w, R, C, s[0], s[1]), ks[i]->colsums(pm, w, R, C, s[2], s[3]);
        T_CHECK(!memcmp(s[0], s[2], sizeof s[0]) && !memcmp(s[1], s[3], sizeof s[1]));
        ks[i]->ws_update(pl, w, NULL, g[2 * i], R, C, mean, inv, ga, gb, 0, 0, 0, NULL, NULL);
        ks[i]->ws_update(pm, w, NULL, g[2 * i + 1], R, C, mean, inv, ga, gb, 0, 0, 0, NULL, NULL);
        T_CHECK(!memcmp(g[2 * i], g[2 * i + 1], sizeof g[0]));
    }
    T_CHECK(!memcmp(g[0], g[2], sizeof g[0]));
}

int main(void)
{
    eng_rng_seed(&rng, 1);
    p = eng_simd_portable();
    v = eng_simd_avx512();
    T_RUN(bf16_rounding);
    if (v) {
        T_RUN(gn_kernels);
        T_RUN(pool_kernels);
        T_RUN(column_kernels);
        T_RUN(column_kernels_blocked);
    } else {
        printf("(no AVX-512 on this CPU: only the portable kernels exist)\n");
    }
    return t_done();
}
