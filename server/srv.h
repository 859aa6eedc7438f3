/* The HTTP server core on libmicrohttpd: routes with {name} parameters, bearer auth, bodies
 * in memory or streamed to temp files, multipart, JSON/file responses, JSON-lines logs, metrics.
 * srv owns every srv_req and all it returns; those pointers live until the handler returns. */
#ifndef BIT_SRV_H
#define BIT_SRV_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct srv srv;
typedef struct srv_req srv_req;

/* Zero numeric fields mean "the default" (except port, where 0 asks for an ephemeral port);
 * srv_config_init fills every default, including port 8080. Strings are copied by srv_new. */
typedef struct srv_config {
    const char *address;       /* IPv4 or IPv6 literal ("::1" or "[::1]"); NULL: 127.0.0.1 */
    int port;                  /* 0: ephemeral, read it back with srv_port */
    unsigned threads;          /* MHD thread pool; default 4 */
    unsigned max_connections;  /* default 256 */
    unsigned max_per_ip;       /* connections per client address; 0: no limit */
    size_t conn_memory;        /* per-connection MHD pool, which bounds the headers; 64 KiB */
    unsigned timeout_s;        /* idle connection timeout; default 30 */
    uint64_t max_body;         /* streamed bodies and multipart totals; default 2 GiB */
    size_t max_memory_body;    /* bodies and multipart fields kept in memory; default 1 MiB */
    size_t max_url;            /* request target length; default 4096 */
    unsigned max_query;        /* query parameters per request; default 64 */
    unsigned max_parts;        /* multipart parts per request; default 64 */
    unsigned stop_timeout_ms;  /* how long srv_stop waits for in-flight requests; 10000 */
    const char *temp_dir;      /* where uploads stream to; NULL: $TMPDIR or /tmp */
    const char *token;         /* bearer token every non-public route needs; NULL/"": none */
    FILE *log;                 /* JSON lines, one per request; NULL: stderr */
} srv_config;

void srv_config_init(srv_config *cfg);

/* cfg may be NULL (all defaults). The server is not listening until srv_start. */
int srv_new(const srv_config *cfg, srv **out, char *err, size_t errlen);

/* Route flags: SRV_PUBLIC skips the bearer check; one SRV_BODY_* mode says where the body
 * goes. A multipart/form-data body on any mode but NONE is parsed into parts instead. */
enum {
    SRV_PUBLIC = 1,
    SRV_BODY_NONE = 0 << 1,   /* a non-empty body gets 413 */
    SRV_BODY_MEMORY = 1 << 1, /* in memory, at most max_memory_body, NUL-terminated */
    SRV_BODY_FILE = 2 << 1,   /* always a temp file (possibly empty), at most max_body */
    SRV_BODY_AUTO = 3 << 1,   /* memory while small, a temp file past max_memory_body */
};
#define SRV_BODY_MASK (3 << 1)

/* Runs on an MHD thread once the whole body has arrived. It answers with srv_json, srv_error,
 * srv_text or srv_file (the last call wins) and returns that call's result; a handler that
 * answers nothing gets a 500. It must not block for long: it holds one pool thread. */
typedef int (*srv_handler)(srv_req *req, void *ud);

/* Registers method + pattern before srv_start. Pattern segments are literals or {name} (one
 * whole segment, matching one URL-decoded segment). ENG_EINVAL: bad pattern, a duplicate,
 * or called after srv_start. */
int srv_route(srv *s, const char *method, const char *pattern, srv_handler fn, void *ud,
              unsigned flags);

/* The route table, read-only, in registration order: lets tooling and tests compare what the
 * server answers with what is documented (api/openapi.yaml) without sending requests.
 * srv_route_at gives route i's method and pattern as registered (they live as long as s);
 * ENG_EINVAL when i >= srv_route_count(s). */
size_t srv_route_count(const srv *s);
int srv_route_at(const srv *s, size_t i, const char **method, const char **pattern);

int srv_start(srv *s, char *err, size_t errlen);
int srv_port(const srv *s); /* the bound port once started, else -1 */
/* Stops accepting, waits up to stop_timeout_ms for in-flight requests, then shuts MHD down.
 * Idempotent; srv_free calls it. Never call either from a handler (it joins MHD's threads). */
void srv_stop(srv *s);
void srv_free(srv *s);

/* Prometheus text: bit_http_requests_total and bit_http_request_duration_seconds. */
int srv_metrics_text(srv *s, FILE *f);

/* Request accessors. Decoded strings are NUL-free, valid UTF-8 (else the request got 400). */
const char *srv_method(const srv_req *req);
const char *srv_path(const srv_req *req);          /* as received (raw), without the query */
const char *srv_route_pattern(const srv_req *req); /* "/v1/jobs/{id}" */
const char *srv_param(const srv_req *req, const char *name);  /* decoded; NULL if absent */
const char *srv_query(const srv_req *req, const char *name);  /* decoded, first; NULL if absent */
const char *srv_header(const srv_req *req, const char *name); /* case-insensitive */
const char *srv_remote(const srv_req *req);                   /* client address */

enum { SRV_NOBODY, SRV_MEMBODY, SRV_FILEBODY, SRV_MULTIPART };
int srv_body_kind(const srv_req *req);
uint64_t srv_body_size(const srv_req *req); /* bytes received (multipart: the raw body) */
const char *srv_body(const srv_req *req, size_t *len); /* SRV_MEMBODY, else NULL */
const char *srv_body_path(const srv_req *req);         /* SRV_FILEBODY, else NULL */
int srv_body_fd(const srv_req *req);                   /* SRV_FILEBODY (read/write), else -1 */
/* Parses a memory body (or a file body up to max_memory_body) as JSON; *out is the caller's. */
int srv_body_json(const srv_req *req, json_t **out, char *err, size_t errlen);

/* One part of a multipart/form-data body. Parts with a filename always stream to a temp file
 * (path, fd, size); others sit in memory (data, size, NUL-terminated). filename is the client's
 * basename with any directory stripped: show it, never build a path from it. */
typedef struct srv_part {
    const char *name;
    const char *filename;     /* NULL for plain fields */
    const char *content_type; /* NULL if the part had none */
    const char *data;         /* plain fields, else NULL */
    const char *path;         /* file parts, else NULL; removed when the request ends */
    int fd;                   /* file parts, else -1 */
    uint64_t size;
} srv_part;

const srv_part *srv_parts(const srv_req *req, size_t *n);
const srv_part *srv_part_get(const srv_req *req, const char *name); /* first with that name */

/* Renames an upload temp file (the body's or a part's path) to dest on the same filesystem,
 * so it outlives the request. */
int srv_keep_file(srv_req *req, const char *tmp_path, const char *dest, char *err, size_t errlen);

/* Responses. Each returns 0, or a negative code after answering 500 itself (so returning the
 * result is always safe). srv_json steals body (NULL gives a 500, for json_pack failures). */
int srv_json(srv_req *req, int status, json_t *body);
int srv_error(srv_req *req, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
int srv_text(srv_req *req, int status, const char *content_type, const char *body, size_t len);
/* Streams a regular file (sendfile); a missing one answers 404. Paths with ".." are refused. */
int srv_file(srv_req *req, int status, const char *path, const char *content_type);
/* Adds a response header (e.g. Retry-After); kept whichever response is sent. */
int srv_set_header(srv_req *req, const char *name, const char *value);

#endif
