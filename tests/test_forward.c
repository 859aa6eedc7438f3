/* The forward pass against the reference fixtures: logits, every stage's activations, tiny
 * inputs where the GroupNorm epsilon matters, non-square inputs, batching and threads. */
#include <pthread.h>

#include "net.h"
#include "t.h"

static char err[512];

/* |got - ref| <= atol + rtol * |ref| (scaled: atol is multiplied by max |ref|). */
static int close_enough(const float *got, const float *ref, int64_t n, double atol, double rtol,
                        int scaled, const char *what)
{
    double mx = 0, worst = 0;
    if (scaled)
        for (int64_t i = 0; i < n; i++) mx = fmax(mx, fabs(ref[i]));
    double a = scaled ? atol * mx : atol;
    int64_t bad = 0, at = -1;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]), lim = a + rtol * fabs(ref[i]);
        if (!(d <= lim)) bad++, at = at < 0 ? i : at;
        if (d > worst) worst = d;
    }
    if (bad)
        fprintf(stderr, "  %s: %lld of %lld values out of tolerance (first at %lld: %g vs %g), "
                        "max diff %g\n", what, (long long)bad, (long long)n, (long long)at,
                at >= 0 ? got[at] : 0, at >= 0 ? ref[at] : 0, worst);
    return bad == 0;
}

static eng_net *load_net(const char *name, eng_precision prec)
{
    eng_npz *z = NULL;
    eng_arch a;
    eng_net *net = NULL;
    eng_net_opts o = {.precision = prec};
    if (eng_npz_load(t_fixture(name), NULL, &z, err, sizeof err) ||
        eng_arch_from_npz(z, &a, err, sizeof err) || eng_net_new(z, &a, &o, &net, err, sizeof err))
        fprintf(stderr, "  %s: %s\n", name, err);
    eng_npz_free(z);
    return net;
}

typedef struct acts_ctx {
    eng_npz *ref;
    int checked, ok;
} acts_ctx;

/* Compares image 0 of each stage (and all images of prelogits) with the stored activation. */
static void acts_tap(void *ud, const char *stage, const float *x, int n, int c, int h, int w)
{
    acts_ctx *a = ud;
    const eng_tensor *r = eng_npz_get(a->ref, stage);
    if (!r) return;
    int64_t per = (int64_t)c * h * w, want = eng_tensor_numel(r);
    if (!strcmp(stage, "prelogits") ? want != per * n : want != per) {
        fprintf(stderr, "  %s: shape mismatch (%lld values, reference %lld)\n", stage,
                (long long)per, (long long)want);
        a->ok = 0;
        return;
    }
    /* manifest: activations scaled_atol 1e-4, rtol 1e-3 (float32 profile) */
    if (!close_enough(x, r->data, want, 1e-4, 1e-3, 1, stage)) a->ok = 0;
    a->checked++;
}

static void check_model(const char *model, const char *input, const char *logits, const char *acts,
                        int expect_taps)
{
    eng_net *net = load_net(model, ENG_PREC_F32);
    eng_tensor *x = NULL, *y = NULL;
    T_REQUIRE(net);
    T_REQUIRE(eng_npy_load(t_fixture(input), &x, err, sizeof err) == 0);
    T_REQUIRE(eng_npy_load(t_fixture(logits), &y, err, sizeof err) == 0);
    int n = (int)x->shape[0], k = eng_net_out_dim(net);
    T_CHECK(y->shape[0] == n && y->shape[1] == k);
    float *out = calloc((size_t)n * k, sizeof(float));
    acts_ctx ac = {.ok = 1};
    if (acts) T_REQUIRE(eng_npz_load(t_fixture(acts), NULL, &ac.ref, err, sizeof err) == 0);
    T_CHECKF(eng_net_forward(net, x->data, n, (int)x->shape[2], (int)x->shape[3], out,
                             acts ? acts_tap : NULL, &ac, err, sizeof err) == 0, "%s", err);
    /* manifest: logits atol 3e-5, rtol 3e-4 (float32 profile) */
    T_CHECK(close_enough(out, y->data, (int64_t)n * k, 3e-5, 3e-4, 0, logits));
    if (acts) T_CHECKF(ac.ok && ac.checked == expect_taps, "%d stages checked", ac.checked);
    /* The same net again (cached plan) gives bit-identical logits. */
    float *again = calloc((size_t)n * k, sizeof(float));
    T_CHECK(eng_net_forward(net, x->data, n, (int)x->shape[2], (int)x->shape[3], again, NULL, NULL,
                            err, sizeof err) == 0);
    T_CHECK(!memcmp(out, again, sizeof(float) * (size_t)n * k));
    free(again);
    free(out);
    eng_npz_free(ac.ref);
    eng_tensor_free(x);
    eng_tensor_free(y);
    eng_net_free(net);
}

