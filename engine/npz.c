#include "npz.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zip.h>

eng_npz *eng_npz_new(void) { return calloc(1, sizeof(eng_npz)); }

void eng_npz_free(eng_npz *z)
{
    if (!z) return;
    for (int i = 0; i < z->n; i++) {
        free(z->names[i]);
        eng_tensor_free(z->tensors[i]);
    }
    free(z->names);
    free(z->tensors);
    free(z);
}

static int find(const eng_npz *z, const char *name)
{
    for (int i = 0; i < z->n; i++)
        if (!strcmp(z->names[i], name)) return i;
    return -1;
}

const eng_tensor *eng_npz_get(const eng_npz *z, const char *name)
{
    int i = find(z, name);
    return i < 0 ? NULL : z->tensors[i];
}

eng_tensor *eng_npz_get_mut(eng_npz *z, const char *name)
{
    int i = find(z, name);
    return i < 0 ? NULL : z->tensors[i];
}

int eng_npz_put(eng_npz *z, const char *name, eng_tensor *t)
{
    int i = find(z, name);
    if (i >= 0) {
        eng_tensor_free(z->tensors[i]);
        z->tensors[i] = t;
        return 0;
    }
    if (z->n == z->cap) {
        int cap = z->cap ? z->cap * 2 : 64;
        char **nn = realloc(z->names, (size_t)cap * sizeof *nn);
        if (nn) z->names = nn;
        eng_tensor **nt = realloc(z->tensors, (size_t)cap * sizeof *nt);
        if (nt) z->tensors = nt;
        if (!nn || !nt) { eng_tensor_free(t); return ENG_ENOMEM; }
        z->cap = cap;
    }
    char *copy = strdup(name);
    if (!copy) { eng_tensor_free(t); return ENG_ENOMEM; }
    z->names[z->n] = copy;
    z->tensors[z->n++] = t;
    return 0;
}

static int read_n(zip_file_t *zf, unsigned char *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        zip_int64_t r = zip_fread(zf, buf + got, n - got);
        if (r <= 0) return -1;
        got += (size_t)r;
    }
    return 0;
}

/* The entry's .npy header: a shape-only tensor (data NULL) whose byte size must be what the
 * zip directory says the entry holds; *zf_out keeps the entry open after the header. */
static int open_entry(zip_t *za, zip_uint64_t idx, const char *ename, uint64_t size,
                      eng_tensor *hdr, zip_file_t **zf_out, char *err, size_t errlen)
{
    unsigned char pre[12], *buf = NULL;
    size_t n = size < sizeof pre ? (size_t)size : sizeof pre, off = 0, plen = 0;
    int rc = ENG_EFORMAT;
    char e2[256];
    zip_file_t *zf = zip_fopen_index(za, idx, 0);
    if (!zf || read_n(zf, pre, n)) goto bad;
    if (!(plen = eng_npy_prefix_len(pre, n))) { /* the parser says what is wrong with it */
        rc = eng_npy_parse_header(pre, n, hdr, &off, e2, sizeof e2);
        eng_errf(err, errlen, rc ? rc : ENG_EFORMAT, "%s: %s", ename, rc ? e2 : "bad .npy header");
        rc = rc ? rc : ENG_EFORMAT;
        goto done;
    }
    if (plen > size) {
        rc = eng_errf(err, errlen, ENG_EFORMAT, "%s: npy: truncated header", ename);
        goto done;
    }
    if (plen > (1 << 20) + 12 || !(buf = malloc(plen))) goto bad;
    memcpy(buf, pre, n);
    if (read_n(zf, buf + n, plen - n)) goto bad;
    rc = eng_npy_parse_header(buf, plen, hdr, &off, e2, sizeof e2);
    if (!rc) rc = eng_npy_check_size(hdr, (size_t)(size - off), e2, sizeof e2);
    if (rc) eng_errf(err, errlen, rc, "%s: %s", ename, e2);
    goto done;
bad:
    eng_errf(err, errlen, ENG_EFORMAT, "%s: bad or truncated .npy header", ename);
done:
    free(buf);
    if (rc && zf) zip_fclose(zf), zf = NULL;
    *zf_out = zf;
    return rc;
}

/* One entry: the header, then the data read straight into the tensor (no second copy); the
 * stream must end exactly there. headers_only leaves data NULL. */
