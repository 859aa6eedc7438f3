/* Durable state of the server: datasets, fine-tune jobs, their events and models, in SQLite.
 * Every row handed out (store_job, store_dataset, store_model, lists) belongs to the caller
 * and is released with its *_free; the store only borrows the strings passed to it. */
#ifndef BIT_STORE_H
#define BIT_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"

/* Error codes beyond ENG_E*. Missing rows are ENG_ENOTFOUND, bad arguments ENG_EINVAL, a
 * database written by a newer bitd ENG_EUNSUPPORTED, corruption ENG_EFORMAT, other SQLite
 * failures ENG_EIO; messages carry SQLite's own text. */
enum {
    STORE_ECONFLICT = -20, /* the job is not in the state the change needs (HTTP 409) */
    STORE_EINUSE = -21,    /* a live job still uses the dataset/model, or the job is live */
    STORE_EEXISTS = -22,   /* the id or model name is taken */
    STORE_EBUSY = -23,     /* another process held the database past the busy timeout */
};

/* Threading: one connection per store guarded by a mutex (and opened FULLMUTEX), so any
 * number of threads may share one store; each write is one transaction. Several processes may
 * open the same file (WAL; writers wait up to STORE_BUSY_MS). Do not use a store across
 * fork(): open a new one in the child. */
typedef struct store store;

#define STORE_ID_MAX 32      /* "job_" + 16 hex + NUL fits with room to spare */
#define STORE_LIST_MAX 1000  /* largest page a list call returns */
#define STORE_BUSY_MS 5000

typedef enum store_status {
    STORE_ANY = -1, /* only as the expected state of store_job_transition / a list filter */
    STORE_VALIDATING = 0,
    STORE_QUEUED,
    STORE_RUNNING,
    STORE_SUCCEEDED,
    STORE_FAILED,
    STORE_CANCELLED,
    STORE_NSTATUS
} store_status;

const char *store_status_name(store_status st);   /* "queued"...; "?" if out of range */
int store_status_parse(const char *name);          /* a store_status, or -1 if unknown */
int store_status_terminal(store_status st);        /* succeeded, failed, cancelled */
/* The transition table: validating -> queued|failed|cancelled; queued -> running|cancelled|
 * failed; running -> succeeded|failed|cancelled|queued (requeue on restart or shutdown). */
int store_transition_legal(store_status from, store_status to);

/* Opens or creates the database at path and migrates it to the current schema. */
int store_open(const char *path, store **out, char *err, size_t errlen);
void store_close(store *s); /* NULL is fine */
int store_schema_version(void); /* the user_version this code writes */
/* PRAGMA integrity_check plus foreign_key_check: 0 only if both are clean. */
int store_integrity_check(store *s, char *err, size_t errlen);
/* For crash tests only: hook(ud, point) runs at named points inside transactions (e.g.
 * "job_create: row inserted", before the status event), so a test can kill the process
 * there. NULL removes it. */
void store_set_test_hook(store *s, void (*hook)(void *ud, const char *point), void *ud);

/* A fresh random id "<prefix>_" + 16 hex digits from getrandom(); prefix is "ds", "job"... */
int store_id_new(const char *prefix, char id[STORE_ID_MAX], char *err, size_t errlen);
/* "2024-05-01T12:34:56.789Z" for unix milliseconds; returns buf. */
const char *store_rfc3339(int64_t ms, char buf[32]);
int64_t store_now_ms(void);

/* ---- datasets ---- */
typedef struct store_dataset {
    char *id, *name, *status, *summary_json, *path; /* summary_json may be NULL */
    int64_t created_at, bytes;
} store_dataset;
typedef struct store_datasets { store_dataset *v; size_t n; } store_datasets;

typedef struct store_dataset_new {
    const char *id;     /* NULL: generate "ds_..."; else a store_id_new("ds") value */
    const char *name, *status, *path; /* status is the caller's, e.g. "importing", "ready" */
    const char *summary_json;         /* NULL or a JSON document */
    int64_t bytes;
} store_dataset_new;

int store_dataset_create(store *s, const store_dataset_new *d, char id[STORE_ID_MAX],
                         char *err, size_t errlen);
/* NULL status/summary_json and negative bytes leave that column as it is. */
int store_dataset_update(store *s, const char *id, const char *status, const char *summary_json,
                         int64_t bytes, char *err, size_t errlen);
/* ENG_ENOTFOUND says when the dataset was deleted if it was ("dataset ds_… ('pets') was
 * deleted at …"): deletions leave the id and name behind. */
