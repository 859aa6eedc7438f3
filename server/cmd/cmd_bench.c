/* bit bench: forward-pass speed of a checkpoint, or of random weights for any released
 * architecture (so every size can be measured without a download). Reports medians. */
#include <getopt.h>
#include <jansson.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "dataset.h"
#include "net.h"
#include "rng.h"
#include "train.h"

#include <sys/resource.h>

static const char bench_usage[] =
    "usage: bit bench (--model MODEL.npz | --arch NAME [--head N] [--seed S]) [options]\n\n"
    "Times the forward pass and prints one JSON object: images_per_sec, ms_per_batch\n"
    "(median over the timed iterations), gflops (achieved), plan_ms (first call: building\n"
    "primitives and packing weights) and load_ms.\n\n"
    "  --model PATH       checkpoint in the official BiT .npz schema\n"
    "  --arch NAME        random weights: R50x1, R50x3, R101x1, R101x3, R152x2, R152x4\n"
    "  --head N           classes of the random head (default 21843, BiT-M's)\n"
    "  --seed S           seed of the random weights and input (default 0)\n"
    "  --batch B          images per forward pass (default 8)\n"
    "  --res R            input height and width (default 128)\n"
    "  --iters N          timed iterations (default 10)\n"
    "  --warmup N         untimed iterations after the first (default 1)\n"
    "  --threads N        OpenMP threads (0 = every core; default 0)\n"
    "  --precision P      " CLI_PRECISION_HELP "\n"
    "  --train            time training steps instead (forward + backward + SGD update, one\n"
    "                     micro-batch of --batch images per step)\n"
    "  --profile          add \"profile\": milliseconds per batch by kind of pass (mean over the\n"
    "                     timed iterations), and own_ms / own_pct: bitd's own passes\n"
    "  --data DATA        batches from a dataset through the loader (training transform with\n"
    "                     --train), its wait timed as loader_wait, instead of random input\n"
    "  --loader-threads N decoding threads for --data (default 1)\n";

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct bench_cfg {
    const char *model, *arch, *data;
    long head, seed, batch, res, iters, warmup, loader_threads;
    eng_precision prec;
    int train, profile;
} bench_cfg;

static int parse(int argc, char **argv, bench_cfg *c)
{
    static const struct option opts[] = {
        {"model", 1, 0, 'm'}, {"arch", 1, 0, 'a'}, {"head", 1, 0, 'k'}, {"seed", 1, 0, 's'},
        {"batch", 1, 0, 'b'}, {"res", 1, 0, 'r'}, {"resolution", 1, 0, 'r'}, {"iters", 1, 0, 'i'},
        {"warmup", 1, 0, 'w'},
        {"threads", 1, 0, 'j'}, {"precision", 1, 0, 'p'}, {"help", 0, 0, 'h'},
        {"train", 0, 0, 'T'}, {"profile", 0, 0, 'P'}, {"data", 1, 0, 'd'},
        {"loader-threads", 1, 0, 'L'}, {0, 0, 0, 0}};
    *c = (bench_cfg){.head = 21843, .batch = 8, .res = 128, .iters = 10, .warmup = 1,
                     .prec = ENG_PREC_AUTO, .loader_threads = 1};
    int o, bad = 0;
    optind = 1;
    if (cli_threads("bench", "0") < 0) return 2;
    while ((o = cli_getopt("bench", argc, argv, opts)) != -1) {
        switch (o) {
        case 'm': c->model = optarg; break;
        case 'a': c->arch = optarg; break;
        case 'k': bad |= cli_int("bench", "--head", optarg, 0, 1000000, &c->head); break;
        case 's': bad |= cli_int("bench", "--seed", optarg, 0, 1L << 62, &c->seed); break;
        case 'b': bad |= cli_int("bench", "--batch", optarg, 1, 4096, &c->batch); break;
        case 'r': bad |= cli_int("bench", "--res", optarg, 32, 4096, &c->res); break;
        case 'i': bad |= cli_int("bench", "--iters", optarg, 1, 100000, &c->iters); break;
        case 'w': bad |= cli_int("bench", "--warmup", optarg, 0, 100000, &c->warmup); break;
        case 'j': bad |= cli_threads("bench", optarg); break;
        case 'p': bad |= cli_precision("bench", optarg, &c->prec); break;
        case 'T': c->train = 1; break;
        case 'P': c->profile = 1; break;
        case 'd': c->data = optarg; break;
        case 'L': bad |= cli_int("bench", "--loader-threads", optarg, 1, 256, &c->loader_threads); break;
        case 'h': fputs(bench_usage, stdout); return 1;
        default: bad = 1;
        }
    }
    if (bad || optind != argc || !c->model == !c->arch) {
        if (!bad && !c->model == !c->arch) fprintf(stderr, "bit bench: give --model or --arch\n");
        fputs(bench_usage, stderr);
        return 2;
    }
    return 0;
}

