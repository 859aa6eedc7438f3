#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <omp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "names.h"

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

/* getopt_long takes any unambiguous prefix (--step for --steps), so a typo can silently set
 * another option. Every --NAME must be one of opts exactly: checked once, before parsing. */
static int exact_options(const char *sub, int argc, char **argv, const struct option *opts)
{
    const char *names[64];
    size_t n = 0;
    for (const struct option *o = opts; o->name && n < 64; o++) names[n++] = o->name;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--")) break;
        if (strncmp(a, "--", 2)) continue;
        size_t len = strcspn(a + 2, "=");
        const struct option *hit = NULL;
        for (const struct option *o = opts; o->name && !hit; o++)
            if (strlen(o->name) == len && !strncmp(o->name, a + 2, len)) hit = o;
        if (!hit) {
            char word[64];
            snprintf(word, sizeof word, "%.*s", (int)(len < 63 ? len : 63), a + 2);
            const char *near = eng_nearest(word, names, n);
            if (near) cli_fail(sub, "unknown option --%s; did you mean --%s?", word, near);
            else cli_fail(sub, "unknown option --%s (`bit %s --help` lists them)", word, sub);
            return -1;
        }
        if (hit->has_arg == required_argument && !a[2 + len]) i++; /* its value may start with -- */
    }
    return 0;
}

int cli_getopt(const char *sub, int argc, char **argv, const struct option *opts)
{
    if (optind <= 1 && exact_options(sub, argc, argv, opts)) {
        optind = argc; /* the next call ends the loop */
        return '?';
    }
    return getopt_long(argc, argv, "", opts, NULL);
}

const char *cli_model_ref(const char *ref, char *buf, size_t len)
{
    const char *dir = getenv("BIT_MODELS_DIR");
    if (!ref || access(ref, F_OK) == 0 || strchr(ref, '/') || !*ref || *ref == '.') return ref;
    int n = snprintf(buf, len, "%s/%s.npz", dir && *dir ? dir : "models", ref);
    return n > 0 && (size_t)n < len && access(buf, R_OK) == 0 ? buf : ref;
}

int cli_beside_int(const char *npz, const char *key)
{
    size_t n = strlen(npz);
    char path[4200];
    if (n < 4 || strcmp(npz + n - 4, ".npz") || n >= sizeof path) return 0;
    snprintf(path, sizeof path, "%.*s.json", (int)(n - 4), npz);
    json_t *j = json_load_file(path, 0, NULL);
    json_int_t v = json_integer_value(json_object_get(j, key));
    json_decref(j);
    return v >= 32 && v <= 4096 ? (int)v : 0;
}
