/* Internals shared by server/http/srv*.c: the server, connection, request and response
 * structures. Not for handlers; everything here is owned by the srv or the srv_req it hangs
 * from (a parked or streaming request lives until both MHD and the application let go). */
#ifndef BIT_SRV_INT_H
#define BIT_SRV_INT_H

#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <time.h>

#include "server/http/srv.h"

#define SRV_MAX_SEGS 32      /* path segments a route may have */
#define SRV_PARAM_MAX 256    /* bytes in one decoded path parameter */
#define SRV_MP_HDR_MAX 8192  /* bytes of one multipart part's header block */
#define SRV_NBUCKETS 13      /* finite latency buckets */
#define SRV_MAX_SERIES 512   /* metric series (route x method) kept */
#define SRV_SERIES_STATUSES 16
#define SRV_IP_BUCKETS 256   /* per-address connection counts */
#define SRV_LINGER_MS 2000   /* how long a refused connection is drained before close */
#define SRV_LINGER_MAX 256   /* refused connections drained at once; more are just closed */

typedef struct srv_kv {
    char *k, *v;
} srv_kv;

struct srv_route {
    char *method, *pattern;
    char *segs[SRV_MAX_SEGS]; /* literal text, or NULL for a {param} */
    char *names[SRV_MAX_SEGS];
    size_t nseg;
    srv_handler fn;
    void *ud;
    unsigned flags;
};

struct srv_series {
    const char *route, *method; /* both live as long as the srv */
    uint64_t buckets[SRV_NBUCKETS], count;
    double sum;
    int status[SRV_SERIES_STATUSES];
    uint64_t by_status[SRV_SERIES_STATUSES + 1]; /* last slot: "other" */
};

/* Why the server cut connections (bit_http_connections_cut_total{reason}). */
enum { SRV_CUT_PER_IP, SRV_CUT_HEAD_TIMEOUT, SRV_CUT_IDLE, SRV_CUT_SLOW_BODY, SRV_CUT_BAD_HEAD,
       SRV_CUT_BUSY, SRV_CUT_EVICTED, SRV_CUT_N };

/* One client connection from accept to close. The front door (srv_door.c) owns it while it
 * reads the head; then MHD owns the socket and the record stays on s->held until MHD's
 * NOTIFY_CLOSED, which comes before MHD closes the socket: so while a record is on s->held
 * (under s->lmu) its fd is still that connection's and the loop may shutdown() it. */
enum { SRV_C_DOOR, SRV_C_QUEUED, SRV_C_LINGER, SRV_C_HANDING, SRV_C_HELD };
/* What the MHD-side deadlines watch: IDLE (before a request line) and HEAD must end within
 * head_timeout_ms of the idle time's start, BODY must keep up body_rate, BUSY is free. */
enum { SRV_PH_IDLE, SRV_PH_HEAD, SRV_PH_BODY, SRV_PH_BUSY };

struct srv_conn {
    int fd, where;
    struct sockaddr_storage addr;
    socklen_t alen;
    unsigned char ip[16];
    char remote[64];
    uint64_t t0, until;   /* accept; the door's head deadline or the linger's end (ms) */
    size_t peeked;        /* head bytes seen by the door */
    int counted;          /* in the per-address count */
    char lm[16], lp[112]; /* a complete head's method and path, for the log */
    int health, reserved; /* a SRV_HEALTH head; admitted into the reserve (closed after) */
    int phase;            /* MHD side, under s->lmu from here on */
    uint64_t t_phase, win_t, win_bytes;
    atomic_uint_fast64_t body_bytes;
    int cut;              /* SRV_CUT_* + 1 once the loop shut it down */
    struct srv_conn *prev, *next;
};

struct srv_list {
    struct srv_conn *head, *tail;
    size_t n;
};

/* The loop's poll set: who[i] says what pf[i] is (a srv_conn, a srv_watch, or the srv itself
 * for the listening socket). */
struct srv_pollset {
    struct pollfd *pf;
    void **who;
    size_t n, cap;
};

struct srv_ipc {
    unsigned char ip[16];
    unsigned n;
    struct srv_ipc *next;
};

/* What the front door learnt from a request head (srv_head.c). */
typedef struct srv_head {
    int status; /* 0: complete and valid; -1: incomplete; else the HTTP status refusing it */
    const char *code;
    char msg[96];
    const char *method, *target; /* into the checked buffer */
    size_t method_len, target_len, head_len;
    int http11, chunked, has_length, hosts;
    uint64_t length;
} srv_head;

/* A parked or streaming request as the loop watches it: its socket for a hang-up while MHD,
 * which does not poll suspended connections, cannot see one. On s->watch under s->lmu from
 * srv_park_open/srv_stream_open until on_completed. */
