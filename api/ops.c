/* Operations: /healthz (alive, no auth), /readyz (database, worker, models loadable),
 * /metrics (HTTP, jobs, inference). */
#include <stdio.h>
#include <stdlib.h>

#include "api/api_int.h"

static int healthz(srv_req *req, void *ud)
{
    (void)ud;
    return srv_json(req, 200, json_pack("{s:s}", "status", "ok"));
}

static int readyz(srv_req *req, void *ud)
{
    api *a = ud;
    svc_readiness r;
    svc_ready(a->svc, &r);
    return srv_json(req, r.ready ? 200 : 503,
                    json_pack("{s:s, s:b, s:b, s:b, s:b, s:i, s:s*, s:s*, s:s, s:s}", "status",
                              r.ready ? "ready" : "not ready", "database", r.database, "worker",
                              r.worker, "models_dir", r.models_dir, "models", r.models,
                              "models_checked", r.models_checked, "models_error",
                              r.models_error[0] ? r.models_error : NULL, "hint",
                              r.hint[0] ? r.hint : NULL, "precision", r.precision, "isa", r.isa));
}

static int metrics(srv_req *req, void *ud)
{
    api *a = ud;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return srv_error(req, 500, "internal", "out of memory");
    srv_metrics_text(a->srv, f);
    svc_metrics_text(a->svc, f);
    fclose(f);
    int rc = srv_text(req, 200, "text/plain; version=0.0.4", buf, len);
    free(buf);
    return rc;
}

int api_routes_ops(api *a, srv *s)
{
    return api_route(a, s, "GET", "/healthz", healthz, SRV_PUBLIC | SRV_HEALTH | SRV_BODY_NONE, NULL) ||
           api_route(a, s, "GET", "/readyz", readyz, SRV_BODY_NONE, NULL) ||
           api_route(a, s, "GET", "/metrics", metrics, SRV_BODY_NONE, NULL);
}
