/* api/openapi.yaml against the server itself: the spec's (method, path) pairs are exactly the
 * routes `bit serve` registers (api_register on an srv), its public operations (`security:
 * []`) are exactly the routes that answer without a token, and it is well-formed where drift
 * usually breaks it: every operation has an operationId and responses with descriptions,
 * every $ref resolves, every path template parameter is declared. There is no YAML library in
 * the build, so the spec is read line by line relying on its fixed indentation (the note at
 * the top of the file); a line that does not fit that layout is an error, never skipped, so a
 * reformatted spec fails loudly instead of silently hiding routes. */
#include <ctype.h>
#include <stdarg.h>
#include <sys/stat.h>

#include "api/api.h"
#include "server/http/srv.h"
#include "t.h"
#include "thttp.h"

#ifndef BIT_SRCDIR
#error "BIT_SRCDIR (the source tree) must be defined; api/openapi.am passes it"
#endif

static char err[1024];

/* ---- the spec as lines ---- */

typedef struct spec {
    char **line;
    size_t n, cap;
} spec;

static void spec_free(spec *s)
{
    for (size_t i = 0; i < s->n; i++) free(s->line[i]);
    free(s->line);
    memset(s, 0, sizeof *s);
}

static int spec_add(spec *s, const char *text)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 256;
        char **l = realloc(s->line, cap * sizeof *l);
        if (!l) return -1;
        s->line = l, s->cap = cap;
    }
    if (!(s->line[s->n] = strdup(text))) return -1;
    s->n++;
    return 0;
}

static int spec_load(const char *path, spec *s)
{
    memset(s, 0, sizeof *s);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char *buf = NULL;
    size_t cap = 0;
    ssize_t len;
    int rc = 0;
    while (!rc && (len = getline(&buf, &cap, f)) >= 0) {
        while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r')) buf[--len] = 0;
        rc = spec_add(s, buf);
    }
    free(buf);
    fclose(f);
    return rc;
}

/* A copy without lines [from, to) and with `extra` lines inserted at `at` (in the original's
 * numbering): the mutations that show the checks can fail. */
static int spec_edit(const spec *in, size_t from, size_t to, size_t at, const char *const *extra,
                     spec *out)
{
    memset(out, 0, sizeof *out);
    for (size_t i = 0; i <= in->n; i++) {
        for (size_t k = 0; i == at && extra && extra[k]; k++)
            if (spec_add(out, extra[k])) return -1;
        if (i < in->n && (i < from || i >= to) && spec_add(out, in->line[i])) return -1;
    }
    return 0;
}

static int indent(const char *l)
{
    int n = 0;
    while (l[n] == ' ') n++;
    return n;
}

/* Blank lines and comments belong to no block. */
static int ignorable(const char *l)
{
    const char *p = l + indent(l);
    return !*p || *p == '#';
}

/* The mapping key of a `key: value` / `key:` line (quotes removed) into out; -1 for list
 * items and anything else. *rest (optional) points after the colon and its spaces. */
static int key_of(const char *l, char *out, size_t len, const char **rest)
{
    const char *p = l + indent(l), *e;
    if (*p == '\'' || *p == '"') {
        if (!(e = strchr(p + 1, *p)) || e[1] != ':') return -1;
        p++;
    } else {
        for (e = p; *e && !(*e == ':' && (e[1] == ' ' || !e[1])); e++)
            ;
        if (!*e || *p == '-') return -1;
    }
    size_t n = (size_t)(e - p);
    if (n == 0 || n >= len) return -1;
    memcpy(out, p, n);
    out[n] = 0;
    e += (*e == ':') ? 1 : 2; /* past the colon (or the closing quote and colon) */
    while (*e == ' ') e++;
    if (rest) *rest = e;
    return 0;
}

/* The end of the block that line i opens: the next non-ignorable line indented <= its own. */
static size_t block_end(const spec *s, size_t i)
{
    int ind = indent(s->line[i]);
    size_t j = i + 1;
    while (j < s->n && (ignorable(s->line[j]) || indent(s->line[j]) > ind)) j++;
    return j;
}

