/* Server lifecycle and the MHD callbacks that drive each request through admission, body,
 * handler and completion (or parking, or a stream). Connections reach MHD through the front
 * door (srv_door.c); the loop thread (srv_loop.c) keeps their deadlines. */
#include "server/http/srv_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

int srv__errf(char *err, size_t errlen, int code, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

void srv_config_init(srv_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->address = "127.0.0.1";
    cfg->port = 8080;
    cfg->threads = 4;
    cfg->max_connections = 256;
    cfg->conn_memory = 64 * 1024;
    cfg->timeout_s = 30;
    cfg->max_body = (uint64_t)2 << 30;
    cfg->max_memory_body = 1 << 20;
    cfg->max_url = 4096;
    cfg->max_query = 64;
    cfg->max_parts = 64;
    cfg->stop_timeout_ms = 10000;
    cfg->max_per_ip = 64;
    cfg->max_head = 16 * 1024;
    cfg->head_timeout_ms = 10000;
    cfg->body_rate = 1024;
    cfg->body_window_ms = 10000;
    cfg->health_reserve = 4;
    cfg->park_timeout_ms = 30000;
    cfg->max_streams = 64;
    cfg->stream_buffer = 256 * 1024;
}

static void fill_defaults(srv_config *c)
{
    srv_config d;
    srv_config_init(&d);
#define DEF(f) if (!c->f) c->f = d.f
    DEF(address); DEF(threads); DEF(max_connections); DEF(conn_memory); DEF(timeout_s);
    DEF(max_body); DEF(max_memory_body); DEF(max_url); DEF(max_query); DEF(max_parts);
    DEF(stop_timeout_ms); DEF(max_per_ip); DEF(max_head); DEF(head_timeout_ms); DEF(body_rate);
    DEF(body_window_ms); DEF(health_reserve); DEF(park_timeout_ms); DEF(max_streams);
    DEF(stream_buffer);
#undef DEF
    /* A head holds its request line, and must fit the socket's receive buffer, where the
     * front door reads it without taking it; MHD's per-connection pool holds a head of a
     * kept-alive connection (which MHD reads itself) and what MHD builds around it. */
    if (c->max_head < c->max_url + 1024) c->max_head = c->max_url + 1024;
    if (c->max_head > 64 * 1024) c->max_head = 64 * 1024;
    if (c->max_url > c->max_head - 1024) c->max_url = c->max_head - 1024;
    if (c->conn_memory < 2 * c->max_head + 16384) c->conn_memory = 2 * c->max_head + 16384;
    if (!c->temp_dir) c->temp_dir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    if (!c->log) c->log = stderr;
}

static int parse_address(srv *s, char *err, size_t errlen)
{
    char host[INET6_ADDRSTRLEN + 1];
    const char *a = s->address;
    size_t n = strlen(a);
    if (n >= 2 && a[0] == '[' && a[n - 1] == ']') a++, n -= 2;
    if (n >= sizeof host) return srv__errf(err, errlen, SRV_EINVAL, "listen address too long");
    memcpy(host, a, n);
    host[n] = 0;
    if (s->cfg.port < 0 || s->cfg.port > 65535)
        return srv__errf(err, errlen, SRV_EINVAL, "port %d out of range", s->cfg.port);
    struct sockaddr_in *v4 = (struct sockaddr_in *)&s->addr;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&s->addr;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)s->cfg.port);
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)s->cfg.port);
        s->v6 = 1;
    } else {
        return srv__errf(err, errlen, SRV_EINVAL, "'%s' is not an IPv4 or IPv6 address", s->address);
    }
    return 0;
}

static int init_sync(srv *s)
{
    pthread_condattr_t ca;
    if (pthread_condattr_init(&ca) != 0) return -1;
    /* The drain deadline must not move with the wall clock. */
    int rc = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) || pthread_cond_init(&s->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (rc) return -1;
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->mmu, NULL);
    pthread_mutex_init(&s->lmu, NULL);
    pthread_cond_init(&s->lcv, NULL);
    for (int i = 0; i < SRV_CUT_N; i++) atomic_init(&s->cuts[i], 0);
    return 0;
}

