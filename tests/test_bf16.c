/* bf16 accuracy gates on the reference fixtures (which are float32): logits against the
 * reference with a bound derived from bf16's 8-bit significand, and the four fine-tuning
 * trajectories with a bf16 bound on losses and parameter updates. Skipped (and said so) on
 * CPUs where oneDNN has no bf16 convolutions.
 *
 * The error model. bf16 keeps 8 significant bits, so rounding to nearest changes a value by
 * at most u = 2^-8 of itself, uniformly in [-u, u] (standard deviation u / sqrt(3)). A bf16
 * convolution (or the head) reads its weights and its input both rounded and accumulates in
 * f32 (error 2^-24, negligible): each product w*x carries two independent roundings, so the
 * output's error has standard deviation sqrt(2/3) u times the root of the summed squared
 * products, which for sums of mixed signs is the size of the output itself. GroupNorm
 * renormalises every layer, so a layer's relative error is passed on, neither amplified nor
 * damped, and the independent errors of L layers in sequence add in quadrature:
 *     sigma_L = sqrt(2 L / 3) u   (relative to the RMS of the logits).
 * The residual stream stays f32 and adds no rounding of its own. L counts the convolutions on
 * the longest path, root + 3 per unit, plus the head. A logit is then within 4 sigma_L of the
 * reference times the logits' RMS (4 sigma: at most ~40 logits per fixture, a chance of about
 * 6e-5 each of a Gaussian going further); model.npz (L = 14) gives 4.8 % of the RMS. The same
 * sigma bounds the loss: a mean cross-entropy over n examples moves by (1/n) sum_i
 * (p_i - y_i) . dz_i, whose standard deviation is at most sqrt(2 / n) sigma_L rms(z) since
 * |p_i - y_i| <= sqrt(2). */
#include <jansson.h>

#include "net.h"
#include "t.h"
#include "ttraj.h"

static char err[512];
static const double U = 1.0 / 256; /* bf16's unit roundoff, 2^-8 */

static int bf16_available(void)
{
    if (eng_precision_resolve(ENG_PREC_AUTO) == ENG_PREC_BF16) return 1;
    printf("(oneDNN's ISA here is %s, without bf16: bf16 gates skipped)\n", eng_cpu_isa());
    return 0;
}

/* Convolutions on the longest path of an architecture, plus the head. */
static int rounding_layers(const eng_arch *a)
{
    return 1 + 3 * (a->units[0] + a->units[1] + a->units[2] + a->units[3]) + 1;
}

static double rms(const float *z, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++) s += (double)z[i] * z[i];
    return sqrt(s / n);
}

static int argmax(const float *z, int k)
{
    int best = 0;
    for (int j = 1; j < k; j++) best = z[j] > z[best] ? j : best;
    return best;
}

static void logits_case(const char *model, const char *input, const char *logits)
{
    eng_npz *z = NULL;
    eng_arch a;
    eng_net *net = NULL;
    eng_tensor *x = NULL, *y = NULL;
    eng_net_opts o = {.precision = ENG_PREC_BF16};
    T_REQUIRE(eng_npz_load(t_fixture(model), NULL, &z, err, sizeof err) == 0);
    T_REQUIRE(eng_arch_from_npz(z, &a, err, sizeof err) == 0);
    T_REQUIRE(eng_net_new(z, &a, &o, &net, err, sizeof err) == 0);
    T_CHECK(eng_net_precision(net) == ENG_PREC_BF16);
    T_REQUIRE(eng_npy_load(t_fixture(input), &x, err, sizeof err) == 0);
    T_REQUIRE(eng_npy_load(t_fixture(logits), &y, err, sizeof err) == 0);
    int n = (int)x->shape[0], k = (int)y->shape[1];
    float *out = calloc((size_t)n * k, sizeof(float));
    T_REQUIRE(eng_net_forward(net, x->data, n, (int)x->shape[2], (int)x->shape[3], out, NULL, NULL,
                              err, sizeof err) == 0);
    const float *ref = y->data;
    int L = rounding_layers(&a);
    double tol = 4 * sqrt(2.0 * L / 3) * U * rms(ref, n * k), worst = 0;
    for (int i = 0; i < n * k; i++) worst = fmax(worst, fabs((double)out[i] - ref[i]));
    T_CHECKF(worst <= tol, "%s: max |bf16 - ref| %.3g > %.3g (L = %d)", input, worst, tol, L);
    for (int i = 0; i < n; i++)
        T_CHECKF(argmax(out + i * k, k) == argmax(ref + i * k, k), "%s: top-1 of image %d", input, i);
    printf("  %s: max |bf16 - f32 ref| = %.3g, bound %.3g (%.1f %% of the logits' RMS)\n", input,
           worst, tol, 100 * tol / rms(ref, n * k));
    free(out);
    eng_tensor_free(x);
    eng_tensor_free(y);
    eng_net_free(net);
    eng_npz_free(z);
}

