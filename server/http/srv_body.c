/* Request bodies: memory buffers, temp files and a streaming multipart/form-data parser, all
 * fed piecewise from MHD's upload callbacks and bounded while the bytes arrive. */
#include "server/http/srv_int.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

enum { MP_PREAMBLE, MP_TAIL, MP_DASH, MP_LF, MP_HEADERS, MP_BODY, MP_DONE };

struct srv_mp {
    char delim[4 + 70 + 1]; /* "\r\n--" boundary */
    size_t dlen, j;         /* j: delimiter bytes matched so far (held back, not emitted) */
    int state;
    char hdr[SRV_MP_HDR_MAX + 1];
    size_t hlen;
};

/* ---- temp files and memory ---- */

static int tmp_new(srv_req *r)
{
    if (r->ntmp == r->captmp) {
        size_t cap = r->captmp ? r->captmp * 2 : 4;
        struct srv_tmpfile *n = realloc(r->tmp, cap * sizeof *n);
        if (!n) return srv__fail(r, 500, "internal", "out of memory");
        r->tmp = n;
        r->captmp = cap;
    }
    size_t len = strlen(r->s->temp_dir) + 32;
    char *path = malloc(len);
    if (!path) return srv__fail(r, 500, "internal", "out of memory");
    snprintf(path, len, "%s/bitd-upload-XXXXXX", r->s->temp_dir);
    int fd = mkostemp(path, O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        free(path);
        return srv__fail(r, 500, "temp_file", "cannot create an upload file: %s", strerror(e));
    }
    r->tmp[r->ntmp] = (struct srv_tmpfile){path, fd, 0};
    return (int)r->ntmp++;
}

static int fd_write(srv_req *r, int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == ENOSPC || errno == EDQUOT))
            return srv__fail(r, 507, "insufficient_storage", "no space left for the upload");
        if (w <= 0) return srv__fail(r, 500, "io_error", "upload write failed: %s", strerror(errno));
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Appends to a NUL-terminated buffer; callers have already bounded the total. */
static int mem_append(srv_req *r, char **buf, size_t *len, size_t *cap, const char *p, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t c = *cap ? *cap : 256;
        while (c < *len + n + 1) c *= 2;
        char *b = realloc(*buf, c);
        if (!b) return srv__fail(r, 500, "internal", "out of memory");
        *buf = b;
        *cap = c;
    }
    memcpy(*buf + *len, p, n);
    *len += n;
    (*buf)[*len] = 0;
    return 0;
}

/* ---- multipart: part headers ---- */

static const char *skip_ws(const char *p)
{
    while (*p == ' ' || *p == '\t') p++;
    return p;
}

/* One parameter value of Content-Disposition: a token or a quoted string. */
static char *cd_value(const char **pp)
{
    const char *p = *pp;
    char *v = malloc(strlen(p) + 1), *o = v;
    if (!v) return NULL;
    if (*p == '"') {
        for (p++; *p && *p != '"'; p++) *o++ = *p == '\\' && p[1] ? *++p : *p;
        if (*p != '"') return free(v), NULL;
        p++;
    } else {
        while (*p && *p != ';' && *p != ' ' && *p != '\t') *o++ = *p++;
    }
    *o = 0;
    *pp = p;
    return v;
}

/* Content-Disposition: form-data; name="..."; filename="..." (other parameters ignored). */
static int cd_parse(const char *v, char **name, char **filename)
{
    v = skip_ws(v);
    if (strncasecmp(v, "form-data", 9) != 0) return -1;
    v = skip_ws(v + 9);
    while (*v == ';') {
        v = skip_ws(v + 1);
        const char *k = v;
        while (*v && *v != '=' && *v != ';' && *v != ' ') v++;
        size_t kn = (size_t)(v - k);
        if (*v != '=') return -1;
        v++;
        char *val = cd_value(&v);
        if (!val) return -1;
        char **dst = kn == 4 && !strncasecmp(k, "name", 4)       ? name
                     : kn == 8 && !strncasecmp(k, "filename", 8) ? filename
                                                                 : NULL;
        if (dst && !*dst) *dst = val;
        else free(val);
        v = skip_ws(v);
    }
    return *v || !*name ? -1 : 0;
}

/* The client's file name minus any directory, so that nobody is tempted to use a path. */
static void strip_dirs(char *f)
{
    char *b = f;
    for (char *p = f; *p; p++)
        if (*p == '/' || *p == '\\') b = p + 1;
    memmove(f, b, strlen(b) + 1);
    if (!strcmp(f, ".") || !strcmp(f, "..")) f[0] = 0;
    for (char *p = f; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f) *p = '_';
}

