/* The front door: our own listening socket, read by the loop thread (srv_loop.c) until each new
 * connection has sent a complete, valid request head, and only then handed to libmicrohttpd.
 * So a client that trickles its head (slowloris) never holds an MHD slot or pool thread, a
 * malformed head gets the documented JSON error, and SRV_HEALTH routes have slots of their own.
 * The head is read with MSG_PEEK (MHD reads it again) and SO_RCVLOWAT, so poll() wakes the loop
 * only when more of it arrives. Once MHD holds a connection, the loop keeps its deadlines:
 * the next head within head_timeout_ms of the previous answer, and a minimum body rate. */
#include "server/http/srv_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

/* ---- lists and per-address counts ---- */

static void list_push(struct srv_list *l, struct srv_conn *c)
{
    c->next = NULL;
    c->prev = l->tail;
    if (l->tail) l->tail->next = c;
    else l->head = c;
    l->tail = c;
    l->n++;
}

static void list_del(struct srv_list *l, struct srv_conn *c)
{
    if (c->prev) c->prev->next = c->next;
    else l->head = c->next;
    if (c->next) c->next->prev = c->prev;
    else l->tail = c->prev;
    c->prev = c->next = NULL;
    l->n--;
}

static unsigned ip_bucket(const unsigned char *ip)
{
    unsigned h = 2166136261u;
    for (int i = 0; i < 16; i++) h = (h ^ ip[i]) * 16777619u;
    return h % SRV_IP_BUCKETS;
}

/* Under lmu. Counts one more connection from ip: 0, or -1 at the per-address limit. */
static int ip_add(srv *s, const unsigned char *ip)
{
    struct srv_ipc **b = &s->ips[ip_bucket(ip)], *e = *b;
    while (e && memcmp(e->ip, ip, 16)) e = e->next;
    if (e && e->n >= s->cfg.max_per_ip) return -1;
    if (!e) {
        if (!(e = calloc(1, sizeof *e))) return -1;
        memcpy(e->ip, ip, 16);
        e->next = *b;
        *b = e;
    }
    e->n++;
    return 0;
}

static void ip_del(srv *s, const unsigned char *ip)
{
    struct srv_ipc **p = &s->ips[ip_bucket(ip)];
    while (*p && memcmp((*p)->ip, ip, 16)) p = &(*p)->next;
    if (!*p || --(*p)->n) return;
    struct srv_ipc *e = *p;
    *p = e->next;
    free(e);
}

/* IPv4 as v4-mapped IPv6, so one table keys both families. */
static void conn_addr(struct srv_conn *c)
{
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    strcpy(c->remote, "-");
    if (c->addr.ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)&c->addr;
        memcpy(c->ip, mapped, 12);
        memcpy(c->ip + 12, &a->sin_addr, 4);
        inet_ntop(AF_INET, &a->sin_addr, c->remote, sizeof c->remote);
    } else if (c->addr.ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&c->addr;
        memcpy(c->ip, &a->sin6_addr, 16);
        inet_ntop(AF_INET6, &a->sin6_addr, c->remote, sizeof c->remote);
    }
}

/* ---- opening and closing ---- */

int srv__door_open(srv *s, char *err, size_t errlen)
{
    int fd = socket(s->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), on = 1;
    socklen_t al = s->v6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    struct sockaddr_storage got;
    socklen_t gl = sizeof got;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) ||
        (s->v6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof on)) ||
        bind(fd, (struct sockaddr *)&s->addr, al) || listen(fd, SOMAXCONN) ||
        getsockname(fd, (struct sockaddr *)&got, &gl)) {
        int e = errno;
        if (fd >= 0) close(fd);
        return srv__errf(err, errlen, SRV_EIO, "cannot listen on %s port %d: %s", s->address,
                        s->cfg.port, strerror(e));
    }
    s->lfd = fd;
    s->port = ntohs(got.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&got)->sin6_port
                                               : ((struct sockaddr_in *)&got)->sin_port);
    /* Held heads cost a descriptor each: stay well inside the process's limit. */
    struct rlimit rl;
    size_t want = 4 * (size_t)s->cfg.max_connections + 64, room = want;
    size_t mhd = (size_t)s->cfg.max_connections + s->cfg.health_reserve + 64;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        room = rl.rlim_cur > mhd + 16 ? (size_t)rl.rlim_cur - mhd : 16;
    s->door_max = want < room ? want : room;
    return 0;
}