static void logits_within_bf16_bound(void)
{
    if (!bf16_available()) return;
    logits_case("model.npz", "input.npy", "logits.npy");
    logits_case("model.npz", "input_small.npy", "logits_small.npy");
    logits_case("model2.npz", "input2.npy", "logits2.npy");
}

/* ---------------------------------------------------------------- trajectories */

/* The parameter bound. Training perturbs the gradient the way an input perturbation does:
 * the manifest's audit measured that a relative perturbation of 1e-6 moves the gradients by
 * up to A * 1e-6 of their largest entry (A ~ 15 for model.npz). bf16 rounds S tensors on the
 * longest forward + backward path by up to u each (forward: weights and activations of each
 * convolution; backward-data: weights and gradients), independently: the update's relative
 * error is then about A u sqrt(S). On top comes the float32 profile's own allowance, 0.2 of
 * the change, for ReLU inputs within rounding noise of zero that flip side (bf16 has many
 * more of those, which is what A u sqrt(S) covers). model.npz: S = 4 * 13, delta = 0.61. */
static double update_tolerance(const eng_arch *a)
{
    json_t *m = json_load_file(t_fixture("manifest.json"), 0, NULL);
    json_t *p = json_object_get(json_object_get(m, "audit"), "perturbed_1e-6_float64");
    double A = 0;
    const char *key;
    json_t *v;
    json_object_foreach(p, key, v) A = fmax(A, json_number_value(v) / 1e-6);
    json_decref(m);
    int S = 4 * (rounding_layers(a) - 1);
    return A > 0 ? 0.2 + A * U * sqrt(S) : -1;
}

typedef struct bf16_traj {
    double sigma, delta, worst_loss, worst_update;
} bf16_traj;

/* Every micro-batch loss within 1e-4 (the float32 allowance) + 4 sqrt(2/n) sigma_L rms(z) of
 * the reference, z the logits of that micro-batch. */
static void bf16_loss(void *ud, int step, int m, double loss, double want, const float *z, int n)
{
    bf16_traj *b = ud;
    double tol = 1e-4 + 4 * sqrt(2.0 / n) * b->sigma * rms(z, n * 10);
    T_CHECKF(fabs(loss - want) <= tol, "step %d micro %d: loss %.7f vs %.7f (tolerance %.2g)", step,
             m, loss, want, tol);
    b->worst_loss = fmax(b->worst_loss, fabs(loss - want));
}

/* Every parameter tensor within 2e-5 |ref| + delta |ref - start| at the end. */
static void bf16_param(void *ud, const char *key, double d, double r, double c)
{
    bf16_traj *b = ud;
    T_CHECKF(d <= 2e-5 * r + b->delta * c, "%s: |got - ref| %g > %g", key, d, 2e-5 * r + b->delta * c);
    b->worst_update = fmax(b->worst_update, d / (c + 1e-30));
}

static void trajectories_within_bf16_bound(void)
{
    if (!bf16_available()) return;
    eng_npz *z = NULL;
    eng_arch a;
    T_REQUIRE(eng_npz_load(t_fixture("model.npz"), NULL, &z, err, sizeof err) == 0);
    T_REQUIRE(eng_arch_from_npz(z, &a, err, sizeof err) == 0);
    eng_npz_free(z);
    bf16_traj b = {.sigma = sqrt(2.0 * rounding_layers(&a) / 3) * U, .delta = update_tolerance(&a)};
    T_REQUIRE(b.delta > 0);
    ttraj_all((ttraj){.prec = ENG_PREC_BF16, .on_loss = bf16_loss, .on_param = bf16_param, .ud = &b});
    printf("  worst loss diff %.2g; worst |got - ref| / |ref - start| %.3f (delta %.3f)\n",
           b.worst_loss, b.worst_update, b.delta);
}

int main(void)
{
    T_RUN(logits_within_bf16_bound);
    T_RUN(trajectories_within_bf16_bound);
    return t_done();
}
