/* Inference for the server: loaded models in an LRU cache bounded by their weight bytes, one
 * queue per model, and one inference thread that batches the waiting images of a model into
 * one forward pass, each pass under a grant of the core budget (cores.h): every free core
 * while no job trains. inf owns every inf_model (callers hold references from inf_acquire
 * until inf_release) and every inf_job; inputs, outputs and strings stay the caller's. */
#ifndef BIT_INFER_H
#define BIT_INFER_H

#include <stdint.h>
#include <stdio.h>

#include "arch.h"
#include "server/svc/cores.h"
#include "labels.h"
#include "net.h"

enum {
    INF_EBUSY = -30, /* the queue is full: answer 503 with Retry-After */
};

/* Zero fields mean the default. */
typedef struct inf_config {
    cores *cores;         /* the core budget (borrowed); NULL: inf keeps one of its own */
    int threads;          /* most OpenMP threads of a pass; 0: every core the budget grants */
    int max_batch;        /* images per forward pass, 1..64; default 8 */
    int batch_delay_ms;   /* how long the oldest waiting image may wait for images still being
                           * decoded (holders of the model) while fewer than max_batch wait;
                           * default 5, negative: never */
    int max_queue;        /* waiting images (all models) before INF_EBUSY; default 64 */
    uint64_t cache_bytes; /* weights kept loaded (parameters x 4 bytes); default 2 GiB */
    eng_precision precision; /* of every loaded net; default f32 (auto resolves per CPU) */
} inf_config;

typedef struct inf inf;
typedef struct inf_model inf_model;

int inf_new(const inf_config *cfg, inf **out, char *err, size_t errlen);
int inf_start(inf *x, char *err, size_t errlen);
/* Finishes the batch in flight, fails every waiting request, joins the thread. Idempotent. */
void inf_stop(inf *x);
void inf_free(inf *x);

/* A model is its checkpoint file: a path whose size or mtime changed is a new model. */
typedef struct inf_spec {
    const char *path;        /* official-schema .npz */
    const char *labels_path; /* NULL, or a labels.txt that may be missing */
} inf_spec;

/* A reference to the loaded model, loading it first (*loaded_ms > 0 then) while evicting least
 * recently used unreferenced models over the budget. Callers asking for a model that is being
 * loaded wait for that load. Acquire before decoding: the inference thread holds a batch open
 * (up to batch_delay_ms) for holders that have not submitted yet. ENG_ENOTFOUND when the file
 * is missing; load errors otherwise. */
int inf_acquire(inf *x, const inf_spec *spec, inf_model **out, double *loaded_ms, char *err,
                size_t errlen);
void inf_release(inf *x, inf_model *m);
int inf_model_classes(const inf_model *m);
const eng_labels *inf_model_labels(const inf_model *m); /* may be NULL */

typedef struct inf_timing {
    double queue_ms; /* submitted until its first image entered a forward pass */
    double infer_ms; /* from then until its last image came out */
} inf_timing;

/* logits[n * classes] for input [n, 3, res, res] (normalised), computed in batches with other
 * requests' images of the same model. Blocks until done. INF_EBUSY (and *retry_s, seconds)
 * when the queue has no room for n images; ENG_ELIMIT when n exceeds the queue itself. */
int inf_classify(inf *x, inf_model *m, const float *input, int n, int res, float *logits,
                 inf_timing *t, int *retry_s, char *err, size_t errlen);

/* The same without blocking: queues the images and returns; done(ud, rc, timing, err) runs
 * exactly once, on the inference thread (or in inf_cancel's caller), when the last image is
 * out (rc 0), failed, or was cancelled (INF_ECANCELED). input and logits must stay valid
 * until then. *id names the request for inf_cancel. */
typedef void (*inf_done_fn)(void *ud, int rc, const inf_timing *t, const char *err);
enum { INF_ECANCELED = -31 };
int inf_submit(inf *x, inf_model *m, const float *input, int n, int res, float *logits,
               inf_done_fn done, void *ud, uint64_t *id, int *retry_s, char *err,
               size_t errlen);
/* Takes the request's images that are not in a forward pass yet out of the queue (its client
 * is gone); its done runs once those in flight are out, here if none is. A request that is
 * no longer queued (all its images taken, or over) is left alone: any time is safe. */
void inf_cancel(inf *x, uint64_t id);

/* Requests on their way that hold no model yet (queued for decoding): d is +1 when one comes,
 * -1 when it is submitted or ends. While any is on its way, a shallow queue waits up to
 * batch_delay_ms for it, as for holders of the model. */
void inf_expect(inf *x, int d);

/* 1 when the file at path is loaded (for listings). */
int inf_loaded(inf *x, const char *path);
/* Drops a deleted model from the cache; it is freed once its last reference goes. */
void inf_forget(inf *x, const char *path);
typedef struct inf_stats {
    unsigned long long images, batches, cancelled;
} inf_stats;
void inf_get_stats(inf *x, inf_stats *st);
/* Prometheus text: queue and compute time, batch sizes (and their mean), cache bytes, models
 * loaded. */
int inf_metrics_text(inf *x, FILE *f);

#endif
