/* Fine-tuning runs: the HyperRule table, exact resume, atomic checkpoints under SIGKILL,
 * corrupt checkpoints, and an end-to-end run whose accuracy ends well above chance. */
#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "arch.h"
#include "finetune.h"
#include "ftjson.h"
#include "modelmeta.h"
#include "rundir.h"
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

/* A base model pre-trained at R px fine-tunes at the rule's sizes times R / 224; official
 * models (no declared resolution) keep the rule exactly. */
static void hyper_rule_scaled_resolution(void)
{
    struct { int res, precrop, crop, big_precrop, big_crop; } rows[] = {
        {224, 160, 128, 512, 480}, {56, 40, 32, 128, 120}, {448, 320, 256, 1024, 960},
        {32, 40, 32, 74, 69}, /* 128 * 32 / 224 = 18 is under the engine's 32: clamped */
        {100, 71, 57, 228, 214},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        eng_hyper h, big;
        eng_hyper_rule(1000, 28, 28, &h);
        eng_hyper_rule(1000, 500, 400, &big);
        eng_hyper_scale_res(&h, rows[i].res);
        eng_hyper_scale_res(&big, rows[i].res);
        T_CHECKF(h.precrop == rows[i].precrop && h.crop == rows[i].crop, "%d: %d/%d", rows[i].res,
                 h.precrop, h.crop);
        T_CHECKF(big.precrop == rows[i].big_precrop && big.crop == rows[i].big_crop, "%d: %d/%d",
                 rows[i].res, big.precrop, big.crop);
        T_CHECK(h.schedule[h.nsched - 1] == 500 && h.base_lr == 0.003); /* only sizes move */
    }
    ft_data_info small = {.train_images = 100, .median_w = 8, .median_h = 8};
    ft_resolved r;
    ft_params official = {.mixup = -1, .weight_decay = -1};
    T_REQUIRE(ft_resolve(&official, &small, &r, err, sizeof err) == 0);
    T_CHECK(r.h.precrop == 160 && r.h.crop == 128 && r.pretrain_res == 224);
    ft_params at56 = {.mixup = -1, .weight_decay = -1, .pretrain_res = 56};
    T_REQUIRE(ft_resolve(&at56, &small, &r, err, sizeof err) == 0);
    T_CHECK(r.h.precrop == 40 && r.h.crop == 32 && r.pretrain_res == 56);
    json_t *j = ft_resolved_json(&r);
    T_CHECK(json_integer_value(json_object_get(j, "pretrain_resolution")) == 56);
    T_CHECK(json_integer_value(json_array_get(json_object_get(j, "resolution"), 0)) == 40);
    json_decref(j);
    at56.crop = 48; /* an explicit resolution still wins */
    T_REQUIRE(ft_resolve(&at56, &small, &r, err, sizeof err) == 0);
    T_CHECK(r.h.precrop == 48 && r.h.crop == 48);
    ft_params tiny = {.mixup = -1, .weight_decay = -1, .pretrain_res = 16};
    T_CHECK(ft_resolve(&tiny, &small, &r, err, sizeof err) == ENG_EINVAL && strstr(err, "pre-training resolution"));
    /* a pre-training run records the size it trains at, for its fine-tunings to scale by */
    eng_arch a = {{1, 1, 1, 1}, 32, 0};
    ft_params pre = {.mixup = -1, .weight_decay = -1, .init_arch = &a, .crop = 56, .precrop = 64};
    ft_data_info fm = {.train_images = 60000, .median_w = 28, .median_h = 28};
    T_REQUIRE(ft_resolve(&pre, &fm, &r, err, sizeof err) == 0);
    T_CHECK(r.pretrain && r.pretrain_res == 56 && r.h.crop == 56 && r.h.precrop == 64);
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
    T_REQUIRE(ft_run(base, data, a, &p, NULL, 0, NULL, err, sizeof err) == 0);
    stopper s = {.at = 4, .how = 2};
    ft_hooks h = {.progress = count_progress, .stop = stop_at, .ud = &s};
    T_REQUIRE(ft_run(base, data, b, &p, NULL, 0, &h, err, sizeof err) == FT_ESTOPPED);
    T_EQ(ft_run(base, data, b, &p, NULL, 0, NULL, err, sizeof err), ENG_EINVAL); /* not over a run */
    T_REQUIRE(ft_run(NULL, NULL, b, &p, NULL, 1, NULL, err, sizeof err) == 0);
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

/* Whether dir/checkpoints holds a finished checkpoint (a step-* directory, not just the
 * .tmp-* one a kill can leave when it lands inside the first). */
static int has_checkpoint(const char *dir)
{
    char ck[700];
    snprintf(ck, sizeof ck, "%s/checkpoints", dir);
    DIR *dh = opendir(ck);
    struct dirent *e;
    int found = 0;
    while (dh && (e = readdir(dh)))
        found |= !strncmp(e->d_name, "step-", 5);
    if (dh) closedir(dh);
    return found;
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
            _exit(ft_run(base, data, d, &p, NULL, 0, NULL, e, sizeof e) == 0 ? 0 : 3);
        }
        usleep(300000 + 170000 * round);
        kill(pid, SIGKILL);
        int st;
        waitpid(pid, &st, 0);
        T_CHECK(WIFSIGNALED(st));
        /* resume a few more steps from whatever checkpoint survived */
        p.schedule[3] = 0;
        if (!has_checkpoint(d)) continue; /* killed before the first checkpoint was whole */
        stopper s = {.at = 1, .how = 2};
        ft_hooks h = {.progress = count_progress, .stop = stop_at, .ud = &s};
        int rc = ft_run(NULL, NULL, d, &p, NULL, 1, &h, err, sizeof err);
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
    T_REQUIRE(ft_run(base, data, d, &p, NULL, 0, &h, err, sizeof err) == FT_ESTOPPED);
    snprintf(path, sizeof path, "%s/checkpoints/step-000000003/model.npz", d);
    T_REQUIRE(truncate(path, 1000) == 0);
    T_EQ(ft_run(NULL, NULL, d, &p, NULL, 1, NULL, err, sizeof err), ENG_EFORMAT);
    T_CHECKF(strstr(err, "model.npz") != NULL, "%s", err);
    snprintf(path, sizeof path, "%s/checkpoints/step-000000003/state.json", d);
    FILE *f = fopen(path, "w");
    fputs("{not json", f);
    fclose(f);
    T_EQ(ft_run(NULL, NULL, d, &p, NULL, 1, NULL, err, sizeof err), ENG_EFORMAT);
    char other[600];
    run_dir(other, sizeof other, "nothing-here");
    T_EQ(ft_run(NULL, NULL, other, &p, NULL, 1, NULL, err, sizeof err), ENG_ENOTFOUND);
}