enum { SRV_W_PARK, SRV_W_STREAM };
struct srv_watch {
    int kind, fd, stopped;
    srv_req *r;
    struct srv_watch *prev, *next;
};

/* The gone callback runs at most once, outside every lock; state: 0 not yet, 1 running (on
 * thread th), 2 done or never (the application answered or closed first). */
struct srv_gone {
    srv_gone_fn fn;
    void *ud;
    int state;
    pthread_t th;
};

/* A parked request. state leaves PARKED once, under mu, and whoever moves it resumes the MHD
 * connection in the same critical section: MHD never closes a suspended connection, so the
 * connection is alive for that resume and never resumed twice. */
enum { SRV_PK_PARKED, SRV_PK_ANSWERED, SRV_PK_TIMEOUT, SRV_PK_GONE, SRV_PK_STOPPED };
struct srv_park {
    struct srv_watch w; /* first */
    pthread_mutex_t mu;
    pthread_cond_t cv; /* a completion waits here for a running gone callback */
    int state;
    uint64_t deadline;
    struct srv_gone gone;
};

/* A streaming response: a bounded buffer MHD's content reader drains. The reader suspends the
 * connection when the buffer is empty (suspended = 1) and a write resumes it; c is NULL once
 * MHD has finished with the connection. */
enum { SRV_ST_OPEN, SRV_ST_CLOSING, SRV_ST_DEAD };
struct srv_stream {
    struct srv_watch w; /* first */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int state, suspended, cut, status;
    struct MHD_Connection *c;
    char *buf;
    size_t head, len, cap, limit;
    unsigned beat_ms;
    char beat[64];
    size_t beat_len;
    uint64_t last; /* last write (ms), for heartbeats */
    uint64_t sent; /* bytes handed to MHD, for the log */
    struct srv_gone gone;
};

struct srv {
    srv_config cfg; /* strings point at the copies below */
    char *address, *temp_dir, *token;
    size_t token_len;
    struct sockaddr_storage addr;
    int v6;
    struct srv_route *routes;
    size_t nroutes, caproutes;
    struct MHD_Daemon *d;
    int port;
    atomic_int stopping;
    pthread_mutex_t mu; /* inflight, cv, mhd_err */
    pthread_cond_t cv;
    unsigned inflight;
    char mhd_err[256];
    pthread_mutex_t mmu; /* metrics */
    struct srv_series *series;
    size_t nseries, capseries;
    uint64_t series_dropped;
    atomic_uint_fast64_t cuts[SRV_CUT_N];
    /* the loop thread (srv_loop.c): the front door, deadlines, parked and streaming requests */
    int lfd, efd;
    pthread_t loop;
    int loop_started;
    char *peek;                       /* the loop's head buffer, max_head + 1 bytes */
    size_t door_max;                  /* connections the door holds at once */
    uint64_t accept_paused_until;     /* out of descriptors: stop accepting for a moment */
    struct srv_list door, queued, linger; /* the loop thread's own */
    pthread_mutex_t lmu;              /* everything below; a leaf: nothing is locked under it */
    pthread_cond_t lcv;
    int door_closing, door_closed, parks_closed, streams_closed, loop_quit;
    struct srv_list handing, held;
    struct srv_ipc *ips[SRV_IP_BUCKETS];
    struct srv_watch *watch;
    unsigned nparked, nstreams;
};

struct srv_tmpfile {
    char *path;
    int fd, kept;
};

struct srv_mp; /* multipart parser, srv_body.c */

/* The response being built: a buffer (freed with body_free) or a file descriptor. */
struct srv_out {
    int status, set;
    char *body;
    size_t len;
    void (*body_free)(void *);
    int fd;
    uint64_t fsize;
    char ctype[128];
    srv_kv *hdrs;
    size_t nhdrs;
};

struct srv_req {
    srv *s;
    struct MHD_Connection *c; /* NULL once MHD has finished with the request */
    const char *method, *path; /* MHD's, or the copies below once snapshot */
    const struct srv_route *route;
    struct timespec t0;
    char remote[64];
    srv_kv *params, *query;
    size_t nparams, nquery;
    /* lifetime: MHD holds one reference until on_completed, the application one while the
     * request is parked or streaming; the last one frees it (srv__req_unref) */
    atomic_int refs;
    int begun;             /* the access handler has seen it */
    int in_handler;        /* the route's handler is running (srv_park_open, srv_stream_open) */
    struct srv_conn *conn; /* MHD side record; NULL once completed */
    char *uri;             /* the raw target, for requests MHD refused before our handler */
    const char *end;       /* overrides the log's termination name */
    srv_kv *hsnap;         /* headers copied for a request that outlives MHD's buffers */
    size_t nhsnap;
    char *msnap, *psnap;
    struct srv_park *park;
    struct srv_stream *stream;
    /* body */
    int mode, kind;
    uint64_t cap, received;
    char *mem;
    size_t mlen, mcap;
    struct srv_tmpfile *tmp;
    size_t ntmp, captmp;
    int body_tmp; /* index in tmp, or -1 */
    struct srv_mp *mp;
    srv_part *parts;
    size_t nparts, capparts;
    /* response */
    struct srv_out out;
    int queued, sent_status;
    uint64_t sent_bytes;
};

