/* The service's life cycle, its error convention, readiness and metrics. */
#include <dirent.h>
#include <limits.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "server/svc/svc_int.h"

void svc__scrub(const svc *s, char *msg, size_t len)
{
    svc_path_scrub(msg, len, s->data_dir, s->models_dir);
}

int svc__fail(svc *s, svc_err *e, int code, const char *reason, const char *fmt, ...)
{
    if (!e) return code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    e->code = code;
    snprintf(e->reason, sizeof e->reason, "%s", reason ? reason : "");
    if (s) svc__scrub(s, e->msg, sizeof e->msg);
    return code;
}

static void log_json(const svc *s, json_t *o)
{
    char *txt = json_dumps(o, JSON_COMPACT);
    FILE *f = s->cfg.log ? s->cfg.log : stderr;
    if (txt) fprintf(f, "%s\n", txt), fflush(f);
    free(txt);
    json_decref(o);
}

/* ---------------------------------------------------------------- the start-up sweep */

/* Bytes of the files under path (symbolic links not followed). */
static uint64_t tree_bytes(const char *path, int depth)
{
    struct stat sb;
    if (lstat(path, &sb)) return 0;
    if (!S_ISDIR(sb.st_mode) || depth > 64) return S_ISREG(sb.st_mode) ? (uint64_t)sb.st_size : 0;
    uint64_t n = 0;
    DIR *dh = opendir(path);
    struct dirent *e;
    while (dh && (e = readdir(dh))) {
        char p[4500];
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") &&
            (size_t)snprintf(p, sizeof p, "%s/%s", path, e->d_name) < sizeof p)
            n += tree_bytes(p, depth + 1);
    }
    if (dh) closedir(dh);
    return n;
}

/* Removes path (a file or a tree) and notes it in the report. */
static void sweep_one(json_t *report, const char *path, const char *shown, uint64_t *total)
{
    char e2[256];
    struct stat sb;
    if (lstat(path, &sb)) return;
    uint64_t bytes = tree_bytes(path, 0);
    if (S_ISDIR(sb.st_mode)) arc_remove_tree(path, e2, sizeof e2);
    else unlink(path);
    *total += bytes;
    json_array_append_new(report, json_pack("{s:s, s:I}", "path", shown, "bytes", (json_int_t)bytes));
}

/* A run directory that a model still uses (its job may be gone). */
static int model_uses(const store_models *l, const char *dir)
{
    size_t n = strlen(dir);
    for (size_t i = 0; i < l->n; i++)
        if (!strncmp(l->v[i].path, dir, n) && l->v[i].path[n] == '/') return 1;
    return 0;
}

/* What a crash can leave behind: uploads in tmp/, imports still in their staging directory
 * or renamed but not recorded, run directories of deleted jobs. One server per data
 * directory, so nothing here is in use at start-up. */
static void sweep(svc *s)
{
    json_t *report = json_array();
    uint64_t total = 0;
    store_models models = {0};
    store_model_list(s->st, NULL, &models, NULL, 0);
    for (int k = 0; k < SVC_DIR_N; k++) {
        char dir[4200], p[4500], shown[600];
        snprintf(dir, sizeof dir, "%s/%s", s->data_dir, svc_dir_name(k));
        DIR *dh = opendir(dir);
        struct dirent *ent;
        while (dh && (ent = readdir(dh))) {
            const char *n = ent->d_name;
            if (!strcmp(n, ".") || !strcmp(n, "..")) continue;
            snprintf(p, sizeof p, "%s/%s", dir, n);
            snprintf(shown, sizeof shown, "%s/%s", svc_dir_name(k), n);
            store_dataset *d = NULL;
            store_job *j = NULL;
            int orphan = k == SVC_DIR_TMP || !strncmp(n, SVC_STAGE_PREFIX, strlen(SVC_STAGE_PREFIX)) ||
                         (k == SVC_DIR_DATASETS &&
                          store_dataset_get(s->st, n, &d, NULL, 0) == ENG_ENOTFOUND) ||
                         (k == SVC_DIR_JOBS && store_job_get(s->st, n, &j, NULL, 0) == ENG_ENOTFOUND &&
                          !model_uses(&models, p));
            store_dataset_free(d);
            store_job_free(j);
            if (orphan) sweep_one(report, p, shown, &total);
        }
        if (dh) closedir(dh);
    }
    store_models_free(&models);
    if (json_array_size(report))
        log_json(s, json_pack("{s:s, s:s, s:o, s:I}", "component", "serve", "event", "swept",
                              "removed", report, "bytes", (json_int_t)total));
    else
        json_decref(report);
}