static int part_headers(char *h, char **name, char **filename, char **ctype)
{
    for (char *line = h, *next; *line; line = next) {
        char *eol = strstr(line, "\r\n");
        if (!eol) return -1;
        *eol = 0;
        next = eol + 2;
        if (!*line) break;
        char *colon = strchr(line, ':');
        if (!colon) return -1;
        *colon = 0;
        const char *val = skip_ws(colon + 1);
        if (!strcasecmp(line, "Content-Disposition") && !*name) {
            if (cd_parse(val, name, filename)) return -1;
        } else if (!strcasecmp(line, "Content-Type") && !*ctype) {
            if (!(*ctype = strndup(val, 255))) return -1;
        }
    }
    return *name ? 0 : -1;
}

static srv_part *part_push(srv_req *r)
{
    if (r->nparts == r->capparts) {
        size_t cap = r->capparts ? r->capparts * 2 : 8;
        srv_part *n = realloc(r->parts, cap * sizeof *n);
        if (!n) return NULL;
        r->parts = n;
        r->capparts = cap;
    }
    srv_part *p = &r->parts[r->nparts++];
    memset(p, 0, sizeof *p);
    p->fd = -1;
    return p;
}

static int part_begin(srv_req *r, char *hdr)
{
    char *name = NULL, *filename = NULL, *ctype = NULL;
    if (r->nparts >= r->s->cfg.max_parts) {
        srv__fail(r, 413, "too_many_parts", "over %u multipart parts", r->s->cfg.max_parts);
        return SRV_ELIMIT;
    }
    int rc = part_headers(hdr, &name, &filename, &ctype);
    srv_part *p = rc ? NULL : part_push(r);
    if (!p) {
        free(name), free(filename), free(ctype);
        return rc ? srv__fail(r, 400, "bad_multipart", "a part lacks a valid Content-Disposition")
                  : srv__fail(r, 500, "internal", "out of memory");
    }
    p->name = name;
    p->content_type = ctype;
    if (filename) {
        strip_dirs(filename);
        p->filename = filename;
        int t = tmp_new(r);
        if (t < 0) return t;
        p->path = r->tmp[t].path;
        p->fd = r->tmp[t].fd;
    } else if (!(p->data = calloc(1, 1))) {
        return srv__fail(r, 500, "internal", "out of memory");
    }
    return 0;
}

/* ---- multipart: the byte stream ---- */

static int mp_emit(srv_req *r, const char *d, size_t n)
{
    if (r->mp->state != MP_BODY || !n) return 0; /* preamble bytes are dropped */
    srv_part *p = &r->parts[r->nparts - 1];
    if (p->fd >= 0) {
        p->size += n;
        return fd_write(r, p->fd, d, n);
    }
    if (p->size + n > r->s->cfg.max_memory_body)
        return srv__fail(r, 413, "field_too_large", "multipart field '%s' is over %zu bytes",
                         p->name, r->s->cfg.max_memory_body);
    size_t len = (size_t)p->size, cap = len + 1;
    char *buf = (char *)p->data;
    int rc = mem_append(r, &buf, &len, &cap, d, n);
    p->data = buf;
    p->size = len;
    return rc;
}

/* Emits data up to the next delimiter. Returns 1 when one was found (*used bytes consumed).
 * Only delim[0] is '\r' (boundaries cannot hold CR), so a partial match that breaks contains
 * no other start and the held bytes are a known prefix of delim. */
static int mp_scan(srv_req *r, struct srv_mp *m, const char *p, size_t n, size_t *used)
{
    size_t run = 0;
    int rc;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == m->delim[m->j]) {
            if (m->j == 0 && i > run && (rc = mp_emit(r, p + run, i - run)) < 0) return rc;
            if (++m->j == m->dlen) {
                m->j = 0;
                *used = i + 1;
                return 1;
            }
            continue;
        }
        if (m->j) {
            if ((rc = mp_emit(r, m->delim, m->j)) < 0) return rc;
            m->j = p[i] == m->delim[0];
            run = m->j ? i + 1 : i;
        }
    }
    *used = n;
    return m->j == 0 && n > run ? mp_emit(r, p + run, n - run) : 0;
}

static int bad_mp(srv_req *r, const char *why)
{
    return srv__fail(r, 400, "bad_multipart", "malformed multipart body: %s", why);
}

/* After a delimiter: "--" ends the body, optional blanks then CRLF start a part. */
static int mp_tail(srv_req *r, struct srv_mp *m, char c)
{
    if (m->state == MP_TAIL && (c == ' ' || c == '\t')) return 0;
    if (m->state == MP_TAIL && c == '-') m->state = MP_DASH;
    else if (m->state == MP_TAIL && c == '\r') m->state = MP_LF;
    else if (m->state == MP_DASH && c == '-') m->state = MP_DONE;
    else if (m->state == MP_LF && c == '\n') m->state = MP_HEADERS, m->hlen = 0;
    else return bad_mp(r, "junk after a boundary");
    return 0;
}

