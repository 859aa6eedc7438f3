#include "preproc.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* PIL's fixed point for 8-bit images: 32 bits minus 8 for the pixel minus 2 of headroom. */
#define PREC_BITS 22
#define PREC_HALF (1 << (PREC_BITS - 1))

/* Filter taps of one pass, per output index: the first input index, how many inputs, and
 * ksize weight slots (zero beyond count). */
typedef struct taps {
    int ksize;
    int *start, *count;
    int32_t *w;
} taps;

static void taps_free(taps *t)
{
    free(t->start);
    free(t->count);
    eng_free(t->w);
}

/* Mirrors PIL's precompute_coeffs + normalize_coeffs_8bpc operation for operation (the
 * multiply by 1/filterscale included), since a different rounding path could move a
 * quantised weight by one and break bit-exactness. */
static int taps_build(int in, int out, taps *t)
{
    double scale = (double)in / out, fscale = scale < 1.0 ? 1.0 : scale;
    double support = fscale, ss = 1.0 / fscale;
    int ksize = (int)ceil(support) * 2 + 1;
    t->ksize = ksize;
    t->start = malloc(sizeof(int) * (size_t)out);
    t->count = malloc(sizeof(int) * (size_t)out);
    t->w = eng_calloc(sizeof(int32_t) * (size_t)out * (size_t)ksize);
    double *tmp = malloc(sizeof(double) * (size_t)ksize);
    if (!t->start || !t->count || !t->w || !tmp) {
        free(tmp);
        return -1;
    }
    for (int i = 0; i < out; i++) {
        double centre = (i + 0.5) * scale, sum = 0.0;
        int lo = (int)(centre - support + 0.5), hi = (int)(centre + support + 0.5);
        if (lo < 0) lo = 0;
        if (hi > in) hi = in;
        int n = hi - lo;
        for (int j = 0; j < n; j++) {
            double x = fabs((j + lo - centre + 0.5) * ss);
            tmp[j] = x < 1.0 ? 1.0 - x : 0.0;
            sum += tmp[j];
        }
        int32_t *k = t->w + (size_t)i * ksize;
        for (int j = 0; j < n; j++) {
            double v = sum != 0.0 ? tmp[j] / sum : tmp[j];
            k[j] = (int32_t)(0.5 + v * (1 << PREC_BITS));
        }
        t->start[i] = lo;
        t->count[i] = n;
    }
    free(tmp);
    return 0;
}

static inline uint8_t clip8(int32_t v)
{
    if (v <= 0) return 0;
    if (v >= (256 << PREC_BITS)) return 255;
    return (uint8_t)(v >> PREC_BITS);
}

static void pass_h(const img_rgb8 *src, img_rgb8 *dst, const taps *t)
{
    for (int y = 0; y < src->h; y++) {
        const uint8_t *row = src->px + (size_t)y * src->w * 3;
        uint8_t *o = dst->px + (size_t)y * dst->w * 3;
        for (int x = 0; x < dst->w; x++) {
            const int32_t *k = t->w + (size_t)x * t->ksize;
            const uint8_t *p = row + (size_t)t->start[x] * 3;
            int32_t r = PREC_HALF, g = PREC_HALF, b = PREC_HALF;
            for (int j = 0, n = t->count[x]; j < n; j++) {
                r += p[3 * j] * k[j];
                g += p[3 * j + 1] * k[j];
                b += p[3 * j + 2] * k[j];
            }
            o[3 * x] = clip8(r);
            o[3 * x + 1] = clip8(g);
            o[3 * x + 2] = clip8(b);
        }
    }
}

/* The vertical pass is bound by 32-bit multiplies, which baseline x86-64 (SSE2) lacks; an
 * AVX2 clone picked at load time runs it twice as fast. */
#if defined(__x86_64__) && defined(__GNUC__)
#define PRE_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define PRE_CLONES
#endif

/* Row-wise accumulation: the inner loops run along whole rows, which vectorise. */
PRE_CLONES
static void pass_v(const img_rgb8 *src, img_rgb8 *dst, const taps *t, int32_t *acc)
{
    size_t n = (size_t)src->w * 3;
    for (int y = 0; y < dst->h; y++) {
        for (size_t i = 0; i < n; i++) acc[i] = PREC_HALF;
        for (int j = 0; j < t->count[y]; j++) {
            const uint8_t *row = src->px + (size_t)(t->start[y] + j) * n;
            int32_t k = t->w[(size_t)y * t->ksize + j];
#pragma omp simd
            for (size_t i = 0; i < n; i++) acc[i] += row[i] * k;
        }
        uint8_t *o = dst->px + (size_t)y * n;
#pragma omp simd
        for (size_t i = 0; i < n; i++) o[i] = clip8(acc[i]);
    }
}

static int check_img(const img_rgb8 *img, char *err, size_t errlen)
{
    if (!img || !img->px || img->w < 1 || img->h < 1)
        return eng_errf(err, errlen, ENG_EINVAL, "no image or an empty one");
    return 0;
}

