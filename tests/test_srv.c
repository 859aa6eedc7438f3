/* HTTP server core over real sockets on 127.0.0.1: routing, auth, bodies, limits, multipart,
 * aborts, concurrency, downloads, logs, metrics and a graceful stop. The client is raw TCP so
 * that requests can be malformed, truncated or oversized at will. */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common.h"
#include "server/srv.h"
#include "t.h"

static char err[512];

/* ---- a tiny HTTP client ---- */

typedef struct {
    int status;
    char *head; /* status line and headers, NUL-terminated */
    char *body;
    size_t len;
} resp;

static void resp_free(resp *r)
{
    free(r->head);
    free(r->body);
    memset(r, 0, sizeof *r);
}

static int tc_connect_to(int family, const char *host, int port)
{
    int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_storage ss = {0};
    socklen_t sl;
    if (family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)port);
        inet_pton(AF_INET, host, &a->sin_addr);
        sl = sizeof *a;
    } else {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
        inet_pton(AF_INET6, host, &a->sin6_addr);
        sl = sizeof *a;
    }
    if (connect(fd, (struct sockaddr *)&ss, sl) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int tc_connect(int port) { return tc_connect_to(AF_INET, "127.0.0.1", port); }

static int tc_send(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

static int tc_sendf(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int tc_sendf(int fd, const char *fmt, ...)
{
    char buf[8192];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return n < 0 || (size_t)n >= sizeof buf ? -1 : tc_send(fd, buf, (size_t)n);
}

static const char *find_header(const char *head, const char *name, char *val, size_t vlen)
{
    size_t n = strlen(name);
    for (const char *p = strstr(head, "\r\n"); p && p[2]; p = strstr(p + 2, "\r\n")) {
        if (strncasecmp(p + 2, name, n) || p[2 + n] != ':') continue;
        const char *v = p + 3 + n;
        while (*v == ' ') v++;
        size_t l = strcspn(v, "\r");
        snprintf(val, vlen, "%.*s", (int)(l < vlen ? l : vlen - 1), v);
        return val;
    }
    return NULL;
}

static const char *hdr(const resp *r, const char *name)
{
    static _Thread_local char val[512];
    return r->head ? find_header(r->head, name, val, sizeof val) : NULL;
}

/* Reads one response: headers, then Content-Length bytes (or up to EOF). */
static int tc_read(int fd, resp *r)
{
    size_t cap = 65536, got = 0;
    char *buf = malloc(cap), *end = NULL;
    memset(r, 0, sizeof *r);
    while (buf && !(end = got >= 4 ? memmem(buf, got, "\r\n\r\n", 4) : NULL)) {
        if (got == cap) break;
        ssize_t n = recv(fd, buf + got, cap - got, 0);
        if (n <= 0) break;
        got += (size_t)n;
    }
    if (!end) return free(buf), -1;
    size_t hl = (size_t)(end - buf) + 4;
    r->head = strndup(buf, hl);
    sscanf(buf, "HTTP/1.%*d %d", &r->status);
    char v[64];
    long long want = find_header(r->head, "Content-Length", v, sizeof v) ? atoll(v) : -1;
    size_t bcap = want >= 0 ? (size_t)want + 1 : 65536, blen = got - hl;
    r->body = malloc(bcap > blen ? bcap : blen + 1);
    memcpy(r->body, buf + hl, blen);
    free(buf);
    while (want < 0 || blen < (size_t)want) {
        if (blen + 1 >= bcap) r->body = realloc(r->body, bcap *= 2);
        ssize_t n = recv(fd, r->body + blen, bcap - blen - 1, 0);
        if (n <= 0) break;
        blen += (size_t)n;
    }
    r->body[blen] = 0;
    r->len = blen;
    return want < 0 || blen == (size_t)want ? 0 : -1;
}

/* One request on a fresh connection. */
static int http(int port, const char *raw, size_t n, resp *r)
{
    memset(r, 0, sizeof *r);
    int fd = tc_connect(port);
    if (fd < 0) return -1;
    int rc = tc_send(fd, raw, n) == 0 ? tc_read(fd, r) : -1;
    close(fd);
    return rc;
}

static int get(int port, const char *target, const char *extra, resp *r)
{
    char raw[16384];
    snprintf(raw, sizeof raw, "GET %s HTTP/1.1\r\nHost: t\r\n%sConnection: close\r\n\r\n",
             target, extra ? extra : "");
    return http(port, raw, strlen(raw), r);
}

static json_t *body_json(const resp *r)
{
    return r->body ? json_loadb(r->body, r->len, 0, NULL) : NULL;
}

static int is_error(const resp *r, const char *code)
{
    json_t *j = body_json(r);
    json_t *e = json_object_get(j, "error");
    int ok = json_is_string(json_object_get(e, "message")) &&
             !strcmp(json_string_value(json_object_get(e, "code")) ?: "", code) &&
             hdr(r, "Content-Type") && !strcmp(hdr(r, "Content-Type"), "application/json");
    json_decref(j);
    return ok;
}

static const char *jstr(json_t *j, const char *k)
{
    return json_string_value(json_object_get(j, k));
}

/* ---- helpers shared with handlers ---- */

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++) h = (h ^ c[i]) * 1099511628211ULL;
    return h;
}
#define FNV0 14695981039346656037ULL

static uint64_t fnv_fd(int fd, uint64_t *size)
{
    static _Thread_local char buf[1 << 16];
    uint64_t h = FNV0, off = 0;
    ssize_t n;
    while ((n = pread(fd, buf, sizeof buf, (off_t)off)) > 0) h = fnv(h, buf, (size_t)n), off += (uint64_t)n;
    *size = off;
    return h;
}

static int count_files(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));) n += e->d_name[0] != '.';
    if (d) closedir(d);
    return n;
}

/* Completion runs just after the last byte goes out, so give cleanup a moment. */
static int wait_no_files(const char *dir)
{
    for (int i = 0; i < 300 && count_files(dir); i++) usleep(10000);
    return count_files(dir) == 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void fill(char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++) p[i] = (char)((i * 31 + seed + (i >> 9)) % 251);
}

/* ---- handlers ---- */

typedef struct {
    char files_dir[600];
    char last_tmp[600];
    atomic_int slow_entered;
    int slow_ms;
} tctx;

static int h_job(srv_req *req, void *ud)
{
    return srv_json(req, 200, json_pack("{s:s,s:s}", "id", srv_param(req, "id"), "route",
                                        srv_route_pattern(req)));
}

static int h_stats(srv_req *req, void *ud) { return srv_json(req, 200, json_pack("{s:s}", "route", "stats")); }

static int h_health(srv_req *req, void *ud) { return srv_json(req, 200, json_pack("{s:b}", "ok", 1)); }

