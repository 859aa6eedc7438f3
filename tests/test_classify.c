/* Classification and the model registry over real HTTP: raw and multipart images, top_k, every
 * error status, auth, listing/download/delete, LRU eviction, 32 concurrent clients, and
 * classifying while a job trains. Answers are checked against the engine run in-process.
 *
 * Scores are compared with a relative tolerance of 1e-5, not exactly: a batched request may
 * run at another batch size than its reference, and oneDNN may pick other kernels (another
 * summation order) per batch size and thread count. Class order must be identical. */
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "labels.h"
#include "net.h"
#include "preproc.h"
#include "t.h"
#include "tdata.h"
#include "thttp.h"
#include "timg.h"
#include "tserve.h"

static char err[512];

typedef ts_server server;

static void put_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (f) fputs(text, f), fclose(f);
}

/* models/: tiny.npz (10 classes, labels class0..class9), tiny2.npz (7 classes, no labels,
 * tiny2.json asks for resolution 64). */
static void models_dir(const char *dir)
{
    char p[700];
    snprintf(p, sizeof p, "%s/models", dir);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/models/tiny.npz", dir);
    symlink(t_fixture("model.npz"), p);
    snprintf(p, sizeof p, "%s/models/tiny2.npz", dir);
    symlink(t_fixture("model2.npz"), p);
    snprintf(p, sizeof p, "%s/models/tiny.labels.txt", dir);
    put_file(p, "class0\nclass1\nclass2\nclass3\nclass4\nclass5\nclass6\nclass7\nclass8\nclass9\n");
    snprintf(p, sizeof p, "%s/models/tiny2.json", dir);
    put_file(p, "{\"resolution\": 64}\n");
}

/* Starts `bit serve` on an ephemeral port with its data under t_tmpdir()/name, in f32 (the
 * references below are f32 runs of the engine; extra may say otherwise). */
static int server_start(server *s, const char *name, const char *const *extra)
{
    char dir[600];
    const char *args[40] = {"--http-threads", "8", "--infer-threads", "1", "--precision", "f32"};
    int n = 6;
    snprintf(dir, sizeof dir, "%s/%s", t_tmpdir(), name);
    mkdir(dir, 0755);
    models_dir(dir);
    for (int i = 0; extra && extra[i] && n < 39; i++) args[n++] = extra[i];
    return ts_start(s, getenv("BIT_BIN"), dir, NULL, NULL, args);
}

static int server_stop(server *s) { return ts_stop(s, SIGTERM); }

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
static const char *err_code(json_t *j) { return str(json_object_get(j, "error"), "code"); }

static void *slurp(const char *path, size_t *len)
{
    void *b = NULL;
    *len = 0;
    eng_file_read(path, 1 << 30, &b, len, err, sizeof err);
    return b;
}

/* ---------------------------------------------------------------- references */

/* What the engine itself says about an image: decoded with the same DCT hint and eval
 * transform as the server, at resolution res, through a net of the checkpoint. */
typedef struct ref {
    int n, idx[16];
    float prob[16];
} ref;

static int reference_in(eng_precision prec, const char *model, const char *image, int res, int topk,
                        ref *out)
{
    eng_npz *z = NULL;
    eng_arch a;
    eng_net *net = NULL;
    eng_net_opts o = {.precision = prec};
    img_rgb8 *img = NULL;
    float *x = malloc(sizeof(float) * 3 * (size_t)res * res), logits[64];
    int rc = eng_npz_load(model, NULL, &z, err, sizeof err);
    if (!rc) rc = eng_arch_from_npz(z, &a, err, sizeof err);
    if (!rc) rc = eng_net_new(z, &a, &o, &net, err, sizeof err);
    if (!rc) rc = img_load_file(image, NULL, res, &img, err, sizeof err);
    if (!rc) rc = pre_eval(img, res, x, err, sizeof err);
    if (!rc) rc = eng_net_forward(net, x, 1, res, res, logits, NULL, NULL, err, sizeof err);
    if (!rc) out->n = eng_topk(logits, eng_net_out_dim(net), topk, out->idx, out->prob);
    if (rc) fprintf(stderr, "  reference: %s\n", err);
    eng_npz_free(z);
    eng_net_free(net);
    img_rgb8_free(img);
    free(x);
    return rc;
}

static int reference(const char *model, const char *image, int res, int topk, ref *out)
{
    return reference_in(ENG_PREC_F32, model, image, res, topk, out);
}

static int close_rel(double a, double b) { return fabs(a - b) <= 1e-5 * fmax(fabs(a), fabs(b)) + 1e-12; }

/* 1 when predictions (a JSON array) equal the reference: same classes in the same order,
 * scores within the tolerance; labels "class<i>" when labelled. */
static int same_predictions(json_t *preds, const ref *r, int labelled)
{
    if (json_array_size(preds) != (size_t)r->n) return 0;
    for (int i = 0; i < r->n; i++) {
        json_t *p = json_array_get(preds, i);
        char want[32];
        snprintf(want, sizeof want, labelled ? "class%d" : "%d", r->idx[i]);
        if (json_integer_value(json_object_get(p, "index")) != r->idx[i] ||
            !close_rel(json_number_value(json_object_get(p, "score")), r->prob[i]) ||
            !str(p, "label") || strcmp(str(p, "label"), want)) {
            fprintf(stderr, "  prediction %d: index %lld score %.9g label %s; want %d %.9g %s\n", i,
                    (long long)json_integer_value(json_object_get(p, "index")),
                    json_number_value(json_object_get(p, "score")), str(p, "label"), r->idx[i],
                    r->prob[i], want);
            return 0;
        }
    }
    return 1;
}

static json_t *classify_file(const server *s, const char *model, const char *query,
                             const char *ctype, const char *image, int *status)
{
    size_t len;
    void *b = slurp(image, &len);
    char path[256], hdr[128];
    snprintf(path, sizeof path, "/v1/models/%s/classify%s", model, query ? query : "");
    snprintf(hdr, sizeof hdr, "Content-Type: %s\r\n", ctype);
    json_t *j = call(s, "POST", path, hdr, b, len, status);
    free(b);
    return j;
}

/* ---------------------------------------------------------------- cases */

/* bit serve classifies in its --precision (the flag beating BIT_PRECISION): /readyz and
 * /metrics say which, and the scores are the engine's in that precision. */
