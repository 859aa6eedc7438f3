/* Observability: one JSON line per request (and per server event) on the configured log, and
 * per-route counters and latency histograms printed in Prometheus text format. */
#include "server/http/srv_int.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static const double bucket_le[SRV_NBUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                               1,     2.5,  5,     10,   30,  60};

static void rfc3339(char *buf, size_t len)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(buf, len, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, len - n, ".%03ldZ", ts.tv_nsec / 1000000);
}

/* JSON string body of arbitrary bytes: anything outside printable ASCII becomes \u00XX, so
 * the line stays valid JSON whatever a client put in its request line. Needs 6n + 1 bytes. */
static void json_esc(char *dst, const char *src)
{
    static const char hex[] = "0123456789abcdef";
    for (const unsigned char *p = (const unsigned char *)src; *p; p++) {
        if (*p >= 0x20 && *p < 0x7f && *p != '"' && *p != '\\') {
            *dst++ = (char)*p;
        } else {
            memcpy(dst, "\\u00", 4);
            dst[4] = hex[*p >> 4];
            dst[5] = hex[*p & 15];
            dst += 6;
        }
    }
    *dst = 0;
}

static void emit(srv *s, const char *line, size_t n)
{
    /* One fwrite per line: stdio locks the stream, so lines from pool threads never mix. */
    fwrite(line, 1, n, s->cfg.log);
    fflush(s->cfg.log);
}

const char *srv__term_name(int tc)
{
    switch (tc) {
    case MHD_REQUEST_TERMINATED_COMPLETED_OK: return "ok";
    case MHD_REQUEST_TERMINATED_TIMEOUT_REACHED: return "timeout";
    case MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN: return "shutdown";
    case MHD_REQUEST_TERMINATED_CLIENT_ABORT: return "client_abort";
    case MHD_REQUEST_TERMINATED_READ_ERROR: return "read_error";
    default: return "error";
    }
}

void srv__log_line(srv *s, const char *method, const char *path, const struct srv_route *rt,
                   int status, uint64_t bytes, double ms, const char *remote, const char *end)
{
    const char *route = rt ? rt->pattern : "";
    size_t cap = 6 * (strlen(path) + strlen(method) + strlen(route) + strlen(remote)) + 512;
    char *line = malloc(cap), *m = malloc(6 * strlen(method) + 1);
    char *p = malloc(6 * strlen(path) + 1), *rte = malloc(6 * strlen(route) + 1), ts[40];
    char *rem = malloc(6 * strlen(remote) + 1);
    if (line && m && p && rte && rem) {
        rfc3339(ts, sizeof ts);
        json_esc(m, method);
        json_esc(p, path);
        json_esc(rte, route);
        json_esc(rem, remote);
        int n = snprintf(line, cap,
                         "{\"ts\":\"%s\",\"method\":\"%s\",\"path\":\"%s\",\"route\":\"%s\","
                         "\"status\":%d,\"bytes\":%llu,\"ms\":%.3f,\"remote\":\"%s\","
                         "\"end\":\"%s\"}\n",
                         ts, m, p, rte, status, (unsigned long long)bytes, ms, rem, end);
        if (n > 0 && (size_t)n < cap) emit(s, line, (size_t)n);
    }
    free(line), free(m), free(p), free(rte), free(rem);
}

/* A request MHD refused before our handler saw it has only the target of its request line. */
void srv__log_request(srv *s, const srv_req *r, int status, double ms, const char *end)
{
    const char *path = r->path ? r->path : r->uri ? r->uri : "-";
    srv__log_line(s, r->method ? r->method : "-", path, r->route, status, r->sent_bytes, ms,
                  r->remote, end);
}

