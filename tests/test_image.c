/* Image decoding and BiT pre-processing. Test images are made with the libjpeg-turbo and
 * libpng encoders of timg.h; the fixtures check decoding and the PIL-exact resize against a
 * reference.
 * `test_image --bench` measures decode + pre-processing throughput instead (not run by make
 * check). */
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#include <jpeglib.h>
#include <png.h>

#include "npy.h"
#include "preproc.h"
#include "t.h"
#include "timg.h"

static char err[512];

/* ---- synthetic images (the generators and encoders live in timg.h) --------------------- */

static img_rgb8 *wrap(const uint8_t *px, int w, int h)
{
    img_rgb8 *img = img_rgb8_new(w, h);
    memcpy(img->px, px, (size_t)w * h * 3);
    return img;
}

typedef struct diff { int max; double mean; } diff;

static diff diff_u8(const uint8_t *a, const uint8_t *b, size_t n)
{
    diff d = {0, 0.0};
    for (size_t i = 0; i < n; i++) {
        int e = abs((int)a[i] - (int)b[i]);
        if (e > d.max) d.max = e;
        d.mean += e;
    }
    d.mean /= (double)(n ? n : 1);
    return d;
}

/* ---- fixtures -------------------------------------------------------------------------- */

static const char *fixture_names[] = {"rgb160", "gray100x90", "rgb200x120", "graphic64x48"};

static img_rgb8 *load_raw(const char *name)
{
    char f[128];
    snprintf(f, sizeof f, "raw_%s.npy", name);
    eng_tensor *t = NULL;
    if (eng_npy_load(t_fixture(f), &t, err, sizeof err)) return NULL;
    img_rgb8 *img = NULL;
    if (t->dtype == ENG_U8 && t->ndim == 3 && t->shape[2] == 3)
        img = wrap(t->data, (int)t->shape[1], (int)t->shape[0]);
    eng_tensor_free(t);
    return img;
}

static void fixtures_decode(void)
{
    for (size_t i = 0; i < sizeof fixture_names / sizeof *fixture_names; i++) {
        const char *nm = fixture_names[i];
        int is_png = !strcmp(nm, "graphic64x48");
        char f[128];
        snprintf(f, sizeof f, "img_%s.%s", nm, is_png ? "png" : "jpg");
        img_rgb8 *ref = load_raw(nm), *got = NULL;
        T_REQUIRE(ref);
        int rc = img_load_file(t_fixture(f), NULL, 0, &got, err, sizeof err);
        T_CHECKF(rc == 0, "%s: %s", f, err);
        if (rc) { img_rgb8_free(ref); continue; }
        T_CHECKF(got->w == ref->w && got->h == ref->h, "%s: %dx%d vs %dx%d", f, got->w, got->h,
                 ref->w, ref->h);
        if (got->w == ref->w && got->h == ref->h) {
            diff d = diff_u8(got->px, ref->px, (size_t)ref->w * ref->h * 3);
            if (is_png) T_CHECKF(d.max == 0, "%s: max diff %d", f, d.max);
            else T_CHECKF(d.max <= 8 && d.mean <= 1.0, "%s: max %d mean %.3f", f, d.max, d.mean);
        }
        img_rgb8_free(got);
        img_rgb8_free(ref);
    }
}

static int load_pre(const char *name, eng_tensor **t)
{
    char f[128];
    snprintf(f, sizeof f, "pre_%s.npy", name);
    int64_t shape[] = {3, 128, 128};
    return eng_npy_load(t_fixture(f), t, err, sizeof err) == 0 && eng_tensor_is_f32(*t, 3, shape);
}

static void fixtures_preprocess(void)
{
    float *got = malloc(sizeof(float) * 3 * 128 * 128);
    for (size_t i = 0; i < sizeof fixture_names / sizeof *fixture_names; i++) {
        const char *nm = fixture_names[i];
        img_rgb8 *raw = load_raw(nm);
        eng_tensor *ref = NULL;
        T_REQUIRE(raw && load_pre(nm, &ref));
        T_REQUIRE(pre_eval(raw, 128, got, err, sizeof err) == 0);
        const float *r = ref->data;
        double maxd = 0, sum = 0;
        for (int k = 0; k < 3 * 128 * 128; k++) {
            double d = fabs((double)got[k] - (double)r[k]);
            if (d > maxd) maxd = d;
            sum += d;
        }
        double mean = sum / (3 * 128 * 128);
        T_CHECKF(maxd == 0.0, "%s: resize not bit-exact, max diff %g", nm, maxd);
        T_CHECKF(maxd <= 0.016 && mean <= 0.0035, "%s: max %g mean %g", nm, maxd, mean);
        img_rgb8_free(raw);
        eng_tensor_free(ref);
    }
    /* The PNG decodes exactly, so file -> decode -> eval reproduces the reference too. */
    img_rgb8 *img = NULL;
    eng_tensor *ref = NULL;
    const char *png = t_fixture("img_graphic64x48.png");
    T_REQUIRE(img_load_file(png, NULL, 0, &img, err, sizeof err) == 0);
    T_REQUIRE(load_pre("graphic64x48", &ref));
    T_CHECK(pre_eval(img, 128, got, err, sizeof err) == 0 &&
            !memcmp(got, ref->data, sizeof(float) * 3 * 128 * 128));
    img_rgb8_free(img);
    eng_tensor_free(ref);
    free(got);
}

/* ---- JPEG variants --------------------------------------------------------------------- */

/* q95 on smooth gradients: a correct decoder stays within a couple of levels on average;
 * channel, subsampling or colour-space mistakes cost tens. */
static void check_jpeg_roundtrip(const char *what, const uint8_t *jpg, size_t len,
                                 const uint8_t *want, int w, int h)
{
    img_rgb8 *img = NULL;
    int rc = img_decode(jpg, len, NULL, 0, &img, err, sizeof err);
    T_CHECKF(rc == 0, "%s: %s", what, err);
    if (rc) return;
    T_CHECKF(img->w == w && img->h == h, "%s: %dx%d", what, img->w, img->h);
    if (img->w == w && img->h == h) {
        diff d = diff_u8(img->px, want, (size_t)w * h * 3);
        T_CHECKF(d.mean <= 1.5 && d.max <= 8, "%s: max %d mean %.3f", what, d.max, d.mean);
    }
    img_rgb8_free(img);
}

