/* bit finetune and bit eval: fine-tuning runs and their evaluation from the command line. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "server/cmd/cli_live.h"
#include "server/svc/budget.h"
#include "finetune.h"
#include "modelmeta.h"
#include "rundir.h"

static const char finetune_usage[] =
    "usage: bit finetune --model BASE.npz --data DATA --out RUN_DIR [options]\n"
    "       bit finetune --resume RUN_DIR [options]\n\n"
    "Fine-tunes a BiT checkpoint on a labelled dataset with the BiT-HyperRule: a new zero head\n"
    "with one output per class, SGD momentum 0.9, no weight decay. DATA is a directory of\n"
    "class folders (or train/ and val/), a tar/tar.gz/tar.xz/zip archive of one, or an .npz of\n"
    "tensors (x, y, optional x_val, y_val, classes). Every rule value can be overridden (the\n"
    "same names, with underscores, are a job's \"hyperparameters\" over HTTP):\n\n"
    "  --batch N            images per step (rule: 512)\n"
    "  --batch-split N      micro-batches per step (memory scales with batch / N); by default\n"
    "                       the batch is split until a micro-batch fits --memory-budget-mb\n"
    "  --memory-budget-mb M training memory a micro-batch may take (default: half of RAM or\n"
    "                       of the cgroup limit, as bit serve; 0: no limit)\n"
    "  --base-lr X          base learning rate (rule: 0.003)\n"
    "  --schedule a,b,...   warm-up end, decay steps, total steps\n"
    "  --steps N            scale the rule's schedule to N steps\n"
    "  --res PRECROP,CROP   resize then random-crop sizes (rule: 160,128 or 512,480);\n"
    "                       also --resolution\n"
    "  --pretrain-res R     the base model was pre-trained at R px, not 224: the rule's sizes\n"
    "                       scale by R / 224 (crop at least 32; R = 32 gives 40,32 or 74,69);\n"
    "                       default: the model's NAME.json pretrain_resolution, else 224\n"
    "  --mixup ALPHA        MixUp Beta(alpha, alpha); 0 disables (rule: 0 or 0.1)\n"
    "  --examples-per-class K   few-shot: K training images per class\n"
    "  --seed S             data order, augmentation, MixUp, hold-out (default 0)\n"
    "  --eval-every N       evaluate every N steps (and always at the end)\n"
    "  --save-every N       checkpoint every N steps (default: 5 % of the run)\n"
    "  --mode M             full (default: the HyperRule) or linear (backbone frozen, features\n"
    "                       once, a softmax regression head with its L2 chosen on val)\n"
    "  --select S           last (default) or best: the run ends with its best val top-1\n"
    "  --budget-minutes N   finish within N minutes on this machine: the rule's plan, else\n"
    "                       fewer steps, a lower resolution, or linear (measured first)\n"
    "  --no-augment         evaluation transform for training images\n"
    "  --no-shuffle         stored order, batch after batch\n"
    "  --threads N          compute threads (0 = every core)\n"
    "  --loader-threads N   image decoding threads (default 1)\n"
    "  --precision P        " CLI_PRECISION_HELP "\n"
    "  --weight-decay X     on the conv kernels (rule: 0)\n"
    "  --json               progress and events as JSON lines on stdout instead of a live\n"
    "                       line and messages on stderr\n\n"
    "The run prints what it resolved first, as options. The run directory gets model.npz\n"
    "(official BiT schema; the class names and resolution ride along under bitd/ keys that\n"
    "BiT loaders ignore), labels.txt, optimizer.npz, state.json, metrics.json and\n"
    "checkpoints/; Ctrl-C checkpoints and stops.\n";

static const char pretrain_usage[] =
    "usage: bit pretrain (--arch NAME | --units A,B,C,D [--width W]) --data DATA --out RUN_DIR\n"
    "                    [options]\n"
    "       bit pretrain --resume RUN_DIR\n\n"
    "Trains a BiT architecture from random initialisation (He-normal kernels, GroupNorm 1/0,\n"
    "zero head) with the paper's upstream recipe: SGD momentum 0.9, weight decay 1e-4 on the\n"
    "conv kernels, lr 0.03 * batch / 256 with linear warm-up, divided by 10 at 30, 60 and 80\n"
    "of 90 epochs. The result is a checkpoint `bit finetune` accepts as a base model.\n\n"
    "  --arch NAME          R50x1, R50x3, R101x1, R101x3, R152x2, R152x4\n"
    "  --units A,B,C,D      units per block of a custom architecture (with --width, default 64)\n"
    "  --epochs E           length (default 90; the decay epochs scale with it)\n"
    "  --warmup-steps N     linear warm-up (default 500, at most a tenth of the run)\n"
    "  --init-only          write the random initialisation as RUN_DIR/model.npz (no head)\n"
    "                       and stop: the from-scratch baseline for bit finetune\n"
    "  --batch N            images per step (default 512), also --batch-split, --base-lr,\n"
    "                       --res, --mixup, --weight-decay, --seed, --eval-every, --save-every,\n"
    "                       --threads, --loader-threads, --precision, --json as for finetune\n";

typedef struct cli_run {
    int json;
    const char *sub;
    cli_live live; /* stderr */
    volatile sig_atomic_t *stop;
} cli_run;

