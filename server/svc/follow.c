/* Following job events: the follower thread and the follows it serves (svc.h, follow.h).
 *
 * Each turn (every FOL_TICK_MS, or at once for a new follow) the thread reads the store's
 * event stamp; only when it moved, or for follows that are new or were behind, does it read
 * events: per job, one page from the lowest cursor among its follows, offered to each of
 * them, so a hundred listeners of one job cost one query. A reader that is behind
 * (SVC_FOLLOW_LATER) keeps its cursor and is offered the rest on later turns: the store holds
 * the backlog, not memory here. The thread owns the live list; other threads only touch
 * `incoming` (under mu) and a follow's `cancelled` flag. */
#include "server/svc/follow.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server/svc/svc_int.h"

#define FOL_TICK_MS 100
#define FOL_PAGE 256 /* events per query */
#define FOL_PAGES 8  /* pages per job and turn, so one long backlog cannot starve the rest */

struct svc_follow {
    fol *owner;
    char job[STORE_ID_MAX];
    int64_t cursor; /* the last seq taken */
    svc_follow_ops ops;
    void *ud;
    atomic_int cancelled;
    int fresh;      /* its job's status not yet checked: it may have ended before `after` */
    int behind;     /* the reader refused an event, or pages were left: serve it next turn,
                       news or not */
    int blocked;    /* ...in this turn: offer nothing more now */
    int done;       /* end() has run: freed at the end of the turn */
    unsigned turn;  /* the last turn its job was served */
    svc_follow *next;
};

struct fol {
    store *st;
    unsigned max;
    atomic_uint count;
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int running, stop, joinable;
    svc_follow *incoming; /* under mu: started, not yet adopted by the thread */
    svc_follow *live;     /* the thread's own */
    uint64_t stamp;
    unsigned turn;
};

int fol_new(store *st, unsigned max, fol **out, char *err, size_t errlen)
{
    fol *f = calloc(1, sizeof *f);
    if (!f) return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    f->st = st;
    f->max = max ? max : 64;
    pthread_mutex_init(&f->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&f->cv, &ca);
    pthread_condattr_destroy(&ca);
    *out = f;
    return 0;
}

unsigned fol_count(fol *f) { return f ? atomic_load(&f->count) : 0; }

int fol_add(fol *f, const char *job, int64_t after, const svc_follow_ops *ops, void *ud,
            svc_follow **out)
{
    *out = NULL;
    if (strlen(job) >= STORE_ID_MAX) return ENG_EINVAL;
    unsigned n = atomic_load(&f->count);
    do {
        if (n >= f->max) return SVC_EBUSY;
    } while (!atomic_compare_exchange_weak(&f->count, &n, n + 1));
    svc_follow *x = calloc(1, sizeof *x);
    if (!x) {
        atomic_fetch_sub(&f->count, 1);
        return ENG_ENOMEM;
    }
    *x = (svc_follow){.owner = f, .cursor = after, .ops = *ops, .ud = ud, .fresh = 1};
    snprintf(x->job, sizeof x->job, "%s", job);
    *out = x;
    return 0;
}

void svc_follow_drop(svc_follow *x)
{
    if (!x) return;
    atomic_fetch_sub(&x->owner->count, 1);
    free(x);
}

void svc_follow_cancel(svc_follow *x)
{
    atomic_store(&x->cancelled, 1);
    pthread_cond_signal(&x->owner->cv); /* sooner than the next tick; takes no lock of ours */
}

/* On the follower thread (or the starter's when none runs): the last call, then it goes. */
static void finish(svc_follow *x, const char *status)
{
    x->done = 1;
    x->ops.end(x->ud, status);
}

void svc_follow_start(svc_follow *x)
{
    fol *f = x->owner;
    pthread_mutex_lock(&f->mu);
    int queued = f->running && !f->stop;
    if (queued) {
        x->next = f->incoming;
        f->incoming = x;
        pthread_cond_signal(&f->cv);
    }
    pthread_mutex_unlock(&f->mu);
    if (!queued) {
        finish(x, NULL);
        svc_follow_drop(x);
    }
}

