/* What the web page needs of `bit serve`, over real HTTP: the page itself at / and /ui/{file}
 * (no token, strict headers, ETag revalidation, --ui off), dry runs of job creation, a job's
 * final metrics, and live events as Server-Sent Events: their format against the JSON events,
 * resuming, the end of a job, a hundred followers at once (no thread each: the API still
 * answers; the memory they cost is printed), the follower limit, hang-ups and shutdown. */
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <strings.h>
#include <sys/wait.h>
#include <time.h>

#include "t.h"
#include "tdata.h"
#include "thttp.h"
#include "tserve.h"

#ifndef BIT_SRCDIR
#error "BIT_SRCDIR (the source tree) must be defined; tests/tests.am passes it"
#endif

static char err[512];
static const char *const TOKEN = "web-api-test-token-0123456789";
#define AUTH "Authorization: Bearer web-api-test-token-0123456789\r\n"
#define BROWSER "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"

static int server_start(ts_server *s, const char *name, const char *const *extra, int token)
{
    char dir[700];
    snprintf(dir, sizeof dir, "%s/%s", t_tmpdir(), name);
    if (token) setenv("BIT_API_TOKEN", TOKEN, 1);
    int rc = ts_start(s, getenv("BIT_BIN"), dir, "tiny", t_fixture("model.npz"), extra);
    unsetenv("BIT_API_TOKEN");
    return rc;
}

static json_t *call(const ts_server *s, const char *method, const char *path, const char *body,
                    int *status)
{
    char hdr[256];
    snprintf(hdr, sizeof hdr, AUTH "%s", body ? "Content-Type: application/json\r\n" : "");
    return ts_call(s, method, path, hdr, body, body ? strlen(body) : 0, status);
}

/* The value of a response header (case-insensitive name) into a static buffer, or NULL. */
static const char *header(const th_resp *r, const char *name)
{
    static char v[512];
    size_t n = strlen(name);
    for (const char *l = r->headers; l && *l; l = strstr(l, "\r\n") ? strstr(l, "\r\n") + 2 : "") {
        if (!strncasecmp(l, name, n) && l[n] == ':') {
            const char *b = l + n + 1 + strspn(l + n + 1, " ");
            snprintf(v, sizeof v, "%.*s", (int)strcspn(b, "\r\n"), b);
            return v;
        }
    }
    return NULL;
}

static char *slurp(const char *path, size_t *len)
{
    void *b = NULL;
    eng_file_read(path, 1 << 30, &b, len, err, sizeof err);
    return b;
}

static const char *tensor_dataset(int n)
{
    static char path[600];
    snprintf(path, sizeof path, "%s/data-%d.npz", t_tmpdir(), n);
    td_colours_npz(path, n, 3); /* a failure shows as the upload's */
    return path;
}

static char *upload(const ts_server *s, char *id, size_t len)
{
    size_t n;
    char *b = slurp(tensor_dataset(30), &n);
    int st;
    json_t *j = ts_call(s, "POST", "/v1/datasets?format=npz", AUTH "Content-Type: application/octet-stream\r\n",
                        b, n, &st);
    free(b);
    snprintf(id, len, "%s", st == 201 && ts_str(j, "id") ? ts_str(j, "id") : "");
    json_decref(j);
    return *id ? id : NULL;
}

static char *new_job(const ts_server *s, const char *ds, const char *hp, char *id, size_t len)
{
    char body[512];
    int st;
    snprintf(body, sizeof body, "{\"dataset\": \"%s\", \"base_model\": \"tiny\", \"hyperparameters\": %s}", ds, hp);
    json_t *j = call(s, "POST", "/v1/jobs", body, &st);
    snprintf(id, len, "%s", st == 201 && ts_str(j, "id") ? ts_str(j, "id") : "");
    json_decref(j);
    return *id ? id : NULL;
}

/* The tests after page() run servers without a token (the Authorization header they send
 * is ignored there): tserve.h's helpers need none. */
