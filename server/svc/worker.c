#include "server/svc/worker.h"

#include <errno.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "finetune.h"
#include "ftjson.h"
#include "rundir.h"
#include "server/svc/paths.h"

struct wrk {
    wrk_config cfg;
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int started, stop, alive, busy;
    double ips;
};

/* What one running job needs inside the ft_run hooks. */
typedef struct job_ctx {
    wrk *w;
    const char *id;
    double last_report;
    int cancel;
} job_ctx;

static void log_line(const wrk *w, const char *job, const char *what, const char *detail)
{
    json_t *o = json_pack("{s:s, s:s, s:s, s:s?}", "component", "worker", "job", job, "event",
                          what, "detail", detail);
    char *s = json_dumps(o, JSON_COMPACT);
    fprintf(w->cfg.log ? w->cfg.log : stderr, "%s\n", s);
    fflush(w->cfg.log ? w->cfg.log : stderr);
    free(s);
    json_decref(o);
}

static void on_progress(void *ud, const ft_progress *p)
{
    job_ctx *c = ud;
    double t = eng_now_ms() / 1e3;
    pthread_mutex_lock(&c->w->mu);
    c->w->ips = p->images_per_sec;
    pthread_mutex_unlock(&c->w->mu);
    if (t - c->last_report < 0.5 && p->step < p->total) return; /* at most two writes a second */
    c->last_report = t;
    store_progress sp = store_progress_none();
    sp.step = p->step, sp.total_steps = p->total;
    sp.images_per_sec = p->images_per_sec, sp.train_loss = p->loss;
    int cancel = 0;
    if (store_job_progress(c->w->cfg.st, c->id, &sp, &cancel, NULL, 0) == 0 && cancel) c->cancel = 1;
}

static double num_or_nan(const json_t *v) { return json_is_number(v) ? json_number_value(v) : NAN; }

static void on_event(void *ud, const json_t *ev)
{
    job_ctx *c = ud;
    const char *type = json_string_value(json_object_get(ev, "type"));
    int64_t step = json_integer_value(json_object_get(ev, "step"));
    char *data = json_dumps(ev, JSON_COMPACT), shown[4096];
    snprintf(shown, sizeof shown, "%s", data ? data : "{}"); /* clients see no server paths */
    svc_path_scrub(shown, sizeof shown, c->w->cfg.data_dir, c->w->cfg.models_dir);
    store_event_add(c->w->cfg.st, c->id, type ? type : "info", step, shown, NULL, NULL, 0);
    if (type && (!strcmp(type, "eval") || !strcmp(type, "selected"))) { /* the job shows the
                                                                            model it registers */
        store_progress sp = store_progress_none();
        sp.val_top1 = num_or_nan(json_object_get(ev, "val_top1"));
        sp.val_top5 = num_or_nan(json_object_get(ev, "val_top5"));
        sp.val_loss = num_or_nan(json_object_get(ev, "val_loss"));
        store_job_progress(c->w->cfg.st, c->id, &sp, NULL, NULL, 0);
    }
    if (type && strcmp(type, "train")) log_line(c->w, c->id, type, data);
    free(data);
}

/* 2: checkpoint and stop (shutdown); 1: stop now (cancel); 0: go on. */
static int on_stop(void *ud)
{
    job_ctx *c = ud;
    pthread_mutex_lock(&c->w->mu);
    int stop = c->w->stop;
    pthread_mutex_unlock(&c->w->mu);
    if (stop) return 2;
    if (!c->cancel) store_job_cancel_requested(c->w->cfg.st, c->id, &c->cancel, NULL, 0);
    return c->cancel ? 1 : 0;
}

/* The team OpenMP really forms now (the test hook behind bit_cores_peak_observed). */
static int team_size(void)
{
    int n = 0;
    #pragma omp parallel
    {
        #pragma omp single
        n = omp_get_num_threads();
    }
    return n;
}

