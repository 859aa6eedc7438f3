/* Fine-tuning runs: the HyperRule table, exact resume, atomic checkpoints under SIGKILL,
 * corrupt checkpoints, and an end-to-end run whose accuracy ends well above chance. */
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "finetune.h"
#include "t.h"

static char err[1024];

static void hyper_rule_table(void)
{
    eng_hyper h;
    struct { int64_t n; int w, h, crop, precrop; int64_t last; double mix; } rows[] = {
        {19999, 95, 95, 128, 160, 500, 0.0},      {20000, 96, 96, 480, 512, 10000, 0.1},
        {499999, 96, 95, 128, 160, 10000, 0.1},    {500000, 500, 300, 480, 512, 20000, 0.1},
        {10, 100, 92, 128, 160, 500, 0.0}, /* 9200 pixels: just under 96 x 96 */
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        eng_hyper_rule(rows[i].n, rows[i].w, rows[i].h, &h);
        T_CHECKF(h.crop == rows[i].crop && h.precrop == rows[i].precrop, "row %zu: %d/%d", i,
                 h.precrop, h.crop);
        T_CHECKF(h.schedule[h.nsched - 1] == rows[i].last, "row %zu: %lld", i,
                 (long long)h.schedule[h.nsched - 1]);
        T_CHECK(h.mixup_alpha == rows[i].mix && h.batch == 512 && h.base_lr == 0.003);
    }
    eng_hyper_rule(100, 200, 200, &h); /* [100, 200, 300, 400, 500] */
    T_CHECK(eng_hyper_lr(&h, 0) == 0);
    T_CHECK(fabs(eng_hyper_lr(&h, 50) - 0.0015) < 1e-15);
    T_CHECK(fabs(eng_hyper_lr(&h, 100) - 0.003) < 1e-15);
    T_CHECK(fabs(eng_hyper_lr(&h, 200) - 0.003) < 1e-15);  /* boundary not yet passed */
    T_CHECK(fabs(eng_hyper_lr(&h, 201) - 0.0003) < 1e-15);
    T_CHECK(fabs(eng_hyper_lr(&h, 300) - 0.0003) < 1e-15);
    T_CHECK(fabs(eng_hyper_lr(&h, 301) - 0.00003) < 1e-15);
    T_CHECK(fabs(eng_hyper_lr(&h, 499) - 0.000003) < 1e-15);
    T_CHECK(eng_hyper_lr(&h, 500) < 0);
    eng_hyper_scale_steps(&h, 50);
    int64_t want[] = {10, 20, 30, 40, 50};
    for (int i = 0; i < 5; i++) T_CHECK(h.schedule[i] == want[i]);
    eng_hyper_scale_steps(&h, 3); /* degenerate: still increasing, ends at or after 3 */
    for (int i = 1; i < 5; i++) T_CHECK(h.schedule[i] > h.schedule[i - 1]);
}

/* A 3-class tensor dataset whose classes differ in one colour channel. */
static const char *make_tensor_data(int n)
{
    static char path[600];
    snprintf(path, sizeof path, "%s/colors%d.npz", t_tmpdir(), n);
    if (access(path, R_OK) == 0) return path;
    int64_t xs[] = {n, 3, 32, 32}, ys[] = {n};
    eng_tensor *x = eng_tensor_new(ENG_F32, 0, 4, xs), *y = eng_tensor_new(ENG_I64, 0, 1, ys);
    eng_rng r;
    eng_rng_seed(&r, 42);
    float *px = x->data;
    for (int i = 0; i < n; i++) {
        int c = i % 3;
        ((int64_t *)y->data)[i] = c;
        for (int k = 0; k < 3 * 32 * 32; k++)
            px[(size_t)i * 3 * 32 * 32 + k] = (float)(0.6 * eng_rng_uniform(&r) - 0.3) +
                                               (k / (32 * 32) == c ? 0.6f : 0.0f);
    }
    eng_npz *z = eng_npz_new();
    eng_npz_put(z, "x", x);
    eng_npz_put(z, "y", y);
    eng_npz_save(path, z, 0, err, sizeof err);
    eng_npz_free(z);
    return path;
}

typedef struct stopper {
    int64_t at, seen;
    int how;
} stopper;

static void count_progress(void *ud, const ft_progress *p) { ((stopper *)ud)->seen = p->step; }
static int stop_at(void *ud)
{
    stopper *s = ud;
    return s->at && s->seen >= s->at ? s->how : 0;
}

static ft_params small_params(void)
{
    ft_params p = {.schedule = {2, 4, 6, 8}, .nsched = 4, .batch = 6, .batch_split = 2,
                   .base_lr = 0.02, .mixup = 0.5, .seed = 7, .save_every = 3};
    return p;
}

