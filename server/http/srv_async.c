/* Requests that outlive their handler: parked ones, answered later from any thread, and
 * streaming responses written from any thread. Neither holds an MHD pool thread while it
 * waits: the connection is suspended, and the loop thread (srv_loop.c) watches its socket
 * for a hang-up, which MHD does not poll while a connection is suspended, and its deadlines.
 *
 * Races, and who wins: the application's answer (or close), the loop (timeout, hang-up),
 * MHD's completion and srv_stop all take the item's mutex, and only the first to move the
 * state away from PARKED/OPEN acts; a parked connection is resumed exactly once, by it, while
 * MHD still holds the connection suspended. The request's memory is shared by reference
 * (srv_req.refs): MHD's until on_completed, the application's until its completion call, and
 * the loop's for one turn; so a late answer finds its handle valid and is just discarded. */
#include "server/http/srv_int.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

/* ---- what both kinds share ---- */

struct hcopy {
    srv_req *r;
    int fail;
};

static enum MHD_Result copy_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                   const char *value)
{
    struct hcopy *h = cls;
    srv_kv *kv = &h->r->hsnap[h->r->nhsnap++];
    kv->k = strdup(key);
    kv->v = strdup(value ? value : "");
    h->fail |= !kv->k || !kv->v;
    return MHD_YES;
}

/* Copies what the request reads from MHD's connection (method, path, headers), which the
 * connection frees when it ends, possibly before the application answers. */
static int snapshot(srv_req *r)
{
    int n = MHD_get_connection_values(r->c, MHD_HEADER_KIND, NULL, NULL);
    r->msnap = strdup(r->method);
    r->psnap = strdup(r->path);
    r->hsnap = calloc(n > 0 ? (size_t)n : 1, sizeof *r->hsnap);
    if (!r->msnap || !r->psnap || !r->hsnap) return SRV_ENOMEM;
    struct hcopy h = {r, 0};
    MHD_get_connection_values(r->c, MHD_HEADER_KIND, copy_header, &h);
    r->method = r->msnap;
    r->path = r->psnap;
    return h.fail ? SRV_ENOMEM : 0;
}

static int async_init(srv_req *r, struct srv_watch *w, pthread_mutex_t *mu, pthread_cond_t *cv,
                      int kind)
{
    if (!r->in_handler || r->park || r->stream) {
        srv__fail(r, 500, "internal", "parked or streamed outside a handler, or twice");
        return SRV_EINVAL;
    }
    if (snapshot(r) != 0) return srv__fail(r, 500, "internal", "out of memory");
    w->kind = kind;
    w->r = r;
    w->fd = r->conn ? r->conn->fd : -1;
    if (w->fd < 0) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(r->c, MHD_CONNECTION_INFO_CONNECTION_FD);
        w->fd = ci ? ci->connect_fd : -1;
    }
    pthread_mutex_init(mu, NULL);
    pthread_cond_init(cv, NULL);
    return 0;
}

/* Under lmu. */
static void watch_add(srv *s, struct srv_watch *w)
{
    w->prev = NULL;
    w->next = s->watch;
    if (s->watch) s->watch->prev = w;
    s->watch = w;
    if (w->kind == SRV_W_PARK) s->nparked++;
    else s->nstreams++;
}

static void watch_del(srv *s, struct srv_watch *w)
{
    if (w->prev) w->prev->next = w->next;
    else s->watch = w->next;
    if (w->next) w->next->prev = w->prev;
    if (w->kind == SRV_W_PARK) s->nparked--;
    else s->nstreams--;
}

/* Under the item's mutex: takes the gone callback for this thread if it may still run. */
static int gone_claim(struct srv_gone *g)
{
    if (g->state != 0) return 0;
    g->state = 1;
    g->th = pthread_self();
    return 1;
}

/* Runs a claimed callback outside every lock. The caller holds a reference on the request:
 * the callback may complete the request, and the item must outlive the unlock after it. */
static void gone_run(pthread_mutex_t *mu, pthread_cond_t *cv, struct srv_gone *g)
{
    g->fn(g->ud);
    pthread_mutex_lock(mu);
    g->state = 2;
    pthread_cond_broadcast(cv);
    pthread_mutex_unlock(mu);
}

/* Under the item's mutex, for the application's last call: waits out a running callback
 * (unless this thread is running it) and makes sure it never starts afterwards. */
static void gone_settle(pthread_mutex_t *mu, pthread_cond_t *cv, struct srv_gone *g)
{
    while (g->state == 1 && !pthread_equal(g->th, pthread_self())) pthread_cond_wait(cv, mu);
    if (g->state == 0) g->state = 2;
}