static void jpeg_subsampling(void)
{
    /* 4:4:4, 4:2:2, 4:2:0, 4:4:0, 4:1:1; odd sizes leave partial MCUs at the edges. */
    static const int f[][2] = {{1, 1}, {2, 1}, {2, 2}, {1, 2}, {4, 1}};
    const int w = 121, h = 77;
    uint8_t *px = make_rgb(w, h);
    for (int prog = 0; prog < 2; prog++)
        for (size_t i = 0; i < sizeof f / sizeof *f; i++) {
            jpeg_opts o = {.quality = 95, .progressive = prog, .hs = f[i][0], .vs = f[i][1]};
            size_t len;
            uint8_t *j = jpeg_encode(px, w, h, &o, &len);
            char what[64];
            snprintf(what, sizeof what, "%dx%d %s", f[i][0], f[i][1],
                     prog ? "progressive" : "baseline");
            check_jpeg_roundtrip(what, j, len, px, w, h);
            free(j);
        }
    free(px);
}

static void jpeg_gray(void)
{
    const int w = 50, h = 31;
    uint8_t *g = malloc((size_t)w * h), *want = malloc((size_t)w * h * 3);
    for (int i = 0; i < w * h; i++) {
        g[i] = (uint8_t)((i % w) * 5);
        memset(want + 3 * i, g[i], 3);
    }
    jpeg_opts o = {.quality = 95, .in_cs = JCS_GRAYSCALE};
    size_t len;
    uint8_t *j = jpeg_encode(g, w, h, &o, &len);
    check_jpeg_roundtrip("gray", j, len, want, w, h);
    img_rgb8 *img = NULL;
    T_REQUIRE(img_decode(j, len, NULL, 0, &img, err, sizeof err) == 0);
    int same = 1;
    for (int i = 0; i < w * h; i++)
        same &= img->px[3 * i] == img->px[3 * i + 1] && img->px[3 * i] == img->px[3 * i + 2];
    T_CHECK(same);
    img_rgb8_free(img);
    free(j);
    free(g);
    free(want);
}

/* Photoshop-style (Adobe) CMYK stores 255 - ink, so the expected RGB is c * k / 255 of the
 * stored values; YCCK is the same data behind a colour transform. */
static void jpeg_cmyk(void)
{
    const int w = 40, h = 24;
    uint8_t *cmyk = malloc((size_t)w * h * 4), *want = malloc((size_t)w * h * 3);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            uint8_t *p = cmyk + (y * w + x) * 4, *q = want + (y * w + x) * 3;
            p[0] = (uint8_t)(255 - x * 3);
            p[1] = (uint8_t)(100 + y * 4);
            p[2] = (uint8_t)(60 + x * 2 + y);
            p[3] = (uint8_t)(255 - y * 3);
            for (int c = 0; c < 3; c++) q[c] = (uint8_t)((p[c] * p[3] + 127) / 255);
        }
    J_COLOR_SPACE spaces[] = {JCS_CMYK, JCS_YCCK};
    for (int i = 0; i < 2; i++) {
        jpeg_opts o = {.quality = 95, .in_cs = JCS_CMYK, .jpeg_cs = spaces[i]};
        size_t len;
        uint8_t *j = jpeg_encode(cmyk, w, h, &o, &len);
        check_jpeg_roundtrip(i ? "ycck" : "cmyk", j, len, want, w, h);
        free(j);
    }
    free(cmyk);
    free(want);
}

static void tiny_images(void)
{
    uint8_t px[3] = {200, 30, 90};
    jpeg_opts o = {.quality = 100, .hs = 1, .vs = 1};
    size_t len;
    uint8_t *j = jpeg_encode(px, 1, 1, &o, &len);
    check_jpeg_roundtrip("1x1 jpeg", j, len, px, 1, 1);
    free(j);
    png_opts po = {PNG_COLOR_TYPE_RGB, 8, 0, NULL, 0, NULL, 0, NULL};
    uint8_t *p = png_encode(px, 3, 1, 1, &po, &len);
    img_rgb8 *img = NULL;
    T_REQUIRE(img_decode(p, len, NULL, 0, &img, err, sizeof err) == 0);
    T_CHECK(img->w == 1 && img->h == 1 && !memcmp(img->px, px, 3));
    img_rgb8_free(img);
    free(p);
}

/* ---- PNG variants ---------------------------------------------------------------------- */

static void check_png(const char *what, const uint8_t *rows, size_t stride, int w, int h,
                      const png_opts *o, const uint8_t *want)
{
    size_t len;
    uint8_t *p = png_encode(rows, stride, w, h, o, &len);
    img_rgb8 *img = NULL;
    T_REQUIRE(p);
    int rc = img_decode(p, len, NULL, 0, &img, err, sizeof err);
    T_CHECKF(rc == 0, "%s: %s", what, err);
    if (!rc) {
        T_CHECKF(img->w == w && img->h == h && !memcmp(img->px, want, (size_t)w * h * 3),
                 "%s: pixels differ", what);
        img_info info;
        T_CHECKF(img_probe(p, len, &info, err, sizeof err) == 0 && info.format == IMG_PNG &&
                 info.width == w && info.height == h, "%s: probe", what);
    }
    img_rgb8_free(img);
    free(p);
}

static void png_rgb_kinds(void)
{
    const int w = 23, h = 17;
    uint8_t *rgb = make_rgb(w, h), *noise = make_noise(w * h * 4, 3);
    png_opts o = {PNG_COLOR_TYPE_RGB, 8, 0, NULL, 0, NULL, 0, NULL};
    check_png("rgb8", rgb, (size_t)w * 3, w, h, &o, rgb);
    o.interlace = 1;
    check_png("rgb8 interlaced", rgb, (size_t)w * 3, w, h, &o, rgb);
    /* 16 bits: the high byte is the 8-bit value; the low byte must not leak in. */
    uint8_t *r16 = malloc((size_t)w * h * 6), *rgba = malloc((size_t)w * h * 4);
    for (int i = 0; i < w * h * 3; i++) {
        r16[2 * i] = rgb[i];
        r16[2 * i + 1] = noise[i];
    }
    o = (png_opts){PNG_COLOR_TYPE_RGB, 16, 0, NULL, 0, NULL, 0, NULL};
    check_png("rgb16", r16, (size_t)w * 6, w, h, &o, rgb);
    o.interlace = 1;
    check_png("rgb16 interlaced", r16, (size_t)w * 6, w, h, &o, rgb);
    /* Alpha is dropped, not composited: the colour is what was stored. */
    for (int i = 0; i < w * h; i++) {
        memcpy(rgba + 4 * i, rgb + 3 * i, 3);
        rgba[4 * i + 3] = noise[i];
    }
    o = (png_opts){PNG_COLOR_TYPE_RGB_ALPHA, 8, 0, NULL, 0, NULL, 0, NULL};
    check_png("rgba", rgba, (size_t)w * 4, w, h, &o, rgb);
    png_color_16 key = {.red = rgb[0], .green = rgb[1], .blue = rgb[2]};
    o = (png_opts){PNG_COLOR_TYPE_RGB, 8, 0, NULL, 0, NULL, 0, &key};
    check_png("rgb tRNS", rgb, (size_t)w * 3, w, h, &o, rgb);
    free(r16);
    free(rgba);
    free(rgb);
    free(noise);
}