/* The net (inference) or the trainer (--train) of the checkpoint or random weights. */
static int build(const bench_cfg *c, eng_prof *prof, eng_net **net, eng_trainer **tr,
                 eng_arch *a)
{
    char err[512];
    eng_npz *z = NULL;
    eng_net_opts o = {.precision = c->prec, .prof = prof};
    eng_train_opts to = {.precision = c->prec, .micro_batch = (int)c->batch, .h = (int)c->res,
                         .w = (int)c->res, .prof = prof};
    int rc = c->model ? eng_npz_load(c->model, NULL, &z, err, sizeof err)
                      : eng_arch_by_name(c->arch, (int)c->head, a, err, sizeof err);
    if (!rc && c->model) rc = eng_arch_from_npz(z, a, err, sizeof err);
    if (!rc && !c->model) rc = eng_arch_init(a, (uint64_t)c->seed, 1, &z, err, sizeof err);
    if (!rc && c->train) rc = eng_trainer_new(z, a, &to, tr, err, sizeof err);
    else if (!rc) rc = eng_net_new(z, a, &o, net, err, sizeof err);
    eng_npz_free(z);
    return rc ? cli_fail("bench", "%s", err) : 0;
}

/* --data: a dataset and its loader, whose batches replace the random input. */
typedef struct bench_data {
    ds_dataset *d;
    ds_loader *l;
    eng_prof *prof;
} bench_data;

static int data_open(const bench_cfg *c, int classes, eng_prof *prof, bench_data *bd)
{
    char err[512];
    int th, tw;
    ds_opts dso = {0};
    bd->prof = prof;
    if (!c->data) return 0;
    if (ds_open(c->data, &dso, &bd->d, err, sizeof err)) return cli_fail("bench", "%s", err);
    ds_tensor_size(bd->d, &th, &tw);
    if (ds_num_classes(bd->d) > classes)
        return cli_fail("bench", "%s has %d classes, the head %d", c->data, ds_num_classes(bd->d),
                        classes);
    if (th && (th != c->res || tw != c->res))
        return cli_fail("bench", "%s holds %dx%d tensors, not --res %ld", c->data, th, tw, c->res);
    ds_loader_opts lo = {.split = DS_TRAIN, .batch = (int)c->batch, .precrop = (int)c->res,
                         .crop = (int)c->res, .augment = c->train, .shuffle = 1,
                         .replacement = ds_size(bd->d, DS_TRAIN) < c->batch,
                         .threads = (int)c->loader_threads, .seed = (uint64_t)c->seed};
    if (ds_loader_new(bd->d, &lo, &bd->l, err, sizeof err)) return cli_fail("bench", "%s", err);
    return 0;
}

/* One timed unit of work: a forward pass, or a training step with its update. */
static int once(eng_net *net, eng_trainer *tr, bench_data *bd, float *x, int64_t *y, float *out,
                int n, int r, char *err, size_t errlen)
{
    int rc = 0, count;
    if (bd->l) ENG_PROF(bd->prof, ENG_OP_LOADER, rc = ds_loader_next(bd->l, x, y, &count, err, errlen));
    if (rc) return rc;
    if (net) return eng_net_forward(net, x, n, r, r, out, NULL, NULL, err, errlen);
    rc = eng_trainer_step(tr, x, y, NULL, 1, 1, NULL, NULL, err, errlen);
    return rc ? rc : eng_trainer_update(tr, 1e-4, 0.9, 0, err, errlen);
}

/* Per-batch milliseconds by kind of pass; "own" is bitd's code rather than oneDNN's (the head
 * is ours only in training, where it is a plain loop). */
static void add_profile(json_t *o, const eng_prof *p, long iters, double mean_ms, int train)
{
    json_t *pj = json_object();
    double own = 0;
    for (int k = 0; k < ENG_OP_N; k++) {
        double ms = p->ms[k] / (double)iters;
        json_object_set_new(pj, eng_prof_name(k), json_real(ms));
        int dnn = k == ENG_OP_CONV_FWD || k == ENG_OP_CONV_BWD_DATA || k == ENG_OP_CONV_BWD_W ||
                  k == ENG_OP_REORDER || k == ENG_OP_LOADER || (k == ENG_OP_HEAD && !train);
        if (!dnn) own += ms;
    }
    json_object_set_new(o, "profile", pj);
    json_object_set_new(o, "mean_ms", json_real(mean_ms));
    json_object_set_new(o, "own_ms", json_real(own));
    json_object_set_new(o, "own_pct", json_real(100 * own / mean_ms));
}

/* The first call (plan_ms), the warm-up, then the timed iterations into ms[]; the profile
 * covers only the timed ones. */
