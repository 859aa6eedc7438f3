/* bit predict and bit bench: the forward pass from the command line. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "labels.h"
#include "modelmeta.h"
#include "net.h"
#include "preproc.h"
#include "rundir.h"

int cli_precision(const char *sub, const char *s, eng_precision *p)
{
    if (!strcmp(s, "f32") || !strcmp(s, "fp32")) *p = ENG_PREC_F32;
    else if (!strcmp(s, "bf16")) *p = ENG_PREC_BF16;
    else if (!strcmp(s, "auto")) *p = ENG_PREC_AUTO;
    else return cli_fail(sub, "--precision is auto, f32 or bf16, not '%s'", s), -1;
    return 0;
}

int cli_load_net(const char *sub, const char *path, eng_precision prec, eng_net **net)
{
    char err[512];
    eng_net_opts o = {.precision = prec};
    int rc = eng_net_load(path, &o, net, NULL, err, sizeof err);
    if (rc) cli_fail(sub, "%s", err);
    return rc ? -1 : 0;
}

static const char predict_usage[] =
    "usage: bit predict --model MODEL [--labels labels.txt] [--top-k 5] [--res R] IMAGE...\n"
    "       bit predict --model MODEL.npz --tensor IN.npy --out OUT.npy\n\n"
    "Classifies JPEG and PNG images with the evaluation transform (resize to R x R, normalise)\n"
    "and prints one JSON line per image: file and predictions [{label, index, score}] with\n"
    "softmax scores, best first. MODEL is an official-schema .npz (labels from --labels,\n"
    "MODEL.labels.txt beside it, or the class names a fine-tuned model carries inside; its\n"
    "resolution from --res, else the one it carries, else 128) or a fine-tuning run directory\n"
    "(its model, labels and resolution). With --tensor, runs a float32 NCHW batch already normalised to [-1, 1] and\n"
    "writes the float32 logits [N, classes] (features when there is no head) as .npy.\n\n"
    "  --top-k K          predictions per image (default 5)\n"
    "  --res R            input size (default: the model's, else 128); also --resolution\n"
    "  --threads N        OpenMP threads (0 = every core; default 0)\n"
    "  --precision P      " CLI_PRECISION_HELP "\n";

typedef struct predict_cfg {
    const char *model, *tensor, *out, *labels;
    long topk, res;
    eng_precision prec;
    char model_path[4200], labels_path[4200], model_buf[4200]; /* model_buf: --model by name */
    eng_labels *inside; /* the class names the .npz carries (modelmeta.h), or NULL */
} predict_cfg;

/* A run directory stands for its model.npz, labels.txt and resolution; a bare .npz may have
 * NAME.labels.txt beside it. */
static void resolve_model(predict_cfg *c)
{
    struct stat st;
    snprintf(c->model_path, sizeof c->model_path, "%s", c->model);
    if (stat(c->model, &st) == 0 && S_ISDIR(st.st_mode)) {
        ft_run_info info;
        ft_rundir_path(c->model, FT_FILE_MODEL, c->model_path, sizeof c->model_path);
        if (!c->labels && !ft_rundir_path(c->model, FT_FILE_LABELS, c->labels_path, sizeof c->labels_path))
            c->labels = c->labels_path;
        if (!c->res && !ft_rundir_info(c->model, &info, NULL, 0)) c->res = info.crop;
        ft_run_info_clear(&info);
    } else {
        size_t n = strlen(c->model);
        eng_meta m;
        if (!c->labels && n > 4 && n < 4000 && !strcmp(c->model + n - 4, ".npz")) {
            snprintf(c->labels_path, sizeof c->labels_path, "%.*s.labels.txt", (int)(n - 4), c->model);
            if (access(c->labels_path, R_OK) == 0) c->labels = c->labels_path;
        }
        if (!eng_meta_read(c->model, &m, NULL, 0)) { /* what a fine-tuned model carries */
            if (!c->res) c->res = m.resolution;
            if (!c->labels) c->inside = m.labels, m.labels = NULL;
            eng_meta_clear(&m);
        }
    }
    if (c->res < 32) c->res = cli_beside_int(c->model, "resolution"); /* a base's NAME.json */
    if (c->res < 32) c->res = 128;
}

