/* The job life cycle: creation (validate, resolve, one transaction) and its dry run, reads,
 * cancel, delete, the final evaluation. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "finetune.h"
#include "ftjson.h"
#include "names.h"
#include "server/svc/svc_int.h"

/* What the HyperRule needs of a dataset, from the summary stored at import (and, for time
 * budgets, its validation images and classes). */
static void data_info(const store_dataset *d, ft_data_info *info, int64_t *val, int *classes)
{
    json_t *s = d->summary_json ? json_loads(d->summary_json, 0, NULL) : NULL;
    json_t *med = json_object_get(s, "median_image_size");
    json_t *train = json_object_get(json_object_get(s, "splits"), "train");
    const char *kind = json_string_value(json_object_get(s, "kind"));
    memset(info, 0, sizeof *info);
    info->train_images = json_integer_value(json_object_get(train, "total"));
    info->median_w = (int)json_integer_value(json_array_get(med, 0));
    info->median_h = (int)json_integer_value(json_array_get(med, 1));
    *val = json_integer_value(json_object_get(json_object_get(json_object_get(s, "splits"), "val"), "total"));
    *classes = (int)json_integer_value(json_object_get(s, "num_classes"));
    if (kind && !strcmp(kind, "tensors")) info->tensor_w = info->median_w, info->tensor_h = info->median_h;
    json_decref(s);
}

/* Everything about a request that needs no dataset: hyper-parameters, base model, name. */
static int check_request(svc *s, const svc_job_request *rq, ft_params *p, svc_err *e)
{
    char err[1024];
    reg_model m;
    if (!rq->base_model || !*rq->base_model)
        return svc__fail(s, e, ENG_EINVAL, "invalid_parameter", "base_model: a model name is required");
    if (ft_params_from_json(rq->hyperparameters, p, err, sizeof err))
        return svc__fail(s, e, ENG_EINVAL, "invalid_parameter", "%s", err);
    int rc = reg_resolve(s->models, rq->base_model, &m, err, sizeof err);
    if (!rc && !p->pretrain_res) p->pretrain_res = m.pretrain_resolution; /* its NAME.json's */
    reg_model_clear(&m);
    if (rc) return svc__fail(s, e, SVC_EREF, "invalid_base_model", "base_model: %s", err);
    if (rq->name && ((rc = reg_name_free(s->models, rq->name, err, sizeof err)) ||
                     (rc = store_name_free(s->st, rq->name, err, sizeof err))))
        return svc__fail(s, e, rc, rc == ENG_EINVAL ? "invalid_parameter" : "name_taken", "%s", err);
    return 0;
}

static int queue_has_room(svc *s, svc_err *e)
{
    int64_t queued = 0;
    char err[512];
    if (store_job_count(s->st, STORE_QUEUED, &queued, err, sizeof err))
        return svc__fail(s, e, ENG_EIO, NULL, "%s", err);
    if (queued < s->cfg.max_queued) return 0;
    svc__fail(s, e, SVC_EBUSY, "queue_full", "%lld jobs are queued; try again later", (long long)queued);
    e->retry_after_s = 60;
    return SVC_EBUSY;
}

/* Sizes the job against the memory budget: a micro-batch that does not fit is split (when the
 * request left batch_split to the rule), else the job is refused naming what would fit. */
