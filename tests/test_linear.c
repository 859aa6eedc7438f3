/* Fine-tunes that fit a budget: the linear probe (its head matches a plain reference softmax
 * regression on the same features), the budget planner as a table of cases, select=best,
 * and the moving-window ETA. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "finetune.h"
#include "ftjson.h"
#include "linear.h"
#include "npz.h"
#include "plan.h"
#include "rundir.h"
#include "t.h"

static char err[1024];

/* A 4-class tensor dataset at 32 x 32 whose classes differ in colour and a stripe pattern,
 * with noise, plus a held-out split (x_val, y_val). */
static const char *tensor_data(const char *name, int n, int nval, uint64_t seed)
{
    static char path[700];
    snprintf(path, sizeof path, "%s/%s.npz", t_tmpdir(), name);
    eng_npz *z = eng_npz_new();
    const char *xs[2] = {"x", "x_val"}, *ys[2] = {"y", "y_val"};
    uint64_t s = seed;
    for (int part = 0; part < 2; part++) {
        int m = part ? nval : n;
        int64_t xshape[] = {m, 3, 32, 32}, yshape[] = {m};
        eng_tensor *x = eng_tensor_new(ENG_F32, 0, 4, xshape), *y = eng_tensor_new(ENG_I64, 0, 1, yshape);
        for (int i = 0; i < m; i++) {
            int c = i % 4;
            ((int64_t *)y->data)[i] = c;
            for (int k = 0; k < 3 * 1024; k++) {
                s = s * 6364136223846793005ull + 1442695040888963407ull;
                double noise = ((double)(s >> 11) / 9007199254740992.0 - 0.5) * 0.9;
                int ch = k / 1024, col = k % 32;
                double v = (ch == c % 3 ? 0.4 : -0.2) + (c == 3 && col % 4 < 2 ? 0.5 : 0) + noise;
                ((float *)x->data)[(size_t)i * 3 * 1024 + k] = (float)v;
            }
        }
        eng_npz_put(z, xs[part], x);
        eng_npz_put(z, ys[part], y);
    }
    eng_npz_save(path, z, 0, err, sizeof err);
    eng_npz_free(z);
    return path;
}

/* The reference: plain full-batch gradient descent on mean CE + l2/2 |W|^2, in double, run
 * until the gradient vanishes (written here, independent of engine/linear.c). */
static void reference_fit(const float *x, const int64_t *y, int64_t n, int f, int k, double l2,
                          double *w, double *b)
{
    double *g = calloc((size_t)k * f + k, sizeof *g), *p = malloc(sizeof(double) * k);
    /* step 1/L with L bounding the Hessian: max |x|^2 / 2 + l2 */
    double xmax = 0;
    for (int64_t i = 0; i < n; i++) {
        double q = 0;
        for (int j = 0; j < f; j++) q += (double)x[i * f + j] * x[i * f + j];
        if (q > xmax) xmax = q;
    }
    double lr = 1 / ((xmax + 1) / 2 + l2);
    for (int it = 0; it < 20000; it++) {
        memset(g, 0, sizeof(double) * ((size_t)k * f + k));
        for (int64_t i = 0; i < n; i++) {
            double mx = -1e300, s = 0;
            for (int c = 0; c < k; c++) {
                p[c] = b[c];
                for (int j = 0; j < f; j++) p[c] += w[(size_t)c * f + j] * x[i * f + j];
                if (p[c] > mx) mx = p[c];
            }
            for (int c = 0; c < k; c++) s += p[c] = exp(p[c] - mx);
            for (int c = 0; c < k; c++) {
                double d = (p[c] / s - (c == y[i])) / n;
                for (int j = 0; j < f; j++) g[(size_t)c * f + j] += d * x[i * f + j];
                g[(size_t)k * f + c] += d;
            }
        }
        double norm = 0;
        for (int64_t j = 0; j < (int64_t)k * f + k; j++) {
            if (j < (int64_t)k * f) g[j] += l2 * w[j];
            norm = fmax(norm, fabs(g[j]));
            if (j < (int64_t)k * f) w[j] -= lr * g[j];
            else b[j - (int64_t)k * f] -= lr * g[j];
        }
        if (norm < 1e-7) break;
    }
    free(g), free(p);
}

static double reference_accuracy(const float *x, const int64_t *y, int64_t n, int f, int k,
                                 const double *w, const double *b)
{
    int64_t hit = 0;
    for (int64_t i = 0; i < n; i++) {
        int best = 0;
        double bz = -1e300;
        for (int c = 0; c < k; c++) {
            double z = b[c];
            for (int j = 0; j < f; j++) z += w[(size_t)c * f + j] * x[i * f + j];
            if (z > bz) bz = z, best = c;
        }
        hit += best == y[i];
    }
    return (double)hit / (double)n;
}

