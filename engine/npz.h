/* .npz: NumPy's zip of .npy entries (stored or deflated), read and written with libzip.
 * An eng_npz owns its names and tensors; eng_npz_get returns borrowed pointers. */
#ifndef BIT_NPZ_H
#define BIT_NPZ_H

#include "npy.h"

typedef struct eng_npz {
    int n, cap;
    char **names;         /* key without the ".npy" suffix */
    eng_tensor **tensors;
} eng_npz;

eng_npz *eng_npz_new(void);
void eng_npz_free(eng_npz *z);
/* Limits on what a file may claim; 0 fields take the defaults (100 000 entries, 16 GiB). */
typedef struct eng_npz_limits {
    int64_t max_entries;
    uint64_t max_total_bytes;
} eng_npz_limits;
int eng_npz_load(const char *path, const eng_npz_limits *lim, eng_npz **out,
                 char *err, size_t errlen);
/* The same checks as eng_npz_load, reading only each entry's .npy header: tensors have their
 * dtype and shape but no data (NULL). Cheap enough for probes of multi-gigabyte files. */
int eng_npz_load_headers(const char *path, const eng_npz_limits *lim, eng_npz **out,
                         char *err, size_t errlen);
/* Only the entries whose key starts with prefix, whole (the others are skipped unread): a
 * few small arrays out of a multi-gigabyte checkpoint. */
int eng_npz_load_prefix(const char *path, const char *prefix, const eng_npz_limits *lim,
                        eng_npz **out, char *err, size_t errlen);
/* Takes ownership of t (also on failure); replaces an existing key. */
int eng_npz_put(eng_npz *z, const char *name, eng_tensor *t);
const eng_tensor *eng_npz_get(const eng_npz *z, const char *name);
eng_tensor *eng_npz_get_mut(eng_npz *z, const char *name);
/* Writes atomically (temporary file, fsync, rename); compress = deflate the entries. */
int eng_npz_save(const char *path, const eng_npz *z, int compress, char *err, size_t errlen);

#endif