static int h_echo(srv_req *req, void *ud)
{
    json_t *j = json_object();
    const char *keys[] = {"limit", "name", "empty"};
    for (int i = 0; i < 3; i++)
        json_object_set_new(j, keys[i], srv_query(req, keys[i]) ? json_string(srv_query(req, keys[i]))
                                                               : json_null());
    const char *x = srv_header(req, "x-test");
    json_object_set_new(j, "x", x ? json_string(x) : json_null());
    json_object_set_new(j, "method", json_string(srv_method(req)));
    return srv_json(req, 200, j);
}

static int h_body(srv_req *req, void *ud)
{
    tctx *c = ud;
    uint64_t h = FNV0, size = 0;
    const char *kind = "none";
    size_t len;
    const char *b = srv_body(req, &len);
    if (b) {
        kind = "memory";
        h = fnv(h, b, len);
        size = len;
        if (b[len] != 0) return srv_error(req, 500, "test", "memory body not NUL-terminated");
    } else if (srv_body_fd(req) >= 0) {
        kind = "file";
        h = fnv_fd(srv_body_fd(req), &size);
        snprintf(c->last_tmp, sizeof c->last_tmp, "%s", srv_body_path(req));
        if (access(srv_body_path(req), F_OK) != 0) return srv_error(req, 500, "test", "no temp");
    }
    char hex[17];
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)h);
    return srv_json(req, 200, json_pack("{s:s,s:I,s:s,s:I}", "kind", kind, "size", (json_int_t)size,
                                        "hash", hex, "declared", (json_int_t)srv_body_size(req)));
}

static json_t *part_json(const srv_part *p)
{
    uint64_t h = FNV0, size = p->size;
    if (p->data) h = fnv(h, p->data, p->size);
    else if (p->fd >= 0) h = fnv_fd(p->fd, &size);
    char hex[17];
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)h);
    return json_pack("{s:s,s:s?,s:s?,s:I,s:s,s:b,s:I}", "name", p->name, "filename", p->filename,
                     "type", p->content_type, "size", (json_int_t)p->size, "hash", hex, "file",
                     p->path != NULL, "disk_size", (json_int_t)size);
}

static int h_form(srv_req *req, void *ud)
{
    size_t n;
    const srv_part *parts = srv_parts(req, &n);
    if (srv_body_kind(req) != SRV_MULTIPART) return srv_error(req, 400, "test", "not multipart");
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) json_array_append_new(arr, part_json(&parts[i]));
    const srv_part *pp = srv_part_get(req, "params");
    json_t *params = pp && pp->data ? json_loads(pp->data, 0, NULL) : NULL;
    return srv_json(req, 200, json_pack("{s:o,s:o}", "parts", arr, "params",
                                        params ? params : json_null()));
}

static int h_file(srv_req *req, void *ud)
{
    tctx *c = ud;
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", c->files_dir, srv_param(req, "name"));
    srv_set_header(req, "Content-Disposition", "attachment");
    return srv_file(req, 200, path, NULL);
}

static int h_slow(srv_req *req, void *ud)
{
    tctx *c = ud;
    atomic_store(&c->slow_entered, 1);
    usleep((useconds_t)c->slow_ms * 1000);
    return srv_json(req, 200, json_pack("{s:s}", "slow", "done"));
}

static int h_noresp(srv_req *req, void *ud) { return -1; }

static int h_busy(srv_req *req, void *ud)
{
    srv_set_header(req, "Retry-After", "5");
    return srv_error(req, 503, "busy", "try again in %d seconds", 5);
}

static int h_badjson(srv_req *req, void *ud) { return srv_json(req, 200, NULL); }

static int h_jsonbody(srv_req *req, void *ud)
{
    json_t *j;
    char e[200];
    if (srv_body_json(req, &j, e, sizeof e) < 0) return srv_error(req, 400, "bad_json", "%s", e);
    return srv_json(req, 201, json_pack("{s:o}", "got", j));
}

static int h_keep(srv_req *req, void *ud)
{
    tctx *c = ud;
    char dest[1200], e[200];
    snprintf(dest, sizeof dest, "%s/kept.bin", c->files_dir);
    if (srv_keep_file(req, "/etc/passwd", dest, e, sizeof e) != ENG_EINVAL)
        return srv_error(req, 500, "test", "moved a file that is not an upload");
    if (srv_keep_file(req, srv_body_path(req), dest, e, sizeof e) < 0)
        return srv_error(req, 500, "keep", "%s", e);
    return srv_json(req, 200, json_pack("{s:s}", "kept", dest));
}

static int h_metrics(srv_req *req, void *ud)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return srv_error(req, 500, "internal", "no memory");
    srv_metrics_text(ud, f);
    fclose(f);
    int rc = srv_text(req, 200, "text/plain; version=0.0.4", buf, len);
    free(buf);
    return rc;
}

/* ---- the shared server ---- */

static srv *S;
static int P;
static tctx C;
static char updir[600], logpath[600];
static FILE *logfp;

static int add_routes(srv *s, tctx *c)
{
    int rc = 0;
    rc |= srv_route(s, "GET", "/v1/jobs/{id}", h_job, c, 0);
    rc |= srv_route(s, "GET", "/v1/jobs/stats", h_stats, c, 0);
    rc |= srv_route(s, "POST", "/v1/jobs/{id}/cancel", h_job, c, 0);
    rc |= srv_route(s, "GET", "/healthz", h_health, c, SRV_PUBLIC);
    rc |= srv_route(s, "GET", "/things", h_echo, c, 0);
    rc |= srv_route(s, "POST", "/things", h_echo, c, SRV_BODY_MEMORY);
    rc |= srv_route(s, "GET", "/echo", h_echo, c, 0);
    rc |= srv_route(s, "POST", "/body", h_body, c, SRV_BODY_AUTO);
    rc |= srv_route(s, "POST", "/mem", h_body, c, SRV_BODY_MEMORY);
    rc |= srv_route(s, "POST", "/upload", h_body, c, SRV_BODY_FILE);
    rc |= srv_route(s, "POST", "/form", h_form, c, SRV_BODY_AUTO);
    rc |= srv_route(s, "GET", "/files/{name}", h_file, c, 0);
    rc |= srv_route(s, "GET", "/slow", h_slow, c, 0);
    rc |= srv_route(s, "GET", "/noresp", h_noresp, c, 0);
    rc |= srv_route(s, "GET", "/busy", h_busy, c, 0);
    rc |= srv_route(s, "GET", "/badjson", h_badjson, c, 0);
    rc |= srv_route(s, "POST", "/json", h_jsonbody, c, SRV_BODY_MEMORY);
    rc |= srv_route(s, "POST", "/keep", h_keep, c, SRV_BODY_FILE);
    rc |= srv_route(s, "GET", "/metrics", h_metrics, s, SRV_PUBLIC);
    return rc;
}

