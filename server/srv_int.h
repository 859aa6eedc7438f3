/* Internals shared by server/srv*.c: the server, request and response structures. Not for
 * handlers; everything here is owned by the srv or the srv_req it hangs from. */
#ifndef BIT_SRV_INT_H
#define BIT_SRV_INT_H

#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <time.h>

#include "engine/common.h"
#include "server/srv.h"

#define SRV_MAX_SEGS 32      /* path segments a route may have */
#define SRV_PARAM_MAX 256    /* bytes in one decoded path parameter */
#define SRV_MP_HDR_MAX 8192  /* bytes of one multipart part's header block */
#define SRV_NBUCKETS 13      /* finite latency buckets */
#define SRV_MAX_SERIES 512   /* metric series (route x method) kept */
#define SRV_SERIES_STATUSES 16

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
    struct MHD_Connection *c;
    const char *method, *path; /* MHD's, valid for the request */
    const struct srv_route *route;
    struct timespec t0;
    char remote[64];
    srv_kv *params, *query;
    size_t nparams, nquery;
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

/* srv_obs.c */
void srv__log_request(srv *s, const srv_req *r, int status, double ms, int term);
void srv__log_event(srv *s, const char *level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void srv__metrics_add(srv *s, const srv_req *r, int status, double seconds);
void srv__metrics_free(srv *s);

#endif
