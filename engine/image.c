#include "image.h"

#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h>
#include <png.h>

img_rgb8 *img_rgb8_new(int w, int h)
{
    size_t row, bytes;
    if (w < 1 || h < 1 || eng_mul_size((size_t)w, 3, &row) ||
        eng_mul_size(row, (size_t)h, &bytes))
        return NULL;
    img_rgb8 *img = malloc(sizeof *img);
    if (!img) return NULL;
    img->w = w;
    img->h = h;
    img->px = eng_alloc(bytes);
    if (!img->px) {
        free(img);
        return NULL;
    }
    return img;
}

void img_rgb8_free(img_rgb8 *img)
{
    if (!img) return;
    eng_free(img->px);
    free(img);
}

img_format img_sniff(const void *buf, size_t len)
{
    static const unsigned char png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    const unsigned char *p = buf;
    if (p && len >= 3 && p[0] == 0xFF && p[1] == 0xD8 && p[2] == 0xFF) return IMG_JPEG;
    if (p && len >= 8 && !memcmp(p, png_sig, 8)) return IMG_PNG;
    return IMG_UNKNOWN;
}

const char *img_format_name(img_format f)
{
    switch (f) {
    case IMG_JPEG: return "jpeg";
    case IMG_PNG: return "png";
    default: return "unknown";
    }
}

static img_limits limits_resolve(const img_limits *lim)
{
    img_limits l = lim ? *lim : (img_limits){0, 0, 0};
    if (!l.max_pixels) l.max_pixels = IMG_DEFAULT_MAX_PIXELS;
    if (!l.max_side) l.max_side = IMG_DEFAULT_MAX_SIDE;
    if (!l.max_file_bytes) l.max_file_bytes = IMG_DEFAULT_MAX_FILE_BYTES;
    /* img_rgb8 sides are int and rows are w * 3 bytes. */
    if (l.max_side > (1u << 28)) l.max_side = 1u << 28;
    return l;
}

static int check_size(uint64_t w, uint64_t h, const img_limits *l, char *err, size_t errlen)
{
    if (!w || !h) return eng_errf(err, errlen, ENG_EFORMAT, "image has no pixels (%llux%llu)",
                                  (unsigned long long)w, (unsigned long long)h);
    if (w > l->max_side || h > l->max_side)
        return eng_errf(err, errlen, ENG_ELIMIT,
                        "%llux%llu image: a side is over the limit of %u pixels",
                        (unsigned long long)w, (unsigned long long)h, l->max_side);
    if (w * h > l->max_pixels)
        return eng_errf(err, errlen, ENG_ELIMIT,
                        "%llux%llu image is over the limit of %llu pixels",
                        (unsigned long long)w, (unsigned long long)h,
                        (unsigned long long)l->max_pixels);
    return 0;
}

/* ---- EXIF orientation ---------------------------------------------------------------- */

static uint32_t rd16(const uint8_t *p, int le)
{
    return le ? (uint32_t)p[0] | (uint32_t)p[1] << 8 : (uint32_t)p[0] << 8 | p[1];
}

static uint32_t rd32(const uint8_t *p, int le)
{
    return le ? rd16(p, 1) | rd16(p + 2, 1) << 16 : rd16(p, 0) << 16 | rd16(p + 2, 0);
}

/* Orientation (tag 0x0112) from IFD0 of an APP1 payload; 1 for anything malformed, since a
 * damaged EXIF block should not cost the pixels. */