/* The one global: a signal handler can reach nothing else. */
static volatile sig_atomic_t g_stop;

static void on_signal(int sig) { (void)sig, g_stop = 1; }

static void on_progress(void *ud, const ft_progress *p)
{
    cli_run *c = ud;
    if (c->json) {
        printf("{\"type\":\"progress\",\"step\":%lld,\"total\":%lld,\"lr\":%g,\"loss\":%.6f,"
               "\"images_per_sec\":%.2f,\"eta_s\":%.0f}\n",
               (long long)p->step, (long long)p->total, p->lr, p->loss, p->images_per_sec, p->eta_s);
        fflush(stdout);
    } else {
        cli_live_progress(&c->live, p->step, p->total, p->loss, p->lr, p->images_per_sec, p->eta_s);
    }
}

/* --json: every event a JSON line on stdout; else a line for people on stderr, above the
 * live progress line (the start event says what the run resolved, in option form). */
static void on_event(void *ud, const json_t *ev)
{
    cli_run *c = ud;
    char line[1024];
    if (c->json) {
        char *s = json_dumps(ev, JSON_COMPACT);
        puts(s);
        free(s);
        fflush(stdout);
    } else if (!cli_event_text(ev, line, sizeof line)) {
        cli_live_note(&c->live, "bit %s: %s", c->sub, line);
    }
}

static int on_stop(void *ud) { return *((cli_run *)ud)->stop ? 2 : 0; }

static int parse_schedule(const char *s, ft_params *p)
{
    char *copy = strdup(s), *save = NULL;
    p->nsched = 0;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        long v;
        if (p->nsched == ENG_MAX_SCHEDULE || cli_int("finetune", "--schedule", tok, 1, 100000000, &v)) {
            free(copy);
            return -1;
        }
        p->schedule[p->nsched++] = v;
    }
    free(copy);
    return p->nsched >= 2 ? 0 : (cli_fail("finetune", "--schedule needs at least 2 steps"), -1);
}

static int parse_res(const char *s, ft_params *p)
{
    int a, b, n = 0;
    if (sscanf(s, "%d,%d%n", &a, &b, &n) != 2 || s[n] || a < 32 || b < 32 || b > a || a > 4096)
        return cli_fail("finetune", "--res is PRECROP,CROP with 32 <= CROP <= PRECROP <= 4096"), -1;
    p->precrop = a, p->crop = b;
    return 0;
}

static int parse_double(const char *opt, const char *s, double lo, double hi, double *out)
{
    char *end;
    double v = strtod(s, &end);
    if (!*s || *end || !(v >= lo && v <= hi))
        return cli_fail("finetune", "%s needs a number from %g to %g, not '%s'", opt, lo, hi, s), -1;
    *out = v;
    return 0;
}