int store_dataset_get(store *s, const char *id, store_dataset **out, char *err, size_t errlen);
int store_dataset_list(store *s, store_datasets *out, char *err, size_t errlen); /* newest first */
/* The datasets called name, newest first (names need not be unique). */
int store_dataset_list_named(store *s, const char *name, store_datasets *out, char *err,
                             size_t errlen);
/* STORE_EINUSE while a validating/queued/running job uses it; finished jobs keep their row
 * with dataset_id NULL. Delete the directory after this succeeds, not before. */
int store_dataset_delete(store *s, const char *id, char *err, size_t errlen);
void store_dataset_free(store_dataset *d);
void store_datasets_free(store_datasets *l);

/* ---- jobs ---- */
typedef struct store_job {
    int64_t seq; /* creation order: increasing, never reused; the list cursor */
    char *id, *name, *dataset_id, *base_model, *params_json;
    char *resolved_json, *model_id, *error_code, *error_message; /* NULL until set */
    store_status status;
    int64_t step, total_steps;
    double images_per_sec, train_loss, val_top1, val_top5, val_loss; /* NAN until reported */
    int64_t created_at, started_at, finished_at, updated_at; /* unix ms; 0 = not yet */
    int cancel_requested;
} store_job;
typedef struct store_jobs { store_job *v; size_t n; int more; } store_jobs;

typedef struct store_job_new {
    const char *id; /* NULL: generate "job_..." */
    const char *name, *dataset_id, *base_model; /* base_model: a model's name or id */
    const char *params_json;                    /* the requested hyper-parameters, JSON */
    const char *resolved_json; /* what validation resolved; NULL: create in `validating` */
    int64_t total_steps;
} store_job_new;

/* 0 when no registered model and no unfinished job has this name, else STORE_EEXISTS (what
 * store_job_create checks in its transaction; asking first only gives an earlier answer). */
int store_name_free(store *s, const char *name, char *err, size_t errlen);
/* Creates the job and records its first "status" event, in one transaction: with
 * resolved_json, straight in `queued` (a crash leaves no job or a complete queued one);
 * without, in `validating` for the caller to move on. STORE_EEXISTS when the id is taken, or
 * when name is a registered model's name or that of another unfinished job (one name space:
 * a job's name becomes its model's name). */
int store_job_create(store *s, const store_job_new *j, char id[STORE_ID_MAX],
                     char *err, size_t errlen);
int store_job_get(store *s, const char *id, store_job **out, char *err, size_t errlen);
/* Newest first. status may be STORE_ANY. after_seq 0 starts at the newest job; otherwise
 * pass the seq of the last job of the previous page (jobs created earlier than it follow).
 * seq never changes or repeats, so pages neither skip nor repeat rows across inserts and
 * deletes. limit is 1..STORE_LIST_MAX; out->more says whether another page exists. */
int store_job_list(store *s, store_status status, int64_t after_seq, int limit, store_jobs *out,
                   char *err, size_t errlen);
int store_job_count(store *s, store_status status, int64_t *n, char *err, size_t errlen);
/* Sets what validation resolved (JSON) and total_steps (< 0: unchanged); validating only. */
int store_job_set_resolved(store *s, const char *id, const char *resolved_json,
                           int64_t total_steps, char *err, size_t errlen);

/* The one place job status changes. Atomically: checks the job is in `from` (or any state if
 * STORE_ANY) and that from -> to is legal, updates status, timestamps (started_at on first
 * run, finished_at on a terminal state), the error fields, and appends a "status" event.
 * STORE_ECONFLICT if the job was not in `from` or the move is illegal; then nothing changes.
 * `failed` needs error_code (a short machine word); error_message is free text. A worker
 * requeueing a job on shutdown should cancel it instead if a cancel was requested. */
int store_job_transition(store *s, const char *id, store_status from, store_status to,
                         const char *error_code, const char *error_message,
                         char *err, size_t errlen);
/* Picks the oldest queued job (by seq), makes it running and returns it; *out is NULL and
 * the result 0 when nothing is queued. Two claimers never get the same job. */
int store_job_claim_next(store *s, store_job **out, char *err, size_t errlen);
/* After a crash every `running` job is orphaned: moves each back to queued (or to cancelled
 * if a cancel was pending) with a "requeued after restart" event; a job left in `validating`
 * (its creation was interrupted) is failed with code "interrupted" and an event saying so.
 * Returns how many moved, or a negative code. Call once at startup, before any worker claims. */
int store_recover(store *s, char *err, size_t errlen);