static void serves_in_its_precision(void)
{
    eng_precision precs[] = {ENG_PREC_F32, ENG_PREC_BF16};
    int have_bf16 = eng_precision_resolve(ENG_PREC_AUTO) == ENG_PREC_BF16;
    setenv("BIT_PRECISION", "bf16", 1);
    for (int i = 0; i < 1 + have_bf16; i++) {
        const char *name = eng_precision_name(precs[i]), *extra[] = {"--precision", name, NULL};
        char dir[32], want[96];
        server s;
        snprintf(dir, sizeof dir, "prec-%s", name);
        T_REQUIRE(server_start(&s, dir, extra) == 0);
        int st;
        json_t *j = call(&s, "GET", "/readyz", NULL, NULL, 0, &st);
        T_CHECKF(st == 200 && str(j, "precision") && !strcmp(str(j, "precision"), name) &&
                 str(j, "isa") && !strcmp(str(j, "isa"), eng_cpu_isa()), "readyz precision %s",
                 str(j, "precision"));
        json_decref(j);
        th_resp r;
        snprintf(want, sizeof want, "\nbit_inference_precision{precision=\"%s\",isa=\"%s\"} 1\n", name,
                 eng_cpu_isa());
        T_REQUIRE(th_request(s.port, "GET", "/metrics", NULL, NULL, 0, &r) == 0);
        T_CHECKF(strstr(r.body, want), "/metrics lacks %s", want);
        th_free(&r);
        ref rj;
        const char *jpg = t_fixture("img_rgb160.jpg");
        T_REQUIRE(reference_in(precs[i], t_fixture("model.npz"), jpg, 128, 5, &rj) == 0);
        j = classify_file(&s, "tiny", NULL, "image/jpeg", jpg, &st);
        T_CHECK(st == 200 && same_predictions(json_object_get(j, "predictions"), &rj, 1));
        json_decref(j);
        T_CHECK(server_stop(&s) == 0);
    }
    unsetenv("BIT_PRECISION");
    if (!have_bf16) printf("(oneDNN's ISA here is %s, without bf16: bf16 serving skipped)\n", eng_cpu_isa());
}

static void raw_bodies(void)
{
    server s;
    T_REQUIRE(server_start(&s, "raw", NULL) == 0);
    const char *jpg = t_fixture("img_rgb160.jpg"), *png = t_fixture("img_graphic64x48.png");
    ref rj, rp, r3;
    T_REQUIRE(reference(t_fixture("model.npz"), jpg, 128, 5, &rj) == 0);
    T_REQUIRE(reference(t_fixture("model.npz"), png, 128, 5, &rp) == 0);
    T_REQUIRE(reference(t_fixture("model.npz"), jpg, 128, 3, &r3) == 0);
    int st;
    json_t *j = classify_file(&s, "tiny", NULL, "image/jpeg", jpg, &st);
    T_CHECKF(st == 200, "status %d", st);
    T_CHECK(str(j, "model") && !strcmp(str(j, "model"), "tiny"));
    T_CHECK(same_predictions(json_object_get(j, "predictions"), &rj, 1));
    json_t *tm = json_object_get(j, "timing_ms");
    T_CHECK(json_number_value(json_object_get(tm, "total")) >= json_number_value(json_object_get(tm, "infer")) &&
            json_number_value(json_object_get(tm, "infer")) > 0 && json_is_number(json_object_get(tm, "decode")));
    json_decref(j);
    j = classify_file(&s, "tiny", NULL, "image/png", png, &st);
    T_CHECK(st == 200 && same_predictions(json_object_get(j, "predictions"), &rp, 1));
    json_decref(j);
    j = classify_file(&s, "tiny", "?top_k=3", "application/octet-stream", jpg, &st);
    T_CHECK(st == 200 && same_predictions(json_object_get(j, "predictions"), &r3, 1));
    json_decref(j);
    j = classify_file(&s, "tiny", "?top_k=1000", "image/jpeg", jpg, &st); /* all ten, best first */
    T_CHECK(st == 200 && json_array_size(json_object_get(j, "predictions")) == 10);
    json_decref(j);
    T_EQ(server_stop(&s), 0); /* exit 0: clean shutdown, no leak under ASan */
}

static void multipart_images(void)
{
    server s;
    T_REQUIRE(server_start(&s, "multipart", NULL) == 0);
    const char *jpg = t_fixture("img_rgb160.jpg"), *png = t_fixture("img_graphic64x48.png");
    ref rj, rp;
    T_REQUIRE(reference(t_fixture("model.npz"), jpg, 128, 2, &rj) == 0);
    T_REQUIRE(reference(t_fixture("model.npz"), png, 128, 2, &rp) == 0);
    size_t lj, lp, blen;
    void *bj = slurp(jpg, &lj), *bp = slurp(png, &lp);
    th_part parts[] = {{"image", "a.jpg", bj, lj}, {"note", NULL, "ignored", 7},
                       {"image", "b.png", bp, lp}, {"image", "c.jpg", bj, lj}};
    char ctype[256];
    char *body = th_multipart(parts, 4, &blen, ctype, sizeof ctype);
    int st;
    json_t *j = call(&s, "POST", "/v1/models/tiny/classify?top_k=2", ctype, body, blen, &st);
    json_t *res = json_object_get(j, "results");
    T_CHECKF(st == 200 && json_array_size(res) == 3, "status %d", st);
    T_CHECK(same_predictions(json_object_get(json_array_get(res, 0), "predictions"), &rj, 1));
    T_CHECK(same_predictions(json_object_get(json_array_get(res, 1), "predictions"), &rp, 1));
    T_CHECK(same_predictions(json_object_get(json_array_get(res, 2), "predictions"), &rj, 1));
    T_CHECK(str(json_array_get(res, 1), "filename") && !strcmp(str(json_array_get(res, 1), "filename"), "b.png"));
    T_CHECK(json_object_get(j, "timing_ms") && !json_object_get(j, "predictions"));
    json_decref(j);
    free(body);
    body = th_multipart(parts + 2, 1, &blen, ctype, sizeof ctype); /* one part: one answer */
    j = call(&s, "POST", "/v1/models/tiny/classify?top_k=2", ctype, body, blen, &st);
    T_CHECK(st == 200 && same_predictions(json_object_get(j, "predictions"), &rp, 1));
    json_decref(j);
    free(body), free(bj), free(bp);
    T_EQ(server_stop(&s), 0);
}

static int expect(const server *s, const char *path, const char *hdr, const void *body,
                  size_t len, int want, const char *code)
{
    int st;
    json_t *j = call(s, "POST", path, hdr, body, len, &st);
    const char *msg = str(json_object_get(j, "error"), "message");
    int ok = st == want && err_code(j) && (!code || !strcmp(err_code(j), code)) && msg && *msg;
    if (!ok) fprintf(stderr, "  %s: %d %s (wanted %d %s) %s\n", path, st, err_code(j), want,
                     code ? code : "", msg ? msg : "");
    json_decref(j);
    return ok;
}