static void png_gray_kinds(void)
{
    const int w = 19, h = 11;
    uint8_t *g = make_noise(w * h, 5), *ga = malloc((size_t)w * h * 2);
    uint8_t *g16 = malloc((size_t)w * h * 2);
    uint8_t *want = malloc((size_t)w * h * 3), *bits = calloc((size_t)h, (size_t)(w + 7) / 8);
    uint8_t *want1 = malloc((size_t)w * h * 3);
    for (int i = 0; i < w * h; i++) {
        memset(want + 3 * i, g[i], 3);
        ga[2 * i] = g[i];
        ga[2 * i + 1] = (uint8_t)(255 - g[i]);
        g16[2 * i] = g[i];
        g16[2 * i + 1] = (uint8_t)i;
        int on = (i % w + i / w) % 3 == 0, bpr = (w + 7) / 8;
        if (on) bits[(i / w) * bpr + (i % w) / 8] |= (uint8_t)(0x80 >> (i % w % 8));
        memset(want1 + 3 * i, on ? 255 : 0, 3);
    }
    png_opts o = {PNG_COLOR_TYPE_GRAY, 8, 0, NULL, 0, NULL, 0, NULL};
    check_png("gray8", g, (size_t)w, w, h, &o, want);
    png_color_16 key = {.gray = g[0]};
    o.trns_color = &key;
    check_png("gray8 tRNS", g, (size_t)w, w, h, &o, want);
    o = (png_opts){PNG_COLOR_TYPE_GRAY_ALPHA, 8, 1, NULL, 0, NULL, 0, NULL};
    check_png("gray+alpha interlaced", ga, (size_t)w * 2, w, h, &o, want);
    o = (png_opts){PNG_COLOR_TYPE_GRAY, 16, 0, NULL, 0, NULL, 0, NULL};
    check_png("gray16", g16, (size_t)w * 2, w, h, &o, want);
    o = (png_opts){PNG_COLOR_TYPE_GRAY, 1, 0, NULL, 0, NULL, 0, NULL};
    check_png("gray1", bits, (size_t)(w + 7) / 8, w, h, &o, want1);
    free(g);
    free(ga);
    free(g16);
    free(want);
    free(want1);
    free(bits);
}

static void png_palette(void)
{
    const int w = 21, h = 13, npal = 7;
    png_color pal[7];
    uint8_t trns[7], *idx = malloc((size_t)w * h), *want = malloc((size_t)w * h * 3);
    uint8_t *packed = calloc((size_t)h, (size_t)(w + 1) / 2);
    for (int i = 0; i < npal; i++) {
        pal[i] = (png_color){(uint8_t)(i * 37), (uint8_t)(250 - i * 30), (uint8_t)(i * i * 5)};
        trns[i] = (uint8_t)(i * 40);
    }
    for (int i = 0; i < w * h; i++) {
        idx[i] = (uint8_t)((i * 5 + i / w) % npal);
        memcpy(want + 3 * i, &pal[idx[i]], 3);
        packed[(i / w) * ((w + 1) / 2) + (i % w) / 2] |= (uint8_t)(idx[i] << (i % w % 2 ? 0 : 4));
    }
    png_opts o = {PNG_COLOR_TYPE_PALETTE, 8, 0, pal, npal, NULL, 0, NULL};
    check_png("palette8", idx, (size_t)w, w, h, &o, want);
    o.trns = trns;
    o.ntrns = npal;
    check_png("palette8 tRNS", idx, (size_t)w, w, h, &o, want);
    o = (png_opts){PNG_COLOR_TYPE_PALETTE, 4, 1, pal, npal, trns, 3, NULL};
    check_png("palette4 tRNS interlaced", packed, (size_t)(w + 1) / 2, w, h, &o, want);
    free(idx);
    free(want);
    free(packed);
}

/* ---- EXIF orientation ------------------------------------------------------------------ */

static void put16(uint8_t *p, unsigned v, int le)
{
    p[le ? 0 : 1] = (uint8_t)v;
    p[le ? 1 : 0] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v, int le)
{
    put16(p + (le ? 0 : 2), v & 0xFFFF, le);
    put16(p + (le ? 2 : 0), v >> 16, le);
}

/* An APP1 payload: "Exif\0\0", TIFF header, IFD0 with Make (inline "abc") then Orientation. */
static size_t exif_build(uint8_t *b, unsigned orientation, int le)
{
    memcpy(b, "Exif\0\0", 6);
    uint8_t *t = b + 6;
    t[0] = t[1] = le ? 'I' : 'M';
    put16(t + 2, 42, le);
    put32(t + 4, 8, le);
    put16(t + 8, 2, le);
    uint8_t *e = t + 10;
    put16(e, 0x010F, le);
    put16(e + 2, 2, le);
    put32(e + 4, 4, le);
    memcpy(e + 8, "abc", 4);
    e += 12;
    put16(e, 0x0112, le);
    put16(e + 2, 3, le);
    put32(e + 4, 1, le);
    put32(e + 8, 0, le);
    put16(e + 8, orientation, le);
    put32(e + 12, 0, le); /* no next IFD */
    return 6 + 10 + 24 + 4;
}

enum { TL, TR, BL, BR };

/* 48x32 grey, a red block at the stored top-left, a green one at the stored top-right. */
static uint8_t *corner_image(int w, int h)
{
    uint8_t *p = malloc((size_t)w * h * 3);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            uint8_t *q = p + (y * w + x) * 3;
            int red = x < 16 && y < 16, green = x >= w - 16 && y < 16;
            q[0] = red ? 255 : green ? 0 : 128;
            q[1] = green ? 255 : red ? 0 : 128;
            q[2] = red || green ? 0 : 128;
        }
    return p;
}

static const uint8_t *corner_px(const img_rgb8 *img, int corner)
{
    int x = corner == TL || corner == BL ? 4 : img->w - 5;
    int y = corner == TL || corner == TR ? 4 : img->h - 5;
    return img->px + ((size_t)y * img->w + x) * 3;
}