/* From the tiny fixture backbone, 3 colour classes are learnt well above chance (1/3), in
 * f32; and in bf16 (where oneDNN has bf16 kernels) to within 1 point of f32's accuracy. */
static double e2e_top1;

static void end_to_end(eng_precision prec, const char *name)
{
    const char *data = make_tensor_data(90), *base = t_fixture("model.npz");
    char d[600], mp[700];
    run_dir(d, sizeof d, name);
    ft_params p = {.steps = 30, .batch = 16, .base_lr = 0.03, .seed = 1, .eval_every = 10,
                   .precision = prec};
    T_REQUIRE(ft_run(base, data, d, &p, NULL, 0, NULL, err, sizeof err) == 0);
    snprintf(mp, sizeof mp, "%s/metrics.json", d);
    json_t *m = json_load_file(mp, 0, NULL);
    double top1 = json_real_value(json_object_get(json_object_get(m, "val"), "top1"));
    T_CHECKF(top1 >= 0.8, "val top-1 %.3f", top1);
    if (prec == ENG_PREC_F32) e2e_top1 = top1;
    else T_CHECKF(e2e_top1 > 0 && fabs(top1 - e2e_top1) <= 0.01, "bf16 top-1 %.3f, f32 %.3f", top1, e2e_top1);
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
    eng_net_opts no = {.precision = prec};
    T_REQUIRE(eng_net_new(z, &a, &no, &net, err, sizeof err) == 0);
    T_REQUIRE(ft_evaluate(net, ds, DS_VAL, 32, 7, &e, err, sizeof err) == 0);
    T_CHECK(fabs(json_real_value(json_object_get(e, "top1")) - top1) < 1e-12);
    json_decref(e);
    eng_net_free(net);
    eng_npz_free(z);
    ds_free(ds);
}

