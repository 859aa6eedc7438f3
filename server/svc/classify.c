/* Classification: resolve the model, hold it in the inference cache, decode the images with
 * the pixel limits into one batch, run it with other requests' images, answer top-k. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "preproc.h"
#include "server/svc/svc_int.h"

void svc_classification_free(svc_classification *c)
{
    for (int i = 0; c->images && i < c->n; i++) {
        for (int k = 0; k < c->images[i].npred; k++) free(c->images[i].pred[k].label);
        free(c->images[i].pred);
    }
    free(c->images);
    memset(c, 0, sizeof *c);
}

/* One image into dst (its eval transform); on failure the result says why. */
/* Reserves the decode's memory (the full-size RGB image and the decoder's own rows, counted
 * from the header) from the budget before anything is allocated. */
static int reserve(svc *s, const void *buf, size_t len, uint64_t *held, char *err, size_t errlen)
{
    img_info info;
    *held = 0;
    int rc = img_probe(buf, len, &info, err, errlen);
    if (rc) return rc;
    uint64_t bytes = (uint64_t)info.width * info.height * 8 + len;
    if ((rc = bud_reserve(s->mem, bytes, SVC_MEMORY_WAIT_MS)) == ENG_ELIMIT)
        return eng_errf(err, errlen, rc, "a %ux%u image needs %llu MB to decode, more than the "
                        "server's memory budget", (unsigned)info.width, (unsigned)info.height,
                        (unsigned long long)(bytes >> 20));
    if (rc) return eng_errf(err, errlen, rc, "the server's memory budget is in use: try again");
    *held = bytes;
    return 0;
}

static void decode_one(svc *s, const svc_image *im, int res, float *dst, svc_result *r)
{
    uint64_t held = 0;
    void *file = NULL;
    const void *buf = im->data;
    size_t len = im->len;
    img_rgb8 *img = NULL;
    size_t max = s->cfg.img.max_file_bytes ? s->cfg.img.max_file_bytes : IMG_DEFAULT_MAX_FILE_BYTES;
    int rc = 0;
    if (!buf && (rc = eng_file_read(im->path, max, &file, &len, r->error, sizeof r->error))) goto done;
    if (!buf) buf = file;
    if (img_sniff(buf, len) == IMG_UNKNOWN) {
        /* The bytes decide, not the declared type, so one file gets one answer whether it came
         * as the body or as a part: not an image at all is 415, a broken image 422. */
        char head[16];
        size_t k = 0;
        for (const unsigned char *c = buf; k < 8 && k < len; k++)
            head[k] = c[k] >= 0x20 && c[k] < 0x7f && c[k] != '"' && c[k] != '\\' ? (char)c[k] : '.';
        head[k] = 0;
        rc = eng_errf(r->error, sizeof r->error, ENG_EUNSUPPORTED,
                      "not a JPEG or PNG image: %zu bytes starting \"%s\"", len, head);
        goto done;
    }
    if ((rc = reserve(s, buf, len, &held, r->error, sizeof r->error))) goto done;
    if (!(rc = img_decode(buf, len, &s->cfg.img, res, &img, r->error, sizeof r->error)))
        rc = pre_eval(img, res, dst, r->error, sizeof r->error);
    bud_release(s->mem, held);
done:
    r->code = rc;
    snprintf(r->reason, sizeof r->reason, "%s", !rc ? "" : rc == ENG_ELIMIT ? "too_large"
             : rc == ENG_EUNSUPPORTED ? "unsupported_media_type" : rc == ENG_EFORMAT ? "invalid_image"
             : rc == SVC_EBUSY ? "busy" : "internal");
    img_rgb8_free(img);
    free(file);
}

static int top_k(const float *logits, int classes, int topk, const eng_labels *labels,
                 svc_result *r)
{
    int idx[1000];
    float prob[1000];
    int n = eng_topk(logits, classes, topk, idx, prob);
    if (!(r->pred = calloc((size_t)n + 1, sizeof *r->pred))) return ENG_ENOMEM;
    for (int i = 0; i < n; i++) {
        char num[16];
        const char *name = eng_labels_get(labels, idx[i]);
        snprintf(num, sizeof num, "%d", idx[i]);
        r->pred[i] = (svc_pred){idx[i], prob[i], strdup(name ? name : num)};
        if (!r->pred[i].label) return ENG_ENOMEM;
        r->npred = i + 1;
    }
    return 0;
}