static int is_color(const uint8_t *p, int r, int g, int b)
{
    return abs(p[0] - r) < 40 && abs(p[1] - g) < 40 && abs(p[2] - b) < 40;
}

static void exif_orientations(void)
{
    /* Where the stored top-left (red) and top-right (green) corners are displayed, from the
     * definitions of the eight EXIF orientations. */
    static const int red_at[9] = {0, TL, TR, BR, BL, TL, TR, BR, BL};
    static const int green_at[9] = {0, TR, TL, BL, BR, BL, BR, TR, TL};
    const int w = 48, h = 32;
    uint8_t *px = corner_image(w, h), app1[64];
    for (int le = 0; le < 2; le++)
        for (unsigned o = 1; o <= 8; o++) {
            jpeg_opts jo = {.quality = 95, .hs = 1, .vs = 1, .app1 = app1,
                            .app1_len = exif_build(app1, o, le)};
            size_t len;
            uint8_t *j = jpeg_encode(px, w, h, &jo, &len);
            img_rgb8 *img = NULL;
            img_info info;
            int swap = o >= 5, dw = swap ? h : w, dh = swap ? w : h;
            T_REQUIRE(img_decode(j, len, NULL, 0, &img, err, sizeof err) == 0);
            T_CHECKF(img->w == dw && img->h == dh, "orientation %u: %dx%d", o, img->w, img->h);
            T_CHECKF(is_color(corner_px(img, red_at[o]), 255, 0, 0), "orientation %u red", o);
            T_CHECKF(is_color(corner_px(img, green_at[o]), 0, 255, 0), "orientation %u green", o);
            T_EQ(img_probe(j, len, &info, err, sizeof err), 0);
            T_CHECKF(info.format == IMG_JPEG && info.orientation == (int)o && info.width == dw &&
                     info.height == dh, "probe %u: %dx%d o%d", o, info.width, info.height,
                     info.orientation);
            img_rgb8_free(img);
            free(j);
        }
    free(px);
}

/* A damaged EXIF block is ignored: the pixels decode, unrotated. */
static void exif_malformed(void)
{
    const int w = 48, h = 32;
    uint8_t *px = corner_image(w, h), good[64];
    size_t glen = exif_build(good, 6, 1);
    for (int k = 0; k < 7; k++) {
        uint8_t b[64];
        size_t n = glen;
        memcpy(b, good, glen);
        switch (k) {
        case 0: put32(b + 10, 60000, 1); break;     /* IFD offset past the end */
        case 1: /* more entries than bytes, none of them the orientation */
            put16(b + 14, 900, 1);
            put16(b + 6 + 10 + 12, 0x0113, 1);
            break;
        case 2: put16(b + 6 + 10 + 12 + 8, 9, 1); break; /* orientation out of range */
        case 3: put16(b + 6 + 10 + 12 + 2, 7, 1); break; /* type UNDEFINED */
        case 4: b[6] = 'X'; break;                  /* no byte order */
        case 5: n = 12; break;                      /* cut inside the TIFF header */
        case 6: n = 6 + 10 + 12 + 6; break;         /* cut inside the orientation entry */
        }
        jpeg_opts jo = {.quality = 95, .hs = 1, .vs = 1, .app1 = b, .app1_len = n};
        size_t len;
        uint8_t *j = jpeg_encode(px, w, h, &jo, &len);
        img_rgb8 *img = NULL;
        T_REQUIRE(img_decode(j, len, NULL, 0, &img, err, sizeof err) == 0);
        T_CHECKF(img->w == w && img->h == h && is_color(corner_px(img, TL), 255, 0, 0),
                 "variant %d", k);
        img_rgb8_free(img);
        free(j);
    }
    free(px);
}

/* ---- DCT scaling ----------------------------------------------------------------------- */

static void dct_scaling(void)
{
    const int w = 1024, h = 768;
    jpeg_opts o = {.quality = 90};
    size_t len;
    uint8_t *j = jpeg_rgb(w, h, &o, &len);
    img_rgb8 *full = NULL, *small = NULL, *ref = NULL;
    T_REQUIRE(img_decode(j, len, NULL, 0, &full, err, sizeof err) == 0);
    T_CHECK(full->w == w && full->h == h);
    int hints[] = {1, 96, 97, 128, 200, 384, 385, 480, 768, 5000};
    for (size_t i = 0; i < sizeof hints / sizeof *hints; i++) {
        int hint = hints[i], n = 1;
        /* the spec: the smallest of 1/8, 2/8, 4/8 whose rounded-up sides are both >= hint */
        while (n < 8 && !((w * n + 7) / 8 >= hint && (h * n + 7) / 8 >= hint)) n *= 2;
        T_REQUIRE(img_decode(j, len, NULL, hint, &small, err, sizeof err) == 0);
        T_CHECKF(small->w == (w * n + 7) / 8 && small->h == (h * n + 7) / 8,
                 "hint %d: %dx%d, want n=%d", hint, small->w, small->h, n);
        T_CHECK(hint > h || (small->w >= hint && small->h >= hint));
        if (hint == 128) T_CHECK(small->w < w && small->h < h);
        /* DCT scaling is a low-pass reduction: close to resizing the full decode. */
        T_REQUIRE(pre_resize(full, small->w, small->h, &ref, err, sizeof err) == 0);
        diff d = diff_u8(small->px, ref->px, (size_t)small->w * small->h * 3);
        T_CHECKF(d.mean <= 2.0, "hint %d: mean %.3f", hint, d.mean);
        img_rgb8_free(small);
        img_rgb8_free(ref);
    }
    img_rgb8_free(full);
    free(j);
}

/* A valid progressive JPEG of 570 scans (one coefficient per scan, three successive
 * approximation steps): more than IMG_MAX_JPEG_SCANS, so refused before it eats the CPU. */
