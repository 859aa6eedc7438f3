/* /v1/models: list, get, delete, download, and classification. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api/api_int.h"

static int list_models(srv_req *req, void *ud)
{
    api *a = ud;
    svc_models l = {0};
    svc_err e;
    if (svc_model_list(a->svc, &l, &e)) return api_fail(req, &e);
    json_t *arr = json_array();
    for (size_t i = 0; i < l.n; i++) json_array_append_new(arr, api_model_json(&l.v[i]));
    svc_models_free(&l);
    return srv_json(req, 200, json_pack("{s:o}", "models", arr));
}

static int get_model(srv_req *req, void *ud)
{
    api *a = ud;
    svc_model m;
    svc_err e;
    if (svc_model_get(a->svc, srv_param(req, "id"), &m, &e)) return api_fail(req, &e);
    int rc = srv_json(req, 200, api_model_json(&m));
    svc_model_clear(&m);
    return rc;
}

static int download_model(srv_req *req, void *ud)
{
    api *a = ud;
    svc_model m;
    svc_err e;
    char safe[256], disp[400];
    if (svc_model_get(a->svc, srv_param(req, "id"), &m, &e)) return api_fail(req, &e);
    /* the client's file name is the model's name reduced to safe characters */
    snprintf(safe, sizeof safe, "%s", m.name);
    for (char *c = safe; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
              *c == '.' || *c == '_' || *c == '-'))
            *c = '_';
    snprintf(disp, sizeof disp, "attachment; filename=\"%s.npz\"", safe);
    srv_set_header(req, "Content-Disposition", disp);
    int rc = srv_file(req, 200, m.file, "application/octet-stream");
    svc_model_clear(&m);
    return rc;
}

static int delete_model(srv_req *req, void *ud)
{
    api *a = ud;
    svc_model m;
    svc_err e;
    if (svc_model_delete(a->svc, srv_param(req, "id"), &m, &e)) return api_fail(req, &e);
    return srv_json(req, 200, json_pack("{s:s, s:b}", "id", m.id, "deleted", 1));
}

/* ---------------------------------------------------------------- classify */

/* Content types a raw body may have; the bytes decide between JPEG and PNG. */
static int image_type_ok(const char *ctype)
{
    static const char *ok[] = {"image/jpeg", "image/png", "application/octet-stream",
                               /* what curl --data-binary sends unless told */
                               "application/x-www-form-urlencoded"};
    if (!ctype) return 1;
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        if (!strncasecmp(ctype, ok[i], strlen(ok[i]))) return 1;
    return 0;
}

/* The images of the request: the body, or every multipart field named "image". Returns how
 * many, or -1 after answering. */
static int collect(srv_req *req, svc_image *img)
{
    int n = 0;
    if (srv_body_kind(req) == SRV_MULTIPART) {
        size_t np;
        const srv_part *p = srv_parts(req, &np);
        for (size_t i = 0; i < np && n < SVC_MAX_IMAGES; i++)
            if (!strcmp(p[i].name, "image"))
                img[n++] = (svc_image){p[i].data, p[i].path, p[i].size, p[i].content_type, p[i].filename};
        if (!n) return srv_error(req, 400, "invalid_parameter", "image: a multipart field 'image' is required"), -1;
        return n;
    }
    const char *ctype = srv_header(req, "Content-Type");
    if (!image_type_ok(ctype))
        return srv_error(req, 415, "unsupported_media_type", "send image/jpeg, image/png, "
                         "application/octet-stream or multipart/form-data, not %s", ctype), -1;
    if (srv_body_size(req) == 0) return srv_error(req, 400, "invalid_parameter", "the body is empty: send an image"), -1;
    size_t len = 0;
    const char *data = srv_body(req, &len);
    img[0] = (svc_image){data, srv_body_path(req), len, ctype, NULL};
    return 1;
}

/* One image that cannot be classified fails its request; of several, only when none can be
 * (each bad one otherwise gets an error in its result). -1 when there is a 200 to answer. */
