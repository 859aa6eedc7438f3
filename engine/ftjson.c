#include "ftjson.h"

#include <stdio.h>
#include <string.h>

#include "names.h"

typedef enum { F_INT, F_NUM, F_SCHED, F_RES, F_BOOL, F_WORD } kind;

/* One vocabulary: each field is also the option --NAME-WITH-DASHES of bit finetune (the
 * help texts and the README print this table). */
typedef struct field {
    ft_field_doc doc;
    kind k;
    double lo, hi;
} field;

static const field fields[] = {
    {{"steps", NULL, "--steps N", "scales the rule's schedule"}, F_INT, 1, 1e8},
    {{"schedule", NULL, "--schedule A,B,...", "[warm-up end, decays, total]"}, F_SCHED, 1, 1e8},
    {{"batch", NULL, "--batch N", "images per step (rule: 512)"}, F_INT, 1, 65536},
    {{"batch_split", NULL, "--batch-split N", "micro-batches; divides batch"}, F_INT, 1, 65536},
    {{"base_lr", NULL, "--base-lr X", "rule: 0.003"}, F_NUM, 1e-9, 10},
    {{"resolution", "res", "--res PRECROP,CROP", "[precrop, crop]"}, F_RES, 32, 4096},
    {{"pretrain_resolution", "pretrain_res", "--pretrain-res R", "the base's pre-training size (default: its NAME.json, else 224)"}, F_INT, 32, 4096},
    {{"mixup", NULL, "--mixup ALPHA", "alpha; 0: off (rule: 0 or 0.1)"}, F_NUM, 0, 100},
    {{"examples_per_class", NULL, "--examples-per-class K", "few-shot: K images per class"}, F_INT, 1, 1e6},
    {{"seed", NULL, "--seed S", "order, augmentation, hold-out"}, F_INT, 0, 4.6e18},
    {{"eval_every", NULL, "--eval-every N", "and at the end"}, F_INT, 1, 1e8},
    {{"save_every", NULL, "--save-every N", "default: every 5 % of the run"}, F_INT, 1, 1e8},
    {{"augment", NULL, "--no-augment", "false: no random crop or flip"}, F_BOOL, 0, 1},
    {{"shuffle", NULL, "--no-shuffle", "false: the stored order"}, F_BOOL, 0, 1},
    {{"weight_decay", NULL, "--weight-decay X", "conv kernels (rule: 0)"}, F_NUM, 0, 1},
    {{"mode", NULL, "--mode M", "full (the rule) or linear (a probe)"}, F_WORD, 0, 0},
    {{"select", NULL, "--select S", "last or best (val top-1)"}, F_WORD, 0, 0},
    {{"budget_minutes", NULL, "--budget-minutes N", "finish within N minutes"}, F_NUM, 0.1, 1e6},
    {{"precision", NULL, "--precision P", "f32 or bf16 (auto: bf16 where oneDNN has bf16 kernels)"},
     F_WORD, 0, 0},
};
#define NFIELDS (sizeof fields / sizeof fields[0])

/* Shown in a job's resolved values, derived there: never asked for. */
static const struct { const char *name, *why; } derived[] = {
    {"micro_batch", "it is batch / batch_split: set batch_split"},
    {"pretrain", "only bit pretrain trains from scratch"},
};

const ft_field_doc *ft_param_field(size_t i) { return i < NFIELDS ? &fields[i].doc : NULL; }

static const char *const mode_names[] = {"full", "linear"};
static const char *const select_names[] = {"last", "best"};
static const char *const precision_names[] = {"f32", "bf16"}; /* eng_precision's order */

/* mode, select and precision: one of their two words ("auto" never gets here). */
static int parse_word(const char *key, const json_t *v, ft_params *p, char *err, size_t errlen)
{
    int which = !strcmp(key, "mode") ? 0 : !strcmp(key, "select") ? 1 : 2;
    const char *const *names = which == 0 ? mode_names : which == 1 ? select_names : precision_names;
    const char *w = json_string_value(v);
    for (int i = 0; w && i < 2; i++)
        if (!strcmp(w, names[i])) {
            if (which == 0) p->mode = (ft_mode)i, p->set_mode = 1;
            else if (which == 1) p->select = (ft_select)i, p->set_select = 1;
            else p->precision = (eng_precision)i;
            return 0;
        }
    return eng_errf(err, errlen, ENG_EINVAL, "hyperparameters.%s: must be \"%s\", \"%s\" or \"auto\"", key,
                    names[0], names[1]);
}