/* Between micro-batches: lends the cores to classify requests that waited too long. */
static void on_yield(void *ud)
{
    job_ctx *c = ud;
    cores_train_yield(c->w->cfg.cores);
    cores_observe(c->w->cfg.cores, 1, team_size());
}

static int job_paths(wrk *w, const store_job *j, char *base, char *data, char *run, size_t len,
                     char *err, size_t errlen)
{
    reg_model m;
    if (!j->dataset_id) return eng_errf(err, errlen, ENG_ENOTFOUND, "the job's dataset was deleted");
    int rc = reg_resolve(w->cfg.models, j->base_model, &m, err, errlen);
    if (!rc) snprintf(base, len, "%s", m.path);
    reg_model_clear(&m);
    if (!rc && (svc_path_dataset_data(w->cfg.data_dir, j->dataset_id, data, len) ||
                svc_path_job_dir(w->cfg.data_dir, j->id, run, len)))
        rc = eng_errf(err, errlen, ENG_EINVAL, "path too long");
    return rc;
}

/* What the job resolved at creation: the worker runs exactly that. */
static int job_settings(const store_job *j, ft_resolved *r, char *err, size_t errlen)
{
    json_t *rj = j->resolved_json ? json_loads(j->resolved_json, 0, NULL) : NULL;
    int rc = ft_resolved_from_json(rj, r);
    json_decref(rj);
    return rc ? eng_errf(err, errlen, ENG_EFORMAT, "the job's resolved settings are unreadable") : 0;
}

/* Registers the model; a cancel that landed before that wins (the job ends cancelled). */
static void succeed(wrk *w, const store_job *j, const char *run)
{
    char err[512], id[STORE_ID_MAX];
    int rc = reg_register_run(w->cfg.models, j, run, id, err, sizeof err);
    if (rc == STORE_ECONFLICT) {
        store_job_transition(w->cfg.st, j->id, STORE_RUNNING, STORE_CANCELLED, NULL, NULL, NULL, 0);
        log_line(w, j->id, "cancelled", "after its last step: no model registered");
    } else if (rc) {
        svc_path_scrub(err, sizeof err, w->cfg.data_dir, w->cfg.models_dir);
        store_job_transition(w->cfg.st, j->id, STORE_RUNNING, STORE_FAILED, "register_failed", err, NULL, 0);
        log_line(w, j->id, "failed", err);
    } else {
        log_line(w, j->id, "succeeded", NULL);
    }
}

static void finish_job(wrk *w, const store_job *j, job_ctx *c, int rc, const char *run,
                       const char *msg)
{
    if (rc == 0) {
        succeed(w, j, run);
    } else if (rc == FT_ESTOPPED && !c->cancel) { /* shutdown: resume on the next start */
        store_status now = STORE_QUEUED;
        store_job_park_running(w->cfg.st, j->id, &now, NULL, 0);
        log_line(w, j->id, now == STORE_CANCELLED ? "cancelled" : "requeued",
                 now == STORE_CANCELLED ? "while the server was stopping" : "server shutting down");
    } else if (rc == FT_ESTOPPED) {
        store_job_transition(w->cfg.st, j->id, STORE_RUNNING, STORE_CANCELLED, NULL, NULL, NULL, 0);
        log_line(w, j->id, "cancelled", NULL);
    } else {
        const char *code = rc == ENG_ENOMEM ? "out_of_memory"
                           : rc == ENG_ENOSPC ? "disk_full"
                           : rc == ENG_ENOTFOUND ? "not_found"
                           : rc == ENG_EFORMAT || rc == ENG_EINVAL ? "invalid_input"
                                                                   : "training_failed";
        char shown[1024];
        snprintf(shown, sizeof shown, "%s", msg);
        svc_path_scrub(shown, sizeof shown, w->cfg.data_dir, w->cfg.models_dir);
        store_job_transition(w->cfg.st, j->id, STORE_RUNNING, STORE_FAILED, code, shown, NULL, 0);
        log_line(w, j->id, "failed", msg);
    }
}

