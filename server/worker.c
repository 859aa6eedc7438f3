#include "worker.h"

#include <errno.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "api/params.h"
#include "finetune.h"

struct wrk {
    wrk_config cfg;
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int started, stop, alive;
    double ips;
};

/* What one running job needs inside the ft_run hooks. */
typedef struct job_ctx {
    wrk *w;
    const char *id;
    double last_report;
    int cancel;
} job_ctx;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int name_ok(const char *s)
{
    if (!s || !*s || strlen(s) > 200 || s[0] == '.') return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '.' || *s == '_' || *s == '-'))
            return 0;
    return 1;
}

int wrk_base_path(store *st, const char *models_dir, const char *name, char *path, size_t len,
                  char *err, size_t errlen)
{
    if (!name_ok(name))
        return eng_errf(err, errlen, ENG_EINVAL, "base_model must be a model name ([A-Za-z0-9._-])");
    store_model *m = NULL;
    if (store_model_get_by_name(st, name, &m, NULL, 0) == 0 || store_model_get(st, name, &m, NULL, 0) == 0) {
        snprintf(path, len, "%s", m->path);
        store_model_free(m);
        return 0;
    }
    char file[300];
    snprintf(file, sizeof file, "%s.npz", name);
    if (eng_path_join(path, len, models_dir, file) || access(path, R_OK))
        return eng_errf(err, errlen, ENG_ENOTFOUND, "no base model '%s' (looked for %s)", name, path);
    return 0;
}

int wrk_job_dir(const char *data_dir, const char *job_id, char *path, size_t len)
{
    char rel[64];
    snprintf(rel, sizeof rel, "jobs/%s", job_id);
    return eng_path_join(path, len, data_dir, rel);
}

int wrk_dataset_path(const char *data_dir, const char *ds_id, char *path, size_t len)
{
    char rel[64];
    snprintf(rel, sizeof rel, "datasets/%s/data.npz", ds_id);
    if (eng_path_join(path, len, data_dir, rel)) return ENG_EINVAL;
    if (access(path, R_OK) == 0) return 0;
    snprintf(rel, sizeof rel, "datasets/%s/data", ds_id);
    return eng_path_join(path, len, data_dir, rel);
}

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
    double t = now_s();
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

