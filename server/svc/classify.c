/* Classification: resolve the model, hold it in the inference cache, decode the images with
 * the pixel limits into one batch on the decode pool, queue it for the inference thread,
 * which runs it with other requests' images, and answer top-k from there. Nothing blocks
 * the caller's thread: a front end parks its request until the done callback. */
#include <pthread.h>
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

/* One classify request from svc_classify_submit until its done callback has returned. */
typedef struct svc_call {
    svc *s;
    char *ref;
    const svc_image *img;
    int n, topk;
    svc_classify_done done;
    void *ud;
    pthread_mutex_t mu;
    int cancelled, in_infer;
    int refs;     /* the pipeline's, and the decode thread's while it queues the images */
    int expected; /* counted in inf_expect until it holds the model */
    uint64_t job; /* the inference request, once queued */
    reg_model m;
    inf_model *im;
    float *x, *logits;
    svc_classification c;
    struct svc_call *link;
} svc_call;

/* The decode pool: a few threads and a bounded queue of calls waiting for one. */
typedef struct dec {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    svc_call *head, *tail;
    int queued, max_queued, nth, started, stop;
    pthread_t th[16];
} dec;

static void call_free(svc_call *k)
{
    if (k->expected) inf_expect(k->s->infer, -1);
    eng_free(k->x);
    free(k->logits);
    inf_release(k->s->infer, k->im);
    reg_model_clear(&k->m);
    svc_classification_free(&k->c);
    pthread_mutex_destroy(&k->mu);
    free(k->ref);
    free(k);
}

static void call_put(svc_call *k)
{
    pthread_mutex_lock(&k->mu);
    int last = !--k->refs;
    pthread_mutex_unlock(&k->mu);
    if (last) call_free(k);
}

/* The last thing that happens to a call: the callback, then its memory. */
static void call_end(svc_call *k, int rc, const svc_err *e)
{
    svc_err ok = {0};
    if (rc) svc_classification_free(&k->c);
    k->done(k->ud, rc, &k->c, rc ? e : &ok);
    memset(&k->c, 0, sizeof k->c); /* the callback took it */
    call_put(k);
}

static void on_infer(void *ud, int rc, const inf_timing *t, const char *msg)
{
    svc_call *k = ud;
    svc_err e = {0};
    svc *s = k->s;
    svc_classification *c = &k->c;
    if (rc == INF_ECANCELED) {
        svc__fail(s, &e, rc, "cancelled", "%s", msg);
    } else if (rc) {
        svc__fail(s, &e, rc == ENG_ELIMIT ? rc : ENG_EIO, NULL, "%s", msg);
    } else {
        int classes = inf_model_classes(k->im);
        c->queue_ms = t->queue_ms, c->infer_ms = t->infer_ms;
        for (int i = 0, j = 0; i < c->n && !rc; i++)
            if (!c->images[i].code &&
                (rc = top_k(k->logits + (size_t)j++ * classes, classes, k->topk,
                            inf_model_labels(k->im), &c->images[i])))
                svc__fail(s, &e, rc, NULL, "out of memory");
    }
    call_end(k, rc, &e);
}

/* Resolves and holds the model, decodes every image, queues the decoded ones: on a decode
 * thread, so the HTTP threads and the inference thread never decode. Holding the model
 * while decoding tells the inference thread more images are on their way. */