/* Features of a tensor split through the fixture model without its head, with flips. */
static float *features(const char *data, const char *xs, const char *ys, int flips, int64_t *n,
                       int *f, int64_t **y)
{
    eng_npz *ck = NULL, *d = NULL;
    eng_arch a;
    eng_net *net = NULL;
    T_CHECK(eng_npz_load(t_fixture("model.npz"), NULL, &ck, err, sizeof err) == 0);
    T_CHECK(eng_arch_from_npz(ck, &a, err, sizeof err) == 0);
    eng_npz *body = eng_npz_new();
    for (int i = 0; i < ck->n; i++)
        if (strncmp(ck->names[i], "resnet/head/", 12)) eng_npz_put(body, ck->names[i], eng_tensor_clone(ck->tensors[i]));
    a.head = 0;
    T_CHECK(eng_net_new(body, &a, NULL, &net, err, sizeof err) == 0);
    T_CHECK(eng_npz_load(data, NULL, &d, err, sizeof err) == 0);
    const eng_tensor *x = eng_npz_get(d, xs), *yt = eng_npz_get(d, ys);
    int64_t m = x->shape[0], rows = m * (flips + 1);
    *f = eng_net_out_dim(net);
    float *out = malloc(sizeof(float) * (size_t)rows * *f), *img = eng_alloc(sizeof(float) * 3 * 1024);
    *y = malloc(sizeof(int64_t) * (size_t)rows);
    for (int64_t i = 0; i < m; i++)
        for (int pass = 0; pass <= flips; pass++) {
            const float *src = (const float *)x->data + i * 3 * 1024;
            for (int r = 0; r < 3 * 32; r++)
                for (int c = 0; c < 32; c++) img[r * 32 + c] = src[r * 32 + (pass ? 31 - c : c)];
            int64_t row = i * (flips + 1) + pass;
            eng_net_forward(net, img, 1, 32, 32, out + row * *f, NULL, NULL, err, sizeof err);
            (*y)[row] = ((const int64_t *)yt->data)[i];
        }
    *n = rows;
    eng_free(img);
    eng_net_free(net);
    eng_npz_free(body), eng_npz_free(ck), eng_npz_free(d);
    return out;
}

static json_t *load_json(const char *dir, ft_file f)
{
    char p[800];
    ft_rundir_path(dir, f, p, sizeof p);
    return json_load_file(p, 0, NULL);
}

/* The linear probe: its head reaches the accuracy of the reference regression (same
 * features, the L2 strength it chose) within 1 point; the model is in the official schema. */
static void linear_probe(void)
{
    const char *data = tensor_data("lin", 160, 80, 7);
    char run[700];
    snprintf(run, sizeof run, "%s/linrun", t_tmpdir());
    ft_params p;
    /* f32: the reference below fits the same features, which it computes in f32 */
    json_t *hp = json_pack("{s:s, s:s}", "mode", "linear", "precision", "f32");
    T_REQ_EQ(ft_params_from_json(hp, &p, err, sizeof err), 0);
    json_decref(hp);
    int rc = ft_run(t_fixture("model.npz"), data, run, &p, NULL, 0, NULL, err, sizeof err);
    T_CHECKF(rc == 0, "%s", err);
    if (rc) return;
    json_t *st = load_json(run, FT_FILE_STATE), *m = load_json(run, FT_FILE_METRICS);
    T_REQUIRE(st && m);
    double l2 = -1, head_val = -1, model_val = json_number_value(json_object_get(json_object_get(m, "val"), "top1"));
    size_t i;
    json_t *ev;
    json_array_foreach(json_object_get(st, "history"), i, ev)
        if (!strcmp(json_string_value(json_object_get(ev, "type")), "linear"))
            l2 = json_number_value(json_object_get(ev, "l2")), head_val = json_number_value(json_object_get(ev, "val_top1"));
    T_STREQ(json_string_value(json_object_get(json_object_get(st, "resolved"), "mode")), "linear");
    T_CHECKF(l2 > 0, "l2 %g", l2);
    T_NEAR(head_val, model_val, 1e-9); /* the written head is the fitted one */
    int64_t ntr, nva;
    int f;
    int64_t *ytr, *yva;
    float *xtr = features(data, "x", "y", 1, &ntr, &f, &ytr);
    float *xva = features(data, "x_val", "y_val", 0, &nva, &f, &yva);
    double *w = calloc((size_t)4 * f, sizeof *w), b[4] = {0};
    reference_fit(xtr, ytr, ntr, f, 4, l2, w, b);
    double ref = reference_accuracy(xva, yva, nva, f, 4, w, b);
    printf("     linear probe: val top-1 %.4f, reference %.4f (l2 %g, %d features)\n", model_val, ref, l2, f);
    T_NEAR(model_val, ref, 0.01 + 1e-9);
    T_CHECKF(model_val > 0.5, "%g", model_val); /* above chance (0.25) */
    /* the model loads as any official checkpoint, with the head's shape */
    char model[800];
    eng_npz *z = NULL;
    eng_arch a;
    ft_rundir_path(run, FT_FILE_MODEL, model, sizeof model);
    T_REQ_EQ(eng_npz_load(model, NULL, &z, err, sizeof err), 0);
    T_EQ(eng_arch_from_npz(z, &a, err, sizeof err), 0);
    T_EQ(a.head, 4);
    eng_npz_free(z);
    free(xtr), free(xva), free(ytr), free(yva), free(w);
    json_decref(st), json_decref(m);
}

