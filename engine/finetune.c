#include "finetune.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "finetune_int.h"
#include "ftjson.h"
#include "modelmeta.h"
#include "plan.h"
#include "rundir.h"
#include "train.h"

#define DEFAULT_SAVE_FRACTION 20 /* checkpoint every ~5 % of the steps */
#define KEEP_CHECKPOINTS 2

/* ---------------------------------------------------------------- hyper-parameters */

/* The upstream recipe: epochs turned into steps for this dataset and batch. */
static int pretrain_schedule(const ft_params *p, const ft_data_info *d, ft_resolved *r,
                             char *err, size_t errlen)
{
    double epochs = p->epochs > 0 ? p->epochs : 90;
    int64_t per_epoch = (d->train_images + r->h.batch - 1) / r->h.batch;
    int64_t total = (int64_t)(epochs * (double)per_epoch + 0.5);
    if (total < 5 || total > 100000000)
        return eng_errf(err, errlen, ENG_EINVAL, "pre-training would take %lld steps", (long long)total);
    int64_t warm = p->warmup_steps > 0 ? p->warmup_steps : 500;
    if (warm > total / 10) warm = total / 10 > 0 ? total / 10 : 1;
    int64_t b[3] = {total * 30 / 90, total * 60 / 90, total * 80 / 90};
    r->h.nsched = 5;
    r->h.schedule[0] = warm;
    for (int i = 0; i < 3; i++) r->h.schedule[i + 1] = b[i] > r->h.schedule[i] ? b[i] : r->h.schedule[i] + 1;
    r->h.schedule[4] = total > r->h.schedule[3] ? total : r->h.schedule[3] + 1;
    if (p->base_lr <= 0) r->h.base_lr = 0.03 * r->h.batch / 256;
    if (p->mixup < 0) r->h.mixup_alpha = 0;
    r->weight_decay = p->weight_decay >= 0 ? p->weight_decay : 1e-4;
    r->pretrain = 1;
    r->pretrain_res = r->h.crop; /* what a fine-tuning of the result will scale the rule by */
    return 0;
}

void ft_data_info_of(const ds_dataset *d, ft_data_info *info)
{
    info->train_images = ds_size(d, DS_TRAIN);
    ds_median_size(d, &info->median_w, &info->median_h);
    ds_tensor_size(d, &info->tensor_h, &info->tensor_w);
}

int ft_resolve(const ft_params *p, const ft_data_info *d, ft_resolved *r, char *err,
               size_t errlen)
{
    memset(r, 0, sizeof *r);
    int th = d->tensor_h;
    r->pretrain_res = p->pretrain_res ? p->pretrain_res : ENG_HYPER_PRETRAIN_RES;
    if (r->pretrain_res < ENG_MIN_RES || r->pretrain_res > 4096)
        return eng_errf(err, errlen, ENG_EINVAL, "the base model's pre-training resolution must "
                        "be from %d to 4096", ENG_MIN_RES);
    eng_hyper_rule(d->train_images, d->median_w, d->median_h, &r->h);
    eng_hyper_scale_res(&r->h, r->pretrain_res);
    if (p->nsched > 0) {
        if (p->nsched < 2 || p->nsched > ENG_MAX_SCHEDULE)
            return eng_errf(err, errlen, ENG_EINVAL, "a schedule needs 2 to %d boundaries", ENG_MAX_SCHEDULE);
        for (int i = 0; i < p->nsched; i++)
            if (p->schedule[i] < 1 || (i && p->schedule[i] <= p->schedule[i - 1]))
                return eng_errf(err, errlen, ENG_EINVAL, "schedule boundaries must increase from 1");
        memcpy(r->h.schedule, p->schedule, sizeof(int64_t) * (size_t)p->nsched);
        r->h.nsched = p->nsched;
    }
    if (p->steps > 0) eng_hyper_scale_steps(&r->h, p->steps);
    if (p->batch > 0) r->h.batch = p->batch;
    if (p->base_lr > 0) r->h.base_lr = p->base_lr;
    if (p->mixup >= 0) r->h.mixup_alpha = p->mixup;
    if (p->crop > 0) r->h.crop = p->crop, r->h.precrop = p->precrop > 0 ? p->precrop : p->crop;
    if (th) r->h.crop = r->h.precrop = th; /* tensors are used as stored */
    r->batch_split = p->batch_split > 0 ? p->batch_split : 1;
    if (r->h.batch % r->batch_split)
        return eng_errf(err, errlen, ENG_EINVAL, "batch %d is not divisible by batch_split %d",
                        r->h.batch, r->batch_split);
    if (r->h.crop < 32 || r->h.precrop < r->h.crop || r->h.precrop > 4096)
        return eng_errf(err, errlen, ENG_EINVAL, "resolution must satisfy 32 <= crop <= precrop <= 4096");
    if (r->h.mixup_alpha < 0 || r->h.mixup_alpha > 100)
        return eng_errf(err, errlen, ENG_EINVAL, "mixup alpha must be in [0, 100]");
    r->micro = r->h.batch / r->batch_split;
    r->examples_per_class = p->examples_per_class;
    r->seed = p->seed;
    int64_t total = r->h.schedule[r->h.nsched - 1];
    r->eval_every = p->eval_every > 0 ? p->eval_every : 0;
    r->save_every = p->save_every > 0 ? p->save_every
                                      : (total / DEFAULT_SAVE_FRACTION > 0 ? total / DEFAULT_SAVE_FRACTION : 1);
    r->augment = !p->no_augment && !th;
    r->shuffle = !p->no_shuffle;
    r->weight_decay = p->weight_decay >= 0 ? p->weight_decay : 0;
    r->mode = p->mode, r->select = p->select, r->budget_s = p->budget_s;
    r->precision = eng_precision_resolve(p->precision);
    if (r->select == FT_SELECT_BEST && !r->eval_every) /* best of ten evaluations */
        r->eval_every = total / 10 > 0 ? total / 10 : 1;
    return p->init_arch ? pretrain_schedule(p, d, r, err, errlen) : 0;
}