static int exif_orientation(const uint8_t *p, size_t n)
{
    if (n < 6 + 8 || memcmp(p, "Exif\0\0", 6)) return 1;
    const uint8_t *t = p + 6;
    size_t tn = n - 6;
    int le;
    if (t[0] == 'I' && t[1] == 'I') le = 1;
    else if (t[0] == 'M' && t[1] == 'M') le = 0;
    else return 1;
    if (rd16(t + 2, le) != 42) return 1;
    uint32_t ifd = rd32(t + 4, le);
    if (ifd > tn || tn - ifd < 2) return 1;
    uint32_t count = rd16(t + ifd, le);
    for (uint32_t i = 0; i < count; i++) {
        size_t off = (size_t)ifd + 2 + (size_t)i * 12;
        if (off > tn || tn - off < 12) return 1;
        const uint8_t *e = t + off;
        if (rd16(e, le) != 0x0112) continue;
        uint32_t type = rd16(e + 2, le), v;
        if (type == 3) v = rd16(e + 8, le);      /* SHORT, the standard type */
        else if (type == 4) v = rd32(e + 8, le); /* LONG, written by some tools */
        else return 1;
        return v >= 1 && v <= 8 ? (int)v : 1;
    }
    return 1;
}

/* Applies an EXIF orientation as a pure index remap: output (x, y) reads source pixel
 * start + x * dx + y * dy, which covers all eight cases with one loop. */
static img_rgb8 *orient_apply(const img_rgb8 *s, int o)
{
    int swap = o >= 5;
    img_rgb8 *d = img_rgb8_new(swap ? s->h : s->w, swap ? s->w : s->h);
    if (!d) return NULL;
    ptrdiff_t W = s->w, H = s->h, start, dx, dy;
    switch (o) {
    case 2: start = W - 1; dx = -1; dy = W; break;               /* mirror left-right */
    case 3: start = W * H - 1; dx = -1; dy = -W; break;          /* rotate 180 */
    case 4: start = (H - 1) * W; dx = 1; dy = -W; break;         /* mirror top-bottom */
    case 5: start = 0; dx = W; dy = 1; break;                    /* transpose */
    case 6: start = (H - 1) * W; dx = -W; dy = 1; break;         /* rotate 90 clockwise */
    case 7: start = W * H - 1; dx = -W; dy = -1; break;          /* transverse */
    case 8: start = W - 1; dx = W; dy = -1; break;               /* rotate 90 anticlockwise */
    default: start = 0; dx = 1; dy = W; break;
    }
    for (int y = 0; y < d->h; y++) {
        uint8_t *o8 = d->px + (size_t)y * d->w * 3;
        ptrdiff_t si = start + y * dy;
        for (int x = 0; x < d->w; x++, si += dx) {
            const uint8_t *p = s->px + si * 3;
            o8[3 * x] = p[0];
            o8[3 * x + 1] = p[1];
            o8[3 * x + 2] = p[2];
        }
    }
    return d;
}

/* ---- JPEG ---------------------------------------------------------------------------- */

/* Heap-allocated so that nothing the longjmp crosses is an automatic variable. */
typedef struct jpg_ctx {
    struct jpeg_decompress_struct d;
    struct jpeg_error_mgr em;
    struct jpeg_progress_mgr prog;
    jmp_buf jb;
    int code;
    char msg[JMSG_LENGTH_MAX + 16];
    int created;
    img_rgb8 *img;
} jpg_ctx;

static void jpg_error_exit(j_common_ptr ci)
{
    jpg_ctx *c = (jpg_ctx *)ci->client_data;
    char m[JMSG_LENGTH_MAX];
    ci->err->format_message(ci, m);
    switch (ci->err->msg_code) {
    case JERR_OUT_OF_MEMORY: c->code = ENG_ENOMEM; break;
    case JERR_SOF_UNSUPPORTED: /* lossless, hierarchical */
    case JERR_BAD_PRECISION:   /* 12-bit */
    case JERR_NOT_COMPILED: c->code = ENG_EUNSUPPORTED; break;
    default: c->code = ENG_EFORMAT;
    }
    snprintf(c->msg, sizeof c->msg, "jpeg: %s", m);
    longjmp(c->jb, 1);
}

/* Warnings never reach stderr. Running out of data or entropy-coded data ending early makes
 * libjpeg pad with grey and carry on; a training image half grey is worse than none. */
