#include "finetune.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

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
    eng_hyper_rule(d->train_images, d->median_w, d->median_h, &r->h);
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
    return p->init_arch ? pretrain_schedule(p, d, r, err, errlen) : 0;
}

json_t *ft_resolved_json(const ft_resolved *r)
{
    json_t *s = json_array();
    for (int i = 0; i < r->h.nsched; i++) json_array_append_new(s, json_integer(r->h.schedule[i]));
    return json_pack("{s:i, s:i, s:i, s:f, s:o, s:I, s:[i,i], s:f, s:i, s:I, s:I, s:I, s:b, s:b, "
                     "s:f, s:b}",
                     "batch", r->h.batch, "batch_split", r->batch_split, "micro_batch", r->micro,
                     "base_lr", r->h.base_lr, "schedule", s,
                     "steps", (json_int_t)r->h.schedule[r->h.nsched - 1], "resolution",
                     r->h.precrop, r->h.crop, "mixup", r->h.mixup_alpha, "examples_per_class",
                     r->examples_per_class, "seed", (json_int_t)r->seed, "eval_every",
                     (json_int_t)r->eval_every, "save_every", (json_int_t)r->save_every,
                     "augment", r->augment, "shuffle", r->shuffle, "weight_decay",
                     r->weight_decay, "pretrain", r->pretrain);
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

typedef struct run {
    const char *dir, *base, *data;
    ft_resolved r;
    ds_dataset *d;
    eng_trainer *t;
    eng_arch arch;
    json_t *history;
    int64_t step;
    uint64_t fp;
    const ft_hooks *hooks;
} run;

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

static int save_files(const run *R, const char *dir, char *err, size_t errlen)
{
    char p[4400];
    eng_npz *params = NULL, *mom = NULL;
    int rc = eng_trainer_params(R->t, &params);
    if (!rc) rc = eng_trainer_momentum(R->t, &mom);
    if (rc) {
        rc = eng_errf(err, errlen, rc, "out of memory saving a checkpoint");
        goto fail;
    }
    eng_path_join(p, sizeof p, dir, "model.npz");
    if ((rc = eng_npz_save(p, params, 0, err, errlen))) goto fail;
    eng_path_join(p, sizeof p, dir, "optimizer.npz");
    if ((rc = eng_npz_save(p, mom, 0, err, errlen))) goto fail;
    eng_path_join(p, sizeof p, dir, "labels.txt");
    if ((rc = write_labels(p, R->d, err, errlen))) goto fail;
    json_t *st = state_json(R);
    char *s = json_dumps(st, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(st);
    eng_path_join(p, sizeof p, dir, "state.json");
    rc = s ? eng_file_write_atomic(p, s, strlen(s), err, errlen)
           : eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    free(s);
fail:
    eng_npz_free(params);
    eng_npz_free(mom);
    return rc;
}

/* Keeps the newest KEEP_CHECKPOINTS step-* directories. Names sort by step (zero-padded). */
static void prune(const char *ckdir)
{
    DIR *dh = opendir(ckdir);
    if (!dh) return;
    char names[64][32];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(dh)) && n < 64)
        if (!strncmp(e->d_name, "step-", 5) && strlen(e->d_name) < 32) strcpy(names[n++], e->d_name);
    closedir(dh);
    qsort(names, (size_t)n, sizeof names[0], (int (*)(const void *, const void *))strcmp);
    for (int i = 0; i + KEEP_CHECKPOINTS < n; i++) {
        char p[4400], e2[128];
        eng_path_join(p, sizeof p, ckdir, names[i]);
        arc_remove_tree(p, e2, sizeof e2);
    }
}

/* A checkpoint is a directory renamed into place when complete, so a crash at any moment
 * leaves the previous one whole; the run directory's top-level files are then re-linked to
 * it one by one (each an atomic rename), state.json last. */
