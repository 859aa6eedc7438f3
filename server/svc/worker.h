/* The job worker: a thread that claims queued fine-tune jobs from the store, runs exactly the
 * settings resolved at their creation with ft_run under the training grant of the core budget
 * (yielding it between micro-batches to classify requests that waited too long), reports
 * progress and events to the store, and registers the resulting model. The worker borrows
 * the store, the registry and the strings in its config. */
#ifndef BIT_WORKER_H
#define BIT_WORKER_H

#include <stdio.h>

#include "server/svc/cores.h"
#include "server/svc/registry.h"
#include "storage/store.h"

typedef struct wrk_config {
    store *st;
    reg *models;            /* resolves base models, registers the results */
    const char *data_dir;   /* datasets/<id>/ and jobs/<id>/ live here */
    const char *models_dir; /* only to keep its path out of what clients see */
    cores *cores;           /* the core budget (borrowed): a job's team is its training grant */
    int loader_threads;     /* image decoding threads */
    int poll_ms;            /* how often an idle worker looks for work; default 500 */
    FILE *log;              /* JSON lines per job event; NULL: stderr */
} wrk_config;

typedef struct wrk wrk;

int wrk_new(const wrk_config *cfg, wrk **out, char *err, size_t errlen);
int wrk_start(wrk *w, char *err, size_t errlen);
/* Asks the running job to checkpoint and stop (it goes back to `queued`, to resume on the next
 * start), waits for the thread. Idempotent; wrk_free calls it. */
void wrk_stop(wrk *w);
void wrk_free(wrk *w);
/* Wakes the worker (a job was queued) so it does not wait for its next poll. */
void wrk_notify(wrk *w);
/* 1 while the worker thread is alive (for /readyz). */
int wrk_alive(wrk *w);
/* 1 while a job runs (a measurement now would compete with it for the cores). */
int wrk_busy(wrk *w);
/* Training throughput of the running job (images/s), 0 when idle (for /metrics). */
double wrk_images_per_sec(wrk *w);

#endif
