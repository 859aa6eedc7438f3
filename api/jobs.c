/* /v1/jobs: create (JSON, or multipart with the dataset), list, get, cancel, events,
 * checkpoints, delete. */
#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "api/api_int.h"
#include "api/params.h"
#include "finetune.h"

static json_t *num_or_null(double v) { return isnan(v) ? json_null() : json_real(v); }

json_t *api_job_json(const api *a, const store_job *j)
{
    (void)a;
    json_t *hp = j->resolved_json ? json_loads(j->resolved_json, 0, NULL) : NULL;
    json_t *req = j->params_json ? json_loads(j->params_json, 0, NULL) : NULL;
    double frac = j->total_steps > 0 ? (double)j->step / (double)j->total_steps : 0;
    json_t *eta = json_null();
    if (j->status == STORE_RUNNING && !isnan(j->images_per_sec) && j->images_per_sec > 0 && hp) {
        double batch = (double)json_integer_value(json_object_get(hp, "batch"));
        double left = (double)(j->total_steps - j->step) * batch / j->images_per_sec;
        eta = api_time(store_now_ms() + (int64_t)(left * 1000));
    }
    json_t *err = j->error_code ? json_pack("{s:s, s:s}", "code", j->error_code, "message",
                                            j->error_message ? j->error_message : "")
                                : json_null();
    return json_pack(
        "{s:s, s:s, s:s, s:s, s:s?, s:o, s:o, s:{s:I, s:I, s:f, s:o, s:o}, "
        "s:{s:o, s:o, s:o, s:o}, s:s?, s:o, s:o, s:o, s:o}",
        "id", j->id, "name", j->name ? j->name : j->id, "status", store_status_name(j->status),
        "base_model", j->base_model ? j->base_model : "", "dataset", j->dataset_id,
        "hyperparameters", hp ? hp : json_object(), "requested", req ? req : json_object(),
        "progress", "step", (json_int_t)j->step, "total_steps", (json_int_t)j->total_steps,
        "fraction", frac, "images_per_sec", num_or_null(j->images_per_sec), "estimated_finish", eta,
        "metrics", "train_loss", num_or_null(j->train_loss), "val_top1", num_or_null(j->val_top1),
        "val_top5", num_or_null(j->val_top5), "val_loss", num_or_null(j->val_loss),
        "model", j->model_id, "error", err, "created_at", api_time(j->created_at), "started_at",
        api_time(j->started_at), "finished_at", api_time(j->finished_at));
}

/* The HyperRule resolved against the dataset summary stored at upload. */
static int resolve(const store_dataset *d, const ft_params *p, ft_resolved *r, char *err,
                   size_t errlen)
{
    json_t *s = d->summary_json ? json_loads(d->summary_json, 0, NULL) : NULL;
    json_t *med = json_object_get(s, "median_image_size");
    ft_data_info info = {
        .train_images = json_integer_value(json_object_get(json_object_get(json_object_get(s, "splits"), "train"), "total")),
        .median_w = (int)json_integer_value(json_array_get(med, 0)),
        .median_h = (int)json_integer_value(json_array_get(med, 1))};
    if (!strcmp(json_string_value(json_object_get(s, "kind")) ? json_string_value(json_object_get(s, "kind")) : "", "tensors"))
        info.tensor_w = info.median_w, info.tensor_h = info.median_h;
    json_decref(s);
    return ft_resolve(p, &info, r, err, errlen);
}

