/* The seed corpus: small valid inputs for every target, and a few near misses, written with
 * the project's own writers and the test encoders of tests/timg.h. A file named valid-* must
 * be accepted by its target: test_fuzz_regress checks that in every build, so a change of
 * format cannot silently leave the fuzzers starting from rejected inputs. */
#include "tests/fuzz/targets.h"

#include <sys/stat.h>

#include "npz.h"
#include "tests/timg.h"

typedef struct sd {
    const char *dir;
    int bad;
} sd;

static void put(sd *s, const char *target, const char *name, const void *b, size_t n)
{
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", s->dir, target);
    if (mkdir(p, 0755) != 0 && errno != EEXIST) s->bad = 1;
    snprintf(p, sizeof p, "%s/%s/%s", s->dir, target, name);
    if (!b || timg_write(p, b, n)) s->bad = 1;
}

/* For targets whose first byte is a parameter (image hint, multipart chunking). */
static void put1(sd *s, const char *target, const char *name, uint8_t first, const void *b,
                 size_t n)
{
    uint8_t *c = malloc(n + 1);
    if (!c || !b) {
        s->bad = 1;
        free(c);
        return;
    }
    c[0] = first;
    memcpy(c + 1, b, n);
    put(s, target, name, c, n + 1);
    free(c);
}

static void puts_(sd *s, const char *target, const char *name, const char *text)
{
    put(s, target, name, text, strlen(text));
}

static char *path_of(sd *s, const char *target, const char *name)
{
    static char p[4096];
    put(s, target, name, "", 0);
    snprintf(p, sizeof p, "%s/%s/%s", s->dir, target, name);
    return p;
}

/* ---- .npy and .npz ---- */

static eng_tensor *tensor(eng_dtype dt, size_t itemsize, int ndim, int64_t d0, int64_t d1,
                          uint64_t seed)
{
    int64_t shape[ENG_MAX_DIMS] = {d0, d1, 1, 1, 1, 1, 1, 2};
    eng_tensor *t = eng_tensor_new(dt, itemsize, ndim, shape);
    if (!t) return NULL;
    uint8_t *noise = make_noise((int)eng_tensor_bytes(t) + 1, seed);
    memcpy(t->data, noise, eng_tensor_bytes(t));
    free(noise);
    if (dt == ENG_F32)
        for (int64_t i = 0; i < eng_tensor_numel(t); i++) ((float *)t->data)[i] = (float)i / 8;
    return t;
}

/* Three names of up to four characters, UTF-32LE and NUL-padded as NumPy writes '<U4'. */
static eng_tensor *strings(void)
{
    static const uint32_t words[3][4] = {{'c', 'a', 't'}, {'d', 'o', 'g', 's'}, {0xe9, 't', 0xe9}};
    eng_tensor *t = tensor(ENG_STR, 4 * 4, 1, 3, 0, 1);
    if (t) memcpy(t->data, words, sizeof words);
    return t;
}

static void put_npy(sd *s, const char *name, eng_tensor *t)
{
    void *b = NULL;
    size_t n = 0;
    char err[256];
    if (!t || eng_npy_serialize(t, &b, &n, err, sizeof err)) s->bad = 1;
    else put(s, "npy", name, b, n);
    free(b);
    eng_tensor_free(t);
}

/* The same tensor with one word of its header changed (same length, so still aligned). */
static void put_npy_edit(sd *s, const char *name, const char *from, const char *to)
{
    void *b = NULL;
    size_t n = 0;
    char err[256];
    eng_tensor *t = tensor(ENG_F32, 0, 2, 2, 3, 2);
    if (t && !eng_npy_serialize(t, &b, &n, err, sizeof err)) {
        char *at = memmem(b, n, from, strlen(from));
        if (at) memcpy(at, to, strlen(to));
        put(s, "npy", name, b, n);
    }
    free(b);
    eng_tensor_free(t);
}

/* Format 2.0: a four-byte header length. */
static void put_npy_v2(sd *s)
{
    const char *h = "{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }\n";
    uint8_t b[128] = "\x93NUMPY\x02\x00";
    size_t hl = strlen(h);
    b[8] = (uint8_t)hl;
    memcpy(b + 12, h, hl);
    memcpy(b + 12 + hl, "\x07\0\0\0\0\0\0\0\xff\xff\xff\xff\xff\xff\xff\xff", 16);
    put(s, "npy", "valid-v2.npy", b, 12 + hl + 16);
}

