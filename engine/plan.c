#include "plan.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "linear.h"
#include "train.h"

/* Fixed costs of a run besides its images, in seconds: opening the data and the model and
 * building the network. Checkpoints cost their bytes (parameters and momentum) at disk speed. */
#define PLAN_SETUP_S 8.0
#define PLAN_DISK_BPS 300e6

int ft_plan_ladder(int precrop, int crop, int precrops[5], int crops[5])
{
    static const int num[5] = {15, 12, 9, 7, 4}; /* fifteenths of the rule's crop */
    int n = 0;
    for (int i = 0; i < 5; i++) {
        int c = (int)lround((double)crop * num[i] / 15 / 8) * 8;
        if (c < 32) c = 32;
        if (i == 0) c = crop;
        if (n && c >= crops[n - 1]) continue;
        crops[n] = c;
        precrops[n] = i == 0 ? precrop : (int)lround((double)c * precrop / crop);
        n++;
    }
    return n;
}

static int64_t total_steps(const ft_resolved *r) { return r->h.schedule[r->h.nsched - 1]; }

double ft_plan_predict(const ft_resolved *r, const ft_plan_in *in, const ft_cost *c)
{
    if (r->mode == FT_MODE_LINEAR)
        return PLAN_SETUP_S + (double)(2 * in->train_images + in->val_images) * c->infer_s +
               ft_linear_head_seconds(2 * in->train_images, in->features, in->classes);
    int64_t steps = total_steps(r);
    int64_t evals = 1 + (r->eval_every > 0 ? (steps - 1) / r->eval_every : 0);
    int64_t ckpts = 1 + (r->save_every > 0 ? (steps - 1) / r->save_every : 0);
    double params = (double)in->params;
    return PLAN_SETUP_S + (double)steps * r->h.batch * c->train_s +
           (double)evals * (double)in->val_images * c->infer_s + (double)ckpts * params * 8 / PLAN_DISK_BPS;
}

/* r with its schedule (and the intervals that follow it) scaled to steps. */
static void with_steps(const ft_resolved *rule, int64_t steps, ft_resolved *r)
{
    int64_t was = total_steps(rule);
    *r = *rule;
    eng_hyper_scale_steps(&r->h, steps);
    if (r->save_every > 0) r->save_every = r->save_every * steps / was > 0 ? r->save_every * steps / was : 1;
    if (r->eval_every > 0) r->eval_every = r->eval_every * steps / was > 0 ? r->eval_every * steps / was : 1;
}

/* The most steps in [lo, hi] whose prediction fits (steps only add time); 0 if none. */
static int64_t steps_that_fit(const ft_resolved *base, const ft_plan_in *in, const ft_cost *c,
                              int64_t lo, int64_t hi)
{
    ft_resolved r;
    with_steps(base, lo, &r);
    if (ft_plan_predict(&r, in, c) > in->budget_s) return 0;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo + 1) / 2;
        with_steps(base, mid, &r);
        if (ft_plan_predict(&r, in, c) <= in->budget_s) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

static void done(ft_resolved *out, const ft_resolved *r, const ft_plan_in *in, const ft_cost *c)
{
    *out = *r;
    out->budget_s = in->budget_s;
    out->predicted_s = ft_plan_predict(r, in, c);
}

/* A full fine-tune at this crop with the rule's steps, else fewer; 1 when one fits. */
static int try_full(const ft_plan_in *in, int precrop, int crop, const ft_cost *c, ft_resolved *out)
{
    ft_resolved r = in->rule;
    r.mode = FT_MODE_FULL;
    r.h.precrop = precrop, r.h.crop = crop;
    int64_t rule = total_steps(&in->rule), min = rule / 5 > 50 ? rule / 5 : 50;
    if (min > rule) min = rule;
    int64_t s = in->fixed_steps ? (ft_plan_predict(&r, in, c) <= in->budget_s ? rule : 0)
                                : steps_that_fit(&r, in, c, min, rule);
    if (!s) return 0;
    ft_resolved fit;
    if (s == rule) fit = r;
    else with_steps(&r, s, &fit);
    done(out, &fit, in, c);
    return 1;
}