/* Validates a job request: dataset, base model, hyper-parameters, name. */
static int check_request(api *a, srv_req *req, json_t *body, const char *ds_id, ft_resolved *r,
                         store_dataset **d)
{
    char err[1024], path[4200];
    const char *key;
    json_t *v;
    json_object_foreach(body, key, v) {
        if (strcmp(key, "dataset") && strcmp(key, "base_model") && strcmp(key, "hyperparameters") && strcmp(key, "name"))
            return srv_error(req, 400, "invalid_parameter", "%s: unknown field", key), -1;
    }
    const char *base = json_string_value(json_object_get(body, "base_model"));
    json_t *name = json_object_get(body, "name");
    if (!base) return srv_error(req, 400, "invalid_parameter", "base_model: a model name is required"), -1;
    if (!ds_id) return srv_error(req, 400, "invalid_parameter", "dataset: a dataset id is required"), -1;
    if (name && (!json_is_string(name) || json_string_length(name) > 200))
        return srv_error(req, 400, "invalid_parameter", "name: must be a string of at most 200 bytes"), -1;
    ft_params p;
    if (api_params_parse(json_object_get(body, "hyperparameters"), &p, err, sizeof err))
        return srv_error(req, 400, "invalid_parameter", "%s", err), -1;
    if (wrk_base_path(a->cfg.st, a->cfg.models_dir, base, path, sizeof path, err, sizeof err))
        return srv_error(req, 422, "invalid_base_model", "base_model: %s", err), -1;
    if (store_dataset_get(a->cfg.st, ds_id, d, err, sizeof err))
        return srv_error(req, 422, "invalid_dataset", "dataset: no dataset '%s'", ds_id), -1;
    if (resolve(*d, &p, r, err, sizeof err))
        return srv_error(req, 400, "invalid_parameter", "hyperparameters: %s", err), -1;
    return 0;
}

/* Creates, resolves and queues a job; answers 201 with it. */
static int create_job(api *a, srv_req *req, json_t *body, const char *ds_id)
{
    char err[1024], id[STORE_ID_MAX];
    int64_t queued = 0;
    ft_resolved r;
    store_dataset *d = NULL;
    store_job *j = NULL;
    if (check_request(a, req, body, ds_id, &r, &d)) return 0;
    store_dataset_free(d);
    if (store_job_count(a->cfg.st, STORE_QUEUED, &queued, err, sizeof err)) return api_fail(req, ENG_EIO, err);
    if (queued >= a->cfg.max_queued) {
        srv_set_header(req, "Retry-After", "60");
        return srv_error(req, 503, "queue_full", "%lld jobs are queued; try again later", (long long)queued);
    }
    char *params = json_dumps(json_object_get(body, "hyperparameters") ? json_object_get(body, "hyperparameters")
                                                                        : json_object(), JSON_COMPACT);
    json_t *rj = ft_resolved_json(&r);
    char *resolved = json_dumps(rj, JSON_COMPACT);
    json_decref(rj);
    const char *name = json_string_value(json_object_get(body, "name"));
    int rc = store_id_new("job", id, err, sizeof err);
    store_job_new nj = {.id = id, .name = name && *name ? name : id, .dataset_id = ds_id,
                        .base_model = json_string_value(json_object_get(body, "base_model")),
                        .params_json = params};
    if (!rc) rc = store_job_create(a->cfg.st, &nj, id, err, sizeof err);
    if (!rc) rc = store_job_set_resolved(a->cfg.st, id, resolved, r.h.schedule[r.h.nsched - 1], err, sizeof err);
    if (!rc) rc = store_job_transition(a->cfg.st, id, STORE_VALIDATING, STORE_QUEUED, NULL, NULL, err, sizeof err);
    free(params), free(resolved);
    if (!rc) rc = store_job_get(a->cfg.st, id, &j, err, sizeof err);
    if (rc) return api_fail(req, rc, err);
    if (a->cfg.worker) wrk_notify(a->cfg.worker);
    rc = srv_json(req, 201, api_job_json(a, j));
    store_job_free(j);
    return rc;
}