/* The solver alone: on separable data it fits, and warm starts only go downhill. */
static void lbfgs_converges(void)
{
    enum { N = 200, F = 5, K = 3 };
    float x[N * F], w[K * F] = {0}, b[K] = {0};
    int64_t y[N];
    for (int i = 0; i < N; i++) {
        y[i] = i % K;
        for (int j = 0; j < F; j++) x[i * F + j] = (float)(((i * 7 + j * 13) % 11) / 11.0 - 0.5 + (j == y[i] ? 1.5 : 0));
    }
    ft_lin_data d = {x, y, N, F, K};
    double l1, l2;
    T_REQ_EQ(ft_lin_fit(&d, 1e-3, 20, w, b, &l1), 0);
    T_REQ_EQ(ft_lin_fit(&d, 1e-3, 200, w, b, &l2), 0);
    T_CHECKF(l2 <= l1 + 1e-9, "%g after %g", l2, l1);
    T_NEAR(ft_lin_accuracy(&d, w, b), 1.0, 1e-9);
}

/* A cost table for the planner: seconds per image at each crop. */
static int table_cost(void *ud, int crop, ft_cost *c)
{
    (void)ud;
    double scale = (double)crop * crop / (480.0 * 480.0);
    c->train_s = 0.8 * scale, c->infer_s = 0.25 * scale;
    return 0;
}

static ft_plan_in plan_case(double minutes, int64_t images)
{
    ft_params p = {.mixup = -1, .weight_decay = -1};
    ft_data_info info = {.train_images = images, .median_w = 640, .median_h = 480};
    ft_plan_in in = {.train_images = images, .val_images = images / 10, .classes = 10,
                     .features = 2048, .params = 23500000, .budget_s = minutes * 60, .cost = table_cost};
    ft_resolve(&p, &info, &in.rule, err, sizeof err);
    return in;
}

