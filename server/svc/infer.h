/* Inference for the server: loaded models in an LRU cache bounded by their weight bytes, one
 * queue per model, and one inference thread (its own OpenMP budget) that batches the waiting
 * images of a model into one forward pass. inf owns every inf_model (callers hold references
 * from inf_acquire until inf_release); inputs, outputs and strings stay the caller's. */
#ifndef BIT_INFER_H
#define BIT_INFER_H

#include <stdint.h>
#include <stdio.h>

#include "arch.h"
#include "labels.h"
#include "net.h"

enum {
    INF_EBUSY = -30, /* the queue is full: answer 503 with Retry-After */
};

/* Zero fields mean the default. */
typedef struct inf_config {
    int threads;          /* OpenMP threads of the inference thread; default 1 */
    int max_batch;        /* images per forward pass, 1..64; default 8 */
    int batch_delay_ms;   /* how long the oldest waiting image may wait for images still being
                           * decoded (holders of the model); default 5, negative: never */
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

/* 1 when the file at path is loaded (for listings). */
int inf_loaded(inf *x, const char *path);
/* Drops a deleted model from the cache; it is freed once its last reference goes. */
void inf_forget(inf *x, const char *path);
/* Prometheus text: queue and compute time, batch sizes, cache bytes, models loaded. */
int inf_metrics_text(inf *x, FILE *f);

#endif
