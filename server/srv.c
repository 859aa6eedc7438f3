/* Server lifecycle and the MHD callbacks that drive each request through admission, body,
 * handler and completion. */
#include "server/srv_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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
}

static void fill_defaults(srv_config *c)
{
    srv_config d;
    srv_config_init(&d);
#define DEF(f) if (!c->f) c->f = d.f
    DEF(address); DEF(threads); DEF(max_connections); DEF(conn_memory); DEF(timeout_s);
    DEF(max_body); DEF(max_memory_body); DEF(max_url); DEF(max_query); DEF(max_parts);
    DEF(stop_timeout_ms);
#undef DEF
    if (!c->temp_dir) c->temp_dir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    if (!c->log) c->log = stderr;
}

static int parse_address(srv *s, char *err, size_t errlen)
{
    char host[INET6_ADDRSTRLEN + 1];
    const char *a = s->address;
    size_t n = strlen(a);
    if (n >= 2 && a[0] == '[' && a[n - 1] == ']') a++, n -= 2;
    if (n >= sizeof host) return eng_errf(err, errlen, ENG_EINVAL, "listen address too long");
    memcpy(host, a, n);
    host[n] = 0;
    if (s->cfg.port < 0 || s->cfg.port > 65535)
        return eng_errf(err, errlen, ENG_EINVAL, "port %d out of range", s->cfg.port);
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
        return eng_errf(err, errlen, ENG_EINVAL, "'%s' is not an IPv4 or IPv6 address", s->address);
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
    return 0;
}

