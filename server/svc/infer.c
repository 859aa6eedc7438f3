#include "server/svc/infer.h"

#include <errno.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "modelmeta.h"
#include "net.h"

enum { M_LOADING, M_READY, M_FAILED };

/* One classify call waiting in its model's queue, owned by inf from inf_submit until its
 * done callback has returned (done == n: every image came out, failed or was cancelled). */
typedef struct inf_job {
    inf_model *m;
    const float *input;
    float *logits;
    int n, res, next, done, rc; /* next: first image not yet taken into a batch */
    int queued;                 /* still linked in m's queue */
    uint64_t id;
    double t_enq, t_start, t_end;
    char err[256];
    inf_done_fn fn;
    void *ud;
    struct inf_job *link;
} inf_req;

struct inf_model {
    char *path;
    int64_t mtime_ns, size;
    eng_net *net;
    eng_labels *labels;
    int classes, state, refs, doomed, rc;
    uint64_t bytes, last_used;
    char err[256]; /* why the load failed, for callers that waited on it */
    inf_req *head, *tail;
    int pending; /* images queued */
    int active;  /* requests inside inf_classify; refs - active are still decoding */
    inf_model *next;
};

#define NTIME 14
#define NBATCH 7
static const double time_le[NTIME] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                      0.25,  0.5,    1,     2.5,  5,    10,   30};
static const double batch_le[NBATCH] = {1, 2, 4, 8, 16, 32, 64};

typedef struct hist {
    uint64_t b[NTIME]; /* per bucket, not cumulative */
    uint64_t count;
    double sum;
} hist;

typedef struct stats {
    hist queue, compute, batch;
    uint64_t images, rejected, loads, evictions, cancelled;
} stats;

typedef struct slot {
    inf_req *r;
    int idx;
} slot;

struct inf {
    inf_config cfg;
    cores *own_cores; /* when the config gave none */
    pthread_mutex_t mu;
    pthread_cond_t work_cv, load_cv;
    pthread_t th;
    int started, stop;
    inf_model *models; /* every live model, doomed ones too until their last reference */
    uint64_t bytes, tick, ids;
    int pending;        /* queued images, all models */
    int incoming;       /* requests on their way (inf_expect) */
    double ms_per_image; /* moving average, for Retry-After */
    stats st;
    /* the inference thread's own buffers */
    float *in, *out;
    size_t in_cap, out_cap;
    slot slots[64];
};

static void hist_add(hist *h, const double *le, int nb, double v)
{
    int b = 0;
    while (b < nb && v > le[b]) b++;
    if (b < nb) h->b[b]++;
    h->count++;
    h->sum += v;
}

/* ---------------------------------------------------------------- the cache */

static void unlink_locked(inf *x, inf_model *m, inf_model **dead)
{
    for (inf_model **l = &x->models; *l; l = &(*l)->next)
        if (*l == m) {
            *l = m->next;
            break;
        }
    x->bytes -= m->bytes;
    m->next = *dead;
    *dead = m;
}

static void free_models(inf_model *m)
{
    while (m) {
        inf_model *next = m->next;
        eng_net_free(m->net);
        eng_labels_free(m->labels);
        free(m->path);
        free(m);
        m = next;
    }
}

/* Least recently used first, only models nobody holds, never keep. */
static void evict_locked(inf *x, const inf_model *keep, inf_model **dead)
{
    while (x->bytes > x->cfg.cache_bytes) {
        inf_model *v = NULL;
        for (inf_model *m = x->models; m; m = m->next)
            if (m != keep && m->state == M_READY && !m->refs && !m->doomed &&
                (!v || m->last_used < v->last_used))
                v = m;
        if (!v) return;
        unlink_locked(x, v, dead);
        x->st.evictions++;
    }
}

static void doom_locked(inf *x, inf_model *m, inf_model **dead)
{
    m->doomed = 1;
    if (!m->refs) unlink_locked(x, m, dead);
}

static void put_locked(inf *x, inf_model *m, inf_model **dead)
{
    if (--m->refs) return;
    if (m->doomed) unlink_locked(x, m, dead);
    else evict_locked(x, NULL, dead);
}