static int open_parts(svc *s, char *err, size_t errlen)
{
    char db[4200];
    int rc = svc_paths_make(s->data_dir, err, errlen);
    if (!rc && svc_path_db(s->data_dir, db, sizeof db))
        rc = eng_errf(err, errlen, ENG_EINVAL, "data directory path too long");
    if (!rc) rc = store_open(db, &s->st, err, errlen);
    if (rc) return rc;
    int moved = store_recover(s->st, err, errlen);
    if (moved < 0) return moved;
    if (moved > 0) log_json(s, json_pack("{s:s, s:s, s:i}", "component", "serve", "event",
                                         "requeued", "jobs", moved));
    sweep(s);
    reg_config rcfg = {.st = s->st, .models_dir = s->models_dir, .data_dir = s->data_dir,
                       .base_resolution = s->cfg.base_resolution};
    if ((rc = reg_new(&rcfg, &s->models, err, errlen))) return rc;
    if ((rc = bud_new(s->cfg.memory_budget, &s->mem, err, errlen))) return rc;
    cores_config cc = {.cores = s->cfg.cores, .infer_threads = s->cfg.infer.threads,
                       .infer_share = s->cfg.infer_share, .train_threads = s->cfg.train_threads,
                       .train_yield_ms = s->cfg.train_yield_ms};
    if ((rc = cores_new(&cc, &s->cores, err, errlen))) return rc;
    s->cfg.train_threads = cores_train_team(s->cores); /* what timing.c measures with */
    s->cfg.infer.cores = s->cores;
    if ((rc = inf_new(&s->cfg.infer, &s->infer, err, errlen))) return rc;
    if ((rc = svc__dec_new(s, err, errlen))) return rc;
    if ((rc = fol_new(s->st, s->cfg.max_followers, &s->follow, err, errlen))) return rc;
    if (!s->cfg.worker) return 0;
    wrk_config wc = {.st = s->st, .models = s->models, .data_dir = s->data_dir,
                     .models_dir = s->models_dir,
                     .cores = s->cores, .loader_threads = s->cfg.loader_threads,
                     .log = s->cfg.log};
    return wrk_new(&wc, &s->worker, err, errlen);
}

int svc_open(const svc_config *cfg, svc **out, char *err, size_t errlen)
{
    svc *s = calloc(1, sizeof *s);
    *out = NULL;
    if (!s) return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    s->cfg = *cfg;
    pthread_mutex_init(&s->measure_mu, NULL);
    s->data_dir = strdup(cfg->data_dir ? cfg->data_dir : "./var");
    s->models_dir = strdup(cfg->models_dir ? cfg->models_dir : "./models");
    if (s->cfg.max_queued <= 0) s->cfg.max_queued = 100;
    if (s->cfg.loader_threads <= 0) s->cfg.loader_threads = 1;
    int rc = s->data_dir && s->models_dir ? open_parts(s, err, errlen)
                                          : eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    if (rc) {
        svc_close(s);
        return rc;
    }
    s->cfg.data_dir = s->data_dir, s->cfg.models_dir = s->models_dir;
    *out = s;
    return 0;
}

#define NO_MODELS_HINT "put NAME.npz there (bit-fetch-weights BiT-M-R50x1 downloads one; without a " \
    "network, copy a .npz from a machine that has it); new files are used without a restart"

/* One start-up line on the models, so an empty or mislabelled models directory is the first
 * thing the log says rather than the first failed request. */
static void log_models(svc *s)
{
    reg_model *v = NULL;
    size_t n = 0, base = 0;
    char dir[4096], msg[4600];
    json_t *unlabelled = json_array();
    if (!realpath(s->models_dir, dir)) snprintf(dir, sizeof dir, "%s", s->models_dir);
    if (reg_list(s->models, &v, &n, NULL, 0)) n = 0;
    for (size_t i = 0; i < n; i++) {
        base += v[i].base;
        svc_model m = {0};
        if (v[i].base && !svc__describe(s, &v[i], &m, msg, sizeof msg) && !m.classes)
            json_array_append_new(unlabelled, json_string(m.name));
        svc_model_clear(&m);
    }
    reg_models_free(v, n);
    if (!base)
        snprintf(msg, sizeof msg, "no base models in %s: fine-tune jobs need one; " NO_MODELS_HINT, dir);
    else if (json_array_size(unlabelled))
        snprintf(msg, sizeof msg, "%zu base model%s in %s; %zu without class names (put NAME.labels.txt "
                 "beside NAME.npz, one name per line, or predictions are class indices)", base,
                 base == 1 ? "" : "s", dir, json_array_size(unlabelled));
    else
        snprintf(msg, sizeof msg, "%zu base model%s in %s", base, base == 1 ? "" : "s", dir);
    log_json(s, json_pack("{s:s, s:s, s:s, s:I, s:I, s:o, s:s}", "component", "serve", "event", "models",
                          "models_dir", dir, "base_models", (json_int_t)base, "fine_tuned",
                          (json_int_t)(n - base), "without_labels", unlabelled, "message", msg));
}

