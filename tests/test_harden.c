/* Hardening of `bit serve` over real HTTP: a memory budget for what clients ask for (tensor
 * bombs, huge images, oversized training), names that cannot hijack models, nothing left
 * behind after a crash or a failed request, 507 on a full disk, no server paths in answers. */
#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "arch.h"
#include "npz.h"
#include "t.h"
#include "thttp.h"
#include "timg.h"
#include "tserve.h"

static char err[512];

typedef ts_server server;

static int start(server *s, const char *name, const char *const *extra)
{
    char dir[800];
    snprintf(dir, sizeof dir, "%s/%s", t_tmpdir(), name);
    return ts_start(s, getenv("BIT_BIN"), dir, "tiny", t_fixture("model.npz"), extra);
}

static void *slurp(const char *path, size_t *len)
{
    void *b = NULL;
    eng_file_read(path, 1 << 30, &b, len, err, sizeof err);
    return b;
}

static const char *const octet = "Content-Type: application/octet-stream\r\n";
static const char *const json_hdr = "Content-Type: application/json\r\n";

/* POSTs a file; the answer's JSON (the caller's). */
static json_t *post_file(const server *s, const char *path, const char *file, int *st)
{
    size_t len;
    void *b = slurp(file, &len);
    json_t *j = ts_call(s, "POST", path, octet, b, len, st);
    free(b);
    return j;
}

/* A deflated .npz whose x declares n 32x32 images of zeros (n = 21845: 256 MiB) in ~256 KiB. */
static const char *tensor_bomb(int n)
{
    static char path[600];
    snprintf(path, sizeof path, "%s/bomb-%d.npz", t_tmpdir(), n);
    int64_t xs[] = {n, 3, 32, 32}, ys[] = {n};
    eng_tensor *y = eng_tensor_new(ENG_I64, 0, 1, ys);
    for (int i = 0; i < n; i++) ((int64_t *)y->data)[i] = i % 3;
    eng_npz *z = eng_npz_new();
    eng_npz_put(z, "x", eng_tensor_new(ENG_F32, 0, 4, xs));
    eng_npz_put(z, "y", y);
    eng_npz_save(path, z, 1, err, sizeof err);
    eng_npz_free(z);
    return path;
}

/* A tar of PNG class folders: a/, b/, c/ with k images of w x h each. */
static const char *image_tar(const char *name, int k, int w, int h)
{
    static char path[600];
    snprintf(path, sizeof path, "%s/%s.tar", t_tmpdir(), name);
    size_t len;
    uint8_t *png = png_rgb(w, h, 0, &len);
    struct archive *a = timg_writer(path, TIMG_TAR);
    int bad = !a || !png;
    for (int c = 0; c < 3 && !bad; c++)
        for (int i = 0; i < k && !bad; i++) {
            char n[64];
            snprintf(n, sizeof n, "%c/img%d.png", 'a' + c, i);
            timg_ent e = {n, png, len, 0};
            bad = timg_add(a, &e);
        }
    if (a) timg_close(a, bad);
    free(png);
    return bad ? NULL : path;
}

typedef struct bomb_arg {
    const server *s;
    const char *file;
    int status;
} bomb_arg;

static void *bomb_thread(void *p)
{
    bomb_arg *b = p;
    json_t *j = post_file(b->s, "/v1/datasets?format=npz", b->file, &b->status);
    json_decref(j);
    return NULL;
}

/* Five deflated tensor bombs at once, each declaring 256 MiB against --max-dataset-mb 16:
 * refused from their headers (413) while the server's peak memory stays small. */
static void tensor_bombs(void)
{
    server s;
    const char *extra[] = {"--max-dataset-mb", "16", NULL};
    T_REQUIRE(start(&s, "bombs", extra) == 0);
    const char *file = tensor_bomb(21845);
    long before = ts_peak_kb(s.pid);
    pthread_t th[5];
    bomb_arg a[5];
    for (int i = 0; i < 5; i++) {
        a[i] = (bomb_arg){&s, file, 0};
        pthread_create(&th[i], NULL, bomb_thread, &a[i]);
    }
    for (int i = 0; i < 5; i++) {
        pthread_join(th[i], NULL);
        T_EQ(a[i].status, 413);
    }
    long after = ts_peak_kb(s.pid);
    T_CHECKF(after - before < 64 * 1024, "peak RSS grew from %ld to %ld KiB", before, after);
    int st;
    json_t *j = ts_call(&s, "GET", "/v1/datasets", NULL, NULL, 0, &st);
    T_EQ(json_array_size(json_object_get(j, "datasets")), 0);
    json_decref(j);
    T_EQ(ts_stop(&s, SIGTERM), 0);
}

