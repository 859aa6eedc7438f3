/* The linear-evaluation protocol as a run: the backbone frozen, each training image's
 * pre-logit features computed once (and once for its horizontal flip) at the evaluation
 * transform, kept in a file of the run directory, then a softmax regression head fitted on
 * them (engine/linear.c) with its L2 strength chosen on the validation split. The model is the
 * base checkpoint with that head, in the official schema, written as the run's checkpoint. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "finetune_int.h"
#include "linear.h"
#include "rundir.h"

#define FEATURES_MAX_BYTES ((uint64_t)32 << 30)

/* The base checkpoint without its head: a network whose outputs are the features. */
static int feature_net(const eng_npz *z, const eng_arch *a, eng_precision prec, eng_net **out,
                       char *err, size_t errlen)
{
    eng_npz *b = eng_npz_new();
    eng_arch fa = *a;
    int rc = b ? 0 : ENG_ENOMEM;
    for (int i = 0; i < z->n && !rc; i++) {
        if (!strncmp(z->names[i], "resnet/head/", 12)) continue;
        eng_tensor *t = eng_tensor_clone(z->tensors[i]);
        rc = t ? eng_npz_put(b, z->names[i], t) : ENG_ENOMEM;
    }
    fa.head = 0;
    eng_net_opts o = {.precision = prec};
    rc = rc ? eng_errf(err, errlen, rc, "out of memory") : eng_net_new(b, &fa, &o, out, err, errlen);
    eng_npz_free(b);
    return rc;
}

/* Mirrors a batch of CHW images left to right. */
static void flip(float *x, int n, int h, int w)
{
    for (int64_t row = 0; row < (int64_t)n * 3 * h; row++) {
        float *r = x + row * w;
        for (int i = 0, j = w - 1; i < j; i++, j--) {
            float t = r[i];
            r[i] = r[j], r[j] = t;
        }
    }
}

typedef struct feats {
    float *x;        /* rows of f floats: train (and flips), then val */
    int64_t *y;
    int64_t ntrain, nval, rows;
    size_t bytes;
    int f;
} feats;

static void progress(run *R, int64_t done, int64_t total)
{
    if (!R->hooks || !R->hooks->progress) return;
    ft_progress p = {done, total, 0, 0, 0, -1};
    R->hooks->progress(R->hooks->ud, &p);
}

/* Runs one split through the net at the evaluation transform: rows (and their flips). */
static int extract(run *R, eng_net *net, ds_split split, int with_flips, feats *F, int64_t *row,
                   int64_t *done, int64_t total, char *err, size_t errlen)
{
    int crop = R->r.h.crop, b = R->r.micro, count, rc, th, tw;
    ds_tensor_size(R->d, &th, &tw);
    int h = th ? th : crop, w = th ? tw : crop; /* tensors are used as stored */
    size_t per = (size_t)3 * h * w;
    float *x = eng_alloc(sizeof(float) * per * (size_t)b), *out = malloc(sizeof(float) * (size_t)F->f * b);
    int64_t *y = malloc(sizeof(int64_t) * (size_t)b);
    ds_loader *l = NULL;
    ds_loader_opts lo = {.split = split, .batch = b, .precrop = crop, .crop = crop, .sequential = 1};
    if (!x || !out || !y) rc = eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    else rc = ds_loader_new(R->d, &lo, &l, err, errlen);
    while (!rc && (rc = ds_loader_next(l, x, y, &count, err, errlen)) == 0) {
        if (R->hooks && R->hooks->stop && R->hooks->stop(R->hooks->ud)) {
            rc = eng_errf(err, errlen, FT_ESTOPPED, "stopped while computing features");
            break;
        }
        for (int pass = 0; pass <= with_flips && !rc; pass++) {
            if (pass) flip(x, count, h, w);
            if ((rc = eng_net_forward(net, x, count, h, w, out, NULL, NULL, err, errlen))) break;
            for (int i = 0; i < count; i++) { /* a flip sits beside its image */
                int64_t r = *row + (int64_t)i * (with_flips + 1) + pass;
                memcpy(F->x + r * F->f, out + (size_t)i * F->f, sizeof(float) * (size_t)F->f);
                F->y[r] = y[i];
            }
        }
        *row += (int64_t)count * (with_flips + 1);
        progress(R, ++*done, total);
    }
    if (rc == ENG_ENOTFOUND) rc = 0; /* the split is done */
    ds_loader_free(l);
    eng_free(x), free(out), free(y);
    return rc;
}

/* The features file, mapped: bounded, and removed when the run ends. */
static int map_features(run *R, feats *F, char *path, size_t plen, char *err, size_t errlen)
{
    F->rows = 2 * F->ntrain + F->nval;
    F->bytes = (size_t)F->rows * F->f * sizeof(float);
    if ((uint64_t)F->bytes > FEATURES_MAX_BYTES)
        return eng_errf(err, errlen, ENG_ELIMIT, "the features of %lld images would take %llu MB",
                        (long long)F->rows, (unsigned long long)(F->bytes >> 20));
    snprintf(path, plen, "%s/features.f32", R->dir);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || ftruncate(fd, (off_t)F->bytes)) {
        int e = errno;
        if (fd >= 0) close(fd);
        return eng_errf(err, errlen, eng_errno_code(e), "%s: %s", path, strerror(e));
    }
    F->x = mmap(NULL, F->bytes ? F->bytes : 1, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    F->y = malloc(sizeof(int64_t) * (size_t)(F->rows + 1));
    if (F->x == MAP_FAILED || !F->y) {
        if (F->x == MAP_FAILED) F->x = NULL;
        return eng_errf(err, errlen, ENG_ENOMEM, "cannot map the features");
    }
    return 0;
}