static void end_to_end_accuracy(void) { end_to_end(ENG_PREC_F32, "e2e"); }

static void end_to_end_accuracy_bf16(void)
{
    if (eng_precision_resolve(ENG_PREC_AUTO) != ENG_PREC_BF16) {
        printf("(no bf16 convolutions on this CPU: skipped)\n");
        return;
    }
    end_to_end(ENG_PREC_BF16, "e2e-bf16");
}

/* One vocabulary: a job's hyper-parameters are bit finetune's options with underscores; "res"
 * is "resolution"; an unknown field names the nearest and lists them all; resolved-only
 * fields say so; the resolved values print back as options. */
static void hyperparameter_vocabulary(void)
{
    ft_params p;
    json_t *hp = json_pack("{s:[i,i], s:b, s:b, s:f, s:i}", "res", 40, 32, "augment", 0, "shuffle", 0,
                           "weight_decay", 0.25, "batch_split", 2);
    T_EQ(ft_params_from_json(hp, &p, err, sizeof err), 0);
    T_CHECK(p.precrop == 40 && p.crop == 32 && p.no_augment && p.no_shuffle && p.weight_decay == 0.25 &&
            p.batch_split == 2);
    json_decref(hp);
    hp = json_pack("{s:[i,i], s:[i,i]}", "resolution", 40, 32, "res", 40, 32);
    T_CHECK(ft_params_from_json(hp, &p, err, sizeof err) == ENG_EINVAL && strstr(err, "given twice"));
    json_decref(hp);
    hp = json_pack("{s:i}", "step", 5);
    T_CHECK(ft_params_from_json(hp, &p, err, sizeof err) == ENG_EINVAL &&
            strstr(err, "hyperparameters.step: unknown field; did you mean steps?"));
    for (size_t i = 0; ft_param_field(i); i++) /* the message lists every field */
        T_CHECKF(strstr(err, ft_param_field(i)->name), "%s lacks %s", err, ft_param_field(i)->name);
    json_decref(hp);
    hp = json_pack("{s:i}", "micro_batch", 4);
    T_CHECK(ft_params_from_json(hp, &p, err, sizeof err) == ENG_EINVAL && strstr(err, "resolved, not requested"));
    json_decref(hp);
    hp = json_pack("{s:s}", "augment", "yes");
    T_CHECK(ft_params_from_json(hp, &p, err, sizeof err) == ENG_EINVAL && strstr(err, "hyperparameters.augment"));
    json_decref(hp);
    /* every documented field and alias is accepted ("auto": the rule decides) */
    for (size_t i = 0; ft_param_field(i); i++) {
        const ft_field_doc *d = ft_param_field(i);
        T_CHECKF(d->cli && !strncmp(d->cli, "--", 2) && d->help && *d->help, "%s", d->name);
        for (int k = 0; k < 2; k++) {
            const char *name = k ? d->alias : d->name;
            if (!name) continue;
            hp = json_pack("{s:s}", name, "auto");
            T_CHECKF(ft_params_from_json(hp, &p, err, sizeof err) == 0, "%s: %s", name, err);
            json_decref(hp);
        }
    }
    /* precision: auto unless asked; resolved to what this CPU runs, shown, and read back */
    T_EQ(ft_params_from_json(NULL, &p, err, sizeof err), 0);
    T_EQ(p.precision, ENG_PREC_AUTO);
    hp = json_pack("{s:s}", "precision", "bf16");
    T_CHECK(ft_params_from_json(hp, &p, err, sizeof err) == 0 && p.precision == ENG_PREC_BF16);
    json_decref(hp);
    hp = json_pack("{s:s}", "precision", "fp16");
    T_CHECK(ft_params_from_json(hp, &p, err, sizeof err) == ENG_EINVAL &&
            strstr(err, "hyperparameters.precision: must be \"f32\", \"bf16\" or \"auto\""));
    json_decref(hp);
    ft_params q = small_params();
    ft_data_info info = {.train_images = 30, .median_w = 32, .median_h = 32};
    ft_resolved r;
    char flags[600];
    q.no_augment = 1;
    T_REQUIRE(ft_resolve(&q, &info, &r, err, sizeof err) == 0);
    T_EQ(ft_resolved_flags(&r, flags, sizeof flags), 0);
    T_STREQ(flags, "--batch 6 --batch-split 2 --base-lr 0.02 --schedule 2,4,6,8 --res 160,128 "
                   "--mixup 0.5 --seed 7 --save-every 3 --no-augment --precision f32");
    T_EQ(ft_resolved_flags(&r, flags, 20), ENG_EINVAL);
    q.precision = ENG_PREC_AUTO;
    T_REQUIRE(ft_resolve(&q, &info, &r, err, sizeof err) == 0);
    T_EQ(r.precision, eng_precision_resolve(ENG_PREC_AUTO));
    json_t *rj = ft_resolved_json(&r);
    ft_resolved back;
    T_STREQ(json_string_value(json_object_get(rj, "precision")), eng_precision_name(r.precision));
    T_CHECK(ft_resolved_from_json(rj, &back) == 0 && back.precision == r.precision);
    json_object_del(rj, "precision"); /* a job stored before the field ran f32 */
    T_CHECK(ft_resolved_from_json(rj, &back) == 0 && back.precision == ENG_PREC_F32);
    json_decref(rj);
}

