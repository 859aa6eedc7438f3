/* Responses: the handler-facing builders, queueing on MHD, and the raw early answer for a
 * body that has to be refused half-way. */
#include "server/http/srv_int.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The answer of last resort: needs no allocation. */
static const char oom_body[] =
    "{\"error\":{\"code\":\"internal\",\"message\":\"the server could not build a response\"}}";

void srv__out_free(struct srv_out *o)
{
    if (o->body && o->body_free) o->body_free(o->body);
    o->body = NULL;
    if (o->fd >= 0) close(o->fd);
    o->fd = -1;
    srv__kv_free(o->hdrs, o->nhdrs);
    o->hdrs = NULL;
    o->nhdrs = 0;
}

/* Replaces the body (not the extra headers) of the response being built. */
static void out_set(srv_req *r, int status, const char *ctype, char *body, size_t len,
                    void (*body_free)(void *), int fd, uint64_t fsize)
{
    struct srv_out *o = &r->out;
    if (o->body && o->body_free) o->body_free(o->body);
    if (o->fd >= 0) close(o->fd);
    o->status = status;
    o->body = body;
    o->len = len;
    o->body_free = body_free;
    o->fd = fd;
    o->fsize = fsize;
    snprintf(o->ctype, sizeof o->ctype, "%s", ctype);
    o->set = 1;
}

static int answer_oom(srv_req *r)
{
    out_set(r, 500, "application/json", (char *)oom_body, sizeof oom_body - 1, NULL, -1, 0);
    return SRV_ENOMEM;
}

static int fail_code(int status)
{
    return status == 413 ? SRV_ELIMIT : status >= 500 ? SRV_EIO : SRV_EINVAL;
}

int srv__verror(srv_req *r, int status, const char *code, const char *fmt, va_list ap)
{
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    json_t *j = json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", msg);
    if (!j) {
        /* Not UTF-8 (a client's bytes echoed back): keep the ASCII. */
        for (char *p = msg; *p; p++)
            if ((unsigned char)*p >= 0x80) *p = '?';
        j = json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", msg);
    }
    return srv_json(r, status, j);
}

int srv__fail(srv_req *r, int status, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = srv__verror(r, status, code, fmt, ap);
    va_end(ap);
    return rc < 0 ? rc : fail_code(status);
}

int srv_error(srv_req *r, int status, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = srv__verror(r, status, code, fmt, ap);
    va_end(ap);
    return rc;
}

static void json_free_fn(void *p)
{
    json_free_t f;
    json_get_alloc_funcs(NULL, &f);
    f(p);
}

int srv_json(srv_req *r, int status, json_t *body)
{
    if (status < 100 || status > 599) status = 500;
    char *txt = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (!txt) return answer_oom(r);
    out_set(r, status, "application/json", txt, strlen(txt), json_free_fn, -1, 0);
    return 0;
}

int srv_text(srv_req *r, int status, const char *ctype, const char *body, size_t len)
{
    char *copy = malloc(len ? len : 1);
    if (!copy) return answer_oom(r);
    memcpy(copy, body, len);
    out_set(r, status < 100 || status > 599 ? 500 : status, ctype ? ctype : "text/plain",
            copy, len, free, -1, 0);
    return 0;
}

static int has_dotdot(const char *path)
{
    for (const char *p = path; (p = strstr(p, "..")); p += 2)
        if ((p == path || p[-1] == '/') && (p[2] == 0 || p[2] == '/')) return 1;
    return 0;
}

int srv_file(srv_req *r, int status, const char *path, const char *ctype)
{
    if (!path || has_dotdot(path))
        return srv__fail(r, 400, "bad_path", "refusing a path with '..'");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 && (errno == ENOENT || errno == ENOTDIR))
        return srv__fail(r, 404, "not_found", "no such file");
    if (fd < 0) return srv__fail(r, 500, "io_error", "cannot open the file: %s", strerror(errno));
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return srv__fail(r, 404, "not_found", "not a regular file");
    }
    out_set(r, status < 100 || status > 599 ? 500 : status,
            ctype ? ctype : "application/octet-stream", NULL, 0, NULL, fd, (uint64_t)st.st_size);
    return 0;
}

static int header_ok(const char *name, const char *value)
{
    if (!name || !*name || !value) return 0;
    for (const char *p = name; *p; p++)
        if ((unsigned char)*p <= 0x20 || *p == ':' || (unsigned char)*p >= 0x7f) return 0;
    return strpbrk(value, "\r\n") == NULL; /* no header injection */
}