/* Every refusal that happens before inference, on a server with small limits. */
static void error_statuses(void)
{
    server s;
    const char *extra[] = {"--max-image-mp", "1", "--max-upload-mb", "1", "--infer-queue", "2", NULL};
    T_REQUIRE(server_start(&s, "errors", extra) == 0);
    const char *u = "/v1/models/tiny/classify", *jt = "Content-Type: image/jpeg\r\n";
    size_t lj, big_len, blen;
    char *jpg = slurp(t_fixture("img_rgb160.jpg"), &lj), ctype[256];
    T_CHECK(expect(&s, "/v1/models/nope/classify", jt, jpg, lj, 404, "not_found"));
    T_CHECK(expect(&s, "/v1/models/..%2Fmodels%2Ftiny/classify", jt, jpg, lj, 400, NULL)); /* srv */
    T_CHECK(expect(&s, "/v1/models/tiny.npz/classify", jt, jpg, lj, 404, "not_found")); /* a name, not a file */
    T_CHECK(expect(&s, u, "Content-Type: text/plain\r\n", "hello", 5, 415, "unsupported_media_type"));
    T_CHECK(expect(&s, u, "Content-Type: application/octet-stream\r\n", "GIF89a\1\0\1\0", 10, 415, NULL));
    /* the bytes decide, not the declared type: no image at all is 415, a broken one 422 */
    T_CHECK(expect(&s, u, "Content-Type: image/png\r\n", "definitely not a png", 20, 415, "unsupported_media_type"));
    T_CHECK(expect(&s, "/v1/models/tiny/classify?topk=3", jt, jpg, lj, 400, "invalid_parameter"));
    T_CHECK(expect(&s, u, jt, jpg, lj / 2, 422, "invalid_image")); /* truncated: the decoder's reason */
    T_CHECK(expect(&s, u, jt, NULL, 0, 400, NULL));
    T_CHECK(expect(&s, "/v1/models/tiny/classify?top_k=0", jt, jpg, lj, 400, "invalid_parameter"));
    uint8_t *big = jpeg_rgb(1200, 1000, &(jpeg_opts){0}, &big_len); /* 1.2 MP, under 1 MiB */
    T_CHECK(big_len < (1 << 20) && expect(&s, u, jt, big, big_len, 413, "too_large"));
    char *huge = calloc(1, 2 << 20);
    T_CHECK(expect(&s, u, "Content-Type: application/octet-stream\r\n", huge, 2 << 20, 413, NULL));
    th_part none[] = {{"file", "a.jpg", jpg, lj}}, three[] = {{"image", "a.jpg", jpg, lj},
                                                             {"image", "b.jpg", jpg, lj},
                                                             {"image", "c.jpg", jpg, lj}};
    char *body = th_multipart(none, 1, &blen, ctype, sizeof ctype);
    T_CHECK(expect(&s, u, ctype, body, blen, 400, "invalid_parameter"));
    free(body);
    body = th_multipart(three, 3, &blen, ctype, sizeof ctype); /* more than the queue holds */
    T_CHECK(expect(&s, u, ctype, body, blen, 413, "too_large"));
    free(body), free(big), free(huge), free(jpg);
    T_EQ(server_stop(&s), 0);
}


/* One status per input however it comes (raw body or multipart part), and a multipart
 * request answers per image: a bad image gets an error in its result unless all are bad. */
static void per_image_results(void)
{
    server s;
    T_REQUIRE(server_start(&s, "perimage", NULL) == 0);
    const char *u = "/v1/models/tiny/classify", *text = "just some notes, not an image\n";
    size_t lj, blen;
    char *jpg = slurp(t_fixture("img_rgb160.jpg"), &lj), ctype[256];
    ref rj;
    T_REQUIRE(reference(t_fixture("model.npz"), t_fixture("img_rgb160.jpg"), 128, 5, &rj) == 0);
    struct { const char *what; const void *data; size_t len; int status; const char *code; } in[] = {
        {"text", text, strlen(text), 415, "unsupported_media_type"},
        {"truncated jpeg", jpg, lj / 2, 422, "invalid_image"},
    };
    for (size_t i = 0; i < 2; i++) {
        int st1, st2;
        json_t *raw = call(&s, "POST", u, "Content-Type: application/octet-stream\r\n", in[i].data, in[i].len, &st1);
        th_part one[] = {{"image", "x.bin", in[i].data, in[i].len}};
        char *body = th_multipart(one, 1, &blen, ctype, sizeof ctype);
        json_t *part = call(&s, "POST", u, ctype, body, blen, &st2);
        const char *m1 = str(json_object_get(raw, "error"), "message"), *m2 = str(json_object_get(part, "error"), "message");
        T_CHECKF(st1 == in[i].status && st2 == in[i].status && !strcmp(err_code(raw), in[i].code) &&
                 !strcmp(err_code(part), in[i].code) && m1 && m2 && !strcmp(m1, m2),
                 "%s: raw %d %s, multipart %d %s", in[i].what, st1, m1, st2, m2);
        json_decref(raw), json_decref(part), free(body);
    }
    int st;
    json_t *j = call(&s, "POST", u, "Content-Type: image/jpeg\r\n", text, strlen(text), &st);
    T_CHECKF(st == 415 && strstr(str(json_object_get(j, "error"), "message"), "starting \"just som\""), "%d", st);
    json_decref(j);
    th_part mixed[] = {{"image", "good.jpg", jpg, lj}, {"image", "notes.txt", text, strlen(text)},
                       {"image", "half.jpg", jpg, lj / 2}};
    char *body = th_multipart(mixed, 3, &blen, ctype, sizeof ctype);
    j = call(&s, "POST", u, ctype, body, blen, &st);
    json_t *res = json_object_get(j, "results");
    T_CHECKF(st == 200 && json_array_size(res) == 3, "status %d", st);
    T_CHECK(same_predictions(json_object_get(json_array_get(res, 0), "predictions"), &rj, 1));
    json_t *e1 = json_object_get(json_array_get(res, 1), "error"), *e2 = json_object_get(json_array_get(res, 2), "error");
    T_CHECK(e1 && !strcmp(str(e1, "code"), "unsupported_media_type") && str(e1, "message") &&
            !json_object_get(json_array_get(res, 1), "predictions"));
    T_CHECK(e2 && !strcmp(str(e2, "code"), "invalid_image") && !strcmp(str(json_array_get(res, 2), "filename"), "half.jpg"));
    json_decref(j), free(body);
    body = th_multipart(mixed + 1, 2, &blen, ctype, sizeof ctype); /* every image bad */
    j = call(&s, "POST", u, ctype, body, blen, &st);
    T_CHECKF(st == 415 && strstr(str(json_object_get(j, "error"), "message"), "none of the 2 images") &&
             strstr(str(json_object_get(j, "error"), "message"), "notes.txt"), "status %d", st);
    json_decref(j), free(body), free(jpg);
    T_EQ(server_stop(&s), 0);
}

