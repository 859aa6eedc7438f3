/* Time budgets: a job's budget_minutes resolved into a plan with engine/plan.c, from the model's
 * measured speed on this machine. Measurements are cached in <data>/throughput.json, keyed by
 * architecture, crop, micro-batch, precision and thread budget; one runs at a time, and while
 * a job trains (it would compete for the cores) a missing crop is estimated from a cached one
 * by the FLOPs ratio instead. */
#include <omp.h>
#include <stdio.h>
#include <string.h>

#include "plan.h"
#include "server/svc/svc_int.h"

typedef struct timing_ctx {
    svc *s;
    const char *base;
    eng_arch arch;
    int classes, micro;
    eng_precision prec; /* the job's, resolved */
    json_t *cache; /* the file's object; saved when it grew */
    int grew;
    char err[512];
} timing_ctx;

static void cache_path(const svc *s, char *buf, size_t len)
{
    eng_path_join(buf, len, s->data_dir, "throughput.json");
}

static void key_of(const timing_ctx *c, int crop, char *buf, size_t len)
{
    snprintf(buf, len, "%s-%d.%d.%d.%d-w%d|%d|%d|%s|%d", eng_arch_name(&c->arch), c->arch.units[0],
             c->arch.units[1], c->arch.units[2], c->arch.units[3], c->arch.width, crop, c->micro,
             eng_precision_name(c->prec), c->s->cfg.train_threads);
}

static int cached(const timing_ctx *c, int crop, ft_cost *out)
{
    char key[256];
    key_of(c, crop, key, sizeof key);
    json_t *v = json_object_get(c->cache, key);
    if (!json_is_object(v)) return -1;
    out->train_s = json_number_value(json_object_get(v, "train_s"));
    out->infer_s = json_number_value(json_object_get(v, "infer_s"));
    return out->train_s > 0 && out->infer_s > 0 ? 0 : -1;
}

/* A crop not measured while a job trains: a cached crop's cost times the FLOPs ratio. */
static int scaled(const timing_ctx *c, int crop, ft_cost *out)
{
    static const int tries[] = {128, 160, 224, 288, 384, 480, 512, 96, 64, 32};
    for (size_t i = 0; i < sizeof tries / sizeof tries[0]; i++) {
        ft_cost k;
        if (cached(c, tries[i], &k)) continue;
        double f = eng_arch_flops(&c->arch, crop, crop) / eng_arch_flops(&c->arch, tries[i], tries[i]);
        out->train_s = k.train_s * f, out->infer_s = k.infer_s * f;
        return 0;
    }
    return -1;
}

static int cost(void *ud, int crop, ft_cost *out)
{
    timing_ctx *c = ud;
    if (!cached(c, crop, out)) return 0;
    if (c->s->worker && wrk_busy(c->s->worker) && !scaled(c, crop, out)) return 0;
    /* the team the run will have, as a grant of the core budget, so a measurement never
     * runs on cores inference holds (it gets fewer while a job trains, and says so) */
    int old = omp_get_max_threads(), n = cores_infer_try(c->s->cores, c->s->cfg.train_threads);
    if (!n) /* --infer-share 0 and a job holds every core: no waiting on an HTTP thread */
        return eng_errf(c->err, sizeof c->err, ENG_EIO, "every core is training a job "
                        "(--infer-share 0): measure once it ends, or give steps");
    omp_set_num_threads(n);
    int rc = ft_measure(c->base, c->classes, crop, c->micro, c->prec, out, c->err, sizeof c->err);
    omp_set_num_threads(old);
    cores_infer_release(c->s->cores, n);
    if (rc) return rc;
    char key[256];
    key_of(c, crop, key, sizeof key);
    json_object_set_new(c->cache, key, json_pack("{s:f, s:f, s:I}", "train_s", out->train_s, "infer_s",
                                                 out->infer_s, "measured_at", (json_int_t)store_now_ms()));
    c->grew = 1;
    return 0;
}

int svc__plan(svc *s, const char *base_path, const ft_params *p, const ft_data_info *info,
              int64_t val_images, int classes, ft_resolved *r, svc_err *e)
{
    char path[4200], err[512];
    timing_ctx c = {.s = s, .base = base_path, .classes = classes, .prec = r->precision};
    int rc = eng_arch_probe(base_path, &c.arch, err, sizeof err);
    if (rc) return svc__fail(s, e, SVC_EREF, "invalid_base_model", "base_model: %s", err);
    /* a short measurement: the micro-batch scaled so that its pixels match 16 images at 128 px */
    int pixels = r->h.crop * r->h.crop;
    c.micro = 16 * 128 * 128 / pixels > 0 ? 16 * 128 * 128 / pixels : 1;
    if (c.micro > r->micro) c.micro = r->micro;
    ft_plan_in in = {.rule = *r, .train_images = info->train_images, .val_images = val_images,
                     .classes = classes, .features = 32 * c.arch.width,
                     .params = eng_arch_param_count(&c.arch), .budget_s = p->budget_s,
                     .fixed_res = p->crop > 0 || info->tensor_h > 0,
                     .fixed_steps = p->steps > 0 || p->nsched > 0, .fixed_mode = p->set_mode,
                     .cost = cost, .ud = &c};
    pthread_mutex_lock(&s->measure_mu);
    cache_path(s, path, sizeof path);
    c.cache = json_load_file(path, 0, NULL);
    if (!json_is_object(c.cache)) json_decref(c.cache), c.cache = json_object();
    rc = ft_plan(&in, r, err, sizeof err);
    if (c.grew) json_dump_file(c.cache, path, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(c.cache);
    pthread_mutex_unlock(&s->measure_mu);
    if (rc == ENG_EINVAL) return svc__fail(s, e, rc, "invalid_parameter", "%s", err);
    if (rc) return svc__fail(s, e, ENG_EIO, NULL, "%s%s%s", err, c.err[0] ? ": " : "", c.err);
    return 0;
}
