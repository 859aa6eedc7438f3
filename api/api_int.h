/* Internal to api/: the api struct, the error mapping and the JSON shapes the handler files
 * share (render.c owns the shapes; every handler answers through them). */
#ifndef BIT_API_INT_H
#define BIT_API_INT_H

#include <jansson.h>

#include "api/api.h"

typedef struct api_bound api_bound;

struct api {
    api_config cfg;
    svc *svc;
    srv *srv;         /* for /metrics and the route index */
    api_bound *bound; /* every registered route's handler (owned) */
};

/* Registers a handler: srv_route plus the query parameters the route takes (NULL-terminated;
 * NULL for none); any other parameter is refused with 400 before the handler runs. fn gets
 * the api as its ud. */
int api_route(api *a, srv *s, const char *method, const char *pattern, srv_handler fn,
              unsigned flags, const char *const *query);

/* Answers a service error with its HTTP status and JSON error ({"error": {code, message}}),
 * Retry-After for SVC_EBUSY. */
int api_fail(srv_req *req, const svc_err *e);
/* The same for a parked request (its completion call: p is released). */
int api_park_fail(srv_park *p, const svc_err *e);
/* An integer query parameter in [lo, hi] (dflt when absent); -1 after answering 400. */
int api_query_int(srv_req *req, const char *name, long lo, long hi, long dflt, long *out);

/* A boolean query parameter: true/1, false/0 (absent: 0); -1 after answering 400. */
int api_query_bool(srv_req *req, const char *name, int *out);
/* Whether an events request asks for a stream: follow=true, or no follow and an Accept of
 * text/event-stream; -1 after answering 400. */
int api_wants_stream(srv_req *req);
/* Whether a comma-separated header (Accept, ...) names token, parameters aside. */
int api_header_names(srv_req *req, const char *header, const char *token);
/* follow.c: the job's events as Server-Sent Events, live, until the job ends. */
int api_follow_events(api *a, srv_req *req);
/* A multipart request's uploaded dataset: the first file part named "file" (both upload
 * routes), else "dataset" (POST /v1/jobs's older name); NULL when there is none. */
const srv_part *api_upload_part(srv_req *req);
/* An upload is a tensor .npz (not an archive): ?format=npz, its type, or its file name. */
int api_upload_is_npz(const char *ctype, const char *filename, const char *format);

/* render.c: the wire format. Each returns a new JSON value (NULL only out of memory). */
json_t *api_time(int64_t ms); /* "2024-05-01T12:34:56.789Z", or JSON null for 0 */
json_t *api_job_json(const store_job *j);
json_t *api_dataset_json(const store_dataset *d);
json_t *api_model_json(const svc_model *m);
json_t *api_event_json(const store_event *e);
json_t *api_checkpoint_json(const ft_checkpoint *c);
/* One image's predictions, or the whole answer (predictions for one image, results[] for
 * several: each its predictions, or an error for an image that could not be classified),
 * with the timings given. */
json_t *api_predictions_json(const svc_result *r);
json_t *api_classification_json(const svc_classification *c, const svc_image *img,
                                json_t *timing);

int api_routes_datasets(api *a, srv *s);
int api_routes_jobs(api *a, srv *s);
int api_routes_ops(api *a, srv *s);
int api_routes_models(api *a, srv *s);
/* web.c: GET /ui/{file}, and the page itself, which GET / serves to a browser */
int api_routes_web(api *a, srv *s);
int api_web_page(srv_req *req);
/* GET /v1 (the routes), GET / (the page, or a pointer to /v1) and a trailing-slash twin of
 * every route. */
int api_routes_index(api *a, srv *s);

#endif