static void jpg_emit_message(j_common_ptr ci, int level)
{
    if (level >= 0) return;
    int code = ci->err->msg_code;
    if (code == JWRN_JPEG_EOF || code == JWRN_HIT_MARKER || code == JWRN_ARITH_BAD_CODE) {
        jpg_ctx *c = (jpg_ctx *)ci->client_data;
        c->code = ENG_EFORMAT;
        snprintf(c->msg, sizeof c->msg, "jpeg: premature end of data (truncated or corrupt)");
        longjmp(c->jb, 1);
    }
    ci->err->num_warnings++;
}

static void jpg_progress(j_common_ptr ci)
{
    j_decompress_ptr d = (j_decompress_ptr)ci;
    if (d->input_scan_number > IMG_MAX_JPEG_SCANS) {
        jpg_ctx *c = (jpg_ctx *)ci->client_data;
        c->code = ENG_ELIMIT;
        snprintf(c->msg, sizeof c->msg, "jpeg: more than %d scans", IMG_MAX_JPEG_SCANS);
        longjmp(c->jb, 1);
    }
}

/* Only call inside the setjmp scope: every libjpeg error longjmps out of here. */
static void jpg_open(jpg_ctx *c, const uint8_t *buf, size_t len)
{
    c->d.err = jpeg_std_error(&c->em);
    c->em.error_exit = jpg_error_exit;
    c->em.emit_message = jpg_emit_message;
    c->d.client_data = c;
    jpeg_create_decompress(&c->d);
    c->created = 1;
    c->prog.progress_monitor = jpg_progress;
    c->d.progress = &c->prog;
    jpeg_mem_src(&c->d, buf, (unsigned long)len);
    jpeg_save_markers(&c->d, JPEG_APP0 + 1, 0xFFFF);
    jpeg_read_header(&c->d, TRUE);
}

static int jpg_orientation(const jpg_ctx *c)
{
    for (jpeg_saved_marker_ptr m = c->d.marker_list; m; m = m->next)
        if (m->marker == JPEG_APP0 + 1 && m->data_length >= 6 && !memcmp(m->data, "Exif\0\0", 6))
            return exif_orientation(m->data, m->data_length);
    return 1;
}

/* The largest DCT reduction that keeps both sides >= hint, among 1/8, 1/4 and 1/2 only:
 * libjpeg-turbo has SIMD code for those, while 3/8, 5/8, 6/8 and 7/8 run scalar and
 * measured slower than a full-size decode. */
static void jpg_pick_scale(jpg_ctx *c, int hint)
{
    c->d.scale_num = 1;
    for (unsigned denom = 8; hint > 0 && denom >= 2; denom /= 2) {
        c->d.scale_denom = denom;
        jpeg_calc_output_dimensions(&c->d);
        if (c->d.output_width >= (JDIMENSION)hint && c->d.output_height >= (JDIMENSION)hint)
            return;
    }
    c->d.scale_denom = 1;
}

/* libjpeg hands over Adobe CMYK inverted (255 = no ink), as Photoshop writes it; PIL makes
 * the same assumption for every CMYK JPEG. Then R = (255 - C)(255 - K) / 255 = c * k / 255. */
static void cmyk_row_to_rgb(const uint8_t *in, uint8_t *out, int w)
{
    for (int x = 0; x < w; x++) {
        unsigned k = in[4 * x + 3];
        for (int ch = 0; ch < 3; ch++) {
            unsigned t = in[4 * x + ch] * k + 128;
            out[3 * x + ch] = (uint8_t)((t + (t >> 8)) >> 8);
        }
    }
}