static void npy_seeds(sd *s)
{
    put_npy(s, "valid-f32-2x3.npy", tensor(ENG_F32, 0, 2, 2, 3, 1));
    put_npy(s, "valid-i64.npy", tensor(ENG_I64, 0, 1, 4, 0, 2));
    put_npy(s, "valid-u8-3d.npy", tensor(ENG_U8, 0, 3, 3, 2, 3));
    put_npy(s, "valid-scalar.npy", tensor(ENG_F32, 0, 0, 0, 0, 4));
    put_npy(s, "valid-empty.npy", tensor(ENG_F32, 0, 1, 0, 0, 5));
    put_npy(s, "valid-empty-2d.npy", tensor(ENG_U8, 0, 2, 0, 5, 5));
    put_npy(s, "valid-8d.npy", tensor(ENG_F32, 0, 8, 1, 1, 6));
    put_npy(s, "valid-strings.npy", strings());
    put_npy_v2(s);
    put_npy_edit(s, "bad-fortran.npy", "False", "True ");
    put_npy_edit(s, "bad-bigendian.npy", "'<f4'", "'>f4'");
    put_npy_edit(s, "bad-float64.npy", "'<f4'", "'<f8'");
}

static void put_npz(sd *s, const char *name, int compress)
{
    char err[512];
    eng_npz *z = eng_npz_new();
    if (!z) {
        s->bad = 1;
        return;
    }
    eng_npz_put(z, "resnet/root_block/standardized_conv2d/kernel", tensor(ENG_F32, 0, 2, 3, 4, 7));
    eng_npz_put(z, "labels", strings());
    eng_npz_put(z, "y", tensor(ENG_I64, 0, 1, 5, 0, 8));
    eng_npz_put(z, "x", tensor(ENG_U8, 0, 2, 4, 3, 9));
    if (eng_npz_save(path_of(s, "npz", name), z, compress, err, sizeof err)) s->bad = 1;
    eng_npz_free(z);
}

static void npz_seeds(sd *s)
{
    put_npz(s, "valid-stored.npz", 0);
    put_npz(s, "valid-deflated.npz", 1);
    timg_ent e = {"notes.txt", "hello", 5, 0};
    if (timg_archive(path_of(s, "npz", "bad-not-npy.npz"), TIMG_ZIP, &e, 1)) s->bad = 1;
}

/* ---- checkpoint records ---- */

static void arch_seed(sd *s, const char *name, int u0, int u1, int u2, int u3, int header)
{
    const int units[4] = {u0, u1, u2, u3};
    uint8_t buf[2048];
    size_t n = fz_arch_seed(units, header, buf, sizeof buf);
    if (!n) s->bad = 1;
    put(s, "arch", name, buf, n);
}

static void arch_seeds(sd *s)
{
    arch_seed(s, "valid-1111.rec", 1, 1, 1, 1, 0);
    arch_seed(s, "valid-1111-head1.rec", 1, 1, 1, 1, 2);
    arch_seed(s, "valid-1111-head10.rec", 1, 1, 1, 1, 4);
    arch_seed(s, "valid-2112.rec", 2, 1, 1, 2, 0);
    arch_seed(s, "valid-1121-head100.rec", 1, 1, 2, 1, 6);
    arch_seed(s, "valid-r50x1-head10.rec", 3, 4, 6, 3, 5);
    arch_seed(s, "valid-4464-w64.rec", 4, 4, 6, 4, 1);
    /* Only the root kernel, given as a raw key [7, 7, 3, 32]: the error path of each block. */
    const char *k = "resnet/root_block/standardized_conv2d/kernel";
    uint8_t raw[80] = {0, 0xc0, (uint8_t)strlen(k)};
    memcpy(raw + 3, k, strlen(k));
    memcpy(raw + 3 + strlen(k), (uint8_t[]){4, 5, 5, 3, 8}, 5);
    put(s, "arch", "bad-root-only.rec", raw, 8 + strlen(k));
}

/* ---- images ---- */

/* EXIF with one orientation entry, little- or big-endian, as SHORT or LONG. */
static size_t exif(uint8_t *b, int orientation, int le, int type)
{
    static const uint8_t hdr_le[] = {'E', 'x', 'i', 'f', 0, 0, 'I', 'I', 42, 0, 8, 0, 0, 0, 1, 0};
    static const uint8_t hdr_be[] = {'E', 'x', 'i', 'f', 0, 0, 'M', 'M', 0, 42, 0, 0, 0, 8, 0, 1};
    memcpy(b, le ? hdr_le : hdr_be, 16);
    uint8_t *e = b + 16;
    memset(e, 0, 16);
    e[le ? 0 : 1] = 0x12, e[le ? 1 : 0] = 0x01;
    e[le ? 2 : 3] = (uint8_t)type;
    e[le ? 4 : 7] = 1;
    e[le ? 8 : (type == 3 ? 9 : 11)] = (uint8_t)orientation;
    return 16 + 16;
}