void srv__log_event(srv *s, const char *level, const char *fmt, ...)
{
    char msg[512], esc[6 * sizeof msg], ts[40], line[sizeof esc + 128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_esc(esc, msg);
    rfc3339(ts, sizeof ts);
    int n = snprintf(line, sizeof line, "{\"ts\":\"%s\",\"level\":\"%s\",\"msg\":\"%s\"}\n", ts,
                     level, esc);
    if (n > 0 && (size_t)n < sizeof line) emit(s, line, (size_t)n);
}

/* ---- metrics ---- */

/* Client-chosen methods are folded so that they cannot grow the series table. */
static const char *method_label(const char *m)
{
    static const char *const known[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"};
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (!strcmp(m, known[i])) return known[i];
    return "OTHER";
}

static struct srv_series *series_for(srv *s, const char *route, const char *method)
{
    for (size_t i = 0; i < s->nseries; i++)
        if (s->series[i].route == route && s->series[i].method == method) return &s->series[i];
    if (s->nseries == SRV_MAX_SERIES) return NULL;
    if (s->nseries == s->capseries) {
        size_t cap = s->capseries ? s->capseries * 2 : 16;
        struct srv_series *n = realloc(s->series, cap * sizeof *n);
        if (!n) return NULL;
        s->series = n;
        s->capseries = cap;
    }
    struct srv_series *x = &s->series[s->nseries++];
    memset(x, 0, sizeof *x);
    x->route = route;
    x->method = method;
    return x;
}

void srv__metrics_add(srv *s, const srv_req *r, int status, double sec)
{
    srv__metrics_count(s, r->route, r->method ? r->method : "-", status, sec);
}

/* HEAD served by a GET route is labelled HEAD. */
void srv__metrics_count(srv *s, const struct srv_route *rt, const char *m, int status, double sec)
{
    const char *route = rt ? rt->pattern : "unmatched";
    const char *method = rt && !strcmp(rt->method, m) ? rt->method : method_label(m);
    pthread_mutex_lock(&s->mmu);
    struct srv_series *x = series_for(s, route, method);
    if (!x) {
        s->series_dropped++;
        pthread_mutex_unlock(&s->mmu);
        return;
    }
    size_t b = 0;
    while (b < SRV_NBUCKETS && sec > bucket_le[b]) b++;
    if (b < SRV_NBUCKETS) x->buckets[b]++;
    x->count++;
    x->sum += sec;
    size_t k = 0;
    while (k < SRV_SERIES_STATUSES && x->status[k] && x->status[k] != status) k++;
    if (k < SRV_SERIES_STATUSES) x->status[k] = status;
    x->by_status[k]++;
    pthread_mutex_unlock(&s->mmu);
}

void srv__metrics_free(srv *s) { free(s->series); }

/* Label values: backslash, quote and newline escaped per the exposition format. */
static void label(FILE *f, const char *v)
{
    for (; *v; v++) {
        if (*v == '\\' || *v == '"') fputc('\\', f);
        if (*v == '\n') fputs("\\n", f);
        else fputc(*v, f);
    }
}

static void print_series(FILE *f, const struct srv_series *x, int histogram)
{
    if (!histogram) {
        for (size_t k = 0; k <= SRV_SERIES_STATUSES; k++) {
            if (!x->by_status[k]) continue;
            fputs("bit_http_requests_total{route=\"", f);
            label(f, x->route);
            fprintf(f, "\",method=\"%s\",status=\"", x->method);
            if (k < SRV_SERIES_STATUSES) fprintf(f, "%d", x->status[k]);
            else fputs("other", f);
            fprintf(f, "\"} %llu\n", (unsigned long long)x->by_status[k]);
        }
        return;
    }
    uint64_t cum = 0;
    for (size_t b = 0; b <= SRV_NBUCKETS; b++) {
        cum += b < SRV_NBUCKETS ? x->buckets[b] : 0;
        fputs("bit_http_request_duration_seconds_bucket{route=\"", f);
        label(f, x->route);
        fprintf(f, "\",method=\"%s\",le=\"", x->method);
        if (b < SRV_NBUCKETS) fprintf(f, "%g", bucket_le[b]);
        else fputs("+Inf", f);
        fprintf(f, "\"} %llu\n", (unsigned long long)(b < SRV_NBUCKETS ? cum : x->count));
    }
    for (int sc = 0; sc < 2; sc++) {
        fprintf(f, "bit_http_request_duration_seconds_%s{route=\"", sc ? "count" : "sum");
        label(f, x->route);
        fprintf(f, "\",method=\"%s\"} ", x->method);
        if (sc) fprintf(f, "%llu\n", (unsigned long long)x->count);
        else fprintf(f, "%.6f\n", x->sum);
    }
}

static const char *const cut_names[SRV_CUT_N] = {"per_ip", "head_timeout", "idle", "slow_body",
                                                 "bad_head", "busy", "evicted"};

/* Connections: held by MHD, waiting at the door, parked, streaming; and those cut, by why. */
static void print_conns(srv *s, FILE *f)
{
    pthread_mutex_lock(&s->lmu);
    size_t held = s->handing.n + s->held.n;
    unsigned parked = s->nparked, streams = s->nstreams;
    pthread_mutex_unlock(&s->lmu);
    fprintf(f, "# HELP bit_http_connections Open connections served by the HTTP pool.\n"
               "# TYPE bit_http_connections gauge\nbit_http_connections %zu\n"
               "# HELP bit_http_parked Requests parked, waiting for an answer without a thread.\n"
               "# TYPE bit_http_parked gauge\nbit_http_parked %u\n"
               "# HELP bit_http_streams Open streaming responses.\n"
               "# TYPE bit_http_streams gauge\nbit_http_streams %u\n"
               "# HELP bit_http_connections_cut_total Connections the server cut, by reason.\n"
               "# TYPE bit_http_connections_cut_total counter\n",
            held, parked, streams);
    for (int i = 0; i < SRV_CUT_N; i++)
        fprintf(f, "bit_http_connections_cut_total{reason=\"%s\"} %llu\n", cut_names[i],
                (unsigned long long)atomic_load(&s->cuts[i]));
}

int srv_metrics_text(srv *s, FILE *f)
{
    pthread_mutex_lock(&s->mu);
    unsigned inflight = s->inflight;
    pthread_mutex_unlock(&s->mu);
    print_conns(s, f);
    pthread_mutex_lock(&s->mmu);
    fputs("# HELP bit_http_requests_total HTTP requests by route, method and status.\n"
          "# TYPE bit_http_requests_total counter\n", f);
    for (size_t i = 0; i < s->nseries; i++) print_series(f, &s->series[i], 0);
    fputs("# HELP bit_http_request_duration_seconds HTTP request latency.\n"
          "# TYPE bit_http_request_duration_seconds histogram\n", f);
    for (size_t i = 0; i < s->nseries; i++) print_series(f, &s->series[i], 1);
    fprintf(f, "# HELP bit_http_requests_in_flight Requests being served.\n"
               "# TYPE bit_http_requests_in_flight gauge\nbit_http_requests_in_flight %u\n"
               "# HELP bit_http_metric_series_dropped_total Requests not counted (table full).\n"
               "# TYPE bit_http_metric_series_dropped_total counter\n"
               "bit_http_metric_series_dropped_total %llu\n",
            inflight, (unsigned long long)s->series_dropped);
    pthread_mutex_unlock(&s->mmu);
    return ferror(f) ? SRV_EIO : 0;
}