static int checkpoint(run *R, char *err, size_t errlen)
{
    char ck[4200], tmp[4400], fin[4400];
    eng_path_join(ck, sizeof ck, R->dir, "checkpoints");
    if (mkdir(ck, 0755) && errno != EEXIST)
        return eng_errf(err, errlen, ENG_EIO, "%s: %s", ck, strerror(errno));
    snprintf(tmp, sizeof tmp, "%s/.tmp-%lld-%ld", ck, (long long)R->step, (long)getpid());
    snprintf(fin, sizeof fin, "%s/step-%09lld", ck, (long long)R->step);
    char e2[256];
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
    static const char *files[] = {"model.npz", "optimizer.npz", "labels.txt", "state.json"};
    for (int i = 0; i < 4 && !rc; i++) {
        char src[4500], dst[4500], lnk[4600];
        snprintf(src, sizeof src, "%s/%s", fin, files[i]);
        snprintf(dst, sizeof dst, "%s/%s", R->dir, files[i]);
        snprintf(lnk, sizeof lnk, "%s.tmp", dst);
        unlink(lnk);
        if (link(src, lnk) || rename(lnk, dst))
            rc = eng_errf(err, errlen, ENG_EIO, "%s: %s", dst, strerror(errno));
    }
    prune(ck);
    if (!rc && R->hooks && R->hooks->event) {
        json_t *ev = json_pack("{s:s, s:I, s:s}", "type", "checkpoint", "step", (json_int_t)R->step,
                               "path", fin);
        R->hooks->event(R->hooks->ud, ev);
        json_decref(ev);
    }
    return rc;
}

/* ---------------------------------------------------------------- the run */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void emit(const run *R, json_t *ev)
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
    rc = eng_net_new(z, &R->arch, NULL, &net, err, errlen);
    eng_npz_free(z);
    if (!rc) rc = ft_evaluate(net, R->d, DS_VAL, R->r.h.crop, R->r.micro, metrics, err, errlen);
    eng_net_free(net);
    if (rc) return rc;
    json_t *ev = json_pack("{s:s, s:I, s:O, s:O, s:O}", "type", "eval", "step", (json_int_t)R->step,
                           "val_top1", json_object_get(*metrics, "top1"), "val_top5",
                           json_object_get(*metrics, "top5"), "val_loss",
                           json_object_get(*metrics, "loss"));
    json_array_append(R->history, ev);
    emit(R, ev);
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

static int resolved_from_json(const json_t *j, ft_resolved *r)
{
    json_t *sched = json_object_get(j, "schedule"), *res = json_object_get(j, "resolution");
    memset(r, 0, sizeof *r);
    if (!json_is_array(sched) || json_array_size(sched) < 2 || json_array_size(sched) > ENG_MAX_SCHEDULE ||
        !json_is_array(res) || json_array_size(res) != 2)
        return ENG_EFORMAT;
    r->h.nsched = (int)json_array_size(sched);
    for (int i = 0; i < r->h.nsched; i++) r->h.schedule[i] = json_integer_value(json_array_get(sched, (size_t)i));
    r->h.precrop = (int)json_integer_value(json_array_get(res, 0));
    r->h.crop = (int)json_integer_value(json_array_get(res, 1));
    r->h.batch = (int)json_integer_value(json_object_get(j, "batch"));
    r->h.base_lr = json_number_value(json_object_get(j, "base_lr"));
    r->h.mixup_alpha = json_number_value(json_object_get(j, "mixup"));
    r->batch_split = (int)json_integer_value(json_object_get(j, "batch_split"));
    r->micro = (int)json_integer_value(json_object_get(j, "micro_batch"));
    r->examples_per_class = (int)json_integer_value(json_object_get(j, "examples_per_class"));
    r->seed = (uint64_t)json_integer_value(json_object_get(j, "seed"));
    r->eval_every = json_integer_value(json_object_get(j, "eval_every"));
    r->save_every = json_integer_value(json_object_get(j, "save_every"));
    r->augment = json_is_true(json_object_get(j, "augment"));
    r->shuffle = json_is_true(json_object_get(j, "shuffle"));
    r->weight_decay = json_number_value(json_object_get(j, "weight_decay"));
    r->pretrain = json_is_true(json_object_get(j, "pretrain"));
    if (r->h.batch < 1 || r->batch_split < 1 || r->micro * r->batch_split != r->h.batch ||
        r->h.crop < 32 || r->h.precrop < r->h.crop)
        return ENG_EFORMAT;
    return 0;
}

