/* Routing: the route table, path matching with {name} parameters, percent-decoding, the query
 * string and the bearer-token check. */
#include "server/http/srv_int.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int utf8_ok(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        uint32_t c = s[i], min;
        size_t k;
        if (c < 0x80) {
            i++;
            continue;
        }
        if ((c & 0xe0) == 0xc0) k = 1, min = 0x80, c &= 0x1f;
        else if ((c & 0xf0) == 0xe0) k = 2, min = 0x800, c &= 0x0f;
        else if ((c & 0xf8) == 0xf0) k = 3, min = 0x10000, c &= 0x07;
        else return 0;
        if (n - i <= k) return 0;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xc0) != 0x80) return 0;
            c = c << 6 | (s[i + j] & 0x3f);
        }
        if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff)) return 0;
        i += k + 1;
    }
    return 1;
}

/* out needs n + 1 bytes. Refused: bad escapes, a decoded NUL (consumers use C strings) and
 * invalid UTF-8 (handlers put these strings into JSON, which must be UTF-8). */
int srv__pct_decode(const char *in, size_t n, int plus, char *out, size_t *outlen)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c == '%') {
            int hi = i + 2 < n ? hexval(in[i + 1]) : -1;
            int lo = hi >= 0 ? hexval(in[i + 2]) : -1;
            if (hi < 0 || lo < 0 || (hi | lo) == 0) return -1;
            c = (unsigned char)(hi * 16 + lo);
            i += 2;
        } else if (plus && c == '+') {
            c = ' ';
        }
        out[o++] = (char)c;
    }
    out[o] = 0;
    if (outlen) *outlen = o;
    return utf8_ok((const unsigned char *)out, o) ? 0 : -1;
}

void srv__kv_free(srv_kv *kv, size_t n)
{
    for (size_t i = 0; i < n; i++) free(kv[i].k), free(kv[i].v);
    free(kv);
}

/* ---- registration ---- */

static int valid_method(const char *m)
{
    if (!m || !*m || strlen(m) > 16) return 0;
    for (; *m; m++)
        if (!isupper((unsigned char)*m)) return 0;
    return 1;
}

static int parse_pattern(struct srv_route *rt, const char *pattern)
{
    const char *p = pattern;
    if (*p != '/') return -1;
    while (*p == '/') {
        const char *seg = p + 1, *e = strchr(seg, '/');
        size_t n = e ? (size_t)(e - seg) : strlen(seg);
        p = seg + n;
        if (rt->nseg == SRV_MAX_SEGS) return -1;
        char **dst = &rt->segs[rt->nseg];
        if (n >= 3 && seg[0] == '{' && seg[n - 1] == '}') {
            for (size_t i = 1; i + 1 < n; i++)
                if (!isalnum((unsigned char)seg[i]) && seg[i] != '_') return -1;
            dst = &rt->names[rt->nseg];
            seg++, n -= 2;
        } else if (memchr(seg, '{', n) || memchr(seg, '}', n) || memchr(seg, '%', n)) {
            return -1;
        }
        rt->nseg++;
        if (!(*dst = strndup(seg, n))) return -1;
    }
    return 0;
}

/* Same method and the same shape (literals equal, parameters anywhere named alike or not). */
static int same_route(const struct srv_route *a, const struct srv_route *b)
{
    if (strcmp(a->method, b->method) || a->nseg != b->nseg) return 0;
    for (size_t i = 0; i < a->nseg; i++) {
        if (!a->segs[i] != !b->segs[i]) return 0;
        if (a->segs[i] && strcmp(a->segs[i], b->segs[i])) return 0;
    }
    return 1;
}

static void route_clear(struct srv_route *rt)
{
    free(rt->method);
    free(rt->pattern);
    for (size_t k = 0; k < rt->nseg; k++) free(rt->segs[k]), free(rt->names[k]);
    memset(rt, 0, sizeof *rt);
}

void srv__routes_free(srv *s)
{
    for (size_t i = 0; i < s->nroutes; i++) route_clear(&s->routes[i]);
    free(s->routes);
}