static json_t *wait_job(const ts_server *s, const char *id, const char *want)
{
    return ts_wait_job(s, id, want, 120);
}

/* Every event of a job, as the JSON pages give them. */
static json_t *all_events(const ts_server *s, const char *id)
{
    char path[160];
    int st;
    snprintf(path, sizeof path, "/v1/jobs/%s/events?limit=1000", id);
    json_t *j = call(s, "GET", path, NULL, &st), *ev = json_incref(json_object_get(j, "events"));
    json_decref(j);
    return ev;
}

static long metric(const ts_server *s, const char *name)
{
    th_resp r;
    long v = -1;
    if (th_request(s->port, "GET", "/metrics", AUTH, NULL, 0, &r)) return -1;
    char *p = strstr(r.body, name);
    while (p && (p[-1] != '\n' || p[strlen(name)] != ' ')) p = strstr(p + 1, name);
    if (p) v = atol(p + strlen(name));
    th_free(&r);
    return v;
}

static int wait_metric(const ts_server *s, const char *name, long want, double seconds)
{
    for (int i = 0; i < seconds * 20; i++, usleep(50000))
        if (metric(s, name) == want) return 1;
    return 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---- an SSE client: many at once, read until the server ends each stream ---- */

typedef struct sse {
    int fd, status, closed;
    char *raw;
    size_t len, cap;
} sse;

static int sse_open(sse *c, int port, const char *path, const char *extra)
{
    memset(c, 0, sizeof *c);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&a, sizeof a)) return -1;
    char head[1024];
    int n = snprintf(head, sizeof head, "GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n" AUTH "%s\r\n",
                     path, extra ? extra : "");
    return th_send_all(c->fd, head, (size_t)n);
}

/* Reads every open client until all have been closed by the server, or seconds pass. */
static int sse_drain(sse *c, int n, double seconds)
{
    struct pollfd *p = calloc((size_t)n, sizeof *p);
    int open = 0;
    for (int i = 0; i < n; i++) open += !c[i].closed;
    for (int waited = 0; open && waited < seconds * 1000;) {
        int k = 0;
        for (int i = 0; i < n; i++) p[i] = (struct pollfd){c[i].closed ? -1 : c[i].fd, POLLIN, 0};
        k = poll(p, (nfds_t)n, 100);
        waited += k ? 0 : 100;
        for (int i = 0; i < n && k > 0; i++) {
            if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            if (c[i].cap - c[i].len < 65536) c[i].raw = realloc(c[i].raw, (c[i].cap = c[i].cap * 2 + 65536) + 1);
            ssize_t got = recv(c[i].fd, c[i].raw + c[i].len, c[i].cap - c[i].len, 0);
            if (got > 0) c[i].len += (size_t)got;
            else c[i].closed = 1, open--;
            c[i].raw[c[i].len] = 0;
        }
    }
    free(p);
    return open == 0;
}

static void sse_close(sse *c)
{
    if (c->fd >= 0) close(c->fd);
    free(c->raw);
    memset(c, 0, sizeof *c);
    c->fd = -1;
}

/* The body of a chunked response (in place); NULL when the framing is wrong. */
static char *dechunk(sse *c, int *status)
{
    char *body = strstr(c->raw ? c->raw : "", "\r\n\r\n"), *in, *out;
    if (!body || sscanf(c->raw, "HTTP/1.1 %d", status) != 1) return NULL;
    body += 4;
    if (!strstr(c->raw, "Transfer-Encoding: chunked")) return body;
    for (in = out = body;;) {
        char *end;
        unsigned long n = strtoul(in, &end, 16);
        if (end == in || strncmp(end, "\r\n", 2)) return NULL;
        if (n == 0) break;
        memmove(out, end + 2, n);
        out += n, in = end + 2 + n + 2;
    }
    *out = 0;
    return body;
}

/* Checks a stream against the job's JSON events with seq > after: ids, types, data, then the
 * end with status. Returns the number of differences (the first one printed). */
