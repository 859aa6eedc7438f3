/* The fixtures' four 8-step fine-tuning runs (plain, batch split 2, MixUp, MixUp with split;
 * see the fixture README), driven for a test: ttraj_run trains model.npz with a zero head and
 * hands every micro-batch loss and the final parameters to the caller's checks. */
#ifndef BIT_TTRAJ_H
#define BIT_TTRAJ_H

#include <jansson.h>

#include "hyper.h"
#include "train.h"
#include "t.h"

typedef struct ttraj {
    eng_precision prec;
    int split;
    const char *perms, *losses, *final; /* fixture files */
    /* every micro-batch: our loss, the reference's, our logits [micro * 10] */
    void (*on_loss)(void *ud, int step, int m, double loss, double want, const float *logits,
                    int micro);
    /* every parameter tensor at the end: 2-norms of got - ref, ref and ref - start over the
     * stored entries (sampled tensors keep their first and last 4 output channels) */
    void (*on_param)(void *ud, const char *key, double d, double r, double c);
    void *ud;
} ttraj;

static inline int ttraj_norms(const eng_tensor *full, const eng_tensor *ref, const eng_tensor *start,
                       double n[3])
{
    int nd = full->ndim;
    int64_t last = full->shape[nd - 1], rl = ref->shape[nd - 1];
    int64_t outer = eng_tensor_numel(full) / last;
    if (ref->ndim != nd || eng_tensor_numel(ref) / rl != outer || (rl != last && rl != 8)) return -1;
    const float *f = full->data, *r = ref->data, *st = start->data;
    double d2 = 0, r2 = 0, c2 = 0;
    for (int64_t o = 0; o < outer; o++)
        for (int64_t j = 0; j < rl; j++) {
            int64_t fj = rl != last && j >= 4 ? last - 8 + j : j;
            double g = f[o * last + fj], rv = r[o * rl + j], sv = st[o * last + fj];
            d2 += (g - rv) * (g - rv), r2 += rv * rv, c2 += (rv - sv) * (rv - sv);
        }
    n[0] = sqrt(d2), n[1] = sqrt(r2), n[2] = sqrt(c2);
    return 0;
}

/* A trainer from model.npz with the head zeroed, micro-batches of `micro` at 64x64. */
static inline eng_trainer *ttraj_trainer(eng_npz *z, int micro, eng_precision prec, char *err,
                                  size_t errlen)
{
    eng_arch a;
    eng_trainer *t = NULL;
    if (eng_arch_from_npz(z, &a, err, errlen)) return NULL;
    const char *keys[] = {"resnet/head/conv2d/kernel", "resnet/head/conv2d/bias"};
    for (int i = 0; i < 2; i++)
        memset(eng_npz_get_mut(z, keys[i])->data, 0, eng_tensor_bytes(eng_npz_get(z, keys[i])));
    eng_train_opts o = {.precision = prec, .micro_batch = micro, .h = 64, .w = 64};
    if (eng_trainer_new(z, &a, &o, &t, err, errlen)) fprintf(stderr, "  %s\n", err);
    return t;
}

/* Micro-batch m of step `step`, mixed (lam 0.7, the stored permutation) when pm is set. */
static inline const float *ttraj_batch(const eng_tensor *xs, const eng_tensor *ys, const eng_tensor *pm,
                                int step, int m, int micro, float *mix, int64_t *y2,
                                const int64_t **y)
{
    size_t img = 3 * 64 * 64;
    const float *x = (const float *)xs->data + ((size_t)step * 4 + m * micro) * img;
    *y = (const int64_t *)ys->data + step * 4 + m * micro;
    if (!pm) return x;
    const int64_t *p = (const int64_t *)pm->data + step * 4 + m * micro;
    for (int i = 0; i < micro; i++) {
        y2[i] = (*y)[p[i]];
        for (size_t k = 0; k < img; k++)
            mix[i * img + k] = 0.7f * x[i * img + k] + (1 - 0.7f) * x[p[i] * img + k];
    }
    return mix;
}

