/* The `bit` command line: one function per subcommand, each returning the process exit code
 * (0 ok, 1 failure, 2 usage). Shared helpers parse numbers and print errors uniformly. */
#ifndef BIT_CLI_H
#define BIT_CLI_H

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

/* Prints "bit SUB: message" to stderr; returns 1 for use as `return cli_fail(...)`. */
int cli_fail(const char *sub, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Parses a whole decimal integer in [lo, hi]; prints an error naming opt and returns -1. */
int cli_int(const char *sub, const char *opt, const char *s, long lo, long hi, long *out);
/* Parses --precision (f32 | bf16) into an eng_precision; -1 after printing an error. */
int cli_precision(const char *sub, const char *s, eng_precision *prec);
/* Loads a checkpoint into a net; prints the reason and returns -1 on failure. */
int cli_load_net(const char *sub, const char *path, eng_precision prec, eng_net **net);
/* Applies --threads (0 = every core) to this thread's OpenMP budget. */
int cli_threads(const char *sub, const char *s);

#endif