/* ---------------------------------------------------------------- evaluation */

typedef struct evalacc {
    int k;
    int64_t n, top1, top5, *hits, *count, *confusion;
    double loss;
} evalacc;

static void eval_batch(evalacc *a, const float *logits, const int64_t *y, int count)
{
    int k = a->k;
    for (int i = 0; i < count; i++) {
        const float *z = logits + (int64_t)i * k;
        int64_t t = y[i];
        double mx = z[0], s = 0;
        int best = 0, above = 0;
        for (int j = 0; j < k; j++) {
            if (z[j] > z[best]) best = j;
            if (z[j] > z[t]) above++;
            if (z[j] > mx) mx = z[j];
        }
        for (int j = 0; j < k; j++) s += exp(z[j] - mx);
        a->loss += mx + log(s) - z[t];
        a->top1 += best == t;
        a->top5 += above < 5;
        a->hits[t] += best == t;
        a->count[t]++;
        if (a->confusion) a->confusion[t * k + best]++;
        a->n++;
    }
}

static json_t *eval_json(const evalacc *a, const ds_dataset *d)
{
    json_t *per = json_array(), *conf = a->confusion ? json_array() : json_null();
    for (int c = 0; c < a->k; c++) {
        double acc = a->count[c] ? (double)a->hits[c] / a->count[c] : 0.0;
        json_array_append_new(per, json_pack("{s:s, s:I, s:f}", "class", ds_class_name(d, c),
                                             "count", (json_int_t)a->count[c], "accuracy", acc));
        if (a->confusion) {
            json_t *row = json_array();
            for (int j = 0; j < a->k; j++) json_array_append_new(row, json_integer(a->confusion[c * a->k + j]));
            json_array_append_new(conf, row);
        }
    }
    double n = a->n ? (double)a->n : 1;
    return json_pack("{s:I, s:f, s:f, s:f, s:o, s:o}", "examples", (json_int_t)a->n, "top1",
                     a->top1 / n, "top5", a->top5 / n, "loss", a->loss / n, "per_class", per,
                     "confusion", conf);
}

int ft_evaluate(eng_net *net, const ds_dataset *d, ds_split split, int crop, int batch,
                json_t **metrics, char *err, size_t errlen)
{
    int k = ds_num_classes(d), th, tw, rc;
    ds_tensor_size(d, &th, &tw);
    int h = th ? th : crop, w = th ? tw : crop;
    if (eng_net_out_dim(net) != k)
        return eng_errf(err, errlen, ENG_EINVAL, "the model has %d outputs, the dataset %d classes",
                        eng_net_out_dim(net), k);
    evalacc a = {.k = k};
    a.hits = calloc((size_t)k, sizeof *a.hits);
    a.count = calloc((size_t)k, sizeof *a.count);
    if (k <= 1000) a.confusion = calloc((size_t)k * k, sizeof *a.confusion);
    float *x = eng_alloc(sizeof(float) * 3 * (size_t)h * w * batch);
    float *logits = malloc(sizeof(float) * (size_t)k * batch);
    int64_t *y = malloc(sizeof(int64_t) * (size_t)batch);
    ds_loader *l = NULL;
    ds_loader_opts lo = {.split = split, .batch = batch, .precrop = crop, .crop = crop, .sequential = 1};
    if (!a.hits || !a.count || (k <= 1000 && !a.confusion) || !x || !logits || !y) {
        rc = eng_errf(err, errlen, ENG_ENOMEM, "out of memory for evaluation");
        goto fail;
    }
    if ((rc = ds_loader_new(d, &lo, &l, err, errlen))) goto fail;
    int count;
    while ((rc = ds_loader_next(l, x, y, &count, err, errlen)) == 0) {
        if ((rc = eng_net_forward(net, x, count, h, w, logits, NULL, NULL, err, errlen))) goto fail;
        eval_batch(&a, logits, y, count);
    }
    if (rc != ENG_ENOTFOUND) goto fail;
    rc = 0;
    *metrics = eval_json(&a, d);
fail:
    ds_loader_free(l);
    free(a.hits), free(a.count), free(a.confusion);
    eng_free(x), free(logits), free(y);
    return rc;
}

