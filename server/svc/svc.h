/* The service layer: the daemon's business between a front end (the HTTP API, `bit serve`)
 * and the engine. An svc owns the store, the model registry, the job worker and the
 * inference runtime, and knows nothing of HTTP. Every function returns 0 or a negative code
 * and fills an svc_err; what it hands out is the caller's (free with the matching *_free),
 * and strings passed in are borrowed. */
#ifndef BIT_SVC_H
#define BIT_SVC_H

#include <jansson.h>
#include <stdio.h>

#include "arc.h"
#include "image.h"
#include "rundir.h"
#include "server/svc/infer.h"
#include "storage/store.h"

/* Codes beyond ENG_E* and STORE_E*. */
enum {
    SVC_EBUSY = -40, /* full (job queue, inference queue): try again after retry_after_s */
    SVC_EREF = -41,  /* the request names something that does not exist or cannot be used */
};

/* Why a call failed: code, a short machine word for clients where the code alone is not
 * enough ("invalid_base_model"), and a sentence for the client. */
typedef struct svc_err {
    int code;
    char reason[48];
    int retry_after_s;
    char msg[1024];
} svc_err;

typedef struct svc_config {
    const char *data_dir;   /* bit.db, tmp/, datasets/, jobs/ (server/svc/paths.h) */
    const char *models_dir; /* base models NAME.npz [+ NAME.labels.txt, NAME.json] */
    int worker;             /* 1: run jobs (a worker thread); 0: an API-only service */
    int cores;              /* compute threads inference and training share; 0: online CPUs */
    int train_threads;      /* a job's OpenMP team; 0: cores - infer_share */
    int infer_share;        /* cores inference keeps while a job trains; 0: cores / 2;
                               negative: none (it waits for training to yield) */
    int train_yield_ms;     /* training yields while a classify request waited this long;
                               0: 50, negative: never */
    int decode_threads;     /* the classify decode pool; 0: min(cores, 4) */
    int loader_threads;     /* image decoding threads of a running job; default 1 */
    int max_queued;         /* queued jobs before SVC_EBUSY; default 100 */
    int base_resolution;    /* eval size of base models without NAME.json; default 128 */
    arc_limits arc;         /* uploaded archives */
    img_limits img;         /* images in datasets and classify requests */
    inf_config infer;       /* the inference runtime */
    uint64_t memory_budget; /* bytes client requests may hold at once (decodes, imports, a
                               job's training); 0: half of the machine's or cgroup's memory */
    unsigned max_followers; /* live event follows (svc_job_follow); default 64 */
    int max_decode_queue;   /* classify requests waiting for the decode pool before SVC_EBUSY;
                               default 256 */
    FILE *log;              /* JSON lines (start-up, jobs); NULL: stderr */
} svc_config;

typedef struct svc svc;

/* Opens the store (recovering what a crash left: running jobs requeued, interrupted
 * creations failed), makes the data directory's folders. Nothing runs until svc_start. */
int svc_open(const svc_config *cfg, svc **out, char *err, size_t errlen);
int svc_start(svc *s, char *err, size_t errlen); /* the inference and worker threads */
/* Inference first (waiting requests fail), then the worker (its job checkpoints and goes
 * back to the queue). Idempotent; svc_close calls it. */
void svc_stop(svc *s);
void svc_close(svc *s);

/* ---- datasets ---- */

/* An uploaded file. The service takes it: it is renamed into the data directory or removed,
 * whatever happens (the caller must not delete it afterwards). */
typedef struct svc_upload {
    const char *path;
    const char *name; /* NULL: the dataset's id */
    int npz;          /* a tensor .npz, not an archive */
    uint64_t bytes;   /* as received */
} svc_upload;

int svc_dataset_import(svc *s, const svc_upload *u, store_dataset **out, svc_err *e);
/* ref: a dataset's id, or its name when no other dataset has it (names may repeat: a name
 * that several datasets share is STORE_ECONFLICT, reason "ambiguous", listing their ids). */
int svc_dataset_get(svc *s, const char *ref, store_dataset **out, svc_err *e);
int svc_dataset_list(svc *s, store_datasets *out, svc_err *e);
/* The row, then its files; id receives the deleted dataset's id. */
int svc_dataset_delete(svc *s, const char *ref, char id[STORE_ID_MAX], svc_err *e);

/* ---- jobs ---- */