static void jpg_read_pixels(jpg_ctx *c)
{
    j_decompress_ptr d = &c->d;
    int cmyk = d->out_color_space == JCS_CMYK;
    JSAMPARRAY tmp = NULL;
    if (cmyk) tmp = d->mem->alloc_sarray((j_common_ptr)d, JPOOL_IMAGE, d->output_width * 4, 1);
    size_t stride = (size_t)c->img->w * 3;
    while (d->output_scanline < d->output_height) {
        uint8_t *dst = c->img->px + stride * d->output_scanline;
        if (cmyk) {
            if (jpeg_read_scanlines(d, tmp, 1) == 1) cmyk_row_to_rgb(tmp[0], dst, c->img->w);
            continue;
        }
        JSAMPROW rows[16];
        JDIMENSION n = d->output_height - d->output_scanline;
        if (n > 16) n = 16;
        for (JDIMENSION i = 0; i < n; i++) rows[i] = dst + stride * i;
        jpeg_read_scanlines(d, rows, n);
    }
}

static int jpg_decode(const uint8_t *buf, size_t len, const img_limits *l, int hint,
                      img_rgb8 **out, char *err, size_t errlen)
{
    jpg_ctx *c = calloc(1, sizeof *c);
    if (!c) return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    int rc;
    if (setjmp(c->jb)) {
        rc = eng_errf(err, errlen, c->code, "%s", c->msg);
        goto fail;
    }
    jpg_open(c, buf, len);
    rc = check_size(c->d.image_width, c->d.image_height, l, err, errlen);
    if (rc) goto fail;
    int orient = jpg_orientation(c);
    J_COLOR_SPACE cs = c->d.jpeg_color_space;
    c->d.out_color_space = cs == JCS_CMYK || cs == JCS_YCCK ? JCS_CMYK : JCS_RGB;
    jpg_pick_scale(c, hint);
    jpeg_start_decompress(&c->d);
    c->img = img_rgb8_new((int)c->d.output_width, (int)c->d.output_height);
    if (!c->img) {
        rc = eng_errf(err, errlen, ENG_ENOMEM, "out of memory for %ux%u pixels",
                      c->d.output_width, c->d.output_height);
        goto fail;
    }
    jpg_read_pixels(c);
    jpeg_finish_decompress(&c->d); /* reads up to EOI, so a cut-off tail is caught */
    if (orient != 1) {
        img_rgb8 *r = orient_apply(c->img, orient);
        if (!r) {
            rc = eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
            goto fail;
        }
        img_rgb8_free(c->img);
        c->img = r;
    }
    *out = c->img;
    jpeg_destroy_decompress(&c->d);
    free(c);
    return 0;
fail:
    if (c->created) jpeg_destroy_decompress(&c->d);
    img_rgb8_free(c->img);
    free(c);
    return rc;
}

static int jpg_probe(const uint8_t *buf, size_t len, img_info *info, char *err, size_t errlen)
{
    jpg_ctx *c = calloc(1, sizeof *c);
    if (!c) return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    int rc = 0;
    if (setjmp(c->jb)) {
        rc = eng_errf(err, errlen, c->code, "%s", c->msg);
        goto done;
    }
    jpg_open(c, buf, len);
    info->format = IMG_JPEG;
    info->orientation = jpg_orientation(c);
    int swap = info->orientation >= 5;
    info->width = (int)(swap ? c->d.image_height : c->d.image_width);
    info->height = (int)(swap ? c->d.image_width : c->d.image_height);
done:
    if (c->created) jpeg_destroy_decompress(&c->d);
    free(c);
    return rc;
}

/* ---- PNG ----------------------------------------------------------------------------- */

typedef struct png_ctx {
    png_structp png;
    png_infop info;
    const uint8_t *buf;
    size_t len, pos;
    uint32_t w, h; /* from IHDR, checked against the limits before libpng starts */
    char msg[256];
    img_rgb8 *img;
    png_bytep *rows;
} png_ctx;

static void png_on_error(png_structp png, png_const_charp m)
{
    png_ctx *c = png_get_error_ptr(png);
    snprintf(c->msg, sizeof c->msg, "png: %s", m);
    png_longjmp(png, 1);
}