static void run_call(svc_call *k)
{
    svc *s = k->s;
    svc_classification *c = &k->c;
    svc_err e = {0};
    char err[1024];
    int rc = reg_resolve(s->models, k->ref, &k->m, err, sizeof err), ok = 0, retry = 1;
    if (rc) {
        svc__fail(s, &e, rc, NULL, "%s", err);
        goto fail;
    }
    inf_spec spec = {.path = k->m.path, .labels_path = k->m.labels};
    snprintf(c->model_id, sizeof c->model_id, "%s", k->m.id);
    if ((rc = inf_acquire(s->infer, &spec, &k->im, &c->load_ms, err, sizeof err))) {
        svc__fail(s, &e, rc == ENG_ENOTFOUND ? rc : ENG_EIO, rc == ENG_ENOTFOUND ? NULL : "model_unloadable",
                  "%s", err);
        goto fail;
    }
    size_t per = (size_t)3 * k->m.resolution * k->m.resolution;
    int classes = inf_model_classes(k->im);
    if (!(c->images = calloc((size_t)k->n, sizeof *c->images)) ||
        !(k->x = eng_alloc(sizeof(float) * per * (size_t)k->n)) ||
        !(k->logits = malloc(sizeof(float) * (size_t)k->n * (size_t)classes))) {
        rc = svc__fail(s, &e, ENG_ENOMEM, NULL, "out of memory");
        goto fail;
    }
    c->n = k->n;
    inf_expect(s->infer, -1), k->expected = 0; /* it holds the model from now on */
    double t0 = eng_now_ms();
    for (int i = 0; i < k->n; i++) {
        decode_one(s, &k->img[i], k->m.resolution, k->x + per * (size_t)ok, &c->images[i]);
        if (!c->images[i].code) ok++;
        else svc__scrub(s, c->images[i].error, sizeof c->images[i].error);
    }
    c->decode_ms = eng_now_ms() - t0;
    pthread_mutex_lock(&k->mu);
    int cancelled = k->cancelled;
    k->in_infer = ok > 0 && !cancelled;
    pthread_mutex_unlock(&k->mu);
    if (cancelled) {
        rc = svc__fail(s, &e, INF_ECANCELED, "cancelled", "cancelled: the client is gone");
        goto fail;
    }
    if (!ok) { /* nothing to infer: each image says why */
        call_end(k, 0, &e);
        return;
    }
    /* the inference thread may be done with k before inf_submit returns: hold it */
    uint64_t job = 0;
    pthread_mutex_lock(&k->mu);
    k->refs++;
    pthread_mutex_unlock(&k->mu);
    rc = inf_submit(s->infer, k->im, k->x, ok, k->m.resolution, k->logits, on_infer, k, &job,
                    &retry, err, sizeof err);
    if (!rc) {
        /* a cancel that came while queueing found no job id yet: repeat it now */
        pthread_mutex_lock(&k->mu);
        k->job = job;
        cancelled = k->cancelled;
        pthread_mutex_unlock(&k->mu);
        if (cancelled) inf_cancel(s->infer, job);
        call_put(k);
        return;
    }
    call_put(k);
    if (rc == INF_EBUSY) {
        svc__fail(s, &e, SVC_EBUSY, "busy", "%s", err);
        e.retry_after_s = retry;
        rc = SVC_EBUSY;
    } else {
        svc__fail(s, &e, rc == ENG_ELIMIT ? rc : ENG_EIO, NULL, "%s", err);
    }
fail:
    call_end(k, rc, &e);
}

static void *dec_main(void *ud)
{
    svc *s = ud;
    dec *d = s->dec;
    pthread_mutex_lock(&d->mu);
    for (;;) {
        while (!d->head && !d->stop) pthread_cond_wait(&d->cv, &d->mu);
        if (!d->head) break;
        svc_call *k = d->head;
        if (!(d->head = k->link)) d->tail = NULL;
        d->queued--;
        pthread_mutex_unlock(&d->mu);
        run_call(k);
        pthread_mutex_lock(&d->mu);
    }
    pthread_mutex_unlock(&d->mu);
    return NULL;
}

int svc__dec_new(svc *s, char *err, size_t errlen)
{
    dec *d = calloc(1, sizeof *d);
    if (!d) return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    cores_stats cs;
    cores_get_stats(s->cores, &cs);
    d->nth = s->cfg.decode_threads > 0 ? s->cfg.decode_threads : cs.cores < 4 ? cs.cores : 4;
    if (d->nth > 16) d->nth = 16;
    d->max_queued = s->cfg.max_decode_queue > 0 ? s->cfg.max_decode_queue : 256;
    pthread_mutex_init(&d->mu, NULL);
    pthread_cond_init(&d->cv, NULL);
    s->dec = d;
    return 0;
}

int svc__dec_start(svc *s, char *err, size_t errlen)
{
    dec *d = s->dec;
    for (; d->started < d->nth; d->started++)
        if (pthread_create(&d->th[d->started], NULL, dec_main, s))
            return eng_errf(err, errlen, ENG_ENOMEM, "cannot start the decode threads");
    return 0;
}

