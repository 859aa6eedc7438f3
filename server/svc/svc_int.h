/* Internal to server/svc: the svc struct and the helpers its files share. Not for callers. */
#ifndef BIT_SVC_INT_H
#define BIT_SVC_INT_H

#include <pthread.h>

#include "finetune.h"
#include "server/svc/budget.h"
#include "server/svc/cores.h"
#include "server/svc/follow.h"
#include "server/svc/infer.h"
#include "server/svc/paths.h"
#include "server/svc/registry.h"
#include "server/svc/svc.h"
#include "server/svc/worker.h"

struct svc {
    svc_config cfg;   /* strings point at the copies below */
    char *data_dir, *models_dir;
    store *st;
    reg *models;
    wrk *worker;      /* NULL for an API-only service */
    inf *infer;
    fol *follow;      /* live event follows */
    bud *mem;         /* --memory-budget-mb */
    cores *cores;     /* the compute threads, shared by inference and the worker */
    struct dec *dec;  /* the classify decode pool (classify.c) */
    pthread_mutex_t measure_mu; /* one speed measurement at a time (timing.c) */
    int started;
};

/* Fills e (code, reason or NULL, message) and returns code. Messages name files relative to
 * the data and models directories: clients never see server paths. */
int svc__fail(svc *s, svc_err *e, int code, const char *reason, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* A dataset by id, else by name: ENG_ENOTFOUND (saying whether it was deleted) or
 * STORE_ECONFLICT (reason "ambiguous", the ids listed) when several share the name. */
int svc__dataset_resolve(svc *s, const char *ref, store_dataset **out, svc_err *e);
/* A registry entry as clients see it (models.c); ENG_EFORMAT for a base file whose headers
 * do not parse (out->error says why). */
int svc__describe(svc *s, const reg_model *m, svc_model *out, char *err, size_t errlen);
/* Replaces the data and models directories in msg by "data" and "models". */
void svc__scrub(const svc *s, char *msg, size_t len);

/* timing.c: a job's time budget resolved into a plan (measuring the model's speed as
 * needed, cached in the data directory). r holds the rule; it gets the plan. */
int svc__plan(svc *s, const char *base_path, const ft_params *p, const ft_data_info *info,
              int64_t val_images, int classes, ft_resolved *r, svc_err *e);

/* classify.c: the decode pool's life cycle. */
int svc__dec_new(svc *s, char *err, size_t errlen);
int svc__dec_start(svc *s, char *err, size_t errlen);
void svc__dec_stop(svc *s); /* fails what waits, joins the threads */
void svc__dec_free(svc *s);

/* How long a decode or an import waits for memory before answering busy. */
#define SVC_MEMORY_WAIT_MS 2000

#endif
