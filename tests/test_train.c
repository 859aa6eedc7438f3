/* Fine-tuning against the reference fixtures: loss and every gradient, and the four 8-step
 * trajectories (plain, batch split 2, MixUp, MixUp with batch split 2). */
#include <jansson.h>

#include "hyper.h"
#include "train.h"
#include "t.h"
#include "ttraj.h"

static char err[512];

/* Compares full[..., 0:4] / full[..., n-4:n] with a sampled reference (see the fixture README),
 * or the whole tensor when the reference is complete. Returns the element count compared. */
typedef double (*cmp_fn)(double got, double ref, void *ud);

static int64_t for_sampled(const eng_tensor *full, const eng_tensor *ref,
                           void (*fn)(double got, double ref, double start, void *ud),
                           const eng_tensor *start, void *ud)
{
    int nd = full->ndim;
    int64_t last = full->shape[nd - 1], rl = ref->shape[nd - 1];
    int64_t outer = eng_tensor_numel(full) / last;
    if (ref->ndim != nd || eng_tensor_numel(ref) / rl != outer) return -1;
    int sampled = rl != last;
    if (sampled && (rl != 8 || last < 8)) return -1;
    const float *f = full->data, *r = ref->data, *s = start ? start->data : NULL;
    int64_t n = 0;
    for (int64_t o = 0; o < outer; o++)
        for (int64_t j = 0; j < rl; j++) {
            int64_t fj = sampled && j >= 4 ? last - 8 + j : j;
            fn(f[o * last + fj], r[o * rl + j], s ? s[o * last + fj] : 0, ud);
            n++;
        }
    return n;
}

typedef struct gstat {
    double maxref, worst_excess;
    int64_t bad;
    double atol_scale, rtol;
    int pass; /* 0: find max |ref|, 1: check */
} gstat;

static void grad_cb(double got, double ref, double start, void *ud)
{
    (void)start;
    gstat *g = ud;
    if (g->pass == 0) {
        if (fabs(ref) > g->maxref) g->maxref = fabs(ref);
        return;
    }
    double lim = g->atol_scale * g->maxref + g->rtol * fabs(ref), d = fabs(got - ref);
    if (!(d <= lim)) g->bad++;
    if (d - lim > g->worst_excess) g->worst_excess = d - lim;
}

/* A float32 trainer on model.npz as it is (head included), micro-batches of `micro`. */
static eng_trainer *trainer_from(eng_npz *z, int micro)
{
    eng_arch a;
    eng_trainer *t = NULL;
    if (eng_arch_from_npz(z, &a, err, sizeof err)) return NULL;
    eng_train_opts o = {.micro_batch = micro, .h = 64, .w = 64};
    if (eng_trainer_new(z, &a, &o, &t, err, sizeof err)) fprintf(stderr, "  %s\n", err);
    return t;
}

static void gradients(void)
{
    eng_npz *z = NULL, *ref = NULL, *got = NULL;
    eng_tensor *x = NULL, *y = NULL;
    T_REQUIRE(eng_npz_load(t_fixture("model.npz"), NULL, &z, err, sizeof err) == 0);
    T_REQUIRE(eng_npz_load(t_fixture("grads.npz"), NULL, &ref, err, sizeof err) == 0);
    T_REQUIRE(eng_npy_load(t_fixture("input.npy"), &x, err, sizeof err) == 0);
    T_REQUIRE(eng_npy_load(t_fixture("labels.npy"), &y, err, sizeof err) == 0);
    eng_trainer *t = trainer_from(z, 4);
    T_REQUIRE(t);
    double loss;
    T_REQUIRE(eng_trainer_step(t, x->data, y->data, NULL, 1, 1, &loss, NULL, err, sizeof err) == 0);
    json_error_t je;
    json_t *lj = json_load_file(t_fixture("loss.json"), 0, &je);
    T_REQUIRE(lj);
    double want = json_real_value(json_object_get(lj, "mean_cross_entropy"));
    T_CHECKF(fabs(loss - want) <= 1e-5 + 1e-5 * fabs(want), "loss %.9f vs %.9f", loss, want);
    json_decref(lj);
    T_REQUIRE(eng_trainer_grads(t, &got) == 0);
    T_CHECK(got->n == ref->n);
    for (int i = 0; i < ref->n; i++) {
        const eng_tensor *g = eng_npz_get(got, ref->names[i]);
        T_CHECKF(g != NULL, "no gradient for %s", ref->names[i]);
        if (!g) continue;
        gstat st = {.atol_scale = 1e-3, .rtol = 1e-3}; /* manifest: grads scaled 1e-3, rtol 1e-3 */
        int64_t n = for_sampled(g, ref->tensors[i], grad_cb, NULL, &st);
        st.pass = 1;
        for_sampled(g, ref->tensors[i], grad_cb, NULL, &st);
        T_CHECKF(n > 0 && st.bad == 0, "%s: %lld of %lld out of tolerance (worst excess %g, max %g)",
                 ref->names[i], (long long)st.bad, (long long)n, st.worst_excess, st.maxref);
    }
    eng_npz_free(got);
    eng_trainer_free(t);
    eng_npz_free(z);
    eng_npz_free(ref);
    eng_tensor_free(x);
    eng_tensor_free(y);
}

static void f32_loss(void *ud, int step, int m, double loss, double want, const float *z, int n)
{
    (void)ud, (void)z, (void)n; /* manifest: trajectory losses atol 1e-4 */
    T_CHECKF(fabs(loss - want) <= 1e-4, "step %d micro %d: loss %.7f vs %.7f", step, m, loss, want);
}

static void f32_param(void *ud, const char *key, double d, double r, double c)
{
    (void)ud; /* manifest: ||got - ref|| <= 2e-5 ||ref|| + 0.2 ||ref - start|| (float32 profile) */
    T_CHECKF(d <= 2e-5 * r + 0.2 * c, "%s: |got - ref| %g > %g", key, d, 2e-5 * r + 0.2 * c);
}

/* One trajectory run: 8 steps of batch 4 from model.npz with a zero head. */
static void trajectory(int split, const char *perms, const char *losses, const char *final)
{
    ttraj tj = {ENG_PREC_F32, split, perms, losses, final, f32_loss, f32_param, NULL};
    ttraj_run(&tj);
}

static void traj_plain(void) { trajectory(1, NULL, "traj_losses.json", "traj_final.npz"); }
static void traj_split2(void)
{
    trajectory(2, NULL, "traj_losses_split2.json", "traj_final_split2.npz");
}
static void traj_mixup(void)
{
    trajectory(1, "traj_mixup_perms.npy", "traj_mixup_losses.json", "traj_mixup_final.npz");
}
static void traj_mixup_split2(void)
{
    trajectory(2, "traj_mixup_split2_perms.npy", "traj_mixup_split2_losses.json",
               "traj_mixup_split2_final.npz");
}

/* Gradients and a trajectory through the portable kernels (CPUs without AVX-512). */
static void portable_kernels(void)
{
    setenv("BIT_SIMD", "portable", 1);
    gradients();
    traj_mixup_split2();
    unsetenv("BIT_SIMD");
}

int main(void)
{
    T_RUN(gradients);
    T_RUN(traj_plain);
    T_RUN(traj_split2);
    T_RUN(traj_mixup);
    T_RUN(traj_mixup_split2);
    T_RUN(portable_kernels);
    return t_done();
}