typedef struct shot {
    const server *s;
    const char *model, *image;
    int status;
    json_t *j;
} shot;

static void *shoot(void *ud)
{
    shot *c = ud;
    c->j = classify_file(c->s, c->model, NULL, "image/jpeg", c->image, &c->status);
    return NULL;
}

static double metric(const server *s, const char *name)
{
    th_resp r;
    double v = -1;
    char key[128];
    snprintf(key, sizeof key, "\n%s ", name);
    if (th_request(s->port, "GET", "/metrics", NULL, NULL, 0, &r)) return -1;
    const char *p = strstr(r.body, key);
    if (p) v = atof(p + strlen(key));
    th_free(&r);
    return v;
}

/* Polls a metric until it has the value (at most a minute: a bound for a sanitizer build on a
 * busy machine, where a first request for a new model loads and plans it; not a timing
 * check). A pool thread may accept a connection in the same poll round as a request whose
 * handler then blocks, and that connection waits for the handler: so the caller first lets
 * such handlers block. */
static int metric_becomes(const server *s, const char *name, double want)
{
    for (int i = 0; i < 6000; i++, usleep(10000))
        if (metric(s, name) == want) return 1;
    return 0;
}

/* A queue of one image. "slow" (the tiny model at 2048 x 2048, a second or more per pass)
 * keeps the inference thread busy while a second request waits in the queue; a third is
 * refused with 503 and Retry-After, and the two others still succeed. */
static void queue_full(void)
{
    server s;
    const char *extra[] = {"--infer-queue", "1", NULL};
    T_REQUIRE(server_start(&s, "busy", extra) == 0);
    char p[1200];
    snprintf(p, sizeof p, "%s/models/slow.npz", s.dir);
    symlink(t_fixture("model.npz"), p);
    snprintf(p, sizeof p, "%s/models/slow.json", s.dir);
    put_file(p, "{\"resolution\": 2048}");
    const char *jpg = t_fixture("img_rgb160.jpg");
    shot a = {&s, "slow", jpg, 0, NULL}, b = {&s, "tiny", jpg, 0, NULL};
    pthread_t ta, tb;
    T_REQUIRE(pthread_create(&ta, NULL, shoot, &a) == 0);
    usleep(300000);
    T_CHECK(metric_becomes(&s, "bit_inference_queue_seconds_count", 1)); /* a computes */
    T_REQUIRE(pthread_create(&tb, NULL, shoot, &b) == 0);
    usleep(300000);
    T_CHECK(metric_becomes(&s, "bit_inference_queue_images", 1)); /* b waits */
    size_t len;
    void *img = slurp(jpg, &len);
    th_resp r;
    T_REQUIRE(th_request(s.port, "POST", "/v1/models/tiny/classify", "Content-Type: image/jpeg\r\n", img, len, &r) == 0);
    T_CHECKF(r.status == 503 && strstr(r.headers, "Retry-After: ") && strstr(r.body, "\"busy\""),
             "status %d", r.status);
    th_free(&r);
    free(img);
    pthread_join(ta, NULL), pthread_join(tb, NULL);
    T_CHECK(a.status == 200 && b.status == 200);
    json_decref(a.j), json_decref(b.j);
    T_CHECK(metric(&s, "bit_inference_rejected_total") == 1);
    T_EQ(server_stop(&s), 0);
}

/* ---------------------------------------------------------------- parked requests */

/* Requests park without an HTTP thread, so with 2 pool threads 16 requests sent at once
 * still pile up in the queue: they run in fewer than 16 forward passes, each answer the same
 * as the engine's for that image alone. */
static void batches_form_when_parked(void)
{
    server s;
    const char *extra[] = {"--http-threads", "2", "--max-batch", "8", "--batch-delay-ms", "20", NULL};
    T_REQUIRE(server_start(&s, "parked-batches", extra) == 0);
    const char *img[2] = {t_fixture("img_rgb160.jpg"), t_fixture("img_graphic64x48.png")};
    ref want[2];
    T_REQUIRE(reference(t_fixture("model.npz"), img[0], 128, 5, &want[0]) == 0);
    T_REQUIRE(reference(t_fixture("model.npz"), img[1], 128, 5, &want[1]) == 0);
    int st;
    json_decref(classify_file(&s, "tiny", NULL, "image/jpeg", img[0], &st)); /* loaded first */
    T_REQUIRE(st == 200);
    double images0 = metric(&s, "bit_inference_batch_size_sum");
    double passes0 = metric(&s, "bit_inference_batch_size_count");
    enum { N = 16 };
    shot c[N];
    pthread_t th[N];
    for (int i = 0; i < N; i++) {
        c[i] = (shot){&s, "tiny", img[i % 2], 0, NULL};
        T_REQUIRE(pthread_create(&th[i], NULL, shoot, &c[i]) == 0);
    }
    int ok = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        ok += c[i].status == 200 && same_predictions(json_object_get(c[i].j, "predictions"), &want[i % 2], 1);
        json_decref(c[i].j);
    }
    T_CHECKF(ok == N, "%d of %d answers right", ok, N);
    double images = metric(&s, "bit_inference_batch_size_sum") - images0;
    double passes = metric(&s, "bit_inference_batch_size_count") - passes0;
    T_CHECKF(images == N && passes < N, "%g images in %g passes", images, passes);
    T_CHECK(metric(&s, "bit_inference_batch_size_mean") > 1);
    T_EQ(server_stop(&s), 0);
}

/* A raw request whose client hangs up (closes) as soon as it is queued. */
static int post_and_hang_up(const server *s, const char *path, const void *body, size_t len)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)s->port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a)) {
        if (fd >= 0) close(fd);
        return -1;
    }
    char head[512];
    int n = snprintf(head, sizeof head, "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                     "image/jpeg\r\nContent-Length: %zu\r\n\r\n", path, len);
    int rc = th_send_all(fd, head, (size_t)n) || th_send_all(fd, body, len) ? -1 : 0;
    if (!rc && !metric_becomes(s, "bit_inference_queue_images", 1)) rc = -1;
    close(fd);
    return rc;
}

/* "slow": the tiny model at 2048 x 2048 in the server's models directory. */
static void add_slow_model(const server *s)
{
    char p[1200];
    snprintf(p, sizeof p, "%s/models/slow.npz", s->dir);
    symlink(t_fixture("model.npz"), p);
    snprintf(p, sizeof p, "%s/models/slow.json", s->dir);
    put_file(p, "{\"resolution\": 2048}");
}

/* A park timeout between the decode and the end of a "slow" request's forward pass, from one
 * measured on this build and machine (a sanitizer build decodes the 2048 px input for longer
 * than a release build's whole timeout would be): a request parked just as a slow pass starts
 * times out before that pass ends. 0 when decode and pass cannot be told apart. */