typedef struct starts {
    int n, resumed;
    int64_t step;
    json_t *hp;
} starts;

static void count_starts(void *ud, const json_t *ev)
{
    starts *s = ud;
    if (strcmp(json_string_value(json_object_get(ev, "type")), "start")) return;
    s->n++;
    s->resumed += json_is_true(json_object_get(ev, "resume"));
    s->step = json_integer_value(json_object_get(ev, "step"));
    json_decref(s->hp);
    s->hp = json_incref(json_object_get(ev, "hyperparameters"));
}

/* Every start and resume announces what the run resolved; the run's model.npz carries its
 * class names and resolution, which loaders that look keys up (ours, and the official ones)
 * never notice: the same weights answer the same with or without them. */
static void runs_announce_and_carry_their_classes(void)
{
    const char *data = make_tensor_data(30), *base = t_fixture("model.npz");
    char d[600], mp[700], plain[700], withmeta[700];
    run_dir(d, sizeof d, "meta");
    ft_params p = small_params();
    starts st = {0};
    stopper s = {.at = 2, .how = 2};
    ft_hooks h = {.progress = count_progress, .stop = stop_at, .ud = &s};
    ft_hooks h2 = {.event = count_starts, .ud = &st};
    T_REQUIRE(ft_run(base, data, d, &p, NULL, 0, &h, err, sizeof err) == FT_ESTOPPED);
    T_REQUIRE(ft_run(NULL, NULL, d, &p, NULL, 1, &h2, err, sizeof err) == 0);
    T_CHECK(st.n == 1 && st.resumed == 1 && st.step == 2);
    ft_resolved r;
    T_CHECK(ft_resolved_from_json(st.hp, &r) == 0 && r.h.batch == 6 && r.batch_split == 2);
    json_decref(st.hp);
    snprintf(mp, sizeof mp, "%s/model.npz", d);
    eng_meta m;
    T_REQUIRE(eng_meta_read(mp, &m, err, sizeof err) == 0);
    T_CHECK(m.labels && m.labels->n == 3 && !strcmp(m.labels->names[2], "2") && m.resolution == 32);
    eng_meta_clear(&m);
    /* the fixture with and without the keys: same architecture, same logits */
    eng_npz *z = NULL;
    const char *names[] = {"zero", "één", "二", "3", "4", "5", "6", "7", "8", "nine"};
    snprintf(plain, sizeof plain, "%s", t_fixture("model.npz"));
    snprintf(withmeta, sizeof withmeta, "%s/tiny-meta.npz", t_tmpdir());
    T_REQUIRE(eng_npz_load(plain, NULL, &z, err, sizeof err) == 0);
    T_REQUIRE(eng_meta_put(z, names, 10, 64) == 0);
    T_REQUIRE(eng_npz_save(withmeta, z, 0, err, sizeof err) == 0);
    eng_npz_free(z);
    eng_arch a1, a2;
    T_CHECK(eng_arch_probe(withmeta, &a2, err, sizeof err) == 0 && eng_arch_probe(plain, &a1, err, sizeof err) == 0 &&
            !memcmp(&a1, &a2, sizeof a1));
    eng_tensor *in = NULL;
    T_REQUIRE(eng_npy_load(t_fixture("input.npy"), &in, err, sizeof err) == 0);
    float y1[64], y2[64];
    eng_net *n1 = NULL, *n2 = NULL;
    T_REQUIRE(eng_net_load(plain, NULL, &n1, NULL, err, sizeof err) == 0);
    T_REQUIRE(eng_net_load(withmeta, NULL, &n2, NULL, err, sizeof err) == 0);
    int b = (int)in->shape[0], hh = (int)in->shape[2], ww = (int)in->shape[3];
    T_REQUIRE(b * 10 <= 64);
    T_REQUIRE(eng_net_forward(n1, in->data, b, hh, ww, y1, NULL, NULL, err, sizeof err) == 0);
    T_REQUIRE(eng_net_forward(n2, in->data, b, hh, ww, y2, NULL, NULL, err, sizeof err) == 0);
    T_CHECK(!memcmp(y1, y2, sizeof(float) * (size_t)b * 10));
    eng_net_free(n1), eng_net_free(n2), eng_tensor_free(in);
    T_REQUIRE(eng_meta_read(withmeta, &m, err, sizeof err) == 0);
    T_CHECK(m.resolution == 64 && m.labels && m.labels->n == 10 && !strcmp(m.labels->names[1], "één") &&
            !strcmp(m.labels->names[2], "二"));
    eng_meta_clear(&m);
    T_CHECK(eng_meta_read(plain, &m, err, sizeof err) == 0 && !m.labels && !m.resolution);
    /* only the bitd/ entries are read */
    T_REQUIRE(eng_npz_load_prefix(withmeta, ENG_META_PREFIX, NULL, &z, err, sizeof err) == 0);
    T_EQ(z->n, 2);
    /* a malformed key is an error, not a guess */
    int64_t one = 1;
    eng_tensor *f = eng_tensor_new(ENG_F32, 0, 1, &one);
    T_REQUIRE(f && eng_npz_put(z, ENG_META_RESOLUTION, f) == 0);
    T_CHECK(eng_meta_get(z, &m, err, sizeof err) == ENG_EFORMAT && strstr(err, ENG_META_RESOLUTION));
    eng_npz_free(z);
}