typedef struct ft_cli {
    const char *model, *data, *out, *resume;
    char model_buf[4200]; /* --model given by a base model's name */
    int json, pretrain, have_arch, init_only;
    eng_arch arch;
    ft_params p;
} ft_cli;

static int parse_units(const char *s, eng_arch *a)
{
    int n = 0;
    if (sscanf(s, "%d,%d,%d,%d%n", &a->units[0], &a->units[1], &a->units[2], &a->units[3], &n) != 4 ||
        s[n])
        return cli_fail("pretrain", "--units is four counts, e.g. 3,4,6,3"), -1;
    for (int i = 0; i < 4; i++)
        if (a->units[i] < 1 || a->units[i] > 99)
            return cli_fail("pretrain", "every block needs 1 to 99 units"), -1;
    return 0;
}

/* The options of bit finetune and, with pretrain set, of bit pretrain. */
static int parse_finetune(int argc, char **argv, ft_cli *c, int pretrain)
{
    static const struct option opts[] = {
        {"model", 1, 0, 'm'}, {"data", 1, 0, 'd'}, {"out", 1, 0, 'o'}, {"resume", 1, 0, 'R'},
        {"batch", 1, 0, 'b'}, {"batch-split", 1, 0, 'B'}, {"base-lr", 1, 0, 'l'},
        {"schedule", 1, 0, 'S'}, {"steps", 1, 0, 's'}, {"res", 1, 0, 'r'}, {"resolution", 1, 0, 'r'},
        {"mixup", 1, 0, 'x'},
        {"examples-per-class", 1, 0, 'k'}, {"seed", 1, 0, 'z'}, {"eval-every", 1, 0, 'e'},
        {"save-every", 1, 0, 'v'}, {"no-augment", 0, 0, 'A'}, {"no-shuffle", 0, 0, 'U'},
        {"threads", 1, 0, 'j'}, {"loader-threads", 1, 0, 'L'}, {"precision", 1, 0, 'p'},
        {"json", 0, 0, 'J'}, {"help", 0, 0, 'h'}, {"weight-decay", 1, 0, 'W'},
        {"arch", 1, 0, 'a'}, {"units", 1, 0, 'u'}, {"width", 1, 0, 'w'}, {"epochs", 1, 0, 'E'},
        {"warmup-steps", 1, 0, 'M'}, {"mode", 1, 0, 'Q'}, {"select", 1, 0, 'T'},
        {"budget-minutes", 1, 0, 'G'}, {"pretrain-res", 1, 0, 'P'}, {"init-only", 0, 0, 'I'},
        {"memory-budget-mb", 1, 0, 'Y'}, {0, 0, 0, 0}};
    const char *sub = pretrain ? "pretrain" : "finetune";
    memset(c, 0, sizeof *c);
    c->p.precision = ENG_PREC_AUTO;
    c->p.mixup = -1;
    c->p.weight_decay = -1;
    c->p.memory_bytes = bud_default_total();
    c->pretrain = pretrain;
    c->arch.width = 64;
    optind = 1;
    if (cli_threads("finetune", "0") < 0) return 2;
    int o, bad = 0;
    long v;
    while ((o = cli_getopt(sub, argc, argv, opts)) != -1) {
        switch (o) {
        case 'm': c->model = cli_model_ref(optarg, c->model_buf, sizeof c->model_buf); break;
        case 'd': c->data = optarg; break;
        case 'o': c->out = optarg; break;
        case 'R': c->resume = optarg; break;
        case 'b': bad |= cli_int("finetune", "--batch", optarg, 1, 65536, &v); c->p.batch = (int)v; break;
        case 'B': bad |= cli_int("finetune", "--batch-split", optarg, 1, 65536, &v); c->p.batch_split = (int)v; break;
        case 'l': bad |= parse_double("--base-lr", optarg, 1e-9, 10, &c->p.base_lr); break;
        case 'S': bad |= parse_schedule(optarg, &c->p); break;
        case 's': bad |= cli_int("finetune", "--steps", optarg, 1, 100000000, &v); c->p.steps = v; break;
        case 'r': bad |= parse_res(optarg, &c->p); break;
        case 'x': bad |= parse_double("--mixup", optarg, 0, 100, &c->p.mixup); break;
        case 'k': bad |= cli_int("finetune", "--examples-per-class", optarg, 1, 1000000, &v); c->p.examples_per_class = (int)v; break;
        case 'z': bad |= cli_int("finetune", "--seed", optarg, 0, 1L << 62, &v); c->p.seed = (uint64_t)v; break;
        case 'e': bad |= cli_int("finetune", "--eval-every", optarg, 1, 100000000, &v); c->p.eval_every = v; break;
        case 'v': bad |= cli_int("finetune", "--save-every", optarg, 1, 100000000, &v); c->p.save_every = v; break;
        case 'A': c->p.no_augment = 1; break;
        case 'U': c->p.no_shuffle = 1; break;
        case 'j': bad |= cli_threads("finetune", optarg); break;
        case 'L': bad |= cli_int("finetune", "--loader-threads", optarg, 1, 256, &v); c->p.loader_threads = (int)v; break;
        case 'p': bad |= cli_precision("finetune", optarg, &c->p.precision); break;
        case 'J': c->json = 1; break;
        case 'Q':
            if (!strcmp(optarg, "full") || !strcmp(optarg, "linear")) c->p.mode = optarg[0] == 'l', c->p.set_mode = 1;
            else bad = 1, cli_fail(sub, "--mode is full or linear, not '%s'", optarg);
            break;
        case 'T':
            if (!strcmp(optarg, "last") || !strcmp(optarg, "best")) c->p.select = optarg[0] == 'b', c->p.set_select = 1;
            else bad = 1, cli_fail(sub, "--select is last or best, not '%s'", optarg);
            break;
        case 'Y': bad |= cli_int(sub, "--memory-budget-mb", optarg, 0, 1 << 30, &v); c->p.memory_bytes = (uint64_t)v << 20; break;
        case 'G': bad |= parse_double("--budget-minutes", optarg, 0.1, 1e6, &c->p.budget_s); c->p.budget_s *= 60; break;
        case 'W': bad |= parse_double("--weight-decay", optarg, 0, 1, &c->p.weight_decay); break;
        case 'E': bad |= parse_double("--epochs", optarg, 0.001, 100000, &c->p.epochs); break;
        case 'M': bad |= cli_int(sub, "--warmup-steps", optarg, 1, 100000000, &v); c->p.warmup_steps = v; break;
        case 'P': bad |= cli_int(sub, "--pretrain-res", optarg, ENG_MIN_RES, 4096, &v); c->p.pretrain_res = (int)v; break;
        case 'I':
            if (!pretrain) bad = 1, cli_fail(sub, "--init-only is an option of bit pretrain");
            c->init_only = pretrain;
            break;
        case 'a': {
            char e[256];
            if (eng_arch_by_name(optarg, 0, &c->arch, e, sizeof e)) bad = 1, cli_fail(sub, "%s", e);
            c->have_arch = 1;
            break;
        }
        case 'u': bad |= parse_units(optarg, &c->arch); c->have_arch = 1; break;
        case 'w': bad |= cli_int(sub, "--width", optarg, 32, 4096, &v); c->arch.width = (int)v;
            if (v % 32) bad = 1, cli_fail(sub, "--width must be a multiple of 32");
            break;
        case 'h': fputs(pretrain ? pretrain_usage : finetune_usage, stdout); return 1;
        default: bad = 1;
        }
    }
    if (pretrain && c->have_arch) c->p.init_arch = &c->arch;
    int need = pretrain ? (c->have_arch && (c->data || c->init_only) && c->out)
                        : (c->model && c->data && c->out);
    if (!bad && optind == argc && (c->resume ? !c->out : need)) return 0;
    if (!bad && !c->resume && optind == argc)
        cli_fail(sub, "%s, --data and --out are required (or --resume RUN_DIR)",
                 pretrain ? "--arch (or --units)" : "--model");
    fputs(pretrain ? pretrain_usage : finetune_usage, stderr);
    return 2;
}