static void logits_model1(void) { check_model("model.npz", "input.npy", "logits.npy", "acts.npz", 7); }
static void logits_model2_nonsquare(void)
{
    check_model("model2.npz", "input2.npy", "logits2.npy", "acts2.npz", 5);
}
static void logits_small_inputs_eps(void)
{
    check_model("model.npz", "input_small.npy", "logits_small.npy", NULL, 0);
}

/* One image at a time gives what the batch gives (GroupNorm is per example). */
static void batch_independence(void)
{
    eng_net *net = load_net("model.npz", ENG_PREC_F32);
    eng_tensor *x = NULL, *y = NULL;
    T_REQUIRE(net && eng_npy_load(t_fixture("input.npy"), &x, err, sizeof err) == 0);
    T_REQUIRE(eng_npy_load(t_fixture("logits.npy"), &y, err, sizeof err) == 0);
    float out[10];
    for (int i = 0; i < 4; i++) {
        const float *xi = (const float *)x->data + (size_t)i * 3 * 64 * 64;
        T_REQUIRE(eng_net_forward(net, xi, 1, 64, 64, out, NULL, NULL, err, sizeof err) == 0);
        T_CHECK(close_enough(out, (const float *)y->data + i * 10, 10, 3e-5, 3e-4, 0, "single"));
    }
    eng_tensor_free(x);
    eng_tensor_free(y);
    eng_net_free(net);
}

typedef struct thr {
    eng_net *net;
    const float *x;
    float out[40];
    int rc;
} thr;

static void *thr_main(void *ud)
{
    thr *t = ud;
    char e[256];
    for (int r = 0; r < 3 && !t->rc; r++)
        t->rc = eng_net_forward(t->net, t->x, 4, 64, 64, t->out, NULL, NULL, e, sizeof e);
    return NULL;
}

/* Concurrent callers share one net (weights read-only) and get identical answers. */
static void concurrent_callers(void)
{
    eng_net *net = load_net("model.npz", ENG_PREC_F32);
    eng_tensor *x = NULL;
    T_REQUIRE(net && eng_npy_load(t_fixture("input.npy"), &x, err, sizeof err) == 0);
    thr t[3];
    pthread_t th[3];
    for (int i = 0; i < 3; i++) {
        t[i] = (thr){.net = net, .x = x->data};
        pthread_create(&th[i], NULL, thr_main, &t[i]);
    }
    for (int i = 0; i < 3; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < 3; i++) T_CHECK(t[i].rc == 0);
    T_CHECK(!memcmp(t[0].out, t[1].out, sizeof t[0].out) && !memcmp(t[0].out, t[2].out, sizeof t[0].out));
    eng_tensor_free(x);
    eng_net_free(net);
}

/* Many shapes through a small plan cache: eviction works and results stay right. */
static void plan_cache_eviction(void)
{
    eng_npz *z = NULL;
    eng_arch a;
    eng_net *net = NULL;
    eng_net_opts o = {.max_plans = 2};
    T_REQUIRE(eng_npz_load(t_fixture("model.npz"), NULL, &z, err, sizeof err) == 0);
    T_REQUIRE(eng_arch_from_npz(z, &a, err, sizeof err) == 0);
    T_REQUIRE(eng_net_new(z, &a, &o, &net, err, sizeof err) == 0);
    eng_tensor *x = NULL, *y = NULL;
    T_REQUIRE(eng_npy_load(t_fixture("input.npy"), &x, err, sizeof err) == 0);
    T_REQUIRE(eng_npy_load(t_fixture("logits.npy"), &y, err, sizeof err) == 0);
    float *junk = calloc(2 * 3 * 70 * 90, sizeof(float)), out[40];
    int sizes[][3] = {{1, 32, 32}, {2, 70, 90}, {1, 33, 47}, {2, 64, 64}};
    for (int i = 0; i < 4; i++)
        T_CHECKF(eng_net_forward(net, junk, sizes[i][0], sizes[i][1], sizes[i][2], out, NULL, NULL,
                                 err, sizeof err) == 0, "%s", err);
    T_EQ(eng_net_forward(net, x->data, 4, 64, 64, out, NULL, NULL, err, sizeof err), 0);
    T_CHECK(close_enough(out, y->data, 40, 3e-5, 3e-4, 0, "after eviction"));
    T_EQ(eng_net_forward(net, x->data, 4, 31, 64, out, NULL, NULL, err, sizeof err), ENG_EINVAL);
    T_EQ(eng_net_forward(net, x->data, 0, 64, 64, out, NULL, NULL, err, sizeof err), ENG_EINVAL);
    free(junk);
    eng_tensor_free(x);
    eng_tensor_free(y);
    eng_net_free(net);
    eng_npz_free(z);
}

