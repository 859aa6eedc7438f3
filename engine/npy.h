/* Tensors and NumPy's .npy format (C order, little-endian; float32, int64, uint8 and
 * fixed-width unicode strings). An eng_tensor owns its data: free it with eng_tensor_free.
 * Parsing never trusts the header: every size is checked against the bytes present. */
#ifndef BIT_NPY_H
#define BIT_NPY_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"

#define ENG_MAX_DIMS 8

typedef enum {
    ENG_F32 = 0, /* '<f4' */
    ENG_I64 = 1, /* '<i8' */
    ENG_U8 = 2,  /* '|u1' */
    ENG_STR = 3, /* '<Un': n UTF-32 code units per element (itemsize 4n) */
} eng_dtype;

typedef struct eng_tensor {
    eng_dtype dtype;
    size_t itemsize;
    int ndim;
    int64_t shape[ENG_MAX_DIMS];
    void *data; /* 64-byte aligned, numel * itemsize bytes */
} eng_tensor;

/* A zero-filled tensor; itemsize is implied except for ENG_STR (pass 4 * chars). NULL on
 * overflow or out of memory. */
eng_tensor *eng_tensor_new(eng_dtype dtype, size_t itemsize, int ndim, const int64_t *shape);
void eng_tensor_free(eng_tensor *t);
eng_tensor *eng_tensor_clone(const eng_tensor *t);
int64_t eng_tensor_numel(const eng_tensor *t);
size_t eng_tensor_bytes(const eng_tensor *t);
/* Writes "[7, 7, 3, 64]" into buf. */
void eng_shape_str(int ndim, const int64_t *shape, char *buf, size_t len);
/* 1 when t is float32 with exactly this shape. */
int eng_tensor_is_f32(const eng_tensor *t, int ndim, const int64_t *shape);
/* Element i of a string tensor as UTF-8 (NUL padding dropped), into buf. */
int eng_tensor_str(const eng_tensor *t, int64_t i, char *buf, size_t len);

/* The header of an .npy image (magic, version, dict) into hdr: dtype, itemsize and shape, data
 * NULL; *data_off is where the array's bytes start. Every check of eng_npy_parse but the data
 * size, which eng_npy_check_size makes against the bytes present (have). One parser for the
 * whole and the header-only reads (checkpoint probes), so the fuzz target covers both. */
int eng_npy_parse_header(const void *buf, size_t len, eng_tensor *hdr, size_t *data_off,
                         char *err, size_t errlen);
int eng_npy_check_size(const eng_tensor *hdr, size_t have, char *err, size_t errlen);
/* How many leading bytes hold the header (the data offset), from the first 12 bytes (10 for
 * version 1); 0 when they are not an .npy prefix. */
size_t eng_npy_prefix_len(const void *buf, size_t len);
/* Parses a whole .npy image held in memory. */
int eng_npy_parse(const void *buf, size_t len, eng_tensor **out, char *err, size_t errlen);
int eng_npy_load(const char *path, eng_tensor **out, char *err, size_t errlen);
#define ENG_NPY_HEADER_MAX 512
/* Writes the version-1.0 header for t (padded so data starts 64-byte aligned) into out;
 * returns its length, 0 if cap is too small. */
size_t eng_npy_header(const eng_tensor *t, unsigned char *out, size_t cap);
/* Serialises to a malloc'd buffer (caller frees with free()). */
int eng_npy_serialize(const eng_tensor *t, void **buf, size_t *len, char *err, size_t errlen);
/* Writes atomically: temporary file, fsync, rename. */
int eng_npy_save(const char *path, const eng_tensor *t, char *err, size_t errlen);

#endif
