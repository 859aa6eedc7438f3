/* bit dataset: what a dataset holds, as the server and the trainer will see it. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "dataset.h"

static const char dataset_usage[] =
    "usage: bit dataset inspect PATH [--seed S] [--holdout F] [--examples-per-class K]\n\n"
    "PATH is a directory of class folders (or train/ and val/), a tar, tar.gz, tar.xz or zip\n"
    "archive of one, or an .npz of tensors (x, y, optional x_val, y_val, classes). Prints the\n"
    "summary as JSON: classes, images per class and split, skipped files, median image size.\n"
    "Without val/, a stratified hold-out (default 10 % per class, seeded) is the validation\n"
    "split; the hold-out keeps at least one image of each class in training.\n";

int cmd_dataset(int argc, char **argv)
{
    static const struct option opts[] = {{"seed", 1, 0, 's'}, {"holdout", 1, 0, 'o'},
                                         {"examples-per-class", 1, 0, 'k'}, {"help", 0, 0, 'h'},
                                         {0, 0, 0, 0}};
    ds_opts o = {0};
    long v;
    int c, bad = 0;
    optind = 1;
    if (cli_threads("dataset", "0") < 0) return 2;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 's': bad |= cli_int("dataset", "--seed", optarg, 0, 1L << 62, &v); o.seed = (uint64_t)v; break;
        case 'o': {
            char *end;
            o.holdout = strtod(optarg, &end);
            if (*end || !(o.holdout > 0 && o.holdout < 1))
                bad = 1, cli_fail("dataset", "--holdout is a fraction in (0, 1)");
            break;
        }
        case 'k': bad |= cli_int("dataset", "--examples-per-class", optarg, 1, 1000000, &v); o.examples_per_class = (int)v; break;
        case 'h': fputs(dataset_usage, stdout); return 0;
        default: bad = 1;
        }
    }
    if (bad || optind + 2 != argc || strcmp(argv[optind], "inspect")) {
        fputs(dataset_usage, stderr);
        return 2;
    }
    char err[1024];
    ds_dataset *d = NULL;
    if (ds_open(argv[optind + 1], &o, &d, err, sizeof err)) return cli_fail("dataset", "%s", err);
    json_t *s = ds_summary(d);
    char *txt = json_dumps(s, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    puts(txt);
    free(txt);
    json_decref(s);
    ds_free(d);
    return 0;
}
