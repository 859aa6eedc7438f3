/* The core budget. One mutex and one condition variable: every grant, release and yield is a
 * short critical section, and waiters re-check the invariant infer_held + train_held <= cores
 * (held counts are what the OpenMP teams may use right now). */
#include "server/svc/cores.h"

#include <pthread.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

struct cores {
    cores_config cfg;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int infer_held, train_held;
    int train_want;   /* a job runs (held, yielding or waiting to start) */
    int yielding;     /* its team is given back until the queue drains */
    int down;
    double waiting_since;
    int obs_infer, obs_train;
    cores_stats st;
};

int cores_new(const cores_config *cfg, cores **out, char *err, size_t errlen)
{
    cores *c = calloc(1, sizeof *c);
    if (!c) return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    c->cfg = *cfg;
    if (c->cfg.cores <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        c->cfg.cores = n > 0 ? (int)n : 1;
    }
    int n = c->cfg.cores;
    if (c->cfg.infer_threads > n) c->cfg.infer_threads = n;
    if (!c->cfg.infer_share) c->cfg.infer_share = n > 1 ? n / 2 : 0;
    if (c->cfg.infer_share < 0) c->cfg.infer_share = 0;
    if (c->cfg.infer_share >= n) c->cfg.infer_share = n - 1; /* training needs one core */
    if (c->cfg.train_threads <= 0 || c->cfg.train_threads > n - c->cfg.infer_share)
        c->cfg.train_threads = n - c->cfg.infer_share;
    if (!c->cfg.train_yield_ms) c->cfg.train_yield_ms = 50;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, &ca);
    pthread_condattr_destroy(&ca);
    c->st.cores = n, c->st.infer_share = c->cfg.infer_share;
    c->st.train_team = c->cfg.train_threads, c->st.yield_ms = c->cfg.train_yield_ms;
    *out = c;
    return 0;
}

void cores_free(cores *c)
{
    if (!c) return;
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free(c);
}