/* The planner as a table: (budget, dataset) -> plan, in the documented order of preference. */
static void budget_table(void)
{
    int pre[5], crops[5];
    T_EQ(ft_plan_ladder(512, 480, pre, crops), 5);
    T_CHECK(crops[0] == 480 && crops[1] == 384 && crops[2] == 288 && crops[3] == 224 && crops[4] == 128);
    T_CHECK(pre[0] == 512 && pre[4] == 137);
    T_EQ(ft_plan_ladder(160, 128, pre, crops), 5);
    T_CHECK(crops[1] == 104 && crops[4] == 32);
    static const struct {
        double minutes;
        int mode, crop;
        int64_t steps_lo, steps_hi;
    } cases[] = {
        {6000, FT_MODE_FULL, 480, 500, 500},   /* the rule fits: 500 x 512 x 0.8 s */
        {3000, FT_MODE_FULL, 480, 100, 499},   /* fewer steps at the rule's resolution */
        {500, FT_MODE_FULL, 384, 100, 499},    /* 480 cannot keep a fifth of its steps */
        {150, FT_MODE_FULL, 224, 100, 500},    /* further down the ladder */
        {60, FT_MODE_FULL, 128, 100, 500},     /* only the smallest crop fits a fine-tune */
        {46.67, FT_MODE_LINEAR, 480, 0, 1 << 30}, /* no fine-tune fits: linear, largest crop */
        {10, FT_MODE_LINEAR, 224, 0, 1 << 30}, /* linear, at the largest crop that fits */
        {5, FT_MODE_LINEAR, 128, 0, 1 << 30},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ft_plan_in in = plan_case(cases[i].minutes, 5000);
        ft_resolved r;
        T_REQ_EQ(ft_plan(&in, &r, err, sizeof err), 0);
        int64_t steps = r.h.schedule[r.h.nsched - 1];
        T_CHECKF((int)r.mode == cases[i].mode && r.h.crop == cases[i].crop && steps >= cases[i].steps_lo &&
                 steps <= cases[i].steps_hi && r.predicted_s <= in.budget_s && r.budget_s == in.budget_s,
                 "%g min: mode %d crop %d steps %lld predicted %.0f s", cases[i].minutes, r.mode, r.h.crop,
                 (long long)steps, r.predicted_s);
    }
    /* too small even for linear: 400 naming the minimum feasible budget */
    ft_plan_in in = plan_case(0.2, 5000);
    ft_resolved r;
    T_EQ(ft_plan(&in, &r, err, sizeof err), ENG_EINVAL);
    T_CHECK(strstr(err, "budget_minutes") && strstr(err, "at least"));
    /* explicit values win: a fixed resolution and mode stay even when they do not fit */
    in = plan_case(10, 5000);
    in.fixed_res = 1, in.fixed_mode = 1, in.fixed_steps = 1;
    T_REQ_EQ(ft_plan(&in, &r, err, sizeof err), 0);
    T_CHECK(r.mode == FT_MODE_FULL && r.h.crop == 480 && r.predicted_s > in.budget_s);
    /* a fixed resolution only: fewer steps, else linear at that resolution */
    in = plan_case(46.67, 5000);
    in.fixed_res = 1;
    T_REQ_EQ(ft_plan(&in, &r, err, sizeof err), 0);
    T_CHECK(r.mode == FT_MODE_LINEAR && r.h.crop == 480);
    /* pure: the same inputs, the same plan */
    ft_resolved r2;
    in = plan_case(3000, 5000);
    T_REQ_EQ(ft_plan(&in, &r, err, sizeof err), 0);
    T_REQ_EQ(ft_plan(&in, &r2, err, sizeof err), 0);
    T_CHECK(!memcmp(r.h.schedule, r2.h.schedule, sizeof r.h.schedule) && r.predicted_s == r2.predicted_s);
}

typedef struct seen {
    int64_t selected, evals;
    double best_top1;
} seen;

static void on_event(void *ud, const json_t *ev)
{
    seen *s = ud;
    const char *type = json_string_value(json_object_get(ev, "type"));
    if (!strcmp(type, "selected")) s->selected = json_integer_value(json_object_get(ev, "step"));
    if (!strcmp(type, "eval")) {
        double t = json_number_value(json_object_get(ev, "val_top1"));
        if (t > s->best_top1) s->best_top1 = t;
        s->evals++;
    }
}

/* select=best: the run's model is the checkpoint whose evaluation was best. */
static void select_best(void)
{
    const char *data = tensor_data("best", 48, 24, 11);
    char run[700], ck[800], a[900], b[900];
    snprintf(run, sizeof run, "%s/bestrun", t_tmpdir());
    ft_params p;
    json_t *hp = json_pack("{s:s, s:i, s:i, s:i, s:f}", "select", "best", "steps", 12, "batch", 8,
                           "eval_every", 3, "base_lr", 0.3);
    T_REQ_EQ(ft_params_from_json(hp, &p, err, sizeof err), 0);
    json_decref(hp);
    seen s = {.selected = -1, .best_top1 = -1};
    ft_hooks h = {NULL, on_event, NULL, &s, NULL};
    T_REQ_EQ(ft_run(t_fixture("model.npz"), data, run, &p, NULL, 0, &h, err, sizeof err), 0);
    T_GE(s.evals, 4);
    T_GE(s.selected, 3);
    ft_rundir_checkpoint(run, s.selected, ck, sizeof ck);
    ft_rundir_path(ck, FT_FILE_MODEL, a, sizeof a);
    ft_rundir_path(run, FT_FILE_MODEL, b, sizeof b);
    struct stat sa, sb;
    T_CHECK(stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_ino == sb.st_ino); /* the same file */
    json_t *m = load_json(run, FT_FILE_METRICS);
    T_NEAR(json_number_value(json_object_get(json_object_get(m, "val"), "top1")), s.best_top1, 1e-9);
    json_decref(m);
}

int main(void)
{
    T_RUN(lbfgs_converges);
    T_RUN(budget_table);
    T_RUN(linear_probe);
    T_RUN(select_best);
    return t_done();
}