/* ---------------------------------------------------------------- checkpoints */


static int write_labels(const char *path, const ds_dataset *d, char *err, size_t errlen)
{
    size_t cap = 1, len = 0;
    for (int c = 0; c < ds_num_classes(d); c++) cap += strlen(ds_class_name(d, c)) + 1;
    char *buf = malloc(cap);
    if (!buf) return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    for (int c = 0; c < ds_num_classes(d); c++)
        len += (size_t)sprintf(buf + len, "%s\n", ds_class_name(d, c));
    int rc = eng_file_write_atomic(path, buf, len, err, errlen);
    free(buf);
    return rc;
}

static json_t *state_json(const run *R)
{
    json_t *cls = json_array();
    char fp[32];
    snprintf(fp, sizeof fp, "%016llx", (unsigned long long)R->fp);
    for (int c = 0; c < ds_num_classes(R->d); c++) json_array_append_new(cls, json_string(ds_class_name(R->d, c)));
    return json_pack("{s:i, s:I, s:I, s:s, s:s, s:s, s:o, s:o, s:O, s:s, s:[i,i,i,i], s:i}",
                     "version", 1, "step", (json_int_t)R->step, "total_steps",
                     (json_int_t)R->r.h.schedule[R->r.h.nsched - 1], "base_model", R->base,
                     "data", R->data, "data_fingerprint", fp, "resolved", ft_resolved_json(&R->r),
                     "classes", cls, "history", R->history, "architecture", eng_arch_name(&R->arch),
                     "units", R->arch.units[0], R->arch.units[1], R->arch.units[2], R->arch.units[3],
                     "width", R->arch.width);
}

/* The model's class names and evaluation size travel inside model.npz (modelmeta.h). */
static int put_meta(const run *R, eng_npz *params)
{
    int n = ds_num_classes(R->d);
    const char **names = malloc(sizeof *names * (size_t)n);
    if (!names) return ENG_ENOMEM;
    for (int c = 0; c < n; c++) names[c] = ds_class_name(R->d, c);
    int rc = eng_meta_put(params, names, n, R->r.h.crop);
    free(names);
    return rc;
}

