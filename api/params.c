#include "params.h"

#include <string.h>

typedef enum { F_INT, F_NUM, F_SCHED, F_RES } kind;

typedef struct field {
    const char *name;
    kind k;
    double lo, hi;
} field;

static const field fields[] = {
    {"steps", F_INT, 1, 1e8},         {"schedule", F_SCHED, 1, 1e8},
    {"batch", F_INT, 1, 65536},       {"batch_split", F_INT, 1, 65536},
    {"base_lr", F_NUM, 1e-9, 10},     {"resolution", F_RES, 32, 4096},
    {"mixup", F_NUM, 0, 100},         {"examples_per_class", F_INT, 1, 1e6},
    {"seed", F_INT, 0, 4.6e18},       {"eval_every", F_INT, 1, 1e8},
    {"save_every", F_INT, 1, 1e8},
};

static int bad(char *err, size_t errlen, const field *f, const char *why)
{
    return eng_errf(err, errlen, ENG_EINVAL, "hyperparameters.%s: %s", f->name, why);
}

static int get_int(const json_t *v, const field *f, int64_t *out, char *err, size_t errlen)
{
    if (!json_is_integer(v)) return bad(err, errlen, f, "must be an integer or \"auto\"");
    json_int_t x = json_integer_value(v);
    if ((double)x < f->lo || (double)x > f->hi) {
        char why[96];
        snprintf(why, sizeof why, "must be from %.0f to %.0f", f->lo, f->hi);
        return bad(err, errlen, f, why);
    }
    *out = x;
    return 0;
}

static int set_int(ft_params *p, const char *name, int64_t v)
{
    if (!strcmp(name, "steps")) p->steps = v;
    else if (!strcmp(name, "batch")) p->batch = (int)v;
    else if (!strcmp(name, "batch_split")) p->batch_split = (int)v;
    else if (!strcmp(name, "examples_per_class")) p->examples_per_class = (int)v;
    else if (!strcmp(name, "seed")) p->seed = (uint64_t)v;
    else if (!strcmp(name, "eval_every")) p->eval_every = v;
    else if (!strcmp(name, "save_every")) p->save_every = v;
    else return -1;
    return 0;
}

static int parse_list(const json_t *v, const field *f, ft_params *p, char *err, size_t errlen)
{
    size_t n = json_array_size(v);
    if (!json_is_array(v)) return bad(err, errlen, f, "must be a list of integers or \"auto\"");
    if (f->k == F_RES) {
        int64_t a, b;
        if (n != 2) return bad(err, errlen, f, "must be [precrop, crop]");
        int rc = get_int(json_array_get(v, 0), f, &a, err, errlen);
        if (!rc) rc = get_int(json_array_get(v, 1), f, &b, err, errlen);
        if (!rc && b > a) rc = bad(err, errlen, f, "crop must not exceed precrop");
        if (!rc) p->precrop = (int)a, p->crop = (int)b;
        return rc;
    }
    if (n < 2 || n > ENG_MAX_SCHEDULE) return bad(err, errlen, f, "must list 2 to 16 steps");
    for (size_t i = 0; i < n; i++) {
        int64_t s;
        int rc = get_int(json_array_get(v, i), f, &s, err, errlen);
        if (rc) return rc;
        if (i && s <= p->schedule[i - 1]) return bad(err, errlen, f, "steps must increase");
        p->schedule[i] = s;
    }
    p->nsched = (int)n;
    return 0;
}

static int parse_one(const char *key, const json_t *v, ft_params *p, char *err, size_t errlen)
{
    const field *f = NULL;
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        if (!strcmp(fields[i].name, key)) f = &fields[i];
    if (!f) return eng_errf(err, errlen, ENG_EINVAL, "hyperparameters.%s: unknown field", key);
    if (json_is_null(v) || (json_is_string(v) && !strcmp(json_string_value(v), "auto"))) return 0;
    if (f->k == F_SCHED || f->k == F_RES) return parse_list(v, f, p, err, errlen);
    if (f->k == F_NUM) {
        if (!json_is_number(v)) return bad(err, errlen, f, "must be a number or \"auto\"");
        double x = json_number_value(v);
        if (!(x >= f->lo && x <= f->hi)) return bad(err, errlen, f, "is out of range");
        if (!strcmp(key, "base_lr")) p->base_lr = x;
        else p->mixup = x;
        return 0;
    }
    int64_t x;
    int rc = get_int(v, f, &x, err, errlen);
    return rc ? rc : set_int(p, key, x);
}

int api_params_parse(const json_t *hp, ft_params *p, char *err, size_t errlen)
{
    memset(p, 0, sizeof *p);
    p->mixup = -1;
    p->weight_decay = -1;
    if (!hp || json_is_null(hp)) return 0;
    if (!json_is_object(hp))
        return eng_errf(err, errlen, ENG_EINVAL, "hyperparameters: must be an object");
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)hp, key, v) {
        int rc = parse_one(key, v, p, err, errlen);
        if (rc) return rc;
    }
    if (p->batch && p->batch_split && p->batch % p->batch_split)
        return eng_errf(err, errlen, ENG_EINVAL,
                        "hyperparameters.batch_split: must divide batch (%d)", p->batch);
    return 0;
}