static void report(const run *R, double lr, double loss, int64_t first, double t0)
{
    if (!R->hooks || !R->hooks->progress) return;
    int64_t total = R->r.h.schedule[R->r.h.nsched - 1];
    double dt = now_s() - t0, ips = dt > 0 ? (double)(R->step - first) * R->r.h.batch / dt : 0;
    ft_progress p = {R->step, total, lr, loss, ips,
                     R->step > first ? dt / (double)(R->step - first) * (double)(total - R->step) : -1};
    R->hooks->progress(R->hooks->ud, &p);
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
    int64_t total = R->r.h.schedule[R->r.h.nsched - 1], first = R->step;
    int64_t log_every = total / 100 > 0 ? total / 100 : 1;
    double t0 = now_s(), loss = 0, lr;
    if (!x || !tmp || !y || !y2) { rc = eng_errf(err, errlen, ENG_ENOMEM, "out of memory"); goto fail; }
    if ((rc = ds_loader_new(R->d, &lo, &l, err, errlen))) goto fail;
    while ((lr = eng_hyper_lr(&R->r.h, R->step)) >= 0) {
        int stop = R->hooks && R->hooks->stop ? R->hooks->stop(R->hooks->ud) : 0;
        if (stop) {
            rc = stop == 2 ? checkpoint(R, err, errlen) : 0;
            if (!rc) rc = eng_errf(err, errlen, FT_ESTOPPED, "stopped at step %lld", (long long)R->step);
            goto fail;
        }
        if ((rc = train_step(R, l, x, tmp, y, y2, lr, &loss, err, errlen))) goto fail;
        R->step++;
        report(R, lr, loss, first, t0);
        if (R->step % log_every == 0 || R->step == total) {
            json_t *ev = json_pack("{s:s, s:I, s:f, s:f}", "type", "train", "step",
                                   (json_int_t)R->step, "loss", loss, "lr", lr);
            json_array_append(R->history, ev);
            emit(R, ev);
            json_decref(ev);
        }
        json_t *m = NULL;
        if (R->r.eval_every && R->step % R->r.eval_every == 0 && R->step < total &&
            (rc = evaluate_now(R, &m, err, errlen)))
            goto fail;
        json_decref(m);
        if (R->step % R->r.save_every == 0 && R->step < total && (rc = checkpoint(R, err, errlen)))
            goto fail;
    }
fail:
    ds_loader_free(l);
    eng_free(x), eng_free(tmp), free(y), free(y2);
    return rc;
}

/* Replaces the base checkpoint's head by a zero head with one output per class, as the
 * official code does (so the first steps only move the head). */
static int new_head(eng_npz *z, eng_arch *a, int classes)
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

static int newest_checkpoint(const char *run_dir, char *out, size_t outlen)
{
    char ck[4200], best[64] = "";
    eng_path_join(ck, sizeof ck, run_dir, "checkpoints");
    DIR *dh = opendir(ck);
    if (!dh) return ENG_ENOTFOUND;
    struct dirent *e;
    while ((e = readdir(dh)))
        if (!strncmp(e->d_name, "step-", 5) && strlen(e->d_name) < sizeof best && strcmp(e->d_name, best) > 0)
            strcpy(best, e->d_name);
    closedir(dh);
    if (!best[0]) return ENG_ENOTFOUND;
    snprintf(out, outlen, "%s/%s", ck, best);
    return 0;
}