static inline void ttraj_run(const ttraj *tj)
{
    static char err[512];
    eng_npz *z = NULL, *start = NULL, *ref = NULL, *got = NULL;
    eng_tensor *xs = NULL, *ys = NULL, *pm = NULL;
    T_REQUIRE(eng_npz_load(t_fixture("model.npz"), NULL, &z, err, sizeof err) == 0);
    T_REQUIRE(eng_npy_load(t_fixture("traj_inputs.npy"), &xs, err, sizeof err) == 0);
    T_REQUIRE(eng_npy_load(t_fixture("traj_labels.npy"), &ys, err, sizeof err) == 0);
    if (tj->perms) T_REQUIRE(eng_npy_load(t_fixture(tj->perms), &pm, err, sizeof err) == 0);
    json_t *lj = json_load_file(t_fixture(tj->losses), 0, NULL);
    T_REQUIRE(lj);
    json_t *mb = json_object_get(lj, "micro_batch_losses");
    int micro = 4 / tj->split;
    eng_trainer *t = ttraj_trainer(z, micro, tj->prec, err, sizeof err);
    T_REQUIRE(t && eng_trainer_params(t, &start) == 0);
    eng_hyper h = {.schedule = {2, 4, 6, 8}, .nsched = 4, .base_lr = 0.05};
    float *mix = malloc(sizeof(float) * 3 * 64 * 64 * micro), logits[40];
    for (int step = 0; step < 8; step++) {
        double lr = eng_hyper_lr(&h, step);
        T_CHECKF(fabs(lr - json_real_value(json_array_get(json_object_get(lj, "lr"), step))) < 1e-12,
                 "lr at %d", step);
        for (int m = 0; m < tj->split; m++) {
            int64_t y2[4];
            const int64_t *y;
            const float *x = ttraj_batch(xs, ys, pm, step, m, micro, mix, y2, &y);
            double loss;
            T_REQUIRE(eng_trainer_step(t, x, y, pm ? y2 : NULL, 0.7f, 1.0f / tj->split, &loss,
                                       logits, err, sizeof err) == 0);
            tj->on_loss(tj->ud, step, m, loss,
                        json_real_value(json_array_get(json_array_get(mb, step), m)), logits, micro);
        }
        T_REQUIRE(eng_trainer_update(t, lr, 0.9, 0, err, sizeof err) == 0);
    }
    T_CHECK(eng_hyper_lr(&h, 8) < 0);
    T_REQUIRE(eng_npz_load(t_fixture(tj->final), NULL, &ref, err, sizeof err) == 0);
    T_REQUIRE(eng_trainer_params(t, &got) == 0);
    for (int i = 0; i < ref->n; i++) {
        const eng_tensor *g = eng_npz_get(got, ref->names[i]);
        double n[3];
        T_REQUIRE(g && ttraj_norms(g, ref->tensors[i], eng_npz_get(start, ref->names[i]), n) == 0);
        tj->on_param(tj->ud, ref->names[i], n[0], n[1], n[2]);
    }
    free(mix);
    json_decref(lj);
    eng_trainer_free(t);
    eng_npz_free(z), eng_npz_free(start), eng_npz_free(ref), eng_npz_free(got);
    eng_tensor_free(xs), eng_tensor_free(ys), eng_tensor_free(pm);
}

/* The four runs with one set of checks. */
static inline void ttraj_all(ttraj tj)
{
    const char *files[4][3] = {
        {NULL, "traj_losses.json", "traj_final.npz"},
        {NULL, "traj_losses_split2.json", "traj_final_split2.npz"},
        {"traj_mixup_perms.npy", "traj_mixup_losses.json", "traj_mixup_final.npz"},
        {"traj_mixup_split2_perms.npy", "traj_mixup_split2_losses.json", "traj_mixup_split2_final.npz"}};
    for (int i = 0; i < 4; i++) {
        tj.split = i % 2 ? 2 : 1;
        tj.perms = files[i][0], tj.losses = files[i][1], tj.final = files[i][2];
        ttraj_run(&tj);
    }
}

#endif