/* Only the passes whose size changes run, horizontal first, through an 8-bit image as in PIL
 * (rounding between the passes is part of the result). */
static int resize_into(const img_rgb8 *src, img_rgb8 *dst)
{
    int need_h = dst->w != src->w, need_v = dst->h != src->h, rc = -1;
    taps th = {0}, tv = {0};
    img_rgb8 *mid = NULL;
    int32_t *acc = NULL;
    const img_rgb8 *cur = src;
    if (!need_h && !need_v) {
        memcpy(dst->px, src->px, (size_t)src->w * src->h * 3);
        return 0;
    }
    if (need_h) {
        if (need_v && !(mid = img_rgb8_new(dst->w, src->h))) goto fail;
        if (taps_build(src->w, dst->w, &th)) goto fail;
        pass_h(src, need_v ? mid : dst, &th);
        cur = mid;
    }
    if (need_v) {
        if (taps_build(src->h, dst->h, &tv)) goto fail;
        if (!(acc = eng_alloc(sizeof(int32_t) * (size_t)dst->w * 3))) goto fail;
        pass_v(cur, dst, &tv, acc);
    }
    rc = 0;
fail:
    taps_free(&th);
    taps_free(&tv);
    img_rgb8_free(mid);
    eng_free(acc);
    return rc;
}

int pre_resize(const img_rgb8 *src, int out_w, int out_h, img_rgb8 **out,
               char *err, size_t errlen)
{
    int rc;
    if (!out) return eng_errf(err, errlen, ENG_EINVAL, "pre_resize: no output");
    *out = NULL;
    if ((rc = check_img(src, err, errlen))) return rc;
    if (out_w < 1 || out_h < 1 || out_w > PRE_MAX_SIDE || out_h > PRE_MAX_SIDE)
        return eng_errf(err, errlen, ENG_EINVAL, "resize to %dx%d: sides must be 1..%d",
                        out_w, out_h, PRE_MAX_SIDE);
    img_rgb8 *dst = img_rgb8_new(out_w, out_h);
    if (!dst || resize_into(src, dst)) {
        img_rgb8_free(dst);
        return eng_errf(err, errlen, ENG_ENOMEM, "out of memory resizing %dx%d to %dx%d",
                        src->w, src->h, out_w, out_h);
    }
    *out = dst;
    return 0;
}

int pre_normalize(const img_rgb8 *img, int x0, int y0, int w, int h, int flip, float *dst,
                  char *err, size_t errlen)
{
    int rc = check_img(img, err, errlen);
    if (rc) return rc;
    if (!dst || w < 1 || h < 1 || x0 < 0 || y0 < 0 || x0 > img->w - w || y0 > img->h - h)
        return eng_errf(err, errlen, ENG_EINVAL, "window %dx%d at (%d, %d) is not inside %dx%d",
                        w, h, x0, y0, img->w, img->h);
    /* The same two float32 operations as ToTensor and Normalize, tabulated per byte. */
    float lut[256];
    for (int i = 0; i < 256; i++) lut[i] = ((float)i / 255.0f - 0.5f) / 0.5f;
    size_t plane = (size_t)w * h;
    for (int y = 0; y < h; y++) {
        const uint8_t *row = img->px + ((size_t)(y0 + y) * img->w + x0) * 3;
        float *r = dst + (size_t)y * w, *g = r + plane, *b = g + plane;
        ptrdiff_t step = flip ? -3 : 3;
        const uint8_t *p = flip ? row + (size_t)(w - 1) * 3 : row;
        for (int x = 0; x < w; x++, p += step) {
            r[x] = lut[p[0]];
            g[x] = lut[p[1]];
            b[x] = lut[p[2]];
        }
    }
    return 0;
}

int pre_eval(const img_rgb8 *src, int crop, float *dst, char *err, size_t errlen)
{
    img_rgb8 *r = NULL;
    int rc = pre_resize(src, crop, crop, &r, err, errlen);
    if (!rc) rc = pre_normalize(r, 0, 0, crop, crop, 0, dst, err, errlen);
    img_rgb8_free(r);
    return rc;
}

void pre_aug_draw(eng_rng *rng, int precrop, int crop, pre_aug *aug)
{
    uint64_t range = precrop >= crop ? (uint64_t)(precrop - crop) + 1 : 1;
    aug->y0 = (int)eng_rng_below(rng, range);
    aug->x0 = (int)eng_rng_below(rng, range);
    aug->flip = eng_rng_uniform(rng) < 0.5;
}

int pre_train(const img_rgb8 *src, int precrop, int crop, const pre_aug *aug, float *dst,
              char *err, size_t errlen)
{
    if (!aug || crop < 1 || precrop < crop)
        return eng_errf(err, errlen, ENG_EINVAL, "train crop %d of %d: need 1 <= crop <= precrop",
                        crop, precrop);
    img_rgb8 *r = NULL;
    int rc = pre_resize(src, precrop, precrop, &r, err, errlen);
    if (!rc) rc = pre_normalize(r, aug->x0, aug->y0, crop, crop, aug->flip, dst, err, errlen);
    img_rgb8_free(r);
    return rc;
}