static int save_files(const run *R, const char *dir, char *err, size_t errlen)
{
    char p[4400];
    eng_npz *params = NULL, *mom = NULL;
    int rc = 0;
    if (R->t) { /* a linear probe has no trainer: its parameters, and no momentum */
        rc = eng_trainer_params(R->t, &params);
        if (!rc) rc = eng_trainer_momentum(R->t, &mom);
    } else if (!(mom = eng_npz_new())) {
        rc = ENG_ENOMEM;
    }
    if (!rc) rc = put_meta(R, R->t ? params : R->fixed);
    if (rc) {
        rc = eng_errf(err, errlen, rc, "out of memory saving a checkpoint");
        goto fail;
    }
    ft_rundir_path(dir, FT_FILE_MODEL, p, sizeof p);
    if ((rc = eng_npz_save(p, R->t ? params : R->fixed, 0, err, errlen))) goto fail;
    ft_rundir_path(dir, FT_FILE_OPTIMIZER, p, sizeof p);
    if ((rc = eng_npz_save(p, mom, 0, err, errlen))) goto fail;
    ft_rundir_path(dir, FT_FILE_LABELS, p, sizeof p);
    if ((rc = write_labels(p, R->d, err, errlen))) goto fail;
    json_t *st = state_json(R);
    char *s = json_dumps(st, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(st);
    ft_rundir_path(dir, FT_FILE_STATE, p, sizeof p);
    rc = s ? eng_file_write_atomic(p, s, strlen(s), err, errlen)
           : eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    free(s);
fail:
    eng_npz_free(params);
    eng_npz_free(mom);
    return rc;
}

/* Points the run directory's top-level files at checkpoint fin, one by one (each an atomic
 * rename of a fresh hard link), state.json last. */
static int relink(const run *R, const char *fin, char *err, size_t errlen)
{
    for (int i = 0; i < FT_CKPT_NFILES; i++) {
        char src[4500], dst[4500], lnk[4600];
        ft_rundir_path(fin, ft_ckpt_files[i], src, sizeof src);
        ft_rundir_path(R->dir, ft_ckpt_files[i], dst, sizeof dst);
        snprintf(lnk, sizeof lnk, "%s.tmp", dst);
        unlink(lnk);
        if (link(src, lnk) || rename(lnk, dst))
            return eng_errf(err, errlen, ENG_EIO, "%s: %s", dst, strerror(errno));
    }
    return 0;
}

/* A checkpoint is a directory renamed into place when complete, so a crash at any moment
 * leaves the previous one whole; the run directory's top-level files then follow it. */
int ft__checkpoint(run *R, char *err, size_t errlen)
{
    char ck[4200], tmp[4400], fin[4400], e2[256];
    ft_rundir_path(R->dir, FT_FILE_CHECKPOINTS, ck, sizeof ck);
    if (mkdir(ck, 0755) && errno != EEXIST)
        return eng_errf(err, errlen, ENG_EIO, "%s: %s", ck, strerror(errno));
    ft_rundir_checkpoint_tmp(R->dir, R->step, tmp, sizeof tmp);
    ft_rundir_checkpoint(R->dir, R->step, fin, sizeof fin);
    arc_remove_tree(tmp, e2, sizeof e2);
    if (mkdir(tmp, 0755)) return eng_errf(err, errlen, ENG_EIO, "%s: %s", tmp, strerror(errno));
    int rc = save_files(R, tmp, err, errlen);
    if (!rc) {
        arc_remove_tree(fin, e2, sizeof e2);
        if (rename(tmp, fin)) rc = eng_errf(err, errlen, ENG_EIO, "%s: %s", fin, strerror(errno));
    }
    if (rc) {
        arc_remove_tree(tmp, e2, sizeof e2);
        return rc;
    }
    rc = relink(R, fin, err, errlen);
    ft_rundir_prune(R->dir, KEEP_CHECKPOINTS, R->best_step);
    if (!rc && R->hooks && R->hooks->event) {
        json_t *ev = json_pack("{s:s, s:I, s:s}", "type", "checkpoint", "step", (json_int_t)R->step,
                               "path", fin);
        R->hooks->event(R->hooks->ud, ev);
        json_decref(ev);
    }
    return rc;
}

/* ---------------------------------------------------------------- the run */

void ft__emit(const run *R, json_t *ev)
{
    if (R->hooks && R->hooks->event) R->hooks->event(R->hooks->ud, ev);
}

/* Evaluates the current parameters on the validation split (a net built from them). */
static int evaluate_now(run *R, json_t **metrics, char *err, size_t errlen)
{
    *metrics = NULL;
    if (!ds_size(R->d, DS_VAL)) return 0;
    eng_npz *z = NULL;
    eng_net *net = NULL;
    int rc = eng_trainer_params(R->t, &z);
    if (rc) return eng_errf(err, errlen, rc, "out of memory");
    eng_net_opts no = {.precision = eng_trainer_precision(R->t)};
    rc = eng_net_new(z, &R->arch, &no, &net, err, errlen);
    eng_npz_free(z);
    if (!rc) rc = ft_evaluate(net, R->d, DS_VAL, R->r.h.crop, R->r.micro, metrics, err, errlen);
    eng_net_free(net);
    if (rc) return rc;
    json_t *ev = json_pack("{s:s, s:I, s:O, s:O, s:O}", "type", "eval", "step", (json_int_t)R->step,
                           "val_top1", json_object_get(*metrics, "top1"), "val_top5",
                           json_object_get(*metrics, "top5"), "val_loss",
                           json_object_get(*metrics, "loss"));
    json_array_append(R->history, ev);
    ft__emit(R, ev);
    json_decref(ev);
    return 0;
}

/* MixUp of one micro-batch: x = lam x + (1 - lam) x[perm], partner labels y2 = y[perm]. */
static void mixup(float *x, const int64_t *y, int64_t *y2, int n, size_t per, double lam,
                  eng_rng *r, float *tmp)
{
    int perm[n];
    for (int i = 0; i < n; i++) perm[i] = i;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)eng_rng_below(r, (uint64_t)i + 1), t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    memcpy(tmp, x, sizeof(float) * per * (size_t)n);
    for (int i = 0; i < n; i++) {
        y2[i] = y[perm[i]];
        float *xi = x + per * (size_t)i;
        const float *a = tmp + per * (size_t)i, *b = tmp + per * (size_t)perm[i];
        for (size_t k = 0; k < per; k++) xi[k] = (float)(lam * a[k] + (1 - lam) * b[k]);
    }
}

/* One optimisation step: batch_split micro-batches, then the update. */
static int train_step(run *R, ds_loader *l, float *x, float *tmp, int64_t *y, int64_t *y2,
                      double lr, double *loss, char *err, size_t errlen)
{
    int split = R->r.batch_split, n = R->r.micro, count, th, tw;
    ds_tensor_size(R->d, &th, &tw);
    size_t per = th ? (size_t)3 * th * tw : (size_t)3 * R->r.h.crop * R->r.h.crop;
    double alpha = R->r.h.mixup_alpha, lam = 1;
    eng_rng r;
    eng_rng_seed3(&r, R->r.seed, (uint64_t)R->step, 17);
    if (alpha > 0) lam = eng_rng_beta(&r, alpha, alpha);
    *loss = 0;
    for (int m = 0; m < split; m++) {
        /* a stop between micro-batches drops the half-done step: shutdown stays prompt and
         * the last checkpoint is still a whole step */
        if (m && R->hooks && R->hooks->stop && R->hooks->stop(R->hooks->ud))
            return eng_errf(err, errlen, FT_ESTOPPED, "stopped inside step %lld", (long long)R->step);
        if (R->hooks && R->hooks->yield) R->hooks->yield(R->hooks->ud);
        int rc = ds_loader_next(l, x, y, &count, err, errlen);
        if (rc) return rc;
        if (alpha > 0) mixup(x, y, y2, n, per, lam, &r, tmp);
        double lm;
        if ((rc = eng_trainer_step(R->t, x, y, alpha > 0 ? y2 : NULL, (float)lam, 1.0f / split, &lm,
                                   NULL, err, errlen)))
            return rc;
        *loss += lm / split;
    }
    return eng_trainer_update(R->t, lr, 0.9, R->r.weight_decay, err, errlen);
}