int srv_new(const srv_config *cfg, srv **out, char *err, size_t errlen)
{
    int rc;
    *out = NULL;
    srv *s = calloc(1, sizeof *s);
    if (!s) return srv__errf(err, errlen, SRV_ENOMEM, "out of memory");
    if (cfg) s->cfg = *cfg;
    else srv_config_init(&s->cfg);
    fill_defaults(&s->cfg);
    s->port = -1;
    s->lfd = s->efd = -1;
    s->address = strdup(s->cfg.address);
    s->temp_dir = strdup(s->cfg.temp_dir);
    s->token = s->cfg.token && s->cfg.token[0] ? strdup(s->cfg.token) : NULL;
    if (!s->address || !s->temp_dir || (s->cfg.token && s->cfg.token[0] && !s->token)) {
        rc = srv__errf(err, errlen, SRV_ENOMEM, "out of memory");
        goto fail_nosync;
    }
    s->token_len = s->token ? strlen(s->token) : 0;
    s->cfg.address = s->address;
    s->cfg.temp_dir = s->temp_dir;
    s->cfg.token = s->token;
    if ((rc = parse_address(s, err, errlen)) < 0) goto fail_nosync;
    struct stat st;
    if (stat(s->temp_dir, &st) != 0 || !S_ISDIR(st.st_mode) || access(s->temp_dir, W_OK | X_OK)) {
        rc = srv__errf(err, errlen, SRV_EINVAL, "temp dir %s is not a writable directory",
                      s->temp_dir);
        goto fail_nosync;
    }
    if (init_sync(s) != 0) {
        rc = srv__errf(err, errlen, SRV_ENOMEM, "cannot create locks");
        goto fail_nosync;
    }
    *out = s;
    return 0;
fail_nosync:
    free(s->address);
    free(s->temp_dir);
    free(s->token);
    free(s);
    return rc;
}

/* ---- per-request glue ---- */

static void inflight_add(srv *s, int d)
{
    pthread_mutex_lock(&s->mu);
    s->inflight += (unsigned)d;
    if (!s->inflight) pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static void remote_addr(srv_req *r)
{
    if (r->conn) {
        memcpy(r->remote, r->conn->remote, sizeof r->remote);
        return;
    }
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    strcpy(r->remote, "-");
    if (!ci || !ci->client_addr) return;
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, r->remote,
                  sizeof r->remote);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, r->remote,
                  sizeof r->remote);
}

static int unauthorized(srv_req *r)
{
    const char *h = srv_header(r, "Authorization");
    srv_set_header(r, "WWW-Authenticate", h ? "Bearer error=\"invalid_token\"" : "Bearer");
    return srv__fail(r, 401, "unauthorized",
                     h ? "the bearer token is not valid" : "this route needs a bearer token");
}

static enum MHD_Result add_arg_len(void *cls, enum MHD_ValueKind kind, const char *key,
                                   const char *value)
{
    *(size_t *)cls += strlen(key) + (value ? strlen(value) + 1 : 0) + 1;
    return MHD_YES;
}

/* MHD splits the query off the path; with unescaping disabled the pieces add up to the
 * length of the request target as sent. */
static size_t target_len(const srv_req *r)
{
    size_t n = strlen(r->path);
    MHD_get_connection_values(r->c, MHD_GET_ARGUMENT_KIND, add_arg_len, &n);
    return n;
}

struct hscan {
    int lengths, differ, bad, chunked;
    const char *length;
};

/* Follow-up requests on a kept-alive connection reach us without the front door's check;
 * what MHD's parser lets through is checked here. */
static enum MHD_Result scan_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                   const char *value)
{
    struct hscan *h = cls;
    value = value ? value : "";
    for (const unsigned char *p = (const unsigned char *)value; *p; p++)
        h->bad |= (*p < 0x20 && *p != '\t') || *p == 0x7f;
    if (!strcasecmp(key, "Content-Length")) {
        h->differ |= h->length && strcmp(h->length, value);
        h->bad |= !*value || value[strspn(value, "0123456789")];
        h->length = value;
        h->lengths++;
    }
    if (!strcasecmp(key, "Transfer-Encoding")) h->chunked = 1;
    return MHD_YES;
}

static int check_head(srv_req *r)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->c, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE);
    if (ci && ci->header_size > r->s->cfg.max_head)
        return srv__fail(r, 431, "headers_too_large", "the request head is too large");
    struct hscan h = {0};
    MHD_get_connection_values(r->c, MHD_HEADER_KIND, scan_header, &h);
    if (h.differ || (h.lengths && h.chunked))
        return srv__fail(r, 400, "bad_content_length", "conflicting Content-Length headers");
    if (h.bad)
        return srv__fail(r, 400, "bad_header", "a control byte in a header value, or a bad "
                         "Content-Length");
    return 0;
}