/* The terminal status a "status" event moves to (a static string), or NULL. */
static const char *terminal_of(const store_event *ev)
{
    if (strcmp(ev->type, "status") || !ev->data_json) return NULL;
    json_t *d = json_loads(ev->data_json, 0, NULL);
    const char *to = json_string_value(json_object_get(d, "to"));
    int st = to ? store_status_parse(to) : -1;
    json_decref(d);
    return st >= 0 && store_status_terminal((store_status)st) ? store_status_name((store_status)st) : NULL;
}

static void deliver(svc_follow *x, const store_events *l)
{
    for (size_t i = 0; i < l->n && !x->done; i++) {
        const store_event *ev = &l->v[i];
        if (ev->seq <= x->cursor) continue;
        int r = x->ops.event(x->ud, ev);
        if (r == SVC_FOLLOW_LATER) {
            x->blocked = x->behind = 1;
            return;
        }
        if (r) {
            finish(x, NULL);
            return;
        }
        x->cursor = ev->seq;
        const char *t = terminal_of(ev);
        if (t) finish(x, t);
    }
}

static int active(const svc_follow *x, const char *job)
{
    return !x->done && !x->blocked && !strcmp(x->job, job);
}

static void end_job(fol *f, const char *job)
{
    for (svc_follow *x = f->live; x; x = x->next)
        if (!x->done && !strcmp(x->job, job)) finish(x, NULL);
}

/* The job's status for its new follows: a terminal name, "" while it runs, NULL when it could
 * not be read (try again next turn); a deleted job ends its follows. */
static const char *status_for_new(fol *f, const char *job)
{
    store_job *j = NULL;
    int rc = store_job_get(f->st, job, &j, NULL, 0);
    if (rc == ENG_ENOTFOUND) end_job(f, job);
    if (rc) return NULL;
    const char *st = store_status_terminal(j->status) ? store_status_name(j->status) : "";
    store_job_free(j);
    return st;
}

/* Serves every follow of one job: pages of events from the lowest cursor among those that
 * take more. The status is read before the events, so a job seen ended has all its events
 * already stored: a new follow that got none of them had started past its end. */
static void serve_job(fol *f, const char *job)
{
    int fresh = 0, complete = 0;
    for (svc_follow *x = f->live; x; x = x->next)
        if (!x->done && !strcmp(x->job, job)) {
            x->turn = f->turn, x->behind = x->blocked = 0;
            fresh |= x->fresh;
        }
    const char *ended = fresh ? status_for_new(f, job) : "";
    if (!ended) return;
    for (int page = 0; page < FOL_PAGES && !complete; page++) {
        int64_t from = INT64_MAX;
        for (svc_follow *x = f->live; x; x = x->next)
            if (active(x, job) && x->cursor < from) from = x->cursor;
        if (from == INT64_MAX) break;
        store_events l;
        int rc = store_event_list(f->st, job, from, FOL_PAGE, &l, NULL, 0);
        if (rc == ENG_ENOTFOUND) end_job(f, job);
        if (rc) return;
        for (svc_follow *x = f->live; x; x = x->next)
            if (active(x, job)) deliver(x, &l);
        complete = !l.more;
        store_events_free(&l);
    }
    for (svc_follow *x = f->live; x; x = x->next) {
        if (x->done || strcmp(x->job, job)) continue;
        if (!complete) { /* pages left over: next turn, news or not */
            x->behind = 1;
            continue;
        }
        if (x->fresh && !x->blocked && *ended) finish(x, ended);
        x->fresh = 0;
    }
}

static void reap(fol *f)
{
    svc_follow **p = &f->live;
    while (*p) {
        svc_follow *x = *p;
        if (x->done) {
            *p = x->next;
            svc_follow_drop(x);
        } else {
            p = &x->next;
        }
    }
}

