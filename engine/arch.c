#include "arch.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "rng.h"

static const struct { const char *name; int units[4]; int width; } released[] = {
    {"R50x1", {3, 4, 6, 3}, 64},   {"R50x3", {3, 4, 6, 3}, 192},
    {"R101x1", {3, 4, 23, 3}, 64}, {"R101x3", {3, 4, 23, 3}, 192},
    {"R152x2", {3, 8, 36, 3}, 128}, {"R152x4", {3, 8, 36, 3}, 256},
};
#define N_RELEASED (sizeof released / sizeof released[0])

static void emit(void (*fn)(const eng_param *, void *), void *ud, eng_pkind kind, int ndim,
                 int64_t d0, int64_t d1, int64_t d2, int64_t d3, const char *fmt, ...)
    __attribute__((format(printf, 9, 10)));

static void emit(void (*fn)(const eng_param *, void *), void *ud, eng_pkind kind, int ndim,
                 int64_t d0, int64_t d1, int64_t d2, int64_t d3, const char *fmt, ...)
{
    eng_param p = {.kind = kind, .ndim = ndim, .shape = {d0, d1, d2, d3}};
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p.key, sizeof p.key, fmt, ap);
    va_end(ap);
    fn(&p, ud);
}

static void emit_gn(void (*fn)(const eng_param *, void *), void *ud, const char *prefix, int c)
{
    emit(fn, ud, ENG_P_GAMMA, 1, c, 0, 0, 0, "%s/group_norm/gamma", prefix);
    emit(fn, ud, ENG_P_BETA, 1, c, 0, 0, 0, "%s/group_norm/beta", prefix);
}

void eng_arch_params(const eng_arch *a, void (*fn)(const eng_param *p, void *ud), void *ud)
{
    int w = a->width, cin = w;
    emit(fn, ud, ENG_P_CONV, 4, 7, 7, 3, w, "resnet/root_block/standardized_conv2d/kernel");
    for (int b = 0; b < 4; b++) {
        int mid = w << b, out = 4 * mid;
        for (int u = 0; u < a->units[b]; u++) {
            char pre[64];
            int in = u == 0 ? cin : out;
            snprintf(pre, sizeof pre, "resnet/block%d/unit%02d", b + 1, u + 1);
            char s[80];
            snprintf(s, sizeof s, "%s/a", pre);
            emit_gn(fn, ud, s, in);
            emit(fn, ud, ENG_P_CONV, 4, 1, 1, in, mid, "%s/a/standardized_conv2d/kernel", pre);
            if (u == 0)
                emit(fn, ud, ENG_P_CONV, 4, 1, 1, in, out,
                     "%s/a/proj/standardized_conv2d/kernel", pre);
            snprintf(s, sizeof s, "%s/b", pre);
            emit_gn(fn, ud, s, mid);
            emit(fn, ud, ENG_P_CONV, 4, 3, 3, mid, mid, "%s/b/standardized_conv2d/kernel", pre);
            snprintf(s, sizeof s, "%s/c", pre);
            emit_gn(fn, ud, s, mid);
            emit(fn, ud, ENG_P_CONV, 4, 1, 1, mid, out, "%s/c/standardized_conv2d/kernel", pre);
        }
        cin = out;
    }
    emit_gn(fn, ud, "resnet", cin);
    if (a->head > 0) {
        emit(fn, ud, ENG_P_HEAD_W, 4, 1, 1, cin, a->head, "resnet/head/conv2d/kernel");
        emit(fn, ud, ENG_P_HEAD_B, 1, a->head, 0, 0, 0, "resnet/head/conv2d/bias");
    }
}

static void count_cb(const eng_param *p, void *ud)
{
    int64_t n = 1;
    for (int i = 0; i < p->ndim; i++) n *= p->shape[i];
    *(int64_t *)ud += n;
}

int64_t eng_arch_param_count(const eng_arch *a)
{
    int64_t n = 0;
    eng_arch_params(a, count_cb, &n);
    return n;
}

const char *eng_arch_name(const eng_arch *a)
{
    for (size_t i = 0; i < N_RELEASED; i++)
        if (!memcmp(released[i].units, a->units, sizeof a->units) && released[i].width == a->width)
            return released[i].name;
    return "custom";
}