static int mp_headers(srv_req *r, struct srv_mp *m, const char *p, size_t n, size_t *used)
{
    for (size_t i = 0; i < n; i++) {
        if (m->hlen == SRV_MP_HDR_MAX)
            return srv__fail(r, 413, "multipart_limit", "part headers over %d bytes",
                             SRV_MP_HDR_MAX);
        m->hdr[m->hlen++] = p[i];
        int end = (m->hlen == 2 && !memcmp(m->hdr, "\r\n", 2)) ||
                  (m->hlen >= 4 && !memcmp(m->hdr + m->hlen - 4, "\r\n\r\n", 4));
        if (!end) continue;
        m->hdr[m->hlen] = 0;
        *used = i + 1;
        int rc = part_begin(r, m->hdr);
        m->state = MP_BODY;
        m->j = 0;
        return rc;
    }
    *used = n;
    return 0;
}

static int mp_feed(srv_req *r, const char *p, size_t n)
{
    struct srv_mp *m = r->mp;
    while (n) {
        size_t used = 1;
        int rc = 0;
        switch (m->state) {
        case MP_PREAMBLE:
        case MP_BODY:
            rc = mp_scan(r, m, p, n, &used);
            if (rc == 1) rc = 0, m->state = MP_TAIL;
            break;
        case MP_TAIL:
        case MP_DASH:
        case MP_LF: rc = mp_tail(r, m, *p); break;
        case MP_HEADERS: rc = mp_headers(r, m, p, n, &used); break;
        default: used = n; /* the epilogue is ignored */
        }
        if (rc < 0) return rc;
        p += used;
        n -= used;
    }
    return 0;
}

/* boundary := 1*70 bchars (RFC 2046); quoted or not. */
int srv__mp_new(srv_req *r, const char *ctype)
{
    const char *b = strcasestr(ctype, "boundary=");
    if (!b) return bad_mp(r, "no boundary");
    b += 9;
    size_t n = *b == '"' ? strcspn(++b, "\"") : strcspn(b, "; \t");
    if (n == 0 || n > 70) return bad_mp(r, "bad boundary length");
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)b[i]) && !strchr("'()+_,-./:=? ", b[i]))
            return bad_mp(r, "bad boundary character");
    struct srv_mp *m = calloc(1, sizeof *m);
    if (!m) return srv__fail(r, 500, "internal", "out of memory");
    memcpy(m->delim, "\r\n--", 4);
    memcpy(m->delim + 4, b, n);
    m->dlen = n + 4;
    m->j = 2; /* the body may start with the delimiter minus its CRLF */
    m->state = MP_PREAMBLE;
    r->mp = m;
    r->kind = SRV_MULTIPART;
    return 0;
}

/* ---- the body pipeline ---- */

int srv__body_begin(srv_req *r)
{
    const srv_config *c = &r->s->cfg;
    r->mode = (int)(r->route->flags & SRV_BODY_MASK);
    r->cap = r->mode == SRV_BODY_NONE ? 0 : r->mode == SRV_BODY_MEMORY ? c->max_memory_body
                                                                       : c->max_body;
    const char *cl = srv_header(r, "Content-Length");
    unsigned long long len = cl ? strtoull(cl, NULL, 10) : 0;
    if (len > r->cap)
        return srv__fail(r, 413, "body_too_large", "the body (%llu bytes) is over the limit of "
                         "%llu bytes", len, (unsigned long long)r->cap);
    const char *ct = srv_header(r, "Content-Type");
    r->kind = r->mode == SRV_BODY_NONE ? SRV_NOBODY
              : r->mode == SRV_BODY_FILE || len > c->max_memory_body ? SRV_FILEBODY
                                                                      : SRV_MEMBODY;
    if (r->mode != SRV_BODY_NONE && ct && !strncasecmp(ct, "multipart/form-data", 19))
        return srv__mp_new(r, ct);
    if (r->kind == SRV_MEMBODY && len && !(r->mem = malloc(len + 1)))
        return srv__fail(r, 500, "internal", "out of memory");
    r->mcap = r->mem ? len + 1 : 0;
    return 0;
}

static int raw_feed(srv_req *r, const char *p, size_t n)
{
    if (r->kind == SRV_MEMBODY && r->mlen + n <= r->s->cfg.max_memory_body)
        return mem_append(r, &r->mem, &r->mlen, &r->mcap, p, n);
    if (r->body_tmp < 0) {
        /* AUTO outgrew memory (or FILE mode): move what we have to a temp file. */
        if ((r->body_tmp = tmp_new(r)) < 0) return r->body_tmp;
        int rc = fd_write(r, r->tmp[r->body_tmp].fd, r->mem ? r->mem : "", r->mlen);
        free(r->mem);
        r->mem = NULL;
        r->mlen = r->mcap = 0;
        r->kind = SRV_FILEBODY;
        if (rc) return rc;
    }
    return fd_write(r, r->tmp[r->body_tmp].fd, p, n);
}

