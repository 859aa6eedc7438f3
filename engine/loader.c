/* ds_loader: worker threads take examples one at a time from the oldest unfinished batch of a
 * ring of batch slots, so every thread helps with the batch the engine waits for; what an
 * example holds depends only on (seed, position), never on which thread made it. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "dataset.h"
#include "preproc.h"

#define MAX_THREADS 256
#define MAX_PREFETCH 1024
#define MAX_BATCH 65536
#define MAX_START ((int64_t)1 << 40)

/* Streams of the seeded draws (see eng_rng_seed3). */
enum { STREAM_AUGMENT = 7, STREAM_REPLACEMENT = 11, STREAM_EPOCH = 13 };

enum { SLOT_EMPTY, SLOT_FILLING, SLOT_READY };

typedef struct slot {
    int64_t index;                      /* the batch held */
    int state, count, next, done;       /* examples in it, handed out, finished */
    int rc, rc_at;                      /* the error of the first failed example, and its j */
    float *x;
    int64_t *y;
    char err[256];
} slot;

struct ds_loader {
    const ds_dataset *d;
    ds_loader_opts o;
    int64_t n, nbatches; /* nbatches < 0: endless */
    size_t per;          /* floats per example */
    slot *slots;
    int nslots, nthreads, stop;
    int64_t produce, consume; /* batch being handed out; batch delivered next */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t *th;
    int64_t perm_epoch[2];
    int64_t *perm[2]; /* the permutations of the (at most two) epochs in flight */
};

/* The permutation of epoch e; under mu. A batch can straddle two epochs, so two are kept. */
static const int64_t *epoch_perm(ds_loader *l, int64_t e)
{
    for (int i = 0; i < 2; i++)
        if (l->perm[i] && l->perm_epoch[i] == e) return l->perm[i];
    int v = l->perm[0] && (!l->perm[1] || l->perm_epoch[1] < l->perm_epoch[0]) ? 1 : 0;
    if (!l->perm[v] && !(l->perm[v] = malloc(sizeof(int64_t) * (size_t)l->n))) return NULL;
    int64_t *p = l->perm[v];
    eng_rng r;
    eng_rng_seed3(&r, l->o.seed, (uint64_t)e, STREAM_EPOCH);
    for (int64_t i = 0; i < l->n; i++) p[i] = i;
    for (int64_t i = l->n - 1; i > 0; i--) {
        int64_t j = (int64_t)eng_rng_below(&r, (uint64_t)i + 1), t = p[i];
        p[i] = p[j], p[j] = t;
    }
    l->perm_epoch[v] = e;
    return p;
}

/* The example at position pos of the loader's order; -1 when out of memory. Under mu. */
static int64_t pick(ds_loader *l, int64_t pos)
{
    if (l->o.replacement) {
        eng_rng r;
        eng_rng_seed3(&r, l->o.seed, (uint64_t)pos, STREAM_REPLACEMENT);
        return (int64_t)eng_rng_below(&r, (uint64_t)l->n);
    }
    if (!l->o.shuffle || l->o.sequential) return pos % l->n;
    const int64_t *p = epoch_perm(l, pos / l->n);
    return p ? p[pos % l->n] : -1;
}

/* Hands out example j of the oldest batch not fully handed out, with its position's example
 * index in *i; 0 when there is nothing to do until a batch is consumed. Under mu. */
static int claim(ds_loader *l, slot **sp, int *j, int64_t *i)
{
    int64_t b = l->produce;
    if (b >= l->consume + l->nslots || (l->nbatches >= 0 && b >= l->nbatches)) return 0;
    slot *s = &l->slots[b % l->nslots]; /* batch b - nslots, consumed: empty or ours */
    if (s->state == SLOT_EMPTY) {
        int64_t first = b * l->o.batch;
        s->index = b;
        s->count = l->o.sequential && first + l->o.batch > l->n ? (int)(l->n - first) : l->o.batch;
        s->next = s->done = s->rc = 0;
        s->state = SLOT_FILLING;
    }
    *j = s->next++;
    if (s->next == s->count) l->produce++;
    *i = pick(l, b * l->o.batch + *j);
    *sp = s;
    return 1;
}

static int make_example(ds_loader *l, slot *s, int j, int64_t i, char *err, size_t errlen)
{
    if (i < 0) return eng_errf(err, errlen, ENG_ENOMEM, "out of memory shuffling");
    eng_rng r;
    eng_rng_seed3(&r, l->o.seed, (uint64_t)(s->index * l->o.batch + j), STREAM_AUGMENT);
    s->y[j] = ds_label(l->d, l->o.split, i);
    return ds_example(l->d, l->o.split, i, l->o.augment, l->o.precrop, l->o.crop, &r,
                      s->x + (size_t)j * l->per, err, errlen);
}