int eng_arch_by_name(const char *name, int head, eng_arch *a, char *err, size_t errlen)
{
    const char *s = name;
    if (!strncasecmp(s, "BiT-S-", 6) || !strncasecmp(s, "BiT-M-", 6)) s += 6;
    for (size_t i = 0; i < N_RELEASED; i++) {
        if (strcasecmp(s, released[i].name)) continue;
        memcpy(a->units, released[i].units, sizeof a->units);
        a->width = released[i].width;
        a->head = head;
        return 0;
    }
    return eng_errf(err, errlen, ENG_EINVAL,
                    "unknown architecture '%s' (R50x1, R50x3, R101x1, R101x3, R152x2, R152x4)",
                    name);
}

typedef struct check_ctx {
    const eng_npz *z;
    char *err;
    size_t errlen;
    int rc;
} check_ctx;

static void check_cb(const eng_param *p, void *ud)
{
    check_ctx *c = ud;
    if (c->rc) return;
    const eng_tensor *t = eng_npz_get(c->z, p->key);
    char want[96], got[96];
    eng_shape_str(p->ndim, p->shape, want, sizeof want);
    if (!t) {
        c->rc = eng_errf(c->err, c->errlen, ENG_EFORMAT, "checkpoint lacks %s (expected %s)",
                         p->key, want);
        return;
    }
    if (!eng_tensor_is_f32(t, p->ndim, p->shape)) {
        eng_shape_str(t->ndim, t->shape, got, sizeof got);
        c->rc = eng_errf(c->err, c->errlen, ENG_EFORMAT, "%s is %s%s, expected float32 %s",
                         p->key, t->dtype == ENG_F32 ? "" : "not float32, ", got, want);
    }
}

int eng_arch_check(const eng_npz *z, const eng_arch *a, char *err, size_t errlen)
{
    check_ctx c = {z, err, errlen, 0};
    eng_arch_params(a, check_cb, &c);
    return c.rc;
}

int eng_arch_from_npz(const eng_npz *z, eng_arch *a, char *err, size_t errlen)
{
    const char *rk = "resnet/root_block/standardized_conv2d/kernel";
    const eng_tensor *root = eng_npz_get(z, rk);
    if (!root)
        return eng_errf(err, errlen, ENG_EFORMAT,
                        "not a BiT checkpoint: %s is missing (expected [7, 7, 3, width])", rk);
    if (root->ndim != 4 || root->shape[0] != 7 || root->shape[1] != 7 || root->shape[2] != 3 ||
        root->shape[3] <= 0 || root->shape[3] % ENG_GN_GROUPS || root->shape[3] > 4096) {
        char got[96];
        eng_shape_str(root->ndim, root->shape, got, sizeof got);
        return eng_errf(err, errlen, ENG_EFORMAT,
                        "%s is %s, expected [7, 7, 3, width] with width a multiple of 32", rk, got);
    }
    memset(a, 0, sizeof *a);
    a->width = (int)root->shape[3];
    for (int b = 0; b < 4; b++) {
        for (;;) {
            char key[96];
            snprintf(key, sizeof key, "resnet/block%d/unit%02d/a/standardized_conv2d/kernel", b + 1,
                     a->units[b] + 1);
            if (!eng_npz_get(z, key) || a->units[b] == 99) break;
            a->units[b]++;
        }
        if (a->units[b] == 0)
            return eng_errf(err, errlen, ENG_EFORMAT,
                            "checkpoint lacks resnet/block%d/unit01 (every block needs a unit)",
                            b + 1);
    }
    const eng_tensor *hk = eng_npz_get(z, "resnet/head/conv2d/kernel");
    if (hk) {
        if (hk->ndim != 4 || hk->shape[3] <= 0 || hk->shape[3] > 1000000)
            return eng_errf(err, errlen, ENG_EFORMAT,
                            "resnet/head/conv2d/kernel must be [1, 1, %d, classes]", a->width * 32);
        a->head = (int)hk->shape[3];
    }
    return eng_arch_check(z, a, err, errlen);
}

int eng_arch_probe(const char *path, eng_arch *a, char *err, size_t errlen)
{
    struct stat sb;
    if (stat(path, &sb) || !S_ISREG(sb.st_mode))
        return eng_errf(err, errlen, ENG_ENOTFOUND, "%s: no such checkpoint file", path);
    eng_npz *z = NULL;
    int rc = eng_npz_load_headers(path, NULL, &z, err, errlen);
    if (!rc && (rc = eng_arch_from_npz(z, a, err, errlen))) {
        char why[400];
        snprintf(why, sizeof why, "%s", err);
        eng_errf(err, errlen, rc, "%s: %s", path, why);
    }
    eng_npz_free(z);
    return rc;
}