static int same_npz(const char *a, const char *b)
{
    eng_npz *x = NULL, *y = NULL;
    int same = eng_npz_load(a, NULL, &x, err, sizeof err) == 0 &&
               eng_npz_load(b, NULL, &y, err, sizeof err) == 0 && x->n == y->n;
    for (int i = 0; same && i < x->n; i++) {
        const eng_tensor *t = eng_npz_get(y, x->names[i]);
        same = t && eng_tensor_bytes(t) == eng_tensor_bytes(x->tensors[i]) &&
               !memcmp(t->data, x->tensors[i]->data, eng_tensor_bytes(t));
        if (!same) fprintf(stderr, "  %s differs\n", x->names[i]);
    }
    eng_npz_free(x);
    eng_npz_free(y);
    return same;
}

static void run_dir(char *buf, size_t n, const char *name)
{
    snprintf(buf, n, "%s/%s", t_tmpdir(), name);
}

/* 8 steps in one go and 4 + resume + 4 give the same parameters and momentum. */
static void resume_is_exact(void)
{
    const char *data = make_tensor_data(30), *base = t_fixture("model.npz");
    char a[600], b[600], pa[700], pb[700];
    run_dir(a, sizeof a, "whole"), run_dir(b, sizeof b, "halves");
    ft_params p = small_params();
    T_REQUIRE(ft_run(base, data, a, &p, 0, NULL, err, sizeof err) == 0);
    stopper s = {.at = 4, .how = 2};
    ft_hooks h = {.progress = count_progress, .stop = stop_at, .ud = &s};
    T_REQUIRE(ft_run(base, data, b, &p, 0, &h, err, sizeof err) == FT_ESTOPPED);
    T_CHECK(ft_run(base, data, b, &p, 0, NULL, err, sizeof err) == ENG_EINVAL); /* not over a run */
    T_REQUIRE(ft_run(NULL, NULL, b, &p, 1, NULL, err, sizeof err) == 0);
    snprintf(pa, sizeof pa, "%s/model.npz", a), snprintf(pb, sizeof pb, "%s/model.npz", b);
    T_CHECK(same_npz(pa, pb));
    snprintf(pa, sizeof pa, "%s/optimizer.npz", a), snprintf(pb, sizeof pb, "%s/optimizer.npz", b);
    T_CHECK(same_npz(pa, pb));
    /* the head was replaced: 3 classes */
    eng_npz *z = NULL;
    snprintf(pa, sizeof pa, "%s/model.npz", a);
    T_REQUIRE(eng_npz_load(pa, NULL, &z, err, sizeof err) == 0);
    int64_t hs[] = {1, 1, 1024, 3};
    T_CHECK(eng_tensor_is_f32(eng_npz_get(z, "resnet/head/conv2d/kernel"), 4, hs));
    eng_npz_free(z);
}

/* A writer killed at any moment leaves a checkpoint that loads and resumes. */
static void killed_writer_leaves_checkpoint(void)
{
    const char *data = make_tensor_data(30), *base = t_fixture("model.npz");
    for (int round = 0; round < 3; round++) {
        char d[600];
        snprintf(d, sizeof d, "%s/killed%d", t_tmpdir(), round);
        ft_params p = small_params();
        p.schedule[0] = 20, p.schedule[1] = 40, p.schedule[2] = 60, p.schedule[3] = 400;
        p.save_every = 1; /* a checkpoint every step: the kill lands inside one */
        pid_t pid = fork();
        T_REQUIRE(pid >= 0);
        if (pid == 0) {
            char e[512];
            _exit(ft_run(base, data, d, &p, 0, NULL, e, sizeof e) == 0 ? 0 : 3);
        }
        usleep(300000 + 170000 * round);
        kill(pid, SIGKILL);
        int st;
        waitpid(pid, &st, 0);
        T_CHECK(WIFSIGNALED(st));
        /* resume a few more steps from whatever checkpoint survived */
        p.schedule[3] = 0;
        char ck[700];
        snprintf(ck, sizeof ck, "%s/checkpoints", d);
        struct stat sb;
        if (stat(ck, &sb) != 0) continue; /* killed before the first checkpoint */
        stopper s = {.at = 1, .how = 2};
        ft_hooks h = {.progress = count_progress, .stop = stop_at, .ud = &s};
        int rc = ft_run(NULL, NULL, d, &p, 1, &h, err, sizeof err);
        T_CHECKF(rc == FT_ESTOPPED || rc == 0, "resume after kill: %s", err);
    }
}