/* The live entry for this file; an entry for an older version of it is doomed. */
static inf_model *find_locked(inf *x, const char *path, int64_t mt, int64_t size,
                              inf_model **dead)
{
    for (inf_model *m = x->models; m; m = m->next) {
        if (m->doomed || strcmp(m->path, path)) continue;
        if (m->mtime_ns == mt && m->size == size) return m;
        doom_locked(x, m, dead);
        return NULL;
    }
    return NULL;
}

static int plans_for(int max_batch)
{
    int n = 1; /* max_batch itself */
    for (int k = 1; k < max_batch; k *= 2) n++;
    return n + 1; /* and one spare for a second resolution */
}

/* The net under the inference budget, so that a load does not fan out over every core. */
static int build_net(inf *x, const char *path, eng_net **net, char *err, size_t errlen)
{
    /* twice: plans are also keyed by the team size, which follows the grant */
    eng_net_opts o = {.precision = x->cfg.precision, .max_plans = 2 * plans_for(x->cfg.max_batch)};
    int old = omp_get_max_threads(), n = cores_infer_grant(x->cfg.cores, 0);
    omp_set_num_threads(n);
    int rc = eng_net_load(path, &o, net, NULL, err, errlen);
    omp_set_num_threads(old);
    cores_infer_release(x->cfg.cores, n);
    return rc;
}

/* Reads the file into m (already linked, LOADING, referenced by the caller). Its bytes are
 * reserved from the header first, so the budget also holds while loading. */
static int load(inf *x, inf_model *m, const inf_spec *spec, char *err, size_t errlen)
{
    eng_arch a;
    eng_net *net = NULL;
    eng_labels *lab = NULL;
    inf_model *dead = NULL;
    int rc = eng_arch_probe(spec->path, &a, err, errlen);
    if (!rc) {
        pthread_mutex_lock(&x->mu);
        m->bytes = (uint64_t)eng_arch_param_count(&a) * 4;
        x->bytes += m->bytes;
        evict_locked(x, m, &dead);
        pthread_mutex_unlock(&x->mu);
        free_models(dead);
        dead = NULL;
        rc = build_net(x, spec->path, &net, err, errlen);
    }
    if (!rc && spec->labels_path && access(spec->labels_path, R_OK) == 0) {
        rc = eng_labels_load(spec->labels_path, &lab, err, errlen);
    } else if (!rc) { /* the class names a fine-tuned model carries inside (modelmeta.h) */
        eng_meta meta;
        if (!eng_meta_read(spec->path, &meta, NULL, 0)) lab = meta.labels, meta.labels = NULL;
        eng_meta_clear(&meta);
    }
    pthread_mutex_lock(&x->mu);
    if (rc) {
        m->state = M_FAILED, m->rc = rc, m->doomed = 1;
        snprintf(m->err, sizeof m->err, "%s", err);
        put_locked(x, m, &dead);
    } else {
        m->net = net, m->labels = lab, m->classes = eng_net_out_dim(net);
        m->state = M_READY, m->last_used = ++x->tick;
        x->st.loads++;
    }
    pthread_cond_broadcast(&x->load_cv);
    pthread_mutex_unlock(&x->mu);
    free_models(dead);
    if (rc) eng_net_free(net), eng_labels_free(lab);
    return rc;
}

static inf_model *add_locked(inf *x, const char *path, int64_t mt, int64_t size)
{
    inf_model *m = calloc(1, sizeof *m);
    if (!m || !(m->path = strdup(path))) {
        free(m);
        return NULL;
    }
    m->mtime_ns = mt, m->size = size, m->state = M_LOADING;
    m->next = x->models;
    x->models = m;
    return m;
}

