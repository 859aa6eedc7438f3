/* ds_loader: batches prepared on background threads, in a fixed order. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "dataset.h"

enum { SLOT_EMPTY, SLOT_BUSY, SLOT_READY };

typedef struct slot {
    int64_t index;
    int state, count, rc;
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
    int64_t produce, consume;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t *th;
    int64_t perm_epoch[2];
    int64_t *perm[2];
};

/* The permutation of epoch e (cached for the two epochs a batch can straddle). Under mu. */
static const int64_t *epoch_perm(ds_loader *l, int64_t e)
{
    for (int i = 0; i < 2; i++)
        if (l->perm[i] && l->perm_epoch[i] == e) return l->perm[i];
    int v = l->perm[0] && (!l->perm[1] || l->perm_epoch[1] < l->perm_epoch[0]) ? 1 : 0;
    if (!l->perm[v] && !(l->perm[v] = malloc(sizeof(int64_t) * (size_t)l->n))) return NULL;
    int64_t *p = l->perm[v];
    eng_rng r;
    eng_rng_seed3(&r, l->o.seed, (uint64_t)e, 13);
    for (int64_t i = 0; i < l->n; i++) p[i] = i;
    for (int64_t i = l->n - 1; i > 0; i--) {
        int64_t j = (int64_t)eng_rng_below(&r, (uint64_t)i + 1), t = p[i];
        p[i] = p[j], p[j] = t;
    }
    l->perm_epoch[v] = e;
    return p;
}

static int64_t pick(ds_loader *l, int64_t pos)
{
    if (l->o.replacement) {
        eng_rng r;
        eng_rng_seed3(&r, l->o.seed, (uint64_t)pos, 11);
        return (int64_t)eng_rng_below(&r, (uint64_t)l->n);
    }
    if (!l->o.shuffle || l->o.sequential) return pos % l->n;
    pthread_mutex_lock(&l->mu);
    const int64_t *p = epoch_perm(l, pos / l->n);
    int64_t v = p ? p[pos % l->n] : -1;
    pthread_mutex_unlock(&l->mu);
    return v;
}

static void fill(ds_loader *l, slot *s)
{
    int64_t first = s->index * l->o.batch;
    s->count = l->o.batch;
    if (l->o.sequential && first + s->count > l->n) s->count = (int)(l->n - first);
    s->rc = 0;
    for (int j = 0; j < s->count && !s->rc; j++) {
        int64_t pos = first + j, i = pick(l, pos);
        eng_rng r;
        eng_rng_seed3(&r, l->o.seed, (uint64_t)pos, 7);
        if (i < 0) {
            s->rc = eng_errf(s->err, sizeof s->err, ENG_ENOMEM, "out of memory shuffling");
            break;
        }
        s->y[j] = ds_label(l->d, l->o.split, i);
        s->rc = ds_example(l->d, l->o.split, i, l->o.augment, l->o.precrop, l->o.crop, &r,
                           s->x + (size_t)j * l->per, s->err, sizeof s->err);
    }
}

static void *worker(void *ud)
{
    ds_loader *l = ud;
    pthread_mutex_lock(&l->mu);
    while (!l->stop) {
        int64_t b = l->produce;
        slot *s = &l->slots[b % l->nslots];
        if (b >= l->consume + l->nslots || (l->nbatches >= 0 && b >= l->nbatches) ||
            s->state != SLOT_EMPTY) {
            pthread_cond_wait(&l->cv, &l->mu);
            continue;
        }
        l->produce++;
        s->index = b;
        s->state = SLOT_BUSY;
        pthread_mutex_unlock(&l->mu);
        fill(l, s);
        pthread_mutex_lock(&l->mu);
        s->state = SLOT_READY;
        pthread_cond_broadcast(&l->cv);
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

int ds_loader_new(const ds_dataset *d, const ds_loader_opts *o, ds_loader **out, char *err,
                  size_t errlen)
{
    *out = NULL;
    int64_t n = ds_size(d, o->split);
    int th, tw;
    ds_tensor_size(d, &th, &tw);
    if (n == 0) return eng_errf(err, errlen, ENG_EINVAL, "the %s split is empty", o->split ? "val" : "train");
    if (o->batch < 1 || o->batch > 65536 || (!th && (o->crop < 32 || o->crop > 4096 ||
                                                      (o->augment && o->precrop < o->crop))))
        return eng_errf(err, errlen, ENG_EINVAL, "bad loader shape (batch %d, crop %d, precrop %d)",
                        o->batch, o->crop, o->precrop);
    ds_loader *l = calloc(1, sizeof *l);
    if (!l) return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    l->d = d, l->o = *o, l->n = n;
    l->per = th ? (size_t)3 * th * tw : (size_t)3 * o->crop * o->crop;
    l->nbatches = o->sequential ? (n + o->batch - 1) / o->batch : -1;
    l->produce = l->consume = o->start;
    l->nslots = o->prefetch > 0 ? o->prefetch : 2;
    l->nthreads = o->threads > 0 ? o->threads : 1;
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cv, NULL);
    l->slots = calloc((size_t)l->nslots, sizeof *l->slots);
    l->th = calloc((size_t)l->nthreads, sizeof *l->th);
    if (!l->slots || !l->th) goto oom;
    for (int i = 0; i < l->nslots; i++) {
        l->slots[i].x = eng_alloc(sizeof(float) * l->per * (size_t)o->batch);
        l->slots[i].y = calloc((size_t)o->batch, sizeof(int64_t));
        if (!l->slots[i].x || !l->slots[i].y) goto oom;
    }
    for (int i = 0; i < l->nthreads; i++)
        if (pthread_create(&l->th[i], NULL, worker, l)) {
            l->nthreads = i;
            ds_loader_free(l);
            return eng_errf(err, errlen, ENG_ENOMEM, "cannot start loader threads");
        }
    *out = l;
    return 0;
oom:
    l->nthreads = 0;
    ds_loader_free(l);
    return eng_errf(err, errlen, ENG_ENOMEM, "out of memory for the batch buffers");
}

int ds_loader_next(ds_loader *l, float *x, int64_t *y, int *count, char *err, size_t errlen)
{
    pthread_mutex_lock(&l->mu);
    if (l->nbatches >= 0 && l->consume >= l->nbatches) {
        pthread_mutex_unlock(&l->mu);
        return ENG_ENOTFOUND;
    }
    slot *s = &l->slots[l->consume % l->nslots];
    while (!(s->state == SLOT_READY && s->index == l->consume)) pthread_cond_wait(&l->cv, &l->mu);
    pthread_mutex_unlock(&l->mu);
    int rc = s->rc;
    if (rc) eng_errf(err, errlen, rc, "%s", s->err);
    else {
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