static void jpeg_scan_limit(void)
{
    enum { NS = 3 + 3 * 63 * 3 };
    jpeg_scan_info *sc = malloc(sizeof *sc * NS);
    int n = 0;
    for (int al = 2; al >= 0; al--) {
        sc[n++] = (jpeg_scan_info){3, {0, 1, 2, 0}, 0, 0, al == 2 ? 0 : al + 1, al};
        for (int comp = 0; comp < 3; comp++)
            for (int k = 1; k < 64; k++)
                sc[n++] = (jpeg_scan_info){1, {comp, 0, 0, 0}, k, k, al == 2 ? 0 : al + 1, al};
    }
    T_CHECK(n == NS && NS > IMG_MAX_JPEG_SCANS);
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr e;
    c.err = jpeg_std_error(&e);
    jpeg_create_compress(&c);
    unsigned char *buf = NULL;
    unsigned long len = 0;
    jpeg_mem_dest(&c, &buf, &len);
    c.image_width = 32;
    c.image_height = 16;
    c.input_components = 3;
    c.in_color_space = JCS_RGB;
    jpeg_set_defaults(&c);
    c.scan_info = sc;
    c.num_scans = NS;
    uint8_t *px = make_rgb(32, 16);
    jpeg_start_compress(&c, TRUE);
    for (int y = 0; y < 16; y++) {
        JSAMPROW row = px + y * 32 * 3;
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    img_rgb8 *img = NULL;
    T_CHECKF(img_decode(buf, len, NULL, 0, &img, err, sizeof err) == ENG_ELIMIT && !img,
             "%s", err);
    T_CHECK(strstr(err, "scans") != NULL);
    free(buf);
    free(px);
    free(sc);
}

/* ---- limits ---------------------------------------------------------------------------- */

static uint32_t crc32_png(const uint8_t *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1)));
    }
    return ~c;
}

static size_t png_chunk(uint8_t *o, const char *type, const uint8_t *data, uint32_t n)
{
    put32(o, n, 0);
    memcpy(o + 4, type, 4);
    if (n) memcpy(o + 8, data, n);
    put32(o + 8 + n, crc32_png(o + 4, n + 4), 0);
    return 12 + n;
}

/* A well-formed PNG header claiming w x h, with a token IDAT. */
static size_t png_huge(uint8_t *o, uint32_t w, uint32_t h)
{
    uint8_t ihdr[13] = {0}, idat[8] = {0x78, 0x9c, 0x63, 0, 0, 0, 1, 0};
    put32(ihdr, w, 0);
    put32(ihdr + 4, h, 0);
    ihdr[8] = 8;
    ihdr[9] = 2;
    memcpy(o, "\x89PNG\r\n\x1a\n", 8);
    size_t n = 8;
    n += png_chunk(o + n, "IHDR", ihdr, 13);
    n += png_chunk(o + n, "IDAT", idat, sizeof idat);
    n += png_chunk(o + n, "IEND", NULL, 0);
    return n;
}

/* Offset of the frame header (SOF0..SOF2 marker) of a JPEG, or 0. */
static size_t jpeg_sof_at(const uint8_t *j, size_t len)
{
    for (size_t i = 2; i + 9 < len && j[i] == 0xFF;) {
        if (j[i + 1] >= 0xC0 && j[i + 1] <= 0xC2) return i;
        i += 2 + ((size_t)j[i + 2] << 8 | j[i + 3]);
    }
    return 0;
}

/* Rewrites the frame header to claim w x h. */
static int jpeg_set_size(uint8_t *j, size_t len, unsigned w, unsigned h)
{
    size_t at = jpeg_sof_at(j, len);
    if (!at) return -1;
    put16(j + at + 5, h, 0);
    put16(j + at + 7, w, 0);
    return 0;
}

static void limits_huge_headers(void)
{
    uint8_t p[128];
    size_t n = png_huge(p, 100000, 100000);
    img_rgb8 *img = NULL;
    double t0 = (eng_now_ms() / 1e3);
    T_CHECK(img_decode(p, n, NULL, 0, &img, err, sizeof err) == ENG_ELIMIT && !img);
    T_CHECK(strstr(err, "limit") != NULL);
    img_info info;
    T_CHECK(img_probe(p, n, &info, err, sizeof err) == 0 && info.width == 100000 &&
            info.height == 100000);
    size_t len;
    jpeg_opts o = {.quality = 80};
    uint8_t *j = jpeg_rgb(64, 48, &o, &len);
    T_REQUIRE(jpeg_set_size(j, len, 65000, 65000) == 0);
    T_CHECK(img_decode(j, len, NULL, 0, &img, err, sizeof err) == ENG_ELIMIT && !img);
    T_CHECK(img_probe(j, len, &info, err, sizeof err) == 0 && info.width == 65000);
    /* Refused from the header alone: no 12-30 GB allocation, no decoding. */
    T_CHECKF((eng_now_ms() / 1e3) - t0 < 0.25, "took %.3f s", (eng_now_ms() / 1e3) - t0);
    free(j);
}

static void limits_configured(void)
{
    size_t jlen, plen;
    jpeg_opts o = {.quality = 80};
    uint8_t *j = jpeg_rgb(64, 48, &o, &jlen), *p = png_rgb(64, 48, 0, &plen);
    img_rgb8 *img = NULL;
    img_limits px = {.max_pixels = 64 * 48 - 1}, side = {.max_side = 63}, ok = {64 * 48, 64, 0};
    T_CHECK(img_decode(j, jlen, &px, 0, &img, err, sizeof err) == ENG_ELIMIT && !img);
    T_CHECK(img_decode(p, plen, &px, 0, &img, err, sizeof err) == ENG_ELIMIT && !img);
    T_CHECK(img_decode(j, jlen, &side, 0, &img, err, sizeof err) == ENG_ELIMIT && !img);
    T_CHECK(img_decode(p, plen, &side, 0, &img, err, sizeof err) == ENG_ELIMIT && !img);
    T_CHECK(img_decode(j, jlen, &ok, 0, &img, err, sizeof err) == 0 && img);
    img_rgb8_free(img);
    T_CHECK(img_decode(p, plen, &ok, 0, &img, err, sizeof err) == 0 && img);
    img_rgb8_free(img);
    T_EQ(img_decode(p, plen, NULL, -1, &img, err, sizeof err), ENG_EINVAL);
    free(j);
    free(p);
}

/* ---- corrupt input --------------------------------------------------------------------- */

static void check_all_cuts(const char *what, const uint8_t *buf, size_t len)
{
    size_t step = len / 300 + 1;
    for (size_t cut = 0; cut < len; cut += cut < 400 ? 1 : step) {
        uint8_t *copy = malloc(cut ? cut : 1); /* exact size, so ASan sees any over-read */
        memcpy(copy, buf, cut);
        img_rgb8 *img = NULL;
        err[0] = 0;
        int rc = img_decode(copy, cut, NULL, 0, &img, err, sizeof err);
        T_CHECKF(rc < 0 && !img && err[0], "%s cut at %zu of %zu: rc %d", what, cut, len, rc);
        img_info info;
        img_probe(copy, cut, &info, err, sizeof err);
        img_rgb8_free(img);
        free(copy);
    }
}