/* The line in [from, to) at exactly `ind` spaces whose key is k, or `to`. */
static size_t find_key(const spec *s, size_t from, size_t to, int ind, const char *k)
{
    char key[256];
    for (size_t i = from; i < to; i++)
        if (!ignorable(s->line[i]) && indent(s->line[i]) == ind &&
            !key_of(s->line[i], key, sizeof key, NULL) && !strcmp(key, k))
            return i;
    return to;
}

/* Checks report here; the mutation cases count problems without printing them. */
static int quiet;

static int problem(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int problem(const char *fmt, ...)
{
    if (quiet) return 1;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "  openapi: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 1;
}

/* ---- operations under paths: ---- */

typedef struct op {
    char method[16]; /* upper case, as srv registers methods */
    char path[256];
    size_t line, end;          /* the method line and the end of its block */
    size_t path_line, path_end;
    int public;                /* `security: []` */
} op;

typedef struct ops {
    op v[256];
    size_t n;
} ops;

static const char *const methods[] = {"get", "put", "post", "delete", "options", "head",
                                      "patch", "trace"};

static int is_method(const char *k)
{
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
        if (!strcmp(k, methods[i])) return 1;
    return 0;
}

/* Reads every operation; returns the number of layout problems (each reported). */
static int spec_ops(const spec *s, ops *o)
{
    int bad = 0;
    char key[256];
    o->n = 0;
    size_t p = find_key(s, 0, s->n, 0, "paths");
    if (p == s->n) return problem("no top-level `paths:`");
    size_t end = block_end(s, p), path_line = 0, path_ops = 0;
    const char *path = NULL;
    for (size_t i = p + 1; i <= end; i++) {
        if (path && (i == end || (!ignorable(s->line[i]) && indent(s->line[i]) <= 2)) &&
            o->n == path_ops)
            bad += problem("line %zu: a path without operations", path_line + 1);
        if (i == end) break;
        const char *l = s->line[i];
        int ind = indent(l);
        if (ignorable(l)) continue;
        /* Everything steps by two spaces: a method at 3 or 5 would otherwise vanish into
         * its neighbour's block instead of being reported. */
        if (ind % 2) bad += problem("line %zu: odd indentation: %s", i + 1, l);
        if (ind > 4) continue;
        if (key_of(l, key, sizeof key, NULL)) {
            bad += problem("line %zu: expected `key:` at 2 or 4 spaces: %s", i + 1, l);
        } else if (ind == 2) {
            if (key[0] != '/') bad += problem("line %zu: a path must start with '/': %s", i + 1, l);
            for (size_t k = 0; k < o->n; k++)
                if (!strcmp(o->v[k].path, key)) bad += problem("line %zu: %s appears twice", i + 1, key);
            path = s->line[i] + 2, path_line = i, path_ops = o->n;
        } else if (ind == 4 && path && is_method(key)) {
            if (o->n == sizeof o->v / sizeof o->v[0]) return bad + problem("too many operations");
            op *x = &o->v[o->n];
            memset(x, 0, sizeof *x);
            for (size_t k = 0; key[k]; k++) x->method[k] = (char)toupper((unsigned char)key[k]);
            if (key_of(path, x->path, sizeof x->path, NULL)) bad += problem("line %zu: bad path", i + 1);
            for (size_t k = 0; k < o->n; k++)
                if (!strcmp(o->v[k].path, x->path) && !strcmp(o->v[k].method, x->method))
                    bad += problem("line %zu: %s %s appears twice", i + 1, x->method, x->path);
            x->line = i, x->end = block_end(s, i);
            x->path_line = path_line, x->path_end = block_end(s, path_line);
            size_t sec = find_key(s, i + 1, x->end, 6, "security");
            const char *rest = "";
            if (sec < x->end) key_of(s->line[sec], key, sizeof key, &rest);
            x->public = sec < x->end && !strcmp(rest, "[]");
            o->n++;
        } else if (ind == 4 && path && (!strcmp(key, "parameters") || !strcmp(key, "summary") ||
                                        !strcmp(key, "description") || !strcmp(key, "servers"))) {
            continue;
        } else {
            bad += problem("line %zu: `%s` is not a path (2 spaces) or a method (4 spaces)", i + 1, key);
        }
    }
    return bad;
}

/* ---- the server's routes ---- */

typedef struct env {
    svc *sv;
    api *a;
    srv *s;
    FILE *log;
} env;

static void env_free(env *e)
{
    srv_free(e->s);
    api_free(e->a);
    svc_close(e->sv);
    if (e->log) fclose(e->log);
    memset(e, 0, sizeof *e);
}

/* As `bit serve` builds it (server/cmd_serve.c start()), minus the worker. */
static int env_new(env *e, const char *token)
{
    static int k;
    char dir[600], log[700];
    memset(e, 0, sizeof *e);
    snprintf(dir, sizeof dir, "%s/run%d", t_tmpdir(), k++);
    snprintf(log, sizeof log, "%s/http.log", dir);
    if (mkdir(dir, 0755) || !(e->log = fopen(log, "w"))) return -1;
    svc_config vc = {.data_dir = dir, .models_dir = dir, .log = e->log};
    srv_config sc;
    srv_config_init(&sc);
    sc.address = "127.0.0.1", sc.port = 0, sc.token = token, sc.temp_dir = dir, sc.log = e->log;
    int rc = svc_open(&vc, &e->sv, err, sizeof err);
    api_config ac = {.service = e->sv, .ui = 1}; /* bit serve's default: the page is on */
    if (!rc) rc = api_new(&ac, &e->a, err, sizeof err);
    if (!rc) rc = srv_new(&sc, &e->s, err, sizeof err);
    if (!rc) rc = api_register(e->a, e->s, err, sizeof err);
    if (rc) fprintf(stderr, "  setup: %s\n", err);
    return rc;
}

/* A trailing-slash twin ("/v1/jobs/", answering 404 naming "/v1/jobs"): the spec documents
 * them once, in its description; trailing_slash_twins checks every operation has one. */
static int is_twin(const char *p)
{
    size_t len = strlen(p);
    return len > 1 && p[len - 1] == '/';
}

static int documented(const ops *o, const char *m, const char *p)
{
    for (size_t k = 0; k < o->n; k++)
        if (!strcmp(o->v[k].method, m) && !strcmp(o->v[k].path, p)) return 1;
    return 0;
}

/* Differences between the routes and the spec's operations, each printed; 0 when equal. */
static int compare(const srv *s, const ops *o)
{
    int diff = 0;
    size_t n = srv_route_count(s);
    for (size_t i = 0; i < n; i++) {
        const char *m, *p;
        srv_route_at(s, i, &m, &p);
        if (is_twin(p)) continue;
        int found = documented(o, m, p);
        if (!found) diff += problem("the server answers %s %s; api/openapi.yaml lacks it", m, p);
    }
    for (size_t k = 0; k < o->n; k++) {
        int found = 0;
        for (size_t i = 0; i < n && !found; i++) {
            const char *m, *p;
            srv_route_at(s, i, &m, &p);
            found = !strcmp(o->v[k].method, m) && !strcmp(o->v[k].path, p);
        }
        if (!found)
            diff += problem("api/openapi.yaml has %s %s (line %zu); the server has no such route",
                            o->v[k].method, o->v[k].path, o->v[k].line + 1);
    }
    return diff;
}

/* ---- well-formedness ---- */

/* The line of components.<section>.<name>, or s->n. */
static size_t component(const spec *s, const char *section, const char *name)
{
    size_t c = find_key(s, 0, s->n, 0, "components");
    if (c == s->n) return s->n;
    size_t sec = find_key(s, c + 1, block_end(s, c), 2, section);
    if (sec == block_end(s, c)) return s->n;
    size_t e = block_end(s, sec), i = find_key(s, sec + 1, e, 4, name);
    return i < e ? i : s->n;
}

/* The value of `$ref:` on line l (quotes removed) into out; -1 if the line has none. */
static int ref_of(const char *l, char *out, size_t len)
{
    const char *p = strstr(l, "$ref:");
    if (!p) return -1;
    p += 5;
    while (*p == ' ') p++;
    char q = (*p == '\'' || *p == '"') ? *p++ : 0;
    size_t n = q ? strcspn(p, (char[]){q, 0}) : strcspn(p, " #");
    if (n == 0 || n >= len) return -1;
    memcpy(out, p, n);
    out[n] = 0;
    return 0;
}

/* Resolves "#/components/<section>/<name>" to its line; s->n when it does not exist. */
static size_t resolve(const spec *s, const char *ref)
{
    char sec[128], name[128];
    if (sscanf(ref, "#/components/%127[^/]/%127s", sec, name) != 2) return s->n;
    return component(s, sec, name);
}

static int check_refs(const spec *s)
{
    int bad = 0;
    char ref[512];
    for (size_t i = 0; i < s->n; i++)
        if (!ignorable(s->line[i]) && !ref_of(s->line[i], ref, sizeof ref) && resolve(s, ref) == s->n)
            bad += problem("line %zu: $ref %s does not resolve", i + 1, ref);
    return bad;
}

/* Each response code at 8 spaces under `responses:` (6), with a description or a $ref. */
static int check_responses(const spec *s, const op *x)
{
    char key[256];
    size_t r = find_key(s, x->line + 1, x->end, 6, "responses");
    if (r == x->end) return problem("%s %s has no responses", x->method, x->path);
    size_t e = block_end(s, r);
    int codes = 0, bad = 0;
    for (size_t i = r + 1; i < e; i++) {
        if (ignorable(s->line[i]) || indent(s->line[i]) != 8) continue;
        codes++;
        key[0] = 0;
        int code = !key_of(s->line[i], key, sizeof key, NULL) && strlen(key) == 3 &&
                   key[0] >= '1' && key[0] <= '5' && isdigit((unsigned char)key[1]) &&
                   isdigit((unsigned char)key[2]);
        if (!code && strcmp(key, "default"))
            bad += problem("line %zu: %s %s: `%s` is not a status code", i + 1, x->method,
                           x->path, s->line[i]);
        size_t ce = block_end(s, i);
        if (find_key(s, i + 1, ce, 10, "description") == ce && find_key(s, i + 1, ce, 10, "$ref") == ce)
            bad += problem("line %zu: %s %s %s has neither description nor $ref", i + 1, x->method,
                           x->path, key);
    }
    if (!codes) bad += problem("%s %s: responses is empty", x->method, x->path);
    return bad;
}

/* Path parameters declared in the list at [from, to) (`- $ref:` to components.parameters or
 * an inline `- name:` with `in: path`), appended to names as "|id|...". */
static void path_params(const spec *s, size_t from, size_t to, char *names, size_t len)
{
    char key[256], ref[512];
    const char *rest;
    for (size_t i = from; i < to; i++) {
        const char *l = s->line[i], *item = l + indent(l);
        if (ignorable(l) || item[0] != '-') continue;
        const char *name = NULL, *in = NULL;
        char nbuf[128] = "", ibuf[32] = "";
        if (!ref_of(l, ref, sizeof ref)) {
            size_t c = resolve(s, ref);
            if (c == s->n) continue; /* reported by check_refs */
            size_t ce = block_end(s, c), k;
            k = find_key(s, c + 1, ce, 6, "name");
            if (k < ce && !key_of(s->line[k], key, sizeof key, &rest))
                snprintf(nbuf, sizeof nbuf, "%s", rest), name = nbuf;
            k = find_key(s, c + 1, ce, 6, "in");
            if (k < ce && !key_of(s->line[k], key, sizeof key, &rest))
                snprintf(ibuf, sizeof ibuf, "%s", rest), in = ibuf;
        } else if (!strncmp(item, "- name:", 7)) {
            snprintf(nbuf, sizeof nbuf, "%s", item + 7 + strspn(item + 7, " "));
            name = nbuf;
            int ind = indent(l) + 2; /* the item's other keys line up after "- " */
            size_t e = i + 1;
            while (e < to && (ignorable(s->line[e]) || indent(s->line[e]) >= ind)) e++;
            size_t k = find_key(s, i + 1, e, ind, "in");
            if (k < e && !key_of(s->line[k], key, sizeof key, &rest))
                snprintf(ibuf, sizeof ibuf, "%s", rest), in = ibuf;
        }
        if (name && in && !strcmp(in, "path")) {
            size_t u = strlen(names);
            snprintf(names + u, len - u, "|%s|", name);
        }
    }
}

static int check_path_params(const spec *s, const op *x)
{
    char declared[1024] = "", key[64];
    int bad = 0;
    size_t p = find_key(s, x->path_line + 1, x->path_end, 4, "parameters");
    if (p < x->path_end) path_params(s, p + 1, block_end(s, p), declared, sizeof declared);
    size_t q = find_key(s, x->line + 1, x->end, 6, "parameters");
    if (q < x->end) path_params(s, q + 1, block_end(s, q), declared, sizeof declared);
    /* every {name} of the template is declared... */
    size_t used = 0;
    for (const char *c = strchr(x->path, '{'); c; c = strchr(c + 1, '{')) {
        size_t n = strcspn(c + 1, "}");
        snprintf(key, sizeof key, "|%.*s|", (int)n, c + 1);
        used++;
        if (!strstr(declared, key))
            bad += problem("%s %s: path parameter %s is not declared", x->method, x->path, key);
    }
    /* ...and nothing else is declared as a path parameter */
    size_t ndecl = 0;
    for (const char *c = declared; *c; c++) ndecl += *c == '|';
    ndecl /= 2; /* each name is "|name|" */
    if (ndecl != used)
        bad += problem("%s %s: %zu path parameters declared for %zu in the template", x->method,
                       x->path, ndecl, used);
    return bad;
}

/* A key twice in one mapping: YAML readers keep one silently (the other's text is lost). The
 * lines of block scalars (`key: |`) are text, not keys. */
static int check_duplicate_keys(const spec *s)
{
    int bad = 0;
    char k1[256], k2[256];
    const char *rest;
    for (size_t i = 0; i < s->n; i++) {
        if (ignorable(s->line[i]) || key_of(s->line[i], k1, sizeof k1, &rest)) continue;
        int ind = indent(s->line[i]);
        size_t e = block_end(s, i);
        if (*rest == '|' || *rest == '>') {
            i = e - 1;
            continue;
        }
        /* siblings follow the block, until the parent's block ends */
        for (size_t j = e; j < s->n && (ignorable(s->line[j]) || indent(s->line[j]) >= ind); j++)
            if (indent(s->line[j]) == ind && !key_of(s->line[j], k2, sizeof k2, NULL) &&
                !strcmp(k1, k2))
                bad += problem("line %zu: `%s` again (first at line %zu)", j + 1, k2, i + 1);
    }
    return bad;
}

/* Every problem found in the spec, reported; 0 for a well-formed spec. */
static int check_spec(const spec *s, const ops *o)
{
    int bad = 0;
    char key[256], ids[256][128];
    size_t nids = 0;
    const char *rest;
    size_t v = find_key(s, 0, s->n, 0, "openapi");
    if (v == s->n || key_of(s->line[v], key, sizeof key, &rest) || strncmp(rest, "3.1.", 4))
        bad += problem("the spec must start with `openapi: 3.1.x`");
    if (find_key(s, 0, s->n, 0, "info") == s->n) bad += problem("no `info:`");
    if (component(s, "securitySchemes", "bearer") == s->n) bad += problem("no bearer security scheme");
    for (size_t i = 0; i < s->n; i++)
        if (strchr(s->line[i], '\t')) bad += problem("line %zu has a tab", i + 1);
    bad += check_refs(s) + check_duplicate_keys(s);
    for (size_t k = 0; k < o->n; k++) {
        const op *x = &o->v[k];
        bad += check_responses(s, x) + check_path_params(s, x);
        size_t id = find_key(s, x->line + 1, x->end, 6, "operationId");
        if (id == x->end || key_of(s->line[id], key, sizeof key, &rest) || !*rest) {
            bad += problem("%s %s has no operationId", x->method, x->path);
            continue;
        }
        for (size_t j = 0; j < nids; j++)
            if (!strcmp(ids[j], rest)) bad += problem("operationId %s is used twice", rest);
        if (nids < 256) snprintf(ids[nids++], sizeof ids[0], "%s", rest);
    }
    return bad;
}

/* ---- cases ---- */

static spec S;
static ops O;

static void spec_matches_routes(void)
{
    env e;
    T_REQUIRE(env_new(&e, NULL) == 0);
    /* Not vacuous: at least the datasets (4), jobs (8), operations (3) and page (2) routes. */
    T_CHECKF(srv_route_count(e.s) >= 17, "%zu routes", srv_route_count(e.s));
    T_CHECKF(O.n >= 17, "%zu operations", O.n);
    T_EQ(compare(e.s, &O), 0);
    env_free(&e);
}

static void route_accessor(void)
{
    env e;
    T_REQUIRE(env_new(&e, NULL) == 0);
    const char *m = NULL, *p = NULL;
    size_t n = srv_route_count(e.s);
    T_REQUIRE(n > 0);
    /* registration order: api_register starts with the datasets */
    T_CHECK(srv_route_at(e.s, 0, &m, &p) == 0 && !strcmp(m, "POST") && !strcmp(p, "/v1/datasets"));
    T_EQ(srv_route_at(e.s, n, &m, &p), ENG_EINVAL);
    T_EQ(srv_route_at(e.s, n - 1, NULL, NULL), 0);
    env_free(&e);
}

/* Every operation but GET / has its trailing-slash twin, as the spec's description says. */
static void trailing_slash_twins(void)
{
    env e;
    T_REQUIRE(env_new(&e, NULL) == 0);
    for (size_t k = 0; k < O.n; k++) {
        char twin[300];
        int found = 0;
        if (!strcmp(O.v[k].path, "/")) continue;
        snprintf(twin, sizeof twin, "%s/", O.v[k].path);
        for (size_t i = 0; i < srv_route_count(e.s) && !found; i++) {
            const char *m, *p;
            srv_route_at(e.s, i, &m, &p);
            found = !strcmp(m, O.v[k].method) && !strcmp(p, twin);
        }
        T_CHECKF(found, "%s %s has no twin %s", O.v[k].method, O.v[k].path, twin);
    }
    env_free(&e);
}

static void spec_is_well_formed(void)
{
    T_EQ(check_spec(&S, &O), 0);
}

/* The spec's `security: []` operations are exactly those the server answers without a token:
 * each route is called with no Authorization header, and only public ones get past the 401. */
static void public_routes_match(void)
{
    env e;
    T_REQUIRE(env_new(&e, "openapi-test-token-0123456789") == 0);
    T_REQUIRE(srv_start(e.s, err, sizeof err) == 0);
    int port = srv_port(e.s), npublic = 0;
    for (size_t i = 0; i < srv_route_count(e.s); i++) {
        const char *m, *p;
        char path[512];
        size_t o = 0;
        srv_route_at(e.s, i, &m, &p);
        for (const char *c = p; *c && o < sizeof path - 8; c++) { /* {id} -> x */
            if (*c == '{') {
                path[o++] = 'x';
                c += strcspn(c, "}");
            } else {
                path[o++] = *c;
            }
        }
        path[o] = 0;
        th_resp r;
        if (th_request(port, m, path, NULL, NULL, 0, &r)) {
            T_CHECKF(0, "%s %s: no answer", m, path);
            continue;
        }
        int open = r.status != 401, documented = 0;
        th_free(&r);
        for (size_t k = 0; k < O.n; k++)
            if (!strcmp(O.v[k].method, m) && !strcmp(O.v[k].path, p)) documented = O.v[k].public;
        npublic += open;
        T_CHECKF(open == documented, "%s %s: %s without a token, the spec says %s", m, p,
                 open ? "answers" : "401", documented ? "`security: []`" : "bearer");
    }
    T_EQ(npublic, 3); /* /healthz, and the page: / and /ui/{file} */
    srv_stop(e.s);
    env_free(&e);
}

/* The checks above can fail: copies of the spec missing one path, with an extra one, with a
 * method renamed or misindented, with a dangling $ref, a duplicated key, an operation without
 * responses or an undeclared path parameter each report exactly the problems expected. */
static void checks_can_fail(void)
{
    /* the lines the mutations touch: the cancel path, its post, its responses, its parameters */
    size_t p = find_key(&S, 0, S.n, 2, "/v1/jobs/{id}/cancel");
    T_REQUIRE(p < S.n);
    size_t pe = block_end(&S, p), post = find_key(&S, p + 1, pe, 4, "post");
    size_t params = find_key(&S, p + 1, pe, 4, "parameters");
    T_REQUIRE(post < pe && params < pe);
    size_t r = find_key(&S, post + 1, block_end(&S, post), 6, "responses");
    T_REQUIRE(r < pe);
    env e;
    T_REQUIRE(env_new(&e, NULL) == 0);
    static ops mutated; /* too big for the stack */
    ops *o = &mutated;
    spec m;
    quiet = 1;
    /* Counted against the real spec's differences, so this case says whether the checks can
     * fail even while spec_matches_routes itself fails. */
    int base = compare(e.s, &O);
    /* one path fewer */
    T_EQ(spec_edit(&S, p, pe, S.n, NULL, &m), 0);
    T_CHECK(spec_ops(&m, o) == 0 && o->n == O.n - 1 && compare(e.s, o) == base + 1);
    spec_free(&m);
    /* one path more: well-formed, just not served */
    const char *extra[] = {"  /v1/nothing:", "    get:", "      operationId: nothing",
                           "      responses:", "        '200':", "          description: x", NULL};
    T_EQ(spec_edit(&S, 0, 0, p, extra, &m), 0);
    T_CHECK(spec_ops(&m, o) == 0 && o->n == O.n + 1 && compare(e.s, o) == base + 1);
    T_EQ(check_spec(&m, o), 0);
    spec_free(&m);
    /* post -> put: one route undocumented, one operation unserved */
    const char *put[] = {"    put:", NULL};
    T_EQ(spec_edit(&S, post, post + 1, post, put, &m), 0);
    T_CHECK(spec_ops(&m, o) == 0 && compare(e.s, o) == base + 2);
    spec_free(&m);
    /* a method one space off is a layout error, not a silently lost route */
    const char *shifted[] = {"     post:", NULL};
    T_EQ(spec_edit(&S, post, post + 1, post, shifted, &m), 0);
    T_EQ(spec_ops(&m, o), 2); /* odd indentation; the path left without operations */
    spec_free(&m);
    /* a dangling $ref */
    const char *dangling[] = {"        '418':", "          $ref: '#/components/responses/NoSuchThing'",
                              NULL};
    T_EQ(spec_edit(&S, 0, 0, r + 1, dangling, &m), 0);
    T_CHECK(spec_ops(&m, o) == 0 && check_spec(&m, o) == 1);
    spec_free(&m);
    /* a key twice in one mapping */
    const char *twice[] = {"      summary: again", NULL};
    T_EQ(spec_edit(&S, 0, 0, r, twice, &m), 0);
    T_CHECK(spec_ops(&m, o) == 0 && check_spec(&m, o) == 1);
    spec_free(&m);
    /* an operation without responses */
    T_EQ(spec_edit(&S, r, block_end(&S, r), S.n, NULL, &m), 0);
    T_CHECK(spec_ops(&m, o) == 0 && check_spec(&m, o) == 1);
    spec_free(&m);
    /* {id} no longer declared: the template name, then the count */
    T_EQ(spec_edit(&S, params, block_end(&S, params), S.n, NULL, &m), 0);
    T_CHECK(spec_ops(&m, o) == 0 && check_spec(&m, o) == 2);
    spec_free(&m);
    quiet = 0;
    env_free(&e);
}

int main(void)
{
    (void)th_multipart; /* thttp.h's multipart builder: not needed here */
    /* BIT_OPENAPI_SPEC: check another file, e.g. an edited copy (what a broken spec reports) */
    const char *path = getenv("BIT_OPENAPI_SPEC");
    if (!path || !*path) path = BIT_SRCDIR "/api/openapi.yaml";
    if (spec_load(path, &S)) {
        fprintf(stderr, "cannot read %s\n", path);
        return 1;
    }
    if (spec_ops(&S, &O)) {
        fprintf(stderr, "%s: the layout the reader relies on is broken (see the top of the file)\n", path);
        return 1;
    }
    T_RUN(route_accessor);
    T_RUN(spec_matches_routes);
    T_RUN(trailing_slash_twins);
    T_RUN(spec_is_well_formed);
    T_RUN(public_routes_match);
    T_RUN(checks_can_fail);
    spec_free(&S);
    return t_done();
}