int svc_start(svc *s, char *err, size_t errlen)
{
    log_models(s);
    int rc = inf_start(s->infer, err, errlen);
    if (!rc) rc = svc__dec_start(s, err, errlen);
    if (!rc) rc = fol_start(s->follow, err, errlen);
    if (!rc && s->worker) rc = wrk_start(s->worker, err, errlen);
    if (!rc) s->started = 1;
    return rc;
}

void svc_stop(svc *s)
{
    if (!s) return;
    fol_stop(s->follow); /* listeners hear no more (their streams close) */
    svc__dec_stop(s);    /* requests still decoding fail */
    /* Nobody waits for cores from now on: the inference thread may be waiting for a job to
     * yield. A grant after this may overlap the job's last micro-batch, once, while it stops. */
    if (s->cores) cores_shutdown(s->cores);
    inf_stop(s->infer);
    wrk_stop(s->worker);
}

void svc_close(svc *s)
{
    if (!s) return;
    svc_stop(s);
    fol_free(s->follow);
    svc__dec_free(s);
    inf_free(s->infer);
    wrk_free(s->worker);
    cores_free(s->cores);
    reg_free(s->models);
    bud_free(s->mem);
    store_close(s->st);
    free(s->data_dir);
    free(s->models_dir);
    pthread_mutex_destroy(&s->measure_mu);
    free(s);
}

/* ---------------------------------------------------------------- readiness and metrics */

static int npz_file(const struct dirent *e)
{
    size_t n = strlen(e->d_name);
    return n > 4 && !strcmp(e->d_name + n - 4, ".npz");
}

/* Every NAME.npz of the models directory has a checkpoint's arrays (headers only). */
static int models_ok(svc *s, int *count, char *err, size_t errlen)
{
    struct dirent **ents = NULL;
    int n = scandir(s->models_dir, &ents, npz_file, alphasort), ok = n >= 0;
    *count = n > 0 ? n : 0;
    if (n < 0) eng_errf(err, errlen, ENG_EIO, "models: %s", strerror(errno));
    for (int i = 0; i < n; i++) {
        char path[4200];
        eng_arch ar;
        if (ok && !eng_path_join(path, sizeof path, s->models_dir, ents[i]->d_name) &&
            eng_arch_probe(path, &ar, err, errlen))
            ok = 0;
        free(ents[i]);
    }
    free(ents);
    if (!ok) svc__scrub(s, err, errlen);
    return ok;
}

void svc_ready(svc *s, svc_readiness *r)
{
    int64_t n;
    struct stat sb;
    memset(r, 0, sizeof *r);
    r->database = store_job_count(s->st, STORE_ANY, &n, NULL, 0) == 0;
    r->worker = !s->cfg.worker || (s->worker && wrk_alive(s->worker));
    r->models_dir = stat(s->models_dir, &sb) == 0 && S_ISDIR(sb.st_mode);
    r->models = r->models_dir && models_ok(s, &r->models_checked, r->models_error,
                                           sizeof r->models_error);
    r->ready = r->database && r->worker && r->models_dir && r->models;
    r->precision = eng_precision_name(eng_precision_resolve(s->cfg.infer.precision));
    r->isa = eng_cpu_isa();
    if (!r->models_checked)
        snprintf(r->hint, sizeof r->hint, "no base models in the models directory: fine-tune jobs need "
                 "one; " NO_MODELS_HINT);
}

int svc_metrics_text(svc *s, FILE *f)
{
    fprintf(f, "# HELP bit_jobs Fine-tune jobs by status.\n# TYPE bit_jobs gauge\n");
    for (int st = 0; st < STORE_NSTATUS; st++) {
        int64_t n = 0;
        if (store_job_count(s->st, (store_status)st, &n, NULL, 0) == 0)
            fprintf(f, "bit_jobs{status=\"%s\"} %lld\n", store_status_name((store_status)st), (long long)n);
    }
    fprintf(f, "# HELP bit_training_images_per_second Throughput of the running job.\n"
               "# TYPE bit_training_images_per_second gauge\nbit_training_images_per_second %g\n",
            s->worker ? wrk_images_per_sec(s->worker) : 0.0);
    fprintf(f, "# HELP bit_event_followers Open event streams of jobs (events?follow=true).\n"
               "# TYPE bit_event_followers gauge\nbit_event_followers %u\n", fol_count(s->follow));
    bud_metrics_text(s->mem, f);
    cores_metrics_text(s->cores, f);
    fprintf(f, "# HELP bit_inference_precision The precision of inference (1) and oneDNN's ISA.\n"
               "# TYPE bit_inference_precision gauge\nbit_inference_precision{precision=\"%s\",isa=\"%s\"} 1\n",
            eng_precision_name(eng_precision_resolve(s->cfg.infer.precision)), eng_cpu_isa());
    return inf_metrics_text(s->infer, f);
}