static void truncated(void)
{
    size_t len;
    jpeg_opts base = {.quality = 90}, prog = {.quality = 90, .progressive = 1};
    uint8_t *a = jpeg_rgb(97, 61, &base, &len);
    check_all_cuts("baseline jpeg", a, len);
    free(a);
    a = jpeg_rgb(97, 61, &prog, &len);
    check_all_cuts("progressive jpeg", a, len);
    /* libjpeg's own message for a cut-off file is a warning; ours is an error that says so */
    img_rgb8 *img = NULL;
    T_EQ(img_decode(a, len * 2 / 3, NULL, 0, &img, err, sizeof err), ENG_EFORMAT);
    T_CHECK(strstr(err, "premature end of data") != NULL);
    free(a);
    a = png_rgb(97, 61, 0, &len);
    check_all_cuts("png", a, len);
    free(a);
    a = png_rgb(97, 61, 1, &len);
    check_all_cuts("interlaced png", a, len);
    free(a);
}

/* Flipped bits and overwritten bytes within [lo, hi): an error with a reason or a
 * well-formed image. */
static void check_mutations(const char *what, const uint8_t *buf, size_t len, size_t lo,
                            size_t hi, uint64_t seed)
{
    eng_rng r;
    eng_rng_seed(&r, seed);
    uint8_t *copy = malloc(len);
    for (int trial = 0; trial < 600; trial++) {
        memcpy(copy, buf, len);
        int flips = 1 + (int)eng_rng_below(&r, trial < 300 ? 1 : 8);
        for (int f = 0; f < flips; f++) {
            size_t at = lo + (size_t)eng_rng_below(&r, hi - lo);
            if (trial % 4 == 3) copy[at] = (uint8_t)eng_rng_below(&r, 256);
            else copy[at] ^= (uint8_t)(1u << eng_rng_below(&r, 8));
        }
        img_rgb8 *img = NULL;
        err[0] = 0;
        int rc = img_decode(copy, len, NULL, trial % 3 ? 0 : 16, &img, err, sizeof err);
        if (rc == 0)
            T_CHECKF(img && img->w > 0 && img->h > 0 && img->px, "%s trial %d", what, trial);
        else T_CHECKF(!img && err[0], "%s trial %d: rc %d without a reason", what, trial, rc);
        if (img) img->px[(size_t)img->w * img->h * 3 - 1] ^= 1; /* touch the last byte */
        img_rgb8_free(img);
        img_info info;
        img_probe(copy, len, &info, err, sizeof err);
    }
    free(copy);
}

static void bit_flips(void)
{
    size_t len;
    jpeg_opts base = {.quality = 90}, prog = {.quality = 90, .progressive = 1},
              cmyk = {.quality = 90, .in_cs = JCS_CMYK};
    uint8_t *a = jpeg_rgb(64, 40, &base, &len);
    check_mutations("baseline jpeg", a, len, 0, len, 1);
    free(a);
    a = jpeg_rgb(64, 40, &prog, &len);
    check_mutations("progressive jpeg", a, len, 0, len, 2);
    free(a);
    uint8_t *ink = make_noise(32 * 16 * 4, 9);
    a = jpeg_encode(ink, 32, 16, &cmyk, &len);
    check_mutations("cmyk jpeg", a, len, 0, len, 3);
    free(a);
    free(ink);
    a = png_rgb(64, 40, 1, &len);
    check_mutations("interlaced png", a, len, 0, len, 4);
    free(a);
    /* damage confined to the EXIF block: its parser sees bad offsets, counts and types */
    uint8_t app1[64];
    jpeg_opts ex = {.quality = 50, .app1 = app1, .app1_len = exif_build(app1, 6, 0)};
    a = jpeg_rgb(8, 8, &ex, &len);
    uint8_t *at = memmem(a, len, "Exif", 4);
    T_REQUIRE(at);
    check_mutations("exif jpeg", a, len, (size_t)(at - a), (size_t)(at - a) + ex.app1_len, 5);
    free(a);
}

static void unsupported(void)
{
    static const char *magic[] = {
        "GIF87a\x10\x00\x10\x00\x80\x00\x00", "GIF89a\x10\x00\x10\x00\x80\x00\x00",
        "RIFF\x24\x00\x00\x00WEBPVP8 \x18\x00\x00\x00", "BM\x36\x00\x00\x00\x00\x00\x00\x00",
        "\xFF\xD8", "\x89PNG\r\n", "II*\x00\x08\x00\x00\x00", "not an image at all",
    };
    uint8_t *noise = make_noise(4096, 11);
    noise[0] = 0; /* neither 0xFF nor 0x89: no accidental signature */
    img_rgb8 *img = NULL;
    img_info info;
    for (size_t i = 0; i <= sizeof magic / sizeof *magic + 1; i++) {
        const void *b = i < sizeof magic / sizeof *magic ? (const void *)magic[i] : noise;
        size_t n = i < sizeof magic / sizeof *magic ? strlen(magic[i]) + 8 : 4096;
        if (i == sizeof magic / sizeof *magic + 1) n = 0; /* empty */
        T_CHECKF(img_decode(b, n, NULL, 0, &img, err, sizeof err) == ENG_EUNSUPPORTED && !img &&
                 !strcmp(err, "unsupported image format"), "case %zu: %s", i, err);
        T_EQ(img_probe(b, n, &info, err, sizeof err), ENG_EUNSUPPORTED);
        T_EQ(img_sniff(b, n), IMG_UNKNOWN);
    }
    T_EQ(img_decode(NULL, 0, NULL, 0, &img, err, sizeof err), ENG_EUNSUPPORTED);
    free(noise);
    /* a JPEG, but lossless (SOF3): a kind libjpeg-turbo does not decode */
    size_t len;
    jpeg_opts o = {.quality = 90};
    uint8_t *j = jpeg_rgb(16, 16, &o, &len);
    size_t at = jpeg_sof_at(j, len);
    T_REQUIRE(at);
    j[at + 1] = 0xC3;
    T_CHECKF(img_decode(j, len, NULL, 0, &img, err, sizeof err) == ENG_EUNSUPPORTED && !img &&
             strstr(err, "jpeg"), "%s", err);
    free(j);
}