/* A validating or queued job becomes cancelled at once; a running job gets its
 * cancel_requested flag for the worker to act on. STORE_ECONFLICT if already finished.
 * *now (optional) receives the status after the call. */
int store_job_request_cancel(store *s, const char *id, store_status *now,
                             char *err, size_t errlen);
int store_job_cancel_requested(store *s, const char *id, int *yes, char *err, size_t errlen);

/* The server is stopping under a running job: it goes back to `queued` to resume on the
 * next start, or to `cancelled` if a cancel was requested meanwhile (the check and the
 * move are one transaction, so a cancel that raced the shutdown is never lost). *now
 * (optional) receives the status it ended in. */
int store_job_park_running(store *s, const char *id, store_status *now, char *err,
                           size_t errlen);

/* Progress of a running job: negative step/total_steps and NAN values leave columns as
 * they are. STORE_ECONFLICT if the job is not running (e.g. cancelled meanwhile).
 * *cancel (optional) receives the cancel flag, to save the worker a second call. */
typedef struct store_progress {
    int64_t step, total_steps;
    double images_per_sec, train_loss, val_top1, val_top5, val_loss;
} store_progress;
store_progress store_progress_none(void); /* everything "unchanged" */
int store_job_progress(store *s, const char *id, const store_progress *p, int *cancel,
                       char *err, size_t errlen);

/* STORE_EINUSE unless the job is finished. Its events go with it; its model stays. */
int store_job_delete(store *s, const char *id, char *err, size_t errlen);
void store_job_free(store_job *j);
void store_jobs_free(store_jobs *l);

/* ---- job events ---- */
typedef struct store_event {
    int64_t seq, time, step; /* seq is 1, 2, 3... per job; step -1 when not given */
    char *type, *data_json;  /* data_json may be NULL */
} store_event;
typedef struct store_events { store_event *v; size_t n; int more; } store_events;

/* Appends an event with the job's next seq (returned in *seq if non-NULL). type is a short
 * word ("train", "eval", "checkpoint"; "status" is written by transitions); step < 0 for
 * none; data_json NULL or a JSON document. */
int store_event_add(store *s, const char *job_id, const char *type, int64_t step,
                    const char *data_json, int64_t *seq, char *err, size_t errlen);
/* Events with seq > after_seq in increasing order, at most limit (1..STORE_LIST_MAX). */
int store_event_list(store *s, const char *job_id, int64_t after_seq, int limit,
                     store_events *out, char *err, size_t errlen);
void store_events_free(store_events *l);
/* A number that changes whenever a job event may have been committed, by this process or by
 * another one on the same file (SQLite's data_version): followers poll it, not the events. */
uint64_t store_event_stamp(store *s);

/* ---- models ---- */
typedef struct store_model {
    char *id, *name, *kind, *job_id, *path, *classes_json, *architecture; /* job_id,
                                                   classes_json, architecture may be NULL */
    int resolution;
    int64_t bytes, created_at;
} store_model;
typedef struct store_models { store_model *v; size_t n; } store_models;

typedef struct store_model_new {
    const char *id;                 /* NULL: generate "mdl_..." */
    const char *name, *kind, *path; /* kind: "base" or "fine-tuned"; name unique */
    const char *job_id, *classes_json, *architecture; /* optional */
    int resolution;
    int64_t bytes;
} store_model_new;

int store_model_create(store *s, const store_model_new *m, char id[STORE_ID_MAX],
                       char *err, size_t errlen);
/* Registers the model the job produced and moves the job running -> succeeded with model_id
 * set, in one transaction: there is never a succeeded job without its model or vice versa.
 * STORE_ECONFLICT, nothing changed, when a cancel was requested meanwhile: a cancel that was
 * accepted is always honoured (the caller then moves the job to cancelled). */
int store_job_succeed(store *s, const char *job_id, const store_model_new *m,
                      char model_id[STORE_ID_MAX], char *err, size_t errlen);
int store_model_get(store *s, const char *id, store_model **out, char *err, size_t errlen);
int store_model_get_by_name(store *s, const char *name, store_model **out,
                            char *err, size_t errlen);
/* Newest first; kind NULL for all. */
int store_model_list(store *s, const char *kind, store_models *out, char *err, size_t errlen);
/* STORE_EINUSE while a live job names it (by id or name) as its base_model; jobs that
 * produced it keep their row with model_id NULL. */
int store_model_delete(store *s, const char *id, char *err, size_t errlen);
void store_model_free(store_model *m);
void store_models_free(store_models *l);

#endif