static unsigned slow_park_timeout(const char *jpg)
{
    server s;
    if (server_start(&s, "parked-probe", NULL)) return 0;
    add_slow_model(&s);
    int st;
    json_t *j = classify_file(&s, "slow", NULL, "image/jpeg", jpg, &st);
    json_decref(j);
    j = classify_file(&s, "slow", NULL, "image/jpeg", jpg, &st); /* planned: as timed below */
    json_t *tm = json_object_get(j, "timing_ms");
    double decode = json_number_value(json_object_get(tm, "decode")) +
                    json_number_value(json_object_get(tm, "load"));
    double infer = json_number_value(json_object_get(tm, "infer"));
    json_decref(j);
    server_stop(&s);
    printf("     (slow request: load + decode %.0f ms, forward %.0f ms)\n", decode, infer);
    return st == 200 && infer > 2 * decode ? (unsigned)(decode + infer / 2) : 0;
}

/* "slow" keeps the inference thread busy while requests for "tiny" wait parked: one past
 * --park-timeout-ms gets 503 "timeout" and its image leaves the queue; one whose client hangs
 * up leaves it too; the server then answers as before. */
static void parked_timeout_and_hangup(void)
{
    server s;
    const char *jpg = t_fixture("img_rgb160.jpg");
    /* The timeout half needs a pass that outlasts the decode; where it cannot have one (a
     * sanitizer build resizes to 2048 px about as slowly as the tiny model runs there) only
     * the hang-up half runs, under the default timeout, and the log says so. */
    unsigned timeout = slow_park_timeout(jpg);
    char ms[32];
    snprintf(ms, sizeof ms, "%u", timeout ? timeout : 30000);
    const char *extra[] = {"--park-timeout-ms", ms, NULL};
    T_REQUIRE(server_start(&s, "parked-timeout", extra) == 0);
    add_slow_model(&s);
    int st;
    json_decref(classify_file(&s, "tiny", NULL, "image/jpeg", jpg, &st)); /* loaded first */
    T_REQUIRE(st == 200);
    double passes = metric(&s, "bit_inference_queue_seconds_count"), cancelled = 0;
    pthread_t ta, tb;
    if (timeout) {
        shot a = {&s, "slow", jpg, 0, NULL}, b = {&s, "tiny", jpg, 0, NULL};
        T_REQUIRE(pthread_create(&ta, NULL, shoot, &a) == 0);
        T_CHECK(metric_becomes(&s, "bit_inference_queue_seconds_count", passes + 1)); /* a computes */
        T_REQUIRE(pthread_create(&tb, NULL, shoot, &b) == 0);
        pthread_join(tb, NULL);
        T_CHECKF(b.status == 503 && b.j && !strcmp(err_code(b.j), "timeout"), "status %d", b.status);
        T_CHECK(metric_becomes(&s, "bit_inference_cancelled_total", ++cancelled));
        T_CHECK(metric_becomes(&s, "bit_inference_queue_images", 0)); /* its slot is free */
        json_decref(b.j);
        pthread_join(ta, NULL); /* a timed out too, while its image was in a forward pass */
        json_decref(a.j);
        for (int i = 0; i < 600 && metric(&s, "bit_inference_compute_seconds_count") < passes + 1; i++)
            usleep(100000); /* until that pass is over (not a timing check: up to a minute) */
    } else {
        printf("     (park timeout half not run on this build: the decode is as slow as the pass)\n");
    }

    T_CHECK(metric_becomes(&s, "bit_inference_queue_images", 0));
    passes = metric(&s, "bit_inference_queue_seconds_count");
    shot a2 = {&s, "slow", jpg, 0, NULL};
    T_REQUIRE(pthread_create(&ta, NULL, shoot, &a2) == 0);
    T_CHECK(metric_becomes(&s, "bit_inference_queue_seconds_count", passes + 1));
    size_t len;
    void *img = slurp(jpg, &len);
    T_CHECK(post_and_hang_up(&s, "/v1/models/tiny/classify", img, len) == 0);
    free(img);
    T_CHECK(metric_becomes(&s, "bit_inference_cancelled_total", ++cancelled));
    T_CHECK(metric_becomes(&s, "bit_inference_queue_images", 0));
    pthread_join(ta, NULL);
    json_decref(a2.j);

    ref r;
    T_REQUIRE(reference(t_fixture("model.npz"), jpg, 128, 5, &r) == 0);
    json_t *j = classify_file(&s, "tiny", NULL, "image/jpeg", jpg, &st);
    T_CHECK(st == 200 && same_predictions(json_object_get(j, "predictions"), &r, 1));
    json_decref(j);
    T_EQ(server_stop(&s), 0);
}

static int status_of(const server *s, const char *method, const char *path, const char *hdr,
                     const char *body)
{
    int st;
    json_t *j = call(s, method, path, hdr, body, body ? strlen(body) : 0, &st);
    json_decref(j);
    return st;
}

static void auth(void)
{
    server s;
    char tok[600];
    snprintf(tok, sizeof tok, "%s/token", t_tmpdir());
    put_file(tok, "s3cret-token-for-the-tests-0123456789\n");
    const char *extra[] = {"--api-token-file", tok, NULL};
    T_REQUIRE(server_start(&s, "auth", extra) == 0);
    const char *good = "Authorization: Bearer s3cret-token-for-the-tests-0123456789\r\n";
    const char *bad = "Authorization: Bearer s3cret-token-for-the-tests-0123456780\r\n";
    size_t lj;
    char *jpg = slurp(t_fixture("img_rgb160.jpg"), &lj), hdr[256];
    const char *routes[][2] = {{"GET", "/v1/models"}, {"GET", "/v1/models/tiny"},
                               {"GET", "/v1/models/tiny/download"}, {"DELETE", "/v1/models/tiny"},
                               {"POST", "/v1/models/tiny/classify"}, {"GET", "/metrics"},
                               {"GET", "/readyz"}};
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        T_CHECKF(status_of(&s, routes[i][0], routes[i][1], NULL, NULL) == 401, "%s", routes[i][1]);
        T_CHECKF(status_of(&s, routes[i][0], routes[i][1], bad, NULL) == 401, "%s", routes[i][1]);
    }
    T_CHECK(status_of(&s, "GET", "/healthz", NULL, NULL) == 200);
    T_CHECK(status_of(&s, "GET", "/v1/models", good, NULL) == 200);
    T_CHECK(status_of(&s, "GET", "/v1/models/tiny/download", good, NULL) == 200);
    T_CHECK(status_of(&s, "DELETE", "/v1/models/tiny", good, NULL) == 409); /* past auth */
    snprintf(hdr, sizeof hdr, "%sContent-Type: image/jpeg\r\n", good);
    int st;
    json_t *j = call(&s, "POST", "/v1/models/tiny/classify", hdr, jpg, lj, &st);
    T_CHECK(st == 200 && json_array_size(json_object_get(j, "predictions")) == 5);
    json_decref(j);
    free(jpg);
    /* bit jobs sends BIT_API_TOKEN, and says to set it when the server wants one */
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "env -u BIT_API_TOKEN %s jobs --url http://127.0.0.1:%d >%s/jobs.out 2>&1",
             getenv("BIT_BIN"), s.port, t_tmpdir());
    int rc = system(cmd);
    size_t len;
    snprintf(hdr, sizeof hdr, "%s/jobs.out", t_tmpdir());
    char *out = slurp(hdr, &len);
    T_CHECKF(WIFEXITED(rc) && WEXITSTATUS(rc) == 1 && out && strstr(out, "set BIT_API_TOKEN"), "%s", out ? out : "");
    free(out);
    snprintf(cmd, sizeof cmd, "BIT_API_TOKEN=s3cret-token-for-the-tests-0123456789 BIT_URL=http://127.0.0.1:%d "
             "%s jobs >%s/jobs.out 2>&1", s.port, getenv("BIT_BIN"), t_tmpdir());
    rc = system(cmd);
    out = slurp(hdr, &len);
    T_CHECKF(WIFEXITED(rc) && WEXITSTATUS(rc) == 0 && out && strstr(out, "(no jobs)"), "%s", out ? out : "");
    free(out);
    T_EQ(server_stop(&s), 0);
}