static void conn_free(srv *s, struct srv_conn *c)
{
    close(c->fd);
    if (c->counted) {
        pthread_mutex_lock(&s->lmu);
        ip_del(s, c->ip);
        pthread_mutex_unlock(&s->lmu);
    }
    free(c);
}

static void conn_close(srv *s, struct srv_list *l, struct srv_conn *c)
{
    list_del(l, c);
    conn_free(s, c);
}

/* ---- answers of the door's own ---- */

/* A head's method and path (query cut) as bounded C strings, for the log and the route. */
static void head_names(const srv_head *h, char *m, size_t ml, char *p, size_t pl)
{
    int known = h && h->method;
    snprintf(m, ml, "%.*s", known ? (int)h->method_len : 1, known ? h->method : "-");
    const char *t = known ? h->target : "-";
    const char *q = known ? memchr(t, '?', h->target_len) : NULL;
    size_t n = !known ? 1 : q ? (size_t)(q - t) : h->target_len;
    snprintf(p, pl, "%.*s", (int)n, t);
}

/* Writes an error answer, logs and counts it, then drains the connection for a moment so that
 * closing it does not reset the answer away. from: the list c is on, if any. */
static void door_answer(srv *s, struct srv_list *from, struct srv_conn *c, int status,
                        const char *code, const char *msg, const srv_head *h, int cut,
                        uint64_t now)
{
    char body[384], head[384], m[24], p[512];
    int bn = snprintf(body, sizeof body, "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}",
                      code, msg);
    const char *reason = MHD_get_reason_phrase_for((unsigned)status);
    int hn = snprintf(head, sizeof head,
                      "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                      "X-Content-Type-Options: nosniff\r\nConnection: close\r\n%s\r\n",
                      status, reason && *reason ? reason : "Error", bn,
                      status == 503 || status == 429 ? "Retry-After: 1\r\n" : "");
    struct iovec iov[2] = {{head, (size_t)hn}, {body, (size_t)bn}};
    struct msghdr mh = {.msg_iov = iov, .msg_iovlen = 2};
    sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
    shutdown(c->fd, SHUT_WR);
    atomic_fetch_add(&s->cuts[cut], 1);
    if (cut != SRV_CUT_PER_IP && cut != SRV_CUT_EVICTED) { /* floods are only counted */
        if (h || !c->lm[0]) head_names(h, m, sizeof m, p, sizeof p);
        else snprintf(m, sizeof m, "%s", c->lm), snprintf(p, sizeof p, "%s", c->lp);
        const struct srv_route *rt = strcmp(m, "-") ? srv__find(s, m, p) : NULL;
        double sec = (double)(now - c->t0) / 1e3;
        srv__log_line(s, m, p, rt, status, (uint64_t)(hn + bn), sec * 1e3, c->remote,
                      cut == SRV_CUT_HEAD_TIMEOUT ? "head_timeout" : "rejected");
        srv__metrics_count(s, rt, m, status, sec);
    }
    if (from) list_del(from, c);
    if (s->linger.n >= SRV_LINGER_MAX) { /* a flood costs us no more than a close */
        conn_free(s, c);
        return;
    }
    c->where = SRV_C_LINGER;
    c->until = now + SRV_LINGER_MS;
    list_push(&s->linger, c);
}

/* ---- accepting and reading heads ---- */

static void head_read(srv *s, struct srv_conn *c, int hup, uint64_t now);

static void door_take(srv *s, int fd, const struct sockaddr_storage *a, socklen_t al,
                      uint64_t now)
{
    struct srv_conn *c = calloc(1, sizeof *c);
    if (!c) {
        close(fd);
        return;
    }
    c->fd = fd;
    c->addr = *a;
    c->alen = al;
    c->t0 = now;
    c->until = now + s->cfg.head_timeout_ms;
    atomic_init(&c->body_bytes, 0);
    conn_addr(c);
    pthread_mutex_lock(&s->lmu);
    c->counted = ip_add(s, c->ip) == 0;
    pthread_mutex_unlock(&s->lmu);
    if (!c->counted) {
        door_answer(s, NULL, c, 429, "too_many_connections",
                    "too many connections from this address", NULL, SRV_CUT_PER_IP, now);
        return;
    }
    if (s->door.n >= s->door_max) /* the oldest unfinished head makes room */
        door_answer(s, &s->door, s->door.head, 503, "server_busy",
                    "too many unfinished requests", NULL, SRV_CUT_EVICTED, now);
    c->where = SRV_C_DOOR;
    list_push(&s->door, c);
    head_read(s, c, 0, now); /* the head often came with the handshake */
}