int srv_route(srv *s, const char *method, const char *pattern, srv_handler fn, void *ud,
              unsigned flags)
{
    if (s->d || atomic_load(&s->stopping) || !fn || !pattern || !valid_method(method) ||
        (flags & ~(unsigned)(SRV_PUBLIC | SRV_HEALTH | SRV_BODY_MASK)))
        return SRV_EINVAL;
    if (s->nroutes == s->caproutes) {
        size_t cap = s->caproutes ? s->caproutes * 2 : 16;
        struct srv_route *n = realloc(s->routes, cap * sizeof *n);
        if (!n) return SRV_ENOMEM;
        s->routes = n;
        s->caproutes = cap;
    }
    struct srv_route rt = {.fn = fn, .ud = ud, .flags = flags};
    rt.method = strdup(method);
    rt.pattern = strdup(pattern);
    int rc = !rt.method || !rt.pattern ? SRV_ENOMEM : parse_pattern(&rt, pattern) ? SRV_EINVAL : 0;
    for (size_t i = 0; !rc && i < s->nroutes; i++)
        if (same_route(&rt, &s->routes[i])) rc = SRV_EINVAL;
    if (rc) {
        route_clear(&rt);
        return rc;
    }
    s->routes[s->nroutes++] = rt;
    return 0;
}

size_t srv_route_count(const srv *s) { return s->nroutes; }

int srv_route_at(const srv *s, size_t i, const char **method, const char **pattern)
{
    if (i >= s->nroutes) return SRV_EINVAL;
    if (method) *method = s->routes[i].method;
    if (pattern) *pattern = s->routes[i].pattern;
    return 0;
}

/* ---- matching ---- */

/* Splits the raw path into decoded segments inside buf (strlen(path) + 1 bytes). */
static int split_path(const char *path, char *buf, char **segs, size_t *nseg)
{
    if (*path != '/') return SRV_M_BADENC;
    size_t n = 0;
    const char *p = path;
    while (*p == '/') {
        const char *e = strchr(p + 1, '/');
        size_t len = e ? (size_t)(e - p - 1) : strlen(p + 1), out;
        if (n == SRV_MAX_SEGS) return SRV_M_NOTFOUND;
        if (srv__pct_decode(p + 1, len, 0, buf, &out) != 0) return SRV_M_BADENC;
        segs[n++] = buf;
        buf += out + 1;
        p += len + 1;
    }
    *nseg = n;
    return SRV_M_OK;
}

/* Bit (31 - i) is set when segment i is a literal: the higher, the more specific. */
static int route_fits(const struct srv_route *rt, char **segs, size_t nseg, uint32_t *spec)
{
    if (rt->nseg != nseg) return 0;
    *spec = 0;
    for (size_t i = 0; i < nseg; i++) {
        if (rt->segs[i]) {
            if (strcmp(rt->segs[i], segs[i])) return 0;
            *spec |= 1u << (31 - i);
        } else if (!segs[i][0]) {
            return 0; /* an empty segment is never a parameter */
        }
    }
    return 1;
}

static int param_ok(const char *v)
{
    size_t n = strlen(v);
    if (n == 0 || n > SRV_PARAM_MAX || !strcmp(v, ".") || !strcmp(v, "..")) return 0;
    for (; *v; v++)
        if ((unsigned char)*v < 0x20 || *v == 0x7f || *v == '/' || *v == '\\') return 0;
    return 1;
}

static int take_params(srv_req *r, char **segs)
{
    const struct srv_route *rt = r->route;
    size_t n = 0;
    for (size_t i = 0; i < rt->nseg; i++) n += !rt->segs[i];
    if (!n) return SRV_M_OK;
    if (!(r->params = calloc(n, sizeof *r->params))) return SRV_M_NOMEM;
    for (size_t i = 0; i < rt->nseg; i++) {
        if (rt->segs[i]) continue;
        if (!param_ok(segs[i])) return SRV_M_BADPARAM;
        srv_kv *kv = &r->params[r->nparams++];
        kv->k = strdup(rt->names[i]);
        kv->v = strdup(segs[i]);
        if (!kv->k || !kv->v) return SRV_M_NOMEM;
    }
    return SRV_M_OK;
}

static void add_allow(char *allow, size_t len, const char *m)
{
    size_t u = strlen(allow);
    if (strstr(allow, m)) return; /* methods are short and distinct enough for this */
    snprintf(allow + u, len - u, "%s%s", u ? ", " : "", m);
    if (!strcmp(m, "GET")) add_allow(allow, len, "HEAD"); /* GET routes answer HEAD */
}

/* The most specific route for method among those that fit the segments; allow (if given)
 * collects the methods of every fitting route, *any says whether one fitted. */