int srv_new(const srv_config *cfg, srv **out, char *err, size_t errlen)
{
    int rc;
    *out = NULL;
    srv *s = calloc(1, sizeof *s);
    if (!s) return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    if (cfg) s->cfg = *cfg;
    else srv_config_init(&s->cfg);
    fill_defaults(&s->cfg);
    s->port = -1;
    s->address = strdup(s->cfg.address);
    s->temp_dir = strdup(s->cfg.temp_dir);
    s->token = s->cfg.token && s->cfg.token[0] ? strdup(s->cfg.token) : NULL;
    if (!s->address || !s->temp_dir || (s->cfg.token && s->cfg.token[0] && !s->token)) {
        rc = eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
        goto fail_nosync;
    }
    s->token_len = s->token ? strlen(s->token) : 0;
    s->cfg.address = s->address;
    s->cfg.temp_dir = s->temp_dir;
    s->cfg.token = s->token;
    if ((rc = parse_address(s, err, errlen)) < 0) goto fail_nosync;
    struct stat st;
    if (stat(s->temp_dir, &st) != 0 || !S_ISDIR(st.st_mode) || access(s->temp_dir, W_OK | X_OK)) {
        rc = eng_errf(err, errlen, ENG_EINVAL, "temp dir %s is not a writable directory",
                      s->temp_dir);
        goto fail_nosync;
    }
    if (init_sync(s) != 0) {
        rc = eng_errf(err, errlen, ENG_ENOMEM, "cannot create locks");
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

/* Decides everything that can be decided from the request line and headers. A non-zero
 * return means a response is already set, to be queued before any body is read. */
static int admit(srv_req *r)
{
    srv *s = r->s;
    if (target_len(r) > s->cfg.max_url)
        return srv__fail(r, 414, "uri_too_long", "the URL is over %zu bytes", s->cfg.max_url);
    char allow[256] = "";
    int m = srv__match(r, allow, sizeof allow);
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

static enum MHD_Result first_call(srv *s, struct MHD_Connection *c, const char *url,
                                  const char *method, void **ctx)
{
    srv_req *r = calloc(1, sizeof *r);
    if (!r) return MHD_NO;
    r->s = s;
    r->c = c;
    r->method = method;
    r->path = url;
    r->body_tmp = -1;
    r->out.fd = -1;
    clock_gettime(CLOCK_MONOTONIC, &r->t0);
    remote_addr(r);
    inflight_add(s, 1);
    *ctx = r;
    /* Refused before any body is read; MHD then drops an announced body and closes. */
    if (admit(r) != 0) return srv__queue(r);
    return MHD_YES;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *c, const char *url,
                                 const char *method, const char *version, const char *data,
                                 size_t *size, void **ctx)
{
    srv_req *r = *ctx;
    if (!r) return first_call(cls, c, url, method, ctx);
    if (*size) {
        size_t n = *size;
        *size = 0;
        if (srv__body_feed(r, data, n) != 0) return srv__reject_midstream(r);
        return MHD_YES;
    }
    if (srv__body_finish(r) == 0) {
        int rc = r->route->fn(r, r->route->ud);
        if (!r->out.set) srv_error(r, 500, "internal", "the handler gave no response (%d)", rc);
    }
    return srv__queue(r);
}

static void req_free(srv_req *r)
{
    srv__body_free(r);
    srv__out_free(&r->out);
    srv__kv_free(r->params, r->nparams);
    srv__kv_free(r->query, r->nquery);
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
    /* 499 (nginx's "client closed request") when no response was ever queued. */
    int status = r->queued ? r->sent_status : 499;
    srv__log_request(s, r, status, sec * 1e3, (int)tc);
    srv__metrics_add(s, r, status, sec);
    req_free(r);
    inflight_add(s, -1);
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
    /* srv__reject_midstream answers itself and then asks MHD to drop the connection. */
    if (strstr(msg, "Application reported internal error")) return;
    pthread_mutex_lock(&s->mu);
    memcpy(s->mhd_err, msg, n + 1);
    pthread_mutex_unlock(&s->mu);
    srv__log_event(s, "mhd", "%s", msg);
}

/* ---- lifecycle ---- */

int srv_start(srv *s, char *err, size_t errlen)
{
    if (s->d) return eng_errf(err, errlen, ENG_EINVAL, "server already started");
    if (atomic_load(&s->stopping))
        return eng_errf(err, errlen, ENG_EINVAL, "a stopped server cannot be restarted");
    /* poll(), not epoll: 0.9.75's edge-triggered epoll misses a client's FIN that arrives
     * behind buffered upload data, leaving the request (and its temp file) until shutdown. */
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC | MHD_USE_ERROR_LOG |
                     MHD_USE_POLL | (s->v6 ? MHD_USE_IPv6 : 0);
    s->mhd_err[0] = 0;
    s->d = MHD_start_daemon(
        flags, (uint16_t)s->cfg.port, NULL, NULL, on_access, s,
        MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, s,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&s->addr,
        MHD_OPTION_THREAD_POOL_SIZE, s->cfg.threads,
        MHD_OPTION_CONNECTION_LIMIT, s->cfg.max_connections,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, s->cfg.max_per_ip,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, s->cfg.conn_memory,
        MHD_OPTION_CONNECTION_TIMEOUT, s->cfg.timeout_s,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
        MHD_OPTION_UNESCAPE_CALLBACK, unescape_none, s,
        MHD_OPTION_END);
    if (!s->d)
        return eng_errf(err, errlen, ENG_EIO, "cannot listen on %s port %d: %s", s->address,
                        s->cfg.port, s->mhd_err[0] ? s->mhd_err : "libmicrohttpd refused");
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : s->cfg.port;
    srv__log_event(s, "info", "listening on %s port %d", s->address, s->port);
    return 0;
}

int srv_port(const srv *s) { return s->d ? s->port : -1; }

static unsigned drain(srv *s)
{
    struct timespec dl;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += s->cfg.stop_timeout_ms / 1000;
    dl.tv_nsec += (long)(s->cfg.stop_timeout_ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) dl.tv_sec++, dl.tv_nsec -= 1000000000L;
    pthread_mutex_lock(&s->mu);
    while (s->inflight && pthread_cond_timedwait(&s->cv, &s->mu, &dl) != ETIMEDOUT) {
    }
    unsigned left = s->inflight;
    pthread_mutex_unlock(&s->mu);
    return left;
}

void srv_stop(srv *s)
{
    if (!s || !s->d) return;
    atomic_store(&s->stopping, 1);
    MHD_socket lfd = MHD_quiesce_daemon(s->d);
    /* Quiescing only stops accept(); without this the kernel would keep completing
     * handshakes for clients nobody will ever serve. The fd stays open until MHD is gone. */
    if (lfd != MHD_INVALID_SOCKET) shutdown(lfd, SHUT_RDWR);
    srv__log_event(s, "info", "stopping: waiting for in-flight requests");
    unsigned left = drain(s);
    MHD_stop_daemon(s->d);
    s->d = NULL;
    if (lfd != MHD_INVALID_SOCKET) close(lfd);
    srv__log_event(s, "info", "stopped (%u request(s) cut off)", left);
}

void srv_free(srv *s)
{
    if (!s) return;
    srv_stop(s);
    srv__routes_free(s);
    srv__metrics_free(s);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->mmu);
    pthread_cond_destroy(&s->cv);
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
    return MHD_lookup_connection_value(r->c, MHD_HEADER_KIND, name);
}