static void png_on_warning(png_structp png, png_const_charp m) {}

static void png_read_mem(png_structp png, png_bytep dst, size_t n)
{
    png_ctx *c = png_get_io_ptr(png);
    if (n > c->len - c->pos) png_error(png, "premature end of data");
    memcpy(dst, c->buf + c->pos, n);
    c->pos += n;
}

/* IHDR must be the first chunk, so its size can be judged before libpng reads anything
 * further (ancillary chunks before IDAT can be large). */
static int png_peek_size(const uint8_t *p, size_t len, uint32_t *w, uint32_t *h,
                         char *err, size_t errlen)
{
    if (len < 8 + 8 + 13 || rd32(p + 8, 0) != 13 || memcmp(p + 12, "IHDR", 4))
        return eng_errf(err, errlen, ENG_EFORMAT, "png: missing IHDR header");
    *w = rd32(p + 16, 0);
    *h = rd32(p + 20, 0);
    return 0;
}

static int png_ctx_open(png_ctx *c, const uint8_t *buf, size_t len, char *err, size_t errlen)
{
    c->buf = buf;
    c->len = len;
    c->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, c, png_on_error, png_on_warning);
    if (c->png) c->info = png_create_info_struct(c->png);
    if (!c->png || !c->info) return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    png_set_read_fn(c->png, c, png_read_mem);
    /* Our own check_size judges dimensions; libpng's defaults would reject with a vaguer
     * reason. Chunk memory stays bounded. */
    png_set_user_limits(c->png, 0x7fffffff, 0x7fffffff);
    png_set_chunk_malloc_max(c->png, (png_alloc_size_t)8 << 20);
    return 0;
}

/* Every format becomes 8-bit RGB: palette expanded (its tRNS alpha then stripped), grey
 * replicated, 16 bits cut to their high byte, alpha dropped (not composited, as PIL's
 * convert("RGB") does). No gamma correction: PIL applies none either. */
