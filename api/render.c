/* The wire format: every JSON shape the API answers with, in one place (api/openapi.yaml
 * documents them). */
#include <math.h>

#include "api/api_int.h"

json_t *api_time(int64_t ms)
{
    char buf[32];
    return ms ? json_string(store_rfc3339(ms, buf)) : json_null();
}

static json_t *num_or_null(double v) { return isnan(v) ? json_null() : json_real(v); }

/* A stored JSON document as an object to add fields to; {} when absent or not an object. */
static json_t *object_of(const char *text)
{
    json_t *o = text ? json_loads(text, 0, NULL) : NULL;
    if (json_is_object(o)) return o;
    json_decref(o);
    return json_object();
}

json_t *api_job_json(const store_job *j)
{
    json_t *hp = j->resolved_json ? json_loads(j->resolved_json, 0, NULL) : NULL;
    json_t *req = j->params_json ? json_loads(j->params_json, 0, NULL) : NULL;
    double frac = j->total_steps > 0 ? (double)j->step / (double)j->total_steps : 0;
    json_t *eta = json_null(), *eta_s = json_null();
    if (j->status == STORE_RUNNING && !isnan(j->images_per_sec) && j->images_per_sec > 0 && hp) {
        double batch = (double)json_integer_value(json_object_get(hp, "batch"));
        double left = (double)(j->total_steps - j->step) * batch / j->images_per_sec;
        eta = api_time(store_now_ms() + (int64_t)(left * 1000));
        eta_s = json_real(round(left));
    }
    json_t *err = j->error_code ? json_pack("{s:s, s:s}", "code", j->error_code, "message",
                                            j->error_message ? j->error_message : "")
                                : json_null();
    /* what a time budget predicted, beside what the run took */
    json_t *plan = json_object_get(hp, "plan");
    json_t *duration = json_pack("{s:o, s:o}", "predicted_seconds",
                                 json_is_number(json_object_get(plan, "predicted_seconds"))
                                     ? json_incref(json_object_get(plan, "predicted_seconds")) : json_null(),
                                 "actual_seconds", j->finished_at && j->started_at
                                     ? json_real((double)(j->finished_at - j->started_at) / 1e3) : json_null());
    /* a running job whose cancel was accepted is shown as it will be */
    int cancelling = j->status == STORE_RUNNING && j->cancel_requested;
    /* every job is created with a dataset: none means it was deleted since */
    return json_pack(
        "{s:s, s:s, s:s, s:b, s:s, s:s?, s:b, s:o, s:o, s:{s:I, s:I, s:f, s:o, s:o, s:o}, "
        "s:{s:o, s:o, s:o, s:o}, s:s?, s:o, s:o, s:o, s:o, s:o}",
        "id", j->id, "name", j->name ? j->name : j->id, "status",
        cancelling ? "cancelling" : store_status_name(j->status), "cancel_requested",
        j->cancel_requested && !store_status_terminal(j->status),
        "base_model", j->base_model ? j->base_model : "", "dataset", j->dataset_id,
        "dataset_deleted", !j->dataset_id,
        "hyperparameters", hp ? hp : json_object(), "requested", req ? req : json_object(),
        "progress", "step", (json_int_t)j->step, "total_steps", (json_int_t)j->total_steps,
        "fraction", frac, "images_per_sec", num_or_null(j->images_per_sec), "estimated_finish", eta,
        "eta_seconds", eta_s,
        "metrics", "train_loss", num_or_null(j->train_loss), "val_top1", num_or_null(j->val_top1),
        "val_top5", num_or_null(j->val_top5), "val_loss", num_or_null(j->val_loss),
        "model", j->model_id, "error", err, "created_at", api_time(j->created_at), "started_at",
        api_time(j->started_at), "finished_at", api_time(j->finished_at), "duration", duration);
}

json_t *api_dataset_json(const store_dataset *d)
{
    json_t *o = object_of(d->summary_json);
    json_object_set_new(o, "id", json_string(d->id));
    json_object_set_new(o, "name", json_string(d->name ? d->name : d->id));
    json_object_set_new(o, "status", json_string(d->status ? d->status : "ready"));
    json_object_set_new(o, "bytes", json_integer(d->bytes));
    json_object_set_new(o, "created_at", api_time(d->created_at));
    return o;
}

json_t *api_model_json(const svc_model *m)
{
    return json_pack("{s:s, s:s, s:s, s:o?, s:o?, s:O?, s:i, s:s?, s:b, s:I, s:o, s:s?, s:o*}", "id",
                     m->id, "name", m->name, "kind", m->kind, "architecture",
                     m->architecture[0] ? json_string(m->architecture) : NULL, "num_classes",
                     m->num_classes >= 0 ? json_integer(m->num_classes) : NULL, "classes",
                     m->classes, "resolution", m->resolution, "job",
                     m->job_id[0] ? m->job_id : NULL, "loaded", m->loaded, "bytes",
                     (json_int_t)m->bytes, "created_at", api_time(m->created_at), "note",
                     m->note[0] ? m->note : NULL, "error", m->error[0] ? json_string(m->error) : NULL);
}

json_t *api_event_json(const store_event *e)
{
    json_t *o = object_of(e->data_json);
    json_object_set_new(o, "seq", json_integer(e->seq));
    json_object_set_new(o, "time", api_time(e->time));
    json_object_set_new(o, "type", json_string(e->type));
    json_object_set_new(o, "step", e->step >= 0 ? json_integer(e->step) : json_null());
    return o;
}

json_t *api_checkpoint_json(const ft_checkpoint *c)
{
    return json_pack("{s:I, s:I, s:o}", "step", (json_int_t)c->step, "bytes", (json_int_t)c->bytes,
                     "created_at", api_time(c->mtime_ms));
}

json_t *api_predictions_json(const svc_result *r)
{
    json_t *arr = json_array();
    for (int i = 0; i < r->npred; i++)
        json_array_append_new(arr, json_pack("{s:s, s:i, s:f}", "label", r->pred[i].label, "index",
                                             r->pred[i].index, "score", (double)r->pred[i].score));
    return arr;
}

json_t *api_classification_json(const svc_classification *c, const svc_image *img,
                                json_t *timing)
{
    if (c->n == 1)
        return json_pack("{s:s, s:o, s:o}", "model", c->model_id, "predictions",
                         api_predictions_json(&c->images[0]), "timing_ms", timing);
    json_t *res = json_array();
    for (int i = 0; i < c->n; i++) {
        const svc_result *r = &c->images[i];
        json_array_append_new(res, r->code ? json_pack("{s:i, s:s?, s:{s:s, s:s}}", "image", i, "filename",
                                                       img[i].filename, "error", "code", r->reason,
                                                       "message", r->error)
                                           : json_pack("{s:i, s:s?, s:o}", "image", i, "filename",
                                                       img[i].filename, "predictions",
                                                       api_predictions_json(r)));
    }
    return json_pack("{s:s, s:o, s:o}", "model", c->model_id, "results", res, "timing_ms", timing);
}
