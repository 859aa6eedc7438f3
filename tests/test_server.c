/* bit serve over real HTTP: datasets, jobs to a model, cancel, events, every error status,
 * hostile uploads, and a kill -9 in the middle of a job that resumes after a restart. */
#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "net.h"
#include "npz.h"
#include "storage/store.h"
#include "t.h"
#include "tdata.h"
#include "thttp.h"
#include "tserve.h"

static char err[512];

typedef ts_server server;

static int server_start(server *s, const char *dir, const char *const *extra)
{
    return ts_start(s, getenv("BIT_BIN"), dir, "tiny", t_fixture("model.npz"), extra);
}

static int server_stop(server *s, int sig) { return ts_stop(s, sig); }

/* Request returning parsed JSON (NULL if the body is not JSON); status into *status. */
static json_t *call(const server *s, const char *method, const char *path, const char *hdr,
                    const void *body, size_t len, int *status)
{
    th_resp r;
    if (th_request(s->port, method, path, hdr, body, len, &r)) {
        *status = -1;
        return NULL;
    }
    *status = r.status;
    json_t *j = json_loads(r.body, 0, NULL);
    th_free(&r);
    return j;
}

static const char *str(json_t *j, const char *k) { return json_string_value(json_object_get(j, k)); }

static void *slurp(const char *path, size_t *len)
{
    void *b = NULL;
    eng_file_read(path, 1 << 30, &b, len, err, sizeof err);
    return b;
}

/* A tensor dataset (.npz, tests/tdata.h) of n images, one class per colour channel. */
static const char *tensor_dataset(int n, int classes)
{
    static char path[600];
    snprintf(path, sizeof path, "%s/data-%d-%d.npz", t_tmpdir(), n, classes);
    td_colours_npz(path, n, classes);
    return path;
}

/* Uploads a file as a dataset; returns its id (static) or NULL. */
static const char *upload(const server *s, const char *path, const char *query, int *status)
{
    static char id[64];
    size_t len;
    void *b = slurp(path, &len);
    char p[256];
    snprintf(p, sizeof p, "/v1/datasets%s", query ? query : "");
    json_t *j = call(s, "POST", p, "Content-Type: application/octet-stream\r\n", b, len, status);
    free(b);
    id[0] = 0;
    if (j && str(j, "id")) snprintf(id, sizeof id, "%s", str(j, "id"));
    json_decref(j);
    return id[0] ? id : NULL;
}

/* Creates a job; returns its id (static) or NULL. */
static const char *new_job(const server *s, const char *ds, const char *hp, int *status)
{
    static char id[64];
    char body[1024];
    snprintf(body, sizeof body, "{\"dataset\": \"%s\", \"base_model\": \"tiny\", \"hyperparameters\": %s}", ds, hp);
    json_t *j = call(s, "POST", "/v1/jobs", "Content-Type: application/json\r\n", body, strlen(body), status);
    id[0] = 0;
    if (j && str(j, "id")) snprintf(id, sizeof id, "%s", str(j, "id"));
    json_decref(j);
    return id[0] ? id : NULL;
}

/* Polls a job until its status is `want` (or any terminal one); returns the last JSON. */
static json_t *wait_job(const server *s, const char *id, const char *want, double seconds)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/jobs/%s", id);
    for (int i = 0; i < seconds * 20; i++) {
        int st;
        json_t *j = call(s, "GET", path, NULL, NULL, 0, &st);
        const char *now = j ? str(j, "status") : NULL;
        if (now && (!strcmp(now, want) || !strcmp(now, "failed") || !strcmp(now, "succeeded") ||
                    !strcmp(now, "cancelled")))
            return j;
        json_decref(j);
        usleep(50000);
    }
    return NULL;
}

static int64_t job_step(json_t *j)
{
    return json_integer_value(json_object_get(json_object_get(j, "progress"), "step"));
}

static void server_dir(char *buf, size_t n, const char *name)
{
    snprintf(buf, n, "%s/%s", t_tmpdir(), name);
}

