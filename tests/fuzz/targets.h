/* The fuzz targets as plain functions: the libFuzzer programs (fuzz_main.c) and the
 * regression test of every build (tests/test_fuzz_regress.c) call the same code. Each takes
 * any bytes and returns 0; when the code under test breaks a promise of its own API on an
 * input it accepted, the target abort()s, so a wrong answer is a crash like a memory error. */
#ifndef BIT_FZ_TARGETS_H
#define BIT_FZ_TARGETS_H

#include <stddef.h>
#include <stdint.h>

/* The bearer token of the fuzzed server and the fixed multipart boundary: the seed corpus
 * must use the same ones. */
#define FZ_TOKEN "fuzz-token-0123456789"
#define FZ_BOUNDARY "fzB0undary-x"

int fz_npy(const uint8_t *d, size_t n);       /* eng_npy_parse */
int fz_npz(const uint8_t *d, size_t n);       /* eng_npz_load */
int fz_arch(const uint8_t *d, size_t n);      /* eng_arch_from_npz on records, see below */
int fz_image(const uint8_t *d, size_t n);     /* hint byte, then img_probe + img_decode */
int fz_archive(const uint8_t *d, size_t n);   /* arc_extract_fd */
int fz_params(const uint8_t *d, size_t n);    /* job JSON: ft_params_from_json + ft_resolve */
int fz_http(const uint8_t *d, size_t n);      /* routing, percent-decoding, query, auth */
int fz_multipart(const uint8_t *d, size_t n); /* chunk-size seed byte, then the body */

typedef struct fz_target {
    const char *name;
    int (*fn)(const uint8_t *d, size_t n);
} fz_target;

extern const fz_target fz_targets[];
extern const size_t fz_ntargets;

/* Inputs the code under test accepted (parsed, decoded, extracted...) since the start: lets
 * the regression test tell that a valid input really got through to the checks. */
extern unsigned long fz_accepted;

/* fz_arch's input: one byte choosing width (bit 0: 32 or 64) and head (bits 1-2: none, 1,
 * 10, 100), then 2-byte records (op, arg). op >> 6 says what arg picks: 0 the template key
 * arg (the parameters of a units {4, 4, 6, 4} model, in eng_arch_params order) with its
 * shape; 1 the same with dimension op & 3 replaced by an odd value; 2 the same as
 * uint8 (op odd: int64); 3 a raw key of arg % 64 bytes that follow, then a byte ndim % 9
 * and one byte per dimension. Writes the records of a complete, valid checkpoint of the
 * given units (each 1..4, block 3 up to 6) into out and returns their length (0: cap). */
size_t fz_arch_seed(const int units[4], int header, uint8_t *out, size_t cap);

/* Writes the seed corpus into dir/TARGET/ (seeds.c); fixtures (the bit-tiny directory, may
 * be NULL) adds its small .npy files and images. 0, or -1 if anything could not be written. */
int fz_write_seeds(const char *dir, const char *fixtures);

#endif