/* Throughput and ETA over the last FT_RATE_WINDOW steps, so that they follow what the
 * machine does now (another job, a request burst) rather than the run's average. */
static void report(run *R, double lr, double loss)
{
    double now = eng_now_ms() / 1e3;
    int w = R->nstamps < FT_RATE_WINDOW ? R->nstamps : FT_RATE_WINDOW;
    double oldest = w ? R->stamps[(R->nstamps - w) % FT_RATE_WINDOW] : now;
    R->stamps[R->nstamps++ % FT_RATE_WINDOW] = now;
    if (!R->hooks || !R->hooks->progress) return;
    int64_t total = R->r.h.schedule[R->r.h.nsched - 1];
    double per_step = w && now > oldest ? (now - oldest) / w : 0;
    ft_progress p = {R->step, total, lr, loss, per_step > 0 ? R->r.h.batch / per_step : 0,
                     per_step > 0 ? per_step * (double)(total - R->step) : -1};
    R->hooks->progress(R->hooks->ud, &p);
}

/* select=best: an evaluation better than the best so far is kept as a checkpoint. */
static int note_eval(run *R, json_t *m, char *err, size_t errlen)
{
    double top1 = json_number_value(json_object_get(m, "top1"));
    if (R->r.select != FT_SELECT_BEST || !m || top1 <= R->best_top1) return 0;
    R->best_top1 = top1, R->best_step = R->step;
    json_decref(R->best_metrics);
    R->best_metrics = json_incref(m);
    return R->step % R->r.save_every ? ft__checkpoint(R, err, errlen) : 0;
}

static int loop(run *R, int loader_threads, char *err, size_t errlen)
{
    int split = R->r.batch_split, n = R->r.micro, th, tw, rc = 0;
    ds_tensor_size(R->d, &th, &tw);
    size_t per = th ? (size_t)3 * th * tw : (size_t)3 * R->r.h.crop * R->r.h.crop;
    ds_loader_opts lo = {.split = DS_TRAIN, .batch = n,
                         .replacement = ds_size(R->d, DS_TRAIN) < R->r.h.batch,
                         .precrop = R->r.h.precrop, .crop = R->r.h.crop, .augment = R->r.augment,
                         .shuffle = R->r.shuffle, .seed = R->r.seed, .threads = loader_threads,
                         .prefetch = 2 * split > 2 ? 2 * split : 2, .start = R->step * split};
    ds_loader *l = NULL;
    float *x = eng_alloc(sizeof(float) * per * n), *tmp = eng_alloc(sizeof(float) * per * n);
    int64_t *y = calloc((size_t)n, sizeof *y), *y2 = calloc((size_t)n, sizeof *y2);
    int64_t total = R->r.h.schedule[R->r.h.nsched - 1];
    int64_t log_every = total / 100 > 0 ? total / 100 : 1;
    double loss = 0, lr;
    if (!x || !tmp || !y || !y2) { rc = eng_errf(err, errlen, ENG_ENOMEM, "out of memory"); goto fail; }
    if ((rc = ds_loader_new(R->d, &lo, &l, err, errlen))) goto fail;
    R->stamps[R->nstamps++ % FT_RATE_WINDOW] = eng_now_ms() / 1e3; /* the first step's rate */
    while ((lr = eng_hyper_lr(&R->r.h, R->step)) >= 0) {
        int stop = R->hooks && R->hooks->stop ? R->hooks->stop(R->hooks->ud) : 0;
        if (stop) {
            rc = stop == 2 ? ft__checkpoint(R, err, errlen) : 0;
            if (!rc) rc = eng_errf(err, errlen, FT_ESTOPPED, "stopped at step %lld", (long long)R->step);
            goto fail;
        }
        if ((rc = train_step(R, l, x, tmp, y, y2, lr, &loss, err, errlen))) goto fail;
        R->step++;
        report(R, lr, loss);
        if (R->step % log_every == 0 || R->step == total) {
            json_t *ev = json_pack("{s:s, s:I, s:f, s:f}", "type", "train", "step",
                                   (json_int_t)R->step, "loss", loss, "lr", lr);
            json_array_append(R->history, ev);
            ft__emit(R, ev);
            json_decref(ev);
        }
        json_t *m = NULL;
        if (R->r.eval_every && R->step % R->r.eval_every == 0 && R->step < total &&
            ((rc = evaluate_now(R, &m, err, errlen)) || (rc = note_eval(R, m, err, errlen)))) {
            json_decref(m);
            goto fail;
        }
        json_decref(m);
        if (R->step % R->r.save_every == 0 && R->step < total && (rc = ft__checkpoint(R, err, errlen)))
            goto fail;
    }
fail:
    ds_loader_free(l);
    eng_free(x), eng_free(tmp), free(y), free(y2);
    return rc;
}

