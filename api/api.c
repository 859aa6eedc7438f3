#include <stdlib.h>
#include <string.h>

#include "api/api_int.h"

int api_new(const api_config *cfg, api **out, char *err, size_t errlen)
{
    api *a = calloc(1, sizeof *a);
    if (!a) return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    a->cfg = *cfg;
    if (a->cfg.max_queued <= 0) a->cfg.max_queued = 100;
    *out = a;
    return 0;
}

void api_free(api *a) { free(a); }

int api_fail(srv_req *req, int code, const char *msg)
{
    switch (code) {
    case ENG_ENOTFOUND: return srv_error(req, 404, "not_found", "%s", msg);
    case STORE_ECONFLICT: return srv_error(req, 409, "conflict", "%s", msg);
    case STORE_EINUSE: return srv_error(req, 409, "in_use", "%s", msg);
    case STORE_EEXISTS: return srv_error(req, 409, "exists", "%s", msg);
    case STORE_EBUSY:
        srv_set_header(req, "Retry-After", "1");
        return srv_error(req, 503, "busy", "%s", msg);
    case ENG_EINVAL: return srv_error(req, 400, "invalid_parameter", "%s", msg);
    case ENG_ELIMIT: return srv_error(req, 413, "too_large", "%s", msg);
    case ENG_EUNSUPPORTED: return srv_error(req, 415, "unsupported", "%s", msg);
    case ENG_EFORMAT: return srv_error(req, 422, "invalid_input", "%s", msg);
    default: return srv_error(req, 500, "internal", "%s", msg);
    }
}

json_t *api_time(int64_t ms)
{
    char buf[32];
    return ms ? json_string(store_rfc3339(ms, buf)) : json_null();
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

int api_register(api *a, srv *s, char *err, size_t errlen)
{
    a->srv = s;
    if (api_routes_datasets(a, s) || api_routes_jobs(a, s) || api_routes_ops(a, s) ||
        api_routes_models(a, s))
        return eng_errf(err, errlen, ENG_EINVAL, "cannot register the API routes");
    return 0;
}