static void corrupt_checkpoint_is_an_error(void)
{
    const char *data = make_tensor_data(30), *base = t_fixture("model.npz");
    char d[600], path[800];
    run_dir(d, sizeof d, "corrupt");
    ft_params p = small_params();
    stopper s = {.at = 3, .how = 2};
    ft_hooks h = {.progress = count_progress, .stop = stop_at, .ud = &s};
    T_REQUIRE(ft_run(base, data, d, &p, 0, &h, err, sizeof err) == FT_ESTOPPED);
    snprintf(path, sizeof path, "%s/checkpoints/step-000000003/model.npz", d);
    T_REQUIRE(truncate(path, 1000) == 0);
    T_CHECK(ft_run(NULL, NULL, d, &p, 1, NULL, err, sizeof err) == ENG_EFORMAT);
    T_CHECKF(strstr(err, "model.npz") != NULL, "%s", err);
    snprintf(path, sizeof path, "%s/checkpoints/step-000000003/state.json", d);
    FILE *f = fopen(path, "w");
    fputs("{not json", f);
    fclose(f);
    T_CHECK(ft_run(NULL, NULL, d, &p, 1, NULL, err, sizeof err) == ENG_EFORMAT);
    char other[600];
    run_dir(other, sizeof other, "nothing-here");
    T_CHECK(ft_run(NULL, NULL, other, &p, 1, NULL, err, sizeof err) == ENG_ENOTFOUND);
}

/* From the tiny fixture backbone, 3 colour classes are learnt well above chance (1/3). */
static void end_to_end_accuracy(void)
{
    const char *data = make_tensor_data(90), *base = t_fixture("model.npz");
    char d[600], mp[700];
    run_dir(d, sizeof d, "e2e");
    ft_params p = {.steps = 30, .batch = 16, .base_lr = 0.03, .seed = 1, .eval_every = 10};
    T_REQUIRE(ft_run(base, data, d, &p, 0, NULL, err, sizeof err) == 0);
    snprintf(mp, sizeof mp, "%s/metrics.json", d);
    json_t *m = json_load_file(mp, 0, NULL);
    double top1 = json_real_value(json_object_get(json_object_get(m, "val"), "top1"));
    T_CHECKF(top1 >= 0.8, "val top-1 %.3f", top1);
    T_CHECK(json_array_size(json_object_get(json_object_get(m, "val"), "per_class")) == 3);
    json_decref(m);
    /* ft_evaluate on the saved model agrees with the run's own final evaluation */
    ds_dataset *ds = NULL;
    eng_npz *z = NULL;
    eng_arch a;
    eng_net *net = NULL;
    json_t *e = NULL;
    ds_opts o = {.seed = 1};
    snprintf(mp, sizeof mp, "%s/model.npz", d);
    T_REQUIRE(ds_open(data, &o, &ds, err, sizeof err) == 0);
    T_REQUIRE(eng_npz_load(mp, NULL, &z, err, sizeof err) == 0 && eng_arch_from_npz(z, &a, err, sizeof err) == 0);
    T_REQUIRE(eng_net_new(z, &a, NULL, &net, err, sizeof err) == 0);
    T_REQUIRE(ft_evaluate(net, ds, DS_VAL, 32, 7, &e, err, sizeof err) == 0);
    T_CHECK(fabs(json_real_value(json_object_get(e, "top1")) - top1) < 1e-12);
    json_decref(e);
    eng_net_free(net);
    eng_npz_free(z);
    ds_free(ds);
}

static void bad_parameters(void)
{
    const char *data = make_tensor_data(30), *base = t_fixture("model.npz");
    char d[600];
    run_dir(d, sizeof d, "bad");
    ft_params p = {.batch = 10, .batch_split = 3};
    T_CHECK(ft_run(base, data, d, &p, 0, NULL, err, sizeof err) == ENG_EINVAL && strstr(err, "divisible"));
    ft_params q = {.nsched = 3, .schedule = {5, 3, 9}};
    T_CHECK(ft_run(base, data, d, &q, 0, NULL, err, sizeof err) == ENG_EINVAL);
    ft_params r = {.steps = 2};
    T_CHECK(ft_run(t_fixture("input.npy"), data, d, &r, 0, NULL, err, sizeof err) < 0);
    T_CHECK(ft_run(base, "/nonexistent/data", d, &r, 0, NULL, err, sizeof err) == ENG_ENOTFOUND);
}

int main(void)
{
    T_RUN(hyper_rule_table);
    T_RUN(resume_is_exact);
    T_RUN(killed_writer_leaves_checkpoint);
    T_RUN(corrupt_checkpoint_is_an_error);
    T_RUN(end_to_end_accuracy);
    T_RUN(bad_parameters);
    return t_done();
}