int srv__body_feed(srv_req *r, const char *p, size_t n)
{
    if (r->out.set) return SRV_EINVAL; /* an earlier piece failed and was answered */
    if (n > r->cap - r->received)
        return srv__fail(r, 413, "body_too_large", "the body is over the limit of %llu bytes",
                         (unsigned long long)r->cap);
    r->received += n;
    return r->mp ? mp_feed(r, p, n) : raw_feed(r, p, n);
}

int srv__body_finish(srv_req *r)
{
    if (r->mp && r->mp->state != MP_DONE) return bad_mp(r, "it ends before the final boundary");
    if (r->kind == SRV_FILEBODY && r->body_tmp < 0 && (r->body_tmp = tmp_new(r)) < 0)
        return r->body_tmp;
    if (r->kind == SRV_MEMBODY && !r->mem && !(r->mem = calloc(1, 1)))
        return srv__fail(r, 500, "internal", "out of memory");
    /* Handlers read from the start. */
    for (size_t i = 0; i < r->ntmp; i++) lseek(r->tmp[i].fd, 0, SEEK_SET);
    return 0;
}

void srv__body_free(srv_req *r)
{
    for (size_t i = 0; i < r->nparts; i++) {
        free((char *)r->parts[i].name);
        free((char *)r->parts[i].filename);
        free((char *)r->parts[i].content_type);
        free((char *)r->parts[i].data);
    }
    free(r->parts);
    for (size_t i = 0; i < r->ntmp; i++) {
        close(r->tmp[i].fd);
        if (!r->tmp[i].kept) unlink(r->tmp[i].path);
        free(r->tmp[i].path);
    }
    free(r->tmp);
    free(r->mem);
    free(r->mp);
}

/* ---- accessors ---- */

int srv_body_kind(const srv_req *r) { return r->kind; }
uint64_t srv_body_size(const srv_req *r) { return r->received; }

const char *srv_body(const srv_req *r, size_t *len)
{
    if (len) *len = r->kind == SRV_MEMBODY ? r->mlen : 0;
    return r->kind == SRV_MEMBODY ? r->mem : NULL;
}

const char *srv_body_path(const srv_req *r)
{
    return r->kind == SRV_FILEBODY && r->body_tmp >= 0 ? r->tmp[r->body_tmp].path : NULL;
}

int srv_body_fd(const srv_req *r)
{
    return r->kind == SRV_FILEBODY && r->body_tmp >= 0 ? r->tmp[r->body_tmp].fd : -1;
}

int srv_body_json(const srv_req *r, json_t **out, char *err, size_t errlen)
{
    json_error_t je;
    *out = NULL;
    if (r->kind == SRV_MEMBODY) {
        *out = json_loadb(r->mem, r->mlen, 0, &je);
    } else if (r->kind == SRV_FILEBODY && r->received <= r->s->cfg.max_memory_body) {
        *out = json_load_file(r->tmp[r->body_tmp].path, 0, &je);
    } else {
        return srv__errf(err, errlen, SRV_EINVAL, "the request has no JSON body");
    }
    if (!*out)
        return srv__errf(err, errlen, SRV_EFORMAT, "bad JSON at line %d: %s", je.line, je.text);
    return 0;
}

const srv_part *srv_parts(const srv_req *r, size_t *n)
{
    *n = r->kind == SRV_MULTIPART ? r->nparts : 0;
    return *n ? r->parts : NULL;
}

const srv_part *srv_part_get(const srv_req *r, const char *name)
{
    for (size_t i = 0; r->kind == SRV_MULTIPART && i < r->nparts; i++)
        if (!strcmp(r->parts[i].name, name)) return &r->parts[i];
    return NULL;
}

int srv_take_file(srv_req *r, const char *tmp_path)
{
    for (size_t i = 0; tmp_path && i < r->ntmp; i++)
        if (!strcmp(r->tmp[i].path, tmp_path) && !r->tmp[i].kept) {
            r->tmp[i].kept = 1;
            return 0;
        }
    return SRV_EINVAL;
}

int srv_keep_file(srv_req *r, const char *tmp_path, const char *dest, char *err, size_t errlen)
{
    for (size_t i = 0; tmp_path && i < r->ntmp; i++) {
        if (strcmp(r->tmp[i].path, tmp_path) || r->tmp[i].kept) continue;
        if (rename(r->tmp[i].path, dest) != 0)
            return srv__errf(err, errlen, SRV_EIO, "cannot move the upload to %s: %s", dest,
                            strerror(errno));
        r->tmp[i].kept = 1;
        return 0;
    }
    return srv__errf(err, errlen, SRV_EINVAL, "not an upload of this request");
}