int inf_acquire(inf *x, const inf_spec *spec, inf_model **out, double *loaded_ms, char *err,
                size_t errlen)
{
    struct stat sb;
    inf_model *dead = NULL;
    double t0 = eng_now_ms();
    *out = NULL;
    if (loaded_ms) *loaded_ms = 0;
    if (stat(spec->path, &sb) || !S_ISREG(sb.st_mode))
        return eng_errf(err, errlen, ENG_ENOTFOUND, "%s: the model file is missing", spec->path);
    int64_t mt = (int64_t)sb.st_mtim.tv_sec * 1000000000 + sb.st_mtim.tv_nsec;
    int rc = 0;
    pthread_mutex_lock(&x->mu);
    inf_model *m = find_locked(x, spec->path, mt, (int64_t)sb.st_size, &dead);
    int fresh = !m;
    if (fresh && !(m = add_locked(x, spec->path, mt, (int64_t)sb.st_size))) {
        pthread_mutex_unlock(&x->mu);
        return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    }
    m->refs++;
    while (!fresh && m->state == M_LOADING) pthread_cond_wait(&x->load_cv, &x->mu);
    if (m->state == M_FAILED) {
        rc = eng_errf(err, errlen, m->rc, "%s", m->err);
        put_locked(x, m, &dead);
    } else if (m->state == M_READY) {
        m->last_used = ++x->tick;
    }
    pthread_mutex_unlock(&x->mu);
    free_models(dead);
    if (fresh) rc = load(x, m, spec, err, errlen);
    if (fresh && loaded_ms) *loaded_ms = eng_now_ms() - t0;
    if (!rc) *out = m;
    return rc;
}

void inf_release(inf *x, inf_model *m)
{
    inf_model *dead = NULL;
    if (!m) return;
    pthread_mutex_lock(&x->mu);
    put_locked(x, m, &dead);
    pthread_cond_signal(&x->work_cv); /* one fewer image on its way: a batch may stop waiting */
    pthread_mutex_unlock(&x->mu);
    free_models(dead);
}

int inf_model_classes(const inf_model *m) { return m->classes; }
const eng_labels *inf_model_labels(const inf_model *m) { return m->labels; }

void inf_expect(inf *x, int d)
{
    pthread_mutex_lock(&x->mu);
    x->incoming += d;
    if (d < 0) pthread_cond_signal(&x->work_cv); /* a batch may stop waiting */
    pthread_mutex_unlock(&x->mu);
}

int inf_loaded(inf *x, const char *path)
{
    int yes = 0;
    pthread_mutex_lock(&x->mu);
    for (inf_model *m = x->models; m; m = m->next)
        if (!m->doomed && m->state == M_READY && !strcmp(m->path, path)) yes = 1;
    pthread_mutex_unlock(&x->mu);
    return yes;
}

void inf_forget(inf *x, const char *path)
{
    inf_model *dead = NULL;
    pthread_mutex_lock(&x->mu);
    for (inf_model *m = x->models, *next; m; m = next) {
        next = m->next;
        if (!m->doomed && !strcmp(m->path, path)) doom_locked(x, m, &dead);
    }
    pthread_mutex_unlock(&x->mu);
    free_models(dead);
}

/* ---------------------------------------------------------------- the queue */

static int retry_after_locked(const inf *x)
{
    double s = ceil(x->pending * x->ms_per_image / 1000.0);
    return s < 1 ? 1 : s > 60 ? 60 : (int)s;
}

/* Tells the core budget how long the oldest waiting image has waited, so a training job
 * yields its cores when classify requests wait too long. */
static void tell_cores_locked(inf *x)
{
    double oldest = 0;
    for (inf_model *m = x->models; m; m = m->next)
        if (m->head && (!oldest || m->head->t_enq < oldest)) oldest = m->head->t_enq;
    cores_waiting(x->cfg.cores, oldest);
}

int inf_submit(inf *x, inf_model *m, const float *input, int n, int res, float *logits,
               inf_done_fn done, void *ud, uint64_t *id, int *retry_s, char *err,
               size_t errlen)
{
    if (n < 1) return eng_errf(err, errlen, ENG_EINVAL, "no images");
    if (n > x->cfg.max_queue)
        return eng_errf(err, errlen, ENG_ELIMIT, "%d images is more than the inference queue "
                        "holds (%d)", n, x->cfg.max_queue);
    inf_req *r = calloc(1, sizeof *r);
    if (!r) return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    *r = (inf_req){.m = m, .input = input, .logits = logits, .n = n, .res = res,
                   .t_enq = eng_now_ms(), .fn = done, .ud = ud, .queued = 1};
    int rc = 0;
    pthread_mutex_lock(&x->mu);
    if (x->stop || !x->started) {
        rc = eng_errf(err, errlen, ENG_EIO, "the inference thread is not running");
    } else if (x->pending + n > x->cfg.max_queue) {
        x->st.rejected++;
        if (retry_s) *retry_s = retry_after_locked(x);
        rc = eng_errf(err, errlen, INF_EBUSY, "the inference queue is full (%d images waiting)",
                      x->pending);
    } else {
        if (m->tail) m->tail->link = r;
        else m->head = r;
        m->tail = r;
        m->pending += n, x->pending += n, m->active++;
        r->id = ++x->ids;
        if (id) *id = r->id;
        tell_cores_locked(x);
        pthread_cond_signal(&x->work_cv);
    }
    pthread_mutex_unlock(&x->mu);
    if (rc) free(r);
    return rc;
}

