#include "npy.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A checkpoint tensor larger than this is not a BiT tensor but a hostile header. */
#define NPY_MAX_BYTES ((size_t)16 << 30)

static size_t dtype_size(eng_dtype d)
{
    switch (d) {
    case ENG_F32: return 4;
    case ENG_I64: return 8;
    case ENG_U8: return 1;
    default: return 0;
    }
}

static int shape_bytes(int ndim, const int64_t *shape, size_t itemsize, size_t *out)
{
    size_t n = itemsize;
    int64_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || eng_mul_size(n, (size_t)shape[i], &n) != 0) return -1;
        /* eng_tensor_numel multiplies in int64 in this order: a zero dimension further on
         * must not let an unrepresentable count before it through. */
        if (shape[i] && numel > INT64_MAX / shape[i]) return -1;
        numel *= shape[i];
    }
    *out = n;
    return 0;
}

eng_tensor *eng_tensor_new(eng_dtype dtype, size_t itemsize, int ndim, const int64_t *shape)
{
    if (dtype != ENG_STR) itemsize = dtype_size(dtype);
    size_t bytes;
    if (ndim < 0 || ndim > ENG_MAX_DIMS || itemsize == 0 ||
        shape_bytes(ndim, shape, itemsize, &bytes) != 0)
        return NULL;
    eng_tensor *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->dtype = dtype;
    t->itemsize = itemsize;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    t->data = eng_calloc(bytes);
    if (!t->data) {
        free(t);
        return NULL;
    }
    return t;
}

void eng_tensor_free(eng_tensor *t)
{
    if (!t) return;
    eng_free(t->data);
    free(t);
}

