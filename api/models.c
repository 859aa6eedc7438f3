/* /v1/models: the registry (base models are the .npz files of --models-dir, fine-tuned models
 * rows of the store), download, delete, and classification through the inference module. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "api/api_int.h"
#include "preproc.h"

/* A model as the API sees it: a store row, or a base file when row is NULL. */
typedef struct model_ref {
    char id[256], name[256], path[4200], labels[4300];
    const char *kind;
    int resolution;
    store_model *row;
    struct stat sb;
} model_ref;

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int word_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
}

/* Base names become paths, so they are words, never paths (as the worker's base_model). */
static int name_ok(const char *s)
{
    if (!s || !*s || strlen(s) > 200 || s[0] == '.') return 0;
    for (; *s; s++)
        if (!word_char(*s)) return 0;
    return 1;
}

static int default_resolution(const api *a)
{
    return a->cfg.base_resolution >= ENG_MIN_RES ? a->cfg.base_resolution : 128;
}

/* NAME.json beside a base model may say {"resolution": R}; else the server's default. */
static int base_resolution(const api *a, const char *name)
{
    char file[300], path[4400];
    snprintf(file, sizeof file, "%s.json", name);
    int r = default_resolution(a);
    if (eng_path_join(path, sizeof path, a->cfg.models_dir, file) || access(path, R_OK)) return r;
    json_t *j = json_load_file(path, 0, NULL);
    json_int_t v = json_integer_value(json_object_get(j, "resolution"));
    json_decref(j);
    return v >= ENG_MIN_RES && v <= PRE_MAX_SIDE ? (int)v : r;
}

static int from_file(api *a, const char *name, model_ref *m, char *err, size_t errlen)
{
    char file[300];
    snprintf(file, sizeof file, "%s.npz", name);
    if (!name_ok(name) || eng_path_join(m->path, sizeof m->path, a->cfg.models_dir, file) ||
        stat(m->path, &m->sb) || !S_ISREG(m->sb.st_mode))
        return eng_errf(err, errlen, ENG_ENOTFOUND, "no model '%s'", name);
    snprintf(m->id, sizeof m->id, "%s", name);
    snprintf(m->name, sizeof m->name, "%s", name);
    snprintf(m->labels, sizeof m->labels, "%.*s.labels.txt", (int)strlen(m->path) - 4, m->path);
    m->kind = "base";
    m->resolution = base_resolution(a, name);
    return 0;
}

/* A row's labels: NAME.labels.txt beside its file, else the run directory's labels.txt. */
static void from_row(api *a, model_ref *m)
{
    store_model *r = m->row;
    size_t n = strlen(r->path);
    snprintf(m->id, sizeof m->id, "%s", r->id);
    snprintf(m->name, sizeof m->name, "%s", r->name ? r->name : r->id);
    snprintf(m->path, sizeof m->path, "%s", r->path);
    snprintf(m->labels, sizeof m->labels, "%.*s.labels.txt", n > 4 ? (int)(n - 4) : (int)n, r->path);
    if (access(m->labels, R_OK)) {
        const char *slash = strrchr(r->path, '/');
        int dir = slash ? (int)(slash - r->path) : 0;
        snprintf(m->labels, sizeof m->labels, "%.*s%slabels.txt", dir, r->path, slash ? "/" : "");
    }
    m->kind = !strcmp(r->kind, "base") ? "base" : "fine-tuned";
    m->resolution = r->resolution >= ENG_MIN_RES ? r->resolution : default_resolution(a);
    if (stat(m->path, &m->sb)) memset(&m->sb, 0, sizeof m->sb);
}

/* {id} is a registered name or id (as for base_model), else a file in --models-dir. */
static int resolve(api *a, const char *ref, model_ref *m, char *err, size_t errlen)
{
    memset(m, 0, sizeof *m);
    int rc = store_model_get_by_name(a->cfg.st, ref, &m->row, err, errlen);
    if (rc == ENG_ENOTFOUND) rc = store_model_get(a->cfg.st, ref, &m->row, err, errlen);
    if (!rc) {
        from_row(a, m);
        return 0;
    }
    return rc == ENG_ENOTFOUND ? from_file(a, ref, m, err, errlen) : rc;
}

static void ref_free(model_ref *m) { store_model_free(m->row); }