/* Replaces the base checkpoint's head by a zero head with one output per class, as the
 * official code does (so the first steps only move the head). */
int ft_new_head(eng_npz *z, eng_arch *a, int classes)
{
    int64_t ks[4] = {1, 1, 32 * a->width, classes}, bs[1] = {classes};
    eng_tensor *k = eng_tensor_new(ENG_F32, 0, 4, ks), *b = eng_tensor_new(ENG_F32, 0, 1, bs);
    if (!k || !b) {
        eng_tensor_free(k), eng_tensor_free(b);
        return ENG_ENOMEM;
    }
    a->head = classes;
    int rc = eng_npz_put(z, "resnet/head/conv2d/kernel", k);
    return rc ? rc : eng_npz_put(z, "resnet/head/conv2d/bias", b);
}

static int load_npz_at(const char *dir, ft_file f, eng_npz **z, char *err, size_t errlen)
{
    char p[4400];
    ft_rundir_path(dir, f, p, sizeof p);
    return eng_npz_load(p, NULL, z, err, errlen);
}

typedef struct measure_ctx {
    const run *R;
    char err[512];
} measure_ctx;

static int measure_cost(void *ud, int crop, ft_cost *c)
{
    measure_ctx *m = ud;
    int micro = 16 * 128 * 128 / (crop * crop);
    micro = micro < 1 ? 1 : micro > m->R->r.micro ? m->R->r.micro : micro;
    return ft_measure(m->R->base, ds_num_classes(m->R->d), crop, micro, m->R->r.precision, c, m->err,
                      sizeof m->err);
}

/* `bit finetune --budget-minutes`: the plan that fits, from the model's speed measured now. */
static int plan_here(run *R, const ft_params *p, char *err, size_t errlen)
{
    int th, tw;
    ds_tensor_size(R->d, &th, &tw);
    measure_ctx m = {.R = R};
    ft_plan_in in = {.rule = R->r, .train_images = ds_size(R->d, DS_TRAIN),
                     .val_images = ds_size(R->d, DS_VAL), .classes = ds_num_classes(R->d),
                     .features = 32 * R->arch.width, .params = eng_arch_param_count(&R->arch),
                     .budget_s = p->budget_s, .fixed_res = p->crop > 0 || th > 0,
                     .fixed_steps = p->steps > 0 || p->nsched > 0, .fixed_mode = p->set_mode,
                     .cost = measure_cost, .ud = &m};
    int rc = ft_plan(&in, &R->r, err, errlen);
    if (rc && m.err[0]) eng_errf(err, errlen, rc, "measuring the model: %s", m.err);
    return rc;
}

/* Splits the batch until a micro-batch's training memory fits p->memory_bytes. */
static int fit_memory(run *R, const ft_params *p, char *err, size_t errlen)
{
    int res = R->r.h.crop, batch = R->r.h.batch;
    if (eng_arch_train_bytes(&R->arch, 1, res, res) > p->memory_bytes)
        return eng_errf(err, errlen, ENG_ELIMIT, "training one image at %d px needs %llu MB, "
                        "more than the %llu MB allowed: choose a lower resolution", res,
                        (unsigned long long)(eng_arch_train_bytes(&R->arch, 1, res, res) >> 20),
                        (unsigned long long)(p->memory_bytes >> 20));
    for (int split = R->r.batch_split; split <= batch; split++)
        if (batch % split == 0 &&
            eng_arch_train_bytes(&R->arch, batch / split, res, res) <= p->memory_bytes) {
            R->r.batch_split = split, R->r.micro = batch / split;
            return 0;
        }
    return 0; /* unreachable: a split of the whole batch is one image, which fits */
}

/* A fresh run: base weights with a new head, the HyperRule resolved for the dataset. */
static int setup_fresh(run *R, const ft_params *p, const ft_resolved *resolved, eng_npz **z,
                       char *err, size_t errlen)
{
    int rc;
    if (p->init_arch) { /* pre-training: He-normal kernels, GN 1/0, zero head */
        R->arch = *p->init_arch;
        R->base = "(random initialisation)";
        rc = eng_arch_init(&R->arch, p->seed, 0, z, err, errlen);
    } else {
        rc = eng_npz_load(R->base, NULL, z, err, errlen);
        if (!rc) rc = eng_arch_from_npz(*z, &R->arch, err, errlen);
    }
    ft_data_info info;
    ft_data_info_of(R->d, &info);
    if (!rc && resolved) R->r = *resolved;
    else if (!rc) rc = ft_resolve(p, &info, &R->r, err, errlen);
    if (!rc && !resolved && p->budget_s > 0 && !p->init_arch) rc = plan_here(R, p, err, errlen);
    if (!rc && !resolved && p->memory_bytes && !p->batch_split) rc = fit_memory(R, p, err, errlen);
    if (!rc && ft_new_head(*z, &R->arch, ds_num_classes(R->d)))
        rc = eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    if (!rc && mkdir(R->dir, 0755) && errno != EEXIST)
        rc = eng_errf(err, errlen, ENG_EIO, "%s: %s", R->dir, strerror(errno));
    R->history = json_array();
    return rc;
}