/* What a crash leaves (an upload in tmp/, an import in staging, an import renamed but not
 * recorded, a deleted job's run directory) is swept at start-up and reported; what belongs
 * to rows stays. */
static void startup_sweep(void)
{
    server s;
    char dir[800], p[1200];
    T_REQUIRE(start(&s, "sweep", NULL) == 0);
    int st;
    json_t *j = post_file(&s, "/v1/datasets?format=npz", tensor_bomb(30), &st);
    T_REQ_EQ(st, 201);
    char keep[64];
    snprintf(keep, sizeof keep, "%s", ts_str(j, "id"));
    json_decref(j);
    T_CHECK(WIFSIGNALED(ts_stop(&s, SIGKILL)));
    snprintf(dir, sizeof dir, "%s/sweep/var", t_tmpdir());
    const char *junk[] = {"tmp/bitd-upload-AbCdEf", "datasets/.tmp-ds_00000000000000aa/data/a/x.png",
                          "datasets/ds_00000000000000bb/data/a/y.png", "jobs/job_00000000000000cc/model.npz"};
    for (int i = 0; i < 4; i++) T_REQUIRE(timg_put(dir, junk[i], "junk", 4) == 0);
    T_REQUIRE(start(&s, "sweep", NULL) == 0);
    size_t len;
    char *log = slurp(s.log, &len);
    T_CHECK(log && strstr(log, "\"event\":\"swept\"") && strstr(log, "tmp/bitd-upload-AbCdEf") &&
            strstr(log, "datasets/.tmp-ds_00000000000000aa") && strstr(log, "datasets/ds_00000000000000bb") &&
            strstr(log, "jobs/job_00000000000000cc"));
    free(log);
    const char *tops[] = {"tmp/bitd-upload-AbCdEf", "datasets/.tmp-ds_00000000000000aa",
                          "datasets/ds_00000000000000bb", "jobs/job_00000000000000cc"};
    for (int i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, tops[i]);
        T_CHECKF(access(p, F_OK) != 0, "%s survived", p);
    }
    snprintf(p, sizeof p, "/v1/datasets/%s", keep);
    json_decref(ts_call(&s, "GET", p, NULL, NULL, 0, &st));
    T_EQ(st, 200);
    snprintf(p, sizeof p, "%s/datasets/%s/data.npz", dir, keep);
    T_EQ(access(p, F_OK), 0);
    T_EQ(ts_stop(&s, SIGTERM), 0);
}

/* Upload-and-start that fails keeps no dataset; a job name can never take a model's name or
 * look like an id. */
static void failed_requests_leave_nothing(void)
{
    server s;
    T_REQUIRE(start(&s, "names", NULL) == 0);
    size_t len;
    void *b = slurp(tensor_bomb(30), &len);
    const char *bad_params[] = {"{\"base_model\": \"missing\"}", "{\"base_model\": \"tiny\", \"name\": \"tiny\"}",
                                "{\"base_model\": \"tiny\", \"hyperparameters\": {\"batch\": \"x\"}}"};
    const int want[] = {422, 409, 400};
    for (int i = 0; i < 3; i++) {
        char body[4096];
        const char *bd = "XbitdX";
        int n = snprintf(body, sizeof body, "--%s\r\nContent-Disposition: form-data; name=\"params\"\r\n\r\n%s\r\n"
                         "--%s\r\nContent-Disposition: form-data; name=\"dataset\"; filename=\"d.npz\"\r\n"
                         "Content-Type: application/octet-stream\r\n\r\n", bd, bad_params[i], bd);
        char *req = malloc((size_t)n + len + 64);
        memcpy(req, body, (size_t)n);
        memcpy(req + n, b, len);
        int m = n + (int)len + sprintf(req + n + len, "\r\n--%s--\r\n", bd);
        int st;
        json_t *j = ts_call(&s, "POST", "/v1/jobs", "Content-Type: multipart/form-data; boundary=XbitdX\r\n", req, (size_t)m, &st);
        T_CHECKF(st == want[i], "%s -> %d %s", bad_params[i], st, ts_err_code(j));
        json_decref(j);
        free(req);
    }
    free(b);
    int st;
    json_t *j = ts_call(&s, "GET", "/v1/datasets", NULL, NULL, 0, &st);
    T_EQ(json_array_size(json_object_get(j, "datasets")), 0);
    json_decref(j);
    j = post_file(&s, "/v1/datasets?format=npz", tensor_bomb(30), &st);
    char body[512];
    snprintf(body, sizeof body, "{\"dataset\": \"%s\", \"base_model\": \"tiny\", \"name\": \"mdl_0123456789abcdef\"}", ts_str(j, "id"));
    json_decref(j);
    j = ts_call(&s, "POST", "/v1/jobs", json_hdr, body, strlen(body), &st);
    T_EQ(st, 400);
    T_CHECK(strstr(ts_str(json_object_get(j, "error"), "message"), "name"));
    json_decref(j);
    T_EQ(ts_stop(&s, SIGTERM), 0);
}