/* ---- parking ---- */

srv_park *srv_park_open(srv_req *r, unsigned timeout_ms, srv_gone_fn gone, void *ud)
{
    srv *s = r->s;
    struct srv_park *p = calloc(1, sizeof *p);
    if (!p) {
        srv__fail(r, 500, "internal", "out of memory");
        return NULL;
    }
    if (async_init(r, &p->w, &p->mu, &p->cv, SRV_W_PARK) != 0) {
        free(p);
        return NULL;
    }
    p->state = SRV_PK_PARKED;
    p->deadline = srv__now_ms() + (timeout_ms ? timeout_ms : s->cfg.park_timeout_ms);
    p->gone = (struct srv_gone){gone, ud, gone ? 0 : 2, pthread_self()};
    /* Held until suspended, so that nobody resumes a connection not yet suspended. */
    pthread_mutex_lock(&p->mu);
    pthread_mutex_lock(&s->lmu);
    int closed = s->parks_closed;
    if (!closed) watch_add(s, &p->w);
    pthread_mutex_unlock(&s->lmu);
    if (closed) {
        pthread_mutex_unlock(&p->mu);
        pthread_mutex_destroy(&p->mu);
        pthread_cond_destroy(&p->cv);
        free(p);
        srv__fail(r, 503, "shutting_down", "the server is stopping");
        return NULL;
    }
    r->park = p;
    atomic_fetch_add(&r->refs, 1);
    MHD_suspend_connection(r->c);
    pthread_mutex_unlock(&p->mu);
    srv__loop_wake(s);
    return p;
}

const srv_req *srv_park_req(const srv_park *p) { return p->w.r; }

int srv_park_header(srv_park *p, const char *name, const char *value)
{
    pthread_mutex_lock(&p->mu);
    int rc = p->state == SRV_PK_PARKED ? srv_set_header(p->w.r, name, value) : SRV_EIO;
    pthread_mutex_unlock(&p->mu);
    return rc;
}

/* Locks p for the application's answer: 1 when the request still waits for one. */
static int answer_begin(srv_park *p)
{
    pthread_mutex_lock(&p->mu);
    gone_settle(&p->mu, &p->cv, &p->gone);
    return p->state == SRV_PK_PARKED;
}

/* Sends the response set on the request (if live) and lets go of the handle. */
static int answer_end(srv_park *p, int live, int rc)
{
    srv_req *r = p->w.r;
    if (live) {
        p->state = SRV_PK_ANSWERED;
        MHD_resume_connection(r->c);
    }
    pthread_mutex_unlock(&p->mu);
    srv__req_unref(r);
    return live ? rc : SRV_EIO;
}

int srv_park_json(srv_park *p, int status, json_t *body)
{
    int live = answer_begin(p), rc = 0;
    if (live) rc = srv_json(p->w.r, status, body);
    else json_decref(body);
    return answer_end(p, live, rc);
}

int srv_park_error(srv_park *p, int status, const char *code, const char *fmt, ...)
{
    int live = answer_begin(p), rc = 0;
    if (live) {
        va_list ap;
        va_start(ap, fmt);
        rc = srv__verror(p->w.r, status, code, fmt, ap);
        va_end(ap);
    }
    return answer_end(p, live, rc);
}

int srv_park_text(srv_park *p, int status, const char *ctype, const char *body, size_t len)
{
    int live = answer_begin(p);
    int rc = live ? srv_text(p->w.r, status, ctype, body, len) : 0;
    return answer_end(p, live, rc);
}

/* Under p->mu: the server ends a request still parked (why: TIMEOUT, GONE or STOPPED),
 * answering it unless the client is gone. Returns 1 when the caller must run gone. */
static int park_end(struct srv_park *p, int why)
{
    srv_req *r = p->w.r;
    if (p->state != SRV_PK_PARKED) return 0;
    p->state = why;
    if (why == SRV_PK_TIMEOUT) {
        srv_set_header(r, "Retry-After", "1");
        srv__fail(r, 503, "timeout", "no answer came in time; try again later");
    } else if (why == SRV_PK_STOPPED) {
        srv__fail(r, 503, "shutting_down", "the server is stopping");
    }
    if (r->c) MHD_resume_connection(r->c);
    return gone_claim(&p->gone);
}