/* Runs the decoded images (ok of them, packed in x) and fills their results. */
static int infer(svc *s, inf_model *im, const float *x, int ok, int res, svc_classification *c,
                 int topk, svc_err *e)
{
    char err[1024];
    int k = inf_model_classes(im), retry = 1, rc = 0;
    float *logits = malloc(sizeof(float) * (size_t)ok * (size_t)k);
    inf_timing t = {0};
    if (!logits) return svc__fail(s, e, ENG_ENOMEM, NULL, "out of memory");
    rc = inf_classify(s->infer, im, x, ok, res, logits, &t, &retry, err, sizeof err);
    if (rc == INF_EBUSY) {
        svc__fail(s, e, SVC_EBUSY, "busy", "%s", err);
        e->retry_after_s = retry;
    } else if (rc) {
        svc__fail(s, e, rc == ENG_ELIMIT ? rc : ENG_EIO, NULL, "%s", err);
    } else {
        c->queue_ms = t.queue_ms, c->infer_ms = t.infer_ms;
        for (int i = 0, j = 0; i < c->n && !rc; i++)
            if (!c->images[i].code && (rc = top_k(logits + (size_t)j++ * k, k, topk, inf_model_labels(im), &c->images[i])))
                svc__fail(s, e, rc, NULL, "out of memory");
    }
    free(logits);
    return rc;
}

/* Decodes the images while holding the model, so the inference thread knows more are on
 * their way (it holds a batch open for them), then infers the ones that decoded. */
static int with_model(svc *s, const reg_model *m, inf_model *im, const svc_image *img, int n,
                      int topk, svc_classification *c, svc_err *e)
{
    size_t per = (size_t)3 * m->resolution * m->resolution;
    float *x = eng_alloc(sizeof(float) * per * (size_t)n);
    int ok = 0, rc = 0;
    if (!x) return svc__fail(s, e, ENG_ENOMEM, NULL, "out of memory");
    double t0 = eng_now_ms();
    for (int i = 0; i < n; i++) {
        decode_one(s, &img[i], m->resolution, x + per * (size_t)ok, &c->images[i]);
        if (!c->images[i].code) ok++;
        else svc__scrub(s, c->images[i].error, sizeof c->images[i].error);
    }
    c->decode_ms = eng_now_ms() - t0;
    if (ok) rc = infer(s, im, x, ok, m->resolution, c, topk, e);
    eng_free(x);
    return rc;
}

int svc_classify(svc *s, const char *model_ref, const svc_image *img, int n, int topk,
                 svc_classification *out, svc_err *e)
{
    char err[1024];
    reg_model m;
    inf_model *im = NULL;
    memset(out, 0, sizeof *out);
    if (n < 1 || n > SVC_MAX_IMAGES)
        return svc__fail(s, e, ENG_EINVAL, "invalid_parameter", "send 1 to %d images", SVC_MAX_IMAGES);
    int rc = reg_resolve(s->models, model_ref, &m, err, sizeof err);
    if (rc) return svc__fail(s, e, rc, NULL, "%s", err);
    inf_spec spec = {.path = m.path, .labels_path = m.labels};
    snprintf(out->model_id, sizeof out->model_id, "%s", m.id);
    if ((rc = inf_acquire(s->infer, &spec, &im, &out->load_ms, err, sizeof err))) {
        svc__fail(s, e, rc == ENG_ENOTFOUND ? rc : ENG_EIO, rc == ENG_ENOTFOUND ? NULL : "model_unloadable",
                  "%s", err);
    } else if (!(out->images = calloc((size_t)n, sizeof *out->images))) {
        rc = svc__fail(s, e, ENG_ENOMEM, NULL, "out of memory");
    } else {
        out->n = n;
        rc = with_model(s, &m, im, img, n, topk, out, e);
    }
    inf_release(s->infer, im);
    reg_model_clear(&m);
    if (rc) svc_classification_free(out);
    return rc;
}