static void load_file(void)
{
    size_t len;
    jpeg_opts o = {.quality = 90};
    uint8_t *j = jpeg_rgb(30, 20, &o, &len);
    char path[600];
    /* named .png but a JPEG inside: the bytes decide */
    snprintf(path, sizeof path, "%s/photo.png", t_tmpdir());
    T_REQUIRE(eng_file_write_atomic(path, j, len, err, sizeof err) == 0);
    img_rgb8 *img = NULL;
    T_CHECK(img_load_file(path, NULL, 0, &img, err, sizeof err) == 0 && img && img->w == 30);
    img_rgb8_free(img);
    img_limits small = {.max_file_bytes = len - 1};
    T_CHECK(img_load_file(path, &small, 0, &img, err, sizeof err) == ENG_ELIMIT && !img);
    snprintf(path, sizeof path, "%s/missing.jpg", t_tmpdir());
    T_CHECK(img_load_file(path, NULL, 0, &img, err, sizeof err) == ENG_EIO && !img);
    snprintf(path, sizeof path, "%s/cut.jpg", t_tmpdir());
    T_REQUIRE(eng_file_write_atomic(path, j, len / 2, err, sizeof err) == 0);
    T_CHECK(img_load_file(path, NULL, 0, &img, err, sizeof err) == ENG_EFORMAT &&
            strstr(err, "cut.jpg") && strstr(err, "premature end of data"));
    free(j);
}

/* ---- resize and transforms ------------------------------------------------------------- */

/* One pass of the reference filter, written straight from the fixture README's formula with
 * no tables: along x when horiz, else along y. */
static void ref_pass(const uint8_t *s, int sw, int sh, uint8_t *d, int dw, int dh, int horiz)
{
    int in = horiz ? sw : sh, out = horiz ? dw : dh;
    double scale = (double)in / out, sup = scale > 1.0 ? scale : 1.0;
    for (int o = 0; o < out; o++) {
        double c = (o + 0.5) * scale, wt[4096], sum = 0;
        int lo = (int)(c - sup + 0.5), hi = (int)(c + sup + 0.5);
        lo = lo < 0 ? 0 : lo;
        hi = hi > in ? in : hi;
        for (int j = lo; j < hi; j++) {
            double x = fabs((j + 0.5 - c) * (1.0 / sup));
            sum += wt[j - lo] = x < 1 ? 1 - x : 0;
        }
        for (int other = 0; other < (horiz ? sh : dw); other++)
            for (int ch = 0; ch < 3; ch++) {
                int acc = 1 << 21;
                for (int j = lo; j < hi; j++) {
                    int q = (int)(0.5 + wt[j - lo] / sum * (1 << 22));
                    size_t at = horiz ? (size_t)other * sw + j : (size_t)j * sw + other;
                    acc += q * s[at * 3 + ch];
                }
                int v = acc >> 22;
                d[(horiz ? (size_t)other * dw + o : (size_t)o * dw + other) * 3 + ch] =
                    (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
            }
    }
}

static void resize_matches_reference(void)
{
    static const int sz[][4] = {{97, 61, 40, 40}, {40, 40, 97, 61}, {300, 7, 13, 21},
                                {1, 1, 5, 3}, {64, 48, 64, 20}, {64, 48, 20, 48},
                                {1000, 3, 3, 1000}, {33, 33, 33, 33}};
    for (size_t i = 0; i < sizeof sz / sizeof *sz; i++) {
        int sw = sz[i][0], sh = sz[i][1], dw = sz[i][2], dh = sz[i][3];
        uint8_t *n = make_noise(sw * sh * 3, 100 + i);
        img_rgb8 *src = wrap(n, sw, sh), *got = NULL;
        uint8_t *mid = malloc((size_t)dw * sh * 3), *want = malloc((size_t)dw * dh * 3);
        const uint8_t *h = n;
        if (dw != sw) ref_pass(n, sw, sh, mid, dw, sh, 1), h = mid;
        if (dh != sh) ref_pass(h, dw, sh, want, dw, dh, 0);
        else memcpy(want, h, (size_t)dw * dh * 3);
        T_REQUIRE(pre_resize(src, dw, dh, &got, err, sizeof err) == 0);
        T_CHECKF(got->w == dw && got->h == dh && !memcmp(got->px, want, (size_t)dw * dh * 3),
                 "%dx%d -> %dx%d", sw, sh, dw, dh);
        img_rgb8_free(got);
        img_rgb8_free(src);
        free(n);
        free(mid);
        free(want);
    }
}

static float norm(uint8_t v) { return ((float)v / 255.0f - 0.5f) / 0.5f; }

/* The crop of the resized image at (x0, y0), mirrored when flip, as CHW floats. */
static int crop_matches(const img_rgb8 *r, const pre_aug *a, int crop, const float *got)
{
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < crop; y++)
            for (int x = 0; x < crop; x++) {
                int sx = a->x0 + (a->flip ? crop - 1 - x : x);
                uint8_t v = r->px[((size_t)(a->y0 + y) * r->w + sx) * 3 + c];
                if (got[((size_t)c * crop + y) * crop + x] != norm(v)) return 0;
            }
    return 1;
}

static void train_transform(void)
{
    const int precrop = 40, crop = 32;
    uint8_t *n = make_noise(100 * 70 * 3, 21);
    img_rgb8 *src = wrap(n, 100, 70), *resized = NULL;
    T_REQUIRE(pre_resize(src, precrop, precrop, &resized, err, sizeof err) == 0);
    size_t bytes = sizeof(float) * 3 * crop * crop;
    float *a = malloc(bytes), *b = malloc(bytes);
    eng_rng r1, r2;
    eng_rng_seed3(&r1, 42, 3, 17);
    eng_rng_seed3(&r2, 42, 3, 17);
    for (int k = 0; k < 20; k++) {
        pre_aug x, y;
        pre_aug_draw(&r1, precrop, crop, &x);
        pre_aug_draw(&r2, precrop, crop, &y);
        T_CHECK(!memcmp(&x, &y, sizeof x));
        T_REQUIRE(pre_train(src, precrop, crop, &x, a, err, sizeof err) == 0);
        T_REQUIRE(pre_train(src, precrop, crop, &y, b, err, sizeof err) == 0);
        T_CHECK(!memcmp(a, b, sizeof(float) * 3 * crop * crop));
        T_CHECKF(crop_matches(resized, &x, crop, a), "x0 %d y0 %d flip %d", x.x0, x.y0, x.flip);
    }
    /* extreme offsets, both flips; out-of-range offsets are refused */
    pre_aug corners[] = {{0, 0, 0}, {8, 8, 1}, {8, 0, 0}, {0, 8, 1}};
    for (int k = 0; k < 4; k++) {
        T_REQUIRE(pre_train(src, precrop, crop, &corners[k], a, err, sizeof err) == 0);
        T_CHECK(crop_matches(resized, &corners[k], crop, a));
    }
    pre_aug bad[] = {{9, 0, 0}, {0, 9, 0}, {-1, 0, 0}};
    for (int k = 0; k < 3; k++)
        T_EQ(pre_train(src, precrop, crop, &bad[k], a, err, sizeof err), ENG_EINVAL);
    T_EQ(pre_train(src, 30, crop, &corners[0], a, err, sizeof err), ENG_EINVAL);
    img_rgb8_free(resized);
    img_rgb8_free(src);
    free(n);
    free(a);
    free(b);
}

