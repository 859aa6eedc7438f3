/* The HTTP API under /v1 (datasets, jobs, models and classification) and the operational
 * endpoints, as handlers registered on an srv. An api borrows the store, worker, inference
 * module and strings of its config; responses are JSON built with jansson. */
#ifndef BIT_API_H
#define BIT_API_H

#include "arc.h"
#include "image.h"
#include "server/infer.h"
#include "server/srv.h"
#include "server/worker.h"
#include "storage/store.h"

typedef struct api_config {
    store *st;
    wrk *worker;
    const char *data_dir, *models_dir;
    int max_queued;    /* queued jobs before POST /v1/jobs answers 503; default 100 */
    arc_limits arc;    /* limits of uploaded archives */
    img_limits img;    /* limits of images in datasets and classify requests */
    inf *infer;        /* loads and runs the models of classify requests */
    int base_resolution; /* eval size of base models without a NAME.json; default 128 */
} api_config;

typedef struct api api;

int api_new(const api_config *cfg, api **out, char *err, size_t errlen);
void api_free(api *a);
/* Registers every route on s (before srv_start). */
int api_register(api *a, srv *s, char *err, size_t errlen);

#endif
