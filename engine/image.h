/* Image decoding: JPEG (libjpeg-turbo) and PNG (libpng) held in memory become 8-bit RGB with
 * the EXIF orientation applied; sizes are checked against limits before pixels are allocated.
 * An img_rgb8 owns its pixels: release it with img_rgb8_free. Input buffers are only borrowed. */
#ifndef BIT_IMAGE_H
#define BIT_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"

/* libjpeg's own ceiling is 65500 per side; the pixel limit keeps a decode under ~120 MB. */
#define IMG_DEFAULT_MAX_PIXELS 40000000ull
#define IMG_DEFAULT_MAX_SIDE 65500u
#define IMG_DEFAULT_MAX_FILE_BYTES ((size_t)128 << 20)
/* A progressive JPEG can hold any number of scans, each a full pass over the coefficients:
 * real encoders write about ten, so far more than that is a denial-of-service attempt. */
#define IMG_MAX_JPEG_SCANS 500

typedef enum { IMG_UNKNOWN = 0, IMG_JPEG = 1, IMG_PNG = 2 } img_format;

/* A zero field means the default; a NULL img_limits pointer means all defaults. */
typedef struct img_limits {
    uint64_t max_pixels;   /* width * height as stored, before any DCT scaling */
    uint32_t max_side;     /* either side, as stored */
    size_t max_file_bytes; /* img_load_file only */
} img_limits;

typedef struct img_rgb8 {
    int w, h;
    uint8_t *px; /* h rows of w * 3 bytes (R, G, B), no padding, 64-byte aligned */
} img_rgb8;

/* Uninitialised pixels; NULL when a side is < 1 or the size overflows or memory runs out. */
img_rgb8 *img_rgb8_new(int w, int h);
void img_rgb8_free(img_rgb8 *img);

/* What a probe learns from the headers alone. width/height are as displayed, i.e. after the
 * EXIF rotation (swapped for orientations 5..8). */
typedef struct img_info {
    img_format format;
    int width, height;
    int orientation; /* EXIF 1..8; 1 when absent or not JPEG */
} img_info;

/* Format by magic bytes (never by name): IMG_UNKNOWN for anything but JPEG and PNG. */
img_format img_sniff(const void *buf, size_t len);
const char *img_format_name(img_format f);

/* Reads headers only (no pixel decoding, no pixel memory). Does not apply limits, so a
 * caller can see how large a refused image is. ENG_EUNSUPPORTED for other formats. */
int img_probe(const void *buf, size_t len, img_info *info, char *err, size_t errlen);

/* Decodes to RGB8 into a new *out. min_side_hint > 0 lets a JPEG be decoded at a reduced
 * DCT scale (1/2, 1/4 or 1/8, the largest reduction that keeps both output sides >= the
 * hint), so a caller that will shrink the image anyway pays less; 0 decodes at full size
 * (what bit-exact references need). Errors: ENG_EUNSUPPORTED ("unsupported image format",
 * or a JPEG kind libjpeg cannot decode), ENG_ELIMIT (over lim, refused before allocation),
 * ENG_EFORMAT (corrupt or truncated, with the reason), ENG_ENOMEM, ENG_EINVAL. */
int img_decode(const void *buf, size_t len, const img_limits *lim, int min_side_hint,
               img_rgb8 **out, char *err, size_t errlen);

/* Reads path (refusing files over lim->max_file_bytes with ENG_ELIMIT) and decodes it. */
int img_load_file(const char *path, const img_limits *lim, int min_side_hint,
                  img_rgb8 **out, char *err, size_t errlen);

#endif