typedef struct svc_job_request {
    const char *dataset;           /* a dataset's id or unique name (none with an upload) */
    const char *base_model;        /* a model reference: name or id */
    const char *name;              /* NULL: the job's id; becomes the model's name */
    const json_t *hyperparameters; /* NULL or an object; absent fields: the HyperRule */
} svc_job_request;

/* Validates the request, resolves the HyperRule against the dataset and creates the job in
 * `queued` in one transaction (its resolved values are what the worker will run). With an
 * upload, the request is checked before the import and a failure leaves no dataset. */
int svc_job_create(svc *s, const svc_job_request *rq, const svc_upload *u, store_job **out,
                   svc_err *e);
int svc_job_get(svc *s, const char *id, store_job **out, svc_err *e);
/* status NULL for all; after NULL or the id of the last job of the previous page. */
int svc_job_list(svc *s, const char *status, const char *after, int limit, store_jobs *out,
                 svc_err *e);
/* A queued job is cancelled at once, a running one stops within a step; *out: the job after. */
int svc_job_cancel(svc *s, const char *id, store_job **out, svc_err *e);
/* A finished job and its run directory (a registered model keeps its files). */
int svc_job_delete(svc *s, const char *id, svc_err *e);
int svc_job_events(svc *s, const char *id, int64_t after, int limit, store_events *out,
                   svc_err *e);
int svc_job_checkpoints(svc *s, const char *id, ft_checkpoint **out, size_t *n, svc_err *e);
/* The final evaluation of a finished run (the run directory's metrics.json, as it is):
 * ENG_ENOTFOUND, reason "no_metrics", while the job has none (not finished, failed, cancelled). */
int svc_job_metrics(svc *s, const char *id, json_t **out, svc_err *e);

/* What rq would run, resolved exactly as svc_job_create would (same checks and errors, the
 * queue's room aside) without creating anything: *resolved (the caller's) is the job's
 * `hyperparameters`. With an upload, the dataset is imported to be measured, then removed. */
int svc_job_resolve(svc *s, const svc_job_request *rq, const svc_upload *u, json_t **resolved,
                    svc_err *e);

/* ---- following a job's events as they happen ----
 *
 * A follow delivers a job's events (seq > after, in order) and then its end, from the
 * service's one follower thread: a listener costs a small record, never a thread. The
 * callbacks run on that thread, one at a time for all follows, so they must be quick. */
typedef struct svc_follow_ops {
    /* One event. Return 0 when it was taken, SVC_FOLLOW_LATER when the reader is behind (the
     * same event is offered again on a later turn, about every 100 ms), anything else to end
     * the follow. */
    int (*event)(void *ud, const store_event *ev);
    /* The last call, exactly once: status is the job's terminal status ("succeeded", "failed",
     * "cancelled") once its terminal status event was taken (or at once when the job had
     * already ended before `after`), NULL when the follow was ended otherwise (event() asked
     * to, svc_follow_cancel, the job deleted, the service stopping). The follow is freed
     * after it returns. */
    void (*end)(void *ud, const char *status);
} svc_follow_ops;
enum { SVC_FOLLOW_LATER = 1 };
typedef struct svc_follow svc_follow;

/* Checks the job exists (ENG_ENOTFOUND) and that there is room (SVC_EBUSY, reason
 * "too_many_followers", past max_followers) and returns a follow that has not started: hand
 * it to the follower thread with svc_follow_start, or discard it with svc_follow_drop (no
 * callback runs). Exactly one of the two must follow. */
int svc_job_follow(svc *s, const char *id, int64_t after, const svc_follow_ops *ops, void *ud,
                   svc_follow **out, svc_err *e);
/* From now on the follower owns f (before svc_start or after svc_stop it ends at once, with
 * end(ud, NULL), on the calling thread). */
void svc_follow_start(svc_follow *f);
void svc_follow_drop(svc_follow *f);
/* Asks f to end soon (end(ud, NULL) on the follower thread). From any thread, never blocks;
 * only until its end callback has begun (f is freed after it). */
void svc_follow_cancel(svc_follow *f);

/* ---- models ---- */