static void png_set_rgb8(png_ctx *c)
{
    int ct = png_get_color_type(c->png, c->info), bd = png_get_bit_depth(c->png, c->info);
    if (ct == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(c->png);
    if (ct == PNG_COLOR_TYPE_GRAY && bd < 8) png_set_expand_gray_1_2_4_to_8(c->png);
    if (bd == 16) png_set_strip_16(c->png);
    png_set_strip_alpha(c->png);
    if (ct == PNG_COLOR_TYPE_GRAY || ct == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_gray_to_rgb(c->png);
    png_set_interlace_handling(c->png);
    png_read_update_info(c->png, c->info);
}

static void png_ctx_close(png_ctx *c)
{
    if (c->png) png_destroy_read_struct(&c->png, c->info ? &c->info : NULL, NULL);
    free(c->rows);
    img_rgb8_free(c->img);
    free(c);
}

static int png_decode(const uint8_t *buf, size_t len, const img_limits *l,
                      img_rgb8 **out, char *err, size_t errlen)
{
    uint32_t w = 0, h = 0;
    int rc = png_peek_size(buf, len, &w, &h, err, errlen);
    if (!rc) rc = check_size(w, h, l, err, errlen);
    if (rc) return rc;
    png_ctx *c = calloc(1, sizeof *c);
    if (!c) return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    c->w = w;
    c->h = h;
    if ((rc = png_ctx_open(c, buf, len, err, errlen))) goto fail;
    if (setjmp(png_jmpbuf(c->png))) {
        rc = eng_errf(err, errlen, strstr(c->msg, "ut of memory") ? ENG_ENOMEM : ENG_EFORMAT,
                      "%s", c->msg);
        goto fail;
    }
    png_read_info(c->png, c->info);
    png_set_rgb8(c);
    if (png_get_image_width(c->png, c->info) != c->w ||
        png_get_image_height(c->png, c->info) != c->h ||
        png_get_rowbytes(c->png, c->info) != (size_t)c->w * 3) {
        rc = eng_errf(err, errlen, ENG_EFORMAT, "png: unexpected row layout after conversion");
        goto fail;
    }
    c->img = img_rgb8_new((int)c->w, (int)c->h);
    c->rows = malloc(sizeof *c->rows * c->h);
    if (!c->img || !c->rows) {
        rc = eng_errf(err, errlen, ENG_ENOMEM, "out of memory for %ux%u pixels", c->w, c->h);
        goto fail;
    }
    for (uint32_t y = 0; y < c->h; y++) c->rows[y] = c->img->px + (size_t)y * c->w * 3;
    png_read_image(c->png, c->rows);
    png_read_end(c->png, NULL); /* reads through IEND, so a cut-off tail is caught */
    *out = c->img;
    c->img = NULL;
    png_ctx_close(c);
    return 0;
fail:
    png_ctx_close(c);
    return rc;
}

static int png_probe(const uint8_t *buf, size_t len, img_info *info, char *err, size_t errlen)
{
    png_ctx *c = calloc(1, sizeof *c);
    if (!c) return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    int rc = png_ctx_open(c, buf, len, err, errlen);
    if (rc) goto done;
    if (setjmp(png_jmpbuf(c->png))) {
        rc = eng_errf(err, errlen, ENG_EFORMAT, "%s", c->msg);
        goto done;
    }
    png_read_info(c->png, c->info);
    info->format = IMG_PNG;
    info->orientation = 1;
    /* libpng caps dimensions at 2^31 - 1, so they fit an int. */
    info->width = (int)png_get_image_width(c->png, c->info);
    info->height = (int)png_get_image_height(c->png, c->info);
done:
    png_ctx_close(c);
    return rc;
}

/* ---- entry points -------------------------------------------------------------------- */

int img_probe(const void *buf, size_t len, img_info *info, char *err, size_t errlen)
{
    if (!info) return eng_errf(err, errlen, ENG_EINVAL, "img_probe: no info");
    memset(info, 0, sizeof *info);
    switch (img_sniff(buf, len)) {
    case IMG_JPEG: return jpg_probe(buf, len, info, err, errlen);
    case IMG_PNG: return png_probe(buf, len, info, err, errlen);
    default: return eng_errf(err, errlen, ENG_EUNSUPPORTED, "unsupported image format");
    }
}

int img_decode(const void *buf, size_t len, const img_limits *lim, int min_side_hint,
               img_rgb8 **out, char *err, size_t errlen)
{
    if (!out) return eng_errf(err, errlen, ENG_EINVAL, "img_decode: no output");
    *out = NULL;
    if (min_side_hint < 0)
        return eng_errf(err, errlen, ENG_EINVAL, "negative size hint %d", min_side_hint);
    img_limits l = limits_resolve(lim);
    switch (img_sniff(buf, len)) {
    case IMG_JPEG: return jpg_decode(buf, len, &l, min_side_hint, out, err, errlen);
    case IMG_PNG: return png_decode(buf, len, &l, out, err, errlen);
    default: return eng_errf(err, errlen, ENG_EUNSUPPORTED, "unsupported image format");
    }
}

int img_load_file(const char *path, const img_limits *lim, int min_side_hint,
                  img_rgb8 **out, char *err, size_t errlen)
{
    if (!out) return eng_errf(err, errlen, ENG_EINVAL, "img_load_file: no output");
    *out = NULL;
    img_limits l = limits_resolve(lim);
    void *buf = NULL;
    size_t len = 0;
    int rc = eng_file_read(path, l.max_file_bytes, &buf, &len, err, errlen);
    if (rc) return rc;
    char why[256] = "";
    rc = img_decode(buf, len, &l, min_side_hint, out, why, sizeof why);
    free(buf);
    if (rc) return eng_errf(err, errlen, rc, "%s: %s", path, why);
    return 0;
}