static int fit_memory(svc *s, const char *base, const ft_params *p, ft_resolved *r,
                      uint64_t *need, svc_err *e)
{
    char err[512];
    reg_model m;
    eng_arch a;
    int rc = reg_resolve(s->models, base, &m, err, sizeof err);
    if (!rc) rc = eng_arch_probe(m.path, &a, err, sizeof err);
    reg_model_clear(&m);
    if (rc) return svc__fail(s, e, SVC_EREF, "invalid_base_model", "base_model: %s", err);
    uint64_t total = bud_total(s->mem);
    int res = r->h.crop, fits = 0;
    for (int k = r->micro; k >= 1 && !fits; k--)
        if (eng_arch_train_bytes(&a, k, res, res) <= total) fits = k;
    for (int split = r->batch_split; !p->batch_split && split <= r->h.batch; split++)
        if (r->h.batch % split == 0 && r->h.batch / split <= fits) {
            r->batch_split = split, r->micro = r->h.batch / split;
            break;
        }
    *need = eng_arch_train_bytes(&a, r->micro, res, res);
    if (*need <= total) return 0;
    if (!fits)
        return svc__fail(s, e, ENG_EINVAL, "invalid_parameter", "hyperparameters.resolution: "
                         "training one image at %d px needs %llu MB, more than the memory budget "
                         "(%llu MB): choose a lower resolution", res,
                         (unsigned long long)(eng_arch_train_bytes(&a, 1, res, res) >> 20),
                         (unsigned long long)(total >> 20));
    return svc__fail(s, e, ENG_EINVAL, "invalid_parameter", "hyperparameters.batch_split: a "
                     "micro-batch of %d images at %d px needs %llu MB, more than the memory budget "
                     "(%llu MB); at most %d image%s fit%s: set batch_split so that batch / batch_split "
                     "<= %d", r->micro, res, (unsigned long long)(*need >> 20),
                     (unsigned long long)(total >> 20), fits, fits == 1 ? "" : "s",
                     fits == 1 ? "s" : "", fits);
}

/* Resolves the rule against the dataset (an id or a unique name): *rj (the caller's) is what
 * the job would run, ds_id the dataset's id. */
static int resolve(svc *s, const svc_job_request *rq, const ft_params *p, const char *ds_ref,
                   char ds_id[STORE_ID_MAX], json_t **rj, svc_err *e)
{
    char err[1024];
    store_dataset *d = NULL;
    ft_resolved r;
    ft_data_info info;
    *rj = NULL;
    if (!ds_ref || !*ds_ref)
        return svc__fail(s, e, ENG_EINVAL, "invalid_parameter", "dataset: a dataset's id or name is required");
    int rc = svc__dataset_resolve(s, ds_ref, &d, e);
    if (rc == ENG_ENOTFOUND) {
        snprintf(err, sizeof err, "%s", e ? e->msg : "");
        return svc__fail(s, e, SVC_EREF, "invalid_dataset", "dataset: %s", err);
    }
    if (rc) return rc;
    snprintf(ds_id, STORE_ID_MAX, "%s", d->id);
    int64_t val = 0;
    int classes = 0;
    data_info(d, &info, &val, &classes);
    store_dataset_free(d);
    if (ft_resolve(p, &info, &r, err, sizeof err))
        return svc__fail(s, e, ENG_EINVAL, "invalid_parameter", "hyperparameters: %s", err);
    if (p->budget_s > 0) { /* the plan that fits the budget, from the model's measured speed */
        reg_model m;
        ft_data_info few = info;
        if (p->examples_per_class > 0 && (int64_t)p->examples_per_class * classes < few.train_images)
            few.train_images = (int64_t)p->examples_per_class * classes;
        if (!(rc = reg_resolve(s->models, rq->base_model, &m, err, sizeof err)))
            rc = svc__plan(s, m.path, p, &few, val, classes, &r, e);
        else
            svc__fail(s, e, SVC_EREF, "invalid_base_model", "base_model: %s", err);
        reg_model_clear(&m);
        if (rc) return rc;
    }
    uint64_t need = 0;
    if ((rc = fit_memory(s, rq->base_model, p, &r, &need, e))) return rc;
    if (!(*rj = ft_resolved_json(&r))) return svc__fail(s, e, ENG_ENOMEM, NULL, "out of memory");
    json_object_set_new(*rj, "memory_mb", json_integer((json_int_t)(need >> 20)));
    return 0;
}