static const struct srv_route *pick(const srv *s, const char *method, char **segs, size_t nseg,
                                    char *allow, size_t allowlen, int *any)
{
    const struct srv_route *best = NULL;
    uint32_t top = 0;
    *any = 0;
    for (size_t i = 0; i < s->nroutes; i++) {
        uint32_t spec;
        if (!route_fits(&s->routes[i], segs, nseg, &spec)) continue;
        *any = 1;
        if (allow) add_allow(allow, allowlen, s->routes[i].method);
        if (strcmp(s->routes[i].method, method)) continue;
        if (!best || spec > top) best = &s->routes[i], top = spec;
    }
    return best;
}

int srv__match(srv_req *r, char *allow, size_t allowlen)
{
    char *segs[SRV_MAX_SEGS];
    size_t nseg = 0;
    int any = 0;
    char *buf = malloc(strlen(r->path) + 1);
    if (!buf) return SRV_M_NOMEM;
    int rc = split_path(r->path, buf, segs, &nseg);
    if (rc == SRV_M_OK) r->route = pick(r->s, r->method, segs, nseg, allow, allowlen, &any);
    if (rc == SRV_M_OK) rc = r->route ? take_params(r, segs) : any ? SRV_M_METHOD : SRV_M_NOTFOUND;
    free(buf);
    return rc;
}

const struct srv_route *srv__find(const srv *s, const char *method, const char *path)
{
    char *segs[SRV_MAX_SEGS];
    size_t nseg = 0;
    int any;
    char *buf = malloc(strlen(path) + 1);
    const struct srv_route *rt = NULL;
    if (buf && split_path(path, buf, segs, &nseg) == SRV_M_OK)
        rt = pick(s, method, segs, nseg, NULL, 0, &any);
    free(buf);
    return rt;
}

const char *srv_param(const srv_req *r, const char *name)
{
    for (size_t i = 0; i < r->nparams; i++)
        if (!strcmp(r->params[i].k, name)) return r->params[i].v;
    return NULL;
}

/* ---- query ---- */

struct qctx {
    srv_req *r;
    int rc;
};

static enum MHD_Result query_one(void *cls, enum MHD_ValueKind kind, const char *key,
                                 const char *value)
{
    struct qctx *q = cls;
    srv_kv *kv = &q->r->query[q->r->nquery];
    if (!value) value = "";
    kv->k = malloc(strlen(key) + 1);
    kv->v = malloc(strlen(value) + 1);
    q->r->nquery++;
    if (!kv->k || !kv->v) {
        q->rc = SRV_M_NOMEM;
        return MHD_NO;
    }
    /* MHD already turned '+' into ' '; decoding '+' again is harmless (none are left). */
    if (srv__pct_decode(key, strlen(key), 1, kv->k, NULL) ||
        srv__pct_decode(value, strlen(value), 1, kv->v, NULL)) {
        q->rc = SRV_M_BADENC;
        return MHD_NO;
    }
    return MHD_YES;
}

int srv__parse_query(srv_req *r)
{
    int n = MHD_get_connection_values(r->c, MHD_GET_ARGUMENT_KIND, NULL, NULL);
    if (n <= 0) return SRV_M_OK;
    if ((unsigned)n > r->s->cfg.max_query) return SRV_M_LIMIT;
    if (!(r->query = calloc((size_t)n, sizeof *r->query))) return SRV_M_NOMEM;
    struct qctx q = {r, SRV_M_OK};
    MHD_get_connection_values(r->c, MHD_GET_ARGUMENT_KIND, query_one, &q);
    return q.rc;
}

const char *srv_query_unknown(const srv_req *r, const char *const *known)
{
    for (size_t i = 0; i < r->nquery; i++) {
        int ok = !r->query[i].k;
        for (size_t k = 0; known && known[k] && !ok; k++) ok = !strcmp(r->query[i].k, known[k]);
        if (!ok) return r->query[i].k;
    }
    return NULL;
}

const char *srv_query(const srv_req *r, const char *name)
{
    for (size_t i = 0; i < r->nquery; i++)
        if (r->query[i].k && !strcmp(r->query[i].k, name)) return r->query[i].v;
    return NULL;
}

/* ---- auth ---- */

/* Constant time in the token's bytes: the loop always runs over the whole configured token. */
int srv__auth_ok(const srv *s, const char *h)
{
    if (!s->token) return 1;
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) return 0;
    h += 7;
    while (*h == ' ') h++;
    size_t n = strlen(h);
    while (n && h[n - 1] == ' ') n--;
    unsigned char diff = n != s->token_len;
    for (size_t i = 0; i < s->token_len; i++)
        diff |= (unsigned char)(s->token[i] ^ (i < n ? h[i] : 0));
    return diff == 0;
}
