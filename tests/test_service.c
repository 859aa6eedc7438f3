/* The service layer in-process: atomic job creation (a kill -9 between its statements leaves
 * no job), recovery of interrupted creations, the registry's one name rule, the run-directory
 * and data-directory layout helpers, a job that runs exactly what it resolved, dry runs, and
 * the follows of job events, and the core budget (cores follow the work, never past the
 * machine). */
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ftjson.h"
#include "npz.h"
#include "rundir.h"
#include "server/svc/cores.h"
#include "server/svc/paths.h"
#include "server/svc/registry.h"
#include "server/svc/svc.h"
#include "t.h"
#include "tdata.h"

static char err[1024];

/* ---------------------------------------------------------------- the core budget */

typedef struct grab {
    cores *c;
    int want, got;
} grab;

static void *grab_infer(void *ud)
{
    grab *g = ud;
    g->got = cores_infer_grant(g->c, g->want);
    cores_infer_release(g->c, g->got); /* the job takes its team back after this */
    return NULL;
}

static void *clear_queue(void *ud)
{
    usleep(20000); /* not a timing check: the yield must see the request first */
    cores_waiting(ud, 0);
    return NULL;
}

/* Idle, inference takes every core; a job takes cores - infer_share and inference then gets
 * the rest; with no share, inference waits until training yields to a waiting request; the
 * sum of what is held never passes the cores. */
static void cores_follow_the_work(void)
{
    cores *c = NULL;
    cores_stats st;
    cores_config cfg = {.cores = 4, .infer_share = 1, .train_yield_ms = 1};
    T_REQUIRE(cores_new(&cfg, &c, err, sizeof err) == 0);
    T_EQ(cores_train_team(c), 3);
    int n = cores_infer_grant(c, 0);
    T_EQ(n, 4); /* idle: every core */
    cores_infer_release(c, n);
    cores_train_acquire(c);
    n = cores_infer_grant(c, 0);
    T_EQ(n, 1); /* a job trains: the share */
    cores_get_stats(c, &st);
    T_EQ(st.infer_held + st.train_held, 4);
    /* a request waited past the bound: training lends its team, inference may take it all */
    cores_waiting(c, eng_now_ms() - 1000);
    pthread_t th;
    T_REQUIRE(pthread_create(&th, NULL, clear_queue, c) == 0);
    cores_infer_release(c, n);
    T_EQ(cores_train_yield(c), 1);
    pthread_join(th, NULL);
    cores_get_stats(c, &st);
    T_EQ(st.yields, 1ULL);
    T_EQ(st.train_held, 3);
    T_EQ(cores_train_yield(c), 0); /* nothing waits now */
    cores_train_release(c);
    cores_get_stats(c, &st);
    T_CHECKF(st.peak <= 4, "peak %d", st.peak);
    cores_free(c);

    /* no share: inference waits for the job to yield, then gets every core */
    cores_config none = {.cores = 2, .infer_share = -1, .train_yield_ms = 1};
    T_REQUIRE(cores_new(&none, &c, err, sizeof err) == 0);
    T_EQ(cores_train_team(c), 2);
    cores_train_acquire(c);
    grab g = {c, 0, 0};
    T_REQUIRE(pthread_create(&th, NULL, grab_infer, &g) == 0);
    cores_waiting(c, eng_now_ms() - 1000);
    pthread_t th2;
    T_REQUIRE(pthread_create(&th2, NULL, clear_queue, c) == 0);
    T_EQ(cores_train_yield(c), 1); /* lends the cores; inference takes them, gives them back */
    pthread_join(th, NULL);
    T_EQ(g.got, 2);
    pthread_join(th2, NULL);
    cores_get_stats(c, &st);
    T_EQ(st.train_held, 2);
    T_CHECKF(st.peak <= 2, "peak %d", st.peak);
    cores_train_release(c);
    cores_free(c);
}

static void put_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (f) fputs(text, f), fclose(f);
}

/* A fresh data dir and a models dir holding tiny.npz (the fixture model) under dir/name. */
static const char *setup(const char *name, char *data, char *models, size_t len)
{
    static char dir[600];
    char p[800];
    snprintf(dir, sizeof dir, "%s/%s", t_tmpdir(), name);
    snprintf(data, len, "%s/var", dir);
    snprintf(models, len, "%s/models", dir);
    mkdir(dir, 0755);
    mkdir(models, 0755);
    snprintf(p, sizeof p, "%s/tiny.npz", models);
    symlink(t_fixture("model.npz"), p);
    return dir;
}

static void tensor_dataset(const char *path, int n) { td_colours_npz(path, n, 3); }

/* Imports a fresh tensor dataset through the service (the upload is taken). */
static store_dataset *import(svc *s, const char *dir)
{
    char up[700];
    static int k;
    snprintf(up, sizeof up, "%s/upload-%d.npz", dir, k++);
    tensor_dataset(up, 30);
    svc_upload u = {.path = up, .name = "colors", .npz = 1, .bytes = 1};
    store_dataset *d = NULL;
    svc_err e;
    if (svc_dataset_import(s, &u, &d, &e)) fprintf(stderr, "  import: %s\n", e.msg);
    return d;
}

static svc *open_svc(const char *data, const char *models, int worker)
{
    svc_config c = {.data_dir = data, .models_dir = models, .worker = worker, .train_threads = 1};
    svc *s = NULL;
    if (svc_open(&c, &s, err, sizeof err)) fprintf(stderr, "  svc_open: %s\n", err);
    return s;
}