int srv_set_header(srv_req *r, const char *name, const char *value)
{
    struct srv_out *o = &r->out;
    if (!header_ok(name, value)) return SRV_EINVAL;
    srv_kv *n = realloc(o->hdrs, (o->nhdrs + 1) * sizeof *n);
    if (!n) return SRV_ENOMEM;
    o->hdrs = n;
    n[o->nhdrs].k = strdup(name);
    n[o->nhdrs].v = strdup(value);
    o->nhdrs++;
    return n[o->nhdrs - 1].k && n[o->nhdrs - 1].v ? 0 : SRV_ENOMEM;
}

/* ---- onto the wire ---- */

/* Hands the body or fd over to MHD (which frees or closes it), or NULL on failure. */
static struct MHD_Response *build(struct srv_out *o, uint64_t *bytes)
{
    struct MHD_Response *resp;
    if (o->fd >= 0) {
        resp = MHD_create_response_from_fd64(o->fsize, o->fd);
        if (resp) o->fd = -1;
        *bytes = o->fsize;
    } else if (!o->body_free) {
        resp = MHD_create_response_from_buffer(o->len, o->body, MHD_RESPMEM_PERSISTENT);
        *bytes = o->len;
    } else {
        resp = MHD_create_response_from_buffer_with_free_callback(o->len, o->body, o->body_free);
        if (resp) o->body = NULL;
        *bytes = o->len;
    }
    return resp;
}

/* Queues resp (which the caller no longer needs) with the headers set on the request. */
enum MHD_Result srv__queue_response(srv_req *r, struct MHD_Response *resp, int status,
                                   uint64_t bytes)
{
    struct srv_out *o = &r->out;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, o->ctype);
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff"); /* types are meant */
    for (size_t i = 0; i < o->nhdrs; i++) MHD_add_response_header(resp, o->hdrs[i].k, o->hdrs[i].v);
    /* While draining, let keep-alive clients go instead of sending us more requests; a
     * connection let into the health reserve goes too, so that the reserve stays free. */
    if (atomic_load(&r->s->stopping) || (r->conn && r->conn->reserved))
        MHD_add_response_header(resp, "Connection", "close");
    enum MHD_Result rc = MHD_queue_response(r->c, (unsigned)status, resp);
    MHD_destroy_response(resp);
    r->queued = 1;
    r->sent_status = status;
    r->sent_bytes = bytes;
    return rc;
}

enum MHD_Result srv__queue(srv_req *r)
{
    struct srv_out *o = &r->out;
    uint64_t bytes = 0;
    if (!o->set) answer_oom(r);
    struct MHD_Response *resp = build(o, &bytes);
    if (!resp) {
        answer_oom(r);
        if (!(resp = build(o, &bytes))) return MHD_NO;
    }
    return srv__queue_response(r, resp, o->status, bytes);
}

static void send_all(int fd, const char *p, size_t n)
{
    int waited = 0;
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
        } else if (w < 0 && errno == EINTR) {
            continue;
        } else if (w < 0 && errno == EAGAIN && waited < 1000) {
            struct pollfd pf = {fd, POLLOUT, 0};
            poll(&pf, 1, 100);
            waited += 100;
        } else {
            return;
        }
    }
}

/* MHD 0.9.75 cannot queue a response once it has started passing body data, yet a client
 * streaming gigabytes over the limit must hear 413 now. So the error goes straight onto the
 * socket (MHD has written nothing for this request yet), then MHD is told to drop it. */
enum MHD_Result srv__reject_midstream(srv_req *r)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->c, MHD_CONNECTION_INFO_CONNECTION_FD);
    struct srv_out *o = &r->out;
    if (!o->set || o->fd >= 0) answer_oom(r);
    r->queued = 1;
    r->sent_status = o->status;
    r->sent_bytes = o->len;
    if (!ci) return MHD_NO;
    int fd = ci->connect_fd, on = 1, off = 0;
    setsockopt(fd, IPPROTO_TCP, TCP_CORK, &off, sizeof off);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    const char *reason = MHD_get_reason_phrase_for((unsigned)o->status);
    char head[512];
    int hn = snprintf(head, sizeof head,
                      "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                      "X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
                      o->status, reason ? reason : "Error", o->ctype, o->len);
    send_all(fd, head, (size_t)hn);
    send_all(fd, o->body, o->len);
    /* FIN after the answer, so the client reads it before MHD's close resets the socket. */
    shutdown(fd, SHUT_WR);
    return MHD_NO;
}