static int post_job(srv_req *req, void *ud)
{
    api *a = ud;
    json_t *body = NULL;
    char err[512];
    if (srv_body_kind(req) == SRV_MULTIPART) { /* upload and start in one request */
        const srv_part *f = srv_part_get(req, "dataset"), *p = srv_part_get(req, "params");
        if (!f || !f->path) return srv_error(req, 400, "invalid_parameter", "dataset: a file field is required");
        json_error_t je;
        body = p && p->data ? json_loads(p->data, 0, &je) : json_object();
        if (!json_is_object(body)) {
            json_decref(body);
            return srv_error(req, 400, "invalid_json", "params: not a JSON object");
        }
        char id[STORE_ID_MAX];
        int status;
        size_t n = f->filename ? strlen(f->filename) : 0;
        int npz = n > 4 && !strcmp(f->filename + n - 4, ".npz");
        json_t *base_ok = json_object_get(body, "base_model");
        if (!json_is_string(base_ok)) {
            json_decref(body);
            return srv_error(req, 400, "invalid_parameter", "base_model: a model name is required");
        }
        if (api_dataset_import(a, req, f->path, npz, f->filename, id, &status, err, sizeof err)) {
            json_decref(body);
            return srv_error(req, status, status == 422 ? "invalid_dataset" : status == 413 ? "too_large" : "internal", "%s", err);
        }
        int rc = create_job(a, req, body, id);
        json_decref(body);
        return rc;
    }
    if (srv_body_json(req, &body, err, sizeof err) || !json_is_object(body)) {
        json_decref(body);
        return srv_error(req, 400, "invalid_json", "the body must be a JSON object: %s", err);
    }
    json_t *ds = json_object_get(body, "dataset");
    if (ds && !json_is_string(ds)) {
        json_decref(body);
        return srv_error(req, 400, "invalid_parameter", "dataset: must be a dataset id string");
    }
    int rc = create_job(a, req, body, json_string_value(ds));
    json_decref(body);
    return rc;
}

static int get_job(srv_req *req, void *ud)
{
    api *a = ud;
    store_job *j = NULL;
    char err[512];
    int rc = store_job_get(a->cfg.st, srv_param(req, "id"), &j, err, sizeof err);
    if (rc) return api_fail(req, rc, err);
    rc = srv_json(req, 200, api_job_json(a, j));
    store_job_free(j);
    return rc;
}

static int list_jobs(srv_req *req, void *ud)
{
    api *a = ud;
    long limit;
    const char *st = srv_query(req, "status"), *after = srv_query(req, "after");
    int status = st ? store_status_parse(st) : STORE_ANY;
    if (st && status < 0) return srv_error(req, 400, "invalid_parameter", "status: unknown status '%s'", st);
    if (api_query_int(req, "limit", 1, STORE_LIST_MAX, 50, &limit)) return 0;
    char err[512];
    int64_t seq = 0;
    if (after) {
        store_job *j = NULL;
        if (store_job_get(a->cfg.st, after, &j, err, sizeof err))
            return srv_error(req, 400, "invalid_parameter", "after: no job '%s'", after);
        seq = j->seq;
        store_job_free(j);
    }
    store_jobs l = {0};
    int rc = store_job_list(a->cfg.st, (store_status)status, seq, (int)limit, &l, err, sizeof err);
    if (rc) return api_fail(req, rc, err);
    json_t *arr = json_array();
    for (size_t i = 0; i < l.n; i++) json_array_append_new(arr, api_job_json(a, &l.v[i]));
    json_t *next = l.more && l.n ? json_string(l.v[l.n - 1].id) : json_null();
    store_jobs_free(&l);
    return srv_json(req, 200, json_pack("{s:o, s:o}", "jobs", arr, "next_after", next));
}

static int cancel_job(srv_req *req, void *ud)
{
    api *a = ud;
    char err[512];
    store_status now;
    int rc = store_job_request_cancel(a->cfg.st, srv_param(req, "id"), &now, err, sizeof err);
    if (rc) return api_fail(req, rc, rc == STORE_ECONFLICT ? "the job has already finished" : err);
    return get_job(req, ud);
}