static int answer_image_error(srv_park *p, const svc_classification *c, const svc_image *img)
{
    int bad = 0, first = -1;
    for (int i = 0; i < c->n; i++)
        if (c->images[i].code && !bad++) first = i;
    if (!bad || bad < c->n) return -1;
    const svc_result *r = &c->images[first];
    svc_err e = {.code = r->code};
    snprintf(e.reason, sizeof e.reason, "%s", r->reason);
    if (c->n == 1) snprintf(e.msg, sizeof e.msg, "%s", r->error);
    else snprintf(e.msg, sizeof e.msg, "none of the %d images could be classified; image %d%s%s%s: %s",
                  c->n, first, img[first].filename ? " (" : "", img[first].filename ? img[first].filename : "",
                  img[first].filename ? ")" : "", r->error);
    api_park_fail(p, &e);
    return 0;
}

/* A parked classify request: it waits in the service's queues without an HTTP thread, so
 * the batcher sees every waiting client. refs: the handler's and the service's (its done
 * callback), the last one frees it. */
typedef struct cls_wait {
    svc *svc;
    srv_park *park;
    svc_call *call;
    svc_image img[SVC_MAX_IMAGES]; /* into the parked request's body, valid until completion */
    double t0;
    int refs, gone;
    pthread_mutex_t mu;
} cls_wait;

static void cls_put(cls_wait *w)
{
    pthread_mutex_lock(&w->mu);
    int last = !--w->refs;
    pthread_mutex_unlock(&w->mu);
    if (!last) return;
    pthread_mutex_destroy(&w->mu);
    free(w);
}

/* The client hung up or the park timed out: its images leave the inference queue. The
 * completion in cls_done waits for this to return, so w and its call are still alive (the
 * service frees the call only after done has returned). */
static void cls_gone(void *ud)
{
    cls_wait *w = ud;
    pthread_mutex_lock(&w->mu);
    w->gone = 1;
    svc_call *call = w->call;
    pthread_mutex_unlock(&w->mu);
    if (call) svc_classify_cancel(w->svc, call);
}

static void cls_done(void *ud, int rc, svc_classification *c, const svc_err *e)
{
    cls_wait *w = ud;
    if (rc) {
        api_park_fail(w->park, e);
    } else if (answer_image_error(w->park, c, w->img) < 0) {
        json_t *timing = json_pack("{s:f, s:f, s:f, s:f, s:f}", "load", c->load_ms, "decode",
                                   c->decode_ms, "queue", c->queue_ms, "infer", c->infer_ms, "total",
                                   eng_now_ms() - w->t0);
        srv_park_json(w->park, 200, api_classification_json(c, w->img, timing));
    }
    if (!rc) svc_classification_free(c);
    cls_put(w);
}

static int classify(srv_req *req, void *ud)
{
    api *a = ud;
    long topk;
    svc_err e;
    if (api_query_int(req, "top_k", 1, 1000, 5, &topk)) return 0;
    cls_wait *w = calloc(1, sizeof *w);
    if (!w) return srv_error(req, 500, "internal", "out of memory");
    w->t0 = eng_now_ms(), w->svc = a->svc, w->refs = 2;
    pthread_mutex_init(&w->mu, NULL);
    int n = collect(req, w->img);
    const char *model = srv_param(req, "id");
    if (n < 0 || !(w->park = srv_park_open(req, 0, cls_gone, w))) {
        pthread_mutex_destroy(&w->mu);
        free(w);
        return 0;
    }
    svc_call *call = NULL;
    if (svc_classify_submit(a->svc, model, w->img, n, (int)topk, cls_done, w, &call, &e)) {
        api_park_fail(w->park, &e); /* waits for a gone already running */
        w->refs = 1;
        cls_put(w);
        return 0;
    }
    pthread_mutex_lock(&w->mu);
    w->call = call;
    int gone = w->gone;
    pthread_mutex_unlock(&w->mu);
    if (gone) svc_classify_cancel(a->svc, call); /* hung up before the call existed */
    svc_call_release(call);
    cls_put(w);
    return 0;
}

int api_routes_models(api *a, srv *s)
{
    static const char *const classify_q[] = {"top_k", NULL};
    return api_route(a, s, "GET", "/v1/models", list_models, SRV_BODY_NONE, NULL) ||
           api_route(a, s, "GET", "/v1/models/{id}", get_model, SRV_BODY_NONE, NULL) ||
           api_route(a, s, "DELETE", "/v1/models/{id}", delete_model, SRV_BODY_NONE, NULL) ||
           api_route(a, s, "GET", "/v1/models/{id}/download", download_model, SRV_BODY_NONE, NULL) ||
           api_route(a, s, "POST", "/v1/models/{id}/classify", classify, SRV_BODY_AUTO, classify_q);
}