static json_t *find_model(json_t *list, const char *id)
{
    json_t *m;
    size_t i;
    json_array_foreach(json_object_get(list, "models"), i, m)
        if (str(m, "id") && !strcmp(str(m, "id"), id)) return m;
    return NULL;
}

static int loaded(const server *s, const char *id)
{
    int st;
    char path[128];
    snprintf(path, sizeof path, "/v1/models/%s", id);
    json_t *j = call(s, "GET", path, NULL, NULL, 0, &st);
    int v = st == 200 && json_is_true(json_object_get(j, "loaded"));
    json_decref(j);
    return v;
}

static void check_base_listing(const server *s)
{
    int st;
    json_t *l = call(s, "GET", "/v1/models", NULL, NULL, 0, &st);
    json_t *a = find_model(l, "tiny"), *b = find_model(l, "tiny2");
    T_REQUIRE(st == 200 && a && b && json_array_size(json_object_get(l, "models")) == 2);
    struct stat sa, sb;
    stat(t_fixture("model.npz"), &sa), stat(t_fixture("model2.npz"), &sb);
    T_CHECK(!strcmp(str(a, "kind"), "base") && !strcmp(str(a, "architecture"), "custom"));
    T_CHECK(json_integer_value(json_object_get(a, "num_classes")) == 10 &&
            json_array_size(json_object_get(a, "classes")) == 10 &&
            !strcmp(json_string_value(json_array_get(json_object_get(a, "classes"), 6)), "class6"));
    T_CHECK(json_integer_value(json_object_get(a, "resolution")) == 128 &&
            json_integer_value(json_object_get(a, "bytes")) == sa.st_size);
    T_CHECK(json_is_false(json_object_get(a, "loaded")) && json_is_null(json_object_get(a, "job")));
    /* a copied-in model without labels says what to do about it */
    T_CHECK(json_is_null(json_object_get(a, "note")) && str(b, "note") && strstr(str(b, "note"), "tiny2.labels.txt"));
    T_CHECK(json_integer_value(json_object_get(b, "num_classes")) == 7 &&
            json_is_null(json_object_get(b, "classes")) &&
            json_integer_value(json_object_get(b, "resolution")) == 64 &&
            json_integer_value(json_object_get(b, "bytes")) == sb.st_size);
    json_decref(l);
}

static void registry(void)
{
    server s;
    T_REQUIRE(server_start(&s, "registry", NULL) == 0);
    check_base_listing(&s);
    th_resp r;
    size_t len;
    void *file = slurp(t_fixture("model.npz"), &len);
    T_REQUIRE(th_request(s.port, "GET", "/v1/models/tiny/download", NULL, NULL, 0, &r) == 0);
    T_CHECK(r.status == 200 && r.body_len == len && !memcmp(r.body, file, len));
    T_CHECK(strstr(r.headers, "filename=\"tiny.npz\""));
    th_free(&r);
    free(file);
    ref r2;
    T_REQUIRE(reference(t_fixture("model2.npz"), t_fixture("img_rgb160.jpg"), 64, 5, &r2) == 0);
    int st;
    json_t *j = classify_file(&s, "tiny2", NULL, "image/jpeg", t_fixture("img_rgb160.jpg"), &st);
    T_CHECK(st == 200 && same_predictions(json_object_get(j, "predictions"), &r2, 0));
    json_decref(j);
    T_CHECK(loaded(&s, "tiny2") && !loaded(&s, "tiny"));
    T_CHECK(status_of(&s, "DELETE", "/v1/models/tiny", NULL, NULL) == 409);
    T_CHECK(status_of(&s, "GET", "/v1/models/nope", NULL, NULL) == 404);
    T_CHECK(status_of(&s, "GET", "/v1/models/nope/download", NULL, NULL) == 404);
    T_CHECK(status_of(&s, "DELETE", "/v1/models/nope", NULL, NULL) == 404);
    /* readiness covers every checkpoint's headers */
    j = call(&s, "GET", "/readyz", NULL, NULL, 0, &st);
    T_CHECK(st == 200 && json_integer_value(json_object_get(j, "models_checked")) == 2);
    json_decref(j);
    char bad[1200];
    snprintf(bad, sizeof bad, "%s/models/broken.npz", s.dir);
    put_file(bad, "PK\3\4 this is no zip");
    j = call(&s, "GET", "/readyz", NULL, NULL, 0, &st);
    T_CHECK(st == 503 && json_is_false(json_object_get(j, "models")) && str(j, "models_error") &&
            strstr(str(j, "models_error"), "broken.npz"));
    json_decref(j);
    j = call(&s, "GET", "/v1/models", NULL, NULL, 0, &st);
    T_CHECK(st == 200 && json_array_size(json_object_get(j, "models")) == 2);
    json_decref(j);
    unlink(bad);
    T_CHECK(status_of(&s, "GET", "/readyz", NULL, NULL) == 200);
    T_EQ(server_stop(&s), 0);
}