static void dataset_upload_and_job(void)
{
    server s;
    char dir[600];
    server_dir(dir, sizeof dir, "flow");
    T_REQUIRE(server_start(&s, dir, NULL) == 0);
    int st;
    json_t *j = call(&s, "GET", "/healthz", NULL, NULL, 0, &st);
    T_CHECK(st == 200 && !strcmp(str(j, "status"), "ok"));
    json_decref(j);
    const char *ds = upload(&s, tensor_dataset(60, 3), "?format=npz&name=colors", &st);
    T_REQUIRE(st == 201 && ds);
    char dsid[64], path[256];
    snprintf(dsid, sizeof dsid, "%s", ds);
    snprintf(path, sizeof path, "/v1/datasets/%s", dsid);
    j = call(&s, "GET", path, NULL, NULL, 0, &st);
    T_CHECK(st == 200 && json_integer_value(json_object_get(j, "num_classes")) == 3 && !strcmp(str(j, "name"), "colors"));
    json_decref(j);
    const char *id = new_job(&s, dsid, "{\"steps\": 12, \"batch\": 12, \"base_lr\": 0.03, \"eval_every\": 6}", &st);
    T_REQUIRE(st == 201 && id);
    char jid[64];
    snprintf(jid, sizeof jid, "%s", id);
    j = wait_job(&s, jid, "succeeded", 60);
    T_REQUIRE(j);
    T_CHECKF(!strcmp(str(j, "status"), "succeeded"), "status %s: %s", str(j, "status"),
             json_dumps(json_object_get(j, "error"), 0));
    T_CHECK(str(j, "model") != NULL && job_step(j) == 12);
    T_CHECK(json_is_number(json_object_get(json_object_get(j, "metrics"), "val_top1")));
    T_CHECK(json_integer_value(json_object_get(json_object_get(j, "hyperparameters"), "batch")) == 12);
    json_decref(j);
    snprintf(path, sizeof path, "/v1/jobs/%s/events?after=0", jid);
    j = call(&s, "GET", path, NULL, NULL, 0, &st);
    json_t *ev = json_object_get(j, "events");
    int types[4] = {0};
    for (size_t i = 0; i < json_array_size(ev); i++) {
        const char *t = str(json_array_get(ev, i), "type");
        types[0] += !strcmp(t, "status"), types[1] += !strcmp(t, "train");
        types[2] += !strcmp(t, "eval"), types[3] += !strcmp(t, "checkpoint");
        if (i) T_CHECK(json_integer_value(json_object_get(json_array_get(ev, i), "seq")) >
                       json_integer_value(json_object_get(json_array_get(ev, i - 1), "seq")));
    }
    /* status: queued (at creation, with the resolved values), running, succeeded */
    T_CHECKF(types[0] == 3 && types[1] >= 1 && types[2] >= 2 && types[3] >= 1, "%d %d %d %d",
             types[0], types[1], types[2], types[3]);
    json_decref(j);
    snprintf(path, sizeof path, "/v1/jobs/%s/checkpoints", jid);
    j = call(&s, "GET", path, NULL, NULL, 0, &st);
    T_CHECK(st == 200 && json_array_size(json_object_get(j, "checkpoints")) >= 1);
    json_decref(j);
    j = call(&s, "GET", "/v1/jobs?status=succeeded&limit=1", NULL, NULL, 0, &st);
    T_CHECK(st == 200 && json_array_size(json_object_get(j, "jobs")) == 1);
    json_decref(j);
    /* the dataset is free again: delete removes it and its files */
    snprintf(path, sizeof path, "/v1/datasets/%s", dsid);
    j = call(&s, "DELETE", path, NULL, NULL, 0, &st);
    T_EQ(st, 200);
    json_decref(j);
    j = call(&s, "GET", path, NULL, NULL, 0, &st);
    T_CHECK(st == 404 && json_object_get(json_object_get(j, "error"), "code"));
    json_decref(j);
    char files[800];
    snprintf(files, sizeof files, "%s/var/datasets/%s", dir, dsid);
    struct stat sb;
    T_NE(stat(files, &sb), 0);
    T_CHECK(WIFEXITED(server_stop(&s, SIGTERM)));
}