static json_t *labels_json(const char *path)
{
    eng_labels *l = NULL;
    if (access(path, R_OK) || eng_labels_load(path, &l, NULL, 0)) return NULL;
    json_t *arr = json_array();
    for (int i = 0; i < l->n; i++) json_array_append_new(arr, json_string(l->names[i]));
    eng_labels_free(l);
    return arr;
}

/* What GET /v1/models shows of one model; *broken when a base file's headers do not parse. */
static json_t *model_json(api *a, const model_ref *m, int *broken)
{
    char err[512];
    eng_arch ar;
    json_t *classes = NULL, *arch = NULL, *nc = NULL, *error = NULL;
    if (m->row) {
        classes = m->row->classes_json ? json_loads(m->row->classes_json, 0, NULL) : NULL;
        if (!json_is_array(classes)) json_decref(classes), classes = NULL;
        else nc = json_integer((json_int_t)json_array_size(classes));
        if (m->row->architecture) arch = json_string(m->row->architecture);
    } else if (inf_probe(m->path, &ar, err, sizeof err) == 0) {
        arch = json_string(eng_arch_name(&ar));
        nc = ar.head ? json_integer(ar.head) : NULL;
        classes = labels_json(m->labels);
    } else {
        error = json_string(err);
    }
    if (broken) *broken = error != NULL;
    return json_pack("{s:s, s:s, s:s, s:o?, s:o?, s:o?, s:i, s:s?, s:b, s:I, s:o, s:o*}", "id",
                     m->id, "name", m->name, "kind", m->kind, "architecture", arch, "num_classes", nc,
                     "classes", classes, "resolution", m->resolution, "job",
                     m->row ? m->row->job_id : NULL, "loaded",
                     a->cfg.infer && inf_loaded(a->cfg.infer, m->path),
                     "bytes", (json_int_t)m->sb.st_size, "created_at",
                     api_time(m->row ? m->row->created_at : (int64_t)m->sb.st_mtime * 1000),
                     "error", error);
}

static int npz_file(const struct dirent *e)
{
    size_t n = strlen(e->d_name);
    return n > 4 && !strcmp(e->d_name + n - 4, ".npz");
}

/* Base files by name (those a registered model shadows are left out), then the store's rows,
 * newest first. Files whose headers do not parse are not models: /readyz names them. */
static int list_models(srv_req *req, void *ud)
{
    api *a = ud;
    char err[512];
    store_models l = {0};
    struct dirent **ents = NULL;
    if (store_model_list(a->cfg.st, NULL, &l, err, sizeof err)) return api_fail(req, ENG_EIO, err);
    json_t *arr = json_array();
    int n = scandir(a->cfg.models_dir, &ents, npz_file, alphasort);
    for (int i = 0; i < n; i++) {
        char name[300];
        model_ref m = {0};
        int shadowed = 0, broken = 0;
        snprintf(name, sizeof name, "%.*s", (int)strlen(ents[i]->d_name) - 4, ents[i]->d_name);
        for (size_t k = 0; k < l.n; k++) shadowed |= !strcmp(l.v[k].name, name) || !strcmp(l.v[k].id, name);
        if (!shadowed && from_file(a, name, &m, err, sizeof err) == 0) {
            json_t *o = model_json(a, &m, &broken);
            if (broken) json_decref(o);
            else json_array_append_new(arr, o);
        }
        free(ents[i]);
    }
    free(ents);
    for (size_t k = 0; k < l.n; k++) {
        model_ref m = {.row = &l.v[k]};
        from_row(a, &m);
        json_array_append_new(arr, model_json(a, &m, NULL));
    }
    store_models_free(&l);
    return srv_json(req, 200, json_pack("{s:o}", "models", arr));
}

static int get_model(srv_req *req, void *ud)
{
    api *a = ud;
    model_ref m;
    char err[512];
    int rc = resolve(a, srv_param(req, "id"), &m, err, sizeof err);
    if (rc) return api_fail(req, rc, err);
    rc = srv_json(req, 200, model_json(a, &m, NULL));
    ref_free(&m);
    return rc;
}

