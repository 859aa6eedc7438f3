/* A tensor dataset for tests that need one quickly: an .npz (x: n x 3 x 32 x 32 floats, y: n
 * labels) whose classes differ in one colour channel, so a few steps learn it. */
#ifndef BIT_TDATA_H
#define BIT_TDATA_H

#include "npz.h"

/* Writes it to path; 0 or an engine error code. */
static inline int td_colours_npz(const char *path, int n, int classes)
{
    char err[256];
    int64_t xs[] = {n, 3, 32, 32}, ys[] = {n};
    eng_tensor *x = eng_tensor_new(ENG_F32, 0, 4, xs), *y = eng_tensor_new(ENG_I64, 0, 1, ys);
    for (int i = 0; i < n; i++) {
        ((int64_t *)y->data)[i] = i % classes;
        for (int k = 0; k < 3 * 1024; k++)
            ((float *)x->data)[(size_t)i * 3 * 1024 + k] = (float)((k * 7 + i * 13) % 17) / 40.0f - 0.2f +
                                                           (k / 1024 == i % classes ? 0.5f : 0.0f);
    }
    eng_npz *z = eng_npz_new();
    eng_npz_put(z, "x", x), eng_npz_put(z, "y", y);
    int rc = eng_npz_save(path, z, 0, err, sizeof err);
    eng_npz_free(z);
    return rc;
}

#endif