/* The weights a pre-training run would start from, for a from-scratch baseline. */
static int init_only(const ft_cli *c)
{
    char err[1024], path[4200];
    eng_npz *z = NULL;
    eng_arch a = c->arch;
    a.head = 0;
    if (ft_rundir_path(c->out, FT_FILE_MODEL, path, sizeof path))
        return cli_fail("pretrain", "--out path too long");
    int rc = mkdir(c->out, 0755) ? eng_errf(err, sizeof err, ENG_EIO, "%s: %s", c->out,
                                            strerror(errno)) : 0;
    if (!rc) rc = eng_arch_init(&a, c->p.seed, 0, &z, err, sizeof err);
    if (!rc) rc = eng_npz_save(path, z, 0, err, sizeof err);
    eng_npz_free(z);
    if (rc) return cli_fail("pretrain", "%s", err);
    printf("{\"type\":\"done\",\"model\":\"%s\",\"parameters\":%lld}\n", path,
           (long long)eng_arch_param_count(&a));
    return 0;
}

static int run_cli(int argc, char **argv, int pretrain)
{
    ft_cli c;
    int prc = parse_finetune(argc, argv, &c, pretrain);
    if (prc) return prc == 1 ? 0 : prc;
    if (c.init_only) return init_only(&c);
    cli_run cr = {.json = c.json, .sub = pretrain ? "pretrain" : "finetune", .stop = &g_stop};
    cli_live_init(&cr.live, stderr);
    ft_hooks hooks = {on_progress, on_event, on_stop, &cr, NULL};
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    char err[1024];
    const char *dir = c.resume ? c.resume : c.out;
    if (!pretrain && !c.resume && !c.p.pretrain_res) c.p.pretrain_res = cli_beside_int(c.model, "pretrain_resolution");
    int rc = ft_run(c.model, c.data, dir, &c.p, NULL, c.resume != NULL, &hooks, err, sizeof err);
    cli_live_end(&cr.live);
    const char *sub = pretrain ? "pretrain" : "finetune";
    if (rc == FT_ESTOPPED) {
        fprintf(stderr, "bit %s: %s; checkpoint saved, continue with --resume %s\n", sub, err, dir);
        return 130;
    }
    if (rc) return cli_fail(sub, "%s", err);
    char metrics[4200];
    if (ft_rundir_path(dir, FT_FILE_METRICS, metrics, sizeof metrics) == 0) {
        json_t *m = json_load_file(metrics, 0, NULL);
        json_t *val = json_object_get(m, "val");
        json_t *sum = json_pack("{s:s, s:s, s:O, s:O, s:O}", "type", "done", "run", dir, "val_top1",
                                json_object_get(val, "top1") ? json_object_get(val, "top1") : json_null(),
                                "val_top5", json_object_get(val, "top5") ? json_object_get(val, "top5") : json_null(),
                                "val_loss", json_object_get(val, "loss") ? json_object_get(val, "loss") : json_null());
        char *s = json_dumps(sum, JSON_COMPACT);
        puts(s);
        free(s);
        json_decref(sum);
        json_decref(m);
    }
    return 0;
}

