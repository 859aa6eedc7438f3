/* The web page as compiled into the binary (api/web/embed -> assets.c): every page file of
 * api/web/ is embedded byte for byte with its content type, Chart.js is the file configure
 * found, lookups are exact, and the page only references what is embedded and keeps to the
 * rules a strict Content-Security-Policy and text-only insertion need (no inline script or
 * style, no HTML built from strings, no eval). */
#include <ctype.h>
#include <dirent.h>

#include "api/web/web.h"
#include "t.h"

#ifndef BIT_SRCDIR
#error "BIT_SRCDIR and BIT_CHARTJS must be defined; api/web/web.am passes them"
#endif

#define WEB_DIR BIT_SRCDIR "/api/web"

/* Files of api/web/ that build the page rather than being part of it. */
static int build_only(const char *name)
{
    static const char *const own[] = {"embed.c", "web.c", "web.h", "web.am"};
    for (size_t i = 0; i < sizeof own / sizeof own[0]; i++)
        if (!strcmp(name, own[i])) return 1;
    return name[0] == '.';
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) free(b), b = NULL;
    fclose(f);
    if (b) b[n] = 0, *len = (size_t)n;
    return b;
}

static const char *url_of(const char *name, char *buf, size_t n)
{
    if (!strcmp(name, "index.html")) return "/";
    snprintf(buf, n, "/ui/%s", name);
    return buf;
}

static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

static void every_page_file_is_embedded(void)
{
    DIR *d = opendir(WEB_DIR);
    T_REQUIRE(d);
    struct dirent *e;
    size_t files = 0;
    while ((e = readdir(d))) {
        if (build_only(e->d_name)) continue;
        char path[4096], ubuf[512];
        snprintf(path, sizeof path, "%s/%s", WEB_DIR, e->d_name);
        size_t len;
        char *src = slurp(path, &len);
        const web_asset *a = web_asset_find(url_of(e->d_name, ubuf, sizeof ubuf));
        T_CHECKF(a, "%s is not embedded: add it to WEB_PAGE_FILES in api/web/web.am", e->d_name);
        if (src && a) {
            T_CHECKF(a->len == len && !memcmp(a->data, src, len) && a->data[len] == 0,
                     "%s differs from its embedded copy", e->d_name);
            const char *want = ends_with(e->d_name, ".html") ? "text/html; charset=utf-8"
                             : ends_with(e->d_name, ".css")  ? "text/css; charset=utf-8"
                             : ends_with(e->d_name, ".js")   ? "text/javascript; charset=utf-8"
                             : ends_with(e->d_name, ".svg")  ? "image/svg+xml" : "?";
            T_CHECKF(!strcmp(a->type, want), "%s: type %s", e->d_name, a->type);
        }
        free(src);
        files++;
    }
    closedir(d);
    T_CHECK(files >= 5);
    T_CHECKF(web_assets_count == files + 1, "%zu assets for %zu page files and Chart.js",
             web_assets_count, files);
}

static void chartjs_is_the_configured_file(void)
{
    size_t len;
    char *src = slurp(BIT_CHARTJS, &len);
    const web_asset *a = web_asset_find("/ui/chart.js");
    T_REQUIRE(src && a);
    T_CHECK(a->len == len && !memcmp(a->data, src, len));
    T_CHECK(!strcmp(a->type, "text/javascript; charset=utf-8"));
    T_CHECK(strstr(src, "Chart.js v") != NULL);
    free(src);
}