int ft_plan(const ft_plan_in *in, ft_resolved *out, char *err, size_t errlen)
{
    int pre[5], crops[5], n = ft_plan_ladder(in->rule.h.precrop, in->rule.h.crop, pre, crops);
    if (in->fixed_res) n = 1; /* the request's resolution only */
    ft_cost c[5];
    int have[5] = {0}, asked[5] = {0};
#define COST(i) (asked[i] ? have[i] : (asked[i] = 1, have[i] = in->cost(in->ud, crops[i], &c[i]) == 0))
    int linear_only = in->fixed_mode && in->rule.mode == FT_MODE_LINEAR;
    if (in->fixed_mode && in->fixed_res && in->fixed_steps) { /* nothing left to choose */
        if (!COST(0)) return eng_errf(err, errlen, ENG_EIO, "cannot measure the model at %d px", crops[0]);
        done(out, &in->rule, in, &c[0]);
        return 0;
    }
    for (int i = 0; i < n && !linear_only; i++)
        if (COST(i) && try_full(in, pre[i], crops[i], &c[i], out)) return 0;
    if (in->fixed_mode && in->rule.mode == FT_MODE_FULL) { /* kept, predicted as it is */
        if (!COST(0)) return eng_errf(err, errlen, ENG_EIO, "cannot measure the model at %d px", crops[0]);
        done(out, &in->rule, in, &c[0]);
        return 0;
    }
    double least = INFINITY;
    for (int i = 0; i < n; i++) {
        if (!COST(i)) continue;
        ft_resolved r = in->rule;
        r.mode = FT_MODE_LINEAR;
        r.h.precrop = pre[i], r.h.crop = crops[i];
        double t = ft_plan_predict(&r, in, &c[i]);
        if (t <= in->budget_s) {
            done(out, &r, in, &c[i]);
            return 0;
        }
        if (t < least) least = t;
    }
#undef COST
    if (isinf(least)) return eng_errf(err, errlen, ENG_EIO, "cannot measure the model's speed");
    return eng_errf(err, errlen, ENG_EINVAL, "hyperparameters.budget_minutes: even the cheapest "
                    "plan (a linear probe at %d px) needs about %.0f minutes on this machine: "
                    "allow at least %.0f", crops[n - 1], ceil(least / 60), ceil(least / 60));
}

/* Median of three timings. */
static double median3(double a, double b, double c)
{
    return a > b ? (b > c ? b : a > c ? c : a) : (a > c ? a : b > c ? c : b);
}

int ft_measure(const char *base, int classes, int crop, int micro, eng_precision prec,
               ft_cost *out, char *err, size_t errlen)
{
    eng_npz *z = NULL;
    eng_arch a;
    eng_trainer *t = NULL;
    eng_net *net = NULL;
    int rc = eng_npz_load(base, NULL, &z, err, errlen);
    if (!rc) rc = eng_arch_from_npz(z, &a, err, errlen);
    if (!rc) rc = ft_new_head(z, &a, classes) ? eng_errf(err, errlen, ENG_ENOMEM, "out of memory") : 0;
    eng_train_opts to = {.precision = prec, .micro_batch = micro, .h = crop, .w = crop};
    eng_net_opts no = {.precision = prec};
    if (!rc) rc = eng_trainer_new(z, &a, &to, &t, err, errlen);
    if (!rc) rc = eng_net_new(z, &a, &no, &net, err, errlen);
    size_t per = (size_t)3 * crop * crop;
    float *x = eng_calloc(sizeof(float) * per * (size_t)micro);
    float *logits = eng_alloc(sizeof(float) * (size_t)micro * classes);
    int64_t y[256] = {0};
    double tt[4], ti[4], loss;
    if (!rc && (!x || !logits || micro > 256)) rc = eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    for (int i = 0; i < 4 && !rc; i++) { /* the first of each is a warm-up */
        double t0 = eng_now_ms();
        rc = eng_trainer_step(t, x, y, NULL, 1, 1, &loss, NULL, err, errlen);
        if (!rc) rc = eng_trainer_update(t, 0, 0.9, 0, err, errlen);
        double t1 = eng_now_ms();
        if (!rc) rc = eng_net_forward(net, x, micro, crop, crop, logits, NULL, NULL, err, errlen);
        tt[i] = t1 - t0, ti[i] = eng_now_ms() - t1;
    }
    if (!rc) {
        out->train_s = median3(tt[1], tt[2], tt[3]) / 1e3 / micro;
        out->infer_s = median3(ti[1], ti[2], ti[3]) / 1e3 / micro;
    }
    eng_free(x), eng_free(logits);
    eng_trainer_free(t);
    eng_net_free(net);
    eng_npz_free(z);
    return rc;
}