int cmd_finetune(int argc, char **argv) { return run_cli(argc, argv, 0); }
int cmd_pretrain(int argc, char **argv) { return run_cli(argc, argv, 1); }

static const char eval_usage[] =
    "usage: bit eval --model RUN_DIR|MODEL.npz --data DATA [options]\n\n"
    "Evaluates a model on a dataset's validation split (or --split train) and prints JSON:\n"
    "top1, top5, loss, per-class accuracy and (up to 1000 classes) the confusion matrix.\n"
    "With a run directory, its resolution and seed (hence the same hold-out) are used.\n\n"
    "  --split S       val (default) or train\n"
    "  --res CROP      evaluation size for a bare MODEL.npz (default: the one it carries,\n"
    "                  else 128); also --resolution\n"
    "  --seed S        hold-out seed for a bare MODEL.npz (default 0)\n"
    "  --batch N       images per forward pass (default 32)\n"
    "  --threads N     compute threads (0 = every core)\n"
    "  --precision P   " CLI_PRECISION_HELP "\n";

/* For a run directory: its model, crop and seed. */
static int run_settings(const char *dir, char *model, size_t len, long *crop, long *seed)
{
    struct stat sb;
    ft_run_info info;
    char err[512];
    if (stat(dir, &sb) || !S_ISDIR(sb.st_mode)) return 0;
    if (ft_rundir_path(dir, FT_FILE_MODEL, model, len)) return -1;
    if (ft_rundir_info(dir, &info, err, sizeof err)) return cli_fail("eval", "%s", err), -1;
    *crop = info.crop;
    *seed = (long)info.seed;
    ft_run_info_clear(&info);
    return 0;
}