/* A resumed run: the newest complete checkpoint's weights and momentum; settings and step
 * come from its state.json (already loaded by ft_run). */
static int setup_resume(run *R, const char *ck, const json_t *state, eng_npz **z, eng_npz **mom,
                        char *err, size_t errlen)
{
    char fp[32];
    snprintf(fp, sizeof fp, "%016llx", (unsigned long long)R->fp);
    const char *sfp = json_string_value(json_object_get(state, "data_fingerprint"));
    if (!sfp || strcmp(sfp, fp))
        return eng_errf(err, errlen, ENG_EINVAL,
                        "%s: the data differs from the run's (fingerprint %s, now %s)", R->dir,
                        sfp ? sfp : "?", fp);
    R->step = json_integer_value(json_object_get(state, "step"));
    R->history = json_deep_copy(json_object_get(state, "history"));
    if (!json_is_array(R->history)) R->history = json_array();
    int rc = load_npz_at(ck, FT_FILE_MODEL, z, err, errlen);
    if (!rc) rc = eng_arch_from_npz(*z, &R->arch, err, errlen);
    if (!rc) rc = load_npz_at(ck, FT_FILE_OPTIMIZER, mom, err, errlen);
    if (!rc && R->arch.head != ds_num_classes(R->d))
        rc = eng_errf(err, errlen, ENG_EFORMAT, "%s: the checkpoint's head does not match the data", ck);
    return rc;
}

/* Reads the newest checkpoint's state.json and the settings a resumed run must reuse. */
static int resume_state(run *R, char *ck, size_t cklen, json_t **state, ds_opts *dso, char *err,
                        size_t errlen)
{
    char p[4400];
    json_error_t je;
    if (ft_rundir_newest(R->dir, ck, cklen))
        return eng_errf(err, errlen, ENG_ENOTFOUND, "%s: no checkpoint to resume from", R->dir);
    ft_rundir_path(ck, FT_FILE_STATE, p, sizeof p);
    if (!(*state = json_load_file(p, 0, &je)))
        return eng_errf(err, errlen, ENG_EFORMAT, "%s: %s", p, je.text);
    if (ft_resolved_from_json(json_object_get(*state, "resolved"), &R->r))
        return eng_errf(err, errlen, ENG_EFORMAT, "%s: bad 'resolved' settings", p);
    if (!R->data) R->data = json_string_value(json_object_get(*state, "data"));
    if (!R->base) R->base = json_string_value(json_object_get(*state, "base_model"));
    if (!R->data || !R->base) return eng_errf(err, errlen, ENG_EFORMAT, "%s: no data or base model", p);
    dso->seed = R->r.seed;
    dso->examples_per_class = R->r.examples_per_class;
    return 0;
}

int ft__write_metrics(const run *R, json_t *metrics, char *err, size_t errlen)
{
    json_t *out = json_pack("{s:I, s:O}", "step", (json_int_t)R->step, "val", metrics ? metrics : json_null());
    char *s = json_dumps(out, JSON_INDENT(2) | JSON_PRESERVE_ORDER), p[4200];
    json_decref(out);
    ft_rundir_path(R->dir, FT_FILE_METRICS, p, sizeof p);
    int rc = s ? eng_file_write_atomic(p, s, strlen(s), err, errlen) : ENG_ENOMEM;
    free(s);
    return rc;
}

/* select=best: when an earlier checkpoint evaluated better than the last step, the run's
 * files (and so the registered model) point at it, and metrics.json is its evaluation. */
static int select_best(run *R, json_t *last, char *err, size_t errlen)
{
    double top1 = json_number_value(json_object_get(last, "top1"));
    int64_t chosen = R->best_step >= 0 && R->best_top1 > top1 ? R->best_step : R->step;
    char dir[4400];
    int rc = 0;
    if (chosen != R->step) {
        ft_rundir_checkpoint(R->dir, chosen, dir, sizeof dir);
        if (!(rc = relink(R, dir, err, errlen))) {
            int64_t last_step = R->step;
            R->step = chosen;
            rc = ft__write_metrics(R, R->best_metrics, err, errlen);
            R->step = last_step;
        }
    }
    json_t *cm = chosen == R->step ? last : R->best_metrics;
    json_t *ev = json_pack("{s:s, s:I, s:O, s:O, s:O}", "type", "selected", "step", (json_int_t)chosen,
                           "val_top1", json_object_get(cm, "top1"), "val_top5",
                           json_object_get(cm, "top5"), "val_loss", json_object_get(cm, "loss"));
    if (ev) ft__emit(R, ev); /* none without a validation split */
    json_decref(ev);
    return rc;
}