int64_t eng_tensor_numel(const eng_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

size_t eng_tensor_bytes(const eng_tensor *t) { return (size_t)eng_tensor_numel(t) * t->itemsize; }

eng_tensor *eng_tensor_clone(const eng_tensor *t)
{
    eng_tensor *c = eng_tensor_new(t->dtype, t->itemsize, t->ndim, t->shape);
    if (c) memcpy(c->data, t->data, eng_tensor_bytes(t));
    return c;
}

void eng_shape_str(int ndim, const int64_t *shape, char *buf, size_t len)
{
    size_t off = 0;
    off += (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < ndim && off < len; i++)
        off += (size_t)snprintf(buf + off, len - off, "%s%lld", i ? ", " : "",
                                (long long)shape[i]);
    if (off < len) snprintf(buf + off, len - off, "]");
}

int eng_tensor_is_f32(const eng_tensor *t, int ndim, const int64_t *shape)
{
    if (!t || t->dtype != ENG_F32 || t->ndim != ndim) return 0;
    for (int i = 0; i < ndim; i++)
        if (t->shape[i] != shape[i]) return 0;
    return 1;
}

static size_t utf8_put(uint32_t c, char *o)
{
    if (c < 0x80) { o[0] = (char)c; return 1; }
    if (c < 0x800) { o[0] = (char)(0xC0 | c >> 6); o[1] = (char)(0x80 | (c & 63)); return 2; }
    if (c < 0x10000) {
        o[0] = (char)(0xE0 | c >> 12); o[1] = (char)(0x80 | ((c >> 6) & 63));
        o[2] = (char)(0x80 | (c & 63));
        return 3;
    }
    o[0] = (char)(0xF0 | c >> 18); o[1] = (char)(0x80 | ((c >> 12) & 63));
    o[2] = (char)(0x80 | ((c >> 6) & 63)); o[3] = (char)(0x80 | (c & 63));
    return 4;
}

int eng_tensor_str(const eng_tensor *t, int64_t i, char *buf, size_t len)
{
    if (t->dtype != ENG_STR || i < 0 || i >= eng_tensor_numel(t) || len == 0) return ENG_EINVAL;
    const unsigned char *p = (const unsigned char *)t->data + (size_t)i * t->itemsize;
    size_t o = 0;
    for (size_t k = 0; k + 4 <= t->itemsize; k += 4) {
        uint32_t c = p[k] | (uint32_t)p[k + 1] << 8 | (uint32_t)p[k + 2] << 16 |
                     (uint32_t)p[k + 3] << 24;
        if (c == 0) break;
        if (c > 0x10FFFF) return ENG_EFORMAT;
        if (o + 4 >= len) return ENG_ELIMIT;
        o += utf8_put(c, buf + o);
    }
    buf[o] = 0;
    return 0;
}

/* ---- header parsing: a Python dict literal, parsed by hand and strictly ---- */

static const char *find_key(const char *h, const char *key)
{
    char pat[32];
    snprintf(pat, sizeof pat, "'%s'", key);
    const char *p = strstr(h, pat);
    if (!p) return NULL;
    p += strlen(pat);
    while (*p == ' ') p++;
    if (*p != ':') return NULL;
    p++;
    while (*p == ' ') p++;
    return p;
}

static int parse_descr(const char *p, eng_dtype *dt, size_t *itemsize, char *err, size_t errlen)
{
    char d[16];
    size_t n = 0;
    if (*p != '\'') return eng_errf(err, errlen, ENG_EFORMAT, "npy header: descr is not a string");
    for (p++; *p && *p != '\'' && n < sizeof d - 1; p++) d[n++] = *p;
    d[n] = 0;
    if (*p != '\'') return eng_errf(err, errlen, ENG_EFORMAT, "npy header: bad descr");
    if (!strcmp(d, "<f4")) { *dt = ENG_F32; *itemsize = 4; return 0; }
    if (!strcmp(d, "<i8")) { *dt = ENG_I64; *itemsize = 8; return 0; }
    if (!strcmp(d, "|u1") || !strcmp(d, "<u1")) { *dt = ENG_U8; *itemsize = 1; return 0; }
    if (d[0] == '<' && d[1] == 'U' && isdigit((unsigned char)d[2])) {
        char *end;
        long chars = strtol(d + 2, &end, 10);
        if (*end || chars <= 0 || chars > 4096)
            return eng_errf(err, errlen, ENG_EUNSUPPORTED, "npy: unsupported string dtype %s", d);
        *dt = ENG_STR;
        *itemsize = (size_t)chars * 4;
        return 0;
    }
    if (d[0] == '>')
        return eng_errf(err, errlen, ENG_EUNSUPPORTED,
                        "npy: big-endian data (%s) is not supported; save it little-endian", d);
    return eng_errf(err, errlen, ENG_EUNSUPPORTED,
                    "npy: dtype %s is not supported (float32, int64, uint8 or strings only)", d);
}

static int parse_shape(const char *p, eng_tensor *t, char *err, size_t errlen)
{
    if (*p != '(') return eng_errf(err, errlen, ENG_EFORMAT, "npy header: shape is not a tuple");
    p++;
    t->ndim = 0;
    for (;;) {
        while (*p == ' ') p++;
        if (*p == ')') break;
        if (!isdigit((unsigned char)*p))
            return eng_errf(err, errlen, ENG_EFORMAT, "npy header: bad shape");
        if (t->ndim == ENG_MAX_DIMS)
            return eng_errf(err, errlen, ENG_EUNSUPPORTED, "npy: more than %d dimensions",
                            ENG_MAX_DIMS);
        int64_t v = 0;
        while (isdigit((unsigned char)*p)) {
            if (v > (INT64_MAX - 9) / 10)
                return eng_errf(err, errlen, ENG_EFORMAT, "npy header: dimension overflows");
            v = v * 10 + (*p++ - '0');
        }
        t->shape[t->ndim++] = v;
        while (*p == ' ') p++;
        if (*p == ',') p++;
        else if (*p != ')') return eng_errf(err, errlen, ENG_EFORMAT, "npy header: bad shape");
    }
    return 0;
}

size_t eng_npy_prefix_len(const void *buf, size_t len)
{
    const unsigned char *b = buf;
    if (len < 10 || memcmp(b, "\x93NUMPY", 6) != 0) return 0;
    if (b[6] == 1) return 10 + (b[8] | (size_t)b[9] << 8);
    if ((b[6] == 2 || b[6] == 3) && len >= 12)
        return 12 + (b[8] | (size_t)b[9] << 8 | (size_t)b[10] << 16 | (size_t)b[11] << 24);
    return 0;
}

int eng_npy_parse_header(const void *buf, size_t len, eng_tensor *hdr, size_t *data_off,
                         char *err, size_t errlen)
{
    const unsigned char *b = buf;
    memset(hdr, 0, sizeof *hdr);
    if (len < 10 || memcmp(b, "\x93NUMPY", 6) != 0)
        return eng_errf(err, errlen, ENG_EFORMAT, "not an npy file (bad magic)");
    size_t hlen, hoff;
    if (b[6] == 1) { hlen = b[8] | (size_t)b[9] << 8; hoff = 10; }
    else if (b[6] == 2 || b[6] == 3) {
        if (len < 12) return eng_errf(err, errlen, ENG_EFORMAT, "npy: truncated header");
        hlen = b[8] | (size_t)b[9] << 8 | (size_t)b[10] << 16 | (size_t)b[11] << 24;
        hoff = 12;
    } else return eng_errf(err, errlen, ENG_EUNSUPPORTED, "npy: format version %d", b[6]);
    if (hlen > 1 << 20 || hoff + hlen > len)
        return eng_errf(err, errlen, ENG_EFORMAT, "npy: truncated header");
    char *h = malloc(hlen + 1);
    if (!h) return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    memcpy(h, b + hoff, hlen);
    h[hlen] = 0;
    int rc;
    const char *p;
    size_t bytes;
    if (!(p = find_key(h, "descr")) || !find_key(h, "fortran_order") || !find_key(h, "shape")) {
        rc = eng_errf(err, errlen, ENG_EFORMAT, "npy header lacks descr, fortran_order or shape");
        goto fail;
    }
    if ((rc = parse_descr(p, &hdr->dtype, &hdr->itemsize, err, errlen)) < 0) goto fail;
    if (strncmp(find_key(h, "fortran_order"), "False", 5) != 0) {
        rc = eng_errf(err, errlen, ENG_EUNSUPPORTED,
                      "npy: Fortran-order arrays are not supported; save in C order");
        goto fail;
    }
    if ((rc = parse_shape(find_key(h, "shape"), hdr, err, errlen)) < 0) goto fail;
    if (shape_bytes(hdr->ndim, hdr->shape, hdr->itemsize, &bytes) != 0 || bytes > NPY_MAX_BYTES) {
        rc = eng_errf(err, errlen, ENG_ELIMIT, "npy: array size is absurd");
        goto fail;
    }
    *data_off = hoff + hlen;
    rc = 0;
fail:
    free(h);
    return rc;
}

int eng_npy_check_size(const eng_tensor *hdr, size_t have, char *err, size_t errlen)
{
    size_t bytes = eng_tensor_bytes(hdr);
    if (have == bytes) return 0;
    char s[128];
    eng_shape_str(hdr->ndim, hdr->shape, s, sizeof s);
    return eng_errf(err, errlen, ENG_EFORMAT, "npy: %s data needs %zu bytes, file has %zu%s", s,
                    bytes, have, have < bytes ? " (truncated)" : " (trailing bytes)");
}

int eng_npy_parse(const void *buf, size_t len, eng_tensor **out, char *err, size_t errlen)
{
    eng_tensor hdr;
    size_t off;
    *out = NULL;
    int rc = eng_npy_parse_header(buf, len, &hdr, &off, err, errlen);
    if (!rc) rc = eng_npy_check_size(&hdr, len - off, err, errlen);
    if (rc) return rc;
    eng_tensor *t = eng_tensor_new(hdr.dtype, hdr.itemsize, hdr.ndim, hdr.shape);
    if (!t)
        return eng_errf(err, errlen, ENG_ENOMEM, "npy: out of memory for %zu bytes",
                        eng_tensor_bytes(&hdr));
    memcpy(t->data, (const unsigned char *)buf + off, eng_tensor_bytes(t));
    *out = t;
    return 0;
}

int eng_npy_load(const char *path, eng_tensor **out, char *err, size_t errlen)
{
    void *buf;
    size_t len;
    int rc = eng_file_read(path, NPY_MAX_BYTES + 4096, &buf, &len, err, errlen);
    if (rc < 0) return rc;
    char e2[256];
    rc = eng_npy_parse(buf, len, out, e2, sizeof e2);
    if (rc < 0) eng_errf(err, errlen, rc, "%s: %s", path, e2);
    free(buf);
    return rc;
}

size_t eng_npy_header(const eng_tensor *t, unsigned char *out, size_t cap)
{
    char descr[32] = "<f4", shape[256] = "(";
    switch (t->dtype) {
    case ENG_F32: break;
    case ENG_I64: strcpy(descr, "<i8"); break;
    case ENG_U8: strcpy(descr, "|u1"); break;
    case ENG_STR: snprintf(descr, sizeof descr, "<U%zu", t->itemsize / 4); break;
    }
    for (int i = 0; i < t->ndim; i++) {
        size_t o = strlen(shape);
        snprintf(shape + o, sizeof shape - o, "%lld,%s", (long long)t->shape[i],
                 i + 1 < t->ndim ? " " : "");
    }
    if (t->ndim > 1) shape[strlen(shape) - 1] = 0; /* numpy writes (5,) but (2, 3) */
    strcat(shape, ")");
    char hdr[400];
    int n = snprintf(hdr, sizeof hdr, "{'descr': '%s', 'fortran_order': False, 'shape': %s, }",
                     descr, shape);
    size_t padded = (10 + (size_t)n + 1 + 63) & ~(size_t)63; /* data starts 64-byte aligned */
    size_t hlen = padded - 10;
    if (padded > cap) return 0;
    memcpy(out, "\x93NUMPY\x01\x00", 8);
    out[8] = (unsigned char)(hlen & 0xff);
    out[9] = (unsigned char)(hlen >> 8);
    memcpy(out + 10, hdr, (size_t)n);
    memset(out + 10 + n, ' ', hlen - (size_t)n - 1);
    out[padded - 1] = '\n';
    return padded;
}

int eng_npy_serialize(const eng_tensor *t, void **buf, size_t *len, char *err, size_t errlen)
{
    unsigned char hdr[ENG_NPY_HEADER_MAX];
    size_t hlen = eng_npy_header(t, hdr, sizeof hdr), bytes = eng_tensor_bytes(t);
    unsigned char *b = malloc(hlen + bytes);
    if (!b) return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    memcpy(b, hdr, hlen);
    memcpy(b + hlen, t->data, bytes);
    *buf = b;
    *len = hlen + bytes;
    return 0;
}

int eng_npy_save(const char *path, const eng_tensor *t, char *err, size_t errlen)
{
    void *buf;
    size_t len;
    int rc = eng_npy_serialize(t, &buf, &len, err, errlen);
    if (rc < 0) return rc;
    rc = eng_file_write_atomic(path, buf, len, err, errlen);
    free(buf);
    return rc;
}
