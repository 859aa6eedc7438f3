/* Finding the API: GET /v1 lists the routes, GET / is the web page for a browser and points
 * everyone else there, and a path with a trailing slash answers 404 naming the route without
 * it (the core's own 404 cannot say more than "no such route"). */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include "api/api_int.h"

#define DOCS "GET /v1 lists the routes; api/openapi.yaml in the source tree documents them, " \
             "`bit help api` summarises them"

/* The web page for a browser (unless --ui off); for anyone else a pointer to the API. */
static int root_page(srv_req *req, void *ud)
{
    const api *a = ud;
    if (!a->cfg.ui)
        return srv_error(req, 404, "not_found", "no page here (bit serve --ui off): the HTTP API is under /v1 (" DOCS ")");
    srv_set_header(req, "Vary", "Accept");
    /* browsers name text/html; curl and API clients accept any type or say nothing, and are
     * better served by a pointer than by a page of HTML */
    if (api_header_names(req, "Accept", "text/html")) return api_web_page(req);
    return srv_error(req, 404, "not_found", "the page at / is for browsers (Accept: text/html); "
                     "the HTTP API is under /v1 (" DOCS ")");
}

static int is_twin(const char *pattern)
{
    size_t n = strlen(pattern);
    return n > 1 && pattern[n - 1] == '/';
}

static int api_index(srv_req *req, void *ud)
{
    api *a = ud;
    json_t *routes = json_array();
    for (size_t i = 0; i < srv_route_count(a->srv); i++) {
        const char *m, *p;
        srv_route_at(a->srv, i, &m, &p);
        if (strcmp(p, "/") && !is_twin(p))
            json_array_append_new(routes, json_pack("{s:s, s:s}", "method", m, "path", p));
    }
    return srv_json(req, 200, json_pack("{s:s, s:s, s:s, s:o}", "name", "bitd", "version",
                                        PACKAGE_VERSION, "docs", DOCS, "routes", routes));
}

static int trailing_slash(srv_req *req, void *ud)
{
    (void)ud;
    const char *path = srv_path(req);
    int n = (int)strlen(path) - 1;
    return srv_error(req, 404, "not_found", "no route %s %s: did you mean %s %.*s (no trailing slash)? %s",
                     srv_method(req), path, srv_method(req), n, path, DOCS);
}

int api_routes_index(api *a, srv *s)
{
    /* the page is public (it loads before it can ask for the token) and ignores a query, as
     * static files do; without it / is an API route like the others */
    int rc = (a->cfg.ui ? srv_route(s, "GET", "/", root_page, a, SRV_PUBLIC | SRV_BODY_NONE)
                        : api_route(a, s, "GET", "/", root_page, SRV_BODY_NONE, NULL)) ||
             api_route(a, s, "GET", "/v1", api_index, SRV_BODY_NONE, NULL);
    size_t n = srv_route_count(s);
    /* a route's twin takes what the route takes, so a misaddressed upload is answered too
     * (after its body: only a handler can answer this 404, and handlers run once it is in) */
    for (size_t i = 0; !rc && i < n; i++) {
        const char *m, *p;
        char twin[300];
        srv_route_at(s, i, &m, &p);
        if (!strcmp(p, "/")) continue;
        snprintf(twin, sizeof twin, "%s/", p);
        rc = srv_route(s, m, twin, trailing_slash, a, strcmp(m, "POST") ? SRV_BODY_NONE : SRV_BODY_AUTO);
    }
    return rc;
}
