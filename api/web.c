/* The web page: index.html (GET / for a browser: index.c chooses) and GET /ui/{file}, from the
 * files compiled into bit (api/web/, web.h). Public routes: the page has to load before it can ask for the token, and
 * every /v1 call it makes still needs one. Every answer carries a strict Content-Security-
 * Policy (our own scripts, styles and images only: no inline script, no eval), no referrer,
 * and the file's ETag; the browser revalidates each time (no-cache) and gets 304 while the
 * file is unchanged. A query string is ignored, as static files conventionally do. */
#include <stdio.h>
#include <string.h>

#include "api/api_int.h"
#include "api/web/web.h"

static const char csp[] =
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'";

/* If-None-Match: "*" or a list of entity tags, compared weakly (RFC 9110, 13.1.2). */
static int etag_matches(const char *inm, const char *etag)
{
    size_t n = strlen(etag);
    for (const char *p = inm; p && *p; p += strcspn(p, ",")) {
        p += strspn(p, " \t,");
        if (*p == '*') return 1;
        if (!strncmp(p, "W/", 2)) p += 2;
        if (!strncmp(p, etag, n) && strchr(", \t", p[n])) return 1;
    }
    return 0;
}

static int serve(srv_req *req, const web_asset *w)
{
    if (!w) return srv_error(req, 404, "not_found", "the web page has no such file");
    srv_set_header(req, "Content-Security-Policy", csp);
    srv_set_header(req, "Referrer-Policy", "no-referrer");
    srv_set_header(req, "Cache-Control", "no-cache");
    srv_set_header(req, "ETag", w->etag);
    if (etag_matches(srv_header(req, "If-None-Match"), w->etag))
        return srv_text(req, 304, w->type, "", 0);
    return srv_text(req, 200, w->type, (const char *)w->data, w->len);
}

int api_web_page(srv_req *req)
{
    return serve(req, web_asset_find("/"));
}

static int file(srv_req *req, void *ud)
{
    char path[300];
    (void)ud;
    int n = snprintf(path, sizeof path, "/ui/%s", srv_param(req, "file"));
    return serve(req, n > 0 && (size_t)n < sizeof path ? web_asset_find(path) : NULL);
}

int api_routes_web(api *a, srv *s)
{
    return srv_route(s, "GET", "/ui/{file}", file, a, SRV_PUBLIC | SRV_BODY_NONE);
}