void eng_arch_spatial(int h, int w, int hw[5][2])
{
    h = eng_out_size(eng_out_size(h, 7, 2, 3), 3, 2, 1);
    w = eng_out_size(eng_out_size(w, 7, 2, 3), 3, 2, 1);
    hw[0][0] = h, hw[0][1] = w;
    for (int b = 1; b < 4; b++) {
        h = eng_out_size(h, 3, 2, 1);
        w = eng_out_size(w, 3, 2, 1);
        hw[b][0] = h, hw[b][1] = w;
    }
    hw[4][0] = h, hw[4][1] = w;
}

double eng_arch_flops(const eng_arch *a, int h, int w)
{
    int hw[5][2];
    eng_arch_spatial(h, w, hw);
    double root_hw = (double)eng_out_size(h, 7, 2, 3) * eng_out_size(w, 7, 2, 3);
    double macs = root_hw * 49 * 3 * a->width;
    int cin = a->width;
    for (int b = 0; b < 4; b++) {
        double mid = a->width << b, out = 4 * mid;
        double in_hw = b == 0 ? (double)hw[0][0] * hw[0][1] : (double)hw[b - 1][0] * hw[b - 1][1];
        double o_hw = (double)hw[b][0] * hw[b][1];
        for (int u = 0; u < a->units[b]; u++) {
            double in = u == 0 ? cin : out, uin_hw = u == 0 ? in_hw : o_hw;
            macs += uin_hw * in * mid + o_hw * 9 * mid * mid + o_hw * mid * out;
            if (u == 0) macs += o_hw * in * out;
        }
        cin = (int)out;
    }
    macs += (double)cin * a->head;
    return 2 * macs;
}

uint64_t eng_arch_train_bytes(const eng_arch *a, int n, int h, int w)
{
    int hw[5][2];
    eng_arch_spatial(h, w, hw);
    double root = (double)eng_out_size(h, 7, 2, 3) * eng_out_size(w, 7, 2, 3);
    double acts = 3.0 * h * w + a->width * (root + (double)hw[0][0] * hw[0][1]), cin = a->width;
    for (int b = 0; b < 4; b++) {
        double mid = a->width << b, out = 4 * mid, o_hw = (double)hw[b][0] * hw[b][1];
        double in_hw = b == 0 ? (double)hw[0][0] * hw[0][1] : (double)hw[b - 1][0] * hw[b - 1][1];
        for (int u = 0; u < a->units[b]; u++) {
            double in = u == 0 ? cin : out, uin_hw = u == 0 ? in_hw : o_hw;
            /* a unit's GroupNorm input, its three convolutions' outputs, the projection */
            acts += in * uin_hw + mid * uin_hw + mid * o_hw + out * o_hw + (u == 0 ? out * o_hw : 0);
        }
        cin = out;
    }
    /* Measured on R50x1 (peak RSS of a training step): 1.52 GB at 128 px x 32 and 1.98 GB at
     * 480 px x 4; six float copies of the parameters and 1.4 floats per activation kept, plus
     * 100 MB of runtime, bound both from above. */
    double params = (double)eng_arch_param_count(a);
    return (uint64_t)(24.0 * params + 5.6 * acts * n + 100e6);
}

typedef struct init_ctx {
    eng_npz *z;
    eng_rng rng;
    int random_head, rc;
} init_ctx;

static void init_cb(const eng_param *p, void *ud)
{
    init_ctx *c = ud;
    if (c->rc) return;
    eng_tensor *t = eng_tensor_new(ENG_F32, 4, p->ndim, p->shape);
    if (!t) { c->rc = ENG_ENOMEM; return; }
    float *d = t->data;
    int64_t n = eng_tensor_numel(t);
    double std = 0;
    if (p->kind == ENG_P_CONV) std = sqrt(2.0 / (double)(p->shape[0] * p->shape[1] * p->shape[2]));
    if (p->kind == ENG_P_HEAD_W && c->random_head) std = 0.01;
    for (int64_t i = 0; i < n; i++) {
        if (p->kind == ENG_P_GAMMA) d[i] = 1.0f;
        else if (std > 0) d[i] = (float)(std * eng_rng_normal(&c->rng));
    }
    c->rc = eng_npz_put(c->z, p->key, t);
}

int eng_arch_init(const eng_arch *a, uint64_t seed, int random_head, eng_npz **out,
                  char *err, size_t errlen)
{
    init_ctx c = {.z = eng_npz_new(), .random_head = random_head};
    if (!c.z) return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    eng_rng_seed(&c.rng, seed);
    eng_arch_params(a, init_cb, &c);
    if (c.rc) {
        eng_npz_free(c.z);
        return eng_errf(err, errlen, c.rc, "out of memory initialising %s", eng_arch_name(a));
    }
    *out = c.z;
    return 0;
}
