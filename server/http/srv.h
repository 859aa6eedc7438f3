/* The HTTP server core on libmicrohttpd: routes with {name} parameters, bearer auth, bodies
 * in memory or streamed to temp files, multipart, JSON/file responses, parked requests answered
 * later from any thread, streaming responses (Server-Sent Events), JSON-lines logs, metrics,
 * and a front door that reads every new connection's request head before MHD sees it.
 * srv owns every srv_req and all it returns; those pointers live until the handler returns,
 * or, for a parked or streaming request, until the application lets go of its handle. */
#ifndef BIT_SRV_H
#define BIT_SRV_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Error codes: 0 or one of these, with a sentence in the caller's err buffer. They share the
 * values of the engine's ENG_E* codes on purpose, so a caller that uses both can pass either
 * on; the HTTP core itself includes nothing of the engine. */
enum {
    SRV_EIO = -1,     /* a socket or file could not be used */
    SRV_EFORMAT = -2, /* bad JSON */
    SRV_ENOMEM = -3,
    SRV_EINVAL = -4,  /* a caller's argument is out of range */
    SRV_ELIMIT = -6,  /* over a configured limit */
};

typedef struct srv srv;
typedef struct srv_req srv_req;
typedef struct srv_park srv_park;
typedef struct srv_stream srv_stream;
typedef void (*srv_gone_fn)(void *ud);

/* Zero numeric fields mean "the default" (except port, where 0 asks for an ephemeral port);
 * srv_config_init fills every default, including port 8080. Strings are copied by srv_new.
 *
 * Slow clients: a new connection is held by the front door (no MHD slot, no pool thread)
 * until its request head is complete; the head must be complete within head_timeout_ms of
 * the accept (408, or a silent close if nothing came) and of the previous answer on a
 * kept-alive connection (so that is also the keep-alive idle limit). A body must keep up
 * body_rate bytes/s over every body_window_ms, else the connection is cut (logged 408).
 * max_connections counts connections handed to MHD; complete heads wait at the door for a
 * free one (503 after head_timeout_ms), except heads for SRV_HEALTH routes, which may also
 * use health_reserve more (and are closed after their answer).
 *
 * Bad heads get the documented JSON error from the door, in the log and the metrics: malformed
 * (400), a NUL or other control byte in a header (400), conflicting or invalid Content-Length
 * (400), an unknown Transfer-Encoding (501) or version (505), a URL over max_url (414), a head
 * over max_head (431). Later requests on a kept-alive connection are read by libmicrohttpd
 * and checked again by the core, except for a NUL in a header value, at which 0.9.75 cuts the
 * value short. What 0.9.75 refuses itself (a malformed chunked body, a later head too large
 * for its pool) keeps its HTML body; the log (end "mhd_error") and the metrics show it. */
typedef struct srv_config {
    const char *address;       /* IPv4 or IPv6 literal ("::1" or "[::1]"); NULL: 127.0.0.1 */
    int port;                  /* 0: ephemeral, read it back with srv_port */
    unsigned threads;          /* MHD thread pool; default 4 */
    unsigned max_connections;  /* connections MHD serves at once; default 256 */
    unsigned max_per_ip;       /* connections per client address (429 beyond); default 64;
                                  UINT_MAX: no limit */
    size_t max_head;           /* request line + headers (431 beyond); 16 KiB, at least
                                  max_url + 1 KiB, at most 64 KiB */
    unsigned head_timeout_ms;  /* see above; default 10000 */
    unsigned body_rate;        /* minimum body bytes/s, see above; default 1024 */
    unsigned body_window_ms;   /* the window body_rate is measured over; default 10000 */
    unsigned health_reserve;   /* extra connections for SRV_HEALTH routes; default 4 */
    size_t conn_memory;        /* per-connection MHD pool; 64 KiB, at least 2 max_head + 16 KiB */
    unsigned timeout_s;        /* idle timeout of a connection MHD serves; default 30 */
    uint64_t max_body;         /* streamed bodies and multipart totals; default 2 GiB */
    size_t max_memory_body;    /* bodies and multipart fields kept in memory; default 1 MiB */
    size_t max_url;            /* request target length; default 4096 */
    unsigned max_query;        /* query parameters per request; default 64 */
    unsigned max_parts;        /* multipart parts per request; default 64 */
    unsigned stop_timeout_ms;  /* how long srv_stop waits for in-flight requests; 10000 */
    unsigned park_timeout_ms;  /* srv_park_open's timeout when given 0; 30000 */
    unsigned max_streams;      /* open streams (503 beyond); default 64 */
    size_t stream_buffer;      /* bytes a stream may hold for a slow reader; 256 KiB */
    const char *temp_dir;      /* where uploads stream to; NULL: $TMPDIR or /tmp */
    const char *token;         /* bearer token every non-public route needs; NULL/"": none */
    FILE *log;                 /* JSON lines, one per request; NULL: stderr */
} srv_config;

