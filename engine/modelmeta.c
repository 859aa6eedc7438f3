#include "modelmeta.h"

#include <stdlib.h>
#include <string.h>

/* One UTF-8 sequence at s into *c; how many bytes it took (1 with U+FFFD when malformed). */
static size_t utf8_get(const unsigned char *s, uint32_t *c)
{
    size_t k = s[0] < 0x80 ? 0 : (s[0] & 0xe0) == 0xc0 ? 1 : (s[0] & 0xf0) == 0xe0 ? 2 : (s[0] & 0xf8) == 0xf0 ? 3 : 9;
    if (k == 0) return *c = s[0], 1;
    if (k == 9) return *c = 0xfffd, 1;
    uint32_t v = s[0] & (0x3f >> k);
    for (size_t i = 1; i <= k; i++) {
        if ((s[i] & 0xc0) != 0x80) return *c = 0xfffd, 1;
        v = v << 6 | (s[i] & 0x3f);
    }
    *c = v;
    return k + 1;
}

static size_t utf8_chars(const char *s)
{
    size_t n = 0;
    uint32_t c;
    for (const unsigned char *p = (const unsigned char *)s; *p; n++) p += utf8_get(p, &c);
    return n;
}

int eng_meta_put(eng_npz *z, const char *const *names, int n, int resolution)
{
    if (resolution > 0) {
        int64_t one = 1;
        eng_tensor *r = eng_tensor_new(ENG_I64, 0, 1, &one);
        if (!r) return ENG_ENOMEM;
        *(int64_t *)r->data = resolution;
        if (eng_npz_put(z, ENG_META_RESOLUTION, r)) return ENG_ENOMEM;
    }
    if (!names || n <= 0) return 0;
    size_t width = 1;
    for (int i = 0; i < n; i++) width = utf8_chars(names[i]) > width ? utf8_chars(names[i]) : width;
    int64_t shape = n;
    eng_tensor *t = eng_tensor_new(ENG_STR, 4 * width, 1, &shape);
    if (!t) return ENG_ENOMEM;
    for (int i = 0; i < n; i++) { /* little-endian UTF-32, zero padded */
        unsigned char *o = (unsigned char *)t->data + (size_t)i * t->itemsize;
        uint32_t c;
        for (const unsigned char *p = (const unsigned char *)names[i]; *p; o += 4) {
            p += utf8_get(p, &c);
            o[0] = (unsigned char)c, o[1] = (unsigned char)(c >> 8), o[2] = (unsigned char)(c >> 16), o[3] = 0;
        }
    }
    return eng_npz_put(z, ENG_META_CLASSES, t) ? ENG_ENOMEM : 0;
}

static int get_labels(const eng_tensor *t, eng_labels **out, char *err, size_t errlen)
{
    if (t->dtype != ENG_STR || t->ndim != 1 || t->shape[0] < 1 || t->shape[0] > 1000000)
        return eng_errf(err, errlen, ENG_EFORMAT, "%s must be a 1-D array of strings", ENG_META_CLASSES);
    eng_labels *l = calloc(1, sizeof *l);
    size_t cap = t->itemsize + 8; /* a UTF-32 unit takes at most 4 UTF-8 bytes */
    char *buf = malloc(cap);
    if (l) l->names = calloc((size_t)t->shape[0], sizeof *l->names);
    for (int64_t i = 0; l && l->names && buf && i < t->shape[0]; i++) {
        if (eng_tensor_str(t, i, buf, cap)) break;
        if (!(l->names[l->n] = strdup(buf))) break;
        l->n++;
    }
    int rc = l && l->n == t->shape[0] ? 0 : eng_errf(err, errlen, ENG_EFORMAT, "%s is unreadable", ENG_META_CLASSES);
    free(buf);
    if (rc) eng_labels_free(l), l = NULL;
    *out = l;
    return rc;
}

int eng_meta_get(const eng_npz *z, eng_meta *m, char *err, size_t errlen)
{
    memset(m, 0, sizeof *m);
    const eng_tensor *r = eng_npz_get(z, ENG_META_RESOLUTION), *c = eng_npz_get(z, ENG_META_CLASSES);
    if (r) {
        if (r->dtype != ENG_I64 || eng_tensor_numel(r) != 1 || *(const int64_t *)r->data < 1 ||
            *(const int64_t *)r->data > 65536)
            return eng_errf(err, errlen, ENG_EFORMAT, "%s must be one int64 from 1 to 65536", ENG_META_RESOLUTION);
        m->resolution = (int)*(const int64_t *)r->data;
    }
    return c ? get_labels(c, &m->labels, err, errlen) : 0;
}

int eng_meta_read(const char *path, eng_meta *m, char *err, size_t errlen)
{
    eng_npz *z = NULL;
    memset(m, 0, sizeof *m);
    int rc = eng_npz_load_prefix(path, ENG_META_PREFIX, NULL, &z, err, errlen);
    if (!rc) rc = eng_meta_get(z, m, err, errlen);
    eng_npz_free(z);
    return rc;
}

void eng_meta_clear(eng_meta *m)
{
    eng_labels_free(m->labels);
    memset(m, 0, sizeof *m);
}