static int load_npz_at(const char *dir, const char *file, eng_npz **z, char *err, size_t errlen)
{
    char p[4400];
    eng_path_join(p, sizeof p, dir, file);
    return eng_npz_load(p, NULL, z, err, errlen);
}

/* A fresh run: base weights with a new head, the HyperRule resolved for the dataset. */
static int setup_fresh(run *R, const ft_params *p, eng_npz **z, char *err, size_t errlen)
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
    if (!rc) rc = ft_resolve(p, &info, &R->r, err, errlen);
    if (!rc && new_head(*z, &R->arch, ds_num_classes(R->d)))
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
    int rc = load_npz_at(ck, "model.npz", z, err, errlen);
    if (!rc) rc = eng_arch_from_npz(*z, &R->arch, err, errlen);
    if (!rc) rc = load_npz_at(ck, "optimizer.npz", mom, err, errlen);
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
    if (newest_checkpoint(R->dir, ck, cklen))
        return eng_errf(err, errlen, ENG_ENOTFOUND, "%s: no checkpoint to resume from", R->dir);
    eng_path_join(p, sizeof p, ck, "state.json");
    if (!(*state = json_load_file(p, 0, &je)))
        return eng_errf(err, errlen, ENG_EFORMAT, "%s: %s", p, je.text);
    if (resolved_from_json(json_object_get(*state, "resolved"), &R->r))
        return eng_errf(err, errlen, ENG_EFORMAT, "%s: bad 'resolved' settings", p);
    if (!R->data) R->data = json_string_value(json_object_get(*state, "data"));
    if (!R->base) R->base = json_string_value(json_object_get(*state, "base_model"));
    if (!R->data || !R->base) return eng_errf(err, errlen, ENG_EFORMAT, "%s: no data or base model", p);
    dso->seed = R->r.seed;
    dso->examples_per_class = R->r.examples_per_class;
    return 0;
}

static int finish(run *R, char *err, size_t errlen)
{
    json_t *m = NULL;
    int rc = evaluate_now(R, &m, err, errlen);
    if (rc) return rc;
    json_t *out = json_pack("{s:I, s:o}", "step", (json_int_t)R->step, "val", m ? m : json_null());
    char *s = json_dumps(out, JSON_INDENT(2) | JSON_PRESERVE_ORDER), p[4200];
    json_decref(out);
    eng_path_join(p, sizeof p, R->dir, "metrics.json");
    rc = s ? eng_file_write_atomic(p, s, strlen(s), err, errlen) : ENG_ENOMEM;
    free(s);
    return rc ? rc : checkpoint(R, err, errlen);
}

static int fresh_dir_ok(const char *dir, char *err, size_t errlen)
{
    char p[4200];
    eng_path_join(p, sizeof p, dir, "checkpoints");
    struct stat st;
    if (stat(p, &st) == 0)
        return eng_errf(err, errlen, ENG_EINVAL, "%s already holds a run: resume it or pick another directory", dir);
    return 0;
}

int ft_run(const char *base, const char *data, const char *run_dir, const ft_params *p,
           int resume, const ft_hooks *hooks, char *err, size_t errlen)
{
    run R = {.dir = run_dir, .base = base, .data = data, .hooks = hooks};
    json_t *state = NULL;
    eng_npz *z = NULL, *mom = NULL;
    char ck[4400];
    ds_opts dso = {.seed = p->seed, .examples_per_class = p->examples_per_class};
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
                     : setup_fresh(&R, p, &z, err, errlen)))
        goto fail;
    int th, tw;
    ds_tensor_size(R.d, &th, &tw);
    eng_train_opts to = {.precision = p->precision, .micro_batch = R.r.micro,
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
    json_decref(R.history);
    json_decref(state);
    return rc;
}
