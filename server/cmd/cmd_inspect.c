/* bit inspect: what a checkpoint is, as JSON. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arch.h"
#include "cli.h"
#include "net.h"

int cmd_inspect(int argc, char **argv)
{
    if (argc != 2 || !strcmp(argv[1], "--help")) {
        FILE *f = argc == 2 ? stdout : stderr;
        fprintf(f, "usage: bit inspect MODEL.npz\n\n"
                   "Prints the checkpoint's architecture as JSON: name (R50x1 ... or custom),\n"
                   "units per block, width, head size and parameter count; and how this machine\n"
                   "would run it: the ISA oneDNN dispatches to and what --precision auto picks.\n");
        return argc == 2 ? 0 : 2;
    }
    char err[512];
    eng_npz *z = NULL;
    eng_arch a;
    if (eng_npz_load(argv[1], NULL, &z, err, sizeof err) < 0 ||
        eng_arch_from_npz(z, &a, err, sizeof err) < 0) {
        eng_npz_free(z);
        return cli_fail("inspect", "%s", err);
    }
    json_t *o = json_pack("{s:s, s:s, s:[i,i,i,i], s:i, s:i, s:I, s:i, s:s, s:s}", "file", argv[1],
                          "architecture", eng_arch_name(&a), "units", a.units[0], a.units[1],
                          a.units[2], a.units[3], "width", a.width, "head", a.head, "parameters",
                          (json_int_t)eng_arch_param_count(&a), "arrays", z->n, "isa",
                          eng_cpu_isa(), "precision",
                          eng_precision_name(eng_precision_resolve(ENG_PREC_AUTO)));
    char *s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    puts(s);
    free(s);
    json_decref(o);
    eng_npz_free(z);
    return 0;
}