static int run_iters(const bench_cfg *c, eng_net *net, eng_trainer *tr, bench_data *bd,
                     float *x, int64_t *labels, float *y, eng_prof *prof, double *ms,
                     double *plan_ms, double *total)
{
    char err[512];
    int n = (int)c->batch, r = (int)c->res;
    double t0 = eng_now_ms();
    if (once(net, tr, bd, x, labels, y, n, r, err, sizeof err)) return cli_fail("bench", "%s", err);
    *plan_ms = eng_now_ms() - t0;
    for (long i = 0; i < c->warmup; i++)
        if (once(net, tr, bd, x, labels, y, n, r, err, sizeof err)) return cli_fail("bench", "%s", err);
    memset(prof, 0, sizeof *prof);
    *total = 0;
    for (long i = 0; i < c->iters; i++) {
        t0 = eng_now_ms();
        if (once(net, tr, bd, x, labels, y, n, r, err, sizeof err)) return cli_fail("bench", "%s", err);
        ms[i] = eng_now_ms() - t0;
        *total += ms[i];
    }
    return 0;
}

static void report(const bench_cfg *c, eng_net *net, eng_trainer *tr, const eng_arch *a,
                   double *ms, double plan_ms, double load_ms, double total, const eng_prof *prof)
{
    int n = (int)c->batch, r = (int)c->res;
    qsort(ms, (size_t)c->iters, sizeof *ms, cmp_double);
    double med = c->iters % 2 ? ms[c->iters / 2] : (ms[c->iters / 2 - 1] + ms[c->iters / 2]) / 2;
    /* training: forward + backward-data + backward-weights, about three forward passes */
    double flops = eng_arch_flops(a, r, r) * n * (c->train ? 3 : 1);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    json_t *o = json_pack("{s:s, s:s, s:i, s:i, s:i, s:i, s:s, s:s, s:i, s:f, s:f, s:f, s:f, s:f, "
                          "s:f, s:f, s:f}",
                          "mode", c->train ? "train" : "inference",
                          "architecture", eng_arch_name(a), "head", a->head, "batch", n, "res", r,
                          "threads", omp_get_max_threads(), "precision",
                          eng_precision_name(net ? eng_net_precision(net) : eng_trainer_precision(tr)),
                          "isa", eng_cpu_isa(), "iters", (int)c->iters,
                          "ms_per_batch", med, "ms_min", ms[0], "ms_max", ms[c->iters - 1],
                          "images_per_sec", n / (med / 1e3), "gflops", flops / (med / 1e3) / 1e9,
                          "plan_ms", plan_ms, "load_ms", load_ms, "peak_rss_mb",
                          ru.ru_maxrss / 1024.0);
    if (c->profile) add_profile(o, prof, c->iters, total / c->iters, c->train);
    char *s = json_dumps(o, JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6));
    puts(s);
    free(s);
    json_decref(o);
}

int cmd_bench(int argc, char **argv)
{
    bench_cfg c;
    int prc = parse(argc, argv, &c);
    if (prc) return prc == 1 ? 0 : prc;
    eng_net *net = NULL;
    eng_trainer *tr = NULL;
    eng_arch a;
    eng_prof prof = {0};
    bench_data bd = {0};
    double t0 = eng_now_ms(), plan_ms = 0, total = 0;
    if (build(&c, c.profile ? &prof : NULL, &net, &tr, &a)) return 1;
    double load_ms = eng_now_ms() - t0;
    int n = (int)c.batch, r = (int)c.res, k = net ? eng_net_out_dim(net) : a.head, rc = 1;
    size_t in_n = (size_t)n * 3 * r * r;
    float *x = malloc(sizeof(float) * in_n), *y = malloc(sizeof(float) * (size_t)n * k);
    int64_t *labels = calloc((size_t)n, sizeof *labels);
    double *ms = malloc(sizeof(double) * (size_t)c.iters);
    if (!x || !y || !ms || !labels) { cli_fail("bench", "out of memory"); goto done; }
    if (data_open(&c, k, c.profile ? &prof : NULL, &bd)) goto done;
    eng_rng rng;
    eng_rng_seed(&rng, (uint64_t)c.seed + 1);
    for (size_t i = 0; i < in_n; i++) x[i] = (float)(2 * eng_rng_uniform(&rng) - 1);
    for (int i = 0; i < n; i++) labels[i] = (int64_t)eng_rng_below(&rng, (uint64_t)k);
    if (run_iters(&c, net, tr, &bd, x, labels, y, &prof, ms, &plan_ms, &total)) goto done;
    report(&c, net, tr, &a, ms, plan_ms, load_ms, total, &prof);
    rc = 0;
done:
    ds_loader_free(bd.l);
    ds_free(bd.d);
    free(x);
    free(y);
    free(ms);
    free(labels);
    eng_net_free(net);
    eng_trainer_free(tr);
    return rc;
}