/* A job that ends without a model leaves nothing when deleted: not model.npz, not
 * optimizer.npz, not state.json; its checkpoint events name no server path. */
static void delete_unfinished_run(void)
{
    server s;
    char p[1200];
    T_REQUIRE(start(&s, "delete", NULL) == 0);
    int st;
    json_t *j = post_file(&s, "/v1/datasets?format=npz", tensor_bomb(30), &st);
    char body[512], id[64];
    snprintf(body, sizeof body, "{\"dataset\": \"%s\", \"base_model\": \"tiny\", \"hyperparameters\": "
             "{\"steps\": 100000, \"batch\": 6, \"save_every\": 2}}", ts_str(j, "id"));
    json_decref(j);
    j = ts_call(&s, "POST", "/v1/jobs", json_hdr, body, strlen(body), &st);
    T_REQ_EQ(st, 201);
    snprintf(id, sizeof id, "%s", ts_str(j, "id"));
    json_decref(j);
    for (int i = 0; i < 600; i++, usleep(50000)) { /* a few checkpoints */
        j = ts_wait_job(&s, id, "running", 30);
        int64_t step = json_integer_value(json_object_get(json_object_get(j, "progress"), "step"));
        json_decref(j);
        if (step >= 5) break;
    }
    snprintf(p, sizeof p, "/v1/jobs/%s/cancel", id);
    json_decref(ts_call(&s, "POST", p, NULL, NULL, 0, &st));
    json_decref(ts_wait_job(&s, id, "cancelled", 30));
    snprintf(p, sizeof p, "/v1/jobs/%s/events?after=0&limit=1000", id);
    th_resp r;
    T_REQUIRE(th_request(s.port, "GET", p, NULL, NULL, 0, &r) == 0);
    T_CHECK(strstr(r.body, "\"checkpoint\"") && strstr(r.body, "data/jobs/") && !strstr(r.body, t_tmpdir()));
    th_free(&r);
    snprintf(p, sizeof p, "%s/delete/var/jobs/%s/model.npz", t_tmpdir(), id);
    T_EQ(access(p, F_OK), 0);
    snprintf(p, sizeof p, "/v1/jobs/%s", id);
    json_decref(ts_call(&s, "DELETE", p, NULL, NULL, 0, &st));
    T_EQ(st, 200);
    snprintf(p, sizeof p, "%s/delete/var/jobs/%s", t_tmpdir(), id);
    T_NE(access(p, F_OK), 0);
    /* and an error answer names no server path */
    T_REQUIRE(th_request(s.port, "GET", "/v1/models/no-such", NULL, NULL, 0, &r) == 0);
    T_CHECK(r.status == 404 && !strstr(r.body, t_tmpdir()));
    th_free(&r);
    T_EQ(ts_stop(&s, SIGTERM), 0);
}

/* --memory-budget-mb: an image whose decode would not fit is 413; a training job whose
 * micro-batch would not fit is split (said in its resolved values) or refused naming why. */
