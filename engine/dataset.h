/* Labelled datasets for fine-tuning and evaluation: class folders in a directory or an
 * archive (<class>/<image>, or train/<class>/<image> with an optional val/), or preprocessed
 * tensors in an .npz. A ds_dataset owns its example lists, class names and (for archives) the
 * directory it unpacked into; callers get borrowed strings and copies of pixels. */
#ifndef BIT_DATASET_H
#define BIT_DATASET_H

#include <jansson.h>
#include <stdint.h>

#include "arc.h"
#include "image.h"
#include "rng.h"

typedef enum { DS_TRAIN = 0, DS_VAL = 1 } ds_split;

typedef struct ds_opts {
    double holdout;         /* validation fraction when there is no val/ (0 = default 10 %) */
    uint64_t seed;          /* hold-out and few-shot draws */
    int examples_per_class; /* 0 = every training image; else K per class, drawn with seed */
    const char *unpack_dir; /* archives unpack here (must not exist); NULL = a temporary
                               directory removed by ds_free */
    arc_limits arc;         /* archive limits (zeros: defaults) */
    img_limits img;         /* image limits (zeros: defaults) */
} ds_opts;

typedef struct ds_dataset ds_dataset;

/* Opens path: a directory, an archive (tar, tar.gz, tar.xz, zip) or an .npz of tensors.
 * Image datasets are checked whole here: every image is decoded (cheaply, at 1/8 scale where
 * JPEG allows); non-images are skipped and counted, undecodable images skipped and reported.
 * Fewer than 2 classes, or a class without a usable image, is an error. */
int ds_open(const char *path, const ds_opts *o, ds_dataset **out, char *err, size_t errlen);
void ds_free(ds_dataset *d);

int ds_num_classes(const ds_dataset *d);
const char *ds_class_name(const ds_dataset *d, int i);
int64_t ds_size(const ds_dataset *d, ds_split s);
int ds_label(const ds_dataset *d, ds_split s, int64_t i);
/* Tensor datasets: the fixed input size (0, 0 for image datasets, which are resized). */
void ds_tensor_size(const ds_dataset *d, int *h, int *w);
/* Median original width and height of the training images (tensor datasets: H, W). */
void ds_median_size(const ds_dataset *d, int *w, int *h);
/* A 64-bit fingerprint of the examples, labels and class names (not of the pixels). */
uint64_t ds_fingerprint(const ds_dataset *d);
/* The summary users see: classes, counts per split and class, skipped files, median size. */
json_t *ds_summary(const ds_dataset *d);

/* Example i of split s, preprocessed into dst (3 * crop * crop floats; tensor datasets:
 * 3 * H * W, untouched by crop and augmentation): the training transform (resize to precrop,
 * random crop, flip; drawn from rng) when augment, else the evaluation transform. */
int ds_example(const ds_dataset *d, ds_split s, int64_t i, int augment, int precrop, int crop,
               eng_rng *rng, float *dst, char *err, size_t errlen);

/* ---- batches ---- */

typedef struct ds_loader_opts {
    ds_split split;
    int batch;         /* examples per delivered batch (a micro-batch when training splits) */
    int replacement;   /* draw examples with replacement (training set smaller than a batch) */
    int precrop, crop;
    int augment;       /* training transform (image datasets) */
    int shuffle;       /* reshuffle every epoch; else stored order, wrapping around */
    int sequential;    /* one pass over the split, last batch short (evaluation) */
    uint64_t seed;
    int threads;       /* decoding threads (0 = 1) */
    int prefetch;      /* batches prepared ahead (0 = 2) */
    int64_t start;     /* first batch index (resume) */
} ds_loader_opts;

typedef struct ds_loader ds_loader;

/* Batch b holds, for j < batch, the example at position p = b * batch + j of the epoch order
 * (epoch = p / size, a fresh seeded permutation per epoch when shuffling; with replacement,
 * a seeded draw per position, as the official code samples a split smaller than a batch).
 * Its augmentation is drawn from (seed, p): the same examples whatever the thread timing or
 * the micro-batch size. Decoding runs on background threads, `prefetch` batches ahead. */
int ds_loader_new(const ds_dataset *d, const ds_loader_opts *o, ds_loader **out, char *err,
                  size_t errlen);
/* The next batch into x [batch, 3, crop, crop] and y [batch]; *count = examples in it
 * (batch, or fewer at the end of a sequential pass). Returns ENG_ENOTFOUND after a
 * sequential pass is over. */
int ds_loader_next(ds_loader *l, float *x, int64_t *y, int *count, char *err, size_t errlen);
void ds_loader_free(ds_loader *l);

#endif