static int stream_matches(sse *c, const json_t *events, int64_t after, const char *status)
{
    int st = 0, bad = 0;
    char *b = dechunk(c, &st), want[8192];
    if (!b || st != 200) return fprintf(stderr, "  stream: HTTP %d, %s framing\n", st, b ? "good" : "bad"), 1;
    size_t i;
    json_t *ev;
    json_array_foreach(events, i, ev) {
        int64_t seq = json_integer_value(json_object_get(ev, "seq"));
        if (seq <= after) continue;
        char *data = json_dumps(ev, JSON_COMPACT | JSON_SORT_KEYS);
        long id = -1;
        char type[64] = "", line[8192] = "";
        int k = sscanf(b, "id: %ld\nevent: %63[^\n]\ndata: %8191[^\n]\n\n", &id, type, line);
        json_t *got = k == 3 ? json_loads(line, 0, NULL) : NULL;
        char *gd = got ? json_dumps(got, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
        if (k != 3 || id != seq || strcmp(type, ts_str(ev, "type")) || !gd || strcmp(gd, data)) {
            if (!bad++) fprintf(stderr, "  stream: event %lld: got '%.200s'\n  want %s\n", (long long)seq, b, data);
        }
        free(data), free(gd);
        json_decref(got);
        char *next = strstr(b, "\n\n");
        if (!next) break;
        b = next + 2;
    }
    snprintf(want, sizeof want, "event: end\ndata: {\"status\":\"%s\"}\n\n", status);
    if (strcmp(b, want) && !bad++) fprintf(stderr, "  stream: ends with '%.200s', want '%s'\n", b, want);
    return bad;
}

/* ---- the page ---- */

static int get(const ts_server *s, const char *method, const char *path, const char *hdr, th_resp *r)
{
    return th_request(s->port, method, path, hdr, NULL, 0, r);
}

static void page(void)
{
    ts_server s;
    T_REQUIRE(server_start(&s, "page", NULL, 1) == 0);
    th_resp r;
    size_t n;
    char *html = slurp(BIT_SRCDIR "/api/web/index.html", &n), etag[64];
    T_REQUIRE(html);
    /* no token needed for the page; the API behind it still wants one. A browser names
     * text/html in Accept (Chromium: text/html,application/xhtml+xml,...;q=0.9,...) */
    T_REQUIRE(get(&s, "GET", "/", BROWSER, &r) == 0);
    T_EQ(r.status, 200);
    T_STREQ(header(&r, "Vary") ?: "", "Accept");
    T_CHECK(r.body_len == n && !memcmp(r.body, html, n));
    T_STREQ(header(&r, "Content-Type") ?: "", "text/html; charset=utf-8");
    T_STREQ(header(&r, "Content-Security-Policy") ?: "",
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'");
    T_STREQ(header(&r, "X-Content-Type-Options") ?: "", "nosniff");
    T_STREQ(header(&r, "Referrer-Policy") ?: "", "no-referrer");
    T_STREQ(header(&r, "Cache-Control") ?: "", "no-cache");
    snprintf(etag, sizeof etag, "%s", header(&r, "ETag") ?: "");
    T_CHECK(strlen(etag) == 18 && etag[0] == '"' && etag[17] == '"');
    th_free(&r);
    free(html);
    /* revalidation: 304 for the current tag (strong, weak, in a list, or *), 200 otherwise */
    char h[256];
    const char *forms[] = {"%s", "W/%s", "\"0000000000000000\", %s", "*"};
    for (int i = 0; i < 4; i++) {
        char v[128];
        snprintf(v, sizeof v, forms[i], etag);
        snprintf(h, sizeof h, BROWSER "If-None-Match: %s\r\n", v);
        T_REQUIRE(get(&s, "GET", "/", h, &r) == 0);
        T_CHECKF(r.status == 304 && r.body_len == 0 && !strcmp(header(&r, "ETag") ?: "", etag),
                 "If-None-Match: %s -> %d", v, r.status);
        th_free(&r);
    }
    T_REQUIRE(get(&s, "GET", "/", BROWSER "If-None-Match: \"0000000000000000\"\r\n", &r) == 0);
    T_EQ(r.status, 200);
    th_free(&r);
    T_REQUIRE(get(&s, "HEAD", "/", BROWSER, &r) == 0);
    T_CHECK(r.status == 200 && r.body_len == 0 && atol(header(&r, "Content-Length") ?: "0") == (long)n);
    th_free(&r);
    /* the modules and Chart.js, as their files */
    char *js = slurp(BIT_SRCDIR "/api/web/app.js", &n);
    T_REQUIRE(get(&s, "GET", "/ui/app.js", NULL, &r) == 0);
    T_CHECK(r.status == 200 && r.body_len == n && !memcmp(r.body, js, n));
    T_STREQ(header(&r, "Content-Type") ?: "", "text/javascript; charset=utf-8");
    T_CHECK(header(&r, "Content-Security-Policy") != NULL);
    th_free(&r);
    free(js);
    T_REQUIRE(get(&s, "GET", "/ui/chart.js", NULL, &r) == 0);
    T_CHECK(r.status == 200 && r.body_len > 100000);
    th_free(&r);
    /* anything else under /ui: a JSON 404 */
    T_REQUIRE(get(&s, "GET", "/ui/nope.js", NULL, &r) == 0);
    T_CHECK(r.status == 404 && strstr(r.body, "\"not_found\"") &&
            !strcmp(header(&r, "Content-Type") ?: "", "application/json"));
    th_free(&r);
    T_REQUIRE(get(&s, "GET", "/ui/a/b.js", AUTH, &r) == 0);
    T_CHECK(r.status == 404 && strstr(r.body, "\"not_found\""));
    th_free(&r);
    /* anyone else at / (curl sends Accept: * / *; API clients application/json or nothing)
     * is pointed to the API, still without a token */
    const char *others[] = {NULL, "Accept: */*\r\n", "Accept: application/json\r\n",
                            "Accept: text/htmlx, text/plain\r\n"};
    for (int i = 0; i < 4; i++) {
        T_REQUIRE(get(&s, "GET", "/", others[i], &r) == 0);
        T_CHECKF(r.status == 404 && strstr(r.body, "GET /v1 lists the routes") &&
                 !strcmp(header(&r, "Content-Type") ?: "", "application/json") &&
                 !strcmp(header(&r, "Vary") ?: "", "Accept"),
                 "%s -> %d %.200s", others[i] ? others[i] : "no Accept", r.status, r.body);
        th_free(&r);
    }
    /* media types compare without case, with parameters, anywhere in the list */
    T_REQUIRE(get(&s, "GET", "/", "Accept: application/json;q=0.5,TEXT/HTML;q=0.9\r\n", &r) == 0);
    T_CHECK(r.status == 200 && strstr(r.body, "<html"));
    th_free(&r);
    /* the API: the token as before, and nosniff on its answers too */
    T_REQUIRE(get(&s, "GET", "/v1/jobs", NULL, &r) == 0);
    T_CHECK(r.status == 401 && !strcmp(header(&r, "X-Content-Type-Options") ?: "", "nosniff"));
    th_free(&r);
    T_REQUIRE(get(&s, "GET", "/v1/jobs", AUTH, &r) == 0);
    T_CHECK(r.status == 200 && !strcmp(header(&r, "X-Content-Type-Options") ?: "", "nosniff"));
    th_free(&r);
    T_EQ(WEXITSTATUS(ts_stop(&s, SIGTERM)), 0);
    /* --ui off: no page at all */
    const char *off[] = {"--ui", "off", NULL};
    T_REQUIRE(server_start(&s, "page-off", off, 1) == 0);
    T_REQUIRE(get(&s, "GET", "/", BROWSER, &r) == 0);
    T_EQ(r.status, 401); /* without the page, / is an API route like any other */
    th_free(&r);
    T_REQUIRE(get(&s, "GET", "/", AUTH BROWSER, &r) == 0);
    T_CHECK(r.status == 404 && strstr(r.body, "\"not_found\"") && strstr(r.body, "--ui off") &&
            strstr(r.body, "GET /v1 lists the routes"));
    th_free(&r);
    T_REQUIRE(get(&s, "GET", "/ui/app.js", AUTH, &r) == 0);
    T_EQ(r.status, 404);
    th_free(&r);
    T_EQ(WEXITSTATUS(ts_stop(&s, SIGTERM)), 0);
    const char *bad[] = {getenv("BIT_BIN"), "serve", "--ui", "maybe", NULL};
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open("/dev/null", O_WRONLY);
        dup2(fd, 2);
        execv(bad[0], (char *const *)bad);
        _exit(127);
    }
    int ws = 0;
    waitpid(pid, &ws, 0);
    T_EQ(WEXITSTATUS(ws), 2);
}

/* ---- dry runs, metrics and events of one short job ---- */

static void dry_run(const ts_server *s, const char *ds)
{
    char body[512];
    int st;
    snprintf(body, sizeof body, "{\"dataset\": \"%s\", \"base_model\": \"tiny\", \"hyperparameters\": {\"steps\": 24, \"batch\": 6}}", ds);
    json_t *j = call(s, "POST", "/v1/jobs?dry_run=true", body, &st);
    T_EQ(st, 200);
    T_CHECK(json_is_true(json_object_get(j, "dry_run")));
    json_t *hp = json_object_get(j, "hyperparameters");
    T_CHECK(json_integer_value(json_object_get(hp, "steps")) == 24 &&
            json_integer_value(json_object_get(hp, "batch")) == 6 && json_object_get(hp, "base_lr"));
    json_t *l = call(s, "GET", "/v1/jobs", NULL, &st);
    T_EQ(json_array_size(json_object_get(l, "jobs")), 0); /* nothing created */
    json_decref(l);
    /* the same body without the dry run creates a job that resolved the same values */
    json_t *made = call(s, "POST", "/v1/jobs?dry_run=false", body, &st);
    T_EQ(st, 201);
    T_CHECK(json_equal(json_object_get(made, "hyperparameters"), hp));
    char path[128];
    snprintf(path, sizeof path, "/v1/jobs/%s/cancel", ts_str(made, "id") ?: "x");
    json_decref(call(s, "POST", path, NULL, &st));
    json_decref(made);
    json_decref(j);
    /* refusals as for creation */
    snprintf(body, sizeof body, "{\"dataset\": \"%s\", \"base_model\": \"tiny\", \"hyperparameters\": {\"batch\": -1}}", ds);
    j = call(s, "POST", "/v1/jobs?dry_run=true", body, &st);
    T_CHECK(st == 400 && !strcmp(ts_err_code(j), "invalid_parameter"));
    json_decref(j);
    snprintf(body, sizeof body, "{\"dataset\": \"%s\", \"base_model\": \"none\"}", ds);
    j = call(s, "POST", "/v1/jobs?dry_run=true", body, &st);
    T_CHECK(st == 422 && !strcmp(ts_err_code(j), "invalid_base_model"));
    json_decref(j);
    j = call(s, "POST", "/v1/jobs?dry_run=yes", "{}", &st);
    T_CHECK(st == 400 && !strcmp(ts_err_code(j), "invalid_parameter"));
    json_decref(j);
    j = call(s, "POST", "/v1/jobs?dryrun=true", "{}", &st); /* api_route's list names it */
    T_CHECK(st == 400 && !strcmp(ts_err_code(j), "invalid_parameter") &&
            strstr(json_string_value(json_object_get(json_object_get(j, "error"), "message")) ?: "",
                   "did you mean dry_run?"));
    json_decref(j);
    /* upload and dry run: resolved against the upload, which is not kept */
    size_t n, len;
    char *npz = slurp(tensor_dataset(30), &n), ctype[256];
    const char *params = "{\"base_model\": \"tiny\", \"hyperparameters\": {\"steps\": 12}}";
    th_part parts[] = {{"dataset", "x.npz", npz, n}, {"params", NULL, params, strlen(params)}};
    char *mp = th_multipart(parts, 2, &len, ctype, sizeof ctype), hdr[512];
    snprintf(hdr, sizeof hdr, AUTH "%s", ctype);
    j = ts_call(s, "POST", "/v1/jobs?dry_run=true", hdr, mp, len, &st);
    T_CHECK(st == 200 && json_integer_value(json_object_get(json_object_get(j, "hyperparameters"), "steps")) == 12);
    json_decref(j);
    free(mp), free(npz);
    l = call(s, "GET", "/v1/datasets", NULL, &st);
    T_EQ(json_array_size(json_object_get(l, "datasets")), 1); /* only the one uploaded first */
    json_decref(l);
}

static void one_job(void)
{
    ts_server s;
    T_REQUIRE(server_start(&s, "job", NULL, 0) == 0);
    char ds[64], id[64], path[256];
    int st;
    T_REQUIRE(upload(&s, ds, sizeof ds));
    dry_run(&s, ds);
    T_REQUIRE(new_job(&s, ds, "{\"steps\": 30, \"batch\": 6, \"eval_every\": 10}", id, sizeof id));
    /* a follower from the start: the live events, then the end */
    sse live, resumed;
    snprintf(path, sizeof path, "/v1/jobs/%s/events?follow=true", id);
    T_REQUIRE(sse_open(&live, s.port, path, NULL) == 0);
    snprintf(path, sizeof path, "/v1/jobs/%s/metrics", id);
    json_t *m = call(&s, "GET", path, NULL, &st);
    T_CHECK(st == 404 && !strcmp(ts_err_code(m), "no_metrics")); /* not finished yet */
    json_decref(m);
    json_t *j = wait_job(&s, id, "succeeded");
    T_REQUIRE(j);
    T_STREQ(ts_str(j, "status"), "succeeded");
    json_decref(j);
    T_REQUIRE(sse_drain(&live, 1, 30));
    json_t *events = all_events(&s, id);
    T_CHECK(json_array_size(events) > 10);
    T_EQ(stream_matches(&live, events, 0, "succeeded"), 0);
    T_CHECK(strstr(live.raw, "Content-Type: text/event-stream") && strstr(live.raw, "Cache-Control: no-cache"));
    sse_close(&live);
    /* a finished job: its backlog and the end at once; Last-Event-ID resumes (over after) */
    snprintf(path, sizeof path, "/v1/jobs/%s/events?after=1", id);
    T_REQUIRE(sse_open(&resumed, s.port, path, "Accept: text/event-stream\r\nLast-Event-ID: 7\r\n") == 0);
    T_REQUIRE(sse_drain(&resumed, 1, 5));
    T_EQ(stream_matches(&resumed, events, 7, "succeeded"), 0);
    sse_close(&resumed);
    snprintf(path, sizeof path, "/v1/jobs/%s/events?follow=true&after=100000", id);
    T_REQUIRE(sse_open(&resumed, s.port, path, NULL) == 0);
    T_REQUIRE(sse_drain(&resumed, 1, 5));
    T_EQ(stream_matches(&resumed, events, 100000, "succeeded"), 0);
    sse_close(&resumed);
    /* follow=false is the JSON page; mistakes are 400/404 in JSON, never a stream */
    snprintf(path, sizeof path, "/v1/jobs/%s/events?follow=false&limit=2", id);
    j = call(&s, "GET", path, NULL, &st);
    T_CHECK(st == 200 && json_array_size(json_object_get(j, "events")) == 2);
    json_decref(j);
    const char *bad[][2] = {{"follow=maybe", "invalid_parameter"}, {"follow=true&limit=5", "invalid_parameter"},
                            {"follow=true&after=-1", "invalid_parameter"}, {"follow=true&since=1", "invalid_parameter"}};
    for (int i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "/v1/jobs/%s/events?%s", id, bad[i][0]);
        j = call(&s, "GET", path, NULL, &st);
        T_CHECKF(st == 400 && !strcmp(ts_err_code(j), bad[i][1]), "%s -> %d", bad[i][0], st);
        json_decref(j);
    }
    snprintf(path, sizeof path, "/v1/jobs/%s/events?follow=true", id);
    th_resp r;
    T_REQUIRE(th_request(s.port, "GET", path, AUTH "Last-Event-ID: x\r\n", NULL, 0, &r) == 0);
    T_EQ(r.status, 400);
    th_free(&r);
    j = call(&s, "GET", "/v1/jobs/job_0123456789abcdef/events?follow=true", NULL, &st);
    T_CHECK(st == 404 && !strcmp(ts_err_code(j), "not_found"));
    json_decref(j);
    T_REQUIRE(th_request(s.port, "HEAD", path, AUTH, NULL, 0, &r) == 0);
    T_CHECK(r.status == 200 && r.body_len == 0 && strstr(r.headers, "text/event-stream"));
    th_free(&r);
    /* the final evaluation, as the run wrote it */
    snprintf(path, sizeof path, "/v1/jobs/%s/metrics", id);
    m = call(&s, "GET", path, NULL, &st);
    char file[1200];
    snprintf(file, sizeof file, "%s/var/jobs/%s/metrics.json", s.dir, id);
    json_t *want = json_load_file(file, 0, NULL);
    T_CHECK(st == 200 && want && json_equal(m, want));
    T_CHECK(json_array_size(json_object_get(json_object_get(m, "val"), "per_class")) == 3);
    json_decref(m), json_decref(want);
    m = call(&s, "GET", "/v1/jobs/job_0123456789abcdef/metrics", NULL, &st);
    T_CHECK(st == 404 && !strcmp(ts_err_code(m), "not_found"));
    json_decref(m);
    json_decref(events);
    T_EQ(WEXITSTATUS(ts_stop(&s, SIGTERM)), 0);
}