/* Resolves the rule against the dataset and inserts the job, queued, in one transaction. */
static int create(svc *s, const svc_job_request *rq, const ft_params *p, const char *ds_ref,
                  store_job **out, svc_err *e)
{
    char err[1024], id[STORE_ID_MAX], ds_id[STORE_ID_MAX];
    json_t *rj;
    int rc = resolve(s, rq, p, ds_ref, ds_id, &rj, e);
    if (rc) return rc;
    char *params = rq->hyperparameters ? json_dumps(rq->hyperparameters, JSON_COMPACT) : strdup("{}");
    char *resolved = json_dumps(rj, JSON_COMPACT);
    int64_t total = json_integer_value(json_object_get(rj, "steps"));
    json_decref(rj);
    rc = store_id_new("job", id, err, sizeof err);
    store_job_new nj = {.id = id, .name = rq->name && *rq->name ? rq->name : id, .dataset_id = ds_id,
                        .base_model = rq->base_model, .params_json = params,
                        .resolved_json = resolved, .total_steps = total};
    if (!params || !resolved) rc = eng_errf(err, sizeof err, ENG_ENOMEM, "out of memory");
    if (!rc) rc = store_job_create(s->st, &nj, id, err, sizeof err);
    free(params), free(resolved);
    if (!rc) rc = store_job_get(s->st, id, out, err, sizeof err);
    if (rc) return svc__fail(s, e, rc, rc == STORE_EEXISTS ? "name_taken" : NULL, "%s", err);
    if (s->worker) wrk_notify(s->worker);
    return 0;
}

int svc_job_create(svc *s, const svc_job_request *rq, const svc_upload *u, store_job **out,
                   svc_err *e)
{
    ft_params p;
    store_dataset *d = NULL;
    *out = NULL;
    int rc = check_request(s, rq, &p, e);
    if (!rc) rc = queue_has_room(s, e);
    if (rc || !u) {
        if (u) unlink(u->path);
        return rc ? rc : create(s, rq, &p, rq->dataset, out, e);
    }
    /* upload and start: the dataset stays only if the job is created */
    if ((rc = svc_dataset_import(s, u, &d, e))) return rc;
    char gone[STORE_ID_MAX];
    if ((rc = create(s, rq, &p, d->id, out, e))) svc_dataset_delete(s, d->id, gone, NULL);
    store_dataset_free(d);
    return rc;
}

int svc_job_resolve(svc *s, const svc_job_request *rq, const svc_upload *u, json_t **resolved,
                    svc_err *e)
{
    ft_params p;
    store_dataset *d = NULL;
    char id[STORE_ID_MAX]; /* the dataset's: unused, resolve and delete need a place for it */
    *resolved = NULL;
    int rc = check_request(s, rq, &p, e);
    if (rc || !u) {
        if (u) unlink(u->path);
        return rc ? rc : resolve(s, rq, &p, rq->dataset, id, resolved, e);
    }
    /* the upload is measured as an import would, then goes: a dry run keeps nothing */
    if ((rc = svc_dataset_import(s, u, &d, e))) return rc;
    rc = resolve(s, rq, &p, d->id, id, resolved, e);
    svc_dataset_delete(s, d->id, id, NULL);
    store_dataset_free(d);
    return rc;
}

int svc_job_get(svc *s, const char *id, store_job **out, svc_err *e)
{
    char err[512];
    int rc = store_job_get(s->st, id, out, err, sizeof err);
    return rc ? svc__fail(s, e, rc, NULL, "%s", err) : 0;
}

int svc_job_list(svc *s, const char *status, const char *after, int limit, store_jobs *out,
                 svc_err *e)
{
    char err[512];
    int st = status ? store_status_parse(status) : STORE_ANY;
    int64_t seq = 0;
    memset(out, 0, sizeof *out);
    if (status && st < 0) {
        const char *names[STORE_NSTATUS];
        char hint[400];
        for (int i = 0; i < STORE_NSTATUS; i++) names[i] = store_status_name((store_status)i);
        return svc__fail(s, e, ENG_EINVAL, "invalid_parameter", "status: unknown status '%s'; %s", status,
                         eng_names_hint(hint, sizeof hint, status, names, STORE_NSTATUS, ""));
    }
    if (after) {
        store_job *j = NULL;
        if (store_job_get(s->st, after, &j, err, sizeof err))
            return svc__fail(s, e, ENG_EINVAL, "invalid_parameter", "after: no job '%s'", after);
        seq = j->seq;
        store_job_free(j);
    }
    int rc = store_job_list(s->st, (store_status)st, seq, limit, out, err, sizeof err);
    return rc ? svc__fail(s, e, rc, NULL, "%s", err) : 0;
}