static void table_and_lookup(void)
{
    for (size_t i = 0; i < web_assets_count; i++) {
        const web_asset *a = &web_assets[i];
        if (i) T_CHECKF(strcmp(web_assets[i - 1].path, a->path) < 0, "not sorted at %s", a->path);
        T_CHECK(web_asset_find(a->path) == a);
        size_t n = strlen(a->etag);
        T_CHECKF(n == 18 && a->etag[0] == '"' && a->etag[17] == '"', "%s: etag %s", a->path, a->etag);
        for (size_t k = 1; k + 1 < n; k++) T_CHECK(isxdigit((unsigned char)a->etag[k]));
        for (size_t j = 0; j < i; j++)
            if (web_assets[j].len != a->len || memcmp(web_assets[j].data, a->data, a->len))
                T_CHECKF(strcmp(web_assets[j].etag, a->etag), "%s and %s share an etag",
                         web_assets[j].path, a->path);
    }
    static const char *const absent[] = {"", "/ui/", "/ui", "/index.html", "/ui/nope.js",
                                         "/ui/../configure.ac", "/ui/app.js?x=1", "/UI/app.js",
                                         "/ui/app.js/"};
    for (size_t i = 0; i < sizeof absent / sizeof absent[0]; i++)
        T_CHECKF(web_asset_find(absent[i]) == NULL, "'%s' found", absent[i]);
    T_CHECK(web_asset_find(NULL) == NULL);
}

/* Every "/..." src/href of the HTML and every relative import of a module is embedded. */
static void references_resolve(void)
{
    for (size_t i = 0; i < web_assets_count; i++) {
        const web_asset *a = &web_assets[i];
        int html = !strcmp(a->path, "/"), js = ends_with(a->path, ".js") && strcmp(a->path, "/ui/chart.js");
        if (!html && !js) continue;
        const char *keys[] = {"src=\"", "href=\"", "from './", "import('./"};
        for (int k = html ? 0 : 2; k < (html ? 2 : 4); k++) {
            for (const char *p = (const char *)a->data; (p = strstr(p, keys[k])); ) {
                p += strlen(keys[k]);
                char ref[256], url[300];
                size_t n = strcspn(p, "\"'");
                if (n >= sizeof ref) n = sizeof ref - 1;
                memcpy(ref, p, n), ref[n] = 0;
                if (html && ref[0] == '#') continue;
                snprintf(url, sizeof url, "%s%s", html ? "" : "/ui/", ref);
                T_CHECKF(web_asset_find(url), "%s references %s, which is not embedded", a->path, url);
            }
        }
    }
}

/* What a strict CSP (no inline script or style, no eval) and text-only insertion rule out. */
static void page_keeps_to_the_csp(void)
{
    static const char *const banned_js[] = {"innerHTML", "outerHTML", "insertAdjacentHTML",
                                            "document.write", "eval(", "new Function",
                                            "setAttribute('style'", "setAttribute(\"style\"",
                                            "cssText"};
    for (size_t i = 0; i < web_assets_count; i++) {
        const web_asset *a = &web_assets[i];
        const char *s = (const char *)a->data;
        if (!strcmp(a->path, "/")) {
            const char *p = s;
            while ((p = strstr(p, "<script"))) {
                const char *end = strchr(p, '>');
                T_CHECKF(end && memmem(p, (size_t)(end - p), "src=", 4), "inline <script> in index.html");
                p += 7;
            }
            T_CHECK(!strstr(s, "<style") && !strstr(s, " style=") && !strstr(s, "javascript:"));
            for (const char *q = s; (q = strstr(q, " on")); q += 3) {
                size_t n = 0;
                while (isalpha((unsigned char)q[3 + n])) n++;
                T_CHECKF(!(n && q[3 + n] == '='), "an inline event handler in index.html");
            }
        } else if (ends_with(a->path, ".js") && strcmp(a->path, "/ui/chart.js")) {
            for (size_t k = 0; k < sizeof banned_js / sizeof banned_js[0]; k++)
                T_CHECKF(!strstr(s, banned_js[k]), "%s uses %s", a->path, banned_js[k]);
        } else if (ends_with(a->path, ".css")) {
            T_CHECKF(!strstr(s, "url(") && !strstr(s, "@import"), "%s loads something", a->path);
        }
    }
}

int main(void)
{
    T_RUN(every_page_file_is_embedded);
    T_RUN(chartjs_is_the_configured_file);
    T_RUN(table_and_lookup);
    T_RUN(references_resolve);
    T_RUN(page_keeps_to_the_csp);
    return t_done();
}