/* A model as clients see it: a base file of the models directory or a fine-tuned model. */
typedef struct svc_model {
    char id[256], name[256];
    const char *kind;       /* "base" or "fine-tuned" (static strings) */
    char architecture[32];  /* "" when unknown */
    int num_classes;        /* -1 when unknown */
    json_t *classes;        /* class names, or NULL */
    int resolution;         /* its evaluation size */
    char job_id[STORE_ID_MAX]; /* fine-tuned: the job that made it */
    int64_t bytes, created_at; /* unix ms */
    int loaded;             /* in the inference cache */
    char error[512];        /* a base file whose headers do not parse: why ("" otherwise) */
    char note[768];         /* what a person should know, e.g. why classes is NULL ("" if nothing) */
    char file[4200];        /* the checkpoint (for downloads); never shown to clients */
} svc_model;
typedef struct svc_models { svc_model *v; size_t n; } svc_models;

void svc_model_clear(svc_model *m);
void svc_models_free(svc_models *l);
/* Base files by name (broken files left out: svc_ready names them), then fine-tuned models,
 * newest first. */
int svc_model_list(svc *s, svc_models *out, svc_err *e);
int svc_model_get(svc *s, const char *ref, svc_model *out, svc_err *e);
/* Fine-tuned models only (STORE_ECONFLICT for base models); its files go too. */
int svc_model_delete(svc *s, const char *ref, svc_model *deleted, svc_err *e);

/* ---- classification ---- */

typedef struct svc_image {
    const char *data, *path; /* bytes in memory, or a file */
    size_t len;
    const char *ctype;       /* as the client declared it, or NULL (the bytes decide) */
    const char *filename;    /* as the client named it, or NULL */
} svc_image;

typedef struct svc_pred {
    int index;
    float score; /* softmax probability */
    char *label; /* the class name, or its index as text */
} svc_pred;

/* One image's answer: predictions, or why it could not be classified (code: ENG_ELIMIT over a
 * limit, ENG_EUNSUPPORTED not JPEG/PNG, ENG_EFORMAT undecodable). */
typedef struct svc_result {
    int code;
    char reason[32], error[256];
    int npred;
    svc_pred *pred;
} svc_result;

typedef struct svc_classification {
    char model_id[256];
    int n;
    svc_result *images;
    double load_ms, decode_ms, queue_ms, infer_ms; /* total_ms is the front end's */
} svc_classification;

#define SVC_MAX_IMAGES 64
/* Classifies n images with a model (loaded on first use), top-k each, batched with other
 * requests. Images that cannot be decoded get their own error; the call fails only when the
 * model or the runtime does (SVC_EBUSY when the inference queue is full). */
int svc_classify(svc *s, const char *model_ref, const svc_image *img, int n, int topk,
                 svc_classification *out, svc_err *e);
void svc_classification_free(svc_classification *c);

/* The same without blocking the caller: checks n, queues the request for the decode pool and
 * returns (SVC_EBUSY when that queue is full). done(ud, rc, c, e) then runs exactly once, on
 * a service thread: rc 0 with *c (the callback's to free with svc_classification_free), or
 * the error in *e (reason "cancelled" after svc_classify_cancel). model_ref is copied; img and
 * the bytes it points at must stay valid until done. */
typedef struct svc_call svc_call;
typedef void (*svc_classify_done)(void *ud, int rc, svc_classification *c, const svc_err *e);
/* out non-NULL: a reference to the request, the caller's to let go with svc_call_release. */
int svc_classify_submit(svc *s, const char *model_ref, const svc_image *img, int n, int topk,
                        svc_classify_done done, void *ud, svc_call **out, svc_err *e);
/* The client is gone: the request leaves the queues (its images not yet in a forward pass
 * free their room) and done comes soon, possibly inside this call. Safe while the caller
 * holds a reference, or before done has returned; a no-op once the request is over. */
void svc_classify_cancel(svc *s, svc_call *call);
void svc_call_release(svc_call *call);

/* ---- operations ---- */

typedef struct svc_readiness {
    int ready, database, worker, models_dir, models;
    int models_checked;
    char models_error[512];
    char hint[512]; /* what to do, when something needs doing ("" otherwise) */
    const char *precision, *isa; /* inference's (static strings): "f32"/"bf16", oneDNN's ISA */
} svc_readiness;
/* Database, worker and every base model's headers (cheap: no weights are read). */
void svc_ready(svc *s, svc_readiness *r);
/* Prometheus text: jobs by status, training throughput, the inference runtime and its
 * precision. */
int svc_metrics_text(svc *s, FILE *f);

#endif