/* HEAD is served by the GET route of the path unless one is registered for HEAD itself;
 * MHD sends the headers of the answer without its body. */
static int match(srv_req *r, char *allow, size_t allowlen)
{
    int m = srv__match(r, allow, allowlen);
    if (m != SRV_M_METHOD || strcmp(r->method, "HEAD")) return m;
    const char *head = r->method;
    r->method = "GET";
    m = srv__match(r, allow, allowlen);
    r->method = head;
    return m;
}

/* Decides everything that can be decided from the request line and headers. A non-zero
 * return means a response is already set, to be queued before any body is read. */
static int admit(srv_req *r)
{
    srv *s = r->s;
    if (target_len(r) > s->cfg.max_url)
        return srv__fail(r, 414, "uri_too_long", "the URL is over %zu bytes", s->cfg.max_url);
    if (check_head(r)) return -1;
    char allow[256] = "";
    int m = match(r, allow, sizeof allow);
    if (m == SRV_M_BADENC)
        return srv__fail(r, 400, "bad_encoding", "the path has invalid percent-encoding");
    if (m == SRV_M_NOMEM) return srv__fail(r, 500, "internal", "out of memory");
    /* Unknown paths need the token too, so the route table is not revealed to strangers. */
    int pub = r->route && (r->route->flags & SRV_PUBLIC);
    if (!pub && !srv__auth_ok(s, srv_header(r, "Authorization"))) return unauthorized(r);
    if (m == SRV_M_NOTFOUND) return srv__fail(r, 404, "not_found", "no such route");
    if (m == SRV_M_METHOD) {
        srv_set_header(r, "Allow", allow);
        return srv__fail(r, 405, "method_not_allowed", "%s is not allowed here; use %s",
                         r->method, allow);
    }
    if (m == SRV_M_BADPARAM)
        return srv__fail(r, 400, "bad_param", "a path parameter is empty, too long or unsafe");
    int q = srv__parse_query(r);
    if (q == SRV_M_NOMEM) return srv__fail(r, 500, "internal", "out of memory");
    if (q == SRV_M_BADENC)
        return srv__fail(r, 400, "bad_encoding", "the query has invalid percent-encoding");
    if (q == SRV_M_LIMIT)
        return srv__fail(r, 400, "too_many_params", "over %u query parameters",
                         s->cfg.max_query);
    return srv__body_begin(r);
}

static srv_req *req_new(srv *s, struct MHD_Connection *c)
{
    srv_req *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->s = s;
    r->c = c;
    r->body_tmp = -1;
    r->out.fd = -1;
    atomic_init(&r->refs, 1);
    clock_gettime(CLOCK_MONOTONIC, &r->t0);
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    r->conn = ci ? ci->socket_context : NULL;
    remote_addr(r);
    inflight_add(s, 1);
    return r;
}

/* MHD's URI log callback: a request line has arrived. The request starts here, so that one
 * MHD refuses itself while reading the headers still reaches the log and the metrics. */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *c)
{
    srv_req *r = req_new(cls, c);
    if (!r) return NULL;
    r->uri = strndup(uri, strcspn(uri, "?"));
    srv__conn_phase(r->s, r->conn, SRV_PH_HEAD, srv__now_ms());
    return r;
}

static enum MHD_Result begin(srv_req *r, const char *url, const char *method)
{
    r->begun = 1;
    r->method = method;
    r->path = url;
    srv__conn_phase(r->s, r->conn, SRV_PH_BODY, srv__now_ms());
    /* Refused before any body is read; MHD then drops an announced body and closes. */
    if (admit(r) != 0) return srv__queue(r);
    return MHD_YES;
}

static enum MHD_Result run_handler(srv_req *r)
{
    srv__conn_phase(r->s, r->conn, SRV_PH_BUSY, srv__now_ms());
    if (srv__body_finish(r) == 0) {
        r->in_handler = 1;
        int rc = r->route->fn(r, r->route->ud);
        r->in_handler = 0;
        if (r->park) return MHD_YES; /* suspended; the answer comes through the park */
        if (r->stream) return srv__queue_stream(r);
        if (!r->out.set) srv_error(r, 500, "internal", "the handler gave no response (%d)", rc);
    }
    return srv__queue(r);
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *c, const char *url,
                                 const char *method, const char *version, const char *data,
                                 size_t *size, void **ctx)
{
    srv_req *r = *ctx;
    if (!r && !(r = *ctx = req_new(cls, c))) return MHD_NO;
    if (!r->begun) return begin(r, url, method);
    if (r->park) return srv__async_access(r);
    if (*size) {
        size_t n = *size;
        *size = 0;
        if (r->conn) atomic_fetch_add(&r->conn->body_bytes, n);
        if (srv__body_feed(r, data, n) != 0) return srv__reject_midstream(r);
        return MHD_YES;
    }
    return run_handler(r);
}