static int read_entry(zip_t *za, zip_uint64_t idx, const char *ename, uint64_t size,
                      int headers_only, eng_tensor **out, char *err, size_t errlen)
{
    eng_tensor hdr;
    zip_file_t *zf = NULL;
    int rc = open_entry(za, idx, ename, size, &hdr, &zf, err, errlen);
    if (rc) return rc;
    eng_tensor *t = headers_only ? calloc(1, sizeof *t)
                                 : eng_tensor_new(hdr.dtype, hdr.itemsize, hdr.ndim, hdr.shape);
    if (!t) {
        zip_fclose(zf);
        return eng_errf(err, errlen, ENG_ENOMEM, "%s: out of memory for %zu bytes", ename,
                        eng_tensor_bytes(&hdr));
    }
    if (headers_only) {
        *t = hdr;
    } else {
        unsigned char extra;
        if (read_n(zf, t->data, eng_tensor_bytes(t)) || zip_fread(zf, &extra, 1) != 0) {
            rc = eng_errf(err, errlen, ENG_EFORMAT, "%s: entry is truncated or corrupt (%s)", ename,
                          zip_file_strerror(zf));
            eng_tensor_free(t);
            t = NULL;
        }
    }
    zip_fclose(zf);
    *out = t;
    return rc;
}

/* headers_only: shapes without data; prefix: only the keys that start with it (the others
 * are not read at all). */
static int load(const char *path, const eng_npz_limits *lim, int headers_only, const char *prefix,
                eng_npz **out, char *err, size_t errlen)
{
    int64_t max_entries = lim && lim->max_entries ? lim->max_entries : 100000;
    uint64_t max_total = lim && lim->max_total_bytes ? lim->max_total_bytes : (uint64_t)16 << 30;
    int zerr = 0, rc = 0;
    *out = NULL;
    zip_t *za = zip_open(path, ZIP_RDONLY | ZIP_CHECKCONS, &zerr);
    if (!za) {
        zip_error_t ze;
        zip_error_init_with_code(&ze, zerr);
        rc = eng_errf(err, errlen, zerr == ZIP_ER_NOENT || zerr == ZIP_ER_OPEN ? ENG_EIO : ENG_EFORMAT,
                      "%s: not a readable npz (zip) file: %s", path, zip_error_strerror(&ze));
        zip_error_fini(&ze);
        return rc;
    }
    eng_npz *z = eng_npz_new();
    zip_int64_t n = zip_get_num_entries(za, 0);
    uint64_t total = 0;
    if (!z) { rc = eng_errf(err, errlen, ENG_ENOMEM, "out of memory"); goto fail; }
    if (n < 0 || n > max_entries) {
        rc = eng_errf(err, errlen, ENG_ELIMIT, "%s: %lld entries is over the limit of %lld", path,
                      (long long)n, (long long)max_entries);
        goto fail;
    }
    for (zip_int64_t i = 0; i < n; i++) {
        zip_stat_t st;
        if (zip_stat_index(za, (zip_uint64_t)i, 0, &st) != 0 ||
            !(st.valid & ZIP_STAT_NAME) || !(st.valid & ZIP_STAT_SIZE)) {
            rc = eng_errf(err, errlen, ENG_EFORMAT, "%s: entry %lld unreadable", path, (long long)i);
            goto fail;
        }
        size_t nl = strlen(st.name);
        if (nl == 0 || st.name[nl - 1] == '/') continue; /* directory entries carry no array */
        if (prefix && strncmp(st.name, prefix, strlen(prefix))) continue;
        if (nl < 5 || strcmp(st.name + nl - 4, ".npy") != 0) {
            rc = eng_errf(err, errlen, ENG_EFORMAT, "%s: entry '%s' is not an .npy array", path,
                          st.name);
            goto fail;
        }
        /* Compared before adding: a zip64 size near 2^64 would wrap the sum past the limit. */
        if (st.size > max_total - total) {
            rc = eng_errf(err, errlen, ENG_ELIMIT, "%s: arrays exceed the limit of %llu bytes",
                          path, (unsigned long long)max_total);
            goto fail;
        }
        total += st.size;
        eng_tensor *t;
        rc = read_entry(za, (zip_uint64_t)i, st.name, st.size, headers_only, &t, err, errlen);
        if (rc < 0) goto fail;
        char key[1024];
        snprintf(key, sizeof key, "%.*s", (int)(nl - 4), st.name);
        if (eng_npz_get(z, key)) {
            eng_tensor_free(t);
            rc = eng_errf(err, errlen, ENG_EFORMAT, "%s: key '%s' appears twice", path, key);
            goto fail;
        }
        if ((rc = eng_npz_put(z, key, t)) < 0) {
            eng_errf(err, errlen, rc, "out of memory");
            goto fail;
        }
    }
    zip_discard(za);
    *out = z;
    return 0;
fail:
    zip_discard(za);
    eng_npz_free(z);
    return rc;
}

int eng_npz_load(const char *path, const eng_npz_limits *lim, eng_npz **out,
                 char *err, size_t errlen)
{
    return load(path, lim, 0, NULL, out, err, errlen);
}

int eng_npz_load_headers(const char *path, const eng_npz_limits *lim, eng_npz **out,
                         char *err, size_t errlen)
{
    return load(path, lim, 1, NULL, out, err, errlen);
}