static void put_jpeg(sd *s, const char *name, int w, int h, const jpeg_opts *o, uint8_t hint)
{
    size_t n = 0;
    int ch = o->in_cs == JCS_GRAYSCALE ? 1 : o->in_cs == JCS_CMYK ? 4 : 3;
    uint8_t *px = make_noise(w * h * ch, (uint64_t)w * 31 + (uint64_t)h);
    uint8_t *j = jpeg_encode(px, w, h, o, &n);
    put1(s, "image", name, hint, j, n);
    free(px);
    free(j);
}

static void jpeg_seeds(sd *s)
{
    uint8_t app1[64];
    put_jpeg(s, "valid-baseline.jpg", 17, 11, &(jpeg_opts){.quality = 90}, 0);
    put_jpeg(s, "valid-baseline-hint.jpg", 40, 36, &(jpeg_opts){.quality = 75}, 0x84);
    put_jpeg(s, "valid-progressive.jpg", 19, 13, &(jpeg_opts){.progressive = 1}, 0);
    put_jpeg(s, "valid-gray.jpg", 9, 16, &(jpeg_opts){.in_cs = JCS_GRAYSCALE}, 0);
    put_jpeg(s, "valid-cmyk.jpg", 8, 8, &(jpeg_opts){.in_cs = JCS_CMYK}, 0);
    put_jpeg(s, "valid-ycck.jpg", 8, 8, &(jpeg_opts){.in_cs = JCS_CMYK, .jpeg_cs = JCS_YCCK}, 0);
    put_jpeg(s, "valid-420.jpg", 21, 17, &(jpeg_opts){.hs = 2, .vs = 2}, 0);
    put_jpeg(s, "valid-422.jpg", 21, 17, &(jpeg_opts){.hs = 2, .vs = 1}, 0);
    put_jpeg(s, "valid-1x1.jpg", 1, 1, &(jpeg_opts){.quality = 50}, 0);
    static const struct { int o, le, type; } ex[] = {{6, 1, 3}, {3, 0, 3}, {8, 1, 4}, {5, 0, 4}};
    for (size_t i = 0; i < sizeof ex / sizeof ex[0]; i++) {
        char name[64];
        size_t n = exif(app1, ex[i].o, ex[i].le, ex[i].type);
        snprintf(name, sizeof name, "valid-exif%d.jpg", ex[i].o);
        put_jpeg(s, name, 12, 7, &(jpeg_opts){.app1 = app1, .app1_len = n}, i % 2 ? 0x81 : 0);
    }
}

static void put_png(sd *s, const char *name, int w, int h, int ct, int depth, int interlace)
{
    static const png_color pal[4] = {{255, 0, 0}, {0, 255, 0}, {0, 0, 255}, {9, 9, 9}};
    static const uint8_t alpha[2] = {0, 128};
    int ch = ct == PNG_COLOR_TYPE_RGB ? 3 : ct == PNG_COLOR_TYPE_RGBA ? 4
           : ct == PNG_COLOR_TYPE_GRAY_ALPHA ? 2 : 1;
    size_t stride = ((size_t)w * (size_t)ch * (size_t)depth + 7) / 8, n = 0;
    uint8_t *rows = make_noise((int)stride * h, (uint64_t)ct * 7 + (uint64_t)depth);
    png_opts o = {ct, depth, interlace, NULL, 0, NULL, 0, NULL};
    if (ct == PNG_COLOR_TYPE_PALETTE) { /* indices within the 4-entry palette */
        for (size_t i = 0; depth == 8 && i < stride * (size_t)h; i++) rows[i] &= 3;
        o.pal = pal, o.npal = 4, o.trns = alpha, o.ntrns = 2;
    }
    uint8_t *p = png_encode(rows, stride, w, h, &o, &n);
    put1(s, "image", name, 0, p, n);
    free(rows);
    free(p);
}