/* Under the lock: the job is over (done == n); unlinks its bookkeeping. The caller runs
 * the callback outside the lock, then frees it. */
static void over_locked(inf *x, inf_req *r) { r->m->active--; (void)x; }

static void call_done(inf_req *r)
{
    inf_timing t = {r->t_start - r->t_enq, r->t_end - r->t_start};
    r->fn(r->ud, r->rc, &t, r->err);
    free(r);
}

static void unqueue_locked(inf_model *m, inf_req *r)
{
    inf_req *prev = NULL;
    for (inf_req *q = m->head; q; prev = q, q = q->link)
        if (q == r) {
            if (prev) prev->link = r->link;
            else m->head = r->link;
            if (m->tail == r) m->tail = prev;
            break;
        }
    r->queued = 0, r->link = NULL;
}

static inf_req *find_queued_locked(inf *x, uint64_t id)
{
    for (inf_model *m = x->models; m; m = m->next)
        for (inf_req *r = m->head; r; r = r->link)
            if (r->id == id) return r;
    return NULL;
}

void inf_cancel(inf *x, uint64_t id)
{
    pthread_mutex_lock(&x->mu);
    inf_req *r = find_queued_locked(x, id);
    int untaken = r ? r->n - r->next : 0, over = 0;
    if (untaken > 0) {
        if (r->queued) unqueue_locked(r->m, r);
        r->m->pending -= untaken, x->pending -= untaken;
        r->next = r->n, r->done += untaken;
        if (!r->rc) {
            r->rc = INF_ECANCELED;
            snprintf(r->err, sizeof r->err, "cancelled: the client is gone");
        }
        x->st.cancelled++;
        if (!r->t_start) r->t_start = r->t_enq;
        r->t_end = eng_now_ms();
        tell_cores_locked(x);
        if ((over = r->done == r->n)) over_locked(x, r);
    }
    pthread_mutex_unlock(&x->mu);
    if (over) call_done(r);
}

/* The blocking form: a done callback that wakes the caller. */
typedef struct waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int over, rc;
    inf_timing t;
    char err[256];
} waiter;