/* srv.c. Formats the message into err (if non-NULL) and returns code. */
int srv__errf(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* srv_route.c. srv__match sets route and params, or says why not (allow: for 405). */
enum { SRV_M_OK, SRV_M_NOTFOUND, SRV_M_METHOD, SRV_M_BADENC, SRV_M_BADPARAM, SRV_M_LIMIT,
       SRV_M_NOMEM };
int srv__pct_decode(const char *in, size_t n, int plus, char *out, size_t *outlen);
int srv__match(srv_req *r, char *allow, size_t allowlen);
int srv__parse_query(srv_req *r);
int srv__auth_ok(const srv *s, const char *authorization);
void srv__kv_free(srv_kv *kv, size_t n);
void srv__routes_free(srv *s);

/* srv_body.c. srv__mp_new starts the multipart parser for a Content-Type (srv__body_begin
 * does when the request has one); separate so the parser can be driven without MHD. */
int srv__mp_new(srv_req *r, const char *ctype);
int srv__body_begin(srv_req *r);
int srv__body_feed(srv_req *r, const char *p, size_t n);
int srv__body_finish(srv_req *r);
void srv__body_free(srv_req *r);

/* srv_resp.c. srv__fail sets an error response like srv_error and returns a negative code. */
int srv__fail(srv_req *r, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
enum MHD_Result srv__queue(srv_req *r);
enum MHD_Result srv__reject_midstream(srv_req *r);
void srv__out_free(struct srv_out *o);

enum MHD_Result srv__queue_response(srv_req *r, struct MHD_Response *resp, int status,
                                   uint64_t bytes);
int srv__verror(srv_req *r, int status, const char *code, const char *fmt, va_list ap);

/* srv_obs.c. end: the termination name in the log ("ok", "client_abort", "rejected", ...). */
void srv__log_request(srv *s, const srv_req *r, int status, double ms, const char *end);
void srv__log_line(srv *s, const char *method, const char *path, const struct srv_route *rt,
                   int status, uint64_t bytes, double ms, const char *remote, const char *end);
void srv__log_event(srv *s, const char *level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
const char *srv__term_name(int tc);
void srv__metrics_add(srv *s, const srv_req *r, int status, double seconds);
void srv__metrics_count(srv *s, const struct srv_route *rt, const char *method, int status,
                        double seconds);
void srv__metrics_free(srv *s);

/* srv_route.c: the route a method and raw path would take (NULL: none), for the door. */
const struct srv_route *srv__find(const srv *s, const char *method, const char *path);

/* srv_head.c */
int srv__head_check(const char *buf, size_t n, const srv_config *c, srv_head *h);

/* srv_door.c: the front door and the deadlines of connections MHD holds (loop thread). */
int srv__door_open(srv *s, char *err, size_t errlen);
void srv__door_fill(srv *s, struct srv_pollset *ps, uint64_t now, uint64_t *next);
void srv__door_run(srv *s, const struct pollfd *pf, void *const *who, size_t n, uint64_t now);
void srv__door_shut(srv *s, uint64_t now);
void srv__door_free(srv *s);
void srv__notify_conn(void *cls, struct MHD_Connection *mc, void **sctx,
                      enum MHD_ConnectionNotificationCode toe);
int srv__conn_phase(srv *s, struct srv_conn *c, int phase, uint64_t now);

/* srv_async.c: parked and streaming requests. */
size_t srv__async_fill(srv *s, struct srv_pollset *ps);
void srv__async_next(struct srv_pollset *ps, size_t from, uint64_t *next);
void srv__async_run(srv *s, struct srv_pollset *ps, size_t from, uint64_t now);
enum MHD_Result srv__async_access(srv_req *r);
enum MHD_Result srv__queue_stream(srv_req *r);
void srv__async_completed(srv_req *r);
enum { SRV_STOP_STREAMS, SRV_STOP_PARKS };
void srv__async_stop(srv *s, int which);

/* srv_loop.c */
uint64_t srv__now_ms(void);
int srv__loop_start(srv *s, char *err, size_t errlen);
void srv__loop_wake(srv *s);
void srv__loop_close_door(srv *s);
void srv__loop_stop(srv *s);

/* srv.c */
void srv__req_unref(srv_req *r);

#endif