int eng_npz_load_prefix(const char *path, const char *prefix, const eng_npz_limits *lim,
                        eng_npz **out, char *err, size_t errlen)
{
    return load(path, lim, 0, prefix, out, err, errlen);
}

/* A libzip source that streams an .npy (header, then the tensor's own bytes), so saving a
 * multi-gigabyte checkpoint never copies it. */
typedef struct npy_src {
    unsigned char hdr[ENG_NPY_HEADER_MAX];
    size_t hlen, dlen, pos;
    const unsigned char *data;
} npy_src;

static zip_int64_t npy_src_cb(void *ud, void *data, zip_uint64_t len, zip_source_cmd_t cmd)
{
    npy_src *s = ud;
    switch (cmd) {
    case ZIP_SOURCE_OPEN: s->pos = 0; return 0;
    case ZIP_SOURCE_READ: {
        size_t total = s->hlen + s->dlen, n = 0;
        unsigned char *o = data;
        while (n < len && s->pos < total) {
            size_t chunk;
            if (s->pos < s->hlen) {
                chunk = s->hlen - s->pos;
                if (chunk > len - n) chunk = len - n;
                memcpy(o + n, s->hdr + s->pos, chunk);
            } else {
                chunk = total - s->pos;
                if (chunk > len - n) chunk = len - n;
                memcpy(o + n, s->data + (s->pos - s->hlen), chunk);
            }
            n += chunk;
            s->pos += chunk;
        }
        return (zip_int64_t)n;
    }
    case ZIP_SOURCE_CLOSE: return 0;
    case ZIP_SOURCE_STAT: {
        zip_stat_t *st = data;
        zip_stat_init(st);
        st->size = s->hlen + s->dlen;
        st->valid |= ZIP_STAT_SIZE;
        return sizeof *st;
    }
    case ZIP_SOURCE_ERROR: return zip_error_to_data(NULL, data, len);
    case ZIP_SOURCE_FREE: free(s); return 0;
    case ZIP_SOURCE_SUPPORTS:
        return zip_source_make_command_bitmap(ZIP_SOURCE_OPEN, ZIP_SOURCE_READ, ZIP_SOURCE_CLOSE,
                                              ZIP_SOURCE_STAT, ZIP_SOURCE_ERROR, ZIP_SOURCE_FREE,
                                              -1);
    default: return -1;
    }
}

static int add_entry(zip_t *za, const char *name, const eng_tensor *t, int compress)
{
    npy_src *s = calloc(1, sizeof *s);
    if (!s) return -1;
    s->hlen = eng_npy_header(t, s->hdr, sizeof s->hdr);
    s->data = t->data;
    s->dlen = eng_tensor_bytes(t);
    zip_source_t *src = zip_source_function(za, npy_src_cb, s);
    if (!src) { free(s); return -1; }
    char ename[1100];
    snprintf(ename, sizeof ename, "%s.npy", name);
    zip_int64_t idx = zip_file_add(za, ename, src, ZIP_FL_ENC_UTF_8);
    if (idx < 0) { zip_source_free(src); return -1; }
    return zip_set_file_compression(za, (zip_uint64_t)idx, compress ? ZIP_CM_DEFLATE : ZIP_CM_STORE,
                                    compress ? 6 : 0);
}

int eng_npz_save(const char *path, const eng_npz *z, int compress, char *err, size_t errlen)
{
    char tmp[4200];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= sizeof tmp)
        return eng_errf(err, errlen, ENG_EINVAL, "%s: path too long", path);
    int zerr = 0, rc;
    if (z->n == 0) { /* libzip writes nothing for an empty archive: its end record alone */
        static const unsigned char eocd[22] = {0x50, 0x4b, 0x05, 0x06};
        return eng_file_write_atomic(path, eocd, sizeof eocd, err, errlen);
    }
    zip_t *za = zip_open(tmp, ZIP_CREATE | ZIP_TRUNCATE, &zerr);
    if (!za) return eng_errf(err, errlen, ENG_EIO, "%s: cannot create zip (error %d)", tmp, zerr);
    for (int i = 0; i < z->n; i++) {
        if (add_entry(za, z->names[i], z->tensors[i], compress) != 0) {
            rc = eng_errf(err, errlen, ENG_EIO, "%s: %s", tmp, zip_strerror(za));
            zip_discard(za);
            return rc;
        }
    }
    if (zip_close(za) != 0) {
        zip_error_t *ze = zip_get_error(za);
        int sys = zip_error_system_type(ze) == ZIP_ET_SYS ? zip_error_code_system(ze) : 0;
        rc = eng_errf(err, errlen, eng_errno_code(sys), "%s: %s", tmp, zip_strerror(za));
        zip_discard(za);
        unlink(tmp);
        return rc;
    }
    int fd = open(tmp, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return eng_errf(err, errlen, ENG_EIO, "%s: %s", tmp, strerror(errno));
    return eng_file_commit(fd, tmp, path, err, errlen);
}
