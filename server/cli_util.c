#include <errno.h>
#include <omp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "cli.h"

int cli_fail(const char *sub, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "bit %s: ", sub);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 1;
}

int cli_int(const char *sub, const char *opt, const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = s ? strtol(s, &end, 10) : 0;
    if (!s || !*s || *end || errno || v < lo || v > hi) {
        cli_fail(sub, "%s needs a whole number from %ld to %ld, not '%s'", opt, lo, hi,
                 s ? s : "");
        return -1;
    }
    *out = v;
    return 0;
}

int cli_threads(const char *sub, const char *s)
{
    long n;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (cli_int(sub, "--threads", s, 0, 4096, &n) < 0) return -1;
    if (n == 0) n = cores > 0 ? cores : 1;
    omp_set_num_threads((int)n);
    return 0;
}