/* Two models, a budget that holds only one of them: each request still succeeds. */
static void lru_eviction(void)
{
    server s;
    const char *extra[] = {"--model-cache-mb", "16", NULL}; /* tiny 8.1 MB, tiny2 12.6 MB */
    T_REQUIRE(server_start(&s, "lru", extra) == 0);
    const char *jpg = t_fixture("img_rgb160.jpg");
    ref r1;
    T_REQUIRE(reference(t_fixture("model.npz"), jpg, 128, 5, &r1) == 0);
    const char *order[] = {"tiny", "tiny2", "tiny", "tiny2", "tiny"};
    for (int i = 0; i < 5; i++) {
        int st;
        json_t *j = classify_file(&s, order[i], NULL, "image/jpeg", jpg, &st);
        T_CHECKF(st == 200, "%s: %d", order[i], st);
        if (i % 2 == 0) T_CHECK(same_predictions(json_object_get(j, "predictions"), &r1, 1));
        json_decref(j);
        T_CHECK(loaded(&s, order[i]) && !loaded(&s, i % 2 ? "tiny" : "tiny2"));
    }
    T_CHECK(metric(&s, "bit_models_loaded") == 1 && metric(&s, "bit_model_evictions_total") == 4);
    T_CHECK(metric(&s, "bit_model_cache_bytes") == 2017578.0 * 4 && metric(&s, "bit_model_loads_total") == 5);
    T_EQ(server_stop(&s), 0);
}

/* 32 clients at once on one model get what one client alone gets, and share passes. */
static void concurrent_clients(void)
{
    server s;
    const char *extra[] = {"--http-threads", "32", "--max-batch", "8", "--batch-delay-ms", "20", NULL};
    T_REQUIRE(server_start(&s, "concurrent", extra) == 0);
    const char *img[2] = {t_fixture("img_rgb160.jpg"), t_fixture("img_graphic64x48.png")};
    ref want[2];
    T_REQUIRE(reference(t_fixture("model.npz"), img[0], 128, 5, &want[0]) == 0);
    T_REQUIRE(reference(t_fixture("model.npz"), img[1], 128, 5, &want[1]) == 0);
    int st;
    json_decref(classify_file(&s, "tiny", NULL, "image/jpeg", img[0], &st)); /* loaded before the rush */
    shot c[32];
    pthread_t th[32];
    for (int i = 0; i < 32; i++) {
        c[i] = (shot){&s, "tiny", img[i % 2], 0, NULL};
        T_REQUIRE(pthread_create(&th[i], NULL, shoot, &c[i]) == 0);
    }
    int ok = 0;
    for (int i = 0; i < 32; i++) {
        pthread_join(th[i], NULL);
        ok += c[i].status == 200 && same_predictions(json_object_get(c[i].j, "predictions"), &want[i % 2], 1);
        json_decref(c[i].j);
    }
    T_CHECKF(ok == 32, "%d of 32 answers right", ok);
    double images = metric(&s, "bit_inference_batch_size_sum"), passes = metric(&s, "bit_inference_batch_size_count");
    T_CHECKF(images == 33 && passes < images, "%g images in %g passes", images, passes);
    T_EQ(server_stop(&s), 0);
}

/* ---------------------------------------------------------------- fine-tuned models */

/* A tensor dataset (.npz, tests/tdata.h) of n images, one class per colour channel. */
static const char *tensor_dataset(int n, int classes)
{
    static char path[600];
    snprintf(path, sizeof path, "%s/data-%d-%d.npz", t_tmpdir(), n, classes);
    td_colours_npz(path, n, classes);
    return path;
}

/* POSTs a JSON or file body; copies the answer's "id" into id. */
static int post_id(const server *s, const char *path, const char *hdr, const void *b, size_t len,
                   char *id, size_t idlen)
{
    int st;
    json_t *j = call(s, "POST", path, hdr, b, len, &st);
    snprintf(id, idlen, "%s", j && str(j, "id") ? str(j, "id") : "");
    json_decref(j);
    return st;
}

static json_t *wait_job(const server *s, const char *id, const char *want, double seconds)
{
    return ts_wait_job(s, id, want, seconds);
}

static int start_job(const server *s, const char *ds, const char *base, const char *name,
                     const char *hp, char *id)
{
    char body[512];
    snprintf(body, sizeof body, "{\"dataset\": \"%s\", \"base_model\": \"%s\", \"name\": \"%s\", "
             "\"hyperparameters\": %s}", ds, base, name, hp);
    return post_id(s, "/v1/jobs", "Content-Type: application/json\r\n", body, strlen(body), id, 64);
}

static void check_fine_tuned(const server *s, const char *job, char *path, size_t plen)
{
    int st;
    json_t *m = call(s, "GET", "/v1/models/colors", NULL, NULL, 0, &st);
    T_REQUIRE(st == 200 && m);
    T_CHECK(!strcmp(str(m, "kind"), "fine-tuned") && str(m, "job") && !strcmp(str(m, "job"), job));
    T_CHECK(json_integer_value(json_object_get(m, "num_classes")) == 3 &&
            json_integer_value(json_object_get(m, "resolution")) >= 32 && str(m, "architecture"));
    snprintf(path, plen, "%s/var/jobs/%s/model.npz", s->dir, job);
    struct stat sb;
    T_CHECK(stat(path, &sb) == 0 && json_integer_value(json_object_get(m, "bytes")) == sb.st_size);
    json_decref(m);
    json_t *j = classify_file(s, "colors", NULL, "image/png", t_fixture("img_graphic64x48.png"), &st);
    T_CHECK(st == 200 && json_array_size(json_object_get(j, "predictions")) == 3);
    json_decref(j);
    th_resp r;
    size_t len;
    void *file = slurp(path, &len);
    T_REQUIRE(th_request(s->port, "GET", "/v1/models/colors/download", NULL, NULL, 0, &r) == 0);
    T_CHECK(r.status == 200 && len > 0 && r.body_len == len && !memcmp(r.body, file, len));
    /* the download carries the class names and resolution: a copy among the base models
     * (another server's, say) lists and classifies with them */
    char copy[1200];
    snprintf(copy, sizeof copy, "%s/models/colors-copy.npz", s->dir);
    FILE *f = fopen(copy, "wb");
    T_REQUIRE(f && fwrite(r.body, 1, r.body_len, f) == r.body_len);
    fclose(f);
    th_free(&r);
    free(file);
    json_t *orig = call(s, "GET", "/v1/models/colors", NULL, NULL, 0, &st);
    json_t *cp = call(s, "GET", "/v1/models/colors-copy", NULL, NULL, 0, &st);
    T_CHECK(st == 200 && !strcmp(str(cp, "kind"), "base") &&
            json_equal(json_object_get(cp, "classes"), json_object_get(orig, "classes")) &&
            json_array_size(json_object_get(cp, "classes")) == 3 && json_is_null(json_object_get(cp, "note")) &&
            json_integer_value(json_object_get(cp, "resolution")) == json_integer_value(json_object_get(orig, "resolution")));
    json_decref(orig), json_decref(cp);
    json_t *a = classify_file(s, "colors", NULL, "image/png", t_fixture("img_graphic64x48.png"), &st);
    json_t *b = classify_file(s, "colors-copy", NULL, "image/png", t_fixture("img_graphic64x48.png"), &st);
    T_CHECK(st == 200 && json_equal(json_object_get(a, "predictions"), json_object_get(b, "predictions")));
    json_decref(a), json_decref(b);
    unlink(copy);
}