static int job_events(srv_req *req, void *ud)
{
    api *a = ud;
    long after, limit;
    char err[512];
    const char *id = srv_param(req, "id");
    store_job *j = NULL;
    int rc = store_job_get(a->cfg.st, id, &j, err, sizeof err);
    store_job_free(j);
    if (rc) return api_fail(req, rc, err);
    if (api_query_int(req, "after", 0, INT64_MAX / 2, 0, &after) ||
        api_query_int(req, "limit", 1, STORE_LIST_MAX, 100, &limit))
        return 0;
    store_events l = {0};
    if ((rc = store_event_list(a->cfg.st, id, after, (int)limit, &l, err, sizeof err)))
        return api_fail(req, rc, err);
    json_t *arr = json_array();
    for (size_t i = 0; i < l.n; i++) {
        const store_event *e = &l.v[i];
        json_t *o = e->data_json ? json_loads(e->data_json, 0, NULL) : NULL;
        if (!json_is_object(o)) {
            json_decref(o);
            o = json_object();
        }
        json_object_set_new(o, "seq", json_integer(e->seq));
        json_object_set_new(o, "time", api_time(e->time));
        json_object_set_new(o, "type", json_string(e->type));
        json_object_set_new(o, "step", e->step >= 0 ? json_integer(e->step) : json_null());
        json_array_append_new(arr, o);
    }
    int more = l.more;
    store_events_free(&l);
    return srv_json(req, 200, json_pack("{s:o, s:b}", "events", arr, "more", more));
}

static int job_checkpoints(srv_req *req, void *ud)
{
    api *a = ud;
    char err[512], dir[4200], ck[4300];
    const char *id = srv_param(req, "id");
    store_job *j = NULL;
    int rc = store_job_get(a->cfg.st, id, &j, err, sizeof err);
    store_job_free(j);
    if (rc) return api_fail(req, rc, err);
    json_t *arr = json_array();
    if (!wrk_job_dir(a->cfg.data_dir, id, dir, sizeof dir) && !eng_path_join(ck, sizeof ck, dir, "checkpoints")) {
        DIR *dh = opendir(ck);
        struct dirent *e;
        while (dh && (e = readdir(dh))) {
            char f[4500];
            struct stat sb;
            if (strncmp(e->d_name, "step-", 5) || snprintf(f, sizeof f, "%s/%s/model.npz", ck, e->d_name) >= (int)sizeof f ||
                stat(f, &sb))
                continue;
            json_array_append_new(arr, json_pack("{s:I, s:I, s:o}", "step", (json_int_t)atoll(e->d_name + 5),
                                                 "bytes", (json_int_t)sb.st_size, "created_at",
                                                 api_time((int64_t)sb.st_mtime * 1000)));
        }
        if (dh) closedir(dh);
    }
    return srv_json(req, 200, json_pack("{s:o}", "checkpoints", arr));
}

static int delete_job(srv_req *req, void *ud)
{
    api *a = ud;
    char err[512], dir[4200];
    const char *id = srv_param(req, "id");
    int rc = store_job_delete(a->cfg.st, id, err, sizeof err);
    if (rc) return api_fail(req, rc, rc == STORE_EINUSE ? "the job is still queued or running: cancel it first" : err);
    if (!wrk_job_dir(a->cfg.data_dir, id, dir, sizeof dir)) {
        /* a fine-tuned model registered from this job keeps its files: only checkpoints go */
        char ck[4300];
        if (!eng_path_join(ck, sizeof ck, dir, "checkpoints")) arc_remove_tree(ck, err, sizeof err);
    }
    return srv_json(req, 200, json_pack("{s:s, s:b}", "id", id, "deleted", 1));
}

int api_routes_jobs(api *a, srv *s)
{
    return srv_route(s, "POST", "/v1/jobs", post_job, a, SRV_BODY_AUTO) ||
           srv_route(s, "GET", "/v1/jobs", list_jobs, a, SRV_BODY_NONE) ||
           srv_route(s, "GET", "/v1/jobs/{id}", get_job, a, SRV_BODY_NONE) ||
           srv_route(s, "DELETE", "/v1/jobs/{id}", delete_job, a, SRV_BODY_NONE) ||
           srv_route(s, "POST", "/v1/jobs/{id}/cancel", cancel_job, a, SRV_BODY_NONE) ||
           srv_route(s, "GET", "/v1/jobs/{id}/events", job_events, a, SRV_BODY_NONE) ||
           srv_route(s, "GET", "/v1/jobs/{id}/checkpoints", job_checkpoints, a, SRV_BODY_NONE);
}