void svc__dec_stop(svc *s)
{
    dec *d = s ? s->dec : NULL;
    if (!d) return;
    pthread_mutex_lock(&d->mu);
    d->stop = 1;
    svc_call *k = d->head;
    d->head = d->tail = NULL, d->queued = 0;
    pthread_cond_broadcast(&d->cv);
    pthread_mutex_unlock(&d->mu);
    while (k) {
        svc_call *next = k->link;
        svc_err e = {0};
        svc__fail(s, &e, ENG_EIO, NULL, "the server is stopping");
        call_end(k, ENG_EIO, &e);
        k = next;
    }
    for (int i = 0; i < d->started; i++) pthread_join(d->th[i], NULL);
    d->started = 0;
}

void svc__dec_free(svc *s)
{
    if (!s || !s->dec) return;
    svc__dec_stop(s);
    pthread_mutex_destroy(&s->dec->mu);
    pthread_cond_destroy(&s->dec->cv);
    free(s->dec);
    s->dec = NULL;
}

int svc_classify_submit(svc *s, const char *model_ref, const svc_image *img, int n, int topk,
                        svc_classify_done done, void *ud, svc_call **out, svc_err *e)
{
    dec *d = s->dec;
    if (n < 1 || n > SVC_MAX_IMAGES)
        return svc__fail(s, e, ENG_EINVAL, "invalid_parameter", "send 1 to %d images", SVC_MAX_IMAGES);
    svc_call *k = calloc(1, sizeof *k);
    if (!k || !(k->ref = strdup(model_ref ? model_ref : ""))) {
        free(k);
        return svc__fail(s, e, ENG_ENOMEM, NULL, "out of memory");
    }
    k->s = s, k->img = img, k->n = n, k->topk = topk, k->done = done, k->ud = ud, k->refs = 1;
    pthread_mutex_init(&k->mu, NULL);
    int rc = 0;
    pthread_mutex_lock(&d->mu);
    if (d->stop || !d->started) {
        rc = svc__fail(s, e, ENG_EIO, NULL, "the service is not running");
    } else if (d->queued >= d->max_queued) {
        rc = svc__fail(s, e, SVC_EBUSY, "busy", "%d classify requests are waiting to be decoded",
                       d->queued);
        e->retry_after_s = 1;
    } else {
        if (d->tail) d->tail->link = k;
        else d->head = k;
        d->tail = k;
        d->queued++;
        k->expected = 1;
        inf_expect(s->infer, 1);
        if (out) *out = k, k->refs++;
        pthread_cond_signal(&d->cv);
    }
    pthread_mutex_unlock(&d->mu);
    if (rc) {
        pthread_mutex_destroy(&k->mu);
        free(k->ref);
        free(k);
    }
    return rc;
}

void svc_call_release(svc_call *k)
{
    if (k) call_put(k);
}

void svc_classify_cancel(svc *s, svc_call *k)
{
    pthread_mutex_lock(&k->mu);
    k->cancelled = 1;
    uint64_t job = k->in_infer ? k->job : 0;
    pthread_mutex_unlock(&k->mu);
    if (job) inf_cancel(s->infer, job); /* may run done here */
}

/* The blocking form, for callers without a thread to spare for nothing. */
typedef struct sync_wait {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int over, rc;
    svc_classification *out;
    svc_err *e;
} sync_wait;

static void sync_done(void *ud, int rc, svc_classification *c, const svc_err *e)
{
    sync_wait *w = ud;
    pthread_mutex_lock(&w->mu);
    w->rc = rc, *w->out = *c, *w->e = *e, w->over = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

int svc_classify(svc *s, const char *model_ref, const svc_image *img, int n, int topk,
                 svc_classification *out, svc_err *e)
{
    sync_wait w = {.out = out, .e = e};
    memset(out, 0, sizeof *out);
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    int rc = svc_classify_submit(s, model_ref, img, n, topk, sync_done, &w, NULL, e);
    if (!rc) {
        pthread_mutex_lock(&w.mu);
        while (!w.over) pthread_cond_wait(&w.cv, &w.mu);
        pthread_mutex_unlock(&w.mu);
        rc = w.rc;
    }
    pthread_mutex_destroy(&w.mu);
    pthread_cond_destroy(&w.cv);
    return rc;
}