/* ---- many followers ---- */

#define FOLLOWERS 100

static int all_match(sse *c, int n, const json_t *events, int odd_after, const char *status)
{
    int wrong = 0;
    for (int i = 0; i < n; i++) wrong += stream_matches(&c[i], events, i % 2 ? odd_after : 0, status) != 0;
    return wrong;
}

/* A hundred followers of a queued job (held while nothing happens: the API still answers, so
 * no thread is pinned; their memory is measured), one too many refused, then the job
 * cancelled: every stream gets the event and the end. Then a hundred of a running job, half
 * resuming with Last-Event-ID, while its events come; then hang-ups and a shutdown. */
static void many_followers(void)
{
    ts_server s;
    const char *extra[] = {"--max-streams", "100", "--max-per-ip", "300", NULL};
    T_REQUIRE(server_start(&s, "many", extra, 0) == 0);
    char ds[64], a[64], b[64], path[256];
    int st;
    T_REQUIRE(upload(&s, ds, sizeof ds));
    T_REQUIRE(new_job(&s, ds, "{\"steps\": 100000, \"batch\": 6}", a, sizeof a));
    json_t *j = wait_job(&s, a, "running");
    T_REQUIRE(j && !strcmp(ts_str(j, "status"), "running"));
    json_decref(j);
    T_REQUIRE(new_job(&s, ds, "{\"steps\": 10}", b, sizeof b)); /* waits behind a */
    static sse c[FOLLOWERS + 1];
    /* the job's own memory first settles (it trains while the followers are measured) */
    for (int i = 0; i < 600; i++, usleep(50000)) {
        json_t *p = wait_job(&s, a, "running");
        long step = (long)json_integer_value(json_object_get(json_object_get(p, "progress"), "step"));
        json_decref(p);
        if (step >= 30) break;
    }
    long rss0 = ts_status_kb(s.pid, "VmRSS:");
    sleep(1);
    long drift = ts_status_kb(s.pid, "VmRSS:") - rss0;
    rss0 += drift;
    snprintf(path, sizeof path, "/v1/jobs/%s/events?follow=true", b);
    for (int i = 0; i < FOLLOWERS; i++) T_REQUIRE(sse_open(&c[i], s.port, path, NULL) == 0);
    T_REQUIRE(wait_metric(&s, "bit_event_followers", FOLLOWERS, 10));
    usleep(300000); /* their first event written */
    long rss1 = ts_status_kb(s.pid, "VmRSS:");
    printf("     (%d followers held: %+ld KiB RSS in all, %.1f KiB each; %+ld KiB in a second before)\n",
           FOLLOWERS, rss1 - rss0, (double)(rss1 - rss0) / FOLLOWERS, drift);
    T_REQUIRE(sse_open(&c[FOLLOWERS], s.port, path, NULL) == 0);
    T_REQUIRE(sse_drain(&c[FOLLOWERS], 1, 5));
    T_CHECK(strstr(c[FOLLOWERS].raw, "HTTP/1.1 503") && strstr(c[FOLLOWERS].raw, "too_many_followers") &&
            strstr(c[FOLLOWERS].raw, "Retry-After: "));
    sse_close(&c[FOLLOWERS]);
    for (int i = 0; i < 10; i++) { /* four HTTP threads, a hundred streams: none is held */
        json_t *l = call(&s, "GET", "/v1/jobs", NULL, &st);
        T_EQ(st, 200);
        json_decref(l);
    }
    snprintf(path, sizeof path, "/v1/jobs/%s/cancel", b);
    json_decref(call(&s, "POST", path, NULL, &st));
    T_EQ(st, 200);
    T_CHECK(sse_drain(c, FOLLOWERS, 20));
    json_t *events = all_events(&s, b);
    T_EQ(all_match(c, FOLLOWERS, events, 0, "cancelled"), 0);
    json_decref(events);
    for (int i = 0; i < FOLLOWERS; i++) sse_close(&c[i]);
    T_CHECK(wait_metric(&s, "bit_event_followers", 0, 5));
    /* a running job: from the start, or resuming after event 2 */
    for (int i = 0; i < FOLLOWERS; i++) {
        snprintf(path, sizeof path, "/v1/jobs/%s/events?follow=true", a);
        T_REQUIRE(sse_open(&c[i], s.port, path, i % 2 ? "Last-Event-ID: 2\r\n" : NULL) == 0);
    }
    T_REQUIRE(wait_metric(&s, "bit_event_followers", FOLLOWERS, 10));
    sleep(1); /* some of its events come while they listen */
    snprintf(path, sizeof path, "/v1/jobs/%s/cancel", a);
    json_decref(call(&s, "POST", path, NULL, &st));
    T_CHECK(sse_drain(c, FOLLOWERS, 30));
    events = all_events(&s, a);
    T_EQ(all_match(c, FOLLOWERS, events, 2, "cancelled"), 0);
    json_decref(events);
    for (int i = 0; i < FOLLOWERS; i++) sse_close(&c[i]);
    /* hang-ups free their slot; a shutdown ends live streams and exits cleanly */
    char q[64];
    T_REQUIRE(new_job(&s, ds, "{\"steps\": 100000, \"batch\": 6}", q, sizeof q));
    snprintf(path, sizeof path, "/v1/jobs/%s/events?follow=true", q);
    for (int i = 0; i < 3; i++) T_REQUIRE(sse_open(&c[i], s.port, path, NULL) == 0);
    T_REQUIRE(wait_metric(&s, "bit_event_followers", 3, 5));
    sse_close(&c[0]), sse_close(&c[1]);
    T_CHECK(wait_metric(&s, "bit_event_followers", 1, 5));
    double t0 = now_s();
    int ws = ts_stop(&s, SIGTERM);
    T_CHECKF(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "exit status %d", ws);
    T_CHECKF(now_s() - t0 < 15, "%.1f s to stop", now_s() - t0);
    T_CHECK(sse_drain(&c[2], 1, 5)); /* the stream ended with the server */
    sse_close(&c[2]);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    T_RUN(page);
    T_RUN(one_job);
    T_RUN(many_followers);
    return t_done();
}