static void wake(void *ud, int rc, const inf_timing *t, const char *err)
{
    waiter *w = ud;
    pthread_mutex_lock(&w->mu);
    w->rc = rc, w->t = *t, w->over = 1;
    snprintf(w->err, sizeof w->err, "%s", err);
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

int inf_classify(inf *x, inf_model *m, const float *input, int n, int res, float *logits,
                 inf_timing *t, int *retry_s, char *err, size_t errlen)
{
    waiter w = {.rc = 0};
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    int rc = inf_submit(x, m, input, n, res, logits, wake, &w, NULL, retry_s, err, errlen);
    if (!rc) {
        pthread_mutex_lock(&w.mu);
        while (!w.over) pthread_cond_wait(&w.cv, &w.mu);
        pthread_mutex_unlock(&w.mu);
        if ((rc = w.rc)) eng_errf(err, errlen, rc, "%s", w.err);
        else if (t) *t = w.t;
    }
    pthread_mutex_destroy(&w.mu);
    pthread_cond_destroy(&w.cv);
    return rc;
}

/* ---------------------------------------------------------------- the inference thread */

/* The model whose oldest waiting request is the oldest of all: first come, first served. */
static inf_model *next_model(inf *x)
{
    inf_model *best = NULL;
    for (inf_model *m = x->models; m; m = m->next)
        if (m->head && (!best || m->head->t_enq < best->head->t_enq)) best = m;
    return best;
}

/* The batch follows the queue: every waiting image up to max_batch, rounded down to a power
 * of two (or max_batch itself), which bounds the plans, and their memory, a net caches. */
static int batch_size(int avail, int max_batch)
{
    if (avail >= max_batch) return max_batch;
    int k = 1;
    while (k * 2 <= avail) k *= 2;
    return k;
}

/* Takes the next images of m at the resolution of its first waiting one into x->slots. */
static int take_locked(inf *x, inf_model *m, double now)
{
    int res = m->head->res, avail = 0;
    for (inf_req *r = m->head; r && r->res == res && avail < x->cfg.max_batch; r = r->link)
        avail += r->n - r->next;
    int k = batch_size(avail, x->cfg.max_batch);
    for (int got = 0; got < k; got++) {
        inf_req *r = m->head;
        if (r->next == 0) r->t_start = now;
        hist_add(&x->st.queue, time_le, NTIME, (now - r->t_enq) / 1e3);
        x->slots[got] = (slot){r, r->next++};
        if (r->next == r->n) {
            r->queued = 0;
            if (!(m->head = r->link)) m->tail = NULL;
        }
    }
    m->pending -= k, x->pending -= k;
    tell_cores_locked(x);
    return k;
}

static int grow(float **buf, size_t *cap, size_t need)
{
    if (need <= *cap) return 0;
    float *b = eng_alloc(need * sizeof(float));
    if (!b) return -1;
    eng_free(*buf);
    *buf = b, *cap = need;
    return 0;
}

/* One forward pass over the k slots; outputs land in x->out. */
static int run_batch(inf *x, inf_model *m, int k, char *err, size_t errlen)
{
    const slot *s = x->slots;
    int res = s[0].r->res, contiguous = 1;
    size_t per = (size_t)3 * res * res;
    for (int i = 1; i < k; i++) contiguous &= s[i].r == s[0].r && s[i].idx == s[0].idx + i;
    const float *in = s[0].r->input + per * (size_t)s[0].idx;
    if (grow(&x->out, &x->out_cap, (size_t)k * m->classes) ||
        (!contiguous && grow(&x->in, &x->in_cap, per * (size_t)k)))
        return eng_errf(err, errlen, ENG_ENOMEM, "out of memory for a batch of %d", k);
    if (!contiguous) {
        for (int i = 0; i < k; i++)
            memcpy(x->in + per * (size_t)i, s[i].r->input + per * (size_t)s[i].idx, per * sizeof(float));
        in = x->in;
    }
    return eng_net_forward(m->net, in, k, res, res, x->out, NULL, NULL, err, errlen);
}

/* Hands results back. Logits are copied before taking the lock: their owners cannot go
 * before `done` counts them, which only happens under it. Jobs that are over go to *over,
 * for their callbacks to run outside the lock. */
static void finish(inf *x, inf_model *m, int k, int rc, const char *err, double t0, double t1,
                   inf_req **over)
{
    int c = m->classes;
    for (int i = 0; i < k && !rc; i++)
        memcpy(x->slots[i].r->logits + (size_t)x->slots[i].idx * c, x->out + (size_t)i * c,
               sizeof(float) * (size_t)c);
    pthread_mutex_lock(&x->mu);
    for (int i = 0; i < k; i++) {
        inf_req *r = x->slots[i].r;
        if (rc && !r->rc) r->rc = rc, snprintf(r->err, sizeof r->err, "%s", err);
        if (++r->done == r->n) {
            r->t_end = t1;
            over_locked(x, r);
            r->link = *over;
            *over = r;
        }
    }
    hist_add(&x->st.compute, time_le, NTIME, (t1 - t0) / 1e3);
    hist_add(&x->st.batch, batch_le, NBATCH, k);
    x->st.images += (uint64_t)k;
    double per = (t1 - t0) / k;
    x->ms_per_image = x->ms_per_image ? 0.9 * x->ms_per_image + 0.1 * per : per;
}

static void fail_waiting_locked(inf *x, inf_req **over)
{
    for (inf_model *m = x->models; m; m = m->next) {
        for (inf_req *r = m->head, *next; r; r = next) {
            next = r->link;
            r->rc = ENG_EIO;
            snprintf(r->err, sizeof r->err, "the server is stopping");
            r->done += r->n - r->next, r->next = r->n, r->queued = 0;
            if (!r->t_start) r->t_start = r->t_enq;
            r->t_end = eng_now_ms();
            if (r->done == r->n) {
                over_locked(x, r);
                r->link = *over;
                *over = r;
            }
        }
        m->head = m->tail = NULL, m->pending = 0;
    }
    x->pending = 0;
}

static void wait_until(inf *x, double ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    double left = ms - eng_now_ms();
    long ns = ts.tv_nsec + (long)(left > 0 ? left * 1e6 : 0);
    ts.tv_sec += ns / 1000000000, ts.tv_nsec = ns % 1000000000;
    pthread_cond_timedwait(&x->work_cv, &x->mu, &ts);
}

/* The team OpenMP really forms now (the test hook behind bit_cores_peak_observed). */
static int team_size(void)
{
    int n = 0;
    #pragma omp parallel
    {
        #pragma omp single
        n = omp_get_num_threads();
    }
    return n;
}

static void run_over(inf_req *over)
{
    while (over) {
        inf_req *next = over->link;
        call_done(over);
        over = next;
    }
}

static void *inf_main(void *ud)
{
    inf *x = ud;
    pthread_mutex_lock(&x->mu);
    while (!x->stop) {
        inf_model *m = next_model(x);
        if (!m) {
            pthread_cond_wait(&x->work_cv, &x->mu);
            continue;
        }
        /* Waiting pays only while the queue is shallow and more images are on their way:
         * requests that hold the model but have not submitted yet (decoding); a lone client
         * never waits, and a deep queue runs at once. */
        double now = eng_now_ms(), due = m->head->t_enq + x->cfg.batch_delay_ms;
        if (m->pending < x->cfg.max_batch && (m->refs > m->active || x->incoming > 0) && now < due) {
            wait_until(x, due);
            continue;
        }
        /* The cores first (this may wait for a training job to yield), then the images that
         * are waiting by then: the batch gets whatever piled up meanwhile. */
        pthread_mutex_unlock(&x->mu);
        int team = cores_infer_grant(x->cfg.cores, x->cfg.threads);
        omp_set_num_threads(team);
        pthread_mutex_lock(&x->mu);
        if (!x->stop && (m = next_model(x))) cores_observe(x->cfg.cores, 0, team_size());
        if (x->stop || !m) {
            pthread_mutex_unlock(&x->mu);
            cores_infer_release(x->cfg.cores, team);
            pthread_mutex_lock(&x->mu);
            continue;
        }
        int k = take_locked(x, m, eng_now_ms());
        pthread_mutex_unlock(&x->mu);
        char err[256] = "";
        double t0 = eng_now_ms();
        int rc = run_batch(x, m, k, err, sizeof err);
        inf_req *over = NULL;
        finish(x, m, k, rc, err, t0, eng_now_ms(), &over); /* returns with the lock held */
        pthread_mutex_unlock(&x->mu);
        cores_infer_release(x->cfg.cores, team);
        run_over(over);
        pthread_mutex_lock(&x->mu);
    }
    inf_req *over = NULL;
    fail_waiting_locked(x, &over);
    pthread_mutex_unlock(&x->mu);
    run_over(over);
    return NULL;
}

/* ---------------------------------------------------------------- life cycle */

int inf_new(const inf_config *cfg, inf **out, char *err, size_t errlen)
{
    inf *x = calloc(1, sizeof *x);
    if (!x) return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    x->cfg = *cfg;
    if (x->cfg.threads < 0) x->cfg.threads = 0;
    if (!x->cfg.cores) {
        cores_config cc = {.infer_threads = x->cfg.threads};
        int rc = cores_new(&cc, &x->own_cores, err, errlen);
        if (rc) {
            free(x);
            return rc;
        }
        x->cfg.cores = x->own_cores;
    }
    if (x->cfg.max_batch <= 0) x->cfg.max_batch = 8;
    if (x->cfg.max_batch > 64) x->cfg.max_batch = 64;
    if (!x->cfg.batch_delay_ms) x->cfg.batch_delay_ms = 5;
    if (x->cfg.batch_delay_ms < 0) x->cfg.batch_delay_ms = 0;
    if (x->cfg.max_queue <= 0) x->cfg.max_queue = 64;
    if (!x->cfg.cache_bytes) x->cfg.cache_bytes = (uint64_t)2 << 30;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* batch deadlines ignore clock steps */
    pthread_mutex_init(&x->mu, NULL);
    pthread_cond_init(&x->work_cv, &ca);
    pthread_cond_init(&x->load_cv, NULL);
    pthread_condattr_destroy(&ca);
    *out = x;
    return 0;
}

int inf_start(inf *x, char *err, size_t errlen)
{
    pthread_mutex_lock(&x->mu);
    x->started = pthread_create(&x->th, NULL, inf_main, x) == 0;
    pthread_mutex_unlock(&x->mu);
    return x->started ? 0 : eng_errf(err, errlen, ENG_ENOMEM, "cannot start the inference thread");
}

void inf_stop(inf *x)
{
    if (!x) return;
    pthread_mutex_lock(&x->mu);
    int join = x->started && !x->stop;
    x->stop = 1;
    pthread_cond_broadcast(&x->work_cv);
    pthread_mutex_unlock(&x->mu);
    if (join) pthread_join(x->th, NULL);
}

void inf_free(inf *x)
{
    if (!x) return;
    inf_stop(x);
    free_models(x->models);
    eng_free(x->in);
    eng_free(x->out);
    cores_free(x->own_cores);
    pthread_mutex_destroy(&x->mu);
    pthread_cond_destroy(&x->work_cv);
    pthread_cond_destroy(&x->load_cv);
    free(x);
}

/* ---------------------------------------------------------------- metrics */

static void print_hist(FILE *f, const char *name, const char *help, const hist *h,
                       const double *le, int nb)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (int b = 0; b < nb; b++) {
        cum += h->b[b];
        fprintf(f, "%s_bucket{le=\"%g\"} %llu\n", name, le[b], (unsigned long long)cum);
    }
    fprintf(f, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n", name,
            (unsigned long long)h->count, name, h->sum, name, (unsigned long long)h->count);
}