static void park_tick(struct srv_park *p, int hup, uint64_t now)
{
    int why = hup ? SRV_PK_GONE : now >= p->deadline ? SRV_PK_TIMEOUT : 0;
    if (!why) return;
    pthread_mutex_lock(&p->mu);
    int run = park_end(p, why);
    pthread_mutex_unlock(&p->mu);
    if (run) gone_run(&p->mu, &p->cv, &p->gone);
}

/* MHD thread, after a resume: sends what the park ended with. */
enum MHD_Result srv__async_access(srv_req *r)
{
    struct srv_park *p = r->park;
    if (!p) return MHD_NO;
    pthread_mutex_lock(&p->mu);
    int st = p->state;
    pthread_mutex_unlock(&p->mu);
    if (st == SRV_PK_PARKED) {
        srv__log_event(r->s, "error", "a parked request was resumed without an answer");
        return MHD_NO;
    }
    if (st == SRV_PK_GONE) {
        r->end = "client_abort";
        return MHD_NO;
    }
    /* Nobody writes the response once the state has left PARKED. */
    return srv__queue(r);
}

/* ---- streaming ---- */

/* Under st->mu: no more data; the connection ends as soon as MHD looks at it again. */
static void stream_kill(struct srv_stream *st)
{
    st->state = SRV_ST_DEAD;
    st->cut = 1;
    if (!st->c) return;
    if (st->suspended) {
        st->suspended = 0;
        MHD_resume_connection(st->c);
    } else {
        /* MHD may be blocked writing to a client that stopped reading: make it see an end.
         * The socket is still the connection's: MHD closes it only after on_completed. */
        shutdown(st->w.fd, SHUT_RDWR);
    }
}

static void stream_wake(struct srv_stream *st)
{
    if (st->suspended && st->c) {
        st->suspended = 0;
        MHD_resume_connection(st->c);
    }
}

/* Under st->mu: queues bytes whole, or cuts a stream whose reader is limit bytes behind. */
static int stream_append(struct srv_stream *st, const void *d, size_t n)
{
    if (n > st->limit - st->len) {
        stream_kill(st);
        return SRV_ELIMIT;
    }
    if (st->head && st->head + st->len + n > st->cap) {
        memmove(st->buf, st->buf + st->head, st->len);
        st->head = 0;
    }
    if (st->len + n > st->cap) {
        size_t cap = st->cap ? st->cap : 4096;
        while (cap < st->len + n) cap *= 2;
        char *b = realloc(st->buf, cap < st->limit ? cap : st->limit);
        if (!b) {
            stream_kill(st);
            return SRV_ENOMEM;
        }
        st->buf = b;
        st->cap = cap < st->limit ? cap : st->limit;
    }
    memcpy(st->buf + st->head + st->len, d, n);
    st->len += n;
    st->last = srv__now_ms();
    stream_wake(st);
    return 0;
}

/* MHD's content reader (MHD thread): hands over what is buffered; with nothing buffered it
 * suspends the connection (0.9.75 allows that from a content reader; returning 0 without it
 * would have MHD poll in a busy loop) until a write, a close or a cut resumes it. */
static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct srv_stream *st = cls;
    ssize_t n;
    pthread_mutex_lock(&st->mu);
    if (st->len) {
        size_t k = st->len < max ? st->len : max;
        memcpy(buf, st->buf + st->head, k);
        st->head += k;
        st->len -= k;
        st->sent += k;
        if (!st->len) st->head = 0;
        if (!st->len && st->cap > 16384) { /* idle streams keep no big buffer */
            free(st->buf);
            st->buf = NULL;
            st->cap = 0;
        }
        n = (ssize_t)k;
    } else if (st->cut) {
        n = MHD_CONTENT_READER_END_WITH_ERROR;
    } else if (st->state == SRV_ST_CLOSING) {
        n = MHD_CONTENT_READER_END_OF_STREAM;
    } else {
        st->suspended = 1;
        MHD_suspend_connection(st->c);
        n = 0;
    }
    pthread_mutex_unlock(&st->mu);
    return n;
}