static void train_flip_mirrors(void)
{
    uint8_t *n = make_noise(50 * 50 * 3, 8);
    img_rgb8 *src = wrap(n, 50, 50);
    const int crop = 24, plane = crop * crop;
    float *a = malloc(sizeof(float) * 3 * plane), *b = malloc(sizeof(float) * 3 * plane);
    pre_aug plain = {3, 5, 0}, flipped = {3, 5, 1};
    T_REQUIRE(pre_train(src, 32, crop, &plain, a, err, sizeof err) == 0);
    T_REQUIRE(pre_train(src, 32, crop, &flipped, b, err, sizeof err) == 0);
    int mirrored = 1;
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < crop; y++)
            for (int x = 0; x < crop; x++)
                mirrored &= a[c * plane + y * crop + x] == b[c * plane + y * crop + crop - 1 - x];
    T_CHECK(mirrored);
    T_NE(memcmp(a, b, sizeof(float) * 3 * plane), 0);
    img_rgb8_free(src);
    free(n);
    free(a);
    free(b);
}

static void train_draws(void)
{
    eng_rng r;
    eng_rng_seed(&r, 5);
    int lo = 99, hi = -1, flips = 0, draws = 5000;
    for (int k = 0; k < draws; k++) {
        pre_aug a;
        pre_aug_draw(&r, 10, 8, &a);
        lo = a.x0 < lo ? a.x0 : lo;
        lo = a.y0 < lo ? a.y0 : lo;
        hi = a.x0 > hi ? a.x0 : hi;
        hi = a.y0 > hi ? a.y0 : hi;
        flips += a.flip;
    }
    T_CHECK(lo == 0 && hi == 2);
    T_CHECKF(flips > draws * 45 / 100 && flips < draws * 55 / 100, "%d flips", flips);
    pre_aug a;
    pre_aug_draw(&r, 8, 8, &a);
    T_CHECK(a.x0 == 0 && a.y0 == 0);
}

static void eval_and_args(void)
{
    uint8_t *n = make_noise(37 * 29 * 3, 12);
    img_rgb8 *src = wrap(n, 37, 29), *r = NULL;
    float *got = malloc(sizeof(float) * 3 * 16 * 16);
    T_REQUIRE(pre_eval(src, 16, got, err, sizeof err) == 0);
    T_REQUIRE(pre_resize(src, 16, 16, &r, err, sizeof err) == 0);
    pre_aug whole = {0, 0, 0};
    T_CHECK(crop_matches(r, &whole, 16, got));
    img_rgb8_free(r);
    T_EQ(pre_eval(src, 0, got, err, sizeof err), ENG_EINVAL);
    T_CHECK(pre_resize(src, PRE_MAX_SIDE + 1, 4, &r, err, sizeof err) == ENG_EINVAL && !r);
    T_EQ(pre_normalize(src, 30, 0, 8, 8, 0, got, err, sizeof err), ENG_EINVAL);
    T_EQ(pre_normalize(NULL, 0, 0, 8, 8, 0, got, err, sizeof err), ENG_EINVAL);
    /* a size that does not change is a plain copy */
    T_REQUIRE(pre_resize(src, 37, 29, &r, err, sizeof err) == 0);
    T_CHECK(!memcmp(r->px, src->px, 37 * 29 * 3));
    img_rgb8_free(r);
    img_rgb8_free(src);
    free(n);
    free(got);
}

/* ---- benchmark ------------------------------------------------------------------------- */

/* Images per second, the best of three one-second runs (other processes only slow it down). */
static double bench_one(const uint8_t *j, size_t len, int crop, int hint, int eval)
{
    float *dst = malloc(sizeof(float) * 3 * crop * crop);
    double best = 0;
    for (int rep = 0; rep < 3; rep++) {
        int n = 0;
        double t0 = (eng_now_ms() / 1e3), t;
        do {
            img_rgb8 *img = NULL;
            if (img_decode(j, len, NULL, hint, &img, err, sizeof err) ||
                (eval && pre_eval(img, crop, dst, err, sizeof err))) {
                fprintf(stderr, "bench: %s\n", err);
                exit(1);
            }
            img_rgb8_free(img);
            n++;
        } while ((t = (eng_now_ms() / 1e3) - t0) < 1.0);
        best = n / t > best ? n / t : best;
    }
    free(dst);
    return best;
}

static int bench(void)
{
    size_t len;
    uint8_t *j = bench_jpeg(&len);
    printf("1024x768 JPEG, quality 90, 4:2:0, %zu bytes; 1 thread\n", len);
    int crops[] = {480, 128};
    for (int c = 0; c < 2; c++) {
        int crop = crops[c];
        printf("eval %3d: decode+preprocess %7.1f img/s with DCT scaling (hint %d), "
               "%7.1f img/s full decode; decode only %7.1f / %7.1f img/s\n",
               crop, bench_one(j, len, crop, crop, 1), crop, bench_one(j, len, crop, 0, 1),
               bench_one(j, len, crop, crop, 0), bench_one(j, len, crop, 0, 0));
    }
    free(j);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "--bench")) return bench();
    T_RUN(fixtures_decode);
    T_RUN(fixtures_preprocess);
    T_RUN(jpeg_subsampling);
    T_RUN(jpeg_gray);
    T_RUN(jpeg_cmyk);
    T_RUN(tiny_images);
    T_RUN(png_rgb_kinds);
    T_RUN(png_gray_kinds);
    T_RUN(png_palette);
    T_RUN(exif_orientations);
    T_RUN(exif_malformed);
    T_RUN(dct_scaling);
    T_RUN(jpeg_scan_limit);
    T_RUN(limits_huge_headers);
    T_RUN(limits_configured);
    T_RUN(truncated);
    T_RUN(bit_flips);
    T_RUN(unsupported);
    T_RUN(load_file);
    T_RUN(resize_matches_reference);
    T_RUN(train_transform);
    T_RUN(train_flip_mirrors);
    T_RUN(train_draws);
    T_RUN(eval_and_args);
    return t_done();
}
