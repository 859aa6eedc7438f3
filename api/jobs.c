/* /v1/jobs: create (JSON, or multipart with the dataset; or only resolve, ?dry_run=true), list,
 * get, cancel, events (live: api/follow.c), checkpoints, final metrics, delete. */
#include <stdlib.h>
#include <string.h>

#include "api/api_int.h"
#include "ftjson.h"
#include "names.h"

static const char *const job_fields[] = {"dataset", "base_model", "hyperparameters", "name"};
#define NJOB_FIELDS (sizeof job_fields / sizeof job_fields[0])

/* 400 for an unknown field of a job request, with what was probably meant: the CLI's name of
 * a field, a hyper-parameter at the top level, or the nearest name. */
static int unknown_field(srv_req *req, const char *key)
{
    static const char *const cli[][2] = {{"model", "base_model"}, {"data", "dataset"}};
    char hint[400];
    for (size_t i = 0; i < sizeof cli / sizeof cli[0]; i++)
        if (!strcmp(key, cli[i][0]))
            return srv_error(req, 400, "invalid_parameter", "%s: unknown field; the CLI's --%s is \"%s\" here",
                             key, key, cli[i][1]);
    for (size_t i = 0; ft_param_field(i); i++) {
        const ft_field_doc *f = ft_param_field(i);
        if (!strcmp(key, f->name) || (f->alias && !strcmp(key, f->alias)))
            return srv_error(req, 400, "invalid_parameter", "%s: unknown field; it goes inside "
                             "\"hyperparameters\": {\"%s\": ...}", key, f->name);
    }
    return srv_error(req, 400, "invalid_parameter", "%s: unknown field; %s", key,
                     eng_names_hint(hint, sizeof hint, key, job_fields, NJOB_FIELDS, ""));
}

/* The request's shape: known fields of the right types. 0, or -1 after answering 400. */
static int parse_request(srv_req *req, const json_t *body, svc_job_request *rq)
{
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)body, key, v) {
        int known = 0;
        for (size_t i = 0; i < NJOB_FIELDS; i++) known |= !strcmp(key, job_fields[i]);
        if (!known) return unknown_field(req, key), -1;
    }
    json_t *ds = json_object_get(body, "dataset"), *base = json_object_get(body, "base_model");
    json_t *name = json_object_get(body, "name"), *hp = json_object_get(body, "hyperparameters");
    if (ds && !json_is_string(ds))
        return srv_error(req, 400, "invalid_parameter", "dataset: must be a dataset's id or name (a string)"), -1;
    if (base && !json_is_string(base))
        return srv_error(req, 400, "invalid_parameter", "base_model: a model name is required"), -1;
    if (name && (!json_is_string(name) || json_string_length(name) > 200))
        return srv_error(req, 400, "invalid_parameter", "name: must be a string of at most 200 bytes"), -1;
    *rq = (svc_job_request){.dataset = json_string_value(ds), .base_model = json_string_value(base),
                            .name = json_string_value(name) && *json_string_value(name) ? json_string_value(name) : NULL,
                            .hyperparameters = hp};
    return 0;
}

/* Creates the job, or with ?dry_run=true only resolves what it would run. */
static int answer_created(api *a, srv_req *req, const svc_job_request *rq, const svc_upload *u,
                          int dry)
{
    store_job *j = NULL;
    svc_err e;
    if (dry) {
        json_t *hp = NULL;
        if (svc_job_resolve(a->svc, rq, u, &hp, &e)) return api_fail(req, &e);
        return srv_json(req, 200, json_pack("{s:b, s:o}", "dry_run", 1, "hyperparameters", hp));
    }
    if (svc_job_create(a->svc, rq, u, &j, &e)) return api_fail(req, &e);
    int rc = srv_json(req, 201, api_job_json(j));
    store_job_free(j);
    return rc;
}

/* Upload and start in one request: the archive in the upload part ("file", or "dataset" as
 * before), the job in "params". */
static int post_job_multipart(api *a, srv_req *req, int dry)
{
    const srv_part *f = api_upload_part(req), *p = srv_part_get(req, "params");
    if (!f)
        return srv_error(req, 400, "invalid_parameter", "file: an upload part is required "
                         "(curl -F file=@pets.tgz -F 'params={...}'); for a stored dataset send JSON");
    json_error_t je;
    json_t *body = p && p->data ? json_loads(p->data, 0, &je) : json_object();
    svc_job_request rq;
    int rc = 0;
    if (!json_is_object(body)) {
        rc = srv_error(req, 400, "invalid_json", "params: not a JSON object");
    } else if (json_object_get(body, "dataset")) {
        rc = srv_error(req, 400, "invalid_parameter", "params.dataset: the upload is the dataset; leave it out");
    } else if (!parse_request(req, body, &rq)) {
        svc_upload u = {.path = f->path, .name = f->filename, .bytes = srv_body_size(req),
                        .npz = api_upload_is_npz(f->content_type, f->filename, NULL)};
        srv_take_file(req, f->path);
        rc = answer_created(a, req, &rq, &u, dry);
    }
    json_decref(body);
    return rc;
}