static int parse_predict(int argc, char **argv, predict_cfg *c)
{
    static const struct option opts[] = {
        {"model", 1, 0, 'm'}, {"tensor", 1, 0, 't'}, {"out", 1, 0, 'o'}, {"labels", 1, 0, 'l'},
        {"top-k", 1, 0, 'k'}, {"res", 1, 0, 'r'}, {"resolution", 1, 0, 'r'}, {"threads", 1, 0, 'j'},
        {"precision", 1, 0, 'p'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    memset(c, 0, sizeof *c);
    c->topk = 5;
    c->prec = ENG_PREC_AUTO;
    int o, bad = 0;
    optind = 1;
    if (cli_threads("predict", "0") < 0) return 2;
    while ((o = cli_getopt("predict", argc, argv, opts)) != -1) {
        switch (o) {
        case 'm': c->model = cli_model_ref(optarg, c->model_buf, sizeof c->model_buf); break;
        case 't': c->tensor = optarg; break;
        case 'o': c->out = optarg; break;
        case 'l': c->labels = optarg; break;
        case 'k': bad |= cli_int("predict", "--top-k", optarg, 1, 1000, &c->topk); break;
        case 'r': bad |= cli_int("predict", "--res", optarg, 32, 4096, &c->res); break;
        case 'j': bad |= cli_threads("predict", optarg); break;
        case 'p': bad |= cli_precision("predict", optarg, &c->prec); break;
        case 'h': fputs(predict_usage, stdout); return 1;
        default: bad = 1;
        }
    }
    int tensor_mode = c->tensor || c->out;
    if (bad || !c->model || (tensor_mode ? (!c->tensor || !c->out || optind != argc) : optind == argc)) {
        fputs(predict_usage, stderr);
        return 2;
    }
    resolve_model(c);
    return 0;
}

static int predict_tensor(const predict_cfg *c, eng_net *net)
{
    char err[512];
    eng_tensor *x = NULL, *y = NULL;
    int rc = 1;
    if (eng_npy_load(c->tensor, &x, err, sizeof err)) {
        cli_fail("predict", "%s", err);
        goto done;
    }
    if (x->dtype != ENG_F32 || x->ndim != 4 || x->shape[1] != 3 || x->shape[0] > 65536 ||
        x->shape[2] > 8192 || x->shape[3] > 8192) {
        cli_fail("predict", "%s: expected a float32 [N, 3, H, W] tensor", c->tensor);
        goto done;
    }
    int64_t shape[2] = {x->shape[0], eng_net_out_dim(net)};
    if (!(y = eng_tensor_new(ENG_F32, 0, 2, shape))) {
        cli_fail("predict", "out of memory");
        goto done;
    }
    if (eng_net_forward(net, x->data, (int)x->shape[0], (int)x->shape[2], (int)x->shape[3], y->data,
                        NULL, NULL, err, sizeof err) ||
        eng_npy_save(c->out, y, err, sizeof err)) {
        cli_fail("predict", "%s", err);
        goto done;
    }
    rc = 0;
done:
    eng_tensor_free(x);
    eng_tensor_free(y);
    return rc;
}

static void print_prediction(const char *file, const float *logits, int k, int topk,
                             const eng_labels *labels)
{
    int idx[1000];
    float prob[1000];
    int n = eng_topk(logits, k, topk, idx, prob);
    json_t *preds = json_array();
    for (int i = 0; i < n; i++) {
        const char *name = eng_labels_get(labels, idx[i]);
        char num[16];
        snprintf(num, sizeof num, "%d", idx[i]);
        json_array_append_new(preds, json_pack("{s:s, s:i, s:f}", "label", name ? name : num,
                                               "index", idx[i], "score", (double)prob[i]));
    }
    json_t *o = json_pack("{s:s, s:o}", "file", file, "predictions", preds);
    char *s = json_dumps(o, JSON_COMPACT);
    puts(s);
    free(s);
    json_decref(o);
}

#define PREDICT_CHUNK 16

/* Images in chunks: decode and preprocess, one forward pass, one line per image. An image
 * that cannot be read gets a line with its error; the exit code is then 1. */
static int predict_images(const predict_cfg *c, eng_net *net, const eng_labels *labels,
                          char **files, int nfiles)
{
    int r = (int)c->res, k = eng_net_out_dim(net), failed = 0;
    size_t per = (size_t)3 * r * r;
    float *x = eng_alloc(sizeof(float) * per * PREDICT_CHUNK);
    float *y = malloc(sizeof(float) * (size_t)k * PREDICT_CHUNK);
    if (!x || !y) {
        eng_free(x), free(y);
        return cli_fail("predict", "out of memory");
    }
    for (int first = 0; first < nfiles; first += PREDICT_CHUNK) {
        int n = 0, slot[PREDICT_CHUNK];
        char err[512];
        for (int i = first; i < nfiles && i < first + PREDICT_CHUNK; i++) {
            img_rgb8 *img = NULL;
            if (img_load_file(files[i], NULL, r, &img, err, sizeof err) ||
                pre_eval(img, r, x + per * (size_t)n, err, sizeof err)) {
                json_t *o = json_pack("{s:s, s:s}", "file", files[i], "error", err);
                char *line = json_dumps(o, JSON_COMPACT);
                puts(line);
                free(line);
                json_decref(o);
                failed = 1;
            } else {
                slot[n++] = i;
            }
            img_rgb8_free(img);
        }
        if (!n) continue;
        if (eng_net_forward(net, x, n, r, r, y, NULL, NULL, err, sizeof err)) {
            failed = 1;
            cli_fail("predict", "%s", err);
            break;
        }
        for (int j = 0; j < n; j++) print_prediction(files[slot[j]], y + (size_t)j * k, k, (int)c->topk, labels);
    }
    eng_free(x);
    free(y);
    return failed;
}

int cmd_predict(int argc, char **argv)
{
    predict_cfg c;
    int prc = parse_predict(argc, argv, &c);
    if (prc) return prc == 1 ? 0 : prc;
    eng_net *net = NULL;
    eng_labels *labels = NULL;
    char err[512];
    if (cli_load_net("predict", c.model_path, c.prec, &net)) return eng_labels_free(c.inside), 1;
    int rc;
    if (c.tensor) {
        rc = predict_tensor(&c, net);
    } else if (c.labels && eng_labels_load(c.labels, &labels, err, sizeof err)) {
        rc = cli_fail("predict", "%s", err);
    } else {
        if (!labels) labels = c.inside, c.inside = NULL;
        if (labels && labels->n != eng_net_out_dim(net))
            fprintf(stderr, "bit predict: warning: %s has %d labels for %d outputs\n",
                    c.labels ? c.labels : c.model, labels->n, eng_net_out_dim(net));
        rc = predict_images(&c, net, labels, argv + optind, argc - optind);
    }
    eng_labels_free(labels);
    eng_labels_free(c.inside);
    eng_net_free(net);
    return rc;
}