/* Upload and start in one multipart request, as with curl -F. */
static void multipart_job(void)
{
    server s;
    char dir[600], ctype[256];
    server_dir(dir, sizeof dir, "multipart");
    T_REQUIRE(server_start(&s, dir, NULL) == 0);
    size_t len, blen;
    void *data = slurp(tensor_dataset(30, 2), &len);
    const char *params = "{\"base_model\": \"tiny\", \"name\": \"two\", \"hyperparameters\": {\"steps\": 4, \"batch\": 6}}";
    th_part parts[] = {{"dataset", "two.npz", data, len}, {"params", NULL, params, strlen(params)}};
    char *body = th_multipart(parts, 2, &blen, ctype, sizeof ctype);
    int st;
    json_t *j = call(&s, "POST", "/v1/jobs", ctype, body, blen, &st);
    T_CHECKF(st == 201, "status %d", st);
    char id[64] = "";
    if (j && str(j, "id")) snprintf(id, sizeof id, "%s", str(j, "id"));
    json_decref(j);
    j = id[0] ? wait_job(&s, id, "succeeded", 60) : NULL;
    T_CHECK(j && !strcmp(str(j, "status"), "succeeded") && !strcmp(str(j, "name"), "two"));
    json_decref(j);
    /* a multipart dataset upload on its own */
    th_part up[] = {{"file", "again.npz", data, len}};
    free(body);
    body = th_multipart(up, 1, &blen, ctype, sizeof ctype);
    j = call(&s, "POST", "/v1/datasets", ctype, body, blen, &st);
    T_CHECK(st == 201 && !strcmp(str(j, "name"), "again.npz"));
    json_decref(j);
    free(body);
    free(data);
    server_stop(&s, SIGTERM);
}

static void cancel_running_job(void)
{
    server s;
    char dir[600], path[256];
    server_dir(dir, sizeof dir, "cancel");
    T_REQUIRE(server_start(&s, dir, NULL) == 0);
    int st;
    const char *ds = upload(&s, tensor_dataset(30, 3), "?format=npz", &st);
    T_REQUIRE(ds);
    char dsid[64], jid[64];
    snprintf(dsid, sizeof dsid, "%s", ds);
    const char *id = new_job(&s, dsid, "{\"steps\": 100000, \"batch\": 6}", &st);
    T_REQUIRE(id);
    snprintf(jid, sizeof jid, "%s", id);
    json_t *j = wait_job(&s, jid, "running", 30);
    T_REQUIRE(j && !strcmp(str(j, "status"), "running"));
    json_decref(j);
    /* once it reports its speed, the estimated finish comes with the seconds left */
    json_t *p = NULL;
    j = NULL;
    for (int i = 0; i < 600 && !json_is_number(json_object_get(p, "images_per_sec")); i++) {
        json_decref(j);
        usleep(50000);
        snprintf(path, sizeof path, "/v1/jobs/%s", jid);
        j = call(&s, "GET", path, NULL, NULL, 0, &st);
        p = json_object_get(j, "progress");
    }
    T_CHECK(json_is_number(json_object_get(p, "eta_seconds")) && json_number_value(json_object_get(p, "eta_seconds")) >= 0 &&
            json_is_string(json_object_get(p, "estimated_finish")));
    json_decref(j);
    /* while it runs its dataset cannot go */
    snprintf(path, sizeof path, "/v1/datasets/%s", dsid);
    j = call(&s, "DELETE", path, NULL, NULL, 0, &st);
    T_CHECK(st == 409 && !strcmp(str(json_object_get(j, "error"), "code"), "in_use"));
    json_decref(j);
    snprintf(path, sizeof path, "/v1/jobs/%s/cancel", jid);
    j = call(&s, "POST", path, NULL, NULL, 0, &st);
    T_EQ(st, 200);
    /* answered as it will be: cancelling (or already cancelled if the worker was that quick) */
    const char *now = j ? str(j, "status") : "";
    T_CHECKF((!strcmp(now, "cancelling") && json_is_true(json_object_get(j, "cancel_requested"))) ||
             !strcmp(now, "cancelled"), "%s", now);
    json_decref(j);
    j = wait_job(&s, jid, "cancelled", 20);
    T_CHECK(j && !strcmp(str(j, "status"), "cancelled") && job_step(j) < 100000);
    json_decref(j);
    j = call(&s, "POST", path, NULL, NULL, 0, &st);
    T_EQ(st, 409);
    json_decref(j);
    server_stop(&s, SIGTERM);
}