void srv_config_init(srv_config *cfg);

/* cfg may be NULL (all defaults). The server is not listening until srv_start. */
int srv_new(const srv_config *cfg, srv **out, char *err, size_t errlen);

/* Route flags: SRV_PUBLIC skips the bearer check; SRV_HEALTH lets the route use the
 * connections held back for health checks (health_reserve), so a liveness probe still gets
 * in when every other slot is taken: for cheap routes such as /healthz. One SRV_BODY_* mode
 * says where the body goes. A multipart/form-data body on any mode but NONE is parsed into
 * parts instead. GET routes also answer HEAD (the same headers, no body). */
enum {
    SRV_PUBLIC = 1,
    SRV_HEALTH = 1 << 3,
    SRV_BODY_NONE = 0 << 1,   /* a non-empty body gets 413 */
    SRV_BODY_MEMORY = 1 << 1, /* in memory, at most max_memory_body, NUL-terminated */
    SRV_BODY_FILE = 2 << 1,   /* always a temp file (possibly empty), at most max_body */
    SRV_BODY_AUTO = 3 << 1,   /* memory while small, a temp file past max_memory_body */
};
#define SRV_BODY_MASK (3 << 1)

/* Runs on an MHD thread once the whole body has arrived. It answers with srv_json, srv_error,
 * srv_text or srv_file (the last call wins) and returns that call's result; a handler that
 * answers nothing gets a 500. It must not block for long: it holds one pool thread. To answer
 * later, it parks the request (srv_park_open) or opens a stream (srv_stream_open) and returns. */
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
/* Stops accepting (the listening socket closes at once), ends every stream (gone runs; what
 * is buffered is still sent), waits up to stop_timeout_ms for in-flight requests, parked ones
 * included, except that parked requests still unanswered when a fifth of the grace period (at
 * most a second) is left get 503 "shutting_down" (gone runs); then shuts MHD down.
 * Idempotent; srv_free calls it. Never call either from a handler (it joins MHD's threads).
 * Handles may still be completed or closed after srv_stop (the call only lets go of them), but
 * every one must be before srv_free. */
void srv_stop(srv *s);
void srv_free(srv *s);

/* Prometheus text: bit_http_requests_total, bit_http_request_duration_seconds, connections,
 * parked requests, streams, and bit_http_connections_cut_total by reason. */
int srv_metrics_text(srv *s, FILE *f);

/* Request accessors. Decoded strings are NUL-free, valid UTF-8 (else the request got 400). */
const char *srv_method(const srv_req *req);
const char *srv_path(const srv_req *req);          /* as received (raw), without the query */
const char *srv_route_pattern(const srv_req *req); /* "/v1/jobs/{id}" */
const char *srv_param(const srv_req *req, const char *name);  /* decoded; NULL if absent */
const char *srv_query(const srv_req *req, const char *name);  /* decoded, first; NULL if absent */
/* The first query parameter whose name is not in known (a NULL-terminated list), or NULL
 * when every one is known: handlers refuse what they would otherwise silently ignore. */
const char *srv_query_unknown(const srv_req *req, const char *const *known);
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
/* Hands an upload temp file over to the caller as it is: the server no longer removes it when
 * the request ends (the caller renames or removes it). SRV_EINVAL if it is not this request's. */
int srv_take_file(srv_req *req, const char *tmp_path);

/* Responses. Each returns 0, or a negative code after answering 500 itself (so returning the
 * result is always safe). srv_json steals body (NULL gives a 500, for json_pack failures).
 * Every answer, the door's included, carries X-Content-Type-Options: nosniff. */
