/* Test helpers shared by the image and dataset tests: synthetic pictures, JPEG and PNG
 * encoders into memory, files and archives written with libarchive. Every buffer returned
 * is malloc'd and the caller's to free. */
#ifndef BIT_TIMG_H
#define BIT_TIMG_H

#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <archive.h>
#include <archive_entry.h>
#include <jpeglib.h>
#include <png.h>

#include "arc.h"
#include "rng.h"

/* Smooth gradients: JPEG keeps them well, so a wrong channel order, subsampling or colour
 * conversion shows up as a large error. */
static inline uint8_t *make_rgb(int w, int h)
{
    uint8_t *p = malloc((size_t)w * h * 3);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            uint8_t *q = p + ((size_t)y * w + x) * 3;
            q[0] = (uint8_t)(w > 1 ? x * 255 / (w - 1) : 200);
            q[1] = (uint8_t)(h > 1 ? y * 255 / (h - 1) : 100);
            q[2] = (uint8_t)(w + h > 2 ? (x + y) * 255 / (w + h - 2) : 50);
        }
    return p;
}

static inline uint8_t *make_noise(int n, uint64_t seed)
{
    eng_rng r;
    eng_rng_seed(&r, seed);
    uint8_t *p = malloc((size_t)n);
    for (int i = 0; i < n; i++) p[i] = (uint8_t)eng_rng_below(&r, 256);
    return p;
}

typedef struct jpeg_opts {
    int quality;
    int progressive;
    int hs, vs;            /* luma sampling factors (chroma 1x1); 0 = libjpeg's default */
    J_COLOR_SPACE in_cs;   /* JCS_RGB (0 means this), JCS_GRAYSCALE or JCS_CMYK */
    J_COLOR_SPACE jpeg_cs; /* 0 = the default for in_cs; JCS_YCCK */
    const uint8_t *app1;   /* an APP1 payload to write, or NULL */
    size_t app1_len;
} jpeg_opts;

static inline uint8_t *jpeg_encode(const uint8_t *px, int w, int h, const jpeg_opts *o, size_t *len)
{
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr e;
    c.err = jpeg_std_error(&e);
    jpeg_create_compress(&c);
    unsigned char *buf = NULL;
    unsigned long n = 0;
    jpeg_mem_dest(&c, &buf, &n);
    J_COLOR_SPACE cs = o->in_cs ? o->in_cs : JCS_RGB;
    c.image_width = (JDIMENSION)w;
    c.image_height = (JDIMENSION)h;
    c.input_components = cs == JCS_GRAYSCALE ? 1 : cs == JCS_CMYK ? 4 : 3;
    c.in_color_space = cs;
    jpeg_set_defaults(&c);
    if (o->jpeg_cs) jpeg_set_colorspace(&c, o->jpeg_cs);
    jpeg_set_quality(&c, o->quality ? o->quality : 95, TRUE);
    if (o->hs) {
        c.comp_info[0].h_samp_factor = o->hs;
        c.comp_info[0].v_samp_factor = o->vs;
    }
    if (o->progressive) jpeg_simple_progression(&c);
    jpeg_start_compress(&c, TRUE);
    if (o->app1) jpeg_write_marker(&c, JPEG_APP0 + 1, o->app1, (unsigned)o->app1_len);
    size_t stride = (size_t)w * c.input_components;
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = (JSAMPROW)(px + stride * c.next_scanline);
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    *len = n;
    return buf;
}

static inline uint8_t *jpeg_rgb(int w, int h, const jpeg_opts *o, size_t *len)
{
    uint8_t *px = make_rgb(w, h);
    uint8_t *j = jpeg_encode(px, w, h, o, len);
    free(px);
    return j;
}

typedef struct membuf { uint8_t *p; size_t n, cap; } membuf;

static inline void mem_write(png_structp png, png_bytep d, size_t n)
{
    membuf *m = png_get_io_ptr(png);
    if (m->n + n > m->cap) {
        m->cap = (m->n + n) * 2;
        m->p = realloc(m->p, m->cap);
    }
    memcpy(m->p + m->n, d, n);
    m->n += n;
}

static inline void mem_flush(png_structp png) {}

typedef struct png_opts {
    int color_type, depth, interlace;
    const png_color *pal;
    int npal;
    const uint8_t *trns; /* palette alpha */
    int ntrns;
    const png_color_16 *trns_color; /* grey or RGB colour key */
} png_opts;

/* rows: h rows of PNG row bytes (16-bit samples big-endian, as PNG stores them). */
static inline uint8_t *png_encode(const uint8_t *rows, size_t stride, int w, int h, const png_opts *o,
                           size_t *len)
{
    membuf m = {0};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        free(m.p);
        return NULL;
    }
    png_set_write_fn(png, &m, mem_write, mem_flush);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, o->depth, o->color_type,
                 o->interlace ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (o->pal) png_set_PLTE(png, info, o->pal, o->npal);
    if (o->trns || o->trns_color)
        png_set_tRNS(png, info, o->trns, o->ntrns, o->trns_color);
    png_write_info(png, info);
    png_bytep *rp = malloc(sizeof *rp * (size_t)h);
    for (int y = 0; y < h; y++) rp[y] = (png_bytep)(rows + stride * y);
    png_write_image(png, rp);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    free(rp);
    *len = m.n;
    return m.p;
}

static inline uint8_t *png_rgb(int w, int h, int interlace, size_t *len)
{
    uint8_t *px = make_rgb(w, h);
    png_opts o = {PNG_COLOR_TYPE_RGB, 8, interlace, NULL, 0, NULL, 0, NULL};
    uint8_t *p = png_encode(px, (size_t)w * 3, w, h, &o, len);
    free(px);
    return p;
}