static void memory_budget(void)
{
    eng_arch a;
    T_REQUIRE(eng_arch_probe(t_fixture("model.npz"), &a, err, sizeof err) == 0);
    uint64_t one = eng_arch_train_bytes(&a, 2, 256, 256);
    long mb = (long)(one >> 20) + 1;
    T_REQUIRE((uint64_t)mb << 20 < eng_arch_train_bytes(&a, 4, 256, 256));
    char budget[32];
    snprintf(budget, sizeof budget, "%ld", mb);
    const char *extra[] = {"--memory-budget-mb", budget, NULL};
    server s;
    T_REQUIRE(start(&s, "budget", extra) == 0);
    size_t len;
    int side = (int)sqrt((double)mb * 1048576 / 8) + 64, st; /* 8 bytes a pixel to decode */
    uint8_t *png = png_rgb(side, side, 0, &len);
    json_t *j = ts_call(&s, "POST", "/v1/models/tiny/classify", "Content-Type: image/png\r\n", png, len, &st);
    T_CHECKF(st == 413 && strstr(ts_str(json_object_get(j, "error"), "message"), "memory budget"), "%d", st);
    json_decref(j);
    free(png);
    png = png_rgb(300, 200, 0, &len);
    j = ts_call(&s, "POST", "/v1/models/tiny/classify", "Content-Type: image/png\r\n", png, len, &st);
    T_EQ(st, 200);
    json_decref(j);
    free(png);
    j = post_file(&s, "/v1/datasets", image_tar("budget", 4, 300, 300), &st);
    T_REQ_EQ(st, 201);
    char ds[64], body[512];
    snprintf(ds, sizeof ds, "%s", ts_str(j, "id"));
    json_decref(j);
    snprintf(body, sizeof body, "{\"dataset\": \"%s\", \"base_model\": \"tiny\", \"hyperparameters\": "
             "{\"steps\": 1, \"batch\": 16, \"resolution\": [256, 256]}}", ds);
    j = ts_call(&s, "POST", "/v1/jobs", json_hdr, body, strlen(body), &st);
    json_t *hp = json_object_get(j, "hyperparameters");
    T_EQ(st, 201);
    T_EQ(json_integer_value(json_object_get(hp, "batch_split")), 8); /* micro-batches of 2 fit */
    T_LE(json_integer_value(json_object_get(hp, "memory_mb")), mb);
    json_decref(j);
    snprintf(body, sizeof body, "{\"dataset\": \"%s\", \"base_model\": \"tiny\", \"hyperparameters\": "
             "{\"steps\": 1, \"batch\": 16, \"batch_split\": 2, \"resolution\": [256, 256]}}", ds);
    j = ts_call(&s, "POST", "/v1/jobs", json_hdr, body, strlen(body), &st);
    T_EQ(st, 400);
    T_CHECK(strstr(ts_str(json_object_get(j, "error"), "message"), "at most 2 images fit"));
    json_decref(j);
    snprintf(body, sizeof body, "{\"dataset\": \"%s\", \"base_model\": \"tiny\", \"hyperparameters\": "
             "{\"steps\": 1, \"batch\": 16, \"resolution\": [2048, 2048]}}", ds);
    j = ts_call(&s, "POST", "/v1/jobs", json_hdr, body, strlen(body), &st);
    T_EQ(st, 400);
    T_CHECK(strstr(ts_str(json_object_get(j, "error"), "message"), "lower resolution"));
    json_decref(j);
    T_EQ(ts_stop(&s, SIGTERM), 0);
}

/* The data directory on a small tmpfs: an archive that unpacks past the free space gets 507,
 * and nothing of it stays. Needs permission to mount (root); otherwise a visible skip. */
static void disk_full(void)
{
    char dir[800], var[900];
    snprintf(dir, sizeof dir, "%s/full", t_tmpdir());
    snprintf(var, sizeof var, "%s/var", dir);
    mkdir(dir, 0755);
    mkdir(var, 0755);
    if (mount("tmpfs", var, "tmpfs", 0, "size=4m")) {
        printf("SKIP disk_full: cannot mount a tmpfs here (%s)\n", strerror(errno));
        return;
    }
    server s;
    if (start(&s, "full", NULL)) {
        umount(var);
        T_REQUIRE(0);
    }
    char path[900];
    snprintf(path, sizeof path, "%s/big.tar.gz", t_tmpdir());
    char *zeros = calloc(1, 6 << 20);
    timg_ent es[] = {{"a/x.png", zeros, 6 << 20, 0}, {"b/y.png", "x", 1, 0}};
    T_REQUIRE(timg_archive(path, TIMG_TAR_GZ, es, 2) == 0);
    free(zeros);
    int st;
    json_t *j = post_file(&s, "/v1/datasets", path, &st);
    T_CHECKF(st == 507 && !strcmp(ts_err_code(j), "insufficient_storage"), "%d %s", st, ts_err_code(j));
    json_decref(j);
    char ds[1000];
    snprintf(ds, sizeof ds, "%s/datasets", var);
    DIR *dh = opendir(ds);
    int left = 0;
    struct dirent *e;
    while (dh && (e = readdir(dh))) left += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    if (dh) closedir(dh);
    T_EQ(left, 0);
    T_EQ(ts_stop(&s, SIGTERM), 0);
    umount(var);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    T_RUN(tensor_bombs);
    T_RUN(startup_sweep);
    T_RUN(failed_requests_leave_nothing);
    T_RUN(delete_unfinished_run);
    T_RUN(memory_budget);
    T_RUN(disk_full);
    return t_done();
}