static void on_event(void *ud, const json_t *ev)
{
    job_ctx *c = ud;
    const char *type = json_string_value(json_object_get(ev, "type"));
    int64_t step = json_integer_value(json_object_get(ev, "step"));
    char *data = json_dumps(ev, JSON_COMPACT);
    store_event_add(c->w->cfg.st, c->id, type ? type : "info", step, data, NULL, NULL, 0);
    if (type && !strcmp(type, "eval")) {
        store_progress sp = store_progress_none();
        sp.val_top1 = json_number_value(json_object_get(ev, "val_top1"));
        sp.val_top5 = json_number_value(json_object_get(ev, "val_top5"));
        sp.val_loss = json_number_value(json_object_get(ev, "val_loss"));
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

/* Registers run_dir/model.npz and moves the job to succeeded in one transaction. */
static int register_model(wrk *w, const store_job *j, const char *run_dir, char *err,
                          size_t errlen)
{
    char model[4200], state[4200];
    if (eng_path_join(model, sizeof model, run_dir, "model.npz") ||
        eng_path_join(state, sizeof state, run_dir, "state.json"))
        return eng_errf(err, errlen, ENG_EINVAL, "path too long");
    json_t *st = json_load_file(state, 0, NULL);
    json_t *res = json_object_get(json_object_get(st, "resolved"), "resolution");
    char *classes = json_dumps(json_object_get(st, "classes"), JSON_COMPACT);
    struct stat sb;
    stat(model, &sb);
    store_model_new m = {.name = j->name && *j->name ? j->name : j->id, .kind = "fine-tuned",
                         .path = model, .job_id = j->id, .classes_json = classes,
                         .architecture = json_string_value(json_object_get(st, "architecture")),
                         .resolution = (int)json_integer_value(json_array_get(res, 1)),
                         .bytes = (int64_t)sb.st_size};
    char id[STORE_ID_MAX], alt[300];
    int rc = store_job_succeed(w->cfg.st, j->id, &m, id, err, errlen);
    if (rc == STORE_EEXISTS) { /* the name was taken meanwhile: keep it unique */
        snprintf(alt, sizeof alt, "%s-%s", m.name, j->id);
        m.name = alt;
        rc = store_job_succeed(w->cfg.st, j->id, &m, id, err, errlen);
    }
    free(classes);
    json_decref(st);
    return rc;
}

static int job_paths(wrk *w, const store_job *j, char *base, char *data, char *run, size_t len,
                     char *err, size_t errlen)
{
    if (!j->dataset_id) return eng_errf(err, errlen, ENG_ENOTFOUND, "the job's dataset was deleted");
    int rc = wrk_base_path(w->cfg.st, w->cfg.models_dir, j->base_model, base, len, err, errlen);
    if (!rc && (wrk_dataset_path(w->cfg.data_dir, j->dataset_id, data, len) ||
                wrk_job_dir(w->cfg.data_dir, j->id, run, len)))
        rc = eng_errf(err, errlen, ENG_EINVAL, "path too long");
    return rc;
}

static void finish_job(wrk *w, const store_job *j, job_ctx *c, int rc, const char *run,
                       const char *msg)
{
    char err[512];
    if (rc == 0) {
        if (register_model(w, j, run, err, sizeof err))
            store_job_transition(w->cfg.st, j->id, STORE_RUNNING, STORE_FAILED, "register_failed", err, NULL, 0);
        log_line(w, j->id, "succeeded", NULL);
    } else if (rc == FT_ESTOPPED && !c->cancel) { /* shutdown: resume on the next start */
        store_job_transition(w->cfg.st, j->id, STORE_RUNNING, STORE_QUEUED, NULL, NULL, NULL, 0);
        log_line(w, j->id, "requeued", "server shutting down");
    } else if (rc == FT_ESTOPPED) {
        store_job_transition(w->cfg.st, j->id, STORE_RUNNING, STORE_CANCELLED, NULL, NULL, NULL, 0);
        log_line(w, j->id, "cancelled", NULL);
    } else {
        const char *code = rc == ENG_ENOMEM ? "out_of_memory"
                           : rc == ENG_ENOTFOUND ? "not_found"
                           : rc == ENG_EFORMAT || rc == ENG_EINVAL ? "invalid_input"
                                                                   : "training_failed";
        store_job_transition(w->cfg.st, j->id, STORE_RUNNING, STORE_FAILED, code, msg, NULL, 0);
        log_line(w, j->id, "failed", msg);
    }
}

static void run_job(wrk *w, const store_job *j)
{
    char base[4200], data[4200], run[4200], err[1024], ck[4300];
    job_ctx c = {.w = w, .id = j->id};
    ft_params p;
    json_t *hp = j->params_json ? json_loads(j->params_json, 0, NULL) : NULL;
    int rc = job_paths(w, j, base, data, run, sizeof base, err, sizeof err);
    if (!rc) rc = api_params_parse(hp, &p, err, sizeof err);
    json_decref(hp);
    if (!rc) {
        struct stat sb;
        snprintf(ck, sizeof ck, "%s/checkpoints", run);
        int resume = stat(ck, &sb) == 0;
        p.loader_threads = w->cfg.loader_threads;
        ft_hooks hooks = {on_progress, on_event, on_stop, &c};
        log_line(w, j->id, resume ? "resumed" : "started", NULL);
        rc = ft_run(base, data, run, &p, resume, &hooks, err, sizeof err);
    }
    pthread_mutex_lock(&w->mu);
    w->ips = 0;
    pthread_mutex_unlock(&w->mu);
    finish_job(w, j, &c, rc, run, err);
}

static void *worker_main(void *ud)
{
    wrk *w = ud;
    omp_set_num_threads(w->cfg.threads > 0 ? w->cfg.threads : 1); /* this thread's budget */
    for (;;) {
        pthread_mutex_lock(&w->mu);
        int stop = w->stop;
        pthread_mutex_unlock(&w->mu);
        if (stop) break;
        store_job *j = NULL;
        char err[512];
        if (store_job_claim_next(w->cfg.st, &j, err, sizeof err) == 0 && j) {
            run_job(w, j);
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