/* A job makes "colors"; a second job trains on it (and meanwhile classification works and
 * answers as the engine does); the model cannot go while that job lives, then it can. */
static void fine_tuned_lifecycle(void)
{
    server s;
    T_REQUIRE(server_start(&s, "finetuned", NULL) == 0);
    size_t len;
    char ds[64], job[64], job2[64], path[1200], mpath[128];
    void *data = slurp(tensor_dataset(30, 3), &len);
    int st = post_id(&s, "/v1/datasets?format=npz", "Content-Type: application/octet-stream\r\n", data, len, ds, sizeof ds);
    free(data);
    T_REQUIRE(st == 201);
    T_REQUIRE(start_job(&s, ds, "tiny", "colors", "{\"steps\": 4, \"batch\": 6}", job) == 201);
    json_t *j = wait_job(&s, job, "succeeded", 120);
    T_REQUIRE(j && !strcmp(str(j, "status"), "succeeded"));
    json_decref(j);
    check_fine_tuned(&s, job, path, sizeof path);
    T_REQUIRE(start_job(&s, ds, "colors", "longer", "{\"steps\": 100000, \"batch\": 6}", job2) == 201);
    j = wait_job(&s, job2, "running", 60);
    T_REQUIRE(j && !strcmp(str(j, "status"), "running"));
    json_decref(j);
    ref r;
    T_REQUIRE(reference(t_fixture("model.npz"), t_fixture("img_rgb160.jpg"), 128, 5, &r) == 0);
    for (int i = 0; i < 3; i++) { /* while the job trains */
        j = classify_file(&s, "tiny", NULL, "image/jpeg", t_fixture("img_rgb160.jpg"), &st);
        T_CHECK(st == 200 && same_predictions(json_object_get(j, "predictions"), &r, 1));
        json_decref(j);
    }
    j = wait_job(&s, job2, "running", 1); /* the classifications above overlapped training */
    T_CHECK(j && !strcmp(str(j, "status"), "running"));
    json_decref(j);
    j = call(&s, "DELETE", "/v1/models/colors", NULL, NULL, 0, &st);
    T_CHECK(st == 409 && !strcmp(err_code(j), "in_use"));
    json_decref(j);
    snprintf(mpath, sizeof mpath, "/v1/jobs/%s/cancel", job2);
    T_CHECK(status_of(&s, "POST", mpath, NULL, NULL) == 200);
    json_decref(wait_job(&s, job2, "cancelled", 60));
    T_CHECK(status_of(&s, "DELETE", "/v1/models/colors", NULL, NULL) == 200);
    T_NE(access(path, F_OK), 0);
    T_CHECK(status_of(&s, "GET", "/v1/models/colors", NULL, NULL) == 404);
    T_CHECK(expect(&s, "/v1/models/colors/classify", "Content-Type: image/jpeg\r\n", "x", 1, 404, NULL));
    T_EQ(server_stop(&s), 0);
}

/* The thread budget: idle, a classify runs on every core (--cores 2); while a job trains,
 * training holds cores - infer-share, and 8 concurrent classify requests never make the
 * OpenMP teams measured inside both (bit_cores_peak_observed) add up past the cores. */
static void budget_while_training(void)
{
    server s;
    const char *extra[] = {"--cores", "2", "--infer-share", "1", "--infer-threads", "0", NULL};
    T_REQUIRE(server_start(&s, "budget", extra) == 0);
    const char *jpg = t_fixture("img_rgb160.jpg");
    int st;
    json_decref(classify_file(&s, "tiny", NULL, "image/jpeg", jpg, &st));
    T_REQUIRE(st == 200);
    T_CHECK(metric(&s, "bit_cores") == 2);
    T_CHECK(metric(&s, "bit_cores_peak_observed") == 2); /* idle: inference used both cores */
    size_t len;
    char ds[64], job[64], path[128];
    void *data = slurp(tensor_dataset(30, 3), &len);
    T_REQUIRE(post_id(&s, "/v1/datasets?format=npz", "Content-Type: application/octet-stream\r\n",
                      data, len, ds, sizeof ds) == 201);
    free(data);
    T_REQUIRE(start_job(&s, ds, "tiny", "budget", "{\"steps\": 100000, \"batch\": 6}", job) == 201);
    json_t *j = wait_job(&s, job, "running", 60);
    T_REQUIRE(j && !strcmp(str(j, "status"), "running"));
    json_decref(j);
    T_CHECK(metric_becomes(&s, "bit_cores_held{side=\"training\"}", 1));
    ref r;
    T_REQUIRE(reference(t_fixture("model.npz"), jpg, 128, 5, &r) == 0);
    for (int round = 0; round < 3; round++) {
        shot c[8];
        pthread_t th[8];
        for (int i = 0; i < 8; i++) {
            c[i] = (shot){&s, "tiny", jpg, 0, NULL};
            T_REQUIRE(pthread_create(&th[i], NULL, shoot, &c[i]) == 0);
        }
        int ok = 0;
        for (int i = 0; i < 8; i++) {
            pthread_join(th[i], NULL);
            ok += c[i].status == 200 && same_predictions(json_object_get(c[i].j, "predictions"), &r, 1);
            json_decref(c[i].j);
        }
        T_CHECKF(ok == 8, "%d of 8 answers right", ok);
    }
    double peak = metric(&s, "bit_cores_peak"), seen = metric(&s, "bit_cores_peak_observed");
    T_CHECKF(peak >= 1 && peak <= 2 && seen >= 1 && seen <= 2, "held %g, measured %g", peak, seen);
    snprintf(path, sizeof path, "/v1/jobs/%s/cancel", job);
    T_CHECK(status_of(&s, "POST", path, NULL, NULL) == 200);
    json_decref(wait_job(&s, job, "cancelled", 60));
    T_CHECK(metric_becomes(&s, "bit_cores_held{side=\"training\"}", 0));
    T_EQ(server_stop(&s), 0);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    T_RUN(raw_bodies);
    T_RUN(serves_in_its_precision);
    T_RUN(multipart_images);
    T_RUN(error_statuses);
    T_RUN(per_image_results);
    T_RUN(queue_full);
    T_RUN(auth);
    T_RUN(registry);
    T_RUN(lru_eviction);
    T_RUN(concurrent_clients);
    T_RUN(batches_form_when_parked);
    T_RUN(parked_timeout_and_hangup);
    T_RUN(fine_tuned_lifecycle);
    T_RUN(budget_while_training);
    return t_done();
}
