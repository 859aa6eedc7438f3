/* The loop thread: one poll() over the front door's sockets (srv_door.c) and the sockets of
 * parked and streaming requests (srv_async.c), which MHD does not poll while they are
 * suspended, plus every deadline of both. It never runs a handler, so it never blocks. */
#include "server/http/srv_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

uint64_t srv__now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void srv__loop_wake(srv *s)
{
    uint64_t one = 1;
    if (s->efd >= 0 && write(s->efd, &one, sizeof one) < 0 && errno != EAGAIN)
        srv__log_event(s, "error", "cannot wake the loop: %s", strerror(errno));
}

static int reserve(struct srv_pollset *ps, size_t want)
{
    if (want <= ps->cap) return 0;
    size_t cap = want + want / 2 + 16;
    struct pollfd *pf = realloc(ps->pf, cap * sizeof *pf);
    if (pf) ps->pf = pf;
    void **who = pf ? realloc(ps->who, cap * sizeof *who) : NULL;
    if (!who) return -1;
    ps->who = who;
    ps->cap = cap;
    return 0;
}

/* One turn: what to watch, how long to sleep, then what happened. 0, or 1 to end the loop. */
static int turn(srv *s, struct srv_pollset *ps)
{
    uint64_t now = srv__now_ms(), next = now + 1000;
    pthread_mutex_lock(&s->lmu);
    int quit = s->loop_quit, shut = s->door_closing && !s->door_closed;
    size_t want = 2 + s->door.n + s->queued.n + s->linger.n + s->nparked + s->nstreams;
    pthread_mutex_unlock(&s->lmu);
    if (quit) return 1;
    if (shut) {
        srv__door_shut(s, now);
        pthread_mutex_lock(&s->lmu);
        s->door_closed = 1;
        pthread_cond_broadcast(&s->lcv);
        pthread_mutex_unlock(&s->lmu);
    }
    if (reserve(ps, want)) {
        usleep(10000); /* out of memory: try again shortly rather than stop serving */
        return 0;
    }
    ps->n = 0;
    ps->pf[ps->n] = (struct pollfd){s->efd, POLLIN, 0};
    ps->who[ps->n++] = NULL;
    srv__door_fill(s, ps, now, &next);
    size_t a0 = ps->n;
    pthread_mutex_lock(&s->lmu);
    srv__async_fill(s, ps);
    pthread_mutex_unlock(&s->lmu);
    srv__async_next(ps, a0, &next);
    int timeout = next <= now ? 0 : next - now > 1000 ? 1000 : (int)(next - now);
    if (poll(ps->pf, ps->n, timeout) < 0 && errno != EINTR) usleep(1000);
    now = srv__now_ms();
    uint64_t drained;
    if (ps->pf[0].revents && read(s->efd, &drained, sizeof drained) < 0) drained = 0;
    srv__door_run(s, ps->pf + 1, ps->who + 1, a0 - 1, now);
    srv__async_run(s, ps, a0, now);
    return 0;
}

static void *loop_main(void *arg)
{
    srv *s = arg;
    struct srv_pollset ps = {0};
    while (!turn(s, &ps)) {
    }
    free(ps.pf);
    free(ps.who);
    return NULL;
}

int srv__loop_start(srv *s, char *err, size_t errlen)
{
    s->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (s->efd < 0) return srv__errf(err, errlen, SRV_EIO, "eventfd: %s", strerror(errno));
    if (pthread_create(&s->loop, NULL, loop_main, s) != 0) {
        close(s->efd);
        s->efd = -1;
        return srv__errf(err, errlen, SRV_EIO, "cannot start the server's loop thread");
    }
    s->loop_started = 1;
    return 0;
}

/* srv_stop: no new connections from here on; returns once the listening socket is closed. */
void srv__loop_close_door(srv *s)
{
    if (!s->loop_started) return;
    pthread_mutex_lock(&s->lmu);
    s->door_closing = 1;
    srv__loop_wake(s);
    while (!s->door_closed) pthread_cond_wait(&s->lcv, &s->lmu);
    pthread_mutex_unlock(&s->lmu);
}

void srv__loop_stop(srv *s)
{
    if (!s->loop_started) return;
    pthread_mutex_lock(&s->lmu);
    s->loop_quit = 1;
    pthread_mutex_unlock(&s->lmu);
    srv__loop_wake(s);
    pthread_join(s->loop, NULL);
    s->loop_started = 0;
    /* efd stays open until srv_free: MHD's threads may still wake a loop that is gone. */
}