void cores_shutdown(cores *c)
{
    pthread_mutex_lock(&c->mu);
    c->down = 1;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

static void note_peak_locked(cores *c)
{
    int held = c->infer_held + c->train_held;
    if (held > c->st.peak) c->st.peak = held;
}

static void timed_wait_locked(cores *c, double ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    long ns = ts.tv_nsec + (long)(ms * 1e6);
    ts.tv_sec += ns / 1000000000, ts.tv_nsec = ns % 1000000000;
    pthread_cond_timedwait(&c->cv, &c->mu, &ts);
}

/* What inference may take now: a running job's team stays reserved even while it waits to
 * start, so a stream of classify batches cannot starve it; a yielding job's is free. */
static int infer_room_locked(const cores *c)
{
    int reserved = c->train_want && !c->yielding ? c->cfg.train_threads : c->train_held;
    int room = c->cfg.cores - reserved - c->infer_held;
    if (c->cfg.infer_threads > 0 && room > c->cfg.infer_threads) room = c->cfg.infer_threads;
    return room;
}

int cores_infer_grant(cores *c, int want)
{
    pthread_mutex_lock(&c->mu);
    int n;
    /* after shutdown a grant of 1 is still safe: the worker is joined before inference */
    while ((n = infer_room_locked(c)) < 1 && !c->down) pthread_cond_wait(&c->cv, &c->mu);
    if (n < 1) n = 1;
    if (want > 0 && n > want) n = want;
    c->infer_held += n;
    c->st.infer_grants++;
    note_peak_locked(c);
    pthread_mutex_unlock(&c->mu);
    return n;
}

int cores_infer_try(cores *c, int want)
{
    pthread_mutex_lock(&c->mu);
    int n = infer_room_locked(c);
    if (n < 1) n = 0;
    if (want > 0 && n > want) n = want;
    c->infer_held += n;
    note_peak_locked(c);
    pthread_mutex_unlock(&c->mu);
    return n;
}

void cores_infer_release(cores *c, int n)
{
    pthread_mutex_lock(&c->mu);
    c->infer_held -= n;
    if (!c->infer_held) c->obs_infer = 0;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

int cores_train_team(const cores *c) { return c->cfg.train_threads; }

static void train_take_locked(cores *c)
{
    while (c->infer_held + c->cfg.train_threads > c->cfg.cores && !c->down)
        pthread_cond_wait(&c->cv, &c->mu);
    c->train_held = c->cfg.train_threads;
    note_peak_locked(c);
}

void cores_train_acquire(cores *c)
{
    pthread_mutex_lock(&c->mu);
    c->train_want = 1;
    train_take_locked(c);
    pthread_mutex_unlock(&c->mu);
}

void cores_train_release(cores *c)
{
    pthread_mutex_lock(&c->mu);
    c->train_held = 0, c->train_want = 0, c->obs_train = 0;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

static int overdue_locked(const cores *c, double now)
{
    return c->cfg.train_yield_ms >= 0 && c->waiting_since > 0 &&
           now - c->waiting_since >= c->cfg.train_yield_ms;
}

int cores_train_yield(cores *c)
{
    pthread_mutex_lock(&c->mu);
    double now = eng_now_ms();
    if (c->down || !overdue_locked(c, now)) {
        pthread_mutex_unlock(&c->mu);
        return 0;
    }
    c->train_held = 0, c->obs_train = 0, c->yielding = 1;
    c->st.yields++;
    pthread_cond_broadcast(&c->cv);
    double until = now + 20.0 * c->cfg.train_yield_ms;
    while (c->waiting_since > 0 && !c->down && (now = eng_now_ms()) < until)
        timed_wait_locked(c, until - now);
    c->yielding = 0;
    train_take_locked(c);
    pthread_mutex_unlock(&c->mu);
    return 1;
}

void cores_waiting(cores *c, double since_ms)
{
    pthread_mutex_lock(&c->mu);
    c->waiting_since = since_ms;
    if (since_ms <= 0) pthread_cond_broadcast(&c->cv); /* a yielding job may go on */
    pthread_mutex_unlock(&c->mu);
}

void cores_observe(cores *c, int train, int team)
{
    pthread_mutex_lock(&c->mu);
    if (train) c->obs_train = team;
    else c->obs_infer = team;
    if (c->obs_infer + c->obs_train > c->st.peak_observed)
        c->st.peak_observed = c->obs_infer + c->obs_train;
    pthread_mutex_unlock(&c->mu);
}

void cores_get_stats(cores *c, cores_stats *st)
{
    pthread_mutex_lock(&c->mu);
    *st = c->st;
    st->infer_held = c->infer_held, st->train_held = c->train_held;
    pthread_mutex_unlock(&c->mu);
}

void cores_metrics_text(cores *c, FILE *f)
{
    cores_stats s;
    cores_get_stats(c, &s);
    fprintf(f, "# HELP bit_cores Compute threads inference and training share.\n"
               "# TYPE bit_cores gauge\nbit_cores %d\n"
               "# HELP bit_cores_held Threads held now by each side.\n# TYPE bit_cores_held gauge\n"
               "bit_cores_held{side=\"inference\"} %d\nbit_cores_held{side=\"training\"} %d\n"
               "# HELP bit_cores_peak Most threads held at once since start (never above bit_cores).\n"
               "# TYPE bit_cores_peak gauge\nbit_cores_peak %d\n"
               "# HELP bit_cores_peak_observed Largest sum of OpenMP team sizes measured at once.\n"
               "# TYPE bit_cores_peak_observed gauge\nbit_cores_peak_observed %d\n"
               "# HELP bit_cores_infer_share Cores kept for inference while a job trains.\n"
               "# TYPE bit_cores_infer_share gauge\nbit_cores_infer_share %d\n"
               "# HELP bit_training_yields_total Times training gave its cores to waiting classify requests.\n"
               "# TYPE bit_training_yields_total counter\nbit_training_yields_total %llu\n",
            s.cores, s.infer_held, s.train_held, s.peak, s.peak_observed, s.infer_share, s.yields);
}