static void png_seeds(sd *s)
{
    put_png(s, "valid-rgb.png", 13, 7, PNG_COLOR_TYPE_RGB, 8, 0);
    put_png(s, "valid-rgb16.png", 5, 4, PNG_COLOR_TYPE_RGB, 16, 0);
    put_png(s, "valid-rgba.png", 6, 6, PNG_COLOR_TYPE_RGBA, 8, 0);
    put_png(s, "valid-gray1.png", 17, 3, PNG_COLOR_TYPE_GRAY, 1, 0);
    put_png(s, "valid-gray4.png", 9, 5, PNG_COLOR_TYPE_GRAY, 4, 0);
    put_png(s, "valid-gray16.png", 4, 4, PNG_COLOR_TYPE_GRAY, 16, 0);
    put_png(s, "valid-gray-alpha.png", 4, 5, PNG_COLOR_TYPE_GRAY_ALPHA, 8, 0);
    put_png(s, "valid-palette.png", 8, 8, PNG_COLOR_TYPE_PALETTE, 8, 0);
    put_png(s, "valid-palette2.png", 11, 3, PNG_COLOR_TYPE_PALETTE, 2, 0);
    put_png(s, "valid-interlaced.png", 19, 9, PNG_COLOR_TYPE_RGB, 8, 1);
}

/* ---- archives ---- */

static void put_archive(sd *s, const char *name, int kind, const timg_ent *e, size_t n)
{
    if (timg_archive(path_of(s, "archive", name), kind, e, n)) s->bad = 1;
}

static void archive_seeds(sd *s)
{
    static const timg_ent classes[] = {
        {"cat/1.jpg", "\xff\xd8\xff\xe0 one", 9, 0}, {"cat/2.jpg", "two", 3, 0},
        {"dog/1.png", "\x89PNG", 4, 0}, {"./train/dog/3.png", "", 0, 0},
        {"__MACOSX/cat/._1.jpg", "junk", 4, 0}, {"cat/.DS_Store", "ds", 2, 0},
        {".hidden/x", "h", 1, 0}, {"caf\xc3\xa9/\xe2\x82\xac.jpg", "utf8", 4, 0},
    };
    const size_t n = sizeof classes / sizeof classes[0];
    put_archive(s, "valid-classes.tar", TIMG_TAR, classes, n);
    put_archive(s, "valid-classes.tar.gz", TIMG_TAR_GZ, classes, n);
    put_archive(s, "valid-classes.tar.xz", TIMG_TAR_XZ, classes, n);
    put_archive(s, "valid-classes.zip", TIMG_ZIP, classes, n);
    put_archive(s, "valid-one.tar", TIMG_TAR, classes, 1);
    static const timg_ent link[] = {{"a/1.jpg", "x", 1, 0}, {"a/l.jpg", "1.jpg", 0, 1}};
    put_archive(s, "bad-symlink.tar", TIMG_TAR, link, 2);
    static const timg_ent up[] = {{"a/../../x.jpg", "x", 1, 0}};
    put_archive(s, "bad-traversal.zip", TIMG_ZIP, up, 1);
    static const timg_ent dup[] = {{"a/x.jpg", "x", 1, 0}, {"a/x.jpg", "y", 1, 0}};
    put_archive(s, "bad-duplicate.tar", TIMG_TAR, dup, 2);
}

/* ---- text surfaces ---- */

static void params_seeds(sd *s)
{
    puts_(s, "params", "valid-full.json",
          "{\"dataset\":\"ds_1\",\"base_model\":\"BiT-M-R50x1\",\"name\":\"run\",\"hyperparameters\":"
          "{\"steps\":500,\"batch\":64,\"batch_split\":2,\"base_lr\":0.003,\"mixup\":0.1,"
          "\"resolution\":[160,128],\"examples_per_class\":5,\"seed\":42,\"eval_every\":100,"
          "\"save_every\":100}}");
    puts_(s, "params", "valid-schedule.json",
          "{\"hyperparameters\":{\"schedule\":[10,20,30,40],\"batch\":\"auto\",\"steps\":null}}");
    puts_(s, "params", "valid-bare.json", "{\"steps\":\"auto\",\"mixup\":0,\"batch\":3}");
    puts_(s, "params", "valid-null.json", "{\"hyperparameters\":null}");
    puts_(s, "params", "valid-empty.json", "{}");
    puts_(s, "params", "bad-split.json", "{\"hyperparameters\":{\"batch\":512,\"batch_split\":3}}");
    puts_(s, "params", "bad-type.json", "{\"hyperparameters\":{\"seed\":1.5,\"schedule\":[5,5]}}");
    puts_(s, "params", "bad-array.json", "[1,2,3]");
}