static void door_accept(srv *s, uint64_t now)
{
    for (int i = 0; i < 64; i++) { /* bounded per turn, so a flood cannot starve the rest */
        struct sockaddr_storage a;
        socklen_t al = sizeof a;
        int fd = accept4(s->lfd, (struct sockaddr *)&a, &al, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            door_take(s, fd, &a, al, now);
        } else if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
            /* Out of descriptors: the backlog waits rather than the loop spinning on it. */
            s->accept_paused_until = now + 100;
            return;
        } else if (errno != EINTR && errno != ECONNABORTED) {
            return;
        }
    }
}

static void head_read(srv *s, struct srv_conn *c, int hup, uint64_t now)
{
    ssize_t n = recv(c->fd, s->peek, s->cfg.max_head + 1, MSG_PEEK);
    if (n < 0 && (errno == EAGAIN || errno == EINTR) && !hup) return;
    if (n <= 0) { /* gone before a head: nobody to answer */
        conn_close(s, &s->door, c);
        return;
    }
    srv_head h;
    int st = srv__head_check(s->peek, (size_t)n, &s->cfg, &h);
    if (st > 0) {
        door_answer(s, &s->door, c, st, h.code, h.msg, &h, SRV_CUT_BAD_HEAD, now);
        return;
    }
    if (st < 0) {
        int low = (int)n + 1;
        if (hup) conn_close(s, &s->door, c);
        else setsockopt(c->fd, SOL_SOCKET, SO_RCVLOWAT, &low, sizeof low), c->peeked = (size_t)n;
        return;
    }
    char m[24], p[4200];
    head_names(&h, m, sizeof m, p, sizeof p);
    const struct srv_route *rt = srv__find(s, m, p);
    if (!rt && !strcmp(m, "HEAD")) rt = srv__find(s, "GET", p);
    c->health = rt && (rt->flags & SRV_HEALTH);
    snprintf(c->lm, sizeof c->lm, "%.15s", m);
    snprintf(c->lp, sizeof c->lp, "%.111s", p);
    list_del(&s->door, c);
    c->where = SRV_C_QUEUED;
    list_push(&s->queued, c);
}

/* ---- handing over to MHD ---- */

static void handoff(srv *s)
{
    unsigned max = s->cfg.max_connections, one = 1;
    for (struct srv_conn *c = s->queued.head, *nx; c; c = nx) {
        nx = c->next;
        pthread_mutex_lock(&s->lmu);
        size_t held = s->handing.n + s->held.n;
        int room = held < max || (c->health && held < (size_t)max + s->cfg.health_reserve);
        if (room) {
            list_del(&s->queued, c);
            c->where = SRV_C_HANDING;
            c->reserved = held >= max;
            c->phase = SRV_PH_IDLE;
            c->t_phase = c->t0;
            list_push(&s->handing, c);
        }
        pthread_mutex_unlock(&s->lmu);
        if (!room) continue; /* a health check further on may still use the reserve */
        setsockopt(c->fd, SOL_SOCKET, SO_RCVLOWAT, &one, sizeof one);
        if (MHD_add_connection(s->d, c->fd, (struct sockaddr *)&c->addr, c->alen) == MHD_YES)
            continue;
        /* MHD has closed the socket. */
        pthread_mutex_lock(&s->lmu);
        list_del(&s->handing, c);
        ip_del(s, c->ip);
        pthread_mutex_unlock(&s->lmu);
        srv__log_event(s, "error", "libmicrohttpd refused a connection from %s", c->remote);
        free(c);
    }
}

/* MHD's NOTIFY_CONNECTION: STARTED links MHD's connection to our record (by its socket),
 * CLOSED (called before MHD closes the socket) forgets it and frees its slot. */
