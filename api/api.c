/* The api object, route registration and the mapping of service errors to HTTP. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api/api_int.h"
#include "names.h"

/* A registered handler and the query parameters its route takes. */
struct api_bound {
    api *a;
    srv_handler fn;
    const char *const *query; /* NULL-terminated; NULL: none */
    const char *method, *pattern;
    struct api_bound *next;
};

int api_new(const api_config *cfg, api **out, char *err, size_t errlen)
{
    api *a = calloc(1, sizeof *a);
    if (!a) return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    a->cfg = *cfg;
    a->svc = cfg->service;
    *out = a;
    return 0;
}

void api_free(api *a)
{
    if (!a) return;
    while (a->bound) {
        api_bound *b = a->bound;
        a->bound = b->next;
        free(b);
    }
    free(a);
}

/* Every route's first step: a query parameter the route does not take is refused (400 naming
 * those it takes) instead of being silently ignored. */
static int checked(srv_req *req, void *ud)
{
    const api_bound *b = ud;
    const char *bad = srv_query_unknown(req, b->query);
    if (!bad) return b->fn(req, b->a);
    size_t n = 0;
    while (b->query && b->query[n]) n++;
    char hint[512];
    if (!n)
        return srv_error(req, 400, "invalid_parameter", "unknown query parameter '%s': %s %s takes none",
                         bad, b->method, b->pattern);
    return srv_error(req, 400, "invalid_parameter", "unknown query parameter '%s' of %s %s; %s", bad,
                     b->method, b->pattern, eng_names_hint(hint, sizeof hint, bad, b->query, n, ""));
}

int api_route(api *a, srv *s, const char *method, const char *pattern, srv_handler fn,
              unsigned flags, const char *const *query)
{
    api_bound *b = calloc(1, sizeof *b);
    if (!b) return ENG_ENOMEM;
    *b = (api_bound){.a = a, .fn = fn, .query = query, .method = method, .pattern = pattern,
                     .next = a->bound};
    a->bound = b;
    return srv_route(s, method, pattern, checked, b, flags);
}

static int status_of(int code, const char **dflt)
{
    switch (code) {
    case ENG_ENOTFOUND: *dflt = "not_found"; return 404;
    case STORE_ECONFLICT: *dflt = "conflict"; return 409;
    case STORE_EINUSE: *dflt = "in_use"; return 409;
    case STORE_EEXISTS: *dflt = "exists"; return 409;
    case STORE_EBUSY: *dflt = "busy"; return 503;
    case SVC_EBUSY: *dflt = "busy"; return 503;
    case ENG_EINVAL: *dflt = "invalid_parameter"; return 400;
    case ENG_ELIMIT: *dflt = "too_large"; return 413;
    case ENG_EUNSUPPORTED: *dflt = "unsupported"; return 415;
    case ENG_EFORMAT: *dflt = "invalid_input"; return 422;
    case SVC_EREF: *dflt = "invalid_reference"; return 422;
    case ENG_ENOSPC: *dflt = "insufficient_storage"; return 507;
    default: *dflt = "internal"; return 500;
    }
}

int api_fail(srv_req *req, const svc_err *e)
{
    const char *code;
    int status = status_of(e->code, &code);
    if (status == 503) {
        char v[16];
        snprintf(v, sizeof v, "%d", e->retry_after_s > 0 ? e->retry_after_s : 1);
        srv_set_header(req, "Retry-After", v);
    }
    return srv_error(req, status, e->reason[0] ? e->reason : code, "%s", e->msg);
}

int api_park_fail(srv_park *p, const svc_err *e)
{
    const char *code;
    int status = status_of(e->code, &code);
    if (status == 503) {
        char v[16];
        snprintf(v, sizeof v, "%d", e->retry_after_s > 0 ? e->retry_after_s : 1);
        srv_park_header(p, "Retry-After", v);
    }
    return srv_park_error(p, status, e->reason[0] ? e->reason : code, "%s", e->msg);
}

int api_query_int(srv_req *req, const char *name, long lo, long hi, long dflt, long *out)
{
    const char *v = srv_query(req, name);
    char *end;
    if (!v) {
        *out = dflt;
        return 0;
    }
    long x = strtol(v, &end, 10);
    if (!*v || *end || x < lo || x > hi) {
        srv_error(req, 400, "invalid_parameter", "%s must be an integer from %ld to %ld", name, lo, hi);
        return -1;
    }
    *out = x;
    return 0;
}

int api_query_bool(srv_req *req, const char *name, int *out)
{
    const char *v = srv_query(req, name);
    if (!v || !strcmp(v, "false") || !strcmp(v, "0")) return *out = 0, 0;
    if (!strcmp(v, "true") || !strcmp(v, "1")) return *out = 1, 0;
    srv_error(req, 400, "invalid_parameter", "%s must be true or false", name);
    return -1;
}

int api_wants_stream(srv_req *req)
{
    int follow = 0;
    if (srv_query(req, "follow")) return api_query_bool(req, "follow", &follow) ? -1 : follow;
    return api_header_names(req, "Accept", "text/event-stream");
}

int api_header_names(srv_req *req, const char *header, const char *token)
{
    size_t n = strlen(token);
    for (const char *p = srv_header(req, header); p && *p; p += strcspn(p, ",")) {
        p += strspn(p, " \t,");
        if (!strncasecmp(p, token, n) && strchr(";, \t", p[n])) return 1;
    }
    return 0;
}

const srv_part *api_upload_part(srv_req *req)
{
    static const char *const names[] = {"file", "dataset"};
    size_t n;
    const srv_part *p = srv_parts(req, &n);
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++)
        for (size_t i = 0; p && i < n; i++)
            if (p[i].path && !strcmp(p[i].name, names[k])) return &p[i];
    return NULL;
}

int api_upload_is_npz(const char *ctype, const char *filename, const char *format)
{
    size_t n = filename ? strlen(filename) : 0;
    return (format && !strcmp(format, "npz")) || (ctype && !strncmp(ctype, "application/x-npz", 17)) ||
           (n > 4 && !strcasecmp(filename + n - 4, ".npz"));
}

int api_register(api *a, srv *s, char *err, size_t errlen)
{
    a->srv = s;
    /* the index and the trailing-slash twins last: they cover every route before them */
    if (api_routes_datasets(a, s) || api_routes_jobs(a, s) || api_routes_ops(a, s) ||
        api_routes_models(a, s) || (a->cfg.ui && api_routes_web(a, s)) || api_routes_index(a, s))
        return eng_errf(err, errlen, ENG_EINVAL, "cannot register the API routes");
    return 0;
}