static void bad_parameters(void)
{
    const char *data = make_tensor_data(30), *base = t_fixture("model.npz");
    char d[600];
    run_dir(d, sizeof d, "bad");
    ft_params p = {.batch = 10, .batch_split = 3};
    T_CHECK(ft_run(base, data, d, &p, NULL, 0, NULL, err, sizeof err) == ENG_EINVAL && strstr(err, "divisible"));
    ft_params q = {.nsched = 3, .schedule = {5, 3, 9}};
    T_EQ(ft_run(base, data, d, &q, NULL, 0, NULL, err, sizeof err), ENG_EINVAL);
    ft_params r = {.steps = 2};
    T_CHECK(ft_run(t_fixture("input.npy"), data, d, &r, NULL, 0, NULL, err, sizeof err) < 0);
    T_CHECK(ft_run(base, "/nonexistent/data", d, &r, NULL, 0, NULL, err, sizeof err) == ENG_ENOTFOUND);
}

/* The run's resolved values, from its state.json (the caller's). */
static json_t *resolved_of(const char *dir)
{
    char path[700];
    ft_rundir_path(dir, FT_FILE_STATE, path, sizeof path);
    json_t *st = json_load_file(path, 0, NULL), *r = json_incref(json_object_get(st, "resolved"));
    json_decref(st);
    return r;
}