static void run_job(wrk *w, const store_job *j)
{
    char base[4200], data[4200], run[4200], err[1024];
    job_ctx c = {.w = w, .id = j->id};
    ft_resolved r;
    ft_params p = {.loader_threads = w->cfg.loader_threads};
    int rc = job_paths(w, j, base, data, run, sizeof base, err, sizeof err);
    if (!rc) rc = job_settings(j, &r, err, sizeof err);
    if (!rc) {
        int resume = ft_rundir_has_run(run);
        ft_hooks hooks = {on_progress, on_event, on_stop, &c, on_yield};
        log_line(w, j->id, resume ? "resumed" : "started", NULL);
        /* The team is fixed for the run: the trainer's oneDNN primitives are built for it. */
        cores_train_acquire(w->cfg.cores);
        omp_set_num_threads(cores_train_team(w->cfg.cores));
        rc = ft_run(base, data, run, &p, &r, resume, &hooks, err, sizeof err);
        cores_train_release(w->cfg.cores);
    }
    pthread_mutex_lock(&w->mu);
    w->ips = 0;
    pthread_mutex_unlock(&w->mu);
    finish_job(w, j, &c, rc, run, err);
}

static void *worker_main(void *ud)
{
    wrk *w = ud;
    for (;;) {
        pthread_mutex_lock(&w->mu);
        int stop = w->stop;
        pthread_mutex_unlock(&w->mu);
        if (stop) break;
        store_job *j = NULL;
        char err[512];
        if (store_job_claim_next(w->cfg.st, &j, err, sizeof err) == 0 && j) {
            pthread_mutex_lock(&w->mu);
            w->busy = 1;
            pthread_mutex_unlock(&w->mu);
            run_job(w, j);
            pthread_mutex_lock(&w->mu);
            w->busy = 0;
            pthread_mutex_unlock(&w->mu);
            store_job_free(j);
            continue;
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        int ms = w->cfg.poll_ms > 0 ? w->cfg.poll_ms : 500;
        ts.tv_nsec += (long)ms * 1000000;
        ts.tv_sec += ts.tv_nsec / 1000000000, ts.tv_nsec %= 1000000000;
        pthread_mutex_lock(&w->mu);
        if (!w->stop) pthread_cond_timedwait(&w->cv, &w->mu, &ts);
        pthread_mutex_unlock(&w->mu);
    }
    pthread_mutex_lock(&w->mu);
    w->alive = 0;
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

int wrk_new(const wrk_config *cfg, wrk **out, char *err, size_t errlen)
{
    wrk *w = calloc(1, sizeof *w);
    if (!w) return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    w->cfg = *cfg;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    *out = w;
    return 0;
}

int wrk_start(wrk *w, char *err, size_t errlen)
{
    w->alive = 1;
    if (pthread_create(&w->th, NULL, worker_main, w)) {
        w->alive = 0;
        return eng_errf(err, errlen, ENG_ENOMEM, "cannot start the worker thread");
    }
    w->started = 1;
    return 0;
}

void wrk_notify(wrk *w)
{
    pthread_mutex_lock(&w->mu);
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

void wrk_stop(wrk *w)
{
    if (!w || !w->started) return;
    pthread_mutex_lock(&w->mu);
    w->stop = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->th, NULL);
    w->started = 0;
}

void wrk_free(wrk *w)
{
    if (!w) return;
    wrk_stop(w);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w);
}

int wrk_alive(wrk *w)
{
    pthread_mutex_lock(&w->mu);
    int a = w->alive;
    pthread_mutex_unlock(&w->mu);
    return a;
}

double wrk_images_per_sec(wrk *w)
{
    pthread_mutex_lock(&w->mu);
    double v = w->ips;
    pthread_mutex_unlock(&w->mu);
    return v;
}

int wrk_busy(wrk *w)
{
    pthread_mutex_lock(&w->mu);
    int b = w->busy;
    pthread_mutex_unlock(&w->mu);
    return b;
}