/* A 1024x768 stand-in for a photograph: gradients, texture and noise, so that the entropy
 * decoder has realistic work (about 0.3 MB at quality 90). */
static inline uint8_t *bench_jpeg(size_t *len)
{
    const int w = 1024, h = 768;
    uint8_t *px = make_rgb(w, h), *nz = make_noise(w * h * 3, 77);
    for (int i = 0; i < w * h * 3; i++) {
        int x = i / 3 % w, y = i / 3 / w;
        int v = px[i] + (int)(40 * sin(x * 0.05 + i % 3) * cos(y * 0.033)) + nz[i] / 8 - 16;
        px[i] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
    }
    jpeg_opts o = {.quality = 90};
    uint8_t *j = jpeg_encode(px, w, h, &o, len);
    free(px);
    free(nz);
    return j;
}

/* ---- files and archives ---------------------------------------------------------------- */

static inline int timg_write(const char *path, const void *b, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = n ? fwrite(b, 1, n, f) : 0;
    return (fclose(f) == 0 && w == n) ? 0 : -1;
}

/* Creates the directories leading to the file path (like mkdir -p of its dirname). */
static inline int timg_mkdirs(const char *path)
{
    char p[4096];
    snprintf(p, sizeof p, "%s", path);
    for (char *s = strchr(p + 1, '/'); s; s = strchr(s + 1, '/')) {
        *s = 0;
        int bad = mkdir(p, 0755) != 0 && !(errno == EEXIST);
        *s = '/';
        if (bad) return -1;
    }
    return 0;
}

/* dir/rel, its directories created, holding n bytes of b. */
static inline int timg_put(const char *dir, const char *rel, const void *b, size_t n)
{
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, rel);
    return timg_mkdirs(p) || timg_write(p, b, n) ? -1 : 0;
}

enum { TIMG_TAR, TIMG_TAR_GZ, TIMG_TAR_XZ, TIMG_ZIP };

/* One archive entry: a regular file of len bytes, or a symlink to data when symlink. */
typedef struct timg_ent {
    const char *name;
    const void *data;
    size_t len;
    int symlink;
} timg_ent;

static inline struct archive *timg_writer(const char *path, int kind)
{
    struct archive *a = archive_write_new();
    int r = kind == TIMG_ZIP ? archive_write_set_format_zip(a)
                             : archive_write_set_format_pax_restricted(a);
    if (r == ARCHIVE_OK)
        r = kind == TIMG_TAR_GZ ? archive_write_add_filter_gzip(a)
          : kind == TIMG_TAR_XZ ? archive_write_add_filter_xz(a)
          : archive_write_add_filter_none(a);
    if (r == ARCHIVE_OK) r = archive_write_open_filename(a, path);
    if (r != ARCHIVE_OK) {
        fprintf(stderr, "  timg_writer %s: %s\n", path, archive_error_string(a));
        archive_write_free(a);
        return NULL;
    }
    return a;
}

static inline int timg_add(struct archive *a, const timg_ent *x)
{
    struct archive_entry *e = archive_entry_new();
    archive_entry_set_pathname(e, x->name);
    archive_entry_set_mtime(e, 1700000000, 0);
    if (x->symlink) {
        archive_entry_set_filetype(e, AE_IFLNK);
        archive_entry_set_perm(e, 0777);
        archive_entry_set_symlink(e, x->data);
    } else {
        archive_entry_set_filetype(e, AE_IFREG);
        archive_entry_set_perm(e, 0644);
        archive_entry_set_size(e, (la_int64_t)x->len);
    }
    int bad = archive_write_header(a, e) < ARCHIVE_WARN;
    if (!bad && !x->symlink && x->len)
        bad = archive_write_data(a, x->data, x->len) != (la_ssize_t)x->len;
    if (bad) fprintf(stderr, "  timg_add %s: %s\n", x->name, archive_error_string(a));
    archive_entry_free(e);
    return bad ? -1 : 0;
}

static inline int timg_close(struct archive *a, int bad)
{
    bad |= archive_write_close(a) != ARCHIVE_OK;
    archive_write_free(a);
    return bad ? -1 : 0;
}

/* Writes the entries, in order, to an archive of the given kind at path; 0 on success. */
static inline int timg_archive(const char *path, int kind, const timg_ent *es, size_t n)
{
    struct archive *a = timg_writer(path, kind);
    if (!a) return -1;
    int bad = 0;
    for (size_t i = 0; i < n && !bad; i++) bad = timg_add(a, &es[i]);
    return timg_close(a, bad);
}

typedef struct timg_tree {
    struct archive *a;
    const char *dir, *prefix;
} timg_tree;

static inline int timg_tree_file(const char *rel, uint64_t size, void *ud)
{
    timg_tree *t = ud;
    char path[4096], name[4096], e[256];
    void *buf = NULL;
    size_t len = 0;
    snprintf(path, sizeof path, "%s/%s", t->dir, rel);
    snprintf(name, sizeof name, "%s%s", t->prefix, rel);
    if (eng_file_read(path, (size_t)size + 1, &buf, &len, e, sizeof e)) return -1;
    timg_ent x = {name, buf, len, 0};
    int bad = timg_add(t->a, &x);
    free(buf);
    return bad;
}

/* Archives every regular file under dir into path, each name behind prefix ("" or "top/"). */
static inline int timg_archive_dir(const char *dir, const char *path, int kind,
                                   const char *prefix)
{
    char e[256];
    timg_tree t = {timg_writer(path, kind), dir, prefix};
    if (!t.a) return -1;
    return timg_close(t.a, arc_walk(dir, timg_tree_file, &t, e, sizeof e) != 0);
}

#endif