int svc_job_cancel(svc *s, const char *id, store_job **out, svc_err *e)
{
    char err[512];
    store_status now;
    *out = NULL;
    int rc = store_job_request_cancel(s->st, id, &now, err, sizeof err);
    if (rc) return svc__fail(s, e, rc, NULL, "%s", rc == STORE_ECONFLICT ? "the job has already finished" : err);
    return svc_job_get(s, id, out, e);
}

int svc_job_delete(svc *s, const char *id, svc_err *e)
{
    char err[512], dir[4200];
    store_job *j = NULL;
    int rc = store_job_get(s->st, id, &j, err, sizeof err);
    if (!rc) rc = store_job_delete(s->st, id, err, sizeof err);
    if (rc) {
        store_job_free(j);
        return svc__fail(s, e, rc, NULL, "%s", rc == STORE_EINUSE
                         ? "the job is still queued or running: cancel it first" : err);
    }
    /* a model registered from this job keeps its files; everything else of the run goes */
    store_model *m = NULL;
    int keep = j->model_id && store_model_get(s->st, j->model_id, &m, NULL, 0) == 0;
    store_model_free(m);
    if (!svc_path_job_dir(s->data_dir, id, dir, sizeof dir))
        ft_rundir_remove(dir, keep ? FT_RM_KEEP_MODEL : FT_RM_ALL, err, sizeof err);
    store_job_free(j);
    return 0;
}

int svc_job_events(svc *s, const char *id, int64_t after, int limit, store_events *out,
                   svc_err *e)
{
    char err[512];
    store_job *j = NULL;
    memset(out, 0, sizeof *out);
    int rc = store_job_get(s->st, id, &j, err, sizeof err);
    store_job_free(j);
    if (!rc) rc = store_event_list(s->st, id, after, limit, out, err, sizeof err);
    return rc ? svc__fail(s, e, rc, NULL, "%s", err) : 0;
}

int svc_job_checkpoints(svc *s, const char *id, ft_checkpoint **out, size_t *n, svc_err *e)
{
    char err[512], dir[4200];
    store_job *j = NULL;
    *out = NULL, *n = 0;
    int rc = store_job_get(s->st, id, &j, err, sizeof err);
    store_job_free(j);
    if (!rc && svc_path_job_dir(s->data_dir, id, dir, sizeof dir))
        rc = eng_errf(err, sizeof err, ENG_EINVAL, "job id too long");
    if (!rc) rc = ft_rundir_checkpoints(dir, out, n, err, sizeof err);
    return rc ? svc__fail(s, e, rc, NULL, "%s", err) : 0;
}

int svc_job_metrics(svc *s, const char *id, json_t **out, svc_err *e)
{
    char err[512], dir[4200], path[4300];
    store_job *j = NULL;
    *out = NULL;
    int rc = store_job_get(s->st, id, &j, err, sizeof err);
    store_job_free(j);
    if (rc) return svc__fail(s, e, rc, NULL, "%s", err);
    if (svc_path_job_dir(s->data_dir, id, dir, sizeof dir) ||
        ft_rundir_path(dir, FT_FILE_METRICS, path, sizeof path))
        return svc__fail(s, e, ENG_EINVAL, NULL, "job id too long");
    json_error_t je;
    if (!(*out = json_load_file(path, 0, &je))) {
        if (access(path, F_OK))
            return svc__fail(s, e, ENG_ENOTFOUND, "no_metrics", "job %s has no final evaluation "
                             "(only a job that succeeded has one)", id);
        return svc__fail(s, e, ENG_EFORMAT, NULL, "the job's metrics.json does not parse: %s", je.text);
    }
    return 0;
}