static int download_model(srv_req *req, void *ud)
{
    api *a = ud;
    model_ref m;
    char err[512], disp[400];
    int rc = resolve(a, srv_param(req, "id"), &m, err, sizeof err);
    if (rc) return api_fail(req, rc, err);
    /* the client's file name is the model's name reduced to safe characters */
    char safe[256];
    snprintf(safe, sizeof safe, "%s", m.name);
    for (char *c = safe; *c; c++)
        if (!word_char(*c)) *c = '_';
    snprintf(disp, sizeof disp, "attachment; filename=\"%s.npz\"", safe);
    srv_set_header(req, "Content-Disposition", disp);
    rc = srv_file(req, 200, m.path, "application/octet-stream");
    ref_free(&m);
    return rc;
}

/* The model's own files in its job's run directory; the job keeps state.json, checkpoints. */
static void remove_files(api *a, const store_model *r)
{
    char dir[4200], p[4300];
    const char *slash = strrchr(r->path, '/');
    if (!r->job_id || !slash || wrk_job_dir(a->cfg.data_dir, r->job_id, dir, sizeof dir) ||
        strlen(dir) != (size_t)(slash - r->path) || strncmp(dir, r->path, strlen(dir)))
        return; /* not a file the server made: not ours to delete */
    static const char *files[] = {"model.npz", "labels.txt", "optimizer.npz"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
        if (!eng_path_join(p, sizeof p, dir, files[i])) unlink(p);
}

static int delete_model(srv_req *req, void *ud)
{
    api *a = ud;
    model_ref m;
    char err[512];
    int rc = resolve(a, srv_param(req, "id"), &m, err, sizeof err);
    if (rc) return api_fail(req, rc, err);
    if (!m.row || strcmp(m.kind, "fine-tuned")) {
        rc = srv_error(req, 409, "base_model", "%s is a base model: remove its file from the "
                       "models directory instead", m.name);
    } else if ((rc = store_model_delete(a->cfg.st, m.row->id, err, sizeof err))) {
        rc = api_fail(req, rc, rc == STORE_EINUSE ? "a queued or running job uses this model as "
                      "its base: cancel it first" : err);
    } else {
        remove_files(a, m.row);
        if (a->cfg.infer) inf_forget(a->cfg.infer, m.path);
        rc = srv_json(req, 200, json_pack("{s:s, s:b}", "id", m.id, "deleted", 1));
    }
    ref_free(&m);
    return rc;
}

/* ---------------------------------------------------------------- classify */

#define MAX_IMAGES 64

typedef struct image_src {
    const char *data, *path; /* in memory, or in a file */
    size_t len;
    const char *ctype, *filename; /* as the client declared them; may be NULL */
} image_src;

/* Content types a raw body may have; the bytes decide between JPEG and PNG. */
static int image_type_ok(const char *ctype)
{
    static const char *ok[] = {"image/jpeg", "image/png", "application/octet-stream",
                               /* what curl --data-binary sends unless told */
                               "application/x-www-form-urlencoded"};
    if (!ctype) return 1;
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        if (!strncasecmp(ctype, ok[i], strlen(ok[i]))) return 1;
    return 0;
}

/* The images of the request: the body, or every multipart field named "image". Returns how
 * many, or -1 after answering. */
static int collect(srv_req *req, image_src *src)
{
    int n = 0;
    if (srv_body_kind(req) == SRV_MULTIPART) {
        size_t np;
        const srv_part *p = srv_parts(req, &np);
        for (size_t i = 0; i < np && n < MAX_IMAGES; i++)
            if (!strcmp(p[i].name, "image"))
                src[n++] = (image_src){p[i].data, p[i].path, p[i].size, p[i].content_type, p[i].filename};
        if (!n) return srv_error(req, 400, "invalid_parameter", "image: a multipart field 'image' is required"), -1;
        return n;
    }
    const char *ctype = srv_header(req, "Content-Type");
    if (!image_type_ok(ctype))
        return srv_error(req, 415, "unsupported_media_type", "send image/jpeg, image/png, "
                         "application/octet-stream or multipart/form-data, not %s", ctype), -1;
    if (srv_body_size(req) == 0) return srv_error(req, 400, "invalid_parameter", "the body is empty: send an image"), -1;
    size_t len = 0;
    const char *data = srv_body(req, &len);
    src[0] = (image_src){data, srv_body_path(req), len, ctype, NULL};
    return 1;
}

/* Decodes one image and writes its eval transform into dst; on failure *status is the HTTP
 * status (413 over a limit, 415 not JPEG/PNG, 422 undecodable) and err the reason. */
static int decode_one(api *a, const image_src *s, int res, float *dst, int *status, char *err,
                      size_t errlen)
{
    void *file = NULL;
    const void *buf = s->data;
    size_t len = s->len;
    img_rgb8 *img = NULL;
    size_t max = a->cfg.img.max_file_bytes ? a->cfg.img.max_file_bytes : IMG_DEFAULT_MAX_FILE_BYTES;
    int rc = 0;
    if (!buf && (rc = eng_file_read(s->path, max, &file, &len, err, errlen))) goto fail;
    if (!buf) buf = file;
    int declared = s->ctype && (!strncasecmp(s->ctype, "image/jpeg", 10) || !strncasecmp(s->ctype, "image/png", 9));
    if (img_sniff(buf, len) == IMG_UNKNOWN) {
        rc = eng_errf(err, errlen, declared ? ENG_EFORMAT : ENG_EUNSUPPORTED,
                      declared ? "the bytes are not a JPEG or PNG image (%zu bytes)"
                               : "unsupported image format: JPEG and PNG are (%zu bytes)", len);
        goto fail;
    }
    if (!(rc = img_decode(buf, len, &a->cfg.img, res, &img, err, errlen)))
        rc = pre_eval(img, res, dst, err, errlen);
fail:
    *status = !rc ? 0 : rc == ENG_ELIMIT ? 413 : rc == ENG_EUNSUPPORTED ? 415 : rc == ENG_EFORMAT ? 422 : 500;
    img_rgb8_free(img);
    free(file);
    return rc;
}

static int answer_decode_error(srv_req *req, int status, int i, int n, const image_src *s,
                               const char *err)
{
    const char *code = status == 413 ? "too_large" : status == 415 ? "unsupported_media_type"
                       : status == 422 ? "invalid_image" : "internal";
    if (n == 1) return srv_error(req, status, code, "%s", err);
    return srv_error(req, status, code, "image %d%s%s%s: %s", i + 1, s->filename ? " (" : "",
                     s->filename ? s->filename : "", s->filename ? ")" : "", err);
}

static json_t *predictions(const float *logits, int classes, int topk, const eng_labels *labels)
{
    int idx[1000];
    float prob[1000];
    int n = eng_topk(logits, classes, topk, idx, prob);
    json_t *arr = json_array();
    for (int i = 0; i < n; i++) {
        char num[16];
        const char *name = eng_labels_get(labels, idx[i]);
        snprintf(num, sizeof num, "%d", idx[i]);
        json_array_append_new(arr, json_pack("{s:s, s:i, s:f}", "label", name ? name : num,
                                             "index", idx[i], "score", (double)prob[i]));
    }
    return arr;
}

/* The whole answer: predictions for one image, results[] for several. */
static json_t *classify_json(const model_ref *m, inf_model *im, const float *logits, int n,
                             int topk, const image_src *src, json_t *timing)
{
    int c = inf_model_classes(im);
    const eng_labels *labels = inf_model_labels(im);
    if (n == 1)
        return json_pack("{s:s, s:o, s:o}", "model", m->id, "predictions",
                         predictions(logits, c, topk, labels), "timing_ms", timing);
    json_t *res = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(res, json_pack("{s:i, s:s?, s:o}", "image", i, "filename",
                                             src[i].filename, "predictions",
                                             predictions(logits + (size_t)i * c, c, topk, labels)));
    return json_pack("{s:s, s:o, s:o}", "model", m->id, "results", res, "timing_ms", timing);
}

/* Runs the decoded batch through the inference module and answers; takes timing. */
static int infer_and_answer(api *a, srv_req *req, const model_ref *m, inf_model *im,
                            const float *x, int n, int topk, const image_src *src, json_t *timing,
                            double t0)
{
    char err[1024];
    float *logits = malloc(sizeof(float) * (size_t)n * (size_t)inf_model_classes(im));
    inf_timing t = {0};
    int retry = 1, rc;
    rc = logits ? inf_classify(a->cfg.infer, im, x, n, m->resolution, logits, &t, &retry, err, sizeof err)
                : eng_errf(err, sizeof err, ENG_ENOMEM, "out of memory");
    if (rc == INF_EBUSY) {
        char v[16];
        snprintf(v, sizeof v, "%d", retry);
        srv_set_header(req, "Retry-After", v);
        rc = srv_error(req, 503, "busy", "%s", err);
    } else if (rc) {
        rc = rc == ENG_ELIMIT ? srv_error(req, 413, "too_large", "%s", err)
                              : srv_error(req, 500, "internal", "%s", err);
    } else {
        json_object_set_new(timing, "queue", json_real(t.queue_ms));
        json_object_set_new(timing, "infer", json_real(t.infer_ms));
        json_object_set_new(timing, "total", json_real(now_ms() - t0));
        rc = srv_json(req, 200, classify_json(m, im, logits, n, topk, src, json_incref(timing)));
    }
    json_decref(timing);
    free(logits);
    return rc;
}

/* Decodes the images into one batch while holding the model (loaded first if need be), so
 * that the inference thread knows they are on their way; then infers and answers. */
static int with_model(api *a, srv_req *req, const model_ref *m, const image_src *src, int n,
                      int topk, double t0)
{
    char err[1024];
    double load_ms = 0;
    inf_model *im = NULL;
    inf_spec spec = {.path = m->path, .labels_path = m->labels};
    int rc = inf_acquire(a->cfg.infer, &spec, &im, &load_ms, err, sizeof err), status = 0;
    if (rc) return rc == ENG_ENOTFOUND ? api_fail(req, rc, err)
                                        : srv_error(req, 500, "model_unloadable", "%s", err);
    size_t per = (size_t)3 * m->resolution * m->resolution;
    float *x = eng_alloc(sizeof(float) * per * (size_t)n);
    double t1 = now_ms();
    if (!x) rc = srv_error(req, 500, "internal", "out of memory");
    for (int i = 0; x && i < n && !status; i++)
        if (decode_one(a, &src[i], m->resolution, x + per * (size_t)i, &status, err, sizeof err))
            rc = answer_decode_error(req, status, i, n, &src[i], err);
    if (x && !status) {
        json_t *timing = json_pack("{s:f, s:f}", "load", load_ms, "decode", now_ms() - t1);
        rc = infer_and_answer(a, req, m, im, x, n, topk, src, timing, t0);
    }
    eng_free(x);
    inf_release(a->cfg.infer, im);
    return rc;
}

static int classify(srv_req *req, void *ud)
{
    api *a = ud;
    double t0 = now_ms();
    long topk;
    char err[1024];
    model_ref m;
    image_src src[MAX_IMAGES];
    if (api_query_int(req, "top_k", 1, 1000, 5, &topk)) return 0;
    if (!a->cfg.infer) return srv_error(req, 503, "unavailable", "this server does not classify");
    int rc = resolve(a, srv_param(req, "id"), &m, err, sizeof err);
    if (rc) return api_fail(req, rc, err);
    int n = collect(req, src);
    if (n > 0) rc = with_model(a, req, &m, src, n, (int)topk, t0);
    ref_free(&m);
    return rc;
}

/* ---------------------------------------------------------------- readiness */

int api_models_ready(api *a, int *count, char *err, size_t errlen)
{
    struct dirent **ents = NULL;
    int n = scandir(a->cfg.models_dir, &ents, npz_file, alphasort), ok = n >= 0;
    *count = n > 0 ? n : 0;
    if (n < 0) eng_errf(err, errlen, ENG_EIO, "%s: %s", a->cfg.models_dir, strerror(errno));
    for (int i = 0; i < n; i++) {
        char path[4200];
        eng_arch ar;
        if (ok && !eng_path_join(path, sizeof path, a->cfg.models_dir, ents[i]->d_name) &&
            inf_probe(path, &ar, err, errlen))
            ok = 0;
        free(ents[i]);
    }
    free(ents);
    return ok;
}

int api_routes_models(api *a, srv *s)
{
    return srv_route(s, "GET", "/v1/models", list_models, a, SRV_BODY_NONE) ||
           srv_route(s, "GET", "/v1/models/{id}", get_model, a, SRV_BODY_NONE) ||
           srv_route(s, "DELETE", "/v1/models/{id}", delete_model, a, SRV_BODY_NONE) ||
           srv_route(s, "GET", "/v1/models/{id}/download", download_model, a, SRV_BODY_NONE) ||
           srv_route(s, "POST", "/v1/models/{id}/classify", classify, a, SRV_BODY_AUTO);
}
