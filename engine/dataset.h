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
 * Layout: train/ holding class folders makes train/<class>/ the training split and val/<class>/
 * (optional, its classes a subset) the validation split; a test/ beside them is ignored and any
 * other folder is an error. Otherwise every top-level folder is a class. Class index = the
 * name's strcmp position, as torchvision's ImageFolder (an empty class folder still counts, and
 * is an error); a class's images may sit at any depth below its folder. A lone top-level
 * folder (as in tar czf flowers.tgz flowers/) is descended into, in an archive or a directory
 * alike. Hidden entries and __MACOSX are ignored, symlinks neither followed nor counted.
 * Image datasets are checked whole here: every image is decoded (cheaply, at 1/8 scale where
 * JPEG allows). What is an image is decided by content (JPEG, PNG). Other files are skipped
 * and counted (non_image), except that one named like an image (.jpg, .webp, ...) is reported
 * as undecodable, as are images that fail to decode (the first 5 by name and reason); files
 * beside the class folders are counted as outside_class.
 * Validation without val/ (or x_val), or with no usable image in it: a stratified hold-out,
 * round(holdout * n) of each class's n training examples (at least one stays), drawn with
 * seed; examples_per_class then keeps K of each class's remaining training examples (another
 * seeded draw), an error when a class has fewer. Fewer than 2 classes, or a class without a usable training image, is an error.
 * Tensors: 'x' float32 [N, 3, H, W] (finite), 'y' int64 [N] in [0, classes), optional 'x_val'
 * and 'y_val' (then no hold-out), optional 'classes' (strings, unique, one per label at least;
 * else "0", "1", ...). */
int ds_open(const char *path, const ds_opts *o, ds_dataset **out, char *err, size_t errlen);
void ds_free(ds_dataset *d);

int ds_num_classes(const ds_dataset *d);
/* NULL when i is out of range (as ds_label's -1 and ds_example_name's NULL). */
const char *ds_class_name(const ds_dataset *d, int i);
int64_t ds_size(const ds_dataset *d, ds_split s);
int ds_label(const ds_dataset *d, ds_split s, int64_t i);
/* Example i's file relative to the layout root ("cat/1.jpg", "train/cat/1.jpg"); NULL for
 * tensor examples. Borrowed: lives as long as d. */
const char *ds_example_name(const ds_dataset *d, ds_split s, int64_t i);
/* Tensor datasets: the fixed input size (0, 0 for image datasets, which are resized). */
void ds_tensor_size(const ds_dataset *d, int *h, int *w);
/* Median original width and height (each on its own; the two middle values averaged for an
 * even count) of the final training split's images; tensor datasets: H, W. */
void ds_median_size(const ds_dataset *d, int *w, int *h);
/* A 64-bit fingerprint of the examples (their names relative to the layout root, or tensor
 * rows), labels, splits and class names; not of the pixels. A directory and its archive have
 * the same fingerprint. */
uint64_t ds_fingerprint(const ds_dataset *d);
/* The summary users see: kind, layout, root (wrapper folders descended into), classes, counts
 * per split and class, how validation was made (holdout fraction, seed), examples_per_class,
 * skipped files (non_image, outside_class, undecodable and the first few), median size.
 * The caller owns the result (json_decref). */
json_t *ds_summary(const ds_dataset *d);

/* Example i of split s, preprocessed into dst (3 * crop * crop floats; tensor datasets:
 * 3 * H * W, untouched by crop and augmentation): the training transform (resize to precrop,
 * random crop, flip; drawn from rng, which augment needs) when augment, else the evaluation
 * transform. A JPEG is decoded at a reduced DCT scale when both sides stay >= precrop (train)
 * or crop (eval), as img_decode's hint. Safe to call from several threads at once; an error
 * names the file. */
int ds_example(const ds_dataset *d, ds_split s, int64_t i, int augment, int precrop, int crop,
               eng_rng *rng, float *dst, char *err, size_t errlen);

/* ---- batches ---- */

typedef struct ds_loader_opts {
    ds_split split;
    int batch;         /* examples per delivered batch (a micro-batch when training splits) */
    int replacement;   /* draw examples with replacement (training set smaller than a batch);
                          not with sequential */
    int precrop, crop;
    int augment;       /* training transform (image datasets) */
    int shuffle;       /* reshuffle every epoch; else stored order, wrapping around */
    int sequential;    /* one pass over the split in stored order, last batch short
                          (evaluation) */
    uint64_t seed;
    int threads;       /* decoding threads (0 = 1, at most 256); all work on the oldest
                          unfinished batch first, one example at a time */
    int prefetch;      /* batches prepared ahead (0 = 2, at most 1024) */
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
 * sequential pass is over. A batch with an example that failed (a file gone since ds_open)
 * returns the error of the first such example by position; the next call moves on. */
int ds_loader_next(ds_loader *l, float *x, int64_t *y, int *count, char *err, size_t errlen);
/* Stops the threads (each finishes the example it is on, not its batch) and frees l. */
void ds_loader_free(ds_loader *l);

#endif