/* --memory-budget-mb (ft_params.memory_bytes): a batch left to the rule is split until a
 * micro-batch's training memory fits; an explicit split is kept; too little for one image is
 * refused. (A linear run at 480 px once took its features in micro-batches of 512 and was
 * killed for memory.) */
static void memory_splits_the_batch(void)
{
    const char *data = make_tensor_data(30), *base = t_fixture("model.npz");
    char d[600];
    eng_arch a;
    T_REQ_EQ(eng_arch_probe(base, &a, err, sizeof err), 0);
    ft_params p = {.batch = 8, .steps = 1, .seed = 1};
    run_dir(d, sizeof d, "mem-free");
    T_REQ_EQ(ft_run(base, data, d, &p, NULL, 0, NULL, err, sizeof err), 0);
    json_t *r = resolved_of(d);
    int crop = (int)json_integer_value(json_array_get(json_object_get(r, "resolution"), 1));
    T_EQ(json_integer_value(json_object_get(r, "batch_split")), 1);
    json_decref(r);
    T_REQUIRE(crop > 0);
    p.memory_bytes = eng_arch_train_bytes(&a, 2, crop, crop);
    T_REQUIRE(eng_arch_train_bytes(&a, 4, crop, crop) > p.memory_bytes);
    run_dir(d, sizeof d, "mem-split");
    T_REQ_EQ(ft_run(base, data, d, &p, NULL, 0, NULL, err, sizeof err), 0);
    r = resolved_of(d);
    T_EQ(json_integer_value(json_object_get(r, "batch_split")), 4);
    T_EQ(json_integer_value(json_object_get(r, "micro_batch")), 2);
    json_decref(r);
    p.batch_split = 2; /* asked for: kept, whatever it costs */
    run_dir(d, sizeof d, "mem-asked");
    T_REQ_EQ(ft_run(base, data, d, &p, NULL, 0, NULL, err, sizeof err), 0);
    r = resolved_of(d);
    T_EQ(json_integer_value(json_object_get(r, "batch_split")), 2);
    json_decref(r);
    p.batch_split = 0, p.memory_bytes = eng_arch_train_bytes(&a, 1, crop, crop) - 1;
    run_dir(d, sizeof d, "mem-none");
    T_EQ(ft_run(base, data, d, &p, NULL, 0, NULL, err, sizeof err), ENG_ELIMIT);
    T_CHECKF(strstr(err, "training one image at"), "%s", err);
}

int main(void)
{
    T_RUN(hyper_rule_table);
    T_RUN(hyper_rule_scaled_resolution);
    T_RUN(resume_is_exact);
    T_RUN(killed_writer_leaves_checkpoint);
    T_RUN(corrupt_checkpoint_is_an_error);
    T_RUN(end_to_end_accuracy);
    T_RUN(end_to_end_accuracy_bf16);
    T_RUN(bad_parameters);
    T_RUN(memory_splits_the_batch);
    T_RUN(hyperparameter_vocabulary);
    T_RUN(runs_announce_and_carry_their_classes);
    return t_done();
}