static void http_seeds(sd *s)
{
    puts_(s, "http", "valid-events.txt",
          "GET /v1/jobs/job_abc/events?after=3&limit=10\nBearer " FZ_TOKEN "\n");
    puts_(s, "http", "valid-classify.txt",
          "POST /v1/models/m%C3%A9/classify?top=5&x\nbearer   " FZ_TOKEN "  \n"
          "multipart/form-data; boundary=abc");
    puts_(s, "http", "valid-healthz.txt", "GET /healthz");
    puts_(s, "http", "valid-deep.txt", "PUT /a/%62/c+d/d%20e/%E2%82%AC?x=1+2&y=%41&=&z\n\n"
                                       "multipart/form-data; boundary=\"q u\"; charset=x");
    puts_(s, "http", "bad-slash-param.txt", "DELETE /v1/datasets/ds%2F1\nBearer x\n");
    puts_(s, "http", "bad-dotdot.txt", "GET /v1/jobs/..\n\nmultipart/form-data");
    puts_(s, "http", "bad-method.txt", "PATCH /v1/jobs?q=%zz");
    puts_(s, "http", "bad-nul.txt", "GET /v1/jobs/a%00b?k=%ED%A0%80");
}

#define CRLF "\r\n"
#define DELIM "--" FZ_BOUNDARY
#define CD "Content-Disposition: form-data; name="

static void multipart_seeds(sd *s)
{
    static const char *const bodies[][2] = {
        {"valid-field-file",
         DELIM CRLF CD "\"meta\"" CRLF CRLF "{\"a\":1}" CRLF DELIM CRLF CD "\"file\"; "
         "filename=\"../x/a.tar\"" CRLF "Content-Type: application/x-tar" CRLF CRLF
         "DATA\r\n--fzB0und" CRLF DELIM "--" CRLF},
        {"valid-preamble",
         "preamble" CRLF DELIM "  \t" CRLF CD "a; filename=\"C:\\\\dir\\\\b.jpg\"" CRLF CRLF
         CRLF DELIM CRLF CD "\"q\\\"uote\"; x=y" CRLF CRLF "" CRLF DELIM "--epilogue"},
        {"valid-empty", DELIM "--"},
        {"bad-junk", DELIM "x" CRLF},
        {"bad-no-name", DELIM CRLF "Content-Type: text/plain" CRLF CRLF "x" CRLF DELIM "--"},
        {"bad-unterminated", DELIM CRLF CD "\"a\"" CRLF CRLF "abc"},
    };
    for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
        put1(s, "multipart", bodies[i][0], 0x00, bodies[i][1], strlen(bodies[i][1]));
        char name[64];
        snprintf(name, sizeof name, "%s-cut", bodies[i][0]);
        put1(s, "multipart", name, (uint8_t)(0x35 + i), bodies[i][1], strlen(bodies[i][1]));
    }
}

/* ---- fixtures ---- */

static void fixture(sd *s, const char *fixtures, const char *target, const char *name, int hint)
{
    char p[4096], out[256], err[256];
    void *b = NULL;
    size_t n = 0;
    snprintf(p, sizeof p, "%s/%s", fixtures, name);
    snprintf(out, sizeof out, "valid-fixture-%s", name);
    if (eng_file_read(p, (size_t)1 << 20, &b, &n, err, sizeof err)) return; /* optional */
    if (hint >= 0) put1(s, target, out, (uint8_t)hint, b, n);
    else put(s, target, out, b, n);
    free(b);
}

int fz_write_seeds(const char *dir, const char *fixtures)
{
    sd s = {dir, mkdir(dir, 0755) != 0 && errno != EEXIST};
    npy_seeds(&s);
    npz_seeds(&s);
    arch_seeds(&s);
    jpeg_seeds(&s);
    png_seeds(&s);
    archive_seeds(&s);
    params_seeds(&s);
    http_seeds(&s);
    multipart_seeds(&s);
    static const char *const npys[] = {"labels.npy", "logits.npy", "logits_small.npy",
                                       "raw_graphic64x48.npy"};
    static const char *const imgs[] = {"img_graphic64x48.png", "img_gray100x90.jpg",
                                       "img_rgb160.jpg", "img_rgb200x120.jpg"};
    for (size_t i = 0; fixtures && i < 4; i++) {
        fixture(&s, fixtures, "npy", npys[i], -1);
        fixture(&s, fixtures, "image", imgs[i], 0);
    }
    return s.bad ? -1 : 0;
}