/* A tar whose one entry climbs out of the destination. */
static const char *hostile_tar(void)
{
    static char path[600];
    snprintf(path, sizeof path, "%s/evil.tar", t_tmpdir());
    struct archive *a = archive_write_new();
    archive_write_set_format_pax_restricted(a);
    archive_write_open_filename(a, path);
    struct archive_entry *e = archive_entry_new();
    archive_entry_set_pathname(e, "cats/../../evil.png");
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0644);
    archive_entry_set_size(e, 4);
    archive_write_header(a, e);
    archive_write_data(a, "evil", 4);
    archive_entry_free(e);
    archive_write_close(a);
    archive_write_free(a);
    return path;
}

static int expect(const server *s, const char *method, const char *path, const char *hdr,
                  const char *body, int want, const char *in_message)
{
    int st;
    json_t *j = call(s, method, path, hdr, body, body ? strlen(body) : 0, &st);
    json_t *e = json_object_get(j, "error");
    const char *msg = str(e, "message");
    int ok = st == want && str(e, "code") && (!in_message || (msg && strstr(msg, in_message)));
    if (!ok) fprintf(stderr, "  %s %s: %d (wanted %d) %s\n", method, path, st, want, msg ? msg : "");
    json_decref(j);
    return ok;
}

static void error_statuses(void)
{
    server s;
    char dir[600];
    server_dir(dir, sizeof dir, "errors");
    const char *extra[] = {"--max-upload-mb", "1", "--max-queued", "1", NULL};
    T_REQUIRE(server_start(&s, dir, extra) == 0);
    const char *js = "Content-Type: application/json\r\n";
    T_CHECK(expect(&s, "POST", "/v1/jobs", js, "{not json", 400, NULL));
    T_CHECK(expect(&s, "POST", "/v1/jobs", js, "{\"dataset\": \"x\", \"base_model\": \"tiny\", \"colour\": 1}", 400, "colour"));
    T_CHECK(expect(&s, "GET", "/v1/jobs/job_0000000000000000", NULL, NULL, 404, NULL));
    T_CHECK(expect(&s, "GET", "/v1/nothing", NULL, NULL, 404, NULL));
    T_CHECK(expect(&s, "PUT", "/v1/datasets", NULL, NULL, 405, NULL));
    T_CHECK(expect(&s, "POST", "/v1/datasets", "Content-Type: text/plain\r\n", "hello", 415, NULL));
    T_CHECK(expect(&s, "POST", "/v1/datasets", "Content-Type: application/x-tar\r\n", "not an archive at all", 422, NULL));
    T_CHECK(expect(&s, "GET", "/v1/jobs?limit=0", NULL, NULL, 400, "limit"));
    T_CHECK(expect(&s, "GET", "/v1/jobs?status=bogus", NULL, NULL, 400, "status"));
    int st;
    size_t len;
    void *evil = slurp(hostile_tar(), &len);
    json_t *j = call(&s, "POST", "/v1/datasets", "Content-Type: application/x-tar\r\n", evil, len, &st);
    T_CHECK(st == 422 && strstr(str(json_object_get(j, "error"), "message"), ".."));
    json_decref(j);
    free(evil);
    char parent[700];
    snprintf(parent, sizeof parent, "%s/var/evil.png", dir);
    T_NE(access(parent, F_OK), 0);
    char *big = calloc(1, 2 << 20);
    j = call(&s, "POST", "/v1/datasets", "Content-Type: application/x-tar\r\n", big, 2 << 20, &st);
    T_EQ(st, 413);
    json_decref(j);
    free(big);
    const char *one = upload(&s, tensor_dataset(10, 1), "?format=npz", &st);
    T_CHECK(!one && st == 422); /* one class is not a classification task */
    const char *ds = upload(&s, tensor_dataset(30, 3), "?format=npz", &st);
    T_REQUIRE(ds);
    char dsid[64], body[512];
    snprintf(dsid, sizeof dsid, "%s", ds);
    snprintf(body, sizeof body, "{\"dataset\": \"%s\", \"base_model\": \"no-such-model\"}", dsid);
    T_CHECK(expect(&s, "POST", "/v1/jobs", js, body, 422, "no-such-model"));
    snprintf(body, sizeof body, "{\"dataset\": \"%s\", \"base_model\": \"tiny\", \"hyperparameters\": {\"batch\": \"big\"}}", dsid);
    T_CHECK(expect(&s, "POST", "/v1/jobs", js, body, 400, "hyperparameters.batch"));
    /* queue of one: one running, one queued, the next is refused with Retry-After */
    T_REQUIRE(new_job(&s, dsid, "{\"steps\": 100000, \"batch\": 6}", &st));
    char first[64];
    snprintf(first, sizeof first, "%s", new_job(&s, dsid, "{\"steps\": 100000, \"batch\": 6}", &st));
    json_t *w = wait_job(&s, first, "running", 30);
    json_decref(w);
    new_job(&s, dsid, "{\"steps\": 5, \"batch\": 6}", &st);
    int queued_ok = st == 201;
    th_resp r;
    snprintf(body, sizeof body, "{\"dataset\": \"%s\", \"base_model\": \"tiny\"}", dsid);
    T_REQUIRE(th_request(s.port, "POST", "/v1/jobs", js, body, strlen(body), &r) == 0);
    T_CHECKF(r.status == 503 && strstr(r.headers, "Retry-After"), "status %d (queued_ok %d)", r.status, queued_ok);
    th_free(&r);
    snprintf(body, sizeof body, "/v1/datasets/%s", dsid);
    T_CHECK(expect(&s, "DELETE", body, NULL, NULL, 409, NULL));
    T_CHECK(WIFEXITED(server_stop(&s, SIGTERM))); /* a running job does not block shutdown */
}