srv_stream *srv_stream_open(srv_req *r, int status, const char *ctype, srv_gone_fn gone, void *ud)
{
    srv *s = r->s;
    if (r->in_handler && !r->park && !r->stream && !strcmp(r->method, "HEAD")) {
        srv_text(r, status, ctype, "", 0); /* MHD would never read a HEAD's body anyway */
        return NULL;
    }
    struct srv_stream *st = calloc(1, sizeof *st);
    if (!st) {
        srv__fail(r, 500, "internal", "out of memory");
        return NULL;
    }
    if (async_init(r, &st->w, &st->mu, &st->cv, SRV_W_STREAM) != 0) {
        free(st);
        return NULL;
    }
    pthread_mutex_lock(&s->lmu);
    int refuse = s->streams_closed ? 1 : s->nstreams >= s->cfg.max_streams ? 2 : 0;
    if (!refuse) watch_add(s, &st->w);
    pthread_mutex_unlock(&s->lmu);
    if (refuse) {
        pthread_mutex_destroy(&st->mu);
        pthread_cond_destroy(&st->cv);
        free(st);
        if (refuse == 1) srv__fail(r, 503, "shutting_down", "the server is stopping");
        if (refuse == 2) srv_set_header(r, "Retry-After", "5");
        if (refuse == 2) srv__fail(r, 503, "too_many_streams", "over %u open streams",
                                   s->cfg.max_streams);
        return NULL;
    }
    st->status = status < 100 || status > 599 ? 500 : status;
    st->limit = s->cfg.stream_buffer;
    st->last = srv__now_ms();
    st->gone = (struct srv_gone){gone, ud, gone ? 0 : 2, pthread_self()};
    snprintf(r->out.ctype, sizeof r->out.ctype, "%s", ctype ? ctype : "text/event-stream");
    r->stream = st;
    atomic_fetch_add(&r->refs, 1);
    srv__loop_wake(s);
    return st;
}

const srv_req *srv_stream_req(const srv_stream *st) { return st->w.r; }

int srv_stream_write(srv_stream *st, const void *data, size_t len)
{
    pthread_mutex_lock(&st->mu);
    int rc = st->state != SRV_ST_OPEN ? SRV_EIO : len ? stream_append(st, data, len) : 0;
    pthread_mutex_unlock(&st->mu);
    return rc;
}

size_t srv_stream_room(srv_stream *st)
{
    pthread_mutex_lock(&st->mu);
    size_t room = st->state == SRV_ST_OPEN ? st->limit - st->len : 0;
    pthread_mutex_unlock(&st->mu);
    return room;
}

int srv_stream_heartbeat(srv_stream *st, unsigned every_ms, const char *text)
{
    size_t n = text ? strlen(text) : 0;
    if (n >= sizeof st->beat || (every_ms && !n)) return SRV_EINVAL;
    pthread_mutex_lock(&st->mu);
    int rc = st->state == SRV_ST_OPEN ? 0 : SRV_EIO;
    if (!rc) {
        memcpy(st->beat, text ? text : "", n);
        st->beat_len = n;
        st->beat_ms = every_ms;
    }
    pthread_mutex_unlock(&st->mu);
    if (!rc) srv__loop_wake(st->w.r->s);
    return rc;
}

void srv_stream_close(srv_stream *st)
{
    if (!st) return;
    srv_req *r = st->w.r;
    pthread_mutex_lock(&st->mu);
    gone_settle(&st->mu, &st->cv, &st->gone);
    if (st->state == SRV_ST_OPEN) {
        st->state = SRV_ST_CLOSING;
        stream_wake(st);
    }
    pthread_mutex_unlock(&st->mu);
    srv__req_unref(r);
}

/* MHD thread, when the handler opened a stream: the response whose body is the stream. */
enum MHD_Result srv__queue_stream(srv_req *r)
{
    struct srv_stream *st = r->stream;
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_read, st, NULL);
    if (!resp) return MHD_NO;
    pthread_mutex_lock(&st->mu);
    st->c = r->c;
    pthread_mutex_unlock(&st->mu);
    return srv__queue_response(r, resp, st->status, 0);
}

static void stream_tick(struct srv_stream *st, int hup, uint64_t now)
{
    int run = 0;
    pthread_mutex_lock(&st->mu);
    if (hup && st->state != SRV_ST_DEAD) {
        stream_kill(st);
        run = gone_claim(&st->gone);
    } else if (st->state == SRV_ST_OPEN && st->beat_ms && now >= st->last + st->beat_ms) {
        stream_append(st, st->beat, st->beat_len); /* a reader too far behind is cut */
    }
    pthread_mutex_unlock(&st->mu);
    if (run) gone_run(&st->mu, &st->cv, &st->gone);
}

/* ---- the loop's part ---- */

/* Under lmu: every watched socket joins the poll set, its request held for the turn. */
size_t srv__async_fill(srv *s, struct srv_pollset *ps)
{
    size_t n0 = ps->n;
    for (struct srv_watch *w = s->watch; w && ps->n < ps->cap; w = w->next) {
        atomic_fetch_add(&w->r->refs, 1);
        ps->pf[ps->n] = (struct pollfd){w->fd, POLLRDHUP, 0};
        ps->who[ps->n++] = w;
    }
    return ps->n - n0;
}