static void *worker(void *ud)
{
    ds_loader *l = ud;
    pthread_mutex_lock(&l->mu);
    while (!l->stop) {
        slot *s;
        int j;
        int64_t i;
        if (!claim(l, &s, &j, &i)) {
            pthread_cond_wait(&l->cv, &l->mu);
            continue;
        }
        pthread_mutex_unlock(&l->mu);
        char e[256];
        int rc = make_example(l, s, j, i, e, sizeof e);
        pthread_mutex_lock(&l->mu);
        if (rc && (!s->rc || j < s->rc_at)) { /* the first by position, whatever the timing */
            s->rc = rc, s->rc_at = j;
            memcpy(s->err, e, sizeof s->err);
        }
        if (++s->done == s->count) {
            s->state = SLOT_READY;
            pthread_cond_broadcast(&l->cv);
        }
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

void ds_loader_free(ds_loader *l)
{
    if (!l) return;
    pthread_mutex_lock(&l->mu);
    l->stop = 1;
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
    for (int i = 0; i < l->nthreads; i++) pthread_join(l->th[i], NULL);
    for (int i = 0; l->slots && i < l->nslots; i++) {
        eng_free(l->slots[i].x);
        free(l->slots[i].y);
    }
    free(l->slots);
    free(l->th);
    free(l->perm[0]);
    free(l->perm[1]);
    pthread_mutex_destroy(&l->mu);
    pthread_cond_destroy(&l->cv);
    free(l);
}

static int check_opts(const ds_dataset *d, const ds_loader_opts *o, char *err, size_t errlen)
{
    int th, tw;
    ds_tensor_size(d, &th, &tw);
    if (o->split != DS_TRAIN && o->split != DS_VAL)
        return eng_errf(err, errlen, ENG_EINVAL, "no split %d", (int)o->split);
    if (!ds_size(d, o->split))
        return eng_errf(err, errlen, ENG_EINVAL, "the %s split is empty", o->split ? "val" : "train");
    if (o->batch < 1 || o->batch > MAX_BATCH ||
        (!th && (o->crop < 32 || o->crop > 4096 ||
                 (o->augment && (o->precrop < o->crop || o->precrop > PRE_MAX_SIDE)))))
        return eng_errf(err, errlen, ENG_EINVAL, "bad loader shape (batch %d, crop %d, precrop %d)",
                        o->batch, o->crop, o->precrop);
    if (o->threads < 0 || o->threads > MAX_THREADS || o->prefetch < 0 || o->prefetch > MAX_PREFETCH)
        return eng_errf(err, errlen, ENG_EINVAL, "loader threads must be in [0, %d], prefetch in "
                        "[0, %d]", MAX_THREADS, MAX_PREFETCH);
    if (o->start < 0 || o->start > MAX_START) /* positions (start * batch) stay far from overflow */
        return eng_errf(err, errlen, ENG_EINVAL, "start batch %lld out of range", (long long)o->start);
    if (o->sequential && o->replacement)
        return eng_errf(err, errlen, ENG_EINVAL, "a sequential pass cannot draw with replacement");
    return 0;
}

static int alloc_slots(ds_loader *l, int threads)
{
    size_t xbytes;
    if (eng_mul_size(l->per, (size_t)l->o.batch, &xbytes) ||
        eng_mul_size(xbytes, sizeof(float), &xbytes))
        return ENG_ENOMEM;
    if (!(l->slots = calloc((size_t)l->nslots, sizeof *l->slots)) ||
        !(l->th = calloc((size_t)threads, sizeof *l->th)))
        return ENG_ENOMEM;
    for (int i = 0; i < l->nslots; i++) {
        l->slots[i].x = eng_alloc(xbytes);
        l->slots[i].y = calloc((size_t)l->o.batch, sizeof(int64_t));
        if (!l->slots[i].x || !l->slots[i].y) return ENG_ENOMEM;
    }
    return 0;
}

int ds_loader_new(const ds_dataset *d, const ds_loader_opts *o, ds_loader **out, char *err,
                  size_t errlen)
{
    *out = NULL;
    int th, tw, rc = check_opts(d, o, err, errlen);
    if (rc) return rc;
    ds_tensor_size(d, &th, &tw);
    ds_loader *l = calloc(1, sizeof *l);
    if (!l) return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    l->d = d, l->o = *o, l->n = ds_size(d, o->split);
    l->per = th ? (size_t)3 * th * tw : (size_t)3 * o->crop * o->crop;
    l->nbatches = o->sequential ? (l->n + o->batch - 1) / o->batch : -1;
    l->produce = l->consume = o->start;
    l->nslots = o->prefetch > 0 ? o->prefetch : 2;
    int want = o->threads > 0 ? o->threads : 1;
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cv, NULL);
    if (alloc_slots(l, want)) { /* l->nthreads = 0: ds_loader_free joins the threads started */
        ds_loader_free(l);
        return eng_errf(err, errlen, ENG_ENOMEM, "out of memory for the batch buffers");
    }
    for (; l->nthreads < want; l->nthreads++)
        if (pthread_create(&l->th[l->nthreads], NULL, worker, l)) {
            ds_loader_free(l);
            return eng_errf(err, errlen, ENG_ENOMEM, "cannot start loader threads");
        }
    *out = l;
    return 0;
}

int ds_loader_next(ds_loader *l, float *x, int64_t *y, int *count, char *err, size_t errlen)
{
    pthread_mutex_lock(&l->mu);
    if (l->nbatches >= 0 && l->consume >= l->nbatches) {
        pthread_mutex_unlock(&l->mu);
        return eng_errf(err, errlen, ENG_ENOTFOUND, "the pass is over");
    }
    slot *s = &l->slots[l->consume % l->nslots];
    while (!(s->state == SLOT_READY && s->index == l->consume)) pthread_cond_wait(&l->cv, &l->mu);
    pthread_mutex_unlock(&l->mu);
    /* A ready slot is ours alone until it is marked empty. */
    int rc = s->rc;
    if (rc) {
        eng_errf(err, errlen, rc, "%s", s->err);
    } else {
        memcpy(x, s->x, sizeof(float) * l->per * (size_t)s->count);
        memcpy(y, s->y, sizeof(int64_t) * (size_t)s->count);
        *count = s->count;
    }
    pthread_mutex_lock(&l->mu);
    s->state = SLOT_EMPTY;
    l->consume++;
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
    return rc;
}
