/* What bitd adds to an official-schema checkpoint: its class names and the resolution it
 * evaluates at, under "bitd/" keys. Official loaders look their keys up by name and never
 * read these; bitd's own loaders (eng_arch_from_npz, the net, the trainer) do the same. A
 * run's model.npz carries them, so a model downloaded from the server or copied out of a run
 * keeps its labels and size. An eng_meta owns its labels. */
#ifndef BIT_MODELMETA_H
#define BIT_MODELMETA_H

#include "labels.h"
#include "npz.h"

#define ENG_META_PREFIX "bitd/"
#define ENG_META_CLASSES "bitd/classes"       /* '<U' [classes]: names by class index */
#define ENG_META_RESOLUTION "bitd/resolution" /* '<i8' [1]: the evaluation (crop) size */

typedef struct eng_meta {
    eng_labels *labels; /* NULL when the checkpoint has no names */
    int resolution;     /* 0 when it does not say */
} eng_meta;

/* Adds (or replaces) the keys; names may be NULL (no classes key), resolution 0 (no key). */
int eng_meta_put(eng_npz *z, const char *const *names, int n, int resolution);
/* From a loaded checkpoint; absent keys leave their field empty, malformed ones are
 * ENG_EFORMAT. */
int eng_meta_get(const eng_npz *z, eng_meta *m, char *err, size_t errlen);
/* From a file, reading only the bitd/ entries. */
int eng_meta_read(const char *path, eng_meta *m, char *err, size_t errlen);
void eng_meta_clear(eng_meta *m);

#endif