static int post_job(srv_req *req, void *ud)
{
    api *a = ud;
    json_t *body = NULL;
    char err[512];
    svc_job_request rq;
    int dry = 0;
    if (api_query_bool(req, "dry_run", &dry)) return 0;
    if (srv_body_kind(req) == SRV_MULTIPART) return post_job_multipart(a, req, dry);
    if (srv_body_json(req, &body, err, sizeof err) || !json_is_object(body)) {
        json_decref(body);
        return srv_error(req, 400, "invalid_json", "the body must be a JSON object: %s", err);
    }
    int rc = parse_request(req, body, &rq) ? 0 : answer_created(a, req, &rq, NULL, dry);
    json_decref(body);
    return rc;
}

static int answer_job(srv_req *req, store_job *j)
{
    int rc = srv_json(req, 200, api_job_json(j));
    store_job_free(j);
    return rc;
}

static int get_job(srv_req *req, void *ud)
{
    api *a = ud;
    store_job *j = NULL;
    svc_err e;
    if (svc_job_get(a->svc, srv_param(req, "id"), &j, &e)) return api_fail(req, &e);
    return answer_job(req, j);
}

static int list_jobs(srv_req *req, void *ud)
{
    api *a = ud;
    long limit;
    store_jobs l = {0};
    svc_err e;
    if (api_query_int(req, "limit", 1, STORE_LIST_MAX, 50, &limit)) return 0;
    if (svc_job_list(a->svc, srv_query(req, "status"), srv_query(req, "after"), (int)limit, &l, &e))
        return api_fail(req, &e);
    json_t *arr = json_array();
    for (size_t i = 0; i < l.n; i++) json_array_append_new(arr, api_job_json(&l.v[i]));
    json_t *next = l.more && l.n ? json_string(l.v[l.n - 1].id) : json_null();
    store_jobs_free(&l);
    return srv_json(req, 200, json_pack("{s:o, s:o}", "jobs", arr, "next_after", next));
}

static int cancel_job(srv_req *req, void *ud)
{
    api *a = ud;
    store_job *j = NULL;
    svc_err e;
    if (svc_job_cancel(a->svc, srv_param(req, "id"), &j, &e)) return api_fail(req, &e);
    return answer_job(req, j);
}

/* A page of events as JSON; with follow=true (or Accept: text/event-stream) a live stream
 * (api/follow.c). */
static int job_events(srv_req *req, void *ud)
{
    api *a = ud;
    long after, limit;
    store_events l = {0};
    svc_err e;
    int follow = api_wants_stream(req);
    if (follow < 0) return 0;
    if (follow) return api_follow_events(a, req);
    if (api_query_int(req, "after", 0, INT64_MAX / 2, 0, &after) ||
        api_query_int(req, "limit", 1, STORE_LIST_MAX, 100, &limit))
        return 0;
    if (svc_job_events(a->svc, srv_param(req, "id"), after, (int)limit, &l, &e))
        return api_fail(req, &e);
    json_t *arr = json_array();
    for (size_t i = 0; i < l.n; i++) json_array_append_new(arr, api_event_json(&l.v[i]));
    int more = l.more;
    store_events_free(&l);
    return srv_json(req, 200, json_pack("{s:o, s:b}", "events", arr, "more", more));
}

static int job_checkpoints(srv_req *req, void *ud)
{
    api *a = ud;
    ft_checkpoint *c = NULL;
    size_t n = 0;
    svc_err e;
    if (svc_job_checkpoints(a->svc, srv_param(req, "id"), &c, &n, &e)) return api_fail(req, &e);
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) json_array_append_new(arr, api_checkpoint_json(&c[i]));
    free(c);
    return srv_json(req, 200, json_pack("{s:o}", "checkpoints", arr));
}

static int job_metrics(srv_req *req, void *ud)
{
    api *a = ud;
    json_t *m = NULL;
    svc_err e;
    if (svc_job_metrics(a->svc, srv_param(req, "id"), &m, &e)) return api_fail(req, &e);
    return srv_json(req, 200, m);
}

static int delete_job(srv_req *req, void *ud)
{
    api *a = ud;
    svc_err e;
    const char *id = srv_param(req, "id");
    if (svc_job_delete(a->svc, id, &e)) return api_fail(req, &e);
    return srv_json(req, 200, json_pack("{s:s, s:b}", "id", id, "deleted", 1));
}

int api_routes_jobs(api *a, srv *s)
{
    static const char *const list_q[] = {"status", "limit", "after", NULL};
    static const char *const events_q[] = {"after", "limit", "follow", NULL};
    static const char *const create_q[] = {"dry_run", NULL};
    return api_route(a, s, "POST", "/v1/jobs", post_job, SRV_BODY_AUTO, create_q) ||
           api_route(a, s, "GET", "/v1/jobs", list_jobs, SRV_BODY_NONE, list_q) ||
           api_route(a, s, "GET", "/v1/jobs/{id}", get_job, SRV_BODY_NONE, NULL) ||
           api_route(a, s, "DELETE", "/v1/jobs/{id}", delete_job, SRV_BODY_NONE, NULL) ||
           api_route(a, s, "POST", "/v1/jobs/{id}/cancel", cancel_job, SRV_BODY_NONE, NULL) ||
           api_route(a, s, "GET", "/v1/jobs/{id}/events", job_events, SRV_BODY_NONE, events_q) ||
           api_route(a, s, "GET", "/v1/jobs/{id}/checkpoints", job_checkpoints, SRV_BODY_NONE, NULL) ||
           api_route(a, s, "GET", "/v1/jobs/{id}/metrics", job_metrics, SRV_BODY_NONE, NULL);
}