/* Without lmu: the earliest park deadline or heartbeat among the watched. */
void srv__async_next(struct srv_pollset *ps, size_t from, uint64_t *next)
{
    for (size_t i = from; i < ps->n; i++) {
        struct srv_watch *w = ps->who[i];
        uint64_t t = UINT64_MAX;
        if (w->kind == SRV_W_PARK) {
            t = ((struct srv_park *)w)->deadline;
        } else {
            struct srv_stream *st = (struct srv_stream *)w;
            pthread_mutex_lock(&st->mu);
            if (st->state == SRV_ST_OPEN && st->beat_ms) t = st->last + st->beat_ms;
            pthread_mutex_unlock(&st->mu);
        }
        if (t < *next) *next = t;
    }
}

/* After poll: hang-ups, timeouts and heartbeats; then the turn's references go. */
void srv__async_run(srv *s, struct srv_pollset *ps, size_t from, uint64_t now)
{
    for (size_t i = from; i < ps->n; i++) {
        struct srv_watch *w = ps->who[i];
        int hup = (ps->pf[i].revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
        if (w->kind == SRV_W_PARK) park_tick((struct srv_park *)w, hup, now);
        else stream_tick((struct srv_stream *)w, hup, now);
    }
    for (size_t i = from; i < ps->n; i++) srv__req_unref(((struct srv_watch *)ps->who[i])->r);
}

/* MHD thread, on_completed (MHD's reference still held): MHD is done with the connection. */
void srv__async_completed(srv_req *r)
{
    struct srv_watch *w = r->park ? &r->park->w : r->stream ? &r->stream->w : NULL;
    int run = 0;
    if (!w) return;
    pthread_mutex_lock(&r->s->lmu);
    watch_del(r->s, w);
    pthread_mutex_unlock(&r->s->lmu);
    if (r->park) {
        struct srv_park *p = r->park;
        pthread_mutex_lock(&p->mu);
        r->c = NULL;
        if (p->state == SRV_PK_PARKED) { /* MHD stopped with it suspended */
            p->state = SRV_PK_STOPPED;
            run = gone_claim(&p->gone);
        }
        pthread_mutex_unlock(&p->mu);
        if (run) gone_run(&p->mu, &p->cv, &p->gone);
        return;
    }
    struct srv_stream *st = r->stream;
    pthread_mutex_lock(&st->mu);
    st->c = NULL;
    st->suspended = 0;
    st->state = SRV_ST_DEAD;
    r->sent_bytes = st->sent;
    run = gone_claim(&st->gone); /* unless the application closed it first */
    pthread_mutex_unlock(&st->mu);
    if (run) gone_run(&st->mu, &st->cv, &st->gone);
}

/* srv_stop: ends every stream (what is buffered is still sent) or fails every parked request,
 * and refuses new ones of that kind. */
void srv__async_stop(srv *s, int which)
{
    int kind = which == SRV_STOP_PARKS ? SRV_W_PARK : SRV_W_STREAM;
    for (;;) {
        pthread_mutex_lock(&s->lmu);
        if (kind == SRV_W_PARK) s->parks_closed = 1;
        else s->streams_closed = 1;
        struct srv_watch *w = s->watch;
        while (w && (w->kind != kind || w->stopped)) w = w->next;
        if (w) {
            w->stopped = 1;
            atomic_fetch_add(&w->r->refs, 1);
        }
        pthread_mutex_unlock(&s->lmu);
        if (!w) return;
        int run = 0;
        if (kind == SRV_W_PARK) {
            struct srv_park *p = (struct srv_park *)w;
            pthread_mutex_lock(&p->mu);
            run = park_end(p, SRV_PK_STOPPED);
            pthread_mutex_unlock(&p->mu);
            if (run) gone_run(&p->mu, &p->cv, &p->gone);
        } else {
            struct srv_stream *st = (struct srv_stream *)w;
            pthread_mutex_lock(&st->mu);
            if (st->state == SRV_ST_OPEN) {
                st->state = SRV_ST_CLOSING;
                stream_wake(st);
                run = gone_claim(&st->gone);
            }
            pthread_mutex_unlock(&st->mu);
            if (run) gone_run(&st->mu, &st->cv, &st->gone);
        }
        srv__req_unref(w->r);
    }
}