static void turn(fol *f)
{
    if (!f->live) return;
    uint64_t stamp = store_event_stamp(f->st);
    int news = stamp != f->stamp;
    f->stamp = stamp;
    f->turn++;
    for (svc_follow *x = f->live; x; x = x->next)
        if (!x->done && atomic_load(&x->cancelled)) finish(x, NULL);
    for (svc_follow *x = f->live; x; x = x->next)
        if (!x->done && x->turn != f->turn && (news || x->fresh || x->behind)) serve_job(f, x->job);
    reap(f);
}

/* Appends the newly started follows (pushed newest first) in start order. */
static void adopt(fol *f, svc_follow *in)
{
    svc_follow *rev = NULL;
    while (in) {
        svc_follow *n = in->next;
        in->next = rev, rev = in, in = n;
    }
    svc_follow **tail = &f->live;
    while (*tail) tail = &(*tail)->next;
    *tail = rev;
}

static void wait_tick(fol *f)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_nsec += FOL_TICK_MS * 1000000L;
    if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
    pthread_cond_timedwait(&f->cv, &f->mu, &ts);
}

static void *fol_main(void *arg)
{
    fol *f = arg;
    pthread_mutex_lock(&f->mu);
    for (;;) {
        svc_follow *in = f->incoming;
        int stop = f->stop;
        f->incoming = NULL;
        if (stop) f->running = 0; /* from here on, svc_follow_start ends follows itself */
        pthread_mutex_unlock(&f->mu);
        adopt(f, in);
        if (stop) break;
        turn(f);
        pthread_mutex_lock(&f->mu);
        if (!f->stop && !f->incoming && !f->live) pthread_cond_wait(&f->cv, &f->mu);
        else if (!f->stop && !f->incoming) wait_tick(f);
    }
    for (svc_follow *x = f->live; x; x = x->next)
        if (!x->done) finish(x, NULL);
    reap(f);
    return NULL;
}

int fol_start(fol *f, char *err, size_t errlen)
{
    pthread_mutex_lock(&f->mu);
    f->running = 1;
    int rc = pthread_create(&f->th, NULL, fol_main, f);
    if (rc) f->running = 0;
    f->joinable = !rc;
    pthread_mutex_unlock(&f->mu);
    return rc ? eng_errf(err, errlen, ENG_EIO, "cannot start the follower thread: %s", strerror(rc)) : 0;
}

void fol_stop(fol *f)
{
    if (!f) return;
    pthread_mutex_lock(&f->mu);
    f->stop = 1;
    int join = f->joinable;
    f->joinable = 0;
    pthread_cond_signal(&f->cv);
    pthread_mutex_unlock(&f->mu);
    if (join) pthread_join(f->th, NULL);
}

void fol_free(fol *f)
{
    if (!f) return;
    fol_stop(f);
    pthread_mutex_destroy(&f->mu);
    pthread_cond_destroy(&f->cv);
    free(f);
}

int svc_job_follow(svc *s, const char *id, int64_t after, const svc_follow_ops *ops, void *ud,
                   svc_follow **out, svc_err *e)
{
    char err[512];
    store_job *j = NULL;
    *out = NULL;
    int rc = store_job_get(s->st, id, &j, err, sizeof err);
    store_job_free(j);
    if (rc) return svc__fail(s, e, rc, NULL, "%s", err);
    rc = fol_add(s->follow, id, after, ops, ud, out);
    if (rc == SVC_EBUSY) {
        svc__fail(s, e, rc, "too_many_followers", "%u listeners already follow job events (the limit); try again later",
                  s->follow->max);
        if (e) e->retry_after_s = 5;
        return rc;
    }
    return rc ? svc__fail(s, e, rc, NULL, "cannot follow job %s", id) : 0;
}