static int bad(char *err, size_t errlen, const field *f, const char *why)
{
    return eng_errf(err, errlen, ENG_EINVAL, "hyperparameters.%s: %s", f->doc.name, why);
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
    else if (!strcmp(name, "pretrain_resolution")) p->pretrain_res = (int)v;
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

static void set_num(ft_params *p, const char *name, double x)
{
    if (!strcmp(name, "base_lr")) p->base_lr = x;
    else if (!strcmp(name, "mixup")) p->mixup = x;
    else if (!strcmp(name, "budget_minutes")) p->budget_s = x * 60;
    else p->weight_decay = x;
}

/* The field key names (or its alias), NULL when none; then an error naming the valid ones. */
static const field *find(const char *key, char *err, size_t errlen)
{
    const char *names[NFIELDS];
    for (size_t i = 0; i < NFIELDS; i++) {
        if (!strcmp(fields[i].doc.name, key) || (fields[i].doc.alias && !strcmp(fields[i].doc.alias, key)))
            return &fields[i];
        names[i] = fields[i].doc.name;
    }
    for (size_t i = 0; i < sizeof derived / sizeof derived[0]; i++)
        if (!strcmp(derived[i].name, key))
            return eng_errf(err, errlen, ENG_EINVAL, "hyperparameters.%s: resolved, not requested: %s",
                            key, derived[i].why), NULL;
    char hint[600];
    eng_names_hint(hint, sizeof hint, key, names, NFIELDS, "");
    eng_errf(err, errlen, ENG_EINVAL, "hyperparameters.%s: unknown field; %s", key, hint);
    return NULL;
}

static int parse_one(const field *f, const json_t *v, ft_params *p, char *err, size_t errlen)
{
    const char *name = f->doc.name;
    if (json_is_null(v) || (json_is_string(v) && !strcmp(json_string_value(v), "auto"))) return 0;
    if (f->k == F_SCHED || f->k == F_RES) return parse_list(v, f, p, err, errlen);
    if (f->k == F_WORD) return parse_word(name, v, p, err, errlen);
    if (f->k == F_BOOL) {
        if (!json_is_boolean(v)) return bad(err, errlen, f, "must be true, false or \"auto\"");
        if (!strcmp(name, "augment")) p->no_augment = !json_is_true(v);
        else p->no_shuffle = !json_is_true(v);
        return 0;
    }
    if (f->k == F_NUM) {
        if (!json_is_number(v)) return bad(err, errlen, f, "must be a number or \"auto\"");
        double x = json_number_value(v);
        if (!(x >= f->lo && x <= f->hi)) {
            char why[96];
            snprintf(why, sizeof why, "must be from %g to %g", f->lo, f->hi);
            return bad(err, errlen, f, why);
        }
        set_num(p, name, x);
        return 0;
    }
    int64_t x;
    int rc = get_int(v, f, &x, err, errlen);
    return rc ? rc : set_int(p, name, x);
}

int ft_params_from_json(const json_t *hp, ft_params *p, char *err, size_t errlen)
{
    memset(p, 0, sizeof *p);
    p->mixup = -1;
    p->weight_decay = -1;
    p->precision = ENG_PREC_AUTO;
    if (!hp || json_is_null(hp)) return 0;
    if (!json_is_object(hp))
        return eng_errf(err, errlen, ENG_EINVAL, "hyperparameters: must be an object");
    const char *key;
    json_t *v;
    int seen[NFIELDS] = {0};
    json_object_foreach((json_t *)hp, key, v) {
        const field *f = find(key, err, errlen);
        if (!f) return ENG_EINVAL;
        if (seen[f - fields]++)
            return eng_errf(err, errlen, ENG_EINVAL, "hyperparameters.%s: %s is given twice (%s is its alias)",
                            key, f->doc.name, f->doc.alias ? f->doc.alias : "?");
        int rc = parse_one(f, v, p, err, errlen);
        if (rc) return rc;
    }
    if (p->batch && p->batch_split && p->batch % p->batch_split)
        return eng_errf(err, errlen, ENG_EINVAL,
                        "hyperparameters.batch_split: must divide batch (%d)", p->batch);
    return 0;
}

int ft_resolved_flags(const ft_resolved *r, char *buf, size_t len)
{
    size_t o = 0;
#define PUT(...) (o += (size_t)snprintf(buf + o, o < len ? len - o : 0, __VA_ARGS__))
    PUT("--batch %d --batch-split %d --base-lr %g --schedule ", r->h.batch, r->batch_split, r->h.base_lr);
    for (int i = 0; i < r->h.nsched; i++) PUT("%s%lld", i ? "," : "", (long long)r->h.schedule[i]);
    PUT(" --res %d,%d --mixup %g --seed %llu --save-every %lld", r->h.precrop, r->h.crop,
        r->h.mixup_alpha, (unsigned long long)r->seed, (long long)r->save_every);
    if (r->eval_every) PUT(" --eval-every %lld", (long long)r->eval_every);
    if (r->examples_per_class) PUT(" --examples-per-class %d", r->examples_per_class);
    if (!r->augment) PUT(" --no-augment");
    if (!r->shuffle) PUT(" --no-shuffle");
    if (r->weight_decay > 0) PUT(" --weight-decay %g", r->weight_decay);
    PUT(" --precision %s", eng_precision_name(r->precision));
#undef PUT
    return o < len ? 0 : ENG_EINVAL;
}

json_t *ft_resolved_json(const ft_resolved *r)
{
    json_t *s = json_array();
    for (int i = 0; i < r->h.nsched; i++) json_array_append_new(s, json_integer(r->h.schedule[i]));
    json_t *o = json_pack("{s:i, s:i, s:i, s:f, s:o, s:I, s:[i,i], s:f, s:i, s:I, s:I, s:I, s:b, s:b, "
                     "s:f, s:b}",
                     "batch", r->h.batch, "batch_split", r->batch_split, "micro_batch", r->micro,
                     "base_lr", r->h.base_lr, "schedule", s,
                     "steps", (json_int_t)r->h.schedule[r->h.nsched - 1], "resolution",
                     r->h.precrop, r->h.crop, "mixup", r->h.mixup_alpha, "examples_per_class",
                     r->examples_per_class, "seed", (json_int_t)r->seed, "eval_every",
                     (json_int_t)r->eval_every, "save_every", (json_int_t)r->save_every,
                     "augment", r->augment, "shuffle", r->shuffle, "weight_decay",
                     r->weight_decay, "pretrain", r->pretrain);
    json_object_set_new(o, "pretrain_resolution", json_integer(r->pretrain_res));
    json_object_set_new(o, "mode", json_string(mode_names[r->mode]));
    json_object_set_new(o, "select", json_string(select_names[r->select]));
    json_object_set_new(o, "precision", json_string(eng_precision_name(r->precision)));
    if (r->budget_s > 0) /* what the budget chose, and what it predicted */
        json_object_set_new(o, "plan", json_pack("{s:s, s:[i,i], s:I, s:f, s:f}", "mode",
                                                 mode_names[r->mode], "resolution", r->h.precrop,
                                                 r->h.crop, "steps",
                                                 (json_int_t)r->h.schedule[r->h.nsched - 1],
                                                 "budget_seconds", r->budget_s,
                                                 "predicted_seconds", r->predicted_s));
    return o;
}

int ft_resolved_from_json(const json_t *j, ft_resolved *r)
{
    json_t *sched = json_object_get(j, "schedule"), *res = json_object_get(j, "resolution");
    memset(r, 0, sizeof *r);
    if (!json_is_array(sched) || json_array_size(sched) < 2 || json_array_size(sched) > ENG_MAX_SCHEDULE ||
        !json_is_array(res) || json_array_size(res) != 2)
        return ENG_EFORMAT;
    r->h.nsched = (int)json_array_size(sched);
    for (int i = 0; i < r->h.nsched; i++) r->h.schedule[i] = json_integer_value(json_array_get(sched, (size_t)i));
    r->h.precrop = (int)json_integer_value(json_array_get(res, 0));
    r->h.crop = (int)json_integer_value(json_array_get(res, 1));
    r->h.batch = (int)json_integer_value(json_object_get(j, "batch"));
    r->h.base_lr = json_number_value(json_object_get(j, "base_lr"));
    r->h.mixup_alpha = json_number_value(json_object_get(j, "mixup"));
    r->batch_split = (int)json_integer_value(json_object_get(j, "batch_split"));
    r->micro = (int)json_integer_value(json_object_get(j, "micro_batch"));
    r->examples_per_class = (int)json_integer_value(json_object_get(j, "examples_per_class"));
    r->seed = (uint64_t)json_integer_value(json_object_get(j, "seed"));
    r->eval_every = json_integer_value(json_object_get(j, "eval_every"));
    r->save_every = json_integer_value(json_object_get(j, "save_every"));
    r->augment = json_is_true(json_object_get(j, "augment"));
    r->shuffle = json_is_true(json_object_get(j, "shuffle"));
    r->weight_decay = json_number_value(json_object_get(j, "weight_decay"));
    r->pretrain = json_is_true(json_object_get(j, "pretrain"));
    json_t *pr = json_object_get(j, "pretrain_resolution"); /* absent in older runs */
    r->pretrain_res = pr ? (int)json_integer_value(pr) : ENG_HYPER_PRETRAIN_RES;
    const char *mode = json_string_value(json_object_get(j, "mode"));
    const char *sel = json_string_value(json_object_get(j, "select"));
    const char *prec = json_string_value(json_object_get(j, "precision"));
    json_t *plan = json_object_get(j, "plan");
    r->mode = mode && !strcmp(mode, "linear") ? FT_MODE_LINEAR : FT_MODE_FULL;
    r->select = sel && !strcmp(sel, "best") ? FT_SELECT_BEST : FT_SELECT_LAST;
    r->precision = prec && !strcmp(prec, "bf16") ? ENG_PREC_BF16 : ENG_PREC_F32; /* older: f32 */
    r->budget_s = json_number_value(json_object_get(plan, "budget_seconds"));
    r->predicted_s = json_number_value(json_object_get(plan, "predicted_seconds"));
    if (r->h.batch < 1 || r->batch_split < 1 || r->micro * r->batch_split != r->h.batch ||
        r->h.crop < 32 || r->h.precrop < r->h.crop)
        return ENG_EFORMAT;
    return 0;
}