static srv *start_server(srv_config *cfg, tctx *c)
{
    srv *s = NULL;
    if (srv_new(cfg, &s, err, sizeof err) != 0) {
        fprintf(stderr, "  srv_new: %s\n", err);
        return NULL;
    }
    if (add_routes(s, c) != 0 || srv_start(s, err, sizeof err) != 0) {
        fprintf(stderr, "  start: %s\n", err);
        srv_free(s);
        return NULL;
    }
    return s;
}

static void base_config(srv_config *cfg)
{
    srv_config_init(cfg);
    cfg->port = 0;
    cfg->max_body = 64 << 20;
    cfg->temp_dir = updir;
    cfg->log = logfp;
}

/* ---- cases ---- */

static void routing(void)
{
    resp r;
    T_REQUIRE(get(P, "/v1/jobs/abc", NULL, &r) == 0);
    json_t *j = body_json(&r);
    T_CHECK(r.status == 200 && !strcmp(jstr(j, "id") ?: "", "abc"));
    T_CHECK(!strcmp(jstr(j, "route") ?: "", "/v1/jobs/{id}"));
    json_decref(j);
    resp_free(&r);
    /* Parameters are percent-decoded (UTF-8 passes through). */
    T_REQUIRE(get(P, "/v1/jobs/a%20b%C3%A9", NULL, &r) == 0);
    j = body_json(&r);
    T_CHECK(r.status == 200 && !strcmp(jstr(j, "id") ?: "", "a b\xc3\xa9"));
    json_decref(j);
    resp_free(&r);
    /* A literal segment beats a parameter. */
    T_REQUIRE(get(P, "/v1/jobs/stats", NULL, &r) == 0);
    T_CHECK(r.status == 200 && strstr(r.body, "\"stats\""));
    resp_free(&r);
    const char *post = "POST /v1/jobs/j7/cancel HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n"
                       "Connection: close\r\n\r\n";
    T_REQUIRE(http(P, post, strlen(post), &r) == 0);
    T_CHECK(r.status == 200 && strstr(r.body, "\"j7\""));
    resp_free(&r);
    /* Unsafe parameters: an encoded slash, dot-dot, a control character. */
    const char *bad[] = {"/v1/jobs/a%2Fb", "/v1/jobs/%2E%2E", "/v1/jobs/..", "/v1/jobs/a%0Ab",
                         "/v1/jobs/a%5Cb"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        T_REQUIRE(get(P, bad[i], NULL, &r) == 0);
        T_CHECKF(r.status == 400 && is_error(&r, "bad_param"), "%s -> %d", bad[i], r.status);
        resp_free(&r);
    }
    /* An empty segment never matches a parameter; a too-long one is refused. */
    T_REQUIRE(get(P, "/v1/jobs/", NULL, &r) == 0);
    T_CHECK(r.status == 404);
    resp_free(&r);
    char longp[400] = "/v1/jobs/";
    memset(longp + 9, 'x', 300);
    T_REQUIRE(get(P, longp, NULL, &r) == 0);
    T_CHECK(r.status == 400);
    resp_free(&r);
}

static void not_found_and_method(void)
{
    resp r;
    T_REQUIRE(get(P, "/nope", NULL, &r) == 0);
    T_CHECK(r.status == 404 && is_error(&r, "not_found"));
    resp_free(&r);
    const char *del = "DELETE /things HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    T_REQUIRE(http(P, del, strlen(del), &r) == 0);
    T_CHECK(r.status == 405 && is_error(&r, "method_not_allowed"));
    T_CHECK(hdr(&r, "Allow") && !strcmp(hdr(&r, "Allow"), "GET, POST"));
    resp_free(&r);
    del = "DELETE /v1/jobs/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    T_REQUIRE(http(P, del, strlen(del), &r) == 0);
    T_CHECK(r.status == 405 && hdr(&r, "Allow") && !strcmp(hdr(&r, "Allow"), "GET"));
    resp_free(&r);
    const char *put = "PUT /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    T_REQUIRE(http(P, put, strlen(put), &r) == 0);
    T_CHECK(r.status == 405 && !strcmp(hdr(&r, "Allow") ?: "", "GET"));
    resp_free(&r);
}

static void query_and_encoding(void)
{
    resp r;
    T_REQUIRE(get(P, "/echo?limit=10&name=a+b%2Bc%20d&empty=", "X-Test: hello\r\n", &r) == 0);
    json_t *j = body_json(&r);
    T_CHECK(r.status == 200);
    T_CHECK(!strcmp(jstr(j, "limit") ?: "", "10"));
    T_CHECK(!strcmp(jstr(j, "name") ?: "", "a b+c d"));
    T_CHECK(!strcmp(jstr(j, "empty") ?: "-", ""));
    T_CHECK(!strcmp(jstr(j, "x") ?: "", "hello"));
    json_decref(j);
    resp_free(&r);
    T_REQUIRE(get(P, "/echo?flag", NULL, &r) == 0);
    T_CHECK(r.status == 200 && strstr(r.body, "\"limit\":null"));
    resp_free(&r);
    /* A literal segment may itself be percent-encoded. */
    T_REQUIRE(get(P, "/%65cho", NULL, &r) == 0);
    T_CHECK(r.status == 200);
    resp_free(&r);
    const char *bad[] = {"/echo?x=%zz", "/echo?x=%4", "/echo?x=%", "/echo?%GG=1", "/ec%ZZho",
                         "/echo%", "/echo?x=a%00b", "/v1/jobs/a%00", "/v1/jobs/%FF",
                         "/echo?x=%C0%AF", "/echo?x=%ED%A0%80", "/echo?x=%E2%82"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        T_REQUIRE(get(P, bad[i], NULL, &r) == 0);
        T_CHECKF(r.status == 400 && is_error(&r, "bad_encoding"), "%s -> %d", bad[i], r.status);
        resp_free(&r);
    }
    char many[2000] = "/echo?";
    for (int i = 0; i < 70; i++) sprintf(many + strlen(many), "k%d=1&", i);
    T_REQUIRE(get(P, many, NULL, &r) == 0);
    T_CHECK(r.status == 400 && is_error(&r, "too_many_params"));
    resp_free(&r);
    char *huge = malloc(6000);
    strcpy(huge, "/echo?x=");
    memset(huge + 8, 'a', 5000);
    huge[5008] = 0;
    T_REQUIRE(get(P, huge, NULL, &r) == 0);
    T_CHECK(r.status == 414 && is_error(&r, "uri_too_long"));
    resp_free(&r);
    free(huge);
}

