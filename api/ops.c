/* Operations: /healthz (alive, no auth), /readyz (database, worker, models loadable),
 * /metrics (HTTP, jobs, inference). */
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "api/api_int.h"

static int healthz(srv_req *req, void *ud)
{
    (void)ud;
    return srv_json(req, 200, json_pack("{s:s}", "status", "ok"));
}

static int readyz(srv_req *req, void *ud)
{
    api *a = ud;
    int64_t n;
    char err[512];
    struct stat sb;
    int db = store_job_count(a->cfg.st, STORE_ANY, &n, err, sizeof err) == 0;
    int worker = !a->cfg.worker || wrk_alive(a->cfg.worker);
    int models = stat(a->cfg.models_dir, &sb) == 0 && S_ISDIR(sb.st_mode), nmodels = 0;
    /* headers only: a probe must stay cheap, yet a truncated or foreign file shows here */
    char merr[512] = "";
    int loadable = models && api_models_ready(a, &nmodels, merr, sizeof merr);
    int ok = db && worker && models && loadable;
    return srv_json(req, ok ? 200 : 503,
                    json_pack("{s:s, s:b, s:b, s:b, s:b, s:i, s:s*}", "status",
                              ok ? "ready" : "not ready", "database", db, "worker", worker,
                              "models_dir", models, "models", loadable, "models_checked", nmodels,
                              "models_error", merr[0] ? merr : NULL));
}

static int metrics(srv_req *req, void *ud)
{
    api *a = ud;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return srv_error(req, 500, "internal", "out of memory");
    srv_metrics_text(a->srv, f);
    fprintf(f, "# HELP bit_jobs Fine-tune jobs by status.\n# TYPE bit_jobs gauge\n");
    for (int st = 0; st < STORE_NSTATUS; st++) {
        int64_t n = 0;
        if (store_job_count(a->cfg.st, (store_status)st, &n, NULL, 0) == 0)
            fprintf(f, "bit_jobs{status=\"%s\"} %lld\n", store_status_name((store_status)st), (long long)n);
    }
    fprintf(f, "# HELP bit_training_images_per_second Throughput of the running job.\n"
               "# TYPE bit_training_images_per_second gauge\nbit_training_images_per_second %g\n",
            a->cfg.worker ? wrk_images_per_sec(a->cfg.worker) : 0.0);
    if (a->cfg.infer) inf_metrics_text(a->cfg.infer, f);
    fclose(f);
    int rc = srv_text(req, 200, "text/plain; version=0.0.4", buf, len);
    free(buf);
    return rc;
}

int api_routes_ops(api *a, srv *s)
{
    return srv_route(s, "GET", "/healthz", healthz, a, SRV_PUBLIC | SRV_BODY_NONE) ||
           srv_route(s, "GET", "/readyz", readyz, a, SRV_BODY_NONE) ||
           srv_route(s, "GET", "/metrics", metrics, a, SRV_BODY_NONE);
}
