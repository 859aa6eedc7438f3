/* BiT pre-processing exactly as the official transforms: PIL's antialiased bilinear resize on
 * 8-bit RGB (bit-exact), random crop and flip, v/255 then (v-0.5)/0.5 as planar CHW float32.
 * Float results go into caller memory; pre_resize returns a new img_rgb8 the caller frees. */
#ifndef BIT_PREPROC_H
#define BIT_PREPROC_H

#include "image.h"
#include "rng.h"

/* Largest output side accepted; far beyond any BiT resolution, and keeps tables small. */
#define PRE_MAX_SIDE 8192

/* PIL Image.resize((out_w, out_h), BILINEAR): separable triangle filter, horizontal pass
 * first, each pass skipped when its size is unchanged, integer weights of 22 bits and an
 * 8-bit image between the passes. Aspect ratio is not kept. */
int pre_resize(const img_rgb8 *src, int out_w, int out_h, img_rgb8 **out,
               char *err, size_t errlen);

/* The window (x0, y0, w, h) of img, mirrored left-right when flip, written to dst as CHW
 * float32 (3 * h * w values) with v/255 then (v-0.5)/0.5 computed as torchvision does in
 * float32. The window must lie inside img. */
int pre_normalize(const img_rgb8 *img, int x0, int y0, int w, int h, int flip, float *dst,
                  char *err, size_t errlen);

/* Evaluation: resize to (crop, crop) ignoring aspect, normalise into dst[3 * crop * crop]. */
int pre_eval(const img_rgb8 *src, int crop, float *dst, char *err, size_t errlen);

/* One draw of the training augmentation, so the result depends only on the caller's rng. */
typedef struct pre_aug {
    int x0, y0; /* top-left of the crop in the precrop x precrop image */
    int flip;   /* 1: mirror left-right */
} pre_aug;

/* torchvision's order: RandomCrop draws the row offset, then the column; then the flip coin. */
void pre_aug_draw(eng_rng *rng, int precrop, int crop, pre_aug *aug);

/* Training: resize to (precrop, precrop) ignoring aspect, crop (crop, crop) at aug->x0/y0,
 * mirror when aug->flip, normalise into dst[3 * crop * crop]. Crop and flip happen on the
 * 8-bit image while normalising, so no full-size float copy is made. */
int pre_train(const img_rgb8 *src, int precrop, int crop, const pre_aug *aug, float *dst,
              char *err, size_t errlen);

#endif
