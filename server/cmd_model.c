/* bit predict and bit bench: the forward pass from the command line. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "net.h"

int cli_precision(const char *sub, const char *s, eng_precision *p)
{
    if (!strcmp(s, "f32") || !strcmp(s, "fp32")) *p = ENG_PREC_F32;
    else if (!strcmp(s, "bf16")) *p = ENG_PREC_BF16;
    else return cli_fail(sub, "--precision is f32 or bf16, not '%s'", s), -1;
    return 0;
}

int cli_load_net(const char *sub, const char *path, eng_precision prec, eng_net **net)
{
    char err[512];
    eng_npz *z = NULL;
    eng_arch a;
    eng_net_opts o = {.precision = prec};
    int rc = eng_npz_load(path, NULL, &z, err, sizeof err);
    if (!rc) rc = eng_arch_from_npz(z, &a, err, sizeof err);
    if (!rc) rc = eng_net_new(z, &a, &o, net, err, sizeof err);
    eng_npz_free(z);
    if (rc) cli_fail(sub, "%s", err);
    return rc ? -1 : 0;
}

static const char predict_usage[] =
    "usage: bit predict --model MODEL.npz --tensor IN.npy --out OUT.npy [options]\n\n"
    "Runs a BiT checkpoint on a float32 NCHW batch that is already normalised to [-1, 1]\n"
    "and writes the float32 logits [N, classes] (or the features when the checkpoint has\n"
    "no head) as .npy.\n\n"
    "  --model PATH       checkpoint in the official BiT .npz schema\n"
    "  --tensor PATH      input batch [N, 3, H, W], H and W >= 32\n"
    "  --out PATH         where to write the logits\n"
    "  --threads N        OpenMP threads (0 = every core; default 0)\n"
    "  --precision P      f32 (default) or bf16\n";

int cmd_predict(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", 1, 0, 'm'}, {"tensor", 1, 0, 't'}, {"out", 1, 0, 'o'},
        {"threads", 1, 0, 'j'}, {"precision", 1, 0, 'p'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    const char *model = NULL, *tensor = NULL, *outp = NULL;
    eng_precision prec = ENG_PREC_F32;
    int c;
    optind = 1;
    if (cli_threads("predict", "0") < 0) return 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 't': tensor = optarg; break;
        case 'o': outp = optarg; break;
        case 'j': if (cli_threads("predict", optarg) < 0) return 2; break;
        case 'p': if (cli_precision("predict", optarg, &prec) < 0) return 2; break;
        case 'h': fputs(predict_usage, stdout); return 0;
        default: fputs(predict_usage, stderr); return 2;
        }
    }
    if (!model || !tensor || !outp || optind != argc) {
        fputs(predict_usage, stderr);
        return 2;
    }
    char err[512];
    eng_tensor *x = NULL, *y = NULL;
    eng_net *net = NULL;
    int rc = 1;
    if (eng_npy_load(tensor, &x, err, sizeof err)) {
        cli_fail("predict", "%s", err);
        goto done;
    }
    if (x->dtype != ENG_F32 || x->ndim != 4 || x->shape[1] != 3) {
        cli_fail("predict", "%s: expected a float32 [N, 3, H, W] tensor", tensor);
        goto done;
    }
    if (cli_load_net("predict", model, prec, &net)) goto done;
    int64_t shape[2] = {x->shape[0], eng_net_out_dim(net)};
    if (!(y = eng_tensor_new(ENG_F32, 0, 2, shape))) {
        cli_fail("predict", "out of memory");
        goto done;
    }
    if (x->shape[0] > 65536 || x->shape[2] > 8192 || x->shape[3] > 8192 ||
        eng_net_forward(net, x->data, (int)x->shape[0], (int)x->shape[2], (int)x->shape[3],
                        y->data, NULL, NULL, err, sizeof err) ||
        eng_npy_save(outp, y, err, sizeof err)) {
        cli_fail("predict", "%s", x->shape[0] > 65536 ? "batch too large" : err);
        goto done;
    }
    rc = 0;
done:
    eng_tensor_free(x);
    eng_tensor_free(y);
    eng_net_free(net);
    return rc;
}