void srv__req_unref(srv_req *r)
{
    if (atomic_fetch_sub(&r->refs, 1) != 1) return;
    srv__body_free(r);
    srv__out_free(&r->out);
    srv__kv_free(r->params, r->nparams);
    srv__kv_free(r->query, r->nquery);
    srv__kv_free(r->hsnap, r->nhsnap);
    free(r->msnap);
    free(r->psnap);
    free(r->uri);
    if (r->park) {
        pthread_mutex_destroy(&r->park->mu);
        pthread_cond_destroy(&r->park->cv);
        free(r->park);
    }
    if (r->stream) {
        free(r->stream->buf);
        pthread_mutex_destroy(&r->stream->mu);
        pthread_cond_destroy(&r->stream->cv);
        free(r->stream);
    }
    free(r);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **ctx,
                         enum MHD_RequestTerminationCode tc)
{
    srv *s = cls;
    srv_req *r = *ctx;
    if (!r) return;
    *ctx = NULL;
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double sec = (double)(t1.tv_sec - r->t0.tv_sec) + (double)(t1.tv_nsec - r->t0.tv_nsec) * 1e-9;
    int cut = srv__conn_phase(s, r->conn, SRV_PH_IDLE, srv__now_ms());
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_HTTP_STATUS);
    srv__async_completed(r);
    /* 499 (nginx's "client closed request") when nobody answered; MHD's own answers (a bad
     * chunked body, a head too large for its pool) and the loop's cuts are told apart. */
    int status = r->queued ? r->sent_status : 499;
    const char *end = r->end ? r->end : srv__term_name((int)tc);
    if (!r->queued && ci && ci->http_status) {
        status = (int)ci->http_status;
        end = "mhd_error";
    } else if (!r->queued && cut) {
        status = 408;
        end = cut == SRV_CUT_SLOW_BODY + 1 ? "slow_body" : "head_timeout";
    }
    r->conn = NULL;
    if (!r->park) r->c = NULL;
    srv__log_request(s, r, status, sec * 1e3, end);
    srv__metrics_add(s, r, status, sec);
    inflight_add(s, -1);
    srv__req_unref(r);
}

/* MHD gives us the raw path and query so that srv decodes once and can refuse bad escapes. */
static size_t unescape_none(void *cls, struct MHD_Connection *c, char *str)
{
    return strlen(str);
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    srv *s = cls;
    char msg[256];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '.')) msg[--n] = 0;
    /* srv__reject_midstream and a hung-up parked request ask MHD to drop the connection, a
     * stream that was cut or hung up ends with an error: each is in the request log already. */
    if (strstr(msg, "Application reported internal error") ||
        strstr(msg, "application error generating response") ||
        strstr(msg, "application reported error generating data"))
        return;
    pthread_mutex_lock(&s->mu);
    memcpy(s->mhd_err, msg, n + 1);
    pthread_mutex_unlock(&s->mu);
    srv__log_event(s, "mhd", "%s", msg);
}

/* ---- lifecycle ---- */