static void print_one(FILE *f, const char *name, const char *type, const char *help, double v)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", name, help, name, type, name, v);
}

void inf_get_stats(inf *x, inf_stats *st)
{
    pthread_mutex_lock(&x->mu);
    st->images = x->st.images, st->batches = x->st.batch.count, st->cancelled = x->st.cancelled;
    pthread_mutex_unlock(&x->mu);
}

int inf_metrics_text(inf *x, FILE *f)
{
    pthread_mutex_lock(&x->mu);
    stats s = x->st;
    uint64_t bytes = x->bytes;
    int loaded = 0, pending = x->pending;
    for (inf_model *m = x->models; m; m = m->next) loaded += m->state == M_READY && !m->doomed;
    pthread_mutex_unlock(&x->mu);
    print_hist(f, "bit_inference_queue_seconds", "Time an image waited before its forward pass.",
               &s.queue, time_le, NTIME);
    print_hist(f, "bit_inference_compute_seconds", "Duration of one batched forward pass.",
               &s.compute, time_le, NTIME);
    print_hist(f, "bit_inference_batch_size", "Images per forward pass.", &s.batch, batch_le, NBATCH);
    print_one(f, "bit_inference_batch_size_mean", "gauge", "Mean images per forward pass since start.",
              s.batch.count ? s.batch.sum / (double)s.batch.count : 0);
    print_one(f, "bit_inference_cancelled_total", "counter",
              "Classify requests whose client left while they waited.", (double)s.cancelled);
    print_one(f, "bit_inference_images_total", "counter", "Images classified.", (double)s.images);
    print_one(f, "bit_inference_rejected_total", "counter",
              "Classify requests refused with 503 because the queue was full.", (double)s.rejected);
    print_one(f, "bit_inference_queue_images", "gauge", "Images waiting for a forward pass.", pending);
    print_one(f, "bit_model_cache_bytes", "gauge", "Weights of the loaded models (parameters x 4).",
              (double)bytes);
    print_one(f, "bit_model_cache_limit_bytes", "gauge", "Budget of the model cache.",
              (double)x->cfg.cache_bytes);
    print_one(f, "bit_models_loaded", "gauge", "Models in the cache.", loaded);
    print_one(f, "bit_model_loads_total", "counter", "Models loaded from disk.", (double)s.loads);
    print_one(f, "bit_model_evictions_total", "counter", "Models dropped to stay within the budget.",
              (double)s.evictions);
    return 0;
}
