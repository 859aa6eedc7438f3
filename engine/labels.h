/* Class names of a model (labels.txt: one name per line) and top-k softmax scores.
 * An eng_labels owns its strings. */
#ifndef BIT_LABELS_H
#define BIT_LABELS_H

#include "common.h"

typedef struct eng_labels {
    int n;
    char **names;
} eng_labels;

/* Reads at most 1 000 000 lines of at most 4096 bytes (a trailing "\r" is dropped). */
int eng_labels_load(const char *path, eng_labels **out, char *err, size_t errlen);
void eng_labels_free(eng_labels *l);
/* The label of class i, or NULL past the end (callers then show the index). */
const char *eng_labels_get(const eng_labels *l, int i);

/* The topk most likely classes of one row of logits, with softmax probabilities, best first.
 * Returns how many were written (min(topk, classes)). */
int eng_topk(const float *logits, int classes, int topk, int *idx, float *prob);

#endif