int cmd_eval(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", 1, 0, 'm'}, {"data", 1, 0, 'd'}, {"split", 1, 0, 's'}, {"res", 1, 0, 'r'},
        {"resolution", 1, 0, 'r'},
        {"seed", 1, 0, 'z'}, {"batch", 1, 0, 'b'}, {"threads", 1, 0, 'j'}, {"help", 0, 0, 'h'},
        {"precision", 1, 0, 'p'}, {0, 0, 0, 0}};
    const char *model = NULL, *data = NULL;
    char model_buf[4200];
    long crop = 128, seed = 0, batch = 32;
    int o, bad = 0, split = DS_VAL, have_res = 0;
    eng_precision prec = ENG_PREC_AUTO;
    optind = 1;
    if (cli_threads("eval", "0") < 0) return 2;
    while ((o = cli_getopt("eval", argc, argv, opts)) != -1) {
        switch (o) {
        case 'm': model = cli_model_ref(optarg, model_buf, sizeof model_buf); break;
        case 'd': data = optarg; break;
        case 's':
            if (!strcmp(optarg, "train")) split = DS_TRAIN;
            else if (strcmp(optarg, "val")) bad = 1, cli_fail("eval", "--split is val or train");
            break;
        case 'r': bad |= cli_int("eval", "--res", optarg, 32, 4096, &crop); have_res = 1; break;
        case 'z': bad |= cli_int("eval", "--seed", optarg, 0, 1L << 62, &seed); break;
        case 'b': bad |= cli_int("eval", "--batch", optarg, 1, 4096, &batch); break;
        case 'j': bad |= cli_threads("eval", optarg); break;
        case 'p': bad |= cli_precision("eval", optarg, &prec); break;
        case 'h': fputs(eval_usage, stdout); return 0;
        default: bad = 1;
        }
    }
    if (bad || !model || !data || optind != argc) {
        fputs(eval_usage, stderr);
        return 2;
    }
    char path[4200], err[1024];
    snprintf(path, sizeof path, "%s", model);
    if (run_settings(model, path, sizeof path, &crop, &seed)) return 1;
    eng_meta meta;
    if (!have_res && !eng_meta_read(path, &meta, NULL, 0)) { /* the size the model carries */
        if (meta.resolution >= 32) crop = meta.resolution;
        eng_meta_clear(&meta);
    }
    if (!have_res && cli_beside_int(path, "resolution")) /* a base model's NAME.json, as served */
        crop = cli_beside_int(path, "resolution");
    eng_net *net = NULL;
    ds_dataset *d = NULL;
    json_t *m = NULL;
    ds_opts dso = {.seed = (uint64_t)seed};
    int rc = 1;
    if (cli_load_net("eval", path, prec, &net)) goto done;
    if (ds_open(data, &dso, &d, err, sizeof err) ||
        ft_evaluate(net, d, split, (int)crop, (int)batch, &m, err, sizeof err)) {
        cli_fail("eval", "%s", err);
        goto done;
    }
    char *s = json_dumps(m, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    puts(s);
    free(s);
    rc = 0;
done:
    json_decref(m);
    ds_free(d);
    eng_net_free(net);
    return rc;
}