void srv__notify_conn(void *cls, struct MHD_Connection *mc, void **sctx,
                      enum MHD_ConnectionNotificationCode toe)
{
    srv *s = cls;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CONNECTION_FD);
        pthread_mutex_lock(&s->lmu);
        struct srv_conn *c = s->handing.head;
        while (c && (!ci || c->fd != ci->connect_fd)) c = c->next;
        if (c) {
            list_del(&s->handing, c);
            c->where = SRV_C_HELD;
            list_push(&s->held, c);
        }
        pthread_mutex_unlock(&s->lmu);
        *sctx = c;
        return;
    }
    struct srv_conn *c = *sctx;
    if (!c) return;
    *sctx = NULL;
    pthread_mutex_lock(&s->lmu);
    list_del(&s->held, c);
    ip_del(s, c->ip);
    pthread_mutex_unlock(&s->lmu);
    free(c);
    srv__loop_wake(s); /* a slot is free for a queued head */
}

/* MHD thread: the request on c moved on (SRV_PH_*). A head's deadline counts from the start
 * of the idle time before it (the previous answer, or the accept). Returns c->cut. */
int srv__conn_phase(srv *s, struct srv_conn *c, int phase, uint64_t now)
{
    if (!c) return 0;
    pthread_mutex_lock(&s->lmu);
    if (phase != SRV_PH_HEAD) c->t_phase = now;
    c->phase = phase;
    if (phase == SRV_PH_BODY) {
        c->win_t = now;
        c->win_bytes = 0;
        atomic_store(&c->body_bytes, 0);
    }
    int cut = c->cut;
    pthread_mutex_unlock(&s->lmu);
    return cut;
}

/* Under lmu: shuts a held connection down; MHD then sees the end of it and closes. */
static void held_cut(srv *s, struct srv_conn *c, int why)
{
    c->cut = why + 1;
    shutdown(c->fd, SHUT_RDWR);
    atomic_fetch_add(&s->cuts[why], 1);
}

/* The deadlines of connections MHD holds; returns when to look again. */
static uint64_t held_check(srv *s, uint64_t now)
{
    uint64_t next = UINT64_MAX, win = s->cfg.body_window_ms, rate = s->cfg.body_rate;
    pthread_mutex_lock(&s->lmu);
    for (struct srv_conn *c = s->held.head; c; c = c->next) {
        int head = c->phase == SRV_PH_IDLE || c->phase == SRV_PH_HEAD;
        uint64_t dl = head ? c->t_phase + s->cfg.head_timeout_ms : c->win_t + win;
        if (c->cut || c->phase == SRV_PH_BUSY || (c->phase == SRV_PH_BODY && !rate)) continue;
        if (now < dl) {
            next = dl < next ? dl : next;
        } else if (head) {
            held_cut(s, c, c->phase == SRV_PH_IDLE ? SRV_CUT_IDLE : SRV_CUT_HEAD_TIMEOUT);
        } else {
            uint64_t got = atomic_load(&c->body_bytes);
            if ((got - c->win_bytes) * 1000 < rate * (now - c->win_t)) {
                held_cut(s, c, SRV_CUT_SLOW_BODY);
            } else {
                c->win_t = now;
                c->win_bytes = got;
                next = now + win < next ? now + win : next;
            }
        }
    }
    pthread_mutex_unlock(&s->lmu);
    return next;
}

/* ---- the loop's part ---- */

/* Adds the door's sockets to the poll set (who: the record, or s for the listener) and lowers
 * *next to the earliest of its deadlines. */
void srv__door_fill(srv *s, struct srv_pollset *ps, uint64_t now, uint64_t *next)
{
    if (s->lfd >= 0 && now >= s->accept_paused_until && s->door.n + s->queued.n < 2 * s->door_max) {
        ps->pf[ps->n] = (struct pollfd){s->lfd, POLLIN, 0};
        ps->who[ps->n++] = s;
    } else if (s->lfd >= 0 && s->accept_paused_until > now && s->accept_paused_until < *next) {
        *next = s->accept_paused_until;
    }
    struct srv_list *lists[] = {&s->door, &s->queued, &s->linger};
    for (int k = 0; k < 3; k++)
        for (struct srv_conn *c = lists[k]->head; c; c = c->next) {
            /* A queued head stays in the socket: waking on POLLIN would spin; only a hang-up
             * (POLLHUP, POLLERR: always reported) gives its place up. */
            short ev = k == 1 ? 0 : POLLIN | POLLRDHUP;
            ps->pf[ps->n] = (struct pollfd){c->fd, ev, 0};
            ps->who[ps->n++] = c;
            if (c->until < *next) *next = c->until;
        }
    uint64_t h = held_check(s, now);
    if (h < *next) *next = h;
}

