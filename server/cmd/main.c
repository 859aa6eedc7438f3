/* bit: the bitd command line. Each subcommand lives in its own cmd_*.c; this file only
 * dispatches and prints the overview. */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "server/cmd/cmd_help.h"

static const struct {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
} commands[] = {
    {"serve", cmd_serve, "run the server: datasets and fine-tune jobs over HTTP"},
    {"inspect", cmd_inspect, "describe a BiT checkpoint (.npz) as JSON"},
    {"predict", cmd_predict, "classify images (or run a tensor) with a checkpoint"},
    {"finetune", cmd_finetune, "fine-tune a checkpoint on a labelled dataset (BiT-HyperRule)"},
    {"pretrain", cmd_pretrain, "train a BiT architecture from scratch (upstream recipe)"},
    {"eval", cmd_eval, "evaluate a model on a dataset: top-1, top-5, loss, per class"},
    {"dataset", cmd_dataset, "inspect a dataset (directory, archive or tensor .npz)"},
    {"bench", cmd_bench, "measure forward-pass or training speed"},
    {"jobs", cmd_jobs, "list the jobs of a running server"},
    {"job", cmd_job, "show, watch or cancel a job of a running server"},
};
#define N_COMMANDS (sizeof commands / sizeof commands[0])

static void usage(FILE *f)
{
    fprintf(f, "usage: bit COMMAND [OPTIONS]\n\n"
               "bitd: BiT (Big Transfer) image models on CPUs: inference, fine-tuning, serving.\n\n"
               "commands:\n");
    for (size_t i = 0; i < N_COMMANDS; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].help);
    fprintf(f, "\n`bit COMMAND --help` lists the options of a command; `bit help TOPIC` explains\n"
               "hyperrule, api and env; `man bit` has everything.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "help") && argc > 2) return cmd_help(argc - 1, argv + 1);
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("bit %s\n", PACKAGE_VERSION);
        return 0;
    }
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "bit: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