int srv_start(srv *s, char *err, size_t errlen)
{
    if (s->d) return srv__errf(err, errlen, SRV_EINVAL, "server already started");
    if (atomic_load(&s->stopping))
        return srv__errf(err, errlen, SRV_EINVAL, "a stopped server cannot be restarted");
    int rc;
    if (!s->peek && !(s->peek = malloc(s->cfg.max_head + 1)))
        return srv__errf(err, errlen, SRV_ENOMEM, "out of memory");
    if ((rc = srv__door_open(s, err, errlen))) return rc;
    /* poll(), not epoll: 0.9.75's edge-triggered epoll misses a client's FIN that arrives
     * behind buffered upload data. No listening socket: the front door hands connections over.
     * MHD's own connection limit is only a backstop, well above ours, so that it never closes
     * a connection we handed over (which would skip NOTIFY_CONNECTION). */
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC | MHD_USE_ERROR_LOG |
                     MHD_USE_POLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_NO_LISTEN_SOCKET;
    uint64_t limit = (uint64_t)s->cfg.threads *
                     ((uint64_t)s->cfg.max_connections + s->cfg.health_reserve + 16);
    s->mhd_err[0] = 0;
    s->d = MHD_start_daemon(
        flags, 0, NULL, NULL, on_access, s,
        MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, s,
        MHD_OPTION_THREAD_POOL_SIZE, s->cfg.threads,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)(limit < 1u << 30 ? limit : 1u << 30),
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, s->cfg.conn_memory,
        MHD_OPTION_CONNECTION_TIMEOUT, s->cfg.timeout_s,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
        MHD_OPTION_NOTIFY_CONNECTION, srv__notify_conn, s,
        MHD_OPTION_URI_LOG_CALLBACK, on_uri, s,
        MHD_OPTION_UNESCAPE_CALLBACK, unescape_none, s,
        MHD_OPTION_END);
    if (!s->d)
        rc = srv__errf(err, errlen, SRV_EIO, "cannot start libmicrohttpd: %s",
                      s->mhd_err[0] ? s->mhd_err : "it refused the options");
    else if ((rc = srv__loop_start(s, err, errlen)))
        MHD_stop_daemon(s->d), s->d = NULL;
    if (rc) {
        close(s->lfd);
        s->lfd = -1;
        return rc;
    }
    srv__log_event(s, "info", "listening on %s port %d", s->address, s->port);
    return 0;
}

int srv_port(const srv *s) { return s->d ? s->port : -1; }

/* Waits until no request is in flight or the monotonic clock reaches until_ms. */
static unsigned drain(srv *s, uint64_t until_ms)
{
    struct timespec dl = {(time_t)(until_ms / 1000), (long)(until_ms % 1000) * 1000000L};
    pthread_mutex_lock(&s->mu);
    while (s->inflight && pthread_cond_timedwait(&s->cv, &s->mu, &dl) != ETIMEDOUT) {
    }
    unsigned left = s->inflight;
    pthread_mutex_unlock(&s->mu);
    return left;
}

/* The grace period: streams end at once (they never finish by themselves); other requests,
 * parked ones included, may finish until the last fifth of it (at most the last second),
 * when parked ones get 503; the rest of it lets those answers out. */
void srv_stop(srv *s)
{
    if (!s || !s->d) return;
    atomic_store(&s->stopping, 1);
    srv__loop_close_door(s);
    srv__log_event(s, "info", "stopping: waiting for in-flight requests");
    uint64_t t0 = srv__now_ms(), grace = s->cfg.stop_timeout_ms;
    uint64_t flush = grace / 5 < 1000 ? grace / 5 : 1000;
    srv__async_stop(s, SRV_STOP_STREAMS);
    drain(s, t0 + grace - flush);
    srv__async_stop(s, SRV_STOP_PARKS);
    unsigned left = drain(s, t0 + grace);
    srv__loop_stop(s);
    MHD_stop_daemon(s->d);
    s->d = NULL;
    srv__log_event(s, "info", "stopped (%u request(s) cut off)", left);
}

void srv_free(srv *s)
{
    if (!s) return;
    srv_stop(s);
    srv__door_free(s);
    if (s->efd >= 0) close(s->efd);
    free(s->peek);
    srv__routes_free(s);
    srv__metrics_free(s);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->mmu);
    pthread_mutex_destroy(&s->lmu);
    pthread_cond_destroy(&s->cv);
    pthread_cond_destroy(&s->lcv);
    if (s->token) explicit_bzero(s->token, s->token_len);
    free(s->token);
    free(s->address);
    free(s->temp_dir);
    free(s);
}

/* ---- request accessors ---- */

const char *srv_method(const srv_req *r) { return r->method; }
const char *srv_path(const srv_req *r) { return r->path; }
const char *srv_remote(const srv_req *r) { return r->remote; }
const char *srv_route_pattern(const srv_req *r) { return r->route ? r->route->pattern : NULL; }

const char *srv_header(const srv_req *r, const char *name)
{
    if (!r->msnap) return MHD_lookup_connection_value(r->c, MHD_HEADER_KIND, name);
    for (size_t i = 0; i < r->nhsnap; i++)
        if (r->hsnap[i].k && !strcasecmp(r->hsnap[i].k, name)) return r->hsnap[i].v;
    return NULL;
}