/* A checkpoint without a head yields the pooled features. */
static void headless_features(void)
{
    eng_npz *z = NULL;
    eng_arch a;
    eng_net *net = NULL;
    T_REQUIRE(eng_npz_load(t_fixture("model.npz"), NULL, &z, err, sizeof err) == 0);
    eng_npz *h = eng_npz_new();
    for (int i = 0; i < z->n; i++)
        if (!strstr(z->names[i], "/head/")) eng_npz_put(h, z->names[i], eng_tensor_clone(z->tensors[i]));
    T_REQUIRE(eng_arch_from_npz(h, &a, err, sizeof err) == 0 && a.head == 0);
    T_REQUIRE(eng_net_new(h, &a, NULL, &net, err, sizeof err) == 0);
    T_EQ(eng_net_out_dim(net), 1024);
    eng_tensor *x = NULL;
    eng_npz *acts = NULL;
    T_REQUIRE(eng_npy_load(t_fixture("input.npy"), &x, err, sizeof err) == 0);
    T_REQUIRE(eng_npz_load(t_fixture("acts.npz"), NULL, &acts, err, sizeof err) == 0);
    float *f = calloc(4 * 1024, sizeof(float));
    T_EQ(eng_net_forward(net, x->data, 4, 64, 64, f, NULL, NULL, err, sizeof err), 0);
    T_CHECK(close_enough(f, eng_npz_get(acts, "prelogits")->data, 4 * 1024, 1e-4, 1e-3, 1, "features"));
    free(f);
    eng_tensor_free(x);
    eng_npz_free(acts);
    eng_net_free(net);
    eng_npz_free(h);
    eng_npz_free(z);
}

/* bf16 is a setting of the engine: it runs, and stays near the float32 answer. */
static void bf16_runs(void)
{
    eng_net *net = load_net("model.npz", ENG_PREC_BF16);
    eng_tensor *x = NULL, *y = NULL;
    T_REQUIRE(net && eng_npy_load(t_fixture("input.npy"), &x, err, sizeof err) == 0);
    T_REQUIRE(eng_npy_load(t_fixture("logits.npy"), &y, err, sizeof err) == 0);
    float out[40];
    T_REQUIRE(eng_net_forward(net, x->data, 4, 64, 64, out, NULL, NULL, err, sizeof err) == 0);
    double worst = 0, range = 0;
    for (int i = 0; i < 40; i++) {
        worst = fmax(worst, fabs(out[i] - ((float *)y->data)[i]));
        range = fmax(range, fabs(((float *)y->data)[i]));
    }
    /* Not a fixture tolerance (the fixtures are float32): a sanity bound for 8-bit mantissas. */
    T_CHECKF(worst < 0.1 * range + 0.05, "bf16 max diff %g (logit range %g)", worst, range);
    eng_tensor_free(x);
    eng_tensor_free(y);
    eng_net_free(net);
}

/* The same fixtures through the portable kernels (what CPUs without AVX-512 run). */
static void portable_kernels(void)
{
    setenv("BIT_SIMD", "portable", 1);
    logits_model1();
    logits_model2_nonsquare();
    logits_small_inputs_eps();
    unsetenv("BIT_SIMD");
}

int main(void)
{
    T_RUN(logits_model1);
    T_RUN(logits_model2_nonsquare);
    T_RUN(logits_small_inputs_eps);
    T_RUN(batch_independence);
    T_RUN(concurrent_callers);
    T_RUN(plan_cache_eviction);
    T_RUN(headless_features);
    T_RUN(bf16_runs);
    T_RUN(portable_kernels);
    return t_done();
}