static void linger_read(srv *s, struct srv_conn *c)
{
    for (int i = 0; i < 4; i++) {
        ssize_t n = recv(c->fd, s->peek, s->cfg.max_head + 1, MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
        if (n <= 0) break;
    }
    conn_close(s, &s->linger, c);
}

/* After poll: accepts, reads heads, drains refused connections, enforces the door's
 * deadlines and hands complete heads to MHD while it has room. */
void srv__door_run(srv *s, const struct pollfd *pf, void *const *who, size_t n, uint64_t now)
{
    int accept_now = 0;
    for (size_t i = 0; i < n; i++) {
        short ev = pf[i].revents;
        struct srv_conn *c = who[i];
        int hup = (ev & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
        if (!ev) continue;
        /* Accepting may evict a record later in who[]: it comes after the others. */
        if (who[i] == s) accept_now = 1;
        else if (c->where == SRV_C_DOOR) head_read(s, c, hup, now);
        else if (c->where == SRV_C_LINGER) linger_read(s, c);
        else if (c->where == SRV_C_QUEUED && (ev & (POLLHUP | POLLERR)))
            conn_close(s, &s->queued, c);
    }
    if (accept_now) door_accept(s, now);
    for (struct srv_conn *c = s->door.head, *nx; c; c = nx) {
        nx = c->next;
        if (now < c->until) continue;
        atomic_fetch_add(&s->cuts[SRV_CUT_HEAD_TIMEOUT], !c->peeked);
        if (c->peeked) door_answer(s, &s->door, c, 408, "request_timeout",
                                   "the request head did not arrive in time", NULL,
                                   SRV_CUT_HEAD_TIMEOUT, now);
        else conn_close(s, &s->door, c); /* never said a word: no answer either */
    }
    for (struct srv_conn *c = s->linger.head, *nx; c; c = nx) {
        nx = c->next;
        if (now >= c->until) conn_close(s, &s->linger, c);
    }
    handoff(s);
    for (struct srv_conn *c = s->queued.head, *nx; c; c = nx) {
        nx = c->next;
        if (now >= c->until)
            door_answer(s, &s->queued, c, 503, "server_busy",
                        "no connection slot came free in time", NULL, SRV_CUT_BUSY, now);
    }
}

/* Stop: no more connections; heads not yet handed over are refused. Lingering answers keep
 * draining until their time is up or the loop ends. */
void srv__door_shut(srv *s, uint64_t now)
{
    if (s->lfd >= 0) close(s->lfd);
    s->lfd = -1;
    while (s->queued.head)
        door_answer(s, &s->queued, s->queued.head, 503, "shutting_down",
                    "the server is stopping", NULL, SRV_CUT_BUSY, now);
    while (s->door.head)
        door_answer(s, &s->door, s->door.head, 503, "shutting_down",
                    "the server is stopping", NULL, SRV_CUT_BUSY, now);
}

/* After the loop and MHD are gone: whatever is left. Sockets on the way to MHD are MHD's. */
void srv__door_free(srv *s)
{
    while (s->handing.head) {
        struct srv_conn *c = s->handing.head;
        list_del(&s->handing, c);
        free(c);
    }
    struct srv_list *lists[] = {&s->door, &s->queued, &s->linger};
    for (int k = 0; k < 3; k++)
        while (lists[k]->head) conn_close(s, lists[k], lists[k]->head);
    if (s->lfd >= 0) close(s->lfd);
    s->lfd = -1;
    for (int b = 0; b < SRV_IP_BUCKETS; b++)
        while (s->ips[b]) {
            struct srv_ipc *e = s->ips[b];
            s->ips[b] = e->next;
            free(e);
        }
}
