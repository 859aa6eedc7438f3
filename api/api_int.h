/* Internal to api/: the api struct and helpers the handler files share. */
#ifndef BIT_API_INT_H
#define BIT_API_INT_H

#include <jansson.h>

#include "api/api.h"

struct api {
    api_config cfg;
    srv *srv; /* for /metrics */
};

/* Answers a store/engine error code with the matching HTTP status and JSON error. */
int api_fail(srv_req *req, int code, const char *msg);
/* "2024-05-01T12:34:56.789Z", or JSON null for 0. */
json_t *api_time(int64_t ms);
json_t *api_job_json(const api *a, const store_job *j);
json_t *api_dataset_json(const store_dataset *d);
/* An integer query parameter in [lo, hi] (dflt when absent); -1 after answering 400. */
int api_query_int(srv_req *req, const char *name, long lo, long hi, long dflt, long *out);

/* Imports an uploaded file (archive, or tensor .npz when npz is set) as a dataset: unpacks and
 * validates it into <data_dir>/datasets/<id>/, records it, fills id. On failure nothing is left
 * on disk; *status receives the HTTP status to answer (413, 422, 500). */
int api_dataset_import(api *a, srv_req *req, const char *tmp_path, int npz, const char *name,
                       char id[STORE_ID_MAX], int *status, char *err, size_t errlen);

int api_routes_datasets(api *a, srv *s);
int api_routes_jobs(api *a, srv *s);
int api_routes_ops(api *a, srv *s);
int api_routes_models(api *a, srv *s);

/* 1 when the models directory is readable and every NAME.npz in it has a BiT checkpoint's
 * arrays (headers only); else 0 with the first problem in err. *count: files checked. */
int api_models_ready(api *a, int *count, char *err, size_t errlen);

#endif
