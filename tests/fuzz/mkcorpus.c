/* Writes the seed corpus of every fuzz target into OUTDIR/TARGET/ (see seeds.c). */
#include <stdio.h>

#include "tests/fuzz/targets.h"

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: mkcorpus OUTDIR [FIXTURES_DIR]\n");
        return 2;
    }
    if (fz_write_seeds(argv[1], argc > 2 ? argv[2] : NULL) != 0) {
        fprintf(stderr, "mkcorpus: could not write every seed into %s\n", argv[1]);
        return 1;
    }
    return 0;
}