static int finish(run *R, char *err, size_t errlen)
{
    json_t *m = NULL;
    int rc = evaluate_now(R, &m, err, errlen);
    if (!rc) rc = ft__write_metrics(R, m, err, errlen);
    if (!rc) rc = ft__checkpoint(R, err, errlen);
    if (!rc && R->r.select == FT_SELECT_BEST) rc = select_best(R, m, err, errlen);
    json_decref(m);
    return rc;
}

/* After a resume: the best evaluation so far whose checkpoint still exists. */
static void best_from_history(run *R)
{
    size_t i;
    json_t *ev;
    json_array_foreach(R->history, i, ev) {
        const char *type = json_string_value(json_object_get(ev, "type"));
        double top1 = json_number_value(json_object_get(ev, "val_top1"));
        int64_t step = json_integer_value(json_object_get(ev, "step"));
        char dir[4400];
        if (!type || strcmp(type, "eval") || top1 <= R->best_top1 ||
            ft_rundir_checkpoint(R->dir, step, dir, sizeof dir) || access(dir, F_OK))
            continue;
        R->best_top1 = top1, R->best_step = step;
        json_decref(R->best_metrics);
        R->best_metrics = json_pack("{s:f, s:O, s:O}", "top1", top1, "top5",
                                    json_object_get(ev, "val_top5"), "loss", json_object_get(ev, "val_loss"));
    }
}

/* What the run is about to do, resolved: the first event of every start and resume. */
static void announce(const run *R, int resume)
{
    json_t *ev = json_pack("{s:s, s:I, s:I, s:b, s:s, s:I, s:i, s:o}", "type", "start", "step",
                           (json_int_t)R->step, "total_steps",
                           (json_int_t)R->r.h.schedule[R->r.h.nsched - 1], "resume", resume,
                           "architecture", eng_arch_name(&R->arch), "train_images",
                           (json_int_t)ds_size(R->d, DS_TRAIN), "classes", ds_num_classes(R->d),
                           "hyperparameters", ft_resolved_json(&R->r));
    if (ev) ft__emit(R, ev);
    json_decref(ev);
}

static int fresh_dir_ok(const char *dir, char *err, size_t errlen)
{
    if (ft_rundir_has_run(dir))
        return eng_errf(err, errlen, ENG_EINVAL, "%s already holds a run: resume it or pick another directory", dir);
    return 0;
}

int ft_run(const char *base, const char *data, const char *run_dir, const ft_params *p,
           const ft_resolved *resolved, int resume, const ft_hooks *hooks, char *err,
           size_t errlen)
{
    run R = {.dir = run_dir, .base = base, .data = data, .hooks = hooks, .best_step = -1,
             .best_top1 = -1};
    json_t *state = NULL;
    eng_npz *z = NULL, *mom = NULL;
    char ck[4400];
    /* the hold-out and few-shot draw are part of the resolved settings */
    ds_opts dso = {.seed = resolved ? resolved->seed : p->seed,
                   .examples_per_class = resolved ? resolved->examples_per_class : p->examples_per_class};
    if (!run_dir || strlen(run_dir) > 3000)
        return eng_errf(err, errlen, ENG_EINVAL, "the run directory path is missing or too long");
    int rc = resume ? resume_state(&R, ck, sizeof ck, &state, &dso, err, errlen)
                    : ((!base && !p->init_arch) || !data)
                          ? eng_errf(err, errlen, ENG_EINVAL, "a base model and data are needed")
                                       : fresh_dir_ok(run_dir, err, errlen);
    if (!rc) rc = ds_open(R.data, &dso, &R.d, err, errlen);
    if (rc) goto fail;
    R.fp = ds_fingerprint(R.d);
    if ((rc = resume ? setup_resume(&R, ck, state, &z, &mom, err, errlen)
                     : setup_fresh(&R, p, resolved, &z, err, errlen)))
        goto fail;
    announce(&R, resume);
    if (R.r.mode == FT_MODE_LINEAR) { /* one pass; a resumed one had already finished */
        if (!resume) rc = ft__linear(&R, z, p, err, errlen), z = NULL;
        goto fail;
    }
    best_from_history(&R);
    int th, tw;
    ds_tensor_size(R.d, &th, &tw);
    eng_train_opts to = {.precision = R.r.precision, .micro_batch = R.r.micro,
                         .h = th ? th : R.r.h.crop, .w = th ? tw : R.r.h.crop};
    if ((rc = eng_trainer_new(z, &R.arch, &to, &R.t, err, errlen))) goto fail;
    if (mom && (rc = eng_trainer_set_momentum(R.t, mom, err, errlen))) goto fail;
    eng_npz_free(z), z = NULL;
    if (!(rc = loop(&R, p->loader_threads, err, errlen))) rc = finish(&R, err, errlen);
fail:
    eng_trainer_free(R.t);
    ds_free(R.d);
    eng_npz_free(z);
    eng_npz_free(mom);
    eng_npz_free(R.fixed);
    json_decref(R.history);
    json_decref(R.best_metrics);
    json_decref(state);
    return rc;
}