/* A data dir with one imported dataset and the service closed again: db and dsid say where. */
static int with_dataset(const char *name, char *data, char *models, size_t len, char db[800],
                        char dsid[STORE_ID_MAX])
{
    const char *dir = setup(name, data, models, len);
    svc *s = open_svc(data, models, 0);
    store_dataset *d = s ? import(s, dir) : NULL;
    if (d) snprintf(dsid, STORE_ID_MAX, "%s", d->id);
    store_dataset_free(d);
    svc_close(s);
    svc_path_db(data, db, 800);
    return d ? 0 : -1;
}

static int64_t count(const char *db, const char *sql)
{
    sqlite3 *h = NULL;
    sqlite3_stmt *st = NULL;
    int64_t v = -1;
    if (sqlite3_open(db, &h) == SQLITE_OK && sqlite3_prepare_v2(h, sql, -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(h);
    return v;
}

static void die_here(void *ud, const char *point)
{
    if (!strcmp(point, (const char *)ud)) raise(SIGKILL);
}

/* kill -9 between the job row and its status event: the transaction leaves nothing. */
static void creation_is_atomic(void)
{
    char data[700], models[700], db[800], dsid[STORE_ID_MAX];
    T_REQUIRE(with_dataset("atomic", data, models, sizeof data, db, dsid) == 0);
    svc *s;
    pid_t pid = fork();
    if (pid == 0) { /* the creation the service makes, killed in the middle */
        store *st = NULL;
        char id[STORE_ID_MAX];
        if (store_open(db, &st, err, sizeof err)) _exit(3);
        store_set_test_hook(st, die_here, "job_create: row inserted");
        store_job_new j = {.name = "doomed", .dataset_id = dsid, .base_model = "tiny",
                           .params_json = "{}", .resolved_json = "{\"steps\": 1}", .total_steps = 1};
        store_job_create(st, &j, id, err, sizeof err);
        _exit(4); /* the hook should have killed us */
    }
    int ws = 0;
    waitpid(pid, &ws, 0);
    T_CHECK(WIFSIGNALED(ws) && WTERMSIG(ws) == SIGKILL);
    T_EQ(count(db, "SELECT COUNT(*) FROM jobs"), 0);
    T_EQ(count(db, "SELECT COUNT(*) FROM job_events"), 0);
    /* and through the service, a job is complete and queued from its first moment */
    s = open_svc(data, models, 0);
    T_REQUIRE(s);
    json_t *hp = json_pack("{s:i, s:i}", "steps", 20, "batch", 6);
    svc_job_request rq = {.dataset = dsid, .base_model = "tiny", .name = "whole", .hyperparameters = hp};
    store_job *j = NULL;
    svc_err e;
    T_REQ_EQ(svc_job_create(s, &rq, NULL, &j, &e), 0);
    T_EQ(j->status, STORE_QUEUED);
    T_EQ(j->total_steps, 20);
    T_CHECK(j->resolved_json && strstr(j->resolved_json, "\"batch\":6"));
    T_EQ(count(db, "SELECT COUNT(*) FROM job_events WHERE type = 'status'"), 1);
    store_job_free(j);
    json_decref(hp);
    svc_close(s);
}

/* A job left in `validating` (by an older bitd or a crash) is failed at start-up, with an
 * event saying why, so it no longer blocks deleting its dataset. */
static void interrupted_creation_recovers(void)
{
    char data[700], models[700], db[800], id[STORE_ID_MAX], dsid[STORE_ID_MAX];
    T_REQUIRE(with_dataset("recover", data, models, sizeof data, db, dsid) == 0);
    svc *s;
    store *st = NULL;
    T_REQUIRE(store_open(db, &st, err, sizeof err) == 0);
    store_job_new j = {.name = "stuck", .dataset_id = dsid, .base_model = "tiny", .params_json = "{}"};
    T_REQUIRE(store_job_create(st, &j, id, err, sizeof err) == 0);
    store_close(st);
    s = open_svc(data, models, 0);
    T_REQUIRE(s);
    store_job *got = NULL;
    svc_err e;
    T_REQ_EQ(svc_job_get(s, id, &got, &e), 0);
    T_EQ(got->status, STORE_FAILED);
    T_STREQ(got->error_code, "interrupted");
    store_job_free(got);
    store_events ev = {0};
    T_REQ_EQ(svc_job_events(s, id, 0, 10, &ev, &e), 0);
    T_CHECK(ev.n == 2 && strstr(ev.v[1].data_json, "\"to\":\"failed\"") &&
            strstr(ev.v[1].data_json, "server stopped"));
    store_events_free(&ev);
    char gone[STORE_ID_MAX];
    T_EQ(svc_dataset_delete(s, dsid, gone, &e), 0);
    T_STREQ(gone, dsid);
    svc_close(s);
}

static void name_rules(void)
{
    T_CHECK(reg_name_ok("BiT-M-R50x1") && reg_name_ok("pets.v2") && reg_name_ok("a_b"));
    T_CHECK(!reg_name_ok("") && !reg_name_ok(".hidden") && !reg_name_ok("a/b") &&
            !reg_name_ok("a b") && !reg_name_ok("../x") && !reg_name_ok(NULL));
    char big[202];
    memset(big, 'a', 201), big[201] = 0;
    T_CHECK(!reg_name_ok(big));
    big[200] = 0;
    T_CHECK(reg_name_ok(big));
    /* ids are never names, so DELETE /v1/models/{id} can never hit a model named like one */
    T_CHECK(reg_is_id("mdl_0123456789abcdef") && reg_is_id("job_0123456789abcdef"));
    T_CHECK(!reg_name_ok("mdl_0123456789abcdef") && !reg_name_ok("ds_0123456789abcdef"));
    T_CHECK(!reg_is_id("mdl_0123456789abcde") && !reg_is_id("mdl_0123456789abcdeF") &&
            !reg_is_id("_0123456789abcdef") && reg_name_ok("mdl_0123456789abcdeg"));
}

/* One name space: a job may not take a base model's name, an id-shaped name, or a name in
 * use by another unfinished job; names and ids resolve as the rule says. */
static void job_names(void)
{
    char data[700], models[700], p[800];
    const char *dir = setup("names", data, models, sizeof data);
    snprintf(p, sizeof p, "%s/other.npz", models);
    symlink(t_fixture("model2.npz"), p);
    svc *s = open_svc(data, models, 0);
    T_REQUIRE(s);
    store_dataset *d = import(s, dir);
    T_REQUIRE(d);
    svc_err e;
    store_job *j = NULL;
    svc_job_request rq = {.dataset = d->id, .base_model = "tiny", .name = "other"};
    T_EQ(svc_job_create(s, &rq, NULL, &j, &e), STORE_EEXISTS);
    T_STREQ(e.reason, "name_taken");
    rq.name = "mdl_0123456789abcdef";
    T_EQ(svc_job_create(s, &rq, NULL, &j, &e), ENG_EINVAL);
    rq.name = "has space";
    T_EQ(svc_job_create(s, &rq, NULL, &j, &e), ENG_EINVAL);
    rq.name = "first";
    T_REQ_EQ(svc_job_create(s, &rq, NULL, &j, &e), 0);
    store_job_free(j);
    T_EQ(svc_job_create(s, &rq, NULL, &j, &e), STORE_EEXISTS); /* "first" is still queued */
    rq.name = NULL, rq.base_model = "nope";
    T_EQ(svc_job_create(s, &rq, NULL, &j, &e), SVC_EREF);
    T_STREQ(e.reason, "invalid_base_model");
    rq.base_model = "mdl_0123456789abcdef"; /* an id resolves by id only, never as a file */
    T_EQ(svc_job_create(s, &rq, NULL, &j, &e), SVC_EREF);
    svc_model m;
    T_REQ_EQ(svc_model_get(s, "other", &m, &e), 0);
    T_STREQ(m.kind, "base");
    T_EQ(m.num_classes, 7);
    svc_model_clear(&m);
    T_EQ(svc_model_get(s, "../models/tiny", &m, &e), ENG_ENOTFOUND);
    T_CHECK(!strstr(e.msg, data) && !strstr(e.msg, models)); /* no server paths */
    T_EQ(svc_model_delete(s, "tiny", &m, &e), STORE_ECONFLICT);
    store_dataset_free(d);
    svc_close(s);
}

/* The run-directory layout: names, checkpoint order, newest, pruning, state, removal. */
static void rundir_layout(void)
{
    char run[700], p[900], ck[900];
    snprintf(run, sizeof run, "%s/run", t_tmpdir());
    mkdir(run, 0755);
    T_CHECK(ft_rundir_path(run, FT_FILE_MODEL, p, sizeof p) == 0 && strstr(p, "/run/model.npz"));
    T_CHECK(ft_rundir_path(run, FT_FILE_STATE, p, 10) == ENG_EINVAL && p[0] == 0);
    T_CHECK(!ft_rundir_has_run(run));
    T_EQ(ft_rundir_newest(run, p, sizeof p), ENG_ENOTFOUND);
    snprintf(p, sizeof p, "%s/checkpoints", run);
    mkdir(p, 0755);
    T_CHECK(ft_rundir_has_run(run));
    int64_t steps[] = {20, 5, 100};
    for (int i = 0; i < 3; i++) {
        ft_rundir_checkpoint(run, steps[i], ck, sizeof ck);
        mkdir(ck, 0755);
        ft_rundir_path(ck, FT_FILE_MODEL, p, sizeof p);
        put_file(p, "x");
    }
    snprintf(p, sizeof p, "%s/checkpoints/step-12x", run); /* not a checkpoint */
    mkdir(p, 0755);
    ft_rundir_checkpoint_tmp(run, 7, p, sizeof p); /* an unfinished one */
    mkdir(p, 0755);
    ft_checkpoint *l = NULL;
    size_t n = 0;
    T_REQ_EQ(ft_rundir_checkpoints(run, &l, &n, err, sizeof err), 0);
    T_REQ_EQ(n, 3);
    T_CHECK(l[0].step == 5 && l[1].step == 20 && l[2].step == 100 && l[2].bytes == 1);
    free(l);
    T_CHECK(ft_rundir_newest(run, p, sizeof p) == 0 && strstr(p, "step-000000100"));
    ft_rundir_prune(run, 1, 20); /* the newest and step 20 */
    T_REQ_EQ(ft_rundir_checkpoints(run, &l, &n, err, sizeof err), 0);
    T_CHECK(n == 2 && l[0].step == 20);
    free(l);
    ft_rundir_path(run, FT_FILE_STATE, p, sizeof p);
    put_file(p, "{\"step\": 100, \"total_steps\": 100, \"architecture\": \"custom\", \"classes\": "
                "[\"a\", \"b\"], \"resolved\": {\"resolution\": [40, 32], \"seed\": 9}}");
    ft_run_info info;
    T_REQ_EQ(ft_rundir_info(run, &info, err, sizeof err), 0);
    T_CHECK(info.crop == 32 && info.precrop == 40 && info.seed == 9 && json_array_size(info.classes) == 2);
    T_STREQ(info.architecture, "custom");
    ft_run_info_clear(&info);
    put_file(p, "{\"step\": 1}");
    T_EQ(ft_rundir_info(run, &info, err, sizeof err), ENG_EFORMAT);
    static const ft_file files[] = {FT_FILE_MODEL, FT_FILE_LABELS, FT_FILE_OPTIMIZER, FT_FILE_METRICS};
    for (int i = 0; i < 4; i++) ft_rundir_path(run, files[i], p, sizeof p), put_file(p, "x");
    T_EQ(ft_rundir_remove(run, FT_RM_KEEP_MODEL, err, sizeof err), 0);
    ft_rundir_path(run, FT_FILE_MODEL, p, sizeof p);
    T_EQ(access(p, F_OK), 0);
    ft_rundir_path(run, FT_FILE_OPTIMIZER, p, sizeof p);
    T_NE(access(p, F_OK), 0);
    T_CHECK(!ft_rundir_has_run(run));
    T_EQ(ft_rundir_remove(run, FT_RM_ALL, err, sizeof err), 0);
    T_NE(access(run, F_OK), 0);
}

static void data_layout(void)
{
    char p[700], d[700];
    snprintf(d, sizeof d, "%s/layout", t_tmpdir());
    T_REQ_EQ(svc_paths_make(d, err, sizeof err), 0);
    T_CHECK(svc_path_db(d, p, sizeof p) == 0 && strstr(p, "/layout/bit.db"));
    T_CHECK(svc_path_tmp(d, p, sizeof p) == 0 && access(p, W_OK) == 0);
    T_CHECK(svc_path_dataset_data(d, "ds_1", p, sizeof p) == 0 && strstr(p, "datasets/ds_1/data") &&
            !strstr(p, ".npz"));
    svc_path_dataset_dir(d, "ds_1", p, sizeof p);
    mkdir(p, 0755);
    strcat(p, "/data.npz");
    put_file(p, "x");
    T_CHECK(svc_path_dataset_data(d, "ds_1", p, sizeof p) == 0 && strstr(p, "datasets/ds_1/data.npz"));
    T_CHECK(svc_path_base("/m", "tiny", SVC_BASE_LABELS, p, sizeof p) == 0 && !strcmp(p, "/m/tiny.labels.txt"));
    T_CHECK(svc_path_job_dir(d, "job_x", p, 8) == ENG_EINVAL);
}

static json_t *wait_job(svc *s, const char *id, store_job **j)
{
    svc_err e;
    for (int i = 0; i < 2400; i++, usleep(50000)) {
        if (svc_job_get(s, id, j, &e)) return NULL;
        if (store_status_terminal((*j)->status)) return json_object();
        store_job_free(*j);
        *j = NULL;
    }
    return NULL;
}

/* The worker runs the values resolved at creation, not a re-reading of the request: a job
 * whose stored request was corrupted afterwards still runs, and its model is registered. */
static void runs_what_was_resolved(void)
{
    char data[700], models[700], db[800];
    const char *dir = setup("resolved", data, models, sizeof data);
    svc *s = open_svc(data, models, 1);
    T_REQUIRE(s);
    store_dataset *d = import(s, dir);
    T_REQUIRE(d);
    json_t *hp = json_pack("{s:i, s:i, s:i}", "steps", 5, "batch", 6, "seed", 3);
    svc_job_request rq = {.dataset = d->id, .base_model = "tiny", .name = "exact", .hyperparameters = hp};
    store_job *j = NULL;
    svc_err e;
    T_REQ_EQ(svc_job_create(s, &rq, NULL, &j, &e), 0);
    char id[STORE_ID_MAX];
    snprintf(id, sizeof id, "%s", j->id);
    store_job_free(j);
    svc_path_db(data, db, sizeof db);
    sqlite3 *h = NULL;
    T_REQUIRE(sqlite3_open(db, &h) == SQLITE_OK);
    T_EQ(sqlite3_exec(h, "UPDATE jobs SET params_json = '{\"steps\": \"bogus\"}'", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(h);
    T_REQ_EQ(svc_start(s, err, sizeof err), 0);
    json_t *done = wait_job(s, id, &j);
    T_REQUIRE(done && j);
    json_decref(done);
    T_CHECKF(j->status == STORE_SUCCEEDED, "%s: %s", store_status_name(j->status),
             j->error_message ? j->error_message : "");
    T_EQ(j->step, 5);
    svc_model m;
    T_REQ_EQ(svc_model_get(s, "exact", &m, &e), 0);
    T_STREQ(m.kind, "fine-tuned");
    T_EQ(m.num_classes, 3);
    T_EQ(m.resolution, 32);
    svc_model_clear(&m);
    /* deleting the job keeps the model's files and drops the rest of the run */
    char run[800], p[900];
    svc_path_job_dir(data, id, run, sizeof run);
    T_EQ(svc_job_delete(s, id, &e), 0);
    ft_rundir_path(run, FT_FILE_MODEL, p, sizeof p);
    T_EQ(access(p, F_OK), 0);
    T_CHECK(!ft_rundir_has_run(run));
    /* and deleting the model then removes the whole run directory */
    T_EQ(svc_model_delete(s, "exact", &m, &e), 0);
    T_NE(access(run, F_OK), 0);
    store_job_free(j);
    store_dataset_free(d);
    json_decref(hp);
    svc_close(s);
}

/* A cancel that lands just before a shutdown wins: the job ends cancelled, not requeued to
 * run again on the next start (the worker may stop before it has read the flag). */
static void cancel_then_stop(void)
{
    char data[700], models[700];
    const char *dir = setup("cancelstop", data, models, sizeof data);
    svc *s = open_svc(data, models, 1);
    T_REQUIRE(s);
    store_dataset *d = import(s, dir);
    T_REQUIRE(d);
    json_t *hp = json_pack("{s:i, s:i}", "steps", 100000, "batch", 6);
    svc_job_request rq = {.dataset = d->id, .base_model = "tiny", .hyperparameters = hp};
    store_job *j = NULL;
    svc_err e;
    T_REQ_EQ(svc_job_create(s, &rq, NULL, &j, &e), 0);
    char id[STORE_ID_MAX];
    snprintf(id, sizeof id, "%s", j->id);
    store_job_free(j);
    j = NULL;
    T_REQ_EQ(svc_start(s, err, sizeof err), 0);
    int running = 0;
    for (int i = 0; i < 2400 && !running; i++, usleep(20000)) {
        if (svc_job_get(s, id, &j, &e)) break;
        running = j->status == STORE_RUNNING && j->step >= 1;
        store_job_free(j);
        j = NULL;
    }
    T_REQUIRE(running);
    T_REQ_EQ(svc_job_cancel(s, id, &j, &e), 0);
    store_job_free(j);
    j = NULL;
    svc_close(s);
    s = open_svc(data, models, 0);
    T_REQUIRE(s);
    T_REQ_EQ(svc_job_get(s, id, &j, &e), 0);
    T_CHECKF(j->status == STORE_CANCELLED, "%s", store_status_name(j->status));
    store_job_free(j);
    store_dataset_free(d);
    json_decref(hp);
    svc_close(s);
}

/* Upload and start: a request that fails leaves no dataset behind. */
static void failed_upload_start_leaves_nothing(void)
{
    char data[700], models[700], up[800];
    const char *dir = setup("upload", data, models, sizeof data);
    svc *s = open_svc(data, models, 0);
    T_REQUIRE(s);
    snprintf(up, sizeof up, "%s/up.npz", dir);
    svc_job_request bad[] = {{.base_model = "missing"},
                             {.base_model = "tiny", .name = "tiny"}};
    json_t *hp = json_pack("{s:i, s:i}", "batch", 6, "batch_split", 4);
    svc_job_request badhp = {.base_model = "tiny", .hyperparameters = hp};
    for (int i = 0; i < 3; i++) {
        tensor_dataset(up, 30);
        svc_upload u = {.path = up, .npz = 1, .bytes = 1};
        store_job *j = NULL;
        svc_err e;
        T_NE(svc_job_create(s, i < 2 ? &bad[i] : &badhp, &u, &j, &e), 0);
        T_NE(access(up, F_OK), 0); /* the upload was taken */
        store_datasets l = {0};
        T_REQ_EQ(svc_dataset_list(s, &l, &e), 0);
        T_EQ(l.n, 0);
        store_datasets_free(&l);
    }
    json_decref(hp);
    svc_close(s);
}

/* A linear-probe job and a job with a time budget, through the service: the plan is in the
 * resolved values at creation, the job runs it, and its duration sits beside the prediction;
 * a budget too small even for a linear probe is refused naming the minimum. */
static void modes_and_budgets(void)
{
    char data[700], models[700];
    const char *dir = setup("budgets", data, models, sizeof data);
    svc *s = open_svc(data, models, 1);
    T_REQUIRE(s);
    store_dataset *d = import(s, dir);
    T_REQUIRE(d);
    T_REQ_EQ(svc_start(s, err, sizeof err), 0);
    svc_err e;
    store_job *j = NULL;
    json_t *hp = json_pack("{s:s, s:i}", "mode", "linear", "batch", 6);
    svc_job_request rq = {.dataset = d->id, .base_model = "tiny", .name = "probe", .hyperparameters = hp};
    T_REQ_EQ(svc_job_create(s, &rq, NULL, &j, &e), 0);
    T_CHECK(strstr(j->resolved_json, "\"mode\":\"linear\""));
    char id[STORE_ID_MAX];
    snprintf(id, sizeof id, "%s", j->id);
    store_job_free(j);
    json_t *w = wait_job(s, id, &j);
    json_decref(w);
    T_CHECKF(j && j->status == STORE_SUCCEEDED && !isnan(j->val_top1), "%s",
             !j ? "still running" : j->error_message ? j->error_message : "");
    store_job_free(j);
    svc_model m;
    T_REQ_EQ(svc_model_get(s, "probe", &m, &e), 0);
    T_EQ(m.num_classes, 3);
    svc_model_clear(&m);
    json_decref(hp);
    /* a budget: the plan and its prediction at creation; the job keeps to it */
    hp = json_pack("{s:f, s:i}", "budget_minutes", 1.0, "batch", 6);
    rq = (svc_job_request){.dataset = d->id, .base_model = "tiny", .name = "timed", .hyperparameters = hp};
    T_REQ_EQ(svc_job_create(s, &rq, NULL, &j, &e), 0);
    json_t *r = json_loads(j->resolved_json, 0, NULL), *plan = json_object_get(r, "plan");
    double predicted = json_number_value(json_object_get(plan, "predicted_seconds"));
    T_CHECKF(json_is_object(plan) && predicted > 0 && predicted <= 60, "predicted %g s", predicted);
    json_decref(r);
    snprintf(id, sizeof id, "%s", j->id);
    store_job_free(j);
    j = NULL;
    w = wait_job(s, id, &j);
    json_decref(w);
    T_CHECKF(j && j->status == STORE_SUCCEEDED, "%s", j ? store_status_name(j->status) : "still running");
    store_job_free(j);
    json_decref(hp);
    /* the cache of measured speeds now exists */
    char cache[800];
    snprintf(cache, sizeof cache, "%s/throughput.json", data);
    T_EQ(access(cache, F_OK), 0);
    hp = json_pack("{s:f}", "budget_minutes", 0.1);
    rq = (svc_job_request){.dataset = d->id, .base_model = "tiny", .hyperparameters = hp};
    int rc = svc_job_create(s, &rq, NULL, &j, &e);
    if (rc == 0) { /* the tiny model at 32 px may fit 6 s: then it is a linear probe */
        T_CHECK(strstr(j->resolved_json, "\"mode\":\"linear\"") != NULL);
        store_job_free(j);
    } else {
        T_EQ(rc, ENG_EINVAL);
        T_CHECK(strstr(e.msg, "at least"));
    }
    json_decref(hp);
    store_dataset_free(d);
    svc_close(s);
}


/* A dry run resolves exactly what creation stores, refuses what creation refuses with the same
 * error, and creates nothing: no job, and an uploaded dataset is measured, then removed. */
static void dry_runs(void)
{
    char data[700], models[700], up[800];
    const char *dir = setup("dry", data, models, sizeof data);
    svc *s = open_svc(data, models, 0);
    T_REQUIRE(s);
    store_dataset *d = import(s, dir);
    T_REQUIRE(d);
    json_t *hp = json_pack("{s:i, s:i, s:[i,i]}", "steps", 40, "batch", 6, "resolution", 48, 32);
    svc_job_request rq = {.dataset = d->id, .base_model = "tiny", .name = "dry", .hyperparameters = hp};
    json_t *r = NULL;
    svc_err e;
    T_REQ_EQ(svc_job_resolve(s, &rq, NULL, &r, &e), 0);
    store_jobs l = {0};
    T_REQ_EQ(svc_job_list(s, NULL, NULL, 10, &l, &e), 0);
    T_EQ(l.n, 0);
    store_jobs_free(&l);
    store_job *j = NULL;
    T_REQ_EQ(svc_job_create(s, &rq, NULL, &j, &e), 0);
    json_t *stored = json_loads(j->resolved_json, 0, NULL);
    T_CHECK(json_equal(r, stored));
    T_EQ(json_integer_value(json_object_get(r, "steps")), 40);
    json_decref(stored), json_decref(r);
    store_job_free(j);
    /* the same refusals: a taken name, a bad value, an unknown base model */
    svc_err e1, e2;
    json_t *bad = json_pack("{s:i}", "batch", 0);
    svc_job_request refused[] = {rq, {.dataset = d->id, .base_model = "tiny", .hyperparameters = bad},
                                 {.dataset = d->id, .base_model = "missing"}};
    for (int i = 0; i < 3; i++) {
        r = NULL;
        int a = svc_job_resolve(s, &refused[i], NULL, &r, &e1);
        int b = svc_job_create(s, &refused[i], NULL, &j, &e2);
        T_CHECKF(a != 0 && a == b && !strcmp(e1.reason, e2.reason) && !strcmp(e1.msg, e2.msg) && !r,
                 "%d: %d %s / %d %s", i, a, e1.msg, b, e2.msg);
    }
    json_decref(bad);
    /* with an upload: resolved against it, and it is gone afterwards */
    snprintf(up, sizeof up, "%s/dry-up.npz", dir);
    tensor_dataset(up, 30);
    svc_upload u = {.path = up, .npz = 1, .bytes = 1};
    svc_job_request anon = {.base_model = "tiny", .hyperparameters = hp};
    T_REQ_EQ(svc_job_resolve(s, &anon, &u, &r, &e), 0);
    T_EQ(json_integer_value(json_object_get(r, "steps")), 40);
    json_decref(r);
    T_NE(access(up, F_OK), 0);
    store_datasets ds = {0};
    T_REQ_EQ(svc_dataset_list(s, &ds, &e), 0);
    T_EQ(ds.n, 1); /* only the one imported above */
    store_datasets_free(&ds);
    json_decref(hp);
    store_dataset_free(d);
    svc_close(s);
}

/* ---- follows: the follower thread's contract, with recording callbacks ---- */

typedef struct rec {
    pthread_mutex_t mu;
    int64_t seqs[8192];
    int n, ends, refuse_every, offers, stop_at, out_of_order;
    char status[32];  /* "" for end(ud, NULL) */
    pthread_t thread; /* the thread the callbacks ran on */
} rec;

static int rec_event(void *ud, const store_event *ev)
{
    rec *r = ud;
    pthread_mutex_lock(&r->mu);
    int rc = 0;
    r->thread = pthread_self();
    if (r->refuse_every && ++r->offers % r->refuse_every == 0) rc = SVC_FOLLOW_LATER;
    else if (r->stop_at && ev->seq == r->stop_at) rc = -1;
    else if (r->n < 8192) {
        r->out_of_order += r->n && ev->seq != r->seqs[r->n - 1] + 1;
        r->seqs[r->n++] = ev->seq;
    }
    pthread_mutex_unlock(&r->mu);
    return rc;
}

static void rec_end(void *ud, const char *status)
{
    rec *r = ud;
    pthread_mutex_lock(&r->mu);
    r->ends++;
    r->thread = pthread_self();
    snprintf(r->status, sizeof r->status, "%s", status ? status : "");
    pthread_mutex_unlock(&r->mu);
}

static const svc_follow_ops rec_ops = {rec_event, rec_end};

static void rec_init(rec *r)
{
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->mu, NULL);
}

static int rec_ended(rec *r, double seconds)
{
    for (int i = 0; i < seconds * 100; i++, usleep(10000)) {
        pthread_mutex_lock(&r->mu);
        int e = r->ends;
        pthread_mutex_unlock(&r->mu);
        if (e) return 1;
    }
    return 0;
}

static int rec_count(rec *r)
{
    pthread_mutex_lock(&r->mu);
    int n = r->n;
    pthread_mutex_unlock(&r->mu);
    return n;
}

/* Whether r holds n events within seconds (the follower's turns are 100 ms, longer under load). */
static int rec_reaches(rec *r, int n, double seconds)
{
    for (int i = 0; i < seconds * 100 && rec_count(r) < n; i++) usleep(10000);
    return rec_count(r) >= n;
}

static svc_follow *follow(svc *s, const char *job, int64_t after, rec *r)
{
    svc_follow *f = NULL;
    svc_err e;
    if (svc_job_follow(s, job, after, &rec_ops, r, &f, &e)) fprintf(stderr, "  follow: %s\n", e.msg);
    return f;
}

static char *queued_job(svc *s, const char *ds, char id[STORE_ID_MAX])
{
    store_job *j = NULL;
    svc_err e;
    svc_job_request rq = {.dataset = ds, .base_model = "tiny"};
    if (svc_job_create(s, &rq, NULL, &j, &e)) return fprintf(stderr, "  create: %s\n", e.msg), NULL;
    snprintf(id, STORE_ID_MAX, "%s", j->id);
    store_job_free(j);
    return id;
}

/* Events written by another connection (as a worker in another process would) reach every
 * follow once, in order, across pages; a reader that refuses (behind) gets the same events
 * later; the terminal status ends each follow with its status; a follow of a finished job
 * gets its backlog and end at once, one that starts past the end only the end; cancel and a
 * refusing callback end with NULL; nothing runs for a dropped follow. */
static void follows(void)
{
    char data[700], models[700], db[800], id[STORE_ID_MAX];
    const char *dir = setup("follows", data, models, sizeof data);
    svc *s = open_svc(data, models, 0);
    T_REQUIRE(s);
    store_dataset *d = import(s, dir);
    T_REQUIRE(d && queued_job(s, d->id, id));
    T_REQ_EQ(svc_start(s, err, sizeof err), 0);
    static rec plain, slow, cancelled, dropped, quits;
    rec_init(&plain), rec_init(&slow), rec_init(&cancelled), rec_init(&dropped), rec_init(&quits);
    slow.refuse_every = 50; /* each refusal costs it a turn (100 ms) */
    quits.stop_at = 5;
    svc_follow *f[5] = {follow(s, id, 0, &plain), follow(s, id, 0, &slow),
                        follow(s, id, 0, &cancelled), follow(s, id, 0, &dropped),
                        follow(s, id, 0, &quits)};
    for (int i = 0; i < 5; i++) T_REQUIRE(f[i]);
    svc_follow_drop(f[3]);
    svc_follow_cancel(f[2]); /* before start, as a client gone at once */
    for (int i = 0; i < 5; i++)
        if (i != 3) svc_follow_start(f[i]);
    T_CHECK(rec_ended(&cancelled, 5) && cancelled.ends == 1 && !cancelled.status[0]);
    store *st = NULL;
    svc_path_db(data, db, sizeof db);
    T_REQ_EQ(store_open(db, &st, err, sizeof err), 0);
    int64_t last = 0;
    for (int i = 0; i < 600; i++) {
        char ev[64];
        snprintf(ev, sizeof ev, "{\"loss\": %d}", i);
        T_REQ_EQ(store_event_add(st, id, "train", i, ev, &last, err, sizeof err), 0);
        if (i % 150 == 0) usleep(150000); /* some while they follow, most in one burst */
    }
    store_close(st);
    store_job *j = NULL;
    svc_err e;
    T_REQ_EQ(svc_job_cancel(s, id, &j, &e), 0);
    store_job_free(j);
    T_CHECK(rec_ended(&plain, 10));
    T_CHECK(rec_ended(&slow, 10));
    T_CHECK(rec_ended(&quits, 5) && !quits.status[0] && quits.n == 4); /* 1..4, then it quit */
    for (rec *r = &plain; r; r = r == &plain ? &slow : NULL) {
        T_STREQ(r->status, "cancelled");
        T_EQ(r->ends, 1);
        T_EQ(r->n, (int)last + 1); /* every event and the terminal status event */
        T_EQ(r->out_of_order, 0);
        T_EQ(r->seqs[0], 1);
        T_CHECK(!pthread_equal(r->thread, pthread_self()));
    }
    T_GT(slow.offers, slow.n); /* it did refuse, and still got everything */
    T_EQ(dropped.n + dropped.ends, 0);
    /* a finished job: the backlog and the end at once; past its end, only the end */
    static rec backlog, past, middle;
    rec_init(&backlog), rec_init(&past), rec_init(&middle);
    svc_follow_start(follow(s, id, 0, &backlog));
    svc_follow_start(follow(s, id, last + 1, &past));
    svc_follow_start(follow(s, id, 100, &middle));
    T_CHECK(rec_ended(&backlog, 5) && rec_ended(&past, 5) && rec_ended(&middle, 5));
    T_CHECK(backlog.n == last + 1 && !strcmp(backlog.status, "cancelled"));
    T_CHECK(past.n == 0 && !strcmp(past.status, "cancelled"));
    T_CHECK(middle.n == last + 1 - 100 && middle.seqs[0] == 101 && !strcmp(middle.status, "cancelled"));
    /* a burst longer than a turn's pages reaches a live follow, with nothing newer coming */
    char id2[STORE_ID_MAX];
    T_REQUIRE(queued_job(s, d->id, id2));
    static rec longer;
    rec_init(&longer);
    svc_follow_start(follow(s, id2, 0, &longer));
    rec_reaches(&longer, 1, 10); /* its first event */
    sqlite3 *h = NULL;
    T_REQUIRE(sqlite3_open(db, &h) == SQLITE_OK);
    char sql[256];
    T_EQ(sqlite3_exec(h, "BEGIN", NULL, NULL, NULL), SQLITE_OK);
    for (int i = 2; i <= 5001; i++) {
        snprintf(sql, sizeof sql, "INSERT INTO job_events (job_id, seq, time, type, step, data_json)"
                 " VALUES ('%s', %d, 0, 'note', NULL, NULL)", id2, i);
        T_REQUIRE(sqlite3_exec(h, sql, NULL, NULL, NULL) == SQLITE_OK);
    }
    T_EQ(sqlite3_exec(h, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(h);
    rec_reaches(&longer, 5001, 30);
    T_CHECKF(longer.n == 5001 && longer.out_of_order == 0, "%d events, %d out of order", longer.n,
             longer.out_of_order);
    T_REQ_EQ(svc_job_cancel(s, id2, &j, &e), 0);
    store_job_free(j);
    T_CHECK(rec_ended(&longer, 5) && longer.n == 5002 && !strcmp(longer.status, "cancelled"));
    /* no such job */
    svc_follow *none = NULL;
    T_EQ(svc_job_follow(s, "job_0123456789abcdef", 0, &rec_ops, &plain, &none, &e), ENG_ENOTFOUND);
    T_CHECK(none == NULL);
    store_dataset_free(d);
    svc_close(s);
}

/* max_followers bounds the follows that exist (SVC_EBUSY beyond, room again once one ends);
 * stopping the service ends every live follow with NULL, and one started after that ends at
 * once on the starting thread. */
static void follow_limits_and_stop(void)
{
    char data[700], models[700], id[STORE_ID_MAX];
    const char *dir = setup("follow-limits", data, models, sizeof data);
    svc_config c = {.data_dir = data, .models_dir = models, .max_followers = 3};
    svc *s = NULL;
    T_REQ_EQ(svc_open(&c, &s, err, sizeof err), 0);
    store_dataset *d = import(s, dir);
    T_REQUIRE(d && queued_job(s, d->id, id));
    T_REQ_EQ(svc_start(s, err, sizeof err), 0);
    static rec r[5];
    for (int i = 0; i < 5; i++) rec_init(&r[i]);
    svc_follow *f[4];
    svc_err e;
    for (int i = 0; i < 3; i++) T_REQUIRE((f[i] = follow(s, id, 0, &r[i])));
    T_EQ(svc_job_follow(s, id, 0, &rec_ops, &r[3], &f[3], &e), SVC_EBUSY);
    T_STREQ(e.reason, "too_many_followers");
    T_GT(e.retry_after_s, 0);
    svc_follow_drop(f[2]);
    T_REQUIRE((f[3] = follow(s, id, 0, &r[3])));
    svc_follow_start(f[0]), svc_follow_start(f[1]), svc_follow_start(f[3]);
    T_CHECK(rec_reaches(&r[0], 1, 20));
    T_EQ(rec_count(&r[0]), 1); /* the job's first status event; it is still queued */
    T_EQ(r[0].ends, 0);
    svc_follow *late = follow(s, id, 0, &r[4]);
    T_REQUIRE(late == NULL); /* full again */
    svc_stop(s);
    for (int i = 0; i < 4; i++)
        if (i != 2) T_CHECK(r[i].ends == 1 && !r[i].status[0]);
    T_REQUIRE((late = follow(s, id, 0, &r[4])));
    svc_follow_start(late); /* no follower thread now: it ends here and now */
    T_CHECK(r[4].ends == 1 && r[4].n == 0 && pthread_equal(r[4].thread, pthread_self()));
    store_dataset_free(d);
    svc_close(s);
}

int main(void)
{
    T_RUN(cores_follow_the_work);
    T_RUN(creation_is_atomic);
    T_RUN(interrupted_creation_recovers);
    T_RUN(name_rules);
    T_RUN(job_names);
    T_RUN(rundir_layout);
    T_RUN(data_layout);
    T_RUN(runs_what_was_resolved);
    T_RUN(cancel_then_stop);
    T_RUN(failed_upload_start_leaves_nothing);
    T_RUN(modes_and_budgets);
    T_RUN(dry_runs);
    T_RUN(follows);
    T_RUN(follow_limits_and_stop);
    return t_done();
}