int srv_json(srv_req *req, int status, json_t *body);
int srv_error(srv_req *req, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
int srv_text(srv_req *req, int status, const char *content_type, const char *body, size_t len);
/* Streams a regular file (sendfile); a missing one answers 404. Paths with ".." are refused. */
int srv_file(srv_req *req, int status, const char *path, const char *content_type);
/* Adds a response header (e.g. Retry-After); kept whichever response is sent. */
int srv_set_header(srv_req *req, const char *name, const char *value);

/* ---- Parking: answer later, from any thread, without holding a pool thread ----
 *
 * A handler calls srv_park_open and returns; the connection is suspended, and the request
 * (params, query, headers, body, parts, temp files) stays valid. Exactly one completion call,
 * srv_park_json, srv_park_error or srv_park_text, must follow for every handle, from any
 * thread: it answers the client if the request still waits, else discards the answer (and
 * returns SRV_EIO); either way it releases the handle, which the caller must not use again.
 * The server ends a parked request without the application when the client hangs up (its
 * FIN, even a half-close; no answer is sent), when timeout_ms passes (503 "timeout" with
 * Retry-After: 1; the server is the origin, not a gateway, and the cause is an overloaded
 * backend, so not 504) or when srv_stop fails it (503); then gone(ud) runs once, on a server
 * thread, outside every lock.
 * A completion racing that is safe: one of them wins under the handle's lock. gone never
 * starts after a completion call has begun, and a completion waits for a running gone to
 * return (unless gone itself completes the handle): so the application may free ud right
 * after its completion call. Hence: do not complete while holding a lock gone takes. gone
 * must be quick and never block: it may run on the thread that accepts every connection.
 * After srv_park_open the handler must not call srv_json/srv_error/srv_text/srv_file/
 * srv_set_header on the request (use srv_park_header). */

/* timeout_ms 0: the configured park_timeout_ms. gone may be NULL. NULL: the request was
 * already answered (500 if not called from a handler or called twice, 503 while stopping);
 * the handler just returns. */
srv_park *srv_park_open(srv_req *req, unsigned timeout_ms, srv_gone_fn gone, void *ud);
/* The request's data for the completing thread; valid until the completion call. */
const srv_req *srv_park_req(const srv_park *p);
/* A header for the answer to come (e.g. Retry-After); SRV_EIO once the request has ended. */
int srv_park_header(srv_park *p, const char *name, const char *value);
int srv_park_json(srv_park *p, int status, json_t *body); /* steals body, as srv_json */
int srv_park_error(srv_park *p, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
int srv_park_text(srv_park *p, int status, const char *content_type, const char *body,
                  size_t len);

/* ---- Streaming responses (Server-Sent Events): write from any thread ----
 *
 * A handler calls srv_stream_open and returns; headers go out at once (chunked for HTTP/1.1,
 * close-delimited for 1.0) and every srv_stream_write follows in order. While nothing is
 * buffered the connection is suspended: an idle stream holds no pool thread. Writes are
 * buffered whole, up to stream_buffer bytes not yet taken by the client: a write that would
 * pass that cuts the stream (slow reader policy: the client is disconnected, never sent a
 * torn or partial event; an SSE client reconnects with Last-Event-ID) and returns
 * SRV_ELIMIT. gone(ud) runs once (quick, never blocking, as for parking), on a server thread,
 * outside every lock, when the stream ends before srv_stream_close: client hang-up, cut,
 * srv_stop; it may run before the handler has returned, and never after srv_stream_close has
 * begun (which waits for a running one). Then writes return SRV_EIO.
 * Every handle must be closed with srv_stream_close exactly once, from any thread: it ends a
 * live stream after what is buffered, and releases the handle. */

/* NULL: the request was answered instead (503 "too_many_streams" with Retry-After past
 * max_streams, 503 while stopping, 500 when misused; a HEAD request gets the headers only). */
srv_stream *srv_stream_open(srv_req *req, int status, const char *content_type,
                            srv_gone_fn gone, void *ud);
const srv_req *srv_stream_req(const srv_stream *st); /* valid until srv_stream_close */
/* 0, SRV_EIO (the stream has ended), SRV_ELIMIT (the reader is too far behind: cut). */
int srv_stream_write(srv_stream *st, const void *data, size_t len);
/* Bytes a write may add now without cutting the stream (stream_buffer minus what the client
 * has not taken yet); 0 once it has ended. A writer with a backlog of its own (it can fetch
 * again what it holds back) paces itself with it instead of being cut. */
size_t srv_stream_room(srv_stream *st);
/* Writes text (under 64 bytes, e.g. ":\n\n" for SSE) whenever nothing was written for
 * every_ms; 0 stops it. Heartbeats also find dead peers behind idle proxies. */
int srv_stream_heartbeat(srv_stream *st, unsigned every_ms, const char *text);
void srv_stream_close(srv_stream *st);

#endif