/* The head as the official schema stores it: kernel [1, 1, f, k] (HWIO) and bias [k]. */
static void set_head(eng_npz *z, const float *w, const float *b, int f, int k)
{
    eng_tensor *kern = eng_npz_get_mut(z, "resnet/head/conv2d/kernel");
    eng_tensor *bias = eng_npz_get_mut(z, "resnet/head/conv2d/bias");
    float *kd = kern->data;
    for (int i = 0; i < f; i++)
        for (int c = 0; c < k; c++) kd[(size_t)i * k + c] = w[(size_t)c * f + i];
    memcpy(bias->data, b, sizeof(float) * (size_t)k);
}

typedef struct fit_ctx {
    run *R;
    int64_t done, total;
} fit_ctx;

static void fit_progress(void *ud, int i)
{
    fit_ctx *c = ud;
    progress(c->R, c->done + i + 1, c->total);
}

/* Fits the head on the features and evaluates the model it makes on the validation split. */
static int fit_and_finish(run *R, eng_npz *z, const feats *F, fit_ctx *fc, eng_precision prec,
                          char *err, size_t errlen)
{
    int k = ds_num_classes(R->d);
    ft_lin_data tr = {F->x, F->y, 2 * F->ntrain, F->f, k};
    ft_lin_data va = {F->x + 2 * F->ntrain * F->f, F->y + 2 * F->ntrain, F->nval, F->f, k};
    float *w = eng_calloc(sizeof(float) * (size_t)k * F->f), *b = eng_calloc(sizeof(float) * (size_t)k);
    double l2 = 0, top1 = 0;
    eng_net *net = NULL;
    json_t *m = NULL;
    int rc = w && b ? ft_lin_select(&tr, &va, w, b, &l2, &top1, fit_progress, fc) : ENG_ENOMEM;
    if (rc) rc = eng_errf(err, errlen, rc, "the softmax regression failed");
    if (!rc) {
        set_head(z, w, b, F->f, k);
        json_t *ev = json_pack("{s:s, s:I, s:f, s:f, s:i, s:I}", "type", "linear", "step",
                               (json_int_t)R->step, "l2", l2, "val_top1", top1, "features", F->f,
                               "examples", (json_int_t)tr.n);
        json_array_append(R->history, ev);
        ft__emit(R, ev);
        json_decref(ev);
        eng_net_opts o = {.precision = prec};
        rc = eng_net_new(z, &R->arch, &o, &net, err, errlen);
    }
    if (!rc && ds_size(R->d, DS_VAL))
        rc = ft_evaluate(net, R->d, DS_VAL, R->r.h.crop, R->r.micro, &m, err, errlen);
    if (!rc && m) {
        json_t *ev = json_pack("{s:s, s:I, s:O, s:O, s:O}", "type", "eval", "step", (json_int_t)R->step,
                               "val_top1", json_object_get(m, "top1"), "val_top5",
                               json_object_get(m, "top5"), "val_loss", json_object_get(m, "loss"));
        json_array_append(R->history, ev);
        ft__emit(R, ev);
        json_decref(ev);
    }
    if (!rc) rc = ft__write_metrics(R, m, err, errlen);
    if (!rc) rc = ft__checkpoint(R, err, errlen);
    json_decref(m);
    eng_net_free(net);
    eng_free(w), eng_free(b);
    return rc;
}

int ft__linear(run *R, eng_npz *z, const ft_params *p, char *err, size_t errlen)
{
    char path[4400] = "";
    eng_net *net = NULL;
    feats F = {.ntrain = ds_size(R->d, DS_TRAIN), .nval = ds_size(R->d, DS_VAL)};
    int b = R->r.micro;
    int64_t batches = (F.ntrain + b - 1) / b + (F.nval + b - 1) / b, row = 0, done = 0;
    fit_ctx fc = {R, batches, batches + FT_LIN_NGRID};
    R->fixed = z; /* the run's parameters: the base with the fitted head */
    R->step = R->r.h.schedule[R->r.h.nsched - 1];
    int rc = feature_net(z, &R->arch, R->r.precision, &net, err, errlen);
    if (!rc) F.f = eng_net_out_dim(net), rc = map_features(R, &F, path, sizeof path, err, errlen);
    if (!rc) rc = extract(R, net, DS_TRAIN, 1, &F, &row, &done, fc.total, err, errlen);
    if (!rc) rc = extract(R, net, DS_VAL, 0, &F, &row, &done, fc.total, err, errlen);
    eng_net_free(net);
    if (!rc) rc = fit_and_finish(R, z, &F, &fc, R->r.precision, err, errlen);
    if (F.x) munmap(F.x, F.bytes ? F.bytes : 1);
    free(F.y);
    if (path[0]) unlink(path);
    return rc;
}
