/* The `bit` command line: one function per subcommand, each returning the process exit code
 * (0 ok, 1 failure, 2 usage). Shared helpers parse numbers and print errors uniformly. */
#ifndef BIT_CLI_H
#define BIT_CLI_H

#include <getopt.h>
#include <stdint.h>

#include "net.h"

int cmd_inspect(int argc, char **argv);
int cmd_predict(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_finetune(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_pretrain(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_dataset(int argc, char **argv);
int cmd_jobs(int argc, char **argv);
int cmd_job(int argc, char **argv);

/* getopt_long(argc, argv, "", opts) for every command, but a --NAME must be an option's whole
 * name: an abbreviation or a typo is refused with the nearest name and the list ('?', after
 * the message; the loop then ends). Reset optind to 1 before the first call. */
int cli_getopt(const char *sub, int argc, char **argv, const struct option *opts);
/* Prints "bit SUB: message" to stderr; returns 1 for use as `return cli_fail(...)`. */
int cli_fail(const char *sub, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Parses a whole decimal integer in [lo, hi]; prints an error naming opt and returns -1. */
int cli_int(const char *sub, const char *opt, const char *s, long lo, long hi, long *out);
/* Parses --precision (auto | f32 | bf16) into an eng_precision; -1 after printing an error. */
#define CLI_PRECISION_HELP                                                                    \
    "auto (default: bf16 where oneDNN uses AVX512-BF16 or AMX), f32 or bf16"
int cli_precision(const char *sub, const char *s, eng_precision *prec);
/* Loads a checkpoint into a net; prints the reason and returns -1 on failure. */
int cli_load_net(const char *sub, const char *path, eng_precision prec, eng_net **net);
/* A --model argument: a path as given when it exists, else a base model's name looked up as
 * NAME.npz in BIT_MODELS_DIR (default ./models), as `bit serve` finds it. Returns ref or buf. */
const char *cli_model_ref(const char *ref, char *buf, size_t len);
/* An integer field of the NAME.json beside a base model's NAME.npz (the models directory's
 * resolution and pretrain_resolution); 0 when there is none in [32, 4096]. */
int cli_beside_int(const char *npz, const char *key);
/* Applies --threads (0 = every core) to this thread's OpenMP budget. */
int cli_threads(const char *sub, const char *s);

#endif