static void responses(void)
{
    resp r;
    T_REQUIRE(get(P, "/noresp", NULL, &r) == 0);
    T_CHECK(r.status == 500 && is_error(&r, "internal"));
    resp_free(&r);
    T_REQUIRE(get(P, "/busy", NULL, &r) == 0);
    T_CHECK(r.status == 503 && is_error(&r, "busy") && strstr(r.body, "try again in 5 seconds"));
    T_CHECK(hdr(&r, "Retry-After") && !strcmp(hdr(&r, "Retry-After"), "5"));
    resp_free(&r);
    T_REQUIRE(get(P, "/badjson", NULL, &r) == 0);
    T_CHECK(r.status == 500 && is_error(&r, "internal"));
    resp_free(&r);
    const char *js = "POST /json HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     "Content-Length: 14\r\nConnection: close\r\n\r\n{\"a\": [1, 2]} ";
    T_REQUIRE(http(P, js, strlen(js), &r) == 0);
    T_CHECK(r.status == 201 && !strcmp(r.body, "{\"got\":{\"a\":[1,2]}}"));
    resp_free(&r);
    js = "POST /json HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nConnection: close\r\n\r\n{\"a\":";
    T_REQUIRE(http(P, js, strlen(js), &r) == 0);
    T_CHECK(r.status == 400 && is_error(&r, "bad_json"));
    resp_free(&r);
    /* Keep-alive: two requests, two answers, one connection. */
    int fd = tc_connect(P);
    T_REQUIRE(fd >= 0);
    T_CHECK(tc_sendf(fd, "GET /v1/jobs/k1 HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    T_CHECK(tc_read(fd, &r) == 0 && r.status == 200 && strstr(r.body, "k1"));
    resp_free(&r);
    T_CHECK(tc_sendf(fd, "GET /v1/jobs/k2 HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    T_CHECK(tc_read(fd, &r) == 0 && r.status == 200 && strstr(r.body, "k2"));
    resp_free(&r);
    close(fd);
}

static void auth(void)
{
    srv_config cfg;
    base_config(&cfg);
    cfg.token = "s3cret-token";
    tctx c = {0};
    srv *s = start_server(&cfg, &c);
    T_REQUIRE(s);
    int port = srv_port(s);
    resp r;
    T_CHECK(get(port, "/v1/jobs/1", NULL, &r) == 0 && r.status == 401 && is_error(&r, "unauthorized"));
    T_CHECK(hdr(&r, "WWW-Authenticate") && !strncmp(hdr(&r, "WWW-Authenticate"), "Bearer", 6));
    resp_free(&r);
    const char *wrong[] = {"Bearer nope", "Bearer s3cret-toke", "Bearer s3cret-tokenX",
                           "Basic s3cret-token", "s3cret-token", "Bearer "};
    for (size_t i = 0; i < sizeof wrong / sizeof wrong[0]; i++) {
        char h[128];
        snprintf(h, sizeof h, "Authorization: %s\r\n", wrong[i]);
        T_CHECK(get(port, "/v1/jobs/1", h, &r) == 0);
        T_CHECKF(r.status == 401 && hdr(&r, "WWW-Authenticate"), "'%s' -> %d", wrong[i], r.status);
        resp_free(&r);
    }
    T_CHECK(get(port, "/v1/jobs/1", "Authorization: Bearer s3cret-token\r\n", &r) == 0);
    T_CHECK(r.status == 200 && strstr(r.body, "\"1\""));
    resp_free(&r);
    T_CHECK(get(port, "/v1/jobs/1", "Authorization: bearer s3cret-token\r\n", &r) == 0);
    T_CHECK(r.status == 200);
    resp_free(&r);
    /* Public routes stay open; unknown paths do not reveal themselves. */
    T_CHECK(get(port, "/healthz", NULL, &r) == 0 && r.status == 200);
    resp_free(&r);
    T_CHECK(get(port, "/nope", NULL, &r) == 0 && r.status == 401);
    resp_free(&r);
    T_CHECK(get(port, "/nope", "Authorization: Bearer s3cret-token\r\n", &r) == 0 && r.status == 404);
    resp_free(&r);
    /* Refused before the body is read, even if one is announced. */
    int fd = tc_connect(port);
    T_CHECK(tc_sendf(fd, "POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n") == 0);
    T_CHECK(tc_read(fd, &r) == 0 && r.status == 401);
    resp_free(&r);
    close(fd);
    srv_free(s);
    T_CHECK(wait_no_files(updir));
}

static int post_body(int port, const char *path, const char *data, size_t n, resp *r)
{
    int fd = tc_connect(port);
    if (fd < 0) return -1;
    if (!tc_sendf(fd, "POST %s HTTP/1.1\r\nHost: t\r\nContent-Length: %zu\r\n"
                      "Connection: close\r\n\r\n", path, n))
        tc_send(fd, data, n);
    int rc = tc_read(fd, r);
    close(fd);
    return rc;
}

static int post_chunked(int port, const char *path, const char *ctype, const char *data,
                        size_t n, size_t maxchunk, resp *r)
{
    int fd = tc_connect(port);
    if (fd < 0) return -1;
    int rc = tc_sendf(fd, "POST %s HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                          "Content-Type: %s\r\nConnection: close\r\n\r\n", path, ctype);
    unsigned seed = 7;
    for (size_t off = 0; !rc && off < n;) {
        seed = seed * 1103515245 + 12345;
        size_t k = 1 + (seed >> 8) % maxchunk;
        if (k > n - off) k = n - off;
        rc = tc_sendf(fd, "%zx\r\n", k) || tc_send(fd, data + off, k) || tc_send(fd, "\r\n", 2);
        off += k;
    }
    if (!rc) tc_send(fd, "0\r\n\r\n", 5);
    /* A refusal may arrive (and the server hang up) before everything is sent. */
    rc = tc_read(fd, r);
    close(fd);
    return rc;
}

static int body_matches(const resp *r, const char *kind, const char *data, size_t n)
{
    json_t *j = body_json(r);
    char hex[17];
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)fnv(FNV0, data, n));
    int ok = r->status == 200 && !strcmp(jstr(j, "kind") ?: "", kind) &&
             json_integer_value(json_object_get(j, "size")) == (json_int_t)n &&
             !strcmp(jstr(j, "hash") ?: "", hex);
    json_decref(j);
    return ok;
}

static void body_memory(void)
{
    resp r;
    char small[1000];
    fill(small, sizeof small, 1);
    T_REQUIRE(post_body(P, "/body", small, sizeof small, &r) == 0);
    T_CHECKF(body_matches(&r, "memory", small, sizeof small), "%d %s", r.status, r.body);
    resp_free(&r);
    T_REQUIRE(post_chunked(P, "/mem", "application/octet-stream", small, sizeof small, 50, &r) == 0);
    T_CHECK(body_matches(&r, "memory", small, sizeof small));
    resp_free(&r);
    T_REQUIRE(post_body(P, "/mem", "", 0, &r) == 0);
    T_CHECK(body_matches(&r, "memory", "", 0));
    resp_free(&r);
    /* A FILE route always gets a file, even for an empty body. */
    T_REQUIRE(post_body(P, "/upload", "", 0, &r) == 0);
    T_CHECK(body_matches(&r, "file", "", 0));
    resp_free(&r);
    T_CHECK(wait_no_files(updir));
}

static void body_streamed_to_file(void)
{
    size_t n = 20u << 20;
    char *big = malloc(n);
    T_REQUIRE(big);
    fill(big, n, 3);
    resp r;
    T_REQUIRE(post_body(P, "/body", big, n, &r) == 0);
    T_CHECKF(body_matches(&r, "file", big, n), "%d %s", r.status, r.body);
    resp_free(&r);
    T_CHECK(C.last_tmp[0] && strncmp(C.last_tmp, updir, strlen(updir)) == 0);
    T_CHECK(wait_no_files(updir) && access(C.last_tmp, F_OK) != 0);
    /* Chunked, so AUTO only learns the size as it goes: spills from memory to a file. */
    C.last_tmp[0] = 0;
    T_REQUIRE(post_chunked(P, "/body", "application/octet-stream", big, 3u << 20, 70000, &r) == 0);
    T_CHECK(body_matches(&r, "file", big, 3u << 20));
    resp_free(&r);
    T_CHECK(C.last_tmp[0] && wait_no_files(updir));
    free(big);
}

static void too_large_by_length(void)
{
    resp r;
    /* Only the headers are sent: the answer must not wait for 10 GiB. */
    int fd = tc_connect(P);
    T_REQUIRE(fd >= 0);
    T_CHECK(tc_sendf(fd, "POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 10737418240\r\n\r\n") == 0);
    T_CHECK(tc_read(fd, &r) == 0 && r.status == 413 && is_error(&r, "body_too_large"));
    resp_free(&r);
    close(fd);
    fd = tc_connect(P);
    T_CHECK(tc_sendf(fd, "POST /mem HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n"
                         "Expect: 100-continue\r\n\r\n") == 0);
    T_CHECK(tc_read(fd, &r) == 0 && r.status == 413);
    resp_free(&r);
    close(fd);
    /* A body on a route that takes none. */
    const char *g = "GET /v1/jobs/x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello";
    T_CHECK(http(P, g, strlen(g), &r) == 0 && r.status == 413);
    resp_free(&r);
    T_CHECK(get(P, "/healthz", NULL, &r) == 0 && r.status == 200);
    resp_free(&r);
}

static void too_large_chunked(void)
{
    int fd = tc_connect(P);
    T_REQUIRE(fd >= 0);
    T_CHECK(tc_sendf(fd, "POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n") == 0);
    size_t chunk = 256 << 10, sent = 0, plan = (size_t)1 << 30;
    char *buf = malloc(chunk);
    T_REQUIRE(buf);
    fill(buf, chunk, 5);
    while (sent < plan) {
        if (tc_sendf(fd, "%zx\r\n", chunk) || tc_send(fd, buf, chunk) || tc_send(fd, "\r\n", 2))
            break;
        sent += chunk;
        struct pollfd pf = {fd, POLLIN, 0};
        if (poll(&pf, 1, 0) > 0) break;
    }
    free(buf);
    resp r;
    T_CHECK(tc_read(fd, &r) == 0 && r.status == 413 && is_error(&r, "body_too_large"));
    T_CHECKF(sent < (128u << 20), "sent %zu bytes before the answer", sent);
    resp_free(&r);
    close(fd);
    T_CHECK(wait_no_files(updir));
    T_CHECK(get(P, "/healthz", NULL, &r) == 0 && r.status == 200);
    resp_free(&r);
}

/* ---- multipart ---- */

typedef struct {
    char *p;
    size_t n, cap;
} buf_t;

static void badd(buf_t *b, const void *d, size_t n)
{
    if (b->n + n > b->cap) b->p = realloc(b->p, b->cap = (b->n + n) * 2);
    memcpy(b->p + b->n, d, n);
    b->n += n;
}

static void bstr(buf_t *b, const char *s) { badd(b, s, strlen(s)); }

#define BND "----bitdBoundary7MA4YWxk"

/* File bytes full of near-boundaries: every prefix of the delimiter, and CR runs. */
static char *tricky_file(size_t n)
{
    char *f = malloc(n);
    fill(f, n, 9);
    const char *delim = "\r\n--" BND;
    size_t dl = strlen(delim);
    for (size_t at = 100, k = 1; at + dl < n; at += 997, k = k % (dl - 1) + 1) {
        memcpy(f + at, delim, k); /* a proper prefix only */
        f[at + k] = 'x';
    }
    memcpy(f + n - 3, "\r\r\n", 3); /* ends just before the real delimiter's CR */
    return f;
}

static buf_t form_body(const char *file, size_t fn)
{
    buf_t b = {0};
    bstr(&b, "preamble, to be ignored\r\n--" BND "\r\n"
             "Content-Disposition: form-data; name=\"params\"\r\n"
             "Content-Type: application/json\r\n\r\n"
             "{\"epochs\": 3, \"lr\": 0.01}\r\n--" BND "\r\n"
             "content-disposition: form-data; name=\"file\"; filename=\"../../etc/evil.bin\"\r\n"
             "Content-Type: application/octet-stream\r\n\r\n");
    badd(&b, file, fn);
    bstr(&b, "\r\n--" BND "\r\n"
             "Content-Disposition: form-data; name=\"note\"\r\n\r\n"
             "\r\n--" BND "--\r\nepilogue, ignored too");
    return b;
}

static void check_form(const resp *r, const char *file, size_t fn)
{
    json_t *j = body_json(r);
    json_t *parts = json_object_get(j, "parts");
    T_REQUIRE(r->status == 200 && json_array_size(parts) == 3);
    json_t *p0 = json_array_get(parts, 0), *p1 = json_array_get(parts, 1), *p2 = json_array_get(parts, 2);
    T_CHECK(!strcmp(jstr(p0, "name") ?: "", "params") && json_is_false(json_object_get(p0, "file")));
    T_CHECK(!strcmp(jstr(p0, "type") ?: "", "application/json"));
    T_CHECK(json_integer_value(json_object_get(json_object_get(j, "params"), "epochs")) == 3);
    char hex[17];
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)fnv(FNV0, file, fn));
    T_CHECK(!strcmp(jstr(p1, "name") ?: "", "file") && json_is_true(json_object_get(p1, "file")));
    T_CHECK(!strcmp(jstr(p1, "filename") ?: "", "evil.bin"));
    T_CHECK(!strcmp(jstr(p1, "type") ?: "", "application/octet-stream"));
    T_CHECKF(json_integer_value(json_object_get(p1, "size")) == (json_int_t)fn &&
             json_integer_value(json_object_get(p1, "disk_size")) == (json_int_t)fn &&
             !strcmp(jstr(p1, "hash") ?: "", hex), "file part: %s", r->body);
    T_CHECK(!strcmp(jstr(p2, "name") ?: "", "note") && json_integer_value(json_object_get(p2, "size")) == 0);
    T_CHECK(json_is_null(json_object_get(p2, "filename")));
    json_decref(j);
}

static void multipart(void)
{
    size_t fn = 300000;
    char *file = tricky_file(fn);
    buf_t b = form_body(file, fn);
    char head[512];
    snprintf(head, sizeof head, "POST /form HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; "
             "boundary=" BND "\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n", b.n);
    buf_t req = {0};
    bstr(&req, head);
    badd(&req, b.p, b.n);
    resp r;
    T_REQUIRE(http(P, req.p, req.n, &r) == 0);
    check_form(&r, file, fn);
    resp_free(&r);
    /* Tiny chunks split every boundary and header at every possible place. */
    T_REQUIRE(post_chunked(P, "/form", "multipart/form-data; boundary=\"" BND "\"", b.p, b.n, 13, &r) == 0);
    check_form(&r, file, fn);
    resp_free(&r);
    T_CHECK(wait_no_files(updir));
    free(req.p);
    free(b.p);
    free(file);
}

static void multipart_bad(void)
{
    resp r;
    const char *ct = "multipart/form-data; boundary=" BND;
    const char *cut = "--" BND "\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a\"\r\n\r\n"
                      "data without an end";
    T_REQUIRE(post_chunked(P, "/form", ct, cut, strlen(cut), 5, &r) == 0);
    T_CHECK(r.status == 400 && is_error(&r, "bad_multipart"));
    resp_free(&r);
    const char *noname = "--" BND "\r\nContent-Disposition: form-data\r\n\r\nx\r\n--" BND "--\r\n";
    T_REQUIRE(post_chunked(P, "/form", ct, noname, strlen(noname), 1000, &r) == 0);
    T_CHECK(r.status == 400 && is_error(&r, "bad_multipart"));
    resp_free(&r);
    T_REQUIRE(post_chunked(P, "/form", "multipart/form-data", "x", 1, 10, &r) == 0);
    T_CHECK(r.status == 400 && is_error(&r, "bad_multipart"));
    resp_free(&r);
    buf_t b = {0};
    for (int i = 0; i < 70; i++)
        bstr(&b, "--" BND "\r\nContent-Disposition: form-data; name=\"k\"\r\n\r\nv\r\n");
    bstr(&b, "--" BND "--\r\n");
    T_REQUIRE(post_chunked(P, "/form", ct, b.p, b.n, 4096, &r) == 0);
    T_CHECK(r.status == 413 && is_error(&r, "too_many_parts"));
    resp_free(&r);
    b.n = 0;
    bstr(&b, "--" BND "\r\nContent-Disposition: form-data; name=\"big\"\r\n\r\n");
    char *junk = malloc(1100000);
    fill(junk, 1100000, 2);
    for (size_t i = 0; i < 1100000; i++) if (junk[i] == '\r') junk[i] = 'r';
    badd(&b, junk, 1100000);
    bstr(&b, "\r\n--" BND "--\r\n");
    T_REQUIRE(post_chunked(P, "/form", ct, b.p, b.n, 65536, &r) == 0);
    T_CHECK(r.status == 413 && is_error(&r, "field_too_large"));
    resp_free(&r);
    free(junk);
    free(b.p);
    T_CHECK(wait_no_files(updir));
}

static void client_abort(void)
{
    for (int round = 0; round < 3; round++) {
        int fd = tc_connect(P);
        T_REQUIRE(fd >= 0);
        const char *path = round == 2 ? "/form" : round ? "/body" : "/upload";
        T_CHECK(tc_sendf(fd, "POST %s HTTP/1.1\r\nHost: t\r\nContent-Length: 10000000\r\n"
                             "Content-Type: %s\r\n\r\n", path,
                         round == 2 ? "multipart/form-data; boundary=" BND : "x/y") == 0);
        char *part = malloc(2u << 20);
        fill(part, 2u << 20, 4);
        const char *mph = "--" BND "\r\nContent-Disposition: form-data; name=\"f\"; "
                          "filename=\"x\"\r\n\r\n";
        if (round == 2) memcpy(part, mph, strlen(mph));
        T_CHECK(tc_send(fd, part, 2u << 20) == 0);
        free(part);
        /* Wait until the server has the temp file open, then vanish mid-upload. */
        for (int i = 0; i < 200 && !count_files(updir); i++) usleep(5000);
        T_CHECK(count_files(updir) == 1);
        close(fd);
        T_CHECKF(wait_no_files(updir), "round %d left a temp file", round);
    }
    resp r;
    T_CHECK(get(P, "/healthz", NULL, &r) == 0 && r.status == 200);
    resp_free(&r);
}

static atomic_int conc_bad;

static void *conc_worker(void *arg)
{
    int t = (int)(intptr_t)arg;
    for (int i = 0; i < 20; i++) {
        char target[64], want[64];
        snprintf(target, sizeof target, "/v1/jobs/t%d-%d", t, i);
        snprintf(want, sizeof want, "\"t%d-%d\"", t, i);
        resp r;
        if (get(P, target, NULL, &r) != 0 || r.status != 200 || !strstr(r.body, want))
            atomic_fetch_add(&conc_bad, 1);
        resp_free(&r);
    }
    return NULL;
}

static void concurrency(void)
{
    pthread_t th[32];
    for (int t = 0; t < 32; t++) pthread_create(&th[t], NULL, conc_worker, (void *)(intptr_t)t);
    for (int t = 0; t < 32; t++) pthread_join(th[t], NULL);
    T_CHECKF(atomic_load(&conc_bad) == 0, "%d of 640 requests failed", atomic_load(&conc_bad));
}

static void download(void)
{
    size_t n = 1500000;
    char *data = malloc(n), path[1200];
    fill(data, n, 11);
    snprintf(path, sizeof path, "%s/blob.bin", C.files_dir);
    T_REQUIRE(eng_file_write_atomic(path, data, n, err, sizeof err) == 0);
    resp r;
    T_REQUIRE(get(P, "/files/blob.bin", NULL, &r) == 0);
    T_CHECK(r.status == 200 && r.len == n && !memcmp(r.body, data, n));
    T_CHECK(hdr(&r, "Content-Type") && !strcmp(hdr(&r, "Content-Type"), "application/octet-stream"));
    T_CHECK(hdr(&r, "Content-Disposition") != NULL);
    resp_free(&r);
    T_CHECK(get(P, "/files/missing.bin", NULL, &r) == 0 && r.status == 404 && is_error(&r, "not_found"));
    resp_free(&r);
    T_CHECK(get(P, "/files/..%2F..%2Fetc%2Fpasswd", NULL, &r) == 0 && r.status == 400);
    resp_free(&r);
    free(data);
}

static void keep_upload(void)
{
    char data[5000];
    fill(data, sizeof data, 12);
    resp r;
    T_REQUIRE(post_body(P, "/keep", data, sizeof data, &r) == 0);
    T_CHECKF(r.status == 200, "%d %s", r.status, r.body);
    resp_free(&r);
    char dest[1200];
    snprintf(dest, sizeof dest, "%s/kept.bin", C.files_dir);
    void *buf = NULL;
    size_t len = 0;
    T_CHECK(eng_file_read(dest, 1 << 20, &buf, &len, err, sizeof err) == 0);
    T_CHECK(len == sizeof data && buf && !memcmp(buf, data, len));
    free(buf);
    T_CHECK(wait_no_files(updir));
}

/* A client that stops mid-upload without closing is dropped by the connection timeout. */
static void idle_upload_times_out(void)
{
    srv_config cfg;
    base_config(&cfg);
    cfg.timeout_s = 1;
    tctx c = {0};
    srv *s = start_server(&cfg, &c);
    T_REQUIRE(s);
    int fd = tc_connect(srv_port(s));
    T_REQUIRE(fd >= 0);
    char part[4096];
    fill(part, sizeof part, 6);
    T_CHECK(tc_sendf(fd, "POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n") == 0);
    T_CHECK(tc_send(fd, part, sizeof part) == 0);
    for (int i = 0; i < 200 && !count_files(updir); i++) usleep(5000);
    T_CHECK(count_files(updir) == 1);
    double t0 = now_s();
    char b;
    ssize_t n = recv(fd, &b, 1, 0);
    T_CHECKF(n <= 0 && now_s() - t0 < 5, "recv %zd after %.2f s", n, now_s() - t0);
    T_CHECK(wait_no_files(updir));
    close(fd);
    srv_free(s);
}

static void per_ip_limit(void)
{
    srv_config cfg;
    base_config(&cfg);
    cfg.max_per_ip = 2;
    tctx c = {0};
    srv *s = start_server(&cfg, &c);
    T_REQUIRE(s);
    int port = srv_port(s), fds[2];
    resp r;
    for (int i = 0; i < 2; i++) {
        fds[i] = tc_connect(port);
        T_CHECK(tc_sendf(fds[i], "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
        T_CHECK(tc_read(fds[i], &r) == 0 && r.status == 200);
        resp_free(&r);
    }
    /* The kernel completes the handshake; MHD then hangs up without an answer. */
    int x = tc_connect(port);
    int rc = x < 0 ? -1 : tc_sendf(x, "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n") ? -1 : tc_read(x, &r);
    T_CHECK(rc != 0);
    resp_free(&r);
    if (x >= 0) close(x);
    close(fds[0]);
    close(fds[1]);
    int ok = 0;
    for (int i = 0; i < 100 && !ok; i++) {
        ok = get(port, "/healthz", NULL, &r) == 0 && r.status == 200;
        resp_free(&r);
        if (!ok) usleep(20000);
    }
    T_CHECK(ok);
    srv_free(s);
}

static void limits_headers(void)
{
    /* Headers beyond the connection memory pool: MHD refuses, the server lives on. */
    size_t n = 100000;
    char *raw = malloc(n + 200);
    strcpy(raw, "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: ");
    size_t l = strlen(raw);
    memset(raw + l, 'a', n);
    strcpy(raw + l + n, "\r\nConnection: close\r\n\r\n");
    resp r;
    int rc = http(P, raw, strlen(raw), &r);
    T_CHECKF(rc != 0 || (r.status >= 400 && r.status < 500), "status %d", r.status);
    resp_free(&r);
    free(raw);
    T_CHECK(get(P, "/healthz", NULL, &r) == 0 && r.status == 200);
    resp_free(&r);
}

static void metrics(void)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    T_REQUIRE(f);
    T_CHECK(srv_metrics_text(S, f) == 0);
    fclose(f);
    /* 640 from the concurrency case plus the routing ones. */
    const char *key = "bit_http_requests_total{route=\"/v1/jobs/{id}\",method=\"GET\",status=\"200\"} ";
    const char *at = strstr(buf, key);
    T_CHECK(at && atoi(at + strlen(key)) >= 643);
    T_CHECK(strstr(buf, "bit_http_requests_total{route=\"/v1/jobs/{id}\",method=\"GET\",status=\"400\"} "));
    T_CHECK(strstr(buf, "bit_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"} "));
    T_CHECK(strstr(buf, "bit_http_requests_total{route=\"/upload\",method=\"POST\",status=\"413\"} "));
    T_CHECK(strstr(buf, "bit_http_request_duration_seconds_bucket{route=\"/v1/jobs/{id}\",method=\"GET\",le=\"0.005\"} "));
    T_CHECK(strstr(buf, "bit_http_request_duration_seconds_bucket{route=\"/v1/jobs/{id}\",method=\"GET\",le=\"+Inf\"} "));
    T_CHECK(strstr(buf, "bit_http_request_duration_seconds_count{route=\"/v1/jobs/{id}\",method=\"GET\"} "));
    T_CHECK(strstr(buf, "# TYPE bit_http_request_duration_seconds histogram"));
    free(buf);
    resp r;
    T_CHECK(get(P, "/metrics", NULL, &r) == 0 && r.status == 200 &&
            strstr(r.body, "bit_http_requests_in_flight 1"));
    resp_free(&r);
}

static void log_lines(void)
{
    fflush(logfp);
    FILE *f = fopen(logpath, "r");
    T_REQUIRE(f);
    char line[8192];
    int n = 0, bad = 0, seen_job = 0, seen_abort = 0, seen_413 = 0;
    while (fgets(line, sizeof line, f)) {
        json_t *j = json_loads(line, 0, NULL);
        if (!j) {
            bad++;
            continue;
        }
        n++;
        const char *ts = jstr(j, "ts");
        if (!ts || strlen(ts) != 24 || ts[10] != 'T' || ts[23] != 'Z') bad++;
        if (jstr(j, "method")) {
            if (!json_is_integer(json_object_get(j, "status")) ||
                !json_is_real(json_object_get(j, "ms")) || !json_is_integer(json_object_get(j, "bytes")) ||
                (strcmp(jstr(j, "remote") ?: "", "127.0.0.1") && strcmp(jstr(j, "remote") ?: "", "::1")))
                bad++;
            if (!strcmp(jstr(j, "path") ?: "", "/v1/jobs/abc") &&
                json_integer_value(json_object_get(j, "status")) == 200 &&
                json_integer_value(json_object_get(j, "bytes")) > 10)
                seen_job++;
            seen_abort += !strcmp(jstr(j, "end") ?: "", "client_abort");
            seen_413 += json_integer_value(json_object_get(j, "status")) == 413;
        }
        json_decref(j);
    }
    fclose(f);
    T_CHECKF(bad == 0, "%d bad lines", bad);
    T_CHECK(n > 700 && seen_job == 1 && seen_abort >= 3 && seen_413 >= 3);
}

struct stop_probe {
    int port, refused;
};

static void *prober(void *arg)
{
    struct stop_probe *p = arg;
    usleep(150000);
    int fd = tc_connect(p->port);
    p->refused = fd < 0;
    if (fd >= 0) close(fd);
    return NULL;
}

struct slow_client {
    int port, status;
};

static void *slow_client(void *arg)
{
    struct slow_client *c = arg;
    resp r;
    c->status = get(c->port, "/slow", NULL, &r) == 0 ? r.status : -1;
    resp_free(&r);
    return NULL;
}

static void graceful_stop(void)
{
    srv_config cfg;
    base_config(&cfg);
    tctx c = {.slow_ms = 600};
    srv *s = start_server(&cfg, &c);
    T_REQUIRE(s);
    struct slow_client sc = {srv_port(s), 0};
    struct stop_probe pr = {srv_port(s), 0};
    pthread_t th, tp;
    pthread_create(&th, NULL, slow_client, &sc);
    while (!atomic_load(&c.slow_entered)) usleep(1000);
    pthread_create(&tp, NULL, prober, &pr);
    double t0 = now_s();
    srv_stop(s);
    double took = now_s() - t0;
    pthread_join(th, NULL);
    pthread_join(tp, NULL);
    T_CHECKF(sc.status == 200, "in-flight request got %d", sc.status);
    T_CHECKF(took > 0.3 && took < 5, "stop took %.3f s", took);
    T_CHECK(pr.refused);
    T_CHECK(srv_port(s) == -1 && tc_connect(sc.port) < 0);
    srv_stop(s); /* idempotent */
    srv_free(s);
}

static void ipv6(void)
{
    srv_config cfg;
    base_config(&cfg);
    cfg.address = "[::1]";
    tctx c = {0};
    srv *s = NULL;
    T_REQUIRE(srv_new(&cfg, &s, err, sizeof err) == 0);
    T_REQUIRE(srv_route(s, "GET", "/healthz", h_health, &c, SRV_PUBLIC) == 0);
    if (srv_start(s, err, sizeof err) != 0) {
        printf("     (no IPv6 loopback here: %s)\n", err);
        srv_free(s);
        return;
    }
    int fd = tc_connect_to(AF_INET6, "::1", srv_port(s));
    T_REQUIRE(fd >= 0);
    resp r;
    T_CHECK(tc_sendf(fd, "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n") == 0);
    T_CHECK(tc_read(fd, &r) == 0 && r.status == 200);
    resp_free(&r);
    close(fd);
    srv_free(s);
}

static void config_and_routes(void)
{
    srv_config cfg;
    base_config(&cfg);
    srv *s = NULL;
    cfg.address = "not-an-address";
    T_CHECK(srv_new(&cfg, &s, err, sizeof err) == ENG_EINVAL && strstr(err, "not-an-address") && !s);
    cfg.address = NULL;
    cfg.temp_dir = "/nonexistent/dir";
    T_CHECK(srv_new(&cfg, &s, err, sizeof err) == ENG_EINVAL && strstr(err, "temp dir") && !s);
    cfg.temp_dir = updir;
    cfg.port = 70000;
    T_CHECK(srv_new(&cfg, &s, err, sizeof err) == ENG_EINVAL);
    cfg.port = 0;
    T_REQUIRE(srv_new(&cfg, &s, err, sizeof err) == 0);
    T_CHECK(srv_port(s) == -1);
    const char *bad[] = {"v1/x", "/v1/{bad-name}", "/v1/{}", "/v1/x{id}", "/v1/%41"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        T_CHECKF(srv_route(s, "GET", bad[i], h_health, NULL, 0) == ENG_EINVAL, "%s", bad[i]);
    T_CHECK(srv_route(s, "get", "/x", h_health, NULL, 0) == ENG_EINVAL);
    T_CHECK(srv_route(s, "GET", "/x", h_health, NULL, 1u << 7) == ENG_EINVAL);
    T_CHECK(srv_route(s, "GET", "/x/{a}", h_health, NULL, 0) == 0);
    T_CHECK(srv_route(s, "GET", "/x/{b}", h_health, NULL, 0) == ENG_EINVAL); /* same shape */
    T_CHECK(srv_route(s, "POST", "/x/{b}", h_health, NULL, 0) == 0);
    T_REQUIRE(srv_start(s, err, sizeof err) == 0);
    T_CHECK(srv_port(s) > 0);
    T_CHECK(srv_route(s, "GET", "/late", h_health, NULL, 0) == ENG_EINVAL);
    T_CHECK(srv_start(s, err, sizeof err) == ENG_EINVAL);
    /* The port is taken: the reason reaches the caller. */
    srv *s2 = NULL;
    cfg.port = srv_port(s);
    T_REQUIRE(srv_new(&cfg, &s2, err, sizeof err) == 0);
    T_CHECK(srv_start(s2, err, sizeof err) == ENG_EIO && strstr(err, "cannot listen"));
    srv_free(s2);
    srv_free(s);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    snprintf(updir, sizeof updir, "%s/uploads", t_tmpdir());
    snprintf(C.files_dir, sizeof C.files_dir, "%s/files", t_tmpdir());
    snprintf(logpath, sizeof logpath, "%s/http.log", t_tmpdir());
    if (mkdir(updir, 0700) || mkdir(C.files_dir, 0700) || !(logfp = fopen(logpath, "w+"))) {
        perror("setup");
        return 2;
    }
    srv_config cfg;
    base_config(&cfg);
    S = start_server(&cfg, &C);
    if (!S) return 2;
    P = srv_port(S);
    T_RUN(config_and_routes);
    T_RUN(routing);
    T_RUN(not_found_and_method);
    T_RUN(query_and_encoding);
    T_RUN(responses);
    T_RUN(auth);
    T_RUN(body_memory);
    T_RUN(body_streamed_to_file);
    T_RUN(too_large_by_length);
    T_RUN(too_large_chunked);
    T_RUN(multipart);
    T_RUN(multipart_bad);
    T_RUN(client_abort);
    T_RUN(concurrency);
    T_RUN(download);
    T_RUN(keep_upload);
    T_RUN(limits_headers);
    T_RUN(metrics);
    T_RUN(graceful_stop);
    T_RUN(ipv6);
    T_RUN(idle_upload_times_out);
    T_RUN(per_ip_limit);
    srv_free(S);
    T_RUN(log_lines);
    fclose(logfp);
    const char *names[] = {"files/blob.bin", "files/kept.bin", "http.log", "files", "uploads", ""};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char p[700];
        snprintf(p, sizeof p, "%s/%s", t_tmpdir(), names[i]);
        remove(p);
    }
    return t_done();
}