/* Runs `bit ARGS` (BIT_BIN) with stdout and stderr into out; returns the exit status. */
static int bit_cli(const char *args, char *out, size_t outlen)
{
    char cmd[2048], path[700];
    snprintf(path, sizeof path, "%s/cli.out", t_tmpdir());
    snprintf(cmd, sizeof cmd, "%s %s >%s 2>&1", getenv("BIT_BIN"), args, path);
    int st = system(cmd);
    size_t len = 0;
    char *b = slurp(path, &len);
    snprintf(out, outlen, "%.*s", (int)len, b ? b : "");
    free(b);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static const char *message(json_t *j) { return str(json_object_get(j, "error"), "message"); }

/* What a new user runs into, each answered helpfully: unknown query parameters, the root and
 * trailing slashes, hyper-parameter names, datasets by name (and ambiguous ones), the upload
 * field, a deleted dataset, the start-up log, and following a job with bit jobs / bit job. */
static void first_hour(void)
{
    server s;
    char dir[600], path[400], out[8192], args[600];
    server_dir(dir, sizeof dir, "first");
    T_REQUIRE(server_start(&s, dir, NULL) == 0);
    int st;
    json_t *j;
    /* unknown query parameters: 400 naming the valid ones, on any route */
    T_CHECK(expect(&s, "GET", "/v1/jobs?stauts=running", NULL, NULL, 400, "did you mean status? one of: status, limit, after"));
    T_CHECK(expect(&s, "GET", "/v1/datasets?limit=3", NULL, NULL, 400, "GET /v1/datasets takes none"));
    T_CHECK(expect(&s, "GET", "/healthz?verbose=1", NULL, NULL, 400, "takes none"));
    T_CHECK(expect(&s, "GET", "/v1/jobs?status=done", NULL, NULL, 400,
                   "one of: validating, queued, running, succeeded, failed, cancelled"));
    /* the root and trailing slashes point the way */
    T_CHECK(expect(&s, "GET", "/", NULL, NULL, 404, "GET /v1 lists the routes"));
    T_CHECK(expect(&s, "GET", "/v1/jobs/", NULL, NULL, 404, "did you mean GET /v1/jobs (no trailing slash)"));
    T_CHECK(expect(&s, "DELETE", "/v1/datasets/x/", NULL, NULL, 404, "did you mean DELETE /v1/datasets/x "));
    j = call(&s, "GET", "/v1", NULL, NULL, 0, &st);
    int routes = 0;
    json_t *r;
    size_t i;
    json_array_foreach(json_object_get(j, "routes"), i, r) routes += !strcmp(str(r, "path"), "/v1/jobs/{id}/events");
    T_CHECK(st == 200 && routes == 1 && json_array_size(json_object_get(j, "routes")) >= 19);
    json_decref(j);
    /* the start-up log names the models directory */
    size_t len;
    char *log = slurp(s.log, &len);
    T_CHECK(log && strstr(log, "\"event\":\"models\"") && strstr(log, "\"base_models\":1") &&
            strstr(log, "/first/models\""));
    /* and says which base model has no class names, and what to do about it */
    T_CHECK(log && strstr(log, "\"without_labels\":[\"tiny\"]") &&
            strstr(log, "put NAME.labels.txt beside NAME.npz"));
    free(log);
    /* datasets by name: unique names stand for ids, shared ones are 409 with the ids */
    char solo[64], c1[64], c2[64], body[1024];
    const char *id = upload(&s, tensor_dataset(30, 3), "?format=npz&name=solo", &st);
    T_REQUIRE(id);
    snprintf(solo, sizeof solo, "%s", id);
    T_REQUIRE((id = upload(&s, tensor_dataset(30, 3), "?format=npz&name=colors", &st)));
    snprintf(c1, sizeof c1, "%s", id);
    T_REQUIRE((id = upload(&s, tensor_dataset(30, 3), "?format=npz&name=colors", &st)));
    snprintf(c2, sizeof c2, "%s", id);
    j = call(&s, "GET", "/v1/datasets/solo", NULL, NULL, 0, &st);
    T_CHECK(st == 200 && !strcmp(str(j, "id"), solo));
    json_decref(j);
    j = call(&s, "GET", "/v1/datasets/colors", NULL, NULL, 0, &st);
    T_CHECK(st == 409 && !strcmp(str(json_object_get(j, "error"), "code"), "ambiguous") &&
            strstr(message(j), c1) && strstr(message(j), c2));
    json_decref(j);
    const char *js = "Content-Type: application/json\r\n";
    T_CHECK(expect(&s, "POST", "/v1/jobs", js, "{\"dataset\": \"colors\", \"base_model\": \"tiny\"}", 409, c2));
    T_CHECK(expect(&s, "POST", "/v1/jobs", js, "{\"dataset\": \"fmnist\", \"base_model\": \"tiny\"}", 422,
                   "no dataset with the id or name 'fmnist'"));
    /* one vocabulary: "res" is "resolution"; mistakes name what was meant */
    T_CHECK(expect(&s, "POST", "/v1/jobs", js, "{\"dataset\": \"solo\", \"base_model\": \"tiny\", "
                   "\"hyperparameters\": {\"stepz\": 4}}", 400, "did you mean steps? one of: steps, schedule"));
    T_CHECK(expect(&s, "POST", "/v1/jobs", js, "{\"dataset\": \"solo\", \"model\": \"tiny\"}", 400, "\"base_model\""));
    T_CHECK(expect(&s, "POST", "/v1/jobs", js, "{\"dataset\": \"solo\", \"base_model\": \"tiny\", \"steps\": 4}", 400,
                   "inside \"hyperparameters\""));
    T_CHECK(expect(&s, "POST", "/v1/jobs", js, "{\"datset\": \"solo\", \"base_model\": \"tiny\"}", 400,
                   "did you mean dataset? one of: dataset, base_model, hyperparameters, name"));
    snprintf(body, sizeof body, "{\"dataset\": \"solo\", \"base_model\": \"tiny\", \"name\": \"first\", "
             "\"hyperparameters\": {\"res\": [36, 32], \"steps\": 10, \"batch\": 6, \"eval_every\": 5}}");
    j = call(&s, "POST", "/v1/jobs", js, body, strlen(body), &st);
    char jid[64];
    snprintf(jid, sizeof jid, "%s", str(j, "id") ? str(j, "id") : "");
    json_t *res = json_object_get(json_object_get(j, "requested"), "res");
    T_CHECK(st == 201 && !strcmp(str(j, "dataset"), solo) && json_integer_value(json_array_get(res, 0)) == 36);
    T_CHECK(json_is_false(json_object_get(j, "dataset_deleted")) &&
            json_is_null(json_object_get(json_object_get(j, "progress"), "eta_seconds")));
    json_decref(j);
    /* bit job watch follows it to the end: the resolved values, evaluations, the model */
    snprintf(args, sizeof args, "job watch %s --url http://127.0.0.1:%d", jid, s.port);
    T_EQ(bit_cli(args, out, sizeof out), 0);
    T_CHECKF(strstr(out, "resolved: --batch 6 --batch-split 1") && strstr(out, "--res 32,32") /* tensors: as stored */ &&
             strstr(out, "step 5: val top-1") && strstr(out, "status: running -> succeeded") &&
             strstr(out, " succeeded: model mdl_"), "%s", out);
    snprintf(args, sizeof args, "jobs --url http://127.0.0.1:%d", s.port);
    T_EQ(bit_cli(args, out, sizeof out), 0);
    T_CHECKF(strstr(out, jid) && strstr(out, "succeeded") && strstr(out, "10/10"), "%s", out);
    snprintf(args, sizeof args, "job cancel %s --url http://127.0.0.1:%d", jid, s.port);
    T_CHECK(bit_cli(args, out, sizeof out) == 1 && strstr(out, "already finished (HTTP 409)"));
    T_CHECK(bit_cli("jobs --url http://127.0.0.1:1", out, sizeof out) == 1 && strstr(out, "is `bit serve` running"));
    T_CHECK(bit_cli("job frob x", out, sizeof out) == 2 && strstr(out, "show, watch or cancel"));
    /* the dataset goes: its job says so, and so does a new job naming it */
    snprintf(path, sizeof path, "/v1/datasets/%s", solo);
    j = call(&s, "DELETE", path, NULL, NULL, 0, &st);
    T_CHECK(st == 200 && !strcmp(str(j, "id"), solo));
    json_decref(j);
    snprintf(path, sizeof path, "/v1/jobs/%s", jid);
    j = call(&s, "GET", path, NULL, NULL, 0, &st);
    T_CHECK(st == 200 && json_is_true(json_object_get(j, "dataset_deleted")) && json_is_null(json_object_get(j, "dataset")));
    json_decref(j);
    snprintf(body, sizeof body, "{\"dataset\": \"%s\", \"base_model\": \"tiny\"}", solo);
    T_CHECK(expect(&s, "POST", "/v1/jobs", js, body, 422, "('solo') was deleted at"));
    /* the upload part is "file" on both upload routes ("dataset" is still taken on jobs) */
    size_t dlen, blen;
    char ctype[256];
    void *data = slurp(tensor_dataset(30, 2), &dlen);
    const char *params = "{\"base_model\": \"tiny\", \"hyperparameters\": {\"steps\": 2, \"batch\": 6}}";
    th_part parts[] = {{"file", "two.npz", data, dlen}, {"params", NULL, params, strlen(params)}};
    char *mp = th_multipart(parts, 2, &blen, ctype, sizeof ctype);
    j = call(&s, "POST", "/v1/jobs", ctype, mp, blen, &st);
    T_CHECKF(st == 201 && str(j, "dataset"), "status %d", st);
    json_decref(j);
    free(mp);
    th_part dsparts[] = {{"dataset", "three.npz", data, dlen}};
    mp = th_multipart(dsparts, 1, &blen, ctype, sizeof ctype);
    j = call(&s, "POST", "/v1/datasets", ctype, mp, blen, &st);
    T_CHECK(st == 201 && !strcmp(str(j, "name"), "three.npz"));
    json_decref(j);
    free(mp);
    const char *with_ds = "{\"base_model\": \"tiny\", \"dataset\": \"colors\"}";
    th_part both[] = {{"file", "two.npz", data, dlen}, {"params", NULL, with_ds, strlen(with_ds)}};
    mp = th_multipart(both, 2, &blen, ctype, sizeof ctype);
    j = call(&s, "POST", "/v1/jobs", ctype, mp, blen, &st);
    T_CHECK(st == 400 && strstr(message(j), "params.dataset"));
    json_decref(j);
    free(mp);
    free(data);
    T_CHECK(WIFEXITED(server_stop(&s, SIGTERM)));
}

/* An empty models directory: the log and /readyz say where models go and how to get one. */
static void no_models_yet(void)
{
    server s;
    char dir[600];
    server_dir(dir, sizeof dir, "empty");
    T_REQUIRE(ts_start(&s, getenv("BIT_BIN"), dir, NULL, NULL, NULL) == 0);
    int st;
    json_t *j = call(&s, "GET", "/readyz", NULL, NULL, 0, &st);
    T_CHECK(st == 200 && json_integer_value(json_object_get(j, "models_checked")) == 0 && str(j, "hint") &&
            strstr(str(j, "hint"), "bit-fetch-weights"));
    /* inference's precision by default: auto, resolved for this CPU */
    T_CHECK(str(j, "precision") && !strcmp(str(j, "precision"), eng_precision_name(eng_precision_resolve(ENG_PREC_AUTO))));
    json_decref(j);
    size_t len;
    char *log = slurp(s.log, &len);
    T_CHECK(log && strstr(log, "\"message\":\"no base models in ") && strstr(log, "/empty/models:") &&
            strstr(log, "without a network, copy a .npz"));
    free(log);
    T_CHECK(WIFEXITED(server_stop(&s, SIGTERM)));
}

/* kill -9 in the middle of a job; after a restart it resumes from its checkpoint. */
static void crash_and_resume(void)
{
    server s;
    char dir[600];
    server_dir(dir, sizeof dir, "crash");
    T_REQUIRE(server_start(&s, dir, NULL) == 0);
    int st;
    const char *ds = upload(&s, tensor_dataset(30, 3), "?format=npz", &st);
    T_REQUIRE(ds);
    char dsid[64], jid[64];
    snprintf(dsid, sizeof dsid, "%s", ds);
    const char *id = new_job(&s, dsid, "{\"steps\": 80, \"batch\": 6, \"save_every\": 5}", &st);
    T_REQUIRE(id);
    snprintf(jid, sizeof jid, "%s", id);
    int64_t step = 0;
    for (int i = 0; i < 1000 && step < 12; i++) {
        json_t *j = wait_job(&s, jid, "running", 10);
        if (!j || strcmp(str(j, "status"), "running")) {
            json_decref(j);
            break;
        }
        step = job_step(j);
        json_decref(j);
        usleep(20000);
    }
    T_REQUIRE(step >= 12 && step < 80);
    T_CHECK(WIFSIGNALED(server_stop(&s, SIGKILL)));
    T_REQUIRE(server_start(&s, dir, NULL) == 0);
    json_t *j = wait_job(&s, jid, "succeeded", 120);
    T_CHECK(j && !strcmp(str(j, "status"), "succeeded"));
    json_decref(j);
    server_stop(&s, SIGTERM);
    /* the worker logged a resume, not a fresh start, after the restart */
    size_t len;
    char *log = slurp(s.log, &len);
    T_CHECK(log && strstr(log, "\"event\":\"requeued\"") && strstr(log, "\"event\":\"resumed\""));
    free(log);
    char db[700];
    snprintf(db, sizeof db, "%s/var/bit.db", dir);
    store *stdb = NULL;
    T_REQUIRE(store_open(db, &stdb, err, sizeof err) == 0);
    T_EQ(store_integrity_check(stdb, err, sizeof err), 0);
    store_close(stdb);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    T_RUN(dataset_upload_and_job);
    T_RUN(multipart_job);
    T_RUN(cancel_running_job);
    T_RUN(error_statuses);
    T_RUN(crash_and_resume);
    T_RUN(first_hour);
    T_RUN(no_models_yet);
    return t_done();
}
