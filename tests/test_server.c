/* bit serve over real HTTP: datasets, jobs to a model, cancel, events, every error status,
 * hostile uploads, and a kill -9 in the middle of a job that resumes after a restart. */
#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "npz.h"
#include "storage/store.h"
#include "t.h"
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

/* A 3-class tensor dataset (.npz) whose classes differ in one colour channel. */
static const char *tensor_dataset(int n, int classes)
{
    static char path[600];
    snprintf(path, sizeof path, "%s/data-%d-%d.npz", t_tmpdir(), n, classes);
    int64_t xs[] = {n, 3, 32, 32}, ys[] = {n};
    eng_tensor *x = eng_tensor_new(ENG_F32, 0, 4, xs), *y = eng_tensor_new(ENG_I64, 0, 1, ys);
    for (int i = 0; i < n; i++) {
        ((int64_t *)y->data)[i] = i % classes;
        for (int k = 0; k < 3 * 1024; k++)
            ((float *)x->data)[(size_t)i * 3 * 1024 + k] = (float)((k * 7 + i * 13) % 17) / 40.0f - 0.2f +
                                                           (k / 1024 == i % classes ? 0.5f : 0.0f);
    }
    eng_npz *z = eng_npz_new();
    eng_npz_put(z, "x", x), eng_npz_put(z, "y", y);
    eng_npz_save(path, z, 0, err, sizeof err);
    eng_npz_free(z);
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
    T_CHECKF(types[0] >= 4 && types[1] >= 1 && types[2] >= 2 && types[3] >= 1, "%d %d %d %d",
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
    T_CHECK(st == 200);
    json_decref(j);
    j = call(&s, "GET", path, NULL, NULL, 0, &st);
    T_CHECK(st == 404 && json_object_get(json_object_get(j, "error"), "code"));
    json_decref(j);
    char files[800];
    snprintf(files, sizeof files, "%s/var/datasets/%s", dir, dsid);
    struct stat sb;
    T_CHECK(stat(files, &sb) != 0);
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
    /* while it runs its dataset cannot go */
    snprintf(path, sizeof path, "/v1/datasets/%s", dsid);
    j = call(&s, "DELETE", path, NULL, NULL, 0, &st);
    T_CHECK(st == 409 && !strcmp(str(json_object_get(j, "error"), "code"), "in_use"));
    json_decref(j);
    snprintf(path, sizeof path, "/v1/jobs/%s/cancel", jid);
    j = call(&s, "POST", path, NULL, NULL, 0, &st);
    T_CHECK(st == 200);
    json_decref(j);
    j = wait_job(&s, jid, "cancelled", 20);
    T_CHECK(j && !strcmp(str(j, "status"), "cancelled") && job_step(j) < 100000);
    json_decref(j);
    j = call(&s, "POST", path, NULL, NULL, 0, &st);
    T_CHECK(st == 409);
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
    T_CHECK(access(parent, F_OK) != 0);
    char *big = calloc(1, 2 << 20);
    j = call(&s, "POST", "/v1/datasets", "Content-Type: application/x-tar\r\n", big, 2 << 20, &st);
    T_CHECK(st == 413);
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
    T_CHECK(store_integrity_check(stdb, err, sizeof err) == 0);
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
    return t_done();
}
